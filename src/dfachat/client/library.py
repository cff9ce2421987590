"""The client library: ``async with connect(...) as chat`` around :class:`~dfachat.fsm.ClientSession`.

    async with dfachat.client.connect("127.0.0.1", user="Liz", password="pw1") as chat:
        ack = await chat.send("hello", to=["Steve"])
        print(ack.outcomes)                       # {'Steve': Outcome.DELIVERED}
        print(await chat.who())
        async for event in chat.events():         # Delivery, Joined, Left, Notice, Closed
            ...

The engine decides what is legal; this module does the I/O, answers the
server's PINGs, keeps who-is-online current from AUTH_OK, USERS, JOINED and
LEFT, and turns the protocol's answers into return values and
:class:`~dfachat.errors.ClientError` exceptions with sentences a person can
act on. Reconnecting is the caller's decision; nothing here retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import ssl as _ssl
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dfachat import __version__
from dfachat.codec import encode
from dfachat.codec.messages import (  # type: ignore[attr-defined]
    AUTH_FAILED,
    AUTH_OK,
    BYE,
    DELIVER,
    ERROR,
    HELLO,
    HELLO_OK,
    JOINED,
    LEFT,
    LIST,
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
from dfachat.errors import (
    AuthenticationFailed,
    ClientError,
    ConnectionFailed,
    DfachatError,
    FrameError,
    LocalProtocolError,
    MessageRejected,
    SessionEnded,
)
from dfachat.fsm import ClientSession, ConnectionClosed, ProtocolViolation
from dfachat.spec import (
    DEFAULT_PORT,
    ENCODINGS,
    SUPPORTED_VERSIONS,
    ByeReason,
    DeliverFlags,
    ErrorCode,
    ErrorFlags,
    LeftReason,
    ListFlags,
    Outcome,
)

__all__ = [
    "Chat",
    "ChatEvent",
    "Closed",
    "Delivery",
    "Joined",
    "Left",
    "Notice",
    "SendResult",
    "delivery_time",
    "connect",
    "open_chat",
    "probe",
    "tls_context",
]

SOFTWARE = f"dfachat-client/{__version__}"


# --- what a caller receives ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivery:
    """A chat message for us (R7.5)."""

    server_msg_id: int
    sender: str
    text: str
    time: datetime
    directed: bool  # sent to named recipients, not to everyone
    lossy: bool  # characters our encoding cannot show were replaced by '?' (R3.5)
    stored: bool  # held for us while we were offline (R7.7)


@dataclass(frozen=True, slots=True)
class Joined:
    name: str


@dataclass(frozen=True, slots=True)
class Left:
    name: str
    reason: LeftReason


@dataclass(frozen=True, slots=True)
class Notice:
    """A non-fatal ERROR from the server: something we sent was refused; the session goes on."""

    code: ErrorCode
    rule: str
    reason: str


@dataclass(frozen=True, slots=True)
class Closed:
    """The session is over; ``error`` says why in a sentence (a :class:`SessionEnded`)."""

    error: SessionEnded


ChatEvent = Delivery | Joined | Left | Notice | Closed


@dataclass(frozen=True, slots=True)
class SendResult:
    """The MSG_ACK of one message (R7.4)."""

    msg_id: int
    server_msg_id: int
    delivered: int  # recipients that have it now
    lossy: int  # of those, how many got '?' replacements
    outcomes: dict[str, Outcome] = field(default_factory=dict)  # per named recipient; empty for a broadcast

    @property
    def problems(self) -> dict[str, Outcome]:
        """Recipients whose copy is not a faithful, immediate delivery."""
        return {n: o for n, o in self.outcomes.items() if o is not Outcome.DELIVERED}


def tls_context(ca: str | os.PathLike[str] | None = None) -> _ssl.SSLContext:
    """A client TLS context for ``open_chat(..., ssl=...)``: the server's certificate and host name are checked.

    ``ca`` is a PEM file of certificates to trust (a self-signed server's own
    certificate, say); without it, the system's trusted authorities.
    """
    try:
        return _ssl.create_default_context(cafile=None if ca is None else os.fspath(ca))
    except (OSError, _ssl.SSLError) as exc:
        reason = "no such file" if isinstance(exc, FileNotFoundError) else str(exc)
        hint = "; give the server's certificate (`dfachat cert` makes one) or a CA bundle" if ca is not None else ""
        raise ConnectionFailed(
            f"cannot use {os.fspath(ca) if ca is not None else 'the system'} CA certificates: {reason}{hint}"
        ) from None


# The latest time a calendar (and every time zone) can show: DELIVER's u64 milliseconds reach
# far beyond it, and a server's odd clock must not end the session.
_LAST_TIME = datetime(9999, 12, 30, tzinfo=UTC)


def delivery_time(timestamp_ms: int) -> datetime:
    """DELIVER's ``timestamp_ms`` (R7.5) as an aware UTC time, capped at the end of year 9999."""
    try:
        return min(datetime.fromtimestamp(timestamp_ms / 1000, UTC), _LAST_TIME)
    except (OverflowError, ValueError, OSError):
        return _LAST_TIME


def _looks_like_tls(data: bytes) -> bool:
    """A TLS record (alert 0x15 or handshake 0x16, version 3.x) where a dfachat frame should be."""
    return data[:1] in (b"\x15", b"\x16") and data[1:2] in (b"", b"\x03")


# --- sentences ----------------------------------------------------------------------------

_END_SENTENCES = {
    ErrorCode.SESSION_REPLACED: "you logged in from somewhere else, so this session was closed",
    ErrorCode.IDLE_TIMEOUT: "the server closed the session after a long silence",
    ErrorCode.SLOW_CONSUMER: "the server closed the session because messages were not being read fast enough",
    ErrorCode.SERVER_FULL: "the server is full; try again later",
    ErrorCode.UNSUPPORTED_VERSION: "the server does not speak this client's protocol version",
    ErrorCode.UNSUPPORTED_ENCODING: "the server does not support this text encoding",
    ErrorCode.RATE_LIMITED: "the server closed the session because too much was sent too fast",
}


def _ended_by_error(error: Message) -> SessionEnded:
    sentence = _END_SENTENCES.get(error.code, f"the server ended the session: {error.reason}")
    return SessionEnded(f"{sentence} ({error.code.name}, rule {error.rule})", rule=error.rule, code_name=error.code.name)


def _ended_by_bye(bye: Message) -> SessionEnded:
    if bye.reason == ByeReason.SHUTDOWN:
        return SessionEnded("the server is shutting down", rule="R10.3", code_name="BYE")
    return SessionEnded("you left the chat", rule="R10.2", code_name="BYE")


# --- the connection --------------------------------------------------------------------------


class Chat:
    """One logged-in session. Use :func:`connect` to make one."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, encoding: str,
                 address: str = "") -> None:
        self._address = address  # "host:port", for sentences
        self._first_read = True
        self._reader = reader
        self._writer = writer
        self.session = ClientSession()
        self.encoding = encoding
        self.user: str = ""
        self.server_software = ""
        self.limits: dict[str, int] = {}
        self.online: list[str] = []  # kept current from AUTH_OK, USERS, JOINED and LEFT
        self._events: asyncio.Queue[ChatEvent] = asyncio.Queue()
        self._reply: asyncio.Future[Any] | None = None  # the one outstanding request (R7.2)
        self._reply_kind: type | None = None
        self._users_pages: list[str] = []
        self._request_lock = asyncio.Lock()
        self._msg_ids = itertools.count(1)
        self._pings = itertools.count(1)
        self._pongs: dict[int, asyncio.Future[None]] = {}
        self._reader_task: asyncio.Task[None] | None = None
        self.ended: SessionEnded | None = None
        self._closed_emitted = False
        self._backlog: list[Any] = []  # events read with the handshake's last reply

    # --- handshake ----------------------------------------------------------------------
    async def _hello(self, software: str, timeout: float) -> None:
        self._write(HELLO(versions=SUPPORTED_VERSIONS, encoding=self.encoding, software=software))
        hello_ok = await self._await(HELLO_OK, timeout)
        self.server_software = hello_ok.software
        self.limits = {k: getattr(hello_ok, k) for k in ("max_frame", "max_text", "idle_timeout_s", "max_recipients", "login_attempts")}

    async def _login(self, user: str, password: str, software: str, timeout: float) -> None:
        await self._hello(software, timeout)
        self._write(USER(name=user))
        self._write(PASS(password=password))
        reply = await self._await((AUTH_OK, AUTH_FAILED), timeout)
        if isinstance(reply, AUTH_FAILED):
            if reply.attempts_left:
                with contextlib.suppress(DfachatError):
                    self._write(QUIT())
            raise AuthenticationFailed(
                "wrong user name or password"
                + (f" ({reply.attempts_left} attempts left in this session)" if reply.attempts_left else ""),
                attempts_left=reply.attempts_left,
            )
        self.user = reply.name
        names = list(reply.online)
        while reply.flags & ListFlags.MORE:
            reply = await self._await(USERS, timeout)
            names += reply.online
        self.online = names
        self._reader_task = asyncio.get_running_loop().create_task(self._read_forever())

    async def _await(self, kinds: Any, timeout: float) -> Any:
        """During the handshake: read until a message of ``kinds`` (others are errors).

        Events read together with it (stored DELIVERs, JOINED ... right after
        AUTH_OK) stay in the backlog for the running session.
        """
        async with asyncio.timeout(timeout):
            while True:
                if not self._backlog:
                    self._backlog = await self._read_events()
                    continue
                event = self._backlog.pop(0)
                if isinstance(event, kinds):
                    return event
                self._handshake_failure(event)

    def _handshake_failure(self, event: Any) -> None:
        if isinstance(event, ERROR):
            raise _ended_by_error(event)
        if isinstance(event, BYE):
            raise _ended_by_bye(event)
        if isinstance(event, ProtocolViolation):
            self._report_violation(event)
            raise ConnectionFailed(f"the server broke the protocol during login: {event}", rule=event.rule)
        if isinstance(event, ConnectionClosed):
            hint = "" if self._writer.get_extra_info("ssl_object") else " (if it speaks only TLS, use --tls)"
            raise ConnectionFailed(f"the server closed the connection during login{hint}")
        raise ConnectionFailed(f"unexpected {type(event).__name__} during login")

    async def _read_events(self) -> list[Any]:
        try:
            data = await self._reader.read(65536)
        except (ConnectionError, OSError) as exc:
            data = b""
            if self.ended is None:
                self.ended = SessionEnded(f"the connection to the server broke: {exc}")
        if self._first_read and data:
            self._first_read = False
            if _looks_like_tls(data) and self._writer.get_extra_info("ssl_object") is None:
                raise ConnectionFailed(f"the server at {self._address} speaks TLS: use --tls")
        return self.session.receive_data(data)

    def _write(self, message: Message) -> None:
        self._writer.write(self.session.send(message))

    # --- the running session ---------------------------------------------------------------
    async def _read_forever(self) -> None:
        try:
            backlog, self._backlog = self._backlog, []
            for event in backlog:
                self._handle(event)
            while not self.session.closed:
                for event in await self._read_events():
                    self._handle(event)
        except Exception as exc:  # never leave a caller waiting on a dead reader
            self._finish(SessionEnded(f"the client failed: {exc}", code_name="DROPPED"))
        finally:
            if self.ended is None:
                self._finish(SessionEnded("the connection to the server was lost"))

    def _handle(self, event: Any) -> None:
        if isinstance(event, DELIVER):
            self._events.put_nowait(
                Delivery(
                    server_msg_id=event.server_msg_id,
                    sender=event.sender,
                    text=event.text,
                    time=delivery_time(event.timestamp_ms),
                    directed=bool(event.flags & DeliverFlags.DIRECTED),
                    lossy=bool(event.flags & DeliverFlags.LOSSY),
                    stored=bool(event.flags & DeliverFlags.STORED),
                )
            )
        elif isinstance(event, JOINED):
            if event.name not in self.online:
                self.online.append(event.name)
            self._events.put_nowait(Joined(event.name))
        elif isinstance(event, LEFT):
            if event.name in self.online:
                self.online.remove(event.name)
            self._events.put_nowait(Left(event.name, event.reason))
        elif isinstance(event, PING):
            if self.session.can_send(PONG):
                self._write(PONG(nonce=event.nonce))
        elif isinstance(event, PONG):
            waiter = self._pongs.pop(event.nonce, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        elif isinstance(event, MSG_ACK):
            self._resolve(MSG_ACK, event)
        elif isinstance(event, USERS):
            self._users_pages += event.online
            if not event.flags & ListFlags.MORE:
                pages, self._users_pages = self._users_pages, []
                self._resolve(USERS, pages)
        elif isinstance(event, ERROR):
            if event.flags & ErrorFlags.FATAL:
                self._finish(_ended_by_error(event))
            elif self._reply is not None and event.regarding in (MSG.TYPE, LIST.TYPE):
                self._fail_reply(
                    MessageRejected(f"the server refused it: {event.reason}", rule=event.rule, code_name=event.code.name)
                )
            else:
                self._events.put_nowait(Notice(event.code, event.rule, event.reason))
        elif isinstance(event, BYE):
            self._finish(_ended_by_bye(event))
        elif isinstance(event, ProtocolViolation):
            self._report_violation(event)
            self._finish(SessionEnded(f"the server broke the protocol ({event}); disconnected", rule=event.rule))
        elif isinstance(event, ConnectionClosed):
            self._finish(self.ended or SessionEnded("the server closed the connection"))

    def _report_violation(self, event: ProtocolViolation) -> None:
        """R11.3: tell the server what it broke (best effort) before closing."""
        with contextlib.suppress(DfachatError, OSError, RuntimeError):
            self._write(event.reply)

    def _resolve(self, kind: type, value: Any) -> None:
        if self._reply is not None and self._reply_kind is kind and not self._reply.done():
            self._reply.set_result(value)

    def _fail_reply(self, error: Exception) -> None:
        if self._reply is not None and not self._reply.done():
            self._reply.set_exception(error)

    def _finish(self, error: SessionEnded) -> None:
        if self._closed_emitted:
            return
        self._closed_emitted = True
        self.ended = self.ended or error
        self._fail_reply(self.ended)
        for waiter in self._pongs.values():
            if not waiter.done():
                waiter.set_exception(self.ended)
        self._pongs.clear()
        self._events.put_nowait(Closed(self.ended))
        self.session.close()
        with contextlib.suppress(Exception):
            self._writer.close()

    def _check_open(self) -> None:
        if self.ended is not None:
            raise self.ended

    async def _request(self, message: Message, kind: type, timeout: float) -> Any:
        async with self._request_lock:  # one MSG or LIST outstanding (R7.2)
            self._check_open()
            loop = asyncio.get_running_loop()
            self._reply, self._reply_kind = loop.create_future(), kind
            try:
                self._write(message)
                async with asyncio.timeout(timeout):
                    return await self._reply
            finally:
                self._reply = self._reply_kind = None

    # --- the API ---------------------------------------------------------------------------
    async def send(self, text: str, to: Iterable[str] = (), *, timeout: float = 30.0) -> SendResult:
        """Send ``text`` to the named users (none: everyone online); returns the server's MSG_ACK.

        Raises :class:`MessageRejected` when the server refused it and
        :class:`SessionEnded` when the session is over.
        """
        recipients = tuple(to)
        if self.limits and len(text) > self.limits["max_text"]:
            raise MessageRejected(
                f"the message is {len(text)} characters long; the server accepts {self.limits['max_text']}",
                rule="R4.2",
                code_name="FIELD_INVALID",
            )
        try:
            encoded = text.encode(ENCODINGS[self.encoding].codec)
        except UnicodeEncodeError as exc:
            raise MessageRejected(
                f"{text[exc.start:exc.end]!r} cannot be written in {self.encoding}; choose another encoding",
                rule="R3.2",
                code_name="INVALID_TEXT",
            ) from None
        del encoded
        if self.limits and len(recipients) > self.limits["max_recipients"]:
            raise MessageRejected(
                f"the message names {len(recipients)} recipients; the server accepts {self.limits['max_recipients']}",
                rule="R4.11",
                code_name="FIELD_INVALID",
            )
        message = MSG(msg_id=next(self._msg_ids) & 0xFFFFFFFF, recipients=recipients, text=text)
        if self.limits:
            try:
                size = len(encode(message, self.encoding))
            except FrameError:
                size = 0  # a name the spec forbids: the engine refuses it below, with its rule
            if size > self.limits["max_frame"]:
                raise MessageRejected(
                    f"the message makes a {size}-byte frame; the server accepts {self.limits['max_frame']}",
                    rule="R4.11",
                    code_name="FRAME_TOO_LARGE",
                )
        try:
            ack = await self._request(message, MSG_ACK, timeout)
        except LocalProtocolError as exc:
            if not isinstance(exc.__cause__, FrameError):
                raise
            # A recipient name or count the spec forbids (R4.1, R4.3): nothing was sent.
            raise MessageRejected(f"cannot send it: {exc.__cause__.detail}", rule=exc.rule, code_name="FIELD_INVALID") from None
        return SendResult(
            msg_id=ack.msg_id,
            server_msg_id=ack.server_msg_id,
            delivered=ack.delivered,
            lossy=ack.lossy,
            outcomes={r.name: r.outcome for r in ack.results},
        )

    async def who(self, *, timeout: float = 30.0) -> list[str]:
        """Who is online now (LIST, R8.3); also refreshes :attr:`online`."""
        names = await self._request(LIST(), USERS, timeout)
        self.online = list(names)
        return list(names)

    async def ping(self, *, timeout: float = 10.0) -> float:
        """Round trip to the server in seconds (PING/PONG, R9.1)."""
        self._check_open()
        nonce = next(self._pings) & 0xFFFFFFFF
        loop = asyncio.get_running_loop()
        waiter = self._pongs[nonce] = loop.create_future()
        started = loop.time()
        async with self._request_lock:  # a client pings only when not waiting (R9.1)
            self._write(PING(nonce=nonce))
        async with asyncio.timeout(timeout):
            await waiter
        return loop.time() - started

    async def events(self) -> AsyncIterator[ChatEvent]:
        """Deliveries, joins, leaves and notices as they come; ends after :class:`Closed`."""
        while True:
            event = await self._events.get()
            yield event
            if isinstance(event, Closed):
                return

    def next_event_nowait(self) -> ChatEvent | None:
        try:
            return self._events.get_nowait()
        except asyncio.QueueEmpty:
            return None

    async def quit(self, *, timeout: float = 5.0) -> None:
        """Leave cleanly: QUIT, wait for BYE (R10.1, R10.2), close."""
        if self.ended is None:
            async with self._request_lock:
                if self.session.can_send(QUIT) and self.ended is None:
                    self._write(QUIT())
            with contextlib.suppress(asyncio.TimeoutError):
                async with asyncio.timeout(timeout):
                    while self.ended is None:
                        await asyncio.sleep(0.01)
        await self.aclose()

    async def aclose(self) -> None:
        if self.ended is None:
            self._finish(SessionEnded("you closed the connection", code_name="DROPPED"))
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader_task
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()


async def open_chat(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    user: str,
    password: str,
    encoding: str = "utf-8",
    software: str = SOFTWARE,
    timeout: float = 10.0,
    ssl: Any = None,
) -> Chat:
    """Connect and log in; returns a :class:`Chat` (call ``quit()`` when done)."""
    if encoding not in ENCODINGS:
        raise ConnectionFailed(f"{encoding!r} is not a dfachat encoding; use one of {', '.join(ENCODINGS)}", rule="R3.1")
    chat = await _open(host, port, encoding, timeout, ssl)
    try:
        await chat._login(user, password, software, timeout)
    except TimeoutError:
        chat._writer.close()
        raise ConnectionFailed(f"the server at {host}:{port} did not answer within {timeout:g} s") from None
    except ClientError:
        chat._writer.close()
        raise
    except DfachatError as exc:  # e.g. a name the spec forbids: say which rule
        chat._writer.close()
        raise ConnectionFailed(f"cannot log in: {exc.detail}", rule=exc.rule) from None
    return chat


async def probe(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    encoding: str = "utf-8",
    software: str = SOFTWARE,
    timeout: float = 10.0,
    ssl: Any = None,
) -> str:
    """Check that a dfachat server answers at ``host:port`` (HELLO, HELLO_OK in ``encoding``),
    then leave (QUIT); returns its software string. Raises what :func:`open_chat` raises.

    Lets a program find out that the server is there before it asks a person for a password.
    """
    chat = await _open(host, port, encoding, timeout, ssl)
    try:
        await chat._hello(software, timeout)
        with contextlib.suppress(DfachatError, OSError):
            chat._write(QUIT())
            await chat._writer.drain()
    except TimeoutError:
        raise ConnectionFailed(f"the server at {host}:{port} did not answer within {timeout:g} s") from None
    except ClientError:
        raise
    except DfachatError as exc:
        raise ConnectionFailed(f"the server at {host}:{port} cannot be used: {exc.detail}", rule=exc.rule) from None
    finally:
        chat._writer.close()
    return chat.server_software


async def _open(host: str, port: int, encoding: str, timeout: float, ssl: Any) -> Chat:
    """A connected :class:`Chat` before its handshake; ConnectionFailed saying why not."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, ssl=ssl)
    except _ssl.SSLCertVerificationError as exc:
        raise ConnectionFailed(
            f"the server at {host}:{port} sent a certificate that cannot be trusted "
            f"({exc.verify_message or exc.reason}); give its CA certificate with --ca FILE"
        ) from None
    except _ssl.SSLError as exc:
        raise ConnectionFailed(
            f"the server at {host}:{port} does not speak TLS (the TLS handshake failed: {exc.reason or exc})"
        ) from None
    except (OSError, TimeoutError) as exc:
        if isinstance(exc, TimeoutError):
            reason = "timed out"
        elif exc.errno and exc.errno > 0 and not isinstance(exc, socket.gaierror):
            reason = os.strerror(exc.errno)  # asyncio's strerror is "Connect call failed ('::1', 1)"
        else:
            reason = exc.strerror or str(exc)
        raise ConnectionFailed(f"cannot reach a dfachat server at {host}:{port}: {reason}") from None
    return Chat(reader, writer, encoding, f"{host}:{port}")


@contextlib.asynccontextmanager
async def connect(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    user: str,
    password: str,
    encoding: str = "utf-8",
    software: str = SOFTWARE,
    timeout: float = 10.0,
    ssl: Any = None,
) -> AsyncIterator[Chat]:
    """``async with connect(host, port, user=..., password=...) as chat:`` -- logs in, quits on exit."""
    chat = await open_chat(host, port, user=user, password=password, encoding=encoding, software=software, timeout=timeout, ssl=ssl)
    try:
        yield chat
    finally:
        await chat.quit()
