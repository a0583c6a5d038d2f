"""``python -m benchmarks gpu``: every GPU row of docs/guides/gpu.md in one command (a few minutes on one
GPU), written to ``benchmarks/results/gpu.md`` and ``gpu.json`` with the card, torch, and the
precision settings in force.

Rows: all 1000 classes of one image (the plain call, repeated with a fresh image: ours fp32 and
bf16 vs Captum's Deconvolution in chunks of 100 vs the forward floor); one class of one fresh
image (ours vs Captum); occlusion (16 px, stride 8: incremental and whole vs Captum's Occlusion,
256 positions per eval); mining top-9 vs the plain forward's throughput. Timings are medians of
interleaved runs after a warm-up (``torch.cuda.synchronize`` around each); outputs are checked
against Captum (or fp32) to the precision in force before any time counts. ``--device cpu
--size 64 --quick`` runs the same code on a CPU (16 classes instead of all), to check the
script, not to measure.
"""

from __future__ import annotations

import warnings

import torch

from deconvnet import DeconvNet

from .everyday import bench_everyday
from .harness import _captum_comparable, _row, checked, relative_error, timed
from .mining import bench_mining
from .occlusion import bench_occlusion

CHUNK = 100  # Captum's targets per call, and the floor's images per forward


def _captum_all(model: torch.nn.Module, x: torch.Tensor, classes: int) -> torch.Tensor:
    from captum.attr import Deconvolution

    parts = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lo in range(0, classes, CHUNK):
            targets = list(range(lo, min(lo + CHUNK, classes)))
            parts.append(Deconvolution(model).attribute(x.repeat(len(targets), 1, 1, 1), target=targets))
    return torch.cat(parts)


def bench_all_classes(model_name: str, size: int, repeats: int, device: torch.device, limit: int | None = None) -> dict:
    """Every class (or the first ``limit``) of one fresh image per call: ours (fp32, and the
    mirror in bf16) vs Captum in chunks of 100 vs the forward of as many images (no grad, chunks
    of 100)."""
    model, label = _captum_comparable(model_name, device)
    images = [torch.randn(1, 3, size, size, device=device) for _ in range(repeats + 1)]
    dn = DeconvNet(model, rectifiers="relu")
    low = DeconvNet(model, rectifiers="relu", mirror_dtype=torch.bfloat16)
    classes = min(dn.trace(images[0]).output.shape[1], limit or 1 << 30)
    targets = list(range(classes))
    ours = dn.reconstruct_classes(images[0], targets)[0]
    error = checked(device, relative_error(ours, _captum_all(model, images[0], classes)), f"all classes {model_name}")
    reduced = low.reconstruct_classes(images[0], targets)[0].float()
    bf16_l2 = ((reduced - ours).norm() / ours.norm()).item()
    calls = {"fp32": 0, "bf16": 0}

    def image(kind: str) -> torch.Tensor:
        calls[kind] += 1
        return images[calls[kind] % len(images)]

    def floor() -> None:
        with torch.no_grad():
            for lo in range(0, classes, CHUNK):
                model(images[0].expand(min(CHUNK, classes - lo), -1, -1, -1))

    seconds = timed({
        "deconvnet fp32": lambda: dn.reconstruct_classes(image("fp32"), targets),
        "deconvnet bf16": lambda: low.reconstruct_classes(image("bf16"), targets),
        "captum": lambda: _captum_all(model, images[1], classes),
        "forward floor": floor,
    }, repeats, device)
    peak = torch.cuda.max_memory_allocated(device) / 1024**3 if device.type == "cuda" else float("nan")
    return _row("all classes", label, size, classes, device, torch.float32, seconds,
                **{"captum / fp32": seconds["captum"] / seconds["deconvnet fp32"],
                   "fp32 / floor": seconds["deconvnet fp32"] / seconds["forward floor"],
                   "fp32 / bf16": seconds["deconvnet fp32"] / seconds["deconvnet bf16"],
                   "relative L2 error": bf16_l2, "relative error": error, "peak GiB": peak})


def settings(device: torch.device) -> str:
    """The card, torch and the precision switches that change the numbers."""
    if device.type != "cuda":
        return f"CPU run (a check of the script, not a GPU measurement), torch {torch.__version__}"
    return (f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
            f"cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}, "
            f"matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32}, cudnn.benchmark={torch.backends.cudnn.benchmark}")


def run(device: torch.device, size: int, repeats: int, quick: bool, emit) -> str:  # type: ignore[no-untyped-def]
    """Emit every row; returns the settings line."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # what GPU users set; the numbers were taken so
    models = ["vgg16", "resnet50"] if quick else ["vgg16", "resnet50", "densenet121", "mobilenet_v2"]
    for name in models:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        emit(bench_all_classes(name, size, repeats, device, None if device.type == "cuda" else 16))
    for name in models:
        emit(bench_everyday(name, size, max(repeats, 5), device))
    for name in ["efficientnet-lite0"] if quick else ["efficientnet-lite0", "vgg16"]:
        emit(bench_occlusion(name, 16, 8, size, device, per_evals=(256,)))
    emit(bench_mining("shapes", ["features.8", "features.13"], 256 if quick else 1024, 64, repeats, device))
    if not quick:
        emit(bench_mining("alexnet", ["features.4", "features.7", "features.11"], 256, 32, repeats, device))
    return settings(device)

