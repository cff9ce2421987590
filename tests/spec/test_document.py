"""The generated protocol document: current, complete, and faithful to the spec.

The state tables and diagrams are parsed back and compared with
:data:`~dfachat.spec.TRANSITIONS`, not searched for names. What a later protocol
version added is found by iterating the declarations (``since`` of rules, messages
and rows, ``MessageSpec.added``, :data:`~dfachat.spec.codes.SINCE`), and each item
must carry the document's mark, ``*(version N)*``, where it is specified, and be
listed in the "Differences" section; nothing older may carry one.
"""

from __future__ import annotations

import re
from enum import IntFlag
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
    SUPPORTED_VERSIONS,
    TRANSITIONS,
    ErrorCode,
)
from dfachat.spec.codes import SINCE, since
from dfachat.spec.document import example_frames, render_protocol_markdown
from dfachat.spec.types import List, Text, unwrap

PROTOCOL_MD = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"
_LINK = re.compile(r"\[([^\]]*)\]\(#[^)]*\)")
FIRST = SUPPORTED_VERSIONS[0]
LATER = [v for v in SUPPORTED_VERSIONS if v > FIRST]
_MARK = re.compile(r"\s*\*\(version (\d+)\)\*")


def mark(version: int) -> str:
    """The document's mark for what ``version`` added."""
    return f"*(version {version})*"


@pytest.fixture(scope="module")
def doc() -> str:
    return render_protocol_markdown()


def _plain(cell: str) -> str:
    """A table cell without Markdown links, code spans and version marks."""
    return _MARK.sub("", _LINK.sub(r"\1", cell)).replace("`", "").strip()


def _since(cell: str) -> int:
    """The version a cell is marked with (the first version when unmarked); one mark at most."""
    found = [int(v) for v in _MARK.findall(cell)]
    assert len(found) <= 1, cell
    return found[0] if found else FIRST


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
    title = doc.splitlines()[0]
    assert title.startswith("# dfachat protocol, version")
    assert re.findall(r"\d+", title) == [str(v) for v in SUPPORTED_VERSIONS]
    assert "dfachat spec --markdown" in doc.split("## Contents")[0]


def test_every_link_has_a_target(doc: str) -> None:
    slugs = set()
    for heading in re.findall(r"^#+ (.+)$", doc, re.M):
        slugs.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    slugs |= set(re.findall(r'<a id="([^"]+)"></a>', doc))
    targets = set(re.findall(r"\]\(#([^)]+)\)", doc))
    assert targets - slugs == set()


# --- complete ---------------------------------------------------------------------


def test_every_rule_is_printed_with_its_level_and_version_mark(doc: str) -> None:
    from dfachat.spec import rule_text

    for rule in RULES.values():
        tag = f"{mark(rule.since)} " if rule.since > FIRST else ""
        assert f"**{rule.id}** ({rule.level}) {tag}{rule_text(rule.id)}" in doc, rule.id
    printed = re.findall(r"\*\*(R\d+\.\d+)\*\* \((?:MUST|SHOULD|MAY)\) (\*\(version \d+\)\*)?", doc)
    assert {rule_id: bool(tag) for rule_id, tag in printed} == {
        r.id: r.since > FIRST for r in RULES.values()
    }


def test_every_message_has_its_section_and_code(doc: str) -> None:
    for spec in MESSAGES:
        heading = f"### {spec.name} (0x{spec.code:02X})"
        assert heading in doc.splitlines()
        body = _section(doc, heading)
        assert f"Type code 0x{spec.code:02X}" in body
        senders = " and the ".join(role for role in ROLES if role in spec.senders)
        assert f"sent by the {senders}." in body
        # a message a later version added says so first, and only such a message does
        assert body.lstrip().startswith(mark(spec.since)) == (spec.since > FIRST), spec.name


def test_the_message_table_marks_the_messages_later_versions_added(doc: str) -> None:
    rows = _table(_section(doc, "## Appendix A. Message layouts"))
    marked = {_plain(row[1]): _since(row[1]) for row in rows}
    assert marked == {spec.name: spec.since for spec in MESSAGES}


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


def test_fields_a_later_version_added_are_marked(doc: str) -> None:
    """Marked: exactly the fields of ``MessageSpec.added`` that came after their message; and
    the message says which earlier version's frames end without them."""
    for spec in MESSAGES:
        body = _section(doc, f"### {spec.name} (0x{spec.code:02X})")
        top = {_plain(row[0]): _since(row[0]) for row in _table(body) if "[i]" not in row[0]}
        added = {name: v for name, v in spec.added if v > spec.since}
        assert top == {sub.name: added.get(sub.name, FIRST) for sub in spec.layout.subcons}, (
            spec.name
        )
        for version in SUPPORTED_VERSIONS:
            if not spec.in_version(version):
                continue
            missing = [name for name, v in added.items() if v > version]
            sentence = re.search(
                rf"A frame of version {version} does not carry (.*?): its payload", body
            )
            if missing:
                assert sentence, (spec.name, version)
                assert re.findall(r"`(\w+)`", sentence.group(1)) == missing
            else:
                assert sentence is None, (spec.name, version)


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
    assert sorted(errors) == sorted(int(code) for code in ErrorCode)
    for code in ErrorCode:
        row = errors[int(code)]
        assert _plain(row[1]) == code.name
        assert _since(row[1]) == since(code), code.name
        assert row[2] == ("always" if ERROR_INFO[code].always_fatal else "before AUTH_OK")
        assert _plain(row[3]) == ERROR_INFO[code].rule
        assert row[5] == ("yes" if ERROR_INFO[code].sent else "never")
    encodings = [_plain(row[0]) for row in _table(_section(doc, "### Encodings"))]
    assert encodings == list(ENCODINGS)
    limits = {_plain(row[0]): row[1] for row in _table(_section(doc, "### Limits"))}
    assert limits == {name: str(value) for name, value in LIMITS.as_dict().items()}


def _limit_users(name: str) -> list[int]:
    """The versions of the rules that state limit ``name`` and of the fields named after it
    or bounded by it."""
    users = [r.since for r in RULES.values() if "{" + name + "}" in r.text]
    for spec in MESSAGES:
        for sub in spec.layout.subcons:
            con = unwrap(sub)
            if sub.name == name or (isinstance(con, (Text, List)) and con.max_limit == name):
                users.append(spec.field_since(sub.name))
    return users


def test_limits_only_a_later_version_uses_are_marked(doc: str) -> None:
    marked = {_plain(row[0]): _since(row[0]) for row in _table(_section(doc, "### Limits"))}
    for name in LIMITS.as_dict():
        assert marked[name] == min(_limit_users(name), default=FIRST), name
    # the windows HELLO_OK announces in version 2 are version 2's (R7.12, R7.16)
    for spec in MESSAGES:
        for field, version in spec.added:
            if field in marked:
                assert marked[field] == version, field


def test_enumerations_are_documented(doc: str) -> None:
    from dfachat.spec import ByeReason, DeliverFlags, ErrorFlags, LeftReason, ListFlags, Outcome

    for enum in (Outcome, LeftReason, ByeReason):
        rows = _table(_section(doc, f"#### {enum.__name__}"))
        assert [(int(v), _plain(n), _since(n)) for v, n in rows] == [
            (int(m), m.name, since(m)) for m in enum
        ]
    for flags in (DeliverFlags, ErrorFlags, ListFlags):
        body = _section(doc, f"#### {flags.__name__}")
        rows = _table(body)
        assert [(int(v, 16), _plain(n), _since(n)) for v, n in rows] == [
            (int(m), m.name, since(m)) for m in flags
        ]
        # the reserved mask of each version: a flag a later version added is reserved before it
        masks = dict(
            (int(v) if v else PROTOCOL_VERSION, int(m, 16))
            for m, v in re.findall(
                r"(0x[0-9A-F]+)(?: in version (\d+))?", body.split("Reserved bits")[1]
            )
        )
        for version in SUPPORTED_VERSIONS:
            defined = 0
            for m in flags:
                if since(m) <= version:
                    defined |= int(m)
            assert masks.get(version, masks[PROTOCOL_VERSION]) == 0xFF & ~defined, (
                flags.__name__,
                version,
            )


def test_every_value_a_later_version_added_is_marked(doc: str) -> None:
    """Each member of SINCE is marked in its table and wherever a payload table lists it."""
    assert SINCE, "no enumeration member is newer than version 1: nothing to check"
    for (enum, name), version in SINCE.items():
        member = getattr(enum, name)
        heading = "### Error codes" if enum is ErrorCode else f"#### {enum.__name__}"
        row = next(r for r in _table(_section(doc, heading)) if _plain(r[1]) == name)
        assert _since(row[1]) == version
        value = f"0x{int(member):02X}" if issubclass(enum, IntFlag) else str(int(member))
        listed = f"{value} {name}"
        appendix = _section(doc, "## Appendix A. Message layouts")
        if enum is not ErrorCode:  # ERROR's code row links to the error table instead
            assert f"{listed} {mark(version)}" in appendix, name
            assert re.search(rf"{re.escape(listed)}(?! \*\(version)", appendix) is None, name


# --- the state machines, parsed back ----------------------------------------------------


def _expected_rows(role: str) -> list[tuple]:
    """Every row of every version, with the version that added it last."""
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
                        t["since"],
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
                _parse_trigger(_plain(trigger)),
                conditions,
                unless,
                None if dest == "(same)" else _plain(dest),
                () if actions == "—" else tuple(_plain(a) for a in actions.split(",")),
                _plain(rule),
                _since(trigger),  # the row's mark: the version that added it
            )
        )
    # Same rows, and in the order guards are tried: by state, then declaration order.
    assert parsed == _expected_rows(role)


def test_guards_and_actions_only_later_rows_use_are_marked(doc: str) -> None:
    from dfachat.spec import ACTIONS, GUARDS

    def first(keys: tuple[str, ...], name: str) -> int:
        used = [
            t["since"] for ts in TRANSITIONS.values() for t in ts if any(name in t[k] for k in keys)
        ]
        return min(used, default=FIRST)

    text = _section(doc, "### Reading the state tables")
    guards, actions = (_table(part) for part in text.split("Actions:"))
    assert {_plain(r[0]): _since(r[0]) for r in guards} == {
        g: first(("conditions", "unless"), g) for g in GUARDS
    }
    assert {_plain(r[0]): _since(r[0]) for r in actions} == {
        a: first(("after",), a) for a in ACTIONS
    }


@pytest.mark.parametrize("role", ROLES)
def test_otherwise_marks_only_fallbacks(doc: str, role: str) -> None:
    guarded: set[tuple[str, str]] = set()
    for state, trigger, guard, *_ in _table(_section(doc, f"#### {role.capitalize()} state table")):
        key = (_plain(state), _plain(trigger))
        if guard == "otherwise":
            assert key in guarded, key
        elif guard != "—":
            guarded.add(key)


def _parse_label(label: str) -> tuple[str, tuple[str, ...], tuple[str, ...], int]:
    """(trigger, conditions, unless, version): a label ends in `` (v2)`` when version 2 added
    its row."""
    match = re.fullmatch(r"([?!]?)(\w+)(?: \[(.*?)\])?(?: \(v(\d+)\))?", label.strip())
    assert match, label
    prefix, name, guards, version = match.groups()
    trigger = {"?": "recv_", "!": "send_", "": ""}[prefix] + name
    conditions, unless = [], []
    for guard in (guards or "").split(", ") if guards else []:
        if guard.startswith("not "):
            unless.append(guard[4:])
        else:
            conditions.append(guard)
    assert version is None or int(version) > FIRST, label
    return trigger, tuple(conditions), tuple(unless), int(version) if version else FIRST


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
            trigger, conditions, unless, version = _parse_label(label)
            edges.add((source, trigger, conditions, unless, dest, version))
    assert len(pairs) == len(set(pairs)), "parallel edges must be merged"
    assert starts == [s.name for s in STATES[role] if s.initial]
    assert ends == [s.name for s in STATES[role] if s.terminal]
    expected = set()
    for state, trigger, conditions, unless, dest, _after, _rule, version in _expected_rows(role):
        if dest is not None:
            expected.add((state, trigger, conditions, unless, dest, version))
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


def _message_of(cls, values: dict):
    from dfachat.codec.messages import RECORD_CLASSES

    kwargs = {}
    for sub in cls.SPEC.layout.subcons:
        if sub.name not in values:
            continue  # a field this version's frames do not carry: the class's default
        value = values[sub.name]
        con = unwrap(sub)
        if isinstance(con, List):
            if con.record is not None:
                value = tuple(RECORD_CLASSES[con.item.name](**item) for item in value)
            else:
                value = tuple(value)
        kwargs[sub.name] = value
    return cls(**kwargs)


def test_example_frames_are_what_the_codec_sends(doc: str) -> None:
    """The examples are built by construct from the layouts of their version; the generated
    codec and the oracle agree, and the document shows exactly those bytes."""
    from dfachat.codec import MESSAGE_CLASSES, decode_frame, encode, oracle

    frames = example_frames()
    for (name, version), (values, frame) in frames.items():
        cls = MESSAGE_CLASSES[name]
        spec = cls.SPEC
        assert spec.in_version(version), (name, version)
        assert frame[2] == version, (name, version)  # header byte 2 (R2.2)
        assert list(values) == [sub.name for sub in spec.layout_for(version).subcons]
        message = _message_of(cls, values)
        assert encode(message, version=version) == frame, (name, version)
        assert decode_frame(frame) == message, (name, version)
        assert decode_frame(frame, versions=frozenset({version})) == message, (name, version)
        assert oracle.decode_frame(frame) == message, (name, version)
        body = _section(doc, f"### {name} (0x{cls.TYPE:02X})")
        shown = re.search(
            rf"Example, a frame of version {version}:\n\n```text\n(.*?)```", body, re.S
        ).group(1)
        hex_bytes = re.findall(r"\b[0-9a-f]{2}\b", "\n".join(shown.splitlines()[1:]))
        assert bytes.fromhex("".join(hex_bytes)) == frame, (name, version)


def test_examples_cover_every_message_in_each_layout(doc: str) -> None:
    """A message has an example in the first version with it, and in every later version
    whose frames carry other fields: a version-2 message (or field) in a version-2 frame."""
    frames = example_frames()
    for spec in MESSAGES:
        wanted, previous = [], None
        for version in SUPPORTED_VERSIONS:
            if spec.in_version(version):
                names = [sub.name for sub in spec.layout_for(version).subcons]
                if names != previous:
                    wanted.append(version)
                previous = names
        assert sorted(v for n, v in frames if n == spec.name) == wanted, spec.name
        assert wanted[0] == spec.since


def test_every_hex_example_in_the_document_decodes(doc: str) -> None:
    """Every example block of the document, read back from its hex, is one valid frame."""
    from dfachat.codec import decode_frame

    blocks = re.findall(r"Example, a frame of version (\d+):\n\n```text\n(.*?)```", doc, re.S)
    assert len(blocks) == len(example_frames())
    for version, block in blocks:
        lines = block.splitlines()
        data = bytes.fromhex("".join(re.findall(r"\b[0-9a-f]{2}\b", "\n".join(lines[1:]))))
        message = decode_frame(data, versions=frozenset({int(version)}))
        assert lines[0].split()[0] == message.NAME


# --- versions ------------------------------------------------------------------------------


def test_the_versions_section_names_each_version_and_the_negotiation(doc: str) -> None:
    text = _section(doc, "## Protocol versions")
    first = text.split("\n\n")[0]
    assert all(str(v) in first for v in SUPPORTED_VERSIONS)
    assert (
        "[R5.2](#r5-2)" in first and "`HELLO.versions`" in first and "`HELLO_OK.version`" in first
    )
    for version in LATER:
        assert mark(version) in text


@pytest.mark.parametrize("version", LATER)
def test_the_differences_section_lists_what_the_spec_says_the_version_added(
    doc: str, version: int
) -> None:
    previous = SUPPORTED_VERSIONS[SUPPORTED_VERSIONS.index(version) - 1]
    text = _section(doc, f"### Differences between versions {previous} and {version}")

    def item(label: str) -> str:
        found = re.search(rf"^- \*\*{label}:\*\*(.*)$", text, re.M)
        return found.group(1) if found else ""

    messages = [m for m in MESSAGES if m.since == version]
    assert re.findall(r"\[(\w+)\]\(#", item("Messages")) == [
        m.name for m in sorted(messages, key=lambda m: m.code)
    ]
    fields = [
        f"{m.name}.{name}"
        for m in sorted(MESSAGES, key=lambda m: m.code)
        for name, v in m.added
        if v == version and m.since < version
    ]
    assert re.findall(r"`(\w+\.\w+)`", item("Fields")) == fields
    values = re.findall(r"\[(\w+)\]\(#[^)]*\) (?:0x)?[0-9A-F]+ (\w+)", item("Values"))
    assert values == [(enum.__name__, name) for (enum, name), v in SINCE.items() if v == version]
    limits = re.findall(r"`(\w+)` \(\d+\)", item("Limits"))
    assert limits == [n for n in LIMITS.as_dict() if min(_limit_users(n), default=FIRST) == version]
    rules = re.findall(r"^  - \[(R\d+\.\d+)\]", text, re.M)
    assert rules == [r.id for r in RULES.values() if r.since == version]
    rows = []
    for role, state, trigger, guard, dest, _actions, rule in _table(text):
        conditions, unless = _parse_guard(guard)
        rows.append(
            (
                role,
                _plain(state),
                _parse_trigger(trigger),
                conditions,
                unless,
                None if dest == "(same)" else _plain(dest),
                _plain(rule),
            )
        )
    expected = [
        (role, state, trigger, conditions, unless, dest, rule)
        for role in ROLES
        for state, trigger, conditions, unless, dest, _after, rule, since_ in _expected_rows(role)
        if since_ == version
    ]
    assert rows == expected
    assert f"**State-table rows:** {len(expected)}," in text
