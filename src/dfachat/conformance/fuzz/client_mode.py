"""``dfachat fuzz client``: the conformance fuzzer plays the server for a client under test.

    dfachat fuzz client --listen 0 --target-cmd 'dfachat client --host "$DFACHAT_FUZZ_HOST" \\
        --port "$DFACHAT_FUZZ_PORT" --user "$DFACHAT_FUZZ_USER" --encoding "$DFACHAT_FUZZ_ENCODING" --json'

Each example is one session: the fuzzer listens, starts ``--target-cmd`` (a
shell command) with the session's parameters in its environment --
``DFACHAT_FUZZ_HOST``, ``DFACHAT_FUZZ_PORT``, ``DFACHAT_FUZZ_USER``,
``DFACHAT_FUZZ_PASSWORD`` (also as ``DFACHAT_PASSWORD``, which ``dfachat client``
reads) and ``DFACHAT_FUZZ_ENCODING`` -- accepts its connection, and plays a
:class:`~.client_plan.Plan` drawn by Hypothesis (:mod:`.client_play` judges).
Scripted input lines reach the target on standard input, one at a time, in
the terminal client's syntax (a line is sent to everyone, ``/to A,B text``,
``/who``); standard input ends when the plan wants the client to leave. The
fuzzer accepts whatever account and password the client names: it decides
which logins succeed.

A failing example is shrunk (every session's verdict is cached by its plan,
so Hypothesis sees a deterministic test) and saved as a case file that
``--replay`` runs again. Rounds continue after a failure, as in server mode,
until the examples or the time budget are spent; a check that failed already
no longer ends an example.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dfachat.conformance.fuzz.client_plan import Plan, plans
from dfachat.conformance.fuzz.client_play import ClientPlayer, SessionOutcome, client_rows
from dfachat.conformance.fuzz.verdicts import RunResult, Verdicts, check_for
from dfachat.errors import DfachatError

__all__ = [
    "CLIENT_CASE_FORMAT",
    "REFERENCE_TARGET",
    "ClientFuzzSettings",
    "ClientTargetError",
    "replay_client_case",
    "run_client_fuzz",
]

CLIENT_CASE_FORMAT = "dfachat-fuzz-client-case/1"
REFERENCE_TARGET = (
    'dfachat client --host "$DFACHAT_FUZZ_HOST" --port "$DFACHAT_FUZZ_PORT" '
    '--user "$DFACHAT_FUZZ_USER" --encoding "$DFACHAT_FUZZ_ENCODING" --json'
)
_OUTPUT_TAIL = 2000  # characters of the target's output kept for messages


class ClientTargetError(DfachatError):
    """The client under test cannot be run as asked (it never connects, the command fails)."""

    rule, code_name = "R1.3", "INTERNAL_ERROR"


class BudgetExhausted(BaseException):  # noqa: N818 - not an error: ends the run gracefully
    """The time budget is spent: leaves Hypothesis at once (a BaseException is not a test failure)."""


class ShrinkDone(BaseException):  # noqa: N818 - not an error: ends one round's shrinking
    """The sessions allowed for shrinking one failure are spent: leave Hypothesis with the best so far."""


class _TargetBroken(BaseException):  # noqa: N818 - carries a ClientTargetError past Hypothesis
    """The target cannot be tested at all: not a failing example, so Hypothesis must not shrink it."""


class _ExampleFailed(Exception):
    """An example broke a check not yet known to fail: Hypothesis shrinks it."""


@dataclass(slots=True)
class ClientFuzzSettings:
    target_cmd: str
    host: str = "127.0.0.1"
    port: int = 0  # 0: any free port
    seed: int | None = None
    max_examples: int = 100
    time_budget_s: float = 60.0
    reply_timeout_s: float = 2.0
    connect_timeout_s: float = 15.0
    cases_dir: Path | None = Path("dfachat-fuzz-cases")
    strict: bool = False
    encodings: tuple[str, ...] | None = None
    progress: bool = True
    max_shrink_sessions: int = 40  # sessions spent shrinking one failure (each starts the target again)
    fail_fast: bool = False  # stop at the first failure (shrunk and saved)


@dataclass(slots=True)
class _Example:
    """One played session and what the target printed."""

    outcome: SessionOutcome
    exit_status: int | None
    output: str


@dataclass(slots=True)
class _Run:
    config: ClientFuzzSettings
    loop: asyncio.AbstractEventLoop
    port: int
    deadline: float
    verdicts: Verdicts
    covered: set[str] = field(default_factory=set)
    known: set[str] = field(default_factory=set)
    cache: dict[str, _Example] = field(default_factory=dict)
    best: tuple[Plan, _Example] | None = None
    examples: int = 0
    steps: int = 0
    connected_once: bool = False
    failed_to_connect: list[str] = field(default_factory=list)
    pending: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] | None = None
    shrinking: bool = False
    shrink_runs: int = 0
    server: asyncio.AbstractServer | None = None

    def over_budget(self) -> bool:
        return time.monotonic() >= self.deadline


# --- the target process ---------------------------------------------------------------------


class _Target:
    """The client under test for one session: started, fed lines, stopped (its process group only)."""

    def __init__(self, command: str, env: dict[str, str]) -> None:
        self.command = command
        # Each session plays a new server whose message ids start over: a client that remembers
        # what its application took (R7.11) must start from nothing, so it gets an empty state
        # directory of its own (XDG_STATE_HOME), removed when it stops.
        self.state_dir = tempfile.mkdtemp(prefix="dfachat-fuzz-state-")
        self.env = {"XDG_STATE_HOME": self.state_dir, **env}
        self.proc: asyncio.subprocess.Process | None = None
        self.output = bytearray()
        self._drain: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_shell(
            self.command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, **self.env},
            start_new_session=True,  # its own process group: stopped as one, nothing else touched
        )
        self._drain = asyncio.ensure_future(self._read_output())

    async def _read_output(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        with contextlib.suppress(Exception):
            while chunk := await self.proc.stdout.read(65536):
                self.output += chunk
                del self.output[: max(0, len(self.output) - 4 * _OUTPUT_TAIL)]

    async def feed_line(self, line: str) -> None:
        if self.proc is None or self.proc.stdin is None or self.proc.stdin.is_closing():
            return
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            self.proc.stdin.write(line.encode("utf-8") + b"\n")
            await self.proc.stdin.drain()

    async def end_input(self) -> None:
        if self.proc is not None and self.proc.stdin is not None:
            with contextlib.suppress(Exception):
                self.proc.stdin.close()

    async def stop(self, grace: float) -> int | None:
        """End the target: close its input, wait ``grace`` seconds, then TERM and KILL its group."""
        if self.proc is None:
            shutil.rmtree(self.state_dir, ignore_errors=True)
            return None
        await self.end_input()
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None and self.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, sig)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout=grace if sig is None else 2.0)
                break
            except TimeoutError:
                continue
        if self._drain is not None:
            with contextlib.suppress(asyncio.TimeoutError, Exception):
                await asyncio.wait_for(self._drain, timeout=1.0)
        shutil.rmtree(self.state_dir, ignore_errors=True)
        return self.proc.returncode

    def tail(self) -> str:
        return self.output.decode("utf-8", "replace")[-_OUTPUT_TAIL:]


def _environment(plan: Plan, host: str, port: int) -> dict[str, str]:
    return {
        "DFACHAT_FUZZ_HOST": host,
        "DFACHAT_FUZZ_PORT": str(port),
        "DFACHAT_FUZZ_USER": plan.user,
        "DFACHAT_FUZZ_PASSWORD": plan.password,
        "DFACHAT_PASSWORD": plan.password,
        "DFACHAT_FUZZ_ENCODING": plan.encoding,
    }


async def _play_example(run: _Run, plan: Plan) -> _Example:
    """Start the target, accept its connection, play ``plan``, stop the target."""
    config = run.config
    assert run.pending is not None
    while not run.pending.empty():  # a stray connection from an earlier target
        _, stray = run.pending.get_nowait()
        stray.close()
    target = _Target(config.target_cmd, _environment(plan, config.host, run.port))
    await target.start()
    assert target.proc is not None
    accept = asyncio.ensure_future(run.pending.get())
    exited = asyncio.ensure_future(target.proc.wait())
    done, _ = await asyncio.wait({accept, exited}, timeout=config.connect_timeout_s,
                                 return_when=asyncio.FIRST_COMPLETED)
    if accept not in done:
        accept.cancel()
        status = await target.stop(0.5)
        outcome = SessionOutcome()
        outcome.notes.append(f"the target did not connect (exit status {status})")
        return _Example(outcome, status, target.tail())
    exited.cancel()
    reader, writer = accept.result()
    player = ClientPlayer(plan, reader, writer, feed_line=target.feed_line, end_input=target.end_input,
                          reply_timeout=config.reply_timeout_s)
    try:
        outcome = await asyncio.wait_for(player.play(), timeout=60.0 + 10 * config.reply_timeout_s)
    except TimeoutError:
        outcome = player.out
        outcome.notes.append("the session was stopped after 60 s")
    status = await target.stop(config.reply_timeout_s)
    return _Example(outcome, status, target.tail())


# --- the Hypothesis loop ----------------------------------------------------------------------


def _round_seed(seed: int, round_number: int) -> int:
    return int.from_bytes(hashlib.sha256(f"client/{seed}/{round_number}".encode()).digest()[:8], "big")


def _new_failures(run: _Run, example: _Example) -> list[tuple[str, str]]:
    return [(check, detail) for check, detail in example.outcome.failures if check not in run.known]


def _run_one(run: _Run, plan: Plan) -> _Example:
    key = plan.key()
    cached = run.cache.get(key)
    if cached is not None:
        return cached
    if run.over_budget():
        raise BudgetExhausted
    if run.shrinking:
        if run.shrink_runs >= run.config.max_shrink_sessions:
            raise ShrinkDone  # shrinking is bounded: the smallest failure so far is the case
        run.shrink_runs += 1
    example = run.loop.run_until_complete(_play_example(run, plan))
    run.cache[key] = example
    run.examples += 1
    run.steps += example.outcome.steps
    if example.outcome.connected:
        run.connected_once = True
    else:
        run.failed_to_connect.append(example.output)
        if not run.connected_once and len(run.failed_to_connect) >= 2:
            raise _TargetBroken(ClientTargetError(
                f"the target command never connected to {run.config.host}:{run.port}; its output: "
                f"{example.output.strip()[-400:] or '(none)'}"
            ))
    if not run.shrinking:
        for check_id, times in example.outcome.exercised.items():
            run.verdicts.exercise(check_id, times)
        run.covered |= example.outcome.rows
    if run.config.progress and sys.stderr.isatty():
        sys.stderr.write(f"\r\x1b[K{run.examples} sessions, {run.steps} frames")
        sys.stderr.flush()
    return example


def _test_function(run: _Run) -> Any:
    from hypothesis import given

    @given(plan=plans(encodings=run.config.encodings))
    def session(plan: Plan) -> None:
        example = _run_one(run, plan)
        new = _new_failures(run, example)
        if new:
            if run.best is None or len(plan.key()) <= len(run.best[0].key()):
                run.best = (plan, example)
            run.shrinking = True
            raise _ExampleFailed("; ".join(f"{c}: {d}" for c, d in new))

    return session


def _save_case(directory: Path, plan: Plan, example: _Example, *, target: str, seed: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    first = example.outcome.failures[0][0] if example.outcome.failures else "case"
    stem = "client-" + re.sub(r"[^A-Za-z0-9.-]+", "_", first) + time.strftime("-%Y%m%dT%H%M%S")
    path = directory / f"{stem}.json"
    n = 1
    while path.exists():
        n += 1
        path = directory / f"{stem}-{n}.json"
    data = {
        "format": CLIENT_CASE_FORMAT,
        "mode": "client",
        "target": target,
        "seed": seed,
        "failures": [{"check": c, "detail": d} for c, d in example.outcome.failures],
        "plan": plan.to_json(),
        "chart": example.outcome.chart.as_dict(),
        "target_output": example.output[-_OUTPUT_TAIL:],
    }
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


async def _listen(run_host: str, port: int, pending: asyncio.Queue[Any]) -> asyncio.AbstractServer:
    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pending.put_nowait((reader, writer))

    try:
        return await asyncio.start_server(accepted, run_host, port)
    except OSError as exc:
        raise ClientTargetError(f"cannot listen on {run_host}:{port}: {exc.strerror or exc}") from None


def _start(config: ClientFuzzSettings, started: float) -> _Run:
    loop = asyncio.new_event_loop()
    pending: asyncio.Queue[Any] = asyncio.Queue()
    server = loop.run_until_complete(_listen(config.host, config.port, pending))
    port = server.sockets[0].getsockname()[1]
    run = _Run(config, loop, port, started + config.time_budget_s, Verdicts("client"), pending=pending)
    run.server = server
    return run


def _finish(run: _Run) -> None:
    server = run.server
    if server is not None:
        server.close()
        with contextlib.suppress(Exception):
            run.loop.run_until_complete(server.wait_closed())
    run.loop.close()
    if run.config.progress and sys.stderr.isatty():
        sys.stderr.write("\r\x1b[K")


def _coverage(covered: set[str]) -> dict[str, Any]:
    rows = client_rows()
    return {"total": len(rows), "covered": sorted(covered & set(rows)), "missing": sorted(set(rows) - covered)}


def _record(verdicts: Verdicts, example: _Example, case: str | None, *, only: set[str] | None = None) -> None:
    for check_id, detail in example.outcome.failures:
        if only is not None and check_id not in only:
            continue
        check_for("client", check_id)
        failure = verdicts.fail(check_id, detail, example.outcome.chart, example=None)
        failure.case = case


def run_client_fuzz(config: ClientFuzzSettings) -> RunResult:
    """Fuzz the client started by ``config.target_cmd``; the verdicts, coverage and saved cases."""
    from hypothesis import HealthCheck, Phase, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis.errors import Flaky, Unsatisfiable

    started = time.monotonic()
    seed = config.seed if config.seed is not None else random.SystemRandom().randrange(2**32)
    run = _start(config, started)
    result = RunResult("client", config.target_cmd, run.verdicts, seed=seed, strict=config.strict)
    result.settings = {
        "max_examples": config.max_examples, "time_budget_s": config.time_budget_s,
        "reply_timeout_s": config.reply_timeout_s, "listen": f"{config.host}:{run.port}",
    }
    try:
        for round_number in range(16):  # a round per distinct fault found, bounded
            left = config.max_examples - run.examples
            if left <= 0 or run.over_budget():
                break
            run.best, run.shrinking, run.shrink_runs = None, False, 0
            test = settings(
                max_examples=left,
                deadline=None,
                database=None,
                derandomize=False,
                suppress_health_check=list(HealthCheck),
                phases=(Phase.generate, Phase.shrink),
                report_multiple_bugs=False,
                print_blob=False,
            )(_test_function(run))
            test = hypothesis_seed(_round_seed(seed, round_number))(test)
            try:
                test()
            except _TargetBroken as broken:
                raise broken.args[0] from None
            except BudgetExhausted:
                result.notes.append(f"time budget of {config.time_budget_s:g} s reached")
            except (_ExampleFailed, Flaky, ShrinkDone):
                pass
            except Unsatisfiable:
                break
            if run.best is None:
                break  # the round found nothing new: the examples are spent
            plan, example = run.best
            new = {c for c, _ in _new_failures(run, example)}
            case = None
            if config.cases_dir is not None:
                case = str(_save_case(config.cases_dir, plan, example, target=config.target_cmd, seed=seed))
                result.cases.append(case)
            _record(run.verdicts, example, case, only=new)
            run.known |= new
            if config.fail_fast:
                break
            if run.over_budget():
                if not any("time budget" in n for n in result.notes):
                    result.notes.append(f"time budget of {config.time_budget_s:g} s reached")
                break
    finally:
        _finish(run)
    connected = sum(1 for e in run.cache.values() if e.outcome.connected)
    if run.examples and connected < run.examples:
        result.notes.append(f"the target connected in {connected} of {run.examples} sessions")
    result.examples = run.examples
    result.steps = run.steps
    result.duration_s = time.monotonic() - started
    result.coverage = _coverage(run.covered)
    return result


def replay_client_case(path: Path, target_cmd: str | None, *, host: str = "127.0.0.1", port: int = 0,
                       reply_timeout_s: float = 2.0) -> RunResult:
    """Play a saved client case again against ``target_cmd`` (default: the case's own target)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ClientTargetError(f"cannot read the case {path}: {exc}") from None
    if data.get("format") != CLIENT_CASE_FORMAT:
        raise ClientTargetError(f"{path} is not a client case ({CLIENT_CASE_FORMAT})")
    plan = Plan.from_json(data["plan"])
    command = target_cmd or data["target"]
    config = ClientFuzzSettings(command, host=host, port=port, max_examples=1, time_budget_s=3600,
                                reply_timeout_s=reply_timeout_s, cases_dir=None, progress=False)
    started = time.monotonic()
    run = _start(config, started)
    try:
        example = _run_one(run, plan)
    finally:
        _finish(run)
    if not example.outcome.connected:
        raise ClientTargetError(f"the target never connected; its output: {example.output.strip()[-400:] or '(none)'}")
    _record(run.verdicts, example, str(path))
    result = RunResult("client", command, run.verdicts, seed=data.get("seed"), examples=1,
                       steps=example.outcome.steps, duration_s=time.monotonic() - started)
    result.coverage = _coverage(run.covered)
    result.notes.append(f"replayed {path}")
    return result


def run_client_command(args: Any) -> int:
    """``dfachat fuzz client --target-cmd COMMAND [--listen PORT] ...`` (parser in :mod:`dfachat.cli`)."""
    from dfachat.conformance.fuzz.command import write_reports
    from dfachat.conformance.fuzz.report import chart_text, summary_text
    from dfachat.spec import ENCODINGS

    for name in ("max_examples", "time_budget", "timeout"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise ClientTargetError(f"--{name.replace('_', '-')} must be positive, not {value}")
    if not 0 <= args.listen < 65536:
        raise ClientTargetError(f"--listen {args.listen} is not a port (0 to 65535; 0 picks a free one)")
    unknown = [e for e in args.encoding or () if e not in ENCODINGS]
    if unknown:
        raise ClientTargetError(f"--encoding {unknown[0]!r} is not one of {', '.join(ENCODINGS)}", rule="R3.1")
    if args.replay:
        result = replay_client_case(Path(args.replay), args.target_cmd, host=args.host, port=args.listen,
                                    reply_timeout_s=args.timeout)
        failures = result.verdicts.all_failures()
        if failures and failures[0].chart is not None:
            sys.stdout.write(chart_text(failures[0].chart) + "\n")
    else:
        if not args.target_cmd:
            raise ClientTargetError("give the client to test with --target-cmd COMMAND (see dfachat fuzz client --help)")
        config = ClientFuzzSettings(
            args.target_cmd,
            host=args.host,
            port=args.listen,
            seed=args.seed,
            max_examples=args.max_examples,
            time_budget_s=args.time_budget,
            reply_timeout_s=args.timeout,
            cases_dir=None if args.no_cases else Path(args.cases),
            strict=args.strict,
            encodings=tuple(args.encoding) if args.encoding else None,
            progress=not args.quiet,
            fail_fast=args.exitfirst,
        )
        result = run_client_fuzz(config)
    write_reports(result, args)
    sys.stdout.write(summary_text(result, verbose=args.verbose))
    sys.stdout.flush()
    return result.exit_code
