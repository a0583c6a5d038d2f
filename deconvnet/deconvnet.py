"""The public object: :class:`DeconvNet`, a model's deconvolutional mirror and its API."""

from __future__ import annotations

import math

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, TypeVar, cast

import torch
from torch import Tensor, nn

from . import signals
from .builder import Network, Step, build
from .capture import Trace, checked_input, ready, run, run_layers, run_lean
from .chunks import budget, check_chunk_size, collect, mirror_chunks, window_chunk
from .crop import check_crop, crop_chain, cropped_channels, cropped_units
from .errors import InputError, SignalShapeError
from .mirror import RECTIFIERS, RULES, Context, Mirror, MirrorLayer, precision
from .receptive import ReceptiveField, receptive_fields
from .rules import DEFAULT_RULES, Rule
from .signals import Region, Targets, check_choice

_R = TypeVar("_R")

__all__ = ["DeconvNet", "Region", "Targets"]


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
    output: which output to explain when the forward returns several: a dict key (torchvision's
        segmentation models return ``{"out", "aux"}``), a Hugging Face ``ModelOutput``
        attribute, or a tuple index. By default ``"out"``, ``logits``, or the one item computed
        from the input.

    The forward is read with torch.fx. One that decides on a traced value (a size check, a loop
    over a traced length: segmentation_models_pytorch's FPN) is read by running it on the first
    input given, every branch taken as the real forward takes it, and read again for an input
    of another shape (or, where a branch depends on the input's values, for every input). Either
    way the graph read is checked once against ``model(x)``; one that differs is refused
    (:class:`~deconvnet.errors.TraceMismatchError`), never mirrored.

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
        output: str | int | None = None,
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
        check_choice("rectifiers", rectifiers, RECTIFIERS)
        if output is not None and (isinstance(output, bool) or not isinstance(output, (str, int))):
            raise InputError(f"output must be a key, an attribute name or an index, got {type(output).__name__}")
        self.model = model
        self.rule = self._rule(rule)
        self.rectifiers = rectifiers
        self.deterministic = deterministic
        self.memory_budget = memory_budget
        self._network: Network = build(model, None if layer_rules is None else DEFAULT_RULES.over(layer_rules),
                                       strict=strict, output=output)
        self._fields: tuple[Mirror, dict[str, ReceptiveField | None]] | None = None
        self._sized_fields: dict[tuple[int, ...], dict[str, ReceptiveField | None]] = {}

    @property
    def _receptive_fields(self) -> dict[str, ReceptiveField | None]:
        """Each layer's receptive field, for the network as it is now (the first trace may
        rebuild it: see :meth:`~deconvnet.builder.network.Network.refine`)."""
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
        return self._read().mirror

    def _read(self) -> Network:
        """The network, refused while its forward waits for an input to be read by running it."""
        if self._network.pending is not None:
            raise InputError(
                f"{type(self.model).__name__}'s forward is read by running it on an input "
                f"({self._network.pending}); call dn.trace(x) (or any reconstruction) first"
            )
        return self._network

    @property
    def output_key(self) -> str | int | None:
        """Which of the forward's outputs is explained (a dict key, an attribute, an index), or
        None when the forward returns one tensor."""
        return self._network.output_key

    @property
    def layers(self) -> list[str]:
        """The names one can reconstruct from, in forward order.

        A module found at the first trace to fold the batch dimension inside (a window
        partition, whose sizes come from the input) is from then on one layer, reversed whole:
        the names inside it are gone after the first trace.
        """
        return list(self._read().layers)

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

    @property
    def has_switches(self) -> bool:
        """Whether any mirror layer unpools into recorded max-pool switches (in any dimension):
        without them the deconvnet rule has nothing that carries the input into its pictures."""
        return any("switches" in layer.needs for layer in self.mirror.modules() if isinstance(layer, MirrorLayer))

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
        x = checked_input(self._network, x)
        with torch.autocast(x.device.type, enabled=False):
            checked = ready(self._network, x)
            if checked is not None and function is run:
                return cast(_R, checked)  # the first check's trace is the trace asked for
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

    def _rule(self, rule: str | None) -> str:
        if rule is None:
            return self.rule
        check_choice("rule", rule, RULES)
        return rule

    def _traced(self, x: Tensor | Trace) -> Trace:
        if isinstance(x, Trace):
            if x.network is not self._network:
                raise InputError("this Trace was made by another DeconvNet; trace x with this one")
            if not self._network.holds_for(x.input):  # the forward was read for another input since
                with torch.autocast(x.input.device.type, enabled=False):
                    ready(self._network, x.input)
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
        check_choice("mode", mode, ("max", "map"))
        check_choice("signal", signal, ("activation", "unit"))
        check_chunk_size(chunk_size)
        check_crop(crop)
        trace = self._traced(x)
        step = self._network.resolve(layer)
        activation = trace.activations[step.name]
        if activation.dim() < 2:
            raise InputError(f"{step.name}'s output has no channel dimension")
        count = activation.shape[1]
        targets = signals.targets(channels, count, "channel", f"{step.name} has {count} channels", activation.device)
        where = signals.strongest(activation) if mode == "max" else None
        context = self.context(rule)
        below = self._crop_chain(step, activation, mode, crop, trace, context)
        if below is not None:
            size = chunk_size or window_chunk(trace, below, activation.shape[0], count, self._budget(trace),
                                              targets.numel())
            return cropped_channels(below, trace.records, activation, where, targets, signal, size,  # type: ignore[arg-type]
                                    trace.input.shape[1:], context, self._precision(trace),
                                    self.mirror_dtype or activation.dtype), targets.numel()
        make = signals.channel_signal(activation, where, signal)
        return self._chunks(trace, step, targets, make, chunk_size, context), targets.numel()

    @torch.no_grad()
    def reconstruct_classes(
        self,
        x: Tensor | Trace,
        classes: Targets = None,
        *,
        region: Region = None,
        chunk_size: int | None = None,
        rule: str | None = None,
    ) -> Tensor:
        """Reconstruct each class's output, every class asked for from one forward pass.

        A classifier (output Tensor[N, classes]): from 1 at the class's output unit, 0
        elsewhere; equals Captum's ``Deconvolution(model).attribute(x, target=c)``.
        A dense output (a segmentation model's Tensor[N, K, *S]): from the class's logits
        weighted by ``region``, 0 at the other classes, so the map is that of
        ``sum(region * out[:, c])``:

        - ``None`` (default): the whole map;
        - ``"predicted"``: where the model's argmax is that class (zero maps for classes it
          predicts nowhere in an input), as Captum's segmentation tutorial does;
        - a position, one int per spatial dim of S (``(h, w)``): that pixel alone;
        - weights, Tensor[*S] or Tensor[N, *S], bool or float, on the output's grid; on the
          input's grid where S is smaller, averaged over each output cell.

        classes: an index, a sequence of indices, or ``None`` for every output class.
        returns Tensor[N, K, C, *input spatial].
        """
        chunks, total = self._class_chunks(x, classes, chunk_size, rule, region)
        return collect(chunks, total)

    def iter_classes(
        self, x: Tensor | Trace, classes: Targets = None, *, region: Region = None, chunk_size: int | None = None,
        rule: str | None = None,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """:meth:`reconstruct_classes` a chunk at a time: yields (classes LongTensor[k],
        Tensor[N, k, C, *input spatial]), e.g. all 1000 classes of 64 images streamed to disk or
        reduced to per-class heatmaps without holding Tensor[N, 1000, C, H, W]."""
        chunks, _ = self._class_chunks(x, classes, chunk_size, rule, region)
        return chunks

    def predicted_classes(self, x: Tensor | Trace) -> list[list[tuple[int, int]]]:
        """For a dense output, each input's predicted classes with their areas (output cells
        where the argmax is the class), largest first: a list per input of (class, cells)."""
        trace = self._traced(x)
        output = trace.output
        if output.dim() < 3:
            raise InputError(f"predicted_classes needs a dense output Tensor[N, K, *S], got {tuple(output.shape)}")
        predicted = output.argmax(dim=1).reshape(output.shape[0], -1)
        counts = torch.stack([torch.bincount(p, minlength=output.shape[1]) for p in predicted])
        return [sorted(((c, int(k)) for c, k in enumerate(row.tolist()) if k), key=lambda item: -item[1])
                for row in counts]

    @torch.no_grad()
    def _class_chunks(
        self, x: Tensor | Trace, classes: Targets, chunk_size: int | None, rule: str | None, region: Region = None,
    ) -> tuple[Iterator[tuple[Tensor, Tensor]], int]:
        check_chunk_size(chunk_size)
        context = self.context(rule)
        trace = self._traced_lean(x, context)
        output = trace.output
        if output.dim() == 2 and region is not None:
            raise InputError(
                f"region= is for dense outputs (a segmentation model's Tensor[N, classes, *S]); this model "
                f"outputs {tuple(output.shape)}, one score per class: leave region out"
            )
        if output.dim() < 2:
            raise InputError(
                f"reconstruct_classes needs a model output of shape [N, classes] or [N, classes, *S], got "
                f"{tuple(output.shape)}; use reconstruct or reconstruct_from for other outputs"
            )
        count = output.shape[1]
        step = self._network.steps[self._network.output]
        targets = signals.targets(classes, count, "class", f"the model has {count} classes", output.device)
        make = (signals.class_signal(output) if output.dim() == 2
                else signals.region_signal(output, region, tuple(trace.input.shape[2:])))
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
        return crop_chain(self.mirror, step.name, self._receptive_fields[step.name], activation, mode, crop,
                          trace.input.shape[2:], context)

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
        ``positions[t]`` (over (H, W), or (L,), or (D, H, W)) of channel ``channels[t]`` of input
        ``images[t]`` of the batch.
        values (Tensor[T] or None): the signal kept at each unit; None keeps its activation.
        crop: as in :meth:`reconstruct` (each unit runs on its receptive field when possible).
        returns Tensor[T, C, H, W] (Tensor[T, C, L], Tensor[T, C, D, H, W]).
        """
        check_chunk_size(chunk_size)
        check_crop(crop)
        step = self._network.resolve(layer)
        context = self.context(rule)
        trace = self._traced_lean(x, context, step)
        activation = trace.activations[step.name]
        if activation.dim() < 3:
            raise InputError(f"reconstruct_units needs a layer with spatial maps; {step.name} outputs {tuple(activation.shape)}")
        n, count = activation.shape[:2]
        places = math.prod(activation.shape[2:])
        device = activation.device
        images_t = signals.indices("images", images, n, f"the batch has {n} inputs", device)
        channels_t = signals.indices("channels", channels, count, f"{step.name} has {count} channels", device)
        positions_t = signals.indices("positions", positions, places,
                                      f"{step.name} maps have {places} positions", device)
        total = images_t.numel()
        if not channels_t.numel() == positions_t.numel() == total:
            raise InputError(f"images, channels and positions must have one entry per unit; got {total}, "
                             f"{channels_t.numel()} and {positions_t.numel()}")
        kept = activation.reshape(n, count, -1)[images_t, channels_t, positions_t]
        if values is not None:
            if not isinstance(values, Tensor) or values.shape != (total,):
                raise InputError(f"values must be a Tensor[{total}] or None")
            kept = values.to(device=device, dtype=activation.dtype)
        below = self._crop_chain(step, activation, "max", crop, trace, context)
        if below is not None:
            size = chunk_size or window_chunk(trace, below, 1, count, self._budget(trace), total)
            return cropped_units(below, trace.records, activation, images_t, channels_t, positions_t, kept, size,
                                 trace.input.shape[1:], context, self._precision(trace),
                                 self.mirror_dtype or activation.dtype)
        make, slot, slots = signals.unit_signal(activation, images_t, channels_t, positions_t, kept)
        projected = collect(self._chunks(trace, step, torch.arange(slots, device=device), make, chunk_size, context),
                             slots)
        return projected[images_t, slot]

    def activation(self, x: Tensor | Trace, layer: str | nn.Module) -> Tensor:
        """The output of ``layer`` for x: Tensor[N, ...]."""
        trace = self._traced(x)
        return trace.activations[self._network.resolve(layer).name]

    # --- batching -------------------------------------------------------------------------

    def _budget(self, trace: Trace) -> int:
        return budget(self.memory_budget, trace.input.device)

    def _precision(self, trace: Trace) -> Callable[[], AbstractContextManager[None]]:
        """What the mirror runs under for this DeconvNet (see :func:`deconvnet.mirror.precision`)."""
        return lambda: precision(trace.input.device.type, self.mirror_dtype, self.deterministic)

    def _chunks(
        self, trace: Trace, start: Step, targets: Tensor, make: Callable[[Tensor], Tensor], chunk_size: int | None,
        context: Context,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """The mirror over the targets, a planned chunk at a time (see :mod:`deconvnet.chunks`)."""
        return mirror_chunks(self.mirror, trace, start.name, targets, make, chunk_size, self._budget(trace), context,
                             self._precision(trace))
