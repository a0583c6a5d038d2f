"""Print the supported-models table: every torchvision family and the tested timm families.

    python scripts/coverage.py            # Markdown table on stdout
    python scripts/coverage.py --zoo      # just the rows of the timm zoo (tests/test_timm_zoo.py)

Per family (its smallest model as pretrained weights build it, random weights, one image, the
sizes of ``tests/test_every_architecture.py``): how many layers the mirror reverses by hand,
which it reverses with the general VJP layer, and the relative error of the class
reconstructions (classes 0 and 7, all three rules) against the autograd oracle of
``tests/reference.py`` in float64 and, for ``rectifiers="relu"``, against Captum's
``Deconvolution`` in float32. Error = max |ours - reference| / max |reference|.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import torch
from captum.attr import Deconvolution

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from reference import classes_reference  # noqa: E402
from test_every_architecture import TIMM, TORCHVISION, _randomise_zero_heads, build  # noqa: E402

from deconvnet import DeconvNet  # noqa: E402

CLASSES = [0, 7]


def _error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours - reference).abs().max() / reference.abs().max()).item()


def row(label: str, model: torch.nn.Module, size: int) -> str:
    start = time.perf_counter()
    torch.manual_seed(0)
    model = model.eval()
    _randomise_zero_heads(model)
    x64 = torch.randn(1, 3, size, size, dtype=torch.float64)
    wide = model.double()
    errors = []
    for rule in ("deconvnet", "guided", "gradient"):
        dn = DeconvNet(wide, rule=rule)
        errors.append(_error(dn.reconstruct_classes(x64, CLASSES), classes_reference(wide, x64, CLASSES, rule)))
    general = dn.general_layers
    hand = len(dn.mirror) - len(general)
    narrow = model.float()
    x32 = x64.float()
    ours = DeconvNet(narrow, rectifiers="relu").reconstruct_classes(x32, CLASSES)
    try:
        captum = f"{_error(ours[0], Deconvolution(narrow).attribute(x32.repeat(len(CLASSES), 1, 1, 1), target=CLASSES)):.1e}"
    except Exception as error:  # Captum's hooks do not run on every model
        captum = f"Captum fails: {type(error).__name__}"
    kinds = sorted({repr(layer) for layer in dn.mirror if layer.source in general})
    what = ", ".join(kinds) if kinds else "none"
    print(f"{label}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return f"| {label} | {size} | {hand} | {len(general)} ({what}) | {max(errors):.1e} | {captum} |"


def main() -> None:
    warnings.simplefilter("ignore")
    import timm

    if "--zoo" in sys.argv:
        from test_timm_zoo import ZOO, create

        for name, size in ZOO.items():
            print(row(f"timm `{name}`", create(name, classes=10), size), flush=True)
        return
    print("| model | px | layers reversed by hand | general VJP layers | vs oracle, float64 (worst of 3 rules) "
          "| rectifiers=\"relu\" vs Captum Deconvolution, float32 |")
    print("|---|---|---|---|---|---|")
    for family, (name, options, size, _) in TORCHVISION.items():
        print(row(f"torchvision `{name}`" + (" (transform_input)" if options.get("transform_input") else ""),
                  build(family), size), flush=True)
    for name, size in TIMM.items():
        options = {"img_size": size} if name.startswith("vit_") else {}
        print(row(f"timm `{name}`", timm.create_model(name, pretrained=False, **options), size), flush=True)


if __name__ == "__main__":
    main()
