"""Top-9 mining throughput, and the atlas on one and two gloo processes."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from deconvnet import DeconvNet

from .harness import (
    _model,
    _row,
    machine,
    timed,
)


def bench_mining(model_name: str, layers: list[str], images: int, batch_size: int, repeats: int,
                 device: torch.device) -> dict:
    """Images per second of mine_top_units streaming a folder, vs the plain forward pass over
    the same loader (decoding and preprocessing included in both)."""
    from deconvnet.analysis.topk import mine_top_units
    from deconvnet.loading import ImageFolder, Preprocessing, image_files
    from deconvnet.models import shapes_net
    from deconvnet.shapes import render

    if model_name == "shapes":
        model, preprocessing, size = shapes_net().to(device), Preprocessing.shapes(), 64
    else:
        model, preprocessing, size = _model(model_name, device), Preprocessing.imagenet(224), 224
    dn = DeconvNet(model)
    with tempfile.TemporaryDirectory() as folder:
        for i in range(images):
            render(5, i).image.resize((size, size)).save(Path(folder) / f"{i:05d}.png")
        dataset = ImageFolder(image_files(Path(folder)), preprocessing)

        def loader():  # type: ignore[no-untyped-def]
            return torch.utils.data.DataLoader(dataset, batch_size=batch_size, pin_memory=device.type == "cuda")

        def mine() -> None:
            mine_top_units(dn, ((x.to(device, non_blocking=True), i.to(device, non_blocking=True)) for x, i in loader()),
                           layers, k=9)

        def forward() -> None:
            with torch.no_grad():
                for x, _ in loader():
                    model(x.to(device, non_blocking=True))

        seconds = timed({"deconvnet mining": mine, "plain forward": forward}, repeats, device)
    return _row("mining", f"{model_name} {' '.join(layers)}", size, images, device, torch.float32, seconds,
                **{"images/s mining": images / seconds["deconvnet mining"],
                   "images/s forward": images / seconds["plain forward"],
                   "mining / forward throughput": seconds["plain forward"] / seconds["deconvnet mining"]})


def bench_atlas(model_name: str, layers: list[str], images: int, batch_size: int, repeats: int) -> list[dict]:
    """The atlas on CPU: plain forward, mining and projecting, each timed inside the same process
    (benchmarks/atlas_worker.py), for 1 process x 1 thread, 2 gloo processes x 1 thread (torchrun)
    and 1 process x 2 threads; configurations interleaved, medians over ``repeats``."""
    from deconvnet.shapes import render

    size = 64 if model_name == "shapes" else 224
    configs = {"1 process x 1 thread": (1, 1), "2 processes x 1 thread": (2, 1), "1 process x 2 threads": (1, 2)}
    samples: dict[str, list[dict]] = {name: [] for name in configs}
    with tempfile.TemporaryDirectory() as folder:
        for i in range(images):
            render(5, i).image.resize((size, size)).save(Path(folder) / f"{i:05d}.png")
        for _ in range(repeats):
            for name, (processes, threads) in configs.items():
                launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                            f"--nproc_per_node={processes}"] if processes > 1 else [sys.executable]
                run = subprocess.run([*launcher, "-m", "benchmarks.atlas_worker", folder, model_name, str(batch_size),
                                      *layers], capture_output=True, text=True, check=True,
                                     env={**__import__("os").environ, "OMP_NUM_THREADS": str(threads)})
                samples[name].append(json.loads(run.stdout.strip().splitlines()[-1]))
    rows = []
    single = None
    for name, runs in samples.items():
        seconds = {phase: statistics.median(r["seconds"][phase] for r in runs) for phase in runs[0]["seconds"]}
        if single is None:
            single = seconds
        rows.append({
            "benchmark": "atlas", "model": f"{model_name} {' '.join(layers)}, {name}", "size": size,
            "targets": images, "dtype": "float32", "machine": machine(torch.device("cpu")).rsplit(",", 1)[0],
            "torch": torch.__version__, "seconds": seconds, "units": runs[0]["units"],
            "images/s forward": images / seconds["forward"], "images/s mining": images / seconds["mining"],
            "mining / forward throughput": seconds["forward"] / seconds["mining"],
            "mining speed-up (1x1 / this)": single["mining"] / seconds["mining"],
            "projecting speed-up (1x1 / this)": single["projecting"] / seconds["projecting"],
        })
    return rows
