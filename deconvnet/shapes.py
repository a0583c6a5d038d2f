"""A procedurally generated image dataset of coloured shapes on cluttered backgrounds.

Each image holds one object of one of :data:`CLASSES` at a random position, scale and colour,
over a random background with distractor strokes and blobs. The object's mask comes with it,
so localisation can be measured. Every sample is a pure function of ``(seed, index)``.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image, ImageDraw
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms.functional import pil_to_tensor

__all__ = ["CLASSES", "HELD_OUT_SEED", "MEAN", "PARTS", "STD", "Sample", "ShapesDataset", "held_out_samples", "normalize",
           "part_box", "render"]

CLASSES = ("circle", "square", "triangle", "cross", "ring", "star")
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)
SIZE = 64
HELD_OUT_SEED = 3
"""The seed of pictures no training saw: training used seed 1, the recorded accuracy seed 2."""


@dataclass(frozen=True)
class Sample:
    """image (RGB), label (index into CLASSES), mask (L: 255 inside the object); centre (x, y)
    and radius of the object in pixels."""

    image: Image.Image
    label: int
    mask: Image.Image
    centre: tuple[float, float] = (0.0, 0.0)
    radius: float = 0.0


# The part each class has, for the correspondence analysis: where it is relative to the
# object's centre (in radii, x right, y down) and the side of a square box over it (in radii).
PARTS = {
    "triangle": ("apex", (0.0, -0.8), 0.6),  # the top vertex (at 1.15 radii); the box covers the tip
    "ring": ("hole", (0.0, 0.0), 0.7),  # the empty centre (the hole's radius is about 0.6)
    "cross": ("arm", (0.68, 0.0), 0.6),  # the end of the right arm
}


def part_box(sample: Sample) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a square box over the sample's part (see :data:`PARTS`),
    clipped to the image. KeyError for a class without a part."""
    _, (dx, dy), side = PARTS[CLASSES[sample.label]]
    cx, cy = sample.centre
    size = max(4, round(side * sample.radius))
    left = round(cx + dx * sample.radius - size / 2)
    top = round(cy + dy * sample.radius - size / 2)
    width, height = sample.image.size
    left, top = min(max(0, left), width - size), min(max(0, top), height - size)
    return top, left, size, size


def _colour(rng: random.Random) -> tuple[int, int, int]:
    return (rng.randrange(256), rng.randrange(256), rng.randrange(256))


def _luma(c: tuple[int, int, int]) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def _contrasting(rng: random.Random, background: tuple[int, int, int]) -> tuple[int, int, int]:
    while True:
        colour = _colour(rng)
        if abs(_luma(colour) - _luma(background)) > 60:
            return colour


def _polygon(cx: float, cy: float, r: float, points: int, turn: float, inner: float = 1.0):
    out = []
    for i in range(points * (2 if inner < 1 else 1)):
        radius = r if inner == 1 or i % 2 == 0 else r * inner
        angle = turn + math.pi * 2 * i / (points * (2 if inner < 1 else 1))
        out.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    return out


def _draw_shape(draw: ImageDraw.ImageDraw, label: int, cx: float, cy: float, r: float, fill) -> None:
    name = CLASSES[label]
    box = (cx - r, cy - r, cx + r, cy + r)
    if name == "circle":
        draw.ellipse(box, fill=fill)
    elif name == "square":
        draw.rectangle(box, fill=fill)
    elif name == "triangle":
        draw.polygon(_polygon(cx, cy, r * 1.15, 3, -math.pi / 2), fill=fill)
    elif name == "cross":
        arm = r * 0.36
        draw.rectangle((cx - r, cy - arm, cx + r, cy + arm), fill=fill)
        draw.rectangle((cx - arm, cy - r, cx + arm, cy + r), fill=fill)
    elif name == "ring":
        width = max(2, round(r * 0.4))
        draw.ellipse(box, outline=fill, width=width)
    else:  # star
        draw.polygon(_polygon(cx, cy, r * 1.15, 5, -math.pi / 2, inner=0.45), fill=fill)


def render(seed: int, index: int, size: int = SIZE) -> Sample:
    """The ``index``-th sample of the dataset with this ``seed``."""
    rng = random.Random(seed * 1_000_003 + index)
    background = _colour(rng)
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(3, 8)):  # clutter: strokes and small blobs
        x0, y0 = rng.uniform(0, size), rng.uniform(0, size)
        if rng.random() < 0.5:
            x1, y1 = x0 + rng.uniform(-size / 2, size / 2), y0 + rng.uniform(-size / 2, size / 2)
            draw.line((x0, y0, x1, y1), fill=_colour(rng), width=rng.randint(1, 2))
        else:
            r = rng.uniform(1, size / 16)
            draw.ellipse((x0 - r, y0 - r, x0 + r, y0 + r), fill=_colour(rng))
    label = rng.randrange(len(CLASSES))
    r = rng.uniform(size * 0.14, size * 0.3)
    cx, cy = rng.uniform(r + 1, size - r - 1), rng.uniform(r + 1, size - r - 1)
    colour = _contrasting(rng, background)
    _draw_shape(draw, label, cx, cy, r, colour)
    mask = Image.new("L", (size, size), 0)
    _draw_shape(ImageDraw.Draw(mask), label, cx, cy, r, 255)
    return Sample(image, label, mask, (cx, cy), r)


def normalize(image: Image.Image) -> Tensor:
    """RGB image -> Tensor[3, H, W] normalised with the dataset's MEAN and STD."""
    x = pil_to_tensor(image.convert("RGB")).float() / 255
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    return (x - mean) / std


class ShapesDataset(Dataset):
    """``length`` samples of seed ``seed`` as (Tensor[3, H, W] normalised, label)."""

    def __init__(self, seed: int, length: int, size: int = SIZE) -> None:
        self.seed, self.length, self.size = seed, length, size

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} is out of range for {self.length} samples")
        sample = render(self.seed, index, self.size)
        return normalize(sample.image), sample.label


def held_out_samples() -> dict[str, Callable[[], Image.Image]]:
    """One held-out picture of each class (seed :data:`HELD_OUT_SEED`), by name
    (``"shapes-circle"``, ...): the explorer's bundled samples for ShapesNet."""
    samples: dict[str, Callable[[], Image.Image]] = {}
    index = 0
    while len(samples) < len(CLASSES):
        sample = render(HELD_OUT_SEED, index)
        samples.setdefault(f"shapes-{CLASSES[sample.label]}", functools.partial(lambda s: s.image, sample))
        index += 1
    return dict(sorted(samples.items()))
