"""Receptive fields of every layer, computed from the traced graph.

Unit ``(i, j)`` of a layer sees input rows ``offset + i * stride ... offset + i * stride +
size - 1`` (and likewise columns; in 1-D and 3-D likewise along each spatial dim). Offsets can be
negative: the field reaches into the padding.
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
    """size, stride and offset in input pixels, each as (rows, columns); in 1-D (length,), in 3-D
    (depth, rows, columns)."""

    size: tuple[int, ...]
    stride: tuple[int, ...]
    offset: tuple[int, ...]

    def start(self, unit: tuple[int, ...]) -> tuple[int, ...]:
        """Where the field of ``unit`` (one index per spatial dim) begins along each dim (may be
        negative: the field reaches into the padding); it spans :attr:`size` from there."""
        return tuple(o + u * s for o, u, s in zip(self.offset, unit, self.stride, strict=True))

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
    dims = network.spatial_dims
    unit = ReceptiveField((1,) * dims, (1,) * dims, (0,) * dims)
    fields: dict[object, ReceptiveField | None] = {}
    for node, step in network.steps.items():
        below = [fields.get(i, unit) for i in step.inputs]  # the model input: a single pixel
        field = _union(below)
        record = records.get(step.name) if records is not None else None
        window = step.mirror.window_at(record.input_shape) if record is not None else step.mirror.window()
        if field is not None and window is not None and len(window.kernel) != len(field.size):
            field = None  # a window over other dims than the input's (a 2-D pool inside a 3-D net)
        elif field is not None and window is not None:
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
    if len({len(f.size) for f in fields}) != 1:  # type: ignore[union-attr]
        return None
    low = tuple(min(values) for values in zip(*(f.offset for f in fields), strict=True))  # type: ignore[union-attr]
    high = tuple(max(o + s for o, s in pairs) for pairs in zip(
        *(zip(f.offset, f.size, strict=True) for f in fields), strict=True))  # type: ignore[union-attr]
    return ReceptiveField(tuple(h - l for h, l in zip(high, low, strict=True)), first.stride, low)  # type: ignore[union-attr]


def _zip(function, *sizes: tuple[int, ...]) -> tuple[int, ...]:  # type: ignore[no-untyped-def]
    return tuple(function(*values) for values in zip(*sizes, strict=True))
