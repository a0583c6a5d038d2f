"""Parity with Captum's Deconvolution and NeuronDeconvolution on torchvision VGG16 and AlexNet.

Random weights (``weights=None``): nothing is downloaded. Captum runs a forward and a hooked
backward pass per target; the mirror must give the same numbers.
"""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
import torchvision
from captum.attr import Deconvolution, NeuronDeconvolution
from reference import assert_exact

from deconvnet import DeconvNet
from deconvnet import mirror as mirror_layers

RTOL = 1e-5  # float32


@functools.cache
def model_and_input(name):
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    return model, torch.randn(2, 3, 224, 224)


def captum_classes(model, x, classes):
    n, k = x.shape[0], len(classes)
    repeated = x.repeat_interleave(k, dim=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = Deconvolution(model).attribute(repeated, target=classes * n)
    return out.view(n, k, *x.shape[1:])


@pytest.mark.parametrize("name", ["vgg16", "alexnet"])
def test_classes_match_captum(name):
    model, x = model_and_input(name)
    classes = [3, 500]
    ours = DeconvNet(model).reconstruct_classes(x, classes)
    assert ours.shape == (2, 2, 3, 224, 224)
    assert_exact(ours, captum_classes(model, x, classes), rtol=RTOL)


@pytest.mark.parametrize(("name", "layer"), [("vgg16", "features.22"), ("alexnet", "features.7")])
def test_strongest_units_match_neuron_deconvolution(name, layer):
    model, x = model_and_input(name)
    dn = DeconvNet(model)
    trace = dn.trace(x[:1])
    channels = [0, 17, 63]
    ours = dn.reconstruct(trace, layer, channels, mode="max", signal="unit")
    activation = dn.activation(trace, layer)[0]
    module = model.get_submodule(layer)
    for j, c in enumerate(channels):
        h, w = divmod(int(activation[c].flatten().argmax()), activation.shape[-1])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = NeuronDeconvolution(model, module).attribute(x[:1], neuron_selector=(c, h, w))
        assert_exact(ours[0, j], theirs[0], rtol=RTOL)


def test_alexnet_mirror_structure():
    model = torchvision.models.alexnet(weights=None).eval()
    dn = DeconvNet(model)
    unpools = [m for m in dn.mirror.layers if isinstance(m, mirror_layers.MaxUnpool2d)]
    assert len(unpools) == 3 and all(isinstance(m, mirror_layers.OverlapUnpool2d) for m in unpools)
    first_conv = dn.mirror[len(dn.mirror) - 1]
    assert isinstance(first_conv, mirror_layers.ConvTranspose2d)
    assert first_conv.weight is model.features[0].weight
    x = torch.randn(1, 3, 224, 224)
    assert dn.activation(x, "features.0").shape[-1] == 55
    assert dn.reconstruct(x, "features.0", [1]).shape == (1, 1, 3, 224, 224)
