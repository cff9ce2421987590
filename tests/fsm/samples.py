"""Sample messages for the engine tests, derived from the spec.

Every message type in :data:`dfachat.spec.MESSAGES` gets one plain, valid
instance built from its layout (:func:`plain`). The only special cases are
the fields the machine's guards read: :data:`GUARD_VARIANTS` says, per guard
name in :data:`dfachat.spec.GUARDS`, which field values make it true and
false; a type's samples are the product of the variants of every guard the
transitions apply to it (:data:`GUARDED_TYPES`, read from ``TRANSITIONS``).
So ERROR gets FATAL/non-fatal x regarding MSG/LIST/0, AUTH_OK and USERS
with and without MORE, AUTH_FAILED with 0 and 2 attempts left, HELLO_OK
matching the client's offer (:data:`OFFER`) and not.

:func:`strategy` is the Hypothesis counterpart of :func:`plain`: simple but
valid values for every field, also derived from the layout.
"""

from __future__ import annotations

import itertools
from typing import Any

from construct import FormatField, Struct
from hypothesis import strategies as st

from dfachat.codec.messages import HELLO, MESSAGE_CLASSES, RECORD_CLASSES, Message
from dfachat.fsm import ClientSession, ServerSession, Session
from dfachat.spec import (
    GUARDS,
    MESSAGES,
    MESSAGES_BY_NAME,
    ROLES,
    TRANSITIONS,
    ErrorFlags,
    ListFlags,
)
from dfachat.spec.types import Code, Flags, Ident, List, Text, unwrap

__all__ = [
    "GUARDED_TYPES",
    "GUARD_VARIANTS",
    "OFFER",
    "SAMPLES",
    "TYPE_NAMES",
    "all_samples",
    "make_session",
    "plain",
    "strategy",
]

TYPE_NAMES: tuple[str, ...] = tuple(m.name for m in MESSAGES)

# The client's HELLO every forced-state client session is primed with. A
# non-default encoding, so that a session decoding TEXT fields in the wrong
# encoding shows.
OFFER = HELLO(versions=(1,), encoding="utf-16", software="dfachat-tests/1")

# One valid example per kind of identifier (the layouts name them by description).
_IDENT_EXAMPLES = {
    "user name": "alice",
    "encoding name": "utf-8",
    "software name": "dfachat-tests/1",
    "rule id": "R12.1",
    "reason text": "testing",
}
_NAMES = ("alice", "bob", "Carol.x", "d_1", "Eve-2")

# guard name -> field changes that make it true, then ones that make it false.
GUARD_VARIANTS: dict[str, tuple[tuple[dict[str, Any], bool], ...]] = {
    "is_fatal": (({"flags": ErrorFlags.FATAL}, True), ({"flags": ErrorFlags(0)}, False)),
    "has_more": (({"flags": ListFlags.MORE}, True), ({"flags": ListFlags(0)}, False)),
    "has_attempts": (({"attempts_left": 2}, True), ({"attempts_left": 0}, False)),
    "regards_MSG": (({"regarding": MESSAGES_BY_NAME["MSG"].code}, True), ({"regarding": 0}, False)),
    "regards_LIST": (
        ({"regarding": MESSAGES_BY_NAME["LIST"].code}, True),
        ({"regarding": 0}, False),
    ),
    "matches_offer": (
        ({"version": OFFER.versions[0], "encoding": OFFER.encoding}, True),
        ({"version": max(OFFER.versions) + 1, "encoding": OFFER.encoding}, False),
        ({"version": OFFER.versions[0], "encoding": "latin-1"}, False),
    ),
}
if set(GUARD_VARIANTS) != set(GUARDS):
    raise AssertionError(f"samples: guards without variants: {set(GUARDS) ^ set(GUARD_VARIANTS)}")


def _guarded_types() -> dict[str, frozenset[str]]:
    """guard name -> the message types some transition applies it to."""
    found: dict[str, set[str]] = {name: set() for name in GUARDS}
    for role in ROLES:
        for t in TRANSITIONS[role]:
            _, _, type_name = t["trigger"].partition("_")
            for guard in (*t["conditions"], *t["unless"]):
                found[guard].add(type_name)
    return {name: frozenset(types) for name, types in found.items()}


GUARDED_TYPES = _guarded_types()


# --- plain values, from the layout -------------------------------------------------
def _value(con: Any) -> Any:
    con = unwrap(con)
    if isinstance(con, Code):
        return next(iter(con.enum))
    if isinstance(con, Flags):
        return con.flags(0)
    if isinstance(con, Ident):
        value = _IDENT_EXAMPLES[con.description]
        assert con.regex.fullmatch(value.encode("ascii")), (con.description, value)
        return value
    if isinstance(con, Text):
        return "hello"[: con.max_chars]
    if isinstance(con, List):
        return (_value(con.item),)
    if isinstance(con, Struct):  # a record of a list
        return {sub.name: _value(sub) for sub in con.subcons}
    if isinstance(con, FormatField):
        return 1
    raise TypeError(f"no sample value for {con!r}")


def _record_or_value(item: Any) -> Any:
    inner = unwrap(item)
    if isinstance(inner, Struct):
        return RECORD_CLASSES[item.name](**_value(inner))
    return _value(item)


def plain(type_name: str, **changes: Any) -> Message:
    """A valid instance of ``type_name`` built from its layout, with ``changes`` applied."""
    spec = MESSAGES_BY_NAME[type_name]
    fields: dict[str, Any] = {}
    for sub in spec.layout.subcons:
        con = unwrap(sub)
        if isinstance(con, List):
            fields[sub.name] = (_record_or_value(con.item),)
        else:
            fields[sub.name] = _value(con)
    fields.update(changes)
    return MESSAGE_CLASSES[type_name](**fields)


def _variants(type_name: str) -> list[dict[str, Any]]:
    """Every combination of guard-deciding field values for this type."""
    groups: dict[frozenset[str], list[dict[str, Any]]] = {}
    for guard, types in sorted(GUARDED_TYPES.items()):
        if type_name not in types:
            continue
        for changes, _ in GUARD_VARIANTS[guard]:
            group = groups.setdefault(frozenset(changes), [])
            if changes not in group:
                group.append(changes)
    combos = []
    for parts in itertools.product(*groups.values()):
        merged: dict[str, Any] = {}
        for part in parts:
            merged.update(part)
        combos.append(merged)
    return combos  # [{}] for a type no guard reads


SAMPLES: dict[str, tuple[Message, ...]] = {
    name: tuple(plain(name, **changes) for changes in _variants(name)) for name in TYPE_NAMES
}


def all_samples() -> list[Message]:
    return [m for name in TYPE_NAMES for m in SAMPLES[name]]


def make_session(role: str, state: str) -> Session:
    """A session of ``role`` forced into ``state``, speaking OFFER's encoding (a client sent OFFER)."""
    if role == "client":
        session: Session = ClientSession()
        session.offer(OFFER)
    else:
        session = ServerSession(encoding=OFFER.encoding)
    session._state = state
    return session


# --- Hypothesis: generic, simple, valid values ------------------------------------
_TEXT = st.text(alphabet="abcdefghijklmnopqrstuvwxyz ABC.,!?0123456789", min_size=1, max_size=12)
_NAME = st.sampled_from(_NAMES)
_IDENT_STRATEGIES = {
    "user name": _NAME,
    "encoding name": st.sampled_from(("utf-8", "utf-16", "latin-1", "ascii")),
    "software name": st.sampled_from(("dfachat/1", "x", "hyp test 0.1")),
    "rule id": st.sampled_from(("R12.1", "R7.9", "R2.5", "R10.4")),
    "reason text": st.text(alphabet="abc xyz-", max_size=10),
}


def _strategy(con: Any) -> st.SearchStrategy[Any]:
    con = unwrap(con)
    if isinstance(con, Code):
        return st.sampled_from(list(con.enum))
    if isinstance(con, Flags):
        return st.sampled_from([con.flags(0), *con.flags])
    if isinstance(con, Ident):
        return _IDENT_STRATEGIES[con.description]
    if isinstance(con, Text):
        return _TEXT
    if isinstance(con, List):
        inner = unwrap(con.item)
        if isinstance(inner, Struct):
            record = RECORD_CLASSES[con.item.name]
            item = st.builds(record, **{sub.name: _strategy(sub) for sub in inner.subcons})
            key = None
        else:
            item = _strategy(con.item)
            key = (lambda v: v.casefold()) if getattr(unwrap(con.item), "casefold", False) else None
        size = {"min_size": con.min_items, "max_size": min(3, con.max_items)}
        if not con.unique:
            return st.lists(item, **size).map(tuple)
        if key is None:
            return st.lists(item, unique=True, **size).map(tuple)
        return st.lists(item, unique_by=key, **size).map(tuple)
    if isinstance(con, FormatField):
        return st.integers(0, (1 << (8 * con.length)) - 1)
    raise TypeError(f"no strategy for {con!r}")


def strategy(type_name: str, **fixed: Any) -> st.SearchStrategy[Message]:
    """Valid instances of ``type_name``; ``fixed`` fields are values or strategies."""
    spec = MESSAGES_BY_NAME[type_name]
    fields = {}
    for sub in spec.layout.subcons:
        if sub.name in fixed:
            value = fixed[sub.name]
            fields[sub.name] = value if isinstance(value, st.SearchStrategy) else st.just(value)
        else:
            fields[sub.name] = _strategy(sub)
    return st.builds(MESSAGE_CLASSES[type_name], **fields)
