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
from torch import Tensor

from .errors import InputError, TargetOutOfRangeError

__all__ = ["Targets", "channel_signal", "check_choice", "class_signal", "indices", "strongest", "targets",
           "unit_signal"]

Targets = int | Sequence[int] | Tensor | None
"""Which channels or classes: one index, a sequence of indices, or ``None`` for all."""

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
