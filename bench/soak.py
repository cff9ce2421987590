"""Soak and fault harness: legitimate and hostile clients against a real server that restarts under them.

    python bench/soak.py [--clients 500] [--hostile 100] [--seconds 300] [--seed 1] [--tls]
                         [--mailboxes 20] [--max-rss-mb 256] [--think 4] [--actions 5,30] [--keep DIR]
                         [--protocol-version {1,2}] [--crash-share 0.3]

The design, the soundness of the accounting and the recorded runs: docs/RELIABILITY.md.

One load-generator process (asyncio, the sans-IO :class:`~dfachat.fsm.ClientSession`
and the codec) against the reference server run as ``python -m dfachat
server --log-json`` over a fresh SQLite file (accounts made beforehand with
cheap scrypt). Everything random comes from ``--seed``: each client and each
hostile slot has its own generator derived from it, so a seed replays the same
choices (the interleaving of the event loop and the kernel is not replayed).

* Legitimate clients, one per account ``soak<i>`` (each from its own
  source address 127.1.x.y): log in, send MSGs stop-and-wait (R7.2), broadcast or directed to
  1-3 accounts, each text stamped ``<sender index>:<seq>`` with a per-sender
  sequence; record every MSG_ACK outcome and every DELIVER; then QUIT, or
  sync (PING/PONG) and close or reset; stay offline a while; log in again.
  ``--mailboxes`` accounts ``mail<j>`` never log in before the end: what is
  sent to them waits in the database across both restarts.
* ``--protocol-version`` (default 2) is the one version every client and
  hostile slot offers. In version 2 each client is also its recipient's
  *application*: it hands each DELIVER on to the account's log (kept in the
  generator's memory, which stands for the application's durable store and
  survives the client's crashes) unless its id is at or below the highest id
  the log took, which it drops (R7.11), and it acknowledges each batch of
  bytes with one cumulative DELIVER_ACK after handing it on. ``--crash-share``
  of the clients are *crashing recipients*: each of their sessions crashes
  with ``crash_chance`` at a random DELIVER -- after its bytes arrived but
  before the application took it, after taking it but before acknowledging,
  or in the middle of writing the DELIVER_ACK frame -- by resetting the
  socket (RST), and logs in again after a short random delay.
* Hostile connections, ``--hostile`` slots each running one behaviour after
  another from its own address 127.2.x.y (see :data:`HOSTILE_BEHAVIOURS`).
* At 40 % of the run the server gets SIGTERM (graceful: BYE SHUTDOWN) and is
  started again on the same database; at 70 % it gets SIGKILL and is started
  again. Its RSS is sampled from ``/proc/<pid>/status`` (VmRSS, and VmHWM
  before each stop).
* After ``--seconds`` the hostile slots stop, every client ends its session,
  and every account (mailboxes included) logs in once more, syncs and QUITs.

The check, from what the clients recorded (times are the generator's
monotonic clock; "sync point" of a session = when it sent the last request
whose answer it read -- a MSG answered by MSG_ACK, a PING by PONG, a QUIT by
BYE -- or, ended by BYE SHUTDOWN, the restart's signal; every DELIVER the server queued before
handling that request precedes the answer):

* a broadcast, or a directed MSG acknowledged DELIVERED, must reach each
  recipient session that was logged in (AUTH_OK read) before the MSG was
  sent and whose sync point is after the MSG_ACK was read: exactly once;
* a MSG acknowledged QUEUED must reach the recipient account in a later
  session (stored delivery at login, R7.7), whatever restarts happened in
  between, SIGKILL included; it is only excused when a session that may have
  received it at login ended before any sync point;
* per recipient account, the texts of each sender arrive in increasing
  sequence, never twice (``duplicated``, ``reordered``);
* a legitimate session is *disturbed* when it receives an ERROR, a reply
  times out, a login fails, or the server ends it outside a restart; the
  server must not send anything the client's engine rejects (``violations``);
* the server's RSS stays under ``--max-rss-mb``; its log holds no ERROR line
  and no traceback (``unhandled_errors``).

In version 2 the check is at application level and excuses nothing, because
the server forgets a message only once acknowledged (R7.10) and every
account drains its inbox in the final round: every directed MSG whose
MSG_ACK said DELIVERED, LOSSY or QUEUED for a recipient, and every broadcast
for each account with a session logged in before it was sent that the server
provably still had afterwards (it answered a request sent after the MSG_ACK
was read, or sent a DELIVER with a later id), must be in that account's
application log exactly once (``lost``, ``duplicated``), each sender's texts
in increasing sequence (``reordered``), whatever crashes and restarts
happened in between. DELIVER ids must increase within a session, and a
DELIVER dropped as at or below the highest id taken must be one the log
holds (else a violation: R7.10's ids did not increase across sessions).

It prints progress and a summary on stderr and, last, one JSON line on stdout.
The exit status is 0 when every figure is at its target.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import os
import random
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dfachat.codec import encode
from dfachat.codec.frames import FrameDecoder
from dfachat.codec.messages import (  # type: ignore[attr-defined]
    AUTH_FAILED,
    AUTH_OK,
    BYE,
    DELIVER,
    DELIVER_ACK,
    ERROR,
    HELLO,
    HELLO_OK,
    LIST,
    MSG,
    MSG_ACK,
    PASS,
    PING,
    PONG,
    QUIT,
    USER,
    USERS,
    Message,
)
from dfachat.errors import FrameError
from dfachat.fsm import ClientSession, ConnectionClosed, ProtocolViolation
from dfachat.server.store import KdfParams, Store
from dfachat.spec import (
    ENCODINGS,
    HEADER,
    LIMITS,
    MAGIC,
    ByeReason,
    DeliverFlags,
    ErrorFlags,
    ListFlags,
    Outcome,
)

__all__ = ["HOSTILE_BEHAVIOURS", "SoakConfig", "check", "main", "passed", "run_soak", "summary"]

HOST = "127.0.0.1"
SOAK_KDF = KdfParams(n=1024)  # cheap scrypt: hundreds of accounts in a second, logins in a millisecond
LOGINS_PER_MINUTE = 25  # a client's own bound, under the server's max_logins_per_minute per address (R9.5)
CRASH_KINDS = ("arrived", "taken", "mid_frame")  # where a crashing recipient dies (see LegitConnection.crash_at)
REPLY_TIMEOUT_S = 20.0  # one answer (HELLO_OK, AUTH_OK, MSG_ACK, PONG, BYE) on a loaded 2-core machine
CONNECT_TIMEOUT_S = 10.0
RESTART_TIMEOUT_S = 20.0  # a stopped server's exit, a started one's "listening"
RESTARTS = ((0.4, "sigterm"), (0.7, "sigkill"))  # (fraction of --seconds, how)


@dataclass(frozen=True)
class SoakConfig:
    clients: int = 500  # legitimate clients, one account each, all online most of the time
    hostile: int = 100  # hostile slots, each one connection at a time
    seconds: float = 300.0  # the mixed phase; the restarts happen inside it
    seed: int = 1
    tls: bool = False
    mailboxes: int = 20  # accounts that log in only at the end
    max_rss_mb: float = 256.0  # the bound the server's RSS must stay under
    think_s: float = 4.0  # mean pause before each MSG of a client
    broadcast_share: float = 0.05  # the rest are directed
    actions: tuple[int, int] = (5, 30)  # MSGs per session
    offline_s: tuple[float, float] = (0.2, 3.0)  # pause between two sessions of a client
    hold_s: tuple[float, float] = (1.0, 8.0)  # how long a stalling or non-reading hostile connection stays
    restarts: tuple[tuple[float, str], ...] = RESTARTS
    workdir: Path | None = None  # keep the database, logs and certificate there (default: a temporary dir)
    progress_s: float = 5.0  # 0: no progress lines
    python: str = sys.executable
    protocol_version: int = 2  # the version every soak client offers, alone
    crash_share: float = 0.3  # version 2: the share of clients whose sessions may crash
    crash_chance: float = 0.5  # version 2: the chance that a session of such a client crashes
    crash_after: tuple[int, int] = (0, 40)  # version 2: DELIVERs a crashing session takes before it dies
    crash_delay_s: tuple[float, float] = (0.05, 0.5)  # version 2: before the crashed client logs in again


# --- what the clients record ---------------------------------------------------------------


@dataclass(slots=True)
class SentMsg:
    sender: int
    seq: int
    recipients: tuple[int, ...] | None  # account indexes; None: broadcast
    ghosts: tuple[str, ...]  # names that are no account (UNKNOWN_USER expected)
    t_send: float
    t_ack: float | None = None
    server_id: int = 0  # the MSG_ACK's server message id
    outcomes: dict[int, Outcome] = field(default_factory=dict)


@dataclass(slots=True)
class SessionRecord:
    account: int
    t_connect: float
    t_pass: float = float("inf")
    t_auth: float = float("inf")  # AUTH_OK read
    t_sync: float = float("-inf")  # the last sync point (see the module docstring)
    t_end: float = float("inf")
    end: str = ""  # quit, close, reset (ours); shutdown, eof, error, timeout (the server's or a failure)
    received: list[tuple[int, int, bool]] = field(default_factory=list)  # (sender, seq, stored) handed on
    last_id: int = 0  # version 2: the newest DELIVER's server message id (handed on or not)


@dataclass
class Run:
    """Shared state of one soak run."""

    config: SoakConfig
    names: list[str]  # account index -> name: clients, then mailboxes
    loop: asyncio.AbstractEventLoop
    index_of: dict[str, int] = field(default_factory=dict)
    port: int = 0
    ssl: ssl.SSLContext | None = None
    t0: float = 0.0
    deadline: float = 0.0
    stopping: bool = False  # the mixed phase is over
    sent: list[SentMsg] = field(default_factory=list)
    sessions: list[list[SessionRecord]] = field(default_factory=list)  # per account, in time order
    # per account, (sender, seq) in the order handed to the application: in version 2 the application's
    # durable log, which survives the client's crashes (the harness's memory stands for its disk)
    receipts: list[list[tuple[int, int]]] = field(default_factory=list)
    taken: list[int] = field(default_factory=list)  # version 2, per account: the highest server id handed on (R7.11)
    taken_ids: list[set[int]] = field(default_factory=list)  # version 2, per account: every id handed on
    suppressed: int = 0  # version 2: DELIVERs at or below ``taken``, dropped and acknowledged (R7.11)
    redelivered: int = 0  # version 2: DELIVERs flagged REDELIVERED
    crashes: Counter[str] = field(default_factory=Counter)  # version 2: crash kind -> sessions
    crash_rng: random.Random = field(default_factory=random.Random)  # where a crash cuts its DELIVER_ACK
    windows: list[list[float]] = field(default_factory=list)  # [signal time, ready time] of each restart
    disturbed: Counter[str] = field(default_factory=Counter)
    disturbances: list[str] = field(default_factory=list)  # the first few, for the report
    violations: list[str] = field(default_factory=list)
    corrupt: int = 0  # a DELIVER whose text is not one the harness sent
    hostile: Counter[str] = field(default_factory=Counter)  # behaviour -> connections
    hostile_answers: Counter[str] = field(default_factory=Counter)  # what the server answered them
    online: int = 0
    harness_errors: list[str] = field(default_factory=list)  # exceptions in the generator itself

    stopped: asyncio.Event = field(default_factory=asyncio.Event)  # set with ``stopping``

    def now(self) -> float:
        return self.loop.time()

    async def pause(self, seconds: float) -> None:
        """Sleep, but wake when the mixed phase ends."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.stopped.wait()

    def in_restart(self, start: float, end: float) -> bool:
        """Whether a restart window overlaps [start, end] (an unfinished window reaches now)."""
        for signalled, ready in self.windows:
            if start <= (ready if ready else self.now()) and end >= signalled:
                return True
        return False

    def disturb(self, kind: str, detail: str) -> None:
        self.disturbed[kind] += 1
        if len(self.disturbances) < 20:
            self.disturbances.append(f"{kind}: {detail}")


# --- a raw legitimate client ----------------------------------------------------------------


class Dropped(Exception):
    """The connection ended, or a reply did not come, while a client waited."""


class LegitConnection(asyncio.Protocol):
    """One legitimate session: the engine, the recorder, one outstanding request at a time.

    In version 2 it is also the recipient's application: it hands each DELIVER above the
    highest id already taken to the account's log (``Run.receipts``), drops the others
    (R7.11), and acknowledges everything a batch of bytes brought with one cumulative
    DELIVER_ACK once the batch was handed on. ``crash``, when set, kills the session at
    its ``after``-th DELIVER (see :meth:`crash_at`).
    """

    def __init__(self, run: Run, record: SessionRecord, crash: tuple[int, str] | None = None) -> None:
        self.run = run
        self.record = record
        self.session = ClientSession()
        self.crash = crash  # (DELIVERs handled first, kind in CRASH_KINDS)
        self.delivers = 0  # DELIVERs received in this session
        self.last_id = 0  # the newest DELIVER's id in this session (they must increase, R7.10)
        self.gone = asyncio.Event()  # set by finish: wakes the client's pauses
        self.transport: asyncio.Transport | None = None
        self.waiting: tuple[type, ...] = ()
        self.reply: asyncio.Future[Message] | None = None
        self.request_sent = 0.0  # the send time of the outstanding request (a sync point once answered)
        self.ended = False
        self.error: str = ""

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        for event in self.session.receive_data(data):
            if self.ended:
                return  # crashed in this batch: the rest is lost with the process
            if isinstance(event, DELIVER) and self.crash is not None and self.delivers >= self.crash[0]:
                self.crash_at(event)
                return
            self.handle(event)
        self.acknowledge()

    def acknowledge(self, partial: bool = False) -> None:
        """Version 2: one DELIVER_ACK for everything received and handed on (or dropped) so far (R7.11);
        ``partial``: only the first bytes of its frame, then the crash."""
        unacknowledged = self.session.unacknowledged
        if not unacknowledged or self.ended or self.transport is None or self.transport.is_closing():
            return
        if not self.session.can_send(DELIVER_ACK):
            return  # the session is ending (QUIT sent): the inbox keeps them for the next login
        frame = self.session.send(DELIVER_ACK(server_msg_id=unacknowledged[-1]))
        self.transport.write(frame[: self.run.crash_rng.randint(1, len(frame) - 1)] if partial else frame)

    def crash_at(self, deliver: DELIVER) -> None:
        """The client process dies at a DELIVER (its ``after``-th of the session), as ``crash[1]`` says:

        * ``arrived``: its bytes arrived but the application never saw it (nor the rest of the batch);
        * ``taken``: the application took it, the DELIVER_ACK was never sent;
        * ``mid_frame``: the application took it, the process died writing the DELIVER_ACK.

        What the application took stays in the account's log; everything else is gone. The socket is
        reset (RST, SO_LINGER 0) as a dead process's would be by the kernel with data unread.
        """
        assert self.crash is not None
        kind = self.crash[1]
        if kind != "arrived":
            self.handle(deliver)
        if kind == "mid_frame":
            self.acknowledge(partial=True)
        self.run.crashes[kind] += 1
        self.record.end = "crash"
        if self.transport is not None:
            sock = self.transport.get_extra_info("socket")
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()
        self.finish("crash")

    def eof_received(self) -> bool:
        for event in self.session.receive_data(b""):
            self.handle(event)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ended:
            self.finish("reset" if exc is not None else "eof")

    def handle(self, event: Any) -> None:
        run = self.run
        if isinstance(event, DELIVER):
            self.delivers += 1
            version2 = (self.session.version or 1) >= 2
            if version2:
                if event.server_msg_id <= self.last_id:
                    run.violations.append(f"{run.names[self.record.account]}: DELIVER {event.server_msg_id} "
                                          f"after {self.last_id} in one session (R7.10)")
                self.last_id = self.record.last_id = event.server_msg_id
                if event.flags & DeliverFlags.REDELIVERED:
                    run.redelivered += 1
                if event.server_msg_id <= run.taken[self.record.account]:
                    run.suppressed += 1  # the application has it already: dropped, acknowledged (R7.11)
                    if event.server_msg_id not in run.taken_ids[self.record.account]:
                        # it never had it: the server broke the increasing ids across sessions, and the
                        # drop R7.11 requires loses the message (counted lost); say which rule broke
                        run.violations.append(
                            f"{run.names[self.record.account]}: DELIVER {event.server_msg_id} "
                            f"({event.text.split(' ', 1)[0]}) below {run.taken[self.record.account]}, "
                            "taken earlier, but never taken itself (R7.10)"
                        )
                    return
            head = event.text.split(" ", 1)[0]
            try:
                sender, seq = (int(part) for part in head.split(":"))
                ok = run.names[sender] == event.sender
            except (ValueError, IndexError):
                ok = False
            if not ok:
                run.corrupt += 1
                return
            stored = bool(event.flags & DeliverFlags.STORED)
            self.record.received.append((sender, seq, stored))
            run.receipts[self.record.account].append((sender, seq))
            if version2:  # taken: with the log entry, as durably (R7.11)
                run.taken[self.record.account] = event.server_msg_id
                run.taken_ids[self.record.account].add(event.server_msg_id)
        elif isinstance(event, PING):
            if self.session.can_send(PONG) and self.transport is not None and not self.transport.is_closing():
                self.transport.write(self.session.send(PONG(nonce=event.nonce)))
        elif isinstance(event, (ProtocolViolation,)):
            run.violations.append(f"{run.names[self.record.account]}: {event}")
        elif isinstance(event, ERROR):
            self.error = f"ERROR {event.code.name}: {event.reason}"
            run.disturb("error", f"{run.names[self.record.account]}: {self.error}")
            if event.flags & ErrorFlags.FATAL:
                self.finish("error")
        elif isinstance(event, BYE):
            if event.reason == ByeReason.SHUTDOWN:
                # Every MSG acknowledged before the restart's signal was handled before this BYE; later
                # ones may have been too, but the signal time is what is known for sure.
                if run.windows:
                    self.record.t_sync = max(self.record.t_sync, run.windows[-1][0])
                self.finish("shutdown")
            else:
                self.answer(event)
        elif isinstance(event, ConnectionClosed):
            if not self.ended:
                self.finish("eof")
        elif self.waiting and isinstance(event, self.waiting):
            self.answer(event)
        # JOINED, LEFT: presence, not checked here

    def answer(self, event: Message) -> None:
        if self.reply is not None and not self.reply.done():
            self.record.t_sync = max(self.record.t_sync, self.request_sent)
            self.reply.set_result(event)

    def finish(self, how: str) -> None:
        """The session is over (``how`` says by whom)."""
        if self.ended:
            return
        self.ended = True
        record = self.record
        record.t_end = self.run.now()
        record.end = record.end or how
        if self.reply is not None and not self.reply.done():
            self.reply.set_exception(Dropped(how))
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self.gone.set()

    # requests
    def send(self, message: Message) -> None:
        if self.ended or self.transport is None:  # the server went away between two steps
            raise Dropped(self.record.end or "closed")
        self.transport.write(self.session.send(message))

    async def request(self, message: Message | None, *answers: type) -> Message:
        """Send ``message``; its answer (one of ``answers``), or Dropped."""
        if self.ended:
            raise Dropped(self.record.end)
        self.waiting = answers
        self.reply = self.run.loop.create_future()
        if message is not None:
            self.request_sent = self.run.now()
            self.send(message)
        try:
            async with asyncio.timeout(REPLY_TIMEOUT_S):
                return await self.reply
        except TimeoutError:
            self.record.end = "timeout"
            self.finish("timeout")
            raise Dropped(f"no {answers[0].__name__} within {REPLY_TIMEOUT_S} s") from None
        finally:
            self.waiting = ()

    async def expect(self, answer: type) -> Message:
        """The next ``answer`` without a request (the pages after AUTH_OK)."""
        return await self.request(None, answer)


def legit_address(index: int) -> str:
    """One source address per account: well under R1.5 and R9.5, whatever the pace."""
    return f"127.1.{index // 250}.{index % 250 + 1}"


def hostile_address(slot: int, flood: bool = False) -> str:
    return f"127.{3 if flood else 2}.{slot // 250}.{slot % 250 + 1}"


class Client:
    """A legitimate client: one account, its sessions one after another."""

    def __init__(self, run: Run, index: int, targets: list[int]) -> None:
        self.run = run
        self.index = index
        self.name = run.names[index]
        self.rng = random.Random(f"{run.config.seed}:client:{index}")
        self.encoding = self.rng.choice(list(ENCODINGS))  # the texts are ASCII: never lossy
        self.targets = targets  # accounts a directed MSG may name
        self.seq = 0
        self.msg_id = 0
        # its own generator, so that version 1's choices stay what the seed made them before crashes existed
        self.crash_rng = random.Random(f"{run.config.seed}:crash:{index}")
        self.crashy = (
            run.config.protocol_version >= 2 and index < run.config.clients
            and self.crash_rng.random() < run.config.crash_share
        )
        self.logins: deque[float] = deque()  # when its recent sessions began (LOGINS_PER_MINUTE)

    def crash_plan(self) -> tuple[int, str] | None:
        """Whether and where the next session dies (never once the mixed phase is over)."""
        config = self.run.config
        if not self.crashy or self.run.stopping or self.crash_rng.random() >= config.crash_chance:
            return None
        return self.crash_rng.randint(*config.crash_after), self.crash_rng.choice(CRASH_KINDS)

    async def connect(self, crash: tuple[int, str] | None = None) -> LegitConnection | None:
        """A logged-in session, or None (recorded as disturbed unless a restart explains it)."""
        run = self.run
        while len(self.logins) >= LOGINS_PER_MINUTE:  # crashing clients log in often: stay under R9.5
            wait = self.logins[0] + 61.0 - run.now()
            if wait <= 0:
                self.logins.popleft()
            else:
                await asyncio.sleep(wait)
        self.logins.append(run.now())
        record = SessionRecord(self.index, run.now())
        conn = LegitConnection(run, record, crash)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await run.loop.create_connection(
                    lambda: conn, HOST, run.port, ssl=run.ssl, local_addr=(legit_address(self.index), 0),
                    server_hostname=HOST if run.ssl else None,
                )
        except (OSError, TimeoutError) as exc:
            record.t_end = run.now()
            if not run.in_restart(record.t_connect, record.t_end):
                run.disturb("connect", f"{self.name}: {exc!r}")
            return None
        run.sessions[self.index].append(record)
        try:
            version = run.config.protocol_version
            await conn.request(HELLO(versions=(version,), encoding=self.encoding, software="soak"), HELLO_OK)
            conn.send(USER(name=self.name))
            record.t_pass = run.now()
            reply = await conn.request(PASS(password=password_of(self.name)), AUTH_OK, AUTH_FAILED)
            if isinstance(reply, AUTH_FAILED):
                run.disturb("login", f"{self.name}: AUTH_FAILED")
                conn.finish("error")
                return None
            record.t_auth = run.now()
            more = reply.flags & ListFlags.MORE
            while more:  # the rest of the online list, beyond max_names_per_frame
                page = await conn.expect(USERS)
                more = page.flags & ListFlags.MORE
        except Dropped as exc:
            self.ended(conn, f"login: {exc}")
            return None
        run.online += 1
        return conn

    def ended(self, conn: LegitConnection, doing: str) -> None:
        """Judge a session the server (or a timeout) ended; an ERROR was counted when it came."""
        record = conn.record
        if conn.error or record.end == "crash":  # counted when it came / our own doing
            return
        if record.end in ("shutdown", "eof", "reset") and self.run.in_restart(record.t_connect, record.t_end):
            return
        self.run.disturb(record.end or "ended", f"{self.name}: {doing}")

    async def run_forever(self) -> None:
        run = self.run
        config = run.config
        rng = self.rng
        while not run.stopping:
            conn = await self.connect(self.crash_plan())
            if conn is None:
                await asyncio.sleep(rng.uniform(0.2, 0.6))
                continue
            try:
                for _ in range(rng.randint(*config.actions)):
                    await self.pause(conn, rng.expovariate(1 / config.think_s))
                    if run.stopping or conn.ended:
                        break
                    if rng.random() < 0.1:
                        await conn.request(PING(nonce=rng.getrandbits(32)), PONG)
                    else:
                        await self.say(conn)
                await self.leave(conn, "quit" if run.stopping else rng.choice(("quit", "quit", "close", "reset")))
            except Dropped as exc:
                self.ended(conn, str(exc))
            run.online -= 1
            if conn.record.end == "crash":  # a crashed process is restarted at once
                await asyncio.sleep(self.crash_rng.uniform(*config.crash_delay_s))
            elif not run.stopping:
                await run.pause(rng.uniform(*config.offline_s))

    async def pause(self, conn: LegitConnection, seconds: float) -> None:
        """Sleep, but wake when the mixed phase ends or the session does (a crash)."""
        waits = [self.run.loop.create_task(self.run.stopped.wait()), self.run.loop.create_task(conn.gone.wait())]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()

    async def say(self, conn: LegitConnection) -> None:
        run, rng = self.run, self.rng
        self.seq += 1
        self.msg_id = self.msg_id % 0xFFFFFFFF + 1
        ghosts: tuple[str, ...] = ()
        if rng.random() < run.config.broadcast_share:
            recipients: tuple[int, ...] | None = None
            names: tuple[str, ...] = ()
        else:
            recipients = tuple(rng.sample(self.targets, rng.randint(1, 3)))
            if self.index in recipients:
                recipients = tuple(r for r in recipients if r != self.index) or (self.targets[0],)
            if rng.random() < 0.02:
                ghosts = (f"ghost{rng.randrange(1000)}",)
            names = tuple(run.names[r] for r in recipients) + ghosts
        text = f"{self.index}:{self.seq} " + "x" * rng.randrange(64)
        sent = SentMsg(self.index, self.seq, recipients, ghosts, run.now())
        run.sent.append(sent)
        ack = await conn.request(MSG(msg_id=self.msg_id, recipients=names, text=text), MSG_ACK)
        sent.t_send = conn.request_sent
        sent.t_ack = run.now()
        sent.server_id = ack.server_msg_id
        for result in ack.results:
            if recipients is not None and result.name not in ghosts:
                sent.outcomes[run.index_of[result.name]] = result.outcome
            elif result.outcome is not Outcome.UNKNOWN_USER:
                run.disturb("outcome", f"{result.name} was {result.outcome.name}, expected UNKNOWN_USER")

    async def leave(self, conn: LegitConnection, how: str) -> None:
        record = conn.record
        if how == "quit":
            await conn.request(QUIT(), BYE)
            record.end = "quit"
            conn.finish("quit")
            return
        await conn.request(PING(nonce=0), PONG)  # a sync point, then gone without QUIT
        record.end = how
        if how == "reset" and conn.transport is not None:
            conn.transport.abort()
        conn.finish(how)

    async def final(self) -> None:
        """After the mixed phase: one more session, to collect stored messages, then QUIT.

        In version 2 the inbox comes a window at a time, as acknowledgements arrive (R7.12): it
        syncs (PING, PONG) until two rounds in a row bring no DELIVER and leave none unacknowledged."""
        for _ in range(5):
            conn = await self.connect()
            if conn is None:
                await asyncio.sleep(0.5)
                continue
            try:
                await conn.request(PING(nonce=1), PONG)
                quiet = 0
                while self.run.config.protocol_version >= 2 and quiet < 2:
                    before = conn.delivers
                    await conn.request(PING(nonce=2), PONG)
                    quiet = quiet + 1 if conn.delivers == before and not conn.session.unacknowledged else 0
                await self.leave(conn, "quit")
            except Dropped as exc:
                self.ended(conn, f"final: {exc}")
            self.run.online -= 1
            return
        self.run.disturb("final", f"{self.name}: could not log in at the end")


def password_of(name: str) -> str:
    return f"pw-{name}"


# --- hostile connections -------------------------------------------------------------------------


def _frame(message: Message, version: int = 1) -> bytes:
    return encode(message, "utf-8", version)


class Hostile:
    """One hostile slot: one connection at a time, each running a behaviour drawn from the seed."""

    def __init__(self, run: Run, slot: int) -> None:
        self.run = run
        self.slot = slot
        self.rng = random.Random(f"{run.config.seed}:hostile:{slot}")
        self.account = f"bad{slot}"
        self.behaviour = ""
        self.how = ""  # how the last read ended
        self.version = run.config.protocol_version

    def frame(self, message: Message) -> bytes:
        """A frame after HELLO: in the version the HELLO offers (R5.2)."""
        return _frame(message, self.version)

    def hello(self) -> bytes:
        return _frame(HELLO(versions=(self.version,), encoding="utf-8", software="hostile"))  # version 1 (R5.2)

    async def open(self, *, flood: bool = False, rcvbuf: int | None = None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        run = self.run
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.bind((hostile_address(self.slot, flood), 0))
            sock.setblocking(False)
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await run.loop.sock_connect(sock, (HOST, run.port))
                streams = await asyncio.open_connection(
                    sock=sock, ssl=run.ssl, server_hostname=HOST if run.ssl else None, limit=1 << 20
                )
            run.hostile[self.behaviour] += 1  # a connection made
            return streams
        except BaseException:
            sock.close()
            raise

    async def run_forever(self) -> None:
        run = self.run
        while not run.stopping:
            behaviour = self.rng.choice(HOSTILE_BEHAVIOURS)
            self.behaviour = behaviour.__name__
            try:
                async with asyncio.timeout(run.config.hold_s[1] + 30):
                    await behaviour(self)
            except ConnectionRefusedError:  # the server is restarting
                self.note("refused (restart)")
                await run.pause(0.2)
            except (OSError, TimeoutError):  # reset by the server, usually (it closed with our bytes unread)
                self.note("reset")
            except Exception as exc:  # a bug of the harness: say so, keep the run going
                self.note(f"harness error {exc!r}")
                await run.pause(0.2)

    def note(self, answer: str) -> None:
        """Count what the server did to this behaviour."""
        self.run.hostile_answers[f"{self.behaviour}: {answer}"] += 1

    async def messages(self, reader: asyncio.StreamReader, timeout: float) -> Any:
        """The server's messages, decoded as they come, until it closes or ``timeout`` passes;
        then None when it closed (:attr:`how` says how it ended)."""
        decoder = FrameDecoder()
        decoder.versions = frozenset({1, self.version})  # an ERROR answering HELLO is in version 1 (R5.2)
        deadline = self.run.now() + timeout
        self.how = f"open after {timeout:g} s"
        while (left := deadline - self.run.now()) > 0 and not self.run.stopping:
            try:
                async with asyncio.timeout(min(left, 0.5)):  # a cancelled read loses nothing
                    data = await reader.read(1 << 16)
            except TimeoutError:
                continue
            except OSError:  # a close with our bytes unread is a reset
                self.how = "reset by the server"
                yield None
                return
            if not data:
                self.how = "closed by the server"
                yield None
                return
            decoder.feed(data)
            while True:
                try:
                    message = decoder.next_message()
                except FrameError as exc:  # the server sent something illegal
                    self.run.violations.append(f"hostile {self.slot} ({self.behaviour}): {exc}")
                    return
                if message is None:
                    break
                yield message

    async def read_answer(self, reader: asyncio.StreamReader, timeout: float = 5.0) -> None:
        """Read what the server says until it closes (bounded); note its first ERROR."""
        noted = False
        async for message in self.messages(reader, timeout):
            if isinstance(message, ERROR) and not noted:
                self.note(f"ERROR {message.code.name} [{message.rule}]")
                noted = True
        self.note(self.how)

    async def login(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """HELLO, USER and PASS at once (pipelined); whether AUTH_OK came."""
        writer.write(self.hello() + self.frame(USER(name=self.account)) + self.frame(PASS(password=password_of(self.account))))
        async for message in self.messages(reader, REPLY_TIMEOUT_S):
            if isinstance(message, AUTH_OK):
                return True
            if message is None or isinstance(message, (AUTH_FAILED, ERROR)):
                self.note(f"login refused: {type(message).__name__ if message else self.how}")
                return False
        return False

    async def hold(self) -> None:
        await self.run.pause(self.rng.uniform(*self.run.config.hold_s))


async def garbage(h: Hostile) -> None:
    """Random bytes (not the magic): BAD_MAGIC, fatal (R2.1)."""
    reader, writer = await h.open()
    data = bytes(h.rng.getrandbits(8) for _ in range(h.rng.randint(1, 512)))
    writer.write(b"X" + data)
    await h.read_answer(reader)
    writer.transport.abort()


async def bad_crc(h: Hostile) -> None:
    """A HELLO whose checksum is wrong (R2.6)."""
    reader, writer = await h.open()
    frame = bytearray(h.hello())
    frame[-1] ^= 0xFF
    writer.write(bytes(frame))
    await h.read_answer(reader)
    writer.transport.abort()


async def oversized(h: Hostile) -> None:
    """A header announcing more than max_frame bytes (R2.4)."""
    reader, writer = await h.open()
    head = HEADER.build({"magic": MAGIC, "version": 1, "type": HELLO.TYPE, "length": LIMITS.max_frame + h.rng.randint(1, 1 << 20)})
    writer.write(head + b"\0" * h.rng.randint(0, 256))
    await h.read_answer(reader)
    writer.transport.abort()


async def truncated(h: Hostile) -> None:
    """A frame whose length field is shorter than its payload: the checksum lands in the payload."""
    reader, writer = await h.open()
    frame = bytearray(h.hello())
    frame[7] = max(frame[7] - h.rng.randint(1, 4), 0)
    writer.write(bytes(frame))
    await h.read_answer(reader)
    writer.transport.abort()


async def drop_mid_frame(h: Hostile) -> None:
    """Part of a HELLO, then a close or a reset."""
    _, writer = await h.open()
    frame = h.hello()
    writer.write(frame[: h.rng.randint(1, len(frame) - 1)])
    await asyncio.sleep(h.rng.uniform(0, 0.2))
    if h.rng.random() < 0.5:
        writer.transport.abort()
    else:
        writer.close()


async def half_frame_stall(h: Hostile) -> None:
    """Part of a frame, then silence while holding the connection (R9.2 ends it after idle_timeout_s)."""
    reader, writer = await h.open()
    frame = h.hello()
    writer.write(frame[: h.rng.randint(1, len(frame) - 1)])
    await h.hold()
    writer.transport.abort()


async def drop_mid_login(h: Hostile) -> None:
    """HELLO and USER, then part of PASS (or all of it), then gone before the answer."""
    reader, writer = await h.open()
    writer.write(h.hello() + h.frame(USER(name=h.account if h.rng.random() < 0.5 else f"soak{h.rng.randrange(100)}")))
    password = h.frame(PASS(password="wrong" if h.rng.random() < 0.5 else password_of(h.account)))
    writer.write(password[: h.rng.randint(1, len(password))])
    await asyncio.sleep(h.rng.uniform(0, 0.05))
    writer.transport.abort()


async def drop_mid_message(h: Hostile) -> None:
    """Logged in, then part of a MSG, then gone."""
    reader, writer = await h.open()
    if await h.login(reader, writer):
        frame = h.frame(MSG(msg_id=1, recipients=(), text="half " * h.rng.randint(1, 100)))
        writer.write(frame[: h.rng.randint(1, len(frame) - 1)])
        await asyncio.sleep(h.rng.uniform(0, 0.2))
    writer.transport.abort()


async def stop_reading(h: Hostile) -> None:
    """Logged in with a tiny receive buffer, reads nothing, asks for the user list over and over:
    the server must give up on it (SLOW_CONSUMER, R9.3) rather than buffer without bound."""
    reader, writer = await h.open(rcvbuf=4096)
    if await h.login(reader, writer):
        writer.transport.pause_reading()
        listing = h.frame(LIST())
        end = h.run.now() + h.rng.uniform(*h.run.config.hold_s)
        while h.run.now() < end and not h.run.stopping and not _gone(writer):
            writer.write(listing * 20)
            await asyncio.sleep(0.05)
        if _gone(writer):  # the server reset it (it cannot have read an ERROR)
            h.note("cut off by the server")
    writer.transport.abort()


def _gone(writer: asyncio.StreamWriter) -> bool:
    """Whether the connection is over (for TLS too, whose transport does not say so while paused)."""
    sock = writer.get_extra_info("socket")
    if writer.transport.is_closing() or sock is None or sock.fileno() < 0:
        return True
    tls = getattr(writer.transport, "_ssl_protocol", None)  # asyncio's TLS layer: no public way to ask
    return tls is not None and getattr(getattr(tls, "_state", None), "name", "WRAPPED") != "WRAPPED"


async def wrong_state(h: Hostile) -> None:
    """Messages the state does not allow: before HELLO, before login, or again after login (R12.x)."""
    reader, writer = await h.open()
    choice = h.rng.randrange(4)
    if choice == 0:
        writer.write(_frame(MSG(msg_id=1, recipients=(), text="too early")))
    elif choice == 1:
        writer.write(h.hello() + h.frame(PASS(password="no user yet")))
    elif choice == 2:
        writer.write(h.hello() + h.hello())
    elif await h.login(reader, writer):
        writer.write(h.frame(USER(name=h.account)) + h.frame(HELLO_OK(
            version=1, max_frame=1, max_text=1, idle_timeout_s=1, max_recipients=1, login_attempts=1,
            encoding="utf-8", software="x")))
    await h.read_answer(reader, timeout=2.0)
    writer.transport.abort()


async def login_flood(h: Hostile) -> None:
    """Wrong passwords, for its own, unknown and legitimate accounts, from one flooding address
    on 3 connections at once: back-off (R6.4), closing after login_attempts (R6.3), RATE_LIMITED
    beyond R9.5. The back-off grows to backoff_max_ms, so a connection may wait longer than we do."""

    async def one() -> None:
        reader, writer = await h.open(flood=True)
        writer.write(h.hello())
        for _ in range(LIMITS.login_attempts):
            name = h.rng.choice((h.account, f"nobody{h.rng.randrange(1000)}", f"soak{h.rng.randrange(100)}"))
            writer.write(h.frame(USER(name=name)) + h.frame(PASS(password="wrong")))
        await h.read_answer(reader, timeout=10.0)
        writer.transport.abort()

    await asyncio.gather(one(), one(), one())


async def half_close(h: Hostile) -> None:
    """Logs in, then half-closes its side (EOF; TLS has no half-close: a close) and reads what follows."""
    reader, writer = await h.open()
    if await h.login(reader, writer):
        if h.run.ssl is not None:
            writer.close()
            return
        writer.write_eof()
        await h.read_answer(reader, timeout=2.0)
    writer.transport.abort()


HOSTILE_BEHAVIOURS: tuple[Callable[[Hostile], Any], ...] = (
    garbage, bad_crc, oversized, truncated, drop_mid_frame, half_frame_stall, drop_mid_login,
    drop_mid_message, stop_reading, wrong_state, login_flood, half_close,
)


# --- the server process ------------------------------------------------------------------------


class ServerProcess:
    """``dfachat server`` as a child; each start logs to its own file."""

    def __init__(self, run: Run, db: Path, workdir: Path, tls: tuple[Path, Path] | None) -> None:
        self.run = run
        self.db = db
        self.workdir = workdir
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None
        self.logs: list[Path] = []
        self.max_rss_kb = 0
        self.cpu_now = 0.0  # CPU seconds of the running server, at the last sample
        self.cpu_done = 0.0  # of the servers stopped so far

    async def start(self) -> None:
        log = self.workdir / f"server-{len(self.logs)}.log"
        self.logs.append(log)
        argv = [
            self.run.config.python, "-m", "dfachat", "server", "--db", str(self.db), "--port", str(self.run.port),
            "--log-json", "--log-level", "warning",
            # every legitimate client logs in from 127.1.x.y, two per address; these bounds stay the defaults
        ]
        if self.tls is not None:
            argv += ["--tls-cert", str(self.tls[0]), "--tls-key", str(self.tls[1])]
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=out)
        deadline = time.monotonic() + RESTART_TIMEOUT_S
        while b"listening on" not in log.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start: {log.read_text(errors='replace')[-2000:]}")
            await asyncio.sleep(0.05)

    def sample(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith(("VmRSS:", "VmHWM:")):
                    self.max_rss_kb = max(self.max_rss_kb, int(line.split()[1]))
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            self.cpu_now = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    async def stop(self, how: str) -> int | None:
        """SIGTERM (graceful) or SIGKILL; the exit status."""
        proc = self.proc
        assert proc is not None
        self.sample()
        proc.send_signal(signal.SIGKILL if how == "sigkill" else signal.SIGTERM)
        deadline = time.monotonic() + RESTART_TIMEOUT_S
        while proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            self.run.disturb("server", "did not stop within the bound after SIGTERM")
        self.proc = None
        self.cpu_done += self.cpu_now
        self.cpu_now = 0.0
        return proc.returncode

    async def sample_forever(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(0.25)


def count_unhandled(logs: list[Path]) -> tuple[int, list[str]]:
    """ERROR and CRITICAL lines of the JSON log, and blocks of anything else (tracebacks)."""
    count, samples = 0, []
    for log in logs:
        in_block = False
        for line in log.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                entry = None
            if isinstance(entry, dict):
                in_block = False
                if entry.get("level") in ("error", "critical"):
                    count += 1
                    samples.append(line[:500])
            elif line.startswith("dfachat server listening"):
                in_block = False
            elif not in_block:
                in_block = True
                count += 1
                samples.append(line[:500])
    return count, samples[:10]


# --- the run ------------------------------------------------------------------------------------


def make_accounts(db: Path, names: list[str]) -> None:
    store = Store(db, kdf=SOAK_KDF)
    store._db.execute("PRAGMA synchronous=OFF")  # setup only: the server opens its own connection
    store._db.execute("BEGIN")
    for name in names:
        store.add_user(name, password_of(name))
    store._db.execute("COMMIT")
    store.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


async def _soak(config: SoakConfig, workdir: Path) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    clients = [f"soak{i}" for i in range(config.clients)]
    mailboxes = [f"mail{j}" for j in range(config.mailboxes)]
    names = clients + mailboxes
    run = Run(config, names, loop)
    run.index_of = {name: i for i, name in enumerate(names)}
    run.sessions = [[] for _ in names]
    run.receipts = [[] for _ in names]
    run.taken = [0 for _ in names]
    run.taken_ids = [set() for _ in names]
    run.crash_rng = random.Random(f"{config.seed}:cut")
    run.port = free_port()
    db = workdir / "soak.db"
    make_accounts(db, names + [f"bad{k}" for k in range(config.hostile)])
    tls = None
    if config.tls:
        from dfachat.server.tls import make_certificate

        tls = make_certificate(workdir / "tls", force=True)
        run.ssl = ssl.create_default_context(cafile=str(tls[0]))
    server = ServerProcess(run, db, workdir, tls)
    await server.start()
    try:
        sampler = loop.create_task(server.sample_forever())
        run.t0 = loop.time()
        cpu_start = time.process_time()
        load_before = os.getloadavg()[0]
        run.deadline = run.t0 + config.seconds
        targets = list(range(len(names)))
        legit = [Client(run, i, targets) for i in range(config.clients)]
        tasks = [loop.create_task(c.run_forever()) for c in legit]
        hostile_tasks = [loop.create_task(Hostile(run, k).run_forever()) for k in range(config.hostile)]
        exits: list[tuple[str, int | None]] = []

        async def restarts() -> None:
            for fraction, how in config.restarts:
                await asyncio.sleep(max(run.t0 + fraction * config.seconds - loop.time(), 0))
                window = [loop.time(), 0.0]
                run.windows.append(window)
                exits.append((how, await server.stop(how)))
                await server.start()
                window[1] = loop.time()
                progress(f"restart after {how}: the server is back after {window[1] - window[0]:.1f} s")

        def progress(text: str) -> None:
            if config.progress_s:
                print(f"[soak {loop.time() - run.t0:6.1f} s] {text}", file=sys.stderr, flush=True)

        async def report_forever() -> None:
            while config.progress_s:
                await asyncio.sleep(config.progress_s)
                acked = sum(1 for m in run.sent if m.t_ack is not None)
                progress(
                    f"online {run.online}, acked {acked}, hostile connections {sum(run.hostile.values())}, "
                    f"server rss {server.max_rss_kb / 1024:.0f} MB, disturbed {sum(run.disturbed.values())}"
                )

        reporter = loop.create_task(report_forever())
        restarter = loop.create_task(restarts())
        await asyncio.sleep(config.seconds)
        await restarter  # bounded by RESTART_TIMEOUT_S per restart
        run.stopping = True
        run.stopped.set()
        progress("mixed phase over: hostile slots stop, clients end their sessions")
        await _bounded(run, hostile_tasks, config.hold_s[1] + 40)
        await _bounded(run, tasks, REPLY_TIMEOUT_S * 3 + 10)
        progress("final round: every account logs in once more")
        finals = [Client(run, i, targets) for i in range(len(names))]
        gate = asyncio.Semaphore(100)

        async def final(client: Client) -> None:
            async with gate:
                await client.final()

        await _bounded(run, [loop.create_task(final(c)) for c in finals], REPLY_TIMEOUT_S * 10)
        exits.append(("sigterm", await server.stop("sigterm")))
    finally:  # whatever happened to the harness, no server outlives the run
        if server.proc is not None and server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()
    reporter.cancel()
    sampler.cancel()
    elapsed = loop.time() - run.t0
    generator_cpu = time.process_time() - cpu_start
    unhandled, samples = count_unhandled(server.logs)
    report = check(run)
    report.update(
        hostile_connections=sum(run.hostile.values()),
        server_max_rss_mb=round(server.max_rss_kb / 1024, 1),
        max_rss_bound_mb=config.max_rss_mb,
        unhandled_errors=unhandled,
        unhandled_samples=samples,
        server_exits=exits,
        hostile_behaviours=dict(sorted(run.hostile.items())),
        hostile_answers=dict(sorted(run.hostile_answers.items())),
        restart_downtime_s=[round(ready - signalled, 1) for signalled, ready in run.windows],
        clients=config.clients,
        hostile=config.hostile,
        seconds=config.seconds,
        elapsed_s=round(elapsed, 1),
        server_cpu_s=round(server.cpu_done, 1),
        generator_cpu_s=round(generator_cpu, 1),
        load_average=[round(load_before, 2), round(os.getloadavg()[0], 2)],
        seed=config.seed,
        tls=config.tls,
    )
    return report


async def _bounded(run: Run, tasks: list[asyncio.Task[Any]], timeout: float) -> None:
    """Wait for ``tasks`` up to ``timeout``, then cancel the rest; note the ones that failed."""
    if not tasks:
        return
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            run.harness_errors.append(repr(task.exception()))
    if pending:
        run.harness_errors.append(f"{len(pending)} tasks still running after {timeout:g} s, cancelled")
        await asyncio.wait(pending, timeout=5)


# --- the check ------------------------------------------------------------------------------------


def check(run: Run) -> dict[str, Any]:
    """The figures, from what the clients recorded (see the module docstring)."""
    sessions = run.sessions
    auth_times = [[s.t_auth for s in per] for per in sessions]
    # how many times each account received each (sender, seq), and order breaks
    duplicated = reordered = 0
    got: list[Counter[tuple[int, int]]] = []
    for receipts in run.receipts:
        seen: Counter[tuple[int, int]] = Counter()
        last: dict[int, int] = {}
        for sender, seq in receipts:
            key = (sender, seq)
            seen[key] += 1
            if seen[key] > 1:
                duplicated += 1
            elif seq < last.get(sender, 0):
                reordered += 1
            last[sender] = max(last.get(sender, 0), seq)
        got.append(seen)

    # A client's sessions follow one another: ordered by AUTH_OK (the logged-in ones) and by end.
    logged_in = [[x for x in per if x.t_auth != float("inf")] for per in sessions]
    auth_times = [[x.t_auth for x in per] for per in logged_in]
    end_times = [[x.t_end for x in per] for per in sessions]

    version2 = run.config.protocol_version >= 2

    def online_throughout(account: int, m: SentMsg) -> bool:
        """A session of ``account`` logged in before the MSG was sent and synced after its ACK was read."""
        i = bisect.bisect_left(auth_times[account], m.t_send) - 1
        return i >= 0 and logged_in[account][i].t_sync > (m.t_ack or 0)

    def online_at_ack(account: int, m: SentMsg) -> bool:
        """Version 2: a session of ``account`` logged in before the MSG was sent that the server still
        had after taking the MSG -- it answered a later request, or sent a DELIVER with a later id --
        so the MSG went to its inbox (R7.10) and must reach the application, whatever happened to
        that session afterwards. (Still open when the ACK was read proves nothing: the server may
        have ended it, for one, as a slow consumer, before the client read that.)"""
        i = bisect.bisect_left(auth_times[account], m.t_send) - 1
        if i < 0:
            return False
        record = logged_in[account][i]
        return record.t_sync > (m.t_ack or 0) or record.last_id > m.server_id

    def stored_required(account: int, m: SentMsg) -> bool:
        """Whether a QUEUED MSG can be required: every session that may have received it at login
        (logged in after the MSG was sent, up to the first whose PASS left after the ACK came) synced."""
        for x in sessions[account][bisect.bisect_right(end_times[account], m.t_send):]:
            if x.t_auth == float("inf"):
                if x.t_pass != float("inf"):
                    return False  # PASS sent, no AUTH_OK read: it may have been logged in, and lost it
                continue
            if x.t_auth < m.t_send:
                continue  # logged in before: the MSG found it offline, it cannot get it at login
            if x.t_sync <= x.t_auth:
                return False  # ended before any sync point: what it got at login may be lost
            if x.t_pass > (m.t_ack or 0):
                return True  # its login came after the MSG was stored: it, or one before, got it
        return False  # no later session (not expected: every account logs in at the end)

    acked = required = delivered = lost = queued = misrouted = unchecked_queued = 0
    lost_samples: list[str] = []
    everyone = range(run.config.clients)
    for m in run.sent:
        if m.t_ack is None:
            continue  # in flight at a restart or a drop: nothing was promised
        acked += 1
        key = (m.sender, m.seq)
        if m.recipients is None:
            live = online_at_ack if version2 else online_throughout
            expected = [a for a in everyone if a != m.sender and live(a, m)]
            stored: list[int] = []
        else:
            expected, stored = [], []
            for account in set(m.recipients):
                outcome = m.outcomes.get(account)
                if outcome in (Outcome.DELIVERED, Outcome.LOSSY):
                    if version2 or online_throughout(account, m):  # version 2: in the inbox until taken
                        expected.append(account)
                elif outcome is Outcome.QUEUED:
                    queued += 1
                    if online_throughout(account, m):
                        misrouted += 1  # it was online all along: should have been delivered
                    if version2 or stored_required(account, m):  # version 2 forgets nothing unacknowledged
                        stored.append(account)
                    else:
                        unchecked_queued += 1
                else:
                    misrouted += 1
        for account in expected + stored:
            required += 1
            if got[account][key]:
                delivered += 1
            else:
                lost += 1
                if len(lost_samples) < 10:
                    lost_samples.append(f"{run.names[m.sender]}:{m.seq} -> {run.names[account]}"
                                        f" ({'stored' if account in stored else 'live'})")
    # a directed MSG must never reach an account it did not name
    strays = 0
    named = {(m.sender, m.seq): m.recipients for m in run.sent}
    for account, seen in enumerate(got):
        for key in seen:
            recipients = named.get(key, ())
            if recipients is not None and account not in recipients:
                strays += 1
    logins = sorted(x.t_auth - x.t_connect for per in sessions for x in per if x.t_auth != float("inf"))
    acks = sorted(m.t_ack - m.t_send for m in run.sent if m.t_ack is not None)
    return {
        "login_ms": _quantiles(logins),
        "ack_ms": _quantiles(acks),
        "acked": acked,
        "sent": len(run.sent),
        "required": required,
        "delivered": delivered,
        "lost": lost,
        "duplicated": duplicated,
        "reordered": reordered,
        "misrouted": misrouted + strays + run.corrupt,
        "queued": queued,
        "queued_unchecked": unchecked_queued,
        "received": sum(len(r) for r in run.receipts),
        "sessions": sum(len(per) for per in sessions),
        "disturbed": sum(run.disturbed.values()),
        "disturbed_by_kind": dict(run.disturbed),
        "disturbances": run.disturbances,
        "violations": len(run.violations),
        "violation_samples": run.violations[:5],
        "lost_samples": lost_samples,
        "restarts": [how for _, how in run.config.restarts],
        "harness_errors": run.harness_errors[:10],
        "protocol_version": run.config.protocol_version,
        "crashes": sum(run.crashes.values()),
        "crashes_by_kind": dict(sorted(run.crashes.items())),
        "crashing_clients": sum(
            1 for i in range(run.config.clients)
            if any(x.end == "crash" for x in sessions[i])
        ),
        "redelivered": run.redelivered,
        "suppressed": run.suppressed,
    }


def _quantiles(values: list[float]) -> dict[str, float]:
    """p50, p99 and max of sorted seconds, in milliseconds."""
    if not values:
        return {}
    pick = lambda q: round(values[min(int(q * len(values)), len(values) - 1)] * 1000, 1)  # noqa: E731
    return {"p50": pick(0.5), "p99": pick(0.99), "max": round(values[-1] * 1000, 1)}


def passed(report: dict[str, Any]) -> bool:
    """Every figure at its target."""
    return (
        report["lost"] == report["duplicated"] == report["reordered"] == report["misrouted"] == 0
        and report["unhandled_errors"] == report["disturbed"] == report["violations"] == 0
        and report["server_max_rss_mb"] < report["max_rss_bound_mb"]
        and all(status == 0 for how, status in report["server_exits"] if how == "sigterm")
        and report["acked"] > 0 and report["delivered"] == report["required"] and not report["harness_errors"]
    )


def run_soak(config: SoakConfig) -> dict[str, Any]:
    """One soak run; the report (what the JSON line holds)."""
    if config.workdir is not None:
        config.workdir.mkdir(parents=True, exist_ok=True)
        return asyncio.run(_soak(config, config.workdir))
    with tempfile.TemporaryDirectory(prefix="dfachat-soak-") as tmp:
        return asyncio.run(_soak(config, Path(tmp)))


def summary(report: dict[str, Any]) -> str:
    lines = [
        f"soak: {report['clients']} clients + {report['hostile']} hostile slots for {report['seconds']:g} s "
        f"(protocol version {report['protocol_version']}, seed {report['seed']}{', TLS' if report['tls'] else ''}; "
        f"restarts: {', '.join(report['restarts'])}), {report['elapsed_s']} s in all",
        f"  MSGs sent {report['sent']}, acked {report['acked']}; deliveries required {report['required']}, "
        f"delivered {report['delivered']}, lost {report['lost']}, duplicated {report['duplicated']}, "
        f"reordered {report['reordered']}, misrouted {report['misrouted']}"
        + (" (at application level: the recipients' logs)" if report["protocol_version"] >= 2 else ""),
        f"  queued for offline accounts {report['queued']} ({report['queued_unchecked']} excused: a session that "
        "could have received it at login ended before syncing)",
        *([f"  crashing recipients {report['crashing_clients']}: {report['crashes']} crashes "
           f"{report['crashes_by_kind']}; DELIVERs flagged REDELIVERED {report['redelivered']}, dropped as "
           f"already taken {report['suppressed']}"] if report["protocol_version"] >= 2 else []),
        f"  sessions {report['sessions']}, DELIVERs received {report['received']}, disturbed {report['disturbed']} "
        f"{report['disturbed_by_kind'] or ''}, violations {report['violations']}",
        f"  legitimate login (connect to AUTH_OK) ms {report['login_ms']}, MSG to MSG_ACK ms {report['ack_ms']}",
        f"  hostile connections {report['hostile_connections']}: {report['hostile_behaviours']}",
        "  what they met (behaviour: server's answer or what happened to the connection: count):",
        *(f"    {answer}: {count}" for answer, count in report["hostile_answers"].items()),
        f"  restart downtimes {report['restart_downtime_s']} s",
        f"  CPU seconds: server {report['server_cpu_s']}, load generator {report['generator_cpu_s']} "
        f"(in {report['elapsed_s']} s on {os.cpu_count()} CPUs; load average before/after {report['load_average']})",
        f"  server max RSS {report['server_max_rss_mb']} MB (bound {report['max_rss_bound_mb']:g} MB), "
        f"unhandled errors {report['unhandled_errors']}, exits {report['server_exits']}",
    ]
    for key in ("disturbances", "lost_samples", "violation_samples", "unhandled_samples", "harness_errors"):
        for item in report[key]:
            lines.append(f"  {key}: {item}")
    lines.append("PASS" if passed(report) else "FAIL")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    defaults = SoakConfig()
    parser.add_argument("--clients", type=int, default=defaults.clients)
    parser.add_argument("--hostile", type=int, default=defaults.hostile)
    parser.add_argument("--seconds", type=float, default=defaults.seconds)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--tls", action="store_true", help="serve TLS with a fresh self-signed certificate")
    parser.add_argument("--mailboxes", type=int, default=defaults.mailboxes)
    parser.add_argument("--max-rss-mb", type=float, default=defaults.max_rss_mb)
    parser.add_argument("--think", type=float, default=defaults.think_s, help="mean pause before each MSG (s)")
    parser.add_argument(
        "--actions", default=",".join(map(str, defaults.actions)), metavar="MIN,MAX", help="MSGs per session"
    )
    parser.add_argument("--keep", type=Path, help="keep the database, server logs and certificate in this directory")
    parser.add_argument(
        "--protocol-version", type=int, choices=(1, 2), default=defaults.protocol_version,
        help="the version the clients offer; 2: acknowledged delivery, crashing recipients, application-level counts",
    )
    parser.add_argument(
        "--crash-share", type=float, default=defaults.crash_share,
        help="version 2: share of clients whose sessions may crash (0: none)",
    )
    args = parser.parse_args(argv)
    config = SoakConfig(
        clients=args.clients, hostile=args.hostile, seconds=args.seconds, seed=args.seed, tls=args.tls,
        mailboxes=args.mailboxes, max_rss_mb=args.max_rss_mb, think_s=args.think, workdir=args.keep,
        actions=tuple(int(n) for n in args.actions.split(",")),  # type: ignore[arg-type]
        protocol_version=args.protocol_version, crash_share=args.crash_share,
    )
    report = run_soak(config)
    print(summary(report), file=sys.stderr)
    print(json.dumps(report), flush=True)
    return 0 if passed(report) else 1


if __name__ == "__main__":
    sys.exit(main())
