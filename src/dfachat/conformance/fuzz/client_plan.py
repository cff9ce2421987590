"""Client mode: what the fuzzer, playing the server, will do in one session -- a :class:`Plan`.

A plan is drawn whole by Hypothesis before the session starts, so that a
failing session can be shrunk and saved as a case file: the handshake (the
limits HELLO_OK announces, failed logins, the online list and its page size,
stored messages), the scripted input lines the client under test is fed on
standard input, the frames pushed between them (presence bursts, DELIVERs in
the session's encoding, PINGs), how each MSG and LIST is answered, how bytes
are written (whole, packed, split, slow), and how the session ends: the
input ends (the client should QUIT), a server BYE or fatal ERROR, or an
*attack* -- a malformed or unexpected frame the client must not survive
(R11.3).

Every value is derived from :mod:`dfachat.spec`: names match the spec's
patterns, limits are the spec's or lower (R4.11 lets a server announce lower
ones), message layouts are the codec's. Nothing here decides legality: the
player sends through a :class:`~dfachat.fsm.ServerSession`, and the judge
asks a :class:`~dfachat.fsm.ClientSession`.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from dfachat.codec import encode
from dfachat.codec.messages import MESSAGE_CLASSES, MSG, Message  # type: ignore[attr-defined]
from dfachat.conformance.checker.report import message_from_json, message_json
from dfachat.conformance.fuzz.values import JUDGED_VERSIONS
from dfachat.conformance.strategies import extreme_message
from dfachat.fsm import TABLES_BY_VERSION
from dfachat.spec import (
    ENCODINGS,
    ERROR_INFO,
    LIMITS,
    MESSAGES,
    MESSAGES_BY_NAME,
    REPLACEMENT,
    ErrorCode,
    LeftReason,
    MessageSpec,
    Outcome,
)
from dfachat.spec.codes import since
from dfachat.spec.types import Ident, unwrap

__all__ = [
    "ANNOUNCED_LIMITS",
    "ATTACKS",
    "Attack",
    "Ending",
    "Handshake",
    "Plan",
    "Push",
    "Reply",
    "Step",
    "encodable",
    "largest_msg_frame",
    "plans",
]


# The protocol version a plan is drawn for: the newest the fuzzer judges (HELLO_OK chooses among
# those only), so every enumeration member, flag and type a plan sends exists in it.
VERSION = max(JUDGED_VERSIONS)


def _pattern(message: str, field_name: str) -> str:
    """The regular expression the spec gives a NAME or IDENT field."""
    for sub in MESSAGES_BY_NAME[message].layout.subcons:
        if sub.name == field_name:
            con = unwrap(sub)
            con = getattr(con, "item", con)  # a list of names: its item
            con = unwrap(con)
            if isinstance(con, Ident):
                return con.pattern
    raise KeyError(f"{message}.{field_name} is not an identifier field")


NAME_PATTERN = _pattern("JOINED", "name")
SOFTWARE_PATTERN = _pattern("HELLO_OK", "software")
REASON_PATTERN = _pattern("ERROR", "reason")
_NAME_RE = re.compile(NAME_PATTERN)

# HELLO_OK's fields that announce a limit of the same name (section 4): the server may lower them.
ANNOUNCED_LIMITS: tuple[str, ...] = tuple(
    f for f in MESSAGE_CLASSES["HELLO_OK"].FIELDS if hasattr(LIMITS, f)
)

# Characters worth meeting: BOM (R3.3), NUL, DEL, C1, Latin-1's top, the euro sign (cp1252 0x80),
# the end of the BMP, astral (surrogate pairs in utf-16), the last code point.
INTERESTING = "\ufeff\x00\x7f\x85\xa0\xff\u20ac\u0100\uffff\U0001f600\U0010ffff\u00e9"


def encodable(text: str, encoding: str) -> bool:
    try:
        text.encode(ENCODINGS[encoding].codec)
    except UnicodeEncodeError:
        return False
    return True


def lossy_copy(text: str, encoding: str) -> tuple[str, bool]:
    """``text`` as a server delivers it in ``encoding``: unrepresentable characters replaced (R3.5)."""
    out = "".join(c if encodable(c, encoding) else REPLACEMENT for c in text)
    return out, out != text


def largest_msg_frame(encoding: str, max_text: int, max_recipients: int) -> int:
    """The largest MSG frame a client keeping within ``max_text`` and ``max_recipients`` can send.

    Measured with the codec on the widest values, so a server announcing at least this
    ``max_frame`` never makes a conforming client's message too large.
    """
    widest = max(("\U0010ffff", "\uffff", "\xff", "\x7f"), key=lambda c: (encodable(c, encoding), len(c.encode("utf-32-be"))))
    width = max(len(widest.encode(ENCODINGS[encoding].codec)), 1)
    longest_name = "a" * LIMITS.max_name
    names = tuple(f"{longest_name[: LIMITS.max_name - 3]}{i:03d}" for i in range(max_recipients))
    sample = MSG(msg_id=0, recipients=names, text="a")
    return len(encode(sample, encoding, VERSION)) + width * max_text


# --- the plan --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Push:
    """Frames the server sends unasked (R8.4), in one burst."""

    frames: tuple[Message, ...]


@dataclass(frozen=True)
class Reply:
    """How the server answers one MSG or LIST: pushes first, a delay, then the answer."""

    before: tuple[Message, ...] = ()
    delay_ms: int = 0
    outcomes: tuple[int, ...] = (int(Outcome.DELIVERED),)  # cycled over the named recipients
    broadcast_delivered: int = 1
    page_size: int = LIMITS.max_names_per_frame  # names per USERS frame


@dataclass(frozen=True)
class Step:
    """One step after login: a scripted input line, a push, a PING, or a pause."""

    kind: str  # "line", "push", "ping", "pause"
    line: str = ""
    # What the line asks the client to send, in the terminal client's syntax: "MSG" with these
    # recipients and text, or "LIST" (R3.2, R7.1); "" when nothing is expected.
    expects: str = ""
    to: tuple[str, ...] = ()
    text: str = ""
    push: Push | None = None
    nonce: int = 0
    pause_ms: int = 0


@dataclass(frozen=True)
class Attack:
    """A frame the client must not survive: malformed (section 2-4) or unexpected (R12.1)."""

    kind: str  # one of ATTACKS
    message: Message | None = None  # the frame it starts from (or the unexpected message itself)
    value: int = 0  # a kind-specific number (a bad byte, a type code ...)


@dataclass(frozen=True)
class Ending:
    """How the session ends: ``input-end`` (the client should QUIT), ``bye``, ``fatal``, ``attack``, ``hangup``.

    ``at`` is where: ``hello`` (instead of HELLO_OK), ``login`` (instead of the login's answer),
    ``reply`` (instead of the answer to one more scripted line) or ``idle`` (after the steps).
    """

    kind: str
    at: str = "idle"
    code: int = int(ErrorCode.INTERNAL_ERROR)
    attack: Attack | None = None
    line: str = ""  # the scripted line whose MSG or LIST the ending answers, at "reply"


@dataclass(frozen=True)
class Handshake:
    announced: tuple[tuple[str, int], ...]  # HELLO_OK limits, (name, value)
    software: str
    spelling: str  # "same", "upper", "lower": the registered spelling AUTH_OK reports (R4.1)
    failures: int  # AUTH_FAILED answers before AUTH_OK (R6.3)
    online: tuple[str, ...]  # others online
    crowd: int  # plus this many generated names (large lists, R4.9)
    page_size: int  # names per AUTH_OK/USERS frame
    stored: tuple[Message, ...]  # DELIVERs (STORED) right after AUTH_OK (R7.7)
    after_login: tuple[Message, ...] = ()  # pushes packed with AUTH_OK
    auth_delay_ms: int = 0  # checking a password takes time; the client must wait (R6.5)


@dataclass(frozen=True)
class Plan:
    encoding: str
    user: str
    password: str
    handshake: Handshake
    steps: tuple[Step, ...]
    replies: tuple[Reply, ...]
    ending: Ending
    write_mode: str  # "whole", "packed", "split", "slow"
    chunk_seed: int = 0
    notes: tuple[str, ...] = field(default=())

    @property
    def limits(self) -> dict[str, int]:
        return dict(self.handshake.announced)

    def to_json(self) -> dict[str, Any]:
        return _to_json(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        return _from_json(cls, data)

    def key(self) -> str:
        import json

        return json.dumps(self.to_json(), sort_keys=True, ensure_ascii=True)


def _to_json(value: Any) -> Any:
    if isinstance(value, Message):
        return {"$message": message_json(value)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [_to_json(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    return value


_NESTED = {"handshake": Handshake, "steps": Step, "replies": Reply, "ending": Ending, "push": Push, "attack": Attack}


def _from_json(cls: type, data: dict[str, Any]) -> Any:
    def value(name: str, raw: Any) -> Any:
        if raw is None:
            return None
        if isinstance(raw, dict) and "$message" in raw:
            return message_from_json(raw["$message"])
        if isinstance(raw, list):
            return tuple(value(name, item) for item in raw)
        if name in _NESTED and isinstance(raw, dict):
            return _from_json(_NESTED[name], raw)
        return raw

    kwargs = {f.name: value(f.name, data[f.name]) for f in dataclasses.fields(cls) if f.name in data}
    if cls is Handshake:
        kwargs["announced"] = tuple(tuple(pair) for pair in kwargs["announced"])
    return cls(**kwargs)


# --- strategies ------------------------------------------------------------------------------

names = st.from_regex(NAME_PATTERN, fullmatch=True)


def _unique_names(min_size: int, max_size: int) -> st.SearchStrategy[tuple[str, ...]]:
    return st.lists(names, min_size=min_size, max_size=max_size, unique_by=str.casefold).map(tuple)


@functools.lru_cache(maxsize=256)
def _alphabet(encoding: str, *, for_line: bool) -> st.SearchStrategy[str]:
    """Characters of ``encoding``; for a scripted line, none that ends a line or starts a command."""
    banned = "\n\r" if for_line else ""
    base = st.characters(codec=ENCODINGS[encoding].codec, exclude_characters=banned, exclude_categories=("Cs",))
    picks = [c for c in INTERESTING if encodable(c, encoding) and c not in banned]
    return st.one_of(base, st.sampled_from(picks)) if picks else base


@functools.lru_cache(maxsize=256)
def _texts(encoding: str, max_text: int, *, for_line: bool) -> st.SearchStrategy[str]:
    chars = _alphabet(encoding, for_line=for_line)
    short = st.text(chars, min_size=1 if for_line else 0, max_size=min(24, max_text))
    near_limit = st.integers(max(max_text - 1, 1), max_text).flatmap(
        lambda n: st.text(chars, min_size=n, max_size=n)
    )
    texts = st.one_of(short, short, short, near_limit) if max_text > 24 else short
    if for_line:
        # The terminal client's line syntax: blank lines are skipped, '/' starts a command.
        texts = texts.filter(lambda t: t.strip() and not t.startswith("/"))
    return texts


def _deliver(encoding: str, max_text: int, *, stored: bool = False) -> st.SearchStrategy[Message]:
    return _delivers(encoding, max_text, stored)


@functools.lru_cache(maxsize=256)
def _delivers(encoding: str, max_text: int, stored: bool) -> st.SearchStrategy[Message]:
    return _deliver_draw(encoding, max_text, stored=stored)


@st.composite
def _deliver_draw(draw: st.DrawFn, encoding: str, max_text: int, *, stored: bool = False) -> Message:
    from dfachat.codec.messages import DELIVER  # type: ignore[attr-defined]
    from dfachat.spec import DeliverFlags

    raw = draw(st.text(st.one_of(st.characters(exclude_categories=("Cs",)), st.sampled_from(INTERESTING)), max_size=min(24, max_text)))
    text, lossy = lossy_copy(raw, encoding)
    flags = DeliverFlags(0)
    if draw(st.booleans()):
        flags |= DeliverFlags.DIRECTED
    if lossy or draw(st.integers(0, 7)) == 0:
        flags |= DeliverFlags.LOSSY
    if stored:
        flags |= DeliverFlags.STORED
    return DELIVER(
        server_msg_id=draw(st.integers(1, 2**64 - 1)),
        # A server's clock: any u64 the layout allows (R7.5 promises no range), mostly near now.
        timestamp_ms=draw(st.integers(0, 2**64 - 1) | st.integers(1_600_000_000_000, 2_000_000_000_000)),
        flags=flags,
        sender=draw(names),
        text=text,
    )


@functools.lru_cache(maxsize=256)
def _push_frame(encoding: str, max_text: int) -> st.SearchStrategy[Message]:
    from dfachat.codec.messages import ERROR, JOINED, LEFT, PING, PONG  # type: ignore[attr-defined]
    from dfachat.spec import ErrorFlags

    # A non-fatal ERROR's ``regarding`` must not name MSG or LIST: those end a wait (R7.9, R8.3),
    # and a push may cross a request in flight.
    regarding = st.sampled_from([0, *(m.code for m in MESSAGES_BY_NAME.values()
                                      if m.sent_by_client and m.in_version(VERSION) and m.name not in ("MSG", "LIST"))])
    recoverable = [code for code, info in ERROR_INFO.items()
                   if not info.always_fatal and info.sent and since(code) <= VERSION]
    error = st.builds(
        lambda code, reg, reason: ERROR(code=code, flags=ErrorFlags(0), regarding=reg, rule=ERROR_INFO[code].rule, reason=reason),
        st.sampled_from(recoverable), regarding, st.from_regex(REASON_PATTERN, fullmatch=True).map(lambda r: r[:40]),
    )
    return st.one_of(
        st.builds(lambda n: JOINED(name=n), names),
        st.builds(lambda r, n: LEFT(reason=r, name=n), st.sampled_from(list(LeftReason)), names),
        _deliver(encoding, max_text),
        st.builds(lambda n: PING(nonce=n), st.integers(0, 2**32 - 1)),
        st.builds(lambda n: PONG(nonce=n), st.integers(0, 2**32 - 1)),
        error,
    )


@functools.lru_cache(maxsize=256)
def _burst(encoding: str, max_text: int) -> st.SearchStrategy[tuple[Message, ...]]:
    from dfachat.codec.messages import JOINED, LEFT  # type: ignore[attr-defined]

    mixed = st.lists(_push_frame(encoding, max_text), min_size=1, max_size=6).map(tuple)
    # Presence bursts: many JOINED (then LEFT) at once.
    presence = st.tuples(st.integers(8, 200), names, st.sampled_from(list(LeftReason))).map(
        lambda t: tuple(JOINED(name=_crowd_name(t[1], i)) for i in range(t[0]))
        + tuple(LEFT(reason=t[2], name=_crowd_name(t[1], i)) for i in range(0, t[0], 3))
    )
    return st.one_of(mixed, mixed, presence)


def _crowd_name(prefix: str, index: int) -> str:
    """The index-th of many distinct valid names (R4.1): a prefix and a number."""
    suffix = str(index)
    name = prefix[: LIMITS.max_name - len(suffix)] + suffix
    assert _NAME_RE.fullmatch(name), name
    return name


def crowd(prefix: str, count: int) -> tuple[str, ...]:
    return tuple(_crowd_name(prefix, i) for i in range(count))


ATTACKS: tuple[str, ...] = (
    "bad-magic",  # R2.1
    "bad-version",  # R2.2
    "unknown-type",  # R2.3
    "too-large",  # R2.4
    "bad-crc",  # R2.5
    "short-payload",  # R2.6
    "trailing-bytes",  # R2.7
    "invalid-text",  # R3.4
    "bad-name",  # R4.1 / R4.10
    "reserved-flags",  # R4.7
    "bad-enum",  # R4.6
    "unexpected",  # R12.1 / R12.3 / a guard: a well-formed message the client's table has no row for
)


# Candidates for the "unexpected" attack: every type but those the client accepts in every state
# it can be in while the session is open (what the server may always send, like a fatal ERROR or
# BYE); the judge keeps only the real violations of the state the attack lands in.
_CLIENT = TABLES_BY_VERSION[VERSION]["client"]
_ALWAYS_ACCEPTED = frozenset.intersection(*(frozenset(_CLIENT.recv[s]) for s in _CLIENT.states if _CLIENT.recv[s]))
UNEXPECTED_CANDIDATES: tuple[MessageSpec, ...] = tuple(
    m for m in MESSAGES if m.in_version(VERSION) and m.code not in _ALWAYS_ACCEPTED)


@st.composite
def _attack(draw: st.DrawFn, encoding: str, kind: str) -> Attack:
    from dfachat.codec.messages import JOINED  # type: ignore[attr-defined]

    base = draw(st.one_of(_deliver(encoding, 24), st.builds(lambda n: JOINED(name=n), names)))
    if kind == "unexpected":
        # A well-formed message from the spec's layout, every field at its lower bound (a plan is
        # large already: no more entropy): a server message out of place, a client-only one
        # (R12.3), or (at "hello") a HELLO_OK that does not match the offer (R5.5).
        spec = draw(st.sampled_from(UNEXPECTED_CANDIDATES))
        base = extreme_message(spec, encoding, largest=False, version=VERSION)
    return Attack(kind=kind, message=base, value=draw(st.integers(0, 255)))


@st.composite
def plans(draw: st.DrawFn, *, encodings: tuple[str, ...] | None = None) -> Plan:
    """A whole session for the fuzzer to play (see the module docstring)."""
    from dfachat.codec.messages import PING  # type: ignore[attr-defined]

    encoding = draw(st.sampled_from(encodings or tuple(ENCODINGS)))
    # The ending first: later draws can be large (long texts, big lists), and Hypothesis draws
    # the end of a long example more simply than its start.
    kind = draw(st.sampled_from(("input-end", "input-end", "bye", "fatal", "fatal", "attack", "attack", "hangup")))
    # A server ends a session with a fatal ERROR of its own (time-out, capacity, replaced ...), not
    # with the codes that answer a client's framing (section 2) or handshake (section 5).
    fatal_codes = [code for code, info in ERROR_INFO.items() if info.always_fatal and info.sent
                   and since(code) <= VERSION and info.rule.split(".")[0] not in ("R2", "R5")]
    attack_kind = draw(st.sampled_from(ATTACKS)) if kind == "attack" else ""
    at = "idle"
    if kind in ("fatal", "attack", "bye"):
        # Mostly while the client waits for a reply: then anything it sends after the end is illegal.
        at = draw(st.sampled_from(("reply", "hello", "login", "reply", "reply", "idle")))
    lowered = draw(st.integers(0, 3)) == 0  # most sessions announce the spec's limits
    announced: dict[str, int] = {name: getattr(LIMITS, name) for name in ANNOUNCED_LIMITS if name != "max_frame"}
    if lowered:
        for name in announced:
            if draw(st.booleans()):
                announced[name] = draw(st.integers(1, announced[name]))
    floor = largest_msg_frame(encoding, announced["max_text"], announced["max_recipients"])
    announced = {"max_frame": LIMITS.max_frame, **announced}
    if lowered and floor < LIMITS.max_frame and draw(st.booleans()):
        announced["max_frame"] = draw(st.integers(floor, LIMITS.max_frame))
    announced = {name: announced[name] for name in ANNOUNCED_LIMITS}
    max_text = announced["max_text"]
    max_recipients = announced["max_recipients"]

    user = draw(names)
    password = draw(st.text(_alphabet(encoding, for_line=True).filter(lambda c: c != "\x00" and c.isprintable()), min_size=1, max_size=12))
    big = draw(st.integers(0, 5)) == 0
    handshake = Handshake(
        announced=tuple(announced.items()),
        software=draw(st.from_regex(SOFTWARE_PATTERN, fullmatch=True)),
        spelling=draw(st.sampled_from(("same", "same", "upper", "lower"))),
        failures=draw(st.integers(0, announced["login_attempts"] - 1)) if draw(st.integers(0, 6)) == 0 else 0,
        online=tuple(n for n in draw(_unique_names(0, 6)) if n.casefold() != user.casefold()),
        crowd=draw(st.integers(900, 2600)) if big else draw(st.integers(0, 40)),
        page_size=draw(st.sampled_from((LIMITS.max_names_per_frame, LIMITS.max_names_per_frame, 1, 7, 300))),
        auth_delay_ms=draw(st.sampled_from((40, 0, 150))),
        stored=tuple(draw(st.lists(_deliver(encoding, max_text, stored=True), max_size=3))),
        # A keep-alive PING often follows login (R9.2: a server SHOULD ping a quiet session).
        after_login=tuple(draw(st.lists(_push_frame(encoding, max_text), max_size=3)))
        + ((PING(nonce=draw(st.integers(0, 2**32 - 1))),) if draw(st.booleans()) else ()),
    )

    def line() -> st.SearchStrategy[Step]:
        say = _texts(encoding, max_text, for_line=True)
        broadcast = say.map(lambda text: Step("line", line=text, expects="MSG", text=text))
        # After "/to NAMES" the terminal client skips blanks, so a directed text starts with none.
        directed = st.tuples(_unique_names(1, min(4, max_recipients)), say.filter(lambda t: not t[0].isspace())).map(
            lambda t: Step("line", line=f"/to {','.join(t[0])} {t[1]}", expects="MSG", to=t[0], text=t[1]))
        return st.one_of(broadcast, broadcast, directed, st.just(Step("line", line="/who", expects="LIST")))

    step = st.one_of(
        line(),
        line(),
        _burst(encoding, max_text).map(lambda frames: Step("push", push=Push(frames))),
        st.integers(0, 2**32 - 1).map(lambda n: Step("ping", nonce=n)),
        st.integers(1, 150).map(lambda ms: Step("pause", pause_ms=ms)),
    )
    steps = tuple(draw(st.lists(step, max_size=8)))
    reply = st.builds(
        Reply,
        before=st.lists(_push_frame(encoding, max_text).filter(lambda m: m.NAME != "ERROR"), max_size=3).map(tuple),
        delay_ms=st.sampled_from((0, 0, 0, 5, 60, 250)),
        outcomes=st.lists(st.sampled_from([int(o) for o in Outcome if since(o) <= VERSION]), min_size=1,
                          max_size=4).map(tuple),
        broadcast_delivered=st.integers(0, 5),
        page_size=st.sampled_from((LIMITS.max_names_per_frame, 1, 2, 5)),
    )
    replies = tuple(draw(st.lists(reply, min_size=1, max_size=4)))

    ending = Ending(
        kind=kind,
        at=at,
        code=int(draw(st.sampled_from(fatal_codes))),
        attack=draw(_attack(encoding, attack_kind)) if kind == "attack" else None,
        line=draw(line()).line if at == "reply" else "",
    )
    return Plan(
        encoding=encoding,
        user=user,
        password=password,
        handshake=handshake,
        steps=steps,
        replies=replies,
        ending=ending,
        write_mode=draw(st.sampled_from(("whole", "whole", "packed", "split", "slow"))),
        chunk_seed=draw(st.integers(0, 2**16)),
    )
