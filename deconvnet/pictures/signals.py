"""Reconstructions of signals (ECG, EEG, audio, sensors) as pictures: the signal drawn as a line
chart, each reconstruction drawn under it on the same time axis (:func:`signal_figure`).

Signals are Tensor[C, L]: every channel is one line, in the chart colours of
:data:`deconvnet.pictures.image.SERIES_COLOURS`. Reconstructions are signed, with zero marked;
each has its own vertical scale, symmetric about zero. Charts are drawn with Pillow, as the
rest of the package's charts are.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw
from torch import Tensor
from torchvision.transforms.functional import pil_to_tensor

from .image import SERIES_COLOURS, line_chart, stack_pictures

__all__ = ["signal_chart", "signal_figure", "trace_picture"]

_ZERO = (190, 190, 190)  # the zero line under a signed trace


def signal_chart(signal: Tensor, *, title: str = "", signed: bool = False, width: int = 520,
                 height: int = 120) -> Image.Image:
    """signal (Tensor[C, L]) as a line chart, one line per channel; ``signed``: a reconstruction,
    its vertical axis symmetric about zero."""
    values = signal.detach().double().cpu()
    if signed:
        peak = float(values.abs().max()) or 1.0
        limit = (-peak, peak)
    else:
        low, high = float(values.min()), float(values.max())
        limit = (low, high if high > low else low + 1.0)
    return line_chart(list(range(values.shape[-1])), values.reshape(-1, values.shape[-1]), title=title,
                      size=(width, height), ylim=limit, xlabel="sample")


def trace_picture(signal: Tensor, *, signed: bool = False, low: float | None = None, high: float | None = None,
                  height: int = 48, step: int | None = None) -> Tensor:
    """A short piece of signal (Tensor[C, l]) as a bare trace, no axes: one line per channel,
    ``step`` pixels per sample (default: about three times as wide as tall), as top-9 panels and atlas tiles draw a unit's receptive field.
    ``signed``: symmetric about a grey zero line (a reconstruction); else from ``low`` to
    ``high`` (default: the piece's own range). NaN samples (past the signal's ends) are left out.
    Returns Tensor[3, height, step * l] in [0, 1]."""
    values = signal.detach().double().cpu()
    length = values.shape[-1]
    step = step if step is not None else max(1, -(-3 * height // length))  # about three times as wide as tall
    finite = values[torch.isfinite(values)]
    if signed:
        peak = float(finite.abs().max()) if finite.numel() else 0.0
        low, high = -(peak or 1.0), peak or 1.0
    else:
        if low is None:
            low = float(finite.min()) if finite.numel() else 0.0
        if high is None:
            high = float(finite.max()) if finite.numel() else 1.0
        high = high if high > low else low + 1.0
    canvas = Image.new("RGB", (step * length, height), "white")
    draw = ImageDraw.Draw(canvas)

    def y(value: float) -> float:
        return 2 + (1 - (value - low) / (high - low)) * (height - 5)  # type: ignore[operator]

    if signed:
        draw.line([(0, y(0.0)), (step * length, y(0.0))], fill=_ZERO, width=1)
    for c, row in enumerate(values.reshape(-1, length).tolist()):
        colour = SERIES_COLOURS[c % len(SERIES_COLOURS)]
        run: list[tuple[float, float]] = []
        for i, v in enumerate([*row, float("nan")]):  # a NaN ends the run being drawn
            if v == v:
                run.append((step * i + step / 2, y(v)))
            elif run:
                draw.line(run if len(run) > 1 else run * 2, fill=colour, width=1)
                run = []
    return pil_to_tensor(canvas).float() / 255


def signal_figure(
    x: Tensor,
    reconstructions: Tensor,
    labels: Sequence[str] | None = None,
    *,
    names: Sequence[str] | None = None,
    width: int = 520,
) -> Image.Image:
    """One column per input: the signal, then each reconstruction under it on the same time axis.

    x (Tensor[N, C, L]), reconstructions (Tensor[N, K, C, L]); labels: K, one per target (e.g.
    "ventricular 0.91"); names: N, one per input.
    """
    n, k = reconstructions.shape[:2]
    columns = []
    for i in range(n):
        charts = [signal_chart(x[i], title=names[i] if names is not None else f"input {i}", width=width)]
        for j in range(k):
            label = labels[j] if labels is not None and j < len(labels) else f"target {j}"
            charts.append(signal_chart(reconstructions[i, j], title=f"{label}: reconstruction", signed=True,
                                       width=width))
        columns.append(stack_pictures(charts, gap=4))
    return stack_pictures(columns, horizontal=True, gap=16)
