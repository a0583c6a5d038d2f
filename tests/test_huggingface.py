"""Hugging Face ``transformers`` image classifiers, built offline from small configs with random
weights in float64: DeconvNet(model) reads them as they are (pixel_values in, logits out) and is
exact against the oracle; a save_pretrained folder loads through --model."""

from __future__ import annotations

import json

import pytest
import torch
from reference import assert_exact, channels_reference, classes_reference
from torch import nn

transformers = pytest.importorskip("transformers", reason="needs the huggingface extra (pip install -e '.[test]')")

from deconvnet import DeconvNet, InputError, TracingError  # noqa: E402
from deconvnet.cli import main  # noqa: E402
from deconvnet.loading import load_model  # noqa: E402
from deconvnet.shapes import render  # noqa: E402

T = transformers
VISION = dict(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_labels=5)
FAMILIES = {  # name -> (model class, config); general layers: see the README's table
    "resnet": (T.ResNetForImageClassification, lambda: T.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16],
                                                                      depths=[1, 1], num_labels=5)),
    "convnext": (T.ConvNextForImageClassification, lambda: T.ConvNextConfig(num_stages=2, hidden_sizes=[8, 16],
                                                                            depths=[1, 1], num_labels=5)),
    "convnextv2": (T.ConvNextV2ForImageClassification, lambda: T.ConvNextV2Config(num_stages=2, hidden_sizes=[8, 16],
                                                                                  depths=[1, 1], num_labels=5)),
    "mobilenet_v1": (T.MobileNetV1ForImageClassification, lambda: T.MobileNetV1Config(
        depth_multiplier=0.25, image_size=32, num_labels=5)),
    "mobilenet_v2": (T.MobileNetV2ForImageClassification, lambda: T.MobileNetV2Config(
        depth_multiplier=0.25, image_size=32, num_labels=5)),
    "efficientnet": (T.EfficientNetForImageClassification, lambda: T.EfficientNetConfig(
        width_coefficient=0.25, depth_coefficient=0.25, hidden_dim=320, image_size=32, num_labels=5)),
    "regnet": (T.RegNetForImageClassification, lambda: T.RegNetConfig(embedding_size=8, hidden_sizes=[8, 16],
                                                                      depths=[1, 1], groups_width=8, num_labels=5)),
    "beit": (T.BeitForImageClassification, lambda: T.BeitConfig(intermediate_size=16, **VISION)),
    "dinov2": (T.Dinov2ForImageClassification, lambda: T.Dinov2Config(mlp_ratio=1, **VISION)),
    "vit": (T.ViTForImageClassification, lambda: T.ViTConfig(intermediate_size=16, **VISION)),
    "deit": (T.DeiTForImageClassificationWithTeacher, lambda: T.DeiTConfig(intermediate_size=16, **VISION)),
    "swin": (T.SwinForImageClassification, lambda: T.SwinConfig(image_size=32, patch_size=4, embed_dim=8, depths=[1, 1],
                                                                num_heads=[1, 2], window_size=4, num_labels=5)),
}


class Logits(nn.Module):
    """For the oracle only: the model called with pixel values, its logits returned."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


def build(name: str) -> nn.Module:
    cls, config = FAMILIES[name]
    torch.manual_seed(0)
    return cls(config()).double().eval()


@pytest.mark.parametrize("name", list(FAMILIES))
def test_image_classifiers_are_exact(name):
    model = build(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dn = DeconvNet(model)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(dn.trace(x).output, model(pixel_values=x).logits, rtol=1e-12, atol=1e-12)
    oracle = Logits(model)
    for rule in ("deconvnet", "guided", "gradient"):
        assert_exact(dn.reconstruct_classes(x, [0, 3], rule=rule), classes_reference(oracle, x, [0, 3], rule))
    modules = dict(model.named_modules())
    # a layer of the model's own name half-way down: maps [N, C, H, W], or tokens [N, L, D] in BEiT and DINOv2
    mapped = [n for n in dn.layers if n in modules and n in dn.network.modules and dn.activation(x, n).dim() >= 3]
    layer = mapped[len(mapped) // 2]
    channels = list(range(min(3, dn.activation(x, layer).shape[1])))
    assert_exact(dn.reconstruct(x, layer, channels), channels_reference(oracle, x, modules[layer], channels, "max",
                                                                         "activation"))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_layers_are_named_as_the_model_names_them():
    dn = DeconvNet(build("resnet"))
    assert "resnet.encoder.stages.1" in dn.layers and not any(n.startswith("model.") for n in dn.layers)
    assert dn.layer_name(dn.model.resnet.encoder.stages[1]) == dn.layer_name("resnet.encoder.stages.1")


def test_a_model_without_logits_is_refused_in_one_line():
    torch.manual_seed(0)
    model = T.ResNetModel(T.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])).eval()
    with pytest.raises(TracingError, match="returns no logits"):
        DeconvNet(model)


def test_a_branch_on_the_inputs_dtype_is_followed_not_kept_whole():
    """ViTModel.forward casts pixel_values when their dtype differs from the weights' (a branch
    torch.fx cannot follow): deconvnet takes inputs of the model's dtype only, so it follows
    the branch and reads the encoder layer by layer instead of as one general layer."""
    model = build("vit")
    dn = DeconvNet(model)
    assert "vit" not in dn.general_layers and "vit.layers.0.layernorm_before" in dn.layers
    with pytest.raises(InputError, match="x is torch.float32 but the model's parameters are torch.float64"):
        dn.trace(torch.randn(1, 3, 32, 32))


class _Branchy(nn.Module):
    """Control flow on a value (torch.fx cannot trace it: kept whole), returning a ModelOutput."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> transformers.modeling_outputs.BaseModelOutput:
        y = self.conv(x)
        if y.sum() > 0:
            y = y.relu()
        return transformers.modeling_outputs.BaseModelOutput(last_hidden_state=y)


class _ReadsAttribute(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = _Branchy()
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).last_hidden_state.mean((2, 3)))


def test_a_general_layer_passes_on_an_attribute_of_its_model_output():
    torch.manual_seed(0)
    model = _ReadsAttribute().double().eval()
    dn = DeconvNet(model)
    assert dn.general_layers == ["body.last_hidden_state"]
    assert "VJP(_Branchy.last_hidden_state)" in repr(dn.mirror)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    for rule in ("deconvnet", "guided", "gradient"):
        assert_exact(dn.reconstruct_classes(x, [0, 2], rule=rule), classes_reference(model, x, [0, 2], rule))


def test_a_save_pretrained_folder_loads_offline_with_its_preprocessing_and_labels(tmp_path):
    torch.manual_seed(0)
    cls, config = FAMILIES["convnext"]
    config = config()
    config.id2label = {i: name for i, name in enumerate(["circle", "square", "triangle", "cross", "ring"])}
    config.label2id = {v: k for k, v in config.id2label.items()}
    cls(config).eval().save_pretrained(tmp_path / "model")
    (tmp_path / "model" / "preprocessor_config.json").write_text(json.dumps(
        {"size": {"shortest_edge": 48}, "crop_pct": 0.75, "image_mean": [0.5, 0.5, 0.5],
         "image_std": [0.25, 0.25, 0.25], "do_normalize": True, "do_resize": True}))
    loaded = load_model(str(tmp_path / "model"))
    assert loaded.categories == ["circle", "square", "triangle", "cross", "ring"]
    assert loaded.preprocessing.mean == (0.5, 0.5, 0.5)
    picture = render(3, 0, size=100).image
    x = loaded.preprocessing.transform(picture)
    assert x.shape == (3, 48, 48)  # short side to 48 / 0.75 = 64, centre crop 48
    image = tmp_path / "shape.png"
    picture.save(image)
    assert main(["classes", str(image), "--model", str(tmp_path / "model"), "--out", str(tmp_path / "out"),
                 "--device", "cpu", "--top-k", "2"]) == 0
    assert (tmp_path / "out" / "classes.png").is_file()


def test_a_folder_that_is_not_a_model_says_so(tmp_path, capsys):
    assert main(["classes", "x.png", "--model", str(tmp_path), "--device", "cpu"]) == 1
    assert "without config.json" in capsys.readouterr().err


def test_a_broken_preprocessor_config_says_so(tmp_path):
    torch.manual_seed(0)
    cls, config = FAMILIES["resnet"]
    cls(config()).eval().save_pretrained(tmp_path / "model")
    (tmp_path / "model" / "preprocessor_config.json").write_text("{not json")
    with pytest.raises(InputError, match="cannot read .*preprocessor_config.json"):
        load_model(str(tmp_path / "model"))
