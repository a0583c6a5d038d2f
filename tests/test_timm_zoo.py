"""The rest of the timm zoo, against the autograd oracle in float64 with random weights: timm's
own tiny test models and the families that need more than layer-by-layer reading (attention
biases computed from parameters, window partitions that fold space into the batch, modules
that cache attention biases, blur pools convolving with a buffer). And the same mechanisms on
small models written here, where each is seen alone; and two inputs the model cannot take.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from reference import assert_exact, channels_reference, classes_reference
from torch import nn
from torchvision import models

from deconvnet import DeconvNet, InputError, UnsupportedLayerError
from deconvnet.mirror import FetchedConvTranspose2d

timm = pytest.importorskip("timm")

# model -> input size (the test models' own; the others at the size their attention was built for)
ZOO = {name: 160 for name in timm.list_models("test_*")} | {
    "halonet26t": 256,
    "botnet26t_256": 256,
    "efficientformer_l1": 224,
    "levit_128s": 224,
    "resnetblur18": 64,
}
RULES = ("deconvnet", "guided", "gradient")


def create(name: str, classes: int = 5) -> nn.Module:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # timm's notes on deprecated names
        return timm.create_model(name, pretrained=False, num_classes=classes).double().eval()


def test_the_zoo_lists_every_timm_test_model():
    assert {n for n in ZOO if n.startswith("test_")} == set(timm.list_models("test_*"))


@pytest.mark.parametrize("name", list(ZOO))
def test_classes_are_exact(name):
    model = create(name)
    x = torch.randn(1, 3, ZOO[name], ZOO[name], dtype=torch.float64)
    dn = DeconvNet(model)
    for rule in RULES:
        assert_exact(dn.reconstruct_classes(x, [0, 3], rule=rule), classes_reference(model, x, [0, 3], rule))


def _state(model: nn.Module) -> list[tuple[str, str, object]]:
    """Everything a forward could leave behind: values, flags, hooks, attributes, caches."""
    seen: list[tuple[str, str, object]] = []
    for name, module in model.named_modules():
        for key, value in sorted(module.__dict__.items()):
            if isinstance(value, dict):  # caches, hooks, parameters, buffers: by identity and value
                value = {k: (id(v), v.clone() if isinstance(v, torch.Tensor) else v) for k, v in value.items()}
            elif isinstance(value, torch.Tensor):
                value = (id(value), value.clone())
            seen.append((name, key, value))
        for key, parameter in module.named_parameters(recurse=False):
            seen.append((name, key + ".requires_grad", parameter.requires_grad))
    return seen


def _same(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and bool(torch.equal(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(u, v) for u, v in zip(a, b, strict=True))
    return a == b


@pytest.mark.parametrize("name", ["levit_128s", "efficientformer_l1", "test_vit_relpos"])
@pytest.mark.parametrize("warm", [False, True], ids=["empty cache", "filled cache"])
def test_the_model_is_left_as_it_was_caches_included(name, warm):
    model = create(name)
    x = torch.randn(1, 3, ZOO[name], ZOO[name], dtype=torch.float64)
    if warm:
        with torch.no_grad():
            model(x)  # the user's own forward fills the caches first
    before = _state(model)
    dn = DeconvNet(model)
    trace = dn.trace(x)
    for rule in RULES:
        dn.reconstruct_classes(trace, [1], rule=rule)
    layer = dn.layers[len(dn.layers) // 2]
    dn.reconstruct(trace, layer, [0])
    after = _state(model)
    assert [(n, k) for n, k, _ in before] == [(n, k) for n, k, _ in after]
    changed = [f"{n}.{k}" for (n, k, a), (_, _, b) in zip(before, after, strict=True) if not _same(a, b)]
    assert not changed


# --- each mechanism alone, on models written here -------------------------------------------


class Windows(nn.Module):
    """Attention within 2x2 windows: [N, C, H, W] -> [N * windows, 4, C] -> back (Swin's, MaxViT's
    partition). Its sizes come from the input, so only running it shows the batch moves."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.qkv = nn.Linear(channels, 3 * channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        windows = x.view(n, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 3, 5, 1).reshape(-1, 4, c)
        q, k, v = self.qkv(windows).chunk(3, dim=-1)
        out = F.scaled_dot_product_attention(q, k, v)
        return out.reshape(n, h // 2, w // 2, 2, 2, c).permute(0, 5, 1, 3, 2, 4).reshape(n, c, h, w)


class WindowNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.windows = Windows(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.windows(self.pool(torch.relu(self.conv(x))))
        return self.head(torch.relu(x).mean((2, 3)))


def test_a_module_that_folds_the_batch_inside_is_reversed_whole():
    torch.manual_seed(0)
    model = WindowNet().double().eval()
    dn = DeconvNet(model)
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    for rule in RULES:
        assert_exact(dn.reconstruct_classes(x, [0, 3], rule=rule), classes_reference(model, x, [0, 3], rule))
    assert dn.general_layers == ["windows"]  # known after the first trace: the sizes come from x
    assert "conv" in dn.layers and "reshape" not in dn.layers
    reference = channels_reference(model, x, model.windows, [1, 5], "max", "activation")
    assert_exact(dn.reconstruct(x, "windows", [1, 5]), reference)


class FoldsAtTheTop(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        y = self.conv(x).reshape(-1, 4, 2, w).sum(2)  # folds pairs of rows into the batch
        return y.reshape(n, -1)


def test_folding_the_batch_outside_any_module_is_refused_naming_the_call():
    model = FoldsAtTheTop().eval()
    dn = DeconvNet(model)
    with pytest.raises(UnsupportedLayerError, match=r"reshape does not keep the batch dimension \(input \(1, 4, 4, 4\), "
                                                    r"output \(2, 4, 2, 4\)\)"):
        dn.trace(torch.randn(1, 3, 4, 4))


class Blur(nn.Module):
    """A fixed blur filter, a buffer convolved with F.conv2d (timm's BlurPool2d)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        taps = torch.tensor([1.0, 2.0, 1.0])
        self.channels = channels
        self.register_buffer("filt", (taps[:, None] * taps[None, :] / 16).expand(channels, 1, 3, 3).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.filt, stride=2, padding=1, groups=self.channels)


def test_a_convolution_by_a_buffer_is_mirrored_as_a_convolution_and_follows_to():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), Blur(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).eval()
    dn = DeconvNet(model)
    assert not dn.general_layers
    assert isinstance(dn.mirror[dn.mirror.index_of("conv2d")], FetchedConvTranspose2d)
    model.double()  # replaces the buffer: the mirror reads the new one
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    for rule in RULES:
        assert_exact(dn.reconstruct_classes(x, [0, 2], rule=rule), classes_reference(model, x, [0, 2], rule))


class AttentionBias(nn.Module):
    """Attention whose bias is computed from a parameter (timm's relative-position ViTs); the
    branch on a value keeps torch.fx out, so it is one general layer."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(6, 18)
        self.table = nn.Parameter(torch.randn(4, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.abs().sum() < 0:  # never; torch.fx cannot know
            return x
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        bias = self.table.softmax(-1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


class BiasedTokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.attention = AttentionBias()
        self.head = nn.Linear(24, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = torch.relu(self.conv(x)).flatten(2).transpose(1, 2)  # [N, 4, 6]
        return self.head(self.attention(tokens).flatten(1))


def test_a_general_layer_differentiates_its_signal_only():
    # scaled_dot_product_attention refuses a mask that requires grad: the table is a constant
    torch.manual_seed(0)
    model = BiasedTokens().double().eval()
    dn = DeconvNet(model)
    assert dn.general_layers == ["attention"]
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64)
    for rule in RULES:
        assert_exact(dn.reconstruct_classes(x, [0, 2], rule=rule), classes_reference(model, x, [0, 2], rule))
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


# --- inputs the model cannot take -------------------------------------------------------------


@pytest.fixture(scope="module")
def vgg11() -> DeconvNet:
    return DeconvNet(models.vgg11(weights=None).eval())


def test_an_input_too_small_names_the_layer_and_the_smallest_size(vgg11):
    dn = vgg11
    with pytest.raises(InputError, match=r"x of 8x8 pixels is too small for this model: at features\.15 \(MaxPool2d\) "
                                         r"the input had become 512x1x1.*the smallest square input VGG runs is 32x32"):
        dn.trace(torch.randn(1, 3, 8, 8))
    with pytest.raises(InputError, match=r"at features\.20 \(MaxPool2d\)"):
        dn.trace(torch.randn(1, 3, 31, 31))
    assert dn.trace(torch.randn(1, 3, 32, 32)).output.shape == (1, 1000)  # the size it names runs
    with pytest.raises(InputError, match="too small"):  # the generated forward (second trace) says the same
        dn.activations(torch.randn(1, 3, 16, 16), ["features.0"])
        dn.activations(torch.randn(1, 3, 16, 16), ["features.0"])


@pytest.mark.parametrize(("value", "words"), [(float("nan"), "1 NaN and 0 infinite"), (float("inf"), "0 NaN and 1 infinite")])
def test_a_non_finite_input_is_refused(vgg11, value, words):
    dn = vgg11
    x = torch.randn(1, 3, 32, 32)
    x[0, 1, 5, 7] = value
    with pytest.raises(InputError, match=f"x holds {words} values \\(of 3072\\).*torch.nan_to_num"):
        dn.reconstruct_classes(x, [0])
