"""A minimal asyncio broadcast server: the baseline of "what asyncio can do" for bench/fanout.py.

    python bench/baseline_server.py PORT      (0: any free port; the port is printed on stdout)

It speaks dfachat's frame format only as far as the load generator needs: no
handshake, no accounts, no state machine, no checks beyond a frame's length.
Every connection is in the broadcast. For each MSG a connection sends, it
builds one DELIVER frame of the size the reference server sends for it (the
same layout, a real CRC-32, a 9-character sender name made from the
connection's number, like the generator's account names) and queues it to
every other connection; then it answers the sender with a broadcast's
MSG_ACK, so that a stop-and-wait sender runs the same way against both
servers. A PING is answered with a PONG (the generator's sign that its
connection was accepted). Directed MSGs are broadcast too (the generator
sends none).

Writes are coalesced as in the reference server: frames bound for a
connection collect in a list and go out in one ``write`` per event-loop
iteration. Runs on 127.0.0.1 until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import signal
import struct
import sys
import time
import zlib

HOST = "127.0.0.1"
_HEADER = struct.Struct(">2sBBL")  # magic, version, type, payload length
_CRC = struct.Struct(">L")
_DELIVER_FIXED = struct.Struct(">QQB")  # server_msg_id, timestamp_ms, flags
_ACK = struct.Struct(">LQLLB")  # msg_id, server_msg_id, delivered, lossy, no results
_MSG, _MSG_ACK, _DELIVER, _PING, _PONG = 0x04, 0x44, 0x45, 0x70, 0x71


def frame(mtype: int, payload: bytes) -> bytes:
    head = _HEADER.pack(b"DF", 1, mtype, len(payload))
    return b"".join((head, payload, _CRC.pack(zlib.crc32(payload, zlib.crc32(head)))))


class Hub:
    """Every connection, and those with output queued for this loop iteration."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.peers: dict[Peer, None] = {}  # insertion-ordered set
        self.dirty: list[Peer] = []
        self.flush_scheduled = False
        self.next_msg_id = 1
        self.next_peer = 0

    def schedule_flush(self) -> None:
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush_all)

    def flush_all(self) -> None:
        self.flush_scheduled = False
        dirty, self.dirty = self.dirty, []
        for peer in dirty:
            peer.flush()

    def broadcast(self, sender: Peer, buf: bytes, pos: int, end: int) -> None:
        """The MSG frame buf[pos:end]: one DELIVER to every other peer, MSG_ACK to the sender."""
        payload = pos + 8
        (msg_id,) = _CRC.unpack_from(buf, payload)
        at = payload + 5
        for _ in range(buf[payload + 4]):  # skip the recipient names
            at += 1 + buf[at]
        server_msg_id = self.next_msg_id
        self.next_msg_id += 1
        deliver = frame(
            _DELIVER,
            b"".join((
                _DELIVER_FIXED.pack(server_msg_id, time.time_ns() // 1_000_000, 0),
                sender.name,
                buf[at : end - 4],  # the text with its length prefix, as it came
            )),
        )
        delivered = 0
        for peer in self.peers:
            if peer is not sender:
                peer.queue(deliver)
                delivered += 1
        sender.queue(frame(_MSG_ACK, _ACK.pack(msg_id, server_msg_id, delivered, 0, 0)))


class Peer(asyncio.Protocol):
    __slots__ = ("hub", "transport", "name", "pending", "out")

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.transport: asyncio.Transport | None = None
        self.name = b"\x09" + f"c{hub.next_peer:08d}".encode()  # length-prefixed, 9 characters
        hub.next_peer += 1
        self.pending = b""
        self.out: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.hub.peers[self] = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.hub.peers.pop(self, None)
        self.out.clear()

    def data_received(self, data: bytes) -> None:
        buf = self.pending + data if self.pending else data
        pos, size = 0, len(buf)
        while size - pos >= 12:
            _, _, mtype, length = _HEADER.unpack_from(buf, pos)
            end = pos + 12 + length
            if end > size:
                break
            if mtype == _MSG:
                self.hub.broadcast(self, buf, pos, end)
            elif mtype == _PING:
                self.queue(frame(_PONG, buf[pos + 8 : end - 4]))
            pos = end
        self.pending = buf[pos:]

    def queue(self, data: bytes) -> None:
        if not self.out:
            self.hub.dirty.append(self)
            self.hub.schedule_flush()
        self.out.append(data)

    def flush(self) -> None:
        out, transport = self.out, self.transport
        if out and transport is not None and not transport.is_closing():
            transport.write(b"".join(out) if len(out) > 1 else out[0])
        out.clear()


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    hub = Hub(loop)
    server = await loop.create_server(lambda: Peer(hub), HOST, port, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(server.sockets[0].getsockname()[1], flush=True)
    await stop.wait()
    server.close()
    for peer in list(hub.peers):
        if peer.transport is not None:
            peer.transport.close()


def main() -> int:
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        print(__doc__.splitlines()[2].strip(), file=sys.stderr)
        return 2
    asyncio.run(serve(int(sys.argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
