"""Assembling: the traced graph, read node by node, becomes a :class:`Network`: the forward steps
in order, the names one can reconstruct from, and the :class:`~deconvnet.mirror.Mirror`, the
graph reversed. :func:`build` keeps one network per model."""

from __future__ import annotations

import difflib
import weakref
from dataclasses import dataclass, field
from typing import Any, cast

from torch import Tensor, fx, nn

from .. import rules
from ..errors import BranchingModelError, InputError, LayerNotFoundError, TracingError, TrainingModeError, UnsupportedLayerError
from ..mirror import INPUT, VJP, Mirror, MirrorLayer
from .nodes import ancestors, call_site, describe, fetch_attribute, item_key, step_names
from .reading import Reader, read
from .reading.base import Run
from .sources import transformers_image_model
from .tracing import Decision, KeptAsFound, NeedsInput, fixed_placeholders, normalise_in_place, trace

__all__ = ["Step", "Found", "Network", "structure", "build"]


@dataclass(eq=False)
class Step:
    """One forward layer on the signal path.

    name: the layer's readable name: its module's qualified name (``name:i`` for the i-th call
        of a module called more than once), or the torch.fx node name of a functional call.
    node: the traced node.
    module: the forward module, or the module a functional call is equivalent to, or None.
    rule: the rule for ``module``, if any.
    mirror: the mirror layer that reverses it.
    inputs: the nodes whose outputs it takes as signal.
    run: runs the layer while tracing when it must return more than its output (switches).
    refs: the forward values its mirror reads (``record.values``), in order.
    """

    name: str
    node: fx.Node
    module: nn.Module | None
    rule: rules.Rule | None
    mirror: MirrorLayer
    inputs: list[fx.Node]
    run: Run | None = None
    refs: list[fx.Node] = field(default_factory=list)


@dataclass(frozen=True)
class Found:
    """What running the forward showed about a model that reading its code could not."""

    whole: dict[str, str] = field(default_factory=dict)
    """Modules to reverse whole (path -> why): they fold the batch dimension inside."""
    constants: frozenset[tuple[str, int | str]] = frozenset()
    """Items of module outputs that hold no tensor: (the module's path, the item)."""


def _holds_tensor(value: Any) -> bool:
    if isinstance(value, Tensor):
        return True
    if isinstance(value, dict):
        return any(_holds_tensor(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_tensor(v) for v in value)
    return False


@dataclass(eq=False)
class Network:
    """A model read as a graph: what tracing runs and what the mirror reverses.

    It holds its model weakly (see :attr:`model`), so that built networks can be kept per model
    (:func:`build` reuses them) without keeping the model alive.
    """

    owner: weakref.ref[nn.Module]
    nodes: list[fx.Node]
    """Every node to run in a forward pass, in order (the output node excluded)."""
    steps: dict[fx.Node, Step]
    """The nodes that carry the signal (from input to output), with their layers."""
    output: fx.Node
    layers: dict[str, Step]
    """Names one can reconstruct from, in forward order: module outputs and functional calls."""
    mirror: Mirror
    input_channels: int | None
    spatial_dims: int = 2
    """Spatial dims of the model's input: 1 (signals, Tensor[N, C, L]), 2 (images), 3 (volumes,
    clips: Tensor[N, C, D, H, W])."""
    modules: dict[str, list[str]] = field(default_factory=dict)
    """Module qualified name -> its layer names (several when the module is called more than once)."""
    substitutes: dict[str, nn.Module] = field(default_factory=dict)
    """Modules that work in place -> an out-of-place copy to run while tracing."""
    defaults: dict[str, Any] = field(default_factory=dict)
    """Placeholders of forward's optional arguments -> the default they are traced at."""
    ruleset: rules.RuleSet = rules.DEFAULT_RULES
    """The rules it was built with (layer_rules over the defaults)."""
    constants: dict[str, Any] = field(default_factory=dict)
    """torch.fx's tensor constants (``_tensor_constant0``), kept here, not on the model."""
    programs: dict[Any, Any] = field(default_factory=dict)
    """Generated forwards (see :mod:`deconvnet.capture`) by what they return, made the second
    time one is needed (``None`` after the first)."""
    strict: bool = False
    found: Found = field(default_factory=lambda: Found())
    """What running the forward showed that reading it could not (see :meth:`refine`)."""
    output_key: str | int | None = None
    """Which of the forward's outputs is explained: a dict key or ``ModelOutput`` attribute, a
    tuple index, or None when the forward returns one tensor."""
    pending: str | None = None
    """Why the network is not read yet: its forward decides on traced values, so it is read by
    running it on the first input (:meth:`specialise`)."""
    decisions: list[Decision] = field(default_factory=list)
    """What reading the forward by running it fixed (branches, lengths): the graph holds for
    inputs of the example's shape, or (a decision on values) for the example alone."""
    example: Tensor | None = None
    """The input the forward was read on, when it was read by running it."""
    verified: bool = False
    """Whether the traced forward was checked to compute ``model(x)`` (once, on an input)."""

    def holds_for(self, x: Tensor) -> bool:
        """Whether the graph read is the forward's for x (always, for a symbolic read)."""
        if self.pending is not None:
            return False
        if self.example is None or not self.decisions:
            return True
        if any(not d.shape_only for d in self.decisions):
            return x is self.example
        return x.shape == self.example.shape and x.dtype == self.example.dtype and x.device == self.example.device

    def specialise(self, x: Tensor) -> None:
        """Read the forward again by running it on x (where :meth:`holds_for` is false)."""
        rebuilt = _build(self.model, self.ruleset, self.strict, self.found, self.output_key, example=x)
        self.__dict__.update(rebuilt.__dict__)

    def refine(self, node: fx.Node, out: Any) -> bool:
        """Rebuild after the forward showed that ``node``'s output (``out``) does not map
        Tensor[N, ...] to Tensor[N, ...]; False when no rebuild can help.

        An item of a module's output that holds no tensor (Swin's ``(height, width)``) is a
        value computed from shapes, not signal. Any other value that lost the batch dimension
        was made inside a module that folds the batch with something else (a window partition
        ``[N, C, H, W] -> [N * windows, ...]``) and unfolds it before returning: that module is
        reversed whole, by its exact vector-Jacobian product, one module further out each time
        until the batch is kept.
        """
        found = self.found
        item = item_key(node)
        if item is not None and not _holds_tensor(out) and item not in found.constants:
            found = Found(found.whole, found.constants | {item})
        else:
            own = str(node.target) if node.op == "call_module" else None
            paths = [path for path, _ in (node.meta.get("nn_module_stack") or {}).values()]
            outer = [p for p in reversed(paths) if p and p != own and p not in found.whole]
            if not outer:
                return False
            why = "it folds the batch dimension into another inside (a window partition), so it is reversed whole"
            found = Found({**found.whole, outer[0]: why}, found.constants)
        rebuilt = _build(self.model, self.ruleset, self.strict, found, self.output_key, self.example)
        self.__dict__.update(rebuilt.__dict__)
        return True

    @property
    def model(self) -> nn.Module:
        """The model it was built from."""
        model = self.owner()
        if model is None:
            raise TracingError("the model this network was built from no longer exists")
        return model

    def attribute(self, target: str) -> Any:
        """A ``get_attr`` value: a parameter or buffer of the model, or a graph constant."""
        return fetch_attribute(self.model, self.constants, target)

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
            if step.module is None:
                continue
            for part_name, part in step.module.named_modules():
                rule = self.ruleset.rule_for(part) if part is not step.module else step.rule
                if part.training and rule is not None and rule.eval_only:
                    where = step.name if not part_name else f"{step.name}.{part_name}"
                    raise TrainingModeError(
                        f"{where} ({type(part).__name__}) is in training mode, where "
                        "it is random or uses batch statistics; call model.eval() first"
                    )


def _short_list(names: list[str], limit: int = 12) -> str:
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:limit]) + f", ... ({len(names)} in all)"


# Networks built with the default rules, per model: reading a forward costs about as much as
# running it, and ``DeconvNet(model)`` is often made anew for each call (Captum's habit).
_BUILT: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[Any, ...], Network]] = weakref.WeakKeyDictionary()


def structure(model: nn.Module) -> tuple[Any, ...]:
    """What a built network depends on beyond the values it shares: each module (its identity,
    class, an instance-level ``forward``, training flag) and the parameter and buffer tensors
    (replaced ones, not updated ones, change it)."""
    return (
        tuple((name, id(m), type(m), id(m.__dict__.get("forward")), m.training) for name, m in model.named_modules()),
        tuple(id(t) for t in model.parameters()),
        tuple(id(t) for t in model.buffers()),
    )


def build(
    model: nn.Module, ruleset: rules.RuleSet | None = None, *, strict: bool = False, found: Found | None = None,
    output: str | int | None = None,
) -> Network:
    """Read ``model``'s forward and build its mirror. Raises a DeconvnetError if it cannot.

    strict: refuse (``UnsupportedLayerError``) any layer the mirror would reverse with the
    general VJP layer instead of by hand.
    found: what an earlier run of the forward showed (see :meth:`Network.refine`).
    output: which output to explain when the forward returns several (a dict key, a
        ``ModelOutput`` attribute, a tuple index); None chooses (see :func:`chosen_output`).

    With the default rules (and :func:`~deconvnet.rules.register_rule`'s additions) the network
    is built once per model and returned again while the model's :func:`structure` is the same;
    it shares the model's parameters, so updated weights need no rebuild.
    """
    if ruleset is None and found is None and isinstance(model, nn.Module):
        key = (structure(model), strict, output,
               tuple((t, id(r)) for t, r in rules.DEFAULT_RULES.rules.items()))
        built = _BUILT.get(model)
        if built is None or built[0] != key:
            built = (key, _build(model, rules.DEFAULT_RULES, strict, Found(), output))
            _BUILT[model] = built
        return built[1]
    return _build(model, ruleset or rules.DEFAULT_RULES, strict, found or Found(), output)


def _build(model: nn.Module, ruleset: rules.RuleSet, strict: bool, found: Found, output_key: str | int | None = None,
           example: Tensor | None = None) -> Network:
    try:
        graph, module_calls, opaque, constants, optional, stateful, decisions = trace(
            model, ruleset, found.whole, example, output_key)
    except NeedsInput as waiting:
        return Network(owner=weakref.ref(model), nodes=[], steps={}, output=cast(fx.Node, None), layers={},
                       mirror=Mirror([]), input_channels=None, spatial_dims=_model_dims(model), ruleset=ruleset,
                       strict=strict, found=found, output_key=output_key, pending=str(waiting))
    substitutes = normalise_in_place(graph, model) | {path: KeptAsFound(model.get_submodule(path)) for path in stateful}
    module_names = step_names(graph)

    fixed = fixed_placeholders(graph, optional)
    placeholders = [n for n in graph.nodes if n.op == "placeholder" and n.users and n not in fixed]
    if len(placeholders) != 1:
        raise BranchingModelError(
            f"{type(model).__name__}.forward uses {len(placeholders)} inputs "
            f"({', '.join(n.name for n in placeholders)}); deconvnet needs a single image input"
        )
    signal: set[fx.Node] = {placeholders[0]}
    live = ancestors(graph)
    reader = Reader(model, ruleset, signal, constants, substitutes)
    steps: dict[fx.Node, Step] = {}
    names: dict[fx.Node, str] = {placeholders[0]: INPUT}
    producers: set[fx.Node] = set()  # signal nodes whose output is a tuple (chunk, a module's)
    layers_mirrored: list[MirrorLayer] = []
    nodes: list[fx.Node] = []
    output: fx.Node | None = None
    # Names a functional call must not take: every called module's layer names and its
    # qualified name (a module called twice is "relu:0", "relu:1", and "relu" must stay its).
    taken = set(module_names.values()) | {str(n.target) for n in module_names}

    for node in graph.nodes:
        if node.op == "output":
            if transformers_image_model(model):  # traced through PixelLogits: its ModelOutput's attribute
                result, output_key = node.args[0], output_key or "logits"
            else:
                result, output_key = chosen_output(node.args[0], output_key, signal, producers, model)
            if not isinstance(result, fx.Node) or result not in signal or result in producers:
                raise UnsupportedLayerError(
                    f"{type(model).__name__}.forward must return one tensor computed from its "
                    "input; it returns "
                    f"{type(result).__name__ if not isinstance(result, fx.Node) else result.name}"
                )
            output = result
            continue
        if node.op == "placeholder" and node not in signal:
            if node in fixed:
                nodes.append(node)  # an optional forward argument, at its default
            continue
        nodes.append(node)
        if node in signal:
            continue
        sources = [n for n in node.all_input_nodes if n in signal]
        if not sources or (node.op != "call_module" and rules.is_meta_call(node.op, node.target, node.args)):
            continue  # shapes, constants and parameters: no signal goes through
        if item_key(node) in found.constants:
            continue  # an item of a module's output that holds no tensor (sizes)
        name = module_names.get(node, node.name)
        owner = module_names[cast(fx.Node, node.args[0])] if _is_module_item(node, producers) else None
        if owner is not None and node.args[1] == 0:
            name = owner  # out, _ = attention(x): the module's output
            module_calls.append((str(cast(fx.Node, node.args[0]).target), node))
        elif owner is not None and isinstance(node.args[1], str) and f"{owner}.{node.args[1]}" not in taken:
            name = f"{owner}.{node.args[1]}"  # body(x).last_hidden_state
        elif node.op != "call_module" and name in taken:
            name = f"{node.name}()"  # the call, told apart from the module of the same name
        built = read(reader, node, name, producers)
        if built is not None and isinstance(built.mirror, VJP) and node not in live:
            continue  # an unused general result (``out, _ = attention(...)``): nothing to reverse
        if built is None:  # a tuple: its items are the layers
            producers.add(node)
            signal.add(node)
            continue
        if node.op == "call_module" and str(node.target) in opaque:
            built.reason = opaque[str(node.target)]
        if isinstance(built.mirror, VJP) and strict:
            raise _strict_error(node, name, model, ruleset, built.reason)
        mirrored = built.mirror
        mirrored.source = name
        mirrored.inputs = tuple(names[i] for i in built.inputs)
        steps[node] = Step(name, node, built.module, built.rule, mirrored, built.inputs, built.run, built.refs)
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
    first = next(iter(steps.values()), None)
    return Network(
        owner=weakref.ref(model),
        nodes=nodes,
        steps=steps,
        output=cast(fx.Node, output),  # every fx graph ends in an output node
        layers=dict(ordered),
        mirror=Mirror(reversed(layers_mirrored)),
        input_channels=_input_channels(first) if first is not None and placeholders[0] in first.inputs else None,
        spatial_dims=_spatial_dims(steps),
        modules=modules,
        substitutes=substitutes,
        defaults={n.name: v for n, v in fixed.items()},
        constants=constants,
        ruleset=ruleset,
        strict=strict,
        found=found,
        output_key=output_key,
        decisions=decisions,
        example=example,
    )


def chosen_output(result: Any, key: str | int | None, signal: set[fx.Node], producers: set[fx.Node],
                  model: nn.Module) -> tuple[Any, str | int | None]:
    """The forward's output to explain and its key.

    A dict (torchvision's ``{"out", "aux"}``, a ``ModelOutput``) gives ``"out"`` or ``"logits"``
    by default, a tuple or list the one item computed from the input; ``key`` picks another. A
    single tensor has no key.
    """
    if isinstance(result, dict):
        choices: tuple[str | int, ...] = tuple(result)
    elif isinstance(result, (tuple, list)):
        choices = tuple(range(len(result)))
    else:
        if key is not None:
            raise InputError(f"output={key!r}: {type(model).__name__}.forward returns one tensor, so there is "
                             "no output to pick; leave output out")
        return result, None
    items = result if isinstance(result, dict) else dict(enumerate(result))
    tensors = [k for k in choices if isinstance(items[k], fx.Node) and items[k] in signal and items[k] not in producers]
    kind = "dict" if isinstance(result, dict) else type(result).__name__
    where = f"{type(model).__name__}.forward returns a {kind} of {', '.join(map(repr, choices))}"
    if key is not None:
        if key not in choices:
            raise InputError(f"output={key!r} is not one of its outputs: {where}; pick one with output=")
        if key not in tensors:
            raise InputError(f"output={key!r} is not a tensor computed from the input: {where}; "
                             f"the ones that are: {', '.join(map(repr, tensors)) or 'none'}")
        return items[key], key
    for default in ("out", "logits"):
        if default in tensors:
            return items[default], default
    if len(tensors) == 1:
        return items[tensors[0]], tensors[0]
    raise InputError(f"{where}, {len(tensors)} of them tensors computed from the input; pick the one to explain "
                     f"with DeconvNet(model, output=...), one of {', '.join(map(repr, tensors))}")


def _model_dims(model: nn.Module) -> int:
    """The spatial dims of a model's first convolution or pool (2 without one)."""
    for module in model.modules():
        for dims in (1, 2, 3):
            if type(module).__name__.endswith(f"{dims}d") and isinstance(
                    module, (nn.modules.conv._ConvNd, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd)):
                return dims
    return 2


def _is_module_item(node: fx.Node, producers: set[fx.Node]) -> bool:
    """Whether ``node`` takes an item of a module's tuple output (or an attribute of its
    ``ModelOutput``)."""
    return item_key(node) is not None and node.args[0] in producers


def _strict_error(
    node: fx.Node, name: str, model: nn.Module, ruleset: rules.RuleSet, reason: str
) -> UnsupportedLayerError:
    if reason:
        what = (type(model.get_submodule(str(node.target))).__name__ if node.op == "call_module"
                else f"{describe(node)}{call_site(node)}")
        return UnsupportedLayerError(
            f"{name} ({what}): {reason}; drop strict=True to reverse it by its exact vector-Jacobian product"
        )
    if node.op == "call_module":
        kind = type(model.get_submodule(str(node.target))).__name__
        return UnsupportedLayerError(
            f"{name} ({kind}) has no deconvnet rule; supported: {', '.join(ruleset.names())}; "
            f"register one with DeconvNet(model, layer_rules={{{kind}: ...}}) or "
            f"deconvnet.register_rule({kind}, mirror=...), or drop strict=True to reverse it by "
            "its exact vector-Jacobian product"
        )
    return UnsupportedLayerError(
        f"{name} (the call {describe(node)}{call_site(node)}) has no deconvnet rule in this form; supported calls: "
        f"{', '.join(rules.supported_calls())}; for anything else use a module with a registered "
        "rule, or drop strict=True to reverse it by its exact vector-Jacobian product"
    )


def _input_channels(first: Step | None) -> int | None:
    module = first.module if first is not None else None
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.in_channels
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, nn.BatchNorm1d):
        return module.num_features
    return None


def _spatial_dims(steps: dict[fx.Node, Step]) -> int:
    """How many spatial dims the model's input has: those of its first sliding-window layer
    (a conv or a pool of any dimension, as module or functional call); 2 (images) without one."""
    for step in steps.values():
        dims = getattr(step.mirror, "dims", None)
        if isinstance(dims, int):
            return dims
    return 2
