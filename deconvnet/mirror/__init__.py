"""The mirror modules: one reversed layer each, and the graph that runs them.

By kind: :mod:`~deconvnet.mirror.base` (what every layer reads: the call's :class:`Context`,
the forward's :class:`Record`, a replayable :class:`Call`; the :class:`MirrorLayer` base),
:mod:`~deconvnet.mirror.conv` (convolutions and linear maps, transposed),
:mod:`~deconvnet.mirror.pooling` (unpooling into the switches, average pools transposed),
:mod:`~deconvnet.mirror.activations` (where the method's rule acts),
:mod:`~deconvnet.mirror.normalization`, :mod:`~deconvnet.mirror.shapes` (pads, pieces,
permutations, reshapes, reductions), :mod:`~deconvnet.mirror.merging` (sums, concatenations,
products), :mod:`~deconvnet.mirror.general` (any other operation, by its exact
vector-Jacobian product) and :mod:`~deconvnet.mirror.graph` (the :class:`Mirror` that runs them).
A new layer type's mirror goes in the module of its kind.

Each mirror layer maps a signal on its forward layer's output, ``Tensor[N, K, ...]`` (``K``
targets per input), to a signal on that layer's input, reading what the forward pass recorded
for it (a :class:`Record`) and the per-call choices (a :class:`Context`). Weights are the forward
layer's own Parameters, never copies.

A layer also says what the rest of the package needs to know about it, once: its sliding
:meth:`~MirrorLayer.window` (receptive fields, cropping), whether it is ``pointwise`` (keeps
receptive fields), whether it is a ``rectifier`` (takes the method's rule), what it ``needs``
recorded, and whether it can run on receptive-field windows (:meth:`~MirrorLayer.croppable`).
"""

from ..functional import Window
from .activations import Activation, ReLU
from .base import INPUT, RECTIFIERS, RULES, Call, Context, MirrorLayer, Record
from .conv import (
    Conv1dOfTranspose,
    Conv2dOfTranspose,
    Conv3dOfTranspose,
    ConvTranspose1d,
    ConvTranspose2d,
    ConvTranspose3d,
    FetchedConvTranspose2d,
    LinearTranspose,
    SameConvTranspose2d,
    conv_of_transpose,
    conv_padding,
)
from .general import VJP
from .graph import Mirror, precision
from .merging import Add, Concat, Product
from .normalization import ChannelScale, Normalization
from .pooling import (
    AdaptiveAvgPool1dTranspose,
    AdaptiveAvgPool2dTranspose,
    AdaptiveAvgPool3dTranspose,
    AdaptiveMaxUnpool1d,
    AdaptiveMaxUnpool2d,
    AdaptiveMaxUnpool3d,
    AvgPool1dTranspose,
    AvgPool2dTranspose,
    AvgPool3dTranspose,
    MaxUnpool1d,
    MaxUnpool2d,
    MaxUnpool3d,
    OverlapUnpool1d,
    OverlapUnpool2d,
    OverlapUnpool3d,
    unpooling,
)
from .shapes import Broadcast, Crop, Identity, Permute, Reshape, Scatter

__all__ = [
    "Context",
    "precision",
    "Record",
    "Call",
    "MirrorLayer",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
    "SameConvTranspose2d",
    "FetchedConvTranspose2d",
    "conv_padding",
    "Conv1dOfTranspose",
    "Conv2dOfTranspose",
    "Conv3dOfTranspose",
    "conv_of_transpose",
    "MaxUnpool1d",
    "MaxUnpool2d",
    "MaxUnpool3d",
    "OverlapUnpool1d",
    "OverlapUnpool2d",
    "OverlapUnpool3d",
    "unpooling",
    "AdaptiveMaxUnpool1d",
    "AdaptiveMaxUnpool2d",
    "AdaptiveMaxUnpool3d",
    "ReLU",
    "Activation",
    "LinearTranspose",
    "ChannelScale",
    "AvgPool1dTranspose",
    "AvgPool2dTranspose",
    "AvgPool3dTranspose",
    "AdaptiveAvgPool1dTranspose",
    "AdaptiveAvgPool2dTranspose",
    "AdaptiveAvgPool3dTranspose",
    "Crop",
    "Scatter",
    "Permute",
    "Product",
    "Broadcast",
    "Normalization",
    "Reshape",
    "Identity",
    "Add",
    "Concat",
    "VJP",
    "Mirror",
    "RULES",
    "RECTIFIERS",
    "INPUT",
    "Window",
]
