"""Every message of every protocol version: its type code, who sends it, and its layout.

This is the one place a packet layout is written. Version 2 is declared as a
delta on version 1: a message says the version it appeared in (``since``), a
field added later is wrapped in :func:`added` (frames of earlier versions do
not carry it, and it reads as 0 there), and enumeration members added later
are listed in :data:`dfachat.spec.codes.SINCE`. :meth:`MessageSpec.layout_for`
gives the layout a frame of one version carries. Each payload is a
construct ``Struct`` of named, documented fields; the frame around it is
:data:`FRAME`. The codec, its oracle, the engine, the documents, the model
checker and the fuzzer all read these declarations.

Field order puts fixed-size fields first where the meaning allows, so a
decoder reads them with one unpack.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from functools import cache

from construct import (
    Bytes,
    Checksum,
    Const,
    Int8ub,
    Int16ub,
    Int32ub,
    Int64ub,
    RawCopy,
    Struct,
    this,
)

from dfachat.spec.codes import (
    ByeReason,
    DeliverFlags,
    ErrorCode,
    ErrorFlags,
    LeftReason,
    ListFlags,
    Outcome,
)
from dfachat.spec.limits import LIMITS, MAGIC
from dfachat.spec.types import Code, Flags, Ident, List, Text, at_version

__all__ = [
    "FRAME",
    "FRAME_OVERHEAD",
    "HEADER",
    "MESSAGES",
    "MESSAGES_BY_CODE",
    "MessageSpec",
    "USER_NAME",
    "added",
]

CLIENT, SERVER = "client", "server"

# --- the frame (section 2) -------------------------------------------------
HEADER = Struct(
    "magic" / Const(MAGIC) * "0x44 0x46, ASCII \"DF\" (R2.1)",
    "version" / Int8ub * "protocol version of this frame (R2.2, R5.2)",
    "type" / Int8ub * "message type code (R2.3)",
    "length" / Int32ub * "payload length in bytes (R2.4)",
)
FRAME = Struct(
    "header" / RawCopy(HEADER),
    "payload" / Bytes(this.header.value.length) * "the message's fields, laid out below",
    "crc"
    / Checksum(Int32ub, zlib.crc32, lambda ctx: ctx.header.data + ctx.payload)
    * "CRC-32 of header and payload (R2.5)",
)
FRAME_OVERHEAD = HEADER.sizeof() + 4  # header + checksum

# --- field types (section 4) -------------------------------------------------
# Bounds come from LIMITS, so a number is written once.
USER_NAME = Ident(
    "NAME", rf"[A-Za-z][A-Za-z0-9_.-]{{0,{LIMITS.max_name - 1}}}", "R4.1", "user name", casefold=True
)
ENCODING_NAME = Ident(
    "IDENT", rf"[a-z0-9-]{{1,{LIMITS.max_encoding_name}}}", "R4.8", "encoding name"
)
SOFTWARE = Ident("IDENT", rf"[\x20-\x7e]{{1,{LIMITS.max_software}}}", "R4.8", "software name")
RULE_ID = Ident("IDENT", r"R[0-9]{1,2}\.[0-9]{1,2}", "R11.1", "rule id")
REASON = Ident(
    "REASON", rf"[\x20-\x7e]{{0,{LIMITS.max_reason}}}", "R4.12", "reason text", length=Int16ub
)


def _names(max_limit: str) -> List:
    return List(Int16ub, USER_NAME, max_limit, "R4.9", unique=True)


class _Added:
    """A field that first appears in ``version`` (see :func:`added`)."""

    def __init__(self, version: int, field: object) -> None:
        self.version, self.field = version, field


def added(version: int, field: object) -> _Added:
    """Mark ``field`` as new in ``version``: earlier versions' frames do not carry it."""
    return _Added(version, field)


@dataclass(frozen=True)
class MessageSpec:
    name: str
    code: int
    senders: frozenset[str]  # the roles that may send it
    layout: Struct  # the newest version's layout
    summary: str
    since: int = 1  # the first protocol version with this message
    added: tuple[tuple[str, int], ...] = field(default=())  # (field name, version it appeared in)

    def in_version(self, version: int) -> bool:
        return version >= self.since

    def field_since(self, name: str) -> int:
        return dict(self.added).get(name, self.since)

    def layout_for(self, version: int) -> Struct:
        """The layout a frame of ``version`` carries (the message must exist in it)."""
        return _layout_for(self, version)

    @property
    def sent_by_client(self) -> bool:
        return CLIENT in self.senders

    @property
    def sent_by_server(self) -> bool:
        return SERVER in self.senders


@cache
def _layout_for(spec: MessageSpec, version: int) -> Struct:
    if not spec.in_version(version):
        raise KeyError(f"{spec.name} does not exist in protocol version {version}")
    subcons = [at_version(sub, version) for sub in spec.layout.subcons if spec.field_since(sub.name) <= version]
    if len(subcons) == len(spec.layout.subcons) and all(
        a is b for a, b in zip(subcons, spec.layout.subcons, strict=True)
    ):
        return spec.layout
    return Struct(*subcons)


def _message(
    name: str, code: int, senders: tuple[str, ...], summary: str, *fields: object, since: int = 1
) -> MessageSpec:
    plain = [f.field if isinstance(f, _Added) else f for f in fields]
    news = tuple((f.field.name, f.version) for f in fields if isinstance(f, _Added))  # type: ignore[attr-defined]
    return MessageSpec(name, code, frozenset(senders), Struct(*plain), summary, since, news)


MESSAGES: tuple[MessageSpec, ...] = (
    _message(
        "HELLO", 0x01, (CLIENT,), "Opens the handshake (R5.1).",
        "versions" / List(Int8ub, Int8ub, "max_versions", "R4.5", min_items=1, unique=True)
        * "protocol versions the client supports",
        "encoding" / ENCODING_NAME * "the client's text encoding (R3.1)",
        "software" / SOFTWARE * "client software name and version",
    ),
    _message(
        "USER", 0x02, (CLIENT,), "Names the account to log in to (R6.1).",
        "name" / USER_NAME * "account name",
    ),
    _message(
        "PASS", 0x03, (CLIENT,), "The account's password (R6.1).",
        "password" / Text("max_password", "R4.4", min_chars=1) * "the password, in the session's encoding",
    ),
    _message(
        "MSG", 0x04, (CLIENT,), "A chat message to named recipients or to everyone (R7.1).",
        "msg_id" / Int32ub * "chosen by the client, echoed in MSG_ACK",
        "recipients" / List(Int8ub, USER_NAME, "max_recipients", "R4.3", unique=True)
        * "recipient names; none means everyone online but the sender",
        "text" / Text("max_text", "R4.2") * "the message text",
    ),
    _message("LIST", 0x05, (CLIENT,), "Asks who is online (R8.3)."),
    _message("QUIT", 0x06, (CLIENT,), "Ends the session (R10.1)."),
    _message(
        "DELIVER_ACK", 0x07, (CLIENT,),
        "The application has taken DELIVERs up to this one; the server may forget them (R7.10, R7.11).",
        "server_msg_id" / Int64ub * "the server message id of a DELIVER received in this session",
        since=2,
    ),
    _message(
        "HELLO_OK", 0x41, (SERVER,), "Accepts the handshake and announces limits (R5.4).",
        "version" / Int8ub * "the version chosen (R5.2)",
        "max_frame" / Int32ub * "largest frame the server accepts (R2.4)",
        "max_text" / Int16ub * "longest text, in code points (R4.2)",
        "idle_timeout_s" / Int16ub * "seconds of silence before IDLE_TIMEOUT (R9.2)",
        "max_recipients" / Int8ub * "most recipients in one MSG (R4.3)",
        "login_attempts" / Int8ub * "failed logins before the server closes (R6.3)",
        "encoding" / ENCODING_NAME * "the session's encoding, as the client asked (R5.4)",
        "software" / SOFTWARE * "server software name and version",
        added(2, "deliver_window" / Int16ub * "most DELIVERs unacknowledged at once (R7.12)"),
        added(2, "msg_window" / Int16ub * "most MSGs outstanding at once (R7.16)"),
    ),
    _message(
        "AUTH_OK", 0x42, (SERVER,), "Login succeeded; who is online (R6.5).",
        "flags" / Flags(Int8ub, ListFlags) * "MORE: USERS frames follow with the rest of the list",
        "name" / USER_NAME * "the account's registered name",
        "online" / _names("max_names_per_frame") * "users online, the new user included",
    ),
    _message(
        "AUTH_FAILED", 0x43, (SERVER,), "Login failed (R6.2, R6.3).",
        "attempts_left" / Int8ub * "attempts left in this session; 0: the server closes",
    ),
    _message(
        "MSG_ACK", 0x44, (SERVER,), "The outcome of one MSG (R7.3, R7.4).",
        "msg_id" / Int32ub * "the MSG's msg_id",
        "server_msg_id" / Int64ub * "the id DELIVER carries for this message",
        "delivered" / Int32ub * "recipients that received it now, lossy copies included",
        "lossy" / Int32ub * "of those, how many got a lossy copy (R3.5)",
        "results"
        / List(
            Int8ub,
            "RecipientResult"
            / Struct("name" / USER_NAME * "recipient", "outcome" / Code(Int8ub, Outcome) * "Outcome"),
            "max_recipients",
            "R7.4",
        )
        * "one per named recipient, in the MSG's order; empty for a broadcast",
    ),
    _message(
        "DELIVER", 0x45, (SERVER,), "A chat message for this session's user (R7.5).",
        "server_msg_id" / Int64ub * "the server's message id (R7.3)",
        "timestamp_ms" / Int64ub * "server time, milliseconds since 1970-01-01 UTC",
        "flags" / Flags(Int8ub, DeliverFlags) * "DIRECTED, LOSSY, STORED, REDELIVERED",
        "sender" / USER_NAME * "the sender's registered name",
        "text" / Text("max_text", "R4.2") * "the text, in this session's encoding",
    ),
    _message(
        "JOINED", 0x46, (SERVER,), "A user logged in (R8.1).",
        "name" / USER_NAME * "who joined",
    ),
    _message(
        "LEFT", 0x47, (SERVER,), "A user's session ended (R8.2).",
        "reason" / Code(Int8ub, LeftReason) * "LeftReason",
        "name" / USER_NAME * "who left",
    ),
    _message(
        "USERS", 0x48, (SERVER,), "Who is online: the answer to LIST, or the rest of AUTH_OK (R8.3).",
        "flags" / Flags(Int8ub, ListFlags) * "MORE: another USERS frame follows",
        "online" / _names("max_names_per_frame") * "users online",
    ),
    _message(
        "BYE", 0x49, (SERVER,), "The server closes the session (R10.2, R10.3).",
        "reason" / Code(Int8ub, ByeReason) * "ByeReason",
    ),
    _message(
        "PING", 0x70, (CLIENT, SERVER), "Are you there? (R9.1)",
        "nonce" / Int32ub * "echoed in PONG",
    ),
    _message(
        "PONG", 0x71, (CLIENT, SERVER), "The answer to PING (R9.1).",
        "nonce" / Int32ub * "the PING's nonce",
    ),
    _message(
        "ERROR", 0x7F, (CLIENT, SERVER), "A rule was broken (section 11).",
        "code" / Code(Int16ub, ErrorCode) * "ErrorCode",
        "flags" / Flags(Int8ub, ErrorFlags) * "FATAL: the sender closes after this frame",
        "regarding" / Int8ub * "type code of the offending frame, 0 if none or unknown",
        "rule" / RULE_ID * "the rule that was broken, such as R2.5",
        "reason" / REASON * "what was wrong, for people",
    ),
)

MESSAGES_BY_NAME: dict[str, MessageSpec] = {m.name: m for m in MESSAGES}
MESSAGES_BY_CODE: dict[int, MessageSpec] = {m.code: m for m in MESSAGES}
