"""Occlusion sensitivity against a brute-force loop (occlude, run the model, softmax) at every
position; the incremental path against whole batches on random chains, graphs and modern nets."""

from __future__ import annotations

import pytest
import torch
from chains import chain_nets, dag_nets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from modern import modern_nets
from torch import nn

from deconvnet import DeconvNet
from deconvnet.analysis.occlusion import occlusion
from deconvnet.errors import InputError, LayerNotFoundError, TargetOutOfRangeError
from deconvnet.models import EfficientNetLite0, ShapesNet

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def brute_force(model: nn.Module, x: torch.Tensor, size: int, stride: int, fill: float,
                layer: nn.Module | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Softmax outputs Tensor[N, positions, classes] and, with ``layer``, its output at each
    position, occluding x[..., top:top+size, left:left+size] position by position, row-major."""
    height, width = x.shape[-2:]
    outputs, maps = [], []
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda m, i, o: captured.append(o.clone())) if layer is not None else None
    try:
        for top in range(0, height - size + 1, stride):
            for left in range(0, width - size + 1, stride):
                occluded = x.clone()
                occluded[..., top : top + size, left : left + size] = fill
                with torch.no_grad():
                    outputs.append(model(occluded).softmax(-1))
                if captured:
                    maps.append(captured.pop())
    finally:
        if handle is not None:
            handle.remove()
    return torch.stack(outputs, 1), maps


def check_against_brute_force(model, x, size, stride, fill, incremental=True):  # type: ignore[no-untyped-def]
    # every model call gets a copy: some random nets apply in-place activations to views of their input
    result = occlusion(model, x.clone(), size=size, stride=stride, fill=fill, incremental=incremental)
    probabilities, _ = brute_force(model, x, size, stride, fill)
    gh, gw = (x.shape[-2] - size) // stride + 1, (x.shape[-1] - size) // stride + 1
    assert result.grid == (gh, gw)
    with torch.no_grad():
        predicted = model(x.clone()).argmax(-1)
    assert torch.equal(result.target, predicted)
    expected = probabilities[torch.arange(x.shape[0]), :, predicted].view(-1, gh, gw)
    torch.testing.assert_close(result.probability, expected, rtol=1e-9, atol=1e-12)
    with torch.no_grad():
        unoccluded = model(x.clone()).softmax(-1)[torch.arange(x.shape[0]), predicted]
    torch.testing.assert_close(result.unoccluded, unoccluded)
    # the most probable class, where it is not a near tie
    if probabilities.shape[-1] == 1:
        assert not result.label.any()
        return result
    top2 = probabilities.topk(2, dim=-1).values
    clear = (top2[..., 0] - top2[..., 1] > 1e-9).view(-1, gh, gw)
    assert torch.equal(result.label[clear], probabilities.argmax(-1).view(-1, gh, gw)[clear])
    return result


def occlude_at_random(case, data, max_stride: int, fills=(0.0,)) -> None:  # type: ignore[no-untyped-def]
    net, x = case
    size = data.draw(st.integers(1, min(x.shape[-2:])), label="size")
    stride = data.draw(st.integers(1, max_stride), label="stride")
    fill = data.draw(st.sampled_from(fills), label="fill")
    check_against_brute_force(net, x, size, stride, fill)


@SETTINGS
@given(chain_nets(head=True), st.data())
def test_chains_equal_brute_force(case, data):
    occlude_at_random(case, data, 6, fills=(0.0, -1.5, 2.0))


@SETTINGS
@given(dag_nets(head=True), st.data())
def test_graphs_equal_brute_force(case, data):
    occlude_at_random(case, data, 5)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(modern_nets(), st.data())
def test_modern_nets_equal_brute_force(case, data):
    # pads, slices, gates, permutes, norms, opaque blocks: whatever cannot run on crops runs whole
    occlude_at_random(case, data, 4)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dag_nets(head=True), st.data())
def test_incremental_equals_whole_batches(case, data):
    net, x = case
    size = data.draw(st.integers(1, min(x.shape[-2:])), label="size")
    batch = data.draw(st.integers(1, 7), label="batch")
    a = occlusion(net, x, size=size, stride=2, batch_size=batch)
    b = occlusion(net, x, size=size, stride=2, incremental=False)
    torch.testing.assert_close(a.probability, b.probability, rtol=1e-9, atol=1e-12)


def test_layer_sum_channel_and_projection_match_a_hooked_loop():
    torch.manual_seed(0)
    model = ShapesNet().double().eval()
    x = torch.randn(2, 3, 40, 36, dtype=torch.float64)
    layer = model.features[8]  # the second block's last ReLU
    result = occlusion(model, x, size=8, stride=6, layer="features.8", target=torch.tensor([1, 4]))
    probabilities, maps = brute_force(model, x, 8, 6, 0.0, layer)
    with torch.no_grad():
        unoccluded = model.features[:9](x)
    channel = unoccluded.flatten(2).amax(2).argmax(1)
    assert torch.equal(result.channel, channel)
    sums = torch.stack([m[torch.arange(2), channel].sum((1, 2)) for m in maps], 1).view(2, *result.grid)
    torch.testing.assert_close(result.activation, sums, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(result.probability, probabilities[[0, 1], :, [1, 4]].view(2, *result.grid))
    dn = DeconvNet(model)
    for n in range(2):
        expected = dn.reconstruct(x[n : n + 1], "features.8", int(channel[n]), mode="max")[0, 0]
        torch.testing.assert_close(result.projection[n], expected)
    assert result.layer == "features.8"


def test_real_architecture_in_float32_and_a_deconvnet_as_model():
    torch.manual_seed(0)
    model = EfficientNetLite0(num_classes=10).eval()  # TensorFlow-same convs, ReLU6, residuals
    x = torch.randn(1, 3, 64, 56)
    result = occlusion(DeconvNet(model), x, size=12, stride=10, layer="blocks.6")
    probabilities, _ = brute_force(model, x, 12, 10, 0.0)
    expected = probabilities[0, :, int(result.target[0])].view(result.grid)
    torch.testing.assert_close(result.probability[0], expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"size": 0, "stride": 1}, InputError, "occluder size must be a positive int"),
        ({"size": 2.5, "stride": 1}, InputError, "occluder size must be a positive int"),
        ({"size": 4, "stride": 0}, InputError, "occluder stride must be a positive int"),
        ({"size": 4, "stride": True}, InputError, "occluder stride must be a positive int"),
        ({"size": 17, "stride": 1}, InputError, "does not fit the 16x20 image"),
        ({"size": 4, "stride": 4, "target": 6}, TargetOutOfRangeError, "target class 6 is out of range: the model has 6"),
        ({"size": 4, "stride": 4, "target": torch.tensor([1, 2, 3])}, InputError, r"LongTensor\[2\]"),
        ({"size": 4, "stride": 4, "target": "cat"}, InputError, "target must be an int"),
        ({"size": 4, "stride": 4, "layer": "features.99"}, LayerNotFoundError, "unknown layer 'features.99'"),
        ({"size": 4, "stride": 4, "layer": "classifier.2"}, InputError, r"not feature maps"),
        ({"size": 4, "stride": 4, "batch_size": 0}, InputError, "batch_size must be a positive int"),
    ],
)
def test_bad_arguments_are_refused(kwargs, error, message):
    model = ShapesNet().eval()
    with pytest.raises(error, match=message):
        occlusion(model, torch.randn(2, 3, 16, 20), **kwargs)


def test_bad_inputs_and_models_are_refused():
    with pytest.raises(InputError, match=r"Tensor\[N, C, H, W\]; got \(3, 16, 16\)"):
        occlusion(ShapesNet().eval(), torch.randn(3, 16, 16), size=4, stride=4)
    features = ShapesNet().features.eval()  # feature maps out, not logits
    with pytest.raises(InputError, match="needs a classifier returning logits"):
        occlusion(features, torch.randn(1, 3, 16, 16), size=4, stride=4)
