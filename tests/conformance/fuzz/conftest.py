"""Running the fuzzer's tests: a reference server (or a subclass with one fault) in a thread.

The fuzzer is synchronous and talks over real sockets, so the server runs on
its own event loop in a background thread, on an ephemeral port over a real
SQLite file with cheap scrypt. A faulty server is a ``ServerCore`` subclass
(a wrong decision) or a ``ChatServer`` subclass (a wrong frame on the wire)
defined in the tests; nothing in the product ships a fault switch.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dfachat.conformance.fuzz.oracle import Account
from dfachat.conformance.fuzz.server_mode import FuzzSettings
from dfachat.conformance.fuzz.wire import Target
from dfachat.server import ChatServer, KdfParams, ServerConfig, ServerCore, Store
from dfachat.spec import Limits

ACCOUNTS = (("Liz", "pw1"), ("Steve", "pw2"), ("Bailey", "pw3"))
TEST_KDF = KdfParams(n=1024)  # a login costs about a millisecond


class LiveServer:
    """A ChatServer (or subclass) running a ServerCore (or subclass) on 127.0.0.1, in a thread;
    ``stop()`` shuts it down."""

    def __init__(
        self,
        db: Path,
        server_class: type[ChatServer] = ChatServer,
        core_class: type[ServerCore] = ServerCore,
        **config: Any,
    ) -> None:
        self.db = db
        self.server_class = server_class
        self.core_class = core_class
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: ChatServer | None = None

    def start(self) -> LiveServer:
        store = Store(self.db, kdf=TEST_KDF)
        store.ensure_users(ACCOUNTS)
        self.thread.start()
        config = ServerConfig(port=0, **{"limits": Limits(), **self.config})
        self.server = self.server_class(store, config, core_class=self.core_class)
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        return self

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.server is not None:
            asyncio.run_coroutine_threadsafe(self.server.shutdown(timeout=5), self.loop).result(15)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[Any]:
    """``live_server(server_class=ChatServer, core_class=ServerCore, **ServerConfig fields)`` -> a
    started :class:`LiveServer`."""
    started: list[LiveServer] = []

    def start(
        server_class: type[ChatServer] = ChatServer, core_class: type[ServerCore] = ServerCore, **config: Any
    ) -> LiveServer:
        server = LiveServer(tmp_path / f"chat{len(started)}.db", server_class, core_class, **config).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def account_args(accounts: tuple[tuple[str, str], ...] = ACCOUNTS) -> list[str]:
    return [arg for name, pw in accounts for arg in ("--account", f"{name}:{pw}")]


def fuzz_settings(server: LiveServer, tmp_path: Path, **overrides: Any) -> FuzzSettings:
    options: dict[str, Any] = {
        "target": Target("127.0.0.1", server.port),
        "accounts": [Account(n, p) for n, p in ACCOUNTS],
        "seed": 1,
        "max_examples": 40,
        "time_budget_s": 30.0,
        "reply_timeout_s": 0.5,
        "cases_dir": tmp_path / "cases",
        "progress": False,
    }
    options.update(overrides)
    return FuzzSettings(**options)
