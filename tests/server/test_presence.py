"""The seed's scenario and presence: handshake, JOINED, broadcast and directed MSG, LIST, LEFT."""

from __future__ import annotations

import asyncio
import time

import pytest

from dfachat.codec import encode
from dfachat.codec.messages import (  # type: ignore[attr-defined]
    AUTH_OK,
    BYE,
    DELIVER,
    HELLO,
    JOINED,
    LEFT,
    LIST,
    MSG,
    PING,
    PONG,
    QUIT,
    USERS,
    RecipientResult,
)
from dfachat.fsm import make_error
from dfachat.spec import (
    ByeReason,
    DeliverFlags,
    ErrorCode,
    LeftReason,
    Limits,
    ListFlags,
    Outcome,
)

from .client import Chat, ChatClient


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def assert_quiet(*clients: ChatClient, duration: float = 0.15) -> None:
    """None of ``clients`` receives anything more (in ``duration``)."""
    await asyncio.sleep(duration)
    for client in clients:
        assert client.take_all() == [], f"{client.label} received more"


async def test_seed_scenario(chat: Chat) -> None:
    """Liz, Steve and Bailey log in, chat, list, and quit, as in the seed protocol."""
    await chat.start()
    start = now_ms()
    liz = await chat.login("Liz")
    assert liz.auth_ok == AUTH_OK(flags=ListFlags(0), name="Liz", online=("Liz",))

    steve = await chat.login("steve")  # names match case-insensitively ...
    assert steve.auth_ok.name == "Steve"  # ... and the registered spelling is reported (R4.1)
    assert steve.online == ("Liz", "Steve")
    assert await liz.next() == JOINED(name="Steve")

    bailey = await chat.login("Bailey")
    assert bailey.online == ("Liz", "Steve", "Bailey")
    for other in (liz, steve):
        assert await other.next() == JOINED(name="Bailey")
    await assert_quiet(liz, steve, bailey)  # nobody is told of their own arrival

    # A broadcast reaches the two others, not the sender (R7.8).
    ack = await liz.say("Hello everyone!")
    assert (ack.delivered, ack.lossy, ack.results) == (2, 0, ())
    for other in (steve, bailey):
        got = await other.next()
        assert isinstance(got, DELIVER)
        assert (got.server_msg_id, got.flags, got.sender, got.text) == (
            ack.server_msg_id, DeliverFlags(0), "Liz", "Hello everyone!"
        )
        assert start <= got.timestamp_ms <= now_ms()
    await assert_quiet(liz)

    # A directed message reaches only its recipient, flagged DIRECTED (R7.4, R7.5).
    ack2 = await steve.say("just for you", to=("bailey",))
    assert ack2.server_msg_id > ack.server_msg_id
    assert ack2.results == (RecipientResult(name="bailey", outcome=Outcome.DELIVERED),)
    assert (ack2.delivered, ack2.lossy) == (1, 0)
    got = await bailey.next()
    assert isinstance(got, DELIVER)
    assert (got.server_msg_id, got.flags, got.sender, got.text) == (
        ack2.server_msg_id, DeliverFlags.DIRECTED, "Steve", "just for you"
    )
    await assert_quiet(liz, steve)

    # Per-recipient outcomes in the MSG's order; a sender may name itself (R7.8).
    ack3 = await bailey.say("roll call", to=("LIZ", "Nobody", "Bailey"))
    assert ack3.results == (
        RecipientResult(name="LIZ", outcome=Outcome.DELIVERED),
        RecipientResult(name="Nobody", outcome=Outcome.UNKNOWN_USER),
        RecipientResult(name="Bailey", outcome=Outcome.DELIVERED),
    )
    assert (ack3.delivered, ack3.lossy) == (2, 0)
    for who in (liz, bailey):
        got = await who.next()
        assert isinstance(got, DELIVER)
        assert (got.server_msg_id, got.flags, got.sender) == (ack3.server_msg_id, DeliverFlags.DIRECTED, "Bailey")
    await assert_quiet(liz, steve, bailey)

    # LIST: every user online, the asker included (R8.3).
    steve.send(LIST())
    assert await steve.next() == USERS(flags=ListFlags(0), online=("Liz", "Steve", "Bailey"))

    # Quits are announced once, with reason QUIT (R8.2, R10.2).
    assert await bailey.quit() == BYE(reason=ByeReason.QUIT)
    for other in (liz, steve):
        assert await other.next() == LEFT(reason=LeftReason.QUIT, name="Bailey")
    assert await steve.quit() == BYE(reason=ByeReason.QUIT)
    assert await liz.next() == LEFT(reason=LeftReason.QUIT, name="Steve")
    await assert_quiet(liz, duration=0.3)  # exactly once: not again when the socket closes
    liz.send(LIST())
    assert await liz.next() == USERS(flags=ListFlags(0), online=("Liz",))
    ack4 = await liz.say("anyone?")
    assert (ack4.delivered, ack4.results) == (0, ())


async def test_hello_ok_announces_the_configured_limits(chat: Chat) -> None:
    limits = Limits(max_frame=4096, max_text=500, idle_timeout_s=30, max_recipients=4, login_attempts=5)
    await chat.start(limits=limits)
    client = await chat.open()
    await client.hello(versions=(9, 1, 3))  # the highest common version is chosen (R5.2)
    ok = client.hello_ok
    assert ok.version == 1 and ok.encoding == "utf-8" and ok.software.startswith("dfachat/")
    assert (ok.max_frame, ok.max_text, ok.idle_timeout_s, ok.max_recipients, ok.login_attempts) == (
        4096, 500, 30, 4, 5
    )


@pytest.mark.parametrize(
    ("hello", "code", "rule"),
    [
        (HELLO(versions=(3, 4), encoding="utf-8", software="future"), ErrorCode.UNSUPPORTED_VERSION, "R5.2"),
        (HELLO(versions=(1,), encoding="ebcdic", software="mainframe"), ErrorCode.UNSUPPORTED_ENCODING, "R5.3"),
        (HELLO(versions=(1,), encoding="utf16", software="misspelt"), ErrorCode.UNSUPPORTED_ENCODING, "R5.3"),
    ],
    ids=["version", "encoding", "misspelt-encoding"],
)
async def test_handshake_refusals_are_fatal(chat: Chat, hello, code, rule) -> None:
    await chat.start()
    client = await chat.open()
    client.send_raw(encode(hello))  # raw: our own engine would refuse to adopt the encoding
    await client.expect_error(code, fatal=True, rule=rule, regarding=HELLO.TYPE)
    await client.wait_closed()


async def test_auth_ok_and_list_are_paged(chat: Chat) -> None:
    """With two names per frame, AUTH_OK has MORE and USERS carries the rest (R4.9, R6.5, R8.3)."""
    await chat.start(limits=Limits(max_names_per_frame=2))
    liz = await chat.login("Liz")
    steve = await chat.login("Steve")
    bailey = await chat.login("Bailey")
    assert bailey.auth_ok.flags == ListFlags.MORE and bailey.auth_ok.online == ("Liz", "Steve")
    assert bailey.online == ("Liz", "Steve", "Bailey")
    await liz.expect(JOINED, name="Steve")
    await liz.expect(JOINED, name="Bailey")
    await steve.expect(JOINED, name="Bailey")
    liz.send(LIST())
    assert await liz.next() == USERS(flags=ListFlags.MORE, online=("Liz", "Steve"))
    assert await liz.next() == USERS(flags=ListFlags(0), online=("Bailey",))
    assert liz.session.state == "ESTABLISHED"
    await assert_quiet(liz, steve, bailey)


async def test_quit_before_login_is_not_announced(chat: Chat) -> None:
    await chat.start()
    liz = await chat.login("Liz")
    stranger = await chat.greeted("stranger")
    assert await stranger.quit() == BYE(reason=ByeReason.QUIT)
    await assert_quiet(liz)


async def test_ping_is_answered_with_its_nonce(chat: Chat) -> None:
    await chat.start()
    liz = await chat.login("Liz")
    for nonce in (0, 7, 0xFFFFFFFF):
        liz.send(PING(nonce=nonce))
        assert await liz.next() == PONG(nonce=nonce)


@pytest.mark.parametrize("how", ["close", "reset", "mid-frame", "half-close-after-msg"])
async def test_dropped_connection_is_announced_once(chat: Chat, how: str) -> None:
    """A socket closed without QUIT: the others see LEFT (DROPPED) exactly once (R8.2, R10.5)."""
    server = await chat.start()
    liz = await chat.login("Liz")
    steve = await chat.login("Steve")
    await liz.expect(JOINED, name="Steve")
    bailey = await chat.login("Bailey")
    for other in (liz, steve):
        await other.expect(JOINED, name="Bailey")
    if how == "mid-frame":
        frame = encode(bailey.new_msg("cut short"))
        bailey.send_raw(frame[: len(frame) // 2])
        await asyncio.sleep(0.05)
    if how == "half-close-after-msg":  # a last MSG, then EOF: the MSG still counts
        bailey.send(bailey.new_msg("last words"))
        bailey.write_eof()
        for other in (liz, steve):
            got = await other.next()
            assert isinstance(got, DELIVER) and got.text == "last words"
    if how == "reset":
        bailey.abort()
    else:
        bailey.close()
    for other in (liz, steve):
        assert await other.next() == LEFT(reason=LeftReason.DROPPED, name="Bailey")
    await assert_quiet(liz, steve, duration=0.3)
    assert "bailey" not in server.online
    # The others carry on, and the half-sent MSG was never delivered.
    ack = await liz.say("still here")
    assert ack.delivered == 1
    got = await steve.next()
    assert isinstance(got, DELIVER) and got.text == "still here"
    # Bailey can come back.
    await chat.login("Bailey")
    for other in (liz, steve):
        await other.expect(JOINED, name="Bailey")


async def test_frames_after_quit_are_discarded(chat: Chat) -> None:
    """R10.2: the server answers QUIT with BYE and processes nothing sent after it."""
    await chat.start()
    liz = await chat.login("Liz")
    steve = await chat.login("Steve")
    await liz.expect(JOINED, name="Steve")
    late = encode(MSG(msg_id=5, recipients=(), text="after quit"))
    steve.send(QUIT())
    steve.send_raw(late + encode(LIST()))
    assert await steve.next() == BYE(reason=ByeReason.QUIT)
    await steve.wait_closed()
    assert await liz.next() == LEFT(reason=LeftReason.QUIT, name="Steve")
    await assert_quiet(liz, steve, duration=0.2)


async def test_a_client_fatal_error_ends_its_session(chat: Chat) -> None:
    """A client may end with a fatal ERROR (R11.3); the others see LEFT (ERROR) once (R8.2)."""
    await chat.start()
    liz = await chat.login("Liz")
    steve = await chat.login("Steve")
    await liz.expect(JOINED, name="Steve")
    steve.send(make_error(ErrorCode.UNEXPECTED_MESSAGE, "the client gives up", rule="R5.5", fatal=True))
    await steve.wait_closed()
    assert steve.take_all() == []  # a fatal ERROR is not answered
    assert await liz.next() == LEFT(reason=LeftReason.ERROR, name="Steve")
    await assert_quiet(liz, duration=0.2)
