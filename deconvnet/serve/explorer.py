"""The explorer's engine, without the web: one model and its DeconvNet, a bounded cache of traced
images, and one worker thread that runs every request on the model, batching the requests that
can share a mirror pass. :mod:`deconvnet.serve.app` puts the JSON API and the page in front of it.

Every answer is plain data (numbers, lists, pictures as ``data:image/png`` URLs), so the API that
wraps it is JSON throughout.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torchvision.utils import make_grid

from ..analysis.occlusion import Occlusion, occlusion
from ..capture import Trace
from ..deconvnet import DeconvNet
from .. import signals
from ..decoding import Decoded, decode, open_image
from ..capture import KINDS
from ..errors import DeconvnetError, InputError, LayerNotFoundError
from ..loading import PHOTOS, LoadedModel, photo
from ..mirror import RULES
from ..pictures import image, segmentation
from ..pictures.figures import crop_to_field
from ..pictures.site import layer_folders
from ..receptive import ReceptiveField

__all__ = [
    "BadImageError",
    "Explorer",
    "ExplorerError",
    "NotFoundError",
    "TooLargeError",
    "TraceCache",
    "decode_image",
]

# Uploads Pillow may decode: the common photo formats, nothing exotic (each decoder is attack surface).
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF", "PPM")
TILE = 48  # largest side of a channel's thumbnail in a layer's grid (maps are max-pooled down to it)
NO_SWITCHES_HINT = (
    "This model has no max-pooling, so the deconvnet rule has no switches to carry the image: its "
    "projections look alike for every photo (often a checkerboard). Try the guided rule."
)


class ExplorerError(DeconvnetError):
    """A request the explorer cannot serve; ``status`` is its HTTP status."""

    status = 400


class NotFoundError(ExplorerError, LookupError):
    """An image, photo, job or atlas entry the server does not have."""

    status = 404


class TooLargeError(ExplorerError, ValueError):
    """An upload over the server's byte or pixel limit."""

    status = 413


class BadImageError(ExplorerError, ValueError):
    """Bytes that are not an image Pillow can decode (or only part of one)."""

    status = 422


def decode_image(data: bytes, max_pixels: int, name: str = "the upload") -> Decoded:
    """Uploaded bytes as an upright RGB image with the decoder's notes (the command line's
    decoder, :func:`deconvnet.decoding.decode`). The header's size is checked against
    ``max_pixels`` before any pixel is decoded (decompression bombs stop there); only
    :data:`IMAGE_FORMATS`."""
    if not data:
        raise BadImageError("the upload is empty: send the image file's bytes as the request body")
    try:
        with open_image(data, IMAGE_FORMATS) as opened:
            width, height = opened.size
            if width * height > max_pixels:
                raise TooLargeError(f"the image is {width}x{height} = {width * height} pixels; "
                                    f"this server takes at most {max_pixels}")
            return decode(opened, name)
    except UnidentifiedImageError as error:
        raise BadImageError(f"not an image this server reads ({', '.join(IMAGE_FORMATS)})") from error
    except Image.DecompressionBombError as error:
        raise TooLargeError(f"the image is too large to decode safely ({error}); this server takes at most "
                            f"{max_pixels} pixels") from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:  # truncated or corrupt data
        raise BadImageError(f"cannot decode the image: {str(error).splitlines()[0] if str(error) else error!r}") from error


def data_url(picture: Tensor) -> str:
    """picture (Tensor[3, H, W] in [0, 1]) as a ``data:image/png;base64,...`` URL."""
    # The fastest zlib level: a photo encodes 3x faster than at Pillow's default, 10% larger.
    return "data:image/png;base64," + base64.b64encode(image.to_png(picture, compress_level=1)).decode("ascii")


def _bytes(trace: Trace) -> int:
    """Bytes held by a trace's tensors, each storage counted once."""
    seen: set[int] = set()
    total = 0

    def add(value: Any) -> None:
        nonlocal total
        if isinstance(value, Tensor):
            storage = value.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
        elif isinstance(value, (tuple, list)):
            for item in value:
                add(item)

    add([trace.input, trace.output, *trace.activations.values()])
    for record in trace.records.values():
        add([record.switches, record.output, record.input, record.values])
    return total


@dataclass(eq=False)
class Picture:
    """One traced image: what every click on it reads."""

    id: str
    name: str
    trace: Trace
    shown: Tensor
    """Tensor[3, H, W] in [0, 1]: the model's input, its normalisation undone, on the CPU."""
    probabilities: Tensor | None
    """Tensor[classes] on the CPU, when the model is a classifier."""
    nbytes: int
    notes: tuple[str, ...] = ()
    """What the decoder did that the user should know (EXIF turn, 16-bit scaling, first frame)."""
    labels: Tensor | None = None
    """LongTensor[H, W] on the CPU, for a segmentation model: the class it predicts at each
    pixel of the input (its output's argmax, brought to the input's grid)."""


class TraceCache:
    """Traced images by id, the least recently used dropped once their traces hold more than
    ``capacity`` bytes (the newest is always kept). Safe to use from several threads."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._pictures: OrderedDict[str, Picture] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Picture:
        with self._lock:
            picture = self._pictures.get(key)
            if picture is None:
                raise NotFoundError(f"image {key!r} is not on this server (never uploaded, or dropped from its "
                                    "cache of recent images): upload it again")
            self._pictures.move_to_end(key)
            return picture

    def peek(self, key: str) -> Picture | None:
        with self._lock:
            return self._pictures.get(key)

    def put(self, picture: Picture) -> None:
        with self._lock:
            self._pictures[picture.id] = picture
            self._pictures.move_to_end(picture.id)
            while len(self._pictures) > 1 and self.nbytes > self.capacity:
                self._pictures.popitem(last=False)

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self._pictures.values())

    def __len__(self) -> int:
        return len(self._pictures)


@dataclass(eq=False)
class _Task:
    key: tuple
    item: Any
    run: Callable[[list[Any]], list[Any]]
    future: Future = field(default_factory=Future)


class _Worker:
    """One thread runs every task on the model, oldest first. Tasks waiting with the same key
    (the same image, layer and rule) run as one batch: ``run`` takes all their items at once."""

    def __init__(self) -> None:
        self._tasks: list[_Task] = []
        self._ready = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="deconvnet-explorer", daemon=True)
        self._thread.start()
        self.batches = 0  # mirror runs made, for tests and the benchmark
        self.tasks = 0

    def submit(self, key: tuple, item: Any, run: Callable[[list[Any]], list[Any]]) -> Future:
        task = _Task(key, item, run)
        with self._ready:
            if self._closed:
                raise ExplorerError("the explorer is shutting down")
            self._tasks.append(task)
            self._ready.notify()
        return task.future

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while True:
            with self._ready:
                while not self._tasks and not self._closed:
                    self._ready.wait()
                if self._closed and not self._tasks:
                    return
                waiting, self._tasks = self._tasks, []
            groups: dict[tuple, list[_Task]] = {}
            for task in waiting:
                groups.setdefault(task.key, []).append(task)
            for tasks in groups.values():
                self.batches += 1
                self.tasks += len(tasks)
                try:
                    results = tasks[0].run([t.item for t in tasks])
                except BaseException as error:  # handed to every request of the batch
                    for task in tasks:
                        task.future.set_exception(error)
                else:
                    for task, result in zip(tasks, results, strict=True):
                        task.future.set_result(result)


@dataclass(eq=False)
class Job:
    """An occlusion run in the background: progress, then its result or its error."""

    id: str
    total: int
    done: int = 0
    state: str = "queued"  # queued, running, done, failed
    error: str | None = None
    result: dict | None = None

    def status(self) -> dict:
        return {"job": self.id, "state": self.state, "done": self.done, "total": self.total,
                "error": self.error, "result": self.result}


class _JobProgress:
    """The tqdm-like progress :func:`occlusion` advances, counting into a job."""

    def __init__(self, job: Job) -> None:
        self.job = job

    def __call__(self, **_: object) -> _JobProgress:
        return self

    def update(self, n: int = 1) -> None:
        self.job.done += n

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class LayerInfo:
    """A layer with feature maps: its name (a module's, as users know it), the step of the traced
    forward it names (where its output is kept), and its output's shape and receptive field."""

    name: str
    step: str
    channels: int
    shape: tuple[int, int]
    field: ReceptiveField | None

    def to_json(self) -> dict:
        f = self.field
        return {"name": self.name, "channels": self.channels, "shape": list(self.shape),
                "field": None if f is None else {"size": list(f.size), "stride": list(f.stride), "offset": list(f.offset)}}


class AtlasLink:
    """A unit atlas site of the same model (``deconvnet atlas``): its top units per channel, and
    where its pages and pictures are, relative to where the server mounts it (``/atlas``)."""

    def __init__(self, folder: Path, layers: dict[str, LayerInfo], mount: str = "/atlas") -> None:
        self.folder = Path(folder)
        try:
            document = json.loads((self.folder / "atlas.json").read_text())
        except FileNotFoundError as error:
            raise InputError(f"--atlas {folder}: no atlas.json there; give the folder `deconvnet atlas` wrote") from error
        except (OSError, ValueError) as error:
            raise InputError(f"--atlas {folder}: cannot read its atlas.json: {error}") from error
        self.model = document.get("model", "?")
        self.names: list[str] = document["images"]
        self.layers: dict[str, dict] = document["layers"]
        for name, entry in self.layers.items():
            if name not in layers:
                raise InputError(f"--atlas {folder} was made for another model: its layer {name!r} is not a layer "
                                 "with feature maps of this one")
            if entry["channels"] != layers[name].channels:
                raise InputError(f"--atlas {folder} was made for another model: its {name} has {entry['channels']} "
                                 f"channels, this model's has {layers[name].channels}")
        self.folders = layer_folders(self.layers)
        self.mount = mount

    def channel(self, layer: str, channel: int) -> dict:
        if layer not in self.layers:
            raise NotFoundError(f"the atlas has no layer {layer!r}; it holds {', '.join(self.layers)}")
        entry = self.layers[layer]
        _check_index("channel", channel, entry["channels"], f"{layer} has {entry['channels']} channels")
        base = f"{self.mount}/{self.folders[layer]}"
        units = [{"rank": r, "value": u["value"], "image": self.names[u["image"]], "position": u["position"],
                  "projection": f"{base}/img/{channel}-{r}.png", "patch": f"{base}/img/{channel}-{r}-patch.png"}
                 for r, u in enumerate(entry["units"][channel])]
        return {"layer": layer, "channel": channel, "model": self.model, "page": f"{base}/{channel}.html",
                "layer_page": f"{base}/index.html", "units": units}


class Explorer:
    """Serves one model: add images (each traced once), then project classes, channels and units
    of any layer from the cached trace, and run occlusion in the background.

    loaded: the model and its preprocessing (:func:`deconvnet.loading.load_model`); name: what pages call
    it; rule/rectifiers: as :class:`DeconvNet`; atlas: a site folder of the same model;
    cache_bytes: memory the cached traces may hold; max_upload_bytes/max_pixels: upload limits;
    max_positions: the most occluder positions one occlusion request may ask for.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        name: str,
        rectifiers: str = "all",
        rule: str = "deconvnet",
        atlas: Path | None = None,
        cache_bytes: int = 1 << 30,
        max_upload_bytes: int = 20 << 20,
        max_pixels: int = 40_000_000,
        max_positions: int = 4096,
        photos: Sequence[str] | None = None,
        samples: dict[str, Callable[[], Image.Image]] | None = None,
    ) -> None:
        self.loaded = loaded
        self.name = name
        self.dn = DeconvNet(loaded.model, rule=rule, rectifiers=rectifiers)
        dims = self.dn.network.spatial_dims
        if dims != 2:  # the explorer's pages are built around a picture one clicks on
            raise InputError(f"the explorer shows images, and {name} takes {KINDS[dims]}: draw them with deconvnet classes, "
                             "layers, channels, top9 or occlusion, or browse a unit atlas (deconvnet atlas writes a "
                             "site that opens in the browser)")
        self.cache = TraceCache(cache_bytes)
        self.max_upload_bytes = max_upload_bytes
        self.max_pixels = max_pixels
        self.max_positions = max_positions
        self._worker = _Worker()
        self._occluder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="deconvnet-occlusion")
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._runs: OrderedDict[tuple, Job] = OrderedDict()  # occlusion requests -> their job
        self._jobs_lock = threading.Lock()
        self._sources: dict[str, Callable[[], Image.Image]] = dict(samples or {})
        for name_ in photos if photos is not None else _installed_photos():
            self._sources[name_] = lambda name_=name_: photo(name_)
        probe = self._probe()
        self.input_shape = tuple(probe.input.shape[1:])
        self.classes = probe.output.shape[1] if probe.output.dim() in (2, 4) else None
        self.grid = tuple(probe.output.shape[2:]) if probe.output.dim() == 4 else None
        """The output's grid for a segmentation model (its output Tensor[N, classes, h, w]), else None."""
        # Each output with maps once, under a module's name where one names it (a residual block,
        # not the add its output comes from), in forward order.
        modules = dict(self.dn.model.named_modules())
        names: dict[str, str] = {}  # step -> the name it is listed under
        for layer in self.dn.layers:
            step = self.dn.layer_name(layer)
            if probe.activations[step].dim() == 4 and (step not in names or (names[step] not in modules
                                                                              and layer in modules)):
                names[step] = layer
        self.layers: dict[str, LayerInfo] = {}
        for step, layer in names.items():
            a = probe.activations[step]
            self.layers[layer] = LayerInfo(layer, step, a.shape[1], (a.shape[2], a.shape[3]),
                                           self.dn.receptive_field(layer, probe))
        if not self.layers:
            raise InputError(f"{name} has no layer with feature maps (Tensor[N, C, H, W] outputs) to explore")
        self.switches = self.dn.has_switches
        self.atlas = AtlasLink(atlas, self.layers) if atlas is not None else None

    def close(self) -> None:
        self._worker.close()
        self._occluder.shutdown(wait=False, cancel_futures=True)

    # --- what the page asks first --------------------------------------------------------------

    def info(self) -> dict:
        categories = self.loaded.categories
        return {
            "model": self.name, "input": list(self.input_shape), "classes": self.classes,
            "segmentation": None if self.grid is None else {"grid": list(self.grid)},
            "categories": list(categories) if categories is not None else None,
            "rules": list(RULES), "rule": self.dn.rule, "rectifiers": self.dn.rectifiers,
            "layers": [info.to_json() for info in self.layers.values()],
            "photos": list(self._sources), "atlas": None if self.atlas is None else {
                "model": self.atlas.model, "layers": list(self.atlas.layers), "index": f"{self.atlas.mount}/index.html"},
            "switches": self.switches, "hint": None if self.switches else NO_SWITCHES_HINT,
            "limits": {"upload_bytes": self.max_upload_bytes, "pixels": self.max_pixels,
                       "occlusion_positions": self.max_positions},
        }

    # --- images ----------------------------------------------------------------------------------

    def add_upload(self, data: bytes, name: str = "upload") -> dict:
        """Decode, preprocess and trace uploaded bytes (once: the same bytes get the same id)."""
        if len(data) > self.max_upload_bytes:
            raise TooLargeError(f"the upload is {len(data)} bytes; this server takes at most {self.max_upload_bytes}")
        key = hashlib.sha256(data).hexdigest()[:20]
        if self.cache.peek(key) is None:
            decoded = decode_image(data, self.max_pixels, name)
            self._worker.submit(("add", key), (key, name, decoded.image, decoded.notes), self._add).result()
        return self.describe(key)

    def add_photo(self, name: str) -> dict:
        """Trace one of the bundled pictures (see ``info()["photos"]``)."""
        if name not in self._sources:
            raise NotFoundError(f"no photo {name!r}; this server has {', '.join(self._sources) or 'none'}")
        key = hashlib.sha256(f"photo:{name}".encode()).hexdigest()[:20]
        if self.cache.peek(key) is None:
            self._worker.submit(("add", key), (key, name, self._sources[name](), ()), self._add).result()
        return self.describe(key)

    def describe(self, key: str) -> dict:
        """A traced image: its input as a picture and its top-5 classes; for a segmentation
        model, every class it predicts (largest area first) with its share and colour, and the
        predicted mask over the image."""
        picture = self.cache.get(key)
        top = []
        if picture.labels is not None:
            cells = picture.trace.output[0, 0].numel()
            top = [{"class": c, "label": self._label(c), "probability": None, "share": count / cells,
                    "colour": "#%02x%02x%02x" % segmentation.class_colour(c)}
                   for c, count in self.dn.predicted_classes(picture.trace)[0]]
            return {"image": picture.id, "name": picture.name, "shape": list(picture.shown.shape), "top": top,
                    "input": data_url(picture.shown), "notes": list(picture.notes),
                    "mask": data_url(segmentation.mask_overlay(picture.shown, picture.labels))}
        if picture.probabilities is not None:
            values, classes = picture.probabilities.topk(min(5, picture.probabilities.numel()))
            top = [{"class": int(c), "label": self._label(int(c)), "probability": float(v)}
                   for v, c in zip(values, classes, strict=True)]
        return {"image": picture.id, "name": picture.name, "shape": list(picture.shown.shape), "top": top,
                "input": data_url(picture.shown), "notes": list(picture.notes)}

    def _add(self, items: list[tuple[str, str, Image.Image, tuple[str, ...]]]) -> list[None]:
        for key, name, rgb, notes in items:
            if self.cache.peek(key) is not None:
                continue
            x = self.loaded.preprocessing.transform(rgb)
            if tuple(x.shape) != self.input_shape:
                raise BadImageError(f"the model's preprocessing made this image {tuple(x.shape)}, not "
                                    f"{self.input_shape} as for other images; the server's model needs one input size")
            trace = self.dn.trace(x.unsqueeze(0).to(self._dtype()))
            shown = image.denormalize(x.float(), self.loaded.preprocessing.mean, self.loaded.preprocessing.std)
            probabilities = trace.output[0].float().softmax(-1).cpu() if trace.output.dim() == 2 else None
            labels = (segmentation.on_input_grid(trace.output.argmax(dim=1), x.shape[1:])[0].cpu()
                      if self.grid is not None else None)
            self.cache.put(Picture(key, name, trace, shown, probabilities, _bytes(trace), notes, labels))
        return [None] * len(items)

    def _probe(self) -> Trace:
        """A grey image through the preprocessing: the input size, the layers' shapes, a warm start."""
        x = self.loaded.preprocessing.transform(Image.new("RGB", (256, 256), (128, 128, 128)))
        return self.dn.trace(x.unsqueeze(0).to(self._dtype()))

    def _dtype(self) -> torch.dtype:
        parameter = next(self.dn.model.parameters(), None)
        return parameter.dtype if parameter is not None else torch.float32

    def _label(self, c: int) -> str:
        return self.loaded.label(c)

    # --- classes ---------------------------------------------------------------------------------

    def class_projection(self, key: str, target: int, rule: str | None = None) -> dict:
        """The reconstruction of class ``target``: from 1 at its output unit; for a segmentation
        model, from its logits over the region where the model predicts it."""
        picture = self.cache.get(key)
        rule = self._rule(rule)
        if self.classes is None:
            raise InputError(f"{self.name} is not a classifier or a segmentation model (its output is not "
                             "[N, classes] or [N, classes, H, W])")
        _check_index("class", target, self.classes, f"the model has {self.classes} classes")
        return self._worker.submit(("classes", key, rule), target,
                                   lambda items: self._classes(picture, rule, items)).result()

    def _classes(self, picture: Picture, rule: str, targets: list[int]) -> list[dict]:
        unique = list(dict.fromkeys(targets))
        region = "predicted" if picture.labels is not None else None
        projected = self.dn.reconstruct_classes(picture.trace, unique, region=region, rule=rule)[0].float().cpu()
        by_class = {}
        for k, c in enumerate(unique):
            by_class[c] = {"class": c, "label": self._label(c), "rule": rule,
                           "probability": float(picture.probabilities[c]) if picture.probabilities is not None else None,
                           "picture": data_url(image.signed_to_unit(projected[k]))}
            if picture.labels is not None:
                by_class[c]["share"] = float((picture.labels == c).float().mean())
                by_class[c]["region"] = data_url(segmentation.mask_overlay(picture.shown, picture.labels, only=c))
        return [by_class[c] for c in targets]

    def pixel(self, key: str, row: int, col: int, rule: str | None = None) -> dict:
        """For a segmentation model: the class it predicts at pixel (row, col) of the input,
        reconstructed from its logit at the output position over that pixel alone."""
        picture = self.cache.get(key)
        rule = self._rule(rule)
        if picture.labels is None or self.grid is None:
            raise InputError(f"{self.name} is not a segmentation model: a pixel has no class of its own; "
                             "pick a class instead")
        height, width = picture.labels.shape
        _check_index("row", row, height, f"the input has {height} rows")
        _check_index("col", col, width, f"the input has {width} columns")
        at = (row * self.grid[0] // height, col * self.grid[1] // width)  # the output cell over the pixel
        c = int(picture.labels[row, col])
        return self._worker.submit(("pixel", key, rule, at), c, lambda items: self._pixels(picture, rule, at, items)).result()

    def _pixels(self, picture: Picture, rule: str, at: tuple[int, int], targets: list[int]) -> list[dict]:
        unique = list(dict.fromkeys(targets))
        projected = self.dn.reconstruct_classes(picture.trace, unique, region=at, rule=rule)[0].float().cpu()
        by_class = {c: {"class": c, "label": self._label(c), "rule": rule, "cell": list(at),
                        "share": float((picture.labels == c).float().mean()),  # type: ignore[union-attr]
                        "picture": data_url(image.signed_to_unit(projected[k]))} for k, c in enumerate(unique)}
        return [by_class[c] for c in targets]

    # --- layers, channels, units -----------------------------------------------------------------

    def layer(self, key: str, layer: str) -> dict:
        """Every channel of ``layer`` as a thumbnail of its map (one sprite, channels row-major,
        one scale for the whole layer), with each channel's strongest activation and where."""
        picture = self.cache.get(key)
        info = self._layer_info(layer)
        return self._worker.submit(("layer", key, layer), None,
                                   lambda items: [self._grid(picture, info)] * len(items)).result()

    def _grid(self, picture: Picture, info: LayerInfo) -> dict:
        maps = picture.trace.activations[info.step][0].detach().float().cpu()  # [C, h, w]
        flat = maps.flatten(1)
        values, where = flat.max(dim=1)
        h, w = info.shape
        tile = (min(h, TILE), min(w, TILE))
        small = F.adaptive_max_pool2d(maps[None], tile)[0] if tile != (h, w) else maps
        peak = float(small.max())
        # One scale for the layer (strong channels look strong), square-rooted so weak maps still show.
        scaled = (small.clamp_min(0) / peak).sqrt() if peak > 0 else torch.zeros_like(small)
        columns = max(1, math.ceil(math.sqrt(info.channels)))
        sprite = make_grid(scaled[:, None], nrow=columns, padding=0)[0]
        return {"layer": info.name, "channels": info.channels, "shape": list(info.shape), "tile": list(tile),
                "columns": columns, "sprite": data_url(image.colormap(sprite)),
                "values": [float(v) for v in values], "units": [[int(p) // w, int(p) % w] for p in where]}

    def channel(self, key: str, layer: str, channel: int, rule: str | None = None) -> dict:
        """The strongest unit of ``channel`` of ``layer``, projected alone (see :meth:`unit`)."""
        picture = self.cache.get(key)
        info = self._layer_info(layer)
        _check_index("channel", channel, info.channels, f"{layer} has {info.channels} channels")
        position = int(picture.trace.activations[info.step][0, channel].flatten().argmax())
        return self._unit(picture, info, channel, position, rule)

    def unit(self, key: str, layer: str, channel: int, row: int, col: int, rule: str | None = None) -> dict:
        """Unit (row, col) of ``channel`` of ``layer`` projected alone, cropped to its receptive
        field (the box, in input pixels, is in the answer), with the channel's map."""
        picture = self.cache.get(key)
        info = self._layer_info(layer)
        _check_index("channel", channel, info.channels, f"{layer} has {info.channels} channels")
        _check_index("row", row, info.shape[0], f"{layer}'s maps have {info.shape[0]} rows")
        _check_index("col", col, info.shape[1], f"{layer}'s maps have {info.shape[1]} columns")
        return self._unit(picture, info, channel, row * info.shape[1] + col, rule)

    def _unit(self, picture: Picture, info: LayerInfo, channel: int, position: int, rule: str | None) -> dict:
        rule = self._rule(rule)
        return self._worker.submit(("units", picture.id, info.name, rule), (channel, position),
                                   lambda items: self._units(picture, info, rule, items)).result()

    def _units(self, picture: Picture, info: LayerInfo, rule: str, items: list[tuple[int, int]]) -> list[dict]:
        """All waiting clicks on one image and layer: one reconstruct_units call."""
        unique = list(dict.fromkeys(items))
        units = {"images": [0] * len(unique), "channels": [c for c, _ in unique], "positions": [p for _, p in unique]}
        try:
            # The answer is cut to the receptive field anyway: compute on the field alone even where it
            # covers most of the image (the library's default crops only under half of it).
            projected = self.dn.reconstruct_units(picture.trace, info.name, **units, rule=rule,
                                                  crop=True if info.field is not None else None)
        except InputError:  # not croppable here (another rule, or layers below that need the whole map)
            projected = self.dn.reconstruct_units(picture.trace, info.name, **units, rule=rule)
        projected = projected.float().cpu()
        activation = picture.trace.activations[info.step][0]
        height, width = picture.shown.shape[-2:]
        answers = {}
        for k, (c, p) in enumerate(unique):
            unit = (p // info.shape[1], p % info.shape[1])
            field_ = info.field
            box = list(field_.box(*unit, height, width)) if field_ is not None else [0, 0, height, width]
            channel_map = activation[c].detach().float().cpu()
            peak = float(channel_map.max())
            shown_map = channel_map.clamp_min(0) / peak if peak > 0 else torch.zeros_like(channel_map)
            answers[(c, p)] = {
                "layer": info.name, "channel": c, "unit": list(unit), "value": float(activation[c].flatten()[p]),
                "rule": rule, "box": box, "field": None if field_ is None else list(field_.size),
                "projection": data_url(image.signed_to_unit(crop_to_field(projected[k], field_, unit, 0.0))),
                "patch": data_url(crop_to_field(picture.shown, field_, unit, 1.0)),
                "map": data_url(image.colormap(shown_map)),
            }
        return [answers[item] for item in items]

    def atlas_channel(self, layer: str, channel: int) -> dict:
        if self.atlas is None:
            raise NotFoundError("this server was started without --atlas")
        return self.atlas.channel(layer, channel)

    # --- occlusion -------------------------------------------------------------------------------

    def start_occlusion(self, key: str, size: int, stride: int, target: int | None = None,
                        layer: str | None = None) -> dict:
        """Queue an occlusion run (one at a time per server); poll :meth:`job` for progress. The
        same request again (image, size, stride, target, layer) gets the same job, done or not."""
        picture = self.cache.get(key)
        height, width = picture.shown.shape[-2:]
        if not 1 <= size <= min(height, width):
            raise InputError(f"size must be 1..{min(height, width)} (the input is {height}x{width}), got {size}")
        if stride < 1:
            raise InputError(f"stride must be at least 1, got {stride}")
        if self.classes is None or self.grid is not None:
            raise InputError(f"{self.name} is not a classifier: occlusion watches a class probability")
        if target is not None:
            _check_index("target", target, self.classes, f"the model has {self.classes} classes")
        info = self._layer_info(layer) if layer is not None else self._last_map()
        grid = ((height - size) // stride + 1, (width - size) // stride + 1)
        if grid[0] * grid[1] > self.max_positions:
            raise InputError(f"size {size} and stride {stride} give {grid[0] * grid[1]} positions; this server runs "
                             f"at most {self.max_positions}: raise the stride")
        request = (key, size, stride, target, info.name)
        with self._jobs_lock:
            same = self._runs.get(request)
            if same is not None and same.state != "failed" and same.id in self._jobs:
                return same.status()  # asked before (a shared URL, a second client): the same run
            job = Job(uuid.uuid4().hex[:16], grid[0] * grid[1])
            self._jobs[job.id] = job
            self._runs[request] = job
            while len(self._jobs) > 32:
                self._jobs.popitem(last=False)
            while len(self._runs) > 32:
                self._runs.popitem(last=False)
        self._occluder.submit(self._occlude, job, picture, size, stride, target, info)
        return job.status()

    def job(self, key: str) -> dict:
        with self._jobs_lock:
            job = self._jobs.get(key)
        if job is None:
            raise NotFoundError(f"no occlusion job {key!r} (finished long ago, or never started)")
        return job.status()

    def _occlude(self, job: Job, picture: Picture, size: int, stride: int, target: int | None, info: LayerInfo) -> None:
        job.state = "running"
        try:
            result = occlusion(self.dn, picture.trace.input, size=size, stride=stride, target=target, layer=info.name,
                               progress=_JobProgress(job))
            job.result = self._occlusion_answer(result)
            job.state = "done"
        except Exception as error:  # reported to the page through the job
            job.error = str(error).splitlines()[0] if str(error) else type(error).__name__
            job.state = "failed"

    def _occlusion_answer(self, result: Occlusion) -> dict:
        labels = result.label[0].cpu()
        names = {int(c): self._label(int(c)) for c in labels.unique()}
        target = int(result.target[0])
        activation, projection, channel = result.activation, result.projection, result.channel
        if activation is None or projection is None or channel is None:  # occlusion was given a layer
            raise ExplorerError("occlusion returned no feature map")
        return {
            "size": result.size, "stride": result.stride, "grid": list(result.grid), "target": target,
            "target_label": self._label(target), "unoccluded": float(result.unoccluded[0]),
            "probability": result.probability[0].float().cpu().tolist(), "label": labels.tolist(),
            "labels": {str(c): n for c, n in names.items()}, "layer": result.layer, "channel": int(channel[0]),
            "activation": activation[0].float().cpu().tolist(),
            "projection": data_url(image.signed_to_unit(projection[0].float().cpu())),
        }

    # --- helpers ---------------------------------------------------------------------------------

    def _layer_info(self, layer: str) -> LayerInfo:
        info = self.layers.get(layer)
        if info is None:
            step = self.dn.layer_name(layer)  # a name that is no layer at all: its own error, with suggestions
            info = next((i for i in self.layers.values() if i.step == step), None)  # another name of one output
            if info is None:
                raise LayerNotFoundError(f"{layer} has no feature maps (Tensor[N, C, H, W]) to explore")
        return info

    def _last_map(self) -> LayerInfo:
        """The deepest layer whose maps are more than one unit: occlusion's default."""
        spatial = [info for info in self.layers.values() if info.shape[0] * info.shape[1] > 1]
        return (spatial or list(self.layers.values()))[-1]

    def _rule(self, rule: str | None) -> str:
        return self.dn.context(rule).rule  # the server's rule when None; DeconvNet's check otherwise



def _check_index(what: str, value: int, count: int, owner: str) -> None:
    """One index below ``count``, checked as DeconvNet checks channels and classes."""
    signals.targets(value, count, what, owner, torch.device("cpu"))


def _installed_photos() -> list[str]:
    try:
        import skimage.data  # noqa: F401
    except ImportError:
        return []
    return list(PHOTOS)
