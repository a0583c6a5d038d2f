"""Progress reporting without printing: long analyses take a tqdm-like factory, called as
``factory(total=, desc=, unit=)``, and advance what it returns. The library's default shows
nothing; the command line passes ``tqdm.tqdm``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["Progress", "ProgressFactory", "Silent"]


class Progress(Protocol):
    """What a progress bar needs to offer (``tqdm.tqdm`` does)."""

    def update(self, n: int = 1) -> Any: ...
    def close(self) -> Any: ...


ProgressFactory = Callable[..., Progress]  # called as factory(total=, desc=, unit=)


class Silent:
    """The default: no bar."""

    def __init__(self, **_: object) -> None:
        pass

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass
