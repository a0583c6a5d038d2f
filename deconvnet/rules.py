"""The registry of layer rules: how each forward layer type is run and reversed.

The builder looks every layer of the traced forward up here. A rule says which mirror layer
reverses the forward layer, how the layer runs while a batch is traced (a max-pool must also
return its switches; an in-place ReLU must not overwrite the activation before it is kept), and
which configurations of it deconvnet cannot reverse exactly.

Functional calls (``F.relu``, ``F.max_pool2d``, ``torch.flatten``, ``x.view``, ...) are read as
the module they are equivalent to, so one rule serves both spellings.

Adding a layer type is one call::

    deconvnet.register_rule(MyScale, mirror=lambda m: MyScaleTranspose(m))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import mirror
from .errors import DeconvnetError
from .functional import pair

__all__ = ["Rule", "register_rule", "rule_for", "supported_layers", "is_registered"]


def _run_module(module: nn.Module, x: Tensor) -> tuple[Tensor, Tensor | None]:
    return module(x), None


@dataclass(frozen=True)
class Rule:
    """How deconvnet handles one forward layer type.

    mirror: builds the mirror layer that reverses a given forward layer.
    run: runs the forward layer on ``x`` while tracing; returns its output and, for max-pools,
        its switches. By default the module is called as it is.
    unsupported: returns why this particular layer cannot be reversed exactly, or ``None``.
    eval_only: the layer behaves differently in training mode (dropout, batch-norm), so tracing
        a model with it in training mode is refused.
    """

    mirror: Callable[[Any], mirror.MirrorLayer]
    run: Callable[[Any, Tensor], tuple[Tensor, Tensor | None]] = _run_module
    unsupported: Callable[[Any], str | None] | None = None
    eval_only: bool = False


_RULES: dict[type[nn.Module], Rule] = {}


def register_rule(
    layer_type: type[nn.Module],
    mirror: Callable[[Any], mirror.MirrorLayer],
    *,
    run: Callable[[Any, Tensor], tuple[Tensor, Tensor | None]] = _run_module,
    unsupported: Callable[[Any], str | None] | None = None,
    eval_only: bool = False,
) -> Rule:
    """Register (or replace) the rule for ``layer_type``; returns it.

    ``mirror(layer)`` must return a :class:`deconvnet.mirror.MirrorLayer` whose
    ``forward(signal, record)`` maps ``Tensor[N, K, *output_shape]`` to
    ``Tensor[N, K, *input_shape]``. The layer is treated as a leaf: torch.fx does not trace into it.
    """
    if not (isinstance(layer_type, type) and issubclass(layer_type, nn.Module)):
        raise DeconvnetError(
            f"register_rule takes an nn.Module subclass, got {layer_type!r}"
        )
    rule = Rule(mirror=mirror, run=run, unsupported=unsupported, eval_only=eval_only)
    _RULES[layer_type] = rule
    return rule


def rule_for(module: nn.Module) -> Rule | None:
    """The rule for ``module``'s type; a subclass inherits its base's rule only when it keeps
    the base's ``forward``."""
    rule = _RULES.get(type(module))
    if rule is not None:
        return rule
    for base in type(module).__mro__[1:]:
        if base in _RULES and type(module).forward is base.forward:
            return _RULES[base]
    return None


def is_registered(module_type: type[nn.Module]) -> bool:
    """Whether torch.fx should keep ``module_type`` as one leaf layer."""
    return module_type in _RULES


def supported_layers() -> list[str]:
    """Names of the layer types that have a rule, in registration order."""
    return [t.__name__ for t in _RULES]


# --- the built-in rules ---------------------------------------------------------------------


def _run_relu(module: nn.ReLU, x: Tensor) -> tuple[Tensor, Tensor | None]:
    # Out of place even for inplace=True: the layer before keeps its own activation.
    return F.relu(x), None


def _run_max_pool(pool: nn.MaxPool2d, x: Tensor) -> tuple[Tensor, Tensor | None]:
    out, switches = F.max_pool2d(
        x,
        pool.kernel_size,
        pool.stride,
        pool.padding,
        pool.dilation,
        ceil_mode=pool.ceil_mode,
        return_indices=True,
    )
    return out, switches


def _windows_overlap(pool: nn.MaxPool2d) -> bool:
    kernel, stride = pair(pool.kernel_size), pair(pool.stride or pool.kernel_size)
    dilation = pair(pool.dilation)
    return any(
        k > 1 and s < d * (k - 1) + 1 for k, s, d in zip(kernel, stride, dilation, strict=True)
    )


def _mirror_max_pool(pool: nn.MaxPool2d) -> mirror.MirrorLayer:
    return mirror.OverlapUnpool2d(pool) if _windows_overlap(pool) else mirror.MaxUnpool2d(pool)


def _conv_unsupported(conv: nn.Conv2d) -> str | None:
    if conv.padding_mode != "zeros":
        return (
            f"padding_mode={conv.padding_mode!r} is not supported (only 'zeros'); "
            "its transpose is not a transposed convolution"
        )
    return None


def _pool_unsupported(pool: nn.MaxPool2d) -> str | None:
    if pool.return_indices:
        return "return_indices=True is not supported: the layer must return one tensor"
    return None


def _norm_unsupported(norm: nn.BatchNorm2d) -> str | None:
    if norm.running_var is None:
        return (
            "track_running_stats=False is not supported: such a batch-norm always uses batch "
            "statistics, which is not a per-channel scale"
        )
    return None


register_rule(nn.Conv2d, mirror.ConvTranspose2d, unsupported=_conv_unsupported)
register_rule(nn.ReLU, lambda m: mirror.ReLU(), run=_run_relu)
register_rule(
    nn.MaxPool2d, _mirror_max_pool, run=_run_max_pool, unsupported=_pool_unsupported
)
register_rule(nn.Linear, mirror.LinearTranspose)
register_rule(
    nn.BatchNorm2d, mirror.ChannelScale, unsupported=_norm_unsupported, eval_only=True
)
register_rule(nn.AvgPool2d, mirror.AvgPool2dTranspose)
register_rule(nn.AdaptiveAvgPool2d, mirror.AdaptiveAvgPool2dTranspose)
register_rule(nn.Flatten, lambda m: mirror.Reshape("Flatten"))
register_rule(nn.Unflatten, lambda m: mirror.Reshape("Unflatten"))
for _dropout in (nn.Dropout, nn.Dropout2d, nn.AlphaDropout):
    register_rule(_dropout, lambda m: mirror.Identity(type(m).__name__), eval_only=True)
register_rule(nn.Identity, lambda m: mirror.Identity("Identity"))


# --- functional spellings -------------------------------------------------------------------
# Each maps the call's arguments after the input to the equivalent module, so that
# F.max_pool2d(x, 3, 2) is handled by the MaxPool2d rule.


def _as_max_pool(*args: Any, **kwargs: Any) -> nn.Module:
    if kwargs.pop("return_indices", False) or len(args) > 5 and args[5]:
        raise ValueError("return_indices=True is not supported: the call must return one tensor")
    args = args[:5]
    if len(args) > 1 and args[1] in ([], ()):
        args = (args[0], None, *args[2:])  # torch.max_pool2d spells the default stride []
    if kwargs.get("stride") in ([], ()):
        kwargs["stride"] = None
    return nn.MaxPool2d(*args, **kwargs)


def _as_relu(*args: Any, **kwargs: Any) -> nn.Module:
    return nn.ReLU()


FUNCTION_MODULES: dict[Any, Callable[..., nn.Module]] = {
    F.relu: _as_relu,
    torch.relu: _as_relu,
    torch.relu_: _as_relu,
    F.relu_: _as_relu,
    F.max_pool2d: _as_max_pool,
    torch.max_pool2d: _as_max_pool,
    F.avg_pool2d: nn.AvgPool2d,
    F.adaptive_avg_pool2d: nn.AdaptiveAvgPool2d,
}
"""Functions (``call_function`` targets) read as an equivalent module."""

METHOD_MODULES: dict[str, Callable[..., nn.Module]] = {"relu": _as_relu, "relu_": _as_relu}
"""Tensor methods (``call_method`` targets) read as an equivalent module."""

RESHAPE_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze}
RESHAPE_METHODS = {"view", "reshape", "flatten", "squeeze", "unsqueeze"}
"""Calls whose mirror puts the signal back into the input's shape."""

IDENTITY_FUNCTIONS = {F.dropout, F.dropout2d, F.alpha_dropout}
IDENTITY_METHODS = {"contiguous"}
"""Calls that are the identity in eval mode; dropout calls must have ``training=False``."""

META_METHODS = {"size", "dim", "numel"}
META_ATTRIBUTES = {"shape", "ndim", "dtype", "device"}
"""Calls that read a tensor's shape or type, not its values: they carry no signal."""


def is_meta_call(op: str, target: Any, args: tuple[Any, ...]) -> bool:
    """Whether an fx call reads only shape or type information from a tensor."""
    if op == "call_method":
        return target in META_METHODS
    return (
        op == "call_function"
        and target is getattr
        and len(args) > 1
        and args[1] in META_ATTRIBUTES
    )


