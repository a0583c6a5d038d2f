"""Hypothesis strategies for random modern CNNs: every activation in every spelling, pads,
slices, splits, channel shuffles, squeeze-and-excitation gates, channels-last blocks, norms,
means, constant scales, TensorFlow-"same" convs, adaptive max-pools."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import Tensor, nn
from torchvision.ops import StochasticDepth

# name -> builder(channels) of a module, or a function of x: every form the builder must read.
ACTIVATIONS: dict[str, Any] = {
    "ReLU": lambda c: nn.ReLU(),
    "ReLU(inplace)": lambda c: nn.ReLU(inplace=True),
    "F.relu": lambda c: F.relu,
    "x.relu_": lambda c: (lambda x: x.relu_()),
    "ReLU6": lambda c: nn.ReLU6(inplace=True),
    "F.relu6": lambda c: F.relu6,
    "Hardtanh(0, 3)": lambda c: nn.Hardtanh(0.0, 3.0),
    "F.hardtanh(0, 2)": lambda c: (lambda x: F.hardtanh(x, 0.0, 2.0)),
    "Hardtanh(-1, 1)": lambda c: nn.Hardtanh(-1.0, 1.0),
    "LeakyReLU": lambda c: nn.LeakyReLU(0.1),
    "F.leaky_relu_": lambda c: (lambda x: F.leaky_relu_(x, 0.2)),
    "PReLU": lambda c: nn.PReLU(init=0.3),
    "RReLU": lambda c: nn.RReLU(),
    "ELU": lambda c: nn.ELU(0.7),
    "F.elu": lambda c: (lambda x: F.elu(x, inplace=True)),
    "CELU": lambda c: nn.CELU(1.3),
    "SELU": lambda c: nn.SELU(),
    "torch.selu": lambda c: torch.selu,
    "GELU": lambda c: nn.GELU(),
    "GELU(tanh)": lambda c: nn.GELU("tanh"),
    "F.gelu(tanh)": lambda c: (lambda x: F.gelu(x, approximate="tanh")),
    "SiLU": lambda c: nn.SiLU(inplace=True),
    "F.silu": lambda c: F.silu,
    "Mish": lambda c: nn.Mish(),
    "Hardswish": lambda c: nn.Hardswish(),
    "F.hardswish": lambda c: F.hardswish,
    "Softplus": lambda c: nn.Softplus(beta=2.0),
    "Sigmoid": lambda c: nn.Sigmoid(),
    "torch.tanh": lambda c: torch.tanh,
    "Hardsigmoid": lambda c: nn.Hardsigmoid(),
}


class SameConv(nn.Conv2d):
    """A TensorFlow-"same" conv as ported EfficientNets write it: pad in forward, then F.conv2d."""

    def forward(self, x: Tensor) -> Tensor:
        kh, kw = self.kernel_size
        sh, sw = self.stride
        pad_h = max((-(-x.shape[-2] // sh) - 1) * sh + kh - x.shape[-2], 0)
        pad_w = max((-(-x.shape[-1] // sw) - 1) * sw + kw - x.shape[-1], 0)
        x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class StaticSameConv(nn.Conv2d):
    """The same with the padding fixed at build time, as a ZeroPad2d module."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int) -> None:
        super().__init__(cin, cout, kernel, stride)
        total = kernel - 1
        self.static_padding = nn.ZeroPad2d((total // 2, total - total // 2, total // 2, total - total // 2))

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(self.static_padding(x), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class DataDependent(nn.Module):
    """Control flow on tensor values: torch.fx cannot trace it, so it is one general layer,
    whose rectifiers still take the rule."""

    def __init__(self, conv: nn.Module, activation: Any) -> None:
        super().__init__()
        self.conv = conv
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        if y.abs().sum() > 0:
            return self.activation(y)
        return y


class Block(nn.Module):
    """One block of a random modern CNN; ``kind`` picks its forward."""

    def __init__(self, kind: str, activation: Any, **parts: Any) -> None:
        super().__init__()
        self.kind = kind
        self.options = {k: v for k, v in parts.items() if not isinstance(v, (nn.Module, nn.Parameter))}
        for name, part in parts.items():
            if isinstance(part, (nn.Module, nn.Parameter)):
                setattr(self, name, part)
        if isinstance(activation, nn.Module):
            self.act = activation
        else:
            self.function = activation

    def activate(self, x: Tensor) -> Tensor:
        return self.act(x) if hasattr(self, "act") else self.function(x)

    def forward(self, x: Tensor) -> Tensor:  # noqa: C901 - one branch per kind
        o = self.options
        if self.kind == "conv":
            return self.activate(self.conv(x))
        if self.kind == "same":
            return self.activate(self.conv(x))
        if self.kind == "opaque":
            return self.inner(x)
        if self.kind == "se":
            s = x.mean((2, 3), keepdim=True)
            s = self.activate(self.reduce(s))
            gate = torch.sigmoid(self.expand(s)) if o["sigmoid"] else F.hardsigmoid(self.expand(s))
            return x * gate
        if self.kind == "convnext":
            y = self.dw(x).permute(0, 2, 3, 1)
            y = self.pw2(self.activate(self.pw1(self.norm(y))))
            y = (self.gamma * y).permute(0, 3, 1, 2)
            return x + self.drop(y)
        if self.kind == "norm":
            if o["how"] == "group":
                return self.activate(self.norm(x))
            if o["how"] == "F.group_norm":
                return self.activate(F.group_norm(x, o["groups"], self.norm.weight, self.norm.bias, 1e-5))
            y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.norm.weight, self.norm.bias, 1e-6)
            return self.activate(y.permute(0, 3, 1, 2))
        if self.kind == "shuffle":
            a, b = x.chunk(2, dim=1)
            y = torch.cat((a, self.activate(self.conv(b))), dim=1)
            n, c, h, w = y.size()
            y = y.view(n, 2, c // 2, h, w)
            y = torch.transpose(y, 1, 2).contiguous()
            return y.view(n, -1, h, w)
        if self.kind == "split":
            a, b = torch.split(x, [o["first"], x.shape[1] - o["first"]], dim=1)
            return torch.cat([self.activate(b), a * 0.5], 1)
        if self.kind == "slice":
            if o["how"] == "border":
                return self.activate(x[..., 1:-1, 1:-1])
            if o["how"] == "narrow":
                return self.activate(x.narrow(-1, 1, x.shape[-1] - 1))
            return self.activate(torch.cat([x[:, 0:1] * 0.5 + 0.1, x[:, 1:] / 2.0], dim=1))
        if self.kind == "scale":
            return self.activate(-(x * self.scale) + 1.0) if o["negate"] else self.activate(x / 3.0 - 0.5)
        if self.kind == "pool":
            return self.pool(x)
        if self.kind == "bn":
            return self.activate(F.batch_norm(x, self.norm.running_mean, self.norm.running_var,
                                              self.norm.weight, self.norm.bias, False, 0.1, 1e-5))
        raise AssertionError(self.kind)


class ModernNet(nn.Module):
    def __init__(self, blocks: list[Block], head: str, classes: int, channels: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        self.head = head
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(x)
        if self.head == "mean":
            return self.fc(x.mean([-2, -1]))
        if self.head == "sum":
            return self.fc(torch.sum(x, dim=(2, 3)) / 4)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


KINDS = ["conv", "same", "opaque", "se", "convnext", "norm", "shuffle", "split", "slice", "scale", "pool", "bn"]


@st.composite
def modern_nets(draw: st.DrawFn, activations: list[str] | None = None) -> tuple[ModernNet, Tensor]:
    """A random float64 modern CNN in eval mode and an input batch for it."""
    seed = draw(st.integers(0, 2**31 - 1))
    generator = torch.Generator().manual_seed(seed)
    names = activations or list(ACTIVATIONS)
    channels = draw(st.integers(2, 4))
    first = channels
    height, extra = draw(st.integers(7, 12)), draw(st.integers(0, 2))
    size = height  # the smaller side, as the blocks shrink it
    blocks: list[Block] = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(KINDS))
        act_name = draw(st.sampled_from(names))
        activation = ACTIVATIONS[act_name](channels)
        if kind == "conv":
            out = draw(st.integers(2, 4))
            groups = channels if out == channels and draw(st.booleans()) else 1
            blocks.append(Block(kind, activation, conv=nn.Conv2d(channels, out, 3, padding=1, groups=groups)))
            channels = out
        elif kind == "same":
            out = draw(st.integers(2, 4))
            kernel, stride = draw(st.sampled_from([(3, 1), (3, 2), (5, 2), (2, 1)]))
            dynamic = draw(st.booleans())  # dynamic: torch.fx cannot trace it (max over shapes)
            conv = SameConv(channels, out, kernel, stride) if dynamic else StaticSameConv(channels, out, kernel, stride)
            blocks.append(Block(kind, activation, conv=conv))
            channels, size = out, -(-size // stride)
        elif kind == "opaque":
            inner = DataDependent(nn.Conv2d(channels, channels, 3, padding=1), activation)
            blocks.append(Block(kind, activation, inner=inner))
        elif kind == "se":
            hidden = draw(st.integers(1, 3))
            blocks.append(Block(kind, activation, reduce=nn.Conv2d(channels, hidden, 1), expand=nn.Conv2d(hidden, channels, 1),
                                sigmoid=draw(st.booleans())))
        elif kind == "convnext":
            blocks.append(Block(
                kind, activation, dw=nn.Conv2d(channels, channels, 3, padding=1, groups=channels),
                norm=nn.LayerNorm(channels), pw1=nn.Linear(channels, 2 * channels), pw2=nn.Linear(2 * channels, channels),
                gamma=nn.Parameter(torch.rand(channels, generator=generator, dtype=torch.float64) + 0.5),
                drop=StochasticDepth(0.2, "row") if draw(st.booleans()) else nn.Dropout(0.1),
            ))
        elif kind == "norm":
            how = draw(st.sampled_from(["group", "F.group_norm", "layer2d"]))
            groups = draw(st.sampled_from([g for g in (1, 2) if channels % g == 0]))
            norm = nn.GroupNorm(groups, channels) if how != "layer2d" else nn.LayerNorm(channels)
            blocks.append(Block(kind, activation, norm=norm, how=how, groups=groups))
        elif kind == "shuffle" and channels % 2 == 0:
            half = channels // 2
            blocks.append(Block(kind, activation, conv=nn.Conv2d(half, half, 3, padding=1)))
        elif kind == "split" and channels > 1:
            blocks.append(Block(kind, activation, first=draw(st.integers(1, channels - 1))))
        elif kind == "slice" and size > 4:
            how = draw(st.sampled_from(["border", "narrow", "transform"]))
            blocks.append(Block(kind, activation, how=how))
            size -= 2 if how == "border" else 0
        elif kind == "scale":
            blocks.append(Block(kind, activation, scale=nn.Parameter(torch.rand(channels, 1, 1, generator=generator,
                                                                                 dtype=torch.float64) + 0.5),
                                negate=draw(st.booleans())))
        elif kind == "pool" and size >= 4:
            out = draw(st.integers(2, size // 2 + 1))
            blocks.append(Block(kind, activation, pool=nn.AdaptiveMaxPool2d(out)))
            size = out
        elif kind == "bn":
            blocks.append(Block(kind, activation, norm=nn.BatchNorm2d(channels)))
    head = draw(st.sampled_from(["mean", "sum", "pool"]))
    net = ModernNet(blocks, head, draw(st.integers(1, 3)), channels)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.weight.normal_(generator=generator)
                module.bias.normal_(generator=generator)
            elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
                module.weight.normal_(generator=generator)
                module.bias.normal_(generator=generator)
                if isinstance(module, nn.BatchNorm2d):
                    module.running_mean.normal_(generator=generator)
                    module.running_var.uniform_(0.5, 2.0, generator=generator)
    net = net.double().eval()
    x = torch.randn(draw(st.integers(1, 2)), first, height, height + extra, generator=generator, dtype=torch.float64)
    return net, x


def hand_reversed_except_untraceable(dn: Any, net: nn.Module) -> None:
    """Every general layer of ``dn`` is a module torch.fx cannot trace (by design of these nets)."""
    modules = dict(net.named_modules())
    for name in dn.general_layers:
        assert isinstance(modules.get(name), (SameConv, DataDependent)), name
