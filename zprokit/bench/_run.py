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
  (on its I/O thread), and again with a default handler (registered
  without options: run where it was read while it is quick, see _handoff;
  the JSON keys keep the name "pooled" it had when that meant the pool);
- pipelined requests, 64 in flight: the same, keeping 64 requests (64
  futures) outstanding;
- the same two, for zprokit's wire format alone (a floor, not zprokit): a
  DEALER here and a ROUTER echo process, each message signed and pickled
  with ``protocol.pack``/``unpack`` and checked, one thread per
  process: no futures, deadlines, replay guard, registry or I/O loop; what
  signing and pickling alone cost beside raw pyzmq;
- stream of small items, 64 ahead, items/s from asking to the end (after one
  untimed stream): a DEALER here asking a ROUTER process for ``n`` 100-byte
  items with 64 credits; the producer sends while it has credit and waits
  for more, the consumer returns 32 credits each time it has taken 32, and
  an empty frame ends it | a ``Window`` here iterating
  ``render_stream_from_main(n, prefetch=64)`` from a ``Main`` process whose
  generator handler yields the items (on its pool, as the credit allows;
  the window returns credit, MORE, in the same batches of 32). In the JSON,
  ``checks.stream_vs_pipelined`` sets zprokit's stream beside its own
  pipelined requests;
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

Child processes are the programs of ``_children``, run as ``python -m
zprokit.bench --serve KIND PARAMS``: they print one JSON object per line on
stdout, take commands the same way on stdin, and exit when stdin closes, so
none outlives the benchmark. The key reaches them through ``ZPROKIT_KEY``,
never the command line. They run the build this process runs (compiled or
pure Python, ``zprokit.build_mode``; ``ZPROKIT_PURE_PYTHON`` is passed on),
and each says which it runs first: a child that runs another is an error,
as its figures would be another build's. The measuring side's tools
(timing loops, raw clients, the handle on a child) are in ``_measure``;
what both share, in ``_common``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import secrets
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence, TextIO

import zmq

from .. import __version__, _compiled, _env
from .._requests import ReplyFuture
from ..main import Main
from ..window import Window
from . import add_arguments
from . import run_from_args as run_chosen
from ._children import serve
from ._common import CHILD_TIMEOUT, INFLIGHT, LOCAL, SMALL, BenchError
from ._measure import (_bandwidth, _brief, _Child, _numbered, _Outstanding, _pipelined, _raw_client, _raw_echo_array,
                       _raw_echo_bytes, _raw_pipelined, _raw_stream, _round_trips, _rss_kib, _split, _streamed,
                       _timed_flow, _Wire)
from ._peer_servers import SERVERS as PEER_SERVERS

__all__ = ["BenchError", "METRICS", "add_arguments", "run", "main"]

MiB = 1 << 20


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
    Metric("rtt_pooled_p50_us", "round trip p50, default handler", "µs", "lower"),
    Metric("rtt_pooled_p99_us", "round trip p99, default handler", "µs", "lower"),
    Metric("pipelined_rps", "pipelined, 64 in flight, inline", "req/s", "higher", 0.5),
    Metric("pipelined_pooled_rps", "pipelined, 64 in flight, default", "req/s", "higher"),
    Metric("floor_rtt_p50_us", "round trip p50, wire format alone", "µs", "lower"),
    Metric("floor_pipelined_rps", "pipelined, wire format alone", "req/s", "higher"),
    Metric("stream_ips", "stream of small items, 64 ahead", "items/s", "higher"),
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
    stream: int  # items per stream (after one untimed stream as long)
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
            return cls(rtt=300, pipelined=1500, stream=1500, flow=1500, warm=200, big={MiB: 8, 64 * MiB: 1},
                       subscribers=2, windows=windows or 20, routed=600, rounds=rounds or 1)
        return cls(rtt=5000, pipelined=20000, stream=50000, flow=20000, warm=1000, big={MiB: 100, 64 * MiB: 5},
                   subscribers=4, windows=windows or 200, routed=10000, rounds=rounds or 3)


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
        ("stream", bench.stream),
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
    bench.checks.update(_stream_vs_pipelined(results))
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


def _stream_vs_pipelined(results: dict[str, Any]) -> dict[str, Any]:
    """zprokit's stream beside its own pipelined requests (the streams' requirement: at least as many
    items per second as requests), from the medians."""
    keys = ("stream_ips", "pipelined_rps", "pipelined_pooled_rps")
    if not all(k in results for k in keys):
        return {}
    stream, inline, pooled = (results[k]["zprokit"] for k in keys)
    return {"stream_vs_pipelined": {
        "stream_ips": stream, "pipelined_rps": inline, "pipelined_pooled_rps": pooled,
        "ratio_inline": stream / inline, "ratio_pooled": stream / pooled,
        "at_least_as_fast": stream >= max(inline, pooled),
    }}


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
        "build": _compiled.build_mode(),  # compiled or pure Python; the children run the same (checked)
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


def print_table(report: dict[str, Any], out: TextIO) -> None:
    """The machine, then a Markdown table: metric | unit | raw pyzmq | zprokit | zprokit/raw | target."""
    m = report["machine"]
    c = report["config"]
    lines = [
        f"zprokit {m['zprokit']} beside raw pyzmq, {c['rounds']} round(s), medians; {report['seconds']} s",
        f"build: {m['build']}, here and in every child process",
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
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(_env.PREFIX)}
        self.env[_env.KEY] = key
        self.env[_env.LOG_LEVEL] = os.environ.get(_env.LOG_LEVEL, "WARNING")
        if _compiled.pure_python_forced():  # the children measure the build this process runs
            self.env[_env.PURE_PYTHON] = os.environ[_env.PURE_PYTHON]
        self.build = _compiled.build_mode()

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
                build = child.expect("build")["mode"]
                if build != self.build:
                    raise BenchError(f"{kind} (pid {child.pid}) runs {build}, this process {self.build}")
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

    # a stream ----------------------------------------------------------------------------------

    def stream(self, side: str) -> dict[str, float]:
        n = self.sizes.stream
        with self.children() as start:
            if side == "raw":
                producer = start("raw-stream")
                with _raw_client(producer.expect("ready")["endpoint"]) as dealer:
                    return {"stream_ips": _streamed(lambda total: _raw_stream(dealer, total), n)}
            main = start("zp-main")
            endpoint = main.expect("ready")["endpoint"]
            with Window("bench-client", endpoint, key=self.key) as window:
                def consume(total: int) -> int:
                    got = 0
                    try:
                        with window.render_stream_from_main(total, channel="bench.stream", prefetch=INFLIGHT,
                                                            timeout=CHILD_TIMEOUT) as items:
                            for _ in items:
                                got += 1
                    except Exception as e:
                        raise BenchError(f"a stream failed after {got} of {total} items: "
                                         f"{type(e).__name__}: {e}") from None
                    return got

                return {"stream_ips": _streamed(consume, n)}

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


# --- command line ---------------------------------------------------------------------------------


def run_from_args(args: argparse.Namespace, out: TextIO = sys.stdout) -> dict[str, Any]:
    """Run as the options in ``args`` say (all but ``--peers``: the package's ``run_from_args`` sends
    those to ``_peers``); writes ``--json``. Raises ``BenchError``."""
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
    logging.basicConfig(level=os.environ.get(_env.LOG_LEVEL, "WARNING").upper(),
                        format=f"%(levelname)s %(name)s[{os.getpid()}]: %(message)s")
    if args.serve:
        kind, params = args.serve
        serve(kind, json.loads(params), PEER_SERVERS)  # ours, or another library's echo server (--peers)
        return 0
    try:
        run_chosen(args)  # this benchmark, or the peers' with --peers
    except BenchError as e:
        print(f"zprokit bench: error: {e}", file=sys.stderr)
        return 1
    return 0


