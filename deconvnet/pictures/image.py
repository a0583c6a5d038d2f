"""Reconstructions and inputs as pictures.

Reconstructions are signed: :func:`signed_to_unit` maps each one to [0, 1] with zero at
mid-grey, so negative parts stay visible and are not mistaken for dark image content.
:func:`heatmap` shows magnitude (channels summed) through a colormap; :func:`overlay` lays it
on the input; :func:`labelled_grid` tiles pictures with captions.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import torch
from einops import rearrange
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torchvision.utils import make_grid

__all__ = [
    "MID_GREY",
    "SERIES_COLOURS",
    "denormalize",
    "fit_text",
    "heatmap",
    "labelled_grid",
    "line_chart",
    "overlay",
    "signed_to_unit",
    "stack_pictures",
    "titled",
    "to_pil",
    "to_png",
]

MID_GREY = 0.5

# Anchor colours of a perceptually ordered dark-to-bright map (black, purple, red, orange, pale yellow).
_COLORMAP = torch.tensor(
    [
        [0.00, 0.00, 0.02],
        [0.34, 0.06, 0.43],
        [0.73, 0.21, 0.33],
        [0.98, 0.55, 0.04],
        [0.99, 1.00, 0.64],
    ]
)


def signed_to_unit(reconstruction: Tensor, percentile: float = 99.5) -> Tensor:
    """Contrast-normalise each reconstruction to [0, 1] with zero at mid-grey.

    reconstruction (Tensor[..., C, H, W]) -> same shape; each [C, H, W] is divided by twice the
    ``percentile`` of its non-zero magnitudes and shifted by 0.5, the few values beyond
    saturating at 0 or 1. A robust scale, not the largest magnitude: reconstructions through
    real networks have isolated extreme pixels that would otherwise turn the rest mid-grey.
    ``percentile=100`` scales by the largest magnitude. An all-zero reconstruction is mid-grey.
    """
    flat = reconstruction.detach().flatten(-3).float()
    rows = flat.reshape(-1, flat.shape[-1]).abs()
    scales = []
    for row in rows:
        nonzero = row[row > 0]
        scales.append(torch.quantile(nonzero, percentile / 100) if nonzero.numel() else row.new_zeros(()))
    scale = torch.stack(scales).view(flat.shape[:-1]) if scales else flat.new_zeros(flat.shape[:-1])
    scale = scale.to(reconstruction.dtype).clamp_min(torch.finfo(reconstruction.dtype).tiny)
    out = reconstruction / (2 * scale[..., None, None, None]) + MID_GREY
    return out.clamp(0, 1)


def colormap(values: Tensor) -> Tensor:
    """values (Tensor[..., H, W] in [0, 1]) -> Tensor[..., 3, H, W] through the colour map."""
    anchors = _COLORMAP.to(values.device, values.dtype)
    position = values.clamp(0, 1) * (len(anchors) - 1)
    low = position.floor().long().clamp(max=len(anchors) - 2)
    weight = (position - low).unsqueeze(-1)
    rgb = anchors[low] * (1 - weight) + anchors[low + 1] * weight
    return rearrange(rgb, "... h w c -> ... c h w")


def heatmap(reconstruction: Tensor) -> Tensor:
    """Magnitude map: |reconstruction| summed over channels, scaled to [0, 1] per map, coloured.

    reconstruction (Tensor[..., C, H, W]) -> Tensor[..., 3, H, W].
    """
    magnitude = reconstruction.abs().sum(dim=-3)
    peak = magnitude.flatten(-2).amax(dim=-1).clamp_min(torch.finfo(magnitude.dtype).tiny)
    return colormap(magnitude / peak[..., None, None])


def overlay(image: Tensor, reconstruction: Tensor, alpha: float = 0.6) -> Tensor:
    """The heatmap of ``reconstruction`` laid over ``image`` (Tensor[3, H, W] in [0, 1]).

    The heatmap's opacity follows the magnitude, so weak regions show the image.
    """
    magnitude = reconstruction.abs().sum(dim=-3, keepdim=True)
    peak = magnitude.flatten(-3).amax(dim=-1).clamp_min(torch.finfo(magnitude.dtype).tiny)
    weight = alpha * (magnitude / peak[..., None, None, None])
    return image * (1 - weight) + heatmap(reconstruction) * weight


def denormalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Undo the model's input normalisation: x (Tensor[..., 3, H, W]) -> [0, 1] for display."""
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x * std_t + mean_t).clamp(0, 1)


def to_png(picture: Tensor, compress_level: int = 6) -> bytes:
    """picture (Tensor[3, H, W] or [1, H, W] in [0, 1]) as PNG file bytes; ``compress_level``
    is zlib's (1: fastest, 6: Pillow's default)."""
    buffer = io.BytesIO()
    to_pil(picture).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def to_pil(picture: Tensor) -> Image.Image:
    """picture (Tensor[3, H, W] or [1, H, W] in [0, 1]) -> an RGB PIL image."""
    array = (picture.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    if array.shape[0] == 1:
        array = array.expand(3, -1, -1)
    return Image.fromarray(rearrange(array, "c h w -> h w c").numpy(), "RGB")


def labelled_grid(
    pictures: Tensor,
    labels: Sequence[str] | None = None,
    *,
    ncol: int | None = None,
    scale: int = 1,
    padding: int = 2,
    caption_height: int = 14,
) -> Image.Image:
    """Tile pictures (Tensor[K, 3, H, W] in [0, 1]) into one image, a caption above each.

    ncol: pictures per row (default: all in one row). scale: integer upscaling (nearest), so
    small inputs stay crisp.
    """
    count, _, height, width = pictures.shape
    ncol = ncol or count
    if scale > 1:
        pictures = pictures.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
        height, width = height * scale, width * scale
    grid = to_pil(make_grid(pictures.float().cpu(), nrow=ncol, padding=padding, pad_value=1.0))
    if not labels:
        return grid
    rows = -(-count // ncol)
    canvas = Image.new("RGB", (grid.width, grid.height + rows * caption_height), "white")
    font = ImageFont.load_default()
    draw = ImageDraw.Draw(canvas)
    for row in range(rows):
        top = row * (height + padding + caption_height)
        tile = grid.crop((0, row * (height + padding), grid.width, (row + 1) * (height + padding) + padding))
        canvas.paste(tile, (0, top + caption_height))
        for col in range(ncol):
            index = row * ncol + col
            if index < count and index < len(labels):
                x = col * (width + padding) + padding
                draw.text((x, top + 1), fit_text(draw, labels[index], width, font), fill="black", font=font)
    return canvas


def fit_text(draw: ImageDraw.ImageDraw, text: str, width: int, font: ImageFont.ImageFont) -> str:
    """``text`` cut at the end until it fits ``width`` pixels in ``font``."""
    while text and draw.textlength(text, font=font) > width:
        text = text[:-1]
    return text


# Line colours of charts: distinct hues, readable on white.
SERIES_COLOURS = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)


def line_chart(
    xs: Sequence[float],
    series: Tensor,
    *,
    title: str = "",
    xlabel: str = "",
    size: tuple[int, int] = (260, 190),
    ylim: tuple[float, float] | None = None,
) -> Image.Image:
    """A small line chart: series (Tensor[S, A]) against xs (A values), one colour per series
    (:data:`SERIES_COLOURS` in order), axes from 0 (or ``ylim``) with min/max tick labels."""
    width, height = size
    canvas = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    values = series.detach().double().cpu()
    x_lo, x_hi = float(min(xs)), float(max(xs))
    y_lo, y_hi = ylim if ylim is not None else (min(0.0, float(values.min())), float(values.max()))
    widest = max(draw.textlength(_tick(y), font=font) for y in (y_lo, y_hi))  # the tick labels fit left of the axis
    left, right, top, bottom = max(56, int(widest) + 8), 10, 18 if title else 8, 30 if xlabel else 18
    x_hi = x_hi if x_hi > x_lo else x_lo + 1
    y_hi = y_hi if y_hi > y_lo else y_lo + 1
    plot_w, plot_h = width - left - right, height - top - bottom

    def point(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x_lo) / (x_hi - x_lo) * plot_w, top + (1 - (y - y_lo) / (y_hi - y_lo)) * plot_h)

    draw.rectangle((left, top, left + plot_w, top + plot_h), outline=(160, 160, 160))
    for s, row in enumerate(values):
        colour = SERIES_COLOURS[s % len(SERIES_COLOURS)]
        draw.line([point(float(x), float(y)) for x, y in zip(xs, row, strict=True)], fill=colour, width=2)
    for label, y in ((_tick(y_hi), top), (_tick(y_lo), top + plot_h - 10)):
        draw.text((left - 4 - draw.textlength(label, font=font), y), label, fill="black", font=font)
    for label, x in ((_tick(x_lo), left), (_tick(x_hi), left + plot_w - draw.textlength(_tick(x_hi), font=font))):
        draw.text((x, top + plot_h + 3), label, fill="black", font=font)
    if xlabel:
        draw.text((left + (plot_w - draw.textlength(xlabel, font=font)) / 2, height - 13), xlabel, fill="black", font=font)
    if title:
        draw.text((left, 3), fit_text(draw, title, width - left, font), fill="black", font=font)
    return canvas


def _tick(value: float) -> str:
    return f"{value:.4g}"


def titled(picture: Image.Image, title: str) -> Image.Image:
    """``picture`` under a one-line ``title`` on white."""
    heading = Image.new("RGB", (picture.width, 16), "white")
    ImageDraw.Draw(heading).text((2, 2), title, fill="black", font=ImageFont.load_default())
    return stack_pictures([heading, picture], gap=0)


def stack_pictures(pictures: Sequence[Image.Image], *, horizontal: bool = False, gap: int = 8) -> Image.Image:
    """PIL pictures side by side (or one above the other), top/left aligned, on white."""
    lengths = [p.width if horizontal else p.height for p in pictures]
    depth = max(p.height if horizontal else p.width for p in pictures)
    total = sum(lengths) + gap * (len(pictures) - 1)
    canvas = Image.new("RGB", (total, depth) if horizontal else (depth, total), "white")
    offset = 0
    for p, length in zip(pictures, lengths, strict=True):
        canvas.paste(p, (offset, 0) if horizontal else (0, offset))
        offset += length + gap
    return canvas
