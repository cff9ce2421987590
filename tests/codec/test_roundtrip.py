"""Every message type, in every encoding, survives encode/decode, and the codecs agree.

For generated valid messages ``m``:

* ``decode_frame(encode(m)) == m`` (the generated codec round-trips);
* ``encode(m) == oracle.encode(m)`` (byte for byte what construct builds from the schema);
* ``oracle.decode_frame(encode(m)) == m`` (construct reads our bytes back as ``m``).

Parametrized over :data:`dfachat.spec.MESSAGES` and :data:`dfachat.spec.ENCODINGS`,
so each type and encoding shows up in the test ids.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dfachat.codec import MESSAGE_CLASSES, FrameDecoder, decode_frame, encode, oracle
from dfachat.spec import FRAME, FRAME_OVERHEAD, HEADER, MAGIC, MESSAGES, PROTOCOL_VERSION

from .strategies import ENCODING_NAMES, examples, extreme_message, message_strategy

specs = pytest.mark.parametrize("spec", MESSAGES, ids=lambda s: s.name)
encodings = pytest.mark.parametrize("encoding", ENCODING_NAMES)


def check_roundtrip(message, encoding: str) -> bytes:
    data = encode(message, encoding)
    assert data == oracle.encode(message, encoding)
    decoded = decode_frame(data, encoding)
    assert decoded == message
    assert type(decoded) is type(message)
    assert oracle.decode_frame(data, encoding) == message
    return data


@specs
@encodings
@settings(max_examples=examples(20))
@given(data=st.data())
def test_roundtrip(spec, encoding, data) -> None:
    message = data.draw(message_strategy(spec, encoding), label="message")
    wire = check_roundtrip(message, encoding)
    # the frame around it is the spec's FRAME, with the type code of the spec
    frame = FRAME.parse(wire)
    header = frame.header.value
    assert header.magic == MAGIC
    assert header.version == PROTOCOL_VERSION
    assert header.type == spec.code == message.TYPE
    assert header.length == len(frame.payload) == len(wire) - FRAME_OVERHEAD


@specs
@encodings
@pytest.mark.parametrize("largest", [False, True], ids=["smallest", "largest"])
def test_roundtrip_at_bounds(spec, encoding, largest) -> None:
    """Every field at its lower or upper bound: 1024 names, 4096 widest characters ..."""
    check_roundtrip(extreme_message(spec, encoding, largest=largest), encoding)


@specs
@settings(max_examples=examples(10))
@given(data=st.data())
def test_decoded_values_have_their_declared_types(spec, data) -> None:
    """Decoded fields are the Python types the message class declares (enums, flags, tuples)."""
    message = data.draw(message_strategy(spec))
    decoded = decode_frame(encode(message))
    cls = MESSAGE_CLASSES[spec.name]
    assert decoded.FIELDS == cls.FIELDS == tuple(sub.name for sub in spec.layout.subcons)
    for name, hint in cls.__annotations__.items():
        value = getattr(decoded, name)
        origin = getattr(hint, "__origin__", hint)
        assert isinstance(value, origin), (name, value, hint)


@specs
def test_header_is_the_spec_header(spec) -> None:
    """An empty-as-possible frame's first bytes are HEADER built from the spec's values."""
    message = extreme_message(spec, "utf-8", largest=False)
    wire = encode(message)
    payload_length = len(wire) - FRAME_OVERHEAD
    expected = HEADER.build({"version": PROTOCOL_VERSION, "type": spec.code, "length": payload_length})
    assert wire[: HEADER.sizeof()] == expected


@encodings
@settings(max_examples=examples(30))
@given(data=st.data())
def test_stream_of_every_type(encoding, data) -> None:
    """One message of each type, concatenated, decodes in order through FrameDecoder."""
    messages = [data.draw(message_strategy(spec, encoding), label=spec.name) for spec in MESSAGES]
    decoder = FrameDecoder(encoding)
    decoder.feed(b"".join(encode(m, encoding) for m in messages))
    out = []
    while (m := decoder.next_message()) is not None:
        out.append(m)
    assert out == messages
    decoder.eof()
