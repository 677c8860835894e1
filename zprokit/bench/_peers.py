"""``zprokit bench --peers``: the same 64-byte echo on zprokit, raw pyzmq and the IPC libraries users come from.

Peers, each run if it imports (otherwise the table says ``not installed:
pip install X``; none of them is a dependency of zprokit):

- raw pyzmq: a DEALER here, the benchmark's ROUTER echo process (as the
  raw rows of ``zprokit bench``: pipelined with 64 outstanding, large
  payloads sent and received without copying);
- zprokit: a ``Window`` here calling ``render_msg_to_main`` on a ``Main``
  process whose echo handler has no options (the default: it runs on the
  handler pool); pipelined with 64 futures outstanding;
- multiprocessing.connection: ``Client`` here, ``Listener`` on TCP in the
  server (``send_bytes``/``recv_bytes``, the key as ``authkey``); pipelined
  by sending 64 before the first ``recv_bytes``, then one more per answer;
- Pyro5: a ``Proxy`` with the ``marshal`` serializer (the default, serpent,
  hands bytes over as base64 text in a dict) to a ``Daemon``; no pipelining:
  Pyro5 has no call that leaves an answer to be collected later
  (``@oneway`` calls have no answer, and ``batch()`` is one request for many
  calls, not calls in flight);
- RPyC: ``rpyc.connect`` to a ``ThreadedServer``, the remote ``echo``
  looked up once; pipelined with ``rpyc.async_``; everything else its
  defaults (its channel compresses frames over 3000 bytes with zlib);
- gRPC (grpcio): ``channel.unary_unary`` on a generic handler (no generated
  code, no (de)serializers: bytes as they are), a thread-pool server, the
  message size limits lifted (4 MiB by default); pipelined with
  ``.future()`` calls;
- zerorpc: ``zerorpc.Client`` to a ``zerorpc.Server``, both with their
  heartbeat off (with it, each call also starts a heartbeat greenlet; its
  pipelined rate was lower with it here, its round trip no different);
  pipelined with its asynchronous calls (gevent ``AsyncResult``).

Rows, for each: round trip p50 and p99 of a 64-byte bytes payload
(sequential calls, after a tenth as many untimed); requests per second
with 64 in flight; GB/s of 64 MiB round trips (2 x bytes / time), after
one untimed unless that one took a second or more (then it is the first
timed), and no more than fit in ``BIG_BUDGET`` seconds (at least one). The
counts are ``zprokit bench``'s (``Sizes``: ``--quick``, ``--rounds``); the
rounds alternate the order of the peers; the table gives medians, and each
as a ratio to raw pyzmq in the same run (peer / raw: above 1 is slower for
times, below 1 slower for rates). Then one line per promise: whether
zprokit is ahead of RPyC, gRPC and zerorpc on every row.

Each server runs in its own process (``_peer_servers``, started as the
benchmark's other children are), the client here, over TCP on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import secrets
import socket
import statistics
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Iterator, Sequence, TextIO

from .. import __version__
from ..window import Window
from ._common import CHILD_TIMEOUT, INFLIGHT, BenchError
from ._measure import _pipelined, _raw_client, _raw_echo_bytes, _raw_pipelined, _round_trips
from ._peer_servers import GRPC_METHOD, GRPC_OPTIONS, GRPC_WORKERS
from ._run import MiB, Metric, Sizes, _Bench, _fmt, machine_info

__all__ = ["PEERS", "PROMISED", "Peer", "run", "run_from_args"]

PAYLOAD = 64  # bytes
BIG_BUDGET = 10.0  # seconds of timed large round trips, at most, per peer and round (one always)
SLOW_WARM_UP = 1.0  # a first large round trip this long is timed, not thrown away
PROMISED = ("RPyC", "gRPC", "zerorpc")  # zprokit is to be ahead of these on every row


def _metrics(big: int) -> tuple[Metric, ...]:
    return (
        Metric("rtt_p50_us", "rtt p50", "µs", "lower"),
        Metric("rtt_p99_us", "rtt p99", "µs", "lower"),
        Metric("pipelined_rps", "pipelined", "req/s", "higher"),
        Metric(f"bytes_{big // MiB}mib_gbps", f"{big // MiB} MiB", "GB/s", "higher"),  # sizes are whole MiB
    )


# --- a peer: how to reach its echo ------------------------------------------------------------


@dataclass
class _Client:
    """A connected peer: ``call`` sends a payload and returns the answer; ``big`` the same for large
    payloads (``call`` if not given); ``pipelined(total, payload)`` is requests per second, 64 in flight."""

    call: Callable[[bytes], Any]
    pipelined: Callable[[int, bytes], float] | None = None
    big: Callable[[bytes], Any] | None = None


Connect = Callable[[dict[str, Any], str], ContextManager[_Client]]  # (the server's ready line, the key)


@dataclass(frozen=True)
class Peer:
    key: str  # its name for --peers
    name: str  # its name in the table
    serve: str  # its server: a --serve KIND
    connect: Connect
    module: str | None = None  # what must import for it to run; None: always there
    pip: str = ""  # what to install if it does not
    no_pipelining: str = ""  # why there is no pipelined figure, if there is none
    extra: dict[str, Any] = field(default_factory=dict)  # for the JSON: its set-up


def _futures(send: Callable[[bytes], Any]) -> Callable[[int, bytes], float]:
    """Pipelining with futures (anything with ``result(timeout)``), 64 outstanding."""
    return lambda total, payload: _pipelined(send, total, payload)


def _windowed(send: Callable[[bytes], Any], recv: Callable[[], Any]) -> Callable[[int, bytes], float]:
    """Pipelining on one connection, as the raw DEALER does: 64 sent, then one more per answer."""

    def pipelined(total: int, payload: bytes) -> float:
        for _ in range(2):  # the first run warms up
            start = time.perf_counter()
            sent = received = 0
            while sent < min(INFLIGHT, total):
                send(payload)
                sent += 1
            while received < total:
                recv()
                received += 1
                if sent < total:
                    send(payload)
                    sent += 1
            elapsed = time.perf_counter() - start
        return total / elapsed

    return pipelined


@contextlib.contextmanager
def _raw(ready: dict[str, Any], key: str) -> Iterator[_Client]:
    with _raw_client(ready["endpoint"]) as dealer:
        def call(payload: bytes) -> Any:
            dealer.send(payload)
            return dealer.recv()

        yield _Client(call, lambda total, payload: _raw_pipelined(dealer, total, size=len(payload)),
                      _raw_echo_bytes(dealer))


@contextlib.contextmanager
def _zprokit(ready: dict[str, Any], key: str) -> Iterator[_Client]:
    with Window("bench-peers", ready["endpoint"], key=key) as window:
        def send(payload: bytes) -> Any:
            return window.render_msg_to_main(payload, channel="echo_pooled")  # no options: the default

        yield _Client(lambda payload: send(payload).result(CHILD_TIMEOUT), _futures(send))


@contextlib.contextmanager
def _mp(ready: dict[str, Any], key: str) -> Iterator[_Client]:
    from multiprocessing.connection import Client

    conn = Client((ready["host"], ready["port"]), family="AF_INET", authkey=key.encode())
    # A receive timeout on the socket itself, so a lost answer ends the run (recv_bytes has none).
    with socket.socket(fileno=os.dup(conn.fileno())) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", int(CHILD_TIMEOUT), 0))
    with conn:
        def call(payload: bytes) -> bytes:
            conn.send_bytes(payload)
            return conn.recv_bytes()

        yield _Client(call, _windowed(conn.send_bytes, conn.recv_bytes))


@contextlib.contextmanager
def _pyro5(ready: dict[str, Any], key: str) -> Iterator[_Client]:
    api = importlib.import_module("Pyro5.api")
    with api.Proxy(ready["uri"]) as proxy:
        proxy._pyroSerializer = "marshal"  # bytes as bytes (serpent, the default, sends base64 text)
        proxy._pyroTimeout = CHILD_TIMEOUT
        proxy._pyroBind()
        yield _Client(proxy.echo)


class _RPyCFuture:
    """``rpyc.AsyncResult`` as a future: ``result(timeout)``."""

    __slots__ = ("_result",)

    def __init__(self, result: Any) -> None:
        self._result = result

    def result(self, timeout: float) -> Any:
        self._result.set_expiry(timeout)
        return self._result.value


@contextlib.contextmanager
def _rpyc(ready: dict[str, Any], key: str) -> Iterator[_Client]:
    rpyc = importlib.import_module("rpyc")
    conn = rpyc.connect(ready["host"], ready["port"], config={"sync_request_timeout": CHILD_TIMEOUT})
    try:
        echo = conn.root.echo  # looked up once: each lookup on a remote object is a round trip
        echo_async = rpyc.async_(echo)
        yield _Client(echo, _futures(lambda payload: _RPyCFuture(echo_async(payload))))
    finally:
        conn.close()


@contextlib.contextmanager
def _grpc(ready: dict[str, Any], key: str) -> Iterator[_Client]:
    grpc = importlib.import_module("grpc")
    channel = grpc.insecure_channel(ready["target"], options=GRPC_OPTIONS)
    try:
        grpc.channel_ready_future(channel).result(timeout=CHILD_TIMEOUT)
        echo = channel.unary_unary(GRPC_METHOD, request_serializer=None, response_deserializer=None)
        yield _Client(lambda payload: echo(payload, timeout=CHILD_TIMEOUT),
                      _futures(lambda payload: echo.future(payload, timeout=CHILD_TIMEOUT)))
    finally:
        channel.close()


@contextlib.contextmanager
def _zerorpc(ready: dict[str, Any], key: str) -> Iterator[_Client]:
    zerorpc = importlib.import_module("zerorpc")
    client = zerorpc.Client(timeout=CHILD_TIMEOUT, heartbeat=None)
    try:
        client.connect(ready["endpoint"])
        # zerorpc 0.6.3 (the last release) reads `async`; its development branch renamed it `async_`.
        later = {"async": True, "async_": True}
        # gevent's AsyncResult has result(timeout)
        yield _Client(lambda payload: client("echo", payload), _futures(lambda payload: client("echo", payload, **later)))
    finally:
        client.close()


PEERS: tuple[Peer, ...] = (
    Peer("raw", "raw pyzmq", "raw-echo", _raw, pip="pyzmq", extra={"how": "DEALER -> ROUTER echo process"}),
    Peer("zprokit", "zprokit", "zp-main", _zprokit, pip="zprokit", extra={"how": "Window.render_msg_to_main -> Main, default handler"}),
    Peer("multiprocessing", "multiprocessing.connection", "peer-mp", _mp,
         extra={"how": "Client -> Listener on TCP, send_bytes/recv_bytes"}),
    Peer("pyro5", "Pyro5", "peer-pyro5", _pyro5, module="Pyro5", pip="Pyro5",
         no_pipelining="Pyro5 cannot keep calls in flight (@oneway calls have no answer; batch() sends its "
                       "calls as one request)",
         extra={"how": "Proxy -> Daemon", "serializer": "marshal"}),
    Peer("rpyc", "RPyC", "peer-rpyc", _rpyc, module="rpyc", pip="rpyc",
         extra={"how": "rpyc.connect -> ThreadedServer; pipelined with rpyc.async_"}),
    Peer("grpc", "gRPC", "peer-grpc", _grpc, module="grpc", pip="grpcio",
         extra={"how": "channel.unary_unary -> generic handler, no generated code; pipelined with .future()",
                "server_workers": GRPC_WORKERS}),
    Peer("zerorpc", "zerorpc", "peer-zerorpc", _zerorpc, module="zerorpc", pip="zerorpc",
         extra={"how": "zerorpc.Client -> zerorpc.Server, heartbeat off; pipelined with async calls"}),
)


# --- the run -----------------------------------------------------------------------------------


def run(sizes: Sizes, peers: Sequence[Peer] = PEERS, out: TextIO = sys.stdout,
        progress: TextIO | None = sys.stderr) -> dict[str, Any]:
    """Measure every peer of ``peers`` that imports, ``sizes.rounds`` times; print the table, return the figures.
    Raw pyzmq and zprokit must be among them; a peer that fails is reported as failed, but either of those
    failing is a ``BenchError``."""
    if [p.key for p in peers[:2]] != ["raw", "zprokit"]:
        raise ValueError("the peers start with raw pyzmq and zprokit")
    bench = _Bench(sizes, secrets.token_hex(32), progress)
    big = max(sizes.big)
    metrics = _metrics(big)
    machine = machine_info()
    entries: dict[str, dict[str, Any]] = {}
    for peer in peers:
        reason = _unavailable(peer)
        entries[peer.name] = ({"status": "skipped", "reason": reason} if reason else
                              {"status": "measured", "version": _version(peer), **peer.extra})
        if reason:
            bench.say(f"{peer.name}: {reason}")
    runnable = [p for p in peers if entries[p.name]["status"] == "measured"]
    samples: dict[str, dict[str, list[float]]] = {p.name: {m.key: [] for m in metrics} for p in runnable}
    big_timed: dict[str, list[int]] = {p.name: [] for p in runnable}
    started = time.monotonic()
    for r in range(sizes.rounds):
        for peer in runnable if r % 2 == 0 else runnable[::-1]:
            if entries[peer.name]["status"] != "measured":
                continue  # it failed in an earlier round
            bench.say(f"round {r + 1}/{sizes.rounds}: {peer.name}")
            try:
                figures, timed = _measure(bench, peer, sizes, metrics)
            except Exception as e:
                reason = f"{type(e).__name__}: {e}"
                if peer.module is None:
                    raise BenchError(f"{peer.name}: {reason}") from None
                entries[peer.name] = {"status": "failed", "reason": reason}
                bench.say(f"{peer.name} failed: {reason}")
                continue
            for key, value in figures.items():
                samples[peer.name][key].append(value)
            big_timed[peer.name].append(timed)
    raw = samples[peers[0].name]
    for peer in runnable:
        entry = entries[peer.name]
        if entry["status"] != "measured":
            continue
        entry["metrics"] = {
            m.key: {"value": statistics.median(got), "ratio": statistics.median(got) / statistics.median(raw[m.key]),
                    "rounds": got} if got else None
            for m, got in ((m, samples[peer.name][m.key]) for m in metrics)
        }
        entry[f"{metrics[3].key}_round_trips"] = big_timed[peer.name]
        if peer.no_pipelining:
            entry["no_pipelining"] = peer.no_pipelining
    report = {
        "machine": machine,
        "config": {"rounds": sizes.rounds, "payload_bytes": PAYLOAD, "in_flight": INFLIGHT, "round_trips": sizes.rtt,
                   "pipelined": sizes.pipelined, "big_bytes": big, "big_round_trips": sizes.big[big],
                   "big_budget_s": BIG_BUDGET, "ratio": "peer / raw pyzmq"},
        "seconds": round(time.monotonic() - started, 1),
        "metrics": {m.key: {"label": m.label, "unit": m.unit, "better": m.better} for m in metrics},
        "peers": entries,
        "promises": _promises(entries, metrics),
    }
    print_table(report, out)
    return report


def _unavailable(peer: Peer) -> str | None:
    """Why ``peer`` cannot run here, or None."""
    if peer.module is None:
        return None
    if importlib.util.find_spec(peer.module) is None:
        return f"not installed: pip install {peer.pip}"
    try:
        importlib.import_module(peer.module)
    except Exception as e:  # installed, but broken (a dependency missing or built for another Python)
        return f"cannot be imported: {type(e).__name__}: {e}"
    return None


def _version(peer: Peer) -> str:
    if not peer.pip:
        return f"Python {platform.python_version()}"
    try:
        return importlib.metadata.version(peer.pip)
    except importlib.metadata.PackageNotFoundError:
        return __version__ if peer.key == "zprokit" else "?"


def _measure(bench: _Bench, peer: Peer, sizes: Sizes, metrics: Sequence[Metric]) -> tuple[dict[str, float], int]:
    """One round of ``peer``: its figures, and how many large round trips were timed."""
    big = max(sizes.big)
    with bench.children() as start:
        server = start(peer.serve)
        with peer.connect(server.expect("ready"), bench.key) as client:
            figures: dict[str, float] = {}
            figures[metrics[0].key], figures[metrics[1].key] = _round_trips(client.call, sizes.rtt, PAYLOAD)
            if client.pipelined is not None:
                figures[metrics[2].key] = client.pipelined(sizes.pipelined, bytes(PAYLOAD))
            figures[metrics[3].key], timed = _bandwidth_within(client.big or client.call, os.urandom(big),
                                                               sizes.big[big])
    return figures, timed


def _bandwidth_within(echo: Callable[[bytes], Any], payload: bytes, count: int) -> tuple[float, int]:
    """GB/s of up to ``count`` round trips of ``payload`` (both directions counted), and how many were
    timed: after one untimed, unless that one took ``SLOW_WARM_UP`` s or more (then it is the first
    timed: a warm-up is lost in so long a call); no more than fit in ``BIG_BUDGET`` s, and at least one."""
    clock = time.perf_counter
    t = clock()
    reply = echo(payload)
    first = clock() - t
    if len(reply) != len(payload):
        raise BenchError(f"a {len(payload)}-byte payload came back as {len(reply)} bytes")
    times = [first] if first >= SLOW_WARM_UP else []
    while len(times) < count and (not times or sum(times) * (len(times) + 1) / len(times) <= BIG_BUDGET):
        t = clock()
        echo(payload)
        times.append(clock() - t)
    return 2 * len(payload) * len(times) / sum(times) / 1e9, len(times)


def _promises(entries: dict[str, dict[str, Any]], metrics: Sequence[Metric]) -> dict[str, Any]:
    """For each peer zprokit is to be ahead of: is it, on every row both have, and on which rows not."""
    ours = entries["zprokit"]["metrics"]
    promises: dict[str, Any] = {}
    for name in PROMISED:
        entry = entries.get(name, {"status": "skipped", "reason": "not selected (--peers)"})
        if entry["status"] != "measured":
            promises[name] = {"ahead_on_every_row": None, "reason": f"{entry['status']}: {entry['reason']}"}
            continue
        behind = []
        for m in metrics:
            mine, theirs = ours[m.key], entry["metrics"][m.key]
            if mine is None or theirs is None:
                continue
            if not (mine["value"] < theirs["value"] if m.better == "lower" else mine["value"] > theirs["value"]):
                behind.append({"row": m.key, "zprokit": mine["value"], name: theirs["value"],
                               "zprokit_over_peer": mine["value"] / theirs["value"]})
        promises[name] = {"ahead_on_every_row": not behind, "rows_not_ahead": behind}
    return promises


def print_table(report: dict[str, Any], out: TextIO) -> None:
    """The machine; a Markdown table, peers as rows, each figure beside its ratio to raw pyzmq; the notes
    (no pipelining, fewer large round trips, peers skipped or failed); a line per promise."""
    m, c = report["machine"], report["config"]
    metrics = report["metrics"]
    lines = [
        f"zprokit {m['zprokit']} beside its peers: the same {c['payload_bytes']}-byte echo, "
        f"{c['rounds']} round(s), medians; {report['seconds']} s",
        f"machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), load {m['load_average']}, {m['os']}",
        f"Python {m['python']}, pyzmq {m['pyzmq']}, libzmq {m['libzmq']}",
        "x raw = peer / raw pyzmq, this run: above 1 is slower (µs); below 1 is slower (req/s, GB/s)",
        "",
    ]
    header = ["peer", "version"]
    for key, metric in metrics.items():
        header += [f"{metric['label']} {metric['unit']}", "x raw"]
    rows, notes = [header], []
    for name, entry in report["peers"].items():
        if entry["status"] != "measured":
            notes.append(f"{name}: {entry['reason'] if entry['status'] == 'skipped' else 'failed: ' + entry['reason']}")
            continue
        row = [name, entry["version"]]
        for key, metric in metrics.items():
            figure = entry["metrics"][key]
            row += ["n/a", ""] if figure is None else [_fmt(figure["value"], metric["unit"]), f"{figure['ratio']:.2f}"]
        rows.append(row)
        if entry.get("no_pipelining"):
            notes.append(f"{name}: pipelined n/a: {entry['no_pipelining']}")
        big_key = list(metrics)[3]
        timed = entry[f"{big_key}_round_trips"]
        if any(n < c["big_round_trips"] for n in timed):
            notes.append(f"{name}: {metrics[big_key]['label']} round trips timed per round: {timed} "
                         f"(of {c['big_round_trips']}: no more than fit in {c['big_budget_s']:g} s)")
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(cell.ljust(w) if i < 2 else cell.rjust(w)
                                 for i, (cell, w) in enumerate(zip(row, widths))) + " |"

    lines.append(line(rows[0]))
    lines.append("| " + " | ".join("-" * w if i < 2 else "-" * (w - 1) + ":" for i, w in enumerate(widths)) + " |")
    lines.extend(line(row) for row in rows[1:])
    lines.append("")
    lines.extend(notes)
    for name, promise in report["promises"].items():
        verdict = promise["ahead_on_every_row"]
        if verdict is None:
            said = f"not measured ({promise['reason']})"
        elif verdict:
            said = "yes"
        else:
            said = "no (" + "; ".join(
                f"{metrics[b['row']]['label']}: {_fmt(b['zprokit'], metrics[b['row']]['unit'])} vs "
                f"{_fmt(b[name], metrics[b['row']]['unit'])} {metrics[b['row']]['unit']}"
                for b in promise["rows_not_ahead"]) + ")"
        lines.append(f"zprokit ahead of {name} on every row: {said}")
    out.write("\n".join(lines) + "\n")
    out.flush()


# --- command line ---------------------------------------------------------------------------------


def run_from_args(args: argparse.Namespace, out: TextIO = sys.stdout) -> dict[str, Any]:
    """``zprokit bench --peers [NAMES]``: raw pyzmq, zprokit and the peers named (all if none); writes
    ``--json``. Raises ``BenchError``."""
    chosen = [p for p in PEERS if p.key in ("raw", "zprokit") or p.key in args.peers]
    report = run(Sizes.choose(args.quick, args.rounds, args.windows), chosen, out)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    return report
