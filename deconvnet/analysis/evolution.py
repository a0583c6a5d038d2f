"""Feature evolution during training (the paper's Fig. 4): for chosen channels of one layer, the
strongest activation over a dataset at each training checkpoint, projected down.

    result = evolution([model_at_step_20, ..., final], x, "features.13", channels=[0, 5, 9])
    result.projections   # Tensor[C, S, 3, H, W]: channel c's strongest unit under checkpoint s

Each checkpoint is mined on its own (:func:`deconvnet.analysis.topk.mine_top_units` with k = 1) and its
unit projected alone with that checkpoint's weights, as the paper does for each epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..deconvnet import DeconvNet
from ..errors import InputError
from ..progress import ProgressFactory, Silent
from .topk import mine_top_units

__all__ = ["Evolution", "evolution"]


@dataclass(frozen=True)
class Evolution:
    """For channels (C) across checkpoints (S): values Tensor[C, S] (strongest activation),
    images LongTensor[C, S] (its index in x), positions LongTensor[C, S] (flat index in the map),
    projections Tensor[C, S, 3, H, W]."""

    layer: str
    channels: list[int]
    labels: list[str]
    values: Tensor
    images: Tensor
    positions: Tensor
    projections: Tensor
    shape: tuple[int, ...]

    def unit(self, channel_row: int, step: int) -> tuple[int, int]:
        """The (row, column) of the unit in the layer's map."""
        flat = int(self.positions[channel_row, step])
        return flat // self.shape[-1], flat % self.shape[-1]


def evolution(
    models: Sequence[nn.Module | DeconvNet],
    x: Tensor,
    layer: str,
    channels: Sequence[int],
    *,
    labels: Sequence[str] | None = None,
    batch_size: int = 64,
    rule: str | None = None,
    progress: ProgressFactory | None = None,
) -> Evolution:
    """models: one per checkpoint, oldest first (same architecture); x (Tensor[N, C, H, W]): the
    dataset; channels: which channels of ``layer`` to follow. labels: one per checkpoint.
    progress: a tqdm-like factory, advanced once per checkpoint."""
    if not models:
        raise InputError("give at least one checkpoint's model")
    if labels is not None and len(labels) != len(models):
        raise InputError(f"labels has {len(labels)} entries for {len(models)} checkpoints")
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[0] == 0:
        raise InputError(f"x must be a non-empty Tensor[N, C, H, W], got {getattr(x, 'shape', type(x))}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    chosen = [int(c) for c in channels]
    if not chosen:
        raise InputError("give at least one channel")
    dns = [model if isinstance(model, DeconvNet) else DeconvNet(model) for model in models]
    name = dns[0].layer_name(layer)
    probe = dns[0].activations(x[:1], [name])[name]  # shape and channel checks before any work
    if probe.dim() != 4:
        raise InputError(f"evolution needs a layer with feature maps; {name} outputs {tuple(probe.shape[1:])} per image")
    bad = [c for c in chosen if not 0 <= c < probe.shape[1]]
    if bad:
        raise InputError(f"channel {bad[0]} is out of range: {name} has {probe.shape[1]} channels "
                         f"(0..{probe.shape[1] - 1})")
    values, images, positions, projections = [], [], [], []
    shape: tuple[int, ...] = tuple(probe.shape[1:])
    bar = (progress or Silent)(total=len(models), desc="evolution", unit="checkpoint")
    for dn in dns:
        batches = ((x[i : i + batch_size], torch.arange(i, min(i + batch_size, x.shape[0])))
                   for i in range(0, x.shape[0], batch_size))
        top = mine_top_units(dn, batches, [name], k=1)[name]
        picked = torch.tensor(chosen)
        image_ids = top.images[picked, 0]
        flat = top.positions[picked, 0]
        # Project every chosen unit alone, each on its own image, with this checkpoint's weights.
        unique, slot = torch.unique(image_ids, return_inverse=True)
        projected = dn.reconstruct_units(x[unique], name, images=slot, channels=picked, positions=flat, rule=rule)
        values.append(top.values[picked, 0])
        images.append(image_ids)
        positions.append(flat)
        projections.append(projected)
        bar.update()
    bar.close()
    names = list(labels) if labels is not None else [f"checkpoint {s}" for s in range(len(models))]
    return Evolution(name, chosen, names, torch.stack(values, 1), torch.stack(images, 1), torch.stack(positions, 1),
                     torch.stack(projections, 1), shape)
