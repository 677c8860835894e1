"""Signing after fork(): a child of a process that has hashed large frames on every core.

BLAKE3 hashes large inputs on Rayon's global thread pool, whose threads do not
survive fork(): a child that used it would wait forever for work no thread
runs. These tests sign 64 MiB in this process first (so the pool is started
here), then fork, and sign 64 MiB in the child: through ``os.fork``, through a
``multiprocessing`` pool with the fork start method, and through a whole node
(a main and a window) made in a forked child. A child that hangs is killed at
a deadline and the test fails; nothing is left behind (``conftest.no_leaks``).
The last test checks, in a fresh interpreter, that only a child of a process
that started the pool gives it up: a child of one that never did may use it.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import traceback
import warnings
from typing import Callable, Iterator

import pytest

import zprokit
from zprokit.protocol import Signer

pytestmark = pytest.mark.timeout(60)

BIG = 64 << 20
DEADLINE = 20.0  # seconds a child has to sign 64 MiB (a few hundredths of a second on one core)
SIGNER = Signer(b"fork test key")


def big_payload() -> bytes:
    return bytes(range(256)) * (BIG // 256)


@contextlib.contextmanager
def fork_allowed() -> Iterator[None]:
    """Python 3.12+ warns (DeprecationWarning, an error under this suite's ``-W error``) when a
    process with threads forks; these tests fork such a process on purpose."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def sign_in_parent() -> bytes:
    """Sign 64 MiB here, which starts the Rayon pool in this process; the digest."""
    data = big_payload()
    digest = SIGNER.sign(b"head", [data])
    assert SIGNER.sign(b"head", [data]) == digest
    return digest


def run_forked(child: Callable[[], None], deadline: float = DEADLINE) -> None:
    """Run ``child`` in a forked child; fail if it raises, exits non-zero, or is not done within ``deadline`` s.

    The child leaves with ``os._exit`` (never through pytest's own exit), 0 only if
    ``child`` returned; a traceback goes to its stderr and, for the failure message, a pipe.
    """
    read_end, write_end = os.pipe()
    with fork_allowed():
        pid = os.fork()
    if pid == 0:  # the child
        status = 1
        try:
            os.close(read_end)
            child()
            status = 0
        except BaseException:
            text = traceback.format_exc()
            try:
                sys.stderr.write(text)
                sys.stderr.flush()
                os.write(write_end, text.encode(errors="replace")[-60000:])  # fits the pipe: never blocks
            except BaseException:
                pass
        finally:
            os._exit(status)
    os.close(write_end)
    try:
        give_up_at = time.monotonic() + deadline
        waitstatus: int | None = None
        while waitstatus is None:
            done, raw = os.waitpid(pid, os.WNOHANG)
            if done:
                waitstatus = raw
            elif time.monotonic() >= give_up_at:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)  # reap it: no zombie left behind
                pytest.fail(f"the forked child (pid {pid}) did not finish within {deadline} s: it hung "
                            "(signing after fork), and was killed with SIGKILL", pytrace=False)
            else:
                time.sleep(0.01)
        report = _read_all(read_end)
    finally:
        os.close(read_end)
    if os.WIFSIGNALED(waitstatus):
        pytest.fail(f"the forked child was killed by signal {os.WTERMSIG(waitstatus)}\n{report}", pytrace=False)
    code = os.WEXITSTATUS(waitstatus)
    assert code == 0, f"the forked child exited with status {code}:\n{report}"


def _read_all(fd: int) -> str:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def sign_big(_: int) -> bytes:
    """In a pool worker: sign 64 MiB, check the signature, and return it."""
    data = big_payload()
    digest = SIGNER.sign(b"head", [data])
    if SIGNER.sign(b"head", [data]) != digest:
        raise AssertionError("a worker's own signature did not verify")
    return digest


# --- the tests -----------------------------------------------------------------------------

def test_a_forked_child_signs_large_frames_and_the_parent_still_does():
    before = sign_in_parent()

    def child() -> None:
        data = big_payload()
        digest = SIGNER.sign(b"head", [data])
        assert SIGNER.sign(b"head", [data]) == digest, "the child's signature did not verify"
        assert digest == before, "the child signed the same frame differently"

    run_forked(child)
    assert sign_in_parent() == before, "the parent signs differently after the fork"


def test_a_fork_pool_signs_large_frames():
    expected = sign_in_parent()
    with fork_allowed():  # the workers are forked here, in Pool()
        pool = multiprocessing.get_context("fork").Pool(2)
    digests = None
    try:
        digests = pool.map_async(sign_big, range(4), chunksize=1).get(timeout=DEADLINE)
    except multiprocessing.TimeoutError:
        pass  # failed below, once the pool is gone
    finally:
        if digests is None:
            pool.terminate()  # kills hung workers
        else:
            pool.close()
        pool.join()
    if digests is None:
        pytest.fail(f"the fork pool's workers did not sign 64 MiB within {DEADLINE} s: they hung "
                    "(signing after fork); the pool was terminated", pytrace=False)
    assert digests == [expected] * 4, "a worker signed the same frame differently"


def test_a_main_and_window_in_a_forked_child_carry_64_mib():
    sign_in_parent()

    def child() -> None:
        with zprokit.Main("tcp://127.0.0.1:0") as main:
            main.on_msg_from_render(lambda event, args: len(args), channel="len")
            with zprokit.Window("w", main.endpoint, key=main.key) as window:
                answer = window.render_msg_to_main(b"x" * BIG, channel="len").result(timeout=30)
                assert answer == BIG, f"the main counted {answer!r} bytes, not {BIG}"

    run_forked(child, deadline=45.0)


# Run in a fresh interpreter: this one has started the pool already (the tests above).
FRESH_SCRIPT = """
import os
from zprokit import protocol

def wait(pid):
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

signer = protocol.Signer(b"k")
data = bytes(range(256)) * (%d // 256)
assert not protocol._rayon_started
pid = os.fork()
if pid == 0:  # a child of a parent that never started the pool: it may start its own
    code = 1
    try:
        assert protocol._rayon_usable
        digest = signer.sign(b"head", [data])
        assert protocol._rayon_started
        grandchild = os.fork()
        if grandchild == 0:  # a child of one that did: one thread, the same digest
            os._exit(0 if not protocol._rayon_usable and signer.sign(b"head", [data]) == digest else 3)
        assert wait(grandchild) == 0, "the grandchild failed"
        code = 0
    finally:
        os._exit(code)
assert wait(pid) == 0, "the child failed"
assert not protocol._rayon_started and protocol._rayon_usable  # the parent: untouched
print("ok")
""" % BIG


def test_only_a_child_of_a_process_that_started_the_pool_gives_it_up():
    proc = subprocess.Popen([sys.executable, "-c", FRESH_SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)  # its own process group: killed whole if it hangs
    try:
        out, _ = proc.communicate(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"a fresh process and its forked children did not finish within {DEADLINE} s: "
                    "something hung, and all were killed", pytrace=False)
    assert proc.returncode == 0 and out.strip() == b"ok", out.decode(errors="replace")


def test_a_node_used_across_a_fork_fails_at_once_and_the_parents_is_unharmed():
    """A child may not use its parent's main or window (their sockets and threads are the parent's):
    a clear ``Closed`` at once, as pyzmq does for a forked context, never a spin or a hang. The
    child may make nodes of its own, and its exit (closing what it inherited) harms nothing."""
    with zprokit.Main("tcp://127.0.0.1:0") as main:
        main.on_msg_from_render(lambda event, args: args + 1, channel="inc")
        with zprokit.Window("parent-window", main.endpoint, key=main.key) as window:
            window.on_msg_from_main(lambda event, args: args * 2, channel="double")
            assert window.render_msg_to_main(1, channel="inc").result(5) == 2
            pending = window.render_msg_to_main(2, channel="inc")

            def child() -> None:
                started = time.monotonic()
                for call in (lambda: window.render_msg_to_main(1, channel="inc"),
                             lambda: window.render_call_render("x", 1),
                             lambda: main.main_msg_to_render("parent-window", 1),
                             lambda: main.main_call_render("parent-window", 1),
                             lambda: main.broadcast(1),
                             lambda: main.wait_for_window("parent-window", 1),
                             lambda: window.ready(),
                             lambda: window.wait_closed(1),
                             lambda: pending.result(5)):
                    try:
                        call()
                    except zprokit.Closed as e:
                        assert "fork" in str(e), e
                    else:
                        raise AssertionError("a parent's node worked in a forked child")
                assert time.monotonic() - started < 2, "the refusals were not at once"
                window.close()  # the child's close touches nothing of the parent's
                main.close()
                with zprokit.Main("tcp://127.0.0.1:0") as own:  # its own nodes work
                    own.on_msg_from_render(lambda event, args: args, channel="echo")
                    with zprokit.Window("child-window", own.endpoint, key=own.key) as mine:
                        assert mine.render_msg_to_main("hi", channel="echo").result(10) == "hi"

            run_forked(child)
            assert pending.result(5) == 3
            assert window.render_msg_to_main(10, channel="inc").result(5) == 11
            assert main.main_call_render("parent-window", 4, channel="double").result(5) == 8
            assert window.connected and main.has_window("parent-window")
