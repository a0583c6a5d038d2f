"""All classes of one image against Captum's Deconvolution (the input repeated K times)."""

from __future__ import annotations

import warnings

import torch

from deconvnet import DeconvNet

from .harness import (
    _captum_comparable,
    _row,
    checked,
    relative_error,
    timed,
)


def captum_classes(model: torch.nn.Module, x: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """Captum's Deconvolution at its best: the input repeated K times, one batched call."""
    from captum.attr import Deconvolution

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Deconvolution(model).attribute(x.repeat(len(classes), 1, 1, 1), target=classes)


def bench_classes(model_name: str, targets: int, size: int, repeats: int, device: torch.device,
                  rectifiers: str = "all") -> dict:
    """reconstruct_classes for K classes of one image vs Captum batched vs the forward floor.

    Captum gives the rule to nn.ReLU modules only: on models with other activations the
    comparison runs with ``rectifiers="relu"``, which computes the same."""
    model, model_name = _captum_comparable(model_name, device)
    x = torch.randn(1, 3, size, size, device=device)
    classes = list(range(targets))
    dn = DeconvNet(model, rectifiers=rectifiers)
    error = checked(device, relative_error(dn.reconstruct_classes(x, classes)[0], captum_classes(model, x, classes)),
                    f"classes {model_name}")

    def floor() -> None:
        with torch.no_grad():
            model(x.repeat(targets, 1, 1, 1))

    seconds = timed({"deconvnet": lambda: dn.reconstruct_classes(x, classes),
                     "captum": lambda: captum_classes(model, x, classes), "forward floor": floor}, repeats, device)
    label = model_name if rectifiers == "all" else f"{model_name} (rectifiers={rectifiers})"
    general = len(dn.general_layers)
    if general:
        label += f", {general} VJP layers"
    return _row("classes", label, size, targets, device, torch.float32, seconds,
                **{"captum / deconvnet": seconds["captum"] / seconds["deconvnet"],
                   "deconvnet / floor": seconds["deconvnet"] / seconds["forward floor"],
                   "relative error": error})
