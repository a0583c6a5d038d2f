"""Train the bundled ShapesNet on generated shapes, deterministically, on the CPU.

    python scripts/train_shapes.py [--steps 2000] [--out deconvnet/weights]

Training images are drawn fresh every step from seed 1 (no image is seen twice); accuracy is
measured on 2000 held-out images of seed 2. Writes ``shapes_net.pt`` (state dict) and
``shapes_net.json`` (what was run and the accuracy reached) into ``--out``, and the weights at
the ``--checkpoints`` steps into ``--out/evolution/`` (for the feature-evolution figure; saving
copies changes nothing in training). ``--stop-after N`` ends after step N of the same schedule,
writing only the checkpoints reached (a test reproduces the shipped early checkpoints this way).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from deconvnet.models import EVOLUTION_STEPS, ShapesNet, evolution_checkpoint
from deconvnet.shapes import CLASSES, ShapesDataset

TRAIN_SEED, HELD_OUT_SEED = 1, 2


def machine() -> dict:
    """What bit-for-bit reproduction of a run depends on."""
    cpu, simd = platform.processor() or platform.machine(), []
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        lines = cpuinfo.read_text().splitlines()
        cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), cpu)
        flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
        simd = sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "sse4")))  # which kernels run
    return {"cpu": cpu, "simd": simd, "threads": torch.get_num_threads(), "torch": torch.__version__}


@torch.no_grad()
def accuracy(model: torch.nn.Module, seed: int, count: int) -> float:
    model.eval()
    correct = 0
    for x, y in DataLoader(ShapesDataset(seed, count), batch_size=250):
        correct += int((model(x).argmax(1) == y).sum())
    return correct / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--held-out", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path("deconvnet/weights"))
    parser.add_argument("--checkpoints", type=int, nargs="*", default=list(EVOLUTION_STEPS),
                        help="steps whose weights are saved into OUT/evolution/")
    parser.add_argument("--stop-after", type=int, default=None, help="stop after this step (same schedule)")
    args = parser.parse_args()
    evolution = args.out / "evolution"

    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    model = ShapesNet()
    # He initialisation: with PyTorch's default the plain conv stack and its global average
    # pooling pass too little signal, and training stalls at chance.
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            torch.nn.init.zeros_(module.bias)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.steps)
    data = DataLoader(ShapesDataset(TRAIN_SEED, args.steps * args.batch_size), batch_size=args.batch_size)
    start = time.time()
    model.train()
    for step, (x, y) in enumerate(data, 1):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0:
            print(f"step {step}/{args.steps} loss {loss.item():.3f} ({time.time() - start:.0f} s)", flush=True)
        if step in args.checkpoints:
            evolution.mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), evolution_checkpoint(step, evolution))
            # Training is bit-reproducible only with the same CPU kind, thread count and torch.
            (evolution / "machine.json").write_text(json.dumps(machine(), indent=2) + "\n")
            print(f"saved step {step} to {evolution_checkpoint(step, evolution)}", flush=True)
        if step == args.stop_after:
            return
    held_out = accuracy(model, HELD_OUT_SEED, args.held_out)
    print(f"held-out accuracy {held_out:.4f} on {args.held_out} images of seed {HELD_OUT_SEED}")
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out / "shapes_net.pt")
    info = {
        "classes": list(CLASSES),
        "train_seed": TRAIN_SEED,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "held_out_seed": HELD_OUT_SEED,
        "held_out_images": args.held_out,
        "held_out_accuracy": held_out,
        "train_seconds": round(time.time() - start),
        "torch": torch.__version__,
    }
    (args.out / "shapes_net.json").write_text(json.dumps(info, indent=2) + "\n")


if __name__ == "__main__":
    main()
