"""Every channel's strongest unit against Captum's NeuronDeconvolution."""

from __future__ import annotations

import warnings

import torch

from deconvnet import DeconvNet

from .harness import (
    _model,
    _row,
    checked,
    relative_error,
    timed,
)


def captum_units(model: torch.nn.Module, layer: torch.nn.Module, x: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """Captum's NeuronDeconvolution for K units (channel, i, j) of one image, batched as far as
    Captum allows: the image repeated K times and a selector that picks unit k in row k."""
    from captum.attr import NeuronDeconvolution

    rows = torch.arange(units.shape[0], device=x.device)

    def select(output: torch.Tensor) -> torch.Tensor:
        return output[rows, units[:, 0], units[:, 1], units[:, 2]]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return NeuronDeconvolution(model, layer).attribute(x.repeat(units.shape[0], 1, 1, 1), neuron_selector=select)


def bench_channels(model_name: str, layer: str, channels: int | None, size: int, repeats: int,
                   device: torch.device) -> dict:
    """The strongest unit of each of the first ``channels`` channels of ``layer`` (all when
    None), projected: deconvnet (cropped, and uncropped) vs Captum's NeuronDeconvolution."""
    model = _model(model_name, device)
    x = torch.randn(1, 3, size, size, device=device)
    dn = DeconvNet(model)
    trace = dn.trace(x)
    activation = dn.activation(trace, layer)[0]
    count = activation.shape[0] if channels is None else min(channels, activation.shape[0])
    flat = activation[:count].flatten(1).argmax(dim=1)
    units = torch.stack([torch.arange(count, device=device), flat // activation.shape[-1],
                         flat % activation.shape[-1]], dim=1)
    chosen = list(range(count))
    module = model.get_submodule(layer)
    ours = dn.reconstruct(x, layer, chosen, signal="unit")[0]
    error = checked(device, relative_error(ours, captum_units(model, module, x, units)), f"channels {model_name} {layer}")
    checked(device, relative_error(dn.reconstruct(x, layer, chosen, signal="unit", crop=False)[0], ours), "crop vs full")
    seconds = timed({
        "deconvnet": lambda: dn.reconstruct(x, layer, chosen, signal="unit"),
        "deconvnet uncropped": lambda: dn.reconstruct(x, layer, chosen, signal="unit", crop=False),
        "captum": lambda: captum_units(model, module, x, units),
    }, repeats, device)
    return _row("channels", f"{model_name} {layer}", size, count, device, torch.float32, seconds,
                **{"captum / deconvnet": seconds["captum"] / seconds["deconvnet"],
                   "uncropped / cropped": seconds["deconvnet uncropped"] / seconds["deconvnet"],
                   "relative error": error})
