"""Raw frame building and mutation for the codec tests, read off the spec's FRAME.

Frames are built with the spec's ``HEADER`` and checksum declarations, never
with a second hand-written layout, so a test that means "a valid header
around these bytes" stays right if the header changes.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from hypothesis import strategies as st

from dfachat.codec import decode_frame, oracle
from dfachat.errors import FrameError
from dfachat.spec import FRAME, HEADER, LIMITS, MAGIC, MESSAGES_BY_CODE, SUPPORTED_VERSIONS
from dfachat.spec.types import unwrap

__all__ = [
    "ALL_VERSIONS",
    "CRC_SIZE",
    "DEFAULT_VERSION",
    "HEADER_SIZE",
    "MAX_PAYLOAD",
    "MUTATIONS",
    "Chooser",
    "HypothesisChooser",
    "Mutation",
    "crc_of",
    "frame",
    "header",
    "header_field",
    "outcome",
    "payload_of",
    "undefined_types",
    "with_crc",
]

_CHECKSUM = unwrap(FRAME.subcons[-1])
HEADER_SIZE = HEADER.sizeof()
CRC_SIZE = _CHECKSUM.checksumfield.sizeof()
MAX_PAYLOAD = LIMITS.max_frame - HEADER_SIZE - CRC_SIZE
# A frame's version when a test does not say: encode's default, and the one version a
# FrameDecoder accepts before the handshake (R5.2).
DEFAULT_VERSION = 1
ALL_VERSIONS = frozenset(SUPPORTED_VERSIONS)
_FIELD_OFFSETS: dict[str, tuple[int, int]] = {}
_offset = 0
for _sub in HEADER.subcons:
    _size = _sub.sizeof()
    _FIELD_OFFSETS[_sub.name] = (_offset, _offset + _size)
    _offset += _size


def undefined_types(version: int | None = None) -> list[int]:
    """Type codes no version of the spec defines, or (given ``version``) that version does not (R2.3)."""
    return [
        t for t in range(256)
        if t not in MESSAGES_BY_CODE or (version is not None and not MESSAGES_BY_CODE[t].in_version(version))
    ]


def header(mtype: int, length: int, *, version: int = DEFAULT_VERSION, magic: bytes = MAGIC) -> bytes:
    raw = HEADER.build({"version": version, "type": mtype, "length": length})
    start, stop = _FIELD_OFFSETS["magic"]
    return raw[:start] + magic + raw[stop:]


def crc_of(data: bytes) -> bytes:
    """The checksum field for ``data`` (header and payload), as the spec computes it."""
    return _CHECKSUM.checksumfield.build(_CHECKSUM.hashfunc(bytes(data)))


def frame(mtype: int, payload: bytes, *, length: int | None = None, version: int = DEFAULT_VERSION,
          magic: bytes = MAGIC, crc: bool = True) -> bytes:
    """A frame around ``payload``; ``length`` overrides the length field, ``crc=False`` spoils the checksum."""
    head = header(mtype, len(payload) if length is None else length, version=version, magic=magic)
    check = crc_of(head + payload)
    if not crc:
        check = bytes(b ^ 0xFF for b in check)
    return head + payload + check


def with_crc(data: bytes) -> bytes:
    """``data`` with its last CRC_SIZE bytes replaced by the checksum of the rest."""
    body = data[:-CRC_SIZE]
    return body + crc_of(body)


def set_header_field(data: bytes, name: str, value: int | bytes) -> bytes:
    start, stop = _FIELD_OFFSETS[name]
    raw = value if isinstance(value, bytes) else value.to_bytes(stop - start, "big")
    return data[:start] + raw + data[stop:]


def header_field(data: bytes, name: str) -> int:
    """The value of one header field of ``data`` (a frame or its start), whatever its magic."""
    start, stop = _FIELD_OFFSETS[name]
    return int.from_bytes(data[start:stop], "big")


def payload_of(data: bytes) -> bytes:
    return data[HEADER_SIZE:-CRC_SIZE]


def outcome(
    decode: Callable[..., Any], data: bytes, encoding: str, versions: frozenset[int] = ALL_VERSIONS
) -> tuple[Any, ...]:
    """What ``decode`` made of ``data``, a frame of one of ``versions``: ("ok", message) or
    ("error", class, rule, message_type)."""
    try:
        return ("ok", decode(data, encoding, versions=versions))
    except FrameError as err:
        assert err.code_name and err.code  # every error maps onto an ErrorCode
        return ("error", type(err), err.rule, err.message_type)


def both_outcomes(
    data: bytes, encoding: str, versions: frozenset[int] = ALL_VERSIONS
) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    return outcome(decode_frame, data, encoding, versions), outcome(oracle.decode_frame, data, encoding, versions)


# --- mutations ------------------------------------------------------------------


class Chooser(Protocol):
    """Where a mutation's choices come from: Hypothesis, or a seeded random.Random."""

    def integer(self, lo: int, hi: int) -> int: ...
    def boolean(self) -> bool: ...
    def raw(self, size: int) -> bytes: ...


class HypothesisChooser:
    def __init__(self, draw: Any) -> None:
        self._draw = draw

    def integer(self, lo: int, hi: int) -> int:
        return self._draw(st.integers(lo, hi))

    def boolean(self) -> bool:
        return self._draw(st.booleans())

    def raw(self, size: int) -> bytes:
        return self._draw(st.binary(min_size=size, max_size=size))


class RandomChooser:
    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def integer(self, lo: int, hi: int) -> int:
        return self._rng.randint(lo, hi)

    def boolean(self) -> bool:
        return self._rng.random() < 0.5

    def raw(self, size: int) -> bytes:
        return self._rng.randbytes(size)


@dataclass(frozen=True)
class Mutation:
    name: str
    apply: Callable[[Chooser, bytes], bytes]

    def __repr__(self) -> str:
        return self.name


def _maybe_crc(c: Chooser, data: bytes) -> bytes:
    return with_crc(data) if len(data) >= HEADER_SIZE + CRC_SIZE and c.boolean() else data


def _flip_bits(c: Chooser, data: bytes) -> bytes:
    """Flip 1-3 bits, in the header, the payload or the checksum (the CRC must catch payload flips)."""
    out = bytearray(data)
    regions = [(0, HEADER_SIZE), (HEADER_SIZE, len(out) - CRC_SIZE), (len(out) - CRC_SIZE, len(out))]
    for _ in range(c.integer(1, 3)):
        start, stop = regions[c.integer(0, 2)]
        if stop > start:
            out[c.integer(start, stop - 1)] ^= 1 << c.integer(0, 7)
    return bytes(out)


def _flip_payload_bits_fix_crc(c: Chooser, data: bytes) -> bytes:
    """A payload change the checksum does not catch: the payload checks must."""
    payload = payload_of(data)
    if not payload:
        return data
    out = bytearray(payload)
    for _ in range(c.integer(1, 3)):
        i = c.integer(0, len(out) - 1)
        out[i] = c.integer(0, 255) if c.boolean() else out[i] ^ (1 << c.integer(0, 7))
    return with_crc(data[:HEADER_SIZE] + bytes(out) + data[-CRC_SIZE:])


def _truncate(c: Chooser, data: bytes) -> bytes:
    return data[: c.integer(0, len(data) - 1)]


def _extend(c: Chooser, data: bytes) -> bytes:
    return data + c.raw(c.integer(1, 8))


def _set_length(c: Chooser, data: bytes) -> bytes:
    actual = len(payload_of(data))
    choice = c.integer(0, 3)
    if choice == 0:
        length = max(0, actual + c.integer(-3, 3))
    elif choice == 1:
        length = MAX_PAYLOAD + c.integer(-1, 1)
    elif choice == 2:
        length = c.integer(0, 2**32 - 1)
    else:
        length = actual
    return _maybe_crc(c, set_header_field(data, "length", length))


def _set_type(c: Chooser, data: bytes) -> bytes:
    """Another type code on an intact frame: another type's decoder on this payload, or R2.3."""
    return with_crc(set_header_field(data, "type", c.integer(0, 255)))


def _set_version(c: Chooser, data: bytes) -> bytes:
    """Any version byte (mostly R2.2), or another supported version with the checksum fixed:
    the payload of one version read by another's layout (R2.3 for a type it lacks, R2.6, R2.7,
    R4.6, R4.7 for fields and values it lacks)."""
    if c.boolean():
        versions = sorted(ALL_VERSIONS)
        return with_crc(set_header_field(data, "version", versions[c.integer(0, len(versions) - 1)]))
    return _maybe_crc(c, set_header_field(data, "version", c.integer(0, 255)))


def _set_magic(c: Chooser, data: bytes) -> bytes:
    return _maybe_crc(c, set_header_field(data, "magic", c.raw(len(MAGIC))))


def _splice_payload(c: Chooser, data: bytes) -> bytes:
    """Insert, delete or replace payload bytes, then fix length and checksum: a well-framed bad payload."""
    payload = bytearray(payload_of(data))
    at = c.integer(0, len(payload))
    op = c.integer(0, 2)
    if op == 0:
        payload[at:at] = c.raw(c.integer(1, 4))
    elif op == 1:
        del payload[at : at + c.integer(1, 4)]
    else:
        payload[at : at + c.integer(0, 4)] = c.raw(c.integer(0, 4))
    mtype = data[_FIELD_OFFSETS["type"][0]]
    return frame(mtype, bytes(payload), version=header_field(data, "version"))


def _random_payload(c: Chooser, data: bytes) -> bytes:
    """Random bytes behind a valid header and checksum, for this frame's type or any type."""
    mtype = data[_FIELD_OFFSETS["type"][0]] if c.boolean() else c.integer(0, 255)
    return frame(mtype, c.raw(c.integer(0, 40)), version=header_field(data, "version"))


MUTATIONS: tuple[Mutation, ...] = tuple(
    Mutation(name, fn)
    for name, fn in (
        ("flip_bits", _flip_bits),
        ("flip_payload_fix_crc", _flip_payload_bits_fix_crc),
        ("truncate", _truncate),
        ("extend", _extend),
        ("set_length", _set_length),
        ("set_type", _set_type),
        ("set_version", _set_version),
        ("set_magic", _set_magic),
        ("splice_payload", _splice_payload),
        ("random_payload", _random_payload),
    )
)
