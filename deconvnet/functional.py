"""The math of each mirror layer, as plain functions.

Every function maps a reconstruction signal on a layer's output to a signal on the layer's
input. Signals carry the targets as a second batch axis: ``Tensor[N, K, ...]`` is ``K``
reconstructions of each of ``N`` inputs. What the forward pass recorded (switches, input shapes)
is per input, ``Tensor[N, ...]``, and is broadcast over ``K`` without copies.
"""

from __future__ import annotations

import functools
import itertools
import math

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

__all__ = [
    "pair",
    "Window",
    "same_padding",
    "mask_outside",
    "conv_transpose_window",
    "unpool_window",
    "normalize_vjp",
    "sum_to",
    "channels_last",
    "flat_factor",
    "multiply_flat",
    "multiply_flat_",
    "conv_transpose2d",
    "conv_transpose",
    "ntuple",
    "unpool",
    "transpose_kernel",
    "unpool2d",
    "linear_transpose",
    "avg_pool2d_transpose",
    "adaptive_avg_pool2d_transpose",
]

Pair = tuple[int, int]
Sizes = tuple[int, ...]  # one per spatial dim: (length,), (rows, columns) or (depth, rows, columns)


def pair(value: int | Sequence[int]) -> Pair:
    """A layer's size argument as (rows, columns): ``3`` -> ``(3, 3)``."""
    if isinstance(value, int):
        return (value, value)
    first, second = value
    return (int(first), int(second))


def ntuple(value: int | Sequence[int], dims: int) -> Sizes:
    """A layer's size argument as one value per spatial dim: ``ntuple(3, 3)`` -> ``(3, 3, 3)``."""
    if isinstance(value, int):
        return (value,) * dims
    values = tuple(int(v) for v in value)
    if len(values) == 1 and dims > 1:
        return values * dims
    if len(values) != dims:
        raise ValueError(f"{values} has {len(values)} sizes for {dims} spatial dims")
    return values


@dataclass(frozen=True)
class Window:
    """A sliding-window layer's geometry (conv, pool, pad), each field one value per spatial
    dim: (rows, columns) in 2-D, (length,) in 1-D, (depth, rows, columns) in 3-D.

    kernel, stride, padding (before, i.e. top and left), dilation; padding and dilation default
    to 0 and 1 in every dim. A pad is a window of kernel 1 whose padding is the pad itself. Every
    feature that needs a layer's footprint (receptive fields, cropping, overlapping unpooling)
    reads it from here.
    """

    kernel: Sizes
    stride: Sizes
    padding: Sizes | None = None
    dilation: Sizes | None = None

    def __post_init__(self) -> None:
        dims = len(self.kernel)
        if self.padding is None:
            object.__setattr__(self, "padding", (0,) * dims)
        if self.dilation is None:
            object.__setattr__(self, "dilation", (1,) * dims)

    @property
    def dims(self) -> int:
        return len(self.kernel)

    def span(self) -> Sizes:
        """Input positions along each dim one output unit sees: ``d * (k - 1) + 1``."""
        return tuple(d * (k - 1) + 1 for k, d in zip(self.kernel, self.dilation, strict=True))  # type: ignore[arg-type]

    def extent(self, size: Sequence[int]) -> Sizes:
        """Input positions along each dim that ``size`` neighbouring output units see together."""
        return tuple((n - 1) * s + w for n, s, w in zip(size, self.stride, self.span(), strict=True))

    def overlaps(self) -> bool:
        """Whether neighbouring windows share input positions."""
        return any(k > 1 and s < w for k, s, w in zip(self.kernel, self.stride, self.span(), strict=True))

    def phases(self) -> Sizes:
        """Window groups per axis within which windows cannot overlap: ceil(span / stride)."""
        return tuple(-(-w // s) for w, s in zip(self.span(), self.stride, strict=True))


def conv_transpose2d(
    signal: Tensor,
    weight: Tensor,
    input_size: Sequence[int],
    stride: Pair,
    padding: tuple[Pair, Pair],
    dilation: Pair,
    groups: int,
    prepared: Callable[[torch.memory_format], Tensor] | None = None,
) -> Tensor:
    """Transpose of a bias-free 2-D convolution, recovering its exact input size.

    signal (Tensor[N, K, C_out, h, w]), weight (Tensor[C_out, C_in / groups, kh, kw]) the conv's
    own weight, input_size (H, W) the conv's input size, padding ((top, bottom), (left, right)).
    Returns Tensor[N, K, C_in, H, W].

    A strided conv drops up to ``stride - 1`` trailing rows; ``output_padding`` restores them, so
    AlexNet's 11/4 conv maps 55 back onto 224, not 223. ``padding="same"`` with an even kernel
    pads one more at the end than at the start: the transpose is cropped to size there.
    prepared: memory format -> ``transpose_kernel(weight, ..., memory_format)``, when the caller
    keeps kernels prepared.
    """
    n, k = signal.shape[:2]
    flat = signal.flatten(0, 1)
    memory_format = layout(flat.shape[0], flat.dim())
    flat = flat.contiguous(memory_format=memory_format)
    if prepared is not None:
        kernel = prepared(memory_format)
    else:
        kernel = transpose_kernel(weight, stride, dilation, groups, memory_format)
    size = tuple(int(v) for v in input_size)
    start = tuple(before for before, _ in padding)
    dims = len(size)
    form, pads, crop = _transpose_geometry(
        tuple(weight.shape), tuple(stride), start, tuple(dilation), groups, tuple(signal.shape[-dims:]), size
    )
    if form is _DIRECT:
        out = _direct_transpose(flat, kernel, pads, dilation, groups)
    elif form is _SUBPIXEL:
        out = _subpixel_transpose(flat, weight.shape, kernel, size, stride, start)
    else:
        out = _CONV_TRANSPOSE[dims](flat, kernel, None, stride, start, pads, groups, dilation)
        if crop:
            out = out[(..., *(slice(0, extent) for extent in size))]
    return out.view(n, k, *out.shape[1:])


conv_transpose = conv_transpose2d  # the same function in every dimension; the 2-D name is the one callers know
_CONV_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


# How conv_transpose2d runs a transposed conv: as the ordinary conv with the flipped kernel
# (stride 1), as sub-pixel phases, or as torch's transposed conv.
_DIRECT, _SUBPIXEL, _TRANSPOSED = "direct", "subpixel", "transposed"


@functools.lru_cache(maxsize=4096)
def _transpose_geometry(
    weight_shape: tuple[int, ...], stride: Pair, padding: Pair, dilation: Pair, groups: int, signal_size: tuple[int, ...],
    input_size: Pair,
) -> tuple[str, tuple[int, ...], bool]:
    """(form, pads, crop) of one transposed conv's call; cached: the per-call arithmetic cost
    more than a small layer's convolution. The direct form's pads are the flipped conv's
    (left, right, top, bottom), negative where it crops; the transposed form's are its
    output_padding, with crop: its output is longer than input_size."""
    kernel_size = weight_shape[2:]
    if _direct(weight_shape, stride, groups):
        # Output row i of the stride-1 transpose is row i + padding of the full correlation with
        # the flipped kernel, which the flipped conv gives with (reach - 1 - padding) rows of
        # zeros before, and after as many as make input_size rows (size - h + padding).
        per_axis = [
            (reach - 1 - before, size - h + before)
            for reach, before, size, h in zip(
                Window(tuple(kernel_size), stride, padding, dilation).span(), padding, input_size, signal_size,
                strict=True,
            )
        ]
        return _DIRECT, tuple(p for axis in reversed(per_axis) for p in axis), False  # F.pad's order: last axis first
    if _subpixel(kernel_size, stride, dilation, groups):
        return _SUBPIXEL, (), False
    window = Window(tuple(kernel_size), stride, padding, dilation)
    full = window.extent(signal_size)
    output_padding = tuple(max(0, size + 2 * before - reach)
                           for size, before, reach in zip(input_size, padding, full, strict=True))
    produced = ((h - 1) * s - 2 * p + r for h, s, p, r in zip(signal_size, stride, padding, window.span(), strict=True))
    crop = any(made > size for made, size in zip(produced, input_size, strict=True))  # the padded output is longer
    return _TRANSPOSED, output_padding, crop


# Output channels of a stride-1 conv up to which its transpose runs as the ordinary conv: CPU
# kernels run the transposed conv of a conv with few output channels up to 5x slower than the
# ordinary conv (DenseNet's 128 -> 32 3x3 convs, maps of 14x14), and that of a wide one 5-15%
# faster (VGG's, ResNet's).
_NARROW = 32


def _direct(weight_shape: Sequence[int], stride: Pair, groups: int) -> bool:
    """Whether a conv's transpose runs as the ordinary conv with the flipped kernel: stride 1,
    and depthwise, or 1x1, or with few output channels, where CPU kernels run that faster (one
    1x1 signal: as a matrix product). Measured per layer with ``F.conv2d`` against
    ``F.conv_transpose2d`` on MobileNetV2, EfficientNet-B0, ResNet-50, DenseNet-121 and VGG16."""
    if len(stride) not in (2, 3) or any(s != 1 for s in stride):
        # measured in 2-D and 3-D (MONAI's DenseNet121 at 64^3: torch's 3-D transposed conv of
        # its 128 -> 32 convs runs 6x slower than the ordinary conv); 1-D takes the transposed conv
        return False
    out_channels, per_group = weight_shape[:2]
    depthwise = groups > 1 and per_group == 1
    dense = groups == 1
    pointwise = all(k == 1 for k in weight_shape[2:])
    return depthwise or (dense and (pointwise or out_channels <= _NARROW))


def _direct_transpose(signal: Tensor, kernel: Tensor, pads: tuple[int, ...], dilation: Pair, groups: int) -> Tensor:
    """A stride-1 transposed conv as the ordinary conv with the flipped kernel (see
    :func:`transpose_kernel`): signal (Tensor[B, C_out, h, w]) -> Tensor[B, C_in, H, W].

    A 1x1 conv of one signal runs as a matrix product, which CPU kernels run fastest (MobileNetV2's
    stride-1 convs of one signal, summed: 17 ms as transposed convs, 13 as ordinary ones, 10 with
    the 1x1 ones as matrix products)."""
    dims = kernel.dim() - 2
    if signal.shape[0] == 1 and all(k == 1 for k in kernel.shape[2:]) and groups == 1 and not any(pads):
        c_in, c_out = kernel.shape[:2]
        out = torch.mm(kernel.reshape(c_in, c_out), signal.reshape(c_out, -1))
        return out.view(1, c_in, *signal.shape[2:])
    conv = CONV[dims]
    befores, afters = pads[0::2][::-1], pads[1::2][::-1]  # per axis, first axis first
    if all(b == a >= 0 for b, a in zip(befores, afters, strict=True)):
        return conv(signal, kernel, None, 1, befores, dilation, groups)
    return conv(F.pad(signal, pads), kernel, None, 1, 0, dilation, groups)


# torch's functions by the number of spatial dims, for code written once for all of them
CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


# The sub-pixel form multiplies the work of the transposed conv by the product over both axes of
# s * ceil(k / s) / k
# (zero taps where s does not divide k); it still wins where that waste is small
# (AlexNet's 11/4: 1.19, ResNet's 7/2 stem: 1.31) and loses 2-6x where it is not (3/2: 1.78,
# 1/2: 4), measured on CPU with the kernels prepared once.
_SUBPIXEL_WASTE = 1.5


def _subpixel(kernel_size: Sequence[int], stride: Pair, dilation: Pair, groups: int) -> bool:
    if len(stride) != 2 or max(stride) == 1 or groups != 1 or tuple(dilation) != (1, 1):
        return False
    waste = 1.0
    for k, s in zip(kernel_size, stride, strict=True):
        waste *= s * -(-int(k) // s) / int(k)  # taps run per axis over taps that exist
    return waste <= _SUBPIXEL_WASTE


def layout(batch: int, ndim: int = 4) -> torch.memory_format:
    """The memory format the mirror's convolutions run a batch of ``batch`` signals of ``ndim``
    dims (4 for images) in.

    Measured on CPU (2 threads) for images: for 16 signals channels_last runs 1.2-14x faster
    (depthwise convs the most); for one signal it gains little on dense convs and is 3-5x slower
    on depthwise ones, and converting the layout at every conv costs more than it saves. Signals
    and volumes stay contiguous (not measured).
    """
    return torch.channels_last if batch > 1 and ndim == 4 else torch.contiguous_format


def transpose_kernel(
    weight: Tensor, stride: Pair, dilation: Pair, groups: int, memory_format: torch.memory_format
) -> Tensor:
    """The kernel :func:`conv_transpose2d` runs, derived from a conv's weight (Tensor[C_out,
    C_in / groups, kh, kw]), in ``memory_format`` (the convolution kernels run it without
    reordering per call): where the transpose runs as the ordinary conv (stride 1, see
    :func:`_direct`) that conv's flipped kernel, Tensor[C_in, C_out / groups, kh, kw]; for a
    strided conv its sub-pixel phases; else the weight itself. A mirror layer prepares it once
    per weight version."""
    if _direct(weight.shape, stride, groups):
        spatial = tuple(range(2, weight.dim()))
        flipped = rearrange(weight, "(g o) i ... -> (g i) o ...", g=groups).flip(spatial)
        return flipped.contiguous(memory_format=memory_format)
    if not _subpixel(weight.shape[2:], stride, dilation, groups):
        return weight.contiguous(memory_format=memory_format)
    c_out, c_in, kh, kw = weight.shape
    sh, sw = stride
    mh, mw = -(-kh // sh), -(-kw // sw)  # taps per phase
    padded = F.pad(weight, (0, mw * sw - kw, 0, mh * sh - kh))
    # tap s * m + r of the transposed conv is tap M - 1 - m of the phase-r correlation
    phases = rearrange(padded, "o i (mh sh) (mw sw) -> (i sh sw) o mh mw", sh=sh, sw=sw).flip(2, 3)
    return phases.contiguous(memory_format=memory_format)


def _subpixel_transpose(
    signal: Tensor, shape: Sequence[int], phases: Tensor, input_size: Sequence[int], stride: Pair, padding: Pair
) -> Tensor:
    """A strided transposed conv as one stride-1 conv and a pixel shuffle.

    signal (Tensor[B, C_out, h, w]) -> Tensor[B, C_in, H, W]; shape: the conv weight's shape;
    phases: :func:`transpose_kernel`. Output pixel ``s * q + r`` only meets kernel taps
    ``s * m + r``: each of the ``s * s`` phases is a small ordinary conv, and all phases run as
    the output channels of one conv, which CPU kernels do several times faster than the strided
    transposed conv (AlexNet's 11x11/4: about 3x).
    """
    sh, sw = stride
    mh, mw = phases.shape[-2:]
    h, w = signal.shape[-2:]
    rows = -(-(padding[0] + input_size[0]) // sh)  # phase rows the cropped output needs
    cols = -(-(padding[1] + input_size[1]) // sw)
    extra_h = max(0, rows - (h + mh - 1))
    extra_w = max(0, cols - (w + mw - 1))
    out = F.conv2d(F.pad(signal, (mw - 1, mw - 1 + extra_w, mh - 1, mh - 1 + extra_h)), phases)
    out = F.pixel_shuffle(out, sh) if sh == sw else _shuffle(out, sh, sw)
    return out[..., padding[0] : padding[0] + input_size[0], padding[1] : padding[1] + input_size[1]]


def _shuffle(x: Tensor, sh: int, sw: int) -> Tensor:
    """pixel_shuffle with different factors per axis: [B, C*sh*sw, h, w] -> [B, C, h*sh, w*sw]."""
    return rearrange(x, "b (c rh rw) h w -> b c (h rh) (w rw)", rh=sh, rw=sw)


def unpool2d(
    signal: Tensor,
    switches: Tensor,
    input_size: Sequence[int],
    accumulate: bool,
    phases: Sequence[int] | None = None,
) -> Tensor:
    """Put each pooled value back where the forward max came from, in any number of spatial dims.

    signal (Tensor[N, K, C, *pooled]), switches (Tensor[N, C, *pooled]) the flat positions in
    the input map that ``max_pool{1,2,3}d(..., return_indices=True)`` returned, input_size (H, W)
    (or (L,), or (D, H, W)). Returns Tensor[N, K, C, *input_size].

    With overlapping windows one input position can be the max of several windows; its signal
    must be the sum of theirs (``accumulate=True``), which is what the gradient does.
    ``nn.MaxUnpool2d`` writes instead of adding and keeps only one of them.

    phases (one per dim): sum deterministically. CUDA's ``scatter_add_`` adds colliding values
    in no fixed order; instead the windows are split into ``prod(phases)`` groups (every m-th
    window along each axis) whose windows cannot overlap, each group is written without
    collisions, and the groups are added in a fixed order. ``m`` must be at least window span /
    stride.
    """
    if accumulate and phases is not None:
        out = None
        for start in itertools.product(*(range(m) for m in phases)):
            picked = (..., *(slice(a, None, m) for a, m in zip(start, phases, strict=True)))
            part = unpool2d(signal[picked], switches[picked], input_size, False)
            out = part if out is None else out + part
        return cast(Tensor, out)
    n, k, c = signal.shape[:3]
    pooled = math.prod(signal.shape[3:])
    dims = len(input_size)
    flat_size = math.prod(int(v) for v in input_size)
    if dims == 2 and signal.stride(2) == 1 and c > 1:
        # channels_last signal (from a transposed conv): scatter over positions with channels
        # innermost, and hand back a channels_last result without copying the signal.
        h, w = signal.shape[3:]
        source = signal.permute(0, 1, 3, 4, 2).reshape(n, k, h * w, c)
        index = switches.permute(0, 2, 3, 1).reshape(n, 1, h * w, c).expand(n, k, h * w, c)
        out = signal.new_zeros(n, k, flat_size, c)
        dim = 2
    else:
        source = signal.reshape(n, k, c, pooled)
        index = switches.flatten(2).unsqueeze(1).expand(n, k, c, pooled)
        out = signal.new_zeros(n, k, c, flat_size)
        dim = 3
    if accumulate:
        out.scatter_add_(dim, index, source)
    else:
        out.scatter_(dim, index, source)
    if dim == 2:
        return out.view(n, k, *input_size, c).permute(0, 1, 4, 2, 3)
    return out.view(n, k, c, *input_size)


unpool = unpool2d  # the same function in every dimension


def linear_transpose(signal: Tensor, weight: Tensor) -> Tensor:
    """Transpose of a bias-free linear layer.

    signal (Tensor[..., out_features]), weight (Tensor[out_features, in_features]).
    Returns Tensor[..., in_features].
    """
    return signal @ weight


def _shape_stub(like: Tensor, shape: Sequence[int]) -> Tensor:
    # The pooling backward kernels read only their input's shape: a zero-stride view costs nothing.
    return like.new_zeros(()).expand(*shape)


def avg_pool2d_transpose(
    signal: Tensor,
    input_size: Sequence[int],
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: int | None,
) -> Tensor:
    """Transpose of ``avg_pool{1,2,3}d``: each window's signal spread evenly back over the window.

    signal (Tensor[N, K, C, *pooled]), input_size (H, W), (L,) or (D, H, W). Returns
    Tensor[N, K, C, *input_size]. A 1-D pool is the 2-D one over rows of height 1, as torch runs
    ``avg_pool1d``.
    """
    if len(input_size) == 1:
        out = avg_pool2d_transpose(signal.unsqueeze(-2), (1, *input_size), (1, *kernel_size), (1, *stride),
                                   (0, *padding), ceil_mode, count_include_pad, divisor_override)
        return out.squeeze(-2)
    n, k, c = signal.shape[:3]
    flat = signal.flatten(0, 1)
    backward = torch.ops.aten.avg_pool2d_backward if len(input_size) == 2 else torch.ops.aten.avg_pool3d_backward
    out = backward(
        flat,
        _shape_stub(flat, (n * k, c, *input_size)),
        list(kernel_size),
        list(stride),
        list(padding),
        ceil_mode,
        count_include_pad,
        divisor_override,
    )
    return out.unflatten(0, (n, k))


def adaptive_avg_pool2d_transpose(signal: Tensor, input_size: Sequence[int]) -> Tensor:
    """Transpose of ``adaptive_avg_pool{1,2,3}d``, also where it upsamples (VGG's head at 97 px).

    signal (Tensor[N, K, C, *pooled]), input_size (H, W), (L,) or (D, H, W). Returns
    Tensor[N, K, C, *input_size].
    """
    n, k, c = signal.shape[:3]
    dims = len(input_size)
    if all(s == 1 for s in signal.shape[3:]):  # global pooling: spread evenly, no copy
        return (signal / math.prod(int(v) for v in input_size)).expand(n, k, c, *input_size)
    if dims == 1:  # torch runs adaptive_avg_pool1d as the 2-D pool over rows of height 1
        return adaptive_avg_pool2d_transpose(signal.unsqueeze(-2), (1, *input_size)).squeeze(-2)
    flat = signal.flatten(0, 1)
    backward = torch.ops.aten._adaptive_avg_pool2d_backward if dims == 2 else \
        torch.ops.aten._adaptive_avg_pool3d_backward
    out = backward(flat.contiguous(), _shape_stub(flat, (n * k, c, *input_size)))
    return out.unflatten(0, (n, k))


def same_padding(size: Sequence[int], window: Window) -> tuple[Pair, ...]:
    """TensorFlow's "SAME" padding of ``window`` (its own padding ignored) for an input of
    ``size`` (H, W): ((top, bottom), (left, right)), giving ``ceil(size / stride)`` outputs with
    the odd extra row or column padded at the end; one (before, after) per dim in any dims."""
    pads = []
    for n, stride, span in zip(size, window.stride, window.span(), strict=True):
        total = max((-(-n // stride) - 1) * stride + span - n, 0)
        pads.append((total // 2, total - total // 2))
    return tuple(pads)


def mask_outside(signal: Tensor, origin: Tensor, size: Sequence[int]) -> Tensor:
    """Zero the positions of windows (Tensor[T, C, *w], first corner at ``origin``
    LongTensor[T, d]) that fall outside a map of ``size`` (d sizes: (H, W), (L,) or (D, H, W))."""
    dims = len(size)
    inside = None
    for axis, (extent, limit) in enumerate(zip(signal.shape[-dims:], size, strict=True)):
        places = origin[:, axis, None] + torch.arange(extent, device=signal.device)  # [T, w_axis]
        ok = ((places >= 0) & (places < limit)).view(-1, *(extent if a == axis else 1 for a in range(dims)))
        inside = ok if inside is None else inside & ok
    return signal * cast(Tensor, inside)[:, None].to(signal.dtype)


def origin_below(window: Window, origin: Tensor) -> Tensor:
    """Where input windows start, for output windows starting at ``origin`` (LongTensor[T, d])."""
    stride = torch.tensor(window.stride, device=origin.device)
    return origin * stride - torch.tensor(window.padding, device=origin.device)


def conv_transpose_window(
    signal: Tensor, weight: Tensor, window: Window, groups: int, origin: Tensor, input_size: Sequence[int],
    prepared: Callable[[torch.memory_format], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """A transposed conv on windows: signal (Tensor[T, C_out, *w]) at ``origin`` ->
    (Tensor[T, C_in, *w'], its origin), masked to the input map of ``input_size``."""
    dims = window.dims
    size = window.extent(signal.shape[-dims:])
    # The whole transposed output, unpadded: the window's own padding is its origin shift.
    out = conv_transpose2d(
        signal.unsqueeze(1), weight, size, window.stride, ((0, 0),) * dims, window.dilation, groups, prepared
    ).squeeze(1)
    below = origin_below(window, origin)
    return mask_outside(out, below, input_size), below


def unpool_window(
    signal: Tensor, switches: Tensor, window: Window, origin: Tensor, images: Tensor, input_size: Sequence[int]
) -> tuple[Tensor, Tensor]:
    """Unpooling on windows: signal (Tensor[T, C, *w]) at ``origin`` (LongTensor[T, d]) of
    input ``images`` (LongTensor[T]), switches (Tensor[N, C, *pooled]) flat positions in input
    maps of ``input_size`` -> (Tensor[T, C, *w'], its origin); colliding signals add up."""
    targets, channels = signal.shape[:2]
    extents = signal.shape[2:]
    dims = len(extents)
    pooled = switches.shape[2:]
    # switches[images[t], :, p_0[t, a_0], p_1[t, a_1], ...] -> [T, C, *w], each axis clamped to the map
    index: list[Tensor] = [images.view(-1, *[1] * dims)]
    for axis, (extent, limit) in enumerate(zip(extents, pooled, strict=True)):
        places = (origin[:, axis, None] + torch.arange(extent, device=signal.device)).clamp(0, limit - 1)
        index.append(places.view(-1, *(extent if a == axis else 1 for a in range(dims))))
    picked = switches.movedim(1, -1)[tuple(index)].movedim(-1, 1)  # [T, C, *w]
    below = origin_below(window, origin)
    out_size = window.extent(extents)
    # Each switch's flat input position -> its place in the output window, axis by axis (last fastest).
    local = torch.zeros_like(picked)
    rest = picked
    scale = 1
    for axis in reversed(range(dims)):
        coordinate = rest % int(input_size[axis])
        rest = rest // int(input_size[axis])
        local = local + (coordinate - below[:, axis].view(-1, *[1] * (dims + 1))) * scale
        scale *= out_size[axis]
    # Positions outside the pooled map carry zero signal; clamp their (meaningless) targets.
    local = local.clamp(0, scale - 1)
    out = signal.new_zeros(targets, channels, scale)
    out.scatter_add_(2, local.flatten(2), signal.reshape(targets, channels, -1))
    return out.view(targets, channels, *out_size), below


def sum_to(signal: Tensor, shape: Sequence[int]) -> Tensor:
    """Sum a signal (Tensor[N, K, *broadcast shape]) back onto an input of ``shape`` (N, ...)
    that the forward broadcast: the transpose of broadcasting."""
    target = (signal.shape[0], signal.shape[1], *shape[1:])
    extra = signal.dim() - len(target)
    if extra > 0:  # the input had fewer dims than the output: broadcast prepended them
        raise ValueError(f"cannot sum {tuple(signal.shape)} back onto {tuple(shape)}")
    if tuple(signal.shape) == target:
        return signal
    return signal.sum_to_size(target)


def normalize_vjp(signal: Tensor, x: Tensor, dims: Sequence[int], weight: Tensor | None, eps: float) -> Tensor:
    """Vector-Jacobian product of ``(x - mean) / sqrt(var + eps) * weight`` over ``dims``.

    The shared math of layer and group normalisation. signal (Tensor[N, K, ...]) on the output,
    x (Tensor[N, ...]) the recorded input, dims the normalised dims of x (all > 0), weight
    broadcastable to x (or None). Returns Tensor[N, K, ...] on the input.
    """
    shifted = [d + 1 for d in dims]  # dims of the signal, which has K after N
    mean = x.mean(dim=tuple(dims), keepdim=True)
    var = x.var(dim=tuple(dims), unbiased=False, keepdim=True)
    rstd = (var + eps).rsqrt()
    xhat = ((x - mean) * rstd).unsqueeze(1)
    scaled = signal if weight is None else signal * weight.unsqueeze(1) if weight.dim() == x.dim() else signal * weight
    return (
        scaled
        - scaled.mean(dim=shifted, keepdim=True)
        - xhat * (scaled * xhat).mean(dim=shifted, keepdim=True)
    ) * rstd.unsqueeze(1)


def channels_last(signal: Tensor) -> bool:
    """Whether a signal (Tensor[N, K, C, H, W]) is laid out channels last, as a transposed
    conv leaves it: its flat views then run over (H, W, C)."""
    return signal.dim() == 5 and signal.stride(2) == 1 and signal.shape[2] > 1


def flat_factor(signal: Tensor, factor: Tensor) -> Tensor:
    """A per-input factor (Tensor[N, ...]) as Tensor[N, 1, L] in the element order of
    ``signal``'s flat view (see :func:`multiply_flat`), in ``signal``'s dtype. A copy where the
    layouts differ: a call that runs several chunks makes it once (see ``Context.memo``)."""
    if channels_last(signal):
        factor = factor.permute(0, 2, 3, 1)
    return factor.reshape(signal.shape[0], 1, -1).to(signal.dtype)


def _broadcastable(flat: Tensor, signal: Tensor) -> Tensor:
    """A :func:`flat_factor` as a view that broadcasts against ``signal`` as it is."""
    if channels_last(signal):
        return flat.view(signal.shape[0], 1, *signal.shape[3:], signal.shape[2]).permute(0, 1, 4, 2, 3)
    return flat.view(signal.shape[0], 1, *signal.shape[2:])


def multiply_flat(signal: Tensor, flat: Tensor) -> Tensor:
    """signal (Tensor[N, K, ...]) times a per-input factor broadcast over K, the factor given as
    its :func:`flat_factor` for ``signal``.

    Done on flat views in the signal's own memory layout (channels_last after a transposed
    conv): broadcasting the 5-D tensors directly is several times slower on CPU.
    """
    n, k = signal.shape[:2]
    if channels_last(signal):
        out = signal.permute(0, 1, 3, 4, 2).reshape(n, k, -1) * flat
        return out.view(n, k, *signal.shape[3:], signal.shape[2]).permute(0, 1, 4, 2, 3)
    return (signal.reshape(n, k, -1) * flat).view(signal.shape)


def multiply_flat_(signal: Tensor, flat: Tensor) -> Tensor:
    """:func:`multiply_flat` written into ``signal``; returns it."""
    n, k = signal.shape[:2]
    viewed = signal.permute(0, 1, 3, 4, 2) if channels_last(signal) else signal
    if viewed.is_contiguous():
        viewed.view(n, k, -1).mul_(flat)
    else:  # a layout the flat view cannot take
        signal.mul_(_broadcastable(flat, signal))
    return signal
