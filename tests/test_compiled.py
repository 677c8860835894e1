"""The compiled hot path and its pure-Python twin: one list of modules, each build when asked for,
and stale builds never run.

The suite itself runs twice in CI, compiled and with ``ZPROKIT_PURE_PYTHON=1``; these tests check
that each run really ran the build it names. Each build is looked at in a fresh interpreter, so
the answer does not depend on what this process has imported.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import zprokit
from zprokit import _compiled, _env

from conftest import standalone_env

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "zprokit"
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]  # the one setuptools gives an extension here

# Run in a fresh interpreter: where each listed module came from, and the build it makes of that.
REPORT = """
import importlib, json, zprokit
from zprokit import _compiled
files = {name: importlib.import_module(name).__file__ for name in _compiled.MODULES}
print(json.dumps({"files": files, "mode": zprokit.build_mode()}))
"""


def fresh_interpreter(pure: bool, cwd: Path | None = None) -> dict:
    env = standalone_env()
    env.pop(_env.PURE_PYTHON, None)
    if pure:
        env[_env.PURE_PYTHON] = "1"
    result = subprocess.run([sys.executable, "-c", REPORT], env=env, cwd=cwd, capture_output=True, text=True,
                            timeout=30, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    report["stderr"] = result.stderr
    return report


def built_here() -> list[str]:
    """The listed modules with an extension module beside their source in this checkout."""
    return [name for name in _compiled.MODULES if source_of(name).with_name(leaf(name) + SUFFIX).exists()]


def source_of(name: str) -> Path:
    return REPO.joinpath(*name.split(".")).with_suffix(".py")


def leaf(name: str) -> str:
    return name.rpartition(".")[2]


def test_setup_py_compiles_the_modules_listed_in_zprokit_compiled():
    """One list: setup.py reads ``_compiled.MODULES`` from its source (it cannot import the package
    it builds); every entry is a module of the package, not a package."""
    spec = importlib.util.spec_from_file_location("zprokit_setup", REPO / "setup.py")
    assert spec is not None and spec.loader is not None
    setup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(setup)  # guarded by __name__ == "__main__": defines, builds nothing
    assert setup.compiled_modules() == _compiled.MODULES
    assert [ext.name for ext in setup.extensions()] == list(_compiled.MODULES)
    for ext in setup.extensions():
        assert ext.sources == [str(source_of(ext.name).relative_to(REPO))] and source_of(ext.name).is_file()
    assert len(set(_compiled.MODULES)) == len(_compiled.MODULES)
    assert "zprokit" not in _compiled.MODULES and not any(name.endswith("__init__") for name in _compiled.MODULES)


def test_pure_python_runs_the_source_of_every_listed_module():
    report = fresh_interpreter(pure=True)
    assert sorted(report["files"]) == sorted(_compiled.MODULES)
    for name, file in report["files"].items():
        assert file == str(source_of(name)), name
    assert report["mode"] == f"pure Python ({_env.PURE_PYTHON}=1)"


def test_a_compiled_build_runs_compiled_everywhere():
    """After an install that compiled (its extension modules are here), every listed module runs
    compiled: a module left to its source by a failed or stale build is caught. In CI (``CI`` set)
    a compiled build is required, not just checked: CI has gcc and Cython, so a build that fell back
    to pure Python there is a broken build, not a machine without a compiler."""
    built = built_here()
    if not built and not os.environ.get("CI"):
        pytest.skip("no compiled build here (no C compiler or Cython at install): pure Python only")
    assert built == list(_compiled.MODULES), f"not built: {sorted(set(_compiled.MODULES) - set(built))}"
    report = fresh_interpreter(pure=False)
    for name, file in report["files"].items():
        assert file == str(source_of(name).with_name(leaf(name) + SUFFIX)), name
    assert report["mode"].startswith("compiled (Cython 3."), report["mode"]
    assert "newer than its compiled module" not in report["stderr"]


def test_the_mode_comes_from_what_was_imported(monkeypatch: pytest.MonkeyPatch):
    """``build_mode`` reads the modules' files, not the environment: one module in each build
    is "partly compiled", naming the one that runs as source."""
    compiled = ModuleType("zprokit.protocol")
    compiled.__file__ = str(PACKAGE / ("protocol" + SUFFIX))
    source = ModuleType("zprokit._loop")
    source.__file__ = str(PACKAGE / "_loop.py")
    monkeypatch.setattr(_compiled, "MODULES", ("zprokit.protocol", "zprokit._loop"))
    monkeypatch.setitem(sys.modules, "zprokit.protocol", compiled)
    monkeypatch.setitem(sys.modules, "zprokit._loop", source)
    monkeypatch.setenv(_env.PURE_PYTHON, "1")  # says pure; the files say otherwise, and win
    mode = zprokit.build_mode()
    assert mode.startswith("partly compiled (1 of 2 modules; Cython") and mode.endswith("source: zprokit._loop)")
    monkeypatch.setitem(sys.modules, "zprokit.protocol", source)
    assert zprokit.build_mode() == f"pure Python ({_env.PURE_PYTHON}=1)"
    monkeypatch.delenv(_env.PURE_PYTHON)
    assert zprokit.build_mode() == "pure Python (no compiled modules)"


# --- stale builds -------------------------------------------------------------------------------


def fake_checkout(tmp_path: Path, *, checkout: bool = True) -> Path:
    """A package ``hotpkg`` with a module ``hot`` and, beside it, a file named as its extension
    module (not a real one: loading it fails, which shows when the extension was chosen)."""
    root = tmp_path / "root"
    (root / "hotpkg").mkdir(parents=True)
    if checkout:
        (root / "setup.py").write_text("")
    (root / "hotpkg" / "__init__.py").write_text("")
    (root / "hotpkg" / "hot.py").write_text("WHERE = 'source'\n")
    (root / "hotpkg" / ("hot" + SUFFIX)).write_bytes(b"not an extension module")
    return root


def set_ages(root: Path, *, source_newer: bool) -> None:
    older, newer = 1_700_000_000_000_000_000, 1_700_000_100_000_000_000
    source, built = root / "hotpkg" / "hot.py", root / "hotpkg" / ("hot" + SUFFIX)
    os.utime(source, ns=(newer, newer) if source_newer else (older, older))
    os.utime(built, ns=(older, older) if source_newer else (newer, newer))


def import_hot(monkeypatch: pytest.MonkeyPatch, root: Path, pure: bool = False) -> ModuleType:
    finder = _compiled.SourceFinder(pure, {"hotpkg.hot"}, str(root))
    monkeypatch.setattr(sys, "meta_path", [finder, *sys.meta_path])
    monkeypatch.syspath_prepend(str(root))
    for name in ("hotpkg", "hotpkg.hot"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    importlib.invalidate_caches()
    return importlib.import_module("hotpkg.hot")


def test_an_extension_newer_than_its_source_is_the_one_imported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = fake_checkout(tmp_path)
    set_ages(root, source_newer=False)
    with pytest.raises(ImportError):  # the fake extension was chosen, over the source
        import_hot(monkeypatch, root)


def test_a_stale_extension_is_passed_over_for_its_source_with_a_warning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    root = fake_checkout(tmp_path)
    set_ages(root, source_newer=True)
    with caplog.at_level(logging.WARNING, logger=_compiled.__name__):
        module = import_hot(monkeypatch, root)
    assert module.WHERE == "source" and module.__file__ == str(root / "hotpkg" / "hot.py")
    [record] = caplog.records
    assert "hotpkg.hot" in record.getMessage() and "pip install -e ." in record.getMessage()


def test_an_installed_copy_is_never_judged_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Without ``setup.py`` beside the package (an installed wheel: its file times are those of
    unpacking), the extension is imported whatever the times say."""
    root = fake_checkout(tmp_path, checkout=False)
    set_ages(root, source_newer=True)
    with pytest.raises(ImportError):
        import_hot(monkeypatch, root)


def test_pure_python_passes_over_even_a_fresh_extension(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = fake_checkout(tmp_path)
    set_ages(root, source_newer=False)
    assert import_hot(monkeypatch, root, pure=True).WHERE == "source"


def test_editing_a_compiled_module_runs_the_edit(tmp_path: Path):
    """End to end, on a copy of this checkout's package with its extension modules: a module
    touched after the build runs from its source, the others stay compiled, and the developer is
    told to rebuild."""
    if built_here() != list(_compiled.MODULES):
        pytest.skip("needs a compiled build of every listed module")
    copy = tmp_path / "checkout"
    copy.mkdir()
    shutil.copy(REPO / "setup.py", copy / "setup.py")
    shutil.copytree(PACKAGE, copy / "zprokit", copy_function=shutil.copy2,
                    ignore=shutil.ignore_patterns("__pycache__"))
    edited = copy / "zprokit" / "protocol.py"
    edited.write_text(edited.read_text() + "\nEDITED = True\n")
    report = fresh_interpreter(pure=False, cwd=copy)
    assert report["files"]["zprokit.protocol"] == str(edited)
    others = {name: file for name, file in report["files"].items() if name != "zprokit.protocol"}
    assert all(file.endswith(SUFFIX) and file.startswith(str(copy)) for file in others.values()), others
    assert report["mode"].endswith("source: zprokit.protocol)"), report["mode"]
    assert "zprokit.protocol" in report["stderr"] and "pip install -e ." in report["stderr"]
