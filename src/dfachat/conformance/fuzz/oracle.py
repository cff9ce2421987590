"""The driver and oracle of server mode: act on a live server and judge everything it sends.

:class:`Driver` runs *actions* (open a connection, send messages -- split or
packed --, send a malformed frame, drop, stay silent) one at a time, each to
quiescence, and judges every frame that arrives:

* each connection has a :class:`~dfachat.fsm.ClientSession` (the *judge*):
  a frame the client's table does not allow, or one the codec rejects, is the
  server breaking R12.2 or a rule of section 2-4;
* each connection also has a :class:`~dfachat.fsm.ServerSession` (the
  *mirror*): what we send is fed to it, so it decides, from the same table
  and codec as the reference server, whether a frame is legal and which ERROR
  (code, fatality, regarding) a conforming server answers;
* the reference model of the server (:class:`Model`) decides everything
  else with the server's own routing (:func:`dfachat.server.routing.route`,
  :func:`~dfachat.server.routing.reencode`): who is online, each MSG's
  recipients and outcomes, the text each recipient gets, stored messages,
  presence. Its answers become *expectations* on connections.

Nondeterminism is absorbed, never guessed: expectations on one connection are
matched by kind (their order is checked only where the spec promises one),
and after an action that could push something unwanted, a PING/PONG round
trip on each bystander (R9.1) is the barrier that shows what the server wrote
before. A missing frame fails only after the reply timeout.
"""

from __future__ import annotations

import contextlib
import dataclasses
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
from dfachat.fsm import TABLES, ClientSession, ConnectionClosed, ProtocolViolation, ServerSession
from dfachat.fsm._table import Branch
from dfachat.server.routing import reencode, route
from dfachat.server.store import name_key
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
    ListFlags,
    Outcome,
)

__all__ = ["Account", "Driver", "Expect", "ServerRows"]

_SERVER = TABLES["server"]
_BACKOFF_SLACK_S = 0.02  # clock granularity when checking the R6.4 minimum delay
# Framing errors (R2.8: no resynchronising): the codec's always-fatal frame errors, except the
# mid-frame end of a connection (R2.9), which nothing answers.
_FRAMING = frozenset(cls.rule for cls in FrameError.__subclasses__() if cls.fatal and cls is not TruncatedFrame)
_REPLIES = frozenset({"HELLO_OK", "AUTH_OK", "AUTH_FAILED", "MSG_ACK", "USERS", "PONG", "BYE", "ERROR"})
_OWED = _REPLIES | {"CLOSE"}  # what the server owes a session in answer to what it sent
_PUSHING = frozenset({"MSG", "PASS", "QUIT", "ERROR"})  # what can make the server write to others


@dataclass(frozen=True, slots=True)
class Account:
    """An account of the target, from ``--account NAME:PASSWORD``."""

    name: str
    password: str

    @property
    def key(self) -> str:
        return name_key(self.name)


class ServerRows:
    """Rows of the server's table the model took: the run's transition coverage."""

    def __init__(self) -> None:
        self.taken: set[tuple[str, str, str, int]] = set()

    def take(self, state: str, trigger: str, branches: Iterable[Branch], session: Any, message: Any) -> None:
        for index, branch in enumerate(branches):
            if not branch.guards or branch.admits(session, message):
                self.taken.add(("server", state, trigger, index))
                return

    def report(self) -> dict[str, Any]:
        from dfachat.conformance.checker.explore import coverage_report

        rows = coverage_report(self.taken)["server"]["rows"]
        label = [f"{r['state']} {r['trigger']}{' ' + r['guards'] if r['guards'] else ''} -> {r['dest']}" for r in rows]
        return {
            "total": len(rows),
            "covered": [text for text, r in zip(label, rows, strict=True) if r["taken"]],
            "missing": [text for text, r in zip(label, rows, strict=True) if not r["taken"]],
        }


@dataclass(slots=True)
class Expect:
    """A frame (or the close) the model says must reach one connection."""

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
    """One fuzzer connection: the socket, the judge, the mirror, what is expected on it."""

    index: int
    sock: socket.socket | None
    judge: ClientSession = field(default_factory=ClientSession)
    mirror: ServerSession = field(default_factory=ServerSession)
    label: str = ""
    account: Account | None = None  # logged in as (the model's view)
    login_name: str | None = None  # USER sent, PASS not yet
    expects: list[Expect] = field(default_factory=list)
    eof: bool = False  # the target closed it
    dropped: bool = False  # we closed it
    finished: bool = False  # BYE or a fatal ERROR arrived: nothing more may come
    last_sent: float = 0.0
    silent: bool = False  # let time pass: do not answer PINGs
    failures: int = 0  # failed logins in this session (R6.3)
    seen_ids: set[int] = field(default_factory=set)  # server message ids delivered here (R7.6)
    hello_ok: Message | None = None
    next_order: int = 0

    @property
    def open(self) -> bool:
        return self.sock is not None and not self.eof and not self.dropped

    @property
    def established(self) -> bool:
        return self.open and self.judge.state == "ESTABLISHED" and self.account is not None


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
    ) -> None:
        self.target = target
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
        self.online: dict[str, Conn] = {}  # the model: account key -> its session
        self.stored: dict[str, list[dict[str, Any]]] = {}  # key -> messages held for it (R7.7)
        self.fuzzy: set[str] = set()  # keys whose session ended unobserved: online or not, unknown
        self.were_fuzzy: set[str] = set()  # late presence frames about them are tolerated
        self.current_msg: tuple[Conn, Message, bool] | None = None
        self.patience = 3  # times the reply timeout a missing frame is waited for before it fails
        self.deadline = float("inf")  # the run's time budget (monotonic): waits end there, unjudged
        self.cut_short = False
        self.tolerate_stored = False
        self.lenient = False  # a reset between examples: tolerate what came before, wait for no close  # a reset: messages stored before we came are taken unjudged
        self.last_server_msg_id = -1
        self.limits = LIMITS  # updated from HELLO_OK (R4.11)
        self.steps = 0
        self._nonce = 0

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
        self._model_received(conn, data)
        self.settle(barrier=any(m.NAME in _PUSHING for m in messages))

    def send_raw(self, index: int, data: bytes, what: str, *, record: bool = True) -> None:
        """Send bytes the judge never sees (a malformed frame), then judge the answer."""
        conn = self.conns[index]
        if record:
            self.actions.append({"action": "raw", "conn": index, "hex": data.hex(), "what": what})
        self._arrow(conn, f"{what} ({len(data)} bytes)", outgoing=True)
        self._write(conn, data, ())
        self._model_received(conn, data)
        self.settle()

    def drop(self, index: int, *, record: bool = True) -> None:
        """Close the connection without QUIT (R10.5): the others see LEFT DROPPED (R8.2)."""
        conn = self.conns[index]
        if record:
            self.actions.append({"action": "drop", "conn": index})
        self._note(conn, "drops the connection")
        self._close(conn)
        self._session_ends(conn, LeftReason.DROPPED)
        self.settle()

    def idle(self, index: int, *, record: bool = True) -> None:
        """Let time pass: ``index`` stays silent until IDLE_TIMEOUT (R6.8, R9.2); the others ping."""
        conn = self.conns[index]
        if record:
            self.actions.append({"action": "idle", "conn": index})
        timeout_s = self.limits.idle_timeout_s
        self._note(conn, f"stays silent ({timeout_s} s idle timeout)")
        conn.silent = True
        rule = "R9.2" if conn.account is not None else "R6.8"
        since = conn.last_sent

        def verify(m: Message) -> list[tuple[str, str]]:
            out = []
            if m.code != ErrorCode.IDLE_TIMEOUT or not m.flags & ErrorFlags.FATAL:
                out.append((f"{rule}/timeout", f"expected a fatal ERROR IDLE_TIMEOUT, got {m.code.name}"))
            if time.monotonic() - since < timeout_s - _BACKOFF_SLACK_S:
                out.append((f"{rule}/timeout", f"IDLE_TIMEOUT after {time.monotonic() - since:.2f} s of silence, "
                                                f"before the announced {timeout_s} s"))
            return out

        self._expect(conn, Expect("ERROR", f"{rule}/timeout", "fatal ERROR IDLE_TIMEOUT", verify=verify))
        self._mirror_send(conn, ERROR(code=ErrorCode.IDLE_TIMEOUT, flags=ErrorFlags.FATAL, regarding=0, rule=rule, reason=""))
        self._expect(conn, Expect("CLOSE", "R10.4", "close after the fatal ERROR"))
        self._session_ends(conn, LeftReason.TIMEOUT, wait_for_close=True)
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
                self._session_ends(conn, LeftReason.DROPPED)
        self.drain(sorted(set(self.stored) | self.fuzzy))

    def drain(self, keys: Iterable[str]) -> None:
        """Log in to each account and QUIT, taking what the server stored for it."""
        from dfachat.codec.messages import HELLO, PASS, QUIT, USER  # type: ignore[attr-defined]

        for key in keys:
            account = self.by_key.get(key)
            if account is None:
                continue
            index = self.open_conn()
            self.send(index, [HELLO(versions=SUPPORTED_VERSIONS, encoding="utf-8", software="dfachat-fuzz")],
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

    # --- the model: what the server must do with what we sent ---------------------------------
    def _model_received(self, conn: Conn, data: bytes) -> None:
        mirror = conn.mirror
        mirror.feed(data)
        while True:
            state = mirror.state
            event = mirror.next_event()
            if event is None:
                return
            if isinstance(event, ProtocolViolation):
                self._expect_error(conn, event)
                continue
            if isinstance(event, ConnectionClosed):
                return
            self.rows.take(state, f"recv_{event.NAME}", _SERVER.recv[state].get(event.TYPE, ()), mirror, event)
            handler = getattr(self, f"_on_{event.NAME}", None)
            if handler is not None:
                handler(conn, event)

    def _mirror_send(self, conn: Conn, message: Message) -> None:
        """The model's server session sends ``message`` (state and coverage, not the wire)."""
        mirror = conn.mirror
        state = mirror.state
        branches = _SERVER.send[state].get(message.TYPE, ())
        self.rows.take(state, f"send_{message.NAME}", branches, mirror, message)
        with contextlib.suppress(LocalProtocolError):
            mirror.send(message)

    def _mirror_closed(self, conn: Conn) -> None:
        mirror = conn.mirror
        self.rows.take(mirror.state, CLOSED_TRIGGER, (_SERVER.closed[mirror.state],), mirror, None)
        mirror.close()

    def _expect_error(self, conn: Conn, violation: ProtocolViolation) -> None:
        reply = violation.reply
        fatal = violation.fatal
        code = ErrorCode(reply.code)
        rule = violation.rule

        def verify(m: Message) -> list[tuple[str, str]]:
            out = []
            if m.code != code:
                out.append(("R11.1/code", f"answered {violation} with ERROR {m.code.name}, expected {code.name}"))
            if bool(m.flags & ErrorFlags.FATAL) != fatal:
                check = "R11.3" if conn.account is not None else "R6.7"
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
                                                         "R11.3" if conn.account is not None else "R6.7",
                                                         *(("R2.8",) if fatal and violation.error.rule in _FRAMING else ()))),
                     ordered=True)
        self._mirror_send(conn, reply)
        if fatal:
            self._expect(conn, Expect("CLOSE", "R10.4", "close after the fatal ERROR"))
            self._session_ends(conn, LeftReason.ERROR, wait_for_close=True)
        else:
            self.passed("R11.3")

    def _on_HELLO(self, conn: Conn, hello: Message) -> None:
        # Both wrong: the spec orders neither check first, so either error is right.
        wrong = [(code, rule) for broken, code, rule in (
            (not set(hello.versions) & set(SUPPORTED_VERSIONS), ErrorCode.UNSUPPORTED_VERSION, "R5.2"),
            (hello.encoding not in ENCODINGS, ErrorCode.UNSUPPORTED_ENCODING, "R5.3")) if broken]
        if wrong:
            self._expect_fatal(conn, wrong, hello.TYPE)
        else:
            def verify(m: Message) -> list[tuple[str, str]]:
                out = []
                if m.version != max(set(hello.versions) & set(SUPPORTED_VERSIONS)):
                    out.append(("R5.2", f"HELLO_OK chose version {m.version}"))
                if m.encoding != hello.encoding:
                    out.append(("R5.4", f"HELLO_OK names encoding {m.encoding!r}, HELLO asked {hello.encoding!r}"))
                for name in ("max_frame", "max_text", "max_recipients", "login_attempts"):
                    if getattr(m, name) > getattr(LIMITS, name) or getattr(m, name) == 0:
                        out.append(("R5.4/limits", f"HELLO_OK announces {name}={getattr(m, name)}, the spec allows "
                                              f"1..{getattr(LIMITS, name)}"))
                return out

            self._expect(conn, Expect("HELLO_OK", "R5.4", "HELLO_OK", verify=verify), ordered=True)
            self._mirror_send(conn, HELLO_OK(version=1, max_frame=0, max_text=0, idle_timeout_s=0, max_recipients=0,
                                             login_attempts=0, encoding=hello.encoding, software="model"))

    def _expect_fatal(self, conn: Conn, allowed: list[tuple[ErrorCode, str]], regarding: int) -> None:
        """A fatal ERROR with one of the ``allowed`` (code, rule), then the close."""
        code, rule = allowed[0]
        names = " or ".join(c.name for c, _ in allowed)

        def verify(m: Message) -> list[tuple[str, str]]:
            if m.code not in [c for c, _ in allowed] or not m.flags & ErrorFlags.FATAL:
                return [(rule, f"expected a fatal ERROR {names}, got {m.code.name}")]
            return []

        self._expect(conn, Expect("ERROR", rule, f"fatal ERROR {names}", verify=verify,
                                  judges=tuple(r for _, r in allowed)), ordered=True)
        self._mirror_send(conn, ERROR(code=code, flags=ErrorFlags.FATAL, regarding=regarding, rule=rule, reason=""))
        self._expect(conn, Expect("CLOSE", "R10.4", "close after the fatal ERROR"))
        self._session_ends(conn, LeftReason.ERROR, wait_for_close=True)

    def _on_USER(self, conn: Conn, user: Message) -> None:
        conn.login_name = user.name  # no answer (R6.2)
        self.passed("R6.2/no-answer")

    def _on_PASS(self, conn: Conn, password: Message) -> None:
        account = self.by_key.get(name_key(conn.login_name or ""))
        conn.login_name = None
        sent = time.monotonic()
        if account is not None and account.password == password.password:
            self._login(conn, account)
            return
        conn.failures += 1
        attempts = conn.hello_ok.login_attempts if conn.hello_ok is not None else LIMITS.login_attempts
        left = max(attempts - conn.failures, 0)
        rule = "R6.2" if account is not None else "R6.2/unknown-user"

        def verify(m: Message) -> list[tuple[str, str]]:
            if m.NAME == "AUTH_OK":
                return [(rule, f"a wrong password (or unknown user) was accepted: {m.name} logged in")]
            if m.attempts_left != left:
                return [("R6.3", f"AUTH_FAILED attempts_left={m.attempts_left}, expected {left}")]
            return []

        self._expect(conn, Expect("AUTH_FAILED", rule, f"AUTH_FAILED attempts_left={left}", verify=verify,
                                  judges=("R6.3", "R6.2"),
                                  not_before=sent + LIMITS.backoff_base_ms / 1000 - _BACKOFF_SLACK_S,
                                  not_before_check="R6.4"), ordered=True)
        self._mirror_send(conn, AUTH_FAILED(attempts_left=left))
        if left == 0:
            self._expect(conn, Expect("CLOSE", "R6.3", "close after the last AUTH_FAILED"))
            self._session_ends(conn, LeftReason.ERROR, wait_for_close=True)

    def _online_names(self) -> dict[str, str]:
        return {key: c.account.name for key, c in self.online.items() if c.account is not None}

    def _list_verifier(self, check: str, expected: dict[str, str], field_name: str = "online") -> Callable[[Message], list[tuple[str, str]]]:
        fuzzy = set(self.fuzzy)

        def verify(m: Message) -> list[tuple[str, str]]:
            got = {name_key(n): n for n in getattr(m, field_name)}
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
            if m.flags & ListFlags.MORE:
                out.append((check, f"{m.NAME} has MORE set for a list of {len(got)} names"))
            return out

        return verify

    def _login(self, conn: Conn, account: Account) -> None:
        key = account.key
        previous = self.online.get(key)
        if previous is not None and previous is not conn:  # R6.6: the new session wins
            self._expect_fatal_replaced(previous)
        self.fuzzy.discard(key)
        conn.account = account
        self.online[key] = conn
        expected = self._online_names()

        def verify(m: Message) -> list[tuple[str, str]]:
            out = self._list_verifier("R6.5", expected)(m)
            if m.NAME == "AUTH_OK" and m.name != account.name:
                out.append(("R6.5/registered-name", f"AUTH_OK names {m.name!r}, the account is {account.name!r}"))
            return out

        self._expect(conn, Expect("AUTH_OK", "R6.5", f"AUTH_OK {account.name}", verify=verify,
                                  judges=("R6.5/registered-name", "R4.1/registered-name")), ordered=True)
        self._mirror_send(conn, AUTH_OK(flags=ListFlags(0), name=account.name, online=()))
        for other in self.online.values():
            if other is not conn:
                self._expect(other, Expect("JOINED", "R8.1", f"JOINED {account.name}", key=key,
                                           verify=lambda m, n=account.name: [] if m.name == n else
                                           [("R8.1", f"JOINED names {m.name!r}, not {n!r}")]), ordered=True)
                self._mirror_send(other, JOINED(name=account.name))
        for item in self.stored.pop(key, []):
            self._expect_deliver(conn, item, stored=True)

    def _expect_fatal_replaced(self, old: Conn) -> None:
        def verify(m: Message) -> list[tuple[str, str]]:
            if m.code != ErrorCode.SESSION_REPLACED or not m.flags & ErrorFlags.FATAL:
                return [("R6.6", f"the replaced session got ERROR {m.code.name}, expected fatal SESSION_REPLACED")]
            return []

        self._expect(old, Expect("ERROR", "R6.6", "fatal ERROR SESSION_REPLACED", verify=verify), ordered=True)
        self._mirror_send(old, ERROR(code=ErrorCode.SESSION_REPLACED, flags=ErrorFlags.FATAL, regarding=0, rule="R6.6", reason=""))
        self._expect(old, Expect("CLOSE", "R10.4", "close after the fatal ERROR"))
        self._session_ends(old, LeftReason.REPLACED, wait_for_close=True)

    def _session_ends(self, conn: Conn, reason: LeftReason, *, wait_for_close: bool = False) -> None:
        """The model's server forgets ``conn``: every other authenticated session sees LEFT (R8.2)."""
        account = conn.account
        if not wait_for_close:
            self._mirror_closed(conn)
        if account is None or self.online.get(account.key) is not conn:
            return
        del self.online[account.key]
        observers = [c for c in self.online.values() if c.open]
        if not observers and reason is LeftReason.DROPPED:
            self.fuzzy.add(account.key)
            self.were_fuzzy.add(account.key)  # nobody can see when the server notices (R10.5)
        for other in observers:
            self._expect(other, Expect(
                "LEFT", "R8.2", f"LEFT {account.name} {reason.name}", key=account.key,
                verify=lambda m, r=reason, n=account.name: (
                    [] if m.reason == r and m.name == n else
                    [("R8.2/reason", f"LEFT {m.name} {m.reason.name}, expected LEFT {n} {r.name}")]),
                judges=("R8.2/reason", *({LeftReason.DROPPED: ("R10.5",), LeftReason.REPLACED: ("R6.6",)}
                                         .get(reason, ())))),
                ordered=True)
            self._mirror_send(other, LEFT(reason=reason, name=account.name))

    def _on_MSG(self, conn: Conn, msg: Message) -> None:
        sender = conn.account
        assert sender is not None
        online = {k: c for k, c in self.online.items() if c.open}
        plan = route(sender.key, msg.recipients, online,
                     lambda key: a.name if (a := self.by_key.get(key)) is not None else None, name_key)
        token: dict[str, Any] = {"server_msg_id": None, "text": msg.text, "sender": sender.name,
                                 "directed": plan.directed}
        lossy_keys = set()
        delivered = lossy = 0
        for target in plan.live:
            if not target.open:
                continue
            _, replaced = reencode(msg.text, target.judge.encoding)
            delivered += 1
            if replaced:
                lossy += 1
                lossy_keys.add(target.account.key if target.account else "")
            self._expect_deliver(target, token, stored=False)
        for key, _ in plan.stored:
            self.stored.setdefault(key, []).append(token)
        if not plan.directed:
            self.passed("R7.7/broadcast-not-stored")
        results = [(n, Outcome.LOSSY if o is Outcome.DELIVERED and name_key(n) in lossy_keys else o)
                   for n, o in plan.results]
        fuzzy = set(self.fuzzy)

        def verify(m: Message) -> list[tuple[str, str]]:
            out = []
            token["server_msg_id"] = m.server_msg_id
            if m.msg_id != msg.msg_id:
                out.append(("R7.3/msg-id", f"MSG_ACK msg_id={m.msg_id}, the MSG's is {msg.msg_id}"))
            if m.server_msg_id <= self.last_server_msg_id:
                out.append(("R7.3/increasing", f"server_msg_id {m.server_msg_id} is not above the earlier "
                                                f"{self.last_server_msg_id}"))
            self.last_server_msg_id = max(self.last_server_msg_id, m.server_msg_id)
            got = [(r.name, r.outcome) for r in m.results]
            for name, outcome in got:  # an unobserved drop: the server may not have noticed it yet
                held = self.stored.get(name_key(name), [])
                if name_key(name) in fuzzy and outcome is not Outcome.QUEUED:
                    held[:] = [t for t in held if t is not token]
            if len(got) != len(results) or any(
                gn != en or (go != eo and not (name_key(en) in fuzzy and go in (Outcome.QUEUED, Outcome.DELIVERED, Outcome.LOSSY)))
                for (gn, go), (en, eo) in zip(got, results, strict=False)
            ):
                out.append(("R7.4/outcome", "MSG_ACK results " + ", ".join(f"{n}={o.name}" for n, o in got)
                            + "; expected " + ", ".join(f"{n}={o.name}" for n, o in results)))
            if not fuzzy and (m.delivered, m.lossy) != (delivered, lossy):
                out.append(("R7.4/counts", f"MSG_ACK delivered={m.delivered} lossy={m.lossy}, expected "
                                           f"delivered={delivered} lossy={lossy}"))
            return out

        self._expect(conn, Expect("MSG_ACK", "R7.3", f"MSG_ACK {msg.msg_id}", verify=verify,
                                  judges=("R7.3/msg-id", "R7.3/increasing", "R7.4/outcome", "R7.4/counts")), ordered=True)
        self._mirror_send(conn, MSG_ACK(msg_id=msg.msg_id, server_msg_id=0, delivered=0, lossy=0, results=()))
        self.current_msg = (conn, msg, plan.directed)

    def _expect_deliver(self, target: Conn, token: dict[str, Any], *, stored: bool) -> None:
        text, replaced = reencode(token["text"], target.judge.encoding)

        def verify(m: Message) -> list[tuple[str, str]]:
            out = []
            if token["server_msg_id"] is not None and m.server_msg_id != token["server_msg_id"]:
                out.append(("R7.5/id", f"DELIVER id={m.server_msg_id}, the MSG_ACK said {token['server_msg_id']}"))
            if m.sender != token["sender"]:
                out.append(("R7.5/sender", f"DELIVER from {m.sender!r}, the sender is {token['sender']!r}"))
            if m.text != text:
                check = "R3.5" if not (m.flags & DeliverFlags.LOSSY) or replaced else "R3.2"
                out.append((check, f"DELIVER text {m.text!r} in {target.judge.encoding}, expected {text!r}"
                                   + (" (lossy)" if replaced else "")))
            if bool(m.flags & DeliverFlags.LOSSY) != bool(replaced):
                out.append(("R3.5/flag", f"DELIVER LOSSY flag is {'set' if m.flags & DeliverFlags.LOSSY else 'clear'}"
                                         f" for {token['text']!r} in {target.judge.encoding}"))
            if bool(m.flags & DeliverFlags.DIRECTED) != token["directed"]:
                out.append(("R7.5/directed", "DELIVER DIRECTED flag wrong"))
            if bool(m.flags & DeliverFlags.STORED) != stored:
                out.append(("R7.7/stored-flag", f"DELIVER STORED flag {'set' if not stored else 'missing'}"))
            return out

        check = "R7.7" if stored else "R7.1"
        self._expect(target, Expect("DELIVER", check, f"DELIVER from {token['sender']}: {token['text']!r}",
                                    key=token, verify=verify,
                                    judges=("R7.5/id", "R7.5/sender", "R3.5", "R3.5/flag", "R7.5/directed",
                                            "R7.7/stored-flag", "R3.2", *(("R3.3",) if "\ufeff" in token["text"] else ()),
                                            *(("R3.6",) if stored else ()), *(("R7.7/order",) if stored else ()),
                                            *(("R7.8",) if target.account is not None and
                                              target.account.name == token["sender"] else ()))),
                      ordered=stored)
        self._mirror_send(target, DELIVER(server_msg_id=0, timestamp_ms=0, flags=DeliverFlags(0), sender=token["sender"], text=""))

    def _on_LIST(self, conn: Conn, _: Message) -> None:
        expected = self._online_names()
        self._expect(conn, Expect("USERS", "R8.3", "USERS", verify=self._list_verifier("R8.3", expected)), ordered=True)
        self._mirror_send(conn, USERS(flags=ListFlags(0), online=()))

    def _on_PING(self, conn: Conn, ping: Message) -> None:
        nonce = ping.nonce
        self._expect(conn, Expect("PONG", "R9.1", f"PONG {nonce}", key=nonce,
                                  verify=lambda m: [] if m.nonce == nonce else
                                  [("R9.1", f"PONG nonce {m.nonce}, the PING's was {nonce}")]), ordered=True)
        self._mirror_send(conn, PONG(nonce=nonce))

    def _on_QUIT(self, conn: Conn, _: Message) -> None:
        self._expect(conn, Expect("BYE", "R10.2", "BYE QUIT",
                                  judges=("R10.1",),
                                  verify=lambda m: [] if m.reason == ByeReason.QUIT else
                                  [("R10.2", f"BYE {m.reason.name} after QUIT")]), ordered=True)
        self._mirror_send(conn, BYE(reason=ByeReason.QUIT))
        if not self.lenient:
            self._expect(conn, Expect("CLOSE", "R10.2/close", "close after BYE"))
        self._session_ends(conn, LeftReason.QUIT, wait_for_close=not self.lenient)

    def _on_ERROR(self, conn: Conn, error: Message) -> None:
        if error.flags & ErrorFlags.FATAL:  # we gave up, and close (R10.4): the others see LEFT ERROR (R8.2)
            self._session_ends(conn, LeftReason.ERROR)
            self._note(conn, "closes after its fatal ERROR")
            self._close(conn)

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
            self._session_ends(conn, LeftReason.DROPPED)
            return
        message: Message = event
        for check in _EVERY_FRAME:
            self.passed(check)
        bad_before = len(self.failures)
        arrow_at = len(self.chart.events)
        self._arrow(conn, label(message), outgoing=False)
        if message.NAME == "PING":  # the server MAY ping after AUTH_OK (R9.1, R9.2)
            self._mirror_send(conn, message)
            if not conn.silent and conn.judge.can_send(PONG):
                data = conn.judge.send(PONG(nonce=message.nonce))
                self._arrow(conn, f"PONG {message.nonce}", outgoing=True)
                self._write(conn, data, ())
                self._model_received(conn, data)
            elif conn.silent:
                self.passed("R9.2/ping")  # SHOULD: pinged before the timeout
            return
        if message.NAME == "HELLO_OK":
            conn.hello_ok = message
            self.limits = dataclasses.replace(self.limits, **{
                k: getattr(message, k) for k in ("max_text", "idle_timeout_s", "max_recipients", "login_attempts")})
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
            rule = "R9.2" if conn.account is not None else "R6.8"
            if silent >= self.limits.idle_timeout_s - _BACKOFF_SLACK_S:  # allowed whenever we were silent
                self.passed(f"{rule}/timeout")
                self._mirror_send(conn, message)
                self._expect(conn, Expect("CLOSE", "R10.4", "close after the fatal ERROR"))
                self._session_ends(conn, LeftReason.TIMEOUT, wait_for_close=True)
                return
            check, why = f"{rule}/timeout", f"IDLE_TIMEOUT after {silent:.2f} s, before the announced " \
                                            f"{self.limits.idle_timeout_s} s"
        elif name == "ERROR":
            check, why = ("R11.3" if conn.account else "R6.7"), f"ERROR {message.code.name} ({message.reason!r}) for nothing wrong"
        elif name == "BYE":
            check, why = "R10.2", f"BYE {message.reason.name} without QUIT"
        elif name == "PONG":
            check, why = "R9.1", f"PONG {message.nonce} for no PING"
        else:
            check, why = "R12.2", f"{name} was not expected"
        self.fail(check, f"{conn.label}: {why}")

    def _refused_login(self, conn: Conn, error: Message) -> None:
        """R9.5: a server MAY refuse a PASS beyond its login rate: undo the login the model expected."""
        self.passed("R9.5")
        self._note(conn, "login refused: the target's login rate bound (R9.5)")
        conn.expects = [e for e in conn.expects if e.kind not in ("AUTH_OK", "AUTH_FAILED")]
        account = conn.account
        if account is not None and self.online.get(account.key) is conn:
            del self.online[account.key]
            held = [e.key for e in conn.expects if e.kind == "DELIVER"]
            if held:
                self.stored[account.key] = held + self.stored.get(account.key, [])
            for other in self.online.values():
                other.expects = [e for e in other.expects if not (e.kind == "JOINED" and e.key == account.key)]
        conn.expects.clear()
        conn.account = None
        self._mirror_send(conn, error)
        self._expect(conn, Expect("CLOSE", "R10.4", "close after the fatal ERROR"))

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
            self._mirror_closed(conn)
            return
        if conn.finished:
            return
        state = conn.judge.state
        if conn.account is not None and self.online.get(conn.account.key) is conn:
            self.fail("R11.3", f"{conn.label}: the target closed an authenticated session in {state} without BYE or "
                               "a fatal ERROR")
        else:
            self.fail("R10.4", f"{conn.label}: the target closed the session in {state} without BYE or a fatal ERROR")
        self._mirror_closed(conn)
        self._session_ends(conn, LeftReason.DROPPED)

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
        self._model_received(conn, data)

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
