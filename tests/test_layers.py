"""Each mirror layer alone: the adjoint identity <L x, y> == <x, mirror(y)>, and golden cases."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from chains import pooled_size
from hypothesis import example, given, settings
from hypothesis import strategies as st
from reference import assert_exact
from torch import Tensor, nn

from deconvnet import DeconvNet
from deconvnet import mirror as mirror_layers

SETTINGS = settings(max_examples=80, deadline=None)


def _dot(a: Tensor, b: Tensor) -> float:
    return float((a * b).sum())


def check_adjoint(layer: nn.Module, x: Tensor, linear_part=None) -> None:
    """<L(v), y> == <v, mirror(y)> for random v, y, where L is the layer's linear part at x.

    For an affine layer L(v) = layer(v) - layer(0); a max-pool passes ``linear_part``.
    """
    model = nn.Sequential(layer).double().eval()
    dn = DeconvNet(model)
    trace = dn.trace(x)
    out = trace.output
    if linear_part is None:
        zero = model(torch.zeros_like(x))

        def linear_part(v: Tensor) -> Tensor:
            return model(v) - zero

    v = torch.randn_like(x)
    y = torch.randn_like(out)
    mirrored = dn.reconstruct_from(trace, "0", y.unsqueeze(1))[:, 0]
    assert mirrored.shape == x.shape
    left, right = _dot(linear_part(v), y), _dot(v, mirrored)
    assert abs(left - right) <= 1e-9 * (abs(left) + abs(right) + 1), (left, right)


@SETTINGS
@given(
    st.integers(1, 3),
    st.sampled_from([1, 2, 3, 33]),
    st.integers(1, 4),
    st.integers(1, 3),
    st.integers(0, 2),
    st.integers(1, 2),
    st.sampled_from([1, 2]),
    st.integers(4, 17),
    st.integers(4, 17),
    st.booleans(),
    st.integers(1, 2),
)
def test_conv_adjoint(cin, cmul, kernel, stride, pad, dilation, groups, h, w, same, batch):
    # Each form of the transpose: a stride-1 conv with few output channels runs as the ordinary
    # conv with the flipped kernel (a 1x1 one of one signal as a matrix product; padding beyond
    # the kernel's reach, kernel 1 and pad 2, crops), a wide one (33 per group) as torch's
    # transposed conv, a strided one as that or as sub-pixel phases
    cin, cout = cin * groups, cmul * groups
    span = dilation * (kernel - 1)
    if span >= min(h, w):
        kernel, span = 1, 0
    padding = "same" if same and stride == 1 else pad
    conv = nn.Conv2d(cin, cout, kernel, stride, padding, dilation, groups, bias=True)
    check_adjoint(conv, torch.randn(batch, cin, h, w, dtype=torch.float64))


@SETTINGS
@given(
    st.integers(1, 3), st.integers(1, 3), st.integers(0, 1), st.integers(1, 2), st.booleans(),
    st.integers(3, 15), st.integers(3, 15), st.integers(1, 40), st.integers(1, 2),
    st.sampled_from([torch.float32, torch.float64, torch.bfloat16]), st.integers(0, 2**31 - 1),
)
@example(2, 1, 0, 2, False, 3, 3, 2, 1, torch.float32, 0)  # a 1x1 output: strides in dims of size 1 count
def test_the_trace_pools_as_the_model_does_bitwise(kernel, stride, pad, dilation, ceil, h, w, channels, batch, dtype,
                                                    seed):
    # The trace pools an NCHW input channels last (faster on a CPU) and lays the results back
    # out: the same values and switches as the model's own pool, ties (ReLU's zeros, repeated
    # values) going to the same position, in the model's layout.
    from deconvnet.rules import DEFAULT_RULES

    pad = min(pad, kernel // 2)
    if pooled_size(min(h, w), kernel, stride, pad, dilation, ceil) < 1 or dilation * (kernel - 1) >= min(h, w):
        kernel, pad = 1, 0
    pool = nn.MaxPool2d(kernel, stride, pad, dilation, ceil_mode=ceil)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(-2, 3, (batch, channels, h, w), generator=generator).relu().to(dtype)  # mostly ties
    out, switches = DEFAULT_RULES.rule_for(pool).run(pool, x)
    expected, expected_switches = F.max_pool2d(x, kernel, stride, pad, dilation, ceil, return_indices=True)
    assert torch.equal(out, expected) and torch.equal(switches, expected_switches)
    assert out.stride() == expected.stride() and switches.stride() == expected_switches.stride()


@SETTINGS
@given(
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(0, 1),
    st.integers(1, 2),
    st.booleans(),
    st.integers(3, 15),
    st.integers(3, 15),
)
def test_max_pool_adjoint(kernel, stride, pad, dilation, ceil, h, w):
    pad = min(pad, kernel // 2) if dilation == 1 else 0
    if pooled_size(min(h, w), kernel, stride, pad, dilation, ceil) < 1 or dilation * (kernel - 1) >= min(h, w):
        kernel = 1
    pool = nn.MaxPool2d(kernel, stride, pad, dilation, ceil_mode=ceil)
    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    _, switches = F.max_pool2d(x, kernel, stride, pad, dilation, ceil, return_indices=True)

    def gather(v: Tensor) -> Tensor:
        # The pool is linear once its switches are fixed: pick v where x had its maxima.
        return v.flatten(2).gather(2, switches.flatten(2)).view_as(switches).to(v.dtype)

    check_adjoint(pool, x, gather)


@SETTINGS
@given(st.integers(1, 3), st.integers(1, 3), st.integers(0, 1), st.booleans(), st.booleans(),
       st.sampled_from([None, 2, 5]), st.integers(3, 15), st.integers(3, 15))
def test_avg_pool_adjoint(kernel, stride, pad, ceil, include, divisor, h, w):
    pad = min(pad, kernel // 2)
    check_adjoint(
        nn.AvgPool2d(kernel, stride, pad, ceil, include, divisor),
        torch.randn(2, 2, h, w, dtype=torch.float64),
    )


@SETTINGS
@given(st.integers(1, 9), st.integers(1, 9), st.integers(1, 12), st.integers(1, 12))
def test_adaptive_avg_pool_adjoint(out_h, out_w, h, w):
    # Covers upsampling (out > in) too, as in VGG's head on small images.
    check_adjoint(nn.AdaptiveAvgPool2d((out_h, out_w)), torch.randn(2, 2, h, w, dtype=torch.float64))


def test_batch_norm_linear_flatten_adjoint():
    norm = nn.BatchNorm2d(3)
    with torch.no_grad():
        norm.running_mean.normal_()
        norm.running_var.uniform_(0.5, 2)
        norm.weight.normal_()
        norm.bias.normal_()
    check_adjoint(norm, torch.randn(2, 3, 5, 4, dtype=torch.float64))
    check_adjoint(nn.BatchNorm2d(3, affine=False), torch.randn(2, 3, 5, 4, dtype=torch.float64))
    check_adjoint(nn.Linear(7, 4), torch.randn(2, 3, 5, 7, dtype=torch.float64))
    check_adjoint(nn.Flatten(), torch.randn(2, 3, 5, 4, dtype=torch.float64))


def test_overlapping_pool_sums_at_shared_switch():
    # 5x5 input whose centre is the max of all four 3x3/stride-2 windows: the gradient puts
    # 4 there; nn.MaxUnpool2d would put 1.
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, 2] = 1.0
    model = nn.Sequential(nn.MaxPool2d(3, 2)).eval()
    dn = DeconvNet(model)
    assert isinstance(dn.mirror[0], mirror_layers.OverlapUnpool2d)
    out = dn.reconstruct_from(x, "0", torch.ones(1, 1, 1, 2, 2))
    expected = torch.zeros(1, 1, 1, 5, 5)
    expected[..., 2, 2] = 4.0
    assert torch.equal(out, expected)
    switches = F.max_pool2d(x, 3, 2, return_indices=True)[1]
    assert F.max_unpool2d(torch.ones(1, 1, 2, 2), switches, 3, 2, output_size=(5, 5))[0, 0, 2, 2] == 1


def test_alexnet_pool1_has_colliding_windows():
    # On random AlexNet pool1 maps a good share of 3x3/stride-2 windows share their switch.
    torch.manual_seed(0)
    x = torch.randn(1, 64, 55, 55).relu()
    _, switches = F.max_pool2d(x, 3, 2, return_indices=True)
    flat = switches.flatten()
    assert flat.unique().numel() < 0.9 * flat.numel()


def test_non_overlapping_pool_uses_max_unpool():
    dn = DeconvNet(nn.Sequential(nn.MaxPool2d(2)))
    assert type(dn.mirror[0]) is mirror_layers.MaxUnpool2d
    assert isinstance(dn.mirror[0], nn.MaxUnpool2d)


def test_golden_tiny_net_by_hand():
    """Numbers one can check on paper.

    x = [[0,1,2],[3,4,5],[6,7,8]], conv 2x2 weights [[1,2],[3,4]] -> [[27,37],[57,67]]
    (57 = 3 + 2*4 + 3*6 + 4*7), ReLU, max-pool 2x2 keeps 67 at (1,1). The strongest unit of the
    pool projects back as 67 * w placed at (1,1): [[0,0,0],[0,67,134],[0,201,268]]. A linear head [1, -1]: class 0
    gives w itself there; class 1 starts at -1, which the deconvnet ReLU zeroes.
    """
    conv = nn.Conv2d(1, 1, 2, bias=False)
    head = nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]))
        head.weight.copy_(torch.tensor([[1.0], [-1.0]]))
    model = nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), head).eval()
    x = torch.arange(9.0).view(1, 1, 3, 3)
    dn = DeconvNet(model)
    assert torch.equal(dn.activation(x, "0"), torch.tensor([[[[27.0, 37.0], [57.0, 67.0]]]]))
    feature = dn.reconstruct(x, "2", 0)
    assert torch.equal(feature[0, 0, 0], torch.tensor([[0.0, 0, 0], [0, 67, 134], [0, 201, 268]]))
    classes = dn.reconstruct_classes(x)
    assert torch.equal(classes[0, 0, 0], torch.tensor([[0.0, 0, 0], [0, 1, 2], [0, 3, 4]]))
    assert torch.equal(classes[0, 1], torch.zeros(1, 3, 3))


def test_strided_conv_recovers_exact_input_size():
    # AlexNet's first conv: 224 -> 55 with 11/4, padding 2; back to 224, not 223.
    conv = nn.Conv2d(3, 4, 11, 4, 2).double()
    x = torch.randn(1, 3, 224, 224, dtype=torch.float64)
    model = nn.Sequential(conv, nn.ReLU()).eval()
    dn = DeconvNet(model)
    assert dn.activation(x, "0").shape[-1] == 55
    out = dn.reconstruct(x, "1", [0, 3])
    assert out.shape == (1, 2, 3, 224, 224)
    from reference import channels_reference

    assert_exact(out, channels_reference(model, x, model[1], [0, 3], "max", "activation"))


@SETTINGS
@given(st.integers(1, 6), st.integers(1, 6), st.integers(1, 4), st.integers(1, 4), st.integers(0, 2),
       st.integers(0, 2), st.integers(9, 19), st.integers(9, 19))
def test_anisotropic_strided_conv_adjoint(kh, kw, sh, sw, ph, pw, h, w):
    # Strided transposed convs run as one conv plus a pixel shuffle: check uneven kernels,
    # strides larger than kernels, and strides that differ per axis.
    conv = nn.Conv2d(2, 3, (kh, kw), (sh, sw), (min(ph, kh), min(pw, kw)))
    check_adjoint(conv, torch.randn(2, 2, h, w, dtype=torch.float64))


@SETTINGS
@given(st.integers(2, 4), st.integers(1, 3), st.integers(1, 2), st.integers(5, 15), st.integers(5, 15))
def test_deterministic_unpool_equals_scatter_add(kernel, stride, dilation, h, w):
    if dilation * (kernel - 1) >= min(h, w):
        dilation = 1
    x = torch.randn(2, 3, h, w, dtype=torch.float64).relu()
    model = nn.Sequential(nn.MaxPool2d(kernel, stride, dilation=dilation)).eval()
    fast = DeconvNet(model, deterministic=False)
    ordered = DeconvNet(model, deterministic=True)
    signal = torch.randn(2, 3, 3, *fast.activation(x, "0").shape[-2:], dtype=torch.float64)
    assert_exact(ordered.reconstruct_from(x, "0", signal), fast.reconstruct_from(x, "0", signal), rtol=1e-12)


class _Op(nn.Module):
    """One functional op as a model."""

    def __init__(self, op, **parameters) -> None:
        super().__init__()
        self.op = op
        for name, value in parameters.items():
            setattr(self, name, value)

    def forward(self, x):
        return self.op(self, x)


def check_linear_adjoint(model: nn.Module, x: Tensor, general: bool = False) -> None:
    """<L v, y> == <v, mirror(y)> for a model that is affine in its input, L v = model(v) - model(0)."""
    model = model.double().eval()
    dn = DeconvNet(model, strict=not general)
    trace = dn.trace(x)
    v = torch.randn_like(x)
    y = torch.randn_like(trace.output)
    output = dn.network.steps[dn.network.output].name
    mirrored = dn.reconstruct_from(trace, output, y.unsqueeze(1))[:, 0]
    assert mirrored.shape == x.shape
    with torch.no_grad():
        left, right = _dot(model(v) - model(torch.zeros_like(v)), y), _dot(v, mirrored)
    assert abs(left - right) <= 1e-9 * (abs(left) + abs(right) + 1), (left, right)
    assert bool(dn.general_layers) == general


LINEAR_OPS = {
    "F.pad": lambda m, x: F.pad(x, (1, 2, 0, 3)),
    "F.pad negative": lambda m, x: F.pad(x, (-1, 1, 2, -2)),
    "ZeroPad2d": lambda m, x: m.pad(x),
    "slice": lambda m, x: x[:, 1:, ::2, 1:-1],
    "index": lambda m, x: x[:, 0],
    "ellipsis": lambda m, x: x[..., 1:-1, None],
    "narrow": lambda m, x: x.narrow(2, 1, 3),
    "chunk": lambda m, x: x.chunk(2, dim=1)[1],
    "split": lambda m, x: torch.split(x, [1, 2], dim=1)[0],
    "unbind": lambda m, x: x.unbind(1)[2],
    "permute": lambda m, x: x.permute(0, 2, 3, 1),
    "transpose": lambda m, x: torch.transpose(x, -1, -2),
    "movedim": lambda m, x: x.movedim(1, -1),
    "scale": lambda m, x: x * m.gamma / 2.0,
    "negate": lambda m, x: -x,
    "broadcast add": lambda m, x: x[:, :, :1] + x,
    "mean": lambda m, x: x.mean((2, 3)),
    "sum keepdim": lambda m, x: torch.sum(x, dim=-1, keepdim=True),
    "cat with constant": lambda m, x: torch.cat([m.token.expand(x.shape[0], -1, -1, -1), x], dim=1),
    "channel shuffle": lambda m, x: torch.transpose(x.view(x.shape[0], 3, 1, x.shape[2], x.shape[3]), 1, 2).reshape(x.shape),
    "batch_norm": lambda m, x: F.batch_norm(x, m.bn.running_mean, m.bn.running_var, m.bn.weight, None, False, 0.1, 1e-3),
}


@pytest.mark.parametrize("name", list(LINEAR_OPS))
def test_linear_mirror_layers_are_adjoint(name):
    model = _Op(LINEAR_OPS[name], pad=nn.ZeroPad2d((2, 0, 1, 1)), gamma=nn.Parameter(torch.rand(3, 1, 1) + 0.5),
                token=nn.Parameter(torch.randn(1, 1, 6, 7)), bn=nn.BatchNorm2d(3))
    with torch.no_grad():
        model.bn.running_var.uniform_(0.5, 2.0)
        model.bn.weight.normal_()
    check_linear_adjoint(model, torch.randn(2, 3, 6, 7, dtype=torch.float64))


def test_general_layer_of_a_linear_op_is_adjoint():
    # torch.cumsum has no hand-written mirror: the general VJP layer must still be the transpose.
    check_linear_adjoint(_Op(lambda m, x: torch.cumsum(x, 2)), torch.randn(2, 3, 6, 7, dtype=torch.float64), general=True)


def test_adaptive_max_pool_adjoint():
    x = torch.randn(2, 3, 9, 11, dtype=torch.float64)
    pool = nn.AdaptiveMaxPool2d((4, 5))  # windows of uneven size that overlap
    _, switches = F.adaptive_max_pool2d(x, (4, 5), return_indices=True)

    def linear_part(v: Tensor) -> Tensor:
        return v.flatten(2).gather(2, switches.flatten(2)).view_as(switches)

    check_adjoint(pool, x, linear_part)


def test_timm_same_conv_adjoint():
    timm = pytest.importorskip("timm")
    conv = timm.layers.Conv2dSame(3, 4, 4, stride=3, bias=False)
    for size in ((7, 8), (9, 10)):  # the padding differs per input size
        check_linear_adjoint(nn.Sequential(conv), torch.randn(2, 3, *size, dtype=torch.float64))


class _ReluThenPrelu(nn.Module):
    """PReLU (module and function) after a ReLU: its input holds exact zeros, the kink."""

    def __init__(self, functional: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.prelu = nn.PReLU(3, init=0.3)
        self.functional = functional
        self.fc = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.conv(x))
        y = F.prelu(y, self.prelu.weight) if self.functional else self.prelu(y)
        return self.fc(y.mean((2, 3)))


@pytest.mark.parametrize("functional", [False, True])
@pytest.mark.parametrize("rule", ["deconvnet", "guided", "gradient"])
def test_prelu_at_zero_takes_its_slope_as_autograd_does(functional, rule):
    # Forward-mode autograd gives PReLU a derivative of 1 at x = 0, its backward the slope.
    # With rectifiers="relu" the PReLU passes its gradient, which the oracle takes by backward.
    from reference import classes_reference

    torch.manual_seed(0)
    model = _ReluThenPrelu(functional).double().eval()
    with torch.no_grad():
        model.prelu.weight.copy_(torch.tensor([0.3, -0.5, 2.0]))
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    assert (F.relu(model.conv(x)) == 0).any()
    ours = DeconvNet(model, rule=rule, rectifiers="relu").reconstruct_classes(x)
    assert_exact(ours, classes_reference(model, x, [0, 1], rule, "relu"))
