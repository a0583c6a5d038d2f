"""Faithfulness metrics: does a map say what the model does?

- :func:`infidelity` and :func:`sensitivity_max`: Captum's two metrics (``captum.metrics``),
  with Captum's signatures and Captum's values given the same perturbations. A perturbation
  function is called with the same batches, in the same order, as Captum calls it, so a seeded
  or fixed perturbation gives the same numbers in both. What differs: the unperturbed forward
  pass of :func:`infidelity` runs once (Captum repeats it per batch of samples), and an
  explanation from :mod:`deconvnet.captum` explains all the perturbed inputs of a batch in one
  pass of the mirror.
- :func:`deletion_insertion`: Petsiuk et al.'s (2018) curves. Pixels are removed from the
  image (deletion), or put back into a blurred copy (insertion), in the order a map ranks them,
  and the target's probability is followed; the areas under the curves summarise them. Every
  step of every image runs in as few forward passes as the memory planner allows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from copy import copy
from dataclasses import dataclass
from inspect import signature
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .chunks import budget, forward_chunk
from .deconvnet import DeconvNet
from .errors import InputError

__all__ = [
    "Curves",
    "default_perturb_func",
    "deletion_insertion",
    "infidelity",
    "infidelity_perturb_func_decorator",
    "order_by",
    "sensitivity_max",
]

Inputs = Tensor | tuple[Tensor, ...]
Target = int | Sequence[int] | Tensor | None


# --- Captum's two metrics ------------------------------------------------------------------------


def _as_tuple(value: Inputs) -> tuple[Tensor, ...]:
    return value if isinstance(value, tuple) else (value,)


def _unwrap(value: tuple[Tensor, ...]) -> Inputs:
    """One tensor as itself, several as a tuple: how Captum hands inputs to user functions."""
    return value[0] if len(value) == 1 else value


def _sample_batches(batch: int, samples: int, max_examples_per_batch: int | None) -> Iterator[int]:
    """How many perturbed copies of each example go into each call, in Captum's order: as many
    as ``max_examples_per_batch`` allows (at least one), the last call taking what remains."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise InputError(f"n_perturb_samples must be a positive int, got {samples!r}")
    per = samples if max_examples_per_batch is None else min(max(max_examples_per_batch // batch, 1), samples)
    done = 0
    while done < samples:
        count = min(per, samples - done)
        yield count
        done += count


def _repeat(value: Any, count: int) -> Any:
    """A tensor with each example repeated ``count`` times in place (others as they are)."""
    return value.repeat_interleave(count, dim=0) if isinstance(value, Tensor) else value


def _expand_target(target: Target, count: int) -> Target:
    if isinstance(target, Tensor) and target.numel() > 1:
        return target.repeat_interleave(count, dim=0)
    if isinstance(target, Sequence) and not isinstance(target, (str, tuple)):
        return [t for t in target for _ in range(count)]
    return target


def _select(output: Tensor, target: Target, batch: int) -> Tensor:
    """The output that is explained, one number per example: Tensor[batch]."""
    if target is not None:
        if isinstance(target, Tensor) and target.numel() == 1:
            target = int(target)
        if isinstance(target, int):
            output = output[:, target]
        else:
            index = torch.as_tensor(target, device=output.device).reshape(-1, 1)
            if index.shape[0] != output.shape[0]:
                raise InputError(f"target has {index.shape[0]} entries for {output.shape[0]} examples")
            output = output.gather(1, index)
    if output.numel() != batch:
        raise InputError(f"forward_func gives {tuple(output.shape)} for {batch} examples; name the explained output "
                         "with target= (one number per example)")
    return output.reshape(batch)


def _forward(forward_func: Callable[..., Tensor], inputs: tuple[Tensor, ...], target: Target,
             extra: tuple[Any, ...]) -> Tensor:
    return _select(forward_func(*inputs, *extra), target, inputs[0].shape[0])


def _safe_divide(numerator: Tensor, denominator: Tensor | float) -> Tensor:
    if isinstance(denominator, Tensor):
        return numerator / torch.where(denominator != 0, denominator, torch.ones_like(denominator))
    return numerator / (denominator if denominator != 0 else 1.0)


def infidelity_perturb_func_decorator(multiply_by_inputs: bool = True) -> Callable[[Callable[..., Inputs]], Callable]:
    """Turn a function that only returns perturbed inputs into the (perturbations, perturbed
    inputs) pair :func:`infidelity` needs, as Captum's decorator of the same name does: the
    perturbation is ``input - perturbed``, divided by ``input - baseline`` (or by ``input``
    without baselines) when ``multiply_by_inputs``, zero denominators taken as one."""

    def decorate(perturb_func: Callable[..., Inputs]) -> Callable:
        def perturbed_pair(inputs: Inputs, baselines: Any = None) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
            perturbed = _as_tuple(perturb_func(inputs, baselines) if baselines is not None else perturb_func(inputs))
            originals = _as_tuple(inputs)
            bases = (_as_tuple(baselines) if isinstance(baselines, (Tensor, tuple)) else (baselines,) * len(originals)) \
                if baselines is not None else originals
            perturbations = tuple(
                (_safe_divide(x - p, x - b if baselines is not None else x) if multiply_by_inputs else x - p)
                for x, p, b in zip(originals, perturbed, bases, strict=True)
            )
            return perturbations, perturbed

        return perturbed_pair

    return decorate


def infidelity(
    forward_func: Callable[..., Tensor],
    perturb_func: Callable[..., tuple[Inputs, Inputs]],
    inputs: Inputs,
    attributions: Inputs,
    baselines: Any = None,
    additional_forward_args: Any = None,
    target: Target = None,
    n_perturb_samples: int = 10,
    max_examples_per_batch: int | None = None,
    normalize: bool = False,
) -> Tensor:
    """Captum's infidelity (Yeh et al. 2019): the expected squared difference between the
    attribution's dot product with a perturbation I and the output's change under it,
    ``E[(I . attribution - (f(x) - f(x - I)))^2]``, per example: Tensor[N].

    perturb_func(inputs[, baselines]) -> (perturbations, perturbed inputs), called on the inputs
    with each example repeated as many times as the batch holds samples (see
    :func:`infidelity_perturb_func_decorator`). ``normalize`` scales the attributions by the
    least-squares factor first. Arguments, call order and values as ``captum.metrics.infidelity``.
    """
    originals, explained = _as_tuple(inputs), _as_tuple(attributions)
    if len(originals) != len(explained):
        raise InputError(f"{len(originals)} input tensors and {len(explained)} attribution tensors")
    for x, a in zip(originals, explained, strict=True):
        if x.shape != a.shape:
            raise InputError(f"an attribution has shape {tuple(a.shape)} for an input of shape {tuple(x.shape)}")
    bases = _as_tuple(baselines) if isinstance(baselines, (Tensor, tuple)) else \
        (None if baselines is None else (baselines,) * len(originals))
    extra = additional_forward_args if isinstance(additional_forward_args, tuple) else \
        (() if additional_forward_args is None else (additional_forward_args,))
    batch = originals[0].shape[0]
    totals: list[Tensor] | None = None
    with torch.no_grad():
        unperturbed = _forward(forward_func, originals, target, extra)
        for count in _sample_batches(batch, n_perturb_samples, max_examples_per_batch):
            repeated = tuple(_repeat(x, count) for x in originals)
            repeated_bases = None if bases is None else tuple(
                _repeat(b, count) if isinstance(b, Tensor) and b.shape[0] == x.shape[0] and b.shape[0] > 1 else b
                for x, b in zip(originals, bases, strict=True))
            pair = perturb_func(_unwrap(repeated), _unwrap(repeated_bases)) if repeated_bases is not None else \
                perturb_func(_unwrap(repeated))
            perturbations, perturbed = _as_tuple(pair[0]), _as_tuple(pair[1])
            if len(perturbations) != len(originals) or any(p[0].shape != q[0].shape
                                                            for p, q in zip(perturbations, perturbed, strict=True)):
                raise InputError("perturb_func must return one perturbation per input tensor, shaped as its input")
            changed = _forward(forward_func, perturbed, _expand_target(target, count),
                               tuple(_repeat(a, count) for a in extra))
            drops = (unperturbed.repeat_interleave(count) - changed).view(batch, -1)
            dots = sum((_repeat(a, count) * p).flatten(1).sum(1) for a, p in zip(explained, perturbations, strict=True))
            dots = dots.view(batch, -1)  # type: ignore[union-attr]
            parts = [dots.pow(2).sum(-1), (dots * drops).sum(-1), drops.pow(2).sum(-1)] if normalize else \
                [(dots - drops).pow(2).sum(-1)]
            totals = parts if totals is None else [t + p for t, p in zip(totals, parts, strict=True)]
    assert totals is not None  # at least one batch: n_perturb_samples >= 1
    if normalize:
        scale = _safe_divide(totals[1], totals[0])
        value = scale * scale * totals[0] - 2 * scale * totals[1] + totals[2]
    else:
        value = totals[0]
    return value / n_perturb_samples


def default_perturb_func(inputs: Inputs, perturb_radius: float = 0.02) -> Inputs:
    """Captum's default perturbation for :func:`sensitivity_max`: uniform noise in the L-infinity
    ball of ``perturb_radius``, drawn in float32 on the CPU from the global generator (as Captum
    draws it, so a seed gives both the same noise) and moved to each input's device."""
    noisy = tuple(x + torch.empty(x.shape, dtype=torch.float32).uniform_(-perturb_radius, perturb_radius).to(x.device)
                  for x in _as_tuple(inputs))
    return noisy  # a tuple, as Captum's


def sensitivity_max(
    explanation_func: Callable[..., Inputs],
    inputs: Inputs,
    perturb_func: Callable[..., Inputs] = default_perturb_func,
    perturb_radius: float = 0.02,
    n_perturb_samples: int = 10,
    norm_ord: str | float = "fro",
    max_examples_per_batch: int | None = None,
    **kwargs: Any,
) -> Tensor:
    """Captum's max-sensitivity (Yeh et al. 2019): the largest relative change of the
    explanation, ``max ||e(x') - e(x)|| / ||e(x)||``, over ``n_perturb_samples`` perturbed copies
    x' of each example: Tensor[N].

    explanation_func(inputs, **kwargs) is called first on the inputs (as a tuple), then on each
    batch of perturbed copies, with ``target``, ``additional_forward_args`` and same-shaped
    ``baselines`` in ``kwargs`` repeated alongside. With an explanation from
    :mod:`deconvnet.captum` (``GuidedBackprop(model).attribute``) every batch is one pass of
    the mirror. Arguments, call order and values as ``captum.metrics.sensitivity_max``.
    """
    originals = _as_tuple(inputs)
    batch = originals[0].shape[0]
    takes_radius = len(signature(perturb_func).parameters) > 1
    worst: Tensor | None = None
    with torch.no_grad():
        explained = _as_tuple(explanation_func(originals, **kwargs))
        flat = torch.cat([e.reshape(batch, -1) for e in explained], dim=1)
        scale = torch.norm(flat, p=norm_ord, dim=1, keepdim=True)  # type: ignore[arg-type]
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        expanded_for, arguments = None, kwargs
        for count in _sample_batches(batch, n_perturb_samples, max_examples_per_batch):
            repeated = _unwrap(tuple(_repeat(x, count) for x in originals))
            perturbed = perturb_func(repeated, perturb_radius) if takes_radius else perturb_func(repeated)
            if expanded_for != count:
                expanded_for, arguments = count, _expanded_arguments(kwargs, originals, count)
            again = _as_tuple(explanation_func(perturbed, **arguments))
            change = torch.cat([(_repeat(e, count) - a).reshape(batch * count, -1)
                                for e, a in zip(explained, again, strict=True)], dim=1)
            relative = torch.norm(change, p=norm_ord, dim=1, keepdim=True) / scale.repeat_interleave(count, dim=0)  # type: ignore[arg-type]
            largest = relative.view(batch, -1).max(dim=1).values
            worst = largest if worst is None else torch.max(worst, largest)
    return worst  # type: ignore[return-value]


def _expanded_arguments(kwargs: dict[str, Any], originals: tuple[Tensor, ...], count: int) -> dict[str, Any]:
    """The explanation's keyword arguments for a batch of ``count`` copies per example."""
    expanded = copy(kwargs)
    if "additional_forward_args" in kwargs and kwargs["additional_forward_args"] is not None:
        extra = kwargs["additional_forward_args"]
        expanded["additional_forward_args"] = tuple(_repeat(a, count) for a in extra) if isinstance(extra, tuple) \
            else _repeat(extra, count)
    if "target" in kwargs:
        expanded["target"] = _expand_target(kwargs["target"], count)
    if isinstance(kwargs.get("baselines"), (Tensor, tuple)):
        bases = _as_tuple(kwargs["baselines"])
        if isinstance(bases[0], Tensor) and bases[0].shape == originals[0].shape:
            expanded["baselines"] = _unwrap(tuple(_repeat(b, count) for b in bases))
    return expanded


# --- deletion and insertion ----------------------------------------------------------------------


@dataclass
class Curves:
    """Deletion and insertion curves of one ordering of the pixels.

    fractions (Tensor[S]): the share of pixels removed (deletion) or put back (insertion) at
    each step, 0 to 1. deletion, insertion (Tensor[N, S]): the target's probability there.
    target (LongTensor[N]).
    """

    fractions: Tensor
    deletion: Tensor
    insertion: Tensor
    target: Tensor

    @property
    def deletion_auc(self) -> Tensor:
        """Area under the deletion curve per image, Tensor[N]: lower is better (the map's first
        pixels are the ones the model needs)."""
        return torch.trapezoid(self.deletion, self.fractions, dim=1)

    @property
    def insertion_auc(self) -> Tensor:
        """Area under the insertion curve per image, Tensor[N]: higher is better."""
        return torch.trapezoid(self.insertion, self.fractions, dim=1)


def order_by(saliency: Tensor) -> Tensor:
    """Each pixel's place when pixels are taken most salient first: saliency (Tensor[N, H, W],
    or Tensor[N, C, H, W], summed over channels) -> LongTensor[N, H, W], 0 = first. Ties go to
    the earlier pixel in reading order, so the order is the same on every device."""
    if saliency.dim() == 4:
        saliency = saliency.sum(dim=1)
    if saliency.dim() != 3:
        raise InputError(f"a saliency map is Tensor[N, H, W] or Tensor[N, C, H, W], got shape {tuple(saliency.shape)}")
    flat = saliency.reshape(saliency.shape[0], -1)
    first = torch.argsort(flat, dim=1, descending=True, stable=True)
    places = torch.empty_like(first)
    places.scatter_(1, first, torch.arange(flat.shape[1], device=flat.device).expand_as(first))
    return places.view(saliency.shape)


def _blurred(x: Tensor, sigma: float) -> Tensor:
    """x (Tensor[N, C, H, W]) under a Gaussian blur of ``sigma`` pixels, edges reflected."""
    radius = max(1, math.ceil(3 * sigma))
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-(taps**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    padded = F.pad(x, (radius, radius, radius, radius), mode="reflect" if min(x.shape[2:]) > radius else "replicate")
    rows = F.conv2d(padded, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    return F.conv2d(rows, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)


def deletion_insertion(
    model: nn.Module | DeconvNet,
    x: Tensor,
    order: Tensor,
    target: Target = None,
    *,
    steps: int = 32,
    fill: float | Tensor = 0.0,
    blur: float = 5.0,
    batch_size: int | None = None,
    memory_budget: int | None = None,
) -> Curves:
    """Deletion and insertion curves (Petsiuk et al. 2018, "RISE").

    x (Tensor[N, C, H, W]): model inputs; order (LongTensor[N, H, W]): each pixel's place, 0 =
    first (:func:`order_by` of a map, or any ordering: random, centre first). At each of
    ``steps`` + 1 fractions from 0 to 1, deletion sets the first pixels (all channels) to
    ``fill`` (model input space: 0 is the mean colour after the usual normalisation; or one
    value per image, Tensor[N], e.g. each image's minimum as Quantus's "black"), and
    insertion starts from the image blurred by ``blur`` pixels and puts the first pixels back.
    target: the class followed (default: each image's predicted class). All N * (steps + 1)
    inputs of each curve run in batches of ``batch_size`` (default: planned within the memory
    budget, as occlusion's batches are, with the bound of whole forward passes; a DeconvNet
    brings its own budget and traced graph).
    """
    dn = model if isinstance(model, DeconvNet) else None
    model = dn.model if dn is not None else model
    if x.dim() != 4:
        raise InputError(f"x must be a Tensor[N, C, H, W], got shape {tuple(x.shape)}")
    if order.shape != (x.shape[0], *x.shape[2:]):
        raise InputError(f"order must be a Tensor[N, H, W] of shape {(x.shape[0], *x.shape[2:])}, "
                         f"got {tuple(order.shape)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be a positive int, got {steps!r}")
    if blur <= 0:
        raise InputError(f"blur must be positive (a Gaussian's sigma in pixels), got {blur!r}")
    n, pixels = x.shape[0], x.shape[2] * x.shape[3]
    with torch.no_grad():
        output = model(x)
        if output.dim() != 2:
            raise InputError(f"the model gives {tuple(output.shape)}, not [N, classes]: no class probability to follow")
        chosen = output.argmax(dim=1) if target is None else _targets(target, n, output.shape[1], x.device)
        fractions = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
        kept = torch.round(fractions * pixels).long().to(x.device)  # pixels taken at each step
        size = batch_size or _forward_batch(dn or DeconvNet(model), x[:1], n * (steps + 1),
                                            memory_budget if dn is None else dn.memory_budget)
        blurred = _blurred(x, blur)
        curves = []
        filled = fill.to(x).view(-1, 1, 1, 1).expand_as(x) if isinstance(fill, Tensor) else torch.full_like(x, fill)
        for start, end in ((x, filled), (blurred, x)):
            probabilities = []
            for lo in range(0, n * (steps + 1), size):
                index = torch.arange(lo, min(lo + size, n * (steps + 1)), device=x.device)
                image, step = index // (steps + 1), index % (steps + 1)
                taken = (order[image] < kept[step].view(-1, 1, 1))[:, None]  # [B, 1, H, W]
                batch = torch.where(taken, end[image], start[image])
                probabilities.append(model(batch).softmax(dim=1).gather(1, chosen[image][:, None])[:, 0])
            curves.append(torch.cat(probabilities).view(n, steps + 1).double().cpu())
    return Curves(fractions, curves[0], curves[1], chosen.cpu())


def _targets(target: Target, n: int, classes: int, device: torch.device) -> Tensor:
    chosen = torch.as_tensor(target, device=device).reshape(-1).long()
    if chosen.numel() == 1:
        chosen = chosen.expand(n)
    if chosen.numel() != n:
        raise InputError(f"target has {chosen.numel()} entries for {n} images")
    if ((chosen < 0) | (chosen >= classes)).any():
        raise InputError(f"target {chosen.tolist()} is out of range: the model has {classes} classes (0..{classes - 1})")
    return chosen


def _forward_batch(dn: DeconvNet, x: Tensor, count: int, memory_budget: int | None) -> int:
    """Inputs per forward pass, planned as occlusion's passes are (:func:`deconvnet.chunks.forward_chunk`)
    with the bound of whole forward passes (``chunks.THROUGHPUT_ELEMENTS``). The sizes come from
    one traced pass of x (Tensor[1, C, H, W]); the model is not touched."""
    trace = dn.trace(x)
    sizes = [v.numel() for v in trace.activations.values() if isinstance(v, Tensor)] or [x.numel()]
    return forward_chunk(sizes, x.element_size(), count, budget(memory_budget, x.device), x.device.type, "forward")
