"""The builder: read a model's real forward with torch.fx and emit its mirror.

``build(model)`` traces the forward (so ``torch.flatten``, ``F.relu``, ``x.view`` inside
``forward`` are seen, not just ``children()``), looks every layer up in the rule registry,
follows the signal through the graph (chains, residual adds, concatenations) and returns a
:class:`Network`: the forward steps in order, the names one can reconstruct from, and the
:class:`~deconvnet.mirror.Mirror`, the graph reversed.
"""

from __future__ import annotations

import difflib
import operator
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import fx, nn

from . import mirror as mirror_layers
from . import rules
from .errors import (
    BranchingModelError,
    LayerNotFoundError,
    TracingError,
    TrainingModeError,
    UnsupportedLayerError,
)
from .mirror import Mirror

__all__ = ["Step", "Network", "build"]


@dataclass(eq=False)
class Step:
    """One forward layer of the chain.

    name: the layer's readable name: its module's qualified name (``name:i`` for the i-th call
        of a module called more than once), or the torch.fx node name of a functional call.
    node: the traced node.
    module: the forward module, or the module a functional call is equivalent to; ``None`` for
        reshapes and identities, which are run as traced.
    rule: the registry rule for ``module``.
    mirror: the mirror layer that reverses it.
    inputs: the nodes whose outputs it takes as signal.
    """

    name: str
    node: fx.Node
    module: nn.Module | None
    rule: rules.Rule | None
    mirror: mirror_layers.MirrorLayer
    inputs: list[fx.Node]


@dataclass(eq=False)
class Network:
    """A model read as a chain: what tracing runs and what the mirror reverses."""

    model: nn.Module
    nodes: list[fx.Node]
    """Every node to run in a forward pass, in order (the output node excluded)."""
    steps: dict[fx.Node, Step]
    """The nodes that carry the signal (from input to output), with their layers."""
    output: fx.Node
    layers: dict[str, Step]
    """Names one can reconstruct from, in forward order: module outputs and functional calls."""
    mirror: Mirror
    input_channels: int | None
    modules: dict[str, list[str]] = field(default_factory=dict)
    """Module qualified name -> its layer names (several when the module is called more than once)."""

    def resolve(self, layer: str | nn.Module) -> Step:
        """The step whose output is ``layer`` (a name in ``layers`` or a module of the model)."""
        if isinstance(layer, nn.Module):
            names = [n for n, m in self.model.named_modules() if m is layer]
            called = [n for n in names if n in self.modules]
            if not called:
                what = f"{type(layer).__name__}"
                raise LayerNotFoundError(
                    f"the {what} module passed as layer is not called in the model's forward"
                    if names
                    else f"the {what} module passed as layer is not part of the model"
                )
            layer = called[0]
        if not isinstance(layer, str):
            raise LayerNotFoundError(
                f"layer must be a layer name or a module of the model, got {type(layer).__name__}"
            )
        if layer in self.layers:
            return self.layers[layer]
        if layer in self.modules:
            calls = self.modules[layer]
            raise LayerNotFoundError(
                f"layer {layer!r} is called {len(calls)} times in the forward; "
                f"name one call: {', '.join(repr(c) for c in calls)}"
            )
        close = difflib.get_close_matches(layer, list(self.layers), n=3)
        hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
        raise LayerNotFoundError(
            f"unknown layer {layer!r}; {hint}valid layers: {_short_list(list(self.layers))} "
            "(see DeconvNet.layers)"
        )

    def check_eval(self) -> None:
        """Refuse to trace layers that would run with training semantics."""
        for step in self.steps.values():
            if step.rule is not None and step.rule.eval_only and step.module is not None:
                if step.module.training:
                    raise TrainingModeError(
                        f"{step.name} ({type(step.module).__name__}) is in training mode, where "
                        "it is random or uses batch statistics; call model.eval() first"
                    )


def _short_list(names: list[str], limit: int = 12) -> str:
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:limit]) + f", ... ({len(names)} in all)"


class _Tracer(fx.Tracer):
    """A tracer that keeps registered layers whole and records every module call's output."""

    def __init__(self) -> None:
        super().__init__()
        self.module_calls: list[tuple[str, fx.Node]] = []

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return rules.rule_for(m) is not None or super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        out = super().call_module(m, forward, args, kwargs)
        if isinstance(out, fx.Proxy):
            self.module_calls.append((self.path_of_module(m), out.node))
        return out


def _trace(model: nn.Module) -> tuple[fx.Graph, list[tuple[str, fx.Node]]]:
    if not isinstance(model, nn.Module):
        raise TracingError(f"DeconvNet takes an nn.Module, got {type(model).__name__}")
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except Exception as error:  # torch.fx raises many types; all mean the same to the user
        raise TracingError(
            f"torch.fx could not trace {type(model).__name__}.forward: "
            f"{type(error).__name__}: {error}. deconvnet reads the forward with torch.fx, "
            "which cannot follow control flow that depends on tensor values; move such logic "
            "out of forward or wrap it in a module with a registered rule"
        ) from error
    return graph, tracer.module_calls


def _describe(node: fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    target = node.target
    return target if isinstance(target, str) else getattr(target, "__name__", str(target))


def _resolve_call(node: fx.Node) -> tuple[nn.Module | None, mirror_layers.MirrorLayer]:
    """The equivalent module (or None) and mirror layer of a functional signal call."""
    target, args, kwargs = node.target, node.args[1:], dict(node.kwargs)
    factories = rules.METHOD_MODULES if node.op == "call_method" else rules.FUNCTION_MODULES
    reshapes = rules.RESHAPE_METHODS if node.op == "call_method" else rules.RESHAPE_FUNCTIONS
    identities = rules.IDENTITY_METHODS if node.op == "call_method" else rules.IDENTITY_FUNCTIONS
    what = _describe(node)
    if target in reshapes:
        return None, mirror_layers.Reshape(what)
    if target in identities:
        if kwargs.get("training", len(args) > 1 and args[1]):
            raise TrainingModeError(
                f"{node.name} ({what}) was traced with training=True; call model.eval() "
                "before DeconvNet(model)"
            )
        return None, mirror_layers.Identity(what)
    if target in factories:
        constants = [*args, *kwargs.values()]
        if any(isinstance(a, fx.Node) for a in constants):
            raise UnsupportedLayerError(
                f"{node.name} ({what}) takes arguments computed in the forward; deconvnet "
                "needs constant arguments there: use the equivalent nn module"
            )
        try:
            module = factories[target](*args, **kwargs)
        except (TypeError, ValueError) as error:
            raise UnsupportedLayerError(f"{node.name} ({what}): {error}") from error
        rule = rules.rule_for(module)
        if rule is None:  # pragma: no cover - every factory builds a registered module type
            raise UnsupportedLayerError(f"{node.name} ({what}) has no deconvnet rule")
        return module, rule.mirror(module)
    raise UnsupportedLayerError(
        f"{node.name} (the call {what}) has no deconvnet rule; supported calls: relu, "
        "max_pool2d, avg_pool2d, adaptive_avg_pool2d, dropout, flatten, view, reshape, squeeze, "
        "unsqueeze, contiguous, add, sub, cat; for anything else use a module and register a rule with "
        "deconvnet.register_rule"
    )


def _module_rule(name: str, module: nn.Module) -> rules.Rule:
    rule = rules.rule_for(module)
    kind = type(module).__name__
    if rule is None:
        raise UnsupportedLayerError(
            f"{name} ({kind}) has no deconvnet rule; supported: "
            f"{', '.join(rules.supported_layers())}; register one with "
            f"deconvnet.register_rule({kind}, mirror=...)"
        )
    reason = rule.unsupported(module) if rule.unsupported is not None else None
    if reason:
        raise UnsupportedLayerError(f"{name} ({kind}): {reason}")
    return rule


def _step_names(graph: fx.Graph, calls: list[tuple[str, fx.Node]]) -> dict[fx.Node, str]:
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


def build(model: nn.Module) -> Network:
    """Read ``model``'s forward and build its mirror. Raises a DeconvnetError if it cannot."""
    graph, module_calls = _trace(model)
    module_names = _step_names(graph, module_calls)

    placeholders = [n for n in graph.nodes if n.op == "placeholder" and n.users]
    if len(placeholders) != 1:
        raise BranchingModelError(
            f"{type(model).__name__}.forward uses {len(placeholders)} inputs "
            f"({', '.join(n.name for n in placeholders)}); deconvnet needs a single image input"
        )
    signal: set[fx.Node] = {placeholders[0]}
    steps: dict[fx.Node, Step] = {}
    names: dict[fx.Node, str] = {placeholders[0]: mirror_layers.INPUT}
    layers_mirrored: list[mirror_layers.MirrorLayer] = []
    nodes: list[fx.Node] = []
    output: fx.Node | None = None
    # Names a functional call must not take: every called module's layer names and its
    # qualified name (a module called twice is "relu:0", "relu:1", and "relu" must stay its).
    taken = set(module_names.values()) | {str(n.target) for n in module_names}

    for node in graph.nodes:
        if node.op == "output":
            result = node.args[0]
            if not isinstance(result, fx.Node) or result not in signal:
                raise UnsupportedLayerError(
                    f"{type(model).__name__}.forward must return one tensor computed from its "
                    "input; it returns "
                    f"{type(result).__name__ if not isinstance(result, fx.Node) else result.name}"
                )
            output = result
            continue
        if node.op == "placeholder" and node not in signal:
            continue
        nodes.append(node)
        if node in signal:
            continue
        sources = [n for n in node.all_input_nodes if n in signal]
        if not sources or (
            node.op != "call_module" and rules.is_meta_call(node.op, node.target, node.args)
        ):
            continue  # shapes, constants and parameters: no signal goes through
        name = module_names.get(node, node.name)
        if node.op != "call_module" and name in taken:
            name = f"{node.name}()"  # the call, told apart from the module of the same name
        combined = _combine(node, name, signal)
        if combined is not None:
            module, rule, (mirrored, inputs) = None, None, combined
        else:
            inputs = _single_input(node, name, sources)
            if node.op == "call_module":
                module = model.get_submodule(str(node.target))
                rule = _module_rule(name, module)
                mirrored = rule.mirror(module)
            else:
                module, mirrored = _resolve_call(node)
                rule = rules.rule_for(module) if module is not None else None
        mirrored.source = name
        mirrored.inputs = tuple(names[i] for i in inputs)
        steps[node] = Step(name, node, module, rule, mirrored, inputs)
        names[node] = name
        layers_mirrored.append(mirrored)
        signal.add(node)
        taken.add(name)

    layers: dict[str, Step] = {}
    modules: dict[str, list[str]] = {}
    for qualname, node in module_calls:
        if node in steps:
            modules.setdefault(qualname, []).append(steps[node].name)
    for step in steps.values():
        layers[step.name] = step
    for qualname, called in modules.items():
        if len(called) == 1 and qualname not in layers:
            layers[qualname] = layers[called[0]]
    position = {node: i for i, node in enumerate(graph.nodes)}
    ordered = sorted(layers.items(), key=lambda item: position[item[1].node])
    first = next((s for s in steps.values() if isinstance(s.module, (nn.Conv2d, nn.BatchNorm2d))), None)
    return Network(
        model=model,
        nodes=nodes,
        steps=steps,
        output=cast(fx.Node, output),  # every fx graph ends in an output node
        layers=dict(ordered),
        mirror=Mirror(reversed(layers_mirrored)),
        input_channels=_input_channels(first) if first is not None and placeholders[0] in first.inputs else None,
        modules=modules,
    )


def _single_input(node: fx.Node, name: str, sources: list[fx.Node]) -> list[fx.Node]:
    """The one signal input of a layer that takes one, checked to be its first argument."""
    uses = [a for a in (*node.args, *node.kwargs.values()) if a is sources[0]]
    if len(sources) > 1 or node.args[0] is not sources[0] or len(uses) != 1:
        raise UnsupportedLayerError(
            f"{name} ({_describe(node)}) combines signals in a way deconvnet cannot reverse; "
            "supported: add, sub, cat and layers that take the signal as their first argument"
        )
    return sources


_ADDS = {operator.add: 1.0, torch.add: 1.0, "add": 1.0, operator.sub: -1.0, torch.sub: -1.0, "sub": -1.0}
_CATS = {torch.cat, torch.concat, torch.concatenate}


def _combine(
    node: fx.Node, name: str, signal: set[fx.Node]
) -> tuple[mirror_layers.MirrorLayer, list[fx.Node]] | None:
    """The mirror of an add, sub or cat (and its signal inputs), or None for other calls."""
    target = node.target
    if node.op in ("call_function", "call_method") and target in _ADDS and len(node.args) == 2:
        if any(isinstance(v, fx.Node) and v in signal for v in node.kwargs.values()):
            return None
        second = _ADDS[target] * float(node.kwargs.get("alpha", 1))
        parts = [(a, w) for a, w in zip(node.args, (1.0, second), strict=True) if a in signal]
        return mirror_layers.Add(tuple(w for _, w in parts)), [a for a, _ in parts]
    if node.op == "call_function" and target in _CATS:
        tensors = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if not isinstance(tensors, (list, tuple)) or not all(t in signal for t in tensors):
            raise UnsupportedLayerError(
                f"{name} (cat) joins tensors that are not all computed from the input; deconvnet "
                "can only split a concatenation of signals"
            )
        if not isinstance(dim, int) or dim == 0:
            raise UnsupportedLayerError(
                f"{name} (cat) concatenates along dim={dim}; deconvnet needs a constant dim other "
                "than the batch dimension"
            )
        return mirror_layers.Concat(dim), list(tensors)
    return None


def _input_channels(first: Step | None) -> int | None:
    module = first.module if first is not None else None
    if isinstance(module, nn.Conv2d):
        return module.in_channels
    if isinstance(module, nn.BatchNorm2d):
        return module.num_features
    return None

