"""What the builder knows of the places models come from: timm's own fx leaf modules and
wrapped functions, and Hugging Face ``transformers`` image models, called as deconvnet calls a
model (pixels in, logits out) and named back as the model names its modules."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, fx, nn

from ..errors import TracingError

__all__ = ["timm_registrations", "PixelLogits", "transformers_image_model", "inner", "unwrap_graph"]


def timm_registrations() -> tuple[set[type[nn.Module]], list[Callable[..., Any]]]:
    """timm's own fx leaf modules and wrapped functions, when timm is installed.

    Its norm-plus-activation modules are traced through instead: they are a batch-norm and an
    activation, which the mirror reverses by hand.
    """
    try:
        from timm.layers import _fx as timm_fx
    except ImportError:
        return set(), []
    leaves = set(timm_fx.get_notrace_modules())
    leaves = {m for m in leaves if not m.__name__.endswith(("BatchNormAct2d", "BatchNormAct"))}
    return leaves, list(timm_fx.get_notrace_functions())


class PixelLogits(nn.Module):
    """A Hugging Face ``transformers`` image model called as deconvnet calls a model: pixel
    values in, the classifier's logits out (its forward also takes labels and output switches,
    and returns a ``ModelOutput``). Only traced through: the graph is then rewritten to name the
    user's model's own modules."""

    def __init__(self, model: nn.Module, attribute: str = "logits") -> None:
        super().__init__()
        self.model = model
        self.attribute = attribute

    def forward(self, pixel_values: Tensor) -> Tensor:
        output = self.model(pixel_values=pixel_values, return_dict=True)
        logits = getattr(output, self.attribute, None)
        if logits is None:
            given = [k for k in output.keys()] if hasattr(output, "keys") else []
            raise TracingError(
                f"{type(self.model).__name__} returns no {self.attribute} ({type(output).__name__}"
                f"{' with ' + ', '.join(given) if given else ''}); deconvnet mirrors transformers image models "
                "from pixel_values to a tensor of their output: pick one with output="
            )
        return logits


def transformers_image_model(model: nn.Module) -> bool:
    """A Hugging Face ``transformers`` model whose input is ``pixel_values``."""
    return getattr(model, "main_input_name", None) == "pixel_values" and any(
        cls.__module__.split(".")[0] == "transformers" for cls in type(model).__mro__
    )


def inner(path: str) -> str:
    """A path under :class:`PixelLogits` as the model itself names it (``resnet.encoder``, not
    ``model.resnet.encoder``)."""
    return path[len("model."):] if path.startswith("model.") else path


def unwrap_graph(graph: fx.Graph) -> None:
    """Rename, in place, what was traced through :class:`PixelLogits`: its modules, parameters
    and module stacks named as the model names them."""
    for node in graph.nodes:
        if node.op in ("call_module", "get_attr"):
            node.target = inner(str(node.target))
        stack = node.meta.get("nn_module_stack")
        if stack:
            node.meta["nn_module_stack"] = type(stack)(
                (inner(path), (inner(str(where)), owner)) for path, (where, owner) in stack.items() if path != "model"
            )
