"""Deliberately broken protocols, built for one test each: the checker catches every one.

Each variant patches the engine's table for the test only (``patch_row``),
subclasses the server core (the very class the reference server runs, given
to the model as ``core_class``) or changes the environment (a restart); each
must be caught with the expected property and a minimal trace -- the
breadth-first search bounded one step shorter finds nothing.
"""

from __future__ import annotations

from typing import Any

from dfachat.conformance.checker import Model, ModelConfig, check
from dfachat.conformance.checker.explore import CheckResult
from dfachat.conformance.checker.model import EvAborted, EvClientReceived
from dfachat.conformance.checker.report import msc_text
from dfachat.server.core import CoreConnection, ServerCore
from dfachat.server.routing import Route
from dfachat.spec import LeftReason

BASE = {"capacity": 8, "aborts": 0, "wrong_logins": 0}


def caught(config: ModelConfig, expected: str, model_cls: type[Model] = Model) -> CheckResult:
    result = check(config, model_cls=model_cls)
    names = [v.property.name for v in result.violations]
    assert expected in names, (
        names,
        msc_text(result.violations[0], config) if result.violations else "",
    )
    violation = next(v for v in result.violations if v.property.name == expected)
    assert violation.steps, "a trace"
    shorter = check(
        config, model_cls=model_cls, max_depth=len(violation.steps) - 1, properties=[expected]
    )
    assert not shorter.violations, "the trace is not minimal"
    return result


def last_receive(result: CheckResult) -> EvClientReceived:
    step = result.violations[0].steps[-1]
    return next(e for e in step.events if isinstance(e, EvClientReceived))


def test_a_missing_transition(patch_row: Any) -> None:
    """The client table loses JOINED in AWAIT_ACK: a login while a MSG waits for its ACK."""
    patch_row("client", "recv", "AWAIT_ACK", "JOINED", False)
    result = caught(ModelConfig.for_clients(2, **BASE), "client_accepts_every_frame")
    event = last_receive(result)
    assert (event.message.NAME, event.state, event.accepted) == ("JOINED", "AWAIT_ACK", False)


def test_a_client_that_cannot_take_deliver_while_waiting_for_users(patch_row: Any) -> None:
    """R8.4: a DELIVER pushed before the server reads LIST reaches a client in AWAIT_USERS."""
    patch_row("client", "recv", "AWAIT_USERS", "DELIVER", False)
    result = caught(ModelConfig.for_clients(2, max_lists=1, **BASE), "client_accepts_every_frame")
    event = last_receive(result)
    assert (event.message.NAME, event.state) == ("DELIVER", "AWAIT_USERS")


def test_a_message_accepted_in_the_wrong_state(patch_row: Any) -> None:
    """The server takes MSG before login (and a client sends it there): its session ends up
    in an authenticated state without a password."""
    patch_row("server", "recv", "AWAIT_USER", "MSG", "ROUTING")
    patch_row("client", "send", "SEND_USER", "MSG", "AWAIT_ACK")
    result = caught(ModelConfig.for_clients(2, **BASE), "authenticated_sessions_are_logged_in")
    assert result.violations[0].steps[-1].message.NAME == "MSG"


class ForgetsLeftOnDropCore(ServerCore):
    """A server that announces nobody whose connection dropped."""

    def leave(self, conn: CoreConnection) -> None:
        if conn.left_reason is not LeftReason.DROPPED:
            return super().leave(conn)
        if conn.key is not None:
            self.presence.remove(conn.key, conn)
        return None


class ForgetsLeftOnDrop(Model):
    core_class = ForgetsLeftOnDropCore


def test_a_server_that_forgets_left_on_a_dropped_connection() -> None:
    config = ModelConfig.for_clients(2, **{**BASE, "aborts": 1})
    result = caught(config, "joined_matched_by_left", ForgetsLeftOnDrop)
    assert any(step.action == "drop" for step in result.violations[0].steps)


class DeliversToEveryoneCore(ServerCore):
    """A server whose routing sends a directed message to everyone online but the sender."""

    def route(self, conn: CoreConnection, recipients: tuple[str, ...]) -> Route[CoreConnection]:
        plan = super().route(conn, recipients)
        if plan.directed:
            plan.live = [c for c in self.presence.sessions() if c is not conn]
        return plan


class DeliversToEveryone(Model):
    core_class = DeliversToEveryoneCore


def test_a_server_that_delivers_a_directed_message_to_everyone() -> None:
    result = caught(
        ModelConfig.for_clients(3, **{**BASE, "total_msgs": 1}),
        "msg_goes_to_exactly_its_recipients",
        DeliversToEveryone,
    )
    assert result.violations[0].steps[-1].message.NAME == "MSG"


class StoreLostOnRestart(Model):
    """A server whose store-and-forward queue lives in memory: a restart empties it."""

    def restarted(self, w: Any) -> None:
        super().restarted(w)
        w.srv = w.srv._replace(store=())


def test_a_store_and_forward_queue_that_drops_on_restart() -> None:
    config = ModelConfig.for_clients(2, restarts=1, **BASE)
    result = caught(config, "nothing_acknowledged_is_lost", StoreLostOnRestart)
    assert result.violations[0].steps[-1].action == "restart"
    # and the real server keeps it: the same bounds pass
    assert check(config).ok


def test_finding_a_slow_consumer_cut_hides_the_end_of_a_session() -> None:
    """A real finding (docs/CHECKING.md): the reference server ends a slow consumer (R9.3)
    with transport.abort(), which drops the SLOW_CONSUMER ERROR with the unread output,
    so a client whose QUIT crosses it sees neither BYE nor ERROR (R10.2, R10.4). The
    model runs the server's core; if the server changes, this test shows it."""
    config = ModelConfig.for_clients(2, capacity=2, aborts=0, wrong_logins=0)
    result = caught(config, "every_quit_gets_bye")
    steps = result.violations[0].steps
    assert any(isinstance(e, EvAborted) for step in steps for e in step.events)
    assert any(step.action == "send" and step.message.NAME == "QUIT" for step in steps)


def test_workers_find_the_same_violation(patch_row: Any) -> None:
    patch_row("client", "recv", "AWAIT_ACK", "JOINED", False)
    config = ModelConfig.for_clients(2, **BASE)
    single, parallel = check(config), check(config, workers=2)
    assert [v.property.name for v in parallel.violations] == ["client_accepts_every_frame"]
    assert len(parallel.violations[0].steps) == len(single.violations[0].steps)
    assert not parallel.ok
