"""Hypothesis strategies for random chain CNNs that mix modules and functional calls."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import Tensor, nn


def pooled_size(size: int, kernel: int, stride: int, padding: int, dilation: int, ceil: bool) -> int:
    """Output length of a max/avg pool, as torch computes it."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    out = (math.ceil(span / stride) if ceil else span // stride) + 1
    if ceil and (out - 1) * stride >= size + padding:
        out -= 1
    return out


class SpecNet(nn.Module):
    """A chain CNN whose forward follows a list of ops: ("module", m) or ("call", name, args)."""

    def __init__(self, ops: list[tuple[Any, ...]]) -> None:
        super().__init__()
        self.ops = ops
        self.layers = nn.ModuleList(op[1] for op in ops if op[0] == "module")

    def forward(self, x: Tensor) -> Tensor:
        for op in self.ops:
            if op[0] == "module":
                x = op[1](x)
            else:
                x = _CALLS[op[1]](x, *op[2])
        return x

    def describe(self) -> str:
        return " -> ".join(repr(op[1]) if op[0] == "module" else f"{op[1]}{op[2]}" for op in self.ops)


_CALLS: dict[str, Any] = {
    "F.relu": lambda x: F.relu(x),
    "F.relu_inplace": lambda x: F.relu(x, inplace=True),
    "torch.relu": lambda x: torch.relu(x),
    "x.relu": lambda x: x.relu(),
    "torch.flatten": lambda x: torch.flatten(x, 1),
    "x.view": lambda x: x.view(x.size(0), -1),
    "x.reshape": lambda x: x.reshape(x.shape[0], -1),
    "F.dropout": lambda x: F.dropout(x, 0.5, training=False),
}
for _d in (1, 2, 3):  # the pools' functional forms in every dimension, called as users write them
    _CALLS[f"F.max_pool{_d}d"] = lambda x, k, s, p, d, c, f=getattr(F, f"max_pool{_d}d"): f(x, k, s, p, d, ceil_mode=c)
    _CALLS[f"F.avg_pool{_d}d"] = lambda x, k, s, p, c, i, f=getattr(F, f"avg_pool{_d}d"): f(x, k, s, p, c, i)
    _CALLS[f"F.adaptive_avg_pool{_d}d"] = lambda x, size, f=getattr(F, f"adaptive_avg_pool{_d}d"): f(x, size)

# The layers of each dimension: conv, batch-norm, max-pool, avg-pool, adaptive avg-pool; input sides drawn from.
_LAYERS = {
    1: (nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d, (5, 40)),
    2: (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, (5, 21)),
    3: (nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d, nn.AvgPool3d, nn.AdaptiveAvgPool3d, (5, 9)),
}


@st.composite
def chain_nets(draw: st.DrawFn, head: bool | None = None, dims: int = 2) -> tuple[SpecNet, Tensor]:
    """A random float64 chain CNN in eval mode and an input batch for it, in ``dims`` spatial
    dims (1: signals, 2: images, 3: volumes).

    head: True forces a linear classifier head, False forbids it, None draws.
    """
    conv_type, norm_type, max_type, avg_type, adaptive_type, (low, high) = _LAYERS[dims]
    seed = draw(st.integers(0, 2**31 - 1))
    generator = torch.Generator().manual_seed(seed)
    batch = draw(st.integers(1, 2))
    channels = draw(st.integers(1, 3))
    sizes = [draw(st.integers(low, high)) for _ in range(dims)]
    input_size = tuple(sizes)
    ops: list[tuple[Any, ...]] = []
    first_channels = channels
    for _ in range(draw(st.integers(1, 3))):
        groups = draw(st.sampled_from([g for g in (1, 2, 3) if channels % g == 0]))
        out_channels = groups * draw(st.integers(1, 3))
        dilation = draw(st.integers(1, 2))
        max_kernel = max(1, (min(sizes) - 1) // dilation + 1)
        kernel = draw(st.integers(1, min(4, max_kernel)))
        stride = draw(st.integers(1, 3))
        span = dilation * (kernel - 1)
        if stride == 1 and draw(st.booleans()):
            padding: Any = "same"
            pad = None
        else:
            pad = draw(st.integers(0, span // 2 + 1))
            padding = pad
        conv = conv_type(channels, out_channels, kernel, stride, padding, dilation, groups, bias=draw(st.booleans()))
        ops.append(("module", conv))
        if pad is not None:
            sizes = [(n + 2 * pad - span - 1) // stride + 1 for n in sizes]
        channels = out_channels
        if draw(st.booleans()):
            norm = norm_type(channels)
            with torch.no_grad():
                norm.running_mean.normal_(generator=generator)
                norm.running_var.uniform_(0.5, 2.0, generator=generator)
                norm.weight.normal_(generator=generator)
                norm.bias.normal_(generator=generator)
            ops.append(("module", norm))
        relu = draw(st.sampled_from(["module", "inplace", "F.relu", "F.relu_inplace", "torch.relu", "x.relu"]))
        if relu in ("module", "inplace"):
            ops.append(("module", nn.ReLU(inplace=relu == "inplace")))
        else:
            ops.append(("call", relu, ()))
        pool = draw(st.sampled_from(["none", "max", "max", "avg"]))
        if pool == "none":
            continue
        kernel = draw(st.integers(1, 3))
        stride = draw(st.integers(1, 3))
        pad = draw(st.integers(0, kernel // 2))
        ceil = draw(st.booleans())
        dilation = draw(st.integers(1, 2)) if pool == "max" else 1
        if dilation > 1:
            pad = 0  # dilated windows could otherwise fall wholly in the padding (max = -inf)
        pooled = [pooled_size(n, kernel, stride, pad, dilation, ceil) for n in sizes]
        reach = min(sizes) + (2 * pad if dims < 3 else 0)  # torch's 3-D pools want the window inside the input
        if min(pooled) < 1 or dilation * (kernel - 1) + 1 > reach:
            continue
        functional = draw(st.booleans())
        if pool == "max":
            if functional:
                ops.append(("call", f"F.max_pool{dims}d", (kernel, stride, pad, dilation, ceil)))
            else:
                ops.append(("module", max_type(kernel, stride, pad, dilation, ceil_mode=ceil)))
        else:
            include = draw(st.booleans())
            if functional:
                ops.append(("call", f"F.avg_pool{dims}d", (kernel, stride, pad, ceil, include)))
            else:
                ops.append(("module", avg_type(kernel, stride, pad, ceil, include)))
        sizes = pooled
    if head is None:
        head = draw(st.booleans())
    if head:
        if draw(st.booleans()):
            size = tuple(draw(st.integers(1, 4 if dims < 3 else 2)) for _ in range(dims))
            if draw(st.booleans()):
                ops.append(("call", f"F.adaptive_avg_pool{dims}d", (size,)))
            else:
                ops.append(("module", adaptive_type(size)))
            sizes = list(size)
        flatten = draw(st.sampled_from(["module", "torch.flatten", "x.view", "x.reshape"]))
        ops.append(("module", nn.Flatten()) if flatten == "module" else ("call", flatten, ()))
        features = channels * math.prod(sizes)
        if draw(st.booleans()):
            hidden = draw(st.integers(2, 6))
            ops.append(("module", nn.Linear(features, hidden)))
            ops.append(("module", nn.ReLU()))
            ops.append(("module", nn.Dropout()) if draw(st.booleans()) else ("call", "F.dropout", ()))
            features = hidden
        ops.append(("module", nn.Linear(features, draw(st.integers(1, 5)))))
    net = SpecNet(ops)
    for module in net.layers:
        if isinstance(module, (conv_type, nn.Linear)):
            with torch.no_grad():
                module.weight.normal_(generator=generator)
                if module.bias is not None:
                    module.bias.normal_(generator=generator)
    net = net.double().eval()
    x = torch.randn(batch, first_channels, *input_size, generator=generator, dtype=torch.float64)
    return net, x


class DagNet(nn.Module):
    """A CNN whose blocks branch: residual adds (with or without a projection shortcut),
    subtractions, concatenations of two branches, and dense-style concatenations with the input.
    One ReLU module is reused everywhere, as ResNet blocks reuse ``self.relu``."""

    def __init__(self, blocks: list[tuple[str, Any]], head: nn.Module | None) -> None:
        super().__init__()
        self.kinds = [kind for kind, _ in blocks]
        self.params = [p for _, p in blocks]
        self.blocks = nn.ModuleList(m for _, m in blocks if isinstance(m, nn.Module))
        self.relu = nn.ReLU(inplace=True)
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        for kind, block in zip(self.kinds, self.params, strict=True):
            if kind == "conv":
                x = self.relu(block(x))
            elif kind == "residual":
                out = block.second(self.relu(block.first(x)))
                shortcut = block.shortcut(x) if block.shortcut is not None else x
                if block.how == "+=":
                    out += shortcut
                elif block.how == "add_alpha":
                    out = torch.add(out, shortcut, alpha=0.5)
                elif block.how == "sub":
                    out = out - shortcut
                else:
                    out = out + shortcut
                x = self.relu(out)
            elif kind == "concat":
                x = torch.cat([F.relu(block.left(x)), block.right(x)], dim=1)
            elif kind == "dense":
                x = torch.cat([x, self.relu(block.grow(x))], 1)
            else:  # pool
                x = block(x)
        return self.head(x) if self.head is not None else x


@st.composite
def dag_nets(draw: st.DrawFn, head: bool | None = None) -> tuple[DagNet, Tensor]:
    """A random float64 branching CNN in eval mode and an input batch for it."""
    seed = draw(st.integers(0, 2**31 - 1))
    generator = torch.Generator().manual_seed(seed)
    channels = draw(st.integers(1, 3))
    size = (draw(st.integers(6, 17)), draw(st.integers(6, 17)))
    first_channels, height, width = channels, *size
    blocks: list[tuple[str, Any]] = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["conv", "residual", "residual", "concat", "dense", "pool"]))
        if kind == "conv":
            out = draw(st.integers(1, 4))
            blocks.append((kind, nn.Conv2d(channels, out, 3, padding=1)))
            channels = out
        elif kind == "residual":
            block = nn.Module()
            stride = draw(st.integers(1, 2)) if min(height, width) > 4 else 1
            out = draw(st.integers(1, 4)) if stride == 2 or draw(st.booleans()) else channels
            block.first = nn.Sequential(nn.Conv2d(channels, out, 3, stride, 1), nn.BatchNorm2d(out))
            block.second = nn.Conv2d(out, out, 3, padding=1)
            block.shortcut = (
                nn.Conv2d(channels, out, 1, stride) if (stride, out) != (1, channels) else None
            )
            block.how = draw(st.sampled_from(["+", "+=", "add_alpha", "sub"]))
            blocks.append((kind, block))
            channels = out
            height, width = (height - 1) // stride + 1, (width - 1) // stride + 1
        elif kind == "concat":
            block = nn.Module()
            left, right = draw(st.integers(1, 3)), draw(st.integers(1, 3))
            block.left = nn.Conv2d(channels, left, 3, padding=1)
            block.right = nn.Conv2d(channels, right, 1)
            blocks.append((kind, block))
            channels = left + right
        elif kind == "dense":
            block = nn.Module()
            grow = draw(st.integers(1, 3))
            block.grow = nn.Conv2d(channels, grow, 3, padding=1)
            blocks.append((kind, block))
            channels += grow
        elif min(height, width) >= 3:
            kernel, stride = draw(st.sampled_from([(2, 2), (3, 2), (3, 1)]))
            blocks.append((kind, nn.MaxPool2d(kernel, stride, ceil_mode=draw(st.booleans()))))
            height = pooled_size(height, kernel, stride, 0, 1, blocks[-1][1].ceil_mode)
            width = pooled_size(width, kernel, stride, 0, 1, blocks[-1][1].ceil_mode)
    if head is None:
        head = draw(st.booleans())
    head_module = (
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, draw(st.integers(1, 4))))
        if head else None
    )
    net = DagNet(blocks, head_module)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.weight.normal_(generator=generator)
                module.bias.normal_(generator=generator)
            elif isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
                module.weight.normal_(generator=generator)
    net = net.double().eval()
    x = torch.randn(draw(st.integers(1, 2)), first_channels, *size, generator=generator, dtype=torch.float64)
    return net, x
