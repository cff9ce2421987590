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
    MSG,
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
from dfachat.server.storage import Account, Presence, Storage, StoredMessage, name_key, text_size
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
# States in which a push (JOINED, LEFT, and a version-1 DELIVER) is a legal internal move, read
# from the table (R8.4). A version-2 DELIVER also counts against the window: it goes through the engine.
PUSHABLE = _SERVER_TABLE.internal_sends(JOINED.TYPE) & _SERVER_TABLE.internal_sends(LEFT.TYPE)
DEBUG, INFO, WARNING, ERROR = logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR


@dataclass(frozen=True, slots=True)
class CoreConfig:
    limits: Limits = LIMITS
    software: str = "dfachat"  # announced in HELLO_OK
    max_connections: int = 10_000  # in total (R1.4)
    tls: bool = False  # the shell serves TLS: a TLS hello on plaintext is not expected
    clock_offset_ms: int = 0  # wall-clock milliseconds at now == 0 (DELIVER timestamps)
    log_level: int = INFO  # effects below this level are not produced (their fields cost)
    # Group commit: writes join one open batch, and what a MSG sends waits until the world calls
    # commit() (the asyncio server: once per loop iteration). Off: every write is durable at once.
    group_commit: bool = False


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

    def commit_soon(self) -> None:
        """With :attr:`CoreConfig.group_commit` only: call :meth:`ServerCore.commit` soon (once
        for many writes: the server does it at the end of the event loop's iteration)."""


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
        "window_bytes",
        "cursor",
        "caught_up",
        "login_mark",
        "queued",
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
        # version 2's inbox delivery (R7.10-R7.13):
        self.window_bytes = 0  # a window of DELIVERs: exempt from R9.3's bound
        self.cursor = 0  # the newest inbox message sent to this session
        self.caught_up = False  # every inbox message up to now was sent: new ones may go out directly
        self.login_mark = 0  # inbox messages at or below this id were meant for an earlier session
        # live DELIVERs waiting for room in the window, already encoded: a cache of the inbox's
        # newest messages, so a busy recipient is not served by reading back what was just written
        self.queued: deque[tuple[Message, bytes]] = deque()

    def snapshot(self) -> ConnectionSnapshot:
        return ConnectionSnapshot(
            self.session.snapshot(), self.key, self.login_name, self.busy, self.pinged, self.left_reason
        )

    def __repr__(self) -> str:
        return f"<CoreConnection {self.id} {self.session.state} key={self.key!r}>"


def pages(names: list[str], size: int) -> list[tuple[str, ...]]:
    """Names split into AUTH_OK/USERS frames of at most ``size`` (R4.9); one empty page for none."""
    return [tuple(names[i : i + size]) for i in range(0, len(names), size)] or [()]


def encode_by_encoding(message: Message) -> Callable[[str, int], bytes]:
    """``message``'s frame per encoding and protocol version, each encoded once (a push to many
    sessions)."""
    cache: dict[tuple[str, int], bytes] = {}

    def frame(encoding: str, version: int) -> bytes:
        data = cache.get((encoding, version))
        if data is None:
            data = cache[encoding, version] = encode(message, encoding, version)
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
        # group commit: MSGs stored but not yet durable, with what each sends once it is
        self._batch: list[tuple[CoreConnection, Message, Callable[[], None]]] = []
        self._commit_asked = False
        # the newest message id known durable: what the store held at start, then each commit's
        self._durable_id: float = storage.id_mark() if self.config.group_commit else float("inf")

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
        if size > limit + conn.backlog + conn.window_bytes:
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
                send(other, message, frames(session._encoding, session.version or 1))

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
        if self._batch or self._commit_asked:  # unanswered MSGs were not processed (R10.3)
            self._batch, self._commit_asked = [], False
            with contextlib.suppress(Exception):
                self.storage.rollback()
        with contextlib.suppress(Exception):  # acknowledged: gone from disk too (else REDELIVERED)
            self.storage.tidy()
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
        try:
            self.storage.tidy()
        except Exception as exc:  # kept on disk: they come back REDELIVERED and are dropped (R7.11)
            self._log(WARNING, "tidy_failed", f"could not delete acknowledged messages: {exc}", reason=str(exc))

    def paused(self, seconds: float) -> None:
        """The server could not run for ``seconds`` (its own stall): that time was nobody's
        silence, so it does not count towards an idle timeout (R6.8, R9.2)."""
        self._log(WARNING, "paused", f"the server stalled for {seconds:.1f} s", seconds=round(seconds, 3))
        for conn in self.connections.values():
            conn.last_seen += seconds

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
            version = max(common)
            self.send(
                conn,
                HELLO_OK(
                    version=version,
                    max_frame=limits.max_frame,
                    max_text=limits.max_text,
                    idle_timeout_s=limits.idle_timeout_s,
                    max_recipients=limits.max_recipients,
                    login_attempts=limits.login_attempts,
                    encoding=hello.encoding,
                    software=self.config.software,
                    # version 1 frames do not carry the windows (R7.12, R7.16)
                    deliver_window=limits.deliver_window if version >= 2 else 0,
                    msg_window=limits.msg_window if version >= 2 else 0,
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
        """What the inbox holds for ``key``, right after the login (R7.7, R7.13)."""
        if (conn.session.version or 1) >= 2:
            conn.login_mark = self.storage.id_mark()
            conn.cursor, conn.caught_up = 0, False
            conn.window_bytes = conn.session.deliver_window * self.limits.max_frame
            self.refill(conn)
            return
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
        if self.config.group_commit:
            self._ask_commit()  # a batch write like any other

    def refill(self, conn: CoreConnection) -> None:
        """Version 2: send inbox messages, oldest first, while the window has room (R7.12, R7.13)."""
        session = conn.session
        room = session.deliver_window - len(session.unacknowledged)
        if room <= 0 or conn.closed or session._state not in PUSHABLE:
            return
        queued = conn.queued
        if queued:
            send = self.effects.send
            while room and queued:
                message, frame = queued.popleft()
                send(conn, message, session.send(message, frame=frame))
                conn.cursor = message.server_msg_id
                room -= 1
        if conn.caught_up or not room:
            return
        found = self.storage.stored_for(conn.key or "", after=conn.cursor, limit=room)
        durable = self._durable_id
        items = [item for item in found if item.server_msg_id <= durable]  # never before its commit
        for item in items:
            self._send_stored(conn, item)
        if items:
            conn.cursor = items[-1].server_msg_id
        conn.caught_up = len(found) < room and len(items) == len(found)

    def _send_stored(self, conn: CoreConnection, item: StoredMessage) -> None:
        text, replaced = reencode(item.text, conn.session.encoding)
        flags = DeliverFlags(item.flags)
        if replaced:
            flags |= DeliverFlags.LOSSY
        if item.server_msg_id <= conn.login_mark and not flags & DeliverFlags.STORED:
            flags |= DeliverFlags.REDELIVERED  # meant for an earlier session, never acknowledged
        self.send(
            conn,
            DELIVER(server_msg_id=item.server_msg_id, timestamp_ms=item.timestamp_ms, flags=flags, sender=item.sender, text=text),
        )

    def on_MSG(self, conn: CoreConnection, msg: Message, now: float) -> None:
        sender = conn.session.user or ""
        plan = self.route(conn, msg.recipients)
        storage = self.storage
        timestamp = int(now * 1000) + self.config.clock_offset_ms
        flags = DeliverFlags.DIRECTED if plan.directed else DeliverFlags(0)
        # Who keeps it in an inbox: offline recipients (R7.7) and version-2 sessions (R7.10),
        # each within its quota (R7.14). Everything is stored before anything is sent, so a
        # store that fails delivers to nobody (R7.15).
        live_v1: list[CoreConnection] = []
        live_v2: list[CoreConnection] = []
        over: set[str] = set()
        try:
            server_msg_id = storage.next_msg_id()
            cost = text_size(msg.text)
            for target in plan.live:
                if (target.session.version or 1) < 2:
                    live_v1.append(target)
                elif self._fits(target.key or "", cost):
                    live_v2.append(target)
                else:
                    over.add(target.key or "")
            stored_keys: list[str] = []
            for key, _ in plan.stored:
                (stored_keys.append if self._fits(key, cost) else over.add)(key)
            storage.store_groups(
                [(stored_keys, int(flags | DeliverFlags.STORED)), ([t.key or "" for t in live_v2], int(flags))],
                server_msg_id, timestamp, sender, msg.text,
            )
        except Exception as exc:  # the disk is full, the database fails: nobody gets it (R7.15)
            if self.config.group_commit:
                self._fail_batch(exc)  # the batch's transaction is gone with it
            self.store_failed(conn, msg, exc)
            return

        def release() -> None:
            self._release_msg(conn, msg, server_msg_id, timestamp, flags, plan, live_v1, live_v2, over, stored_keys)

        if self.config.group_commit:
            self._batch.append((conn, msg, release))
            self._ask_commit()
        else:
            release()

    def _release_msg(
        self, conn: CoreConnection, msg: Message, server_msg_id: int, timestamp: int, flags: DeliverFlags,
        plan: Route[CoreConnection], live_v1: list[CoreConnection], live_v2: list[CoreConnection],
        over: set[str], stored_keys: list[str],
    ) -> None:
        """What a stored MSG sends: DELIVERs to who is online, then its MSG_ACK (R7.3, R7.4)."""
        sender = conn.session.user or ""
        sender_version = conn.session.version or 1
        if over:
            self._log(
                WARNING, "over_quota", f"connection {conn.id}: message {server_msg_id} dropped for {len(over)} full inboxes",
                conn=conn.id, rule="R7.14", recipients=tuple(sorted(over)),
            )
        frames: dict[tuple[str, int], tuple[Message, bytes, bool]] = {}
        delivered = lossy = 0
        lossy_keys: set[str] = set()
        live_keys: list[str] = []
        send = self.effects.send
        for target in live_v1 + live_v2:
            if target.closed:
                if target in live_v2:
                    delivered += 1  # in the inbox: it arrives at the next login (R7.13)
                continue
            session = target.session
            encoding, version = session._encoding, session.version or 1
            entry = frames.get((encoding, version))
            if entry is None:
                text, replaced = reencode(msg.text, encoding)
                message = DELIVER(
                    server_msg_id=server_msg_id,
                    timestamp_ms=timestamp,
                    flags=flags | DeliverFlags.LOSSY if replaced else flags,
                    sender=sender,
                    text=text,
                )
                entry = frames[encoding, version] = (message, encode(message, encoding, version), bool(replaced))
            if version >= 2:
                # in the inbox now; it goes out at once only behind everything older (R7.13)
                if server_msg_id <= target.cursor:
                    pass  # a refill already sent it
                elif not target.caught_up:
                    self.refill(target)  # older ones first, from the inbox
                elif not target.queued and len(session.unacknowledged) < session.deliver_window:
                    send(target, entry[0], session.send(entry[0], frame=entry[1]))
                    target.cursor = server_msg_id
                elif len(target.queued) < 4 * session.deliver_window:
                    target.queued.append((entry[0], entry[1]))
                else:
                    target.caught_up = False  # the rest waits in the inbox alone
            elif session._state in PUSHABLE:
                send(target, entry[0], entry[1])
            else:
                continue
            delivered += 1
            if entry[2]:
                lossy += 1
                lossy_keys.add(target.key or "")
            if self.config.log_level <= DEBUG:
                live_keys.append(target.key or "")
        # version 1 has no OVER_QUOTA: 'dropped' is UNKNOWN_USER there (R7.14)
        full = Outcome.OVER_QUOTA if sender_version >= 2 else Outcome.UNKNOWN_USER
        results = tuple(
            RecipientResult(
                name=name,
                outcome=full
                if name_key(name) in over
                else Outcome.LOSSY
                if outcome is Outcome.DELIVERED and name_key(name) in lossy_keys
                else outcome,
            )
            for name, outcome in plan.results
        )
        if self.config.log_level <= DEBUG:
            self._log(
                DEBUG, "routed", f"connection {conn.id}: message {server_msg_id} to {delivered} now, {len(stored_keys)} stored",
                conn=conn.id, sender=conn.key or "", sender_name=sender, recipients=tuple(msg.recipients),
                msg_text=msg.text, online=self.presence.keys(), live=tuple(live_keys), stored=tuple(stored_keys),
                server_msg_id=server_msg_id, results=tuple((r.name, int(r.outcome)) for r in results),
                delivered=delivered, lossy=lossy, over_quota=tuple(sorted(over)),
            )
        if not conn.closed:
            self.send(conn, MSG_ACK(msg_id=msg.msg_id, server_msg_id=server_msg_id, delivered=delivered, lossy=lossy, results=results))

    # --- group commit ------------------------------------------------------------------------------
    def _ask_commit(self) -> None:
        if not self._commit_asked:
            self._commit_asked = True
            self.effects.commit_soon()

    def commit(self, now: float = 0.0) -> None:
        """Group commit: make the batch durable, then send what its MSGs send; on failure nobody
        gets any of them and each sender is told (R7.15)."""
        batch, self._batch, self._commit_asked = self._batch, [], False
        try:
            self.storage.commit()
        except Exception as exc:
            self._fail_batch(exc, batch)
            return
        self._durable_id = self.storage.id_mark()
        for _, _, release in batch:
            release()

    def _fail_batch(self, exc: BaseException, batch: list[Any] | None = None) -> None:
        if batch is None:
            batch, self._batch, self._commit_asked = self._batch, [], False
        with contextlib.suppress(Exception):
            self.storage.rollback()
        for conn, msg, _ in batch:
            if not conn.closed:
                self.store_failed(conn, msg, exc)

    def _fits(self, key: str, cost: int) -> bool:
        """One more message of ``cost`` bytes fits ``key``'s inbox (R7.14)."""
        count, size = self.storage.inbox_usage(key)
        limits = self.limits
        return count < limits.max_inbox_messages and size + cost <= limits.max_inbox_bytes

    def store_failed(self, conn: CoreConnection, msg: Message, exc: BaseException) -> None:
        """R7.15: the MSG reached nobody. Version 2 says so and goes on; version 1 can only end."""
        self._log(  # an operating condition, not a bug: no traceback
            ERROR, "store_failed", f"connection {conn.id}: could not store a message, nobody received it: {exc}",
            conn=conn.id, peer=conn.peer, rule="R7.15", reason=str(exc),
        )
        detail = "the server could not store your message; nobody received it; you may send it again"
        if (conn.session.version or 1) >= 2:
            self.send(conn, make_error(ErrorCode.STORE_FAILED, detail, regarding=MSG.TYPE))
        else:
            self.end(conn, make_error(ErrorCode.INTERNAL_ERROR, detail, rule="R7.15"), LeftReason.ERROR)

    def on_DELIVER_ACK(self, conn: CoreConnection, ack: Message, now: float) -> None:
        """The application took everything up to this DELIVER: forget it, send more (R7.10)."""
        try:
            self.storage.acknowledge(conn.key or "", ack.server_msg_id)
        except Exception as exc:  # kept: they come back REDELIVERED and the client drops them (R7.11)
            self._log(
                WARNING, "ack_not_stored", f"connection {conn.id}: could not forget acknowledged messages: {exc}",
                conn=conn.id, rule="R7.10", reason=str(exc),
            )
        self.refill(conn)

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
