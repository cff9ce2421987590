"""The error hierarchy: everything dfachat raises on purpose is a ``DfachatError``.

Each error carries the numbered spec rule it enforces (``rule``) and the name
of the protocol error code an ERROR frame reports it with (``code_name``).
The codes themselves are protocol data and live in :mod:`dfachat.spec`; they
are looked up by name so that this module imports nothing from the spec.

    DfachatError
    +-- SpecError                 the spec itself is inconsistent (import time)
    +-- FrameError                bytes that are not a valid frame (codec)
    |   +-- BadMagic, UnsupportedVersion, FrameTooLarge,
    |   |   ChecksumMismatch, TruncatedFrame            (framing: fatal, R2.8)
    |   +-- UnknownMessageType, MalformedPayload,
    |       InvalidText, FieldInvalid                   (payload: frame skipped)
    +-- ProtocolError             a legal frame at the wrong moment
    |   +-- LocalProtocolError    our own side broke the spec (a bug here)
    |   +-- RemoteProtocolError   the peer broke the spec
    |   +-- UnexpectedMessage     a message with no row in the state table
    +-- ClientError               what the client library tells its caller
        +-- ConnectionFailed      no connection to the server
        +-- AuthenticationFailed  wrong user name or password (R6.2, R6.3)
        +-- MessageRejected       the server refused a MSG or LIST (R7.9)
        +-- SessionEnded          the server ended the session (BYE, fatal ERROR, drop)
"""

from __future__ import annotations

__all__ = [
    "AuthenticationFailed",
    "BadMagic",
    "ClientError",
    "ConnectionFailed",
    "MessageRejected",
    "SessionEnded",
    "ChecksumMismatch",
    "DfachatError",
    "FieldInvalid",
    "FrameError",
    "FrameTooLarge",
    "InvalidText",
    "LocalProtocolError",
    "MalformedPayload",
    "ProtocolError",
    "RemoteProtocolError",
    "SpecError",
    "TruncatedFrame",
    "UnexpectedMessage",
    "UnknownMessageType",
    "UnsupportedVersion",
]


class DfachatError(Exception):
    """Root of every error dfachat raises on purpose.

    ``rule`` is the spec rule (``"R2.5"``) the error enforces; ``code_name``
    the ERROR code (``"CHECKSUM_MISMATCH"``) a peer is told.
    """

    rule: str = "R11.4"
    code_name: str = "INTERNAL_ERROR"

    def __init__(self, detail: str, *, rule: str | None = None) -> None:
        if rule is not None:
            self.rule = rule
        self.detail = detail
        super().__init__(f"{detail} [{self.rule}]")

    @property
    def code(self) -> int | None:
        """The numeric ERROR code, from the spec's error table (None when the name is not a code)."""
        from dfachat.spec import ErrorCode

        member = ErrorCode.__members__.get(self.code_name)
        return None if member is None else int(member)


class SpecError(DfachatError):
    """The protocol declaration contradicts itself (detected at import)."""

    rule = "R12.1"


class FrameError(DfachatError):
    """Bytes that do not form a valid frame.

    ``fatal`` errors break framing itself: the frame boundary is lost and the
    receiver must not resynchronise (R2.8). The others are payload errors:
    the frame was delimited and checksummed correctly, so the decoder has
    consumed exactly that frame and decoding can go on with the next one.
    ``message_type`` is the type code from the header when it was read.
    """

    fatal: bool = False

    def __init__(
        self, detail: str, *, rule: str | None = None, message_type: int | None = None
    ) -> None:
        super().__init__(detail, rule=rule)
        self.message_type = message_type


class BadMagic(FrameError):
    rule, code_name, fatal = "R2.1", "BAD_MAGIC", True


class UnsupportedVersion(FrameError):
    rule, code_name, fatal = "R2.2", "UNSUPPORTED_VERSION", True


class FrameTooLarge(FrameError):
    rule, code_name, fatal = "R2.4", "FRAME_TOO_LARGE", True


class ChecksumMismatch(FrameError):
    rule, code_name, fatal = "R2.5", "CHECKSUM_MISMATCH", True


class TruncatedFrame(FrameError):
    rule, code_name, fatal = "R2.9", "TRUNCATED_FRAME", True


class UnknownMessageType(FrameError):
    rule, code_name = "R2.3", "UNKNOWN_TYPE"


class MalformedPayload(FrameError):
    rule, code_name = "R2.6", "MALFORMED_PAYLOAD"


class InvalidText(FrameError):
    rule, code_name = "R3.4", "INVALID_TEXT"


class FieldInvalid(FrameError):
    rule, code_name = "R4.10", "FIELD_INVALID"


class ProtocolError(DfachatError):
    """A well-formed message that the state machine does not allow."""

    rule, code_name = "R12.1", "UNEXPECTED_MESSAGE"

    def __init__(
        self,
        detail: str,
        *,
        rule: str | None = None,
        state: str | None = None,
        message_type: str | None = None,
    ) -> None:
        super().__init__(detail, rule=rule)
        self.state = state
        self.message_type = message_type


class LocalProtocolError(ProtocolError):
    """Our own side tried to break the spec: a bug in the caller, never the peer's fault."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the spec; raised by I/O wrappers that surface violations."""


class UnexpectedMessage(ProtocolError):
    """A received message with no row for it in the current state (R12.1)."""


class ClientError(DfachatError):
    """Raised by the client library; ``str()`` is a sentence a person can act on."""


class ConnectionFailed(ClientError):
    """The server could not be reached, or the connection broke during the handshake."""

    rule, code_name = "R1.1", "INTERNAL_ERROR"


class AuthenticationFailed(ClientError):
    """Wrong user name or password; ``attempts_left`` before the server closes (R6.3)."""

    rule, code_name = "R6.2", "UNEXPECTED_MESSAGE"

    def __init__(self, detail: str, *, attempts_left: int) -> None:
        super().__init__(detail)
        self.attempts_left = attempts_left


class MessageRejected(ClientError):
    """The server answered a MSG or LIST with a non-fatal ERROR (R7.9): nothing was delivered."""

    def __init__(self, detail: str, *, rule: str, code_name: str) -> None:
        super().__init__(detail, rule=rule)
        self.code_name = code_name


class SessionEnded(ClientError):
    """The session is over: BYE, a fatal ERROR, or the connection dropped.

    ``code_name`` is the ERROR code when the server sent one (``SESSION_REPLACED``,
    ``IDLE_TIMEOUT`` ...), ``"BYE"`` after BYE, ``"DROPPED"`` when the connection just ended.
    """

    def __init__(self, detail: str, *, rule: str = "R10.5", code_name: str = "DROPPED") -> None:
        super().__init__(detail, rule=rule)
        self.code_name = code_name
