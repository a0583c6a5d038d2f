"""Activations read: the ReLU family (a rectifier, which takes the method's rule) and every other
element-wise activation, with its closed-form gradient where one is known."""

from __future__ import annotations

import functools

import torch
from torch import Tensor, fx

from ... import rules
from ...errors import TrainingModeError
from ...mirror import Activation, ReLU
from ..nodes import describe
from .base import Built, General, Reader

__all__ = ["activation"]


def activation(reader: Reader, node: fx.Node, name: str) -> Built:
    """``F.relu``, ``torch.sigmoid``, ``x.clamp(min=0)`` and the other element-wise activations of
    ``rules.CALLS``: a rectifier or a plain gradient at the recorded input."""
    inputs = reader.first_only(node)
    rest, kwargs = node.args[1:], dict(node.kwargs)
    found = rules.activation_kind(node.target, node.args, kwargs)
    if found is None:  # pragma: no cover - every CALLS activation has a kind
        raise General
    rectifier, relu = found
    if node.target in (torch.nn.functional.rrelu, torch.rrelu) and (
        kwargs.get("training") or (len(rest) > 2 and rest[2])
    ):
        raise TrainingModeError(f"{name} (rrelu) was traced with training=True; call model.eval() first")
    fetched = [reader.constant(a) for a in rest]
    options = {k: reader.constant(v) for k, v in kwargs.items() if k != "inplace"}
    what = describe(node)
    if relu:
        return Built(ReLU(what), inputs)
    target = node.target

    def function(x: Tensor) -> Tensor:
        values = [f() for f in fetched]
        named = {k: f() for k, f in options.items()}
        return getattr(x, target)(*values, **named) if isinstance(target, str) else target(x, *values, **named)

    gradient, from_output = None, False
    weights = [*fetched, *options.values()]
    if target in (torch.nn.functional.prelu, torch.prelu, "prelu") and len(weights) == 1:
        gradient = functools.partial(rules.prelu_gradient, weight=weights[0])
    elif all(not isinstance(a, fx.Node) for a in (*rest, *kwargs.values())):
        constant = {k: v for k, v in kwargs.items() if k != "inplace"}
        gradient = rules.call_gradient(target, tuple(rest), constant)
        from_output = rules.gradient_reads_output(target, tuple(rest), constant)
    return Built(Activation(what, function, rectifier=rectifier, gradient=gradient, from_output=from_output), inputs)
