"""Every message type, in every encoding and every protocol version, survives encode/decode,
and the codecs agree.

For generated valid messages ``m`` of a version ``v``:

* ``decode_frame(encode(m, v)) == m`` (the generated codec round-trips);
* ``encode(m, v) == oracle.encode(m, v)`` (byte for byte what construct builds from the schema);
* ``oracle.decode_frame(encode(m, v)) == m`` (construct reads our bytes back as ``m``).

Parametrized over :data:`dfachat.spec.MESSAGES`, the versions each exists in and
:data:`dfachat.spec.ENCODINGS`, so each type, version and encoding shows up in the test ids.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dfachat.codec import MESSAGE_CLASSES, FrameDecoder, decode_frame, encode, oracle
from dfachat.errors import FieldInvalid
from dfachat.spec import FRAME, FRAME_OVERHEAD, HEADER, MAGIC, MESSAGES, SUPPORTED_VERSIONS
from dfachat.spec.codes import SINCE
from dfachat.spec.types import Code, Flags, List, unwrap

from .strategies import ENCODING_NAMES, examples, extreme_message, message_strategy

spec_versions = pytest.mark.parametrize(
    ("spec", "version"),
    [pytest.param(s, v, id=f"{s.name}-v{v}") for s in MESSAGES for v in SUPPORTED_VERSIONS if s.in_version(v)],
)
encodings = pytest.mark.parametrize("encoding", ENCODING_NAMES)
version_params = pytest.mark.parametrize("version", SUPPORTED_VERSIONS, ids=lambda v: f"v{v}")


def check_roundtrip(message, encoding: str, version: int) -> bytes:
    data = encode(message, encoding, version)
    assert data == oracle.encode(message, encoding, version)
    for accept in (None, frozenset({version})):  # any supported version, or just the frame's
        kwargs = {} if accept is None else {"versions": accept}
        decoded = decode_frame(data, encoding, **kwargs)
        assert decoded == message
        assert type(decoded) is type(message)
        assert oracle.decode_frame(data, encoding, **kwargs) == message
    return data


@spec_versions
@encodings
@settings(max_examples=examples(20))
@given(data=st.data())
def test_roundtrip(spec, version, encoding, data) -> None:
    message = data.draw(message_strategy(spec, encoding, version), label="message")
    wire = check_roundtrip(message, encoding, version)
    # the frame around it is the spec's FRAME, with the type code of the spec and the version asked for
    frame = FRAME.parse(wire)
    header = frame.header.value
    assert header.magic == MAGIC
    assert header.version == version
    assert header.type == spec.code == message.TYPE
    assert header.length == len(frame.payload) == len(wire) - FRAME_OVERHEAD


@spec_versions
@encodings
@pytest.mark.parametrize("largest", [False, True], ids=["smallest", "largest"])
def test_roundtrip_at_bounds(spec, version, encoding, largest) -> None:
    """Every field at its lower or upper bound: 1024 names, 4096 widest characters ..."""
    check_roundtrip(extreme_message(spec, encoding, largest=largest, version=version), encoding, version)


@spec_versions
@settings(max_examples=examples(10))
@given(data=st.data())
def test_decoded_values_have_their_declared_types(spec, version, data) -> None:
    """Decoded fields are the Python types the message class declares (enums, flags, tuples)."""
    message = data.draw(message_strategy(spec, version=version))
    decoded = decode_frame(encode(message, version=version))
    cls = MESSAGE_CLASSES[spec.name]
    assert decoded.FIELDS == cls.FIELDS == tuple(sub.name for sub in spec.layout.subcons)
    for name, hint in cls.__annotations__.items():
        value = getattr(decoded, name)
        origin = getattr(hint, "__origin__", hint)
        assert isinstance(value, origin), (name, value, hint)


@spec_versions
def test_header_is_the_spec_header(spec, version) -> None:
    """An empty-as-possible frame's first bytes are HEADER built from the spec's values."""
    message = extreme_message(spec, "utf-8", largest=False, version=version)
    wire = encode(message, "utf-8", version)
    payload_length = len(wire) - FRAME_OVERHEAD
    expected = HEADER.build({"version": version, "type": spec.code, "length": payload_length})
    assert wire[: HEADER.sizeof()] == expected


@version_params
@encodings
@settings(max_examples=examples(30))
@given(data=st.data())
def test_stream_of_every_type(version, encoding, data) -> None:
    """One message of each type the version has, concatenated, decodes in order through a
    FrameDecoder that accepts that version."""
    specs = [spec for spec in MESSAGES if spec.in_version(version)]
    messages = [data.draw(message_strategy(spec, encoding, version), label=spec.name) for spec in specs]
    decoder = FrameDecoder(encoding, versions=frozenset({version}))
    decoder.feed(b"".join(encode(m, encoding, version) for m in messages))
    out = []
    while (m := decoder.next_message()) is not None:
        out.append(m)
    assert out == messages
    decoder.eof()


# --- version 2 is a delta on version 1 --------------------------------------------------------

_V1, _NEWEST = min(SUPPORTED_VERSIONS), max(SUPPORTED_VERSIONS)
_V1_SPECS = [pytest.param(s, id=s.name) for s in MESSAGES if s.in_version(_V1)]


@pytest.mark.parametrize("spec", _V1_SPECS)
@settings(max_examples=examples(15))
@given(data=st.data())
def test_a_version_1_message_means_the_same_in_every_version(spec, data) -> None:
    """Later versions only add: a version-1 message (added fields 0, no later members) round-trips
    unchanged in every supported version, and only the fields a version added grow its frame."""
    encoding = data.draw(st.sampled_from(ENCODING_NAMES), label="encoding")
    message = data.draw(message_strategy(spec, encoding, _V1), label="message")
    base = check_roundtrip(message, encoding, _V1)
    for version in SUPPORTED_VERSIONS:
        wire = check_roundtrip(message, encoding, version)
        added = [sub for sub in spec.layout_for(version).subcons if spec.field_since(sub.name) > _V1]
        assert len(wire) - len(base) == sum(unwrap(sub).sizeof() for sub in added)


@pytest.mark.parametrize("spec", [s for s in _V1_SPECS if s.values[0].added])
@settings(max_examples=examples(15))
@given(data=st.data())
def test_fields_a_version_lacks_decode_as_zero(spec, data) -> None:
    """A newest-version message with its added fields set, sent in a version-1 frame: the frame
    does not carry them (both encoders alike) and they decode as 0."""
    message = data.draw(message_strategy(spec, "utf-8", _NEWEST), label="message")
    wire = encode(message, "utf-8", _V1)
    assert wire == oracle.encode(message, "utf-8", _V1)
    zeroed = message.replace(**{name: 0 for name, since in spec.added if since > _V1})
    assert decode_frame(wire) == oracle.decode_frame(wire) == zeroed
    assert encode(zeroed, "utf-8", _V1) == wire


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS, ids=lambda v: f"v{v}")
def test_members_of_a_later_version_are_not_encoded_in_an_earlier_one(version) -> None:
    """Every enumeration member and flag a later version added (codes.SINCE) is refused by both
    encoders in a frame of an earlier version, with the field's rule (R4.6, R4.7), and carried
    in a frame of its own version."""
    checked = 0
    for spec in MESSAGES:
        if not spec.in_version(version):
            continue
        base = extreme_message(spec, "utf-8", largest=True, version=version)
        for sub in spec.layout.subcons:
            for (enum, name), since in SINCE.items():
                found = _with_member(base, sub, enum[name])
                if found is None:
                    continue
                message, con = found
                for encoder in (encode, oracle.encode):
                    if since <= version:
                        assert decode_frame(encoder(message, "utf-8", version)) == message
                    else:
                        with pytest.raises(FieldInvalid) as info:
                            encoder(message, "utf-8", version)
                        assert info.value.rule == con.rule
                checked += 1
    assert checked == len(SINCE) or version < _NEWEST and checked


def _with_member(message: Any, sub: Any, member: Any) -> tuple[Any, Any] | None:
    """``message`` with the field ``sub`` (or a field of its records) set to ``member``, and that
    field's construct; None when no such field is of ``member``'s enumeration."""
    con = unwrap(sub)
    if isinstance(con, Code) and con.enum is type(member) or isinstance(con, Flags) and con.flags is type(member):
        return message.replace(**{sub.name: member}), con
    if isinstance(con, List) and con.record is not None:
        for field in con.record.subcons:
            inner = unwrap(field)
            if isinstance(inner, Code) and inner.enum is type(member):
                records = tuple(r.replace(**{field.name: member}) for r in getattr(message, sub.name))
                assert records, "no record to carry the member"
                return message.replace(**{sub.name: records}), inner
    return None
