"""zprokit's build: setup.cfg holds the metadata; this file adds the compiled hot path.

Cython compiles the modules named in ``zprokit/_compiled.py`` (``MODULES``),
the package's own ``.py`` files, into extension modules installed beside
them. Where Cython or a C compiler is missing, or a module fails to
compile, the build says so in one warning and goes on without any
extension: the same ``.py`` files run as pure Python. ``zprokit --version``
says which build was installed.
"""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, ExecError, PlatformError

HERE = Path(__file__).resolve().parent
FALLBACK = "zprokit: no C compiler / Cython: installing the pure-Python build"

# Correctness over speed: the compiled modules must behave exactly as their source does.
DIRECTIVES = {
    "language_level": 3,
    "binding": True,  # functions keep __code__, __defaults__ and signatures: inspect and tracebacks work
    # Annotations are for mypy, not C types: under annotation typing `x: float` turns an int into a
    # float and `x: bytes` refuses a memoryview, so the compiled module would differ from its source.
    "annotation_typing": False,
}

# What a missing or failing C toolchain raises (CompileError and LinkError are CCompilerErrors).
TOOLCHAIN_ERRORS = (CCompilerError, ExecError, PlatformError, OSError)


def compiled_modules() -> tuple[str, ...]:
    """``MODULES`` from zprokit/_compiled.py, read from its source: the package is not importable
    while it is being built (its dependencies may not be installed yet)."""
    tree = ast.parse((HERE / "zprokit" / "_compiled.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == "MODULES":
            assert node.value is not None
            return tuple(ast.literal_eval(node.value))
    raise SystemExit("zprokit/_compiled.py defines no MODULES")


# Without debug information (Python's own flags ask for it): the extensions are a fifth of the size
# (about 4 MB in all instead of 22), and what it describes is Cython's generated C, not zprokit's code.
COMPILE_ARGS = ["-g0"]


def extensions() -> list[Extension]:
    return [Extension(name, [name.replace(".", "/") + ".py"], extra_compile_args=COMPILE_ARGS)
            for name in compiled_modules()]


class OptionalBuildExt(build_ext):
    """``build_ext`` that falls back to the pure-Python build instead of failing the install."""

    def finalize_options(self) -> None:
        # Translate to C before build_ext takes its list of extensions (it marks each one), from
        # the .py files every time: an editable install finalizes a second build_ext.
        try:
            from Cython.Build import cythonize

            # Generated C goes under build/, out of the package.
            self.distribution.ext_modules = cythonize(
                extensions(), compiler_directives=DIRECTIVES, build_dir=os.path.join("build", "cython"), quiet=True,
                nthreads=os.cpu_count() or 1)
        except Exception as e:  # ImportError without Cython; any error of Cython's own while translating
            self.failure: BaseException | None = e
        else:
            self.failure = None
        super().finalize_options()
        if self.parallel is None:
            self.parallel = os.cpu_count() or 1  # the modules compile one per core

    def run(self) -> None:
        self.wanted_inplace = self.inplace  # build_ext.run clears it while it builds
        if self.failure is not None:
            self._fall_back(self.failure)
            return
        try:
            super().run()
        except TOOLCHAIN_ERRORS as e:
            self._fall_back(e)

    def _fall_back(self, reason: BaseException) -> None:
        """Warn, and leave no extension behind (those built before one failed included), so the
        build is all pure Python rather than partly compiled by accident."""
        detail = (str(reason).strip().splitlines() or [""])[-1]
        print(f"WARNING: {FALLBACK} ({type(reason).__name__}: {detail})", file=sys.stderr)
        for inplace in {False, self.wanted_inplace}:
            self.inplace = inplace
            for ext in self.extensions:
                built = self.get_ext_fullpath(ext.name)
                if os.path.exists(built):
                    os.remove(built)
        self.inplace = self.wanted_inplace
        self.extensions = []


if __name__ == "__main__":  # as pip's build backend runs it; tests/test_compiled.py imports it
    setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
