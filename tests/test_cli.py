"""The command line end to end on the bundled model and a temporary image folder."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageStat

from deconvnet.cli import main
from deconvnet.shapes import render


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("images")
    for i in range(12):
        render(21, i).image.save(path / f"{i:02d}.png")
    (path / "notes.txt").write_text("not an image")
    return path


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deconvnet", *args], capture_output=True, text=True, timeout=600)


@pytest.mark.long
def test_demo_writes_every_figure_and_an_index(tmp_path):
    result = run("demo", "--out", str(tmp_path), "--images", "1", "--dataset", "20",
                 "--pointing", "20", "--channels", "4", "--occlusion-size", "64", "--occlusion-stride", "80")
    assert result.returncode == 0, result.stderr
    real = ["real-rules.png", "real-classes.png", "real-layers-coffee.png", "real-layers-chelsea.png",
            *(f"occlusion-{photo}.png" for photo in ("coffee", "chelsea", "motorcycle", "rocket")),
            *(f"photos/{photo}.png" for photo in ("coffee", "chelsea", "motorcycle", "rocket")),
            "invariance-photos.png", "correspondence-faces.png", "correspondence-faces.json",
            "filters-efficientnet-lite0.png", "filters-efficientnet-lite0-renormalized.png",
            *(f"real-{name}" for name in ("randomization.png", "class-sensitivity.png", "deletion-insertion.png",
                                          "sanity.json"))]
    paper = ["evolution-features.8.png", "evolution-features.13.png", "correspondence-shapes.png",
             "correspondence-shapes.json", "invariance-shapes.png", "filters-shapes.png", "atlas/index.html",
             "atlas/atlas.json", "atlas/features.13/index.html", "atlas/features.13/63.html",
             "shapes-randomization.png", "shapes-sanity.json"]
    for name in ("classes.png", "rules.png", "layers.png", "channels-features.13.png", "top9-features.8.png",
                 "top9-features.13.png", "index.md", "pointing.json", *real, *paper):
        assert (tmp_path / name).is_file(), name
    index = (tmp_path / "index.md").read_text()
    assert "![classes](classes.png)" in index and "| deconvnet |" in index
    # the real photographs come first
    assert index.index("![real-rules](real-rules.png)") < index.index("![occlusion-coffee](occlusion-coffee.png)") \
        < index.index("## The bundled ShapesNet")
    assert "pointing game on 20 held-out images, tolerance 0 px" in result.stdout
    assert "[The unit atlas](atlas/index.html)" in index and "| triangle apex |" in index and "| right eye |" in index
    if shutil.which("chromium") or shutil.which("chromium-browser"):  # the explorer's screenshots, from the real server
        for name in ("explorer-real.png", "explorer-shapes.png"):
            picture = Image.open(tmp_path / name).convert("L")
            assert picture.size == (1300, 1160) and ImageStat.Stat(picture).stddev[0] > 20, name
            assert f"![{name[:-4]}]({name})" in index
    else:
        assert "no explorer screenshots: no Chromium" in result.stdout


def test_figure_commands_in_process(folder, tmp_path, capsys):
    image = str(folder / "00.png")
    assert main(["classes", image, str(folder / "01.png"), "--out", str(tmp_path), "--top-k", "2"]) == 0
    assert main(["classes", image, "--out", str(tmp_path / "given"), "--classes", "0", "5"]) == 0
    assert main(["layers", image, "--out", str(tmp_path), "--layers", "features.3", "features.13"]) == 0
    assert main(["channels", image, "--layer", "features.8", "--out", str(tmp_path)]) == 0
    assert main(["top9", str(folder), "--layers", "features.13", "--channels", "3", "--batch-size", "5",
                 "--out", str(tmp_path)]) == 0
    assert main(["occlusion", image, "--size", "16", "--stride", "12", "--layer", "features.8",
                 "--out", str(tmp_path)]) == 0
    for name in ("classes.png", "given/classes.png", "layers.png", "channels-features.8.png", "top9-features.13.png",
                 "occlusion-00.png"):
        assert (tmp_path / name).is_file(), name


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["classes", "missing.png"], "image missing.png does not exist"),
        (["top9", "EMPTY", "--layers", "features.3"], "holds no images"),
        (["classes", "IMAGE", "--model", "no_such_net"], "unknown model 'no_such_net'"),
        (["channels", "IMAGE", "--layer", "features.99"], "unknown layer 'features.99'"),
        (["classes", "IMAGE", "--checkpoint", "CKPT"], "does not fit the bundled ShapesNet: of its 1 tensors"),
        (["classes", "IMAGE", "--checkpoint", "CORRUPT"], "cannot read checkpoint"),
        (["classes", "CORRUPT"], "cannot read image"),
        (["classes", "IMAGE", "--classes", "6"], "class 6 is out of range"),
        (["classes", "IMAGE", "--device", "cuda:nonsense"], "is not a device"),
        (["classes", "IMAGE", "--batch-size", "0"], "--batch-size must be at least 1"),
        (["classes", "IMAGE", "--top-k", "0"], "--top-k must be at least 1, got 0"),
        (["top9", "IMAGE", "--layers", "features.3"], "is not a folder"),
        (["classes", "IMAGE", "--model", "os:getcwd"], "returned str, not an nn.Module"),
        (["classes", "IMAGE", "--model", "vgg11", "--weights", "NOPE"], "unknown weights 'NOPE' for vgg11; choose one of DEFAULT, IMAGENET1K_V1"),
        (["classes", "IMAGE", "--model", "no_such_module_xyz:make"], "cannot import 'no_such_module_xyz'"),
        (["occlusion", "IMAGE", "--size", "100"], "occluder size 100 does not fit the 64x64 image"),
        (["occlusion", "IMAGE", "--stride", "0"], "occluder stride must be a positive int (pixels), got 0"),
        (["occlusion", "IMAGE", "--target", "9"], "target class 9 is out of range: the model has 6 classes"),
    ],
)
def test_bad_input_ends_with_one_line(args, message, folder, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    checkpoint = tmp_path / "other.pt"
    torch.save({"conv.weight": torch.zeros(1)}, checkpoint)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG not really")
    substitutions = {"IMAGE": str(folder / "00.png"), "EMPTY": str(empty), "CKPT": str(checkpoint),
                     "CORRUPT": str(corrupt)}
    argv = [substitutions.get(a, a) for a in args] + ["--out", str(tmp_path / "out")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("deconvnet: error: ") and message in err, err
    # a checkpoint that does not fit says how, in a few lines: the keys it has, those it lacks, what to try
    assert err.count("\n") == (4 if "CKPT" in args else 1), err


ENTRY_POINTS = {"python -m deconvnet": [sys.executable, "-m", "deconvnet"],
                "the console script": [str(Path(sys.executable).parent / "deconvnet")]}


@pytest.mark.parametrize("entry", list(ENTRY_POINTS.values()), ids=list(ENTRY_POINTS))
def test_errors_exit_nonzero_without_traceback(tmp_path, entry):
    # Both entry points, each in a fresh interpreter (the docs' examples run warm: see warm_cli).
    result = subprocess.run([*entry, "classes", str(tmp_path / "nope.png"), "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 1
    assert result.stderr.strip() == f"deconvnet: error: image {tmp_path / 'nope.png'} does not exist"


def test_checkpoint_round_trip(tmp_path, folder):
    from deconvnet.models import shapes_net

    path = tmp_path / "shapes.pt"
    torch.save(shapes_net().state_dict(), path)
    assert main(["classes", str(folder / "00.png"), "--checkpoint", str(path), "--out", str(tmp_path)]) == 0


def test_layers_command_on_a_modern_torchvision_model(folder, tmp_path):
    # Random weights (no --weights): the default panels are a dozen spatial maps across depth.
    assert main(["layers", str(folder / "00.png"), "--model", "mobilenet_v3_small", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "layers.png").is_file()


def test_demo_on_another_model(tmp_path):
    # In process: the demo's own run through the entry point is test_demo_writes_every_figure_and_an_index.
    assert main(["demo", "--model", "mobilenet_v3_small", "--out", str(tmp_path), "--images", "1",
                 "--dataset", "6", "--channels", "2", "--rectifiers", "relu", "--rule", "guided"]) == 0
    index = (tmp_path / "index.md").read_text()
    assert "# deconvnet demo: mobilenet_v3_small" in index and "0 by the general VJP layer" in index
    for name in ("classes.png", "rules.png", "layers.png"):
        assert (tmp_path / name).is_file(), name
    assert len(list(tmp_path.glob("top9-*.png"))) == 2


def test_rule_and_rectifiers_options_are_checked(capsys):
    with pytest.raises(SystemExit) as exited:  # argparse's refusal: exit status 2
        main(["layers", "x.png", "--rectifiers", "some"])
    assert exited.value.code == 2 and "invalid choice: 'some'" in capsys.readouterr().err


def test_a_factory_that_raises_is_one_line(tmp_path, monkeypatch, capsys):
    # In process (the exit status and stderr of the real entry point: the nope.png test above).
    (tmp_path / "broken_models.py").write_text("def make():\n    raise RuntimeError('no such checkpoint')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["layers", "x.png", "--model", "broken_models:make"]) == 1
    assert capsys.readouterr().err.strip() == (
        "deconvnet: error: broken_models:make() failed: RuntimeError: no such checkpoint"
    )
