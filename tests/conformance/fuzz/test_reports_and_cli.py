"""The fuzzer's reports (JSON, JUnit XML, HTML), its command line, ``--target-cmd`` and replay."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from dfachat.cli import main
from dfachat.conformance.checker import ModelConfig, check
from dfachat.conformance.checker.report import trace_json
from dfachat.conformance.fuzz.cases import load_actions, replay
from dfachat.conformance.fuzz.oracle import Account
from dfachat.conformance.fuzz.report import (
    chart_text,
    result_json,
    write_html,
    write_json,
    write_junit,
)
from dfachat.conformance.fuzz.verdicts import (
    CHECKS,
    Chart,
    ChartEvent,
    CheckStatus,
    Level,
    RunResult,
    Verdicts,
    check_for,
)
from dfachat.conformance.fuzz.wire import Target
from dfachat.server import Store
from dfachat.spec import SECTIONS

from .conftest import ACCOUNTS, TEST_KDF, account_args


def _result(strict: bool = False) -> RunResult:
    verdicts = Verdicts("server")
    verdicts.exercise("R8.1")
    verdicts.exercise("R7.4/outcome", 3)
    chart = Chart(["target", "c1"], [ChartEvent("arrow", 1, 0, "MSG 1 to everyone: 'hi'"),
                                     ChartEvent("arrow", 0, 1, "DELIVER id=1 from Liz: 'hi'", True)])
    verdicts.fail("R7.8", "c1: a broadcast reached its sender", chart)
    verdicts.fail("R9.5", "RATE_LIMITED after a few logins")  # a MAY rule: non-strict
    return RunResult("server", "127.0.0.1:1", verdicts, seed=7, strict=strict, examples=3, steps=30, duration_s=1.5)


def test_the_catalogue_is_the_spec() -> None:
    for role in ("server", "client"):
        ids = {c.rule for c in CHECKS[role].values()}
        assert ids == {rule.id for section in SECTIONS for rule in section.rules}
    check = check_for("server", "R7.4/outcome")
    assert (check.section, check.level, check.rule) == (7, Level.MUST, "R7.4")
    assert check_for("server", "R9.2").level is Level.MUST
    with pytest.raises(KeyError):
        check_for("server", "R99.1/nothing")


def test_levels_grade_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    result = _result()
    statuses = {c.id: result.verdicts.status(c) for c in result.verdicts.checks()}
    assert statuses["R7.8"] is CheckStatus.FAILED
    assert statuses["R8.1"] is CheckStatus.PASSED
    assert statuses["R1.1"] is CheckStatus.UNEXERCISED
    assert result.exit_code == 1
    # The spec has no SHOULD rule yet: a SHOULD-level check, for this test only, shows the grading.
    should = dataclasses.replace(check_for("server", "R9.2"), id="R9.2/late-ping", level=Level.SHOULD)
    monkeypatch.setitem(CHECKS["server"], should.id, should)
    verdicts = Verdicts("server")
    verdicts.fail(should.id, "late")
    assert verdicts.status(should) is CheckStatus.NON_STRICT
    assert RunResult("server", "t", verdicts).exit_code == 0
    assert RunResult("server", "t", verdicts, strict=True).exit_code == 1
    may = Verdicts("server")
    may.fail("R9.5", "rate limited a little early")  # a MAY rule never fails a run
    assert RunResult("server", "t", may, strict=True).exit_code == 0


def test_json_report(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    write_json(_result(), path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["format"] == "dfachat-fuzz-report/1"
    assert data["exit_code"] == 1 and data["passed"] is False
    assert [s["section"] for s in data["sections"]] == [s.number for s in SECTIONS]
    checks = {c["id"]: c for s in data["sections"] for c in s["checks"]}
    assert checks["R7.8"]["status"] == "failed" and checks["R7.8"]["failures"][0]["chart"]["participants"]
    assert checks["R7.4/outcome"]["exercised"] == 3
    assert data == result_json(_result())  | {"started": data["started"]}


def test_junit_report_has_one_testcase_per_check(tmp_path: Path) -> None:
    path = tmp_path / "junit.xml"
    result = _result()
    write_junit(result, path)
    root = ET.parse(path).getroot()
    cases = root.findall("./testsuite/testcase")
    assert len(cases) == len(result.verdicts.checks())
    failed = [c for c in cases if c.find("failure") is not None]
    assert [c.get("name", "").split()[0] for c in failed] == ["R7.8"]
    assert int(root.get("failures", "0")) == 1
    assert len(root.findall("./testsuite")) == len(SECTIONS)


def test_html_report_is_one_self_contained_page(tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    write_html(_result(), path)
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page and "R7.8" in page
    for external in ("<script", "<link", "src=", "url(", "@import"):
        assert external not in page
    assert "a broadcast reached its sender" in page


def test_chart_text_marks_the_bad_frame() -> None:
    text = chart_text(_result().verdicts.failures["R7.8"][0].chart)  # type: ignore[arg-type]
    assert "!! DELIVER" in text and "target" in text.splitlines()[0]


# --- the command line -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["fuzz", "server", "127.0.0.1:1", "--account", "Liz:pw1"], "at least 2 accounts"),
        (["fuzz", "server", "127.0.0.1", *account_args()], "HOST:PORT"),
        (["fuzz", "server", "127.0.0.1:1", "--account", "Liz", "--account", "Ann:x"], "NAME:PASSWORD"),
        (["fuzz", "server", "127.0.0.1:1", "--account", "9lives:pw", "--account", "Ann:x"], "'9lives' is not a user name"),
        (["fuzz", "server", "127.0.0.1:1", "--account", "Liz:a", "--account", "LIZ:b"], "twice"),
        (["fuzz", "server", "127.0.0.1:1", *account_args(), "--time-budget", "0"], "positive"),
        (["fuzz", "replay", "no-such-case.json", "127.0.0.1:1", *account_args()], "cannot read case"),
    ],
)
def test_bad_usage_is_a_clear_error(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert "[R" not in err  # a usage error, not a protocol error: no rule id


def test_an_unreachable_target_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        assert main(["fuzz", "server", f"127.0.0.1:{port}", *account_args(), "--time-budget", "1"]) == 2
    assert "accepted no connection" in capsys.readouterr().err


def test_cli_run_writes_every_report(live_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server = live_server()
    paths = {kind: tmp_path / f"report.{kind}" for kind in ("json", "xml", "html")}
    status = main(["fuzz", "server", server.address, *account_args(), "--seed", "3", "--max-examples", "15",
                   "--time-budget", "15", "--quiet", "--json", str(paths["json"]), "--junit", str(paths["xml"]),
                   "--html", str(paths["html"]), "--cases", str(tmp_path / "cases")])
    out = capsys.readouterr().out
    assert status == 0, out
    assert out.rstrip().splitlines()[-1].startswith("PASSED:")  # the summary comes last
    assert json.loads(paths["json"].read_text(encoding="utf-8"))["exit_code"] == 0
    ET.parse(paths["xml"])
    assert paths["html"].read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert not (tmp_path / "cases").exists()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_target_cmd_starts_and_stops_the_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "chat.db"
    Store(db, kdf=TEST_KDF).ensure_users(ACCOUNTS)
    port = _free_port()
    command = f"{sys.executable} -m dfachat server --db {db} --port {port}"
    status = main(["fuzz", "server", f"127.0.0.1:{port}", *account_args(), "--target-cmd", command, "--seed", "2",
                   "--max-examples", "8", "--time-budget", "15", "--quiet", "--no-cases"])
    assert status == 0, capsys.readouterr().out
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass  # stopped after the run


def test_target_cmd_that_exits_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["fuzz", "server", f"127.0.0.1:{_free_port()}", *account_args(), "--target-cmd",
                   f"{sys.executable} -c pass", "--time-budget", "5"])
    assert status == 2
    assert "exited with status 0" in capsys.readouterr().err


# --- replay ---------------------------------------------------------------------------------------


def test_a_checker_trace_replays_against_a_live_server(
    live_server: Any, patch_row: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A broken client table gives the checker a counterexample with logins and a MSG ...
    patch_row("client", "recv", "AWAIT_ACK", "JOINED", False)
    config = ModelConfig.for_clients(2, capacity=8, aborts=0, wrong_logins=0)
    result = check(config)
    violation = next(v for v in result.violations if v.property.name == "client_accepts_every_frame")
    trace = tmp_path / "trace.json"
    trace.write_text(json.dumps(trace_json(violation, config)), encoding="utf-8")
    monkeypatch.undo()  # ... which the real engines and server run cleanly
    server = live_server()
    accounts = [Account(n, p) for n, p in ACCOUNTS]
    actions, _ = load_actions(trace, accounts)
    assert [a["action"] for a in actions].count("connect") == 2
    outcome = replay(actions, Target("127.0.0.1", server.port), accounts, reply_timeout=0.5)
    assert not outcome.failures, outcome.failures
    assert any(e.text.startswith("MSG") for e in outcome.chart.events)
    assert main(["fuzz", "replay", str(trace), server.address, *account_args()]) == 0
    out = capsys.readouterr().out
    assert "PASSED" in out and "AUTH_OK" in out


@pytest.mark.skipif(
    shutil.which("openssl") is None and not os.environ.get("CI"),
    reason="the openssl program is not installed (required when CI is set)",
)
def test_fuzzing_over_tls(live_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dfachat.server.tls import make_certificate, server_context

    cert, key = make_certificate(tmp_path / "tls")
    server = live_server(tls=server_context(cert, key))
    status = main(["fuzz", "server", server.address, *account_args(), "--ca", str(cert), "--seed", "4",
                   "--max-examples", "8", "--time-budget", "10", "--quiet", "--no-cases"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "(TLS)" in out
