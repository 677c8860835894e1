"""Shared test plumbing: a leak check on every test, ``wait_until``, and a subprocess's environment.

Every test must leave behind no thread and no child process it started
(the README: `close()` stops every thread it started and leaves no process behind). Threads that are already on their way out
(a daemon thread that runs ``close``, a worker told to stop) get a short,
bounded grace period, polled against a deadline; whatever is still there
after it fails the test.
"""

from __future__ import annotations

import glob
import os
import sys
import threading
import time
from typing import Any, Callable

import pytest
import zmq.utils.garbage as zmq_garbage

from zprokit import _env

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
LEAK_GRACE = 5.0  # seconds a finishing thread or process may take to go away
POLL = 0.01


def standalone_env() -> dict[str, str]:
    """This environment without zprokit's variables (a key, an endpoint, a name: a subprocess gets
    those from its test), but with ``ZPROKIT_PURE_PYTHON``: a subprocess runs the build the suite runs."""
    return {k: v for k, v in os.environ.items() if not k.startswith(_env.PREFIX) or k == _env.PURE_PYTHON}


def wait_until(predicate: Callable[[], object], timeout: float = 5.0, interval: float = POLL) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds have passed; its last truth value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return bool(predicate())
        time.sleep(interval)


def idle(main: Any, *windows: Any) -> bool:
    """No call or stream left anywhere: not awaiting an answer, queued, running or carried."""
    stats = main.stats()
    busy = stats["pending_requests"] + stats["requests_queued"] + stats["requests_running"] + stats["pending_routes"]
    for window in windows:
        w = window.stats()
        busy += w["pending_requests"] + w["requests_queued"] + w["requests_running"]
    return bool(busy == 0)


def child_pids(pid: int | None = None) -> set[int]:
    """The pids of the direct children of ``pid`` (default: this process), zombies included."""
    pid = os.getpid() if pid is None else pid
    files = glob.glob(f"/proc/{pid}/task/*/children")
    if files:
        found: set[int] = set()
        for path in files:
            try:
                with open(path) as f:
                    found.update(int(p) for p in f.read().split())
            except FileNotFoundError:  # the thread ended while we looked
                continue
        return found
    # Kernels without CONFIG_PROC_CHILDREN: scan every process's parent.
    found = set()
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.split("/")[2]))
    return found


def _describe_process(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return f"{pid} (gone)"
    return f"{pid} state={state} {cmd or '<zombie>'}"


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest):
    """Fail a test that leaves a thread or a child process behind.

    Autouse, so it is set up before (and torn down after) the test's other
    function-scoped fixtures, ``zprokit_main`` and ``zprokit_window`` included:
    what they close counts as cleaned up.
    """
    threads_before = set(threading.enumerate())
    children_before = child_pids()
    yield
    if hasattr(request.node, "rep_call") and request.node.rep_call.failed:
        # The test failed already; a leak report would only bury its message.
        # Still give stragglers their grace, so they do not spill into the next test's check.
        wait_until(lambda: not (set(threading.enumerate()) - threads_before), LEAK_GRACE)
        return

    def new_threads() -> list[threading.Thread]:
        # pyzmq's own garbage collector (one per process, started by the first zero-copy send)
        # is not the test's: it lives as long as the process, whichever test started it.
        pyzmq_gc = getattr(zmq_garbage.gc, "thread", None)
        return [t for t in threading.enumerate() if t not in threads_before and t.is_alive() and t is not pyzmq_gc]

    def new_children() -> set[int]:
        return child_pids() - children_before

    wait_until(lambda: not new_threads() and not new_children(), LEAK_GRACE)
    leaked_threads = new_threads()
    leaked_children = new_children()
    problems = []
    if leaked_threads:
        problems.append("threads left running: " + ", ".join(sorted(t.name for t in leaked_threads)))
    if leaked_children:
        problems.append("child processes left: " + "; ".join(_describe_process(p) for p in sorted(leaked_children)))
    if problems:
        pytest.fail(f"{request.node.nodeid} leaked after {LEAK_GRACE} s: " + " | ".join(problems), pytrace=False)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    # Remember each phase's outcome on the item, so ``no_leaks`` can tell a failed test apart.
    outcome = yield
    report = outcome.get_result()
    setattr(item, "rep_" + report.when, report)


@pytest.fixture
def tests_dir() -> str:
    """This directory, for ``PYTHONPATH`` of child processes that import ``_targets``."""
    return TESTS_DIR


if TESTS_DIR not in sys.path:  # ``_targets`` is imported by the tests too
    sys.path.insert(0, TESTS_DIR)


class Inbox:
    """A thread-safe list that tests wait on: callbacks ``put`` into it, tests ``get`` with a deadline."""

    def __init__(self) -> None:
        self._items: list[object] = []
        self._taken = 0
        self._cond = threading.Condition()

    def put(self, *item: object) -> None:
        with self._cond:
            self._items.append(item[0] if len(item) == 1 else item)
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[object]:
        """The first ``count`` items, waiting up to ``timeout`` s; fails the test if they do not come."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._items) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"expected {count} items within {timeout} s, got {len(self._items)}: {self._items!r}")
                self._cond.wait(left)
            return list(self._items[:count])

    def get(self, timeout: float = 5.0) -> object:
        """The next item not yet taken by ``get``."""
        item = self.wait_for(self._taken + 1, timeout)[self._taken]
        self._taken += 1
        return item

    @property
    def items(self) -> list[object]:
        with self._cond:
            return list(self._items)

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


def patiently(send: Callable[[], object], timeout: float = 60.0) -> object:
    """``send()``, again while it raises ``QueueFull``: a full queue tells a sender to wait, not to give up."""
    from zprokit import QueueFull

    deadline = time.monotonic() + timeout
    while True:
        try:
            return send()
        except QueueFull:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.001)
