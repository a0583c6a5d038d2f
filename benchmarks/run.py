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

Methods are timed interleaved (A, B, C, A, B, C, ...) after a warm-up round; rows give the
median and the ratios, which are what to compare on shared, noisy machines. Outputs are checked
against each other (relative error below 1e-4; 1e-2 on CUDA with TF32 convolutions, PyTorch's
default) before any time counts. Results go to ``benchmarks/results/<name>.json`` and ``.md``;
each row names the machine, torch and dtype.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from math import prod
from pathlib import Path

import torch
import torchvision

from deconvnet import DeconvNet
from deconvnet.chunks import budget, mirror_chunk

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


# --- 1. all classes ------------------------------------------------------------------------


def captum_classes(model: torch.nn.Module, x: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """Captum's Deconvolution at its best: the input repeated K times, one batched call."""
    from captum.attr import Deconvolution

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Deconvolution(model).attribute(x.repeat(len(classes), 1, 1, 1), target=classes)


def bench_classes(model_name: str, targets: int, size: int, repeats: int, device: torch.device,
                  rectifiers: str = "all") -> dict:
    """reconstruct_classes for K classes of one image vs Captum batched vs the forward floor.

    Captum gives the rule to nn.ReLU modules only: on models with other activations the
    comparison runs with ``rectifiers="relu"``, which computes the same."""
    model, model_name = _captum_comparable(model_name, device)
    x = torch.randn(1, 3, size, size, device=device)
    classes = list(range(targets))
    dn = DeconvNet(model, rectifiers=rectifiers)
    error = checked(device, relative_error(dn.reconstruct_classes(x, classes)[0], captum_classes(model, x, classes)),
                    f"classes {model_name}")

    def floor() -> None:
        with torch.no_grad():
            model(x.repeat(targets, 1, 1, 1))

    seconds = timed({"deconvnet": lambda: dn.reconstruct_classes(x, classes),
                     "captum": lambda: captum_classes(model, x, classes), "forward floor": floor}, repeats, device)
    label = model_name if rectifiers == "all" else f"{model_name} (rectifiers={rectifiers})"
    general = len(dn.general_layers)
    if general:
        label += f", {general} VJP layers"
    return _row("classes", label, size, targets, device, torch.float32, seconds,
                **{"captum / deconvnet": seconds["captum"] / seconds["deconvnet"],
                   "deconvnet / floor": seconds["deconvnet"] / seconds["forward floor"],
                   "relative error": error})


def bench_chunks(model_name: str, sizes: list[int], size: int, repeats: int, device: torch.device) -> dict:
    """Per-target time of the class mirror against the chunk size, from one trace: where it
    stops falling is the planner's throughput cap (``deconvnet.chunks.THROUGHPUT_ELEMENTS``).
    Also the chunk the planner picks for 1000 classes, and its widest tensor in elements."""
    model = _model(model_name, device)
    x = torch.randn(1, 3, size, size, device=device)
    dn = DeconvNet(model)
    trace = dn.trace(x)
    start = dn.network.steps[dn.network.output].name
    reference = dn.reconstruct_classes(trace, list(range(max(sizes))), chunk_size=1)
    error = checked(device, relative_error(dn.reconstruct_classes(trace, list(range(max(sizes))), chunk_size=max(sizes)),
                                   reference), f"chunks {model_name}")
    seconds = timed({f"chunk {k}": (lambda k=k: dn.reconstruct_classes(trace, list(range(k)), chunk_size=k))
                     for k in sizes}, repeats, device)
    widest = max(prod(trace.records[layer.source].input_shape[1:]) + trace.activations[layer.source][0].numel()
                 for layer in dn.mirror.layers[dn.mirror.index_of(start):])
    planned = mirror_chunk(dn.mirror, trace, start, budget(dn.memory_budget, device), 1000)
    return _row("chunks", model_name, size, max(sizes), device, torch.float32, seconds,
                per_target_ms={k: 1000 * seconds[f"chunk {k}"] / k for k in sizes},
                widest_elements_per_target=widest, planned_chunk_for_1000=planned, **{"relative error": error})


def bench_occlusion_batches(model_name: str, sizes: list[int], size: int, device: torch.device) -> dict:
    """Per-position time of incremental occlusion (16 px, stride 8) against the positions per
    pass, each run once: the planner's occlusion cap. Also the batch the planner picks."""
    from deconvnet.analysis.occlusion import _Incremental, occlusion

    model = _occlusion_model(model_name, device)
    torch.manual_seed(0)
    x = torch.randn(1, 3, size, size, device=device)
    occlusion(model, x[..., :64, :64], size=16, stride=16)  # warm-up
    seconds, results = {}, []
    for batch in sizes:
        start = time.perf_counter()
        results.append(occlusion(model, x, size=16, stride=8, target=3, batch_size=batch).probability)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds[f"batch {batch}"] = time.perf_counter() - start
    error = max(checked(device, relative_error(r, results[0]), f"occlusion batches {model_name}") for r in results)
    dn = DeconvNet(model)
    run = _Incremental(dn.network, x, 0.5)
    positions = ((size - 16) // 8 + 1) ** 2
    widest = max(v.numel() for v in run.base.values() if isinstance(v, torch.Tensor))
    return _row("chunks", f"{model_name} occlusion (per position)", size, positions, device, torch.float32, seconds,
                per_target_ms={k: 1000 * seconds[f"batch {k}"] / positions for k in sizes},
                widest_elements_per_target=widest, planned_chunk_for_1000=run.default_batch(positions, None),
                **{"relative error": error})


# --- 1a. occlusion sensitivity ------------------------------------------------------------------


def _occlusion_model(name: str, device: torch.device) -> torch.nn.Module:
    if name == "efficientnet-lite0":
        from deconvnet.models import efficientnet_lite0

        return efficientnet_lite0().to(device)
    return _model(name, device)


def captum_occlusion(model: torch.nn.Module, x: torch.Tensor, size: int, stride: int, target: int,
                     per_eval: int) -> torch.Tensor:
    """Captum's Occlusion on softmax probabilities: Tensor[C, H, W], per pixel the mean drop in
    P(target) over the occluder positions covering it."""
    from captum.attr import Occlusion as CaptumOcclusion

    def probabilities(batch: torch.Tensor) -> torch.Tensor:
        return model(batch).softmax(-1)

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return CaptumOcclusion(probabilities).attribute(
            x, sliding_window_shapes=(x.shape[1], size, size), strides=(x.shape[1], stride, stride), baselines=0.0,
            target=target, perturbations_per_eval=per_eval)[0]


def per_pixel_drop(result, shape: torch.Size) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """Our grid as Captum reports it: Tensor[C, H, W], per pixel the mean of
    P_unoccluded - P_occluded over the positions covering it (0 where none does)."""
    from deconvnet.analysis.occlusion import occluder_corners

    total = torch.zeros(shape[-2:], dtype=torch.float64)
    count = torch.zeros(shape[-2:], dtype=torch.float64)
    drops = (result.unoccluded[0] - result.probability[0].flatten()).double().cpu()
    for (top, left), drop in zip(occluder_corners(shape[-2], shape[-1], result.size, result.stride).tolist(), drops):
        total[top : top + result.size, left : left + result.size] += drop
        count[top : top + result.size, left : left + result.size] += 1
    return (total / count.clamp(min=1)).expand(shape[1], -1, -1)


def bench_occlusion(model_name: str, size: int, stride: int, image_size: int, device: torch.device,
                    per_evals: tuple[int, ...] = (16, 64)) -> dict:
    """occlusion() (incremental, and whole batches) vs Captum's Occlusion at its best
    perturbations_per_eval, one image, each run once after a small warm-up (runs last seconds)."""
    from deconvnet.analysis.occlusion import occlusion

    model = _occlusion_model(model_name, device)
    torch.manual_seed(0)
    x = torch.randn(1, 3, image_size, image_size, device=device)
    target = 3
    occlusion(model, x[..., :64, :64], size=16, stride=16)  # warm-up
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    ours = occlusion(model, x, size=size, stride=stride, target=target)
    seconds["deconvnet incremental"] = time.perf_counter() - start
    start = time.perf_counter()
    whole = occlusion(model, x, size=size, stride=stride, target=target, incremental=False)
    seconds["deconvnet whole"] = time.perf_counter() - start
    best, reference = None, None
    for per_eval in per_evals:
        start = time.perf_counter()
        reference = captum_occlusion(model, x, size, stride, target, per_eval)
        elapsed = time.perf_counter() - start
        seconds[f"captum ppe={per_eval}"] = elapsed
        best = elapsed if best is None else min(best, elapsed)
    assert reference is not None and best is not None
    mine = per_pixel_drop(ours, x.shape)
    error = checked(device, relative_error(mine, reference.double().cpu()), f"occlusion {model_name}")
    checked(device, relative_error(whole.probability, ours.probability), f"occlusion whole {model_name}")
    positions = ours.grid[0] * ours.grid[1]
    return _row("occlusion", f"{model_name}, {size} px occluder, stride {stride}", image_size, positions, device,
                torch.float32, seconds,
                **{"best captum / incremental": best / seconds["deconvnet incremental"],
                   "whole / incremental": seconds["deconvnet whole"] / seconds["deconvnet incremental"],
                   "relative error": error})


# --- 1b. the everyday call ------------------------------------------------------------------


def bench_everyday(model_name: str, size: int, repeats: int, device: torch.device) -> dict:
    """One class of one fresh image per call: warm (DeconvNet built once) and cold (built inside
    the call) vs Captum's Deconvolution, with ``rectifiers="relu"`` (what Captum computes)."""
    model, label = _captum_comparable(model_name, device)
    images = [torch.randn(1, 3, size, size, device=device) for _ in range(repeats + 1)]
    dn = DeconvNet(model, rectifiers="relu")
    error = checked(device, relative_error(dn.reconstruct_classes(images[0], [3])[0], captum_classes(model, images[0], [3])),
                    f"everyday {model_name}")
    calls = {"warm": 0, "cold": 0, "captum": 0}

    def image(kind: str) -> torch.Tensor:  # a fresh image per call, the same sequence per method
        calls[kind] += 1
        return images[calls[kind] % len(images)]

    seconds = timed({
        "deconvnet warm": lambda: dn.reconstruct_classes(image("warm"), [3]),
        "deconvnet cold": lambda: DeconvNet(model, rectifiers="relu").reconstruct_classes(image("cold"), [3]),
        "captum": lambda: captum_classes(model, image("captum"), [3]),
    }, repeats, device)
    return _row("everyday", label, size, 1, device, torch.float32, seconds,
                **{"captum / warm": seconds["captum"] / seconds["deconvnet warm"],
                   "captum / cold": seconds["captum"] / seconds["deconvnet cold"],
                   "relative error": error})


def bench_dropin(model_name: str, size: int, repeats: int, device: torch.device) -> dict:
    """The same Captum call through ``deconvnet.captum`` and through Captum: ``Deconvolution``
    for one class of one fresh image, the object made once (reused) and made inside every call
    (as ``Deconvolution(model).attribute(x, target=t)`` is usually written), and
    ``NeuronDeconvolution`` for one unit of a middle layer."""
    import captum.attr as theirs

    from deconvnet import captum as ours

    model, label = _captum_comparable(model_name, device)
    middle = {"vgg16": "features.16", "resnet50": "layer2", "densenet121": "features.denseblock2",
              "mobilenet_v2": "features.7", "efficientnet_b0": "features.4"}
    layer = dict(model.named_modules())[middle[model_name]]
    images = [torch.randn(1, 3, size, size, device=device) for _ in range(repeats + 1)]
    reused = ours.Deconvolution(model)
    neurons = ours.NeuronDeconvolution(model, layer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        error = max(
            relative_error(reused.attribute(images[0], target=3), theirs.Deconvolution(model).attribute(images[0], target=3)),
            relative_error(neurons.attribute(images[0], (5, 10, 10)),
                           theirs.NeuronDeconvolution(model, layer).attribute(images[0], (5, 10, 10))),
        )
    checked(device, error, f"drop-in {model_name}")
    calls: dict[str, int] = {}

    def image(kind: str) -> torch.Tensor:  # a fresh image per call, the same sequence per method
        calls[kind] = calls.get(kind, 0) + 1
        return images[calls[kind] % len(images)]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seconds = timed({
            "ours reused": lambda: reused.attribute(image("reused"), target=3),
            "ours per call": lambda: ours.Deconvolution(model).attribute(image("per call"), target=3),
            "captum": lambda: theirs.Deconvolution(model).attribute(image("captum"), target=3),
            "ours neuron": lambda: neurons.attribute(image("neuron"), (5, 10, 10)),
            "captum neuron": lambda: theirs.NeuronDeconvolution(model, layer).attribute(image("captum neuron"), (5, 10, 10)),
        }, repeats, device)
    return _row("dropin", label, size, 1, device, torch.float32, seconds,
                **{"captum / ours reused": seconds["captum"] / seconds["ours reused"],
                   "captum / ours per call": seconds["captum"] / seconds["ours per call"],
                   "captum / ours, neuron": seconds["captum neuron"] / seconds["ours neuron"],
                   "relative error": error})


def bench_dropin_occlusion(model_name: str, size: int, repeats: int, device: torch.device) -> dict:
    """``Occlusion(model).attribute(x, (3, 32, 32), strides=(3, 16, 16), target=t,
    perturbations_per_eval=64)``: deconvnet.captum (exact incremental inference) vs Captum."""
    import captum.attr as theirs

    from deconvnet import captum as ours

    model, label = _captum_comparable(model_name, device)
    x = torch.randn(1, 3, size, size, device=device)
    options = dict(sliding_window_shapes=(3, 32, 32), strides=(3, 16, 16), target=3, perturbations_per_eval=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        error = checked(device, relative_error(ours.Occlusion(model).attribute(x, **options),
                                               theirs.Occlusion(model).attribute(x, **options).to(x.dtype)),
                        f"drop-in occlusion {model_name}")
        seconds = timed({
            "ours": lambda: ours.Occlusion(model).attribute(x, **options),
            "captum": lambda: theirs.Occlusion(model).attribute(x, **options),
        }, repeats, device)
    return _row("dropin-occlusion", label, size, 169, device, torch.float32, seconds,
                **{"captum / ours": seconds["captum"] / seconds["ours"], "relative error": error})


# --- 1c. reduced precision -------------------------------------------------------------------


def bench_precision(model_name: str, targets: int, size: int, repeats: int, device: torch.device) -> dict:
    """reconstruct_classes with the mirror in bfloat16 (float16 on CUDA; ``mirror_dtype``, the
    trace in float32) vs float32: time of the mirror, and the error against float32 as
    max-relative and relative L2."""
    model = _model(model_name, device)
    x = torch.randn(1, 3, size, size, device=device)
    classes = list(range(targets))
    dn = DeconvNet(model)
    low = torch.float16 if device.type == "cuda" else torch.bfloat16
    reduced_dn = DeconvNet(model, mirror_dtype=low)
    trace = dn.trace(x)
    reference = dn.reconstruct_classes(trace, classes)
    reduced_trace = reduced_dn.trace(x)

    def reduced() -> torch.Tensor:
        return reduced_dn.reconstruct_classes(reduced_trace, classes)

    out = reduced().float()
    l2 = ((out - reference).norm() / reference.norm()).item()
    seconds = timed({"float32": lambda: dn.reconstruct_classes(trace, classes), str(low).replace("torch.", ""): reduced},
                    repeats, device)
    return _row("precision", model_name, size, targets, device, torch.float32, seconds,
                **{"float32 / reduced": seconds["float32"] / seconds[str(low).replace("torch.", "")],
                   "relative L2 error": l2, "relative error": relative_error(out, reference)})


# --- 1d. the trace --------------------------------------------------------------------------


def bench_trace(model_name: str, batch: int, size: int, repeats: int, device: torch.device) -> dict:
    """dn.trace(x) (output, switches, activations) vs model(x) under no_grad, one batch."""
    model = _model(model_name, device)
    dn = DeconvNet(model)
    x = torch.randn(batch, 3, size, size, device=device)
    with torch.no_grad():
        error = checked(device, relative_error(dn.trace(x).output, model(x)), f"trace {model_name}")

    def forward() -> None:
        with torch.no_grad():
            model(x)

    seconds = timed({"dn.trace": lambda: dn.trace(x), "model(x)": forward}, repeats, device)
    return _row("trace", model_name, size, batch, device, torch.float32, seconds,
                **{"trace / forward": seconds["dn.trace"] / seconds["model(x)"], "relative error": error})


# --- 2. all channels -----------------------------------------------------------------------


def captum_units(model: torch.nn.Module, layer: torch.nn.Module, x: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """Captum's NeuronDeconvolution for K units (channel, i, j) of one image, batched as far as
    Captum allows: the image repeated K times and a selector that picks unit k in row k."""
    from captum.attr import NeuronDeconvolution

    rows = torch.arange(units.shape[0], device=x.device)

    def select(output: torch.Tensor) -> torch.Tensor:
        return output[rows, units[:, 0], units[:, 1], units[:, 2]]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return NeuronDeconvolution(model, layer).attribute(x.repeat(units.shape[0], 1, 1, 1), neuron_selector=select)


def bench_channels(model_name: str, layer: str, channels: int | None, size: int, repeats: int,
                   device: torch.device) -> dict:
    """The strongest unit of each of the first ``channels`` channels of ``layer`` (all when
    None), projected: deconvnet (cropped, and uncropped) vs Captum's NeuronDeconvolution."""
    model = _model(model_name, device)
    x = torch.randn(1, 3, size, size, device=device)
    dn = DeconvNet(model)
    trace = dn.trace(x)
    activation = dn.activation(trace, layer)[0]
    count = activation.shape[0] if channels is None else min(channels, activation.shape[0])
    flat = activation[:count].flatten(1).argmax(dim=1)
    units = torch.stack([torch.arange(count, device=device), flat // activation.shape[-1],
                         flat % activation.shape[-1]], dim=1)
    chosen = list(range(count))
    module = model.get_submodule(layer)
    ours = dn.reconstruct(x, layer, chosen, signal="unit")[0]
    error = checked(device, relative_error(ours, captum_units(model, module, x, units)), f"channels {model_name} {layer}")
    checked(device, relative_error(dn.reconstruct(x, layer, chosen, signal="unit", crop=False)[0], ours), "crop vs full")
    seconds = timed({
        "deconvnet": lambda: dn.reconstruct(x, layer, chosen, signal="unit"),
        "deconvnet uncropped": lambda: dn.reconstruct(x, layer, chosen, signal="unit", crop=False),
        "captum": lambda: captum_units(model, module, x, units),
    }, repeats, device)
    return _row("channels", f"{model_name} {layer}", size, count, device, torch.float32, seconds,
                **{"captum / deconvnet": seconds["captum"] / seconds["deconvnet"],
                   "uncropped / cropped": seconds["deconvnet uncropped"] / seconds["deconvnet"],
                   "relative error": error})


# --- 2b. top-9 projections -------------------------------------------------------------------


def one_hot_projections(dn: DeconvNet, top, load, channels: list[int], batch_size: int) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """The earlier way to project kept units: trace their images, run one-hot signals through
    the whole (uncropped) mirror with reconstruct_from."""
    k = top.values.shape[1]
    entries = [(c, r) for c in channels for r in range(k) if torch.isfinite(top.values[c, r])]
    result = None
    for start in range(0, len(entries), batch_size):
        chunk = entries[start : start + batch_size]
        trace = dn.trace(torch.stack([load(int(top.images[c, r])) for c, r in chunk]))
        activation = dn.activation(trace, top.layer)
        signal = torch.zeros(len(chunk), 1, *activation.shape[1:], dtype=activation.dtype, device=activation.device)
        flat = signal.view(len(chunk), activation.shape[1], -1)
        for b, (c, r) in enumerate(chunk):
            position = int(top.positions[c, r])
            flat[b, c, position] = activation[b, c].reshape(-1)[position]
        projected = dn.reconstruct_from(trace, top.layer, signal)[:, 0]
        if result is None:
            result = projected.new_zeros(len(channels), k, *projected.shape[1:])
        for b, (c, r) in enumerate(chunk):
            result[channels.index(c), r] = projected[b]
    return result  # type: ignore[return-value]


def bench_units(model_name: str, layer: str, channels: int, images: int, size: int, repeats: int,
                device: torch.device) -> dict:
    """project_top_units (reconstruct_units, cropped) vs one-hot signals through the mirror, for
    the top-9 of ``channels`` channels mined over ``images`` random images."""
    from deconvnet.analysis.topk import mine_top_units, project_top_units

    model = _model(model_name, device)
    dn = DeconvNet(model)
    data = torch.randn(images, 3, size, size, device=device)
    top = mine_top_units(dn, ((data[i : i + 16], torch.arange(i, min(i + 16, images))) for i in range(0, images, 16)),
                         [layer], k=9)[layer]
    chosen = list(range(channels))

    def load(index: int) -> torch.Tensor:
        return data[index]

    ours = project_top_units(dn, top, load, chosen, batch_size=32)
    error = checked(device, relative_error(ours, one_hot_projections(dn, top, load, chosen, 32)), f"units {model_name}")
    seconds = timed({
        "project_top_units": lambda: project_top_units(dn, top, load, chosen, batch_size=32),
        "one-hot reconstruct_from": lambda: one_hot_projections(dn, top, load, chosen, 32),
    }, repeats, device)
    return _row("units", f"{model_name} {layer}", size, channels * 9, device, torch.float32, seconds,
                **{"one-hot / project_top_units": seconds["one-hot reconstruct_from"] / seconds["project_top_units"],
                   "relative error": error})


# --- 3. top-9 mining -----------------------------------------------------------------------


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


# --- 4. memory -----------------------------------------------------------------------------


def _peak_rss() -> int:
    """This process's peak resident memory in bytes. VmHWM, not ru_maxrss: a process started
    from a large parent inherits the parent's ru_maxrss across fork and exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _all_classes_worker(model_name: str, size: int) -> None:
    """Run in a fresh process: all classes of one image within the default budget."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = _model(model_name, device)
    x = torch.randn(1, 3, size, size, device=device)
    dn = DeconvNet(model)
    trace = dn.trace(x)
    before = _peak_rss()
    start = time.perf_counter()
    out = dn.reconstruct_classes(trace)
    seconds = time.perf_counter() - start
    peak = _peak_rss()
    print(json.dumps({"targets": out.shape[1], "seconds": seconds, "peak_bytes": peak,
                      "before_bytes": before, "result_bytes": out.numel() * out.element_size(),
                      "chunk": mirror_chunk(dn.mirror, trace, dn.network.steps[dn.network.output].name,
                                            budget(dn.memory_budget, x.device), out.shape[1]),
                      "budget_bytes": budget(dn.memory_budget, x.device), "machine": machine(device)}))


def bench_memory(model_name: str, size: int) -> dict:
    """Peak resident memory for every class of one image of ``model_name``, default budget."""
    result = subprocess.run(
        [sys.executable, "-c", f"from benchmarks.run import _all_classes_worker; _all_classes_worker({model_name!r}, {size})"],
        capture_output=True, text=True, check=True, cwd=Path(__file__).parent.parent,
    )
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    return {"benchmark": "memory", "model": model_name, "size": size, "dtype": "float32",
            "torch": torch.__version__, **measured}


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
        elif kind == "volume memory":
            from .volumes import markdown as volume_markdown

            lines += volume_markdown(group)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=["occlusion", "occlusion-sizes", "everyday", "trace", "classes", "modern", "precision", "channels", "units",
                                          "mining", "atlas", "memory", "chunks", "gpu", "serve", "dropin", "volumes", "sanity",
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
            emit(bench_occlusion(model_name, 16, 8, args.size, device))
    if args.which in ("occlusion-sizes", "all"):
        for occluder in (8, 16, 32, 64):
            emit(bench_occlusion("efficientnet-lite0", occluder, 8, args.size, device))
    if args.which in ("everyday", "all"):
        for model_name in ("vgg16", "resnet50", "densenet121", "mobilenet_v2", "efficientnet_b0"):
            emit(bench_everyday(model_name, args.size, max(args.repeats, 5), device))
    if args.which in ("dropin", "all"):
        for model_name in ("vgg16", "resnet50", "densenet121", "mobilenet_v2", "efficientnet_b0"):
            emit(bench_dropin(model_name, args.size, max(args.repeats, 5), device))
        emit(bench_dropin_occlusion("vgg16", args.size, 1, device))
    if args.which in ("trace", "all"):
        for model_name in ("resnet50", "densenet121", "mobilenet_v2", "efficientnet_b0"):
            emit(bench_trace(model_name, 8, args.size, max(args.repeats, 5), device))
    if args.which in ("classes", "all"):
        for model_name in args.model:
            for k in args.targets:
                emit(bench_classes(model_name, k, args.size, args.repeats, device))
    if args.which in ("modern", "all"):
        for model_name in ("mobilenet_v2", "efficientnet_b0", "convnext_tiny", "vit_b_32"):
            emit(bench_classes(model_name, 16, args.size, args.repeats, device, rectifiers="relu"))
    if args.which in ("precision", "all"):
        for model_name in ("vgg16", "resnet50", "mobilenet_v2"):
            emit(bench_precision(model_name, 16, args.size, args.repeats, device))
    if args.which in ("channels", "all"):
        for model_name, layer in [("vgg16", "features.15"), ("vgg16", "features.22"), ("alexnet", "features.7")]:
            emit(bench_channels(model_name, layer, args.channels or None, args.size, args.repeats, device))
    if args.which in ("units", "all"):
        emit(bench_units("shapes", "features.8", 16, 256, 64, args.repeats, device))
        emit(bench_units("alexnet", "features.7", 16, 48, args.size, args.repeats, device))
        emit(bench_units("vgg16", "features.15", 16, 48, args.size, args.repeats, device))
    if args.which in ("mining", "all"):
        emit(bench_mining("shapes", ["features.8", "features.13"], 1024, 64, args.repeats, device))
        emit(bench_mining("alexnet", ["features.4", "features.7", "features.11"], 128, 32, args.repeats, device))
    if args.which in ("atlas", "all"):
        for row in bench_atlas("shapes", ["features.8", "features.13"], 2048, 64, args.repeats):
            emit(row)
        for row in bench_atlas("alexnet", ["features.4"], 128, 32, args.repeats):
            emit(row)
    if args.which in ("memory", "all"):
        emit(bench_memory("vgg16", args.size))
    if args.which == "gpu":  # not in "all": its own file, on its own machine
        from .gpu import run

        header = run(device, args.size, args.repeats, args.quick, emit)
        save(rows, args.name or "gpu", f"Measured with `python -m benchmarks gpu` on: {header}.")
        return 0
    if args.which == "sanity":  # not in "all": it needs Quantus (the quantus extra)
        from . import sanity

        def emit_sanity(row: dict) -> None:
            rows.append(row)
            print("\n".join(sanity.markdown([row])[-2:-1]), flush=True)

        sanity.run(emit_sanity)
        (RESULTS / "sanity.json").write_text(json.dumps(rows, indent=2) + "\n")
        (RESULTS / "sanity.md").write_text("\n".join(sanity.markdown(rows)))
        print(f"\nwrote {RESULTS / 'sanity'}.json and .md")
        return 0
    if args.which == "volumes":  # not in "all": it needs MONAI (the monai extra)
        from . import volumes

        volumes.run(device, args.size if args.size != 224 else 96, args.repeats, emit)
        save(rows, args.name or "volumes")
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
            emit(bench_chunks(model_name, sizes, args.size, args.repeats, device))
        positions = [64, 128, 256, 365, 729] if device.type == "cuda" else [8, 16, 32, 64, 128]
        for model_name in ("efficientnet-lite0", "vgg11"):
            emit(bench_occlusion_batches(model_name, positions, args.size, device))
    save(rows, args.name or args.which)
    return 0
