"""Segmentation models: every family's dense output explained by class over a region, exact in
float64 against the autograd oracle (targets ``sum(region * out[:, c])``), for the three rules;
forwards torch.fx cannot follow read by running them; the traced graph checked against
``model(x)``; the transposed convolutions of UNet decoders mirrored explicitly; every bad
region, output and model refused with its own message."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import RuledActivations, assert_exact
from torch import Tensor, nn

from deconvnet import DeconvNet, InputError, TargetOutOfRangeError, TraceMismatchError
from deconvnet.mirror import Conv1dOfTranspose, Conv2dOfTranspose, Conv3dOfTranspose

RULES = ("deconvnet", "guided", "gradient")


def _picked(out: object, key: str | int | None) -> Tensor:
    """The oracle's own reading of a model's output: a key of a dict or ModelOutput, an index."""
    if key is None:
        return out  # type: ignore[return-value]
    if isinstance(out, dict) or isinstance(out, (tuple, list)):
        return out[key]  # type: ignore[index]
    return getattr(out, str(key))


def region_reference(model: nn.Module, x: Tensor, c: int, weights: Tensor, key: str | int | None,
                     rule: str) -> Tensor:
    """Gradient of sum(weights * out[:, c]) w.r.t. x, every rectifier's backward set by ``rule``."""
    x = x.detach().clone().requires_grad_(True)
    with RuledActivations(rule, "all"):
        out = _picked(model(x), key)
    signal = torch.zeros_like(out)
    signal[:, c] = weights
    (grad,) = torch.autograd.grad(out, x, signal)
    return grad


def _weights(out: Tensor, c: int, region: object) -> Tensor:
    if region is None:
        return torch.ones_like(out[:, c])
    if isinstance(region, str):
        return (out.argmax(1) == c).to(out.dtype)
    return region.to(out.dtype).expand_as(out[:, c])  # type: ignore[union-attr]


def check_model(model: nn.Module, x: Tensor, region: object, classes: tuple[int, ...] = (0, 1),
                key: str | int | None = None) -> None:
    model, x = model.double().eval(), x.double()
    with torch.no_grad():
        out = _picked(model(x), key)
    for rule in RULES:
        dn = DeconvNet(model, rule=rule)
        ours = dn.reconstruct_classes(x, list(classes), region=region)
        assert ours.shape == (x.shape[0], len(classes), *x.shape[1:])
        for i, c in enumerate(classes):
            assert_exact(ours[:, i], region_reference(model, x, c, _weights(out, c, region), key, rule), rtol=1e-9)


def _random_region(shape: tuple[int, ...], seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=generator, dtype=torch.float64)


def _torchvision(name: str) -> nn.Module:
    from torchvision.models import segmentation

    torch.manual_seed(0)
    return getattr(segmentation, name)(weights=None, weights_backbone=None, num_classes=3)


@pytest.mark.parametrize("name, size, region", [
    ("fcn_resnet50", 32, None),
    ("deeplabv3_mobilenet_v3_large", 32, "predicted"),
    ("lraspp_mobilenet_v3_large", 32, "random"),
])
def test_torchvision_segmentation_families_are_exact(name, size, region):
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    check_model(_torchvision(name), x, _random_region((size, size), 2) if region == "random" else region, key="out")


def _smp(name: str) -> nn.Module:
    smp = pytest.importorskip("segmentation_models_pytorch", reason="in the test extra (pip install -e '.[test]')")
    torch.manual_seed(0)
    if name == "Unet":
        return smp.Unet("resnet18", encoder_weights=None, classes=3, encoder_depth=3, decoder_channels=(16, 8, 8))
    return getattr(smp, name)("resnet18", encoder_weights=None, classes=3, encoder_depth=3,
                              **({"decoder_channels": 16} if name == "DeepLabV3Plus" else
                                 {"decoder_pyramid_channels": 32, "decoder_segmentation_channels": 32}))


@pytest.mark.parametrize("name, region", [("Unet", "predicted"), ("FPN", None), ("DeepLabV3Plus", "random")])
def test_segmentation_models_pytorch_are_exact(name, region):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = _smp(name)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    check_model(model, x, _random_region((1, 32, 32), 3) if region == "random" else region)


def _monai(name: str) -> tuple[nn.Module, Tensor]:
    nets = pytest.importorskip("monai.networks.nets", reason="MONAI is in the test extra (pip install -e '.[test]')")
    torch.manual_seed(0)
    cube = (1, 1, 16, 16, 16)
    made = {
        "UNet2d": lambda: (nets.UNet(2, 1, 3, (4, 8, 16), (2, 2)), (2, 1, 16, 16)),
        "UNet3d": lambda: (nets.UNet(3, 1, 3, (4, 8, 16), (2, 2)), cube),
        "BasicUNet": lambda: (nets.BasicUNet(3, 1, 3, features=(4, 4, 8, 8, 16, 4)), (1, 1, 32, 32, 32)),
        "DynUNet": lambda: (nets.DynUNet(3, 1, 3, [3, 3, 3], [1, 2, 2], [2, 2]), cube),
        "SegResNet": lambda: (nets.SegResNet(3, init_filters=8, in_channels=1, out_channels=3, blocks_down=(1, 1),
                                             blocks_up=(1,)), cube),
        "UNETR": lambda: (nets.UNETR(1, 3, (16, 16, 16), feature_size=4, hidden_size=24, mlp_dim=24, num_heads=2), cube),
    }
    model, shape = made[name]()
    return model, torch.randn(*shape, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name, region", [
    ("UNet2d", "predicted"), ("UNet3d", None), ("BasicUNet", "predicted"), ("DynUNet", "random"),
    ("SegResNet", "predicted"), ("UNETR", None),
])
def test_monai_segmentation_networks_are_exact(name, region):
    model, x = _monai(name)
    check_model(model, x, _random_region(tuple(x.shape[2:]), 4) if region == "random" else region)


def _huggingface(name: str) -> nn.Module:
    T = pytest.importorskip("transformers", reason="needs the huggingface extra (pip install -e '.[test]')")
    torch.manual_seed(0)
    if name == "segformer":
        return T.SegformerForSemanticSegmentation(T.SegformerConfig(
            num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16], patch_sizes=[7, 3],
            strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2], decoder_hidden_size=16, num_labels=3))
    backbone = T.ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                                out_features=["stage1", "stage2", "stage3", "stage4"])
    return T.UperNetForSemanticSegmentation(T.UperNetConfig(
        backbone_config=backbone, hidden_size=16, num_labels=3, use_auxiliary_head=False))


@pytest.mark.parametrize("name, region", [("segformer", "predicted"), ("upernet", None)])
def test_hugging_face_segmentation_models_are_exact(name, region):
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    check_model(_huggingface(name), x, region, key="logits")


def test_a_region_on_the_input_grid_is_averaged_over_each_output_cell():
    model = _huggingface("segformer").double().eval()
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    dn = DeconvNet(model)
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[4:20, 8:30] = True  # on the image; the logits are 8x8
    ours = dn.reconstruct_classes(x, [2], region=mask)
    cells = F.adaptive_avg_pool2d(mask[None, None].double(), (8, 8))[0, 0]  # the share of each cell covered
    assert_exact(ours[:, 0], region_reference(model, x, 2, cells, "logits", "deconvnet"), rtol=1e-9)


def test_a_pixel_is_a_region_of_one_weight_and_every_class_comes_from_one_forward_pass():
    model, x = _monai("UNet2d")
    model, x = model.double().eval(), x.double()
    dn = DeconvNet(model, rule="guided")
    trace = dn.trace(x)
    one = torch.zeros(16, 16, dtype=torch.float64)
    one[5, 9] = 1
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    assert_exact(dn.reconstruct_classes(trace, None, region=(5, 9)), dn.reconstruct_classes(trace, None, region=one))
    streamed = torch.cat([maps for _, maps in dn.iter_classes(trace, None, region="predicted", chunk_size=1)], dim=1)
    assert_exact(streamed, dn.reconstruct_classes(trace, None, region="predicted"))
    assert not calls  # the trace served every call: the model never ran again


def test_predicted_classes_are_listed_largest_area_first():
    model, x = _monai("UNet2d")
    dn = DeconvNet(model.eval())
    listed = dn.predicted_classes(x)
    predicted = model(x).argmax(1)
    for n, row in enumerate(listed):
        assert [c for c, _ in row] == sorted({int(c) for c in predicted[n].unique()},
                                            key=lambda c: -int((predicted[n] == c).sum()))
        assert sum(k for _, k in row) == 16 * 16


def test_every_bad_region_is_refused_with_its_own_message():
    model, x = _monai("UNet2d")
    dn = DeconvNet(model.eval())
    trace = dn.trace(x)  # N = 2, outputs 16x16
    with pytest.raises(InputError, match="region has shape \\(3, 16\\)"):
        dn.reconstruct_classes(trace, 0, region=torch.ones(3, 16))
    with pytest.raises(InputError, match="weights for 3 inputs but the batch has 2"):
        dn.reconstruct_classes(trace, 0, region=torch.ones(3, 16, 16))
    with pytest.raises(InputError, match="empty \\(all zero\\) for input 1"):
        dn.reconstruct_classes(trace, 0, region=torch.stack([torch.ones(16, 16), torch.zeros(16, 16)]))
    with pytest.raises(InputError, match="got list; for a NumPy mask"):
        dn.reconstruct_classes(trace, 0, region=[[1, 0]])
    with pytest.raises(InputError, match="'predicted', a position"):
        dn.reconstruct_classes(trace, 0, region="everywhere")
    with pytest.raises(InputError, match="bool or floating point, got torch.int64"):
        dn.reconstruct_classes(trace, 0, region=torch.ones(16, 16, dtype=torch.long))
    with pytest.raises(InputError, match="NaN or infinite"):
        dn.reconstruct_classes(trace, 0, region=torch.full((16, 16), float("nan")))
    with pytest.raises(TargetOutOfRangeError, match="grid is 16x16 \\(dim 1: 0..15\\)"):
        dn.reconstruct_classes(trace, 0, region=(3, 16))
    with pytest.raises(InputError, match="one int per spatial dim"):
        dn.reconstruct_classes(trace, 0, region=(3,))
    classifier = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    with pytest.raises(InputError, match="region= is for dense outputs"):
        DeconvNet(classifier.eval()).reconstruct_classes(x, 0, region="predicted")


class _Pair(nn.Module):
    """A forward returning a tuple: the map and an embedding, both computed from the input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = torch.relu(self.conv(x))
        return y, y.mean(dim=(2, 3))


def test_output_picks_a_tuple_item_and_a_wrong_one_lists_the_choices():
    x = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    model = _Pair().double().eval()
    with pytest.raises(InputError, match="returns a tuple of 0, 1, 2 of them tensors computed from the input"):
        DeconvNet(model)
    dn = DeconvNet(model, output=0)
    assert dn.output_key == 0
    ours = dn.reconstruct_classes(x, [1], region="predicted")
    weights = (model(x)[0].argmax(1) == 1).double()
    assert_exact(ours[:, 0], region_reference(model, x, 1, weights, 0, "deconvnet"), rtol=1e-9)
    with pytest.raises(InputError, match="output=5 is not one of its outputs: _Pair.forward returns a tuple of 0, 1"):
        DeconvNet(model, output=5)
    with pytest.raises(InputError, match="output='aux' is not one of its outputs: FCN.forward returns a dict of 'out'"):
        DeconvNet(_torchvision("fcn_resnet50").eval(), output="aux")


def test_a_forward_read_by_running_is_read_again_for_another_shape():
    pytest.importorskip("segmentation_models_pytorch")
    model = _smp("FPN").eval()
    dn = DeconvNet(model)
    with pytest.raises(InputError, match="read by running it on an input .*call dn.trace\\(x\\) \\(or any"):
        dn.mirror  # noqa: B018
    small = dn.trace(torch.randn(1, 3, 32, 32))
    assert dn.network.decisions and all(d.shape_only for d in dn.network.decisions)
    assert "decoder.seg_blocks.0" in " ".join(dn.layers)
    large = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(dn.trace(large).output, model(large))
    assert dn.reconstruct_classes(small, 0).shape == (1, 1, 3, 32, 32)  # an older trace: read again for it
    with pytest.raises(InputError, match="FPN.forward fails on this input \\(x of shape \\(1, 3, 36, 36\\)\\).*"
                                         "divisible by 8"):  # the model's own check, as its forward says it
        dn.trace(torch.randn(1, 3, 36, 36))


class _Skips(nn.Module):
    """A forward whose traced graph differs from what it computes, even read by running it: a
    builtin ``isinstance`` of a traced value, false where the real forward's is true."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 2, 3, padding=1)
        self.b = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        y = self.a(x)
        if isinstance(y, Tensor):
            y = -y
        return self.b(torch.relu(y))


def test_a_graph_that_parts_from_the_forward_is_refused_naming_the_layer():
    model = _Skips().eval()
    dn = DeconvNet(model)
    with pytest.raises(TraceMismatchError, match="parts from model\\(x\\) at b \\(Conv2d\\)"):
        dn.trace(torch.randn(1, 1, 8, 8))
    assert not model._forward_hooks  # the comparison's hooks are gone


@settings(max_examples=25, deadline=None)
@given(
    dims=st.sampled_from([1, 2, 3]), stride=st.integers(1, 3), padding=st.integers(0, 2),
    dilation=st.integers(1, 2), groups=st.sampled_from([1, 2]), kernel=st.integers(1, 4),
    extra=st.integers(0, 2), size=st.integers(2, 5),
)
def test_transposed_convolutions_are_mirrored_exactly(dims, stride, padding, dilation, groups, kernel, extra, size):
    output_padding = min(extra, max(stride, dilation) - 1)
    layer = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)[dims - 1]
    torch.manual_seed(0)
    up = layer(4, 2, kernel, stride=stride, padding=padding, output_padding=output_padding, dilation=dilation,
               groups=groups)
    model = nn.Sequential(nn.Conv1d(2, 4, 1) if dims == 1 else nn.Conv2d(2, 4, 1) if dims == 2 else nn.Conv3d(2, 4, 1),
                          nn.ReLU(), up).double().eval()
    x = torch.randn(1, 2, *[size] * dims, dtype=torch.float64)
    try:
        out = model(x)
    except RuntimeError:
        return  # padding larger than the output: torch refuses the forward itself
    dn = DeconvNet(model, strict=True)  # no general layer anywhere
    mirrored = dn.mirror[0]
    assert isinstance(mirrored, (Conv1dOfTranspose, Conv2dOfTranspose, Conv3dOfTranspose)[dims - 1])
    assert mirrored.weight is up.weight
    ours = dn.reconstruct_classes(x, [0, 1])
    for i in (0, 1):
        assert_exact(ours[:, i], region_reference(model, x, i, torch.ones_like(out[:, i]), None, "deconvnet"),
                     rtol=1e-9)


class _Summed(nn.Module):
    """Captum's segmentation tutorial's wrapper: each class's logits summed over the map."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x).sum(dim=(2, 3))


@pytest.mark.parametrize("target", [1, (2, 5, 11)])
def test_the_captum_drop_in_takes_captums_segmentation_targets_and_equals_captum(target):
    captum_attr = pytest.importorskip("captum.attr")
    from deconvnet import captum as ours

    model, x = _monai("UNet2d")
    model, x = model.double().eval(), x.double()
    # Captum takes (c, h, w) on the dense output itself; a class alone through the tutorial's wrapper
    theirs_model = model if isinstance(target, tuple) else _Summed(model)
    for theirs_class, ours_class in ((captum_attr.Deconvolution, ours.Deconvolution),
                                     (captum_attr.GuidedBackprop, ours.GuidedBackprop)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = theirs_class(theirs_model).attribute(x, target=target)
        assert_exact(ours_class(model).attribute(x, target=target), expected, rtol=1e-9)


UNET_2D = "monai.networks.nets:UNet(spatial_dims=2, in_channels=3, out_channels=3, channels=(4, 8), strides=(2,))"
UNET_3D = "monai.networks.nets:UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 8), strides=(2,))"


def test_the_command_line_draws_a_mask_file_region_and_refuses_what_does_not_apply(tmp_path, capsys):
    pytest.importorskip("monai")
    from PIL import Image

    from deconvnet.cli import main

    Image.new("RGB", (48, 48), (90, 140, 200)).save(tmp_path / "scene.png")
    mask = Image.new("L", (48, 48), 0)
    mask.paste(255, (10, 10, 30, 30))
    mask.save(tmp_path / "mask.png")
    common = ["--model", UNET_2D, "--input-size", "32", "--device", "cpu", "--rule", "guided"]
    assert main(["classes", str(tmp_path / "scene.png"), *common, "--region", str(tmp_path / "mask.png"),
                 "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "the region mask.png is 48x48, resized to the model's input, 32x32" in printed
    assert Image.open(tmp_path / "out" / "classes.png").width > 3 * 32
    assert main(["classes", str(tmp_path / "scene.png"), *common, "--classes", "1", "--out", str(tmp_path)]) == 1
    assert "--classes is for classifiers" in capsys.readouterr().err
    assert main(["info", *common]) == 0
    assert "a segmentation model: 3 classes on a 32x32 grid per image" in capsys.readouterr().out
    classifier = "monai.networks.nets:DenseNet121(spatial_dims=2, in_channels=3, out_channels=2)"
    assert main(["classes", str(tmp_path / "scene.png"), "--model", classifier, "--input-size", "32", "--device",
                 "cpu", "--region", str(tmp_path / "mask.png"), "--out", str(tmp_path)]) == 1
    assert "--region is for segmentation models" in capsys.readouterr().err


def test_the_command_line_draws_a_3d_segmentation_as_planes(tmp_path):
    pytest.importorskip("monai")
    from PIL import Image

    from deconvnet.cli import main

    volume = torch.zeros(1, 16, 16, 16)
    volume[0, 4:12, 3:9, 5:13] = 1.0
    torch.save(volume, tmp_path / "ct.pt")
    assert main(["classes", str(tmp_path / "ct.pt"), "--model", UNET_3D, "--rule", "guided", "--device", "cpu",
                 "--out", str(tmp_path / "ct")]) == 0
    planes = Image.open(tmp_path / "ct" / "classes.png")
    assert planes.width >= 6 * 100 and planes.height >= 100  # the volume's and each class's three planes


class _Sized(nn.Module):
    """A forward returning a dict with a map and a number that is not computed from the input's values."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x: Tensor) -> dict:
        return {"out": self.conv(x), "side": x.shape[-1]}


def test_every_bad_output_choice_is_refused_with_its_own_message():
    with pytest.raises(InputError, match="output must be a key, an attribute name or an index, got float"):
        DeconvNet(_Pair().eval(), output=1.5)
    with pytest.raises(InputError, match="output must be a key, an attribute name or an index, got bool"):
        DeconvNet(_Pair().eval(), output=True)
    with pytest.raises(InputError, match="output='logits': Sequential.forward returns one tensor, so there is no "
                                         "output to pick; leave output out"):
        DeconvNet(nn.Sequential(nn.Conv2d(1, 2, 3)).eval(), output="logits")
    with pytest.raises(InputError, match="output='side' is not a tensor computed from the input: _Sized.forward "
                                         "returns a dict of 'out', 'side'; the ones that are: 'out'"):
        DeconvNet(_Sized().eval(), output="side")
    assert DeconvNet(_Sized().eval()).output_key == "out"
    classifier = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    with pytest.raises(InputError, match="predicted_classes needs a dense output Tensor\\[N, K, \\*S\\], got \\(1, 3\\)"):
        DeconvNet(classifier.eval()).predicted_classes(torch.randn(1, 1, 8, 8))


def test_a_hugging_face_segmentation_folder_loads_as_one_and_is_drawn_as_one(tmp_path, capsys):
    from PIL import Image

    from deconvnet.cli import main
    from deconvnet.loading import load_model

    model = _huggingface("segformer")
    model.config.id2label = {0: "road", 1: "car", 2: "sky"}
    model.config.label2id = {"road": 0, "car": 1, "sky": 2}
    model.save_pretrained(tmp_path / "segformer")
    loaded = load_model(str(tmp_path / "segformer"))
    assert type(loaded.model).__name__ == "SegformerForSemanticSegmentation"  # not a classifier built from its config
    assert list(loaded.categories) == ["road", "car", "sky"]
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], value), name  # its own weights, every one
    Image.new("RGB", (40, 40), (90, 140, 200)).save(tmp_path / "scene.png")
    assert main(["classes", str(tmp_path / "scene.png"), "--model", str(tmp_path / "segformer"), "--input-size", "32",
                 "--device", "cpu", "--out", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    assert main(["info", "--model", str(tmp_path / "segformer"), "--input-size", "32", "--device", "cpu"]) == 0
    assert "a segmentation model: 3 classes on a 8x8 grid per image, its output 'logits'" in capsys.readouterr().out


class _InPlaceOnInput(nn.Module):
    """A forward that rectifies a slice of its own input in place, as some blocks do."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(torch.relu_(x[..., 1:-1, 1:-1]))


def test_the_check_against_the_forward_leaves_the_callers_input_as_it_was():
    x = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    kept = x.clone()
    model = _InPlaceOnInput().double().eval()
    dn = DeconvNet(model)
    first = dn.reconstruct_classes(dn.trace(x))
    assert torch.equal(x, kept)  # the first call ran model(x) once more, on a copy
    assert torch.equal(dn.reconstruct_classes(x), first)
