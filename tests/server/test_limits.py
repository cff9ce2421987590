"""Per-peer resource bounds over real sockets: connections per address (R1.5), total connections
(R1.4), login attempts per address (R9.5), received bytes per second (R9.4).

The output bound (R9.3) is tested in test_resources.py (a client that never reads).
Every test uses small limits; a second peer address is 127.0.0.2 (any 127/8 address is local on Linux).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from dfachat.codec.messages import AUTH_FAILED, JOINED, LEFT, PASS, USER  # type: ignore[attr-defined]
from dfachat.server import ChatServer
from dfachat.spec import ErrorCode, LeftReason, Limits

from .client import HOST, TIMEOUT, Chat, ChatClient

OTHER_ADDRESS = "127.0.0.2"


async def open_from(chat: Chat, address: str, label: str) -> ChatClient:
    """A connected client whose socket is bound to ``address`` (another peer address)."""
    client = ChatClient(label)
    chat.clients.append(client)
    async with asyncio.timeout(TIMEOUT):
        client._reader, client._writer = await asyncio.open_connection(HOST, chat.port, local_addr=(address, 0))
    client._pump = asyncio.get_running_loop().create_task(client._read_forever())
    return client


async def until(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not {what} within {timeout} s"
        await asyncio.sleep(0.01)


# --- connections per address (R1.5) and in total (R1.4) ----------------------------------------
async def test_connections_from_one_address_are_bounded(chat: Chat) -> None:
    server: ChatServer = await chat.start(limits=Limits(max_per_address=2))
    liz = await chat.login("Liz")
    lurker = await chat.open("lurker")  # not even greeted: it still counts
    third = await chat.open("third")
    error = await third.expect_error(ErrorCode.SERVER_FULL, fatal=True, rule="R1.5", regarding=0)
    assert "2 connections" in error.reason
    await third.wait_closed()
    assert liz.take_all() == []  # the connections already open are not affected
    # Another address is not bound by this one's count.
    other = await open_from(chat, OTHER_ADDRESS, "other")
    await other.hello()
    await other.login("Steve", chat.password("Steve"))
    await liz.expect(JOINED, name="Steve", only=True)
    assert server.core.per_address == {HOST: 2, OTHER_ADDRESS: 1}
    # A place freed is a place available again.
    lurker.close()
    await until(lambda: server.core.per_address.get(HOST) == 1, "freed")
    bailey = await chat.login("Bailey")
    assert (await bailey.say("made it", to=("Liz",))).delivered == 1


async def test_the_total_bound_counts_every_address(chat: Chat) -> None:
    await chat.start(limits=Limits(max_per_address=5), max_connections=2)
    await chat.login("Liz")
    await open_from(chat, OTHER_ADDRESS, "other")
    third = await open_from(chat, OTHER_ADDRESS, "third")
    await third.expect_error(ErrorCode.SERVER_FULL, fatal=True, rule="R1.4", regarding=0)
    await third.wait_closed()


# --- login attempts per address (R9.5) -----------------------------------------------------------
async def test_login_attempts_from_one_address_are_rate_limited(chat: Chat) -> None:
    server = await chat.start(limits=Limits(max_logins_per_minute=2, backoff_base_ms=1))
    liz = await chat.login("Liz")  # attempt 1
    guesser = await chat.greeted("guesser")
    assert isinstance(await guesser.try_login("Steve", "wrong"), AUTH_FAILED)  # attempt 2
    # Attempt 3, on a new connection and with the right password: not checked, refused.
    late = await chat.greeted("late")
    late.send(USER(name="Steve"))
    late.send(PASS(password=chat.password("Steve")))
    error = await late.expect_error(ErrorCode.RATE_LIMITED, fatal=True, rule="R9.5", regarding=PASS.TYPE)
    assert "2 login attempts" in error.reason
    await late.wait_closed()
    assert "steve" not in server.online
    # The guesser's next attempt on its open connection is refused the same way.
    guesser.send(USER(name="Steve"))
    guesser.send(PASS(password=chat.password("Steve")))
    await guesser.expect_error(ErrorCode.RATE_LIMITED, fatal=True, rule="R9.5")
    await guesser.wait_closed()
    # Sessions already logged in are not affected, and another address may still log in.
    other = await open_from(chat, OTHER_ADDRESS, "other")
    await other.hello()
    await other.login("Steve", chat.password("Steve"))
    await liz.expect(JOINED, name="Steve", only=True)


# --- received bytes per second (R9.4) -------------------------------------------------------------
async def test_a_sender_within_the_rate_is_served_and_a_flood_is_cut_off(chat: Chat) -> None:
    server = await chat.start(limits=Limits(max_bytes_per_s=4000, max_burst_bytes=4000))
    liz = await chat.login("Liz")
    steve = await chat.login("Steve")
    await liz.expect(JOINED, name="Steve")
    # About 1 KB every 0.3 s (3.4 KB/s): more than the bucket holds in all, never more than the rate.
    for i in range(6):
        ack = await liz.say(f"{i} " + "x" * 1000, to=("Steve",))
        assert ack.delivered == 1
        await asyncio.sleep(0.3)
    # One frame of over 4 KB at once is more than the bucket can ever hold.
    liz.send(liz.new_msg("y" * 4090, to=("Steve",)))
    error = await liz.expect_error(ErrorCode.RATE_LIMITED, fatal=True, rule="R9.4")
    assert "4000 bytes per second" in error.reason
    await liz.wait_closed()
    await steve.expect(LEFT, name="Liz", reason=LeftReason.ERROR)
    assert "liz" not in server.online
    # The others go on.
    assert (await steve.say("still here")).delivered == 0
