"""deconvnet.captum against Captum itself: the same constructors and calls, equal results, on
the mirror's path (one image batch) and on the general path (several inputs, extra forward
arguments, targets into outputs of any shape, a layer's input)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

captum_attr = pytest.importorskip("captum.attr", reason="captum is in the test extra")

from deconvnet import captum as ours  # noqa: E402
from deconvnet.errors import InputError  # noqa: E402

METHODS = ["Deconvolution", "GuidedBackprop"]
NEURON_METHODS = ["NeuronDeconvolution", "NeuronGuidedBackprop"]


@pytest.fixture(autouse=True)
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Captum warns about its hooks on every call
        yield


def cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5)).double().eval()


class TwoInputs(nn.Module):
    """Two images and a scale passed as an extra forward argument; output [N, 2, 3]."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(1, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.head = nn.Linear(4, 6)

    def forward(self, x: torch.Tensor, y: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        joint = self.relu(self.a(x) + self.b(y)) * scale
        return self.head(joint.mean((2, 3))).view(-1, 2, 3)


def assert_same(mine, theirs):
    if isinstance(theirs, tuple):
        assert isinstance(mine, tuple) and len(mine) == len(theirs)
        for m, t in zip(mine, theirs, strict=True):
            assert_same(m, t)
        return
    assert isinstance(mine, torch.Tensor) and mine.shape == theirs.shape and mine.dtype == theirs.dtype
    torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("target", [2, [0, 4, 1], torch.tensor([1, 1, 3]), torch.tensor(2), (3,)])
def test_classes_equal_captums(method, target):
    net, x = cnn(), torch.randn(3, 3, 10, 10, dtype=torch.float64)
    assert_same(getattr(ours, method)(net).attribute(x, target=target),
                getattr(captum_attr, method)(net).attribute(x, target=target))
    assert_same(getattr(ours, method)(net).attribute((x,), target=target),  # a 1-tuple gives a 1-tuple
                getattr(captum_attr, method)(net).attribute((x,), target=target))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("target", [(1, 2), [(0, 1), (1, 2), (1, 0)]])
def test_several_inputs_extra_arguments_and_shaped_outputs_equal_captums(method, target):
    torch.manual_seed(1)
    net = TwoInputs().double().eval()
    x, y = torch.randn(3, 3, 6, 6, dtype=torch.float64), torch.randn(3, 1, 6, 6, dtype=torch.float64)
    assert_same(getattr(ours, method)(net).attribute((x, y), target=target, additional_forward_args=(2.0,)),
                getattr(captum_attr, method)(net).attribute((x, y), target=target, additional_forward_args=(2.0,)))


@pytest.mark.parametrize("method", NEURON_METHODS)
@pytest.mark.parametrize("selector", [(1, 2, 2), (2, slice(0, 3), 1), "callable"])
def test_neurons_equal_captums(method, selector):
    net, x = cnn(), torch.randn(3, 3, 10, 10, dtype=torch.float64)
    if selector == "callable":
        selector = lambda value: value[:, 0].sum((1, 2))  # noqa: E731
    for layer in (net[3], net[4]):
        assert_same(getattr(ours, method)(net, layer).attribute(x, neuron_selector=selector),
                    getattr(captum_attr, method)(net, layer).attribute(x, neuron_selector=selector))
    assert_same(getattr(ours, method)(net, net[3]).attribute(x, (1, 2, 2), attribute_to_neuron_input=True),
                getattr(captum_attr, method)(net, net[3]).attribute(x, (1, 2, 2), attribute_to_neuron_input=True))


@pytest.mark.parametrize("method", NEURON_METHODS)
def test_neurons_of_a_several_input_model_equal_captums(method):
    torch.manual_seed(1)
    net = TwoInputs().double().eval()
    x, y = torch.randn(2, 3, 6, 6, dtype=torch.float64), torch.randn(2, 1, 6, 6, dtype=torch.float64)
    assert_same(getattr(ours, method)(net, net.relu).attribute((x, y), (1, 3, 2), additional_forward_args=0.5),
                getattr(captum_attr, method)(net, net.relu).attribute((x, y), (1, 3, 2), additional_forward_args=0.5))


def test_the_mirror_serves_one_image_batch_and_equals_the_general_path():
    net, x = cnn(), torch.randn(3, 3, 10, 10, dtype=torch.float64)
    attribution = ours.Deconvolution(net)
    fast = attribution.attribute(x, target=[0, 4, 1])
    assert attribution._mirror is not None  # built once, used for the call
    general = attribution._gradients((x,), (), lambda out: out[torch.arange(3), torch.tensor([0, 4, 1])])[0]
    torch.testing.assert_close(fast, general, rtol=1e-10, atol=1e-12)
    assert all(not m._forward_hooks and not m._backward_hooks for m in net.modules())


def test_functional_relu_takes_the_rule_here_and_not_in_captum():
    """The documented difference: Captum's hooks see ReLU modules only."""

    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(F.relu(self.conv(x)).mean((2, 3)))

    torch.manual_seed(0)
    net, x = Functional().double().eval(), torch.randn(2, 3, 6, 6, dtype=torch.float64)
    mine = ours.Deconvolution(net).attribute(x, target=1)
    plain = captum_attr.Saliency(net).attribute(x, target=1, abs=False)  # what Captum's Deconvolution gives here
    torch.testing.assert_close(captum_attr.Deconvolution(net).attribute(x, target=1), plain)
    assert not torch.allclose(mine, plain)


def test_bad_calls_say_what_is_wrong():
    net, x = cnn(), torch.randn(2, 3, 10, 10, dtype=torch.float64)
    with pytest.raises(InputError, match="inputs must be a Tensor or a tuple"):
        ours.Deconvolution(net).attribute([1, 2], target=0)
    with pytest.raises(InputError, match="one entry per input"):
        ours.Deconvolution(net).attribute(x, target=[0, 1, 2])
    with pytest.raises(InputError, match="neuron_selector entries"):
        ours.NeuronDeconvolution(net, net[3]).attribute(x, ("a",))
    with pytest.raises(InputError, match="did not run"):
        ours.NeuronDeconvolution(net, nn.ReLU()).attribute(x, 0)


def close(mine: torch.Tensor, theirs: torch.Tensor) -> None:
    """Captum's Occlusion returns float32 even for a float64 model: equal to its precision."""
    torch.testing.assert_close(mine, theirs.to(mine.dtype), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("window, strides, baseline, target", [
    ((3, 4, 4), (3, 2, 2), 0.0, 2),                  # the incremental path: a square over all channels
    ((3, 4, 4), (3, 4, 4), None, [0, 4, 1]),
    ((3, 5, 5), 3, 0.5, 1),                          # windows clipped at the edge: whole evaluation
    ((1, 3, 3), (1, 2, 2), None, torch.tensor([2, 0, 1])),  # one channel at a time
    ((3, 4, 4), (3, 2, 2), "tensor", 2),             # a baseline image
])
@pytest.mark.parametrize("per_eval", [1, 7])
def test_occlusion_equals_captums(window, strides, baseline, target, per_eval):
    net, x = cnn(), torch.randn(3, 3, 12, 12, dtype=torch.float64)
    if baseline == "tensor":
        baseline = torch.randn(3, 12, 12, dtype=torch.float64)
    options = dict(sliding_window_shapes=window, strides=strides, baselines=baseline, target=target,
                   perturbations_per_eval=per_eval)
    mine = ours.Occlusion(net).attribute(x, **options)
    theirs = captum_attr.Occlusion(net).attribute(x, **options)
    assert mine.shape == theirs.shape and mine.dtype == x.dtype  # Captum's comes back float32 (documented)
    close(mine, theirs)


def test_occlusion_of_several_inputs_with_extra_arguments_equals_captums():
    torch.manual_seed(1)
    net = TwoInputs().double().eval()
    x, y = torch.randn(2, 3, 6, 6, dtype=torch.float64), torch.randn(2, 1, 6, 6, dtype=torch.float64)
    options = dict(sliding_window_shapes=((3, 2, 2), (1, 3, 3)), strides=((1, 2, 2), 2), baselines=(0.0, 1.0),
                   target=(1, 2), additional_forward_args=(2.0,), perturbations_per_eval=3)
    mine = ours.Occlusion(net).attribute((x, y), **options)
    theirs = captum_attr.Occlusion(net).attribute((x, y), **options)
    assert isinstance(mine, tuple) and len(mine) == 2
    for m, t in zip(mine, theirs, strict=True):
        close(m, t)


def test_occlusion_of_any_shape_equals_captums():
    """A model of flat features: windows along one dimension."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 6), nn.ReLU(), nn.Linear(6, 3)).double().eval()
    x = torch.randn(4, 10, dtype=torch.float64)
    for window, stride in [((3,), 2), ((1,), 1), ((4,), 3)]:
        close(ours.Occlusion(net).attribute(x, window, stride, target=1),
              captum_attr.Occlusion(net).attribute(x, window, stride, target=1))


def test_occlusion_bad_calls():
    net, x = cnn(), torch.randn(2, 3, 12, 12, dtype=torch.float64)
    with pytest.raises(InputError, match="one entry per dimension"):
        ours.Occlusion(net).attribute(x, (4, 4), target=0)
    with pytest.raises(InputError, match="must fit the input"):
        ours.Occlusion(net).attribute(x, (3, 13, 4), target=0)
    with pytest.raises(InputError, match="one output value per input"):
        ours.Occlusion(net).attribute(x, (3, 4, 4))
    with pytest.raises(InputError, match="perturbations_per_eval"):
        ours.Occlusion(net).attribute(x, (3, 4, 4), target=0, perturbations_per_eval=0)
    # What Captum asserts stays an AssertionError, so `except AssertionError` code keeps working.
    with pytest.raises(AssertionError, match="cannot be larger than the sliding window"):
        ours.Occlusion(net).attribute(x, (3, 2, 2), strides=(3, 3, 3), target=0)
    with pytest.raises(AssertionError, match="one entry per input"):
        ours.Occlusion(net).attribute((x, x), ((3, 2, 2),), target=0)
    with pytest.raises(NotImplementedError):
        ours.Occlusion(net).attribute_future()


def test_occlusion_progress_is_captums_bar(capsys):
    net, x = cnn(), torch.randn(1, 3, 12, 12, dtype=torch.float64)
    ours.Occlusion(net).attribute(x, (3, 5, 5), strides=3, target=0, perturbations_per_eval=4, show_progress=True)
    assert "Occlusion attribution: 100%" in capsys.readouterr().err
    ours.Occlusion(net).attribute(x, (3, 4, 4), strides=(3, 4, 4), target=0, show_progress=True)  # incremental
    assert "Occlusion attribution: 100%" in capsys.readouterr().err


def test_a_new_object_per_call_reuses_the_models_mirror_until_the_model_changes():
    net, x = cnn(), torch.randn(2, 3, 10, 10, dtype=torch.float64)
    first = ours.Deconvolution(net)
    first.attribute(x, target=1)
    second = ours.Deconvolution(net)
    second.attribute(x, target=1)
    assert second._mirror.network is first._mirror.network  # built once for the model
    assert ours.GuidedBackprop(net).attribute(x, target=1) is not None
    with torch.no_grad():
        net[0].weight.mul_(2)  # values change in place: the shared weights follow, no rebuild
    third = ours.Deconvolution(net)
    assert_same(third.attribute(x, target=1), captum_attr.Deconvolution(net).attribute(x, target=1))
    assert third._mirror.network is first._mirror.network
    net[7] = nn.Linear(6, 5).double()  # a module replaced: built again, and right
    fourth = ours.Deconvolution(net)
    assert_same(fourth.attribute(x, target=1), captum_attr.Deconvolution(net).attribute(x, target=1))
    assert fourth._mirror.network is not first._mirror.network
