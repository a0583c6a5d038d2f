"""The builder: read a model's real forward with torch.fx and emit its mirror.

``build(model)`` traces the forward (so ``torch.flatten``, ``F.relu``, ``x.view`` inside
``forward`` are seen, not just ``children()``), looks every layer up in the rule set and every
call up in :data:`deconvnet.rules.CALLS`, follows the signal through the graph (chains, residual
adds, concatenations, gates) and returns a :class:`Network`: the forward steps in order, the
names one can reconstruct from, and the :class:`~deconvnet.mirror.Mirror`, the graph reversed.
Anything else on the signal path becomes a general :class:`~deconvnet.mirror.VJP` layer (or is
refused with ``strict=True``); a submodule torch.fx cannot trace becomes one such layer.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import inspect
import operator
import re
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from . import mirror as mirror_layers
from . import rules
from .errors import (
    BranchingModelError,
    LayerNotFoundError,
    TracingError,
    TrainingModeError,
    UnsupportedLayerError,
)
from .functional import ntuple
from .mirror import Call, Mirror, MirrorLayer, _Ref

__all__ = ["Step", "Network", "build"]

Run = Callable[[tuple[Any, ...], dict[str, Any]], tuple[Tensor, Tensor | None]]


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


def _item_key(node: fx.Node) -> tuple[str, int | str] | None:
    """(module path, item) for an item taken from a module's output (see :func:`_is_item`),
    else None."""
    producer = node.args[0] if node.args else None
    if not isinstance(producer, fx.Node) or producer.op != "call_module" or not _is_item(node, producer):
        return None
    return str(producer.target), cast(Any, node.args[1])


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
        item = _item_key(node)
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
        rebuilt = _build(self.model, self.ruleset, self.strict, found)
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


def fetch_attribute(model: nn.Module, constants: dict[str, Any], target: str) -> Any:
    """The value of a ``get_attr`` target: a graph constant, or a parameter or buffer of the model."""
    if target in constants:
        return constants[target]
    value: Any = model
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _short_list(names: list[str], limit: int = 12) -> str:
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:limit]) + f", ... ({len(names)} in all)"


# --- tracing ----------------------------------------------------------------------------------


def _timm_registrations() -> tuple[set[type[nn.Module]], list[Callable[..., Any]]]:
    """timm's own fx leaf modules and wrapped functions, when timm is installed.

    Its norm-plus-activation modules are traced through instead: they are a batch-norm and an
    activation, which the mirror reverses by hand.
    """
    try:
        from timm.layers import _fx as timm_fx
    except ImportError:
        return set(), []
    leaves = set(timm_fx.get_notrace_modules())
    leaves = {m for m in leaves if not m.__name__.endswith(("BatchNormAct2d", "BatchNormAct"))}
    return leaves, list(timm_fx.get_notrace_functions())


class _Tracer(fx.Tracer):
    """Keeps layers with a rule (and timm's and the opaque ones) whole; records every module
    call's output and which module was being traced when tracing failed."""

    def __init__(self, ruleset: rules.RuleSet, opaque: dict[str, str], parameter: Tensor | None = None) -> None:
        leaves, functions = _timm_registrations()
        super().__init__(autowrap_functions=tuple(functions))
        self.ruleset = ruleset
        self.opaque = opaque
        self.parameter = parameter
        self.timm_leaves = tuple(leaves)
        self.module_calls: list[tuple[str, fx.Node]] = []
        self.failed_in: str | None = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (
            self.ruleset.rule_for(m) is not None
            or module_qualified_name in self.opaque
            or (bool(self.timm_leaves) and isinstance(m, self.timm_leaves))
            or super().is_leaf_module(m, module_qualified_name)
        )

    def to_bool(self, obj: fx.Proxy) -> bool:
        """A branch on the input's dtype or device (``if pixel_values.dtype != weight.dtype``,
        Hugging Face's ViT) is decided: deconvnet only takes inputs of the model's dtype, on its
        device. Any other branch on a traced value cannot be followed."""
        if self.parameter is not None:
            try:
                return bool(_metadata_value(obj.node, self.root, self.parameter))
            except _NotMetadata:
                pass
        return super().to_bool(obj)

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        try:
            out = super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:  # the innermost module whose forward failed
                self.failed_in = self.path_of_module(m)
            raise
        if isinstance(out, fx.Proxy):
            self.module_calls.append((self.path_of_module(m), out.node))
        return out


class _NotMetadata(Exception):
    """A traced value that is not decided by the input's dtype and device alone."""


_METADATA_CALLS = {operator.eq, operator.ne, operator.is_, operator.is_not, operator.not_}


def _metadata_value(node: fx.Node, root: nn.Module, parameter: Tensor) -> Any:
    """The value of a node computed only from the input's and the parameters' dtypes and
    devices, the input having the model's (as :meth:`DeconvNet.trace` requires)."""
    if node.op == "placeholder":
        return torch.empty(0, dtype=parameter.dtype, device="meta"), parameter.device
    if node.op == "get_attr":  # read without getattr, which torch.fx patches while it traces
        value = dict(root.named_parameters()).get(str(node.target))
        if value is None:
            value = dict(root.named_buffers()).get(str(node.target))
        if value is None:
            raise _NotMetadata
        return value, value.device
    if node.op == "call_function" and node.target is getattr and node.args[1] in ("dtype", "device"):
        value, device = _metadata_value(cast(fx.Node, node.args[0]), root, parameter)
        return value.dtype if node.args[1] == "dtype" else device
    if node.op == "call_function" and node.target in _METADATA_CALLS and not node.kwargs:
        args = [_metadata_value(a, root, parameter) if isinstance(a, fx.Node) else a for a in node.args]
        if any(isinstance(a, tuple) for a in args):
            raise _NotMetadata  # a tensor itself, not its dtype or device
        return cast(Callable[..., Any], node.target)(*args)
    raise _NotMetadata


_FX_CONSTANT = re.compile(r"_tensor_constant\d+")


@contextlib.contextmanager
def _left_as_found(model: nn.Module, changed: list[tuple[str, str]], constants: dict[str, Any]) -> Iterator[None]:
    """Undo what a forward does to its modules' attributes while torch.fx traces it, listing
    what it changed in ``changed`` (module path, attribute): some forwards cache values on the module (timm's LeViT
    caches attention biases), which would leave tracing proxies in the user's model. torch.fx
    itself parks tensor constants on the root module (``_tensor_constant0``): those move to
    ``constants``, out of the user's model."""
    saved = [(name, m, dict(m.__dict__), {k: dict(v) for k, v in m.__dict__.items() if isinstance(v, dict)})
             for name, m in model.named_modules()]
    try:
        yield
    finally:
        for name, module, attributes, contents in saved:
            for key in [k for k in module.__dict__ if k not in attributes]:
                if module is model and _FX_CONSTANT.fullmatch(key):
                    constants[key] = module.__dict__[key]
                else:
                    changed.append((name, key))
                del module.__dict__[key]
            for key, value in attributes.items():
                if module.__dict__.get(key) is not value or (key in contents and not _same_items(value, contents[key])):
                    changed.append((name, key))
                module.__dict__[key] = value
                if key in contents:
                    value.clear()
                    value.update(contents[key])


def _same_items(now: dict[Any, Any], before: dict[Any, Any]) -> bool:
    return now.keys() == before.keys() and all(now[k] is before[k] for k in now)


class _Traced(NamedTuple):
    graph: fx.Graph
    module_calls: list[tuple[str, fx.Node]]
    opaque: dict[str, str]
    """Submodules kept whole (path -> why): each becomes a general VJP layer."""
    constants: dict[str, Any]
    """torch.fx's tensor constants of the graph."""
    optional: dict[str, Any]
    """forward's optional arguments fixed at their defaults (see :func:`_optional_arguments`)."""
    stateful: set[str]
    """Kept-whole submodules that fill a cache of their own as they run (see :class:`_KeptAsFound`)."""


def _trace(model: nn.Module, ruleset: rules.RuleSet, whole: dict[str, str] | None = None) -> _Traced:
    """The model's forward traced by torch.fx, named as the model names its modules.

    whole: submodules to keep whole from the start (path -> why), found by running the forward.
    """
    if not isinstance(model, nn.Module):
        raise TracingError(f"DeconvNet takes an nn.Module, got {type(model).__name__}")
    root = _PixelLogits(model) if _transformers_image_model(model) else model
    prefix = "model." if root is not model else ""
    opaque: dict[str, str] = {prefix + path: why for path, why in (whole or {}).items()}
    stateful: set[str] = set()
    optional = _optional_arguments(root)
    parameter = next(model.parameters(), None)
    while True:
        tracer = _Tracer(ruleset, opaque, parameter)
        changed: list[tuple[str, str]] = []
        constants: dict[str, Any] = {}
        try:
            with _left_as_found(root, changed, constants):
                graph = tracer.trace(root, concrete_args=optional)
        except Exception as error:  # torch.fx raises many types; all mean the same to the user
            failed = tracer.failed_in
            if failed and failed not in opaque:
                opaque[failed] = f"torch.fx cannot trace into it ({type(error).__name__}: {error})"  # keep it whole
                continue
            raise TracingError(
                f"torch.fx could not trace {type(model).__name__}.forward: "
                f"{type(error).__name__}: {error}. deconvnet reads the forward with torch.fx, "
                "which cannot follow control flow that depends on tensor values; move such logic "
                "into a submodule (it is then reversed as one general layer) or out of forward"
            ) from error
        if changed:
            paths = {path for path, _ in changed}
            if paths & {"", prefix[:-1]} or paths <= set(opaque):
                where = sorted({f"{path or type(root).__name__}.{key}" for path, key in changed})
                raise TracingError(
                    f"{type(model).__name__}.forward changes its modules' own state while it runs "
                    f"({', '.join(where[:3])}); a forward with side effects (a cache) in the model's own "
                    "forward cannot be mirrored; the model was left as it was"
                )
            for path in paths:  # run whole, their state put back after each call (see _KeptAsFound)
                opaque.setdefault(path, "it fills a cache of its own as it runs, so it is run with its state put "
                                        "back after each call and reversed whole")
                stateful.add(path)
            continue
        inner = _batch_moving_modules(graph)
        if inner and not set(inner) <= set(opaque):
            for path in inner:  # reversed whole, by their exact VJP: the batch is back at the end
                opaque.setdefault(path, "it moves the batch dimension inside, so it is reversed whole")
            continue
        traced = _Traced(graph, tracer.module_calls, opaque, constants, optional or {}, stateful)
        return _unwrapped(traced) if root is not model else traced


class _KeptAsFound(nn.Module):
    """A submodule that fills a cache of its own as it runs (timm's LeViT and EfficientFormer
    cache attention biases per device), run by deconvnet with its state put back after each
    call: the user's model is left as it was, caches included."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.described = type(module).__name__  # what the mirror's VJP layer prints

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with _left_as_found(self.module, [], {}):
            return self.module(*args, **kwargs)


class _PixelLogits(nn.Module):
    """A Hugging Face ``transformers`` image model called as deconvnet calls a model: pixel
    values in, the classifier's logits out (its forward also takes labels and output switches,
    and returns a ``ModelOutput``). Only traced through: the graph is then rewritten to name the
    user's model's own modules."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: Tensor) -> Tensor:
        output = self.model(pixel_values=pixel_values, return_dict=True)
        logits = getattr(output, "logits", None)
        if logits is None:
            raise TracingError(
                f"{type(self.model).__name__} returns no logits ({type(output).__name__}); deconvnet mirrors "
                "transformers image classifiers (AutoModelForImageClassification), from pixel_values to logits"
            )
        return logits


def _transformers_image_model(model: nn.Module) -> bool:
    """A Hugging Face ``transformers`` model whose input is ``pixel_values``."""
    return getattr(model, "main_input_name", None) == "pixel_values" and any(
        cls.__module__.split(".")[0] == "transformers" for cls in type(model).__mro__
    )


def _unwrapped(traced: _Traced) -> _Traced:
    """What was traced through :class:`_PixelLogits`, naming the model's modules and parameters
    as the model itself does (``resnet.encoder``, not ``model.resnet.encoder``)."""

    def inner(path: str) -> str:
        return path[len("model."):] if path.startswith("model.") else path

    for node in traced.graph.nodes:
        if node.op in ("call_module", "get_attr"):
            node.target = inner(str(node.target))
        stack = node.meta.get("nn_module_stack")
        if stack:
            node.meta["nn_module_stack"] = type(stack)(
                (inner(path), (inner(str(where)), owner)) for path, (where, owner) in stack.items() if path != "model"
            )
    return traced._replace(
        module_calls=[(inner(path), node) for path, node in traced.module_calls if path != "model"],
        opaque={inner(path): why for path, why in traced.opaque.items()},
        stateful={inner(path) for path in traced.stateful},
    )


def _optional_arguments(model: nn.Module) -> dict[str, Any] | None:
    """forward's parameters after the image that have defaults, fixed at them (timm's
    ``forward(x, attn_mask=None)``): the mirror explains the model as called with one image."""
    try:
        parameters = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return None
    optional = {
        p.name: p.default for p in parameters[1:]
        if p.default is not inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    return optional or None


def _fixed_placeholders(graph: fx.Graph, optional: dict[str, Any]) -> dict[fx.Node, Any]:
    """The placeholders torch.fx made for forward's optional arguments, with their defaults."""
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    names = list(optional)
    return {node: optional[name] for node, name in zip(placeholders[len(placeholders) - len(names):], names, strict=True)}


def _moves_batch(node: fx.Node) -> bool:
    """Whether a call visibly moves or merges the batch dimension (constant arguments only)."""
    if node.op not in ("call_function", "call_method"):
        return False
    target, args, kwargs = node.target, node.args[1:], node.kwargs
    name = target if isinstance(target, str) else getattr(target, "__name__", "")
    if name == "permute":
        dims = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args
        return bool(dims) and isinstance(dims[0], int) and dims[0] != 0
    if name in ("transpose", "swapaxes", "swapdims", "movedim"):
        return any(a == 0 for a in args[:2] if isinstance(a, int)) or any(kwargs.get(k) == 0 for k in ("dim0", "dim1"))
    if name == "unbind":
        return kwargs.get("dim", args[0] if args else 0) == 0
    if name == "flatten":
        return kwargs.get("start_dim", args[0] if args else 0) == 0
    return False


def _batch_moving_modules(graph: fx.Graph) -> list[str]:
    """The innermost submodules whose forward moves the batch dimension somewhere inside."""
    found: list[str] = []
    for node in graph.nodes:
        if _moves_batch(node):
            stack = node.meta.get("nn_module_stack") or {}
            if stack:
                path = list(stack.values())[-1][0]
                if path and path not in found:
                    found.append(path)
    return found


def _describe(node: fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    target = node.target
    return target if isinstance(target, str) else getattr(target, "__name__", str(target))


def _step_names(graph: fx.Graph) -> dict[fx.Node, str]:
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


def _normalise_in_place(graph: fx.Graph, model: nn.Module) -> dict[str, nn.Module]:
    """Make every call out of place (in our copy of the graph), so recorded activations stay as
    the layers produced them; returns out-of-place copies of in-place modules."""
    substitutes: dict[str, nn.Module] = {}
    for node in graph.nodes:
        if node.op in ("call_function", "call_method"):
            target, args, kwargs = rules.out_of_place_call(node.op, node.target, node.args, dict(node.kwargs))
            node.target, node.args, node.kwargs = target, args, kwargs
        elif node.op == "call_module":
            module = model.get_submodule(str(node.target))
            replacement = rules.out_of_place(module)
            if replacement is not module:
                substitutes[str(node.target)] = replacement
    return substitutes


# --- reading one node -----------------------------------------------------------------------


class _General(Exception):
    """This call is not reversed by hand: use the general VJP layer. The message says why."""


_COMPUTED = "takes arguments computed in the forward, where a hand-written mirror layer needs constants"


@dataclass
class _Built:
    mirror: MirrorLayer
    inputs: list[fx.Node]
    module: nn.Module | None = None
    rule: rules.Rule | None = None
    run: Run | None = None
    refs: list[fx.Node] = field(default_factory=list)
    reason: str = ""


class _Reader:
    """Turns signal nodes into mirror layers."""

    def __init__(
        self,
        model: nn.Module,
        ruleset: rules.RuleSet,
        signal: set[fx.Node],
        constants: dict[str, Any],
        substitutes: dict[str, nn.Module],
    ) -> None:
        self.model = model
        self.constants = constants
        self.substitutes = substitutes
        self.ruleset = ruleset
        self.signal = signal

    # helpers

    def attribute(self, node: fx.Node) -> Callable[[], Any]:
        """A parameter or buffer of the model (or a graph constant), fetched when the mirror
        runs (``.to()`` replaces buffers)."""
        target = str(node.target)
        return lambda: fetch_attribute(self.model, self.constants, target)

    def constant(self, value: Any) -> Callable[[], Any]:
        """A constant argument, or a parameter/buffer; anything computed in the forward -> general."""
        if isinstance(value, fx.Node):
            if value.op == "get_attr":
                return self.attribute(value)
            raise _General(_COMPUTED)
        if any(isinstance(a, fx.Node) for a in _flatten(value)):
            raise _General(_COMPUTED)
        return lambda: value

    def plain(self, *values: Any) -> None:
        """Require constants (no forward values) among ``values``."""
        for value in values:
            if any(isinstance(a, fx.Node) for a in _flatten(value)):
                raise _General(_COMPUTED)

    def first_only(self, node: fx.Node) -> list[fx.Node]:
        """The signal input of a call that takes it as first argument and nowhere else."""
        sources = [n for n in node.all_input_nodes if n in self.signal]
        uses = [a for a in _flatten((node.args, node.kwargs)) if isinstance(a, fx.Node) and a in self.signal]
        if len(sources) != 1 or not node.args or node.args[0] is not sources[0] or len(uses) != 1:
            raise _General(
                "combines signals in a way no hand-written mirror layer reverses (supported: add, "
                "sub, cat, mul, div, and layers that take the signal as their first argument)"
            )
        return sources

    def call(self, node: fx.Node, item: int | str | None = None) -> tuple[Call, list[fx.Node], list[fx.Node]]:
        """The node as a replayable :class:`Call`, its signal inputs and its references."""
        refs: list[fx.Node] = []

        def ref(value: Any) -> Any:
            if isinstance(value, fx.Node):
                if value not in refs:
                    refs.append(value)
                return _Ref(refs.index(value))
            if isinstance(value, (tuple, list)):
                return type(value)(ref(v) for v in value)
            if isinstance(value, dict):
                return {k: ref(v) for k, v in value.items()}
            if isinstance(value, slice):
                return slice(ref(value.start), ref(value.stop), ref(value.step))
            return value

        args = ref(tuple(node.args))
        kwargs = ref(dict(node.kwargs))
        inputs = [n for n in refs if n in self.signal]
        signals = tuple(refs.index(n) for n in inputs)
        kind = {"call_function": "function", "call_method": "method", "call_module": "module"}[node.op]
        target = node.target
        if node.op == "call_module":
            target = self.substitutes.get(str(target)) or self.model.get_submodule(str(target))
        return Call(kind, target, args, kwargs, signals, item), inputs, refs

    def general(self, node: fx.Node, item: int | str | None = None, producer: fx.Node | None = None) -> _Built:
        source = producer if producer is not None else node
        call, inputs, refs = self.call(source, item)
        module = self.model.get_submodule(str(source.target)) if source.op == "call_module" else None
        return _Built(mirror_layers.VJP(call, rules.rectifier_call), inputs, module=module, refs=refs)

    # modules

    def module(self, node: fx.Node, name: str) -> _Built:
        module = self.model.get_submodule(str(node.target))
        rule = self.ruleset.rule_for(module)
        if rule is None:
            raise _General
        if rule.unsupported is not None:
            reason = rule.unsupported(module)
            if reason:
                raise _General(reason)
        inputs = self.first_only(node)
        if node.kwargs or len(node.args) != 1:
            raise _General
        run: Run | None = None
        if rule.run is not rules.Rule.run:  # a rule that records more than the output
            run = _module_run(rule, module)
        return _Built(rule.mirror(module), inputs, module=module, rule=rule, run=run)

    def as_module(self, module: nn.Module, inputs: list[fx.Node]) -> _Built:
        """A functional call read as the module it equals (``F.max_pool2d`` as ``MaxPool2d``),
        run and reversed by that module's rule."""
        rule = cast(rules.Rule, self.ruleset.rule_for(module))
        return _Built(rule.mirror(module), inputs, module=module, rule=rule, run=_module_run(rule, module))

    # calls

    def function(self, node: fx.Node, name: str) -> _Built:
        try:
            kind = rules.CALLS.get(node.target)
        except TypeError:  # an unhashable target
            kind = None
        if kind is None:
            raise _General
        return getattr(self, f"_{kind}")(node, name)

    def _activation(self, node: fx.Node, name: str) -> _Built:
        inputs = self.first_only(node)
        rest, kwargs = node.args[1:], dict(node.kwargs)
        found = rules.activation_kind(node.target, node.args, kwargs)
        if found is None:  # pragma: no cover - every CALLS activation has a kind
            raise _General
        rectifier, relu = found
        if node.target in (torch.nn.functional.rrelu, torch.rrelu) and (
            kwargs.get("training") or (len(rest) > 2 and rest[2])
        ):
            raise TrainingModeError(f"{name} (rrelu) was traced with training=True; call model.eval() first")
        fetched = [self.constant(a) for a in rest]
        options = {k: self.constant(v) for k, v in kwargs.items() if k != "inplace"}
        what = _describe(node)
        if relu:
            return _Built(mirror_layers.ReLU(what), inputs)
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
        return _Built(mirror_layers.Activation(what, function, rectifier=rectifier, gradient=gradient,
                                               from_output=from_output), inputs)

    def _max_pool(self, node: fx.Node, name: str) -> _Built:
        inputs = self.first_only(node)
        self.plain(node.args[1:], node.kwargs)
        try:
            pool = _as_max_pool(_DIMS.get(node.target, 2), *node.args[1:], **node.kwargs)
        except (TypeError, ValueError) as error:
            raise _General from error
        return self.as_module(pool, inputs)

    def _avg_pool(self, node: fx.Node, name: str) -> _Built:
        inputs = self.first_only(node)
        self.plain(node.args[1:], node.kwargs)
        dims = _DIMS.get(node.target, 2)
        pool = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)[dims - 1](*node.args[1:], **node.kwargs)
        transpose = (mirror_layers.AvgPool1dTranspose, mirror_layers.AvgPool2dTranspose, mirror_layers.AvgPool3dTranspose)
        return _Built(transpose[dims - 1](pool), inputs)

    def _adaptive_avg_pool(self, node: fx.Node, name: str) -> _Built:
        inputs = self.first_only(node)
        self.plain(node.args[1:], node.kwargs)
        size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
        transpose = (mirror_layers.AdaptiveAvgPool1dTranspose, mirror_layers.AdaptiveAvgPool2dTranspose,
                     mirror_layers.AdaptiveAvgPool3dTranspose)
        return _Built(transpose[_DIMS.get(node.target, 2) - 1](size), inputs)

    def _adaptive_max_pool(self, node: fx.Node, name: str) -> _Built:
        inputs = self.first_only(node)
        self.plain(node.args[1:], node.kwargs)
        size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
        if node.kwargs.get("return_indices") or (len(node.args) > 2 and node.args[2]):
            raise _General
        pools = (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
        return self.as_module(pools[_DIMS.get(node.target, 2) - 1](size), inputs)

    def _reshape(self, node: fx.Node, name: str) -> _Built:
        return _Built(mirror_layers.Reshape(_describe(node)), self.first_only(node))

    def _identity(self, node: fx.Node, name: str) -> _Built:
        return _Built(mirror_layers.Identity(_describe(node)), self.first_only(node))

    def _dropout(self, node: fx.Node, name: str) -> _Built:
        inputs = self.first_only(node)
        if node.kwargs.get("training", len(node.args) > 2 and node.args[2]):
            raise TrainingModeError(
                f"{name} ({_describe(node)}) was traced with training=True; call model.eval() "
                "before DeconvNet(model)"
            )
        return _Built(mirror_layers.Identity(_describe(node)), inputs)

    def _add(self, node: fx.Node, name: str) -> _Built:
        if len(node.args) != 2 or any(isinstance(v, fx.Node) for v in node.kwargs.values()):
            raise _General
        sign = -1.0 if node.target in (operator.sub, torch.sub, "sub") else 1.0
        alpha = node.kwargs.get("alpha", 1)
        if set(node.kwargs) - {"alpha"} or not isinstance(alpha, (int, float)):
            raise _General
        second = sign * float(alpha)
        a, b = node.args
        if a is b:  # x + x
            return _Built(mirror_layers.Add((1.0 + second,)), [cast(fx.Node, a)])
        parts = [(v, w) for v, w in zip((a, b), (1.0, second), strict=True) if isinstance(v, fx.Node) and v in self.signal]
        if not parts:  # pragma: no cover - a signal node has a signal input
            raise _General
        return _Built(mirror_layers.Add(tuple(w for _, w in parts)), [v for v, _ in parts])

    def _negate(self, node: fx.Node, name: str) -> _Built:
        return _Built(mirror_layers.Add((-1.0,)), self.first_only(node))

    def _cat(self, node: fx.Node, name: str) -> _Built:
        tensors = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if not isinstance(tensors, (list, tuple)) or not all(isinstance(t, fx.Node) for t in tensors):
            raise _General
        if not isinstance(dim, int) or dim == 0:
            raise _General(f"concatenates along dim={dim}; a mirror needs a constant dim other than the batch dimension")
        nodes = cast(list[fx.Node], list(tensors))
        unique = list(dict.fromkeys(n for n in nodes if n in self.signal))
        if len(unique) != len([n for n in nodes if n in self.signal]):
            raise _General  # one tensor concatenated twice: its parts would add up
        parts = tuple(nodes.index(n) for n in unique)
        return _Built(mirror_layers.Concat(dim, parts), unique, refs=nodes)

    def _product(self, node: fx.Node, name: str) -> _Built:
        if len(node.args) != 2 or set(node.kwargs) - {"rounding_mode"} or node.kwargs.get("rounding_mode") is not None:
            raise _General
        call, inputs, refs = self.call(node)
        divide = node.target in (operator.truediv, torch.div, torch.true_divide, "div", "true_divide")
        return _Built(mirror_layers.Product(call, divide), inputs, refs=refs)

    def _pad(self, node: fx.Node, name: str) -> _Built:
        inputs = self.first_only(node)
        self.plain(node.args[1:], node.kwargs)
        pad = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
        mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
        if mode != "constant" or not isinstance(pad, (list, tuple)):
            raise _General
        return _Built(mirror_layers.Crop(cast(list[int], pad)), inputs)

    def _index(self, node: fx.Node, name: str) -> _Built:
        inputs = self.first_only(node)
        call, _, refs = self.call(node)
        index = node.args[1]
        items = index if isinstance(index, tuple) else (index,)
        allowed = all(
            i is None or i is Ellipsis or isinstance(i, (int, slice)) or (isinstance(i, fx.Node) and i not in self.signal)
            for i in items
        )
        if not allowed or not items or not (items[0] is Ellipsis or items[0] == slice(None)):
            raise _General("indexes with tensors or across the batch dimension")

        def take(tensor: Tensor, shift: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
            filled = args[1] if isinstance(args[1], tuple) else (args[1],)
            if any(isinstance(i, Tensor) for i in filled):
                raise ValueError(f"{name} indexes with a tensor computed in the forward")
            if filled[0] is Ellipsis:
                return tensor[filled]
            return tensor[(slice(None),) * (1 + shift) + tuple(filled[1:])]

        return _Built(mirror_layers.Scatter(f"[{_format_index(items)}]", take, call), inputs, refs=refs)

    def _narrow(self, node: fx.Node, name: str) -> _Built:
        inputs = self.first_only(node)
        call, _, refs = self.call(node)
        if (node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")) == 0:
            raise _General("narrows the batch dimension")

        def take(tensor: Tensor, shift: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
            dim, start, length = (*args[1:], *kwargs.values())[:3]
            d = int(dim) % (tensor.dim() - shift)
            return tensor.narrow(d + shift, int(start), int(length))

        return _Built(mirror_layers.Scatter(f"narrow{_format_args(node.args[1:], node.kwargs)}", take, call), inputs,
                      refs=refs)

    def _permute(self, node: fx.Node, name: str) -> _Built:
        inputs = self.first_only(node)
        self.plain(node.args[1:], node.kwargs)
        call, _, _ = self.call(node)

        def order(ndim: int) -> list[int]:
            # The forward op on a meta tensor whose sizes name the dims shows where each goes.
            probe = torch.empty(tuple(range(2, ndim + 2)), device="meta")
            return [s - 2 for s in call(probe, *call.args[1:], **call.kwargs).shape]

        return _Built(mirror_layers.Permute(_describe(node) + _format_args(node.args[1:], node.kwargs), order), inputs)

    def _reduce(self, node: fx.Node, name: str) -> _Built:
        inputs = self.first_only(node)
        self.plain(node.args[1:], node.kwargs)
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        if dim is None or dim == () or dim == []:
            raise _General  # over every dim, the batch included
        dims = list(dim) if isinstance(dim, (list, tuple)) else [dim]
        mean = node.target in (torch.mean, "mean")

        def reduced(ndim: int) -> list[int]:
            return [d % ndim for d in cast(list[int], dims)]

        what = f"{'mean' if mean else 'sum'}(dim={tuple(dims)}{', keepdim' if keepdim else ''})"
        return _Built(mirror_layers.Broadcast(what, reduced, bool(keepdim), mean), inputs)

    def _conv(self, node: fx.Node, name: str) -> _Built:
        inputs = self.first_only(node)
        names = ("weight", "bias", "stride", "padding", "dilation", "groups")
        given = _named(node, names)
        weight = given.get("weight")
        if not isinstance(weight, fx.Node) or weight.op != "get_attr":
            raise _General  # a weight computed in the forward
        self.plain(*(given.get(k) for k in names[2:]))
        parameter = self.attribute(weight)()
        if not isinstance(parameter, Tensor) or parameter.dim() not in (3, 4, 5):
            raise _General
        dims = parameter.dim() - 2
        stride = ntuple(given.get("stride", 1), dims)
        dilation = ntuple(given.get("dilation", 1), dims)
        padding = mirror_layers.conv_padding(given.get("padding", 0), parameter.shape[2:], dilation)
        groups = int(given.get("groups", 1))
        if isinstance(parameter, nn.Parameter):
            transpose = (mirror_layers.ConvTranspose1d, mirror_layers.ConvTranspose2d, mirror_layers.ConvTranspose3d)
            return _Built(transpose[dims - 1](parameter, stride, padding, dilation, groups), inputs)
        if dims != 2:
            raise _General  # a buffer kernel (a blur) outside 2-D: its exact vector-Jacobian product
        fetched = mirror_layers.FetchedConvTranspose2d(self.attribute(weight), stride, padding, dilation, groups)
        return _Built(fetched, inputs)

    def _linear(self, node: fx.Node, name: str) -> _Built:
        inputs = self.first_only(node)
        weight = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
        if not isinstance(weight, fx.Node) or weight.op != "get_attr":
            raise _General
        return _Built(mirror_layers.LinearTranspose(self.attribute(weight)()), inputs)

    def _batch_norm(self, node: fx.Node, name: str) -> _Built:
        inputs = self.first_only(node)
        given = _named(node, ("running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"))
        if given.get("training", False):
            raise TrainingModeError(
                f"{name} (batch_norm) was traced with training=True; call model.eval() before DeconvNet(model)"
            )
        if given.get("running_var") is None:
            raise _General
        var, weight = self.constant(given["running_var"]), self.constant(given.get("weight"))
        eps = float(cast(float, given.get("eps", 1e-5)))
        return _Built(mirror_layers.ChannelScale(f"batch_norm, eps={eps}", lambda: (var(), weight(), eps)), inputs)

    def _layer_norm(self, node: fx.Node, name: str) -> _Built:
        inputs = self.first_only(node)
        call, _, refs = self.call(node)

        def statistics(record: mirror_layers.Record) -> tuple[int | None, int, Tensor | None, float]:
            given = call.named(record, ("normalized_shape", "weight", "bias", "eps"))
            shape = given["normalized_shape"]
            dims = len(shape) if isinstance(shape, (list, tuple, torch.Size)) else 1
            return None, dims, given.get("weight"), float(given.get("eps", 1e-5))

        return _Built(mirror_layers.Normalization("layer_norm", statistics, call), inputs, refs=refs)

    def _group_norm(self, node: fx.Node, name: str) -> _Built:
        inputs = self.first_only(node)
        call, _, refs = self.call(node)

        def statistics(record: mirror_layers.Record) -> tuple[int | None, int, Tensor | None, float]:
            given = call.named(record, ("num_groups", "weight", "bias", "eps"))
            return int(given["num_groups"]), 0, given.get("weight"), float(given.get("eps", 1e-5))

        return _Built(mirror_layers.Normalization("group_norm", statistics, call), inputs, refs=refs)

    def _split(self, node: fx.Node, name: str) -> _Built:
        # Pieces taken by index are handled as items of a tuple (split_piece); a split used
        # whole (passed on as a list) is left to the general layer.
        raise _General("its pieces are not taken by constant indices")

    def split_piece(self, producer: fx.Node, index: int) -> _Built:
        """``chunk``/``split``/``tensor_split``/``unbind`` piece ``index``: scattered back."""
        inputs = self.first_only(producer)
        call, _, refs = self.call(producer)
        target = producer.target
        unbind = target in (torch.unbind, "unbind")
        function = getattr(torch, target) if isinstance(target, str) else target
        dim_position = 1 if unbind else 2  # in the call's arguments, the tensor first

        def take(tensor: Tensor, shift: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
            rest, options = list(args[1:]), dict(kwargs)
            dim = options.pop("dim", rest.pop(dim_position - 1) if len(rest) >= dim_position else 0)
            d = int(dim) % (tensor.dim() - shift)
            if d == 0:
                raise ValueError(f"{_describe(producer)} splits the batch dimension")
            return function(tensor, *rest, dim=d + shift, **options)[index]

        what = f"{_describe(producer)}{_format_args(producer.args[1:], producer.kwargs)}[{index}]"
        return _Built(mirror_layers.Scatter(what, take, call), inputs, refs=refs)


def _named(node: fx.Node, names: tuple[str, ...]) -> dict[str, Any]:
    """A call's arguments after the input, by parameter name (``names`` in order)."""
    return dict(zip(names, node.args[1:], strict=False)) | dict(node.kwargs)


def _module_run(rule: rules.Rule, module: nn.Module) -> Run:
    def run(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Tensor, Tensor | None]:
        return rule.run(module, args[0])

    return run


# The functional pools and convs by their number of spatial dims (the 2-D ones are the default).
_DIMS: dict[Any, int] = {
    F.max_pool1d: 1, torch.max_pool1d: 1, F.max_pool3d: 3, torch.max_pool3d: 3,
    F.avg_pool1d: 1, torch.avg_pool1d: 1, F.avg_pool3d: 3, torch._C._nn.avg_pool3d: 3,
    F.adaptive_avg_pool1d: 1, F.adaptive_avg_pool3d: 3, F.adaptive_max_pool1d: 1, F.adaptive_max_pool3d: 3,
}


def _as_max_pool(dims: int, *args: Any, **kwargs: Any) -> nn.Module:
    if kwargs.pop("return_indices", False) or len(args) > 5 and args[5]:
        raise ValueError("return_indices=True is not supported: the call must return one tensor")
    args = args[:5]
    if len(args) > 1 and args[1] in ([], ()):
        args = (args[0], None, *args[2:])  # torch.max_pool2d spells the default stride []
    if kwargs.get("stride") in ([], ()):
        kwargs["stride"] = None
    return (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)[dims - 1](*args, **kwargs)


def _flatten(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return [v for item in value for v in _flatten(item)]
    if isinstance(value, dict):
        return [v for item in value.values() for v in _flatten(item)]
    if isinstance(value, slice):
        return [value.start, value.stop, value.step]
    return [value]


def _format_index(items: tuple[Any, ...]) -> str:
    def one(item: Any) -> str:
        if item is Ellipsis:
            return "..."
        if isinstance(item, slice):
            text = f"{'' if item.start is None else item.start}:{'' if item.stop is None else item.stop}"
            return text + (f":{item.step}" if item.step is not None else "")
        return repr(item)

    return ", ".join(one(i) for i in items)


def _format_args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
    return f"({', '.join(parts)})"


_SPLITS = {t for t, kind in rules.CALLS.items() if kind == "split"}


def _is_split(node: fx.Node) -> bool:
    try:
        return node.op in ("call_function", "call_method") and node.target in _SPLITS
    except TypeError:
        return False


def _picks_items(node: fx.Node) -> bool:
    """Whether every use of ``node`` takes one item of it by a constant index or attribute name
    (a tuple output, a Hugging Face ``ModelOutput``)."""
    return bool(node.users) and all(_is_item(user, node) for user in node.users)


def _is_item(node: fx.Node, of: fx.Node) -> bool:
    """Whether ``node`` is ``of[i]`` or ``of.name`` for a constant ``i`` or ``name``."""
    if node.op != "call_function" or len(node.args) != 2 or node.args[0] is not of:
        return False
    if node.target is operator.getitem:
        return isinstance(node.args[1], int)
    return node.target is getattr and isinstance(node.args[1], str) and node.args[1] not in rules.META_ATTRIBUTES


# --- building ---------------------------------------------------------------------------------


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
    model: nn.Module, ruleset: rules.RuleSet | None = None, *, strict: bool = False, found: Found | None = None
) -> Network:
    """Read ``model``'s forward and build its mirror. Raises a DeconvnetError if it cannot.

    strict: refuse (``UnsupportedLayerError``) any layer the mirror would reverse with the
    general VJP layer instead of by hand.
    found: what an earlier run of the forward showed (see :meth:`Network.refine`).

    With the default rules (and :func:`~deconvnet.rules.register_rule`'s additions) the network
    is built once per model and returned again while the model's :func:`structure` is the same;
    it shares the model's parameters, so updated weights need no rebuild.
    """
    if ruleset is None and found is None and isinstance(model, nn.Module):
        key = (structure(model), strict, tuple((t, id(r)) for t, r in rules.DEFAULT_RULES.rules.items()))
        built = _BUILT.get(model)
        if built is None or built[0] != key:
            built = (key, _build(model, rules.DEFAULT_RULES, strict, Found()))
            _BUILT[model] = built
        return built[1]
    return _build(model, ruleset or rules.DEFAULT_RULES, strict, found or Found())


def _build(model: nn.Module, ruleset: rules.RuleSet, strict: bool, found: Found) -> Network:
    graph, module_calls, opaque, constants, optional, stateful = _trace(model, ruleset, found.whole)
    substitutes = _normalise_in_place(graph, model) | {path: _KeptAsFound(model.get_submodule(path)) for path in stateful}
    module_names = _step_names(graph)

    fixed = _fixed_placeholders(graph, optional)
    placeholders = [n for n in graph.nodes if n.op == "placeholder" and n.users and n not in fixed]
    if len(placeholders) != 1:
        raise BranchingModelError(
            f"{type(model).__name__}.forward uses {len(placeholders)} inputs "
            f"({', '.join(n.name for n in placeholders)}); deconvnet needs a single image input"
        )
    signal: set[fx.Node] = {placeholders[0]}
    live = _ancestors(graph)
    reader = _Reader(model, ruleset, signal, constants, substitutes)
    steps: dict[fx.Node, Step] = {}
    names: dict[fx.Node, str] = {placeholders[0]: mirror_layers.INPUT}
    producers: set[fx.Node] = set()  # signal nodes whose output is a tuple (chunk, a module's)
    layers_mirrored: list[MirrorLayer] = []
    nodes: list[fx.Node] = []
    output: fx.Node | None = None
    # Names a functional call must not take: every called module's layer names and its
    # qualified name (a module called twice is "relu:0", "relu:1", and "relu" must stay its).
    taken = set(module_names.values()) | {str(n.target) for n in module_names}

    for node in graph.nodes:
        if node.op == "output":
            result = node.args[0]
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
        if _item_key(node) in found.constants:
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
        built = _read(reader, node, name, producers)
        if built is not None and isinstance(built.mirror, mirror_layers.VJP) and node not in live:
            continue  # an unused general result (``out, _ = attention(...)``): nothing to reverse
        if built is None:  # a tuple: its items are the layers
            producers.add(node)
            signal.add(node)
            continue
        if node.op == "call_module" and str(node.target) in opaque:
            built.reason = opaque[str(node.target)]
        if isinstance(built.mirror, mirror_layers.VJP) and strict:
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
    )


def _is_module_item(node: fx.Node, producers: set[fx.Node]) -> bool:
    """Whether ``node`` takes an item of a module's tuple output (or an attribute of its
    ``ModelOutput``)."""
    return _item_key(node) is not None and node.args[0] in producers


def _ancestors(graph: fx.Graph) -> set[fx.Node]:
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


def _read(reader: _Reader, node: fx.Node, name: str, producers: set[fx.Node]) -> _Built | None:
    """The mirror of one signal node; None when the node's output is a tuple whose items are
    the layers."""
    if node.args and node.args[0] in producers and _is_item(node, cast(fx.Node, node.args[0])):
        producer = cast(fx.Node, node.args[0])
        index = cast(Any, node.args[1])
        if _is_split(producer):
            try:
                return reader.split_piece(producer, index)
            except _General as why:
                built = reader.general(node, item=index, producer=producer)
                built.reason = str(why)
                return built
        return reader.general(node, item=index, producer=producer)
    if _is_split(node) and _picks_items(node):
        return None
    try:
        if node.op == "call_module":
            return reader.module(node, name)
        return reader.function(node, name)
    except _General as why:
        if _picks_items(node):
            return None
        built = reader.general(node)
        built.reason = str(why)
        return built


def call_site(node: fx.Node) -> str:
    """Where a call sits: `` in 1.1 (Block)``, the innermost module whose forward makes it."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path, (_, owner) = list(stack.items())[-1]
    return f" in {path} ({getattr(owner, '__name__', owner)})"


def _strict_error(
    node: fx.Node, name: str, model: nn.Module, ruleset: rules.RuleSet, reason: str
) -> UnsupportedLayerError:
    if reason:
        what = (type(model.get_submodule(str(node.target))).__name__ if node.op == "call_module"
                else f"{_describe(node)}{call_site(node)}")
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
        f"{name} (the call {_describe(node)}{call_site(node)}) has no deconvnet rule in this form; supported calls: "
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
