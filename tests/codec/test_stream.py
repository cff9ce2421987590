"""FrameDecoder: a byte stream in any split, error recovery (R2.8), truncation (R2.9), the
protocol versions it accepts (R2.2, R5.2).

The stream decoder is held to a small reference model built from the oracle
(:func:`reference_stream`): cut the stream at each header's length, decode
each frame with ``oracle.decode_frame`` (accepting the same versions), stop at
the first framing error or at an incomplete frame. Whatever the split of the
input, the decoder must produce the same messages and errors, in the same order.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from dfachat.codec import FrameDecoder, UnsupportedEncoding, decode_frame, encode, oracle
from dfachat.codec.messages import PASS, PING
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
from dfachat.spec import HEADER, LIMITS, MESSAGES, MESSAGES_BY_NAME, SUPPORTED_VERSIONS
from dfachat.spec.types import Text, unwrap

from .strategies import any_message, encodings, examples, message_strategy, versions
from .wire import (
    CRC_SIZE,
    HEADER_SIZE,
    MAX_PAYLOAD,
    MUTATIONS,
    HypothesisChooser,
    frame,
    header,
    undefined_types,
)

# --- helpers ----------------------------------------------------------------------


ONE = frozenset({1})  # what a FrameDecoder accepts until the handshake is done (R5.2)


def reference_stream(
    data: bytes, encoding: str, max_frame: int = LIMITS.max_frame, accept: frozenset[int] = ONE
) -> list[tuple[Any, ...]]:
    """What a stream decoder accepting the versions ``accept`` must make of ``data``: ("ok",
    message) / ("error", class, rule, type) items, ending with ("pending",) when bytes of an
    incomplete frame remain."""
    out: list[tuple[Any, ...]] = []
    pos = 0
    while pos < len(data):
        head = data[pos : pos + HEADER_SIZE]
        if len(head) < HEADER_SIZE:
            out.append(("pending",))
            break
        try:
            oracle.decode_frame(head, encoding, max_frame=max_frame, versions=accept)
        except TruncatedFrame:
            pass  # a good header: the frame needs its payload and checksum
        except FrameError as err:  # bad magic, version or length: framing is lost
            out.append(("error", type(err), err.rule, err.message_type))
            break
        end = pos + HEADER_SIZE + HEADER.parse(head).length + CRC_SIZE
        if end > len(data):
            out.append(("pending",))
            break
        try:
            out.append(("ok", oracle.decode_frame(data[pos:end], encoding, max_frame=max_frame, versions=accept)))
        except FrameError as err:
            out.append(("error", type(err), err.rule, err.message_type))
            if err.fatal:
                break
        pos = end
    return out


def run_decoder(
    chunks: list[bytes], encoding: str, *, max_frame: int = LIMITS.max_frame, accept: frozenset[int] = ONE
) -> tuple[list[tuple[Any, ...]], FrameDecoder]:
    """Feed ``chunks`` one by one, taking every message after each; bounded, so it cannot hang."""
    decoder = FrameDecoder(encoding, max_frame=max_frame, versions=accept)
    out: list[tuple[Any, ...]] = []
    total = sum(len(c) for c in chunks)
    budget = total // (HEADER_SIZE + CRC_SIZE) + 2 * len(chunks) + 2  # each message eats >= 12 bytes
    for chunk in chunks:
        decoder.feed(chunk)
        while True:
            budget -= 1
            assert budget >= 0, "the decoder keeps returning without consuming input"
            try:
                message = decoder.next_message()
            except FrameError as err:
                out.append(("error", type(err), err.rule, err.message_type))
                if err.fatal:
                    break
                continue
            if message is None:
                break
            out.append(("ok", message))
        if decoder.failed is not None:
            break
    if decoder.failed is None and decoder.buffered:
        out.append(("pending",))
    return out, decoder


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False) if b > a]


SPLITS = ["whole", "bytewise", "random"]


def chunked(data: bytes, how: str, cuts: list[int]) -> list[bytes]:
    if how == "whole":
        return [data]
    if how == "bytewise":
        return [data[i : i + 1] for i in range(len(data))]
    return split(data, cuts)


cut_lists = st.lists(st.integers(0, 2**16), max_size=12)
# (messages, encoding, version): a session's stream after its handshake
stream_messages = st.tuples(encodings, versions).flatmap(
    lambda ev: st.tuples(st.lists(any_message(*ev), min_size=1, max_size=6), st.just(ev[0]), st.just(ev[1]))
)

# --- valid streams ------------------------------------------------------------------


@pytest.mark.parametrize("how", SPLITS)
@settings(max_examples=examples(40))
@given(case=stream_messages, cuts=cut_lists)
def test_any_split_yields_exactly_the_messages(how, case, cuts) -> None:
    messages, encoding, version = case
    data = b"".join(encode(m, encoding, version) for m in messages)
    out, decoder = run_decoder(chunked(data, how, cuts), encoding, accept=frozenset({version}))
    assert out == [("ok", m) for m in messages]
    assert decoder.buffered == 0
    assert decoder.failed is None
    assert decoder.next_message() is None
    decoder.eof()  # nothing pending: no error


@settings(max_examples=examples(30))
@given(case=stream_messages, cuts=cut_lists, kind=st.sampled_from(["bytearray", "memoryview"]))
def test_fed_buffers_are_copied(case, cuts, kind) -> None:
    """Feeding a bytearray (or a view of one) and then reusing it does not change what is decoded."""
    messages, encoding, version = case
    data = b"".join(encode(m, encoding, version) for m in messages)
    decoder = FrameDecoder(encoding, versions=frozenset({version}))
    out = []
    for chunk in split(data, cuts):
        buf = bytearray(chunk)
        decoder.feed(buf if kind == "bytearray" else memoryview(buf))
        buf[:] = b"\xaa" * len(buf)  # the caller reuses its buffer
        while (m := decoder.next_message()) is not None:
            out.append(m)
    assert out == messages


def test_buffered_counts_pending_bytes() -> None:
    data = encode(PING(nonce=1))
    decoder = FrameDecoder()
    assert decoder.buffered == 0
    decoder.feed(data[:5])
    assert decoder.buffered == 5
    assert decoder.next_message() is None
    decoder.feed(data[5:] + data[:3])
    assert decoder.buffered == len(data) + 3
    assert decoder.next_message() is not None
    assert decoder.buffered == 3
    assert decoder.next_message() is None


# --- arbitrary input ------------------------------------------------------------------


@st.composite
def messy_streams(draw: Any) -> tuple[bytes, str, frozenset[int]]:
    """Valid frames (mostly of the version the decoder accepts), mutated frames and random
    bytes, concatenated; and the versions the decoder accepts."""
    encoding = draw(encodings)
    accept = draw(st.sampled_from([ONE, *(frozenset({v}) for v in SUPPORTED_VERSIONS), frozenset(SUPPORTED_VERSIONS)]))
    parts = []
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["valid", "valid", "mutated", "random"]))
        if kind == "random":
            parts.append(draw(st.binary(max_size=24)))
            continue
        version = draw(st.one_of(st.sampled_from(sorted(accept)), versions))
        data = encode(draw(any_message(encoding, version)), encoding, version)
        if kind == "mutated":
            data = draw(st.sampled_from(MUTATIONS)).apply(HypothesisChooser(draw), data)
        parts.append(data)
    return b"".join(parts), encoding, accept


@pytest.mark.parametrize("how", SPLITS)
@settings(max_examples=examples(120))
@given(case=messy_streams(), cuts=cut_lists)
def test_arbitrary_streams_match_the_reference(how, case, cuts) -> None:
    """Any bytes, any split: only FrameErrors, never a hang, and what the oracle-built model says."""
    data, encoding, accept = case
    out, decoder = run_decoder(chunked(data, how, cuts), encoding, accept=accept)
    expected = reference_stream(data, encoding, accept=accept)
    assert out == expected
    last = expected[-1] if expected else ("ok",)
    event(f"ends {last[0]}{'' if last[0] != 'error' else ' ' + last[1].__name__}")
    if decoder.failed is not None:
        assert decoder.failed.fatal
        with pytest.raises(type(decoder.failed)):
            decoder.next_message()


@settings(max_examples=examples(150))
@given(data=st.binary(max_size=64), cuts=cut_lists, encoding=encodings)
def test_random_bytes_only_raise_frame_errors(data, cuts, encoding) -> None:
    out, _ = run_decoder(split(data, cuts), encoding)
    assert out == reference_stream(data, encoding)


@settings(max_examples=examples(150))
@given(mtype=st.integers(0, 255), body=st.binary(max_size=48), cuts=cut_lists, encoding=encodings,
       version=versions)
def test_random_payloads_behind_valid_headers(mtype, body, cuts, encoding, version) -> None:
    data = frame(mtype, body, version=version)
    accept = frozenset({version})
    out, _ = run_decoder(split(data, cuts), encoding, accept=accept)
    assert out == reference_stream(data, encoding, accept=accept)
    assert len(out) == 1 and out[0][0] in ("ok", "error")


# --- payload errors: the frame is dropped, the stream goes on (R2.8) ------------------


@st.composite
def payload_error_frames(draw: Any) -> tuple[bytes, str, FrameError, int]:
    """A whole, checksummed frame of a version that decode_frame rejects with a payload
    (non-fatal) error; and the version."""
    encoding = draw(encodings)
    version = draw(versions)
    data = encode(draw(any_message(encoding, version)), encoding, version)
    mutation = draw(st.sampled_from([m for m in MUTATIONS if m.name in (
        "set_type", "splice_payload", "random_payload", "flip_payload_fix_crc")]))
    data = mutation.apply(HypothesisChooser(draw), data)
    decode_as = draw(st.one_of(st.just(encoding), encodings))
    accept = frozenset({version})
    try:
        decode_frame(data, decode_as, versions=accept)
    except FrameError as err:
        assert not err.fatal  # these mutations keep the frame whole and checksummed
        return data, decode_as, err, version
    # the mutation left a valid frame: use a frame of a type the version lacks, always a payload error
    undefined = draw(st.sampled_from(undefined_types(version)))
    data = frame(undefined, draw(st.binary(max_size=16)), version=version)
    try:
        decode_frame(data, decode_as, versions=accept)
    except FrameError as err:
        return data, decode_as, err, version
    raise AssertionError("an undefined type decoded")


@pytest.mark.parametrize("how", SPLITS)
@settings(max_examples=examples(60))
@given(bad=payload_error_frames(), data=st.data(), cuts=cut_lists)
def test_payload_error_skips_one_frame(how, bad, data, cuts) -> None:
    raw, encoding, err, version = bad
    assert not err.fatal
    before = data.draw(any_message(encoding, version), label="before")
    after = data.draw(any_message(encoding, version), label="after")
    stream = encode(before, encoding, version) + raw + encode(after, encoding, version)
    out, decoder = run_decoder(chunked(stream, how, cuts), encoding, accept=frozenset({version}))
    assert out == [
        ("ok", before),
        ("error", type(err), err.rule, err.message_type),
        ("ok", after),
    ]
    assert decoder.failed is None


def _named_payload_errors() -> dict[str, tuple[bytes, type[FrameError], str]]:
    user = MESSAGES_BY_NAME["USER"]
    (name_field,) = user.layout.subcons
    name = unwrap(name_field)
    return {
        "unknown_type": (frame(undefined_types()[0], b"hello"), UnknownMessageType, "R2.3"),
        "field_invalid_name": (frame(user.code, name.subcon.build(b"no spaces")), FieldInvalid, name.rule),
        "trailing_bytes": (frame(user.code, name.subcon.build(b"bob") + b"!"), MalformedPayload, "R2.7"),
        "invalid_text": (encode(PASS(password="\u00e9"), "latin-1"), InvalidText, "R3.4"),
    }


@pytest.mark.parametrize("case", sorted(_named_payload_errors()))
def test_named_payload_errors_skip_one_frame(case) -> None:
    raw, cls, rule = _named_payload_errors()[case]
    decoder = FrameDecoder("utf-8")
    decoder.feed(encode(PING(nonce=1)) + raw + encode(PING(nonce=2)))
    assert decoder.next_message() == PING(nonce=1)
    with pytest.raises(cls) as info:
        decoder.next_message()
    assert (info.value.rule, info.value.fatal) == (rule, False)
    assert info.value.message_type == HEADER.parse(raw).type
    assert decoder.next_message() == PING(nonce=2)
    assert decoder.next_message() is None
    assert decoder.failed is None and decoder.buffered == 0


# --- framing errors: the decoder is dead --------------------------------------------


def _fatal_frames() -> dict[str, tuple[bytes, type[FrameError]]]:
    ping = MESSAGES_BY_NAME["PING"]
    payload = bytes(ping.layout.sizeof())  # a valid PING payload
    return {
        "bad_magic": (frame(ping.code, payload, magic=b"XX"), BadMagic),
        "bad_version": (frame(ping.code, payload, version=max(SUPPORTED_VERSIONS) + 1), UnsupportedVersion),
        # a version the spec defines, but not the one this (pre-handshake) decoder accepts (R5.2)
        "other_version": (frame(ping.code, payload, version=max(set(SUPPORTED_VERSIONS) - ONE)), UnsupportedVersion),
        "bad_crc": (frame(ping.code, payload, crc=False), ChecksumMismatch),
        "too_large": (header(ping.code, MAX_PAYLOAD + 1) + payload, FrameTooLarge),
    }


FATAL = _fatal_frames()


@pytest.mark.parametrize("name", sorted(FATAL))
@pytest.mark.parametrize("how", SPLITS)
@settings(max_examples=examples(15))
@given(data=st.data(), cuts=cut_lists)
def test_framing_error_kills_the_decoder(name, how, data, cuts) -> None:
    raw, expected = FATAL[name]
    encoding = data.draw(encodings)
    before = data.draw(any_message(encoding), label="before")
    after = encode(data.draw(any_message(encoding), label="after"), encoding)
    out, decoder = run_decoder(chunked(encode(before, encoding) + raw + after, how, cuts), encoding)
    assert out[0] == ("ok", before)
    assert out[1][:2] == ("error", expected)
    assert len(out) == 2
    err = decoder.failed
    assert isinstance(err, expected) and err.fatal
    # the same error again, whatever comes next; input is dropped
    for _ in range(3):
        decoder.feed(after)
        assert decoder.buffered == 0
        with pytest.raises(expected) as again:
            decoder.next_message()
        assert again.value is err
    decoder.eof()  # already failed: nothing more to report


# --- truncation ------------------------------------------------------------------------


@settings(max_examples=examples(60))
@given(data=st.data())
def test_eof_inside_a_frame_is_truncated_frame(data) -> None:
    encoding = data.draw(encodings)
    version = data.draw(versions)
    messages = data.draw(st.lists(any_message(encoding, version), max_size=3))
    last = encode(data.draw(any_message(encoding, version)), encoding, version)
    cut = data.draw(st.integers(1, len(last) - 1), label="cut")
    decoder = FrameDecoder(encoding, versions=frozenset({version}))
    decoder.feed(b"".join(encode(m, encoding, version) for m in messages) + last[:cut])
    got = []
    while (m := decoder.next_message()) is not None:
        got.append(m)
    assert got == messages
    assert decoder.buffered == cut
    with pytest.raises(TruncatedFrame) as info:
        decoder.eof()
    err = info.value
    assert (err.rule, err.fatal, err.code_name) == ("R2.9", True, "TRUNCATED_FRAME")
    assert err.message_type == (HEADER.parse(last).type if cut >= HEADER_SIZE else None)
    assert decoder.failed is err
    with pytest.raises(TruncatedFrame):
        decoder.next_message()


def test_eof_on_an_empty_or_drained_stream_is_quiet() -> None:
    decoder = FrameDecoder()
    decoder.eof()
    decoder.feed(encode(PING(nonce=0)))
    assert decoder.next_message() is not None
    decoder.eof()
    assert decoder.failed is None


# --- the length limit (R2.4) -----------------------------------------------------------


@pytest.mark.parametrize("max_frame", [LIMITS.max_frame, 100, HEADER_SIZE + CRC_SIZE])
@settings(max_examples=examples(30))
@given(excess=st.one_of(st.integers(1, 3), st.integers(1, 2**32 - 1)), mtype=st.integers(0, 255))
def test_oversized_length_rejected_on_the_header(max_frame, excess, mtype) -> None:
    """Rejected as soon as the 8 header bytes are in, without waiting for the payload."""
    length = min(max_frame - HEADER_SIZE - CRC_SIZE + excess, 2**32 - 1)
    head = header(mtype, length)
    decoder = FrameDecoder(max_frame=max_frame)
    for byte in head[:-1]:
        decoder.feed(bytes([byte]))
        assert decoder.next_message() is None
    decoder.feed(head[-1:])
    with pytest.raises(FrameTooLarge) as info:
        decoder.next_message()
    assert (info.value.rule, info.value.fatal, info.value.message_type) == ("R2.4", True, mtype)
    for decode in (decode_frame, oracle.decode_frame):
        with pytest.raises(FrameTooLarge):
            decode(head, max_frame=max_frame)


@pytest.mark.parametrize("max_frame", [LIMITS.max_frame, 100])
def test_largest_allowed_length_waits_for_the_payload(max_frame) -> None:
    length = max_frame - HEADER_SIZE - CRC_SIZE
    decoder = FrameDecoder(max_frame=max_frame)
    decoder.feed(header(undefined_types()[-1], length))
    assert decoder.next_message() is None
    decoder.feed(bytes(length))
    assert decoder.next_message() is None
    decoder.feed(bytes(CRC_SIZE))
    with pytest.raises(ChecksumMismatch):
        decoder.next_message()


# --- encoding switch -------------------------------------------------------------------


@settings(max_examples=examples(40))
@given(data=st.data(), first=encodings, second=encodings, together=st.booleans())
def test_encoding_switch_applies_to_the_next_frame(data, first, second, together) -> None:
    """HELLO_OK switches the session's encoding: frames after it decode in the new one."""
    text_specs = [s for s in MESSAGES if any(isinstance(unwrap(f), Text) for f in s.layout.subcons)]
    spec_a = data.draw(st.sampled_from(text_specs))
    spec_b = data.draw(st.sampled_from(text_specs))
    a = data.draw(message_strategy(spec_a, first), label="in first")
    b = data.draw(message_strategy(spec_b, second), label="in second")
    wire_a, wire_b = encode(a, first), encode(b, second)
    decoder = FrameDecoder(first)
    decoder.feed(wire_a + wire_b if together else wire_a)
    assert decoder.next_message() == a
    decoder.encoding = second
    assert decoder.encoding == second
    if not together:
        decoder.feed(wire_b)
    assert decoder.next_message() == b
    assert decoder.next_message() is None


def test_encoding_switch_to_an_unknown_encoding_is_refused() -> None:
    decoder = FrameDecoder("utf-16")
    with pytest.raises(UnsupportedEncoding):
        decoder.encoding = "utf-16le"
    assert decoder.encoding == "utf-16"
    with pytest.raises(UnsupportedEncoding):
        FrameDecoder("UTF-8")  # exact spelling (R3.1)


def test_encoding_switch_changes_how_text_decodes() -> None:
    """The same frame, before and after the switch: 'é' in latin-1 is one byte, invalid utf-8."""
    raw = encode(PASS(password="\u00e9"), "latin-1")
    decoder = FrameDecoder("latin-1")
    decoder.feed(raw + raw)
    assert decoder.next_message() == PASS(password="\u00e9")
    decoder.encoding = "utf-8"
    with pytest.raises(InvalidText):
        decoder.next_message()


# --- version switch (R2.2, R5.2) -------------------------------------------------------


def test_a_decoder_accepts_version_1_until_told_otherwise() -> None:
    """HELLO and an ERROR answering it travel in version 1: that is all a new decoder takes."""
    assert FrameDecoder().versions == ONE


@settings(max_examples=examples(40))
@given(data=st.data(), encoding=encodings, version=versions, together=st.booleans())
def test_version_switch_applies_to_the_next_frame(data, encoding, version, together) -> None:
    """The client's handshake: its decoder takes HELLO_OK in any version it offered, then only the
    chosen one -- frames of that version decode, a frame of another is fatal (R2.2)."""
    hello_ok = data.draw(message_strategy(MESSAGES_BY_NAME["HELLO_OK"], encoding, version), label="HELLO_OK")
    hello_ok = hello_ok.replace(version=version)
    after = data.draw(any_message(encoding, version), label="after")
    wire_a, wire_b = encode(hello_ok, encoding, version), encode(after, encoding, version)
    decoder = FrameDecoder(encoding, versions=frozenset(SUPPORTED_VERSIONS))
    decoder.feed(wire_a + wire_b if together else wire_a)
    assert decoder.next_message() == hello_ok
    decoder.versions = frozenset({hello_ok.version})
    if not together:
        decoder.feed(wire_b)
    assert decoder.next_message() == after
    other = next(v for v in SUPPORTED_VERSIONS if v != version)
    stray = data.draw(any_message(encoding, other), label="stray")
    decoder.feed(encode(stray, encoding, other) + wire_b)
    with pytest.raises(UnsupportedVersion) as info:
        decoder.next_message()
    assert (info.value.rule, info.value.fatal, info.value.message_type) == ("R2.2", True, stray.TYPE)
    assert decoder.failed is info.value
