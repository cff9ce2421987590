"""One test per documented malformed-input class: the exact error, rule, fatality and type.

Each case runs through the generated ``decode_frame``, the oracle's, and a
``FrameDecoder`` (the streaming path), which must all report the same.
Payloads are built from the layouts' own constructs (the raw, unchecked
sub-constructs for invalid values), so the cases follow the spec. The
payload cases run in every protocol version, with that version's layout: a
version-1 frame has no DELIVER_ACK (R2.3), no OVER_QUOTA or STORE_FAILED
(R4.6) and no REDELIVERED (R4.7).
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from construct import FormatField, Struct
from hypothesis import given, settings
from hypothesis import strategies as st

from dfachat.codec import FrameDecoder, decode_frame, encode, oracle, python_codec
from dfachat.codec.messages import MESSAGE_CLASSES, RECORD_CLASSES, Record
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
from dfachat.spec import (
    ENCODINGS,
    ERROR_INFO,
    HEADER,
    MESSAGES,
    MESSAGES_BY_NAME,
    RULES,
    SUPPORTED_VERSIONS,
    ErrorCode,
)
from dfachat.spec.codes import SINCE
from dfachat.spec.types import Code, Flags, Ident, List, Text, unwrap

from .strategies import (
    ENCODING_NAMES,
    any_message,
    encodings,
    examples,
    extreme_message,
    extreme_value,
    field_strategy,
    ident_at,
    versions,
)
from .wire import (
    ALL_VERSIONS,
    CRC_SIZE,
    HEADER_SIZE,
    MAX_PAYLOAD,
    MUTATIONS,
    HypothesisChooser,
    frame,
    header,
    header_field,
    undefined_types,
)

PING = MESSAGES_BY_NAME["PING"]
PING_PAYLOAD = bytes(PING.layout.sizeof())
FRAME_ERRORS = [BadMagic, UnsupportedVersion, FrameTooLarge, ChecksumMismatch, TruncatedFrame,
                UnknownMessageType, MalformedPayload, InvalidText, FieldInvalid]


# --- helpers ------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if isinstance(value, Record):
        return {name: _plain(getattr(value, name)) for name in value.FIELDS}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def field_bytes(sub: Any, value: Any, encoding: str = "utf-8") -> bytes:
    """One field's wire bytes, built by the spec's construct."""
    return sub.build(_plain(value), encoding=python_codec(encoding))


def payload_with(spec: Any, encoding: str = "utf-8", raw: dict[str, bytes] | None = None,
                 stop_after: str | None = None, version: int = 1) -> bytes:
    """The smallest valid payload of ``spec`` in ``version``, some fields replaced by raw wire
    bytes, cut after the field ``stop_after`` if given."""
    message = extreme_message(spec, encoding, largest=False, version=version)
    raw = raw or {}
    parts = []
    for sub in spec.layout_for(version).subcons:
        parts.append(raw[sub.name] if sub.name in raw else field_bytes(sub, getattr(message, sub.name), encoding))
        if sub.name == stop_after:
            break
    return b"".join(parts)


def decoders_say(data: bytes, encoding: str, *, stream: bool = True,
                 accept: frozenset[int] | None = None) -> Iterator[tuple[str, FrameError]]:
    """The error each decoder raises for ``data`` (fails if one does not raise). The decoders
    accept the versions ``accept``; by default the frame's own (any supported one when no
    header is there to say)."""
    if accept is None:
        accept = frozenset({header_field(data, "version")}) if len(data) >= HEADER_SIZE else ALL_VERSIONS
    for name, decode in (("generated", decode_frame), ("oracle", oracle.decode_frame)):
        with pytest.raises(FrameError) as info:
            decode(data, encoding, versions=accept)
        yield name, info.value
    if stream:
        decoder = FrameDecoder(encoding, versions=accept)
        decoder.feed(data)
        with pytest.raises(FrameError) as info:
            if decoder.next_message() is None:
                decoder.eof()
        yield "stream", info.value


def assert_error(data: bytes, encoding: str, cls: type[FrameError], rule: str, *, fatal: bool,
                 message_type: int | None, stream: bool = True, accept: frozenset[int] | None = None) -> None:
    for who, err in decoders_say(data, encoding, stream=stream, accept=accept):
        got = (type(err), err.rule, err.fatal, err.message_type)
        assert got == (cls, rule, fatal, message_type), f"{who}: {got} for {data!r} ({encoding})"
        assert ErrorCode(err.code).name == err.code_name


# --- the error table --------------------------------------------------------------------


@pytest.mark.parametrize("cls", FRAME_ERRORS, ids=lambda c: c.__name__)
def test_error_classes_match_the_spec_table(cls) -> None:
    """Each FrameError's code is an ErrorCode whose table entry names the same rule and fatality."""
    code = ErrorCode[cls.code_name]
    info = ERROR_INFO[code]
    err = cls("x")
    assert err.code == code
    assert (err.rule, err.fatal) == (info.rule, info.always_fatal)
    assert err.rule in RULES
    assert issubclass(cls, FrameError)


@settings(max_examples=examples(300))
@given(data=st.data())
def test_every_raised_error_has_a_known_code_and_rule(data) -> None:
    encoding = data.draw(encodings)
    version = data.draw(versions)
    raw = encode(data.draw(any_message(encoding, version)), encoding, version)
    raw = data.draw(st.sampled_from(MUTATIONS)).apply(HypothesisChooser(data.draw), raw)
    for decode in (decode_frame, oracle.decode_frame):
        try:
            decode(raw, encoding)
        except FrameError as err:
            assert ErrorCode(err.code).name == err.code_name
            assert err.rule in RULES
            assert type(err) in FRAME_ERRORS
            if err.message_type is not None:
                assert err.message_type == HEADER.parse(raw).type


# --- framing errors (fatal) -----------------------------------------------------------


@pytest.mark.parametrize("magic", [b"XX", b"df", b"\0\0", b"FD"])
def test_bad_magic(magic) -> None:
    assert_error(frame(PING.code, PING_PAYLOAD, magic=magic), "utf-8", BadMagic, "R2.1",
                 fatal=True, message_type=None)


UNSUPPORTED = [v for v in (0, 2, 3, 0x7F, 0xFF) if v not in SUPPORTED_VERSIONS]
assert UNSUPPORTED, "no unsupported version left to test"


@pytest.mark.parametrize("version", UNSUPPORTED)
def test_unsupported_version(version) -> None:
    """A version the spec does not define, whatever the decoder accepts (R2.2)."""
    for accept in (ALL_VERSIONS, *(frozenset({v}) for v in SUPPORTED_VERSIONS)):
        assert_error(frame(PING.code, PING_PAYLOAD, version=version), "utf-8", UnsupportedVersion, "R2.2",
                     fatal=True, message_type=PING.code, accept=accept)


@pytest.mark.parametrize("accept", SUPPORTED_VERSIONS, ids=lambda v: f"accept-v{v}")
@pytest.mark.parametrize("version", SUPPORTED_VERSIONS, ids=lambda v: f"frame-v{v}")
def test_a_supported_version_the_decoder_does_not_accept(version, accept) -> None:
    """A session's decoder accepts one version at a time (version 1 until the handshake is done,
    then the session's, R2.2, R5.2): a valid frame of another is UNSUPPORTED_VERSION, fatal."""
    data = frame(PING.code, PING_PAYLOAD, version=version)
    if version == accept:
        for decode in (decode_frame, oracle.decode_frame):
            assert PING.code == decode(data, versions=frozenset({accept})).TYPE
        return
    assert_error(data, "utf-8", UnsupportedVersion, "R2.2", fatal=True, message_type=PING.code,
                 accept=frozenset({accept}))


@pytest.mark.parametrize("length", [MAX_PAYLOAD + 1, MAX_PAYLOAD + 2, 2**31, 2**32 - 1])
def test_length_over_limit(length) -> None:
    """The header alone is enough to reject it (R2.4): no payload follows here."""
    assert_error(header(PING.code, length), "utf-8", FrameTooLarge, "R2.4", fatal=True,
                 message_type=PING.code)


def test_length_at_limit_is_not_too_large() -> None:
    data = frame(PING.code, bytes(MAX_PAYLOAD))
    assert len(data) == HEADER_SIZE + MAX_PAYLOAD + CRC_SIZE
    assert_error(data, "utf-8", MalformedPayload, "R2.7", fatal=False, message_type=PING.code)


def test_checksum_mismatch() -> None:
    assert_error(frame(PING.code, PING_PAYLOAD, crc=False), "utf-8", ChecksumMismatch, "R2.5",
                 fatal=True, message_type=PING.code)


def _spec_versions(specs: Any) -> list[Any]:
    """(spec, version) params for every version each spec exists in."""
    return [pytest.param(s, v, id=f"{s.name}-v{v}") for s in specs for v in SUPPORTED_VERSIONS if s.in_version(v)]


@pytest.mark.parametrize(("spec", "version"), _spec_versions(MESSAGES))
def test_checksum_covers_header_and_payload(spec, version) -> None:
    data = encode(extreme_message(spec, "utf-8", largest=False, version=version), "utf-8", version)
    # one flipped bit in the type byte, or in any payload byte, is caught by the checksum
    type_at = HEADER.subcons[0].sizeof() + HEADER.subcons[1].sizeof()
    for i in [type_at, *range(HEADER_SIZE, len(data) - CRC_SIZE)]:
        bad = bytearray(data)
        bad[i] ^= 0x01
        assert_error(bytes(bad), "utf-8", ChecksumMismatch, "R2.5", fatal=True, message_type=bad[type_at])


@pytest.mark.parametrize("cut", [0, 1, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 1, -1])
def test_truncated_frame(cut) -> None:
    data = encode(extreme_message(MESSAGES_BY_NAME["MSG"], "utf-8", largest=False))
    part = data[:cut]
    # an empty stream has no partial frame; decode_frame wants a whole one
    assert_error(part, "utf-8", TruncatedFrame, "R2.9", fatal=True, stream=bool(part),
                 message_type=MESSAGES_BY_NAME["MSG"].code if len(part) >= HEADER_SIZE else None)


def test_bytes_after_the_frame() -> None:
    """decode_frame takes exactly one frame: more bytes are R2.7 (a stream would read the next frame)."""
    data = encode(extreme_message(PING, "utf-8", largest=False)) + b"\0"
    assert_error(data, "utf-8", MalformedPayload, "R2.7", fatal=False, message_type=PING.code, stream=False)


# --- payload errors (the frame is skipped) --------------------------------------------


_UNKNOWN_TYPES = [
    pytest.param(v, t, id=f"v{v}-0x{t:02X}") for v in SUPPORTED_VERSIONS for t in undefined_types(v)
]


@pytest.mark.parametrize(("version", "mtype"), _UNKNOWN_TYPES)
def test_unknown_type(version, mtype) -> None:
    assert_error(frame(mtype, PING_PAYLOAD, version=version), "utf-8", UnknownMessageType, "R2.3",
                 fatal=False, message_type=mtype)


_LATER_TYPES = [
    pytest.param(s, v, id=f"{s.name}-v{v}") for s in MESSAGES for v in SUPPORTED_VERSIONS if not s.in_version(v)
]


@pytest.mark.parametrize(("spec", "version"), _LATER_TYPES)
def test_a_type_of_a_later_version_is_unknown(spec, version) -> None:
    """A frame of a version without the type (DELIVER_ACK in a version-1 frame), its payload one
    the newer version accepts: UNKNOWN_TYPE (R2.3), the frame skipped -- and the same bytes in
    a frame of the type's own version decode."""
    payload = payload_with(spec, version=spec.since)
    assert_error(frame(spec.code, payload, version=version), "utf-8", UnknownMessageType, "R2.3",
                 fatal=False, message_type=spec.code)
    good = frame(spec.code, payload, version=spec.since)
    assert decode_frame(good) == oracle.decode_frame(good) == extreme_message(
        spec, "utf-8", largest=False, version=spec.since
    )


@pytest.mark.parametrize(("spec", "version"), _spec_versions(MESSAGES))
def test_trailing_bytes_inside_the_payload(spec, version) -> None:
    payload = payload_with(spec, version=version) + b"\0"
    assert_error(frame(spec.code, payload, version=version), "utf-8", MalformedPayload, "R2.7", fatal=False,
                 message_type=spec.code)


@pytest.mark.parametrize(("spec", "version"), _spec_versions(s for s in MESSAGES if s.layout.subcons))
def test_payload_ending_inside_a_field(spec, version) -> None:
    full = payload_with(spec, version=version)
    for size in range(len(full)):
        assert_error(frame(spec.code, full[:size], version=version), "utf-8", MalformedPayload, "R2.6",
                     fatal=False, message_type=spec.code)


def _list_fields() -> list[tuple[Any, Any, int]]:
    return [
        pytest.param(spec, sub, v, id=f"{spec.name}-{sub.name}-v{v}")
        for spec in MESSAGES
        for v in SUPPORTED_VERSIONS
        if spec.in_version(v)
        for sub in spec.layout_for(v).subcons
        if isinstance(unwrap(sub), List)
    ]


@pytest.mark.parametrize(("spec", "sub", "version"), _list_fields())
def test_count_promising_more_items_than_the_payload_holds(spec, sub, version) -> None:
    """The payload ends after the list's items; its count promises more (R2.6)."""
    con = unwrap(sub)
    items = [extreme_value(con.item, "utf-8", False, i) for i in range(max(1, con.min_items))]
    for promised in (len(items) + 1, len(items) + 2, (1 << 8 * con.count_field.sizeof()) - 1):
        raw = con.count_field.build(promised) + b"".join(field_bytes(con.item, i) for i in items)
        payload = payload_with(spec, raw={sub.name: raw}, stop_after=sub.name, version=version)
        assert_error(frame(spec.code, payload, version=version), "utf-8", MalformedPayload,
                     "R2.6", fatal=False, message_type=spec.code)


def _later_member_fields() -> list[Any]:
    """(spec, field path, construct, member) for every field of a type whose enumeration or flags
    gained a member after version 1 (codes.SINCE)."""
    out = []
    for spec in MESSAGES:
        for sub in spec.layout.subcons:
            con = unwrap(sub)
            inner = [(None, con)]
            if isinstance(con, List) and con.record is not None:
                inner = [(f.name, unwrap(f)) for f in con.record.subcons]
            for field, c in inner:
                enum = c.enum if isinstance(c, Code) else c.flags if isinstance(c, Flags) else None
                for (owner, name), since in SINCE.items():
                    if owner is enum:
                        where = f"{spec.name}.{sub.name}{'[].' + field if field else ''}"
                        out.append(pytest.param(spec, sub.name, field, owner[name], since, id=f"{where}-{name}"))
    return out


@pytest.mark.parametrize(("spec", "name", "field", "member", "since"), _later_member_fields())
@pytest.mark.parametrize("version", SUPPORTED_VERSIONS, ids=lambda v: f"v{v}")
def test_a_member_of_a_later_version_on_the_wire(spec, name, field, member, since, version) -> None:
    """OVER_QUOTA, STORE_FAILED, REDELIVERED in a frame of a version before theirs: FIELD_INVALID
    with the field's rule (R4.6 for a value, R4.7 for a flag), the frame skipped; in a frame of
    their version they decode."""
    if not spec.in_version(version):
        return
    base = extreme_message(spec, "utf-8", largest=False, version=version)
    if field is None:
        message = base.replace(**{name: member})
    else:
        item = unwrap(next(s for s in spec.layout.subcons if s.name == name)).item
        records = getattr(base, name) or (extreme_value(item, "utf-8", False, 0),)  # at least one
        message = base.replace(**{name: tuple(r.replace(**{field: member}) for r in records)})
    newest = spec.layout_for(max(SUPPORTED_VERSIONS))  # builds any member: the raw bytes of the value
    payload = b"".join(
        field_bytes(sub, getattr(message, sub.name)) for sub in newest.subcons
        if any(s.name == sub.name for s in spec.layout_for(version).subcons)
    )
    data = frame(spec.code, payload, version=version)
    if since <= version:
        assert decode_frame(data) == oracle.decode_frame(data) == message
        return
    con = next(unwrap(s) for s in spec.layout_for(version).subcons if s.name == name)
    if field is not None:
        con = unwrap(next(f for f in con.record.subcons if f.name == field))
    assert_error(data, "utf-8", FieldInvalid, con.rule, fatal=False, message_type=spec.code)
    assert con.rule == ("R4.7" if isinstance(con, Flags) else "R4.6")


# --- text (section 3) -------------------------------------------------------------------

INVALID_TEXT = {
    "utf-8": [b"\xff", b"a\x80", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82"],
    "utf-16": [b"\x00", b"\x00a\x00", b"\xd8\x00", b"\xdc\x00", b"\xd8\x00\x00a"],
    "utf-32": [b"\x00\x00\x00", b"\x00\x11\x00\x00", b"\x00\x00\xd8\x00", b"\xff\xff\xff\xff"],
    "ascii": [b"\x80", b"a\xff"],
    "cp1252": [bytes([b]) for b in (0x81, 0x8D, 0x8F, 0x90, 0x9D)],
    "latin-1": [],  # every byte is a character
}
TEXT_SPEC = next(s for s in MESSAGES if [type(unwrap(f)) for f in s.layout.subcons] == [Text])  # PASS
TEXT_SPEC_CLASS = MESSAGE_CLASSES[TEXT_SPEC.name]


def test_invalid_text_table_covers_every_encoding() -> None:
    assert set(INVALID_TEXT) == set(ENCODINGS)
    undefined = {b for b in range(256) if not _decodes(bytes([b]), "cp1252")}
    assert {raw[0] for raw in INVALID_TEXT["cp1252"]} == undefined  # the five bytes R3.4 names


def _decodes(raw: bytes, codec: str) -> bool:
    try:
        raw.decode(codec)
    except UnicodeDecodeError:
        return False
    return True


@pytest.mark.parametrize(
    "encoding,raw", [(e, r) for e, rs in INVALID_TEXT.items() for r in rs], ids=lambda x: x if isinstance(x, str) else x.hex()
)
def test_invalid_text(encoding, raw) -> None:
    (field,) = TEXT_SPEC.layout.subcons
    payload = unwrap(field).subcon.build(raw)  # the raw length-prefixed bytes, unchecked
    assert_error(frame(TEXT_SPEC.code, payload), encoding, InvalidText, "R3.4", fatal=False,
                 message_type=TEXT_SPEC.code)


@pytest.mark.parametrize("spec,sub", [(s, f) for s in MESSAGES for f in s.layout.subcons if isinstance(unwrap(f), Text)],
                         ids=lambda x: getattr(x, "name", None))
def test_invalid_text_in_every_text_field(spec, sub) -> None:
    for encoding, samples in INVALID_TEXT.items():
        for raw in samples:
            payload = payload_with(spec, encoding, {sub.name: unwrap(sub).subcon.build(raw)})
            assert_error(frame(spec.code, payload), encoding, InvalidText, "R3.4", fatal=False,
                         message_type=spec.code)


def test_latin1_decodes_every_byte() -> None:
    raw = bytes(range(256))
    (field,) = TEXT_SPEC.layout.subcons
    message = decode_frame(frame(TEXT_SPEC.code, unwrap(field).subcon.build(raw)), "latin-1")
    assert getattr(message, field.name) == raw.decode("latin-1")


@pytest.mark.parametrize("encoding", [e for e in ENCODING_NAMES if ENCODINGS[e].universal])
@pytest.mark.parametrize("text", ["\ufeff", "\ufeffhello", "\ufeff\ufeff", "a\ufeff"])
def test_bom_is_content(encoding, text) -> None:
    """U+FEFF at the start of a text is a character: written as such, and never stripped (R3.3)."""
    (field,) = TEXT_SPEC.layout.subcons
    message = TEXT_SPEC_CLASS(**{field.name: text})
    data = encode(message, encoding)
    codec = ENCODINGS[encoding].codec
    assert unwrap(field).subcon.parse(data[HEADER_SIZE:-CRC_SIZE]) == text.encode(codec)
    for decode in (decode_frame, oracle.decode_frame):
        assert decode(data, encoding) == message
    decoder = FrameDecoder(encoding)
    decoder.feed(data)
    assert decoder.next_message() == message


BOMS = (codecs.BOM_UTF8, codecs.BOM_UTF16_BE, codecs.BOM_UTF16_LE, codecs.BOM_UTF32_BE, codecs.BOM_UTF32_LE)


def _code_units(text: str, width: int) -> bytes:
    """``text`` as big-endian code units of ``width`` bytes, written out by hand (BMP text)."""
    return b"".join(ord(c).to_bytes(width, "big") for c in text)


@pytest.mark.parametrize("encoding", ENCODING_NAMES)
def test_encode_writes_big_endian_without_bom(encoding) -> None:
    """'hi' is 68 69 in the 8-bit encodings, 00 68 00 69 in utf-16, 00 00 00 68 ... in utf-32 (R3.3)."""
    (field,) = TEXT_SPEC.layout.subcons
    wire = encode(TEXT_SPEC_CLASS(**{field.name: "hi"}), encoding)
    raw = unwrap(field).subcon.parse(wire[HEADER_SIZE:-CRC_SIZE])
    width = {"utf-16": 2, "utf-32": 4}.get(encoding, 1)
    assert raw == _code_units("hi", width)
    assert not any(raw.startswith(bom) for bom in BOMS)


@pytest.mark.parametrize("encoding", ENCODING_NAMES)
@settings(max_examples=examples(30))
@given(data=st.data())
def test_encoded_text_is_exactly_the_codec_bytes(encoding, data) -> None:
    """TEXT bytes are the text in the encoding's codec, nothing added (no BOM) and nothing dropped."""
    (field,) = TEXT_SPEC.layout.subcons
    text = data.draw(field_strategy(field, encoding))
    wire = encode(TEXT_SPEC_CLASS(**{field.name: text}), encoding)
    raw = unwrap(field).subcon.parse(wire[HEADER_SIZE:-CRC_SIZE])
    assert raw == text.encode(ENCODINGS[encoding].codec)


@pytest.mark.parametrize("encoding,raw,text", [
    ("utf-16", b"\xfe\xff\x00h", "\ufeffh"),   # a BE BOM is U+FEFF, kept
    ("utf-16", b"\xff\xfe\x68\x00", "\ufffe\u6800"),  # an LE BOM is not honoured: still big-endian
    ("utf-32", b"\x00\x00\xfe\xff\x00\x00\x00h", "\ufeffh"),
    ("utf-8", b"\xef\xbb\xbfh", "\ufeffh"),
])
def test_received_bom_is_not_stripped(encoding, raw, text) -> None:
    (field,) = TEXT_SPEC.layout.subcons
    data = frame(TEXT_SPEC.code, unwrap(field).subcon.build(raw))
    for decode in (decode_frame, oracle.decode_frame):
        assert getattr(decode(data, encoding), field.name) == text


# --- field errors (section 4), decoded from raw wire bytes -----------------------------


@dataclass(frozen=True)
class WireBad:
    label: str
    raw: bytes
    cls: type[FrameError]
    rule: str


def wire_bad_values(sub: Any, encoding: str) -> list[WireBad]:
    """Wire bytes for one field (or list item) that break its bounds, built with the raw sub-constructs."""
    con = unwrap(sub)
    if isinstance(con, Ident):
        longest = ident_at(con, 0, longest=True).encode("ascii")
        candidates = [b"", longest + longest[-1:], b"bad name!", b"x\x00", b"caf\xc3\xa9", b"\xff", b"x\x7f"]
        return [WireBad(f"ident {c[:12]!r}", con.subcon.build(c), FieldInvalid, con.rule)
                for c in candidates if con.regex.fullmatch(c) is None]
    if isinstance(con, Text):
        codec = ENCODINGS[encoding].codec
        out = [WireBad("text too long", con.subcon.build(("a" * (con.max_chars + 1)).encode(codec)),
                       FieldInvalid, con.rule)]
        if con.min_chars:
            out.append(WireBad("text too short", con.subcon.build(b""), FieldInvalid, con.rule))
        out += [WireBad(f"text {r.hex()}", con.subcon.build(r), InvalidText, "R3.4") for r in INVALID_TEXT[encoding][:1]]
        return out
    if isinstance(con, Code):
        values = {int(m) for m in con.members}  # the version's members: later ones are unknown (R4.6)
        hi = (1 << 8 * con.subcon.sizeof()) - 1
        return [WireBad(f"{con.enum.__name__} {v}", con.subcon.build(v), FieldInvalid, con.rule)
                for v in (max(values) + 1, hi) if v not in values]
    if isinstance(con, Flags):
        bits = 8 * con.subcon.sizeof()
        return [WireBad(f"{con.flags.__name__} bit {b}", con.subcon.build(1 << b), FieldInvalid, con.rule)
                for b in range(bits) if not (1 << b) & con.mask]
    if isinstance(con, FormatField):
        return []  # every value of an unsigned field is valid on the wire
    if isinstance(con, List):
        def item(i: int) -> bytes:
            return field_bytes(con.item, extreme_value(con.item, encoding, True, i), encoding)

        out = [WireBad("too many items", con.count_field.build(con.max_items + 1)
                       + b"".join(item(i) for i in range(con.max_items + 1)), FieldInvalid, con.rule)]
        if con.min_items:
            out.append(WireBad("too few items", con.count_field.build(0), FieldInvalid, con.rule))
        if con.unique:
            first = extreme_value(con.item, encoding, True, 0)
            twin = first.swapcase() if isinstance(first, str) and unwrap(con.item).casefold else first
            raw = con.count_field.build(2) + field_bytes(con.item, first, encoding) + field_bytes(con.item, twin, encoding)
            out.append(WireBad(f"duplicates {first!r} {twin!r}", raw, FieldInvalid, con.rule))
        out += [WireBad(f"item: {b.label}", con.count_field.build(1) + b.raw, b.cls, b.rule)
                for b in wire_bad_values(con.item, encoding)]
        return out
    if isinstance(con, Struct):  # a record
        record = extreme_value(sub, encoding, False)
        assert isinstance(record, RECORD_CLASSES[sub.name])
        out = []
        for f in con.subcons:
            for b in wire_bad_values(f, encoding):
                raw = b"".join(b.raw if g.name == f.name else field_bytes(g, getattr(record, g.name), encoding)
                               for g in con.subcons)
                out.append(WireBad(f"{f.name}: {b.label}", raw, b.cls, b.rule))
        return out
    raise TypeError(f"no wire values for {con!r}")


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16", "cp1252"])
@pytest.mark.parametrize(("spec", "version"), _spec_versions(s for s in MESSAGES if s.layout.subcons))
def test_invalid_fields_on_the_wire(spec, version, encoding) -> None:
    """Every field of the version's layout broken on the wire, one at a time: FIELD_INVALID (or
    INVALID_TEXT) with the field's rule."""
    checked = 0
    layout = spec.layout_for(version)
    for sub in layout.subcons:
        for bad in wire_bad_values(sub, encoding):
            data = frame(spec.code, payload_with(spec, encoding, {sub.name: bad.raw}, version=version),
                         version=version)
            assert_error(data, encoding, bad.cls, bad.rule, fatal=False, message_type=spec.code)
            checked += 1
    if any(not isinstance(unwrap(s), FormatField) for s in layout.subcons):
        assert checked

