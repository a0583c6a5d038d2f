"""Calls that move values without changing them, read: reshapes, identities (and dropout in eval
mode), padding, indexing and narrowing, permutations, reductions, and the pieces of a split."""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor, fx

from ...errors import TrainingModeError
from ...mirror import Broadcast, Crop, Identity, Permute, Reshape, Scatter
from ..nodes import describe, format_args, format_index
from .base import Built, General, Reader

__all__ = ["reshape", "identity", "dropout", "pad", "index", "narrow", "permute", "reduce", "split", "split_piece"]


def reshape(reader: Reader, node: fx.Node, name: str) -> Built:
    """``flatten``, ``view``, ``reshape`` and the like: undone."""
    return Built(Reshape(describe(node)), reader.first_only(node))


def identity(reader: Reader, node: fx.Node, name: str) -> Built:
    """Calls that are the identity (``contiguous``, ``clone``): passed on."""
    return Built(Identity(describe(node)), reader.first_only(node))


def dropout(reader: Reader, node: fx.Node, name: str) -> Built:
    """Dropout, in eval mode the identity; refused when traced with ``training=True``."""
    inputs = reader.first_only(node)
    if node.kwargs.get("training", len(node.args) > 2 and node.args[2]):
        raise TrainingModeError(
            f"{name} ({describe(node)}) was traced with training=True; call model.eval() "
            "before DeconvNet(model)"
        )
    return Built(Identity(describe(node)), inputs)


def pad(reader: Reader, node: fx.Node, name: str) -> Built:
    """``F.pad`` with constant padding: cropped off."""
    inputs = reader.first_only(node)
    reader.plain(node.args[1:], node.kwargs)
    pad = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
    mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
    if mode != "constant" or not isinstance(pad, (list, tuple)):
        raise General
    return Built(Crop(cast(list[int], pad)), inputs)


def index(reader: Reader, node: fx.Node, name: str) -> Built:
    """``x[..., i]``, ``x[:, 2:5]``: the signal written back where the piece came from."""
    inputs = reader.first_only(node)
    call, _, refs = reader.call(node)
    index = node.args[1]
    items = index if isinstance(index, tuple) else (index,)
    allowed = all(
        i is None or i is Ellipsis or isinstance(i, (int, slice)) or (isinstance(i, fx.Node) and i not in reader.signal)
        for i in items
    )
    if not allowed or not items or not (items[0] is Ellipsis or items[0] == slice(None)):
        raise General("indexes with tensors or across the batch dimension")

    def take(tensor: Tensor, shift: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
        filled = args[1] if isinstance(args[1], tuple) else (args[1],)
        if any(isinstance(i, Tensor) for i in filled):
            raise ValueError(f"{name} indexes with a tensor computed in the forward")
        if filled[0] is Ellipsis:
            return tensor[filled]
        return tensor[(slice(None),) * (1 + shift) + tuple(filled[1:])]

    return Built(Scatter(f"[{format_index(items)}]", take, call), inputs, refs=refs)


def narrow(reader: Reader, node: fx.Node, name: str) -> Built:
    """``x.narrow(dim, start, length)`` on a dim other than the batch: written back."""
    inputs = reader.first_only(node)
    call, _, refs = reader.call(node)
    if (node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")) == 0:
        raise General("narrows the batch dimension")

    def take(tensor: Tensor, shift: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
        dim, start, length = (*args[1:], *kwargs.values())[:3]
        d = int(dim) % (tensor.dim() - shift)
        return tensor.narrow(d + shift, int(start), int(length))

    return Built(Scatter(f"narrow{format_args(node.args[1:], node.kwargs)}", take, call), inputs,
                  refs=refs)


def permute(reader: Reader, node: fx.Node, name: str) -> Built:
    """``permute``, ``transpose``, ``movedim``: the inverse permutation."""
    inputs = reader.first_only(node)
    reader.plain(node.args[1:], node.kwargs)
    call, _, _ = reader.call(node)

    def order(ndim: int) -> list[int]:
        # The forward op on a meta tensor whose sizes name the dims shows where each goes.
        probe = torch.empty(tuple(range(2, ndim + 2)), device="meta")
        return [s - 2 for s in call(probe, *call.args[1:], **call.kwargs).shape]

    return Built(Permute(describe(node) + format_args(node.args[1:], node.kwargs), order), inputs)


def reduce(reader: Reader, node: fx.Node, name: str) -> Built:
    """``sum`` or ``mean`` over dims other than the batch: broadcast back."""
    inputs = reader.first_only(node)
    reader.plain(node.args[1:], node.kwargs)
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    if dim is None or dim == () or dim == []:
        raise General  # over every dim, the batch included
    dims = list(dim) if isinstance(dim, (list, tuple)) else [dim]
    mean = node.target in (torch.mean, "mean")

    def reduced(ndim: int) -> list[int]:
        return [d % ndim for d in cast(list[int], dims)]

    what = f"{'mean' if mean else 'sum'}(dim={tuple(dims)}{', keepdim' if keepdim else ''})"
    return Built(Broadcast(what, reduced, bool(keepdim), mean), inputs)


def split(reader: Reader, node: fx.Node, name: str) -> Built:
    """A split used whole (passed on as a list): left to the general layer."""
    # Pieces taken by index are handled as items of a tuple (split_piece); a split used
    # whole (passed on as a list) is left to the general layer.
    raise General("its pieces are not taken by constant indices")


def split_piece(reader: Reader, producer: fx.Node, index: int) -> Built:
    """``chunk``/``split``/``tensor_split``/``unbind`` piece ``index``: scattered back."""
    inputs = reader.first_only(producer)
    call, _, refs = reader.call(producer)
    target = producer.target
    unbind = target in (torch.unbind, "unbind")
    function = getattr(torch, target) if isinstance(target, str) else target
    dim_position = 1 if unbind else 2  # in the call's arguments, the tensor first

    def take(tensor: Tensor, shift: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
        rest, options = list(args[1:]), dict(kwargs)
        dim = options.pop("dim", rest.pop(dim_position - 1) if len(rest) >= dim_position else 0)
        d = int(dim) % (tensor.dim() - shift)
        if d == 0:
            raise ValueError(f"{describe(producer)} splits the batch dimension")
        return function(tensor, *rest, dim=d + shift, **options)[index]

    what = f"{describe(producer)}{format_args(producer.args[1:], producer.kwargs)}[{index}]"
    return Built(Scatter(what, take, call), inputs, refs=refs)
