"""The frozen state table, generated from the spec's transitions machines at import.

Everything that decides a session's next state lives in
:data:`dfachat.spec.TRANSITIONS`; this module reads the machine built from it
(``machine.events[trigger].transitions[source]``) and freezes it into plain
dicts, because a transitions ``Machine`` runs about 115k events/s and costs
8 KB per registered model, while a dict lookup costs tens of nanoseconds and
nothing per session.

Shape: ``TABLES_BY_VERSION[version][role].recv[state][type_code]`` (and
``.send``) is a tuple of
:class:`Branch` tried in declaration order, exactly as transitions tries
them; ``.closed[state]`` is the branch of the ``closed`` pseudo-trigger.
A missing key means the move is illegal. ``TABLES`` is version 1's; a later
version's tables hold every row of the earlier ones plus its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from dfachat.errors import SpecError
from dfachat.spec import (
    CLOSED_TRIGGER,
    GUARDS,
    MESSAGES_BY_NAME,
    ROLES,
    STATES,
    SUPPORTED_VERSIONS,
    StateSpec,
    build_machine,
)

__all__ = ["TABLES", "TABLES_BY_VERSION", "Branch", "RoleTable", "resolve"]

Guard = Callable[[Any, Any], bool]


@dataclass(frozen=True, slots=True)
class Branch:
    """One row of the table: take it when every guard gives its expected value."""

    guards: tuple[tuple[str, Guard, bool], ...]  # (name, predicate, expected)
    dest: str | None  # None: internal transition, the state does not change
    actions: tuple[str, ...]
    rule: str
    trigger: str
    refused: str | None = None  # the rule a refusal of the guards breaks, when not ``rule``

    def admits(self, session: Any, message: Any) -> bool:
        # A loop, not all(...): this runs per guarded event and a generator costs more.
        for _, guard, expected in self.guards:  # noqa: SIM110
            if bool(guard(session, message)) is not expected:
                return False
        return True

    def describe_guards(self) -> str:
        return " and ".join(("if " if expected else "unless ") + name for name, _, expected in self.guards)


@dataclass(frozen=True, slots=True)
class RoleTable:
    role: str
    version: int
    states: MappingProxyType[str, StateSpec]
    initial: str
    recv: MappingProxyType[str, MappingProxyType[int, tuple[Branch, ...]]]
    send: MappingProxyType[str, MappingProxyType[int, tuple[Branch, ...]]]
    closed: MappingProxyType[str, Branch]
    received_types: frozenset[int]  # message types this role ever receives
    discarding: frozenset[str]  # states whose spec says discards_input (R12.4)

    def internal_sends(self, type_code: int) -> frozenset[str]:
        """States where sending this type is one unguarded row that keeps the state.

        A server pushing one frame to many sessions (DELIVER, JOINED, LEFT) checks
        this set instead of running ``send`` per recipient: the same rule, read
        once from the same table.
        """
        return frozenset(
            state
            for state, row in self.send.items()
            if len(branches := row.get(type_code, ())) == 1
            and branches[0].dest is None
            and not branches[0].guards
            and not branches[0].actions
        )


def _generate(role: str, version: int) -> RoleTable:
    machine = build_machine(role, version=version)
    recv: dict[str, dict[int, list[Branch]]] = {s.name: {} for s in STATES[role]}
    send: dict[str, dict[int, list[Branch]]] = {s.name: {} for s in STATES[role]}
    closed: dict[str, Branch] = {}
    for trigger, event in machine.events.items():
        for source, transitions in event.transitions.items():
            for t in transitions:
                guards = tuple((c.func, GUARDS[c.func], bool(c.target)) for c in t.conditions)
                refused = t.refused if t.refused != t.rule else None
                branch = Branch(guards, t.dest, tuple(t.after), t.rule, trigger, refused)
                if trigger == CLOSED_TRIGGER:
                    if guards or source in closed:
                        raise SpecError(f"{role}: '{CLOSED_TRIGGER}' must be one unguarded row per state")
                    closed[source] = branch
                    continue
                direction, _, name = trigger.partition("_")
                row = (recv if direction == "recv" else send)[source]
                row.setdefault(MESSAGES_BY_NAME[name].code, []).append(branch)
    states = {s.name: s for s in STATES[role]}
    missing = set(states) - set(closed)
    if missing:
        raise SpecError(f"{role}: states without a '{CLOSED_TRIGGER}' row: {sorted(missing)}")

    def freeze(rows: dict[str, dict[int, list[Branch]]]) -> MappingProxyType[str, Any]:
        return MappingProxyType(
            {state: MappingProxyType({code: tuple(b) for code, b in row.items()}) for state, row in rows.items()}
        )

    return RoleTable(
        role=role,
        version=version,
        states=MappingProxyType(states),
        initial=machine.initial,
        recv=freeze(recv),
        send=freeze(send),
        closed=MappingProxyType(closed),
        received_types=frozenset(code for row in recv.values() for code in row),
        discarding=frozenset(name for name, spec in states.items() if spec.discards_input),
    )


TABLES_BY_VERSION: MappingProxyType[int, MappingProxyType[str, RoleTable]] = MappingProxyType(
    {v: MappingProxyType({role: _generate(role, v) for role in ROLES}) for v in SUPPORTED_VERSIONS}
)
TABLES: MappingProxyType[str, RoleTable] = TABLES_BY_VERSION[1]


def resolve(
    role: str, state: str, trigger: str, message: Any, session: Any, *, version: int = 1
) -> Branch | None:
    """The branch the table takes for ``trigger`` with ``message`` in ``state``, or None (illegal)."""
    table = TABLES_BY_VERSION[version][role]
    if trigger == CLOSED_TRIGGER:
        return table.closed.get(state)
    direction, _, name = trigger.partition("_")
    rows = table.recv if direction == "recv" else table.send
    for branch in rows[state].get(MESSAGES_BY_NAME[name].code, ()):
        if branch.admits(session, message):
            return branch
    return None
