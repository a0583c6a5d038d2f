"""Print deconvnet's relative error against Captum on torchvision models (random weights).

    python scripts/parity.py [--models vgg16 alexnet vgg11] [--size 224]

Classes: ``reconstruct_classes`` vs ``Deconvolution(model).attribute(x, target=c)``.
Channels: ``reconstruct(..., mode="max", signal="unit")`` vs ``NeuronDeconvolution`` at the
strongest unit. Error = max |ours - captum| / max |captum|, float32.
"""

from __future__ import annotations

import argparse
import warnings

import torch
import torchvision
from captum.attr import Deconvolution, NeuronDeconvolution

from deconvnet import DeconvNet

LAYERS = {"vgg16": "features.22", "vgg11": "features.12", "alexnet": "features.7"}


def error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vgg16", "alexnet"])
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    for name in args.models:
        torch.manual_seed(0)
        model = getattr(torchvision.models, name)(weights=None).eval()
        x = torch.randn(1, 3, args.size, args.size)
        dn = DeconvNet(model)
        trace = dn.trace(x)
        classes = [0, 1, 250, 999]
        ours = dn.reconstruct_classes(trace, classes)[0]
        theirs = Deconvolution(model).attribute(x.repeat(len(classes), 1, 1, 1), target=classes)
        print(f"{name:8s} classes {classes}: max relative error {error(ours, theirs):.2e}")
        layer = LAYERS[name]
        activation = dn.activation(trace, layer)[0]
        worst = 0.0
        channels = [0, 7, 31, 63]
        ours = dn.reconstruct(trace, layer, channels, signal="unit")[0]
        for j, c in enumerate(channels):
            h, w = divmod(int(activation[c].flatten().argmax()), activation.shape[-1])
            theirs = NeuronDeconvolution(model, model.get_submodule(layer)).attribute(
                x, neuron_selector=(c, h, w)
            )[0]
            worst = max(worst, error(ours[j], theirs))
        print(f"{name:8s} {layer} channels {channels}: max relative error {worst:.2e}")


if __name__ == "__main__":
    main()
