"""ChatThread (the library on a worker thread) against a real server (``chat_server``, conftest.py)."""

from __future__ import annotations

import queue
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from dfachat.client import (
    AuthenticationFailed,
    Closed,
    ConnectionFailed,
    Delivery,
    Joined,
    Left,
    MessageRejected,
    SessionEnded,
)
from dfachat.client.threaded import ChatThread, LoggedIn
from dfachat.server import DEMO_ACCOUNTS
from dfachat.spec import LeftReason, Outcome

TIMEOUT = 5.0


class Client:
    """A ChatThread whose events land in a queue the test reads."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.events: queue.Queue[Any] = queue.Queue()
        self.threads: set[str] = set()
        self.chat = ChatThread(self._on_event, timeout=TIMEOUT)

    def _on_event(self, event: Any) -> None:
        self.threads.add(threading.current_thread().name)
        self.events.put(event)

    def login(self, user: str, password: str | None = None, encoding: str = "utf-8") -> LoggedIn:
        password = dict(DEMO_ACCOUNTS)[user] if password is None else password
        return self.chat.login(self.server.host, self.server.port, user, password, encoding).result(TIMEOUT)

    def next_of(self, kind: type) -> Any:
        while True:
            event = self.events.get(timeout=TIMEOUT)
            if isinstance(event, kind):
                return event


@pytest.fixture
def clients(chat_server: Any) -> Iterator[Any]:
    made: list[Client] = []

    def make() -> Client:
        made.append(Client(chat_server))
        return made[-1]

    try:
        yield make
    finally:
        for client in made:
            client.chat.close()


def test_login_send_receive_and_quit(clients: Any) -> None:
    liz, steve = clients(), clients()
    me = liz.login("Liz")
    assert isinstance(me, LoggedIn) and me.user == "Liz" and me.encoding == "utf-8"
    steve.login("Steve", encoding="latin-1")
    assert liz.next_of(Joined) == Joined("Steve")
    assert sorted(liz.chat.who().result(TIMEOUT)) == ["Liz", "Steve"]

    ack = liz.chat.send("héllo ☃", to=["Steve", "Nobody"]).result(TIMEOUT)
    assert ack.outcomes == {"Steve": Outcome.LOSSY, "Nobody": Outcome.UNKNOWN_USER}
    got = steve.next_of(Delivery)
    assert (got.sender, got.text, got.directed, got.lossy) == ("Liz", "héllo ?", True, True)
    assert steve.threads == {"dfachat-chat"}  # on_event runs in the worker thread

    steve.chat.quit().result(TIMEOUT)
    assert isinstance(steve.next_of(Closed).error, SessionEnded)  # emitted before quit() resolved
    assert liz.next_of(Left) == Left("Steve", LeftReason.QUIT)
    liz.chat.send("anyone?").result(TIMEOUT)

    with pytest.raises(SessionEnded):  # after quit, requests fail with the library's error
        steve.chat.send("too late").result(TIMEOUT)


def test_errors_come_out_of_the_futures(chat_server: Any, clients: Any) -> None:
    liz = clients()
    with pytest.raises(AuthenticationFailed) as failed:
        liz.login("Liz", "wrong")
    assert failed.value.attempts_left > 0 and "attempts left" in str(failed.value)
    with pytest.raises(ConnectionFailed, match="cannot reach"):
        liz.chat.login("127.0.0.1", _closed_port(), "Liz", "pw1", "utf-8").result(TIMEOUT)
    with pytest.raises(SessionEnded, match="not logged in"):
        liz.chat.send("hi").result(TIMEOUT)

    liz.login("Liz")  # the same ChatThread can log in after failures
    with pytest.raises(MessageRejected, match="cannot be written in ascii"):
        other = clients()
        other.login("Steve", encoding="ascii")
        other.chat.send("snow ☃").result(TIMEOUT)

    chat_server.shutdown()  # the server goes away: the event says so in a sentence
    closed = liz.next_of(Closed)
    assert "shutting down" in str(closed.error)


def test_close_stops_the_thread_and_later_calls_fail_cleanly(clients: Any) -> None:
    liz = clients()
    liz.login("Liz")
    liz.chat.close()
    assert not liz.chat._thread.is_alive()
    with pytest.raises(SessionEnded):
        liz.chat.send("hello").result(TIMEOUT)
    liz.chat.close()  # idempotent


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_versions_and_explicit_acknowledgement(clients: Any, chat_user: Any) -> None:
    """``auto_ack=False``: a message is acknowledged when the application says so, and the
    acknowledgement covers every message before it (R7.10); version 1 on request."""
    old = clients()
    old.chat.versions = (1,)
    assert old.login("Bailey").version == 1
    liz = clients()
    liz.chat.auto_ack = False
    assert liz.login("Liz").version == 2
    steve = chat_user("Steve")
    for text in ("one", "two", "three"):
        steve.send(text, to=["Liz"])
    got = [liz.next_of(Delivery) for _ in range(3)]
    assert [d.text for d in got] == ["one", "two", "three"]
    liz.chat.acknowledge(got[1]).result(TIMEOUT)  # "one" and "two" taken, "three" not
    liz.chat.close()  # no QUIT: what was written goes out, then the connection drops
    again = chat_user("Liz")
    later = again.wait_for(lambda e: isinstance(e, Delivery))
    assert (later.text, later.redelivered) == ("three", True)
