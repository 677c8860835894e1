"""The zprokit command end to end: real processes, output read with deadlines, nothing left behind.

The APP and TARGET functions live in ``tests/_cli_app.py``, importable by the
command through ``PYTHONPATH``. Mains bind ``tcp://127.0.0.1:0`` and the
tests read the bound endpoint from the ``listening on`` line.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import pytest

from zprokit import __version__, build_mode, cli

from conftest import standalone_env

pytestmark = pytest.mark.timeout(60)

TESTS_DIR = Path(__file__).resolve().parent
REPO = TESTS_DIR.parent
_SCRIPT = Path(sys.executable).with_name("zprokit")  # the console script, when the package is installed
ZPROKIT = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "zprokit"]
KEY = "0123456789abcdef-a-key-for-the-cli-tests"
DEADLINE = 15.0  # seconds any one expected line or exit may take
COMMANDS = ["demo", "main", "window", "windows", "ping", "keygen", "bench"]

# Every row of the README's API tour, as the demo's transcript names them.
API_ROWS = [
    "init_ipc", "on_msg_from_render", "render_msg_to_main", "main_msg_to_render", "on_msg_from_main",
    "main_call_render", "broadcast", "on_broadcast", "render_msg_to_render", "on_render_msg_to_render",
    "render_call_render", "call_any", "call_all", "render_call_any", "create_window", "init_expose_in_main_world", "get_window", "has_window",
    "get_all_windows", "destroy_window", "on_window_connected", "on_window_disconnected", "stats()",
    "close()", "NoHandler", "RemoteError", "WindowNotFound",
]


def cli_env(key: str | None = KEY) -> dict[str, str]:
    env = standalone_env()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS_DIR), str(REPO), env.get("PYTHONPATH")) if p)
    if key is not None:
        env["ZPROKIT_KEY"] = key
    return env


def zprokit(*args: str, key: str | None = KEY, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run a zprokit command to its end (killed after ``timeout`` s)."""
    return subprocess.run(
        [*ZPROKIT, *args], env=cli_env(key), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("zprokit "), result.stderr
    for word in words:
        assert word in lines[0]


class Background:
    """A zprokit command left running; its output is read line by line against deadlines."""

    def __init__(self, *args: str, key: str | None = KEY) -> None:
        self.proc = subprocess.Popen(
            [*ZPROKIT, *args], env=cli_env(key), text=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self.pid = self.proc.pid
        self.seen: list[str] = []  # stdout lines read so far
        self.errors: list[str] = []  # stderr, as it comes
        self._lines: queue.Queue[str | None] = queue.Queue()  # stdout; None at its end
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self._lines.put), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.errors.append), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream, put) -> None:
        for line in stream:
            put(line.rstrip("\n"))
        put(None)

    def expect(self, pattern: str, timeout: float = DEADLINE) -> re.Match[str]:
        """The first line of stdout matching ``pattern``; fails after ``timeout`` s or at EOF."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                pytest.fail(f"no line like {pattern!r} from {self.proc.args} within {timeout} s; "
                            f"stdout {self.seen}, stderr {self.errors}, exit status {self.proc.poll()}")
            self.seen.append(line)
            match = re.search(pattern, line)
            if match:
                return match

    def signal(self, signum: int, timeout: float = DEADLINE) -> tuple[int, float]:
        """Send ``signum``; the exit status and how many seconds the process took to end."""
        start = time.monotonic()
        self.proc.send_signal(signum)
        try:
            return self.proc.wait(timeout), time.monotonic() - start
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.proc.args} still running {timeout} s after signal {signum}; stderr {self.errors}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(DEADLINE)
        for reader in self._readers:
            reader.join(DEADLINE)
        self.proc.stdout.close()
        self.proc.stderr.close()
        self.errors = [line for line in self.errors if line is not None]


def gone(pid: int, timeout: float = DEADLINE) -> bool:
    """True once no process ``pid`` exists (polled against a deadline)."""
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture(scope="module")
def cli_main(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """``zprokit main`` with the key in a file; the commands under test get it from ZPROKIT_KEY."""
    key_file = tmp_path_factory.mktemp("cli") / "key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    main = Background("main", "--bind", "tcp://127.0.0.1:0", "--key-file", str(key_file), "_cli_app:app", key=None)
    try:
        endpoint = main.expect(r"^zprokit main: listening on (tcp://127\.0\.0\.1:\d+)").group(1)
        yield SimpleNamespace(endpoint=endpoint, proc=main)
        status, _ = main.signal(signal.SIGINT)
        assert status == 0, main.errors
    finally:
        main.close()


# --- commands without a main -----------------------------------------------------------


def test_demo_exits_0_and_its_transcript_names_every_api_row():
    result = zprokit("demo")
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^demo: (\d+)/\1 checks passed$", result.stdout, re.M), result.stdout
    assert "FAIL" not in result.stdout and "Traceback" not in result.stderr, result.stderr
    for row in API_ROWS:
        assert row in result.stdout, f"the demo's transcript does not name {row}"
    # who sent what to whom
    assert re.search(r"main -> work +\[default\] message +'msg from main'", result.stdout)
    assert re.search(r"render -> work +\[default\] message +'Hello Work'", result.stdout)


def test_python_dash_m_zprokit_help_lists_the_commands():
    result = subprocess.run([sys.executable, "-m", "zprokit", "--help"], env=cli_env(), capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: zprokit ")
    for command in COMMANDS:
        assert re.search(rf"^\s+{command}\s", result.stdout, re.M), command


def test_version_names_the_build():
    """``--version``: the version, and whether the hot path runs compiled or as pure Python (the
    build this suite runs: ``ZPROKIT_PURE_PYTHON`` reaches the command)."""
    result = zprokit("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"zprokit {__version__}, {build_mode()}\n"
    assert build_mode().startswith(("compiled (Cython ", "pure Python (", "partly compiled ("))


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exit:
        cli.main([command, "--help"])
    assert exit.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: zprokit {command}") and "--log-level" in out


def test_no_command_line_value_is_taken_for_a_key(capsys: pytest.CaptureFixture[str]):
    # No --key option, and no abbreviation of --key-file either: a key typed there would show in ps.
    with pytest.raises(SystemExit) as exit:
        cli.main(["ping", "--connect", "tcp://127.0.0.1:1", "--key", "secret"])
    assert exit.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_keygen_writes_a_new_key_to_a_0600_file(tmp_path: Path):
    path = tmp_path / "key"
    result = zprokit("keygen", "-o", str(path), key=None)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert re.fullmatch(r"[0-9a-f]{64}\n", path.read_text())
    assert path.read_text().strip() not in result.stdout  # the key is not echoed

    assert_one_line_error(zprokit("keygen", "-o", str(path), key=None), "exists", "--force")
    path.chmod(0o644)
    old = path.read_text()
    assert zprokit("keygen", "-o", str(path), "--force", key=None).returncode == 0
    assert path.read_text() != old and stat.S_IMODE(path.stat().st_mode) == 0o600

    printed = zprokit("keygen", key=None)
    assert printed.returncode == 0 and re.fullmatch(r"[0-9a-f]{64}\n", printed.stdout)


@pytest.mark.parametrize("app, words", [
    ("no_such_module_xyz:app", ["no module named 'no_such_module_xyz'"]),
    ("_cli_app:no_such_function", ["no attribute"]),
    ("_cli_app", ["module:function"]),
])
def test_a_bad_app_spec_is_a_one_line_error(app: str, words: list[str]):
    assert_one_line_error(zprokit("main", "--bind", "tcp://127.0.0.1:0", app), "APP", *words)


def test_an_unreachable_main_is_a_one_line_timeout():
    result = zprokit("ping", "--connect", "tcp://127.0.0.1:1", "--timeout", "0.5")
    assert_one_line_error(result, "Timeout")


# --- against a running `zprokit main` ---------------------------------------------------


def test_a_window_process_makes_a_request_and_exits_0(cli_main: SimpleNamespace):
    result = zprokit("window", "--name", "asker", "--connect", cli_main.endpoint, "_cli_app:ask")
    assert result.returncode == 0, result.stderr
    assert "answer: 21" in result.stdout


def test_a_target_that_raises_exits_1(cli_main: SimpleNamespace):
    result = zprokit("window", "--name", "failer", "--connect", cli_main.endpoint, "_cli_app:fail")
    assert result.returncode == 1
    assert "this target fails on purpose" in result.stderr  # logged with its traceback: a bug to fix


def test_windows_lists_a_window_and_a_taken_name_is_refused(cli_main: SimpleNamespace):
    window = Background("window", "--name", "worker-7", "--connect", cli_main.endpoint, "_cli_app:serve")
    try:
        window.expect(r"^ready$")
        listing = zprokit("windows", "--connect", cli_main.endpoint)
        assert listing.returncode == 0, listing.stderr
        header, *rows = listing.stdout.splitlines()
        assert header.split()[:4] == ["NAME", "HOST", "PID", "UPTIME"]
        assert [row.split()[0] for row in rows] == ["worker-7"], listing.stdout  # not the command's own window
        assert rows[0].split()[2] == str(window.pid)

        taken = zprokit("window", "--name", "worker-7", "--connect", cli_main.endpoint, "_cli_app:serve")
        assert_one_line_error(taken, "NameInUse", "worker-7")

        status, took = window.signal(signal.SIGTERM)
        assert status == 0 and took < 5, (status, took, window.errors)
    finally:
        window.close()


def test_ping_prints_round_trip_times(cli_main: SimpleNamespace):
    result = zprokit("ping", "--connect", cli_main.endpoint, "-n", "3")
    assert result.returncode == 0, result.stderr
    rtts = [float(ms) for ms in re.findall(r"^seq=\d+ time=([\d.]+) ms$", result.stdout, re.M)]
    assert len(rtts) == 3, result.stdout
    summary = re.search(r"^3 sent, 3 answered, min/median/max = ([\d.]+)/([\d.]+)/([\d.]+) ms$", result.stdout, re.M)
    assert summary, result.stdout
    low, median, high = map(float, summary.groups())
    assert low <= median <= high and low == pytest.approx(min(rtts), abs=1e-3)


@pytest.mark.parametrize("command", ["ping", "windows", "window"])
def test_a_wrong_key_is_a_one_line_error(cli_main: SimpleNamespace, command: str):
    args = [command, "--connect", cli_main.endpoint]
    if command == "window":
        args += ["--name", "intruder", "_cli_app:serve"]
    result = zprokit(*args, key="not the key, but a long one")
    assert_one_line_error(result, "AuthenticationError")
    assert "Traceback" not in result.stderr


def test_a_missing_key_is_a_one_line_error(cli_main: SimpleNamespace, tmp_path: Path):
    assert_one_line_error(zprokit("ping", "--connect", cli_main.endpoint, key=None), "no key", "ZPROKIT_KEY")
    missing = tmp_path / "nothing-here"
    assert_one_line_error(zprokit("ping", "--connect", cli_main.endpoint, "--key-file", str(missing)), "key file")


# --- shutting down ----------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_closes_zprokit_main_promptly_leaving_no_process(signum: int):
    main = Background("main", "--bind", "tcp://127.0.0.1:0", "_cli_app:app_with_worker")
    try:
        worker = int(main.expect(r"^worker pid (\d+)$").group(1))
        main.expect(r"^zprokit main: listening on tcp://")
        status, took = main.signal(signum)
        assert status == 0, main.errors
        assert took < 5, f"took {took:.1f} s to close"
        assert gone(worker), f"the main's window process {worker} outlived it"
    finally:
        main.close()


def test_the_signal_latch_wakes_its_waiter_from_a_handler_that_runs_anywhere(monkeypatch: pytest.MonkeyPatch):
    """What ``zprokit main`` waits on: set by a signal handler sent before the wait, and by one that
    runs inside it (here, as the wait reads). A ``threading.Event`` set from a handler that runs while
    the main thread holds the Event's lock (entering ``wait``) would wait for ever."""
    real_read = os.read

    def read_after_a_signal(fd: int, n: int) -> bytes:
        os.kill(os.getpid(), signal.SIGUSR1)  # the handler runs here, inside wait()
        return real_read(fd, n)

    previous = signal.getsignal(signal.SIGUSR1)
    with cli._SignalLatch() as latch:
        signal.signal(signal.SIGUSR1, lambda signum, frame: latch.set(signum))
        try:
            os.kill(os.getpid(), signal.SIGUSR1)
            latch.wait()  # returns: the byte was there before it
            monkeypatch.setattr(os, "read", read_after_a_signal)
            latch.wait()
        finally:
            signal.signal(signal.SIGUSR1, previous)


# --- liveness settings ------------------------------------------------------------------


def test_main_and_window_take_heartbeat_and_liveness(cli_main: SimpleNamespace):
    main = Background("main", "--bind", "tcp://127.0.0.1:0", "--heartbeat", "0.25", "--liveness", "2",
                      "_cli_app:app_liveness")
    try:
        main.expect(r"^main heartbeat 0\.25 liveness 2$")
        main.expect(r"^zprokit main: listening on tcp://")
        status, _ = main.signal(signal.SIGTERM)
        assert status == 0, main.errors
    finally:
        main.close()
    window = zprokit("window", "--name", "lively", "--connect", cli_main.endpoint, "--heartbeat", "0.3",
                     "--liveness", "4", "_cli_app:liveness")
    assert window.returncode == 0, window.stderr
    assert "window heartbeat 0.3 liveness 4" in window.stdout
    defaults = zprokit("window", "--name", "plain", "--connect", cli_main.endpoint, "_cli_app:liveness")
    assert "window heartbeat 1.0 liveness 3" in defaults.stdout, defaults.stderr


@pytest.mark.parametrize("flag, value", [("--heartbeat", "0"), ("--heartbeat", "-1"), ("--heartbeat", "soon"),
                                         ("--liveness", "0"), ("--liveness", "1.5")])
def test_a_bad_heartbeat_or_liveness_is_a_usage_error(flag: str, value: str, capsys: pytest.CaptureFixture[str]):
    for command in (["main", "_cli_app:app"], ["window", "--name", "w", "_cli_app:serve"]):
        with pytest.raises(SystemExit) as exit:
            cli.main([*command[:-1], flag, value, command[-1]])
        assert exit.value.code == 2
        assert f"argument {flag}: expected a" in capsys.readouterr().err
