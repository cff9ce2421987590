"""``dfachat fuzz server`` and ``dfachat fuzz replay``: arguments to a run, a run to reports.

The parsers are declared in :mod:`dfachat.cli` (``_add_fuzz``); the handlers
here turn arguments into :class:`~.server_mode.FuzzSettings`, run, write the
reports asked for and return the exit status: 0 when nothing failed, 1 when a
check failed, 2 (from the CLI) on bad usage.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any

from dfachat.conformance.fuzz.oracle import Account
from dfachat.conformance.fuzz.wire import FuzzError, Target, TargetProcess, parse_address

__all__ = ["parse_accounts", "run_replay", "run_server", "target_from_args", "write_reports"]


def parse_accounts(values: list[str] | None, *, minimum: int) -> list[Account]:
    """``NAME:PASSWORD`` options as accounts; FuzzError naming the problem (R4.1 for names)."""
    from dfachat.codec import encode
    from dfachat.codec.messages import USER  # type: ignore[attr-defined]
    from dfachat.errors import FrameError
    from dfachat.server.store import name_key

    accounts: list[Account] = []
    for value in values or []:
        name, sep, password = value.partition(":")
        if not sep or not password:
            raise FuzzError(f"--account {value!r} is not NAME:PASSWORD")
        try:
            encode(USER(name=name))
        except FrameError as exc:
            raise FuzzError(f"--account {value!r}: {name!r} is not a user name: a name is a letter, then "
                            f"letters, digits, _ . - ({exc.detail})") from None
        if any(name_key(a.name) == name_key(name) for a in accounts):
            raise FuzzError(f"--account {name!r} is given twice (names match case-insensitively): "
                            "give each account once")
        accounts.append(Account(name, password))
    if len(accounts) < minimum:
        raise FuzzError(f"give at least {minimum} accounts of the target with --account NAME:PASSWORD "
                        f"(got {len(accounts)})")
    return accounts


def target_from_args(args: argparse.Namespace) -> Target:
    host, port = parse_address(args.address)
    tls = None
    if args.tls or args.ca:
        from dfachat.client import tls_context
        from dfachat.errors import ClientError

        try:
            tls = tls_context(args.ca)
        except ClientError as exc:
            raise FuzzError(str(exc)) from None
    return Target(host, port, tls=tls)


def write_reports(result: Any, args: argparse.Namespace) -> None:
    from dfachat.conformance.fuzz import report

    for option, writer in (("json", report.write_json), ("junit", report.write_junit), ("html", report.write_html)):
        path = getattr(args, option, None)
        if path:
            try:
                writer(result, path)
            except OSError as exc:
                raise FuzzError(f"cannot write --{option} {path}: {exc.strerror or exc}") from None


def _positive(name: str, value: float | int | None) -> None:
    if value is not None and value <= 0:
        raise FuzzError(f"{name} must be positive, not {value}")


def run_server(args: argparse.Namespace) -> int:
    """``dfachat fuzz server HOST:PORT --account NAME:PASSWORD ...``."""
    from dfachat.conformance.fuzz.report import summary_text
    from dfachat.conformance.fuzz.server_mode import FuzzSettings, run_server_fuzz

    accounts = parse_accounts(args.account, minimum=2)
    for name in ("max_examples", "time_budget", "timeout"):
        _positive("--" + name.replace("_", "-"), getattr(args, name))
    target = target_from_args(args)
    config = FuzzSettings(
        target=target,
        accounts=accounts,
        seed=args.seed,
        max_examples=args.max_examples,
        time_budget_s=args.time_budget,
        reply_timeout_s=args.timeout,
        cases_dir=None if args.no_cases else Path(args.cases),
        strict=args.strict,
        stop_on_failure=args.exitfirst,
        progress=not args.quiet,
        versions=(getattr(args, "protocol_version", None) or 1,),
    )
    with TargetProcess(args.target_cmd, target) if args.target_cmd else contextlib.nullcontext():
        if not args.target_cmd:
            target.wait_ready(min(5.0, args.time_budget))
        result = run_server_fuzz(config)
    write_reports(result, args)
    sys.stdout.write(summary_text(result, verbose=args.verbose))
    sys.stdout.flush()
    return result.exit_code


def run_replay(args: argparse.Namespace) -> int:
    """``dfachat fuzz replay CASE HOST:PORT --account NAME:PASSWORD ...``: the chart and the verdict."""
    from dfachat.conformance.fuzz.cases import load_actions, replay
    from dfachat.conformance.fuzz.report import chart_text

    case = Path(args.case)
    if not case.is_file():  # the first thing wrong is the first thing said
        reason = "is a directory" if case.is_dir() else "no such file"
        raise FuzzError(f"cannot read case {case}: {reason}; give the path of a case file "
                        "saved by `dfachat fuzz server` (in ./dfachat-fuzz-cases by default)")
    accounts = parse_accounts(args.account, minimum=1)
    target = target_from_args(args)
    actions, _ = load_actions(case, accounts)
    with TargetProcess(args.target_cmd, target) if args.target_cmd else contextlib.nullcontext():
        if not args.target_cmd:
            target.wait_ready(5.0)
        outcome = replay(actions, target, accounts, reply_timeout=args.timeout)
    out = [chart_text(outcome.chart), ""]
    if outcome.failures:
        out += [f"FAIL {check}: {detail}" for check, detail in outcome.failures]
        out.append(f"FAILED: {len({c for c, _ in outcome.failures})} checks failed replaying {args.case} "
                   f"against {target}")
    else:
        out.append(f"PASSED: {len(actions)} actions replayed against {target}, nothing failed")
    sys.stdout.write("\n".join(out) + "\n")
    sys.stdout.flush()
    return 1 if outcome.failures else 0
