"""The mirror modules: one reversed layer each, and the stack that runs them.

Each mirror layer maps a signal on its forward layer's output, ``Tensor[N, K, ...]`` (``K``
targets per input), to a signal on that layer's input, reading what the forward pass recorded
for it (a :class:`Record`). Weights are the forward layer's own Parameters, never copies.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import functional
from .functional import pair

__all__ = [
    "Record",
    "MirrorLayer",
    "ConvTranspose2d",
    "MaxUnpool2d",
    "OverlapUnpool2d",
    "ReLU",
    "LinearTranspose",
    "ChannelScale",
    "AvgPool2dTranspose",
    "AdaptiveAvgPool2dTranspose",
    "Reshape",
    "Identity",
    "Add",
    "Concat",
    "Mirror",
    "RULES",
    "INPUT",
    "Window",
]


RULES = ("deconvnet", "guided", "gradient")
"""What the mirror does at a rectifier: ``deconvnet`` passes ReLU of the signal (Zeiler &
Fergus); ``guided`` also masks it by where the forward activation was positive (guided
backpropagation); ``gradient`` only masks (the plain gradient)."""

INPUT = ""
"""The name under which the mirror delivers the signal on the model's input."""

Window = tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]
"""(kernel, stride, padding before, dilation) of a sliding-window layer, each (rows, columns)."""


@dataclass(frozen=True)
class Record:
    """What the forward pass left for one layer's mirror.

    input_shape: the layer's (first) input shape, ``(N, ...)``.
    switches (Tensor[N, C, h, w] | None): flat argmax positions of a max-pool.
    input_shapes: the shapes of all its inputs, for layers that take several (add, cat).
    output (Tensor[N, ...] | None): the layer's output (rectifiers mask by it).
    """

    input_shape: tuple[int, ...]
    switches: Tensor | None = None
    input_shapes: tuple[tuple[int, ...], ...] = ()
    output: Tensor | None = None


class MirrorLayer(nn.Module):
    """Base of the mirror layers.

    ``source`` names the forward layer it reverses; ``inputs`` names the layers (or
    :data:`INPUT`) whose outputs feed it, to which it hands the signal back. A layer with several
    inputs returns one signal per input.
    """

    source: str = ""
    inputs: tuple[str, ...] = ()

    def forward(self, signal: Tensor, record: Record) -> Tensor | list[Tensor]:  # pragma: no cover
        raise NotImplementedError


class ConvTranspose2d(MirrorLayer, nn.ConvTranspose2d):
    """Transposed conv whose ``weight`` **is** the forward ``Conv2d``'s Parameter, no bias."""

    def __init__(self, conv: nn.Conv2d) -> None:
        pads = _conv_padding(conv)
        nn.ConvTranspose2d.__init__(
            self,
            conv.out_channels,
            conv.in_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=(pads[0][0], pads[1][0]),
            groups=conv.groups,
            bias=False,
            dilation=conv.dilation,
            device="meta",
        )
        self.weight = conv.weight
        self.pads = pads

    def forward(self, signal: Tensor, record: Record) -> Tensor:  # type: ignore[override]
        """signal (Tensor[N, K, C_out, h, w]) -> Tensor[N, K, C_in, H, W]."""
        return functional.conv_transpose2d(
            signal,
            self.weight,
            record.input_shape[2:],
            pair(self.stride),
            self.pads,
            pair(self.dilation),
            self.groups,
        )

    def window(self) -> Window:
        """The forward conv's sliding window (its ``"same"`` padding resolved)."""
        kh, kw = self.weight.shape[2:]
        before = (self.pads[0][0], self.pads[1][0])
        return (int(kh), int(kw)), pair(self.stride), before, pair(self.dilation)


def _conv_padding(conv: nn.Conv2d) -> tuple[tuple[int, int], tuple[int, int]]:
    """(before, after) padding per spatial dim, resolving ``"same"`` and ``"valid"``."""
    if conv.padding == "valid":
        return ((0, 0), (0, 0))
    if conv.padding == "same":
        # torch pads the odd extra row/column of "same" at the end.
        totals = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size, strict=True)]
        return tuple((t // 2, t - t // 2) for t in totals)  # type: ignore[return-value]
    ph, pw = pair(conv.padding)
    return ((ph, ph), (pw, pw))


class MaxUnpool2d(MirrorLayer, nn.MaxUnpool2d):
    """Unpooling into the forward switches, for max-pools whose windows do not overlap.

    ``deterministic``: for overlapping windows, sum colliding signals in a fixed order (see
    :func:`deconvnet.functional.unpool2d`); ``None`` follows
    ``torch.are_deterministic_algorithms_enabled()`` on CUDA (CPU sums are already ordered).
    """

    accumulate = False
    deterministic: bool | None = None

    def __init__(self, pool: nn.MaxPool2d) -> None:
        nn.MaxUnpool2d.__init__(self, pool.kernel_size, pool.stride, pool.padding)
        self.dilation = pool.dilation
        self.ceil_mode = pool.ceil_mode

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, dilation={self.dilation}, ceil_mode={self.ceil_mode}"
        )

    def forward(self, signal: Tensor, record: Record) -> Tensor:  # type: ignore[override]
        """signal (Tensor[N, K, C, h, w]) -> Tensor[N, K, C, H, W]."""
        switches = cast(Tensor, record.switches)  # every max-pool records its switches
        ordered = self.deterministic
        if ordered is None:
            ordered = signal.is_cuda and torch.are_deterministic_algorithms_enabled()
        phases = self.phases() if ordered and self.accumulate else None
        return functional.unpool2d(signal, switches, record.input_shape[2:], self.accumulate, phases)

    def window(self) -> Window:
        """The forward max-pool's sliding window."""
        return pair(self.kernel_size), pair(self.stride), pair(self.padding), pair(self.dilation)

    def phases(self) -> tuple[int, int]:
        """Window groups per axis within which windows cannot overlap: ceil(span / stride)."""
        kernel, stride, _, dilation = self.window()
        return tuple(-(-(d * (k - 1) + 1) // s) for k, s, d in zip(kernel, stride, dilation, strict=True))  # type: ignore[return-value]


class OverlapUnpool2d(MaxUnpool2d):
    """Unpooling for overlapping windows (kernel > stride): signals meeting on a switch add up."""

    accumulate = True


class ReLU(MirrorLayer):
    """The rectifier reversed: ReLU of the reconstruction signal (the deconvnet rule), or, with
    another rule, masked by the forward activation (see :data:`RULES`)."""

    def forward(self, signal: Tensor, record: Record, rule: str = "deconvnet") -> Tensor:
        if rule == "deconvnet":
            return F.relu(signal)
        active = cast(Tensor, record.output) > 0  # Tensor[N, ...], broadcast over K
        if rule == "guided":
            signal = F.relu(signal)
        return signal * active.unsqueeze(1).to(signal.dtype)


class LinearTranspose(MirrorLayer):
    """Multiplication by the forward ``Linear``'s shared weight, transposed; no bias."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight = linear.weight

    def extra_repr(self) -> str:
        out_features, in_features = self.weight.shape
        return f"out_features={out_features} -> in_features={in_features}, bias=False"

    def forward(self, signal: Tensor, record: Record) -> Tensor:
        """signal (Tensor[N, K, ..., out_features]) -> Tensor[N, K, ..., in_features]."""
        return functional.linear_transpose(signal, self.weight)


class ChannelScale(MirrorLayer):
    """Eval-mode ``BatchNorm2d`` reversed: scale by weight / sqrt(running_var + eps), no shift.

    The scale is read from the batch-norm at every call, so it follows fine-tuning and
    ``model.to(...)``; the batch-norm is referenced, not registered as a submodule.
    """

    def __init__(self, norm: nn.BatchNorm2d) -> None:
        super().__init__()
        object.__setattr__(self, "norm", norm)

    def extra_repr(self) -> str:
        return f"{self.norm.num_features}, eps={self.norm.eps}"

    def scale(self) -> Tensor:
        """Tensor[C]: the per-channel factor of the eval-mode batch-norm."""
        norm = self.norm
        scale = (norm.running_var + norm.eps).rsqrt()
        return scale if norm.weight is None else scale * norm.weight

    def forward(self, signal: Tensor, record: Record) -> Tensor:
        """signal (Tensor[N, K, C, ...]) -> same shape."""
        scale = self.scale().to(signal.dtype)
        return signal * scale.view(-1, *([1] * (signal.dim() - 3)))


class AvgPool2dTranspose(MirrorLayer):
    """Exact transpose of ``AvgPool2d``, with its padding, ceil_mode and divisor rules."""

    def __init__(self, pool: nn.AvgPool2d) -> None:
        super().__init__()
        self.kernel_size = pair(pool.kernel_size)
        self.stride = pair(pool.stride if pool.stride is not None else pool.kernel_size)
        self.padding = pair(pool.padding)
        self.ceil_mode = bool(pool.ceil_mode)
        self.count_include_pad = bool(pool.count_include_pad)
        self.divisor_override = pool.divisor_override

    def window(self) -> Window:
        """The forward avg-pool's sliding window."""
        return self.kernel_size, self.stride, self.padding, (1, 1)

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"ceil_mode={self.ceil_mode}, count_include_pad={self.count_include_pad}"
        )

    def forward(self, signal: Tensor, record: Record) -> Tensor:
        return functional.avg_pool2d_transpose(
            signal,
            record.input_shape[2:],
            self.kernel_size,
            self.stride,
            self.padding,
            self.ceil_mode,
            self.count_include_pad,
            self.divisor_override,
        )


class AdaptiveAvgPool2dTranspose(MirrorLayer):
    """Exact transpose of ``AdaptiveAvgPool2d`` (also when it upsamples)."""

    def __init__(self, pool: nn.AdaptiveAvgPool2d) -> None:
        super().__init__()
        self.output_size = pool.output_size

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"

    def forward(self, signal: Tensor, record: Record) -> Tensor:
        return functional.adaptive_avg_pool2d_transpose(signal, record.input_shape[2:])


class Reshape(MirrorLayer):
    """A flatten, view or reshape undone: back to the recorded input shape."""

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what

    def extra_repr(self) -> str:
        return f"undoes {self.what}"

    def forward(self, signal: Tensor, record: Record) -> Tensor:
        return signal.reshape(*signal.shape[:2], *record.input_shape[1:])


class Identity(MirrorLayer):
    """A layer that is the identity in eval mode (Dropout, Identity, contiguous)."""

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what

    def extra_repr(self) -> str:
        return f"for {self.what}"

    def forward(self, signal: Tensor, record: Record) -> Tensor:
        return signal


class Add(MirrorLayer):
    """A sum reversed: each summand gets the signal (times its ``alpha``)."""

    def __init__(self, alphas: tuple[float, ...]) -> None:
        super().__init__()
        self.alphas = alphas

    def extra_repr(self) -> str:
        return "" if all(a == 1 for a in self.alphas) else f"alphas={self.alphas}"

    def forward(self, signal: Tensor, record: Record) -> list[Tensor]:
        return [signal if a == 1 else signal * a for a in self.alphas]


class Concat(MirrorLayer):
    """A concatenation reversed: the signal split back into each input's part."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def extra_repr(self) -> str:
        return f"dim={self.dim}"

    def forward(self, signal: Tensor, record: Record) -> list[Tensor]:
        """signal (Tensor[N, K, ...]) -> one Tensor[N, K, ...] per input."""
        dim = self.dim % len(record.input_shape)  # along the forward tensor's axes
        sizes = [shape[dim] for shape in record.input_shapes]
        return list(signal.split(sizes, dim=dim + 1))


class Mirror(nn.Module):
    """The reversed network: mirror layers from the model's output down to its input, in
    reverse topological order.

    ``mirror(signal, records, start)`` runs the signal from the layer that reverses ``start``
    (a layer name; the model's output when ``None``) down to the input. Where a forward value
    fed several layers, the signals coming back from them are added.
    """

    def __init__(self, layers: Iterable[MirrorLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self._index = {layer.source: i for i, layer in enumerate(self.layers)}

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index: int) -> MirrorLayer:
        return self.layers[index]  # type: ignore[return-value]

    def index_of(self, source: str) -> int:
        """Position of the mirror layer that reverses forward node ``source``."""
        return self._index[source]

    def forward(
        self,
        signal: Tensor,
        records: dict[str, Record],
        start: str | None = None,
        rule: str = "deconvnet",
    ) -> Tensor:
        """signal (Tensor[N, K, *start's output shape]) -> Tensor[N, K, C, H, W]."""
        first = 0 if start is None else self.index_of(start)
        pending: dict[str, Tensor] = {self.layers[first].source: signal}
        for layer in self.layers[first:]:
            arriving = pending.pop(layer.source, None)
            if arriving is None:
                continue  # a branch the signal does not run through
            record = records[layer.source]
            out = layer(arriving, record, rule) if isinstance(layer, ReLU) else layer(arriving, record)
            for name, part in zip(layer.inputs, out if isinstance(out, list) else [out], strict=True):
                pending[name] = pending[name] + part if name in pending else part
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
