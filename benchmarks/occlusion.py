"""Occlusion sensitivity: exact incremental inference against Captum's Occlusion."""

from __future__ import annotations

import time
import warnings

import torch

from .harness import (
    _model,
    _row,
    checked,
    relative_error,
)


def _occlusion_model(name: str, device: torch.device) -> torch.nn.Module:
    if name == "efficientnet-lite0":
        from deconvnet.models import efficientnet_lite0

        return efficientnet_lite0().to(device)
    return _model(name, device)


def captum_occlusion(model: torch.nn.Module, x: torch.Tensor, size: int, stride: int, target: int,
                     per_eval: int) -> torch.Tensor:
    """Captum's Occlusion on softmax probabilities: Tensor[C, H, W], per pixel the mean drop in
    P(target) over the occluder positions covering it."""
    from captum.attr import Occlusion as CaptumOcclusion

    def probabilities(batch: torch.Tensor) -> torch.Tensor:
        return model(batch).softmax(-1)

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return CaptumOcclusion(probabilities).attribute(
            x, sliding_window_shapes=(x.shape[1], size, size), strides=(x.shape[1], stride, stride), baselines=0.0,
            target=target, perturbations_per_eval=per_eval)[0]


def per_pixel_drop(result, shape: torch.Size) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """Our grid as Captum reports it: Tensor[C, H, W], per pixel the mean of
    P_unoccluded - P_occluded over the positions covering it (0 where none does)."""
    from deconvnet.analysis.occlusion import occluder_corners

    total = torch.zeros(shape[-2:], dtype=torch.float64)
    count = torch.zeros(shape[-2:], dtype=torch.float64)
    drops = (result.unoccluded[0] - result.probability[0].flatten()).double().cpu()
    for (top, left), drop in zip(occluder_corners(shape[-2], shape[-1], result.size, result.stride).tolist(), drops):
        total[top : top + result.size, left : left + result.size] += drop
        count[top : top + result.size, left : left + result.size] += 1
    return (total / count.clamp(min=1)).expand(shape[1], -1, -1)


def bench_occlusion(model_name: str, size: int, stride: int, image_size: int, device: torch.device,
                    per_evals: tuple[int, ...] = (16, 64)) -> dict:
    """occlusion() (incremental, and whole batches) vs Captum's Occlusion at its best
    perturbations_per_eval, one image, each run once after a small warm-up (runs last seconds)."""
    from deconvnet.analysis.occlusion import occlusion

    model = _occlusion_model(model_name, device)
    torch.manual_seed(0)
    x = torch.randn(1, 3, image_size, image_size, device=device)
    target = 3
    occlusion(model, x[..., :64, :64], size=16, stride=16)  # warm-up
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    ours = occlusion(model, x, size=size, stride=stride, target=target)
    seconds["deconvnet incremental"] = time.perf_counter() - start
    start = time.perf_counter()
    whole = occlusion(model, x, size=size, stride=stride, target=target, incremental=False)
    seconds["deconvnet whole"] = time.perf_counter() - start
    best, reference = None, None
    for per_eval in per_evals:
        start = time.perf_counter()
        reference = captum_occlusion(model, x, size, stride, target, per_eval)
        elapsed = time.perf_counter() - start
        seconds[f"captum ppe={per_eval}"] = elapsed
        best = elapsed if best is None else min(best, elapsed)
    assert reference is not None and best is not None
    mine = per_pixel_drop(ours, x.shape)
    error = checked(device, relative_error(mine, reference.double().cpu()), f"occlusion {model_name}")
    checked(device, relative_error(whole.probability, ours.probability), f"occlusion whole {model_name}")
    positions = ours.grid[0] * ours.grid[1]
    return _row("occlusion", f"{model_name}, {size} px occluder, stride {stride}", image_size, positions, device,
                torch.float32, seconds,
                **{"best captum / incremental": best / seconds["deconvnet incremental"],
                   "whole / incremental": seconds["deconvnet whole"] / seconds["deconvnet incremental"],
                   "relative error": error})
