"""The chunk planner's arithmetic, on CPU, fed the memory figures a GPU reports."""

from __future__ import annotations

from math import ceil

import pytest
import torch
import torchvision

from deconvnet import DeconvNet
from deconvnet.chunks import (
    CPU_BUDGET, INDEX_LIMIT, THROUGHPUT_ELEMENTS, DeviceMemory, budget, mirror_needs, plan,
)

GIB = 1024**3
CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def vgg16_needs() -> tuple[int, int]:
    """What one class of one 224 px image needs through VGG16's whole mirror."""
    torch.manual_seed(0)
    dn = DeconvNet(torchvision.models.vgg16(weights=None).eval())
    trace = dn.trace(torch.randn(1, 3, 224, 224))
    return mirror_needs(dn.mirror, trace, dn.network.steps[dn.network.output].name)


def test_vgg16_needs_match_its_widest_layer(vgg16_needs):
    nbytes, widest = vgg16_needs
    assert widest == 2 * 64 * 224 * 224  # the first conv's input and output signal, in elements
    assert nbytes == (3 * 224 * 224 + 3 * widest) * 4


def test_the_tenth_call_plans_like_the_first(vgg16_needs):
    # An H200 on a fresh process, then after calls whose blocks the caching allocator keeps:
    # the free memory falls by what is cached, and the plan must not follow it.
    first = DeviceMemory(free=139 * GIB, cached=0)
    later = [DeviceMemory(free=(139 - held) * GIB, cached=held * GIB) for held in (12, 40, 41, 40, 15, 40)]
    chunk = plan(1000, *vgg16_needs, budget(None, CUDA, first), "cuda")
    assert [plan(1000, *vgg16_needs, budget(None, CUDA, m), "cuda") for m in later] == [chunk] * len(later)


def test_no_tensor_passes_two_to_the_31_elements(vgg16_needs):
    _, widest = vgg16_needs
    for memory in (80 * GIB, 139 * GIB, 1024 * GIB):
        chunk = plan(1000, *vgg16_needs, budget(None, CUDA, DeviceMemory(memory, 0)), "cuda")
        assert chunk * widest <= INDEX_LIMIT
        assert chunk * widest <= THROUGHPUT_ELEMENTS["cuda", "mirror"]
    # The old plan (half the free memory of an H200) put ~956 targets in a chunk: 3.1e9 elements
    # in the first layer's signal alone.
    assert (139 * GIB // 2) // vgg16_needs[0] * widest > INDEX_LIMIT


def test_chunks_are_equal_and_cover_the_targets(vgg16_needs):
    memory = budget(None, CUDA, DeviceMemory(139 * GIB, 0))
    chunk = plan(1000, *vgg16_needs, memory, "cuda")
    cap = THROUGHPUT_ELEMENTS["cuda", "mirror"] // vgg16_needs[1]
    assert chunk == ceil(1000 / ceil(1000 / cap)) == 167  # 6 chunks of 167 rather than 5 of 167 and one of 165
    pieces = [min(chunk, 1000 - lo) for lo in range(0, 1000, chunk)]
    assert sum(pieces) == 1000 and len(set(pieces)) <= 2


def test_memory_caps_the_chunk_when_it_is_short(vgg16_needs):
    nbytes, _ = vgg16_needs
    assert plan(1000, *vgg16_needs, 10 * nbytes + 1, "cuda") == 10
    assert plan(1000, *vgg16_needs, 1, "cuda") == 1  # never zero


def test_small_requests_run_whole(vgg16_needs):
    assert plan(1, *vgg16_needs, budget(None, CUDA, DeviceMemory(139 * GIB, 0)), "cuda") == 1
    assert plan(3, 100, 10, CPU_BUDGET, "cpu") == 3


def test_cpu_plan_follows_the_cpu_cap(vgg16_needs):
    chunk = plan(1000, *vgg16_needs, budget(None, torch.device("cpu")), "cpu")
    assert chunk * vgg16_needs[1] <= THROUGHPUT_ELEMENTS["cpu", "mirror"] or chunk == 1
    assert budget(None, torch.device("cpu")) == CPU_BUDGET
    assert budget(12345, CUDA, DeviceMemory(139 * GIB, 0)) == 12345  # an explicit budget wins


def test_results_do_not_depend_on_the_plan():
    torch.manual_seed(0)
    model = torchvision.models.alexnet(weights=None).eval().double()
    x = torch.randn(2, 3, 96, 96, dtype=torch.float64)
    planned = DeconvNet(model).reconstruct_classes(x, list(range(24)))
    tiny = DeconvNet(model, memory_budget=1).reconstruct_classes(x, list(range(24)))
    whole = DeconvNet(model).reconstruct_classes(x, list(range(24)), chunk_size=24)
    torch.testing.assert_close(planned, whole, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(tiny, whole, rtol=1e-12, atol=1e-12)


def test_device_is_where_the_parameters_are():
    assert DeconvNet(torchvision.models.alexnet(weights=None).eval()).device == torch.device("cpu")
    assert DeconvNet(torch.nn.Sequential(torch.nn.ReLU(), torch.nn.MaxPool2d(2)).eval()).device == torch.device("cpu")
