"""Reduced precision: bfloat16 autocast (float16 on CUDA) against float32."""

from __future__ import annotations

import torch

from deconvnet import DeconvNet

from .harness import (
    _model,
    _row,
    relative_error,
    timed,
)


def bench_precision(model_name: str, targets: int, size: int, repeats: int, device: torch.device) -> dict:
    """reconstruct_classes with the mirror in bfloat16 (float16 on CUDA; ``mirror_dtype``, the
    trace in float32) vs float32: time of the mirror, and the error against float32 as
    max-relative and relative L2."""
    model = _model(model_name, device)
    x = torch.randn(1, 3, size, size, device=device)
    classes = list(range(targets))
    dn = DeconvNet(model)
    low = torch.float16 if device.type == "cuda" else torch.bfloat16
    reduced_dn = DeconvNet(model, mirror_dtype=low)
    trace = dn.trace(x)
    reference = dn.reconstruct_classes(trace, classes)
    reduced_trace = reduced_dn.trace(x)

    def reduced() -> torch.Tensor:
        return reduced_dn.reconstruct_classes(reduced_trace, classes)

    out = reduced().float()
    l2 = ((out - reference).norm() / reference.norm()).item()
    seconds = timed({"float32": lambda: dn.reconstruct_classes(trace, classes), str(low).replace("torch.", ""): reduced},
                    repeats, device)
    return _row("precision", model_name, size, targets, device, torch.float32, seconds,
                **{"float32 / reduced": seconds["float32"] / seconds[str(low).replace("torch.", "")],
                   "relative L2 error": l2, "relative error": relative_error(out, reference)})
