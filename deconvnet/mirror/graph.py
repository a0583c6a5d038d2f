"""The mirror as a whole: its layers from the model's output down to its input, run as one loop
that adds the signals where forward values fed several layers, and the precision it runs in."""

from __future__ import annotations

import functools
import inspect
import itertools
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from .activations import Activation, ReLU
from .base import INPUT, Context, MirrorLayer, Record
from .conv import ConvTranspose2d, FetchedConvTranspose2d, LinearTranspose, SameConvTranspose2d
from .general import VJP
from .normalization import ChannelScale
from .pooling import MaxUnpool2d, OverlapUnpool2d

__all__ = ["Mirror", "precision"]


def _pass_on(signal: Tensor, record: Record) -> Tensor:
    return signal


class _Step(NamedTuple):
    """One mirror layer as the loop in :meth:`Mirror.forward` runs it."""

    source: str
    forward: Callable[..., Any]
    takes_context: bool
    inputs: tuple[str, ...]
    ownership: object  # _FRESH: returns a new tensor nothing else holds; _PASSED_ON: returns its signal
    in_place: Callable[..., Any] | None  # forward written into a signal the loop owns


_FRESH, _PASSED_ON = object(), object()


def _hand_back(pending: dict[str, Tensor], owned: set[str], name: str, signal: Tensor, fresh: bool) -> None:
    """Add ``signal`` to what is pending for forward value ``name``; in place where the loop
    owns the pending tensor and the sum has its shape and dtype."""
    if name not in pending:
        pending[name] = signal
        if fresh:
            owned.add(name)
        return
    held = pending[name]
    if name in owned and held.shape == torch.broadcast_shapes(held.shape, signal.shape) and held.dtype == signal.dtype:
        held.add_(signal)
    else:
        pending[name] = held + signal
        owned.add(name)


# Built-in layers (exactly these types: a subclass may return what it likes) whose output is a
# new tensor, and those with a forward_in_place.
_FRESH_TYPES = frozenset({ConvTranspose2d, FetchedConvTranspose2d, SameConvTranspose2d, MaxUnpool2d, OverlapUnpool2d,
                          Activation, ReLU, LinearTranspose, ChannelScale})


_IN_PLACE_TYPES = frozenset({Activation, ReLU, ChannelScale})


def _takes_context(layer: MirrorLayer) -> bool:
    try:
        parameters = inspect.signature(layer.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return True
    positional = [p for p in parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 3 or any(p.kind == p.VAR_POSITIONAL for p in parameters.values())


class Mirror(nn.Module):
    """The reversed network: mirror layers from the model's output down to its input, in
    reverse topological order.

    ``mirror(signal, records, start, context)`` runs the signal from the layer that reverses
    ``start`` (a layer name; the model's output when ``None``) down to the input. Where a forward
    value fed several layers, the signals coming back from them are added.
    """

    def __init__(self, layers: Iterable[MirrorLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self._index = {layer.source: i for i, layer in enumerate(self.layers)}
        # What the loop in forward reads per layer, as plain Python: indexing a ModuleList and
        # nn.Module.__call__ cost more per layer than the small layers' own work.
        self._plan: list[_Step] = [
            _Step(layer.source, layer.forward, _takes_context(layer), tuple(layer.inputs),  # type: ignore[arg-type]
                  _FRESH if type(layer) in _FRESH_TYPES else None,
                  layer.forward_in_place if type(layer) in _IN_PLACE_TYPES else None)  # type: ignore[attr-defined]
            for layer in self.layers
        ]
        self._unfolded: dict[int, _Step] = {}
        self._fold_batch_norms()

    def _fold_batch_norms(self) -> None:
        """Where a batch-norm only follows a conv (conv -> bn), its mirror's per-channel scale
        goes into the transposed conv's prepared kernel: one pass over the signal instead of
        two. A signal that starts at the conv itself runs the conv unscaled."""
        taken: dict[str, int] = {}
        for layer in self.layers:
            for name in layer.inputs:
                taken[name] = taken.get(name, 0) + 1
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, ChannelScale) or len(layer.inputs) != 1:
                continue
            j = self._index.get(layer.inputs[0])
            conv = self.layers[j] if j is not None else None
            if type(conv) is not ConvTranspose2d or taken.get(conv.source) != 1:
                continue
            self._plan[i] = _Step(layer.source, _pass_on, False, tuple(layer.inputs), _PASSED_ON, None)
            self._unfolded[j] = self._plan[j]  # type: ignore[index]
            self._plan[j] = _Step(conv.source, functools.partial(conv.folded_forward, layer), True, tuple(conv.inputs),  # type: ignore[index]
                                  _FRESH, None)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index: int) -> MirrorLayer:
        return self.layers[index]  # type: ignore[return-value]

    def sources(self, start: str | None = None) -> list[str]:
        """The forward layers the mirror reverses, from ``start`` (the output when None) down."""
        return [entry[0] for entry in self._plan[0 if start is None else self.index_of(start):]]

    def index_of(self, source: str) -> int:
        """Position of the mirror layer that reverses forward node ``source``."""
        return self._index[source]

    def forward(
        self,
        signal: Tensor,
        records: dict[str, Record],
        start: str | None = None,
        context: Context | None = None,
    ) -> Tensor:
        """signal (Tensor[N, K, *start's output shape]) -> Tensor[N, K, C, H, W]."""
        context = context or Context()
        first = 0 if start is None else self.index_of(start)
        pending: dict[str, Tensor] = {self._plan[first][0]: signal}
        plan = itertools.islice(self._plan, first, None)
        if first in self._unfolded:  # a conv whose batch-norm's scale is folded in, started at itself
            plan = itertools.chain([self._unfolded[first]], itertools.islice(self._plan, first + 1, None))
        # Names whose pending signal the loop owns: a tensor a built-in layer made fresh, or a sum
        # made here, that nothing else holds. Those are overwritten in place (activation
        # gradients, batch-norm scales, the sums where branches meet) instead of allocated anew;
        # the caller's signal, and anything a layer hands to several inputs, never are.
        owned: set[str] = set()
        for source, forward, takes_context, inputs, ownership, in_place in plan:
            arriving = pending.pop(source, None)
            if arriving is None:
                continue  # a branch the signal does not run through
            record = records[source]
            mine = source in owned
            owned.discard(source)
            if mine and in_place is not None:
                out = in_place(arriving, record, context)
            else:
                out = forward(arriving, record, context) if takes_context else forward(arriving, record)
            if len(inputs) == 1 and not isinstance(out, list):
                _hand_back(pending, owned, inputs[0], out, ownership is _FRESH or (ownership is _PASSED_ON and mine))
                continue
            for name, part in zip(inputs, out, strict=True):
                _hand_back(pending, owned, name, part, False)  # parts may share memory
        return pending[INPUT]

    def chain_below(self, start: str) -> list[MirrorLayer] | None:
        """The layers from ``start`` down to the input when each has one input, else None."""
        chain, name = [], start
        while name != INPUT:
            layer = self.layers[self._index[name]]
            if len(layer.inputs) != 1:
                return None
            chain.append(layer)
            name = layer.inputs[0]
        return chain

    def is_chain(self) -> bool:
        """Whether the network is a chain: every layer feeds the next one only."""
        names = [layer.source for layer in self.layers[1:]] + [INPUT]
        return all(layer.inputs == (below,) for layer, below in zip(self.layers, names, strict=True))

    def general(self) -> list[str]:
        """The forward layers reversed by the general VJP layer, not by hand."""
        return [layer.source for layer in self.layers if isinstance(layer, VJP)]

    def __repr__(self) -> str:
        width = max((len(layer.source) for layer in self.layers), default=0)
        chain = self.is_chain()
        lines = []
        for layer in self.layers:
            line = f"  ({layer.source}){' ' * (width - len(layer.source))} {layer!r}"
            if not chain:
                line += "  -> " + ", ".join(name or "input" for name in layer.inputs)
            lines.append(line)
        return "Mirror(output -> input\n" + "\n".join(lines) + "\n)"


@contextmanager
def precision(device_type: str, dtype: torch.dtype | None, deterministic: bool | None) -> Iterator[None]:
    """While the mirror runs: autocast to ``dtype`` (``None``: off) and, with
    ``deterministic=True`` on CUDA, cuDNN's deterministic algorithms (no autotuning), restored
    after. TF32 follows PyTorch's own settings (``torch.backends.cudnn.allow_tf32``,
    ``torch.backends.cuda.matmul.allow_tf32``), as the model's forward does."""
    cudnn = torch.backends.cudnn
    saved = cudnn.deterministic, cudnn.benchmark
    switch = bool(deterministic) and device_type == "cuda"
    if switch:
        cudnn.deterministic, cudnn.benchmark = True, False
    try:
        with torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None):
            yield
    finally:
        if switch:
            cudnn.deterministic, cudnn.benchmark = saved
