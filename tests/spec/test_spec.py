"""The spec agrees with itself, and :func:`dfachat.spec.validate` catches it when it does not."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

import dfachat.errors
import dfachat.spec
from dfachat.errors import DfachatError, SpecError
from dfachat.spec import (
    ACTIONS,
    ERROR_INFO,
    GUARDS,
    MESSAGES,
    MESSAGES_BY_NAME,
    PROTOCOL_VERSION,
    ROLES,
    RULES,
    SECTIONS,
    STATES,
    SUPPORTED_VERSIONS,
    TRANSITIONS,
    ErrorCode,
    Rule,
    build_machine,
    transitions_of,
    validate,
)
from dfachat.spec.codes import SINCE, since
from dfachat.spec.types import Code, Flags, Ident, List, Text, at_version, unwrap

NEWEST = max(SUPPORTED_VERSIONS)


def _transition(
    trigger: str, source: Any, dest: str | None, rule: str = "R12.1", **extra: Any
) -> dict:
    return {
        "trigger": trigger,
        "source": source,
        "dest": dest,
        "conditions": [],
        "unless": [],
        "after": [],
        "rule": rule,
        "refused": None,
        "since": 1,
        **extra,
    }


def test_validate_passes() -> None:
    validate()


# --- breaking the spec is caught -----------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "transition", "complaint"),
    [
        ("server", _transition("recv_NOPE", "ESTABLISHED", None), "names no message"),
        ("server", _transition("get_MSG", "ESTABLISHED", None), "names no message"),
        ("server", _transition("recv_HELLO_OK", "ESTABLISHED", None), "not sent by the client"),
        ("client", _transition("send_DELIVER", "ESTABLISHED", None), "not sent by the client"),
        ("server", _transition("recv_MSG", "NOWHERE", "ESTABLISHED"), "unknown state NOWHERE"),
        ("client", _transition("send_MSG", ["ESTABLISHED", "LIMBO"], None), "unknown state LIMBO"),
        ("server", _transition("recv_MSG", "ESTABLISHED", "ROUTED"), "unknown state ROUTED"),
        (
            "server",
            _transition("recv_MSG", "ESTABLISHED", None, conditions=["is_lucky"]),
            "undefined guard",
        ),
        (
            "client",
            _transition("recv_ERROR", "ESTABLISHED", None, unless=["is_moot"]),
            "undefined guard",
        ),
        (
            "server",
            _transition("recv_MSG", "ESTABLISHED", None, after=["explode"]),
            "undefined action",
        ),
        ("client", _transition("send_MSG", "ESTABLISHED", None, rule="R99.9"), "R99.9 is cited"),
        # a version-1 row for a message version 2 added, and a row of a version the spec lacks
        ("server", _transition("recv_DELIVER_ACK", "ESTABLISHED", None), "before DELIVER_ACK"),
        ("server", _transition("recv_PING", "ESTABLISHED", None, since=NEWEST + 1), "unsupported version"),
    ],
)
def test_a_broken_transition_is_a_spec_error(
    monkeypatch: pytest.MonkeyPatch, role: str, transition: dict, complaint: str
) -> None:
    monkeypatch.setitem(TRANSITIONS, role, [*TRANSITIONS[role], transition])
    with pytest.raises(SpecError, match=complaint) as info:
        validate()
    assert info.value.rule in RULES


def test_a_state_citing_an_unknown_rule_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    states = list(STATES["client"])
    states[0] = dataclasses.replace(states[0], rule="R42.1")
    monkeypatch.setitem(STATES, "client", tuple(states))
    with pytest.raises(SpecError, match="R42.1"):
        validate()


def test_two_initial_states_are_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    states = [dataclasses.replace(s, initial=True) for s in STATES["server"]]
    monkeypatch.setitem(STATES, "server", tuple(states))
    with pytest.raises(SpecError, match="exactly one initial state"):
        validate()


def test_an_error_code_without_info_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(ERROR_INFO, ErrorCode.SERVER_FULL)
    with pytest.raises(SpecError, match="SERVER_FULL has no ERROR_INFO"):
        validate()


def test_error_info_citing_an_unknown_rule_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    info = ERROR_INFO[ErrorCode.SERVER_FULL]
    monkeypatch.setitem(ERROR_INFO, ErrorCode.SERVER_FULL, dataclasses.replace(info, rule="R1.99"))
    with pytest.raises(SpecError, match="R1.99"):
        validate()


def test_duplicate_and_out_of_range_type_codes_are_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    clash = dataclasses.replace(MESSAGES_BY_NAME["PONG"], name="PANG")
    monkeypatch.setattr(dfachat.spec, "MESSAGES", (*MESSAGES, clash))
    with pytest.raises(SpecError, match="unique"):
        validate()
    zero = dataclasses.replace(MESSAGES_BY_NAME["PONG"], name="ZERO", code=0)
    monkeypatch.setattr(dfachat.spec, "MESSAGES", (*MESSAGES, zero))
    with pytest.raises(SpecError, match="not be 0"):
        validate()


def test_a_rule_naming_an_unknown_limit_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(RULES, "R1.1", Rule("R1.1", "MUST", "at most {max_wombats} wombats"))
    with pytest.raises(SpecError, match="unknown limit 'max_wombats'"):
        validate()


def test_a_rule_text_citing_an_unknown_rule_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    section = SECTIONS[0]
    broken = dataclasses.replace(
        section, rules=(*section.rules, Rule("R1.9", "MUST", "as R77.7 says"))
    )
    monkeypatch.setattr(dfachat.spec, "SECTIONS", (broken, *SECTIONS[1:]))
    with pytest.raises(SpecError, match="R77.7"):
        validate()


# --- every citation exists -------------------------------------------------------------------


def _error_classes() -> list[type[DfachatError]]:
    found, todo = [], [DfachatError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def test_error_classes_cite_rules_and_codes_that_exist() -> None:
    import dfachat.codec  # noqa: F401  (its errors are DfachatErrors too)

    classes = _error_classes()
    assert {c.__name__ for c in classes} >= set(dfachat.errors.__all__)
    for cls in classes:
        assert cls.rule in RULES, cls
        assert cls.code_name in ErrorCode.__members__, cls


def test_error_info_states_and_transitions_cite_rules_that_exist() -> None:
    for code, info in ERROR_INFO.items():
        assert info.rule in RULES, code
    for role in ROLES:
        for state in STATES[role]:
            assert state.rule in RULES, (role, state.name)
        for t in TRANSITIONS[role]:
            assert t["rule"] in RULES, (role, t["trigger"])
            assert t["refused"] is None or t["refused"] in RULES, (role, t["trigger"])
            # a row cites a rule of its own version (a refusal may cite a later one: see the
            # engine tests, which show its guards always hold before that version)
            assert RULES[t["rule"]].since <= t["since"], (role, t["trigger"], t["rule"])


def test_field_types_cite_rules_that_exist() -> None:
    def check(layout: Any, where: str) -> None:
        for sub in layout.subcons:
            con = unwrap(sub)
            if isinstance(con, (Code, Flags, Ident, Text, List)):
                assert con.rule in RULES, f"{where}.{sub.name}"
            if isinstance(con, List):
                item = unwrap(con.item)
                if con.record is not None:
                    check(con.record, f"{where}.{sub.name}[i]")
                elif isinstance(item, Ident):
                    assert item.rule in RULES

    for spec in MESSAGES:
        check(spec.layout, spec.name)


def test_every_guard_and_action_is_used_and_documented() -> None:
    used_guards = {
        g for role in ROLES for t in TRANSITIONS[role] for g in t["conditions"] + t["unless"]
    }
    used_actions = {a for role in ROLES for t in TRANSITIONS[role] for a in t["after"]}
    assert used_guards == set(GUARDS)
    assert used_actions == set(ACTIONS)
    for name, guard in GUARDS.items():
        assert guard.__doc__, f"guard {name} needs a docstring: the protocol document prints it"


# --- versions -------------------------------------------------------------------------------


def test_versions() -> None:
    """Version 1 is the first, and the newest is PROTOCOL_VERSION; every one in between is supported."""
    assert tuple(range(1, PROTOCOL_VERSION + 1)) == SUPPORTED_VERSIONS


@pytest.mark.parametrize("role", ROLES)
def test_transitions_of_a_version_are_its_rows_and_every_earlier_ones(role: str) -> None:
    for version in SUPPORTED_VERSIONS:
        rows = transitions_of(role, version)
        assert rows == [t for t in TRANSITIONS[role] if t["since"] <= version]
        if version > 1:
            earlier = transitions_of(role, version - 1)
            assert [t for t in rows if t["since"] < version] == earlier  # only adds, in order
        machine = build_machine(role, version=version)
        assert set(machine.events) == {t["trigger"] for t in rows}
    assert transitions_of(role) == transitions_of(role, PROTOCOL_VERSION)
    for bad in (0, NEWEST + 1):
        with pytest.raises(ValueError, match="not one of"):
            transitions_of(role, bad)


def test_members_added_later_are_known_and_versioned() -> None:
    """codes.SINCE names real members of later versions; since() says 1 for every other member."""
    for (enum, name), version in SINCE.items():
        assert name in enum.__members__, (enum, name)
        assert 1 < version <= NEWEST
        assert since(enum[name]) == version
    for enum in {enum for enum, _ in SINCE}:
        for member in enum:
            if (enum, member.name) not in SINCE:
                assert since(member) == 1


def _constructs(con: Any) -> list[Any]:
    """Every Code and Flags in a layout or field, records included."""
    con = unwrap(con)
    if isinstance(con, (Code, Flags)):
        return [con]
    if isinstance(con, List):
        return _constructs(con.record) if con.record is not None else _constructs(con.item)
    if hasattr(con, "subcons"):
        return [c for sub in con.subcons for c in _constructs(sub)]
    return []


@pytest.mark.parametrize("spec", MESSAGES, ids=lambda s: s.name)
def test_layout_for_a_version(spec: Any) -> None:
    """A version's layout: the fields of its version in the newest layout's order, its
    enumerations and flags holding exactly the members of that version (R4.6, R4.7)."""
    newest = [sub.name for sub in spec.layout.subcons]
    assert spec.layout_for(NEWEST) is spec.layout
    for name, version in spec.added:
        assert spec.since < version <= NEWEST and name in newest
    for version in SUPPORTED_VERSIONS:
        if not spec.in_version(version):
            assert version < spec.since
            with pytest.raises(KeyError):
                spec.layout_for(version)
            continue
        layout = spec.layout_for(version)
        names = [sub.name for sub in layout.subcons]
        assert names == [n for n in newest if spec.field_since(n) <= version]
        for con in _constructs(layout):
            if isinstance(con, Code):
                assert {m.name for m in con.members} == {m.name for m in con.enum if since(m) <= version}
            else:
                mask = 0
                for m in con.flags:
                    mask |= int(m) if since(m) <= version else 0
                assert con.mask == mask


def test_at_version_keeps_what_does_not_change() -> None:
    """A construct with nothing added after a version is the same object at that version."""
    for spec in MESSAGES:
        for sub in spec.layout.subcons:
            if not any(since(m) > 1 for c in _constructs(sub) for m in (c.enum if isinstance(c, Code) else c.flags)):
                assert at_version(sub, 1) is sub, (spec.name, sub.name)
            assert at_version(sub, NEWEST) is sub
