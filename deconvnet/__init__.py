"""deconvnet: what a convolutional network sees, by Zeiler & Fergus's deconvolutional network.

    dn = DeconvNet(model)                         # torch.fx graph -> mirror of shared-weight layers
    trace = dn.trace(x)                           # one forward pass: switches and activations
    dn.reconstruct_classes(trace, [207, 281])     # class units -> Tensor[N, K, C, H, W]
    dn.reconstruct(trace, "features.28", None)    # every channel's strongest unit -> input space
    print(dn.mirror)                              # the network upside down

Chains and graphs (residual adds, concatenations, gates, channels-last blocks) are mirrored,
every ReLU-family activation taking the method's rule (``rectifiers="relu"``: ReLU alone);
``rule="guided"`` or ``"gradient"`` turns the same mirror into guided backpropagation or the
plain gradient. Layers without a hand-written mirror are reversed by their exact
vector-Jacobian product (``dn.general_layers``; ``strict=True`` refuses them). More layer types
are one ``layer_rules=`` entry or :func:`register_rule` call. Pictures: :mod:`deconvnet.pictures.image`
and :mod:`deconvnet.pictures.figures`; the command line: ``deconvnet --help``.
"""

from .capture import Trace
from .deconvnet import DeconvNet, Region, Targets
from .errors import (
    BranchingModelError,
    DeconvnetError,
    InputError,
    LayerNotFoundError,
    SignalShapeError,
    TargetOutOfRangeError,
    TraceMismatchError,
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
    "Region",
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
    "TraceMismatchError",
]

__version__ = "0.1.0"
