"""One forward pass that keeps what the mirror needs: a :class:`Trace`.

The traced forward is run node by node on the user's own modules (nothing is patched, no hook
is registered). Max-pools also return their switches; in-place calls run out of place so the
layer before keeps its activation; every layer's input and output are kept, and the values a
layer's mirror declares it needs.
"""

from __future__ import annotations

import dataclasses
import operator
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from . import rules
from .builder import Network, Step, call_site
from .builder.tracing import left_as_found
from .errors import DeconvnetError, InputError, TraceMismatchError, UnsupportedLayerError
from .mirror import Activation, Context, Record, ReLU

__all__ = ["AXES", "INPUT", "KINDS", "Trace", "checked_input", "ready", "run", "run_lean", "run_layers",
           "selected_output"]

_T = TypeVar("_T")


@dataclass(frozen=True, eq=False)
class Trace:
    """A traced batch: serves any number of reconstructions of the same inputs.

    input (Tensor[N, C, H, W]): the batch.
    output (Tensor[N, ...]): the model's output, equal to ``model(input)``.
    activations: layer step name -> that layer's output ``Tensor[N, ...]`` (a read-only mapping;
        a batch-norm's output or a sum that the activation after it overwrote in place is
        computed again from its inputs when first read: the same values).
    records: layer step name -> what its mirror layer needs (input shape, switches).
    """

    input: Tensor
    output: Tensor
    activations: Mapping[str, Tensor]
    records: dict[str, Record]
    network: Network

    def __len__(self) -> int:
        return self.input.shape[0]


class _Activations(Mapping[str, Tensor]):
    """Layer name -> output, in layer order; the outputs in ``later`` are made when first read."""

    def __init__(self, values: dict[str, Tensor | None], later: dict[str, Callable[[], Tensor]]) -> None:
        self._values, self._later = values, later

    def __getitem__(self, name: str) -> Tensor:
        value = self._values[name]
        if value is None:
            value = self._values[name] = self._later.pop(name)()
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({list(self._values)})"


def evaluate(node: fx.Node, args: Any, kwargs: Any, network: Network) -> Any:
    """One node of the traced forward on concrete values (in-place calls already made out of place)."""
    if node.op == "get_attr":
        return network.attribute(str(node.target))
    if node.op == "call_function":
        return node.target(*args, **kwargs)  # type: ignore[operator]
    if node.op == "call_method":
        self_obj, *rest = args
        return getattr(self_obj, str(node.target))(*rest, **kwargs)
    if node.op == "call_module":
        target = str(node.target)
        module = network.substitutes.get(target) or network.model.get_submodule(target)
        return module(*args, **kwargs)
    raise AssertionError(f"unexpected fx node kind {node.op}")  # pragma: no cover


class _MaxPool(torch.nn.Module):
    """A max-pool of a program that needs no switches, as a module of it: the pool's output
    laid out as the trace's pools are (:func:`deconvnet.rules.max_pool`), bitwise the model's."""

    def __init__(self, pool: nn.MaxPool2d) -> None:
        super().__init__()
        self.pool = pool

    def forward(self, x: Tensor) -> Tensor:
        return rules.max_pool(self.pool, x)


class _StepRun(torch.nn.Module):
    """A layer that must record more than its output (a max-pool's switches), as a module of
    the generated program: returns (output, switches)."""

    def __init__(self, run: Any) -> None:
        super().__init__()
        self.step_run = run

    def forward(self, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor | None]:
        return self.step_run(args, kwargs)


@dataclass(eq=False)
class _Program:
    """The traced forward as generated Python (a torch.fx GraphModule): runs without
    per-node interpretation and returns just what the mirror needs, in ``kept`` order."""

    module: fx.GraphModule
    kept: list[fx.Node]
    switched: list[Step]
    attributes: list[tuple[str, Any]]
    placeholders: list[str]
    """Its inputs: the image, and forward's optional arguments (at their defaults)."""
    shaped: list[fx.Node] = field(default_factory=list)
    """Nodes whose shapes it returns (a lean program: their values are freed as it goes)."""
    overwritten: list[fx.Node] = field(default_factory=list)
    """Values an activation after them overwrites in place (a full program: batch-norm outputs
    and sums)."""

    def current(self, network: Network) -> bool:
        """Whether the parameters and buffers it reads are still the model's (``model.to``
        replaces buffers)."""
        return all(network.attribute(target) is value for target, value in self.attributes)


def _program(
    network: Network, only: tuple[fx.Node, ...] | None = None, lean: dict[Step, frozenset[str]] | None = None,
    start: Step | None = None,
) -> _Program:
    """The generated forward; returning the values the mirror reads, or just ``only``, or (lean)
    every step's shapes, the switches, and only the values ``lean`` says each step's mirror
    layer reads (:meth:`~deconvnet.mirror.base.MirrorLayer.needs_under` one call's context)."""
    graph = fx.Graph()
    mapping: dict[fx.Node, fx.Node] = {}
    owners: dict[str, Any] = {}
    attributes: list[tuple[str, Any]] = []
    switches: dict[Step, fx.Node] = {}
    if only is not None:  # none of the layers' mirrors will run: an activation may overwrite what it alone reads
        kept = list(only)
        in_place = _in_place(network, {step: frozenset() for step in network.steps.values()}, kept)
    elif lean is not None:
        wanted: list[fx.Node] = []
        for step, needs in lean.items():
            wanted += [step.inputs[0]] if "input" in needs else []
            wanted += [step.node] if "output" in needs else []
            wanted += step.refs if "values" in needs else []
        kept = list(dict.fromkeys([*wanted, network.output if start is None else start.node]))
        in_place = _in_place(network, lean, kept)
    else:
        kept = list(dict.fromkeys(
            [n for step in network.steps.values() for n in (step.node, *step.inputs, *step.refs)] + [network.output]
        ))
        in_place = _overwriting(network, kept)
    for node in network.nodes:
        step = network.steps.get(node)
        if node.op == "placeholder":
            new = graph.placeholder(node.name)
        elif step is not None and step.run is not None and only is None:  # switches only for a full trace
            name = f"run_{len(owners)}"
            owners[name] = _StepRun(step.run)
            args = fx.node.map_arg(node.args, mapping.__getitem__)
            kwargs = fx.node.map_arg(node.kwargs, mapping.__getitem__)
            pair = graph.call_module(name, args, kwargs)  # type: ignore[arg-type]
            new = graph.call_function(operator.getitem, (pair, 0))
            switches[step] = graph.call_function(operator.getitem, (pair, 1))
        elif step is not None and step.run is not None and type(step.module) is nn.MaxPool2d:
            # no switches wanted (only=): the pool alone, as fast as the trace's
            name = f"pool_{len(owners)}"
            owners[name] = _MaxPool(step.module)
            new = graph.call_module(name, (mapping[step.inputs[0]],))
        else:
            new = graph.node_copy(node, mapping.__getitem__)
            twin = in_place.get(node)
            if twin is not None and node.op != "call_module":
                new.target, args, kwargs = twin
                new.args, new.kwargs = fx.node.map_arg((args, kwargs), mapping.__getitem__)  # type: ignore[assignment]
            if node.op in ("call_module", "get_attr"):
                target = str(node.target)
                name = f"{'module' if node.op == 'call_module' else 'attribute'}_{len(owners)}"
                if twin is not None:
                    owners[name] = twin[0]
                elif node.op == "call_module":
                    owners[name] = network.substitutes.get(target) or network.model.get_submodule(target)
                else:
                    owners[name] = network.attribute(target)
                    attributes.append((target, owners[name]))
                new.target = name
        mapping[node] = new
    shaped: list[fx.Node] = []
    if only is not None:
        switched = []
    elif lean is not None:
        shaped = list(dict.fromkeys(n for step in lean for n in (step.node, *step.inputs)))
        switched = [step for step in switches if step in lean]
    else:
        switched = list(switches)
    shapes = []
    for n in shaped:  # read where each value is made, so the generated code frees it after its last real use
        with graph.inserting_after(mapping[n]):
            shapes.append(graph.call_function(getattr, (mapping[n], "shape")))
    graph.output((tuple(mapping[n] for n in kept), tuple(switches[s] for s in switched), tuple(shapes)))
    module = fx.GraphModule(owners, graph)
    if start is not None or only is not None:
        module.graph.eliminate_dead_code()  # the forward stops where the last value it returns is made
        module.recompile()
    placeholders = [n.name for n in network.nodes if n.op == "placeholder"]
    overwritten = [node.args[0] for node in in_place] if lean is None else []
    return _Program(module, kept, switched, attributes, placeholders, shaped, overwritten)  # type: ignore[arg-type]


# Layers (exactly these types: a subclass may return what it likes) and functions whose output
# is a new tensor that no one else holds; of those, the ones a trace may run again to give the
# same value cheaply (a batch-norm in eval mode, a sum).
_NORMS = frozenset({nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d})
_SUMS = frozenset({operator.add, torch.add})
_FRESH_MODULES = _NORMS | {nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear}
_FRESH_FUNCTIONS = _SUMS | {operator.sub, operator.mul, torch.sub, torch.mul, torch.cat, F.conv2d, F.linear, F.batch_norm}


def _in_place(
    network: Network, lean: dict[Step, frozenset[str]], kept: Sequence[fx.Node]
) -> dict[fx.Node, tuple[Any, tuple[Any, ...], dict[str, Any]]]:
    """Activations the lean forward runs in place, as the model's own forward may (a ReLU6 that
    writes a new tensor costs MobileNetV2's forward a fifth more): node -> its in-place call
    (:func:`~deconvnet.rules.in_place_call`). Each one's mirror reads at most its output, and
    its input is a new tensor (a conv's, a norm's, a sum's) that nothing else reads or keeps."""
    kept_values = set(kept)
    found = {}
    for step, needs in lean.items():
        value = _read_once(step)
        if value is None or needs - {"output"} or value in kept_values or not _fresh(network, value):
            continue
        twin = _in_place_twin(network, step.node)
        if twin is not None:
            found[step.node] = twin
    return found


def _read_once(step: Step) -> fx.Node | None:
    """The value an activation step takes, where nothing else reads it; else None."""
    value = step.node.args[0] if step.node.args else None
    if type(step.mirror) not in (Activation, ReLU) or not isinstance(value, fx.Node) or len(value.users) != 1:
        return None
    return value


def _in_place_twin(network: Network, node: fx.Node) -> tuple[Any, tuple[Any, ...], dict[str, Any]] | None:
    """:func:`~deconvnet.rules.in_place_call` of the node (a module: the model's own)."""
    target = network.model.get_submodule(str(node.target)) if node.op == "call_module" else node.target
    return rules.in_place_call(node.op, target, tuple(node.args), dict(node.kwargs))


def _overwriting(
    network: Network, kept: Sequence[fx.Node]
) -> dict[fx.Node, tuple[Any, tuple[Any, ...], dict[str, Any]]]:
    """Activations a full trace runs in place over the value before them, as the model's own
    forward may: node -> its in-place call. A Trace keeps every layer's output, and a new tensor
    for each costs the forward a fifth more on MobileNetV2; the overwritten value, a batch-norm's
    output or a sum (ResNet's residual), is computed again from its inputs, which the trace keeps,
    when it is read (:func:`_again`). Only where the activation's mirror reads its output alone
    (ReLU, ReLU6, leaky ReLU), the overwritten layer's mirror reads nothing recorded, and
    nothing else reads the overwritten value."""
    kept_values = set(kept)
    found = {}
    for step in network.steps.values():
        value = _read_once(step)
        if value is None or not cast(Activation, step.mirror).from_output or value is network.output:
            continue
        made = network.steps.get(value)
        if (made is None or made.run is not None or made.mirror.needs & {"output", "input", "values"}
                or not _recomputable(network, value) or not set(value.all_input_nodes) <= kept_values):
            continue
        twin = _in_place_twin(network, step.node)
        if twin is not None:
            found[step.node] = twin
    return found


def _made_by(network: Network, node: fx.Node, modules: frozenset[type], functions: frozenset[Any]) -> bool:
    """Whether the node calls a module of exactly one of ``modules`` (the model's own, not a
    substitute) or one of ``functions`` (without an ``out=`` tensor)."""
    if node.op == "call_module":
        target = str(node.target)
        return target not in network.substitutes and type(network.model.get_submodule(target)) in modules
    try:
        return node.op == "call_function" and node.target in functions and "out" not in node.kwargs
    except TypeError:  # an unhashable target
        return False


def _recomputable(network: Network, node: fx.Node) -> bool:
    """Whether running the node again from its inputs gives its value again, cheaply: a
    batch-norm (the model is in eval mode) or a sum."""
    return _made_by(network, node, _NORMS, _SUMS)


def _again(network: Network, node: fx.Node, env: dict[fx.Node, Any]) -> Callable[[], Tensor]:
    """The node's value, computed again from the trace's values when called, as the forward ran
    it: no autograd, no autocast."""
    call = network.model.get_submodule(str(node.target)) if node.op == "call_module" else node.target
    args, kwargs = fx.node.map_arg((node.args, node.kwargs), env.__getitem__)
    device = env[node].device.type

    def run() -> Tensor:
        with torch.no_grad(), torch.autocast(device, enabled=False):
            return call(*args, **kwargs)  # type: ignore[operator]
    return run


def _fresh(network: Network, node: fx.Node) -> bool:
    """Whether the node's value is a new tensor nothing else holds."""
    return _made_by(network, node, _FRESH_MODULES, _FRESH_FUNCTIONS)


class _BatchLost(UnsupportedLayerError):
    """A layer's output does not keep its input's batch dimension (see :meth:`Network.refine`)."""

    def __init__(self, message: str, node: fx.Node, out: Any) -> None:
        super().__init__(message)
        self.node, self.out = node, out


class _TooSmall(Exception):
    """The input became smaller than a layer's window on its way through the model."""

    def __init__(self, node: fx.Node, shape: tuple[int, ...] | None, error: RuntimeError) -> None:
        super().__init__(str(error))
        self.node, self.shape, self.error = node, shape, error


# PyTorch's words for a pool, convolution or padding larger than what reaches it.
_TOO_SMALL = re.compile(
    r"output size is too small|kernel size can't be greater|padding size should be less than|"
    r"input image .* smaller than",
    re.IGNORECASE,
)


def _refined(network: Network, x: Tensor, attempt: Callable[[], _T]) -> _T:
    """``attempt()``, after rebuilding the network each time the forward shows what reading it
    could not (a value that is not signal, a module that folds the batch inside), until it
    runs or no rebuild can help (then the layer is refused). An input too small for the model
    is refused naming where it became too small and the smallest size that runs."""
    first: tuple[str, dict[str, Any]] | None = None
    while True:
        try:
            return attempt()
        except _BatchLost as lost:
            if first is None:
                first = (str(lost), dict(network.__dict__))
            if not network.refine(lost.node, lost.out):
                network.__dict__.update(first[1])  # as built: the next call says the same
                raise UnsupportedLayerError(
                    f"{first[0]}; no module around it gives the batch dimension back, so it cannot be "
                    "reversed whole either"
                ) from None
        except _TooSmall as small:
            raise InputError(_too_small_message(network, x, small)) from small.error


def _too_small_message(network: Network, x: Tensor, small: _TooSmall) -> str:
    step = network.steps.get(small.node)
    where = step.name if step is not None else small.node.name
    if small.node.op == "call_module":
        where += f" ({type(network.model.get_submodule(str(small.node.target))).__name__})"
    else:
        where += call_site(small.node)
    reached = "x".join(str(d) for d in small.shape[1:]) if small.shape else "too small"
    smallest = _smallest_size(network, x)
    sides = x.dim() - 2
    equal = "square" if sides == 2 else "cube" if sides == 3 else "signal"
    hint = (f"; the smallest {equal} input {type(network.model).__name__} runs is {'x'.join([str(smallest)] * sides)}"
            if smallest else "")
    size = "x".join(str(d) for d in x.shape[2:])
    return (
        f"x of {size} {'pixels' if sides == 2 else 'samples' if sides == 1 else 'voxels'} is too small for this model: "
        f"at {where} the input had become {reached}, smaller than its window ({small.error}){hint}"
    )


def _smallest_size(network: Network, x: Tensor, limit: int = 4096) -> int | None:
    """The smallest input size, every spatial side equal, the forward runs at (one zero input
    per try), or None."""

    def runs(size: int) -> bool:
        try:
            _interpret(network, x.new_zeros(1, x.shape[1], *[size] * (x.dim() - 2)))
        except _TooSmall:
            return False
        return True

    low = max(1, min(x.shape[2:]))
    high = low * 2
    try:
        with torch.no_grad():
            while not runs(high):
                low, high = high, high * 2
                if high > limit:
                    return None
            while high - low > 1:
                middle = (low + high) // 2
                low, high = (low, middle) if runs(middle) else (middle, high)
    except Exception:  # anything else at some size (an exact size required): no hint
        return None
    return high


AXES = {1: "C, L", 2: "C, H, W", 3: "C, D, H, W"}
"""One input's axes for a model of each number of spatial dims, as messages write shapes."""
KINDS = {1: "signals", 2: "images", 3: "volumes or clips"}
"""What a model of each number of spatial dims takes, as messages name it."""
INPUT = {1: "signal", 2: "image", 3: "volume"}
"""One such input, as messages and pages name it."""


def checked_input(network: Network, x: Tensor) -> Tensor:
    """x validated as a batch for the network's model (Tensor[N, C, H, W] for an image model,
    Tensor[N, C, L] for a signal model, Tensor[N, C, D, H, W] for a volume or clip model; finite,
    the model's channels and dtype), on the model's device: InputError naming what is wrong and
    the fix."""
    dims = network.spatial_dims
    form = f"Tensor[N, {AXES[dims]}]"
    if not isinstance(x, Tensor):
        raise InputError(f"x must be a {form}, got {type(x).__name__}")
    if x.dim() != dims + 2:
        if x.dim() == dims + 1:
            hint = "; add a batch dimension with x.unsqueeze(0)"
        elif x.dim() in (3, 4, 5):
            hint = f": this model's convolutions and pools are {dims}-D, for {KINDS[dims]}, not {KINDS[x.dim() - 2]}"
        else:
            hint = ""
        raise InputError(f"x must be a {form}, got shape {tuple(x.shape)}{hint}")
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
    expected = network.input_channels
    if expected is not None and x.shape[1] != expected:
        first = next(iter(network.steps.values()))
        raise InputError(
            f"x has {x.shape[1]} channels but {first.name} "
            f"({type(first.module).__name__}) expects {expected}"
        )
    parameter = next(network.model.parameters(), None)
    if parameter is not None:
        if x.dtype != parameter.dtype:
            raise InputError(
                f"x is {x.dtype} but the model's parameters are {parameter.dtype}; "
                f"convert x with x.to({parameter.dtype})"
            )
        # From pinned memory to a GPU the copy need not wait for the device (mining streams).
        x = x.to(parameter.device, non_blocking=parameter.device.type == "cuda")
    return x


def run(network: Network, x: Tensor) -> Trace:
    """Run the forward on x (Tensor[N, C, H, W]) and keep what the mirror needs."""
    return _refined(network, x, lambda: _run(network, x))


@torch.no_grad()
def _run(network: Network, x: Tensor) -> Trace:
    network.check_eval()
    executed = _execute(network, x, None)
    if executed is None:
        return _interpret(network, x)
    values, switches, _, program = executed
    env = dict(zip(program.kept, values, strict=True))
    recorded = dict(zip(program.switched, switches, strict=True))
    records: dict[str, Record] = {}
    activations: dict[str, Tensor | None] = {}
    later: dict[str, Callable[[], Tensor]] = {}
    overwritten = set(program.overwritten)
    for node, step in network.steps.items():
        record = _record(step, env, recorded.get(step))
        if node in overwritten:  # holds the activation's output now: made again when read
            record = dataclasses.replace(record, output=None)
            later[step.name] = _again(network, node, env)
        elif step.inputs[0] in overwritten:  # the activation after it: its mirror reads its output
            record = dataclasses.replace(record, input=None)
        records[step.name] = record
        activations[step.name] = None if node in overwritten else env[node]
    return Trace(x, env[network.output], _Activations(activations, later), records, network)


def _execute(
    network: Network, x: Tensor, only: tuple[fx.Node, ...] | None, lean: dict[Step, frozenset[str]] | None = None,
    key: Any = None, start: Step | None = None,
) -> tuple[Any, Any, Any, _Program] | None:
    """Run the generated forward; None the first time it is asked for: generating it costs
    about a forward pass, which a single trace (the everyday call) does not win back."""
    key = only if lean is None else key
    program = network.programs.get(key)
    if program is None and key not in network.programs:
        network.programs[key] = None  # interpreted once; generated when asked again
        return None
    if program is None or not program.current(network):
        program = network.programs[key] = _program(network, only, lean, start)
    inputs = [network.defaults.get(name, x) for name in program.placeholders]
    try:
        values, switches, shapes = program.module(*inputs)
    except RuntimeError as error:
        if _TOO_SMALL.search(str(error)):
            _interpret(network, x)  # node by node, to say where
        raise
    return values, switches, shapes, program


def run_lean(network: Network, x: Tensor, context: Context, start: Step | None = None) -> Trace:
    """:func:`run` for one call under ``context``: the trace keeps only what the mirror reads
    under that context (every step's shapes, the switches, the values of the layers that read
    them: under the deconvnet rule a ReLU reads nothing) and the model's output, so the forward
    frees its activations as it goes, as a plain forward does. Its ``activations`` hold the
    output alone; it serves that call's reconstructions from the output.

    start: reconstructions start at this layer instead: only the layers below it are recorded,
    its output is kept (as ``activations`` and ``output``), and the forward stops there.
    """
    return _refined(network, x, lambda: _run_lean(network, x, context, start))


@torch.no_grad()
def _run_lean(network: Network, x: Tensor, context: Context, start: Step | None) -> Trace:
    network.check_eval()
    if start is None:
        steps = list(network.steps.values())
    else:
        steps = [network.layers[source] for source in network.mirror.sources(start.name)]
    lean = {step: step.mirror.needs_under(context) for step in steps}
    key = ("lean", context.rule, context.rectifiers, None if start is None else start.name)
    executed = _execute(network, x, None, lean, key, start)
    if executed is None:
        return _run(network, x)
    values, switches, shapes, program = executed
    env = dict(zip(program.kept, values, strict=True))
    shape = dict(zip(program.shaped, shapes, strict=True))
    recorded = dict(zip(program.switched, switches, strict=True))
    records: dict[str, Record] = {}
    for step in steps:
        node, needs = step.node, lean[step]
        first = shape[step.inputs[0]]
        if not shape[node] or shape[node][0] != first[0]:  # pragma: no cover - the first trace refines
            return _run(network, x)
        records[step.name] = Record(
            first, recorded.get(step), tuple(shape[i] for i in step.inputs),
            env[node] if "output" in needs else None,
            env[step.inputs[0]] if "input" in needs else None,
            tuple(env[r] for r in step.refs) if "values" in needs else (),
            tuple(shape[node]),
        )
    last = network.steps[network.output] if start is None else start
    output = env[last.node]
    return Trace(x, output, {last.name: output}, records, network)


def run_layers(network: Network, x: Tensor, steps: Sequence[Step]) -> list[Tensor]:
    """Just the outputs of ``steps`` for x: a generated forward that keeps nothing else (mining
    reads a few layers of many batches)."""
    names = [step.name for step in steps]
    return _refined(network, x, lambda: _run_layers(network, x, [network.resolve(name) for name in names]))


@torch.no_grad()
def _run_layers(network: Network, x: Tensor, steps: Sequence[Step]) -> list[Tensor]:
    network.check_eval()
    executed = _execute(network, x, tuple(step.node for step in steps))
    if executed is None:
        trace = _interpret(network, x)
        return [trace.activations[step.name] for step in steps]
    values = executed[0]
    for step, value in zip(steps, values, strict=True):
        _check_batch(step, x, value)
    return list(values)


def _check_batch(step: Step, value: Tensor, out: Any) -> None:
    """Refuse a layer whose output (``out``) does not keep its input's batch dimension."""
    if not isinstance(out, Tensor) or out.dim() == 0 or out.shape[0] != value.shape[0]:
        raise _BatchLost(
            f"{step.name}{'' if step.node.op == 'call_module' else call_site(step.node)} does not keep the batch "
            f"dimension (input {tuple(value.shape)}, "
            f"output {tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__}); "
            "deconvnet needs every layer to map Tensor[N, ...] to Tensor[N, ...]",
            step.node, out,
        )


def _record(step: Step, env: dict[fx.Node, Any], switches: Tensor | None) -> Record:
    """What the forward left for ``step``'s mirror, checked to keep the batch dimension."""
    out = env[step.node]
    value: Tensor = env[step.inputs[0]]
    _check_batch(step, value, out)
    shapes = tuple(tuple(env[i].shape) for i in step.inputs)
    refs = tuple(env[r] for r in step.refs) if "values" in step.mirror.needs else ()
    return Record(shapes[0], switches, shapes, out, value, refs, tuple(out.shape))


@torch.no_grad()
def run_by_node(network: Network, x: Tensor) -> Trace:
    """The same as :func:`run`, interpreting the graph node by node (the first trace, and a
    reference for tests)."""
    network.check_eval()
    return _refined(network, x, lambda: _interpret(network, x))


def _computed(network: Network, node: fx.Node, env: dict[fx.Node, Any], x: Tensor) -> tuple[Any, Tensor | None]:
    """One node of the graph on the values in ``env`` (x at the input): (its output, the switches
    of a layer that records them, else None)."""
    if node.op == "placeholder":
        return (network.defaults[node.name] if node.name in network.defaults else x), None
    step = network.steps.get(node)
    args = fx.node.map_arg(node.args, env.__getitem__)
    kwargs = fx.node.map_arg(node.kwargs, env.__getitem__)
    if step is not None and step.run is not None:
        return step.run(args, kwargs)
    return evaluate(node, args, kwargs, network), None


def _interpret(network: Network, x: Tensor) -> Trace:
    env: dict[fx.Node, Any] = {}
    records: dict[str, Record] = {}
    activations: dict[str, Tensor] = {}
    for node in network.nodes:
        step = network.steps.get(node)
        try:
            out, switches = _computed(network, node, env, x)
        except RuntimeError as error:
            if _TOO_SMALL.search(str(error)):
                args, kwargs = fx.node.map_arg((node.args, node.kwargs), env.__getitem__)
                first = next((a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)), None)
                raise _TooSmall(node, tuple(first.shape) if first is not None else None, error) from error
            raise
        env[node] = out
        if step is None:
            continue
        records[step.name] = _record(step, env, switches)
        activations[step.name] = out
    return Trace(x, env[network.output], activations, records, network)


def selected_output(out: Any, key: str | int | None) -> Any:
    """The output a network explains out of what ``model(x)`` returned (a dict, a
    ``ModelOutput``, a tuple), by its key."""
    if key is None:
        return out
    if isinstance(out, Mapping) or isinstance(out, (tuple, list)):
        return out[key]  # type: ignore[index]
    return getattr(out, str(key))


def ready(network: Network, x: Tensor) -> Trace | None:
    """Make the network's graph the forward's for x (Tensor[N, C, ...], checked): read it again
    by running it where it was read on another input (:meth:`~deconvnet.builder.network.Network.holds_for`),
    and check it once against the real forward (:func:`verify`). Returns the check's trace of x
    (what :func:`run` returns), or None when no check was due."""
    if not network.holds_for(x):
        network.specialise(x)
    return None if network.verified else verify(network, x)


@torch.no_grad()
def verify(network: Network, x: Tensor) -> Trace:
    """Check that the traced forward computes ``model(x)``, returning its trace of x. A symbolic
    read that does not is read again by running the forward on x; one read by running that still
    does not is refused (:class:`~deconvnet.errors.TraceMismatchError`) naming the first layer
    where they part."""
    trace: Trace | None = None
    try:
        trace = run(network, x)  # first: an input too small is refused by name
        traced: Any = trace.output
    except DeconvnetError:
        raise
    except Exception as error:  # the traced graph fails where the model runs (a skipped branch)
        traced = error
    # On a copy of x: a forward that works in place on its input (a ReLU on a slice of it) must not
    # change the caller's x; a cache the forward fills (timm's LeViT) is put back.
    with left_as_found(network.model, [], {}):
        real = selected_output(network.model(x.clone()), network.output_key)
    if trace is not None and _agrees(traced, real):
        network.verified = True
        return trace
    if network.example is None:
        network.specialise(x)
        return verify(network, x)
    raise TraceMismatchError(_parting(network, x, traced, real))


def _agrees(traced: Any, real: Any) -> bool:
    if not isinstance(traced, Tensor) or not isinstance(real, Tensor) or traced.shape != real.shape:
        return False
    scale = float(real.abs().max()) if real.numel() else 0.0
    return bool(torch.allclose(traced, real, rtol=1e-4, atol=1e-5 * max(scale, 1e-6)))


def _parting(network: Network, x: Tensor, traced: Any, real: Any) -> str:
    """Where the traced forward first parts from the real one: each module call of the graph
    against the same call of the module in ``model(x)`` (read by temporary forward hooks,
    removed before returning)."""
    model = network.model
    calls: dict[str, list[Any]] = {}
    handles = []
    for name, module in model.named_modules():
        if name in network.modules:
            handles.append(module.register_forward_hook(
                lambda _m, _i, out, name=name: calls.setdefault(name, []).append(out)))
    try:
        with left_as_found(model, [], {}):
            model(x.clone())
    finally:
        for handle in handles:
            handle.remove()
    env: dict[fx.Node, Any] = {}
    seen: dict[str, int] = {}
    what = type(model).__name__
    for node in network.nodes:
        step = network.steps.get(node)
        name = step.name if step is not None else node.name
        try:
            env[node] = _computed(network, node, env, x)[0]
        except Exception as error:
            return (f"the traced forward of {what} fails at {name} ({type(error).__name__}: {error}) where "
                    "model(x) runs: torch.fx did not follow the forward there (a check on a traced value, "
                    "isinstance of a traced tensor)")
        if node.op == "call_module":
            target = str(node.target)
            index = seen[target] = seen.get(target, -1) + 1
            outs = calls.get(target, [])
            if index < len(outs) and isinstance(outs[index], Tensor) and not _agrees(env[node], outs[index]):
                return (f"the traced forward of {what} parts from model(x) at {name} "
                        f"({type(model.get_submodule(target)).__name__}): its output there differs from the "
                        "module's output in the real forward, so no map of it would be right; the forward "
                        "does something there that torch.fx cannot record (a Python-side value, a global)")
    shape = tuple(traced.shape) if isinstance(traced, Tensor) else type(traced).__name__
    return (f"the traced forward of {what} computes an output ({shape}) that differs from model(x) "
            f"({tuple(real.shape) if isinstance(real, Tensor) else type(real).__name__}), after its last layer; "
            "no map of it would be right")
