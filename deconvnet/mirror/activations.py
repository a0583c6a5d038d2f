"""Activations reversed: the ReLU family takes the call's rule (deconvnet, guided or gradient),
every other activation passes its plain gradient at the recorded input."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import functional
from .base import Context, Described, Record

__all__ = ["derivative", "Activation", "ReLU"]


def derivative(function: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """f'(x) of an element-wise function, by forward-mode autograd at the recorded input."""
    _, slope = torch.func.jvp(function, (x,), (torch.ones_like(x),))
    return slope


class Activation(Described):
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
        return derivative(self.function, recorded)  # type: ignore[arg-type]

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
