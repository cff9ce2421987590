"""The driver and oracle of server mode: act on a live server and judge everything it sends.

:class:`Driver` runs *actions* (open a connection, send messages -- split or
packed --, send a malformed frame, drop, stay silent) one at a time, each to
quiescence, and judges every frame that arrives:

* each connection has a :class:`~dfachat.fsm.ClientSession` (the *judge*):
  a frame the client's table does not allow, or one the codec rejects, is the
  server breaking R12.2 or a rule of section 2-4;
* the *oracle* is the reference server itself: a
  :class:`~dfachat.server.core.ServerCore` over a
  :class:`~dfachat.server.storage.MemoryStore` holding the accounts given
  with ``--account``. Each fuzzer connection is a connection of that core, and
  what the driver sends it is fed too (the bytes, the end of a connection we
  drop, the timeout of one we leave silent). The core decides everything a
  conforming server decides -- which ERROR answers an illegal or malformed
  frame (its connection's :class:`~dfachat.fsm.ServerSession`), the handshake,
  logins and their back-off, who is online, each MSG's recipients, outcomes
  and re-encoded text, what is stored and for whom, presence -- and the
  driver carries out its effects (:class:`~dfachat.server.core.Effects`):
  each frame it sends becomes an *expectation* on that connection, its close
  the CLOSE expectation, a password check is answered from the store at once,
  a back-off elapses at once (the target's own delay is judged against the
  minimum of R6.4). Nothing here restates what the server decides.

An expectation is built from the predicted frame by one translator per
message type, with the check that fails when it does not arrive and the
checks that judge its fields. Fields the target chooses for itself are not
compared with the prediction: server message ids (only that they increase,
R7.3, and that a DELIVER carries its MSG_ACK's, R7.5), timestamps, HELLO_OK's
software and limits (those are held to the spec's bounds, and the core adopts
the ones that decide its answers, R4.11).

Nondeterminism is absorbed, never guessed: expectations on one connection are
matched by kind (their order is checked only where the spec promises one),
and after an action that could push something unwanted, a PING/PONG round
trip on each bystander (R9.1) is the barrier that shows what the server wrote
before. A missing frame fails only after the reply timeout. Where the spec
allows more than one answer -- either error for a HELLO wrong twice, a login
refused by the target's rate bound (R9.5), an idle timeout whenever we were
silent long enough, a session we dropped unobserved that the target may still
think online -- each allowed one passes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import selectors
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from dfachat.codec.messages import (  # type: ignore[attr-defined]
    AUTH_FAILED,
    AUTH_OK,
    BYE,
    DELIVER,
    ERROR,
    HELLO_OK,
    JOINED,
    LEFT,
    MSG,
    MSG_ACK,
    PING,
    PONG,
    USERS,
    Message,
)
from dfachat.conformance.fuzz.verdicts import Chart, ChartEvent, define_check
from dfachat.conformance.fuzz.wire import Target
from dfachat.errors import FrameError, LocalProtocolError, TruncatedFrame
from dfachat.fsm import ClientSession, ConnectionClosed, ProtocolViolation, ServerSession
from dfachat.fsm._table import Branch
from dfachat.server.core import CoreConfig, CoreConnection, ServerCore
from dfachat.server.storage import MemoryStore, StoredMessage, name_key
from dfachat.spec import (
    CLOSED_TRIGGER,
    ENCODINGS,
    LIMITS,
    SUPPORTED_VERSIONS,
    ByeReason,
    DeliverFlags,
    ErrorCode,
    ErrorFlags,
    LeftReason,
    Limits,
    ListFlags,
    Outcome,
)

__all__ = ["Account", "Driver", "Expect", "ServerRows"]

_BACKOFF_SLACK_S = 0.02  # clock granularity when checking the R6.4 minimum delay
# Framing errors (R2.8: no resynchronising): the codec's always-fatal frame errors, except the
# mid-frame end of a connection (R2.9), which nothing answers.
_FRAMING = frozenset(cls.rule for cls in FrameError.__subclasses__() if cls.fatal and cls is not TruncatedFrame)
_REPLIES = frozenset({"HELLO_OK", "AUTH_OK", "AUTH_FAILED", "MSG_ACK", "USERS", "PONG", "BYE", "ERROR"})
_OWED = _REPLIES | {"CLOSE"}  # what the server owes a session in answer to what it sent
_PUSHING = frozenset({"MSG", "PASS", "QUIT", "ERROR"})  # what can make the server write to others
_ANNOUNCED = ("max_text", "idle_timeout_s", "max_recipients", "login_attempts")  # HELLO_OK's limits we adopt (R4.11)
_UNBOUNDED = 1 << 40
# The predicting core's limits: the spec's, except the bounds a target sets for itself and does not
# announce (R1.4, R1.5, R9.3-R9.5): the fuzzer keeps below any sensible ones, and a target that
# refuses a login by its rate bound is tolerated (R9.5), not predicted.
_CORE_LIMITS = dataclasses.replace(
    LIMITS, max_per_address=_UNBOUNDED, max_logins_per_minute=_UNBOUNDED, max_bytes_per_s=_UNBOUNDED,
    max_burst_bytes=_UNBOUNDED, max_output_buffer=_UNBOUNDED,
)
# A HELLO wrong twice: the spec orders neither check first, so either error is right (R5.2, R5.3).
_HELLO_ERRORS: dict[ErrorCode, tuple[str, Callable[[Message], bool]]] = {
    ErrorCode.UNSUPPORTED_VERSION: ("R5.2", lambda hello: not set(hello.versions) & set(SUPPORTED_VERSIONS)),
    ErrorCode.UNSUPPORTED_ENCODING: ("R5.3", lambda hello: hello.encoding not in ENCODINGS),
}


@dataclass(frozen=True, slots=True)
class Account:
    """An account of the target, from ``--account NAME:PASSWORD``."""

    name: str
    password: str

    @property
    def key(self) -> str:
        return name_key(self.name)


class ServerRows:
    """Rows of the server's table the oracle's sessions took: the run's transition coverage, over
    the table of the protocol ``version`` the run's sessions speak."""

    def __init__(self, version: int = 1) -> None:
        self.version = version
        self.taken: set[tuple[str, str, str, int]] = set()

    def take(self, state: str, trigger: str, branches: Iterable[Branch], session: Any, message: Any) -> None:
        for index, branch in enumerate(branches):
            if not branch.guards or branch.admits(session, message):
                self.taken.add(("server", state, trigger, index))
                return

    def report(self) -> dict[str, Any]:
        from dfachat.conformance.checker.explore import coverage_report

        rows = coverage_report(self.taken, self.version)["server"]["rows"]
        label = [f"{r['state']} {r['trigger']}{' ' + r['guards'] if r['guards'] else ''} -> {r['dest']}" for r in rows]
        return {
            "total": len(rows),
            "covered": [text for text, r in zip(label, rows, strict=True) if r["taken"]],
            "missing": [text for text, r in zip(label, rows, strict=True) if not r["taken"]],
        }


class _Session(ServerSession):
    """The core's engine for one fuzzer connection, watched: the rows it takes (coverage), the
    violation it reports last (whose ERROR the core sends), each event it hands the core."""

    __slots__ = ("rows", "observe", "violation", "sent")

    def __init__(self, *, limits: Limits, rows: ServerRows, observe: Callable[[Any], None]) -> None:
        super().__init__(limits=limits)
        self.rows = rows
        self.observe = observe
        self.violation: ProtocolViolation | None = None
        self.sent: Message | None = None  # the frame this engine sent last (a push bypasses it)

    def next_event(self) -> Any:
        event = super().next_event()
        if isinstance(event, ProtocolViolation):
            self.violation = event
        elif event is not None:
            self.observe(event)
        return event

    def receive_message(self, message: Message) -> Any:
        state = self._state
        if not self._stopped and state not in self._discarding:
            self.rows.take(state, f"recv_{message.NAME}", self._recv[state].get(message.TYPE, ()), self, message)
        return super().receive_message(message)

    def send(self, message: Message, *, frame: bytes | None = None) -> bytes:
        state = self._state
        self.rows.take(state, f"send_{message.NAME}", self._table.send[state].get(message.TYPE, ()), self, message)
        data = super().send(message, frame=frame)
        self.sent = message
        return data

    def close(self) -> None:
        self.rows.take(self._state, CLOSED_TRIGGER, (self._table.closed[self._state],), self, None)
        super().close()

    def _connection_closed(self) -> ConnectionClosed:
        self.rows.take(self._state, CLOSED_TRIGGER, (self._table.closed[self._state],), self, None)
        return super()._connection_closed()


class _OracleCore(ServerCore):
    """The reference server's core, whose engines the driver watches (coverage, events)."""

    driver: Any = None

    def new_session(self) -> ServerSession:
        driver = self.driver
        return _Session(limits=self.limits, rows=driver.rows, observe=driver._observe)


class _Effects:
    """The core's effects, carried out by the driver (:class:`~dfachat.server.core.Effects`)."""

    __slots__ = ("driver",)

    def __init__(self, driver: Driver) -> None:
        self.driver = driver

    def send(self, conn: CoreConnection, message: Message, frame: bytes) -> None:
        self.driver._predicted(conn, message)

    def close(self, conn: CoreConnection, abort: bool) -> None:
        self.driver._predicted_close(conn)

    def check_password(self, conn: CoreConnection, name: str, password: str) -> None:
        self.driver._pending.append(lambda: self.driver._check_password(conn, name, password))

    def start_backoff(self, conn: CoreConnection, delay_ms: int) -> None:
        self.driver._pending.append(lambda: self.driver._backoff(conn))

    def log(self, level: int, event: str, text: str, fields: dict[str, Any]) -> None:
        pass


@dataclass(slots=True)
class Expect:
    """A frame (or the close) the oracle says must reach one connection."""

    kind: str  # a message name, or "CLOSE"
    check: str  # the check failed when it never arrives
    what: str  # for people
    key: Any = None  # what matches it among frames of its kind (a name key, a nonce ...)
    verify: Callable[[Message], list[tuple[str, str]]] | None = None  # -> [(check, detail)] on mismatch
    optional: bool = False  # the spec allows it but does not require it
    not_before: float = 0.0  # monotonic time before which it must not arrive (R6.4)
    not_before_check: str = ""
    order: int = 0  # frames of one connection with order > 0 arrive in increasing order
    judges: tuple[str, ...] = ()  # the further checks ``verify`` puts to the test
    done: bool = False


@dataclass(slots=True)
class Conn:
    """One fuzzer connection: the socket, the judge, the core's side of it, what is expected on it."""

    index: int
    sock: socket.socket | None
    judge: ClientSession = field(default_factory=ClientSession)
    core: CoreConnection = None  # type: ignore[assignment]  # the oracle's connection (set on connect)
    label: str = ""
    expects: list[Expect] = field(default_factory=list)
    eof: bool = False  # the target closed it
    dropped: bool = False  # we closed it
    finished: bool = False  # BYE or a fatal ERROR arrived: nothing more may come
    gone: bool = False  # the core knows the connection is gone
    last_sent: float = 0.0
    silent: bool = False  # let time pass: do not answer PINGs
    seen_ids: set[int] = field(default_factory=set)  # server message ids delivered here (R7.6)
    next_order: int = 0
    # What the core's effects on this connection need from the driver:
    absorb: str = ""  # a frame that already arrived: the core sending it now expects nothing more
    last_word: Message | None = None  # the frame that ended the core's session (which close follows)
    paging: bool = False  # the core's AUTH_OK or USERS frame said MORE: USERS pages follow
    login_rule: str = "R6.2"  # the check a wrong login's AUTH_FAILED belongs to
    not_before: float = 0.0  # the back-off under way: its AUTH_FAILED not before (R6.4)
    held: list[StoredMessage] = field(default_factory=list)  # stored for the account at login (R9.5)

    @property
    def open(self) -> bool:
        return self.sock is not None and not self.eof and not self.dropped

    @property
    def authenticated(self) -> bool:
        """The core logged this connection in (whatever happened since)."""
        return self.core is not None and self.core.key is not None

    @property
    def established(self) -> bool:
        return self.open and self.judge.state == "ESTABLISHED" and self.authenticated

    @property
    def server_state(self) -> str:
        """The state of the core's session: what a conforming server is in."""
        return self.core.session.state


# The checks that judge one aspect of a rule, with what each judges (section and level: the rule's).
for _rule, _suffix, _title in (
    ("R3.5", "flag", "DELIVER's LOSSY flag is set exactly when a character was replaced"),
    ("R4.1", "registered-name", "names are reported in the account's registered spelling"),
    ("R5.4", "limits", "HELLO_OK announces limits no larger than the spec's, none zero"),
    ("R6.2", "no-answer", "USER gets no answer"),
    ("R6.2", "unknown-user", "an unknown user gets AUTH_FAILED, as a wrong password does"),
    ("R6.5", "registered-name", "AUTH_OK names the account's registered spelling"),
    ("R6.6", "order", "LEFT REPLACED comes before the new session's JOINED"),
    ("R6.8", "timeout", "a silent session before AUTH_OK gets IDLE_TIMEOUT, not sooner"),
    ("R7.3", "msg-id", "MSG_ACK carries the MSG's msg_id"),
    ("R7.3", "increasing", "server message ids increase"),
    ("R7.4", "outcome", "MSG_ACK has one result per named recipient, in order, with the right outcome"),
    ("R7.4", "counts", "MSG_ACK counts the live deliveries and the lossy ones"),
    ("R7.5", "id", "DELIVER carries the server message id of the MSG_ACK"),
    ("R7.5", "sender", "DELIVER carries the sender's registered name"),
    ("R7.5", "directed", "DELIVER's DIRECTED flag is set exactly for named recipients"),
    ("R7.7", "stored-flag", "DELIVER's STORED flag is set exactly for stored messages"),
    ("R7.7", "order", "stored messages arrive oldest first"),
    ("R7.7", "broadcast-not-stored", "a broadcast is not stored for offline users"),
    ("R8.2", "reason", "LEFT names the user and the reason its session ended"),
    ("R8.2", "order", "presence frames arrive in order"),
    ("R9.2", "timeout", "a silent session gets a fatal IDLE_TIMEOUT, not sooner than announced"),
    ("R9.2", "ping", "the server PINGs a silent session before its timeout (SHOULD)"),
    ("R10.2", "close", "the server closes after BYE"),
    ("R11.1", "code", "ERROR carries the code the broken rule calls for"),
    ("R11.1", "regarding", "ERROR names the type of the frame it is about"),
):
    define_check("server", _rule, _suffix, _title)

# Rules the codec enforces on every frame the target sends (the judge decodes each one).
_EVERY_FRAME = ("R1.2", "R2.1", "R2.2", "R2.5", "R2.6", "R2.7", "R4.6", "R4.7", "R4.10", "R12.2")


class StepFailed(AssertionError):
    """A check failed in this step (raised to Hypothesis so it shrinks the example)."""


class Driver:
    """Drives one scenario against a live server and judges it; see the module docstring."""

    def __init__(
        self,
        target: Target,
        accounts: list[Account],
        *,
        verdicts: Any,
        reply_timeout: float = 1.0,
        rows: ServerRows | None = None,
        versions: tuple[int, ...] = (1,),
    ) -> None:
        self.target = target
        self.versions = versions  # what the driver's own HELLOs offer (R5.2)
        self.accounts = accounts
        self.by_key = {a.key: a for a in accounts}
        self.verdicts = verdicts
        self.reply_timeout = reply_timeout
        self.rows = rows if rows is not None else ServerRows()
        self.conns: list[Conn] = []
        self.selector = selectors.DefaultSelector()
        self.chart = Chart(["target"])
        self.failures: list[tuple[str, str]] = []  # (check, detail) in this scenario
        self.actions: list[dict[str, Any]] = []  # what was done, for the case file
        # The oracle: the reference server's core over the target's accounts.
        self.store = MemoryStore((a.name, a.password) for a in accounts)
        self.core = _OracleCore(
            self.store,
            _Effects(self),
            CoreConfig(limits=_CORE_LIMITS, max_connections=_UNBOUNDED, tls=target.tls is not None,
                       log_level=logging.CRITICAL + 1),
        )
        self.core.driver = self
        self._pending: list[Callable[[], None]] = []  # password checks and back-offs the core asked for
        self._handling: Any = None  # the event the core is handling (a message, mostly)
        self._lefts = 0  # LEFT frames predicted so far (does anyone see a session end?)
        self.tokens: dict[int, dict[str, Any]] = {}  # the core's server message id -> what its frames share
        self.fuzzy: set[str] = set()  # keys whose session ended unobserved: online or not, unknown
        self.were_fuzzy: set[str] = set()  # late presence frames about them are tolerated
        self.current_msg: tuple[Conn, Message, bool] | None = None  # (sender, MSG_ACK predicted, directed)
        self.patience = 3  # times the reply timeout a missing frame is waited for before it fails
        self.deadline = float("inf")  # the run's time budget (monotonic): waits end there, unjudged
        self.cut_short = False
        self.tolerate_stored = False  # a reset: messages stored before we came are taken unjudged
        self.lenient = False  # a reset between examples: tolerate what came before, wait for no close
        self.last_server_msg_id = -1
        self.limits = LIMITS  # updated from HELLO_OK (R4.11)
        self.steps = 0
        self._nonce = 0
        self._translate: dict[int, Callable[[Conn, Message], None]] = {
            HELLO_OK.TYPE: self._expect_hello_ok,
            AUTH_OK.TYPE: self._expect_auth_ok,
            USERS.TYPE: self._expect_users,
            AUTH_FAILED.TYPE: self._expect_auth_failed,
            JOINED.TYPE: self._expect_joined,
            LEFT.TYPE: self._expect_left,
            DELIVER.TYPE: self._expect_deliver,
            MSG_ACK.TYPE: self._expect_msg_ack,
            PONG.TYPE: self._expect_pong,
            PING.TYPE: lambda conn, ping: None,  # the server's own PINGs are not predicted (R9.1: MAY)
            BYE.TYPE: self._expect_bye,
            ERROR.TYPE: self._expect_error,
        }

    # --- bookkeeping -------------------------------------------------------------------------
    def fail(self, check: str, detail: str) -> None:
        self.failures.append((check, detail))
        self.chart.events.append(ChartEvent("note", 0, None, f"FAIL {check}: {detail}", True))

    def passed(self, check: str) -> None:
        self.verdicts.exercise(check)

    def _note(self, conn: Conn | None, text: str) -> None:
        self.chart.events.append(ChartEvent("note", 0 if conn is None else conn.index + 1, None, text))

    def _arrow(self, conn: Conn, text: str, *, outgoing: bool, bad: bool = False) -> None:
        src, dst = (conn.index + 1, 0) if outgoing else (0, conn.index + 1)
        self.chart.events.append(ChartEvent("arrow", src, dst, text, bad))

    def _expect(self, conn: Conn, expect: Expect, *, ordered: bool = False) -> None:
        if ordered:
            conn.next_order += 1
            expect.order = conn.next_order
        conn.expects.append(expect)

    # --- actions -------------------------------------------------------------------------------
    def open_conn(self) -> int:
        """Connect a new session (nothing sent yet); its index."""
        index = len(self.conns)
        self.actions.append({"action": "connect", "conn": index})
        conn = Conn(index, self.target.connect())
        conn.label = f"c{index + 1}"
        conn.last_sent = time.monotonic()
        self.conns.append(conn)
        self.chart.participants.append(conn.label)
        self.selector.register(conn.sock, selectors.EVENT_READ, conn)
        self._note(conn, "connects")
        self._open_core(conn)
        return index

    def send(self, index: int, messages: list[Message], *, splits: Iterable[int] = (), record: bool = True) -> None:
        """Send ``messages`` in one write (packed), cut at the byte offsets ``splits``, then judge."""
        from dfachat.conformance.checker.report import label, message_json

        conn = self.conns[index]
        if record:
            self.actions.append(
                {"action": "send", "conn": index, "messages": [message_json(m) for m in messages],
                 "splits": sorted(set(splits))}
            )
        self._keepalive()
        data = b""
        for message in messages:
            data += conn.judge.send(message)  # our own side must follow the client table (R12.2)
            self._arrow(conn, label(message), outgoing=True)
        self._write(conn, data, splits)
        self._feed(conn, data)
        if conn.judge.closed:  # we sent a fatal ERROR: its sender closes (R10.4)
            self._note(conn, "closes after its fatal ERROR")
            self._close(conn)
        self.settle(barrier=any(m.NAME in _PUSHING for m in messages))

    def send_raw(self, index: int, data: bytes, what: str, *, record: bool = True) -> None:
        """Send bytes the judge never sees (a malformed frame), then judge the answer."""
        conn = self.conns[index]
        if record:
            self.actions.append({"action": "raw", "conn": index, "hex": data.hex(), "what": what})
        self._arrow(conn, f"{what} ({len(data)} bytes)", outgoing=True)
        self._write(conn, data, ())
        self._feed(conn, data)
        self.settle()

    def drop(self, index: int, *, record: bool = True) -> None:
        """Close the connection without QUIT (R10.5): the others see LEFT DROPPED (R8.2)."""
        conn = self.conns[index]
        if record:
            self.actions.append({"action": "drop", "conn": index})
        self._note(conn, "drops the connection")
        self._close(conn)
        self.settle()

    def idle(self, index: int, *, record: bool = True) -> None:
        """Let time pass: ``index`` stays silent until IDLE_TIMEOUT (R6.8, R9.2); the others ping."""
        conn = self.conns[index]
        if record:
            self.actions.append({"action": "idle", "conn": index})
        timeout_s = self.limits.idle_timeout_s
        self._note(conn, f"stays silent ({timeout_s} s idle timeout)")
        conn.silent = True
        if not conn.gone and not conn.core.closed:  # the core times it out now; the target, when it will
            self._core(lambda now: self.core.timed_out(conn.core))
        # Keep everyone else alive meanwhile (every frame is activity, R9.2).
        deadline = min(time.monotonic() + timeout_s * 1.5 + 2 * self.reply_timeout + 1, self.deadline)
        while not self._satisfied([conn]) and time.monotonic() < deadline:
            for other in self.conns:
                if other is not conn and other.established and time.monotonic() - other.last_sent > timeout_s / 3:
                    self._ping(other)
            self.pump(lambda: self._satisfied([conn]), min(timeout_s / 4, 0.5))
        conn.silent = False
        self.settle(deadline_s=max(0.0, deadline - time.monotonic()))

    def ping_all(self, *, record: bool = True) -> None:
        """A PING on every established connection (a barrier, and keep-alive)."""
        if record:
            self.actions.append({"action": "barrier"})
        for conn in self.conns:
            if conn.established and not conn.expects:
                self._ping(conn)
        self.settle(barrier=False)

    def finish(self) -> None:
        """End the scenario with the server's state known: QUIT every session (BYE is the positive
        signal, R10.2), then log in each account with stored messages, or whose end nobody saw,
        to take them (R7.7). The next scenario starts from an empty server."""
        for conn in self.conns:
            if conn.open and not conn.expects and conn.judge.state in ("ESTABLISHED", "SEND_USER", "SEND_PASS"):
                from dfachat.codec.messages import QUIT  # type: ignore[attr-defined]

                self.send(conn.index, [QUIT()], record=False)
            elif conn.open:
                self._close(conn)
        self.drain(sorted({key for key, _ in self.store.stored} | self.fuzzy))

    def drain(self, keys: Iterable[str]) -> None:
        """Log in to each account and QUIT, taking what the server stored for it."""
        from dfachat.codec.messages import HELLO, PASS, QUIT, USER  # type: ignore[attr-defined]

        for key in keys:
            account = self.by_key.get(key)
            if account is None:
                continue
            index = self.open_conn()
            self.send(index, [HELLO(versions=self.versions, encoding="utf-8", software="dfachat-fuzz")],
                      record=False)
            if self.conns[index].judge.state == "SEND_USER":
                self.send(index, [USER(name=account.name), PASS(password=account.password)], record=False)
            if self.conns[index].established:
                self.send(index, [QUIT()], record=False)
            self._close(self.conns[index])

    def _keepalive(self) -> None:
        """PING sessions silent for a third of the idle timeout: every frame is activity (R9.2)."""
        limit = self.limits.idle_timeout_s / 3
        for conn in self.conns:
            if conn.established and not conn.expects and time.monotonic() - conn.last_sent > limit:
                self._ping(conn)

    def close(self) -> None:
        for conn in self.conns:
            conn.gone = True  # the scenario is over: nothing more is predicted
            self._close(conn)
        self.selector.close()

    # --- writing and reading ------------------------------------------------------------------
    def _write(self, conn: Conn, data: bytes, splits: Iterable[int]) -> None:
        cuts = [0, *sorted(c for c in set(splits) if 0 < c < len(data)), len(data)]
        assert conn.sock is not None
        for a, b in zip(cuts, cuts[1:], strict=False):
            chunk = memoryview(data)[a:b]
            deadline = time.monotonic() + self.reply_timeout + 2
            while chunk:
                try:
                    sent = conn.sock.send(chunk)
                    chunk = chunk[sent:]
                except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                    if time.monotonic() > deadline:
                        self.fail("R9.3", "the target read nothing for seconds while we wrote")
                        return
                    self.pump(lambda: False, 0.01)
                except OSError:
                    return  # the target closed: reported by the read side
        conn.last_sent = time.monotonic()

    def pump(self, until: Callable[[], bool], timeout: float) -> bool:
        """Read and judge whatever arrives until ``until()`` or ``timeout``; whether ``until()`` held."""
        deadline = min(time.monotonic() + timeout, self.deadline)
        while True:
            if until():
                return True
            pending = [c for c in self.conns if c.sock is not None and isinstance(c.sock, ssl.SSLSocket)
                       and not c.eof and c.sock.pending()]
            left = deadline - time.monotonic()
            if pending:
                ready = [(None, c) for c in pending]
            elif left <= 0:
                return until()
            else:
                ready = [(key, key.data) for key, _ in self.selector.select(left)] if self.selector.get_map() else []
                if not ready and not self.selector.get_map():
                    time.sleep(min(left, 0.01))
            for _, conn in ready:
                self._read(conn)

    def _read(self, conn: Conn) -> None:
        assert conn.sock is not None
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except OSError:
            data = b""
        if not data:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(conn.sock)
        if conn.dropped:
            return
        if conn.finished and data:
            self.fail("R10.4", f"{conn.label}: {len(data)} bytes arrived after the session's last frame")
            self._arrow(conn, f"{len(data)} bytes after the last frame", outgoing=False, bad=True)
            return
        for event in conn.judge.receive_data(data):
            self._judge(conn, event)
        if not data:
            conn.eof = True

    # --- the oracle: the core, fed what we send -------------------------------------------------
    def _open_core(self, conn: Conn) -> None:
        """The core's side of a new connection, with a watched engine (nothing is received yet)."""
        try:
            name = conn.sock.getsockname() if conn.sock is not None else None
        except OSError:
            name = None
        address = str(name[0]) if isinstance(name, tuple) else "fuzzer"  # ours: the server sees it as the peer
        core = self.core.connection_opened(conn, address, f"{address} ({conn.label})", time.monotonic())
        conn.core = core
        self._run_pending()

    def _core(self, call: Callable[[float], None]) -> None:
        """One input to the core (at the time it happens), then what it asked of us."""
        call(time.monotonic())
        self._run_pending()

    def _feed(self, conn: Conn, data: bytes) -> None:
        """What we wrote to the target reaches the core too."""
        if not conn.gone:
            self._core(lambda now: self.core.data_received(conn.core, data, now))

    def _core_lost(self, conn: Conn, *, eof: bool) -> None:
        """The connection is gone (``eof``: we closed it, so the server reads the end first)."""
        if conn.gone:
            return
        conn.gone = True
        core = conn.core
        online = core.key is not None and self.core.presence.get(core.key) is core
        lefts = self._lefts
        if eof:
            self._core(lambda now: self.core.eof_received(core, now))
        self._core(lambda now: self.core.connection_lost(core, now))
        if online and self._lefts == lefts and core.left_reason is LeftReason.DROPPED:
            # Nobody sees when the target notices (R10.5): until someone logs in as it, the
            # account may be online at the target or not.
            self.fuzzy.add(core.key)
            self.were_fuzzy.add(core.key)

    def _run_pending(self) -> None:
        while self._pending:
            self._pending.pop(0)()

    def _observe(self, event: Any) -> None:
        """An event a core engine hands the core (the message it is about to handle)."""
        self._handling = event
        if isinstance(event, Message) and event.NAME == "USER":
            self.passed("R6.2/no-answer")

    def _check_password(self, core: CoreConnection, name: str, password: str) -> None:
        """The core's ``check_password``: answered from the store, at once."""
        conn: Conn = core.handle
        account = self.store.verify(name, password)
        if account is None:
            conn.login_rule = "R6.2" if self.store.lookup(name) is not None else "R6.2/unknown-user"
        else:
            conn.held = self.store.stored_for(account.key)
        self.core.password_checked(core, account, time.monotonic())

    def _backoff(self, core: CoreConnection) -> None:
        """The core's ``start_backoff``: over at once; the target's AUTH_FAILED must wait the minimum."""
        conn: Conn = core.handle
        conn.not_before = time.monotonic() + LIMITS.backoff_base_ms / 1000 - _BACKOFF_SLACK_S
        self.core.backoff_elapsed(core, time.monotonic())
        conn.not_before = 0.0

    def _adopt_limits(self, hello_ok: Message) -> None:
        """The limits the target announced are the ones that hold (R4.11), for us and the core."""
        announced = {k: getattr(hello_ok, k) for k in _ANNOUNCED}
        self.limits = dataclasses.replace(self.limits, **announced)
        self.core.limits = dataclasses.replace(self.core.limits, **announced)

    # --- the core's effects as expectations ---------------------------------------------------
    def _predicted(self, core: CoreConnection, message: Message) -> None:
        """The core sends ``message`` on ``core``: the target must send its like there."""
        conn: Conn = core.handle
        session = core.session
        if isinstance(session, _Session):
            if session.sent is not message:  # a push: an internal row, taken without the engine (R8.4)
                state = session.state
                self.rows.take(state, f"send_{message.NAME}", session._table.send[state].get(message.TYPE, ()),
                               session, message)
            session.sent = None
        if session.closed:
            conn.last_word = message
        if conn.absorb == message.NAME:  # arrived already
            conn.absorb = ""
            return
        if conn.eof or conn.dropped:
            return
        self._translate[message.TYPE](conn, message)

    def _predicted_close(self, core: CoreConnection) -> None:
        """The core closes ``core`` after its last frame: the target must close too."""
        conn: Conn = core.handle
        word, conn.last_word = conn.last_word, None
        if conn.eof or conn.dropped or word is None:  # no last word: we ended it (our fatal ERROR)
            return
        if word.NAME == "BYE":
            if not self.lenient:
                self._expect(conn, Expect("CLOSE", "R10.2/close", "close after BYE"))
        elif word.NAME == "AUTH_FAILED":
            self._expect(conn, Expect("CLOSE", "R6.3", "close after the last AUTH_FAILED"))
        else:
            self._expect(conn, Expect("CLOSE", "R10.4", "close after the fatal ERROR"))

    def _expect_hello_ok(self, conn: Conn, ok: Message) -> None:
        def verify(m: Message) -> list[tuple[str, str]]:
            out = []
            if m.version != ok.version:
                out.append(("R5.2", f"HELLO_OK chose version {m.version}"))
            if m.encoding != ok.encoding:
                out.append(("R5.4", f"HELLO_OK names encoding {m.encoding!r}, HELLO asked {ok.encoding!r}"))
            for name in ("max_frame", "max_text", "max_recipients", "login_attempts"):
                if getattr(m, name) > getattr(LIMITS, name) or getattr(m, name) == 0:
                    out.append(("R5.4/limits", f"HELLO_OK announces {name}={getattr(m, name)}, the spec allows "
                                               f"1..{getattr(LIMITS, name)}"))
            return out

        self._expect(conn, Expect("HELLO_OK", "R5.4", "HELLO_OK", verify=verify), ordered=True)

    def _list_verifier(self, check: str, page: Message) -> Callable[[Message], list[tuple[str, str]]]:
        """Judges an AUTH_OK or USERS frame against the core's: the same names (R4.1 spelling),
        any name whose session ended unobserved tolerated, MORE as the core set it."""
        expected = {name_key(n): n for n in page.online}
        more = bool(page.flags & ListFlags.MORE)
        fuzzy = set(self.fuzzy)

        def verify(m: Message) -> list[tuple[str, str]]:
            got = {name_key(n): n for n in m.online}
            out = []
            missing = sorted(n for k, n in expected.items() if k not in got)
            extra = sorted(n for k, n in got.items() if k not in expected and k not in fuzzy)
            if missing or extra:
                out.append((check, f"{m.NAME} lists {sorted(got.values())}: "
                                   + (f"missing {missing}" if missing else "") + (" " if missing and extra else "")
                                   + (f"not online: {extra}" if extra else "")))
            wrong = sorted(n for k, n in got.items() if k in expected and n != expected[k])
            if wrong:
                out.append(("R4.1/registered-name", f"{m.NAME} spells {wrong} differently from the accounts"))
            if bool(m.flags & ListFlags.MORE) != more:
                out.append((check, f"{m.NAME} has MORE {'set' if not more else 'clear'} for a list of {len(got)} names"))
            return out

        return verify

    def _expect_auth_ok(self, conn: Conn, ok: Message) -> None:
        self.fuzzy.discard(name_key(ok.name))  # logged in again: known online from now
        conn.paging = bool(ok.flags & ListFlags.MORE)
        names = self._list_verifier("R6.5", ok)

        def verify(m: Message) -> list[tuple[str, str]]:
            out = names(m)
            if m.name != ok.name:
                out.append(("R6.5/registered-name", f"AUTH_OK names {m.name!r}, the account is {ok.name!r}"))
            return out

        self._expect(conn, Expect("AUTH_OK", "R6.5", f"AUTH_OK {ok.name}", verify=verify,
                                  judges=("R6.5/registered-name", "R4.1/registered-name")), ordered=True)

    def _expect_users(self, conn: Conn, users: Message) -> None:
        check = "R6.5" if conn.paging else "R8.3"  # a page of AUTH_OK's list, or the answer to LIST
        conn.paging = bool(users.flags & ListFlags.MORE) and conn.paging
        self._expect(conn, Expect("USERS", check, "USERS", verify=self._list_verifier(check, users)), ordered=True)

    def _expect_auth_failed(self, conn: Conn, failed: Message) -> None:
        left = failed.attempts_left
        rule = conn.login_rule

        def verify(m: Message) -> list[tuple[str, str]]:
            if m.NAME == "AUTH_OK":
                return [(rule, f"a wrong password (or unknown user) was accepted: {m.name} logged in")]
            if m.attempts_left != left:
                return [("R6.3", f"AUTH_FAILED attempts_left={m.attempts_left}, expected {left}")]
            return []

        self._expect(conn, Expect("AUTH_FAILED", rule, f"AUTH_FAILED attempts_left={left}", verify=verify,
                                  judges=("R6.3", "R6.2"), not_before=conn.not_before, not_before_check="R6.4"),
                     ordered=True)

    def _expect_joined(self, conn: Conn, joined: Message) -> None:
        name = joined.name
        self._expect(conn, Expect("JOINED", "R8.1", f"JOINED {name}", key=name_key(name),
                                  verify=lambda m: [] if m.name == name else
                                  [("R8.1", f"JOINED names {m.name!r}, not {name!r}")]), ordered=True)

    def _expect_left(self, conn: Conn, left: Message) -> None:
        self._lefts += 1
        reason, name = left.reason, left.name
        self._expect(conn, Expect(
            "LEFT", "R8.2", f"LEFT {name} {reason.name}", key=name_key(name),
            verify=lambda m: ([] if m.reason == reason and m.name == name else
                              [("R8.2/reason", f"LEFT {m.name} {m.reason.name}, expected LEFT {name} {reason.name}")]),
            judges=("R8.2/reason", *({LeftReason.DROPPED: ("R10.5",), LeftReason.REPLACED: ("R6.6",)}
                                     .get(reason, ())))),
            ordered=True)

    def _token(self, server_msg_id: int, text: str) -> dict[str, Any]:
        """What the MSG_ACK and the DELIVERs of one message share: the target's id, once known."""
        token = self.tokens.get(server_msg_id)
        if token is None:
            handling = self._handling
            if isinstance(handling, Message) and handling.NAME == "MSG":
                text = handling.text  # as sent, before any re-encoding
            token = self.tokens[server_msg_id] = {"server_msg_id": None, "text": text}
        return token

    def _expect_deliver(self, conn: Conn, deliver: Message) -> None:
        token = self._token(deliver.server_msg_id, deliver.text)
        text, sender, encoding = deliver.text, deliver.sender, conn.judge.encoding
        lossy = bool(deliver.flags & DeliverFlags.LOSSY)
        directed = bool(deliver.flags & DeliverFlags.DIRECTED)
        stored = bool(deliver.flags & DeliverFlags.STORED)

        def verify(m: Message) -> list[tuple[str, str]]:
            out = []
            if token["server_msg_id"] is not None and m.server_msg_id != token["server_msg_id"]:
                out.append(("R7.5/id", f"DELIVER id={m.server_msg_id}, the MSG_ACK said {token['server_msg_id']}"))
            if m.sender != sender:
                out.append(("R7.5/sender", f"DELIVER from {m.sender!r}, the sender is {sender!r}"))
            if m.text != text:
                check = "R3.5" if not (m.flags & DeliverFlags.LOSSY) or lossy else "R3.2"
                out.append((check, f"DELIVER text {m.text!r} in {encoding}, expected {text!r}"
                                   + (" (lossy)" if lossy else "")))
            if bool(m.flags & DeliverFlags.LOSSY) != lossy:
                out.append(("R3.5/flag", f"DELIVER LOSSY flag is {'set' if m.flags & DeliverFlags.LOSSY else 'clear'}"
                                         f" for {token['text']!r} in {encoding}"))
            if bool(m.flags & DeliverFlags.DIRECTED) != directed:
                out.append(("R7.5/directed", "DELIVER DIRECTED flag wrong"))
            if bool(m.flags & DeliverFlags.STORED) != stored:
                out.append(("R7.7/stored-flag", f"DELIVER STORED flag {'set' if not stored else 'missing'}"))
            return out

        check = "R7.7" if stored else "R7.1"
        self._expect(conn, Expect("DELIVER", check, f"DELIVER from {sender}: {token['text']!r}",
                                  key=token, verify=verify,
                                  judges=("R7.5/id", "R7.5/sender", "R3.5", "R3.5/flag", "R7.5/directed",
                                          "R7.7/stored-flag", "R3.2", *(("R3.3",) if "\ufeff" in token["text"] else ()),
                                          *(("R3.6",) if stored else ()), *(("R7.7/order",) if stored else ()),
                                          *(("R7.8",) if conn.core.session.user == sender else ()))),
                     ordered=stored)

    def _expect_msg_ack(self, conn: Conn, ack: Message) -> None:
        token = self._token(ack.server_msg_id, "")
        results = [(r.name, r.outcome) for r in ack.results]
        directed = bool(results)  # one result per named recipient (R7.4): none for a broadcast
        if not directed:
            self.passed("R7.7/broadcast-not-stored")
        fuzzy = set(self.fuzzy)
        store, core_id = self.store, ack.server_msg_id

        def verify(m: Message) -> list[tuple[str, str]]:
            out = []
            token["server_msg_id"] = m.server_msg_id
            if m.msg_id != ack.msg_id:
                out.append(("R7.3/msg-id", f"MSG_ACK msg_id={m.msg_id}, the MSG's is {ack.msg_id}"))
            if m.server_msg_id <= self.last_server_msg_id:
                out.append(("R7.3/increasing", f"server_msg_id {m.server_msg_id} is not above the earlier "
                                                f"{self.last_server_msg_id}"))
            self.last_server_msg_id = max(self.last_server_msg_id, m.server_msg_id)
            got = [(r.name, r.outcome) for r in m.results]
            for name, outcome in got:  # an unobserved drop: the server may not have noticed it yet
                key = name_key(name)
                if key in fuzzy and outcome is not Outcome.QUEUED:  # not stored there: nor here
                    store.forget([item.id for item in store.stored_for(key) if item.server_msg_id == core_id])
            if len(got) != len(results) or any(
                gn != en or (go != eo and not (name_key(en) in fuzzy and go in (Outcome.QUEUED, Outcome.DELIVERED, Outcome.LOSSY)))
                for (gn, go), (en, eo) in zip(got, results, strict=False)
            ):
                out.append(("R7.4/outcome", "MSG_ACK results " + ", ".join(f"{n}={o.name}" for n, o in got)
                            + "; expected " + ", ".join(f"{n}={o.name}" for n, o in results)))
            if not fuzzy and (m.delivered, m.lossy) != (ack.delivered, ack.lossy):
                out.append(("R7.4/counts", f"MSG_ACK delivered={m.delivered} lossy={m.lossy}, expected "
                                           f"delivered={ack.delivered} lossy={ack.lossy}"))
            return out

        self._expect(conn, Expect("MSG_ACK", "R7.3", f"MSG_ACK {ack.msg_id}", verify=verify,
                                  judges=("R7.3/msg-id", "R7.3/increasing", "R7.4/outcome", "R7.4/counts")), ordered=True)
        self.current_msg = (conn, ack, directed)

    def _expect_pong(self, conn: Conn, pong: Message) -> None:
        nonce = pong.nonce
        self._expect(conn, Expect("PONG", "R9.1", f"PONG {nonce}", key=nonce,
                                  verify=lambda m: [] if m.nonce == nonce else
                                  [("R9.1", f"PONG nonce {m.nonce}, the PING's was {nonce}")]), ordered=True)

    def _expect_bye(self, conn: Conn, bye: Message) -> None:
        reason = bye.reason
        after = "after QUIT" if reason is ByeReason.QUIT else f"for {reason.name}"
        self._expect(conn, Expect("BYE", "R10.2", f"BYE {reason.name}",
                                  judges=("R10.1",),
                                  verify=lambda m: [] if m.reason == reason else
                                  [("R10.2", f"BYE {m.reason.name} {after}")]), ordered=True)

    def _expect_error(self, conn: Conn, error: Message) -> None:
        violation = getattr(conn.core.session, "violation", None)
        handling = self._handling
        if violation is not None and violation.reply is error:  # the engine's answer to what we sent
            self._expect_answer(conn, violation)
        elif error.code is ErrorCode.IDLE_TIMEOUT:
            self._expect_timeout(conn, error)
        elif error.code is ErrorCode.SESSION_REPLACED:
            self._expect_fatal(conn, [(error.code, "R6.6")],
                               detail=lambda m: f"the replaced session got ERROR {m.code.name}, expected fatal "
                                                f"SESSION_REPLACED")
        elif error.code in _HELLO_ERRORS and isinstance(handling, Message) and handling.NAME == "HELLO":
            allowed = [(error.code, _HELLO_ERRORS[error.code][0])]
            allowed += [(code, rule) for code, (rule, broken) in _HELLO_ERRORS.items()
                        if code is not error.code and broken(handling)]
            self._expect_fatal(conn, allowed, judges=tuple(rule for _, rule in allowed))
        else:
            self._expect_fatal(conn, [(error.code, error.rule)])

    def _expect_fatal(self, conn: Conn, allowed: list[tuple[ErrorCode, str]], *, judges: tuple[str, ...] = (),
                      detail: Callable[[Message], str] | None = None) -> None:
        """A fatal ERROR with one of the ``allowed`` (code, rule); the core's close follows."""
        rule = allowed[0][1]
        codes = [code for code, _ in allowed]
        names = " or ".join(code.name for code in codes)

        def verify(m: Message) -> list[tuple[str, str]]:
            if m.code not in codes or not m.flags & ErrorFlags.FATAL:
                return [(rule, detail(m) if detail else f"expected a fatal ERROR {names}, got {m.code.name}")]
            return []

        self._expect(conn, Expect("ERROR", rule, f"fatal ERROR {names}", verify=verify, judges=judges), ordered=True)

    def _expect_answer(self, conn: Conn, violation: ProtocolViolation) -> None:
        """The ERROR that answers an illegal or malformed frame, as the core's engine decided it."""
        reply = violation.reply
        fatal = violation.fatal
        code = ErrorCode(reply.code)
        rule = violation.rule

        def verify(m: Message) -> list[tuple[str, str]]:
            out = []
            if m.code != code:
                out.append(("R11.1/code", f"answered {violation} with ERROR {m.code.name}, expected {code.name}"))
            if bool(m.flags & ErrorFlags.FATAL) != fatal:
                check = "R11.3" if conn.authenticated else "R6.7"
                out.append((check, f"answered {violation} with a {'fatal' if m.flags else 'non-fatal'} ERROR, "
                                   f"expected {'fatal' if fatal else 'non-fatal'}"))
            # After bad magic, whether "the header was read" is the receiver's call (R11.1): 0 or its type byte.
            if m.regarding != reply.regarding and code is not ErrorCode.BAD_MAGIC:
                out.append(("R11.1/regarding", f"ERROR regarding 0x{m.regarding:02X}, expected 0x{reply.regarding:02X}"))
            return out

        owed = rule if fatal else "R11.3"  # a non-fatal one: the server answers and goes on
        self._expect(conn, Expect("ERROR", owed, f"ERROR {code.name} ({'fatal' if fatal else 'non-fatal'})",
                                  verify=verify, judges=(rule, "R11.1", "R11.1/code", "R11.1/regarding",
                                                         *(("R7.9",) if reply.regarding == MSG.TYPE else ()),
                                                         "R11.3" if conn.authenticated else "R6.7",
                                                         *(("R2.8",) if fatal and violation.error.rule in _FRAMING else ()))),
                     ordered=True)
        if not fatal:
            self.passed("R11.3")

    def _expect_timeout(self, conn: Conn, error: Message) -> None:
        """IDLE_TIMEOUT (R6.8 before AUTH_OK, R9.2 after): right whenever we were silent long enough."""
        check = f"{error.rule}/timeout"
        timeout_s = self.limits.idle_timeout_s
        since = conn.last_sent

        def verify(m: Message) -> list[tuple[str, str]]:
            out = []
            if m.code != ErrorCode.IDLE_TIMEOUT or not m.flags & ErrorFlags.FATAL:
                out.append((check, f"expected a fatal ERROR IDLE_TIMEOUT, got {m.code.name}"))
            if time.monotonic() - since < timeout_s - _BACKOFF_SLACK_S:
                out.append((check, f"IDLE_TIMEOUT after {time.monotonic() - since:.2f} s of silence, "
                                   f"before the announced {timeout_s} s"))
            return out

        self._expect(conn, Expect("ERROR", check, "fatal ERROR IDLE_TIMEOUT", verify=verify))

    # --- judging what arrives -------------------------------------------------------------------
    def _judge(self, conn: Conn, event: Any) -> None:
        from dfachat.conformance.checker.report import label

        now = time.monotonic()
        if isinstance(event, ConnectionClosed):
            self._on_close(conn, event)
            return
        if isinstance(event, ProtocolViolation):
            error = event.error
            check = error.rule if isinstance(error, FrameError) else "R12.2"
            self.fail(check, f"{conn.label}: the target sent {event}")
            self._arrow(conn, f"{event.message_type or 'frame'} rejected: {error.detail}", outgoing=False, bad=True)
            # A client never survives that (R11.3): we close, and judge nothing more on this session.
            conn.expects.clear()
            self._close(conn)
            return
        message: Message = event
        for check in _EVERY_FRAME:
            self.passed(check)
        bad_before = len(self.failures)
        arrow_at = len(self.chart.events)
        self._arrow(conn, label(message), outgoing=False)
        if message.NAME == "PING":  # the server MAY ping after AUTH_OK (R9.1, R9.2)
            core = conn.core
            if not conn.gone and not core.closed:  # the core's keep-alive, already here
                conn.absorb = "PING"
                with contextlib.suppress(LocalProtocolError):
                    self._core(lambda now: self.core.keepalive(core, now))
                conn.absorb = ""
            if not conn.silent and conn.judge.can_send(PONG):
                data = conn.judge.send(PONG(nonce=message.nonce))
                self._arrow(conn, f"PONG {message.nonce}", outgoing=True)
                self._write(conn, data, ())
                self._feed(conn, data)
            elif conn.silent:
                self.passed("R9.2/ping")  # SHOULD: pinged before the timeout
            return
        if message.NAME == "HELLO_OK":
            self._adopt_limits(message)
        if message.NAME == "BYE" or (message.NAME == "ERROR" and message.flags & ErrorFlags.FATAL):
            conn.finished = True
        expect = self._match(conn, message)
        if expect is None:
            self._unexpected(conn, message)
        else:
            expect.done = True
            if expect.not_before and now < expect.not_before and expect.kind == message.NAME:
                self.fail(expect.not_before_check, f"{conn.label}: {message.NAME} came "
                          f"{expect.not_before - now + LIMITS.backoff_base_ms / 1000:.3f} s after the PASS, "
                          f"sooner than the {LIMITS.backoff_base_ms} ms minimum")
            elif expect.not_before_check:
                self.passed(expect.not_before_check)
            earlier = [e for e in conn.expects if not e.done and 0 < e.order < expect.order and e.kind != "CLOSE"]
            if earlier and expect.order and message.NAME in ("DELIVER", "JOINED", "LEFT", "AUTH_OK", "ERROR"):
                rule = {"DELIVER": "R7.7/order", "JOINED": "R6.6/order", "LEFT": "R8.2/order"}.get(message.NAME, "R8.4")
                if message.NAME in ("DELIVER",) and all(e.kind == "DELIVER" for e in earlier) or \
                        message.NAME in ("JOINED",) and any(e.kind == "LEFT" and e.key == expect.key for e in earlier):
                    self.fail(rule, f"{conn.label}: {label(message)} arrived before {earlier[0].what}")
            self.passed(expect.check)
            for check in expect.judges:
                self.passed(check)
            if expect.verify is not None:
                for check, detail in expect.verify(message):
                    self.fail(check, f"{conn.label}: {detail}")
            conn.expects.remove(expect)
            if message.NAME == "DELIVER":
                if message.server_msg_id in conn.seen_ids:
                    self.fail("R7.6", f"{conn.label}: server message id {message.server_msg_id} delivered twice")
                conn.seen_ids.add(message.server_msg_id)
                self.passed("R7.6")
        if len(self.failures) > bad_before:
            self.chart.events[arrow_at] = self.chart.events[arrow_at]._replace(bad=True)

    def _match(self, conn: Conn, message: Message) -> Expect | None:
        candidates = [e for e in conn.expects if e.kind == message.NAME and not e.done]
        if message.NAME == "AUTH_OK":  # a wrong password accepted: judged against the AUTH_FAILED expected
            candidates = [e for e in conn.expects if e.kind in ("AUTH_OK", "AUTH_FAILED")]
        if not candidates:
            return None
        if message.NAME in ("JOINED", "LEFT"):
            key = name_key(message.name)
            return next((e for e in candidates if e.key == key), None)
        if message.NAME == "PONG":
            return next((e for e in candidates if e.key == message.nonce), candidates[0])
        if message.NAME == "DELIVER":
            by_id = [e for e in candidates if e.key.get("server_msg_id") == message.server_msg_id]
            return by_id[0] if by_id else candidates[0]
        return candidates[0]

    def _unexpected(self, conn: Conn, message: Message) -> None:
        name = message.NAME
        if name == "DELIVER" and self.tolerate_stored and message.flags & DeliverFlags.STORED:
            return  # held from before this scenario (a previous run, or an example that failed)
        if name == "DELIVER":
            current = self.current_msg
            if message.server_msg_id in conn.seen_ids:
                check, why = "R7.6", f"server message id {message.server_msg_id} delivered again"
            elif current is not None and current[0] is conn and not current[2]:
                check, why = "R7.8", "a broadcast reached its sender"
            elif current is not None and current[2]:
                check, why = "R7.1", "a directed message reached someone it did not name"
            else:
                check, why = "R7.1", "a message nobody sent to this session"
        elif name in ("JOINED", "LEFT") and name_key(message.name) in self.were_fuzzy:
            return
        elif name == "JOINED":
            check, why = "R8.1", f"JOINED {message.name} without a login"
        elif name == "LEFT":
            check, why = "R8.2", f"LEFT {message.name}: not online here, or already announced (exactly one LEFT)"
        elif name == "MSG_ACK":
            check, why = "R7.3", "a MSG_ACK nobody asked for"
        elif name == "USERS":
            check, why = "R8.3", "USERS nobody asked for"
        elif (name == "ERROR" and message.code == ErrorCode.RATE_LIMITED and message.flags & ErrorFlags.FATAL
              and any(e.kind in ("AUTH_OK", "AUTH_FAILED") for e in conn.expects)):
            self._refused_login(conn, message)
            return
        elif name == "ERROR" and message.code == ErrorCode.IDLE_TIMEOUT and message.flags & ErrorFlags.FATAL:
            silent = time.monotonic() - conn.last_sent
            rule = "R9.2" if conn.authenticated else "R6.8"
            if silent >= self.limits.idle_timeout_s - _BACKOFF_SLACK_S:  # allowed whenever we were silent
                self.passed(f"{rule}/timeout")
                self._end_core(conn, lambda now: self.core.timed_out(conn.core))
                return
            check, why = f"{rule}/timeout", f"IDLE_TIMEOUT after {silent:.2f} s, before the announced " \
                                            f"{self.limits.idle_timeout_s} s"
        elif name == "ERROR":
            check, why = ("R11.3" if conn.authenticated else "R6.7"), f"ERROR {message.code.name} ({message.reason!r}) for nothing wrong"
        elif name == "BYE":
            check, why = "R10.2", f"BYE {message.reason.name} without QUIT"
        elif name == "PONG":
            check, why = "R9.1", f"PONG {message.nonce} for no PING"
        else:
            check, why = "R12.2", f"{name} was not expected"
        self.fail(check, f"{conn.label}: {why}")

    def _refused_login(self, conn: Conn, error: Message) -> None:
        """R9.5: a server MAY refuse a PASS beyond its login rate: undo the login the core made."""
        self.passed("R9.5")
        self._note(conn, "login refused: the target's login rate bound (R9.5)")
        conn.expects.clear()
        core = conn.core
        key = core.key
        if key is not None and self.core.presence.get(key) is core:
            # Never online at the target: off the core's list unseen, what it took stored again.
            self.core.presence.remove(key, core)
            for item in conn.held:
                self.store.store([key], item.server_msg_id, item.timestamp_ms, item.sender, item.flags, item.text)
            for other in self.conns:
                other.expects = [e for e in other.expects if not (e.kind == "JOINED" and e.key == key)]
        if core.closed or conn.gone:
            self._expect(conn, Expect("CLOSE", "R10.4", "close after the fatal ERROR"))
        else:
            self._end_core(conn, lambda now: self.core.end(core, error, LeftReason.ERROR))

    def _end_core(self, conn: Conn, call: Callable[[float], None]) -> None:
        """The target ended the session with the fatal ERROR that just arrived: the core ends it so
        (``call``), the ERROR it sends is that one, and what follows it (LEFT, the close) is expected."""
        if conn.gone or conn.core.closed:
            return
        conn.absorb = "ERROR"
        self._core(call)
        conn.absorb = ""

    def _on_close(self, conn: Conn, event: ConnectionClosed) -> None:
        self._note(conn, "the target closes the connection")
        conn.eof = True
        owed = [e for e in conn.expects if e.kind in _REPLIES and not e.optional]
        for expect in owed:  # the server closed before sending what it owed
            conn.expects.remove(expect)
            self.fail(expect.check, f"{conn.label}: the target closed the connection without {expect.what}")
        close = next((e for e in conn.expects if e.kind == "CLOSE"), None)
        if close is not None:
            conn.expects.remove(close)
            self.passed(close.check)
        elif not conn.finished:
            state = conn.judge.state
            core = conn.core
            if core.key is not None and self.core.presence.get(core.key) is core:
                self.fail("R11.3", f"{conn.label}: the target closed an authenticated session in {state} without "
                                   "BYE or a fatal ERROR")
            else:
                self.fail("R10.4", f"{conn.label}: the target closed the session in {state} without BYE or a fatal "
                                   "ERROR")
        self._core_lost(conn, eof=False)

    # --- quiescence -------------------------------------------------------------------------------
    def _outstanding(self, conns: Iterable[Conn] | None = None) -> list[tuple[Conn, Expect]]:
        return [(c, e) for c in (self.conns if conns is None else conns) for e in c.expects
                if not e.optional and not (c.eof and e.kind != "CLOSE") and not c.dropped]

    def _satisfied(self, conns: Iterable[Conn] | None = None) -> bool:
        return not self._outstanding(conns)

    def _ping(self, conn: Conn) -> None:
        self._nonce += 1
        message = PING(nonce=self._nonce)
        self._arrow(conn, f"PING {self._nonce}", outgoing=True)
        data = conn.judge.send(message)
        self._write(conn, data, ())
        self._feed(conn, data)

    def settle(self, *, barrier: bool = True, deadline_s: float | None = None) -> None:
        """Wait until every expectation is met, then the PING barrier; fail what is still missing.

        A frame missing after the reply timeout is not failed at once (a loaded machine is not a
        broken server): a reply we wait for gets ``patience`` times as long; a push gets a PING on
        its session, and fails only once the PONG has come back without it, since a server writes
        what it owed a session before answering a later PING there.
        """
        self.steps += 1
        timeout = self.reply_timeout if deadline_s is None else max(deadline_s, self.reply_timeout)
        if any(e.kind == "AUTH_FAILED" for _, e in self._outstanding()):
            timeout += LIMITS.backoff_max_ms / 1000  # R6.4: the back-off may reach its maximum
        patience = timeout * self.patience

        def replies_in() -> bool:
            return self._satisfied() or not any(e.kind in _OWED for _, e in self._outstanding())

        # The replies first; pushes may still be on their way.
        self.pump(replies_in, patience)
        self._fail_missing(_OWED)  # what a session was owed and did not get in all that time
        if barrier or not self._satisfied():
            # A PING on each quiet session: what the server wrote it before the PONG is in by then.
            for conn in self.conns:
                if conn.established and not any(e.kind in _OWED for e in conn.expects):
                    self._ping(conn)
            self.pump(replies_in, patience)
        if not self._satisfied():
            # Once more, to be sure: a push still missing after a second PONG is missing.
            for conn in {c.index: c for c, e in self._outstanding() if e.kind not in _OWED}.values():
                if conn.established and not any(e.kind in _OWED for e in conn.expects):
                    self._ping(conn)
            self.pump(replies_in, patience)
            self.pump(self._satisfied, min(0.05, self.reply_timeout))
        self._fail_missing(None)
        for conn in self.conns:  # drop what can no longer arrive
            if conn.eof or conn.dropped:
                conn.expects.clear()

    def _fail_missing(self, kinds: frozenset[str] | None) -> None:
        """Fail the outstanding expectations (of these kinds; None: all)."""
        if time.monotonic() >= self.deadline:  # the run's time is up: judge nothing half-waited
            for conn in self.conns:
                conn.expects.clear()
            self.cut_short = True
        for conn, expect in self._outstanding():
            if kinds is not None and expect.kind not in kinds:
                continue
            conn.expects.remove(expect)
            if expect.kind == "CLOSE":
                self.fail(expect.check, f"{conn.label}: the target did not close the connection ({expect.what})")
            else:
                self.fail(expect.check, f"{conn.label}: expected {expect.what}; it did not arrive")

    def _close(self, conn: Conn) -> None:
        if conn.sock is None or conn.dropped:
            return
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(conn.sock)
        with contextlib.suppress(OSError):
            conn.sock.close()
        conn.dropped = True
        conn.judge.close()
        self._core_lost(conn, eof=True)
