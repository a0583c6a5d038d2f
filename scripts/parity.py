"""Print deconvnet's relative error against Captum and autograd on torchvision models.

    python scripts/parity.py [--models vgg16 alexnet resnet18 densenet121] [--size 224]

Per model (random weights, float32, one image):
- deconvnet classes vs ``Deconvolution(model).attribute(x, target=c)``;
- guided classes vs ``GuidedBackprop``;
- gradient classes vs ``torch.autograd.grad``;
- an inner layer's strongest units (``signal="unit"``) vs ``NeuronDeconvolution``.
Error = max |ours - reference| / max |reference|.

Captum hooks only ``nn.ReLU`` modules; torchvision's DenseNet ends its forward with
``F.relu``, so for Captum's class comparisons DenseNet is run with that ReLU as a module
(the same function; deconvnet reverses functional ReLUs either way).
"""

from __future__ import annotations

import argparse
import warnings

import torch
import torch.nn.functional as F
import torchvision
from captum.attr import Deconvolution, GuidedBackprop, NeuronDeconvolution
from torch import nn

from deconvnet import DeconvNet

LAYERS = {
    "vgg16": "features.22",
    "vgg11": "features.12",
    "alexnet": "features.7",
    "resnet18": "layer3.1.conv2",
    "resnet50": "layer3.2.conv2",
    "densenet121": "features.denseblock2.denselayer3.conv2",
}


class DenseNetModuleReLU(nn.Module):
    def __init__(self, densenet: nn.Module) -> None:
        super().__init__()
        self.features, self.classifier, self.relu = densenet.features, densenet.classifier, nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.adaptive_avg_pool2d(self.relu(self.features(x)), (1, 1))
        return self.classifier(torch.flatten(out, 1))


def error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vgg16", "alexnet", "resnet18", "densenet121"])
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    print("| model | deconvnet vs Deconvolution | guided vs GuidedBackprop | gradient vs autograd "
          "| inner units vs NeuronDeconvolution |")
    print("|---|---|---|---|---|")
    for name in args.models:
        torch.manual_seed(0)
        model = getattr(torchvision.models, name)(weights=None).eval()
        classes_model = DenseNetModuleReLU(model).eval() if name.startswith("densenet") else model
        x = torch.randn(1, 3, args.size, args.size)
        classes = [0, 1, 250, 999]
        repeated = x.repeat(len(classes), 1, 1, 1)
        dn = DeconvNet(classes_model)
        trace = dn.trace(x)
        deconv = error(dn.reconstruct_classes(trace, classes)[0],
                       Deconvolution(classes_model).attribute(repeated, target=classes))
        guided = error(dn.reconstruct_classes(trace, classes, rule="guided")[0],
                       GuidedBackprop(classes_model).attribute(repeated, target=classes))
        inputs = repeated.clone().requires_grad_(True)
        out = classes_model(inputs)
        (grad,) = torch.autograd.grad(out[torch.arange(len(classes)), classes].sum(), inputs)
        gradient = error(dn.reconstruct_classes(trace, classes, rule="gradient")[0], grad)

        layer = LAYERS[name]
        dn = DeconvNet(model)
        trace = dn.trace(x)
        activation = dn.activation(trace, layer)[0]
        channels = [c for c in (0, 7, 31, 63) if c < activation.shape[0]]
        ours = dn.reconstruct(trace, layer, channels, signal="unit")[0]
        worst = 0.0
        for j, c in enumerate(channels):
            h, w = divmod(int(activation[c].flatten().argmax()), activation.shape[-1])
            theirs = NeuronDeconvolution(model, model.get_submodule(layer)).attribute(x, neuron_selector=(c, h, w))
            worst = max(worst, error(ours[j], theirs[0]))
        print(f"| {name} ({layer}) | {deconv:.1e} | {guided:.1e} | {gradient:.1e} | {worst:.1e} |", flush=True)


if __name__ == "__main__":
    main()
