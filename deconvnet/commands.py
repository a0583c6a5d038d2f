"""What each ``deconvnet`` command does, once its arguments are parsed: load the model
(:class:`Session`), run the analysis, write the figures. :mod:`deconvnet.cli` parses and
dispatches; :mod:`deconvnet.demo` strings these together into the demo."""

from __future__ import annotations

import argparse
import functools
import json
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

from .analysis.atlas import STATE_FOLDER, AtlasImages, build_atlas, rank_and_world
from .analysis.correspondence import (
    differences,
    disagreement,
    random_boxes,
)
from .analysis.evolution import evolution
from .analysis.filters import (
    filters_figure,
    first_conv,
    renormalize_filters,
)
from .analysis.invariance import Invariance, invariance
from .analysis.occlusion import occlusion
from .analysis.sanity import class_sensitivity, faithfulness, model_randomization
from .analysis.topk import mine_top_units, project_top_units
from .deconvnet import DeconvNet
from .errors import InputError
from .capture import AXES, INPUT, KINDS
from .decoding import read_image
from .loading import (
    PROBE_SIDES,
    TENSOR_SUFFIXES,
    ImageFolder,
    LoadedModel,
    TensorFolder,
    image_files,
    load_model,
    load_tensor,
    tensor_files,
)
from .models import EVOLUTION_STEPS, shapes_net_at
from .mirror import RULES
from .pictures import figures
from .pictures import sanity as sanity_pictures
from .pictures import segmentation
from .pictures.site import slug
from .preprocessing import Preprocessing

NO_SWITCHES = ("this model has no max-pooling, so the deconvnet rule has no switches to carry the image: its "
               "projections look alike for every image (often a checkerboard); try --rule guided")


def _caption(text: str) -> Image.Image:
    picture = Image.new("RGB", (8 + 6 * len(text), 16), "white")
    ImageDraw.Draw(picture).text((4, 2), text, fill="black")
    return picture


def _device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise InputError(f"--device {name!r} is not a device: {error}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA device is available")
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))  # torchrun: each rank its own GPU
    return device


def _load(args: argparse.Namespace, checkpoint: Path | None = None) -> LoadedModel:
    """The model the arguments name, with their class names and preprocessing changes."""
    loaded = load_model(args.model, weights=args.weights, checkpoint=checkpoint or args.checkpoint,
                        num_classes=getattr(args, "num_classes", None), labels=getattr(args, "labels", None))
    changed = loaded.preprocessing.overridden(size=getattr(args, "input_size", None),
                                              resize=getattr(args, "resize", None), mean=getattr(args, "mean", None),
                                              std=getattr(args, "std", None))
    if changed is not loaded.preprocessing:
        _check_input_size(loaded.model, changed, args.model)
    return replace(loaded, preprocessing=changed)


def _check_input_size(model: torch.nn.Module, preprocessing: Preprocessing, name: str) -> None:
    """One forward pass of a grey image as the changed preprocessing makes it: a model that
    only takes its trained size (a ViT's position embeddings) says so here, in a line, rather
    than in a traceback from deep in a trace."""
    x = preprocessing.transform(Image.new("RGB", (256, 256), (128, 128, 128)))[None]
    parameter = next(model.parameters(), None)
    if parameter is not None:
        x = x.to(parameter.device, parameter.dtype)
    try:
        with torch.no_grad():
            model(x)
    except Exception as error:  # the model's own code refuses the size: any failure means that here
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(f"{name} does not run on a {'x'.join(str(d) for d in x.shape[1:])} input ({reason}); "
                         "give --input-size the size it was trained at") from error


def _title(args: argparse.Namespace) -> str:
    """What pages call the model: its name, and the checkpoint's file when there is one."""
    checkpoint = getattr(args, "checkpoint", None)
    return f"{args.model} ({Path(checkpoint).name})" if checkpoint else args.model


def describe(loaded: LoadedModel, shown: int = 5, spatial_dims: int = 2) -> list[str]:
    """What a run feeds the model, in lines for the user: the model, the checkpoint, the class
    names, the preprocessing (for signal and volume models: tensor files as they are)."""
    lines = [f"model: {loaded.source}"]
    if loaded.checkpoint:
        lines.append(f"checkpoint: {loaded.checkpoint}")
    names = loaded.categories
    if names is not None:
        more = f", ... ({len(names)} in all)" if len(names) > shown else ""
        lines.append(f"classes: {', '.join(str(n) for n in names[:shown])}{more} (from {loaded.labels_from})")
    else:
        lines.append("classes: unnamed, shown as 'class 3' (give --labels FILE: one name per line)")
    if spatial_dims == 2:
        lines.append(f"preprocessing: {loaded.preprocessing}")
    else:
        lines.append(f"input: {KINDS[spatial_dims]} [{AXES[spatial_dims]}] from tensor files ({', '.join(TENSOR_SUFFIXES)}), fed as they are: "
                     "no preprocessing")
    return lines


def _listed(names: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


# The commands that take signal and volume models; the rest (the paper's analyses that shift, zoom,
# rotate or box parts of images) work on images only.
_ANY_DIMENSION = {"atlas", "channels", "classes", "info", "layers", "occlusion", "top9"}


class Session:
    """A loaded model on its device, its DeconvNet, and where figures go."""

    def __init__(self, args: argparse.Namespace) -> None:
        for option in ("batch_size", "top_k", "k", "channels", "images", "dataset", "pointing", "checkpoint_every",
                       "show", "random", "steps", "curve_steps", "occluder"):
            value = getattr(args, option, None)
            if isinstance(value, int) and value < 1:
                raise InputError(f"--{option.replace('_', '-')} must be at least 1, got {value}")
        self.args = args
        self.device = _device(args.device)
        self.loaded: LoadedModel = _load(args)
        self.model = self.loaded.model.to(self.device)
        self.dn = DeconvNet(self.model, rule=args.rule, rectifiers=args.rectifiers)
        self.dims = self.dn.network.spatial_dims
        command = getattr(args, "command", None)
        if self.dims != 2 and command not in _ANY_DIMENSION:
            raise InputError(f"deconvnet {command} works on images, and {args.model} takes {KINDS[self.dims]}: for "
                             f"those the command line has {_listed(sorted(_ANY_DIMENSION))}; in Python every "
                             "reconstruction, mining and occlusion call takes them")
        for line in describe(self.loaded, spatial_dims=self.dims):
            print(f"deconvnet: {line}")
        self.out: Path = args.out
        self.out.mkdir(parents=True, exist_ok=True)
        self.mean, self.std = self.loaded.preprocessing.mean, self.loaded.preprocessing.std
        if self.dims != 2:  # tensor files carry the model's own values: shown stretched to their range
            self.mean = self.std = None  # type: ignore[assignment]
        self.scale = 3 if args.model == "shapes" else 1
        self.names: list[str] = []  # one per input of the last images() call

    def images(self, paths: Sequence[Path]) -> torch.Tensor:
        if self.dims != 2:  # signals, volumes, clips: tensor files, each one input or a batch
            files = TensorFolder(paths, self.dims)
            inputs = [files[i][0] for i in range(len(files))]
            self.names = files.names
            shapes = {tuple(x.shape) for x in inputs}
            if len(shapes) > 1:
                raise InputError(f"the inputs differ in shape {sorted(shapes)}; give files of one shape")
            parameter = next(self.model.parameters(), None)
            dtype = parameter.dtype if parameter is not None else torch.float32
            return torch.stack(inputs).to(self.device, dtype)
        self.names = [Path(p).name for p in paths]
        inputs = []
        for path in paths:
            decoded = read_image(path)
            for note in decoded.notes:
                print(f"deconvnet: note: {note}")
            inputs.append(self.loaded.preprocessing.transform(decoded.image))
        shapes = {tuple(x.shape) for x in inputs}
        if len(shapes) > 1:
            raise InputError(f"the images came out of the preprocessing in {len(shapes)} sizes {sorted(shapes)}; "
                             "give --input-size to crop them all to one")
        return torch.stack(inputs).to(self.device)

    def dataset(self, folder: Path) -> ImageFolder | TensorFolder:
        """A folder's inputs as (x, index) items with their ``names``: images through the
        preprocessing; for signal and volume models, tensor files as they are."""
        if self.dims != 2:
            return TensorFolder(tensor_files(folder), self.dims)
        return ImageFolder(image_files(folder), self.loaded.preprocessing)

    def shown(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs (Tensor[N, C, *spatial]) in [0, 1] as figures draw them."""
        return figures.shown_input(x.cpu(), self.mean, self.std)

    def save(self, picture: Image.Image, name: str) -> Path:
        path = self.out / name
        picture.save(path)
        print(f"wrote {path}")
        return path


def info_command(args: argparse.Namespace) -> list[Path]:
    """Print what a run with these arguments would feed and read: model, checkpoint, classes,
    preprocessing, input size, every layer one can name with its output shape, general layers."""
    device = _device(args.device)
    loaded = _load(args)
    model = loaded.model.to(device)
    dn = DeconvNet(model, rule=args.rule, rectifiers=args.rectifiers)
    dims = dn.network.spatial_dims
    parameter = next(model.parameters(), None)
    dtype = parameter.dtype if parameter is not None else torch.float32
    if getattr(args, "example", None) is not None:
        probe = load_tensor(args.example, dims)[:1] if dims != 2 else \
            loaded.preprocessing.transform(read_image(args.example).image)[None]
        note = f" (the shape of {Path(args.example).name})"
    elif dims == 2:
        probe = loaded.preprocessing.transform(Image.new("RGB", (256, 256), (128, 128, 128)))[None]
        note = "" if loaded.preprocessing.size else " for a square image (this preprocessing keeps each image's aspect ratio)"
    else:
        channels = dn.network.input_channels or 1
        probe = torch.zeros(1, channels, *[PROBE_SIDES[dims]] * dims)
        note = f" probed at {PROBE_SIDES[dims]} per side; give --example FILE for the shapes at your inputs' size"
    trace = dn.trace(probe.to(device, dtype))
    for line in describe(loaded, shown=10, spatial_dims=dims):
        print(line)
    print(f"input: Tensor[N, {AXES[dims]}] = Tensor[N, {', '.join(str(d) for d in probe.shape[1:])}]{note}")
    if trace.output.dim() == 2:
        print(f"outputs: {trace.output.shape[1]} classes")
    elif trace.output.dim() == dims + 2:
        key = dn.output_key
        grid = "x".join(str(d) for d in trace.output.shape[2:])
        print(f"output: a segmentation model: {trace.output.shape[1]} classes on a {grid} grid per {INPUT[dims]}"
              f"{'' if key is None else f', its output {key!r}'} (deconvnet classes explains each class's predicted "
              "region; --region FILE another)")
    else:
        print(f"output: {list(trace.output.shape[1:])} per image (not [N, classes]: no class reconstructions)")
    print(f"layers ({len(dn.layers)}; name one with --layer/--layers, shapes per image):")
    width = max((len(name) for name in dn.layers), default=0)
    for name in dn.layers:
        value = trace.activations.get(dn.layer_name(name))
        shape = list(value.shape[1:]) if isinstance(value, torch.Tensor) else "-"
        print(f"  {name:<{width}}  {shape}")
    general = dn.general_layers
    print(f"general layers (reversed by their exact vector-Jacobian product): {', '.join(general) if general else 'none'}")
    if not dn.has_switches:
        print(f"note: {NO_SWITCHES}")
    return []


def classes_command(args: argparse.Namespace) -> list[Path]:
    s = Session(args)
    x = s.images(args.images)
    if s.dn.trace(x[:1]).output.dim() > 2:
        return _segmentation_classes(s, x, args)
    if getattr(args, "region", None) is not None:
        raise InputError(f"--region is for segmentation models; {args.model} outputs one score per class")
    written = []
    for start in range(0, x.shape[0], args.batch_size):
        picture = figures.class_figure(
            s.dn, x[start : start + args.batch_size], s.mean, s.std, categories=s.loaded.categories,
            top_k=args.top_k, classes=args.classes, scale=s.scale, names=s.names[start:],
            show=getattr(args, "show", None),
        )
        suffix = "" if x.shape[0] <= args.batch_size else f"-{start // args.batch_size}"
        written.append(s.save(picture, f"classes{suffix}.png"))
    return written


def _segmentation_classes(s: Session, x: torch.Tensor, args: argparse.Namespace) -> list[Path]:
    """A segmentation model's figure: the predicted mask and each class present, explained over
    its predicted region (or over --region's mask)."""
    if args.classes is not None:
        raise InputError("--classes is for classifiers: a segmentation model's figure explains every class present in "
                         "each image, largest area first (--top-k how many)")
    region = "predicted" if args.region is None else _mask(args.region, x)
    if not s.dn.has_switches and s.dn.rule == "deconvnet":
        print(f"deconvnet: note: {NO_SWITCHES}")
    written = []
    for start in range(0, x.shape[0], args.batch_size):
        picture = segmentation.segmentation_figure(
            s.dn, x[start : start + args.batch_size], s.mean, s.std, categories=s.loaded.categories,
            names=s.names[start:], region=region, most=max(args.top_k, 1),
            scale=s.scale,
        )
        suffix = "" if x.shape[0] <= args.batch_size else f"-{start // args.batch_size}"
        written.append(s.save(picture, f"classes{suffix}.png"))
    return written


def _mask(path: Path, x: torch.Tensor) -> torch.Tensor:
    """A region file: an image whose non-black pixels are the region (or a .pt/.npy tensor of
    weights), on the model input's grid (brought there by nearest resizing when it is not)."""
    if path.suffix in (".pt", ".npy"):
        weights = load_tensor(path, x.dim() - 2).float()
        weights = weights.reshape(weights.shape[-(x.dim() - 2):])
    else:
        with Image.open(path) as mask:
            weights = torch.from_numpy(np.asarray(mask.convert("L"), dtype=np.float32) > 0).float()
    size = tuple(x.shape[2:])
    if tuple(weights.shape) != size:
        print(f"deconvnet: note: the region {path.name} is {'x'.join(map(str, weights.shape))}, resized to the "
              f"model's input, {'x'.join(map(str, size))}")
        weights = torch.nn.functional.interpolate(weights[None, None], size=size, mode="nearest")[0, 0]
    return weights.to(x.device, x.dtype)


def layers_command(args: argparse.Namespace) -> list[Path]:
    s = Session(args)
    x = s.images([args.image])
    layers = args.layers or _map_layers(s, x)
    picture = figures.layers_figure(s.dn, x[:1], s.mean, s.std, layers, scale=s.scale, show=args.show,
                                    name=s.names[0] if s.dims != 2 else None)
    return [s.save(picture, "layers.png")]


_PANELS = 12


def _map_layers(s: Session, x: torch.Tensor) -> list[str]:
    """Default panels: the module outputs that keep a spatial map larger than 1x1 (not heads,
    gates or containers),
    thinned evenly to at most a dozen across the depth (modern nets have hundreds)."""
    trace = s.dn.trace(x)
    modules = dict(s.dn.model.named_modules())
    names = [
        name for name in s.dn.layers
        if s.dn.layer_name(name) == name and trace.activations[name].dim() == x.dim()
        and trace.activations[name].shape[2:].numel() > 1 and name in modules and not list(modules[name].children())
    ]
    if len(names) <= _PANELS:
        return names
    step = (len(names) - 1) / (_PANELS - 1)
    return [names[round(i * step)] for i in range(_PANELS)]


def _is_conv_output(s: Session, name: str) -> bool:
    """Default panels: the leaf layers that keep a spatial map (not heads or containers)."""
    field = s.dn.receptive_field(name)
    return field is not None and s.dn.layer_name(name) == name


def channels_command(args: argparse.Namespace) -> list[Path]:
    s = Session(args)
    x = s.images([args.image])
    picture = figures.channels_figure(s.dn, x[:1], args.layer, channels=args.channels, scale=s.scale, show=args.show,
                                      name=s.names[0])
    return [s.save(picture, f"channels-{slug(args.layer)}.png")]


def top9_command(args: argparse.Namespace) -> list[Path]:
    s = Session(args)
    return _top9(s, s.dataset(args.folder), args.layers, args.k, args.channels)


def _top9(s: Session, dataset: ImageFolder | TensorFolder, layers: Sequence[str], k: int, shown: int) -> list[Path]:
    for layer in layers:
        s.dn.layer_name(layer)  # fail on a bad name before streaming the folder
    loader = torch.utils.data.DataLoader(dataset, batch_size=s.args.batch_size)
    batches = ((x.to(s.device), i) for x, i in tqdm(loader, desc="mining top units", unit="batch"))
    top = mine_top_units(s.dn, batches, layers, k=k)

    @functools.cache
    def load(index: int) -> torch.Tensor:
        # Each kept image is read once: for its projection and again for its patch.
        return dataset[index][0].to(s.device)

    written = []
    for layer in layers:
        units = top[layer]
        channels = list(range(min(shown, units.values.shape[0])))
        projections = project_top_units(s.dn, units, load, channels, batch_size=s.args.batch_size)
        patches = torch.zeros_like(projections)
        for j, c in enumerate(channels):
            for r in range(k):
                if torch.isfinite(units.values[c, r]):
                    patches[j, r] = s.shown(load(int(units.images[c, r]))[None])[0]
        picture = figures.top_units_figure(
            units, projections, patches, s.dn.receptive_field(layer), channels,
            scale=max(2, s.scale) if s.args.model == "shapes" else 1,
        )
        written.append(s.save(picture, f"top{k}-{slug(layer)}.png"))
    return written


def occlusion_command(args: argparse.Namespace) -> list[Path]:
    s = Session(args)
    x = s.images(args.images)
    layer = args.layer or _map_layers(s, x[:1])[-1]
    written = []
    for n, name in enumerate(s.names):
        result = occlusion(s.dn, x[n : n + 1], size=args.size, stride=args.stride, fill=args.fill,
                           target=args.target, layer=layer, batch_size=args.batch_size)
        picture = figures.occlusion_figure(result, x[n : n + 1], s.mean, s.std, categories=s.loaded.categories)
        written.append(s.save(picture, f"occlusion-{slug(Path(name).stem)}.png"))
    return written


def atlas_command(args: argparse.Namespace) -> list[Path]:
    """Mine DATA, project, write the site. Under torchrun (WORLD_SIZE > 1) this process joins the
    group (NCCL with CUDA, gloo otherwise), mines its shard, and rank 0 writes the site."""
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized()
    if distributed:
        cuda = args.device != "cpu" and torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
        torch.manual_seed(0)  # a model built with random weights comes out the same on every rank
    try:
        s = Session(args)
        rank, world = rank_and_world()
        images = AtlasImages(args.data, s.loaded.preprocessing, spatial_dims=s.dims)
        return _atlas(s, images, args.layers, s.out, k=args.k, resume=args.resume, rank=rank, world=world)
    finally:
        if distributed:
            torch.distributed.destroy_process_group()


def _atlas(s: Session, images: AtlasImages, layers: Sequence[str], out: Path, *, k: int, resume: bool = False,
           rank: int = 0, world: int = 1) -> list[Path]:
    if rank == 0 and world > 1:
        print(f"atlas: {world} processes; batch b (of {s.args.batch_size} images) is mined by rank b % {world}")
    if rank == 0 and resume:
        saved = out / STATE_FOLDER / f"rank-0-of-{world}.pt"
        print(f"atlas: resuming from {saved}" if saved.exists() else
              f"atlas: --resume found no checkpoint at {saved}; starting from the beginning")
    atlas = build_atlas(
        s.dn, images, layers, out, k=k, model_name=_title(s.args), batch_size=s.args.batch_size,
        workers=getattr(s.args, "workers", 0), resume=resume,
        checkpoint_every=getattr(s.args, "checkpoint_every", 500),
        progress=functools.partial(tqdm, disable=rank != 0, mininterval=1.0), categories=s.loaded.categories,
    )
    if rank != 0:
        return []
    print(f"atlas: mined {atlas.mined} of {len(atlas.names)} images")
    if atlas.skipped:
        print(f"atlas: skipped {len(atlas.skipped)} image(s) that could not be read:")
        for i, error in sorted(atlas.skipped.items()):
            print(f"  {atlas.names[i]}: {error}")
    print(f"wrote {out / 'index.html'}")
    return [out / "index.html"]


def _amounts(transform: str, size: int) -> list[float]:
    """Default amounts: shifts up to a quarter of the image, zooms 0.6-1.6, a full turn."""
    if transform == "translate":
        return [float(round(size / 4 * (i - 6) / 6)) for i in range(13)]
    if transform == "scale":
        return [round(0.6 + 0.1 * i, 1) for i in range(11)]
    return [float(a) for a in range(0, 361, 30)]


def _invariance(s: Session, x: torch.Tensor, layers: Sequence[str], transforms: Sequence[str],
                target: int | None = None) -> list[Invariance]:
    for layer in layers:
        s.dn.layer_name(layer)  # a bad name fails before the progress bar starts
    return [invariance(s.dn, x, layers, t, _amounts(t, x.shape[-1]), target=target, batch_size=s.args.batch_size)
            for t in tqdm(transforms, desc="invariance", unit="transform")]


def invariance_command(args: argparse.Namespace) -> list[Path]:
    s = Session(args)
    x = s.images(args.images)
    results = _invariance(s, x, args.layers, args.transforms, args.target)
    picture = figures.invariance_figure(results, x, s.mean, s.std, categories=s.loaded.categories)
    summary = [{"transform": r.transform, "amounts": r.amounts.tolist(), "layers": r.layers,
                "distance": r.distance.tolist(), "probability": r.probability.tolist(), "target": r.target.tolist(),
                "images": [str(p) for p in args.images]} for r in results]
    (s.out / "invariance.json").write_text(json.dumps(summary) + "\n")
    return [s.save(picture, "invariance.png")]


def _box(text: str) -> tuple[int, int, int, int]:
    try:
        top, left, height, width = (int(v) for v in text.split(","))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"a box is TOP,LEFT,HEIGHT,WIDTH in input pixels, got {text!r}") from error
    return top, left, height, width


def correspondence_command(args: argparse.Namespace) -> list[Path]:
    s = Session(args)
    x = s.images(args.images)
    if len(args.boxes) != x.shape[0]:
        raise InputError(f"give one --boxes entry per image: {x.shape[0]} images, {len(args.boxes)} boxes")
    boxes = torch.tensor(args.boxes)
    names = [s.dn.layer_name(layer) for layer in args.layers]
    clean = s.dn.activations(x, names)  # one unoccluded pass for the parts and every random box set
    parts = differences(s.dn, x, boxes, names, fill=args.fill, reference=clean)
    randoms = [differences(s.dn, x, random_boxes(x, boxes, seed=seed), names, fill=args.fill, reference=clean)
               for seed in range(args.random)]
    rows = []
    for layer, name in zip(args.layers, names, strict=True):
        score = disagreement(parts[name])
        baseline = torch.tensor([disagreement(r[name]) for r in randoms])
        rows.append({"layer": layer, "parts": score, "random mean": float(baseline.mean()),
                     "random std": float(baseline.std()) if baseline.numel() > 1 else 0.0, "random seeds": args.random})
        print(f"{layer}: parts {score:.4f}, random boxes {float(baseline.mean()):.4f} "
              f"(std {rows[-1]['random std']:.4f} over {args.random} seeds); lower means more consistent")
    (s.out / "correspondence.json").write_text(json.dumps(rows, indent=2) + "\n")
    picture = figures.boxes_figure(x, boxes, s.mean, s.std)
    return [s.save(picture, "correspondence.png")]


def _checkpoint_models(s: Session, paths: Sequence[Path]) -> list[torch.nn.Module]:
    return [_load(s.args, checkpoint=path).model.to(s.device).eval() for path in paths]


def _evolution(s: Session, x: torch.Tensor, layer: str, channels: Sequence[int] | None, models: Sequence[torch.nn.Module],
               labels: Sequence[str], shown: int) -> Path:
    if channels is None:  # the channels strongest under the last checkpoint
        final = DeconvNet(models[-1], rule=s.args.rule)
        strongest = final.activations(x, [layer])[final.layer_name(layer)].amax(dim=(0, 2, 3))
        channels = torch.argsort(strongest, descending=True)[:shown].sort().values.tolist()
    result = evolution([DeconvNet(m, rule=s.args.rule) for m in models], x, layer, channels, labels=labels,
                       batch_size=s.args.batch_size, progress=tqdm)
    picture = figures.evolution_figure(result, s.dn.receptive_field(layer), scale=s.scale)
    return s.save(picture, f"evolution-{slug(layer)}.png")


def evolution_command(args: argparse.Namespace) -> list[Path]:
    s = Session(args)
    x = s.images(image_files(args.folder))
    if args.checkpoints:
        models, labels = _checkpoint_models(s, args.checkpoints), [Path(p).stem for p in args.checkpoints]
    elif args.model == "shapes":
        steps = list(EVOLUTION_STEPS)
        models, labels = [shapes_net_at(step).to(s.device) for step in steps], [f"step {step}" for step in steps]
    else:
        raise InputError("give --checkpoints (state dicts of the model, oldest first); only --model shapes ships its own")
    return [_evolution(s, x, args.layer, args.channels, models, labels, args.show)]


def filters_command(args: argparse.Namespace) -> list[Path]:
    s = Session(args)
    return _filters(s, args.layer, args.max_rms, slug(args.model))


def _filters(s: Session, layer: str | None, max_rms: float | None, name: str) -> list[Path]:
    found, weight = first_conv(s.model, layer)
    written = [s.save(figures.stack_pictures([_caption(f"{name} {found}: {weight.shape[0]} filters "
                                                       f"{weight.shape[2]}x{weight.shape[3]}, one contrast for all "
                                                       "(labels: index: RMS)"), filters_figure(weight, shared=True)]),
                      f"filters-{name}.png")]
    if max_rms is not None:
        fixed = renormalize_filters(weight, max_rms)
        changed = int((fixed != weight).flatten(1).any(dim=1).sum())
        bound = float(weight.abs().max())
        both = figures.stack_pictures([
            _caption(f"{name} {found} as trained"), filters_figure(weight, shared=True, bound=bound),
            _caption(f"renormalised: the {changed} filters with RMS over {max_rms:.3g} scaled down to it "
                     "(the same contrast as above)"),
            filters_figure(fixed, shared=True, bound=bound),
        ])
        written.append(s.save(both, f"filters-{name}-renormalized.png"))
    return written


def sanity_command(args: argparse.Namespace) -> list[Path]:
    s = Session(args)
    x = s.images(args.images)
    return _sanity(s, x, rules=args.rules, steps=args.steps, order=args.order, curve_steps=args.curve_steps,
                   occluder=args.occluder)


def _sanity(s: Session, x: torch.Tensor, *, rules: Sequence[str] = RULES, steps: int = 8, order: str = "cascading",
            curve_steps: int = 32, occluder: int | None = None, prefix: str = "") -> list[Path]:
    """Run the three sanity checks on x, write their figures and ``sanity.json``, print a summary."""
    randomized = model_randomization(s.dn, x, rules=rules, order=order, steps=steps)
    classes = class_sensitivity(s.dn, x, rules=rules)
    curves = faithfulness(s.dn, x, target=randomized.target, rules=rules, steps=curve_steps, occluder=occluder)
    shown = s.shown(x)
    written = [
        s.save(sanity_pictures.randomization_figure(randomized, shown), f"{prefix}randomization.png"),
        s.save(sanity_pictures.class_sensitivity_figure(classes, shown, s.loaded.categories), f"{prefix}class-sensitivity.png"),
        s.save(sanity_pictures.curves_figure(curves), f"{prefix}deletion-insertion.png"),
    ]
    faithful = curves.summary()
    report = {
        "model": _title(s.args), "images": s.names[: len(x)], "targets": randomized.target.tolist(),
        "target_names": [s.loaded.label(int(c)) for c in randomized.target], "randomization_order": order,
        "rules": {rule: {"randomization": randomized.summary()[rule], "class_sensitivity": classes.summary()[rule],
                         **faithful[rule]} for rule in rules},
        "baselines": {name: faithful[name] for name in ("occlusion", "random", "centre")},
    }
    path = s.out / f"{prefix}sanity.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {path}")
    print(f"{'':<10} {'Spearman after all':>18} {'SSIM after all':>15} {'vs 2nd class':>13} {'deletion AUC':>13} "
          f"{'insertion AUC':>14}")
    for rule in rules:
        last = report["rules"][rule]["randomization"][-1]
        print(f"{rule:<10} {last['spearman']['mean']:>18.2f} {last['ssim']['mean']:>15.2f} "
              f"{report['rules'][rule]['class_sensitivity']['second']['spearman']['mean']:>13.2f} "
              f"{faithful[rule]['deletion_auc']['mean']:>13.3f} {faithful[rule]['insertion_auc']['mean']:>14.3f}")
    for name in ("occlusion", "random", "centre"):
        print(f"{name:<10} {'':>18} {'':>15} {'':>13} {faithful[name]['deletion_auc']['mean']:>13.3f} "
              f"{faithful[name]['insertion_auc']['mean']:>14.3f}")
    return [*written, path]


_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def explorer_for(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The :class:`deconvnet.serve.Explorer` that ``deconvnet serve`` runs, from its arguments."""
    from .serve import Explorer
    from .shapes import held_out_samples

    for option in ("cache_mb", "max_upload_mb", "max_positions"):
        value = getattr(args, option)
        if value < 1:
            raise InputError(f"--{option.replace('_', '-')} must be at least 1, got {value}")
    device = _device(args.device)
    loaded = _load(args)
    for line in describe(loaded):
        print(f"deconvnet serve: {line}")
    loaded = replace(loaded, model=loaded.model.to(device))
    return Explorer(loaded, name=_title(args), rule=args.rule, rectifiers=args.rectifiers, atlas=args.atlas,
                    cache_bytes=args.cache_mb << 20, max_upload_bytes=args.max_upload_mb << 20,
                    max_positions=args.max_positions,
                    samples=held_out_samples() if args.model == "shapes" else None)


def serve_command(args: argparse.Namespace) -> list[Path]:
    """Load the model and serve the explorer until interrupted."""
    try:
        import uvicorn

        from .serve.app import create_app
    except ImportError as error:
        raise InputError(f'the explorer needs the serve extra: pip install "deconvnet[serve]" ({error})') from error
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port must be 0..65535, got {args.port}")
    explorer = explorer_for(args)
    if args.host not in _LOOPBACK:
        print(f"deconvnet serve: listening on {args.host}, not only this machine: anyone who can reach port "
              f"{args.port} can upload images and use {args.model}")
    print(f"deconvnet serve: {args.model} on {explorer.dn.device}, {len(explorer.layers)} layers with feature maps; "
          f"open http://{'localhost' if args.host in _LOOPBACK else args.host}:{args.port}/ (API: /docs)")
    if explorer.atlas is not None:
        print(f"deconvnet serve: atlas {args.atlas} ({len(explorer.atlas.layers)} layers) at /atlas/")
    uvicorn.run(create_app(explorer), host=args.host, port=args.port, log_level="warning")
    return []
