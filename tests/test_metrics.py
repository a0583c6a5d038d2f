"""deconvnet.metrics: Captum's infidelity and sensitivity_max to the number, and the deletion and
insertion curves against a step-by-step brute force."""

from __future__ import annotations

import pytest
import torch
from captum import metrics as captum_metrics
from captum.attr import GuidedBackprop as CaptumGuided
from captum.attr import Saliency
from torch import nn

from deconvnet import InputError, metrics
from deconvnet.captum import GuidedBackprop


class TwoInputs(nn.Module):
    """A small conv classifier with an extra scale argument, as additional_forward_args test."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x: torch.Tensor, scale: torch.Tensor | float = 1.0) -> torch.Tensor:
        return self.head(self.features(x * scale).flatten(1))


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return TwoInputs().double().eval()


def _noise(inputs, baselines=None):  # a perturbation drawn from the global generator
    noise = torch.randn(inputs.shape, dtype=inputs.dtype) * 0.1
    return noise, inputs - noise


def _both(call_ours, call_theirs, seed=3):
    torch.manual_seed(seed)
    ours = call_ours()
    torch.manual_seed(seed)
    theirs = call_theirs()
    return ours, theirs


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("batching", [None, 7])
def test_infidelity_equals_captums(net, normalize, batching):
    torch.manual_seed(1)
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    attributions = torch.randn_like(x)
    scale = torch.tensor([[[[1.0]]], [[[2.0]]], [[[0.5]]]], dtype=torch.float64)
    arguments = dict(inputs=x, attributions=attributions, additional_forward_args=(scale,), target=[0, 3, 1],
                     n_perturb_samples=5, max_examples_per_batch=batching, normalize=normalize)
    ours, theirs = _both(lambda: metrics.infidelity(net, _noise, **arguments),
                         lambda: captum_metrics.infidelity(net, _noise, **arguments))
    assert ours.shape == (3,)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_perturbations_are_asked_for_as_captum_asks(net):
    """Same batches, same order: a user's function sees exactly what it sees under Captum."""
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    baselines = torch.zeros_like(x)
    calls: dict[str, list] = {"ours": [], "captum": []}

    def recording(name, decorator):
        @decorator(multiply_by_inputs=True)
        def perturb(inputs, baselines):
            calls[name].append((tuple(inputs.shape), float(inputs.sum()), float(baselines.sum())))
            return inputs * 0.9

        return perturb

    attributions = torch.randn_like(x)
    common = dict(inputs=x, attributions=attributions, baselines=baselines, target=2, n_perturb_samples=5,
                  max_examples_per_batch=4)
    ours = metrics.infidelity(net, recording("ours", metrics.infidelity_perturb_func_decorator), **common)
    theirs = captum_metrics.infidelity(net, recording("captum", captum_metrics.infidelity_perturb_func_decorator),
                                       **common)
    assert calls["ours"] == calls["captum"] and len(calls["ours"]) == 3  # copies per call: 2, 2, 1
    assert [c[0][0] for c in calls["ours"]] == [4, 4, 2]
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_sensitivity_max_equals_captums_with_the_same_explanation(net):
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    explain = Saliency(net).attribute
    for batching in (None, 6):
        ours, theirs = _both(
            lambda: metrics.sensitivity_max(explain, x, target=[1, 4], n_perturb_samples=4,
                                            max_examples_per_batch=batching),
            lambda: captum_metrics.sensitivity_max(explain, x, target=[1, 4], n_perturb_samples=4,
                                                   max_examples_per_batch=batching))
        assert ours.shape == (2,)
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_sensitivity_max_of_our_guided_backprop_equals_captums_of_its_own(net):
    """Our mirror's explanation in our metric, Captum's explanation in Captum's: the same numbers."""
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    ours, theirs = _both(
        lambda: metrics.sensitivity_max(GuidedBackprop(net).attribute, x, target=2, perturb_radius=0.05,
                                        n_perturb_samples=6, max_examples_per_batch=9),
        lambda: captum_metrics.sensitivity_max(CaptumGuided(net).attribute, x, target=2, perturb_radius=0.05,
                                               n_perturb_samples=6, max_examples_per_batch=9))
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-12)
    assert (ours > 0).all()


def test_metric_errors_name_the_fix(net):
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    with pytest.raises(InputError, match=r"an attribution has shape \(2, 1, 4, 4\) for an input of shape"):
        metrics.infidelity(net, _noise, x, torch.zeros(2, 1, 4, 4), target=0)
    with pytest.raises(InputError, match=r"forward_func gives \(2, 5\) for 2 examples; name the explained output"):
        metrics.infidelity(net, _noise, x, torch.zeros_like(x))
    with pytest.raises(InputError, match="n_perturb_samples must be a positive int"):
        metrics.sensitivity_max(Saliency(net).attribute, x, target=0, n_perturb_samples=0)


# --- deletion and insertion -----------------------------------------------------------------------


def test_order_by_takes_the_most_salient_first_and_ties_in_reading_order():
    saliency = torch.tensor([[[0.5, 2.0], [0.5, -1.0]]])
    assert metrics.order_by(saliency).tolist() == [[[1, 0], [2, 3]]]
    assert metrics.order_by(torch.stack([saliency, saliency], dim=1)).tolist() == [[[1, 0], [2, 3]]]


def test_deletion_and_insertion_equal_a_step_by_step_brute_force(net):
    torch.manual_seed(2)
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    saliency = torch.randn(2, 8, 8, dtype=torch.float64)
    curves = metrics.deletion_insertion(net, x, metrics.order_by(saliency), steps=4, fill=-1.0, blur=1.5,
                                        batch_size=3)
    predicted = net(x).argmax(dim=1)
    assert torch.equal(curves.target, predicted)
    blurred = metrics._blurred(x, 1.5)
    for n in range(2):
        ranked = sorted(range(64), key=lambda p: (-float(saliency[n].flatten()[p]), p))
        for s, fraction in enumerate([0, 0.25, 0.5, 0.75, 1.0]):
            first = ranked[: round(fraction * 64)]
            deleted, inserted = x[n].clone().flatten(1), blurred[n].clone().flatten(1)
            deleted[:, first] = -1.0
            inserted[:, first] = x[n].flatten(1)[:, first]
            for curve, image in ((curves.deletion, deleted), (curves.insertion, inserted)):
                p = net(image.view(1, 1, 8, 8)).softmax(dim=1)[0, predicted[n]].detach()
                assert float(curve[n, s]) == pytest.approx(float(p), abs=1e-12)
    # the trapezoid over 0, 1/4, ..., 1
    expected = (curves.deletion[:, :-1] + curves.deletion[:, 1:]).sum(dim=1) / 8
    torch.testing.assert_close(curves.deletion_auc, expected)


def test_blurring_keeps_a_flat_image_and_deletion_errors(net):
    flat = torch.full((1, 1, 8, 8), 0.3, dtype=torch.float64)
    torch.testing.assert_close(metrics._blurred(flat, 2.0), flat)
    x = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    with pytest.raises(InputError, match=r"order must be a Tensor\[N, H, W\] of shape \(1, 8, 8\)"):
        metrics.deletion_insertion(net, x, torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(InputError, match=r"target \[7\] is out of range: the model has 5 classes"):
        metrics.deletion_insertion(net, x, torch.zeros(1, 8, 8, dtype=torch.long), target=7)
    with pytest.raises(InputError, match=r"x must be a Tensor\[N, C, H, W\], got shape \(1, 8, 8\)"):
        metrics.deletion_insertion(net, x[0], torch.zeros(1, 8, 8, dtype=torch.long))
    with pytest.raises(InputError, match="steps must be a positive int, got 0"):
        metrics.deletion_insertion(net, x, torch.zeros(1, 8, 8, dtype=torch.long), steps=0)
    with pytest.raises(InputError, match=r"blur must be positive \(a Gaussian's sigma in pixels\), got 0"):
        metrics.deletion_insertion(net, x, torch.zeros(1, 8, 8, dtype=torch.long), blur=0)
    with pytest.raises(InputError, match="target has 2 entries for 1 images"):
        metrics.deletion_insertion(net, x, torch.zeros(1, 8, 8, dtype=torch.long), target=[0, 1])
    with pytest.raises(InputError, match="target has 3 entries for 1 examples"):
        metrics.infidelity(net, _noise, x, torch.zeros_like(x), target=[0, 1, 2])


def test_a_fill_per_image_equals_one_call_per_image(net):
    torch.manual_seed(4)
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    order = metrics.order_by(torch.randn(3, 8, 8))
    fill = x.flatten(1).min(dim=1).values
    together = metrics.deletion_insertion(net, x, order, steps=4, fill=fill)
    for n in range(3):
        alone = metrics.deletion_insertion(net, x[n : n + 1], order[n : n + 1], steps=4, fill=float(fill[n]))
        torch.testing.assert_close(together.deletion[n], alone.deletion[0])
