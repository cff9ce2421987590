"""Every role x state x message type x direction, through real sessions and real bytes.

Legal moves are the table's (:func:`dfachat.fsm.resolve`); what an illegal
one must produce is derived here from the spec's declarations
(``TRANSITIONS``, ``STATES``), not from the engine: the rule cited, whether
the violation is fatal, the ERROR reply, the unchanged state.
"""

from __future__ import annotations

from typing import Any

import pytest

from dfachat.codec import decode_frame, encode
from dfachat.codec.messages import ERROR, Message
from dfachat.errors import LocalProtocolError, TruncatedFrame, UnexpectedMessage
from dfachat.fsm import ConnectionClosed, ProtocolViolation, Session, resolve
from dfachat.spec import ACTIONS, ROLES, STATES, TRANSITIONS, ErrorCode, ErrorFlags

from .samples import OFFER, SAMPLES, TYPE_NAMES, make_session

ENCODING = OFFER.encoding  # every forced-state session speaks it: TEXT fields must be decoded in it
SPECS = {role: {s.name: s for s in STATES[role]} for role in ROLES}


# --- expectations, from the declarations ------------------------------------------
def _sources(t: dict[str, Any]) -> list[str]:
    return t["source"] if isinstance(t["source"], list) else [t["source"]]


def declared_rows(role: str, state: str, trigger: str) -> list[dict[str, Any]]:
    return [t for t in TRANSITIONS[role] if t["trigger"] == trigger and state in _sources(t)]


def received_types(role: str) -> set[str]:
    return {
        t["trigger"][len("recv_") :] for t in TRANSITIONS[role] if t["trigger"].startswith("recv_")
    }


def expected_rule(role: str, state: str, type_name: str) -> str:
    rows = declared_rows(role, state, f"recv_{type_name}")
    if rows:
        return rows[0]["rule"]  # guards failed: the first row's rule
    if type_name not in received_types(role):
        return "R12.3"
    return SPECS[role][state].rule


def expected_fatal(role: str, state: str) -> bool:
    # R6.7: before authentication everything is fatal; R11.3: the server survives only where it
    # recovers (ESTABLISHED); a client never survives one
    return role == "client" or not SPECS[role][state].recovers


def check_actions(
    session: Session, before: dict[str, Any], actions: tuple[str, ...], message: Message
) -> None:
    checks = {
        "offer": lambda: (
            session.offered_versions == tuple(message.versions)
            and session.encoding == message.encoding
        ),
        "adopt_encoding": lambda: (
            session.version == message.version and session.encoding == message.encoding
        ),
        "authenticate": lambda: session.user == message.name,
        "count_failure": lambda: session.failed_logins == before["failed_logins"] + 1,
    }
    assert set(checks) == set(ACTIONS), "a new spec action needs a check here"
    for action in actions:
        assert checks[action](), f"action {action} had no effect"
    if "count_failure" not in actions:
        assert session.failed_logins == before["failed_logins"]
    if "authenticate" not in actions:
        assert session.user == before["user"]


def _snapshot(session: Session) -> dict[str, Any]:
    return {
        "failed_logins": session.failed_logins,
        "user": session.user,
        "encoding": session.encoding,
    }


CASES = [
    pytest.param(role, state.name, name, id=f"{role}-{state.name}-{name}")
    for role in ROLES
    for state in STATES[role]
    for name in TYPE_NAMES
]


@pytest.mark.parametrize(("role", "state", "type_name"), CASES)
def test_receive(role: str, state: str, type_name: str) -> None:
    for message in SAMPLES[type_name]:
        session = make_session(role, state)
        before = _snapshot(session)
        frame = encode(message, session.encoding)
        where = f"{role} {state} receives {message!r}"

        if SPECS[role][state].discards_input:
            assert session.receive_data(frame) == [], where
            assert session.state == state
            continue

        branch = resolve(role, state, f"recv_{type_name}", message, session)
        events = session.receive_data(frame)
        if branch is not None:
            assert events == [message], where
            assert type(events[0]) is type(message)
            assert session.state == (branch.dest or state), where
            check_actions(session, before, branch.actions, message)
            assert session.must_close == (session.state == "CLOSED")
            continue

        assert len(events) == 1, where
        (violation,) = events
        assert isinstance(violation, ProtocolViolation), where
        rule, fatal = expected_rule(role, state, type_name), expected_fatal(role, state)
        assert isinstance(violation.error, UnexpectedMessage), where
        assert violation.rule == rule, where
        assert violation.error.state == state
        assert violation.error.message_type == type_name
        assert violation.state == state
        assert violation.message_type == type_name
        assert violation.fatal is fatal, where
        reply = violation.reply
        assert type(reply) is ERROR
        assert reply.code == ErrorCode.UNEXPECTED_MESSAGE
        assert reply.regarding == message.TYPE
        assert reply.rule == rule
        assert bool(reply.flags & ErrorFlags.FATAL) is fatal
        assert session.state == state, where  # a violation moves nothing
        assert _snapshot(session) == before
        assert session.must_close is fatal
        encode(reply)  # the reply is sendable as it is
        if fatal:
            # reading has stopped: a further legal frame is ignored
            assert session.receive_data(frame) == []
            assert session.state == state
            session.send(reply)
            assert session.state == "CLOSED" and session.closed
        else:
            (again,) = session.receive_data(frame)  # the session went on reading
            assert isinstance(again, ProtocolViolation) and again.reply == reply
            data = session.send(reply)
            assert decode_frame(data, ENCODING) == reply
            assert session.state == state
            assert not session.must_close


@pytest.mark.parametrize(("role", "state", "type_name"), CASES)
def test_send(role: str, state: str, type_name: str) -> None:
    for message in SAMPLES[type_name]:
        session = make_session(role, state)
        before = _snapshot(session)
        where = f"{role} {state} sends {message!r}"
        branch = resolve(role, state, f"send_{type_name}", message, session)
        if branch is not None:
            data = session.send(message)
            assert decode_frame(data, before["encoding"]) == message, where
            assert session.state == (branch.dest or state), where
            check_actions(session, before, branch.actions, message)
            continue
        rows = declared_rows(role, state, f"send_{type_name}")
        with pytest.raises(LocalProtocolError) as info:
            session.send(message)
        err = info.value
        assert err.state == state, where
        assert err.message_type == type_name, where
        assert err.rule == (rows[0]["rule"] if rows else "R12.2"), where
        assert state in str(err) and type_name in str(err)
        assert session.state == state
        assert _snapshot(session) == before


STATE_CASES = [
    pytest.param(role, s.name, id=f"{role}-{s.name}") for role in ROLES for s in STATES[role]
]
READING = [p for p in STATE_CASES if not SPECS[p.values[0]][p.values[1]].discards_input]
DISCARDING = [p for p in STATE_CASES if SPECS[p.values[0]][p.values[1]].discards_input]


@pytest.mark.parametrize(("role", "state"), STATE_CASES)
def test_peer_closes(role: str, state: str) -> None:
    session = make_session(role, state)
    events = session.receive_data(b"")
    # clean when the session expected nothing more from the peer: no receive rows in its state
    expects_more = any(
        t["trigger"].startswith("recv_") and state in _sources(t) for t in TRANSITIONS[role]
    )
    assert events == [ConnectionClosed(clean=not expects_more, error=None)]
    assert session.state == "CLOSED" and session.closed and session.must_close
    assert session.receive_data(b"") == []  # reported once
    assert session.receive_data(encode(SAMPLES["PING"][0])) == []


def _sources(transition: dict[str, Any]) -> list[str]:
    source = transition["source"]
    return source if isinstance(source, list) else [source]


@pytest.mark.parametrize(("role", "state"), STATE_CASES)
def test_peer_closes_inside_a_frame(role: str, state: str) -> None:
    session = make_session(role, state)
    frame = encode(SAMPLES["PING"][0], ENCODING)
    for cut in (1, len(frame) // 2, len(frame) - 1):
        session = make_session(role, state)
        assert session.receive_data(frame[:cut]) == []
        (event,) = session.receive_data(b"")
        assert isinstance(event, ConnectionClosed)
        if SPECS[role][state].discards_input:  # the partial frame was dropped, not truncated
            assert event == ConnectionClosed(clean=True, error=None)
        else:
            assert not event.clean
            assert isinstance(event.error, TruncatedFrame)
            assert event.error.rule == "R2.9"
        assert session.state == "CLOSED"


@pytest.mark.parametrize(("role", "state"), DISCARDING)
def test_discarding_states_drop_everything(role: str, state: str) -> None:
    session = make_session(role, state)
    everything = b"".join(encode(m, ENCODING) for name in TYPE_NAMES for m in SAMPLES[name])
    assert session.receive_data(everything) == []
    assert session.receive_data(b"garbage that is not a frame" * 10) == []
    assert session.receive_data(everything[:7]) == []
    assert session.state == state
    (event,) = session.receive_data(b"")
    assert event == ConnectionClosed(clean=True, error=None)  # nothing partial is kept


def _legal_frame(role: str, state: str) -> bytes | None:
    """A frame some row lets ``role`` receive in ``state``, if any."""
    for name in TYPE_NAMES:
        for message in SAMPLES[name]:
            if resolve(role, state, f"recv_{name}", message, make_session(role, state)) is not None:
                return encode(message, ENCODING)
    return None


@pytest.mark.parametrize(("role", "state"), READING)
def test_fatal_framing_error_stops_reading(role: str, state: str) -> None:
    session = make_session(role, state)
    good = _legal_frame(role, state)
    bad_magic = b"XX" + encode(SAMPLES["PING"][0])[2:]
    events = session.receive_data(bad_magic + (good or b""))
    assert len(events) == 1
    (violation,) = events
    assert isinstance(violation, ProtocolViolation) and violation.fatal
    assert violation.rule == "R2.1"
    assert violation.reply.code == ErrorCode.BAD_MAGIC
    assert violation.reply.regarding == 0  # no header was read (R11.1)
    assert violation.reply.flags & ErrorFlags.FATAL
    assert session.state == state and session.must_close and not session.closed
    if good is not None:
        assert session.receive_data(good) == []
    assert session.state == state
    session.send(violation.reply)
    assert session.state == "CLOSED"


@pytest.mark.parametrize(("role", "state"), READING)
def test_corrupt_checksum_is_fatal(role: str, state: str) -> None:
    session = make_session(role, state)
    frame = bytearray(encode(SAMPLES["PING"][0], ENCODING))
    frame[-1] ^= 0xFF
    (violation,) = session.receive_data(bytes(frame) + encode(SAMPLES["PING"][0], ENCODING))
    assert isinstance(violation, ProtocolViolation) and violation.fatal and violation.rule == "R2.5"
    assert violation.reply.regarding == SAMPLES["PING"][0].TYPE
    assert session.must_close and session.state == state
    session.send(violation.reply)
    assert session.state == "CLOSED"


def _unknown_type_frame() -> bytes:
    frame = bytearray(encode(SAMPLES["LIST"][0]))
    frame[3] = 0x3E  # a type code the spec does not define
    import zlib

    frame[-4:] = zlib.crc32(bytes(frame[:-4])).to_bytes(4, "big")
    return bytes(frame)


@pytest.mark.parametrize(("role", "state"), READING)
def test_payload_error_fatal_only_where_the_spec_says(role: str, state: str) -> None:
    """An undefined type is a payload error: fatal before AUTH_OK and at a client, else skipped."""
    session = make_session(role, state)
    (violation,) = session.receive_data(_unknown_type_frame())
    assert isinstance(violation, ProtocolViolation)
    assert violation.rule == "R2.3"
    assert violation.message_type is None
    assert violation.reply.regarding == 0x3E
    assert violation.fatal is expected_fatal(role, state)
    assert bool(violation.reply.flags & ErrorFlags.FATAL) is violation.fatal
    assert session.state == state and session.must_close is violation.fatal
    good = _legal_frame(role, state)
    if good is not None:
        after = session.receive_data(good)
        assert (after == []) is violation.fatal


def test_events_one_at_a_time_match_receive_data() -> None:
    """feed + next_event gives the same events as receive_data, one per frame."""
    push_error = next(m for m in SAMPLES["ERROR"] if not m.flags and not m.regarding)
    frames = [SAMPLES["PING"][0], SAMPLES["DELIVER"][0], push_error, SAMPLES["MSG_ACK"][0]]
    data = b"".join(encode(m, ENCODING) for m in frames)
    a, b = make_session("client", "AWAIT_ACK"), make_session("client", "AWAIT_ACK")
    together = a.receive_data(data)
    b.feed(data)
    one_by_one = []
    while (event := b.next_event()) is not None:
        one_by_one.append(event)
        assert b.state == ("ESTABLISHED" if event == frames[-1] else "AWAIT_ACK")
    assert together == one_by_one == frames
    assert a.state == b.state == "ESTABLISHED"


def test_close_is_final() -> None:
    for role in ROLES:
        for spec in STATES[role]:
            session = make_session(role, spec.name)
            session.close()
            assert session.state == "CLOSED" and session.closed
            assert session.receive_data(encode(SAMPLES["PING"][0], ENCODING)) == []
            assert session.receive_data(b"") == []
