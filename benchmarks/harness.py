"""The shared harness of the benchmarks: the machine's name, timing interleaved after a warm-up,
checking outputs against each other before any time counts, one row per measurement, the
Markdown tables and the results files. Each benchmark is a module of its own beside this one;
``python -m benchmarks NAME`` runs it (``benchmarks/run.py``)."""

from __future__ import annotations

import json
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision

RESULTS = Path(__file__).parent / "results"
TOLERANCE = 1e-4
TF32_TOLERANCE = 1e-2
"""Under TF32 (CUDA's default for convolutions) every conv rounds its inputs to 2^-11: tens of
layers, two passes, both sides rounding independently."""


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
    return (ours.float() - reference.float()).abs().max().item() / (scale or 1.0)


def tolerance(device: torch.device) -> float:
    """The relative error two computations of the same thing may show in the precision in force."""
    return TF32_TOLERANCE if device.type == "cuda" and torch.backends.cudnn.allow_tf32 else TOLERANCE


def checked(device: torch.device, error: float, what: str) -> float:
    if error > tolerance(device):
        tf32 = " (TF32 on)" if tolerance(device) == TF32_TOLERANCE else ""
        raise SystemExit(f"{what}: outputs disagree, relative error {error:.2e} > {tolerance(device)}{tf32}")
    return error


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


def _row(benchmark: str, model: str, size: int, targets: int, device: torch.device, dtype: torch.dtype,
         seconds: dict[str, float], **extra: object) -> dict:
    return {
        "benchmark": benchmark, "model": model, "size": size, "targets": targets,
        "dtype": str(dtype).replace("torch.", ""), "machine": machine(device),
        "torch": torch.__version__, "seconds": seconds, **extra,
    }


def _captum_comparable(name: str, device: torch.device) -> tuple[torch.nn.Module, str]:
    """The model and its row label. Captum misses DenseNet's final ``F.relu`` (it hooks
    ``nn.ReLU`` modules): with that ReLU as a module, the same function, both compute the same
    (see scripts/parity.py)."""
    model = _model(name, device)
    if not name.startswith("densenet"):
        return model, name
    from scripts.parity import DenseNetModuleReLU

    return DenseNetModuleReLU(model).eval(), f"{name} (final ReLU as a module)"


def _model(name: str, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "shapes":  # the bundled ShapesNet, trained weights
        from deconvnet.models import shapes_net

        return shapes_net().to(device)
    model = getattr(torchvision.models, name)(weights=None).eval()
    with torch.no_grad():  # ViT's head starts at zero: every reconstruction would be zero
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and not module.weight.any():
                module.weight.normal_(std=0.02)
    return model.to(device)


def peak_rss() -> int:
    """This process's peak resident memory in bytes. VmHWM, not ru_maxrss: a process started
    from a large parent inherits the parent's ru_maxrss across fork and exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _resident() -> tuple[int, int]:
    """(resident, peak resident) bytes of this process, from /proc (Linux)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


def added_peak(call, device: torch.device) -> int:  # type: ignore[no-untyped-def]
    """Bytes ``call()`` adds at its peak above what is held before it: CUDA's allocated memory,
    or on CPU the resident memory, its peak reset first (Linux: writing 5 to clear_refs)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        call()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    Path("/proc/self/clear_refs").write_text("5")
    before, _ = _resident()
    call()
    return _resident()[1] - before


TABLES: dict[str, Callable[[list[dict]], list[str]]] = {}
"""Row kinds that draw their own table (a benchmark module registers its renderer here)."""


# --- output --------------------------------------------------------------------------------


def markdown(rows: list[dict]) -> str:
    """One table per benchmark kind."""
    lines: list[str] = []
    for kind in dict.fromkeys(r["benchmark"] for r in rows):
        group = [r for r in rows if r["benchmark"] == kind]
        if kind == "memory":
            lines += ["| memory | targets | seconds | peak RSS | before mirror | result | chunk | budget | machine |",
                      "|---|---|---|---|---|---|---|---|---|"]
            for r in group:
                gib = 1024**3
                lines.append(f"| {r['model']} {r['size']} px | {r['targets']} | {r['seconds']:.1f} | "
                             f"{r['peak_bytes'] / gib:.2f} GiB | {r['before_bytes'] / gib:.2f} GiB | "
                             f"{r['result_bytes'] / gib:.2f} GiB | {r['chunk']} | {r['budget_bytes'] / gib:.1f} GiB | "
                             f"{r['machine']} |")
        elif kind in TABLES:
            lines += TABLES[kind](group)
            continue
        elif kind == "chunks":
            lines += ["| chunks | px | ms per target at each chunk size (targets or positions: ms) "
                      "| widest tensor per target | planned chunk (1000 classes; occlusion: all positions) "
                      "| rel. error | machine | torch |", "|---|---|---|---|---|---|---|---|"]
            for r in group:
                times = ", ".join(f"{k}: {v:.2f}" for k, v in r["per_target_ms"].items())
                lines.append(f"| {r['model']} | {r['size']} | {times} | {r['widest_elements_per_target']:.2e} | "
                             f"{r['planned_chunk_for_1000']} | {r['relative error']:.1e} | {r['machine']} | {r['torch']} |")
        else:
            ratios = [k for k in group[0] if "/" in k]
            extra = ["relative L2 error"] if "relative L2 error" in group[0] else []
            names = list(group[0]["seconds"])
            lines += ["| " + " | ".join([kind, "px", "K", *[f"{n} s" for n in names], *ratios, *extra, "rel. error",
                                         "dtype", "machine", "torch"]) + " |",
                      "|" + "---|" * (7 + len(names) + len(ratios) + len(extra))]
            for r in group:
                cells = [r["model"], str(r["size"]), str(r["targets"]),
                         *[f"{r['seconds'][n]:.3f}" for n in names],
                         *[f"{r[k]:.2f}x" if "throughput" not in k and "images" not in k else f"{r[k]:.2f}" for k in ratios],
                         *[f"{r[k]:.1e}" for k in extra],
                         f"{r['relative error']:.1e}" if "relative error" in r else "n/a",
                         r["dtype"], r["machine"], r["torch"]]
                lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def save(rows: list[dict], stem: str, header: str = "") -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(rows, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text((header + "\n\n" if header else "") + markdown(rows))
    print(f"\nwrote {RESULTS / stem}.json and .md")
