"""The conformance fuzzer's speed and reach: steps/s against the reference server, time to kill each fault.

    python bench/fuzz.py [--seconds 20] [--seed 1] [--fault NAME ...] [--workers 1] [--timeout 120]

Every run is ``dfachat fuzz server`` as a user runs it, in a child process,
with ``--target-cmd`` starting the server under test on a free port of
127.0.0.1 over a fresh SQLite file: the faulty servers of the tests
(``tests/conformance/faulty_servers.py``: the reference server with one fault
injected each), all announcing the same short idle timeout.

  (a) throughput: the reference server for ``--seconds`` (``--time-budget``,
      examples unbounded); steps/s as the fuzzer reports it in ``--json``.
      The reference server must pass.
  (b) kills: each faulty server (or those named with ``--fault``) with the
      fuzzer's default time budget and ``--seed``. Seconds to kill is the time
      to the first failing step as the fuzzer reports it (``first_failure_s``
      in the report's settings; before shrinking), or, when it reports none,
      the wall clock of the whole run (an upper bound). A fault is killed when
      the run fails with a check citing one of the fault's rules
      (``Fault.rules``).

``--workers`` runs that many kills at once: faster, but each then competes
for the CPU and its seconds grow; the figures of record use 1.

Prints a table, then, last, one JSON line with ``steps_per_s``, ``killed``,
``total``, ``max_seconds_to_kill`` (target: every fault killed, each within
60 s) and the per-fault figures.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

FAULTY_SERVERS = Path(__file__).resolve().parent.parent / "tests" / "conformance" / "faulty_servers.py"
TARGET_S = 60.0  # the bound on the time to kill one fault


def load_faulty_servers() -> ModuleType:
    """The test suite's faulty servers, loaded from their file (the tests are not a package)."""
    spec = importlib.util.spec_from_file_location("faulty_servers", FAULTY_SERVERS)
    assert spec is not None and spec.loader is not None, FAULTY_SERVERS
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def seconds_to_kill(run: Any) -> float | None:
    """The fuzzer's time to the first failure when it reports one, else the whole run's (an upper bound)."""
    if not run.caught:
        return None
    return run.first_failure_s if run.first_failure_s is not None else round(run.seconds, 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="time budget of the throughput run")
    parser.add_argument("--seed", type=int, default=1, help="the fuzzer's seed for every run")
    parser.add_argument("--fault", action="append", metavar="NAME", help="only these faults (repeatable)")
    parser.add_argument("--workers", type=int, default=1, help="kills run at once")
    parser.add_argument("--timeout", type=float, default=120.0, help="give up on one run after this long")
    args = parser.parse_args()

    faulty = load_faulty_servers()
    names = args.fault or list(faulty.FAULTS)
    unknown = set(names) - set(faulty.FAULTS)
    if unknown:
        parser.error(f"no fault {', '.join(sorted(unknown))}; see python {FAULTY_SERVERS} --list")
    workdir = Path(tempfile.mkdtemp(prefix="dfachat-bench-fuzz-"))

    print(f"(a) the reference server for {args.seconds:g} s ...", file=sys.stderr, flush=True)
    budget = ("--time-budget", f"{args.seconds:g}", "--max-examples", "1000000")
    reference = faulty.fuzz("none", workdir / "reference", seed=args.seed, options=budget, timeout=args.timeout + args.seconds)
    if reference.report is None:
        print(reference.describe(), file=sys.stderr)
        return 1
    steps_per_s = float(reference.report["steps_per_s"])
    print(
        f"reference: exit {reference.exit_code}, {reference.report['steps']} steps in "
        f"{reference.report['duration_s']:.1f} s = {steps_per_s:.1f} steps/s, "
        f"{reference.report['examples']} examples",
        file=sys.stderr,
        flush=True,
    )

    print(f"(b) {len(names)} faulty servers, {args.workers} at a time ...", file=sys.stderr, flush=True)

    def kill(name: str) -> Any:
        # -x: stop at the first failure once shrunk and saved, as a CI job would want
        run = faulty.fuzz(name, workdir / name, seed=args.seed, options=("-x",), timeout=args.timeout)
        mark = "killed" if run.caught else "MISSED"
        print(f"  {name}: {mark} in {run.seconds:.1f} s", file=sys.stderr, flush=True)
        return run

    with ThreadPoolExecutor(max(1, args.workers)) as pool:
        runs = list(pool.map(kill, names))

    print()
    print("| fault | ours | killed | check that failed | first failure (s) | whole run (s) |")
    print("|---|---|---|---|---:|---:|")
    per_fault = {}
    for run in runs:
        fault = faulty.FAULTS[run.fault]
        # the checks citing the fault's rules first
        cited = sorted(run.failed, key=lambda check: (check.partition("/")[0] not in fault.rules, check))
        to_kill = seconds_to_kill(run)
        print(
            f"| {run.fault} | {'yes' if fault.ours else ''} | {'yes' if run.caught else 'NO'} | "
            f"{', '.join(cited) or '-'} | {'-' if to_kill is None else f'{to_kill:.1f}'} | {run.seconds:.1f} |"
        )
        per_fault[run.fault] = {
            "killed": run.caught, "checks": cited, "seconds_to_kill": to_kill, "run_seconds": round(run.seconds, 2)
        }
    killed = [run for run in runs if run.caught]
    max_seconds = max((seconds_to_kill(run) or 0.0 for run in killed), default=0.0)
    print()
    print(
        f"steps/s against the reference server: {steps_per_s:.1f} (passed: {reference.exit_code == 0}); "
        f"killed {len(killed)}/{len(runs)}; slowest kill {max_seconds:.1f} s (target {TARGET_S:g} s)"
    )
    for run in runs:
        if not run.caught:
            print(run.describe(), file=sys.stderr)
    summary = {
        "steps_per_s": round(steps_per_s, 1),
        "reference_passed": reference.exit_code == 0,
        "killed": len(killed),
        "total": len(runs),
        "max_seconds_to_kill": round(max_seconds, 2),
        "seed": args.seed,
        "workers": args.workers,
        "faults": per_fault,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
