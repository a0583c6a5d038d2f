"""The mirror modules: one reversed layer each, and the graph that runs them.

Each mirror layer maps a signal on its forward layer's output, ``Tensor[N, K, ...]`` (``K``
targets per input), to a signal on that layer's input, reading what the forward pass recorded
for it (a :class:`Record`) and the per-call choices (a :class:`Context`). Weights are the forward
layer's own Parameters, never copies.

A layer also says what the rest of the package needs to know about it, once: its sliding
:meth:`~MirrorLayer.window` (receptive fields, cropping), whether it is ``pointwise`` (keeps
receptive fields), whether it is a ``rectifier`` (takes the method's rule), what it ``needs``
recorded, and whether it can run on receptive-field windows (:meth:`~MirrorLayer.croppable`).
"""

from __future__ import annotations

import functools
import inspect
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from math import prod
from typing import Any, ClassVar, NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import functional
from .functional import Window, ntuple, pair

__all__ = [
    "Context",
    "precision",
    "Record",
    "Call",
    "MirrorLayer",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
    "SameConvTranspose2d",
    "MaxUnpool1d",
    "MaxUnpool2d",
    "MaxUnpool3d",
    "OverlapUnpool1d",
    "OverlapUnpool2d",
    "OverlapUnpool3d",
    "unpooling",
    "AdaptiveMaxUnpool1d",
    "AdaptiveMaxUnpool2d",
    "AdaptiveMaxUnpool3d",
    "ReLU",
    "Activation",
    "LinearTranspose",
    "ChannelScale",
    "AvgPool1dTranspose",
    "AvgPool2dTranspose",
    "AvgPool3dTranspose",
    "AdaptiveAvgPool1dTranspose",
    "AdaptiveAvgPool2dTranspose",
    "AdaptiveAvgPool3dTranspose",
    "Crop",
    "Scatter",
    "Permute",
    "Product",
    "Broadcast",
    "Normalization",
    "Reshape",
    "Identity",
    "Add",
    "Concat",
    "VJP",
    "Mirror",
    "RULES",
    "RECTIFIERS",
    "INPUT",
    "Window",
]


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
class _Ref:
    """A place in a call's arguments filled by a value computed in the forward."""

    index: int


def _fill(template: Any, values: Sequence[Any]) -> Any:
    if isinstance(template, _Ref):
        return values[template.index]
    if isinstance(template, tuple):
        return tuple(_fill(t, values) for t in template)
    if isinstance(template, list):
        return [_fill(t, values) for t in template]
    if isinstance(template, dict):
        return {k: _fill(v, values) for k, v in template.items()}
    if isinstance(template, slice):
        return slice(_fill(template.start, values), _fill(template.stop, values), _fill(template.step, values))
    return template


@dataclass(eq=False)
class Call:
    """One forward operation, replayable on new inputs: what the general and the product mirror
    layers differentiate.

    kind: ``"function"``, ``"method"`` or ``"module"``; target: the function, method name or
    module; args/kwargs: the call's arguments with :class:`_Ref` where a forward value goes;
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
        return _fill(self.args, values), _fill(self.kwargs, values)

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


class _Described(MirrorLayer):
    """A mirror layer that prints as ``what`` and keeps plain callables (read from the forward
    layer or its recorded call), never registered as child modules."""

    def __init__(self, what: str, **functions: Callable[..., Any]) -> None:
        super().__init__()
        self.what = what
        for name, function in functions.items():
            object.__setattr__(self, name, function)

    def extra_repr(self) -> str:
        return self.what


class _ConvTranspose(MirrorLayer):
    """Transposed conv whose ``weight`` **is** the forward convolution's Parameter, no bias, in
    any number of spatial dims: :class:`ConvTranspose1d`, :class:`ConvTranspose2d` and
    :class:`ConvTranspose3d` declare only their torch base (what they print as).

    Built from a ``Conv{1,2,3}d`` (:meth:`from_conv`) or from the arguments of an
    ``F.conv{1,2,3}d`` call.
    """

    needs = frozenset({"input_shape"})
    dims: ClassVar[int] = 2
    _base: ClassVar[type[nn.Module]] = nn.ConvTranspose2d

    def __init__(
        self,
        weight: Tensor,
        stride: Sequence[int],
        pads: Sequence[tuple[int, int]],
        dilation: Sequence[int],
        groups: int,
    ) -> None:
        out_channels, in_per_group = weight.shape[:2]
        self._base.__init__(
            self,
            out_channels,
            in_per_group * groups,
            tuple(weight.shape[2:]),
            stride=tuple(stride),
            padding=tuple(before for before, _ in pads),
            groups=groups,
            bias=False,
            dilation=tuple(dilation),
            device="meta",
        )
        if isinstance(weight, nn.Parameter):
            self.weight = weight  # type: ignore[assignment]  # the forward's own Parameter
        else:
            del self.weight  # a buffer, read from the model on each call: see FetchedConvTranspose2d
        self.pads = pads
        self._kernels: dict[Any, tuple[tuple[Any, ...], Tensor]] = {}  # slot -> (key, kernel)

    def kernel(self, memory_format: torch.memory_format) -> Tensor:
        """The weight rearranged for the transposed conv (in ``memory_format``, or as sub-pixel
        phases), prepared once and again only when the weight changes (its storage or version
        counter: an optimizer step, ``load_state_dict``, ``model.to``)."""
        return self._prepared(memory_format, memory_format, (), lambda weight: weight)

    def folded_kernel(self, scale: ChannelScale, memory_format: torch.memory_format) -> Tensor:
        """:meth:`kernel` of the weight times the batch-norm ``scale`` that follows the conv
        (per output channel): the mirror's scale-then-transpose in one convolution. Prepared
        again only when the weight or the batch-norm's statistics change."""
        var, factor, eps = scale.statistics()  # type: ignore[operator]
        statistics = (var.data_ptr(), var._version, eps,
                      None if factor is None else factor.data_ptr(), None if factor is None else factor._version)
        shape = (-1, *[1] * (self.dims + 1))
        return self._prepared((scale, memory_format), memory_format, statistics,
                              lambda weight: weight * scale.scale().detach().to(weight.dtype).view(shape))

    def _prepared(self, slot: Any, memory_format: torch.memory_format, depends: tuple[Any, ...],
                  weight_of: Callable[[Tensor], Tensor]) -> Tensor:
        """The kernel cached under ``slot``: ``weight_of(weight)`` rearranged, prepared again when
        the weight or anything in ``depends`` changed."""
        weight = self.weight
        key = (weight.data_ptr(), weight._version, weight.device, weight.dtype, tuple(weight.shape), *depends)
        cached = self._kernels.get(slot)
        if cached is None or cached[0] != key:
            kernel = functional.transpose_kernel(
                weight_of(weight.detach()), tuple(self.stride), tuple(self.dilation), self.groups, memory_format
            )
            cached = self._kernels[slot] = (key, kernel)
        return cached[1]

    def folded_forward(self, scale: ChannelScale, signal: Tensor, record: Record, context: Context) -> Tensor:
        """:meth:`forward` of ``scale``'s mirror (the batch-norm after the conv) then this one."""
        return self._transposed(signal, record, functools.partial(self.folded_kernel, scale))

    def _transposed(self, signal: Tensor, record: Record, prepared: Callable[[torch.memory_format], Tensor]) -> Tensor:
        return functional.conv_transpose(
            signal, self.weight, record.input_shape[2:], tuple(self.stride), self.pads, tuple(self.dilation),
            self.groups, prepared,
        )

    @classmethod
    def from_conv(cls, conv: nn.Module) -> _ConvTranspose:
        """The mirror of a ``Conv{1,2,3}d``, of the class of its dimension."""
        dims = conv.weight.dim() - 2
        mirror_class = cls if cls.dims == dims else _CONV_TRANSPOSE[dims]
        return mirror_class(conv.weight, ntuple(conv.stride, dims),
                            conv_padding(conv.padding, conv.kernel_size, conv.dilation), ntuple(conv.dilation, dims),
                            conv.groups)

    def forward(self, signal: Tensor, record: Record, context: Context) -> Tensor:  # type: ignore[override]
        """signal (Tensor[N, K, C_out, *out]) -> Tensor[N, K, C_in, *in] (h, w; L; or D, H, W)."""
        return self._transposed(signal, record, self.kernel)

    def window(self) -> Window:
        """The forward conv's sliding window (its ``"same"`` padding resolved)."""
        before = tuple(first for first, _ in self.pads)
        return Window(tuple(self.weight.shape[2:]), tuple(self.stride), before, tuple(self.dilation))

    def croppable(self, context: Context) -> bool:
        return True

    def forward_window(
        self, signal: Tensor, origin: Tensor, record: Record, images: Tensor, context: Context
    ) -> tuple[Tensor, Tensor]:
        return functional.conv_transpose_window(
            signal, self.weight, self.window(), self.groups, origin, record.input_shape[2:], self.kernel
        )


class ConvTranspose1d(_ConvTranspose, nn.ConvTranspose1d):
    """:class:`_ConvTranspose` of a ``Conv1d``: signals (Tensor[N, K, C, L])."""


class ConvTranspose2d(_ConvTranspose, nn.ConvTranspose2d):
    """:class:`_ConvTranspose` of a ``Conv2d``: images (Tensor[N, K, C, H, W])."""


class ConvTranspose3d(_ConvTranspose, nn.ConvTranspose3d):
    """:class:`_ConvTranspose` of a ``Conv3d``: volumes and clips (Tensor[N, K, C, D, H, W])."""


_CONV_TRANSPOSE: dict[int, type[_ConvTranspose]] = {1: ConvTranspose1d, 2: ConvTranspose2d, 3: ConvTranspose3d}


class FetchedConvTranspose2d(ConvTranspose2d):
    """The transpose of a convolution whose weight is not a Parameter but a buffer of the model
    (timm's ``BlurPool2d`` convolves with a fixed filter), read from the model on each use:
    ``model.to`` replaces buffers where it moves parameters in place."""

    def __init__(
        self,
        fetch: Callable[[], Tensor],
        stride: tuple[int, int],
        pads: tuple[tuple[int, int], tuple[int, int]],
        dilation: tuple[int, int],
        groups: int,
    ) -> None:
        super().__init__(fetch(), stride, pads, dilation, groups)
        object.__setattr__(self, "fetch", fetch)

    def __getattr__(self, name: str) -> Any:
        fetch = self.__dict__.get("fetch")
        if name == "weight" and fetch is not None:
            return fetch()
        return super().__getattr__(name)


def conv_padding(
    padding: str | int | Sequence[int], kernel_size: Sequence[int] | int, dilation: Sequence[int] | int
) -> tuple[tuple[int, int], ...]:
    """(before, after) padding per spatial dim of a conv, resolving ``"same"`` and ``"valid"``."""
    dims = len(kernel_size) if not isinstance(kernel_size, int) else 2
    if padding == "valid":
        return ((0, 0),) * dims
    if padding == "same":
        # torch pads the odd extra row/column of "same" at the end.
        spans = Window(ntuple(kernel_size, dims), (1,) * dims, None, ntuple(dilation, dims)).span()
        return tuple(((s - 1) // 2, s - 1 - (s - 1) // 2) for s in spans)
    return tuple((p, p) for p in ntuple(padding, dims))  # type: ignore[arg-type]


class SameConvTranspose2d(ConvTranspose2d):
    """Transpose of a conv with TensorFlow's "same" padding computed from each input's size
    (timm's ``Conv2dSame``): the padding is worked out again from the recorded input shape."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__(conv.weight, pair(conv.stride), ((0, 0), (0, 0)), pair(conv.dilation), conv.groups)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", padding=tf-same"

    def forward(self, signal: Tensor, record: Record, context: Context) -> Tensor:  # type: ignore[override]
        window = Window(pair(self.weight.shape[2:]), pair(self.stride), (0, 0), pair(self.dilation))
        pads = functional.same_padding(record.input_shape[2:], window)
        return functional.conv_transpose2d(
            signal, self.weight, record.input_shape[2:], pair(self.stride), pads, pair(self.dilation), self.groups,
            self.kernel,
        )

    def window(self) -> None:
        return None  # the padding depends on the input size

    def window_at(self, input_shape: tuple[int, ...]) -> Window:
        base = Window(pair(self.weight.shape[2:]), pair(self.stride), (0, 0), pair(self.dilation))
        (top, _), (left, _) = functional.same_padding(input_shape[2:], base)
        return Window(base.kernel, base.stride, (top, left), base.dilation)  # the field's offset: the leading pads

    def croppable(self, context: Context) -> bool:
        return False


class _MaxUnpool(MirrorLayer):
    """Unpooling into the forward switches, for max-pools whose windows do not overlap, in any
    number of spatial dims (``MaxUnpool1d``, ``MaxUnpool2d``, ``MaxUnpool3d`` declare their torch
    base); the ``Overlap`` ones add signals meeting on a switch."""

    accumulate = False
    needs = frozenset({"switches"})
    dims: ClassVar[int] = 2
    _base: ClassVar[type[nn.Module]] = nn.MaxUnpool2d

    def __init__(self, pool: nn.Module) -> None:
        self._base.__init__(self, pool.kernel_size, pool.stride, pool.padding)
        self.dilation = pool.dilation
        self.ceil_mode = pool.ceil_mode

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dilation={self.dilation}, ceil_mode={self.ceil_mode}"

    def forward(self, signal: Tensor, record: Record, context: Context) -> Tensor:  # type: ignore[override]
        """signal (Tensor[N, K, C, h, w]) -> Tensor[N, K, C, H, W]."""
        switches = cast(Tensor, record.switches)  # every max-pool records its switches
        ordered = context.deterministic
        if ordered is None:
            ordered = signal.is_cuda and torch.are_deterministic_algorithms_enabled()
        phases = self.window().phases() if ordered and self.accumulate else None
        return functional.unpool(signal, switches, record.input_shape[2:], self.accumulate, phases)

    def window(self) -> Window:
        """The forward max-pool's sliding window."""
        stride = self.stride if self.stride is not None else self.kernel_size
        d = self.dims
        return Window(ntuple(self.kernel_size, d), ntuple(stride, d), ntuple(self.padding, d), ntuple(self.dilation, d))

    def croppable(self, context: Context) -> bool:
        return True

    def forward_window(
        self, signal: Tensor, origin: Tensor, record: Record, images: Tensor, context: Context
    ) -> tuple[Tensor, Tensor]:
        switches = cast(Tensor, record.switches)
        return functional.unpool_window(signal, switches, self.window(), origin, images, record.input_shape[2:])


class MaxUnpool1d(_MaxUnpool, nn.MaxUnpool1d):
    """:class:`_MaxUnpool` of a ``MaxPool1d``."""


class MaxUnpool2d(_MaxUnpool, nn.MaxUnpool2d):
    """:class:`_MaxUnpool` of a ``MaxPool2d``."""


class MaxUnpool3d(_MaxUnpool, nn.MaxUnpool3d):
    """:class:`_MaxUnpool` of a ``MaxPool3d``."""


class OverlapUnpool1d(MaxUnpool1d):
    """Unpooling for overlapping windows (kernel > stride): signals meeting on a switch add up."""

    accumulate = True


class OverlapUnpool2d(MaxUnpool2d):
    """Unpooling for overlapping windows (kernel > stride): signals meeting on a switch add up."""

    accumulate = True


class OverlapUnpool3d(MaxUnpool3d):
    """Unpooling for overlapping windows (kernel > stride): signals meeting on a switch add up."""

    accumulate = True


def unpooling(pool: nn.Module) -> _MaxUnpool:
    """The mirror of a ``MaxPool{1,2,3}d``: its dimension's unpooling, adding where windows overlap."""
    dims = {nn.MaxPool1d: 1, nn.MaxPool3d: 3}.get(type(pool), 2)
    plain = {1: MaxUnpool1d, 2: MaxUnpool2d, 3: MaxUnpool3d}[dims](pool)
    if not plain.window().overlaps():
        return plain
    return {1: OverlapUnpool1d, 2: OverlapUnpool2d, 3: OverlapUnpool3d}[dims](pool)


class _Adaptive(MirrorLayer):
    """An adaptive pool's mirror: it prints its forward's ``output_size``."""

    def __init__(self, output_size: Any) -> None:
        super().__init__()
        self.output_size = output_size

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class AdaptiveMaxUnpool2d(_Adaptive):
    """``AdaptiveMaxPool2d`` reversed: unpooling into its switches (adaptive windows may
    overlap, so colliding signals add up). The same in 1-D and 3-D, under their names."""

    needs = frozenset({"switches"})

    def forward(self, signal: Tensor, record: Record, context: Context) -> Tensor:
        return functional.unpool(signal, cast(Tensor, record.switches), record.input_shape[2:], True)


class AdaptiveMaxUnpool1d(AdaptiveMaxUnpool2d):
    """``AdaptiveMaxPool1d`` reversed (see :class:`AdaptiveMaxUnpool2d`)."""


class AdaptiveMaxUnpool3d(AdaptiveMaxUnpool2d):
    """``AdaptiveMaxPool3d`` reversed (see :class:`AdaptiveMaxUnpool2d`)."""


def _derivative(function: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """f'(x) of an element-wise function, by forward-mode autograd at the recorded input."""
    _, slope = torch.func.jvp(function, (x,), (torch.ones_like(x),))
    return slope


class Activation(_Described):
    """An element-wise activation ``f`` reversed at its recorded input ``x``.

    A rectifier (the ReLU family) takes the call's rule (see :data:`RULES`) when
    ``context.rectifiers`` covers it; every other activation, and a rectifier left out by
    ``rectifiers="relu"``, passes its plain gradient ``f'(x) * g``.
    """

    pointwise = True
    needs = frozenset({"input", "output"})

    def __init__(
        self,
        what: str,
        function: Callable[[Tensor], Tensor],
        rectifier: bool,
        relu: bool = False,
        gradient: Callable[[Tensor, Tensor], Tensor] | None = None,
        from_output: bool = False,
    ) -> None:
        # function may be the user's module: kept, not registered as a child. gradient:
        # (g, x) -> f'(x) * g in closed form for g and x of one shape, when known; forward-mode
        # autograd through ``function`` otherwise. from_output: gradient gives the same handed
        # y = f(x) (see rules.gradient_reads_output); then only the output is read, so a trace
        # may run f in place.
        if relu:
            gradient, from_output = _relu_gradient, True
        super().__init__(what, function=function, closed_gradient=gradient)
        self.rectifier = rectifier
        self.is_relu = relu
        self.from_output = from_output and gradient is not None

    def extra_repr(self) -> str:
        return f"{self.what}, {'rectifier' if self.rectifier else 'gradient'}"

    def takes_rule(self, context: Context) -> bool:
        return self.is_relu or (self.rectifier and context.rectifiers == "all")

    def needs_under(self, context: Context) -> frozenset[str]:
        if self.takes_rule(context) and context.rule == "deconvnet":
            return frozenset()  # relu(g) reads nothing recorded
        return frozenset({"output" if self.from_output else "input"})

    def _closed(self, record: Record) -> tuple[Callable[[Tensor, Tensor], Tensor] | None, Tensor]:
        """The closed-form gradient and the recorded tensor it reads (the output where it can)."""
        recorded = record.output if self.from_output else record.input
        return self.closed_gradient, cast(Tensor, recorded)  # type: ignore[attr-defined]

    def slope(self, record: Record) -> Tensor:
        """f'(x) at the recorded input, Tensor[N, ...]."""
        closed, recorded = self._closed(record)
        if closed is not None:
            return closed(torch.ones_like(recorded), recorded)
        return _derivative(self.function, recorded)  # type: ignore[arg-type]

    def gradient(self, signal: Tensor, record: Record, context: Context) -> Tensor:
        """f'(x) * signal for signal (Tensor[N, K, ...]): in one pass for one target, else
        f'(x) once, broadcast over the K targets."""
        closed, recorded = self._closed(record)
        if signal.shape[1] == 1 and signal.dtype == recorded.dtype and closed is not None:
            return closed(signal.squeeze(1), recorded).unsqueeze(1)
        return functional.multiply_flat(signal, self._flat_slope(signal, record, context))

    def _flat_slope(self, signal: Tensor, record: Record, context: Context) -> Tensor:
        """f'(x) laid out for ``signal`` (:func:`functional.flat_factor`), once per call."""
        key = (self, functional.channels_last(signal), signal.dtype)
        return context.kept(key, record, lambda: functional.flat_factor(signal, self.slope(record)))

    def forward(self, signal: Tensor, record: Record, context: Context) -> Tensor:
        return self._reversed(signal, record, context, in_place=False)

    def forward_in_place(self, signal: Tensor, record: Record, context: Context) -> Tensor:
        """:meth:`forward` written into ``signal``, which the mirror owns: the same values
        without a fresh tensor (for K targets, f'(x) is still computed once, at N)."""
        return self._reversed(signal, record, context, in_place=True)

    def _reversed(self, signal: Tensor, record: Record, context: Context, in_place: bool) -> Tensor:
        rule = context.rule if self.takes_rule(context) else "gradient"
        if rule == "deconvnet":
            return signal.relu_() if in_place else F.relu(signal)
        one_pass = signal.shape[1] == 1 and self._closed(record)[0] is not None
        if in_place and not one_pass:  # one target already takes one pass: no broadcast to save
            out = functional.multiply_flat_(signal, self._flat_slope(signal, record, context))
        else:
            out = self.gradient(signal, record, context)
        if rule != "guided":
            return out
        return out.relu_() if in_place else F.relu(out)

    def croppable(self, context: Context) -> bool:
        # relu(g) reads nothing recorded; the other rules need f'(x) at every window position.
        return self.takes_rule(context) and context.rule == "deconvnet"


def _relu_gradient(g: Tensor, x: Tensor) -> Tensor:
    return torch.where(x > 0, g, 0.0)


class ReLU(Activation):
    """The rectifier of Zeiler & Fergus reversed: ReLU of the reconstruction signal (or, with
    another rule, masked by where the forward input was positive)."""

    def __init__(self, what: str = "ReLU") -> None:
        super().__init__(what, F.relu, rectifier=True, relu=True)

    def extra_repr(self) -> str:
        return ""


class LinearTranspose(MirrorLayer):
    """Multiplication by the forward ``Linear``'s shared weight, transposed; no bias."""

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        self.weight = weight

    def extra_repr(self) -> str:
        out_features, in_features = self.weight.shape
        return f"out_features={out_features} -> in_features={in_features}, bias=False"

    def forward(self, signal: Tensor, record: Record, context: Context) -> Tensor:
        """signal (Tensor[N, K, ..., out_features]) -> Tensor[N, K, ..., in_features]."""
        return functional.linear_transpose(signal, self.weight)


class ChannelScale(_Described):
    """Eval-mode batch-norm reversed: scale by weight / sqrt(running_var + eps), no shift.

    ``statistics()`` returns (running_var, weight or None, eps), read from the batch-norm (or
    the ``F.batch_norm`` call's tensors) at every call, so it follows fine-tuning and
    ``model.to(...)``.
    """

    pointwise = True

    def __init__(self, what: str, statistics: Callable[[], tuple[Tensor, Tensor | None, float]]) -> None:
        super().__init__(what, statistics=statistics)

    @classmethod
    def from_norm(cls, norm: nn.modules.batchnorm._BatchNorm) -> ChannelScale:
        return cls(f"{norm.num_features}, eps={norm.eps}", lambda: (norm.running_var, norm.weight, norm.eps))  # type: ignore[return-value]

    def scale(self) -> Tensor:
        """Tensor[C]: the per-channel factor of the eval-mode batch-norm."""
        var, weight, eps = self.statistics()  # type: ignore[operator]
        scale = (var + eps).rsqrt()
        return scale if weight is None else scale * weight

    def forward(self, signal: Tensor, record: Record, context: Context) -> Tensor:
        """signal (Tensor[N, K, C, ...]) -> same shape."""
        scale = self.scale().to(signal.dtype)
        return signal * scale.view(-1, *([1] * (signal.dim() - 3)))

    def forward_in_place(self, signal: Tensor, record: Record, context: Context) -> Tensor:
        """:meth:`forward` written into ``signal``, which the mirror owns."""
        return signal.mul_(self.scale().to(signal.dtype).view(-1, *([1] * (signal.dim() - 3))))

    def croppable(self, context: Context) -> bool:
        return True


class AvgPool2dTranspose(MirrorLayer):
    """Exact transpose of ``AvgPool2d``, with its padding, ceil_mode and divisor rules; the 1-D
    and 3-D ones are the same layer under their names."""

    dims: ClassVar[int] = 2

    def __init__(self, pool: nn.Module) -> None:
        super().__init__()
        d = self.dims
        self.kernel_size = ntuple(pool.kernel_size, d)
        self.stride = ntuple(pool.stride if pool.stride is not None else pool.kernel_size, d)
        self.padding = ntuple(pool.padding, d)
        self.ceil_mode = bool(pool.ceil_mode)
        self.count_include_pad = bool(pool.count_include_pad)
        self.divisor_override = getattr(pool, "divisor_override", None)

    def window(self) -> Window:
        """The forward avg-pool's sliding window."""
        return Window(self.kernel_size, self.stride, self.padding)

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"ceil_mode={self.ceil_mode}, count_include_pad={self.count_include_pad}"
        )

    def forward(self, signal: Tensor, record: Record, context: Context) -> Tensor:
        return functional.avg_pool2d_transpose(
            signal, record.input_shape[2:], self.kernel_size, self.stride, self.padding,
            self.ceil_mode, self.count_include_pad, self.divisor_override,
        )


class AvgPool1dTranspose(AvgPool2dTranspose):
    """Exact transpose of ``AvgPool1d`` (see :class:`AvgPool2dTranspose`)."""

    dims = 1


class AvgPool3dTranspose(AvgPool2dTranspose):
    """Exact transpose of ``AvgPool3d`` (see :class:`AvgPool2dTranspose`)."""

    dims = 3


class AdaptiveAvgPool2dTranspose(_Adaptive):
    """Exact transpose of ``AdaptiveAvgPool2d`` (also when it upsamples); the 1-D and 3-D ones
    are the same layer under their names."""

    def forward(self, signal: Tensor, record: Record, context: Context) -> Tensor:
        return functional.adaptive_avg_pool2d_transpose(signal, record.input_shape[2:])


class AdaptiveAvgPool1dTranspose(AdaptiveAvgPool2dTranspose):
    """Exact transpose of ``AdaptiveAvgPool1d``."""


class AdaptiveAvgPool3dTranspose(AdaptiveAvgPool2dTranspose):
    """Exact transpose of ``AdaptiveAvgPool3d``."""


class Crop(MirrorLayer):
    """Constant padding reversed: the padded border cropped off (a negative pad, which crops
    in the forward, pads the signal with zeros). ``pad`` is ``F.pad``'s, last dim first."""

    pointwise = True

    def __init__(self, pad: Sequence[int]) -> None:
        super().__init__()
        self.pad = tuple(int(p) for p in pad)

    def extra_repr(self) -> str:
        return f"pad={self.pad}"

    def forward(self, signal: Tensor, record: Record, context: Context) -> Tensor:
        return F.pad(signal, [-p for p in self.pad])

    def window(self) -> Window | None:
        """A pad of the two spatial dims only shifts positions: a window of kernel 1."""
        if len(self.pad) < 4 and len(self.pad) != 2:  # pragma: no cover - F.pad takes pairs
            return None
        left = self.pad[0]
        top = self.pad[2] if len(self.pad) >= 4 else 0
        if len(self.pad) > 4 and any(self.pad[4:]):
            return None  # also pads channels: not a spatial window
        return Window((1, 1), (1, 1), (top, left))

    def croppable(self, context: Context) -> bool:
        return self.window() is not None

    def forward_window(
        self, signal: Tensor, origin: Tensor, record: Record, images: Tensor, context: Context
    ) -> tuple[Tensor, Tensor]:
        below = functional.origin_below(cast(Window, self.window()), origin)
        return functional.mask_outside(signal, below, record.input_shape[2:]), below


class Scatter(_Described):
    """A slice, index, ``narrow``, ``chunk``, ``split`` or ``unbind`` piece reversed: the signal
    written back where the piece came from, zeros elsewhere.

    ``take(tensor, shift, args, kwargs)`` repeats the forward selection, with the call's
    recorded arguments, on a tensor with ``shift`` extra dims after the batch dim, returning a
    view: the mirror writes the signal through it.
    """

    needs = frozenset({"values"})

    def __init__(self, what: str, take: Callable[..., Tensor], call: Call) -> None:
        super().__init__(what, take=take)
        self.call = call

    def forward(self, signal: Tensor, record: Record, context: Context) -> Tensor:
        args, kwargs = self.call.arguments(record)
        out = signal.new_zeros(*signal.shape[:2], *record.input_shape[1:])
        self.take(out, 1, args, kwargs).copy_(signal)  # type: ignore[operator]
        return out


class Permute(_Described):
    """A ``permute``, ``transpose`` or ``movedim`` reversed: the inverse permutation.

    ``order(ndim)`` gives the forward permutation of a tensor with ``ndim`` dims.
    """

    def __init__(self, what: str, order: Callable[[int], list[int]]) -> None:
        super().__init__(what, order=order)

    def forward(self, signal: Tensor, record: Record, context: Context) -> Tensor:
        order = self.order(len(record.input_shape))  # type: ignore[operator]
        if order[0] != 0:
            raise ValueError(f"{self.source} ({self.what}) moves the batch dimension")
        with_k = [0, 1] + [d + 1 for d in order[1:]]
        inverse = sorted(range(len(with_k)), key=with_k.__getitem__)
        return signal.permute(inverse)


def _with_k(value: Any, ndim: int) -> Any:
    """A recorded operand, broadcastable against signals (Tensor[N, K, ...]) of an ndim-dim
    forward output: a full-rank tensor gets the K axis."""
    if isinstance(value, Tensor) and value.dim() == ndim:
        return value.unsqueeze(1)
    return value


class Product(MirrorLayer):
    """A product or quotient reversed by the product rule at the recorded operands.

    ``a * b``: ``a`` gets ``g * b``, ``b`` gets ``g * a``; ``a / b``: ``a`` gets ``g / b``, ``b``
    gets ``-g * a / b**2``; each summed back over what the forward broadcast. A factor that
    carries no signal (a constant, a layer scale) is a plain scale; two signal factors are a gate
    (squeeze-and-excitation).
    """

    pointwise = True
    needs = frozenset({"values"})

    def __init__(self, call: Call, divide: bool) -> None:
        super().__init__()
        self.call = call
        self.divide = divide

    def extra_repr(self) -> str:
        kind = "gate" if len(self.call.signals) > 1 else "scale"
        return f"{'divide' if self.divide else 'multiply'}, {kind}"

    def forward(self, signal: Tensor, record: Record, context: Context) -> list[Tensor]:
        refs = [arg.index if isinstance(arg, _Ref) else None for arg in self.call.args[:2]]
        out = []
        for ref, shape in zip(self.call.signals, record.input_shapes, strict=True):
            which = 2 if refs.count(ref) == 2 else refs.index(ref)  # 2: x * x
            key = (self, which, functional.channels_last(signal), signal.dtype)
            flat, factor = context.kept(key, record, lambda which=which: self._factor(signal, record, which))
            part = functional.multiply_flat(signal, factor) if flat else signal * _with_k(factor, signal.dim() - 1)
            out.append(functional.sum_to(part, shape))
        return out

    def _factor(self, signal: Tensor, record: Record, which: int) -> tuple[bool, Any]:
        """What the signal into operand ``which`` (0 or 1; 2: both, as in ``x * x``) is
        multiplied by: d(a * b) = (b, a), d(a / b) = (1 / b, -a / b**2), summed for ``x * x``.
        (True, a flat factor) for an operand of the signal's full size (the fast flat
        product, :func:`functional.multiply_flat`), else (False, the operand or number)."""
        args, _ = self.call.arguments(record)
        a, b = args[0], args[1]
        if self.divide:
            factor = 1 / b - a / (b * b) if which == 2 else 1 / b if which == 0 else -a / (b * b)
        else:
            factor = b + a if which == 2 else b if which == 0 else a
        if isinstance(factor, Tensor) and factor.dim() == signal.dim() - 1 and factor.shape[0] == signal.shape[0] \
                and tuple(factor.shape[1:]) == tuple(signal.shape[2:]):
            return True, functional.flat_factor(signal, factor)
        return False, factor


class Broadcast(_Described):
    """A ``mean`` or ``sum`` over non-batch dims reversed: the signal broadcast back (divided by
    the count for a mean). ``dims(ndim)`` gives the reduced dims of an ``ndim``-dim input."""

    def __init__(self, what: str, dims: Callable[[int], list[int]], keepdim: bool, mean: bool) -> None:
        super().__init__(what, dims=dims)
        self.keepdim = keepdim
        self.mean = mean

    def forward(self, signal: Tensor, record: Record, context: Context) -> Tensor:
        shape = record.input_shape
        dims = sorted(self.dims(len(shape)))  # type: ignore[operator]
        if 0 in dims:
            raise ValueError(f"{self.source} ({self.what}) reduces over the batch dimension")
        if not self.keepdim:
            for d in dims:
                signal = signal.unsqueeze(d + 1)
        out = signal.expand(*signal.shape[:2], *shape[1:])
        if self.mean:
            out = out / prod(shape[d] for d in dims)
        return out


class Normalization(_Described):
    """Layer or group normalisation reversed: its exact vector-Jacobian product at the recorded
    input (the affine shift drops out; the weight scales).

    statistics(record) returns (groups or None, normalised trailing dims, weight or None, eps):
    with ``groups`` the channels are split into groups normalised over everything else (the
    weight is per channel); without, the last ``dims`` dims are normalised (the weight has their
    shape). ``call``: the functional call whose recorded arguments they come from, if any.
    """

    needs = frozenset({"input", "values"})

    def __init__(
        self,
        what: str,
        statistics: Callable[[Record], tuple[int | None, int, Tensor | None, float]],
        call: Call | None = None,
    ) -> None:
        super().__init__(what, statistics=statistics)
        self.call = call

    def forward(self, signal: Tensor, record: Record, context: Context) -> Tensor:
        groups, dims, weight, eps = self.statistics(record)  # type: ignore[operator]
        x = cast(Tensor, record.input)
        if groups is None:
            reduced = list(range(x.dim() - dims, x.dim()))
            return functional.normalize_vjp(signal, x, reduced, weight, eps)
        if weight is not None:
            signal = signal * weight.view(-1, *([1] * (x.dim() - 2)))
        n, k = signal.shape[:2]
        grouped = functional.normalize_vjp(
            signal.reshape(n, k, groups, -1), x.reshape(x.shape[0], groups, -1), [2], None, eps
        )
        return grouped.reshape(signal.shape)


class Reshape(MirrorLayer):
    """A flatten, view or reshape undone: back to the recorded input shape."""

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what

    def extra_repr(self) -> str:
        return f"undoes {self.what}"

    def forward(self, signal: Tensor, record: Record, context: Context) -> Tensor:
        return signal.reshape(*signal.shape[:2], *record.input_shape[1:])


class Identity(MirrorLayer):
    """A layer that is the identity in eval mode (Dropout, stochastic depth, Identity,
    contiguous, adding a constant)."""

    pointwise = True

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what

    def extra_repr(self) -> str:
        return f"for {self.what}"

    def forward(self, signal: Tensor, record: Record, context: Context) -> Tensor:
        return signal

    def croppable(self, context: Context) -> bool:
        return True


class Add(MirrorLayer):
    """A sum reversed: each summand gets the signal (times its ``alpha``), summed back over
    what the forward broadcast."""

    pointwise = True

    def __init__(self, alphas: tuple[float, ...]) -> None:
        super().__init__()
        self.alphas = alphas

    def extra_repr(self) -> str:
        return "" if all(a == 1 for a in self.alphas) else f"alphas={self.alphas}"

    def forward(self, signal: Tensor, record: Record, context: Context) -> list[Tensor]:
        parts = [signal if a == 1 else signal * a for a in self.alphas]
        return [functional.sum_to(p, shape) for p, shape in zip(parts, record.input_shapes, strict=True)]


class Concat(MirrorLayer):
    """A concatenation reversed: the signal split back into each input's part. ``parts`` says
    which of the concatenated tensors carry the signal (the others, constants such as a class
    token, get none)."""

    pointwise = True
    needs = frozenset({"values"})

    def __init__(self, dim: int, parts: tuple[int, ...]) -> None:
        super().__init__()
        self.dim = dim
        self.parts = parts

    def extra_repr(self) -> str:
        return f"dim={self.dim}"

    def forward(self, signal: Tensor, record: Record, context: Context) -> list[Tensor]:
        """signal (Tensor[N, K, ...]) -> one Tensor[N, K, ...] per signal input."""
        dim = self.dim % len(record.input_shape)  # along the forward tensor's axes
        sizes = [value.shape[dim] for value in record.values]
        pieces = signal.split(sizes, dim=dim + 1)
        return [pieces[i] for i in self.parts]


class _Rectified(torch.autograd.Function):
    """A rectifier inside a general (VJP) node, with the method's rule as its backward."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, function: Callable[[Tensor], Tensor], rule: str) -> Tensor:  # type: ignore[override]
        return function(x)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        x, function, rule = inputs
        ctx.save_for_backward(x)
        ctx.function, ctx.rule = function, rule

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None]:  # type: ignore[override]
        if ctx.rule == "deconvnet":
            return F.relu(grad), None, None
        (x,) = ctx.saved_tensors
        out = grad * _derivative(ctx.function, x)
        return (F.relu(out) if ctx.rule == "guided" else out), None, None


class _RuleMode(torch.overrides.TorchFunctionMode):
    """Inside a general node, rectifier calls take the context's rule, as explicit ones do."""

    def __init__(self, context: Context, rectifier_of: Callable[[Any, tuple[Any, ...], dict[str, Any]], Any]) -> None:
        super().__init__()
        self.context = context
        self.rectifier_of = rectifier_of

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        found = self.rectifier_of(func, args, kwargs)
        if found is not None:
            function, is_relu = found
            if is_relu or self.context.rectifiers == "all":
                return _Rectified.apply(args[0], function, self.context.rule)
            return function(args[0])
        return func(*args, **kwargs)


class VJP(MirrorLayer):
    """The general mirror layer: the exact vector-Jacobian product of any differentiable
    forward operation at its recorded inputs, computed with ``torch.func.vjp`` and vmapped over
    the K targets (one batched call). Rectifiers inside it (an opaque module's ReLUs) take the
    call's rule, like the explicit ones.

    It prints as what it reverses, e.g. ``VJP(MultiheadAttention)``, so the mirror says which
    layers are hand-reversed and which are not.
    """

    needs = frozenset({"values"})

    def __init__(self, call: Call, rectifier_of: Callable[[Any, tuple[Any, ...], dict[str, Any]], Any]) -> None:
        super().__init__()
        self.call = call
        object.__setattr__(self, "rectifier_of", rectifier_of)

    def __repr__(self) -> str:
        return f"VJP({self.call.describe()})"

    def forward(self, signal: Tensor, record: Record, context: Context) -> list[Tensor]:
        primals = [record.values[i] for i in self.call.signals]

        def function(*inputs: Tensor) -> Tensor:
            with _RuleMode(context, self.rectifier_of):  # type: ignore[arg-type]
                return self.call.replay(record, inputs)

        # Contiguous: torch 2.14's CPU batch-norm backward is wrong for some strided gradients
        # (channels-last with an unusual batch stride).
        signal = signal.contiguous()
        with torch.enable_grad():
            _, pullback = torch.func.vjp(function, *primals)
            try:
                grads = torch.func.vmap(pullback, in_dims=1, out_dims=1)(signal)
            except RuntimeError as error:
                if "vmap" not in str(error) and "batching rule" not in str(error):
                    raise
                # An op without a batching rule: one pull-back per target, same forward.
                per_target = [pullback(signal[:, k]) for k in range(signal.shape[1])]
                grads = tuple(torch.stack(parts, dim=1) for parts in zip(*per_target, strict=True))
        # The pull-back also depends on the layer's parameters, which require grad: results must
        # not carry that graph (it would keep every recorded input alive).
        return [g.detach() for g in grads]


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
