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
from conftest import wait_until

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
        ": 24/24 done, ",
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
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZPROKIT_")}
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
    windows = [zprokit_window("worker-a"), zprokit_window("worker-b")]
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
    windows = [zprokit_window("worker-a"), zprokit_window("worker-b")]
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
            "tour: broadcast on 'news': hello, everyone (from tour)",
            "tour: WindowNotFound: ",
            "tour: NoHandler: ",
            "tour: 2 workers toured; asking the main to close this window",
            "tour: closed by the main",
            "worker-b: note from tour: hello from tour",
            "worker-a: note from the main: hello from tour (from tour, through the main)",
            "worker-b: news: hello, everyone (from tour)",
        ]:
            assert wait_until(lambda: printed(line), 10), "".join(output)
    finally:
        for w in windows:
            w.close()
        for t in workers:
            t.join(10)


# --- the work farm, in process, losing a worker -------------------------------------------------


def test_farm_loses_a_worker_mid_job_and_still_returns_every_result_once(zprokit_main) -> None:
    out = io.StringIO()
    work_farm = farm.Farm(zprokit_main, out=out)
    handles = [zprokit_main.create_window(f"worker-{n}", farm.worker, env={"PYTHONPATH": ROOT}) for n in (1, 2, 3)]
    assert work_farm.wait_for_workers(3, timeout=20), out.getvalue()
    inputs = list(range(60))
    done: list[object] = []
    job = threading.Thread(target=lambda: done.append(work_farm.map(lambda x: (time.sleep(0.05), -x)[1], inputs)))
    job.start()
    try:
        # SIGKILL a worker once the job is under way, with tasks in flight on it.
        under_way = lambda: work_farm.stats["results"] >= 10 and work_farm.workers().get("worker-2")  # noqa: E731
        assert wait_until(under_way, 20), out.getvalue()
        handles[1].kill()
    finally:
        job.join(30)
    assert not job.is_alive(), out.getvalue()
    assert done == [[-x for x in inputs]], out.getvalue()  # each result once, in order
    assert work_farm.stats["results"] == len(inputs), (work_farm.stats, out.getvalue())
    assert work_farm.stats["requeued"] >= 1, (work_farm.stats, out.getvalue())
    assert "farm: worker-2 lost (PeerLost); its " in out.getvalue()
    assert handles[1].join(5) == -signal.SIGKILL
    assert "worker-2" not in work_farm.workers()


def test_farm_job_fails_with_the_functions_error(zprokit_main) -> None:
    work_farm = farm.Farm(zprokit_main, out=io.StringIO())
    zprokit_main.create_window("worker-1", farm.worker, env={"PYTHONPATH": ROOT})
    assert work_farm.wait_for_workers(1, timeout=20)
    with pytest.raises(zprokit.RemoteError) as failed:
        work_farm.map(lambda x: 1 / x, [3, 2, 1, 0, 5])
    assert failed.value.remote_type.endswith("ZeroDivisionError")
    assert work_farm.map(lambda x: x + 1, [1, 2]) == [2, 3]  # the farm serves on


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
