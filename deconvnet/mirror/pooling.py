"""Pools reversed: max-pools unpooled into their recorded switches (added where windows overlap,
adaptive ones too), average pools by their exact transpose; in 1-D, 2-D and 3-D."""

from __future__ import annotations

from typing import Any, ClassVar, cast

import torch
from torch import Tensor, nn

from .. import functional
from ..functional import Window, ntuple
from .base import Context, MirrorLayer, Record

__all__ = [
    "MaxUnpool1d", "MaxUnpool2d", "MaxUnpool3d", "OverlapUnpool1d", "OverlapUnpool2d", "OverlapUnpool3d",
    "unpooling", "AdaptiveMaxUnpool2d", "AdaptiveMaxUnpool1d", "AdaptiveMaxUnpool3d", "AvgPool2dTranspose",
    "AvgPool1dTranspose", "AvgPool3dTranspose", "AdaptiveAvgPool2dTranspose", "AdaptiveAvgPool1dTranspose",
    "AdaptiveAvgPool3dTranspose",
]


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
