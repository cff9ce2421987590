"""The protocol document, generated from the spec: ``dfachat spec --markdown``.

Nothing protocol-specific is written here. Every rule, layout, number, state
and transition in the document is read off the declarations of this package
(:data:`~dfachat.spec.rules.SECTIONS`, the layouts of
:data:`~dfachat.spec.messages.MESSAGES`, :data:`~dfachat.spec.limits.LIMITS`,
:data:`~dfachat.spec.codes.ERROR_INFO`, :data:`~dfachat.spec.machine.TRANSITIONS`
...); this module only decides how to lay them out. The example frames are
built by construct from the same layouts, so they are what the oracle codec
sends. The committed ``docs/PROTOCOL.md`` is this function's output, and a
test fails when the two differ.

The document covers every supported version. What a later version adds (a
rule's, message's or transition's ``since``, a field of ``MessageSpec.added``,
an enumeration member of :data:`~dfachat.spec.codes.SINCE`, and the limits,
guards and actions only those use) is marked *(version N)* where it is
specified, and :func:`version_delta` lists it again, as the "Differences"
section: both read the same declarations, so neither is written by hand.

:func:`protocol_summary` is the same material as one JSON-ready dict
(``dfachat spec --json``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import Any

from construct import (
    Bytes,
    Checksum,
    Const,
    Construct,
    FormatField,
    Int8ub,
    Int16ub,
    Int32ub,
    Int64ub,
    RawCopy,
    SizeofError,
    Struct,
)

from dfachat.spec.codes import ERROR_INFO, SINCE, ErrorCode, since
from dfachat.spec.encodings import ENCODINGS, REPLACEMENT
from dfachat.spec.limits import DEFAULT_PORT, LIMITS, MAGIC, PROTOCOL_VERSION, SUPPORTED_VERSIONS
from dfachat.spec.machine import (
    ACTIONS,
    CLOSED_TRIGGER,
    GUARDS,
    ROLES,
    STATES,
    TRANSITIONS,
    transitions_of,
)
from dfachat.spec.messages import (
    FRAME,
    FRAME_OVERHEAD,
    HEADER,
    MESSAGES,
    MESSAGES_BY_NAME,
    MessageSpec,
)
from dfachat.spec.rules import RULES, SECTIONS, Rule, rule_text
from dfachat.spec.types import Code, Flags, Ident, List, Text, unwrap

__all__ = [
    "VersionDelta",
    "example_frames",
    "example_values",
    "example_versions",
    "limit_since",
    "protocol_summary",
    "render_protocol_markdown",
    "since_label",
    "since_mark",
    "transition_rows",
    "version_delta",
]

_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_RULE_REF = re.compile(r"\bR\d+\.\d+\b")
_INTEGERS = (Int8ub, Int16ub, Int32ub, Int64ub)


# --- small helpers ------------------------------------------------------------


def _messages() -> list[MessageSpec]:
    return sorted(MESSAGES, key=lambda m: m.code)


def _senders(spec: MessageSpec) -> list[str]:
    return [role for role in ROLES if role in spec.senders]


def _fatal(code: ErrorCode) -> str:
    return "always" if ERROR_INFO[code].always_fatal else "before AUTH_OK"


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _rule_anchor(rule_id: str) -> str:
    return rule_id.lower().replace(".", "-")


def _rule_link(rule_id: str) -> str:
    return f"[{rule_id}](#{_rule_anchor(rule_id)})"


def _link_rules(text: str) -> str:
    return _RULE_REF.sub(lambda m: _rule_link(m.group(0)), text)


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: Iterable[str], rows: Iterable[Iterable[object]]) -> list[str]:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "."


def _bytes(count: int) -> str:
    return f"{count} byte{'' if count == 1 else 's'}"


def _hex(data: bytes) -> str:
    return " ".join(f"{b:02x}" for b in data)


def _int_name(con: Construct) -> str:
    """``u8`` ... ``u64`` for a big-endian unsigned FormatField."""
    return f"u{8 * con.sizeof()}"


def _sizeof(con: Construct) -> int | None:
    try:
        return int(con.sizeof())
    except SizeofError:
        return None


def _limit_value(limit: str | int) -> int:
    return limit if isinstance(limit, int) else int(getattr(LIMITS, limit))


def _limit_label(limit: str | int) -> str:
    return f"{limit}" if isinstance(limit, int) else f"{_limit_value(limit)} (`{limit}`)"


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())


def _and(items: list[str]) -> str:
    return ", ".join(items[:-1]) + f" and {items[-1]}" if len(items) > 1 else "".join(items)


# --- versions: what each one adds ------------------------------------------------------

_FIRST_VERSION = SUPPORTED_VERSIONS[0]


def since_mark(version: int) -> str:
    """The document's mark for something ``version`` added: ``*(version 2)*``; empty for what
    the first version already has (unmarked means: in every version)."""
    return f"*(version {version})*" if version > _FIRST_VERSION else ""


def _marked(text: str, version: int, base: int = _FIRST_VERSION) -> str:
    """``text`` marked with ``version`` when that is later than ``base``, the version of what
    it belongs to (a field of a message version 2 added needs no mark of its own)."""
    mark = since_mark(version) if version > base else ""
    return f"{text} {mark}" if mark else text


def limit_since(name: str) -> int:
    """The first version with a rule or field that uses limit ``name``: the rules that state
    it, the fields that announce it (named after it) and the fields it bounds."""
    users = [r.since for r in RULES.values() if name in _PLACEHOLDER.findall(r.text)]
    for spec in MESSAGES:
        for sub in spec.layout.subcons:
            con = unwrap(sub)
            bounded = isinstance(con, (Text, List)) and con.max_limit == name
            if sub.name == name or bounded:
                users.append(spec.field_since(sub.name))
    return min(users, default=_FIRST_VERSION)


def _row_since(role: str) -> dict[tuple[str, str], int]:
    """(state, trigger) -> the first version with a row for that trigger in that state."""
    found: dict[tuple[str, str], int] = {}
    for t in TRANSITIONS[role]:
        for state in _sources(t):
            key = (state, t["trigger"])
            found[key] = min(found.get(key, t["since"]), t["since"])
    return found


def _uses_since(kind: str, name: str) -> int:
    """The first version with a row using guard or action ``name`` (``kind``: conditions and
    unless, or after); the first version when no row uses it."""
    keys = ("conditions", "unless") if kind == "guard" else ("after",)
    versions = [
        t["since"] for rows in TRANSITIONS.values() for t in rows if any(name in t[k] for k in keys)
    ]
    return min(versions, default=_FIRST_VERSION)


@dataclass(frozen=True, slots=True)
class VersionDelta:
    """Everything ``version`` adds to the version before it, read off the declarations."""

    version: int
    previous: int
    messages: tuple[MessageSpec, ...]
    fields: tuple[
        tuple[MessageSpec, str], ...
    ]  # (message, field) added to a message that was there
    members: tuple[IntEnum | IntFlag, ...]
    limits: tuple[str, ...]
    rules: tuple[Rule, ...]
    rows: tuple[tuple[str, str, dict[str, Any]], ...]  # (role, source state, transition)
    guards: tuple[str, ...]
    actions: tuple[str, ...]


def version_delta(version: int) -> VersionDelta:
    """What ``version`` adds to the supported version before it (a later version only adds)."""
    index = SUPPORTED_VERSIONS.index(version)
    if index == 0:
        raise ValueError(f"version {version} is the first: it has nothing to differ from")
    members = [getattr(enum, name) for (enum, name), v in SINCE.items() if v == version]
    return VersionDelta(
        version=version,
        previous=SUPPORTED_VERSIONS[index - 1],
        messages=tuple(m for m in _messages() if m.since == version),
        fields=tuple(
            (m, name)
            for m in _messages()
            for name, v in m.added
            if v == version and m.since < version
        ),
        members=tuple(members),
        limits=tuple(name for name in LIMITS.as_dict() if limit_since(name) == version),
        rules=tuple(r for r in RULES.values() if r.since == version),
        rows=tuple(
            (role, source, t)
            for role in ROLES
            for source, t in transition_rows(role, version)
            if t["since"] == version
        ),
        guards=tuple(g for g in GUARDS if _uses_since("guard", g) == version),
        actions=tuple(a for a in ACTIONS if _uses_since("action", a) == version),
    )


# --- the field walk -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Field:
    """One row of a payload table."""

    path: str
    offset: str
    size: str
    wire: str
    meaning: str
    con: Construct


def _values_text(enum: type[IntEnum] | type[IntFlag]) -> str:
    if issubclass(enum, IntFlag):
        return ", ".join(_marked(f"0x{int(m):02X} {m.name}", since(m)) for m in enum)
    return ", ".join(_marked(f"{int(m)} {m.name}", since(m)) for m in enum)


def _enum_anchor(enum: type) -> str:
    return _slug(_ERROR_HEADING) if enum is ErrorCode else _slug(enum.__name__)


def _wire_type(con: Construct) -> str:
    """The wire type of a field, with its bounds and rule."""
    if isinstance(con, Code):
        link = f"[{con.enum.__name__}](#{_enum_anchor(con.enum)})"
        return f"{_int_name(con.subcon)} ENUM {link} ({_rule_link(con.rule)})"
    if isinstance(con, Flags):
        return (
            f"{_int_name(con.subcon)} FLAGS [{con.flags.__name__}](#{_enum_anchor(con.flags)}); "
            f"reserved bits zero ({_rule_link(con.rule)})"
        )
    if isinstance(con, Ident):
        case = ", compared case-insensitively" if con.casefold else ""
        return (
            f"{con.kind}: {_int_name(con.length_field)} length n, then n ASCII bytes "
            f"matching `{con.pattern}`{case} ({_rule_link(con.rule)})"
        )
    if isinstance(con, Text):
        return (
            f"TEXT: {_int_name(con.subcon.lengthfield)} byte length n, "
            "then n bytes in the session's "
            f"encoding; {con.min_chars} to {_limit_label(con.max_limit)} code points once decoded "
            f"({_rule_link(con.rule)})"
        )
    if isinstance(con, List):
        item = unwrap(con.item)
        if con.record is not None:
            what = f"{con.item.name} records"
        elif isinstance(item, Ident):
            what = f"{item.kind} items"
        else:
            what = f"{_int_name(item)} items" if isinstance(item, FormatField) else "items"
        distinct = ""
        if con.unique:
            distinct = ", no item twice"
            if getattr(item, "casefold", False):
                distinct += " (case-insensitively)"
        return (
            f"LIST: {_int_name(con.count_field)} count n, then n {what}; {con.min_items} to "
            f"{_limit_label(con.max_limit)} items{distinct} ({_rule_link(con.rule)})"
        )
    if isinstance(con, FormatField):
        return _int_name(con)
    raise TypeError(f"the document cannot describe {con!r}")


def _size(con: Construct) -> str:
    fixed = _sizeof(con)
    if fixed is not None:
        return str(fixed)
    if isinstance(con, Ident):
        return f"{_sizeof(con.length_field)} + n"
    if isinstance(con, Text):
        return f"{_sizeof(con.subcon.lengthfield)} + n"
    if isinstance(con, List):
        count = _sizeof(con.count_field)
        item = _sizeof(unwrap(con.item))
        return f"{count} + n × {item}" if item is not None else f"{count} + Σ items"
    raise TypeError(f"the document cannot size {con!r}")


def _meaning(sub: Construct, con: Construct) -> str:
    doc = _one_line(sub.docs)
    if isinstance(con, Code) and con.enum is ErrorCode:
        return f"one of the [{_ERROR_HEADING.lower()}](#{_slug(_ERROR_HEADING)})"
    if isinstance(con, Code):
        values = _values_text(con.enum)
        return (
            f"{doc}: {values}"
            if doc and doc != con.enum.__name__
            else f"{con.enum.__name__}: {values}"
        )
    if isinstance(con, Flags):
        return f"{doc} ({_values_text(con.flags)})"
    return doc


def _walk(layout: Struct, prefix: str = "", base: str | None = None) -> Iterator[_Field]:
    """The rows of a layout: offsets stay numbers while every earlier field is fixed."""
    anchor: str | None = None
    delta = 0
    for sub in layout.subcons:
        con = unwrap(sub)
        path = f"{prefix}{sub.name}"
        if anchor is not None:
            offset = f"after `{anchor}`" + (f" + {delta}" if delta else "")
        elif base is not None:
            offset = base + (f" + {delta}" if delta else "")
        else:
            offset = str(delta)
        yield _Field(path, offset, _size(con), _wire_type(con), _meaning(sub, con), con)
        if isinstance(con, List):
            item = unwrap(con.item)
            if con.record is not None:
                yield from _walk(con.record, f"{path}[i].", base="item")
            else:
                yield _Field(f"{path}[i]", "item", _size(item), _wire_type(item), "one item", item)
        fixed = _sizeof(con)
        if fixed is None:
            anchor, delta = path, 0
        else:
            delta += fixed


# --- example frames -------------------------------------------------------------

_SAMPLE_IDENTS = {  # example values only: what a reader sees in the example frames
    "user name": "alice",
    "encoding name": next(iter(ENCODINGS)),
    "software name": "dfachat",
}
_SAMPLE_TEXT = "hi"
_SAMPLE_LIST_NAME = "bob"


def _sample(
    name: str, sub: Construct, values: dict[str, Any], version: int, in_list: bool = False
) -> Any:
    con = unwrap(sub)
    codes = [v for v in values.values() if isinstance(v, ErrorCode)]
    if isinstance(con, Code):
        return next(iter(con.enum))
    if isinstance(con, Flags):
        return next(iter(con.flags))
    if isinstance(con, FormatField):
        # a field named after a limit announces it; a `version` field names the frame's own
        return version if name == "version" else int(getattr(LIMITS, name, 1))
    if isinstance(con, Ident):
        if con.description == "user name" and in_list:
            candidate = _SAMPLE_LIST_NAME
        elif con.description == "rule id" and codes:
            candidate = ERROR_INFO[codes[0]].rule
        elif con.kind == "REASON" and codes:
            candidate = ERROR_INFO[codes[0]].meaning
        else:
            candidate = _SAMPLE_IDENTS.get(con.description, next(iter(RULES)))
        if con.regex.fullmatch(candidate.encode("ascii")) is None:
            raise TypeError(f"no example value for a {con.description} ({con.pattern})")
        return candidate
    if isinstance(con, Text):
        return _SAMPLE_TEXT
    if isinstance(con, List):
        if name == "versions":  # what a client of this package offers (R5.1)
            return list(SUPPORTED_VERSIONS)[: max(con.max_items, 1)]
        count = max(con.min_items, 1)
        if con.record is not None:
            item = {
                s.name: _sample(s.name, s, {}, version, in_list=True) for s in con.record.subcons
            }
            return [item] * count
        return [_sample(name, con.item, {}, version, in_list=True)] * count
    raise TypeError(f"no example value for {con!r}")


def example_values(spec: MessageSpec, version: int | None = None) -> dict[str, Any]:
    """Simple valid field values for ``spec`` in a frame of ``version`` (default: the first
    version with the message), derived from its field types."""
    version = spec.since if version is None else version
    values: dict[str, Any] = {}
    for sub in spec.layout_for(version).subcons:
        values[sub.name] = _sample(sub.name, sub, values, version)
    return values


def _field_names(spec: MessageSpec, version: int) -> list[str]:
    return [sub.name for sub in spec.layout_for(version).subcons]


def example_versions(spec: MessageSpec) -> list[int]:
    """The versions ``spec`` gets an example frame in: the first version with the message,
    then each version whose frames carry other fields (the others differ only in header
    byte 2 and the checksum)."""
    versions: list[int] = []
    for v in SUPPORTED_VERSIONS:
        if spec.in_version(v) and (
            not versions or _field_names(spec, v) != _field_names(spec, versions[-1])
        ):
            versions.append(v)
    return versions


def example_frames(
    encoding: str = next(iter(ENCODINGS)),
) -> dict[tuple[str, int], tuple[dict[str, Any], bytes]]:
    """Per (message name, version) of :func:`example_versions`: example values and the frame
    construct builds from the spec's schemas for a frame of that version."""
    codec = ENCODINGS[encoding].codec
    frames: dict[tuple[str, int], tuple[dict[str, Any], bytes]] = {}
    for spec in _messages():
        for version in example_versions(spec):
            values = example_values(spec, version)
            payload = spec.layout_for(version).build(values, encoding=codec)
            header = {"version": version, "type": spec.code, "length": len(payload)}
            frame = FRAME.build({"header": {"value": header}, "payload": payload})
            frames[(spec.name, version)] = (values, frame)
    return frames


def _show(value: Any) -> str:
    if isinstance(value, IntFlag):
        return "|".join(m.name for m in type(value) if m & value) or "0"
    if isinstance(value, IntEnum):
        return value.name
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_show(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return str(value)


# --- state tables -----------------------------------------------------------------


def _sources(transition: dict[str, Any]) -> list[str]:
    source = transition["source"]
    return list(source) if isinstance(source, list) else [source]


def transition_rows(role: str, version: int = PROTOCOL_VERSION) -> list[tuple[str, dict[str, Any]]]:
    """(source state, transition) for every transition of ``role`` in ``version``, one per
    source state, grouped by source in the order of :data:`STATES`, in declaration order
    within a state (the order guards are tried in).
    """
    rows = []
    transitions = transitions_of(role, version)
    for state in STATES[role]:
        rows += [(state.name, t) for t in transitions if state.name in _sources(t)]
    return rows


def _trigger_text(trigger: str) -> str:
    if trigger == CLOSED_TRIGGER:
        return "transport closed"
    direction, _, message = trigger.partition("_")
    return f"{'receive' if direction == 'recv' else 'send'} {message}"


def _trigger_label(trigger: str) -> str:
    if trigger == CLOSED_TRIGGER:
        return CLOSED_TRIGGER
    direction, _, message = trigger.partition("_")
    return f"{'?' if direction == 'recv' else '!'}{message}"


def _guard_text(transition: dict[str, Any], earlier_guarded: bool) -> str:
    parts = [f"if {g}" for g in transition["conditions"]] + [
        f"unless {g}" for g in transition["unless"]
    ]
    if parts:
        return ", ".join(parts)
    return "otherwise" if earlier_guarded else "—"


def _guard_label(transition: dict[str, Any]) -> str:
    parts = list(transition["conditions"]) + [f"not {g}" for g in transition["unless"]]
    return f" [{', '.join(parts)}]" if parts else ""


def since_label(version: int) -> str:
    """The diagrams' suffix for a row ``version`` added, `` (v2)``; empty for the first version's."""
    return f" (v{version})" if version > _FIRST_VERSION else ""


def _received(role: str) -> set[str]:
    return {
        t["trigger"].partition("_")[2]
        for t in TRANSITIONS[role]
        if t["trigger"].startswith("recv_")
    }


def _sent(role: str) -> set[str]:
    return {
        t["trigger"].partition("_")[2]
        for t in TRANSITIONS[role]
        if t["trigger"].startswith("send_")
    }


def _states_where(role: str, trigger: str, base: int = _FIRST_VERSION) -> list[str]:
    """The states with a row for ``trigger``, each marked with the version that gave it one
    when that is later than ``base``."""
    first = _row_since(role)
    return [
        _marked(f"`{s.name}`", first[(s.name, trigger)], base)
        for s in STATES[role]
        if (s.name, trigger) in first
    ]


def _mermaid(role: str) -> list[str]:
    from dfachat.spec.diagrams import mermaid_state_diagram  # it imports this module

    return ["```mermaid", *mermaid_state_diagram(role).splitlines(), "```"]


# --- the document -----------------------------------------------------------------

_ERROR_HEADING = "Error codes"


class _Doc:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.headings: list[tuple[int, str]] = []

    def heading(self, level: int, text: str) -> None:
        self.headings.append((level, text))
        self.para("#" * level + " " + text)

    def para(self, *lines: str) -> None:
        if self.lines and self.lines[-1] != "":
            self.lines.append("")
        self.lines.extend(lines)
        self.lines.append("")

    def toc(self) -> list[str]:
        slugs = [_slug(text) for _, text in self.headings]
        duplicates = sorted({s for s in slugs if slugs.count(s) > 1})
        if duplicates:
            raise ValueError(f"headings with the same anchor: {duplicates}")
        out = []
        for level, text in self.headings:
            if level in (2, 3):
                out.append("  " * (level - 2) + f"- [{text}](#{_slug(text)})")
        return out


def _frame_section(doc: _Doc) -> None:
    doc.heading(3, "Frame layout")
    rows = []
    fixed = 0
    variable: list[str] = []

    def offset() -> str:
        return " + ".join([str(fixed), *variable]) if variable else str(fixed)

    def walk(struct: Struct) -> None:
        nonlocal fixed
        for sub in struct.subcons:
            con = unwrap(sub)
            if isinstance(con, RawCopy):
                walk(con.subcon)
                continue
            if isinstance(con, Const):
                size, wire = len(con.value), f"{len(con.value)} bytes, always `{_hex(con.value)}`"
            elif isinstance(con, Checksum):
                size, wire = con.checksumfield.sizeof(), _int_name(con.checksumfield)
            elif isinstance(con, Bytes):
                length = con.length
                size = length if isinstance(length, int) else None
                name = re.findall(r"\['(\w+)'\]", repr(length))[-1] if size is None else ""
                wire = "bytes"
            elif isinstance(con, FormatField):
                size, wire = con.sizeof(), _int_name(con)
            else:
                raise TypeError(f"the document cannot describe frame field {sub.name}: {con!r}")
            rows.append(
                (
                    f"`{sub.name}`",
                    offset(),
                    size if size is not None else f"`{name}`",
                    wire,
                    _link_rules(_one_line(sub.docs)),
                )
            )
            if size is None:
                variable.append(f"`{name}`")
            else:
                fixed += size

    walk(FRAME)
    doc.para(
        "Every frame is laid out as below. Offsets are in bytes from the start of the frame; "
        "every integer is unsigned and big-endian."
    )
    doc.para(*_table(["Field", "Offset", "Size", "Type", "Meaning"], rows))
    crc = unwrap(FRAME.subcons[-1])
    check = b"123456789"
    header_size = HEADER.sizeof()
    doc.para(
        f"The checksum covers bytes 0 to {header_size} + `length` - 1: the {header_size}-byte "
        f"header and the payload. It is the CRC-32 of zlib and Ethernet; as a check value, the "
        f"CRC-32 of the {len(check)} ASCII bytes `{check.decode()}` is "
        f"0x{crc.hashfunc(check):08X}. "
        f"A whole frame is at most {LIMITS.max_frame} bytes (`max_frame`), so a payload is at "
        f"most {LIMITS.max_frame - FRAME_OVERHEAD} bytes. The payload of each message type is "
        f"laid out in [Appendix A](#{_slug(_MESSAGES_HEADING)})."
    )
    doc.heading(3, "Constants")
    doc.para(
        *_table(
            ["Constant", "Value"],
            [
                ("Newest protocol version", PROTOCOL_VERSION),
                ("Versions this document covers", ", ".join(map(str, SUPPORTED_VERSIONS))),
                ("Magic bytes", f'`{_hex(MAGIC)}` (ASCII "{MAGIC.decode("ascii")}")'),
                ("Default TCP port", DEFAULT_PORT),
                ("Header size", f"{header_size} bytes"),
                ("Frame overhead (header and checksum)", f"{FRAME_OVERHEAD} bytes"),
                ("Largest frame (`max_frame`)", f"{LIMITS.max_frame} bytes"),
                ("Largest payload", f"{LIMITS.max_frame - FRAME_OVERHEAD} bytes"),
            ],
        )
    )


def _encodings_section(doc: _Doc) -> None:
    doc.heading(3, "Encodings")
    doc.para(
        'The encoding names a client may put in HELLO, spelled exactly as listed. "Universal" '
        "encodings can carry every Unicode scalar value; text sent to a session in another "
        f"encoding may need replacements: each character it cannot represent becomes "
        f"`{REPLACEMENT}` (U+{ord(REPLACEMENT):04X})."
    )
    doc.para(
        *_table(
            ["Name", "Description", "Universal"],
            [
                (f"`{e.name}`", e.description, "yes" if e.universal else "no")
                for e in ENCODINGS.values()
            ],
        )
    )


def _signature(con: Construct) -> tuple[Any, ...]:
    if isinstance(con, Text):
        return ("TEXT", con.min_chars, con.max_limit, con.rule)
    if isinstance(con, List):
        return ("LIST", _wire_type(con))
    return ("ID", id(con))


def _types_section(doc: _Doc) -> None:
    doc.heading(3, "Field types")
    doc.para(
        "The payload tables of [Appendix A](#"
        + _slug(_MESSAGES_HEADING)
        + ") use these wire types."
    )
    doc.para(
        *[
            f"- `{_int_name(con)}`: an unsigned integer of {con.sizeof()} "
            f"byte{'s' if con.sizeof() > 1 else ''}, big-endian."
            for con in _INTEGERS
        ]
    )
    groups: dict[tuple[Any, ...], tuple[Construct, list[str]]] = {}
    for spec in _messages():
        for f in _walk(spec.layout, f"{spec.name}."):
            if isinstance(f.con, (Ident, Text, List)):
                entry = groups.setdefault(_signature(f.con), (f.con, []))
                entry[1].append(f"`{f.path}`")
    idents = [(c, u) for c, u in groups.values() if isinstance(c, Ident)]
    doc.para(
        "ASCII fields (NAME, IDENT, REASON) are a length, then that many ASCII bytes, whatever the "
        "session's encoding. Each kind of field has its own alphabet, given as a regular "
        "expression the whole value must match:"
    )
    doc.para(
        *_table(
            ["Type", "Field kind", "Length prefix", "Pattern", "Case", "Rule", "Used by"],
            [
                (
                    c.kind,
                    c.description,
                    _int_name(c.length_field),
                    f"`{c.pattern}`",
                    "insensitive" if c.casefold else "exact",
                    _rule_link(c.rule),
                    ", ".join(u),
                )
                for c, u in idents
            ],
        )
    )
    texts = [(c, u) for c, u in groups.values() if isinstance(c, Text)]
    doc.para(
        "TEXT fields are a byte length, then that many bytes in the session's encoding; their "
        "bounds count code points after decoding:"
    )
    doc.para(
        *_table(
            ["Length prefix", "Code points", "Rule", "Used by"],
            [
                (
                    _int_name(c.subcon.lengthfield),
                    f"{c.min_chars} to {_limit_label(c.max_limit)}",
                    _rule_link(c.rule),
                    ", ".join(u),
                )
                for c, u in texts
            ],
        )
    )
    lists = [(c, u) for c, u in groups.values() if isinstance(c, List)]
    doc.para("LIST fields are an item count, then that many items:")
    doc.para(
        *_table(
            ["Type", "Used by"],
            [(_wire_type(c), ", ".join(u)) for c, u in lists],
        )
    )
    doc.para(
        "ENUM fields hold one of the values of their table, FLAGS fields a set of the bits of "
        "theirs; both are listed under [Enumerations and flags]"
        f"(#{_slug(_ENUMS_HEADING)}) and, for error codes, "
        f"[{_ERROR_HEADING}](#{_slug(_ERROR_HEADING)})."
    )


_ENUMS_HEADING = "Enumerations and flags"
_MESSAGES_HEADING = "Appendix A. Message layouts"


def _enums_section(doc: _Doc) -> None:
    doc.heading(3, _ENUMS_HEADING)
    found: dict[type, list[str]] = {}
    widths: dict[type, int] = {}
    for spec in _messages():
        for f in _walk(spec.layout, f"{spec.name}."):
            if isinstance(f.con, Code) and f.con.enum is not ErrorCode:
                found.setdefault(f.con.enum, []).append(f"`{f.path}`")
                widths[f.con.enum] = f.con.subcon.sizeof()
            elif isinstance(f.con, Flags):
                found.setdefault(f.con.flags, []).append(f"`{f.path}`")
                widths[f.con.flags] = f.con.subcon.sizeof()
    enums = [e for e in found if not issubclass(e, IntFlag)]
    flags = [e for e in found if issubclass(e, IntFlag)]
    for enum in [*enums, *flags]:
        doc.heading(4, enum.__name__)
        kind = "flag set" if enum in flags else "enumeration"
        doc.para(
            _link_rules(_one_line(enum.__doc__))
            + f" {'An' if kind[0] in 'aeiou' else 'A'} {kind} carried as u{8 * widths[enum]} in "
            + ", ".join(found[enum])
            + "."
        )
        if enum in flags:
            digits = 2 * widths[enum]

            def reserved(version: int, enum: type = enum, digits: int = digits) -> str:
                # the bits a frame of ``version`` may not set: those no member of it defines
                mask = 0
                for member in enum:
                    if since(member) <= version:
                        mask |= int(member)
                return f"0x{((1 << (4 * digits)) - 1) & ~mask:0{digits}X}"

            earlier = [
                f"{reserved(v)} in version {v}"
                for v in SUPPORTED_VERSIONS[:-1]
                if reserved(v) != reserved(PROTOCOL_VERSION)
            ]
            doc.para(
                *_table(
                    ["Bit", "Name"], [(f"0x{int(m):02X}", _marked(m.name, since(m))) for m in enum]
                ),
                "",
                f"Reserved bits (mask {reserved(PROTOCOL_VERSION)}"
                + "".join(f"; {e}" for e in earlier)
                + f") are zero ({_rule_link('R4.7')}).",
            )
        else:
            doc.para(
                *_table(["Value", "Name"], [(int(m), _marked(m.name, since(m))) for m in enum])
            )


def _limits_section(doc: _Doc) -> None:
    doc.heading(3, "Limits")
    bounded: dict[str, list[str]] = {}
    for spec in _messages():
        for f in _walk(spec.layout, f"{spec.name}."):
            if isinstance(f.con, (Text, List)) and isinstance(f.con.max_limit, str):
                bounded.setdefault(f.con.max_limit, []).append(f"`{f.path}`")
    rows = []
    for name, value in LIMITS.as_dict().items():
        cited = [r.id for r in RULES.values() if name in _PLACEHOLDER.findall(r.text)]
        announced = [
            f"`{spec.name}.{sub.name}`"
            for spec in _messages()
            for sub in spec.layout.subcons
            if sub.name == name
        ]
        rows.append(
            (
                _marked(f"`{name}`", limit_since(name)),
                value,
                ", ".join(_rule_link(r) for r in cited) or "—",
                ", ".join(bounded.get(name, [])) or "—",
                ", ".join(announced) or "—",
            )
        )
    doc.para(
        "Every limit, with its default value, the rules that state it, the fields it bounds and "
        "the fields that announce it. Names ending in `_ms` are milliseconds, `_s` seconds. A "
        "limit marked with a version is used by that version's rules and fields only."
    )
    doc.para(*_table(["Limit", "Default", "Rules", "Bounds", "Announced in"], rows))


def _errors_section(doc: _Doc) -> None:
    doc.heading(3, _ERROR_HEADING)
    doc.para(
        "The values of ERROR's `code` field. Codes marked *always* are fatal in every state; the "
        f"others are fatal before AUTH_OK ({_rule_link('R6.7')}), and after it the server "
        f"survives them ({_rule_link('R11.3')}). A code that is never sent is only reported "
        "locally. A code marked with a version is not defined in frames of earlier versions "
        f"({_rule_link('R4.6')})."
    )
    rows = [
        (
            int(code),
            _marked(code.name, since(code)),
            _fatal(code),
            _rule_link(ERROR_INFO[code].rule),
            ERROR_INFO[code].meaning,
            "yes" if ERROR_INFO[code].sent else "never",
        )
        for code in ErrorCode
    ]
    doc.para(*_table(["Code", "Name", "Fatal", "Rule", "Meaning", "Sent"], rows))


def _state_machines(doc: _Doc) -> None:
    doc.heading(3, "Reading the state tables")
    doc.para(
        "Each role's session is in exactly one state. A row of a role's state table applies when "
        "the session is in the row's state and its trigger happens: *receive M* (a frame of type M "
        "arrived), *send M* (the role sends M) or *transport closed* (the connection ended). Rows "
        "with the same state and trigger are tried top to bottom and the first whose guard holds "
        "applies; *otherwise* marks a row without a guard that follows guarded ones. *(same)* as "
        "the next state means the state does not change. Actions run after the transition. The "
        "rule is the one that allows the row; each state also names the rule broken by a message "
        "it has no row for. In the state lists, *authenticated* marks the states after AUTH_OK, "
        f"where the server survives protocol errors ({_rule_link('R11.3')}), and *discards input* "
        f"the states that drop everything they receive ({_rule_link('R12.4')})."
    )
    later = [v for v in SUPPORTED_VERSIONS if v > _FIRST_VERSION]
    if later:
        doc.para(
            "A session follows its version's table. The rows, guards and actions marked "
            + " or ".join(since_mark(v) for v in later)
            + " are in the tables of that version and later ones only; the unmarked ones are "
            "in every version's."
        )
    doc.para("Guards, predicates over the message of the trigger (and the session's counters):")
    doc.para(
        *_table(
            ["Guard", "Holds when"],
            [
                (_marked(f"`{n}`", _uses_since("guard", n)), _link_rules(_one_line(g.__doc__)))
                for n, g in GUARDS.items()
            ],
        )
    )
    doc.para("Actions:")
    doc.para(
        *_table(
            ["Action", "Effect"],
            [
                (_marked(f"`{n}`", _uses_since("action", n)), _link_rules(d))
                for n, d in ACTIONS.items()
            ],
        )
    )
    for role in ROLES:
        title = role.capitalize()
        doc.heading(3, f"{title} state machine")
        doc.heading(4, f"{title} states")
        rows = []
        for s in STATES[role]:
            marks = [m for m, on in (("initial", s.initial), ("terminal", s.terminal)) if on]
            flags = [
                f
                for f, on in (
                    ("authenticated", s.authenticated),
                    ("discards input", s.discards_input),
                )
                if on
            ]
            rows.append(
                (
                    f"`{s.name}`",
                    s.phase,
                    ", ".join(marks) or "—",
                    s.doc,
                    _rule_link(s.rule),
                    ", ".join(flags) or "—",
                )
            )
        doc.para(
            *_table(["State", "Phase", "Marks", "Meaning", "Unexpected message", "Flags"], rows)
        )
        doc.heading(4, f"{title} state table")
        rows = []
        seen: dict[tuple[str, str], bool] = {}
        for source, t in transition_rows(role):
            key = (source, t["trigger"])
            guarded = bool(t["conditions"] or t["unless"])
            rows.append(
                (
                    f"`{source}`",
                    _marked(_trigger_text(t["trigger"]), t["since"]),
                    _guard_text(t, seen.get(key, False)),
                    f"`{t['dest']}`" if t["dest"] else "(same)",
                    ", ".join(f"`{a}`" for a in t["after"]) or "—",
                    _rule_link(t["rule"]),
                )
            )
            seen[key] = seen.get(key, False) or guarded
        doc.para(*_table(["State", "Trigger", "Guard", "Next state", "Actions", "Rule"], rows))
        doc.heading(4, f"{title} diagram")
        new_rows = [
            f"`{since_label(v).strip()}` ends the label of a row version {v} added"
            for v in SUPPORTED_VERSIONS
            if since_label(v)
        ]
        doc.para(
            "Generated from the same table: `?M` receives M, `!M` sends M, "
            f"`{_trigger_label(CLOSED_TRIGGER)}` is the transport closing; guards are in brackets"
            + "".join(f"; {x}" for x in new_rows)
            + ". Transitions that keep the state are not drawn; they are the *(same)* rows of the "
            "state table."
        )
        doc.para(*_mermaid(role))
        green = "".join(
            f", the rows of version {v} in green" for v in SUPPORTED_VERSIONS if since_label(v)
        )
        doc.para(
            f"The same machine drawn by Graphviz, states grouped by phase, transitions that keep "
            f"the state listed inside it{green}: "
            f"[diagrams/{role}-states.svg](diagrams/{role}-states.svg) "
            f"(source [diagrams/{role}-states.dot](diagrams/{role}-states.dot), generated "
            "from the transitions machine)."
        )
        doc.heading(4, f"Messages the {role} never receives or sends")
        never_received = [m.name for m in _messages() if m.name not in _received(role)]
        never_sent = [m.name for m in _messages() if m.name not in _sent(role)]
        doc.para(
            f"No state of the {role} has a row receiving "
            + ", ".join(never_received)
            + "; such a message is unexpected in every state "
            + f"({_rule_link('R12.3')}). No state of the "
            f"{role} has a row sending " + ", ".join(never_sent) + f" ({_rule_link('R12.2')})."
        )


def _field_since(spec: MessageSpec, path: str) -> int:
    """The version a payload-table row appeared in (a list item's row: its list's)."""
    return spec.field_since(re.split(r"[\[.]", path, maxsplit=1)[0])


def _example_block(name: str, values: dict[str, Any], frame: bytes) -> list[str]:
    header_size = HEADER.sizeof()
    payload = frame[header_size:-4]
    shown = " ".join(f"{k}={_show(v)}" for k, v in values.items())
    lines = ["```text", f"{name} {shown}".rstrip()]
    lines.append(f"header   {_hex(frame[:header_size])}")
    for i in range(0, len(payload), 16):
        lines.append(f"{'payload' if i == 0 else '':<8} {_hex(payload[i : i + 16])}")
    lines.append(f"crc      {_hex(frame[-4:])}")
    lines.append("```")
    return lines


def _message_section(doc: _Doc) -> None:
    from dfachat.spec.diagrams import packet_diagram_text  # it imports this module

    doc.heading(2, _MESSAGES_HEADING)
    frames = example_frames()
    encoding = next(iter(ENCODINGS))
    later = [v for v in SUPPORTED_VERSIONS if v > _FIRST_VERSION]
    doc.para(
        "Every message type, by type code. Offsets are in bytes from the start of the payload; "
        "after a field of variable size they are given relative to the end of that field. In a "
        "list, `[i]` rows describe one item, offsets relative to the item's start. The field "
        "types are described under [Field types](#field-types). Each example frame is built from "
        "the layout with arbitrary valid values, TEXT fields in "
        f"{encoding}; the bytes are hexadecimal. A message has an example frame of the first "
        "version that has it, and one of each later version whose frames carry other fields; a "
        f"frame of another version differs in header byte 2 and so in the checksum "
        f"({_rule_link('R2.2')}). All the layouts side by side: "
        "[diagrams/packets.svg](diagrams/packets.svg)."
    )
    if later:
        doc.para(
            "A message, field or value marked "
            + " or ".join(since_mark(v) for v in later)
            + " is not in the frames of earlier versions: there, such a type code is "
            f"UNKNOWN_TYPE ({_rule_link('R2.3')}), such a value is not one of the field's "
            f"({_rule_link('R4.6')}, {_rule_link('R4.7')}), and the payload ends without such "
            "a field."
        )
    rows = []
    for spec in _messages():
        fixed = all(_sizeof(unwrap(sub)) is not None for sub in spec.layout.subcons)
        size = spec.layout.sizeof() if fixed else None
        rows.append(
            (
                f"0x{spec.code:02X}",
                _marked(f"[{spec.name}](#{_slug(_message_heading(spec))})", spec.since),
                " and ".join(_senders(spec)),
                _link_rules(spec.summary),
                _bytes(size) if size is not None else "variable",
            )
        )
    doc.para(*_table(["Code", "Message", "Sent by", "Summary", "Payload"], rows))
    for spec in _messages():
        doc.heading(3, _message_heading(spec))
        where = []
        for role in sorted(ROLES, key=lambda r: r not in spec.senders):
            for verb, trigger in (
                ("sends", f"send_{spec.name}"),
                ("receives", f"recv_{spec.name}"),
            ):
                states = _states_where(role, trigger, spec.since)
                if states:
                    where.append(f"the {role} {verb} it in " + ", ".join(states))
        intro = [
            f"Type code 0x{spec.code:02X}, sent by the {' and the '.join(_senders(spec))}. "
            + _link_rules(spec.summary),
        ]
        if spec.since > _FIRST_VERSION:
            earlier = [v for v in SUPPORTED_VERSIONS if v < spec.since]
            intro.insert(
                0,
                f"{since_mark(spec.since)} Version {' and '.join(map(str, earlier))} "
                f"{'does' if len(earlier) == 1 else 'do'} not have this message: in a frame of "
                f"version {' or '.join(map(str, earlier))}, type code 0x{spec.code:02X} is "
                f"UNKNOWN_TYPE ({_rule_link('R2.3')}).",
            )
            intro.insert(1, "")
        doc.para(*intro, "", _sentence("; ".join(where)))
        fields = list(_walk(spec.layout))
        if fields:
            doc.para(
                *_table(
                    ["Field", "Offset", "Size", "Type", "Meaning"],
                    [
                        (
                            _marked(f"`{f.path}`", _field_since(spec, f.path), spec.since),
                            f.offset,
                            f.size,
                            f.wire,
                            _link_rules(f.meaning),
                        )
                        for f in fields
                    ],
                )
            )
            for v in SUPPORTED_VERSIONS:
                carried = _field_names(spec, v) if spec.in_version(v) else []
                missing = [n for n in (sub.name for sub in spec.layout.subcons) if n not in carried]
                if carried and missing:
                    doc.para(
                        f"A frame of version {v} does not carry "
                        + _and([f"`{n}`" for n in missing])
                        + f": its payload ends after `{carried[-1]}`."
                    )
        else:
            doc.para("The payload is empty (`length` 0).")
        versions = example_versions(spec)
        for version in versions:
            values, frame = frames[(spec.name, version)]
            doc.para(f"Example, a frame of version {version}:")
            doc.para(*_example_block(spec.name, values, frame))
        if fields:
            added = sorted({v for _, v in spec.added if since_label(v)})
            doc.para(
                "Bit layout (32 bits a row; a variable-size field takes a row between `/` marks, "
                "and the fields after it follow it directly"
                + "".join(
                    f"; `{since_label(v).strip()}` marks a field version {v} added" for v in added
                )
                + "):"
            )
            doc.para("```text", *packet_diagram_text(spec, fields=False).splitlines(), "```")


_SEQUENCES_HEADING = "Appendix B. Message sequence charts"


def _sequence_section(doc: _Doc) -> None:
    # The charts are run, not drawn: the scenarios drive the real engines and the reference
    # server's handlers (the model checker's model), and the chart is what they exchanged.
    from dfachat.conformance.scenarios import SCENARIOS, run_scenario, sequence_mermaid

    doc.heading(2, _SEQUENCES_HEADING)
    doc.para(
        "Typical conversations, each produced by running the real client and server engines "
        "through a named scenario (`dfachat diagram --sequence NAME`; `--list` names them) and "
        "drawing the frames they exchanged, encoded and decoded by the codec. Client "
        "participants are named by number, account and encoding. The charts are informative: "
        "the rules and state tables above are normative."
    )
    for number, (name, scenario) in enumerate(SCENARIOS.items(), 1):
        doc.heading(3, f"B.{number} {scenario.title}")
        setup = f" Before the chart: {scenario.setup_note}." if scenario.setup_note else ""
        doc.para(
            _link_rules(scenario.doc) + setup + f" Scenario `{name}`; also as SVG: "
            f"[diagrams/sequence-{name}.svg](diagrams/sequence-{name}.svg)."
        )
        doc.para("```mermaid", *sequence_mermaid(run_scenario(name)).splitlines(), "```")


def _message_heading(spec: MessageSpec) -> str:
    return f"{spec.name} (0x{spec.code:02X})"


_AFTER_RULES = {
    2: [_frame_section],
    3: [_encodings_section],
    4: [_types_section, _enums_section, _limits_section],
    11: [_errors_section],
    12: [_state_machines],
}


_VERSIONS_HEADING = "Protocol versions"


def _versions_title() -> str:
    """``versions 1 and 2`` (``version 1`` while there is one)."""
    versions = [str(v) for v in SUPPORTED_VERSIONS]
    return f"version{'s' if len(versions) > 1 else ''} {_and(versions)}"


def _message_link(spec: MessageSpec) -> str:
    return f"[{spec.name}](#{_slug(_message_heading(spec))})"


def _field_ref(message: str, name: str) -> str:
    """``MESSAGE.field``, checked against the layouts (a renamed field fails loudly here)."""
    spec = MESSAGES_BY_NAME[message]
    if name not in {sub.name for sub in spec.layout.subcons}:
        raise KeyError(f"{message} has no field {name}")
    return f"`{message}.{name}`"


def _member_text(member: IntEnum | IntFlag) -> str:
    value = f"0x{int(member):02X}" if isinstance(member, IntFlag) else str(int(member))
    return f"{value} {member.name}"


def _first_sentence(text: str) -> str:
    match = re.match(r"(.+?\.)(?=\s|$)", text)
    return match.group(1) if match else text


def _differences(doc: _Doc, delta: VersionDelta) -> None:
    v, prev = delta.version, delta.previous
    doc.heading(3, f"Differences between versions {prev} and {v}")
    doc.para(
        f"What version {v} adds to version {prev}, listed from the same declarations that put "
        f"the {since_mark(v)} marks in this document. A session of version {prev} has none of "
        f"it. Rules that hold in both versions are not listed, even where their text tells the "
        "versions apart."
    )
    items = []
    if delta.messages:
        items.append(
            "- **Messages:** "
            + "; ".join(
                f"{_message_link(m)} (0x{m.code:02X}, sent by the {' and the '.join(_senders(m))}): "
                + _link_rules(m.summary)
                for m in delta.messages
            )
        )
    if delta.fields:
        named = []
        for m, name in delta.fields:
            sub = next(sub for sub in m.layout.subcons if sub.name == name)
            named.append(
                f"`{m.name}.{name}` ({_wire_type(unwrap(sub))}): {_link_rules(_one_line(sub.docs))}"
            )
        items.append(
            "- **Fields:** "
            + "; ".join(named)
            + f". A frame of version {prev} does not carry "
            + ("it." if len(named) == 1 else "them.")
        )
    if delta.members:
        items.append(
            "- **Values:** "
            + "; ".join(
                f"[{type(m).__name__}](#{_enum_anchor(type(m))}) {_member_text(m)}"
                # by type: members of different enumerations compare equal as ints
                + (
                    f" ({ERROR_INFO[m].meaning}, {_rule_link(ERROR_INFO[m].rule)})"
                    if isinstance(m, ErrorCode)
                    else ""
                )
                for m in delta.members
            )
            + f". A frame of version {prev} cannot carry them ({_rule_link('R4.6')}, "
            f"{_rule_link('R4.7')})."
        )
    if delta.limits:
        items.append(
            "- **Limits:** "
            + ", ".join(f"`{name}` ({getattr(LIMITS, name)})" for name in delta.limits)
            + f" ([Limits](#{_slug('Limits')}))."
        )
    if delta.rules:
        items.append("- **Rules:**")
        items += [
            f"  - {_rule_link(r.id)} ({r.level}): {_link_rules(_first_sentence(rule_text(r.id)))}"
            for r in delta.rules
        ]
    for label, names in (("Guards", delta.guards), ("Actions", delta.actions)):
        if names:
            items.append(f"- **{label}:** " + ", ".join(f"`{n}`" for n in names) + ".")
    if delta.rows:
        items.append(f"- **State-table rows:** {len(delta.rows)}, below.")
    doc.para(*items)
    if delta.rows:
        doc.para(
            *_table(
                ["Role", "State", "Trigger", "Guard", "Next state", "Actions", "Rule"],
                [
                    (
                        role,
                        f"`{source}`",
                        _trigger_text(t["trigger"]),
                        _guard_text(t, False),
                        f"`{t['dest']}`" if t["dest"] else "(same)",
                        ", ".join(f"`{a}`" for a in t["after"]) or "—",
                        _rule_link(t["rule"]),
                    )
                    for role, source, t in delta.rows
                ],
            )
        )


def _versions_section(doc: _Doc) -> None:
    doc.heading(2, _VERSIONS_HEADING)
    versions = list(SUPPORTED_VERSIONS)
    hello, hello_ok = MESSAGES_BY_NAME["HELLO"], MESSAGES_BY_NAME["HELLO_OK"]
    doc.para(
        f"This document specifies protocol {_versions_title()}. "
        f"A session has one version, chosen in the handshake: the client lists the versions it "
        f"supports in {_field_ref('HELLO', 'versions')} ({_message_link(hello)}) and the server "
        f"names the one it chose in {_field_ref('HELLO_OK', 'version')} ({_message_link(hello_ok)}); "
        f"{_rule_link('R5.2')} says how it chooses and which frames carry which version, and "
        f"header byte 2 of every frame carries its version ({_rule_link('R2.2')})."
    )
    if len(versions) > 1:
        doc.para(
            "Each version keeps every rule, message, field, value and state-table row of the "
            "versions before it, and adds some. What a later version adds is marked where it is "
            "specified: "
            + ", ".join(f"{since_mark(v)} for version {v}" for v in versions[1:])
            + "; everything unmarked is in every version."
        )
    for v in versions[1:]:
        _differences(doc, version_delta(v))


def render_protocol_markdown() -> str:
    """The protocol document (Markdown), generated entirely from the spec."""
    doc = _Doc()
    _versions_section(doc)
    for section in SECTIONS:
        doc.heading(2, f"{section.number}. {section.title}")
        doc.para(_link_rules(section.intro))
        for rule in section.rules:
            mark = since_mark(rule.since)
            doc.para(
                f'<a id="{_rule_anchor(rule.id)}"></a>'
                f"**{rule.id}** ({rule.level}) {mark + ' ' if mark else ''}{rule_text(rule.id)}"
            )
        for part in _AFTER_RULES.get(section.number, []):
            part(doc)
    _message_section(doc)
    _sequence_section(doc)
    head = [
        f"# dfachat protocol, {_versions_title()}",
        "",
        "Status: generated by `dfachat spec --markdown` from the protocol declaration in "
        "`src/dfachat/spec/`. Do not edit this file by hand: change the declaration and "
        "regenerate it (`dfachat spec --markdown > docs/PROTOCOL.md`, or `dfachat docs`, which "
        "also regenerates the diagrams under `docs/diagrams/`).",
        "",
        "The numbered rules are normative: each has an id (cited by errors, state tables and the "
        "conformance checks) and a level, MUST, SHOULD or MAY. The tables after the rules of a "
        "section are generated from the same declaration and are normative too.",
        "",
        "## Contents",
        "",
        *doc.toc(),
        "",
    ]
    return "\n".join(head + doc.lines).rstrip("\n") + "\n"


# --- the JSON summary ---------------------------------------------------------------


def protocol_summary() -> dict[str, Any]:
    """The spec's main facts as one JSON-ready dict (``dfachat spec --json``)."""
    return {
        "protocol_version": PROTOCOL_VERSION,
        "supported_versions": list(SUPPORTED_VERSIONS),
        "default_port": DEFAULT_PORT,
        "magic": MAGIC.hex(),
        "max_frame": LIMITS.max_frame,
        "messages": [
            {
                "name": spec.name,
                "code": spec.code,
                "senders": _senders(spec),
                "summary": spec.summary,
                "fields": [sub.name for sub in spec.layout.subcons],
                "since": spec.since,
                "fields_since": {
                    sub.name: spec.field_since(sub.name) for sub in spec.layout.subcons
                },
            }
            for spec in _messages()
        ],
        "encodings": [
            {"name": e.name, "description": e.description, "universal": e.universal}
            for e in ENCODINGS.values()
        ],
        "replacement": REPLACEMENT,
        "limits": LIMITS.as_dict(),
        "error_codes": [
            {
                "code": int(code),
                "name": code.name,
                "fatal": _fatal(code),
                "rule": ERROR_INFO[code].rule,
                "meaning": ERROR_INFO[code].meaning,
                "sent": ERROR_INFO[code].sent,
            }
            for code in ErrorCode
        ],
        "rules": {rule_id: rule_text(rule_id) for rule_id in RULES},
        # what each later version adds, by name (the document's "Differences" section)
        "differences": {str(v): _delta_summary(version_delta(v)) for v in SUPPORTED_VERSIONS[1:]},
    }


def _delta_summary(delta: VersionDelta) -> dict[str, Any]:
    return {
        "previous": delta.previous,
        "messages": [m.name for m in delta.messages],
        "fields": [f"{m.name}.{name}" for m, name in delta.fields],
        "values": [f"{type(m).__name__}.{m.name}" for m in delta.members],
        "limits": list(delta.limits),
        "rules": [r.id for r in delta.rules],
        "rows": [
            {
                "role": role,
                "state": source,
                "trigger": t["trigger"],
                "dest": t["dest"],
                "rule": t["rule"],
            }
            for role, source, t in delta.rows
        ],
        "guards": list(delta.guards),
        "actions": list(delta.actions),
    }
