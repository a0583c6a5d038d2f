"""Top-9 projections: cropped units against one-hot signals through the whole mirror."""

from __future__ import annotations

import torch

from deconvnet import DeconvNet

from .harness import (
    _model,
    _row,
    checked,
    relative_error,
    timed,
)


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
