"""Protocol version 2 at the real server: nothing acknowledged is lost, nothing arrives twice.

Real sockets on 127.0.0.1 and a real SQLite file. Each test plays what issue 14 measured against
version 1 (a recipient that dies after a few messages, one that never reads and is reset, a full
inbox, a full disk) and asserts what rules R7.10-R7.15 promise instead.
"""

from __future__ import annotations

import sqlite3

from dfachat.codec.messages import (  # type: ignore[attr-defined]
    DELIVER,
    DELIVER_ACK,
    MSG_ACK,
)
from dfachat.spec import LIMITS, DeliverFlags, ErrorCode, Limits, Outcome

from .client import Chat, ChatClient


async def deliveries(client: ChatClient, count: int) -> list:
    return [await client.expect(DELIVER) for _ in range(count)]


async def test_version_2_is_chosen_and_announces_its_windows(chat: Chat) -> None:
    limits = Limits(deliver_window=5, msg_window=3)
    await chat.start(limits=limits)
    client = await chat.greeted(version=2)
    assert client.hello_ok.version == 2
    assert (client.hello_ok.deliver_window, client.hello_ok.msg_window) == (5, 3)
    old = await chat.greeted("old", version=1)
    assert old.hello_ok.version == 1  # version 1 is still served (R5.2)


async def test_a_recipient_that_dies_after_three_messages_loses_none(chat: Chat) -> None:
    """Issue 14: 40 messages QUEUED for Liz; she takes 3 and dies; version 1 lost 37."""
    await chat.start(limits=Limits(deliver_window=8))
    steve = await chat.login("Steve", version=2)
    for i in range(40):
        ack = await steve.say(f"m{i}", to=("Liz",))
        assert ack.results[0].outcome is Outcome.QUEUED
    liz = await chat.login("Liz", version=2)
    first = await deliveries(liz, 8)  # the window, no more (R7.12)
    assert [d.text for d in first] == [f"m{i}" for i in range(8)]
    assert all(d.flags & DeliverFlags.STORED for d in first)
    assert not [e for e in await liz.collect(0.3) if isinstance(e, DELIVER)]
    liz.send(DELIVER_ACK(server_msg_id=first[2].server_msg_id))  # the application took 3
    liz.abort()  # and the process died
    await liz.wait_closed()
    liz = await chat.login("Liz", label="Liz again", version=2)
    rest = []
    while len(rest) < 37:
        batch = await deliveries(liz, min(8, 37 - len(rest)))
        rest += batch
        liz.send(DELIVER_ACK(server_msg_id=batch[-1].server_msg_id))
    assert [d.text for d in rest] == [f"m{i}" for i in range(3, 40)]
    ids = [d.server_msg_id for d in rest]
    assert ids == sorted(ids) and len(set(ids)) == 37
    assert not [e for e in await liz.collect(0.3) if isinstance(e, DELIVER)]
    assert chat.store is not None and chat.store.stored_for("liz") == []  # all acknowledged
    chat.store.tidy()  # what the server's next tick does
    chat.store.commit()
    assert chat.store.stored_count() == 0  # and forgotten on disk too


async def test_live_messages_survive_a_reset_and_come_back_redelivered(chat: Chat) -> None:
    """Issue 14: a recipient that never reads and is reset lost everything acknowledged DELIVERED."""
    await chat.start()
    liz = await chat.login("Liz", version=2)
    steve = await chat.login("Steve", version=2)
    liz.pause_reading()
    for i in range(20):
        ack = await steve.say(f"live {i}", to=("Liz",))
        assert ack.results[0].outcome is Outcome.DELIVERED
    liz.abort()
    await liz.wait_closed()
    liz = await chat.login("Liz", label="Liz again", version=2)
    back = await deliveries(liz, 20)
    assert [d.text for d in back] == [f"live {i}" for i in range(20)]
    assert all(d.flags & DeliverFlags.REDELIVERED and not d.flags & DeliverFlags.STORED for d in back)


async def test_the_window_streams_a_backlog_in_order_and_new_messages_queue_behind(chat: Chat) -> None:
    await chat.start(limits=Limits(deliver_window=4))
    steve = await chat.login("Steve", version=2)
    for i in range(10):
        await steve.say(f"old {i}", to=("Liz",))
    liz = await chat.login("Liz", version=2)
    got = await deliveries(liz, 4)
    await steve.say("new", to=("Liz",))  # waits behind the backlog (R7.13)
    assert not [e for e in await liz.collect(0.3) if isinstance(e, DELIVER)]
    while len(got) < 11:
        liz.send(DELIVER_ACK(server_msg_id=got[-1].server_msg_id))
        got += await deliveries(liz, min(4, 11 - len(got)))
    assert [d.text for d in got] == [f"old {i}" for i in range(10)] + ["new"]
    assert not got[-1].flags & (DeliverFlags.STORED | DeliverFlags.REDELIVERED)


async def test_an_acknowledgement_must_name_a_delivered_message(chat: Chat) -> None:
    await chat.start()
    liz = await chat.login("Liz", version=2, strict=False)
    liz.send_raw(_v2_frame(DELIVER_ACK(server_msg_id=12345)))
    await liz.expect_error(ErrorCode.UNEXPECTED_MESSAGE, fatal=False, rule="R7.10", regarding=DELIVER_ACK.TYPE)


async def test_a_full_inbox_is_over_quota_for_version_2_and_dropped_for_version_1(chat: Chat) -> None:
    await chat.start(limits=Limits(max_inbox_messages=3))
    steve = await chat.login("Steve", version=2)
    for i in range(3):
        assert (await steve.say(f"fits {i}", to=("Liz",))).results[0].outcome is Outcome.QUEUED
    ack = await steve.say("too many", to=("Liz", "Bailey"))
    assert [r.outcome for r in ack.results] == [Outcome.OVER_QUOTA, Outcome.QUEUED]
    old = await chat.login("Bailey", version=1)
    ack = await old.say("from version 1", to=("Liz",))
    assert ack.results[0].outcome is Outcome.UNKNOWN_USER  # version 1 has no OVER_QUOTA (R7.14)
    liz = await chat.login("Liz", version=2)
    assert [d.text for d in await deliveries(liz, 3)] == [f"fits {i}" for i in range(3)]
    assert not [e for e in await liz.collect(0.3) if isinstance(e, DELIVER)]


async def test_a_full_disk_delivers_to_nobody_and_says_so(chat: Chat, caplog) -> None:
    """Issue 14: on a full disk the online recipient got it while the sender got a fatal error."""
    await chat.start()
    liz = await chat.login("Liz", version=2)
    steve = await chat.login("Steve", version=2)
    old = await chat.login("Bailey", version=1, strict=False)
    await steve.collect(0.2)  # JOINED Bailey
    _fill_the_disk(chat)
    big = "é" * 4000  # 8,000 bytes for each of two inboxes: new pages are needed
    steve.send(steve.new_msg(big, to=("Liz", "Bailey")))
    error = await steve.expect_error(ErrorCode.STORE_FAILED, fatal=False, rule="R7.15")
    assert "nobody received it" in error.reason
    assert not [e for e in await liz.collect(0.3) if isinstance(e, DELIVER)]
    old.send(old.new_msg(big, to=("Liz",)))
    await old.expect_error(ErrorCode.INTERNAL_ERROR, fatal=True, rule="R7.15")
    failures = [r for r in caplog.records if "could not store a message" in r.getMessage()]
    assert len(failures) == 2 and all(r.levelname == "ERROR" and not r.exc_info for r in failures)
    caplog.clear()  # the operator was told, without a traceback; nothing else went wrong
    _free_the_disk(chat)
    ack = await steve.say("again", to=("Liz",), timeout=5)  # the session went on
    assert ack.results[0].outcome is Outcome.DELIVERED
    assert (await liz.expect(DELIVER)).text == "again"


def _fill_the_disk(chat: Chat) -> None:
    """SQLite's own "database or disk is full": no page may be added."""
    assert chat.store is not None
    db: sqlite3.Connection = chat.store._db
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages}")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _free_the_disk(chat: Chat) -> None:
    assert chat.store is not None
    chat.store._db.execute("PRAGMA max_page_count = 1073741823")


def _v2_frame(message) -> bytes:
    from dfachat.codec import encode

    return encode(message, "utf-8", 2)


assert LIMITS.deliver_window >= 8 and MSG_ACK  # the defaults these tests shrink


def test_the_server_warns_at_start_when_its_disk_is_nearly_full(tmp_path) -> None:
    from dfachat.server.run import disk_space_warning

    assert disk_space_warning(tmp_path / "chat.db", low=1) is None
    warning = disk_space_warning(tmp_path / "chat.db", low=1 << 62)  # more than any disk here
    assert warning and "STORE_FAILED" in warning and "R7.15" in warning and str(tmp_path) in warning


async def test_an_inbox_kept_across_a_restart_is_delivered_at_the_first_login(chat: Chat) -> None:
    """What the store held at start is durable: the first login gets it before any new commit."""
    await chat.start()
    steve = await chat.login("Steve", version=2)
    for i in range(3):
        await steve.say(f"before the restart {i}", to=("Liz",))
    await chat.aclose()
    chat.clients.clear()
    await chat.start()
    liz = await chat.login("Liz", version=2)
    got = await deliveries(liz, 3)
    assert [d.text for d in got] == [f"before the restart {i}" for i in range(3)]
    assert all(d.flags & DeliverFlags.STORED for d in got)


async def test_a_stall_of_the_server_itself_is_nobodys_silence(chat: Chat) -> None:
    """A commit that holds the loop longer than the idle timeout (a slow disk) times nobody out."""
    import time

    await chat.start(limits=Limits(idle_timeout_s=2), sweep_interval_s=0.1)
    liz = await chat.login("Liz", version=2)
    await liz.collect(0.3)
    time.sleep(2.5)  # the whole loop blocked, as under a slow fsync
    events = await liz.collect(0.5)
    assert not [e for e in events if getattr(e, "NAME", "") == "ERROR"], events
