"""All 1000 VGG16 classes of one image: peak memory and time within the default budget, in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from deconvnet import DeconvNet
from deconvnet.chunks import budget, mirror_chunk

from .harness import (
    _model,
    machine,
    peak_rss,
)


def _all_classes_worker(model_name: str, size: int) -> None:
    """Run in a fresh process: all classes of one image within the default budget."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = _model(model_name, device)
    x = torch.randn(1, 3, size, size, device=device)
    dn = DeconvNet(model)
    trace = dn.trace(x)
    before = peak_rss()
    start = time.perf_counter()
    out = dn.reconstruct_classes(trace)
    seconds = time.perf_counter() - start
    peak = peak_rss()
    print(json.dumps({"targets": out.shape[1], "seconds": seconds, "peak_bytes": peak,
                      "before_bytes": before, "result_bytes": out.numel() * out.element_size(),
                      "chunk": mirror_chunk(dn.mirror, trace, dn.network.steps[dn.network.output].name,
                                            budget(dn.memory_budget, x.device), out.shape[1]),
                      "budget_bytes": budget(dn.memory_budget, x.device), "machine": machine(device)}))


def bench_memory(model_name: str, size: int) -> dict:
    """Peak resident memory for every class of one image of ``model_name``, default budget."""
    result = subprocess.run(
        [sys.executable, "-c", f"from benchmarks.memory import _all_classes_worker; _all_classes_worker({model_name!r}, {size})"],
        capture_output=True, text=True, check=True, cwd=Path(__file__).parent.parent,
    )
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    return {"benchmark": "memory", "model": model_name, "size": size, "dtype": "float32",
            "torch": torch.__version__, **measured}
