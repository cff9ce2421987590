"""Server mode: a Hypothesis stateful test against a live server (``dfachat fuzz server``).

:class:`ServerFuzzMachine` is a ``RuleBasedStateMachine`` whose rules are the
client's moves the spec's tables allow -- open a session, log in (right or
wrong), send MSG/LIST/PING/QUIT with generated values and encodings, packed
several to a write or split across writes -- and the moves they forbid: a
message illegal in its state, each class of malformed frame the codec knows
(:data:`.values.MALFORMED`), a drop (mid-frame too), silence until the idle
timeout. Each rule runs through the :class:`~.oracle.Driver`, which judges
every frame the target sends; a failed check raises, and Hypothesis shrinks
the example to a minimal one, which is saved as a case file.

Swarm testing: each example enables a random subset of the optional rules.
Coverage feedback: rules that reach rows of the server table not covered yet
are enabled more often, and ``hypothesis.target`` rewards examples that cover
new rows. Several faults are found in one run by rounds: once a check has
failed, it no longer ends examples, and a new round looks for the others.
"""

from __future__ import annotations

import hashlib
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, settings, target
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.errors import HypothesisException
from hypothesis.stateful import (
    RuleBasedStateMachine,
    get_state_machine_test,
    initialize,
    precondition,
    rule,
)

from dfachat.codec.messages import (  # type: ignore[attr-defined]
    ERROR,
    HELLO,
    LIST,
    MSG,
    PASS,
    PING,
    PONG,
    QUIT,
    USER,
)
from dfachat.conformance.fuzz.oracle import Account, Driver, ServerRows, StepFailed
from dfachat.conformance.fuzz.values import (
    JUDGED_VERSIONS,
    MALFORMED,
    TRAILING,
    name_variants,
    text_strategy,
    truncated,
    uint_max,
    uint_strategy,
    unknown_names,
)
from dfachat.conformance.fuzz.verdicts import RunResult, Verdicts
from dfachat.conformance.fuzz.wire import FuzzError, Target
from dfachat.conformance.strategies import extreme_message, message_strategy
from dfachat.fsm import TABLES_BY_VERSION
from dfachat.spec import (
    ENCODINGS,
    LIMITS,
    MESSAGES,
    SUPPORTED_VERSIONS,
    ErrorCode,
    ErrorFlags,
    MessageSpec,
)
from dfachat.spec.codes import since

__all__ = ["FuzzSettings", "ServerFuzzMachine", "illegal_messages", "run_server_fuzz"]

MAX_CONNS = 4  # open at once in one example
_MSG_ID = uint_strategy("MSG", "msg_id")
_MSG_ID_MAX = uint_max("MSG", "msg_id")
_NONCE = uint_strategy("PING", "nonce")
_SHRINK_SHARE = 0.2  # of the time budget, for shrinking each failure found
_MIN_SHRINK_S = 5.0
SOFTWARE = "dfachat-fuzz"
OPTIONAL_RULES = (
    "greet", "bad_hello", "wrong_login", "msg", "list", "ping", "quit", "drop", "illegal",
    "malformed", "truncated", "idle", "pack", "give_up",
)
# Rows of the server table each optional rule is there to reach (for coverage steering).
_RULE_TRIGGERS = {
    "msg": ("recv_MSG", "send_MSG_ACK", "send_DELIVER"),
    "list": ("recv_LIST", "send_USERS"),
    "ping": ("recv_PING", "send_PONG"),
    "quit": ("recv_QUIT", "send_BYE"),
    "wrong_login": ("send_AUTH_FAILED",),
    "drop": ("closed", "send_LEFT"),
    "malformed": ("send_ERROR",),
    "illegal": ("send_ERROR",),
    "idle": ("send_PING",),
}


class BudgetExhausted(BaseException):  # noqa: N818 - not an error: ends the run gracefully
    """The time budget is spent: leaves Hypothesis at once (a BaseException is not a test failure)."""


@dataclass(slots=True)
class FuzzSettings:
    target: Target
    accounts: list[Account]
    seed: int | None = None
    max_examples: int = 1000  # examples generated; shrinking a failure is bounded by time instead
    time_budget_s: float = 60.0
    reply_timeout_s: float = 1.0
    max_steps: int = 25
    cases_dir: Path | None = Path("dfachat-fuzz-cases")
    strict: bool = False
    progress: bool = True
    stop_on_failure: bool = False  # end the run once one failure is shrunk and saved
    max_wrong_logins: int = 3  # wrong passwords per real account and run: R6.4 makes each dearer
    versions: tuple[int, ...] = JUDGED_VERSIONS  # what every HELLO offers (R5.2)

    def __post_init__(self) -> None:
        beyond = [v for v in self.versions if v not in JUDGED_VERSIONS]
        if not self.versions or beyond:
            raise FuzzError(
                f"the fuzzer judges protocol version {', '.join(map(str, JUDGED_VERSIONS))} only, not "
                f"{', '.join(map(str, beyond or self.versions))}: version 2's acknowledged delivery "
                "(R7.10-R7.16) is future work (issue 14)"
            )


@dataclass(slots=True)
class _Run:
    """State shared by every example of one run."""

    config: FuzzSettings
    verdicts: Verdicts
    rows: ServerRows
    deadline: float
    known: set[str] = field(default_factory=set)  # checks that failed already: no longer end examples
    best: dict[str, Any] | None = None  # the smallest failing example of this round
    examples: int = 0  # generated
    shrink_examples: int = 0  # run while shrinking failures
    steps: int = 0
    wrong_logins: dict[str, int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    dirty: bool = True  # the server may hold stored messages or sessions we do not know of
    last_progress: float = 0.0
    uncovered_triggers: set[str] = field(default_factory=set)

    shrink_deadline: float = float("inf")  # shrinking one failure gets a share of the budget

    def over_budget(self) -> bool:
        return time.monotonic() >= self.deadline

    def stop_now(self) -> bool:
        """Over the run's budget, or over this failure's share of it for shrinking."""
        now = time.monotonic()
        return now >= self.deadline or (self.best is not None and now >= self.shrink_deadline)


_RUN: _Run | None = None  # the run the machine belongs to (Hypothesis builds machines with no arguments)


def _conn_choice(data: Any, conns: list[int]) -> int:
    return data.draw(st.sampled_from(conns), label="conn")


def illegal_messages(state: str, version: int = 1) -> list[MessageSpec]:
    """The message types of ``version`` the server's table has no row for in ``state`` (its oracle
    session's state and version).

    Types the server never receives (R12.3) included: every one is UNEXPECTED_MESSAGE there,
    whatever its fields hold, so a well-formed instance has exactly one right answer. A type the
    version lacks is not among them: a frame of it is an undefined type (R2.3), a malformed frame.
    """
    rows = TABLES_BY_VERSION[version]["server"].recv[state]
    return [spec for spec in MESSAGES if spec.in_version(version) and spec.code not in rows]


class ServerFuzzMachine(RuleBasedStateMachine):
    """One example: a few sessions against the target, every reply judged."""

    def __init__(self) -> None:
        super().__init__()
        run = _RUN
        assert run is not None, "run through run_server_fuzz"
        self.run = run
        # Hypothesis does not count the examples it finds invalid: the cap is ours. Shrinking a
        # failure found is exempt (the time budget still bounds it).
        if (run.examples >= run.config.max_examples and run.best is None) or run.stop_now():
            raise BudgetExhausted
        if run.best is None:
            run.examples += 1
        else:
            run.shrink_examples += 1
        cfg = run.config
        self.driver = Driver(cfg.target, cfg.accounts, verdicts=run.verdicts, reply_timeout=cfg.reply_timeout_s,
                             rows=run.rows, versions=cfg.versions)
        self.driver.deadline = run.deadline
        self.enabled: frozenset[str] = frozenset(OPTIONAL_RULES)
        self.broken = False  # a known failure happened: the model may be out of step, do nothing more
        self.rows_before = len(run.rows.taken)
        if run.dirty:  # the last example ended in a failure: empty the server first, unjudged
            reset = Driver(cfg.target, cfg.accounts, verdicts=Verdicts("server"), reply_timeout=cfg.reply_timeout_s,
                           versions=cfg.versions)
            reset.deadline = run.deadline
            reset.lenient = True
            reset.tolerate_stored = True
            reset.fuzzy = {a.key for a in cfg.accounts}
            reset.were_fuzzy = set(reset.fuzzy)
            try:
                reset.drain(sorted(reset.fuzzy))
            finally:
                reset.close()
            run.dirty = False
        self.msg_id = 0
        self.steps_counted = 0
        self.idled = False

    # --- plumbing ------------------------------------------------------------------------
    def _go(self, name: str | None = None) -> bool:
        if self.run.stop_now():
            raise BudgetExhausted
        return not self.broken and (name is None or name in self.enabled)

    def _after(self) -> None:
        driver = self.driver
        self.run.steps += driver.steps - self.steps_counted
        self.steps_counted = driver.steps
        self._progress()
        if not driver.failures:
            return
        new = [f for f in driver.failures if f[0] not in self.run.known]
        if len(new) < len(driver.failures):
            # A failure found before is here: what follows from it (the model and the target no
            # longer agree) is not a new fault. This example does nothing more.
            new = []
        if new:
            self._remember()
            raise StepFailed("; ".join(f"{c}: {d}" for c, d in new[:3]))
        self.broken = True

    def _remember(self) -> None:
        run = self.run
        size = len(self.driver.actions)
        if run.best is None:
            run.shrink_deadline = time.monotonic() + max(
                _MIN_SHRINK_S, run.config.time_budget_s * _SHRINK_SHARE)
        if run.best is None or size <= len(run.best["actions"]):
            run.best = {
                "actions": list(self.driver.actions),
                "failures": list(self.driver.failures),
                "chart": self.driver.chart,
                "example": run.examples + run.shrink_examples,
                "found_s": (run.best or {}).get("found_s", time.monotonic() - run.started),
            }

    def _progress(self) -> None:
        run = self.run
        if not run.config.progress:
            return
        now = time.monotonic()
        tty = sys.stderr.isatty()
        if now - run.last_progress < (0.2 if tty else 5.0):
            return
        run.last_progress = now
        left = max(0.0, run.deadline - now)
        line = (f"fuzz server: {run.examples} examples, {run.steps} steps, {len(run.rows.taken)} rows covered, "
                f"{len(run.known)} checks failed{', shrinking a failure' if run.best else ''}, {left:.0f} s left")
        sys.stderr.write(("\r" + line + "\x1b[K") if tty else line + "\n")
        sys.stderr.flush()

    def _conns(self, predicate: Any) -> list[int]:
        return [c.index for c in self.driver.conns if predicate(c)]

    def _open_count(self) -> int:
        return sum(1 for c in self.driver.conns if c.open)

    def teardown(self) -> None:
        driver = self.driver
        try:
            if not self.broken and not driver.failures and not self.run.over_budget():
                driver.finish()
                self.run.dirty = bool(driver.failures)
                self._after()
            else:
                self.run.dirty = True
        finally:
            driver.close()
        target(float(len(self.run.rows.taken) - self.rows_before), label="new rows of the server table")

    # --- swarm ------------------------------------------------------------------------------
    @initialize(data=st.data())
    def choose_swarm(self, data: Any) -> None:
        """Swarm testing: a random subset of the optional rules; uncovered ones are favoured."""
        favoured = {name for name, triggers in _RULE_TRIGGERS.items()
                    if any(t in self.run.uncovered_triggers for t in triggers)}
        chosen = data.draw(st.sets(st.sampled_from(OPTIONAL_RULES), min_size=2), label="swarm")
        self.enabled = frozenset(chosen | (favoured if data.draw(st.booleans(), label="steer") else set()))

    # --- sessions ---------------------------------------------------------------------------
    @precondition(lambda self: self._open_count() < MAX_CONNS)
    @rule(data=st.data())
    def open_session(self, data: Any) -> None:
        """Connect, HELLO, USER and PASS with a right password: an authenticated session."""
        if not self._go():
            return
        cfg = self.run.config
        account = data.draw(st.sampled_from(cfg.accounts), label="account")
        encoding = data.draw(st.sampled_from(tuple(ENCODINGS)), label="encoding")
        index = self.driver.open_conn()
        self.driver.send(index, [HELLO(versions=self.run.config.versions, encoding=encoding, software=SOFTWARE)])
        self._login(index, account.name, account.password, data)
        self._after()

    def _login(self, index: int, name: str, password: str, data: Any) -> None:
        conn = self.driver.conns[index]
        if not conn.open or conn.judge.state != "SEND_USER":
            return
        name = data.draw(name_variants(name), label="name case")
        packed = "pack" in self.enabled and data.draw(st.booleans(), label="pack USER+PASS")
        if packed:
            frames = [USER(name=name), PASS(password=password)]
            total = len(frames[0].name) + 40
            splits = data.draw(st.lists(st.integers(1, total), max_size=3), label="splits")
            self.driver.send(index, frames, splits=splits)
        else:
            self.driver.send(index, [USER(name=name)])
            self.driver.send(index, [PASS(password=password)])

    @precondition(lambda self: self._open_count() < MAX_CONNS)
    @rule(data=st.data())
    def greet(self, data: Any) -> None:
        """Connect and HELLO only: a session waiting for USER."""
        if not self._go("greet"):
            return
        encoding = data.draw(st.sampled_from(tuple(ENCODINGS)), label="encoding")
        hello = data.draw(st.integers(0, 5), label="send HELLO") > 0
        index = self.driver.open_conn()
        if hello:  # else: a connection that says nothing (a drop or the idle timeout ends it)
            self.driver.send(index, [HELLO(versions=self.run.config.versions, encoding=encoding, software=SOFTWARE)])
        self._after()

    @precondition(lambda self: self._open_count() < MAX_CONNS)
    @rule(data=st.data())
    def bad_hello(self, data: Any) -> None:
        """HELLO naming no supported version (R5.2) or an encoding not in the table (R5.3)."""
        if not self._go("bad_hello"):
            return
        newest = max(SUPPORTED_VERSIONS)  # versions past it are ones the spec does not define
        offered = self.run.config.versions
        versions = data.draw(st.sampled_from(((newest + 1,), (newest + 2, newest + 1), offered)), label="versions")
        encoding = data.draw(st.sampled_from(("koi8-r", "ebcdic", *ENCODINGS)), label="encoding")
        if versions == offered and encoding in ENCODINGS:
            encoding = "koi8-r"
        from dfachat.codec import encode
        from dfachat.conformance.checker.report import label

        hello = HELLO(versions=versions, encoding=encoding, software=SOFTWARE)
        index = self.driver.open_conn()
        # raw: our own engine would refuse an encoding it cannot speak (R3.1)
        self.driver.send_raw(index, encode(hello), label(hello))
        self._after()

    @precondition(lambda self: any(c.open and c.judge.state == "SEND_USER" for c in self.driver.conns))
    @rule(data=st.data())
    def login_waiting(self, data: Any) -> None:
        """A greeted session logs in with a right password."""
        if not self._go():
            return
        index = _conn_choice(data, self._conns(lambda c: c.open and c.judge.state == "SEND_USER"))
        account = data.draw(st.sampled_from(self.run.config.accounts), label="account")
        self._login(index, account.name, account.password, data)
        self._after()

    @precondition(lambda self: any(c.open and c.judge.state == "SEND_USER" for c in self.driver.conns))
    @rule(data=st.data())
    def wrong_login(self, data: Any) -> None:
        """A wrong password for a real account, or an unknown user: AUTH_FAILED either way (R6.2)."""
        if not self._go("wrong_login"):
            return
        index = _conn_choice(data, self._conns(lambda c: c.open and c.judge.state == "SEND_USER"))
        accounts = self.run.config.accounts
        # Every draw comes first: what the run has spent must not change what an example draws.
        account = data.draw(st.sampled_from(accounts), label="account")
        real = data.draw(st.booleans(), label="real account")
        unknown = data.draw(unknown_names({a.key for a in accounts}), label="unknown user")
        name = data.draw(name_variants(account.name), label="name case")
        packed = data.draw(st.booleans(), label="pack USER+PASS")
        # Past its budget a real account's wrong password becomes an unknown user's: the same
        # answer (R6.2), without growing that account's back-off (R6.4).
        spent = self.run.wrong_logins
        if real and spent.get(account.key, 0) < self.run.config.max_wrong_logins:
            spent[account.key] = spent.get(account.key, 0) + 1
            frames = [USER(name=name), PASS(password=account.password + "x")]
        else:
            spent["?"] = spent.get("?", 0) + 1
            frames = [USER(name=unknown), PASS(password="guess")]
        if packed and "pack" in self.enabled:
            self.driver.send(index, frames)
        else:
            self.driver.send(index, frames[:1])
            self.driver.send(index, frames[1:])
        self._after()

    # --- chat -------------------------------------------------------------------------------
    def _established(self) -> list[int]:
        return self._conns(lambda c: c.established and not c.expects)

    @precondition(lambda self: bool(self._established()))
    @rule(data=st.data())
    def msg(self, data: Any) -> None:
        """A MSG to some accounts (any case), unknown names, or everyone, with leading PINGs packed."""
        if not self._go("msg"):
            return
        index = _conn_choice(data, self._established())
        conn = self.driver.conns[index]
        accounts = self.run.config.accounts
        limit = min(self.driver.limits.max_recipients, LIMITS.max_recipients)
        named = data.draw(st.lists(st.sampled_from(accounts), unique_by=lambda a: a.key, max_size=len(accounts)),
                          label="recipients")
        recipients = [data.draw(name_variants(a.name), label="case") for a in named]
        if data.draw(st.integers(0, 3), label="unknown?") == 0:
            unknown = data.draw(unknown_names({a.key for a in accounts}), label="unknown recipient")
            if unknown.casefold() not in {r.casefold() for r in recipients}:
                recipients.insert(data.draw(st.integers(0, len(recipients)), label="at"), unknown)
        recipients = recipients[:limit]
        text = data.draw(text_strategy(conn.judge.encoding, self.driver.limits.max_text), label="text")
        drawn = data.draw(_MSG_ID, label="msg_id")
        self.msg_id = drawn if data.draw(st.booleans(), label="any msg_id") else self.msg_id + 1
        msg_id = self.msg_id if self.msg_id <= _MSG_ID_MAX else 0
        frames = self._pings(data) + [MSG(msg_id=msg_id, recipients=tuple(recipients), text=text)]
        frames += self._pong(data)
        self.driver.send(index, frames, splits=self._splits(data, frames))
        self._after()

    def _pings(self, data: Any) -> list[Any]:
        if "pack" not in self.enabled:
            return []
        return [PING(nonce=n) for n in data.draw(st.lists(_NONCE, max_size=2), label="pings")]

    def _pong(self, data: Any) -> list[Any]:
        """An unsolicited PONG after a request: legal while waiting (R9.1), answered by nothing."""
        if "pack" not in self.enabled or not data.draw(st.booleans(), label="pong"):
            return []
        return [PONG(nonce=data.draw(_NONCE, label="pong nonce"))]

    def _splits(self, data: Any, frames: list[Any]) -> list[int]:
        if "pack" not in self.enabled:
            return []
        return data.draw(st.lists(st.integers(1, 64 * len(frames)), max_size=3), label="splits")

    @precondition(lambda self: bool(self._established()))
    @rule(data=st.data())
    def list_users(self, data: Any) -> None:
        """LIST: USERS names everyone online, the asker included (R8.3)."""
        if not self._go("list"):
            return
        index = _conn_choice(data, self._established())
        frames = self._pings(data) + [LIST()] + self._pong(data)
        self.driver.send(index, frames, splits=self._splits(data, frames))
        self._after()

    @precondition(lambda self: bool(self._established()))
    @rule(data=st.data())
    def ping(self, data: Any) -> None:
        """PING: PONG with the same nonce (R9.1)."""
        if not self._go("ping"):
            return
        index = _conn_choice(data, self._established())
        self.driver.send(index, [PING(nonce=data.draw(_NONCE, label="nonce"))])
        self._after()

    @precondition(lambda self: bool(self._conns(lambda c: c.open and not c.expects and c.judge.state in
                                                ("ESTABLISHED", "SEND_USER"))))
    @rule(data=st.data())
    def quit(self, data: Any) -> None:
        """QUIT: BYE, the close, and LEFT QUIT for the others (R10.2, R8.2)."""
        if not self._go("quit"):
            return
        index = _conn_choice(data, self._conns(lambda c: c.open and not c.expects and c.judge.state in
                                               ("ESTABLISHED", "SEND_USER")))
        conn = self.driver.conns[index]
        if conn.established:
            frames = self._pings(data) + [QUIT()]
        else:  # before PASS: QUIT in AWAIT_USER or, after USER, in AWAIT_PASS (R10.1)
            account = data.draw(st.sampled_from(self.run.config.accounts), label="account")
            frames = ([USER(name=account.name)] if data.draw(st.booleans(), label="USER first") else []) + [QUIT()]
        self.driver.send(index, frames, splits=self._splits(data, frames))
        self._after()

    @precondition(lambda self: bool(self._conns(lambda c: c.open and not c.expects)))
    @rule(data=st.data())
    def drop(self, data: Any) -> None:
        """Close without QUIT (R10.5): LEFT DROPPED for the others (R8.2)."""
        if not self._go("drop"):
            return
        index = _conn_choice(data, self._conns(lambda c: c.open and not c.expects))
        if self.driver.conns[index].judge.state == "SEND_USER" and data.draw(st.booleans(), label="USER first"):
            self.driver.send(index, [USER(name="Someone")])
        self.driver.drop(index)
        self._after()

    @precondition(lambda self: bool(self._conns(lambda c: c.open and not c.expects and c.judge.state in
                                                ("ESTABLISHED", "SEND_USER"))))
    @rule(data=st.data())
    def give_up(self, data: Any) -> None:
        """Our fatal ERROR (R11.3): the server closes, the others see LEFT ERROR (R8.2)."""
        if not self._go("give_up"):
            return
        index = _conn_choice(data, self._conns(lambda c: c.open and not c.expects and c.judge.state in
                                               ("ESTABLISHED", "SEND_USER")))
        version = self.driver.conns[index].judge.version or 1
        code = data.draw(st.sampled_from([c for c in ErrorCode if since(c) <= version]), label="code")
        self.driver.send(index, [ERROR(code=code, flags=ErrorFlags.FATAL, regarding=0, rule="R11.4",
                                       reason="the fuzzer gives up")])
        self._after()

    @precondition(lambda self: bool(self._conns(lambda c: c.open and not c.expects and c.judge.state in
                                                ("ESTABLISHED", "SEND_USER"))))
    @rule(data=st.data())
    def truncated_drop(self, data: Any) -> None:
        """Half a frame, then close (R2.9): a drop all the same (LEFT DROPPED)."""
        if not self._go("truncated"):
            return
        index = _conn_choice(data, self._conns(lambda c: c.open and not c.expects and c.judge.state in
                                               ("ESTABLISHED", "SEND_USER")))
        conn = self.driver.conns[index]
        self.driver.send_raw(index, truncated(conn.judge.encoding, conn.judge.version or 1), "half a PING frame")
        self.driver.drop(index)
        self._after()

    # --- what the spec forbids -------------------------------------------------------------------
    @precondition(lambda self: bool(self._conns(lambda c: c.open and not c.expects and c.judge.state in
                                                ("ESTABLISHED", "SEND_USER"))))
    @rule(data=st.data())
    def illegal(self, data: Any) -> None:
        """A message the server's table has no row for here (R12.1, R12.3), with valid field values.

        The oracle's core decides the answer: non-fatal ERROR after AUTH_OK (R11.3), fatal before (R6.7).
        """
        if not self._go("illegal"):
            return
        index = _conn_choice(data, self._conns(lambda c: c.open and not c.expects and c.judge.state in
                                               ("ESTABLISHED", "SEND_USER")))
        conn = self.driver.conns[index]
        version = conn.judge.version or 1
        options = illegal_messages(conn.server_state, version)
        if not options:
            return
        spec = data.draw(st.sampled_from(options), label="illegal type")
        encoding = conn.judge.encoding
        # The answer does not depend on the values: mostly every field at a bound, which costs the
        # example no entropy (long examples overrun Hypothesis's buffer and are lost), else drawn.
        bound = data.draw(st.sampled_from(("lower", "upper", "lower", "drawn")), label="illegal values")
        if bound == "drawn":
            message = data.draw(message_strategy(spec, encoding, version), label="illegal message")
        else:
            message = extreme_message(spec, encoding, largest=bound == "upper", version=version)
        from dfachat.codec import encode
        from dfachat.conformance.checker.report import label

        frame = encode(message, encoding, version)
        if len(frame) > self.driver.limits.max_frame:  # the target's announced limit (R4.11) would answer first
            message = extreme_message(spec, encoding, largest=False, version=version)
            frame = encode(message, encoding, version)
        self.driver.send_raw(index, frame, f"{label(message)} (illegal here)")
        self._after()

    @precondition(lambda self: bool(self._conns(lambda c: c.open and not c.expects and c.judge.state in
                                                ("ESTABLISHED", "SEND_USER"))))
    @rule(data=st.data())
    def malformed(self, data: Any) -> None:
        """One frame with one defect per error class: the ERROR the oracle's codec says (section 2-4)."""
        if not self._go("malformed"):
            return
        index = _conn_choice(data, self._conns(lambda c: c.open and not c.expects and c.judge.state in
                                               ("ESTABLISHED", "SEND_USER")))
        conn = self.driver.conns[index]
        builder = data.draw(st.sampled_from([*MALFORMED.values(), TRAILING]), label="defect")
        frame_bytes, what = builder(conn.judge.state == "ESTABLISHED", conn.judge.encoding, conn.judge.version or 1)
        self.driver.send_raw(index, frame_bytes, what)
        self._after()

    @precondition(lambda self: bool(self._conns(lambda c: c.open and not c.expects and c.judge.state in
                                                ("ESTABLISHED", "SEND_USER"))))
    @rule(data=st.data())
    def idle(self, data: Any) -> None:
        """Let time pass: a silent session gets IDLE_TIMEOUT (R9.2, R6.8), when that is short enough."""
        if not self._go("idle"):
            return
        timeout_s = self.driver.limits.idle_timeout_s
        if timeout_s > self.run.config.time_budget_s / 8 or timeout_s > 15 or self.idled:
            return  # too long for this run's budget; once an example is enough
        self.idled = True
        index = _conn_choice(data, self._conns(lambda c: c.open and not c.expects and c.judge.state in
                                               ("ESTABLISHED", "SEND_USER")))
        self.driver.idle(index)
        self._after()


# --- the run ---------------------------------------------------------------------------------


def _round_seed(seed: int, round_number: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{round_number}".encode()).digest()[:8], "big")


def run_server_fuzz(config: FuzzSettings) -> RunResult:
    """Fuzz the server at ``config.target``; the verdicts, coverage and saved cases of the run."""
    from dfachat.conformance.fuzz.cases import save_case

    global _RUN
    started = time.monotonic()
    seed = config.seed if config.seed is not None else random.SystemRandom().randrange(2**32)
    verdicts = Verdicts("server")
    rows = ServerRows(max(config.versions))
    run = _Run(config, verdicts, rows, deadline=started + config.time_budget_s)
    result = RunResult("server", str(config.target), verdicts, seed=seed, strict=config.strict)
    result.settings = {"max_examples": config.max_examples, "time_budget_s": config.time_budget_s,
                       "reply_timeout_s": config.reply_timeout_s, "accounts": [a.name for a in config.accounts],
                       "versions": list(config.versions)}
    _RUN = run
    try:
        for round_number in range(16):  # a round per distinct fault found, bounded
            left = config.max_examples - run.examples
            if left <= 0 or run.over_budget():
                break
            run.best = None
            run.shrink_deadline = float("inf")
            cover = rows.report()
            run.uncovered_triggers = {line.split()[1] for line in cover["missing"]}
            test = get_state_machine_test(
                ServerFuzzMachine,
                settings=settings(
                    max_examples=left,
                    stateful_step_count=config.max_steps,
                    deadline=None,
                    database=None,
                    derandomize=False,
                    suppress_health_check=list(HealthCheck),
                    phases=(Phase.generate, Phase.target, Phase.shrink),
                    report_multiple_bugs=False,
                    print_blob=False,
                ),
            )
            test = hypothesis_seed(_round_seed(seed, round_number))(test)
            failed = False
            try:
                test()
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # a failing example (shrunk), or the budget ended the round
                # Hypothesis may wrap BudgetExhausted in its own errors: the run's state says what happened.
                stopped = run.over_budget() or run.examples >= config.max_examples or run.best is not None
                if not stopped:
                    if not isinstance(exc, HypothesisException):
                        raise
                    # A target that answers the same input differently between runs: go on with a new seed.
                    result.notes.append(f"round {round_number + 1} ended early: {type(exc).__name__}")
                    continue
                failed = run.best is not None
            if not failed:
                if run.best is None:
                    break  # the round found nothing: the examples are spent
                continue
            best = run.best
            assert best is not None
            result.settings.setdefault("first_failure_s", round(best["found_s"], 2))
            case_path = None
            if config.cases_dir is not None:
                case_path = save_case(config.cases_dir, best, target=str(config.target), seed=seed,
                                      accounts=config.accounts)
                result.cases.append(str(case_path))
            for check, detail in best["failures"]:
                failure = verdicts.fail(check, detail, best["chart"], example=best["example"])
                failure.case = None if case_path is None else str(case_path)
                run.known.add(check)
            if run.over_budget() or config.stop_on_failure:
                break
    finally:
        _RUN = None
        if config.progress and sys.stderr.isatty():
            sys.stderr.write("\r\x1b[K")
    if not run.steps and not verdicts.all_failures():
        raise FuzzError(
            f"no step completed against {config.target} within the time budget of {config.time_budget_s:g} s: "
            "nothing was tested (a longer --time-budget, or a target that answers?)"
        )
    if run.over_budget():
        result.notes.append(f"time budget of {config.time_budget_s:g} s reached")
    result.examples = run.examples
    result.settings["shrink_examples"] = run.shrink_examples
    result.steps = run.steps
    result.duration_s = time.monotonic() - started
    result.coverage = rows.report()
    return result
