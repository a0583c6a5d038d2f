"""First-layer filters (the paper's Fig. 6) and the paper's fix for filters that dominate.

    name, weight = first_conv(model)                  # the conv that reads the input
    picture = filters_figure(weight)                  # one tile per filter
    fixed = renormalize_filters(weight, max_rms=0.1)  # a new tensor; the model is not touched

Zeiler & Fergus saw a few first-layer filters dominate, and renormalised every filter whose RMS
exceeds a fixed radius (1e-1) back to that radius during training.
"""

from __future__ import annotations

import torch
from PIL import Image
from torch import Tensor, nn

from ..errors import InputError, LayerNotFoundError
from ..pictures import image

__all__ = ["filter_rms", "filters_figure", "first_conv", "renormalize_filters"]


def first_conv(model: nn.Module, layer: str | None = None) -> tuple[str, Tensor]:
    """The name and weight (Tensor[O, I, kh, kw]) of ``layer``, or of the first Conv2d module in
    registration order (for torchvision and timm CNNs, the stem that reads the image)."""
    modules = dict(model.named_modules())
    if layer is not None:
        if layer not in modules:
            raise LayerNotFoundError(f"no module {layer!r} in {type(model).__name__}")
        if not isinstance(modules[layer], nn.Conv2d):
            raise InputError(f"{layer} is a {type(modules[layer]).__name__}, not a Conv2d")
        return layer, modules[layer].weight.detach()
    for name, module in modules.items():
        if isinstance(module, nn.Conv2d):
            return name, module.weight.detach()
    raise InputError(f"{type(model).__name__} has no Conv2d layer")


def filter_rms(weight: Tensor) -> Tensor:
    """Root mean square of each filter: weight (Tensor[O, ...]) -> Tensor[O]."""
    return weight.detach().flatten(1).pow(2).mean(dim=1).sqrt()


def renormalize_filters(weight: Tensor, max_rms: float = 0.1) -> Tensor:
    """A copy of ``weight`` (Tensor[O, ...]) with every filter whose RMS exceeds ``max_rms``
    scaled down to exactly ``max_rms``; the others unchanged."""
    if not (isinstance(max_rms, (int, float)) and not isinstance(max_rms, bool) and max_rms > 0):
        raise InputError(f"max_rms must be a positive number, got {max_rms!r}")
    rms = filter_rms(weight)
    scale = torch.where(rms > max_rms, max_rms / rms, torch.ones_like(rms))
    return weight.detach() * scale.view(-1, *([1] * (weight.dim() - 1)))


def filters_figure(weight: Tensor, *, labels: bool = True, scale: int | None = None, ncol: int | None = None,
                   shared: bool = False, bound: float | None = None) -> Image.Image:
    """One tile per filter of weight (Tensor[O, I, kh, kw]), zero at mid-grey: RGB when I = 3,
    grey (the mean over inputs) otherwise.

    shared: one contrast for all filters, so their strengths compare (dominant filters stand out,
    as in the paper's Fig. 6): the largest magnitude, or ``bound`` (to compare two figures);
    otherwise each filter is stretched on its own. Labels give each filter's index and RMS.
    """
    if not isinstance(weight, Tensor) or weight.dim() != 4:
        raise InputError(f"filters_figure needs a Tensor[O, I, kh, kw], got {getattr(weight, 'shape', type(weight))}")
    w = weight.detach().float().cpu()
    w = w if w.shape[1] == 3 else w.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    if shared:
        scale_ = torch.tensor(bound) if bound is not None else w.abs().max()
        tiles = (0.5 + 0.5 * w / scale_.clamp_min(1e-12)).clamp(0, 1)
    else:
        tiles = image.signed_to_unit(w, percentile=100)
    side = max(w.shape[-2:])
    scale = scale or max(1, 54 // side)
    rms = filter_rms(weight)
    names = [f"{i}: {float(r):.2f}" for i, r in enumerate(rms)] if labels else None
    return image.labelled_grid(tiles, names, ncol=ncol or min(16, w.shape[0]), scale=scale, padding=3)
