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

Protocol versions: the library offers every version it speaks (``versions=``
narrows that, e.g. ``versions=(1,)``) and the server picks one (R5.2). In
version 2 a DELIVER stays in the server's inbox until the client acknowledges
it (R7.10): the library does so (DELIVER_ACK, cumulative) once the application
has *taken* the message, i.e. asks :meth:`Chat.events` (or
:meth:`Chat.next_event_nowait`) for the next event after it was handed out, or
calls :meth:`Chat.acknowledge` (with ``auto_ack=False``, for applications that
process later). It remembers the highest id taken in a :class:`TakenRecord` (in
memory, or a small file) and drops a DELIVER at or below it, acknowledging it
all the same (R7.11); so a crash and a reconnection never hand a message on
twice. Up to the announced msg_window MSGs may be outstanding (R7.16):
:meth:`Chat.submit` pipelines, :meth:`Chat.send` waits for its MSG_ACK.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import ssl as _ssl
from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from dfachat import __version__
from dfachat.codec import encode
from dfachat.codec.messages import (  # type: ignore[attr-defined]
    AUTH_FAILED,
    AUTH_OK,
    BYE,
    DELIVER,
    DELIVER_ACK,
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
    MESSAGES_BY_NAME,
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
    "TakenRecord",
    "delivery_time",
    "connect",
    "open_chat",
    "probe",
    "taken_path_for",
    "tls_context",
]

SOFTWARE = f"dfachat-client/{__version__}"
ACK_DELAY = 0.2  # s: the longest a taken message waits for its DELIVER_ACK (R7.11 asks for 1 s)

log = logging.getLogger(__name__)


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
    redelivered: bool = False  # sent to an earlier session that did not acknowledge it (R7.13)


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


# --- what the application has taken (R7.11) ------------------------------------------------


class TakenRecord:
    """The highest server message id the application has taken (R7.11), in memory or in a file.

    With ``path`` the id survives the process: it is read when the record is made
    and written atomically (a temporary file renamed over it, mode 0600) each time
    it grows, before the library acknowledges the message; :meth:`sync` (run before
    each DELIVER_ACK) makes the last write durable on disk. A record may be passed
    to one connection after another (``open_chat(..., taken=record)``): a message
    taken in one session is then dropped when a later one redelivers it.

    A file that cannot be written costs nothing but that protection: the library
    says so in its log and acknowledges anyway, so the server forgets what was taken.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.highest = 0
        self._unsynced = False
        self._warned = False
        if self.path is not None:
            self.highest = self._load(self.path)

    @staticmethod
    def _load(path: Path) -> int:
        try:
            text = path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return 0
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("cannot read %s (%s): messages taken before may be shown again", path, exc)
            return 0
        if not text.isdigit() or not text.isascii():
            log.warning("%s does not hold a message id: messages taken before may be shown again", path)
            return 0
        return int(text)

    def take(self, server_msg_id: int) -> None:
        """The application has taken ``server_msg_id`` (and every earlier message)."""
        if server_msg_id <= self.highest:
            return
        self.highest = server_msg_id
        if self.path is not None:
            self._write()

    def _write(self) -> None:
        assert self.path is not None
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, f"{self.highest}\n".encode("ascii"))
            finally:
                os.close(fd)
            os.replace(temporary, self.path)  # atomic: a crash leaves the old id or the new one
        except OSError as exc:
            with contextlib.suppress(OSError):
                temporary.unlink()
            if not self._warned:
                self._warned = True
                log.warning("cannot record the messages taken in %s (%s): after a crash they may be shown again",
                            self.path, exc)
            return
        self._unsynced = True

    def sync(self) -> None:
        """Make the last write durable (fsync of the file and its directory)."""
        if not self._unsynced or self.path is None:
            return
        self._unsynced = False
        with contextlib.suppress(OSError):
            for target, flags in ((self.path, os.O_RDONLY), (self.path.parent, os.O_RDONLY | os.O_DIRECTORY)):
                fd = os.open(target, flags)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)


def state_dir() -> Path:
    """dfachat's per-user state directory: ``$XDG_STATE_HOME/dfachat`` (``~/.local/state`` when unset)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "dfachat"


def taken_path_for(host: str, port: int, user: str) -> Path:
    """Where the terminal and desktop clients keep ``user``'s :class:`TakenRecord` for the
    server at ``host``:``port``; the directories are made here, private to the user (0700)."""
    directory = state_dir() / "taken"
    for level in (directory.parent, directory):
        level.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(OSError):  # a directory of someone else's: leave it be
            if level.stat().st_mode & 0o077:
                level.chmod(0o700)
    # user names are case-insensitive (R4.1); '@' occurs in none, and quote() escapes it (and '/',
    # ':') in the host: one file per server and account
    return directory / f"{quote(user.casefold(), safe='')}@{quote(host.lower(), safe='')}_{port}"


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


# A non-fatal ERROR regarding MSG, in words for the sender (R7.9, R7.15); others say the server's reason.
_REFUSED_SENTENCES = {
    ErrorCode.STORE_FAILED: "the server could not store your message; nobody received it; you can send it again",
}


def _refused(error: Message) -> MessageRejected:
    sentence = _REFUSED_SENTENCES.get(error.code, f"the server refused it: {error.reason}")
    return MessageRejected(sentence, rule=error.rule, code_name=error.code.name)


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
                 address: str = "", *, versions: Sequence[int] = SUPPORTED_VERSIONS,
                 auto_ack: bool = True, taken: TakenRecord | None = None) -> None:
        self._address = address  # "host:port", for sentences
        self._first_read = True
        self._reader = reader
        self._writer = writer
        self.session = ClientSession()
        self.encoding = encoding
        self.versions = tuple(versions)  # offered in HELLO (R5.1)
        self.auto_ack = auto_ack
        self.taken = taken if taken is not None else TakenRecord()
        self.user: str = ""
        self.server_software = ""
        self.limits: dict[str, int] = {}
        self.online: list[str] = []  # kept current from AUTH_OK, USERS, JOINED and LEFT
        self._events: asyncio.Queue[ChatEvent] = asyncio.Queue()
        # MSGs sent and not yet answered, oldest first: answers come in order (R7.3, R7.16)
        self._answers: deque[asyncio.Future[SendResult]] = deque()
        self._users_reply: asyncio.Future[list[str]] | None = None  # the LIST outstanding (R8.3)
        self._progress = asyncio.Event()  # set by every answer: a request waiting for room looks again
        self._users_pages: list[str] = []
        self._request_lock = asyncio.Lock()  # requests leave in the order they were made
        self._msg_ids = itertools.count(1)
        self._pings = itertools.count(1)
        self._pongs: dict[int, asyncio.Future[None]] = {}
        self._reader_task: asyncio.Task[None] | None = None
        self.ended: SessionEnded | None = None
        self._closed_emitted = False
        self._backlog: list[Any] = []  # events read with the handshake's last reply
        self._loop = asyncio.get_running_loop()
        self._handed: Delivery | None = None  # the last Delivery handed out (with auto_ack: not yet taken)
        self._ackable = 0  # every DELIVER of this session up to this id was taken or dropped
        self._ack_timer: asyncio.Handle | None = None
        self._ack_soon = False  # the timer is a call_soon, not a call_later
        self._warned_reset = False

    @property
    def version(self) -> int | None:
        """The protocol version the server chose (None before HELLO_OK)."""
        return self.session.version

    # --- handshake ----------------------------------------------------------------------
    async def _hello(self, software: str, timeout: float) -> None:
        self._write(HELLO(versions=self.versions, encoding=self.encoding, software=software))
        hello_ok = await self._await(HELLO_OK, timeout)
        self.server_software = hello_ok.software
        # what HELLO_OK announces in the chosen version (the windows only in version 2)
        fields = MESSAGES_BY_NAME["HELLO_OK"].layout_for(hello_ok.version).subcons
        self.limits = {
            f.name: getattr(hello_ok, f.name) for f in fields if isinstance(getattr(hello_ok, f.name), int)
        }
        self.limits.pop("version", None)

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
            self._delivered(event)
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
            self._answered(
                SendResult(
                    msg_id=event.msg_id,
                    server_msg_id=event.server_msg_id,
                    delivered=event.delivered,
                    lossy=event.lossy,
                    outcomes={r.name: r.outcome for r in event.results},
                )
            )
        elif isinstance(event, USERS):
            self._users_pages += event.online
            if not event.flags & ListFlags.MORE:
                pages, self._users_pages = self._users_pages, []
                self._answered_list(pages)
        elif isinstance(event, ERROR):
            if event.flags & ErrorFlags.FATAL:
                self._finish(_ended_by_error(event))
            elif event.regarding == MSG.TYPE and self._answers:
                self._answered(_refused(event))
            elif event.regarding == LIST.TYPE and self._users_reply is not None:
                self._answered_list(_refused(event))
            else:
                self._events.put_nowait(Notice(event.code, event.rule, event.reason))
        elif isinstance(event, BYE):
            self._finish(_ended_by_bye(event))
        elif isinstance(event, ProtocolViolation):
            self._report_violation(event)
            self._finish(SessionEnded(f"the server broke the protocol ({event}); disconnected", rule=event.rule))
        elif isinstance(event, ConnectionClosed):
            self._finish(self.ended or SessionEnded("the server closed the connection"))

    def _answered(self, answer: SendResult | MessageRejected) -> None:
        """The oldest outstanding MSG has its answer (R7.16: answers come in order)."""
        self._resolve(self._answers.popleft(), answer)

    def _answered_list(self, answer: list[str] | MessageRejected) -> None:
        waiter, self._users_reply = self._users_reply, None
        if waiter is not None:
            self._resolve(waiter, answer)

    def _resolve(self, waiter: asyncio.Future[Any], answer: Any) -> None:
        self._progress.set()
        if waiter.done():  # its caller stopped waiting (a timeout): the order still holds
            return
        if isinstance(answer, BaseException):
            waiter.set_exception(answer)
        else:
            waiter.set_result(answer)

    # --- delivery, acknowledgement and duplicates (R7.10, R7.11) ---------------------------------
    def _taken_already(self, msg_id: int) -> bool:
        """Taken before, in this process or (with a file) before a crash: never hand it on twice,
        but acknowledge it (R7.11). Every earlier DELIVER of the session has a smaller id, so
        was taken too."""
        if msg_id > self.taken.highest:
            return False
        self._ackable = max(self._ackable, msg_id)
        self._schedule_ack(urgent=True)
        return True

    def _delivered(self, event: Message) -> None:
        msg_id = event.server_msg_id
        if self._taken_already(msg_id):
            if not event.flags & (DeliverFlags.STORED | DeliverFlags.REDELIVERED) and not self._warned_reset:
                # Neither kept nor sent before, yet not above what was taken: the server's ids
                # started again (a new database), which R7.3 forbids. Dropped all the same (R7.11);
                # a person can act on a sentence.
                self._warned_reset = True
                where = f" (delete {self.taken.path} if messages are missing)" if self.taken.path else ""
                log.warning("the server at %s sent message %d, not above the %d already taken, as a new message: "
                            "its message ids seem to have started again%s", self._address, msg_id,
                            self.taken.highest, where)
            return
        self._events.put_nowait(
            Delivery(
                server_msg_id=msg_id,
                sender=event.sender,
                text=event.text,
                time=delivery_time(event.timestamp_ms),
                directed=bool(event.flags & DeliverFlags.DIRECTED),
                lossy=bool(event.flags & DeliverFlags.LOSSY),
                stored=bool(event.flags & DeliverFlags.STORED),
                redelivered=bool(event.flags & DeliverFlags.REDELIVERED),
            )
        )

    def _hand(self, event: ChatEvent | None) -> ChatEvent | None:
        """The application asks for the next event: with auto_ack, the one handed out before is taken."""
        if self.auto_ack and self._handed is not None:
            self._take(self._handed.server_msg_id)
            self._handed = None
        if isinstance(event, Delivery):
            self._handed = event
        return event

    def _take(self, msg_id: int) -> None:
        self.taken.take(msg_id)  # recorded (written, with a file) before it is acknowledged
        if msg_id > self._ackable:
            self._ackable = msg_id
            self._schedule_ack(urgent=False)

    def acknowledge(self, delivery: Delivery | None = None) -> None:
        """The application has taken ``delivery`` and every message handed out before it (all
        handed out so far when None): for ``auto_ack=False``, once it has done what it does with
        them (shown, stored ...). Acknowledges soon (R7.11); until then, or when the session
        ends first, the server delivers them again at the next login.

        Without acknowledgements the server stops sending after its deliver_window (R7.12).
        """
        if delivery is None:
            if self._handed is None:
                return
            delivery = self._handed
        if delivery is self._handed:
            self._handed = None
        self._take(delivery.server_msg_id)

    def _schedule_ack(self, *, urgent: bool) -> None:
        """Acknowledge at once when the application has caught up, half a window is waiting, or
        ``urgent``; otherwise within ACK_DELAY, so acknowledgements of a backlog go in batches."""
        if self.session.version is None or self.session.version < 2 or self.ended is not None:
            return
        waiting = sum(1 for i in self.session.unacknowledged if i <= self._ackable)
        now = urgent or self._events.empty() or waiting >= max(1, self.session.deliver_window // 2)
        if self._ack_timer is not None:
            if self._ack_soon or not now:
                return  # one is coming, soon enough
            self._ack_timer.cancel()
        self._ack_soon = now
        if now:
            self._ack_timer = self._loop.call_soon(self._flush_acks)
        else:
            self._ack_timer = self._loop.call_later(ACK_DELAY, self._flush_acks)

    def _flush_acks(self) -> None:
        """Send one cumulative DELIVER_ACK for everything taken or dropped (R7.10)."""
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        if self.ended is not None or not self.session.can_send(DELIVER_ACK):
            return
        last = None
        for msg_id in self.session.unacknowledged:  # oldest first
            if msg_id > self._ackable:
                break
            last = msg_id
        if last is None:
            return
        self.taken.sync()
        with contextlib.suppress(DfachatError, OSError, RuntimeError):
            self._write(DELIVER_ACK(server_msg_id=last))

    # --- the end ------------------------------------------------------------------------
    def _report_violation(self, event: ProtocolViolation) -> None:
        """R11.3: tell the server what it broke (best effort) before closing."""
        with contextlib.suppress(DfachatError, OSError, RuntimeError):
            self._write(event.reply)

    def _finish(self, error: SessionEnded) -> None:
        if self._closed_emitted:
            return
        self._closed_emitted = True
        self.ended = self.ended or error
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        waiters = [*self._answers, *self._pongs.values(), self._users_reply]
        self._pongs.clear()
        self._progress.set()
        for waiter in waiters:
            if waiter is not None and not waiter.done():
                waiter.set_exception(self.ended)
        self._events.put_nowait(Closed(self.ended))
        self.session.close()
        with contextlib.suppress(Exception):
            self._writer.close()

    def _check_open(self) -> None:
        if self.ended is not None:
            raise self.ended

    async def _until(self, ready: Any) -> None:
        """Wait (holding the request lock) until ``ready()``: each answer may make it so."""
        while not ready():
            self._check_open()
            self._progress.clear()
            await self._progress.wait()
        self._check_open()

    def _room_for_msg(self) -> bool:
        """A MSG may go now: no LIST outstanding, and fewer MSGs than the window (version 1: none, R7.2)."""
        return self._users_reply is None and self.session.outstanding < max(1, self.session.msg_window)

    def _idle(self) -> bool:
        """Nothing outstanding: LIST, PING and QUIT may go (R7.2, R9.1, R10.1)."""
        return self._users_reply is None and not self._answers

    # --- the API ---------------------------------------------------------------------------
    def _check_message(self, text: str, recipients: tuple[str, ...]) -> MSG:
        """The MSG for ``text``, or MessageRejected saying why the server would refuse it."""
        if self.limits and len(text) > self.limits["max_text"]:
            raise MessageRejected(
                f"the message is {len(text)} characters long; the server accepts {self.limits['max_text']}",
                rule="R4.2",
                code_name="FIELD_INVALID",
            )
        try:
            text.encode(ENCODINGS[self.encoding].codec)
        except UnicodeEncodeError as exc:
            raise MessageRejected(
                f"{text[exc.start:exc.end]!r} cannot be written in {self.encoding}; choose another encoding",
                rule="R3.2",
                code_name="INVALID_TEXT",
            ) from None
        if self.limits and len(recipients) > self.limits["max_recipients"]:
            raise MessageRejected(
                f"the message names {len(recipients)} recipients; the server accepts {self.limits['max_recipients']}",
                rule="R4.11",
                code_name="FIELD_INVALID",
            )
        message = MSG(msg_id=next(self._msg_ids) & 0xFFFFFFFF, recipients=recipients, text=text)
        if self.limits:
            try:
                size = len(encode(message, self.encoding, self.session.version or 1))
            except FrameError:
                size = 0  # a name the spec forbids: the engine refuses it below, with its rule
            if size > self.limits["max_frame"]:
                raise MessageRejected(
                    f"the message makes a {size}-byte frame; the server accepts {self.limits['max_frame']}",
                    rule="R4.11",
                    code_name="FRAME_TOO_LARGE",
                )
        return message

    async def submit(self, text: str, to: Iterable[str] = (), *, timeout: float = 30.0) -> asyncio.Future[SendResult]:
        """Send ``text`` without waiting for its MSG_ACK: returns once the MSG is written (after
        waiting, up to ``timeout``, for room in the server's msg_window, R7.16) with a future of
        its :class:`SendResult`, which raises :class:`MessageRejected` or :class:`SessionEnded`.

        Several submits in a row keep up to msg_window MSGs in flight (one in version 1);
        their answers come in the order the MSGs were submitted.
        """
        message = self._check_message(text, tuple(to))
        async with asyncio.timeout(timeout), self._request_lock:
            await self._until(self._room_for_msg)
            try:
                self._write(message)
            except LocalProtocolError as exc:
                if not isinstance(exc.__cause__, FrameError):
                    raise
                # A recipient name or count the spec forbids (R4.1, R4.3): nothing was sent.
                raise MessageRejected(
                    f"cannot send it: {exc.__cause__.detail}", rule=exc.rule, code_name="FIELD_INVALID"
                ) from None
            answer: asyncio.Future[SendResult] = asyncio.get_running_loop().create_future()
            # a caller that never looks at an answer is not an error worth a warning at exit
            answer.add_done_callback(lambda done: done.cancelled() or done.exception())
            self._answers.append(answer)
            return answer

    async def send(self, text: str, to: Iterable[str] = (), *, timeout: float = 30.0) -> SendResult:
        """Send ``text`` to the named users (none: everyone online); returns the server's MSG_ACK.

        Raises :class:`MessageRejected` when the server refused it (or could not store it:
        nobody received it then, and sending it again duplicates nothing, R7.15) and
        :class:`SessionEnded` when the session is over.
        """
        async with asyncio.timeout(timeout):
            answer = await self.submit(text, to, timeout=timeout)
            return await asyncio.shield(answer)

    async def who(self, *, timeout: float = 30.0) -> list[str]:
        """Who is online now (LIST, R8.3); also refreshes :attr:`online`."""
        async with asyncio.timeout(timeout), self._request_lock:  # nothing else outstanding (R7.2)
            await self._until(self._idle)
            self._write(LIST())
            reply = self._users_reply = asyncio.get_running_loop().create_future()
            # a timeout leaves the LIST outstanding: the USERS that answer it are still awaited
            names = await asyncio.shield(reply)
        self.online = list(names)
        return list(names)

    async def ping(self, *, timeout: float = 10.0) -> float:
        """Round trip to the server in seconds (PING/PONG, R9.1)."""
        self._check_open()
        nonce = next(self._pings) & 0xFFFFFFFF
        loop = asyncio.get_running_loop()
        waiter = self._pongs[nonce] = loop.create_future()
        started = loop.time()
        async with asyncio.timeout(timeout):
            async with self._request_lock:  # a client pings only when not waiting (R9.1)
                await self._until(self._idle)
                self._write(PING(nonce=nonce))
            await waiter
        return loop.time() - started

    async def events(self) -> AsyncIterator[ChatEvent]:
        """Deliveries, joins, leaves and notices as they come; ends after :class:`Closed`.

        Asking for the next event takes the :class:`Delivery` handed out before
        (with ``auto_ack``, the default): it is acknowledged and never handed on again.
        """
        while True:
            self._hand(None)
            event = await self._events.get()
            if isinstance(event, Delivery) and self._taken_already(event.server_msg_id):
                continue  # taken (acknowledged through another session) since it arrived
            self._hand(event)
            yield event
            if isinstance(event, Closed):
                return

    def next_event_nowait(self) -> ChatEvent | None:
        """The next event if one is waiting (taking the one handed out before, as :meth:`events`)."""
        self._hand(None)
        while True:
            try:
                event = self._events.get_nowait()
            except asyncio.QueueEmpty:
                return None
            if not (isinstance(event, Delivery) and self._taken_already(event.server_msg_id)):
                return self._hand(event)

    async def quit(self, *, timeout: float = 5.0) -> None:
        """Leave cleanly: acknowledge what was taken, QUIT, wait for BYE (R10.1, R10.2), close."""
        if self.ended is None:
            with contextlib.suppress(asyncio.TimeoutError, ClientError):
                async with asyncio.timeout(timeout), self._request_lock:
                    await self._until(self._idle)  # QUIT is sent with nothing outstanding
                    self._flush_acks()
                    if self.session.can_send(QUIT):
                        self._write(QUIT())
            with contextlib.suppress(asyncio.TimeoutError):
                async with asyncio.timeout(timeout):
                    while self.ended is None:
                        await asyncio.sleep(0.01)
        await self.aclose()

    async def abort(self) -> None:
        """Drop the connection at once, as a crash does: no QUIT, and nothing still waiting to
        be written (a DELIVER_ACK, say) goes out. What was not acknowledged comes again later."""
        with contextlib.suppress(Exception):
            self._writer.transport.abort()
        await self.aclose()

    async def aclose(self) -> None:
        """Drop the connection (no QUIT), acknowledging what was taken; what was not is
        delivered again later."""
        if self.ended is None:
            if not self._writer.transport.is_closing():  # not after abort(): a crash says nothing
                self._flush_acks()
            self._finish(SessionEnded("you closed the connection", code_name="DROPPED"))
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader_task
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()


Taken = TakenRecord | str | os.PathLike[str] | None


def _versions(versions: Iterable[int]) -> tuple[int, ...]:
    offered = tuple(sorted(set(versions)))
    unknown = [v for v in offered if v not in SUPPORTED_VERSIONS]
    if not offered or unknown:
        speaks = ", ".join(map(str, SUPPORTED_VERSIONS))
        asked = ", ".join(map(str, unknown)) or "none"
        raise ConnectionFailed(f"this client speaks protocol versions {speaks}, not {asked}", rule="R5.1")
    return offered


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
    versions: Iterable[int] = SUPPORTED_VERSIONS,
    auto_ack: bool = True,
    taken: Taken = None,
) -> Chat:
    """Connect and log in; returns a :class:`Chat` (call ``quit()`` when done).

    ``versions``: the protocol versions to offer (R5.1; the server picks the highest both
    speak). ``auto_ack``: acknowledge a message once the application asks for the next
    event (False: only through :meth:`Chat.acknowledge`). ``taken``: the
    :class:`TakenRecord` of the highest message id taken, or the path of its file
    (:func:`taken_path_for`); by default one in memory, for this connection only.
    """
    if encoding not in ENCODINGS:
        raise ConnectionFailed(f"{encoding!r} is not a dfachat encoding; use one of {', '.join(ENCODINGS)}", rule="R3.1")
    offered = _versions(versions)
    record = taken if isinstance(taken, TakenRecord) else TakenRecord(taken)
    chat = await _open(host, port, encoding, timeout, ssl, versions=offered, auto_ack=auto_ack, taken=record)
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
    versions: Iterable[int] = SUPPORTED_VERSIONS,
) -> str:
    """Check that a dfachat server answers at ``host:port`` (HELLO, HELLO_OK in ``encoding``),
    then leave (QUIT); returns its software string. Raises what :func:`open_chat` raises.

    Lets a program find out that the server is there before it asks a person for a password.
    """
    chat = await _open(host, port, encoding, timeout, ssl, versions=_versions(versions))
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


async def _open(host: str, port: int, encoding: str, timeout: float, ssl: Any, **options: Any) -> Chat:
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
    return Chat(reader, writer, encoding, f"{host}:{port}", **options)


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
    versions: Iterable[int] = SUPPORTED_VERSIONS,
    auto_ack: bool = True,
    taken: Taken = None,
) -> AsyncIterator[Chat]:
    """``async with connect(host, port, user=..., password=...) as chat:`` -- logs in, quits on exit.

    The options are :func:`open_chat`'s.
    """
    chat = await open_chat(
        host, port, user=user, password=password, encoding=encoding, software=software, timeout=timeout,
        ssl=ssl, versions=versions, auto_ack=auto_ack, taken=taken,
    )
    try:
        yield chat
    finally:
        await chat.quit()
