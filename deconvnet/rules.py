"""The registry of layer rules: how each forward layer type is run and reversed.

The builder looks every module of the traced forward up in a :class:`RuleSet` (the defaults
here, with a ``DeconvNet``'s own ``layer_rules`` on top) and every functional call up in
:data:`CALLS`, the one table of the calls that are reversed by hand. A rule says which mirror
layer reverses the forward layer, how the layer runs while a batch is traced (a max-pool must
also return its switches), and which configurations of it cannot be reversed exactly. Anything
else on the signal path is reversed by the general :class:`~deconvnet.mirror.VJP` layer (or
refused with ``strict=True``).

Adding a layer type is one entry::

    DeconvNet(model, layer_rules={MyScale: lambda m: MyScaleTranspose(m)})
    deconvnet.register_rule(MyScale, mirror=lambda m: MyScaleTranspose(m))   # for every instance
"""

from __future__ import annotations

import copy
import functools
import inspect
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import mirror
from .errors import DeconvnetError

__all__ = [
    "Rule",
    "RuleSet",
    "DEFAULT_RULES",
    "register_rule",
    "rule_for",
    "supported_layers",
    "supported_calls",
    "CALLS",
    "rectifier_call",
    "out_of_place",
]


def _run_module(module: nn.Module, x: Tensor) -> tuple[Tensor, Tensor | None]:
    return module(x), None


@dataclass(frozen=True)
class Rule:
    """How deconvnet handles one forward layer type.

    mirror: builds the mirror layer that reverses a given forward layer.
    run: runs the forward layer on ``x`` while tracing; returns its output and, for max-pools,
        its switches. By default the module is called as it is (in-place flags off).
    unsupported: returns why this particular layer cannot be reversed exactly, or ``None``.
    eval_only: the layer behaves differently in training mode (dropout, batch-norm), so tracing
        a model with it in training mode is refused.
    """

    mirror: Callable[[Any], mirror.MirrorLayer]
    run: Callable[[Any, Tensor], tuple[Tensor, Tensor | None]] = _run_module
    unsupported: Callable[[Any], str | None] | None = None
    eval_only: bool = False


def _as_rule(value: Rule | Callable[[Any], mirror.MirrorLayer], layer_type: Any) -> Rule:
    if not (isinstance(layer_type, type) and issubclass(layer_type, nn.Module)):
        raise DeconvnetError(f"layer rules are keyed by nn.Module subclasses, got {layer_type!r}")
    if isinstance(value, Rule):
        return value
    if not callable(value):
        raise DeconvnetError(
            f"the rule for {layer_type.__name__} must be a Rule or a callable that builds its "
            f"mirror layer, got {type(value).__name__}"
        )
    return Rule(mirror=value)


class RuleSet:
    """Module type -> :class:`Rule`, layered: a set's own rules over its ``parent``'s.

    A ``DeconvNet``'s ``layer_rules`` are a RuleSet over :data:`DEFAULT_RULES`, so they reach
    that instance only.
    """

    def __init__(self, rules: Mapping[type[nn.Module], Rule] | None = None, parent: RuleSet | None = None) -> None:
        self.rules: dict[type[nn.Module], Rule] = dict(rules or {})
        self.parent = parent
        # Rules for layer types of other packages (timm, torchvision.ops), by the class's full
        # name: a model holding one has imported that package already, and importing it here
        # would cost every start of the command line a third of a second.
        self.named: dict[str, Rule] = {}

    def over(self, extra: Mapping[type[nn.Module], Rule | Callable[[Any], mirror.MirrorLayer]] | None) -> RuleSet:
        """A new set with ``extra`` on top of this one."""
        if extra is None:
            return self
        if not isinstance(extra, Mapping):
            raise DeconvnetError(f"layer_rules must be a dict of module type -> rule, got {type(extra).__name__}")
        return RuleSet({t: _as_rule(r, t) for t, r in extra.items()}, parent=self)

    def _all(self) -> dict[type[nn.Module], Rule]:
        merged = self.parent._all() if self.parent is not None else {}
        merged.update(self.rules)
        return merged

    def _all_named(self) -> dict[str, Rule]:
        merged = self.parent._all_named() if self.parent is not None else {}
        merged.update(self.named)
        return merged

    def rule_for(self, module: nn.Module) -> Rule | None:
        """The rule for ``module``'s type; a subclass inherits its base's rule only when it keeps
        the base's ``forward``."""
        table, named = self._all(), self._all_named()
        for base in type(module).__mro__:
            rule = table.get(base) or named.get(f"{base.__module__}.{base.__qualname__}")
            if rule is not None and (base is type(module) or type(module).forward is base.forward):
                return rule
        return None

    def names(self) -> list[str]:
        """Names of the layer types that have a rule, in registration order."""
        return [t.__name__ for t in self._all()] + [name.rpartition(".")[2] for name in self._all_named()]


DEFAULT_RULES = RuleSet()
"""The built-in rules; :func:`register_rule` adds to them for every ``DeconvNet`` made later."""


def register_rule(
    layer_type: type[nn.Module],
    mirror: Callable[[Any], mirror.MirrorLayer],
    *,
    run: Callable[[Any, Tensor], tuple[Tensor, Tensor | None]] | None = None,
    unsupported: Callable[[Any], str | None] | None = None,
    eval_only: bool = False,
) -> Rule:
    """Register (or replace) the default rule for ``layer_type``, for every ``DeconvNet`` made
    afterwards; returns it. For one instance only, pass ``DeconvNet(model, layer_rules=...)``.

    ``mirror(layer)`` must return a :class:`deconvnet.mirror.MirrorLayer` whose
    ``forward(signal, record[, context])`` maps ``Tensor[N, K, *output_shape]`` to
    ``Tensor[N, K, *input_shape]``. The layer is treated as a leaf: torch.fx does not trace into
    it. ``run=None`` calls the layer as it is.
    """
    if not (isinstance(layer_type, type) and issubclass(layer_type, nn.Module)):
        raise DeconvnetError(f"register_rule takes an nn.Module subclass, got {layer_type!r}")
    rule = Rule(mirror=mirror, run=run or _run_module, unsupported=unsupported, eval_only=eval_only)
    DEFAULT_RULES.rules[layer_type] = rule
    return rule


def rule_for(module: nn.Module) -> Rule | None:
    """The default rule for ``module``'s type (see :meth:`RuleSet.rule_for`)."""
    return DEFAULT_RULES.rule_for(module)


def supported_layers() -> list[str]:
    """Names of the layer types that have a default rule, in registration order."""
    return DEFAULT_RULES.names()


def out_of_place(module: nn.Module) -> nn.Module:
    """``module`` itself, or, when it works in place, a shallow copy that does not (sharing the
    Parameters; the user's module is left as it is)."""
    if getattr(module, "inplace", False) is True:
        module = copy.copy(module)
        module.inplace = False
    return module


# --- activations ------------------------------------------------------------------------------
# Module type -> (is a rectifier, is ReLU). A rectifier takes the method's rule; the others pass
# their gradient. Hardtanh is a rectifier only with a lower bound of 0 (ReLU6 is one).

ACTIVATION_MODULES: dict[type[nn.Module], tuple[bool, bool]] = {
    nn.ReLU: (True, True),
    nn.ReLU6: (True, False),
    nn.Hardtanh: (True, False),
    nn.LeakyReLU: (True, False),
    nn.PReLU: (True, False),
    nn.RReLU: (True, False),
    nn.ELU: (True, False),
    nn.CELU: (True, False),
    nn.SELU: (True, False),
    nn.GELU: (True, False),
    nn.SiLU: (True, False),
    nn.Mish: (True, False),
    nn.Hardswish: (True, False),
    nn.Softplus: (True, False),
    nn.Sigmoid: (False, False),
    nn.Tanh: (False, False),
    nn.Hardsigmoid: (False, False),
    nn.LogSigmoid: (False, False),
    nn.Softsign: (False, False),
    nn.Tanhshrink: (False, False),
}


def _hardtanh_rectifies(low: float) -> bool:
    return float(low) == 0.0


def _mirror_activation(module: nn.Module) -> mirror.MirrorLayer:
    rectifier, relu = ACTIVATION_MODULES[type(module)] if type(module) in ACTIVATION_MODULES else (False, False)
    if isinstance(module, nn.Hardtanh):
        rectifier = _hardtanh_rectifies(module.min_val)
    name = type(module).__name__
    if relu:
        return mirror.ReLU(name)
    return mirror.Activation(name, out_of_place(module), rectifier=rectifier, gradient=_module_gradient(module),
                             from_output=_module_reads_output(module))


# f'(x) * g by the backward kernel autograd itself runs (the same conventions at kinks), for the
# activations modern CNNs use: one pass over the signal, cheaper than forward-mode autograd
# through the function, which the others fall back to.
_aten = torch.ops.aten

Gradient = Callable[[Tensor, Tensor], Tensor]
"""``(g, x) -> f'(x) * g`` for ``g`` and ``x`` of one shape (these kernels must not broadcast:
``gelu_backward`` silently miscomputes an expanded ``x`` on CPU)."""


def _module_gradient(module: nn.Module) -> Gradient | None:
    """The module's f'(x) * g as that of the function it calls (see :func:`call_gradient`)."""
    if isinstance(module, nn.Hardtanh):  # ReLU6 too
        return call_gradient(F.hardtanh, (module.min_val, module.max_val), {})
    if isinstance(module, nn.GELU):
        return call_gradient(F.gelu, (), {"approximate": module.approximate})
    if isinstance(module, nn.LeakyReLU):
        return call_gradient(F.leaky_relu, (module.negative_slope,), {})
    if isinstance(module, nn.Softplus):
        return call_gradient(F.softplus, (module.beta, module.threshold), {})
    if isinstance(module, nn.PReLU):
        return functools.partial(prelu_gradient, weight=lambda: module.weight)
    function = {nn.Hardswish: F.hardswish, nn.SiLU: F.silu, nn.Hardsigmoid: F.hardsigmoid, nn.Sigmoid: torch.sigmoid,
                nn.Tanh: torch.tanh, nn.Mish: F.mish}.get(type(module))
    return call_gradient(function, (), {}) if function is not None else None


def gradient_reads_output(target: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> bool:
    """Whether :func:`call_gradient`'s kernel gives the same ``f'(x) * g`` when handed the output
    ``y = f(x)`` for ``x``: ReLU6 and Hardtanh (where x lies against the bounds, which y tells
    alike) and leaky ReLU with a slope >= 0 (the sign). Their mirror then reads y, so a trace may
    run f in place, as the model's forward may."""
    options = dict(kwargs)
    if target is F.relu6:
        return True
    if target in (F.hardtanh, F.hardtanh_):
        bounds = _hardtanh_bounds(args, options)
        return bounds is not None and bounds[0] < bounds[1]
    if target in (F.leaky_relu, F.leaky_relu_):
        slope = _leaky_slope(args, options)
        return slope is not None and slope >= 0
    return False


def _module_reads_output(module: nn.Module) -> bool:
    """:func:`gradient_reads_output` of the function the module calls."""
    if type(module) in (nn.Hardtanh, nn.ReLU6):
        return gradient_reads_output(F.hardtanh, (module.min_val, module.max_val), {})  # type: ignore[attr-defined]
    if type(module) is nn.LeakyReLU:
        return gradient_reads_output(F.leaky_relu, (module.negative_slope,), {})
    return False


def _hardtanh_bounds(args: tuple[Any, ...], options: Mapping[str, Any]) -> tuple[float, float] | None:
    """(min_val, max_val) of a hardtanh call's arguments after the input, if constant."""
    if not all(isinstance(a, (int, float)) for a in args[:2]):
        return None
    low = args[0] if args else options.get("min_val", -1.0)
    high = args[1] if len(args) > 1 else options.get("max_val", 1.0)
    return float(low), float(high)


def _leaky_slope(args: tuple[Any, ...], options: Mapping[str, Any]) -> float | None:
    """negative_slope of a leaky_relu call's arguments after the input, if constant."""
    if not all(isinstance(a, (int, float)) for a in args[:1]):
        return None
    return float(args[0] if args else options.get("negative_slope", 0.01))


def prelu_gradient(g: Tensor, x: Tensor, weight: Callable[[], Tensor]) -> Tensor:
    """PReLU's f'(x) * g as its backward computes it: the slope ``weight()`` (one per channel
    of dim 1, or one for all) where x <= 0, x = 0 included. Forward-mode autograd takes 1 at
    x = 0, which differs wherever a ReLU before the PReLU left zeros."""
    w = weight().detach().to(g.dtype)
    if w.numel() > 1:
        w = w.view(-1, *([1] * (x.dim() - 2)))
    return torch.where(x > 0, g, g * w)


def _sigmoid_gradient(g: Tensor, x: Tensor) -> Tensor:
    return _aten.sigmoid_backward(g, torch.sigmoid(x))


def _tanh_gradient(g: Tensor, x: Tensor) -> Tensor:
    return _aten.tanh_backward(g, torch.tanh(x))


def call_gradient(target: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Gradient | None:
    """f'(x) * g of an activation call with constant arguments (``args`` after the input), by
    autograd's own backward kernel; None where forward-mode autograd is used instead."""
    options = dict(kwargs)
    if target is F.relu6:
        return lambda g, x: _aten.hardtanh_backward(g, x, 0.0, 6.0)
    bounds = _hardtanh_bounds(args, options) if target in (F.hardtanh, F.hardtanh_) else None
    if bounds is not None:
        low, high = bounds
        return lambda g, x: _aten.hardtanh_backward(g, x, low, high)
    try:
        backward = {F.hardswish: _aten.hardswish_backward, F.silu: _aten.silu_backward,
                    F.hardsigmoid: _aten.hardsigmoid_backward, F.mish: _aten.mish_backward,
                    torch.sigmoid: _sigmoid_gradient, F.sigmoid: _sigmoid_gradient, "sigmoid": _sigmoid_gradient,
                    torch.tanh: _tanh_gradient, F.tanh: _tanh_gradient, "tanh": _tanh_gradient}.get(target)
    except TypeError:  # an unhashable target
        backward = None
    if backward is not None and all(isinstance(a, bool) for a in args) and not set(options) - {"inplace"}:
        return backward
    slope = _leaky_slope(args, options) if target in (F.leaky_relu, F.leaky_relu_) else None
    if slope is not None:
        return lambda g, x: _aten.leaky_relu_backward(g, x, slope, False)
    if target is F.softplus and all(isinstance(a, (int, float)) for a in args[:2]):
        beta = float(args[0] if args else options.get("beta", 1.0))
        threshold = float(args[1] if len(args) > 1 else options.get("threshold", 20.0))
        return lambda g, x: _aten.softplus_backward(g, x, beta, threshold)
    if target is F.gelu and not args:
        return lambda g, x: _aten.gelu_backward(g, x, approximate=options.get("approximate", "none"))
    return None


# Functions and tensor methods (by name) of the activations: target -> (rectifier, relu).
# The rectifier test for Hardtanh reads the lower bound from the call.
_RECTIFIER_FUNCTIONS: dict[Any, tuple[bool, bool]] = {
    F.relu: (True, True), torch.relu: (True, True), F.relu_: (True, True), "relu": (True, True), "relu_": (True, True),
    F.relu6: (True, False), F.hardtanh: (True, False), F.hardtanh_: (True, False),
    F.leaky_relu: (True, False), F.leaky_relu_: (True, False), F.prelu: (True, False), "prelu": (True, False),
    F.rrelu: (True, False), F.rrelu_: (True, False), torch.rrelu: (True, False),
    F.elu: (True, False), F.elu_: (True, False), F.celu: (True, False), torch.celu: (True, False), F.celu_: (True, False),
    F.selu: (True, False), torch.selu: (True, False), F.selu_: (True, False),
    F.gelu: (True, False), F.silu: (True, False), F.mish: (True, False), F.hardswish: (True, False),
    F.softplus: (True, False),
    torch.sigmoid: (False, False), F.sigmoid: (False, False), "sigmoid": (False, False), "sigmoid_": (False, False),
    torch.tanh: (False, False), F.tanh: (False, False), "tanh": (False, False), "tanh_": (False, False),
    F.hardsigmoid: (False, False), F.logsigmoid: (False, False), F.softsign: (False, False),
    F.tanhshrink: (False, False),
}

_HARDTANH = {F.hardtanh, F.hardtanh_}


def activation_kind(target: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> tuple[bool, bool] | None:
    """(is a rectifier, is ReLU) of an activation call, or None when it is not one."""
    try:
        kind = _RECTIFIER_FUNCTIONS.get(target)
    except TypeError:  # unhashable target
        return None
    if kind is None:
        return None
    if target in _HARDTANH:
        low = args[1] if len(args) > 1 else kwargs.get("min_val", -1.0)
        return (isinstance(low, (int, float)) and _hardtanh_rectifies(low), False)
    return kind


def rectifier_call(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Callable[[Tensor], Tensor], bool] | None:
    """For a rectifier call seen inside a general (VJP) node: (f as a pure, out-of-place
    function of its input, is ReLU), else None. Used to give those rectifiers the rule too."""
    name = getattr(func, "__name__", "")
    if name and getattr(Tensor, name, None) is func:  # a tensor method, x.relu_(): table key is its name
        func = name
    kind = activation_kind(func, args, kwargs)
    if kind is None or not kind[0] or not args or not isinstance(args[0], Tensor):
        return None
    function = getattr(torch, func.rstrip("_")) if isinstance(func, str) else out_of_place_function(func)
    rest, options = args[1:], {k: v for k, v in kwargs.items() if k != "inplace"}
    return (lambda x: function(x, *rest, **options)), kind[1]


# --- the functional calls reversed by hand ------------------------------------------------------
# One table: call target (a function, or a tensor method's name) -> the kind of mirror the builder
# makes for it. The "supported calls" message is made from it.

CALLS: dict[Any, str] = {}


def _calls(kind: str, *targets: Any) -> None:
    for target in targets:
        CALLS[target] = kind


_calls("activation", *_RECTIFIER_FUNCTIONS)
_calls("max_pool", F.max_pool1d, torch.max_pool1d, F.max_pool2d, torch.max_pool2d, F.max_pool3d, torch.max_pool3d)
_calls("avg_pool", F.avg_pool1d, torch.avg_pool1d, F.avg_pool2d, torch._C._nn.avg_pool2d, F.avg_pool3d,
       torch._C._nn.avg_pool3d)
_calls("adaptive_avg_pool", F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)
_calls("adaptive_max_pool", F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d)
_calls("reshape", torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.unflatten,
       "view", "reshape", "flatten", "squeeze", "unsqueeze", "unflatten")
_calls("identity", "contiguous", "clone", torch.clone)
_calls("dropout", F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout)
_calls("add", operator.add, torch.add, "add", operator.sub, torch.sub, "sub")
_calls("cat", torch.cat, torch.concat, torch.concatenate)
_calls("product", operator.mul, torch.mul, "mul", operator.truediv, torch.div, torch.true_divide, "div", "true_divide")
_calls("negate", operator.neg, torch.neg, "neg")
_calls("pad", F.pad)
_calls("index", operator.getitem)
_calls("narrow", torch.narrow, "narrow")
_calls("split", torch.chunk, "chunk", torch.split, "split", torch.tensor_split, "tensor_split", torch.unbind, "unbind")
_calls("permute", torch.permute, "permute", torch.transpose, "transpose", torch.swapaxes, "swapaxes",
       torch.swapdims, "swapdims", torch.movedim, "movedim")
_calls("reduce", torch.mean, "mean", torch.sum, "sum")
_calls("conv", F.conv1d, torch.conv1d, F.conv2d, torch.conv2d, F.conv3d, torch.conv3d)
_calls("linear", F.linear)
_calls("batch_norm", F.batch_norm)
_calls("layer_norm", F.layer_norm)
_calls("group_norm", F.group_norm)


def _call_name(target: Any) -> str:
    if isinstance(target, str):
        return f".{target}()"
    module = getattr(target, "__module__", "") or ""
    prefix = "F." if module.startswith("torch.nn.functional") or module == "torch._C._nn" else (
        "operator." if module in ("_operator", "operator") else "torch."
    )
    return prefix + getattr(target, "__name__", str(target))


def supported_calls() -> list[str]:
    """The functional calls and tensor methods reversed by hand, by name."""
    return sorted({_call_name(t) for t in CALLS})


META_METHODS = {"size", "dim", "numel", "type", "get_device", "is_contiguous", "stride"}
META_ATTRIBUTES = {"shape", "ndim", "dtype", "device", "is_cuda"}
"""Calls that read a tensor's shape or type, not its values: they carry no signal."""


def is_meta_call(op: str, target: Any, args: tuple[Any, ...]) -> bool:
    """Whether an fx call reads only shape or type information from a tensor."""
    if op == "call_method":
        return target in META_METHODS
    return op == "call_function" and (
        (target is getattr and len(args) > 1 and args[1] in META_ATTRIBUTES)
        or target in (torch._assert, torch.Tensor.dim, torch.Tensor.size, torch.numel)
    )


# --- in-place calls, run out of place -----------------------------------------------------------


def out_of_place_function(target: Any) -> Any:
    """The out-of-place twin of an in-place function (``F.relu_`` -> ``F.relu``), or itself."""
    name = getattr(target, "__name__", "")
    if not name.endswith("_") or name.startswith("_"):
        return target
    for namespace in (F, torch):
        twin = getattr(namespace, name[:-1], None)
        if callable(twin):
            return twin
    return target


def _inplace_position(function: Any) -> int | None:
    try:
        return _inplace_position_of(function)
    except TypeError:  # an unhashable target: look it up uncached
        return _inplace_position_of.__wrapped__(function)


@functools.lru_cache(maxsize=None)
def _inplace_position_of(function: Any) -> int | None:
    # Read once per function: building a mirror asks it for every call in the graph.
    try:
        parameters = list(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return None
    return parameters.index("inplace") if "inplace" in parameters else None


def out_of_place_call(op: str, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    """The same call, made not to write into its input (so recorded activations stay intact)."""
    if op == "call_method":
        if isinstance(target, str) and target.endswith("_") and not target.startswith("_") and hasattr(Tensor, target[:-1]):
            target = target[:-1]
        return target, args, kwargs
    target = out_of_place_function(target)
    if kwargs.get("inplace") is True:
        kwargs = {**kwargs, "inplace": False}
    position = _inplace_position(target)
    if position is not None and len(args) > position and args[position] is True:
        args = tuple(False if i == position else a for i, a in enumerate(args))
    return target, args, kwargs


def in_place_call(
    op: str, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, tuple[Any, ...], dict[str, Any]] | None:
    """The same activation call made to write into its input (a module: a shallow copy with
    ``inplace=True``, the user's own left as it is), or None where it has no in-place form."""
    if op == "call_module":
        if type(target) not in ACTIVATION_MODULES or not isinstance(getattr(target, "inplace", None), bool):
            return None
        module = copy.copy(target)
        module.inplace = True
        return module, args, kwargs
    if activation_kind(target, args, kwargs) is None:
        return None
    if op == "call_method":
        twin = f"{target}_"
        return (twin, args, kwargs) if isinstance(target, str) and callable(getattr(Tensor, twin, None)) else None
    position = _inplace_position(target)
    if position is None:
        return None
    if len(args) > position:
        return target, tuple(True if i == position else a for i, a in enumerate(args)), kwargs
    return target, args, {**kwargs, "inplace": True}


# --- the built-in module rules ------------------------------------------------------------------


def _run_max_pool(pool: nn.MaxPool2d, x: Tensor) -> tuple[Tensor, Tensor | None]:
    """The pool's output and switches, laid out as :func:`_max_pool2d` does."""
    return _max_pool2d(pool, x, switches=True)


_MAX_POOL = {nn.MaxPool1d: F.max_pool1d, nn.MaxPool3d: F.max_pool3d}
_ADAPTIVE_MAX_POOL = {nn.AdaptiveMaxPool1d: F.adaptive_max_pool1d, nn.AdaptiveMaxPool2d: F.adaptive_max_pool2d,
                      nn.AdaptiveMaxPool3d: F.adaptive_max_pool3d}


def _run_max_pool_nd(pool: nn.Module, x: Tensor) -> tuple[Tensor, Tensor | None]:
    """A 1-D or 3-D max-pool's output and switches (flat positions in each input map)."""
    return _MAX_POOL[type(pool)](x, pool.kernel_size, pool.stride, pool.padding, pool.dilation,
                                 ceil_mode=pool.ceil_mode, return_indices=True)


def max_pool(pool: nn.MaxPool2d, x: Tensor) -> Tensor:
    """The pool's output alone, laid out as :func:`_max_pool2d` does: bitwise ``pool(x)``."""
    return _max_pool2d(pool, x, switches=False)


def _max_pool2d(pool: nn.MaxPool2d, x: Tensor, switches: bool) -> Any:
    """``F.max_pool2d`` with the pool's settings (and its switches if asked). On a CPU an NCHW
    input is pooled channels last and the results laid back out as NCHW: the same values and
    switches, bitwise (the same windows, scanned in the same order, ties to the first), in
    0.3x-1.0x the time of the NCHW kernel, which does not vectorize over channels (the copies
    included; 16-512 channels, 14-224 px)."""
    relaid = x.device.type == "cpu" and x.dim() == 4 and x.is_contiguous() \
        and not x.is_contiguous(memory_format=torch.channels_last)
    out = F.max_pool2d(x.contiguous(memory_format=torch.channels_last) if relaid else x, pool.kernel_size,
                       pool.stride, pool.padding, pool.dilation, ceil_mode=pool.ceil_mode, return_indices=switches)
    if not relaid:
        return out
    return tuple(_nchw(t) for t in out) if switches else _nchw(out)


def _nchw(t: Tensor) -> Tensor:
    """``t`` laid out as the NCHW kernel lays out a new tensor: contiguous, with the strides
    PyTorch gives a new tensor of its shape in dims of size 1 too. ``contiguous()`` leaves
    those as they were, and a later kernel reads them to choose its layout: a pooled
    ``[N, C, 1, 1]`` with channels-last strides made the next conv's output channels last."""
    t = t.contiguous()
    strides, step = [], 1
    for size in reversed(t.shape):
        strides.append(step)
        step *= max(size, 1)
    strides.reverse()
    return t if list(t.stride()) == strides else t.as_strided(t.shape, strides)


def _run_adaptive_max_pool(pool: nn.Module, x: Tensor) -> tuple[Tensor, Tensor | None]:
    return _ADAPTIVE_MAX_POOL[type(pool)](x, pool.output_size, return_indices=True)


def _conv_unsupported(conv: nn.Conv2d) -> str | None:
    if conv.padding_mode != "zeros":
        return (
            f"padding_mode={conv.padding_mode!r} is not supported (only 'zeros'); "
            "its transpose is not a transposed convolution"
        )
    return None


def _pool_unsupported(pool: nn.Module) -> str | None:
    if getattr(pool, "return_indices", False):
        return "return_indices=True is not supported: the layer must return one tensor"
    return None


def _norm_unsupported(norm: nn.modules.batchnorm._BatchNorm) -> str | None:
    if norm.running_var is None:
        return (
            "track_running_stats=False is not supported: such a batch-norm always uses batch "
            "statistics, which is not a per-channel scale"
        )
    return None


def _layer_norm(norm: nn.LayerNorm) -> mirror.MirrorLayer:
    return mirror.Normalization(
        f"LayerNorm{tuple(norm.normalized_shape)}, eps={norm.eps}",
        lambda record: (None, len(norm.normalized_shape), norm.weight, norm.eps),
    )


def _group_norm(norm: nn.GroupNorm) -> mirror.MirrorLayer:
    return mirror.Normalization(
        f"GroupNorm({norm.num_groups}, {norm.num_channels}), eps={norm.eps}",
        lambda record: (norm.num_groups, 0, norm.weight, norm.eps),
    )


def _pad(module: nn.Module) -> mirror.MirrorLayer:
    return mirror.Crop(module.padding)


def _identity(module: nn.Module) -> mirror.MirrorLayer:
    return mirror.Identity(type(module).__name__)


DEFAULT_RULES.rules.update({
    nn.Conv1d: Rule(mirror.ConvTranspose1d.from_conv, unsupported=_conv_unsupported),
    nn.Conv2d: Rule(mirror.ConvTranspose2d.from_conv, unsupported=_conv_unsupported),
    nn.Conv3d: Rule(mirror.ConvTranspose3d.from_conv, unsupported=_conv_unsupported),
    nn.ConvTranspose1d: Rule(mirror.conv_of_transpose, unsupported=_conv_unsupported),
    nn.ConvTranspose2d: Rule(mirror.conv_of_transpose, unsupported=_conv_unsupported),
    nn.ConvTranspose3d: Rule(mirror.conv_of_transpose, unsupported=_conv_unsupported),
    nn.MaxPool1d: Rule(mirror.unpooling, run=_run_max_pool_nd, unsupported=_pool_unsupported),
    nn.MaxPool2d: Rule(mirror.unpooling, run=_run_max_pool, unsupported=_pool_unsupported),
    nn.MaxPool3d: Rule(mirror.unpooling, run=_run_max_pool_nd, unsupported=_pool_unsupported),
    nn.AdaptiveMaxPool1d: Rule(lambda m: mirror.AdaptiveMaxUnpool1d(m.output_size), run=_run_adaptive_max_pool,
                               unsupported=_pool_unsupported),
    nn.AdaptiveMaxPool2d: Rule(lambda m: mirror.AdaptiveMaxUnpool2d(m.output_size), run=_run_adaptive_max_pool,
                               unsupported=_pool_unsupported),
    nn.AdaptiveMaxPool3d: Rule(lambda m: mirror.AdaptiveMaxUnpool3d(m.output_size), run=_run_adaptive_max_pool,
                               unsupported=_pool_unsupported),
    nn.Linear: Rule(lambda m: mirror.LinearTranspose(m.weight)),
    nn.BatchNorm1d: Rule(mirror.ChannelScale.from_norm, unsupported=_norm_unsupported, eval_only=True),
    nn.BatchNorm2d: Rule(mirror.ChannelScale.from_norm, unsupported=_norm_unsupported, eval_only=True),
    nn.BatchNorm3d: Rule(mirror.ChannelScale.from_norm, unsupported=_norm_unsupported, eval_only=True),
    nn.LayerNorm: Rule(_layer_norm),
    nn.GroupNorm: Rule(_group_norm),
    nn.AvgPool1d: Rule(mirror.AvgPool1dTranspose),
    nn.AvgPool2d: Rule(mirror.AvgPool2dTranspose),
    nn.AvgPool3d: Rule(mirror.AvgPool3dTranspose),
    nn.AdaptiveAvgPool1d: Rule(lambda m: mirror.AdaptiveAvgPool1dTranspose(m.output_size)),
    nn.AdaptiveAvgPool2d: Rule(lambda m: mirror.AdaptiveAvgPool2dTranspose(m.output_size)),
    nn.AdaptiveAvgPool3d: Rule(lambda m: mirror.AdaptiveAvgPool3dTranspose(m.output_size)),
    nn.Flatten: Rule(lambda m: mirror.Reshape("Flatten")),
    nn.Unflatten: Rule(lambda m: mirror.Reshape("Unflatten")),
    nn.Identity: Rule(_identity),
})
for _activation in ACTIVATION_MODULES:
    DEFAULT_RULES.rules[_activation] = Rule(_mirror_activation, eval_only=_activation is nn.RReLU)
for _padding in (nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d):
    DEFAULT_RULES.rules[_padding] = Rule(_pad)
for _dropout in (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout):
    DEFAULT_RULES.rules[_dropout] = Rule(_identity, eval_only=True)


DEFAULT_RULES.named["torchvision.ops.stochastic_depth.StochasticDepth"] = Rule(_identity, eval_only=True)
DEFAULT_RULES.named["timm.layers.conv2d_same.Conv2dSame"] = Rule(mirror.SameConvTranspose2d,
                                                                 unsupported=_conv_unsupported)


def _bundled_same_conv() -> type[nn.Module]:
    from .models import SameConv2d  # the bundled EfficientNet-Lite0's strided convs

    return SameConv2d


DEFAULT_RULES.rules[_bundled_same_conv()] = Rule(mirror.SameConvTranspose2d, unsupported=_conv_unsupported)
