"""Receptive fields of every layer, computed from the traced graph.

Unit ``(i, j)`` of a layer sees input rows ``offset + i * stride ... offset + i * stride +
size - 1`` (and likewise columns). Offsets can be negative: the field reaches into the padding.
Layers after a global operation (adaptive pooling, flatten, linear) see the whole input and have
no spatial field (``None``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .builder import Network
from .mirror import Record

__all__ = ["ReceptiveField", "receptive_fields"]


@dataclass(frozen=True)
class ReceptiveField:
    """size, stride and offset in input pixels, each as (rows, columns)."""

    size: tuple[int, int]
    stride: tuple[int, int]
    offset: tuple[int, int]

    def box(self, i: int, j: int, height: int | None = None, width: int | None = None) -> tuple[int, int, int, int]:
        """(top, left, bottom, right), bottom/right exclusive, of unit (i, j)'s field; clipped to
        the image when its height and width are given."""
        top = self.offset[0] + i * self.stride[0]
        left = self.offset[1] + j * self.stride[1]
        bottom, right = top + self.size[0], left + self.size[1]
        if height is not None and width is not None:
            top, left = max(0, top), max(0, left)
            bottom, right = min(height, bottom), min(width, right)
        return top, left, bottom, right


def receptive_fields(network: Network, records: Mapping[str, Record] | None = None) -> dict[str, ReceptiveField | None]:
    """Every layer name of ``network`` -> its receptive field (``None`` once it is global).

    records: a trace's (:attr:`Trace.records`): then layers whose padding depends on the input's
    size (TensorFlow's "same") have a window for that size, and the fields are that input's.

    Each mirror layer declares what it does to the field: a sliding ``window()`` grows it, a
    ``pointwise`` layer keeps it, anything else (adaptive pooling, flatten, linear, a general
    VJP layer) makes it global. Where branches meet (add, cat, a gate), the field is the
    smallest box holding every branch's field (``None`` if their strides differ or one is global).
    """
    unit = ReceptiveField((1, 1), (1, 1), (0, 0))
    fields: dict[object, ReceptiveField | None] = {}
    for node, step in network.steps.items():
        below = [fields.get(i, unit) for i in step.inputs]  # the model input: a single pixel
        field = _union(below)
        record = records.get(step.name) if records is not None else None
        window = step.mirror.window_at(record.input_shape) if record is not None else step.mirror.window()
        if field is not None and window is not None:
            field = ReceptiveField(
                size=_zip(lambda f, w, j: f + (w - 1) * j, field.size, window.span(), field.stride),
                stride=_zip(lambda j, s: j * s, field.stride, window.stride),
                offset=_zip(lambda o, p, j: o - p * j, field.offset, window.padding, field.stride),
            )
        elif window is None and not step.mirror.pointwise:
            field = None
        fields[node] = field
    return {name: fields[step.node] for name, step in network.layers.items()}


def _union(fields: list[ReceptiveField | None]) -> ReceptiveField | None:
    if any(f is None for f in fields) or len({f.stride for f in fields}) != 1:  # type: ignore[union-attr]
        return None
    first = fields[0]
    if len(fields) == 1:
        return first
    top = min(f.offset[0] for f in fields)  # type: ignore[union-attr]
    left = min(f.offset[1] for f in fields)  # type: ignore[union-attr]
    bottom = max(f.offset[0] + f.size[0] for f in fields)  # type: ignore[union-attr]
    right = max(f.offset[1] + f.size[1] for f in fields)  # type: ignore[union-attr]
    return ReceptiveField((bottom - top, right - left), first.stride, (top, left))  # type: ignore[union-attr]


def _zip(function, *pairs: tuple[int, int]) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    first, second = (function(*values) for values in zip(*pairs, strict=True))
    return (first, second)
