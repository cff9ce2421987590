"""``dfachat check`` as a user runs it, and what it reports: charts, traces, JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dfachat.cli import main
from dfachat.codec import encode
from dfachat.codec.messages import DELIVER, MSG, MSG_ACK, RecipientResult  # type: ignore[attr-defined]
from dfachat.conformance.checker import (
    ModelConfig,
    check,
    message_from_json,
    message_json,
    msc_mermaid,
    msc_text,
    summary_json,
    trace_json,
)
from dfachat.conformance.checker.model import MODEL_VERSIONS
from dfachat.conformance.checker.properties import PROPERTIES
from dfachat.spec import MESSAGES_BY_CODE, SUPPORTED_VERSIONS, DeliverFlags, Outcome

SMALL = ["--clients", "2", "--max-msgs", "0", "--aborts", "0", "--wrong-logins", "0", "--quiet"]
# the slow-consumer finding (see test_broken_variants): the smallest run with a violation
FINDING = ["--clients", "2", "--capacity", "2", "--aborts", "0", "--wrong-logins", "0", "--quiet"]


def test_every_property_holds_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "complete" in out and "coverage (rows of each role's table taken)" in out
    for name in PROPERTIES:
        assert name in out


def test_json_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", *SMALL, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ok"] and summary["complete"] and summary["states"] > 0
    assert {"states_per_s", "seconds", "transitions", "depth", "coverage", "properties"} <= set(
        summary
    )
    assert {p["status"] for p in summary["properties"]} <= {"holds", "witnessed", "skipped"}
    assert summary["coverage"]["client"]["taken"] <= summary["coverage"]["client"]["total"]


def test_a_violation_exits_1_and_writes_the_counterexample(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    msc, trace = tmp_path / "cex.mmd", tmp_path / "cex.json"
    assert main(["check", *FINDING, "--msc", str(msc), "--trace", str(trace)]) == 1
    out = capsys.readouterr().out
    assert "VIOLATED: every_quit_gets_bye" in out and "R10.2:" in out
    assert "c1 Liz utf-8" in out and "server" in out  # the chart's columns
    assert msc.read_text().startswith("sequenceDiagram\n")
    data = json.loads(trace.read_text())
    assert data["format"] == "dfachat-trace/1" and data["property"] == "every_quit_gets_bye"
    assert data["steps"][0] == {"step": 1, "actor": "client", "client": 0, "action": "connect"}
    sends = [s for s in data["steps"] if s["action"] == "send"]
    assert all(s["message"]["type"] == message_from_json(s["message"]).NAME for s in sends)


@pytest.mark.parametrize(
    "args",
    [
        ["--property", "no_such_property"],
        ["--strategy", "sideways"],
        ["--clients", "0"],
        ["--capacity", "-1"],
        ["--workers", "2", "--strategy", "dfs"],
        ["--clients", "9"],
    ],
)
def test_usage_errors_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", *args]) == 2


def test_protocol_version_1_is_explored_and_reported(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", *SMALL, "--protocol-version", "1", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ok"] and summary["config"]["versions"] == [1]


def test_a_version_the_model_cannot_explore_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import dfachat.conformance.checker.model as model

    assert MODEL_VERSIONS == SUPPORTED_VERSIONS  # the checker explores every version of the spec
    monkeypatch.setattr(model, "MODEL_VERSIONS", (1,))  # as before version 2's client model existed
    assert main(["check", *SMALL, "--protocol-version", "2"]) == 2
    err = capsys.readouterr().err
    assert "explores protocol versions 1 only, not 2" in err
    # not a version of the spec: the choices are SUPPORTED_VERSIONS
    assert main(["check", "--protocol-version", str(max(SUPPORTED_VERSIONS) + 1)]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_the_model_clients_offer_the_configured_versions() -> None:
    from dfachat.conformance.checker.model import Client, Model

    model = Model(ModelConfig.for_clients(1))
    assert ModelConfig.for_clients(1).versions == (1,)
    hello = model.values_HELLO(Client(None, False, 0, 0, 0, 0, 0, 0, 0, 0, 0, None, False, None, (), False), 0)
    assert [m.versions for m in hello] == [(1,)]
    # a type later versions add is no move of a version-1 client (DELIVER_ACK)
    assert all(MESSAGES_BY_CODE[code].in_version(1) for code in model.values)
    with pytest.raises(ValueError, match="protocol versions among"):
        ModelConfig.for_clients(1, versions=(max(SUPPORTED_VERSIONS) + 1,))


def test_list_properties(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--list-properties"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in PROPERTIES)


def test_only_the_properties_asked_for(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["check", *SMALL, "--property", "no_deadlock", "every_quit_gets_bye", "--json"]) == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert [p["name"] for p in summary["properties"]] == ["no_deadlock", "every_quit_gets_bye"]


def test_run_as_a_program() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dfachat", "check", *FINDING, "--json"],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    summary = json.loads(result.stdout)
    assert not summary["ok"] and summary["violations"][0]["property"] == "every_quit_gets_bye"
    assert result.stderr == b""  # no progress line when stderr is not a terminal


def test_charts_and_traces_of_a_violation() -> None:
    config = ModelConfig.for_clients(2, capacity=2, aborts=0, wrong_logins=0)
    result = check(config)
    violation = result.violations[0]
    chart = msc_text(violation, config)
    lines = chart.splitlines()
    assert (
        "c1 Liz utf-8" in lines[0]
        and "c2 Steve latin-1" in lines[0]
        and lines[0].rstrip().endswith("server")
    )
    assert "* connects" in chart and "-->|" in chart and "|<" in chart
    assert len(lines) >= len(violation.steps)
    mermaid = msc_mermaid(violation, config)
    assert mermaid.count("participant") == 3 and "-)S: QUIT" in mermaid and "S-)C" in mermaid
    trace = trace_json(violation, config)
    assert len(trace["steps"]) == len(violation.steps)
    assert trace["config"]["capacity"] == 2 and trace["rules"]["R10.2"]
    summary = summary_json(result)
    assert summary["violations"][0]["steps"] == trace["steps"] and not summary["ok"]


def test_messages_as_json_round_trip() -> None:
    for message in (
        MSG(msg_id=1, recipients=("Liz", "Steve"), text="5 \u20ac"),
        MSG_ACK(
            msg_id=1,
            server_msg_id=9,
            delivered=1,
            lossy=0,
            results=(RecipientResult(name="Liz", outcome=Outcome.QUEUED),),
        ),
        DELIVER(
            server_msg_id=9,
            timestamp_ms=0,
            flags=DeliverFlags.DIRECTED | DeliverFlags.STORED,
            sender="Liz",
            text="hi",
        ),
    ):
        again = message_from_json(json.loads(json.dumps(message_json(message))))
        assert again == message and encode(again) == encode(message)
