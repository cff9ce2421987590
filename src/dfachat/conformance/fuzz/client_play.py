"""Client mode: play the server for one session of the client under test, and judge the client.

:class:`ClientPlayer` accepts one connection and carries out a
:class:`~.client_plan.Plan`. Two engines from :mod:`dfachat.fsm` do the protocol:

* a :class:`~dfachat.fsm.ServerSession` *is* the fuzzer's server: every frame
  the fuzzer sends goes through its ``send`` (so the fuzzer only says what a
  server may say, attacks aside), and every message the client sends goes
  through its ``receive_message`` (so the fuzzer answers as a server must);
* a *shadow* :class:`~dfachat.fsm.ClientSession` is the judge: it receives what
  the fuzzer sent and ``send``\\s what the client sent, so each client frame is
  judged against the client's own table (R12.2) at the state the client is in,
  and a malformed or unexpected frame the fuzzer sends gets the exact
  violation (and fatal ERROR) the spec prescribes.

The shadow sees the fuzzer's frames when they are written, a little before
the client reads them. Every server frame that changes what a client may
send (HELLO_OK, AUTH_OK, MSG_ACK, the last USERS) answers a request the
client waits on, during which it may send nothing but PONG; so being ahead
only ever makes the shadow more permissive, and a frame the shadow rejects
was illegal whenever it was sent. Frames that end the session (BYE, fatal
ERROR, AUTH_FAILED with no attempts left) are not fed to the shadow: after
them a client frame is judged against the state before, since it may have
crossed the fuzzer's frame in flight; one that is illegal even there is
reported against the rule of the ending frame's row.

What is judged (each a check of :mod:`.verdicts`, citing the rule):

* every client frame: well-formed (section 2-4: the codec's rule), allowed
  in the client's state (the row's rule; when none, the rule the server's
  table cites for it, else the rule of the row that led the client there),
  within the limits HELLO_OK announced (R4.11), a listed encoding (R3.1);
* a PING is answered with PONG and the same nonce (R9.1);
* after a malformed or unexpected frame the client closes (R11.3); an ERROR
  it sends first carries the code and type the violation calls for (R11.1);
* the client survives legal frames: it does not drop the session, nor
  answer with a fatal ERROR, after frames its table accepts (the rule of
  the row that accepted the last one: R8.4 for pushes, R6.5 for AUTH_OK ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dfachat.codec import FrameDecoder, encode
from dfachat.codec.messages import (  # type: ignore[attr-defined]
    AUTH_FAILED,
    AUTH_OK,
    BYE,
    ERROR,
    HELLO_OK,
    MSG_ACK,
    PING,
    PONG,
    USERS,
    Message,
    RecipientResult,
)
from dfachat.conformance.fuzz.client_plan import Attack, Plan, Reply, Step, crowd
from dfachat.conformance.fuzz.values import JUDGED_VERSIONS, other_version
from dfachat.conformance.fuzz.verdicts import Chart, ChartEvent, define_check
from dfachat.errors import DfachatError, FrameError, LocalProtocolError
from dfachat.fsm import TABLES, ClientSession, ProtocolViolation, ServerSession, make_error, resolve
from dfachat.spec import (
    ENCODINGS,
    ERROR_INFO,
    HEADER,
    LIMITS,
    MAGIC,
    MESSAGES_BY_CODE,
    MESSAGES_BY_NAME,
    SUPPORTED_VERSIONS,
    ByeReason,
    DeliverFlags,
    ErrorCode,
    ErrorFlags,
    LeftReason,
    ListFlags,
    Outcome,
)
from dfachat.spec.codes import since

__all__ = ["ClientPlayer", "SessionOutcome", "attack_frame", "client_rows", "describe"]

SERVER, CLIENT = 0, 1  # chart participants
PARTICIPANTS = ["fuzzer (server)", "client"]
SOFTWARE = "dfachat-fuzz"
_HEADER_SIZE = HEADER.sizeof()
_CHART_LIMIT = 400  # chart events kept per session; bursts are summarised


def _define_survival_checks() -> None:
    """``Rx.y/survives`` for every rule that lets a client receive something: it must not give up on it."""
    for by_type in TABLES["client"].recv.values():
        for branches in by_type.values():
            for branch in branches:
                if branch.dest != "CLOSED":
                    define_check("client", branch.rule, "survives",
                                 f"the client goes on after the frames {branch.rule} lets it receive")


_define_survival_checks()


def client_rows() -> list[str]:
    """Every row of the client's table, named as the coverage report names them."""
    table = TABLES["client"]
    rows = []
    for rows_by_state, direction in ((table.recv, "recv"), (table.send, "send")):
        for state, by_type in rows_by_state.items():
            for code, branches in by_type.items():
                rows += [_row_name(state, f"{direction}_{MESSAGES_BY_CODE[code].name}", b) for b in branches]
    rows += [_row_name(state, "closed", b) for state, b in table.closed.items()]
    return sorted(set(rows))


def _row_name(state: str, trigger: str, branch: Any) -> str:
    guard = f" [{branch.describe_guards()}]" if branch.guards else ""
    return f"{state} {trigger}{guard} -> {branch.dest or state}"


def describe(message: Message, limit: int = 48) -> str:
    """A message on one line for charts: type and fields, long values cut."""
    parts = []
    for name in message.FIELDS:
        value = getattr(message, name)
        if isinstance(value, tuple) and len(value) > 3:
            text = f"[{len(value)} items]"
        elif isinstance(value, int) and hasattr(value, "name"):  # enumerations and flag sets
            text = str(value.name or int(value))
        else:
            text = repr(value)
        if len(text) > 24:
            text = text[:21] + "..."
        parts.append(f"{name}={text}")
    line = f"{message.NAME} " + " ".join(parts)
    return line if len(line) <= limit else line[: limit - 3] + "..."


# --- attacks: frames the client must not survive ----------------------------------------------


def _reframe(type_code: int, payload: bytes, *, version: int, magic: bytes = MAGIC,
             length: int | None = None) -> bytes:
    """A frame of ``version`` (the session's) laid out by hand (section 2), its CRC-32 right for
    whatever the header says."""
    head = magic + struct.pack(">BBI", version, type_code, len(payload) if length is None else length)
    return head + payload + struct.pack(">I", zlib.crc32(head + payload))


def _offset(message_name: str, field_name: str) -> int:
    """The payload offset of a field after fixed-size fields only (the layout's own sizes)."""
    offset = 0
    for sub in MESSAGES_BY_NAME[message_name].layout.subcons:
        if sub.name == field_name:
            return offset
        offset += sub.sizeof()
    raise KeyError(field_name)


def _invalid_text(encoding: str) -> bytes | None:
    """Bytes that are no text in ``encoding`` (R3.4); None when every byte string is (latin-1)."""
    for candidate in (b"\xff", b"\x80", b"\x81", b"\x00", b"\xd8\x00", b"\x00\x11\x00\x00", b"\xed\xa0\x80"):
        try:
            candidate.decode(ENCODINGS[encoding].codec)
        except UnicodeDecodeError:
            return candidate
    return None


def attack_frame(attack: Attack, encoding: str, version: int = 1) -> bytes:
    """The bytes of ``attack`` in a session of ``encoding`` and protocol ``version``: one defect
    each, everything else right."""
    from dfachat.codec.messages import DELIVER, JOINED, LEFT  # type: ignore[attr-defined]

    base = attack.message if attack.message is not None else JOINED(name="Someone")
    kind = attack.kind
    if kind == "unexpected":
        return encode(base, encoding, version)
    if base.NAME not in ("DELIVER", "JOINED"):
        base = JOINED(name="Someone")
    good = encode(base, encoding, version)
    code, payload = good[3], good[_HEADER_SIZE:-4]
    if kind == "bad-magic":
        magic = bytes([attack.value, (attack.value + 1) & 0xFF])
        return _reframe(code, payload, version=version, magic=magic if magic != MAGIC else b"\x00\x00")
    if kind == "bad-version":  # any version but the session's: another supported one is refused too (R2.2)
        return _reframe(code, payload, version=attack.value if attack.value != version else other_version(version))
    if kind == "unknown-type":  # a type no version defines
        unused = [c for c in range(256) if c not in MESSAGES_BY_CODE]
        return _reframe(unused[attack.value % len(unused)], payload, version=version)
    if kind == "too-large":
        return good[:4] + struct.pack(">I", LIMITS.max_frame)  # the header alone: rejected on arrival (R2.4)
    if kind == "bad-crc":
        return good[:-1] + bytes([good[-1] ^ 0xFF])
    if kind == "short-payload":
        return _reframe(code, payload[:-1], version=version)
    if kind == "trailing-bytes":
        return _reframe(code, payload + bytes([attack.value]), version=version)
    if kind == "invalid-text":
        bad = _invalid_text(encoding)
        carrier = DELIVER(server_msg_id=1, timestamp_ms=0, flags=DeliverFlags(0), sender="Someone", text="")
        assert carrier.FIELDS[-1] == "text"  # the TEXT field ends the payload: its length prefix is last
        body = encode(carrier, encoding, version)[_HEADER_SIZE:-4][:-2]
        text = bad if bad is not None else b"ok"
        return _reframe(carrier.TYPE, body + struct.pack(">H", len(text)) + text, version=version)
    if kind == "bad-name":
        joined = encode(JOINED(name="A"), encoding, version)
        body = joined[_HEADER_SIZE:-4]
        return _reframe(joined[3], body[:-1] + b"-", version=version)  # a name must start with a letter (R4.1)
    if kind == "reserved-flags":
        carrier = base if base.NAME == "DELIVER" else DELIVER(
            server_msg_id=1, timestamp_ms=0, flags=DeliverFlags(0), sender="Someone", text="")
        body = bytearray(encode(carrier, encoding, version)[_HEADER_SIZE:-4])
        at = _offset("DELIVER", "flags")
        mask = 0
        for flag in DeliverFlags:  # the session's version's flags: a later version's are reserved here (R4.7)
            if since(flag) <= version:
                mask |= int(flag)
        reserved = [bit for bit in (1 << i for i in range(8)) if not bit & mask]
        body[at] |= reserved[attack.value % len(reserved)]
        return _reframe(carrier.TYPE, bytes(body), version=version)
    if kind == "bad-enum":
        left = encode(LEFT(reason=LeftReason.QUIT, name="Someone"), encoding, version)
        body = bytearray(left[_HEADER_SIZE:-4])
        defined = max(r for r in LeftReason if since(r) <= version)
        body[_offset("LEFT", "reason")] = defined + 1 + attack.value % (255 - defined)
        return _reframe(left[3], bytes(body), version=version)
    raise ValueError(f"no attack {kind!r}")


# --- one session ----------------------------------------------------------------------------


@dataclass(slots=True)
class SessionOutcome:
    """What one session showed: checks exercised and failed, the chart, the rows covered."""

    exercised: dict[str, int] = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (check id, detail)
    chart: Chart = field(default_factory=lambda: Chart(list(PARTICIPANTS)))
    rows: set[str] = field(default_factory=set)
    steps: int = 0  # frames both ways
    notes: list[str] = field(default_factory=list)
    connected: bool = False

    def exercise(self, check_id: str) -> None:
        self.exercised[check_id] = self.exercised.get(check_id, 0) + 1

    def fail(self, check_id: str, detail: str) -> None:
        self.exercise(check_id)
        if (check_id, detail) not in self.failures:
            self.failures.append((check_id, detail))
        self.note_event(ChartEvent("note", CLIENT, None, f"FAILED {check_id}: {detail}"[:160], True))

    def note_event(self, event: ChartEvent) -> None:
        events = self.chart.events
        if len(events) < _CHART_LIMIT or event.bad:
            events.append(event)


class _SessionOver(Exception):
    """The session ended (the client closed, or the fuzzer ended it): stop playing."""


@dataclass(frozen=True, slots=True)
class _Reply:
    """A reply the reader made for a client's protocol violation; the driver sends it."""

    message: Message


class ClientPlayer:
    """Plays one session of ``plan`` on an accepted connection; see the module docstring.

    ``feed_line(text)`` gives the client a scripted input line and ``end_input()``
    ends its input; both may do nothing for a client that reads no input.
    """

    def __init__(
        self,
        plan: Plan,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        feed_line: Callable[[str], Any],
        end_input: Callable[[], Any],
        reply_timeout: float = 2.0,
    ) -> None:
        self.plan = plan
        self.reader = reader
        self.writer = writer
        self.feed_line = feed_line
        self.end_input = end_input
        self.reply_timeout = reply_timeout
        self.out = SessionOutcome(connected=True)
        limits = dataclasses.replace(LIMITS, **plan.limits)
        self.engine = ServerSession(limits=limits)
        self.shadow = ClientSession()
        self.decoder = FrameDecoder("utf-8", max_frame=LIMITS.max_frame)
        self.requests: asyncio.Queue[Message] = asyncio.Queue()
        self.rng = random.Random(plan.chunk_seed)
        self.entered_by = "R5.1"  # the rule of the row that put the shadow in its state
        self.last_accepted = "R5.1"  # the rule of the row that accepted the fuzzer's last frame
        self.last_sent = "nothing yet"
        self.recent: list[str] = []  # the fuzzer's last frames, for failure details
        self.ending_rule: str | None = None  # set once the fuzzer sent a frame ending the session
        self.ending_frame = ""
        self.expected: ProtocolViolation | None = None  # the violation an attack made, if any
        self.expect_open = True  # the client has no reason to leave
        self.client_closed = asyncio.Event()
        self.client_quit = False
        self.quit_before = False  # the client had sent QUIT before the frame being judged
        self.client_error: Message | None = None
        self.pings: dict[int, float] = {}  # nonce -> when sent
        self.pongs_seen: set[int] = set()
        self.answered = 0  # MSG and LIST requests answered
        self.server_msg_id = 0
        self.failed_logins = 0
        self.client_user: str | None = None  # the name the client's USER gave
        self.survived: set[str] = set()  # rules of the rows that accepted the fuzzer's frames
        # (rule, keeps the state, frame) for each legal frame sent, and how many of them the
        # client has shown it processed (see _blame)
        self.accepted: list[tuple[str, bool, str]] = []
        self.proven = 0
        self.last_transition = 0  # accepted frames up to the last that moved the client's state
        self.ping_at: dict[int, int] = {}  # PING nonce -> accepted frames up to it
        self.ending_line_pending = False  # the plan's ending answers the next request
        self.script: Step | None = None  # the scripted line whose request is awaited
        self.reader_task: asyncio.Task[None] | None = None

    # --- sending ----------------------------------------------------------------------------
    async def _write(self, data: bytes) -> None:
        mode = self.plan.write_mode
        try:
            if mode in ("whole", "packed") or len(data) <= 1:
                self.writer.write(data)
                await self.writer.drain()
                return
            pos = 0
            if mode == "slow":
                step_max, pause = (1, 0.001) if len(data) <= 256 else (64, 0.0005)
            else:
                step_max, pause = max(2, len(data) // 3), 0.0
            while pos < len(data):
                size = self.rng.randint(1, step_max)
                self.writer.write(data[pos : pos + size])
                await self.writer.drain()
                pos += size
                await asyncio.sleep(pause)
        except (ConnectionError, OSError, RuntimeError):
            pass  # the client has gone; the reader reports it

    async def send(self, *messages: Message) -> bool:
        """Send ``messages`` through the server engine (whole frames, or packed/split per the plan).

        Messages the engine does not allow now are skipped (the plan is drawn ahead of
        time); False when none was sent. A long burst is charted as its first frames and a count.
        """
        chunks = []
        for index, message in enumerate(messages):
            try:
                data = self.engine.send(message)
            except LocalProtocolError:
                continue
            self._shadow_receive(message, data, chart=index < 4 or index == len(messages) - 1)
            if index == 4 and len(messages) > 5:
                self._chart_out(f"... {len(messages) - 5} more frames ...")
            chunks.append(data)
            if self.plan.write_mode == "whole":
                await self._write(data)
        if self.plan.write_mode != "whole" and chunks:
            await self._write(b"".join(chunks))
        self.out.steps += len(chunks)
        return bool(chunks)

    def _chart_out(self, text: str, bad: bool = False) -> None:
        self.out.note_event(ChartEvent("arrow", SERVER, CLIENT, text, bad))

    def _shadow_receive(self, message: Message, data: bytes, *, chart: bool = True) -> None:
        """What the client's table makes of a frame the fuzzer sent."""
        if chart:
            self._chart_out(describe(message))
        self.recent = [*self.recent[-2:], describe(message)]
        self.last_sent = ", then ".join(self.recent)
        if isinstance(message, PING):
            self.pings[message.nonce] = time.monotonic()
        state = self.shadow.state
        branch = resolve("client", state, f"recv_{message.NAME}", message, self.shadow,
                         version=self.shadow.version or 1)
        if branch is not None and (branch.dest == "CLOSED" or isinstance(message, BYE)):
            # The session ends here: later client frames may have crossed it (see module doc).
            self.ending_rule = branch.rule
            self.ending_frame = describe(message)
            self.expect_open = False
            self.out.rows.add(_row_name(state, f"recv_{message.NAME}", branch))
            return
        for event in self.shadow.receive_data(data):
            if isinstance(event, ProtocolViolation):  # only attacks get here; legal frames pass
                self.expected = event
                self.expect_open = False
        if branch is not None:
            self.out.rows.add(_row_name(state, f"recv_{message.NAME}", branch))
            self.survived.add(branch.rule)
            self.last_accepted = branch.rule
            self.accepted.append((branch.rule, branch.dest is None, describe(message)))
            if isinstance(message, PING):
                self.ping_at[message.nonce] = len(self.accepted)
            if branch.dest is not None and branch.dest != state:
                self.entered_by = branch.rule
                self.last_transition = len(self.accepted)
            if isinstance(message, AUTH_FAILED):
                self.expect_open = False  # the client may give up (R10.5)

    async def send_raw(self, data: bytes, label: str) -> None:
        """An attack: bytes the server engine would never produce; the shadow says what they break."""
        self._chart_out(label, bad=True)
        self.last_sent = label
        self.out.steps += 1
        for event in self.shadow.receive_data(data):
            if isinstance(event, ProtocolViolation):
                self.expected = event
                self.expect_open = False
        await self._write(data)

    async def close(self, *, half: bool = False) -> None:
        """Close our side (``half``: stop writing, keep reading); the client may then leave."""
        self.expect_open = False
        with contextlib.suppress(Exception):
            if half and self.writer.can_write_eof():
                self.writer.write_eof()
                return
            self.writer.close()

    # --- receiving and judging ---------------------------------------------------------------
    async def read_loop(self) -> None:
        try:
            while True:
                try:
                    data = await self.reader.read(65536)
                except (ConnectionError, OSError):
                    data = b""
                if not data:
                    self._client_eof()
                    return
                if self.decoder.failed is not None:
                    continue  # framing was lost (R2.8): only the end of the stream matters now
                self.decoder.feed(data)
                while True:
                    try:
                        message = self.decoder.next_message()
                    except FrameError as err:
                        self._client_malformed(err)
                        if err.fatal:
                            break
                        continue
                    if message is None:
                        break
                    self._client_message(message)
        finally:
            self.client_closed.set()

    def _client_eof(self) -> None:
        truncated = None
        try:
            if self.decoder.failed is None:
                self.decoder.eof()
        except FrameError as err:
            truncated = err
        self.out.note_event(ChartEvent("note", CLIENT, None, "closes the connection" + (f" inside a frame ({truncated.detail})" if truncated else "")))
        if self.expect_open and not self.client_quit and self.client_error is None:
            rule, frames = self._blame()
            self.out.fail(
                f"{rule}/survives",
                f"the client closed the connection after {frames}, which its table accepts; "
                "nothing asked it to leave",
            )
        self.engine.close()

    def _client_malformed(self, err: FrameError) -> None:
        self.out.steps += 1
        self.out.note_event(ChartEvent("arrow", CLIENT, SERVER, f"malformed frame: {err.detail}"[:80], True))
        self.out.fail(err.rule, f"the client sent a malformed frame: {err.detail}")
        # Answer as a server does: fatal for framing errors (R2.8) and where the state does not recover.
        if self.engine.closed:
            return
        recovers = TABLES["server"].states[self.engine.state].recovers and not err.fatal
        reply = make_error(ErrorCode[err.code_name], err.detail, rule=err.rule, fatal=not recovers,
                           regarding=err.message_type or 0, limits=self.engine.limits)
        self._post(reply)

    def _post(self, reply: Message) -> None:
        """A reply the reader wants sent: queued for the driver, which does all the writing."""
        self.requests.put_nowait(_Reply(reply))  # type: ignore[arg-type]

    def _client_message(self, message: Message) -> None:
        out = self.out
        out.steps += 1
        out.note_event(ChartEvent("arrow", CLIENT, SERVER, describe(message)))
        if isinstance(message, PONG):  # it read everything up to that PING
            self.proven = max(self.proven, self.ping_at.get(message.nonce, 0))
        elif not isinstance(message, ERROR):  # a request: it read the reply that let it ask
            self.proven = max(self.proven, self.last_transition)
        self.quit_before = self.client_quit
        state = self.shadow.state
        branch = resolve("client", state, f"send_{message.NAME}", message, self.shadow,
                         version=self.shadow.version or 1)
        if branch is not None:
            try:
                self.shadow.send(message)
            except DfachatError as err:  # e.g. an encoding the spec does not list (R3.1)
                out.fail(err.rule, f"the client's {message.NAME} cannot be taken: {err.detail}")
            else:
                out.exercise(branch.rule)
                out.rows.add(_row_name(state, f"send_{message.NAME}", branch))
                if branch.dest is not None and branch.dest != state:
                    self.entered_by = branch.rule
                if self.decoder.encoding != self.shadow.encoding:
                    with contextlib.suppress(DfachatError):
                        self.decoder.encoding = self.shadow.encoding
        self._judge_content(message)
        server_view = None
        if not self.engine.closed:
            server_view = self.engine.receive_message(message)
        if branch is None:
            self._illegal(message, state, server_view)
        if isinstance(server_view, ProtocolViolation):
            self._post(server_view.reply)
        elif server_view is not None:
            self.requests.put_nowait(message)

    def _illegal(self, message: Message, state: str, server_view: Any) -> None:
        """A client frame its table has no row for, in ``state``: which rule it broke."""
        if isinstance(message, ERROR) and not message.flags & ErrorFlags.FATAL:
            rule, why = "R11.3", "a client's ERROR is always fatal"
        elif self.quit_before:
            rule, why = self.entered_by, "the client had sent QUIT"
        elif self.ending_rule is not None:
            rule, why = self.ending_rule, f"the fuzzer had ended the session with {self.ending_frame}"
        elif isinstance(server_view, ProtocolViolation):
            rule, why = server_view.rule, str(server_view.error.detail)
        else:
            rule, why = self.entered_by, f"the client is in {state}, entered by a row citing {self.entered_by}"
        self.out.fail(rule, f"the client sent {describe(message)} in {state}: {why}")

    def _judge_content(self, message: Message) -> None:
        out = self.out
        name = message.NAME
        if name == "HELLO":
            out.exercise("R3.1")
            if message.encoding not in ENCODINGS:
                out.fail("R3.1", f"HELLO names the encoding {message.encoding!r}, which the spec does not list")
        elif name == "MSG":
            limits = self.plan.limits
            out.exercise("R4.11")
            size = len(encode(message, self.shadow.encoding, self.shadow.version or 1)) if self.shadow.encoding in ENCODINGS else 0
            for what, value, bound in (
                ("text of", len(message.text), limits.get("max_text")),
                ("recipient count", len(message.recipients), limits.get("max_recipients")),
                ("frame size", size, limits.get("max_frame")),
            ):
                if bound is not None and value > bound:
                    out.fail("R4.11", f"MSG {what} {value} exceeds the {bound} HELLO_OK announced")
        if self.script is not None and name in ("MSG", "LIST"):
            self._judge_script(message, self.script)
            self.script = None
        if name == "PONG":
            if message.nonce in self.pings:
                self.pongs_seen.add(message.nonce)
        elif name == "QUIT":
            self.client_quit = True
        elif name == "USER":
            self.client_user = message.name
        elif name == "PASS" and self.client_user == self.plan.user:
            # A client that logs in as told ($DFACHAT_FUZZ_USER) sends the password it was given.
            self.out.exercise("R3.2")
            if message.password != self.plan.password:
                self.out.fail("R3.2", f"PASS, read in {self.shadow.encoding}, is {message.password[:20]!r}, "
                                      f"not the password given ({self.plan.password[:20]!r})")
        elif name == "ERROR":
            self.client_error = message
            self._judge_error(message)

    def _judge_script(self, message: Message, step: Step) -> None:
        """The request a scripted line asked for carries what the line said (R7.1), text unchanged (R3.2).

        A text that differs only by a leading U+FEFF had a byte order mark written (R3.3).
        """
        out = self.out
        if step.expects != message.NAME:
            out.notes.append(f"the line {step.line[:40]!r} was answered with {message.NAME}, not {step.expects}")
            return
        if message.NAME != "MSG":
            return
        out.exercise("R7.1")
        out.exercise("R3.2")
        if tuple(message.recipients) != step.to:
            out.fail("R7.1", f"the line {step.line[:60]!r} names {list(step.to)}; the MSG names {list(message.recipients)}")
        if message.text != step.text:
            bom = message.text.startswith("\ufeff") and message.text[1:] == step.text
            out.fail(
                "R3.3" if bom else "R3.2",
                f"the MSG's text, read in {self.shadow.encoding}, is {message.text[:40]!r}, not the line's {step.text[:40]!r}"
                + (" (a byte order mark was written)" if bom else ""),
            )

    def _judge_error(self, error: Message) -> None:
        """The client's ERROR: the one an attack calls for (R11.1), never one for legal input."""
        if self.expected is not None:
            want = self.expected.reply
            self.out.exercise("R11.1")
            if error.code != want.code or error.regarding != want.regarding:
                self.out.fail(
                    "R11.1",
                    f"the client's ERROR has code {ErrorCode(error.code).name} regarding {error.regarding}; "
                    f"the frame broke {self.expected.rule}: {ErrorCode(want.code).name} regarding {want.regarding}",
                )
        elif self.expect_open and error.flags & ErrorFlags.FATAL:
            rule, frames = self._blame()
            self.out.fail(
                f"{rule}/survives",
                f"the client ended the session with ERROR {ErrorCode(error.code).name} ({error.rule}: "
                f"{error.reason!r}) after {frames}, which its table accepts",
            )

    def _blame(self) -> tuple[str, str]:
        """Which legal frame a client that gave up most likely failed on: the rule, and the frames.

        Candidates are the frames the client has not shown it processed: those after the PING
        its last PONG answered, or after the reply that let it send its last request. Frames a
        client waits for (replies) are met in every session; the first push among the
        candidates (a row that keeps the state: DELIVER, JOINED, PING ...) is blamed, else the
        last frame.
        """
        candidates = self.accepted[self.proven :] or [(self.last_accepted, False, self.last_sent)]
        pushes = [c for c in candidates if c[1]]
        rule = pushes[0][0] if pushes else candidates[-1][0]
        shown = [f"{frame} ({r})" for r, _, frame in candidates[:4]]
        if len(candidates) > 4:
            shown.append(f"{len(candidates) - 4} more")
        return rule, ", ".join(shown)

    # --- the driver ----------------------------------------------------------------------------
    async def next_request(self, timeout: float) -> Message | None:
        """The next client request to answer (or a reply the reader queued), None on time-out."""
        if self.client_closed.is_set() and self.requests.empty():
            raise _SessionOver
        getter = asyncio.ensure_future(self.requests.get())
        closed = asyncio.ensure_future(self.client_closed.wait())
        try:
            done, _ = await asyncio.wait({getter, closed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
            if not getter.done():
                getter.cancel()
        if getter in done:
            return getter.result()
        if closed in done and self.requests.empty():
            raise _SessionOver
        return None

    async def serve(self, until: Callable[[], bool], timeout: float, *, on: Callable[[Message], Any] | None = None) -> bool:
        """Answer requests until ``until()`` holds or ``timeout`` passes; True if it held."""
        deadline = time.monotonic() + timeout
        while not until():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            request = await self.next_request(left)
            if request is not None:
                await (on or self.answer)(request)
        return True

    async def answer(self, request: Message) -> None:
        """Answer one client message as the plan's server would."""
        if isinstance(request, _Reply):  # the answer to a protocol violation
            await self.send(request.message)
            if self.engine.closed:
                await self.close()
                raise _SessionOver
            return
        name = request.NAME
        if name == "ERROR":  # the client's own fatal ERROR: it closes (R10.4), so do we
            await self.close()
            raise _SessionOver
        if name == "HELLO":
            await self.answer_hello(request)
        elif name == "PASS":
            await self.answer_pass()
        elif name in ("MSG", "LIST"):
            await self.answer_request(request, self.plan.replies[self.answered % len(self.plan.replies)])
        elif name == "QUIT":
            await self.send(BYE(reason=ByeReason.QUIT))
            await self.close(half=True)
        elif name == "PING":
            await self.send(PONG(nonce=request.nonce))

    async def answer_hello(self, hello: Message) -> None:
        ending = self.plan.ending
        if ending.at == "hello" and ending.kind != "input-end":
            await self.end_session()
            return
        # Only versions the fuzzer can judge: a client offering (1, 2) is fuzzed in version 1 (R5.2).
        common = [v for v in hello.versions if v in SUPPORTED_VERSIONS and v in JUDGED_VERSIONS]
        if not common or hello.encoding not in ENCODINGS:
            code = ErrorCode.UNSUPPORTED_VERSION if not common else ErrorCode.UNSUPPORTED_ENCODING
            await self.send(make_error(code, f"HELLO offers {hello.versions} / {hello.encoding}", regarding=hello.TYPE))
            await self.close()
            raise _SessionOver
        limits = self.plan.limits
        await self.send(HELLO_OK(version=max(common), encoding=hello.encoding, software=self.plan.handshake.software,
                                 **{k: limits[k] for k in limits}))

    async def answer_pass(self) -> None:
        handshake = self.plan.handshake
        attempts = self.plan.limits["login_attempts"]
        if self.failed_logins < handshake.failures:
            # R6.4: each AUTH_FAILED is delayed, doubling per earlier failure.
            delay = min(LIMITS.backoff_base_ms * 2**self.failed_logins, LIMITS.backoff_max_ms)
            await asyncio.sleep(delay / 1000)
            self.failed_logins += 1
            await self.send(AUTH_FAILED(attempts_left=max(attempts - self.failed_logins, 0)))
            if self.engine.closed:
                await self.close(half=True)
            return
        if handshake.auth_delay_ms:
            # While the password is checked the client may send nothing (R6.5): judged as it comes.
            await self.serve(lambda: False, handshake.auth_delay_ms / 1000, on=self.answer_while_waiting)
        ending = self.plan.ending
        if ending.at == "login" and ending.kind != "input-end":
            await self.end_session()
            return
        await self.log_in()

    def registered_name(self) -> str:
        """The account's registered spelling (R4.1: names match case-insensitively)."""
        user = self.client_user or self.plan.user
        spelling = self.plan.handshake.spelling
        return user.upper() if spelling == "upper" else user.lower() if spelling == "lower" else user

    async def log_in(self) -> None:
        handshake = self.plan.handshake
        me = self.registered_name()
        online = [me, *handshake.online, *crowd("u", handshake.crowd)]
        seen: set[str] = set()
        unique = [n for n in online if not (n.casefold() in seen or seen.add(n.casefold()))]
        page = max(1, min(handshake.page_size, LIMITS.max_names_per_frame))
        pages = [tuple(unique[i : i + page]) for i in range(0, len(unique), page)] or [()]
        frames: list[Message] = [
            AUTH_OK(flags=ListFlags.MORE if len(pages) > 1 else ListFlags(0), name=me, online=pages[0])
        ]
        for i, names in enumerate(pages[1:], 2):
            frames.append(USERS(flags=ListFlags.MORE if i < len(pages) else ListFlags(0), online=names))
        frames += handshake.stored
        frames += handshake.after_login
        await self.send(*frames)

    async def answer_request(self, request: Message, reply: Reply) -> None:
        ending = self.plan.ending
        if self.ending_line_pending and ending.kind != "input-end":
            self.ending_line_pending = False
            await self.end_session()
            return
        if reply.before:
            await self.send(*reply.before)
        if reply.delay_ms:
            # While the client waits it may send only PONG (R7.2): anything else is judged as it comes.
            await self.serve(lambda: False, reply.delay_ms / 1000, on=self.answer_while_waiting)
        if request.NAME == "MSG":
            self.server_msg_id += 1
            outcomes = [Outcome(reply.outcomes[i % len(reply.outcomes)]) for i in range(len(request.recipients))]
            results = tuple(RecipientResult(name=n, outcome=o) for n, o in zip(request.recipients, outcomes, strict=True))
            delivered = (sum(o in (Outcome.DELIVERED, Outcome.LOSSY) for o in outcomes)
                         if request.recipients else reply.broadcast_delivered)
            lossy = (sum(o is Outcome.LOSSY for o in outcomes) if request.recipients
                     else min(reply.broadcast_delivered, 1 if reply.broadcast_delivered > 2 else 0))
            await self.send(MSG_ACK(msg_id=request.msg_id, server_msg_id=self.server_msg_id,
                                    delivered=delivered, lossy=lossy, results=results))
        else:
            me = self.registered_name()
            names = [me, *self.plan.handshake.online]
            size = max(1, reply.page_size)
            pages = [tuple(names[i : i + size]) for i in range(0, len(names), size)]
            await self.send(*(USERS(flags=ListFlags.MORE if i < len(pages) - 1 else ListFlags(0), online=p)
                              for i, p in enumerate(pages)))
        self.answered += 1

    async def answer_while_waiting(self, request: Message) -> None:
        """While the client waits for a reply the plan delays: answer all but a new request."""
        if isinstance(request, _Reply) or request.NAME not in ("MSG", "LIST"):
            await self.answer(request)

    async def end_session(self) -> None:
        """The plan's ending that replaces a reply or follows the steps: BYE, fatal ERROR, attack, hang-up."""
        ending = self.plan.ending
        if ending.kind == "bye":
            await self.send(BYE(reason=ByeReason.SHUTDOWN))
            await self._linger()
        elif ending.kind == "fatal":
            code = ErrorCode(ending.code)
            if code is ErrorCode.SERVER_FULL and self.shadow.state != "AWAIT_HELLO_OK":
                code = ErrorCode.INTERNAL_ERROR  # SERVER_FULL is a first frame only (R1.4)
            await self.send(make_error(code, f"the fuzzer ends the session with {code.name}",
                                       rule=ERROR_INFO[code].rule, fatal=True))
            await self._linger()
        elif ending.kind == "attack" and ending.attack is not None:
            data = attack_frame(ending.attack, self.shadow.encoding if self.shadow.encoding in ENCODINGS else "utf-8",
                                self.engine.version or 1)
            await self.send_raw(data, f"ATTACK {ending.attack.kind}: {data[:12].hex(' ')}...")
            if self.expected is None:
                self.out.notes.append(f"attack {ending.attack.kind} is legal in {self.shadow.state}: not judged")
                await self.close()
                raise _SessionOver
            closed = await self._wait_closed(self.reply_timeout)
            # After a framing error the stream cannot be trusted (R2.8); after any other, R11.3.
            rule = "R2.8" if getattr(self.expected.error, "fatal", False) else "R11.3"
            if not closed:
                self.out.fail(
                    rule,
                    f"the client did not close within {self.reply_timeout:g} s of a frame breaking "
                    f"{self.expected.rule} ({ErrorCode(self.expected.reply.code).name}) in {self.expected.state}",
                )
            else:
                self.out.exercise(rule)
                self.out.exercise(self.expected.rule)  # the client rejected what this rule forbids
            await self.close()
        else:  # hang-up: a server may close without BYE (R10.5)
            self.expect_open = False
            await self.close()
        raise _SessionOver

    async def _wait_closed(self, timeout: float) -> bool:
        """Take what the client sends (judged as it arrives) until it closes; True if it did."""
        deadline = time.monotonic() + timeout
        while not self.client_closed.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                request = await self.next_request(left)
            except _SessionOver:
                return True
            del request  # after the end nothing is answered
        return True

    async def _linger(self) -> None:
        """After a frame that ends the session: close our side, then judge what still arrives."""
        await self.close(half=True)
        await self._wait_closed(min(self.reply_timeout, 1.0))
        await self.close()

    async def run_steps(self) -> None:
        plan = self.plan
        # Handshake: HELLO, USER, PASS (again after AUTH_FAILED) until the engine is established.
        if not await self.serve(lambda: self.engine.authenticated and self.engine.state == "ESTABLISHED",
                                self.reply_timeout * 3):
            if self.engine.state in ("AWAIT_HELLO",):
                self.out.notes.append("the client sent no HELLO")
            await self.close()
            raise _SessionOver
        for step in plan.steps:
            if step.kind == "line":
                await self.line(step.line, step)
            elif step.kind == "push" and step.push is not None:
                await self.send(*step.push.frames)
            elif step.kind == "ping":
                await self.ping(step.nonce)
            elif step.kind == "pause":
                await self.serve(lambda: False, step.pause_ms / 1000)
        await self.settle_pings()
        ending = plan.ending
        if ending.kind == "input-end":
            self.expect_open = False
            await self.end_input()
            await self.serve(lambda: self.client_closed.is_set(), self.reply_timeout * 2)
            await self.close()
            raise _SessionOver
        if ending.at == "reply":
            self.ending_line_pending = True
            await self.line(ending.line)
            if self.ending_line_pending:  # the client sent nothing for the line
                self.ending_line_pending = False
                await self.end_session()
        else:
            await self.end_session()

    async def line(self, text: str, step: Step | None = None) -> None:
        """Give the client one scripted line; serve until its request is answered (or time passes)."""
        self.out.note_event(ChartEvent("note", CLIENT, None, f"input: {text[:60]!r}"))
        before = self.answered
        self.script = step if step is not None and step.expects else None
        await self.feed_line(text)
        await self.serve(lambda: self.answered > before and self.engine.state == "ESTABLISHED", self.reply_timeout)
        self.script = None

    async def ping(self, nonce: int) -> None:
        if not await self.send(PING(nonce=nonce)):
            return
        await self.settle_pings()

    async def settle_pings(self) -> None:
        """Every PING sent must have had its PONG (R9.1), unless the client left first."""
        if not self.pings:
            return
        if any(check == "R9.1" for check, _ in self.out.failures):
            self.pings.clear()  # once is enough: do not wait for every PING of a client that ignores them
            return
        await self.serve(lambda: set(self.pings) <= self.pongs_seen or self.client_quit, self.reply_timeout)
        for nonce in sorted(set(self.pings) - self.pongs_seen):
            if self.client_quit or self.client_closed.is_set():
                continue
            self.out.fail("R9.1", f"no PONG with nonce {nonce} within {self.reply_timeout:g} s of the PING")
        for _nonce in self.pongs_seen & set(self.pings):
            self.out.exercise("R9.1")
        self.pings.clear()
        self.pongs_seen.clear()

    async def play(self) -> SessionOutcome:
        """Play the whole session; the outcome (never raises for anything the client does)."""
        self.reader_task = asyncio.ensure_future(self.read_loop())
        try:
            await self.run_steps()
        except _SessionOver:
            pass
        finally:
            await self.close()
            with contextlib.suppress(asyncio.TimeoutError, Exception):
                await asyncio.wait_for(asyncio.shield(self.reader_task), timeout=self.reply_timeout)
            if not self.reader_task.done():
                self.reader_task.cancel()
        if not any(check.endswith("/survives") for check, _ in self.out.failures):
            for rule in self.survived:
                self.out.exercise(f"{rule}/survives")
        return self.out
