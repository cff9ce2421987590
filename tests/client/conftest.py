"""Shared fixtures for the clients: a real server, and library clients, each on its own loop thread.

``chat_server`` runs :class:`ChatServer` (demo accounts, fast back-off, a
fresh SQLite file) on 127.0.0.1 in a background thread, so that tests which
drive a subprocess, a pseudo-terminal or a GUI can block freely.
``chat_user("Steve")`` logs a library client in as a demo account, also on a
thread of its own, with blocking methods whose every wait is bounded.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from dfachat.client import Chat, ChatEvent, SendResult, open_chat
from dfachat.server import DEMO_ACCOUNTS, ChatServer, KdfParams, ServerConfig, Store
from dfachat.spec import Limits

PASSWORDS = dict(DEMO_ACCOUNTS)
TIMEOUT = 10.0  # the bound on every wait in these helpers

T = TypeVar("T")


class _LoopThread:
    """An asyncio loop running in a daemon thread; ``call`` runs a coroutine there and waits."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = TIMEOUT) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(TIMEOUT)
        if not self._thread.is_alive():
            self.loop.close()


class RunningServer:
    """A :class:`ChatServer` serving on ``host``:``port`` from a background thread."""

    host = "127.0.0.1"

    def __init__(self, db: Path) -> None:
        self._thread = _LoopThread("chat-server")
        self.server = self._thread.call(self._start(db))
        self.port = self.server.port

    @staticmethod
    async def _start(db: Path) -> ChatServer:
        store = Store(db, kdf=KdfParams(n=1024))
        store.ensure_users(DEMO_ACCOUNTS)
        server = ChatServer(store, ServerConfig(port=0, limits=Limits(backoff_base_ms=5)))
        await server.start()
        return server

    def shutdown(self) -> None:
        """Graceful shutdown (BYE to every session); a second call does nothing."""
        if not self.server.stopped.is_set():
            self._thread.call(self.server.shutdown())

    def close(self) -> None:
        try:
            self.shutdown()
        finally:
            self._thread.stop()


class SyncChat:
    """A library client with blocking methods, for tests that cannot await."""

    def __init__(self, server: RunningServer, user: str, *, encoding: str = "utf-8") -> None:
        self._thread = _LoopThread(f"chat-{user}")
        self.chat: Chat = self._thread.call(
            open_chat(
                server.host, server.port, user=user, password=PASSWORDS[user], encoding=encoding
            )
        )
        self.seen: list[ChatEvent] = []
        self._closed = False

    def send(self, text: str, to: tuple[str, ...] | list[str] = ()) -> SendResult:
        return self._thread.call(self.chat.send(text, to=to))

    def who(self) -> list[str]:
        return self._thread.call(self.chat.who())

    def wait_for(self, match: Callable[[ChatEvent], bool], timeout: float = TIMEOUT) -> ChatEvent:
        """The first event (seen already, or arriving within ``timeout``) that ``match``es."""
        for event in self.seen:
            if match(event):
                return event

        async def wait() -> ChatEvent:
            async with asyncio.timeout(timeout):
                while True:
                    event = self.chat.next_event_nowait()
                    if event is None:
                        await asyncio.sleep(0.01)
                        continue
                    self.seen.append(event)
                    if match(event):
                        return event

        try:
            return self._thread.call(wait(), timeout + 1)
        except TimeoutError:
            raise AssertionError(
                f"no matching event within {timeout} s; seen: {self.seen}"
            ) from None

    def close(self) -> None:
        """Quit (QUIT, wait for BYE) and stop the thread; a second call does nothing."""
        if self._closed:
            return
        self._closed = True
        try:
            self._thread.call(self.chat.quit())
        finally:
            self._thread.stop()


@pytest.fixture(autouse=True)
def state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The clients' state directory (the files of the messages taken) is the test's own,
    for this process and the clients it starts."""
    home = tmp_path / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(home))
    return home


@pytest.fixture
def chat_server(tmp_path: Path) -> Iterator[RunningServer]:
    """A running server with the demo accounts (Liz/pw1, Steve/pw2, Bailey/pw3)."""
    server = RunningServer(tmp_path / "chat.db")
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def chat_user(chat_server: RunningServer) -> Iterator[Callable[..., SyncChat]]:
    """``chat_user("Steve", encoding="latin-1")``: a logged-in library client, quit at teardown."""
    users: list[SyncChat] = []

    def login(user: str, **options: Any) -> SyncChat:
        users.append(SyncChat(chat_server, user, **options))
        return users[-1]

    yield login
    for user in users:
        user.close()
