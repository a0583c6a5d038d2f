"""deconvnet: what a convolutional network sees, by Zeiler & Fergus's deconvolutional network.

    dn = DeconvNet(model)                         # torch.fx graph -> mirror of shared-weight layers
    trace = dn.trace(x)                           # one forward pass: switches and activations
    dn.reconstruct_classes(trace, [207, 281])     # class units -> Tensor[N, K, C, H, W]
    dn.reconstruct(trace, "features.28", None)    # every channel's strongest unit -> input space
    print(dn.mirror)                              # the network upside down

Chains and branching CNNs (residual adds, concatenations) are mirrored; ``rule="guided"`` or
``"gradient"`` turns the same mirror into guided backpropagation or the plain gradient. Support
for more layer types is one :func:`register_rule` call. Pictures: :mod:`deconvnet.image` and
:mod:`deconvnet.figures`; the command line: ``deconvnet --help``.
"""

from .capture import Trace
from .deconvnet import DeconvNet, Targets
from .errors import (
    BranchingModelError,
    DeconvnetError,
    InputError,
    LayerNotFoundError,
    SignalShapeError,
    TargetOutOfRangeError,
    TracingError,
    TrainingModeError,
    UnsupportedLayerError,
)
from .mirror import Context, Mirror, MirrorLayer, Record
from .rules import Rule, register_rule, supported_layers

__all__ = [
    "DeconvNet",
    "Trace",
    "Targets",
    "Mirror",
    "MirrorLayer",
    "Context",
    "Record",
    "Rule",
    "register_rule",
    "supported_layers",
    "DeconvnetError",
    "UnsupportedLayerError",
    "BranchingModelError",
    "TracingError",
    "LayerNotFoundError",
    "TargetOutOfRangeError",
    "InputError",
    "SignalShapeError",
    "TrainingModeError",
]

__version__ = "0.1.0"
