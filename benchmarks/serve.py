"""``python -m benchmarks serve``: the explorer's latency and throughput over loopback HTTP.

VGG16 (random weights) at 224 px on the machine's device, served by ``deconvnet serve``'s own
application under uvicorn in this process; a client in the same process times each endpoint
(p50/p95 of ``--repeats``-fold requests, fresh arguments each time: a new class, channel or unit
per request, a new image per upload) beside the plain forward pass ``model(x)`` timed between
the requests. Then a load test: 16 client threads clicking channels and units of a middle and a deep layer
of the same image, bounded in count and time, counting errors. Written to
``benchmarks/results/serve.md`` and ``serve.json``.
"""

from __future__ import annotations

import io
import random
import statistics
import threading
import time
from collections.abc import Callable

import torch
import torchvision

from deconvnet.loading import LoadedModel, Preprocessing
from deconvnet.serve import Explorer
from deconvnet.serve.app import BackgroundServer, create_app

from .harness import machine, timed

MIDDLE, DEEP = ("features.4", "features.9", "features.16"), ("features.23", "features.30")
CLIENTS = 16


def _photo() -> bytes:
    try:
        from deconvnet.loading import photo

        picture = photo("coffee")
    except Exception:  # no scikit-image: a generated picture serves the same timings
        from deconvnet.shapes import render

        picture = render(3, 0, size=256).image
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def _percentiles(seconds: list[float]) -> dict:
    ordered = sorted(seconds)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50_ms": 1000 * statistics.median(ordered), "p95_ms": 1000 * p95, "n": len(ordered)}


def _time(call: Callable[[int], object], repeats: int, forward: Callable[[], None]) -> dict:
    """The call's p50/p95, and the median of a plain forward pass timed between its runs (the
    same moments of a noisy machine)."""
    call(-1)  # warm-up
    seconds, forwards = [], []
    for k in range(repeats):
        start = time.perf_counter()
        forward()
        forwards.append(time.perf_counter() - start)
        start = time.perf_counter()
        call(k)
        seconds.append(time.perf_counter() - start)
    return {**_percentiles(seconds), "forward_ms": 1000 * statistics.median(forwards)}


def run(device: torch.device, repeats: int, emit: Callable[[dict], None]) -> str:
    import httpx

    torch.manual_seed(0)
    model = torchvision.models.vgg16(weights=None).eval().to(device)
    explorer = Explorer(LoadedModel(model, Preprocessing.imagenet(), None), name="vgg16", photos=[])
    x = torch.randn(1, 3, 224, 224, device=device)

    def forward() -> None:
        with torch.no_grad():
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()

    timed({"forward": forward}, 2, device)  # warm
    header = f"{machine(device)}, torch {torch.__version__}, VGG16 (random weights) at 224 px, float32"
    data = _photo()
    rng = random.Random(0)
    base = {"model": "vgg16", "machine": machine(device), "torch": torch.__version__}
    with BackgroundServer(create_app(explorer)) as server, httpx.Client(base_url=server.url, timeout=120) as client:

        def ok(response: httpx.Response) -> dict:
            if response.status_code != 200:
                raise RuntimeError(f"{response.request.url}: {response.status_code} {response.text}")
            return response.json()

        layers = {layer["name"]: layer for layer in ok(client.get("/api/model"))["layers"]}

        def upload(k: int) -> None:
            # Bytes after the PNG's end change the id, not the pixels: a fresh trace every time.
            ok(client.post("/api/images", content=data + k.to_bytes(4, "little", signed=True)))

        def row(endpoint: str, layer: str, call: Callable[[int], object], count: int = repeats) -> None:
            measured = _time(call, count, forward)
            emit({**base, "benchmark": "serve", "endpoint": endpoint, "layer": layer, **measured,
                  "p50 / forward": measured["p50_ms"] / measured["forward_ms"]})

        row("POST /api/images (decode, trace, top-5)", "", upload)
        image = ok(client.post("/api/images", content=data))["image"]  # after the uploads: still cached
        row("GET classes/{c}", "", lambda k: ok(client.get(f"/api/images/{image}/classes/{rng.randrange(1000)}")))
        for name in MIDDLE + DEEP:
            channels = layers[name]["channels"]
            h, w = layers[name]["shape"]
            row("GET layers/{layer} (all channels' maps)", name,
                lambda k, name=name: ok(client.get(f"/api/images/{image}/layers/{name}")))
            row("GET channels/{c} (strongest unit)", name, lambda k, name=name, channels=channels: ok(
                client.get(f"/api/images/{image}/layers/{name}/channels/{rng.randrange(channels)}")))
            row("GET units/{row}/{col}", name, lambda k, name=name, channels=channels, h=h, w=w: ok(client.get(
                f"/api/images/{image}/layers/{name}/channels/{rng.randrange(channels)}/units/"
                f"{rng.randrange(h)}/{rng.randrange(w)}")))

        def occlude(k: int) -> None:
            # A new target each time: the server answers a repeated request with its earlier run.
            job = ok(client.post(f"/api/images/{image}/occlusion", json={"size": 64, "stride": 32, "target": k + 1}))
            while job["state"] in ("queued", "running"):
                time.sleep(0.02)
                job = ok(client.get(f"/api/jobs/{job['job']}"))
            if job["state"] != "done":
                raise RuntimeError(job["error"])

        row("occlusion 64 px, stride 32 (25 positions), start to result", "features.30", occlude, 3)
        emit({**base, "benchmark": "serve-load", **_load(server.url, image, layers, repeats, explorer)})
    explorer.close()
    return header


def _load(url: str, image: str, layers: dict, repeats: int, explorer: Explorer) -> dict:
    """CLIENTS threads, each its own connection, clicking channels and units of one middle and one
    deep layer; at most 16 * 4 * repeats requests or 120 s."""
    import httpx

    per_client = 4 * repeats
    seconds: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + 120
    batches, tasks = explorer._worker.batches, explorer._worker.tasks

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=url, timeout=120) as http:
            for _ in range(per_client):
                if time.monotonic() > deadline:
                    return
                name = rng.choice(["features.16", "features.23"])
                channels = layers[name]["channels"]
                h, w = layers[name]["shape"]
                path = f"/api/images/{image}/layers/{name}/channels/{rng.randrange(channels)}"
                if rng.random() < 0.5:
                    path += f"/units/{rng.randrange(h)}/{rng.randrange(w)}"
                start = time.perf_counter()
                try:
                    response = http.get(path)
                    failed = None if response.status_code == 200 else f"{response.status_code} {response.text[:80]}"
                except httpx.HTTPError as error:
                    failed = repr(error)
                with lock:
                    seconds.append(time.perf_counter() - start)
                    if failed:
                        errors.append(failed)

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    return {"clients": CLIENTS, "requests": len(seconds), "errors": len(errors), "first_error": errors[0] if errors else None,
            "wall_s": wall, "requests_per_s": len(seconds) / wall, **_percentiles(seconds),
            "mirror_passes": explorer._worker.batches - batches, "clicks": explorer._worker.tasks - tasks}


def markdown(rows: list[dict], header: str) -> str:
    lines = [f"Measured with `python -m benchmarks serve` on: {header}.", "",
             "| endpoint | layer | p50 ms | p95 ms | n | p50 / forward | forward ms |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["benchmark"] == "serve":
            lines.append(f"| {r['endpoint']} | {r['layer']} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['n']} | "
                         f"{r['p50 / forward']:.2f}x | {r['forward_ms']:.1f} |")
    for r in rows:
        if r["benchmark"] == "serve-load":
            lines += ["", "| load test | requests | errors | requests/s | p50 ms | p95 ms | mirror passes for the clicks |",
                      "|---|---|---|---|---|---|---|",
                      f"| {r['clients']} clients, loopback | {r['requests']} | {r['errors']} | {r['requests_per_s']:.1f} | "
                      f"{r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['mirror_passes']} for {r['clicks']} |"]
    return "\n".join(lines) + "\n"
