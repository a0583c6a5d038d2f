"""A user's own model: fine-tuned checkpoints in every usual form, class names from every source,
preprocessing that matches the model, and images decoded as viewers show them. Everything is
built offline in a temporary folder."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from safetensors.torch import save_file

from deconvnet.checkpoints import CheckpointMismatchError, read_checkpoint
from deconvnet.cli import main
from deconvnet.decoding import decode, read_image
from deconvnet.errors import InputError
from deconvnet.loading import load_checkpoint, load_image, load_labels, load_model
from deconvnet.preprocessing import Preprocessing

NAMES = ["cat", "dog", "bird", "fish", "horse"]


@pytest.fixture(scope="module")
def tuned():
    """A torchvision resnet18 with a 5-class head, as after fine-tuning."""
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=5).eval()


def _save_forms(model: torch.nn.Module, folder: Path) -> dict[str, Path]:
    sd = model.state_dict()
    forms = {
        "plain.pt": sd,
        "state_dict.pth": {"state_dict": sd, "epoch": 7},
        "model.pt": {"model": sd, "epoch": 3, "optimizer": {"lr": torch.tensor(0.1)}},
        "model_state_dict.tar": {"model_state_dict": sd, "epoch": 2},
        "ddp.pt": {f"module.{k}": v for k, v in sd.items()},
        "lightning.ckpt": {"state_dict": {**{f"model.{k}": v for k, v in sd.items()}, "loss.weight": torch.ones(5)},
                           "epoch": 1, "global_step": 10},
        "compiled.pt": {f"_orig_mod.{k}": v for k, v in sd.items()},
        "lightning_compiled.ckpt": {"state_dict": {f"model._orig_mod.{k}": v for k, v in sd.items()}},
    }
    paths = {}
    for name, value in forms.items():
        torch.save(value, folder / name)
        paths[name] = folder / name
    save_file({k: v.contiguous() for k, v in sd.items()}, folder / "weights.safetensors")
    paths["weights.safetensors"] = folder / "weights.safetensors"
    return paths


@pytest.fixture(scope="module")
def forms(tuned, tmp_path_factory):
    return _save_forms(tuned, tmp_path_factory.mktemp("checkpoints"))


@pytest.mark.parametrize("form", ["plain.pt", "state_dict.pth", "model.pt", "model_state_dict.tar", "ddp.pt",
                                  "lightning.ckpt", "compiled.pt", "lightning_compiled.ckpt", "weights.safetensors"])
def test_every_checkpoint_form_loads_with_the_head_size_read_from_it(tuned, forms, form):
    loaded = load_model("resnet18", checkpoint=forms[form])
    assert loaded.model.fc.out_features == 5 and not loaded.model.training
    for key, value in tuned.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    assert loaded.source == "torchvision resnet18 (5 classes)"
    assert loaded.categories is None and loaded.label(3) == "class 3"  # a fine-tuned head: no ImageNet names
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), tuned(x))


def test_what_was_taken_off_and_left_out_is_reported(forms):
    assert "keys under 'model.'" in load_model("resnet18", checkpoint=forms["lightning.ckpt"]).checkpoint
    assert "keys under 'model._orig_mod.'" in load_model("resnet18", checkpoint=forms["lightning_compiled.ckpt"]).checkpoint
    saved = read_checkpoint(forms["model.pt"])
    assert saved.where == "checkpoint['model']" and set(saved.extra) == {"epoch", "optimizer"}


def test_num_classes_checks_the_checkpoint_and_is_needed_with_it(forms):
    assert load_model("resnet18", checkpoint=forms["plain.pt"], num_classes=5).model.fc.out_features == 5
    with pytest.raises(InputError, match="head has 5 classes, but num_classes is 7"):
        load_model("resnet18", checkpoint=forms["plain.pt"], num_classes=7)
    with pytest.raises(InputError, match="untrained head"):
        load_model("shapes", num_classes=3)
    assert load_model("resnet18", num_classes=3).model.fc.out_features == 3  # random weights asked for


def test_a_checkpoint_of_another_architecture_gets_a_short_error(forms, capsys):
    with pytest.raises(CheckpointMismatchError) as caught:
        load_model("resnet34", checkpoint=forms["plain.pt"])
    message = str(caught.value)
    assert len(message.splitlines()) <= 5 and len(message) < 800
    assert "the model has 80 it lacks" in message and "layer1.2.conv1.weight [64, 64, 3, 3]" in message
    assert "try: the architecture it was trained as" in message
    assert main(["classes", "x.png", "--model", "vgg11", "--checkpoint", str(forms["plain.pt"]), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("deconvnet: error: checkpoint") and 3 <= len(err.splitlines()) <= 6
    assert "have another shape" in err and "features.0.weight [64, 3, 3, 3]" in err


def test_checkpoints_that_hold_no_weights_or_code_are_refused(tmp_path, tuned):
    torch.save(tuned, tmp_path / "whole.pt")  # a pickled module: never unpickled
    with pytest.raises(InputError, match=r"pickled Python objects .* Save model.state_dict\(\) instead"):
        read_checkpoint(tmp_path / "whole.pt")
    torch.save({"epoch": 3, "notes": "x"}, tmp_path / "empty.pt")
    with pytest.raises(InputError, match="holds no state dict: its keys are 'epoch', 'notes'"):
        read_checkpoint(tmp_path / "empty.pt")
    (tmp_path / "broken.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00nope")
    with pytest.raises(InputError, match="cannot read .*broken.safetensors as safetensors"):
        read_checkpoint(tmp_path / "broken.safetensors")
    with pytest.raises(InputError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.pt")


def test_load_checkpoint_fits_a_model_the_user_built(tuned, forms):
    model = torchvision.models.resnet18(num_classes=5)
    saved = load_checkpoint(model, forms["ddp.pt"])
    assert torch.equal(model.fc.weight, tuned.fc.weight) and saved.where == "a plain state dict"


# --- class names ------------------------------------------------------------------------------


def test_labels_from_a_text_file_a_json_list_and_a_json_map(tmp_path, forms):
    (tmp_path / "labels.txt").write_text("\n".join(NAMES) + "\n\n")
    (tmp_path / "labels.json").write_text(json.dumps(NAMES))
    (tmp_path / "map.json").write_text(json.dumps({"0": "cat", "4": "horse"}))
    for name in ("labels.txt", "labels.json"):
        loaded = load_model("resnet18", checkpoint=forms["plain.pt"], labels=tmp_path / name)
        assert loaded.categories == NAMES and loaded.labels_from == name
    loaded = load_model("resnet18", checkpoint=forms["plain.pt"], labels=tmp_path / "map.json")
    assert loaded.categories == ["cat", "class 1", "class 2", "class 3", "horse"]


def test_bad_labels_say_what_is_wrong(tmp_path, forms):
    cases = {"four.txt": ("a\nb\nc\nd\n", "has 4 names, but the model has 5 classes"),
             "gap.txt": ("a\n\nb\n", "empty line 2"),
             "far.json": ('{"9": "x"}', r"names class 9, but the model has 5 classes \(0..4\)"),
             "bad.json": ("[1, 2", "not valid JSON"),
             "keys.json": ('{"cat": "x"}', "not class indices")}
    for name, (text, match) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(InputError, match=match):
            load_model("resnet18", checkpoint=forms["plain.pt"], labels=tmp_path / name)
    with pytest.raises(InputError, match="labels file .*nope.txt does not exist"):
        load_labels(tmp_path / "nope.txt")


def test_labels_carried_by_the_checkpoint(tmp_path, tuned):
    sd = tuned.state_dict()
    torch.save({"state_dict": sd, "id2label": dict(enumerate(NAMES))}, tmp_path / "a.pt")
    torch.save({"model": sd, "classes": NAMES}, tmp_path / "b.pt")
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "c.safetensors",
              metadata={"id2label": json.dumps(dict(enumerate(NAMES)))})
    for name in ("a.pt", "b.pt", "c.safetensors"):
        loaded = load_model("resnet18", checkpoint=tmp_path / name)
        assert loaded.categories == NAMES and loaded.labels_from == f"the checkpoint {name}"
    # --labels wins over the checkpoint's
    assert load_model("resnet18", checkpoint=tmp_path / "a.pt", labels=list("abcde")).categories == list("abcde")


def test_transformers_default_label_names_count_as_none(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 8], depths=[1, 1], num_labels=3)
    transformers.ResNetForImageClassification(config).eval().save_pretrained(tmp_path / "m")
    loaded = load_model(str(tmp_path / "m"))
    assert loaded.categories is None  # LABEL_0, LABEL_1, ... are nobody's names
    config.id2label = {0: "ant", 1: "bee", 2: "wasp"}
    config.label2id = {v: k for k, v in config.id2label.items()}
    transformers.ResNetForImageClassification(config).eval().save_pretrained(tmp_path / "n")
    loaded = load_model(str(tmp_path / "n"))
    assert loaded.categories == ["ant", "bee", "wasp"] and loaded.labels_from == "the model's config"


def _fake_hub_cache(cache: Path, repo: str, files: dict[str, bytes] | Path) -> None:
    """A Hugging Face hub cache entry as huggingface_hub lays it out, without the internet."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    snapshot = folder / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("0" * 40)
    if isinstance(files, Path):
        for path in files.iterdir():
            (snapshot / path.name).write_bytes(path.read_bytes())
    else:
        for name, data in files.items():
            (snapshot / name).write_bytes(data)


def test_hub_ids_load_from_the_local_cache_only(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    import huggingface_hub.constants

    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 8], depths=[1, 1], num_labels=2,
                                       id2label={0: "ok", 1: "defect"}, label2id={"ok": 0, "defect": 1})
    transformers.ResNetForImageClassification(config).eval().save_pretrained(tmp_path / "saved")
    _fake_hub_cache(tmp_path / "hub", "acme/inspect", tmp_path / "saved")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    for spec in ("hf:acme/inspect", "acme/inspect"):
        loaded = load_model(spec)
        assert loaded.categories == ["ok", "defect"] and loaded.source == "Hugging Face acme/inspect"
    with pytest.raises(InputError, match="not a folder here, nor a Hugging Face model in the local cache"):
        load_model("acme/other")


# --- timm ---------------------------------------------------------------------------------------


def test_a_timm_model_with_a_fine_tuned_head_and_timms_preprocessing(tmp_path):
    timm = pytest.importorskip("timm")
    from timm.data import create_transform, resolve_data_config

    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=3).eval()
    torch.save({"state_dict": model.state_dict(), "classes": ["a", "b", "c"]}, tmp_path / "ft.pth")
    loaded = load_model("timm:resnet18", checkpoint=tmp_path / "ft.pth")
    assert loaded.model.fc.out_features == 3 and loaded.categories == ["a", "b", "c"]
    assert torch.equal(loaded.model.fc.weight, model.fc.weight)
    # the recipe gives what timm's own evaluation transform gives
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 260, 3), dtype=np.uint8))
    theirs = create_transform(**resolve_data_config({}, model=model))(picture)
    assert "bicubic" in str(loaded.preprocessing) and "235" in str(loaded.preprocessing)
    torch.testing.assert_close(loaded.preprocessing.transform(picture), theirs)
    with pytest.raises(InputError, match=r"timm has no model 'resnt18'; did you mean timm:resnet18"):
        load_model("timm:resnt18")
    with pytest.raises(InputError, match=r"timm has resnet18d: --model timm:resnet18d"):
        load_model("resnet18d")


def test_timm_pretrained_tags_load_from_the_local_cache_with_their_names(tmp_path, monkeypatch):
    timm = pytest.importorskip("timm")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(InputError, match=r"not in the local Hugging Face cache, and nothing is downloaded"):
        load_model("timm:resnet18.a1_in1k", weights="DEFAULT")
    torch.manual_seed(1)
    weights = timm.create_model("resnet18").state_dict()
    buffer = io.BytesIO()
    from safetensors.torch import save

    buffer.write(save({k: v.contiguous() for k, v in weights.items()}))
    _fake_hub_cache(tmp_path / "hub", "timm/resnet18.a1_in1k", {"model.safetensors": buffer.getvalue()})
    loaded = load_model("timm:resnet18.a1_in1k", weights="DEFAULT")
    assert torch.equal(loaded.model.fc.weight, weights["fc.weight"])
    assert loaded.categories[0] == "tench" and len(loaded.categories) == 1000
    assert loaded.labels_from == "the pretrained weights"


def test_the_torchvision_recipe_is_the_weights_own_transform(tuned, forms):
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    loaded = load_model("resnet18", checkpoint=forms["plain.pt"])
    picture = Image.fromarray(np.random.default_rng(1).integers(0, 256, (240, 310, 3), dtype=np.uint8))
    torch.testing.assert_close(loaded.preprocessing.transform(picture), weights.transforms()(picture))
    assert str(loaded.preprocessing).startswith("resize the shorter side to 256 (bilinear), centre-crop 224x224")


def test_preprocessing_can_be_overridden_piece_by_piece():
    base = Preprocessing.imagenet()
    smaller = base.overridden(size=[128])
    assert smaller.recipe.size == (128, 128) and smaller.recipe.resize == 146  # the 256/224 ratio kept
    assert base.overridden(size=[96, 128], resize=[100]).recipe.resize == 100
    normalised = base.overridden(mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    x = normalised.transform(Image.new("RGB", (50, 50), (255, 0, 128)))
    torch.testing.assert_close(x[:, 0, 0], torch.tensor([2.0, -2.0, (128 / 255 - 0.5) / 0.25]))
    squash = Preprocessing.shapes().overridden(size=[32])
    assert squash.transform(Image.new("RGB", (80, 50))).shape == (3, 32, 32)
    custom = Preprocessing(lambda image: torch.zeros(3, 4, 4), (0.0,) * 3, (1.0,) * 3)
    with pytest.raises(InputError, match="not a resize-crop-normalise recipe"):
        custom.overridden(size=[64])


@pytest.mark.parametrize(("name", "model"), [
    ("googlenet", lambda: torchvision.models.GoogLeNet(num_classes=4, aux_logits=False, transform_input=True,
                                                       init_weights=False)),
    ("inception_v3", lambda: torchvision.models.Inception3(num_classes=4, aux_logits=False, transform_input=True,
                                                           init_weights=False)),
])
def test_googlenet_and_inception_fine_tuned_from_torchvisions_weights_keep_their_input_transform(name, model, tmp_path):
    # torchvision's pretrained build drops the auxiliary heads and turns transform_input on; a flag
    # the checkpoint cannot carry, read from the missing auxiliary heads
    torch.manual_seed(0)
    tuned = model().eval()
    torch.save(tuned.state_dict(), tmp_path / "ft.pt")
    loaded = load_model(name, checkpoint=tmp_path / "ft.pt")
    assert loaded.model.transform_input and not loaded.model.aux_logits
    assert "transform_input=True" in loaded.source
    x = torch.randn(1, 3, 96 if name == "googlenet" else 299, 96 if name == "googlenet" else 299)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), tuned(x))


def test_a_factory_takes_the_checkpoints_head(tmp_path, monkeypatch):
    import sys
    import types

    module = types.ModuleType("my_models")
    module.net = lambda num_classes=10: torch.nn.Sequential(  # noqa: ARG005 - a user's factory
        torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(4, num_classes))
    module.fixed = lambda: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 10))
    monkeypatch.setitem(sys.modules, "my_models", module)
    torch.save(module.net(num_classes=4).state_dict(), tmp_path / "net.pt")
    assert load_model("my_models:net", checkpoint=tmp_path / "net.pt").model[4].out_features == 4
    torch.save(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4)).state_dict(), tmp_path / "fixed.pt")
    with pytest.raises(InputError, match=r"a head of 4 classes is needed .* but my_models:fixed\(\) takes no num_classes"):
        load_model("my_models:fixed", checkpoint=tmp_path / "fixed.pt")


# --- images -------------------------------------------------------------------------------------


def test_a_16_bit_grayscale_png_is_scaled_not_clipped(tmp_path):
    ramp = (np.arange(64 * 32, dtype=np.uint32).reshape(32, 64) * 16).astype(np.uint16)  # 0..32752
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    opened = Image.open(tmp_path / "ramp.png")
    assert opened.mode.startswith("I;16") or opened.mode == "I"
    decoded = read_image(tmp_path / "ramp.png")
    values = np.asarray(decoded.image)
    assert decoded.image.mode == "RGB" and values.max() == round(32752 / 65535 * 255) and values.min() == 0
    assert "16-bit" in decoded.notes[0]
    saturated = np.asarray(Image.open(tmp_path / "ramp.png").convert("RGB"))
    assert (saturated == 255).mean() > 0.9  # Pillow's own conversion clips: a white image


def test_exif_orientation_turns_a_phone_photo_upright(tmp_path):
    picture = Image.new("RGB", (40, 20), (0, 0, 0))
    picture.paste((255, 255, 255), (0, 0, 10, 20))  # white on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: a viewer rotates it 90 degrees clockwise
    picture.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    decoded = read_image(tmp_path / "phone.jpg")
    assert decoded.image.size == (20, 40) and "EXIF orientation (6)" in decoded.notes[0]
    top = np.asarray(decoded.image)[:5].mean()
    bottom = np.asarray(decoded.image)[-5:].mean()
    assert top > 200 and bottom < 50  # the left side is now on top
    plain = Image.new("RGB", (8, 8))
    plain.save(tmp_path / "plain.jpg")
    assert read_image(tmp_path / "plain.jpg").notes == ()


def test_cmyk_palette_alpha_and_animated_images_become_rgb(tmp_path):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    red = np.asarray(read_image(tmp_path / "cmyk.jpg").image).reshape(-1, 3).mean(0)
    assert red[0] > 200 and red[1] < 60 and red[2] < 60
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    palette.save(tmp_path / "palette.png")
    assert np.asarray(read_image(tmp_path / "palette.png").image)[0, 0].tolist() == [0, 0, 255]
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    rgba.save(tmp_path / "alpha.png")
    decoded = read_image(tmp_path / "alpha.png")
    assert np.asarray(decoded.image)[0, 0].tolist() == [255, 0, 0]
    assert np.asarray(decoded.image)[4, 4].tolist() == [255, 255, 255] and "composited on white" in decoded.notes[0]
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    decoded = read_image(tmp_path / "anim.gif")
    assert np.asarray(decoded.image)[0, 0].tolist()[0] > 200 and "animated (3 frames): the first frame" in decoded.notes[0]
    with pytest.raises(InputError, match="does not exist"):
        read_image(tmp_path / "none.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(InputError, match="cannot read image .*text.png"):
        load_image(tmp_path / "text.png", Preprocessing.imagenet())


def test_the_explorer_decodes_uploads_as_the_command_line_does():
    pytest.importorskip("fastapi")
    from deconvnet.serve.explorer import decode_image

    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.new("RGB", (30, 10)).save(buffer, "JPEG", exif=exif)
    decoded = decode_image(buffer.getvalue(), 10_000, "phone.jpg")
    assert decoded.image.size == (10, 30) and decoded.notes
    assert decode(Image.new("LA", (4, 4), (0, 0))).image.getpixel((0, 0)) == (255, 255, 255)


# --- every command, the explorer and the atlas ----------------------------------------------------


@pytest.fixture(scope="module")
def labelled(forms, tmp_path_factory):
    """A fine-tuned checkpoint, its labels file and a folder of photos (one stored sideways)."""
    folder = tmp_path_factory.mktemp("own")
    (folder / "labels.txt").write_text("\n".join(NAMES) + "\n")
    photos = folder / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (80, 100, 3), dtype=np.uint8)).save(photos / f"{i}.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rng.integers(0, 256, (100, 80, 3), dtype=np.uint8)).save(photos / "phone.jpg", exif=exif)
    return {"checkpoint": forms["lightning.ckpt"], "labels": folder / "labels.txt", "photos": photos}


def _own(labelled: dict) -> list[str]:
    return ["--model", "resnet18", "--checkpoint", str(labelled["checkpoint"]), "--labels", str(labelled["labels"]),
            "--input-size", "64", "--device", "cpu"]


def test_info_prints_what_a_run_would_use(labelled, capsys):
    assert main(["info", *_own(labelled)]) == 0
    out = capsys.readouterr().out
    for line in ("model: torchvision resnet18 (5 classes)",
                 "checkpoint: lightning.ckpt: checkpoint['state_dict'], 122 tensors, keys under 'model.', "
                 "1 outside it left out (loss.weight)",
                 "classes: cat, dog, bird, fish, horse (from labels.txt)",
                 "preprocessing: resize the shorter side to 73 (bilinear), centre-crop 64x64",
                 "input: Tensor[N, C, H, W] = Tensor[N, 3, 64, 64]", "outputs: 5 classes",
                 "general layers (reversed by their exact vector-Jacobian product): none"):
        assert line in out, line
    assert "  layer4.1.conv2 " in out and "[512, 2, 2]" in out


def test_an_input_size_the_model_refuses_is_one_line(capsys):
    pytest.importorskip("timm")
    assert main(["info", "--model", "timm:vit_tiny_patch16_224", "--input-size", "128", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("deconvnet: error: timm:vit_tiny_patch16_224 does not run on a 3x128x128 input (")
    assert err.rstrip().endswith("give --input-size the size it was trained at") and err.count("\n") == 1


def test_classes_names_the_fine_tuned_classes_and_prints_the_decoders_notes(labelled, tmp_path, capsys):
    photos = labelled["photos"]
    assert main(["classes", str(photos / "0.png"), str(photos / "phone.jpg"), *_own(labelled), "--top-k", "2",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "deconvnet: note: phone.jpg turned upright by its EXIF orientation (6)" in out
    assert "deconvnet: classes: cat, dog, bird, fish, horse (from labels.txt)" in out
    assert Image.open(tmp_path / "classes.png").size[0] > 64


def test_the_explorer_shows_the_fine_tuned_labels(labelled):
    pytest.importorskip("fastapi")
    from deconvnet.cli import build_parser
    from deconvnet.commands import explorer_for

    explorer = explorer_for(build_parser().parse_args(["serve", *_own(labelled)]))
    try:
        assert explorer.info()["categories"] == NAMES and explorer.info()["classes"] == 5
        answer = explorer.add_upload((labelled["photos"] / "phone.jpg").read_bytes(), "phone.jpg")
        assert {entry["label"] for entry in answer["top"]} == set(NAMES)
        assert answer["notes"] == ["phone.jpg turned upright by its EXIF orientation (6)"]
        assert explorer.class_projection(answer["image"], 4)["label"] == "horse"
    finally:
        explorer.close()


def test_the_atlas_names_each_units_image_with_the_fine_tuned_labels(labelled, tmp_path):
    out = tmp_path / "atlas"
    assert main(["atlas", str(labelled["photos"]), "--layers", "layer1", "--k", "2", *_own(labelled),
                 "--out", str(out)]) == 0
    assert "Classes (5): cat, dog, bird, fish, horse." in (out / "index.html").read_text()
    data = json.loads((out / "atlas.json").read_text())
    assert data["categories"] == NAMES and set(data["predicted"]) <= {"0.png", "1.png", "2.png", "phone.jpg"}
    assert {p["label"] for p in data["predicted"].values()} <= set(NAMES)
    page = next(out.glob("layer1*/0.html")).read_text()
    shown = [name for name in NAMES if f'<span class="class">{name} ' in page]
    assert shown, "a unit page names its images' classes"
