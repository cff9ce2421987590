"""Version 2's delivery in the client library (R7.10-R7.16): acknowledgement, duplicates, windows.

Against the real server on 127.0.0.1 (a fresh SQLite file per test): crashes at
any point lose nothing and repeat nothing at application level, explicit and
automatic acknowledgement, version 1 still spoken. Against a server the test
plays (:class:`ScriptedServer`, the real server *engine* on a socket, so every
frame the client sends is held to the spec's table): exactly which DELIVER_ACKs
go out, duplicates dropped, MSGs pipelined and their answers matched by order.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dfachat.client import (
    Chat,
    Closed,
    Delivery,
    MessageRejected,
    TakenRecord,
    open_chat,
    taken_path_for,
)
from dfachat.client.library import state_dir
from dfachat.codec.messages import (  # type: ignore[attr-defined]
    AUTH_OK,
    DELIVER,
    DELIVER_ACK,
    HELLO,
    HELLO_OK,
    MSG,
    MSG_ACK,
    PASS,
    USER,
    RecipientResult,
)
from dfachat.fsm import ProtocolViolation, ServerSession
from dfachat.fsm.session import make_error
from dfachat.server import DEMO_ACCOUNTS, ChatServer, KdfParams, ServerConfig, Store
from dfachat.spec import (
    LIMITS,
    SUPPORTED_VERSIONS,
    DeliverFlags,
    ErrorCode,
    Limits,
    ListFlags,
    Outcome,
)

PASSWORDS = dict(DEMO_ACCOUNTS)
TIMEOUT = 10.0
# Hypothesis runs several sessions per example against a server of the example's own.
EXAMPLES = settings(max_examples=20, suppress_health_check=[HealthCheck.function_scoped_fixture])


# --- a real server ------------------------------------------------------------------------


@asynccontextmanager
async def serving(db: Path, **limits: int) -> AsyncIterator[ChatServer]:
    """A real server with the demo accounts on 127.0.0.1 (ephemeral port)."""
    store = Store(db, kdf=KdfParams(n=1024))
    store.ensure_users(DEMO_ACCOUNTS)
    server = ChatServer(store, ServerConfig(port=0, limits=Limits(backoff_base_ms=5, **limits)))
    await server.start()
    try:
        yield server
    finally:
        if not server.stopped.is_set():
            await server.shutdown()


def run(coro: Awaitable[None], timeout: float = 60) -> None:
    async def main() -> None:
        async with asyncio.timeout(timeout):
            await coro

    asyncio.run(main())


async def log_in(port: int, user: str, **options: Any) -> Chat:
    return await open_chat("127.0.0.1", port, user=user, password=PASSWORDS[user], timeout=TIMEOUT, **options)


async def send_all(chat: Chat, texts: list[str], to: tuple[str, ...]) -> list[Any]:
    """Every text sent, pipelined (R7.16); their MSG_ACKs, in order."""
    answers = [await chat.submit(text, to=to) for text in texts]
    return [await answer for answer in answers]


async def take(chat: Chat, n: int, timeout: float = TIMEOUT) -> list[Delivery]:
    """The application handles ``n`` deliveries, each taken when it asks for the next event.

    After the n-th it asks once more (taking the n-th); whatever that hands out it
    never handles: the process dies first (the caller aborts).
    """
    got: list[Delivery] = []
    async with asyncio.timeout(timeout):
        while len(got) < n:
            event = chat.next_event_nowait()
            if event is None:
                await asyncio.sleep(0.002)
            elif isinstance(event, Delivery):
                got.append(event)
            elif isinstance(event, Closed):
                raise AssertionError(f"the session ended after {len(got)} of {n}: {event.error}")
    chat.next_event_nowait()
    return got


async def quiet(chat: Chat, seconds: float = 0.3) -> list[Delivery]:
    """The deliveries that arrive within ``seconds`` (taking each)."""
    await asyncio.sleep(seconds)
    events = []
    while (event := chat.next_event_nowait()) is not None:
        if isinstance(event, Delivery):
            events.append(event)
    return events


async def acknowledged(chat: Chat, msg_id: int) -> None:
    """Until the DELIVER_ACK covering ``msg_id`` was written and the server has read it
    (a PING answered: the server handles a session's frames in order)."""
    async with asyncio.timeout(TIMEOUT):
        while any(i <= msg_id for i in chat.session.unacknowledged):
            await asyncio.sleep(0.005)
    await chat.ping()


# --- crashes: nothing lost, nothing twice --------------------------------------------------


@pytest.mark.parametrize("record", ["memory", "file"])
def test_three_of_forty_taken_then_a_crash_leaves_exactly_the_other_37(tmp_path: Path, record: str) -> None:
    """Issue 14's measurement: 37 of 40 were gone. A window of 8 makes the 40 come in five turns."""

    async def scenario() -> None:
        async with serving(tmp_path / "chat.db", deliver_window=8) as server:
            steve = await log_in(server.port, "Steve")
            texts = [f"stored {i}" for i in range(40)]
            acks = await send_all(steve, texts, ("Liz",))
            assert all(a.outcomes == {"Liz": Outcome.QUEUED} for a in acks)
            taken = TakenRecord(tmp_path / "liz.taken" if record == "file" else None)

            liz = await log_in(server.port, "Liz", taken=taken)
            assert liz.version == 2 and liz.limits["deliver_window"] == 8
            first = await take(liz, 3)
            await liz.abort()  # before any DELIVER_ACK, most likely: the record stops the repeats
            assert [d.text for d in first] == texts[:3] and all(d.stored for d in first)

            if record == "file":  # what survives the process: the file, read afresh
                taken = TakenRecord(tmp_path / "liz.taken")
                assert taken.highest == first[-1].server_msg_id
                assert stat.S_IMODE((tmp_path / "liz.taken").stat().st_mode) == 0o600
            liz = await log_in(server.port, "Liz", taken=taken)
            rest = await take(liz, 37)
            assert [d.text for d in rest] == texts[3:]
            assert await quiet(liz) == []
            await liz.quit()  # acknowledges what was taken before QUIT

            liz = await log_in(server.port, "Liz")  # no record: the server itself has nothing left
            assert await quiet(liz) == []
            await liz.quit()
            await steve.quit()

    run(scenario())


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from dfachat.client import Delivery, open_chat

    async def main():
        port, path = int(sys.argv[1]), sys.argv[2]
        chat = await open_chat("127.0.0.1", port, user="Liz", password="pw1", taken=path)
        seen = 0
        async for event in chat.events():  # asking for the next takes the one before
            if isinstance(event, Delivery):
                if seen == 3:
                    break  # handed out, never handled: the process is killed first
                print(event.server_msg_id, event.text, flush=True)
                seen += 1
        print("taken", flush=True)
        await asyncio.sleep(60)

    asyncio.run(main())
    """
)


def test_a_process_killed_with_sigkill_repeats_nothing_with_its_taken_file(tmp_path: Path) -> None:
    path = tmp_path / "state" / "liz.taken"

    async def scenario() -> None:
        async with serving(tmp_path / "chat.db") as server:
            steve = await log_in(server.port, "Steve")
            texts = [f"message {i}" for i in range(40)]
            await send_all(steve, texts, ("Liz",))
            child = await asyncio.create_subprocess_exec(
                sys.executable, "-c", CHILD, str(server.port), str(path), stdout=subprocess.PIPE
            )
            assert child.stdout is not None
            lines = []
            async with asyncio.timeout(TIMEOUT):
                while (line := (await child.stdout.readline()).decode().strip()) != "taken":
                    assert line, f"the child ended early: {lines}"
                    lines.append(line)
            child.send_signal(signal.SIGKILL)
            await child.wait()
            assert [line.split(" ", 1)[1] for line in lines] == texts[:3]

            liz = await log_in(server.port, "Liz", taken=path)
            rest = await take(liz, 37)
            assert [d.text for d in rest] == texts[3:]  # the other 37, and none of the 3 again
            assert await quiet(liz) == []
            await liz.quit()
            await steve.quit()

    run(scenario())


def test_the_server_forgets_exactly_what_was_acknowledged(tmp_path: Path) -> None:
    """Without any record on the client: what comes again is what was not acknowledged,
    flagged REDELIVERED (live messages) -- the 4th, handed out but never taken, included."""

    async def scenario() -> None:
        async with serving(tmp_path / "chat.db") as server:
            liz = await log_in(server.port, "Liz")
            steve = await log_in(server.port, "Steve")
            texts = [f"live {i}" for i in range(10)]
            await send_all(steve, texts, ("Liz",))
            first = await take(liz, 3)
            assert not any(d.stored or d.redelivered for d in first)
            await acknowledged(liz, first[-1].server_msg_id)
            await liz.abort()

            liz = await log_in(server.port, "Liz")  # a fresh in-memory record
            rest = await take(liz, 7)
            assert [d.text for d in rest] == texts[3:]
            assert all(d.redelivered and not d.stored for d in rest)
            await liz.quit()
            await steve.quit()

    run(scenario())


def test_explicit_acknowledgement(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path / "chat.db") as server:
            liz = await log_in(server.port, "Liz", auto_ack=False)
            steve = await log_in(server.port, "Steve")
            texts = [f"later {i}" for i in range(5)]
            await send_all(steve, texts, ("Liz",))
            assert [d.text for d in await take(liz, 5)] == texts  # handed out, none acknowledged
            await liz.ping()
            assert len(liz.session.unacknowledged) == 5
            await liz.abort()

            liz = await log_in(server.port, "Liz", auto_ack=False)
            again = await take(liz, 5)
            assert [d.text for d in again] == texts and all(d.redelivered for d in again)
            liz.acknowledge(again[2])  # this and every earlier one (R7.10)
            await acknowledged(liz, again[2].server_msg_id)
            assert list(liz.session.unacknowledged) == [d.server_msg_id for d in again[3:]]
            await liz.abort()

            liz = await log_in(server.port, "Liz")
            assert [d.text for d in await take(liz, 2)] == texts[3:]
            await liz.quit()
            liz = await log_in(server.port, "Liz")
            assert await quiet(liz) == []
            await liz.quit()
            await steve.quit()

    run(scenario())


@EXAMPLES
@given(
    count=st.integers(1, 24),
    crashes=st.lists(st.tuples(st.integers(0, 12), st.booleans()), max_size=4),
    window=st.sampled_from([1, 3, 64]),
)
def test_any_crash_points_hand_each_message_on_exactly_once(
    tmp_path_factory: pytest.TempPathFactory, count: int, crashes: list[tuple[int, bool]], window: int
) -> None:
    """Sessions that take some messages and crash, before or after their DELIVER_ACK went, then
    one that takes the rest: the application has every message once, in order (a taken file)."""
    where = tmp_path_factory.mktemp("crash")

    async def scenario() -> None:
        async with serving(where / "chat.db", deliver_window=window) as server:
            steve = await log_in(server.port, "Steve")
            texts = [f"m{i}" for i in range(count)]
            await send_all(steve, texts, ("Liz",))
            had: list[str] = []
            for wanted, wait_for_ack in crashes:
                liz = await log_in(server.port, "Liz", taken=where / "taken")
                got = await take(liz, min(wanted, count - len(had)))
                had += [d.text for d in got]
                if got and wait_for_ack:
                    await acknowledged(liz, got[-1].server_msg_id)
                await liz.abort()
            liz = await log_in(server.port, "Liz", taken=where / "taken")
            had += [d.text for d in await take(liz, count - len(had))]
            assert had == texts
            assert await quiet(liz, 0.1) == []
            await liz.quit()
            await steve.quit()

    run(scenario())


# --- windows and words ---------------------------------------------------------------------


@EXAMPLES
@given(texts=st.lists(st.text(st.characters(blacklist_categories=("Cs",)), max_size=40), min_size=1, max_size=30))
def test_pipelined_messages_keep_their_order(tmp_path_factory: pytest.TempPathFactory, texts: list[str]) -> None:
    """Up to msg_window MSGs in flight (R7.16), never more; answers matched by order."""
    where = tmp_path_factory.mktemp("window")

    async def scenario() -> None:
        async with serving(where / "chat.db", msg_window=3) as server:
            bailey = await log_in(server.port, "Bailey")
            steve = await log_in(server.port, "Steve")
            answers = []
            for text in texts:
                answers.append(await steve.submit(text, to=["Bailey"]))
                assert steve.session.outstanding <= 3
            acks = [await answer for answer in answers]
            assert [a.msg_id for a in acks] == sorted(a.msg_id for a in acks)  # in the order sent
            assert [a.server_msg_id for a in acks] == sorted({a.server_msg_id for a in acks})
            assert [d.text for d in await take(bailey, len(texts))] == texts
            await bailey.quit()
            await steve.quit()

    run(scenario())


def test_a_full_inbox_is_an_outcome(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path / "chat.db", max_inbox_messages=2) as server:
            steve = await log_in(server.port, "Steve")
            acks = await send_all(steve, ["one", "two", "three"], ("Bailey", "Liz"))
            assert [a.outcomes["Bailey"] for a in acks] == [Outcome.QUEUED, Outcome.QUEUED, Outcome.OVER_QUOTA]
            assert acks[2].problems == {"Bailey": Outcome.OVER_QUOTA, "Liz": Outcome.OVER_QUOTA}
            await steve.quit()
            old = await log_in(server.port, "Steve", versions=(1,))  # version 1 has no OVER_QUOTA
            assert (await old.send("four", to=["Bailey"])).outcomes == {"Bailey": Outcome.UNKNOWN_USER}
            await old.quit()

    run(scenario())


def test_version_1_on_request(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path / "chat.db") as server:
            liz = await log_in(server.port, "Liz", versions=(1,))
            assert liz.version == 1 and "deliver_window" not in liz.limits and "msg_window" not in liz.limits
            steve = await log_in(server.port, "Steve")  # version 2, mixed with version 1
            assert steve.version == 2
            acks = await send_all(liz, ["a", "b", "c"], ("Steve", "Bailey"))  # one at a time (R7.2)
            assert [a.outcomes for a in acks] == [{"Steve": Outcome.DELIVERED, "Bailey": Outcome.QUEUED}] * 3
            assert [d.text for d in await take(steve, 3)] == ["a", "b", "c"]
            await steve.send("to you", to=["Liz"])
            got = await take(liz, 1)
            assert got[0].text == "to you" and not got[0].redelivered
            assert sorted(await liz.who()) == ["Liz", "Steve"]
            await liz.quit()

            bailey = await log_in(server.port, "Bailey", versions=(1,))
            assert [(d.text, d.stored) for d in await take(bailey, 3)] == [("a", True), ("b", True), ("c", True)]
            await bailey.quit()
            bailey = await log_in(server.port, "Bailey", versions=(1,))  # version 1 forgot them (R7.7)
            assert await quiet(bailey) == []
            await bailey.quit()
            await steve.quit()

    run(scenario())


def test_versions_the_client_does_not_speak_are_refused_before_connecting() -> None:
    async def scenario() -> None:
        with pytest.raises(Exception, match="speaks protocol versions 1, 2, not 3"):
            await open_chat("127.0.0.1", 1, user="Liz", password="pw1", versions=(3,))

    run(scenario())


# --- a server the test plays ------------------------------------------------------------------


class ScriptedServer:
    """The server's side played by the test, through the real server engine: a frame the client
    sends that the spec's table refuses (an unknown DELIVER_ACK id, a MSG beyond the window)
    is a :class:`ProtocolViolation` the test sees in ``violations``."""

    def __init__(self, *, deliver_window: int = 8, msg_window: int = 4) -> None:
        self.deliver_window, self.msg_window = deliver_window, msg_window
        self.received: asyncio.Queue[Any] = asyncio.Queue()
        self.violations: list[ProtocolViolation] = []
        self.session = ServerSession()
        self.writer: asyncio.StreamWriter | None = None
        self.on_ack: Callable[[Any], None] = lambda ack: None

    async def __aenter__(self) -> ScriptedServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        if self.writer is not None:
            self.writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer, user = writer, "Liz"
        while data := await reader.read(65536):
            for event in self.session.receive_data(data):
                if isinstance(event, ProtocolViolation):
                    self.violations.append(event)
                elif isinstance(event, HELLO):
                    version = max(set(event.versions) & set(SUPPORTED_VERSIONS))
                    self.send(HELLO_OK(
                        version=version, max_frame=LIMITS.max_frame, max_text=LIMITS.max_text,
                        idle_timeout_s=LIMITS.idle_timeout_s, max_recipients=LIMITS.max_recipients,
                        login_attempts=LIMITS.login_attempts, encoding=event.encoding, software="scripted",
                        deliver_window=self.deliver_window, msg_window=self.msg_window,
                    ))  # fmt: skip
                elif isinstance(event, USER):
                    user = event.name
                elif isinstance(event, PASS):
                    self.send(AUTH_OK(flags=ListFlags(0), name=user, online=(user,)))
                else:
                    if isinstance(event, DELIVER_ACK):
                        self.on_ack(event)
                    self.received.put_nowait((time.monotonic(), event))

    def send(self, message: Any) -> None:
        assert self.writer is not None
        self.writer.write(self.session.send(message))

    def deliver(self, msg_id: int, text: str = "", flags: int = 0) -> None:
        self.send(DELIVER(server_msg_id=msg_id, timestamp_ms=0, flags=flags, sender="Steve", text=text or f"m{msg_id}"))

    async def next(self, timeout: float = 2.0) -> Any:
        """The next frame the client sent (after the login), or None when none comes in time."""
        try:
            async with asyncio.timeout(timeout):
                return (await self.received.get())[1]
        except TimeoutError:
            return None


@EXAMPLES
@given(
    gaps=st.lists(st.integers(1, 1000), min_size=1, max_size=20),
    record=st.integers(0, 25),
    takes=st.lists(st.integers(0, 20), max_size=5),
)
def test_only_taken_messages_are_acknowledged_and_taken_ones_never_come_twice(
    gaps: list[int], record: int, takes: list[int]
) -> None:
    """The server sends DELIVERs of increasing ids, the earlier ones REDELIVERED (a session
    before took some of them: ``record`` of them); the application takes some in turns. The
    client hands on only ids above the record, acknowledges nothing it did not take or drop,
    and everything it took or dropped within a second."""
    ids = list(itertools.accumulate(gaps))
    highest_taken = ids[min(record, len(ids)) - 1] if record else 0

    async def scenario() -> None:
        async with ScriptedServer(deliver_window=len(ids)) as server:
            taken = TakenRecord()
            taken.take(highest_taken)
            chat = await open_chat("127.0.0.1", server.port, user="Liz", password="pw1", timeout=TIMEOUT, taken=taken)
            for msg_id in ids:
                server.deliver(msg_id, flags=DeliverFlags.REDELIVERED if msg_id <= highest_taken else DeliverFlags(0))
            fresh = [i for i in ids if i > highest_taken]
            handed: list[int] = []
            newest_untaken = False  # the last ask handed out a delivery: taken at the next ask
            acked = 0

            def ask() -> None:
                nonlocal newest_untaken
                event = chat.next_event_nowait()
                newest_untaken = isinstance(event, Delivery)
                if isinstance(event, Delivery):
                    handed.append(event.server_msg_id)

            for wanted in [*takes, len(fresh)]:
                target = min(len(fresh), len(handed) + wanted)
                async with asyncio.timeout(TIMEOUT):
                    while len(handed) < target:
                        ask()
                        await asyncio.sleep(0 if newest_untaken else 0.002)
                ask()  # the application is done with the last one and asks for more
                taken_ids = handed[:-1] if newest_untaken else handed
                limit = max([highest_taken, *taken_ids[-1:]])
                while acked < limit:  # within a second of the taking (R7.11)
                    frame = await server.next(1.0)
                    assert frame is not None, f"taken up to {limit}, acknowledged up to {acked} after 1 s"
                    assert isinstance(frame, DELIVER_ACK) and frame.server_msg_id <= limit, frame
                    acked = frame.server_msg_id
            assert handed == fresh  # every fresh one, once, in order; no dropped one handed on
            assert server.violations == []
            await chat.abort()

    run(scenario(), timeout=120)


def test_the_taken_file_is_written_before_the_acknowledgement(tmp_path: Path) -> None:
    path = tmp_path / "dir" / "liz"

    async def scenario() -> None:
        async with ScriptedServer() as server:
            seen_in_file: list[tuple[int, str]] = []
            server.on_ack = lambda ack: seen_in_file.append((ack.server_msg_id, path.read_text()))
            chat = await open_chat("127.0.0.1", server.port, user="Liz", password="pw1", taken=path)
            for msg_id in (5, 6, 9):
                server.deliver(msg_id)
            await take(chat, 3)
            while (frame := await server.next()) is not None and frame.server_msg_id < 9:
                pass
            assert seen_in_file and all(int(text) >= acked for acked, text in seen_in_file)
            assert path.read_text() == "9\n" and stat.S_IMODE(path.stat().st_mode) == 0o600
            await chat.abort()

    run(scenario())


def test_pipelined_answers_are_matched_by_order_and_store_failed_is_a_sentence() -> None:
    async def scenario() -> None:
        async with ScriptedServer(msg_window=4) as server:
            chat = await open_chat("127.0.0.1", server.port, user="Liz", password="pw1")
            answers = [await chat.submit(f"t{i}", to=["Steve"]) for i in range(4)]
            waiting = asyncio.ensure_future(chat.submit("t4", to=["Steve"]))  # beyond the window: waits
            sent = [await server.next() for _ in range(4)]
            assert [m.text for m in sent] == ["t0", "t1", "t2", "t3"] and await server.next(0.3) is None
            assert not waiting.done() and chat.session.outstanding == 4

            def ack(msg: Any) -> Any:
                return MSG_ACK(msg_id=msg.msg_id, server_msg_id=msg.msg_id + 100, delivered=1, lossy=0,
                               results=(RecipientResult(name="Steve", outcome=Outcome.DELIVERED),))

            server.send(ack(sent[0]))
            fifth = await server.next()  # room in the window: the 5th goes
            assert isinstance(fifth, MSG) and fifth.text == "t4"
            answers.append(await waiting)
            detail = "the disk is full"
            server.send(make_error(ErrorCode.STORE_FAILED, detail, regarding=MSG.TYPE))
            for msg in (*sent[2:], fifth):
                server.send(ack(msg))
            assert (await answers[0]).server_msg_id == sent[0].msg_id + 100
            with pytest.raises(MessageRejected) as refused:
                await answers[1]
            assert str(refused.value).startswith(
                "the server could not store your message; nobody received it; you can send it again"
            )
            assert refused.value.code_name == "STORE_FAILED"
            assert [(await a).msg_id for a in answers[2:]] == [m.msg_id for m in (*sent[2:], fifth)]
            assert server.violations == [] and chat.ended is None
            await chat.abort()

    run(scenario())


def test_version_1_sends_one_msg_at_a_time_and_no_acknowledgements() -> None:
    async def scenario() -> None:
        async with ScriptedServer() as server:
            chat = await open_chat("127.0.0.1", server.port, user="Liz", password="pw1", versions=(1,))
            assert chat.version == 1
            server.deliver(1)
            server.deliver(2)
            assert [d.server_msg_id for d in await take(chat, 2)] == [1, 2]
            first = await chat.submit("a")
            second = asyncio.ensure_future(chat.submit("b"))
            msg = await server.next()
            assert isinstance(msg, MSG) and msg.text == "a" and await server.next(0.3) is None  # no ack, no 2nd
            server.send(MSG_ACK(msg_id=msg.msg_id, server_msg_id=1, delivered=0, lossy=0, results=()))
            assert (await first).msg_id == msg.msg_id
            assert (await server.next()).text == "b"
            await second
            assert server.violations == []
            await chat.abort()

    run(scenario())


# --- where the reference clients keep the record -------------------------------------------------


def test_taken_path_lives_in_the_state_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    path = taken_path_for("Chat.Example", 33318, "Liz")
    assert path.parent == tmp_path / "xdg" / "dfachat" / "taken"
    assert path == taken_path_for("chat.example", 33318, "LIZ")  # names are case-insensitive (R4.1)
    for directory in (path.parent, path.parent.parent):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert state_dir() == tmp_path / "home" / ".local" / "state" / "dfachat"


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    a=st.tuples(st.text(min_size=1, max_size=12), st.integers(1, 65535), st.from_regex(r"[A-Za-z][A-Za-z0-9_.-]{0,8}", fullmatch=True)),
    b=st.tuples(st.text(min_size=1, max_size=12), st.integers(1, 65535), st.from_regex(r"[A-Za-z][A-Za-z0-9_.-]{0,8}", fullmatch=True)),
)
def test_each_server_and_account_has_a_file_of_its_own(
    tmp_path: Path, a: tuple[str, int, str], b: tuple[str, int, str]
) -> None:
    os.environ["XDG_STATE_HOME"] = str(tmp_path)  # the autouse fixture restores it
    same = (a[0].lower(), a[1], a[2].casefold()) == (b[0].lower(), b[1], b[2].casefold())
    path = taken_path_for(*a)
    assert (path == taken_path_for(*b)) == same
    assert path.parent == tmp_path / "dfachat" / "taken" and "/" not in path.name and path.name[0] != "."


def test_a_taken_record_survives_bad_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "garbage").write_text("not a number")
    assert TakenRecord(tmp_path / "garbage").highest == 0
    assert "may be shown again" in caplog.text
    blocked = tmp_path / "file"
    blocked.write_text("")
    record = TakenRecord(blocked / "taken")  # its directory is a file: nothing can be written
    record.take(7)
    record.sync()
    assert record.highest == 7  # still dropped in this process
    record.take(3)
    assert record.highest == 7


def test_ids_that_start_again_are_dropped_and_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A server whose ids started again (a new database: R7.3 broken) sends a new message at an
    id already taken: dropped as R7.11 says, acknowledged, and the log says what to do."""
    path = tmp_path / "taken"
    TakenRecord(path).take(50)

    async def scenario() -> None:
        async with ScriptedServer() as server:
            chat = await open_chat("127.0.0.1", server.port, user="Liz", password="pw1", taken=path)
            server.deliver(3)
            server.deliver(51)
            frame = await server.next()
            assert isinstance(frame, DELIVER_ACK) and frame.server_msg_id == 3
            assert [d.server_msg_id for d in await take(chat, 1)] == [51]
            await chat.abort()

    run(scenario())
    assert "seem to have started again" in caplog.text and str(path) in caplog.text
