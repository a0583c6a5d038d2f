"""The GPU path: parity on CUDA. Skipped on machines without CUDA (such as CI here).

CUDA's defaults run convolutions in TF32 (10 bits of mantissa). Tests that compare to an
oracle in full float32 turn TF32 off for their duration; comparisons to Captum, which runs
under the same settings as we do, use a tolerance derived from the precision in force.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest
import torch
import torchvision
from chains import chain_nets, dag_nets
from hypothesis import HealthCheck, given, settings
from reference import assert_exact, classes_reference

from deconvnet import DeconvNet

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture
def full_float32() -> Iterator[None]:
    """TF32 off in convolutions and matrix products for one test, restored after."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def precision_tolerance(layers: int) -> float:
    """Relative L2 difference allowed between two float32 computations of a ``layers``-deep
    forward plus mirror, under the TF32 settings in force: each pass rounds every conv's
    inputs to the unit roundoff u (2^-11 in TF32, 2^-24 in float32), and two independent
    roundings per layer and pass differ by at most about 2u each."""
    tf32 = torch.backends.cudnn.allow_tf32
    unit = 2.0**-11 if tf32 else 2.0**-24
    return max(4 * unit * 2 * layers, 1e-5)


def relative_l2(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours - reference).norm() / reference.norm()).item()


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


def _captum_pair(name: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    from captum.attr import Deconvolution

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval().cuda()
    x = torch.randn(1, 3, 224, 224, device="cuda")
    classes = list(range(8))
    ours = DeconvNet(model).reconstruct_classes(x, classes)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = Deconvolution(model).attribute(x.repeat(8, 1, 1, 1), target=classes)
    weighted = sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in model.modules())
    return ours, theirs, weighted


@pytest.mark.parametrize("name", ["vgg11", "alexnet", "resnet18"])
def test_torchvision_classes_match_captum_in_float32(name, full_float32):
    ours, theirs, _ = _captum_pair(name)
    assert_exact(ours, theirs, rtol=1e-4)


@pytest.mark.parametrize("name", ["vgg11", "alexnet", "resnet18"])
def test_torchvision_classes_match_captum_under_cudas_defaults(name):
    """TF32 on (PyTorch's default for cuDNN): both sides round alike, within the derived bound."""
    ours, theirs, layers = _captum_pair(name)
    assert relative_l2(ours, theirs) <= precision_tolerance(layers)


@pytest.mark.parametrize("name", ["vgg11", "resnet18"])
def test_cropped_projection_matches_uncropped_on_cuda(name, full_float32):
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval().cuda()
    x = torch.randn(1, 3, 224, 224, device="cuda")
    layer = {"vgg11": "features.7", "resnet18": "layer2.0.conv1"}[name]
    dn = DeconvNet(model)
    assert_exact(dn.reconstruct(x, layer, [0, 1]), dn.reconstruct(x, layer, [0, 1], crop=False), rtol=1e-4)


def test_deterministic_is_bitwise_reproducible_on_cuda():
    torch.manual_seed(0)
    model = torchvision.models.alexnet(weights=None).eval().cuda()
    x = torch.randn(2, 3, 224, 224, device="cuda")
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True  # what users set; the mirror must switch it off while it runs
    try:
        dn = DeconvNet(model, deterministic=True)
        first = dn.reconstruct_classes(x, list(range(16)))
        assert all(torch.equal(first, dn.reconstruct_classes(x, list(range(16)))) for _ in range(3))
        assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic  # restored
        fast = DeconvNet(model, deterministic=False).reconstruct_classes(x, list(range(16)))
        assert relative_l2(fast, first) <= precision_tolerance(8)
    finally:
        torch.backends.cudnn.benchmark = saved


def test_repeated_plain_call_plans_the_same_chunks():
    """The default plan must not follow the memory the caching allocator keeps from one call."""
    from deconvnet.chunks import budget, device_memory

    torch.manual_seed(0)
    model = torchvision.models.vgg16(weights=None).eval().cuda()
    dn = DeconvNet(model)
    device = torch.device("cuda")
    plans = []
    for _ in range(3):
        x = torch.randn(1, 3, 224, 224, device="cuda")
        for _chunk, _out in dn.iter_classes(x):
            pass
        plans.append(budget(None, device, device_memory(device)))
    assert max(plans) - min(plans) <= 0.05 * max(plans), plans
