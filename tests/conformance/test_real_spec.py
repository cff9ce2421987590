"""The real spec, engines and server logic pass every property (docs/CHECKING.md)."""

from __future__ import annotations

import pytest

from dfachat.conformance.checker import Domain, ModelConfig, check, coverage_report
from dfachat.conformance.checker.command import default_bounds
from dfachat.conformance.checker.explore import CheckResult
from dfachat.conformance.checker.properties import PROPERTIES


def _assert_all_hold(result) -> None:
    assert not result.violations, [v.property.name for v in result.violations]
    assert result.complete and result.ok
    for p in result.properties:
        assert result.status(p) in ("holds", "witnessed", "skipped"), (p.name, result.status(p))


# Rows of the tables the reference server never takes, and why (docs/CHECKING.md):
# NEGOTIATING, ROUTING, LISTING and CLOSING last only while one handler runs, so nothing is
# received or pushed in them; a connection waiting for its password check holds its input and
# is skipped by the idle sweep; nobody reads EOF after CLOSED.
DEAD_ROWS = {
    *(
        ("server", "NEGOTIATING", trigger)
        for trigger in ("send_ERROR", "send_BYE", "recv_ERROR", "closed")
    ),
    *(("server", "AUTHENTICATING", trigger) for trigger in ("send_ERROR", "recv_ERROR")),
    *(
        ("server", state, trigger)
        for state in ("ROUTING", "LISTING")
        for trigger in (
            "send_PONG",
            "send_PING",
            "send_JOINED",
            "send_LEFT",
            "send_ERROR",
            "send_BYE",
            "recv_PONG",
            "recv_ERROR",
            "closed",
        )
    ),
    ("server", "LISTING", "send_DELIVER"),
    ("server", "CLOSING", "send_ERROR"),
    ("server", "CLOSING", "closed"),
    ("server", "CLOSED", "closed"),
    ("client", "CLOSED", "closed"),
}


def test_two_clients_every_property_holds_and_the_tables_are_covered() -> None:
    result = check(ModelConfig.for_clients(2, **default_bounds(2)))
    _assert_all_hold(result)
    # one account each: no second login to replace; no unknown names in the default domain;
    # version 1 without crashes hands nothing to an application (tests/conformance/
    # test_acknowledged_delivery.py checks those properties)
    assert set(result.skipped) == {
        "session_replaced",
        "msg_to_an_unknown_user",
        "no_application_takes_a_message_twice",
        "acknowledged_reaches_the_application_once",
        "redelivered_after_a_crash",
        "taken_message_dropped_when_redelivered",
    }
    assert set(result.witnessed) == {
        p.name
        for p in PROPERTIES.values()
        if p.kind == "sometimes" and p.name not in result.skipped
    }
    assert result.states > 50_000  # not vacuous: drops, wrong passwords, lossy and stored messages
    # With one client doing everything the bounds allow, and two exchanging LISTs, every row
    # of both tables is taken but the ones the reference server cannot take.
    alone = check(
        ModelConfig.for_clients(
            1,
            capacity=8,
            max_msgs=1,
            max_lists=1,
            max_pings=1,
            malformed=1,
            server_pings=1,
            restarts=1,
            timeouts=1,
            aborts=1,
            wrong_logins=2,
        )
    )
    listing = check(ModelConfig.for_clients(2, capacity=8, max_lists=1, aborts=0, wrong_logins=0))
    for run in (alone, listing):
        _assert_all_hold(run)
    report = coverage_report(result.coverage | alone.coverage | listing.coverage)
    unreached = {
        (role, r["state"], r["trigger"])
        for role, c in report.items()
        for r in c["rows"]
        if not r["taken"]
    }
    assert unreached == DEAD_ROWS


def test_three_clients_every_property_holds() -> None:
    """The default three-client run of ``dfachat check`` (one MSG in the run)."""
    result = check(ModelConfig.for_clients(3, **default_bounds(3)))
    _assert_all_hold(result)
    assert result.states > 300_000


def test_interchangeable_clients_with_symmetry_agree() -> None:
    """Two clients with the same encoding who may log in to either account: second logins
    replace sessions (R6.6). Symmetry reduction gives the same verdicts on fewer states."""
    config = ModelConfig.for_clients(2, symmetric=True, capacity=8, aborts=0, wrong_logins=0)
    plain = check(config)
    reduced = check(config, symmetry=True)
    _assert_all_hold(plain)
    _assert_all_hold(reduced)
    assert "session_replaced" in plain.witnessed and "session_replaced" in reduced.witnessed
    assert plain.states / reduced.states > 1.5
    assert reduced.warnings and "symmetry" in reduced.warnings[0]
    assert plain.coverage == reduced.coverage


SMALL = ModelConfig.for_clients(2, capacity=8, aborts=1, wrong_logins=0, total_msgs=1)


@pytest.fixture(scope="module")
def small() -> CheckResult:
    """The breadth-first run the other ways of exploring are compared with."""
    return check(SMALL)


def test_partial_order_reduction_keeps_every_verdict_and_row(small: CheckResult) -> None:
    full = check(SMALL, reduce=False)
    _assert_all_hold(full)
    _assert_all_hold(small)
    assert small.states < full.states
    assert small.coverage == full.coverage
    assert set(small.witnessed) == set(full.witnessed)


def test_wire_mode_runs_the_codec_and_agrees(small: CheckResult) -> None:
    wire = check(
        ModelConfig.for_clients(2, capacity=8, aborts=1, wrong_logins=0, total_msgs=1, wire=True)
    )
    _assert_all_hold(wire)
    assert (wire.states, wire.transitions, wire.coverage) == (
        small.states,
        small.transitions,
        small.coverage,
    )


def test_depth_first_explores_the_same_states(small: CheckResult) -> None:
    result = check(SMALL, strategy="dfs")
    _assert_all_hold(result)
    assert result.states == small.states and result.coverage == small.coverage


def test_random_walks(small: CheckResult) -> None:
    result = check(SMALL, strategy="random", max_states=5_000, seed=1)
    assert not result.violations and not result.complete and result.limit == "random"
    assert 0 < result.states <= small.states


def test_workers_explore_the_same_states(small: CheckResult) -> None:
    parallel = check(SMALL, workers=2)
    _assert_all_hold(parallel)
    assert (parallel.states, parallel.transitions, parallel.depth) == (
        small.states,
        small.transitions,
        small.depth,
    )
    assert parallel.coverage == small.coverage and set(parallel.witnessed) == set(small.witnessed)


def test_limits_stop_early_and_say_so() -> None:
    by_states = check(SMALL, max_states=1_000)
    assert not by_states.complete and by_states.limit == "states" and not by_states.violations
    by_depth = check(SMALL, max_depth=6)
    assert not by_depth.complete and by_depth.limit == "depth" and by_depth.truncated > 0
    assert by_depth.unwitnessed == []  # an incomplete run does not call a witness missing


def test_unknown_users_are_refused_alike_and_reported() -> None:
    """With a name no account has in the domain: USER may try it (R6.2: the same AUTH_FAILED
    as a wrong password) and MSG may name it (R7.4: UNKNOWN_USER)."""
    domain = Domain(unknown_users=("Nobody",))
    config = ModelConfig.for_clients(
        2, capacity=8, aborts=0, wrong_logins=0, total_msgs=1, domain=domain
    )
    result = check(config)
    _assert_all_hold(result)
    assert "msg_to_an_unknown_user" in result.witnessed
