"""The public API: layers, traces, batching, shared weights, and the user's model left alone."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from reference import assert_exact, channels_reference, classes_reference
from torch import nn

import deconvnet
from deconvnet import DeconvNet, Trace
from deconvnet import mirror as mirror_layers


class SmallNet(nn.Module):
    """A VGG-like chain whose forward mixes modules, functional calls and a reused ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Sequential(nn.Dropout(), nn.Linear(8 * 4 * 4, 5))

    def forward(self, x):
        x = F.max_pool2d(self.relu(self.conv1(x)), 2)
        x = self.relu(self.bn(self.conv2(x)))
        x = F.adaptive_avg_pool2d(x, 4)
        return self.head(x.view(x.size(0), -1))


def small_net() -> SmallNet:
    torch.manual_seed(0)
    net = SmallNet()
    with torch.no_grad():
        net.bn.running_mean.normal_()
        net.bn.running_var.uniform_(0.5, 2)
    return net.double().eval()


def test_layers_in_forward_order_with_repeated_module_calls():
    dn = DeconvNet(small_net())
    assert dn.layers == [
        "conv1", "relu:0", "max_pool2d", "conv2", "bn", "relu:1", "adaptive_avg_pool2d",
        "view", "head.0", "head.1", "head",
    ]


def test_repeated_module_calls_reconstruct_separately():
    net = small_net()
    x = torch.randn(2, 3, 19, 17, dtype=torch.float64)
    dn = DeconvNet(net)
    first = dn.reconstruct(x, "relu:0", [0, 7], mode="map")
    assert first.shape == (2, 2, 3, 19, 17)
    assert_exact(first, channels_reference(net, x, net.relu, [0, 7], "map", "activation", call=0))
    second = dn.reconstruct(x, "relu:1", [1, 2])
    assert_exact(second, channels_reference(net, x, net.relu, [1, 2], "max", "activation", call=1))
    classes = dn.reconstruct_classes(x)
    assert_exact(classes, classes_reference(net, x, list(range(5))))
    conv1 = dn.reconstruct(x, net.conv1, [0, 5], mode="map", signal="unit")
    assert_exact(conv1, channels_reference(net, x, net.conv1, [0, 5], "map", "unit"))
    assert second.shape == (2, 2, 3, 19, 17)


def test_module_as_layer_equals_its_name():
    net = small_net()
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    dn = DeconvNet(net)
    assert torch.equal(dn.reconstruct(x, net.conv2, [3]), dn.reconstruct(x, "conv2", [3]))
    assert torch.equal(dn.reconstruct(x, net.head, 2), dn.reconstruct(x, "head.1", 2))


def test_trace_output_equals_model_and_serves_many_reconstructions():
    net = small_net()
    x = torch.randn(3, 3, 20, 20, dtype=torch.float64)
    dn = DeconvNet(net)
    trace = dn.trace(x)
    assert isinstance(trace, Trace) and len(trace) == 3
    assert torch.equal(trace.output, net(x))
    assert not trace.output.requires_grad
    assert torch.equal(dn.reconstruct_classes(trace, [1, 4]), dn.reconstruct_classes(x, [1, 4]))
    assert torch.equal(dn.reconstruct(trace, "conv2"), dn.reconstruct(x, "conv2"))


def test_chunk_size_does_not_change_results():
    net = small_net()
    x = torch.randn(2, 3, 18, 18, dtype=torch.float64)
    dn = DeconvNet(net)
    trace = dn.trace(x)
    whole = dn.reconstruct(trace, "conv2", chunk_size=None)
    for size in (1, 3, 7, 100):
        torch.testing.assert_close(dn.reconstruct(trace, "conv2", chunk_size=size), whole, rtol=1e-12, atol=1e-12)
    tiny_budget = DeconvNet(net, memory_budget=1)  # forces chunks of one
    torch.testing.assert_close(tiny_budget.reconstruct_classes(x), dn.reconstruct_classes(x), rtol=1e-12, atol=1e-12)


def test_channels_accept_int_sequence_tensor_and_none():
    net = small_net()
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    dn = DeconvNet(net)
    trace = dn.trace(x)
    every = dn.reconstruct(trace, "conv2")
    assert every.shape[1] == 8

    def same(a: torch.Tensor, b: torch.Tensor) -> None:
        # one target runs the convolutions in another memory layout than eight: rounding differs
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)

    same(dn.reconstruct(trace, "conv2", 5)[:, 0], every[:, 5])
    same(dn.reconstruct(trace, "conv2", (6, 2))[:, 1], every[:, 2])
    same(dn.reconstruct(trace, "conv2", torch.tensor([4]))[:, 0], every[:, 4])


def test_linear_layer_channels_are_units():
    net = small_net()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    dn = DeconvNet(net)
    units = dn.reconstruct(x, "head.1", [0, 3], signal="unit")
    assert_exact(units, dn.reconstruct_classes(x, [0, 3]))


def test_reconstruct_from_matches_reconstruct():
    net = small_net()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    dn = DeconvNet(net)
    act = dn.activation(x, "conv2")
    signal = torch.zeros(2, 1, *act.shape[1:], dtype=torch.float64)
    signal[:, 0, 3] = act[:, 3]
    assert_exact(dn.reconstruct_from(x, "conv2", signal), dn.reconstruct(x, "conv2", 3, mode="map"))


def test_weights_are_shared_not_copied():
    net = small_net()
    dn = DeconvNet(net)
    convs = [m for m in dn.mirror.layers if isinstance(m, mirror_layers.ConvTranspose2d)]
    assert [c.weight for c in convs] == [net.conv2.weight, net.conv1.weight]
    assert convs[0].weight is net.conv2.weight and convs[1].weight is net.conv1.weight
    assert convs[0].bias is None
    linear = dn.mirror[0]
    assert isinstance(linear, mirror_layers.LinearTranspose) and linear.weight is net.head[1].weight
    # Fine-tuning the model changes the mirror: same answer as a freshly built DeconvNet.
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        net.conv1.weight.mul_(-2)
        net.bn.running_var.mul_(3)
    assert_exact(dn.reconstruct_classes(x), DeconvNet(net).reconstruct_classes(x), rtol=1e-12)
    assert_exact(dn.reconstruct_classes(x), classes_reference(net, x, list(range(5))))


def _snapshot(model: nn.Module):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [(n, m.training, dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(m._backward_hooks))
         for n, m in model.named_modules()],
        [(n, p.requires_grad, id(p)) for n, p in model.named_parameters()],
        [(n, m.inplace) for n, m in model.named_modules() if hasattr(m, "inplace")],
    )


def test_model_is_left_unchanged():
    net = small_net()
    net.conv1.weight.requires_grad_(False)
    before = _snapshot(net)
    dn = DeconvNet(net)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    dn.reconstruct_classes(x)
    dn.reconstruct(x, "relu:0")
    dn.reconstruct(dn.trace(x), "conv2", mode="map")
    after = _snapshot(net)
    assert before[1:] == after[1:]
    assert before[0].keys() == after[0].keys()
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])


def test_in_place_relu_does_not_clobber_the_kept_activation():
    net = small_net()
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    dn = DeconvNet(net)
    conv1 = dn.activation(x, "conv1")
    assert (conv1 < 0).any()  # had the inplace ReLU run in place, negatives would be gone
    assert torch.equal(conv1, net.conv1(x))


def test_mirror_prints_as_the_network_upside_down():
    text = repr(DeconvNet(small_net()).mirror)
    lines = text.splitlines()
    assert lines[0].startswith("Mirror(")
    assert "(head.1)" in lines[1] and "LinearTranspose" in lines[1]
    assert "(conv1)" in lines[-2] and "ConvTranspose2d(8, 3" in lines[-2]
    assert "(max_pool2d)" in text and "MaxUnpool2d" in text and "ChannelScale" in text


def test_vgg_adaptive_pool_upsamples_on_small_inputs():
    # VGG at 97 px: features give 3x3, avgpool upsamples to 7x7.
    model = torchvision.models.vgg11(weights=None).eval()
    dn = DeconvNet(model)
    x = torch.randn(1, 3, 97, 97)
    assert dn.activation(x, "features").shape[-1] == 3
    ours = dn.reconstruct_classes(x, [0, 999])
    assert_exact(ours, classes_reference(model, x, [0, 999]), rtol=1e-5)


def _double_net():
    class Double(nn.Module):
        def forward(self, x):
            return 2 * x

    net = nn.Sequential(nn.Conv2d(1, 2, 3), Double(), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))
    net(torch.randn(1, 1, 6, 6))
    return net.double().eval(), Double


class _Twice(deconvnet.MirrorLayer):
    pointwise = True

    def forward(self, signal, record):  # the README's two-argument form
        return 2 * signal


def test_custom_rule_registration():
    net, Double = _double_net()
    x = torch.randn(2, 1, 6, 6, dtype=torch.float64)
    deconvnet.register_rule(Double, lambda m: _Twice())
    try:
        dn = DeconvNet(net, strict=True)
        assert "Double" in deconvnet.supported_layers()
        assert_exact(dn.reconstruct_classes(x), classes_reference(net, x, [0, 1, 2]))
    finally:
        deconvnet.rules.DEFAULT_RULES.rules.pop(Double)


def test_layer_rules_reach_one_instance_only():
    net, Double = _double_net()
    x = torch.randn(2, 1, 6, 6, dtype=torch.float64)
    dn = DeconvNet(net, layer_rules={Double: lambda m: _Twice()}, strict=True)
    assert isinstance(dn.mirror[-2], _Twice)
    assert dn.receptive_field("0") == dn.receptive_field("1")  # pointwise: the field passes
    assert_exact(dn.reconstruct_classes(x), classes_reference(net, x, [0, 1, 2]))
    assert "Double" not in deconvnet.supported_layers()
    other = DeconvNet(net, strict=True)  # without the rule, torch.fx traces into Double: 2 * x
    assert "mul" in other.layers and "Product(multiply, scale)" in repr(other.mirror)
    assert_exact(other.reconstruct_classes(x), classes_reference(net, x, [0, 1, 2]))


def test_copy_of_model_gives_same_results():
    net = small_net()
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    assert torch.equal(DeconvNet(copy.deepcopy(net)).reconstruct_classes(x), DeconvNet(net).reconstruct_classes(x))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_model_runs_mirror_on_cuda():
    net = small_net().float().cuda()
    x = torch.randn(2, 3, 16, 16)
    dn = DeconvNet(net)
    out = dn.reconstruct_classes(x)
    assert out.is_cuda
    cpu = DeconvNet(small_net().float()).reconstruct_classes(x)
    torch.testing.assert_close(out.cpu(), cpu, rtol=1e-4, atol=1e-5)


def test_functional_call_never_takes_a_module_name():
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.relu = nn.ReLU()

        def forward(self, x):
            x = F.relu(self.conv(x))  # fx names this node "relu"
            return self.relu(self.relu(x))  # the module "relu", called twice

    dn = DeconvNet(Mixed().eval())
    assert dn.layers == ["conv", "relu()", "relu:0", "relu:1"]
    with pytest.raises(deconvnet.LayerNotFoundError, match="'relu' is called 2 times"):
        dn.reconstruct(torch.randn(1, 3, 8, 8), "relu")


def test_fine_tuning_changes_the_mirror_though_kernels_are_prepared_once():
    # The transposed-conv kernels are derived once per weight version: an optimizer step, a
    # load_state_dict and a replaced Parameter must each reach the mirror.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.Conv2d(4, 4, 7, stride=2, padding=3),
                        nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))
    net(torch.randn(1, 3, 21, 21))
    net = net.double().eval()
    x = torch.randn(2, 3, 21, 21, dtype=torch.float64)
    dn = DeconvNet(net)
    dn.reconstruct_classes(x)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    net(x).sum().backward()
    optimizer.step()
    assert_exact(dn.reconstruct_classes(x), classes_reference(net, x, [0, 1, 2]))
    other = copy.deepcopy(net)
    for p in other.parameters():
        torch.nn.init.normal_(p)
    net.load_state_dict(other.state_dict())
    assert_exact(dn.reconstruct_classes(x), classes_reference(net, x, [0, 1, 2]))
    net[2].weight = nn.Parameter(torch.randn_like(net[2].weight))  # a new Parameter object
    dn = DeconvNet(net)  # the mirror shares Parameters: a replaced one needs a new DeconvNet
    assert_exact(dn.reconstruct_classes(x), classes_reference(net, x, [0, 1, 2]))


def test_iterators_yield_the_same_reconstructions_in_chunks():
    net = small_net()
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    dn = DeconvNet(net)
    trace = dn.trace(x)
    whole = dn.reconstruct_classes(trace)
    seen = []
    for classes, part in dn.iter_classes(trace, chunk_size=2):
        assert part.shape == (3, classes.numel(), 3, 16, 16) and classes.numel() <= 2
        assert torch.equal(part, whole[:, classes])
        assert torch.is_grad_enabled()  # the caller's loop body keeps its grad mode
        seen += classes.tolist()
    assert seen == list(range(whole.shape[1]))
    for crop in (True, False):
        every = dn.reconstruct(trace, "conv2", crop=crop)
        chunks = list(dn.iter_channels(trace, "conv2", crop=crop, chunk_size=3))
        assert torch.cat([c for c, _ in chunks]).tolist() == list(range(every.shape[1]))
        assert_exact(torch.cat([p for _, p in chunks], dim=1), every, rtol=1e-12)
    with pytest.raises(deconvnet.InputError, match="chunk_size must be"):
        dn.iter_classes(trace, chunk_size=0)  # checked when called, not at the first chunk


def test_mirror_in_bfloat16_is_close_to_float32_and_the_trace_stays_exact():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1),
                        nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()
    x = torch.randn(2, 3, 24, 24)
    full = DeconvNet(net)
    low = DeconvNet(net, mirror_dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # an ambient autocast does not reach the trace
        trace = low.trace(x)
    assert trace.output.dtype == torch.float32 and torch.equal(trace.output, full.trace(x).output)
    for reduced, reference in ((low.reconstruct_classes(trace), full.reconstruct_classes(x)),
                               (low.reconstruct(trace, "3", crop=True), full.reconstruct(x, "3", crop=True)),
                               (low.reconstruct(trace, "3", crop=False), full.reconstruct(x, "3", crop=False))):
        assert reduced.dtype == torch.bfloat16
        assert ((reduced.float() - reference).norm() / reference.norm()).item() < 2e-2
    with pytest.raises(deconvnet.InputError, match="mirror_dtype must be"):
        DeconvNet(net, mirror_dtype=torch.int8)


class _Pools(nn.Module):
    """Max-pools as modules and as calls (padding, ceil mode, a stride apart from the kernel)
    over ReLU outputs: many ties."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 24, 3, padding=1)
        self.pool = nn.MaxPool2d(3, 2, padding=1, ceil_mode=True)
        self.conv2 = nn.Conv2d(24, 8, 3)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv(x)))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(x.mean((2, 3)))


def test_generated_forwards_pool_bitwise_as_the_model_does():
    # Generated forwards pool an NCHW batch channels last on a CPU and lay it back out; what
    # they return must be the model's own values, in its layout, switches included.
    from deconvnet.capture import _MaxPool

    torch.manual_seed(0)
    net = _Pools().eval()
    dn = DeconvNet(net)
    x = torch.randn(3, 3, 23, 23).round()
    seen: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o))
             for name, m in net.named_children()]
    try:
        net(x)
    finally:
        for hook in hooks:
            hook.remove()
    pooled = F.max_pool2d(F.relu(net.conv2(seen["pool"])), 2, return_indices=True)
    for _ in range(3):  # interpreted the first time, generated programs after
        some = dn.activations(x, ["pool", "conv2", "max_pool2d"])
        trace = dn.trace(x)
        for name, value in some.items():
            expected = pooled[0] if name == "max_pool2d" else seen[name]
            assert torch.equal(value, expected) and value.stride() == expected.stride(), name
            assert torch.equal(trace.activations[name], expected), name
        assert torch.equal(trace.records["max_pool2d"].switches, pooled[1])
    programs = [p.module for p in dn.network.programs.values() if p is not None]
    assert any(isinstance(m, _MaxPool) for program in programs for m in program.modules())
    # A forward for some layers only runs an activation in place over what it alone reads,
    # never over a value asked for, and stops at the last layer asked for.
    conv = net.conv(x)
    for _ in range(2):
        alone = dn.activations(x, ["relu"])
        both = dn.activations(x, ["conv", "relu"])
        assert torch.equal(alone["relu"], F.relu(conv)) and torch.equal(both["relu"], F.relu(conv))
        assert torch.equal(both["conv"], conv)
    code = {key: p.module.code for key, p in dn.network.programs.items() if p is not None}
    assert "inplace = True" in code[(dn.network.layers["relu"].node,)]
    assert "inplace = True" not in code[(dn.network.layers["conv"].node, dn.network.layers["relu"].node)]
    assert "conv2" not in code[(dn.network.layers["relu"].node,)] and "fc" not in code[(dn.network.layers["relu"].node,)]


def test_a_pool_to_one_pixel_leaves_the_next_layers_in_the_models_layout():
    # A pooled [N, C, 1, 1] is contiguous in either layout; with channels-last strides the
    # padded conv after it wrote a channels-last output, and the model's .view(n, -1) refused it.
    class ViewNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.pool, self.conv2 = nn.Conv2d(1, 2, 1, stride=2), nn.MaxPool2d(1, 3), nn.Conv2d(2, 2, 1, padding=1)
            self.fc = nn.Linear(18, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.relu(self.conv2(self.pool(F.relu(self.conv(x)))))
            return self.fc(x.view(x.shape[0], -1))

    torch.manual_seed(0)
    net = ViewNet().double().eval()
    x = torch.randn(2, 1, 5, 5, dtype=torch.float64)
    dn = DeconvNet(net)
    for _ in range(3):  # interpreted, then generated forwards
        assert_exact(dn.reconstruct_classes(x), classes_reference(net, x, [0, 1, 2]))
        assert torch.equal(dn.trace(x).output, net(x))
        assert torch.equal(dn.activations(x, ["conv2"])["conv2"], net.conv2(net.pool(F.relu(net.conv(x)))))


def test_activations_of_some_layers_equal_the_trace():
    net = small_net()
    dn = DeconvNet(net)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    trace = dn.trace(x)
    for _ in range(2):  # interpreted the first time, a generated forward (no switches) after
        some = dn.activations(x, ["conv2", net.conv1, "relu:1"])
        assert list(some) == ["conv2", "conv1", "relu:1"]
        for name, value in some.items():
            assert torch.equal(value, trace.activations[name])
    with pytest.raises(deconvnet.LayerNotFoundError, match="unknown layer 'conv9'"):
        dn.activations(x, ["conv9"])
    with pytest.raises(deconvnet.InputError, match=r"layers must be a sequence of layer names or modules, got str; "
                                                   r"for one layer pass \[layer\] or use dn.activation"):
        dn.activations(x, "conv2")


def test_layer_rules_reach_functional_calls_read_as_modules():
    # F.max_pool2d and F.adaptive_max_pool2d are read as their modules: an instance's rule for
    # those module types applies to the calls too.
    class Pools(nn.Module):
        def forward(self, x):
            return F.adaptive_max_pool2d(F.max_pool2d(x, 2), 2)

    marked = []

    def mirror_of(module):
        marked.append(type(module).__name__)
        return deconvnet.rules.DEFAULT_RULES.rule_for(module).mirror(module)

    DeconvNet(Pools(), layer_rules={nn.MaxPool2d: deconvnet.Rule(mirror_of, run=deconvnet.rules._run_max_pool),
                                    nn.AdaptiveMaxPool2d: deconvnet.Rule(
                                        mirror_of, run=deconvnet.rules._run_adaptive_max_pool)})
    assert marked == ["MaxPool2d", "AdaptiveMaxPool2d"]


def _small() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(8 * 8 * 8, 5)).eval()


def test_the_network_is_built_once_per_model_and_again_when_it_changes():
    model = _small()
    first = DeconvNet(model)
    assert DeconvNet(model, rule="guided", rectifiers="relu").network is first.network  # rule and rectifiers are per call
    with torch.no_grad():
        model[0].weight.mul_(2)  # updated in place: the shared weights follow
    assert DeconvNet(model).network is first.network
    assert DeconvNet(model, strict=True).network is not first.network
    assert DeconvNet(model, layer_rules={}).network is not first.network  # this instance's own rules: its own
    model[0] = torch.nn.Conv2d(3, 8, 3, padding=1)  # a module replaced
    second = DeconvNet(model)
    assert second.network is not first.network
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(second.trace(x).output, model(x))
    model.train()
    assert DeconvNet(model).network is not second.network


def test_the_kept_networks_do_not_keep_the_model_alive():
    import gc
    import weakref

    model = _small()
    DeconvNet(model).reconstruct_classes(torch.randn(1, 3, 16, 16), [0])
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None


def test_a_batch_norm_folded_into_the_conv_before_it_stays_exact_from_either_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(6, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.Flatten(),
                          nn.Linear(4 * 2 * 2, 5)).double().eval()
    with torch.no_grad():
        for bn in (model[1], model[5]):
            bn.running_var.uniform_(0.5, 2)
            bn.weight.uniform_(-2, 2)
    dn = DeconvNet(model)
    assert sorted(dn.mirror._unfolded) == sorted(dn.mirror.index_of(c) for c in ("0", "4"))  # both convs carry their scale
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    for layer in ("0", "1", "4", "5"):  # from a conv itself (unscaled) and from its batch-norm (scaled)
        reference = channels_reference(model, x, model[int(layer)], [0, 3], "max", "activation")
        assert_exact(dn.reconstruct(x, layer, [0, 3]), reference)
    assert_exact(dn.reconstruct_classes(x, [1, 4]), classes_reference(model, x, [1, 4]))
    with torch.no_grad():
        model[1].running_var.mul_(3)  # statistics updated in place: the folded kernel follows
    assert_exact(dn.reconstruct_classes(x, [1, 4]), classes_reference(model, x, [1, 4]))
