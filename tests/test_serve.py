"""The explorer's API (``deconvnet serve``) through FastAPI's TestClient: every endpoint, every
error path, answers equal to the library calls they wrap, batching, the trace cache, and a
hypothesis fuzz that never gets a 5xx."""

from __future__ import annotations

import argparse
import base64
import io
import json
import struct
import threading
import time
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

pytest.importorskip("fastapi", reason="the explorer needs the serve extra (pip install -e '.[test]')")
from atlas_data import shapes_site
from fastapi.testclient import TestClient

from deconvnet import DeconvNet
from deconvnet.analysis.occlusion import occlusion
from deconvnet.cli import build_parser, main
from deconvnet.commands import explorer_for
from deconvnet.errors import InputError
from deconvnet.loading import LoadedModel, Preprocessing, load_model
from deconvnet.pictures import image
from deconvnet.pictures.figures import crop_to_field
from deconvnet.serve import Explorer
from deconvnet.serve.app import create_app
from deconvnet.shapes import render

LAYER = "features.8"  # ShapesNet: 32 channels of 32x32 maps, a 14x14 px receptive field


def _args(**changes) -> argparse.Namespace:
    args = build_parser().parse_args(["serve", "--device", "cpu"])
    for key, value in changes.items():
        setattr(args, key, value)
    return args


@pytest.fixture(scope="module")
def explorer():
    explorer = explorer_for(_args())
    yield explorer
    explorer.close()


@pytest.fixture(scope="module")
def client(explorer):
    with TestClient(create_app(explorer)) as client:
        yield client


@pytest.fixture(scope="module")
def star(client):
    return client.post("/api/photos/shapes-star").json()


@pytest.fixture(scope="module")
def star_input(explorer):
    """The same photo through the library alone: Tensor[1, 3, 64, 64]."""
    sample = next(render(3, i) for i in range(100) if render(3, i).label == 5)  # the demo's seed, the first star
    return Preprocessing.shapes().transform(sample.image)[None]


def png(url: str) -> np.ndarray:
    """A data:image/png URL's pixels."""
    head, _, data = url.partition(",")
    assert head == "data:image/png;base64"
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))


def pixels(picture: torch.Tensor) -> np.ndarray:
    return np.asarray(image.to_pil(picture))


def encoded(picture: Image.Image, format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format=format)
    return buffer.getvalue()


# --- answers equal to the library's -----------------------------------------------------------------


def test_model_lists_layers_with_maps_rules_photos(client, explorer):
    info = client.get("/api/model").json()
    dn = DeconvNet(load_model("shapes").model)
    trace = dn.trace(torch.zeros(1, 3, 64, 64))
    listed = [layer["name"] for layer in info["layers"]]
    steps = [dn.layer_name(name) for name in listed]
    assert len(set(steps)) == len(steps)  # each output once
    assert set(steps) == {dn.layer_name(n) for n in dn.layers if trace.activations[dn.layer_name(n)].dim() == 4}
    assert listed == [n for n in dn.layers if n in listed]  # in forward order
    layer = next(entry for entry in info["layers"] if entry["name"] == LAYER)
    assert layer["channels"] == 32 and layer["shape"] == [32, 32]
    assert layer["field"]["size"] == list(dn.receptive_field(LAYER).size)
    assert info["rules"] == ["deconvnet", "guided", "gradient"] and info["classes"] == 6
    assert info["categories"][5] == "star" and "shapes-star" in info["photos"]
    assert info["switches"] is True and info["hint"] is None


def test_photo_top5_and_input_equal_the_library(client, star, star_input):
    model = load_model("shapes").model
    with torch.no_grad():
        probabilities = model(star_input).softmax(-1)[0]
    assert star["top"][0] == {"class": 5, "label": "star", "probability": pytest.approx(float(probabilities[5]))}
    assert [t["class"] for t in star["top"]] == probabilities.argsort(descending=True)[:5].tolist()
    shown = image.denormalize(star_input[0], Preprocessing.shapes().mean, Preprocessing.shapes().std)
    assert np.array_equal(png(star["input"]), pixels(shown))
    again = client.get(f"/api/images/{star['image']}").json()
    assert again == star


@pytest.mark.parametrize("rule", ["deconvnet", "guided", "gradient"])
def test_class_projection_equals_reconstruct_classes(client, star, star_input, rule):
    answer = client.get(f"/api/images/{star['image']}/classes/2", params={"rule": rule}).json()
    dn = DeconvNet(load_model("shapes").model)
    expected = dn.reconstruct_classes(star_input, [2], rule=rule)[0, 0]
    assert answer["rule"] == rule and answer["label"] == "triangle"
    assert np.array_equal(png(answer["picture"]), pixels(image.signed_to_unit(expected)))


def test_layer_grid_reports_each_channels_strongest_unit(client, star, star_input):
    answer = client.get(f"/api/images/{star['image']}/layers/{LAYER}").json()
    dn = DeconvNet(load_model("shapes").model)
    maps = dn.activation(star_input, LAYER)[0]
    values, where = maps.flatten(1).max(dim=1)
    assert answer["values"] == pytest.approx(values.tolist())
    assert answer["units"] == [[int(p) // 32, int(p) % 32] for p in where]
    sprite = png(answer["sprite"])
    assert sprite.shape[:2] == (answer["columns"] * 32, answer["columns"] * 32)  # 32 channels, 6x6 tiles of 32 px
    assert sprite.std() > 0


def test_channel_and_unit_equal_reconstruct_units(client, star, star_input):
    dn = DeconvNet(load_model("shapes").model)
    maps = dn.activation(star_input, LAYER)[0]
    channel = int(maps.flatten(1).amax(1).argmax())
    strongest = int(maps[channel].flatten().argmax())
    field = dn.receptive_field(LAYER)
    for path, position in [(f"channels/{channel}", strongest), (f"channels/{channel}/units/20/7", 20 * 32 + 7)]:
        answer = client.get(f"/api/images/{star['image']}/layers/{LAYER}/{path}").json()
        unit = (position // 32, position % 32)
        assert answer["unit"] == list(unit) and answer["channel"] == channel
        assert answer["value"] == pytest.approx(float(maps[channel].flatten()[position]))
        assert answer["box"] == list(field.box(*unit, 64, 64)) and answer["field"] == list(field.size)
        projected = dn.reconstruct_units(star_input, LAYER, [0], [channel], [position])[0]
        expected = image.signed_to_unit(crop_to_field(projected, field, unit, 0.0))
        assert np.array_equal(png(answer["projection"]), pixels(expected))
        assert png(answer["map"]).shape[:2] == (32, 32)


def test_a_whole_image_field_is_not_cropped(client, star, explorer):
    deepest = [name for name, info in explorer.layers.items() if info.field is None][0]
    answer = client.get(f"/api/images/{star['image']}/layers/{deepest}/channels/0").json()
    assert answer["field"] is None and answer["box"] == [0, 0, 64, 64]
    assert png(answer["projection"]).shape[:2] == (64, 64)


def test_upload_equals_the_same_picture_as_photo(client, star):
    sample = next(render(3, i) for i in range(100) if render(3, i).label == 5)
    answer = client.post("/api/images", content=encoded(sample.image), params={"name": "star.png"}).json()
    assert answer["name"] == "star.png" and answer["image"] != star["image"]
    assert answer["top"] == star["top"] and answer["input"] == star["input"]
    again = client.post("/api/images", content=encoded(sample.image)).json()
    assert again["image"] == answer["image"]  # the same bytes: traced once


def test_occlusion_job_equals_occlusion(client, star, star_input):
    job = client.post(f"/api/images/{star['image']}/occlusion", json={"size": 16, "stride": 8, "layer": LAYER}).json()
    assert job["state"] in ("queued", "running", "done") and job["total"] == 49
    deadline = time.monotonic() + 60
    while job["state"] not in ("done", "failed") and time.monotonic() < deadline:
        time.sleep(0.05)
        job = client.get(f"/api/jobs/{job['job']}").json()
    assert job["state"] == "done", job["error"]
    assert job["done"] == job["total"] == 49
    result = job["result"]
    expected = occlusion(load_model("shapes").model, star_input, size=16, stride=8, layer=LAYER)
    assert result["grid"] == [7, 7] and result["target"] == int(expected.target[0]) == 5
    assert np.allclose(result["probability"], expected.probability[0].numpy(), atol=1e-6)
    assert result["label"] == expected.label[0].tolist()
    assert np.allclose(result["activation"], expected.activation[0].numpy(), rtol=1e-5)
    assert result["channel"] == int(expected.channel[0]) and result["layer"] == LAYER
    assert set(result["labels"]) == {str(c) for c in expected.label.unique().tolist()}
    again = client.post(f"/api/images/{star['image']}/occlusion", json={"size": 16, "stride": 8, "layer": LAYER}).json()
    assert again["job"] == job["job"] and again["state"] == "done"  # the same request: the same run


def test_occlusion_defaults_to_the_deepest_spatial_layer(client, star, explorer):
    job = client.post(f"/api/images/{star['image']}/occlusion", json={"size": 32, "stride": 32}).json()
    while job["state"] not in ("done", "failed"):
        time.sleep(0.05)
        job = client.get(f"/api/jobs/{job['job']}").json()
    spatial = [name for name, info in explorer.layers.items() if info.shape != (1, 1)]
    assert job["result"]["layer"] == spatial[-1]


# --- one worker, batched, cached ----------------------------------------------------------------------


def test_concurrent_clicks_on_one_layer_share_one_mirror_pass(explorer, star):
    release, holding = threading.Event(), threading.Event()

    def hold(items):  # type: ignore[no-untyped-def]
        holding.set()
        return [release.wait(30)] * len(items)

    blocker = explorer._worker.submit(("hold",), None, hold)
    # The worker must be inside the blocker before the clicks queue: a worker slow to wake took
    # the blocker and the first click in one round, and the other four came as a second batch.
    assert holding.wait(30)
    channels = [0, 5, 9, 5, 17]
    answers: dict[int, dict] = {}

    def click(k: int, c: int) -> None:
        answers[k] = explorer.channel(star["image"], LAYER, c)

    threads = [threading.Thread(target=click, args=(k, c)) for k, c in enumerate(channels)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while len(explorer._worker._tasks) < len(channels) and time.monotonic() < deadline:
        time.sleep(0.01)
    before = explorer._worker.batches
    release.set()
    for thread in threads:
        thread.join(30)
    blocker.result(30)
    assert explorer._worker.batches - before == 1  # five clicks, one reconstruct_units call
    for k, c in enumerate(channels):
        alone = explorer.channel(star["image"], LAYER, c)
        assert answers[k] == alone


def test_the_cache_drops_the_least_recently_used_trace(explorer):
    small = Explorer(explorer.loaded, name="shapes", samples=explorer._sources, photos=[],
                     cache_bytes=1)  # room for the newest trace only
    try:
        first = small.add_photo("shapes-star")
        second = small.add_photo("shapes-ring")
        assert len(small.cache) == 1
        with pytest.raises(LookupError, match="upload it again"):
            small.describe(first["image"])
        assert small.describe(second["image"])["name"] == "shapes-ring"
        assert small.add_photo("shapes-star")["image"] == first["image"]  # traced again on demand
    finally:
        small.close()


def test_the_model_is_not_changed(explorer, client, star):
    model = explorer.dn.model
    state = {k: v.clone() for k, v in model.state_dict().items()}
    client.get(f"/api/images/{star['image']}/layers/{LAYER}/channels/3")
    client.get(f"/api/images/{star['image']}/classes/1")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert not model.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks for m in model.modules())


# --- the atlas beside it ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def atlas_site(tmp_path_factory):
    return shapes_site(tmp_path_factory, [LAYER, "features.13"], images=12)


def test_atlas_channel_links_to_the_sites_pictures(explorer, atlas_site):
    out, atlas = atlas_site
    with_atlas = Explorer(explorer.loaded, name="shapes", atlas=out, photos=[])
    try:
        with TestClient(create_app(with_atlas)) as client:
            info = client.get("/api/model").json()
            assert info["atlas"]["layers"] == [LAYER, "features.13"]
            answer = client.get(f"/api/atlas/{LAYER}/4").json()
            document = json.loads((out / "atlas.json").read_text())
            units = document["layers"][LAYER]["units"][4]
            assert [u["value"] for u in answer["units"]] == [u["value"] for u in units]
            assert [u["image"] for u in answer["units"]] == [document["images"][u["image"]] for u in units]
            for unit in answer["units"]:
                for key in ("projection", "patch"):
                    response = client.get(unit[key])
                    assert response.status_code == 200 and response.content.startswith(b"\x89PNG")
            page = client.get(answer["page"])
            assert page.status_code == 200 and f"{LAYER}, channel 4" in page.text
            assert client.get(f"/api/atlas/{LAYER}/32").status_code == 400
            assert client.get("/api/atlas/features.3/0").status_code == 404
            assert client.get("/atlas/../pyproject.toml").status_code == 404
    finally:
        with_atlas.close()


def test_an_atlas_of_another_model_is_refused(atlas_site, tmp_path):
    out, _ = atlas_site
    other = LoadedModel(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval(),
                        Preprocessing.shapes(), None)
    with pytest.raises(InputError, match="made for another model"):
        Explorer(other, name="other", atlas=out, photos=[])
    with pytest.raises(InputError, match="no atlas.json"):
        Explorer(other, name="other", atlas=tmp_path, photos=[])


def test_no_max_pooling_gets_the_hint(explorer):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3, stride=2),
                                torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(4, 3)).eval()
    bare = Explorer(LoadedModel(model, Preprocessing.shapes(), None), name="bare", photos=[])
    try:
        info = bare.info()
        assert info["switches"] is False and "Try the guided rule" in info["hint"]
    finally:
        bare.close()


# --- every bad request: a 4xx with one line of JSON, and the server goes on -----------------------------


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels and holds none: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _bad_requests(star: dict, explorer) -> list[tuple[str, str, dict, int, str]]:
    i = star["image"]
    trace = explorer.cache.get(star["image"]).trace
    flat = next(name for name in explorer.dn.layers if trace.activations[explorer.dn.layer_name(name)].dim() != 4)
    whole = encoded(render(3, 0).image)
    return [
        ("post", "/api/images", {"content": b""}, 422, "empty"),
        ("post", "/api/images", {"content": b"GIF89a not really"}, 422, "cannot decode|not an image"),
        ("post", "/api/images", {"content": b"%PDF-1.4 hello"}, 422, "not an image"),
        ("post", "/api/images", {"content": whole[: len(whole) // 2]}, 422, "cannot decode"),
        ("post", "/api/images", {"content": _png_header(100_000, 100_000)}, 413, "at most"),
        ("post", "/api/images", {"content": b"\0" * ((5 << 20) + 1)}, 413, "at most"),
        ("post", "/api/photos/no-such-photo", {}, 404, "no photo"),
        ("post", "/api/photos/..%2F..%2Fetc%2Fpasswd", {}, 404, ""),
        ("get", "/api/images/0123456789abcdef0123", {}, 404, "upload it again"),
        ("get", "/api/images/../../etc/passwd", {}, 404, ""),
        ("get", "/api/images/not-an-id", {}, 422, "image"),
        ("get", f"/api/images/{i}/classes/6", {}, 400, "out of range"),
        ("get", f"/api/images/{i}/classes/-1", {}, 422, "target"),
        ("get", f"/api/images/{i}/classes/x", {}, 422, "target"),
        ("get", f"/api/images/{i}/classes/1", {"params": {"rule": "lrp"}}, 422, "rule"),
        ("get", f"/api/images/{i}/layers/nope", {}, 404, "unknown layer"),
        ("get", f"/api/images/{i}/layers/{flat}", {}, 404, "no feature maps"),
        ("get", f"/api/images/{i}/layers/{LAYER}/channels/32", {}, 400, "channel 32 is out of range"),
        ("get", f"/api/images/{i}/layers/{LAYER}/channels/99999999999999999999", {}, 422, "channel"),
        ("get", f"/api/images/{i}/layers/{LAYER}/channels/1/units/32/0", {}, 400, "row 32 is out of range"),
        ("get", f"/api/images/{i}/layers/{LAYER}/channels/1/units/0/40", {}, 400, "col 40 is out of range"),
        ("post", f"/api/images/{i}/occlusion", {"content": b"{not json", "headers": {"content-type": "application/json"}},
         422, "JSON"),
        ("post", f"/api/images/{i}/occlusion", {"json": {"size": 8}}, 422, "stride"),
        ("post", f"/api/images/{i}/occlusion", {"json": {"size": 8, "stride": 8, "path": "/etc"}}, 422, "path"),
        ("post", f"/api/images/{i}/occlusion", {"json": {"size": 65, "stride": 8}}, 400, "size must be"),
        ("post", f"/api/images/{i}/occlusion", {"json": {"size": 8, "stride": 0}}, 422, "stride"),
        ("post", f"/api/images/{i}/occlusion", {"json": {"size": 1, "stride": 1}}, 400, "positions"),
        ("post", f"/api/images/{i}/occlusion", {"json": {"size": 8, "stride": 8, "target": 9}}, 400, "out of range"),
        ("post", f"/api/images/{i}/occlusion", {"json": {"size": 8, "stride": 8, "layer": "x"}}, 404, "unknown layer"),
        ("get", "/api/jobs/0123456789abcdef", {}, 404, "no occlusion job"),
        ("get", "/api/jobs/x", {}, 422, "job"),
        ("get", f"/api/atlas/{LAYER}/0", {}, 404, "without --atlas"),
        ("get", "/api/nowhere", {}, 404, "no page or API path"),
        ("delete", "/api/model", {}, 405, "Method Not Allowed"),
    ]


def test_every_bad_request_gets_a_one_line_json_error(client, star, explorer):
    small = Explorer(explorer.loaded, name="shapes", photos=[], max_pixels=100_000, max_upload_bytes=5 << 20,
                     max_positions=1000, samples=explorer._sources)
    try:
        with TestClient(create_app(small)) as limited:
            image_id = limited.post("/api/photos/shapes-star").json()
            for method, path, options, status, message in _bad_requests(image_id, small):
                response = getattr(limited, method)(path, **options)
                assert response.status_code == status, (path, response.text)
                body = response.json()
                assert set(body) == {"error"} and "\n" not in body["error"] and body["error"], path
                assert response.headers["content-type"] == "application/json"
                if message:
                    assert any(part in body["error"] for part in message.split("|")), (path, body["error"])
            assert limited.get(f"/api/images/{image_id['image']}/classes/1").status_code == 200  # still serving
    finally:
        small.close()


def test_no_request_names_a_server_side_path_model_or_checkpoint(client):
    schema = client.get("/openapi.json").json()
    names = set()
    for operations in schema["paths"].values():
        for operation in operations.values():
            names |= {p["name"] for p in operation.get("parameters", [])}
    assert names == {"image", "target", "rule", "layer", "channel", "row", "col", "name", "job"}
    body = schema["components"]["schemas"]["OcclusionRequest"]["properties"]
    assert set(body) == {"size", "stride", "target", "layer"}


_SEGMENT = st.one_of(st.text(max_size=30), st.integers(-(2**70), 2**70).map(str),
                     st.sampled_from(["..", ".", "%2e%2e", "features.8", "0", "-1", "%00", "a/b", "\\", "classes"]))


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(segments=st.lists(_SEGMENT, min_size=0, max_size=7), rule=st.one_of(st.none(), st.text(max_size=10)),
       body=st.one_of(st.binary(max_size=300), st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=5),
                                                              max_size=4).map(lambda d: json.dumps(d).encode())),
       method=st.sampled_from(["get", "post"]), known=st.booleans())
def test_fuzzed_requests_never_break_the_server(client, star, segments, rule, body, method, known):
    from urllib.parse import quote

    parts = ["api", "images", star["image"]] if known else ["api"]
    path = "/" + "/".join(parts + [quote(s, safe="") for s in segments])
    options: dict = {"params": {"rule": rule}} if rule is not None else {}
    if method == "post":
        options["content"] = body
    response = getattr(client, method)(path, **options)
    assert response.status_code < 500, (path, response.text)
    if response.status_code >= 400:
        error = response.json()["error"]
        assert error and "\n" not in error
    assert client.get("/api/model").status_code == 200


# --- the command --------------------------------------------------------------------------------------


def test_serve_binds_loopback_by_default_and_warns_otherwise(monkeypatch, capsys):
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: calls.append(options))
    assert build_parser().parse_args(["serve"]).host == "127.0.0.1"
    assert main(["serve", "--device", "cpu", "--port", "8123"]) == 0
    assert calls[-1] == {"host": "127.0.0.1", "port": 8123, "log_level": "warning"}
    out = capsys.readouterr().out
    assert "open http://localhost:8123/" in out and "not only this machine" not in out
    assert main(["serve", "--device", "cpu", "--host", "0.0.0.0"]) == 0
    assert "listening on 0.0.0.0, not only this machine" in capsys.readouterr().out


def test_serve_rejects_bad_options(capsys):
    assert main(["serve", "--port", "70000"]) == 1
    assert "--port must be 0..65535" in capsys.readouterr().err
    assert main(["serve", "--cache-mb", "0"]) == 1
    assert "--cache-mb must be at least 1" in capsys.readouterr().err
    assert main(["serve", "--atlas", "/nonexistent-atlas"]) == 1
    assert "no atlas.json" in capsys.readouterr().err


@pytest.mark.parametrize("layer", ["features.8", "features.13"])
@pytest.mark.parametrize("rule", ["deconvnet", "guided"])
def test_units_of_any_field_size_and_rule_equal_the_library(client, star, star_input, layer, rule):
    """Cropped to the field even where it covers most of the image (features.13), and the whole
    mirror where the rule cannot be cropped (guided): the same pictures as the library's call."""
    dn = DeconvNet(load_model("shapes").model)
    field = dn.receptive_field(layer)
    h, w = dn.activation(star_input, layer).shape[-2:]
    position = (h // 2) * w + w // 3
    answer = client.get(f"/api/images/{star['image']}/layers/{layer}/channels/1/units/{h // 2}/{w // 3}",
                        params={"rule": rule}).json()
    projected = dn.reconstruct_units(star_input, layer, [0], [1], [position], rule=rule, crop=False)[0]
    unit = (h // 2, w // 3)
    expected = pixels(image.signed_to_unit(crop_to_field(projected, field, unit, 0.0)))
    assert np.abs(png(answer["projection"]).astype(int) - expected.astype(int)).max() <= 1  # float rounding


def test_a_container_is_served_under_its_own_name(client, explorer, star):
    """A module whose output is a step of another name (a residual block's add) is listed by the
    module's name; another name of a listed output is served as that output."""
    loaded = load_model("efficientnet-lite0")
    real = Explorer(loaded, name="efficientnet-lite0", photos=[])
    try:
        info = real.layers["blocks.10"]
        assert info.step != "blocks.10" and info.shape == (14, 14) and info.channels == 112
    finally:
        real.close()
    aliases = [name for name in explorer.dn.layers if name not in explorer.layers
               and explorer.cache.get(star["image"]).trace.activations[explorer.dn.layer_name(name)].dim() == 4]
    for alias in aliases:
        answer = client.get(f"/api/images/{star['image']}/layers/{alias}").json()
        assert answer["layer"] in explorer.layers


def test_the_docs_schema_is_the_apis_in_openapi_30(client):
    """/docs (Swagger UI 4, offline) reads a 3.0 copy of /openapi.json: the same operations and
    parameters, optional values as ``nullable`` rather than 3.1's ``{"type": "null"}``."""
    full, old = client.get("/openapi.json").json(), client.get("/docs/openapi-3.0.json").json()
    assert full["openapi"].startswith("3.1") and old["openapi"] == "3.0.3"
    assert old["paths"].keys() == full["paths"].keys() and len(old["paths"]) == 12
    assert "/api/images/{image}/pixels/{row}/{col}" in old["paths"]
    assert '"null"' not in json.dumps(old)
    rule = next(p for p in old["paths"]["/api/images/{image}/classes/{target}"]["get"]["parameters"] if p["name"] == "rule")
    assert rule["schema"]["enum"] == ["deconvnet", "guided", "gradient"] and rule["schema"]["nullable"] is True
    upload = old["paths"]["/api/images"]["post"]["requestBody"]["content"]
    assert upload["application/octet-stream"]["schema"]["format"] == "binary"
    page = client.get("/docs").text
    assert "/docs-assets/swagger-ui-bundle.js" in page and "cdn" not in page


# --- segmentation models --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def segmenter():
    """A MONAI 2-D UNet (three classes, 64 px) served with one ShapesNet picture."""
    nets = pytest.importorskip("monai.networks.nets", reason="MONAI is in the test extra (pip install -e '.[test]')")
    torch.manual_seed(0)
    model = nets.UNet(2, 3, 3, (4, 8), (2,)).eval()
    loaded = LoadedModel(model, Preprocessing.shapes(), ["sky", "road", "car"])
    served = Explorer(loaded, name="unet", rule="guided", photos=[], samples={"scene": lambda: render(3, 0).image})
    yield served, model
    served.close()


def test_a_segmentation_model_is_served_with_its_mask_regions_and_pixels(segmenter):
    from deconvnet.pictures.segmentation import mask_overlay, on_input_grid

    served, model = segmenter
    x = Preprocessing.shapes().transform(render(3, 0).image)[None]
    dn = DeconvNet(model, rule="guided")
    with torch.no_grad():
        out = model(x)
    labels = on_input_grid(out.argmax(1), (64, 64))[0]
    with TestClient(create_app(served)) as client:
        info = client.get("/api/model").json()
        assert info["segmentation"] == {"grid": [64, 64]} and info["classes"] == 3
        scene = client.post("/api/photos/scene").json()
        listed = [(entry["class"], entry["share"]) for entry in scene["top"]]
        assert listed == [(c, k / 64**2) for c, k in dn.predicted_classes(x)[0]]  # largest area first
        assert all(entry["probability"] is None and entry["colour"].startswith("#") for entry in scene["top"])
        shown = image.denormalize(x[0], Preprocessing.shapes().mean, Preprocessing.shapes().std)
        assert np.array_equal(png(scene["mask"]), pixels(mask_overlay(shown, labels)))
        c = listed[0][0]
        region = client.get(f"/api/images/{scene['image']}/classes/{c}", params={"rule": "deconvnet"}).json()
        expected = dn.reconstruct_classes(x, [c], region="predicted", rule="deconvnet")[0, 0]
        assert np.array_equal(png(region["picture"]), pixels(image.signed_to_unit(expected)))
        assert region["share"] == pytest.approx(listed[0][1])
        assert np.array_equal(png(region["region"]), pixels(mask_overlay(shown, labels, only=c)))
        pixel = client.get(f"/api/images/{scene['image']}/pixels/10/40").json()
        assert pixel["class"] == int(labels[10, 40]) and pixel["cell"] == [10, 40]
        expected = dn.reconstruct_classes(x, [pixel["class"]], region=(10, 40))[0, 0]
        assert np.array_equal(png(pixel["picture"]), pixels(image.signed_to_unit(expected)))
        refused = client.get(f"/api/images/{scene['image']}/pixels/64/0")
        assert refused.status_code == 400 and "row 64 is out of range: the input has 64 rows" in refused.json()["error"]
        occlusion_request = client.post(f"/api/images/{scene['image']}/occlusion", json={"size": 8, "stride": 8})
        assert occlusion_request.status_code == 400 and "not a classifier" in occlusion_request.json()["error"]


def test_a_classifier_has_no_pixels_to_click(client, star):
    refused = client.get(f"/api/images/{star['image']}/pixels/3/3")
    assert refused.status_code == 400
    assert "not a segmentation model: a pixel has no class of its own" in refused.json()["error"]
