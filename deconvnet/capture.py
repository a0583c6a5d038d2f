"""One forward pass that keeps what the mirror needs: a :class:`Trace`.

The traced forward is run node by node on the user's own modules (nothing is patched, no hook
is registered). Max-pools also return their switches; in-place calls run out of place so the
layer before keeps its activation; every layer's input and output are kept, and the values a
layer's mirror declares it needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, fx

from .builder import Network
from .errors import UnsupportedLayerError
from .mirror import Record

__all__ = ["Trace", "run"]


@dataclass(frozen=True, eq=False)
class Trace:
    """A traced batch: serves any number of reconstructions of the same inputs.

    input (Tensor[N, C, H, W]): the batch.
    output (Tensor[N, ...]): the model's output, equal to ``model(input)``.
    activations: layer step name -> that layer's output ``Tensor[N, ...]``.
    records: layer step name -> what its mirror layer needs (input shape, switches).
    """

    input: Tensor
    output: Tensor
    activations: dict[str, Tensor]
    records: dict[str, Record]
    network: Network

    def __len__(self) -> int:
        return self.input.shape[0]


def _evaluate(node: fx.Node, args: Any, kwargs: Any, network: Network) -> Any:
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


@torch.no_grad()
def run(network: Network, x: Tensor) -> Trace:
    """Run the forward on x (Tensor[N, C, H, W]) and keep what the mirror needs."""
    network.check_eval()
    env: dict[fx.Node, Any] = {}
    records: dict[str, Record] = {}
    activations: dict[str, Tensor] = {}
    for node in network.nodes:
        if node.op == "placeholder":
            env[node] = network.defaults[node.name] if node.name in network.defaults else x
            continue
        step = network.steps.get(node)
        args = fx.node.map_arg(node.args, env.__getitem__)
        kwargs = fx.node.map_arg(node.kwargs, env.__getitem__)
        switches = None
        if step is not None and step.run is not None:
            out, switches = step.run(args, kwargs)
        else:
            out = _evaluate(node, args, kwargs, network)
        env[node] = out
        if step is None:
            continue
        value: Tensor = env[step.inputs[0]]
        if not isinstance(out, Tensor) or out.dim() == 0 or out.shape[0] != value.shape[0]:
            raise UnsupportedLayerError(
                f"{step.name} does not keep the batch dimension (input {tuple(value.shape)}, "
                f"output {tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__}); "
                "deconvnet needs every layer to map Tensor[N, ...] to Tensor[N, ...]"
            )
        shapes = tuple(tuple(env[i].shape) for i in step.inputs)
        values = tuple(env[r] for r in step.refs) if "values" in step.mirror.needs else ()
        records[step.name] = Record(shapes[0], switches, shapes, out, value, values)
        activations[step.name] = out
    return Trace(x, env[network.output], activations, records, network)
