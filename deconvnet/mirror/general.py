"""The general mirror layer: any differentiable forward operation reversed by its exact
vector-Jacobian product, rectifiers inside it taking the call's rule."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .activations import derivative
from .base import Call, Context, MirrorLayer, Record

__all__ = ["RuleMode", "VJP"]


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
        out = grad * derivative(ctx.function, x)
        return (F.relu(out) if ctx.rule == "guided" else out), None, None


class RuleMode(torch.overrides.TorchFunctionMode):
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
            with RuleMode(context, self.rectifier_of):  # type: ignore[arg-type]
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
