"""Where signals meet, read: sums and differences, negation, concatenations, products and
quotients."""

from __future__ import annotations

import operator
from typing import cast

import torch
from torch import fx

from ...mirror import Add, Concat, Product
from .base import Built, General, Reader

__all__ = ["add", "negate", "cat", "product"]


def add(reader: Reader, node: fx.Node, name: str) -> Built:
    """``a + b``, ``a - b``, ``torch.add(a, b, alpha=...)``: each summand gets the signal."""
    if len(node.args) != 2 or any(isinstance(v, fx.Node) for v in node.kwargs.values()):
        raise General
    sign = -1.0 if node.target in (operator.sub, torch.sub, "sub") else 1.0
    alpha = node.kwargs.get("alpha", 1)
    if set(node.kwargs) - {"alpha"} or not isinstance(alpha, (int, float)):
        raise General
    second = sign * float(alpha)
    a, b = node.args
    if a is b:  # x + x
        return Built(Add((1.0 + second,)), [cast(fx.Node, a)])
    parts = [(v, w) for v, w in zip((a, b), (1.0, second), strict=True)
             if isinstance(v, fx.Node) and v in reader.signal]
    if not parts:  # pragma: no cover - a signal node has a signal input
        raise General
    return Built(Add(tuple(w for _, w in parts)), [v for v, _ in parts])


def negate(reader: Reader, node: fx.Node, name: str) -> Built:
    """``-x``: the signal negated."""
    return Built(Add((-1.0,)), reader.first_only(node))


def cat(reader: Reader, node: fx.Node, name: str) -> Built:
    """``torch.cat`` along a constant dim other than the batch: the signal split back."""
    tensors = node.args[0] if node.args else node.kwargs.get("tensors")
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    if not isinstance(tensors, (list, tuple)) or not all(isinstance(t, fx.Node) for t in tensors):
        raise General
    if not isinstance(dim, int) or dim == 0:
        raise General(f"concatenates along dim={dim}; a mirror needs a constant dim other than the batch dimension")
    nodes = cast(list[fx.Node], list(tensors))
    unique = list(dict.fromkeys(n for n in nodes if n in reader.signal))
    if len(unique) != len([n for n in nodes if n in reader.signal]):
        raise General  # one tensor concatenated twice: its parts would add up
    parts = tuple(nodes.index(n) for n in unique)
    return Built(Concat(dim, parts), unique, refs=nodes)


def product(reader: Reader, node: fx.Node, name: str) -> Built:
    """``a * b``, ``a / b``: the product rule at the recorded operands."""
    if len(node.args) != 2 or set(node.kwargs) - {"rounding_mode"} or node.kwargs.get("rounding_mode") is not None:
        raise General
    call, inputs, refs = reader.call(node)
    divide = node.target in (operator.truediv, torch.div, torch.true_divide, "div", "true_divide")
    return Built(Product(call, divide), inputs, refs=refs)
