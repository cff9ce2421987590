"""The reference server's I/O: an asyncio shell that feeds :class:`~dfachat.server.core.ServerCore`.

This is the only server code that touches sockets, threads or the clock.
Everything the server *decides* is in :mod:`dfachat.server.core`; this module
turns transport callbacks into the core's inputs (bytes, end of input, a lost
connection, the time) and carries out the core's effects (:class:`ChatServer`
implements :class:`~dfachat.server.core.Effects`): frames are queued and
written once per event-loop iteration, password checks run in a worker
thread, back-offs are timers.

Each connection is a bare ``asyncio.Protocol`` (the cheapest per idle
connection). A broadcast's DELIVER is encoded once per encoding by the core
and the same bytes are queued for every recipient.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any

from dfachat import __version__
from dfachat.codec.messages import Message  # type: ignore[attr-defined]
from dfachat.server.core import CoreConfig, CoreConnection, ServerCore
from dfachat.server.storage import Storage
from dfachat.server.store import verify_password
from dfachat.server.tls import looks_like_tls, peek, refuse_plaintext
from dfachat.spec import LIMITS, Limits

__all__ = ["ChatServer", "Connection", "ServerConfig"]

log = logging.getLogger("dfachat.server")

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
    group_commit: bool = True  # one durable transaction per loop iteration (a store that can batch)


class Connection(asyncio.Protocol):
    """One client's transport: bytes to the core, the core's frames to the socket."""

    __slots__ = ("server", "transport", "core", "out", "closing")

    def __init__(self, server: ChatServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.core: CoreConnection = None  # type: ignore[assignment]  # set in connection_made
        self.out: list[bytes] = []
        self.closing = False  # the core closed it: write what is queued, then close

    @property
    def id(self) -> int:
        return self.core.id

    @property
    def session(self) -> Any:
        return self.core.session

    # --- asyncio.Protocol -------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        peer_text = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        server = self.server
        self.core = server.core.connection_opened(self, address, peer_text, server.loop.time())

    def data_received(self, data: bytes) -> None:
        server = self.server
        server.core.data_received(self.core, data, server.loop.time())

    def eof_received(self) -> bool:
        server = self.server
        server.core.eof_received(self.core, server.loop.time())
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        server = self.server
        server.core.connection_lost(self.core, server.loop.time())

    # --- output ---------------------------------------------------------------------
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
        if self.closing:
            transport.close()
        else:
            self.server.core.output_pending(self.core, transport.get_write_buffer_size())

    def close(self, abort: bool) -> None:
        self.closing = True
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if abort:  # close() would keep the unread buffer until the peer reads
            self.out.clear()
            transport.abort()
        else:
            self.flush()
            transport.close()


class ChatServer:
    """The chat server: a :class:`ServerCore` over a storage, its connections and timers."""

    def __init__(
        self, store: Storage, config: ServerConfig | None = None, *, core_class: type[ServerCore] = ServerCore
    ) -> None:
        self.store = store
        self.config = config or ServerConfig()
        # Group commit: one durable transaction per loop iteration instead of one per MSG.
        group = self.config.group_commit and callable(getattr(store, "begin_batch", None))
        if group:
            store.begin_batch()  # type: ignore[attr-defined]
        self.core = core_class(
            store,
            self,
            CoreConfig(
                limits=self.config.limits,
                software=self.config.software,
                max_connections=self.config.max_connections,
                tls=self.config.tls is not None,
                clock_offset_ms=0,  # set in start(): wall-clock ms at loop.time() == 0
                log_level=logging.DEBUG if log.isEnabledFor(logging.DEBUG) else logging.INFO,
                group_commit=group,
            ),
        )
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.dirty: list[Connection] = []
        self._flush_scheduled = False
        self._server: asyncio.base_events.Server | None = None
        self._listener: socket.socket | None = None  # TLS: accepted by _accept_tls_forever
        self._acceptor: asyncio.Task[None] | None = None
        self._handshakes: set[asyncio.Task[None]] = set()
        self._logins: set[asyncio.Task[None]] = set()  # password checks and back-off delays under way
        self._sweeper: asyncio.Task[None] | None = None
        self.stopped = asyncio.Event()
        self.shutting_down = False

    @property
    def connections(self) -> dict[int, CoreConnection]:
        return self.core.connections

    @property
    def online(self) -> dict[str, CoreConnection]:
        return self.core.presence.by_key

    # --- lifecycle ----------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._listener is not None:
            return int(self._listener.getsockname()[1])
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        offset = time.time_ns() // 1_000_000 - int(self.loop.time() * 1000)
        self.core.config = dataclasses.replace(self.core.config, clock_offset_ms=offset)
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
        return Connection(self)

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
        self.core.shutdown()
        deadline = self.loop.time() + timeout
        while self.core.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.01)
        # Logins still checking a password or sleeping a back-off (up to backoff_max_ms): their
        # sessions are closed now; cancel them, or the loop would close with them pending.
        for task in list(self._logins):
            task.cancel()
        if self._logins:
            await asyncio.wait(set(self._logins), timeout=timeout)
        if self._server is not None:
            await self._server.wait_closed()
        self.store.close()  # type: ignore[attr-defined]
        log.info("stopped", extra={"event": "stopped"})
        self.stopped.set()

    # --- Effects: what the core asks for -------------------------------------------------------
    def send(self, conn: CoreConnection, message: Message, frame: bytes) -> None:
        conn.handle.queue(frame)

    def close(self, conn: CoreConnection, abort: bool) -> None:
        conn.handle.close(abort)

    def check_password(self, conn: CoreConnection, name: str, password: str) -> None:
        self._spawn(self._check_password(conn, name, password))

    def start_backoff(self, conn: CoreConnection, delay_ms: int) -> None:
        self._spawn(self._backoff(conn, delay_ms))

    def log(self, level: int, event: str, text: str, fields: dict[str, Any]) -> None:
        exc = fields.pop("exc", None)
        log.log(level, "%s", text, extra={"event": event, **fields}, exc_info=exc)

    def commit_soon(self) -> None:
        # call_soon: after every callback already ready in this iteration (the data of every
        # readable socket), so one commit covers them all
        self.loop.call_soon(self._commit)

    def _commit(self) -> None:
        self.core.commit(self.loop.time())

    def _spawn(self, coro: Any) -> None:
        task = self.loop.create_task(coro)
        self._logins.add(task)
        task.add_done_callback(self._logins.discard)

    async def _check_password(self, conn: CoreConnection, name: str, password: str) -> None:
        try:
            account, salt, expected, kdf = self.store.credentials(name)  # type: ignore[attr-defined]
            ok = await self.loop.run_in_executor(None, verify_password, password, salt, expected, kdf)
        except Exception as exc:  # the store failed: this session ends (R11.4)
            self.core.internal_error(conn, "PASS", exc)
            conn.busy = False
            return
        self.core.password_checked(conn, account if ok else None, self.loop.time())

    async def _backoff(self, conn: CoreConnection, delay_ms: int) -> None:
        await asyncio.sleep(delay_ms / 1000)
        self.core.backoff_elapsed(conn, self.loop.time())

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

    # --- time ---------------------------------------------------------------------------------------
    async def _sweep_forever(self) -> None:
        interval = min(self.config.sweep_interval_s, self.config.limits.idle_timeout_s / 4)
        while True:
            before = self.loop.time()
            await asyncio.sleep(interval)
            late = self.loop.time() - before - interval
            if late > interval:  # the loop itself stalled (a slow disk under a commit): not the peers
                self.core.paused(late)
            self.core.tick(self.loop.time())
