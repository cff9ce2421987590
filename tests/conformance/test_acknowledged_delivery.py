"""Protocol version 2 in the checker: applications, acknowledgements and client crashes (issue 14).

Version 2 promises that every MSG its MSG_ACK reported DELIVERED, LOSSY or
QUEUED reaches each recipient's application exactly once, across client
crashes (R7.10, R7.11, R7.13). The same property over version-1 clients that
crash between a DELIVER's arrival and its taking is refuted with a minimal
trace: version 1 forgets a message once it is written (R7.7).
"""

from __future__ import annotations

import json

import pytest

from dfachat.cli import main
from dfachat.conformance.checker import Model, ModelConfig, check
from dfachat.conformance.checker.model import Client, Domain, EvApplication
from dfachat.conformance.checker.report import msc_text, trace_json
from dfachat.spec import DeliverFlags

PROPERTY = "acknowledged_reaches_the_application_once"
BASE = {"capacity": 8, "aborts": 0, "wrong_logins": 0, "crashes": 1}


class CrashesBeforeTaking(Model):
    """Clients crash only between a DELIVER's arrival and its taking by the application."""

    def may_crash(self, c: Client) -> bool:
        return bool(c.arrived)


def _no_violation(config: ModelConfig, model_cls: type[Model] = Model, **options: object) -> None:
    result = check(config, model_cls=model_cls, **options)  # type: ignore[arg-type]
    assert not result.violations, msc_text(result.violations[0], config)
    assert result.complete  # (no duplicate to drop: nothing is taken before a crash here)


def test_version_1_loses_a_message_its_client_crashes_on() -> None:
    config = ModelConfig.for_clients(1, versions=(1,), **BASE)
    result = check(config, model_cls=CrashesBeforeTaking, properties=[PROPERTY])
    assert [v.property.name for v in result.violations] == [PROPERTY]
    steps = result.violations[0].steps
    # minimal: the search one step shorter finds nothing
    shorter = check(config, model_cls=CrashesBeforeTaking, max_depth=len(steps) - 1, properties=[PROPERTY])
    assert not shorter.violations and len(steps) <= 30
    actions = [(step.client, step.action) for step in steps]
    crash = actions.index((0, "crash"))
    # the DELIVER arrived, the crash lost it untaken, and the next login brought nothing back
    assert any(s.action == "receive" and s.message.NAME == "DELIVER" for s in steps[:crash])
    assert EvApplication(0, 1, "lost") in steps[crash].events
    assert (0, "connect") in actions[crash:] and steps[-1].message.NAME == "AUTH_OK"
    assert not any(s.action == "take" for s in steps)
    chart = msc_text(result.violations[0], config)
    assert "CRASHES, losing 1 not taken" in chart
    assert [s["action"] for s in trace_json(result.violations[0], config)["steps"]].count("crash") == 1


def test_version_1_without_crashes_is_the_model_it_was() -> None:
    config = ModelConfig.for_clients(2, capacity=8, max_msgs=0, aborts=0, wrong_logins=0)
    assert not config.applications
    result = check(config)
    assert result.ok and PROPERTY in result.skipped


def test_version_2_keeps_what_a_crashed_client_did_not_take() -> None:
    _no_violation(ModelConfig.for_clients(1, versions=(2,), **BASE), CrashesBeforeTaking)


@pytest.mark.parametrize(
    "bounds",
    [
        {},  # a crash anywhere: before, while and after the DELIVER, its taking and its DELIVER_ACK
        {"max_msgs": 2, "deliver_window": 1},  # a full window: the second waits in the inbox
        {"max_msgs": 2, "deliver_window": 2},
        {"restarts": 1},  # the inbox survives a server restart
        {"aborts": 1, "sessions": 2},  # a dropped connection (the client survives) and a new session
    ],
)
def test_version_2_delivers_every_acknowledged_message_exactly_once(bounds: dict[str, int]) -> None:
    config = ModelConfig.for_clients(1, versions=(2,), **{**BASE, **bounds})
    result = check(config)
    assert not result.violations, msc_text(result.violations[0], config)
    assert result.complete and result.ok, result.unwitnessed
    witnessed = set(result.witnessed)
    assert {"redelivered_after_a_crash", "taken_message_dropped_when_redelivered"} <= witnessed
    taken = {(role, trigger) for role, _, trigger, _ in result.coverage}
    assert {("client", "send_DELIVER_ACK"), ("server", "recv_DELIVER_ACK")} <= taken


def test_version_2_two_users_live_and_stored() -> None:
    """One MSG in the run, live or stored, directed or broadcast, lossy to the latin-1 client;
    each client may crash once while holding a message it has not taken. (With crashes
    anywhere: 127,115 states, half a minute, see docs/CHECKING.md.)"""
    config = ModelConfig.for_clients(2, versions=(2,), total_msgs=1, domain=Domain(texts=("5 \u20ac",)), **BASE)
    result = check(config, model_cls=CrashesBeforeTaking)
    assert not result.violations, msc_text(result.violations[0], config)
    assert result.complete
    witnessed = set(result.witnessed)
    assert {"stored_message_delivered_at_login", "lossy_delivery", "redelivered_after_a_crash"} <= witnessed


def test_version_2_reduction_and_wire_change_no_verdict() -> None:
    config = ModelConfig.for_clients(1, versions=(2,), max_msgs=2, **BASE)
    reduced, full = check(config), check(config, reduce=False)
    assert reduced.ok and full.ok and reduced.coverage == full.coverage
    wire = check(ModelConfig.for_clients(1, versions=(2,), wire=True, **BASE))
    assert wire.ok and not wire.violations


def test_the_application_drops_what_it_took_before() -> None:
    """After a crash between taking and acknowledging, the message comes back REDELIVERED;
    the client drops it and acknowledges it (R7.11): the application's log has it once."""
    config = ModelConfig.for_clients(1, versions=(2,), **BASE)
    model = Model(config)
    seen: list[tuple[str, int]] = []
    frontier, visited = [model.initial()], set()
    while frontier:
        state = frontier.pop()
        for step, nxt in model.successors(state):
            for event in step.events:
                if isinstance(event, EvApplication) and event.what == "dropped":
                    message = next(
                        s.message for s in [step] if s.message is not None and s.message.NAME == "DELIVER"
                    )
                    assert message.flags & DeliverFlags.REDELIVERED
                    seen.append((event.what, event.server_msg_id))
            if nxt not in visited:
                visited.add(nxt)
                frontier.append(nxt)
    assert seen


def test_dfachat_check_protocol_version_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--clients", "1", "--protocol-version", "2", "--quiet", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    config = summary["config"]
    assert summary["ok"] and summary["complete"] and config["versions"] == [2]
    assert (config["crashes"], config["deliver_window"]) == (1, 1)  # version 2's own defaults
    # version 1 keeps its defaults: no crashes, and the application properties are skipped
    assert main(["check", "--clients", "1", "--quiet", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["config"]["crashes"] == 0
    skipped = {p["name"] for p in summary["properties"] if p["status"] == "skipped"}
    assert PROPERTY in skipped
