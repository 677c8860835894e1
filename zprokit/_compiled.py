"""Which modules Cython compiles, which build this process runs, and pure Python on demand.

The modules in ``MODULES`` are the hot path: every message goes through
them. They are plain Python, and ``setup.py`` compiles those same files
(no second copy) into extension modules beside them when Cython and a C
compiler are there; where they are not, the install carries on and the
``.py`` files run as they are. Python's import prefers an extension module
to the source beside it, so nothing else in zprokit knows which it got.

Two cases import the source even though an extension is there, through a
finder that ``zprokit/__init__.py`` puts on ``sys.meta_path`` before it
imports anything else (``install``):

- ``ZPROKIT_PURE_PYTHON=1``: to compare, to debug with the source's frames,
  or to run the test suite both ways;
- in a source checkout (``setup.py`` beside the package: an editable
  install), a module whose ``.py`` is newer than its extension: the
  extension was built from older code, so running it would run code that
  is no longer there. A warning is logged, once per module. An installed
  copy is never checked: nobody edits it, and its file times are those of
  unpacking the wheel, in any order.

``build_mode`` says what was imported, from the modules' ``__file__``,
not from the environment alone. ``setup.py`` reads ``MODULES`` from this
file's source (it cannot import the package it is building), so it is a
literal tuple.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import sys
from types import ModuleType
from typing import Collection, Sequence

from . import _env

__all__ = ["MODULES", "SourceFinder", "build_mode", "install", "is_compiled", "pure_python_forced"]

log = logging.getLogger(__name__)

# The hot path, in the order of a message: the wire format, the session's rules, the nodes' traffic,
# the caller's and the callee's bookkeeping, the I/O loop and where handlers run, payloads, streams.
MODULES: tuple[str, ...] = (
    "zprokit.protocol",
    "zprokit.session._guard",
    "zprokit.session._main",
    "zprokit.session._window",
    "zprokit._router",
    "zprokit._serve",
    "zprokit._relay",
    "zprokit._inbox",
    "zprokit._link",
    "zprokit._requests",
    "zprokit._calls",
    "zprokit._loop",
    "zprokit._handoff",
    "zprokit._outbox",
    "zprokit._dispatch",
    "zprokit.serializers",
    "zprokit._streams",
)

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the folder holding the package
_CHECKOUT_MARK = "setup.py"  # beside the package in a source checkout, never in site-packages


def pure_python_forced() -> bool:
    """``ZPROKIT_PURE_PYTHON`` is set to anything but "" or "0"."""
    return os.environ.get(_env.PURE_PYTHON, "") not in ("", "0")


class SourceFinder(importlib.abc.MetaPathFinder):
    """Finds the ``.py`` of a module in ``modules`` when it must run as source: always if ``pure``,
    else when it is stale (in a checkout, newer than its extension); otherwise leaves the module to
    the usual finders, which take an extension module over its source. ``root`` holds the package."""

    def __init__(self, pure: bool, modules: Collection[str], root: str) -> None:
        self.pure = pure
        self.modules = frozenset(modules)
        self.checkout = os.path.isfile(os.path.join(root, _CHECKOUT_MARK))
        self.warned: set[str] = set()

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.modules or not path:
            return None
        leaf = fullname.rpartition(".")[2]
        for folder in path:
            source = os.path.join(folder, leaf + ".py")
            if not os.path.isfile(source):
                continue
            if self.pure or (self.checkout and self._stale(fullname, folder, leaf, source)):
                return importlib.util.spec_from_file_location(fullname, source)
            return None
        return None

    def _stale(self, fullname: str, folder: str, leaf: str, source: str) -> bool:
        """An extension beside ``source``, older than it; warned once."""
        built = _extension_beside(folder, leaf)
        if built is None or os.stat(built).st_mtime_ns >= os.stat(source).st_mtime_ns:
            return False
        if fullname not in self.warned:
            self.warned.add(fullname)
            log.warning("%s: %s is newer than its compiled module %s, so the source runs; rebuild "
                        "with `pip install -e .`", fullname, source, os.path.basename(built))
        return True


def _extension_beside(folder: str, leaf: str) -> str | None:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = os.path.join(folder, leaf + suffix)
        if os.path.isfile(candidate):
            return candidate
    return None


def install() -> None:
    """Put the finder first on ``sys.meta_path``, once; before any module in ``MODULES`` is imported."""
    if not any(isinstance(f, SourceFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, SourceFinder(pure_python_forced(), MODULES, _ROOT))


def is_compiled(module: ModuleType) -> bool:
    """``module`` was loaded from an extension module (its ``__file__`` says so)."""
    file = getattr(module, "__file__", None) or ""
    return file.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def _cython_version() -> str:
    """The Cython that built the loaded extensions: each loads Cython's shared module of the
    version that made it, ``_cython_3_0_11`` for 3.0.11 (Cython itself is only a build dependency)."""
    versions = sorted(name[len("_cython_"):].replace("_", ".") for name in sys.modules if name.startswith("_cython_"))
    return "Cython " + ", ".join(versions) if versions else "Cython"


def build_mode() -> str:
    """Which build runs here: "compiled (Cython 3.x.y)", "pure Python (...)" with why, or
    "partly compiled (...)" naming the modules that run as source."""
    compiled = [name for name in MODULES if is_compiled(importlib.import_module(name))]
    if len(compiled) == len(MODULES):
        return f"compiled ({_cython_version()})"
    if not compiled:
        why = f"{_env.PURE_PYTHON}={os.environ[_env.PURE_PYTHON]}" if pure_python_forced() else "no compiled modules"
        return f"pure Python ({why})"
    source = ", ".join(name for name in MODULES if name not in compiled)
    return f"partly compiled ({len(compiled)} of {len(MODULES)} modules; {_cython_version()}; source: {source})"
