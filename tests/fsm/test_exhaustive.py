"""Every version x role x state x message type x direction, through real sessions and real bytes.

Legal moves are the table's (:func:`dfachat.fsm.resolve`); what an illegal
one must produce is derived here from the spec's declarations
(``transitions_of``, ``STATES``), not from the engine: the rule cited, whether
the violation is fatal, the ERROR reply, the unchanged state. Each case runs
in every session context its guards need (:data:`.samples.CONTEXTS`: MSGs
outstanding, DELIVERs unacknowledged). A session speaks version 1 until the
handshake is done and its version after it (R5.2), so the version-2 cases
before HELLO_OK are version-1 behaviour; a type the frame's version lacks
(DELIVER_ACK in version 1) is a payload error, UNKNOWN_TYPE (R2.3).
"""

from __future__ import annotations

import zlib
from typing import Any

import pytest

from dfachat.codec import decode_frame, encode
from dfachat.codec.messages import ERROR, Message
from dfachat.errors import (
    FrameError,
    LocalProtocolError,
    TruncatedFrame,
    UnexpectedMessage,
    UnknownMessageType,
)
from dfachat.fsm import ConnectionClosed, ProtocolViolation, Session, resolve
from dfachat.spec import (
    ACTIONS,
    HEADER,
    ROLES,
    STATES,
    SUPPORTED_VERSIONS,
    ErrorCode,
    ErrorFlags,
    transitions_of,
)

from .samples import (
    CONTEXTS,
    OFFER,
    SAMPLES,
    TYPE_NAMES,
    accepted_versions,
    frame_for,
    frame_version,
    make_session,
)

ENCODING = OFFER.encoding  # every forced-state session speaks it: TEXT fields must be decoded in it
SPECS = {role: {s.name: s for s in STATES[role]} for role in ROLES}


# --- expectations, from the declarations ------------------------------------------
def _sources(t: dict[str, Any]) -> list[str]:
    return t["source"] if isinstance(t["source"], list) else [t["source"]]


def declared_rows(role: str, state: str, trigger: str, version: int) -> list[dict[str, Any]]:
    return [t for t in transitions_of(role, version) if t["trigger"] == trigger and state in _sources(t)]


def received_types(role: str, version: int) -> set[str]:
    return {
        t["trigger"][len("recv_") :] for t in transitions_of(role, version) if t["trigger"].startswith("recv_")
    }


def expected_rule(role: str, state: str, type_name: str, version: int) -> str:
    rows = declared_rows(role, state, f"recv_{type_name}", version)
    if rows:
        return refused_rule(rows[0])  # guards failed: the rule the first row's refusal breaks
    if type_name not in received_types(role, version):
        return "R12.3"
    return SPECS[role][state].rule


def refused_rule(row: dict[str, Any]) -> str:
    """The rule a refusal of ``row``'s guards breaks: its own ``refused`` rule (a DELIVER beyond
    the window breaks R7.12), else the rule of the row."""
    return row["refused"] or row["rule"]


def expected_fatal(role: str, state: str) -> bool:
    # R6.7: before authentication everything is fatal; R11.3: the server survives only where it
    # recovers (ESTABLISHED); a client never survives one
    return role == "client" or not SPECS[role][state].recovers


def table_version(session: Session) -> int:
    """The version whose table a session runs: version 1's until HELLO_OK (R5.2)."""
    return session.version or 1


def check_actions(session: Session, before: Any, actions: tuple[str, ...], message: Message) -> None:
    """Each action the branch names had its effect, and nothing else changed what it keeps."""
    after = session.snapshot()
    changed: set[str] = set()

    def unacknowledged_after_ack() -> tuple[int, ...]:
        ids = before.unacknowledged
        return ids[ids.index(message.server_msg_id) + 1 :]

    checks = {
        "offer": lambda: (
            after.offered_versions == tuple(message.versions) and after.encoding == message.encoding
        ),
        "adopt_encoding": lambda: (
            after.version == message.version
            and after.encoding == message.encoding
            # version 2's windows are HELLO_OK's (R7.12, R7.16); version 1 keeps one MSG, no window
            and (after.msg_window, after.deliver_window)
            == ((message.msg_window, message.deliver_window) if message.version >= 2 else (1, 0))
        ),
        "authenticate": lambda: after.user == message.name,
        "count_failure": lambda: after.failed_logins == before.failed_logins + 1,
        "count_msg": lambda: after.outstanding == before.outstanding + 1,
        "count_answer": lambda: after.outstanding == before.outstanding - 1,
        "count_deliver": lambda: after.unacknowledged
        == (before.unacknowledged + (message.server_msg_id,) if (before.version or 1) >= 2 else before.unacknowledged),
        "acknowledge": lambda: after.unacknowledged == unacknowledged_after_ack(),
    }
    touches = {
        "offer": {"offered_versions", "encoding"},
        "adopt_encoding": {"version", "encoding", "msg_window", "deliver_window"},
        "authenticate": {"user"},
        "count_failure": {"failed_logins"},
        "count_msg": {"outstanding"},
        "count_answer": {"outstanding"},
        "count_deliver": {"unacknowledged"},
        "acknowledge": {"unacknowledged"},
    }
    assert set(checks) == set(touches) == set(ACTIONS), "a new spec action needs a check here"
    for action in actions:
        assert checks[action](), f"action {action} had no effect: {before} -> {after}"
        changed |= touches[action]
    for field in before._fields:
        if field not in changed and field not in ("state", "stopped"):
            assert getattr(after, field) == getattr(before, field), f"{field} changed: {before} -> {after}"


CASES = [
    pytest.param(version, role, state.name, name, id=f"v{version}-{role}-{state.name}-{name}")
    for version in SUPPORTED_VERSIONS
    for role in ROLES
    for state in STATES[role]
    for name in TYPE_NAMES
]


def _sessions(version: int, role: str, state: str, type_name: str) -> list[tuple[Message, Session]]:
    """(message, fresh session) for every sample of the type in every context its guards need."""
    return [
        (message, make_session(role, state, version, **ctx))
        for message in SAMPLES[type_name]
        for ctx in CONTEXTS[(type_name, version)]
    ]


@pytest.mark.parametrize(("version", "role", "state", "type_name"), CASES)
def test_receive(version: int, role: str, state: str, type_name: str) -> None:
    for message, session in _sessions(version, role, state, type_name):
        before = session.snapshot()
        frame = frame_for(message, session)
        where = f"v{version} {role} {state} receives {message!r} ({before})"

        if SPECS[role][state].discards_input:
            assert session.receive_data(frame) == [], where
            assert session.state == state
            continue

        if frame_version(message, session) not in accepted_versions(session):
            # a frame of a version the session does not read: a framing error (R2.2), fatal
            (violation,) = session.receive_data(frame)
            assert isinstance(violation, ProtocolViolation) and violation.fatal, where
            assert violation.rule == "R2.2" and violation.reply.code == ErrorCode.UNSUPPORTED_VERSION, where
            assert violation.reply.regarding == message.TYPE
            assert session.state == state and session.must_close
            continue

        if not message.SPEC.in_version(frame_version(message, session)):
            # a type this frame's version does not define: a payload error (R2.3), not a message
            (violation,) = session.receive_data(frame)
            assert isinstance(violation, ProtocolViolation), where
            assert isinstance(violation.error, UnknownMessageType), where
            assert (violation.rule, violation.message_type) == ("R2.3", None), where
            assert violation.fatal is expected_fatal(role, state), where
            assert violation.reply.code == ErrorCode.UNKNOWN_TYPE
            assert violation.reply.regarding == message.TYPE
            assert session.state == state and session.must_close is violation.fatal
            continue

        branch = resolve(role, state, f"recv_{type_name}", message, session, version=table_version(session))
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
        rule = expected_rule(role, state, type_name, table_version(session))
        fatal = expected_fatal(role, state)
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
        check_actions(session, before, (), message)
        assert session.must_close is fatal
        encode(reply, ENCODING, table_version(session))  # the reply is sendable as it is
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
            assert HEADER.parse(data).version == table_version(session)
            assert session.state == state
            assert not session.must_close


def _refusal(message: Message, session: Session) -> FrameError | None:
    """What the codec says when the frame's version cannot carry ``message`` (a HELLO_OK
    choosing a version there is no codec for), or None."""
    try:
        encode(message, session.encoding, frame_version(message, session, sending=True))
    except FrameError as err:
        return err
    return None


@pytest.mark.parametrize(("version", "role", "state", "type_name"), CASES)
def test_send(version: int, role: str, state: str, type_name: str) -> None:
    for message, session in _sessions(version, role, state, type_name):
        before = session.snapshot()
        where = f"v{version} {role} {state} sends {message!r} ({before})"
        branch = resolve(role, state, f"send_{type_name}", message, session, version=table_version(session))
        refusal = _refusal(message, session) if branch is not None else None
        if branch is not None and refusal is None:
            expected_version = frame_version(message, session, sending=True)
            data = session.send(message)
            assert decode_frame(data, before.encoding) == message, where
            assert HEADER.parse(data).version == expected_version, where  # R2.2, R5.2
            assert session.state == (branch.dest or state), where
            check_actions(session, before, branch.actions, message)
            continue
        rows = declared_rows(role, state, f"send_{type_name}", table_version(session))
        with pytest.raises(LocalProtocolError) as info:
            session.send(message)
        err = info.value
        assert err.state == state, where
        assert err.message_type == type_name, where
        if branch is not None:  # the table allows it, the version's codec cannot carry it
            assert err.rule == refusal.rule, where
        else:
            assert err.rule == (refused_rule(rows[0]) if rows else "R12.2"), where
            assert state in str(err) and type_name in str(err)
        assert session.state == state
        assert session.snapshot() == before


STATE_CASES = [
    pytest.param(version, role, s.name, id=f"v{version}-{role}-{s.name}")
    for version in SUPPORTED_VERSIONS
    for role in ROLES
    for s in STATES[role]
]
READING = [p for p in STATE_CASES if not SPECS[p.values[1]][p.values[2]].discards_input]
DISCARDING = [p for p in STATE_CASES if SPECS[p.values[1]][p.values[2]].discards_input]


@pytest.mark.parametrize(("version", "role", "state"), STATE_CASES)
def test_peer_closes(version: int, role: str, state: str) -> None:
    session = make_session(role, state, version)
    events = session.receive_data(b"")
    # clean when the session expected nothing more from the peer: no receive rows in its state
    expects_more = any(
        t["trigger"].startswith("recv_") and state in _sources(t) for t in transitions_of(role, table_version(session))
    )
    assert events == [ConnectionClosed(clean=not expects_more, error=None)]
    assert session.state == "CLOSED" and session.closed and session.must_close
    assert session.receive_data(b"") == []  # reported once
    assert session.receive_data(encode(SAMPLES["PING"][0])) == []


@pytest.mark.parametrize(("version", "role", "state"), STATE_CASES)
def test_peer_closes_inside_a_frame(version: int, role: str, state: str) -> None:
    frame = frame_for(SAMPLES["PING"][0], make_session(role, state, version))
    for cut in (1, len(frame) // 2, len(frame) - 1):
        session = make_session(role, state, version)
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


@pytest.mark.parametrize(("version", "role", "state"), DISCARDING)
def test_discarding_states_drop_everything(version: int, role: str, state: str) -> None:
    session = make_session(role, state, version)
    everything = b"".join(
        frame_for(m, session) for name in TYPE_NAMES for m in SAMPLES[name]
    )
    assert session.receive_data(everything) == []
    assert session.receive_data(b"garbage that is not a frame" * 10) == []
    assert session.receive_data(everything[:7]) == []
    assert session.state == state
    (event,) = session.receive_data(b"")
    assert event == ConnectionClosed(clean=True, error=None)  # nothing partial is kept


def _legal_frame(version: int, role: str, state: str) -> bytes | None:
    """A frame some row lets ``role`` receive in ``state`` (in its default context), if any."""
    session = make_session(role, state, version)
    for name in TYPE_NAMES:
        for message in SAMPLES[name]:
            version_ = frame_version(message, session)
            if version_ not in accepted_versions(session) or not message.SPEC.in_version(version_):
                continue
            if resolve(role, state, f"recv_{name}", message, session, version=table_version(session)) is not None:
                return frame_for(message, session)
    return None


@pytest.mark.parametrize(("version", "role", "state"), READING)
def test_fatal_framing_error_stops_reading(version: int, role: str, state: str) -> None:
    session = make_session(role, state, version)
    good = _legal_frame(version, role, state)
    bad_magic = b"XX" + frame_for(SAMPLES["PING"][0], session)[2:]
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


@pytest.mark.parametrize(("version", "role", "state"), READING)
def test_corrupt_checksum_is_fatal(version: int, role: str, state: str) -> None:
    session = make_session(role, state, version)
    ping = frame_for(SAMPLES["PING"][0], session)
    frame = bytearray(ping)
    frame[-1] ^= 0xFF
    (violation,) = session.receive_data(bytes(frame) + ping)
    assert isinstance(violation, ProtocolViolation) and violation.fatal and violation.rule == "R2.5"
    assert violation.reply.regarding == SAMPLES["PING"][0].TYPE
    assert session.must_close and session.state == state
    session.send(violation.reply)
    assert session.state == "CLOSED"


@pytest.mark.parametrize(("version", "role", "state"), READING)
def test_a_frame_of_another_version_is_fatal(version: int, role: str, state: str) -> None:
    """Only the version the session speaks is read: version 1 (and the offered versions, for
    HELLO_OK) before the handshake, the session's after it. A PING in any other supported
    version is UNSUPPORTED_VERSION, fatal (R2.2)."""
    for other in sorted(set(SUPPORTED_VERSIONS) - accepted_versions(make_session(role, state, version))):
        session = make_session(role, state, version)
        ping = encode(SAMPLES["PING"][0], ENCODING, other)
        (violation,) = session.receive_data(ping)
        assert isinstance(violation, ProtocolViolation) and violation.fatal, violation
        assert violation.rule == "R2.2" and violation.reply.code == ErrorCode.UNSUPPORTED_VERSION
        assert violation.reply.regarding == SAMPLES["PING"][0].TYPE
        assert session.must_close and session.state == state


def _unknown_type_frame(version: int) -> bytes:
    frame = bytearray(encode(SAMPLES["LIST"][0], "utf-8", version))
    frame[3] = 0x3E  # a type code the spec does not define
    frame[-4:] = zlib.crc32(bytes(frame[:-4])).to_bytes(4, "big")
    return bytes(frame)


@pytest.mark.parametrize(("version", "role", "state"), READING)
def test_payload_error_fatal_only_where_the_spec_says(version: int, role: str, state: str) -> None:
    """An undefined type is a payload error: fatal before AUTH_OK and at a client, else skipped."""
    session = make_session(role, state, version)
    (violation,) = session.receive_data(_unknown_type_frame(table_version(session)))
    assert isinstance(violation, ProtocolViolation)
    assert violation.rule == "R2.3"
    assert violation.message_type is None
    assert violation.reply.regarding == 0x3E
    assert violation.fatal is expected_fatal(role, state)
    assert bool(violation.reply.flags & ErrorFlags.FATAL) is violation.fatal
    assert session.state == state and session.must_close is violation.fatal
    good = _legal_frame(version, role, state)
    if good is not None:
        after = session.receive_data(good)
        assert (after == []) is violation.fatal


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_events_one_at_a_time_match_receive_data(version: int) -> None:
    """feed + next_event gives the same events as receive_data, one per frame."""
    push_error = next(m for m in SAMPLES["ERROR"] if not m.flags and not m.regarding)
    frames = [SAMPLES["PING"][0], SAMPLES["DELIVER"][0], push_error, SAMPLES["MSG_ACK"][0]]
    a, b = make_session("client", "AWAIT_ACK", version), make_session("client", "AWAIT_ACK", version)
    data = b"".join(frame_for(m, a) for m in frames)
    together = a.receive_data(data)
    b.feed(data)
    one_by_one = []
    while (event := b.next_event()) is not None:
        one_by_one.append(event)
        assert b.state == ("ESTABLISHED" if event == frames[-1] else "AWAIT_ACK")
    assert together == one_by_one == frames
    assert a.state == b.state == "ESTABLISHED"
    assert a.snapshot() == b.snapshot()


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_close_is_final(version: int) -> None:
    for role in ROLES:
        for spec in STATES[role]:
            session = make_session(role, spec.name, version)
            session.close()
            assert session.state == "CLOSED" and session.closed
            assert session.receive_data(frame_for(SAMPLES["PING"][0], session)) == []
            assert session.receive_data(b"") == []
