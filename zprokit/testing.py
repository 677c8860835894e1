"""pytest fixtures for testing code that uses zprokit (a plugin, registered by entry point).

``zprokit_main``
    a running ``Main`` on a free loopback port (``tcp://127.0.0.1:0``), closed
    after the test.
``zprokit_window``
    a factory: ``zprokit_window(name=None, **options)`` returns a ``Window``
    connected to ``zprokit_main`` (a fresh name if none is given); every
    window it made is closed after the test, before the main.

Both are function-scoped, so each test starts from a clean registry. The
windows run in the test's own process; for real processes use
``zprokit_main.create_window``, whose processes the main ends on close.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Iterator

import pytest

from .main import Main
from .window import Window

__all__ = ["zprokit_main", "zprokit_window"]


@pytest.fixture
def zprokit_main() -> Iterator[Main]:
    """A running main on a free loopback port, closed after the test."""
    main = Main("tcp://127.0.0.1:0")
    try:
        yield main
    finally:
        main.close()


@pytest.fixture
def zprokit_window(zprokit_main: Main) -> Iterator[Callable[..., Window]]:
    """A factory of windows connected to ``zprokit_main``, closed after the test."""
    made: list[Window] = []
    numbers = itertools.count(1)

    def make(name: str | None = None, **options: Any) -> Window:
        options.setdefault("key", zprokit_main.key)
        options.setdefault("serializer", zprokit_main.serializer)
        window = Window(name or f"window-{next(numbers)}", zprokit_main.endpoint, **options)
        made.append(window)
        return window

    try:
        yield make
    finally:
        for window in reversed(made):
            window.close()
