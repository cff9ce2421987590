"""The oracle of server mode is the server core: what the driver expects is what the core sends.

No live target here: the driver's connections are socket pairs nobody answers.
What a test sends goes to the oracle alone (and through the judge, which the
test also moves with the frames a conforming target would send), so the
expectations the core's effects became can be read back and judged.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from dfachat.codec import encode
from dfachat.codec.messages import (  # type: ignore[attr-defined]
    AUTH_FAILED,
    AUTH_OK,
    HELLO,
    HELLO_OK,
    MSG,
    MSG_ACK,
    PASS,
    QUIT,
    USER,
    Message,
    RecipientResult,
)
from dfachat.conformance.fuzz.oracle import Account, Conn, Driver, Expect
from dfachat.conformance.fuzz.verdicts import Verdicts
from dfachat.spec import LIMITS, SUPPORTED_VERSIONS, ErrorCode, ListFlags, Outcome

SRC = Path(__file__).resolve().parents[3] / "src" / "dfachat"
ACCOUNTS = [Account("Liz", "pw1"), Account("Steve", "pw2"), Account("Bailey", "pw3")]


class _Pairs:
    """A target whose connections are socket pairs that nobody answers."""

    tls = None

    def __init__(self) -> None:
        self.peers: list[socket.socket] = []

    def connect(self) -> socket.socket:
        ours, theirs = socket.socketpair()
        self.peers.append(theirs)
        return ours


@pytest.fixture
def driver() -> Iterator[Driver]:
    target = _Pairs()
    driver = Driver(target, ACCOUNTS, verdicts=Verdicts("server"))  # type: ignore[arg-type]
    yield driver
    driver.close()
    for peer in target.peers:
        peer.close()


def _say(driver: Driver, conn: Conn, *messages: Message) -> None:
    """``conn`` sends ``messages``: to the oracle only."""
    driver._feed(conn, b"".join(conn.judge.send(m) for m in messages))


def _arrive(conn: Conn, message: Message) -> None:
    """The judge sees ``message`` from the target (so our side may go on)."""
    # HELLO_OK travels in the version it chooses, every later frame in the session's (R5.2)
    version = message.version if message.NAME == "HELLO_OK" else conn.judge.version or 1
    conn.judge.receive_data(encode(message, conn.judge.encoding, version))


def _kinds(conn: Conn) -> list[tuple[str, str]]:
    return [(e.kind, e.check) for e in conn.expects]


def _take(conn: Conn, kind: str) -> Expect:
    expect = next(e for e in conn.expects if e.kind == kind)
    conn.expects.remove(expect)
    return expect


def _greeted(driver: Driver, encoding: str = "utf-8") -> Conn:
    conn = driver.conns[driver.open_conn()]
    _say(driver, conn, HELLO(versions=driver.versions, encoding=encoding, software="test"))
    hello_ok = _take(conn, "HELLO_OK")
    assert hello_ok.check == "R5.4" and not conn.expects
    _arrive(conn, HELLO_OK(version=max(driver.versions), max_frame=LIMITS.max_frame, max_text=LIMITS.max_text,
                           idle_timeout_s=LIMITS.idle_timeout_s, max_recipients=LIMITS.max_recipients,
                           login_attempts=LIMITS.login_attempts, encoding=encoding, software="target"))
    return conn


def _logged_in(driver: Driver, name: str, password: str, encoding: str = "utf-8") -> Conn:
    conn = _greeted(driver, encoding)
    _say(driver, conn, USER(name=name), PASS(password=password))
    _arrive(conn, AUTH_OK(flags=ListFlags(0), name=name, online=()))
    return conn


def test_no_server_handler_is_restated() -> None:
    """One ``on_MSG`` in the project, the core's; the oracle has no handlers and routes nothing."""
    defs = [p for p in SRC.rglob("*.py") if re.search(r"^\s*def on_MSG\b", p.read_text(encoding="utf-8"), re.M)]
    assert [p.relative_to(SRC).as_posix() for p in defs] == ["server/core.py"]
    oracle = (SRC / "conformance" / "fuzz" / "oracle.py").read_text(encoding="utf-8")
    assert not re.search(r"def _on_[A-Z]", oracle)
    assert "routing" not in oracle and "route(" not in oracle


def test_login_presence_routing_and_storage_are_the_cores(driver: Driver) -> None:
    liz = _logged_in(driver, "liz", "pw1")  # any case (R4.1): the registered spelling comes back
    auth = _take(liz, "AUTH_OK")
    assert (auth.check, auth.what) == ("R6.5", "AUTH_OK Liz") and auth.verify is not None
    assert auth.verify(AUTH_OK(flags=ListFlags(0), name="Liz", online=("Liz",))) == []
    assert [c for c, _ in auth.verify(AUTH_OK(flags=ListFlags(0), name="liz", online=("Liz", "Steve")))] == [
        "R6.5", "R6.5/registered-name"]

    steve = _logged_in(driver, "Steve", "pw2", "latin-1")
    assert [(e.kind, e.key) for e in liz.expects] == [("JOINED", "steve")]
    liz.expects.clear()
    steve.expects.clear()

    # Directed: Steve is online (latin-1: the cup is replaced, LOSSY), Bailey is offline (stored).
    _say(driver, liz, MSG(msg_id=7, recipients=("steve", "Bailey"), text="tea \u2615"))
    deliver = _take(steve, "DELIVER")
    ack = _take(liz, "MSG_ACK")
    assert (deliver.check, ack.check, ack.what) == ("R7.1", "R7.3", "MSG_ACK 7")
    assert [key for key, _ in driver.store.stored] == ["bailey"]
    right = MSG_ACK(msg_id=7, server_msg_id=90, delivered=1, lossy=1, results=(
        RecipientResult(name="steve", outcome=Outcome.LOSSY), RecipientResult(name="Bailey", outcome=Outcome.QUEUED)))
    assert ack.verify is not None and ack.verify(right) == []
    assert deliver.key["server_msg_id"] == 90  # the target's own id, from its MSG_ACK (R7.5)
    wrong = right.replace(msg_id=8, server_msg_id=91, results=(
        RecipientResult(name="steve", outcome=Outcome.DELIVERED), RecipientResult(name="Bailey", outcome=Outcome.QUEUED)))
    assert sorted(c for c, _ in ack.verify(wrong)) == ["R7.3/msg-id", "R7.4/outcome"]

    # Bailey logs in: AUTH_OK, then what was stored (R7.7), in that order; the store is empty.
    bailey = _logged_in(driver, "Bailey", "pw3")
    assert _kinds(bailey) == [("AUTH_OK", "R6.5"), ("DELIVER", "R7.7")]
    assert [e.order > 0 for e in bailey.expects] == [True, True]
    assert not driver.store.stored
    liz.expects.clear()
    steve.expects.clear()
    bailey.expects.clear()

    # Steve drops: the others see LEFT DROPPED; someone saw it, so nothing is fuzzy.
    driver._close(steve)
    assert [e.what for e in liz.expects] == ["LEFT Steve DROPPED"] == [e.what for e in bailey.expects]
    assert not driver.fuzzy


def test_wrong_logins_back_off_and_the_last_one_closes(driver: Driver) -> None:
    conn = _greeted(driver)
    _say(driver, conn, USER(name="Nobody"), PASS(password="guess"))
    failed = _take(conn, "AUTH_FAILED")
    assert (failed.check, failed.what, failed.not_before_check) == (
        "R6.2/unknown-user", "AUTH_FAILED attempts_left=2", "R6.4")
    assert failed.not_before > 0 and failed.verify is not None
    assert failed.verify(AUTH_FAILED(attempts_left=2)) == []
    assert [c for c, _ in failed.verify(AUTH_FAILED(attempts_left=1))] == ["R6.3"]
    for left in (1, 0):
        _arrive(conn, AUTH_FAILED(attempts_left=left + 1))
        _say(driver, conn, USER(name="Liz"), PASS(password="wrong"))
    assert [(e.kind, e.check, e.what) for e in conn.expects] == [
        ("AUTH_FAILED", "R6.2", "AUTH_FAILED attempts_left=1"),
        ("AUTH_FAILED", "R6.2", "AUTH_FAILED attempts_left=0"),
        ("CLOSE", "R6.3", "close after the last AUTH_FAILED"),
    ]


def test_an_unobserved_drop_is_fuzzy_and_quit_is_answered(driver: Driver) -> None:
    liz = _logged_in(driver, "Liz", "pw1")
    liz.expects.clear()
    driver._close(liz)  # nobody online saw it: Liz may still be online at the target for a while
    assert driver.fuzzy == {"liz"} == driver.were_fuzzy
    steve = _logged_in(driver, "Steve", "pw2")
    auth = _take(steve, "AUTH_OK")
    assert auth.verify is not None
    assert auth.verify(AUTH_OK(flags=ListFlags(0), name="Steve", online=("Liz", "Steve"))) == []  # tolerated
    _say(driver, steve, QUIT())
    assert _kinds(steve) == [("BYE", "R10.2"), ("CLOSE", "R10.2/close")]


def test_the_engine_decides_the_answer_to_an_illegal_frame(driver: Driver) -> None:
    conn = _logged_in(driver, "Liz", "pw1")
    conn.expects.clear()
    driver._feed(conn, encode(HELLO(versions=SUPPORTED_VERSIONS, encoding="utf-8", software="again")))
    (error,) = conn.expects
    assert (error.kind, error.check, error.what) == ("ERROR", "R11.3", "ERROR UNEXPECTED_MESSAGE (non-fatal)")
    assert conn.server_state == "ESTABLISHED"


def test_a_hello_wrong_twice_allows_either_error(driver: Driver) -> None:
    conn = driver.conns[driver.open_conn()]
    driver._feed(conn, encode(HELLO(versions=(max(SUPPORTED_VERSIONS) + 1,), encoding="koi8-r", software="x")))
    assert [(e.kind, e.check, e.what) for e in conn.expects] == [
        ("ERROR", "R5.2", f"fatal ERROR {ErrorCode.UNSUPPORTED_VERSION.name} or {ErrorCode.UNSUPPORTED_ENCODING.name}"),
        ("CLOSE", "R10.4", "close after the fatal ERROR"),
    ]
