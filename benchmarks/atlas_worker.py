"""One process of the atlas benchmark, started by ``python -m benchmarks atlas`` (plainly, or
under torchrun for several processes): times the plain forward over the folder, the atlas's
mining pass and its projection pass, each between barriers, and rank 0 prints one JSON line.

    python -m benchmarks.atlas_worker FOLDER MODEL BATCH LAYER...
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from deconvnet import DeconvNet
from deconvnet.analysis.atlas import (
    AtlasImages,
    Tile,
    mine_atlas,
    project_atlas,
    rank_and_world,
    shard,
)
from deconvnet.loading import load_model


def main() -> None:
    folder, model_name, batch, *layers = sys.argv[1:]
    batch_size = int(batch)
    if "WORLD_SIZE" in __import__("os").environ:
        dist.init_process_group("gloo")
    rank, world = rank_and_world()
    torch.manual_seed(0)  # random weights: the same model on every rank
    loaded = load_model(model_name)
    dn = DeconvNet(loaded.model)
    images = AtlasImages(Path(folder), loaded.preprocessing)

    def barrier() -> None:
        if world > 1:
            dist.barrier()

    def forward() -> None:  # the plain forward over this rank's shard, same loader, same batches
        batches = shard(len(images), batch_size, rank, world)
        loader = torch.utils.data.DataLoader(images, batch_sampler=batches,
                                             collate_fn=lambda items: torch.stack([x for _, x, _ in items]))
        with torch.no_grad():
            for x in loader:
                loaded.model(x)

    seconds = {}
    mine_atlas(dn, images, layers, k=9, batch_size=batch_size)  # warm-up: first calls allocate
    for name, work in [("forward", forward), ("mining", lambda: mine_atlas(dn, images, layers, k=9, batch_size=batch_size))]:
        barrier()
        start = time.perf_counter()
        result = work()
        barrier()
        seconds[name] = time.perf_counter() - start
        if name == "mining":
            atlas = result
    tiles: list[Tile] = []
    barrier()
    start = time.perf_counter()
    project_atlas(dn, images, atlas, tiles.append, batch_size=batch_size)  # type: ignore[possibly-undefined]
    barrier()
    seconds["projecting"] = time.perf_counter() - start
    if rank == 0:
        print(json.dumps({"world": world, "threads": torch.get_num_threads(), "images": len(images),
                          "units": len(tiles), "seconds": seconds}))
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
