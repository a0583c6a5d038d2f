"""What a traced node is and says, read by every stage of the builder: its readable name, whether
it takes an item of another node's output, where it sits in the model, a ``get_attr`` value."""

from __future__ import annotations

import operator
from typing import Any, cast

from torch import fx, nn

from .. import rules

__all__ = [
    "fetch_attribute", "describe", "step_names", "flatten", "format_index", "format_args", "is_split", "is_item",
    "item_key", "picks_items", "ancestors", "call_site",
]


def fetch_attribute(model: nn.Module, constants: dict[str, Any], target: str) -> Any:
    """The value of a ``get_attr`` target: a graph constant, or a parameter or buffer of the model."""
    if target in constants:
        return constants[target]
    value: Any = model
    for part in target.split("."):
        value = getattr(value, part)
    return value


def describe(node: fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    target = node.target
    return target if isinstance(target, str) else getattr(target, "__name__", str(target))


def step_names(graph: fx.Graph) -> dict[fx.Node, str]:
    """Readable names for call_module nodes: the qualified name, ``name:i`` when repeated."""
    per_module: dict[str, list[fx.Node]] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            per_module.setdefault(str(node.target), []).append(node)
    names: dict[fx.Node, str] = {}
    for qualname, nodes in per_module.items():
        for i, node in enumerate(nodes):
            names[node] = qualname if len(nodes) == 1 else f"{qualname}:{i}"
    return names


def flatten(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return [v for item in value for v in flatten(item)]
    if isinstance(value, dict):
        return [v for item in value.values() for v in flatten(item)]
    if isinstance(value, slice):
        return [value.start, value.stop, value.step]
    return [value]


def format_index(items: tuple[Any, ...]) -> str:
    def one(item: Any) -> str:
        if item is Ellipsis:
            return "..."
        if isinstance(item, slice):
            text = f"{'' if item.start is None else item.start}:{'' if item.stop is None else item.stop}"
            return text + (f":{item.step}" if item.step is not None else "")
        return repr(item)

    return ", ".join(one(i) for i in items)


def format_args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
    return f"({', '.join(parts)})"


_SPLITS = {t for t, kind in rules.CALLS.items() if kind == "split"}


def is_split(node: fx.Node) -> bool:
    try:
        return node.op in ("call_function", "call_method") and node.target in _SPLITS
    except TypeError:
        return False


def is_item(node: fx.Node, of: fx.Node) -> bool:
    """Whether ``node`` is ``of[i]`` or ``of.name`` for a constant ``i`` or ``name``."""
    if node.op != "call_function" or len(node.args) != 2 or node.args[0] is not of:
        return False
    if node.target is operator.getitem:
        return isinstance(node.args[1], int)
    return node.target is getattr and isinstance(node.args[1], str) and node.args[1] not in rules.META_ATTRIBUTES


def item_key(node: fx.Node) -> tuple[str, int | str] | None:
    """(module path, item) for an item taken from a module's output (see :func:`is_item`),
    else None."""
    producer = node.args[0] if node.args else None
    if not isinstance(producer, fx.Node) or producer.op != "call_module" or not is_item(node, producer):
        return None
    return str(producer.target), cast(Any, node.args[1])


def picks_items(node: fx.Node) -> bool:
    """Whether every use of ``node`` takes one item of it by a constant index or attribute name
    (a tuple output, a Hugging Face ``ModelOutput``)."""
    return bool(node.users) and all(is_item(user, node) for user in node.users)


def ancestors(graph: fx.Graph) -> set[fx.Node]:
    """The nodes the graph's output depends on."""
    outputs = [n for n in graph.nodes if n.op == "output"]
    seen: set[fx.Node] = set()
    stack = list(outputs)
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(node.all_input_nodes)
    return seen


def call_site(node: fx.Node) -> str:
    """Where a call sits: `` in 1.1 (Block)``, the innermost module whose forward makes it."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path, (_, owner) = list(stack.items())[-1]
    return f" in {path} ({getattr(owner, '__name__', owner)})"
