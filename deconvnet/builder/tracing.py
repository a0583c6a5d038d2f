"""Tracing: the model's forward read by torch.fx, as the model names its modules.

Layers with a rule (and timm's own leaves) stay whole; a submodule torch.fx cannot trace, one
that fills a cache of its own, or one that moves the batch dimension inside, is kept whole and
later reversed by its exact vector-Jacobian product. Branches on the input's dtype or device are
decided; what the forward does to its modules' attributes while traced is undone.
"""

from __future__ import annotations

import contextlib
import inspect
import operator
import re
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, cast

import torch
from torch import Tensor, fx, nn

from .. import rules
from ..errors import InputError, TracingError
from . import sources

__all__ = ["Traced", "trace", "KeptAsFound", "fixed_placeholders", "left_as_found", "normalise_in_place"]


class _Tracer(fx.Tracer):
    """Keeps layers with a rule (and timm's and the opaque ones) whole; records every module
    call's output and which module was being traced when tracing failed.

    example: trace by running: every node is also computed on this input as it is recorded, so
    a branch, ``len`` or loop over a traced value takes the way the real forward takes for it
    (see :class:`Decision`); without it, tracing is symbolic.
    """

    def __init__(self, ruleset: rules.RuleSet, opaque: dict[str, str], parameter: Tensor | None = None,
                 example: Tensor | None = None) -> None:
        leaves, functions = sources.timm_registrations()
        super().__init__(autowrap_functions=tuple(functions))
        self.ruleset = ruleset
        self.opaque = opaque
        self.parameter = parameter
        self.timm_leaves = tuple(leaves)
        self.module_calls: list[tuple[str, fx.Node]] = []
        self.failed_in: str | None = None
        self.example = example
        self.values: dict[fx.Node, Any] = {}
        self.decisions: list[Decision] = []
        self._running = 0  # > 0 while a node is computed on the example's values

    def create_node(self, kind: str, target: Any, args: Any, kwargs: Any, name: str | None = None,
                    type_expr: Any = None) -> fx.Node:
        node = super().create_node(kind, target, args, kwargs, name, type_expr)
        if self.example is not None and kind != "output":
            self.values[node] = self._computed(node)
        return node

    def _computed(self, node: fx.Node) -> Any:
        """``node`` on the example's values: what the real forward computes there."""
        if node.op == "placeholder":
            first = not any(n.op == "placeholder" for n in self.values)
            return self.example if first else (node.args[0] if node.args else None)
        args, kwargs = fx.node.map_arg((node.args, node.kwargs), self.values.__getitem__)
        self._running += 1
        try:
            return self._run(node, args, kwargs)
        except Exception as error:
            raise _FailsOnInput(node, error) from error
        finally:
            self._running -= 1

    def _run(self, node: fx.Node, args: Any, kwargs: Any) -> Any:
        if node.op == "get_attr":
            value: Any = self.root
            for part in str(node.target).split("."):
                value = getattr(value, part)
            return value
        if node.op == "call_function":
            return node.target(*args, **kwargs)  # type: ignore[operator]
        if node.op == "call_method":
            return getattr(args[0], str(node.target))(*args[1:], **kwargs)
        return self.root.get_submodule(str(node.target))(*args, **kwargs)

    def value(self, proxy: fx.Proxy, kind: str) -> Any:
        """What ``proxy`` holds for the example, recorded as a decision the graph now depends on."""
        node = proxy.node
        self.decisions.append(Decision(node, kind, _shape_only(node)))
        return self.values[node]

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        if self._running:
            return attr_val  # a module run on the example's values reads its real parameters
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def iter(self, obj: fx.Proxy) -> Iterator[Any]:
        if self.example is None:
            return super().iter(obj)
        return iter([obj[i] for i in range(len(self.value(obj, "length")))])

    def keys(self, obj: fx.Proxy) -> Any:
        if self.example is None:
            return super().keys(obj)
        return self.value(obj, "keys").keys()

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
        device. Any other branch on a traced value is taken as the example takes it; without an
        example it cannot be followed."""
        if self.example is not None:
            return bool(self.value(obj, "branch"))
        if self.parameter is not None:
            try:
                return bool(_metadata_value(obj.node, self.root, self.parameter))
            except _NotMetadata:
                pass
        return super().to_bool(obj)

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        if self._running:
            return forward(*args, **kwargs)  # inside a module run on the example's values
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


class _FailsOnInput(Exception):
    """The forward itself failed on the example while it was read by running it."""

    def __init__(self, node: fx.Node, error: Exception) -> None:
        super().__init__(str(error))
        self.node, self.error = node, error


class Decision(NamedTuple):
    """A value of the forward that tracing by running read and so fixed in the graph: a branch
    taken, a length, a number turned into a Python int. ``shape_only``: computed from the
    input's shape alone (smp's size checks), so the graph holds for every input of that shape;
    otherwise it holds for that input's values."""

    node: fx.Node
    kind: str
    shape_only: bool


_SHAPE_READS = {"shape", "ndim", "dtype", "device", "is_cuda"}
_SHAPE_CALLS = {"size", "dim", "numel", "nelement", "get_device"}


def _shape_only(node: fx.Node) -> bool:
    """Whether ``node`` reaches the input only through its shape (or dtype, device)."""
    seen: set[fx.Node] = set()
    stack = [node]
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        if current.op == "call_function" and current.target is getattr and current.args[1] in _SHAPE_READS:
            continue
        if current.op == "call_method" and current.target in _SHAPE_CALLS:
            continue
        if current.op == "call_function" and current.target is len:
            continue
        if current.op == "placeholder":
            return False
        stack.extend(current.all_input_nodes)
    return True


@contextlib.contextmanager
def _following(tracer: _Tracer) -> Iterator[None]:
    """While ``tracer`` traces: ``torch.jit.isinstance`` sees a traced value as what it stands
    for (MONAI's ``UpCat`` asks it of its skip connection: a bare proxy would drop the skip);
    with an example, ``len``, ``int`` and ``index`` of a traced value read the example's. Put
    back as found."""
    original_isinstance = torch.jit.isinstance
    saved = {name: fx.Proxy.__dict__.get(name) for name in ("__len__", "__index__", "__int__", "__float__")}

    def jit_isinstance(obj: Any, target_type: Any) -> bool:
        if isinstance(obj, fx.Proxy):
            if tracer.example is not None:
                obj = tracer.values.get(obj.node)
            else:
                obj = torch.empty(0)  # a traced value stands for a tensor
        return original_isinstance(obj, target_type)

    torch.jit.isinstance = jit_isinstance
    if tracer.example is not None:
        fx.Proxy.__len__ = lambda self: len(tracer.value(self, "length"))  # type: ignore[method-assign]
        fx.Proxy.__index__ = lambda self: operator.index(tracer.value(self, "number"))  # type: ignore[attr-defined]
        fx.Proxy.__int__ = lambda self: int(tracer.value(self, "number"))  # type: ignore[attr-defined]
        fx.Proxy.__float__ = lambda self: float(tracer.value(self, "number"))  # type: ignore[attr-defined]
    try:
        yield
    finally:
        torch.jit.isinstance = original_isinstance
        for name, method in saved.items():
            if method is None:
                if name in fx.Proxy.__dict__:
                    delattr(fx.Proxy, name)
            else:
                setattr(fx.Proxy, name, method)


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
def left_as_found(model: nn.Module, changed: list[tuple[str, str]], constants: dict[str, Any]) -> Iterator[None]:
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


class Traced(NamedTuple):
    graph: fx.Graph
    module_calls: list[tuple[str, fx.Node]]
    opaque: dict[str, str]
    """Submodules kept whole (path -> why): each becomes a general VJP layer."""
    constants: dict[str, Any]
    """torch.fx's tensor constants of the graph."""
    optional: dict[str, Any]
    """forward's optional arguments fixed at their defaults (see :func:`_optional_arguments`)."""
    stateful: set[str]
    """Kept-whole submodules that fill a cache of their own as they run (see :class:`KeptAsFound`)."""
    decisions: list[Decision]
    """What tracing by running fixed in the graph (empty for a symbolic trace)."""


_FIRST_CALL_SETUP = {"_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
                     "_forward_pre_hooks_with_kwargs", "_output_capturing_hooks_installed"}
"""What a forward may set up on its modules on its first call (transformers installs the hooks
that capture its hidden states), which the model's own first call leaves in place."""


class NeedsInput(TracingError):
    """The forward takes a branch (or a length, a loop) on a traced value: it can only be read
    by running it on an input (see :func:`trace`'s ``example``)."""


def trace(model: nn.Module, ruleset: rules.RuleSet, whole: dict[str, str] | None = None,
          example: Tensor | None = None, output: str | int | None = None) -> Traced:
    """The model's forward traced by torch.fx, named as the model names its modules.

    whole: submodules to keep whole from the start (path -> why), found by running the forward.
    example: trace by running the forward on this input (Tensor[N, C, ...]): every branch, length
        and loop over a traced value is taken as the real forward takes it for this input. Without
        it, a forward that branches on a traced value raises :class:`NeedsInput`.
    output: for a Hugging Face model, the attribute of its ``ModelOutput`` to explain.
    """
    if not isinstance(model, nn.Module):
        raise TracingError(f"DeconvNet takes an nn.Module, got {type(model).__name__}")
    root = (sources.PixelLogits(model, "logits" if output is None else str(output))
            if sources.transformers_image_model(model) else model)
    prefix = "model." if root is not model else ""
    opaque: dict[str, str] = {prefix + path: why for path, why in (whole or {}).items()}
    stateful: set[str] = set()
    optional = _optional_arguments(root)
    parameter = next(model.parameters(), None)
    first_called = False
    while True:
        tracer = _Tracer(ruleset, opaque, parameter, example)
        changed: list[tuple[str, str]] = []
        constants: dict[str, Any] = {}
        try:
            with left_as_found(root, changed, constants), _following(tracer), torch.no_grad():
                graph = tracer.trace(root, concrete_args=optional)
        except Exception as error:  # torch.fx raises many types; all mean the same to the user
            if example is not None and (isinstance(error, _FailsOnInput) or tracer.failed_in is None) and not isinstance(
                    error, (fx.proxy.TraceError, TracingError)):
                cause = error.error if isinstance(error, _FailsOnInput) else error
                where = f" at {error.node.target if error.node.op == 'call_module' else error.node.name}" if isinstance(
                    error, _FailsOnInput) else ""
                raise InputError(
                    f"{type(model).__name__}.forward fails on this input (x of shape {tuple(example.shape)}){where}: "
                    f"{type(cause).__name__}: {cause}"
                ) from cause
            if example is None and _branches(error) and (tracer.failed_in is None or tracer.failed_in in opaque):
                # in the model's own forward (a branch inside a submodule keeps that submodule whole)
                raise NeedsInput(
                    f"{type(model).__name__}.forward decides on a traced value "
                    f"({type(error).__name__}: {error}); it is read by running it on an input"
                ) from error
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
        if changed and all(key in _FIRST_CALL_SETUP for _, key in changed):
            # The forward sets up hooks on its own first call (transformers' output capturing):
            # the model's own first call, made once on the example, leaves it as every later call finds it.
            if example is None:
                raise NeedsInput(f"{type(model).__name__}.forward sets up hooks on its first call")
            if not first_called:
                first_called = True
                with torch.no_grad():
                    root(example)
                continue
        if changed:
            paths = {path for path, _ in changed}
            if paths & {"", prefix[:-1]} or paths <= set(opaque):
                where = sorted({f"{path or type(root).__name__}.{key}" for path, key in changed})
                raise TracingError(
                    f"{type(model).__name__}.forward changes its modules' own state while it runs "
                    f"({', '.join(where[:3])}); a forward with side effects (a cache) in the model's own "
                    "forward cannot be mirrored; the model was left as it was"
                )
            for path in paths:  # run whole, their state put back after each call (see KeptAsFound)
                opaque.setdefault(path, "it fills a cache of its own as it runs, so it is run with its state put "
                                        "back after each call and reversed whole")
                stateful.add(path)
            continue
        inner = _batch_moving_modules(graph)
        if inner and not set(inner) <= set(opaque):
            for path in inner:  # reversed whole, by their exact VJP: the batch is back at the end
                opaque.setdefault(path, "it moves the batch dimension inside, so it is reversed whole")
            continue
        traced = Traced(graph, tracer.module_calls, opaque, constants, optional or {}, stateful, tracer.decisions)
        return _unwrapped(traced) if root is not model else traced


def _branches(error: Exception) -> bool:
    """Whether torch.fx stopped at a branch, length, loop or number of a traced value."""
    message = str(error)
    return isinstance(error, (fx.proxy.TraceError, RuntimeError, TypeError)) and any(
        words in message for words in (
            "symbolically traced variables cannot be used as inputs to control flow",
            "Proxy object cannot be iterated", "'len' is not supported in symbolic tracing",
            "'Proxy' object cannot be interpreted as an integer", "int() argument must be",
        )
    )


class KeptAsFound(nn.Module):
    """A submodule that fills a cache of its own as it runs (timm's LeViT and EfficientFormer
    cache attention biases per device), run by deconvnet with its state put back after each
    call: the user's model is left as it was, caches included."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.described = type(module).__name__  # what the mirror's VJP layer prints

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with left_as_found(self.module, [], {}):
            return self.module(*args, **kwargs)


def _unwrapped(traced: Traced) -> Traced:
    """What was traced through :class:`~deconvnet.builder.sources.PixelLogits`, naming the
    model's modules and parameters as the model itself does."""
    sources.unwrap_graph(traced.graph)
    return traced._replace(
        module_calls=[(sources.inner(path), node) for path, node in traced.module_calls if path != "model"],
        opaque={sources.inner(path): why for path, why in traced.opaque.items()},
        stateful={sources.inner(path) for path in traced.stateful},
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


def fixed_placeholders(graph: fx.Graph, optional: dict[str, Any]) -> dict[fx.Node, Any]:
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


def normalise_in_place(graph: fx.Graph, model: nn.Module) -> dict[str, nn.Module]:
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
