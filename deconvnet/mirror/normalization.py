"""Normalisations reversed: an eval-mode batch-norm is a per-channel scale; layer and group
normalisation take their exact vector-Jacobian product at the recorded input."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from torch import Tensor, nn

from .. import functional
from .base import Call, Context, Described, Record

__all__ = ["ChannelScale", "Normalization"]


class ChannelScale(Described):
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


class Normalization(Described):
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
