"""``dfachat check`` stops within its bounds and reports what it has when interrupted,
run as a user runs it (``python -m dfachat check ...``). The checker's own tests live in
tests/conformance; these are about the command's bounds, Ctrl-C and --quiet."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from dfachat.cli import CHECK_MAX_MEMORY_MIB, CHECK_MAX_STATES, main

SMALL = ["--clients", "2", "--max-msgs", "0", "--aborts", "0", "--wrong-logins", "0"]


def check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dfachat", "check", *args], capture_output=True, text=True, timeout=120,
        check=False,
    )


def test_a_tiny_state_limit_stops_with_the_option_named() -> None:
    result = check("--clients", "2", "--max-states", "300")
    assert result.returncode == 0, result.stderr  # nothing violated in what it saw
    assert "stopped at the state limit (300 distinct states)" in result.stdout
    assert "raise it with --max-states N" in result.stdout
    assert "explored 300 distinct states" in result.stdout
    assert "unrefuted" in result.stdout and " holds " not in result.stdout  # partial proves nothing


def test_a_tiny_memory_limit_stops_with_the_option_named() -> None:
    result = check("--clients", "2", "--max-memory", "1", "--json")
    summary = json.loads(result.stdout)
    assert summary["limit"] == "memory" and not summary["complete"]
    assert "--max-memory" in summary["stopped"] and summary["max_memory_mib"] == 1


def test_the_default_bounds_are_on_and_documented() -> None:
    result = check(*SMALL, "--json")
    summary = json.loads(result.stdout)
    assert summary["complete"] and summary["stopped"] is None
    assert (summary["max_states"], summary["max_memory_mib"]) == (CHECK_MAX_STATES, CHECK_MAX_MEMORY_MIB)
    from pathlib import Path

    guide = " ".join((Path(__file__).parents[1] / "docs" / "CHECKING.md").read_text().split())
    assert f"{CHECK_MAX_STATES:,} distinct states" in guide and f"{CHECK_MAX_MEMORY_MIB:,} MiB" in guide


def test_zero_lifts_the_bounds(capsys: object) -> None:
    assert main(["check", *SMALL, "--max-states", "0", "--max-memory", "0", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)  # type: ignore[attr-defined]
    assert summary["complete"] and summary["max_states"] is None and summary["max_memory_mib"] is None


def test_sigint_prints_the_partial_result_and_exits_130() -> None:
    # Four clients with no state bound run for minutes: interrupt one a few seconds in.
    proc = subprocess.Popen(
        [sys.executable, "-m", "dfachat", "check", "--clients", "4", "--max-states", "0", "--max-memory", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        time.sleep(6)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "interrupted (Ctrl-C): the result so far" in out
    explored = next(line for line in out.splitlines() if line.startswith("explored "))
    assert int(explored.split()[1].replace(",", "")) > 0
    assert "properties:" in out and "unrefuted" in out  # what holds so far, not proved
    assert "coverage (rows of each role's table taken)" in out


def test_quiet_means_quiet_and_verbose_lists_the_unreached_rows() -> None:
    quiet = check(*SMALL, "--quiet")
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert "coverage (rows" in quiet.stdout and "unreached" not in quiet.stdout
    verbose = check(*SMALL, "--verbose")
    assert "  unreached server " in verbose.stdout
    as_json = json.loads(check(*SMALL, "--json").stdout)
    assert as_json["coverage"]["server"]["unreached"]  # JSON keeps them
