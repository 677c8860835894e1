"""The examples run as a user runs them, and the docker demo's recipe names code that exists.

Each script in ``examples/`` runs as ``python examples/NAME.py`` from the
repository root, in its own process, and must exit 0 having printed what it
promises. The docker-compose demo cannot run here (no Docker engine), so its
files are read instead: the commands the services run must name the
example app's functions, and the image must not take the key in.
"""

from __future__ import annotations

import importlib
import io
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

import zprokit
from _compose import compose_services as _compose_services
from _compose import option as _option
from _compose import zprokit_argv as _zprokit_argv
from conftest import standalone_env, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # examples/ is not installed; `python -m pytest` from the root finds it, plain `pytest` may not
    sys.path.insert(0, ROOT)

from examples import docker_app, farm  # noqa: E402
EXAMPLES_DIR = os.path.join(ROOT, "examples")
DOCKER_DIR = os.path.join(ROOT, "docker")

# script -> what its stdout must contain
EXAMPLES = {
    "main_render_reply.py": ["render: Main have get data is sendMsgToMain Hello"],
    "main_to_render.py": ["render: msg from main (from main, from_main=True)"],
    "render_to_render.py": [
        "render: 'Hello Work' delivered to 'work'",
        "work: 'Hello Work' from 'main'",
    ],
    "hidden_work_window.py": [
        "work: 15 primes below 50",
        "main: work found [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47]",
        "work: closed by the main",
        "main: the work window exited with status 0",
    ],
    "asyncio_example.py": [f"render: https://example.org/page/{i} -> 200 OK" for i in range(1, 6)],
    "farm.py": [
        "farm: 3 workers ready",
        "farm: job ",
        ": 24/24 done by worker-",
        "farm: results in order: " + str([x * x for x in range(24)]),
    ],
}
NOT_SCRIPTS = {"__init__.py", "docker_app.py"}  # a package marker, and the app the docker demo runs


def test_every_example_script_is_run_here() -> None:
    scripts = {f for f in os.listdir(EXAMPLES_DIR) if f.endswith(".py")} - NOT_SCRIPTS
    assert scripts == set(EXAMPLES)


@pytest.mark.parametrize("script", sorted(EXAMPLES))
def test_example_runs_and_prints_what_it_promises(script: str) -> None:
    # Standalone, as documented: nothing from a surrounding zprokit setup leaks in.
    env = standalone_env()
    proc = subprocess.run(
        [sys.executable, os.path.join("examples", script)],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    report = f"exit status {proc.returncode}\n--- stdout\n{proc.stdout}--- stderr\n{proc.stderr}"
    assert proc.returncode == 0, report
    for text in EXAMPLES[script]:
        # Not whole lines: windows print from processes of their own, and with PYTHONUNBUFFERED
        # one's line and another's newline may interleave.
        assert text in proc.stdout, report
    assert "Traceback" not in proc.stderr, report


# --- the docker demo's app, in process ---------------------------------------------------------


def test_docker_app_workers_get_work_and_serve_the_main(zprokit_main, zprokit_window, capsys) -> None:
    docker_app.setup(zprokit_main)
    windows = [zprokit_window(name, groups=(docker_app.GROUP,)) for name in ("worker-a", "worker-b")]
    workers = [threading.Thread(target=docker_app.worker, args=(w,), name=f"app-{w.name}") for w in windows]
    output: list[str] = []

    def printed(*lines: str) -> bool:
        output.append(capsys.readouterr().out)
        return all(line in "".join(output) for line in lines)

    for t in workers:
        t.start()
    try:
        # On "ready", setup's handler has each worker square the next number: 1 and 2, in either order.
        assert wait_until(
            lambda: printed("main: worker-a connected", "main: worker-b connected", "worker-a: ready, and squared",
                            "worker-b: ready, and squared"),
            10,
        ), "".join(output)
        assert sorted(re.findall(r"ready, and squared (\d+) for the main", "".join(output))) == ["1", "2"]
        assert zprokit_main.main_call_render("worker-b", 12, channel="square").result(10) == 144
    finally:
        for w in windows:
            w.close()
        for t in workers:
            t.join(10)
    assert not any(t.is_alive() for t in workers), "worker() should return once its window is closed"


def test_docker_app_tour_makes_every_call_and_is_closed_by_the_main(zprokit_main, zprokit_window, capsys) -> None:
    docker_app.setup(zprokit_main)
    windows = [zprokit_window(name, groups=(docker_app.GROUP,)) for name in ("worker-a", "worker-b")]
    workers = [threading.Thread(target=docker_app.worker, args=(w,), name=f"app-{w.name}") for w in windows]
    for t in workers:
        t.start()
    try:
        assert wait_until(lambda: zprokit_main.stats()["requests_served"] >= 2, 10)  # both said they are ready
        tour = zprokit_window("tour")
        docker_app.tour(tour)  # returns once the main has closed it
        assert tour.closed
        output: list[str] = []

        def printed(line: str) -> bool:  # one-way notes and broadcasts may still be on their way
            output.append(capsys.readouterr().out)
            return line in "".join(output)

        for line in [
            "tour: worker-a squared 8 for me, window to window: 64",
            "tour: the main asked worker-b to square 7: 49",
            "tour: worker-a asked worker-b to square 9: 81",
            "tour: worker-a streamed 3, 2, 1 to me, window to window",
            "tour: worker-b streamed 3, 2, 1 to me, window to window",
            "tour: one of group 'workers', picked by the main (render_call_any), squared 6: 36",
            "tour: the main asked all of group 'workers' (call_all) to square 5: worker-a 25, worker-b 25",
            "tour: streamed from the main, each squared by one of group 'workers' (call_any): "
            "11 -> 121, 12 -> 144, 13 -> 169, 14 -> 196",
            "tour: broadcast on 'news': hello, everyone (from tour)",
            "tour: WindowNotFound: ",
            "tour: NoHandler: ",
            "tour: 2 workers toured; asking the main to close this window",
            "tour: closed by the main",
            "worker-b: note from tour: hello from tour",
            "worker-a: note from the main: hello from tour (from tour, through the main)",
            "worker-b: news: hello, everyone (from tour)",
            "worker-a: counting down from 3 for tour",
            "worker-b: counting down from 3 for tour",
        ]:
            assert wait_until(lambda: printed(line), 10), "".join(output)
        # The group calls: render_call_any went to one member; the main's call_any spread the
        # stream's four calls over both (equals take calls in turn).
        assert len(re.findall(r"worker-[ab]: squaring 6 for tour\n", "".join(output))) == 1, "".join(output)
        for w in ("worker-a", "worker-b"):
            assert re.search(rf"{w}: squaring 1[1-4]\n", "".join(output)), "".join(output)
    finally:
        for w in windows:
            w.close()
        for t in workers:
            t.join(10)


# --- the work farm, in process, losing a worker -------------------------------------------------


def _workers(main, count: int = 3) -> list:
    """``count`` farm workers, each a process of its own in the farm's group."""
    return [main.create_window(f"worker-{n}", farm.worker, env={"PYTHONPATH": ROOT}, groups=(farm.GROUP,))
            for n in range(1, count + 1)]


def _shares(out: str, tasks: int) -> dict[str, int]:
    """The job's closing line: how many tasks each worker answered."""
    summary = re.search(rf"^farm: job \w+: {tasks} tasks done in [\d.]+ s \((.*)\)$", out, re.M)
    assert summary, out
    return {name: int(n) for name, n in (part.split() for part in summary.group(1).split(", "))}


def test_farm_loses_a_worker_mid_job_and_still_returns_every_result_once(zprokit_main, tmp_path) -> None:
    out = io.StringIO()
    work_farm = farm.Farm(zprokit_main, out=out)
    handles = _workers(zprokit_main)
    assert work_farm.wait_for_workers(3, timeout=20), out.getvalue()
    started = str(tmp_path)

    def task(x: int) -> int:  # on worker-2 a task notes that it started, and hangs until the worker is killed
        if os.environ["ZPROKIT_NAME"] == "worker-2":
            open(os.path.join(started, str(x)), "w").close()
            time.sleep(60)
        time.sleep(0.02)
        return -x

    inputs = list(range(60))
    done: list[object] = []
    job = threading.Thread(target=lambda: done.append(work_farm.map(task, inputs)))
    job.start()
    try:
        # SIGKILL worker-2 once it holds tasks: the balancer gave it its share of the first ones.
        assert wait_until(lambda: len(os.listdir(started)) >= 2, 20), out.getvalue()
        handles[1].kill()
    finally:
        job.join(30)
    assert not job.is_alive(), out.getvalue()
    assert done == [[-x for x in inputs]], out.getvalue()  # each result once, in order
    assert handles[1].join(5) == -signal.SIGKILL
    assert "farm: worker-2 left (127.0.0.1)" in out.getvalue()
    assert "worker-2" not in work_farm.workers()
    # What worker-2 started (call_any sent it there) was answered by the others (call_any's retries).
    shares = _shares(out.getvalue(), len(inputs))
    assert sum(shares.values()) == len(inputs) and set(shares) == {"worker-1", "worker-3"}, shares


def test_farm_job_fails_with_the_functions_error(zprokit_main) -> None:
    out = io.StringIO()
    work_farm = farm.Farm(zprokit_main, out=out)
    _workers(zprokit_main, 1)
    assert work_farm.wait_for_workers(1, timeout=20)
    with pytest.raises(zprokit.RemoteError) as failed:
        work_farm.map(lambda x: (time.sleep(0.05), 1 / x)[1], [3, 2, 1, 0, 5, 6, 7])
    assert failed.value.remote_type.endswith("ZeroDivisionError")
    assert re.search(r"^farm: job \w+ failed: RemoteError: .*ZeroDivisionError", out.getvalue(), re.M), out.getvalue()
    # The job's other tasks were cancelled: nothing of it is left pending.
    assert wait_until(lambda: zprokit_main.stats()["pending_requests"] == 0, 5), zprokit_main.stats()
    assert work_farm.map(lambda x: x + 1, [1, 2]) == [2, 3]  # the farm serves on


def test_farm_streams_a_windows_job_with_its_progress(zprokit_main, zprokit_window) -> None:
    """``submit`` from a window: the main's ``farm.map`` handler streams each result as its task finishes."""
    work_farm = farm.serve(zprokit_main)
    _workers(zprokit_main, 2)
    client = zprokit_window("client")
    assert work_farm.wait_for_workers(2, timeout=20)
    steps: list[tuple[int, int]] = []
    results = farm.submit(client, lambda x: x * 10, range(30), progress=lambda done, total: steps.append((done, total)))
    assert results == [x * 10 for x in range(30)]
    assert steps == [(n, 30) for n in range(1, 31)]
    with pytest.raises(zprokit.RemoteError) as failed:
        farm.submit(client, lambda x: 1 / x, [1, 0])
    assert failed.value.remote_type.endswith("ZeroDivisionError")


# --- the docker demo's files ---------------------------------------------------------------------


def _import_target(spec: str):
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def test_compose_services_run_the_example_app() -> None:
    with open(os.path.join(DOCKER_DIR, "docker-compose.yml")) as f:
        services = _compose_services(f.read())
    assert set(services) == {"main", "worker"}
    main = _zprokit_argv(services["main"]["command"])
    worker = _zprokit_argv(services["worker"]["command"])

    assert main[:2] == ["zprokit", "main"]
    assert _option(main, "--bind") == "tcp://0.0.0.0:5555"
    assert _option(main, "--pub-bind") == "tcp://0.0.0.0:5556"
    assert main[-1] == "examples.docker_app:setup"

    assert worker[:2] == ["zprokit", "window"]
    assert _option(worker, "--connect") == "tcp://main:5555"  # the main service, by its compose name
    assert "$HOSTNAME" in _option(worker, "--name")  # unique per replica, so --scale works
    # Every worker joins the group the tour's group calls address, and the farm's too, so the farm
    # runs on these services with only their APP and TARGET swapped.
    assert _option(worker, "--group") == docker_app.GROUP == farm.GROUP
    assert "--group" not in main
    assert worker[-1] == "examples.docker_app:worker"

    for argv in (main, worker):
        assert _option(argv, "--key-file") == "/run/secrets/zprokit_key"
        assert _import_target(argv[-1]) is getattr(docker_app, argv[-1].rpartition(":")[2])


def test_compose_key_is_a_secret_kept_out_of_git_and_the_image() -> None:
    with open(os.path.join(DOCKER_DIR, "docker-compose.yml")) as f:
        compose = f.read()
    assert "  zprokit_key:\n    file: ./zprokit.key\n" in compose
    with open(os.path.join(DOCKER_DIR, ".gitignore")) as f:
        assert "zprokit.key" in f.read().split()
    with open(os.path.join(DOCKER_DIR, "Dockerfile")) as f:
        copies = [line.split()[1:-1] for line in f if line.startswith("COPY ")]
    sources = [src for srcs in copies for src in srcs]
    assert sources, "the Dockerfile copies nothing?"
    for src in sources:
        assert os.path.exists(os.path.join(ROOT, src)), f"the Dockerfile copies {src}, which is not in the repository"
        assert not src.startswith(("docker", ".")), f"the Dockerfile copies {src}: the key could go with it"
    assert "examples/" in sources  # the app the services name must be in the image
