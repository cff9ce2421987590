"""The reference codec: construct interpreting the spec's schemas, nothing generated.

Slow (about 1/20 of hand-written ``struct`` code) and exact. The differential
tests hold the generated codec to it in both directions, errors included;
the benchmark uses it as one of its columns. The checks run in the order the
generated frame decoder runs them: magic, version, length limit, checksum,
type, then the payload field by field.
"""

from __future__ import annotations

import io
from typing import Any

from construct import ChecksumError, ConstError, ConstructError, StreamError

from dfachat.codec.frames import python_codec
from dfachat.codec.messages import MESSAGE_CLASSES, RECORD_CLASSES, Message, Record
from dfachat.errors import (
    BadMagic,
    ChecksumMismatch,
    FieldInvalid,
    FrameError,
    FrameTooLarge,
    MalformedPayload,
    TruncatedFrame,
    UnknownMessageType,
    UnsupportedVersion,
)
from dfachat.spec import FRAME, FRAME_OVERHEAD, HEADER, LIMITS, MESSAGES_BY_CODE, SUPPORTED_VERSIONS
from dfachat.spec.types import List, unwrap

__all__ = ["decode_frame", "encode"]


def _plain(value: Any) -> Any:
    if isinstance(value, Record):
        return {name: _plain(getattr(value, name)) for name in value.FIELDS}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def encode(message: Message, encoding: str = "utf-8", version: int = 1) -> bytes:
    spec = message.SPEC
    if version not in SUPPORTED_VERSIONS or not spec.in_version(version):  # as the generated codec: no frame
        raise UnknownMessageType(f"{spec.name} does not exist in protocol version {version}", message_type=spec.code)
    layout = spec.layout_for(version)
    values = {sub.name: _plain(getattr(message, sub.name)) for sub in layout.subcons}
    try:
        payload = layout.build(values, encoding=python_codec(encoding))
    except FrameError:
        raise
    except ConstructError as exc:
        raise FieldInvalid(f"{spec.name}: {exc}", rule="R4.10") from None
    if len(payload) + FRAME_OVERHEAD > LIMITS.max_frame:
        raise FrameTooLarge(f"{spec.name}: payload of {len(payload)} bytes is too large")
    header = {"version": version, "type": spec.code, "length": len(payload)}
    return FRAME.build({"header": {"value": header}, "payload": payload})


def _typed(spec: Any, container: Any) -> Message:
    values = []
    for sub in spec.layout.subcons:
        value = container.get(sub.name, 0)  # a field a later version added reads as 0
        con = unwrap(sub)
        if isinstance(con, List) and con.record is not None:
            record = RECORD_CLASSES[con.item.name]
            value = tuple(record(**item) for item in value)
        values.append(value)
    return MESSAGE_CLASSES[spec.name](**dict(zip(MESSAGE_CLASSES[spec.name].FIELDS, values, strict=True)))


def decode_frame(
    data: bytes,
    encoding: str = "utf-8",
    *,
    max_frame: int = LIMITS.max_frame,
    versions: frozenset[int] = frozenset(SUPPORTED_VERSIONS),
) -> Message:
    """Decode ``data``, which must be exactly one frame of one of ``versions``, with construct."""
    data = bytes(data)
    if len(data) < HEADER.sizeof():
        raise TruncatedFrame(f"{len(data)} bytes are not a whole frame")
    try:
        header = HEADER.parse(data)
    except ConstError:
        raise BadMagic("frame does not start with the magic bytes") from None
    if header.version not in versions:
        raise UnsupportedVersion(f"frame has protocol version {header.version}", message_type=header.type)
    total = header.length + FRAME_OVERHEAD
    if total > max_frame:
        raise FrameTooLarge(f"frame of {total} bytes exceeds {max_frame}", message_type=header.type)
    if len(data) < total:
        raise TruncatedFrame(f"{len(data)} bytes are not a whole frame", message_type=header.type)
    if len(data) > total:
        raise MalformedPayload(f"{len(data) - total} bytes follow the frame", rule="R2.7", message_type=header.type)
    try:
        frame = FRAME.parse(data)
    except ChecksumError:
        raise ChecksumMismatch("frame checksum mismatch", message_type=header.type) from None
    spec = MESSAGES_BY_CODE.get(header.type)
    if spec is None or header.version not in SUPPORTED_VERSIONS or not spec.in_version(header.version):
        raise UnknownMessageType(f"message type 0x{header.type:02X} is not defined", message_type=header.type)
    stream = io.BytesIO(frame.payload)
    try:
        container = spec.layout_for(header.version).parse_stream(stream, encoding=python_codec(encoding))
    except StreamError:
        raise MalformedPayload(f"{spec.name}: payload ends inside a field", message_type=header.type) from None
    except FrameError as err:
        err.message_type = header.type
        raise
    if stream.read():
        raise MalformedPayload(f"{spec.name}: bytes left over", rule="R2.7", message_type=header.type)
    return _typed(spec, container)
