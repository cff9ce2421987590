"""Sample messages and sessions for the engine tests, derived from the spec.

Every message type in :data:`dfachat.spec.MESSAGES` gets one plain, valid
instance built from its layout (:func:`plain`): valid in every protocol
version that has the type (the first enumeration member, no flags, and the
fields a later version added left at 0, which is what an earlier version's
frame decodes them as). The only special cases are what the machine's guards
read: :data:`GUARD_VARIANTS` says, per guard name in :data:`dfachat.spec.GUARDS`,
which message field values and session attributes make it true and false.
A type's samples are the product of the message parts of the variants of
every guard the transitions apply to it (:data:`GUARDED_TYPES`, read from
``TRANSITIONS``), and its session contexts (:data:`CONTEXTS`) the product of
their session parts. So ERROR gets FATAL/non-fatal x regarding MSG/LIST/0
(and, for version 2's windows, one or two MSGs outstanding), AUTH_OK and
USERS with and without MORE, AUTH_FAILED with 0 and 2 attempts left,
HELLO_OK matching the client's offer (:data:`OFFER`) in each version and
not, DELIVER with its window open and full, DELIVER_ACK naming an
unacknowledged DELIVER and not.

:func:`make_session` forces a real session of a role and version into a state
with such a context (through the public snapshot API); :func:`strategy` is the
Hypothesis counterpart of :func:`plain`: simple but valid values for every
field of a version, also derived from the layout.
"""

from __future__ import annotations

import itertools
import zlib
from typing import Any, NamedTuple

from construct import FormatField, Struct
from hypothesis import strategies as st

from dfachat.codec import encode
from dfachat.codec.messages import HELLO, MESSAGE_CLASSES, RECORD_CLASSES, Message
from dfachat.fsm import ClientSession, ServerSession, Session, SessionSnapshot
from dfachat.spec import (
    GUARDS,
    HEADER,
    LIMITS,
    MESSAGES,
    MESSAGES_BY_NAME,
    ROLES,
    STATES,
    SUPPORTED_VERSIONS,
    TRANSITIONS,
    ErrorFlags,
    ListFlags,
    transitions_of,
)
from dfachat.spec.types import Code, Flags, Ident, List, Text, unwrap

__all__ = [
    "CONTEXTS",
    "GUARDED_TYPES",
    "GUARD_VARIANTS",
    "NEWEST",
    "OFFER",
    "SAMPLES",
    "TYPE_NAMES",
    "Variant",
    "accepted_versions",
    "all_samples",
    "combinations",
    "frame_for",
    "frame_version",
    "make_session",
    "plain",
    "relabel",
    "strategy",
]

TYPE_NAMES: tuple[str, ...] = tuple(m.name for m in MESSAGES)
NEWEST = max(SUPPORTED_VERSIONS)

# The client's HELLO every forced-state client session is primed with: every version, so a
# HELLO_OK of each is a match. A non-default encoding, so that a session decoding TEXT fields
# in the wrong encoding shows.
OFFER = HELLO(versions=tuple(SUPPORTED_VERSIONS), encoding="utf-16", software="dfachat-tests/1")

# One valid example per kind of identifier (the layouts name them by description).
_IDENT_EXAMPLES = {
    "user name": "alice",
    "encoding name": "utf-8",
    "software name": "dfachat-tests/1",
    "rule id": "R12.1",
    "reason text": "testing",
}
_NAMES = ("alice", "bob", "Carol.x", "d_1", "Eve-2")

class Variant(NamedTuple):
    """Message field values and session attributes, and whether a guard holds with them (in a
    session of the newest version: version 1 has no windows, and there deliver_window_open
    always holds)."""

    message: dict[str, Any]
    session: dict[str, Any]
    holds: bool


def _m(changes: dict[str, Any], holds: bool) -> Variant:
    return Variant(changes, {}, holds)


def _s(attrs: dict[str, Any], holds: bool) -> Variant:
    return Variant({}, attrs, holds)


# Unacknowledged DELIVER ids of a session context, oldest first (R7.10, R7.12).
_UNACKED = (7, 8)

GUARD_VARIANTS: dict[str, tuple[Variant, ...]] = {
    "is_fatal": (_m({"flags": ErrorFlags.FATAL}, True), _m({"flags": ErrorFlags(0)}, False)),
    "has_more": (_m({"flags": ListFlags.MORE}, True), _m({"flags": ListFlags(0)}, False)),
    "has_attempts": (_m({"attempts_left": 2}, True), _m({"attempts_left": 0}, False)),
    "regards_MSG": (_m({"regarding": MESSAGES_BY_NAME["MSG"].code}, True), _m({"regarding": 0}, False)),
    "regards_LIST": (_m({"regarding": MESSAGES_BY_NAME["LIST"].code}, True), _m({"regarding": 0}, False)),
    "matches_offer": (
        *(_m({"version": v, "encoding": OFFER.encoding}, True) for v in OFFER.versions),
        _m({"version": max(OFFER.versions) + 1, "encoding": OFFER.encoding}, False),
        _m({"version": OFFER.versions[0], "encoding": "latin-1"}, False),
    ),
    # version 2's windows: counts kept by the session, not fields of the message
    "window_open": (_s({"outstanding": 1, "msg_window": 2}, True), _s({"outstanding": 2, "msg_window": 2}, False)),
    "more_outstanding": (_s({"outstanding": 2}, True), _s({"outstanding": 1}, False)),
    "deliver_window_open": (
        _s({"unacknowledged": _UNACKED[:1], "deliver_window": 2}, True),
        _s({"unacknowledged": _UNACKED, "deliver_window": 2}, False),
    ),
    "acknowledges_delivered": (
        Variant({"server_msg_id": _UNACKED[-1]}, {"unacknowledged": _UNACKED}, True),  # both, cumulatively
        Variant({"server_msg_id": _UNACKED[0]}, {"unacknowledged": _UNACKED}, True),  # the oldest only
        Variant({"server_msg_id": _UNACKED[0] - 1}, {"unacknowledged": _UNACKED}, False),
        Variant({"server_msg_id": _UNACKED[0]}, {"unacknowledged": ()}, False),
    ),
}
if set(GUARD_VARIANTS) != set(GUARDS):
    raise AssertionError(f"samples: guards without variants: {set(GUARDS) ^ set(GUARD_VARIANTS)}")


def _guarded_types(version: int | None = None) -> dict[str, frozenset[str]]:
    """guard name -> the message types some transition (of ``version``, or of any) applies it to."""
    found: dict[str, set[str]] = {name: set() for name in GUARDS}
    for role in ROLES:
        for t in TRANSITIONS[role] if version is None else transitions_of(role, version):
            _, _, type_name = t["trigger"].partition("_")
            for guard in (*t["conditions"], *t["unless"]):
                found[guard].add(type_name)
    return {name: frozenset(types) for name, types in found.items()}


GUARDED_TYPES = _guarded_types()
_GUARDED_BY_VERSION = {v: _guarded_types(v) for v in SUPPORTED_VERSIONS}


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
    """A valid instance of ``type_name`` built from its layout, with ``changes`` applied; the
    fields a later version added than the type's own keep their default, 0."""
    spec = MESSAGES_BY_NAME[type_name]
    fields: dict[str, Any] = {}
    for sub in spec.layout_for(spec.since).subcons:
        con = unwrap(sub)
        if isinstance(con, List):
            fields[sub.name] = (_record_or_value(con.item),)
        else:
            fields[sub.name] = _value(con)
    fields.update(changes)
    return MESSAGE_CLASSES[type_name](**fields)


def combinations(guards: Any, part: str) -> list[dict[str, Any]]:
    """Every combination of the ``part`` ("message" or "session") of the variants of ``guards``:
    variants setting the same keys are alternatives, different keys combine."""
    groups: dict[frozenset[str], list[dict[str, Any]]] = {}
    for guard in sorted(guards):
        for variant in GUARD_VARIANTS[guard]:
            changes = getattr(variant, part)
            if not changes:
                continue
            group = groups.setdefault(frozenset(changes), [])
            if changes not in group:
                group.append(changes)
    combos = []
    for parts in itertools.product(*groups.values()):
        merged: dict[str, Any] = {}
        for p in parts:
            merged.update(p)
        combos.append(merged)
    return combos  # [{}] when no variant has such a part


def _guards_of(type_name: str, version: int | None = None) -> list[str]:
    guarded = GUARDED_TYPES if version is None else _GUARDED_BY_VERSION[version]
    return [guard for guard, types in guarded.items() if type_name in types]


SAMPLES: dict[str, tuple[Message, ...]] = {
    name: tuple(plain(name, **changes) for changes in combinations(_guards_of(name), "message"))
    for name in TYPE_NAMES
}
# (type name, version) -> the session contexts (attributes for make_session) the guards of
# that version's rows for the type need; [{}] when they read nothing of the session
CONTEXTS: dict[tuple[str, int], tuple[dict[str, Any], ...]] = {
    (name, v): tuple(combinations(_guards_of(name, v), "session")) for name in TYPE_NAMES for v in SUPPORTED_VERSIONS
}


def all_samples(version: int | None = None) -> list[Message]:
    """Every sample; given ``version``, of the types that version has (a version-1 frame has
    no DELIVER_ACK)."""
    return [
        m for name in TYPE_NAMES for m in SAMPLES[name]
        if version is None or MESSAGES_BY_NAME[name].in_version(version)
    ]


_SPECS = {role: {s.name: s for s in STATES[role]} for role in ROLES}
_PEER = {"client": "server", "server": "client"}
# states a MSG is outstanding in: the ones a row counting a MSG enters (R7.2)
_OWING = {
    role: frozenset(t["dest"] for t in TRANSITIONS[role] if "count_msg" in t["after"] and t["dest"]) for role in ROLES
}


def make_session(role: str, state: str, version: int = 1, **attrs: Any) -> Session:
    """A session of ``role`` forced into ``state``, speaking OFFER's encoding (a client sent OFFER,
    a server received it). After the handshake it speaks ``version``, with the windows the spec's
    limits announce (version 2) and one MSG outstanding where a MSG is owed; ``attrs`` (snapshot
    fields: ``outstanding``, ``unacknowledged`` ...) override. Built through the public
    snapshot API, so the session is what ``restore`` makes of such a state."""
    spec = _SPECS[role][state]
    handshake = spec.phase == "handshake"
    fields: dict[str, Any] = {
        "state": state,
        "encoding": OFFER.encoding,
        "stopped": False,
        "version": None if handshake else version,
        "user": None,
        "failed_logins": 0,
        "offered_versions": () if spec.initial else tuple(OFFER.versions),
        "outstanding": 1 if state in _OWING[role] else 0,
    }
    if not handshake and version >= 2:
        fields.update(msg_window=LIMITS.msg_window, deliver_window=LIMITS.deliver_window)
    fields.update(attrs)
    fields["unacknowledged"] = tuple(fields.get("unacknowledged", ()))
    cls = ClientSession if role == "client" else ServerSession
    return cls.restore(SessionSnapshot(**fields))


def frame_version(message: Message, session: Session, *, sending: bool = False) -> int:
    """The version of the frame carrying ``message`` from ``session`` (``sending``) or to it: a
    server's HELLO_OK travels in the version it chooses, every other frame in the session's
    version (version 1 before HELLO_OK, R5.2)."""
    sender = session.role if sending else _PEER[session.role]
    if message.NAME == "HELLO_OK" and sender in message.SPEC.senders:
        return int(message.version)
    return session.version or 1


def accepted_versions(session: Session) -> frozenset[int]:
    """The frame versions ``session`` reads (R2.2, R5.2): its version once HELLO_OK chose one;
    before that version 1 (HELLO, an ERROR answering it) and the versions offered in HELLO that
    the spec has (HELLO_OK)."""
    if session.version is not None:
        return frozenset({session.version})
    return frozenset({1, *(v for v in session.offered_versions if v in SUPPORTED_VERSIONS)})


def frame_for(message: Message, session: Session) -> bytes:
    """``message`` as ``session``'s peer sends it, in :func:`frame_version`. When that version
    has no codec for it (DELIVER_ACK in version 1, a HELLO_OK choosing a version the spec
    lacks) it is built in the newest version and relabelled: the frame is intact, and only its
    type (R2.3) or its version (R2.2) is unknown."""
    version = frame_version(message, session)
    if version in SUPPORTED_VERSIONS and message.SPEC.in_version(version):
        return encode(message, session.encoding, version)
    return relabel(encode(message, session.encoding, NEWEST), version)


def relabel(frame: bytes, version: int) -> bytes:
    """``frame`` with its header's version byte set to ``version`` and its checksum fixed."""
    at = HEADER.subcons[0].sizeof()  # the version byte follows the magic
    body = frame[:at] + bytes((version,)) + frame[at + 1 : -4]
    return body + zlib.crc32(body).to_bytes(4, "big")


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
    if isinstance(con, Code):  # the members of the layout's version
        return st.sampled_from(list(con.members))
    if isinstance(con, Flags):
        return st.sampled_from([con.flags(0), *(m for m in con.flags if int(m) & con.mask)])
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


def strategy(type_name: str, version: int = 1, /, **fixed: Any) -> st.SearchStrategy[Message]:
    """Valid instances of ``type_name`` in protocol ``version`` (fields it lacks stay 0 unless
    ``fixed``); ``fixed`` fields are values or strategies (HELLO_OK's ``version`` field among
    them: the protocol version is positional only). A server's HELLO_OK is sent before its
    session has a version, so the windows of the version it chooses come in ``fixed``."""
    spec = MESSAGES_BY_NAME[type_name]
    carried = {sub.name for sub in spec.layout_for(max(version, spec.since)).subcons}
    fields = {}
    for sub in spec.layout_for(max(version, spec.since)).subcons:
        if sub.name in fixed:
            value = fixed[sub.name]
            fields[sub.name] = value if isinstance(value, st.SearchStrategy) else st.just(value)
        else:
            fields[sub.name] = _strategy(sub)
    for name in set(fixed) - carried:
        value = fixed[name]
        fields[name] = value if isinstance(value, st.SearchStrategy) else st.just(value)
    return st.builds(MESSAGE_CLASSES[type_name], **fields)
