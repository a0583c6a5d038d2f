"""A live explorer in the browser: ``deconvnet serve`` (the ``serve`` extra: FastAPI, uvicorn).

    explorer = Explorer(load_model("vgg16"), name="vgg16")   # the model, traced images, a worker
    app = create_app(explorer)                                # the page at /, the JSON API at /api
    uvicorn.run(app, host="127.0.0.1", port=8000)

:mod:`deconvnet.serve.explorer` is the engine (no web imports), :mod:`deconvnet.serve.app` the
FastAPI application, ``static/`` the page (plain HTML, CSS and JavaScript, nothing fetched from
elsewhere).
"""

from .explorer import BadImageError, Explorer, ExplorerError, NotFoundError, TooLargeError

__all__ = ["BadImageError", "Explorer", "ExplorerError", "NotFoundError", "TooLargeError"]
