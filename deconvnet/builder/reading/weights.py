"""Layers with weights read from their calls: convolutions, linear maps and normalisations
(batch, layer, group)."""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, fx, nn

from ...errors import TrainingModeError
from ...functional import ntuple
from ...mirror import (
    ChannelScale,
    ConvTranspose1d,
    ConvTranspose2d,
    ConvTranspose3d,
    FetchedConvTranspose2d,
    LinearTranspose,
    Normalization,
    Record,
    conv_padding,
)
from .base import Built, General, Reader, named

__all__ = ["conv", "linear", "batch_norm", "layer_norm", "group_norm"]


def conv(reader: Reader, node: fx.Node, name: str) -> Built:
    """``F.conv{1,2,3}d`` with a weight held by the model: transposed with that weight."""
    inputs = reader.first_only(node)
    names = ("weight", "bias", "stride", "padding", "dilation", "groups")
    given = named(node, names)
    weight = given.get("weight")
    if not isinstance(weight, fx.Node) or weight.op != "get_attr":
        raise General  # a weight computed in the forward
    reader.plain(*(given.get(k) for k in names[2:]))
    parameter = reader.attribute(weight)()
    if not isinstance(parameter, Tensor) or parameter.dim() not in (3, 4, 5):
        raise General
    dims = parameter.dim() - 2
    stride = ntuple(given.get("stride", 1), dims)
    dilation = ntuple(given.get("dilation", 1), dims)
    padding = conv_padding(given.get("padding", 0), parameter.shape[2:], dilation)
    groups = int(given.get("groups", 1))
    if isinstance(parameter, nn.Parameter):
        transpose = (ConvTranspose1d, ConvTranspose2d, ConvTranspose3d)
        return Built(transpose[dims - 1](parameter, stride, padding, dilation, groups), inputs)
    if dims != 2:
        raise General  # a buffer kernel (a blur) outside 2-D: its exact vector-Jacobian product
    fetched = FetchedConvTranspose2d(reader.attribute(weight), stride, padding, dilation, groups)
    return Built(fetched, inputs)


def linear(reader: Reader, node: fx.Node, name: str) -> Built:
    """``F.linear`` with a weight held by the model: multiplied by that weight, transposed."""
    inputs = reader.first_only(node)
    weight = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
    if not isinstance(weight, fx.Node) or weight.op != "get_attr":
        raise General
    return Built(LinearTranspose(reader.attribute(weight)()), inputs)


def batch_norm(reader: Reader, node: fx.Node, name: str) -> Built:
    """``F.batch_norm`` in eval mode: its per-channel scale."""
    inputs = reader.first_only(node)
    given = named(node, ("running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"))
    if given.get("training", False):
        raise TrainingModeError(
            f"{name} (batch_norm) was traced with training=True; call model.eval() before DeconvNet(model)"
        )
    if given.get("running_var") is None:
        raise General
    var, weight = reader.constant(given["running_var"]), reader.constant(given.get("weight"))
    eps = float(cast(float, given.get("eps", 1e-5)))
    return Built(ChannelScale(f"batch_norm, eps={eps}", lambda: (var(), weight(), eps)), inputs)


def layer_norm(reader: Reader, node: fx.Node, name: str) -> Built:
    """``F.layer_norm``: its exact vector-Jacobian product at the recorded input."""
    inputs = reader.first_only(node)
    call, _, refs = reader.call(node)

    def statistics(record: Record) -> tuple[int | None, int, Tensor | None, float]:
        given = call.named(record, ("normalized_shape", "weight", "bias", "eps"))
        shape = given["normalized_shape"]
        dims = len(shape) if isinstance(shape, (list, tuple, torch.Size)) else 1
        return None, dims, given.get("weight"), float(given.get("eps", 1e-5))

    return Built(Normalization("layer_norm", statistics, call), inputs, refs=refs)


def group_norm(reader: Reader, node: fx.Node, name: str) -> Built:
    """``F.group_norm``: its exact vector-Jacobian product at the recorded input."""
    inputs = reader.first_only(node)
    call, _, refs = reader.call(node)

    def statistics(record: Record) -> tuple[int | None, int, Tensor | None, float]:
        given = call.named(record, ("num_groups", "weight", "bias", "eps"))
        return int(given["num_groups"]), 0, given.get("weight"), float(given.get("eps", 1e-5))

    return Built(Normalization("group_norm", statistics, call), inputs, refs=refs)
