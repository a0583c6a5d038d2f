"""Chunk planning: how many targets (or occluder positions) go through at once, and joining
the chunks. One planner for every device and every batched call (classes, channels, units,
occlusion).

A chunk size is the smallest of three caps:

- **memory**: the bytes a chunk may use (``DeconvNet(memory_budget=...)``; by default 2 GiB on
  CPU, half of the CUDA memory this process can use: the device's free memory *plus* what
  PyTorch's caching allocator holds unused, so memory cached by one call never shrinks the next
  call's plan);
- **indexing**: no tensor of a chunk passes 2^31 elements (past it, CUDA kernels fall back to
  64-bit indexing or refuse);
- **throughput**: no tensor of a chunk passes the size where per-target time stops falling on
  that kind of device (measured with ``python -m benchmarks chunks``); larger chunks only add
  memory traffic, allocator pressure and, under ``cudnn.benchmark``, autotuning of huge shapes.

Then the targets are split into equal chunks (``ceil(K / ceil(K / cap))`` each), so a call
runs at most two shapes, and the same call plans the same shapes every time. Results never
depend on the chunk size. A call in several chunks derives each activation's slope and each
product's operand once, for all its chunks (``Context.memo``), while those take at most a
quarter of the budget (:data:`MEMO_SHARE`, :func:`memo_bytes`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from math import ceil, prod

import torch
from torch import Tensor

from .capture import Trace
from .crop import widest_window
from .errors import InputError
from .mirror import Activation, Context, Mirror, MirrorLayer, Product

__all__ = [
    "CPU_BUDGET", "INDEX_LIMIT", "THROUGHPUT_ELEMENTS", "DeviceMemory", "budget", "check_chunk_size", "collect",
    "device_memory", "forward_chunk", "memo_bytes", "mirror_chunk", "mirror_chunks", "mirror_needs", "plan",
    "window_chunk", "window_needs",
]

CPU_BUDGET = 2 * 1024**3
INDEX_LIMIT = 2**31 - 1
"""No tensor of a chunk holds more elements than this."""
THROUGHPUT_ELEMENTS = {
    ("cuda", "mirror"): 2**30, ("cpu", "mirror"): 2**24,
    ("cuda", "occlusion"): 2**30, ("cpu", "occlusion"): 2**25,
    ("cuda", "forward"): 2**30, ("cpu", "forward"): 2**22,
}
"""Elements of a chunk's widest tensor past which per-target time stops falling, per device
type and workload (the mirror; occlusion's forward passes, whose incremental layers mostly run
on crops far smaller than the widest map). ``python -m benchmarks chunks`` measures them; see
benchmarks/results/chunks.md. On CUDA, VGG16's 1000 classes ran at the same per-target time
from 100 to 956 targets per chunk (one H200; input plus output signal of its first layer 6.4e8 to
6.1e9 elements); 2^30 is 167 targets there, inside that range, and keeps each tensor under half
the index limit. On this project's 2-core CPU the mirror's per-target time is lowest at 2-4 targets
on VGG16 and ResNet50 (1.3e7 and 6.4e6 elements) and occlusion's at 27-37 positions on
EfficientNet-Lite0 and 24 on VGG11 (3e7 to 7.7e7 elements). Whole forward passes (deletion and
insertion curves) are quickest there with small batches: per image, EfficientNet-Lite0 took 17-18
ms at 1-4 images (widest tensor 1.2e6 elements each) and 22-29 ms at 8-32, VGG11 75 ms at 2 (3.2e6
each) and 78-86 ms otherwise, ShapesNet 0.7 ms from 4 up (1.3e5 each); 2^22 keeps each of them in
its quick range (measured by timing the models at 1 to 32 images, 2026-12-02, not yet a
``benchmarks chunks`` row). On CUDA the forward workload takes the mirror's bound."""
# Peak memory of one mirror layer per target, as a multiple of its input plus output signal:
# room for the signal being built and for convolution workspaces.
WORKSPACE_FACTOR = 3
# A call in several chunks keeps what layers derive from the trace (Context.memo) while that
# takes at most this fraction of the chunk budget; past it, each chunk derives it again.
MEMO_SHARE = 4


@dataclass(frozen=True)
class DeviceMemory:
    """What a CUDA device offers a call, in bytes: ``free`` (not held by anyone), ``cached``
    (held by PyTorch's caching allocator but not in use: free to this process)."""

    free: int
    cached: int

    @property
    def usable(self) -> int:
        return self.free + self.cached


def device_memory(device: torch.device) -> DeviceMemory | None:
    """The device's memory now, or None on a CPU."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return DeviceMemory(free, max(cached, 0))


def check_chunk_size(chunk_size: object) -> None:
    """Every path (cropped or not) takes the same chunk sizes: a positive int or None."""
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise InputError(f"chunk_size must be a positive int or None, got {chunk_size!r}")


def budget(memory_budget: int | None, device: torch.device, memory: DeviceMemory | None = None) -> int:
    """Bytes a chunk may use: the given budget, half of what CUDA memory this process can use
    (``memory``, read from the device when not given), or 2 GiB on CPU."""
    if memory_budget is not None:
        return memory_budget
    if device.type == "cuda":
        memory = memory or device_memory(device)
        return memory.usable // 2  # type: ignore[union-attr]
    return CPU_BUDGET


def plan(count: int, bytes_per_target: int, widest_per_target: int, memory: int, device_type: str,
         workload: str = "mirror") -> int:
    """Targets per chunk for ``count`` targets, each needing ``bytes_per_target`` bytes and a
    widest tensor of ``widest_per_target`` elements, within ``memory`` bytes, for a ``workload``
    of :data:`THROUGHPUT_ELEMENTS` (see the module docstring). At least 1; equal chunks."""
    if count < 1:
        return 1
    widest = max(1, widest_per_target)
    cap = min(
        memory // max(1, bytes_per_target),
        INDEX_LIMIT // widest,
        THROUGHPUT_ELEMENTS.get((device_type, workload), THROUGHPUT_ELEMENTS["cpu", workload]) // widest,
        count,
    )
    cap = max(1, cap)
    return ceil(count / ceil(count / cap))


def mirror_needs(mirror: Mirror, trace: Trace, start: str) -> tuple[int, int]:
    """(bytes, elements of the widest tensor) one target needs through the mirror from layer
    ``start`` down, for every input of the trace."""
    images = len(trace)
    result = trace.input[0].numel()
    widest = 0
    for source in mirror.sources(start):
        record = trace.records[source]
        widest = max(widest, prod(record.input_shape[1:]) + prod(record.output_shape[1:]))
    return (result + WORKSPACE_FACTOR * widest) * images * trace.output.element_size(), max(widest, result) * images


def memo_bytes(mirror: Mirror, trace: Trace, start: str) -> int:
    """The most a call's ``Context.memo`` can hold from layer ``start`` down: one tensor the
    size of its recorded output for each activation and product (fewer under the deconvnet
    rule, whose rectifiers derive nothing)."""
    elements = sum(prod(trace.records[layer.source].output_shape) for layer in mirror.layers[mirror.index_of(start):]
                   if isinstance(layer, (Activation, Product)))
    return elements * trace.output.element_size()


def window_needs(trace: Trace, layers: Sequence[MirrorLayer], images: int, channels: int) -> tuple[int, int]:
    """(bytes, elements of the widest tensor) one target needs on the cropped path: its widest
    window and its pasted result, for ``images`` inputs."""
    widest = widest_window(layers, trace.records, channels)
    result = trace.input[0].numel()
    return (WORKSPACE_FACTOR * widest + 2 * result) * images * trace.output.element_size(), max(widest, result) * images


def forward_chunk(sizes: Iterable[int], element_size: int, count: int, memory: int, device_type: str,
                  workload: str) -> int:
    """How many of ``count`` forward passes (occluder positions, perturbed inputs) to run at once
    within ``memory`` bytes, from the element counts of one pass's values: each pass needs its two
    largest three times over, and its largest is the widest tensor."""
    largest = sorted(sizes, reverse=True)[:2]
    return plan(count, 3 * sum(largest) * element_size, largest[0] if largest else 1, memory, device_type, workload)


def mirror_chunk(mirror: Mirror, trace: Trace, start: str, memory: int, count: int | None = None) -> int:
    """How many of ``count`` targets (default: no limit from the count) to run at once through
    the mirror from layer ``start`` down, within ``memory`` bytes."""
    return plan(count or INDEX_LIMIT, *mirror_needs(mirror, trace, start), memory, trace.input.device.type)


def window_chunk(trace: Trace, layers: Sequence[MirrorLayer], images: int, channels: int, memory: int,
                 count: int | None = None) -> int:
    """How many of ``count`` targets to run at once on the cropped path, within ``memory`` bytes."""
    return plan(count or INDEX_LIMIT, *window_needs(trace, layers, images, channels), memory, trace.input.device.type)


def mirror_chunks(
    mirror: Mirror,
    trace: Trace,
    start: str,
    targets: Tensor,
    make: Callable[[Tensor], Tensor],
    chunk_size: int | None,
    memory: int,
    context: Context,
    precision: Callable[[], AbstractContextManager[None]],
) -> Iterator[tuple[Tensor, Tensor]]:
    """The mirror from layer ``start`` down over ``targets``, ``chunk_size`` at a time (default:
    as planned within ``memory`` bytes): yields (targets of the chunk, Tensor[N, k, ...]).
    ``make(chunk)`` builds a chunk's signal (see :mod:`deconvnet.signals`); ``precision()`` is
    entered around each chunk's mirror, not around the yield, so the caller keeps its modes."""
    size = chunk_size or mirror_chunk(mirror, trace, start, memory, targets.numel())
    if size < targets.numel() and memo_bytes(mirror, trace, start) <= memory // MEMO_SHARE:
        context = replace(context, memo={})  # what layers derive from the trace, made once for every chunk
    for lo in range(0, targets.numel(), size):
        chunk = targets[lo : lo + size]
        with torch.no_grad(), precision():
            out = mirror(make(chunk), trace.records, start, context)
        yield chunk, out


def collect(chunks: Iterator[tuple[Tensor, Tensor]], total: int) -> Tensor:
    """The chunks of a reconstruction joined along the targets: Tensor[N, K, ...]."""
    result: Tensor | None = None
    lo = 0
    for _, out in chunks:
        if result is None:
            if out.shape[1] == total:
                return out.contiguous()
            result = out.new_empty(out.shape[0], total, *out.shape[2:])
        result[:, lo : lo + out.shape[1]] = out
        lo += out.shape[1]
    return result  # type: ignore[return-value]
