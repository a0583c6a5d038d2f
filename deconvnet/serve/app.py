"""The explorer as a web application: the page at ``/``, the JSON API under ``/api`` that the page
uses (described at ``/docs``), the atlas site under ``/atlas`` when there is one.

Every error is a 4xx (or, for a bug of ours, 500) answer ``{"error": "one line"}``; the server
keeps serving. The client names only images it uploaded, the bundled photos, layers, channels
and positions: never a path, a model or a checkpoint.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Path as PathParam, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from ..errors import DeconvnetError, LayerNotFoundError
from ..mirror import RULES
from .explorer import Explorer, ExplorerError, TooLargeError

__all__ = ["BackgroundServer", "create_app"]

Rule = Annotated[Literal[RULES] | None,  # type: ignore[valid-type]  # the library's rules, spelled once
                 Query(description="what the mirror does at rectifiers (default: the server's)")]
ImageId = Annotated[str, PathParam(description="an id from POST /api/images or /api/photos/{name}",
                                   pattern=r"^[0-9a-f]{20}$")]
Index = Annotated[int, PathParam(ge=0, le=2**31 - 1)]


class OcclusionRequest(BaseModel):
    """An occlusion run: a ``size`` x ``size`` square of the mean colour slid by ``stride``."""

    model_config = ConfigDict(extra="forbid")
    size: int = Field(ge=1, le=4096, description="occluder side in input pixels")
    stride: int = Field(ge=1, le=4096, description="occluder step in input pixels")
    target: int | None = Field(default=None, ge=0, description="class to watch (default: the predicted one)")
    layer: str | None = Field(default=None, max_length=200,
                              description="layer whose strongest map is followed (default: the last with maps)")


def _one_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "bad request"
    return line[:500]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": _one_line(message)}, status_code=status)


def _swagger_assets() -> Path | None:
    """Swagger UI's files from the swagger-ui-bundle wheel (the serve extra), if installed."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    folder = Path(swagger_ui_path)
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


def _openapi_30(schema: dict) -> dict:
    """FastAPI's OpenAPI 3.1 document in the 3.0 dialect the bundled Swagger UI (4.x) reads: the
    one 3.1 construct this API uses, ``anyOf: [X, {"type": "null"}]``, becomes X with
    ``nullable: true``. /openapi.json stays 3.1."""

    def convert(value: Any) -> Any:
        if isinstance(value, list):
            return [convert(v) for v in value]
        if not isinstance(value, dict):
            return value
        value = {k: convert(v) for k, v in value.items()}
        options = value.get("anyOf")
        if isinstance(options, list) and {"type": "null"} in options:
            rest = [o for o in options if o != {"type": "null"}]
            value.pop("anyOf")
            value.update(rest[0] if len(rest) == 1 else {"anyOf": rest})
            value["nullable"] = True
        return value

    return {**convert(schema), "openapi": "3.0.3"}


def _closing(explorer: Explorer):  # type: ignore[no-untyped-def]
    """The app's lifespan: the explorer's threads stop when the server does."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            explorer.close()

    return lifespan


def create_app(explorer: Explorer) -> FastAPI:
    """The FastAPI application serving ``explorer`` (run it with uvicorn)."""
    assets = _swagger_assets()
    app = FastAPI(title=f"deconvnet explorer: {explorer.name}",
                  description="What a convolutional network sees, unit by unit: every action of the page at / is "
                              "one call of this API. Pictures come as data:image/png URLs.",
                  version="1", docs_url=None if assets else "/docs", redoc_url=None, lifespan=_closing(explorer))
    if assets:  # /docs from the swagger-ui-bundle wheel: works offline (FastAPI's own loads it from a CDN)
        app.mount("/docs-assets", StaticFiles(directory=str(assets)), name="docs-assets")

        @app.get("/docs/openapi-3.0.json", include_in_schema=False)
        def openapi_30() -> dict:
            return _openapi_30(app.openapi())

        @app.get("/docs", include_in_schema=False)
        def docs() -> HTMLResponse:
            return get_swagger_ui_html(openapi_url="/docs/openapi-3.0.json", title=f"{app.title}: API",
                                       swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                       swagger_css_url="/docs-assets/swagger-ui.css",
                                       swagger_favicon_url="/docs-assets/favicon-32x32.png")
    app.state.explorer = explorer

    @app.exception_handler(ExplorerError)
    async def explorer_error(request: Request, error: ExplorerError) -> JSONResponse:
        return _error(error.status, str(error))

    @app.exception_handler(DeconvnetError)
    async def library_error(request: Request, error: DeconvnetError) -> JSONResponse:
        return _error(404 if isinstance(error, LayerNotFoundError) else 400, str(error))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        if not where or first.get("type") == "json_invalid":
            return _error(422, f"the body must be a JSON object as /docs shows: {first.get('msg', 'invalid')}")
        return _error(422, f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        if error.status_code == 404:
            return _error(404, f"no page or API path {request.url.path[:200]} (the API is listed at /docs)")
        return _error(error.status_code, str(error.detail))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        return _error(500, f"internal error ({type(error).__name__}): {error}")

    static = resources.files("deconvnet.serve") / "static"

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(str(static / "index.html"), media_type="text/html")

    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    if explorer.atlas is not None:
        app.mount("/atlas", StaticFiles(directory=str(explorer.atlas.folder), html=True), name="atlas")

    @app.get("/api/model", summary="The model: its layers with feature maps, classes, rules, photos, limits")
    def model() -> dict:
        return explorer.info()

    @app.post("/api/images", summary="Upload an image (the file's bytes as the body); returns its id and top-5",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
    async def upload(request: Request,
                     name: Annotated[str, Query(max_length=200, description="shown in the page")] = "upload") -> dict:
        limit = explorer.max_upload_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise TooLargeError(f"the upload is {declared} bytes; this server takes at most {limit}")
        body = bytearray()
        async for part in request.stream():
            body += part
            if len(body) > limit:
                raise TooLargeError(f"the upload is over {limit} bytes, this server's limit")
        return await run_in_threadpool(explorer.add_upload, bytes(body), name)

    @app.post("/api/photos/{name}", summary="Trace one of the bundled photos; returns its id and top-5")
    def add_photo(name: Annotated[str, PathParam(max_length=100)]) -> dict:
        return explorer.add_photo(name)

    @app.get("/api/images/{image}", summary="A traced image: the model's input as a picture, and its top-5")
    def describe(image: ImageId) -> dict:
        return explorer.describe(image)

    @app.get("/api/images/{image}/classes/{target}", summary="A class's reconstruction")
    def class_projection(image: ImageId, target: Index, rule: Rule = None) -> dict:
        return explorer.class_projection(image, target, rule)

    @app.get("/api/images/{image}/pixels/{row}/{col}",
             summary="Segmentation models: the class predicted at a pixel, reconstructed from that pixel alone")
    def pixel(image: ImageId, row: Index, col: Index, rule: Rule = None) -> dict:
        return explorer.pixel(image, row, col, rule)

    @app.get("/api/images/{image}/layers/{layer}",
             summary="A layer's channels: their maps as one sprite, strongest activation and where")
    def layer(image: ImageId, layer: Annotated[str, PathParam(max_length=200)]) -> dict:
        return explorer.layer(image, layer)

    @app.get("/api/images/{image}/layers/{layer}/channels/{channel}",
             summary="A channel's strongest unit projected alone, cropped to its receptive field")
    def channel(image: ImageId, layer: Annotated[str, PathParam(max_length=200)], channel: Index,
                rule: Rule = None) -> dict:
        return explorer.channel(image, layer, channel, rule)

    @app.get("/api/images/{image}/layers/{layer}/channels/{channel}/units/{row}/{col}",
             summary="One unit (row, col) of a channel's map projected alone, cropped to its receptive field")
    def unit(image: ImageId, layer: Annotated[str, PathParam(max_length=200)], channel: Index, row: Index,
             col: Index, rule: Rule = None) -> dict:
        return explorer.unit(image, layer, channel, row, col, rule)

    @app.post("/api/images/{image}/occlusion", summary="Start occlusion sensitivity; poll /api/jobs/{job}")
    def start_occlusion(image: ImageId, request: OcclusionRequest) -> dict:
        return explorer.start_occlusion(image, request.size, request.stride, request.target, request.layer)

    @app.get("/api/jobs/{job}", summary="An occlusion job: progress, then its maps (or its error)")
    def job(job: Annotated[str, PathParam(pattern=r"^[0-9a-f]{16}$")]) -> dict:
        return explorer.job(job)

    @app.get("/api/atlas/{layer}/{channel}", summary="A channel's top units over the atlas's dataset (--atlas)")
    def atlas(layer: Annotated[str, PathParam(max_length=200)], channel: Index) -> dict:
        return explorer.atlas_channel(layer, channel)

    return app


class BackgroundServer:
    """``app`` under uvicorn in a thread, on a free port of ``host``, for notebooks, tests and the
    benchmark: ``with BackgroundServer(create_app(explorer)) as server: server.url``."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1") -> None:
        import socket

        import uvicorn

        # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets that say so, and without it
        # every keep-alive answer waits ~40 ms for the client's delayed ACK.
        self._socket = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM,
                                     socket.IPPROTO_TCP)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, 0))
        port = self._socket.getsockname()[1]
        self.url = f"http://{host}:{port}"
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        name="deconvnet-serve", daemon=True)

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the explorer's server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self._socket.close()
