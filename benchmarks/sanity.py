"""The sanity checks and Captum's metrics against Quantus and Captum: the same models, inputs and
maps, side by side in one run.

    python -m benchmarks sanity

Per model (the bundled ShapesNet on 8 held-out images; EfficientNet-Lite0 with its ImageNet
weights on scikit-image's 4 photos), each image's predicted class, guided backpropagation:

- **Randomization**: Quantus's ``MPRT`` (cascading top-down, one module per step, Spearman of
  the absolute maps) with our mirror as its ``explain_func``, against
  ``deconvnet.analysis.sanity.model_randomization`` with one module per step. Times both. They
  re-initialise from different seeds (Quantus: ``seed + 1`` before every module; ours:
  ``seed + step``), so the agreement is checked on Quantus's own randomized models: our
  Spearman of our maps there against Quantus's number, the largest difference. Beside it,
  Quantus as its users run it with Captum: ``MPRT`` with Captum's ``GuidedBackprop``. Captum
  hooks ``nn.ReLU`` modules only: on EfficientNet-Lite0, whose rectifiers are ReLU6, its
  "guided" maps are gradients through the ReLU6s, not the same method (its Spearman differs).
- **Pixel flipping**: Quantus's ``PixelFlipping`` (the image's minimum as the baseline, softmax
  probabilities; its map: each pixel's place in our order, so that neither breaks ties its own
  way) against ``deconvnet.metrics.deletion_insertion`` with ``fill`` = the image's minimum, 16
  steps: the largest difference between the curves where both have flipped whole pixels, and
  the time of each.
- **Max-sensitivity**: ``captum.metrics.sensitivity_max`` of Captum's ``GuidedBackprop``
  against ``deconvnet.metrics.sensitivity_max`` of our drop-in's, 10 samples, the same seed: the
  largest difference and the time of each.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from deconvnet import DeconvNet
from deconvnet.analysis import sanity
from deconvnet.metrics import deletion_insertion, order_by

from .harness import TABLES

__all__ = ["run"]


def _inputs(name: str) -> tuple[nn.Module, torch.Tensor, str]:
    from deconvnet.loading import PHOTOS, load_model, photo
    from deconvnet.shapes import HELD_OUT_SEED, render

    loaded = load_model("shapes" if name == "shapes" else "efficientnet-lite0")
    if name == "shapes":
        x = torch.stack([loaded.preprocessing.transform(render(HELD_OUT_SEED, i).image) for i in range(8)])
        return loaded.model, x, "ShapesNet, 8 held-out images, 64 px"
    x = torch.stack([loaded.preprocessing.transform(photo(p)) for p in PHOTOS])
    return loaded.model, x, "EfficientNet-Lite0 (ImageNet), 4 photos, 224 px"


def _guided_maps(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Each image's guided heat map of its class, Tensor[N, H, W]: a new mirror of ``model``
    (Quantus hands a new randomized copy to every call)."""
    classes = sorted(set(target.tolist()))
    maps = DeconvNet(model, rule="guided").reconstruct_classes(x, classes)
    slot = torch.tensor([classes.index(c) for c in target.tolist()])
    return sanity.heat(maps[torch.arange(x.shape[0]), slot])


def _clock(call: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = call()
    return value, time.perf_counter() - start


def bench_randomization(model: nn.Module, x: torch.Tensor, label: str) -> dict:
    import quantus

    with torch.no_grad():
        target = model(x).argmax(dim=1)

    def explain(model: nn.Module, inputs: np.ndarray, targets: np.ndarray, **kwargs: Any) -> np.ndarray:
        maps = _guided_maps(model, torch.as_tensor(inputs), torch.as_tensor(targets))
        return maps[:, None].detach().numpy()

    metric = quantus.MPRT(layer_order="top_down", seed=42, disable_warnings=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores, quantus_seconds = _clock(lambda: metric(
            model=model, x_batch=x.numpy(), y_batch=target.numpy(), a_batch=None, explain_func=explain,
            device="cpu", batch_size=len(x)))
    layers = [name for name in scores if name != "original"]

    def explain_captum(model: nn.Module, inputs: np.ndarray, targets: np.ndarray, **kwargs: Any) -> np.ndarray:
        from captum.attr import GuidedBackprop as CaptumGuided

        maps = CaptumGuided(model).attribute(torch.as_tensor(inputs), target=torch.as_tensor(targets).tolist())
        return maps.sum(dim=1, keepdim=True).detach().numpy()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with_captum, captum_seconds = _clock(lambda: quantus.MPRT(layer_order="top_down", seed=42,
                                                                  disable_warnings=True)(
            model=model, x_batch=x.numpy(), y_batch=target.numpy(), a_batch=None, explain_func=explain_captum,
            device="cpu", batch_size=len(x)))
    dn = DeconvNet(model)
    modules = len([g for group in sanity.randomization_groups(dn, 10_000) for g in group])
    ours, our_seconds = _clock(lambda: sanity.model_randomization(dn, x, rules=["guided"], steps=modules))
    # Agreement: Quantus's own randomized models, our maps and Spearman there against its numbers.
    wrapped = quantus.helpers.model.pytorch_model.PyTorchModel(model, channel_first=True, device="cpu")
    original = _guided_maps(model, x, target)
    largest = 0.0
    for (name, randomized), layer in zip(wrapped.get_random_layer_generator(order="top_down", seed=42), layers,
                                         strict=True):
        ours_there = sanity.spearman(original, _guided_maps(randomized, x, target))
        largest = max(largest, float((ours_there - torch.tensor(scores[layer], dtype=torch.float64)).abs().max()))
    return {
        "benchmark": "randomization", "model": label, "steps": len(layers), "our steps": modules,
        "quantus last mean Spearman": float(np.mean(scores[layers[-1]])),
        "ours last mean Spearman": float(ours.similarity["guided"]["spearman"][-1].mean()),
        "largest difference on Quantus's models": largest,
        "quantus s": quantus_seconds, "ours s": our_seconds, "quantus / ours": quantus_seconds / our_seconds,
        "quantus with Captum's GuidedBackprop s": captum_seconds, "that / ours": captum_seconds / our_seconds,
        "its last mean Spearman": float(np.mean(with_captum[layers[-1]])),
    }


def bench_pixel_flipping(model: nn.Module, x: torch.Tensor, label: str, steps: int = 16) -> dict:
    import quantus

    with torch.no_grad():
        target = model(x).argmax(dim=1)
    order = order_by(_guided_maps(model, x, target).abs().detach())
    pixels = x.shape[2] * x.shape[3]
    channels = x.shape[1]
    if pixels % steps:
        raise SystemExit(f"{pixels} pixels do not split into {steps} equal steps")
    # Quantus ranks features (channel x pixel) and needs its step to divide the pixel count. Its
    # map here is each pixel's place in our order, repeated over the channels: no ties, each
    # pixel's channels adjacent, so after every ``channels`` of its steps whole pixels are
    # flipped, pixels / steps more each time: the points our curve has.
    ranked = (pixels - order).double()[:, None].expand(-1, channels, -1, -1).numpy()
    metric = quantus.PixelFlipping(features_in_step=pixels // steps, perturb_baseline="black", normalise=False,
                                   abs=False, disable_warnings=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        curves, quantus_seconds = _clock(lambda: np.array(metric(
            model=model, x_batch=x.numpy(), y_batch=target.numpy(), a_batch=ranked, softmax=True,
            device="cpu", batch_size=len(x))))

    dn = DeconvNet(model)
    deletion, our_seconds = _clock(lambda: deletion_insertion(dn, x, order, target, steps=steps,
                                                             fill=x.flatten(1).min(dim=1).values).deletion)
    whole = torch.as_tensor(curves)[:, channels - 1 :: channels]  # Quantus's points after whole pixels
    difference = float((deletion[:, 1:] - whole).abs().max())
    return {"benchmark": "pixel flipping", "model": label, "steps": steps,
            "largest difference of the curves": difference, "quantus s": quantus_seconds, "ours s": our_seconds,
            "quantus / ours": quantus_seconds / our_seconds,
            "note": f"Quantus ran {curves.shape[1]} steps (partial pixels between); ours also gives insertion"}


def bench_sensitivity(model: nn.Module, x: torch.Tensor, label: str, samples: int = 10) -> dict:
    from captum import metrics as captum_metrics
    from captum.attr import GuidedBackprop as CaptumGuided

    from deconvnet import metrics
    from deconvnet.captum import GuidedBackprop

    with torch.no_grad():
        target = model(x).argmax(dim=1).tolist()
    explain_ours, explain_captum = GuidedBackprop(model).attribute, CaptumGuided(model).attribute
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        theirs, captum_seconds = _clock(lambda: captum_metrics.sensitivity_max(
            explain_captum, x, target=target, n_perturb_samples=samples))
        torch.manual_seed(0)
        ours, our_seconds = _clock(lambda: metrics.sensitivity_max(explain_ours, x, target=target,
                                                                   n_perturb_samples=samples))
    return {"benchmark": "sensitivity_max", "model": label, "steps": samples,
            "largest difference": float((ours - theirs).abs().max()), "captum s": captum_seconds,
            "ours s": our_seconds, "captum / ours": captum_seconds / our_seconds}


def markdown(rows: list[dict]) -> list[str]:
    lines: list[str] = []
    for kind in dict.fromkeys(r["benchmark"] for r in rows):
        group = [r for r in rows if r["benchmark"] == kind]
        keys = [k for k in group[0] if k not in ("benchmark", "model")]
        lines += ["| " + " | ".join([kind, *keys]) + " |", "|" + "---|" * (1 + len(keys))]
        for r in group:
            cells = [f"{r[k]:.3g}" if isinstance(r[k], float) else str(r[k]) for k in keys]
            lines.append("| " + " | ".join([r["model"], *cells]) + " |")
        lines.append("")
    return lines


for _kind in ("pixel flipping", "sensitivity_max", "randomization"):
    TABLES[_kind] = markdown


def run(emit: Callable[[dict], None]) -> None:
    torch.manual_seed(0)
    for name in ("shapes", "efficientnet"):
        model, x, label = _inputs(name)
        emit(bench_pixel_flipping(model, x, label))
        emit(bench_sensitivity(model, x, label))
        emit(bench_randomization(model, x, label))
