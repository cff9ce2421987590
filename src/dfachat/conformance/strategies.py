"""Hypothesis strategies for dfachat messages, derived from the spec's layouts.

Nothing here is written per message type: :func:`field_strategy` walks a
field's construct (``Ident``, ``Text``, ``Code``, ``Flags``, ``List``, plain
big-endian ints) and reads its bounds, so a new message or a changed limit
in :mod:`dfachat.spec` is generated without touching this module. The
conformance fuzzer draws its messages from here, and so do the codec and
engine tests.

* :func:`message_strategy` -- valid messages of one :class:`~dfachat.spec.MessageSpec`;
* :func:`any_message` -- valid messages of every type;
* :data:`encodings` -- the wire names of the session encodings;
* :data:`versions` -- the protocol versions the spec defines;
* :func:`text_strategy` -- values of one TEXT field, optionally under a
  negotiated limit;
* :func:`extreme_message` -- one deterministic message with every field at
  its lower or upper bound (lists of 1024 names are too big to draw);
* :func:`alphabet` -- the characters an encoding can carry.

Sizes stay small on most draws to keep runs fast; TEXT fields and short
lists are sometimes drawn at (or one below) their limits.

Messages are drawn for one protocol version (``version``, 1 by default, like
:func:`dfachat.codec.encode`'s): from :meth:`MessageSpec.layout_for`, so a
version-1 message carries no enumeration member or flag a later version added
(R4.6, R4.7), and a field a later version added keeps its class default, 0,
which is what a frame of that version decodes it as. A type the version lacks
(DELIVER_ACK in version 1) is a ``ValueError``, not a message.
"""

from __future__ import annotations

import functools
import operator
import re._parser as sre_parse
from collections.abc import Callable
from typing import Any

from construct import FormatField, Struct
from hypothesis import strategies as st

from dfachat.codec.messages import MESSAGE_CLASSES, RECORD_CLASSES, Message
from dfachat.spec import ENCODINGS, MESSAGES, SUPPORTED_VERSIONS, MessageSpec
from dfachat.spec.types import Code, Flags, Ident, List, Text, unwrap

__all__ = [
    "ENCODING_NAMES",
    "VERSIONS",
    "alphabet",
    "any_message",
    "chars",
    "codec_of",
    "encodings",
    "extreme_message",
    "extreme_value",
    "ident_at",
    "field_strategy",
    "fold_key",
    "int_bounds",
    "message_strategy",
    "messages_and_encodings",
    "text_strategy",
    "unencodable_char",
    "versions",
    "widest_char",
]

ENCODING_NAMES: tuple[str, ...] = tuple(ENCODINGS)
encodings = st.sampled_from(ENCODING_NAMES)
VERSIONS: tuple[int, ...] = tuple(SUPPORTED_VERSIONS)
versions = st.sampled_from(VERSIONS)

SMALL_TEXT = 24  # code points on an ordinary draw
SMALL_LIST = 6  # items on an ordinary draw
NEAR_LIMIT_LIST = 64  # lists this short are sometimes drawn full
# Characters worth meeting often: BOM (R3.3), NUL, the ends of the BMP and of
# Unicode, astral (surrogate pairs in utf-16), cp1252's 0x80 (EURO SIGN), Latin-1.
INTERESTING = "\ufeff\x00\x7f\x80\xff\u20ac\u0100\uffff\U0001f600\U0010ffff\u00e9"


def codec_of(encoding: str) -> str:
    """The Python codec of a session encoding's wire name (R3.1)."""
    return ENCODINGS[encoding].codec


def _encodes(ch: str, codec: str) -> bool:
    try:
        ch.encode(codec)
    except UnicodeEncodeError:
        return False
    return True


@functools.cache
def alphabet(encoding: str) -> tuple[str, ...] | None:
    """Every character ``encoding`` can carry, or None for a universal one (all scalar values)."""
    if ENCODINGS[encoding].universal:
        return None
    codec = codec_of(encoding)
    return tuple(chr(i) for i in range(0x10000) if _encodes(chr(i), codec))


def unencodable_char(encoding: str) -> str:
    """A character ``encoding`` cannot carry (a lone surrogate for the UTFs)."""
    codec = codec_of(encoding)
    for ch in "\u00e9\u20ac\u0100\ud800":
        if not _encodes(ch, codec):
            return ch
    raise AssertionError(f"{encoding} encodes everything")


def widest_char(encoding: str) -> str:
    """The character taking the most bytes in ``encoding`` (the largest text of N code points)."""
    carried = alphabet(encoding) or ("\U0010ffff",)
    codec = codec_of(encoding)
    return max(carried, key=lambda c: (len(c.encode(codec)), ord(c)))


# Strategies are immutable and Hypothesis validates each new one (for characters(), by walking
# Unicode's intervals: tens of milliseconds), so the fuzzer's hot draws reuse one per argument.
@functools.cache
def chars(encoding: str) -> st.SearchStrategy[str]:
    """Characters ``encoding`` carries, the ones worth meeting (:data:`INTERESTING`) often."""
    carried = alphabet(encoding)
    interesting = [c for c in INTERESTING if _encodes(c, codec_of(encoding))]
    base = st.characters(exclude_categories=("Cs",)) if carried is None else st.sampled_from(carried)
    return st.one_of(base, st.sampled_from(interesting))


def int_bounds(con: FormatField) -> tuple[int, int]:
    """The range of an unsigned big-endian integer field (R1.2)."""
    return 0, (1 << (8 * con.sizeof())) - 1


def fold_key(con: Any) -> Callable[[Any], Any]:
    """How a list's items are compared for uniqueness: case-folded for names."""
    return str.casefold if getattr(unwrap(con), "casefold", False) else (lambda x: x)


@functools.cache
def text_strategy(con: Text, encoding: str, max_chars: int | None = None) -> st.SearchStrategy[str]:
    """Values of a TEXT field in ``encoding``: mostly short, sometimes at the limit or one below.

    ``max_chars`` lowers the layout's limit (a peer's negotiated ``max_text``, R4.11).
    """
    lo, hi = con.min_chars, con.max_chars
    if max_chars is not None:
        hi = max(lo, min(hi, max_chars))
    alphabet_ = chars(encoding)

    @st.composite
    def text(draw: Any) -> str:
        if draw(st.integers(0, 7)):  # mostly short
            return draw(st.text(alphabet_, min_size=lo, max_size=min(hi, max(lo, SMALL_TEXT))))
        # sometimes at the limit or one below: a short seed repeated
        seed = draw(st.text(alphabet_, min_size=1, max_size=4))
        size = max(lo, hi - draw(st.integers(0, 1)))
        return (seed * size)[:size]

    return text()


def _list_strategy(con: List, encoding: str) -> st.SearchStrategy[tuple[Any, ...]]:
    item = field_strategy(con.item, encoding)
    lo, hi = con.min_items, con.max_items
    unique_by = fold_key(con.item) if con.unique else None

    def sized(min_size: int, max_size: int) -> st.SearchStrategy[list[Any]]:
        return st.lists(item, min_size=min_size, max_size=max_size, unique_by=unique_by)

    small = sized(lo, min(hi, max(lo, SMALL_LIST)))
    if hi <= NEAR_LIMIT_LIST:
        full = sized(max(lo, hi - 1), hi)
        strategy = st.one_of(small, small, small, full)
    else:
        strategy = small
    return strategy.map(tuple)


def field_strategy(sub: Any, encoding: str) -> st.SearchStrategy[Any]:
    """Valid values of one layout field (or list item) in ``encoding``.

    Enumerations and flags draw from the members ``sub`` defines: pass a field of
    ``spec.layout_for(version)`` for a version's values, of ``spec.layout`` for the newest.
    """
    con = unwrap(sub)
    if isinstance(con, Ident):
        return st.from_regex(con.regex.pattern.decode("ascii"), fullmatch=True)
    if isinstance(con, Text):
        return text_strategy(con, encoding)
    if isinstance(con, Code):
        return st.sampled_from(list(con.members))
    if isinstance(con, Flags):
        zero = con.flags(0)
        return st.sets(st.sampled_from(_flag_members(con))).map(
            lambda members: functools.reduce(operator.or_, members, zero)
        )
    if isinstance(con, List):
        return _list_strategy(con, encoding)
    if isinstance(con, Struct):  # a list's record
        cls = RECORD_CLASSES[sub.name]
        return st.builds(cls, **{s.name: field_strategy(s, encoding) for s in con.subcons})
    if isinstance(con, FormatField):
        lo, hi = int_bounds(con)
        return st.integers(lo, hi)
    raise TypeError(f"no strategy for {con!r}")


def _flag_members(con: Flags) -> list[Any]:
    """The flags ``con`` lets a frame set (its version's: ``mask`` leaves later ones out)."""
    return [member for member in con.flags if int(member) & con.mask]


def _layout(spec: MessageSpec, version: int) -> Any:
    """The layout a frame of ``version`` carries for ``spec``; a type the version lacks is an error."""
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(f"protocol version {version} is not one of {SUPPORTED_VERSIONS}")
    if not spec.in_version(version):
        raise ValueError(f"{spec.name} does not exist in protocol version {version} (since {spec.since})")
    return spec.layout_for(version)


@functools.cache
def message_strategy(spec: MessageSpec, encoding: str = "utf-8", version: int = 1) -> st.SearchStrategy[Message]:
    """Valid messages of ``spec``'s type whose TEXT fields ``encoding`` can carry, as a frame
    of ``version`` carries them (fields the version lacks stay 0)."""
    cls = MESSAGE_CLASSES[spec.name]
    return st.builds(cls, **{sub.name: field_strategy(sub, encoding) for sub in _layout(spec, version).subcons})


@functools.cache
def any_message(encoding: str = "utf-8", version: int = 1) -> st.SearchStrategy[Message]:
    """Valid messages of every type ``version`` defines."""
    return st.one_of([message_strategy(spec, encoding, version) for spec in MESSAGES if spec.in_version(version)])


def messages_and_encodings(version: int = 1) -> st.SearchStrategy[tuple[Message, str]]:
    """(message, encoding) pairs: a valid message of ``version`` for that encoding."""
    return encodings.flatmap(lambda enc: st.tuples(any_message(enc, version), st.just(enc)))


# --- deterministic extremes ---------------------------------------------------


def _class_chars(items: list[Any], fold: bool) -> list[str]:
    chars: list[str] = []
    for op, arg in items:
        if op == sre_parse.LITERAL:
            chars.append(chr(arg))
        elif op == sre_parse.RANGE:
            chars += [chr(c) for c in range(arg[0], arg[1] + 1)]
        else:
            raise TypeError(f"unsupported character class item {op}")
    if fold:  # keep one spelling per case-folded character, so distinct indexes stay distinct
        seen: set[str] = set()
        chars = [c for c in chars if not (c.casefold() in seen or seen.add(c.casefold()))]
    return chars


@functools.cache
def _ident_plan(pattern: str, fold: bool, longest: bool) -> tuple[tuple[str, ...], ...]:
    """The choices along the shortest or longest match of ``pattern``: one tuple of characters per position."""
    plan: list[tuple[str, ...]] = []

    def walk(parsed: Any) -> None:
        for op, arg in parsed:
            if op == sre_parse.LITERAL:
                plan.append((chr(arg),))
            elif op == sre_parse.IN:
                plan.append(tuple(_class_chars(arg, fold)))
            elif op == sre_parse.MAX_REPEAT:
                lo, hi, sub = arg
                for _ in range(hi if longest else lo):
                    walk(sub)
            elif op == sre_parse.SUBPATTERN:
                walk(arg[-1])
            else:
                raise TypeError(f"unsupported pattern element {op}")

    walk(sre_parse.parse(pattern))
    return tuple(plan)


def ident_at(con: Ident, index: int, *, longest: bool) -> str:
    """The ``index``-th identifier of the shortest or longest length ``con``'s pattern allows.

    Walks the pattern (literals, character classes, bounded repeats); different
    indexes give different identifiers (case-insensitively for names) as long
    as the pattern has room for them.
    """
    out: list[str] = []
    rest = index
    for chars in _ident_plan(con.pattern, con.casefold, longest):
        rest, digit = divmod(rest, len(chars))
        out.append(chars[digit])
    result = "".join(out)
    assert con.regex.fullmatch(result.encode("ascii")), result
    return result


def extreme_value(sub: Any, encoding: str, largest: bool, index: int = 0) -> Any:
    """A valid value of one field at its upper (or lower) bound; ``index`` varies list items."""
    con = unwrap(sub)
    if isinstance(con, Ident):
        return ident_at(con, index, longest=largest)
    if isinstance(con, Text):
        return widest_char(encoding) * (con.max_chars if largest else con.min_chars)
    if isinstance(con, Code):
        members = sorted(con.members)
        return members[-1] if largest else members[0]
    if isinstance(con, Flags):
        return con.flags(con.mask if largest else 0)
    if isinstance(con, List):
        count = con.max_items if largest else con.min_items
        return tuple(extreme_value(con.item, encoding, largest, i) for i in range(count))
    if isinstance(con, Struct):
        cls = RECORD_CLASSES[sub.name]
        return cls(**{s.name: extreme_value(s, encoding, largest, index) for s in con.subcons})
    if isinstance(con, FormatField):
        lo, hi = int_bounds(con)
        # a list of ints (HELLO's versions) must stay distinct
        return hi - index if largest else lo + index
    raise TypeError(f"no extreme value for {con!r}")


def extreme_message(spec: MessageSpec, encoding: str, *, largest: bool, version: int = 1) -> Message:
    """``spec``'s message with every field at its upper (or lower) bound, valid in ``encoding``
    and in ``version`` (its enumerations' and flags' bounds are the version's; fields it lacks stay 0)."""
    cls = MESSAGE_CLASSES[spec.name]
    return cls(**{sub.name: extreme_value(sub, encoding, largest) for sub in _layout(spec, version).subcons})
