"""Segmentation models: every class's predicted region of one input, deconvnet against Captum
with its segmentation tutorial's wrapper and pytorch-grad-cam, one target at a time as they run.

    python -m benchmarks segmentation [--repeats 3]

Rows:
- segmentation_models_pytorch ``Unet`` (resnet18, random weights, 8 classes) on one 256 px
  image, and MONAI's 3-D ``UNet`` (ReLU activations, so that Captum's ReLU hooks and our rule see
  the same rectifiers; 4 classes) on one 96^3 volume: each class the model predicts somewhere,
  over its predicted region, with the deconvnet rule against Captum's ``Deconvolution`` and the
  guided rule against Captum's ``GuidedBackprop`` (and, for the 2-D model, pytorch-grad-cam's
  ``GuidedBackpropReLUModel``; it takes [C, H, W] images only). Captum and grad-cam run the
  tutorial's wrapper, ``(out * predicted mask).sum((2, 3...))``, once per class, as they take
  one target a call. The forward floor is one forward pass of the input repeated once per class.
- The peak memory one call for every class of MONAI's 3-D UNet on a 128^3 volume adds above its
  trace, in a fresh process, against the planner's budget.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from deconvnet import DeconvNet

from .harness import TABLES, _row, added_peak, checked, machine, relative_error, timed


class Masked(nn.Module):
    """Captum's segmentation tutorial's wrapper: each class's logits summed over the region the
    model predicted for the unperturbed input (fixed here, as the tutorial fixes ``out_max``)."""

    def __init__(self, model: nn.Module, predicted: Tensor) -> None:
        super().__init__()
        self.model = model
        self.predicted = predicted  # LongTensor[N, *S]

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x)
        mask = torch.zeros_like(out).scatter_(1, self.predicted[:, None], 1)
        return (out * mask).flatten(2).sum(dim=2)


def unet_2d(device: torch.device) -> nn.Module:
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return smp.Unet("resnet18", encoder_weights=None, classes=8).eval().to(device)


def unet_3d(device: torch.device) -> nn.Module:
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return UNet(3, 1, 4, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=2, act="RELU").eval().to(device)


def _captum(model: nn.Module, x: Tensor, classes: list[int], rule: str) -> Tensor:
    from captum.attr import Deconvolution, GuidedBackprop

    method = (Deconvolution if rule == "deconvnet" else GuidedBackprop)(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.stack([method.attribute(x, target=c) for c in classes], dim=1)


def _grad_cam(model: nn.Module, x: Tensor, classes: list[int]) -> Tensor:
    """pytorch-grad-cam's GuidedBackpropReLUModel, class by class (it swaps the model's ReLUs
    and puts new ones back: run on a copy). It returns [H, W, C] arrays of the first input."""
    from pytorch_grad_cam import GuidedBackpropReLUModel

    guided = GuidedBackpropReLUModel(model, device=x.device)
    maps = [torch.from_numpy(guided(x.detach().clone(), target_category=c)).permute(2, 0, 1) for c in classes]
    return torch.stack(maps)[None].to(x.device)


def bench_segmentation(name: str, make, shape: tuple[int, ...], repeats: int, device: torch.device) -> list[dict]:  # type: ignore[no-untyped-def]
    model = make(device)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        predicted = model(x).argmax(dim=1)
    wrapped = Masked(model, predicted)
    dn0 = DeconvNet(model)
    classes = [c for c, _ in dn0.predicted_classes(x)[0]]
    rows = []
    for rule in ("deconvnet", "guided"):
        dn = DeconvNet(model, rule=rule)

        def ours(dn: DeconvNet = dn) -> Tensor:
            return dn.reconstruct_classes(x, classes, region="predicted")

        theirs = {f"captum {'Deconvolution' if rule == 'deconvnet' else 'GuidedBackprop'}":
                  lambda rule=rule: _captum(wrapped, x, classes, rule)}
        if rule == "guided" and x.dim() == 4:
            copied = Masked(copy.deepcopy(model), predicted)
            theirs["grad-cam GuidedBackpropReLUModel"] = lambda: _grad_cam(copied, x, classes)
        errors = [checked(device, relative_error(ours(), other()), f"{name} {rule}, {label}")
                  for label, other in theirs.items()]

        def floor() -> None:
            with torch.no_grad():
                model(x.repeat(len(classes), *[1] * (x.dim() - 1)))

        seconds = timed({"deconvnet": ours, **theirs, "forward floor": floor}, repeats, device)
        ratios = {f"{label} / deconvnet": seconds[label] / seconds["deconvnet"] for label in theirs}
        rows.append(_row(f"segmentation {x.dim() - 2}-D, predicted regions ({rule})", name, shape[-1], len(classes), device,
                         torch.float32, seconds, **ratios,
                         **{"deconvnet / floor": seconds["deconvnet"] / seconds["forward floor"],
                            "relative error": max(errors)}))
    return rows


def _memory_worker(size: int) -> None:
    """Run in a fresh process: the peak one every-class call adds above its trace, as JSON."""
    from deconvnet.chunks import budget, mirror_chunk

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = unet_3d(device)
    x = torch.randn(1, 1, size, size, size, device=device)
    dn = DeconvNet(model)
    trace = dn.trace(x)
    classes = trace.output.shape[1]
    start = time.perf_counter()
    added = added_peak(lambda: dn.reconstruct_classes(trace, None, region="predicted"), device)
    seconds = time.perf_counter() - start
    limit = budget(dn.memory_budget, x.device)
    print(json.dumps({"added_bytes": added, "seconds": seconds, "budget_bytes": limit, "targets": classes,
                      "chunk": mirror_chunk(dn.mirror, trace, dn.network.steps[dn.network.output].name, limit, classes),
                      "result_bytes": classes * x.numel() * x.element_size(), "machine": machine(device)}))


def bench_memory(size: int) -> dict:
    code = f"from benchmarks.segmentation import _memory_worker; _memory_worker({size})"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).parent.parent)
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    return {"benchmark": "segmentation memory", "model": "monai UNet 3-D", "size": size, "dtype": "float32",
            "torch": torch.__version__, **measured}


def markdown(rows: list[dict]) -> list[str]:
    lines = ["| segmentation memory | px | K | added at peak (above its trace) | planner budget | chunk planned "
             "| result | seconds | dtype | machine | torch |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    mib = 2**20
    for r in rows:
        lines.append(f"| {r['model']} | {r['size']} | {r['targets']} | {r['added_bytes'] / mib:.0f} MiB | "
                     f"{r['budget_bytes'] / mib:.0f} MiB | {r['chunk']} | {r['result_bytes'] / mib:.0f} MiB | "
                     f"{r['seconds']:.1f} | {r['dtype']} | {r['machine']} | {r['torch']} |")
    return [*lines, ""]


TABLES["segmentation memory"] = markdown


def run(device: torch.device, repeats: int, emit) -> None:  # type: ignore[no-untyped-def]
    try:
        import pytorch_grad_cam  # noqa: F401
        import segmentation_models_pytorch  # noqa: F401
    except ImportError as error:
        raise SystemExit(f"python -m benchmarks segmentation needs {error.name}: pip install grad-cam "
                         "segmentation-models-pytorch (the test extra has the latter)") from error
    for row in bench_segmentation("smp Unet resnet18", unet_2d, (1, 3, 256, 256), repeats, device):
        emit(row)
    for row in bench_segmentation("monai UNet 3-D", unet_3d, (1, 1, 96, 96, 96), max(repeats - 1, 1), device):
        emit(row)
    emit(bench_memory(128))
