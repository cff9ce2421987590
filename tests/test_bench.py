"""The version-2 benchmarks (``bench/fanout.py``, ``bench/backlog.py``) in tiny, bounded runs.

They run as a user runs them, as scripts with real server processes, and are
held to what the benchmarks themselves require that is not a timing: every
message delivered exactly once and in order, in both protocol versions, and
version 2 acknowledged (the generator stalls at the window if it does not).
The timing targets are the full runs' business (docs/PERFORMANCE.md): these
machines are shared.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[1] / "bench"


def run_bench(script: str, *args: str, timeout: float = 60.0) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=timeout, cwd=BENCH
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_fanout_measures_both_versions_side_by_side() -> None:
    result = run_bench("fanout.py", "--clients", "6", "--senders", "1,2", "--seconds", "0.3", "--rounds", "1",
                       "--rate", "200")
    summary = json.dumps(result)
    assert result["protocol_versions"] == [1, 2], summary
    assert result["lost"] == 0 and result["short_acks"] == 0, summary
    for version in ("1", "2"):
        for k, figures in result["versions"][version].items():
            assert figures["deliveries_per_s"] > 0 and figures["drained"], (version, k, summary)
    # version 2 went past its first window only because the generator acknowledged
    assert all(f["deliver_acks"] > 0 for f in result["versions"]["2"].values()), summary
    assert all(f["deliver_acks"] == 0 for f in result["versions"]["1"].values()), summary
    assert set(result["v2_over_v1_by_senders"]) == {"1", "2"} and result["v2_over_v1"] > 0, summary


def test_fanout_one_version() -> None:
    result = run_bench("fanout.py", "--clients", "4", "--senders", "1", "--seconds", "0.2", "--rounds", "1",
                       "--rate", "200", "--protocol-version", "2")
    assert result["protocol_versions"] == [2] and list(result["versions"]) == ["2"], result
    assert result["lost"] == 0 and "v2_over_v1" not in result, result


def test_backlog_is_delivered_whole_and_in_order() -> None:
    messages = 300  # over four version-2 windows
    result = run_bench("backlog.py", "--messages", str(messages), "--pingers", "3", "--timeout", "20")
    summary = json.dumps(result)
    assert result["protocol_version"] == 2 and result["complete"], summary
    for version, run in result["versions"].items():
        assert run["version"] == int(version), summary
        assert run["delivered"] == messages and run["missing"] == 0, summary
        assert run["duplicates"] == 0 and run["reordered"] == 0 and run["foreign"] == 0, summary
        assert run["not_stored_flag"] == 0 and run["redelivered_flag"] == 0, summary
        assert run["stored_after"] == 0, summary  # version 1 forgot on sending, version 2 on acknowledgement
        assert run["idle_ping_p50_ms"] is not None, summary  # the pingers ran
    assert result["versions"]["2"]["deliver_acks"] >= messages // 64, summary
    assert result["versions"]["1"]["deliver_acks"] == 0, summary
