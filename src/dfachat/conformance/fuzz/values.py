"""Field values and malformed frames for the fuzzer, derived from the spec's layouts and errors.

* :func:`text_strategy` -- chat texts within the MSG layout's bounds, in the
  characters a session's encoding can carry (the shared, schema-driven
  :mod:`dfachat.conformance.strategies`, which also gives whole messages);
* :func:`name_variants` -- a registered name in another case (R4.1);
* :func:`unknown_names` -- names matching the NAME pattern that no account has;
* :data:`MALFORMED` -- one frame builder per payload and framing error class
  of :mod:`dfachat.errors` (which the spec maps to error codes): each builds
  a frame with exactly that one defect, so exactly one answer is right. The
  answer itself comes from the oracle core's session codec, not from here.
"""

from __future__ import annotations

import functools
import struct
import zlib
from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st

from dfachat.codec.messages import MESSAGE_CLASSES_BY_CODE  # type: ignore[attr-defined]
from dfachat.conformance import strategies
from dfachat.errors import (
    BadMagic,
    ChecksumMismatch,
    FieldInvalid,
    FrameError,
    FrameTooLarge,
    InvalidText,
    MalformedPayload,
    TruncatedFrame,
    UnknownMessageType,
    UnsupportedVersion,
)
from dfachat.server.store import name_key
from dfachat.spec import (
    ENCODINGS,
    FRAME_OVERHEAD,
    LIMITS,
    MAGIC,
    MESSAGES_BY_NAME,
    SUPPORTED_VERSIONS,
)
from dfachat.spec.types import unwrap

__all__ = ["JUDGED_VERSIONS", "MALFORMED", "TRAILING", "other_version", "uint_max", "uint_strategy", "frame", "name_variants", "text_strategy", "unknown_names"]


# The protocol versions the fuzzer can judge a session in. Version 2 (acknowledged delivery,
# R7.10-R7.16) needs an oracle that acknowledges DELIVERs and follows the inbox: future work
# (issue 14). Sessions offer these; in client mode HELLO_OK picks among them only.
JUDGED_VERSIONS: tuple[int, ...] = (1,)


def other_version(version: int) -> int:
    """A version a frame of a ``version`` session must not carry (R2.2): another supported one
    (a real version, refused because it is not the session's), else the one past the newest."""
    return next((v for v in SUPPORTED_VERSIONS if v != version), max(SUPPORTED_VERSIONS) + 1)


def _field(message: str, name: str) -> Any:
    return next(unwrap(sub) for sub in MESSAGES_BY_NAME[message].layout.subcons if sub.name == name)


@functools.cache
def text_strategy(encoding: str, max_text: int = LIMITS.max_text) -> st.SearchStrategy[str]:
    """MSG texts a session in ``encoding`` may send, under the target's ``max_text`` (R4.11).

    A session may only send what its encoding carries; what others receive is re-encoded, so
    lossy texts come from the universal senders.
    """
    return strategies.text_strategy(_field("MSG", "text"), encoding, max_chars=max_text)


def uint_max(message: str, field_name: str) -> int:
    """The largest value of an unsigned big-endian integer field of a layout (R1.2), from its width."""
    return strategies.int_bounds(_field(message, field_name))[1]


def uint_strategy(message: str, field_name: str) -> st.SearchStrategy[int]:
    """Any value of such a field."""
    return st.integers(*strategies.int_bounds(_field(message, field_name)))


def name_variants(name: str) -> st.SearchStrategy[str]:
    """``name`` as written, upper-cased, lower-cased or swapped: the same account (R4.1)."""
    return st.sampled_from(sorted({name, name.upper(), name.lower(), name.swapcase()}))


def unknown_names(known: set[str]) -> st.SearchStrategy[str]:
    """Valid NAMEs (the spec's pattern) that no account has, case-insensitively (R4.1)."""
    names = strategies.field_strategy(_field("USER", "name"), "utf-8")
    return names.filter(lambda n: name_key(n) not in known)


# --- malformed frames -----------------------------------------------------------------------


def frame(type_code: int, payload: bytes, *, version: int, magic: bytes = MAGIC,
          length: int | None = None, good_crc: bool = True) -> bytes:
    """A frame of protocol ``version`` (the session's) laid out by hand (section 2): header, payload, CRC-32."""
    head = magic + struct.pack(">BBI", version, type_code, len(payload) if length is None else length)
    crc = zlib.crc32(head + payload) ^ (0 if good_crc else 0xFFFFFFFF)
    return head + payload + struct.pack(">I", crc)


def _code(name: str) -> int:
    return MESSAGES_BY_NAME[name].code


def _ping_payload() -> bytes:
    return struct.pack(">I", 7)


def _invalid_text(encoding: str) -> bytes:
    """Bytes that are not text in ``encoding`` (R3.4), or b"" when every byte string is (latin-1)."""
    for candidate in (b"\xff", b"\x00", b"\x00\x00\x00", b"\x80", b"\x81", b"\xed\xa0\x80"):
        try:
            candidate.decode(ENCODINGS[encoding].codec)
        except UnicodeDecodeError:
            return candidate
    return b""


def _msg_payload(text: bytes, recipients: tuple[bytes, ...] = ()) -> bytes:
    names = b"".join(bytes([len(n)]) + n for n in recipients)
    return struct.pack(">IB", 1, len(recipients)) + names + struct.pack(">H", len(text)) + text


def _invalid_text_frame(authenticated: bool, encoding: str, version: int) -> tuple[bytes, str]:
    bad = _invalid_text(encoding)
    if not bad:  # latin-1 decodes every byte: no invalid text to send
        return MALFORMED[MalformedPayload](authenticated, encoding, version)
    if authenticated:
        return frame(_code("MSG"), _msg_payload(bad), version=version), f"MSG with text invalid in {encoding}"
    pair = frame(_code("USER"), b"\x01a", version=version) + frame(
        _code("PASS"), struct.pack(">H", len(bad)) + bad, version=version)
    return pair, f"USER, then PASS with text invalid in {encoding}"


# Each builder: (authenticated, session encoding, session version) -> (frame, description). Keyed by
# the error class it provokes; the answer a server owes is the oracle core's decoder's, not restated here.
Builder = Callable[[bool, str, int], tuple[bytes, str]]

MALFORMED: dict[type[FrameError], Builder] = {
    BadMagic: lambda auth, enc, v: (
        frame(_code("PING"), _ping_payload(), version=v, magic=b"XX"), "frame with bad magic"),
    UnsupportedVersion: lambda auth, enc, v: (
        frame(_code("PING"), _ping_payload(), version=other_version(v)), f"frame of version {other_version(v)}"),
    FrameTooLarge: lambda auth, enc, v: (
        frame(_code("PING"), b"", version=v, length=LIMITS.max_frame - FRAME_OVERHEAD + 1)[:8],
        "header of an oversized frame"),
    ChecksumMismatch: lambda auth, enc, v: (
        frame(_code("PING"), _ping_payload(), version=v, good_crc=False), "frame with a bad CRC"),
    # a type no version defines: undefined in the session's version too (R2.3)
    UnknownMessageType: lambda auth, enc, v: (
        frame(min(set(range(1, 256)) - set(MESSAGE_CLASSES_BY_CODE)), b"", version=v), "frame of an undefined type"),
    MalformedPayload: lambda auth, enc, v: (
        (frame(_code("PING"), b"\x00\x01", version=v), "PING with a short payload (R2.6)") if auth
        else (frame(_code("USER"), b"\x05ab", version=v), "USER with a short payload (R2.6)")),
    InvalidText: _invalid_text_frame,
    FieldInvalid: lambda auth, enc, v: (
        (frame(_code("MSG"), _msg_payload(b"hi", (b"9lives",)), version=v), "MSG to a name that breaks R4.1") if auth
        else (frame(_code("USER"), b"\x06_bad!!", version=v), "USER with a name that breaks R4.1")),
}
"""Frames with one defect each, per error class of :mod:`dfachat.errors` (the mid-frame drop of
:class:`TruncatedFrame` is an action of its own: nothing can be answered, R2.9)."""

TRAILING: Builder = lambda auth, enc, v: (  # noqa: E731 - the second MalformedPayload (R2.7)
    (frame(_code("LIST"), b"\x00", version=v), "LIST with a byte after its layout (R2.7)") if auth
    else (frame(_code("USER"), b"\x02ab\x00", version=v), "USER with a byte after its layout (R2.7)"))
"""MALFORMED_PAYLOAD's other cause: bytes left over after the last field (R2.7)."""

# Every error class the codec raises on input has a builder (or is the mid-frame drop).
_MISSING = {cls for cls in FrameError.__subclasses__() if cls not in MALFORMED and cls is not TruncatedFrame}
assert not _MISSING, f"no malformed-frame builder for {sorted(c.__name__ for c in _MISSING)}"


def truncated(encoding: str, version: int) -> bytes:
    """The first half of a PING frame of the session's ``version``: dropped after it, the server
    sees TRUNCATED_FRAME (R2.9)."""
    return frame(_code("PING"), _ping_payload(), version=version)[:7]
