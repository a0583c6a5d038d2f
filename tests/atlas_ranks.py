"""One rank of a two-process gloo atlas run in which rank 1 meets a bad batch (used by
test_atlas.py; started without torchrun, whose agent would kill the other rank for us).

    python tests/atlas_ranks.py RANK PORT OUT
"""

from __future__ import annotations

import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from atlas_data import LAYERS, small_net
from torch.utils.data import Dataset

from deconvnet.analysis.atlas import RankFailedError, build_atlas

COUNT, BATCH, BAD = 200, 4, 13  # item 13 (in rank 1's second batch) has the wrong size


class Slow(Dataset):
    """Images that take 20 ms each to read; counts how many this process read."""

    read = 0

    def __len__(self) -> int:
        return COUNT

    def __getitem__(self, index: int) -> torch.Tensor:
        Slow.read += 1
        time.sleep(0.02)
        size = 12 if index == BAD else 16
        return torch.randn(3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(index))


def main() -> int:
    rank, port, out = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=120))
    try:
        build_atlas(small_net(), Slow(), LAYERS, out, k=3, batch_size=BATCH)
    except RankFailedError as error:
        print(f"rank {rank} stopped after reading {Slow.read} of {COUNT // 2} images: {error}", flush=True)
        return 3
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
