"""A small float64 network and a dataset with known troubles, shared by the atlas tests and the
subprocesses they start (killed runs)."""

from __future__ import annotations

import os
import signal

import torch
from torch import nn
from torch.utils.data import Dataset

LAYERS = ["1", "4"]  # a ReLU at 16x16 (6 channels), a ReLU at 6x6 (8 channels)
BAD = {5, 17}  # items whose reading fails
COPY = (2, 11)  # item 11 is item 2 again: equal activations, the tie goes to index 2


def small_net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 8, 3), nn.ReLU(),
    )
    return net.double().eval()


class Troubled(Dataset):
    """``count`` random images (Tensor[3, 16, 16], float64); BAD items raise; COPY repeats one.
    kill_at: SIGKILL this process when that item is read (a run killed mid-way)."""

    def __init__(self, count: int = 30, kill_at: int | None = None) -> None:
        generator = torch.Generator().manual_seed(1)
        self.images = torch.randn(count, 3, 16, 16, generator=generator, dtype=torch.float64)
        self.images[COPY[1]] = self.images[COPY[0]]
        self.kill_at = kill_at

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if index == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if index in BAD:
            raise OSError(f"item {index} is damaged")
        return self.images[index], 0


def shapes_site(tmp_path_factory, layers: list[str], images: int):  # type: ignore[no-untyped-def]
    """A small atlas site of the bundled ShapesNet over ``images`` generated pictures (k = 3):
    (its folder, the Atlas)."""
    from deconvnet.analysis.atlas import build_atlas
    from deconvnet.loading import Preprocessing, load_model
    from deconvnet.shapes import render

    data = tmp_path_factory.mktemp("atlas-data")
    for i in range(images):
        render(21, i).image.save(data / f"{i:02d}.png")
    out = tmp_path_factory.mktemp("atlas")
    atlas = build_atlas(load_model("shapes").model, data, layers, out, k=3, preprocessing=Preprocessing.shapes(),
                        model_name="shapes", batch_size=6)
    return out, atlas
