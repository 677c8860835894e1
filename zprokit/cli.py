"""The ``zprokit`` command: demo, main, window, windows, ping, keygen, bench; ``--version`` also
names the build (the hot path compiled, or pure Python: ``zprokit.build_mode``).

The key is never a command-line value (``ps`` shows those to every user):
it comes from ``--key-file`` or the ``ZPROKIT_KEY`` (``ZPROKIT_KEY_FILE``)
environment variable; a key file that other users can read is refused.
CURVE keys come from files too (``--curve-secret-file``, ``--curve-allow``,
``--curve-server-key``); ``keygen --curve`` makes a keypair.
User errors (a wrong key, a main that does not answer, a taken name, a bad
``module:function``) end with one line on stderr and exit status 1; usage
errors with status 2; Ctrl-C in a short command with 130. ``main`` and
``window`` treat SIGINT and SIGTERM as a request to close cleanly (status 0).

Printing the transcript and the tables to stdout is this module's job; the
library itself only logs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import secrets
import signal
import statistics
import sys
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence, TypeVar, cast

import zmq

from . import __version__, _env, bench  # the package holds only the options: the measurements load when run
from ._compiled import build_mode
from .api import init_expose_in_main_world
from .errors import ZprokitError
from .main import Main
from .security import ENV_KEY, ENV_KEY_FILE, env_key, generate_key, read_curve_allow_file, read_key_file, read_secret
from .window import Window

log = logging.getLogger(__name__)

__all__ = ["main"]

PROG = "zprokit"


class CLIError(Exception):
    """A mistake the user can fix; reported as one line, without a traceback."""


class _Stop(KeyboardInterrupt):
    """Raised in the main thread by SIGINT or SIGTERM to end a ``window`` target."""


# --- commands -------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from . import _demo

    return _demo.run(sys.stdout)


def cmd_main(args: argparse.Namespace) -> int:
    app = _load(args.app, "APP")
    key = _key_from_file(args)
    curve = _curve_main_options(args)
    stop = _SignalLatch()
    with stop, _on_signals(stop.set):
        try:
            node = Main(args.bind, key=key, pub_endpoint=args.pub_bind, serializer=args.serializer,
                        heartbeat=args.heartbeat, liveness=args.liveness, **curve)
        except (ValueError, OSError) as e:
            raise CLIError(f"cannot start a main on {args.bind}: {e}") from None
        with node:
            if key is None and env_key() is None and not curve:
                log.warning("no key given: a random one is in force, so only windows made with create_window can join")
            app(node)
            _out(f"zprokit main: listening on {node.endpoint} (broadcasts on {node.pub_endpoint})")
            stop.wait()
            log.info("zprokit main: closing")
    return 0


def cmd_window(args: argparse.Namespace) -> int:
    target = _load(args.target, "TARGET")
    options = _connect_options(args)

    def stop(signum: int) -> None:
        raise _Stop(signum)

    with _on_signals(stop):
        try:
            # Ready (for wait_for_window, and to be picked by call_any) once the target has its
            # callbacks in place: it waits in wait_closed(), calls window.ready(), or returns.
            window = _connect(init_expose_in_main_world, args.name, exit_with_main=args.exit_with_main,
                              heartbeat=args.heartbeat, liveness=args.liveness, groups=args.group, ready=False,
                              **options)
        except _Stop:
            return 0
        try:
            _out(f"zprokit window: {window.name!r} connected to {window.endpoint}")
            target(window)
            window.ready()
        except _Stop:
            log.info("zprokit window: closing on a signal")
        except Exception:
            log.exception("zprokit window: target %s raised", args.target)
            return 1
        finally:
            window.close()
    return 0


def cmd_windows(args: argparse.Namespace) -> int:
    with _temporary_window(args) as window:
        rows = window.render_msg_to_main(None, channel="zprokit.windows").result(args.timeout)
        rows = [row for row in rows if row["name"] != window.name]
    if not rows:
        _out("no windows connected")
        return 0
    columns = ["name", "host", "pid", "uptime"] + [c for c in ("messages", "groups") if c in rows[0]]
    table = [[c.upper() for c in columns]]
    table += [[_cell(c, row[c]) for c in columns] for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
    for r in table:
        _out("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    return 0


def _cell(column: str, value: Any) -> str:
    if column == "uptime":
        return _uptime(value)
    if column == "groups":  # a list (JSON) or tuple (pickle) of names; "-" for none, so the column lines up
        return ",".join(value) or "-"
    return str(value)


def cmd_ping(args: argparse.Namespace) -> int:
    if args.count < 1:
        raise CLIError("-n COUNT must be at least 1")
    sent, rtts = 0, []
    with _temporary_window(args) as window:
        _out(f"PING main at {window.endpoint}, channel zprokit.ping")
        try:
            for seq in range(1, args.count + 1):
                start = time.perf_counter()
                try:
                    echo = window.render_msg_to_main(seq, channel="zprokit.ping").result(args.timeout)
                except ZprokitError as e:
                    echo = f"{type(e).__name__}: {str(e).splitlines()[0]}"
                rtt = (time.perf_counter() - start) * 1000
                sent += 1
                if echo == seq:
                    rtts.append(rtt)
                    _out(f"seq={seq} time={rtt:.3f} ms")
                else:
                    _out(f"seq={seq} failed: {echo}")
        except KeyboardInterrupt:
            pass  # like ping(8): Ctrl-C ends the series; the summary still counts
    summary = f"{sent} sent, {len(rtts)} answered"
    if rtts:
        summary += f", min/median/max = {min(rtts):.3f}/{statistics.median(rtts):.3f}/{max(rtts):.3f} ms"
    _out(summary)
    return 0 if rtts and len(rtts) == sent else 1


def cmd_bench(args: argparse.Namespace) -> int:
    try:
        bench.run_from_args(args)
    except bench.BenchError as e:
        raise CLIError(str(e)) from None
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    if args.curve:
        return _curve_keygen(args)
    key = generate_key().decode()
    if args.output is None:
        _out(key)
        return 0
    _write_new(args.output, key, 0o600, args.force)
    _out(f"zprokit keygen: wrote a new key to {args.output} (mode 0600); use it with --key-file or {ENV_KEY}")
    return 0


def _curve_keygen(args: argparse.Namespace) -> int:
    """A CURVE keypair: the secret in FILE (mode 0600), the public key in FILE.pub."""
    public, secret = (k.decode() for k in zmq.curve_keypair())
    if args.output is None:
        _out(f"public-key {public}")
        _out(f"secret-key {secret}")
        return 0
    public_file = args.output + ".pub"
    if not args.force and os.path.exists(public_file):
        raise CLIError(f"{public_file} exists; pass --force to replace it")
    _write_new(args.output, secret, 0o600, args.force)
    _write_new(public_file, public, 0o644, True)
    _out(f"zprokit keygen: wrote a CURVE secret key to {args.output} (mode 0600) and its public key to {public_file}:")
    _out(f"public-key {public}")
    return 0


def _write_new(path: str, text: str, mode: int, replace: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if replace else os.O_EXCL)
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise CLIError(f"{path} exists; pass --force to replace it") from None
    except OSError as e:
        raise CLIError(f"cannot write {path}: {e.strerror}") from None
    with os.fdopen(fd, "w") as f:
        os.fchmod(fd, mode)  # a replaced file keeps its old mode otherwise
        f.write(text + "\n")


# --- helpers ---------------------------------------------------------------------------


def _out(text: str) -> None:
    print(text, flush=True)


def _load(spec: str, what: str) -> Callable[..., Any]:
    """``"package.module:function"`` -> the function; the current directory is importable."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CLIError(f"{what} {spec!r} should look like 'package.module:function'")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise CLIError(f"{what} {spec!r}: no module named {e.name!r}") from None
        raise  # the module exists but fails to import: its traceback is what helps
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CLIError(f"{what} {spec!r}: {module_name} has no attribute {attr!r}") from None
    if not callable(obj):
        raise CLIError(f"{what} {spec!r} is not callable")
    return cast(Callable[..., Any], obj)


def _key_from_file(args: argparse.Namespace) -> bytes | None:
    """The key in ``--key-file`` (stripped), or None to let the library read ``ZPROKIT_KEY``.

    The library's own ``read_key_file``: a file other users can read is refused.
    """
    if not args.key_file:
        return None
    return _read(read_key_file, args.key_file, "key file")


_T = TypeVar("_T")


def _read(reader: Callable[[str], _T], path: str, what: str) -> _T:
    try:
        return reader(path)
    except OSError as e:
        raise CLIError(f"cannot read {what} {path}: {e.strerror}") from None
    except ValueError as e:
        raise CLIError(str(e)) from None


def _curve_main_options(args: argparse.Namespace) -> dict[str, Any]:
    """``curve_secret_key`` and ``curve_allow`` for a ``Main``, from ``--curve-secret-file`` and ``--curve-allow``."""
    if not args.curve_secret_file and not args.curve_allow:
        return {}
    if not (args.curve_secret_file and args.curve_allow):
        raise CLIError("CURVE needs both --curve-secret-file (the main's secret key) and --curve-allow FILE")
    return {
        "curve_secret_key": _read(lambda p: read_secret(p, "CURVE secret key file"), args.curve_secret_file, "CURVE secret key file"),
        "curve_allow": _read(read_curve_allow_file, args.curve_allow, "CURVE allow-list"),
    }


def _curve_window_options(args: argparse.Namespace) -> dict[str, Any]:
    """``curve_secret_key`` and ``curve_server_key`` for a ``Window``."""
    if not args.curve_secret_file and not args.curve_server_key:
        return {}
    if not (args.curve_secret_file and args.curve_server_key):
        raise CLIError("CURVE needs both --curve-secret-file (this window's secret key) and --curve-server-key FILE")
    return {
        "curve_secret_key": _read(lambda p: read_secret(p, "CURVE secret key file"), args.curve_secret_file, "CURVE secret key file"),
        "curve_server_key": _read(_read_public, args.curve_server_key, "CURVE server key file"),
    }


def _read_public(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read().strip()


def _connect_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for a ``Window``; a missing endpoint or key is a ``CLIError``."""
    if not args.connect:
        raise CLIError("no endpoint: pass --connect ENDPOINT or set ZPROKIT_ENDPOINT")
    key = _key_from_file(args)
    curve = _curve_window_options(args)
    try:
        if key is None and not curve and env_key() is None:
            raise CLIError(
                f"no key: set {ENV_KEY} or {ENV_KEY_FILE}, or pass --key-file FILE (make one with `zprokit keygen`)"
            )
    except ValueError as e:
        raise CLIError(str(e)) from None
    return {"endpoint": args.connect, "key": key, "timeout": args.timeout, "serializer": args.serializer, **curve}


def _connect(factory: Callable[..., Window], name: str, **options: Any) -> Window:
    """Connect a window; a ``ValueError`` (a reserved name, say) is the user's to fix."""
    try:
        return factory(name, **options)
    except ValueError as e:
        raise CLIError(str(e)) from None


@contextmanager
def _temporary_window(args: argparse.Namespace) -> Iterator[Window]:
    # Under CURVE a key may only connect as the name it is listed for: --name gives that name.
    name = args.name or f"zprokit-cli-{os.getpid()}-{secrets.token_hex(3)}"
    with _connect(Window, name, workers=1, reconnect=False, **_connect_options(args)) as window:
        yield window


class _SignalLatch:
    """Set by a signal handler, waited for by the main thread: a pipe, not a ``threading.Event``.

    A handler runs in the main thread between any two bytecodes, and an ``Event.set`` there
    waits for ever when the main thread holds that Event's lock, as it does on its way into
    ``Event.wait``: a SIGTERM that came just as ``zprokit main`` started waiting left it running.
    Writing to a pipe takes no lock; the read returns once a byte is there, sent before or during it.
    """

    def __init__(self) -> None:
        self._read, self._write = os.pipe()

    def set(self, signum: int = 0) -> None:
        os.write(self._write, b"\0")

    def wait(self) -> None:
        os.read(self._read, 1)  # a signal during it runs the handler, then the read goes on (PEP 475)

    def __enter__(self) -> "_SignalLatch":
        return self

    def __exit__(self, *exc: Any) -> None:
        os.close(self._read)
        os.close(self._write)


@contextmanager
def _on_signals(handler: Callable[[int], None]) -> Iterator[None]:
    """Route the first SIGINT or SIGTERM to ``handler``; a second one gets the default behaviour."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def on_signal(signum: int, frame: Any) -> None:
        for s in previous:
            signal.signal(s, signal.default_int_handler if s == signal.SIGINT else signal.SIG_DFL)
        handler(signum)

    for s in previous:
        signal.signal(s, on_signal)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse ``type`` for a number above zero (a usage error otherwise)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not value > 0:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__} above 0, got {text!r}")
        return value

    return parse


def _uptime(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, s = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{s:02d}s"
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m" if hours < 24 else f"{hours // 24}d{hours % 24:02d}h"


# --- the parser ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    common.add_argument(
        "--log-level", type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"], default=argparse.SUPPRESS,
        help="logging threshold, on stderr (default: $ZPROKIT_LOG_LEVEL or WARNING)",
    )
    keyed = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    keyed.add_argument("--key-file", metavar="FILE", help=f"read the shared key from FILE (default: ${ENV_KEY})")
    keyed.add_argument("--serializer", choices=["pickle", "json"], default=None, help="must match the main's (default: pickle)")
    keyed.add_argument("--curve-secret-file", metavar="FILE",
                       help="CURVE: this node's secret key, from `zprokit keygen --curve -o FILE` (mode 0600)")
    client = argparse.ArgumentParser(add_help=False, allow_abbrev=False, parents=[keyed])
    client.add_argument("--curve-server-key", metavar="FILE", help="CURVE: the main's public key (its FILE.pub)")
    client.add_argument(
        "--connect", metavar="ENDPOINT", default=os.environ.get(_env.ENDPOINT),
        help="the main's endpoint, e.g. tcp://10.0.0.5:5555 (default: $ZPROKIT_ENDPOINT)",
    )
    client.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS", help="how long to wait for the main's answers (default: 10)")
    # Both ends of a link should agree on these: each side declares the other dead on its own count.
    live = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    live.add_argument("--heartbeat", type=_positive(float), default=1.0, metavar="SECONDS",
                      help="liveness interval; give the main and its windows the same (default: 1)")
    live.add_argument("--liveness", type=_positive(int), default=3, metavar="N",
                      help="a peer silent for N heartbeats is dead (default: 3)")

    parser = argparse.ArgumentParser(
        prog=PROG, parents=[common], allow_abbrev=False,
        description="electron-prokit's IPC API over ZeroMQ: run a main, windows, and look at them.",
        epilog=f"The key never goes on the command line: use --key-file FILE or ${ENV_KEY}.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}, {build_mode()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, func: Callable[[argparse.Namespace], int], help: str, parents: Sequence[argparse.ArgumentParser] = ()) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, parents=[common, *parents], allow_abbrev=False)
        p.set_defaults(func=func)
        return p

    add("demo", cmd_demo, "a main and two windows on this machine, every API call once, with a transcript")

    p = add("main", cmd_main, "run a main until SIGINT or SIGTERM", [keyed, live])
    p.add_argument("--bind", metavar="ENDPOINT", default=os.environ.get(_env.ENDPOINT, "tcp://127.0.0.1:0"),
                   help="where to bind the ROUTER (default: $ZPROKIT_ENDPOINT or tcp://127.0.0.1:0, a free port)")
    p.add_argument("--pub-bind", metavar="ENDPOINT", help="where to bind the broadcast socket (default: same host, a free port)")
    p.add_argument("--curve-allow", metavar="FILE",
                   help="CURVE: the windows allowed in, one 'name public-key' per line; each key only as its name")
    p.add_argument("app", metavar="APP", help="module:function called with the Main to register its handlers")

    p = add("window", cmd_window, "run a window: connect, call TARGET with it, exit when it returns", [client, live])
    name = os.environ.get(_env.NAME)
    p.add_argument("--name", default=name, required=not name, help="the window's name (default: $ZPROKIT_NAME)")
    p.add_argument("--group", action="append", default=[], metavar="GROUP",
                   help="join worker group GROUP (repeatable), for the main's call_any and call_all")
    p.add_argument("--exit-with-main", action=argparse.BooleanOptionalAction, default=True,
                   help="close the window when the main says goodbye (default); --no-exit-with-main keeps reconnecting")
    p.add_argument("target", metavar="TARGET", help="module:function called with the connected Window")

    short_lived = argparse.ArgumentParser(add_help=False, allow_abbrev=False, parents=[client])
    short_lived.add_argument("--name", help="connect as this window name (default: a random zprokit-cli-...; "
                                            "under CURVE, the name the key is listed for)")
    add("windows", cmd_windows, "list the windows a main has connected", [short_lived])

    p = add("ping", cmd_ping, "measure round trips to a main", [short_lived])
    p.add_argument("-n", "--count", type=int, default=4, help="how many round trips (default: 4)")

    p = add("keygen", cmd_keygen, "make a new shared key (or CURVE keypair): print it, or write it to a file with mode 0600")
    p.add_argument("-o", "--output", metavar="FILE", help="write the key to FILE (new; see --force); with --curve, the public key to FILE.pub")
    p.add_argument("--curve", action="store_true", help="make a CURVE keypair instead of a shared key")
    p.add_argument("--force", action="store_true", help="replace FILE if it exists")

    p = add("bench", cmd_bench, "measure zprokit beside raw pyzmq on this machine and print both, with their ratio")
    bench.add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``zprokit`` command; returns its exit status."""
    args = build_parser().parse_args(argv)
    level = getattr(args, "log_level", None)
    if level:
        os.environ[_env.LOG_LEVEL] = level  # for the window processes that create_window starts
    level = level or os.environ.get(_env.LOG_LEVEL, "WARNING").upper()
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return cast(int, args.func(args))
    except (CLIError, ZprokitError) as e:
        kind = "" if isinstance(e, CLIError) else f"{type(e).__name__}: "
        print(f"{PROG} {args.command}: error: {kind}{str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
