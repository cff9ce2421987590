"""``dfachat server`` and ``dfachat users`` run as a user runs them: ``python -m dfachat ...``."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dfachat.codec.messages import BYE, DELIVER, JOINED  # type: ignore[attr-defined]
from dfachat.server import ChatServer, ServerConfig, Store
from dfachat.spec import ByeReason

from .client import ChatClient

LISTENING = re.compile(r"^dfachat server listening on (\S+):(\d+)$")


def env(tmp_path: Path) -> dict[str, str]:
    """The environment of a child: nothing may land in the real home directory."""
    return {**os.environ, "XDG_DATA_HOME": str(tmp_path / "xdg"), "PYTHONUNBUFFERED": "1"}


class ServerProcess:
    """``python -m dfachat server ...`` with its stderr read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []

    @classmethod
    async def start(cls, tmp_path: Path, *args: str) -> ServerProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dfachat", "server", "--port", "0", *args,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(tmp_path),
        )
        return cls(proc)

    async def read_until(self, pattern: re.Pattern[str], timeout: float = 20) -> re.Match[str]:
        assert self.proc.stderr is not None
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.proc.stderr.readline()
                assert raw, f"the server ended before {pattern.pattern!r}: {self.lines}"
                line = raw.decode().rstrip("\n")
                self.lines.append(line)
                if found := pattern.search(line):
                    return found

    async def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 15) -> int:
        self.proc.send_signal(sig)
        async with asyncio.timeout(timeout):
            _, err = await self.proc.communicate()
        self.lines += err.decode().splitlines()
        assert self.proc.returncode is not None
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


async def test_demo_server_accepts_liz_and_says_bye_on_sigterm(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    server = await ServerProcess.start(tmp_path, "--db", str(db), "--demo")
    try:
        found = await server.read_until(LISTENING)
        host, port = found.group(1), int(found.group(2))
        assert host == "127.0.0.1" and port > 0  # port 0: the real port is printed
        notice = [line for line in server.lines if "DEMO MODE" in line]
        assert len(notice) == 1 and notice[0].startswith("***")
        assert all(f"{name}/{pw}" in notice[0] for name, pw in (("Liz", "pw1"), ("Steve", "pw2"), ("Bailey", "pw3")))
        assert str(db) in notice[0]

        liz = await ChatClient.connect(port, "Liz", "pw1")
        steve = await ChatClient.connect(port, "Steve", "pw2", encoding="latin-1")
        await liz.expect(JOINED, name="Steve")
        ack = await liz.say("hi from the CLI test")
        assert ack.delivered == 1
        assert (await steve.expect(DELIVER)).text == "hi from the CLI test"

        status = await server.stop(signal.SIGTERM)
        assert status == 0, server.lines
        for client in (liz, steve):
            assert await client.expect(BYE) == BYE(reason=ByeReason.SHUTDOWN)
            await client.wait_closed()
            assert not client.violations
            await client.aclose()
    finally:
        server.kill()
    store = Store(db)
    try:
        assert store.list_users() == ["Bailey", "Liz", "Steve"]  # the demo accounts persist
    finally:
        store.close()


async def test_log_json_lines_parse(tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    store = Store(db)
    store.add_user("Ann", "secret")  # no --demo: no notice, and Ann exists
    store.close()
    server = await ServerProcess.start(tmp_path, "--db", str(db), "--log-json", "--log-level", "debug")
    try:
        port = int((await server.read_until(LISTENING)).group(2))
        ann = ChatClient("ann")
        await ann.open(port)
        await ann.hello()
        assert (await ann.try_login("Ann", "wrong")).attempts_left == 2
        await ann.login("Ann", "secret")
        status = await server.stop(signal.SIGINT)
        assert status == 0, server.lines
        await ann.expect(BYE)
        await ann.aclose()
    finally:
        server.kill()
    assert not any("DEMO MODE" in line for line in server.lines)
    records = [json.loads(line) for line in server.lines if not LISTENING.match(line)]
    assert records, server.lines
    for record in records:
        assert {"time", "level", "message"} <= set(record), record
    events = [r.get("event") for r in records]
    for event in ("listening", "accepted", "auth_failed", "login", "stopped"):
        assert event in events, (event, events)
    login = next(r for r in records if r.get("event") == "login")
    assert login["user"] == "Ann" and login["level"] == "info"
    assert events.index("stopped") == len(events) - 1


async def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dfachat", "server", "--port", str(port), "--db", str(tmp_path / "x.db"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(tmp_path),
        )
        async with asyncio.timeout(20):
            _, err = await proc.communicate()
    assert proc.returncode == 2
    assert f"cannot serve on 127.0.0.1:{port}" in err.decode()
    assert "another program listens on it" in err.decode() and "give --port" in err.decode()
    assert "Traceback" not in err.decode() and err.decode().count("\n") == 1


def test_a_port_held_by_an_outgoing_connection_is_told_apart(tmp_path: Path) -> None:
    """Nothing listens on the port, yet it is taken: a connection's socket has it as local port."""
    with socket.socket() as listener, socket.socket() as outgoing:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        outgoing.bind(("127.0.0.1", 0))  # no SO_REUSEADDR, like most programs' outgoing sockets
        port = outgoing.getsockname()[1]
        outgoing.connect(listener.getsockname())
        accepted, _ = listener.accept()
        with accepted:
            result = subprocess.run(
                [sys.executable, "-m", "dfachat", "server", "--port", str(port), "--db", str(tmp_path / "x.db")],
                capture_output=True, text=True, timeout=30, env=env(tmp_path), check=False,
            )
    assert result.returncode == 2, result.stderr
    assert f"cannot serve on 127.0.0.1:{port}: the port is in use: nothing listens on it" in result.stderr
    assert "give --port another port" in result.stderr and "Traceback" not in result.stderr


_STATES = {"0A": "LISTEN", "01": "ESTABLISHED", "06": "TIME_WAIT", "08": "CLOSE_WAIT"}


@given(
    rows=st.lists(st.tuples(st.integers(0, 65535), st.integers(0, 65535), st.sampled_from(sorted(_STATES))),
                  max_size=8),
    port=st.integers(1, 65535),
)
def test_port_holder_reads_the_kernel_table(rows: list[tuple[int, int, str]], port: int, tmp_path_factory: Any) -> None:
    from dfachat.server.run import port_holder

    table = tmp_path_factory.mktemp("proc") / "tcp"
    lines = ["  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid"]
    lines += [
        f"   {i}: 0100007F:{local:04X} 0100007F:{remote:04X} {state} 00000000:00000000 00:00000000 00000000  0"
        for i, (local, remote, state) in enumerate(rows)
    ]
    table.write_text("\n".join(lines) + "\n")
    states = {state for local, _, state in rows if local == port}  # the remote port does not count
    expected = "listener" if "0A" in states else "connection" if states else None
    assert port_holder(port, (str(table), str(table) + "-missing")) == expected


# --- dfachat users -----------------------------------------------------------------------------
def users(tmp_path: Path, db: Path, *args: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dfachat", "users", "--db", str(db), *args],
        input=None if password is None else password + "\n",
        capture_output=True, text=True, timeout=60, env=env(tmp_path), check=False,
    )


def test_users_add_list_passwd_remove(tmp_path: Path) -> None:
    db = tmp_path / "accounts.db"
    added = users(tmp_path, db, "add", "alice", password="s3cret pass")
    assert (added.returncode, added.stdout) == (0, "added alice\n"), added.stderr
    assert users(tmp_path, db, "add", "Bob.B", password="hunter2").returncode == 0
    listed = users(tmp_path, db, "list")
    assert (listed.returncode, listed.stdout) == (0, "alice\nBob.B\n")

    store = Store(db)
    try:
        assert store.verify("ALICE", "s3cret pass") is not None  # the whole line, spaces included
        assert store.verify("alice", "s3cret") is None
    finally:
        store.close()

    changed = users(tmp_path, db, "passwd", "Alice", password="n3w")
    assert (changed.returncode, changed.stdout) == (0, "changed the password of Alice\n"), changed.stderr
    store = Store(db)
    try:
        assert store.verify("alice", "n3w") is not None
        assert store.verify("alice", "s3cret pass") is None
    finally:
        store.close()

    removed = users(tmp_path, db, "remove", "alice")
    assert (removed.returncode, removed.stdout) == (0, "removed alice\n")
    assert users(tmp_path, db, "list").stdout == "Bob.B\n"


@pytest.mark.parametrize(
    ("args", "password", "message"),
    [
        (("add", "carol"), "pw", "exists already"),
        (("add", "CAROL"), "pw", "exists already"),  # names are case-insensitive
        (("add", "9carol"), "pw", "not a valid user name"),
        (("add", "dave"), "", "cannot be empty"),
        (("passwd", "nobody"), "pw", "no account named 'nobody'"),
        (("remove", "nobody"), None, "no account named 'nobody'"),
    ],
    ids=["exists", "exists-case", "bad-name", "empty-password", "passwd-unknown", "remove-unknown"],
)
def test_users_errors(tmp_path: Path, args: tuple[str, ...], password: str | None, message: str) -> None:
    db = tmp_path / "accounts.db"
    assert users(tmp_path, db, "add", "carol", password="pw").returncode == 0
    result = users(tmp_path, db, *args, password=password)
    assert result.returncode == 2
    assert message in result.stderr and result.stderr.startswith("dfachat: error:")
    assert "Traceback" not in result.stderr
    assert users(tmp_path, db, "list").stdout == "carol\n"  # nothing changed


def test_db_option_after_the_action(tmp_path: Path) -> None:
    db = tmp_path / "after.db"
    result = subprocess.run(
        [sys.executable, "-m", "dfachat", "users", "add", "erin", "--db", str(db)],
        input="pw\n", capture_output=True, text=True, timeout=60, env=env(tmp_path), check=False,
    )
    assert result.returncode == 0, result.stderr
    assert users(tmp_path, db, "list").stdout == "erin\n"
    assert not (tmp_path / "xdg").exists()  # the default database was not touched


async def test_an_account_made_with_the_cli_logs_in(tmp_path: Path) -> None:
    db = tmp_path / "cli.db"
    assert users(tmp_path, db, "add", "Frank", password="fr4nk").returncode == 0
    server = ChatServer(Store(db), ServerConfig(port=0))
    await server.start()
    try:
        frank = await ChatClient.connect(server.port, "frank", "fr4nk")
        assert frank.auth_ok.name == "Frank"
        await frank.aclose()
    finally:
        await server.shutdown()


async def test_two_sigterms_shut_down_once(tmp_path: Path) -> None:
    """An impatient second signal must not start a second shutdown that dies pending."""
    server = await ServerProcess.start(tmp_path, "--db", str(tmp_path / "twice.db"), "--demo")
    try:
        port = int((await server.read_until(LISTENING)).group(2))
        clients = [await ChatClient.connect(port, name, pw) for name, pw in (("Liz", "pw1"), ("Steve", "pw2"))]
        server.proc.send_signal(signal.SIGTERM)
        server.proc.send_signal(signal.SIGTERM)
        status = await server.stop(signal.SIGTERM)  # a third, for good measure
        for client in clients:
            await client.aclose()
    finally:
        server.kill()
    output = "\n".join(server.lines)
    assert status == 0, output
    assert "Task was destroyed" not in output and "never awaited" not in output, output
    assert "Traceback" not in output
    assert output.count("INFO stopped") == 1, output
