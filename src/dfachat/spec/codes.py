"""Enumerated field values: error codes, outcomes, reasons and flag sets.

Each enumeration is declared once here; the layouts in
:mod:`dfachat.spec.messages` refer to these classes, the codec enforces
their value sets (R4.6, R4.7) and the document prints their tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, IntFlag

__all__ = [
    "ERROR_INFO",
    "ByeReason",
    "DeliverFlags",
    "ErrorCode",
    "ErrorFlags",
    "ErrorInfo",
    "LeftReason",
    "ListFlags",
    "Outcome",
    "SINCE",
    "since",
]


class ErrorCode(IntEnum):
    BAD_MAGIC = 1
    UNSUPPORTED_VERSION = 2
    UNKNOWN_TYPE = 3
    FRAME_TOO_LARGE = 4
    CHECKSUM_MISMATCH = 5
    MALFORMED_PAYLOAD = 6
    INVALID_TEXT = 7
    FIELD_INVALID = 8
    UNEXPECTED_MESSAGE = 9
    UNSUPPORTED_ENCODING = 10
    IDLE_TIMEOUT = 11
    SLOW_CONSUMER = 12
    SERVER_FULL = 13
    SESSION_REPLACED = 14
    RATE_LIMITED = 15
    INTERNAL_ERROR = 16
    TRUNCATED_FRAME = 17
    STORE_FAILED = 18


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    always_fatal: bool  # fatal in every state; otherwise fatal only before AUTH_OK (R6.7)
    rule: str
    meaning: str
    sent: bool = True  # False: only ever reported locally


ERROR_INFO: dict[ErrorCode, ErrorInfo] = {
    ErrorCode.BAD_MAGIC: ErrorInfo(True, "R2.1", "the frame did not start with the magic bytes"),
    ErrorCode.UNSUPPORTED_VERSION: ErrorInfo(True, "R2.2", "a frame or HELLO named no supported version"),
    ErrorCode.UNKNOWN_TYPE: ErrorInfo(False, "R2.3", "the frame's message type is not defined"),
    ErrorCode.FRAME_TOO_LARGE: ErrorInfo(True, "R2.4", "the frame's length exceeds the limit"),
    ErrorCode.CHECKSUM_MISMATCH: ErrorInfo(True, "R2.5", "the frame's CRC-32 did not match"),
    ErrorCode.MALFORMED_PAYLOAD: ErrorInfo(False, "R2.6", "the payload did not match its layout"),
    ErrorCode.INVALID_TEXT: ErrorInfo(False, "R3.4", "a TEXT field was invalid in the session's encoding"),
    ErrorCode.FIELD_INVALID: ErrorInfo(False, "R4.10", "a field broke its bounds or alphabet"),
    ErrorCode.UNEXPECTED_MESSAGE: ErrorInfo(False, "R12.1", "the message is not allowed in the current state"),
    ErrorCode.UNSUPPORTED_ENCODING: ErrorInfo(True, "R5.3", "HELLO named an encoding the server lacks"),
    ErrorCode.IDLE_TIMEOUT: ErrorInfo(True, "R9.2", "the session was silent for too long"),
    ErrorCode.SLOW_CONSUMER: ErrorInfo(True, "R9.3", "the session's output queue overflowed"),
    ErrorCode.SERVER_FULL: ErrorInfo(True, "R1.4", "the server is at capacity"),
    ErrorCode.SESSION_REPLACED: ErrorInfo(True, "R6.6", "the account logged in from another session"),
    ErrorCode.RATE_LIMITED: ErrorInfo(True, "R9.4", "the session sent too much, too fast"),
    ErrorCode.INTERNAL_ERROR: ErrorInfo(True, "R11.4", "the sender failed for a reason of its own"),
    ErrorCode.TRUNCATED_FRAME: ErrorInfo(True, "R2.9", "the connection ended inside a frame", sent=False),
    ErrorCode.STORE_FAILED: ErrorInfo(False, "R7.15", "the server could not store the message; nobody received it"),
}


class Outcome(IntEnum):
    """What happened to a MSG for one named recipient (R7.4)."""

    DELIVERED = 0
    LOSSY = 1
    QUEUED = 2
    UNKNOWN_USER = 3
    OVER_QUOTA = 4


class LeftReason(IntEnum):
    """Why a session ended, in LEFT (R8.2)."""

    QUIT = 0
    DROPPED = 1
    TIMEOUT = 2
    REPLACED = 3
    ERROR = 4


class ByeReason(IntEnum):
    """Why the server says BYE (R10.2, R10.3)."""

    QUIT = 0
    SHUTDOWN = 1


class DeliverFlags(IntFlag):
    """DELIVER flags (R7.5); other bits are reserved (R4.7)."""

    DIRECTED = 1
    LOSSY = 2
    STORED = 4
    REDELIVERED = 8


# Members added after version 1: a frame of an earlier version treats them as undefined
# values or reserved bits (R4.6, R4.7); every other member exists since version 1.
# Keyed by (enumeration, name): members of different enumerations compare equal as ints.
SINCE: dict[tuple[type, str], int] = {
    (ErrorCode, "STORE_FAILED"): 2,
    (Outcome, "OVER_QUOTA"): 2,
    (DeliverFlags, "REDELIVERED"): 2,
}


def since(member: IntEnum | IntFlag) -> int:
    """The first protocol version that defines an enumeration member."""
    return SINCE.get((type(member), str(member.name)), 1)


class ErrorFlags(IntFlag):
    """ERROR flags (R11.1); other bits are reserved (R4.7)."""

    FATAL = 1


class ListFlags(IntFlag):
    """AUTH_OK and USERS flags (R6.5, R8.3); other bits are reserved (R4.7)."""

    MORE = 1
