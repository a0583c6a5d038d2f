"""Random modern CNNs (every activation, pads, slices, gates, permutes, norms, means, scales)
against the autograd oracle in float64, for both ``rectifiers`` settings and all three rules."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from modern import (
    ACTIVATIONS,
    Block,
    DataDependent,
    ModernNet,
    hand_reversed_except_untraceable,
    modern_nets,
)
from reference import assert_exact, channels_reference, classes_reference
from torch import nn

from deconvnet import DeconvNet

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
RULES = st.sampled_from(["deconvnet", "guided", "gradient"])
RECTIFIERS = st.sampled_from(["all", "relu"])


@SETTINGS
@given(modern_nets(), RULES, RECTIFIERS)
def test_modern_classes_match_oracle(case, rule, rectifiers):
    net, x = case
    dn = DeconvNet(net, rule=rule, rectifiers=rectifiers)
    hand_reversed_except_untraceable(dn, net)
    ours = dn.reconstruct_classes(x)
    assert_exact(ours, classes_reference(net, x, list(range(ours.shape[1])), rule, rectifiers))


@SETTINGS
@given(modern_nets(), RULES, RECTIFIERS, st.data())
def test_modern_units_match_oracle(case, rule, rectifiers, data):
    net, x = case
    dn = DeconvNet(net, rectifiers=rectifiers)
    hand_reversed_except_untraceable(dn, net)
    modules = dict(net.named_modules())
    names = [n for n in dn.layers if n in modules and n in dn.network.modules and dn.activation(x, n).dim() == 4]
    if not names:
        return
    name = data.draw(st.sampled_from(names), label="layer")
    mode = data.draw(st.sampled_from(["max", "map"]), label="mode")
    channels = list(range(dn.activation(x, name).shape[1]))
    ours = dn.reconstruct(x, name, mode=mode, rule=rule)
    reference = channels_reference(net, x, modules[name], channels, mode, "activation", rule=rule, rectifiers=rectifiers)
    assert_exact(ours, reference)


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_every_activation_inside_a_general_layer_takes_the_rule(activation):
    # An untraceable module is reversed by its VJP; its activations, in every spelling (the
    # tensor method x.relu_() included), must still take the rule like explicit ones.
    torch.manual_seed(0)
    act = ACTIVATIONS[activation](2)
    inner = DataDependent(nn.Conv2d(2, 2, 3, padding=1), act)
    net = ModernNet([Block("opaque", act, inner=inner)], "mean", 1, 2).double().eval()
    x = torch.randn(2, 2, 7, 7, dtype=torch.float64)
    for rule in ("deconvnet", "guided", "gradient"):
        for rectifiers in ("all", "relu"):
            dn = DeconvNet(net, rule=rule, rectifiers=rectifiers)
            assert dn.general_layers == ["blocks.0.inner"]
            assert_exact(dn.reconstruct_classes(x), classes_reference(net, x, [0], rule, rectifiers))
