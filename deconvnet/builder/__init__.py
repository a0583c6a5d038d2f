"""The builder: read a model's real forward with torch.fx and emit its mirror.

``build(model)`` traces the forward (so ``torch.flatten``, ``F.relu``, ``x.view`` inside
``forward`` are seen, not just ``children()``), looks every layer up in the rule set and every
call up in :data:`deconvnet.rules.CALLS`, follows the signal through the graph (chains, residual
adds, concatenations, gates) and returns a :class:`Network`: the forward steps in order, the
names one can reconstruct from, and the :class:`~deconvnet.mirror.Mirror`, the graph reversed.
Anything else on the signal path becomes a general :class:`~deconvnet.mirror.VJP` layer (or is
refused with ``strict=True``); a submodule torch.fx cannot trace becomes one such layer.

The package reads as the method: :mod:`~deconvnet.builder.tracing` (torch.fx reads the forward;
:mod:`~deconvnet.builder.sources` holds what timm and Hugging Face models need),
:mod:`~deconvnet.builder.reading` (each node on the signal path becomes its mirror layer: one
module per family of ops, looked up by kind), :mod:`~deconvnet.builder.network` (the
:class:`Network` assembled from them), with :mod:`~deconvnet.builder.nodes` (what a traced node
says) beside them. The mirror layers themselves live in :mod:`deconvnet.mirror`.
"""

from .network import Found, Network, Step, build, structure
from .nodes import call_site, fetch_attribute

__all__ = ["Step", "Network", "Found", "build", "structure", "call_site", "fetch_attribute"]
