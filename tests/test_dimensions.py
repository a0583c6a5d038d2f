"""The mirror in 1-D (signals) and 3-D (volumes, clips), as in 2-D: the same layers generic over
the number of spatial dims, exact against the autograd oracle in float64 for the three rules."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from chains import chain_nets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import assert_exact, channels_reference, classes_reference, deconv_gradient
from PIL import Image
from torch import nn

from deconvnet import DeconvNet, InputError
from deconvnet import mirror as mirror_layers

RULES = ("deconvnet", "guided", "gradient")


def _statistics(model: nn.Module) -> nn.Module:
    """Batch-norms with statistics far from the identity (so a missing scale shows), float64, eval."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.copy_(torch.rand(module.num_features, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    return model.double().eval()


class Residual1d(nn.Module):
    """An ECG-style 1-D ResNet block: strided stem, overlapping max-pool, a residual add, a
    functional global pool, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv1d(1, 8, 7, stride=2, padding=3), nn.BatchNorm1d(8), nn.ReLU(),
                                  nn.MaxPool1d(3, 2, 1))
        self.a, self.bn, self.relu = nn.Conv1d(8, 8, 3, padding=1), nn.BatchNorm1d(8), nn.ReLU()
        self.b = nn.Conv1d(8, 8, 3, padding=2, dilation=2)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.relu(x + self.b(self.relu(self.bn(self.a(x)))))
        return self.head(F.adaptive_avg_pool1d(x, 1).flatten(1))


def volume_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv3d(2, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(), nn.MaxPool3d(2),
        nn.Conv3d(4, 6, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)), nn.ReLU(),
        nn.AvgPool3d(2, ceil_mode=True), nn.Conv3d(6, 4, 1), nn.ReLU(), nn.AdaptiveMaxPool3d(1), nn.Flatten(),
        nn.Linear(4, 3),
    )


CASES = {
    "signal": (Residual1d, (2, 1, 100), "stem.3"),
    "volume": (volume_net, (2, 2, 6, 12, 10), "3"),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    torch.manual_seed(0)
    make, shape, layer = CASES[request.param]
    return _statistics(make()), torch.randn(*shape, dtype=torch.float64), layer


@pytest.mark.parametrize("rule", RULES)
def test_classes_and_channels_are_exact_in_1d_and_3d(case, rule):
    model, x, layer = case
    dn = DeconvNet(model, rule=rule)
    assert dn.general_layers == []  # every layer has its explicit mirror
    assert_exact(dn.reconstruct_classes(x, [0, 2]), classes_reference(model, x, [0, 2], rule))
    module = model.get_submodule(layer)
    for mode in ("max", "map"):
        ours = dn.reconstruct(x, layer, [0, 3], mode=mode)
        assert_exact(ours, channels_reference(model, x, module, [0, 3], mode, "activation", rule=rule))


def test_the_mirror_prints_its_1d_and_3d_layers_and_shares_the_weights():
    signal, volume = _statistics(Residual1d()), _statistics(volume_net())
    printed = str(DeconvNet(signal).mirror)
    for what in ("ConvTranspose1d(8, 1, kernel_size=(7,), stride=(2,), padding=(3,)", "OverlapUnpool1d(",
                 "AdaptiveAvgPool1dTranspose(output_size=1)", "ChannelScale(8"):
        assert what in printed, what
    dn = DeconvNet(volume)
    printed = str(dn.mirror)
    for what in ("ConvTranspose3d(6, 4, kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)",
                 "MaxUnpool3d(kernel_size=(2, 2, 2)", "AvgPool3dTranspose(", "AdaptiveMaxUnpool3d(output_size=1)"):
        assert what in printed, what
    convs = [m for m in dn.mirror.modules() if isinstance(m, mirror_layers.ConvTranspose3d)]
    assert {id(m.weight) for m in convs} == {id(volume[i].weight) for i in (0, 4, 7)}  # the Parameters themselves


def test_single_units_on_their_receptive_fields_in_1d_and_3d():
    torch.manual_seed(0)
    signal = _statistics(nn.Sequential(nn.Conv1d(1, 4, 5, padding=2), nn.ReLU(), nn.MaxPool1d(3, 2),
                                       nn.Conv1d(4, 6, 3, stride=2, padding=1), nn.BatchNorm1d(6), nn.ReLU(),
                                       nn.MaxPool1d(2), nn.Conv1d(6, 5, 3), nn.ReLU()))
    cases = [(signal, torch.randn(2, 1, 120, dtype=torch.float64), "8"),
             (_statistics(volume_net()), torch.randn(2, 2, 12, 14, 13, dtype=torch.float64), "5")]
    for model, x, layer in cases:
        dn = DeconvNet(model)
        trace = dn.trace(x)
        module = model.get_submodule(layer)
        expected = channels_reference(model, x, module, [0, 1, 3], "max", "activation")
        assert_exact(dn.reconstruct(trace, layer, [0, 1, 3], crop=True), expected)
        positions = [3, 7]
        units = dn.reconstruct_units(trace, layer, images=[0, 1], channels=[1, 2], positions=positions, crop=True)
        uncropped = dn.reconstruct_units(trace, layer, images=[0, 1], channels=[1, 2], positions=positions, crop=False)
        for t, (n, c, p) in enumerate(zip([0, 1], [1, 2], positions, strict=True)):
            def keep(a, n=n, c=c, p=p):  # type: ignore[no-untyped-def]
                kept = torch.zeros_like(a)
                kept[n, c].view(-1)[p] = a[n, c].reshape(-1)[p]
                return kept
            reference = deconv_gradient(model, x, keep, module)[n]
            assert_exact(units[t], reference)
            assert_exact(uncropped[t], reference)


def test_the_one_indexed_paste_of_gpus_is_exact_in_1d_and_3d(monkeypatch):
    # On a GPU the windows are pasted in one indexed add; run that path here too
    from deconvnet import crop

    monkeypatch.setattr(crop, "_paste", crop._paste_all)
    torch.manual_seed(0)
    model = _statistics(volume_net())
    x = torch.randn(2, 2, 12, 14, 13, dtype=torch.float64)
    expected = channels_reference(model, x, model[5], [0, 4], "max", "activation")
    assert_exact(DeconvNet(model).reconstruct(x, "5", [0, 4], crop=True), expected)


def test_receptive_fields_in_1d_and_3d():
    dn = DeconvNet(_statistics(Residual1d()))
    # conv 7/2 pad 3: 7 samples every 2 from -3; then max-pool 3/2 pad 1: 7 + 2 * 2 = 11, every 4, from -3 - 2
    field = dn.receptive_field("stem.3")
    assert (field.size, field.stride, field.offset) == ((11,), (4,), (-5,))
    dn = DeconvNet(_statistics(volume_net()))
    field = dn.receptive_field("4")  # 3^3 conv, 2^3 pool, then (1, 3, 3) / (1, 2, 2) padded (0, 1, 1)
    assert (field.size, field.stride, field.offset) == ((4, 8, 8), (2, 4, 4), (-1, -3, -3))


class Functional(nn.Module):
    """The functional spellings, in 1-D and 3-D, around module weights."""

    def __init__(self, dims: int) -> None:
        super().__init__()
        conv = nn.Conv1d if dims == 1 else nn.Conv3d
        self.dims = dims
        self.conv1, self.conv2 = conv(2, 4, 3), conv(4, 4, 3)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dims == 1:
            x = F.max_pool1d(F.relu(F.conv1d(x, self.conv1.weight, self.conv1.bias, padding=1)), 3, 2)
            x = F.avg_pool1d(F.relu(self.conv2(x)), 2)
            return self.head(F.adaptive_max_pool1d(x, 1).flatten(1))
        x = F.max_pool3d(F.relu(F.conv3d(x, self.conv1.weight, self.conv1.bias, padding=1)), 3, 2)
        x = F.avg_pool3d(F.relu(self.conv2(x)), 2, ceil_mode=True)
        return self.head(F.adaptive_avg_pool3d(x, 1).flatten(1))


@pytest.mark.parametrize(("dims", "shape"), [(1, (2, 2, 40)), (3, (1, 2, 9, 11, 10))])
def test_functional_pools_and_convs_in_1d_and_3d(dims, shape):
    torch.manual_seed(0)
    model = Functional(dims).double().eval()
    x = torch.randn(*shape, dtype=torch.float64)
    for rule in RULES:
        dn = DeconvNet(model, rule=rule)
        assert dn.general_layers == []
        assert_exact(dn.reconstruct_classes(x, [0, 1, 2]), classes_reference(model, x, [0, 1, 2], rule))


@pytest.mark.parametrize("name", ["r3d_18", "mc3_18", "r2plus1d_18"])
def test_torchvision_video_classifiers_are_exact(name):
    torch.manual_seed(0)
    model = _statistics(torchvision.models.get_model(name, weights=None, num_classes=4))
    x = torch.randn(1, 3, 4, 24, 24, dtype=torch.float64)
    dn = DeconvNet(model, rule="guided")
    assert dn.general_layers == []
    assert_exact(dn.reconstruct_classes(x, [0, 3]), classes_reference(model, x, [0, 3], "guided"))


MONAI = {
    "DenseNet121": lambda nets: nets.DenseNet121(spatial_dims=3, in_channels=1, out_channels=3),
    "resnet10": lambda nets: nets.resnet10(spatial_dims=3, n_input_channels=1, num_classes=3),
    "resnet18": lambda nets: nets.resnet18(spatial_dims=3, n_input_channels=1, num_classes=3),
    "SEResNet50": lambda nets: nets.SEResNet50(spatial_dims=3, in_channels=1, num_classes=3),
    "EfficientNetBN": lambda nets: nets.EfficientNetBN("efficientnet-b0", spatial_dims=3, in_channels=1,
                                                       num_classes=3, pretrained=False),
}
# The smallest cube each takes (DenseNet121's and EfficientNetBN's last blocks need 32): 16^3
# still gives the ResNets a strided conv, an overlapping 3-D max-pool and maps of 2^3 at layer3.
MONAI_SIZE = {"DenseNet121": 32, "resnet10": 16, "resnet18": 16, "SEResNet50": 16, "EfficientNetBN": 32}


@pytest.mark.parametrize("name", list(MONAI))
def test_monai_volume_classifiers_are_exact(name):
    nets = pytest.importorskip("monai.networks.nets", reason="MONAI is in the test extra (pip install -e '.[test]')")
    torch.manual_seed(0)
    model = _statistics(MONAI[name](nets))
    x = torch.randn(1, 1, *[MONAI_SIZE[name]] * 3, dtype=torch.float64)
    dn = DeconvNet(model)
    assert dn.general_layers == []  # 3-D convs, pools, norms, squeeze-excitation gates: all explicit
    for rule in RULES:
        assert_exact(dn.reconstruct_classes(x, [0, 2], rule=rule), classes_reference(model, x, [0, 2], rule))


@pytest.mark.parametrize("dims", [1, 3])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_chains_with_functional_calls_are_exact(dims, data):
    """Random conv / batch-norm / rectifier / pool chains in 1-D and 3-D, modules and functional
    calls mixed (F.max_pool3d, F.avg_pool1d, x.relu(), torch.flatten, ...), with and without a
    head: classes and channels equal the oracle for the three rules, and single units projected
    on their receptive-field windows equal the whole-map projection."""
    net, x = data.draw(chain_nets(dims=dims), label="net")
    rule = data.draw(st.sampled_from(RULES), label="rule")
    dn = DeconvNet(net, rule=rule)
    output = net(x)
    if output.dim() == 2:
        assert_exact(dn.reconstruct_classes(x), classes_reference(net, x, list(range(output.shape[1])), rule))
    convs = [name for name, m in net.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv3d))]
    name = data.draw(st.sampled_from(convs), label="layer")
    module = dict(net.named_modules())[name]
    mode = data.draw(st.sampled_from(["max", "map"]), label="mode")
    expected = channels_reference(net, x, module, [0], mode, "activation", rule=rule)
    assert_exact(dn.reconstruct(x, name, [0], mode=mode, crop=False), expected)
    below = net.ops[: [op[1] is module for op in net.ops].index(True)]
    averaged = any(isinstance(op[1], (nn.AvgPool1d, nn.AvgPool3d)) or str(op[1]).startswith("F.avg") for op in below)
    if mode == "max" and rule == "deconvnet" and not averaged:
        assert_exact(dn.reconstruct(x, name, [0], crop=True), expected)  # every layer below runs on windows


def test_each_bad_input_keeps_its_one_clear_error():
    signal = DeconvNet(_statistics(Residual1d()))
    volume = DeconvNet(_statistics(volume_net()))
    image = DeconvNet(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval())
    with pytest.raises(InputError, match=r"x must be a Tensor\[N, C, H, W\], got shape \(1, 3, 4, 8, 8\): this model's "
                                         r"convolutions and pools are 2-D, for images, not volumes or clips"):
        image.trace(torch.randn(1, 3, 4, 8, 8))
    with pytest.raises(InputError, match=r"x must be a Tensor\[N, C, L\], got shape \(2, 1, 8, 8\): .* 1-D, for "
                                         r"signals, not images"):
        signal.trace(torch.randn(2, 1, 8, 8, dtype=torch.float64))
    with pytest.raises(InputError, match=r"x must be a Tensor\[N, C, D, H, W\], got shape \(2, 6, 12, 10\); add a "
                                         r"batch dimension with x.unsqueeze\(0\)"):
        volume.trace(torch.randn(2, 6, 12, 10, dtype=torch.float64))
    with pytest.raises(InputError, match=r"x has 3 channels but 0 \(Conv3d\) expects 2"):
        volume.trace(torch.randn(1, 3, 6, 12, 10, dtype=torch.float64))
    with pytest.raises(InputError, match=r"x of 2x2x2 voxels is too small for this model: .*the smallest cube input "
                                         r"Sequential runs is"):
        volume.trace(torch.randn(1, 2, 2, 2, 2, dtype=torch.float64))


@pytest.mark.parametrize("case_name", list(CASES))
def test_the_captum_drop_in_takes_signals_and_volumes_on_the_mirror(case_name, monkeypatch):
    captum = pytest.importorskip("captum.attr")
    from deconvnet import captum as drop_in

    torch.manual_seed(0)
    make, shape, layer = CASES[case_name]
    model = _statistics(make())
    x = torch.randn(*shape, dtype=torch.float64)
    module = model.get_submodule(layer)
    unit = (2, 7) if case_name == "signal" else (1, 1, 2, 1)
    theirs = {name: getattr(captum, name)(model).attribute(x, target=0) for name in ("Deconvolution", "GuidedBackprop")}
    neurons = {name: getattr(captum, name)(model, module).attribute(x, unit)
               for name in ("NeuronDeconvolution", "NeuronGuidedBackprop")}

    def general(*args, **kwargs):  # the path that does not use the mirror
        raise AssertionError("ran the general gradient, not the mirror")

    monkeypatch.setattr(drop_in._RuleGradients, "_gradients", general)
    for name, expected in theirs.items():
        assert expected.abs().max() > 0
        assert_exact(getattr(drop_in, name)(model).attribute(x, target=0), expected)
    for name, expected in neurons.items():
        assert expected.abs().max() > 0
        assert_exact(getattr(drop_in, name)(model, module).attribute(x, unit), expected)


# --- pictures and the command line ----------------------------------------------------------------


def test_pictures_of_signals_volumes_and_clips():
    from deconvnet.pictures import signals, volumes

    torch.manual_seed(0)
    signal = torch.randn(2, 1, 60)
    recon = torch.randn(2, 3, 1, 60)
    chart = signals.signal_figure(signal, recon, ["a", "b", "c"], names=["x", "y"])
    assert chart.width > 2 * 500 and chart.height > 4 * 100  # two columns of four charts
    volume = torch.zeros(1, 9, 12, 10)
    volume[0, 2, 7, 3] = -5.0  # the strongest point, negative
    assert volumes.strongest_point(volume) == (2, 7, 3)
    axial, coronal, sagittal = volumes.planes(torch.arange(9 * 12 * 10.0).view(1, 9, 12, 10), (2, 7, 3))
    assert axial.shape == (1, 12, 10) and coronal.shape == (1, 9, 10) and sagittal.shape == (1, 9, 12)
    assert float(axial[0, 7, 3]) == float(coronal[0, 2, 3]) == float(sagittal[0, 2, 7])  # the same voxel
    picture = volumes.planes_figure(torch.randn(1, 1, 9, 12, 10), volume[None, None], ["c"], names=["v"])
    assert picture.width >= 6 * 120  # six readable tiles in a row
    signed = volumes.signed_volume(volume)
    assert float(signed[0, 2, 7, 3]) == 0.0 and float(signed[0, 0, 0, 0]) == 0.5  # zero at mid-grey
    assert volumes.slice_grid(volume, count=4).width >= 4 * 20  # four slices of 10 px, twice the size
    assert volumes._spread(4, 8) == [0, 1, 2, 3] and volumes._spread(9, 3) == [0, 4, 8]
    strip = volumes.clip_strip(torch.rand(3, 10, 16, 16), torch.randn(3, 10, 16, 16), frames=5, title="clip")
    assert strip.width >= 5 * 32


@pytest.fixture
def ecg_module(tmp_path, monkeypatch):
    """A user's 1-D model as module:factory, its labels and two signal files."""
    (tmp_path / "ecg.py").write_text(
        "from torch import nn\n"
        "def net(num_classes=4):\n"
        "    return nn.Sequential(nn.Conv1d(1, 8, 7, padding=3), nn.BatchNorm1d(8), nn.ReLU(), nn.MaxPool1d(3, 2),\n"
        "                         nn.Conv1d(8, 8, 5, padding=2), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(),\n"
        "                         nn.Linear(8, num_classes))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "labels.txt").write_text("normal\nAF\nother\nnoisy\n")
    import numpy as np

    np.save(tmp_path / "beat.npy", np.sin(np.linspace(0, 20, 300, dtype=np.float32))[None])
    torch.save(torch.randn(2, 1, 300), tmp_path / "two.pt")
    return tmp_path


def test_the_command_line_reads_signals_from_tensor_files(ecg_module, capsys):
    from deconvnet.cli import main

    folder = ecg_module
    common = ["--model", "ecg:net", "--labels", str(folder / "labels.txt"), "--device", "cpu"]
    assert main(["info", *common, "--example", str(folder / "beat.npy")]) == 0
    out = capsys.readouterr().out
    assert "input: Tensor[N, C, L] = Tensor[N, 1, 300] (the shape of beat.npy)" in out
    assert "fed as they are: no preprocessing" in out and "outputs: 4 classes" in out
    assert main(["classes", str(folder / "beat.npy"), str(folder / "two.pt"), *common, "--top-k", "2",
                 "--out", str(folder / "out")]) == 0
    picture = Image.open(folder / "out" / "classes.png")
    assert picture.height > 3 * 3 * 100  # three inputs, each a signal and two reconstructions
    assert main(["occlusion", str(folder / "beat.npy"), *common, "--size", "20", "--stride", "10",
                 "--out", str(folder / "out")]) == 0
    chart = Image.open(folder / "out" / "occlusion-beat.png")
    assert chart.height >= 2 * 100  # the signal over P(target) along it
    assert main(["invariance", str(folder / "beat.npy"), *common, "--layers", "0", "4"]) == 1
    err = capsys.readouterr().err
    assert "deconvnet invariance works on images, and ecg:net takes signals" in err
    assert "the command line has atlas, channels, classes, info, layers, occlusion and top9;" in err
    (folder / "flat.npy").write_bytes((folder / "beat.npy").read_bytes())
    import numpy as np

    np.save(folder / "flat.npy", np.zeros((2, 3, 4, 5), dtype=np.float32))
    assert main(["classes", str(folder / "flat.npy"), *common]) == 1
    assert "holds a tensor of shape (2, 3, 4, 5); this model takes [C, L] per input" in capsys.readouterr().err
    assert main(["classes", str(folder / "labels.txt"), *common]) == 1
    assert "reads tensor files (.pt, .pth, .npy), not images" in capsys.readouterr().err


def test_the_command_line_draws_a_monai_volume_and_a_video_clip(tmp_path):
    pytest.importorskip("monai")
    from deconvnet.cli import main

    volume = torch.zeros(1, 32, 32, 32)
    volume[0, 10:20, 8:24, 12:20] = 1.0
    torch.save(volume, tmp_path / "ct.pt")
    torch.save(torch.randn(3, 4, 32, 32), tmp_path / "clip.pt")
    monai = "monai.networks.nets:DenseNet121(spatial_dims=3, in_channels=1, out_channels=2)"
    assert main(["classes", str(tmp_path / "ct.pt"), "--model", monai, "--top-k", "2", "--device", "cpu",
                 "--out", str(tmp_path / "ct")]) == 0
    planes = Image.open(tmp_path / "ct" / "classes.png")
    assert planes.width >= 6 * 120 and planes.height >= 2 * 120  # two rows of six planes
    assert main(["occlusion", str(tmp_path / "ct.pt"), "--model", monai, "--size", "8", "--stride", "8",
                 "--device", "cpu", "--out", str(tmp_path / "ct")]) == 0
    occluded = Image.open(tmp_path / "ct" / "occlusion-ct.png")
    assert occluded.width >= 6 * 120  # the input's planes, then the probability map's
    video = "torchvision.models.video:r3d_18(num_classes=3)"
    assert main(["classes", str(tmp_path / "clip.pt"), "--model", video, "--top-k", "1", "--device", "cpu",
                 "--out", str(tmp_path / "clip")]) == 0
    strip = Image.open(tmp_path / "clip" / "classes.png")
    assert strip.width >= 4 * 64 and strip.height >= 2 * 64  # four frames over their reconstruction


@pytest.mark.parametrize("dims", [1, 3])
@pytest.mark.parametrize(("kernel", "dilation", "groups", "out"), [(2, 1, 1, 4), (4, 2, 1, 40), (3, 1, 4, 4), (1, 1, 1, 8)])
def test_stride_one_transposes_of_every_shape_are_exact(dims, kernel, dilation, groups, out):
    # stride 1 runs as the ordinary conv with the flipped kernel where that is faster (narrow,
    # pointwise, depthwise), else as torch's transposed conv; "same" with an even kernel pads
    # one more at the end: both forms, uneven pads included, against the oracle
    conv = nn.Conv1d if dims == 1 else nn.Conv3d
    torch.manual_seed(0)
    model = nn.Sequential(conv(4, out if groups == 1 else 4, kernel, padding="same", dilation=dilation, groups=groups),
                          nn.ReLU()).double().eval()
    x = torch.randn(2, 4, *[7] * dims, dtype=torch.float64)
    expected = channels_reference(model, x, model[1], [0, 3], "map", "activation", rule="gradient")
    assert_exact(DeconvNet(model, rule="gradient").reconstruct(x, "1", [0, 3], mode="map"), expected)


class PaddedVolume(nn.Module):
    """A 3-D net with what incremental occlusion treats specially: a constant pad, strided and
    dilated convs, an overlapping max-pool, an average pool, a residual add, batch-norm."""

    def __init__(self) -> None:
        super().__init__()
        self.pad = nn.ConstantPad3d((1, 0, 0, 1, 1, 1), 0.0)
        self.conv = nn.Conv3d(2, 4, 3, stride=(1, 2, 1))
        self.bn, self.relu = nn.BatchNorm3d(4), nn.ReLU()
        self.pool = nn.MaxPool3d(3, 2, 1)
        self.branch = nn.Conv3d(4, 4, 3, padding=2, dilation=2)
        self.avg = nn.AvgPool3d(2)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.bn(self.conv(self.pad(x)))))  # a pad first: it moves the box
        x = self.relu(x + self.branch(x))
        return self.head(F.adaptive_avg_pool3d(self.avg(x), 1).flatten(1))


def _brute_force(model: nn.Module, x: torch.Tensor, size: int, stride: int, fill: float, target: int) -> torch.Tensor:
    """P(target) with the occluder at every position, one occluded input at a time."""
    from deconvnet.analysis.occlusion import occluder_positions

    out = []
    for corner in occluder_positions(x.shape[2:], size, stride).tolist():
        occluded = x.clone()
        occluded[(slice(None), slice(None), *(slice(c, c + size) for c in corner))] = fill
        with torch.no_grad():
            out.append(model(occluded).softmax(-1)[0, target])
    return torch.stack(out)


@pytest.mark.parametrize("case_name", ["signal", "volume"])
def test_occlusion_in_1d_and_3d_equals_occluding_and_running_the_model(case_name):
    from deconvnet.analysis.occlusion import occlusion

    torch.manual_seed(0)
    if case_name == "signal":
        model, x, size, stride, layer = _statistics(Residual1d()), torch.randn(1, 1, 160, dtype=torch.float64), 9, 8, "stem.3"
    else:
        model, x, size, stride, layer = _statistics(PaddedVolume()), torch.randn(1, 2, 14, 18, 16, dtype=torch.float64), 3, 3, "pool"
    expected = _brute_force(model, x, size, stride, 0.0, 1)
    from deconvnet.analysis import occlusion as module

    cropped = []
    slide = module._Incremental.slide

    def counted(self, *args):  # type: ignore[no-untyped-def]
        out = slide(self, *args)
        cropped.append(out is not None)
        return out

    for incremental in (True, False):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(module._Incremental, "slide", counted)
            result = occlusion(model, x, size=size, stride=stride, target=1, layer=layer, incremental=incremental)
        assert result.grid == tuple((n - size) // stride + 1 for n in x.shape[2:])
        assert result.probability.shape == (1, *result.grid)
        assert_exact(result.probability.flatten(), expected, rtol=1e-9)
        assert result.projection.shape == x.shape
        if incremental:  # the window layers ran on crops of the unoccluded pass, not whole
            assert sum(cropped) >= 2, cropped
        # the watched feature map's sum at every position, against the layer's own output
        module_ = model.get_submodule(layer)
        sums = []
        from deconvnet.analysis.occlusion import occluder_positions

        for corner in occluder_positions(x.shape[2:], size, stride).tolist():
            occluded = x.clone()
            occluded[(slice(None), slice(None), *(slice(c, c + size) for c in corner))] = 0.0
            seen = []
            handle = module_.register_forward_hook(lambda m, i, o: seen.append(o))
            with torch.no_grad():
                model(occluded)
            handle.remove()
            sums.append(seen[0][0, int(result.channel[0])].sum())
        assert_exact(result.activation.flatten(), torch.stack(sums), rtol=1e-9)
    with pytest.raises(InputError, match=r"occluder size 999 does not fit the .* (signal|volume)"):
        occlusion(model, x, size=999, stride=1)
    with pytest.raises(InputError, match=r"x must be a batch of (signals|volumes or clips)"):
        occlusion(model, torch.randn(1, 2, 8, 8, dtype=torch.float64), size=2, stride=2)


@pytest.mark.parametrize("case_name", ["signal", "volume"])
def test_the_captum_occlusion_drop_in_runs_signals_and_volumes_incrementally(case_name, monkeypatch):
    captum = pytest.importorskip("captum.attr")
    from deconvnet import captum as drop_in

    torch.manual_seed(0)
    if case_name == "signal":
        model, x, window, step = _statistics(Residual1d()), torch.randn(2, 1, 96, dtype=torch.float64), (1, 8), (1, 8)
    else:
        model = _statistics(PaddedVolume())
        x, window, step = torch.randn(1, 2, 12, 12, 12, dtype=torch.float64), (2, 4, 4, 4), (2, 4, 4, 4)
    expected = captum.Occlusion(model).attribute(x, sliding_window_shapes=window, strides=step, target=1)

    def whole(*args, **kwargs):  # Captum's way, one occluded copy after another
        raise AssertionError("ran whole evaluations, not incremental inference")

    monkeypatch.setattr(drop_in.Occlusion, "_whole", whole)
    ours = drop_in.Occlusion(model).attribute(x, sliding_window_shapes=window, strides=step, target=1)
    assert expected.abs().max() > 0 and ours.dtype == x.dtype
    # Captum's Occlusion returns float32 even for a float64 model: equal to its precision
    torch.testing.assert_close(ours, expected.to(ours.dtype), rtol=1e-5, atol=1e-7)


def test_labels_of_the_wrong_count_are_refused_for_signal_models_too(ecg_module):
    from deconvnet.loading import load_model

    (ecg_module / "three.txt").write_text("a\nb\nc\n")
    with pytest.raises(InputError, match=r"three.txt has 3 names, but the model has 4 classes"):
        load_model("ecg:net", labels=ecg_module / "three.txt")


# --- top-k, the atlas and the layer pictures of signals and volumes --------------------------------


def test_crop_to_field_cuts_the_units_field_in_1d_and_3d():
    from deconvnet.pictures.figures import crop_to_field
    from deconvnet.receptive import ReceptiveField

    signal = torch.arange(10.0)[None]
    field = ReceptiveField((5,), (2,), (-2,))  # unit l sees samples 2l - 2 .. 2l + 2
    assert crop_to_field(signal, field, (0,), -1.0).tolist() == [[-1, -1, 0, 1, 2]]
    assert crop_to_field(signal, field, (3,), -1.0).tolist() == [[4, 5, 6, 7, 8]]
    assert crop_to_field(signal, field, (5,), -1.0).tolist() == [[8, 9, -1, -1, -1]]
    volume = torch.arange(4 * 5 * 6.0).view(1, 4, 5, 6)
    cube = ReceptiveField((3, 3, 2), (1, 2, 1), (-1, 0, 0))
    crop = crop_to_field(volume, cube, (0, 1, 4), -1.0)  # depth -1..1, rows 2..4, columns 4..5
    assert crop.shape == (1, 3, 3, 2)
    assert (crop[0, 0] == -1).all() and torch.equal(crop[0, 1:], volume[0, 0:2, 2:5, 4:6])


def test_top_units_of_signals_and_volumes_project_exactly_and_draw(case):
    from deconvnet.analysis.topk import mine_top_units, project_top_units
    from deconvnet.pictures import figures

    model, x, layer = case
    dn = DeconvNet(model)
    top = mine_top_units(dn, [(x, torch.arange(x.shape[0]))], [layer], k=2)[layer]
    projections = project_top_units(dn, top, lambda i: x[i], channels=[0, 1])
    for row, c in enumerate([0, 1]):
        for r in range(2):
            if torch.isfinite(top.values[c, r]):  # each kept unit projected alone, its activation kept
                image_, at = int(top.images[c, r]), int(top.positions[c, r])
                expected = dn.reconstruct_units(x, layer, images=[image_], channels=[c], positions=[at], crop=False)
                assert_exact(projections[row, r], expected[0])
    patches = figures.shown_input(x[top.images[[0, 1]].clamp_min(0)].flatten(0, 1), None, None).view_as(projections)
    picture = figures.top_units_figure(top, projections, patches, dn.receptive_field(layer), [0, 1])
    assert picture.width > 200 and picture.height > 2 * 40  # two channels, readable


def test_a_volume_units_tile_is_its_fields_three_slices_through_the_centre():
    from deconvnet.pictures import figures, volumes
    from deconvnet.receptive import ReceptiveField

    field = ReceptiveField((3, 5, 5), (1, 1, 1), (-1, -2, -2))
    shown = torch.rand(1, 8, 9, 10)
    projection, patch = figures.unit_pictures(torch.randn(1, 8, 9, 10), shown, field, (4, 4, 5))
    side = 5  # the field's longest side: each slice sits on a square of it
    assert projection.shape == patch.shape == (3, side, 3 * side + 2)
    axial = patch[0, :, :side]  # depth 4 is the field's centre: its 5 x 5 rows 2..6, columns 3..7
    assert torch.allclose(axial, shown[0, 4, 2:7, 3:8])
    sagittal = patch[0, 1:4, 2 * side + 2 :]  # depth 3..5 (centred in the square), rows 2..6, column 5
    assert torch.allclose(sagittal, shown[0, 3:6, 2:7, 5])
    trace_projection, trace_patch = figures.unit_pictures(torch.randn(2, 30), torch.rand(2, 30),
                                                          ReceptiveField((7,), (1,), (-3,)), (0,))
    assert trace_projection.shape[0] == 3 and trace_projection.shape[2] >= 2 * trace_projection.shape[1]
    assert volumes.field_planes(torch.rand(3, 4, 4, 4)).shape == (3, 4, 14)


def test_the_command_line_mines_top9_and_an_atlas_of_signals(ecg_module, capsys):
    import json

    import numpy as np

    from deconvnet.cli import main

    folder = ecg_module
    data = folder / "signals"
    data.mkdir()
    generator = np.random.default_rng(0)
    for i in range(3):
        np.save(data / f"s{i}.npy", generator.standard_normal((1, 300)).astype(np.float32))
    torch.save(torch.randn(4, 1, 300), data / "batch.pt")  # four inputs in one file
    common = ["--model", "ecg:net", "--labels", str(folder / "labels.txt"), "--device", "cpu"]
    assert main(["top9", str(data), *common, "--layers", "4", "--channels", "2", "--out", str(folder / "o")]) == 0
    panel = Image.open(folder / "o" / "top9-4.png")  # two channels side by side: 3 x 3 projections, 3 x 3 patches
    assert panel.width > 4 * 3 * 100 and panel.height >= 3 * 48
    assert main(["layers", str(data / "s0.npy"), *common, "--layers", "1", "4", "--out", str(folder / "o")]) == 0
    assert Image.open(folder / "o" / "layers.png").height > 3 * 100  # the signal over two projections
    assert main(["channels", str(data / "s1.npy"), *common, "--layer", "4", "--channels", "0", "3",
                 "--out", str(folder / "o")]) == 0
    assert main(["atlas", str(data), *common, "--layers", "4", "--k", "3", "--out", str(folder / "site")]) == 0
    site = folder / "site"
    atlas = json.loads((site / "atlas.json").read_text())
    assert atlas["spatial_dims"] == 1 and atlas["dataset"]["mined"] == 7
    assert atlas["images"] == ["batch.pt #0", "batch.pt #1", "batch.pt #2", "batch.pt #3", "s0.npy", "s1.npy",
                               "s2.npy"]
    assert atlas["layers"]["4"]["receptive_field"] == [17]  # 7, then a 3-wide pool of stride 2, then 5
    unit = (site / "4" / "0.html").read_text()
    assert "17 samples, stride 2" in unit and "the signal it saw" in unit and "position " in unit
    assert "image" not in unit.lower().replace("img", "")
    best = atlas["layers"]["4"]["units"][0][0]
    tile = Image.open(site / "4" / "img" / "0-0-patch.png")
    assert tile.height == 48 and tile.width >= 2 * tile.height  # a trace, wider than tall
    assert best["position"] and 0 <= best["position"][0] < 150


def test_the_atlas_of_volumes_and_its_errors(tmp_path):
    from torch.utils.data import TensorDataset

    from deconvnet.analysis.atlas import AtlasImages, build_atlas

    torch.manual_seed(0)
    model = _statistics(volume_net()).float()
    data = tmp_path / "volumes"
    data.mkdir()
    for i in range(3):
        torch.save(torch.randn(2, 6, 12, 10), data / f"v{i}.pt")
    (data / "broken.npy").write_bytes(b"not an array")
    atlas = build_atlas(model, data, ["3"], tmp_path / "site", k=2)
    assert atlas.spatial_dims == 3 and atlas.mined == 3 and list(atlas.skipped) == [0]  # broken.npy sorts first
    assert "cannot read" in atlas.skipped[0]
    page = (tmp_path / "site" / "3" / "0.html").read_text()
    assert "three orthogonal slices" in (tmp_path / "site" / "index.html").read_text() and "at d=" in page
    field = atlas.fields["3"]
    tile = Image.open(tmp_path / "site" / "3" / "img" / "0-0.png")
    assert tile.size == (3 * max(field.size) + 2, max(field.size))
    with pytest.raises(InputError, match=r"the atlas's inputs are images and the model takes volumes or clips: "
                                         r"make them with AtlasImages\(\.\.\., spatial_dims=3\)"):
        build_atlas(model, AtlasImages(TensorDataset(torch.randn(2, 2, 6, 12, 10))), ["3"], tmp_path / "other")
    with pytest.raises(InputError, match="spatial_dims must be 1, 2 or 3, got 4"):
        AtlasImages(data, spatial_dims=4)


def test_the_explorer_refuses_signal_models_with_what_to_use_instead():
    pytest.importorskip("fastapi")
    from deconvnet.loading import LoadedModel
    from deconvnet.preprocessing import Preprocessing
    from deconvnet.serve import Explorer

    loaded = LoadedModel(Residual1d().eval(), Preprocessing.imagenet(), None)
    with pytest.raises(InputError, match="the explorer shows images, and ecg takes signals: draw them with"):
        Explorer(loaded, name="ecg")
