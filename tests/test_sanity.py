"""deconvnet.analysis.sanity: the similarities against SciPy and scikit-image, randomization on a
copy (the user's model and random state untouched, each step's maps equal to the oracle on an
identically randomized model), class sensitivity and the deletion/insertion orderings."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from reference import classes_reference
from torch import nn

from deconvnet import DeconvNet, InputError
from deconvnet.analysis import sanity
from deconvnet.analysis.occlusion import Occlusion


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 5),
    ).double().eval()


@pytest.fixture(scope="module")
def case():
    torch.manual_seed(1)
    return small_net(), torch.randn(3, 3, 16, 16, dtype=torch.float64)


def test_similarities_equal_scipy_and_scikit_image():
    from scipy.stats import pearsonr, spearmanr
    from skimage.metrics import structural_similarity

    torch.manual_seed(0)
    a = torch.randn(2, 12, 10, dtype=torch.float64)
    b = a + 0.7 * torch.randn(2, 12, 10, dtype=torch.float64)
    a[0, :3] = 0.0  # ties in the ranks
    b[1, :, :2] = 0.0
    ours = sanity.spearman(a, b), sanity.pearson(a, b), sanity.ssim(a, b)
    for n in range(2):
        x, y = a[n].numpy(), b[n].numpy()
        assert float(ours[0][n]) == pytest.approx(spearmanr(np.abs(x).ravel(), np.abs(y).ravel())[0], abs=1e-12)
        assert float(ours[1][n]) == pytest.approx(pearsonr(x.ravel(), y.ravel())[0], abs=1e-12)
        ux, uy = np.abs(x) / np.abs(x).max(), np.abs(y) / np.abs(y).max()
        span = max(ux.max(), uy.max()) - min(ux.min(), uy.min())
        expected = structural_similarity(ux, uy, win_size=7, data_range=span)
        assert float(ours[2][n]) == pytest.approx(expected, abs=1e-10)
    same = sanity.ssim(a, a)
    torch.testing.assert_close(same, torch.ones(2, dtype=torch.float64))
    with pytest.raises(InputError, match="SSIM needs maps of at least 7 x 7 pixels"):
        sanity.ssim(a[:, :5, :5], b[:, :5, :5])


def _randomized_like(model: nn.Module, groups, order: str, seed: int, upto: int) -> nn.Module:
    """What model_randomization's step ``upto`` should hold, rebuilt independently."""
    other = copy.deepcopy(model)
    modules = dict(other.named_modules())
    steps = range(1, upto + 1) if order == "cascading" else [upto]
    for step in steps:
        torch.manual_seed(seed + step)
        for name in groups[step - 1]:
            modules[name].reset_parameters()
    return other


@pytest.mark.parametrize("order", ["cascading", "independent"])
def test_randomization_runs_on_a_copy_and_each_step_equals_the_oracle(case, order):
    model, x = case
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    result = sanity.model_randomization(model, x, order=order, steps=3, seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random state is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model too
    # modules with parameters, the top first, in three groups
    assert result.groups == [["10", "8"], ["4"], ["1", "0"]] and result.layers == ["10", "4", "1"]
    target = model(x).argmax(dim=1)
    assert torch.equal(result.target, target)
    for step in (1, 3):
        randomized = _randomized_like(model, result.groups, order, 5, step)
        for rule in ("deconvnet", "gradient"):
            expected = classes_reference(randomized, x, sorted(set(target.tolist())), rule=rule)
            slot = [sorted(set(target.tolist())).index(c) for c in target.tolist()]
            heat = expected[torch.arange(3), slot].sum(dim=1)
            torch.testing.assert_close(result.maps[rule][step], heat, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(result.maps["guided"][0], sanity.heat(DeconvNet(model, rule="guided").reconstruct_classes(
        x, sorted(set(target.tolist())))[torch.arange(3), [sorted(set(target.tolist())).index(c)
                                                           for c in target.tolist()]]))
    summary = result.summary()
    assert [s["step"] for s in summary["guided"]] == [1, 2, 3]
    assert set(summary["guided"][0]) == {"step", "layers", "spearman", "ssim", "pearson"}
    assert result.similarity["deconvnet"]["spearman"].shape == (3, 3)


def test_randomization_and_sensitivity_errors(case):
    model, x = case
    with pytest.raises(InputError, match="order must be 'cascading' or 'independent', got 'top'"):
        sanity.model_randomization(model, x, order="top")
    with pytest.raises(InputError, match="rules must be among deconvnet, guided, gradient"):
        sanity.model_randomization(model, x, rules=["lrp"])
    with pytest.raises(InputError, match=r"the sanity checks take images, Tensor\[N, C, H, W\]"):
        sanity.class_sensitivity(model, x[0])
    with pytest.raises(InputError, match=r"target \[9, 9, 9\] does not give one class of 0..4 per image"):
        sanity.model_randomization(model, x, target=9)
    with pytest.raises(InputError, match="steps must be a positive int, got 0"):
        sanity.model_randomization(model, x, steps=0)
    with pytest.raises(InputError, match=r"the occluder \(20 px\) is larger than the image \(16 x 16\)"):
        sanity.faithfulness(model, x, occluder=20)
    one_class = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(1)).double().eval()
    one_class(x)
    with pytest.raises(InputError, match=r"class sensitivity needs a classifier of at least 2 classes"):
        sanity.class_sensitivity(one_class, x)


def test_class_sensitivity_compares_the_top_class_with_two_others(case):
    model, x = case
    result = sanity.class_sensitivity(model, x, rules=["deconvnet", "gradient"], seed=3)
    ranked = model(x).argsort(dim=1, descending=True)
    assert torch.equal(result.target, ranked[:, 0]) and torch.equal(result.second, ranked[:, 1])
    assert (result.random != result.target).all()
    dn = DeconvNet(model)
    for n in range(3):
        own = dn.reconstruct_classes(x[n : n + 1], [int(result.second[n])], rule="gradient")[0, 0].sum(dim=0)
        torch.testing.assert_close(result.maps["gradient"][1, n], own)
    value = result.similarity["deconvnet"]["second"]["spearman"]
    torch.testing.assert_close(value, sanity.spearman(result.maps["deconvnet"][0], result.maps["deconvnet"][1]))
    assert set(result.summary()["gradient"]) == {"second", "random"}


def test_occlusion_saliency_is_the_mean_drop_of_the_occluders_covering_each_pixel():
    result = Occlusion(size=2, stride=1, fill=0.0, grid=(2, 2), target=torch.tensor([0]),
                       probability=torch.tensor([[[0.5, 0.7], [0.9, 0.1]]]), label=torch.zeros(1, 2, 2),
                       unoccluded=torch.tensor([1.0]))
    drops = [[0.5, 0.3], [0.1, 0.9]]
    got = sanity.occlusion_saliency(result, (3, 3))[0]
    assert float(got[1, 1]) == pytest.approx(sum(map(sum, drops)) / 4)  # the centre: under all four
    assert float(got[0, 0]) == pytest.approx(0.5) and float(got[0, 1]) == pytest.approx(0.4)
    assert float(got[2, 2]) == pytest.approx(0.9)


def test_faithfulness_orders_each_map_and_the_baselines(case):
    model, x = case
    result = sanity.faithfulness(model, x, rules=["guided"], steps=4, occluder=4)
    assert list(result.curves) == ["guided", "occlusion", "random", "centre"]
    for curves in result.curves.values():
        assert curves.deletion.shape == curves.insertion.shape == (3, 5)
        # nothing removed: the image's own probability; everything inserted: the same
        probability = model(x).softmax(dim=1)[torch.arange(3), result.target].detach()
        torch.testing.assert_close(curves.deletion[:, 0], probability)
        torch.testing.assert_close(curves.insertion[:, -1], probability)
    summary = result.summary()
    assert set(summary["centre"]) == {"deletion_auc", "insertion_auc"}


def test_the_sanity_command_writes_its_figures_and_report(tmp_path, capsys):
    import json

    from PIL import Image

    from deconvnet.cli import main
    from deconvnet.shapes import held_out_samples

    samples = list(held_out_samples().items())[:2]
    paths = []
    for name, make in samples:
        make().save(tmp_path / f"{name}.png")
        paths.append(str(tmp_path / f"{name}.png"))
    out = tmp_path / "out"
    assert main(["sanity", *paths, "--model", "shapes", "--device", "cpu", "--steps", "3", "--curve-steps", "4",
                 "--rules", "guided", "gradient", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Spearman after all" in printed and "centre" in printed
    report = json.loads((out / "sanity.json").read_text())
    assert set(report["rules"]) == {"guided", "gradient"} and set(report["baselines"]) == {"occlusion", "random", "centre"}
    steps = report["rules"]["guided"]["randomization"]
    assert [s["step"] for s in steps] == [1, 2, 3] and steps[0]["layers"][0] == "classifier.5"
    assert report["images"] == [f"{name}.png" for name, _ in samples] and len(report["target_names"]) == 2
    for key in ("deletion_auc", "insertion_auc", "class_sensitivity"):
        assert key in report["rules"]["gradient"]
    figure = Image.open(out / "randomization.png")
    assert figure.width > 5 * 64 and figure.height > 2 * 64  # two rules, the input, the model as loaded and three steps
    assert main(["sanity", *paths, "--model", "shapes", "--steps", "0", "--out", str(out)]) == 1
    assert "--steps must be at least 1, got 0" in capsys.readouterr().err
