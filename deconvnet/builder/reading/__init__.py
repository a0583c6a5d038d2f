"""Reading: one traced node turned into the mirror layer that reverses it.

A module is looked up in the rule set (:mod:`deconvnet.rules`); a functional call is looked up in
:data:`deconvnet.rules.CALLS`, which names its kind, and read by the reader of that kind in
:data:`READERS`. The readers live by family of ops: :mod:`.activations`, :mod:`.pooling`,
:mod:`.weights` (convs, linear maps, normalisations), :mod:`.merging` (sums, concatenations,
products) and :mod:`.shapes` (reshapes, pads, indexing, permutations, reductions, splits).
Reading a new call by hand is a kind in ``rules.CALLS`` and its reader here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from torch import fx

from ... import rules
from ..nodes import is_item, is_split, picks_items
from . import activations, merging, pooling, shapes, weights
from .base import Built, General, Reader

__all__ = ["READERS", "Built", "General", "Reader", "read"]

READERS: dict[str, Callable[[Reader, fx.Node, str], Built]] = {
    "activation": activations.activation,
    "max_pool": pooling.max_pool,
    "avg_pool": pooling.avg_pool,
    "adaptive_avg_pool": pooling.adaptive_avg_pool,
    "adaptive_max_pool": pooling.adaptive_max_pool,
    "conv": weights.conv,
    "linear": weights.linear,
    "batch_norm": weights.batch_norm,
    "layer_norm": weights.layer_norm,
    "group_norm": weights.group_norm,
    "add": merging.add,
    "negate": merging.negate,
    "cat": merging.cat,
    "product": merging.product,
    "reshape": shapes.reshape,
    "identity": shapes.identity,
    "dropout": shapes.dropout,
    "pad": shapes.pad,
    "index": shapes.index,
    "narrow": shapes.narrow,
    "permute": shapes.permute,
    "reduce": shapes.reduce,
    "split": shapes.split,
}
"""A kind of :data:`deconvnet.rules.CALLS` -> the reader of its calls."""


def function(reader: Reader, node: fx.Node, name: str) -> Built:
    """A functional call or method read by the reader of its kind; :class:`General` when no
    hand-written mirror layer reverses it."""
    try:
        kind = rules.CALLS.get(node.target)
    except TypeError:  # an unhashable target
        kind = None
    if kind is None:
        raise General
    return READERS[kind](reader, node, name)


def read(reader: Reader, node: fx.Node, name: str, producers: set[fx.Node]) -> Built | None:
    """The mirror of one signal node; None when the node's output is a tuple whose items are
    the layers."""
    if node.args and node.args[0] in producers and is_item(node, cast(fx.Node, node.args[0])):
        producer = cast(fx.Node, node.args[0])
        index = cast(Any, node.args[1])
        if is_split(producer):
            try:
                return shapes.split_piece(reader, producer, index)
            except General as why:
                built = reader.general(node, item=index, producer=producer)
                built.reason = str(why)
                return built
        return reader.general(node, item=index, producer=producer)
    if is_split(node) and picks_items(node):
        return None
    try:
        if node.op == "call_module":
            return reader.module(node, name)
        return function(reader, node, name)
    except General as why:
        if picks_items(node):
            return None
        built = reader.general(node)
        built.reason = str(why)
        return built
