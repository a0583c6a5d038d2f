"""Captum's deconvolution-family attributions with Captum's constructors, ``attribute``
signatures and return types, computed by deconvnet: change one import.

    from deconvnet.captum import Deconvolution        # was: from captum.attr import Deconvolution
    attributions = Deconvolution(model).attribute(x, target=207)

``Deconvolution``, ``GuidedBackprop``, ``NeuronDeconvolution`` and ``NeuronGuidedBackprop``.
A single image batch (Tensor[N, C, H, W]) with no ``additional_forward_args`` runs on the
explicit mirror, built once per object (one forward pass, no hooks, every ReLU's switch kept).
Anything else Captum accepts (several inputs, extra forward arguments, targets into outputs of
any shape, neurons of a layer's input) runs as the exact gradient with every ReLU's backward
replaced by the rule, as Captum computes it, without touching the model.

Where the results differ from Captum's: Captum gives the rule only to ``nn.ReLU`` modules it can
hook; here every ReLU takes it, functional ``F.relu`` / ``torch.relu`` / ``x.relu()`` included
(``rectifiers="relu"``: other activations pass their plain gradient in both). On models whose
ReLUs are all modules the results are equal.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from . import rules
from .deconvnet import DeconvNet
from .errors import DeconvnetError, InputError
from .mirror import Context, _RuleMode

__all__ = ["Deconvolution", "GuidedBackprop", "NeuronDeconvolution", "NeuronGuidedBackprop"]

Target = int | tuple | Tensor | list | None
Selector = int | tuple | Callable[..., Tensor]


def _as_tuple(inputs: Tensor | tuple[Tensor, ...]) -> tuple[tuple[Tensor, ...], bool]:
    if isinstance(inputs, Tensor):
        return (inputs,), False
    if isinstance(inputs, (tuple, list)) and inputs and all(isinstance(t, Tensor) for t in inputs):
        return tuple(inputs), True
    raise InputError(f"inputs must be a Tensor or a tuple of Tensors, got {type(inputs).__name__}")


def _extra(additional_forward_args: Any) -> tuple[Any, ...]:
    if additional_forward_args is None:
        return ()
    return tuple(additional_forward_args) if isinstance(additional_forward_args, tuple) else (additional_forward_args,)


def _select(output: Tensor, target: Target) -> Tensor:
    """Captum's target selection: the output value(s) each example's gradient starts from,
    as Tensor[N] (or the output itself when target is None)."""
    n = output.shape[0]
    if target is None:
        return output
    if isinstance(target, Tensor):
        if target.numel() == 1:
            target = int(target.item())
        elif target.dim() == 1 and target.numel() == n:
            target = target.tolist()
        else:
            raise InputError(f"target must be a scalar or hold one entry per input ({n}), got shape {tuple(target.shape)}")
    if isinstance(target, bool):
        raise InputError("target must be an int, a tuple, a list or a tensor, not a bool")
    if isinstance(target, int):
        return output[:, target]
    if isinstance(target, tuple):
        return output[(slice(None), *target)]
    if isinstance(target, list):
        if len(target) != n:
            raise InputError(f"a list target needs one entry per input: {n} inputs, {len(target)} targets")
        rows = [output[(i, *t)] if isinstance(t, tuple) else output[i, t] for i, t in enumerate(target)]
        return torch.stack(rows)
    raise InputError(f"target must be an int, a tuple, a list or a tensor, got {type(target).__name__}")


def _per_example(target: Target, n: int) -> list[int] | None:
    """Class indices per example for the mirror's fast path, or None if the target is not one."""
    if isinstance(target, Tensor):
        if target.numel() == 1 and not target.is_floating_point():
            return [int(target.item())] * n
        if target.dim() == 1 and target.numel() == n and not target.is_floating_point():
            return [int(t) for t in target.tolist()]
        return None
    if isinstance(target, int) and not isinstance(target, bool):
        return [target] * n
    if isinstance(target, list) and len(target) == n and all(isinstance(t, int) and not isinstance(t, bool) for t in target):
        return list(target)
    return None


class _RuleGradients:
    """What the four classes share: the rule, the mirror (built on first use), and the exact
    gradient with the rule at every ReLU for everything the mirror does not take."""

    rule = "deconvnet"

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise InputError(f"model must be an nn.Module, got {type(model).__name__}")
        self.forward_func = model
        self._mirror: DeconvNet | None = None
        self._unmirrored: str | None = None

    def has_convergence_delta(self) -> bool:
        return False

    @property
    def multiplies_by_inputs(self) -> bool:
        return False

    def _deconvnet(self, tensors: tuple[Tensor, ...], extra: tuple[Any, ...]) -> DeconvNet | None:
        """The mirror, when this call can use it: one image batch, nothing else passed."""
        if len(tensors) != 1 or extra or tensors[0].dim() != 4 or self._unmirrored is not None:
            return None
        if self._mirror is None:
            try:
                self._mirror = DeconvNet(self.forward_func, rule=self.rule, rectifiers="relu")
            except DeconvnetError as error:  # a forward the builder cannot read: the general path serves it
                self._unmirrored = str(error)
                return None
        return self._mirror

    def _gradients(self, tensors: tuple[Tensor, ...], extra: tuple[Any, ...],
                   start: Callable[[Tensor], Tensor], capture: nn.Module | None = None,
                   of_input: bool = False) -> tuple[Tensor, ...]:
        """d(start(value).sum()) / d(inputs), every ReLU's backward the rule; value is the model's
        output, or ``capture``'s output (its input with ``of_input``) seen through a global hook
        that is removed before returning (the model itself is never touched)."""
        seen: list[Tensor] = []

        def keep(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if module is capture:
                seen.append(args[0] if of_input else output)

        leaves = tuple(t.detach().requires_grad_(True) for t in tensors)
        handle = nn.modules.module.register_module_forward_hook(keep) if capture is not None else None
        try:
            with torch.enable_grad(), _RuleMode(Context(self.rule, "relu", None), rules.rectifier_call):
                output = self.forward_func(*leaves, *extra)
                value = output if capture is None else seen[0] if seen else None
                if value is None:
                    raise InputError(f"the layer {type(capture).__name__} did not run in the model's forward")
                selected = start(value)
                grads = torch.autograd.grad(selected.sum(), leaves, allow_unused=True)
        finally:
            if handle is not None:
                handle.remove()
        return tuple(torch.zeros_like(t) if g is None else g.detach() for t, g in zip(tensors, grads, strict=True))


class Deconvolution(_RuleGradients):
    """Captum's ``Deconvolution``: ``attribute(inputs, target=None, additional_forward_args=None)``
    returns the deconvnet reconstruction of ``target`` for each input, shaped as the inputs (a
    tuple for a tuple)."""

    rule = "deconvnet"

    def attribute(self, inputs: Tensor | tuple[Tensor, ...], target: Target = None,
                  additional_forward_args: Any = None) -> Tensor | tuple[Tensor, ...]:
        tensors, is_tuple = _as_tuple(inputs)
        extra = _extra(additional_forward_args)
        dn = self._deconvnet(tensors, extra)
        classes = _per_example(target, tensors[0].shape[0]) if dn is not None else None
        result: tuple[Tensor, ...]
        if dn is not None and classes is not None:
            trace = dn.trace(tensors[0])
            if trace.output.dim() != 2:
                result = self._gradients(tensors, extra, lambda out: _select(out, target))
            elif len(set(classes)) == 1:
                result = (dn.reconstruct_classes(trace, classes[:1])[:, 0],)
            else:
                signal = torch.zeros_like(trace.output)[:, None]
                signal[torch.arange(len(classes)), 0, torch.tensor(classes)] = 1.0
                result = (dn.reconstruct_from(trace, dn.network.steps[dn.network.output].name, signal)[:, 0],)
        else:
            result = self._gradients(tensors, extra, lambda out: _select(out, target))
        return result if is_tuple else result[0]


class GuidedBackprop(Deconvolution):
    """Captum's ``GuidedBackprop``, the same call with the guided rule."""

    rule = "guided"


class NeuronDeconvolution(_RuleGradients):
    """Captum's ``NeuronDeconvolution(model, layer, device_ids=None)``:
    ``attribute(inputs, neuron_selector, additional_forward_args=None, attribute_to_neuron_input=False)``.

    neuron_selector: an int or a tuple of ints and slices indexing the layer's output without
    its batch dimension (the selected neurons summed), or a callable taking the layer's output and
    returning one value per example.
    """

    rule = "deconvnet"

    def __init__(self, model: nn.Module, layer: nn.Module, device_ids: Sequence[int] | None = None) -> None:
        super().__init__(model)
        if not isinstance(layer, nn.Module):
            raise InputError(f"layer must be a module of the model, got {type(layer).__name__}")
        self.layer = layer
        self.device_ids = device_ids

    def attribute(self, inputs: Tensor | tuple[Tensor, ...], neuron_selector: Selector,
                  additional_forward_args: Any = None,
                  attribute_to_neuron_input: bool = False) -> Tensor | tuple[Tensor, ...]:
        tensors, is_tuple = _as_tuple(inputs)
        extra = _extra(additional_forward_args)
        pick = _neuron(neuron_selector)
        dn = None if attribute_to_neuron_input else self._deconvnet(tensors, extra)
        name = None
        if dn is not None:
            try:
                name = dn.layer_name(self.layer)
            except DeconvnetError:  # a module the mirror does not list (a container called twice, say)
                name = None
        result: tuple[Tensor, ...]
        if dn is not None and name is not None:
            trace = dn.trace(tensors[0])
            activation = dn.activation(trace, name)
            unit = _single_unit(neuron_selector, activation)
            if unit is not None:  # one unit of a map: projected on its receptive field alone
                n, (c, i, j) = activation.shape[0], unit
                result = (dn.reconstruct_units(trace, name, list(range(n)), [c] * n, [i * activation.shape[3] + j] * n,
                                               values=torch.ones(n, dtype=activation.dtype)),)
                return result if is_tuple else result[0]
            with torch.enable_grad():
                value = activation.detach().requires_grad_(True)
                (signal,) = torch.autograd.grad(pick(value).sum(), value)
            result = (dn.reconstruct_from(trace, name, signal[:, None].to(activation.dtype))[:, 0],)
        else:
            result = self._gradients(tensors, extra, pick, capture=self.layer, of_input=attribute_to_neuron_input)
        return result if is_tuple else result[0]


class NeuronGuidedBackprop(NeuronDeconvolution):
    """Captum's ``NeuronGuidedBackprop``, the same call with the guided rule."""

    rule = "guided"


def _single_unit(selector: Selector, activation: Tensor) -> tuple[int, int, int] | None:
    """(channel, row, col) when the selector names one unit of a map Tensor[N, C, H, W]."""
    if activation.dim() != 4 or not isinstance(selector, tuple) or len(selector) != 3:
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in selector):
        return None
    if not all(-size <= v < size for v, size in zip(selector, activation.shape[1:], strict=True)):
        return None  # out of range: the general path raises Python's own IndexError, as Captum does
    return tuple(v % size for v, size in zip(selector, activation.shape[1:], strict=True))  # type: ignore[return-value]


def _neuron(selector: Selector) -> Callable[[Tensor], Tensor]:
    """The neuron selector as a function of the layer's value: Tensor[N, ...] -> Tensor[N]."""
    if callable(selector):
        return lambda value: selector(value)
    if isinstance(selector, bool) or not isinstance(selector, (int, tuple)):
        raise InputError(f"neuron_selector must be an int, a tuple of ints and slices, or a callable, "
                         f"got {type(selector).__name__}")
    index = (selector,) if isinstance(selector, int) else selector
    for part in index:
        if isinstance(part, bool) or not isinstance(part, (int, slice)):
            raise InputError(f"neuron_selector entries must be ints or slices, got {part!r}")

    def pick(value: Tensor) -> Tensor:
        if len(index) > value.dim() - 1:
            raise InputError(f"neuron_selector {selector!r} has {len(index)} indices but the layer's output "
                             f"{tuple(value.shape)} has {value.dim() - 1} beyond the batch")
        chosen = value[(slice(None), *index)]
        return chosen.reshape(chosen.shape[0], -1).sum(1)

    return pick
