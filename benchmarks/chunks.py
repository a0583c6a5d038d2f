"""Per-target time against the chunk size: what the planner's throughput caps rest on."""

from __future__ import annotations

import time
from math import prod

import torch

from deconvnet import DeconvNet
from deconvnet.chunks import budget, mirror_chunk

from .harness import (
    _model,
    _row,
    checked,
    relative_error,
    timed,
)
from .occlusion import _occlusion_model


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
