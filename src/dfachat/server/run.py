"""Running the server as a program: logging, signals, the event loop (uvloop when installed)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import shutil
import signal
import sqlite3
import sys
from pathlib import Path

from dfachat.server.app import ChatServer, ServerConfig
from dfachat.server.store import DEMO_ACCOUNTS, Store, StoreError, unusable

__all__ = ["JsonFormatter", "bind_failure", "configure_logging", "port_holder", "run_server"]

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, message and the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "info", *, json_lines: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if json_lines else logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    )
    root = logging.getLogger("dfachat")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


_TCP_LISTEN = "0A"  # the st column of /proc/net/tcp


def port_holder(port: int, tables: tuple[str, ...] = ("/proc/net/tcp", "/proc/net/tcp6")) -> str | None:
    """Who holds a local TCP ``port``: "listener" (a server), "connection" (a socket of an open
    or closing connection, such as another program's outgoing one: 33318 lies in Linux's
    ephemeral range), or None when the tables cannot say (not Linux, or nobody)."""
    states = set()
    for table in tables:
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 3 and int(fields[1].rpartition(":")[2], 16) == port:
                states.add(fields[3])
    if _TCP_LISTEN in states:
        return "listener"
    return "connection" if states else None


def bind_failure(host: str, port: int, exc: OSError) -> str:
    """Why the server cannot serve on host:port, and what to do, in one sentence."""
    if exc.errno != errno.EADDRINUSE:
        return f"cannot serve on {host}:{port}: {exc.strerror or exc}"
    holder = port_holder(port)
    if holder == "listener":
        why = "another program listens on it (another dfachat server?)"
    elif holder == "connection":
        why = ("nothing listens on it, but a connection of another program uses it as its local "
               "port (an outgoing connection's port is picked from the range 33318 lies in)")
    else:
        why = "another socket holds it"
    return (f"cannot serve on {host}:{port}: the port is in use: {why}; give --port another port "
            "(--port 0 picks a free one)")


def _new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()  # type: ignore[no-any-return]


async def _serve(store: Store, config: ServerConfig, ready: asyncio.Event | None = None) -> None:
    server = ChatServer(store, config)
    await server.start()
    loop = asyncio.get_running_loop()
    shutting_down: list[asyncio.Task[None]] = []

    def stop() -> None:
        # One shutdown, however many signals: a second task would race the first and be
        # destroyed pending when the loop closes.
        if not shutting_down:
            shutting_down.append(loop.create_task(server.shutdown()))

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop)
    tls = " (TLS)" if config.tls is not None else ""
    print(f"dfachat server listening on {config.host}:{server.port}{tls}", file=sys.stderr, flush=True)
    if ready is not None:
        ready.set()
    await server.stopped.wait()
    for task in shutting_down:
        await task


LOW_DISK_BYTES = 256 << 20  # below this much free space the server warns at start (R7.15)


def disk_space_warning(db: Path, *, low: int = LOW_DISK_BYTES) -> str | None:
    """A warning when the disk holding the database is nearly full, else None."""
    try:
        free = shutil.disk_usage(db.resolve().parent).free
    except OSError:
        return None
    if free >= low:
        return None
    return (f"the disk holding {db} has only {free >> 20} MiB free: when it is full, messages are refused "
            "(the sender is told STORE_FAILED, rule R7.15) and nothing is lost; free some space")


def run_server(db: Path, config: ServerConfig, *, demo: bool = False) -> int:
    """Run until SIGINT or SIGTERM, then shut down gracefully; returns the exit status."""
    store = Store(db)
    if demo:
        try:
            created = store.ensure_users(DEMO_ACCOUNTS)
        except sqlite3.Error as exc:  # a read-only database is found at its first write
            store.close()
            raise StoreError(unusable(store.path, exc)) from None
        names = ", ".join(f"{n}/{p}" for n, p in DEMO_ACCOUNTS)
        print(
            f"*** DEMO MODE: the demo accounts {names} exist in {db}"
            + (f" (created now: {', '.join(created)})" if created else "")
            + ". Anyone who knows these passwords can log in. ***",
            file=sys.stderr,
            flush=True,
        )
    warning = disk_space_warning(db)
    if warning:
        logging.getLogger("dfachat.server").warning("%s", warning)
    loop = _new_event_loop()
    try:
        loop.run_until_complete(_serve(store, config))
    finally:
        loop.close()
    return 0
