"""Codec throughput: generated codec vs construct's schema vs a hand-written ``struct`` codec.

    python bench/codec.py [--rounds 7] [--number 20000]

For a typical MSG and DELIVER (100-character text, 3 recipients) it times, in
the same run, several rounds each:

  (a) dfachat's generated codec (``dfachat.codec.encode`` / ``decode_frame``),
  (b) construct interpreting the spec's schemas (``dfachat.codec.oracle``),
  (c) a hand-written ``struct`` codec of the same layout, below: the baseline.

It prints a table of medians and, last, one JSON line whose ``encode_ratio``
and ``decode_ratio`` are (a)'s time over (c)'s (target: at most 1.5).
The baseline has the same contract as the generated codec -- a message object
in, its frame out; a frame in, the same typed message out (built with the
classes' own fast path) -- and checks lengths and decodes text strictly, as
any codec facing network bytes must. It skips the name-alphabet, bound and
enum checks the generated codec also makes. For reference the JSON also has
``raw_decode_ratio``: the generated decoder against the same baseline
returning a bare tuple instead of a message.
"""

from __future__ import annotations

import argparse
import json
import statistics
import struct
import sys
import timeit
import zlib

from dfachat.codec import decode_frame, encode, oracle
from dfachat.codec.messages import DELIVER, MSG
from dfachat.spec import DeliverFlags

TEXT = ("The quick brown fox jumps over the lazy dog; " * 3)[:100]
RECIPIENTS = ("Liz", "Steve", "Bailey")

# --- (c) the hand-written baseline --------------------------------------------
_HDR = struct.Struct(">2sBBL")
_U32 = struct.Struct(">L")
_U16 = struct.Struct(">H")
_MSG_FIXED = struct.Struct(">L")
_DELIVER_FIXED = struct.Struct(">QQB")


def hand_encode_msg(message: MSG) -> bytes:
    msg_id, recipients, text = message
    parts = [_MSG_FIXED.pack(msg_id), bytes((len(recipients),))]
    for name in recipients:
        raw = name.encode("ascii")
        parts.append(bytes((len(raw),)))
        parts.append(raw)
    raw = text.encode("utf-8")
    parts.append(_U16.pack(len(raw)))
    parts.append(raw)
    payload = b"".join(parts)
    head = _HDR.pack(b"DF", 1, 0x04, len(payload))
    return b"".join((head, payload, _U32.pack(zlib.crc32(payload, zlib.crc32(head)))))


def hand_encode_deliver(message: DELIVER) -> bytes:
    server_msg_id, timestamp_ms, flags, sender, text = message
    raw_sender = sender.encode("ascii")
    raw = text.encode("utf-8")
    payload = b"".join(
        (
            _DELIVER_FIXED.pack(server_msg_id, timestamp_ms, flags),
            bytes((len(raw_sender),)),
            raw_sender,
            _U16.pack(len(raw)),
            raw,
        )
    )
    head = _HDR.pack(b"DF", 1, 0x45, len(payload))
    return b"".join((head, payload, _U32.pack(zlib.crc32(payload, zlib.crc32(head)))))


def _hand_frame(data: bytes) -> tuple[int, int]:
    magic, version, mtype, length = _HDR.unpack_from(data, 0)
    if magic != b"DF" or version != 1 or len(data) != 12 + length:
        raise ValueError("bad frame")
    end = 8 + length
    if zlib.crc32(data[:end]) != _U32.unpack_from(data, end)[0]:
        raise ValueError("bad checksum")
    return mtype, end


def hand_decode_msg_raw(data: bytes) -> tuple[int, tuple[str, ...], str]:
    _, end = _hand_frame(data)
    (msg_id,) = _MSG_FIXED.unpack_from(data, 8)
    count = data[12]
    pos = 13
    names = []
    for _ in range(count):
        n = data[pos]
        stop = pos + 1 + n
        if stop > end:
            raise ValueError("truncated")
        names.append(data[pos + 1 : stop].decode("ascii"))
        pos = stop
    (n,) = _U16.unpack_from(data, pos)
    stop = pos + 2 + n
    if stop != end:
        raise ValueError("bad length")
    return msg_id, tuple(names), data[pos + 2 : stop].decode("utf-8")


def hand_decode_deliver_raw(data: bytes) -> tuple[int, int, int, str, str]:
    _, end = _hand_frame(data)
    server_msg_id, timestamp_ms, flags = _DELIVER_FIXED.unpack_from(data, 8)
    pos = 25
    n = data[pos]
    stop = pos + 1 + n
    if stop > end:
        raise ValueError("truncated")
    sender = data[pos + 1 : stop].decode("ascii")
    pos = stop
    (n,) = _U16.unpack_from(data, pos)
    stop = pos + 2 + n
    if stop != end:
        raise ValueError("bad length")
    return server_msg_id, timestamp_ms, flags, sender, data[pos + 2 : stop].decode("utf-8")


def hand_decode_msg(data: bytes) -> MSG:
    return _msg_new(hand_decode_msg_raw(data))


def hand_decode_deliver(data: bytes) -> DELIVER:
    values = hand_decode_deliver_raw(data)
    return _deliver_new((values[0], values[1], _DELIVER_FLAGS[values[2]], values[3], values[4]))


_DELIVER_FLAGS = {value: DeliverFlags(value) for value in range(8)}
_msg_new = MSG._from_wire
_deliver_new = DELIVER._from_wire


def _median_ns(fn, number: int, rounds: int) -> float:
    times = timeit.repeat(fn, number=number, repeat=rounds)
    return statistics.median(times) / number * 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--number", type=int, default=20000)
    args = parser.parse_args()

    msg = MSG(msg_id=42, recipients=RECIPIENTS, text=TEXT)
    deliver = DELIVER(
        server_msg_id=1 << 40, timestamp_ms=1_790_000_000_000, flags=DeliverFlags.DIRECTED, sender="Liz", text=TEXT
    )
    msg_frame, deliver_frame = encode(msg), encode(deliver)
    # All three must agree on the bytes, or the comparison means nothing.
    assert hand_encode_msg(msg) == msg_frame == oracle.encode(msg)
    assert hand_encode_deliver(deliver) == deliver_frame == oracle.encode(deliver)
    assert hand_decode_msg(msg_frame) == decode_frame(msg_frame) == msg == oracle.decode_frame(msg_frame)
    assert hand_decode_deliver(deliver_frame) == decode_frame(deliver_frame) == deliver

    n, r = args.number, args.rounds
    cases = {
        ("MSG", "encode"): (
            lambda: encode(msg),
            lambda: oracle.encode(msg),
            lambda: hand_encode_msg(msg),
        ),
        ("MSG", "decode"): (
            lambda: decode_frame(msg_frame),
            lambda: oracle.decode_frame(msg_frame),
            lambda: hand_decode_msg(msg_frame),
        ),
        ("DELIVER", "encode"): (
            lambda: encode(deliver),
            lambda: oracle.encode(deliver),
            lambda: hand_encode_deliver(deliver),
        ),
        ("DELIVER", "decode"): (
            lambda: decode_frame(deliver_frame),
            lambda: oracle.decode_frame(deliver_frame),
            lambda: hand_decode_deliver(deliver_frame),
        ),
    }
    raw_decode = {
        "MSG": _median_ns(lambda: hand_decode_msg_raw(msg_frame), n, r),
        "DELIVER": _median_ns(lambda: hand_decode_deliver_raw(deliver_frame), n, r),
    }
    rows = []
    print(f"{'message':8} {'op':7} {'generated ns':>13} {'construct ns':>13} {'hand ns':>9} {'gen/hand':>9} {'construct/hand':>15}")
    for (name, op), (generated, construct_, hand) in cases.items():
        g = _median_ns(generated, n, r)
        c = _median_ns(construct_, max(n // 20, 100), r)
        h = _median_ns(hand, n, r)
        rows.append({"message": name, "op": op, "generated_ns": g, "construct_ns": c, "hand_ns": h})
        print(f"{name:8} {op:7} {g:13.0f} {c:13.0f} {h:9.0f} {g / h:9.2f} {c / h:15.1f}", flush=True)

    def ratio(op: str, key: str) -> float:
        sel = [row for row in rows if row["op"] == op]
        return round(sum(row[key] for row in sel) / sum(row["hand_ns"] for row in sel), 3)

    result = {
        "bench": "codec",
        "encode_ratio": ratio("encode", "generated_ns"),
        "decode_ratio": ratio("decode", "generated_ns"),
        "raw_decode_ratio": round(
            sum(row["generated_ns"] for row in rows if row["op"] == "decode") / sum(raw_decode.values()), 3
        ),
        "construct_encode_ratio": ratio("encode", "construct_ns"),
        "construct_decode_ratio": ratio("decode", "construct_ns"),
        "target": 1.5,
        "rows": rows,
    }
    result["meets_target"] = result["encode_ratio"] <= 1.5 and result["decode_ratio"] <= 1.5
    print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
