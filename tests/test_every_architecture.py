"""Every torchvision classification family (its smallest variant, built as its pretrained
weights build it) and a handful of timm CNN families, against the autograd oracle in float64;
Captum parity on the modern ones with ``rectifiers="relu"``.

Random weights, small inputs: nothing is downloaded.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from captum.attr import Deconvolution, GuidedBackprop
from reference import assert_exact, channels_reference, classes_reference
from torch import nn
from torchvision import models

import deconvnet
from deconvnet import DeconvNet, UnsupportedLayerError

# family -> (smallest model, constructor arguments as its pretrained weights set them, input
# size, whether attention layers are reversed by the general VJP layer)
_PRETRAINED_INCEPTION = {"aux_logits": False, "transform_input": True, "init_weights": False}
TORCHVISION = {
    "alexnet": ("alexnet", {}, 64, False),
    "convnext": ("convnext_tiny", {}, 32, False),
    "densenet": ("densenet121", {}, 32, False),
    "efficientnet": ("efficientnet_b0", {}, 32, False),
    "efficientnet_v2": ("efficientnet_v2_s", {}, 32, False),
    "googlenet": ("googlenet", _PRETRAINED_INCEPTION, 32, False),
    "inception": ("inception_v3", _PRETRAINED_INCEPTION, 75, False),
    "maxvit": ("maxvit_t", {}, 224, True),
    "mnasnet": ("mnasnet0_5", {}, 32, False),
    "mobilenet_v2": ("mobilenet_v2", {}, 32, False),
    "mobilenet_v3": ("mobilenet_v3_small", {}, 32, False),
    "regnet_x": ("regnet_x_400mf", {}, 32, False),
    "regnet_y": ("regnet_y_400mf", {}, 32, False),
    "resnet": ("resnet18", {}, 32, False),
    "resnext": ("resnext50_32x4d", {}, 32, False),
    "shufflenet_v2": ("shufflenet_v2_x0_5", {}, 32, False),
    "squeezenet": ("squeezenet1_1", {}, 48, False),
    "swin": ("swin_t", {}, 64, True),
    "swin_v2": ("swin_v2_t", {}, 64, True),
    "vgg": ("vgg11_bn", {}, 32, False),
    "vit": ("vit_b_32", {"image_size": 64}, 64, True),
    "wide_resnet": ("wide_resnet50_2", {}, 32, False),
}


def build(family: str) -> nn.Module:
    name, options, _, _ = TORCHVISION[family]
    return models.get_model(name, weights=None, **options)


TIMM = {
    "resnet10t": 32,
    "efficientnet_b0": 32,
    "tf_efficientnet_b0": 33,  # TensorFlow "same" padding (Conv2dSame), odd size on purpose
    "mobilenetv3_small_050": 32,
    "convnext_atto": 32,
    "regnety_002": 32,
    "ghostnet_050": 32,
    "rexnet_100": 32,
    "repvgg_a0": 32,
    "cspdarknet53": 64,
    "vit_tiny_patch16_224": 32,
}


def _randomise_zero_heads(model: nn.Module) -> None:
    # Some builders zero-initialise the classifier (ViT): the oracle would compare zeros.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear) and not module.weight.any():
                module.weight.normal_(std=0.02)


def test_every_torchvision_family_is_listed():
    # A family is a builder module (torchvision.models.resnet holds resnet*, resnext*, wide_resnet*).
    every = {models.get_model_builder(n).__module__ for n in models.list_models(module=models)}
    ours = {models.get_model_builder(name).__module__ for name, _, _, _ in TORCHVISION.values()}
    assert every == ours, every ^ ours


@pytest.mark.parametrize("family", list(TORCHVISION))
def test_torchvision_family_matches_the_oracle(family):
    _, _, size, general = TORCHVISION[family]
    torch.manual_seed(0)
    model = build(family).double().eval()
    _randomise_zero_heads(model)
    x = torch.randn(1, 3, size, size, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.func: some attention backwards lack a vmap rule
        dn = DeconvNet(model)
        ours = dn.reconstruct_classes(x, [0, 7])
    assert_exact(ours, classes_reference(model, x, [0, 7]))
    if not general:
        assert dn.general_layers == []
        DeconvNet(model, strict=True)  # every layer reversed by hand
    else:
        assert dn.general_layers
        with pytest.raises(UnsupportedLayerError, match="drop strict=True"):
            DeconvNet(model, strict=True)


@pytest.mark.parametrize(
    ("family", "layer", "rule", "rectifiers"),
    [
        ("mobilenet_v2", "features.5.conv.1", "guided", "all"),
        ("efficientnet", "features.3.0.block.2", "deconvnet", "all"),  # a squeeze-excitation block
        ("convnext", "features.3.0.block.3", "gradient", "all"),  # channels-last LayerNorm
        ("mobilenet_v3", "features.4.block.0", "guided", "relu"),  # Hardswish, gradient only
        ("shufflenet_v2", "stage2.1.branch2.4", "deconvnet", "relu"),
    ],
)
def test_inner_units_of_modern_families_match_the_oracle(family, layer, rule, rectifiers):
    size = TORCHVISION[family][2]
    torch.manual_seed(1)
    model = build(family).double().eval()
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    dn = DeconvNet(model, rule=rule, rectifiers=rectifiers)
    module = model.get_submodule(layer)
    channels = [0, 3]
    for mode in ("max", "map"):
        ours = dn.reconstruct(x, layer, channels, mode=mode)
        reference = channels_reference(model, x, module, channels, mode, "activation", rule=rule, rectifiers=rectifiers)
        assert_exact(ours, reference)


@pytest.mark.parametrize("name", list(TIMM))
def test_timm_family_matches_the_oracle(name):
    timm = pytest.importorskip("timm")
    size = TIMM[name]
    torch.manual_seed(0)
    options = {"img_size": size} if name.startswith("vit_") else {}
    model = timm.create_model(name, pretrained=False, **options).double().eval()
    _randomise_zero_heads(model)
    x = torch.randn(1, 3, size, size, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dn = DeconvNet(model)
        ours = dn.reconstruct_classes(x, [0, 7])
    assert_exact(ours, classes_reference(model, x, [0, 7]))
    if not name.startswith("vit_"):
        assert dn.general_layers == []  # timm CNNs: every layer reversed by hand, Conv2dSame included
    else:
        assert all(layer.endswith(".attn") for layer in dn.general_layers)


def _captum(method, model, x, classes):
    n, k = x.shape[0], len(classes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = method(model).attribute(x.repeat_interleave(k, dim=0), target=classes * n)
    return out.view(n, k, *x.shape[1:])


@pytest.mark.parametrize("family", ["mobilenet_v2", "efficientnet"])
def test_captum_parity_with_rectifiers_relu(family):
    # Captum hooks nn.ReLU modules only, passing every other activation its plain gradient:
    # rectifiers="relu" computes exactly that.
    torch.manual_seed(2)
    model = build(family).eval()
    x = torch.randn(2, 3, 64, 64)
    classes = [1, 500]
    for rule, method in (("deconvnet", Deconvolution), ("guided", GuidedBackprop)):
        ours = DeconvNet(model, rule=rule, rectifiers="relu").reconstruct_classes(x, classes)
        assert_exact(ours, _captum(method, model, x, classes), rtol=1e-5)
    full = DeconvNet(model, rectifiers="all").reconstruct_classes(x, classes)
    assert (full - ours).abs().max() > 1e-3 * ours.abs().max()  # the two settings differ here


def test_modern_models_are_left_untouched():
    model = build("efficientnet").eval()  # SiLU(inplace=True), stochastic depth, gates
    x = torch.randn(1, 3, 32, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {name: getattr(m, "inplace", None) for name, m in model.named_modules()}
    with torch.no_grad():
        expected = model(x)
    dn = DeconvNet(model, rule="guided")
    trace = dn.trace(x)
    dn.reconstruct(trace, "features.4", [0, 1], mode="map")
    assert torch.equal(trace.output, expected)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert flags == {name: getattr(m, "inplace", None) for name, m in model.named_modules()}
    assert all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(x), expected)
    conv = dn.mirror[dn.mirror.index_of("features.0.0")]
    assert conv.weight is model.features[0][0].weight  # shared, not copied


def test_an_opaque_module_in_training_mode_is_refused():
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.drop = nn.Dropout(0.5)

        def forward(self, x):
            return self.drop(self.conv(x)) if x.sum() > 0 else self.conv(x)

    model = nn.Sequential(Branchy(), nn.ReLU()).eval()
    dn = DeconvNet(model)
    assert dn.general_layers == ["0"]
    model[0].drop.train()
    with pytest.raises(deconvnet.TrainingModeError, match=r"0\.drop \(Dropout\) is in training mode"):
        dn.trace(torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize("family", ["resnet", "densenet", "vit", "swin"])
def test_repeated_calls_through_the_lean_trace_equal_the_full_trace(family):
    torch.manual_seed(0)
    model = build(family).eval()
    size = TORCHVISION[family][2]
    x = torch.randn(2, 3, size, size)
    for rule, rectifiers in [("deconvnet", "all"), ("guided", "relu")]:
        dn = DeconvNet(model, rule=rule, rectifiers=rectifiers)
        full = dn.reconstruct_classes(dn.trace(x), [1, 5])
        for _ in range(3):  # the first interpreted, then the generated lean forward
            assert torch.equal(dn.reconstruct_classes(x, [1, 5]), full)


class _InPlaceCases(nn.Module):
    """Activations the lean forward may run in place, and three it must not."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.norm, self.clamp = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU6()
        self.conv2, self.smooth = nn.Conv2d(4, 4, 3, padding=1), nn.SiLU()
        self.conv3, self.conv4 = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)
        self.head = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.relu(x)  # the caller's image
        y = self.clamp(self.norm(self.conv(x)))  # a new tensor read by nothing else: in place
        z = self.smooth(self.conv2(y))  # in place where its mirror reads nothing
        z = self.conv3(z)
        z = torch.nn.functional.leaky_relu(z, 0.1) + z  # its input is read again
        z = torch.nn.functional.relu6(self.conv4(z))  # a function: in place
        z = (z + 1).relu()  # a method on a sum: in place
        return self.head(torch.nn.functional.relu(torch.flatten(z, 1)))  # a view of z


@pytest.mark.parametrize("rule", ["deconvnet", "guided", "gradient"])
@pytest.mark.parametrize("rectifiers", ["all", "relu"])
def test_the_lean_forward_runs_an_activation_in_place_only_where_nothing_else_reads_its_input(rule, rectifiers):
    # A ReLU6 that writes a new tensor cost MobileNetV2's forward a fifth more than the model's
    # own in-place one. The lean forward runs an activation in place when its mirror reads at
    # most its output (ReLU6's mask 0 < x < 6 is 0 < y < 6) and its input is a conv's, a norm's
    # or a sum's new tensor that nothing else reads or keeps; never the caller's image, a value
    # read twice, or a view. SiLU's gradient needs its input, so it runs in place only when the
    # deconvnet rule covers it (rectifiers="all").
    torch.manual_seed(0)
    model = _InPlaceCases().eval()
    with torch.no_grad():
        model.norm.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 8, 8)
    image = x.clone()
    dn = DeconvNet(model, rule=rule, rectifiers=rectifiers)
    full = dn.reconstruct_classes(dn.trace(x), [0, 3])
    for _ in range(3):  # the first interpreted, then the generated lean forward
        assert torch.equal(dn.reconstruct_classes(x, [0, 3]), full)
    assert torch.equal(x, image)
    assert model.clamp.inplace is False  # the model's own module untouched
    (program,) = [p for key, p in dn.network.programs.items() if isinstance(key, tuple) and key[0] == "lean"]
    modules = [type(m) for m in program.module.modules() if getattr(m, "inplace", False) is True]
    calls = [n.target for n in program.module.graph.nodes if n.kwargs.get("inplace") is True or n.target == "relu_"]
    assert modules == ([nn.ReLU6, nn.SiLU] if (rule, rectifiers) == ("deconvnet", "all") else [nn.ReLU6])
    assert calls == [torch.nn.functional.relu6, "relu_"]


class _NormReadTwice(nn.Module):
    """conv -> bn -> ReLU, the bn's output also added after: not overwritten; a second bn -> ReLU is."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.norm, self.conv2, self.norm2 = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.conv(x))
        y = torch.nn.functional.relu(y) + y
        y = torch.nn.functional.relu(self.norm2(self.conv2(y)))
        return self.head(y.mean(dim=(2, 3)))


@pytest.mark.parametrize("family", ["resnet", "mobilenet_v2", "densenet", "read twice"])
def test_a_full_trace_overwrites_batch_norm_outputs_in_place_and_gives_them_back_when_read(family):
    # A Trace keeps every layer's output: a ReLU (ReLU6) after a batch-norm that wrote a new
    # tensor cost the forward a fifth more than the model's own in-place one. The generated trace
    # runs it in place over the batch-norm's output (its mirror reads the output alone) and
    # computes that output again from the batch-norm's input when it is read: every activation,
    # record and reconstruction equals the interpreted first trace's, which runs nothing in place.
    torch.manual_seed(0)
    model = (_NormReadTwice() if family == "read twice" else build(family)).eval()
    with torch.no_grad():  # batch-norm statistics that are not the identity
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    flags = {name: m.inplace for name, m in model.named_modules() if hasattr(m, "inplace")}
    dn = DeconvNet(model)
    x = torch.randn(2, 3, 32, 32)
    first = dn.trace(x)  # interpreted
    generated = [dn.trace(x), dn.trace(x)]
    (program,) = [p for key, p in dn.network.programs.items() if key is None]
    # ResNet-18: the stem's and each block's first; MobileNetV2: 35; one of the two here
    assert len(program.overwritten) == 1 if family == "read twice" else len(program.overwritten) >= 9
    for trace in generated:
        for rule in ("deconvnet", "guided", "gradient"):  # before any overwritten output is read
            assert torch.equal(dn.reconstruct_classes(trace, [1, 5], rule=rule),
                               dn.reconstruct_classes(first, [1, 5], rule=rule))
        for name, record in first.records.items():
            again = trace.records[name]
            assert again.input_shape == record.input_shape and again.output_shape == record.output_shape
            assert (again.switches is None) == (record.switches is None)
        assert list(trace.activations) == list(first.activations)
        for name, value in first.activations.items():
            assert torch.equal(trace.activations[name], value), name
    assert {name: m.inplace for name, m in model.named_modules() if hasattr(m, "inplace")} == flags


def test_the_lean_forward_frees_each_value_after_its_last_use():
    # A lean program returns every step's shape; read at the end, the shapes kept every
    # activation alive to the end (one class of 16 images on ResNet-50 peaked 2.2 GiB above the
    # start, as the full trace does; 0.37 GiB once freed).
    # Each shape is read right where its value is made, and the generated code drops the value
    # after its last real use.
    torch.manual_seed(0)
    model = build("resnet").eval()
    dn = DeconvNet(model)
    x = torch.randn(1, 3, 32, 32)
    for _ in range(2):  # the second call generates the program
        dn.reconstruct_classes(x, [0])
    (program,) = [p for key, p in dn.network.programs.items() if isinstance(key, tuple) and key[0] == "lean"]
    shapes = [n for n in program.module.graph.nodes if n.op == "call_function" and n.args[1:] == ("shape",)]
    assert len(shapes) > 50
    assert all(node.prev is node.args[0] or node.args[0].op == "placeholder" for node in shapes)
    code = program.module.code
    assert code.count(" = None") > 40  # values released along the way, not all at the return
