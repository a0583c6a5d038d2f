"""Single-unit projections computed on the unit's receptive field only.

A single activation's projection is exactly zero outside that unit's receptive field, so the
mirror can run on a window that follows the field down: one unit at the start layer, then at
each layer below the window that the layer above's window can reach. Every target gets a
window of the same size at each layer (its origin may lie outside the map, where the window is
masked to zero), so all targets still run as one batch. The result is pasted back into a zero
image.

Windows pass through convolutions, max-pools, ReLUs, batch-norms and identities; a mirror with
any other layer below the start (average pools, linear layers, reshapes) runs uncropped.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from . import functional
from . import mirror as mirror_layers
from .mirror import MirrorLayer, Record

__all__ = ["croppable", "project_units", "widest_window"]

_POINTWISE = (mirror_layers.ReLU, mirror_layers.ChannelScale, mirror_layers.Identity)
_WINDOWED = (mirror_layers.ConvTranspose2d, mirror_layers.MaxUnpool2d)


def croppable(layers: Sequence[MirrorLayer]) -> bool:
    """Whether every mirror layer can run on windows."""
    return all(isinstance(layer, _POINTWISE + _WINDOWED) for layer in layers)


def _window_below(layer: MirrorLayer, size: Sequence[int]) -> tuple[int, int]:
    """The window a windowed layer's input needs for a ``size`` window on its output."""
    kernel, stride, _, dilation = layer.window()  # type: ignore[attr-defined]
    rows, cols = ((n - 1) * s + d * (k - 1) + 1 for n, s, d, k in zip(size, stride, dilation, kernel, strict=True))
    return rows, cols


def _origin_below(layer: MirrorLayer, origin: Tensor) -> Tensor:
    """Where the input window starts, for windows on the output starting at ``origin``."""
    _, stride, padding, _ = layer.window()  # type: ignore[attr-defined]
    return origin * torch.tensor(stride, device=origin.device) - torch.tensor(padding, device=origin.device)


def _mask_outside(signal: Tensor, origin: Tensor, size: Sequence[int]) -> Tensor:
    """Zero the window positions that fall outside a map of ``size`` (H, W)."""
    height, width = signal.shape[-2:]
    rows = origin[:, 0, None] + torch.arange(height, device=signal.device)
    cols = origin[:, 1, None] + torch.arange(width, device=signal.device)
    inside_rows = (rows >= 0) & (rows < size[0])
    inside_cols = (cols >= 0) & (cols < size[1])
    inside = inside_rows[:, :, None] & inside_cols[:, None, :]
    return signal * inside[:, None].to(signal.dtype)


def _conv_window(layer: mirror_layers.ConvTranspose2d, signal: Tensor, origin: Tensor, record: Record) -> tuple[Tensor, Tensor]:
    # The whole transposed output, unpadded: the window's own padding is its origin shift.
    size = _window_below(layer, signal.shape[-2:])
    _, stride, _, dilation = layer.window()
    out = functional.conv_transpose2d(
        signal.unsqueeze(1), layer.weight, size, stride, ((0, 0), (0, 0)), dilation, layer.groups
    ).squeeze(1)
    below = _origin_below(layer, origin)
    return _mask_outside(out, below, record.input_shape[2:]), below


def _unpool_window(
    layer: mirror_layers.MaxUnpool2d, signal: Tensor, origin: Tensor, record: Record, images: Tensor
) -> tuple[Tensor, Tensor]:
    targets, channels, height, width = signal.shape
    switches: Tensor = record.switches  # type: ignore[assignment]
    pooled_h, pooled_w = switches.shape[-2:]
    rows = (origin[:, 0, None] + torch.arange(height, device=signal.device)).clamp(0, pooled_h - 1)
    cols = (origin[:, 1, None] + torch.arange(width, device=signal.device)).clamp(0, pooled_w - 1)
    # switches[images[t], :, rows[t, a], cols[t, b]] -> [T, C, h, w]
    picked = switches[images[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    below = _origin_below(layer, origin)
    out_h, out_w = _window_below(layer, (height, width))
    input_w = record.input_shape[3]
    local = (picked // input_w - below[:, 0, None, None, None]) * out_w + (picked % input_w - below[:, 1, None, None, None])
    # Positions outside the pooled map carry zero signal; clamp their (meaningless) targets.
    local = local.clamp(0, out_h * out_w - 1)
    out = signal.new_zeros(targets, channels, out_h * out_w)
    out.scatter_add_(2, local.flatten(2), signal.reshape(targets, channels, -1))
    return out.view(targets, channels, out_h, out_w), below


def project_units(
    layers: Sequence[MirrorLayer],
    records: dict[str, Record],
    values: Tensor,
    units: Tensor,
    channels: Tensor,
    images: Tensor,
    out: Tensor,
    slots: Tensor,
) -> None:
    """Project T single units, each on its own window, into ``out[images[t], slots[t]]``.

    layers: the mirror layers from the start layer down to the input (all :func:`croppable`).
    values (Tensor[T]): the kept activation of each unit; units (LongTensor[T, 2]): its (i, j);
    channels (LongTensor[T]); images (LongTensor[T]): which input of the batch it belongs to.
    out (Tensor[N, K, C, H, W]): zeros where the projections are pasted; slots (LongTensor[T]).
    """
    count = values.shape[0]
    start_channels = _output_channels(layers[0], records)
    signal = values.new_zeros(count, start_channels, 1, 1)
    signal[torch.arange(count, device=values.device), channels, 0, 0] = values
    origin = units.clone()
    for layer in layers:
        record = records[layer.source]
        if isinstance(layer, mirror_layers.ConvTranspose2d):
            signal, origin = _conv_window(layer, signal, origin, record)
        elif isinstance(layer, mirror_layers.MaxUnpool2d):
            signal, origin = _unpool_window(layer, signal, origin, record, images)
        else:
            signal = layer(signal.unsqueeze(1), record).squeeze(1)
    _paste(signal, origin, out, images, slots)


def widest_window(layers: Sequence[MirrorLayer], records: dict[str, Record]) -> int:
    """Largest input-plus-output window, in elements, one target needs on the way down."""
    height = width = 1
    channels = _output_channels(layers[0], records)
    widest = 0
    for layer in layers:
        below_channels = records[layer.source].input_shape[1]
        below_h, below_w = _window_below(layer, (height, width)) if isinstance(layer, _WINDOWED) else (height, width)
        widest = max(widest, channels * height * width + below_channels * below_h * below_w)
        height, width, channels = below_h, below_w, below_channels
    return widest


def _output_channels(layer: MirrorLayer, records: dict[str, Record]) -> int:
    # The start layer's output has as many channels as its input unless it is a conv.
    if isinstance(layer, mirror_layers.ConvTranspose2d):
        return int(layer.weight.shape[0])
    return records[layer.source].input_shape[1]


def _paste(window: Tensor, origin: Tensor, out: Tensor, images: Tensor, slots: Tensor) -> None:
    """Copy each window (Tensor[T, C, h, w] at ``origin``) into ``out[images[t], slots[t]]``."""
    height, width = window.shape[-2:]
    full_h, full_w = out.shape[-2:]
    for t, (top, left, n, slot) in enumerate(zip(*origin.T.tolist(), images.tolist(), slots.tolist(), strict=True)):
        src_top, src_left = max(0, -top), max(0, -left)
        dst_top, dst_left = max(0, top), max(0, left)
        rows = min(height - src_top, full_h - dst_top)
        cols = min(width - src_left, full_w - dst_left)
        if rows > 0 and cols > 0:
            out[n, slot, :, dst_top : dst_top + rows, dst_left : dst_left + cols] = window[
                t, :, src_top : src_top + rows, src_left : src_left + cols
            ]
