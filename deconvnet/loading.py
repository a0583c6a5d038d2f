"""Models and images from the outside world: what a user names, the checkpoint they trained,
their class names and their photos.

    loaded = load_model("resnet18", checkpoint="ft5.pt", labels="labels.txt")  # head size from the file
    loaded = load_model("timm:convnext_tiny", checkpoint="best.safetensors")
    x = load_image("IMG_0042.jpg", loaded.preprocessing)                       # upright, 16-bit scaled

A model is named the same way in Python, on the command line and in ``deconvnet serve``
(:func:`load_model`; :data:`MODEL_HELP` lists the forms). Checkpoints are read by
:mod:`deconvnet.checkpoints`, images by :mod:`deconvnet.decoding`, preprocessing is a
:class:`deconvnet.preprocessing.Preprocessing`.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import inspect
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import Dataset

from . import shapes
from .capture import AXES
from .checkpoints import Checkpoint, fit_state, head_size, load_state, read_checkpoint
from .decoding import read_image
from .errors import InputError
from .preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageFolder",
    "LoadedModel",
    "MODEL_HELP",
    "PHOTOS",
    "Preprocessing",
    "image_files",
    "tensor_files",
    "TensorFolder",
    "load_checkpoint",
    "load_image",
    "load_labels",
    "load_model",
    "load_tensor",
    "photo",
]

MODEL_HELP = (
    "'shapes' (bundled, trained), 'efficientnet-lite0' (bundled ImageNet weights, the real extra), "
    "a torchvision name (resnet18; --weights DEFAULT downloads), timm:NAME (timm.create_model; "
    "--weights DEFAULT loads a pretrained tag only from the local Hugging Face cache), "
    "a save_pretrained folder or a Hugging Face hub id already in the local cache (hf:ORG/NAME), "
    "or module:factory (with keyword arguments: monai.networks.nets:DenseNet121(spatial_dims=3, in_channels=1, "
    "out_channels=2))"
)
# scikit-image's photographs, inside its wheel (the ``real`` extra): name -> how to take it from skimage.data
PHOTOS: dict[str, Callable[[Any], Any]] = {
    "coffee": lambda data: data.coffee(),
    "chelsea": lambda data: data.chelsea(),
    "motorcycle": lambda data: data.stereo_motorcycle()[0],
    "rocket": lambda data: data.rocket(),
}
# torchvision models whose pretrained build drops auxiliary heads and turns transform_input on
_AUXILIARY = {"googlenet": ("aux1.", "aux2."), "inception_v3": ("AuxLogits.",)}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
_DEFAULT_LABEL = re.compile(r"LABEL_\d+")  # what transformers names classes nobody named


@dataclass(frozen=True)
class LoadedModel:
    """A model in eval mode with how to feed it and what its classes are called.

    categories: class names, one per output, when known (``--labels``, the checkpoint, the
        model's own config or pretrained weights); None: classes show as "class 3".
    source: what was built, e.g. "torchvision resnet18 (5 classes)"; labels_from: where the
        names come from; checkpoint: what the checkpoint file held and how it was fitted.
    """

    model: nn.Module
    preprocessing: Preprocessing
    categories: Sequence[str] | None
    source: str = ""
    labels_from: str | None = None
    checkpoint: str | None = None

    def label(self, index: int) -> str:
        """Class ``index``'s name, or "class 3" when it has none."""
        names = self.categories
        return str(names[index]) if names is not None and 0 <= index < len(names) else f"class {index}"


@dataclass
class _Source:
    """Where a model comes from: how to build it (with a head of ``n`` classes, None: as it
    comes), how it wants its images, and what its own classes are called."""

    name: str
    build: Callable[[int | None, frozenset[str]], nn.Module]  # (classes, the checkpoint's keys) -> model
    preprocessing: Callable[[nn.Module], Preprocessing]
    categories: Callable[[nn.Module], Sequence[str] | None] = lambda model: None
    trained: bool = False  # build(None) loads trained weights
    reference: Callable[[], nn.Module] | None = None  # the architecture, cheaply, to compare a checkpoint with
    notes: list[str] = field(default_factory=list)
    names_from: str = "the pretrained weights"  # where categories() takes its names, for the user
    names_with_checkpoint: bool = False  # the names hold for a checkpoint too (a config's, not the weights')


def _on_meta(build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    """The architecture on the meta device (shapes, no memory, no initialisation cost); built on
    the CPU where a model's code refuses meta tensors."""
    def reference() -> nn.Module:
        try:
            with torch.device("meta"):
                return build()
        except Exception:  # some constructors compute on their weights; the CPU always works
            return build()
    return reference


# --- the sources ------------------------------------------------------------------------------


def _bundled(spec: str, checkpoint: bool) -> _Source:
    from .models import EfficientNetLite0, ShapesNet, efficientnet_lite0, imagenet_categories, shapes_net

    if spec == "shapes":
        return _Source("the bundled ShapesNet", lambda n, keys: shapes_net() if n is None and not checkpoint else ShapesNet(
            n or len(shapes.CLASSES)), lambda model: Preprocessing.shapes(), lambda model: shapes.CLASSES,
            trained=True, reference=_on_meta(ShapesNet), names_from="the bundled model")
    return _Source("the bundled EfficientNet-Lite0 (ImageNet weights)",
                   lambda n, keys: efficientnet_lite0() if n is None and not checkpoint else EfficientNetLite0(n or 1000),
                   lambda model: Preprocessing.efficientnet_lite(), lambda model: imagenet_categories(),
                   trained=True, reference=_on_meta(EfficientNetLite0), names_from="the bundled model")


def _torchvision(name: str, weights: str | None, checkpoint: bool) -> _Source:
    import torchvision

    try:
        builder = torchvision.models.get_model_builder(name)
    except ValueError as error:
        raise InputError(_unknown_model(name)) from error
    try:
        enum = torchvision.models.get_model_weights(name)
    except ValueError:
        enum = None
    chosen = None
    if weights is not None:
        valid = ["DEFAULT", *(w.name for w in enum)] if enum is not None else []
        if weights not in valid:
            raise InputError(f"unknown weights {weights!r} for {name}; choose one of {', '.join(valid) or 'none'}")
        chosen = enum.DEFAULT if weights == "DEFAULT" else enum[weights]  # type: ignore[union-attr]
    # The recipe comes from the weights asked for, else the default weights' (numbers in the enum: no download).
    recipe_from = chosen if chosen is not None else (enum.DEFAULT if enum is not None else None)

    def build(n: int | None, keys: frozenset[str]) -> nn.Module:
        if n is not None or checkpoint or chosen is None:
            kwargs: dict[str, Any] = {"num_classes": n} if n is not None else {}
            if name in _AUXILIARY and keys and not any(k.startswith(_AUXILIARY[name]) for k in keys):
                # Fine-tuned from torchvision's pretrained build: no auxiliary heads, and its input
                # transform on (it is a flag, not a weight: the checkpoint cannot say it).
                kwargs.update(aux_logits=False, transform_input=True, init_weights=False)
                notes.append("aux_logits=False, transform_input=True, as torchvision's pretrained weights build it")
            return builder(weights=None, **kwargs)
        try:
            return builder(weights=chosen)
        except Exception as error:  # downloads fail in many ways; all mean the same here
            raise InputError(f"could not load {name} weights {chosen.name}: {error}") from error

    def preprocessing(model: nn.Module) -> Preprocessing:
        return Preprocessing.from_weights(recipe_from) if recipe_from is not None else Preprocessing.imagenet()

    trained = chosen is not None and not checkpoint
    notes: list[str] = []
    label = f"torchvision {name}" + (f" ({type(chosen).__name__}.{chosen.name})" if trained else "")
    return _Source(label, build, preprocessing,
                   lambda model: chosen.meta.get("categories") if trained else None,  # type: ignore[union-attr]
                   trained=trained, reference=_on_meta(lambda: builder(weights=None)), notes=notes)


def _timm(name: str, weights: str | None, checkpoint: bool) -> _Source:
    try:
        import timm
        from timm.data import ImageNetInfo, infer_imagenet_subset, resolve_data_config
    except ImportError as error:
        raise InputError(f"timm:{name} needs timm: pip install timm") from error
    architecture = name.split(".")[0]
    if not timm.is_model(architecture):
        close = difflib.get_close_matches(architecture, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join('timm:' + c for c in close)}?" if close else ""
        raise InputError(f"timm has no model {architecture!r}{hint}")
    pretrained = weights is not None and not checkpoint
    if weights not in (None, "DEFAULT"):
        raise InputError(f"--weights for a timm model is DEFAULT (the pretrained tag in timm:{name}), got {weights!r}")
    overlay = {"file": _timm_cached_file(name)} if pretrained else None

    def build(n: int | None, keys: frozenset[str]) -> nn.Module:
        kwargs: dict[str, Any] = {"num_classes": n} if n is not None else {}
        try:
            return timm.create_model(name, pretrained=pretrained, pretrained_cfg_overlay=overlay, **kwargs)
        except RuntimeError as error:
            raise InputError(f"timm could not build {name}: {str(error).splitlines()[0]}") from error

    def preprocessing(model: nn.Module) -> Preprocessing:
        return Preprocessing.from_timm(resolve_data_config({}, model=model), f"timm {name}'s pretrained config")

    def categories(model: nn.Module) -> Sequence[str] | None:
        subset = infer_imagenet_subset(model) if pretrained else None
        return [d.split(",")[0] for d in ImageNetInfo(subset).label_descriptions()] if subset else None

    return _Source(f"timm {name}" + (" (pretrained, from the local cache)" if pretrained else ""), build,
                   preprocessing, categories, trained=pretrained,
                   reference=_on_meta(lambda: timm.create_model(name, pretrained=False)))


def _timm_cached_file(name: str) -> str:
    """The pretrained weights of timm model ``name`` from the local Hugging Face cache; never a
    download."""
    import timm
    from huggingface_hub import try_to_load_from_cache

    config = timm.models.get_pretrained_cfg(name)
    hub = config.hf_hub_id if config is not None else None
    if not hub:
        raise InputError(f"timm:{name} has no pretrained weights on the Hugging Face hub; give --checkpoint")
    for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        found = try_to_load_from_cache(hub, filename)
        if isinstance(found, str):
            return found
    raise InputError(
        f"timm:{name}'s pretrained weights ({hub}) are not in the local Hugging Face cache, and nothing is "
        f"downloaded here: on a machine with internet run python -c \"import timm; timm.create_model('{name}', "
        "pretrained=True)\" once, or give --checkpoint"
    )


def _huggingface(folder: Path, name: str) -> _Source:
    """A Hugging Face image classifier or semantic segmentation model (as its config's
    ``architectures`` says) in a ``save_pretrained`` folder (or the local hub cache)."""
    if not (folder / "config.json").is_file():
        raise InputError(f"{folder} is a folder without config.json: not a transformers model (save_pretrained) folder")
    try:
        import transformers
    except ImportError as error:
        raise InputError(f'{name} is a transformers model: pip install "deconvnet[huggingface]"') from error
    try:
        architectures = json.loads((folder / "config.json").read_text()).get("architectures") or []
    except ValueError as error:
        raise InputError(f"cannot read {folder / 'config.json'}: {error}") from error
    segmentation = any(str(a).endswith("ForSemanticSegmentation") for a in architectures)
    auto, kind = ((transformers.AutoModelForSemanticSegmentation, "semantic segmentation model") if segmentation
                  else (transformers.AutoModelForImageClassification, "image classifier"))

    def build(n: int | None, keys: frozenset[str]) -> nn.Module:
        kwargs: dict[str, Any] = {"num_labels": n, "ignore_mismatched_sizes": True} if n is not None else {}
        try:
            return auto.from_pretrained(folder, local_files_only=True, **kwargs)
        except Exception as error:  # unknown architectures, missing weights: a line for the user
            raise InputError(f"cannot load {name} as a transformers {kind}: {str(error).splitlines()[0]}") from error

    def preprocessing(model: nn.Module) -> Preprocessing:
        path = folder / "preprocessor_config.json"
        if not path.is_file():
            return Preprocessing.imagenet(source=f"ImageNet defaults ({name} has no preprocessor_config.json)")
        try:
            config = json.loads(path.read_text())
        except ValueError as error:
            raise InputError(f"cannot read {path}: {error}") from error
        return Preprocessing.from_huggingface(config, f"{name}'s preprocessor_config.json")

    def categories(model: nn.Module) -> Sequence[str] | None:
        labels = getattr(model.config, "id2label", None) or {}
        names = [str(labels.get(i, labels.get(str(i), f"class {i}"))) for i in range(len(labels))]
        return names if names and not all(_DEFAULT_LABEL.fullmatch(n) for n in names) else None

    return _Source(f"Hugging Face {name}", build, preprocessing, categories, trained=True,
                   names_from="the model's config", names_with_checkpoint=True)


def _hub_folder(repo: str) -> Path:
    """A Hugging Face hub model's folder in the local cache; never a download."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as error:
        raise InputError(f'{repo} is a Hugging Face hub id: pip install "deconvnet[huggingface]"') from error
    try:
        return Path(snapshot_download(repo, local_files_only=True))
    except (LocalEntryNotFoundError, ValueError, OSError) as error:
        raise InputError(
            f"{repo} is not a folder here, nor a Hugging Face model in the local cache, and nothing is downloaded: "
            f"on a machine with internet run huggingface-cli download {repo} once, or give its save_pretrained folder"
        ) from error


def _factory_arguments(spec: str) -> tuple[str, dict[str, Any]]:
    """``module:factory(key=value, ...)`` -> (``module:factory``, its keyword arguments), the values
    Python literals (numbers, strings, tuples, lists, booleans, None) read without running code."""
    if not spec.endswith(")") or "(" not in spec:
        return spec, {}
    name, _, rest = spec.partition("(")
    try:
        call = ast.parse(f"f({rest}", mode="eval").body
        if not isinstance(call, ast.Call) or call.args:
            raise ValueError("give arguments by keyword")
        return name, {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords if kw.arg is not None}
    except (SyntaxError, ValueError) as error:
        raise InputError(f"cannot read the arguments of {spec!r}: write module:factory(key=value, ...) with "
                         f"Python literals ({error})") from error


def _factory(given: str) -> _Source:
    spec, arguments = _factory_arguments(given)
    module_name, _, factory_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise InputError(f"cannot import {module_name!r} for model {spec!r}: {error}") from error
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise InputError(f"{module_name} has no callable {factory_name!r} for model {spec!r}")
    try:
        takes_classes = "num_classes" in inspect.signature(factory).parameters or any(
            p.kind is p.VAR_KEYWORD for p in inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):
        takes_classes = False

    def build(n: int | None, keys: frozenset[str] = frozenset()) -> nn.Module:
        if n is not None and not takes_classes:
            raise InputError(f"a head of {n} classes is needed (the checkpoint's, or num_classes), but {spec}() takes "
                             "no num_classes; give the factory a num_classes argument, or make it build that head")
        try:
            model = factory(**arguments, **({"num_classes": n} if n is not None else {}))
        except Exception as error:  # the user's code: any failure is reported in one line
            raise InputError(f"{spec}() failed: {type(error).__name__}: {error}") from error
        if not isinstance(model, nn.Module):
            raise InputError(f"{spec}() returned {type(model).__name__}, not an nn.Module")
        return model

    return _Source(given if arguments else f"{spec}()", build, lambda model: Preprocessing.imagenet(
        source=f"ImageNet defaults: {spec} names no preprocessing; set --input-size, --mean, --std to your training's"),
        reference=lambda: build(None))


def _unknown_model(name: str) -> str:
    import torchvision

    close = difflib.get_close_matches(name, torchvision.models.list_models(), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    try:
        import timm

        if timm.is_model(name.split(".")[0]):
            hint += f" timm has {name}: --model timm:{name}."
    except ImportError:
        pass
    return f"unknown model {name!r}: not a bundled model, a torchvision name, timm:NAME, a folder, a hub id or " \
           f"module:factory.{hint}"


def _source(spec: str, weights: str | None, checkpoint: bool) -> _Source:
    if spec in ("shapes", "efficientnet-lite0"):
        if weights is not None:
            raise InputError(f"--weights is for torchvision and timm models; {spec} ships its own")
        return _bundled(spec, checkpoint)
    if spec.startswith("timm:"):
        return _timm(spec[5:], weights, checkpoint)
    if spec.startswith("hf:"):
        return _huggingface(_hub_folder(spec[3:]), spec[3:])
    path = Path(spec)
    if (path / "config.json").is_file() or (path.is_dir() and ("/" in spec or "\\" in spec)):
        # a save_pretrained folder (a bare name like "vgg16" stays a model name even if such a folder exists)
        return _huggingface(path, spec)
    if ":" in spec:
        return _factory(spec)
    if spec.count("/") == 1 and not path.exists():
        return _huggingface(_hub_folder(spec), spec)
    return _torchvision(spec, weights, checkpoint)


# --- class names ------------------------------------------------------------------------------


def load_labels(path: Path | str) -> list[str] | dict[int, str]:
    """Class names from a file: one per line (text), a JSON list, or a JSON ``{index: name}``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as error:
        raise InputError(f"labels file {path} does not exist") from error
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read labels file {path}: {error}") from error
    if path.suffix.lower() == ".json" or text.lstrip()[:1] in ("[", "{"):
        try:
            data = json.loads(text)
        except ValueError as error:
            raise InputError(f"labels file {path} is not valid JSON: {error}") from error
        if isinstance(data, list) and data and all(isinstance(v, str) for v in data):
            return data
        if isinstance(data, dict) and data:
            try:
                return {int(k): str(v) for k, v in data.items()}
            except ValueError as error:
                raise InputError(f"labels file {path} maps keys that are not class indices: {error}") from error
        raise InputError(f"labels file {path} holds JSON that is neither a list of names nor {{index: name}}")
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    empty = [i + 1 for i, line in enumerate(lines) if not line.strip()]
    if not lines:
        raise InputError(f"labels file {path} is empty; write one class name per line")
    if empty:
        raise InputError(f"labels file {path} has an empty line {empty[0]}: one class name per line, in output order")
    return [line.strip() for line in lines]


def _named(labels: list[str] | dict[int, str], classes: int | None, where: str) -> list[str]:
    """Names as one per output, checked against the model's ``classes`` outputs."""
    if isinstance(labels, dict):
        top = max(labels)
        if min(labels) < 0 or (classes is not None and top >= classes):
            raise InputError(f"{where} names class {top if top >= 0 else min(labels)}, but the model has "
                             f"{classes} classes (0..{(classes or 1) - 1})")
        count = classes if classes is not None else top + 1
        return [labels.get(i, f"class {i}") for i in range(count)]
    if classes is not None and len(labels) != classes:
        raise InputError(f"{where} has {len(labels)} names, but the model has {classes} classes")
    return list(labels)


PROBE_SIDES = {1: 1024, 2: 224, 3: 64}
"""The side of an input of zeros that probes a model of each number of spatial dims."""


def _classes(model: nn.Module, preprocessing: Preprocessing) -> int | None:
    """The number of outputs, from one forward pass of zeros shaped as the model's first conv
    takes them (an image through the preprocessing's size, a signal, a volume); None when the
    output is not [N, K] or the model refuses the probe."""
    first = next((m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))), None)
    dims = first.weight.dim() - 2 if first is not None else 2
    channels = first.in_channels if first is not None else 3
    size = (preprocessing.size or (PROBE_SIDES[2],) * 2) if dims == 2 else (PROBE_SIDES[dims],) * dims
    parameter = next(model.parameters(), None)
    x = torch.zeros(1, channels, *size, dtype=parameter.dtype if parameter is not None else torch.float32,
                    device=parameter.device if parameter is not None else "cpu")
    try:
        with torch.no_grad():
            out = model(x)
    except Exception:  # the model may need another input; then the names are not checked here
        return None
    out = getattr(out, "logits", out)
    return int(out.shape[1]) if isinstance(out, Tensor) and out.dim() == 2 else None


# --- the public loaders -----------------------------------------------------------------------


def load_model(spec: str, *, weights: str | None = None, checkpoint: Path | str | None = None,
               num_classes: int | None = None, labels: Path | str | Sequence[str] | Mapping[int, str] | None = None,
               ) -> LoadedModel:
    """A model by name in eval mode, with its preprocessing and class names.

    spec: see :data:`MODEL_HELP`: ``"shapes"``, ``"efficientnet-lite0"``, a torchvision name,
        ``"timm:NAME"``, a ``save_pretrained`` folder, a hub id in the local cache
        (``"hf:ORG/NAME"`` or ``"ORG/NAME"``), or ``"module:factory"``.
    weights: torchvision: a weights enum member name or ``"DEFAULT"`` (downloads); timm:
        ``"DEFAULT"``, the pretrained weights of the tag in ``spec``, from the local cache only.
    checkpoint: a state dict file in any usual form (:mod:`deconvnet.checkpoints`). The
        architecture is built with the checkpoint's number of classes; with a checkpoint the
        pretrained weights are not loaded (nor downloaded), but their preprocessing is used.
    num_classes: the head's size, where the checkpoint does not tell (or to check it).
    labels: class names, a file (:func:`load_labels`), a list, or ``{index: name}``. Otherwise
        the checkpoint's own, the model's config's, the pretrained weights', else none.
    """
    if num_classes is not None and num_classes < 1:
        raise InputError(f"num_classes must be at least 1, got {num_classes}")
    source = _source(spec, weights, checkpoint is not None)
    saved = read_checkpoint(checkpoint) if checkpoint is not None else None
    if num_classes is not None and saved is None and source.trained:
        raise InputError(f"num_classes={num_classes} without a checkpoint would put an untrained head on "
                         f"{source.name}; give the fine-tuned checkpoint too")
    size = num_classes
    fitted = ""
    keys = frozenset(saved.state) if saved is not None else frozenset()
    if saved is not None and source.reference is not None:
        expected = source.reference().state_dict()
        state, _ = fit_state(saved.state, expected)
        keys = frozenset(state)
        found = head_size(state, expected)
        if found is not None and num_classes is not None and found != num_classes:
            raise InputError(f"checkpoint {saved.path}'s head has {found} classes, but num_classes is {num_classes}")
        size = found if found is not None else num_classes
    model = source.build(size, keys)
    if saved is not None:
        fitted = f"{saved.path.name}: {saved.where}, {load_state(model, saved, source.name)}"
    model.eval()
    preprocessing = source.preprocessing(model)
    chosen, where, given = _choose_labels(labels, saved, source, model)
    if given:  # names from the user or the checkpoint: checked against the model's outputs
        classes = size if size is not None else _classes(model, preprocessing)
        chosen = _named(chosen, classes, cast(str, where))
    described = source.name + (f" ({size} classes)" if size is not None else "") + \
        "".join(f"; {note}" for note in source.notes)
    return LoadedModel(model, preprocessing, chosen, described, where if chosen else None, fitted or None)


def _choose_labels(labels: Any, saved: Checkpoint | None, source: _Source,
                   model: nn.Module) -> tuple[Any, str | None, bool]:
    """(names, where they come from, whether they were given: by the user or the checkpoint)."""
    if labels is not None:
        if isinstance(labels, (str, Path)):
            return load_labels(labels), f"{Path(labels).name}", True
        return (dict(labels) if isinstance(labels, Mapping) else list(labels)), "the labels given", True
    if saved is not None and saved.labels is not None:
        return saved.labels, f"the checkpoint {saved.path.name}", True
    if saved is not None and not source.names_with_checkpoint:
        return None, None, False  # a fine-tuned head: the pretrained names would be wrong
    names = source.categories(model)
    return (list(names), source.names_from, False) if names is not None else (None, None, False)


def load_checkpoint(model: nn.Module, path: Path | str, spec: str | None = None) -> Checkpoint:
    """Load a checkpoint file (any form :func:`deconvnet.checkpoints.read_checkpoint` reads,
    wrapper prefixes taken off) into ``model``; returns what it held. InputError when it is
    missing or unreadable; CheckpointMismatchError, a few lines, when it does not fit."""
    saved = read_checkpoint(path)
    load_state(model, saved, spec or type(model).__name__)
    return saved


def load_image(path: Path | str, preprocessing: Preprocessing) -> Tensor:
    """An image file as model input, Tensor[3, H, W], decoded as viewers show it
    (:mod:`deconvnet.decoding`: EXIF orientation, 16-bit scaled, alpha on white, first frame);
    raises InputError if it cannot be read. :func:`deconvnet.decoding.read_image` also returns
    the decoder's notes."""
    return preprocessing.transform(read_image(path).image)


TENSOR_SUFFIXES = (".pt", ".pth", ".npy")


def load_tensor(path: Path | str, spatial_dims: int) -> Tensor:
    """A signal, volume or clip from a tensor file, as a batch: Tensor[N, C, *spatial].

    ``.pt``/``.pth``: a tensor saved with ``torch.save`` (read with ``weights_only=True``);
    ``.npy``: a NumPy array (read without pickles). It holds one input, Tensor[C, *spatial], or a
    batch, Tensor[N, C, *spatial]; ``spatial_dims`` is the model's (1 for signals, 3 for volumes
    and clips). Values are taken as the model's input: no preprocessing is applied.
    """
    value = _read_tensor(Path(path), spatial_dims, mapped=False)
    return value.float() if not value.is_floating_point() else value


def _read_tensor(path: Path, spatial_dims: int, mapped: bool) -> Tensor:
    """:func:`load_tensor`'s batch as stored; ``mapped``: memory-mapped, so that reading one
    input of a large file, or only its shape, does not read the rest."""
    if path.suffix.lower() not in TENSOR_SUFFIXES:
        raise InputError(f"{path.name}: a signal or volume model reads tensor files ({', '.join(TENSOR_SUFFIXES)}), "
                         "not images; save it with torch.save or numpy.save")
    if not path.is_file():
        raise InputError(f"{path} does not exist")
    try:
        if path.suffix.lower() == ".npy":
            import numpy as np

            # copy-on-write mapping: writable as torch wants, and nothing is read until used
            value = torch.from_numpy(np.load(path, allow_pickle=False, mmap_mode="c" if mapped else None))
        else:
            value = torch.load(path, map_location="cpu", weights_only=True, mmap=mapped)
    except Exception as error:  # corrupt files, pickles: each fails its own way
        raise InputError(f"cannot read {path} as a tensor: {str(error).splitlines()[0]}") from error
    if not isinstance(value, Tensor):
        raise InputError(f"{path} holds a {type(value).__name__}, not one tensor")
    form = f"[{AXES[spatial_dims]}]"
    if value.dim() == spatial_dims + 1:
        value = value.unsqueeze(0)
    if value.dim() != spatial_dims + 2:
        raise InputError(f"{path} holds a tensor of shape {tuple(value.shape)}; this model takes {form} per input "
                         f"(or a batch [N, {form[1:]})")
    return value


def tensor_files(folder: Path) -> list[Path]:
    """The tensor files (.pt, .pth, .npy) under ``folder`` (recursively), sorted; raises
    InputError if none."""
    return _files(folder, TENSOR_SUFFIXES, "tensor files")


class TensorFolder(Dataset):
    """Tensor files as (Tensor[C, *spatial], index): every input of every file one item, in file
    order (a file holds one input or a batch, as :func:`load_tensor` reads it), named
    ``"ecg.npy"`` or, inside a batch, ``"ecg.npy #3"``. Files are memory-mapped: finding the
    inputs reads only each file's header, and an item reads only its own input. A file that
    cannot be read stays one item whose reading raises InputError (the atlas reports it)."""

    def __init__(self, files: Sequence[Path], spatial_dims: int) -> None:
        self.spatial_dims = spatial_dims
        self.entries: list[tuple[Path, int | None]] = []
        self.names: list[str] = []
        for path in files:
            try:
                count = _read_tensor(Path(path), spatial_dims, mapped=True).shape[0]
            except InputError:
                count = 0
            rows: list[int | None] = [None] if count <= 1 else list(range(count))
            self.entries += [(Path(path), row) for row in rows]
            self.names += [Path(path).name if row is None else f"{Path(path).name} #{row}" for row in rows]

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, row = self.entries[index]
        value = _read_tensor(path, self.spatial_dims, mapped=True)[row or 0]
        return (value.float() if not value.is_floating_point() else value.clone()), index


def image_files(folder: Path) -> list[Path]:
    """The image files under ``folder`` (recursively), sorted; raises InputError if none."""
    return _files(folder, IMAGE_SUFFIXES, "images")


def _files(folder: Path, suffixes: Iterable[str], what: str) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in suffixes and p.is_file())
    if not files:
        raise InputError(f"{folder} holds no {what} ({', '.join(sorted(suffixes))})")
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

