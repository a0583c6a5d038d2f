"""Branching CNNs and the sibling rules: the graph mirror against the autograd oracle."""

from __future__ import annotations

import pytest
import torch
from chains import chain_nets, dag_nets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import assert_exact, channels_reference, classes_reference

from deconvnet import DeconvNet, InputError

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
RULES = st.sampled_from(["deconvnet", "guided", "gradient"])


@SETTINGS
@given(dag_nets(head=True), RULES)
def test_dag_classes_match_oracle(case, rule):
    net, x = case
    ours = DeconvNet(net, rule=rule).reconstruct_classes(x)
    assert_exact(ours, classes_reference(net, x, list(range(ours.shape[1])), rule=rule))


@SETTINGS
@given(dag_nets(), RULES, st.data())
def test_dag_channels_match_oracle(case, rule, data):
    net, x = case
    dn = DeconvNet(net)
    modules = dict(net.named_modules())
    names = [n for n in dn.layers if n in modules and n in dn.network.modules]
    name = data.draw(st.sampled_from(names), label="layer")
    mode = data.draw(st.sampled_from(["max", "map"]), label="mode")
    ours = dn.reconstruct(x, name, mode=mode, rule=rule)
    assert_exact(ours, channels_reference(net, x, modules[name], list(range(ours.shape[1])), mode, "activation",
                                          rule=rule))


@SETTINGS
@given(dag_nets(), st.data())
def test_reused_relu_calls_match_oracle(case, data):
    net, x = case
    dn = DeconvNet(net)
    calls = dn.network.modules.get("relu", [])  # the layer names of the module's calls
    if not calls:
        return  # this net happens not to call the shared ReLU module
    call = data.draw(st.integers(0, len(calls) - 1), label="call")
    name = calls[call]
    ours = dn.reconstruct(x, name, mode="max")
    assert_exact(ours, channels_reference(net, x, net.relu, list(range(ours.shape[1])), "max", "activation",
                                          call=call))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chain_nets(head=True), st.sampled_from(["guided", "gradient"]))
def test_chain_rules_match_oracle(case, rule):
    net, x = case
    dn = DeconvNet(net)
    ours = dn.reconstruct_classes(x, rule=rule)
    assert_exact(ours, classes_reference(net, x, list(range(ours.shape[1])), rule=rule))


def test_gradient_rule_is_the_autograd_gradient():
    from chains import DagNet  # noqa: F401  (the strategy's module)
    torch.manual_seed(3)
    net, x = dag_nets(head=True).example()
    x = x.clone().requires_grad_(True)
    out = net(x)
    (grad,) = torch.autograd.grad(out[:, 0].sum(), x)
    ours = DeconvNet(net).reconstruct_classes(x.detach(), [0], rule="gradient")[:, 0]
    assert_exact(ours, grad)


def test_rule_argument_is_checked():
    net, x = dag_nets(head=True).example()
    with pytest.raises(InputError, match="rule must be one of 'deconvnet', 'guided', 'gradient'; got 'lrp'"):
        DeconvNet(net, rule="lrp")
    with pytest.raises(InputError, match="rule must be one of"):
        DeconvNet(net).reconstruct_classes(x, rule="saliency")
