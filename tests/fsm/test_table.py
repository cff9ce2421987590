"""The engine's frozen table agrees with the spec's transitions machine, move for move.

For each role, every state, every trigger (every ``recv_``/``send_`` of every
message type, legal or not, every trigger the machine knows, and ``closed``)
and every sample message, the transitions machine is run on a model whose
guards delegate to :data:`dfachat.spec.GUARDS` and whose actions record
their names; the result (illegal, or the transition taken: destination,
rule, actions) must equal :func:`dfachat.fsm.resolve` on the table.
"""

from __future__ import annotations

from typing import Any

import pytest
from transitions import MachineError

from dfachat.fsm import TABLES, Branch, resolve
from dfachat.spec import ACTIONS, CLOSED_TRIGGER, GUARDS, MESSAGES, ROLES, STATES, build_machine
from dfachat.spec.machine import RuleTransition, SpecMachine

from .samples import GUARD_VARIANTS, GUARDED_TYPES, OFFER, SAMPLES, TYPE_NAMES, plain

GENERIC_TRIGGERS = frozenset(
    f"{direction}_{m.name}" for m in MESSAGES for direction in ("recv", "send")
) | {CLOSED_TRIGGER}


class _Recording(RuleTransition):
    """Remembers on the model which transition fired, so its rule can be compared."""

    def execute(self, event_data: Any) -> bool:
        fired = super().execute(event_data)
        if fired:
            event_data.model.fired = self
        return fired


class _RecordingMachine(SpecMachine):
    transition_cls = _Recording


def _guard_method(name: str) -> Any:
    def method(self: Any, event: Any) -> bool:
        return GUARDS[name](self, event.kwargs["message"])

    method.__name__ = name
    return method


def _action_method(name: str) -> Any:
    def method(self: Any, event: Any) -> None:
        self.ran.append(name)

    method.__name__ = name
    return method


class Model:
    """A transitions model: a method per guard (delegating to GUARDS) and per action (recording)."""

    def __init__(self) -> None:
        # the session attributes guards read (matches_offer): a client that sent OFFER
        self.offered_versions = tuple(OFFER.versions)
        self.encoding = OFFER.encoding
        self.ran: list[str] = []
        self.fired: _Recording | None = None


for _name in GUARDS:
    setattr(Model, _name, _guard_method(_name))
for _name in ACTIONS:
    setattr(Model, _name, _action_method(_name))


def _triggers(role: str) -> list[str]:
    return sorted(GENERIC_TRIGGERS | set(build_machine(role).events))


def _messages(trigger: str) -> tuple[Any, ...]:
    if trigger == CLOSED_TRIGGER:
        return (None,)
    return SAMPLES[trigger.partition("_")[2]]


_MACHINES: dict[str, tuple[Any, Model]] = {}


def _machine(role: str) -> tuple[Any, Model]:
    if role not in _MACHINES:
        model = Model()
        _MACHINES[role] = (build_machine(role, model, machine_cls=_RecordingMachine), model)
    return _MACHINES[role]


def _run_machine(role: str, state: str, trigger: str, message: Any) -> tuple[str, Any] | None:
    """(new state, fired transition) or None when the machine refuses the move."""
    machine, model = _machine(role)
    machine.set_state(state, model)
    model.ran, model.fired = [], None
    try:
        ok = model.trigger(trigger, message=message)
    except MachineError:
        return None
    except AttributeError as err:  # a trigger the machine does not know at all
        assert "Do not know event" in str(err)
        return None
    if not ok:  # a guard refused every transition: the state is unchanged
        assert model.state == state
        return None
    return model.state, model.fired


CASES = [
    pytest.param(role, state.name, trigger, id=f"{role}-{state.name}-{trigger}")
    for role in ROLES
    for state in STATES[role]
    for trigger in _triggers(role)
]


@pytest.mark.parametrize(("role", "state", "trigger"), CASES)
def test_table_agrees_with_machine(role: str, state: str, trigger: str) -> None:
    _, model = _machine(role)
    for message in _messages(trigger):
        got = _run_machine(role, state, trigger, message)
        branch = resolve(role, state, trigger, message, model)
        where = f"{role} {state} {trigger} {message!r}"
        if got is None:
            assert branch is None, f"{where}: machine refuses, table takes {branch}"
            continue
        assert branch is not None, f"{where}: machine moves to {got[0]}, table refuses"
        new_state, fired = got
        assert new_state == (branch.dest or state), where
        assert fired is not None
        assert fired.dest == branch.dest, where
        assert fired.rule == branch.rule, where
        assert tuple(fired.after) == branch.actions, where
        assert model.ran == list(branch.actions), where
        assert branch.trigger == trigger, where


def test_every_machine_trigger_is_covered() -> None:
    for role in ROLES:
        unknown = set(build_machine(role).events) - GENERIC_TRIGGERS
        assert not unknown, f"{role}: triggers the table generator cannot parse: {unknown}"


def test_table_shape_matches_spec() -> None:
    for role in ROLES:
        table = TABLES[role]
        assert list(table.states) == [s.name for s in STATES[role]]
        assert table.initial == next(s.name for s in STATES[role] if s.initial)
        assert set(table.recv) == set(table.send) == set(table.closed) == set(table.states)
        for state, spec in table.states.items():
            if spec.discards_input:
                # a receive row there could never be taken (R12.4)
                assert not table.recv[state], f"{role} {state} discards input but has rows"
        for state, rows in (*table.recv.items(), *table.send.items()):
            for code, branches in rows.items():
                # only the last branch of a row may be unguarded: an earlier one would shadow the rest
                for branch in branches[:-1]:
                    assert branch.guards, f"{role} {state} {code}: unguarded branch shadows others"


def _all_branches(role: str) -> list[tuple[str, Branch]]:
    table = TABLES[role]
    found = [
        (state, branch)
        for rows in (table.recv, table.send)
        for state, row in rows.items()
        for branches in row.values()
        for branch in branches
    ]
    return found + list(table.closed.items())


@pytest.mark.parametrize("role", ROLES)
def test_samples_take_every_branch(role: str) -> None:
    """The samples are rich enough: each branch of the table is taken by one of them."""
    model = Model()
    for state, branch in _all_branches(role):
        taken = [
            m
            for m in _messages(branch.trigger)
            if resolve(role, state, branch.trigger, m, model) is branch
        ]
        assert taken, f"{role} {state} {branch}: no sample takes it"


def test_guard_variants_give_both_outcomes() -> None:
    model = Model()
    for guard, types in GUARDED_TYPES.items():
        for type_name in types:
            outcomes = {bool(GUARDS[guard](model, m)) for m in SAMPLES[type_name]}
            assert outcomes == {True, False}, f"{guard} on {type_name}: only {outcomes}"
        for changes, expected in GUARD_VARIANTS[guard]:
            for type_name in types:
                assert bool(GUARDS[guard](model, plain(type_name, **changes))) is expected


def test_every_type_has_samples() -> None:
    assert set(SAMPLES) == {m.name for m in MESSAGES} == set(TYPE_NAMES)
    assert all(SAMPLES.values())
