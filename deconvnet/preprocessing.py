"""How an RGB image becomes model input, stated so a user can read it and change it.

A :class:`Preprocessing` is a transform (RGB PIL image -> Tensor[3, H, W]) with the mean and std
that undo it for display. Most come from a :class:`Recipe`: resize, centre crop, scale to
[0, 1], normalise; the recipe is read from where the model comes from (a torchvision weights
enum's ``transforms()``, timm's pretrained config, a Hugging Face ``preprocessor_config.json``)
and can be overridden piece by piece (:meth:`Preprocessing.overridden`, the CLI's ``--size``,
``--resize``, ``--mean``, ``--std``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from PIL import Image
from torch import Tensor
from torchvision import transforms as T

from . import shapes
from .errors import InputError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Preprocessing", "Recipe"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = {"nearest": T.InterpolationMode.NEAREST, "bilinear": T.InterpolationMode.BILINEAR,
                  "bicubic": T.InterpolationMode.BICUBIC}
# Pillow's resample codes, as Hugging Face image processor configs store them
_PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


@dataclass(frozen=True)
class Recipe:
    """The usual evaluation transform, as numbers.

    size: the model's input (height, width), after the crop.
    resize: the shorter side is resized to this (an int), or the whole image to (height, width)
        (squashed, aspect ratio not kept); None: not resized.
    crop: centre-crop to ``size`` after resizing.
    mean, std: per channel, applied after scaling pixels to [0, 1].
    interpolation: "bilinear", "bicubic" or "nearest" (antialiased, as Pillow resizes).
    source: where these numbers come from, for the user to read.
    """

    size: tuple[int, int]
    resize: int | tuple[int, int] | None
    crop: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    source: str = "ImageNet defaults"

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise InputError(f"interpolation {self.interpolation!r} is not one of {', '.join(INTERPOLATIONS)}")
        if min(self.size) < 1 or (self.resize is not None and min(_pair(self.resize)) < 1):
            raise InputError(f"sizes must be at least 1 pixel, got size {self.size}, resize {self.resize}")
        if len(self.mean) != len(self.std) or any(s <= 0 for s in self.std):
            raise InputError(f"mean and std need one value per channel and std > 0, got {self.mean}, {self.std}")

    def transform(self) -> Callable[[Image.Image], Tensor]:
        steps: list[Callable] = []
        if self.resize is not None:
            steps.append(T.Resize(self.resize, interpolation=INTERPOLATIONS[self.interpolation], antialias=True))
        if self.crop:
            steps.append(T.CenterCrop(self.size))
        return T.Compose([*steps, T.ToTensor(), T.Normalize(self.mean, self.std)])

    def __str__(self) -> str:
        h, w = self.size
        if self.resize is None:
            steps = []
        elif isinstance(self.resize, int):
            steps = [f"resize the shorter side to {self.resize} ({self.interpolation})"]
        else:
            steps = [f"resize to {self.resize[0]}x{self.resize[1]} ({self.interpolation}, aspect not kept)"]
        if self.crop:
            steps.append(f"centre-crop {h}x{w}")
        steps.append(f"scale to [0, 1], normalise with mean {_numbers(self.mean)} std {_numbers(self.std)}")
        return ", ".join(steps) + f" (from {self.source})"


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _numbers(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


@dataclass(frozen=True)
class Preprocessing:
    """transform: RGB PIL image -> Tensor[3, H, W]; mean/std: to undo it for display.

    recipe: the numbers behind ``transform`` when it is the usual resize-crop-normalise (what
    :meth:`overridden` changes); None for a transform of your own.
    """

    transform: Callable[[Image.Image], Tensor]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    recipe: Recipe | None = None
    description: str = "a transform of your own"

    def __str__(self) -> str:
        return str(self.recipe) if self.recipe is not None else self.description

    @property
    def size(self) -> tuple[int, int] | None:
        """The model input's (height, width), when the recipe fixes it."""
        return self.recipe.size if self.recipe is not None and (self.recipe.crop or not isinstance(
            self.recipe.resize, int)) else None

    @staticmethod
    def from_recipe(recipe: Recipe) -> Preprocessing:
        return Preprocessing(recipe.transform(), tuple(recipe.mean), tuple(recipe.std), recipe)

    @staticmethod
    def imagenet(size: int = 224, source: str = "ImageNet defaults") -> Preprocessing:
        """Resize the short side to ``size * 8 / 7``, centre-crop ``size``, ImageNet mean/std."""
        return Preprocessing.from_recipe(Recipe((size, size), round(size * 8 / 7), True, IMAGENET_MEAN,
                                                IMAGENET_STD, "bilinear", source))

    @staticmethod
    def from_weights(weights: object) -> Preprocessing:
        """A torchvision weights enum's own ``transforms()``, as a recipe (no download: the
        numbers are in the enum)."""
        transform = weights.transforms()  # type: ignore[attr-defined]
        crop, resize = getattr(transform, "crop_size", None), getattr(transform, "resize_size", None)
        mode = getattr(transform, "interpolation", T.InterpolationMode.BILINEAR)
        names = {v: k for k, v in INTERPOLATIONS.items()}
        if not crop or not resize or mode not in names or len(resize) != 1:
            mean = tuple(getattr(transform, "mean", IMAGENET_MEAN))
            std = tuple(getattr(transform, "std", IMAGENET_STD))
            return Preprocessing(transform, mean, std, None, f"{weights}.transforms()")
        return Preprocessing.from_recipe(Recipe(
            _pair(crop[0] if len(crop) == 1 else crop), int(resize[0]), True, tuple(transform.mean),
            tuple(transform.std), names[mode], f"torchvision {type(weights).__name__}.{weights.name}",  # type: ignore[attr-defined]
        ))

    @staticmethod
    def from_timm(config: Mapping[str, Any], source: str) -> Preprocessing:
        """timm's ``resolve_data_config`` output, as timm's own evaluation transform does it."""
        h, w = (int(v) for v in config["input_size"][-2:])
        pct = float(config.get("crop_pct") or 0.875)
        mode = config.get("crop_mode", "center")
        interpolation = config.get("interpolation", "bilinear")
        interpolation = interpolation if interpolation in INTERPOLATIONS else "bilinear"
        scaled = (math.floor(h / pct), math.floor(w / pct))
        mean, std = tuple(config["mean"]), tuple(config["std"])
        if mode == "squash":
            return Preprocessing.from_recipe(Recipe((h, w), scaled, True, mean, std, interpolation, source))
        if mode == "center" and h == w:
            return Preprocessing.from_recipe(Recipe((h, w), scaled[0], True, mean, std, interpolation, source))
        from timm.data import create_transform

        return Preprocessing(create_transform(**config), mean, std, None,
                             f"timm's evaluation transform for {source} (crop mode {mode}, input {h}x{w})")

    @staticmethod
    def from_huggingface(config: Mapping[str, Any], source: str) -> Preprocessing:
        """A Hugging Face ``preprocessor_config.json``: its resize, centre crop and mean/std."""
        size, crop, pct = config.get("size") or {}, config.get("crop_size"), config.get("crop_pct")
        interpolation = _PIL_RESAMPLE.get(config.get("resample", 2), "bilinear")
        if isinstance(size, int):
            size = {"shortest_edge": size}
        resize: int | tuple[int, int] | None = None
        final: tuple[int, int] | None = None
        if config.get("do_resize", True):
            if "height" in size:
                resize = final = (int(size["height"]), int(size["width"]))
            elif "shortest_edge" in size:
                edge = int(size["shortest_edge"])
                resize = round(edge / pct) if pct else edge
                final = (edge, edge)
                if crop is None and pct:
                    crop = {"height": edge, "width": edge}
        if isinstance(crop, int):
            crop = {"height": crop, "width": crop}
        cropping = crop is not None and config.get("do_center_crop", True)
        if cropping:
            final = (int(crop["height"]), int(crop["width"]))
        mean = tuple(config.get("image_mean") or IMAGENET_MEAN)
        std = tuple(config.get("image_std") or IMAGENET_STD)
        if not config.get("do_normalize", True):
            mean, std = (0.0,) * 3, (1.0,) * 3
        if final is None:
            raise InputError(f"{source} neither resizes nor crops to a fixed size; give --size")
        return Preprocessing.from_recipe(Recipe(final, resize, cropping, mean, std, interpolation, source))

    @staticmethod
    def efficientnet_lite(size: int = 224) -> Preprocessing:
        """EfficientNet-Lite's: short side to ``size * 8 / 7``, centre crop, RGB in [0, 255]
        mapped by ``(x - 127) / 128`` (that is, mean 127/255 and std 128/255 after scaling)."""
        return Preprocessing.from_recipe(Recipe((size, size), round(size * 8 / 7), True, (127 / 255,) * 3,
                                                (128 / 255,) * 3, "bilinear", "EfficientNet-Lite's recipe"))

    @staticmethod
    def shapes() -> Preprocessing:
        """The bundled shapes model's: 64x64, the dataset's mean/std."""
        side = shapes.SIZE
        return Preprocessing.from_recipe(Recipe((side, side), (side, side), False, tuple(shapes.MEAN),
                                                tuple(shapes.STD), "bilinear", "the bundled ShapesNet"))

    def overridden(self, *, size: Sequence[int] | None = None, resize: int | Sequence[int] | None = None,
                   mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> Preprocessing:
        """The same recipe with some numbers replaced.

        size: the model input, one side (square) or (height, width). Without ``resize``, the
            resize keeps the recipe's ratio of resize to crop (``--size 320`` on a 256 -> 224
            recipe resizes to 366 then crops 320).
        resize: the shorter side before the crop, or (height, width) to squash to.
        """
        if size is None and resize is None and mean is None and std is None:
            return self
        recipe = self.recipe
        if recipe is None:
            raise InputError(f"this model's preprocessing is {self.description}, not a resize-crop-normalise "
                             "recipe: --size, --resize, --mean and --std cannot change it")
        changes: dict[str, Any] = {"source": f"{recipe.source}, changed by hand"}
        if size is not None:
            new = _pair(size[0] if len(size) == 1 else size) if not isinstance(size, int) else _pair(size)
            changes["size"] = new
            if resize is None and recipe.resize is not None:
                if isinstance(recipe.resize, int):
                    changes["resize"] = round(recipe.resize * min(new) / min(recipe.size))
                else:
                    ratio = (recipe.resize[0] / recipe.size[0], recipe.resize[1] / recipe.size[1])
                    changes["resize"] = (round(new[0] * ratio[0]), round(new[1] * ratio[1]))
        if resize is not None:
            changes["resize"] = resize if isinstance(resize, int) else (
                int(resize[0]) if len(resize) == 1 else _pair(resize))
            changes["crop"] = True
        if mean is not None:
            changes["mean"] = tuple(float(v) for v in mean)
        if std is not None:
            changes["std"] = tuple(float(v) for v in std)
        if "size" in changes and not recipe.crop and not isinstance(changes.get("resize", recipe.resize), int):
            changes["resize"] = changes["size"]  # a squashing recipe squashes to the new size
        return Preprocessing.from_recipe(replace(recipe, **changes))
