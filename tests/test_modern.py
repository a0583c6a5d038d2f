"""Random modern CNNs (every activation, pads, slices, gates, permutes, norms, means, scales)
against the autograd oracle in float64, for both ``rectifiers`` settings and all three rules."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
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


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(modern_nets(), RULES, RECTIFIERS, st.integers(1, 3))
def test_modern_classes_in_chunks_match_oracle(case, rule, rectifiers, chunk):
    # Several chunks share what each layer derives from the trace (slopes, product operands,
    # laid out for the signal): made by the first chunk, read by the rest.
    net, x = case
    dn = DeconvNet(net, rule=rule, rectifiers=rectifiers)
    ours = dn.reconstruct_classes(x, chunk_size=chunk)
    assert_exact(ours, classes_reference(net, x, list(range(ours.shape[1])), rule, rectifiers))


class _Gated(nn.Module):
    """A SiLU, a squeeze-and-excitation gate, a square and a quotient: every layer whose mirror
    derives a factor from its record."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.SiLU()
        self.squeeze = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4 * 36, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv(x))
        x = x * torch.sigmoid(self.squeeze(x.mean((2, 3), keepdim=True)))
        x = x * x / (1.0 + x.abs())
        return self.fc(F.max_pool2d(x, 2).flatten(1))


@pytest.mark.parametrize("rule", ["guided", "gradient"])
def test_a_call_in_chunks_derives_each_slope_and_operand_once(monkeypatch, rule):
    from deconvnet.mirror import Activation, Product

    torch.manual_seed(0)
    net = _Gated().double().eval()
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    made: dict[tuple[str, str, object], int] = {}

    def count(cls, name):  # type: ignore[no-untyped-def]
        method = getattr(cls, name)

        def counted(self, *args):  # type: ignore[no-untyped-def]
            key = (self.source, name, args[-1] if name == "_factor" else None)  # _factor's last: which operand
            made[key] = made.get(key, 0) + 1
            return method(self, *args)

        monkeypatch.setattr(cls, name, counted)

    count(Activation, "slope")
    count(Product, "_factor")
    dn = DeconvNet(net, rule=rule)
    ours = dn.reconstruct_classes(x, chunk_size=2)  # 7 classes: 4 chunks
    assert_exact(ours, classes_reference(net, x, list(range(7)), rule))
    assert sum(name == "slope" for _, name, _ in made) == 2  # the SiLU and the gate's sigmoid
    assert sum(name == "_factor" for _, name, _ in made) == 5  # x * gate and (x * x) / (1 + |x|): two each; x * x
    assert set(made.values()) == {1}, made
    made.clear()
    dn.reconstruct_classes(x, chunk_size=2)  # a new call makes them again, for its own trace
    assert set(made.values()) == {1}, made
    made.clear()
    tight = DeconvNet(net, rule=rule, memory_budget=1)  # no room to keep them: every chunk makes its own
    assert_exact(tight.reconstruct_classes(x, chunk_size=2), ours)
    # chunks of 2, 2, 2 and 1: the last passes f'(x) * g in one pass, without a slope
    assert {count for (_, name, _), count in made.items() if name == "slope"} == {3}, made
    assert {count for (_, name, _), count in made.items() if name == "_factor"} == {4}, made


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
            ours = dn.reconstruct_classes(x)
            assert not ours.requires_grad  # no autograd graph through the layer's parameters
            assert_exact(ours, classes_reference(net, x, [0], rule, rectifiers))


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_one_target_takes_the_single_pass_activation_path_exactly(activation):
    # One target passes f'(x) * g through autograd's backward kernel in one pass (and, for one
    # image, runs the convs in the default layout): the same as the oracle and as K targets.
    torch.manual_seed(1)
    act = ACTIVATIONS[activation](3)
    net = ModernNet([Block("conv", act, conv=nn.Conv2d(3, 3, 3, padding=1)),
                     Block("conv", act, conv=nn.Conv2d(3, 3, 3, padding=1, groups=3))], "mean", 4, 3).double().eval()
    for n in (1, 2):
        x = torch.randn(n, 3, 8, 8, dtype=torch.float64) * 3
        for rule in ("deconvnet", "guided", "gradient"):
            for rectifiers in ("all", "relu"):
                dn = DeconvNet(net, rule=rule, rectifiers=rectifiers)
                one = dn.reconstruct_classes(x, [2])
                assert_exact(one, classes_reference(net, x, [2], rule, rectifiers))
                assert_exact(one, dn.reconstruct_classes(x)[:, 2:3])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(modern_nets())
def test_generated_trace_equals_node_by_node_interpretation(case):
    from deconvnet.capture import run_by_node

    net, x = case
    dn = DeconvNet(net)
    dn.trace(x)  # the first trace is interpreted; the generated forward runs from the second on
    fast, slow = dn.trace(x), run_by_node(dn.network, x)
    assert dn.network.programs[None] is not None
    assert torch.equal(fast.output, slow.output)
    assert fast.records.keys() == slow.records.keys()
    for name, record in fast.records.items():
        other = slow.records[name]
        assert record.input_shapes == other.input_shapes
        # a value an activation overwrote in place is left out of the records (their mirrors do
        # not read it) and made again by the trace's activations when read
        assert torch.equal(fast.activations[name], slow.activations[name])
        assert record.output is None or torch.equal(record.output, other.output)
        assert record.input is None or torch.equal(record.input, other.input)
        assert (record.switches is None) == (other.switches is None)
        if record.switches is not None:
            assert torch.equal(record.switches, other.switches)


def test_generated_trace_follows_buffers_replaced_by_to():
    class FunctionalNorm(nn.Module):  # reads its buffers through get_attr nodes
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.register_buffer("mean", torch.zeros(4))
            self.register_buffer("var", torch.ones(4))

        def forward(self, x):
            return F.batch_norm(self.conv(x), self.mean, self.var, None, None, False, 0.1, 1e-5)

    net = FunctionalNorm().eval()
    dn = DeconvNet(net)
    x = torch.randn(1, 3, 8, 8)
    dn.trace(x)
    dn.trace(x)  # now the generated forward exists, holding the float32 buffers
    net.double()  # replaces the buffers (and converts the parameters in place)
    with torch.no_grad():
        net.var.fill_(4.0)
    trace = dn.trace(x.double())
    assert trace.output.dtype == torch.float64
    assert torch.allclose(trace.output, net(x.double()))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(modern_nets(), RULES, RECTIFIERS)
def test_the_lean_trace_of_a_repeated_call_gives_what_the_full_trace_gives(case, rule, rectifiers):
    # From the second call on, reconstruct_classes(x) runs a generated forward that keeps only
    # what the mirror reads under the call's rule (run_lean); the full trace keeps everything.
    net, x = case
    dn = DeconvNet(net, rule=rule, rectifiers=rectifiers)
    full = dn.reconstruct_classes(dn.trace(x))
    for _ in range(3):
        assert torch.equal(dn.reconstruct_classes(x), full)
    assert dn.network.programs.get(("lean", rule, rectifiers, None)) is not None  # the lean forward ran
