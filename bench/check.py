"""The model checker's reach and speed: distinct states, states/s and wall time.

    python bench/check.py [--n4-states 1000000] [--skip-unreduced-n3]

Runs, one after the other, in this process:

  (a) ``dfachat check``'s default bounds (docs/CHECKING.md) for N = 2, 3, 4
      clients; N = 4 stops at ``--n4-states`` distinct states and says so;
  (b) interchangeable clients (``--pool``: the same encoding, each may log in
      to any of the N accounts; one MSG in the run, no aborts or wrong
      passwords) for N = 2, 3, 4, without and with symmetry reduction -- the
      default clients differ in account and encoding, so symmetry cannot
      reduce them; N = 4 stops at ``--n4-states``;
  (c) the default N = 3 run and (b) at N = 3 with symmetry again, with 2 worker
      processes (``--workers 2``).

Every run judges every property, as ``dfachat check`` does. Prints a table,
then, last, one JSON line with ``states_per_s`` and ``n3_seconds`` (the
default N = 3 run, target under 60 s), ``symmetry_reduction_n3`` (distinct
states of (b) at N = 3 without symmetry over with it, target at least 4),
``workers2_speedup_n3``, ``workers2_speedup_pool3_sym`` and the rest.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from dfachat.conformance.checker import ModelConfig, check
from dfachat.conformance.checker.command import default_bounds
from dfachat.conformance.checker.explore import CheckResult

POOL_BOUNDS = {"capacity": 8, "max_msgs": 1, "total_msgs": 1, "aborts": 0, "wrong_logins": 0}


def run(
    label: str,
    config: ModelConfig,
    *,
    symmetry: bool = False,
    workers: int = 1,
    max_states: int | None = None,
) -> dict[str, Any]:
    result: CheckResult = check(config, symmetry=symmetry, workers=workers, max_states=max_states)
    row = {
        "run": label,
        "clients": len(config.clients),
        "symmetry": symmetry,
        "workers": workers,
        "states": result.states,
        "transitions": result.transitions,
        "depth": result.depth,
        "seconds": round(result.seconds, 2),
        "states_per_s": round(result.states_per_s),
        "complete": result.complete,
        "limit": result.limit,
        "ok": result.ok,
        "violations": [v.property.name for v in result.violations],
    }
    state = "complete" if result.complete else f"{result.limit} limit"
    verdict = "ok" if result.ok else "VIOLATION " + ",".join(row["violations"])
    print(
        f"| {label:<8} | {row['clients']} | {'yes' if symmetry else 'no':<3} | {workers} | {result.states:>10,} "
        f"| {result.transitions:>11,} | {result.seconds:8.1f} | {result.states_per_s:>8,.0f} | {state:<12} | {verdict} |",
        flush=True,
    )
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--n4-states", type=int, default=1_000_000, help="state limit for the N = 4 runs"
    )
    parser.add_argument(
        "--skip-unreduced-n3", action="store_true", help="skip (b) N = 3 without symmetry (minutes)"
    )
    args = parser.parse_args(argv)
    print(
        "| run      | N | sym | K |     states | transitions |      s   | states/s | explored     | verdict |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---|---|")
    rows: dict[str, dict[str, Any]] = {}
    for n in (2, 3, 4):
        config = ModelConfig.for_clients(n, **default_bounds(n))
        rows[f"default{n}"] = run("default", config, max_states=args.n4_states if n == 4 else None)
    for n in (2, 3, 4):
        config = ModelConfig.for_clients(n, symmetric=True, **POOL_BOUNDS)
        limit = args.n4_states if n == 4 else None
        rows[f"pool{n}_sym"] = run("pool", config, symmetry=True, max_states=limit)
        if n == 3 and args.skip_unreduced_n3:
            continue
        rows[f"pool{n}"] = run("pool", config, max_states=limit)
    rows["default3_workers2"] = run(
        "default", ModelConfig.for_clients(3, **default_bounds(3)), workers=2
    )
    pool3_config = ModelConfig.for_clients(3, symmetric=True, **POOL_BOUNDS)
    rows["pool3_sym_workers2"] = run("pool", pool3_config, symmetry=True, workers=2)

    n3 = rows["default3"]
    pool3, pool3_sym = rows.get("pool3"), rows["pool3_sym"]
    summary = {
        "states_per_s": n3["states_per_s"],
        "n3_seconds": n3["seconds"],
        "n3_states": n3["states"],
        "n3_complete": n3["complete"],
        "n2_states": rows["default2"]["states"],
        "n2_seconds": rows["default2"]["seconds"],
        "n4_states": rows["default4"]["states"],
        "n4_seconds": rows["default4"]["seconds"],
        "n4_complete": rows["default4"]["complete"],
        "n4_limit": rows["default4"]["limit"],
        "symmetry_reduction_n2": round(rows["pool2"]["states"] / rows["pool2_sym"]["states"], 2),
        "symmetry_reduction_n3": round(pool3["states"] / pool3_sym["states"], 2) if pool3 else None,
        "pool3_states": pool3["states"] if pool3 else None,
        "pool3_sym_states": pool3_sym["states"],
        "pool3_sym_seconds": pool3_sym["seconds"],
        "workers2_n3_seconds": rows["default3_workers2"]["seconds"],
        "workers2_speedup_n3": round(n3["seconds"] / rows["default3_workers2"]["seconds"], 2),
        "workers2_speedup_pool3_sym": round(
            pool3_sym["seconds"] / rows["pool3_sym_workers2"]["seconds"], 2
        ),
        "all_ok": all(row["ok"] for row in rows.values()),
    }
    print(json.dumps(summary))
    return 0 if summary["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
