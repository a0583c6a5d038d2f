"""Receptive fields against hand-computed values; top-k mining against brute force."""

from __future__ import annotations

import pytest
import torch
import torchvision
from chains import chain_nets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import assert_exact
from torch import nn

import deconvnet
from deconvnet import DeconvNet
from deconvnet.analysis.topk import mine_top_units, project_top_units
from deconvnet.pictures.figures import crop_to_field
from deconvnet.receptive import ReceptiveField


def test_vgg16_receptive_fields_by_hand():
    dn = DeconvNet(torchvision.models.vgg16(weights=None).eval())
    # (size, stride, offset): 3x3/1 pad-1 convs grow the field by 2 * stride; 2x2/2 pools by stride.
    expected = {
        "features.0": (3, 1, -1),
        "features.2": (5, 1, -2),
        "features.4": (6, 2, -2),
        "features.5": (10, 2, -4),
        "features.9": (16, 4, -6),
        "features.16": (44, 8, -18),
        "features.23": (100, 16, -42),
        "features.28": (196, 16, -90),
        "features.30": (212, 32, -90),
    }
    for layer, (size, stride, offset) in expected.items():
        assert dn.receptive_field(layer) == ReceptiveField((size, size), (stride, stride), (offset, offset)), layer
    assert dn.receptive_field("features.29") == dn.receptive_field("features.28")  # ReLU keeps it
    assert dn.receptive_field("avgpool") is None and dn.receptive_field("classifier.0") is None


def test_alexnet_receptive_fields_by_hand():
    dn = DeconvNet(torchvision.models.alexnet(weights=None).eval())
    expected = {
        "features.0": (11, 4, -2),  # 11x11/4, pad 2
        "features.2": (19, 8, -2),  # + (3 - 1) * 4
        "features.3": (51, 8, -18),  # 5x5 pad 2: + 4 * 8, offset - 2 * 8
        "features.5": (67, 16, -18),
        "features.6": (99, 16, -34),
        "features.8": (131, 16, -50),
        "features.10": (163, 16, -66),
        "features.12": (195, 32, -66),
    }
    for layer, (size, stride, offset) in expected.items():
        assert dn.receptive_field(layer) == ReceptiveField((size, size), (stride, stride), (offset, offset)), layer


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chain_nets(head=False), st.data())
def test_single_unit_projection_vanishes_outside_its_field(case, data):
    net, x = case
    dn = DeconvNet(net)
    spatial = [name for name in dn.layers if dn.receptive_field(name) is not None]
    layer = data.draw(st.sampled_from(spatial), label="layer")
    trace = dn.trace(x)
    activation = dn.activation(trace, layer)
    _, channels, height, width = activation.shape
    c = data.draw(st.integers(0, channels - 1), label="channel")
    i, j = data.draw(st.integers(0, height - 1)), data.draw(st.integers(0, width - 1))
    signal = torch.zeros(x.shape[0], 1, *activation.shape[1:], dtype=x.dtype)
    signal[:, 0, c, i, j] = 1.0
    projection = dn.reconstruct_from(trace, layer, signal)
    top, left, bottom, right = dn.receptive_field(layer).box(i, j)
    outside = projection.clone()
    outside[..., max(0, top) : max(0, bottom), max(0, left) : max(0, right)] = 0
    assert torch.count_nonzero(outside) == 0


def test_crop_to_field_pads_where_the_field_leaves_the_image():
    picture = torch.arange(2 * 5 * 6, dtype=torch.float32).view(2, 5, 6)
    field = ReceptiveField((4, 4), (2, 2), (-1, -1))
    crop = crop_to_field(picture, field, (0, 0), fill=-7.0)
    assert crop.shape == (2, 4, 4)
    assert torch.all(crop[:, 0, :] == -7) and torch.all(crop[:, :, 0] == -7)
    assert torch.equal(crop[:, 1:, 1:], picture[:, :3, :3])
    inside = crop_to_field(picture, field, (1, 1), fill=-7.0)
    assert torch.equal(inside, picture[:, 1:5, 1:5])
    assert torch.equal(crop_to_field(picture, None, (0, 0), 0.0), picture)


def _small_model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 5, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 4),
    ).eval()


def test_top_k_mining_matches_brute_force():
    model = _small_model()
    dn = DeconvNet(model)
    images = torch.randn(37, 3, 12, 12)
    batches = [(images[s : s + 8], torch.arange(s, min(s + 8, 37))) for s in range(0, 37, 8)]
    top = mine_top_units(dn, batches, ["1", "4", "7"], k=9)
    for layer in ("1", "4", "7"):
        activation = dn.activation(images, layer)  # all images at once
        flat = activation.reshape(37, activation.shape[1], -1)
        per_image, position = flat.max(dim=2)  # [37, C]
        for c in range(activation.shape[1]):
            order = sorted(range(37), key=lambda n: (-per_image[n, c].item(), n))[:9]
            assert top[layer].images[c].tolist() == order
            assert torch.equal(top[layer].values[c], per_image[order, c])
            assert torch.equal(top[layer].positions[c], position[order, c])


def test_top_k_with_fewer_images_than_k_and_projection():
    model = _small_model()
    dn = DeconvNet(model)
    images = torch.randn(4, 3, 12, 12)
    top = mine_top_units(dn, [(images, torch.arange(4))], ["4"], k=9)["4"]
    assert top.found == 4 and torch.isinf(top.values[:, 4:]).all()
    projections = project_top_units(dn, top, lambda n: images[n], channels=[0, 3], batch_size=3)
    assert projections.shape == (2, 9, 3, 12, 12)
    assert torch.count_nonzero(projections[:, 4:]) == 0
    for j, c in enumerate([0, 3]):
        for r in range(4):
            n = int(top.images[c, r])
            i, w = top.unit(c, r)
            signal = torch.zeros(1, 1, *top.shape)
            signal[0, 0, c, i, w] = top.values[c, r]
            expected = dn.reconstruct_from(images[n : n + 1], "4", signal)[0, 0]
            torch.testing.assert_close(projections[j, r], expected)


def test_mining_rejects_bad_k_and_empty_data():
    import pytest

    from deconvnet import InputError, LayerNotFoundError

    dn = DeconvNet(_small_model())
    with pytest.raises(InputError, match="k must be at least 1, got 0"):
        mine_top_units(dn, [], ["4"], k=0)
    with pytest.raises(InputError, match="no batches to mine: the dataset is empty"):
        mine_top_units(dn, [], ["4"])
    with pytest.raises(LayerNotFoundError, match="unknown layer '44'"):
        mine_top_units(dn, [(torch.randn(1, 3, 12, 12), torch.arange(1))], ["44"])


@pytest.mark.parametrize("crop", [None, False])
def test_reconstruct_units_equals_one_hot_signals(crop):
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 5, 3),
                        nn.ReLU6()).double().eval()
    x = torch.randn(3, 3, 20, 22, dtype=torch.float64)
    dn = DeconvNet(net)
    trace = dn.trace(x)
    images, channels, positions = [2, 0, 2, 1, 2], [4, 0, 1, 4, 4], [5, 17, 0, 30, 5]  # image 2 three times
    ours = dn.reconstruct_units(trace, "4", images, channels, positions, crop=crop, chunk_size=2)
    act = dn.activation(trace, "4")
    expected = []
    for i, c, p in zip(images, channels, positions, strict=True):
        signal = torch.zeros(3, 1, *act.shape[1:], dtype=torch.float64)
        signal[i, 0, c].view(-1)[p] = act[i, c].reshape(-1)[p]
        expected.append(dn.reconstruct_from(trace, "4", signal)[i, 0])
    assert_exact(ours, torch.stack(expected), rtol=1e-12)
    # Given values: the mirror is positively homogeneous, so each projection scales with its value.
    values = torch.tensor([1.0, 2.0, 0.25, 0.5, 3.0], dtype=torch.float64)
    scaled = dn.reconstruct_units(trace, "4", images, channels, positions, values, crop=crop)
    unit = dn.reconstruct_units(trace, "4", images, channels, positions, torch.ones(5, dtype=torch.float64), crop=crop)
    assert_exact(scaled, unit * values.view(-1, 1, 1, 1), rtol=1e-12)


def test_reconstruct_units_errors():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten()).eval()
    dn = DeconvNet(net)
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(deconvnet.TargetOutOfRangeError, match=r"image 2 is out of range: the batch has 2 inputs \(0..1\)"):
        dn.reconstruct_units(x, "1", [2], [0], [0])
    with pytest.raises(deconvnet.TargetOutOfRangeError, match=r"channel 4 is out of range: 1 has 4 channels"):
        dn.reconstruct_units(x, "1", [0], [4], [0])
    with pytest.raises(deconvnet.TargetOutOfRangeError, match=r"position 36 is out of range"):
        dn.reconstruct_units(x, "1", [0], [0], [36])
    with pytest.raises(deconvnet.InputError, match="one entry per unit; got 2, 1 and 1"):
        dn.reconstruct_units(x, "1", [0, 1], [0], [0])
    with pytest.raises(deconvnet.InputError, match="needs a layer with spatial maps"):
        dn.reconstruct_units(x, "2", [0], [0], [0])
    with pytest.raises(deconvnet.InputError, match=r"values must be a Tensor\[1\] or None"):
        dn.reconstruct_units(x, "1", [0], [0], [0], values=torch.ones(2))
    with pytest.raises(deconvnet.InputError, match="images must be a non-empty 1-D integer"):
        dn.reconstruct_units(x, "1", [], [], [])


@pytest.mark.parametrize("size", [17, 18, 21, 32])
def test_same_padding_fields_for_the_traced_size_are_exact(size):
    """TensorFlow-style "same" convs (EfficientNet-Lite's) pad by the input's size: no field
    without a trace; with one, the field of every unit is exactly where its projection lands (all
    weights positive and no rectifier, so nothing inside the field cancels)."""
    from deconvnet.models import SameConv2d

    torch.manual_seed(0)
    net = nn.Sequential(SameConv2d(2, 3, 3, stride=2, bias=False), SameConv2d(3, 3, 4, stride=2, bias=False),
                        SameConv2d(3, 2, 3, stride=1, bias=False)).double().eval()
    for conv in net:
        conv.weight.data.uniform_(0.5, 1.0)
    dn = DeconvNet(net)
    x = torch.rand(1, 2, size, size, dtype=torch.float64)
    trace = dn.trace(x)
    for layer in ("0", "1", "2"):
        assert dn.receptive_field(layer) is None
        field = dn.receptive_field(layer, trace)
        activation = dn.activation(trace, layer)
        for i, j in [(0, 0), (activation.shape[2] // 2, 1), (activation.shape[2] - 1, activation.shape[3] - 1)]:
            signal = torch.zeros(1, 1, *activation.shape[1:], dtype=x.dtype)
            signal[0, 0, 0, i, j] = 1.0
            landed = dn.reconstruct_from(trace, layer, signal)[0, 0].abs().sum(0).nonzero()
            box = (int(landed[:, 0].min()), int(landed[:, 1].min()), int(landed[:, 0].max()) + 1, int(landed[:, 1].max()) + 1)
            assert box == field.box(i, j, size, size), (layer, i, j)
