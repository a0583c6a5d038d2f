"""Random chain CNNs: the mirror equals the autograd oracle in float64."""

from __future__ import annotations

import torch
from chains import chain_nets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import assert_exact, channels_reference, classes_reference

from deconvnet import DeconvNet

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(chain_nets(head=True))
def test_classes_match_oracle(case):
    net, x = case
    dn = DeconvNet(net)
    ours = dn.reconstruct_classes(x)
    reference = classes_reference(net, x, list(range(ours.shape[1])))
    assert ours.shape == (x.shape[0], ours.shape[1], *x.shape[1:])
    assert_exact(ours, reference)


@SETTINGS
@given(chain_nets(), st.data())
def test_channels_match_oracle(case, data):
    net, x = case
    dn = DeconvNet(net)
    modules = dict(net.named_modules())
    name = data.draw(st.sampled_from([n for n in dn.layers if n in modules]), label="layer")
    mode = data.draw(st.sampled_from(["max", "map"]), label="mode")
    signal = data.draw(st.sampled_from(["activation", "unit"]), label="signal")
    ours = dn.reconstruct(x, name, mode=mode, signal=signal)
    reference = channels_reference(net, x, modules[name], list(range(ours.shape[1])), mode, signal)
    assert_exact(ours, reference)


@SETTINGS
@given(chain_nets(head=True), st.floats(0.01, 100.0))
def test_positively_homogeneous(case, scale):
    net, x = case
    dn = DeconvNet(net)
    trace = dn.trace(x)
    name = dn.layers[-1]
    shape = trace.activations[name].shape
    signal = torch.randn(shape[0], 2, *shape[1:], dtype=torch.float64)
    once = dn.reconstruct_from(trace, name, signal)
    scaled = dn.reconstruct_from(trace, name, signal * scale)
    assert_exact(scaled, once * scale, rtol=1e-9)
    assert once.shape[2:] == x.shape[1:]
