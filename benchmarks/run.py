"""Benchmark runner: measures deconvnet side by side with the alternatives in one process.

    python -m benchmarks classes --model vgg11 --targets 16

Every row times the methods interleaved (A, B, C, A, B, C, ...), reports the median of the
repeats and the ratios between them, and checks that the outputs agree before any time counts.
Results go to ``benchmarks/results/<name>.json`` and ``.md``, naming the machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision

from deconvnet import DeconvNet

RESULTS = Path(__file__).parent / "results"


def machine(device: torch.device) -> str:
    """The machine a row was measured on: CPU model and threads, or the GPU's name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {torch.get_num_threads()} threads"


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """max |ours - reference| / max |reference|."""
    scale = reference.abs().max().item()
    return (ours - reference).abs().max().item() / (scale or 1.0)


def timed(functions: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each function, run interleaved after one warm-up round."""
    samples: dict[str, list[float]] = {name: [] for name in functions}
    for round_ in range(repeats + 1):
        for name, function in functions.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            function()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if round_ > 0:
                samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def captum_classes(model: torch.nn.Module, x: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """Captum's Deconvolution at its best: the input repeated K times, one batched call."""
    from captum.attr import Deconvolution

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Deconvolution(model).attribute(x.repeat(len(classes), 1, 1, 1), target=classes)


def bench_classes(model_name: str, targets: int, size: int, repeats: int, device: torch.device) -> dict:
    """reconstruct_classes for K classes of one image vs Captum batched vs the forward floor."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, model_name)(weights=None).eval().to(device)
    x = torch.randn(1, 3, size, size, device=device)
    classes = list(range(targets))
    dn = DeconvNet(model)

    ours = dn.reconstruct_classes(x, classes)[0]
    theirs = captum_classes(model, x, classes)
    error = relative_error(ours, theirs)
    if error > 1e-4:
        raise SystemExit(f"outputs disagree: relative error {error:.2e} > 1e-4")

    def floor() -> None:
        with torch.no_grad():
            model(x.repeat(targets, 1, 1, 1))

    seconds = timed(
        {
            "deconvnet": lambda: dn.reconstruct_classes(x, classes),
            "captum": lambda: captum_classes(model, x, classes),
            "forward floor": floor,
        },
        repeats,
        device,
    )
    return {
        "benchmark": "classes",
        "model": model_name,
        "size": size,
        "targets": targets,
        "dtype": "float32",
        "machine": machine(device),
        "torch": torch.__version__,
        "seconds": seconds,
        "captum / deconvnet": seconds["captum"] / seconds["deconvnet"],
        "deconvnet / floor": seconds["deconvnet"] / seconds["forward floor"],
        "relative error vs captum": error,
    }


def markdown(rows: list[dict]) -> str:
    lines = [
        "| benchmark | model | px | K | deconvnet s | captum s | floor s | captum / deconvnet "
        "| deconvnet / floor | rel. error | dtype | machine | torch |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s = r["seconds"]
        lines.append(
            f"| {r['benchmark']} | {r['model']} | {r['size']} | {r['targets']} | "
            f"{s['deconvnet']:.3f} | {s['captum']:.3f} | {s['forward floor']:.3f} | "
            f"{r['captum / deconvnet']:.2f}x | {r['deconvnet / floor']:.2f}x | "
            f"{r['relative error vs captum']:.1e} | {r['dtype']} | {r['machine']} | {r['torch']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=["classes"], help="which comparison to run")
    parser.add_argument("--model", nargs="+", default=["vgg11"], help="torchvision model names")
    parser.add_argument("--targets", type=int, nargs="+", default=[16], help="K, targets per image")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--name", default=None, help="results file stem (default: the comparison)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    rows = []
    for model_name in args.model:
        for k in args.targets:
            row = bench_classes(model_name, k, args.size, args.repeats, device)
            print(markdown([row]).splitlines()[-1], flush=True)
            rows.append(row)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = args.name or args.which
    (RESULTS / f"{stem}.json").write_text(json.dumps(rows, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown(rows))
    print(f"\nwrote {RESULTS / stem}.json and .md")
    return 0
