"""Benchmark runner: deconvnet side by side with the alternatives, in one process and run.

    python -m benchmarks all                 # everything below, CPU-sized
    python -m benchmarks occlusion           # occlusion sensitivity vs Captum Occlusion (16 px, stride 8)
    python -m benchmarks occlusion-sizes     # the same on EfficientNet-Lite0 for 8-64 px occluders
    python -m benchmarks everyday            # one class of one image, warm and cold, vs Captum
    python -m benchmarks trace               # dn.trace vs model(x), batch 8
    python -m benchmarks classes --model vgg11 vgg16 alexnet --targets 16 64
    python -m benchmarks modern              # mobilenet_v2, efficientnet_b0, convnext_tiny, vit_b_32
    python -m benchmarks channels            # every channel's strongest unit vs NeuronDeconvolution
    python -m benchmarks units               # top-9 projections: cropped units vs one-hot signals
    python -m benchmarks precision           # bfloat16 autocast (float16 on CUDA) vs float32
    python -m benchmarks mining              # top-9 mining throughput vs the plain forward
    python -m benchmarks atlas               # atlas mining/projecting: 1 vs 2 gloo processes vs 2 threads
    python -m benchmarks memory              # all 1000 VGG16 classes: peak memory and time
    python -m benchmarks chunks              # per-target time against the chunk size (the planner's cap)
    python -m benchmarks gpu                 # every GPU row of docs/guides/gpu.md (see benchmarks/gpu.py)
    python -m benchmarks dropin              # deconvnet.captum vs Captum on the same calls
    python -m benchmarks serve               # the explorer: latency per endpoint, 16 clients (benchmarks/serve.py)
    python -m benchmarks volumes --size 64   # MONAI's 3-D DenseNet121 and a 1-D net vs Captum and MONAI (benchmarks/volumes.py)
    python -m benchmarks segmentation        # every predicted region: smp Unet, MONAI 3-D UNet vs Captum, grad-cam

Methods are timed interleaved (A, B, C, A, B, C, ...) after a warm-up round; rows give the
median and the ratios, which are what to compare on shared, noisy machines. Outputs are checked
against each other (relative error below 1e-4; 1e-2 on CUDA with TF32 convolutions, PyTorch's
default) before any time counts. Results go to ``benchmarks/results/<name>.json`` and ``.md``;
each row names the machine, torch and dtype.
"""

from __future__ import annotations

import argparse
import json

import torch

from . import (
    channels,
    chunks,
    classes,
    dropin,
    everyday,
    memory,
    mining,
    occlusion,
    precision,
    trace,
    units,
)
from .harness import RESULTS, markdown, save


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=["occlusion", "occlusion-sizes", "everyday", "trace", "classes", "modern", "precision", "channels", "units",
                                          "mining", "atlas", "memory", "chunks", "gpu", "serve", "dropin", "volumes", "sanity", "segmentation",
                                          "all"])
    parser.add_argument("--model", nargs="+", default=["vgg11", "vgg16", "alexnet"], help="for classes")
    parser.add_argument("--targets", type=int, nargs="+", default=[16, 64], help="K for classes")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--channels", type=int, default=64,
                        help="channels per layer for the channels benchmark (0: all)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--name", default=None, help="results file stem (default: the comparison)")
    parser.add_argument("--quick", action="store_true", help="gpu: fewer models (a check of the script)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    rows: list[dict] = []

    def emit(row: dict) -> None:
        rows.append(row)
        print(markdown([row]).strip().splitlines()[-1], flush=True)

    if args.which in ("occlusion", "all"):
        for model_name in ("efficientnet-lite0", "vgg11", "vgg16"):
            emit(occlusion.bench_occlusion(model_name, 16, 8, args.size, device))
    if args.which in ("occlusion-sizes", "all"):
        for occluder in (8, 16, 32, 64):
            emit(occlusion.bench_occlusion("efficientnet-lite0", occluder, 8, args.size, device))
    if args.which in ("everyday", "all"):
        for model_name in ("vgg16", "resnet50", "densenet121", "mobilenet_v2", "efficientnet_b0"):
            emit(everyday.bench_everyday(model_name, args.size, max(args.repeats, 5), device))
    if args.which in ("dropin", "all"):
        for model_name in ("vgg16", "resnet50", "densenet121", "mobilenet_v2", "efficientnet_b0"):
            emit(dropin.bench_dropin(model_name, args.size, max(args.repeats, 5), device))
        emit(dropin.bench_dropin_occlusion("vgg16", args.size, 1, device))
    if args.which in ("trace", "all"):
        for model_name in ("resnet50", "densenet121", "mobilenet_v2", "efficientnet_b0"):
            emit(trace.bench_trace(model_name, 8, args.size, max(args.repeats, 5), device))
    if args.which in ("classes", "all"):
        for model_name in args.model:
            for k in args.targets:
                emit(classes.bench_classes(model_name, k, args.size, args.repeats, device))
    if args.which in ("modern", "all"):
        for model_name in ("mobilenet_v2", "efficientnet_b0", "convnext_tiny", "vit_b_32"):
            emit(classes.bench_classes(model_name, 16, args.size, args.repeats, device, rectifiers="relu"))
    if args.which in ("precision", "all"):
        for model_name in ("vgg16", "resnet50", "mobilenet_v2"):
            emit(precision.bench_precision(model_name, 16, args.size, args.repeats, device))
    if args.which in ("channels", "all"):
        for model_name, layer in [("vgg16", "features.15"), ("vgg16", "features.22"), ("alexnet", "features.7")]:
            emit(channels.bench_channels(model_name, layer, args.channels or None, args.size, args.repeats, device))
    if args.which in ("units", "all"):
        emit(units.bench_units("shapes", "features.8", 16, 256, 64, args.repeats, device))
        emit(units.bench_units("alexnet", "features.7", 16, 48, args.size, args.repeats, device))
        emit(units.bench_units("vgg16", "features.15", 16, 48, args.size, args.repeats, device))
    if args.which in ("mining", "all"):
        emit(mining.bench_mining("shapes", ["features.8", "features.13"], 1024, 64, args.repeats, device))
        emit(mining.bench_mining("alexnet", ["features.4", "features.7", "features.11"], 128, 32, args.repeats, device))
    if args.which in ("atlas", "all"):
        for row in mining.bench_atlas("shapes", ["features.8", "features.13"], 2048, 64, args.repeats):
            emit(row)
        for row in mining.bench_atlas("alexnet", ["features.4"], 128, 32, args.repeats):
            emit(row)
    if args.which in ("memory", "all"):
        emit(memory.bench_memory("vgg16", args.size))
    if args.which == "gpu":  # not in "all": its own file, on its own machine
        from .gpu import run

        header = run(device, args.size, args.repeats, args.quick, emit)
        save(rows, args.name or "gpu", f"Measured with `python -m benchmarks gpu` on: {header}.")
        return 0
    if args.which == "sanity":  # not in "all": it needs Quantus (the quantus extra)
        from . import sanity

        sanity.run(emit)
        save(rows, args.name or "sanity")
        return 0
    if args.which == "volumes":  # not in "all": it needs MONAI (the monai extra)
        from . import volumes

        volumes.run(device, args.size if args.size != 224 else 96, args.repeats, emit)
        save(rows, args.name or "volumes")
        return 0
    if args.which == "segmentation":  # not in "all": it needs smp, MONAI and grad-cam
        from . import segmentation

        segmentation.run(device, args.repeats, emit)
        save(rows, args.name or "segmentation")
        return 0
    if args.which == "serve":  # not in "all": its own table
        from . import serve

        header = serve.run(device, max(args.repeats, 20), emit=lambda row: (rows.append(row), print(row, flush=True)))
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "serve.json").write_text(json.dumps(rows, indent=2) + "\n")
        (RESULTS / "serve.md").write_text(serve.markdown(rows, header))
        print(serve.markdown(rows, header))
        return 0
    if args.which == "chunks":  # not in "all": it only calibrates the planner
        sizes = [16, 32, 64, 128, 256, 512] if device.type == "cuda" else [1, 2, 4, 8, 16, 32]
        for model_name in ("vgg16", "resnet50"):
            emit(chunks.bench_chunks(model_name, sizes, args.size, args.repeats, device))
        positions = [64, 128, 256, 365, 729] if device.type == "cuda" else [8, 16, 32, 64, 128]
        for model_name in ("efficientnet-lite0", "vgg11"):
            emit(chunks.bench_occlusion_batches(model_name, positions, args.size, device))
    save(rows, args.name or args.which)
    return 0
