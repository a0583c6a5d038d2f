"""The one exception hierarchy of deconvnet.

Every error the library raises on purpose is a :class:`DeconvnetError`. The specific classes
also inherit the builtin that fits, so ``except ValueError`` keeps working for callers that do
not know about deconvnet.
"""

from __future__ import annotations

__all__ = [
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


class DeconvnetError(Exception):
    """Base class of every error deconvnet raises on purpose."""


class UnsupportedLayerError(DeconvnetError, TypeError):
    """A layer or operation in the model's forward has no deconvnet rule."""


class BranchingModelError(DeconvnetError, ValueError):
    """The model's forward is not a chain (a value feeds several layers, or several inputs)."""


class TracingError(DeconvnetError, TypeError):
    """torch.fx could not read the model's forward."""


class LayerNotFoundError(DeconvnetError, KeyError):
    """A layer name or module that is not a reconstructable layer of the model."""

    def __str__(self) -> str:
        # KeyError would print the message with quotes around it.
        return str(self.args[0]) if self.args else ""


class TargetOutOfRangeError(DeconvnetError, IndexError):
    """A channel or class index outside the layer's range."""


class InputError(DeconvnetError, ValueError):
    """An input tensor (or argument) of the wrong shape, type, dtype or value."""


class SignalShapeError(DeconvnetError, ValueError):
    """A user-made signal whose shape does not fit the layer it starts at."""


class TrainingModeError(DeconvnetError, RuntimeError):
    """The model would run with training semantics (dropout on, batch statistics)."""


class TraceMismatchError(DeconvnetError, RuntimeError):
    """The traced forward does not compute what ``model(x)`` computes: no map of it would be
    right, so none is made."""
