"""Hostile input: every malformed class, while two bystanders chat and see nothing of it.

Each case is sent over a real socket before authentication (always fatal,
R6.7) and after it (fatal for framing errors, R2.8; otherwise a non-fatal
ERROR and the session goes on, R11.3). The offender must get an ERROR with
the right code, rule and ``regarding`` (R11.1); the bystanders, Liz and
Steve, must exchange messages as if nothing happened.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass

import pytest

from dfachat.codec import encode
from dfachat.codec.messages import (  # type: ignore[attr-defined]
    DELIVER,
    ERROR,
    HELLO,
    JOINED,
    LEFT,
    LIST,
    MSG,
    MSG_ACK,
    PASS,
    PING,
    PONG,
    USERS,
    RecipientResult,
)
from dfachat.fsm import make_error
from dfachat.spec import DeliverFlags, ErrorCode, LeftReason, ListFlags, Outcome

from .client import Chat, ChatClient, payload_of, raw_frame


def msg_payload(names: list[bytes] | tuple[bytes, ...] = (), text: bytes = b"", *, msg_id: int = 99,
                count: int | None = None) -> bytes:
    """A MSG payload by hand: msg_id, recipient count and names, text (section 4 layouts)."""
    head = struct.pack(">IB", msg_id, len(names) if count is None else count)
    return head + b"".join(bytes([len(n)]) + n for n in names) + struct.pack(">H", len(text)) + text


def msg_frame(names: list[bytes] | tuple[bytes, ...] = (), text: bytes = b"", **kw: int) -> bytes:
    return raw_frame(MSG.TYPE, msg_payload(names, text, **kw))


def test_hand_built_msg_matches_the_codec() -> None:
    """The helper above builds what the codec builds, so a broken case is broken on purpose."""
    msg = MSG(msg_id=99, recipients=("Liz", "Steve"), text="héllo")
    assert msg_frame([b"Liz", b"Steve"], "héllo".encode()) == encode(msg)
    assert payload_of(encode(msg)) == msg_payload([b"Liz", b"Steve"], "héllo".encode())


@dataclass(frozen=True)
class Case:
    id: str
    data: bytes
    code: ErrorCode
    rule: str  # after authentication (ESTABLISHED)
    regarding: int
    framing: bool = False  # a framing error: fatal everywhere (R2.8)
    rule_before: str | None = None  # before authentication (AWAIT_USER), when it differs
    encoding: str = "utf-8"


L, M = LIST.TYPE, MSG.TYPE
CASES = [
    # Framing errors (R2.1, R2.2, R2.4, R2.5): fatal, no resynchronisation.
    Case("bad-magic", raw_frame(L, b"", magic=b"XX"), ErrorCode.BAD_MAGIC, "R2.1", 0, framing=True),
    Case("bad-version", raw_frame(L, b"", version=2), ErrorCode.UNSUPPORTED_VERSION, "R2.2", L, framing=True),
    # Only the header of an oversized frame is sent: it is refused without waiting for the payload.
    Case("too-large", raw_frame(M, b"", length=1 << 16)[:8], ErrorCode.FRAME_TOO_LARGE, "R2.4", M,
         framing=True),
    Case("huge-length", raw_frame(M, b"", length=0xFFFFFFFF)[:8], ErrorCode.FRAME_TOO_LARGE, "R2.4", M,
         framing=True),
    Case("checksum", raw_frame(L, b"", good_crc=False), ErrorCode.CHECKSUM_MISMATCH, "R2.5", L, framing=True),
    Case("checksum-msg", msg_frame([], b"hi")[:-1] + b"\x00", ErrorCode.CHECKSUM_MISMATCH, "R2.5", M,
         framing=True),
    # Payload errors (R2.3, R2.6, R2.7, sections 3 and 4): the frame is skipped.
    Case("unknown-type", raw_frame(0x20, b""), ErrorCode.UNKNOWN_TYPE, "R2.3", 0x20),
    Case("unknown-type-ff", raw_frame(0xFF, b"abc"), ErrorCode.UNKNOWN_TYPE, "R2.3", 0xFF),
    Case("trailing-bytes", raw_frame(L, b"\x00"), ErrorCode.MALFORMED_PAYLOAD, "R2.7", L),
    Case("trailing-bytes-msg", raw_frame(M, msg_payload([], b"hi") + b"!"), ErrorCode.MALFORMED_PAYLOAD,
         "R2.7", M),
    Case("short-payload", raw_frame(M, b"\x00\x00\x01"), ErrorCode.MALFORMED_PAYLOAD, "R2.6", M),
    # Three recipients promised, one present, and the payload ends.
    Case("count-overrun", raw_frame(M, struct.pack(">IB", 99, 3) + b"\x03Liz"), ErrorCode.MALFORMED_PAYLOAD,
         "R2.6", M),
    Case("text-length-overrun", raw_frame(M, msg_payload([], b"hi")[:-2] + b"h"), ErrorCode.MALFORMED_PAYLOAD,
         "R2.6", M),
    Case("invalid-utf8", msg_frame([], b"caf\xe9"), ErrorCode.INVALID_TEXT, "R3.4", M),
    Case("overlong-utf8", msg_frame([], b"\xc0\xaf"), ErrorCode.INVALID_TEXT, "R3.4", M),
    Case("odd-utf16", msg_frame([], b"\x00a\x00"), ErrorCode.INVALID_TEXT, "R3.4", M, encoding="utf-16"),
    Case("lone-surrogate-utf16", msg_frame([], b"\xd8\x00"), ErrorCode.INVALID_TEXT, "R3.4", M,
         encoding="utf-16"),
    Case("high-bit-ascii", msg_frame([], b"\x80"), ErrorCode.INVALID_TEXT, "R3.4", M, encoding="ascii"),
    Case("bad-recipient-name", msg_frame([b"9lives"], b"hi"), ErrorCode.FIELD_INVALID, "R4.1", M),
    Case("recipient-with-space", msg_frame([b"Li z"], b"hi"), ErrorCode.FIELD_INVALID, "R4.1", M),
    Case("duplicate-recipients", msg_frame([b"Liz", b"LIZ"], b"hi"), ErrorCode.FIELD_INVALID, "R4.3", M),
    Case("too-many-recipients", msg_frame([f"u{i}".encode() for i in range(33)], b"hi"),
         ErrorCode.FIELD_INVALID, "R4.3", M),
    Case("text-too-long", msg_frame([], b"a" * 4097), ErrorCode.FIELD_INVALID, "R4.2", M),
    # Legal frames at the wrong moment (R12.1, R12.3).
    Case("hello-again", encode(HELLO(versions=(1,), encoding="utf-8", software="again")),
         ErrorCode.UNEXPECTED_MESSAGE, "R12.1", HELLO.TYPE, rule_before="R6.1"),
    Case("pass-again", encode(PASS(password="pw1")), ErrorCode.UNEXPECTED_MESSAGE, "R12.1", PASS.TYPE,
         rule_before="R6.1"),
    Case("server-only-message",
         encode(DELIVER(server_msg_id=1, timestamp_ms=0, flags=DeliverFlags(0), sender="Liz", text="fake")),
         ErrorCode.UNEXPECTED_MESSAGE, "R12.3", DELIVER.TYPE),
    Case("non-fatal-error-from-client",
         encode(make_error(ErrorCode.UNKNOWN_TYPE, "meh", fatal=False)),
         ErrorCode.UNEXPECTED_MESSAGE, "R11.3", ERROR.TYPE),
    Case("users-from-client", encode(USERS(flags=ListFlags(0), online=("Liz",))),
         ErrorCode.UNEXPECTED_MESSAGE, "R12.3", USERS.TYPE),
]
PAYLOAD_CASES = [c for c in CASES if not c.framing]
# A valid broadcast that must never be processed after a framing error (no resynchronisation).
SMUGGLED = encode(MSG(msg_id=77, recipients=(), text="smuggled"))


async def bystanders(chat: Chat) -> tuple[ChatClient, ChatClient]:
    liz = await chat.login("Liz")
    steve = await chat.login("Steve")
    await liz.expect(JOINED, name="Steve", only=True)
    return liz, steve


async def bystanders_unaffected(liz: ChatClient, steve: ChatClient, *, offender: str | None = None) -> None:
    """Liz and Steve chat both ways and received nothing but that (and the offender's presence)."""
    ack = await liz.say("still fine?", to=("Steve",))
    assert ack.results == (RecipientResult(name="Steve", outcome=Outcome.DELIVERED),)
    ack = await steve.say("all fine")
    assert ack.delivered == 1 + (offender is not None)
    for client, text in ((steve, "still fine?"), (liz, "all fine")):
        got = await client.expect(DELIVER, text=text)
        assert got.sender in ("Liz", "Steve")
        assert await client.collect(0.05) == []
    for client in (liz, steve):
        delivered = [e for e in client.log if isinstance(e, DELIVER)]
        assert [d.text for d in delivered] == ["still fine?" if client is steve else "all fine"]


def ids(cases: list[Case]) -> list[str]:
    return [c.id for c in cases]


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
async def test_before_login_every_error_is_fatal(chat: Chat, case: Case) -> None:
    await chat.start()
    liz, steve = await bystanders(chat)
    offender = await chat.greeted("offender", encoding=case.encoding)
    offender.send_raw(case.data + SMUGGLED)
    await offender.expect_error(case.code, fatal=True, rule=case.rule_before or case.rule,
                                regarding=case.regarding)
    await offender.wait_closed()
    assert offender.take_all() == []
    await bystanders_unaffected(liz, steve)  # no JOINED, no LEFT, no "smuggled"


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
async def test_after_login(chat: Chat, case: Case) -> None:
    """Framing errors end the session (LEFT ERROR); payload and state errors do not."""
    await chat.start()
    liz, steve = await bystanders(chat)
    bailey = await chat.login("Bailey", encoding=case.encoding)
    for client in (liz, steve):
        await client.expect(JOINED, name="Bailey", only=True)

    if case.framing:
        bailey.send_raw(case.data + SMUGGLED)
        await bailey.expect_error(case.code, fatal=True, rule=case.rule, regarding=case.regarding)
        await bailey.wait_closed()
        assert bailey.take_all() == []
        for client in (liz, steve):
            assert await client.next() == LEFT(reason=LeftReason.ERROR, name="Bailey")
        await bystanders_unaffected(liz, steve)
    else:
        bailey.send_raw(case.data)
        await bailey.expect_error(case.code, fatal=False, rule=case.rule, regarding=case.regarding)
        # The session goes on: a following MSG is acknowledged and delivered.
        ack = await bailey.say("after the error", to=("Bailey",))
        assert ack.results == (RecipientResult(name="Bailey", outcome=Outcome.DELIVERED),)
        got = await bailey.expect(DELIVER, only=True)
        assert (got.text, got.server_msg_id) == ("after the error", ack.server_msg_id)
        await bystanders_unaffected(liz, steve, offender="Bailey")
        await bailey.expect(DELIVER, text="all fine", only=True)
        assert bailey.take_all() == []


async def test_a_burst_of_payload_errors_is_answered_in_order(chat: Chat) -> None:
    """Every bad frame in one write gets its own non-fatal ERROR; the valid frames between them count."""
    await chat.start()
    liz, steve = await bystanders(chat)
    bailey = await chat.login("Bailey")
    for client in (liz, steve):
        await client.expect(JOINED, name="Bailey", only=True)
    cases = [c for c in PAYLOAD_CASES if c.encoding == "utf-8"]
    bailey.send_raw(b"".join(c.data + encode(PING(nonce=i)) for i, c in enumerate(cases)))
    for i, case in enumerate(cases):
        await bailey.expect_error(case.code, fatal=False, rule=case.rule, regarding=case.regarding)
        assert await bailey.next() == PONG(nonce=i)
    bailey.send(LIST())
    assert await bailey.next() == USERS(flags=ListFlags(0), online=("Liz", "Steve", "Bailey"))
    await bystanders_unaffected(liz, steve, offender="Bailey")


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
        b"\x00" * 64,
    ],
    ids=["http", "tls", "zeros"],
)
async def test_not_dfachat_at_all(chat: Chat, data: bytes) -> None:
    """Another protocol's first bytes: a fatal BAD_MAGIC, regarding no frame, then close."""
    await chat.start()
    liz, steve = await bystanders(chat)
    stranger = await chat.open("stranger")
    stranger.send_raw(data)
    await stranger.expect_error(ErrorCode.BAD_MAGIC, fatal=True, rule="R2.1", regarding=0)
    await stranger.wait_closed()
    await bystanders_unaffected(liz, steve)


async def test_a_frame_dripped_byte_by_byte_is_one_frame(chat: Chat) -> None:
    """Splits are invisible: a MSG sent one byte per write is one MSG (R1.1)."""
    await chat.start()
    liz, steve = await bystanders(chat)
    msg = liz.new_msg("drip, drip", ("Steve",))
    data = liz.session.send(msg)
    for byte in data:
        liz.send_raw(bytes([byte]))
        await liz._writer.drain()  # type: ignore[union-attr]
    ack = await liz.expect(MSG_ACK, only=True)
    assert ack.msg_id == msg.msg_id
    got = await steve.expect(DELIVER, only=True)
    assert got.text == "drip, drip"


async def test_bystanders_chat_throughout_every_case(chat: Chat) -> None:
    """Liz and Steve keep messaging while every case hits the server, before and after login."""
    await chat.start()
    liz, steve = await bystanders(chat)
    bailey = await chat.login("Bailey")  # the authenticated offender, for the payload cases
    for client in (liz, steve):
        await client.expect(JOINED, name="Bailey", only=True)
    stop = asyncio.Event()

    async def talk() -> int:
        rounds = 0
        while not stop.is_set():
            for sender, to in ((liz, "Steve"), (steve, "Liz")):
                ack = await sender.say(f"{sender.label} {rounds}", to=(to,))
                assert ack.results == (RecipientResult(name=to, outcome=Outcome.DELIVERED),)
            rounds += 1
            await asyncio.sleep(0.002)
        return rounds

    talking = asyncio.create_task(talk())
    for case in CASES:
        offender = await chat.greeted(f"offender-{case.id}", encoding=case.encoding)
        offender.send_raw(case.data + SMUGGLED)
        await offender.expect_error(case.code, fatal=True, rule=case.rule_before or case.rule)
        await offender.wait_closed()
        if not case.framing and case.encoding == "utf-8":
            bailey.send_raw(case.data)
            await bailey.expect_error(case.code, fatal=False, rule=case.rule)
    stop.set()
    rounds = await talking
    assert rounds > 0
    for client, other in ((liz, "Steve"), (steve, "Liz")):
        texts = [e.text for e in client.take_all() if isinstance(e, DELIVER)]
        assert texts == [f"{other} {i}" for i in range(rounds)]
        assert [type(e).__name__ for e in client.log if not isinstance(e, DELIVER)] == (
            ["HELLO_OK", "AUTH_OK"] + ["JOINED"] * (2 if client is liz else 1) + ["MSG_ACK"] * rounds
        )
    assert bailey.take_all() == []
