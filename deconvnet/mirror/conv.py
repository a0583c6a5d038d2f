"""The layers with weights, transposed: convolutions of any dimension (the forward's own weight
Parameter, no bias; "same" padding; a buffer kernel) and linear maps."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from .. import functional
from ..functional import Window, ntuple, pair
from .base import Context, MirrorLayer, Record

__all__ = [
    "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "FetchedConvTranspose2d", "conv_padding",
    "SameConvTranspose2d", "LinearTranspose", "Conv1dOfTranspose", "Conv2dOfTranspose", "Conv3dOfTranspose",
    "conv_of_transpose",
]

if TYPE_CHECKING:
    from .normalization import ChannelScale


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


class _ConvOfTranspose(MirrorLayer):
    """The mirror of a forward ``ConvTranspose{1,2,3}d`` (a UNet decoder's upsampling): the
    convolution whose weight **is** the forward layer's Parameter, with its stride, padding,
    dilation and groups, no bias. That convolution is the transposed convolution's exact adjoint;
    ``output_padding`` only added rows the convolution's stride never reads back, and the
    forward's input size is what comes out. Prints as the torch conv of its dimension."""

    dims: ClassVar[int] = 2
    _base: ClassVar[type[nn.Module]] = nn.Conv2d

    def __init__(self, transpose: nn.modules.conv._ConvTransposeNd) -> None:
        weight = transpose.weight  # [C_in, C_out / groups, *k]: a conv from C_out back to C_in
        self._base.__init__(
            self, transpose.out_channels, transpose.in_channels, tuple(transpose.kernel_size),
            stride=tuple(transpose.stride), padding=tuple(transpose.padding), dilation=tuple(transpose.dilation),
            groups=transpose.groups, bias=False, device="meta",
        )
        self.weight = weight  # type: ignore[assignment]  # the forward's own Parameter

    def forward(self, signal: Tensor, record: Record, context: Context) -> Tensor:  # type: ignore[override]
        """signal (Tensor[N, K, C_out, *out]) -> Tensor[N, K, C_in, *in]."""
        n, k = signal.shape[:2]
        flat = signal.reshape(n * k, *signal.shape[2:])
        out = _CONV[self.dims](flat, self.weight, None, self.stride, self.padding, self.dilation, self.groups)
        size = record.input_shape[2:]
        if tuple(out.shape[2:]) != tuple(size):  # output_padding past the stride (a dilated kernel's)
            out = out[(..., *(slice(0, s) for s in size))]
        return out.reshape(n, k, *out.shape[1:])


class Conv1dOfTranspose(_ConvOfTranspose, nn.Conv1d):
    """:class:`_ConvOfTranspose` of a ``ConvTranspose1d``."""


class Conv2dOfTranspose(_ConvOfTranspose, nn.Conv2d):
    """:class:`_ConvOfTranspose` of a ``ConvTranspose2d``."""


class Conv3dOfTranspose(_ConvOfTranspose, nn.Conv3d):
    """:class:`_ConvOfTranspose` of a ``ConvTranspose3d``."""


_CONV = {1: torch.nn.functional.conv1d, 2: torch.nn.functional.conv2d, 3: torch.nn.functional.conv3d}
_CONV_OF_TRANSPOSE: dict[int, type[_ConvOfTranspose]] = {1: Conv1dOfTranspose, 2: Conv2dOfTranspose,
                                                         3: Conv3dOfTranspose}


def conv_of_transpose(transpose: nn.Module) -> _ConvOfTranspose:
    """The mirror of a ``ConvTranspose{1,2,3}d``, of the class of its dimension."""
    return _CONV_OF_TRANSPOSE[transpose.weight.dim() - 2](transpose)


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
