"""Several hosts on this machine: each a Linux network namespace with an address of its own.

The topology of the docker-compose demo (docker/), run with the very
commands its services run, read from docker/docker-compose.yml: the main's
host name ``main`` becomes the main host's address, ``$HOSTNAME`` the
worker host's name, and the key secret a key file (mode 0600). Short
heartbeats (``--heartbeat``/``--liveness``) keep the suite quick. Each host
has its own host name, as each container has (its processes run in a UTS
namespace of their own), so a window's ``WindowInfo.host`` names its host.

Hosts: ``main``, workers ``w1``, ``w2``, ``w3``, and ``probe`` where the
tests' own windows run (``examples.docker_app:tour``, ``examples.farm:client``,
or ``_netns_targets:driver``, which makes API calls the test writes to it).
Partitions cut a host's link from inside it (``ip link set eth0 down``); a
firewall that silently forgets one connection is ``tc`` dropping just its
packets (``Host.drop_connection``).

Times are printed (``pytest -s``) and bounded by the promise ("within a few
heartbeat intervals"), generously, never by a benchmark figure.

Needs root and ``ip``: elsewhere these tests skip with that reason, unless
``ZPROKIT_REQUIRE_NETNS=1`` (CI sets it) turns the skip into a failure.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Iterator

import pytest

import _compose
import _netns
from _netns import Host, HostProcess, Network
from conftest import TESTS_DIR, standalone_env, wait_until

HEARTBEAT = 0.2
LIVENESS = 3
FEW_INTERVALS = HEARTBEAT * LIVENESS + 2.0  # the promise, with room for a loaded machine
# The broadcast link's promise is longer: a window waits out the main's own limit for a subscriber
# that stopped reading (heartbeat * liveness, at least 2 s) before it takes silence for a dead link.
LINK_LIMIT = 2 * HEARTBEAT * LIVENESS + max(2.0, HEARTBEAT * LIVENESS) + 2.0
DEADLINE = _netns.DEADLINE
KEY_SECRET = "/run/secrets/zprokit_key"  # where compose mounts the key; a file of ours here

pytestmark = pytest.mark.timeout(120)


def require_netns() -> None:
    """Skip without namespaces, or fail if ``ZPROKIT_REQUIRE_NETNS=1`` says they must be there."""
    reason = _netns.unavailable()
    if reason is None:
        return
    if os.environ.get("ZPROKIT_REQUIRE_NETNS") == "1":
        pytest.fail(f"{reason} (ZPROKIT_REQUIRE_NETNS=1: these tests must run here)", pytrace=False)
    pytest.skip(reason)


def test_without_namespaces_the_tests_skip_or_fail_as_told(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_netns, "unavailable", lambda: _netns.REASON + ": not root")
    monkeypatch.delenv("ZPROKIT_REQUIRE_NETNS", raising=False)
    with pytest.raises(pytest.skip.Exception, match="needs root and the ip command"):
        require_netns()
    monkeypatch.setenv("ZPROKIT_REQUIRE_NETNS", "1")
    with pytest.raises(pytest.fail.Exception, match="ZPROKIT_REQUIRE_NETNS=1"):
        require_netns()


def machine_network() -> str:
    """The machine's own links, addresses and routes, and its host name, to show that the tests
    change nothing there.

    Without what changes by itself (address lifetimes, link state and counters).
    """
    links = [line.split(":")[1].strip() for line in _netns.ip("-o", "link").splitlines()]
    addresses = [" ".join(line.split()[1:4]) for line in _netns.ip("-o", "addr").splitlines()]
    routes = [re.sub(r" expires \S+", "", line) for line in _netns.ip("route").splitlines()]
    return "\n".join(links + addresses + routes + [f"hostname {socket.gethostname()}"])


@pytest.fixture(scope="module")
def machine_before() -> str:
    """The machine's own network before any host is made."""
    require_netns()
    return machine_network()


@pytest.fixture(scope="module")
def network(machine_before: str) -> Iterator[Network]:
    net = Network()
    try:
        for name in ("main", "w1", "w2", "w3", "probe"):
            net.add_host(name)
        yield net
    finally:
        net.close()
    left = [ns for ns in _netns.namespaces() if ns.startswith(net.prefix)]
    assert not left, f"namespaces left behind: {left}"
    assert machine_network() == machine_before, "the machine's own network changed"


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The shared key, as ``zprokit keygen -o`` writes it: a fresh file, mode 0600."""
    path = tmp_path_factory.mktemp("netns") / "zprokit.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    return str(path)


class Deployment:
    """What one test runs on the network; everything is stopped after the test (see ``deploy``)."""

    def __init__(self, network: Network, key_file: str) -> None:
        self.net = network
        self.key_file = key_file
        self.main_host = network.hosts["main"]
        self.endpoint = f"tcp://{self.main_host.address}:5555"
        self.env = standalone_env()
        self.env["PYTHONPATH"] = os.pathsep.join([_compose.ROOT, TESTS_DIR])  # the image's /app, and _netns_targets
        self.env["PYTHONUNBUFFERED"] = "1"  # as in the image

    def command(self, service: str, host: Host, *, run: str | None = None, name: str | None = None) -> list[str]:
        """The compose ``service``'s command for ``host``: the main's address for ``main``, the host's name
        for ``$HOSTNAME``, our key file for the secret; ``run`` replaces its APP or TARGET, ``name`` its name."""
        argv = _compose.service_argv(service)
        assert argv[0] == "zprokit" and KEY_SECRET in argv, argv
        substituted = []
        for arg in argv[1:]:
            arg = arg.replace("tcp://main:", f"tcp://{self.main_host.address}:").replace("$HOSTNAME", host.name)
            substituted.append(self.key_file if arg == KEY_SECRET else arg)
        assert not any("tcp://main:" in arg or "$" in arg for arg in substituted), substituted  # nothing missed
        if name is not None:
            substituted[substituted.index("--name") + 1] = name
        # Short heartbeats, before the APP or TARGET; anything else is the compose file's.
        substituted[-1:-1] = ["--heartbeat", str(HEARTBEAT), "--liveness", str(LIVENESS)]
        if run is not None:
            substituted[-1] = run
        return [sys.executable, "-m", "zprokit", *substituted]

    def start_main(self, app: str | None = None) -> HostProcess:
        main = self.main_host.run(self.command("main", self.main_host, run=app), self.env)
        main.expect(r"^zprokit main: listening on tcp://0\.0\.0\.0:5555 \(broadcasts on tcp://0\.0\.0\.0:5556\)$")
        return main

    def start_worker(self, host_name: str, target: str | None = None) -> HostProcess:
        host = self.net.hosts[host_name]
        return host.run(self.command("worker", host, run=target), self.env)

    def start_window(self, host_name: str, name: str, target: str, env: dict[str, str] | None = None,
                     stdin: bool = False) -> HostProcess:
        """Another window, connected as the workers are but in no worker group (as ``docker compose
        run --rm worker zprokit window --name NAME ...`` runs one), running ``target``."""
        host = self.net.hosts[host_name]
        argv = self.command("worker", host, run=target, name=name)
        while "--group" in argv:
            del argv[argv.index("--group"):argv.index("--group") + 2]
        return host.run(argv, {**self.env, **(env or {})}, stdin)

    def stop(self) -> None:
        """Kill everything the test started, and heal every link; every step is tried."""
        errors = []
        for host in self.net.hosts.values():
            # A test that failed mid-partition leaves no link down, nor a connection dropped.
            for step in (host.kill_all, host.heal, host.allow_all):
                try:
                    step()
                except Exception as e:
                    errors.append(f"{host.name}: {e}")
        for proc in self.net.processes:
            try:
                proc.close()
            except Exception as e:
                errors.append(f"{proc}: {e}")
        self.net.processes.clear()
        assert not errors, errors


@pytest.fixture
def deploy(network: Network, key_file: str) -> Iterator[Deployment]:
    deployment = Deployment(network, key_file)
    try:
        yield deployment
    finally:
        deployment.stop()


class Driver:
    """The API of a window on another host, through ``_netns_targets:driver``."""

    def __init__(self, proc: HostProcess) -> None:
        self.proc = proc
        self._ids = itertools.count(1)
        _, ready = proc.wait_line(lambda line: line.startswith('{"ready"'), what="ready")
        self.name = json.loads(ready)["ready"]

    def call(self, method: str, *args: Any, **kwargs: Any) -> int:
        """Make the call on the remote window; its id, for ``outcome``."""
        request_id = next(self._ids)
        self.proc.send(json.dumps({"id": request_id, "call": method, "args": args, "kwargs": kwargs}))
        return request_id

    def outcome(self, request_id: int, timeout: float = DEADLINE) -> dict[str, Any]:
        def is_it(line: str) -> bool:
            return line.startswith("{") and json.loads(line).get("id") == request_id

        return json.loads(self.proc.wait_line(is_it, timeout, what=f"for request {request_id}")[1])

    def result(self, method: str, *args: Any, **kwargs: Any) -> Any:
        outcome = self.outcome(self.call(method, *args, **kwargs))
        assert "result" in outcome, outcome
        return outcome["result"]


def connected(main: HostProcess, name: str, since: int = 0, timeout: float = DEADLINE) -> tuple[float, str, int]:
    """Wait for the main's line saying ``name`` connected: when, from which address, with which pid."""
    when, match = main.expect(rf"^main: {name} connected from ([\d.]+) \(pid (\d+)\)$", timeout, since)
    return when, match.group(1), int(match.group(2))


def broadcast_reaches(driver: Driver, text: str, timeout: float = DEADLINE, retry: float = HEARTBEAT) -> float:
    """Have the main broadcast ``text #n`` (the demo's "announce" channel) until one reaches the
    driver's window; the seconds that took.

    A broadcast the main sends before the window's subscription has reached it is not delivered
    (PUB/SUB), so one that does not come within ``retry`` s is followed by another, up to ``timeout``.
    """
    start = time.monotonic()
    deadline = start + timeout
    sent: set[str] = set()
    since = driver.proc.mark()

    def arrived(line: str) -> bool:
        return line.startswith('{"broadcast"') and json.loads(line)["broadcast"] in sent

    for n in itertools.count(1):
        message = f"{text} #{n}"
        sent.add(f"{message} (from {driver.name})")
        driver.result("render_msg_to_main", message, channel="announce")
        try:
            driver.proc.wait_line(arrived, min(retry, max(0.0, deadline - time.monotonic())), since,
                                  what=f"with one of the broadcasts {sorted(sent)}")
            return time.monotonic() - start
        except AssertionError:
            if time.monotonic() >= deadline:
                raise
    raise AssertionError("unreachable")


# --- the tests ------------------------------------------------------------------------------------


def test_namespaces_a_killed_run_left_are_removed_and_a_live_runs_are_kept(machine_before: str) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()  # reaped: its pid names no process now, as a SIGKILLed pytest's does
    assert not _netns.pid_alive(gone.pid)
    tag = secrets.token_hex(3)
    pidns = _netns.pid_namespace()
    stale = _netns.namespace_name(tag, "stale", pid=gone.pid)
    live = _netns.namespace_name(tag, "live")  # this process's: it lives
    elsewhere = f"zp-{gone.pid}.{pidns + 1}-{tag}-elsewhere"  # another pid namespace's: not ours to judge
    unowned = f"zp-{tag}-unowned"  # names no owner (as runs before owners were named did)
    assert _netns.owner(stale) == (gone.pid, pidns) and _netns.owner(live) == (os.getpid(), pidns)
    made: list[str] = []
    sleeper = None
    try:
        for ns in (stale, live, elsewhere, unowned):
            _netns.ip("netns", "add", ns)
            made.append(ns)
        sleeper = subprocess.Popen(["ip", "netns", "exec", stale, "sleep", "60"])  # ip execs sleep: same pid
        assert wait_until(lambda: _netns.namespace_pids(stale) == [sleeper.pid], DEADLINE), \
            _netns.namespace_pids(stale)

        removed = _netns.remove_stale_namespaces()

        assert stale in removed
        assert sleeper.wait(DEADLINE) == -signal.SIGKILL  # killed by the cleanup; reaped here, its parent
        left = _netns.namespaces()
        assert stale not in left
        assert {live, elsewhere, unowned} <= set(left) and not {live, elsewhere, unowned} & set(removed)
    finally:
        if sleeper is not None and sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait(DEADLINE)
        left = _netns.namespaces()
        for ns in made:
            if ns in left:
                _netns.ip("netns", "del", ns)


def test_hosts_are_namespaces_of_their_own(network: Network, machine_before: str) -> None:
    addresses = {host.address for host in network.hosts.values()}
    assert len(addresses) == len(network.hosts)
    for host in network.hosts.values():
        assert host.address in _netns.ip("-o", "addr", "show", "dev", host.dev, ns=host.ns)
        assert _netns.owner(host.ns) == (os.getpid(), _netns.pid_namespace())
        # A host name of its own, as a container's: what socket.gethostname() says there.
        named = subprocess.run(host.command(["hostname"]), capture_output=True, text=True, timeout=DEADLINE)
        assert (named.returncode, named.stdout.strip()) == (0, host.name), named.stderr
    assert network.subnet + "." not in machine_network()  # none of it on the machine's own network
    assert machine_network() == machine_before  # the machine's own host name included
    # The compose file gives no host names: each container's is its own id, which the worker's
    # command takes as $HOSTNAME (here: the host's name). One given there must be the host's here.
    with open(_compose.COMPOSE_FILE) as f:
        services = _compose.compose_services(f.read())
    assert services["main"].get("hostname", "main") == "main"
    assert "hostname" not in services["worker"], "scaled workers must each keep a host name of their own"


def test_every_api_row_across_hosts(deploy: Deployment) -> None:
    net = deploy.net
    main = deploy.start_main()
    workers = {name: deploy.start_worker(name) for name in ("w1", "w2")}
    for name, proc in workers.items():
        _, address, pid = connected(main, f"worker-{name}")
        assert address == net.hosts[name].address and pid == proc.pid  # each on its own host
        proc.expect(rf"^worker-{name}: ready, and squared \d+ for the main$")

    listing = net.hosts["probe"].run(
        [sys.executable, "-m", "zprokit", "windows", "--connect", deploy.endpoint, "--key-file", deploy.key_file],
        deploy.env,
    )
    assert listing.wait() == 0, listing.errors
    rows = {line.split()[0]: line.split() for line in listing.output().splitlines()[1:]}
    assert set(rows) == {"worker-w1", "worker-w2"}
    assert [rows[f"worker-{n}"][2] for n in ("w1", "w2")] == [str(workers[n].pid) for n in ("w1", "w2")]
    # WindowInfo.host (the HOST column) is each window's own host's name, so they differ.
    hosts = {name: rows[f"worker-{name}"][1] for name in workers}
    assert hosts == {name: net.hosts[name].hostname for name in workers} and len(set(hosts.values())) == 2
    assert socket.gethostname() not in hosts.values()  # not the machine's own name
    assert [rows[f"worker-{n}"][-1] for n in ("w1", "w2")] == ["workers", "workers"]  # the GROUPS column
    for name in workers:  # and what the worker itself says it runs on
        main.expect(rf"^main: worker-{name} \(host {net.hosts[name].hostname}\) squared \d+: \d+$")

    tour = deploy.start_window("probe", "tour", "examples.docker_app:tour")
    assert tour.wait(DEADLINE * 2) == 0, tour.output() + "\n" + "\n".join(tour.errors)
    transcript = tour.output()
    print("\n" + transcript)
    probe = net.hosts["probe"].address
    expected = [
        f"tour: the main has 3 windows: tour ({probe}), worker-w1 ({net.hosts['w1'].address}), "
        f"worker-w2 ({net.hosts['w2'].address})",
        "tour: worker-w1 squared 8 for me, window to window: 64",
        "tour: note delivered to worker-w2, window to window",
        "tour: the main asked worker-w1 to square 7: 49",
        "tour: the main passed a note to worker-w2",
        "tour: worker-w1 asked worker-w2 to square 9: 81",
        "tour: worker-w2 asked worker-w1 to square 9: 81",
        "tour: worker-w1 streamed 3, 2, 1 to me, window to window",
        "tour: worker-w2 streamed 3, 2, 1 to me, window to window",
        "tour: one of group 'workers', picked by the main (render_call_any), squared 6: 36",
        "tour: the main asked all of group 'workers' (call_all) to square 5: worker-w1 25, worker-w2 25",
        "tour: streamed from the main, each squared by one of group 'workers' (call_any): "
        "11 -> 121, 12 -> 144, 13 -> 169, 14 -> 196",
        "tour: the main broadcast to 3 windows",
        "tour: broadcast on 'news': hello, everyone (from tour)",
        "tour: WindowNotFound: ",
        "tour: NoHandler: ",
        "tour: 2 workers toured; asking the main to close this window",
        "tour: closed by the main",
    ]
    for line in expected:
        assert line in transcript
    for name, proc in workers.items():
        w = f"worker-{name}"
        proc.expect(rf"^{w}: note from tour: hello from tour$")
        proc.expect(rf"^{w}: note from the main: hello from tour \(from tour, through the main\)$")
        proc.expect(rf"^{w}: news: hello, everyone \(from tour\)$")
        proc.expect(rf"^{w}: squaring 9 for worker-w[12]$")
        proc.expect(rf"^{w}: counting down from 3 for tour$")
        proc.expect(rf"^{w}: squaring 5$")  # the main's call_all reached each member, on its host
        proc.expect(rf"^{w}: squaring 1[1-4]$")  # the main's call_any spread the stream's items over both
        main.expect(rf"^main: asked {w} at {net.hosts[name].address} for tour: 7 squared is 49$")
    # render_call_any: one member squared 6 for the tour, through the main.
    assert sum("squaring 6 for tour" in proc.output() for proc in workers.values()) == 1
    connected(main, "tour")
    main.expect(r"^main: tour left$")


def test_a_cut_off_host_is_dropped_and_rejoins_when_healed(deploy: Deployment) -> None:
    main = deploy.start_main()
    workers = {name: deploy.start_worker(name) for name in ("w1", "w2")}
    for name in workers:
        connected(main, f"worker-{name}")
    driver = Driver(deploy.start_window("probe", "probe", "_netns_targets:driver", stdin=True))
    assert driver.result("render_call_render", "worker-w2", 3, channel="square") == 9
    w2 = deploy.net.hosts["w2"]

    mark = main.mark()
    cut = time.monotonic()
    w2.cut()
    # Requests on their way to the cut-off host: one routed window -> window, one the main makes.
    routed = driver.call("render_call_render", "worker-w2", 4, channel="square", timeout=30)
    relayed = driver.call("render_msg_to_main", ["worker-w2", 5], channel="relay", timeout=30)
    noticed, _ = main.expect(r"^main: worker-w2 left$", FEW_INTERVALS, since=mark)
    detection = noticed - cut
    assert driver.outcome(routed)["error"] == "PeerLost"
    failed = driver.outcome(relayed)
    assert failed["error"] == "RemoteError" and failed["remote_type"].endswith("PeerLost"), failed
    # The other hosts carry on.
    assert driver.result("render_call_render", "worker-w1", 6, channel="square") == 36
    assert driver.result("render_msg_to_main", ["worker-w1", 7], channel="relay") == 49
    assert "main: worker-w1 left" not in main.output()
    assert wait_until(lambda: any("lost the main" in line for line in workers["w2"].errors), FEW_INTERVALS), \
        workers["w2"].errors

    mark = main.mark()
    healed = time.monotonic()
    w2.heal()
    back, address, pid = connected(main, "worker-w2", since=mark)
    rejoin = back - healed
    assert (address, pid) == (w2.address, workers["w2"].pid)  # the same process, under its name
    assert workers["w2"].proc.poll() is None
    assert driver.result("render_call_render", "worker-w2", 8, channel="square") == 64
    assert driver.result("render_msg_to_main", ["worker-w2", 9], channel="relay") == 81
    print(f"\npartition (heartbeat {HEARTBEAT} s x {LIVENESS}): the main dropped the cut-off window "
          f"{detection:.3f} s after the cut; it rejoined {rejoin:.3f} s after the link came back")
    assert detection >= HEARTBEAT  # it was the heartbeat: a cut link says nothing
    assert detection < FEW_INTERVALS


def test_the_main_host_lost_and_restarted_gets_every_window_back(deploy: Deployment) -> None:
    main = deploy.start_main()
    workers = {name: deploy.start_worker(name) for name in ("w1", "w2", "w3")}
    for name in workers:
        connected(main, f"worker-{name}")
    driver = Driver(deploy.start_window("probe", "probe", "_netns_targets:driver", stdin=True))
    connected(main, "probe")
    windows = [f"worker-{name}" for name in workers] + ["probe"]

    # The host goes away at once, without a word: its link first, then every process on it.
    lost = time.monotonic()
    deploy.main_host.cut()
    deploy.main_host.kill_all()
    assert wait_until(lambda: all(any("lost the main" in line for line in w.errors) for w in workers.values()),
                      FEW_INTERVALS), {name: w.errors for name, w in workers.items()}
    noticed = time.monotonic() - lost

    deploy.main_host.heal()
    restarted = time.monotonic()
    main = deploy.start_main()
    listening = time.monotonic() - restarted
    back = max(connected(main, name)[0] for name in windows) - restarted
    print(f"\nmain host lost: its windows noticed within {noticed:.3f} s; after a restart the main listened "
          f"in {listening:.3f} s and all {len(windows)} windows had re-registered {back:.3f} s after the start")
    for name, proc in workers.items():
        assert proc.proc.poll() is None  # the same worker processes, with their callbacks
        assert driver.result("render_msg_to_main", [f"worker-{name}", 4], channel="relay") == 16
    assert driver.result("render_call_render", "worker-w3", 5, channel="square") == 25
    assert back < FEW_INTERVALS + DEADLINE


def test_the_farm_across_hosts_loses_one_worker_host_and_cuts_off_another(deploy: Deployment) -> None:
    """examples/farm.py on the compose topology: its workers are the compose workers (in group
    "workers") with the farm's TARGET; a client on the probe host submits a job as a stream call.
    Mid-job one worker host dies and another is cut off (and healed): call_any's retries send
    their tasks to the others, and every result comes back once, in order."""
    tasks = 100
    net = deploy.net
    main = deploy.start_main(app="examples.farm:serve")
    for name in ("w1", "w2", "w3"):
        deploy.start_worker(name, target="examples.farm:worker")
        main.expect(rf"^farm: worker-{name} joined \({net.hosts[name].address}\)$")
    client = deploy.start_window("probe", "client", "examples.farm:client",
                                 env={"FARM_TASKS": str(tasks), "FARM_DELAY": "0.1"})
    main.expect(rf": 10/{tasks} done by worker-w\d, ")

    mark = main.mark()
    net.hosts["w3"].kill_all()  # a worker host dies...
    cut = time.monotonic()
    net.hosts["w2"].cut()  # ...and another is cut off, in the middle of the job
    main.expect(r"^farm: worker-w3 left", FEW_INTERVALS, since=mark)
    noticed, _ = main.expect(r"^farm: worker-w2 left", FEW_INTERVALS, since=mark)
    mark = main.mark()
    healed = time.monotonic()
    net.hosts["w2"].heal()
    back, _ = main.expect(rf"^farm: worker-w2 joined \({net.hosts['w2'].address}\)$", DEADLINE, since=mark)
    rejoined = main.mark()

    assert client.wait(DEADLINE * 2) == 0, client.output() + "\n" + "\n".join(client.errors)
    client.expect(r"^client: every result present once, in order$")
    streamed, _ = client.expect(rf"^client: {tasks // 2}/{tasks} done$")
    client.expect(rf"^client: {tasks}/{tasks} done$")
    ended, summary = main.expect(rf"^farm: job \w+: {tasks} tasks done in [\d.]+ s \((.*)\)$")
    shares = {name: int(n) for name, n in (part.split() for part in summary.group(1).split(", "))}
    print(f"\nfarm across hosts: {tasks} tasks, done by {shares}; the main dropped the cut-off worker "
          f"{noticed - cut:.3f} s after the cut (its tasks went to the others), and it took tasks again "
          f"{back - healed:.3f} s after the link came back")
    assert streamed < ended  # progress reached the client while the job ran, as a stream
    assert sum(shares.values()) == tasks  # each result once
    assert set(shares) == {"worker-w1", "worker-w2", "worker-w3"}
    # The healed worker took work again after it rejoined.
    assert any(re.search(r"done by worker-w2, \d+ running on 2 workers$", line) for _, line in main.lines[rejoined:]), \
        main.output()


def test_a_silently_dropped_broadcast_link_is_noticed_and_dialled_again(deploy: Deployment) -> None:
    """The window's SUB connection to the main's PUB, dropped by the network without a word (its
    packets only, both ways), is noticed by the main's heartbeat on the PUB (none arrives), counted in the window's
    ``broadcast_link_lost`` and dialled again; broadcasts reach the window again, and the window
    stays registered all along (its DEALER connection is another, untouched)."""
    main = deploy.start_main()
    window_host = deploy.net.hosts["probe"]
    driver = Driver(deploy.start_window("probe", "probe", "_netns_targets:driver", stdin=True))
    connected(main, "probe")
    pub_port = int(_compose.option(_compose.service_argv("main"), "--pub-bind").rsplit(":", 1)[1])

    def sub_ports() -> list[int]:
        """The window host's local ports of its established connections to the main's PUB."""
        return [port for _, port, peer, peer_port in window_host.tcp_connections()
                if (peer, peer_port) == (deploy.main_host.address, pub_port)]

    def link_lost() -> int:
        return driver.result("stats")["broadcast_link_lost"]

    broadcast_reaches(driver, "before")
    assert link_lost() == 0
    (old_port,) = sub_ports()

    dropped = time.monotonic()
    window_host.drop_connection(old_port)
    assert wait_until(lambda: link_lost() >= 1, LINK_LIMIT, interval=0.05), \
        f"the window did not notice: stats {driver.result('stats')}; stderr {driver.proc.errors}"
    noticed = time.monotonic() - dropped
    back = broadcast_reaches(driver, "after")

    (new_port,) = sub_ports()
    assert new_port != old_port  # dialled again, from a new port, which the filters let through
    out, into = window_host.dropped()
    assert out >= 1 and into >= 1, (out, into)  # the old connection's packets went nowhere, both ways
    assert any("the broadcast link to the main closed" in line for line in driver.proc.errors), driver.proc.errors
    # Registered all along: the main neither dropped the window nor saw it register again, the window
    # never lost the main, and requests over its DEALER connection still work.
    assert [line for line in main.output().splitlines() if line.startswith("main: probe ")] == \
        [f"main: probe connected from {window_host.address} (pid {driver.proc.pid})"]
    assert not any("lost the main" in line for line in driver.proc.errors), driver.proc.errors
    assert driver.result("render_msg_to_main", None, channel="workers") == {"probe": window_host.address}
    print(f"\nbroadcast link dropped (heartbeat {HEARTBEAT} s x {LIVENESS}): the window noticed {noticed:.3f} s "
          f"after the drop; a broadcast reached it again {back:.3f} s later (port {old_port} -> {new_port}; "
          f"{out} packets dropped out, {into} in)")
    assert HEARTBEAT <= noticed < LINK_LIMIT  # it was the heartbeat: a dropped connection says nothing
