"""The public object: :class:`DeconvNet`, a model's deconvolutional mirror and its API."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from .builder import Network, Step, build
from .capture import Trace, run, run_layers, run_lean
from .chunks import budget, check_chunk_size, collect, mirror_chunk, window_chunk
from .crop import croppable, project_units
from .errors import InputError, SignalShapeError, TargetOutOfRangeError
from .mirror import RECTIFIERS, RULES, Context, Mirror, MirrorLayer
from .receptive import ReceptiveField, receptive_fields
from .rules import DEFAULT_RULES, Rule

_R = TypeVar("_R")

__all__ = ["DeconvNet", "Targets"]

Targets = int | Sequence[int] | Tensor | None
"""Which channels or classes: one index, a sequence of indices, or ``None`` for all."""

# Crop single-unit projections when the receptive field covers at most this share of the input.
_CROP_AREA = 0.5


class DeconvNet:
    """The deconvolutional network of Zeiler & Fergus for a PyTorch CNN, as an explicit mirror.

    ``DeconvNet(model)`` traces ``model.forward`` with torch.fx and builds :attr:`mirror`, a
    stack of transposed convolutions sharing the model's weights, unpooling layers fed by the
    switches of the forward pass, and ReLUs. The model is never changed.

    rule: what the mirror does at a rectifier ``f`` with recorded input ``x``, the default for
        every call: ``"deconvnet"`` (``relu(g)`` of the signal ``g``, Zeiler & Fergus),
        ``"guided"`` (guided backpropagation: ``relu(f'(x) * g)``) or ``"gradient"`` (the plain
        gradient: ``f'(x) * g``). Every ``reconstruct*`` method takes ``rule=`` to override it.
    rectifiers: which activations take the rule: ``"all"`` (default) the ReLU family (ReLU,
        ReLU6, LeakyReLU, PReLU, RReLU, ELU, CELU, SELU, GELU, SiLU, Mish, Hardswish, Softplus);
        ``"relu"`` ReLU alone, every other activation passing its plain gradient, which is what
        Captum and zennit compute. Sigmoid, Tanh, Hardsigmoid, Softmax are never rectifiers.
    strict: refuse (``UnsupportedLayerError``) any layer that would be reversed by the general
        VJP layer (its exact vector-Jacobian product) rather than by a hand-written mirror layer.
    layer_rules: ``{module type: Rule or mirror factory}`` for this instance only, on top of
        the defaults (see :func:`deconvnet.register_rule`).
    memory_budget: bytes a batch of targets may use in the mirror; with the device's throughput
        and index caps it sizes the chunks when ``chunk_size`` is not given (see
        :mod:`deconvnet.chunks`). Default: 2 GiB on CPU; on CUDA half of the free memory plus
        what PyTorch's caching allocator holds unused.
    deterministic: bitwise reproducible results on CUDA. ``True``: overlapping max-pool windows
        sum in a fixed order (a few more scatters) and the mirror's convolutions use cuDNN's
        deterministic algorithms while it runs (``cudnn.deterministic`` on, ``cudnn.benchmark``
        off, both restored after); ``False``: the fast scatter-add, whose order varies; ``None``
        (default): follow ``torch.use_deterministic_algorithms``. CPU results are reproducible
        either way.
    mirror_dtype: run the mirror under ``torch.autocast`` in this dtype (``torch.bfloat16``, or
        ``torch.float16`` on CUDA); results come in that dtype. The forward pass is always traced
        in the model's own precision (no autocast), so switches and kept units are exact.

    Precision follows PyTorch's global settings, as the model's own forward does: on CUDA,
    convolutions use TF32 unless ``torch.backends.cudnn.allow_tf32 = False`` (PyTorch's
    default is on), matrix products unless ``torch.backends.cuda.matmul.allow_tf32`` is off
    (default off). TF32 keeps 10 bits of mantissa: results then differ from float32 ones (and
    from Captum's, which runs under the same settings) by about 1e-3 relative per layer.

    Every ``reconstruct*`` method takes a batch ``x`` (Tensor[N, C, H, W]) or a :class:`Trace`
    of one and returns Tensor[N, K, C, H, W] (``K`` targets per input) on the model's device.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        rule: str = "deconvnet",
        rectifiers: str = "all",
        strict: bool = False,
        layer_rules: dict[type[nn.Module], Rule | Callable[[nn.Module], MirrorLayer]] | None = None,
        memory_budget: int | None = None,
        deterministic: bool | None = None,
        mirror_dtype: torch.dtype | None = None,
    ) -> None:
        if memory_budget is not None and (
            isinstance(memory_budget, bool) or not isinstance(memory_budget, int)
            or memory_budget <= 0
        ):
            raise InputError(f"memory_budget must be a positive number of bytes, got {memory_budget!r}")
        if deterministic not in (None, True, False):
            raise InputError(f"deterministic must be True, False or None, got {deterministic!r}")
        if mirror_dtype not in (None, torch.float32, torch.bfloat16, torch.float16):
            raise InputError(f"mirror_dtype must be torch.bfloat16, torch.float16, torch.float32 or None, got {mirror_dtype!r}")
        self.mirror_dtype = mirror_dtype
        if strict not in (True, False):
            raise InputError(f"strict must be True or False, got {strict!r}")
        _check_choice("rectifiers", rectifiers, RECTIFIERS)
        self.model = model
        self.rule = self._rule(rule)
        self.rectifiers = rectifiers
        self.deterministic = deterministic
        self.memory_budget = memory_budget
        self._network: Network = build(model, None if layer_rules is None else DEFAULT_RULES.over(layer_rules),
                                       strict=strict)
        self._fields: tuple[Mirror, dict[str, ReceptiveField | None]] | None = None
        self._sized_fields: dict[tuple[int, ...], dict[str, ReceptiveField | None]] = {}

    @property
    def _receptive_fields(self) -> dict[str, ReceptiveField | None]:
        """Each layer's receptive field, for the network as it is now (the first trace may
        rebuild it: see :meth:`~deconvnet.builder.Network.refine`)."""
        if self._fields is None or self._fields[0] is not self._network.mirror:
            self._fields = (self._network.mirror, receptive_fields(self._network))
            self._sized_fields.clear()
        return self._fields[1]

    def __repr__(self) -> str:
        return f"DeconvNet({type(self.model).__name__}, {len(self.mirror)} mirror layers)"

    @property
    def device(self) -> torch.device:
        """Where the model's parameters live (the CPU for a model without any): inputs move there."""
        parameter = next(self.model.parameters(), None)
        return parameter.device if parameter is not None else torch.device("cpu")

    @property
    def mirror(self) -> Mirror:
        """The mirror: one reversed layer per forward layer, from the output down to the input."""
        return self._network.mirror

    @property
    def layers(self) -> list[str]:
        """The names one can reconstruct from, in forward order.

        A module found at the first trace to fold the batch dimension inside (a window
        partition, whose sizes come from the input) is from then on one layer, reversed whole:
        the names inside it are gone after the first trace.
        """
        return list(self._network.layers)

    @property
    def network(self) -> Network:
        """The model as read by the builder: forward steps, layer names, the mirror."""
        return self._network

    @property
    def general_layers(self) -> list[str]:
        """The layers reversed by the general VJP layer (their exact vector-Jacobian product)
        rather than by a hand-written mirror layer; empty with ``strict=True``. Modules that
        fold the batch dimension inside join them at the first trace (see :attr:`layers`)."""
        return self.mirror.general()

    def context(self, rule: str | None = None) -> Context:
        """The per-call choices handed to every mirror layer."""
        return Context(self._rule(rule), self.rectifiers, self.deterministic)

    # --- tracing --------------------------------------------------------------------------

    def trace(self, x: Tensor) -> Trace:
        """Run one forward pass of x (Tensor[N, C, H, W]) and keep switches and activations."""
        return self._forward(run, x)

    def _forward(self, function: Callable[..., _R], x: Tensor, *args: Any) -> _R:
        """``function(network, x, *args)`` (one of :mod:`deconvnet.capture`'s runs) on the checked
        input, with autocast off: switches and kept units in full precision."""
        x = self._checked_input(x)
        with torch.autocast(x.device.type, enabled=False):
            return function(self._network, x, *args)

    def activations(self, x: Tensor, layers: Sequence[str | nn.Module]) -> dict[str, Tensor]:
        """Just the outputs of ``layers`` for x (Tensor[N, C, H, W]): layer name -> Tensor[N, ...].
        A forward pass that keeps nothing else (what mining over a dataset needs)."""
        if isinstance(layers, (str, nn.Module)) or not isinstance(layers, Sequence):
            raise InputError(
                f"layers must be a sequence of layer names or modules, got {type(layers).__name__}; "
                "for one layer pass [layer] or use dn.activation(x, layer)"
            )
        steps = [self._network.resolve(layer) for layer in layers]
        values = self._forward(run_layers, x, steps)
        return {step.name: value for step, value in zip(steps, values, strict=True)}

    def _checked_input(self, x: Tensor) -> Tensor:
        """x validated as a batch for the model, on the model's device."""
        if not isinstance(x, Tensor):
            raise InputError(f"x must be a Tensor[N, C, H, W], got {type(x).__name__}")
        if x.dim() != 4:
            hint = "; add a batch dimension with x.unsqueeze(0)" if x.dim() == 3 else ""
            raise InputError(f"x must be a Tensor[N, C, H, W], got shape {tuple(x.shape)}{hint}")
        if x.shape[0] == 0:
            raise InputError("x is an empty batch (N = 0)")
        if not x.is_floating_point():
            raise InputError(f"x must be a floating-point tensor, got {x.dtype}")
        finite = torch.isfinite(x)
        if not bool(finite.all()):
            nan = int(torch.isnan(x).sum())
            raise InputError(
                f"x holds {nan} NaN and {int((~finite).sum()) - nan} infinite values (of {x.numel()}); a max-pool's "
                "switches and a rectifier's mask over them are arbitrary, so no reconstruction of it would mean "
                "anything: replace them first (torch.nan_to_num, or fix the preprocessing)"
            )
        expected = self._network.input_channels
        if expected is not None and x.shape[1] != expected:
            first = next(iter(self._network.steps.values()))
            raise InputError(
                f"x has {x.shape[1]} channels but {first.name} "
                f"({type(first.module).__name__}) expects {expected}"
            )
        parameter = next(self.model.parameters(), None)
        if parameter is not None:
            if x.dtype != parameter.dtype:
                raise InputError(
                    f"x is {x.dtype} but the model's parameters are {parameter.dtype}; "
                    f"convert x with x.to({parameter.dtype})"
                )
            # From pinned memory to a GPU the copy need not wait for the device (mining streams).
            x = x.to(parameter.device, non_blocking=parameter.device.type == "cuda")
        return x

    def _rule(self, rule: str | None) -> str:
        if rule is None:
            return self.rule
        _check_choice("rule", rule, RULES)
        return rule

    def _traced(self, x: Tensor | Trace) -> Trace:
        if isinstance(x, Trace):
            if x.network is not self._network:
                raise InputError("this Trace was made by another DeconvNet; trace x with this one")
            return x
        return self.trace(x)

    def _traced_lean(self, x: Tensor | Trace, context: Context, start: Step | None = None) -> Trace:
        """A given trace, or one that keeps only what one call under ``context`` reads from the
        output (or ``start``) down (see :func:`~deconvnet.capture.run_lean`): a Tensor x is
        traced for that call alone, so nothing else needs keeping."""
        if isinstance(x, Trace):
            return self._traced(x)
        return self._forward(run_lean, x, context, start)

    # --- reconstructions ------------------------------------------------------------------

    @torch.no_grad()
    def reconstruct(
        self,
        x: Tensor | Trace,
        layer: str | nn.Module,
        channels: Targets = None,
        *,
        mode: str = "max",
        signal: str = "activation",
        chunk_size: int | None = None,
        crop: bool | None = None,
        rule: str | None = None,
    ) -> Tensor:
        """Project channels of ``layer``'s output down to input space.

        layer: a name in :attr:`layers` (e.g. ``"features.28"``) or the module itself; the
            signal starts at that layer's output.
        channels: an index, a sequence of indices, or ``None`` for every channel (for a
            ``Linear`` output a channel is one unit).
        mode: ``"max"`` keeps the single strongest activation of each channel (the first on
            ties, as ``torch.argmax``) and zeros the rest of the layer; ``"map"`` keeps the
            channel's whole map.
        signal: ``"activation"`` keeps the kept units' values (the paper); ``"unit"`` sets them
            to 1 (then ``mode="max"`` equals Captum's ``NeuronDeconvolution`` at that position).
        crop: with ``mode="max"``, compute each projection on its unit's receptive field only
            (exactly zero outside it) and paste it back. ``None`` (default) crops wherever the
            field is smaller than the input and the mirror below ``layer`` holds only convs,
            max-pools, ReLUs, batch-norms and identities; ``False`` never crops; ``True``
            requires it.
        returns Tensor[N, K, C, H, W] with K the number of channels asked for.
        """
        chunks, total = self._channel_chunks(x, layer, channels, mode, signal, chunk_size, crop, rule)
        return collect(chunks, total)

    def iter_channels(
        self,
        x: Tensor | Trace,
        layer: str | nn.Module,
        channels: Targets = None,
        *,
        mode: str = "max",
        signal: str = "activation",
        chunk_size: int | None = None,
        crop: bool | None = None,
        rule: str | None = None,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """:meth:`reconstruct` a chunk at a time: yields (channels LongTensor[k],
        Tensor[N, k, C, H, W]) so that all channels of a large batch can be written out or
        reduced without holding Tensor[N, K, C, H, W] at once. Arguments are checked before the
        first chunk is computed."""
        chunks, _ = self._channel_chunks(x, layer, channels, mode, signal, chunk_size, crop, rule)
        return chunks

    @torch.no_grad()
    def _channel_chunks(
        self,
        x: Tensor | Trace,
        layer: str | nn.Module,
        channels: Targets,
        mode: str,
        signal: str,
        chunk_size: int | None,
        crop: bool | None,
        rule: str | None,
    ) -> tuple[Iterator[tuple[Tensor, Tensor]], int]:
        _check_choice("mode", mode, ("max", "map"))
        _check_choice("signal", signal, ("activation", "unit"))
        check_chunk_size(chunk_size)
        if crop not in (None, True, False):
            raise InputError(f"crop must be True, False or None, got {crop!r}")
        trace = self._traced(x)
        step = self._network.resolve(layer)
        activation = trace.activations[step.name]
        if activation.dim() < 2:
            raise InputError(f"{step.name}'s output has no channel dimension")
        count = activation.shape[1]
        targets = _targets(channels, count, "channel", f"{step.name} has {count} channels", activation.device)
        flat = activation.reshape(*activation.shape[:2], -1)  # [N, C, P]
        n = flat.shape[0]
        batch = torch.arange(n, device=flat.device)[:, None]
        strongest = flat.argmax(dim=2) if mode == "max" else None  # [N, C]
        context = self.context(rule)
        below = self._crop_chain(step, activation, mode, crop, trace, context)
        if below is not None:
            return self._cropped(trace, below, activation, flat, strongest, targets, signal, chunk_size,
                                 context), targets.numel()

        def make(chunk: Tensor) -> Tensor:
            k = chunk.numel()
            out = flat.new_zeros(n, k, *flat.shape[1:])
            slot = torch.arange(k, device=flat.device)
            if strongest is not None:
                where = strongest[:, chunk]  # [N, k]
                kept = flat[batch, chunk, where] if signal == "activation" else 1.0
                out[batch, slot, chunk, where] = kept
            else:
                out[:, slot, chunk] = flat[:, chunk] if signal == "activation" else 1.0
            return out.view(n, k, *activation.shape[1:])

        return self._chunks(trace, step, targets, make, chunk_size, context), targets.numel()

    @torch.no_grad()
    def reconstruct_classes(
        self,
        x: Tensor | Trace,
        classes: Targets = None,
        *,
        chunk_size: int | None = None,
        rule: str | None = None,
    ) -> Tensor:
        """Reconstruct from 1 at each class's output unit, 0 elsewhere, through the classifier.

        Equals Captum's ``Deconvolution(model).attribute(x, target=c)`` for each class ``c``.
        classes: an index, a sequence of indices, or ``None`` for every output.
        returns Tensor[N, K, C, H, W].
        """
        chunks, total = self._class_chunks(x, classes, chunk_size, rule)
        return collect(chunks, total)

    def iter_classes(
        self, x: Tensor | Trace, classes: Targets = None, *, chunk_size: int | None = None, rule: str | None = None
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """:meth:`reconstruct_classes` a chunk at a time: yields (classes LongTensor[k],
        Tensor[N, k, C, H, W]), e.g. all 1000 classes of 64 images streamed to disk or reduced
        to per-class heatmaps without holding Tensor[N, 1000, C, H, W]."""
        chunks, _ = self._class_chunks(x, classes, chunk_size, rule)
        return chunks

    @torch.no_grad()
    def _class_chunks(
        self, x: Tensor | Trace, classes: Targets, chunk_size: int | None, rule: str | None
    ) -> tuple[Iterator[tuple[Tensor, Tensor]], int]:
        check_chunk_size(chunk_size)
        context = self.context(rule)
        trace = self._traced_lean(x, context)
        output = trace.output
        if output.dim() != 2:
            raise InputError(
                f"reconstruct_classes needs a model output of shape [N, classes], got "
                f"{tuple(output.shape)}; use reconstruct or reconstruct_from for other outputs"
            )
        count = output.shape[1]
        step = self._network.steps[self._network.output]
        targets = _targets(classes, count, "class", f"the model has {count} classes", output.device)

        def make(chunk: Tensor) -> Tensor:
            out = output.new_zeros(output.shape[0], chunk.numel(), count)
            out[:, torch.arange(chunk.numel(), device=out.device), chunk] = 1.0
            return out

        return self._chunks(trace, step, targets, make, chunk_size, context), targets.numel()

    @torch.no_grad()
    def reconstruct_from(
        self,
        x: Tensor | Trace,
        layer: str | nn.Module,
        signal: Tensor,
        *,
        chunk_size: int | None = None,
        rule: str | None = None,
    ) -> Tensor:
        """Run a user-made signal (Tensor[N, K, *layer output shape]) down the mirror.

        returns Tensor[N, K, C, H, W].
        """
        check_chunk_size(chunk_size)
        trace = self._traced(x)
        step = self._network.resolve(layer)
        shape = tuple(trace.activations[step.name].shape)
        if not isinstance(signal, Tensor):
            raise SignalShapeError(f"signal must be a Tensor[N, K, ...], got {type(signal).__name__}")
        if signal.dim() != len(shape) + 1 or signal.shape[0] != shape[0] or tuple(signal.shape[2:]) != shape[1:]:
            raise SignalShapeError(
                f"signal for {step.name} must have shape [N, K, {', '.join(map(str, shape[1:]))}] "
                f"with N = {shape[0]}, got {tuple(signal.shape)}"
            )
        if signal.shape[1] == 0:
            raise SignalShapeError("signal holds no targets (K = 0)")
        if signal.dtype != trace.output.dtype:
            raise SignalShapeError(f"signal is {signal.dtype} but the model computes in {trace.output.dtype}")
        signal = signal.to(trace.output.device)
        targets = torch.arange(signal.shape[1], device=signal.device)
        chunks = self._chunks(trace, step, targets, lambda chunk: signal[:, chunk], chunk_size, self.context(rule))
        return collect(chunks, targets.numel())

    def layer_name(self, layer: str | nn.Module) -> str:
        """The name in :attr:`layers` of ``layer`` (a name or a module of the model)."""
        return self._network.resolve(layer).name

    def receptive_field(self, layer: str | nn.Module, trace: Trace | None = None) -> ReceptiveField | None:
        """The input region each unit of ``layer`` sees; ``None`` when it sees everything.

        trace: for models whose padding depends on the input's size (TensorFlow's "same", as in
        EfficientNet-Lite and timm's ``*_tf_*`` models), the field for the size of this trace's
        input; without it their layers have none.
        """
        name = self.layer_name(layer)
        field = self._receptive_fields[name]
        if field is None and trace is not None:
            shape = tuple(self._traced(trace).input.shape[1:])
            if shape not in self._sized_fields:
                self._sized_fields[shape] = receptive_fields(self._network, trace.records)
            field = self._sized_fields[shape][name]
        return field

    def _crop_chain(
        self, step: Step, activation: Tensor, mode: str, crop: bool | None, trace: Trace, context: Context
    ) -> list[MirrorLayer] | None:
        """The mirror layers to run on receptive-field windows, or None to run uncropped."""
        if crop is False:
            return None
        below = self.mirror.chain_below(step.name)
        field = self._receptive_fields[step.name]
        usable = (
            mode == "max" and activation.dim() == 4 and field is not None
            and below is not None and croppable(below, context)
        )
        if crop is True and not usable:
            raise InputError(
                f"crop=True needs mode='max', rule='deconvnet' and, below {step.name}, a chain of "
                "only convs, max-pools, rectifiers, batch-norms, constant pads and identities"
            )
        if not usable:
            return None
        height, width = trace.input.shape[-2:]
        small = field.size[0] * field.size[1] <= _CROP_AREA * height * width  # type: ignore[union-attr]
        return below if crop is True or small else None

    def _cropped(
        self,
        trace: Trace,
        below: list[MirrorLayer],
        activation: Tensor,
        flat: Tensor,
        strongest: Tensor,
        targets: Tensor,
        signal: str,
        chunk_size: int | None,
        context: Context,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        n, width = activation.shape[0], activation.shape[-1]
        channels_in = activation.shape[1]
        size = chunk_size or window_chunk(trace, below, n, channels_in, budget(self.memory_budget, trace.input.device),
                                          targets.numel())
        return self._cropped_chunks(trace, below, flat, strongest, targets, signal, size, context, width, channels_in)

    @torch.no_grad()
    def _cropped_chunks(
        self, trace: Trace, below: list[MirrorLayer], flat: Tensor, strongest: Tensor, targets: Tensor, signal: str,
        size: int, context: Context, width: int, channels_in: int,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        n, total = flat.shape[0], targets.numel()
        for lo in range(0, total, size):
            chunk = targets[lo : lo + size]
            k = chunk.numel()
            images = torch.arange(n, device=flat.device).repeat_interleave(k)
            channels = chunk.repeat(n)
            where = strongest[images, channels]
            values = flat[images, channels, where] if signal == "activation" else torch.ones_like(where, dtype=flat.dtype)
            units = torch.stack([where // width, where % width], dim=1)
            slots = torch.arange(k, device=flat.device).repeat(n)
            with self._precision(trace):
                result = flat.new_zeros(n, k, *trace.input.shape[1:], dtype=self.mirror_dtype or flat.dtype)
                project_units(below, trace.records, values, units, channels, images, result, slots, channels_in,
                              context)
            yield chunk, result

    @torch.no_grad()
    def reconstruct_units(
        self,
        x: Tensor | Trace,
        layer: str | nn.Module,
        images: Tensor | Sequence[int],
        channels: Tensor | Sequence[int],
        positions: Tensor | Sequence[int],
        values: Tensor | None = None,
        *,
        crop: bool | None = None,
        chunk_size: int | None = None,
        rule: str | None = None,
    ) -> Tensor:
        """Project T single units of ``layer``'s map, each alone: the top-9 figure's projections.

        images, channels, positions (LongTensor[T] each): unit t is at flat spatial index
        ``positions[t]`` of channel ``channels[t]`` of input ``images[t]`` of the batch.
        values (Tensor[T] or None): the signal kept at each unit; None keeps its activation.
        crop: as in :meth:`reconstruct` (each unit runs on its receptive field when possible).
        returns Tensor[T, C, H, W].
        """
        check_chunk_size(chunk_size)
        if crop not in (None, True, False):
            raise InputError(f"crop must be True, False or None, got {crop!r}")
        step = self._network.resolve(layer)
        context = self.context(rule)
        trace = self._traced_lean(x, context, step)
        activation = trace.activations[step.name]
        if activation.dim() != 4:
            raise InputError(f"reconstruct_units needs a layer with spatial maps; {step.name} outputs {tuple(activation.shape)}")
        n, count, height, width = activation.shape
        device = activation.device
        images_t = _indices("images", images, n, f"the batch has {n} inputs", device)
        channels_t = _indices("channels", channels, count, f"{step.name} has {count} channels", device)
        positions_t = _indices("positions", positions, height * width, f"{step.name} maps have {height * width} positions", device)
        total = images_t.numel()
        if not channels_t.numel() == positions_t.numel() == total:
            raise InputError(f"images, channels and positions must have one entry per unit; got {total}, "
                             f"{channels_t.numel()} and {positions_t.numel()}")
        flat = activation.reshape(n, count, -1)
        kept = flat[images_t, channels_t, positions_t]
        if values is not None:
            if not isinstance(values, Tensor) or values.shape != (total,):
                raise InputError(f"values must be a Tensor[{total}] or None")
            kept = values.to(device=device, dtype=flat.dtype)
        below = self._crop_chain(step, activation, "max", crop, trace, context)
        if below is not None:
            result = flat.new_zeros(total, 1, *trace.input.shape[1:], dtype=self.mirror_dtype or flat.dtype)
            size = chunk_size or window_chunk(trace, below, 1, count, budget(self.memory_budget, device), total)
            for lo in range(0, total, size):
                part = slice(lo, lo + size)
                units = torch.stack([positions_t[part] // width, positions_t[part] % width], dim=1)
                rows = torch.arange(lo, min(lo + size, total), device=device)
                with self._precision(trace):
                    project_units(below, trace.records, kept[part], units, channels_t[part], images_t[part], result,
                                  torch.zeros_like(rows), count, context, rows=rows)
            return result[:, 0]
        # Uncropped: unit t is target slot[t] of its own input; inputs with fewer units get
        # zero targets in the remaining slots (one unit per image, as in top-9, wastes none).
        seen: dict[int, int] = {}
        slots = []
        for image in images_t.tolist():
            slots.append(seen.get(image, 0))
            seen[image] = slots[-1] + 1
        slot_t = torch.tensor(slots, device=device)
        width_k = max(seen.values())

        def make(chunk: Tensor) -> Tensor:
            out = flat.new_zeros(n, chunk.numel(), count, height * width)
            chosen = (slot_t >= chunk[0]) & (slot_t <= chunk[-1])
            out[images_t[chosen], slot_t[chosen] - chunk[0], channels_t[chosen], positions_t[chosen]] = kept[chosen]
            return out.view(n, chunk.numel(), count, height, width)

        projected = collect(self._chunks(trace, step, torch.arange(width_k, device=device), make, chunk_size, context),
                             width_k)
        return projected[images_t, slot_t]

    def activation(self, x: Tensor | Trace, layer: str | nn.Module) -> Tensor:
        """The output of ``layer`` for x: Tensor[N, ...]."""
        trace = self._traced(x)
        return trace.activations[self._network.resolve(layer).name]

    # --- batching -------------------------------------------------------------------------

    def _chunks(
        self,
        trace: Trace,
        start: Step,
        targets: Tensor,
        make: Callable[[Tensor], Tensor],
        chunk_size: int | None,
        context: Context,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """The mirror over the targets, ``chunk_size`` at a time (default: as many as the memory
        budget holds): yields (targets of the chunk, Tensor[N, k, ...])."""
        size = chunk_size or mirror_chunk(self.mirror, trace, start.name, budget(self.memory_budget, trace.input.device),
                                          targets.numel())
        for lo in range(0, targets.numel(), size):
            chunk = targets[lo : lo + size]
            with torch.no_grad(), self._precision(trace):  # not around the yield: the caller keeps its modes
                out = self.mirror(make(chunk), trace.records, start.name, context)
            yield chunk, out

    @contextmanager
    def _precision(self, trace: Trace) -> Iterator[None]:
        """While the mirror runs: autocast to ``mirror_dtype`` (or off) and, with
        ``deterministic=True`` on CUDA, cuDNN's deterministic algorithms (no autotuning), restored
        after. TF32 follows PyTorch's own settings (``torch.backends.cudnn.allow_tf32``,
        ``torch.backends.cuda.matmul.allow_tf32``), as the model's forward does."""
        device = trace.input.device.type
        cudnn = torch.backends.cudnn
        saved = cudnn.deterministic, cudnn.benchmark
        switch = bool(self.deterministic) and device == "cuda"
        if switch:
            cudnn.deterministic, cudnn.benchmark = True, False
        try:
            with torch.autocast(device, dtype=self.mirror_dtype or torch.float32, enabled=self.mirror_dtype is not None):
                yield
        finally:
            if switch:
                cudnn.deterministic, cudnn.benchmark = saved


def _indices(name: str, value: Tensor | Sequence[int], count: int, owner: str, device: torch.device) -> Tensor:
    """A LongTensor[T] of indices below ``count``."""
    tensor = torch.as_tensor(value, device=device) if not isinstance(value, Tensor) else value.to(device)
    if tensor.dim() != 1 or tensor.is_floating_point() or tensor.dtype == torch.bool or tensor.numel() == 0:
        raise InputError(f"{name} must be a non-empty 1-D integer sequence or tensor, got shape {tuple(tensor.shape)} "
                         f"of {tensor.dtype}")
    if int(tensor.min()) < 0 or int(tensor.max()) >= count:
        bad = int(tensor.max()) if int(tensor.max()) >= count else int(tensor.min())
        raise TargetOutOfRangeError(f"{name[:-1]} {bad} is out of range: {owner} (0..{count - 1})")
    return tensor.long()


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InputError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def _targets(
    value: Targets, count: int, what: str, owner: str, device: torch.device
) -> Tensor:
    """Target indices as a LongTensor[K] on ``device``, validated against ``count``."""
    whats = "classes" if what == "class" else f"{what}s"
    if value is None:
        return torch.arange(count, device=device)
    if isinstance(value, Tensor):
        if value.dim() > 1 or value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            raise InputError(f"{whats} must be an int or a 1-D integer tensor, got {value.dtype} of shape {tuple(value.shape)}")
        items = value.reshape(-1).tolist()
    elif isinstance(value, bool) or not isinstance(value, (int, Sequence)) or isinstance(value, str):
        raise InputError(f"{whats} must be an int, a sequence of ints or None, got {type(value).__name__}")
    elif isinstance(value, int):
        items = [value]
    else:
        items = list(value)
    if not items:
        raise InputError(f"no {whats} given: pass at least one, or None for all")
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int):
            raise InputError(f"{what} {item!r} is not an int")
        if not 0 <= item < count:
            raise TargetOutOfRangeError(f"{what} {item} is out of range: {owner} (0..{count - 1})")
    return torch.tensor(items, dtype=torch.long, device=device)
