"""The bundled example: generated shapes, the trained model, image helpers and the CLI."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from deconvnet import DeconvNet
from deconvnet.models import shapes_net, shapes_net_info
from deconvnet.pictures import image
from deconvnet.shapes import CLASSES, ShapesDataset, render


def test_shapes_are_deterministic_with_masks():
    a, b = render(5, 17), render(5, 17)
    assert a.image.tobytes() == b.image.tobytes() and a.label == b.label
    assert render(5, 18).image.tobytes() != a.image.tobytes()
    assert a.image.size == (64, 64) and a.mask.mode == "L"
    masks = [render(9, i).mask for i in range(50)]
    assert all(0 < sum(m.point(lambda v: v > 0).getdata()) < 64 * 64 // 2 for m in masks)
    assert {render(9, i).label for i in range(200)} == set(range(len(CLASSES)))


def test_bundled_model_loads_offline_and_reaches_recorded_accuracy():
    info = shapes_net_info()
    model = shapes_net()
    assert not model.training
    data = ShapesDataset(seed=11, length=600)  # a set neither training nor the record used
    x = torch.stack([data[i][0] for i in range(len(data))])
    y = torch.tensor([data[i][1] for i in range(len(data))])
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert accuracy >= info["held_out_accuracy"] - 0.03, (accuracy, info["held_out_accuracy"])
    assert accuracy > 0.9


def test_signed_to_unit_puts_zero_at_mid_grey():
    r = torch.randn(2, 3, 3, 8, 8)
    r[0, 0, :, 0, 0] = 0
    out = image.signed_to_unit(r)
    assert out.shape == r.shape
    assert out.min() >= 0 and out.max() <= 1
    assert torch.allclose(out[0, 0, :, 0, 0], torch.full((3,), 0.5))
    # each reconstruction reaches 0 or 1 at its largest magnitude
    flat = (out - 0.5).abs().flatten(2).amax(-1)
    assert torch.allclose(flat, torch.full_like(flat, 0.5))
    assert torch.equal(image.signed_to_unit(torch.zeros(1, 3, 4, 4)), torch.full((1, 3, 4, 4), 0.5))
    assert torch.equal(image.signed_to_unit(r), out)  # deterministic


def test_signed_to_unit_is_not_washed_out_by_a_few_extreme_pixels():
    r = torch.full((3, 20, 20), 0.1)
    r[0, 0, 0] = 1000.0  # one extreme pixel among 1200
    out = image.signed_to_unit(r)
    assert out[1:].min() == 1.0  # the ordinary pixels reach full contrast, not 0.50005
    assert out[0, 0, 0] == 1.0
    # the largest magnitude is still available
    assert torch.allclose(image.signed_to_unit(r, percentile=100)[1:], torch.tensor(0.5 + 0.1 / 2000))


def test_heatmap_overlay_and_pictures():
    r = torch.randn(4, 3, 10, 12)
    heat = image.heatmap(r)
    assert heat.shape == (4, 3, 10, 12) and heat.min() >= 0 and heat.max() <= 1
    base = torch.rand(3, 10, 12)
    over = image.overlay(base, r[0])
    assert over.shape == (3, 10, 12) and over.min() >= 0 and over.max() <= 1
    pil = image.to_pil(base)
    assert isinstance(pil, Image.Image) and pil.size == (12, 10)
    grid = image.labelled_grid(heat, ["a", "b", "c", "d"], ncol=2, scale=2)
    assert grid.width == 2 * 24 + 3 * 2


def test_demo_reconstructions_are_nonzero():
    model = shapes_net()
    sample = render(3, 0)
    from deconvnet.shapes import normalize

    dn = DeconvNet(model)
    out = dn.reconstruct_classes(normalize(sample.image)[None])
    assert out.shape == (1, 6, 3, 64, 64)
    assert out.abs().sum() > 0




def test_pointing_game_baselines_are_computed_from_the_masks():
    from torchvision.transforms.functional import pil_to_tensor

    from deconvnet.analysis.pointing import pointing_game

    samples = [render(31, i) for i in range(24)]
    strict, loose = pointing_game(DeconvNet(shapes_net()), samples, batch_size=10, tolerances=(0, 4))
    masks = torch.stack([pil_to_tensor(s.mask)[0] > 0 for s in samples])
    assert strict.images == 24 and (strict.tolerance, loose.tolerance) == (0, 4)
    assert strict.random == pytest.approx(masks.float().mean().item())
    assert strict.centre == pytest.approx(masks[:, 32, 32].float().mean().item())
    for a, b in [(strict.deconvnet, loose.deconvnet), (strict.centre, loose.centre), (strict.random, loose.random)]:
        assert 0 <= a <= b <= 1
