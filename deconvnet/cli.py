"""The ``deconvnet`` command line: the paper's figures for a model and a folder of images.

    deconvnet info                      the model, checkpoint, classes, preprocessing and layers a run uses
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
    deconvnet serve [--atlas SITE]      a live explorer in the browser: classes, layers, units, occlusion
    deconvnet demo                      all of the above: a real ImageNet model on real photos,
                                        then the bundled ShapesNet

Models (--model): the bundled 'shapes' and 'efficientnet-lite0', torchvision names, timm:NAME,
Hugging Face folders or cached hub ids, module:factory. Your own weights: --checkpoint (the head's
size read from it), --labels for class names, --input-size/--resize/--mean/--std to match your
training. Errors end with a short message and exit 1.

This module only parses and dispatches: what each command does is in :mod:`deconvnet.commands`,
the demo in :mod:`deconvnet.demo`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .analysis.invariance import TRANSFORMS
from .commands import (
    _box,
    atlas_command,
    channels_command,
    classes_command,
    correspondence_command,
    evolution_command,
    filters_command,
    info_command,
    invariance_command,
    serve_command,
    layers_command,
    occlusion_command,
    sanity_command,
    top9_command,
)
from .demo import demo_command
from .errors import DeconvnetError
from .loading import MODEL_HELP


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deconvnet", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    commands = parser.add_subparsers(dest="command", required=True)

    def model_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", default="shapes", help=f"{MODEL_HELP} (default: shapes)")
        p.add_argument("--weights", default=None,
                       help="torchvision weights name or DEFAULT (downloads); timm: DEFAULT, from the local cache")
        p.add_argument("--checkpoint", type=Path, default=None,
                       help="your trained weights: a state dict (.pt, .pth, .ckpt, .bin; plain, under 'state_dict', "
                            "'model' or 'model_state_dict', with module./model./_orig_mod. prefixes) or .safetensors; "
                            "the head's size is read from it")
        p.add_argument("--num-classes", type=int, default=None, help="the head's size, where the checkpoint does not tell")
        p.add_argument("--labels", type=Path, default=None,
                       help="class names: one per line, a JSON list, or JSON {index: name} (default: the checkpoint's, "
                            "the model's config's or the pretrained weights')")
        p.add_argument("--input-size", type=int, nargs="+", default=None, metavar="PX",
                       help="the model's input side, or HEIGHT WIDTH (default: the model's own preprocessing)")
        p.add_argument("--resize", type=int, nargs="+", default=None, metavar="PX",
                       help="resize the shorter side to this before the centre crop, or HEIGHT WIDTH to squash")
        p.add_argument("--mean", type=float, nargs=3, default=None, help="per-channel normalisation mean")
        p.add_argument("--std", type=float, nargs=3, default=None, help="per-channel normalisation std")
        p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1")
        p.add_argument("--rule", default="deconvnet", choices=["deconvnet", "guided", "gradient"],
                       help="what the mirror does at rectifiers (default: deconvnet)")
        p.add_argument("--rectifiers", default="all", choices=["all", "relu"],
                       help="all: the whole ReLU family takes the rule; relu: ReLU alone, as Captum")

    def show_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--show", choices=["planes", "frames"], default=None,
                       help="volumes and clips: three orthogonal planes, or a strip of frames (default: frames for "
                            "three channels, else planes)")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p = commands.add_parser(name, help=help, description=help)
        model_options(p)
        p.add_argument("--batch-size", type=int, default=32)
        p.add_argument("--out", type=Path, default=Path("deconvnet-out"), help="output folder")
        return p

    p = commands.add_parser("info", help="what a run would feed and read: model, checkpoint, classes, preprocessing, "
                                         "layers with their shapes",
                            description="Print the model (and its source), the checkpoint, the class names, the "
                                        "preprocessing, the input size, every layer one can name with its output "
                                        "shape, and the layers reversed by their exact vector-Jacobian product.")
    model_options(p)
    p.add_argument("--example", type=Path, default=None,
                   help="an input (an image; a .pt or .npy tensor for signal and volume models) to probe the "
                        "layers' shapes at")
    p.set_defaults(run=info_command)

    p = command("classes", "class reconstructions of the top-k predicted (or given) classes")
    p.add_argument("images", type=Path, nargs="+",
                   help="image files; for signal and volume models, tensor files (.pt, .npy), each one input or a batch")
    p.add_argument("--top-k", type=int, default=3)
    show_option(p)
    p.add_argument("--classes", type=int, nargs="+", default=None, help="these classes instead of the top-k")
    p.add_argument("--region", type=Path, default=None,
                   help="segmentation models: explain every class over this mask (an image whose non-black pixels "
                        "are the region, or a .pt/.npy tensor of weights) instead of each class's predicted region")
    p.set_defaults(run=classes_command)

    p = command("layers", "the strongest unit of every layer (or of --layers) of one image")
    p.add_argument("image", type=Path, help="an image file; for signal and volume models, a tensor file")
    p.add_argument("--layers", nargs="+", default=None)
    show_option(p)
    p.set_defaults(run=layers_command)

    p = command("channels", "every channel of one layer for one image")
    p.add_argument("image", type=Path, help="an image file; for signal and volume models, a tensor file")
    p.add_argument("--layer", required=True)
    p.add_argument("--channels", type=int, nargs="+", default=None)
    show_option(p)
    p.set_defaults(run=channels_command)

    p = command("top9", "the k strongest units per channel over an image folder (the paper's Fig. 2)")
    p.add_argument("folder", type=Path,
                   help="a folder of images; for signal and volume models, of tensor files (.pt, .npy), each one "
                        "input or a batch")
    p.add_argument("--layers", nargs="+", required=True)
    p.add_argument("--k", type=int, default=9)
    p.add_argument("--channels", type=int, default=16, help="how many channels to draw per layer")
    p.set_defaults(run=top9_command)

    p = command("atlas", "a browsable site of every channel's k strongest units over a dataset (the paper's Fig. 2 "
                         "for every unit); run under torchrun to shard it over processes")
    p.set_defaults(out=Path("deconvnet-atlas"), run=atlas_command)
    p.add_argument("data", type=Path, help="a folder of images (searched recursively); for signal and volume models, "
                                           "of tensor files (.pt, .npy), each one input or a batch")
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

    p = command("sanity", "can the maps be trusted: model-parameter randomization, class sensitivity, deletion and "
                          "insertion curves, for each rule (writes figures and sanity.json)")
    p.add_argument("images", type=Path, nargs="+")
    p.add_argument("--rules", nargs="+", default=["deconvnet", "guided", "gradient"],
                   choices=["deconvnet", "guided", "gradient"])
    p.add_argument("--steps", type=int, default=8, help="randomization steps: groups of layers, top first (default 8)")
    p.add_argument("--order", default="cascading", choices=["cascading", "independent"],
                   help="randomize cumulatively from the top, or one group at a time (default cascading)")
    p.add_argument("--curve-steps", type=int, default=32, help="points of the deletion and insertion curves (default 32)")
    p.add_argument("--occluder", type=int, default=None,
                   help="occluder side for the occlusion baseline (default: an eighth of the image)")
    p.set_defaults(run=sanity_command)

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

    p = commands.add_parser("serve", help="a live explorer in the browser (the serve extra)",
                            description="Serve a page and a JSON API to explore one model: upload an image, click a "
                                        "class, a layer, a channel or a unit, run occlusion (API docs at /docs).")
    model_options(p)
    p.add_argument("--atlas", type=Path, default=None, help="a site of the same model from `deconvnet atlas`")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--cache-mb", type=int, default=1024, help="memory for traced images, least recently used out")
    p.add_argument("--max-upload-mb", type=int, default=20, help="largest upload accepted (default 20)")
    p.add_argument("--max-positions", type=int, default=4096, help="most occluder positions per occlusion run")
    p.set_defaults(run=serve_command)

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


_ERROR_LINES = 6


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (DeconvnetError, OSError) as error:
        # Messages are a line, or a few for a checkpoint that does not fit; never a wall of keys.
        lines = str(error).splitlines()[:_ERROR_LINES] if str(error) else [type(error).__name__]
        print(f"deconvnet: error: {lines[0]}", *lines[1:], sep="\n", file=sys.stderr)
        return 1
    return 0
