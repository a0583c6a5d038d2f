"""Captum's deconvolution-family attributions with Captum's constructors, ``attribute``
signatures and return types, computed by deconvnet: change one import.

    from deconvnet.captum import Deconvolution        # was: from captum.attr import Deconvolution
    attributions = Deconvolution(model).attribute(x, target=207)

``Deconvolution``, ``GuidedBackprop``, ``NeuronDeconvolution``, ``NeuronGuidedBackprop`` and
``Occlusion``. A single image batch (Tensor[N, C, H, W]) with no ``additional_forward_args`` runs on the
explicit mirror, built once per object (one forward pass, no hooks, every ReLU's switch kept).
Anything else Captum accepts (several inputs, extra forward arguments, targets into outputs of
any shape, neurons of a layer's input) runs as the exact gradient with every ReLU's backward
replaced by the rule, as Captum computes it, without touching the model. ``Occlusion`` of one
image batch by a square window over every channel (a signal's by a segment, a volume's by a
cube) runs by exact incremental inference (only what each window can change is recomputed); every other shape, window, baseline and input runs
as batched whole evaluations, ``perturbations_per_eval`` windows per forward pass.

Where the results differ from Captum's: Captum gives the rule only to ``nn.ReLU`` modules it can
hook; here every ReLU takes it, functional ``F.relu`` / ``torch.relu`` / ``x.relu()`` included
(``rectifiers="relu"``: other activations pass their plain gradient in both). On models whose
ReLUs are all modules the results are equal.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from . import rules
from .deconvnet import DeconvNet
from .errors import DeconvnetError, InputError
from .mirror import Context
from .mirror.general import RuleMode
from .progress import Silent

__all__ = ["CaptumArgumentError", "Deconvolution", "GuidedBackprop", "NeuronDeconvolution", "NeuronGuidedBackprop",
           "Occlusion"]

Target = int | tuple | Tensor | list | None
Selector = int | tuple | Callable[..., Tensor]


class CaptumArgumentError(InputError, AssertionError):
    """An argument Captum refuses with an assertion: an AssertionError here too, so code written
    for Captum (``except AssertionError``) keeps working."""


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


def _dense_target(target: Target) -> tuple[int, tuple[int, ...]] | None:
    """A tuple target of ints, ``(c, h, w)``: class c at one position of a dense output."""
    if isinstance(target, tuple) and len(target) > 1 and all(
            isinstance(t, int) and not isinstance(t, bool) for t in target):
        return target[0], tuple(target[1:])
    return None


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


def _mirror_of(model: nn.Module) -> DeconvNet:
    """The model's mirror (ReLU alone takes the rule, as in Captum). ``Deconvolution(model)`` is
    usually made anew for each call: the network is built once per model and again only when
    its structure changed (see :func:`deconvnet.builder.build`); the rule is each call's own
    (``rule=``)."""
    return DeconvNet(model, rectifiers="relu")


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
        """The mirror, when this call can use it: one batch of images (or signals, or volumes,
        as the model's convolutions take), nothing else passed. Looked up on every call, so a
        module replaced since the last one is seen."""
        if len(tensors) != 1 or extra or tensors[0].dim() not in (3, 4, 5) or self._unmirrored is not None:
            return None
        try:
            self._mirror = _mirror_of(self.forward_func)
        except DeconvnetError as error:  # a forward the builder cannot read: the general path serves it
            self._unmirrored = str(error)
            return None
        if self._mirror.network.spatial_dims != tensors[0].dim() - 2:
            return None  # not the input the model's layers are for: Captum's own path reports what it does
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
            with torch.enable_grad(), RuleMode(Context(self.rule, "relu", None), rules.rectifier_call):
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
        pixel = _dense_target(target)
        if dn is not None and (pixel is not None or classes is not None):
            trace = dn._traced_lean(tensors[0], dn.context(self.rule))  # kept for this call alone
            one = pixel is not None or len(set(classes or [])) == 1
            if trace.output.dim() > 2 and one:
                # a dense output (segmentation): Captum takes output[:, c, h, w] (target=(c, h, w));
                # a class alone is its map summed, as Captum's tutorial's wrapper does: regions of one class
                c, region = pixel if pixel is not None else (classes[0], None)  # type: ignore[index]
                result = (dn.reconstruct_classes(trace, c, region=region, rule=self.rule)[:, 0],)
            elif trace.output.dim() != 2 or classes is None:
                result = self._gradients(tensors, extra, lambda out: _select(out, target))
            elif len(set(classes)) == 1:
                result = (dn.reconstruct_classes(trace, classes[:1], rule=self.rule)[:, 0],)
            else:
                signal = torch.zeros_like(trace.output)[:, None]
                signal[torch.arange(len(classes)), 0, torch.tensor(classes)] = 1.0
                output = dn.network.steps[dn.network.output].name
                result = (dn.reconstruct_from(trace, output, signal, rule=self.rule)[:, 0],)
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
            trace = dn._traced_lean(tensors[0], dn.context(self.rule), dn.network.resolve(name))  # up to the layer
            activation = dn.activation(trace, name)
            unit = _single_unit(neuron_selector, activation)
            if unit is not None:  # one unit of a map: projected on its receptive field alone
                n, (c, *place) = activation.shape[0], unit
                position = _flat(place, activation.shape[2:])
                result = (dn.reconstruct_units(trace, name, list(range(n)), [c] * n, [position] * n,
                                               values=torch.ones(n, dtype=activation.dtype), rule=self.rule),)
            else:
                with torch.enable_grad():
                    value = activation.detach().requires_grad_(True)
                    (signal,) = torch.autograd.grad(pick(value).sum(), value)
                result = (dn.reconstruct_from(trace, name, signal[:, None].to(activation.dtype), rule=self.rule)[:, 0],)
        else:
            result = self._gradients(tensors, extra, pick, capture=self.layer, of_input=attribute_to_neuron_input)
        return result if is_tuple else result[0]


class NeuronGuidedBackprop(NeuronDeconvolution):
    """Captum's ``NeuronGuidedBackprop``, the same call with the guided rule."""

    rule = "guided"


def _flat(place: Sequence[int], shape: Sequence[int]) -> int:
    """The flat position of ``place`` in a map of ``shape``, the last axis fastest."""
    flat = 0
    for index, size in zip(place, shape, strict=True):
        flat = flat * int(size) + int(index)
    return flat


def _single_unit(selector: Selector, activation: Tensor) -> tuple[int, ...] | None:
    """(channel, row, col) when the selector names one unit of a map Tensor[N, C, H, W];
    (channel, l) of a signal's, (channel, d, row, col) of a volume's."""
    if activation.dim() < 3 or not isinstance(selector, tuple) or len(selector) != activation.dim() - 1:
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


class Occlusion:
    """Captum's ``Occlusion(forward_func)``: ``attribute(inputs, sliding_window_shapes,
    strides=None, baselines=None, target=None, additional_forward_args=None,
    perturbations_per_eval=1, show_progress=False)`` returns, for every input feature, the mean
    drop of the target output over the window positions that covered it, shaped as the inputs.

    Windows slide over every dimension but the batch, ``ceil((size - window) / stride) + 1``
    positions per dimension (the last ones clipped at the edge), as Captum places them.
    """

    def __init__(self, forward_func: Callable[..., Tensor]) -> None:
        if not callable(forward_func):
            raise InputError(f"forward_func must be callable, got {type(forward_func).__name__}")
        self.forward_func = forward_func
        self._unmirrored = False

    def has_convergence_delta(self) -> bool:
        return False

    @property
    def multiplies_by_inputs(self) -> bool:
        return False

    @torch.no_grad()
    def attribute(self, inputs: Tensor | tuple[Tensor, ...], sliding_window_shapes: tuple, strides: Any = None,
                  baselines: Any = None, target: Target = None, additional_forward_args: Any = None,
                  perturbations_per_eval: int = 1, show_progress: bool = False) -> Tensor | tuple[Tensor, ...]:
        tensors, is_tuple = _as_tuple(inputs)
        extra = _extra(additional_forward_args)
        windows = _per_input(sliding_window_shapes, len(tensors), "sliding_window_shapes")
        steps = (strides if strides is not None else 1,) * len(tensors) if isinstance(strides, (int, type(None))) \
            else _per_input(strides, len(tensors), "strides")
        bases = baselines if isinstance(baselines, tuple) else (baselines,) * len(tensors)
        if len(bases) != len(tensors):
            raise InputError(f"give one baseline per input: {len(tensors)} inputs, {len(bases)} baselines")
        if isinstance(perturbations_per_eval, bool) or not isinstance(perturbations_per_eval, int) \
                or perturbations_per_eval < 1:
            raise InputError(f"perturbations_per_eval must be a positive int, got {perturbations_per_eval!r}")
        geometry = []
        for x, window, step in zip(tensors, windows, steps, strict=True):
            window = tuple(window)
            step = (step,) * len(window) if isinstance(step, int) else tuple(step)
            if len(window) != x.dim() - 1 or len(step) != len(window):
                raise CaptumArgumentError(f"sliding window {window} and strides {step} need one entry per dimension "
                                          f"of an input {tuple(x.shape)} without its batch dimension")
            if any(w < 1 or w > n for w, n in zip(window, x.shape[1:], strict=True)) or any(s < 1 for s in step):
                raise CaptumArgumentError(f"sliding window {window} must fit the input {tuple(x.shape[1:])} and "
                                          f"strides {step} be positive")
            if any(s > w < n for s, w, n in zip(step, window, x.shape[1:], strict=True)):
                raise CaptumArgumentError(f"strides {step} cannot be larger than the sliding window {window} where "
                                          "it does not cover the whole dimension: features would never be occluded")
            geometry.append((window, step))
        fast = self._incremental(tensors, extra, geometry, bases, target, show_progress)
        result = fast if fast is not None else self._whole(tensors, extra, geometry, bases, target,
                                                           perturbations_per_eval, show_progress)
        return result if is_tuple else result[0]

    def attribute_future(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("attribute_future is not implemented by deconvnet.captum.Occlusion (nor by Captum's)")

    def _incremental(self, tensors: tuple[Tensor, ...], extra: tuple[Any, ...], geometry: list, bases: tuple,
                     target: Target, show_progress: bool) -> tuple[Tensor, ...] | None:
        """One batch of images (signals, volumes), a square window (a segment, a cube) over all
        channels that tiles each side exactly, a number for baseline: the exact incremental path
        (deconvnet.analysis.occlusion)."""
        from .analysis.occlusion import _FULL_AREA, _Incremental, occluder_positions

        if len(tensors) != 1 or extra or tensors[0].dim() not in (3, 4, 5) \
                or not isinstance(self.forward_func, nn.Module):
            return None
        x = tensors[0]
        (window, step), base = geometry[0], bases[0]
        n, channels = x.shape[:2]
        spatial = tuple(x.shape[2:])
        fill = base if base is None or isinstance(base, (int, float)) else None
        if isinstance(base, Tensor) and base.numel() == 1:
            fill = float(base)
        classes = _per_example(target, n)
        if (fill is None and base is not None) or classes is None or window[0] != channels \
                or len(set(window[1:])) != 1 or len(set(step[1:])) != 1 \
                or any((extent - w) % s for extent, w, s in zip(spatial, window[1:], step[1:], strict=True)):
            return None
        network = self._built()
        if network is None or network.spatial_dims != len(spatial):
            return None
        size, stride = window[1], step[1]
        corners = occluder_positions(spatial, size, stride).to(x.device)

        def box(corner: list[int]) -> tuple[slice, ...]:
            return tuple(slice(c, c + size) for c in corner)

        attributions = torch.zeros_like(x)
        counts = torch.zeros(spatial, dtype=x.dtype, device=x.device)
        for corner in corners.tolist():
            counts[box(corner)] += 1
        bar = _bar(show_progress, n * corners.shape[0], "window")
        for i in range(n):
            run = _Incremental(network, x[i : i + 1], _FULL_AREA)
            base_out = run.base[network.output]
            if not isinstance(base_out, Tensor) or base_out.dim() != 2:
                bar.close()
                return None
            chunk = run.default_batch(corners.shape[0], None)  # the planner's batch, as occlusion() uses
            drops = []
            for lo in range(0, corners.shape[0], chunk):
                out = run.whole(network.output, run.occluded(corners[lo : lo + chunk], size, float(fill or 0.0),
                                                             [network.output])[0])
                drops.append(base_out[0, classes[i]] - out[:, classes[i]])
                bar.update(out.shape[0])
            total = torch.zeros(spatial, dtype=x.dtype, device=x.device)
            for corner, drop in zip(corners.tolist(), torch.cat(drops), strict=True):
                total[box(corner)] += drop
            attributions[i] = (total / counts)[None].expand(channels, *spatial)
        bar.close()
        return (attributions,)

    def _built(self) -> Any:
        """The model's traced network (shared with the other classes' mirror), or None when the
        builder cannot read it or it is in training mode: then occlusion runs whole."""
        if self._unmirrored:
            return None
        try:
            network = _mirror_of(self.forward_func).network  # type: ignore[arg-type]
            network.check_eval()
        except DeconvnetError:
            self._unmirrored = True
            return None
        return network

    def _whole(self, tensors: tuple[Tensor, ...], extra: tuple[Any, ...], geometry: list, bases: tuple,
               target: Target, per_eval: int, show_progress: bool) -> tuple[Tensor, ...]:
        """Captum's way: each window position's occluded copy through the whole model,
        ``per_eval`` positions per forward pass."""
        n = tensors[0].shape[0]
        evaluations = 1 + sum(
            -(-math.prod(math.ceil((size - w) / s) + 1 for size, w, s in zip(x.shape[1:], window, step, strict=True))
              // per_eval) for x, (window, step) in zip(tensors, geometry, strict=True))
        bar = _bar(show_progress, evaluations, "forward")
        start = _select(self.forward_func(*tensors, *extra), target).reshape(n, -1)
        bar.update()
        if start.shape[1] != 1:
            raise InputError(f"occlusion needs one output value per input; the model gives {start.shape[1]}: "
                             "pass target")
        results = []
        for index, (x, (window, step)) in enumerate(zip(tensors, geometry, strict=True)):
            base = bases[index] if bases[index] is not None else 0.0
            base = torch.as_tensor(base, dtype=x.dtype, device=x.device)
            counts = [math.ceil((size - w) / s) + 1 for size, w, s in zip(x.shape[1:], window, step, strict=True)]
            positions = list(itertools.product(*(range(c) for c in counts)))
            total = torch.zeros(x.shape, dtype=start.dtype, device=x.device)
            weights = torch.zeros(x.shape[1:], dtype=start.dtype, device=x.device)
            for lo in range(0, len(positions), per_eval):
                chunk = positions[lo : lo + per_eval]
                masks = torch.zeros((len(chunk), *x.shape[1:]), dtype=torch.bool, device=x.device)
                for k, position in enumerate(chunk):
                    masks[(k, *(slice(p * s, p * s + w) for p, s, w in zip(position, step, window, strict=True)))] = True
                occluded = torch.where(masks[:, None], base, x[None]).reshape(-1, *x.shape[1:])  # [P * N, ...]
                copies = [occluded if j == index else t.repeat(len(chunk), *[1] * (t.dim() - 1))
                          for j, t in enumerate(tensors)]
                more = tuple(a.repeat(len(chunk), *[1] * (a.dim() - 1)) if isinstance(a, Tensor) and a.dim() > 0
                             and a.shape[0] == n else a for a in extra)
                out = _select(self.forward_func(*copies, *more), _repeat(target, len(chunk), n))
                drop = start[None, :, 0] - out.reshape(len(chunk), n)  # [P, N]
                total += (drop.view(len(chunk), n, *[1] * (x.dim() - 1)) * masks[:, None]).sum(0)
                weights += masks.sum(0)
                bar.update()
            results.append(total / weights)
        bar.close()
        return tuple(results)


def _per_input(value: Any, count: int, name: str) -> tuple:
    """Captum's per-input arguments: one for a single input, a tuple of them for several."""
    if count == 1 and not (isinstance(value, tuple) and value and isinstance(value[0], tuple)):
        return (value,)
    if not isinstance(value, tuple) or len(value) != count:
        raise CaptumArgumentError(f"{name} needs one entry per input ({count})")
    return value


def _repeat(target: Target, times: int, n: int) -> Target:
    """A target for ``times`` stacked copies of the batch (Captum's _expand_target)."""
    if isinstance(target, list):
        return target * times
    if isinstance(target, Tensor) and target.numel() == n and n > 1:
        return target.reshape(-1).repeat(times)
    return target


def _bar(show: bool, total: int, unit: str) -> Any:
    """Captum's progress bar when asked for (on stderr, as Captum's)."""
    if not show:
        return Silent()
    from tqdm import tqdm

    return tqdm(total=total, desc="Occlusion attribution", unit=unit)
