"""The generated protocol document: current, complete, and faithful to the spec.

The state tables and diagrams are parsed back and compared with
:data:`~dfachat.spec.TRANSITIONS`, not searched for names.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dfachat.spec import (
    CLOSED_TRIGGER,
    ENCODINGS,
    ERROR_INFO,
    LIMITS,
    MESSAGES,
    PROTOCOL_VERSION,
    ROLES,
    RULES,
    STATES,
    TRANSITIONS,
    ErrorCode,
)
from dfachat.spec.document import example_frames, render_protocol_markdown
from dfachat.spec.types import List, unwrap

PROTOCOL_MD = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"
_LINK = re.compile(r"\[([^\]]*)\]\(#[^)]*\)")


@pytest.fixture(scope="module")
def doc() -> str:
    return render_protocol_markdown()


def _plain(cell: str) -> str:
    """A table cell without Markdown links and code spans."""
    return _LINK.sub(r"\1", cell).replace("`", "").strip()


def _section(doc: str, heading: str) -> str:
    """The text under ``heading`` up to the next heading of the same or a higher level."""
    level = len(heading) - len(heading.lstrip("#"))
    lines = doc.splitlines()
    start = lines.index(heading)
    end = len(lines)
    for i in range(start + 1, len(lines)):
        match = re.match(r"(#+) ", lines[i])
        if match and len(match.group(1)) <= level:
            end = i
            break
    return "\n".join(lines[start + 1 : end])


def _table(text: str) -> list[list[str]]:
    """The rows of the first Markdown table in ``text``, header and rule dropped."""
    rows = []
    for line in text.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            rows.append(cells)
        elif rows:
            break
    return rows[2:]


def _mermaid(text: str) -> list[str]:
    block = re.search(r"```mermaid\n(.*?)```", text, re.S)
    assert block, "no mermaid block"
    return [line.strip() for line in block.group(1).splitlines()]


def _sources(t: dict) -> list[str]:
    return t["source"] if isinstance(t["source"], list) else [t["source"]]


# --- current ----------------------------------------------------------------------


def test_committed_document_is_current(doc: str) -> None:
    committed = PROTOCOL_MD.read_text(encoding="utf-8") if PROTOCOL_MD.exists() else ""
    assert committed == doc, (
        "docs/PROTOCOL.md is stale: regenerate it with `dfachat spec --markdown > docs/PROTOCOL.md`"
    )


def test_document_is_deterministic_and_ends_with_one_newline(doc: str) -> None:
    assert render_protocol_markdown() == doc
    assert doc.endswith("\n") and not doc.endswith("\n\n")
    assert doc.startswith(f"# dfachat protocol, version {PROTOCOL_VERSION}\n")
    assert "dfachat spec --markdown" in doc.split("## Contents")[0]


def test_every_link_has_a_target(doc: str) -> None:
    slugs = set()
    for heading in re.findall(r"^#+ (.+)$", doc, re.M):
        slugs.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    slugs |= set(re.findall(r'<a id="([^"]+)"></a>', doc))
    targets = set(re.findall(r"\]\(#([^)]+)\)", doc))
    assert targets - slugs == set()


# --- complete ---------------------------------------------------------------------


def test_every_rule_is_printed_with_its_level(doc: str) -> None:
    from dfachat.spec import rule_text

    for rule in RULES.values():
        assert f"**{rule.id}** ({rule.level}) {rule_text(rule.id)}" in doc


def test_every_message_has_its_section_and_code(doc: str) -> None:
    for spec in MESSAGES:
        heading = f"### {spec.name} (0x{spec.code:02X})"
        assert heading in doc.splitlines()
        body = _section(doc, heading)
        assert f"Type code 0x{spec.code:02X}" in body
        senders = " and the ".join(role for role in ROLES if role in spec.senders)
        assert f"sent by the {senders}." in body


def test_every_payload_table_lists_the_layout_fields(doc: str) -> None:
    for spec in MESSAGES:
        body = _section(doc, f"### {spec.name} (0x{spec.code:02X})")
        names = [_plain(row[0]) for row in _table(body)]
        top = [n for n in names if "[i]" not in n]
        assert top == [sub.name for sub in spec.layout.subcons], spec.name
        for sub in spec.layout.subcons:
            con = unwrap(sub)
            if isinstance(con, List) and con.record is not None:
                for field in con.record.subcons:
                    assert f"{sub.name}[i].{field.name}" in names


def test_fixed_offsets_are_right(doc: str) -> None:
    """Numeric offsets in payload tables are the sums of the sizes before them."""
    for spec in MESSAGES:
        body = _section(doc, f"### {spec.name} (0x{spec.code:02X})")
        offset = 0
        for row in _table(body):
            name, where, size = _plain(row[0]), row[1], row[2]
            if "[i]" in name:
                continue
            if not where.isdigit():
                break
            assert int(where) == offset, (spec.name, name)
            if not size.isdigit():
                break
            offset += int(size)


def test_every_state_error_code_encoding_and_limit_is_documented(doc: str) -> None:
    for role in ROLES:
        for state in STATES[role]:
            assert f"`{state.name}`" in _section(doc, f"#### {role.capitalize()} states")
    errors = {int(row[0]): row for row in _table(_section(doc, "### Error codes"))}
    for code in ErrorCode:
        row = errors[int(code)]
        assert row[1] == code.name
        assert row[2] == ("always" if ERROR_INFO[code].always_fatal else "before AUTH_OK")
        assert _plain(row[3]) == ERROR_INFO[code].rule
        assert row[5] == ("yes" if ERROR_INFO[code].sent else "never")
    encodings = [_plain(row[0]) for row in _table(_section(doc, "### Encodings"))]
    assert encodings == list(ENCODINGS)
    limits = {_plain(row[0]): row[1] for row in _table(_section(doc, "### Limits"))}
    assert limits == {name: str(value) for name, value in LIMITS.as_dict().items()}


def test_enumerations_are_documented(doc: str) -> None:
    from dfachat.spec import ByeReason, DeliverFlags, ErrorFlags, LeftReason, ListFlags, Outcome

    for enum in (Outcome, LeftReason, ByeReason):
        rows = _table(_section(doc, f"#### {enum.__name__}"))
        assert [(int(v), n) for v, n in rows] == [(int(m), m.name) for m in enum]
    for flags in (DeliverFlags, ErrorFlags, ListFlags):
        rows = _table(_section(doc, f"#### {flags.__name__}"))
        assert [(int(v, 16), n) for v, n in rows] == [(int(m), m.name) for m in flags]


# --- the state machines, parsed back ----------------------------------------------------


def _expected_rows(role: str) -> list[tuple]:
    rows = []
    for state in STATES[role]:
        for t in TRANSITIONS[role]:
            if state.name in _sources(t):
                rows.append(
                    (
                        state.name,
                        t["trigger"],
                        tuple(t["conditions"]),
                        tuple(t["unless"]),
                        t["dest"],
                        tuple(t["after"]),
                        t["rule"],
                    )
                )
    return rows


def _parse_trigger(text: str) -> str:
    if text == "transport closed":
        return CLOSED_TRIGGER
    verb, message = text.split(" ")
    return {"receive": "recv", "send": "send"}[verb] + "_" + message


def _parse_guard(text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if text in ("—", "otherwise"):
        return (), ()
    conditions, unless = [], []
    for part in text.split(", "):
        kind, name = part.split(" ")
        (conditions if kind == "if" else unless).append(name)
    return tuple(conditions), tuple(unless)


@pytest.mark.parametrize("role", ROLES)
def test_state_table_is_the_transitions(doc: str, role: str) -> None:
    parsed = []
    for state, trigger, guard, dest, actions, rule in _table(
        _section(doc, f"#### {role.capitalize()} state table")
    ):
        conditions, unless = _parse_guard(guard)
        parsed.append(
            (
                _plain(state),
                _parse_trigger(trigger),
                conditions,
                unless,
                None if dest == "(same)" else _plain(dest),
                () if actions == "—" else tuple(_plain(a) for a in actions.split(",")),
                _plain(rule),
            )
        )
    # Same rows, and in the order guards are tried: by state, then declaration order.
    assert parsed == _expected_rows(role)


@pytest.mark.parametrize("role", ROLES)
def test_otherwise_marks_only_fallbacks(doc: str, role: str) -> None:
    guarded: set[tuple[str, str]] = set()
    for state, trigger, guard, *_ in _table(_section(doc, f"#### {role.capitalize()} state table")):
        key = (_plain(state), trigger)
        if guard == "otherwise":
            assert key in guarded, key
        elif guard != "—":
            guarded.add(key)


def _parse_label(label: str) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    match = re.fullmatch(r"([?!]?)(\w+)(?: \[(.*)\])?", label.strip())
    assert match, label
    prefix, name, guards = match.groups()
    trigger = {"?": "recv_", "!": "send_", "": ""}[prefix] + name
    conditions, unless = [], []
    for guard in (guards or "").split(", ") if guards else []:
        if guard.startswith("not "):
            unless.append(guard[4:])
        else:
            conditions.append(guard)
    return trigger, tuple(conditions), tuple(unless)


@pytest.mark.parametrize("role", ROLES)
def test_mermaid_diagram_is_the_transitions(doc: str, role: str) -> None:
    lines = _mermaid(_section(doc, f"#### {role.capitalize()} diagram"))
    assert lines[0] == "stateDiagram-v2"
    edges = set()
    starts, ends = [], []
    pairs = []
    for line in lines[1:]:
        if not line:
            continue
        match = re.fullmatch(r"(\S+) --> (\S+)(?: : (.*))?", line)
        assert match, line
        source, dest, labels = match.groups()
        if source == "[*]":
            starts.append(dest)
            continue
        if dest == "[*]":
            ends.append(source)
            continue
        assert source != dest, f"self-loop drawn: {line}"
        pairs.append((source, dest))
        for label in labels.split("<br/>"):
            trigger, conditions, unless = _parse_label(label)
            edges.add((source, trigger, conditions, unless, dest))
    assert len(pairs) == len(set(pairs)), "parallel edges must be merged"
    assert starts == [s.name for s in STATES[role] if s.initial]
    assert ends == [s.name for s in STATES[role] if s.terminal]
    expected = set()
    for state, trigger, conditions, unless, dest, _after, _rule in _expected_rows(role):
        if dest is not None:
            expected.add((state, trigger, conditions, unless, dest))
    assert edges == expected


@pytest.mark.parametrize("role", ROLES)
def test_never_received_messages_are_listed(doc: str, role: str) -> None:
    received = {t["trigger"][5:] for t in TRANSITIONS[role] if t["trigger"].startswith("recv_")}
    text = _section(doc, f"#### Messages the {role} never receives or sends")
    listed = re.search(r"row receiving (.*?); such", text).group(1).split(", ")
    assert listed == [
        m.name for m in sorted(MESSAGES, key=lambda m: m.code) if m.name not in received
    ]


# --- example frames ------------------------------------------------------------------------


def test_example_frames_are_what_the_codec_sends(doc: str) -> None:
    """The examples are built by construct from the layouts; the generated codec agrees."""
    from dfachat.codec import MESSAGE_CLASSES, decode_frame, encode
    from dfachat.codec.messages import RECORD_CLASSES

    for name, (values, frame) in example_frames().items():
        cls = MESSAGE_CLASSES[name]
        kwargs = {}
        for sub in cls.SPEC.layout.subcons:
            value = values[sub.name]
            con = unwrap(sub)
            if isinstance(con, List):
                if con.record is not None:
                    value = tuple(RECORD_CLASSES[con.item.name](**item) for item in value)
                else:
                    value = tuple(value)
            kwargs[sub.name] = value
        message = cls(**kwargs)
        assert encode(message) == frame, name
        assert decode_frame(frame) == message, name
        body = _section(doc, f"### {name} (0x{cls.TYPE:02X})")
        shown = re.search(r"```text\n(.*?)```", body, re.S).group(1)
        hex_bytes = re.findall(r"\b[0-9a-f]{2}\b", "\n".join(shown.splitlines()[1:]))
        assert bytes.fromhex("".join(hex_bytes)) == frame, name
