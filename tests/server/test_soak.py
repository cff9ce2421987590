"""The soak harness (``bench/soak.py``) in a short run, and the server bugs it found.

The short run mixes 60 legitimate clients, 15 hostile slots, a SIGTERM restart
and a SIGKILL restart in 30 seconds against a real server process, and
requires what the benchmark requires: nothing lost, duplicated, reordered or
misrouted, no legitimate session disturbed, no illegal frame, memory under
the bound, no error in the server's log. It runs in protocol version 2 with
crashing recipients, counted at application level, and again, shorter, in
version 1. Every figure is a count checked from what the clients recorded,
not a timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import socket
import sys
from pathlib import Path

from dfachat.codec import encode
from dfachat.codec.frames import FrameDecoder
from dfachat.codec.messages import AUTH_OK, HELLO, HELLO_OK, PASS, USER  # type: ignore[attr-defined]
from dfachat.server import Store
from dfachat.spec import Limits

from .client import TEST_KDF, Chat

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load_soak():
    spec = importlib.util.spec_from_file_location("dfachat_bench_soak", BENCH / "soak.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _short_soak(tmp_path: Path, version: int, seconds: float) -> tuple[object, dict, str]:
    soak = _load_soak()
    config = soak.SoakConfig(
        clients=60, hostile=15, seconds=seconds, seed=7, mailboxes=5, think_s=0.5, actions=(3, 12), max_rss_mb=200.0,
        workdir=tmp_path, progress_s=0, protocol_version=version,
    )
    report = soak.run_soak(config)
    summary = soak.summary(report)
    # There was traffic of every kind to check, across both restarts.
    assert report["protocol_version"] == version, summary
    assert [status for _, status in report["server_exits"]] == [0, -9, 0], summary  # SIGTERM, SIGKILL, the end
    assert report["acked"] >= 100 and report["required"] >= 100 and report["queued"] >= 10, summary
    assert report["hostile_connections"] >= 30, summary
    # The targets.
    assert report["lost"] == 0 and report["delivered"] == report["required"], summary
    assert report["duplicated"] == 0 and report["reordered"] == 0 and report["misrouted"] == 0, summary
    assert report["disturbed"] == 0 and report["violations"] == 0, summary
    assert report["unhandled_errors"] == 0, summary
    assert report["server_max_rss_mb"] < config.max_rss_mb, summary
    assert soak.passed(report), summary
    return soak, report, summary


def test_short_soak_loses_nothing_at_application_level(tmp_path: Path) -> None:
    """Version 2 with crashing recipients: every MSG acknowledged DELIVERED, LOSSY or QUEUED
    reaches its recipient's application log exactly once, in the sender's order (R7.10, R7.11)."""
    soak, report, summary = _short_soak(tmp_path, 2, 30.0)
    assert report["queued_unchecked"] == 0, summary  # version 2 excuses nothing
    # Recipients died at every point the harness knows, and came back to redeliveries they had taken.
    assert set(report["crashes_by_kind"]) == set(soak.CRASH_KINDS), summary
    assert report["crashes"] >= 10 and report["redelivered"] > 0 and report["suppressed"] > 0, summary


def test_short_soak_loses_nothing_in_version_1(tmp_path: Path) -> None:
    """Version 1 (forget on write), no crashes: today's accounting, in a shorter run."""
    _, report, summary = _short_soak(tmp_path, 1, 12.0)
    assert report["crashes"] == 0 and report["suppressed"] == 0, summary


async def test_shutdown_cancels_logins_under_way(chat: Chat) -> None:
    """Found by the soak: a SIGTERM while a login slept its back-off (R6.4) left the task pending,
    and the server's log ended with "Task was destroyed but it is pending!"."""
    await chat.start(limits=Limits(backoff_base_ms=5000, backoff_max_ms=8000))
    client = await chat.greeted("late")
    client.send(USER(name="Liz"))
    client.send(PASS(password="wrong"))
    await asyncio.sleep(0.2)  # the password is checked; the 5 s back-off has begun
    await chat.stop()
    pending = [t for t in asyncio.all_tasks() if "_authenticate" in repr(t) and not t.done()]
    assert not pending, pending


async def test_a_connection_set_up_during_shutdown_is_not_served(chat: Chat) -> None:
    """Found by the soak: a connection the kernel had accepted before the listener closed reached
    ``connection_made`` after the BYEs went out, and was served -- it logged in -- while the server
    waited for the others to close; its login task was still pending when the loop closed, and
    the server logged internal errors on the way out (R10.3)."""
    await chat.start()
    await chat.login("Steve")  # keeps the shutdown waiting a moment for its close
    server = chat.server
    assert server is not None
    stopping = asyncio.get_running_loop().create_task(server.shutdown())
    await asyncio.sleep(0)  # the BYEs are out; the server waits for the connections to close
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    # What asyncio does with a socket it accepted: the server's protocol factory on it.
    await asyncio.get_running_loop().connect_accepted_socket(server._new_connection, ours)
    with contextlib.suppress(OSError):  # closed already (as it should be)
        theirs.sendall(raw_login("Liz", chat.password("Liz")))
    received = b""
    with contextlib.suppress(OSError):
        async with asyncio.timeout(5):
            while data := await asyncio.get_running_loop().sock_recv(theirs, 65536):
                received += data
    theirs.close()
    await stopping
    decoder = FrameDecoder()
    decoder.feed(received)
    answers = list(iter(decoder.next_message, None))
    assert not [m for m in answers if isinstance(m, (HELLO_OK, AUTH_OK))], answers
    assert not [t for t in asyncio.all_tasks() if "_authenticate" in repr(t) and not t.done()]


def raw_login(user: str, password: str) -> bytes:
    return (
        encode(HELLO(versions=(1,), encoding="utf-8", software="late"))
        + encode(USER(name=user))
        + encode(PASS(password=password))
    )


def test_an_unknown_name_costs_what_a_wrong_password_costs(tmp_path: Path) -> None:
    """Found by the soak: its accounts are hashed cheaply, the server opens the file with the
    default cost, and each login as an unknown name ran the dummy check at that default cost --
    16 times a wrong password's, which told unknown names apart (R6.2) and let a flood of them
    starve real logins of the password-checking threads."""
    db = tmp_path / "chat.db"
    cheap = Store(db, kdf=TEST_KDF)
    cheap.add_user("Liz", "pw1")
    cheap.close()
    store = Store(db)  # as the server opens it: the default cost for new hashes
    try:
        assert store.kdf != TEST_KDF
        unknown, known = store.credentials("nobody"), store.credentials("Liz")
        assert unknown[0] is None and known[0] is not None
        assert unknown[3] == known[3] == TEST_KDF
        assert not store.verify("nobody", "pw1") and store.verify("Liz", "pw1")
    finally:
        store.close()
