"""Pools read, as calls of any dimension: max-pools as the module they equal (so they record their
switches), average pools as their exact transposes."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from ...mirror import (
    AdaptiveAvgPool1dTranspose,
    AdaptiveAvgPool2dTranspose,
    AdaptiveAvgPool3dTranspose,
    AvgPool1dTranspose,
    AvgPool2dTranspose,
    AvgPool3dTranspose,
)
from .base import Built, General, Reader

__all__ = ["DIMS", "as_max_pool", "max_pool", "avg_pool", "adaptive_avg_pool", "adaptive_max_pool"]

# The functional pools by their number of spatial dims (the 2-D ones are the default).
DIMS: dict[Any, int] = {
    F.max_pool1d: 1, torch.max_pool1d: 1, F.max_pool3d: 3, torch.max_pool3d: 3,
    F.avg_pool1d: 1, torch.avg_pool1d: 1, F.avg_pool3d: 3, torch._C._nn.avg_pool3d: 3,
    F.adaptive_avg_pool1d: 1, F.adaptive_avg_pool3d: 3, F.adaptive_max_pool1d: 1, F.adaptive_max_pool3d: 3,
}


def as_max_pool(dims: int, *args: Any, **kwargs: Any) -> nn.Module:
    """The ``MaxPool{dims}d`` a functional max-pool call equals (ValueError if none does)."""
    if kwargs.pop("return_indices", False) or len(args) > 5 and args[5]:
        raise ValueError("return_indices=True is not supported: the call must return one tensor")
    args = args[:5]
    if len(args) > 1 and args[1] in ([], ()):
        args = (args[0], None, *args[2:])  # torch.max_pool2d spells the default stride []
    if kwargs.get("stride") in ([], ()):
        kwargs["stride"] = None
    return (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)[dims - 1](*args, **kwargs)


def max_pool(reader: Reader, node: fx.Node, name: str) -> Built:
    """``F.max_pool{1,2,3}d``: run as the ``MaxPool`` module it equals, so its switches are recorded."""
    inputs = reader.first_only(node)
    reader.plain(node.args[1:], node.kwargs)
    try:
        pool = as_max_pool(DIMS.get(node.target, 2), *node.args[1:], **node.kwargs)
    except (TypeError, ValueError) as error:
        raise General from error
    return reader.as_module(pool, inputs)


def avg_pool(reader: Reader, node: fx.Node, name: str) -> Built:
    """``F.avg_pool{1,2,3}d``: its exact transpose."""
    inputs = reader.first_only(node)
    reader.plain(node.args[1:], node.kwargs)
    dims = DIMS.get(node.target, 2)
    pool = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)[dims - 1](*node.args[1:], **node.kwargs)
    transpose = (AvgPool1dTranspose, AvgPool2dTranspose, AvgPool3dTranspose)
    return Built(transpose[dims - 1](pool), inputs)


def adaptive_avg_pool(reader: Reader, node: fx.Node, name: str) -> Built:
    """``F.adaptive_avg_pool{1,2,3}d``: its exact transpose."""
    inputs = reader.first_only(node)
    reader.plain(node.args[1:], node.kwargs)
    size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
    transpose = (AdaptiveAvgPool1dTranspose, AdaptiveAvgPool2dTranspose, AdaptiveAvgPool3dTranspose)
    return Built(transpose[DIMS.get(node.target, 2) - 1](size), inputs)


def adaptive_max_pool(reader: Reader, node: fx.Node, name: str) -> Built:
    """``F.adaptive_max_pool{1,2,3}d``: run as the module it equals (switches recorded)."""
    inputs = reader.first_only(node)
    reader.plain(node.args[1:], node.kwargs)
    size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
    if node.kwargs.get("return_indices") or (len(node.args) > 2 and node.args[2]):
        raise General
    pools = (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
    return reader.as_module(pools[DIMS.get(node.target, 2) - 1](size), inputs)
