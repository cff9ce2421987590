"""The client library for code that is not asyncio: one chat on a worker thread.

    chat = ChatThread(on_event=print)            # on_event runs in the worker thread
    online = chat.login("127.0.0.1", 7777, "Liz", "pw1", "utf-8").result()
    print(chat.send("hello", to=["Steve"]).result().outcomes)
    chat.quit().result()
    chat.close()

Every method returns a :class:`concurrent.futures.Future` at once; the
library's exceptions (:class:`~dfachat.errors.AuthenticationFailed`,
:class:`~dfachat.errors.ConnectionFailed`, :class:`~dfachat.errors.MessageRejected`,
:class:`~dfachat.errors.SessionEnded`) come out of ``future.result()`` unchanged.
A GUI hands the futures' results and the events to its own thread (Tk's
``after``) -- nothing here touches the caller's thread.

A message counts as taken (and is acknowledged, R7.11) once ``on_event`` has
returned for it; with ``auto_ack=False``, only once :meth:`ChatThread.acknowledge`
says so (a GUI: after it has shown the message). Without a ``taken`` file the
highest id taken is remembered in memory per server and account, across logins.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

from dfachat.client.library import (
    Chat,
    ChatEvent,
    Delivery,
    SendResult,
    Taken,
    TakenRecord,
    open_chat,
)
from dfachat.errors import SessionEnded
from dfachat.spec import SUPPORTED_VERSIONS

__all__ = ["ChatThread", "LoggedIn"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LoggedIn:
    """What a successful :meth:`ChatThread.login` returns (a snapshot, safe to share)."""

    user: str
    online: tuple[str, ...]
    encoding: str
    server_software: str
    version: int = 1  # the protocol version the server chose


class ChatThread:
    """An asyncio loop on a daemon thread running one :class:`~dfachat.client.library.Chat`."""

    def __init__(self, on_event: Callable[[ChatEvent], None] | None = None, *, timeout: float = 10.0,
                 ssl: Any = None, versions: Iterable[int] = SUPPORTED_VERSIONS, auto_ack: bool = True) -> None:
        self.on_event = on_event
        self.timeout = timeout
        self.ssl = ssl  # an ssl.SSLContext (dfachat.client.tls_context) for a TLS server
        self.versions = tuple(versions)  # the protocol versions offered at login
        self.auto_ack = auto_ack  # read at each login; False: only acknowledge() takes a message
        self._taken: dict[tuple[str, int, str], TakenRecord] = {}  # in memory, across logins
        self._chat: Chat | None = None
        self._pump: asyncio.Task[None] | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="dfachat-chat", daemon=True)
        self._thread.start()

    # --- the worker thread ----------------------------------------------------------------
    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    def _submit(self, coroutine: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        try:
            return asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        except RuntimeError:  # the loop is closed or closing
            coroutine.close()
            future: concurrent.futures.Future[Any] = concurrent.futures.Future()
            future.set_exception(SessionEnded("the chat connection has been closed"))
            return future

    def _emit(self, event: ChatEvent) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(event)
        except Exception:  # a broken callback must not stop the events
            log.exception("on_event failed for %r", event)

    async def _forward_events(self, chat: Chat) -> None:
        async for event in chat.events():
            self._emit(event)

    def _current(self) -> Chat:
        if self._chat is None:
            raise SessionEnded("you are not logged in")
        return self._chat

    # --- the API (any thread) --------------------------------------------------------------
    @property
    def online(self) -> list[str]:
        """A snapshot of who is online, as the library keeps it (empty before login)."""
        return list(self._chat.online) if self._chat is not None else []

    def login(
        self, host: str, port: int, user: str, password: str, encoding: str = "utf-8", *, taken: Taken = None
    ) -> concurrent.futures.Future[LoggedIn]:
        """Connect and log in; the future's result is a :class:`LoggedIn`.

        ``taken``: the :class:`~dfachat.client.library.TakenRecord` or its file
        (:func:`~dfachat.client.library.taken_path_for`); by default one in memory.
        """
        return self._submit(self._login(host, port, user, password, encoding, taken))

    async def _login(self, host: str, port: int, user: str, password: str, encoding: str, taken: Taken) -> LoggedIn:
        if self._chat is not None and self._chat.ended is None:
            raise SessionEnded(f"already logged in as {self._chat.user}", code_name="BYE")
        if taken is None:
            taken = self._taken.setdefault((host.lower(), port, user.casefold()), TakenRecord())
        chat = await open_chat(
            host, port, user=user, password=password, encoding=encoding, timeout=self.timeout, ssl=self.ssl,
            versions=self.versions, auto_ack=self.auto_ack, taken=taken,
        )
        self._chat = chat
        self._pump = asyncio.get_running_loop().create_task(self._forward_events(chat))
        return LoggedIn(chat.user, tuple(chat.online), chat.encoding, chat.server_software, chat.version or 1)

    def acknowledge(self, delivery: Delivery) -> concurrent.futures.Future[None]:
        """``delivery`` and every message before it are taken (with ``auto_ack=False``: after the
        application has done what it does with them)."""

        async def acknowledge() -> None:
            if self._chat is not None:  # the same account's record: an earlier session's id is taken too
                self._chat.acknowledge(delivery)

        return self._submit(acknowledge())

    def send(self, text: str, to: Iterable[str] = ()) -> concurrent.futures.Future[SendResult]:
        """Send ``text`` to the named users (none: everyone online)."""
        recipients = tuple(to)

        async def send() -> SendResult:
            return await self._current().send(text, to=recipients, timeout=self.timeout)

        return self._submit(send())

    def who(self) -> concurrent.futures.Future[list[str]]:
        """Who is online now (asks the server)."""

        async def who() -> list[str]:
            return await self._current().who(timeout=self.timeout)

        return self._submit(who())

    def quit(self) -> concurrent.futures.Future[None]:
        """Leave cleanly (QUIT, BYE); resolves after the last event, :class:`Closed`, was emitted."""
        return self._submit(self._quit())

    async def _quit(self) -> None:
        if self._chat is None:
            return
        await self._chat.quit(timeout=min(self.timeout, 5.0))
        if self._pump is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                async with asyncio.timeout(1.0):
                    await self._pump

    def close(self, timeout: float = 5.0) -> None:
        """Drop the connection (no QUIT), stop the loop and join the thread. Idempotent."""
        if not self._thread.is_alive():
            return
        if threading.current_thread() is self._thread:
            raise RuntimeError("ChatThread.close() called from its own worker thread (from on_event?)")

        async def stop() -> None:
            if self._chat is not None:
                with contextlib.suppress(asyncio.TimeoutError, Exception):
                    async with asyncio.timeout(2.0):
                        await self._chat.aclose()
            others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in others:  # the event pump, a login still connecting, a send waiting
                task.cancel()
            with contextlib.suppress(asyncio.TimeoutError):
                async with asyncio.timeout(2.0):
                    await asyncio.gather(*others, return_exceptions=True)
            asyncio.get_running_loop().stop()

        with contextlib.suppress(RuntimeError):
            asyncio.run_coroutine_threadsafe(stop(), self._loop)
        self._thread.join(timeout)
