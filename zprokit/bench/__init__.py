"""``zprokit bench``: zprokit beside raw pyzmq, doing the same work in one run on this machine.

Only the command's options live here (and ``run_from_args``, which picks the
benchmark they ask for), so ``zprokit`` (every command) imports no more of
the benchmark than this; the measurements and the child programs (``_run``,
which imports ``_measure``, ``_children``, ``_peer_servers`` and
``_common``; ``_peers`` for ``--peers``) are imported when they are used: by
``run_from_args``, by ``python -m zprokit.bench``, or by reading any of
their names from this package (``bench.METRICS``, ``bench.BenchError``
...). See ``_run`` for what each row measures, ``_peers`` for the peers.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import TYPE_CHECKING, Any, TextIO

from ._common import PEER_NAMES

if TYPE_CHECKING:
    from ._run import BenchError

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
    parser.add_argument("--peers", nargs="?", const=PEER_NAMES, type=_peer_names, metavar="NAMES",
                        help="instead, the same 64-byte echo on the IPC libraries users come from, beside zprokit "
                             "and raw pyzmq: every one installed, or those named (comma-separated: "
                             f"{','.join(PEER_NAMES)}); none is a dependency of zprokit: "
                             "pip install Pyro5 rpyc grpcio zerorpc")


def run_from_args(args: argparse.Namespace, out: TextIO | None = None) -> dict[str, Any]:
    """Run the benchmark the options in ``args`` ask for (``--peers``: the peers'; else zprokit beside raw
    pyzmq), print its table to ``out`` (stdout), write ``--json``, return the figures. Raises ``BenchError``."""
    module = importlib.import_module(f"{__name__}.{'_peers' if getattr(args, 'peers', None) else '_run'}")
    report: dict[str, Any] = module.run_from_args(args, sys.stdout if out is None else out)
    return report


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number above 0, got {text!r}")
    return value


def _peer_names(text: str) -> tuple[str, ...]:
    names = tuple(name.strip().lower() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in PEER_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"expected some of {','.join(PEER_NAMES)}, got {text!r}")
    return names



def __getattr__(name: str) -> Any:
    # Everything else is the measurement module's, loaded on first use. (Not `from . import _run`:
    # the import machinery asks this very hook for `_run` before the submodule is loaded.)
    if name.startswith("__") or name == "_run":
        raise AttributeError(name)
    return getattr(importlib.import_module(f"{__name__}._run"), name)
