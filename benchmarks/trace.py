"""The trace: dn.trace against model(x)."""

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


def bench_trace(model_name: str, batch: int, size: int, repeats: int, device: torch.device) -> dict:
    """dn.trace(x) (output, switches, activations) vs model(x) under no_grad, one batch."""
    model = _model(model_name, device)
    dn = DeconvNet(model)
    x = torch.randn(batch, 3, size, size, device=device)
    with torch.no_grad():
        error = checked(device, relative_error(dn.trace(x).output, model(x)), f"trace {model_name}")

    def forward() -> None:
        with torch.no_grad():
            model(x)

    seconds = timed({"dn.trace": lambda: dn.trace(x), "model(x)": forward}, repeats, device)
    return _row("trace", model_name, size, batch, device, torch.float32, seconds,
                **{"trace / forward": seconds["dn.trace"] / seconds["model(x)"], "relative error": error})
