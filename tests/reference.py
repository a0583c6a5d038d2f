"""The test oracle, independent of the mirror: autograd with every ReLU's backward replaced.

The deconvnet reconstruction of a kept unit equals the gradient of that unit with respect to the
input when each ReLU's backward passes ``relu(incoming signal)`` instead of masking by the
forward activation. Here that is done with a TorchFunctionMode that swaps every ReLU call
(module, functional, in-place or method) for an autograd Function with that backward; max-pools,
convolutions and the rest keep their ordinary autograd, so overlapping pools sum as gradients do.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode


class _DeconvReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[no-untyped-def]
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[no-untyped-def]
        return grad.clamp(min=0)


class _GuidedReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[no-untyped-def]
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[no-untyped-def]
        (x,) = ctx.saved_tensors
        return grad.clamp(min=0) * (x > 0).to(grad.dtype)


_RELUS = {torch.relu, torch.relu_, F.relu, F.relu_, Tensor.relu, Tensor.relu_}


class DeconvReLUs(TorchFunctionMode):
    """Inside this mode every ReLU runs out of place with the deconvnet (or guided) backward."""

    def __init__(self, function: type[torch.autograd.Function] = _DeconvReLU) -> None:
        super().__init__()
        self.function = function

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func in _RELUS:
            return self.function.apply(args[0])
        return func(*args, **(kwargs or {}))


class _OutOfPlaceReLUs(TorchFunctionMode):
    """Plain gradients, but in-place ReLUs run out of place so hooked outputs stay intact."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func in _RELUS:
            return torch.relu(args[0])
        return func(*args, **(kwargs or {}))


def _mode(rule: str) -> TorchFunctionMode:
    if rule == "deconvnet":
        return DeconvReLUs()
    if rule == "guided":
        return DeconvReLUs(_GuidedReLU)
    return _OutOfPlaceReLUs()


def deconv_gradient(
    model: nn.Module,
    x: Tensor,
    make_signal: Callable[[Tensor], Tensor],
    layer: nn.Module | None = None,
    call: int = 0,
    rule: str = "deconvnet",
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
        with _mode(rule):
            out = model(x)
    finally:
        if handle is not None:
            handle.remove()
    target = captured[call] if layer is not None else out
    (grad,) = torch.autograd.grad(target, x, make_signal(target.detach()))
    return grad


def classes_reference(model: nn.Module, x: Tensor, classes: list[int], rule: str = "deconvnet") -> Tensor:
    """Tensor[N, K, C, H, W]: one oracle gradient per class, from 1 at that output unit."""

    def one_hot(c: int) -> Callable[[Tensor], Tensor]:
        def make(out: Tensor) -> Tensor:
            signal = torch.zeros_like(out)
            signal[:, c] = 1
            return signal

        return make

    return torch.stack([deconv_gradient(model, x, one_hot(c), rule=rule) for c in classes], dim=1)


def channels_reference(
    model: nn.Module,
    x: Tensor,
    layer: nn.Module,
    channels: list[int],
    mode: str,
    signal: str,
    call: int = 0,
    rule: str = "deconvnet",
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

    return torch.stack([deconv_gradient(model, x, keep(c), layer, call, rule) for c in channels], dim=1)


def assert_exact(ours: Tensor, reference: Tensor, rtol: float = 1e-6) -> None:
    """Equal up to ``rtol`` of the reference's largest magnitude (and equal shapes)."""
    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    scale = reference.abs().max().item()
    error = (ours - reference).abs().max().item()
    assert error <= rtol * scale + 1e-12, f"max error {error:.3g} vs scale {scale:.3g}"
