"""Peers that stall, vanish or flood (section 9), capacity (R1.4) and shutdown (R10.3)."""

from __future__ import annotations

import asyncio
import time

from dfachat.codec import encode
from dfachat.codec.messages import (  # type: ignore[attr-defined]
    AUTH_FAILED,
    BYE,
    DELIVER,
    ERROR,
    HELLO,
    HELLO_OK,
    JOINED,
    LEFT,
    MSG,
    MSG_ACK,
    PASS,
    PING,
    USER,
)
from dfachat.fsm import ConnectionClosed
from dfachat.spec import ByeReason, ErrorCode, LeftReason, Limits

from .client import Chat, ChatClient

IDLE = Limits(idle_timeout_s=1)
HELLO_FRAME = encode(HELLO(versions=(1,), encoding="utf-8", software="slowpoke"))


# --- a client that never reads ---------------------------------------------------------------
async def test_slow_consumer_is_cut_off_and_memory_stays_bounded(chat: Chat) -> None:
    limit = 64 * 1024
    # Liz floods on purpose: lift the receive-rate bound (R9.4), which is not under test here.
    server = await chat.start(limits=Limits(max_output_buffer=limit, max_bytes_per_s=1 << 30, max_burst_bytes=1 << 30))
    liz = await chat.login("Liz")
    steve = await chat.login("Steve")
    bailey = await chat.login("Bailey", rcvbuf=4096)
    await liz.expect(JOINED, name="Steve")
    for client in (liz, steve):
        await client.expect(JOINED, name="Bailey")
    bailey.pause_reading()  # Bailey stops reading; Liz keeps broadcasting

    text = "x" * 4000
    worst = 0
    sent = 0
    ack = None
    deadline = time.monotonic() + 20
    while "bailey" in server.online:
        assert time.monotonic() < deadline, f"no SLOW_CONSUMER after {sent} broadcasts"
        ack = await liz.say(text)
        sent += 1
        for conn in server.connections.values():
            transport = conn.handle.transport
            if transport is not None and not transport.is_closing():
                worst = max(worst, transport.get_write_buffer_size())
        if sent % 50 == 0:
            steve.take_all()  # Steve reads everything; keep the test's own memory small
    # The queue of an unread session never grew far past the limit (one flush at most).
    assert worst <= limit + 2 * len(text) + 100, worst
    for client in (liz, steve):
        await client.expect(LEFT, name="Bailey", reason=LeftReason.ERROR)
    # The others are unaffected: Steve got every broadcast, and the next one reaches only him.
    after = await liz.say("Bailey is gone")
    assert after.delivered == 1
    got = await steve.expect(DELIVER, text="Bailey is gone")
    assert got.server_msg_id == after.server_msg_id
    assert ack is not None and ack.delivered == 2
    delivered_to_steve = [e for e in steve.log if isinstance(e, DELIVER)]
    assert len(delivered_to_steve) == sent + 1

    # Bailey's connection is gone: reading again finds the end of it (data, maybe the ERROR, then EOF/RST),
    # and nothing illegal on the way (Bailey is strict).
    bailey.resume_reading()
    await bailey.wait_closed(10)
    errors = [e for e in bailey.log if isinstance(e, ERROR)]
    assert all(e.code == ErrorCode.SLOW_CONSUMER for e in errors), errors
    assert len(server.connections) == 2


# --- idle time-outs ----------------------------------------------------------------------------------
async def test_half_a_frame_times_out(chat: Chat) -> None:
    await chat.start(limits=IDLE)
    staller = await chat.open("staller")
    staller.send_raw(HELLO_FRAME[:5])
    start = time.monotonic()
    error = await staller.expect(ERROR, timeout=5, only=True)
    assert error.code == ErrorCode.IDLE_TIMEOUT and error.flags
    assert error.rule in ("R6.8", "R9.2")
    assert time.monotonic() - start >= 0.8
    await staller.wait_closed()


async def test_a_silent_session_before_login_times_out_without_ping(chat: Chat) -> None:
    """R6.8: after HELLO_OK, silence before login ends the session; PING is only for authenticated ones."""
    await chat.start(limits=IDLE)
    silent = await chat.greeted("silent")
    error = await silent.expect(ERROR, timeout=5, only=True)
    assert error.code == ErrorCode.IDLE_TIMEOUT and error.flags
    await silent.wait_closed()
    assert not any(isinstance(e, PING) for e in silent.log)


async def test_a_frame_dripped_slower_than_the_timeout_times_out(chat: Chat) -> None:
    """Activity is a whole frame, not a byte: dripping bytes does not keep a session alive (R9.2)."""
    await chat.start(limits=IDLE)
    dripper = await chat.open("dripper")
    start = time.monotonic()
    for byte in HELLO_FRAME[:-1]:
        if dripper.closed.is_set():
            break
        dripper.send_raw(bytes([byte]))
        await asyncio.sleep(0.1)
    await dripper.wait_closed()
    elapsed = time.monotonic() - start
    assert elapsed < (len(HELLO_FRAME) - 1) * 0.1  # cut off before the frame could complete
    errors = [e for e in dripper.log if isinstance(e, ERROR)]
    assert [e.code for e in errors] == [ErrorCode.IDLE_TIMEOUT]
    assert not any(isinstance(e, HELLO_OK) for e in dripper.log)


async def test_idle_session_is_pinged_then_timed_out(chat: Chat) -> None:
    """R9.2: a PING after half the timeout, then IDLE_TIMEOUT; the others see LEFT (TIMEOUT)."""
    await chat.start(limits=IDLE)
    liz = await chat.login("Liz", auto_pong=True)  # answers PINGs: stays online throughout
    start = time.monotonic()
    steve = await chat.login("Steve")  # answers nothing
    await liz.expect(JOINED, name="Steve")
    ping = await steve.expect(PING, timeout=3, only=True)
    pinged_at = time.monotonic() - start
    error = await steve.expect(ERROR, timeout=3, only=True)
    timed_out_at = time.monotonic() - start
    assert isinstance(ping, PING)
    assert error.code == ErrorCode.IDLE_TIMEOUT and error.flags and error.rule == "R9.2"
    assert 0.4 <= pinged_at < timed_out_at and timed_out_at >= 0.9
    await steve.wait_closed()
    assert await liz.expect(LEFT, name="Steve") == LEFT(reason=LeftReason.TIMEOUT, name="Steve")
    # Liz, who answered every PING, outlived twice the timeout and still chats.
    await asyncio.sleep(max(0.0, 2.2 - (time.monotonic() - start)))
    assert any(isinstance(e, PING) for e in liz.log)
    ack = await liz.say("still here")
    assert ack.delivered == 0
    assert liz.take_all() == []


async def test_client_traffic_counts_as_activity(chat: Chat) -> None:
    await chat.start(limits=IDLE)
    liz = await chat.login("Liz")
    for _ in range(6):  # 1.8 s of chatting, never silent for 0.5 s
        await liz.say("tick")
        await asyncio.sleep(0.3)
    assert not any(isinstance(e, (PING, ERROR)) for e in liz.log)


# --- capacity --------------------------------------------------------------------------------------------
async def test_server_full(chat: Chat) -> None:
    server = await chat.start(max_connections=2)
    liz = await chat.login("Liz")
    lurker = await chat.open("lurker")  # not even greeted: it still takes a place
    third = await chat.open("third")
    await third.expect_error(ErrorCode.SERVER_FULL, fatal=True, rule="R1.4", regarding=0)
    await third.wait_closed()
    assert liz.take_all() == []
    # A place freed is a place available again.
    lurker.close()
    deadline = time.monotonic() + 5
    while len(server.connections) > 1:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    steve = await chat.login("Steve")
    await liz.expect(JOINED, name="Steve", only=True)
    ack = await steve.say("made it", to=("Liz",))
    assert ack.delivered == 1


# --- shutdown ----------------------------------------------------------------------------------------------
async def chatter(client: ChatClient, stop: asyncio.Event) -> list:
    """Broadcast until BYE; return the MSG_ACKs."""
    acks = []
    while client.session.can_send(MSG) and not stop.is_set():
        client.send(client.new_msg(f"{client.label} #{len(acks)}"))
        reply = await client.expect((MSG_ACK, BYE))
        if isinstance(reply, BYE):
            return acks
        acks.append(reply)
        await asyncio.sleep(0)
    await client.expect(BYE)
    return acks


async def test_shutdown_under_traffic(chat: Chat) -> None:
    server = await chat.start(limits=Limits(backoff_base_ms=2000))
    talkers = [await chat.login(name) for name in ("Liz", "Steve", "Bailey")]
    for client in talkers[:2]:
        await client.expect(JOINED, name="Bailey")
    await talkers[0].expect(JOINED, name="Steve")
    greeted = await chat.greeted("greeted")  # handshake done, not logged in
    fresh = await chat.open("fresh")  # nothing sent
    guesser = await chat.greeted("guesser")
    guesser.send(USER(name="Liz"))
    guesser.send(PASS(password="wrong"))  # the AUTH_FAILED waits 2 s of back-off: shutdown comes first
    stop = asyncio.Event()
    tasks = [asyncio.create_task(chatter(c, stop)) for c in talkers]
    await asyncio.sleep(0.3)
    assert all(not t.done() for t in tasks)
    start = time.monotonic()
    await server.shutdown(timeout=5)
    assert time.monotonic() - start < 3  # every peer was closed; nobody waited out the timeout
    assert server.stopped.is_set() and not server.connections
    results = await asyncio.gather(*tasks)
    assert all(len(acks) > 0 for acks in results)

    acked = {ack.server_msg_id for acks in results for ack in acks}
    for client in talkers + [greeted, fresh, guesser]:
        await client.wait_closed()
        events = [e for e in client.log if not isinstance(e, ConnectionClosed)]
        assert events[-1] == BYE(reason=ByeReason.SHUTDOWN), (client.label, events[-3:])
        assert not any(isinstance(e, LEFT) for e in events), client.label  # BYE, not LEFT (R8.2)
        assert not any(isinstance(e, AUTH_FAILED) for e in events), client.label
        # Everything delivered was acknowledged to its sender (R10.3).
        for event in events:
            if isinstance(event, DELIVER):
                assert event.server_msg_id in acked, (client.label, event)


async def test_shutdown_with_nobody_connected(chat: Chat) -> None:
    server = await chat.start()
    start = time.monotonic()
    await server.shutdown()
    assert server.stopped.is_set() and time.monotonic() - start < 1
