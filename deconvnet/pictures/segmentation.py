"""Pictures of a segmentation model: the image under its predicted mask with a legend of the
classes present, and each class's region reconstructed beside the region itself."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from ..deconvnet import DeconvNet
from ..signals import Region
from . import image
from .figures import class_name, shown_input
from .volumes import planes_figure

__all__ = ["PALETTE", "class_colour", "mask_overlay", "on_input_grid", "segmentation_figure"]

PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40),
           (128, 0, 0), (170, 255, 195), (128, 128, 0), (0, 0, 128)]
"""Class colours, told apart at a glance (class c takes ``PALETTE[c % 16]``)."""


def class_colour(c: int) -> tuple[int, int, int]:
    return PALETTE[c % len(PALETTE)]


def on_input_grid(labels: Tensor, size: Sequence[int]) -> Tensor:
    """Per-position class labels (LongTensor[N, *S]) brought to the input's grid (nearest)."""
    if tuple(labels.shape[1:]) == tuple(size):
        return labels
    return F.interpolate(labels[:, None].float(), size=tuple(size), mode="nearest")[:, 0].long()


def mask_overlay(picture: Tensor, labels: Tensor, alpha: float = 0.4, only: int | None = None) -> Tensor:
    """The picture (Tensor[3, H, W] in [0, 1]) tinted by each position's class colour (labels
    LongTensor[H, W]), lightly enough that the image stays readable; ``only``: tint that class
    alone and dim the rest, to show one class's region."""
    colours = torch.tensor(PALETTE, dtype=picture.dtype, device=picture.device) / 255
    tint = colours[labels % len(PALETTE)].permute(2, 0, 1)
    if only is None:
        return picture * (1 - alpha) + tint * alpha
    inside = (labels == only).to(picture.dtype)[None]
    return inside * (picture * (1 - alpha) + tint * alpha) + (1 - inside) * picture * 0.35


def _legend(present: Sequence[tuple[int, float]], categories: Sequence[str] | None, width: int) -> Image.Image:
    """A strip of colour swatches, one per class present, with its name and share of the image."""
    font = ImageFont.load_default()
    entries = [(c, f"{class_name(categories, c)} {_share(share)}") for c, share in present]
    line, rows, x = 16, [[]], 4  # type: ignore[var-annotated]
    for c, text in entries:
        size = 14 + 6 * len(text) + 10
        if x + size > width and rows[-1]:
            rows.append([])
            x = 4
        rows[-1].append((c, text, x))
        x += size
    canvas = Image.new("RGB", (width, line * len(rows) + 4), "white")
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        for c, text, left in row:
            top = 2 + r * line
            draw.rectangle((left, top + 1, left + 10, top + 11), fill=class_colour(c), outline="black")
            draw.text((left + 14, top), text, fill="black", font=font)
    return canvas


def _share(share: float) -> str:
    return "<1%" if 0 < share < 0.005 else f"{share:.0%}"


def segmentation_figure(
    dn: DeconvNet,
    x: Tensor,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    *,
    categories: Sequence[str] | None = None,
    names: Sequence[str] | None = None,
    region: Region = "predicted",
    most: int = 8,
    scale: int = 1,
) -> Image.Image:
    """Per input of x (Tensor[N, C, *spatial]): the input under its predicted mask, a legend of
    the classes present (largest area first), then for each of them (at most ``most``) the
    region explained beside the reconstruction of the class over it.

    region: ``"predicted"`` (each class over its own predicted region) or the region every class
    is explained over (see :meth:`DeconvNet.reconstruct_classes`). Volumes are drawn as planes
    through each reconstruction's strongest point.
    """
    trace = dn.trace(x)
    present = [row[:most] for row in dn.predicted_classes(trace)]
    cells = trace.output[0, 0].numel()
    everything = sorted({c for row in present for c, _ in row})
    maps = dn.reconstruct_classes(trace, everything, region=region)
    slot = {c: i for i, c in enumerate(everything)}
    labels = on_input_grid(trace.output.argmax(dim=1), x.shape[2:])
    given = None if isinstance(region, str) else region
    parts = []
    for n in range(x.shape[0]):
        name = names[n] if names is not None and n < len(names) else f"input {n}"
        shares = [(c, k / cells) for c, k in present[n]]
        if x.dim() != 4:  # a volume: planes through each class's reconstruction
            titles = [f"{class_name(categories, c)} {_share(share)}" for c, share in shares]
            picture = planes_figure(x[n : n + 1].float().cpu(), maps[n : n + 1, [slot[c] for c, _ in shares]].float().cpu(),
                                    titles, mean=mean, std=std, names=[name])
            parts.append(picture)
            continue
        shown = shown_input(trace.input[n : n + 1].cpu(), mean, std)[0]
        if shown.shape[0] == 1:
            shown = shown.expand(3, -1, -1)
        tiles, captions = [shown, mask_overlay(shown, labels[n].cpu())], [name, "predicted mask"]
        for c, _ in shares:
            where = (_given_tile(shown, given, n) if given is not None
                     else mask_overlay(shown, labels[n].cpu(), only=c))
            tiles += [where, image.signed_to_unit(maps[n, slot[c]].float().cpu())]
            captions += [f"{class_name(categories, c)}: region", f"{class_name(categories, c)}: map"]
        grid = image.labelled_grid(torch.stack(tiles), captions, ncol=min(len(tiles), 8), scale=scale)
        parts.append(image.stack_pictures([grid, _legend(shares, categories, grid.width)], gap=0))
    return image.stack_pictures(parts, gap=12)


def _given_tile(shown: Tensor, region: Tensor | tuple[int, ...] | None, n: int) -> Tensor:
    """The picture dimmed outside a given region (its weights brought to the picture's grid)."""
    size = shown.shape[1:]
    if isinstance(region, tuple):
        weights = torch.zeros(size)
        weights[region] = 1
    else:
        weights = region.float().cpu()  # type: ignore[union-attr]
        weights = weights[n] if weights.dim() == 3 else weights
        weights = F.interpolate(weights[None, None], size=tuple(size), mode="nearest")[0, 0]
    weights = weights.abs() / weights.abs().max().clamp(min=1e-12)
    return shown * (0.3 + 0.7 * weights[None])
