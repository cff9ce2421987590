"""Fuzz target: the server's sans-IO engine (:class:`dfachat.fsm.ServerSession`) on arbitrary bytes.

The input's bytes are what a client sent, fed in a random split through
``feed``/``next_event`` and ended by the transport closing. A small answerer
plays the server around the engine, from the state table alone: in a state
that owes a frame (a send row that moves the session on) it sends one of the
spec-derived sample messages the table admits there, now and then any other
legal send (PING, DELIVER, BYE ...), and it always sends a violation's own
ERROR reply. The control prefix seeds those choices. Checked on every step:

* ``next_event`` never raises and returns in a bounded number of calls;
* the state is always one of the server's states;
* a message event is legal: the table has a receive row for it in the state
  before, and the state after is that row's destination;
* a violation leaves the state alone, its reply is an ERROR with the error's
  code and rule, FATAL exactly when the error is framing-level or the state
  does not recover (R2.8, R6.7, R11.3); ``send`` of that reply works, and after a
  fatal one the session is CLOSED and emits nothing more but one ConnectionClosed;
* a message the answerer picked because the table admits it sends, to the row's
  destination, and its bytes decode back to it -- or, when one of its values
  cannot be sent (HELLO_OK naming the encoding a client asked for that the
  spec lacks, R3.1), ``send`` raises LocalProtocolError and changes nothing;
* ConnectionClosed comes once, after the end of input, and leaves the session CLOSED.

Run: ``python fuzz/server_session.py -max_total_time=600 fuzz/corpus/server_session``.
"""

from __future__ import annotations

import random
from typing import Any

from _harness import (
    chunked,
    instrument_functions,
    instrumented,
    main,
    repair_checksums,
    split_input,
    with_control,
)

with instrumented(__name__):
    from dfachat.codec import decode_frame, encode
    from dfachat.codec import frames as _frames
    from dfachat.codec.messages import ERROR, HELLO, Message  # type: ignore[attr-defined]
    from dfachat.errors import LocalProtocolError, TruncatedFrame
    from dfachat.fsm import TABLES, ConnectionClosed, ProtocolViolation, ServerSession, resolve
    from dfachat.spec import FRAME_OVERHEAD, MESSAGES, RULES, ErrorFlags

instrument_functions(__name__, _frames.DECODERS.values())

from tests.fsm.samples import SAMPLES, plain  # noqa: E402 - after the instrumented dfachat imports

ROLE = "server"
TABLE = TABLES[ROLE]
CLOSED = next(name for name, spec in TABLE.states.items() if spec.terminal)
# Every message the server may send, in every guard variant: what the answerer picks from.
SENDABLE: tuple[Message, ...] = tuple(
    m for ms in SAMPLES.values() for m in ms if any(m.TYPE in row for row in TABLE.send.values())
)


def _branch(state: str, message: Message, session: ServerSession) -> Any:
    return resolve(ROLE, state, f"send_{message.NAME}", message, session)


def _legal_sends(session: ServerSession) -> list[tuple[Message, Any]]:
    state = session.state
    return [(m, b) for m in SENDABLE if m.TYPE != ERROR.TYPE and (b := _branch(state, m, session)) is not None]


def send_checked(session: ServerSession, message: Message) -> bytes | None:
    """``send`` a message the table admits: the row's destination and bytes that decode back,
    or, when a value is not sendable, LocalProtocolError and nothing changed."""
    before, encoding = session.state, session.encoding
    branch = _branch(before, message, session)
    assert branch is not None, f"{message.NAME} is not sendable in {before}"
    try:
        data = session.send(message)
    except LocalProtocolError as err:
        assert (session.state, session.encoding) == (before, encoding), f"a refused send changed the session: {err}"
        assert err.rule in RULES, err.rule
        return None
    assert session.state == (branch.dest or before), (before, message, session.state)
    assert decode_frame(data, encoding) == message
    return data


def answer(session: ServerSession, rng: random.Random, hello: Message | None) -> None:
    """Play the server: send what the state owes, sometimes anything legal, sometimes nothing."""
    if session.must_close:
        return
    legal = _legal_sends(session)
    owed = [(m, b) for m, b in legal if b.dest not in (None, CLOSED)]
    if not owed and not TABLE.recv[session.state]:
        owed = legal  # a state that receives nothing waits only on us (CLOSING)
    staying = [(m, b) for m, b in legal if b.dest != CLOSED]  # pushes, PING ...
    roll = rng.random()
    pool = owed if owed and roll < 0.9 else staying if roll < 0.95 else legal if roll < 0.96 else []
    if not pool:
        return
    message, _ = pool[rng.randrange(len(pool))]
    if message.NAME == "HELLO_OK" and hello is not None and rng.random() < 0.8:
        # The encoding the client asked for (R5.4), even one the spec lacks: the engine must refuse that.
        message = message.replace(encoding=hello.encoding)
    send_checked(session, message)


def check_violation(session: ServerSession, event: ProtocolViolation, before: str) -> None:
    error = event.error
    assert session.state == before, "a violation moved the state"
    assert event.state == before
    expect_fatal = bool(getattr(error, "fatal", False)) or not TABLE.states[before].recovers
    assert event.fatal == expect_fatal, (event, before)
    assert session.must_close == event.fatal
    reply = event.reply
    assert type(reply) is ERROR
    assert reply.code == error.code and reply.rule == error.rule
    assert bool(reply.flags & ErrorFlags.FATAL) == event.fatal
    encoding = session.encoding
    data = session.send(reply)  # the engine's own reply is always sendable
    assert decode_frame(data, encoding) == reply
    if event.fatal:
        assert session.closed, f"still {session.state} after a fatal ERROR"
    else:
        assert session.state == before


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris and libFuzzer call
    rng, stream = split_input(data)
    stream = repair_checksums(data, stream)
    session = ServerSession()
    states = TABLE.states
    hello: Message | None = None
    ended = closed_reported = False
    fatal_seen = False
    chunks = [*chunked(stream, rng), b""]  # b"": the client closed its end
    for chunk in chunks:
        session.feed(chunk)
        ended = ended or not chunk
        bound = len(chunk) // FRAME_OVERHEAD + len(stream) // FRAME_OVERHEAD + 3
        for _ in range(bound):
            before = session.state
            event = session.next_event()
            assert session.state in states, session.state
            if event is None:
                break
            if fatal_seen or closed_reported:
                assert isinstance(event, ConnectionClosed) and not closed_reported, (
                    f"{event!r} after the session {'closed' if closed_reported else 'failed fatally'}"
                )
            if isinstance(event, Message):
                branch = resolve(ROLE, before, f"recv_{event.NAME}", event, session, version=session.version or 1)
                assert branch is not None, f"{event.NAME} accepted in {before} without a row"
                assert session.state == (branch.dest or before), (before, event.NAME, session.state)
                if type(event) is HELLO:
                    hello = event
                answer(session, rng, hello)
            elif isinstance(event, ProtocolViolation):
                check_violation(session, event, before)
                fatal_seen = fatal_seen or event.fatal
                if not event.fatal:
                    answer(session, rng, hello)
            else:
                assert isinstance(event, ConnectionClosed), event
                assert ended, "ConnectionClosed before the end of input"
                assert event.error is None or isinstance(event.error, TruncatedFrame)
                assert session.state == (TABLE.closed[before].dest or before) == CLOSED
                closed_reported = True
        else:
            raise AssertionError(f"next_event did not settle in {bound} calls (state {session.state})")
    assert closed_reported, "the end of input was never reported"
    # Closed for good: more bytes change nothing.
    session.close()
    session.feed(stream[:64] or b"x")
    assert session.next_event() is None and session.closed


def seeds() -> dict[str, bytes]:
    """Client streams from the spec's sample messages: a whole session, and each client message alone."""
    # version-1 sessions: the seeds' HELLO offers version 1 (version 2's types have no v1 frame)
    client_types = [spec.name for spec in MESSAGES if spec.sent_by_client and spec.in_version(1)]
    found: dict[str, bytes] = {}
    for encoding in ("utf-8", "utf-16", "latin-1"):
        hello = plain("HELLO", encoding=encoding)
        opening = [hello, plain("USER"), plain("PASS")]
        chat = [m for name in client_types if name not in ("HELLO", "USER", "PASS") for m in SAMPLES[name]]
        session = [encode(hello), *(encode(m, encoding) for m in opening[1:] + chat)]
        for control in range(4):
            found[f"session-{encoding}-{control}"] = with_control(b"".join(session), control)
    for name in client_types:
        for i, message in enumerate(SAMPLES[name]):
            found[f"{name}-{i}"] = with_control(encode(message))
    return found


if __name__ == "__main__":
    main("server_session", TestOneInput, seeds)
