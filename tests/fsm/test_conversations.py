"""Random legal conversations between a real client engine and a real server engine.

At every step one side sends a message its table allows in its state, chosen
uniformly among the (type, branch) rows of ``TABLES[role].send[state]``,
with field values from generic strategies, forced to take that branch's
guards. The peer must accept everything: no ProtocolViolation, ever, and
the two states must agree (:data:`AGREE`).

Two delivery models:

* synchronous -- each frame is delivered as soon as it is sent;
* crossing -- each side has an outbound FIFO and delivering the next frame
  of a queue is a step of its own, so frames cross in flight (pushes and a
  QUIT, a PING and a QUIT, a MSG and the server's BYE ...). The states agree
  whenever nothing is in flight.

What the tables do not express and a conforming peer still guarantees is
stated in :func:`_semantic_fields` (HELLO_OK answers the HELLO it got; a
non-fatal ERROR regarding MSG or LIST only answers a rejected MSG or LIST).
The rejection of a MSG or LIST (R7.9, R8.3) is modelled by a client move
that sends a malformed MSG/LIST frame, which the server must answer.

Plus: random bytes, in random splits, into either role in any state only
ever give events, never an exception.
"""

from __future__ import annotations

import itertools
import zlib
from collections import deque
from collections.abc import Iterator
from typing import Any, ClassVar

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from dfachat.codec import encode
from dfachat.codec.messages import MSG, Message
from dfachat.fsm import (
    TABLES,
    ConnectionClosed,
    ProtocolViolation,
    SessionPair,
    resolve,
)
from dfachat.spec import (
    CLOSED_TRIGGER,
    MAGIC,
    MESSAGES_BY_CODE,
    MESSAGES_BY_NAME,
    PROTOCOL_VERSION,
    ROLES,
    STATES,
    ErrorFlags,
)

from .samples import GUARD_VARIANTS, OFFER, SAMPLES, TYPE_NAMES, all_samples, make_session, strategy

MSG_CODE = MESSAGES_BY_NAME["MSG"].code
LIST_CODE = MESSAGES_BY_NAME["LIST"].code
PEER = {"client": "server", "server": "client"}

# (client state, server state) when nothing is in flight.
AGREE = frozenset(
    {
        ("CONNECTED", "AWAIT_HELLO"),
        ("AWAIT_HELLO_OK", "NEGOTIATING"),
        ("SEND_USER", "AWAIT_USER"),
        ("SEND_PASS", "AWAIT_PASS"),
        ("AWAIT_AUTH", "AUTHENTICATING"),
        ("ESTABLISHED", "ESTABLISHED"),
        ("AWAIT_ACK", "ROUTING"),
        ("AWAIT_USERS", "LISTING"),
        ("AWAIT_BYE", "CLOSING"),
        ("CLOSED", "CLOSED"),
    }
)


def _frame(type_code: int, payload: bytes) -> bytes:
    head = MAGIC + bytes((PROTOCOL_VERSION, type_code)) + len(payload).to_bytes(4, "big")
    return head + payload + zlib.crc32(head + payload).to_bytes(4, "big")


def rejected_frame(message: Message, encoding: str) -> bytes:
    """A well-framed MSG or LIST whose payload the server must reject (R7.9, R8.3)."""
    if isinstance(message, MSG):  # a recipient name outside the NAME alphabet: FIELD_INVALID
        good = encode(message.replace(recipients=("alice",)), encoding)
        payload = good[8:-4].replace(b"alice", b"al!ce", 1)
        return _frame(MSG_CODE, payload)
    return _frame(LIST_CODE, b"\x00")  # LIST has no payload: MALFORMED_PAYLOAD


def _row_guards(branches: tuple[Any, ...]) -> list[str]:
    return sorted({name for branch in branches for name, _, _ in branch.guards})


def _guard_fixes(branches: tuple[Any, ...]) -> list[dict[str, Any]]:
    """Every combination of field values deciding the guards of this row (as the samples do)."""
    groups: dict[frozenset[str], list[dict[str, Any]]] = {}
    for guard in _row_guards(branches):
        for changes, _ in GUARD_VARIANTS[guard]:
            group = groups.setdefault(frozenset(changes), [])
            if changes not in group:
                group.append(changes)
    fixes = []
    for parts in itertools.product(*groups.values()):
        merged: dict[str, Any] = {}
        for part in parts:
            merged.update(part)
        fixes.append(merged)
    return fixes


def sensible(
    role: str, message: Message, hello: Message | None, *, strict_regarding: bool = True
) -> bool:
    """What a conforming sender guarantees beyond its table (the receiver's guards rely on it)."""
    if role == "server" and message.NAME == "HELLO_OK":
        # R5.4: the chosen version is one the client offered, the encoding the one it asked for
        return (
            hello is not None
            and message.version in hello.versions
            and message.encoding == hello.encoding
        )
    if (
        strict_regarding
        and role == "server"
        and message.NAME == "ERROR"
        and not message.flags & ErrorFlags.FATAL
    ):
        # R7.9, R8.3: a non-fatal ERROR regarding MSG/LIST is only ever the answer to a rejected
        # MSG/LIST (the "reject" move below), never a push
        return message.regarding not in (MSG_CODE, LIST_CODE)
    return True


_PUSH_REGARDING = st.sampled_from(
    [0, *(c for c in MESSAGES_BY_CODE if c not in (MSG_CODE, LIST_CODE))]
)


def _semantic_fields(role: str, name: str, hello: Message | None) -> dict[str, Any]:
    if role == "server" and name == "HELLO_OK" and hello is not None:
        return {"version": st.sampled_from(hello.versions), "encoding": hello.encoding}
    if role == "server" and name == "ERROR":
        return {"regarding": _PUSH_REGARDING}
    return {}


# --- the engine-level conversation ----------------------------------------------------
EOF = None


class Conversation(RuleBasedStateMachine):
    """A SessionPair driven by random legal sends; frames delivered at once or queued."""

    crossing: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self.conversations = 0
        self._start()

    def _start(self) -> None:
        """A new conversation (one Hypothesis example runs several, one after another)."""
        self.conversations += 1
        self.pair = SessionPair()
        self.sessions = {"client": self.pair.client, "server": self.pair.server}
        # frames in flight *to* each role: (bytes or EOF, type code of a rejected frame or None)
        self.wire: dict[str, deque[tuple[bytes | None, int | None]]] = {r: deque() for r in ROLES}
        self.hung_up = {r: False for r in ROLES}  # this side closed its transport
        self.dropped = False  # some side closed without QUIT/BYE (R10.5): closes may be unclean
        self.hello: Message | None = None  # the HELLO the server received
        self.log: list[str] = []

    def _finished(self) -> bool:
        return all(s.closed for s in self.sessions.values()) and not any(self.wire.values())

    # -- helpers
    def _where(self) -> str:
        c, s = self.pair.states()
        return f"client {c}, server {s}; conversation:\n  " + "\n  ".join(self.log)

    def _hang_up(self, role: str) -> None:
        if not self.hung_up[role]:
            self.hung_up[role] = True
            self.wire[PEER[role]].append((EOF, None))

    def _transmit(self, role: str, data: bytes, rejected: int | None = None) -> None:
        self.wire[PEER[role]].append((data, rejected))
        if self.sessions[role].closed:
            self._hang_up(role)  # BYE, fatal ERROR, AUTH_FAILED(0) are the sender's last frame
        if not self.crossing:
            self._flush()

    def _flush(self) -> None:
        while any(self.wire.values()):
            for role in ROLES:
                if self.wire[role]:
                    self._deliver(role)

    def _deliver(self, role: str) -> None:
        session = self.sessions[role]
        data, rejected = self.wire[role].popleft()
        before = session.state
        what = "EOF" if data is EOF else MESSAGES_BY_CODE[data[3]].name
        self.log.append(f"{role} <- {what}{' (malformed)' if rejected else ''}  [{before}]")
        session.feed(b"" if data is EOF else data)
        seen = 0
        while (event := session.next_event()) is not None:
            seen += 1
            if isinstance(event, ConnectionClosed):
                assert data is EOF, f"ConnectionClosed without EOF at {role}\n{self._where()}"
                assert event.error is None, f"{event}\n{self._where()}"
                assert event.clean or self.dropped, (
                    f"unclean close at {role} in {before}\n{self._where()}"
                )
            elif isinstance(event, ProtocolViolation):
                assert rejected is not None and role == "server", (
                    f"{role} in {before} rejects a legal frame: {event}\n{self._where()}"
                )
                assert not event.fatal and event.reply.regarding == rejected, (
                    f"{event}\n{self._where()}"
                )
                # the server answers this event before it takes the next (R7.9, R8.3)
                self.log.append(f"server -> {event.reply!r}")
                self.wire["client"].append((session.send(event.reply), None))
            else:
                assert isinstance(event, Message), event
                if role == "server" and event.NAME == "HELLO":
                    self.hello = event
        assert seen <= 1, "one frame, one event"
        if rejected is not None and seen == 0:  # a rejected frame is answered unless discarded
            assert TABLES["server"].states[before].discards_input, self._where()
        if session.closed:
            self._hang_up(role)

    def _sends(self, role: str) -> list[tuple[str, str, str, int]]:
        """Every (kind, role, type, branch) ``role`` may send now; "reject": a malformed MSG/LIST."""
        session = self.sessions[role]
        if self.hung_up[role]:
            return []
        moves = [
            ("send", role, MESSAGES_BY_CODE[code].name, i)
            for code, branches in TABLES[role].send[session.state].items()
            for i in range(len(branches))
        ]
        if role == "client" and session.state == "ESTABLISHED":
            moves += [("reject", "client", "MSG", 0), ("reject", "client", "LIST", 0)]
        return moves

    def _ends(self, move: tuple[Any, ...]) -> bool:
        kind, role, name, index = move
        if kind != "send":
            return False
        state = self.sessions[role].state
        dest = TABLES[role].send[state][MESSAGES_BY_NAME[name].code][index].dest
        return dest is not None and TABLES[role].states[dest].phase == "closing"

    def _message_for(self, data: st.DataObject, role: str, name: str, index: int) -> Message:
        session = self.sessions[role]
        branches = TABLES[role].send[session.state][MESSAGES_BY_NAME[name].code]
        target = branches[index]
        base = data.draw(
            strategy(name, **_semantic_fields(role, name, self.hello)), label=f"{role} {name}"
        )
        candidates = []
        for fix in _guard_fixes(branches):
            message = base.replace(**fix) if fix else base
            if resolve(
                role, session.state, f"send_{name}", message, session
            ) is target and sensible(role, message, self.hello):
                candidates.append(message)
        assert candidates, f"no {name} takes {target} in {session.state}"
        return data.draw(st.sampled_from(candidates), label="guarded")

    # -- the rules
    @rule(data=st.data())
    def step(self, data: st.DataObject) -> None:
        if self._finished():
            self._start()
            return
        if data.draw(st.integers(0, 63), label="drop?") == 0:
            open_sides = [r for r in ROLES if not self.hung_up[r]]
            if open_sides:
                role = data.draw(st.sampled_from(open_sides), label="drops")
                self.log.append(f"{role} closes the connection (R10.5)")
                self.dropped = True
                self.sessions[role].close()
                self._hang_up(role)
                if not self.crossing:
                    self._flush()
                return
        # Now and then (1 in 12) one of the moves that end the session (BYE, QUIT, fatal
        # ERROR, AUTH_FAILED(0)); otherwise first who acts -- a side that sends, or (crossing)
        # the next frame in flight to a side arrives -- then uniformly what it sends among the
        # moves that go on. Uniform over everything ends nearly every conversation in its
        # handshake, where all the server may send is BYE or a fatal ERROR.
        sends = {role: self._sends(role) for role in ROLES}
        ending = [m for role in ROLES for m in sends[role] if self._ends(m)]
        going_on = {role: [m for m in sends[role] if not self._ends(m)] for role in ROLES}
        actors = [("send", role) for role in ROLES if going_on[role]]
        if self.crossing:
            actors += [("deliver", role) for role in ROLES if self.wire[role]]
        if ending and (not actors or data.draw(st.integers(0, 11), label="end?") == 0):
            kind, role, name, index = data.draw(st.sampled_from(ending), label="ending move")
        elif actors:
            kind, role = data.draw(st.sampled_from(actors), label="actor")
            if kind == "deliver":
                self._deliver(role)
                return
            kind, role, name, index = data.draw(st.sampled_from(going_on[role]), label="move")
        else:
            self._flush()
            return
        session = self.sessions[role]
        if kind == "reject":
            message = data.draw(strategy(name), label=f"rejected {name}")
            session.send(message)  # the client's state moves as for a good one
            self.log.append(f"client -> malformed {name}  [ESTABLISHED]")
            self._transmit(
                "client", rejected_frame(message, session.encoding), rejected=message.TYPE
            )
            return
        message = self._message_for(data, role, name, index)
        self.log.append(f"{role} -> {message!r}  [{session.state}]")
        payload = session.send(message)
        self._transmit(role, payload)

    # -- invariants
    @invariant()
    def states_agree(self) -> None:
        if not any(self.wire.values()):
            assert self.pair.states() in AGREE, f"states disagree\n{self._where()}"

    def teardown(self) -> None:
        self._flush()
        c, s = self.pair.states()
        assert (c, s) in AGREE, self._where()
        if "CLOSED" in (c, s):
            assert c == s == "CLOSED", self._where()


class CrossingConversation(Conversation):
    crossing = True


_SETTINGS = settings(
    max_examples=300,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestSynchronousConversation = Conversation.TestCase
TestSynchronousConversation.settings = _SETTINGS
TestCrossingConversation = CrossingConversation.TestCase
TestCrossingConversation.settings = settings(_SETTINGS, max_examples=600)


# --- the synchronous product of the two tables ------------------------------------------
def _product_moves(client: str, server: str) -> Iterator[tuple[str, str, Message, int | None]]:
    """(sender, trigger, message, regarding-of-rejection) a conforming side may send here."""
    for role, state in (("client", client), ("server", server)):
        for code, _ in TABLES[role].send[state].items():
            name = MESSAGES_BY_CODE[code].name
            for message in [OFFER] if name == "HELLO" else SAMPLES[name]:
                yield role, f"send_{name}", message, None
    if client == "ESTABLISHED":
        yield "client", "send_MSG", SAMPLES["MSG"][0], MSG_CODE
        yield "client", "send_LIST", SAMPLES["LIST"][0], LIST_CODE


def explore(*, strict_regarding: bool = True) -> tuple[set[tuple[str, str]], list[str]]:
    """Breadth-first over (client state, server state), frames delivered at once, with the
    table alone (samples as messages). Returns the pairs reached and every violation."""
    client_ctx = make_session("client", "CONNECTED")  # carries OFFER for matches_offer
    start = (TABLES["client"].initial, TABLES["server"].initial)
    seen, todo, problems = {start}, deque([(start, ())]), []
    while todo:
        (client, server), path = todo.popleft()
        for sender, trigger, message, rejection in _product_moves(client, server):
            state = client if sender == "client" else server
            branch = resolve(sender, state, trigger, message, client_ctx)
            if branch is None:
                continue  # the sender may not send this
            if not sensible(sender, message, OFFER, strict_regarding=strict_regarding):
                continue
            states = {"client": client, "server": server}
            states[sender] = branch.dest or state
            receiver = PEER[sender]
            step = f"{sender} {trigger[5:]}{'(rejected)' if rejection else ''} {message!r}"
            if TABLES[receiver].states[states[receiver]].discards_input:
                pass
            elif rejection is not None:  # the server answers with a non-fatal ERROR regarding it
                reply = next(
                    m
                    for m in SAMPLES["ERROR"]
                    if m.regarding == rejection and not m.flags & ErrorFlags.FATAL
                )
                answer = resolve("server", states["server"], "send_ERROR", reply, client_ctx)
                assert answer is not None and answer.dest is None, (states, answer)
                back = resolve("client", states["client"], "recv_ERROR", reply, client_ctx)
                assert back is not None
                states["client"] = back.dest or states["client"]
            else:
                got = resolve(
                    receiver, states[receiver], f"recv_{message.NAME}", message, client_ctx
                )
                if got is None:
                    problems.append(
                        " -> ".join((*path, step))
                        + f": {receiver} in {states[receiver]} rejects it"
                    )
                    continue
                states[receiver] = got.dest or states[receiver]
            for role in ROLES:  # a side that is CLOSED hangs up: the peer sees the transport end
                if states[role] == "CLOSED":
                    other = PEER[role]
                    states[other] = TABLES[other].closed[states[other]].dest or states[other]
            pair = (states["client"], states["server"])
            if pair not in seen:
                seen.add(pair)
                todo.append((pair, (*path, step)))
    return seen, problems


def test_synchronous_product_reaches_exactly_the_agreeing_pairs() -> None:
    reached, problems = explore()
    assert not problems, "\n".join(problems)
    assert reached == AGREE


def test_no_error_regarding_msg_desynchronises_the_pair() -> None:
    """A non-fatal ERROR regarding MSG or LIST means "your MSG/LIST is answered" to the client
    (R7.9, R8.3). Were the server allowed to send one in ROUTING or LISTING, two table-legal
    sends would desynchronise the pair (client MSG, then server ERROR regarding MSG: the
    client is back in ESTABLISHED while the server still owes MSG_ACK). The server's table
    allows non-fatal ERRORs only in ESTABLISHED (R11.3); the product search, with ERRORs of
    every ``regarding``, proves no pair of tables' moves gets out of step."""
    reached, problems = explore(strict_regarding=False)
    assert not problems, "\n".join(problems[:5])


# --- random bytes -----------------------------------------------------------------------
_FRAMES = [encode(m, OFFER.encoding) for m in all_samples()]
_CHUNK = st.one_of(
    st.binary(max_size=40),
    st.sampled_from(_FRAMES),
    st.sampled_from(_FRAMES).flatmap(
        lambda f: st.integers(0, len(f) - 1).map(
            lambda i: f[:i] + bytes((f[i] ^ 0x5A,)) + f[i + 1 :]
        )
    ),
)
_ALL_STATES = [(role, s.name) for role in ROLES for s in STATES[role]]


@settings(max_examples=600, deadline=None)
@given(
    where=st.sampled_from(_ALL_STATES),
    chunks=st.lists(_CHUNK, max_size=12),
    splits=st.lists(st.integers(1, 64), min_size=1, max_size=8),
    one_at_a_time=st.booleans(),
    eof=st.booleans(),
)
def test_random_bytes_only_ever_give_events(
    where: tuple[str, str], chunks: list[bytes], splits: list[int], one_at_a_time: bool, eof: bool
) -> None:
    role, state = where
    session = make_session(role, state)
    stream = b"".join(chunks)
    pieces, pos = [], 0
    for size in itertools.cycle(splits):
        if pos >= len(stream):
            break
        pieces.append(stream[pos : pos + size])
        pos += size
    if eof:
        pieces.append(b"")
    events: list[Any] = []
    for piece in pieces:
        if one_at_a_time:
            session.feed(piece)
            while (event := session.next_event()) is not None:
                events.append(event)
        else:
            events += session.receive_data(piece)
    closes = [e for e in events if isinstance(e, ConnectionClosed)]
    for event in events:
        assert isinstance(event, (Message, ProtocolViolation, ConnectionClosed)), event
    assert len(closes) == (1 if eof else 0)
    if eof:
        assert events[-1] is closes[0] and session.state == "CLOSED"
    fatal_at = next(
        (i for i, e in enumerate(events) if isinstance(e, ProtocolViolation) and e.fatal), None
    )
    if fatal_at is not None:  # nothing is read after a fatal violation
        assert all(isinstance(e, ConnectionClosed) for e in events[fatal_at + 1 :])
        assert session.must_close
    if TABLES[role].states[state].discards_input:
        assert all(isinstance(e, ConnectionClosed) for e in events)


def test_closed_trigger_everywhere() -> None:
    """Every state has a ``closed`` row ending in CLOSED (the model above relies on it)."""
    for role in ROLES:
        for state in TABLES[role].states:
            branch = TABLES[role].closed[state]
            assert (branch.dest or state) == "CLOSED"
            assert branch.trigger == CLOSED_TRIGGER


def test_samples_cover_every_type() -> None:
    assert {m.NAME for m in all_samples()} == set(TYPE_NAMES)
