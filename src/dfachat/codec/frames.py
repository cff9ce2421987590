"""Frames: ``encode`` a message, ``decode_frame`` one frame, ``FrameDecoder`` for a stream.

The per-message work is done by the functions :mod:`._generate` writes from
the schemas; this module adds the frame around them (section 2) and the
stream buffering. Every malformed input ends in a :class:`~dfachat.errors.FrameError`
naming its rule; nothing else escapes.

Error recovery (R2.8): framing errors (bad magic, version, length, checksum)
kill the decoder -- it re-raises the same error on every later call and
drops what it is fed. Payload errors (unknown type, malformed payload,
invalid text, invalid field) consume exactly the offending frame, so the
next call goes on with the next frame.
"""

from __future__ import annotations

import zlib
from typing import Any

from dfachat.codec._generate import checksum_struct, generate, header_struct
from dfachat.codec.messages import Message
from dfachat.errors import (
    BadMagic,
    ChecksumMismatch,
    DfachatError,
    FrameError,
    FrameTooLarge,
    MalformedPayload,
    TruncatedFrame,
    UnknownMessageType,
    UnsupportedVersion,
)
from dfachat.spec import ENCODINGS, LIMITS, MAGIC, SUPPORTED_VERSIONS

__all__ = [
    "GENERATED_SOURCE",
    "FrameDecoder",
    "UnsupportedEncoding",
    "decode_frame",
    "encode",
    "python_codec",
]

ENCODERS, DECODERS, GENERATED_SOURCE = generate()

_HEADER = header_struct()
_unpack_header = _HEADER.unpack_from
_HEADER_SIZE = _HEADER.size
_CRC = checksum_struct()
_unpack_crc = _CRC.unpack_from
_CRC_SIZE = _CRC.size
_OVERHEAD = _HEADER_SIZE + _CRC_SIZE
_crc32 = zlib.crc32
_CODECS = {name: enc.codec for name, enc in ENCODINGS.items()}
_ALL_VERSIONS = frozenset(SUPPORTED_VERSIONS)
_HANDSHAKE = frozenset({1})  # HELLO and an ERROR answering it travel in version 1 (R5.2)


class UnsupportedEncoding(DfachatError):
    """An encoding name that is not in the spec's table (R3.1)."""

    rule, code_name = "R3.1", "UNSUPPORTED_ENCODING"


def python_codec(encoding: str) -> str:
    """The Python codec implementing a wire encoding name (``"utf-16"`` -> ``"utf-16-be"``)."""
    try:
        return _CODECS[encoding]
    except (KeyError, TypeError):
        raise UnsupportedEncoding(
            f"{encoding!r} is not a dfachat encoding; use one of {', '.join(_CODECS)}"
        ) from None


def encode(message: Message, encoding: str = "utf-8", version: int = 1) -> bytes:
    """The frame for ``message`` in protocol ``version``, its TEXT fields in ``encoding``.

    Raises :class:`~dfachat.errors.FieldInvalid` or :class:`~dfachat.errors.InvalidText`
    naming the field and rule when a value cannot be sent, and
    :class:`~dfachat.errors.UnknownMessageType` when ``version`` has no such message.
    """
    encoder = ENCODERS.get((version, type(message)))
    if encoder is None:
        if not isinstance(message, Message):
            raise TypeError(f"not a dfachat message: {message!r}")
        raise UnknownMessageType(
            f"{message.NAME} does not exist in protocol version {version}", message_type=message.TYPE
        )
    codec = _CODECS.get(encoding) if type(encoding) is str else None
    return encoder(message, codec or python_codec(encoding))


def _speaks(versions: frozenset[int]) -> str:
    return " or ".join(str(v) for v in sorted(versions))


def _frame_end(buf: Any, pos: int, max_frame: int, versions: frozenset[int]) -> tuple[int, int, int] | None:
    """Check the header at ``pos``: (version, message type, end of frame), or None when incomplete."""
    if len(buf) - pos < _HEADER_SIZE:
        return None
    magic, version, mtype, length = _unpack_header(buf, pos)
    if magic != MAGIC:
        raise BadMagic(f"frame starts with {bytes(magic)!r}, not {MAGIC!r}")
    if version not in versions:
        raise UnsupportedVersion(
            f"frame has protocol version {version}, this session speaks {_speaks(versions)}",
            message_type=mtype,
        )
    if length > max_frame - _OVERHEAD:
        raise FrameTooLarge(
            f"frame of {length + _OVERHEAD} bytes exceeds the limit of {max_frame}", message_type=mtype
        )
    return version, mtype, pos + _HEADER_SIZE + length + _CRC.size


def _check_and_decode(buf: bytes, pos: int, end: int, version: int, mtype: int, codec: str) -> Message:
    """Checksum, then payload, of the complete frame buf[pos:end] (a ``bytes``)."""
    crc_at = end - _CRC.size
    (crc,) = _unpack_crc(buf, crc_at)
    if _crc32(buf[pos:crc_at]) != crc:
        raise ChecksumMismatch(f"frame checksum is 0x{crc:08X}, the frame's CRC-32 is not", message_type=mtype)
    decoder = DECODERS.get((version, mtype))
    if decoder is None:
        raise UnknownMessageType(f"message type 0x{mtype:02X} is not defined", message_type=mtype)
    try:
        return decoder(buf, pos + _HEADER_SIZE, crc_at, codec)
    except FrameError as err:
        err.message_type = mtype
        raise


def decode_frame(
    data: bytes,
    encoding: str = "utf-8",
    *,
    max_frame: int = LIMITS.max_frame,
    versions: frozenset[int] = _ALL_VERSIONS,
) -> Message:
    """Decode ``data``, which must be exactly one frame of one of ``versions`` (by default any
    supported version: the header says which)."""
    # The header checks of _frame_end and the body of _check_and_decode, inlined:
    # this is the hot path of every benchmark and of the fuzzer's oracle.
    if type(data) is not bytes:
        data = bytes(data)
    size = len(data)
    if size < _HEADER_SIZE:
        raise TruncatedFrame(f"{size} bytes are not a whole frame")
    magic, version, mtype, length = _unpack_header(data, 0)
    if magic != MAGIC or version not in versions or length > max_frame - _OVERHEAD:
        _frame_end(data, 0, max_frame, versions)  # raises the precise error
    crc_at = _HEADER_SIZE + length
    if crc_at + _CRC_SIZE != size:
        if crc_at + _CRC_SIZE > size:
            raise TruncatedFrame(f"{size} bytes are not a whole frame", message_type=mtype)
        raise MalformedPayload(
            f"{size - crc_at - _CRC_SIZE} bytes follow the frame", rule="R2.7", message_type=mtype
        )
    if _crc32(data[:crc_at]) != _unpack_crc(data, crc_at)[0]:
        raise ChecksumMismatch("frame checksum does not match its CRC-32", message_type=mtype)
    decoder = DECODERS.get((version, mtype))
    if decoder is None:
        raise UnknownMessageType(f"message type 0x{mtype:02X} is not defined", message_type=mtype)
    codec = _CODECS.get(encoding) if type(encoding) is str else None
    try:
        return decoder(data, _HEADER_SIZE, crc_at, codec or python_codec(encoding))
    except FrameError as err:
        err.message_type = mtype
        raise


class FrameDecoder:
    """Streaming decoder: ``feed`` bytes in any split, take messages with ``next_message``.

    >>> d = FrameDecoder("utf-8")
    >>> d.feed(data)
    >>> while (m := d.next_message()) is not None: ...

    ``encoding`` may change between frames (it does after HELLO_OK), and so may
    ``versions``, the protocol versions a frame may carry: version 1 until the
    handshake is done, then the session's (R2.2, R5.2).
    """

    __slots__ = ("_buf", "_pos", "_codec", "_encoding", "_failed", "max_frame", "versions")

    def __init__(
        self, encoding: str = "utf-8", *, max_frame: int = LIMITS.max_frame, versions: frozenset[int] = _HANDSHAKE
    ) -> None:
        self.versions = versions
        self._buf: bytes | bytearray = b""
        self._pos = 0
        self._encoding = encoding
        self._codec = python_codec(encoding)
        self._failed: FrameError | None = None
        self.max_frame = max_frame

    @property
    def encoding(self) -> str:
        return self._encoding

    @encoding.setter
    def encoding(self, encoding: str) -> None:
        self._codec = python_codec(encoding)
        self._encoding = encoding

    @property
    def buffered(self) -> int:
        """Bytes received but not yet decoded."""
        return len(self._buf) - self._pos

    @property
    def failed(self) -> FrameError | None:
        """The framing error that ended this stream, if one did."""
        return self._failed

    def feed(self, data: bytes) -> None:
        if self._failed is not None or not data:
            return
        buf = self._buf
        if self._pos >= len(buf):
            # Nothing pending: keep the caller's bytes and decode them in place.
            self._buf = data if type(data) is bytes else bytes(data)
            self._pos = 0
            return
        if type(buf) is bytes:
            buf = bytearray(memoryview(buf)[self._pos :])
            self._pos = 0
        elif self._pos > 65536:
            del buf[: self._pos]
            self._pos = 0
        buf += data
        self._buf = buf

    def next_message(self) -> Message | None:
        """The next whole message, None if more bytes are needed; raises FrameError."""
        if self._failed is not None:
            raise self._failed
        buf, pos = self._buf, self._pos
        try:
            found = _frame_end(buf, pos, self.max_frame, self.versions)
        except FrameError as err:
            self._fail(err)
            raise
        if found is None or found[2] > len(buf):
            return None
        version, mtype, end = found
        if end == len(buf):
            self._buf, self._pos = b"", 0  # hold no reference to the caller's chunk
        else:
            self._pos = end
        if type(buf) is not bytes:
            buf, pos, end = bytes(buf[pos:end]), 0, end - pos
        try:
            return _check_and_decode(buf, pos, end, version, mtype, self._codec)
        except ChecksumMismatch as err:
            self._fail(err)
            raise

    def eof(self) -> None:
        """The stream ended: raise TruncatedFrame if bytes are pending.

        Call it once ``next_message`` has returned None, so that whole frames
        still buffered have been taken first.
        """
        if self._failed is None and self.buffered:
            mtype = _unpack_header(self._buf, self._pos)[2] if self.buffered >= _HEADER_SIZE else None
            err = TruncatedFrame(f"the stream ended {self.buffered} bytes into a frame", message_type=mtype)
            self._fail(err)
            raise err

    def discard(self) -> int:
        """Drop everything buffered (a session that ignores input, R12.4); returns the byte count."""
        dropped = self.buffered
        self._buf, self._pos = b"", 0
        return dropped

    def _fail(self, err: FrameError) -> None:
        self._failed = err
        self._buf, self._pos = b"", 0
