"""``zprokit bench``: zprokit beside raw pyzmq, doing the same work in one run on this machine.

Only the command's options live here, so ``zprokit`` (every command) imports
no more of the benchmark than this; the measurements and the child programs
(``_run``, which imports ``_measure``, ``_children`` and ``_common``) are
imported when they are used: by ``run_from_args``, by
``python -m zprokit.bench``, or by reading any of their names from this
package (``bench.METRICS``, ``bench.BenchError`` ...). See ``_run`` for what
each row measures.
"""

from __future__ import annotations

import argparse
import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._run import BenchError, run_from_args

__all__ = ["add_arguments", "run_from_args", "BenchError"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``zprokit bench`` (and of ``python -m zprokit.bench``)."""
    parser.add_argument("--quick", action="store_true",
                        help="small counts and one round: a smoke test that runs in seconds, not a measurement")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    parser.add_argument("--rounds", type=_positive_int, metavar="N",
                        help="rounds, alternating which side goes first (default: 3; 1 with --quick)")
    parser.add_argument("--windows", type=_positive_int, metavar="N",
                        help="windows connected at once in the memory and routing rows (default: 200; 20 with --quick)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number above 0, got {text!r}")
    return value



def __getattr__(name: str) -> Any:
    # Everything else is the measurement module's, loaded on first use. (Not `from . import _run`:
    # the import machinery asks this very hook for `_run` before the submodule is loaded.)
    if name.startswith("__") or name == "_run":
        raise AttributeError(name)
    return getattr(importlib.import_module(f"{__name__}._run"), name)
