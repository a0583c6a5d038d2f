"""Single-unit projections computed on the unit's receptive field only.

A single activation's projection is exactly zero outside that unit's receptive field, so the
mirror can run on a window that follows the field down: one unit at the start layer, then at
each layer below the window that the layer above's window can reach. Every target gets a
window of the same size at each layer (its origin may lie outside the map, where the window is
masked to zero), so all targets still run as one batch. The result is pasted back into a zero
image.

Which layers can run on windows, and how, each mirror layer declares itself
(:meth:`~deconvnet.mirror.base.MirrorLayer.croppable`, ``forward_window``, ``window``); a mirror
with any other layer below the start runs uncropped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor

from .errors import InputError
from .mirror import Context, Mirror, MirrorLayer, Record

if TYPE_CHECKING:
    from .receptive import ReceptiveField

__all__ = ["CROP_AREA", "check_crop", "crop_chain", "cropped_channels", "cropped_units", "croppable", "project_units", "widest_window"]

CROP_AREA = 0.5
"""By default single-unit projections are cropped where the receptive field covers at most this
share of the input (on small maps the windows' bookkeeping would cost more than it saves)."""


def croppable(layers: Sequence[MirrorLayer], context: Context) -> bool:
    """Whether every mirror layer can run on windows under ``context``."""
    return all(layer.croppable(context) for layer in layers)


def check_crop(crop: object) -> None:
    """InputError unless ``crop`` is True, False or None."""
    if crop not in (None, True, False):
        raise InputError(f"crop must be True, False or None, got {crop!r}")


def crop_chain(
    mirror: Mirror,
    start: str,
    field: ReceptiveField | None,
    activation: Tensor,
    mode: str,
    crop: bool | None,
    input_size: Sequence[int],
    context: Context,
) -> list[MirrorLayer] | None:
    """The mirror layers to run on receptive-field windows from layer ``start`` down, or None to
    run uncropped. ``crop``: None decides (a small enough field, a chain of croppable layers,
    ``mode="max"``), False never, True insists (InputError where it cannot)."""
    if crop is False:
        return None
    below = mirror.chain_below(start)
    usable = (
        mode == "max" and activation.dim() == 2 + len(input_size) and field is not None
        and len(field.size) == len(input_size) and below is not None and croppable(below, context)
    )
    if crop is True and not usable:
        raise InputError(
            f"crop=True needs mode='max', rule='deconvnet' and, below {start}, a chain of "
            "only convs, max-pools, rectifiers, batch-norms, constant pads and identities"
        )
    if not usable:
        return None
    small = math.prod(field.size) <= CROP_AREA * math.prod(input_size)  # type: ignore[union-attr]
    return below if crop is True or small else None


Precision = Callable[[], AbstractContextManager[None]]


def cropped_channels(
    below: list[MirrorLayer], records: dict[str, Record], activation: Tensor, where: Tensor, targets: Tensor,
    signal: str, size: int, input_shape: Sequence[int], context: Context, precision: Precision, dtype: torch.dtype,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Each target channel's strongest unit (``where``: LongTensor[N, C] flat positions) of every
    input projected on its window, ``size`` channels at a time: yields (channels LongTensor[k],
    Tensor[N, k, *input_shape])."""
    n, channels_in = activation.shape[:2]
    flat = activation.reshape(n, channels_in, -1)
    for lo in range(0, targets.numel(), size):
        chunk = targets[lo : lo + size]
        k = chunk.numel()
        images = torch.arange(n, device=flat.device).repeat_interleave(k)
        channels = chunk.repeat(n)
        at = where[images, channels]
        values = flat[images, channels, at] if signal == "activation" else torch.ones_like(at, dtype=flat.dtype)
        units = torch.stack(torch.unravel_index(at, activation.shape[2:]), dim=1)
        slots = torch.arange(k, device=flat.device).repeat(n)
        with precision():
            result = flat.new_zeros(n, k, *input_shape, dtype=dtype)
            project_units(below, records, values, units, channels, images, result, slots, channels_in, context)
        yield chunk, result


def cropped_units(
    below: list[MirrorLayer], records: dict[str, Record], activation: Tensor, images: Tensor, channels: Tensor,
    positions: Tensor, values: Tensor, size: int, input_shape: Sequence[int], context: Context, precision: Precision,
    dtype: torch.dtype,
) -> Tensor:
    """T chosen units (see :func:`deconvnet.signals.unit_signal`), each projected on its window,
    ``size`` at a time: Tensor[T, *input_shape]."""
    total, count = images.numel(), activation.shape[1]
    result = activation.new_zeros(total, 1, *input_shape, dtype=dtype)
    for lo in range(0, total, size):
        part = slice(lo, lo + size)
        units = torch.stack(torch.unravel_index(positions[part], activation.shape[2:]), dim=1)
        rows = torch.arange(lo, min(lo + size, total), device=activation.device)
        with precision():
            project_units(below, records, values[part], units, channels[part], images[part], result,
                          torch.zeros_like(rows), count, context, rows=rows)
    return result[:, 0]


def project_units(
    layers: Sequence[MirrorLayer],
    records: dict[str, Record],
    values: Tensor,
    units: Tensor,
    channels: Tensor,
    images: Tensor,
    out: Tensor,
    slots: Tensor,
    start_channels: int,
    context: Context,
    rows: Tensor | None = None,
) -> None:
    """Project T single units, each on its own window, into ``out[rows[t], slots[t]]``
    (``rows`` defaults to ``images``).

    layers: the mirror layers from the start layer down to the input (all :func:`croppable`).
    values (Tensor[T]): the kept activation of each unit; units (LongTensor[T, d]): its (i, j)
    (its (l,), its (d, i, j)); channels (LongTensor[T]); images (LongTensor[T]): which input of
    the batch it belongs to. out (Tensor[N, K, C, *input size]): zeros where the projections are
    pasted; slots (LongTensor[T]). start_channels: the channels of the start layer's output.
    """
    count = values.shape[0]
    signal = values.new_zeros(count, start_channels, *[1] * units.shape[1])
    signal.view(count, start_channels)[torch.arange(count, device=values.device), channels] = values
    origin = units.clone()
    for layer in layers:
        signal, origin = layer.forward_window(signal, origin, records[layer.source], images, context)
    _paste(signal, origin, out, images if rows is None else rows, slots)


def widest_window(layers: Sequence[MirrorLayer], records: dict[str, Record], start_channels: int) -> int:
    """Largest input-plus-output window, in elements, one target needs on the way down."""
    size: tuple[int, ...] | None = None
    channels = start_channels
    widest = 0
    for layer in layers:
        shape = records[layer.source].input_shape
        size = size or (1,) * (len(shape) - 2)
        window = layer.window()
        below = window.extent(size) if window is not None else size
        widest = max(widest, channels * math.prod(size) + shape[1] * math.prod(below))
        size, channels = below, shape[1]
    return widest


def _paste(window: Tensor, origin: Tensor, out: Tensor, images: Tensor, slots: Tensor) -> None:
    """Copy each window (Tensor[T, C, h, w] at ``origin``) into ``out[images[t], slots[t]]``: on a
    GPU in one indexed add (no per-window launches, no host synchronisation); on a CPU window by
    window, which measured faster there (``python -m benchmarks channels``: 0.10 vs 0.12 s for
    AlexNet's 64 channels)."""
    if out.device.type == "cpu":
        _paste_each(window, origin, out, images, slots)
    else:
        _paste_all(window, origin, out, images, slots)


def _paste_each(window: Tensor, origin: Tensor, out: Tensor, images: Tensor, slots: Tensor) -> None:
    """Copy each window (Tensor[T, C, *w] at ``origin``) into ``out[images[t], slots[t]]``, one
    slice copy per window, dropping what falls outside the input."""
    dims = origin.shape[1]
    extents, full = window.shape[-dims:], out.shape[-dims:]
    for t, (corner, n, slot) in enumerate(zip(origin.tolist(), images.tolist(), slots.tolist(), strict=True)):
        source, target = [], []
        for start, extent, limit in zip(corner, extents, full, strict=True):
            skip, at = max(0, -start), max(0, start)
            length = min(extent - skip, limit - at)
            if length <= 0:
                break
            source.append(slice(skip, skip + length))
            target.append(slice(at, at + length))
        else:
            out[(n, slot, slice(None), *target)] = window[(t, slice(None), *source)]


def _paste_all(window: Tensor, origin: Tensor, out: Tensor, images: Tensor, slots: Tensor) -> None:
    """Add each window (Tensor[T, C, h, w] at ``origin``) into ``out[images[t], slots[t]]``,
    which holds zeros there, dropping what falls outside the image: one indexed add for all
    windows, no host synchronisation. Parts outside are zeroed and land on clamped positions,
    where adding zero changes nothing."""
    count, channels = window.shape[:2]
    dims = origin.shape[1]
    extents, full = window.shape[2:], out.shape[-dims:]
    inside: Tensor | None = None
    where: Tensor | int = 0
    for axis, (extent, limit) in enumerate(zip(extents, full, strict=True)):
        places = origin[:, axis, None] + torch.arange(extent, device=out.device)  # [T, w_axis]
        shape = (-1, *(extent if a == axis else 1 for a in range(dims)))
        ok = ((places >= 0) & (places < limit)).view(shape)
        inside = ok if inside is None else inside & ok
        where = where * limit + places.clamp(0, limit - 1).view(shape)  # flat position, last axis fastest
    values = torch.where(cast(Tensor, inside)[:, None], window, 0).to(out.dtype).flatten(2)  # [T, C, prod(w)]
    planes = out.view(-1, channels, math.prod(full))  # [N * K, C, prod(size)]
    plane = images * out.shape[1] + slots
    planes.index_put_((plane[:, None, None], torch.arange(channels, device=out.device)[None, :, None],
                       cast(Tensor, where).flatten(1)[:, None, :]), values, accumulate=True)
