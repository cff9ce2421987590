"""``dfachat check``: the options (declared in :mod:`dfachat.cli`) to a run and its report.

Exit status: 0 every property holds (and every witness was found, when the
exploration was complete), 1 a property is violated or a witness is missing,
2 a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from dfachat.conformance.checker.explore import STRATEGIES, check
from dfachat.conformance.checker.model import ModelConfig
from dfachat.conformance.checker.properties import PROPERTIES
from dfachat.conformance.checker.report import msc_mermaid, summary_json, summary_text, trace_json

__all__ = ["BOUNDS", "config_from_args", "default_bounds", "run"]

EXIT_OK, EXIT_VIOLATION, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

# option name -> ModelConfig field
BOUNDS = {
    "capacity": "capacity",
    "max_msgs": "max_msgs",
    "total_msgs": "total_msgs",
    "lists": "max_lists",
    "pings": "max_pings",
    "wrong_logins": "wrong_logins",
    "sessions": "sessions",
    "aborts": "aborts",
    "timeouts": "timeouts",
    "server_pings": "server_pings",
    "restarts": "restarts",
    "malformed": "malformed",
    "login_attempts": "login_attempts",
    "page_size": "page_size",
    "crashes": "crashes",
    "deliver_window": "deliver_window",
}


def default_bounds(clients: int, version: int = 1) -> dict[str, int]:
    """The bounds ``dfachat check`` uses unless told otherwise.

    Two clients: one MSG each, one wrong password and one abort (drop or fatal
    ERROR) each. Three or more: one MSG in the whole run and no aborts or wrong
    passwords, which keeps three clients under a minute (the two-client run
    covers those); pass the options to explore more.

    Protocol version 2: one MSG in the run, a deliver window of 1, no aborts or
    wrong passwords; one client crash each (the step that exercises acknowledged
    delivery) up to two clients. Three clients with crashes pass 3 million states;
    without them the three-party run is about 2 million (the two-client run covers crashes).
    """
    if version >= 2:
        return {
            "capacity": 8, "max_msgs": 1, "total_msgs": 1, "wrong_logins": 0, "aborts": 0,
            "crashes": 1 if clients <= 2 else 0, "deliver_window": 1,
        }
    if clients <= 2:
        return {"capacity": 8, "max_msgs": 1, "total_msgs": 0, "wrong_logins": 1, "aborts": 1}
    return {"capacity": 8, "max_msgs": 1, "total_msgs": 1, "wrong_logins": 0, "aborts": 0}


def config_from_args(args: argparse.Namespace) -> ModelConfig:
    """The model the options describe: :func:`default_bounds`, then each option given."""
    version = getattr(args, "protocol_version", None)
    versions = {} if version is None else {"versions": (version,)}
    fields = default_bounds(args.clients, version or 1)  # ModelConfig field names
    for option, name in BOUNDS.items():
        value = getattr(args, option, None)  # None: not given (or not an option of this CLI)
        if value is not None:
            fields[name] = value
    return ModelConfig.for_clients(args.clients, symmetric=args.pool, wire=args.wire, **fields, **versions)


def _usage(message: str) -> int:
    print(f"dfachat check: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _write_file(path: str, text: str) -> None:
    Path(path).write_text(text, encoding="utf-8")


def run(args: argparse.Namespace) -> int:
    if args.list_properties:
        for p in PROPERTIES.values():
            print(f"{p.kind:<10} {p.name:<44} {' '.join(p.rules):<22} {p.doc}")
        return EXIT_OK
    unknown = [name for name in args.property or () if name not in PROPERTIES]
    if unknown:
        return _usage(f"no property {', '.join(unknown)}; see --list-properties")
    if args.strategy not in STRATEGIES:
        return _usage(f"--strategy must be one of {', '.join(STRATEGIES)}")
    # (option, value, least allowed): counts start at 1, bounds at 0.
    numbers = [("clients", args.clients, 1), ("workers", args.workers, 1)]
    numbers += [("depth", args.depth, 1), ("max_states", args.max_states, 0), ("max_memory", args.max_memory, 0)]
    numbers += [(option, getattr(args, option, None), 0) for option in BOUNDS]
    for name, value, least in numbers:
        if value is not None and value < least:
            option = "--" + name.replace("_", "-")
            return _usage(f"{option} {value}: give {'at least 1' if least else '0 or more'}")
    if args.workers > 1 and args.strategy != "bfs":
        return _usage("--workers needs --strategy bfs")
    try:
        config = config_from_args(args)
    except ValueError as exc:
        return _usage(str(exc))
    progress = sys.stderr if sys.stderr.isatty() and not args.quiet else None
    # The defaults are cli.CHECK_MAX_STATES and CHECK_MAX_MEMORY_MIB; 0 lifts a bound.
    max_states, max_memory = args.max_states or None, args.max_memory or None
    result = check(
        config,
        properties=args.property or None,
        strategy=args.strategy,
        max_depth=args.depth,
        max_states=max_states,
        max_memory_mb=max_memory,
        symmetry=args.symmetry,
        reduce=not args.no_reduction,
        workers=args.workers,
        seed=args.seed,
        progress=progress,
    )
    if result.violations:
        first = result.violations[0]
        if args.msc:
            _write_file(args.msc, msc_mermaid(first, config))
        if args.trace:
            _write_file(args.trace, json.dumps(trace_json(first, config), indent=2) + "\n")
    if args.json:
        out: dict[str, Any] = summary_json(result)
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
    else:
        sys.stdout.write(summary_text(result, verbose=args.verbose))
        if result.violations and (args.msc or args.trace):
            written = [f for f in (args.msc, args.trace) if f]
            sys.stdout.write(f"counterexample written to {' and '.join(written)}\n")
    sys.stdout.flush()
    if result.limit == "interrupted":
        return EXIT_INTERRUPTED
    return EXIT_OK if result.ok else EXIT_VIOLATION
