"""The everyday call: one class of one image, warm and cold, against Captum."""

from __future__ import annotations

import torch

from deconvnet import DeconvNet

from .classes import captum_classes
from .harness import (
    _captum_comparable,
    _row,
    checked,
    relative_error,
    timed,
)


def bench_everyday(model_name: str, size: int, repeats: int, device: torch.device) -> dict:
    """One class of one fresh image per call: warm (DeconvNet built once) and cold (built inside
    the call) vs Captum's Deconvolution, with ``rectifiers="relu"`` (what Captum computes)."""
    model, label = _captum_comparable(model_name, device)
    images = [torch.randn(1, 3, size, size, device=device) for _ in range(repeats + 1)]
    dn = DeconvNet(model, rectifiers="relu")
    error = checked(device, relative_error(dn.reconstruct_classes(images[0], [3])[0], captum_classes(model, images[0], [3])),
                    f"everyday {model_name}")
    calls = {"warm": 0, "cold": 0, "captum": 0}

    def image(kind: str) -> torch.Tensor:  # a fresh image per call, the same sequence per method
        calls[kind] += 1
        return images[calls[kind] % len(images)]

    seconds = timed({
        "deconvnet warm": lambda: dn.reconstruct_classes(image("warm"), [3]),
        "deconvnet cold": lambda: DeconvNet(model, rectifiers="relu").reconstruct_classes(image("cold"), [3]),
        "captum": lambda: captum_classes(model, image("captum"), [3]),
    }, repeats, device)
    return _row("everyday", label, size, 1, device, torch.float32, seconds,
                **{"captum / warm": seconds["captum"] / seconds["deconvnet warm"],
                   "captum / cold": seconds["captum"] / seconds["deconvnet cold"],
                   "relative error": error})
