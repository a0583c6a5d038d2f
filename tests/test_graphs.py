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


class _Fork(torch.nn.Module):
    """One value read by two scaling branches that meet again: the mirror of the sum hands the
    same signal to both, which neither may overwrite."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn1, self.bn2 = torch.nn.BatchNorm2d(4), torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        y = torch.relu(self.bn1(h)) + torch.nn.functional.silu(self.bn2(h)) + h
        return self.fc(y.mean((2, 3)))


def _resnet():
    import torchvision

    return torchvision.models.resnet18(weights=None, num_classes=3), "layer2", "layer3.0.bn2"


def _fork():
    model = _Fork()
    with torch.no_grad():
        for bn in (model.bn1, model.bn2):
            bn.weight.uniform_(0.5, 2.0)
            bn.running_var.uniform_(0.5, 2.0)
    return model, "add", "bn2"


@pytest.mark.parametrize("make", [_resnet, _fork])
@pytest.mark.parametrize("rule", ["deconvnet", "guided", "gradient"])
def test_the_mirror_writes_in_place_only_into_its_own_tensors(make, rule):
    # The loop overwrites signals it made itself (activation gradients, batch-norm scales, the
    # sums where branches meet); never the caller's signal, a recorded value, or a tensor it
    # handed to several branches. The same calls with that switched off must agree bitwise.
    torch.manual_seed(0)
    model, middle, lower = make()
    model = model.double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    dn = DeconvNet(model, rule=rule, rectifiers="all")
    trace = dn.trace(x)
    kept = {name: [v.clone() for v in (r.input, r.output, r.switches) if isinstance(v, torch.Tensor)]
            for name, r in trace.records.items()}
    signal = torch.randn(2, 3, *dn.activation(trace, middle).shape[1:], dtype=torch.float64)
    given_signal = signal.clone()
    ours = (dn.reconstruct_classes(trace), dn.reconstruct_from(trace, middle, signal), dn.reconstruct(trace, lower, [0, 3]))
    assert torch.equal(signal, given_signal)
    for name, record in trace.records.items():
        now = [v for v in (record.input, record.output, record.switches) if isinstance(v, torch.Tensor)]
        assert all(torch.equal(a, b) for a, b in zip(now, kept[name], strict=True)), name
    assert_exact(ours[0], classes_reference(model, x, [0, 1, 2], rule, "all"))
    mirror = dn.mirror
    plan = mirror._plan
    try:
        mirror._plan = [step._replace(ownership=None, in_place=None) for step in plan]
        plain = (dn.reconstruct_classes(trace), dn.reconstruct_from(trace, middle, signal),
                 dn.reconstruct(trace, lower, [0, 3]))
    finally:
        mirror._plan = plan
    assert any(step.in_place is not None for step in plan)
    for a, b in zip(ours, plain, strict=True):
        assert torch.equal(a, b)
