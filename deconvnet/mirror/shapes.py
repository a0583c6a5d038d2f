"""Layers that move values without changing them, reversed: padding cropped off, pieces scattered
back, permutations inverted, reshapes undone, reductions broadcast back, identities passed on."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from math import prod
from typing import cast

import torch.nn.functional as F
from torch import Tensor

from .. import functional
from ..functional import Window
from .base import Call, Context, Described, MirrorLayer, Record

__all__ = ["Crop", "Scatter", "Permute", "Reshape", "Identity", "Broadcast"]


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


class Scatter(Described):
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


class Permute(Described):
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


class Broadcast(Described):
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
