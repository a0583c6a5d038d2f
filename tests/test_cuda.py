"""The GPU path: parity on CUDA. Skipped on machines without CUDA (such as CI here)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision
from chains import chain_nets, dag_nets
from hypothesis import HealthCheck, given, settings
from reference import assert_exact, classes_reference

from deconvnet import DeconvNet

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(chain_nets(head=True))
def test_chains_match_oracle_on_cuda(case):
    net, x = case
    net, x = net.cuda(), x.cuda()
    ours = DeconvNet(net).reconstruct_classes(x)
    assert ours.is_cuda
    assert_exact(ours, classes_reference(net, x, list(range(ours.shape[1]))), rtol=1e-6)


@SETTINGS
@given(dag_nets(head=True))
def test_graphs_match_oracle_on_cuda(case):
    net, x = case
    net, x = net.cuda(), x.cuda()
    ours = DeconvNet(net, rule="guided").reconstruct_classes(x)
    assert_exact(ours, classes_reference(net, x, list(range(ours.shape[1])), rule="guided"), rtol=1e-6)


@pytest.mark.parametrize("name", ["vgg11", "alexnet", "resnet18"])
def test_torchvision_classes_match_captum_on_cuda(name):
    from captum.attr import Deconvolution

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval().cuda()
    x = torch.randn(1, 3, 224, 224, device="cuda")
    classes = list(range(8))
    ours = DeconvNet(model).reconstruct_classes(x, classes)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = Deconvolution(model).attribute(x.repeat(8, 1, 1, 1), target=classes)
    assert_exact(ours, theirs, rtol=1e-4)
    layer = {"vgg11": "features.7", "alexnet": "features.7", "resnet18": "layer2.0.conv1"}[name]
    dn = DeconvNet(model)
    assert_exact(dn.reconstruct(x, layer, [0, 1]), dn.reconstruct(x, layer, [0, 1], crop=False), rtol=1e-4)


def test_deterministic_unpooling_is_bitwise_reproducible_on_cuda():
    torch.manual_seed(0)
    model = torchvision.models.alexnet(weights=None).eval().cuda()
    x = torch.randn(2, 3, 224, 224, device="cuda")
    dn = DeconvNet(model, deterministic=True)
    first = dn.reconstruct_classes(x, list(range(16)))
    assert all(torch.equal(first, dn.reconstruct_classes(x, list(range(16)))) for _ in range(3))
    fast = DeconvNet(model, deterministic=False).reconstruct_classes(x, list(range(16)))
    assert_exact(fast, first, rtol=1e-5)
