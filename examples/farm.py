"""A distributed work farm: a main hands out tasks to the windows of a worker group, here or on many hosts.

``Farm(main).map(func, inputs)`` runs ``func`` over ``inputs`` on the workers and returns the results
in input order, printing progress as tasks finish; ``python examples/farm.py`` does it with three
local workers. Across hosts (the compose demo's commands, with this app)::

    zprokit main --bind tcp://0.0.0.0:5555 --pub-bind tcp://0.0.0.0:5556 --key-file KEY examples.farm:serve
    zprokit window --name "worker-$HOSTNAME" --group workers --connect tcp://MAIN:5555 \\
        --key-file KEY examples.farm:worker
    zprokit window --name client --connect tcp://MAIN:5555 --key-file KEY examples.farm:client

Each task is one ``main.call_any("workers", ...)``: the least-loaded member of the group takes it,
and if that one dies or is cut off with it, another does (``retries``), so every result comes back
exactly once. At most two tasks per worker are in flight, so a slow worker gets less work and a new
one its share. The function travels cloudpickled (a lambda works); the main passes the bytes on
unread. ``func`` raising fails the job with its ``RemoteError`` and cancels the tasks still out. A
client's job is a stream call (``render_stream_from_main``): the main's generator handler yields
each ``(index, result)`` as its task finishes, so the client shows progress as it happens.
"""

from __future__ import annotations

import functools
import math
import os
import queue
import secrets
import sys
import threading
import time
from collections import Counter, deque
from typing import Any, Callable, Iterable, Iterator, TextIO

import cloudpickle

from zprokit import Main, Timeout, WindowNotFound, init_ipc

GROUP = "workers"  # the compose demo's group too, so its workers run the farm as they are
TASK = "farm.task"
MAP = "farm.map"


def say(text: str, out: TextIO | None = None) -> None:
    """Print ``text`` as one write (lines from several threads never run together); a closed pipe is ignored."""
    try:
        (out or sys.stdout).write(text + "\n")
        (out or sys.stdout).flush()
    except (OSError, ValueError):
        pass  # the display went away: the work goes on without it


class Farm:
    """Runs tasks on the members of ``group``, printing to ``out`` (default ``sys.stdout``). ``task_timeout``
    (s) bounds each task over every worker it goes to; ``retries``: how many more it may go to."""

    def __init__(self, main: Main, *, out: TextIO | None = None, task_timeout: float = 600.0,
                 retries: int = 3, group: str = GROUP) -> None:
        self.main, self.out, self.group = main, out, group
        self.task_timeout, self.retries = task_timeout, retries
        main.on_window_connected(lambda info: self._member(info, "joined"))
        main.on_window_disconnected(lambda info: self._member(info, "left"))

    def workers(self) -> list[str]:
        """The members of the group ready for work now."""
        return [w.name for w in self.main.get_all_windows() if self.group in w.groups and w.ready]

    def wait_for_workers(self, count: int, timeout: float = 30.0) -> bool:
        """Block until at least ``count`` workers are ready; False after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while len(self.workers()) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return len(self.workers()) >= count

    def map(self, func: Callable[[Any], Any], inputs: Iterable[Any], *, timeout: float | None = None) -> list[Any]:
        """``[func(x) for x in inputs]``, computed by the workers; raises what the first failed task raised.
        ``timeout`` (s; ``None``: as long as it takes) fails the job with ``zprokit.Timeout``."""
        done = self.imap(cloudpickle.dumps(func), inputs, timeout=timeout)
        return [result for _, result in sorted(done, key=lambda pair: pair[0])]

    def imap(self, blob: bytes, inputs: Iterable[Any], *, timeout: float | None = None) -> Iterator[tuple[int, Any]]:
        """``(index, result)`` as each task finishes, for a function cloudpickled already (``blob``)."""
        todo, job, started = deque(enumerate(inputs)), secrets.token_hex(4), time.monotonic()
        total, deadline = len(todo), math.inf if timeout is None else started + timeout
        finished: queue.SimpleQueue[Any] = queue.SimpleQueue()
        running: dict[Any, int] = {}  # each task's future -> its input's index
        shares: Counter[str] = Counter()
        say(f"farm: job {job}: {total} tasks for {len(self.workers())} workers ({', '.join(self.workers())})", self.out)
        try:
            while todo or running:
                while todo and len(running) < 2 * max(1, len(self.workers())):
                    try:
                        future = self.main.call_any(self.group, (blob, todo[0][1]), channel=TASK,
                                                    timeout=self.task_timeout, retries=self.retries)
                    except WindowNotFound:  # no worker now: the job fails, unless tasks are still out there
                        if not running:
                            raise
                        break
                    running[future] = todo.popleft()[0]
                    future.add_done_callback(finished.put)
                try:
                    future = finished.get(timeout=min(max(0.0, deadline - time.monotonic()), threading.TIMEOUT_MAX))
                except queue.Empty:
                    raise Timeout(f"job {job} not done within {timeout} s") from None
                index = running.pop(future)
                worker, result = future.result()  # a task's error fails the job
                shares[worker] += 1
                say(f"farm: job {job}: {sum(shares.values())}/{total} done by {worker}, "
                    f"{len(running)} running on {len(self.workers())} workers", self.out)
                yield index, result
        except Exception as e:
            say(f"farm: job {job} failed: {type(e).__name__}: {e}", self.out)
            raise
        finally:
            for future in running:  # the job failed, or its consumer left: the workers are told
                future.cancel()
        done_by = ", ".join(f"{name} {n}" for name, n in sorted(shares.items()))
        say(f"farm: job {job}: {total} tasks done in {time.monotonic() - started:.2f} s ({done_by})", self.out)

    def _member(self, info: Any, what: str) -> None:
        if self.group in info.groups:
            say(f"farm: {info.name} {what} ({info.address or info.host})", self.out)


# --- the command line's APP and TARGETs --------------------------------------------------------


def serve(main: Main) -> Farm:
    """APP for ``zprokit main``: a farm that streams the results of each job a client sends on ``farm.map``."""
    farm = Farm(main)

    @main.on_msg_from_render(channel=MAP)
    def run(event: Any, job: tuple[bytes, list[Any], float]) -> Iterator[tuple[int, Any]]:
        blob, inputs, timeout = job
        say(f"farm: {event.sender} sent a job of {len(inputs)} tasks")
        yield from farm.imap(blob, inputs, timeout=timeout)

    return farm


def worker(window: Any) -> None:
    """TARGET for ``zprokit window --group workers`` (or ``create_window(..., groups=("workers",))``)."""
    if GROUP not in window.groups:
        say(f"{window.name}: not in group {GROUP!r}, so the farm cannot find it (--group {GROUP})", sys.stderr)
    load = functools.lru_cache(maxsize=8)(cloudpickle.loads)  # each job's function, loaded once

    @window.on_msg_from_main(channel=TASK)
    def run(event: Any, task: tuple[bytes, Any]) -> tuple[str, Any]:
        blob, arg = task
        return window.name, load(blob)(arg)

    window.wait_closed()


def submit(window: Any, func: Callable[[Any], Any], inputs: Iterable[Any], *, timeout: float = 600.0,
           progress: Callable[[int, int], Any] | None = None) -> list[Any]:
    """From any window: run a job on the farm of ``zprokit main ... examples.farm:serve``; its results
    in input order, calling ``progress(done, total)`` as tasks finish. A failed job raises ``RemoteError``."""
    inputs, results = list(inputs), {}
    with window.render_stream_from_main((cloudpickle.dumps(func), inputs, timeout), channel=MAP,
                                        timeout=timeout) as stream:
        for index, result in stream:
            if index in results:
                raise RuntimeError(f"task {index} answered twice")
            results[index] = result
            if progress is not None:
                progress(len(results), len(inputs))
    return [results[i] for i in range(len(inputs))]


def client(window: Any) -> None:
    """TARGET: submit a demo job (``FARM_TASKS`` squares, each taking ``FARM_DELAY`` s) and print its progress."""
    tasks, delay = int(os.environ.get("FARM_TASKS", "40")), float(os.environ.get("FARM_DELAY", "0.1"))
    results = submit(window, lambda x: (time.sleep(delay), x * x)[1], range(tasks),
                     progress=lambda done, total: say(f"{window.name}: {done}/{total} done"))
    ok = results == [x * x for x in range(tasks)]
    say(f"{window.name}: {len(results)} results, in order: {results}")
    say(f"{window.name}: " + ("every result present once, in order" if ok else "WRONG RESULTS"))
    if not ok:
        raise SystemExit(1)


def main() -> int:
    with init_ipc("tcp://127.0.0.1:0") as ipc:
        farm = Farm(ipc)
        for n in range(1, 4):
            ipc.create_window(f"worker-{n}", worker, groups=(GROUP,))
        if not farm.wait_for_workers(3, timeout=30):
            say("farm: the workers did not come")
            return 1
        say("farm: 3 workers ready")
        results = farm.map(lambda x: (time.sleep(0.05), x * x)[1], range(24))
    say(f"farm: results in order: {results}")
    return 0 if results == [x * x for x in range(24)] else 1


if __name__ == "__main__":
    raise SystemExit(main())
