"""A small test client for the server tests, and the harness that runs a server for them.

:class:`ChatClient` is a raw protocol client: asyncio streams around the
sans-IO :class:`~dfachat.fsm.ClientSession` (not the product's client
library). A background task reads the socket and feeds the session; every
event is recorded in :attr:`ChatClient.log` in arrival order and queued in an
inbox the test reads with :meth:`~ChatClient.next`, :meth:`~ChatClient.expect`
and :meth:`~ChatClient.collect`. :meth:`~ChatClient.send_raw` writes bytes the
session never sees, for malformed input.

The server must never send anything illegal: a :class:`ProtocolViolation`
(a frame the client's engine rejects) fails the test at the next read, and
again when the harness closes, unless the client was made with
``strict=False``.

:class:`Chat` starts a :class:`ChatServer` on an ephemeral port over a real
SQLite file (cheap scrypt), logs clients in, restarts the server on the
same file, and closes everything at the end of a test.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
import zlib
from collections import deque
from pathlib import Path
from typing import Any

from dfachat.codec.messages import (  # type: ignore[attr-defined]
    AUTH_FAILED,
    AUTH_OK,
    BYE,
    ERROR,
    HELLO,
    HELLO_OK,
    MSG,
    MSG_ACK,
    PASS,
    PING,
    PONG,
    QUIT,
    USER,
    USERS,
    Message,
)
from dfachat.fsm import ClientSession, ConnectionClosed, ProtocolViolation
from dfachat.fsm.events import Event
from dfachat.server import DEMO_ACCOUNTS, ChatServer, KdfParams, ServerConfig, Store
from dfachat.spec import MAGIC, ErrorCode, ErrorFlags, Limits, ListFlags

__all__ = [
    "HOST",
    "PASSWORDS",
    "TEST_KDF",
    "TIMEOUT",
    "Chat",
    "ChatClient",
    "raw_frame",
]

HOST = "127.0.0.1"
TIMEOUT = 5.0  # default bound of every single wait
TEST_KDF = KdfParams(n=1024)  # cheap scrypt: a login costs about a millisecond
PASSWORDS = dict(DEMO_ACCOUNTS)


def raw_frame(mtype: int, payload: bytes, *, version: int = 1, magic: bytes = MAGIC,
              length: int | None = None, good_crc: bool = True) -> bytes:
    """A frame built by hand (section 2): magic, version, type, length, payload, CRC-32."""
    head = magic + struct.pack(">BBI", version, mtype, len(payload) if length is None else length)
    crc = zlib.crc32(head + payload)
    if not good_crc:
        crc ^= 0xFFFFFFFF
    return head + payload + struct.pack(">I", crc)


def payload_of(frame: bytes) -> bytes:
    return frame[8:-4]


class ChatClient:
    """One raw protocol connection; see the module docstring."""

    def __init__(self, label: str = "client", *, encoding: str = "utf-8", strict: bool = True,
                 auto_pong: bool = False, version: int = 1) -> None:
        self.label = label
        self.version = version  # the protocol version hello() offers: the suite runs both
        self.encoding = encoding
        self.strict = strict
        self.auto_pong = auto_pong  # answer PING with PONG, and keep PINGs out of the inbox
        self.session = ClientSession()
        self.log: list[Event] = []  # every event, in arrival order
        self.violations: list[ProtocolViolation] = []
        self.hello_ok: Message | None = None
        self.auth_ok: Message | None = None
        self.online: tuple[str, ...] = ()  # AUTH_OK's list and its USERS continuation
        self.reset = False  # the connection ended with an error (RST) rather than EOF
        self.closed = asyncio.Event()  # the transport has ended
        self._inbox: deque[Event] = deque()
        self._arrived = asyncio.Event()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pump: asyncio.Task[None] | None = None
        self._next_msg_id = 1

    def __repr__(self) -> str:
        return f"<ChatClient {self.label} {self.session.state}>"

    # --- connecting -----------------------------------------------------------------
    async def open(self, port: int, *, rcvbuf: int | None = None, timeout: float = TIMEOUT) -> ChatClient:
        """Connect (nothing sent yet). ``rcvbuf`` shrinks the socket's receive buffer first."""
        async with asyncio.timeout(timeout):
            if rcvbuf is None:
                self._reader, self._writer = await asyncio.open_connection(HOST, port)
            else:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
                sock.setblocking(False)
                await asyncio.get_running_loop().sock_connect(sock, (HOST, port))
                self._reader, self._writer = await asyncio.open_connection(sock=sock)
        self._pump = asyncio.get_running_loop().create_task(self._read_forever())
        return self

    @classmethod
    async def connect(cls, port: int, user: str, password: str, *, encoding: str = "utf-8",
                      label: str | None = None, **options: Any) -> ChatClient:
        """Open, HELLO, USER and PASS: a logged-in client (fails the test otherwise)."""
        client = cls(label or user, encoding=encoding, **options)
        await client.open(port)
        await client.hello()
        await client.login(user, password)
        return client

    async def hello(self, *, versions: tuple[int, ...] | None = None, software: str = "dfachat-tests",
                    timeout: float = TIMEOUT) -> Message:
        versions = versions or (self.version,)
        self.send(HELLO(versions=versions, encoding=self.encoding, software=software))
        self.hello_ok = await self.expect(HELLO_OK, timeout=timeout, only=True)
        assert self.hello_ok.encoding == self.encoding
        return self.hello_ok

    async def try_login(self, user: str, password: str, *, timeout: float = TIMEOUT) -> Message:
        """USER and PASS; the answer (AUTH_OK, with the online list gathered, or AUTH_FAILED)."""
        self.send(USER(name=user))
        self.send(PASS(password=password))
        reply = await self.next(timeout)
        assert isinstance(reply, (AUTH_OK, AUTH_FAILED)), f"{self.label}: {reply!r} answers PASS"
        if isinstance(reply, AUTH_OK):
            self.auth_ok = reply
            online = list(reply.online)
            more = reply.flags & ListFlags.MORE
            while more:
                page = await self.expect(USERS, timeout=timeout, only=True)
                online += page.online
                more = page.flags & ListFlags.MORE
            self.online = tuple(online)
        return reply

    async def login(self, user: str, password: str, *, timeout: float = TIMEOUT) -> Message:
        reply = await self.try_login(user, password, timeout=timeout)
        assert isinstance(reply, AUTH_OK), f"{self.label}: login as {user} failed: {reply!r}"
        return reply

    # --- sending ----------------------------------------------------------------------
    def send(self, message: Message) -> None:
        """Send through the engine (it refuses what this client may not send now)."""
        assert self._writer is not None, "not connected"
        self._writer.write(self.session.send(message))

    def send_raw(self, data: bytes) -> None:
        """Write bytes the engine never sees (malformed input)."""
        assert self._writer is not None, "not connected"
        self._writer.write(data)

    def new_msg(self, text: str, to: tuple[str, ...] = ()) -> Message:
        msg = MSG(msg_id=self._next_msg_id, recipients=to, text=text)
        self._next_msg_id += 1
        return msg

    async def say(self, text: str, to: tuple[str, ...] = (), *, timeout: float = TIMEOUT) -> Message:
        """Send a MSG and return its MSG_ACK (pushes that arrive first stay in the inbox)."""
        msg = self.new_msg(text, to)
        self.send(msg)
        ack = await self.expect(MSG_ACK, timeout=timeout)
        assert ack.msg_id == msg.msg_id, f"{self.label}: {ack!r} does not answer {msg!r}"
        return ack

    async def quit(self, *, timeout: float = TIMEOUT) -> Message:
        """QUIT; the BYE (QUIT) that answers it, once the server has closed the connection."""
        self.send(QUIT())
        bye = await self.expect(BYE, timeout=timeout)
        await self.wait_closed(timeout)
        return bye

    def close(self) -> None:
        """Close the socket without QUIT (a dropped session)."""
        if self._writer is not None and not self._writer.is_closing():
            self._writer.close()

    def write_eof(self) -> None:
        """Half-close: nothing more is sent, but the client still reads."""
        assert self._writer is not None
        self._writer.write_eof()

    def abort(self) -> None:
        """Reset the connection (RST), without QUIT."""
        if self._writer is not None:
            self._writer.transport.abort()

    def pause_reading(self) -> None:
        """Stop reading from the socket: the server's output piles up in the kernel and in its queue."""
        assert self._writer is not None
        self._writer.transport.pause_reading()

    def resume_reading(self) -> None:
        assert self._writer is not None
        self._writer.transport.resume_reading()

    # --- receiving ----------------------------------------------------------------------
    async def _read_forever(self) -> None:
        assert self._reader is not None
        try:
            while True:
                try:
                    data = await self._reader.read(1 << 16)
                except OSError:  # ConnectionResetError included
                    self.reset = True
                    data = b""
                for event in self.session.receive_data(data):
                    self._record(event)
                if not data:
                    return
        finally:
            self.closed.set()
            self._arrived.set()

    def _record(self, event: Event) -> None:
        self.log.append(event)
        if isinstance(event, ProtocolViolation):
            self.violations.append(event)
        if self.auto_pong and isinstance(event, PING):
            if self.session.can_send(PONG) and self._writer is not None and not self._writer.is_closing():
                self.send(PONG(nonce=event.nonce))
            return
        self._inbox.append(event)
        self._arrived.set()

    def _check(self) -> None:
        if self.strict and self.violations:
            raise AssertionError(f"{self.label}: the server sent something illegal: {self.violations}")

    async def next(self, timeout: float = TIMEOUT) -> Event:
        """The next event in the inbox (waiting up to ``timeout``)."""
        return await self._take(lambda _: True, "any event", timeout, only=True)

    async def expect(self, kind: type | tuple[type, ...], *, timeout: float = TIMEOUT, only: bool = False,
                     **fields: Any) -> Any:
        """The first inbox event of ``kind`` whose fields equal ``fields``.

        Events before it stay in the inbox; with ``only=True`` it must be the very next event.
        """
        def matches(event: Event) -> bool:
            return isinstance(event, kind) and all(getattr(event, k) == v for k, v in fields.items())

        what = getattr(kind, "__name__", str(kind)) + (f" with {fields}" if fields else "")
        return await self._take(matches, what, timeout, only=only)

    async def _take(self, matches: Any, what: str, timeout: float, *, only: bool) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            self._check()
            for index, event in enumerate(self._inbox):
                if matches(event):
                    del self._inbox[index]
                    self._check()
                    return event
                if only:
                    raise AssertionError(f"{self.label}: expected {what}, got {event!r}")
            if self.closed.is_set():  # nothing more can arrive
                raise AssertionError(f"{self.label}: connection ended before {what}; log: {self.log}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"{self.label}: no {what} within {timeout} s; inbox: {list(self._inbox)}"
                )
            self._arrived.clear()
            try:
                async with asyncio.timeout(left):
                    await self._arrived.wait()
            except TimeoutError:
                pass

    async def expect_error(self, code: ErrorCode, *, fatal: bool, rule: str | None = None,
                           regarding: int | None = None, timeout: float = TIMEOUT) -> Message:
        """The next event must be an ERROR with this code and fatality (and rule, regarding)."""
        error = await self.expect(ERROR, timeout=timeout, only=True)
        got = (error.code, bool(error.flags & ErrorFlags.FATAL))
        assert got == (code, fatal), f"{self.label}: {error!r}, expected {code.name} fatal={fatal}"
        if rule is not None:
            assert error.rule == rule, f"{self.label}: {error!r} cites {error.rule}, expected {rule}"
        if regarding is not None:
            assert error.regarding == regarding, f"{self.label}: {error!r}, expected regarding {regarding}"
        return error

    def take_all(self) -> list[Event]:
        """Everything in the inbox now, emptying it (ConnectionClosed left out)."""
        self._check()
        events = [e for e in self._inbox if not isinstance(e, ConnectionClosed)]
        self._inbox.clear()
        return events

    async def collect(self, duration: float = 0.2) -> list[Event]:
        """Wait ``duration``, then take everything that arrived (for "sees nothing" checks)."""
        await asyncio.sleep(duration)
        return self.take_all()

    async def wait_closed(self, timeout: float = TIMEOUT) -> None:
        """Until the server has closed the connection; fails after ``timeout``."""
        try:
            async with asyncio.timeout(timeout):
                await self.closed.wait()
        except TimeoutError:
            raise AssertionError(f"{self.label}: still open after {timeout} s ({self.session.state})") from None

    async def aclose(self) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.transport.abort()
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump


class Chat:
    """A server on an ephemeral port over one SQLite file, and the clients of a test."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.server: ChatServer | None = None
        self.store: Store | None = None
        self.clients: list[ChatClient] = []
        self.passwords = dict(PASSWORDS)

    async def start(self, *, limits: Limits | None = None, users: tuple[tuple[str, str], ...] = (),
                    **config: Any) -> ChatServer:
        """A new server (and a new Store) on :attr:`db`; the demo accounts plus ``users`` exist."""
        self.store = Store(self.db, kdf=TEST_KDF)
        self.store.ensure_users(DEMO_ACCOUNTS + tuple(users))
        self.passwords.update(users)
        self.server = ChatServer(self.store, ServerConfig(port=0, limits=limits or Limits(), **config))
        await self.server.start()
        return self.server

    async def stop(self, timeout: float = 5.0) -> None:
        if self.server is not None and not self.server.stopped.is_set():
            await self.server.shutdown(timeout=timeout)

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    async def open(self, label: str = "raw", **options: Any) -> ChatClient:
        """A connected client that has sent nothing."""
        rcvbuf = options.pop("rcvbuf", None)
        client = ChatClient(label, **options)
        self.clients.append(client)
        return await client.open(self.port, rcvbuf=rcvbuf)

    async def greeted(self, label: str = "raw", **options: Any) -> ChatClient:
        """A client past the handshake (HELLO_OK received)."""
        client = await self.open(label, **options)
        await client.hello()
        return client

    async def login(self, user: str, password: str | None = None, **options: Any) -> ChatClient:
        """A logged-in client, labelled with the user name."""
        client = await self.greeted(options.pop("label", user), **options)
        await client.login(user, self.password(user) if password is None else password)
        return client

    def password(self, user: str) -> str:
        """The password of an account created by :meth:`start` (names match case-insensitively)."""
        return {name.casefold(): pw for name, pw in self.passwords.items()}[user.casefold()]

    def check_no_violations(self) -> None:
        bad = {c.label: c.violations for c in self.clients if c.strict and c.violations}
        assert not bad, f"the server sent illegal frames: {bad}"

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()
        await self.stop()
