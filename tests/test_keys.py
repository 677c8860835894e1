"""Keys and their sources, CURVE configuration, the command's key options, and rate-limited warnings.

The attacks themselves are in test_security.py; this is the configuration
around them: where a key comes from and in which order, a key file other
users can read being refused, CURVE keys and allow-lists checked before
anything starts, and ``zprokit keygen --curve`` with the CURVE options of
``zprokit main`` and ``zprokit ping`` end to end.
"""

from __future__ import annotations

import logging
import re
import stat
from pathlib import Path

import pytest
import zmq

from test_cli import Background, assert_one_line_error, zprokit
from zprokit import Main, Window, cli
from zprokit._ratelimit import RateLimitedLog
from zprokit.session import ReplayGuard
from zprokit.security import (
    ENV_KEY, ENV_KEY_FILE, CurveClient, CurveServer, curve_key, derive_key_from_curve, read_curve_allow_file,
    read_key_file, resolve_key,
)

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0


@pytest.fixture(autouse=True)
def no_key_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (ENV_KEY, ENV_KEY_FILE, "ZPROKIT_KEY_HEX", "ZPROKIT_CURVE_SECRET_KEY", "ZPROKIT_CURVE_SERVER_KEY"):
        monkeypatch.delenv(name, raising=False)


def key_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


# --- the shared key ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o602])
def test_a_key_file_other_users_can_read_or_change_is_refused(tmp_path: Path, mode: int):
    path = key_file(tmp_path / "key", "k", mode)
    with pytest.raises(ValueError, match=rf"mode 0{mode:o}.*chmod 600 {re.escape(str(path))}"):
        read_key_file(path)
    with pytest.raises(ValueError, match="chmod 600"):
        Main("tcp://127.0.0.1:0", key_file=path)
    with pytest.raises(ValueError, match="chmod 600"):
        Window("w", "tcp://127.0.0.1:1", key_file=path)


def test_a_key_file_is_read_stripped_and_an_empty_one_refused(tmp_path: Path):
    assert read_key_file(key_file(tmp_path / "key", "  s3cret \n")) == b"s3cret"
    assert read_key_file(key_file(tmp_path / "ro", "s", 0o400)) == b"s"
    with pytest.raises(ValueError, match="empty"):
        read_key_file(key_file(tmp_path / "empty", ""))
    with pytest.raises(FileNotFoundError):
        read_key_file(tmp_path / "missing")


def test_key_sources_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """key=, key_file=, ZPROKIT_KEY, ZPROKIT_KEY_FILE, then CURVE's derived key, then random (main, loopback)."""
    file_a = key_file(tmp_path / "a", "from key_file")
    file_b = key_file(tmp_path / "b", "from ZPROKIT_KEY_FILE")
    server = zmq.curve_keypair()[0]
    monkeypatch.setenv(ENV_KEY, "from ZPROKIT_KEY")
    monkeypatch.setenv(ENV_KEY_FILE, str(file_b))
    assert resolve_key("from key=", key_file=file_a, role="window", curve_server_key=server) == b"from key="
    assert resolve_key(None, key_file=file_a, role="window", curve_server_key=server) == b"from key_file"
    assert resolve_key(None, role="window", curve_server_key=server) == b"from ZPROKIT_KEY"
    monkeypatch.delenv(ENV_KEY)
    assert resolve_key(None, role="window", curve_server_key=server) == b"from ZPROKIT_KEY_FILE"
    monkeypatch.delenv(ENV_KEY_FILE)
    assert resolve_key(None, role="window", curve_server_key=server) == derive_key_from_curve(server)
    first = resolve_key(None, endpoint="tcp://127.0.0.1:0")
    assert len(first) == 64 and first != resolve_key(None, endpoint="ipc:///tmp/x")  # random, each time
    with pytest.raises(ValueError, match="a window needs the main's key"):
        resolve_key(None, role="window")


def test_key_file_reaches_main_and_window(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = key_file(tmp_path / "key", "shared by file")
    with Main("tcp://127.0.0.1:0", key_file=path) as main:
        main.on_msg_from_render(lambda e, a: a, channel="echo")
        assert main.key == b"shared by file"
        with Window("by-argument", main.endpoint, key_file=path) as w:
            assert w.render_msg_to_main(1, channel="echo").result(WAIT) == 1
        monkeypatch.setenv(ENV_KEY_FILE, str(path))
        with Window("by-environment", main.endpoint) as w:
            assert w.render_msg_to_main(2, channel="echo").result(WAIT) == 2


def test_a_bind_beyond_loopback_without_a_key_says_how_to_fix_it():
    with pytest.raises(ValueError) as info:
        Main("tcp://0.0.0.0:0")
    message = str(info.value)
    for hint in ("zprokit keygen", "key_file=", ENV_KEY, ENV_KEY_FILE, "CURVE", "SECURITY.md"):
        assert hint in message, (hint, message)


# --- CURVE configuration -------------------------------------------------------------------------


def test_curve_keys_as_z85_or_raw_bytes_and_nothing_else():
    public, secret = zmq.curve_keypair()
    assert curve_key(public) == public == curve_key(public.decode())
    assert curve_key(zmq.utils.z85.decode(public)) == public
    for bad in (b"", b"x" * 39, b"~" * 40, "é" * 40, public + b"A"):
        with pytest.raises(ValueError, match="z85"):
            curve_key(bad)
    with pytest.raises(TypeError):
        curve_key(40)  # type: ignore[arg-type]


def test_curve_server_checks_its_keys_and_allow_list():
    public, secret = zmq.curve_keypair()
    other = zmq.curve_keypair()[0]
    server = CurveServer.create(secret, None, {"a": other})
    assert server.public_key == public and server.names == {other: "a"}
    with pytest.raises(ValueError, match="does not belong"):
        CurveServer.create(secret, other, {})
    with pytest.raises(ValueError, match="both 'a' and 'b'"):
        CurveServer.create(secret, None, {"a": other, "b": other})
    for name in ("", "a\0b", "x" * 256):
        with pytest.raises(ValueError, match="curve_allow"):
            CurveServer.create(secret, None, {name: other})
    with pytest.raises(ValueError, match="curve_secret_key"):
        Main("tcp://127.0.0.1:0", curve_allow={"a": other})
    with pytest.raises(ValueError, match="both curve_secret_key"):
        CurveClient.create(secret, None, None)
    with pytest.raises(ValueError, match="both curve_secret_key"):
        Window("w", "tcp://127.0.0.1:1", curve_server_key=public)


def test_a_second_zap_handler_in_one_context_is_refused():
    context = zmq.Context()
    try:
        secret = zmq.curve_keypair()[1]
        with Main("tcp://127.0.0.1:0", curve_secret_key=secret, curve_allow={}, context=context):
            with pytest.raises(ValueError, match="ZAP handler already"):
                Main("tcp://127.0.0.1:0", curve_secret_key=secret, curve_allow={}, context=context)
    finally:
        context.term()


def test_allow_list_file(tmp_path: Path):
    a, b = zmq.curve_keypair()[0], zmq.curve_keypair()[0]
    path = tmp_path / "allow"
    path.write_text(f"# windows\n\nalice {a.decode()}\n  worker 7   {b.decode()}  \n")
    assert read_curve_allow_file(path) == {"alice": a, "worker 7": b}
    path.write_text(f"alice {a.decode()}\nbob\n")
    with pytest.raises(ValueError, match=r":2: expected 'name public-key'"):
        read_curve_allow_file(path)
    path.write_text("alice not-a-key\n")
    with pytest.raises(ValueError, match=":1: public key must be 40 z85"):
        read_curve_allow_file(path)


# --- the command ---------------------------------------------------------------------------


def test_keygen_curve_writes_a_keypair(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = tmp_path / "main"
    assert cli.main(["keygen", "--curve", "-o", str(path)]) == 0
    secret, public = path.read_text().strip(), (tmp_path / "main.pub").read_text().strip()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert zmq.curve_public(secret.encode()) == public.encode()
    out = capsys.readouterr().out
    assert public in out and secret not in out
    assert cli.main(["keygen", "--curve", "-o", str(path)]) == 1  # exists: not replaced without --force
    assert "exists" in capsys.readouterr().err
    assert path.read_text().strip() == secret
    assert cli.main(["keygen", "--curve"]) == 0
    printed = dict(line.split() for line in capsys.readouterr().out.splitlines())
    assert zmq.curve_public(printed["secret-key"].encode()) == printed["public-key"].encode()


def test_the_command_refuses_a_key_file_others_can_read(tmp_path: Path):
    path = key_file(tmp_path / "key", "k", 0o644)
    result = zprokit("ping", "--connect", "tcp://127.0.0.1:1", "--key-file", str(path), key=None)
    assert_one_line_error(result, "chmod 600")
    result = zprokit("main", "--key-file", str(path), "_cli_app:app", key=None)
    assert_one_line_error(result, "chmod 600")


def test_main_and_ping_over_curve_from_the_command_line(tmp_path: Path):
    for name in ("main", "pinger", "stranger"):
        assert cli.main(["keygen", "--curve", "-o", str(tmp_path / name)]) == 0
    pinger_public = (tmp_path / "pinger.pub").read_text().strip()
    (tmp_path / "allow").write_text(f"ops {pinger_public}\n")
    main = Background("main", "--bind", "tcp://0.0.0.0:0", "--curve-secret-file", str(tmp_path / "main"),
                      "--curve-allow", str(tmp_path / "allow"), "_cli_app:app", key=None)
    try:
        port = main.expect(r"^zprokit main: listening on tcp://0\.0\.0\.0:(\d+)").group(1)
        endpoint = f"tcp://127.0.0.1:{port}"

        def ping(who: str, *name: str) -> object:
            return zprokit("ping", "--connect", endpoint, "-n", "1", "--timeout", "5", "--curve-secret-file",
                           str(tmp_path / who), "--curve-server-key", str(tmp_path / "main.pub"), *name, key=None)

        result = ping("pinger", "--name", "ops")
        assert result.returncode == 0 and "1 sent, 1 answered" in result.stdout, (result.stdout, result.stderr)
        # The key is listed as "ops" only: under ping's default name it is refused, and says why.
        assert_one_line_error(ping("pinger"), "AuthenticationError", "as 'ops', not 'zprokit-cli-")
        assert_one_line_error(ping("stranger", "--name", "ops"), "AuthenticationError", "allow-list")
    finally:
        main.close()


# --- replay memory, and rate-limited warnings -------------------------------------------------------


def test_a_hello_is_accepted_once_and_the_memory_of_them_is_bounded():
    guard = ReplayGuard(max_retired=3)
    sessions = [bytes([i]) * 16 for i in range(5)]
    assert guard.first_hello(sessions[0]) and not guard.first_hello(sessions[0])
    for s in sessions[1:]:
        assert guard.first_hello(s)
    assert len(guard._hellos) == 3
    assert guard.first_hello(sessions[0])  # forgotten: the oldest went first


def test_rate_limited_log_says_once_per_interval_and_counts_the_rest(caplog: pytest.LogCaptureFixture):
    now = [100.0]
    logger = logging.getLogger("zprokit.test-ratelimit")
    limited = RateLimitedLog(logger, interval=10.0, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger=logger.name)
    assert limited.warning("bad_signature", "dropped %s", "one")
    for _ in range(1000):
        assert not limited.warning("bad_signature", "dropped %s", "more")
    assert limited.warning("replay", "replayed")  # another reason has its own allowance
    now[0] += 10.0
    assert limited.warning("bad_signature", "dropped %s", "again")
    assert [r.getMessage() for r in caplog.records] == [
        "dropped one", "replayed", "dropped again (1000 more like it suppressed in the last 10 s)",
    ]
