"""Branching torchvision models: parity with Captum, the oracle at odd sizes, shared weights."""

from __future__ import annotations

import functools
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from captum.attr import Deconvolution, GuidedBackprop, NeuronDeconvolution
from reference import assert_exact, classes_reference
from torch import nn

from deconvnet import DeconvNet
from deconvnet import mirror as mirror_layers

RTOL = 1e-5  # float32


@functools.cache
def model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None).eval()


def captum(method, net, x, classes):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return method(net).attribute(x.repeat(len(classes), 1, 1, 1), target=classes)


class DenseNetModuleReLU(nn.Module):
    """DenseNet121 whose final functional ReLU is an nn.ReLU module.

    Captum's hooks only see nn.ReLU modules; torchvision's DenseNet.forward ends with
    F.relu, which Captum therefore treats as a plain ReLU. deconvnet reverses functional ReLUs
    too, so Captum can only be compared with the final ReLU made a module.
    """

    def __init__(self, densenet: nn.Module) -> None:
        super().__init__()
        self.features, self.classifier, self.relu = densenet.features, densenet.classifier, nn.ReLU()

    def forward(self, x):
        out = F.adaptive_avg_pool2d(self.relu(self.features(x)), (1, 1))
        return self.classifier(torch.flatten(out, 1))


@pytest.mark.parametrize("name", ["resnet18", "densenet121"])
def test_classes_match_captum_deconvolution_and_guided_backprop(name):
    net = model(name) if name == "resnet18" else DenseNetModuleReLU(model(name)).eval()
    x = torch.randn(1, 3, 97, 97)
    dn = DeconvNet(net)
    trace = dn.trace(x)
    classes = [3, 500]
    assert_exact(dn.reconstruct_classes(trace, classes)[0], captum(Deconvolution, net, x, classes), rtol=RTOL)
    guided = dn.reconstruct_classes(trace, classes, rule="guided")[0]
    assert_exact(guided, captum(GuidedBackprop, net, x, classes), rtol=RTOL)


def test_densenet_functional_relu_is_reversed_too():
    # On the unmodified DenseNet the oracle (which also catches F.relu) agrees with deconvnet.
    net = model("densenet121")
    x = torch.randn(1, 3, 64, 64)
    assert_exact(DeconvNet(net).reconstruct_classes(x, [1])[:, :1], classes_reference(net, x, [1]), rtol=RTOL)


@pytest.mark.parametrize(
    ("name", "layer"),
    [("resnet18", "layer3.1.conv2"), ("resnet18", "layer2.0.downsample.1"),
     ("densenet121", "features.denseblock2.denselayer3.conv2")],
)
def test_inner_channels_match_neuron_deconvolution(name, layer):
    net = model(name)
    x = torch.randn(1, 3, 97, 97)
    dn = DeconvNet(net)
    trace = dn.trace(x)
    activation = dn.activation(trace, layer)[0]
    channels = [0, 5, 11]
    ours = dn.reconstruct(trace, layer, channels, signal="unit")[0]
    for j, c in enumerate(channels):
        h, w = divmod(int(activation[c].flatten().argmax()), activation.shape[-1])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = NeuronDeconvolution(net, net.get_submodule(layer)).attribute(x, neuron_selector=(c, h, w))
        assert_exact(ours[j], theirs[0], rtol=RTOL)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "densenet121", "vgg16_bn", "alexnet", "squeezenet1_1"])
def test_supported_models_match_the_oracle_at_odd_sizes(name):
    net = model(name)
    x = torch.randn(2, 3, 67, 75)
    dn = DeconvNet(net)
    ours = dn.reconstruct_classes(x, [0, 999])
    assert ours.shape == (2, 2, 3, 67, 75)
    assert_exact(ours, classes_reference(net, x, [0, 999]), rtol=RTOL)


def test_resnet_layers_weights_and_model_untouched():
    net = model("resnet18")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    dn = DeconvNet(net)
    for name in ("layer3.1.conv2", "layer4", "layer1.0.relu:0", "layer1.0.relu:1", "maxpool", "fc"):
        assert name in dn.layers, name
    assert dn.reconstruct(torch.randn(1, 3, 64, 64), "layer4", [0, 1]).shape == (1, 2, 3, 64, 64)
    convs = {m.source: m for m in dn.mirror.layers if isinstance(m, mirror_layers.ConvTranspose2d)}
    assert convs["layer3.1.conv2"].weight is net.layer3[1].conv2.weight
    assert convs["layer2.0.downsample.0"].weight is net.layer2[0].downsample[0].weight
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(not m._forward_hooks and not m._backward_hooks for m in net.modules())
    text = repr(dn.mirror)
    assert re.search(r"\(add\)\s+Add\(\)\s+-> layer1\.0\.bn2, maxpool", text)
    assert re.search(r"\(conv1\)\s+ConvTranspose2d\(64, 3, .*-> input", text)
