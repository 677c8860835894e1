"""``zprokit bench --peers`` runs with the peers that are always there, and one missing is a skip, not an error.

One run with tiny counts serves the tests that read a report (a few
seconds): raw pyzmq, zprokit and multiprocessing.connection, the peers
present wherever zprokit is, and a peer whose module does not exist. The
other peers (Pyro5, RPyC, gRPC, zerorpc) are never installed for the
tests: they are no dependency of zprokit. No figure is judged.
"""

from __future__ import annotations

import configparser
import io
import math
import re
from pathlib import Path
from typing import Any

import pytest

from zprokit.bench import _peers
from zprokit.bench._common import PEER_NAMES
from zprokit.bench._run import MiB, Sizes
from zprokit.cli import build_parser

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
ALWAYS = ("raw pyzmq", "zprokit", "multiprocessing.connection")
MISSING = _peers.Peer("nosuch", "No Such Peer", "peer-mp", _peers._mp, module="zprokit_bench_no_such_peer",
                      pip="no-such-peer")
TINY = Sizes(rtt=50, pipelined=200, stream=0, flow=0, warm=0, big={MiB: 2}, subscribers=0, windows=0, routed=0,
             rounds=1)
ROWS = ("rtt_p50_us", "rtt_p99_us", "pipelined_rps", "bytes_1mib_gbps")


class Run:
    def __init__(self, report: dict[str, Any], table: str) -> None:
        self.report = report
        self.table = table


@pytest.fixture(scope="module")
def run() -> Run:
    always = [p for p in _peers.PEERS if p.name in ALWAYS]
    out = io.StringIO()
    report = _peers.run(TINY, [*always, MISSING], out=out, progress=None)
    return Run(report, out.getvalue())


def test_the_peers_always_there_have_every_row_with_positive_figures(run: Run):
    assert list(run.report["metrics"]) == list(ROWS)
    for name in ALWAYS:
        entry = run.report["peers"][name]
        assert entry["status"] == "measured" and entry["version"], name
        for key in ROWS:
            figure = entry["metrics"][key]
            for value in (figure["value"], figure["ratio"]):
                assert isinstance(value, float) and math.isfinite(value) and value > 0, (name, key, value)
            assert figure["rounds"] == [figure["value"]], (name, key)
        assert entry["metrics"]["rtt_p99_us"]["value"] >= entry["metrics"]["rtt_p50_us"]["value"], name
        assert entry["bytes_1mib_gbps_round_trips"][0] >= 1, name
    assert all(f["ratio"] == 1.0 for f in run.report["peers"]["raw pyzmq"]["metrics"].values())


def test_a_missing_peer_is_skipped_with_what_to_install(run: Run):
    assert run.report["peers"][MISSING.name] == {"status": "skipped", "reason": "not installed: pip install no-such-peer"}
    assert "No Such Peer: not installed: pip install no-such-peer" in run.table.splitlines()


def test_the_table_has_a_row_per_peer_measured_and_a_line_per_promise(run: Run):
    lines = run.table.splitlines()
    assert "beside its peers" in lines[0] and "64-byte echo" in lines[0]
    header = next(line for line in lines if line.startswith("| peer"))
    for column in ("rtt p50 µs", "rtt p99 µs", "pipelined req/s", "1 MiB GB/s", "x raw"):
        assert column in header
    rows = [line for line in lines if line.startswith("| ") and not line.startswith(("| peer", "| -"))]
    assert [row.split("|")[1].strip() for row in rows] == list(ALWAYS)
    for name in _peers.PROMISED:  # not selected here: said so, never judged
        assert f"zprokit ahead of {name} on every row: not measured (skipped: not selected (--peers))" in lines
        assert run.report["promises"][name]["ahead_on_every_row"] is None


def test_a_peer_that_fails_is_reported_and_the_others_still_run():
    def broken(ready: dict[str, Any], key: str) -> Any:
        raise RuntimeError("no echo today")

    failing = _peers.Peer("broken", "Broken Peer", "peer-mp", broken, module="json", pip="json")
    raw, zprokit = _peers.PEERS[:2]
    sizes = Sizes(rtt=20, pipelined=100, stream=0, flow=0, warm=0, big={MiB: 1}, subscribers=0, windows=0,
                  routed=0, rounds=1)
    out = io.StringIO()
    report = _peers.run(sizes, [raw, zprokit, failing], out=out, progress=None)
    assert report["peers"]["Broken Peer"] == {"status": "failed", "reason": "RuntimeError: no echo today"}
    assert report["peers"]["zprokit"]["status"] == "measured"
    assert "Broken Peer: failed: RuntimeError: no echo today" in out.getvalue()


def test_the_promise_names_the_rows_where_zprokit_is_not_ahead():
    metrics = _peers._metrics(64 * MiB)

    def entry(values: list[float | None]) -> dict[str, Any]:
        return {"status": "measured", "version": "1", "bytes_64mib_gbps_round_trips": [5], "metrics": {
            m.key: None if v is None else {"value": v, "ratio": 1.0, "rounds": [v]} for m, v in zip(metrics, values)}}

    entries = {
        "raw pyzmq": entry([50.0, 80.0, 80000.0, 1.2]),
        "zprokit": entry([150.0, 300.0, 20000.0, 0.6]),
        "RPyC": entry([60.0, 300.0, 10000.0, 0.01]),  # ahead of zprokit on p50; p99 a tie: not ahead
        "gRPC": entry([280.0, 400.0, 6000.0, 0.4]),
        "zerorpc": entry([500.0, 700.0, None, 0.2]),  # a row it has not: not judged
    }
    promises = _peers._promises(entries, metrics)
    assert [b["row"] for b in promises["RPyC"]["rows_not_ahead"]] == ["rtt_p50_us", "rtt_p99_us"]
    assert promises["RPyC"]["ahead_on_every_row"] is False
    assert promises["gRPC"] == {"ahead_on_every_row": True, "rows_not_ahead": []}
    assert promises["zerorpc"]["ahead_on_every_row"] is True

    report = {"machine": {"zprokit": "0", "cpu": "x", "cores": 2, "usable_cores": 2, "load_average": [0.0],
                          "os": "Linux", "python": "3", "pyzmq": "27", "libzmq": "4"},
              "config": {"payload_bytes": 64, "rounds": 1, "big_round_trips": 5, "big_budget_s": 10.0},
              "seconds": 1.0, "peers": entries, "promises": promises,
              "metrics": {m.key: {"label": m.label, "unit": m.unit, "better": m.better} for m in metrics}}
    out = io.StringIO()
    _peers.print_table(report, out)
    lines = out.getvalue().splitlines()
    assert "zprokit ahead of RPyC on every row: no (rtt p50: 150.0 vs 60.0 µs; rtt p99: 300.0 vs 300.0 µs)" in lines
    assert "zprokit ahead of gRPC on every row: yes" in lines
    zerorpc_row = next(line for line in lines if line.startswith("| zerorpc"))
    assert re.search(r"\|\s+n/a\s+\|", zerorpc_row)


def test_large_payloads_are_timed_within_the_budget(monkeypatch: pytest.MonkeyPatch):
    """A slow peer's first large round trip counts (the warm-up is lost in it), and no more are timed
    than fit in the budget; a fast one's first is a warm-up. A fake clock: nothing here waits."""
    now = [0.0]
    step = [2.0]
    monkeypatch.setattr(_peers.time, "perf_counter", lambda: now[0])

    def echo(payload: bytes) -> bytes:
        now[0] += step[0]
        return payload

    gbps, timed = _peers._bandwidth_within(echo, bytes(1000), 10)
    assert timed == 5 and gbps == pytest.approx(2 * 1000 * 5 / 10.0 / 1e9)  # 2 s each: 5 fit in 10 s
    step[0] = 0.01
    assert _peers._bandwidth_within(echo, bytes(1000), 3)[1] == 3  # after one untimed


def test_the_option_takes_every_peer_or_those_named():
    parser = build_parser()
    assert parser.parse_args(["bench"]).peers is None
    assert parser.parse_args(["bench", "--peers", "--quick"]).peers == PEER_NAMES
    assert parser.parse_args(["bench", "--peers", "gRPC, rpyc"]).peers == ("grpc", "rpyc")
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--peers", "corba"])
    assert {p.key for p in _peers.PEERS} == {"raw", "zprokit", *PEER_NAMES}


def test_no_peer_is_a_dependency_not_even_for_the_tests():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    declared = config["options"]["install_requires"] + "".join(config["options.extras_require"].values())
    names = {re.split(r"[<>=!~\[; ]", line.strip())[0].lower() for line in declared.splitlines() if line.strip()}
    peers = {p.pip.lower() for p in _peers.PEERS if p.module is not None}
    assert peers == {"pyro5", "rpyc", "grpcio", "zerorpc"} and not names & peers
