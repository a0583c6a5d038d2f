"""Receptive-field cropping: cropped and uncropped projections agree on random architectures."""

from __future__ import annotations

import pytest
import torch
from chains import chain_nets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import assert_exact
from torch import nn

from deconvnet import DeconvNet, InputError
from deconvnet.crop import croppable


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chain_nets(), st.data())
def test_cropped_equals_uncropped(case, data):
    net, x = case
    dn = DeconvNet(net)
    layer = data.draw(st.sampled_from(dn.layers), label="layer")
    signal = data.draw(st.sampled_from(["activation", "unit"]), label="signal")
    below = dn.mirror.chain_below(dn.layer_name(layer))
    trace = dn.trace(x)
    if dn.receptive_field(layer) is None or below is None or not croppable(below, dn.context()):
        with pytest.raises(InputError, match="crop=True needs mode='max'"):
            dn.reconstruct(trace, layer, mode="max", crop=True)
        return
    chunk = data.draw(st.sampled_from([None, 1, 2]), label="chunk_size")
    cropped = dn.reconstruct(trace, layer, mode="max", signal=signal, crop=True, chunk_size=chunk)
    full = dn.reconstruct(trace, layer, mode="max", signal=signal, crop=False)
    assert_exact(cropped, full, rtol=1e-12)


def test_crop_is_the_default_where_the_field_is_small():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3)).eval()
    dn = DeconvNet(net)
    trace = dn.trace(torch.randn(1, 3, 32, 32))
    step, activation = dn.network.resolve("3"), dn.activation(trace, "3")
    assert dn._crop_chain(step, activation, "max", None, trace, dn.context()) is not None
    assert dn._crop_chain(step, activation, "map", None, trace, dn.context()) is None
    assert torch.equal(dn.reconstruct(trace, "3"), dn.reconstruct(trace, "3", crop=True))


def test_crop_argument_is_checked():
    dn = DeconvNet(nn.Sequential(nn.Conv2d(3, 4, 3)).eval())
    with pytest.raises(InputError, match="crop must be True, False or None, got 'yes'"):
        dn.reconstruct(torch.randn(1, 3, 8, 8), "0", crop="yes")
    with pytest.raises(InputError, match="crop=True needs mode='max'"):
        dn.reconstruct(torch.randn(1, 3, 8, 8), "0", mode="map", crop=True)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["ReLU6", "SiLU", "GELU", "LeakyReLU", "Hardswish"]), st.integers(1, 3), st.integers(10, 19),
       st.integers(0, 2**16))
def test_cropping_through_pads_and_every_rectifier(activation, stride, size, seed):
    from modern import ACTIVATIONS, StaticSameConv

    torch.manual_seed(seed)
    act = ACTIVATIONS[activation]
    net = nn.Sequential(
        StaticSameConv(3, 4, 3, stride), act(4), nn.ZeroPad2d((1, 0, 2, 1)), nn.MaxPool2d(2),
        nn.Conv2d(4, 5, 3, padding=1), act(5),
    ).double().eval()
    x = torch.randn(2, 3, size, size + 1, dtype=torch.float64)
    dn = DeconvNet(net, strict=True)
    cropped = dn.reconstruct(x, "5", crop=True)
    assert_exact(cropped, dn.reconstruct(x, "5", crop=False), rtol=1e-12)
    # Where only ReLU takes the rule, the others need f'(x) at every position: no cropping.
    with pytest.raises(InputError, match="crop=True needs"):
        DeconvNet(net, rectifiers="relu").reconstruct(x, "5", crop=True)


def test_the_gpu_paste_equals_the_cpu_paste():
    """The one-call paste (used on GPUs) against the window-by-window one, on windows that
    stick out of the image on every side, in two slots of two images."""
    from deconvnet.crop import _paste_all, _paste_each

    torch.manual_seed(0)
    window = torch.randn(6, 3, 7, 5, dtype=torch.float64)
    origin = torch.tensor([[-3, -2], [0, 0], [5, 8], [9, -4], [-6, 10], [2, 3]])
    images, slots = torch.tensor([0, 1, 0, 1, 0, 1]), torch.tensor([0, 0, 1, 1, 2, 2])
    each, together = (torch.zeros(2, 3, 3, 12, 11, dtype=torch.float64) for _ in range(2))
    _paste_each(window, origin, each, images, slots)
    _paste_all(window, origin, together, images, slots)
    assert torch.equal(each, together)
    assert each[0, 0].count_nonzero() > 0 and each[1, 1].count_nonzero() > 0  # windows partly inside land


@pytest.mark.parametrize("crop", [True, False])
def test_units_of_a_repeated_call_through_the_forward_cut_at_the_layer_equal_the_full_trace(crop):
    # From the second call on, reconstruct_units(x, ...) traces only up to its layer, keeping
    # only what the layers below read (run_lean with a start).
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(8 * 4 * 4, 3)).eval()
    dn = DeconvNet(model)
    x = torch.randn(3, 3, 16, 16)
    units = dict(images=[0, 2, 2], channels=[1, 4, 7], positions=[5, 17, 60], crop=crop)
    full = dn.reconstruct_units(dn.trace(x), "5", **units)
    for _ in range(3):
        assert torch.equal(dn.reconstruct_units(x, "5", **units), full)
    program = dn.network.programs["lean", "deconvnet", "all", "5"]
    called = {str(node.target) for node in program.module.graph.nodes if node.op == "call_module"}
    assert len(called) == 6  # layers 0 to 5 (the pool with its switches); 6, 7 and 8 are not run
