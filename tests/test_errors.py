"""Every bad input gets a DeconvnetError that names the thing and the fix."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deconvnet
from deconvnet import (
    BranchingModelError,
    DeconvNet,
    DeconvnetError,
    InputError,
    LayerNotFoundError,
    SignalShapeError,
    TargetOutOfRangeError,
    TracingError,
    TrainingModeError,
    UnsupportedLayerError,
)


def vgg_like() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 4 * 4, 10),
    ).eval()


@pytest.fixture
def dn() -> DeconvNet:
    return DeconvNet(vgg_like())


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(2, 3, 8, 8)


def test_errors_inherit_builtins():
    assert issubclass(UnsupportedLayerError, TypeError)
    assert issubclass(LayerNotFoundError, KeyError)
    assert issubclass(TargetOutOfRangeError, IndexError)
    for error in (InputError, SignalShapeError, BranchingModelError):
        assert issubclass(error, ValueError) and issubclass(error, DeconvnetError)


def test_unknown_layer_suggests_names(x):
    model = nn.Sequential(OrderedDict(features=nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())))
    dn = DeconvNet(model.eval())
    with pytest.raises(
        LayerNotFoundError,
        match=r"unknown layer 'feature\.1'; did you mean 'features\.1'.*valid layers: features\.0, ",
    ):
        dn.reconstruct(x, "feature.1")


def test_layer_of_wrong_type(dn, x):
    with pytest.raises(LayerNotFoundError, match="layer must be a layer name or a module of the model, got int"):
        dn.reconstruct(x, 3)


def test_module_not_in_model(dn, x):
    with pytest.raises(LayerNotFoundError, match="Conv2d module passed as layer is not part of the model"):
        dn.reconstruct(x, nn.Conv2d(3, 3, 1))


def test_module_called_twice_needs_a_call_index(x):
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(self.conv(self.relu(x)))

    dn = DeconvNet(Twice().eval())
    with pytest.raises(LayerNotFoundError, match=r"'relu' is called 2 times.*'relu:0', 'relu:1'"):
        dn.reconstruct(x, "relu")


def test_channel_out_of_range(dn, x):
    with pytest.raises(TargetOutOfRangeError, match=r"channel 64 is out of range: 0 has 64 channels \(0\.\.63\)"):
        dn.reconstruct(x, "0", 64)
    with pytest.raises(TargetOutOfRangeError, match=r"channel -1 is out of range"):
        dn.reconstruct(x, "0", [0, -1])


def test_class_out_of_range(dn, x):
    with pytest.raises(TargetOutOfRangeError, match=r"class 10 is out of range: the model has 10 classes \(0\.\.9\)"):
        dn.reconstruct_classes(x, [3, 10])


def test_bad_target_types(dn, x):
    with pytest.raises(InputError, match="no channels given"):
        dn.reconstruct(x, "0", [])
    with pytest.raises(InputError, match="channel 1.5 is not an int"):
        dn.reconstruct(x, "0", [1.5])
    with pytest.raises(InputError, match="classes must be an int, a sequence of ints or None, got str"):
        dn.reconstruct_classes(x, "3")
    with pytest.raises(InputError, match="classes must be an int or a 1-D integer tensor"):
        dn.reconstruct_classes(x, torch.tensor([0.5]))
    with pytest.raises(InputError, match="no classes given"):
        dn.reconstruct_classes(x, [])


def test_bad_mode_signal_and_chunk(dn, x):
    with pytest.raises(InputError, match="mode must be one of 'max', 'map'; got 'mean'"):
        dn.reconstruct(x, "0", mode="mean")
    with pytest.raises(InputError, match="signal must be one of 'activation', 'unit'; got 'one'"):
        dn.reconstruct(x, "0", signal="one")
    with pytest.raises(InputError, match="chunk_size must be a positive int or None, got 0"):
        dn.reconstruct_classes(x, chunk_size=0)
    # The cropped path checks it too (it once returned zeros for -1 and a raw TypeError for 2.5).
    for bad in (-1, 2.5, True):
        with pytest.raises(InputError, match=f"chunk_size must be a positive int or None, got {bad!r}"):
            dn.reconstruct(x, "0", [0, 1], chunk_size=bad, crop=True)
        with pytest.raises(InputError, match="chunk_size must be"):
            dn.reconstruct_from(x, "0", torch.zeros(2, 1, 64, 8, 8), chunk_size=bad)
    with pytest.raises(InputError, match="memory_budget must be a positive number of bytes"):
        DeconvNet(vgg_like(), memory_budget=-5)
    with pytest.raises(InputError, match="deterministic must be True, False or None, got 'yes'"):
        DeconvNet(vgg_like(), deterministic="yes")


def test_input_shape_errors(dn):
    with pytest.raises(InputError, match=r"x must be a Tensor\[N, C, H, W\], got shape \(3, 8, 8\); add a batch dimension"):
        dn.trace(torch.randn(3, 8, 8))
    with pytest.raises(InputError, match="x has 1 channels but 0 \\(Conv2d\\) expects 3"):
        dn.trace(torch.randn(1, 1, 8, 8))
    with pytest.raises(InputError, match="floating-point"):
        dn.trace(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(InputError, match="empty batch"):
        dn.trace(torch.zeros(0, 3, 8, 8))
    with pytest.raises(InputError, match=r"x is torch.float64 but the model's parameters are torch.float32"):
        dn.trace(torch.zeros(1, 3, 8, 8, dtype=torch.float64))
    with pytest.raises(InputError, match="got list"):
        dn.trace([1, 2])


def test_trace_of_another_deconvnet(dn, x):
    other = DeconvNet(vgg_like())
    with pytest.raises(InputError, match="made by another DeconvNet"):
        dn.reconstruct_classes(other.trace(x))


def test_signal_shape_errors(dn, x):
    with pytest.raises(SignalShapeError, match=r"signal for 0 must have shape \[N, K, 64, 8, 8\] with N = 2, got \(2, 64, 8, 8\)"):
        dn.reconstruct_from(x, "0", torch.zeros(2, 64, 8, 8))
    with pytest.raises(SignalShapeError, match="no targets"):
        dn.reconstruct_from(x, "0", torch.zeros(2, 0, 64, 8, 8))
    with pytest.raises(SignalShapeError, match="signal is torch.float64"):
        dn.reconstruct_from(x, "0", torch.zeros(2, 1, 64, 8, 8, dtype=torch.float64))


def test_classes_need_a_class_dimension(x):
    dn = DeconvNet(nn.Sequential(nn.Conv2d(3, 4, 3)).eval())
    assert dn.reconstruct_classes(x).shape == (2, 4, *x.shape[1:])  # a dense output: its classes' whole maps


def test_strict_refuses_a_module_without_rule_naming_layer_and_fix():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Softmax2d())
    with pytest.raises(
        UnsupportedLayerError,
        match=r"1 \(Softmax2d\) has no deconvnet rule; supported: Conv1d, Conv2d, Conv3d, .*layer_rules=\{Softmax2d: \.\.\.\}.*"
        r"register_rule\(Softmax2d, mirror=\.\.\.\), or drop strict=True",
    ):
        DeconvNet(model, strict=True)
    assert DeconvNet(model).general_layers == ["1"]


def test_strict_refuses_a_call_without_rule():
    class Cumulative(nn.Module):
        def forward(self, x):
            return torch.cumsum(x, 1)

    with pytest.raises(UnsupportedLayerError, match=r"cumsum \(the call cumsum\) has no deconvnet rule in this form; supported calls: .*F.relu"):
        DeconvNet(Cumulative(), strict=True)
    assert repr(DeconvNet(Cumulative()).mirror).count("VJP(cumsum)") == 1
    nested = nn.Sequential(nn.Conv2d(3, 3, 1), nn.Sequential(nn.ReLU(), Cumulative()))
    with pytest.raises(UnsupportedLayerError, match=r"cumsum \(the call cumsum in 1\.1 \(Cumulative\)\) has no deconvnet rule"):
        DeconvNet(nested, strict=True)


def test_strict_names_why_a_configuration_is_not_reversed_by_hand():
    with pytest.raises(UnsupportedLayerError, match=r"0 \(Conv2d\): padding_mode='reflect' is not supported.*drop strict=True"):
        DeconvNet(nn.Sequential(nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect")), strict=True)
    with pytest.raises(UnsupportedLayerError, match=r"track_running_stats=False is not supported"):
        DeconvNet(nn.Sequential(nn.BatchNorm2d(3, track_running_stats=False)), strict=True)
    with pytest.raises(UnsupportedLayerError, match=r"return_indices=True is not supported"):
        DeconvNet(nn.Sequential(nn.MaxPool2d(2, return_indices=True), nn.Identity()), strict=True)

    class Computed(nn.Module):
        def forward(self, x):
            return F.max_pool2d(x, x.size(2))

    with pytest.raises(UnsupportedLayerError, match=r"max_pool2d \(max_pool2d\): takes arguments computed in the forward"):
        DeconvNet(Computed(), strict=True)
    with pytest.raises(UnsupportedLayerError, match=r"max_pool2d \(max_pool2d in 1 \(Computed\)\): takes arguments"):
        DeconvNet(nn.Sequential(nn.Identity(), Computed()), strict=True)

    class BatchCat(nn.Module):
        def forward(self, x):
            return torch.cat([x, x], 0)

    with pytest.raises(UnsupportedLayerError, match=r"cat \(cat\): concatenates along dim=0"):
        DeconvNet(BatchCat(), strict=True)
    # Without strict the general layer takes it, and tracing says why it cannot be reversed.
    with pytest.raises(UnsupportedLayerError, match="cat does not keep the batch dimension"):
        DeconvNet(BatchCat()).trace(torch.randn(2, 3, 4, 4))
    with pytest.raises(UnsupportedLayerError, match=r"cat in 1 \(BatchCat\) does not keep the batch dimension"):
        DeconvNet(nn.Sequential(nn.Identity(), BatchCat())).trace(torch.randn(2, 3, 4, 4))


def test_strict_is_checked():
    with pytest.raises(InputError, match="strict must be True or False, got 'yes'"):
        DeconvNet(vgg_like(), strict="yes")
    with pytest.raises(InputError, match="rectifiers must be one of 'all', 'relu'; got 'some'"):
        DeconvNet(vgg_like(), rectifiers="some")
    with pytest.raises(DeconvnetError, match="layer_rules must be a dict"):
        DeconvNet(vgg_like(), layer_rules=[nn.ReLU])
    with pytest.raises(DeconvnetError, match="the rule for ReLU must be a Rule or a callable"):
        DeconvNet(vgg_like(), layer_rules={nn.ReLU: 3})
    with pytest.raises(DeconvnetError, match="layer rules are keyed by nn.Module subclasses"):
        DeconvNet(vgg_like(), layer_rules={len: lambda m: m})


def test_untraceable_model():
    class DataDependent(nn.Module):
        def forward(self, x):
            if x.sum() > 0:
                return x
            return -x

    dn = DeconvNet(DataDependent())  # read by running it on the first input, each branch as it takes it
    with pytest.raises(InputError, match="read by running it on an input"):
        dn.layers  # noqa: B018
    with pytest.raises(TracingError, match="DeconvNet takes an nn.Module, got function"):
        DeconvNet(lambda x: x)


def test_multiple_inputs_and_tuple_outputs():
    class TwoInputs(nn.Module):
        def forward(self, x, y):
            return x + y

    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            y = self.conv(x)
            return y, y

    with pytest.raises(BranchingModelError, match="uses 2 inputs"):
        DeconvNet(TwoInputs())
    with pytest.raises(InputError, match="returns a tuple of 0, 1, 2 of them tensors computed from the input; pick"):
        DeconvNet(Pair())


def test_training_mode_is_refused_not_silently_different(x):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Dropout(), nn.Flatten()).train()
    dn = DeconvNet(model)
    with pytest.raises(TrainingModeError, match=r"1 \(Dropout\) is in training mode.*call model.eval\(\)"):
        dn.trace(x)
    model.eval()
    assert dn.trace(x).output.shape == (2, 144)

    class FunctionalDropout(nn.Module):
        def forward(self, x):
            return F.dropout(x, 0.5, training=self.training)

    with pytest.raises(TrainingModeError, match="traced with training=True"):
        DeconvNet(FunctionalDropout().train())


def test_register_rule_needs_a_module_type():
    with pytest.raises(DeconvnetError, match="register_rule takes an nn.Module subclass"):
        deconvnet.register_rule(len, lambda m: None)


def test_a_forward_with_side_effects_is_refused_and_the_model_left_as_it_was():
    class Caching(nn.Module):  # like timm's LeViT attention: caches a tensor on first use
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.cache = {}

        def forward(self, x):
            if "bias" not in self.cache:
                self.cache["bias"] = self.conv.bias * 2
            return self.conv(x) + self.cache["bias"][:, None, None]

    model = Caching().eval()
    with pytest.raises(TracingError, match=r"changes its modules' own state while it runs \(Caching\.cache\)"):
        DeconvNet(model)
    assert model.cache == {}  # no tracing proxy left behind
    assert model(torch.randn(1, 3, 4, 4)).shape == (1, 3, 4, 4)
