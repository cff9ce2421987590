"""``dfachat client``: the pure parser and formatters, then the real program against a real server.

The program runs as a subprocess (``python -m dfachat client``): piped, with
standard input and output as pipes, and interactive, in a pseudo-terminal
driven by pexpect as a person would type. Steve is a library client
(``chat_user`` in conftest.py). Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pexpect
import pytest

from dfachat.client import (
    Closed,
    Delivery,
    Joined,
    Left,
    Notice,
    SendResult,
    TakenRecord,
    taken_path_for,
)
from dfachat.client.terminal import (
    Help,
    Invalid,
    Quit,
    Say,
    Who,
    event_json,
    format_event,
    format_own,
    format_result,
    normalize_encoding,
    parse_command,
    result_json,
)
from dfachat.errors import SessionEnded
from dfachat.spec import SUPPORTED_VERSIONS, ErrorCode, LeftReason, Outcome

TIMEOUT = 10.0
NOW = datetime(2025, 3, 14, 9, 26, tzinfo=UTC)


# --- the command parser ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("hello there\n", Say("hello there")),
        ("  indented stays indented  ", Say("  indented stays indented  ")),
        ("", None),
        ("   \r\n", None),
        ("/to Steve hi", Say("hi", to=("Steve",))),
        ("/to Steve,Bailey  hi  there", Say("hi  there", to=("Steve", "Bailey"))),
        ("/to Steve, Bailey ,Liz hi", Say("hi", to=("Steve", "Bailey", "Liz"))),
        ("/TO Steve,Steve hi", Say("hi", to=("Steve",))),
        ("/to Steve", Invalid("usage: /to NAME[,NAME...] TEXT")),
        ("/to Steve   ", Invalid("usage: /to NAME[,NAME...] TEXT")),
        ("/to", Invalid("usage: /to NAME[,NAME...] TEXT")),
        ("/who", Who()),
        ("/Who ", Who()),
        ("/help", Help()),
        ("/?", Help()),
        ("/quit", Quit()),
        ("/exit", Quit()),
        ("//who", Say("/who")),
        ("/tofu x", Invalid("unknown command /tofu; /help lists the commands")),
        ("/ nothing", Invalid("unknown command /; /help lists the commands")),
    ],
)
def test_parse_command(line: str, command: object) -> None:
    assert parse_command(line) == command


@pytest.mark.parametrize(
    ("answer", "name"),
    [
        ("", "utf-8"),
        ("utf8", "utf-8"),
        ("UTF-8", "utf-8"),
        (" latin1 ", "latin-1"),
        ("ISO-8859-1", "latin-1"),
        ("utf16", "utf-16"),
        ("UTF-16BE", "utf-16"),
        ("utf_32", "utf-32"),
        ("US-ASCII", "ascii"),
        ("windows-1252", "cp1252"),
        ("koi8-r", None),  # a Python codec, but not a dfachat encoding
        ("klingon", None),
    ],
)
def test_normalize_encoding(answer: str, name: str | None) -> None:
    assert normalize_encoding(answer) == name


# --- the formatters --------------------------------------------------------------------------


def delivery(text: str = "hi", **flags: Any) -> Delivery:
    options = {"directed": False, "lossy": False, "stored": False, "time": NOW, **flags}
    return Delivery(server_msg_id=7, sender="Steve", text=text, **options)


@pytest.mark.parametrize(
    ("event", "line"),
    [
        (delivery(), "09:26 Steve: hi"),
        (delivery(directed=True), "09:26 Steve [to you]: hi"),
        (
            delivery("caf?", lossy=True),
            "09:26 Steve: caf?  (?: some characters could not be shown in latin-1)",
        ),
        (
            delivery(stored=True, time=NOW - timedelta(minutes=5)),
            "09:21 Steve [while you were away]: hi",
        ),
        (
            delivery(stored=True, time=NOW - timedelta(days=1)),
            "2025-03-13 09:26 Steve [while you were away]: hi",
        ),
        (delivery("two\nlines"), "09:26 Steve: two\n    lines"),
        (delivery("\x1b[2Jbell\x07\ttab"), "09:26 Steve: \\x1b[2Jbell\\x07\ttab"),
        (Joined("Steve"), "09:26 * Steve joined"),
        (Left("Steve", LeftReason.QUIT), "09:26 * Steve left (quit)"),
        (Left("Steve", LeftReason.TIMEOUT), "09:26 * Steve left (timed out)"),
        (Left("Steve", LeftReason.REPLACED), "09:26 * Steve left (logged in elsewhere)"),
        (
            Notice(ErrorCode.FIELD_INVALID, "R4.10", "bad name"),
            "09:26 ! the server refused something: bad name (FIELD_INVALID)",
        ),
        (
            Closed(SessionEnded("the server is shutting down")),
            "09:26 * the server is shutting down",
        ),
    ],
)
def test_format_event(event: Any, line: str) -> None:
    assert format_event(event, encoding="latin-1", now=NOW, tz=UTC) == line
    assert json.loads(json.dumps(event_json(event)))["type"] in {
        "message",
        "joined",
        "left",
        "notice",
        "closed",
    }


def test_event_json() -> None:
    assert event_json(delivery(directed=True)) == {
        "type": "message",
        "id": 7,
        "time": "2025-03-14T09:26:00+00:00",
        "from": "Steve",
        "text": "hi",
        "directed": True,
        "lossy": False,
        "stored": False,
        "redelivered": False,
    }
    assert event_json(delivery(stored=True, redelivered=True))["redelivered"] is True
    assert event_json(Left("Bailey", LeftReason.DROPPED)) == {
        "type": "left",
        "name": "Bailey",
        "reason": "dropped",
    }
    closed = event_json(Closed(SessionEnded("bye now", rule="R10.3", code_name="BYE")))
    assert closed == {"type": "closed", "reason": "bye now", "code": "BYE", "rule": "R10.3"}


def result(delivered: int = 1, lossy: int = 0, **outcomes: Outcome) -> SendResult:
    return SendResult(
        msg_id=1, server_msg_id=9, delivered=delivered, lossy=lossy, outcomes=outcomes
    )


@pytest.mark.parametrize(
    ("ack", "line"),
    [
        (result(), None),
        (result(Steve=Outcome.DELIVERED), None),
        (result(0, Ghost=Outcome.UNKNOWN_USER), "! there is no user named Ghost"),
        (
            result(0, Bailey=Outcome.QUEUED, Ghost=Outcome.UNKNOWN_USER),
            "! Bailey is offline and will get it on logging in; there is no user named Ghost",
        ),
        (result(1, 1, Steve=Outcome.LOSSY), "! Steve got it with some characters shown as '?'"),
        (result(0), "! nobody else is online, so nobody got it"),
        (result(3, 2), "! 2 people got it with some characters shown as '?'"),
        (result(1, Steve=Outcome.DELIVERED, Bailey=Outcome.OVER_QUOTA), "! Bailey's inbox is full; not delivered"),
    ],
)
def test_format_result(ack: SendResult, line: str | None) -> None:
    assert format_result(ack) == line


def test_own_lines_and_result_json() -> None:
    assert format_own(Say("hi"), "Liz", now=NOW, tz=UTC) == "09:26 Liz: hi"
    assert format_own(Say("hi", ("Steve", "Bailey")), "Liz", now=NOW, tz=UTC) == (
        "09:26 Liz [to Steve, Bailey]: hi"
    )
    sent = result_json(Say("hi", ("Steve",)), result(1, 1, Steve=Outcome.LOSSY))
    assert sent == {
        "type": "sent",
        "id": 9,
        "to": ["Steve"],
        "text": "hi",
        "delivered": 1,
        "lossy": 1,
        "outcomes": {"Steve": "lossy"},
    }


# --- the program, piped ------------------------------------------------------------------------


def client_command(server: Any, *options: str, user: str = "Liz") -> list[str]:
    return [
        sys.executable, "-m", "dfachat", "client", "--host", server.host,
        "--port", str(server.port), "--encoding", "utf-8", "--user", user, *options,
    ]  # fmt: skip


def client_env(password: str | None = "pw1") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DFACHAT_PASSWORD"}
    if password is not None:
        env["DFACHAT_PASSWORD"] = password
    return env


def _default_sigint() -> None:
    """In the child: SIGINT as a terminal sends it, even when the tests run with it ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Piped:
    """``dfachat client`` with pipes; a thread reads its output lines, so waits are bounded."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            preexec_fn=_default_sigint,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self._queue.put(raw.decode("utf-8").rstrip("\n"))
        self._queue.put(None)

    def write(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode("utf-8"))
        self.proc.stdin.flush()

    def expect(self, match: Any, timeout: float = TIMEOUT) -> str:
        """The next output line for which ``match`` (a callable or a substring) holds."""
        test = match if callable(match) else (lambda line: match in line)
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                raise AssertionError(f"no line matching {match!r}; got {self.lines}") from None
            if line is None:
                raise AssertionError(f"output ended without {match!r}; got {self.lines}")
            self.lines.append(line)
            if test(line):
                return line

    def finish(self, timeout: float = TIMEOUT) -> tuple[int, str]:
        """Close stdin; the exit status and stderr once the program ended (output all read)."""
        assert self.proc.stdin is not None and self.proc.stderr is not None
        self.proc.stdin.close()
        try:
            status = self.proc.wait(timeout)
        finally:
            self.proc.kill()
        while (line := self._queue.get(timeout=timeout)) is not None:
            self.lines.append(line)
        return status, self.proc.stderr.read().decode("utf-8")


@pytest.fixture
def piped(chat_server: Any) -> Any:
    started: list[Piped] = []

    def start(*options: str, user: str = "Liz", password: str = "pw1") -> Piped:
        started.append(
            Piped(client_command(chat_server, *options, user=user), client_env(password))
        )
        return started[-1]

    yield start
    for program in started:
        program.proc.kill()
        program.proc.wait(TIMEOUT)
        for stream in (program.proc.stdin, program.proc.stdout, program.proc.stderr):
            if stream is not None:
                stream.close()


def is_message(text: str, *, directed: bool | None = None) -> Any:
    def match(event: Any) -> bool:
        return (
            isinstance(event, Delivery)
            and event.text == text
            and (directed is None or event.directed == directed)
        )

    return match


def left(chat: Any, name: str) -> Left:
    return chat.wait_for(lambda event: isinstance(event, Left) and event.name == name)


def test_piped_sends_lines_and_prints_events(chat_user: Any, piped: Any) -> None:
    steve = chat_user("Steve")
    liz = piped()
    liz.write("hello everyone\n/to Steve,Bailey,Ghost just for you\n/who\n")
    assert steve.wait_for(is_message("hello everyone", directed=False)).sender == "Liz"
    assert steve.wait_for(is_message("just for you", directed=True)).sender == "Liz"
    liz.expect("! Bailey is offline and will get it on logging in; there is no user named Ghost")
    assert re.search(r"\* online \(2\): (Liz, Steve|Steve, Liz)$", liz.expect("online"))
    steve.send("hi Liz")
    assert re.fullmatch(r"\d\d:\d\d Steve: hi Liz", liz.expect("hi Liz"))
    liz.write("/nonsense\n/to bad!name hi\n")
    liz.expect("! unknown command /nonsense")
    liz.expect("! cannot send it: MSG.recipients: 'bad!name' is not a valid user name")
    status, stderr = liz.finish()
    assert (status, stderr) == (0, "")
    assert left(steve, "Liz").reason == LeftReason.QUIT


def test_piped_json(chat_user: Any, piped: Any) -> None:
    steve = chat_user("Steve")
    liz = piped("--json")
    liz.write("/to Steve ping\n")
    sent = json.loads(liz.expect('"sent"'))
    assert sent["to"] == ["Steve"] and sent["outcomes"] == {"Steve": "delivered"}
    steve.wait_for(is_message("ping", directed=True))
    steve.send("pong, naïve café", to=["Liz"])
    reply = json.loads(liz.expect("naïve"))
    assert reply["type"] == "message" and reply["from"] == "Steve" and reply["directed"] is True
    assert reply["text"] == "pong, naïve café"
    liz.write("/who\n")
    assert sorted(json.loads(liz.expect('"who"'))["online"]) == ["Liz", "Steve"]
    status, stderr = liz.finish()
    assert (status, stderr) == (0, "")
    objects = [json.loads(line) for line in liz.lines]  # every line is one JSON object
    assert [o["type"] for o in objects] == ["sent", "message", "who", "closed"]


@pytest.mark.parametrize("how", ["shutdown", "replaced"])
def test_piped_session_ended_by_the_server(
    chat_server: Any, chat_user: Any, piped: Any, how: str
) -> None:
    liz = piped()
    liz.write("/who\n")
    liz.expect("online")
    if how == "shutdown":
        chat_server.shutdown()
        sentence = "the server is shutting down"
    else:
        chat_user("Liz")
        sentence = "you logged in from somewhere else"
    assert liz.expect(sentence)
    status, stderr = liz.finish()
    assert (status, stderr) == (1, "")


def test_piped_interrupt_quits(chat_user: Any, piped: Any) -> None:
    steve = chat_user("Steve")
    liz = piped()
    liz.write("/who\n")
    liz.expect("online")
    liz.proc.send_signal(signal.SIGINT)
    liz.expect("you left the chat")
    assert liz.finish()[0] == 130
    assert left(steve, "Liz").reason == LeftReason.QUIT


def test_piped_json_killed_and_restarted_prints_nothing_twice(
    chat_server: Any, chat_user: Any, piped: Any, state_home: Any
) -> None:
    """A message is taken once its line is written and flushed; a SIGKILL and a restart print
    the messages that came while away once, and none of them again."""
    steve = chat_user("Steve")
    texts = [f"while away {i}" for i in range(5)]
    ids = [steve.send(text, to=["Liz"]).server_msg_id for text in texts]
    last = ids[-1]
    taken = taken_path_for(chat_server.host, chat_server.port, "Liz")
    assert taken.is_relative_to(state_home)
    # An earlier run printed the first three and was killed before it acknowledged them.
    TakenRecord(taken).take(ids[2])
    liz = piped("--json")
    shown = [json.loads(liz.expect(text)) for text in texts[3:]]
    assert [(m["text"], m["stored"]) for m in shown] == [(t, True) for t in texts[3:]]
    assert not any(text in line for line in liz.lines for text in texts[:3]), liz.lines
    deadline = time.monotonic() + TIMEOUT
    while not (taken.exists() and taken.read_text() == f"{last}\n"):  # printed, flushed, then taken
        assert time.monotonic() < deadline, "the last message printed was never recorded as taken"
        time.sleep(0.01)
    liz.proc.send_signal(signal.SIGKILL)  # whether its DELIVER_ACK went out or not
    liz.proc.wait(TIMEOUT)

    again = piped("--json")
    steve.send("back?", to=["Liz"])
    again.expect("back?")
    assert not any(text in line for line in again.lines for text in texts), again.lines
    status, stderr = again.finish()
    assert (status, stderr) == (0, "")


def test_piped_protocol_version_1(chat_server: Any, chat_user: Any, piped: Any, monkeypatch: Any) -> None:
    from dfachat import cli
    from dfachat.client import terminal

    seen: dict[str, Any] = {}
    with monkeypatch.context() as patch:
        patch.setattr(terminal, "run_client", lambda **options: seen.update(options) or 0)
        assert cli.main(["client", "--host", "h", "--user", "Liz", "--protocol-version", "1"]) == 0
        assert seen["versions"] == (1,)
        assert cli.main(["client", "--host", "h", "--user", "Liz"]) == 0
        assert seen["versions"] == SUPPORTED_VERSIONS
        assert cli.main(["client", "--protocol-version", "0"]) == 2

    steve = chat_user("Steve")
    liz = piped("--json", "--protocol-version", "1")
    liz.write("/to Steve over version 1\n")
    assert json.loads(liz.expect('"sent"'))["outcomes"] == {"Steve": "delivered"}
    steve.wait_for(is_message("over version 1", directed=True))
    steve.send("and back", to=["Liz"])
    assert json.loads(liz.expect("and back"))["redelivered"] is False
    assert liz.finish() == (0, "")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("case", "status", "sentence"),
    [
        ("wrong password", 1, "dfachat: error: wrong user name or password for Liz"),
        ("no server", 1, "dfachat: error: cannot reach a dfachat server at 127.0.0.1:"),
        ("bad encoding", 2, "dfachat: error: --encoding 'klingon' is not one of: utf-8, utf-16"),
        ("no password", 2, "dfachat: error: give --user and set DFACHAT_PASSWORD"),
    ],
)
def test_piped_failures_are_one_sentence(
    chat_server: Any, case: str, status: int, sentence: str
) -> None:
    command = client_command(chat_server)
    env = client_env({"wrong password": "nope", "no password": None}.get(case, "pw1"))
    if case == "no server":
        command[command.index("--port") + 1] = str(closed_port())
    if case == "bad encoding":
        command[command.index("--encoding") + 1] = "klingon"
    done = subprocess.run(command, input=b"hello\n", capture_output=True, env=env, timeout=TIMEOUT)
    stderr = done.stderr.decode()
    assert done.returncode == status, stderr
    assert stderr.startswith(sentence) and stderr.count("\n") == 1, stderr
    assert done.stdout == b""


# --- the program, interactive, in a pseudo-terminal ------------------------------------------

# Escape sequences (CSI, and the two-byte ones), backspaces and carriage returns: what is left is
# the text as it appears, with prompt_toolkit's redraws of the input line in order.
_CONTROL = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|[@-Z\\-_])|[\x08\r]")


class Terminal:
    """A pexpect child whose output is matched with escape sequences removed."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        env = {**env, "TERM": "xterm-256color", "PROMPT_TOOLKIT_NO_CPR": "1"}
        self.child = pexpect.spawn(
            sys.executable, ["-m", "dfachat", "client", *args], env=env,
            encoding="utf-8", codec_errors="replace", dimensions=(40, 120), timeout=TIMEOUT,
        )  # fmt: skip
        self.raw = ""
        self.pos = 0

    @property
    def text(self) -> str:
        return _CONTROL.sub("", self.raw)

    def expect(self, pattern: str, timeout: float = TIMEOUT) -> re.Match[str]:
        """Wait for ``pattern`` (a regex) in the text after the previous match."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.text, self.pos)
            if match:
                self.pos = match.end()
                return match
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"{pattern!r} not seen; after the last match: {self.text[self.pos :]!r}"
                )
            try:
                self.raw += self.child.read_nonblocking(4096, timeout=min(left, 0.5))
            except pexpect.TIMEOUT:
                pass
            except pexpect.EOF:
                raise AssertionError(
                    f"{pattern!r} not seen before the end: {self.text[self.pos :]!r}"
                ) from None

    def type(self, keys: str) -> None:
        self.child.send(keys)

    def exit_status(self) -> int | None:
        """Wait (bounded) for the program to end."""
        deadline = time.monotonic() + TIMEOUT
        while self.child.isalive() and time.monotonic() < deadline:
            with contextlib.suppress(pexpect.TIMEOUT, pexpect.EOF):
                self.raw += self.child.read_nonblocking(4096, timeout=0.2)
        if self.child.isalive():
            self.child.terminate(force=True)
            raise AssertionError(f"still running; output: {self.text[self.pos :]!r}")
        self.child.close()
        return self.child.exitstatus


@pytest.fixture
def terminal() -> Any:
    started: list[Terminal] = []

    def start(*args: str, password: str | None = None) -> Terminal:
        started.append(Terminal(list(args), client_env(password)))
        return started[-1]

    yield start
    for term in started:
        if term.child.isalive():
            term.child.terminate(force=True)


def test_interactive_as_a_person_types(chat_server: Any, chat_user: Any, terminal: Any) -> None:
    steve = chat_user("Steve")
    term = terminal("--port", str(chat_server.port))
    term.expect("Host: ")
    term.type("\r")  # blank: localhost
    term.expect("Encode format: ")
    term.type("klingon\r")
    term.expect(r"'klingon' is not one of the encodings dfachat speaks:\n  utf-8 ")
    term.expect("Encode format: ")
    term.type("utf8\r")
    term.expect("User: ")
    term.type("Liz\r")
    term.expect("Password: ")
    term.type("pw2\r")  # Steve's
    term.expect(r"wrong user name or password \(\d+ attempts? left\)")
    term.expect("User: ")
    term.type("Liz\r")
    term.expect("Password: ")
    term.type("pw1\r")
    term.expect(r"Logged in to localhost:\d+ as Liz \(utf-8\)\. Online: .*\n")
    term.expect(r"(?m)^>")

    term.type("hello Steve\r")
    assert steve.wait_for(is_message("hello Steve", directed=False)).sender == "Liz"
    term.expect(r"\d\d:\d\d Liz: hello Steve\n")

    # A message arrives while a line is half typed: it prints above, and the input stays intact.
    term.type("half-typed")
    term.expect("half-typed")  # echoed as typed
    steve.send("message from Steve")
    term.expect(r"\d\d:\d\d Steve: message from Steve\n>\s*half-typed")
    term.type(" and the rest\r")
    steve.wait_for(is_message("half-typed and the rest"))

    term.type("/to Steve just you\r")
    steve.wait_for(is_message("just you", directed=True))
    term.expect(r"Liz \[to Steve\]: just you\n")
    steve.send("only for Liz", to=["Liz"])
    term.expect(r"Steve \[to you\]: only for Liz\n")

    term.type("/to Ghost boo\r")
    term.expect(r"! there is no user named Ghost\n")
    term.type("/who\r")
    term.expect(r"\* online \(2\): (Liz, Steve|Steve, Liz)\n")
    term.type("/quit\r")
    term.expect(r"\* you left the chat\n")
    assert term.exit_status() == 0
    assert left(steve, "Liz").reason == LeftReason.QUIT


@pytest.mark.parametrize("key", ["\x04", "\x03"], ids=["ctrl-d", "ctrl-c"])
def test_interactive_lossy_and_quit_keys(
    chat_server: Any, chat_user: Any, terminal: Any, key: str
) -> None:
    steve = chat_user("Steve")
    args = ["--host", "127.0.0.1", "--port", str(chat_server.port), "--encoding", "LATIN1"]
    term = terminal(*args, "--user", "Liz", password="pw1")  # no prompts: everything given
    term.expect(r"as Liz \(latin-1\)")
    term.expect(r"(?m)^>")
    steve.send("café ☕")
    term.expect(r"Steve: café \?  \(\?: some characters could not be shown in latin-1\)\n")
    term.type("some text" if key == "\x03" else "")  # Ctrl-C drops it; Ctrl-D needs an empty line
    term.type(key)
    term.expect(r"\* you left the chat\n")
    assert term.exit_status() == 0
    assert left(steve, "Liz").reason == LeftReason.QUIT
    assert not any(isinstance(e, Delivery) and e.sender == "Liz" for e in steve.seen)


def test_interactive_server_shutdown(chat_server: Any, terminal: Any) -> None:
    term = terminal("--host", "127.0.0.1", "--port", str(chat_server.port), "--user", "Bailey",
                    "--encoding", "ascii", password="pw3")  # fmt: skip
    term.expect(r"(?m)^>")
    term.type("unsent")
    term.expect("unsent")
    chat_server.shutdown()
    term.expect(r"\* the server is shutting down\n")
    assert term.exit_status() == 1


def test_joined_lines(chat_server: Any, chat_user: Any, piped: Any) -> None:
    liz = piped()
    liz.write("/who\n")
    liz.expect("online (1)")
    chat_user("Steve").close()
    assert re.fullmatch(r"\d\d:\d\d \* Steve joined", liz.expect("joined"))
    assert re.fullmatch(r"\d\d:\d\d \* Steve left \(quit\)", liz.expect("left"))
    assert liz.finish()[0] == 0


# --- asking only what is needed, after the server answered --------------------------------------


def test_nothing_listening_is_said_before_any_user_or_password_prompt(terminal: Any) -> None:
    port = closed_port()
    term = terminal("--port", str(port))
    term.expect("Host: ")
    term.type("\r")
    term.expect("Encode format: ")
    term.type("\r")
    term.expect(rf"cannot reach a dfachat server at localhost:{port}: .*nothing listens on port {port}")
    term.expect(r"dfachat server --demo")
    assert term.exit_status() == 1
    assert "User:" not in term.text and "Password:" not in term.text


def test_a_host_from_a_flag_asks_no_encoding(chat_server: Any, terminal: Any) -> None:
    # The encoding comes from the terminal's locale (utf-8 here), as the host came from a flag.
    term = terminal("--host", "127.0.0.1", "--port", str(chat_server.port))
    term.expect("User: ")
    term.type("Liz\r")
    term.expect("Password: ")
    term.type("pw1\r")
    term.expect(r"Logged in to 127.0.0.1:\d+ as Liz \(utf-8\)")
    term.type("/quit\r")
    assert term.exit_status() == 0
    assert "Encode format:" not in term.text and "Host:" not in term.text


def test_a_password_from_the_environment_is_not_asked(chat_server: Any, terminal: Any) -> None:
    term = terminal("--host", "127.0.0.1", "--port", str(chat_server.port), password="pw2")
    term.expect("User: ")
    term.type("Steve\r")
    term.expect(r"as Steve \(utf-8\)")
    term.type("/quit\r")
    assert term.exit_status() == 0
    assert "Password:" not in term.text
