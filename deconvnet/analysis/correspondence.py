"""Correspondence (the paper's Fig. 8 and Table 1): does a network treat the same part of
different images alike?

For images x_1..x_N and one box per image over "the same part", eps_i = f(x_i) - f(x_i with its box
filled), flattened, at one layer. The score is the mean over pairs i < j of the fraction of
entries where sign(eps_i) != sign(eps_j) (sign(0) = 0): the paper's Hamming distance, per entry.
Lower means occluding that part changes the layer more consistently across images. The
baseline is the same boxes at random positions (:func:`random_boxes`).

    score = correspondence(model, x, boxes, "features.13")
    baseline = correspondence(model, x, random_boxes(x, boxes, seed=0), "features.13")
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..deconvnet import DeconvNet
from ..errors import InputError

__all__ = ["correspondence", "differences", "fill_boxes", "random_boxes"]


def _check(x: Tensor, boxes: Tensor) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise InputError(f"x must be a Tensor[N, C, H, W], got {getattr(x, 'shape', type(x))}")
    boxes_t = torch.as_tensor(boxes)
    if boxes_t.is_floating_point() or boxes_t.shape != (x.shape[0], 4):
        raise InputError(f"boxes must be integer (top, left, height, width), one row per image: "
                         f"LongTensor[{x.shape[0]}, 4], got {boxes_t.dtype} {tuple(boxes_t.shape)}")
    height, width = x.shape[-2:]
    for i, (top, left, h, w) in enumerate(boxes_t.tolist()):
        if h < 1 or w < 1 or top < 0 or left < 0 or top + h > height or left + w > width:
            raise InputError(f"box {i} (top {top}, left {left}, height {h}, width {w}) does not lie inside "
                             f"the {height}x{width} image with a positive size")
    return boxes_t.long()


def fill_boxes(x: Tensor, boxes: Tensor, fill: float = 0.0) -> Tensor:
    """A copy of x (Tensor[N, C, H, W]) with box i of image i set to ``fill``."""
    boxes_t = _check(x, boxes)
    out = x.clone()
    for i, (top, left, h, w) in enumerate(boxes_t.tolist()):
        out[i, :, top : top + h, left : left + w] = fill
    return out


@torch.no_grad()
def differences(
    model: nn.Module | DeconvNet,
    x: Tensor,
    boxes: Tensor,
    layers: Sequence[str],
    *,
    fill: float = 0.0,
    reference: dict[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """eps per layer (Tensor[N, D]): each image's layer output minus the output with its box
    filled. reference: ``dn.activations(x, layers)`` when already computed (several box sets
    over the same images need the unoccluded pass once)."""
    dn = model if isinstance(model, DeconvNet) else DeconvNet(model)
    names = [dn.layer_name(layer) for layer in layers]
    occluded = dn.activations(fill_boxes(x, boxes, fill), names)
    clean = reference if reference is not None else dn.activations(x, names)
    return {name: (clean[name] - occluded[name]).flatten(1) for name in names}


def disagreement(eps: Tensor) -> float:
    """The mean over pairs i < j of the fraction of entries where sign(eps_i) != sign(eps_j).
    eps (Tensor[N, D]), N >= 2."""
    if eps.dim() != 2 or eps.shape[0] < 2:
        raise InputError(f"correspondence compares images pairwise: give at least 2, got {eps.shape[0]}")
    signs = eps.sign()
    i, j = torch.triu_indices(signs.shape[0], signs.shape[0], offset=1)
    return float((signs[i] != signs[j]).double().mean(dim=1).mean())


def correspondence(model: nn.Module | DeconvNet, x: Tensor, boxes: Tensor, layer: str, *, fill: float = 0.0) -> float:
    """The mean over pairs i < j of the fraction of entries of ``layer`` where occluding box i in
    image i and box j in image j change the output with different signs. x (Tensor[N, C, H, W]),
    N >= 2; boxes (LongTensor[N, 4]) as (top, left, height, width)."""
    if isinstance(x, Tensor) and x.dim() == 4 and x.shape[0] < 2:
        raise InputError(f"correspondence compares images pairwise: give at least 2, got {x.shape[0]}")
    return disagreement(next(iter(differences(model, x, boxes, [layer], fill=fill).values())))


def random_boxes(x: Tensor, boxes: Tensor, *, seed: int = 0, inside: Tensor | None = None) -> Tensor:
    """The paper's random-occlusion baseline: box i's height and width at a uniformly random
    position inside image i. inside (BoolTensor[N, H, W] or None): only positions whose box
    centre falls on a True pixel (e.g. random boxes on the object). Returns LongTensor[N, 4];
    the same for the same seed."""
    boxes_t = _check(x, boxes)
    height, width = x.shape[-2:]
    if inside is not None and (not isinstance(inside, Tensor) or inside.shape != (x.shape[0], height, width)):
        raise InputError(f"inside must be a BoolTensor[{x.shape[0]}, {height}, {width}], got "
                         f"{getattr(inside, 'shape', type(inside))}")
    generator = torch.Generator().manual_seed(seed)
    out = boxes_t.clone()
    for i, (_, _, h, w) in enumerate(boxes_t.tolist()):
        if inside is None:
            out[i, 0] = int(torch.randint(0, height - h + 1, (), generator=generator))
            out[i, 1] = int(torch.randint(0, width - w + 1, (), generator=generator))
            continue
        allowed = inside[i].bool().cpu()[h // 2 : height - h + 1 + h // 2, w // 2 : width - w + 1 + w // 2]
        places = allowed.nonzero()
        if places.numel() == 0:
            raise InputError(f"no {h}x{w} box in image {i} has its centre inside the allowed region")
        out[i, :2] = places[int(torch.randint(0, places.shape[0], (), generator=generator))]
    return out
