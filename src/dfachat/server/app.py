"""The reference server: asyncio I/O around one :class:`~dfachat.fsm.ServerSession` per connection.

This is the only server code that touches sockets. Each connection is a bare
``asyncio.Protocol`` (the cheapest per idle connection) that feeds bytes to
its engine and answers each event before taking the next (frames mean what
they mean in order). The handlers are dispatched from the spec: one
``on_<MESSAGE>`` method per message type a client may send, checked when the
server is built, so a type without a handler fails at start, not when a
client first sends it.

Writes are coalesced: frames for a connection collect in a list and go out
in one ``write`` per event-loop iteration; a broadcast encodes one DELIVER
per target encoding and appends the same bytes to every recipient.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from dfachat import __version__
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
from dfachat.fsm import TABLES, ConnectionClosed, ProtocolViolation, ServerSession, make_error
from dfachat.server.routing import reencode, route
from dfachat.server.store import Store, name_key, verify_password
from dfachat.server.tls import looks_like_tls, peek, refuse_plaintext
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

__all__ = ["ChatServer", "Connection", "ServerConfig"]

log = logging.getLogger("dfachat.server")

_SERVER_TABLE = TABLES["server"]
# States in which a push is a legal internal move, read from the table (R8.4).
_PUSHABLE = _SERVER_TABLE.internal_sends(DELIVER.TYPE) & _SERVER_TABLE.internal_sends(
    JOINED.TYPE
) & _SERVER_TABLE.internal_sends(LEFT.TYPE)
_SOFTWARE = f"dfachat/{__version__}"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = LIMITS.default_port
    limits: Limits = LIMITS
    max_connections: int = 10_000
    software: str = _SOFTWARE
    sweep_interval_s: float = 1.0  # how often idle sessions and back-off records are checked
    tls: ssl.SSLContext | None = None  # serve TLS only (dfachat.server.tls.server_context)
    tls_handshake_timeout_s: float = 10.0  # for the first bytes and the handshake of a TLS client


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Connection(asyncio.Protocol):
    """One client's session: its transport, its engine, its queued output."""

    __slots__ = (
        "server",
        "transport",
        "session",
        "peer",
        "id",
        "key",
        "login_name",
        "out",
        "last_seen",
        "pinged",
        "busy",
        "left_reason",
        "closing",
        "backlog",
        "address",
        "tokens",
        "refilled",
        "fresh",
    )

    def __init__(self, server: ChatServer, conn_id: int) -> None:
        self.server = server
        self.id = conn_id
        self.transport: asyncio.Transport | None = None
        self.session = ServerSession(limits=server.config.limits)
        self.peer = "?"
        self.key: str | None = None  # account key once authenticated
        self.login_name: str | None = None  # the name USER asked for
        self.out: list[bytes] = []
        self.last_seen = 0.0
        self.pinged = False
        self.busy = False  # a handler is waiting (password check, back-off): hold later events
        self.left_reason = LeftReason.DROPPED
        self.closing = False
        self.backlog = 0  # bytes of stored messages being delivered: exempt from the output bound
        self.address = "?"  # the peer's address without the port (R1.5, R9.5)
        self.tokens = float(server.config.limits.max_burst_bytes)  # the receive token bucket (R9.4)
        self.refilled = 0.0
        self.fresh = True  # nothing received yet

    # --- asyncio.Protocol -------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.address = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        self.last_seen = self.refilled = self.server.loop.time()
        self.server.connection_made(self)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        server = self.server
        limits = server.config.limits
        now = server.loop.time()
        # R9.4: a token bucket over the bytes received.
        tokens = self.tokens + (now - self.refilled) * limits.max_bytes_per_s
        self.tokens = (tokens if tokens < limits.max_burst_bytes else limits.max_burst_bytes) - len(data)
        self.refilled = now
        if self.tokens < 0:
            server.rate_limited(self)
            return
        if self.fresh:
            self.fresh = False
            if server.config.tls is None and looks_like_tls(data):
                server.tls_on_plaintext(self)
                return
        # Activity is a whole frame, not a byte (R9.2): a peer dripping half a frame times out.
        self.session.feed(data)
        if not self.busy:
            self.process()

    def eof_received(self) -> bool:
        self.session.feed(b"")
        if not self.busy:
            self.process()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.close()
        self.server.connection_lost(self)

    # --- events -------------------------------------------------------------------
    def process(self) -> None:
        """Handle events one at a time until more bytes are needed or a handler waits."""
        server = self.server
        while not self.busy and not self.closing:
            event = self.session.next_event()
            if event is None:
                return
            self.last_seen = server.loop.time()
            self.pinged = False
            try:
                if isinstance(event, Message):
                    server.handlers[event.TYPE](self, event)
                elif isinstance(event, ProtocolViolation):
                    server.protocol_violation(self, event)
                elif isinstance(event, ConnectionClosed):
                    server.peer_closed(self, event)
                    return
            except Exception:  # a bug of ours: this session ends (R11.4), the server carries on
                server.internal_error(self, event)
                return

    # --- output ---------------------------------------------------------------------
    def send(self, message: Message) -> None:
        """Run ``message`` through the engine and queue its frame."""
        self.queue(self.session.send(message))

    def queue(self, frame: bytes) -> None:
        if not self.out:
            self.server.dirty.append(self)
            self.server.schedule_flush()
        self.out.append(frame)

    def flush(self) -> None:
        transport = self.transport
        if not self.out or transport is None or transport.is_closing():
            self.out.clear()
            return
        data = b"".join(self.out) if len(self.out) > 1 else self.out[0]
        self.out.clear()
        transport.write(data)
        if self.session.closed:
            self.close_transport()
        else:
            size = transport.get_write_buffer_size()
            limit = self.server.config.limits.max_output_buffer
            if size > limit + self.backlog:
                self.server.slow_consumer(self)
            elif self.backlog and size <= limit:
                self.backlog = 0  # the stored messages have drained: the plain bound again

    def close_transport(self) -> None:
        self.closing = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def end(self, error: Message | None, reason: LeftReason) -> None:
        """End the session now: an optional last frame (fatal ERROR or BYE), then close."""
        self.left_reason = reason
        if error is not None and not self.session.closed:
            try:
                self.send(error)
            except LocalProtocolError:  # the state allows no last word: just close
                self.session.close()
        self.session.close()
        self.server.leave(self)
        if self.out:
            self.flush()
        self.close_transport()


class ChatServer:
    """The chat server: accounts in a :class:`Store`, connections, routing, presence."""

    def __init__(self, store: Store, config: ServerConfig | None = None) -> None:
        self.store = store
        self.config = config or ServerConfig()
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.connections: dict[int, Connection] = {}
        self.online: dict[str, Connection] = {}  # account key -> its authenticated connection
        self.dirty: list[Connection] = []
        self._flush_scheduled = False
        self._server: asyncio.base_events.Server | None = None
        self._listener: socket.socket | None = None  # TLS: accepted by _accept_tls_forever
        self._acceptor: asyncio.Task[None] | None = None
        self._handshakes: set[asyncio.Task[None]] = set()
        self._logins: set[asyncio.Task[None]] = set()  # password checks and back-off delays under way
        self._sweeper: asyncio.Task[None] | None = None
        self._next_conn_id = 1
        # failed logins, for the back-off (R6.4): key -> (count, time of the last failure)
        self.failures_by_account: dict[str, tuple[int, float]] = {}
        self.failures_by_address: dict[str, tuple[int, float]] = {}
        self.per_address: dict[str, int] = {}  # open connections per peer address (R1.5)
        self.logins_by_address: dict[str, deque[float]] = {}  # times of recent PASS frames (R9.5)
        self.handlers = self._dispatch_table()
        self.stopped = asyncio.Event()
        self.shutting_down = False

    def _dispatch_table(self) -> dict[int, Callable[[Connection, Message], None]]:
        """One handler per message type a client may send, from the spec (checked here)."""
        table = {}
        missing = []
        for spec in MESSAGES:
            if spec.sent_by_client:
                handler = getattr(self, f"on_{spec.name}", None)
                if handler is None:
                    missing.append(spec.name)
                else:
                    table[spec.code] = handler
        if missing:
            raise SpecError(f"the server has no handler for {', '.join(missing)}", rule="R12.1")
        return table

    # --- lifecycle ----------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._listener is not None:
            return int(self._listener.getsockname()[1])
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        if self.config.tls is None:
            self._server = await self.loop.create_server(
                self._new_connection, self.config.host, self.config.port, reuse_address=True
            )
        else:
            host = self.config.host
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            self._listener = socket.create_server((host, self.config.port), family=family, backlog=1024)
            self._listener.setblocking(False)
            self._acceptor = self.loop.create_task(self._accept_tls_forever())
        self._sweeper = self.loop.create_task(self._sweep_forever())
        log.info(
            "listening on %s:%d%s", self.config.host, self.port, " (TLS)" if self.config.tls else "",
            extra={"event": "listening"},
        )

    # --- TLS: peek at each connection, then the handshake ------------------------------------
    async def _accept_tls_forever(self) -> None:
        assert self._listener is not None
        while True:
            try:
                sock, addr = await self.loop.sock_accept(self._listener)
            except OSError as exc:  # out of descriptors, say: keep the listener
                log.warning("accept failed: %s", exc, extra={"event": "accept_failed"})
                await asyncio.sleep(0.1)
                continue
            task = self.loop.create_task(self._start_tls(sock, addr))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    async def _start_tls(self, sock: socket.socket, addr: object) -> None:
        peer = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)
        timeout = self.config.tls_handshake_timeout_s
        try:
            sock.setblocking(False)
            first = await peek(self.loop, sock, timeout)
            if not first:
                sock.close()
                return
            if not looks_like_tls(first):
                log.warning(
                    "refused %s: not a TLS client (this server speaks only TLS)", peer,
                    extra={"event": "not_tls", "peer": peer},
                )
                refuse_plaintext(sock)
                return
            await self.loop.connect_accepted_socket(
                self._new_connection, sock, ssl=self.config.tls, ssl_handshake_timeout=timeout
            )
        except (OSError, TimeoutError) as exc:
            if isinstance(exc, TimeoutError):
                reason = f"nothing within {timeout:g} s"
            elif isinstance(exc, ssl.SSLError):
                reason = exc.reason or str(exc)
            elif isinstance(exc, ConnectionError) or not str(exc):
                reason = "the client gave up (does it trust this server's certificate?)"
            else:
                reason = str(exc)
            log.info("TLS handshake with %s failed: %s", peer, reason, extra={"event": "tls_failed", "peer": peer})
            sock.close()
        except BaseException:
            sock.close()
            raise

    def _new_connection(self) -> Connection:
        conn = Connection(self, self._next_conn_id)
        self._next_conn_id += 1
        return conn

    async def shutdown(self, *, timeout: float = 5.0) -> None:
        """Stop accepting, BYE to every session (R10.3), flush, close; then the store."""
        self.shutting_down = True
        if self._server is not None:
            self._server.close()
        for task in [self._acceptor, *self._handshakes]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._listener is not None:
            self._listener.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self.connections.values()):
            self._goodbye(conn)
        deadline = self.loop.time() + timeout
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.01)
        # Logins still checking a password or sleeping a back-off (up to backoff_max_ms): their
        # sessions are closed now; cancel them, or the loop would close with them pending.
        for task in list(self._logins):
            task.cancel()
        if self._logins:
            await asyncio.wait(set(self._logins), timeout=timeout)
        if self._server is not None:
            await self._server.wait_closed()
        self.store.close()
        log.info("stopped", extra={"event": "stopped"})
        self.stopped.set()

    def _goodbye(self, conn: Connection) -> None:
        """BYE SHUTDOWN where the state allows it, then close (R10.3)."""
        if not conn.session.closed:
            conn.left_reason = LeftReason.DROPPED
            with contextlib.suppress(LocalProtocolError):
                conn.send(BYE(reason=ByeReason.SHUTDOWN))
        conn.flush()
        conn.close_transport()

    # --- connections ----------------------------------------------------------------------
    def connection_made(self, conn: Connection) -> None:
        self.connections[conn.id] = conn
        from_address = self.per_address[conn.address] = self.per_address.get(conn.address, 0) + 1
        if self.shutting_down:
            # Accepted just before the listener closed, set up after the BYEs went out: it would
            # otherwise be served (logins, messages) while the server waits to stop.
            self._goodbye(conn)
            return
        if len(self.connections) > self.config.max_connections:
            log.warning("refused %s: server full", conn.peer, extra={"event": "refused", "conn": conn.id})
            conn.end(make_error(ErrorCode.SERVER_FULL, "the server is at capacity"), LeftReason.DROPPED)
            return
        limit = self.config.limits.max_per_address
        if from_address > limit:
            log.warning(
                "refused %s: %d connections from %s already", conn.peer, limit, conn.address,
                extra={"event": "refused", "conn": conn.id, "peer": conn.peer, "rule": "R1.5"},
            )
            conn.end(
                make_error(ErrorCode.SERVER_FULL, f"at most {limit} connections from one address", rule="R1.5"),
                LeftReason.DROPPED,
            )
            return
        log.info("connection %d from %s", conn.id, conn.peer, extra={"event": "accepted", "conn": conn.id, "peer": conn.peer})

    def connection_lost(self, conn: Connection) -> None:
        self.leave(conn)
        if self.connections.pop(conn.id, None) is not None:
            left = self.per_address.get(conn.address, 0) - 1
            if left > 0:
                self.per_address[conn.address] = left
            else:
                self.per_address.pop(conn.address, None)
        log.info(
            "connection %d closed (%s)", conn.id, conn.left_reason.name.lower(),
            extra={"event": "closed", "conn": conn.id, "peer": conn.peer, "reason": conn.left_reason.name},
        )

    def peer_closed(self, conn: Connection, event: ConnectionClosed) -> None:
        if event.error is not None:
            log.info(
                "connection %d: %s", conn.id, event.error,
                extra={"event": "truncated", "conn": conn.id, "peer": conn.peer, "rule": event.error.rule},
            )
        conn.end(None, conn.left_reason)

    def leave(self, conn: Connection) -> None:
        """Take an authenticated connection off the online list; LEFT to the others, once (R8.2)."""
        key = conn.key
        if key is None or self.online.get(key) is not conn:
            return
        del self.online[key]
        name = conn.session.user or key
        self.push_all(encode_by_encoding(LEFT(reason=conn.left_reason, name=name)), exclude=None)
        log.info("%s left (%s)", name, conn.left_reason.name.lower(), extra={"event": "left", "conn": conn.id, "user": name})

    def protocol_violation(self, conn: Connection, event: ProtocolViolation) -> None:
        log.warning(
            "connection %d: %s", conn.id, event,
            extra={"event": "protocol_error", "conn": conn.id, "peer": conn.peer, "rule": event.rule,
                   "state": event.state, "fatal": event.fatal},
        )
        if event.fatal:
            conn.end(event.reply, LeftReason.ERROR)
        else:
            conn.send(event.reply)

    def internal_error(self, conn: Connection, event: object) -> None:
        log.exception(
            "connection %d: internal error handling %r", conn.id, event,
            extra={"event": "internal_error", "conn": conn.id, "peer": conn.peer},
        )
        conn.end(make_error(ErrorCode.INTERNAL_ERROR, "the server failed handling your frame"), LeftReason.ERROR)

    def slow_consumer(self, conn: Connection) -> None:
        """R9.3: the peer does not read. Say so, then drop the connection and what it holds."""
        log.warning("connection %d: slow consumer", conn.id, extra={"event": "slow_consumer", "conn": conn.id})
        conn.out.clear()
        conn.end(make_error(ErrorCode.SLOW_CONSUMER, "your unread output exceeded the limit"), LeftReason.ERROR)
        if conn.transport is not None:
            conn.transport.abort()  # close() would keep the unread buffer until the peer reads

    def rate_limited(self, conn: Connection) -> None:
        """R9.4: the peer sent more than its token bucket allows."""
        limits = self.config.limits
        log.warning(
            "connection %d from %s: over %d bytes per second", conn.id, conn.peer, limits.max_bytes_per_s,
            extra={"event": "rate_limited", "conn": conn.id, "peer": conn.peer, "rule": "R9.4"},
        )
        conn.end(
            make_error(
                ErrorCode.RATE_LIMITED,
                f"more than {limits.max_bytes_per_s} bytes per second (bursts up to {limits.max_burst_bytes})",
                rule="R9.4",
            ),
            LeftReason.ERROR,
        )

    def tls_on_plaintext(self, conn: Connection) -> None:
        """A TLS client on this plaintext port: one log line, and BAD_MAGIC (R2.1) it cannot read."""
        log.warning(
            "refused %s: a TLS client, but this server does not speak TLS", conn.peer,
            extra={"event": "tls_on_plaintext", "conn": conn.id, "peer": conn.peer},
        )
        conn.end(make_error(ErrorCode.BAD_MAGIC, "this server does not speak TLS", rule="R2.1"), LeftReason.ERROR)

    def login_allowed(self, address: str) -> bool:
        """R9.5: record one PASS from ``address``; False when it is over the per-minute bound."""
        now = self.loop.time()
        times = self.logins_by_address.setdefault(address, deque())
        while times and now - times[0] >= 60:
            times.popleft()
        if len(times) >= self.config.limits.max_logins_per_minute:
            return False
        times.append(now)
        return True

    # --- output ----------------------------------------------------------------------------
    def schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush_all)

    def _flush_all(self) -> None:
        self._flush_scheduled = False
        dirty, self.dirty = self.dirty, []
        for conn in dirty:
            conn.flush()

    def push_all(self, frames: Callable[[str], bytes], *, exclude: Connection | None) -> None:
        """Push one frame, encoded once per encoding, to every online session but ``exclude``."""
        for other in self.online.values():
            if other is not exclude and other.session.state in _PUSHABLE:
                other.queue(frames(other.session.encoding))

    # --- handlers: one per message a client may send --------------------------------------
    def on_HELLO(self, conn: Connection, hello: Message) -> None:
        common = set(hello.versions) & set(SUPPORTED_VERSIONS)
        if not common:
            conn.end(
                make_error(
                    ErrorCode.UNSUPPORTED_VERSION,
                    f"this server speaks versions {SUPPORTED_VERSIONS}",
                    rule="R5.2",
                    regarding=hello.TYPE,  # R11.1: the frame it is about
                ),
                LeftReason.ERROR,
            )
        elif hello.encoding not in ENCODINGS:
            conn.end(
                make_error(
                    ErrorCode.UNSUPPORTED_ENCODING,
                    f"{hello.encoding!r} is not supported; use one of {', '.join(ENCODINGS)}",
                    regarding=hello.TYPE,
                ),
                LeftReason.ERROR,
            )
        else:
            limits = self.config.limits
            conn.send(
                HELLO_OK(
                    version=max(common),
                    max_frame=limits.max_frame,
                    max_text=limits.max_text,
                    idle_timeout_s=limits.idle_timeout_s,
                    max_recipients=limits.max_recipients,
                    login_attempts=limits.login_attempts,
                    encoding=hello.encoding,
                    software=self.config.software,
                )
            )

    def on_USER(self, conn: Connection, user: Message) -> None:
        conn.login_name = user.name  # no answer, whether or not it exists (R6.2)

    def on_PASS(self, conn: Connection, password: Message) -> None:
        if not self.login_allowed(conn.address):
            limit = self.config.limits.max_logins_per_minute
            log.warning(
                "connection %d: more than %d logins from %s in 60 s", conn.id, limit, conn.address,
                extra={"event": "rate_limited", "conn": conn.id, "peer": conn.peer, "rule": "R9.5"},
            )
            conn.end(
                make_error(
                    ErrorCode.RATE_LIMITED,
                    f"more than {limit} login attempts from {conn.address} in 60 s; try again later",
                    rule="R9.5",
                    regarding=PASS.TYPE,
                ),
                LeftReason.ERROR,
            )
            return
        conn.busy = True  # hold later events until the check (and any back-off) is done
        task = self.loop.create_task(self._authenticate(conn, conn.login_name or "", password.password))
        self._logins.add(task)
        task.add_done_callback(self._logins.discard)

    async def _authenticate(self, conn: Connection, name: str, password: str) -> None:
        try:
            account, salt, expected, kdf = self.store.credentials(name)
            ok = await self.loop.run_in_executor(None, verify_password, password, salt, expected, kdf)
            if conn.session.closed or conn.closing:
                return
            if ok and account is not None:
                self.failures_by_account.pop(account.key, None)
                self._login(conn, account.name, account.key)
            else:
                await self._login_failed(conn, name)
        except Exception:
            self.internal_error(conn, "PASS")
        finally:
            conn.busy = False
            if not conn.closing:
                conn.process()

    def backoff_ms(self, key: str, address: str) -> int:
        """The delay before this AUTH_FAILED (R6.4): doubled per earlier recent failure."""
        limits = self.config.limits
        now = self.loop.time()
        earlier = 0
        for table, k in ((self.failures_by_account, key), (self.failures_by_address, address)):
            count, last = table.get(k, (0, 0.0))
            if count and now - last <= limits.backoff_window_s:
                earlier = max(earlier, count)
        return min(limits.backoff_base_ms << earlier, limits.backoff_max_ms)

    def _record_failure(self, key: str, address: str) -> None:
        now = self.loop.time()
        window = self.config.limits.backoff_window_s
        for table, k in ((self.failures_by_account, key), (self.failures_by_address, address)):
            count, last = table.get(k, (0, 0.0))
            table[k] = (count + 1 if now - last <= window else 1, now)

    async def _login_failed(self, conn: Connection, name: str) -> None:
        address = conn.peer.rsplit(":", 1)[0]
        key = name_key(name)
        delay = self.backoff_ms(key, address)
        self._record_failure(key, address)
        await asyncio.sleep(delay / 1000)
        if conn.session.closed or conn.closing:
            return
        left = max(self.config.limits.login_attempts - conn.session.failed_logins - 1, 0)
        log.info(
            "connection %d: failed login as %r (%d left)", conn.id, name, left,
            extra={"event": "auth_failed", "conn": conn.id, "peer": conn.peer, "user": name},
        )
        conn.send(AUTH_FAILED(attempts_left=left))
        if conn.session.closed:
            conn.left_reason = LeftReason.ERROR
            conn.flush()
            conn.close_transport()

    def _login(self, conn: Connection, name: str, key: str) -> None:
        previous = self.online.get(key)
        if previous is not None:  # R6.6: the new session wins
            previous.end(
                make_error(ErrorCode.SESSION_REPLACED, f"{name} logged in from another session"),
                LeftReason.REPLACED,
            )
        conn.key = key
        self.online[key] = conn
        online = [c.session.user or k for k, c in self.online.items() if c is not conn] + [name]
        pages = _pages(online, self.config.limits.max_names_per_frame)
        conn.send(AUTH_OK(flags=ListFlags.MORE if len(pages) > 1 else ListFlags(0), name=name, online=pages[0]))
        for i, page in enumerate(pages[1:], 2):
            conn.send(USERS(flags=ListFlags.MORE if i < len(pages) else ListFlags(0), online=page))
        self.push_all(encode_by_encoding(JOINED(name=name)), exclude=conn)
        log.info("connection %d: %s logged in", conn.id, name, extra={"event": "login", "conn": conn.id, "user": name})
        self._deliver_stored(conn, key)

    def _deliver_stored(self, conn: Connection, key: str) -> None:
        stored = self.store.stored_for(key)
        if not stored:
            return
        encoding = conn.session.encoding
        for item in stored:
            text, replaced = reencode(item.text, encoding)
            flags = DeliverFlags(item.flags) | DeliverFlags.STORED
            if replaced:
                flags |= DeliverFlags.LOSSY
            conn.send(DELIVER(server_msg_id=item.server_msg_id, timestamp_ms=item.timestamp_ms, flags=flags, sender=item.sender, text=text))
        # Forgotten only once handed to the transport (R7.7). The backlog is what the server
        # chose to send at once, not output the client failed to read: it does not count
        # against the slow-consumer bound (R9.3), or a long backlog would be cut off and lost.
        conn.backlog = sum(map(len, conn.out))
        conn.flush()
        self.store.forget(item.id for item in stored)

    def on_MSG(self, conn: Connection, msg: Message) -> None:
        sender = conn.session.user or ""
        plan = route(conn.key or "", msg.recipients, self.online, self._account_name, name_key)
        server_msg_id = self.store.next_msg_id()
        timestamp = _now_ms()
        flags = DeliverFlags.DIRECTED if plan.directed else DeliverFlags(0)
        frames: dict[str, tuple[bytes, bool]] = {}
        delivered = lossy = 0
        lossy_keys: set[str] = set()
        for target in plan.live:
            encoding = target.session.encoding
            entry = frames.get(encoding)
            if entry is None:
                text, replaced = reencode(msg.text, encoding)
                entry = frames[encoding] = (
                    encode(
                        DELIVER(
                            server_msg_id=server_msg_id,
                            timestamp_ms=timestamp,
                            flags=flags | DeliverFlags.LOSSY if replaced else flags,
                            sender=sender,
                            text=text,
                        ),
                        encoding,
                    ),
                    bool(replaced),
                )
            if target.session.state in _PUSHABLE:
                target.queue(entry[0])
                delivered += 1
                if entry[1]:
                    lossy += 1
                    lossy_keys.add(target.key or "")
        if plan.stored:  # durable before the MSG_ACK that says QUEUED (R7.7)
            self.store.store([key for key, _ in plan.stored], server_msg_id, timestamp, sender, int(flags), msg.text)
        results = tuple(
            RecipientResult(
                name=name,
                outcome=Outcome.LOSSY if outcome is Outcome.DELIVERED and name_key(name) in lossy_keys else outcome,
            )
            for name, outcome in plan.results
        )
        conn.send(MSG_ACK(msg_id=msg.msg_id, server_msg_id=server_msg_id, delivered=delivered, lossy=lossy, results=results))

    def _account_name(self, key: str) -> str | None:
        account = self.store.lookup(key)
        return account.name if account else None

    def on_LIST(self, conn: Connection, _: Message) -> None:
        names = [c.session.user or k for k, c in self.online.items()]
        pages = _pages(names, self.config.limits.max_names_per_frame)
        for i, page in enumerate(pages, 1):
            conn.send(USERS(flags=ListFlags.MORE if i < len(pages) else ListFlags(0), online=page))

    def on_PING(self, conn: Connection, ping: Message) -> None:
        conn.send(PONG(nonce=ping.nonce))

    def on_PONG(self, conn: Connection, _: Message) -> None:
        pass  # activity is noted on every frame (R9.2)

    def on_QUIT(self, conn: Connection, _: Message) -> None:
        conn.left_reason = LeftReason.QUIT
        conn.send(BYE(reason=ByeReason.QUIT))
        self.leave(conn)
        conn.flush()
        conn.close_transport()

    def on_ERROR(self, conn: Connection, error: Message) -> None:
        log.info(
            "connection %d: client reported %s: %s", conn.id, error.code.name, error.reason,
            extra={"event": "client_error", "conn": conn.id, "rule": error.rule},
        )
        conn.end(None, LeftReason.ERROR)

    # --- time: idle sessions (R6.8, R9.2) and back-off records (R6.4) ----------------------
    async def _sweep_forever(self) -> None:
        interval = min(self.config.sweep_interval_s, self.config.limits.idle_timeout_s / 4)
        while True:
            await asyncio.sleep(interval)
            self.sweep()

    def sweep(self) -> None:
        limits = self.config.limits
        now = self.loop.time()
        for conn in list(self.connections.values()):
            if conn.closing or conn.busy:
                continue
            silent = now - conn.last_seen
            if silent >= limits.idle_timeout_s:
                conn.end(
                    make_error(
                        ErrorCode.IDLE_TIMEOUT,
                        f"nothing received for {limits.idle_timeout_s} s",
                        rule="R9.2" if conn.session.authenticated else "R6.8",
                    ),
                    LeftReason.TIMEOUT,
                )
            elif silent >= limits.idle_timeout_s / 2 and not conn.pinged and conn.session.state in _PUSHABLE:
                conn.pinged = True
                conn.send(PING(nonce=int(now * 1000) & 0xFFFFFFFF))
        for table in (self.failures_by_account, self.failures_by_address):
            for key in [k for k, (_, last) in table.items() if now - last > limits.backoff_window_s]:
                del table[key]
        logins = self.logins_by_address
        for key in [k for k, times in logins.items() if not times or now - times[-1] >= 60]:
            del logins[key]


def _pages(names: list[str], size: int) -> list[tuple[str, ...]]:
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
