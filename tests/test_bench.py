"""``zprokit bench --quick`` runs, and its figures are well-formed. No figure is judged: the targets live in the benchmark.

One run serves every test here (it takes seconds): a module-scoped fixture
runs the command as a subprocess, as a user would, with ``--json``.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import math
import secrets
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

import zprokit
from zprokit.bench import METRICS

from conftest import standalone_env

pytestmark = pytest.mark.timeout(180)

_SCRIPT = Path(sys.executable).with_name("zprokit")
ZPROKIT = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "zprokit"]
HAS_NUMPY = importlib.util.find_spec("numpy") is not None
TOKEN_VAR = "BENCH_TEST_TOKEN"  # inherited by every process the bench starts, so strays can be found


class Run:
    def __init__(self, result: subprocess.CompletedProcess[str], report: dict, token: str) -> None:
        self.result = result
        self.report = report
        self.token = token


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    token = secrets.token_hex(8)
    env = standalone_env()
    env[TOKEN_VAR] = token
    result = subprocess.run([*ZPROKIT, "bench", "--quick", "--json", str(path)], env=env, capture_output=True,
                            text=True, timeout=170, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"status {result.returncode}\n{result.stdout}\n{result.stderr}"
    return Run(result, json.loads(path.read_text()), token)


def expected_metrics() -> list[str]:
    return [m.key for m in METRICS if HAS_NUMPY or not m.key.startswith("numpy_")]


def test_every_metric_is_present(run: Run):
    assert list(run.report["metrics"]) == expected_metrics()


def test_figures_are_positive_finite_numbers_and_the_ratio_is_zprokit_over_raw(run: Run):
    rounds = run.report["config"]["rounds"]
    for key, m in run.report["metrics"].items():
        for side in ("raw", "zprokit", "ratio"):
            value = m[side]
            assert isinstance(value, float) and math.isfinite(value) and value > 0, (key, side, value)
        assert m["ratio"] == pytest.approx(m["zprokit"] / m["raw"], rel=1e-9), key
        assert m["unit"] and m["label"] and m["better"] in ("lower", "higher"), key
        for side in ("raw", "zprokit"):
            assert len(m["rounds"][side]) == rounds, (key, side)
            assert m[side] == statistics.median(m["rounds"][side]), (key, side)
    assert run.report["config"]["ratio"] == "zprokit / raw"


def test_round_trip_p99_is_no_less_than_p50(run: Run):
    metrics = run.report["metrics"]
    for side in ("raw", "zprokit"):
        assert metrics["rtt_p99_us"][side] >= metrics["rtt_p50_us"][side]
        assert metrics["rtt_pooled_p99_us"][side] >= metrics["rtt_pooled_p50_us"][side]


def test_every_window_was_registered_and_reached(run: Run):
    n = run.report["config"]["windows"]
    checks = run.report["checks"]
    assert checks["windows_registered"] == checks["windows_reached_by_name"] == checks["windows_reached_by_broadcast"] == n


def test_the_stream_is_set_beside_zprokits_pipelined_requests(run: Run):
    """Figures only, not judged: the medians of the rows, and their ratios."""
    metrics = run.report["metrics"]
    beside = run.report["checks"]["stream_vs_pipelined"]
    assert beside["stream_ips"] == metrics["stream_ips"]["zprokit"]
    for key, ratio in (("pipelined_rps", "ratio_inline"), ("pipelined_pooled_rps", "ratio_pooled")):
        assert beside[key] == metrics[key]["zprokit"]
        assert beside[ratio] == pytest.approx(beside["stream_ips"] / beside[key], rel=1e-9)
    assert beside["at_least_as_fast"] == (beside["stream_ips"] >= max(beside["pipelined_rps"],
                                                                        beside["pipelined_pooled_rps"]))


def test_the_machine_is_described(run: Run):
    machine = run.report["machine"]
    for field in ("cpu", "cores", "python", "pyzmq", "libzmq"):
        assert machine[field], field
    assert machine["numpy"] if HAS_NUMPY else machine["numpy"] is None


def test_the_build_is_the_one_the_suite_runs_and_is_in_the_header(run: Run):
    """The bench measures the build this process runs (``ZPROKIT_PURE_PYTHON`` passes to it, and
    from it to its children, each of which must say it runs the same build or fail the run)."""
    assert run.report["machine"]["build"] == zprokit.build_mode()
    assert f"build: {zprokit.build_mode()}, here and in every child process" in run.result.stdout.splitlines()[:3]


def test_the_table_shows_both_sides_and_the_ratio(run: Run):
    out = run.result.stdout
    lines = out.splitlines()
    assert lines[0].startswith("zprokit ") and "beside raw pyzmq" in lines[0]
    assert any(line.startswith("machine: ") for line in lines)
    assert "ratio = zprokit / raw" in out
    header = next(line for line in lines if line.startswith("| metric"))
    for column in ("raw pyzmq", "zprokit", "zprokit/raw"):
        assert column in header
    rows = [line for line in lines if line.startswith("| ") and not line.startswith(("| metric", "| -"))]
    assert len(rows) == len(expected_metrics())
    for m, row in zip(run.report["metrics"].values(), rows):
        assert row.startswith(f"| {m['label']}") and f"{m['ratio']:.2f}" in row


def test_no_process_outlives_the_bench(run: Run):
    strays = []
    for environ in glob.glob("/proc/[0-9]*/environ"):
        try:
            with open(environ, "rb") as f:
                if f"{TOKEN_VAR}={run.token}".encode() in f.read().split(b"\0"):
                    strays.append(environ.split("/")[2])
        except OSError:  # gone, or not ours
            continue
    assert not strays, f"processes left behind by the bench: {strays}"


def test_children_get_the_key_from_their_environment_not_their_command_line():
    from zprokit import bench

    key = secrets.token_hex(32)
    runner = bench._Bench(bench.Sizes.choose(True, None, None), key, progress=None)
    with runner.children() as start:
        child = start("raw-echo")
        child.expect("ready")
        with open(f"/proc/{child.pid}/cmdline", "rb") as f:
            cmdline = f.read()
        with open(f"/proc/{child.pid}/environ", "rb") as f:
            environ = f.read().split(b"\0")
    assert b"--serve" in cmdline and key.encode() not in cmdline
    assert f"ZPROKIT_KEY={key}".encode() in environ
    assert child.proc.returncode == 0  # it left when its stdin closed


def test_bad_options_are_usage_errors():
    result = subprocess.run([*ZPROKIT, "bench", "--rounds", "0"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "--rounds" in result.stderr


def test_the_zprokit_command_does_not_import_the_benchmark():
    """Only ``zprokit bench`` loads the measurements and their child programs."""
    code = "import sys, zprokit.cli; zprokit.cli.build_parser(); print('zprokit.bench._run' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
