"""The engine's frozen tables agree with the spec's transitions machines, move for move, in
every protocol version; and a later version's table only adds rows to an earlier one's.

For each version, role, state, trigger (every ``recv_``/``send_`` of every
message type, legal or not, every trigger the machine knows, and ``closed``),
sample message and session context, the transitions machine of that version
is run on a model whose guards delegate to :data:`dfachat.spec.GUARDS` (over
a real session in that context) and whose actions record their names; the
result (illegal, or the transition taken: destination, rule, actions) must
equal :func:`dfachat.fsm.resolve` on that version's table.
"""

from __future__ import annotations

from typing import Any

import pytest
from transitions import MachineError

from dfachat.fsm import TABLES, TABLES_BY_VERSION, Branch, Session, resolve
from dfachat.spec import (
    ACTIONS,
    CLOSED_TRIGGER,
    GUARDS,
    MESSAGES,
    ROLES,
    RULES,
    STATES,
    SUPPORTED_VERSIONS,
    build_machine,
    transitions_of,
)
from dfachat.spec.machine import RuleTransition, SpecMachine

from .samples import (
    CONTEXTS,
    GUARD_VARIANTS,
    GUARDED_TYPES,
    NEWEST,
    SAMPLES,
    TYPE_NAMES,
    make_session,
    plain,
)

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
        return GUARDS[name](self.session, event.kwargs["message"])

    method.__name__ = name
    return method


def _action_method(name: str) -> Any:
    def method(self: Any, event: Any) -> None:
        self.ran.append(name)

    method.__name__ = name
    return method


class Model:
    """A transitions model: a method per guard (delegating to GUARDS over ``session``, a real
    session in the case's context) and per action (recording)."""

    def __init__(self) -> None:
        self.session: Session = make_session("client", "CONNECTED")
        self.ran: list[str] = []
        self.fired: _Recording | None = None


for _name in GUARDS:
    setattr(Model, _name, _guard_method(_name))
for _name in ACTIONS:
    setattr(Model, _name, _action_method(_name))


def _triggers(role: str, version: int) -> list[str]:
    return sorted(GENERIC_TRIGGERS | set(build_machine(role, version=version).events))


def _type_of(trigger: str) -> str | None:
    return None if trigger == CLOSED_TRIGGER else trigger.partition("_")[2]


def _cases(trigger: str, version: int) -> list[tuple[Any, dict[str, Any]]]:
    """(message, session context) pairs for a trigger: every sample in every context."""
    name = _type_of(trigger)
    if name is None:
        return [(None, {})]
    return [(m, ctx) for m in SAMPLES[name] for ctx in CONTEXTS[(name, version)]]


_MACHINES: dict[tuple[str, int], tuple[Any, Model]] = {}


def _machine(role: str, version: int) -> tuple[Any, Model]:
    if (role, version) not in _MACHINES:
        model = Model()
        machine = build_machine(role, model, version=version, machine_cls=_RecordingMachine)
        _MACHINES[role, version] = (machine, model)
    return _MACHINES[role, version]


def _run_machine(role: str, version: int, state: str, trigger: str, message: Any) -> tuple[str, Any] | None:
    """(new state, fired transition) or None when the machine refuses the move."""
    machine, model = _machine(role, version)
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
    pytest.param(version, role, state.name, trigger, id=f"v{version}-{role}-{state.name}-{trigger}")
    for version in SUPPORTED_VERSIONS
    for role in ROLES
    for state in STATES[role]
    for trigger in _triggers(role, version)
]


@pytest.mark.parametrize(("version", "role", "state", "trigger"), CASES)
def test_table_agrees_with_machine(version: int, role: str, state: str, trigger: str) -> None:
    _, model = _machine(role, version)
    for message, context in _cases(trigger, version):
        model.session = make_session(role, state, version, **context)
        got = _run_machine(role, version, state, trigger, message)
        branch = resolve(role, state, trigger, message, model.session, version=version)
        where = f"v{version} {role} {state} {trigger} {message!r} {context}"
        if got is None:
            assert branch is None, f"{where}: machine refuses, table takes {branch}"
            continue
        assert branch is not None, f"{where}: machine moves to {got[0]}, table refuses"
        new_state, fired = got
        assert new_state == (branch.dest or state), where
        assert fired is not None
        assert fired.dest == branch.dest, where
        assert fired.rule == branch.rule, where
        assert fired.refused == (branch.refused or branch.rule), where
        assert tuple(fired.after) == branch.actions, where
        assert model.ran == list(branch.actions), where
        assert branch.trigger == trigger, where


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_every_machine_trigger_is_covered(version: int) -> None:
    for role in ROLES:
        unknown = set(build_machine(role, version=version).events) - GENERIC_TRIGGERS
        assert not unknown, f"{role}: triggers the table generator cannot parse: {unknown}"


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_table_shape_matches_spec(version: int) -> None:
    for role in ROLES:
        table = TABLES_BY_VERSION[version][role]
        assert (table.role, table.version) == (role, version)
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
        # the rows are exactly the version's transitions (those of its version and every earlier one)
        rows = sum(len(b) for r in (table.recv, table.send) for row in r.values() for b in row.values())
        assert rows == _row_count(transitions_of(role, version)), (role, version)


def _row_count(transitions: Any) -> int:
    """The table rows some transitions declare: one per source state, ``closed`` aside."""
    return sum(
        len(t["source"]) if isinstance(t["source"], list) else 1 for t in transitions if t["trigger"] != CLOSED_TRIGGER
    )


def test_tables_is_version_1() -> None:
    """``TABLES`` is version 1's: a session uses it until HELLO_OK chooses a version (R5.2)."""
    assert TABLES is TABLES_BY_VERSION[1]
    assert set(TABLES_BY_VERSION) == set(SUPPORTED_VERSIONS)


def _subsequence(small: tuple[Branch, ...], big: tuple[Branch, ...]) -> bool:
    it = iter(big)
    return all(any(b == s for b in it) for s in small)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(
    ("old", "new"), [(a, b) for a in SUPPORTED_VERSIONS for b in SUPPORTED_VERSIONS if a < b]
)
def test_a_later_version_only_adds_rows(role: str, old: int, new: int) -> None:
    """Every row of an earlier version's table is in the later one's, in the same order among the
    rows of its trigger and state: version 2 adds rows, it changes and removes none."""
    before, after = TABLES_BY_VERSION[old][role], TABLES_BY_VERSION[new][role]
    assert before.states == after.states and before.initial == after.initial
    assert before.closed == after.closed
    assert before.received_types <= after.received_types
    added = 0
    for direction in ("recv", "send"):
        old_rows, new_rows = getattr(before, direction), getattr(after, direction)
        for state, row in old_rows.items():
            assert set(row) <= set(new_rows[state]), (direction, state)
            for code, branches in row.items():
                assert _subsequence(branches, new_rows[state][code]), (direction, state, code)
        added += sum(len(b) for row in new_rows.values() for b in row.values())
        added -= sum(len(b) for row in old_rows.values() for b in row.values())
    assert transitions_of(role, old) == [t for t in transitions_of(role, new) if t["since"] <= old]
    assert added == _row_count(t for t in transitions_of(role, new) if t["since"] > old)


def _all_branches(role: str, version: int) -> list[tuple[str, Branch]]:
    table = TABLES_BY_VERSION[version][role]
    found = [
        (state, branch)
        for rows in (table.recv, table.send)
        for state, row in rows.items()
        for branches in row.values()
        for branch in branches
    ]
    return found + list(table.closed.items())


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
@pytest.mark.parametrize("role", ROLES)
def test_samples_take_every_branch(role: str, version: int) -> None:
    """The samples and contexts are rich enough: each branch of each version's table is taken
    by one of them."""
    for state, branch in _all_branches(role, version):
        taken = [
            (m, ctx)
            for m, ctx in _cases(branch.trigger, version)
            if resolve(role, state, branch.trigger, m, make_session(role, state, version, **ctx), version=version)
            is branch
        ]
        assert taken, f"v{version} {role} {state} {branch}: no sample takes it"


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_a_refusal_cites_only_rules_of_its_version(version: int) -> None:
    """A row of version 1 may name a later rule for its refusal (DELIVER: R7.12) only because its
    guards never refuse before that rule exists: every sample in every context passes them."""
    for role in ROLES:
        for state, branch in _all_branches(role, version):
            if RULES[branch.refused or branch.rule].since <= version:
                continue
            for message, context in _cases(branch.trigger, version):
                session = make_session(role, state, version, **context)
                assert branch.admits(session, message), (version, role, state, branch, context)


def test_guard_variants_give_both_outcomes() -> None:
    """In a session of the newest version every guard comes out both ways on the samples of each
    type it guards, and each variant gives the outcome it claims."""
    for guard, types in GUARDED_TYPES.items():
        for type_name in types:
            outcomes = {
                bool(GUARDS[guard](make_session("server", "ESTABLISHED", NEWEST, **ctx), m))
                for m in SAMPLES[type_name]
                for ctx in CONTEXTS[(type_name, NEWEST)]
            }
            assert outcomes == {True, False}, f"{guard} on {type_name}: only {outcomes}"
        for variant in GUARD_VARIANTS[guard]:
            session = make_session("server", "ESTABLISHED", NEWEST, **variant.session)
            for type_name in types:
                assert bool(GUARDS[guard](session, plain(type_name, **variant.message))) is variant.holds


def test_version_1_has_no_deliver_window() -> None:
    """deliver_window_open guards DELIVER in version 1 too, and there always holds: version 1 has
    no window (R7.12 is a version-2 rule), whatever the counters say."""
    for variant in GUARD_VARIANTS["deliver_window_open"]:
        session = make_session("server", "ESTABLISHED", 1, **variant.session)
        assert GUARDS["deliver_window_open"](session, SAMPLES["DELIVER"][0])


def test_every_type_has_samples() -> None:
    assert set(SAMPLES) == {m.name for m in MESSAGES} == set(TYPE_NAMES)
    assert all(SAMPLES.values())
    assert all(CONTEXTS[(name, v)] for name in TYPE_NAMES for v in SUPPORTED_VERSIONS)
