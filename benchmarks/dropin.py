"""deconvnet.captum against Captum on the same calls."""

from __future__ import annotations

import warnings

import torch

from .harness import (
    _captum_comparable,
    _row,
    checked,
    relative_error,
    timed,
)


def bench_dropin(model_name: str, size: int, repeats: int, device: torch.device) -> dict:
    """The same Captum call through ``deconvnet.captum`` and through Captum: ``Deconvolution``
    for one class of one fresh image, the object made once (reused) and made inside every call
    (as ``Deconvolution(model).attribute(x, target=t)`` is usually written), and
    ``NeuronDeconvolution`` for one unit of a middle layer."""
    import captum.attr as theirs

    from deconvnet import captum as ours

    model, label = _captum_comparable(model_name, device)
    middle = {"vgg16": "features.16", "resnet50": "layer2", "densenet121": "features.denseblock2",
              "mobilenet_v2": "features.7", "efficientnet_b0": "features.4"}
    layer = dict(model.named_modules())[middle[model_name]]
    images = [torch.randn(1, 3, size, size, device=device) for _ in range(repeats + 1)]
    reused = ours.Deconvolution(model)
    neurons = ours.NeuronDeconvolution(model, layer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        error = max(
            relative_error(reused.attribute(images[0], target=3), theirs.Deconvolution(model).attribute(images[0], target=3)),
            relative_error(neurons.attribute(images[0], (5, 10, 10)),
                           theirs.NeuronDeconvolution(model, layer).attribute(images[0], (5, 10, 10))),
        )
    checked(device, error, f"drop-in {model_name}")
    calls: dict[str, int] = {}

    def image(kind: str) -> torch.Tensor:  # a fresh image per call, the same sequence per method
        calls[kind] = calls.get(kind, 0) + 1
        return images[calls[kind] % len(images)]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seconds = timed({
            "ours reused": lambda: reused.attribute(image("reused"), target=3),
            "ours per call": lambda: ours.Deconvolution(model).attribute(image("per call"), target=3),
            "captum": lambda: theirs.Deconvolution(model).attribute(image("captum"), target=3),
            "ours neuron": lambda: neurons.attribute(image("neuron"), (5, 10, 10)),
            "captum neuron": lambda: theirs.NeuronDeconvolution(model, layer).attribute(image("captum neuron"), (5, 10, 10)),
        }, repeats, device)
    return _row("dropin", label, size, 1, device, torch.float32, seconds,
                **{"captum / ours reused": seconds["captum"] / seconds["ours reused"],
                   "captum / ours per call": seconds["captum"] / seconds["ours per call"],
                   "captum / ours, neuron": seconds["captum neuron"] / seconds["ours neuron"],
                   "relative error": error})


def bench_dropin_occlusion(model_name: str, size: int, repeats: int, device: torch.device) -> dict:
    """``Occlusion(model).attribute(x, (3, 32, 32), strides=(3, 16, 16), target=t,
    perturbations_per_eval=64)``: deconvnet.captum (exact incremental inference) vs Captum."""
    import captum.attr as theirs

    from deconvnet import captum as ours

    model, label = _captum_comparable(model_name, device)
    x = torch.randn(1, 3, size, size, device=device)
    options = dict(sliding_window_shapes=(3, 32, 32), strides=(3, 16, 16), target=3, perturbations_per_eval=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        error = checked(device, relative_error(ours.Occlusion(model).attribute(x, **options),
                                               theirs.Occlusion(model).attribute(x, **options).to(x.dtype)),
                        f"drop-in occlusion {model_name}")
        seconds = timed({
            "ours": lambda: ours.Occlusion(model).attribute(x, **options),
            "captum": lambda: theirs.Occlusion(model).attribute(x, **options),
        }, repeats, device)
    return _row("dropin-occlusion", label, size, 169, device, torch.float32, seconds,
                **{"captum / ours": seconds["captum"] / seconds["ours"], "relative error": error})
