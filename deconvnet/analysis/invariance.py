"""Invariance (the paper's Fig. 5): how far a layer's output moves, and how the class
probability changes, as an image is shifted, scaled or rotated.

    result = invariance(model, x, ["features.3", "features.13"], "rotate", [0, 15, 30, 45])
    result.distance      # Tensor[L, N, A]: ||f(T_a x) - f(x)|| at each layer
    result.probability   # Tensor[N, A]: P(target | T_a x)

Transforms act on the model's input (already normalised) with torchvision's v2 functional
transforms, bilinear, filling what the image no longer covers with zeros (the mean colour for
mean/std-normalised inputs). Amount 0 is the image itself, exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from ..deconvnet import DeconvNet
from ..errors import InputError, TargetOutOfRangeError

__all__ = ["TRANSFORMS", "Invariance", "invariance", "transform_image"]

TRANSFORMS = {
    "translate": "vertical shift in pixels (positive: down)",
    "scale": "zoom by this ratio about the centre (1: unchanged), same output size",
    "rotate": "rotation in degrees about the centre (positive: anticlockwise)",
}


@dataclass(frozen=True)
class Invariance:
    """layers (L), transform, amounts Tensor[A]; distance Tensor[L, N, A]; probability
    Tensor[N, A]; target LongTensor[N] (the class whose probability is followed)."""

    layers: list[str]
    transform: str
    amounts: Tensor
    distance: Tensor
    probability: Tensor
    target: Tensor


def transform_image(x: Tensor, transform: str, amount: float) -> Tensor:
    """x (Tensor[N, C, H, W]) transformed by ``amount`` (see :data:`TRANSFORMS`)."""
    if transform not in TRANSFORMS:
        raise InputError(f"unknown transform {transform!r}; choose one of {', '.join(TRANSFORMS)}")
    identity = 1.0 if transform == "scale" else 0.0
    if amount == identity:
        return x
    bilinear = InterpolationMode.BILINEAR
    if transform == "translate":
        return TF.affine(x, angle=0.0, translate=[0.0, float(amount)], scale=1.0, shear=[0.0, 0.0],
                         interpolation=bilinear, fill=0.0)
    if transform == "scale":
        if amount <= 0:
            raise InputError(f"a scale ratio must be positive, got {amount}")
        return TF.affine(x, angle=0.0, translate=[0.0, 0.0], scale=float(amount), shear=[0.0, 0.0],
                         interpolation=bilinear, fill=0.0)
    return TF.rotate(x, float(amount), interpolation=bilinear, fill=0.0)


@torch.no_grad()
def invariance(
    model: nn.Module | DeconvNet,
    x: Tensor,
    layers: Sequence[str],
    transform: str,
    amounts: Sequence[float] | Tensor,
    *,
    target: int | Sequence[int] | Tensor | None = None,
    batch_size: int = 32,
) -> Invariance:
    """For every image and amount: the Euclidean distance between the flattened output of each
    layer for the transformed and for the original image, and the softmax probability of
    ``target`` (default: the class predicted on the original).

    x (Tensor[N, C, H, W]); target: one class for all, or one per image.
    """
    dn = model if isinstance(model, DeconvNet) else DeconvNet(model)
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise InputError(f"x must be a Tensor[N, C, H, W], got {getattr(x, 'shape', type(x))}")
    if transform not in TRANSFORMS:
        raise InputError(f"unknown transform {transform!r}; choose one of {', '.join(TRANSFORMS)}")
    if not layers:
        raise InputError("name at least one layer")
    amounts_t = torch.as_tensor(amounts, dtype=torch.float64).flatten()
    if amounts_t.numel() == 0:
        raise InputError("give at least one amount")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    names = [dn.layer_name(layer) for layer in layers]
    n = x.shape[0]
    reference = dn.activations(x, names)
    logits = dn.model(x)
    if logits.dim() != 2:
        raise InputError(f"the model must return logits Tensor[N, classes], got {tuple(logits.shape)}")
    targets = _targets(target, logits)
    # Every (amount, image) pair, batch_size at a time.
    pairs = [(a, i) for a in range(amounts_t.numel()) for i in range(n)]
    distance = torch.zeros(len(names), n, amounts_t.numel(), dtype=torch.float64)
    probability = torch.zeros(n, amounts_t.numel(), dtype=torch.float64)
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        moved = torch.cat([transform_image(x[i : i + 1], transform, float(amounts_t[a])) for a, i in chunk])
        outputs = dn.activations(moved, names)
        p = dn.model(moved).softmax(dim=1)
        index = torch.tensor([i for _, i in chunk], device=x.device)
        columns = [a for a, _ in chunk]
        rows = [i for _, i in chunk]
        for layer, name in enumerate(names):
            gap = (outputs[name] - reference[name][index]).flatten(1).double().norm(dim=1).cpu()
            distance[layer, rows, columns] = gap
        probability[rows, columns] = p[torch.arange(len(chunk)), targets[index]].double().cpu()
    return Invariance(names, transform, amounts_t, distance, probability, targets.cpu())


def _targets(target: int | Sequence[int] | Tensor | None, logits: Tensor) -> Tensor:
    n, classes = logits.shape
    if target is None:
        return logits.argmax(dim=1)
    if isinstance(target, (bool, float)):
        raise InputError(f"target must be a class index, got {target!r}")
    t = torch.as_tensor(target, device=logits.device)
    if t.is_floating_point():
        raise InputError(f"target must be class indices, got {t.dtype}")
    t = t.expand(n) if t.dim() == 0 else t
    if t.shape != (n,):
        raise InputError(f"target must be one class or one per image ({n}), got shape {tuple(t.shape)}")
    bad = t[(t < 0) | (t >= classes)]
    if bad.numel():
        raise TargetOutOfRangeError(f"class {int(bad[0])} is out of range: the model has {classes} classes "
                                    f"(0..{classes - 1})")
    return t.long()
