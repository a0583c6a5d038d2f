"""Signals and volumes: deconvnet's 1-D and 3-D mirrors side by side with Captum and MONAI.

    python -m benchmarks volumes [--size 96] [--repeats 2]

Rows:
- MONAI's 3-D DenseNet121 (random weights, one channel in, 8 classes out) on one volume of
  ``--size``^3 voxels: all 8 classes with the deconvnet rule against Captum's ``Deconvolution``
  (the volume repeated 8 times, one call), the same with the guided rule against MONAI's
  ``GuidedBackpropGrad`` (one call per class: it takes one class index), and one class against
  Captum; with the forward floor (one forward pass of the batch the call needs).
- A 1-D ResNet-style net on one 4096-sample signal, 64 classes, against Captum.

- Peak memory of the all-classes plan (8 classes of DenseNet121) on one 128^3 volume, in a fresh
  process: what the call adds above the trace it is given (CPU: resident memory, its peak reset
  after the trace; CUDA: allocated memory), against the planner's budget, with the chunk it
  planned; beside it, what Captum's 8-class Deconvolution adds above the loaded model.
- Occlusion of one volume by an 8-voxel cube (stride 8, no overlap) with MONAI's DenseNet121:
  deconvnet's incremental occlusion against Captum's ``Occlusion`` (the same windows, on
  softmax probabilities: its per-voxel map must equal ours) and MONAI's
  ``OcclusionSensitivity`` (``overlap=0``, fill 0; its windows are centred on voxels and cover
  the edges, so its map is timed, not compared).
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
from torch import nn

from deconvnet import DeconvNet

from .harness import TABLES, _row, added_peak, checked, machine, relative_error, timed


def _densenet(classes: int, device: torch.device) -> nn.Module:
    from monai.networks.nets import DenseNet121

    torch.manual_seed(0)
    return DenseNet121(spatial_dims=3, in_channels=1, out_channels=classes).eval().to(device)


def signal_net(classes: int) -> nn.Module:
    """A 1-D ResNet-style classifier (ECG-sized): strided stem, max-pool, three residual stages."""

    class Block(nn.Module):
        def __init__(self, channels: int, stride: int) -> None:
            super().__init__()
            inner = channels * stride
            self.conv1 = nn.Conv1d(channels, inner, 7, stride=stride, padding=3, bias=False)
            self.bn1, self.relu = nn.BatchNorm1d(inner), nn.ReLU()
            self.conv2 = nn.Conv1d(inner, inner, 7, padding=3, bias=False)
            self.bn2 = nn.BatchNorm1d(inner)
            self.skip = nn.Sequential(nn.Conv1d(channels, inner, 1, stride=stride, bias=False), nn.BatchNorm1d(inner))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + self.skip(x))

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(1, 32, 15, stride=2, padding=7, bias=False), nn.BatchNorm1d(32), nn.ReLU(), nn.MaxPool1d(3, 2, 1),
        Block(32, 1), Block(32, 2), Block(64, 2), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(128, classes),
    ).eval()


def _captum(x: torch.Tensor, model: nn.Module, classes: list[int], rule: str = "deconvnet") -> torch.Tensor:
    from captum.attr import Deconvolution, GuidedBackprop

    method = Deconvolution if rule == "deconvnet" else GuidedBackprop
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return method(model).attribute(x.repeat(len(classes), *[1] * (x.dim() - 1)), target=classes)


def _monai_guided(x: torch.Tensor, model: nn.Module, classes: list[int]) -> torch.Tensor:
    """MONAI's GuidedBackpropGrad, class by class (it swaps the model's ReLUs: run on a copy)."""
    from monai.visualize import GuidedBackpropGrad

    guided = GuidedBackpropGrad(model)
    # It sets requires_grad on the tensor it is given and reads its .grad: a fresh leaf per call.
    return torch.cat([guided(x.detach().clone(), index=c) for c in classes])


def bench_volume(size: int, classes: int, repeats: int, device: torch.device) -> list[dict]:
    model = _densenet(classes, device)
    x = torch.randn(1, 1, size, size, size, device=device)
    targets = list(range(classes))
    rows = []
    for rule in ("deconvnet", "guided"):
        dn = DeconvNet(model, rule=rule)
        ours = dn.reconstruct_classes(x, targets)[0]
        if rule == "deconvnet":
            other_name = "captum Deconvolution"
            error = checked(device, relative_error(ours, _captum(x, model, targets)), "volume classes, Captum")

            def other() -> torch.Tensor:
                return _captum(x, model, targets)
        else:
            other_name = "monai GuidedBackpropGrad"
            copied = copy.deepcopy(model)
            error = checked(device, relative_error(ours, _monai_guided(x, copied, targets)), "volume guided, MONAI")

            def other() -> torch.Tensor:
                return _monai_guided(x, copied, targets)

        def floor() -> None:
            with torch.no_grad():
                model(x.repeat(classes, 1, 1, 1, 1))

        seconds = timed({"deconvnet": lambda: dn.reconstruct_classes(x, targets), other_name: other,
                         "forward floor": floor}, repeats, device)
        rows.append(_row(f"volume classes ({rule})", "monai DenseNet121 3-D", size, classes, device, torch.float32,
                         seconds, **{f"{other_name} / deconvnet": seconds[other_name] / seconds["deconvnet"],
                                     "deconvnet / floor": seconds["deconvnet"] / seconds["forward floor"],
                                     "relative error": error}))
    dn = DeconvNet(model)
    error = checked(device, relative_error(dn.reconstruct_classes(x, [3])[0], _captum(x, model, [3])), "volume one class")

    def once() -> None:
        with torch.no_grad():
            model(x)

    seconds = timed({"deconvnet": lambda: dn.reconstruct_classes(x, [3]),
                     "captum Deconvolution": lambda: _captum(x, model, [3]), "forward floor": once}, repeats, device)
    rows.append(_row("volume one class", "monai DenseNet121 3-D", size, 1, device, torch.float32, seconds,
                     **{"captum Deconvolution / deconvnet": seconds["captum Deconvolution"] / seconds["deconvnet"],
                        "deconvnet / floor": seconds["deconvnet"] / seconds["forward floor"], "relative error": error}))
    return rows


def bench_signal(length: int, classes: int, repeats: int, device: torch.device) -> dict:
    model = signal_net(classes).to(device)
    x = torch.randn(1, 1, length, device=device)
    targets = list(range(classes))
    dn = DeconvNet(model)
    error = checked(device, relative_error(dn.reconstruct_classes(x, targets)[0], _captum(x, model, targets)),
                    "signal classes")

    def floor() -> None:
        with torch.no_grad():
            model(x.repeat(classes, 1, 1))

    seconds = timed({"deconvnet": lambda: dn.reconstruct_classes(x, targets),
                     "captum Deconvolution": lambda: _captum(x, model, targets), "forward floor": floor},
                    repeats, device)
    return _row("signal classes", "1-D ResNet-style", length, classes, device, torch.float32, seconds,
                **{"captum Deconvolution / deconvnet": seconds["captum Deconvolution"] / seconds["deconvnet"],
                   "deconvnet / floor": seconds["deconvnet"] / seconds["forward floor"], "relative error": error})


def bench_volume_occlusion(size: int, cube: int, repeats: int, device: torch.device) -> dict:
    from captum.attr import Occlusion
    from monai.visualize import OcclusionSensitivity

    from deconvnet.analysis.occlusion import occlusion

    model = _densenet(4, device)
    x = torch.randn(1, 1, size, size, size, device=device)
    with torch.no_grad():
        target = int(model(x).argmax())
    dn = DeconvNet(model)

    def ours() -> torch.Tensor:
        return occlusion(dn, x, size=cube, stride=cube, target=target).probability

    def probabilities(inputs: torch.Tensor) -> torch.Tensor:
        return model(inputs).softmax(-1)

    def captum() -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Occlusion(probabilities).attribute(x, sliding_window_shapes=(1, cube, cube, cube),
                                                      strides=(1, cube, cube, cube), target=target, baselines=0.0,
                                                      perturbations_per_eval=16)

    monai = OcclusionSensitivity(model, mask_size=cube, n_batch=16, verbose=False, mode=0.0, overlap=0.0)

    def monai_map() -> torch.Tensor:
        with torch.no_grad():
            return monai(x)[0]

    with torch.no_grad():
        base = probabilities(x)[0, target]
        grid = ours()[0]
    # Captum's map: per voxel, the drop in P(target) with the cube over it (one window per voxel here)
    expected = (base - grid).repeat_interleave(cube, 0).repeat_interleave(cube, 1).repeat_interleave(cube, 2)
    error = checked(device, relative_error(expected, captum()[0, 0]), "volume occlusion, Captum")
    seconds = timed({"deconvnet": ours, "captum Occlusion": captum, "monai OcclusionSensitivity": monai_map},
                    repeats, device)
    positions = (size // cube) ** 3
    return _row("volume occlusion", f"monai DenseNet121 3-D, {cube}^3 cube, {positions} positions", size, 1, device,
                torch.float32, seconds,
                **{"captum / deconvnet": seconds["captum Occlusion"] / seconds["deconvnet"],
                   "monai / deconvnet": seconds["monai OcclusionSensitivity"] / seconds["deconvnet"],
                   "relative error": error})


def _memory_worker(size: int, classes: int, which: str) -> None:
    """Run in a fresh process: the peak one all-classes call adds, as one line of JSON."""
    from deconvnet.chunks import budget, mirror_chunk

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = _densenet(classes, device)
    x = torch.randn(1, 1, size, size, size, device=device)
    targets = list(range(classes))
    result: dict[str, object] = {"machine": machine(device)}
    if which == "deconvnet":
        dn = DeconvNet(model)
        trace = dn.trace(x)
        start = time.perf_counter()
        result["added_bytes"] = added_peak(lambda: dn.reconstruct_classes(trace, targets), device)
        result["seconds"] = time.perf_counter() - start
        result["budget_bytes"] = budget(dn.memory_budget, x.device)
        result["chunk"] = mirror_chunk(dn.mirror, trace, dn.network.steps[dn.network.output].name,
                                       int(result["budget_bytes"]), classes)  # type: ignore[call-overload]
        result["result_bytes"] = classes * x.numel() * x.element_size()
    else:
        start = time.perf_counter()
        result["added_bytes"] = added_peak(lambda: _captum(x, model, targets), device)
        result["seconds"] = time.perf_counter() - start
    print(json.dumps(result))


def bench_volume_memory(size: int, classes: int) -> dict:
    """:func:`_memory_worker` for deconvnet and for Captum, each in its own process."""
    measured = {}
    for which in ("deconvnet", "captum"):
        code = f"from benchmarks.volumes import _memory_worker; _memory_worker({size}, {classes}, {which!r})"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent.parent)
        measured[which] = json.loads(done.stdout.strip().splitlines()[-1])
    ours, captum = measured["deconvnet"], measured["captum"]
    return {"benchmark": "volume memory", "model": "monai DenseNet121 3-D", "size": size, "targets": classes,
            "dtype": "float32", "torch": torch.__version__, "machine": ours["machine"],
            "seconds": {"deconvnet": ours["seconds"], "captum Deconvolution": captum["seconds"]},
            "added_bytes": ours["added_bytes"], "captum_added_bytes": captum["added_bytes"],
            "budget_bytes": ours["budget_bytes"], "chunk": ours["chunk"], "result_bytes": ours["result_bytes"]}


def markdown(rows: list[dict]) -> list[str]:
    """The memory rows' own table (the others are the shared timing tables)."""
    lines = ["| volume memory | px | K | added at peak (deconvnet, above its trace) | planner budget | chunk planned "
             "| result | added at peak (captum Deconvolution, above the model) | seconds deconvnet, captum "
             "| dtype | machine | torch |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    mib = 2**20
    for r in rows:
        lines.append(f"| {r['model']} | {r['size']} | {r['targets']} | {r['added_bytes'] / mib:.0f} MiB | "
                     f"{r['budget_bytes'] / mib:.0f} MiB | {r['chunk']} | {r['result_bytes'] / mib:.0f} MiB | "
                     f"{r['captum_added_bytes'] / mib:.0f} MiB | {r['seconds']['deconvnet']:.1f}, "
                     f"{r['seconds']['captum Deconvolution']:.1f} | {r['dtype']} | {r['machine']} | {r['torch']} |")
    return [*lines, ""]


TABLES["volume memory"] = markdown


def run(device: torch.device, size: int, repeats: int, emit) -> None:  # type: ignore[no-untyped-def]
    for row in bench_volume(size, 8, repeats, device):
        emit(row)
    emit(bench_signal(4096, 64, max(repeats, 5), device))
    emit(bench_volume_occlusion(min(size, 48), 8, max(repeats - 1, 1), device))
    emit(bench_volume_memory(128, 8))
