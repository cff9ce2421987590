"""``dfachat client``: chat in a terminal, or from a script through standard input.

Interactive (standard input is a terminal): the prompts ``Host:`` and
``Encode format:`` when no host was given (the seed's pair; with ``--host``
the encoding is ``--encoding`` or the terminal's), a check that a dfachat
server answers there, then ``User:`` and ``Password:`` for what the command
line and ``$DFACHAT_PASSWORD`` did not give, then a prompt_toolkit input line that incoming messages print
above without disturbing what is being typed. Piped (standard input is not a
terminal, or ``--json``): each line of standard input is sent (the same
commands work), events are printed as text or JSON lines, and the client
quits once standard input ends and every message was acknowledged.

A message counts as taken (and is acknowledged, R7.11) once its line is
printed (with ``--json``: written and flushed). The highest id taken is kept
in a file under the user's state directory
(:func:`~dfachat.client.library.taken_path_for`), so a message printed before a
crash is not printed again after a restart.

The library (:mod:`dfachat.client.library`) speaks the protocol; this module
parses lines (:func:`parse_command`) and formats what happens
(:func:`format_event`, :func:`format_result`, :func:`event_json`) in pure
functions, and does the terminal I/O around them.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import getpass
import json
import os
import re
import sys
import threading
import unicodedata
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any

from dfachat.client.library import (
    Chat,
    ChatEvent,
    Closed,
    Delivery,
    Joined,
    Left,
    Notice,
    SendResult,
    open_chat,
    taken_path_for,
)
from dfachat.errors import (
    AuthenticationFailed,
    ClientError,
    MessageRejected,
    SessionEnded,
)
from dfachat.spec import ENCODINGS, REPLACEMENT, SUPPORTED_VERSIONS, LeftReason, Outcome

__all__ = [
    "Help",
    "Invalid",
    "Quit",
    "Say",
    "Who",
    "event_json",
    "format_event",
    "format_result",
    "normalize_encoding",
    "parse_command",
    "result_json",
    "run_client",
]

EXIT_OK = 0
EXIT_FAILED = 1  # could not connect or log in, or the server ended the session
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

HELP = """\
Type a line and press Enter to send it to everyone online.
  /to NAME[,NAME...] TEXT   send TEXT to the named users only
  /who                      list who is online
  /help                     show this help
  /quit                     leave the chat (Ctrl-D and Ctrl-C too)
  //TEXT                    send a line that starts with '/'"""


# --- commands: one line of input -> what to do ------------------------------------------


@dataclass(frozen=True, slots=True)
class Say:
    """Send ``text``; to the named users, or to everyone online when ``to`` is empty."""

    text: str
    to: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Who:
    pass


@dataclass(frozen=True, slots=True)
class Help:
    pass


@dataclass(frozen=True, slots=True)
class Quit:
    pass


@dataclass(frozen=True, slots=True)
class Invalid:
    """A line that is not a usable command; ``message`` says why."""

    message: str


Command = Say | Who | Help | Quit | Invalid

_TO = re.compile(
    r"/to(?:\s+(?P<names>[^\s,]+(?:\s*,\s*[^\s,]+)*)(?:\s+(?P<text>.*))?)?\s*", re.S | re.I
)
_SIMPLE = {"/who": Who(), "/help": Help(), "/?": Help(), "/quit": Quit(), "/exit": Quit()}


def parse_command(line: str) -> Command | None:
    """What one line of input asks for; None for a blank line (nothing to do)."""
    line = line.rstrip("\r\n")
    if not line.strip():
        return None
    if line.startswith("//"):
        return Say(line[1:])
    if not line.startswith("/"):
        return Say(line)
    word = line.split(maxsplit=1)[0].lower()
    if word == "/to":
        match = _TO.fullmatch(line)
        if match is None or not match["names"] or not (match["text"] or "").strip():
            return Invalid("usage: /to NAME[,NAME...] TEXT")
        names = tuple(dict.fromkeys(n.strip() for n in match["names"].split(",")))
        return Say(match["text"], to=names)
    if word in _SIMPLE:
        return _SIMPLE[word]
    return Invalid(f"unknown command {word}; /help lists the commands")


# --- encodings: what a person types -> the spec's name ------------------------------------


def _encoding_aliases() -> dict[str, str]:
    """Python's canonical codec name -> the spec's wire name, for every spelling codecs knows."""
    aliases: dict[str, str] = {}
    for name, spec in ENCODINGS.items():
        for spelling in (name, spec.codec):  # utf-16-be is what utf-16 means on the wire (R3.3)
            aliases[codecs.lookup(spelling).name] = name
    return aliases


_ALIASES = _encoding_aliases()


def normalize_encoding(answer: str) -> str | None:
    """The spec's name for ``answer`` (``utf8``, ``UTF-8``, ``latin1`` ...); blank is utf-8.

    None when dfachat has no such encoding.
    """
    answer = answer.strip()
    if not answer:
        return "utf-8"
    if answer in ENCODINGS:
        return answer
    try:
        return _ALIASES.get(codecs.lookup(answer).name)
    except LookupError:
        return None


def encodings_text() -> str:
    width = max(map(len, ENCODINGS))
    return "\n".join(f"  {name:<{width}}  {e.description}" for name, e in ENCODINGS.items())


# --- formatting: pure functions from events to lines and JSON objects -------------------------

_LEFT_REASONS = {
    LeftReason.QUIT: "quit",
    LeftReason.DROPPED: "connection lost",
    LeftReason.TIMEOUT: "timed out",
    LeftReason.REPLACED: "logged in elsewhere",
    LeftReason.ERROR: "protocol error",
}


def _visible(text: str) -> str:
    """``text`` with control characters shown as ``\\xNN``: a message cannot drive the terminal."""
    if text.isprintable():
        return text
    return "".join(
        c if c == "\t" or unicodedata.category(c) != "Cc" else f"\\x{ord(c):02x}" for c in text
    )


def _lines(prefix: str, text: str) -> str:
    """``prefix`` then ``text``; the lines of a multi-line message indented under the first."""
    return prefix + "\n    ".join(_visible(line) for line in text.split("\n"))


def format_event(
    event: ChatEvent, *, encoding: str, now: datetime | None = None, tz: tzinfo | None = None
) -> str:
    """One event as the terminal shows it; ``tz`` is the zone for times (None: the local one)."""
    now = (now or datetime.now(tz)).astimezone(tz)
    clock = now.strftime("%H:%M")
    if isinstance(event, Delivery):
        sent = event.time.astimezone(tz)
        stamp = sent.strftime("%H:%M" if sent.date() == now.date() else "%Y-%m-%d %H:%M")
        marks = (" [to you]" if event.directed else "") + (
            " [while you were away]" if event.stored else ""
        )
        line = _lines(f"{stamp} {event.sender}{marks}: ", event.text)
        if event.lossy:
            line += f"  ({REPLACEMENT}: some characters could not be shown in {encoding})"
        return line
    if isinstance(event, Joined):
        return f"{clock} * {event.name} joined"
    if isinstance(event, Left):
        why = _LEFT_REASONS.get(event.reason, event.reason.name.lower())
        return f"{clock} * {event.name} left ({why})"
    if isinstance(event, Notice):
        return (
            f"{clock} ! the server refused something: {_visible(event.reason)} ({event.code.name})"
        )
    if isinstance(event, Closed):
        return f"{clock} * {event.error.detail}"
    raise TypeError(f"not a chat event: {event!r}")


def format_own(
    command: Say, me: str, *, now: datetime | None = None, tz: tzinfo | None = None
) -> str:
    """The line that shows a message we sent (the input line is erased once sent)."""
    stamp = (now or datetime.now(tz)).astimezone(tz).strftime("%H:%M")
    to = f" [to {', '.join(command.to)}]" if command.to else ""
    return _lines(f"{stamp} {me}{to}: ", command.text)


def format_result(result: SendResult) -> str | None:
    """One short line about what went wrong with a sent message; None when nothing did."""
    problems = []
    for name, outcome in result.problems.items():
        if outcome is Outcome.UNKNOWN_USER:
            problems.append(f"there is no user named {name}")
        elif outcome is Outcome.QUEUED:
            problems.append(f"{name} is offline and will get it on logging in")
        elif outcome is Outcome.LOSSY:
            problems.append(f"{name} got it with some characters shown as '{REPLACEMENT}'")
        elif outcome is Outcome.OVER_QUOTA:
            problems.append(f"{name}'s inbox is full; not delivered")
    if not result.outcomes:  # a broadcast
        if result.delivered == 0:
            problems.append("nobody else is online, so nobody got it")
        elif result.lossy:
            some = "1 person" if result.lossy == 1 else f"{result.lossy} people"
            problems.append(f"{some} got it with some characters shown as '{REPLACEMENT}'")
    return "! " + "; ".join(problems) if problems else None


def format_who(names: list[str]) -> str:
    return f"* online ({len(names)}): {', '.join(names)}"


def event_json(event: ChatEvent) -> dict[str, Any]:
    """One event as a JSON object (for ``--json``); ``type`` says which kind."""
    if isinstance(event, Delivery):
        return {
            "type": "message",
            "id": event.server_msg_id,
            "time": event.time.isoformat(),
            "from": event.sender,
            "text": event.text,
            "directed": event.directed,
            "lossy": event.lossy,
            "stored": event.stored,
            "redelivered": event.redelivered,
        }
    if isinstance(event, Joined):
        return {"type": "joined", "name": event.name}
    if isinstance(event, Left):
        return {"type": "left", "name": event.name, "reason": event.reason.name.lower()}
    if isinstance(event, Notice):
        return {
            "type": "notice",
            "code": event.code.name,
            "rule": event.rule,
            "reason": event.reason,
        }
    if isinstance(event, Closed):
        error = event.error
        return {
            "type": "closed",
            "reason": error.detail,
            "code": error.code_name,
            "rule": error.rule,
        }
    raise TypeError(f"not a chat event: {event!r}")


def result_json(command: Say, result: SendResult) -> dict[str, Any]:
    """The MSG_ACK of a sent message as a JSON object (``type`` ``sent``)."""
    return {
        "type": "sent",
        "id": result.server_msg_id,
        "to": list(command.to),
        "text": command.text,
        "delivered": result.delivered,
        "lossy": result.lossy,
        "outcomes": {name: outcome.name.lower() for name, outcome in result.outcomes.items()},
    }


# --- the session: commands in, events out ------------------------------------------------------


class _Session:
    """Runs commands against a :class:`Chat` and shows what happens, as text or JSON lines."""

    def __init__(
        self, chat: Chat, show: Callable[[str], None], *, json_lines: bool, echo: bool
    ) -> None:
        self.chat = chat
        self._show = show
        self.json_lines = json_lines
        self.echo = echo  # show our own messages (the interactive input line is erased)
        self.quitting = False

    def emit(self, text: str | None = None, obj: dict[str, Any] | None = None) -> None:
        if self.json_lines:
            if obj is not None:
                self._show(json.dumps(obj, ensure_ascii=False))
        elif text is not None:
            self._show(text)

    def problem(self, message: str, **extra: Any) -> None:
        self.emit(f"! {message}", {"type": "error", "message": message, **extra})

    async def execute(self, command: Command) -> bool:
        """Carry out one command; False when the session should end."""
        if isinstance(command, Quit):
            return False
        if isinstance(command, Help):
            self.emit(HELP, {"type": "help", "text": HELP})
        elif isinstance(command, Invalid):
            self.problem(command.message)
        elif isinstance(command, Who):
            try:
                names = await self.chat.who()
            except MessageRejected as exc:
                self.problem(exc.detail, code=exc.code_name)
            except (SessionEnded, TimeoutError):
                return False
            else:
                self.emit(format_who(names), {"type": "who", "online": names})
        elif isinstance(command, Say):
            try:
                result = await self.chat.send(command.text, to=command.to)
            except MessageRejected as exc:
                self.problem(exc.detail, code=exc.code_name)
            except (SessionEnded, TimeoutError):
                return False
            else:
                if self.echo:
                    self.emit(format_own(command, self.chat.user))
                self.emit(format_result(result), result_json(command, result))
        return True

    def show_event(self, event: ChatEvent) -> None:
        self.emit(format_event(event, encoding=self.chat.encoding), event_json(event))

    async def print_events(self) -> None:
        # Asking for the next event takes the one just printed: the library acknowledges it.
        async for event in self.chat.events():
            self.show_event(event)

    async def run(self, lines: AsyncIterator[str]) -> int:
        """Execute ``lines`` and print events until the input ends, /quit, or the session ends."""

        async def commands() -> None:
            async for line in lines:
                command = parse_command(line)
                if command is not None and not await self.execute(command):
                    return

        printer = asyncio.create_task(self.print_events())
        reader = asyncio.create_task(commands())
        try:
            await asyncio.wait({printer, reader}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            if self.chat.ended is None:
                self.quitting = True
                await asyncio.shield(self.chat.quit())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await printer  # the events left, down to Closed
            printer.cancel()
        return EXIT_OK if self.quitting else EXIT_FAILED


async def _prompted_lines() -> AsyncIterator[str]:
    """Lines typed at a prompt_toolkit prompt; ends on Ctrl-D or Ctrl-C."""
    from prompt_toolkit import PromptSession

    prompt: PromptSession[str] = PromptSession(erase_when_done=True)
    while True:
        try:
            line = await prompt.prompt_async("> ")
        except (EOFError, KeyboardInterrupt):
            return
        yield line


async def _stdin_lines() -> AsyncIterator[str]:
    """Lines of standard input (UTF-8), read by a daemon thread.

    The thread reads the file descriptor with ``os.read``, not through
    ``sys.stdin``: a daemon thread blocked inside a buffered reader's lock
    aborts the interpreter at exit, and the program ends without waiting for
    its input when the server ends the session.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def put(line: str | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening
            loop.call_soon_threadsafe(queue.put_nowait, line)

    def read() -> None:
        pending = b""
        try:
            fd = sys.stdin.fileno()
            while chunk := os.read(fd, 65536):
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    put(line.decode("utf-8", "replace"))
        except (OSError, ValueError, AttributeError):
            pass
        if pending:
            put(pending.decode("utf-8", "replace"))
        put(None)

    threading.Thread(target=read, name="dfachat-stdin", daemon=True).start()
    while (line := await queue.get()) is not None:
        yield line


def _write_line(text: str) -> None:
    """A line on stdout as UTF-8, whatever the locale, flushed at once (others read it live)."""
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:
        print(text, flush=True)
        return
    buffer.write(text.encode("utf-8") + b"\n")
    buffer.flush()


# --- connecting: prompts, login, retries ---------------------------------------------------------


def _error(message: str) -> None:
    print(f"dfachat: error: {message}", file=sys.stderr, flush=True)


def _ask(question: str) -> str:
    return input(question)


def _is_user_name(name: str) -> bool:
    from dfachat.spec.messages import USER_NAME

    return name.isascii() and USER_NAME.regex.fullmatch(name.encode()) is not None


def _terminal_encoding() -> str:
    import locale

    return normalize_encoding(locale.getpreferredencoding(False)) or "utf-8"


def _ask_encoding() -> str:
    while True:
        answer = _ask("Encode format: ")
        name = normalize_encoding(answer)
        if name is not None:
            return name
        print(f"{answer.strip()!r} is not one of the encodings dfachat speaks:\n{encodings_text()}")


async def _log_in(
    host: str, port: int, encoding: str, user: str | None, password: str | None, interactive: bool,
    ssl: Any = None, versions: tuple[int, ...] = SUPPORTED_VERSIONS,
) -> Chat | int:
    """Log in, asking for the user name and password when needed (again after a wrong one)."""
    budget: int | None = None  # attempts left, counted across reconnections
    ask_user = user is None
    while True:
        if user is None:
            user = _ask("User: ").strip()
        if password is None:
            password = getpass.getpass("Password: ")
        try:
            taken = _taken_path(host, port, user)
            return await open_chat(
                host, port, user=user, password=password, encoding=encoding, ssl=ssl, versions=versions, taken=taken
            )
        except AuthenticationFailed as exc:
            budget = exc.attempts_left if budget is None else min(budget - 1, exc.attempts_left)
            if not interactive or budget <= 0:
                _error("wrong user name or password" + ("" if interactive else f" for {user}"))
                return EXIT_FAILED
            print(
                f"wrong user name or password ({budget} attempt{'s' if budget != 1 else ''} left)"
            )
            password = None
            if ask_user:
                user = None
        except ClientError as exc:  # unreachable, refused version or encoding, broken login
            _connection_error(exc, host, port)
            return EXIT_FAILED


def _taken_path(host: str, port: int, user: str) -> Any:
    """The file of the messages taken, or None (in memory only) when the state directory cannot be made."""
    try:
        return taken_path_for(host, port, user)
    except OSError as exc:
        print(f"dfachat: warning: cannot keep track of the messages shown ({exc}); after a crash some may "
              "be shown again", file=sys.stderr, flush=True)
        return None


def _connection_error(exc: ClientError, host: str, port: int) -> None:
    """The library's sentence, and when nothing listens, what to do about it."""
    import errno

    detail = exc.detail
    if detail.endswith(os.strerror(errno.ECONNREFUSED)):
        detail += (f": nothing listens on port {port} of {host}; start a server there with "
                   "`dfachat server --demo`, or give --port the port yours listens on")
    _error(detail)


async def _verify_server(host: str, port: int, encoding: str, ssl: Any,
                         versions: tuple[int, ...] = SUPPORTED_VERSIONS) -> bool:
    """Whether a dfachat server answers at host:port, said before anyone types a password."""
    from dfachat.client.library import probe

    try:
        await probe(host, port, encoding=encoding, ssl=ssl, versions=versions)
    except ClientError as exc:
        _connection_error(exc, host, port)
        return False
    return True


def run_client(
    *,
    host: str | None,
    port: int,
    encoding: str | None,
    user: str | None,
    password: str | None,
    json_lines: bool = False,
    ssl: Any = None,
    versions: tuple[int, ...] = SUPPORTED_VERSIONS,
) -> int:
    """``dfachat client``: returns the exit status (0 after /quit or the end of input).

    ``ssl`` is an ``ssl.SSLContext`` (:func:`dfachat.client.tls_context`) for a TLS server;
    ``versions`` the protocol versions offered (R5.1).
    """
    stdin_tty = sys.stdin is not None and sys.stdin.isatty()
    interactive = stdin_tty and not json_lines
    if encoding is not None:
        name = normalize_encoding(encoding)
        if name is None:
            _error(f"--encoding {encoding!r} is not one of: {', '.join(ENCODINGS)}")
            return EXIT_USAGE
        encoding = name
    if user is not None and not _is_user_name(user):
        _error(f"--user {user!r} is not a user name: a name is a letter, then letters, digits, _ . -")
        return EXIT_USAGE
    if not stdin_tty and (user is None or password is None):
        _error("give --user and set DFACHAT_PASSWORD when standard input is not a terminal")
        return EXIT_USAGE
    try:
        asked_host = host is None
        if host is None:
            host = (_ask("Host: ") if stdin_tty else "").strip() or "localhost"
        if encoding is None:
            # The seed's second question follows its first; when the host came from a flag,
            # the terminal's own encoding answers it (utf-8 when dfachat does not speak that).
            encoding = _ask_encoding() if stdin_tty and asked_host else _terminal_encoding()
        return asyncio.run(_main(host, port, encoding, user, password, interactive, json_lines, ssl, versions))
    except EOFError:  # Ctrl-D at a prompt
        print(file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:  # Ctrl-C at a prompt, or a signal (the session has quit)
        if stdin_tty:
            print(file=sys.stderr)
        return EXIT_INTERRUPTED


async def _main(
    host: str,
    port: int,
    encoding: str,
    user: str | None,
    password: str | None,
    interactive: bool,
    json_lines: bool,
    ssl: Any = None,
    versions: tuple[int, ...] = SUPPORTED_VERSIONS,
) -> int:
    if (user is None or password is None) and not await _verify_server(host, port, encoding, ssl, versions):
        return EXIT_FAILED
    chat = await _log_in(host, port, encoding, user, password, interactive, ssl, versions)
    if isinstance(chat, int):
        return chat
    if not interactive:
        session = _Session(chat, _write_line, json_lines=json_lines, echo=False)
        return await session.run(_stdin_lines())

    from prompt_toolkit.patch_stdout import patch_stdout

    def show(text: str) -> None:
        print(text, flush=True)

    with patch_stdout():
        show(
            f"Logged in to {host}:{port} as {chat.user} ({encoding}). "
            f"Online: {', '.join(chat.online)}. /help lists the commands."
        )
        session = _Session(chat, show, json_lines=False, echo=True)
        return await session.run(_prompted_lines())
