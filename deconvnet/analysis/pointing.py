"""The pointing game: does the strongest pixel of a class reconstruction fall on the object?

Measured on generated shapes, whose masks are known, against two baselines that ignore the
image: always pointing at the centre, and pointing at a uniformly random pixel (its expected
hit rate, the mean mask area, computed exactly rather than sampled).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.transforms.functional import pil_to_tensor

from ..deconvnet import DeconvNet
from ..shapes import Sample, normalize

__all__ = ["PointingResult", "pointing_game"]


@dataclass(frozen=True)
class PointingResult:
    """Hit rates (fractions of images) of deconvnet and the two baselines.

    tolerance: a point counts as a hit within this many pixels of the mask (0: on the mask).
    """

    images: int
    tolerance: int
    deconvnet: float
    centre: float
    random: float


def pointing_game(
    dn: DeconvNet,
    samples: Sequence[Sample],
    batch_size: int = 64,
    progress: Iterable[int] | None = None,
    tolerances: Sequence[int] = (0,),
) -> list[PointingResult]:
    """Play the game on ``samples`` with each image's true class, once per tolerance.

    tolerances: pixels around the mask that still count as a hit (the usual 15 px at 224 px is
        about 4 px at 64 px). progress: an optional wrapper over the batch starts (e.g. a tqdm
        bar) for the caller.
    """
    device = next(dn.model.parameters()).device
    hits = [0] * len(tolerances)
    centre = [0] * len(tolerances)
    area = [0.0] * len(tolerances)
    starts = range(0, len(samples), batch_size)
    for start in progress if progress is not None else starts:
        batch = samples[start : start + batch_size]
        x = torch.stack([normalize(s.image) for s in batch]).to(device)
        labels = [s.label for s in batch]
        classes = sorted(set(labels))
        reconstructions = dn.reconstruct_classes(x, classes)  # [B, K, 3, H, W]
        chosen = reconstructions[torch.arange(len(batch)), [classes.index(c) for c in labels]]
        magnitude = chosen.abs().sum(dim=1).flatten(1)  # [B, H * W]
        strongest = magnitude.argmax(dim=1).cpu()
        exact = torch.stack([pil_to_tensor(s.mask)[0] > 0 for s in batch]).float()  # [B, H, W]
        height, width = exact.shape[1:]
        for i, tolerance in enumerate(tolerances):
            # Grow the mask by the tolerance (a max filter over a square window).
            masks = F.max_pool2d(exact[:, None], 2 * tolerance + 1, 1, tolerance)[:, 0] > 0
            flat = masks.flatten(1)
            hits[i] += int(flat[torch.arange(len(batch)), strongest].sum())
            centre[i] += int(masks[:, height // 2, width // 2].sum())
            area[i] += float(flat.float().mean(dim=1).sum())
    count = len(samples)
    return [
        PointingResult(count, t, hits[i] / count, centre[i] / count, area[i] / count)
        for i, t in enumerate(tolerances)
    ]
