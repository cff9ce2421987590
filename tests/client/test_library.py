"""The client library against a real server on 127.0.0.1 (ephemeral port, real SQLite file)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from dfachat.client import (
    AuthenticationFailed,
    Chat,
    Closed,
    ConnectionFailed,
    Delivery,
    Joined,
    Left,
    MessageRejected,
    SessionEnded,
    connect,
    open_chat,
)
from dfachat.client.library import delivery_time
from dfachat.server import DEMO_ACCOUNTS, ChatServer, KdfParams, ServerConfig, Store
from dfachat.spec import LeftReason, Limits, Outcome

PASSWORDS = dict(DEMO_ACCOUNTS)
TIMEOUT = 5.0


def run(tmp_path: Path, scenario: Callable[[ChatServer], Awaitable[None]]) -> None:
    async def main() -> None:
        store = Store(tmp_path / "chat.db", kdf=KdfParams(n=1024))
        store.ensure_users(DEMO_ACCOUNTS)
        server = ChatServer(store, ServerConfig(port=0, limits=Limits(backoff_base_ms=5)))
        await server.start()
        try:
            async with asyncio.timeout(30):
                await scenario(server)
        finally:
            if not server.stopped.is_set():
                await server.shutdown()

    asyncio.run(main())


@asynccontextmanager
async def login(server: ChatServer, user: str, **options: Any) -> AsyncIterator[Chat]:
    async with connect(
        "127.0.0.1", server.port, user=user, password=PASSWORDS[user], timeout=TIMEOUT, **options
    ) as chat:
        yield chat


async def next_of(chat: Chat, kind: type, *, timeout: float = TIMEOUT) -> Any:
    """The next event of ``kind``; other events in between are returned too, for checks."""
    async with asyncio.timeout(timeout):
        async for event in chat.events():
            if isinstance(event, kind):
                return event
            if isinstance(event, Closed):
                raise AssertionError(f"session ended while waiting for {kind.__name__}: {event}")
    raise AssertionError("events ended")


async def quiet(chat: Chat, seconds: float = 0.2) -> list[Any]:
    """Every event that arrives within ``seconds``."""
    await asyncio.sleep(seconds)
    events = []
    while (event := chat.next_event_nowait()) is not None:
        events.append(event)
    return events


def test_the_seed_scenario(tmp_path: Path) -> None:
    async def scenario(server: ChatServer) -> None:
        async with login(server, "Liz") as liz:
            assert liz.user == "Liz" and liz.online == ["Liz"]
            async with login(server, "Steve") as steve:
                assert await next_of(liz, Joined) == Joined("Steve")
                assert sorted(steve.online) == ["Liz", "Steve"]
                async with login(server, "Bailey") as bailey:
                    assert await next_of(liz, Joined) == Joined("Bailey")
                    assert await next_of(steve, Joined) == Joined("Bailey")

                    ack = await liz.send("hello everyone")  # broadcast
                    assert ack.delivered == 2 and ack.lossy == 0 and ack.outcomes == {}
                    for other in (steve, bailey):
                        got = await next_of(other, Delivery)
                        assert (got.sender, got.text, got.directed) == ("Liz", "hello everyone", False)
                        assert got.server_msg_id == ack.server_msg_id
                    assert await quiet(liz) == []  # a broadcast never reaches its sender (R7.8)

                    ack = await steve.send("just for you", to=["Bailey"])
                    assert ack.outcomes == {"Bailey": Outcome.DELIVERED} and ack.delivered == 1
                    got = await next_of(bailey, Delivery)
                    assert (got.sender, got.text, got.directed) == ("Steve", "just for you", True)
                    assert await quiet(liz) == []

                    assert sorted(await liz.who()) == ["Bailey", "Liz", "Steve"]
                await bailey_left(liz, steve)
            left = await next_of(liz, Left)
            assert left == Left("Steve", LeftReason.QUIT)

    async def bailey_left(*chats: Chat) -> None:
        for chat in chats:
            assert await next_of(chat, Left) == Left("Bailey", LeftReason.QUIT)

    run(tmp_path, scenario)


def test_wrong_password_says_how_many_attempts_are_left(tmp_path: Path) -> None:
    async def scenario(server: ChatServer) -> None:
        with pytest.raises(AuthenticationFailed) as caught:
            await open_chat("127.0.0.1", server.port, user="Liz", password="nope", timeout=TIMEOUT)
        assert caught.value.attempts_left == 2
        assert "wrong user name or password" in str(caught.value)
        with pytest.raises(AuthenticationFailed):  # an unknown user reads the same (R6.2)
            await open_chat("127.0.0.1", server.port, user="Nobody", password="x", timeout=TIMEOUT)

    run(tmp_path, scenario)


def test_unreachable_server_and_bad_encoding_are_sentences(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def scenario(server: ChatServer) -> None:
        with pytest.raises(ConnectionFailed, match="cannot reach a dfachat server at 127.0.0.1"):
            await open_chat("127.0.0.1", port, user="Liz", password="pw1", timeout=TIMEOUT)
        with pytest.raises(ConnectionFailed, match="not a dfachat encoding"):
            await open_chat("127.0.0.1", server.port, user="Liz", password="pw1", encoding="klingon")

    run(tmp_path, scenario)


def test_probe_checks_the_server_without_logging_in(tmp_path: Path) -> None:
    from dfachat.client.library import probe

    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed = unused.getsockname()[1]

    async def scenario(server: ChatServer) -> None:
        software = await probe("127.0.0.1", server.port, timeout=TIMEOUT)
        assert software.startswith("dfachat")
        async with connect("127.0.0.1", server.port, user="Liz", password="pw1", timeout=TIMEOUT) as liz:
            assert liz.online == ["Liz"]  # the probe left: nobody else is logged in
        with pytest.raises(ConnectionFailed, match="cannot reach a dfachat server at 127.0.0.1"):
            await probe("127.0.0.1", closed, timeout=TIMEOUT)

    run(tmp_path, scenario)


def test_text_the_encoding_cannot_carry_is_refused_before_sending(tmp_path: Path) -> None:
    async def scenario(server: ChatServer) -> None:
        async with login(server, "Liz", encoding="ascii") as liz:
            with pytest.raises(MessageRejected, match="cannot be written in ascii"):
                await liz.send("café")
            with pytest.raises(MessageRejected, match="the server accepts 4096"):
                await liz.send("x" * 4097)
            ack = await liz.send("plain")  # the session is unharmed
            assert ack.delivered == 0

    run(tmp_path, scenario)


def test_limits_the_server_announces_are_kept(tmp_path: Path) -> None:
    """R4.11: fewer recipients and a smaller frame than the spec's defaults, announced in HELLO_OK."""

    async def main() -> None:
        store = Store(tmp_path / "chat.db", kdf=KdfParams(n=1024))
        store.ensure_users(DEMO_ACCOUNTS)
        limits = Limits(backoff_base_ms=5, max_recipients=2, max_frame=300)
        server = ChatServer(store, ServerConfig(port=0, limits=limits))
        await server.start()
        try:
            async with asyncio.timeout(30), login(server, "Liz") as liz:
                with pytest.raises(MessageRejected, match="names 3 recipients; the server accepts 2") as err:
                    await liz.send("hi", to=["Steve", "Bailey", "Zed"])
                assert err.value.rule == "R4.11"
                with pytest.raises(MessageRejected, match="-byte frame; the server accepts 300"):
                    await liz.send("x" * 290)
                ack = await liz.send("x" * 200, to=["Steve", "Bailey"])  # the session is unharmed
                assert set(ack.outcomes) == {"Steve", "Bailey"}
        finally:
            await server.shutdown()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("timestamp_ms", "expected"),
    [
        (0, "1970-01-01T00:00:00+00:00"),
        (1_700_000_000_123, "2023-11-14T22:13:20.123000+00:00"),
        (253_402_300_799_999, "9999-12-30T00:00:00+00:00"),
        (2**64 - 1, "9999-12-30T00:00:00+00:00"),  # a server's odd clock does not end the session
    ],
)
def test_delivery_times_are_capped_at_what_a_calendar_shows(timestamp_ms: int, expected: str) -> None:
    assert delivery_time(timestamp_ms).isoformat() == expected


def test_lossy_delivery_is_visible_to_both_sides(tmp_path: Path) -> None:
    async def scenario(server: ChatServer) -> None:
        async with login(server, "Liz") as liz, login(server, "Steve", encoding="latin-1") as steve:
            ack = await liz.send("price: 5 € or 5 ¥", to=["Steve"])
            assert ack.outcomes == {"Steve": Outcome.LOSSY} and ack.lossy == 1
            got = await next_of(steve, Delivery)
            assert got.lossy and got.text == "price: 5 ? or 5 ¥"  # ¥ is in latin-1, € is not

    run(tmp_path, scenario)


def test_offline_recipient_gets_the_message_at_login(tmp_path: Path) -> None:
    async def scenario(server: ChatServer) -> None:
        async with login(server, "Liz") as liz:
            ack = await liz.send("see you later", to=["Bailey"])
            assert ack.outcomes == {"Bailey": Outcome.QUEUED} and ack.delivered == 0
            async with login(server, "Bailey") as bailey:
                got = await next_of(bailey, Delivery)
                assert (got.text, got.stored, got.directed) == ("see you later", True, True)

    run(tmp_path, scenario)


def test_server_shutdown_ends_the_session_with_a_sentence(tmp_path: Path) -> None:
    async def scenario(server: ChatServer) -> None:
        chat = await open_chat("127.0.0.1", server.port, user="Liz", password="pw1", timeout=TIMEOUT)
        await server.shutdown()
        closed = await next_of(chat, Closed)
        assert "shutting down" in str(closed.error)
        with pytest.raises(SessionEnded):
            await chat.send("anyone?")
        await chat.aclose()

    run(tmp_path, scenario)


def test_a_second_login_replaces_the_first(tmp_path: Path) -> None:
    async def scenario(server: ChatServer) -> None:
        first = await open_chat("127.0.0.1", server.port, user="Liz", password="pw1", timeout=TIMEOUT)
        async with login(server, "Liz") as second:
            closed = await next_of(first, Closed)
            assert closed.error.code_name == "SESSION_REPLACED"
            assert "logged in from somewhere else" in str(closed.error)
            assert (await second.send("still here")).delivered == 0
        await first.aclose()

    run(tmp_path, scenario)
