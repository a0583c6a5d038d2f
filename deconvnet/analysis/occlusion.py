"""Occlusion sensitivity (Zeiler & Fergus, Fig. 7): slide a grey square over the image and
watch the classifier and one feature map.

    result = occlusion(model, x, size=32, stride=16, layer="blocks.10")
    result.probability   # Tensor[N, gh, gw]: P(target class) with the square at each position
    result.label         # LongTensor[N, gh, gw]: the most probable class there
    result.activation    # Tensor[N, gh, gw]: total activation of the strongest feature map

One forward pass per position, made cheap by **exact incremental inference** (Nakandala et al.,
SIGMOD 2019): an occluder changes only the units in its projective field, so each layer is
recomputed on the region that can differ from the unoccluded pass, on a crop of that pass's own
values, and the rest is reused. Convolutions, pooling and pads run on crops; element-wise layers
(activations, batch-norm, residual adds) on the changed region alone; once a region covers most
of its map (and for every other layer) the batch of positions runs whole. The results equal
occluding and running the model, up to float rounding (tests compare them position by position).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from ..builder import Network
from ..chunks import budget, forward_chunk
from ..capture import AXES, INPUT, KINDS, evaluate
from ..deconvnet import DeconvNet
from ..errors import InputError, TargetOutOfRangeError
from ..functional import AVG_POOL, CONV, MAX_POOL, Window, ntuple, same_padding
from ..mirror import SameConvTranspose2d, conv_padding
from ..progress import ProgressFactory, Silent

__all__ = ["Occlusion", "occluder_corners", "occlusion"]

# A changed region covering more than this share of its map is computed whole from then on.
_FULL_AREA = 0.5


@dataclass(frozen=True)
class Occlusion:
    """What occluding each position did. ``grid`` is (gh, gw); position (i, j) puts the
    occluder's top-left corner at (i * stride, j * stride) (see :func:`occluder_corners`). For
    a signal the grid is (gl,), for a volume or clip (gd, gh, gw): the occluder is a segment or a
    cube of side ``size``, and every ``Tensor[N, gh, gw]`` below is ``Tensor[N, *grid]``."""

    size: int
    stride: int
    fill: float
    grid: tuple[int, ...]
    target: Tensor
    """LongTensor[N]: the class watched (default: predicted on the unoccluded image)."""
    probability: Tensor
    """Tensor[N, gh, gw]: softmax probability of ``target`` with the occluder at each position."""
    label: Tensor
    """LongTensor[N, gh, gw]: the most probable class with the occluder at each position."""
    unoccluded: Tensor
    """Tensor[N]: probability of ``target`` without occluder."""
    layer: str | None = None
    channel: Tensor | None = None
    """LongTensor[N]: the feature map of ``layer`` whose single strongest activation on the
    unoccluded image is largest."""
    activation: Tensor | None = None
    """Tensor[N, gh, gw]: the sum of that feature map with the occluder at each position."""
    projection: Tensor | None = None
    """Tensor[N, C, H, W]: that map's strongest unoccluded activation projected to pixels."""


def occluder_corners(height: int, width: int, size: int, stride: int) -> Tensor:
    """LongTensor[gh * gw, 2]: the occluder's (top, left) corners, row-major, for
    gh = (height - size) // stride + 1 (likewise gw)."""
    return occluder_positions((height, width), size, stride)


def occluder_positions(spatial: Sequence[int], size: int, stride: int) -> Tensor:
    """LongTensor[prod(grid), d]: the occluder's first corners over an input of ``spatial``
    sizes (d of them), the last axis fastest; grid[a] = (spatial[a] - size) // stride + 1."""
    axes = [torch.arange(0, int(n) - size + 1, stride) for n in spatial]
    return torch.cartesian_prod(*axes).reshape(-1, len(axes)) if len(axes) > 1 else axes[0][:, None]


@torch.no_grad()
def occlusion(
    model: nn.Module | DeconvNet,
    x: Tensor,
    *,
    size: int,
    stride: int,
    fill: float = 0.0,
    target: int | Tensor | None = None,
    layer: str | nn.Module | None = None,
    batch_size: int | None = None,
    incremental: bool = True,
    progress: ProgressFactory = Silent,
) -> Occlusion:
    """Occlusion sensitivity of ``model`` (a classifier, or its :class:`DeconvNet`) on
    x (Tensor[N, C, H, W]): a ``size`` x ``size`` square of ``fill`` (in every channel, in the
    model's input space: 0 is the mean colour for mean-subtracted inputs) slid by ``stride``.
    A signal model's x is Tensor[N, C, L] and its occluder a segment; a volume or clip model's
    x is Tensor[N, C, D, H, W] and its occluder a cube.

    target: the class to watch, one for all images or LongTensor[N]; default the class
        predicted on each unoccluded image.
    layer: also report that layer's strongest feature map (see :class:`Occlusion`).
    batch_size: occluder positions per forward pass (default: planned by ``deconvnet.chunks``
        for the device, in equal batches; the memory budget is the DeconvNet's).
    incremental: recompute only what each occluder can change (exact); ``False`` runs every
        occluded image whole, as Captum's ``Occlusion`` does.
    """
    dn = model if isinstance(model, DeconvNet) else DeconvNet(model)
    network = dn.network
    network.check_eval()
    x = _checked_input(x, network.spatial_dims)
    spatial = tuple(x.shape[2:])
    _check_geometry(size, stride, spatial)
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise InputError(f"batch_size must be a positive int, got {batch_size!r}")
    corners = occluder_positions(spatial, size, stride).to(x.device)
    grid = tuple((n - size) // stride + 1 for n in spatial)
    step = network.resolve(layer) if layer is not None else None
    layer_name = layer if isinstance(layer, str) else _module_name(dn.model, layer)
    watched = [network.output] + ([step.node] if step is not None else [])

    probabilities, labels, targets, unoccluded, channels, sums = [], [], [], [], [], []
    bar = progress(total=x.shape[0] * corners.shape[0], desc="occlusion", unit="position")
    for n in range(x.shape[0]):
        run = _Incremental(network, x[n : n + 1], _FULL_AREA if incremental else 0.0)
        logits = _logits(run.base[network.output])
        chosen = _target(target, n, x.shape[0], logits)
        targets.append(chosen)
        unoccluded.append(logits.softmax(-1)[0, chosen])
        channel = None
        if step is not None:
            feature = _feature_map(run.base[step.node], step.name)
            channel = int(feature[0].flatten(1).amax(1).argmax())
            channels.append(channel)
        chunk = batch_size or run.default_batch(corners.shape[0], dn.memory_budget)
        prob_parts, label_parts, sum_parts = [], [], []
        for start in range(0, corners.shape[0], chunk):
            values = run.occluded(corners[start : start + chunk], size, fill, watched)
            out = _logits(values[0]).softmax(-1)
            prob_parts.append(out[:, chosen])
            label_parts.append(out.argmax(-1))
            if step is not None:
                sum_parts.append(values[1])
            bar.update(min(chunk, corners.shape[0] - start))
        probabilities.append(torch.cat(prob_parts).view(grid))
        labels.append(torch.cat(label_parts).view(grid))
        if step is not None:
            sums.append(torch.cat([run.channel_sum(v, step.node, channel) for v in sum_parts]).view(grid))

    bar.close()
    result: dict[str, Any] = {}
    if step is not None:
        channel_tensor = torch.tensor(channels, device=x.device)
        result = {
            "layer": layer_name,
            "channel": channel_tensor,
            "activation": torch.stack(sums),
            "projection": torch.cat([
                dn.reconstruct(x[n : n + 1], layer, channels[n], mode="max")[:, 0] for n in range(x.shape[0])
            ]).detach(),
        }
    return Occlusion(
        size, stride, float(fill), grid, torch.tensor(targets, device=x.device), torch.stack(probabilities),
        torch.stack(labels), torch.stack(unoccluded), **result,
    )


# --- checks -----------------------------------------------------------------------------------


def _module_name(model: nn.Module, layer: Any) -> str | None:
    return next((name for name, module in model.named_modules() if module is layer), None)


def _checked_input(x: Any, dims: int = 2) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() != dims + 2:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise InputError(f"x must be a batch of {KINDS[dims]}, Tensor[N, {AXES[dims]}]; got {shape}")
    return x


def _check_geometry(size: Any, stride: Any, spatial: Sequence[int]) -> None:
    for name, value in (("size", size), ("stride", stride)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"occluder {name} must be a positive int (pixels), got {value!r}")
    if size > min(spatial):
        raise InputError(f"occluder size {size} does not fit the {'x'.join(str(n) for n in spatial)} "
                         f"{INPUT[len(spatial)]}")


def _logits(output: Any) -> Tensor:
    if not isinstance(output, Tensor) or output.dim() != 2:
        shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise InputError(f"occlusion needs a classifier returning logits Tensor[N, classes]; the model returns {shape}")
    return output


def _target(target: int | Tensor | None, n: int, count: int, logits: Tensor) -> int:
    classes = logits.shape[-1]
    if target is None:
        return int(logits[0].argmax())
    if isinstance(target, Tensor):
        if target.dim() == 0:
            value = target
        elif target.shape != (count,) or target.dtype in (torch.float16, torch.float32, torch.float64, torch.bfloat16):
            raise InputError(f"target must be an int or LongTensor[{count}] (one class per image), got {tuple(target.shape)} {target.dtype}")
        else:
            value = target[n]
        chosen = int(value)
    elif isinstance(target, int) and not isinstance(target, bool):
        chosen = target
    else:
        raise InputError(f"target must be an int, LongTensor[N] or None, got {type(target).__name__}")
    if not 0 <= chosen < classes:
        raise TargetOutOfRangeError(f"target class {chosen} is out of range: the model has {classes} classes (0..{classes - 1})")
    return chosen


def _feature_map(value: Any, name: str) -> Tensor:
    if not isinstance(value, Tensor) or value.dim() < 3:
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise InputError(f"layer {name} gives {shape}, not feature maps Tensor[N, C, H, W]")
    return value


# --- incremental inference ----------------------------------------------------------------------


@dataclass
class _Local:
    """Values that differ from the unoccluded pass only in a box: patch (Tensor[B, C, *p]) with
    its first corner (top-left in 2-D) at ``corner`` (LongTensor[B, d], one row per batch item)."""

    patch: Tensor
    corner: Tensor


_SAME = object()
"""A node's value equals the unoccluded pass's for every position."""


@dataclass(frozen=True)
class _Slide:
    """A sliding-window layer that can run on a crop of its explicitly padded input."""

    window: Window
    pads: tuple[tuple[int, int], ...]
    """(before, after) per spatial dim for this input size: ((top, bottom), (left, right))."""
    value: float
    """What the padding holds: 0, or -inf for max-pooling."""
    run: Callable[[Tensor], Tensor]
    """The layer on a padded crop, without padding of its own."""


_CONV_CALLS = {F.conv1d, torch.conv1d, F.conv2d, torch.conv2d, F.conv3d, torch.conv3d}
_MAX_POOL_CALLS = {F.max_pool1d, torch.max_pool1d, F.max_pool2d, torch.max_pool2d, F.max_pool3d, torch.max_pool3d}


def _conv_slide(weight: Tensor, bias: Tensor | None, stride: Any, padding: Any, dilation: Any, groups: int,
                size: tuple[int, ...], same: bool = False) -> _Slide:
    dims = weight.dim() - 2
    window = Window(tuple(weight.shape[2:]), ntuple(stride, dims), dilation=ntuple(dilation, dims))
    pads = same_padding(size, window) if same else conv_padding(padding, window.kernel, window.dilation)
    conv = CONV[dims]
    return _Slide(window, tuple(pads), 0.0,
                  lambda crop: conv(crop, weight, bias, window.stride, 0, window.dilation, groups))


def _plain_conv(module: nn.Module) -> bool:
    """A ``Conv{1,2,3}d`` whose forward is torch's own (not a subclass padding in its forward)."""
    return type(module).forward in (nn.Conv1d.forward, nn.Conv2d.forward, nn.Conv3d.forward)


def _slide(node: fx.Node, module: nn.Module | None, args: tuple[Any, ...], kwargs: dict[str, Any],
           same: bool) -> _Slide | None:
    """The node as a sliding-window layer that can run on crops, or None. same: its mirror
    reverses a conv with TensorFlow "SAME" padding worked out per input size."""
    value = args[0] if args else None
    if not isinstance(value, Tensor) or value.dim() not in (3, 4, 5):
        return None
    size = tuple(value.shape[2:])
    dims = len(size)
    if module is not None:
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and module.padding_mode == "zeros" \
                and module.weight.dim() == dims + 2:
            if same or _plain_conv(module):
                return _conv_slide(module.weight, module.bias, module.stride, module.padding, module.dilation,
                                   module.groups, size, same)
            return None
        if type(module) in (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d) and not module.return_indices:
            return _pool_slide("max", module.kernel_size, module.stride, module.padding, module.dilation, dims)
        if type(module) in (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d) and module.count_include_pad \
                and getattr(module, "divisor_override", None) is None and not module.ceil_mode:
            return _pool_slide("avg", module.kernel_size, module.stride, module.padding, 1, dims)
        return None
    if node.op != "call_function":
        return None
    if node.target in _CONV_CALLS:
        named = dict(zip(("input", "weight", "bias", "stride", "padding", "dilation", "groups"), args, strict=False))
        named.update(kwargs)
        if not isinstance(named.get("weight"), Tensor) or named["weight"].dim() != dims + 2:
            return None
        return _conv_slide(named["weight"], named.get("bias"), named.get("stride", 1), named.get("padding", 0),
                           named.get("dilation", 1), named.get("groups", 1), size)
    if node.target in _MAX_POOL_CALLS:
        named = dict(zip(("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
                         args, strict=False))
        named.update(kwargs)
        if named.get("return_indices") or named.get("ceil_mode"):
            return None
        kernel = named["kernel_size"]
        return _pool_slide("max", kernel, named.get("stride") or kernel, named.get("padding", 0),
                           named.get("dilation", 1), dims)
    return None


def _pool_slide(kind: str, kernel: Any, stride: Any, padding: Any, dilation: Any, dims: int = 2) -> _Slide:
    window = Window(ntuple(kernel, dims), ntuple(stride or kernel, dims), ntuple(padding, dims),
                    ntuple(dilation, dims))
    pads = tuple((p, p) for p in cast(tuple, window.padding))
    if kind == "max":
        pool = MAX_POOL[dims]
        return _Slide(window, pads, float("-inf"),
                      lambda crop: pool(crop, window.kernel, window.stride, 0, window.dilation))
    average = AVG_POOL[dims]
    return _Slide(window, pads, 0.0, lambda crop: average(crop, window.kernel, window.stride, 0))


def _shift(node: fx.Node, module: nn.Module | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[int, ...] | None:
    """The offset along each spatial dim (first dim first) of a constant, non-negative pad of
    the spatial dims, or None."""
    value = args[0] if args else None
    if not isinstance(value, Tensor) or value.dim() not in (3, 4, 5):
        return None
    dims = value.dim() - 2
    if module is not None:
        if not isinstance(module, (nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d,
                                   nn.ConstantPad3d)):
            return None
        pads = tuple(module.padding)
    elif node.op == "call_function" and node.target is F.pad:
        pads = tuple(args[1] if len(args) > 1 else kwargs["pad"])
        mode = args[2] if len(args) > 2 else kwargs.get("mode", "constant")
        if mode != "constant":
            return None
    else:
        return None
    if len(pads) % 2 or len(pads) > 2 * dims or any(p < 0 for p in pads):
        return None  # also pads channels, or crops
    befores = list(pads[0::2]) + [0] * (dims - len(pads) // 2)  # last dim first
    return tuple(reversed(befores))


def _grid(corner: Tensor, extents: Sequence[int]) -> list[Tensor]:
    """Per spatial dim a the positions ``corner[:, a] + arange(extents[a])``, shaped to broadcast
    into Tensor[B, *extents]."""
    dims = len(extents)
    return [(corner[:, a, None] + torch.arange(n, device=corner.device)).view(-1, *(n if b == a else 1
                                                                                      for b in range(dims)))
            for a, n in enumerate(extents)]


def _gather(value: Tensor, corner: Tensor, extents: Sequence[int]) -> Tensor:
    """value (Tensor[1, C, *S]) -> the boxes Tensor[B, C, *extents] with first corners ``corner``
    (LongTensor[B, d])."""
    picked = value[0][(slice(None), *_grid(corner, extents))]  # [C, B, *extents]
    return picked.movedim(0, 1).contiguous()


def _paste(dest: Tensor, corner: Tensor, local: _Local) -> Tensor:
    """dest (Tensor[B or 1, C, *E], whose first corner sits at ``corner`` of the map,
    LongTensor[B, d]) with ``local``'s patches written over it, dropping what falls outside: a
    new Tensor[B, C, *E]. One gather and one select, no host synchronisation: every shape here
    is known before the values are."""
    extents = dest.shape[2:]
    sizes = local.patch.shape[2:]
    inside: Tensor | None = None
    where: Tensor | int = 0
    for place, size in zip(_grid(corner - local.corner, extents), sizes, strict=True):  # positions in the patch
        ok = (place >= 0) & (place < size)
        inside = ok if inside is None else inside & ok
        where = where * size + place.clamp(0, size - 1)
    where = cast(Tensor, where).expand(corner.shape[0], *extents)
    patch = local.patch.flatten(2)
    picked = patch.gather(2, where.flatten(1)[:, None].expand(-1, patch.shape[1], -1))
    return torch.where(cast(Tensor, inside)[:, None], picked.view(-1, patch.shape[1], *extents).to(dest.dtype), dest)


def _affected(start: Tensor, length: int, span: int, stride: int, before: int, outputs: int) -> tuple[Tensor, int]:
    """First output (LongTensor[B]) and the count of a window layer's outputs along one axis
    whose windows meet input positions [start, start + length). The count is the most any
    start can need, ``(length + span - 2) // stride + 1``, known without reading ``start``
    (no host synchronisation, one shape for every batch)."""
    first = torch.div(start + before - span + 1 + stride - 1, stride, rounding_mode="floor").clamp(min=0)
    count = min((length + span - 2) // stride + 1, outputs)
    return first.clamp(max=outputs - count), count


class _Incremental:
    """The model's traced forward on one image (the unoccluded pass, kept whole) and on
    batches of occluded copies of it, recomputing only what each occluder can change."""

    def __init__(self, network: Network, x: Tensor, full_area: float) -> None:
        self.network = network
        self.full_area = full_area
        self.base: dict[fx.Node, Any] = {}
        self.padded: dict[fx.Node, Tensor] = {}
        """Window layer -> its input from the unoccluded pass, padded as the layer pads it."""
        for node in network.nodes:
            if node.op == "placeholder":
                self.base[node] = network.defaults.get(node.name, x)
                continue
            args = fx.node.map_arg(node.args, self.base.__getitem__)
            kwargs = fx.node.map_arg(node.kwargs, self.base.__getitem__)
            self.base[node] = evaluate(node, args, kwargs, network)
        self.input = next(n for n in network.nodes if n.op == "placeholder" and n.name not in network.defaults)
        order = {node: i for i, node in enumerate(network.nodes)}
        self.last_use = {node: max((order[u] for u in node.users if u in order), default=len(order))
                         for node in network.nodes}

    def default_batch(self, positions: int, memory_budget: int | None) -> int:
        """Positions per pass, from the planner (``deconvnet.chunks``): each position needs its
        two largest activations three times over, and its largest is the widest tensor."""
        x = self.base[self.input]
        return forward_chunk((v.numel() for v in self.base.values() if isinstance(v, Tensor)), x.element_size(),
                             positions, budget(memory_budget, x.device), x.device.type, "occlusion")

    def module(self, node: fx.Node) -> nn.Module | None:
        if node.op != "call_module":
            return None
        target = str(node.target)
        return self.network.substitutes.get(target) or self.network.model.get_submodule(target)

    def occluded(self, corners: Tensor, size: int, fill: float, watched: list[fx.Node]) -> list[Any]:
        """The watched nodes' values for occluders at ``corners`` (LongTensor[B, d], d the
        input's spatial dims): each a Tensor[B, ...], a :class:`_Local`, or the unoccluded value."""
        base = self.base[self.input]
        patch = base.new_full((corners.shape[0], base.shape[1], *[size] * (base.dim() - 2)), fill)
        env: dict[fx.Node, Any] = {self.input: _Local(patch, corners)}
        keep = set(watched)
        if self.full_area == 0.0:
            env[self.input] = self.whole(self.input, env[self.input])
        for i, node in enumerate(self.network.nodes):
            if node not in env:
                env[node] = self.step(node, env)
            for done in [n for n in node.all_input_nodes if self.last_use.get(n, -1) <= i and n not in keep]:
                env.pop(done, None)
        return [env.get(node, _SAME) for node in watched]

    def whole(self, node: fx.Node, value: Any) -> Any:
        """A value as Tensor[B, ...] (a :class:`_Local` pasted into the unoccluded value)."""
        if not isinstance(value, _Local):
            return value
        base = self.base[node]
        zero = torch.zeros(value.patch.shape[0], base.dim() - 2, dtype=torch.long, device=base.device)
        return _paste(base, zero, value)

    def step(self, node: fx.Node, env: dict[fx.Node, Any]) -> Any:
        inputs = [env.get(n, _SAME) for n in node.all_input_nodes]
        if all(v is _SAME for v in inputs):
            return _SAME
        base_out = self.base[node]
        if any(isinstance(v, Tensor) for v in inputs) or not any(isinstance(v, _Local) for v in inputs) \
                or not isinstance(base_out, Tensor):
            return self.run_whole(node, env)
        step = self.network.steps.get(node)
        if len(node.all_input_nodes) == 1 and isinstance(env.get(node.all_input_nodes[0]), _Local):
            # a constant pad moves the changed box (its mirror is a pointwise Crop, whose own
            # test below would find the padded map's size changed and run it whole)
            module = self.module(node)
            args = fx.node.map_arg(node.args, self.base.__getitem__)
            kwargs = fx.node.map_arg(node.kwargs, self.base.__getitem__)
            shift = _shift(node, module, args, kwargs)
            if shift is not None:
                value = env[node.all_input_nodes[0]]
                return _Local(value.patch, value.corner + torch.tensor(shift, device=value.corner.device))
        if step is not None and step.mirror.pointwise:
            local = self.pointwise(node, env, base_out)
            if local is not None:
                return local
        elif len(node.all_input_nodes) == 1 or (node.op == "call_function" and node.target in _CONV_CALLS):
            source = node.all_input_nodes[0]
            value = env.get(source, _SAME)
            if isinstance(value, _Local) and all(not isinstance(env.get(n, _SAME), _Local)
                                                 for n in node.all_input_nodes[1:]):
                module = self.module(node)
                args = fx.node.map_arg(node.args, self.base.__getitem__)
                kwargs = fx.node.map_arg(node.kwargs, self.base.__getitem__)
                same = isinstance(step.mirror, SameConvTranspose2d) if step is not None else False
                slide = _slide(node, module, args, kwargs, same)
                if slide is not None and base_out.dim() == value.patch.dim():
                    local = self.slide(node, source, value, slide, base_out)
                    if local is not None:
                        return local
        return self.run_whole(node, env)

    def run_whole(self, node: fx.Node, env: dict[fx.Node, Any]) -> Any:
        def value(n: fx.Node) -> Any:
            v = env.get(n, _SAME)
            return self.base[n] if v is _SAME else self.whole(n, v)

        args = fx.node.map_arg(node.args, value)
        kwargs = fx.node.map_arg(node.kwargs, value)
        return evaluate(node, args, kwargs, self.network)

    def small(self, extents: Sequence[int], shape: torch.Size) -> bool:
        return math.prod(extents) <= self.full_area * math.prod(shape[2:])

    def slide(self, node: fx.Node, source: fx.Node, value: _Local, slide: _Slide, base_out: Tensor) -> _Local | None:
        """A window layer (``node``) on the crops its changed outputs read."""
        base_in = self.base[source]
        sizes, outputs = base_in.shape[2:], base_out.shape[2:]
        window = slide.window
        span, stride = window.span(), window.stride
        affected = [_affected(value.corner[:, a], value.patch.shape[2 + a], span[a], stride[a], slide.pads[a][0],
                              outputs[a]) for a in range(len(sizes))]
        first = torch.stack([f for f, _ in affected], dim=1)  # [B, d]
        counts = [c for _, c in affected]
        if not self.small(counts, base_out.shape):
            return None
        padded = self.padded.get(node)  # per layer: layers reading one input pad it differently
        if padded is None:
            reach = window.extent(outputs)  # what the whole output reads, padded
            pads: list[int] = []
            for a in reversed(range(len(sizes))):  # F.pad's order: last dim first
                before, after = slide.pads[a]
                pads += [before, after + max(reach[a] - (sizes[a] + before + after), 0)]
            padded = F.pad(base_in, pads, value=slide.value)
            self.padded[node] = padded
        crop_extents = window.extent(counts)
        start = first * torch.tensor(stride, device=first.device)  # in padded coordinates
        befores = torch.tensor([before for before, _ in slide.pads], device=first.device)
        crop = _paste(_gather(padded, start, crop_extents), start - befores, value)
        return _Local(slide.run(crop), first)

    def pointwise(self, node: fx.Node, env: dict[fx.Node, Any], base_out: Tensor) -> _Local | None:
        """An element-wise layer on the union of its inputs' changed boxes."""
        if base_out.dim() < 3:
            return None
        sizes = base_out.shape[2:]
        locals_ = [env[n] for n in node.all_input_nodes if isinstance(env.get(n), _Local)]
        for n in node.all_input_nodes:
            base = self.base[n]
            if isinstance(env.get(n), _Local) and base.shape[2:] != sizes:
                return None
        first = locals_[0]
        same_box = all(v.patch.shape[2:] == first.patch.shape[2:] and torch.equal(v.corner, first.corner)
                       for v in locals_[1:])
        if same_box:
            corner, extents = first.corner, tuple(first.patch.shape[2:])
        else:
            low = torch.stack([v.corner for v in locals_]).amin(0)  # [B, d]
            high = torch.stack([v.corner + torch.tensor(v.patch.shape[2:], device=v.corner.device)
                                for v in locals_]).amax(0)
            extents = tuple(min(int(e), n) for e, n in zip((high - low).amax(0).tolist(), sizes, strict=True))
            corner = low.clamp(max=torch.tensor([n - e for n, e in zip(sizes, extents, strict=True)],
                                                device=low.device))
        if not self.small(extents, base_out.shape):
            return None

        def crop(n: fx.Node) -> Any:
            value, base = env.get(n, _SAME), self.base[n]
            if isinstance(value, _Local):
                if same_box:
                    return value.patch
                return _paste(_gather(base, corner, extents), corner, value)
            if isinstance(base, Tensor) and base.dim() == base_out.dim() and base.shape[2:] == sizes:
                return _gather(base, corner, extents) if base.shape[0] == 1 else None
            return base

        args = fx.node.map_arg(node.args, crop)
        kwargs = fx.node.map_arg(node.kwargs, crop)
        out = evaluate(node, args, kwargs, self.network)
        if not isinstance(out, Tensor) or out.dim() != base_out.dim() or tuple(out.shape[2:]) != extents:
            return None
        return _Local(out, corner)

    def channel_sum(self, value: Any, node: fx.Node, channel: int) -> Tensor:
        """Tensor[B]: the sum of ``channel``'s map in a watched value."""
        base = self.base[node][:, channel : channel + 1]
        if value is _SAME:
            raise AssertionError("unreachable: every layer downstream of the input changes")  # pragma: no cover
        spatial = tuple(range(1, base.dim()))
        if isinstance(value, _Local):
            replaced = _gather(base, value.corner, value.patch.shape[2:]).sum(spatial)
            return base.sum() - replaced + value.patch[:, channel].sum(spatial[:-1])
        return value[:, channel].sum(spatial[:-1])
