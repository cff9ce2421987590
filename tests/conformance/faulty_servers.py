"""Faulty servers: the reference server with one fault injected each, to prove the fuzzer works.

Everything the server decides is in :class:`dfachat.server.core.ServerCore`
and :class:`dfachat.server.ChatServer` is only its asyncio shell, so a fault is
a subclass of one of the two, run as ``ChatServer(store, config,
core_class=...)`` (:meth:`Fault.build`); nothing here ships in the product
(there is no fault switch in ``dfachat``). Three mechanisms keep each fault a
few lines:

* a fault in a decision overrides the core method that makes it: a handler
  (``on_QUIT``, ``on_PING`` ...), ``route``, ``password_checked``, ``login``,
  ``deliver_stored``, ``push_all`` (JOINED and LEFT), ``send`` (the replies),
  ``protocol_violation``, ``tick``;
* :meth:`RewritingCore.rewrite` sees every message the core sends, at its
  :class:`~dfachat.server.core.Effects` seam, and returns the messages to send
  instead (none, the same twice, a changed copy): for the DELIVERs, which the
  core builds inside ``on_MSG`` and ``deliver_stored``;
* a fault on the wire, below every decision, is a shell: :meth:`FaultyShell.rewrite`
  sees every encoded frame queued to a connection (a broken CRC).

Every fault names the spec rules a conformance checker should cite when it
catches it (``Fault.rules``); ``test_fuzz_kills.py`` proves each fault shows
with a direct probe and that ``dfachat fuzz server`` catches it. :func:`fuzz`
runs the fuzzer against one (for that test and ``bench/fuzz.py``); the fuzzer's
in-process tests (``tests/conformance/fuzz/test_server_mode.py``) serve one in
a thread with :attr:`Fault.shell` and :attr:`Fault.core`.

Run one as a program (the fuzzer's ``--target-cmd``)::

    python tests/conformance/faulty_servers.py --fault echoes_broadcast --port 40000 \\
        --db faulty.db [--account Liz:pw1 ...] [--idle-timeout 3] [--limit NAME=VALUE]

``--fault none`` serves the reference server unchanged; ``--list`` prints the
faults. Accounts are created in the SQLite file with cheap scrypt; SIGINT or
SIGTERM shuts the server down gracefully. It prints nothing on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dfachat.codec import encode
from dfachat.codec.messages import (  # type: ignore[attr-defined]
    AUTH_OK,
    BYE,
    DELIVER,
    JOINED,
    LEFT,
    MSG_ACK,
    PONG,
    Message,
)
from dfachat.fsm import ProtocolViolation
from dfachat.server import (
    DEMO_ACCOUNTS,
    ChatServer,
    Connection,
    CoreConnection,
    KdfParams,
    ServerConfig,
    ServerCore,
    Store,
)
from dfachat.server.routing import Route
from dfachat.server.run import configure_logging
from dfachat.server.storage import Account
from dfachat.spec import LIMITS, RULES, ByeReason, DeliverFlags, ErrorCode, LeftReason, Limits

__all__ = [
    "FAULTS",
    "Fault",
    "FaultyShell",
    "FuzzRun",
    "RewritingCore",
    "build_server",
    "fuzz",
    "idle_timeout_for",
    "main",
]

CHEAP_KDF = KdfParams(n=1024)  # a login costs about a millisecond, as in the server tests
LONG_TEXT = 255  # drops_long_texts: a text longer than this many characters vanishes


# --- the mechanisms ---------------------------------------------------------------------------


class _RewrittenEffects:
    """The world's :class:`~dfachat.server.core.Effects`, with each message the core sends
    passed through the core's ``rewrite`` first (the other four effects unchanged)."""

    def __init__(self, effects: Any, rewrite: Callable[[CoreConnection, Message], list[Message]]) -> None:
        self._effects = effects
        self._rewrite = rewrite

    def send(self, conn: CoreConnection, message: Message, frame: bytes) -> None:
        for out in self._rewrite(conn, message):
            # in the session's version: a frame of another one is refused (R2.2)
            data = frame if out is message else encode(out, conn.session.encoding, conn.session.version or 1)
            self._effects.send(conn, out, data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._effects, name)


class RewritingCore(ServerCore):
    """The reference core, whose every outgoing message passes through :meth:`rewrite`.

    The engine has seen (and moved on) the message the core meant to send; the
    world is handed the rewritten ones, encoded for the connection.
    """

    def __init__(self, storage: Any, effects: Any, config: Any = None, **options: Any) -> None:
        super().__init__(storage, _RewrittenEffects(effects, self.rewrite), config, **options)

    def rewrite(self, conn: CoreConnection, message: Message) -> list[Message]:
        """The messages to send instead of ``message``."""
        return [message]


class FaultyConnection(Connection):
    """A connection whose queued frames pass through the server's :meth:`FaultyShell.rewrite`."""

    def queue(self, frame: bytes) -> None:
        for out in self.server.rewrite(self, frame):  # type: ignore[attr-defined]
            super().queue(out)


class FaultyShell(ChatServer):
    """The reference shell; a subclass rewrites the encoded frames (a fault on the wire)."""

    def _new_connection(self) -> Connection:
        return FaultyConnection(self)

    def rewrite(self, conn: Connection, frame: bytes) -> list[bytes]:
        """The frames to send instead of ``frame`` (header byte 3 is the type code, R2.3)."""
        return [frame]


# --- the faults the issue names -------------------------------------------------------------


class AcceptsWrongPassword(ServerCore):
    """Any password logs an existing account in."""

    def password_checked(self, conn: CoreConnection, account: Account | None, now: float) -> None:
        if account is None and not conn.closed:
            account = self.storage.lookup(conn.login_name or "")
        super().password_checked(conn, account, now)


class SkipsJoined(ServerCore):
    """Nobody is told when a user logs in."""

    def push_all(self, message: Message, *, exclude: CoreConnection | None) -> None:
        if message.TYPE != JOINED.TYPE:
            super().push_all(message, exclude=exclude)


class SendsLeftTwice(ServerCore):
    """Every LEFT goes out twice."""

    def push_all(self, message: Message, *, exclude: CoreConnection | None) -> None:
        super().push_all(message, exclude=exclude)
        if message.TYPE == LEFT.TYPE:
            super().push_all(message, exclude=exclude)


class DirectedToEveryone(ServerCore):
    """A directed message also reaches every other online user, as a broadcast would."""

    def route(self, conn: CoreConnection, recipients: tuple[str, ...]) -> Route[CoreConnection]:
        plan = super().route(conn, recipients)
        if plan.directed:
            plan.live += [c for k, c in self.presence.items() if k != conn.key and c not in plan.live]
        return plan


class EchoesBroadcast(ServerCore):
    """A broadcast comes back to its sender too."""

    def route(self, conn: CoreConnection, recipients: tuple[str, ...]) -> Route[CoreConnection]:
        plan = super().route(conn, recipients)
        sender = self.presence.get(conn.key or "")
        if not plan.directed and sender is not None:
            plan.live.append(sender)
        return plan


class DropsLongTexts(RewritingCore):
    """A text longer than 255 characters (LONG_TEXT) is acknowledged but never delivered."""

    def rewrite(self, conn: CoreConnection, message: Message) -> list[Message]:
        if message.TYPE == DELIVER.TYPE and len(message.text) > LONG_TEXT:
            return []
        return [message]


class WrongCrcOnDeliver(FaultyShell):
    """Every DELIVER carries a wrong CRC-32."""

    def rewrite(self, conn: Connection, frame: bytes) -> list[bytes]:
        if frame[3] == DELIVER.TYPE:
            return [frame[:-1] + bytes([frame[-1] ^ 0x01])]
        return [frame]


class ManglesNonAscii(RewritingCore):
    """Re-encoding for a recipient in another encoding than the sender's turns every non-ASCII
    character into '?', without the LOSSY flag or outcome (R3.5 allows '?' only when flagged)."""

    _sender_encoding: str | None = None

    def _release_msg(self, conn: CoreConnection, *args: Any) -> None:
        # where a MSG's DELIVERs go out (after the group commit, in the asyncio server)
        self._sender_encoding = conn.session.encoding
        try:
            super()._release_msg(conn, *args)
        finally:
            self._sender_encoding = None

    def rewrite(self, conn: CoreConnection, message: Message) -> list[Message]:
        sender_encoding = self._sender_encoding
        if message.TYPE != DELIVER.TYPE or sender_encoding in (None, conn.session.encoding):
            return [message]
        mangled = "".join(c if c.isascii() else "?" for c in message.text)
        return [message.replace(text=mangled)]


class ClosesOnIllegal(ServerCore):
    """An illegal or malformed frame ends the session, even where the spec says it survives."""

    def protocol_violation(self, conn: CoreConnection, event: ProtocolViolation) -> None:
        if event.fatal:
            return super().protocol_violation(conn, event)
        self.end(conn, None, LeftReason.ERROR)  # closes without the non-fatal ERROR
        return None


class WrongAckId(ServerCore):
    """MSG_ACK carries another message id than the MSG's (its lowest bit flipped)."""

    def send(self, conn: CoreConnection, message: Message) -> None:
        if message.TYPE == MSG_ACK.TYPE:
            message = message.replace(msg_id=message.msg_id ^ 1)
        super().send(conn, message)


class _AfterQuit:
    """A session that has been answered BYE but stays open and pushable (DeliversAfterQuit)."""

    def __init__(self, session: Any) -> None:
        self._session = session

    state = _state = "ESTABLISHED"  # what the push code asks before it pushes
    closed = False  # so the core keeps sending to it
    authenticated = True

    def next_event(self) -> None:
        return None  # what arrives after QUIT is discarded (that much is right)

    def send(self, message: Message, *, frame: bytes | None = None) -> bytes:
        # past the engine, which is CLOSED; in the session's version (R2.2)
        return frame if frame is not None else encode(message, self._session.encoding, self._session.version or 1)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


class DeliversAfterQuit(ServerCore):
    """QUIT is answered BYE, but the session stays online and open: pushes keep reaching it."""

    def on_QUIT(self, conn: CoreConnection, _: Message, now: float) -> None:
        conn.left_reason = LeftReason.QUIT
        self.send(conn, BYE(reason=ByeReason.QUIT))
        conn.session = _AfterQuit(conn.session)  # type: ignore[assignment]


class LosesStoredMessages(ServerCore):
    """Messages stored for an offline user are forgotten at its login, not delivered."""

    def deliver_stored(self, conn: CoreConnection, key: str) -> None:
        self.storage.forget(item.id for item in self.storage.stored_for(key))


class IgnoresIdleTimeout(ServerCore):
    """Announces an idle timeout in HELLO_OK but never enforces it (and never pings)."""

    def tick(self, now: float) -> None:
        pass


# --- faults of our own choosing -------------------------------------------------------------


class OnlineListWithoutSelf(ServerCore):
    """AUTH_OK's online list leaves out the user who just logged in."""

    def send(self, conn: CoreConnection, message: Message) -> None:
        if message.TYPE == AUTH_OK.TYPE:
            message = message.replace(online=tuple(n for n in message.online if n != message.name))
        super().send(conn, message)


class WrongErrorCode(ServerCore):
    """Every protocol error is answered with MALFORMED_PAYLOAD (FIELD_INVALID where that was right)."""

    def protocol_violation(self, conn: CoreConnection, event: ProtocolViolation) -> None:
        wrong = ErrorCode.FIELD_INVALID if event.reply.code is ErrorCode.MALFORMED_PAYLOAD else ErrorCode.MALFORMED_PAYLOAD
        super().protocol_violation(conn, dataclasses.replace(event, reply=event.reply.replace(code=wrong)))


class NoByeAfterQuit(ServerCore):
    """QUIT closes the connection without the BYE that must answer it."""

    def on_QUIT(self, conn: CoreConnection, _: Message, now: float) -> None:
        self.end(conn, None, LeftReason.QUIT)


class WrongSender(RewritingCore):
    """DELIVER names its recipient as the sender."""

    def rewrite(self, conn: CoreConnection, message: Message) -> list[Message]:
        if message.TYPE != DELIVER.TYPE or conn.session.user is None:
            return [message]
        return [message.replace(sender=conn.session.user)]


class DuplicatesDelivery(RewritingCore):
    """Every DELIVER goes out twice."""

    def rewrite(self, conn: CoreConnection, message: Message) -> list[Message]:
        return [message, message] if message.TYPE == DELIVER.TYPE else [message]


class AckResultsReversed(ServerCore):
    """MSG_ACK lists the recipients' outcomes in reverse order."""

    def send(self, conn: CoreConnection, message: Message) -> None:
        if message.TYPE == MSG_ACK.TYPE:
            message = message.replace(results=message.results[::-1])
        super().send(conn, message)


class JoinedToSelf(ServerCore):
    """The user who logs in is told it joined, after AUTH_OK."""

    def login(self, conn: CoreConnection, name: str, key: str) -> None:
        super().login(conn, name, key)
        self.send(conn, JOINED(name=name))


class PongWrongNonce(ServerCore):
    """PONG answers a PING with another nonce (its lowest bit flipped)."""

    def on_PING(self, conn: CoreConnection, ping: Message, now: float) -> None:
        self.send(conn, PONG(nonce=ping.nonce ^ 1))


class LeftAlwaysDropped(ServerCore):
    """LEFT says DROPPED whatever the reason (QUIT, TIMEOUT, REPLACED, ERROR)."""

    def push_all(self, message: Message, *, exclude: CoreConnection | None) -> None:
        if message.TYPE == LEFT.TYPE:
            message = message.replace(reason=LeftReason.DROPPED)
        super().push_all(message, exclude=exclude)


class StoredNotFlagged(RewritingCore):
    """Stored messages are delivered at login without the STORED flag."""

    _delivering_stored = False

    def deliver_stored(self, conn: CoreConnection, key: str) -> None:
        self._delivering_stored = True
        try:
            super().deliver_stored(conn, key)
        finally:
            self._delivering_stored = False

    def rewrite(self, conn: CoreConnection, message: Message) -> list[Message]:
        if message.TYPE != DELIVER.TYPE or not self._delivering_stored:
            return [message]
        return [message.replace(flags=message.flags & ~DeliverFlags.STORED)]


# --- the catalogue ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """One faulty server and the spec rules a checker that catches it should cite."""

    name: str
    faulty: type[ServerCore] | type[ChatServer]  # a core (a decision) or a shell (the wire)
    rules: tuple[str, ...]  # any of these is a right catch
    ours: bool  # a fault of our own choosing (not in the list)
    needs_idle_timeout: bool = False  # shows only when the announced idle timeout is short

    @property
    def summary(self) -> str:
        return " ".join((self.faulty.__doc__ or "").split())

    @property
    def core(self) -> type[ServerCore]:
        return self.faulty if issubclass(self.faulty, ServerCore) else ServerCore

    @property
    def shell(self) -> type[ChatServer]:
        return self.faulty if issubclass(self.faulty, ChatServer) else ChatServer

    def build(self, store: Store, config: ServerConfig) -> ChatServer:
        return self.shell(store, config, core_class=self.core)


def _faults(*faults: Fault) -> dict[str, Fault]:
    unknown = {rule for fault in faults for rule in fault.rules} - set(RULES)
    assert not unknown, f"faults cite rules the spec does not define: {unknown}"
    return {fault.name: fault for fault in faults}


FAULTS: dict[str, Fault] = _faults(
    Fault("accepts_wrong_password", AcceptsWrongPassword, ("R6.2", "R6.3", "R6.5"), False),
    Fault("skips_joined", SkipsJoined, ("R8.1", "R6.6"), False),
    Fault("sends_left_twice", SendsLeftTwice, ("R8.2",), False),
    Fault("directed_to_everyone", DirectedToEveryone, ("R7.1", "R7.4", "R7.5"), False),
    Fault("echoes_broadcast", EchoesBroadcast, ("R7.8", "R7.1", "R7.4"), False),
    Fault("drops_long_texts", DropsLongTexts, ("R7.1", "R3.5", "R7.4", "R7.6"), False),
    Fault("wrong_crc_on_deliver", WrongCrcOnDeliver, ("R2.5",), False),
    Fault("mangles_non_ascii", ManglesNonAscii, ("R3.2", "R3.5"), False),
    Fault("closes_on_illegal", ClosesOnIllegal, ("R11.3", "R7.9", "R8.3"), False),
    Fault("wrong_ack_id", WrongAckId, ("R7.3",), False),
    Fault("delivers_after_quit", DeliversAfterQuit, ("R10.1", "R10.2", "R10.4", "R8.2"), False),
    Fault("loses_stored_messages", LosesStoredMessages, ("R7.7", "R3.6"), False),
    Fault("ignores_idle_timeout", IgnoresIdleTimeout, ("R9.2", "R6.8"), False, needs_idle_timeout=True),
    Fault("online_list_without_self", OnlineListWithoutSelf, ("R6.5",), True),
    Fault("wrong_error_code", WrongErrorCode, ("R11.1", "R2.1", "R2.2", "R2.3", "R2.4", "R2.5", "R2.6", "R2.7",
                                               "R3.4", "R4.10", "R11.3"), True),
    Fault("no_bye_after_quit", NoByeAfterQuit, ("R10.2",), True),
    Fault("wrong_sender", WrongSender, ("R7.5",), True),
    Fault("duplicates_delivery", DuplicatesDelivery, ("R7.6",), True),
    Fault("ack_results_reversed", AckResultsReversed, ("R7.4",), True),
    Fault("joined_to_self", JoinedToSelf, ("R8.1",), True),
    Fault("pong_wrong_nonce", PongWrongNonce, ("R9.1",), True),
    Fault("left_always_dropped", LeftAlwaysDropped, ("R8.2",), True),
    Fault("stored_not_flagged", StoredNotFlagged, ("R7.7", "R7.5"), True),
)


def build_server(fault: str | None, store: Store, config: ServerConfig) -> ChatServer:
    """The server for ``fault`` (``None`` or ``"none"``: the reference server)."""
    if fault in (None, "none"):
        return ChatServer(store, config)
    return FAULTS[fault].build(store, config)


# --- running the fuzzer against one (the kill test and bench/fuzz.py) -----------------------------

# The idle timeout the servers announce in HELLO_OK: short where the fault is in enforcing it,
# so that a run can wait it out within its budget; long elsewhere, so that the runs are not
# mostly waiting. The reference server must pass with either.
SHORT_IDLE_TIMEOUT_S = 3
LONG_IDLE_TIMEOUT_S = 30


def idle_timeout_for(fault: str) -> int:
    known = FAULTS.get(fault)
    return SHORT_IDLE_TIMEOUT_S if known is not None and known.needs_idle_timeout else LONG_IDLE_TIMEOUT_S


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class FuzzRun:
    """One ``dfachat fuzz server`` run against a faulty (or the reference) server."""

    fault: str  # "none" for the reference server
    seed: int
    exit_code: int
    seconds: float  # wall clock of the whole run: start, fuzzing, shrinking, report, stop
    report: dict[str, Any] | None  # the --json report
    output: str  # the fuzzer's stdout and stderr

    @property
    def failed(self) -> dict[str, list[dict[str, Any]]]:
        """Failed check id -> its failures, from the report."""
        if self.report is None:
            return {}
        return {
            check["id"]: check["failures"]
            for section in self.report["sections"]
            for check in section["checks"]
            if check["status"] == "failed"
        }

    @property
    def first_failure_s(self) -> float | None:
        """Seconds from the start of fuzzing to the first failing step (before shrinking), as reported."""
        value = (self.report or {}).get("settings", {}).get("first_failure_s")
        return None if value is None else float(value)

    @property
    def failed_rules(self) -> set[str]:
        return {check_id.partition("/")[0] for check_id in self.failed}

    @property
    def caught(self) -> bool:
        """Failed, with a check citing one of the fault's rules."""
        fault = FAULTS.get(self.fault)
        return fault is not None and self.exit_code == 1 and bool(self.failed_rules & set(fault.rules))

    def describe(self) -> str:
        """What the run found (the first failure of each check, cut short), for assertion messages."""
        lines = [f"{self.fault} seed {self.seed}: exit {self.exit_code} after {self.seconds:.1f} s"
                 f" (first failure at {self.first_failure_s} s)"]
        for check_id, failures in self.failed.items():
            detail = failures[0]["detail"] if failures else ""
            lines.append(f"  {check_id}: {detail if len(detail) < 300 else detail[:300] + '...'}")
        if self.report is None or self.exit_code not in (0, 1):
            lines.append(self.output[-3000:])
        return "\n".join(lines)


def fuzz_command(fault: str, port: int, workdir: Path, *, seed: int, idle_timeout: int,
                 options: Sequence[str] = ()) -> list[str]:
    """``dfachat fuzz server`` against ``fault``, started by the fuzzer with ``--target-cmd``."""
    target = [
        sys.executable, str(Path(__file__).resolve()), "--fault", fault, "--port", str(port),
        "--db", str(workdir / f"{fault}.db"), "--idle-timeout", str(idle_timeout), "--log-level", "error",
    ]
    accounts = [arg for name, password in DEMO_ACCOUNTS for arg in ("--account", f"{name}:{password}")]
    return [
        sys.executable, "-m", "dfachat", "fuzz", "server", f"127.0.0.1:{port}", *accounts,
        "--target-cmd", shlex.join(target), "--seed", str(seed), "--json", str(workdir / f"{fault}.json"),
        *options,
    ]


def fuzz(fault: str, workdir: Path, *, seed: int = 1, idle_timeout: int | None = None,
         options: Sequence[str] = (), timeout: float = 300) -> FuzzRun:
    """Run the fuzzer against ``fault`` ("none": the reference server) in ``workdir``."""
    if idle_timeout is None:
        idle_timeout = idle_timeout_for(fault)
    workdir.mkdir(parents=True, exist_ok=True)
    report_path = workdir / f"{fault}.json"
    report_path.unlink(missing_ok=True)
    command = fuzz_command(fault, free_port(), workdir, seed=seed, idle_timeout=idle_timeout, options=options)
    started = time.monotonic()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=workdir)
        code, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:
        code, output = -1, f"no verdict within {timeout} s\n{exc.stdout or ''}{exc.stderr or ''}"
    seconds = time.monotonic() - started
    report = json.loads(report_path.read_text(encoding="utf-8")) if report_path.exists() else None
    return FuzzRun(fault, seed, code, seconds, report, output)


# --- running one as a program --------------------------------------------------------------------

_LIMIT_FIELDS = {field.name for field in dataclasses.fields(Limits)}


def _account(text: str) -> tuple[str, str]:
    name, sep, password = text.partition(":")
    if not sep or not name or not password:
        raise argparse.ArgumentTypeError(f"expected NAME:PASSWORD, got {text!r}")
    return name, password


def _limit(text: str) -> tuple[str, int]:
    name, sep, value = text.partition("=")
    if not sep or name not in _LIMIT_FIELDS or not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected NAME=INTEGER with NAME one of {sorted(_LIMIT_FIELDS)}")
    return name, int(value)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Serve the reference dfachat server with one fault injected.")
    parser.add_argument("--fault", choices=["none", *FAULTS], default="none", help="the fault (none: reference)")
    parser.add_argument("--list", action="store_true", help="list the faults and exit")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--db", type=Path, help="the SQLite file (accounts are added to it)")
    parser.add_argument("--account", type=_account, action="append", metavar="NAME:PASSWORD",
                        help="an account to create (repeatable; default: the demo accounts)")
    parser.add_argument("--idle-timeout", type=int, metavar="S", help="the idle timeout announced (R9.2)")
    parser.add_argument("--limit", type=_limit, action="append", default=[], metavar="NAME=VALUE",
                        help="any other limit of dfachat.spec.Limits")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    return parser


async def _serve(server: ChatServer) -> None:
    await server.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: loop.create_task(server.shutdown()))
    await server.stopped.wait()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.list:
        for fault in FAULTS.values():
            print(f"{fault.name:26} {' '.join(fault.rules):24} {fault.summary}")
        return 0
    if args.db is None:
        print("faulty_servers: --db is required", file=sys.stderr)
        return 2
    limits = dict(args.limit)
    if args.idle_timeout is not None:
        limits["idle_timeout_s"] = args.idle_timeout
    configure_logging(args.log_level)
    store = Store(args.db, kdf=CHEAP_KDF)
    store.ensure_users(args.account or DEMO_ACCOUNTS)
    config = ServerConfig(host=args.host, port=args.port, limits=dataclasses.replace(LIMITS, **limits))
    asyncio.run(_serve(build_server(args.fault, store, config)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
