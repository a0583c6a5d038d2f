"""What every op reader is built on: the :class:`Reader` (what a reader asks of the model and the
graph: constants, parameters, the call as a replayable :class:`~deconvnet.mirror.Call`, a module
and its rule) and what a reader returns, a :class:`Built` mirror layer or :class:`General`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from torch import Tensor, fx, nn

from ... import rules
from ...mirror import VJP, Call, MirrorLayer
from ...mirror.base import Ref
from ..nodes import fetch_attribute, flatten

__all__ = ["Run", "General", "COMPUTED", "Built", "Reader", "named", "module_run"]

Run = Callable[[tuple[Any, ...], dict[str, Any]], tuple[Tensor, Tensor | None]]


class General(Exception):
    """This call is not reversed by hand: use the general VJP layer. The message says why."""


COMPUTED = "takes arguments computed in the forward, where a hand-written mirror layer needs constants"


@dataclass
class Built:
    """What a reader returns: the mirror layer of one node, the nodes whose outputs it takes as
    signal, and what :class:`~deconvnet.builder.network.Step` keeps of it."""

    mirror: MirrorLayer
    inputs: list[fx.Node]
    module: nn.Module | None = None
    rule: rules.Rule | None = None
    run: Run | None = None
    refs: list[fx.Node] = field(default_factory=list)
    reason: str = ""


class Reader:
    """Turns signal nodes into mirror layers: what every op reader (:data:`deconvnet.builder.reading.READERS`)
    asks of the model and the graph."""

    def __init__(
        self,
        model: nn.Module,
        ruleset: rules.RuleSet,
        signal: set[fx.Node],
        constants: dict[str, Any],
        substitutes: dict[str, nn.Module],
    ) -> None:
        self.model = model
        self.constants = constants
        self.substitutes = substitutes
        self.ruleset = ruleset
        self.signal = signal

    def attribute(self, node: fx.Node) -> Callable[[], Any]:
        """A parameter or buffer of the model (or a graph constant), fetched when the mirror
        runs (``.to()`` replaces buffers)."""
        target = str(node.target)
        return lambda: fetch_attribute(self.model, self.constants, target)

    def constant(self, value: Any) -> Callable[[], Any]:
        """A constant argument, or a parameter/buffer; anything computed in the forward -> general."""
        if isinstance(value, fx.Node):
            if value.op == "get_attr":
                return self.attribute(value)
            raise General(COMPUTED)
        if any(isinstance(a, fx.Node) for a in flatten(value)):
            raise General(COMPUTED)
        return lambda: value

    def plain(self, *values: Any) -> None:
        """Require constants (no forward values) among ``values``."""
        for value in values:
            if any(isinstance(a, fx.Node) for a in flatten(value)):
                raise General(COMPUTED)

    def first_only(self, node: fx.Node) -> list[fx.Node]:
        """The signal input of a call that takes it as first argument and nowhere else."""
        sources = [n for n in node.all_input_nodes if n in self.signal]
        uses = [a for a in flatten((node.args, node.kwargs)) if isinstance(a, fx.Node) and a in self.signal]
        if len(sources) != 1 or not node.args or node.args[0] is not sources[0] or len(uses) != 1:
            raise General(
                "combines signals in a way no hand-written mirror layer reverses (supported: add, "
                "sub, cat, mul, div, and layers that take the signal as their first argument)"
            )
        return sources

    def call(self, node: fx.Node, item: int | str | None = None) -> tuple[Call, list[fx.Node], list[fx.Node]]:
        """The node as a replayable :class:`Call`, its signal inputs and its references."""
        refs: list[fx.Node] = []

        def ref(value: Any) -> Any:
            if isinstance(value, fx.Node):
                if value not in refs:
                    refs.append(value)
                return Ref(refs.index(value))
            if isinstance(value, (tuple, list)):
                return type(value)(ref(v) for v in value)
            if isinstance(value, dict):
                return {k: ref(v) for k, v in value.items()}
            if isinstance(value, slice):
                return slice(ref(value.start), ref(value.stop), ref(value.step))
            return value

        args = ref(tuple(node.args))
        kwargs = ref(dict(node.kwargs))
        inputs = [n for n in refs if n in self.signal]
        signals = tuple(refs.index(n) for n in inputs)
        kind = {"call_function": "function", "call_method": "method", "call_module": "module"}[node.op]
        target = node.target
        if node.op == "call_module":
            target = self.substitutes.get(str(target)) or self.model.get_submodule(str(target))
        return Call(kind, target, args, kwargs, signals, item), inputs, refs

    def general(self, node: fx.Node, item: int | str | None = None, producer: fx.Node | None = None) -> Built:
        source = producer if producer is not None else node
        call, inputs, refs = self.call(source, item)
        module = self.model.get_submodule(str(source.target)) if source.op == "call_module" else None
        return Built(VJP(call, rules.rectifier_call), inputs, module=module, refs=refs)

    def module(self, node: fx.Node, name: str) -> Built:
        module = self.model.get_submodule(str(node.target))
        rule = self.ruleset.rule_for(module)
        if rule is None:
            raise General
        if rule.unsupported is not None:
            reason = rule.unsupported(module)
            if reason:
                raise General(reason)
        inputs = self.first_only(node)
        if node.kwargs or len(node.args) != 1:
            raise General
        run: Run | None = None
        if rule.run is not rules.Rule.run:  # a rule that records more than the output
            run = module_run(rule, module)
        return Built(rule.mirror(module), inputs, module=module, rule=rule, run=run)

    def as_module(self, module: nn.Module, inputs: list[fx.Node]) -> Built:
        """A functional call read as the module it equals (``F.max_pool2d`` as ``MaxPool2d``),
        run and reversed by that module's rule."""
        rule = cast(rules.Rule, self.ruleset.rule_for(module))
        return Built(rule.mirror(module), inputs, module=module, rule=rule, run=module_run(rule, module))


def named(node: fx.Node, names: tuple[str, ...]) -> dict[str, Any]:
    """A call's arguments after the input, by parameter name (``names`` in order)."""
    return dict(zip(names, node.args[1:], strict=False)) | dict(node.kwargs)


def module_run(rule: rules.Rule, module: nn.Module) -> Run:
    def run(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Tensor, Tensor | None]:
        return rule.run(module, args[0])

    return run
