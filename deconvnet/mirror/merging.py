"""Where signals meet, reversed: sums, concatenations and products (a scale or a gate) hand the
signal back to each of their inputs."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .. import functional
from .base import Call, Context, MirrorLayer, Record, Ref

__all__ = ["Add", "Concat", "Product"]


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
        refs = [arg.index if isinstance(arg, Ref) else None for arg in self.call.args[:2]]
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
