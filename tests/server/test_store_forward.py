"""Store and forward (R7.7) and server message ids (R7.3), restarts included."""

from __future__ import annotations

import time

from dfachat.codec.messages import (  # type: ignore[attr-defined]
    AUTH_OK,
    BYE,
    DELIVER,
    JOINED,
    LEFT,
    RecipientResult,
)
from dfachat.server import Store
from dfachat.spec import ByeReason, DeliverFlags, LeftReason, Limits, Outcome

from .client import TEST_KDF, Chat

STORED_DIRECT = DeliverFlags.DIRECTED | DeliverFlags.STORED


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def test_offline_recipient_gets_messages_in_order_exactly_once(chat: Chat) -> None:
    server = await chat.start()
    liz = await chat.login("Liz")
    bailey = await chat.login("Bailey")
    await liz.expect(JOINED, name="Bailey")

    acks = []
    for sender, text in ((liz, "one"), (bailey, "two"), (liz, "three"), (liz, "")):
        ack = await sender.say(text, to=("steve",))
        assert ack.results == (RecipientResult(name="steve", outcome=Outcome.QUEUED),)
        assert (ack.delivered, ack.lossy) == (0, 0)
        acks.append((ack, sender.auth_ok.name, text))
    broadcast = await liz.say("broadcasts are never stored")
    assert broadcast.delivered == 1
    await bailey.expect(DELIVER, text="broadcasts are never stored")
    assert server.store.stored_count() == len(acks)
    after_sending = now_ms()

    steve = await chat.login("Steve")
    delivered = [await steve.next() for _ in acks]
    for got, (ack, sender, text) in zip(delivered, acks, strict=True):
        assert isinstance(got, DELIVER), got
        assert (got.server_msg_id, got.flags, got.sender, got.text) == (
            ack.server_msg_id, STORED_DIRECT, sender, text
        )
        assert got.timestamp_ms <= after_sending  # the time it was sent, not delivered
    assert [d.server_msg_id for d in delivered] == sorted(d.server_msg_id for d in delivered)
    assert await steve.collect(0.2) == []  # the broadcast was not kept for Steve
    assert server.store.stored_count() == 0

    # Logging in again does not repeat them.
    await steve.quit()
    await liz.expect(LEFT, name="Steve", reason=LeftReason.QUIT)
    steve2 = await chat.login("Steve", label="steve-again")
    assert await steve2.collect(0.3) == []


async def test_mixed_recipients_and_the_stored_lossy_flag(chat: Chat) -> None:
    """R3.6: QUEUED in MSG_ACK; LOSSY, if any, comes on the DELIVER at login."""
    await chat.start()
    liz = await chat.login("Liz")
    steve = await chat.login("Steve")
    await liz.expect(JOINED, name="Steve")
    ack = await liz.say("cost: 10€ 日本", to=("Steve", "Bailey", "Ghost"))
    assert ack.results == (
        RecipientResult(name="Steve", outcome=Outcome.DELIVERED),
        RecipientResult(name="Bailey", outcome=Outcome.QUEUED),
        RecipientResult(name="Ghost", outcome=Outcome.UNKNOWN_USER),
    )
    assert (ack.delivered, ack.lossy) == (1, 0)
    await steve.expect(DELIVER, text="cost: 10€ 日本", flags=DeliverFlags.DIRECTED)

    bailey = await chat.login("Bailey", encoding="latin-1")
    got = await bailey.next()
    assert isinstance(got, DELIVER)
    assert (got.server_msg_id, got.text, got.flags) == (
        ack.server_msg_id, "cost: 10? ??", STORED_DIRECT | DeliverFlags.LOSSY
    )


async def test_stored_messages_survive_a_restart(chat: Chat) -> None:
    server = await chat.start()
    liz = await chat.login("Liz")
    steve = await chat.login("Steve")
    await liz.expect(JOINED, name="Steve")
    first = await liz.say("before the restart", to=("Bailey",))
    assert first.results == (RecipientResult(name="Bailey", outcome=Outcome.QUEUED),)
    second = await steve.say("me too €", to=("bailey",))
    assert second.results == (RecipientResult(name="bailey", outcome=Outcome.QUEUED),)
    ids_before = [first.server_msg_id, second.server_msg_id]

    await server.shutdown()
    assert server.stopped.is_set()
    for client in (liz, steve):
        assert await client.expect(BYE) == BYE(reason=ByeReason.SHUTDOWN)
        await client.wait_closed()
    # Nothing is lost with the process: a fresh Store on the same file still holds both.
    check = Store(chat.db, kdf=TEST_KDF)
    try:
        assert check.stored_count() == 2
    finally:
        check.close()

    await chat.start()  # a new server, a new Store, the same file
    bailey = await chat.login("Bailey", encoding="utf-16")
    got = [await bailey.next() for _ in range(2)]
    assert [(d.server_msg_id, d.sender, d.text, d.flags) for d in got] == [
        (first.server_msg_id, "Liz", "before the restart", STORED_DIRECT),
        (second.server_msg_id, "Steve", "me too €", STORED_DIRECT),
    ]
    assert await bailey.collect(0.2) == []

    # Server message ids keep increasing across the restart (R7.3).
    liz = await chat.login("Liz", label="liz-after")
    await bailey.expect(JOINED, name="Liz")
    after = [(await liz.say(f"after {i}", to=("Bailey",))).server_msg_id for i in range(3)]
    assert min(after) > max(ids_before)
    assert after == sorted(set(after))


async def test_server_message_ids_increase_over_many_restarts(chat: Chat) -> None:
    seen: list[int] = []
    for _ in range(3):
        await chat.start()
        liz = await chat.login("Liz")
        for i in range(3):
            seen.append((await liz.say(f"msg {i}")).server_msg_id)
        await chat.stop()
        await liz.wait_closed()
    assert seen == sorted(set(seen)), seen


async def test_the_login_after_stored_messages_is_a_normal_session(chat: Chat) -> None:
    """The stored DELIVERs come right after AUTH_OK; then the session chats as usual."""
    await chat.start()
    liz = await chat.login("Liz")
    for i in range(3):
        await liz.say(f"queued {i}", to=("Steve",))
    steve = await chat.greeted("steve")
    await steve.login("Steve", "pw2")
    assert isinstance(steve.log[1], AUTH_OK)  # HELLO_OK, AUTH_OK, then the stored ones
    assert [e.text for e in steve.log[2:5]] == ["queued 0", "queued 1", "queued 2"]
    for _ in range(3):
        await steve.expect(DELIVER, only=True)
    await liz.expect(JOINED, name="Steve")
    ack = await steve.say("thanks", to=("Liz",))
    assert ack.results == (RecipientResult(name="Liz", outcome=Outcome.DELIVERED),)


async def test_a_backlog_larger_than_the_output_bound_is_delivered_whole(chat: Chat) -> None:
    """R7.7 with R9.3: stored messages are not lost to the slow-consumer bound at login.

    The backlog (about 4 MB) is far more than the output bound (16 KiB) plus what
    the kernel buffers on loopback; a client that reads as fast as it can must
    get every stored message, in order, once, and stay connected.
    """
    # Liz sends 4 MB at once: lift the receive-rate bound (R9.4), which is not under test here.
    server = await chat.start(limits=Limits(max_output_buffer=16 * 1024, max_bytes_per_s=1 << 30, max_burst_bytes=1 << 30))
    liz = await chat.login("Liz")
    count = 1000
    filler = "x" * 4000
    acked = [(await liz.say(f"{i:04d} {filler}", to=("Steve",))).server_msg_id for i in range(count)]
    assert server.store.stored_count() == count

    steve = await chat.login("Steve", rcvbuf=4096)
    delivered = [await steve.expect(DELIVER, only=True, timeout=10) for _ in range(count)]
    assert [d.server_msg_id for d in delivered] == acked
    assert [d.text[:4] for d in delivered] == [f"{i:04d}" for i in range(count)]
    assert all(d.flags == STORED_DIRECT for d in delivered)
    assert server.store.stored_count() == 0
    # Still online and chatting afterwards.
    await liz.expect(JOINED, name="Steve")
    ack = await steve.say("got them all", to=("Liz",))
    assert ack.results == (RecipientResult(name="Liz", outcome=Outcome.DELIVERED),)
    assert not steve.closed.is_set()
