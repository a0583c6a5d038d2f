"""The bundled example model: a small VGG-style CNN trained on :mod:`deconvnet.shapes`.

Its weights ship inside the package (``weights/shapes_net.pt``), so the demo and the tests run
offline. ``scripts/train_shapes.py`` is the deterministic script that produced them.
"""

from __future__ import annotations

import json
from importlib import resources

import torch
from torch import nn

from .shapes import CLASSES

__all__ = ["ShapesNet", "shapes_net", "shapes_net_info"]

_WEIGHTS = "shapes_net.pt"
_INFO = "shapes_net.json"


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    ]


class ShapesNet(nn.Module):
    """conv/ReLU/max-pool blocks, global average pooling and a linear head, for 64x64 RGB
    images of 6 shape classes.

    x (Tensor[N, 3, 64, 64], normalised as :func:`deconvnet.shapes.normalize`) ->
    logits Tensor[N, 6].
    """

    def __init__(self, num_classes: int = len(CLASSES)) -> None:
        super().__init__()
        self.features = nn.Sequential(*_block(3, 16), *_block(16, 32), *_block(32, 64))
        # Global average pooling before the linear head: class evidence may sit anywhere.
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 64), nn.ReLU(inplace=True),
            nn.Dropout(0.3), nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def shapes_net() -> ShapesNet:
    """The trained ShapesNet in eval mode, loaded offline from the package."""
    model = ShapesNet()
    path = resources.files("deconvnet") / "weights" / _WEIGHTS
    with resources.as_file(path) as file:
        state = torch.load(file, map_location="cpu", weights_only=True)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval()


def shapes_net_info() -> dict:
    """What training recorded: seeds, steps, held-out accuracy."""
    path = resources.files("deconvnet") / "weights" / _INFO
    return json.loads(path.read_text())
