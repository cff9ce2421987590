"""The named scenarios: what their charts draw is what the engines exchanged.

Three checks per scenario: the Mermaid chart's arrows are, in order, the frames
the run's engines accepted (read from the model's receive events, not from the
chart's own input); the run does what the scenario says (the messages and
fields the spec's rules call for); and the reference server on a real loopback
socket, driven by the same client actions, sends each client the same frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest

from dfachat.codec.messages import Message
from dfachat.conformance.checker.model import EvClientReceived, EvServerReceived, Model
from dfachat.conformance.checker.report import label
from dfachat.conformance.scenarios import (
    SCENARIOS,
    Act,
    Scenario,
    ScenarioError,
    ScenarioRun,
    run_scenario,
    sequence_mermaid,
    sequence_svg,
    sequence_text,
)
from dfachat.errors import DfachatError
from dfachat.fsm import ClientSession
from dfachat.server import ChatServer, KdfParams, ServerConfig, Store
from dfachat.spec import DeliverFlags, Outcome

HOST = "127.0.0.1"
CHEAP_KDF = KdfParams(n=1024)  # a login costs about a millisecond

_ARROW = re.compile(r"\s*(C\d+|S)(-\)|--x)(C\d+|S): (.*)")


@pytest.fixture(scope="module")
def runs() -> dict[str, ScenarioRun]:
    return {name: run_scenario(name) for name in SCENARIOS}


def _who(token: str) -> int:
    return -1 if token == "S" else int(token[1:])


def _chart_arrows(mermaid: str) -> list[tuple[int, int, str]]:
    out = []
    for line in mermaid.splitlines():
        match = _ARROW.fullmatch(line)
        if match and match.group(2) == "-)":
            out.append((_who(match.group(1)), _who(match.group(3)), match.group(4)))
    return out


def _mermaid_label(message: Message) -> str:
    return label(message).replace(";", ",").replace("#", "no.")


def _accepted(run: ScenarioRun) -> tuple[dict[int, list[Message]], dict[int, list[Message]]]:
    """What each client's engine and the server's engine (per client) accepted, in order."""
    by_client: dict[int, list[Message]] = {}
    by_server: dict[int, list[Message]] = {}
    for step in run.steps:
        for event in step.events:
            if isinstance(event, EvClientReceived):
                assert event.accepted, f"client c{event.client + 1} rejected {label(event.message)}"
                by_client.setdefault(event.client, []).append(event.message)
            elif isinstance(event, EvServerReceived) and event.message is not None:
                assert event.accepted, f"the server rejected {label(event.message)}"
                by_server.setdefault(event.client, []).append(event.message)
    return by_client, by_server


def test_the_scenarios_of_the_issue_exist() -> None:
    assert {"login", "failed-login", "broadcast", "directed", "offline", "quit"} <= set(SCENARIOS)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_chart_is_what_the_engines_exchanged(runs: dict[str, ScenarioRun], name: str) -> None:
    run = runs[name]
    arrows = _chart_arrows(sequence_mermaid(run))
    assert arrows, "nothing drawn"
    by_client, by_server = _accepted(run)
    for i in range(len(run.config.clients)):
        to_client = [text for a, b, text in arrows if a == -1 and b == i]
        from_client = [text for a, b, text in arrows if a == i and b == -1]
        assert to_client == [_mermaid_label(m) for m in by_client.get(i, [])], f"to c{i + 1}"
        assert from_client == [_mermaid_label(m) for m in by_server.get(i, [])], f"from c{i + 1}"
    assert [(a, b) for a, b, _ in arrows] == [(a, b) for a, b, _ in run.exchanged()]


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_svg_and_text_charts_draw_every_arrow(runs: dict[str, ScenarioRun], name: str) -> None:
    run = runs[name]
    svg = ET.fromstring(sequence_svg(run).encode("utf-8"))
    texts = [t.text or "" for t in svg.iter("{http://www.w3.org/2000/svg}text")]
    lines = svg.findall("{http://www.w3.org/2000/svg}line")
    arrows = [line for line in lines if line.get("marker-end") == "url(#arrow)"]
    assert len(arrows) == len(run.exchanged())
    for _, _, message in run.exchanged():
        assert label(message) in texts
    ascii_chart = sequence_text(run)
    for _, _, message in run.exchanged():
        assert label(message) in ascii_chart


def _messages_to(run: ScenarioRun, client: int) -> list[Message]:
    return [m for a, b, m in run.exchanged() if a == -1 and b == client]


def test_login_ends_with_auth_ok(runs: dict[str, ScenarioRun]) -> None:
    names = [m.NAME for m in _messages_to(runs["login"], 0)]
    assert names == ["HELLO_OK", "AUTH_OK"]


def test_failed_login_costs_an_attempt_then_succeeds(runs: dict[str, ScenarioRun]) -> None:
    replies = _messages_to(runs["failed-login"], 0)
    assert [m.NAME for m in replies] == ["HELLO_OK", "AUTH_FAILED", "AUTH_OK"]
    assert replies[1].attempts_left == runs["failed-login"].config.login_attempts - 1


def test_broadcast_reaches_everyone_but_the_sender(runs: dict[str, ScenarioRun]) -> None:
    run = runs["broadcast"]
    ack = [m for m in _messages_to(run, 0) if m.NAME == "MSG_ACK"]
    assert len(ack) == 1 and ack[0].delivered == len(run.config.clients) - 1
    for i in range(1, len(run.config.clients)):
        delivered = [m for m in _messages_to(run, i) if m.NAME == "DELIVER"]
        assert len(delivered) == 1 and not delivered[0].flags & DeliverFlags.DIRECTED
    assert not [m for m in _messages_to(run, 0) if m.NAME == "DELIVER"]


def test_directed_message_reaches_only_its_recipient(runs: dict[str, ScenarioRun]) -> None:
    run = runs["directed"]
    (ack,) = [m for m in _messages_to(run, 0) if m.NAME == "MSG_ACK"]
    assert [(r.name, r.outcome) for r in ack.results] == [
        (run.config.domain.accounts[1][0], Outcome.DELIVERED)
    ]
    assert [m.NAME for m in _messages_to(run, 1)] == ["DELIVER"]
    assert _messages_to(run, 1)[0].flags & DeliverFlags.DIRECTED
    assert _messages_to(run, 2) == []


def test_offline_message_is_stored_then_delivered_at_login(runs: dict[str, ScenarioRun]) -> None:
    run = runs["offline"]
    (ack,) = [m for m in _messages_to(run, 0) if m.NAME == "MSG_ACK"]
    assert ack.delivered == 0 and [r.outcome for r in ack.results] == [Outcome.QUEUED]
    names = [m.NAME for m in _messages_to(run, 1)]
    assert names.index("AUTH_OK") < names.index("DELIVER")
    (stored,) = [m for m in _messages_to(run, 1) if m.NAME == "DELIVER"]
    assert stored.flags & DeliverFlags.STORED and stored.server_msg_id == ack.server_msg_id


def test_quit_is_answered_with_bye_and_announced(runs: dict[str, ScenarioRun]) -> None:
    run = runs["quit"]
    assert [m.NAME for m in _messages_to(run, 0)] == ["BYE"]
    assert [m.NAME for m in _messages_to(run, 1)] == ["LEFT"]
    assert "--x" in sequence_mermaid(run)  # the server closes the connection


def test_setup_is_not_drawn_but_said(runs: dict[str, ScenarioRun]) -> None:
    run = runs["broadcast"]
    assert run.setup_steps
    chart = sequence_mermaid(run)
    assert run.scenario.setup_note in chart
    assert "HELLO" not in chart  # the logins happened before the chart


def test_a_script_the_engines_refuse_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    bad = Scenario("bad", "Bad", "MSG before login.", 1, (Act(0, "connect"), Act(0, "send", "MSG")))
    monkeypatch.setitem(SCENARIOS, "bad", bad)
    with pytest.raises(ScenarioError, match=r"c1 send MSG: the engines do not allow it.*send HELLO") as err:
        run_scenario("bad")
    assert isinstance(err.value, DfachatError) and err.value.rule == "R12.2"
    with pytest.raises(ValueError, match="no scenario named 'nope'"):
        run_scenario("nope")


# --- the same client actions against the reference server on a real socket --------------------


def _client_script(run: ScenarioRun) -> list[tuple[int, Message | None]]:
    """(client, message sent, or None for connect) for setup and drawn steps, in order."""
    script = []
    for step in (*run.setup_steps, *run.steps):
        if step.actor == "client" and step.action == "connect":
            script.append((step.client, None))
        elif step.actor == "client" and step.action == "send":
            script.append((step.client, step.message))
    return script


def _received_by_step(run: ScenarioRun) -> list[dict[int, int]]:
    """After each scripted action, how many frames each client has received in the model."""
    counts: dict[int, int] = {}
    out = []
    steps = [*run.setup_steps, *run.steps]
    for k, step in enumerate(steps):
        for target, message, reached in step.writes:
            if message is not None and reached:
                counts[target] = counts.get(target, 0) + 1
        is_last = k + 1 == len(steps)
        next_is_act = not is_last and steps[k + 1].actor == "client" and steps[k + 1].action in (
            "connect", "send"
        )
        if is_last or next_is_act:
            out.append(dict(counts))
    return out


class _LoopbackClient:
    """A real socket and a real client engine; every message the engine accepts is kept."""

    def __init__(self, encoding: str) -> None:
        self.session = ClientSession()
        self.received: list[Message] = []
        self.encoding = encoding
        self._writer: asyncio.StreamWriter | None = None
        self._pump: asyncio.Task[None] | None = None

    async def open(self, port: int) -> _LoopbackClient:
        reader, self._writer = await asyncio.open_connection(HOST, port)
        self._pump = asyncio.get_running_loop().create_task(self._read(reader))
        return self

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while data := await reader.read(1 << 16):
            for event in self.session.receive_data(data):
                assert isinstance(event, Message), f"the server sent something illegal: {event}"
                self.received.append(event)

    def send(self, message: Message) -> None:
        assert self._writer is not None
        self._writer.write(self.session.send(message))

    async def aclose(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await self._pump


async def _replay(run: ScenarioRun, db: Path) -> dict[int, list[Message]]:
    model = Model(run.config)
    store = Store(db, kdf=CHEAP_KDF)
    store.ensure_users(run.config.registered)
    limits = replace(model.limits, backoff_base_ms=1)  # the failed login's delay, shortened
    server = ChatServer(store, ServerConfig(host=HOST, port=0, limits=limits))
    await server.start()
    clients: dict[int, _LoopbackClient] = {}
    try:
        expected = _received_by_step(run)
        for (i, message), counts in zip(_client_script(run), expected, strict=True):
            if message is None:
                clients[i] = await _LoopbackClient(run.config.clients[i].encoding).open(server.port)
            else:
                clients[i].send(message)
            async with asyncio.timeout(10):  # bounded: a missing frame fails, never hangs
                while any(len(clients[c].received) < n for c, n in counts.items() if c in clients):
                    await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)  # room for a frame the model did not send
        return {i: list(c.received) for i, c in clients.items()}
    finally:
        for c in clients.values():
            await c.aclose()
        await server.shutdown(timeout=5)
        store.close()


def _messages_to_all(run: ScenarioRun, client: int) -> list[Message]:
    out = []
    for step in (*run.setup_steps, *run.steps):
        out += [m for t, m, reached in step.writes if t == client and m is not None and reached]
    return out


def _comparable(message: Message) -> str:
    """The label, without what only the clock decides (DELIVER's timestamp is not in it)."""
    return label(message).replace("dfachat-check", "")


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_reference_server_on_loopback_sends_the_same(
    runs: dict[str, ScenarioRun], name: str, tmp_path: Path
) -> None:
    run = runs[name]
    got = asyncio.run(_replay(run, tmp_path / "chat.db"))
    for i in range(len(run.config.clients)):
        want = [_comparable(m) for m in _messages_to_all(run, i)]
        assert [_comparable(m) for m in got.get(i, [])] == want, f"c{i + 1}"


def test_scenario_descriptions_cite_existing_rules() -> None:
    from dfachat.spec import RULES

    for scenario in SCENARIOS.values():
        cited = re.findall(r"\bR\d+\.\d+\b", scenario.doc)
        assert cited, scenario.name
        assert set(cited) <= set(RULES), scenario.name
