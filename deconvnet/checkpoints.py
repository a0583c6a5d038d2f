"""Checkpoints as people save them, read safely and fitted to a model.

Read (:func:`read_checkpoint`): ``.safetensors`` files (the ``safetensors`` package) and
``torch.save`` files, always with ``weights_only=True`` (nothing unpickles code). The state dict
may be plain or inside ``{"state_dict": ...}`` (Lightning, timm), ``{"model_state_dict": ...}``
or ``{"model": ...}``, beside anything else (epochs, optimiser state).

Fitted (:func:`fit_state`): keys under a wrapper's prefix, ``module.`` (DistributedDataParallel),
``model.`` (Lightning), ``_orig_mod.`` (``torch.compile``) or any such nesting, are matched to the
model's own; :func:`head_size` reads how many classes the checkpoint's head has; a checkpoint that
still does not fit raises an error of a few lines: what differs, how much, what to try.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .errors import InputError

__all__ = ["Checkpoint", "CheckpointMismatchError", "fit_state", "head_size", "read_checkpoint"]

# Where a checkpoint file keeps its state dict, in the order they are tried.
CONTAINER_KEYS = ("state_dict", "model_state_dict", "model")
# Where it may keep its class names.
LABEL_KEYS = ("id2label", "class_names", "classes", "labels", "categories")
WRAPPER_PREFIXES = ("module.", "model.", "_orig_mod.")
_SHOWN = 3  # example keys an error names per kind of difference


class CheckpointMismatchError(InputError):
    """A checkpoint whose tensors do not fit the model it is loaded into."""


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint file holds.

    state: its state dict, keys as saved; where: how it was found ("a plain state dict",
    "checkpoint['state_dict']", "a .safetensors file"); labels: class names it carries (a
    list, or index -> name), when it has them.
    """

    path: Path
    state: dict[str, Tensor]
    where: str
    labels: list[str] | dict[int, str] | None = None
    extra: tuple[str, ...] = field(default=())
    """Other top-level entries, not weights (an epoch, optimiser state)."""


def _is_state(value: Any) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(isinstance(k, str) for k in value) and all(
        isinstance(v, Tensor) for v in value.values())


def _labels(value: Any, path: Path) -> list[str] | dict[int, str] | None:
    if isinstance(value, str):  # safetensors metadata holds strings: JSON
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    if isinstance(value, Mapping):
        try:
            return {int(k): str(v) for k, v in value.items()}
        except (TypeError, ValueError) as error:
            raise InputError(f"checkpoint {path}'s class names map non-integer keys: {error}") from error
    return None


def read_checkpoint(path: Path | str) -> Checkpoint:
    """A checkpoint file's state dict and class names; InputError when it is missing, holds code
    or holds no state dict."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint {path} does not exist" if not path.exists() else f"checkpoint {path} is not a file")
    if path.suffix == ".safetensors":
        try:
            from safetensors import safe_open
        except ImportError as error:
            raise InputError("reading .safetensors needs the safetensors package: pip install safetensors") from error
        try:
            with safe_open(str(path), framework="pt", device="cpu") as opened:
                state = {key: opened.get_tensor(key) for key in opened.keys()}  # noqa: SIM118 - not a dict
                metadata = opened.metadata() or {}
        except Exception as error:  # safetensors raises its own error types for corrupt headers
            raise InputError(f"cannot read {path} as safetensors: {str(error).splitlines()[0]}") from error
        labels = next((_labels(metadata[k], path) for k in LABEL_KEYS if k in metadata), None)
        return Checkpoint(path, state, "a .safetensors file", labels)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickled code, corrupt files: each fails its own way
        text = str(error)
        if "Unsupported global" in text:  # a class the safe unpickler will not build: pickled code
            raise InputError(
                f"checkpoint {path} holds pickled Python objects (a whole model saved with torch.save(model)?), "
                "which are not loaded: nothing here unpickles code. Save model.state_dict() instead"
            ) from error
        reason = next((line.strip() for line in text.splitlines() if line.strip().startswith("Unsupported")), None)
        reason = reason or (text.splitlines()[0] if text else type(error).__name__)
        raise InputError(f"cannot read checkpoint {path}: not a PyTorch or safetensors file ({reason})") from error
    if _is_state(saved):
        return Checkpoint(path, dict(saved), "a plain state dict")
    if not isinstance(saved, Mapping):
        raise InputError(f"checkpoint {path} holds a {type(saved).__name__}, not a state dict")
    labels = next((_labels(saved[k], path) for k in LABEL_KEYS if k in saved), None)
    for key in CONTAINER_KEYS:
        if _is_state(saved.get(key)):
            extra = tuple(str(k) for k in saved if k != key)
            return Checkpoint(path, dict(saved[key]), f"checkpoint[{key!r}]", labels, extra)
    nested = [k for k, v in saved.items() if _is_state(v)]
    if len(nested) == 1:
        return Checkpoint(path, dict(saved[nested[0]]), f"checkpoint[{nested[0]!r}]", labels,
                          tuple(str(k) for k in saved if k != nested[0]))
    tensors = {k: v for k, v in saved.items() if isinstance(v, Tensor)}
    if tensors and len(tensors) >= len(saved) - 3:  # a state dict with a few extras saved beside it
        return Checkpoint(path, tensors, "a state dict with other entries", labels,
                          tuple(str(k) for k in saved if k not in tensors))
    keys = ", ".join(repr(k) for k in list(saved)[:8])
    raise InputError(f"checkpoint {path} holds no state dict: its keys are {keys}; expected a plain state dict "
                     f"or one under {', '.join(repr(k) for k in CONTAINER_KEYS)}")


def _strip(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def fit_state(state: Mapping[str, Tensor], expected: Mapping[str, Any]) -> tuple[dict[str, Tensor], str]:
    """The state under the wrapper prefix whose keys match ``expected``'s best, and that prefix.

    Prefixes are :data:`WRAPPER_PREFIXES` nested up to three deep in any order
    (``model._orig_mod.``); keys outside the chosen prefix (a Lightning module's loss weights)
    are left out. With no prefix matching more keys, the state is returned as it is.
    """
    best, chosen = dict(state), ""
    found = len(best.keys() & expected.keys())
    nested = ("".join(parts) for depth in (1, 2, 3) for parts in itertools.product(WRAPPER_PREFIXES, repeat=depth))
    for prefix in nested:  # shortest first: a tie keeps the shorter
        stripped = _strip(state, prefix)
        count = len(stripped.keys() & expected.keys())
        if count > found:
            best, chosen, found = stripped, prefix, count
    return best, chosen


def head_size(state: Mapping[str, Tensor], expected: Mapping[str, Any]) -> int | None:
    """How many classes the checkpoint's head has, when it differs from ``expected``'s.

    The head is told by its shapes: the tensors whose shapes differ from the model's only in their
    first dimension, all of the model's in one size (its number of classes) and all of the
    checkpoint's in another. None when no tensor differs that way, or others differ too.
    """
    ours: set[int] = set()
    theirs: set[int] = set()
    for key, tensor in state.items():
        if key not in expected:
            continue
        want = tuple(expected[key].shape)
        got = tuple(tensor.shape)
        if want == got:
            continue
        if len(want) != len(got) or not got or want[1:] != got[1:]:
            return None
        ours.add(want[0])
        theirs.add(got[0])
    return theirs.pop() if len(ours) == 1 and len(theirs) == 1 else None


def _shape(tensor: Any) -> str:
    return "[" + ", ".join(str(d) for d in tensor.shape) + "]"


def load_state(model: nn.Module, checkpoint: Checkpoint, model_name: str) -> str:
    """Load ``checkpoint`` into ``model`` (strictly, but for batch-norm counters a checkpoint may
    lack); returns what was loaded, for the user ("122 tensors, keys under 'model.', 1 outside
    it left out"). CheckpointMismatchError, a few lines long, when it does not fit."""
    expected = model.state_dict()
    state, prefix = fit_state(checkpoint.state, expected)
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in state if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or mismatched:
        lines = [f"checkpoint {checkpoint.path} does not fit {model_name}: of its {len(state)} tensors"
                 f"{f' under {prefix!r}' if prefix else ''}, {len(mismatched)} have another shape, "
                 f"{len(unexpected)} are not in the model, and the model has {len(missing)} it lacks"]
        if mismatched:
            lines.append("  other shapes: " + "; ".join(
                f"{k} {_shape(state[k])} (model {_shape(expected[k])})" for k in mismatched[:_SHOWN]))
        if unexpected:
            lines.append("  not in the model: " + "; ".join(f"{k} {_shape(state[k])}" for k in unexpected[:_SHOWN]))
        if missing:
            lines.append("  lacking: " + "; ".join(f"{k} {_shape(expected[k])}" for k in missing[:_SHOWN]))
        first = ", ".join(list(state)[:4])
        lines.append(f"  try: the architecture it was trained as (the checkpoint's first keys: {first}), "
                     "or --num-classes N if only the head differs")
        raise CheckpointMismatchError("\n".join(lines))
    filled = {**{k: v for k, v in expected.items() if k not in state}, **state}
    model.load_state_dict(filled, strict=True)
    text = f"{len(state)} tensors"
    if prefix:
        text += f", keys under {prefix!r}"
    if len(state) < len(checkpoint.state):
        outside = [k for k in checkpoint.state if not k.startswith(prefix)]
        text += f", {len(outside)} outside it left out ({', '.join(outside[:3])}{', ...' if len(outside) > 3 else ''})"
    return text
