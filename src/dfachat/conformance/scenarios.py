"""Named scenarios run through the real engines, drawn as message sequence charts.

A scenario is a script of client actions (connect, send a message the client's
table allows). It runs in the model checker's :class:`~dfachat.conformance.checker.model.Model`
-- real :class:`~dfachat.fsm.ClientSession` and :class:`~dfachat.fsm.ServerSession`
engines, the reference server's handlers and routing, frames through the real
codec (``wire`` mode) -- with one fixed schedule instead of every interleaving:
after each scripted action, the server serves and the clients read until nothing
is left to do. The chart is drawn from the steps that run took, so it shows what
the engines exchanged, never a hand-drawn sequence; a script that asks for
something the engines refuse is a :class:`ScenarioError`.

``dfachat diagram --sequence NAME`` renders a run as Mermaid
(:func:`sequence_mermaid`), SVG (:func:`sequence_svg`, a small writer, so the
output is the same on every machine) or ASCII (the checker's
:func:`~dfachat.conformance.checker.report.msc_text`).
"""

from __future__ import annotations

import html
import textwrap
from dataclasses import dataclass, field
from typing import Any

from dfachat.codec.messages import Message
from dfachat.conformance.checker.model import Model, ModelConfig, Step
from dfachat.conformance.checker.report import _chart_events, _mermaid_text, client_label, msc_text
from dfachat.errors import DfachatError
from dfachat.spec import LIMITS

__all__ = [
    "SCENARIOS",
    "Act",
    "Scenario",
    "ScenarioError",
    "ScenarioRun",
    "run_scenario",
    "sequence_mermaid",
    "sequence_svg",
    "sequence_text",
]

MAX_SETTLE_STEPS = 500  # server and client reads after one action: far more than any script needs


class ScenarioError(DfachatError):
    """A scenario asked for something the engines or the model do not allow."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, rule="R12.2")


@dataclass(frozen=True, slots=True)
class Act:
    """One scripted client action: ``connect``, or ``send`` a message of type ``message``
    whose fields include ``fields`` (the model's domain offers the values)."""

    client: int
    action: str
    message: str | None = None
    fields: tuple[tuple[str, Any], ...] = ()

    def matches(self, step: Step) -> bool:
        if step.actor != "client" or step.client != self.client or step.action != self.action:
            return False
        if self.message is None:
            return True
        m = step.message
        return (
            m is not None
            and self.message == m.NAME
            and all(getattr(m, k) == v for k, v in self.fields)
        )

    def __str__(self) -> str:
        what = self.action if self.message is None else f"send {self.message}"
        shown = ", ".join(f"{k}={v!r}" for k, v in self.fields)
        return f"c{self.client + 1} {what}" + (f" ({shown})" if shown else "")


def connect(i: int) -> Act:
    return Act(i, "connect")


def send(i: int, message: str, **fields: Any) -> Act:
    return Act(i, "send", message, tuple(fields.items()))


@dataclass(frozen=True, slots=True)
class Scenario:
    """A named script. ``setup`` runs first and is not drawn (the chart says so)."""

    name: str
    title: str
    doc: str
    clients: int
    acts: tuple[Act, ...]
    setup: tuple[Act, ...] = ()
    setup_note: str = ""
    bounds: tuple[tuple[str, Any], ...] = ()

    def config(self) -> ModelConfig:
        # wire: every message is encoded and decoded by the real codec on the way; the
        # server's limits are the spec's defaults, as a reader of the chart expects
        bounds = {
            "wire": True, "capacity": 8, "max_msgs": 1, "aborts": 0,
            "login_attempts": LIMITS.login_attempts, "page_size": LIMITS.max_names_per_frame,
            **dict(self.bounds),
        }
        return ModelConfig.for_clients(self.clients, **bounds)


def _login(model_config: ModelConfig, i: int, *, wrong_first: bool = False) -> tuple[Act, ...]:
    domain = model_config.domain
    name, password = domain.accounts[model_config.clients[i].accounts[0]]
    acts = [connect(i), send(i, "HELLO"), send(i, "USER", name=name)]
    if wrong_first:
        acts += [send(i, "PASS", password=domain.wrong_password), send(i, "USER", name=name)]
    acts.append(send(i, "PASS", password=password))
    return tuple(acts)


def _scenarios() -> dict[str, Scenario]:
    def cfg(n: int) -> ModelConfig:
        return ModelConfig.for_clients(n)

    two, three = cfg(2), cfg(3)
    name = [a[0] for a in two.domain.accounts]
    found = [
        Scenario(
            "login",
            "Login",
            "A client says HELLO, names its account and gives the right password (R5.1, R6.1, R6.5).",
            1,
            _login(cfg(1), 0),
        ),
        Scenario(
            "failed-login",
            "Failed login",
            "A wrong password costs an attempt (AUTH_FAILED says how many are left); "
            "the client tries again (R6.2, R6.3).",
            1,
            _login(cfg(1), 0, wrong_first=True),
            bounds=(("wrong_logins", 1),),
        ),
        Scenario(
            "broadcast",
            "Broadcast",
            "A MSG without recipients goes to everyone online but the sender (R7.1, R7.5).",
            3,
            (send(0, "MSG", recipients=(), text=three.domain.texts[0]),),
            setup=_login(three, 0) + _login(three, 1) + _login(three, 2),
            setup_note=f"{', '.join(name[:3])} are logged in",
        ),
        Scenario(
            "directed",
            "Directed message",
            "A MSG to named recipients reaches only them; MSG_ACK reports each (R7.1, R7.4).",
            3,
            (send(0, "MSG", recipients=(name[1],), text=three.domain.texts[0]),),
            setup=_login(three, 0) + _login(three, 1) + _login(three, 2),
            setup_note=f"{', '.join(name[:3])} are logged in",
        ),
        Scenario(
            "offline",
            "Offline delivery",
            "A MSG to a registered user who is offline is stored and delivered when they "
            "log in (R7.7).",
            2,
            (send(0, "MSG", recipients=(name[1],), text=two.domain.texts[0]), *_login(two, 1)),
            setup=_login(two, 0),
            setup_note=f"{name[0]} is logged in, {name[1]} is not",
        ),
        Scenario(
            "quit",
            "Quit",
            "QUIT is answered with BYE; the others are told who left (R10.1, R10.2, R8.2).",
            2,
            (send(0, "QUIT"),),
            setup=_login(two, 0) + _login(two, 1),
            setup_note=f"{name[0]} and {name[1]} are logged in",
        ),
    ]
    return {s.name: s for s in found}


SCENARIOS: dict[str, Scenario] = _scenarios()


@dataclass(slots=True)
class ScenarioRun:
    """The steps a scenario took: ``steps`` are drawn, ``setup_steps`` are not."""

    scenario: Scenario
    config: ModelConfig
    steps: list[Step] = field(default_factory=list)
    setup_steps: list[Step] = field(default_factory=list)

    def exchanged(self) -> list[tuple[int, int, Message]]:
        """(from, to, message) in the order the chart draws them; the server is -1. A message
        the server wrote to a client that had already gone is not included."""
        out: list[tuple[int, int, Message]] = []
        for step in self.steps:
            if step.actor == "client" and step.action == "send" and step.message is not None:
                out.append((step.client if step.client is not None else -1, -1, step.message))
            for target, message, reached in step.writes:
                if message is not None and reached:
                    out.append((-1, target, message))
        return out


def _settle(model: Model, state: tuple[int, ...], into: list[Step]) -> tuple[int, ...]:
    """Serve and read until nothing is pending: the server first, then the clients, each in
    index order (one fixed schedule of the many the checker explores)."""
    for _ in range(MAX_SETTLE_STEPS):
        found = model.successors(state, reduce=False)
        ready = [
            (step, nxt)
            for step, nxt in found
            if (step.actor == "server" and step.action in ("serve", "auth"))
            or (step.actor == "client" and step.action == "receive")
        ]
        if not ready:
            return state
        step, state = min(
            ready, key=lambda s: (s[0].actor != "server", s[0].client if s[0].client is not None else -1)
        )
        into.append(step)
    raise ScenarioError(f"the run did not settle within {MAX_SETTLE_STEPS} steps")


def _act(model: Model, state: tuple[int, ...], act: Act, into: list[Step]) -> tuple[int, ...]:
    found = model.successors(state, reduce=False)
    for step, nxt in found:
        if act.matches(step):
            into.append(step)
            return nxt
    offered = sorted(
        {
            f"{s.action} {s.message.NAME if s.message is not None else ''}".strip()
            for s, _ in found
            if s.actor == "client" and s.client == act.client
        }
    )
    raise ScenarioError(
        f"{act}: the engines do not allow it here (client c{act.client + 1} may: "
        f"{', '.join(offered) or 'nothing'})"
    )


def run_scenario(name: str) -> ScenarioRun:
    """Run the scenario ``name`` (one of :data:`SCENARIOS`) through the engines.

    An unknown name is a ValueError; a script the engines refuse, a :class:`ScenarioError`.
    """
    scenario = SCENARIOS.get(name)
    if scenario is None:
        raise ValueError(f"no scenario named {name!r}; there are: {', '.join(SCENARIOS)}")
    config = scenario.config()
    model = Model(config)
    run = ScenarioRun(scenario, config)
    state = model.initial()
    for acts, into in ((scenario.setup, run.setup_steps), (scenario.acts, run.steps)):
        for act in acts:
            state = _act(model, state, act, into)
            state = _settle(model, state, into)
    return run


# --- charts ----------------------------------------------------------------------------------


def _events(run: ScenarioRun) -> list[tuple[str, int | None, int | None, str]]:
    """The checker's chart events without its "takes" notes (every arrow is taken here;
    a frame an engine rejects still gets its note)."""
    events = _chart_events(run)  # type: ignore[arg-type]  # it reads only ``steps``
    return [e for e in events if not (e[0] == "note" and e[3].startswith("takes "))]


def sequence_text(run: ScenarioRun) -> str:
    """The run as the checker's ASCII chart (with every step's notes)."""
    head = f"{run.scenario.title}: {run.scenario.doc}\n"
    if run.scenario.setup_note:
        head += f"(before the chart: {run.scenario.setup_note})\n"
    return head + "\n" + msc_text(run, run.config)  # type: ignore[arg-type]


def sequence_mermaid(run: ScenarioRun) -> str:
    """The run as a Mermaid ``sequenceDiagram``: async arrows, as the checker draws them."""
    n = len(run.config.clients)
    out = ["sequenceDiagram"]
    for i in range(n):
        out.append(f"    participant C{i} as {_mermaid_text(client_label(run.config, i))}")
    out.append("    participant S as server")
    if run.scenario.setup_note:
        out.append(f"    Note over C0,S: {_mermaid_text(run.scenario.setup_note)}")

    def who(c: int) -> str:
        return "S" if c == -1 else f"C{c}"

    for kind, a, b, text in _events(run):
        if kind == "arrow" and a is not None and b is not None:
            arrow = "--x" if text == "close" else "-)"
            out.append(f"    {who(a)}{arrow}{who(b)}: {_mermaid_text(text)}")
        elif a is not None:
            out.append(f"    Note over {who(a)}: {_mermaid_text(text)}")
    return "\n".join(out) + "\n"


_COL_W = 290
_ROW_H = 28
_HEAD_H = 56
_MARGIN = 20
_NOTE_W = _COL_W - 30
_CHAR_W = 7  # a generous average width of a 12 px Helvetica character, for wrapping


def sequence_svg(run: ScenarioRun) -> str:
    """The run as an SVG message sequence chart (deterministic: no fonts measured)."""
    n = len(run.config.clients)
    heads = [client_label(run.config, i) for i in range(n)] + ["server"]
    events = _events(run)
    notes = 1 if run.scenario.setup_note else 0
    width = _MARGIN * 2 + _COL_W * (n + 1)
    about = textwrap.wrap(run.scenario.doc, (width - 2 * _MARGIN) // _CHAR_W)
    height = _HEAD_H + _MARGIN * 3 + _ROW_H * (len(events) + notes + 1) + 16 * len(about)

    def x(c: int) -> int:
        return _MARGIN + _COL_W // 2 + _COL_W * (n if c == -1 else c)

    def text(px: float, py: float, content: str, **attrs: str) -> str:
        extra = "".join(f' {k.replace("_", "-")}="{v}"' for k, v in attrs.items())
        return f'<text x="{px:g}" y="{py:g}"{extra}>{html.escape(content)}</text>'

    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif" font-size="12">',
        f"<title>{html.escape(run.scenario.title)}</title>",
        "<defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"8\" "
        "markerHeight=\"8\" orient=\"auto-start-reverse\"><path d=\"M 0 0 L 10 5 L 0 10 z\" "
        "fill=\"#333\"/></marker><marker id=\"cross\" viewBox=\"0 0 10 10\" refX=\"5\" refY=\"5\" "
        "markerWidth=\"10\" markerHeight=\"10\"><path d=\"M 0 0 L 10 10 M 10 0 L 0 10\" "
        "stroke=\"#333\" stroke-width=\"2\"/></marker></defs>",
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>',
        text(_MARGIN, _MARGIN, run.scenario.title, font_weight="bold"),
        *(text(_MARGIN, _MARGIN + 16 * (k + 1), line) for k, line in enumerate(about)),
    ]
    top = _MARGIN + 16 * (len(about) + 1)
    bottom = height - _MARGIN
    for c, head in zip([*range(n), -1], heads, strict=True):
        out.append(
            f'<rect x="{x(c) - 90}" y="{top}" width="180" height="26" rx="4" fill="#eef4fb" stroke="#333"/>'
        )
        out.append(text(x(c), top + 17, head, text_anchor="middle"))
        out.append(
            f'<line x1="{x(c)}" y1="{top + 26}" x2="{x(c)}" y2="{bottom}" stroke="#999" stroke-dasharray="4 4"/>'
        )
    y = top + 26 + _ROW_H
    if run.scenario.setup_note:
        out.append(
            text((x(0) + x(-1)) / 2, y, f"({run.scenario.setup_note})", text_anchor="middle",
                 fill="#555", font_style="italic")
        )
        y += _ROW_H
    for kind, a, b, label in events:
        if kind == "arrow" and a is not None and b is not None:
            dash = ' stroke-dasharray="6 3"' if a == -1 else ""
            end = "cross" if label == "close" else "arrow"  # the server closes the connection
            out.append(
                f'<line x1="{x(a)}" y1="{y}" x2="{x(b)}" y2="{y}" stroke="#333"{dash} '
                f'marker-end="url(#{end})"/>'
            )
            out.append(text((x(a) + x(b)) / 2, y - 5, label, text_anchor="middle"))
        elif a is not None:
            # a note sits right of a client's lifeline, left of the server's (the last column)
            left = x(a) + 6 if a != -1 else x(a) - 6 - _NOTE_W
            out.append(
                f'<rect x="{left}" y="{y - 14}" width="{_NOTE_W}" height="20" '
                'fill="#fff8dc" stroke="#c8b560"/>'
            )
            out.append(text(left + 4, y, label, font_size="11"))
        y += _ROW_H
    out.append("</svg>")
    return "\n".join(out) + "\n"
