"""The unit atlas: atlas.json against a brute-force top-k, the same atlas from 2 gloo processes and
from a killed-and-resumed run, bad images counted, errors, and the site's links and files."""

from __future__ import annotations

import json
import socket
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from atlas_data import BAD, COPY, LAYERS, Troubled, small_net
from PIL import Image

from deconvnet import DeconvNet, InputError, LayerNotFoundError
from deconvnet.analysis.atlas import AtlasImages, build_atlas, mine_atlas
from deconvnet.cli import main
from deconvnet.shapes import render

TESTS = Path(__file__).parent


def brute_force(net, dataset, layer: int, k: int) -> list[list[dict]]:
    """Every readable image alone through the net up to ``layer``; per channel, the images
    ordered by (strongest value, lower index), each with its first (row-major) strongest unit."""
    maps = {i: net[: layer + 1](dataset.images[i][None])[0] for i in range(len(dataset)) if i not in BAD}
    channels, _, width = next(iter(maps.values())).shape
    result = []
    for c in range(channels):
        entries = []
        for i, m in maps.items():
            values = m[c].flatten().tolist()
            best = max(range(len(values)), key=lambda j: (values[j], -j))
            entries.append((-values[best], i, best))
        entries.sort()
        result.append([{"image": i, "value": -v, "position": [p // width, p % width]} for v, i, p in entries[:k]])
    return result


def test_atlas_json_equals_a_brute_force_top_k(tmp_path):
    net, data = small_net(), Troubled()
    atlas = build_atlas(net, data, LAYERS, tmp_path, k=5, batch_size=4, model_name="small")
    document = json.loads((tmp_path / "atlas.json").read_text())
    assert document["model"] == "small"
    assert document["images"] == [f"#{i}" for i in range(30)]
    assert [s["image"] for s in document["dataset"]["skipped"]] == sorted(BAD)
    assert document["dataset"]["mined"] == 30 - len(BAD) == atlas.mined
    assert "item 5 is damaged" in document["dataset"]["skipped"][0]["error"]
    for name in LAYERS:
        layer = document["layers"][name]
        expected = brute_force(net, data, int(name), 5)
        assert layer["channels"] == len(expected) and layer["k"] == 5
        assert layer["receptive_field"] == list(DeconvNet(net).receptive_field(name).size)
        for got, want in zip(layer["units"], expected, strict=True):
            assert [(u["image"], u["position"]) for u in got] == [(u["image"], u["position"]) for u in want]
            np.testing.assert_allclose([u["value"] for u in got], [u["value"] for u in want], rtol=1e-12)
    # The copy of image 2 ties with it everywhere: where both are kept, 2 comes first.
    units = [u["image"] for layer in document["layers"].values() for channel in layer["units"] for u in channel]
    assert COPY[0] in units


def test_ties_go_to_the_earlier_image(tmp_path):
    net, data = small_net(), Troubled()
    data.images[:] = data.images[0]  # every image the same: every value ties
    build_atlas(net, data, ["4"], tmp_path, k=3, batch_size=7)
    units = json.loads((tmp_path / "atlas.json").read_text())["layers"]["4"]["units"]
    readable = [i for i in range(30) if i not in BAD]
    assert all([u["image"] for u in channel] == readable[:3] for channel in units)


def test_site_files_and_links_are_all_there(tmp_path):
    build_atlas(small_net(), Troubled(), LAYERS, tmp_path, k=4, batch_size=8)
    pages = sorted(tmp_path.rglob("*.html"))
    assert len(pages) == 1 + 2 + 6 + 8  # index, two layer pages, one page per channel
    for page in pages:
        parser = _Links()
        parser.feed(page.read_text())
        for link in parser.links:
            assert (page.parent / link).resolve().is_file(), f"{page.relative_to(tmp_path)} -> {link}"
    index = (tmp_path / "index.html").read_text()
    assert "2 skipped" in index and "item 17 is damaged" in index
    channel = (tmp_path / "4" / "3.html").read_text()
    assert 'href="2.html"' in channel and 'href="4.html"' in channel and 'href="index.html"' in channel
    assert channel.count("<div class=\"unit\">") == 4
    for png in (tmp_path / "4" / "img").glob("*.png"):
        with Image.open(png) as opened:
            assert opened.size == (8, 8), png  # 3x3 conv, 2x2 pool, 3x3 conv: an 8x8 field, cropped to it


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("href", "src") and value and "://" not in value:
                self.links.append(value)


def test_resumed_after_a_kill_gives_the_same_atlas(tmp_path):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    build_atlas(small_net(), Troubled(), LAYERS, whole, k=3, batch_size=3, checkpoint_every=6)
    script = (
        "from atlas_data import LAYERS, Troubled, small_net\n"
        "from deconvnet.analysis.atlas import build_atlas\n"
        f"build_atlas(small_net(), Troubled(kill_at=22), LAYERS, {str(resumed)!r}, k=3, batch_size=3, checkpoint_every=6)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                         check=False)
    assert run.returncode == -9, run.stderr  # SIGKILL, while reading item 22 (batch 7 of 10)
    saved = torch.load(resumed / ".atlas-state" / "rank-0-of-1.pt", weights_only=True)
    assert saved["done"] == 6 and not saved["finished"]  # checkpoints after 6 and 12 and 18 items
    assert not (resumed / "atlas.json").exists()
    build_atlas(small_net(), Troubled(), LAYERS, resumed, k=3, batch_size=3, checkpoint_every=6, resume=True)
    assert (resumed / "atlas.json").read_text() == (whole / "atlas.json").read_text()
    assert _pngs(resumed) == _pngs(whole)


def _pngs(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*.png")}


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path):
    build_atlas(small_net(), Troubled(), LAYERS, tmp_path, k=3, batch_size=3)
    with pytest.raises(InputError, match=r"written for a different run \(batch_size, k changed\).*without --resume"):
        build_atlas(small_net(), Troubled(), LAYERS, tmp_path, k=4, batch_size=4, resume=True)
    (tmp_path / ".atlas-state" / "rank-0-of-1.pt").write_bytes(b"garbage")
    with pytest.raises(InputError, match="cannot read the atlas checkpoint"):
        build_atlas(small_net(), Troubled(), LAYERS, tmp_path, k=3, batch_size=3, resume=True)
    build_atlas(small_net(), Troubled(), LAYERS, tmp_path, k=3, batch_size=3)  # without --resume: starts over


def _shapes_folder(folder: Path, count: int) -> Path:
    (folder / "nested").mkdir(parents=True)
    for i in range(count):
        render(3, i).image.save(folder / ("nested" if i % 4 == 0 else ".") / f"{i:03d}.png")
    (folder / "broken.jpg").write_bytes(b"this is not a jpeg")
    return folder


def _cli(*args: str, env: dict | None = None, torchrun: bool = False) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] if torchrun else [
        sys.executable]
    return subprocess.run([*launcher, "-m", "deconvnet", *args], capture_output=True, text=True, timeout=600, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


@pytest.mark.long
def test_two_gloo_processes_write_the_single_process_atlas(tmp_path):
    data = _shapes_folder(tmp_path / "data", 27)
    common = ["atlas", str(data), "--layers", "features.3", "features.13", "--k", "4", "--batch-size", "5",
              "--device", "cpu"]
    single = _cli(*common, "--out", str(tmp_path / "one"))
    assert single.returncode == 0, single.stderr
    double = _cli(*common, "--out", str(tmp_path / "two"), torchrun=True)
    assert double.returncode == 0, double.stderr
    assert "2 processes; batch b" in double.stdout and "skipped 1 image" in double.stdout
    assert double.stdout.count("wrote") == 1  # rank 0 alone writes
    one, two = (json.loads((tmp_path / d / "atlas.json").read_text()) for d in ("one", "two"))
    assert one == two
    assert one["dataset"]["count"] == 28 and one["dataset"]["skipped"][0]["name"] == "broken.jpg"
    assert sorted((tmp_path / "two" / ".atlas-state").iterdir()) == [
        tmp_path / "two" / ".atlas-state" / f"rank-{r}-of-2.pt" for r in (0, 1)]
    first, second = _pngs(tmp_path / "one"), _pngs(tmp_path / "two")
    assert first.keys() == second.keys() and len(first) == 2 * 4 * (16 + 64)
    for name in first:  # projections batched differently may round differently in the last bit
        a, b = (np.asarray(Image.open(folder / name), dtype=int) for folder in (tmp_path / "one", tmp_path / "two"))
        assert np.abs(a - b).max() <= 1, name


def test_errors_are_one_line(tmp_path):
    net, data = small_net(), Troubled()
    with pytest.raises(LayerNotFoundError, match="'9'"):
        build_atlas(net, data, ["9"], tmp_path)
    with pytest.raises(InputError, match="k must be a positive integer, got 0"):
        build_atlas(net, data, LAYERS, tmp_path, k=0)
    with pytest.raises(InputError, match="name at least one layer"):
        build_atlas(net, data, [], tmp_path)
    with pytest.raises(InputError, match="layers are named twice"):
        build_atlas(net, data, ["1", "1"], tmp_path)
    with pytest.raises(InputError, match="needs a preprocessing"):
        build_atlas(net, tmp_path, LAYERS, tmp_path)
    with pytest.raises(InputError, match="reads a folder or a torch Dataset, not list"):
        AtlasImages([1, 2, 3])  # type: ignore[arg-type]
    with pytest.raises(InputError, match="names has 2 entries for 30 images"):
        AtlasImages(data, names=["a", "b"])
    with pytest.raises(InputError, match="the dataset \\(Endless\\) has no length; the atlas needs one"):
        AtlasImages(Endless())
    with pytest.raises(InputError, match="TensorDataset \\(0 items\\) holds no images"):
        AtlasImages(torch.utils.data.TensorDataset(torch.zeros(0, 3, 4, 4)))
    with pytest.raises(InputError, match="checkpoint_every must be a positive integer, got 0"):
        build_atlas(net, data, LAYERS, tmp_path, checkpoint_every=0)
    with pytest.raises(InputError, match="batch_size must be a positive integer, got True"):
        build_atlas(net, data, LAYERS, tmp_path, batch_size=True)
    with pytest.raises(InputError, match="workers must be a non-negative integer"):
        build_atlas(net, data, LAYERS, tmp_path, workers=-1)
    flat = torch.nn.Sequential(*small_net(), torch.nn.Flatten()).double()
    with pytest.raises(InputError, match=r"needs layers with feature maps; 5 outputs \(288,\) per image"):
        build_atlas(flat, data, ["5"], tmp_path)

    class Unreadable(Troubled):
        def __getitem__(self, index):
            raise OSError("disk gone")

    with pytest.raises(InputError, match="no image of Unreadable .* could be read; the first: OSError: disk gone"):
        mine_atlas(DeconvNet(net), AtlasImages(Unreadable()), LAYERS)


class Endless(torch.utils.data.IterableDataset):
    def __iter__(self):
        yield torch.zeros(3, 4, 4)


class Ragged(Troubled):
    """Image 3 has another size: a batch holding it cannot be stacked."""

    def __getitem__(self, index):
        x, label = super().__getitem__(index)
        return (x[:, :8, :8] if index == 3 else x), label


def test_images_of_different_sizes_in_one_batch_are_refused(tmp_path):
    with pytest.raises(InputError, match=r"images of one batch differ in shape \[\(3, 8, 8\), \(3, 16, 16\)\]; "
                                         "resize them to one size"):
        build_atlas(small_net(), Ragged(), LAYERS, tmp_path, batch_size=4)


def test_cli_errors_are_one_line(tmp_path, capsys):
    data = _shapes_folder(tmp_path / "data", 3)
    out = ["--out", str(tmp_path / "site")]
    for args, message in [
        ([str(data), "--layers", "nope"], "'nope'"),
        ([str(tmp_path / "missing"), "--layers", "features.3"], "is not a folder"),
        ([str(data), "--layers", "features.3", "--checkpoint-every", "0"], "--checkpoint-every must be at least 1"),
        ([str(data), "--layers", "features.3", "--resume", "--k", "2"], "no checkpoint"),
        ([str(data), "--layers", "features.3", "--resume", "--k", "3"], "k changed"),
    ]:
        code = main(["atlas", *args, *out])
        captured = capsys.readouterr()
        err = captured.err.strip().splitlines()
        if message == "no checkpoint":  # a first run with --resume starts from the beginning, and says so
            assert code == 0 and "--resume found no checkpoint" in captured.out
            continue
        assert code == 1 and err[-1].startswith("deconvnet: error: ") and message in err[-1], err


def test_a_rank_that_fails_alone_stops_the_other_with_its_message(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    script = Path(__file__).parent / "atlas_ranks.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    ranks = [subprocess.Popen([sys.executable, str(script), str(r), port, str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for r in (0, 1)]
    # Without the ranks telling each other, rank 0 read its whole shard and only then failed, in
    # the final gather: with gloo "Connection closed by peer" (rank 1's message lost), with NCCL
    # after the process group's timeout.
    outputs = [rank.communicate(timeout=90) for rank in ranks]
    (out0, err0), (_, err1) = outputs
    assert ranks[1].returncode == 1 and "images of one batch differ in shape" in err1, err1
    assert ranks[0].returncode == 3, err0
    assert "rank 1 failed: InputError: images of one batch differ in shape" in out0
    read = int(out0.split("after reading ")[1].split()[0])
    assert read < 100 // 2, out0  # stopped within a few batches, not at the end of its 100 images
