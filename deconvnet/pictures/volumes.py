"""Reconstructions of volumes (CT, MRI) and clips (video) as pictures.

- :func:`planes_figure`: a volume as three orthogonal planes (axial, coronal, sagittal) through
  the strongest point of each reconstruction, the input's planes beside them.
- :func:`slice_grid`: a volume as a grid of slices along its first axis.
- :func:`clip_strip`: a clip as a strip of frames, the reconstruction's frames under the clip's.

Volumes are Tensor[C, D, H, W]; a clip is Tensor[C, T, H, W] (torchvision's video models take
clips as Tensor[N, 3, T, H, W]). Inputs are shown with their normalisation undone when a
mean/std is given, else stretched to their own range (CT numbers have no display scale);
reconstructions with zero at mid-grey, one contrast per reconstruction for all its planes,
slices or frames.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .image import denormalize, labelled_grid, signed_to_unit, stack_pictures, titled

__all__ = ["clip_strip", "display", "field_planes", "plane_tiles", "planes", "planes_figure", "signed_volume",
           "slice_grid", "strongest_point"]

PLANES = ("axial", "coronal", "sagittal")
_READABLE = 120  # px: the narrowest tile a caption such as "ventricle 0.93, coronal" fits


def strongest_point(volume: Tensor) -> tuple[int, int, int]:
    """(d, h, w) of the largest magnitude of ``volume`` (Tensor[C, D, H, W]), channels summed."""
    magnitude = volume.detach().abs().sum(dim=0)
    flat = int(magnitude.reshape(-1).argmax())
    d, h, w = torch.unravel_index(torch.tensor(flat), magnitude.shape)
    return int(d), int(h), int(w)


def planes(volume: Tensor, at: Sequence[int]) -> list[Tensor]:
    """The three orthogonal planes of ``volume`` (Tensor[C, D, H, W]) through ``at`` = (d, h, w):
    axial Tensor[C, H, W], coronal Tensor[C, D, W], sagittal Tensor[C, D, H]."""
    d, h, w = at
    return [volume[:, d], volume[:, :, h], volume[:, :, :, w]]


def display(volume: Tensor, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> Tensor:
    """An input volume or clip (Tensor[C, D, H, W]) in [0, 1] for display: normalisation undone
    when ``mean``/``std`` are given, else stretched from its own minimum to maximum."""
    volume = volume.detach().float()
    if mean is not None and std is not None:
        return denormalize(volume.transpose(0, 1), mean, std).transpose(0, 1)
    low, high = volume.min(), volume.max()
    return (volume - low) / (high - low).clamp_min(torch.finfo(volume.dtype).tiny)


def signed_volume(reconstruction: Tensor) -> Tensor:
    """A reconstruction (Tensor[C, D, H, W]) in [0, 1], zero at mid-grey, one robust contrast for
    the whole volume (:func:`deconvnet.pictures.image.signed_to_unit` over all its voxels)."""
    channels = reconstruction.shape[0]
    return signed_to_unit(reconstruction.detach().float().reshape(channels, -1, reconstruction.shape[-1])).view(
        reconstruction.shape)


def _spread(length: int, count: int) -> list[int]:
    """``count`` indices spread evenly over ``length`` (all of them when there are fewer)."""
    shown = min(count, length)
    return sorted({round(i * (length - 1) / max(shown - 1, 1)) for i in range(shown)})


def _rgb(picture: Tensor) -> Tensor:
    """Tensor[C, h, w] -> Tensor[3, h, w]: one channel as grey; three as colour; others summed to grey."""
    if picture.shape[0] == 3:
        return picture
    grey = picture.mean(dim=0, keepdim=True) if picture.shape[0] != 1 else picture
    return grey.expand(3, -1, -1)


def _tile(picture: Tensor, side: int) -> Tensor:
    """Tensor[3, h, w] centred on a white square of ``side`` pixels (planes of a volume differ in shape)."""
    h, w = picture.shape[-2:]
    top, left = (side - h) // 2, (side - w) // 2
    return F.pad(picture, (left, side - w - left, top, side - h - top), value=1.0)


def plane_tiles(volume: Tensor, at: Sequence[int], side: int,
                colour: Callable[[Tensor], Tensor] | None = None) -> list[Tensor]:
    """The three planes of ``volume`` (Tensor[C, D, H, W]) through ``at`` (:func:`planes`), each
    made a picture by ``colour`` (Tensor[C, h, w] -> Tensor[3, h, w]; default: one channel as
    grey, three as colour) and centred on a white square of ``side`` pixels: Tensor[3, side, side]
    each, as they differ in shape."""
    return [_tile((colour or _rgb)(picture), side) for picture in planes(volume, at)]


def field_planes(cube: Tensor) -> Tensor:
    """A unit's receptive field (cube Tensor[C, d, h, w] in [0, 1]) as one picture: its three
    orthogonal slices through the centre (axial h x w, coronal d x w, sagittal d x h), each on a
    white square of the cube's longest side, side by side with one-pixel seams.
    Returns Tensor[3, s, 3 * s + 2]."""
    side = max(cube.shape[1:])
    centre = [n // 2 for n in cube.shape[1:]]
    seam = cube.new_ones(3, side, 1)
    tiles = plane_tiles(cube, centre, side)
    return torch.cat([tiles[0], seam, tiles[1], seam, tiles[2]], dim=2)


def planes_figure(
    x: Tensor,
    reconstructions: Tensor,
    labels: Sequence[str] | None = None,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    names: Sequence[str] | None = None,
    scale: int = 2,
) -> Image.Image:
    """One row per input and target: the input's three planes (axial, coronal, sagittal, each
    captioned with where it cuts), then the reconstruction's, all through the reconstruction's
    strongest point.

    x (Tensor[N, C, D, H, W]), reconstructions (Tensor[N, K, C, D, H, W]); labels: K, one per
    target (e.g. class names); names: N, one per input.
    """
    n, k = reconstructions.shape[:2]
    side = max(x.shape[-3:])
    scale = max(scale, -(-_READABLE // side))  # captions need about this many pixels
    tiles, captions = [], []
    for i in range(n):
        shown = display(x[i], mean, std)
        for j in range(k):
            recon = reconstructions[i, j]
            at = strongest_point(recon)
            signed = signed_volume(recon)
            name = names[i] if names is not None else f"input {i}"
            label = labels[j] if labels is not None else f"target {j}"
            where = dict(zip(PLANES, (f"d={at[0]}", f"h={at[1]}", f"w={at[2]}"), strict=True))
            tiles += plane_tiles(shown, at, side) + plane_tiles(signed, at, side)
            captions += [f"{name}, {where[plane]}" for plane in PLANES] + [f"{label}, {plane}" for plane in PLANES]
    return labelled_grid(torch.stack(tiles), captions, ncol=6, scale=scale)


def slice_grid(volume: Tensor, *, count: int = 12, signed: bool = False, columns: int = 6, scale: int = 2,
               label: str = "slice") -> Image.Image:
    """``count`` slices of ``volume`` (Tensor[C, D, H, W]) evenly spaced along D, in a grid;
    ``signed``: a reconstruction (zero at mid-grey), else an input (stretched to its range)."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    picked = _spread(volume.shape[1], count)
    shown = signed_volume(volume) if signed else display(volume)
    tiles = torch.stack([_rgb(shown[:, d]) for d in picked])
    return labelled_grid(tiles, [f"{label} {d}" for d in picked], ncol=min(columns, len(picked)), scale=scale)


def clip_strip(
    clip: Tensor,
    reconstruction: Tensor,
    *,
    frames: int = 8,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    label: str = "reconstruction",
    title: str = "",
    scale: int = 2,
) -> Image.Image:
    """A clip (Tensor[C, T, H, W]) as a strip of up to ``frames`` frames, its reconstruction's
    frames (one contrast for the whole clip) underneath, ``title`` above."""
    picked = _spread(clip.shape[1], frames)
    shown, signed = display(clip, mean, std), signed_volume(reconstruction)
    top = labelled_grid(torch.stack([_rgb(shown[:, t]) for t in picked]), [f"frame {t}" for t in picked],
                        ncol=len(picked), scale=scale)
    bottom = labelled_grid(torch.stack([_rgb(signed[:, t]) for t in picked]), [f"{label}, {t}" for t in picked],
                           ncol=len(picked), scale=scale)
    strip = stack_pictures([top, bottom], gap=2)
    return titled(strip, title) if title else strip
