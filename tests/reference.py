"""The test oracle, independent of the mirror: autograd with every rectifier's backward replaced.

The deconvnet reconstruction of a kept unit equals the gradient of that unit with respect to the
input when each rectifier's backward passes ``relu(incoming signal)`` (guided: ``relu(f'(x) g)``;
gradient: ``f'(x) g``) instead of its derivative. Here that is done with a TorchFunctionMode that
swaps every rectifier call (module, functional, in-place or method; the ReLU family, or ReLU
alone) for an autograd Function with that backward; max-pools, convolutions, norms, gates and
the rest keep their ordinary autograd, so overlapping pools sum as gradients do.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode


def _slope(function: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """f'(x) of an element-wise function, by reverse-mode autograd."""
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        (slope,) = torch.autograd.grad(function(leaf).sum(), leaf)
    return slope


class _Ruled(torch.autograd.Function):
    """f(x) forward; backward by the rule: relu(g), relu(f'(x) g) or f'(x) g."""

    @staticmethod
    def forward(ctx, x: Tensor, function, rule: str) -> Tensor:  # type: ignore[no-untyped-def]
        ctx.save_for_backward(x)
        ctx.function, ctx.rule = function, rule
        return function(x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[no-untyped-def]
        (x,) = ctx.saved_tensors
        if ctx.rule == "deconvnet":
            return grad.clamp(min=0), None, None
        out = grad * _slope(ctx.function, x)
        return (out.clamp(min=0) if ctx.rule == "guided" else out), None, None


# Every rectifier, as the function the modules call and its functional, tensor-method and
# in-place spellings -> its out-of-place function. Written here independently of the library.
_RELU = {torch.relu: torch.relu, torch.relu_: torch.relu, F.relu: F.relu, Tensor.relu: torch.relu,
         Tensor.relu_: torch.relu}
_FAMILY = {
    F.relu6: F.relu6, F.hardtanh: F.hardtanh, F.hardtanh_: F.hardtanh, F.leaky_relu: F.leaky_relu,
    F.leaky_relu_: F.leaky_relu, torch.prelu: torch.prelu, F.rrelu: F.rrelu, F.rrelu_: F.rrelu,
    torch.rrelu: torch.rrelu, F.elu: F.elu, F.elu_: F.elu, F.celu: F.celu, torch.celu: torch.celu,
    F.celu_: F.celu, F.selu: F.selu, torch.selu: torch.selu, F.selu_: F.selu, F.gelu: F.gelu,
    F.silu: F.silu, F.mish: F.mish, F.hardswish: F.hardswish, F.softplus: F.softplus,
}


class RuledActivations(TorchFunctionMode):
    """Inside this mode every rectifier runs out of place with the rule's backward:
    ``rectifiers="all"`` catches the ReLU family (Hardtanh only with a lower bound of 0),
    ``"relu"`` ReLU alone; every other activation keeps its gradient."""

    def __init__(self, rule: str, rectifiers: str = "all") -> None:
        super().__init__()
        self.rule, self.rectifiers = rule, rectifiers

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = dict(kwargs or {})
        if func is F.batch_norm:
            return _eval_batch_norm(*args, **kwargs)
        function = {**_RELU, **_FAMILY}.get(func) if _hashable(func) else None
        if function is None:
            return func(*args, **kwargs)
        kwargs.pop("inplace", None)  # every activation runs out of place, as under no_grad it may not
        rectifies = func in _RELU or self.rectifiers == "all"
        if func in (F.hardtanh, F.hardtanh_) and float(kwargs.get("min_val", args[1] if len(args) > 1 else -1)) != 0:
            rectifies = False  # Hardtanh(-1, 1) is not a rectifier
        if not rectifies:
            return function(*args, **kwargs)
        rest = args[1:]

        def pure(x: Tensor) -> Tensor:
            return function(x, *rest, **kwargs)

        return _Ruled.apply(args[0], pure, self.rule)


def _eval_batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):  # type: ignore[no-untyped-def]
    """Eval-mode batch-norm written out, so that autograd differentiates the formula.

    torch 2.14.1's CPU batch-norm backward returns wrong values when the incoming gradient is
    channels-last with an unusual batch stride (N = 1, as ``flatten(2).transpose(1, 2)``
    hands back in LeViT's stem): the oracle would be wrong, not the mirror. Training mode keeps
    the library function (the tests refuse it anyway)."""
    if training or running_mean is None:
        return F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    out = (x - running_mean.view(shape)) * (running_var.view(shape) + eps).rsqrt()
    if weight is not None:
        out = out * weight.view(shape)
    return out if bias is None else out + bias.view(shape)


def _hashable(value: object) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _mode(rule: str, rectifiers: str = "all") -> TorchFunctionMode:
    return RuledActivations(rule, rectifiers)


def deconv_gradient(
    model: nn.Module,
    x: Tensor,
    make_signal: Callable[[Tensor], Tensor],
    layer: nn.Module | None = None,
    call: int = 0,
    rule: str = "deconvnet",
    rectifiers: str = "all",
) -> Tensor:
    """Gradient of ``<layer output, signal>`` w.r.t. x with ReLUs' backward set by ``rule``
    (deconvnet: ReLU of the signal; guided: that, masked by the forward input; gradient: plain).

    make_signal gets the layer's output (the model's when ``layer`` is None; its ``call``-th
    call when the module runs more than once) and returns the signal on it.
    Returns Tensor[N, C, H, W].
    """
    x = x.detach().clone().requires_grad_(True)
    captured: list[Tensor] = []

    def keep(module: nn.Module, inputs: object, output: Tensor) -> Tensor:
        # The model goes on with a copy: a later in-place op (out += shortcut) must not change
        # the layer output the signal starts from.
        captured.append(output)
        return output.clone()

    handle = layer.register_forward_hook(keep) if layer is not None else None
    try:
        with _mode(rule, rectifiers):
            out = model(x)
    finally:
        if handle is not None:
            handle.remove()
    target = captured[call] if layer is not None else out
    (grad,) = torch.autograd.grad(target, x, make_signal(target.detach()))
    return grad


def classes_reference(
    model: nn.Module, x: Tensor, classes: list[int], rule: str = "deconvnet", rectifiers: str = "all"
) -> Tensor:
    """Tensor[N, K, C, H, W]: one oracle gradient per class, from 1 at that output unit."""

    def one_hot(c: int) -> Callable[[Tensor], Tensor]:
        def make(out: Tensor) -> Tensor:
            signal = torch.zeros_like(out)
            signal[:, c] = 1
            return signal

        return make

    return torch.stack(
        [deconv_gradient(model, x, one_hot(c), rule=rule, rectifiers=rectifiers) for c in classes], dim=1
    )


def channels_reference(
    model: nn.Module,
    x: Tensor,
    layer: nn.Module,
    channels: list[int],
    mode: str,
    signal: str,
    call: int = 0,
    rule: str = "deconvnet",
    rectifiers: str = "all",
) -> Tensor:
    """Tensor[N, K, C, H, W]: the oracle for keeping channel c's strongest unit or whole map."""

    def keep(c: int) -> Callable[[Tensor], Tensor]:
        def make(act: Tensor) -> Tensor:
            kept = torch.zeros_like(act)
            for n in range(act.shape[0]):
                values = act[n, c]
                if mode == "max":
                    flat = values.reshape(-1)
                    i = int(torch.argmax(flat))
                    kept[n, c].view(-1)[i] = flat[i] if signal == "activation" else 1
                else:
                    kept[n, c] = values if signal == "activation" else 1
            return kept

        return make

    return torch.stack(
        [deconv_gradient(model, x, keep(c), layer, call, rule, rectifiers) for c in channels], dim=1
    )


def assert_exact(ours: Tensor, reference: Tensor, rtol: float = 1e-6) -> None:
    """Equal up to ``rtol`` of the reference's largest magnitude (and equal shapes)."""
    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    scale = reference.abs().max().item()
    error = (ours - reference).abs().max().item()
    assert error <= rtol * scale + 1e-12, f"max error {error:.3g} vs scale {scale:.3g}"
