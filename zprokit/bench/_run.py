"""``zprokit bench``: zprokit beside raw pyzmq, doing the same work in one run on this machine.

Every figure is measured twice in a row, once with plain pyzmq sockets
written the way a careful hand would write them, once through zprokit, with
the same payloads between the same kinds of processes; the table gives both
and their ratio. Rounds alternate which side goes first, so drift on a
shared machine (other processes, CPU frequency) falls on both sides alike;
the table shows the median of each side over the rounds, and the ratio of
those medians.

Ratio convention: always ``zprokit / raw``. For times and memory, above 1
means zprokit is slower or bigger; for rates and bandwidths, below 1 means
zprokit is slower.

What each row does (raw side | zprokit side):

- round trip, sequential, 100-byte payload: a DEALER in this process and a
  ROUTER echo in another | a ``Window`` here calling ``render_msg_to_main``
  on a ``Main`` in another process, whose echo handler runs ``inline=True``
  (on its I/O thread), and again with a pooled (default) handler;
- pipelined requests, 64 in flight: the same, keeping 64 requests (64
  futures) outstanding;
- the same two, for zprokit's wire format alone (a floor, not zprokit): a
  DEALER here and a ROUTER echo process, each message signed and pickled
  with ``protocol.pack_one``/``unpack_one`` and checked, one thread per
  process: no futures, deadlines, replay guard, registry or I/O loop; what
  signing and pickling alone cost beside raw pyzmq;
- window -> window: DEALER here -> a ROUTER forwarder process (routes by a
  target frame, blocks when the receiver is full) -> a DEALER in a third
  process, counted there | ``render_msg_to_render`` one-way with 64
  unacknowledged messages at most, counted in the receiving window's callback;
- broadcast to N windows: a PUB (``XPUB_NODROP``: it blocks rather than drop)
  here -> N SUB processes | ``Main.broadcast`` here -> N window processes
  counting in ``on_broadcast``; the rate is messages per second, each
  delivered to all N;
- 1 MiB and 64 MiB payloads, round trip, GB/s = 2 x bytes / time: raw sends
  and receives without copying (``copy=False``), a NumPy array as a
  dtype/shape frame plus its buffer | the echo handler, pickled;
- N windows at once: a ROUTER process with N DEALERs connected (from a few
  processes) | a ``Main`` process with N ``Window`` objects connected (a few
  processes, one shared ``zmq.Context`` each); the resident memory growth of
  the ROUTER's or the main's process per connection, and the rate of
  request/reply round-robin over all N with 64 in flight (raw ROUTER sends;
  ``main_call_render``). Every window is checked registered, reachable by
  name, and reached by a broadcast.

Timing of one-way flows: receivers report ``time.monotonic()`` (the
system-wide ``CLOCK_MONOTONIC`` on Linux) when the last message arrives;
the sender noted the same clock before its first timed send.

Child processes are this module run as ``python -m zprokit.bench --serve
KIND PARAMS``: they print one JSON object per line on stdout, take commands
the same way on stdin, and exit when stdin closes, so none outlives the
benchmark. The key reaches them through ``ZPROKIT_KEY``, never the command line.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
import json
import logging
import math
import os
import pickle
import platform
import queue
import secrets
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence, TextIO, cast

import zmq

from .. import __version__, protocol
from .._futures import ReplyFuture
from ..main import Main
from ..window import Window
from . import add_arguments

log = logging.getLogger(__name__)

__all__ = ["BenchError", "METRICS", "add_arguments", "run", "main"]

LOCAL = "tcp://127.0.0.1:0"
MiB = 1 << 20
INFLIGHT = 64
SMALL = 100  # bytes of payload in the small-message rows
CHILD_TIMEOUT = 60.0  # seconds any one step of a child may take


class BenchError(Exception):
    """The benchmark could not measure something: a child failed, a message was lost, a timeout."""


# --- what is measured ----------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    better: str  # "lower" or "higher"
    target: float | None = None  # on the ratio zprokit/raw: the project's targets (README, Performance)


METRICS: tuple[Metric, ...] = (
    Metric("rtt_p50_us", "round trip p50, inline handler", "µs", "lower", 1.5),
    Metric("rtt_p99_us", "round trip p99, inline handler", "µs", "lower"),
    Metric("rtt_pooled_p50_us", "round trip p50, pooled handler", "µs", "lower"),
    Metric("rtt_pooled_p99_us", "round trip p99, pooled handler", "µs", "lower"),
    Metric("pipelined_rps", "pipelined, 64 in flight, inline", "req/s", "higher", 0.5),
    Metric("pipelined_pooled_rps", "pipelined, 64 in flight, pooled", "req/s", "higher"),
    Metric("floor_rtt_p50_us", "round trip p50, wire format alone", "µs", "lower"),
    Metric("floor_pipelined_rps", "pipelined, wire format alone", "req/s", "higher"),
    Metric("window_to_window_mps", "window -> window via the main", "msg/s", "higher"),
    Metric("broadcast_mps", "broadcast to {subscribers} windows", "msg/s", "higher"),
    Metric("bytes_1mib_gbps", "1 MiB bytes round trip", "GB/s", "higher"),
    Metric("bytes_64mib_gbps", "64 MiB bytes round trip", "GB/s", "higher", 0.7),
    Metric("numpy_1mib_gbps", "1 MiB NumPy array round trip", "GB/s", "higher"),
    Metric("numpy_64mib_gbps", "64 MiB NumPy array round trip", "GB/s", "higher", 0.7),
    Metric("memory_per_window_kib", "main's memory per window ({windows} windows)", "KiB", "lower"),
    Metric("routing_rps", "routing to {windows} windows, 64 in flight", "req/s", "higher"),
)


@dataclass(frozen=True)
class Sizes:
    rtt: int  # sequential round trips timed (after rtt // 10 untimed)
    pipelined: int  # requests per pipelined run
    flow: int  # one-way messages timed, window -> window and per broadcast receiver
    warm: int  # one-way messages sent before timing starts
    big: dict[int, int]  # payload size -> round trips timed
    subscribers: int
    windows: int
    routed: int  # requests in the routing-rate run
    rounds: int

    @classmethod
    def choose(cls, quick: bool, rounds: int | None, windows: int | None) -> "Sizes":
        if quick:
            return cls(rtt=300, pipelined=1500, flow=1500, warm=200, big={MiB: 8, 64 * MiB: 1}, subscribers=2,
                       windows=windows or 20, routed=600, rounds=rounds or 1)
        return cls(rtt=5000, pipelined=20000, flow=20000, warm=1000, big={MiB: 100, 64 * MiB: 5}, subscribers=4,
                   windows=windows or 200, routed=10000, rounds=rounds or 3)


def _numpy() -> Any:
    try:
        import numpy
    except ImportError:
        return None
    return numpy


# --- the run ---------------------------------------------------------------------------------


def run(sizes: Sizes, out: TextIO = sys.stdout, progress: TextIO | None = sys.stderr) -> dict[str, Any]:
    """Measure both sides ``sizes.rounds`` times, print the table to ``out``, return the figures."""
    key = secrets.token_hex(32)
    bench = _Bench(sizes, key, progress)
    machine = machine_info()
    samples: dict[str, dict[str, list[float]]] = {m.key: {"raw": [], "zprokit": []} for m in METRICS}
    groups: list[tuple[str, Callable[[str], dict[str, float]]]] = [
        ("request/reply", bench.request_reply),
        ("window -> window", bench.window_to_window),
        ("broadcast", bench.broadcast),
        ("payloads", bench.payloads),
        (f"{sizes.windows} windows", bench.scale),
    ]
    started = time.monotonic()
    for r in range(sizes.rounds):
        sides = ("raw", "zprokit") if r % 2 == 0 else ("zprokit", "raw")
        for name, measure in groups:
            for side in sides:
                bench.say(f"round {r + 1}/{sizes.rounds}: {name}, {side}")
                for metric, value in measure(side).items():
                    samples[metric][side].append(value)
    results = _summarize(samples, sizes)
    report = {
        "machine": machine,
        "config": {"rounds": sizes.rounds, "windows": sizes.windows, "subscribers": sizes.subscribers,
                   "in_flight": INFLIGHT, "payload_bytes": SMALL, "ratio": "zprokit / raw"},
        "seconds": round(time.monotonic() - started, 1),
        "metrics": results,
        "checks": bench.checks,
    }
    print_table(report, out)
    return report


def _summarize(samples: dict[str, dict[str, list[float]]], sizes: Sizes) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for m in METRICS:
        raw, zp = samples[m.key]["raw"], samples[m.key]["zprokit"]
        if not raw or not zp:
            continue  # NumPy rows without NumPy
        raw_median, zp_median = statistics.median(raw), statistics.median(zp)
        results[m.key] = {
            "label": m.label.format(windows=sizes.windows, subscribers=sizes.subscribers),
            "unit": m.unit,
            "raw": raw_median,
            "zprokit": zp_median,
            "ratio": zp_median / raw_median,
            "better": m.better,
            "target": m.target,
            "rounds": {"raw": raw, "zprokit": zp},
        }
    return results


def machine_info() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    numpy = _numpy()
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "numpy": numpy.__version__ if numpy else None,
        "zprokit": __version__,
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


def print_table(report: dict[str, Any], out: TextIO) -> None:
    """The machine, then a Markdown table: metric | unit | raw pyzmq | zprokit | zprokit/raw | target."""
    m = report["machine"]
    c = report["config"]
    lines = [
        f"zprokit {m['zprokit']} beside raw pyzmq, {c['rounds']} round(s), medians; {report['seconds']} s",
        f"machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), load {m['load_average']}, {m['os']}",
        f"Python {m['python']}, pyzmq {m['pyzmq']}, libzmq {m['libzmq']}, NumPy {m['numpy'] or 'not installed'}",
        "ratio = zprokit / raw: above 1 is slower (times) or bigger (memory); below 1 is slower (rates, GB/s)",
        "",
    ]
    rows = [["metric", "unit", "raw pyzmq", "zprokit", "zprokit/raw", "target"]]
    for key, r in report["metrics"].items():
        target = ""
        if r["target"] is not None:
            ok = r["ratio"] <= r["target"] if r["better"] == "lower" else r["ratio"] >= r["target"]
            target = f"{'<=' if r['better'] == 'lower' else '>='} {r['target']:g} {'met' if ok else 'MISSED'}"
        rows.append([r["label"], r["unit"], _fmt(r["raw"], r["unit"]), _fmt(r["zprokit"], r["unit"]),
                     f"{r['ratio']:.2f}", target])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    numeric = {2, 3, 4}

    def line(row: Sequence[str]) -> str:
        cells = [cell.rjust(w) if i in numeric else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        return "| " + " | ".join(cells) + " |"

    lines.append(line(rows[0]))
    lines.append("| " + " | ".join(("-" * (w - 1) + ":") if i in numeric else "-" * w for i, w in enumerate(widths)) + " |")
    lines.extend(line(row) for row in rows[1:])
    out.write("\n".join(lines) + "\n")
    out.flush()


def _fmt(value: float, unit: str) -> str:
    if unit == "µs":
        return f"{value:.1f}"
    if unit in ("GB/s", "KiB"):
        return f"{value:.2f}" if value < 10 else f"{value:.1f}"
    return f"{value:,.0f}"


# --- the measurements (this process's side) --------------------------------------------------


class _Bench:
    def __init__(self, sizes: Sizes, key: str, progress: TextIO | None) -> None:
        self.sizes = sizes
        self.key = key
        self.progress = progress
        self.checks: dict[str, Any] = {}
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ZPROKIT_")}
        self.env["ZPROKIT_KEY"] = key
        self.env["ZPROKIT_LOG_LEVEL"] = os.environ.get("ZPROKIT_LOG_LEVEL", "WARNING")

    def say(self, text: str) -> None:
        if self.progress is not None:
            self.progress.write(f"zprokit bench: {text}\n")
            self.progress.flush()

    @contextlib.contextmanager
    def children(self) -> Iterator[Callable[..., "_Child"]]:
        """Start children with the returned function; all are stopped on the way out, last started first."""
        with contextlib.ExitStack() as stack:
            def start(kind: str, **params: Any) -> _Child:
                child = _Child(kind, params, self.env)
                stack.callback(child.close)
                return child

            yield start

    # request/reply: round trips, pipelined ---------------------------------------------------

    def request_reply(self, side: str) -> dict[str, float]:
        s = self.sizes
        small = bytes(SMALL)
        with self.children() as start:
            server = start("raw-echo" if side == "raw" else "zp-main")
            endpoint = server.expect("ready")["endpoint"]
            if side == "raw":
                with _raw_client(endpoint) as dealer:
                    def call(payload: bytes) -> None:
                        dealer.send(payload)
                        dealer.recv()  # copying is the faster way for small frames

                    p50, p99 = _round_trips(call, s.rtt)
                    rps = _raw_pipelined(dealer, s.pipelined)
                # One raw figure for both zprokit rows, and for the wire format's: raw pyzmq has no
                # handler pool, and the wire format is measured against the same raw echo.
                return {"rtt_p50_us": p50, "rtt_p99_us": p99, "rtt_pooled_p50_us": p50, "rtt_pooled_p99_us": p99,
                        "pipelined_rps": rps, "pipelined_pooled_rps": rps, "floor_rtt_p50_us": p50,
                        "floor_pipelined_rps": rps}
            with Window("bench-client", endpoint, key=self.key) as window:
                results: dict[str, float] = {}
                for channel, suffix in (("echo", ""), ("echo_pooled", "_pooled")):
                    def request(payload: bytes, channel: str = channel) -> None:
                        window.render_msg_to_main(payload, channel=channel).result(CHILD_TIMEOUT)

                    p50, p99 = _round_trips(request, s.rtt)
                    results[f"rtt{suffix}_p50_us"], results[f"rtt{suffix}_p99_us"] = p50, p99
                    def send(payload: bytes, channel: str = channel) -> ReplyFuture[Any]:
                        return window.render_msg_to_main(payload, channel=channel)

                    results[f"pipelined{suffix}_rps"] = _pipelined(send, s.pipelined, small)
            floor = start("floor-echo")
            with _raw_client(floor.expect("ready")["endpoint"]) as dealer:
                wire = _Wire(self.key.encode())
                results["floor_rtt_p50_us"] = _round_trips(lambda payload: wire.call(dealer, payload), s.rtt)[0]
                results["floor_pipelined_rps"] = _raw_pipelined(dealer, s.pipelined, wire)
            return results

    # window -> window ------------------------------------------------------------------------

    def window_to_window(self, side: str) -> dict[str, float]:
        s = self.sizes
        total = s.warm + s.flow
        with self.children() as start:
            if side == "raw":
                forwarder = start("raw-forward")
                endpoint = forwarder.expect("ready")["endpoint"]
                sink = start("raw-sink", endpoint=endpoint, warm=s.warm, total=total)
                sink.expect("ready")
                with _raw_client(endpoint) as dealer:
                    def send(seq: int) -> None:
                        dealer.send_multipart([b"sink", _numbered(seq)])

                    elapsed = _timed_flow(send, s.warm, total, [sink])
            else:
                main = start("zp-main")
                endpoint = main.expect("ready")["endpoint"]
                sink = start("zp-receiver", endpoint=endpoint, name="sink", mode="render", warm=s.warm, total=total)
                sink.expect("ready")
                with Window("source", endpoint, key=self.key) as window:
                    window_sender = _Outstanding(INFLIGHT)

                    def send(seq: int) -> None:
                        window_sender.add(window.render_msg_to_render("sink", _numbered(seq)))

                    elapsed = _timed_flow(send, s.warm, total, [sink], window_sender.drain)
                stats = main.ask("stats")["stats"]
                if stats["messages_routed"] != total or stats.get("dropped_hwm", 0):
                    raise BenchError(f"window -> window: the main routed {stats['messages_routed']} of {total} "
                                     f"messages (dropped_hwm={stats.get('dropped_hwm', 0)})")
                self.checks["window_to_window_routed"] = stats["messages_routed"]
        return {"window_to_window_mps": s.flow / elapsed}

    # broadcast -------------------------------------------------------------------------------

    def broadcast(self, side: str) -> dict[str, float]:
        s = self.sizes
        total = s.warm + s.flow
        with self.children() as start:
            if side == "raw":
                ctx = zmq.Context()
                pub = ctx.socket(zmq.XPUB)
                try:
                    pub.linger = 0
                    pub.setsockopt(zmq.XPUB_VERBOSE, 1)  # one subscription message per subscriber
                    pub.setsockopt(zmq.XPUB_NODROP, 1)  # block on a full subscriber, never drop
                    pub.sndtimeo = int(CHILD_TIMEOUT * 1000)
                    pub.rcvtimeo = int(CHILD_TIMEOUT * 1000)
                    pub.bind("tcp://127.0.0.1:*")
                    endpoint = pub.getsockopt_string(zmq.LAST_ENDPOINT)
                    subs = [start("raw-sub", endpoint=endpoint, warm=s.warm, total=total) for _ in range(s.subscribers)]
                    for sub in subs:
                        sub.expect("ready")
                    for _ in subs:
                        pub.recv()  # a subscription: that subscriber is in
                    topic = b"Bbench"

                    def send(seq: int) -> None:
                        pub.send_multipart([topic, _numbered(seq)])

                    elapsed = _timed_flow(send, s.warm, total, subs)
                finally:
                    pub.close(0)
                    ctx.term()
            else:
                with Main(LOCAL, key=self.key) as main:
                    subs = [start("zp-receiver", endpoint=main.endpoint, name=f"sub{i}", mode="broadcast",
                                  warm=s.warm, total=total) for i in range(s.subscribers)]
                    for sub in subs:
                        sub.expect("ready")

                    def send(seq: int) -> None:
                        main.broadcast(_numbered(seq), topic="bench")

                    try:
                        elapsed = _timed_flow(send, s.warm, total, subs)
                    except BenchError as e:
                        raise BenchError(f"{e}; the main's stats: {_brief(main.stats())}") from None
                    for sub in subs:  # stop them before their main goes
                        sub.close()
        return {"broadcast_mps": s.flow / elapsed}

    # large payloads --------------------------------------------------------------------------

    def payloads(self, side: str) -> dict[str, float]:
        np = _numpy()
        results: dict[str, float] = {}
        with self.children() as start:
            server = start("raw-echo" if side == "raw" else "zp-main")
            endpoint = server.expect("ready")["endpoint"]
            with contextlib.ExitStack() as stack:
                if side == "raw":
                    dealer = stack.enter_context(_raw_client(endpoint))
                    echo_bytes = _raw_echo_bytes(dealer)
                    echo_array = _raw_echo_array(dealer, np) if np else None
                else:
                    window = stack.enter_context(Window("bench-client", endpoint, key=self.key))

                    def echo_bytes(payload: Any) -> Any:
                        return window.render_msg_to_main(payload, channel="echo").result(CHILD_TIMEOUT)

                    echo_array = echo_bytes
                for size, count in self.sizes.big.items():
                    label = "1mib" if size == MiB else f"{size // MiB}mib"
                    results[f"bytes_{label}_gbps"] = _bandwidth(echo_bytes, os.urandom(size), count)
                    if np is not None and echo_array is not None:
                        array = np.frombuffer(os.urandom(size), dtype=np.float64).reshape(-1, 1024)
                        results[f"numpy_{label}_gbps"] = _bandwidth(echo_array, array, count)
        return results

    # many windows ----------------------------------------------------------------------------

    def scale(self, side: str) -> dict[str, float]:
        n = self.sizes.windows
        hosts = _split(n, max(1, min(4, n // 10)))  # up to 4 processes, at least 10 windows in each
        with self.children() as start:
            server = start("raw-router" if side == "raw" else "zp-main")
            endpoint = server.expect("ready")["endpoint"]
            before = _rss_kib(server.pid)
            first = 0
            clients = []
            for count in hosts:
                clients.append(start("raw-dealers" if side == "raw" else "zp-windows",
                                     endpoint=endpoint, first=first, count=count))
                first += count
            for client in clients:
                client.expect("ready", timeout=CHILD_TIMEOUT * 2)
            if side == "raw":
                seen = server.ask("wait", n=n)["peers"]
                if seen != n:
                    raise BenchError(f"raw: {seen} of {n} DEALERs said hello")
            else:
                registered = server.ask("windows")["count"]
                if registered != n:
                    raise BenchError(f"{registered} of {n} windows registered")
            after = _rss_kib(server.pid)
            routed = server.ask("route", k=self.sizes.routed, timeout=CHILD_TIMEOUT * 2)
            if routed["reached"] != n:
                raise BenchError(f"{side}: routing reached {routed['reached']} of {n} windows by name")
            if side == "zprokit":
                reached = server.ask("broadcast")["reached"]
                if reached != n:
                    raise BenchError(f"a broadcast reached {reached} of {n} windows")
                self.checks.update(windows_registered=registered, windows_reached_by_name=routed["reached"],
                                   windows_reached_by_broadcast=reached)
            for client in reversed(clients):  # windows leave before their main does
                client.close()
        return {"memory_per_window_kib": max(after - before, 0) / n, "routing_rps": self.sizes.routed / routed["seconds"]}


# --- helpers of the measuring side --------------------------------------------------------------


@contextlib.contextmanager
def _raw_client(endpoint: str) -> Iterator[zmq.Socket[Any]]:
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.linger = 0
    dealer.rcvtimeo = int(CHILD_TIMEOUT * 1000)
    dealer.sndtimeo = int(CHILD_TIMEOUT * 1000)
    dealer.connect(endpoint)
    try:
        yield dealer
    finally:
        dealer.close(0)
        ctx.term()


def _round_trips(call: Callable[[bytes], Any], n: int) -> tuple[float, float]:
    """p50 and p99 in µs of ``n`` sequential calls, after ``n // 10`` untimed ones."""
    payload = bytes(SMALL)
    for _ in range(max(n // 10, 20)):
        call(payload)
    times = []
    clock = time.perf_counter_ns
    for _ in range(n):
        t = clock()
        call(payload)
        times.append(clock() - t)
    times.sort()
    return times[len(times) // 2] / 1000, times[max(0, math.ceil(0.99 * len(times)) - 1)] / 1000


def _raw_pipelined(dealer: zmq.Socket[Any], total: int, wire: "_Wire | None" = None) -> float:
    """Requests per second with ``INFLIGHT`` outstanding; through ``wire`` (signed, pickled) if given."""
    payload = bytes(SMALL)
    for _ in range(2):  # the first run warms up
        start = time.perf_counter()
        sent = received = 0
        while sent < min(INFLIGHT, total):
            dealer.send(wire.request(payload) if wire else payload)
            sent += 1
        while received < total:
            reply = dealer.recv()
            if wire:
                wire.answer(reply)
            received += 1
            if sent < total:
                dealer.send(wire.request(payload) if wire else payload)
                sent += 1
        elapsed = time.perf_counter() - start
    return total / elapsed


class _Wire:
    """zprokit's wire format alone, for the floor rows: sign, pickle, check; nothing else."""

    def __init__(self, key: bytes) -> None:
        self.signer = protocol.Signer(key)
        self.session, self.peer = secrets.token_bytes(16), protocol.NO_SESSION
        self.seq = 0

    def request(self, obj: Any) -> bytes:
        self.seq += 1
        return protocol.pack_one(self.signer, protocol.Kind.REQUEST, self.seq, self.seq, self.session, self.peer,
                                 "floor", "", "echo", pickle.dumps(obj, protocol=5))[0]

    def answer(self, frame: bytes) -> Any:
        kind, *_, part, _ = protocol.unpack_one(self.signer, frame)
        if kind != protocol.Kind.REPLY or part is None:
            raise BenchError(f"wire format floor: unexpected {kind!r}")
        return pickle.loads(part)

    def call(self, dealer: zmq.Socket[Any], obj: Any) -> Any:
        dealer.send(self.request(obj))
        return self.answer(dealer.recv())


def _pipelined(request: Callable[[bytes], Any], total: int, payload: bytes) -> float:
    for _ in range(2):  # the first run warms up
        start = time.perf_counter()
        outstanding = _Outstanding(INFLIGHT)
        for _ in range(total):
            outstanding.add(request(payload))
        outstanding.drain()
        elapsed = time.perf_counter() - start
    return total / elapsed


class _Outstanding:
    """At most ``limit`` futures pending: adding one more waits on the oldest. Failures raise ``BenchError``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._futures: collections.deque[Any] = collections.deque()

    def add(self, future: Any) -> None:
        self._futures.append(future)
        if len(self._futures) >= self.limit:
            self._settle(self._futures.popleft())

    def drain(self) -> None:
        while self._futures:
            self._settle(self._futures.popleft())

    @staticmethod
    def _settle(future: Any) -> None:
        try:
            future.result(CHILD_TIMEOUT)
        except Exception as e:
            raise BenchError(f"a request failed: {type(e).__name__}: {e}") from None


def _timed_flow(send: Callable[[int], None], warm: int, total: int, receivers: list["_Child"],
                flush: Callable[[], None] = lambda: None) -> float:
    """Send ``total`` numbered messages; seconds from the first after ``warm`` until every receiver has all."""
    for seq in range(warm):
        send(seq)
    flush()
    for r in receivers:
        r.expect("warm")
    start = time.monotonic()
    for seq in range(warm, total):
        send(seq)
    flush()
    ends: list[float] = []
    for r in receivers:
        try:
            done = r.expect("done")
        except BenchError as e:
            got = r.ask("count", timeout=5.0)
            raise BenchError(f"{r.kind} got {got['count']} of {total} messages "
                             f"({got['out_of_order']} out of order): {e}") from None
        if done["out_of_order"]:
            raise BenchError(f"{r.kind}: {done['out_of_order']} messages out of order")
        ends.append(done["t"])
    return max(ends) - start


def _numbered(seq: int) -> bytes:
    return seq.to_bytes(8, "big") + bytes(SMALL - 8)


def _raw_echo_bytes(dealer: zmq.Socket[Any]) -> Callable[[Any], Any]:
    def echo(payload: bytes) -> Any:
        dealer.send(payload, copy=False)
        return dealer.recv(copy=False).buffer

    return echo


def _raw_echo_array(dealer: zmq.Socket[Any], np: Any) -> Callable[[Any], Any]:
    def echo(array: Any) -> Any:
        meta = json.dumps([array.dtype.str, array.shape]).encode()
        dealer.send_multipart([meta, array], copy=False)
        meta_frame, data = dealer.recv_multipart(copy=False)
        dtype, shape = json.loads(meta_frame.bytes)
        return np.frombuffer(data.buffer, dtype=dtype).reshape(shape)

    return echo


def _bandwidth(echo: Callable[[Any], Any], payload: Any, count: int) -> float:
    """GB/s of ``count`` round trips of ``payload`` (both directions counted), after one untimed."""
    size = payload.nbytes if hasattr(payload, "nbytes") else len(payload)
    reply = echo(payload)
    got = reply.nbytes if hasattr(reply, "nbytes") else len(reply)
    if got != size:
        raise BenchError(f"a {size}-byte payload came back as {got} bytes")
    start = time.perf_counter()
    for _ in range(count):
        echo(payload)
    return 2 * size * count / (time.perf_counter() - start) / 1e9


def _split(n: int, parts: int) -> list[int]:
    """``n`` as ``parts`` near-equal counts."""
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def _rss_kib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return float(line.split()[1])
    raise BenchError(f"no VmRSS for process {pid}")


def _brief(stats: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in stats.items() if v and k != "rejected"}


class _Child:
    """A ``--serve KIND`` process: JSON lines out, JSON lines in, gone when its stdin closes."""

    def __init__(self, kind: str, params: dict[str, Any], env: dict[str, str]) -> None:
        self.kind = kind
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "zprokit.bench", "--serve", kind, json.dumps(params)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True, bufsize=1,
        )
        self.pid = self.proc.pid
        self._lines: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self._reader = threading.Thread(target=self._read, name=f"bench-{kind}-{self.pid}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self._lines.put(json.loads(line))
            except ValueError:
                self._lines.put({"event": "error", "error": f"not JSON: {line.strip()[:200]}"})
        self._lines.put(None)

    def expect(self, event: str, timeout: float = CHILD_TIMEOUT) -> dict[str, Any]:
        """The child's next line, which must be ``event``; ``BenchError`` otherwise, or after ``timeout`` s."""
        try:
            msg = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise BenchError(f"{self.kind}: no {event!r} within {timeout} s") from None
        if msg is None:
            self._lines.put(None)
            raise BenchError(f"{self.kind} (pid {self.pid}) exited with status {self.proc.wait()} before {event!r}")
        if msg.get("event") != event:
            raise BenchError(f"{self.kind}: expected {event!r}, got {msg}")
        return msg

    def ask(self, op: str, timeout: float = CHILD_TIMEOUT, **params: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps({"op": op, **params}) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            raise BenchError(f"{self.kind} (pid {self.pid}) is gone") from None
        return self.expect(op, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Close its stdin (its cue to exit), then kill it if it has not gone within ``timeout`` s. Idempotent."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("bench: %s (pid %s) did not exit; killing it", self.kind, self.pid)
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5.0)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


# --- child processes ------------------------------------------------------------------------------

_say_lock = threading.Lock()


def _say(event: str, **fields: Any) -> None:
    with _say_lock:
        sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
        sys.stdout.flush()


def _commands(ops: dict[str, Callable[..., dict[str, Any]]] | None = None) -> None:
    """Answer commands from stdin until it closes (the parent is done, or gone)."""
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd.pop("op")
        try:
            _say(op, **(ops or {})[op](**cmd))
        except Exception as e:
            _say("error", error=f"{op}: {type(e).__name__}: {e}")


class _Counter:
    """Counts numbered payloads; says ``warm`` and ``done`` with the time they arrived."""

    def __init__(self, warm: int, total: int) -> None:
        self.warm, self.total = warm, total
        self.count = 0
        self.out_of_order = 0
        self._last = -1

    def arrive(self, payload: Any) -> None:
        seq = int.from_bytes(payload[:8], "big")
        if seq != self._last + 1:
            self.out_of_order += 1
        self._last = seq
        self.count += 1
        if self.count == self.warm:
            _say("warm", t=time.monotonic())
        elif self.count == self.total:
            _say("done", t=time.monotonic(), out_of_order=self.out_of_order)

    def report(self) -> dict[str, Any]:
        return {"count": self.count, "out_of_order": self.out_of_order}


def _socket_loop(step: Callable[[], None]) -> Callable[[], None]:
    """Run ``step`` (which raises ``zmq.Again`` on its receive timeout) on a thread; returns its stop."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                step()
            except zmq.Again:
                continue

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()

    def stopper() -> None:
        stop.set()
        thread.join(5.0)

    return stopper


def _raw_socket(ctx: zmq.Context[Any], kind: int, bind: bool = False, endpoint: str = "tcp://127.0.0.1:*") -> zmq.Socket[Any]:
    sock: zmq.Socket[Any] = ctx.socket(kind)
    sock.linger = 0
    sock.rcvtimeo = 100  # so its loop sees the stop flag
    sock.sndtimeo = 5000  # a blocked send (a full peer) ends too
    (sock.bind if bind else sock.connect)(endpoint)
    return sock


def _serve_echo(answer: Callable[[list[zmq.Frame]], list[Any]]) -> None:
    """A ROUTER that sends ``answer(frames)`` back for every message: wait, then answer all that is waiting."""
    ctx = zmq.Context()
    router = _raw_socket(ctx, zmq.ROUTER, bind=True)

    def step() -> None:
        if not router.poll(100):
            raise zmq.Again()
        while True:
            try:
                frames = router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            router.send_multipart(answer(frames), copy=False)

    stop = _socket_loop(step)
    _say("ready", endpoint=router.getsockopt_string(zmq.LAST_ENDPOINT))
    _commands()
    stop()
    router.close(0)
    ctx.term()


def serve_raw_echo() -> None:
    """A ROUTER that sends every message back as it came."""
    _serve_echo(lambda frames: frames)


def serve_floor_echo() -> None:
    """The raw echo through zprokit's wire format: check each request, answer it signed (the floor rows)."""
    signer = protocol.Signer(os.environ["ZPROKIT_KEY"].encode())
    session, seqs = secrets.token_bytes(16), itertools.count(1)

    def answer(frames: list[zmq.Frame]) -> list[Any]:
        ident, head = frames
        _, msg_id, _, their_session, *_, part, _ = protocol.unpack_one(signer, head.buffer)
        reply = pickle.dumps(pickle.loads(cast(memoryview, part)), protocol=5)
        return [ident, *protocol.pack_one(signer, protocol.Kind.REPLY, msg_id, next(seqs), session, their_session,
                                          "", "floor", "", reply)]

    _serve_echo(answer)


def serve_raw_forward() -> None:
    """A ROUTER that forwards ``[target, payload]`` from one DEALER to the DEALER named ``target``."""
    ctx = zmq.Context()
    router = _raw_socket(ctx, zmq.ROUTER, bind=True)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # an unknown target is an error, a full one blocks

    def step() -> None:
        source, *frames = router.recv_multipart(copy=False)
        if len(frames) == 1:  # a hello
            router.send_multipart([source, b"welcome"])
        else:
            router.send_multipart([frames[0], source, *frames[1:]], copy=False)

    stop = _socket_loop(step)
    _say("ready", endpoint=router.getsockopt_string(zmq.LAST_ENDPOINT))
    _commands()
    stop()
    router.close(0)
    ctx.term()


def serve_raw_sink(endpoint: str, warm: int, total: int) -> None:
    """A DEALER named ``sink`` that counts what the forwarder sends it."""
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.linger = 0
    dealer.setsockopt(zmq.ROUTING_ID, b"sink")
    dealer.connect(endpoint)
    dealer.send(b"hello")
    dealer.recv()
    dealer.rcvtimeo = 100
    counter = _Counter(warm, total)

    def step() -> None:
        _, payload = dealer.recv_multipart(copy=False)
        counter.arrive(payload.buffer)

    stop = _socket_loop(step)
    _say("ready")
    _commands({"count": counter.report})
    stop()
    dealer.close(0)
    ctx.term()


def serve_raw_sub(endpoint: str, warm: int, total: int) -> None:
    """A SUB that counts what the PUB sends."""
    ctx = zmq.Context()
    sub = _raw_socket(ctx, zmq.SUB, endpoint=endpoint)
    sub.setsockopt(zmq.SUBSCRIBE, b"B")
    counter = _Counter(warm, total)

    def step() -> None:
        _, payload = sub.recv_multipart(copy=False)
        counter.arrive(payload.buffer)

    stop = _socket_loop(step)
    _say("ready")
    _commands({"count": counter.report})
    stop()
    sub.close(0)
    ctx.term()


def serve_raw_router() -> None:
    """A ROUTER that many DEALERs say hello to; it then asks them round-robin, 64 in flight."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    router.rcvtimeo = int(CHILD_TIMEOUT * 1000)
    router.bind("tcp://127.0.0.1:*")
    peers: list[bytes] = []

    def wait(n: int) -> dict[str, Any]:
        while len(peers) < n:
            peer, _ = router.recv_multipart()
            peers.append(peer)
        return {"peers": len(peers)}

    def route(k: int) -> dict[str, Any]:
        payload = bytes(SMALL)
        reached: set[bytes] = set()
        start = time.perf_counter()
        sent = 0
        while sent < min(INFLIGHT, k):
            router.send_multipart([peers[sent % len(peers)], payload])
            sent += 1
        for _ in range(k):
            peer, _ = router.recv_multipart(copy=False)
            reached.add(peer.bytes)
            if sent < k:
                router.send_multipart([peers[sent % len(peers)], payload])
                sent += 1
        return {"seconds": time.perf_counter() - start, "reached": len(reached)}

    _say("ready", endpoint=router.getsockopt_string(zmq.LAST_ENDPOINT))
    _commands({"wait": wait, "route": route})
    router.close(0)
    ctx.term()


def serve_raw_dealers(endpoint: str, first: int, count: int) -> None:
    """``count`` DEALERs in one context: each says hello, then echoes what the ROUTER asks."""
    ctx = zmq.Context()
    dealers = []
    poller = zmq.Poller()
    for i in range(first, first + count):
        dealer = ctx.socket(zmq.DEALER)
        dealer.linger = 0
        dealer.setsockopt(zmq.ROUTING_ID, f"w{i}".encode())
        dealer.connect(endpoint)
        dealer.send(b"hello")
        poller.register(dealer, zmq.POLLIN)
        dealers.append(dealer)

    def step() -> None:
        events = poller.poll(100)
        if not events:
            raise zmq.Again()
        for dealer, _ in events:
            while True:
                try:
                    dealer.send(dealer.recv(zmq.NOBLOCK, copy=False), copy=False)
                except zmq.Again:
                    break

    stop = _socket_loop(step)
    _say("ready")
    _commands()
    stop()
    for dealer in dealers:
        dealer.close(0)
    ctx.term()


def serve_zp_main() -> None:
    """A ``Main`` with echo handlers, inline and pooled; it also drives the many-windows run."""
    seen: set[str] = set()
    seen_changed = threading.Condition()

    def saw(event: Any, name: str) -> None:
        with seen_changed:
            seen.add(name)
            seen_changed.notify_all()

    with Main(LOCAL, request_timeout=CHILD_TIMEOUT) as main:
        main.on_msg_from_render(lambda event, args: args, channel="echo", inline=True)
        main.on_msg_from_render(lambda event, args: args, channel="echo_pooled")
        main.on_msg_from_render(saw, channel="bench.seen", inline=True)

        def windows() -> dict[str, Any]:
            return {"count": len(main.get_all_windows())}

        def route(k: int) -> dict[str, Any]:
            names = [w.name for w in main.get_all_windows()]
            reached: set[str] = set()
            window: collections.deque[tuple[str, Any]] = collections.deque()

            def settle() -> None:
                name, future = window.popleft()
                if future.result(CHILD_TIMEOUT) == name:
                    reached.add(name)

            start = time.perf_counter()
            for i in range(k):
                name = names[i % len(names)]
                window.append((name, main.main_call_render(name, i, channel="bench.name")))
                if len(window) >= INFLIGHT:
                    settle()
            while window:
                settle()
            return {"seconds": time.perf_counter() - start, "reached": len(reached)}

        def broadcast() -> dict[str, Any]:
            n = len(main.get_all_windows())
            with seen_changed:
                seen.clear()
            main.broadcast("who is there", topic="bench")
            with seen_changed:
                seen_changed.wait_for(lambda: len(seen) >= n, CHILD_TIMEOUT)
                return {"reached": len(seen)}

        def stats() -> dict[str, Any]:
            return {"stats": main.stats()}

        _say("ready", endpoint=main.endpoint)
        _commands({"windows": windows, "route": route, "broadcast": broadcast, "stats": stats})


def serve_zp_receiver(endpoint: str, name: str, mode: str, warm: int, total: int) -> None:
    """A ``Window`` counting one-way messages from other windows (``mode="render"``) or broadcasts."""
    counter = _Counter(warm, total)
    with Window(name, endpoint, exit_with_main=True) as window:
        if mode == "render":
            window.on_render_msg_to_render(lambda event, payload: counter.arrive(payload))
        else:
            window.on_broadcast(lambda event, payload: counter.arrive(payload))
        _say("ready")
        _commands({"count": counter.report})


def serve_zp_windows(endpoint: str, first: int, count: int) -> None:
    """``count`` ``Window`` objects sharing one ``zmq.Context``; each answers to its name and to broadcasts."""
    ctx = zmq.Context()
    windows: list[Window] = []
    try:
        for i in range(first, first + count):
            window = Window(f"w{i}", endpoint, context=ctx, workers=1, exit_with_main=True)
            windows.append(window)
            window.on_msg_from_main(lambda event, args, name=window.name: name, channel="bench.name")
            window.on_broadcast(
                lambda event, args, w=window: w.render_msg_to_main(w.name, channel="bench.seen"), topic="bench")
        _say("ready")
        _commands()
    finally:
        for window in windows:
            window.close()
        ctx.term()


SERVERS: dict[str, Callable[..., None]] = {
    "raw-echo": serve_raw_echo,
    "floor-echo": serve_floor_echo,
    "raw-forward": serve_raw_forward,
    "raw-sink": serve_raw_sink,
    "raw-sub": serve_raw_sub,
    "raw-router": serve_raw_router,
    "raw-dealers": serve_raw_dealers,
    "zp-main": serve_zp_main,
    "zp-receiver": serve_zp_receiver,
    "zp-windows": serve_zp_windows,
}


# --- command line ---------------------------------------------------------------------------------


def run_from_args(args: argparse.Namespace, out: TextIO = sys.stdout) -> dict[str, Any]:
    """Run as the options in ``args`` say; writes ``--json``. Raises ``BenchError``."""
    report = run(Sizes.choose(args.quick, args.rounds, args.windows), out)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zprokit.bench", description=__doc__.splitlines()[0],
                                     allow_abbrev=False)
    add_arguments(parser)
    parser.add_argument("--serve", nargs=2, metavar=("KIND", "PARAMS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("ZPROKIT_LOG_LEVEL", "WARNING").upper(),
                        format=f"%(levelname)s %(name)s[{os.getpid()}]: %(message)s")
    if args.serve:
        kind, params = args.serve
        SERVERS[kind](**json.loads(params))
        return 0
    try:
        run_from_args(args)
    except BenchError as e:
        print(f"zprokit bench: error: {e}", file=sys.stderr)
        return 1
    return 0


