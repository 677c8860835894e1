"""A distributed work farm: a main hands out tasks to worker windows, on this machine or on many hosts.

``Farm(main).map(func, inputs)`` runs ``func`` over ``inputs`` on the
workers and returns the results in the order of the inputs, printing a
progress line as each task finishes (one line per step; on a terminal, one
line rewritten in place).

Run it here: ``python examples/farm.py`` starts a main and three local
workers (``create_window``), runs a job, prints the progress and the
results, and exits 0.

Across hosts, with the command line (the compose demo's commands with this
app; see the README's "Running on several hosts")::

    # the main's host
    zprokit main --bind tcp://0.0.0.0:5555 --pub-bind tcp://0.0.0.0:5556 --key-file KEY examples.farm:serve
    # each worker host
    zprokit window --name "worker-$HOSTNAME" --connect tcp://MAIN:5555 --key-file KEY examples.farm:worker
    # anywhere: submit a job, watch its progress, print the results
    zprokit window --name client --connect tcp://MAIN:5555 --key-file KEY examples.farm:client

How it works, and the promises it keeps:

- **Workers are found, not configured.** A worker says how many tasks it
  takes at once when it starts (the ``farm.join`` channel; ``FARM_SLOTS`` in
  its environment, default 2). A window that comes back after a partition,
  or finds a restarted main, does not start again: the farm asks every window
  that connects (``farm.slots``), and one without that handler
  (``NoHandler``) is not a worker, or not ready yet and about to join.
- **Balanced by load.** The next task goes to the worker with the fewest
  tasks in flight for its slots, and no worker ever has more in flight than
  its slots: a slow host gets less work, a fast one more.
- **A worker that dies loses nothing.** Its tasks in flight fail with
  ``PeerLost`` as soon as the main notices (at once for a crashed process, a
  few heartbeats for a host cut off), and go back to the front of the queue
  for the others. Each task's result is recorded once: the first answer wins,
  and a late one (there are none in practice: a window that lost the main
  drops its replies) would be counted and ignored.
- **The function travels as bytes.** ``map`` cloudpickles it once; the main
  passes the bytes along without unpickling them, and each worker loads it
  once per job. A lambda or a closure works; so does a function the workers
  could not import.
- **Errors.** ``func`` raising on a worker fails the job with that
  ``RemoteError`` (the rest of its tasks are dropped); a task that outlives
  ``task_timeout`` fails it with ``Timeout``.

Threads on a worker run one task per slot: pure-Python functions share the
GIL, so slots above 1 pay off for functions that wait (I/O) or release it
(NumPy, compression, ...). Slots also hide the network's round trip.
"""

from __future__ import annotations

import os
import secrets
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, TextIO

import cloudpickle

from zprokit import Main, NoHandler, PeerLost, Timeout, WindowNotFound, create_window, init_ipc

TASK = "farm.task"
JOIN = "farm.join"
SLOTS = "farm.slots"
MAP = "farm.map"
PROGRESS = "farm.progress"


def say(text: str, out: TextIO | None = None) -> None:
    """Print ``text`` as one write: lines from several threads never run together."""
    out = out or sys.stdout
    out.write(text + "\n")
    out.flush()


@dataclass(eq=False)
class _Worker:
    name: str
    slots: int
    since: float  # connected_since of the incarnation we know: a rejoin is a new _Worker
    running: set["_Task"] = field(default_factory=set)

    @property
    def load(self) -> float:
        return len(self.running) / self.slots


@dataclass(eq=False)
class _Job:
    id: str
    blob: bytes
    inputs: list[Any]
    results: list[Any]
    done: threading.Event = field(default_factory=threading.Event)
    finished: int = 0
    error: BaseException | None = None
    requeued: int = 0
    by_worker: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)


@dataclass(eq=False)
class _Task:
    job: _Job
    index: int


_UNSET = object()


class Farm:
    """Hands tasks to the worker windows of ``main`` and gathers their results.

    ``out`` is where progress goes (default ``sys.stdout``); ``task_timeout``
    bounds each task in seconds. Progress is also broadcast on the
    ``farm.progress`` topic, for clients on other hosts.
    """

    def __init__(self, main: Main, *, out: TextIO | None = None, task_timeout: float = 600.0) -> None:
        self.main = main
        self.out = out or sys.stdout
        self.task_timeout = task_timeout
        self._tty = self.out.isatty()
        self._cond = threading.Condition()
        self._workers: dict[str, _Worker] = {}
        self._queue: deque[_Task] = deque()
        self.stats: Counter[str] = Counter()
        main.on_msg_from_render(self._on_join, channel=JOIN)
        main.on_window_connected(self._discover)
        main.on_window_disconnected(self._left)
        for info in main.get_all_windows():
            self._discover(info)

    # --- the public side ---------------------------------------------------------------

    def map(self, func: Callable[[Any], Any], inputs: Iterable[Any], *, timeout: float | None = None) -> list[Any]:
        """``[func(x) for x in inputs]``, computed by the workers; raises what the first failed task raised.

        Waits for workers if there are none yet. ``timeout`` (seconds; ``None``:
        as long as it takes) fails the job with ``zprokit.Timeout`` and drops
        its tasks still queued.
        """
        return self.map_pickled(cloudpickle.dumps(func), inputs, timeout=timeout)

    def map_pickled(self, blob: bytes, inputs: Iterable[Any], *, timeout: float | None = None) -> list[Any]:
        """``map`` for a function already cloudpickled (by a client on another host)."""
        inputs = list(inputs)
        job = _Job(secrets.token_hex(4), blob, inputs, [_UNSET] * len(inputs))
        self._say(f"farm: job {job.id}: {len(inputs)} tasks for {self._describe_workers()}")
        with self._cond:
            self._queue.extend(_Task(job, i) for i in range(len(inputs)))
        if not inputs:
            job.done.set()
        self._pump()
        if not job.done.wait(timeout):
            self._fail(job, Timeout(f"job {job.id} not done within {timeout} s"))
        if job.error is not None:
            raise job.error
        took = time.monotonic() - job.started
        shares = ", ".join(f"{name} {n}" for name, n in sorted(job.by_worker.items()))
        self._say(f"farm: job {job.id}: {len(inputs)} tasks done in {took:.2f} s ({shares}); "
                  f"{job.requeued} re-queued")
        return job.results

    def workers(self) -> dict[str, int]:
        """The workers in the pool now: name -> tasks in flight."""
        with self._cond:
            return {name: len(w.running) for name, w in self._workers.items()}

    def wait_for_workers(self, count: int, timeout: float = 30.0) -> bool:
        """Block until at least ``count`` workers are in the pool; False after ``timeout`` s."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self._workers) >= count, timeout)

    # --- workers coming and going ---------------------------------------------------------

    def _on_join(self, event: Any, slots: int) -> None:
        """A worker, once its handlers are in place, says so (a handler, on the ``farm.join`` channel)."""
        info = self.main.get_window(event.sender)
        if info is not None:
            self._add(info, slots)

    def _discover(self, info: Any) -> None:
        """A window connected: ask whether it is a worker (one rejoining after a partition or a main restart)."""
        try:
            asked = self.main.main_call_render(info.name, None, channel=SLOTS, timeout=10)
        except WindowNotFound:
            return  # gone again already
        asked.add_done_callback(lambda f: self._answered(info, f))

    def _answered(self, info: Any, asked: Any) -> None:
        error = asked.exception()
        if error is None:
            self._add(info, asked.result())
        elif not isinstance(error, (NoHandler, PeerLost, WindowNotFound)):
            self._say(f"farm: cannot use {info.name}: {type(error).__name__}: {error}")

    def _add(self, info: Any, slots: int) -> None:
        worker = _Worker(info.name, max(1, int(slots)), info.connected_since)
        with self._cond:
            current = self._workers.get(info.name)
            if current is not None and current.since >= worker.since:
                return  # known already (it joined and answered), or an answer from an older incarnation
            self._workers[info.name] = worker
            self._say(f"farm: {info.name} joined ({worker.slots} slots, {info.address or info.host})")
            self._cond.notify_all()
        self._pump()

    def _left(self, info: Any) -> None:
        with self._cond:
            worker = self._workers.get(info.name)
            if worker is None or worker.since != info.connected_since:
                return
            self._forget(worker, "left")

    def _forget(self, worker: _Worker, why: str) -> None:
        """No new tasks for ``worker``; its tasks in flight come back as each fails with PeerLost. Under the lock."""
        del self._workers[worker.name]
        n = len(worker.running)
        self._say(f"farm: {worker.name} {why}" + (f"; its {n} tasks in flight go back in the queue" if n else ""))

    # --- tasks -----------------------------------------------------------------------------

    def _pump(self) -> None:
        """Hand queued tasks to the least-loaded workers with a free slot."""
        while True:
            with self._cond:
                while self._queue and self._queue[0].job.done.is_set():
                    self._queue.popleft()  # its job failed
                free = [w for w in self._workers.values() if len(w.running) < w.slots]
                if not self._queue or not free:
                    return
                worker = min(free, key=lambda w: (w.load, len(w.running), w.name))
                task = self._queue.popleft()
                worker.running.add(task)
            job = task.job
            try:
                future = self.main.main_call_render(
                    worker.name, (job.id, job.blob, task.index, job.inputs[task.index]), channel=TASK,
                    timeout=self.task_timeout,
                )
            except WindowNotFound as e:
                self._finished(worker, task, e)
                continue
            future.add_done_callback(lambda f, w=worker, t=task: self._finished(w, t, f.exception(), f))

    def _finished(self, worker: _Worker, task: _Task, error: BaseException | None, future: Any = None) -> None:
        job = task.job
        with self._cond:
            lost = isinstance(error, (PeerLost, WindowNotFound, NoHandler))
            if lost and self._workers.get(worker.name) is worker:
                self._forget(worker, f"lost ({type(error).__name__})")  # a rejoin is found again
            worker.running.discard(task)
            if lost:
                if not job.done.is_set():
                    self._queue.appendleft(task)
                    job.requeued += 1
                    self.stats["requeued"] += 1
            elif error is None and not job.done.is_set():
                if job.results[task.index] is _UNSET:
                    job.results[task.index] = future.result()
                    job.finished += 1
                    job.by_worker[worker.name] += 1
                    self.stats["results"] += 1
                else:
                    self.stats["duplicates_ignored"] += 1
            step = error is None and not job.done.is_set()
        if error is not None and not lost:
            self._fail(job, error)
        self._pump()
        if step:
            self._progress(job)
            if job.finished == len(job.inputs):
                self._end_progress()
                job.done.set()

    def _fail(self, job: _Job, error: BaseException) -> None:
        with self._cond:
            if job.done.is_set():
                return
            job.error = error
            job.done.set()
        self._end_progress()
        self._say(f"farm: job {job.id} failed: {type(error).__name__}: {error}")

    # --- progress -------------------------------------------------------------------------

    def _progress(self, job: _Job) -> None:
        with self._cond:
            running = sum(len(w.running) for w in self._workers.values())
            workers = len(self._workers)
        total = len(job.inputs)
        line = f"farm: job {job.id}: {job.finished}/{total} done, {running} running on {workers} workers"
        # On a terminal, one line rewritten in place; elsewhere (a pipe, a log), a line per step.
        self._show("\r" + line.ljust(79) if self._tty else line + "\n")
        self.main.broadcast({"job": job.id, "done": job.finished, "total": total}, topic=PROGRESS)

    def _end_progress(self) -> None:
        if self._tty:
            self._show("\n")

    def _say(self, text: str) -> None:
        self._show(("\r" + text.ljust(79) if self._tty else text) + "\n")

    def _show(self, text: str) -> None:
        try:
            self.out.write(text)
            self.out.flush()
        except (OSError, ValueError):
            pass  # the display went away (a closed pipe): the work goes on without it

    def _describe_workers(self) -> str:
        with self._cond:
            names = sorted(self._workers)
        return f"{len(names)} workers ({', '.join(names)})" if names else "no workers yet"


# --- the command line's APP and TARGETs --------------------------------------------------------


def serve(main: Main) -> Farm:
    """APP for ``zprokit main``: a farm that runs the jobs clients send on the ``farm.map`` channel."""
    farm = Farm(main)

    @main.on_msg_from_render(channel=MAP)
    def run(event: Any, job: tuple[bytes, list[Any], float]) -> list[Any]:
        blob, inputs, timeout = job
        say(f"farm: {event.sender} sent a job of {len(inputs)} tasks")
        return farm.map_pickled(blob, inputs, timeout=timeout)

    return farm


def worker(window: Any) -> None:
    """TARGET for ``zprokit window`` (or ``create_window``): run tasks until the window is closed."""
    slots = int(os.environ.get("FARM_SLOTS", "2"))
    functions: dict[str, Callable[[Any], Any]] = {}  # job id -> its function, loaded once

    @window.on_msg_from_main(channel=TASK)
    def run(event: Any, task: tuple[str, bytes, int, Any]) -> Any:
        job, blob, index, arg = task
        func = functions.get(job)
        if func is None:
            if len(functions) >= 8:
                functions.clear()
            func = functions[job] = cloudpickle.loads(blob)
        return func(arg)

    window.on_msg_from_main(lambda event, _: slots, channel=SLOTS)
    window.render_msg_to_main(slots, channel=JOIN).result(timeout=30)
    window.wait_closed()


def submit(window: Any, func: Callable[[Any], Any], inputs: Iterable[Any], *, timeout: float = 600.0) -> list[Any]:
    """From any window: run a job on the farm of ``zprokit main ... examples.farm:serve``; its results.

    A failed job raises ``RemoteError``: a task's exception, or the main's
    ``Timeout`` once the job has run for ``timeout`` s.
    """
    job = (cloudpickle.dumps(func), list(inputs), timeout)
    return window.render_msg_to_main(job, channel=MAP, timeout=timeout + 5).result()


def client(window: Any) -> None:
    """TARGET: submit a demo job (``FARM_TASKS`` squares, each taking ``FARM_DELAY`` s) and print its progress."""
    tasks = int(os.environ.get("FARM_TASKS", "40"))
    delay = float(os.environ.get("FARM_DELAY", "0.1"))

    @window.on_broadcast(topic=PROGRESS)
    def progress(event: Any, step: dict[str, Any]) -> None:
        say(f"{window.name}: {step['done']}/{step['total']} done")

    results = submit(window, lambda x: (time.sleep(delay), x * x)[1], range(tasks))
    expected = [x * x for x in range(tasks)]
    say(f"{window.name}: {len(results)} results, in order: {results}")
    say(f"{window.name}: " + ("every result present once, in order" if results == expected else "WRONG RESULTS"))
    if results != expected:
        raise SystemExit(1)


# --- standalone --------------------------------------------------------------------------------


def main() -> int:
    with init_ipc("tcp://127.0.0.1:0") as ipc:
        farm = Farm(ipc)
        for n in range(1, 4):
            create_window(f"worker-{n}", worker)
        if not farm.wait_for_workers(3, timeout=30):
            say("farm: the workers did not come")
            return 1
        say("farm: 3 workers ready")
        results = farm.map(lambda x: (time.sleep(0.05), x * x)[1], range(24))
    say(f"farm: results in order: {results}")
    return 0 if results == [x * x for x in range(24)] else 1


if __name__ == "__main__":
    raise SystemExit(main())
