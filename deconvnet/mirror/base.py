"""What every mirror layer reads and is: the call's choices (:class:`Context`), what the forward
pass left for it (:class:`Record`), a forward call it can replay (:class:`Call`), and the base
class (:class:`MirrorLayer`) with the declarations the rest of the package reads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..functional import Window

__all__ = ["RULES", "RECTIFIERS", "INPUT", "Context", "Record", "Ref", "fill", "Call", "MirrorLayer", "Described"]

RULES = ("deconvnet", "guided", "gradient")
"""What the mirror does at a rectifier ``f`` with recorded input ``x`` and signal ``g``:
``deconvnet`` passes ``relu(g)`` (Zeiler & Fergus); ``guided`` passes ``relu(f'(x) * g)``
(guided backpropagation); ``gradient`` passes ``f'(x) * g`` (the plain gradient)."""


RECTIFIERS = ("all", "relu")
"""Which activations take the rule: ``all`` the ReLU family (ReLU, ReLU6, LeakyReLU, PReLU, ELU,
GELU, SiLU, ...), ``relu`` ReLU alone, every other activation passing its plain gradient (what
Captum and zennit compute)."""


INPUT = ""
"""The name under which the mirror delivers the signal on the model's input."""


@dataclass(frozen=True)
class Context:
    """Per-call choices that reach every mirror layer.

    rule: one of :data:`RULES`; rectifiers: one of :data:`RECTIFIERS`; deterministic: sum
    overlapping unpooling in a fixed order (``None``: follow
    ``torch.are_deterministic_algorithms_enabled()`` on CUDA).

    memo: where a call that runs the mirror in several chunks keeps what each layer derives
    from its record and would otherwise derive again per chunk (an activation's slope, a
    product's operand, laid out for the signal): ``{key: (record, value)}``, a value counting
    only for the record it was made from. ``None`` (one chunk): nothing is kept. At most one
    tensor the size of a recorded activation per layer, freed with the call.
    """

    rule: str = "deconvnet"
    rectifiers: str = "all"
    deterministic: bool | None = None
    memo: dict[Any, tuple[Record, Any]] | None = field(default=None, compare=False, repr=False)

    def kept(self, key: Any, record: Record, make: Callable[[], Any]) -> Any:
        """``make()``, or what it gave for ``record`` earlier in this call (see ``memo``)."""
        if self.memo is None:
            return make()
        hit = self.memo.get(key)
        if hit is not None and hit[0] is record:
            return hit[1]
        value = make()
        self.memo[key] = (record, value)
        return value


@dataclass(frozen=True)
class Record:
    """What the forward pass left for one layer's mirror.

    input_shape: the layer's (first) input shape, ``(N, ...)``.
    switches (Tensor[N, C, h, w] | None): flat argmax positions of a max-pool.
    input_shapes: the shapes of all its signal inputs, for layers that take several.
    output (Tensor[N, ...] | None): the layer's output.
    input (Tensor[N, ...] | None): the layer's first signal input (activations need it).
    values: the recorded tensors (and other values) the forward call took, in the order of its
        :class:`Call`'s references.
    output_shape: the layer's output shape.

    A lean trace (:func:`deconvnet.capture.run_lean`) leaves ``output``, ``input`` and
    ``values`` out where the layer's mirror does not read them under the call's context; a full
    trace leaves out a batch-norm's output or a sum that the activation after it overwrote in
    place (that activation's ``input`` too: its mirror reads its output), which
    ``Trace.activations`` makes again when read.
    """

    input_shape: tuple[int, ...]
    switches: Tensor | None = None
    input_shapes: tuple[tuple[int, ...], ...] = ()
    output: Tensor | None = None
    input: Tensor | None = None
    values: tuple[Any, ...] = ()
    output_shape: tuple[int, ...] = ()


@dataclass(frozen=True)
class Ref:
    """A place in a call's arguments filled by a value computed in the forward."""

    index: int


def fill(template: Any, values: Sequence[Any]) -> Any:
    if isinstance(template, Ref):
        return values[template.index]
    if isinstance(template, tuple):
        return tuple(fill(t, values) for t in template)
    if isinstance(template, list):
        return [fill(t, values) for t in template]
    if isinstance(template, dict):
        return {k: fill(v, values) for k, v in template.items()}
    if isinstance(template, slice):
        return slice(fill(template.start, values), fill(template.stop, values), fill(template.step, values))
    return template


@dataclass(eq=False)
class Call:
    """One forward operation, replayable on new inputs: what the general and the product mirror
    layers differentiate.

    kind: ``"function"``, ``"method"`` or ``"module"``; target: the function, method name or
    module; args/kwargs: the call's arguments with :class:`Ref` where a forward value goes;
    signals: which references carry the signal (in the order of the layer's inputs); item: an
    index taken from the call's result (a piece of ``chunk``, a module's tuple output), or an
    attribute name (a Hugging Face ``ModelOutput``'s ``last_hidden_state``).
    """

    kind: str
    target: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    signals: tuple[int, ...]
    item: int | str | None = None

    def arguments(self, record: Record, primals: Sequence[Tensor] | None = None) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The call's arguments as recorded, with the signal inputs replaced by ``primals``."""
        values = list(record.values)
        for ref, primal in zip(self.signals, primals or (), strict=False):
            values[ref] = primal
        return fill(self.args, values), fill(self.kwargs, values)

    def named(self, record: Record, names: Sequence[str]) -> dict[str, Any]:
        """The recorded arguments after the first, by parameter name (``names`` in order)."""
        args, kwargs = self.arguments(record)
        return dict(zip(names, args[1:], strict=False)) | kwargs

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.kind == "method":
            out = getattr(args[0], self.target)(*args[1:], **kwargs)
        else:
            out = self.target(*args, **kwargs)
        return self._picked(out)

    def _picked(self, out: Any) -> Any:
        """The call's result, or its :attr:`item`."""
        if self.item is None:
            return out
        return getattr(out, self.item) if isinstance(self.item, str) else out[self.item]

    def replay(self, record: Record, primals: Sequence[Tensor]) -> Tensor:
        """The forward output with the signal inputs replaced by ``primals``, everything else
        (parameters, buffers, values computed from them) a constant: differentiating it gives
        gradients for the primals only (an attention bias made from a parameter must not ask
        for one: ``scaled_dot_product_attention`` refuses a mask that requires grad)."""
        constants = replace(record, values=tuple(v.detach() if isinstance(v, Tensor) else v for v in record.values))
        args, kwargs = self.arguments(constants, primals)
        frozen = {} if self.kind != "module" else {
            name: p.detach() for name, p in self.target.named_parameters() if p.requires_grad
        }
        if not frozen:
            return self(*args, **kwargs)
        # The module's own parameters swapped for detached views of them for this call only
        # (torch.func puts them back); the model's flags and values are never changed.
        return self._picked(torch.func.functional_call(self.target, frozen, tuple(args), kwargs))

    def describe(self) -> str:
        if self.kind == "module":
            name = getattr(self.target, "described", None) or type(self.target).__name__
        elif self.kind == "method":
            name = str(self.target)
        else:
            name = getattr(self.target, "__name__", str(self.target))
        if self.item is None:
            return name
        return f"{name}.{self.item}" if isinstance(self.item, str) else f"{name}[{self.item}]"


class MirrorLayer(nn.Module):
    """Base of the mirror layers.

    ``source`` names the forward layer it reverses; ``inputs`` names the layers (or
    :data:`INPUT`) whose outputs feed it, to which it hands the signal back. A layer with several
    inputs returns one signal per input. ``forward(signal, record, context)``; a registered
    layer may leave out ``context``.

    Declarations read by the rest of the package:
    pointwise: acts on each position alone, so the receptive field passes unchanged;
    rectifier: an activation that takes the method's rule;
    needs: what the trace must keep for it, out of ``"switches"``, ``"input"``, ``"output"``,
        ``"values"``;
    window(): its sliding window (:class:`~deconvnet.functional.Window`), or None;
        window_at(input_shape): the same for one input size (TensorFlow's "same" padding);
    croppable(context): whether it can run on receptive-field windows (:meth:`forward_window`).
    """

    source: str = ""
    inputs: tuple[str, ...] = ()
    pointwise: ClassVar[bool] = False
    rectifier: bool = False
    needs: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # A mirror layer that also is a torch layer of some dimension (ConvTranspose3d,
        # MaxUnpool1d) takes its number of spatial dims, and the torch class to initialise, from it.
        super().__init_subclass__(**kwargs)
        for base in cls.__mro__[1:]:
            if base.__module__.startswith("torch.nn.modules") and base.__name__[-2:] in ("1d", "2d", "3d"):
                cls._base, cls.dims = base, int(base.__name__[-2])  # type: ignore[attr-defined]
                break

    def forward(self, signal: Tensor, record: Record, context: Context) -> Tensor | list[Tensor]:  # pragma: no cover
        raise NotImplementedError

    def needs_under(self, context: Context) -> frozenset[str]:
        """What it reads from its record under ``context`` (:attr:`needs`, less what the
        call's rule makes it ignore)."""
        return self.needs

    def window(self) -> Window | None:
        """The forward layer's sliding window, or None when it has none."""
        return None

    def window_at(self, input_shape: tuple[int, ...]) -> Window | None:
        """The window for an input of ``input_shape`` (N, C, H, W): :meth:`window`, except for
        layers whose padding depends on the input's size."""
        return self.window()

    def croppable(self, context: Context) -> bool:
        """Whether :meth:`forward_window` is exact for this layer under ``context``."""
        return False

    def forward_window(
        self, signal: Tensor, origin: Tensor, record: Record, images: Tensor, context: Context
    ) -> tuple[Tensor, Tensor]:
        """The mirror on windows: signal (Tensor[T, C, *w]) whose first corner (top-left in 2-D)
        sits at ``origin`` (LongTensor[T, d]) of input ``images[t]`` -> (the window below, its
        origin)."""
        return self(signal.unsqueeze(1), record, context).squeeze(1), origin


class Described(MirrorLayer):
    """A mirror layer that prints as ``what`` and keeps plain callables (read from the forward
    layer or its recorded call), never registered as child modules."""

    def __init__(self, what: str, **functions: Callable[..., Any]) -> None:
        super().__init__()
        self.what = what
        for name, function in functions.items():
            object.__setattr__(self, name, function)

    def extra_repr(self) -> str:
        return self.what
