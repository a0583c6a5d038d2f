"""Chunk planning: how many targets go through the mirror at once, and joining the chunks.

The K targets of a reconstruction run as one batch when they fit a memory budget (2 GiB on CPU,
half the free memory on CUDA, or ``DeconvNet(memory_budget=...)``), else in chunks sized from the
recorded layer sizes. Results never depend on the chunk size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from math import prod

import torch
from torch import Tensor

from .capture import Trace
from .crop import widest_window
from .errors import InputError
from .mirror import Mirror, MirrorLayer

__all__ = ["check_chunk_size", "budget", "mirror_chunk", "window_chunk", "collect"]

CPU_BUDGET = 2 * 1024**3
# Peak memory of one mirror layer per target, as a multiple of its input plus output signal:
# room for the signal being built and for convolution workspaces.
WORKSPACE_FACTOR = 3


def check_chunk_size(chunk_size: object) -> None:
    """Every path (cropped or not) takes the same chunk sizes: a positive int or None."""
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise InputError(f"chunk_size must be a positive int or None, got {chunk_size!r}")


def budget(memory_budget: int | None, device: torch.device) -> int:
    """Bytes a chunk may use: the given budget, half the free CUDA memory, or 2 GiB on CPU."""
    if memory_budget is not None:
        return memory_budget
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    return CPU_BUDGET


def mirror_chunk(mirror: Mirror, trace: Trace, start: str, memory: int) -> int:
    """How many targets fit ``memory`` bytes through the mirror from layer ``start`` down."""
    per_target = trace.input[0].numel()  # the result itself
    widest = 0
    for layer in mirror.layers[mirror.index_of(start):]:
        record = trace.records[layer.source]
        out_numel = trace.activations[layer.source][0].numel()
        widest = max(widest, prod(record.input_shape[1:]) + out_numel)
    per_target += WORKSPACE_FACTOR * widest
    per_target *= len(trace) * trace.output.element_size()
    return max(1, memory // per_target)


def window_chunk(trace: Trace, layers: Sequence[MirrorLayer], images: int, channels: int, memory: int) -> int:
    """How many targets fit ``memory`` on the cropped path: each needs its widest window and its
    pasted result, for ``images`` inputs."""
    per_target = WORKSPACE_FACTOR * widest_window(layers, trace.records, channels) + 2 * trace.input[0].numel()
    return max(1, memory // (per_target * images * trace.output.element_size()))


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
