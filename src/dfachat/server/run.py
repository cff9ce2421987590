"""Running the server as a program: logging, signals, the event loop (uvloop when installed)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sqlite3
import sys
from pathlib import Path

from dfachat.server.app import ChatServer, ServerConfig
from dfachat.server.store import DEMO_ACCOUNTS, Store, StoreError, unusable

__all__ = ["JsonFormatter", "configure_logging", "run_server"]

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
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, lambda: loop.create_task(server.shutdown()))
    tls = " (TLS)" if config.tls is not None else ""
    print(f"dfachat server listening on {config.host}:{server.port}{tls}", file=sys.stderr, flush=True)
    if ready is not None:
        ready.set()
    await server.stopped.wait()


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
    loop = _new_event_loop()
    try:
        loop.run_until_complete(_serve(store, config))
    finally:
        loop.close()
    return 0
