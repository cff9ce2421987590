"""Server mode against the reference server: clean with several seeds, and injected faults caught.

Each fault is a ``ServerCore`` subclass made for one test, or one of the faulty
servers of ``tests/conformance/faulty_servers.py``; the fuzzer must fail the
right check, in the right spec section, with a shrunk example saved as a case
file that replays to the same failure.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dfachat.cli import main
from dfachat.codec.messages import DELIVER, Message  # type: ignore[attr-defined]
from dfachat.conformance.fuzz.cases import load_actions, replay
from dfachat.conformance.fuzz.oracle import Account
from dfachat.conformance.fuzz.report import summary_text
from dfachat.conformance.fuzz.server_mode import run_server_fuzz
from dfachat.conformance.fuzz.verdicts import CheckStatus
from dfachat.conformance.fuzz.wire import Target
from dfachat.server import CoreConnection, ServerCore
from dfachat.spec import DeliverFlags

from ..faulty_servers import FAULTS
from .conftest import ACCOUNTS, account_args, fuzz_settings


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_reference_server_passes(live_server: Any, tmp_path: Path, seed: int) -> None:
    server = live_server()
    result = run_server_fuzz(fuzz_settings(server, tmp_path, seed=seed, max_examples=25, time_budget_s=20))
    assert result.exit_code == 0, summary_text(result)
    assert not result.cases
    assert result.examples >= 5 and result.steps >= 50
    statuses = {c.id: result.verdicts.status(c) for c in result.verdicts.checks()}
    for check in ("R5.4", "R6.5", "R8.1", "R8.2", "R9.1", "R10.2", "R12.2"):
        assert statuses[check] is CheckStatus.PASSED, check
    assert result.coverage["total"] > 0 and len(result.coverage["covered"]) >= 15


class _EchoBroadcastToSender(ServerCore):
    """Fault: a broadcast also reaches its sender (breaks R7.8)."""

    def on_MSG(self, conn: CoreConnection, msg: Message, now: float) -> None:
        super().on_MSG(conn, msg, now)
        if not msg.recipients:
            self.send(conn, DELIVER(server_msg_id=2**40, timestamp_ms=1, flags=DeliverFlags(0),
                                    sender=conn.session.user or "", text=msg.text))


class _WrongMsgAckId(ServerCore):
    """Fault: MSG_ACK carries another msg_id than the MSG's (breaks R7.3)."""

    def send(self, conn: CoreConnection, message: Message) -> None:
        if message.NAME == "MSG_ACK":
            message = message.replace(msg_id=(message.msg_id + 1) % 2**32)
        super().send(conn, message)


@pytest.mark.parametrize(
    ("core_class", "check", "section"),
    [(_EchoBroadcastToSender, "R7.8", 7), (_WrongMsgAckId, "R7.3/msg-id", 7)],
)
def test_an_injected_fault_is_caught_shrunk_and_replayed(
    live_server: Any, tmp_path: Path, core_class: type[ServerCore], check: str, section: int
) -> None:
    server = live_server(core_class=core_class)
    # Bounded by time, as a user's run is (the default budget is 60 s), not by an example count:
    # which example finds it depends on what Hypothesis draws, which any loaded module can shift.
    result = run_server_fuzz(fuzz_settings(server, tmp_path, max_examples=10_000, time_budget_s=40,
                                           stop_on_failure=True))
    assert result.exit_code == 1
    failed = {c.id: c for c in result.failed_checks}
    assert check in failed, summary_text(result)
    assert failed[check].section == section
    failure = result.verdicts.failures[check][0]
    assert failure.chart is not None and any(e.bad for e in failure.chart.events)
    assert failure.case is not None and Path(failure.case).exists()
    case = json.loads(Path(failure.case).read_text(encoding="utf-8"))
    assert case["format"] == "dfachat-fuzz-case/1"
    assert len(case["actions"]) <= 8, "shrunk to a few actions"
    # The case replays to the same failure against the same faulty server ...
    accounts = [Account(n, p) for n, p in ACCOUNTS]
    actions, _ = load_actions(Path(failure.case), accounts)
    again = replay(actions, Target("127.0.0.1", server.port), accounts, reply_timeout=0.5)
    assert check in {c for c, _ in again.failures}
    # ... and passes against the reference server.
    reference = live_server()
    clean = replay(actions, Target("127.0.0.1", reference.port), accounts, reply_timeout=0.5)
    assert not clean.failures, clean.failures
    assert main(["fuzz", "replay", failure.case, server.address, *account_args()]) == 1
    assert main(["fuzz", "replay", failure.case, reference.address, *account_args()]) == 0


@pytest.mark.parametrize(
    ("fault", "rule"), [("wrong_crc_on_deliver", "R2.5"), ("loses_stored_messages", "R7.7"), ("skips_joined", "R8.1")]
)
def test_more_faults_are_caught_in_their_section(live_server: Any, tmp_path: Path, fault: str, rule: str) -> None:
    server = live_server(FAULTS[fault].shell, FAULTS[fault].core)
    result = run_server_fuzz(fuzz_settings(server, tmp_path, max_examples=400, time_budget_s=30,
                                           stop_on_failure=True))
    failed = [c.id for c in result.failed_checks]
    assert any(c == rule or c.startswith(rule + "/") for c in failed), (fault, failed)
