"""The signals the mirror starts from: which targets a call asks for (checked against what the
layer or the model has), and the tensors that keep them.

Every maker returns ``make(chunk)``: for the targets of one chunk (LongTensor[k]), the signal on
the start layer's output, Tensor[N, k, *output shape], that the mirror runs down. Building a
chunk's signal only when it runs keeps one chunk's worth in memory, whatever the number of
targets.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import InputError, TargetOutOfRangeError

__all__ = ["Region", "Targets", "channel_signal", "check_choice", "class_signal", "indices", "region_signal",
           "strongest", "targets", "unit_signal"]

Targets = int | Sequence[int] | Tensor | None
"""Which channels or classes: one index, a sequence of indices, or ``None`` for all."""

Region = Tensor | str | tuple[int, ...] | None
"""Where on a dense output (Tensor[N, K, *S]) a class's logits count: None (the whole map),
``"predicted"`` (where the model's argmax is that class), a position (one index per spatial
dim of S), or weights (Tensor[*S] or Tensor[N, *S], bool or float)."""

Make = Callable[[Tensor], Tensor]


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    """InputError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise InputError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def targets(value: Targets, count: int, what: str, owner: str, device: torch.device) -> Tensor:
    """Target indices as a LongTensor[K] on ``device``, each checked against ``count``; ``owner``
    says whose targets they are in the out-of-range message ("features.0 has 64 channels")."""
    whats = "classes" if what == "class" else f"{what}s"
    if value is None:
        return torch.arange(count, device=device)
    if isinstance(value, Tensor):
        if value.dim() > 1 or value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            raise InputError(f"{whats} must be an int or a 1-D integer tensor, got {value.dtype} of shape {tuple(value.shape)}")
        items = value.reshape(-1).tolist()
    elif isinstance(value, bool) or not isinstance(value, (int, Sequence)) or isinstance(value, str):
        raise InputError(f"{whats} must be an int, a sequence of ints or None, got {type(value).__name__}")
    elif isinstance(value, int):
        items = [value]
    else:
        items = list(value)
    if not items:
        raise InputError(f"no {whats} given: pass at least one, or None for all")
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int):
            raise InputError(f"{what} {item!r} is not an int")
        if not 0 <= item < count:
            raise TargetOutOfRangeError(f"{what} {item} is out of range: {owner} (0..{count - 1})")
    return torch.tensor(items, dtype=torch.long, device=device)


def indices(name: str, value: Tensor | Sequence[int], count: int, owner: str, device: torch.device) -> Tensor:
    """A LongTensor[T] of indices below ``count``, from a 1-D sequence or tensor."""
    tensor = torch.as_tensor(value, device=device) if not isinstance(value, Tensor) else value.to(device)
    if tensor.dim() != 1 or tensor.is_floating_point() or tensor.dtype == torch.bool or tensor.numel() == 0:
        raise InputError(f"{name} must be a non-empty 1-D integer sequence or tensor, got shape {tuple(tensor.shape)} "
                         f"of {tensor.dtype}")
    if int(tensor.min()) < 0 or int(tensor.max()) >= count:
        bad = int(tensor.max()) if int(tensor.max()) >= count else int(tensor.min())
        raise TargetOutOfRangeError(f"{name[:-1]} {bad} is out of range: {owner} (0..{count - 1})")
    return tensor.long()


def class_signal(output: Tensor) -> Make:
    """1 at each chunk class's output unit, 0 elsewhere: Tensor[N, k, classes]."""
    count = output.shape[1]

    def make(chunk: Tensor) -> Tensor:
        out = output.new_zeros(output.shape[0], chunk.numel(), count)
        out[:, torch.arange(chunk.numel(), device=out.device), chunk] = 1.0
        return out

    return make


def region_signal(output: Tensor, region: Region, input_size: Sequence[int]) -> Make:
    """For a dense output (Tensor[N, K, *S]): each chunk class's logits weighted by the region,
    0 at every other class: Tensor[N, k, K, *S]. The target is ``sum(region * out[:, c])``.

    region: see :data:`Region`, checked here. Weights given on the input's grid (``input_size``)
    when S is smaller (SegFormer's logits are a quarter of the input's size) are averaged over
    each output cell (``F.adaptive_avg_pool``): the weight of a cell is the share of it the
    region covers, so a mask drawn on the image means the same cells whatever the model's stride.
    """
    n, count, *size = output.shape
    weights = _region_weights(output, region, tuple(input_size))

    def make(chunk: Tensor) -> Tensor:
        k = chunk.numel()
        out = output.new_zeros(n, k, count, *size)
        chosen = weights(chunk)  # [N, k, *S]
        out[:, torch.arange(k, device=out.device), chunk] = chosen
        return out

    return make


def _region_weights(output: Tensor, region: Region, input_size: tuple[int, ...]) -> Callable[[Tensor], Tensor]:
    """``weights(chunk)`` -> Tensor[N, k, *S]: each chunk class's region weights, checked."""
    n, count, *size = output.shape
    spatial = tuple(size)
    grid = "x".join(map(str, spatial))
    if region is None:
        return lambda chunk: output.new_ones(n, chunk.numel(), *spatial)
    if isinstance(region, str):
        if region != "predicted":
            raise InputError(f"region must be None, 'predicted', a position or a Tensor of weights; got {region!r}")
        predicted = output.argmax(dim=1)  # [N, *S]
        view = (1, -1, *[1] * len(spatial))
        return lambda chunk: (predicted[:, None] == chunk.view(view)).to(output.dtype)
    if isinstance(region, tuple):
        if len(region) != len(spatial) or any(isinstance(i, bool) or not isinstance(i, int) for i in region):
            raise InputError(f"a position region has one int per spatial dim of the output ({grid}), got {region!r}")
        for i, (at, side) in enumerate(zip(region, spatial)):
            if not 0 <= at < side:
                raise TargetOutOfRangeError(f"position {region} is out of range: the output's grid is {grid} "
                                            f"(dim {i}: 0..{side - 1})")
        one = output.new_zeros(spatial)
        one[region] = 1
        return lambda chunk: one.expand(n, chunk.numel(), *spatial)
    if not isinstance(region, Tensor):
        raise InputError(f"region must be None, 'predicted', a position (a tuple of ints) or a Tensor of weights, "
                         f"got {type(region).__name__}; for a NumPy mask use torch.from_numpy(mask)")
    if not (region.dtype == torch.bool or region.is_floating_point()):
        raise InputError(f"region weights must be bool or floating point, got {region.dtype}")
    if region.is_floating_point() and not bool(torch.isfinite(region).all()):
        raise InputError("region holds NaN or infinite weights")
    weights = region.to(device=output.device, dtype=output.dtype)
    dims = len(spatial)
    accepted = f"Tensor[{grid}] or Tensor[{n}, {grid}] on the output's grid"
    if input_size != spatial:
        accepted += f", or on the input's grid ({'x'.join(map(str, input_size))})"
    if weights.dim() == dims:
        weights = weights.expand(n, *weights.shape)
    elif weights.dim() == dims + 1:
        if weights.shape[0] != n:
            raise InputError(f"region has weights for {weights.shape[0]} inputs but the batch has {n}; "
                             f"give {accepted}")
    else:
        raise InputError(f"region has shape {tuple(region.shape)}; give {accepted}")
    if tuple(weights.shape[1:]) != spatial:
        if tuple(weights.shape[1:]) == input_size:
            pool = (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)[dims - 1]
            weights = pool(weights[:, None], spatial)[:, 0]
        else:
            raise InputError(f"region has shape {tuple(region.shape)}; give {accepted}")
    empty = [i for i in range(n) if not bool(weights[i].ne(0).any())]
    if empty:
        raise InputError(f"region is empty (all zero) for input{'s' if len(empty) > 1 else ''} "
                         f"{', '.join(map(str, empty))}: its map would be zero")
    return lambda chunk: weights[:, None].expand(n, chunk.numel(), *spatial)


def strongest(activation: Tensor) -> Tensor:
    """The flat position of each channel's strongest unit in activation (Tensor[N, C, ...]):
    LongTensor[N, C], the first on ties, as ``torch.argmax``."""
    return activation.reshape(*activation.shape[:2], -1).argmax(dim=2)


def channel_signal(activation: Tensor, where: Tensor | None, signal: str) -> Make:
    """Each chunk channel alone, the rest of the layer zero: its strongest unit (``where``, from
    :func:`strongest`) or, with ``where=None``, its whole map; keeping the activation
    (``signal="activation"``, the paper) or 1 (``"unit"``). Tensor[N, k, *activation.shape[1:]]."""
    flat = activation.reshape(*activation.shape[:2], -1)
    n = flat.shape[0]
    batch = torch.arange(n, device=flat.device)[:, None]

    def make(chunk: Tensor) -> Tensor:
        k = chunk.numel()
        out = flat.new_zeros(n, k, *flat.shape[1:])
        slot = torch.arange(k, device=flat.device)
        if where is not None:
            at = where[:, chunk]  # [N, k]
            out[batch, slot, chunk, at] = flat[batch, chunk, at] if signal == "activation" else 1.0
        else:
            out[:, slot, chunk] = flat[:, chunk] if signal == "activation" else 1.0
        return out.view(n, k, *activation.shape[1:])

    return make


def unit_signal(activation: Tensor, images: Tensor, channels: Tensor, positions: Tensor,
                values: Tensor) -> tuple[Make, Tensor, int]:
    """T chosen units of a map layer (unit t: ``values[t]`` at flat position ``positions[t]`` of
    channel ``channels[t]`` of input ``images[t]``), each alone, uncropped.

    Unit t becomes target ``slot[t]`` of its own input; inputs with fewer units get zero targets
    in the remaining slots (one unit per image, as in top-9, wastes none). Returns (make over
    slots, LongTensor[T] slot of each unit, the number of slots).
    """
    n, count = activation.shape[:2]
    seen: dict[int, int] = {}
    slots = []
    for image in images.tolist():
        slots.append(seen.get(image, 0))
        seen[image] = slots[-1] + 1
    slot = torch.tensor(slots, device=activation.device)

    def make(chunk: Tensor) -> Tensor:
        out = activation.new_zeros(n, chunk.numel(), count, activation[0, 0].numel())
        chosen = (slot >= chunk[0]) & (slot <= chunk[-1])
        out[images[chosen], slot[chosen] - chunk[0], channels[chosen], positions[chosen]] = values[chosen]
        return out.view(n, chunk.numel(), *activation.shape[1:])

    return make, slot, max(seen.values())
