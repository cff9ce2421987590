"""The sans-IO protocol engine: bytes in, events out; messages in, bytes out.

Rules this module keeps (in the manner of h11's ``_state``):

* Everything that decides a next state comes from the table in
  :mod:`._table`, generated from the spec's machines. The only behaviour
  outside the table is stated here and in the spec: a state whose spec has
  ``discards_input`` drops what arrives (R12.4); a fatal violation stops
  decoding until the session closes (R10.4); which violations are fatal
  (:meth:`Session._is_fatal`, R2.8, R6.7, R11.3).
* No I/O, no clocks, no threads. ``receive_data`` never raises, whatever the
  bytes; ``send`` raises :class:`~dfachat.errors.LocalProtocolError` when our
  own side tries something the table forbids -- that is a bug, not input.
* Frames are processed one at a time in order. A wrapper that answers
  messages (a server) should use ``feed`` and ``next_event`` and answer each
  event before taking the next: the protocol's meaning is sequential (a PING
  followed by QUIT is answered PONG, then BYE). ``receive_data`` is the
  convenience that takes every event at once.

A session costs a few hundred bytes: ``__slots__`` and a shared table.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any, ClassVar, NamedTuple

from dfachat.codec.frames import FrameDecoder, encode
from dfachat.codec.messages import ERROR, Message  # type: ignore[attr-defined]
from dfachat.errors import (
    DfachatError,
    FrameError,
    LocalProtocolError,
    UnexpectedMessage,
    UnknownMessageType,
)
from dfachat.fsm._table import TABLES_BY_VERSION, Branch
from dfachat.fsm.events import ConnectionClosed, Event, ProtocolViolation
from dfachat.spec import (
    ERROR_INFO,
    LIMITS,
    MESSAGES_BY_CODE,
    SUPPORTED_VERSIONS,
    ErrorCode,
    ErrorFlags,
    Limits,
)

__all__ = ["ClientSession", "ServerSession", "Session", "SessionSnapshot", "make_error"]

_CLOSED = "CLOSED"


def _handshake_versions(offered: Any) -> frozenset[int]:
    """What a decoder accepts between HELLO and HELLO_OK: version 1 (HELLO, an ERROR answering
    it) and the offered versions this side supports (HELLO_OK, R5.2). An offered version the
    spec lacks stays UNSUPPORTED_VERSION (R2.2): there is no codec to read it by."""
    return frozenset({1, *(v for v in offered if v in SUPPORTED_VERSIONS)})


def _reason_text(detail: str, limit: int) -> str:
    """An ERROR reason is printable ASCII (R4.12): replace the rest, cut to the limit."""
    text = "".join(c if " " <= c <= "~" else "?" for c in detail)
    return text[:limit]


def make_error(
    code: ErrorCode,
    detail: str,
    *,
    rule: str | None = None,
    fatal: bool | None = None,
    regarding: int = 0,
    limits: Limits = LIMITS,
) -> Message:
    """An ERROR message; ``rule`` and ``fatal`` default to the error table's (section 11)."""
    info = ERROR_INFO[code]
    return ERROR(
        code=code,
        flags=ErrorFlags.FATAL if (info.always_fatal if fatal is None else fatal) else ErrorFlags(0),
        regarding=regarding,
        rule=rule or info.rule,
        reason=_reason_text(detail, limits.max_reason),
    )


class SessionSnapshot(NamedTuple):
    """Everything that decides a session's future, between frames: hashable, comparable.

    What it leaves out is what only exists inside a frame (a half-received
    frame in the decoder); :meth:`Session.snapshot` refuses while one is
    buffered. The model checker keeps these in its states and rebuilds
    engines from them with :meth:`Session.restore`.
    """

    state: str
    encoding: str
    stopped: bool  # a fatal violation was seen: nothing more is read (R10.4)
    version: int | None
    user: str | None
    failed_logins: int
    offered_versions: tuple[int, ...]
    outstanding: int = 0  # MSGs not yet answered (R7.2, R7.16)
    msg_window: int = 1
    deliver_window: int = 0
    unacknowledged: tuple[int, ...] = ()  # ids of DELIVERs not yet acknowledged, version 2 (R7.12)


class Session:
    """One side of one session. Use :class:`ServerSession` or :class:`ClientSession`."""

    role: ClassVar[str]
    _discarding: ClassVar[frozenset[str]]  # states that drop input (R12.4), in every version

    __slots__ = (
        "_table",  # the table of the session's version (version 1's until HELLO_OK)
        "_recv",  # _table.recv, one attribute lookup nearer
        "_state",
        "_decoder",
        "_encoding",
        "_stopped",
        "_eof",
        "_close_reported",
        "limits",
        "version",
        "user",
        "failed_logins",
        "offered_versions",
        "outstanding",
        "msg_window",
        "deliver_window",
        "unacknowledged",
    )

    def __init__(self, *, limits: Limits = LIMITS, encoding: str = "utf-8") -> None:
        self._use_version(1)
        self._state: str = self._table.initial
        self._encoding = encoding
        self._decoder = FrameDecoder(encoding, max_frame=limits.max_frame)
        self._stopped = False  # a fatal violation: read nothing more
        self._eof = False
        self._close_reported = False
        self.limits = limits
        self.version: int | None = None
        self.user: str | None = None
        self.failed_logins = 0
        self.offered_versions: tuple[int, ...] = ()
        self.outstanding = 0
        self.msg_window = 1
        self.deliver_window = 0
        self.unacknowledged: deque[int] = deque()

    def _use_version(self, version: int) -> None:
        self._table = TABLES_BY_VERSION[version][self.role]
        self._recv = self._table.recv

    # --- snapshots: the engine's state as a value ------------------------------
    def snapshot(self) -> SessionSnapshot:
        """This session's state as a hashable value (between frames: nothing half-received)."""
        if self._decoder.buffered:
            raise LocalProtocolError("a session holding part of a frame has no snapshot", state=self._state)
        return SessionSnapshot(
            self._state, self._encoding, self._stopped, self.version, self.user,
            self.failed_logins, self.offered_versions, self.outstanding, self.msg_window,
            self.deliver_window, tuple(self.unacknowledged),
        )

    @classmethod
    def restore(cls, snapshot: SessionSnapshot, *, limits: Limits = LIMITS) -> Session:
        """A session in the state ``snapshot`` describes, as if it had got there by itself."""
        session = cls.__new__(cls)
        (
            session._state, session._encoding, session._stopped, session.version, session.user,
            session.failed_logins, session.offered_versions, session.outstanding, session.msg_window,
            session.deliver_window, unacknowledged,
        ) = snapshot
        session.unacknowledged = deque(unacknowledged)
        session._use_version(snapshot.version or 1)
        session._decoder = FrameDecoder(snapshot.encoding, max_frame=limits.max_frame)
        if snapshot.version is not None:
            session._decoder.versions = frozenset({snapshot.version})
        elif snapshot.offered_versions:
            session._decoder.versions = _handshake_versions(snapshot.offered_versions)
        session._eof = False
        session._close_reported = False  # an end of input is still reported, once
        session.limits = limits
        return session

    # --- what a wrapper needs to know -----------------------------------------
    @property
    def state(self) -> str:
        return self._state

    @property
    def encoding(self) -> str:
        """The session's text encoding (a wire name, R3.2)."""
        return self._encoding

    @property
    def closed(self) -> bool:
        """The session is over: close the transport once what ``send`` returned is written."""
        return self._state == _CLOSED

    @property
    def must_close(self) -> bool:
        """Closed, or a fatal violation is pending: send its reply, then close."""
        return self._state == _CLOSED or self._stopped

    @property
    def authenticated(self) -> bool:
        return self._table.states[self._state].authenticated

    def can_send(self, message_type: type[Message] | Message) -> bool:
        """Whether some row lets this session send a message of this type now (guards aside)."""
        return message_type.TYPE in self._table.send[self._state]

    # --- receiving --------------------------------------------------------------
    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes (``b""`` means the peer closed) and take every event they complete."""
        self.feed(data)
        return list(self.events())

    def feed(self, data: bytes) -> None:
        """Buffer bytes from the peer; ``b""`` means the peer closed the transport."""
        if not data:
            self._eof = True
        elif not self._stopped and self._state != _CLOSED:
            self._decoder.feed(data)

    def events(self) -> Iterator[Event]:
        while (event := self.next_event()) is not None:
            yield event

    def next_event(self) -> Event | None:
        """The next event, or None when more bytes are needed. Never raises."""
        state = self._state
        if not self._stopped and state not in self._discarding:
            try:
                message = self._decoder.next_message()
            except FrameError as err:
                return self._violation(err, err.message_type)
            if message is not None:
                return self.receive_message(message)
        elif self._decoder.buffered:
            self._decoder.discard()  # R12.4
        if self._eof and not self._close_reported:
            return self._connection_closed()
        return None

    def receive_message(self, message: Message) -> Event | None:
        """Take an already decoded message, as if its frame had arrived (no codec).

        For models that pass typed messages (the model checker): the same table,
        guards, actions and violations as ``next_event``. None when the state
        discards input (R12.4) or reading has stopped after a fatal violation.
        """
        state = self._state
        if self._stopped or state in self._discarding:
            return None
        branches = self._recv[state].get(message.TYPE)
        if branches is not None:
            for branch in branches:
                if not branch.guards or branch.admits(self, message):
                    if branch.dest is not None:
                        self._state = branch.dest
                    if branch.actions:
                        self._run_actions(branch, message)
                    return message
        return self._violation(self._unexpected(message, branches), message.TYPE)

    def _connection_closed(self) -> ConnectionClosed:
        error = None
        if not self._stopped and self._state not in self._discarding:
            try:
                self._decoder.eof()
            except FrameError as err:
                error = err
        # Clean when the session expected nothing more from the peer (no receive rows left).
        clean = not self._recv[self._state]
        self._apply(self._table.closed[self._state], None)
        self._close_reported = True
        return ConnectionClosed(clean=clean and error is None, error=error)

    def _unexpected(self, message: Message, branches: tuple[Branch, ...] | None) -> UnexpectedMessage:
        state = self._state
        if branches:
            rule = branches[0].refused or branches[0].rule  # the rule the refusal breaks
            detail = f"{message.NAME} in {state} fails {branches[0].describe_guards()}"
        elif message.TYPE not in self._table.received_types:
            rule = "R12.3"
            detail = f"a {self.role} never receives {message.NAME}"
        else:
            rule = self._table.states[state].rule
            detail = f"{message.NAME} is not allowed in {state}"
        return UnexpectedMessage(detail, rule=rule, state=state, message_type=message.NAME)

    def _is_fatal(self, error: Any) -> bool:
        """Framing errors always (R2.8); anything before authentication (R6.7); at a client, anything (R11.3)."""
        return True

    def _violation(self, error: Any, type_code: int | None) -> ProtocolViolation:
        fatal = bool(getattr(error, "fatal", False)) or self._is_fatal(error)
        # a type the frame's version does not define (DELIVER_ACK in version 1) has no name here
        known = type_code is not None and not isinstance(error, UnknownMessageType)
        spec = MESSAGES_BY_CODE.get(type_code) if known else None
        code = ErrorCode[error.code_name]
        reply = make_error(
            code,
            error.detail,
            rule=error.rule,
            fatal=fatal,
            regarding=type_code if type_code is not None else 0,
            limits=self.limits,
        )
        if fatal:
            self._stopped = True
            self._decoder.discard()
        return ProtocolViolation(
            error=error,
            state=self._state,
            message_type=spec.name if spec is not None else None,
            fatal=fatal,
            reply=reply,
        )

    # --- sending ----------------------------------------------------------------
    def send(self, message: Message, *, frame: bytes | None = None) -> bytes:
        """The bytes for ``message``; the state moves as the table says.

        ``frame``: ``message`` already encoded in this session's encoding and version (a
        server pushing one message to many sessions encodes it once); it is returned as is.

        Raises LocalProtocolError (with the state, message type and rule) when
        the table has no row for it, or when the message cannot be encoded or
        its action refuses a value (an encoding the spec lacks); the session
        is then unchanged.
        """
        state = self._state
        row = self._table.send[state]
        try:
            branches = row.get(message.TYPE)
        except AttributeError:
            raise TypeError(f"not a dfachat message: {message!r}") from None
        if branches is None:
            raise LocalProtocolError(
                f"a {self.role} cannot send {message.NAME} in {state}",
                rule="R12.2",
                state=state,
                message_type=message.NAME,
            )
        for branch in branches:
            if not branch.guards or branch.admits(self, message):
                break
        else:
            raise LocalProtocolError(
                f"{message.NAME} in {state} fails {branches[0].describe_guards()}",
                rule=branches[0].refused or branches[0].rule,
                state=state,
                message_type=message.NAME,
            )
        # HELLO_OK travels in the version it chooses, every later frame in the session's (R5.2)
        version = message.version if message.NAME == "HELLO_OK" else self.version or 1
        try:
            data = encode(message, self._encoding, version) if frame is None else frame
        except FrameError as err:
            raise LocalProtocolError(
                f"cannot send {message.NAME}: {err.detail}", rule=err.rule, state=state, message_type=message.NAME
            ) from err
        try:
            self._apply(branch, message)
        except DfachatError as err:
            # An action refused a value the layout allows (HELLO or HELLO_OK naming an
            # encoding the spec lacks, R3.1): our bug, and the session stays as it was.
            self._state = state
            raise LocalProtocolError(
                f"cannot send {message.NAME}: {err.detail}", rule=err.rule, state=state, message_type=message.NAME
            ) from err
        return data

    def close(self) -> None:
        """Our side ended the transport (or saw it fail): the session is CLOSED."""
        if self._state != _CLOSED:
            self._apply(self._table.closed[self._state], None)
        self._close_reported = True

    # --- transitions and their actions (spec ACTIONS) --------------------------
    def _apply(self, branch: Branch, message: Message | None) -> None:
        if branch.dest is not None:
            self._state = branch.dest
        if branch.actions:
            self._run_actions(branch, message)

    def _run_actions(self, branch: Branch, message: Message | None) -> None:
        for action in branch.actions:
            getattr(self, action)(message)

    # The encoding first: it is what can fail (R3.1), and then nothing has changed.
    def offer(self, message: Any) -> None:
        self._set_encoding(message.encoding)
        self.offered_versions = tuple(message.versions)
        # HELLO_OK comes in a version offered, an ERROR answering HELLO in version 1 (R5.2)
        self._decoder.versions = _handshake_versions(message.versions)

    def adopt_encoding(self, message: Any) -> None:
        self._set_encoding(message.encoding)
        self.version = message.version
        self._use_version(message.version)
        self._decoder.versions = frozenset({message.version})
        if message.version >= 2:  # the windows HELLO_OK announces (R7.12, R7.16)
            self.msg_window, self.deliver_window = message.msg_window, message.deliver_window

    def count_msg(self, message: Any) -> None:
        self.outstanding += 1

    def count_answer(self, message: Any) -> None:
        self.outstanding -= 1

    def count_deliver(self, message: Any) -> None:
        if self.version is not None and self.version >= 2:
            self.unacknowledged.append(message.server_msg_id)

    def acknowledge(self, message: Any) -> None:
        # This DELIVER and every earlier one of the session (R7.10): by position, so an id
        # out of order (a server breaking R7.10's increasing ids) cannot strand the ones before it.
        unacknowledged, last = self.unacknowledged, message.server_msg_id
        while unacknowledged and unacknowledged.popleft() != last:
            pass

    def authenticate(self, message: Any) -> None:
        self.user = message.name

    def count_failure(self, message: Any) -> None:
        self.failed_logins += 1

    def _set_encoding(self, encoding: str) -> None:
        self._decoder.encoding = encoding
        self._encoding = encoding

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._state} user={self.user!r} encoding={self._encoding}>"


class ServerSession(Session):
    """The server's side of one client's session."""

    role = "server"
    _discarding = TABLES_BY_VERSION[1]["server"].discarding
    __slots__ = ()

    def _is_fatal(self, error: Any) -> bool:
        return not self._table.states[self._state].recovers  # R6.7, R11.3


class ClientSession(Session):
    """The client's side of its session with the server."""

    role = "client"
    _discarding = TABLES_BY_VERSION[1]["client"].discarding
    __slots__ = ()

    def hello(self, *, encoding: str = "utf-8", software: str = "dfachat", versions: tuple[int, ...] = SUPPORTED_VERSIONS) -> bytes:
        """Convenience: the HELLO that opens the session (R5.1)."""
        from dfachat.codec.messages import HELLO  # type: ignore[attr-defined]

        return self.send(HELLO(versions=versions, encoding=encoding, software=software))


def _check_actions() -> None:
    """Every action the spec names is a method here: a missing one fails at import, not at run time."""
    from dfachat.errors import SpecError
    from dfachat.spec import ACTIONS

    missing = [name for name in ACTIONS if not callable(getattr(Session, name, None))]
    if missing:
        raise SpecError(f"the engine implements no action {', '.join(missing)}")


_check_actions()
