"""Reconstructions of signals (ECG, EEG, audio, sensors) as pictures: the signal drawn as a line
chart, each reconstruction drawn under it on the same time axis (:func:`signal_figure`).

Signals are Tensor[C, L]: every channel is one line, in the chart colours of
:data:`deconvnet.pictures.image.SERIES_COLOURS`. Reconstructions are signed, with zero marked;
each has its own vertical scale, symmetric about zero. Charts are drawn with Pillow, as the
rest of the package's charts are.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image
from torch import Tensor

from .image import line_chart, stack_pictures

__all__ = ["signal_chart", "signal_figure"]


def signal_chart(signal: Tensor, *, title: str = "", signed: bool = False, width: int = 520,
                 height: int = 120) -> Image.Image:
    """signal (Tensor[C, L]) as a line chart, one line per channel; ``signed``: a reconstruction,
    its vertical axis symmetric about zero."""
    values = signal.detach().double().cpu()
    limit = None
    if signed:
        peak = float(values.abs().max()) or 1.0
        limit = (-peak, peak)
    else:
        low, high = float(values.min()), float(values.max())
        limit = (low, high if high > low else low + 1.0)
    return line_chart(list(range(values.shape[-1])), values.reshape(-1, values.shape[-1]), title=title,
                      size=(width, height), ylim=limit, xlabel="sample")


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
