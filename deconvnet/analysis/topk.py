"""Top-k mining over a dataset (the paper's Fig. 2) and the projection of what was found.

:func:`mine_top_units` streams batches once, keeping for every channel of the chosen layers the
``k`` images whose strongest activation in that channel is largest (one unit per image: the
argmax of the map), in bounded memory. :func:`project_top_units` then traces just those images
again and projects each kept unit down on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..deconvnet import DeconvNet
from ..errors import InputError
from ..receptive import ReceptiveField

__all__ = ["Atlas", "Tile", "TopUnits", "batch_top_units", "merge_top_units", "mine_top_units", "project_top_units"]


@dataclass
class TopUnits:
    """The strongest units of one layer, per channel, strongest first.

    values (Tensor[C, k]): activations (``-inf`` where fewer than k images were seen).
    images (Tensor[C, k]): dataset indices of the images they come from.
    positions (Tensor[C, k]): flat spatial index of the unit in the layer's map.
    shape: the layer's output shape without the batch dimension, (C, H, W) or (C,).
    """

    layer: str
    values: Tensor
    images: Tensor
    positions: Tensor
    shape: tuple[int, ...]

    @property
    def found(self) -> int:
        """How many of the k slots hold a unit (fewer than k when the dataset is small)."""
        return int(torch.isfinite(self.values[0]).sum())

    def unit(self, channel: int, rank: int) -> tuple[int, ...]:
        """The (i, j) position of a kept unit in its map, or () for a layer without one."""
        spatial = self.shape[1:]
        if not spatial:
            return ()
        flat = int(self.positions[channel, rank])
        return tuple(int(v) for v in torch.unravel_index(torch.tensor(flat), spatial))


def merge_top_units(parts: Sequence[TopUnits], k: int) -> TopUnits:
    """The k strongest units per channel among ``parts`` (of one layer): by value, ties to the
    earlier dataset index. The order is total, so merging is associative and commutative: streamed
    batches, checkpoints and ranks all reach the same result."""
    first = parts[0]
    values = torch.cat([p.values for p in parts], dim=1)
    images = torch.cat([p.images for p in parts], dim=1)
    positions = torch.cat([p.positions for p in parts], dim=1)
    empty = ~torch.isfinite(values)
    images = images.masked_fill(empty, -1)
    positions = positions.masked_fill(empty, 0)
    order = torch.argsort(images, dim=1, stable=True)
    values, images, positions = (t.gather(1, order) for t in (values, images, positions))
    order = torch.argsort(values, dim=1, descending=True, stable=True)[:, :k]
    values, images, positions = (t.gather(1, order) for t in (values, images, positions))
    if values.shape[1] < k:
        pad = k - values.shape[1]
        values = torch.cat([values, values.new_full((values.shape[0], pad), float("-inf"))], dim=1)
        images = torch.cat([images, images.new_full((images.shape[0], pad), -1)], dim=1)
        positions = torch.cat([positions, positions.new_zeros((positions.shape[0], pad))], dim=1)
    return TopUnits(first.layer, values.contiguous(), images.contiguous(), positions.contiguous(), first.shape)


def batch_top_units(layer: str, activation: Tensor, indices: Tensor) -> TopUnits:
    """Each image's strongest unit per channel: activation (Tensor[B, C, ...]) of dataset images
    ``indices`` (LongTensor[B]) -> TopUnits with k = B (unsorted)."""
    flat = activation.reshape(*activation.shape[:2], -1)
    values, positions = flat.max(dim=2)  # [B, C]
    images = torch.as_tensor(indices, device=activation.device)[:, None].expand_as(values)
    return TopUnits(layer, values.T, images.T, positions.T, tuple(activation.shape[1:]))


def mine_top_units(
    dn: DeconvNet,
    batches: Iterable[tuple[Tensor, Tensor]],
    layers: Sequence[str],
    k: int = 9,
) -> dict[str, TopUnits]:
    """Stream ``batches`` of (x Tensor[B, C, H, W], dataset indices Tensor[B]) once.

    Returns layer -> TopUnits. Memory stays at one batch plus C * k numbers per layer.
    """
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    for layer in layers:
        dn.layer_name(layer)  # unknown layers fail before any batch is read
    best: dict[str, TopUnits] = {}
    for x, indices in batches:
        outputs = dn.activations(x, layers)
        for layer in layers:
            found = batch_top_units(layer, outputs[dn.layer_name(layer)], indices)
            best[layer] = merge_top_units([best[layer], found] if layer in best else [found], k)
    if not best:
        raise InputError("no batches to mine: the dataset is empty")
    return best


def project_top_units(
    dn: DeconvNet,
    top: TopUnits,
    load: Callable[[int], Tensor],
    channels: Sequence[int] | None = None,
    batch_size: int = 32,
) -> Tensor:
    """Project every kept unit on its own: Tensor[len(channels), k, C, H, W].

    load(index) returns dataset image ``index`` as model input, Tensor[C, H, W]. Each unit keeps
    its activation value (the paper's signal); slots with no unit stay zero. Runs on
    :meth:`DeconvNet.reconstruct_units`, cropped to each unit's receptive field where it can be.
    """
    channels = list(range(top.values.shape[0])) if channels is None else list(channels)
    k = top.values.shape[1]
    # Read once as Python lists: per-unit tensor indexing cost more than small units' projections.
    finite = torch.isfinite(top.values[channels]).tolist()
    images, positions = top.images[channels].tolist(), top.positions[channels].tolist()
    entries = [(row, r) for row in range(len(channels)) for r in range(k) if finite[row][r]]
    if not entries:
        raise InputError(f"no units were mined for {top.layer}")
    # Trace each kept image once, batch_size images at a time, and project all of its units.
    by_image: dict[int, list[tuple[int, int]]] = {}
    for row, r in entries:
        by_image.setdefault(images[row][r], []).append((row, r))
    order = list(by_image)
    result: Tensor | None = None
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        chunk = [(b, row, r) for b, image in enumerate(batch) for row, r in by_image[image]]
        projected = dn.reconstruct_units(
            torch.stack([load(i) for i in batch]), top.layer,
            images=[b for b, _, _ in chunk],
            channels=[channels[row] for _, row, _ in chunk],
            positions=[positions[row][r] for _, row, r in chunk],
        )
        if result is None:
            result = projected.new_zeros(len(channels), k, *projected.shape[1:])
        result[[row for _, row, _ in chunk], [r for _, _, r in chunk]] = projected
    return result  # type: ignore[return-value]


# The unit atlas's data (mined by :mod:`deconvnet.analysis.atlas`, drawn by
# :mod:`deconvnet.pictures.site`): here, so that the site needs nothing of how it was mined.


@dataclass
class Atlas:
    """The mined atlas: per layer, the k strongest units of every channel (see :class:`TopUnits`).

    names: every dataset item's name (``TopUnits.images`` index into it); skipped: the items that
    could not be read, with why; mined: how many were read and mined; spatial_dims: the inputs'
    (2 for images, 1 for signals, 3 for volumes and clips).
    """

    model: str
    source: str
    names: list[str]
    k: int
    layers: dict[str, TopUnits]
    fields: dict[str, ReceptiveField | None]
    skipped: dict[int, str] = field(default_factory=dict)
    mined: int = 0
    spatial_dims: int = 2

    def to_json(self) -> dict:
        """The ``atlas.json`` document (units strongest first; empty slots left out)."""
        layers = {}
        for name, top in self.layers.items():
            f = self.fields[name]
            units = []
            for c in range(top.values.shape[0]):
                units.append([
                    {"image": int(top.images[c, r]), "value": float(top.values[c, r]),
                     "position": list(top.unit(c, r))}
                    for r in range(self.k) if torch.isfinite(top.values[c, r])
                ])
            layers[name] = {"channels": top.values.shape[0], "k": self.k, "shape": list(top.shape),
                            "receptive_field": list(f.size) if f is not None else None, "units": units}
        skipped = [{"image": i, "name": self.names[i], "error": e} for i, e in sorted(self.skipped.items())]
        return {"model": self.model, "images": self.names, "spatial_dims": self.spatial_dims,
                "dataset": {"source": self.source, "count": len(self.names), "mined": self.mined, "skipped": skipped},
                "layers": layers}


@dataclass(frozen=True)
class Tile:
    """One kept unit drawn: its projection and its input patch, cropped to the receptive field,
    as PNG bytes (drawn by :func:`deconvnet.pictures.figures.unit_pictures`). rank: its place among the channel's units (0 = strongest). image: the dataset
    index of the image it is from; predicted: the model's top class for that image and its
    probability, when the model is a classifier."""

    layer: str
    channel: int
    rank: int
    projection: bytes
    patch: bytes
    image: int = -1
    predicted: tuple[int, float] | None = None
