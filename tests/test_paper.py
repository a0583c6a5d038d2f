"""The paper's other analyses against brute force: invariance (Fig. 5), correspondence (Fig. 8 /
Table 1), feature evolution (Fig. 4), filters (Fig. 6); train_shapes.py reproducing the shipped
checkpoints; the CLI commands."""

from __future__ import annotations

import itertools
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from reference import assert_exact, deconv_gradient
from torch import nn
from torchvision.transforms.v2 import functional as TF

from deconvnet import InputError, LayerNotFoundError, TargetOutOfRangeError
from deconvnet.analysis.correspondence import correspondence, fill_boxes, random_boxes
from deconvnet.analysis.evolution import evolution
from deconvnet.analysis.filters import (
    filter_rms,
    filters_figure,
    first_conv,
    renormalize_filters,
)
from deconvnet.analysis.invariance import invariance, transform_image
from deconvnet.cli import main
from deconvnet.models import (
    EVOLUTION_STEPS,
    evolution_checkpoint,
    shapes_net_at,
)
from deconvnet.shapes import render

ROOT = Path(__file__).parent.parent


def classifier(seed: int = 0) -> nn.Sequential:
    """Conv-ReLU-pool-conv-ReLU then a linear head over 5 classes, float64."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 8, 3), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    ).double().eval()


def images(n: int = 4, size: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- invariance ---------------------------------------------------------------------------


@pytest.mark.parametrize(("transform", "amounts"), [("translate", [-3, 0, 2, 5]), ("scale", [0.7, 1.0, 1.3]),
                                                     ("rotate", [0, 30, 90, 200])])
def test_invariance_equals_each_image_transformed_alone(transform, amounts):
    net, x = classifier(), images()
    result = invariance(net, x, ["1", "4"], transform, amounts, batch_size=3)
    predicted = net(x).argmax(1)
    assert torch.equal(result.target, predicted)
    for i, (a, amount) in itertools.product(range(4), enumerate(amounts)):
        one = x[i : i + 1]
        if transform == "translate":
            moved = TF.affine(one, angle=0.0, translate=[0.0, float(amount)], scale=1.0, shear=[0.0, 0.0],
                              interpolation=TF.InterpolationMode.BILINEAR, fill=0.0)
        elif transform == "scale":
            moved = TF.affine(one, angle=0.0, translate=[0.0, 0.0], scale=float(amount), shear=[0.0, 0.0],
                              interpolation=TF.InterpolationMode.BILINEAR, fill=0.0)
        else:
            moved = TF.rotate(one, float(amount), interpolation=TF.InterpolationMode.BILINEAR, fill=0.0)
        for layer, depth in enumerate((2, 5)):  # outputs of modules "1" and "4"
            expected = (net[:depth](moved) - net[:depth](one)).flatten().norm()
            assert torch.isclose(result.distance[layer, i, a], expected, rtol=1e-10, atol=1e-10)
        expected_p = net(moved).softmax(1)[0, predicted[i]]
        assert torch.isclose(result.probability[i, a], expected_p, rtol=1e-10)
        if amount == (1.0 if transform == "scale" else 0):
            assert result.distance[:, i, a].eq(0).all()  # amount 0 is the image itself: distance exactly 0


def test_translate_is_a_vertical_shift_filling_zeros():
    x = images(2, 12)
    down, up = transform_image(x, "translate", 3), transform_image(x, "translate", -2)
    # bilinear sampling at whole-pixel offsets: the pixels themselves, to rounding
    torch.testing.assert_close(down[..., 3:, :], x[..., :-3, :], rtol=0, atol=1e-12)
    torch.testing.assert_close(up[..., :-2, :], x[..., 2:, :], rtol=0, atol=1e-12)
    assert down[..., :3, :].abs().max() < 1e-12 and up[..., -2:, :].abs().max() < 1e-12


def test_invariance_follows_a_given_target_and_refuses_bad_input():
    net, x = classifier(), images(3)
    result = invariance(net, x, ["4"], "rotate", [0, 90], target=[4, 0, 2])
    assert result.target.tolist() == [4, 0, 2]
    assert torch.allclose(result.probability[:, 0], net(x).softmax(1)[[0, 1, 2], [4, 0, 2]])
    with pytest.raises(InputError, match="unknown transform 'shear'; choose one of translate, scale, rotate"):
        invariance(net, x, ["4"], "shear", [1])
    with pytest.raises(TargetOutOfRangeError, match="class 5 is out of range: the model has 5 classes"):
        invariance(net, x, ["4"], "rotate", [0], target=5)
    with pytest.raises(InputError, match="one class or one per image"):
        invariance(net, x, ["4"], "rotate", [0], target=[1, 2])
    with pytest.raises(InputError, match="a scale ratio must be positive, got -1"):
        invariance(net, x, ["4"], "scale", [-1.0])
    with pytest.raises(InputError, match="at least one amount"):
        invariance(net, x, ["4"], "scale", [])
    with pytest.raises(InputError, match="Tensor\\[N, C, H, W\\]"):
        invariance(net, x[0], ["4"], "scale", [1.0])
    with pytest.raises(InputError, match="name at least one layer"):
        invariance(net, x, [], "scale", [1.0])
    with pytest.raises(InputError, match="batch_size must be a positive integer, got 0"):
        invariance(net, x, ["4"], "scale", [1.0], batch_size=0)
    with pytest.raises(InputError, match="target must be a class index, got 1.5"):
        invariance(net, x, ["4"], "scale", [1.0], target=1.5)
    with pytest.raises(InputError, match="target must be class indices, got torch.float32"):
        invariance(net, x, ["4"], "scale", [1.0], target=torch.tensor([1.0, 2.0, 0.0]))
    with pytest.raises(InputError, match=r"the model must return logits Tensor\[N, classes\], got \(3, 8, 6, 6\)"):
        invariance(net[:5], x, ["1"], "scale", [1.0])


# --- correspondence -----------------------------------------------------------------------


def test_correspondence_equals_a_direct_pairwise_loop():
    net, x = classifier(), images(4)
    boxes = torch.tensor([[2, 3, 4, 5], [0, 0, 6, 6], [10, 9, 6, 7], [5, 5, 1, 1]])
    for layer, depth in (("1", 2), ("4", 5)):
        eps = []
        for i, (top, left, h, w) in enumerate(boxes.tolist()):
            occluded = x[i].clone()
            occluded[:, top : top + h, left : left + w] = 0.0
            eps.append((net[:depth](x[i : i + 1]) - net[:depth](occluded[None])).flatten().tolist())
        sign = lambda v: (v > 0) - (v < 0)
        fractions = [sum(sign(a) != sign(b) for a, b in zip(eps[i], eps[j], strict=True)) / len(eps[i])
                     for i in range(4) for j in range(i + 1, 4)]
        assert correspondence(net, x, boxes, layer) == pytest.approx(sum(fractions) / len(fractions), abs=1e-12)


def test_random_boxes_keep_sizes_stay_inside_and_repeat_with_the_seed():
    x = images(6, 20)
    boxes = torch.tensor([[0, 0, 5, 7]] * 3 + [[0, 4, 20, 1], [1, 0, 1, 20], [2, 2, 8, 8]])
    first = random_boxes(x, boxes, seed=3)
    assert torch.equal(first[:, 2:], boxes[:, 2:])
    assert (first[:, 0] + first[:, 2] <= 20).all() and (first[:, 1] + first[:, 3] <= 20).all() and (first >= 0).all()
    assert torch.equal(first, random_boxes(x, boxes, seed=3))
    assert not torch.equal(first, random_boxes(x, boxes, seed=4))
    assert torch.equal(fill_boxes(x, boxes)[0, :, 5:, :], x[0, :, 5:, :])
    inside = torch.zeros(6, 20, 20, dtype=torch.bool)
    inside[:, 12:15, 3:9] = True  # a small allowed region: every centre must land in it
    for seed in range(10):
        placed = random_boxes(x, boxes[[0, 1, 2, 5]].repeat(2, 1)[:6], seed=seed, inside=inside)
        centres = placed[:, :2] + placed[:, 2:] // 2
        assert all(inside[i, r, c] for i, (r, c) in enumerate(centres.tolist()))
    with pytest.raises(InputError, match="no 20x1 box in image 3 has its centre inside"):
        random_boxes(x, boxes, inside=inside)


def test_correspondence_refuses_bad_boxes():
    net, x = classifier(), images(3)
    with pytest.raises(InputError, match="LongTensor\\[3, 4\\], got torch.int64 \\(2, 4\\)"):
        correspondence(net, x, torch.zeros(2, 4, dtype=torch.long), "4")
    with pytest.raises(InputError, match="box 1 \\(top 12, left 0, height 5, width 2\\) does not lie inside the 16x16"):
        correspondence(net, x, torch.tensor([[0, 0, 2, 2], [12, 0, 5, 2], [0, 0, 1, 1]]), "4")
    with pytest.raises(InputError, match="got torch.float32"):
        correspondence(net, x, torch.zeros(3, 4), "4")
    with pytest.raises(InputError, match="at least 2, got 1"):
        correspondence(net, x[:1], torch.tensor([[0, 0, 2, 2]]), "4")
    with pytest.raises(InputError, match="x must be a Tensor\\[N, C, H, W\\]"):
        correspondence(net, x[0], torch.zeros(3, 4, dtype=torch.long), "4")
    with pytest.raises(InputError, match=r"inside must be a BoolTensor\[3, 16, 16\]"):
        random_boxes(x, torch.tensor([[0, 0, 2, 2]] * 3), inside=torch.ones(3, 8, 8, dtype=torch.bool))


# --- evolution ----------------------------------------------------------------------------


def test_evolution_picks_what_mining_each_checkpoint_alone_picks():
    x = images(7)
    nets = [classifier(seed) for seed in (0, 1, 2)]
    channels = [0, 3, 7]
    result = evolution(nets, x, "4", channels, labels=["a", "b", "c"], batch_size=3)
    for s, net in enumerate(nets):
        maps = net[:5](x).detach()  # [N, 8, 6, 6]
        for row, c in enumerate(channels):
            flat = maps[:, c].flatten(1)
            best = max((float(flat[i].max()), -i) for i in range(7))
            image = -best[1]
            position = max(range(36), key=lambda j: (float(flat[image, j]), -j))
            assert int(result.images[row, s]) == image and int(result.positions[row, s]) == position
            assert float(result.values[row, s]) == pytest.approx(best[0], rel=1e-12)

            def signal(out, c=c, position=position, value=best[0]):
                one_hot = torch.zeros_like(out)
                one_hot.view(1, 8, -1)[0, c, position] = value
                return one_hot

            expected = deconv_gradient(net, x[image : image + 1], signal, layer=net[4])[0]
            assert_exact(result.projections[row, s], expected, rtol=1e-9)


def test_evolution_errors():
    x = images(3)
    with pytest.raises(InputError, match="channel 8 is out of range: 4 has 8 channels"):
        evolution([classifier()], x, "4", [8])
    with pytest.raises(InputError, match="labels has 1 entries for 2 checkpoints"):
        evolution([classifier(), classifier(1)], x, "4", [0], labels=["only"])
    with pytest.raises(InputError, match="needs a layer with feature maps"):
        evolution([classifier()], x, "7", [0])
    with pytest.raises(InputError, match="give at least one checkpoint's model"):
        evolution([], x, "4", [0])
    with pytest.raises(InputError, match="x must be a non-empty Tensor\\[N, C, H, W\\]"):
        evolution([classifier()], x[:0], "4", [0])
    with pytest.raises(InputError, match="batch_size must be a positive integer, got 0"):
        evolution([classifier()], x, "4", [0], batch_size=0)
    with pytest.raises(InputError, match="give at least one channel"):
        evolution([classifier()], x, "4", [])


def test_shipped_checkpoints_load_and_change_along_training():
    weights = [shapes_net_at(step).state_dict()["features.0.weight"] for step in EVOLUTION_STEPS]
    assert all(not torch.equal(a, b) for a, b in itertools.pairwise(weights))
    with pytest.raises(InputError, match="no ShapesNet checkpoint at step 7"):
        shapes_net_at(7)


@pytest.mark.long
def test_train_shapes_reproduces_the_shipped_early_checkpoints(tmp_path):
    """The training script, stopped after step 100 of its 2000-step schedule, writes the shipped
    step-20 and step-100 weights bit for bit where it runs as the shipped run did (same CPU kind
    and SIMD flags, thread count, torch: the shipped machine.json). Elsewhere it cannot: measured
    here, the same script with 1 thread instead of 2 lands 3.9e-3 away at step 20 and 3.5e-2 at
    step 100 (Adam turns rounding differences into whole steps), so there the script stops after
    step 20, which the test checks to 0.05: an initialisation, data or seed change exceeds that by
    far."""
    recorded = json.loads(evolution_checkpoint(20).with_name("machine.json").read_text())
    # The script runs on the recorded thread count, as the shipped run did; on another machine
    # only step 20 is compared, so it stops there.
    machine = runpy.run_path(str(ROOT / "scripts" / "train_shapes.py"), run_name="train_shapes")["machine"]
    same = machine() | {"threads": recorded["threads"]} == recorded
    steps = (20, 100) if same else (20,)
    env = {**os.environ, "OMP_NUM_THREADS": str(recorded["threads"])}
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_shapes.py"), "--out", str(tmp_path),
                          "--stop-after", str(steps[-1])], capture_output=True, text=True, timeout=600, cwd=ROOT,
                         env=env, check=False)
    assert run.returncode == 0, run.stderr
    assert not (tmp_path / "shapes_net.pt").exists()
    assert (json.loads((tmp_path / "evolution" / "machine.json").read_text()) == recorded) == same
    for step in steps:
        ours = torch.load(evolution_checkpoint(step, tmp_path / "evolution"), weights_only=True)
        shipped = torch.load(evolution_checkpoint(step), weights_only=True)
        assert ours.keys() == shipped.keys()
        if same:
            assert all(torch.equal(ours[k], shipped[k]) for k in ours), f"step {step} differs on the same machine"
        else:
            for key in ours:
                torch.testing.assert_close(ours[key].float(), shipped[key].float(), rtol=0, atol=0.05, msg=key)


# --- filters ------------------------------------------------------------------------------


def test_renormalize_scales_only_the_filters_over_the_bound():
    net = classifier()
    name, weight = first_conv(net)
    assert name == "0" and weight.shape == (6, 3, 3, 3)
    before = weight.clone()
    rms = filter_rms(weight)
    bound = float(rms.median())
    fixed = renormalize_filters(weight, bound)
    over = rms > bound
    assert torch.allclose(filter_rms(fixed)[over], torch.full((int(over.sum()),), bound, dtype=torch.float64))
    assert torch.equal(fixed[~over], weight[~over])
    assert torch.equal(net[0].weight, before)  # the model is untouched
    assert filters_figure(weight).size[0] > 6 * 3 * 10
    with pytest.raises(InputError, match="max_rms must be a positive number, got 0"):
        renormalize_filters(weight, 0)
    with pytest.raises(InputError, match="7 is a ReLU, not a Conv2d"):
        first_conv(nn.Sequential(*[nn.Conv2d(3, 3, 1)] * 7, nn.ReLU()), "7")
    with pytest.raises(InputError, match="has no Conv2d layer"):
        first_conv(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(LayerNotFoundError, match="no module 'nope' in Sequential"):
        first_conv(net, "nope")
    with pytest.raises(InputError, match=r"filters_figure needs a Tensor\[O, I, kh, kw\], got torch.Size\(\[6, 27\]\)"):
        filters_figure(weight.flatten(1))


# --- the command line ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("images")
    for i in range(10):
        render(31, i).image.save(path / f"{i:02d}.png")
    return path


def test_paper_commands(folder, tmp_path, capsys):
    first, second = str(folder / "00.png"), str(folder / "01.png")
    assert main(["invariance", first, second, "--layers", "features.3", "features.13", "--out", str(tmp_path)]) == 0
    assert main(["correspondence", first, second, "--boxes", "10,10,8,8", "20,5,8,8", "--layers", "features.13",
                 "--random", "2", "--out", str(tmp_path)]) == 0
    assert "features.13: parts" in capsys.readouterr().out
    assert main(["evolution", str(folder), "--layer", "features.8", "--show", "2", "--out", str(tmp_path)]) == 0
    assert main(["filters", "--max-rms", "0.25", "--out", str(tmp_path)]) == 0
    for name in ("invariance.png", "invariance.json", "correspondence.png", "correspondence.json",
                 "evolution-features.8.png", "filters-shapes.png", "filters-shapes-renormalized.png"):
        assert (tmp_path / name).is_file(), name


@pytest.mark.parametrize(("args", "message"), [
    (["correspondence", "IMAGE", "--boxes", "1,2,3", "--layers", "features.3"], "a box is TOP,LEFT,HEIGHT,WIDTH"),
    (["correspondence", "IMAGE", "IMAGE", "--boxes", "1,2,3,4", "--layers", "features.3"], "one --boxes entry per image"),
    (["correspondence", "IMAGE", "IMAGE", "--boxes", "60,0,9,9", "0,0,2,2", "--layers", "features.3"],
     "does not lie inside the 64x64 image"),
    (["evolution", "FOLDER", "--layer", "features.8", "--model", "vgg11"], "give --checkpoints"),
    (["evolution", "FOLDER", "--layer", "features.8", "--channels", "99"], "channel 99 is out of range"),
    (["filters", "--layer", "features.1"], "features.1 is a ReLU, not a Conv2d"),
    (["filters", "--max-rms", "-1"], "max_rms must be a positive number"),
    (["invariance", "IMAGE", "--layers", "features.3", "nope"], "nope"),
])
def test_paper_commands_fail_in_one_line(args, message, folder, tmp_path, capsys):
    substitutions = {"IMAGE": str(folder / "00.png"), "FOLDER": str(folder)}
    try:
        code = main([substitutions.get(a, a) for a in args] + ["--out", str(tmp_path)])
    except SystemExit as exit_:  # argparse rejects a malformed value itself, with usage and one error line
        code = exit_.code
    err = capsys.readouterr().err
    assert code != 0 and message in err, err
    assert err.strip().count("\n") == 0 or err.startswith("usage:"), err
