"""Everything the reference server decides, written once: events in, effects out.

Rules this module keeps (h11's discipline, one level up from the engine):

* Every decision of the server lives here: handshake answers, login and its
  back-off, who is online, where a MSG goes and what each recipient sees,
  what is stored and when it is forgotten, presence, paging, idle sessions,
  the per-connection and per-address limits, shutdown. Nothing else in the
  project decides these, and nothing restates them: the asyncio server
  (:mod:`dfachat.server.app`), the model checker
  (:mod:`dfachat.conformance.checker`) and the fuzzer's oracle
  (:mod:`dfachat.conformance.fuzz.oracle`) all run this class.
* No I/O, no clock, no threads. Time is an argument (``now``, seconds on any
  monotonic scale, plus :attr:`CoreConfig.clock_offset_ms` for timestamps).
  Inputs are method calls (a connection opened, bytes or a message received,
  the peer closed, a password check finished, a back-off elapsed, a timer
  tick, shutdown); outputs go through one small interface, :class:`Effects`
  (send a frame, close, check a password, start a back-off, log), that each
  world implements its own way.
* Storage and presence are behind :class:`~dfachat.server.storage.Storage` and
  :class:`~dfachat.server.storage.Presence`, so SQLite, a dict or a cluster's
  broker serve the same decisions.
* Handlers are dispatched from the spec: one ``on_<MESSAGE>`` per type a client
  may send, checked when this module is imported (R12.1).

A connection's state is one :class:`CoreConnection`: its engine
(:class:`~dfachat.fsm.ServerSession`) and what the server keeps beside it.
:meth:`CoreConnection.snapshot` and :meth:`ServerCore.adopt` turn it into a
value and back, which is how the model checker stores the core in its states.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from dfachat.codec import encode
from dfachat.codec.messages import (  # type: ignore[attr-defined]
    AUTH_FAILED,
    AUTH_OK,
    BYE,
    DELIVER,
    HELLO_OK,
    JOINED,
    LEFT,
    MSG_ACK,
    PASS,
    PING,
    PONG,
    USERS,
    Message,
    RecipientResult,
)
from dfachat.errors import LocalProtocolError, SpecError
from dfachat.fsm import (
    TABLES,
    ConnectionClosed,
    ProtocolViolation,
    ServerSession,
    SessionSnapshot,
    make_error,
)
from dfachat.server.routing import Route, reencode, route
from dfachat.server.storage import Account, Presence, Storage, name_key
from dfachat.server.tls import looks_like_tls
from dfachat.spec import (
    ENCODINGS,
    LIMITS,
    MESSAGES,
    SUPPORTED_VERSIONS,
    ByeReason,
    DeliverFlags,
    ErrorCode,
    LeftReason,
    Limits,
    ListFlags,
    Outcome,
)

__all__ = [
    "PUSHABLE",
    "ConnectionSnapshot",
    "CoreConfig",
    "CoreConnection",
    "Effects",
    "ServerCore",
    "encode_by_encoding",
    "pages",
]

_SERVER_TABLE = TABLES["server"]
# States in which a push (DELIVER, JOINED, LEFT) is a legal internal move, read from the table (R8.4).
PUSHABLE = (
    _SERVER_TABLE.internal_sends(DELIVER.TYPE)
    & _SERVER_TABLE.internal_sends(JOINED.TYPE)
    & _SERVER_TABLE.internal_sends(LEFT.TYPE)
)
DEBUG, INFO, WARNING, ERROR = logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR


@dataclass(frozen=True, slots=True)
class CoreConfig:
    limits: Limits = LIMITS
    software: str = "dfachat"  # announced in HELLO_OK
    max_connections: int = 10_000  # in total (R1.4)
    tls: bool = False  # the shell serves TLS: a TLS hello on plaintext is not expected
    clock_offset_ms: int = 0  # wall-clock milliseconds at now == 0 (DELIVER timestamps)
    log_level: int = INFO  # effects below this level are not produced (their fields cost)


class Effects(Protocol):
    """What the core asks of the world around it. Each world (the asyncio server, the
    checker's model, the fuzzer's oracle) implements these five its own way."""

    def send(self, conn: CoreConnection, message: Message, frame: bytes) -> None:
        """Write ``frame`` (``message`` encoded for ``conn``) to the connection, in order."""

    def close(self, conn: CoreConnection, abort: bool) -> None:
        """Close the connection once what was sent is written; ``abort``: drop what is unwritten."""

    def check_password(self, conn: CoreConnection, name: str, password: str) -> None:
        """Check the login and answer with :meth:`ServerCore.password_checked` (the connection
        takes no other input until then)."""

    def start_backoff(self, conn: CoreConnection, delay_ms: int) -> None:
        """Wait ``delay_ms``, then call :meth:`ServerCore.backoff_elapsed` (R6.4)."""

    def log(self, level: int, event: str, text: str, fields: dict[str, Any]) -> None:
        """Record what happened: ``event`` names it, ``fields`` carry its facts."""


class ConnectionSnapshot(NamedTuple):
    """A :class:`CoreConnection` between events, as a hashable value (time fields aside)."""

    session: SessionSnapshot
    key: str | None
    login_name: str | None
    busy: bool
    pinged: bool
    left_reason: LeftReason


class CoreConnection:
    """One client's session as the core sees it: the engine and what the server keeps beside it."""

    __slots__ = (
        "id",
        "handle",
        "address",
        "peer",
        "session",
        "key",
        "login_name",
        "busy",
        "pinged",
        "last_seen",
        "left_reason",
        "closed",
        "backlog",
        "tokens",
        "refilled",
        "fresh",
    )

    def __init__(self, conn_id: int, handle: Any, address: str, peer: str, session: ServerSession, now: float) -> None:
        self.id = conn_id
        self.handle = handle  # whatever the world addresses this connection by
        self.address = address  # the peer's address without the port (R1.5, R9.5)
        self.peer = peer
        self.session = session
        self.key: str | None = None  # account key once authenticated
        self.login_name: str | None = None  # the name USER asked for
        self.busy = False  # a password check or back-off is under way: later input waits
        self.pinged = False
        self.last_seen = now
        self.left_reason = LeftReason.DROPPED
        self.closed = False  # the core has closed it: nothing more goes in or out
        self.backlog = 0  # bytes of stored messages being delivered: exempt from R9.3's bound
        self.tokens = 0.0  # the receive token bucket (R9.4)
        self.refilled = now
        self.fresh = True  # nothing received yet

    def snapshot(self) -> ConnectionSnapshot:
        return ConnectionSnapshot(
            self.session.snapshot(), self.key, self.login_name, self.busy, self.pinged, self.left_reason
        )

    def __repr__(self) -> str:
        return f"<CoreConnection {self.id} {self.session.state} key={self.key!r}>"


def pages(names: list[str], size: int) -> list[tuple[str, ...]]:
    """Names split into AUTH_OK/USERS frames of at most ``size`` (R4.9); one empty page for none."""
    return [tuple(names[i : i + size]) for i in range(0, len(names), size)] or [()]


def encode_by_encoding(message: Message) -> Callable[[str], bytes]:
    """``message``'s frame per encoding, each encoded once (a push to many sessions)."""
    cache: dict[str, bytes] = {}

    def frame(encoding: str) -> bytes:
        data = cache.get(encoding)
        if data is None:
            data = cache[encoding] = encode(message, encoding)
        return data

    return frame


class ServerCore:
    """The server's decisions over a :class:`Storage`, a :class:`Presence` and an :class:`Effects`."""

    handlers: dict[int, str]  # message type -> name of its handler method (from the spec)
    _handler_functions: dict[int, Callable[..., None]]  # the same, as this class's functions

    def __init__(
        self,
        storage: Storage,
        effects: Effects,
        config: CoreConfig | None = None,
        *,
        presence: Presence | None = None,
    ) -> None:
        self.storage = storage
        self.effects = effects
        self.config = config or CoreConfig()
        self.limits = self.config.limits  # may be replaced between inputs (a client adopts announced ones)
        self.presence = presence if presence is not None else Presence()
        self.connections: dict[int, CoreConnection] = {}
        self.per_address: dict[str, int] = {}  # open connections per peer address (R1.5)
        # failed logins, for the back-off (R6.4): key -> (count, time of the last failure)
        self.failures_by_account: dict[str, tuple[int, float]] = {}
        self.failures_by_address: dict[str, tuple[int, float]] = {}
        self.logins_by_address: dict[str, deque[float]] = {}  # times of recent PASS frames (R9.5)
        self.shutting_down = False
        self._next_id = 1

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _check_handlers(cls)

    # --- logging -----------------------------------------------------------------------------
    def _log(self, level: int, event: str, text: str, **fields: Any) -> None:
        if level >= self.config.log_level:
            self.effects.log(level, event, text, fields)

    # --- connections ---------------------------------------------------------------------------
    def connection_opened(self, handle: Any, address: str, peer: str, now: float) -> CoreConnection:
        """A transport is up. The connection may be refused (and closed) at once: see ``closed``."""
        conn = CoreConnection(self._next_id, handle, address, peer, self.new_session(), now)
        self._next_id += 1
        conn.tokens = float(self.limits.max_burst_bytes)
        self.connections[conn.id] = conn
        from_address = self.per_address[address] = self.per_address.get(address, 0) + 1
        if self.shutting_down:  # accepted just before the listener closed: not served (R10.3)
            self._goodbye(conn)
        elif len(self.connections) > self.config.max_connections:
            self._log(WARNING, "refused", f"refused {peer}: server full", conn=conn.id, peer=peer, rule="R1.4")
            self.end(conn, make_error(ErrorCode.SERVER_FULL, "the server is at capacity"), LeftReason.DROPPED)
        elif from_address > self.limits.max_per_address:
            limit = self.limits.max_per_address
            self._log(
                WARNING, "refused", f"refused {peer}: {limit} connections from {address} already",
                conn=conn.id, peer=peer, rule="R1.5",
            )
            self.end(
                conn,
                make_error(ErrorCode.SERVER_FULL, f"at most {limit} connections from one address", rule="R1.5"),
                LeftReason.DROPPED,
            )
        else:
            self._log(INFO, "accepted", f"connection {conn.id} from {peer}", conn=conn.id, peer=peer)
        return conn

    def new_session(self) -> ServerSession:
        """The engine of a new connection (a world that watches the engine overrides this)."""
        return ServerSession(limits=self.limits)

    def adopt(self, handle: Any, snapshot: ConnectionSnapshot, *, address: str = "", now: float = 0.0) -> CoreConnection:
        """Take over a connection in the state ``snapshot`` describes (the model checker's restore).
        An authenticated one that was online is put back online with :meth:`Presence.add`."""
        conn = CoreConnection(
            self._next_id, handle, address, address, ServerSession.restore(snapshot.session, limits=self.limits), now
        )
        self._next_id += 1
        conn.key, conn.login_name, conn.busy, conn.pinged, conn.left_reason = snapshot[1:]
        conn.tokens = float(self.limits.max_burst_bytes)
        conn.fresh = False
        self.connections[conn.id] = conn
        self.per_address[address] = self.per_address.get(address, 0) + 1
        return conn

    def data_received(self, conn: CoreConnection, data: bytes, now: float) -> None:
        """Bytes from the peer: the rate limit (R9.4), then each whole frame in order."""
        if conn.closed:
            return
        limits = self.limits
        tokens = conn.tokens + (now - conn.refilled) * limits.max_bytes_per_s
        conn.tokens = (tokens if tokens < limits.max_burst_bytes else limits.max_burst_bytes) - len(data)
        conn.refilled = now
        if conn.tokens < 0:
            self.rate_limited(conn)
            return
        if conn.fresh:
            conn.fresh = False
            if not self.config.tls and looks_like_tls(data):
                self.tls_on_plaintext(conn)
                return
        # Activity is a whole frame, not a byte (R9.2): a peer dripping half a frame times out.
        conn.session.feed(data)
        if not conn.busy:
            self.process(conn, now)

    def eof_received(self, conn: CoreConnection, now: float) -> None:
        """The peer closed its side: what it sent before is still answered, then the session ends."""
        if conn.closed:
            return
        conn.session.feed(b"")
        if not conn.busy:
            self.process(conn, now)

    def connection_lost(self, conn: CoreConnection, now: float) -> None:
        """The transport is gone (whoever closed it)."""
        conn.closed = True
        conn.session.close()
        self.leave(conn)
        if self.connections.pop(conn.id, None) is not None:
            left = self.per_address.get(conn.address, 0) - 1
            if left > 0:
                self.per_address[conn.address] = left
            else:
                self.per_address.pop(conn.address, None)
        reason = conn.left_reason.name
        self._log(
            INFO, "closed", f"connection {conn.id} closed ({reason.lower()})", conn=conn.id, peer=conn.peer, reason=reason
        )

    def output_pending(self, conn: CoreConnection, size: int) -> None:
        """The world's report of bytes written but not yet taken by the peer (R9.3)."""
        limit = self.limits.max_output_buffer
        if size > limit + conn.backlog:
            self.slow_consumer(conn)
        elif conn.backlog and size <= limit:
            conn.backlog = 0  # the stored messages have drained: the plain bound again

    # --- events, one at a time -------------------------------------------------------------------
    def process(self, conn: CoreConnection, now: float) -> None:
        """Handle buffered events until more bytes are needed or the connection waits."""
        session = conn.session
        while not conn.busy and not conn.closed:
            event = session.next_event()
            if event is None:
                return
            self.handle(conn, event, now)

    def handle(self, conn: CoreConnection, event: Any, now: float) -> None:
        """One event of ``conn``'s engine: a message, a protocol violation or the end of input.
        ``None`` (input discarded, R12.4) is activity and nothing else."""
        conn.last_seen = now
        conn.pinged = False
        try:
            if isinstance(event, Message):
                self._handler_functions[event.TYPE](self, conn, event, now)
            elif isinstance(event, ProtocolViolation):
                self.protocol_violation(conn, event)
            elif isinstance(event, ConnectionClosed):
                self.peer_closed(conn, event)
        except Exception as exc:  # a bug of ours: this session ends (R11.4), the server carries on
            self.internal_error(conn, event, exc)

    # --- output ------------------------------------------------------------------------------------
    def send(self, conn: CoreConnection, message: Message) -> None:
        """Run ``message`` through the engine and send its frame."""
        self.effects.send(conn, message, conn.session.send(message))

    def push_all(self, message: Message, *, exclude: CoreConnection | None) -> None:
        """Push one frame, encoded once per encoding, to every online session but ``exclude``."""
        frames = encode_by_encoding(message)
        send = self.effects.send
        for other in self.presence.sessions():
            session = other.session
            if other is not exclude and session._state in PUSHABLE:
                send(other, message, frames(session._encoding))

    def end(self, conn: CoreConnection, error: Message | None, reason: LeftReason, *, abort: bool = False) -> None:
        """End the session now: an optional last frame (fatal ERROR or BYE), leave, close."""
        conn.left_reason = reason
        session = conn.session
        if error is not None and not session.closed:
            with contextlib.suppress(LocalProtocolError):  # the state allows no last word: just close
                self.send(conn, error)
        session.close()
        self.leave(conn)
        self._close(conn, abort)

    def _close(self, conn: CoreConnection, abort: bool = False) -> None:
        if not conn.closed:
            conn.closed = True
            self.effects.close(conn, abort)

    def leave(self, conn: CoreConnection) -> None:
        """Take an authenticated connection off the online list; LEFT to the others, once (R8.2)."""
        key = conn.key
        if key is None or not self.presence.remove(key, conn):
            return
        name = conn.session.user or key
        self.push_all(LEFT(reason=conn.left_reason, name=name), exclude=None)
        self._log(INFO, "left", f"{name} left ({conn.left_reason.name.lower()})", conn=conn.id, user=name)

    def _goodbye(self, conn: CoreConnection) -> None:
        """BYE SHUTDOWN where the state allows it, then close (R10.3)."""
        if not conn.session.closed:
            conn.left_reason = LeftReason.DROPPED
            with contextlib.suppress(LocalProtocolError):
                self.send(conn, BYE(reason=ByeReason.SHUTDOWN))
        self._close(conn)

    def shutdown(self) -> None:
        """Stop serving: BYE to every session (R10.3) and close; later connections get the same."""
        self.shutting_down = True
        for conn in list(self.connections.values()):
            self._goodbye(conn)

    # --- what goes wrong ---------------------------------------------------------------------------
    def peer_closed(self, conn: CoreConnection, event: ConnectionClosed) -> None:
        if event.error is not None:
            self._log(INFO, "truncated", f"connection {conn.id}: {event.error}", conn=conn.id, peer=conn.peer, rule=event.error.rule)
        self.end(conn, None, conn.left_reason)

    def protocol_violation(self, conn: CoreConnection, event: ProtocolViolation) -> None:
        self._log(
            WARNING, "protocol_error", f"connection {conn.id}: {event}",
            conn=conn.id, peer=conn.peer, rule=event.rule, state=event.state, fatal=event.fatal,
        )
        if event.fatal:
            self.end(conn, event.reply, LeftReason.ERROR)
        else:
            self.send(conn, event.reply)

    def internal_error(self, conn: CoreConnection, event: object, exc: BaseException) -> None:
        self._log(
            ERROR, "internal_error", f"connection {conn.id}: internal error handling {event!r}",
            conn=conn.id, peer=conn.peer, exc=exc,
        )
        if not conn.closed:
            self.end(conn, make_error(ErrorCode.INTERNAL_ERROR, "the server failed handling your frame"), LeftReason.ERROR)

    def slow_consumer(self, conn: CoreConnection) -> None:
        """R9.3: the peer does not read. Say so, then drop the connection and what it holds."""
        self._log(WARNING, "slow_consumer", f"connection {conn.id}: slow consumer", conn=conn.id, rule="R9.3")
        self.end(conn, make_error(ErrorCode.SLOW_CONSUMER, "your unread output exceeded the limit"), LeftReason.ERROR, abort=True)

    def rate_limited(self, conn: CoreConnection) -> None:
        """R9.4: the peer sent more than its token bucket allows."""
        limits = self.limits
        self._log(
            WARNING, "rate_limited", f"connection {conn.id} from {conn.peer}: over {limits.max_bytes_per_s} bytes per second",
            conn=conn.id, peer=conn.peer, rule="R9.4",
        )
        detail = f"more than {limits.max_bytes_per_s} bytes per second (bursts up to {limits.max_burst_bytes})"
        self.end(conn, make_error(ErrorCode.RATE_LIMITED, detail, rule="R9.4"), LeftReason.ERROR)

    def tls_on_plaintext(self, conn: CoreConnection) -> None:
        """A TLS client on this plaintext port: one log line, and BAD_MAGIC (R2.1) it cannot read."""
        self._log(
            WARNING, "tls_on_plaintext", f"refused {conn.peer}: a TLS client, but this server does not speak TLS",
            conn=conn.id, peer=conn.peer,
        )
        self.end(conn, make_error(ErrorCode.BAD_MAGIC, "this server does not speak TLS", rule="R2.1"), LeftReason.ERROR)

    # --- time: idle sessions (R6.8, R9.2) and old records (R6.4, R9.5) -------------------------------
    def tick(self, now: float) -> None:
        """Called every second or so: PING the quiet, time out the silent, forget old records."""
        limits = self.limits
        for conn in list(self.connections.values()):
            if conn.closed or conn.busy:
                continue
            silent = now - conn.last_seen
            if silent >= limits.idle_timeout_s:
                self.timed_out(conn)
            elif silent >= limits.idle_timeout_s / 2 and not conn.pinged and conn.session.state in PUSHABLE:
                self.keepalive(conn, now)
        for table in (self.failures_by_account, self.failures_by_address):
            for key in [k for k, (_, last) in table.items() if now - last > limits.backoff_window_s]:
                del table[key]
        logins = self.logins_by_address
        for key in [k for k, times in logins.items() if not times or now - times[-1] >= 60]:
            del logins[key]

    def keepalive(self, conn: CoreConnection, now: float) -> None:
        """PING a quiet authenticated session (R9.1)."""
        conn.pinged = True
        self.send(conn, PING(nonce=int(now * 1000) & 0xFFFFFFFF))

    def timed_out(self, conn: CoreConnection) -> None:
        limits = self.limits
        rule = "R9.2" if conn.session.authenticated else "R6.8"
        self.end(
            conn,
            make_error(ErrorCode.IDLE_TIMEOUT, f"nothing received for {limits.idle_timeout_s} s", rule=rule),
            LeftReason.TIMEOUT,
        )

    # --- handlers: one per message a client may send ------------------------------------------------
    def on_HELLO(self, conn: CoreConnection, hello: Message, now: float) -> None:
        common = set(hello.versions) & set(SUPPORTED_VERSIONS)
        if not common:
            detail = f"this server speaks versions {SUPPORTED_VERSIONS}"
            # R11.1: regarding names the frame it is about
            error = make_error(ErrorCode.UNSUPPORTED_VERSION, detail, rule="R5.2", regarding=hello.TYPE)
            self.end(conn, error, LeftReason.ERROR)
        elif hello.encoding not in ENCODINGS:
            detail = f"{hello.encoding!r} is not supported; use one of {', '.join(ENCODINGS)}"
            self.end(conn, make_error(ErrorCode.UNSUPPORTED_ENCODING, detail, regarding=hello.TYPE), LeftReason.ERROR)
        else:
            limits = self.limits
            self.send(
                conn,
                HELLO_OK(
                    version=max(common),
                    max_frame=limits.max_frame,
                    max_text=limits.max_text,
                    idle_timeout_s=limits.idle_timeout_s,
                    max_recipients=limits.max_recipients,
                    login_attempts=limits.login_attempts,
                    encoding=hello.encoding,
                    software=self.config.software,
                ),
            )

    def on_USER(self, conn: CoreConnection, user: Message, now: float) -> None:
        conn.login_name = user.name  # no answer, whether or not it exists (R6.2)

    def on_PASS(self, conn: CoreConnection, password: Message, now: float) -> None:
        if not self._login_allowed(conn.address, now):
            limit = self.limits.max_logins_per_minute
            self._log(
                WARNING, "rate_limited", f"connection {conn.id}: more than {limit} logins from {conn.address} in 60 s",
                conn=conn.id, peer=conn.peer, rule="R9.5",
            )
            detail = f"more than {limit} login attempts from {conn.address} in 60 s; try again later"
            self.end(conn, make_error(ErrorCode.RATE_LIMITED, detail, rule="R9.5", regarding=PASS.TYPE), LeftReason.ERROR)
            return
        conn.busy = True  # later input waits until the check (and any back-off) is done
        self.effects.check_password(conn, conn.login_name or "", password.password)

    def _login_allowed(self, address: str, now: float) -> bool:
        """R9.5: record one PASS from ``address``; False when it is over the per-minute bound."""
        times = self.logins_by_address.setdefault(address, deque())
        while times and now - times[0] >= 60:
            times.popleft()
        if len(times) >= self.limits.max_logins_per_minute:
            return False
        times.append(now)
        return True

    def password_checked(self, conn: CoreConnection, account: Account | None, now: float) -> None:
        """The check asked for by ``check_password`` is done: the account, or None (wrong)."""
        if conn.closed:
            conn.busy = False
            return
        if account is not None:
            self.failures_by_account.pop(account.key, None)
            try:
                self.login(conn, account.name, account.key)
            except Exception as exc:
                self.internal_error(conn, PASS, exc)
            self._resume(conn, now)
            return
        name = conn.login_name or ""
        key = name_key(name)
        delay = self.backoff_ms(key, conn.address, now)
        self._record_failure(key, conn.address, now)
        self.effects.start_backoff(conn, delay)

    def backoff_elapsed(self, conn: CoreConnection, now: float) -> None:
        """The back-off after a wrong password is over: AUTH_FAILED (R6.3, R6.4)."""
        if conn.closed:
            conn.busy = False
            return
        left = max(self.limits.login_attempts - conn.session.failed_logins - 1, 0)
        name = conn.login_name or ""
        self._log(INFO, "auth_failed", f"connection {conn.id}: failed login as {name!r} ({left} left)", conn=conn.id, peer=conn.peer, user=name)
        try:
            self.send(conn, AUTH_FAILED(attempts_left=left))
        except Exception as exc:
            self.internal_error(conn, PASS, exc)
        if conn.session.closed and not conn.closed:  # the last attempt (R6.3)
            conn.left_reason = LeftReason.ERROR
            self._close(conn)
        self._resume(conn, now)

    def _resume(self, conn: CoreConnection, now: float) -> None:
        conn.busy = False
        if not conn.closed:
            self.process(conn, now)

    def backoff_ms(self, key: str, address: str, now: float) -> int:
        """The delay before this AUTH_FAILED (R6.4): doubled per earlier recent failure."""
        limits = self.limits
        earlier = 0
        for table, k in ((self.failures_by_account, key), (self.failures_by_address, address)):
            count, last = table.get(k, (0, 0.0))
            if count and now - last <= limits.backoff_window_s:
                earlier = max(earlier, count)
        return min(limits.backoff_base_ms << earlier, limits.backoff_max_ms)

    def _record_failure(self, key: str, address: str, now: float) -> None:
        window = self.limits.backoff_window_s
        for table, k in ((self.failures_by_account, key), (self.failures_by_address, address)):
            count, last = table.get(k, (0, 0.0))
            table[k] = (count + 1 if now - last <= window else 1, now)

    def login(self, conn: CoreConnection, name: str, key: str) -> None:
        """AUTH_OK with who is online, JOINED to the others, then what was stored for ``key``."""
        previous = self.presence.get(key)
        if previous is not None:  # R6.6: the new session wins
            error = make_error(ErrorCode.SESSION_REPLACED, f"{name} logged in from another session")
            self.end(previous, error, LeftReason.REPLACED)
        conn.key = key
        self.presence.add(key, conn)
        online = [c.session.user or k for k, c in self.presence.items() if c is not conn] + [name]
        split = pages(online, self.limits.max_names_per_frame)
        more = ListFlags.MORE if len(split) > 1 else ListFlags(0)
        self.send(conn, AUTH_OK(flags=more, name=name, online=split[0]))
        for i, page in enumerate(split[1:], 2):
            self.send(conn, USERS(flags=ListFlags.MORE if i < len(split) else ListFlags(0), online=page))
        self.push_all(JOINED(name=name), exclude=conn)
        self._log(INFO, "login", f"connection {conn.id}: {name} logged in", conn=conn.id, user=name, login_name=conn.login_name)
        self.deliver_stored(conn, key)

    def deliver_stored(self, conn: CoreConnection, key: str) -> None:
        stored = self.storage.stored_for(key)
        if not stored:
            return
        encoding = conn.session.encoding
        sent = 0
        for item in stored:
            text, replaced = reencode(item.text, encoding)
            flags = DeliverFlags(item.flags) | DeliverFlags.STORED
            if replaced:
                flags |= DeliverFlags.LOSSY
            message = DELIVER(
                server_msg_id=item.server_msg_id, timestamp_ms=item.timestamp_ms, flags=flags, sender=item.sender, text=text
            )
            frame = conn.session.send(message)
            sent += len(frame)
            self.effects.send(conn, message, frame)
        # Forgotten once handed to the transport (R7.7). The backlog is what the server chose to
        # send at once, not output the client failed to read: it does not count against the
        # slow-consumer bound (R9.3), or a long backlog would be cut off and lost.
        conn.backlog = sent
        self.storage.forget(item.id for item in stored)

    def on_MSG(self, conn: CoreConnection, msg: Message, now: float) -> None:
        sender = conn.session.user or ""
        plan = self.route(conn, msg.recipients)
        server_msg_id = self.storage.next_msg_id()
        timestamp = int(now * 1000) + self.config.clock_offset_ms
        flags = DeliverFlags.DIRECTED if plan.directed else DeliverFlags(0)
        frames: dict[str, tuple[Message, bytes, bool]] = {}
        delivered = lossy = 0
        lossy_keys: set[str] = set()
        live_keys: list[str] = []
        send = self.effects.send
        for target in plan.live:
            session = target.session
            encoding = session._encoding
            entry = frames.get(encoding)
            if entry is None:
                text, replaced = reencode(msg.text, encoding)
                message = DELIVER(
                    server_msg_id=server_msg_id,
                    timestamp_ms=timestamp,
                    flags=flags | DeliverFlags.LOSSY if replaced else flags,
                    sender=sender,
                    text=text,
                )
                entry = frames[encoding] = (message, encode(message, encoding), bool(replaced))
            if session._state in PUSHABLE:
                send(target, entry[0], entry[1])
                delivered += 1
                if entry[2]:
                    lossy += 1
                    lossy_keys.add(target.key or "")
                if self.config.log_level <= DEBUG:
                    live_keys.append(target.key or "")
        stored_keys = [key for key, _ in plan.stored]
        if stored_keys:  # durable before the MSG_ACK that says QUEUED (R7.7)
            self.storage.store(stored_keys, server_msg_id, timestamp, sender, int(flags), msg.text)
        results = tuple(
            RecipientResult(
                name=name,
                outcome=Outcome.LOSSY if outcome is Outcome.DELIVERED and name_key(name) in lossy_keys else outcome,
            )
            for name, outcome in plan.results
        )
        if self.config.log_level <= DEBUG:
            self._log(
                DEBUG, "routed", f"connection {conn.id}: message {server_msg_id} to {delivered} now, {len(stored_keys)} stored",
                conn=conn.id, sender=conn.key or "", sender_name=sender, recipients=tuple(msg.recipients),
                msg_text=msg.text, online=self.presence.keys(), live=tuple(live_keys), stored=tuple(stored_keys),
                server_msg_id=server_msg_id, results=tuple((r.name, int(r.outcome)) for r in results),
                delivered=delivered, lossy=lossy,
            )
        self.send(conn, MSG_ACK(msg_id=msg.msg_id, server_msg_id=server_msg_id, delivered=delivered, lossy=lossy, results=results))

    def route(self, conn: CoreConnection, recipients: tuple[str, ...]) -> Route[CoreConnection]:
        """Where a MSG from ``conn`` goes (:func:`dfachat.server.routing.route` over who is online)."""
        return route(conn.key or "", recipients, self.presence.by_key, self._account_name, name_key)

    def _account_name(self, key: str) -> str | None:
        account = self.storage.lookup(key)
        return account.name if account else None

    def on_LIST(self, conn: CoreConnection, _: Message, now: float) -> None:
        names = [c.session.user or k for k, c in self.presence.items()]
        split = pages(names, self.limits.max_names_per_frame)
        for i, page in enumerate(split, 1):
            self.send(conn, USERS(flags=ListFlags.MORE if i < len(split) else ListFlags(0), online=page))

    def on_PING(self, conn: CoreConnection, ping: Message, now: float) -> None:
        self.send(conn, PONG(nonce=ping.nonce))

    def on_PONG(self, conn: CoreConnection, _: Message, now: float) -> None:
        pass  # activity is noted on every frame (R9.2)

    def on_QUIT(self, conn: CoreConnection, _: Message, now: float) -> None:
        conn.left_reason = LeftReason.QUIT
        self.send(conn, BYE(reason=ByeReason.QUIT))
        self.leave(conn)
        self._close(conn)

    def on_ERROR(self, conn: CoreConnection, error: Message, now: float) -> None:
        self._log(
            INFO, "client_error", f"connection {conn.id}: client reported {error.code.name}: {error.reason}",
            conn=conn.id, rule=error.rule,
        )
        self.end(conn, None, LeftReason.ERROR)


def _check_handlers(cls: type[ServerCore]) -> None:
    """One handler per message type a client may send, from the spec (R12.1): at import."""
    table: dict[int, str] = {}
    missing = []
    for spec in MESSAGES:
        if spec.sent_by_client:
            if callable(getattr(cls, f"on_{spec.name}", None)):
                table[spec.code] = f"on_{spec.name}"
            else:
                missing.append(spec.name)
    if missing:
        raise SpecError(f"the server core has no handler for {', '.join(missing)}", rule="R12.1")
    cls.handlers = table
    cls._handler_functions = {code: getattr(cls, name) for code, name in table.items()}


_check_handlers(ServerCore)
