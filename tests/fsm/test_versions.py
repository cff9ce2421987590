"""Version 2 through a real client and a real server engine joined in memory, and version 1
negotiated by the same engines.

* The handshake: HELLO travels in a version-1 frame whatever it offers, HELLO_OK in the
  version it chooses (the highest both support) and every later frame in the session's
  version (R2.2, R5.2); HELLO_OK's windows become the session's (R7.12, R7.16).
* The MSG window (R7.16): up to ``msg_window`` MSGs before the answers, answered in order by
  MSG_ACK or a non-fatal ERROR regarding MSG (R7.15); one more is our own side's error at the
  client and UNEXPECTED_MESSAGE at the server.
* The DELIVER window (R7.12): up to ``deliver_window`` unacknowledged DELIVERs; one more is our
  own side's error at the server and a violation of R7.12 at the client. DELIVER_ACK
  acknowledges cumulatively (R7.10); an id that names no unacknowledged DELIVER is
  UNEXPECTED_MESSAGE.
* Version 1, chosen by the same engines: version-1 frames only, one MSG at a time, no DELIVER
  window, and DELIVER_ACK a type the version lacks (UNKNOWN_TYPE, R2.3).

The sessions are the real engines; the "conforming peer" here is this test, which chooses
what a conforming peer would (and, to check the receiving side, sometimes what it would not,
written as raw frames).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dfachat.codec import decode_frame, encode
from dfachat.codec.messages import HELLO, Message
from dfachat.errors import (
    LocalProtocolError,
    UnexpectedMessage,
    UnknownMessageType,
    UnsupportedVersion,
)
from dfachat.fsm import ClientSession, ProtocolViolation, ServerSession, SessionPair
from dfachat.spec import HEADER, MESSAGES_BY_NAME, SUPPORTED_VERSIONS, ErrorCode, ErrorFlags

from .samples import NEWEST, plain, relabel

ENCODING = "utf-16"  # not the default, so that frames decoded in the wrong encoding show
MSG_CODE = MESSAGES_BY_NAME["MSG"].code
V1 = min(SUPPORTED_VERSIONS)


def version_of(frame: bytes) -> int:
    return int(HEADER.parse(frame).version)


def hello_ok(version: int, *, deliver_window: int = 3, msg_window: int = 2) -> Message:
    """A conforming server's HELLO_OK; the windows are fields of version 2 (0 in version 1)."""
    windows = {"deliver_window": deliver_window, "msg_window": msg_window} if version >= 2 else {}
    return plain("HELLO_OK", version=version, encoding=ENCODING, **windows)


def chosen(offer: tuple[int, ...]) -> int:
    """The version a conforming server chooses: the highest both support (R5.2)."""
    return max(v for v in offer if v in SUPPORTED_VERSIONS)


class Wire:
    """A SessionPair whose frames this test sees: each send returns (frame, the peer's events)."""

    def __init__(self) -> None:
        self.pair = SessionPair()
        self.client: ClientSession = self.pair.client
        self.server: ServerSession = self.pair.server
        self.frames: list[tuple[str, bytes]] = []

    def client_sends(self, message: Message) -> list[Any]:
        frame = self.client.send(message)
        self.frames.append(("client", frame))
        return self.server.receive_data(frame)

    def server_sends(self, message: Message) -> list[Any]:
        frame = self.server.send(message)
        self.frames.append(("server", frame))
        return self.client.receive_data(frame)


def established(offer: tuple[int, ...] = tuple(SUPPORTED_VERSIONS), **windows: int) -> Wire:
    """A pair through HELLO (offering ``offer``), HELLO_OK, USER, PASS and AUTH_OK."""
    wire = Wire()
    hello = HELLO(versions=offer, encoding=ENCODING, software="dfachat-tests/1")
    assert wire.client_sends(hello) == [hello]
    reply = hello_ok(chosen(offer), **windows)
    assert wire.server_sends(reply) == [reply]
    for message in (plain("USER"), plain("PASS")):
        assert wire.client_sends(message) == [message]
    assert wire.server_sends(plain("AUTH_OK")) == [plain("AUTH_OK")]
    assert (wire.client.state, wire.server.state) == ("ESTABLISHED", "ESTABLISHED")
    return wire


def counts(wire: Wire) -> tuple[Any, ...]:
    """(client's, server's) MSGs outstanding and DELIVERs unacknowledged."""
    return (
        (wire.client.outstanding, tuple(wire.client.unacknowledged)),
        (wire.server.outstanding, tuple(wire.server.unacknowledged)),
    )


# --- the handshake ---------------------------------------------------------------------------

OFFERS = [
    pytest.param(offer, id="-".join(map(str, offer)))
    for offer in ((1,), (2,), (1, 2), (2, 1), (1, 2, NEWEST + 1), (NEWEST + 1, 2))
]


@pytest.mark.parametrize("offer", OFFERS)
def test_the_handshake_chooses_the_highest_shared_version(offer: tuple[int, ...]) -> None:
    """HELLO is a version-1 frame, HELLO_OK one of the version it chooses, and every frame after
    it, both ways, one of the session's version (R2.2, R5.2). The windows are HELLO_OK's in
    version 2; version 1 has one MSG at a time and no DELIVER window."""
    wire = established(offer, deliver_window=5, msg_window=4)
    version = chosen(offer)
    assert wire.client.version == wire.server.version == version
    sent = [version_of(frame) for _, frame in wire.frames]
    assert sent == [V1] + [version] * (len(sent) - 1)
    for who, frame in wire.frames:  # the frames are the codec's, for that version
        message = decode_frame(frame, ENCODING)
        assert frame == encode(message, ENCODING, version_of(frame)), who
    windows = (4, 5) if version >= 2 else (1, 0)
    for session in (wire.client, wire.server):
        assert (session.msg_window, session.deliver_window) == windows
        assert session.snapshot().version == version


@pytest.mark.parametrize("offer", OFFERS)
def test_after_the_handshake_only_the_sessions_version_is_read(offer: tuple[int, ...]) -> None:
    """A PING in any other supported version, to either side: UNSUPPORTED_VERSION, fatal (R2.2)."""
    for other in (v for v in SUPPORTED_VERSIONS if v != chosen(offer)):
        for side in ("client", "server"):
            wire = established(offer)
            session = getattr(wire, side)
            (violation,) = session.receive_data(encode(plain("PING"), ENCODING, other))
            assert isinstance(violation, ProtocolViolation) and violation.fatal
            assert isinstance(violation.error, UnsupportedVersion) and violation.rule == "R2.2"
            assert violation.reply.code == ErrorCode.UNSUPPORTED_VERSION


def test_a_hello_ok_in_a_version_not_offered_is_refused() -> None:
    """A client that offered only version 1 reads HELLO_OK only in version 1: a server choosing
    2 anyway sends a frame the client refuses (R2.2, R5.5), fatally."""
    wire = Wire()
    wire.client_sends(HELLO(versions=(V1,), encoding=ENCODING, software="x"))
    frame = encode(hello_ok(NEWEST), ENCODING, NEWEST)
    (violation,) = wire.client.receive_data(frame)
    assert isinstance(violation, ProtocolViolation) and violation.fatal and violation.rule == "R2.2"
    assert wire.client.version is None and wire.client.state == "AWAIT_HELLO_OK"


def test_a_server_cannot_choose_a_version_the_spec_lacks() -> None:
    """HELLO_OK travels in the version it chooses (R5.2): there is no frame for one the spec
    lacks, so the engine refuses to send it and the session stays as it was."""
    wire = Wire()
    wire.client_sends(HELLO(versions=(V1, NEWEST + 1), encoding=ENCODING, software="x"))
    before = wire.server.snapshot()
    with pytest.raises(LocalProtocolError):
        wire.server.send(hello_ok(NEWEST + 1))
    assert wire.server.snapshot() == before


@pytest.mark.xfail(strict=True, reason="engine gap: HELLO_OK's frame version is not checked against the "
                   "version it chooses (R5.2)")
@pytest.mark.parametrize(("frame_version", "field"), [(V1, NEWEST), (NEWEST, V1)])
def test_known_gap_hello_ok_in_the_wrong_frame_version(frame_version: int, field: int) -> None:
    """R5.2: HELLO_OK travels in a frame of the version it chooses. A client that offered both
    versions reads frames of both until HELLO_OK, and the engine takes a HELLO_OK choosing one
    version in a frame of the other (choosing 2 in a version-1 frame, its windows then read as
    0). It should be refused: the frame's version is not the one chosen."""
    wire = Wire()
    wire.client_sends(HELLO(versions=tuple(SUPPORTED_VERSIONS), encoding=ENCODING, software="x"))
    frame = encode(hello_ok(field), ENCODING, frame_version)
    (event,) = wire.client.receive_data(frame)
    assert isinstance(event, ProtocolViolation)


# --- the MSG window (R7.16) --------------------------------------------------------------------


@pytest.mark.parametrize("window", [1, 2, 5])
def test_up_to_msg_window_msgs_before_their_answers(window: int) -> None:
    wire = established(msg_window=window)
    for i in range(1, window + 1):
        msg = plain("MSG", msg_id=i)
        assert wire.client_sends(msg) == [msg]
        assert counts(wire) == ((i, ()), (i, ()))
        assert (wire.client.state, wire.server.state) == ("AWAIT_ACK", "ROUTING")
    # one more is our own side's error at the client: nothing sent, nothing changed (R7.16)
    before = wire.client.snapshot()
    with pytest.raises(LocalProtocolError) as info:
        wire.client.send(plain("MSG", msg_id=window + 1))
    assert info.value.rule == "R7.16"
    assert wire.client.snapshot() == before
    # answered in order, each answer ending one wait; the last one ends them all (R7.3, R7.16)
    for i in range(1, window + 1):
        ack = plain("MSG_ACK", msg_id=i, server_msg_id=100 + i)
        assert wire.server_sends(ack) == [ack]
        assert counts(wire) == ((window - i, ()), (window - i, ()))
        done = i == window
        assert (wire.client.state, wire.server.state) == (
            ("ESTABLISHED", "ESTABLISHED") if done else ("AWAIT_ACK", "ROUTING")
        )
    assert {version_of(frame) for _, frame in wire.frames[1:]} == {NEWEST}


def test_an_error_regarding_msg_answers_the_oldest_outstanding_one() -> None:
    """STORE_FAILED (R7.15) answers one MSG of the window, like a MSG_ACK: non-fatal, counted on
    both sides, and the session goes on."""
    wire = established(msg_window=3)
    for i in (1, 2, 3):
        wire.client_sends(plain("MSG", msg_id=i))
    store_failed = plain(
        "ERROR", code=ErrorCode.STORE_FAILED, flags=ErrorFlags(0), regarding=MSG_CODE, rule="R7.15"
    )
    assert wire.server_sends(plain("MSG_ACK", msg_id=1)) == [plain("MSG_ACK", msg_id=1)]
    assert wire.server_sends(store_failed) == [store_failed]
    assert counts(wire) == ((1, ()), (1, ()))
    assert (wire.client.state, wire.server.state) == ("AWAIT_ACK", "ROUTING")
    assert wire.server_sends(store_failed) == [store_failed]
    assert (wire.client.state, wire.server.state) == ("ESTABLISHED", "ESTABLISHED")
    assert counts(wire) == ((0, ()), (0, ()))


def test_a_msg_beyond_the_window_is_unexpected_at_the_server() -> None:
    """A client that ignores the window: the server MAY treat the MSG as UNEXPECTED_MESSAGE
    (R7.16); this engine does, fatally (it owes MSG_ACKs: ROUTING does not recover, R11.3)."""
    wire = established(msg_window=2)
    for i in (1, 2):
        wire.client_sends(plain("MSG", msg_id=i))
    (violation,) = wire.server.receive_data(encode(plain("MSG", msg_id=3), ENCODING, NEWEST))
    assert isinstance(violation, ProtocolViolation) and isinstance(violation.error, UnexpectedMessage)
    assert violation.rule == "R7.16" and violation.fatal
    assert violation.reply.code == ErrorCode.UNEXPECTED_MESSAGE and violation.reply.regarding == MSG_CODE
    assert wire.server.outstanding == 2


# --- the DELIVER window (R7.12) and DELIVER_ACK (R7.10) -------------------------------------


def deliver(server_msg_id: int) -> Message:
    return plain("DELIVER", server_msg_id=server_msg_id)


@pytest.mark.parametrize("window", [1, 3, 8])
def test_up_to_deliver_window_delivers_unacknowledged(window: int) -> None:
    wire = established(deliver_window=window)
    ids = [10 * i for i in range(1, window + 1)]
    for n, i in enumerate(ids, 1):
        assert wire.server_sends(deliver(i)) == [deliver(i)]
        assert counts(wire) == ((0, tuple(ids[:n])), (0, tuple(ids[:n])))
    # one more: the server's engine refuses to send it ...
    before = wire.server.snapshot()
    with pytest.raises(LocalProtocolError) as info:
        wire.server.send(deliver(ids[-1] + 1))
    assert info.value.rule == "R7.12"
    assert wire.server.snapshot() == before
    # ... and a server that sends it anyway breaks R7.12 at the client, fatally (R11.3)
    (violation,) = wire.client.receive_data(encode(deliver(ids[-1] + 1), ENCODING, NEWEST))
    assert isinstance(violation, ProtocolViolation) and isinstance(violation.error, UnexpectedMessage)
    assert violation.rule == "R7.12" and violation.fatal
    assert violation.reply.code == ErrorCode.UNEXPECTED_MESSAGE
    assert tuple(wire.client.unacknowledged) == tuple(ids)


@settings(max_examples=50, deadline=None)
@given(data=st.data(), window=st.integers(1, 6))
def test_deliver_ack_acknowledges_cumulatively(data: Any, window: int) -> None:
    """DELIVER_ACK names a DELIVER not yet acknowledged and acknowledges it and every earlier one
    (R7.10); the window opens by as many (R7.12). Any interleaving of DELIVERs and acks."""
    wire = established(deliver_window=window)
    next_id = 1
    for _ in range(data.draw(st.integers(1, 20), label="steps")):
        unacked = list(wire.client.unacknowledged)
        if len(unacked) < window and (not unacked or data.draw(st.booleans(), label="deliver?")):
            next_id += data.draw(st.integers(1, 3), label="gap")  # increasing, not consecutive
            assert wire.server_sends(deliver(next_id)) == [deliver(next_id)]
            continue
        target = data.draw(st.sampled_from(unacked), label="ack")
        ack = plain("DELIVER_ACK", server_msg_id=target)
        assert wire.client_sends(ack) == [ack]
        left = tuple(unacked[unacked.index(target) + 1 :])
        assert counts(wire) == ((0, left), (0, left))
    assert len(wire.server.unacknowledged) <= window


@pytest.mark.parametrize("which", ["never delivered", "already acknowledged", "zero"])
def test_an_id_not_unacknowledged_is_unexpected(which: str) -> None:
    """DELIVER_ACK naming no DELIVER of this session that is unacknowledged: our own side's error
    at the client (R7.11), UNEXPECTED_MESSAGE at the server (R7.10) -- non-fatal there in
    ESTABLISHED (R11.3), and nothing is acknowledged."""
    wire = established(deliver_window=4)
    for i in (5, 6, 7):
        wire.server_sends(deliver(i))
    wire.client_sends(plain("DELIVER_ACK", server_msg_id=5))
    bad = {"never delivered": 9, "already acknowledged": 5, "zero": 0}[which]
    ack = plain("DELIVER_ACK", server_msg_id=bad)
    before = wire.client.snapshot()
    with pytest.raises(LocalProtocolError) as info:
        wire.client.send(ack)
    assert info.value.rule == "R7.11"
    assert wire.client.snapshot() == before
    (violation,) = wire.server.receive_data(encode(ack, ENCODING, NEWEST))
    assert isinstance(violation, ProtocolViolation) and isinstance(violation.error, UnexpectedMessage)
    assert violation.rule == "R7.10" and not violation.fatal
    assert violation.reply.code == ErrorCode.UNEXPECTED_MESSAGE
    assert violation.reply.regarding == MESSAGES_BY_NAME["DELIVER_ACK"].code
    assert tuple(wire.server.unacknowledged) == (6, 7)


@pytest.mark.parametrize("state", ["AWAIT_ACK", "AWAIT_USERS"])
def test_deliver_ack_while_waiting(state: str) -> None:
    """A client acknowledges while it waits for MSG_ACK or USERS (R7.11); the server takes it in
    ROUTING and LISTING."""
    wire = established(deliver_window=2, msg_window=2)
    wire.server_sends(deliver(1))
    wire.client_sends(plain("MSG") if state == "AWAIT_ACK" else plain("LIST"))
    assert wire.client.state == state
    ack = plain("DELIVER_ACK", server_msg_id=1)
    assert wire.client_sends(ack) == [ack]
    assert counts(wire)[0][1] == counts(wire)[1][1] == ()


# --- version 1, negotiated by the same engines ------------------------------------------------


def test_version_1_has_one_msg_at_a_time() -> None:
    wire = established((V1,))
    wire.client_sends(plain("MSG"))
    with pytest.raises(LocalProtocolError) as info:
        wire.client.send(plain("MSG", msg_id=2))
    assert info.value.rule == "R12.2"  # version 1's table has no row for it (R7.2)
    (violation,) = wire.server.receive_data(encode(plain("MSG", msg_id=2), ENCODING, V1))
    assert isinstance(violation.error, UnexpectedMessage) and violation.fatal
    assert violation.rule == "R7.2"


def test_version_1_has_no_deliver_window() -> None:
    """More DELIVERs than any window, none acknowledged, none counted (R7.12 is version 2's)."""
    wire = established((V1,), deliver_window=1)
    for i in range(1, 2 * 64 + 2):
        assert wire.server_sends(deliver(i)) == [deliver(i)]
    assert counts(wire) == ((0, ()), (0, ()))
    assert all(version_of(frame) == V1 for _, frame in wire.frames)


def test_version_1_has_no_deliver_ack() -> None:
    """DELIVER_ACK is not a type of version 1: the client engine has no row to send it (R12.2),
    and a version-1 frame of that type is UNKNOWN_TYPE at the server (R2.3), skipped there in
    ESTABLISHED (R11.3)."""
    wire = established((V1,))
    wire.server_sends(deliver(1))
    ack = plain("DELIVER_ACK", server_msg_id=1)
    with pytest.raises(LocalProtocolError) as info:
        wire.client.send(ack)
    assert info.value.rule == "R12.2"
    frame = relabel(encode(ack, ENCODING, NEWEST), V1)
    (violation,) = wire.server.receive_data(frame)
    assert isinstance(violation, ProtocolViolation) and isinstance(violation.error, UnknownMessageType)
    assert violation.rule == "R2.3" and not violation.fatal and violation.message_type is None
    assert violation.reply.code == ErrorCode.UNKNOWN_TYPE
    assert violation.reply.regarding == MESSAGES_BY_NAME["DELIVER_ACK"].code
    # the session goes on, in version 1
    assert wire.server_sends(deliver(2)) == [deliver(2)]
    assert wire.server.version == wire.client.version == V1

