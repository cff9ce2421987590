"""Fuzz target: the reference server's ``Connection.data_received`` path, in memory.

The place where an unhandled exception would hurt most: the real
:class:`~dfachat.server.app.ChatServer` with a real :class:`~dfachat.server.store.Store`
on a temporary SQLite file (demo accounts, a cheap scrypt cost so a login
costs microseconds), on an asyncio event loop but with in-memory transports
instead of sockets. Per input:

1. a fresh server; an *observer* connection logs in (the second demo account,
   in latin-1) so that pushes, re-encoding and LOSSY (R3.5) and session
   replacement (R6.6) have someone to reach;
2. the input's bytes arrive on a second connection in a random split, each
   chunk handled to quiescence (the password check runs in the executor);
   then the end of input, then the connection is lost.

Checked: the server never takes its internal-error path (R11.4) and no task
or callback raises; everything it writes to either connection is whole,
valid frames (decoded with the encoding HELLO_OK announced); a session the
engine closed has its transport closed; after the connection is lost the
server holds nothing of it (connections, online list, per-address count);
handling settles within a time bound.

Run: ``python fuzz/server_connection.py -max_total_time=600 fuzz/corpus/server_connection``.
"""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import logging
import tempfile
import traceback
from pathlib import Path
from typing import Any

from _harness import (
    chunked,
    instrument_functions,
    instrumented,
    main,
    repair_checksums,
    split_input,
    with_control,
)

with instrumented(__name__):
    from dfachat.codec import FrameDecoder, encode
    from dfachat.codec import frames as _frames
    from dfachat.codec.messages import HELLO_OK, Message  # type: ignore[attr-defined]
    from dfachat.server.app import ChatServer, Connection, ServerConfig
    from dfachat.server.core import CoreConnection, ServerCore
    from dfachat.server.store import DEMO_ACCOUNTS, KdfParams, Store, name_key
    from dfachat.spec import LIMITS, SUPPORTED_VERSIONS

instrument_functions(__name__, _frames.DECODERS.values())

from tests.fsm.samples import SAMPLES, plain  # noqa: E402 - after the instrumented dfachat imports

SETTLE_S = 10.0  # one chunk's handling must finish within this (a hang otherwise)
# No back-off sleeps (R6.4) and no per-minute login bound (R9.5): the fuzzer logs in a lot.
FUZZ_LIMITS = dataclasses.replace(LIMITS, backoff_base_ms=0, backoff_max_ms=0, max_logins_per_minute=1 << 30)
CHEAP_KDF = KdfParams(n=16, r=1, p=1)  # the scrypt cost of a test account, not of a real one
(FUZZ_USER, FUZZ_PASSWORD), (OBSERVER, OBSERVER_PASSWORD), (OFFLINE, _) = DEMO_ACCOUNTS[:3]
OBSERVER_ENCODING = "latin-1"
STORED_TEXT = "stored \u20ac \U0001f600"  # waits for the offline account; not ascii: LOSSY there (R3.6)


class MemoryTransport(asyncio.Transport):
    """What a Connection needs of a transport: writes kept in memory, close and abort noted."""

    def __init__(self, address: str, port: int) -> None:
        super().__init__()
        self.peer = (address, port)
        self.written: list[bytes] = []
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.written.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0  # the peer reads everything at once


class _World:
    """The long-lived part: the event loop and the SQLite store (made once per process)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop_errors: list[str] = []
        self.loop.set_exception_handler(lambda _loop, context: self.loop_errors.append(str(context)))
        self._dir = tempfile.TemporaryDirectory(prefix="dfachat-fuzz-")
        self.store = Store(Path(self._dir.name) / "fuzz.db", kdf=CHEAP_KDF)
        self.store.ensure_users(DEMO_ACCOUNTS)
        # Durability is not under test here, and an fsync per stored MSG would halve the speed.
        self.store._db.execute("PRAGMA synchronous=OFF")
        logging.getLogger("dfachat.server").setLevel(logging.CRITICAL)  # the fuzzer's input is noisy
        atexit.register(self.close)

    def close(self) -> None:
        self.store.close()
        self.loop.close()
        self._dir.cleanup()

    def reset_stored(self) -> None:
        """The same stored messages before every input: one for the offline account (R7.7).

        Left alone they would pile up across inputs, make every login deliver
        them all, and make an input's outcome depend on the ones before it.
        """
        store = self.store
        waiting = store.stored_for(name_key(OFFLINE))
        if store.stored_count() == 1 and len(waiting) == 1 and waiting[0].text == STORED_TEXT:
            return  # as it was (most inputs store nothing): no commit
        for name, _ in DEMO_ACCOUNTS:
            store.forget(item.id for item in store.stored_for(name_key(name)))
        store.store([name_key(OFFLINE)], store.next_msg_id(), 0, OBSERVER, 0, STORED_TEXT)


_world: _World | None = None


def world() -> _World:
    global _world
    if _world is None:
        _world = _World()
    return _world


async def _settle(server: ChatServer) -> None:
    """Run until no handler task is pending and no flush is scheduled."""
    me = asyncio.current_task()
    for _ in range(10_000):
        await asyncio.sleep(0)
        pending = [t for t in asyncio.all_tasks() if t is not me]
        if pending:
            _, late = await asyncio.wait(pending, timeout=SETTLE_S)
            assert not late, f"handler tasks still running after {SETTLE_S} s: {late}"
        elif not server._flush_scheduled:
            return
    raise AssertionError("the server did not settle")


def server_frames(transport: MemoryTransport) -> list[Message]:
    """Decode all a connection was sent: whole, valid frames, in the encoding HELLO_OK fixed."""
    decoder = FrameDecoder("utf-8", versions=frozenset(SUPPORTED_VERSIONS))  # HELLO_OK: in its version
    decoder.feed(b"".join(transport.written))
    frames: list[Message] = []
    while (message := decoder.next_message()) is not None:
        frames.append(message)
        if type(message) is HELLO_OK:
            decoder.encoding = message.encoding
            decoder.versions = frozenset({message.version})
    assert decoder.buffered == 0, f"the server wrote {decoder.buffered} bytes of a partial frame"
    return frames


def _login_stream(name: str, password: str, encoding: str) -> bytes:
    return b"".join(
        (
            encode(plain("HELLO", encoding=encoding, versions=(1,))),  # this target's seeds speak version 1
            encode(plain("USER", name=name), encoding),
            encode(plain("PASS", password=password), encoding),
        )
    )


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris and libFuzzer call
    rng, stream = split_input(data)
    stream = repair_checksums(data, stream)
    w = world()
    w.reset_stored()
    loop = w.loop
    # no group commit: every input's writes are done when its frames are (the store is shared)
    server = ChatServer(w.store, ServerConfig(limits=FUZZ_LIMITS, group_commit=False), core_class=ServerCore)
    server.loop = loop
    internal_errors: list[str] = []

    def internal_error(conn: CoreConnection, event: object, exc: BaseException) -> None:
        trace = "".join(traceback.format_exception(exc))
        internal_errors.append(f"handling {event!r}:\n{trace}")
        original_internal_error(conn, event, exc)

    original_internal_error = server.core.internal_error
    server.core.internal_error = internal_error  # type: ignore[method-assign]

    def settle() -> None:
        if server._flush_scheduled or asyncio.all_tasks(loop):
            loop.run_until_complete(_settle(server))
        assert not internal_errors, internal_errors[0]
        assert not w.loop_errors, w.loop_errors[0]

    observer_transport = MemoryTransport("192.0.2.2", 40002)
    observer = Connection(server)
    observer.connection_made(observer_transport)
    observer.data_received(_login_stream(OBSERVER, OBSERVER_PASSWORD, OBSERVER_ENCODING))
    settle()
    assert observer.session.authenticated, observer.session

    transport = MemoryTransport("192.0.2.1", 40001)
    conn = Connection(server)
    conn.connection_made(transport)
    try:
        for chunk in chunked(stream, rng):
            if chunk:
                conn.data_received(chunk)
                settle()
        conn.eof_received()
        settle()
        server_frames(transport)
        server_frames(observer_transport)
        if conn.session.closed:
            assert transport.closed, f"session CLOSED but its transport open (after {conn.core.left_reason.name})"
        conn.connection_lost(None)
        observer.connection_lost(None)
        settle()
        assert not server.connections and not server.online and not server.core.per_address, (
            server.connections,
            server.online,
            server.core.per_address,
        )
    finally:
        internal_errors.clear()
        w.loop_errors.clear()


def seeds() -> dict[str, bytes]:
    """Whole sessions as the first demo account: chat with the observer, the offline account, nobody."""
    found: dict[str, bytes] = {}
    lossy_text = "h\u00e9llo \u20ac \u2713 \U0001f600"  # latin-1 lacks the last three: LOSSY (R3.5)
    for encoding in ("utf-8", "utf-16", "cp1252"):
        chat = [
            plain("MSG", recipients=(OBSERVER,), text=lossy_text if encoding != "cp1252" else "caf\u00e9"),
            plain("MSG", recipients=(OFFLINE, "nobody"), text="later"),
            plain("MSG", recipients=(), text="everyone"),
            *SAMPLES["LIST"],
            *SAMPLES["PING"],
            *SAMPLES["PONG"],
            *SAMPLES["QUIT"],
        ]
        stream = _login_stream(FUZZ_USER, FUZZ_PASSWORD, encoding) + b"".join(encode(m, encoding) for m in chat)
        for control in range(3):
            found[f"chat-{encoding}-{control}"] = with_control(stream, control << 1)  # low bit 0: checksums repaired
    wrong = b"".join(
        encode(m) for m in (plain("USER", name=FUZZ_USER), plain("PASS", password="wrong"))
    )
    found["wrong-passwords"] = with_control(encode(plain("HELLO", encoding="utf-8", versions=(1,))) + wrong * 3)
    found["replaces-observer"] = with_control(_login_stream(OBSERVER, OBSERVER_PASSWORD, "utf-8"))
    found["offline-account"] = with_control(_login_stream(OFFLINE, DEMO_ACCOUNTS[2][1], "ascii"))
    return found


if __name__ == "__main__":
    main("server_connection", TestOneInput, seeds)
