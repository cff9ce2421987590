"""Diagrams from the spec: state diagrams (DOT, SVG, Mermaid) and packet layouts.

The DOT source and the Mermaid text are parsed back into (state, label, next
state) rows and compared with :data:`~dfachat.spec.TRANSITIONS`, for each
protocol version (a row a later version added ends in `` (v2)``); the packet
diagrams are parsed back into fields and bit widths and compared with the
construct layouts of each version.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from dfachat.spec import (
    CLOSED_TRIGGER,
    MESSAGES,
    PROTOCOL_VERSION,
    ROLES,
    STATES,
    SUPPORTED_VERSIONS,
    TRANSITIONS,
    transitions_of,
)
from dfachat.spec.diagrams import (
    PHASES,
    GraphvizMissing,
    mermaid_state_diagram,
    packet_diagram_text,
    packet_fields,
    packets_svg,
    render_dot,
    render_state_diagram,
    state_dot,
)
from dfachat.spec.types import Ident, List, Text, unwrap

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
SVG = "{http://www.w3.org/2000/svg}"
FIRST = SUPPORTED_VERSIONS[0]
NEW_ROW_COLOR = "#1b7a3a"  # what a later version added is drawn in this green
_LABEL = r"(?:[?!]\w+|closed)(?: \[[^\]]*\])?(?: \(v\d+\))?"


def _label(t: dict) -> str:
    if t["trigger"] == CLOSED_TRIGGER:
        head = CLOSED_TRIGGER
    else:
        direction, _, message = t["trigger"].partition("_")
        head = ("?" if direction == "recv" else "!") + message
    guards = list(t["conditions"]) + [f"not {g}" for g in t["unless"]]
    suffix = f" (v{t['since']})" if t["since"] > FIRST else ""
    return head + (f" [{', '.join(guards)}]" if guards else "") + suffix


def _expected(role: str, version: int = PROTOCOL_VERSION) -> set[tuple[str, str, str | None]]:
    """(source, label, dest or None for internal) for every row of the role's table in
    ``version`` (a later version's table has every earlier one's rows)."""
    rows = set()
    for t in TRANSITIONS[role]:
        if t["since"] > version:
            continue
        sources = t["source"] if isinstance(t["source"], list) else [t["source"]]
        for source in sources:
            rows.add((source, _label(t), t["dest"]))
    return rows


def test_a_later_version_only_adds_rows() -> None:
    """What the drawings rely on: each version's rows are the earlier version's plus its own."""
    for role in ROLES:
        for older, newer in zip(SUPPORTED_VERSIONS, SUPPORTED_VERSIONS[1:], strict=False):
            old = transitions_of(role, older)
            new = transitions_of(role, newer)
            assert [t for t in new if t["since"] <= older] == old
            assert any(t["since"] == newer for t in new) or newer == FIRST


# --- DOT: the GraphMachine's graph ---------------------------------------------------------

_NODE = re.compile(r"^\t+(\w+) \[label=<(.*)>(.*)\]$")
_EDGE = re.compile(r'^\t+(\w+) -> (\w+) \[label="(.*?)" (.*)\]$')


def _parse_dot(source: str) -> dict:
    nodes: dict[str, dict] = {}
    edges = []
    cluster = None
    for line in source.splitlines():
        if m := re.match(r"^\tsubgraph cluster_(\w+) \{", line):
            cluster = m.group(1)
        elif line == "\t}":
            cluster = None
        elif m := _NODE.match(line):
            name, label, attrs = m.groups()
            rows = [re.sub(r"<[^>]+>", "", part) for part in label.split("<br/>")]
            nodes[name] = {"phase": cluster, "rows": rows, "attrs": attrs}
        elif m := _EDGE.match(line):
            edges.append((m.group(1), m.group(2), m.group(3).split("\\n") if m.group(3) else [], m.group(4)))
    return {"nodes": nodes, "edges": edges}


def _items(rows: list[str], mark: str) -> list[str]:
    """The labels of the node rows after ``mark`` (↺ internal, ◆ shared), split on spaces
    between labels (a guard's brackets keep its spaces)."""
    out: list[str] = []
    collecting = False
    for row in rows[1:]:
        if row.startswith(("↺ ", "◆ ")):
            collecting = row.startswith(mark)
            row = row[2:]
        if collecting:
            out += re.findall(_LABEL, row)
    return out


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
@pytest.mark.parametrize("role", ROLES)
def test_dot_is_every_transition_of_the_table(role: str, version: int) -> None:
    graph = _parse_dot(state_dot(role, version))
    nodes, edges = graph["nodes"], graph["edges"]
    drawn = set()
    for name, node in nodes.items():
        drawn |= {(name, label, None) for label in _items(node["rows"], "↺ ")}
    for source, dest, labels, _ in edges:
        if source.startswith("__start"):
            continue
        explicit = [x for x in labels if x != "+ ◆"]
        drawn |= {(source, x, dest) for x in explicit}
        if not labels or "+ ◆" in labels:  # the shared labels, written in the destination
            drawn |= {(source, x, dest) for x in _items(nodes[dest]["rows"], "◆ ")}
    assert drawn == _expected(role, version)


@pytest.mark.parametrize("role", ROLES)
def test_dot_groups_states_by_phase_and_marks_initial_and_terminal(role: str) -> None:
    graph = _parse_dot(state_dot(role))
    nodes = graph["nodes"]
    for s in STATES[role]:
        assert nodes[s.name]["phase"] == s.phase in PHASES
        assert ("peripheries=2" in nodes[s.name]["attrs"]) == s.terminal
    starts = [dest for source, dest, _, _ in graph["edges"] if source.startswith("__start")]
    assert starts == [s.name for s in STATES[role] if s.initial]


@pytest.mark.parametrize("role", ROLES)
def test_dot_tells_send_from_receive_and_new_from_old(role: str) -> None:
    for source, _, labels, attrs in _parse_dot(state_dot(role))["edges"]:
        if source.startswith("__start") or not labels or "+ ◆" in labels:
            continue
        kinds = {x[0] if x[0] in "?!" else "closed" for x in labels}
        assert len(kinds) == 1, labels  # one direction per edge, so its style says which
        style = re.search(r"style=(\w+)", attrs).group(1)
        assert style == {"?": "solid", "!": "dashed", "closed": "dotted"}[kinds.pop()]
        # one version per edge too, so its colour says whether a later version added it
        new = {bool(re.search(r" \(v\d+\)$", x)) for x in labels}
        assert len(new) == 1, labels
        assert (f'color="{NEW_ROW_COLOR}"' in attrs) == new.pop(), labels


@pytest.mark.parametrize("role", ROLES)
def test_dot_colours_the_internal_rows_a_later_version_added(role: str) -> None:
    source = state_dot(role)
    green = set(re.findall(rf'<font color="{NEW_ROW_COLOR}">([^<]*)</font>', source))
    internal = {_label(t) for t in TRANSITIONS[role] if t["since"] > FIRST and t["dest"] is None}
    assert green == internal
    first = state_dot(role, FIRST)  # the first version alone: nothing to mark
    assert NEW_ROW_COLOR not in first and not re.search(r" \(v\d+\)", first)


def test_dot_is_deterministic() -> None:
    assert state_dot("server") == state_dot("server")


@needs_dot
@pytest.mark.parametrize("role", ROLES)
def test_svg_names_every_state_and_message(role: str) -> None:
    svg = ET.fromstring(render_state_diagram(role, "svg"))
    text = " ".join(t.text or "" for t in svg.iter(f"{SVG}text"))
    for s in STATES[role]:
        assert re.search(rf"\b{s.name}\b", text), s.name
    for t in TRANSITIONS[role]:
        if t["trigger"] != CLOSED_TRIGGER:
            direction, _, message = t["trigger"].partition("_")
            assert ("?" if direction == "recv" else "!") + message in text, t["trigger"]


@needs_dot
def test_svgs_together_name_every_message_of_the_spec() -> None:
    text = " ".join(
        t.text or ""
        for role in ROLES
        for t in ET.fromstring(render_state_diagram(role, "svg")).iter(f"{SVG}text")
    )
    for spec in MESSAGES:
        assert re.search(rf"[?!]{spec.name}\b", text), spec.name


@needs_dot
def test_png_and_pdf_render() -> None:
    assert render_state_diagram("client", "png").startswith(b"\x89PNG")
    assert render_state_diagram("client", "pdf").startswith(b"%PDF")


def test_dot_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    with pytest.raises(GraphvizMissing, match="apt-get install graphviz"):
        render_state_diagram("server", "svg")
    with pytest.raises(GraphvizMissing):
        render_dot(state_dot("server"), "png")
    assert state_dot("server")  # DOT and Mermaid need no Graphviz
    assert render_state_diagram("server", "mermaid")


def test_dot_missing_from_path_in_a_subprocess(tmp_path) -> None:
    env = {**os.environ, "PATH": str(tmp_path)}  # an empty directory: no dot
    cmd = [sys.executable, "-m", "dfachat", "diagram", "--role", "server", "--format", "svg"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "dot" in result.stderr and "apt-get install graphviz" in result.stderr
    assert "--format mermaid" in result.stderr
    assert "Traceback" not in result.stderr
    cmd[-1] = "mermaid"
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("stateDiagram-v2")


# --- Mermaid -------------------------------------------------------------------------------


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
@pytest.mark.parametrize("role", ROLES)
def test_detailed_mermaid_contains_every_transition(role: str, version: int) -> None:
    lines = mermaid_state_diagram(role, detailed=True, version=version).splitlines()
    assert lines[0] == "stateDiagram-v2"
    drawn = set()
    note_of = None
    classes = {}
    for line in lines[1:]:
        line = line.strip()
        if m := re.fullmatch(r"note right of (\w+)", line):
            note_of = m.group(1)
        elif line == "end note":
            note_of = None
        elif note_of is not None:
            body = line.removeprefix("keeps the state on ")
            drawn |= {(note_of, x, None) for x in re.findall(_LABEL, body)}
        elif m := re.fullmatch(r"(\w+) --> (\w+) : (.*)", line):
            drawn |= {(m.group(1), x, m.group(2)) for x in m.group(3).split("<br/>")}
        elif m := re.fullmatch(r"class ([\w,]+) (\w+)", line):
            classes.update({state: m.group(2) for state in m.group(1).split(",")})
    assert drawn == _expected(role, version)
    assert classes == {s.name: s.phase for s in STATES[role]}


def test_plain_mermaid_is_the_protocol_documents() -> None:
    from dfachat.spec.document import render_protocol_markdown

    doc = render_protocol_markdown()
    for role in ROLES:
        assert "```mermaid\n" + mermaid_state_diagram(role) + "```" in doc


# --- packets -------------------------------------------------------------------------------


def _fixed_prefix(layout) -> list[tuple[str, int]]:
    """(field, offset) of the fields before the first one of variable size."""
    out, offset = [], 0
    for sub in layout.subcons:
        out.append((sub.name, offset))
        con = unwrap(sub)
        if isinstance(con, (Ident, Text, List)):
            break
        offset += con.sizeof()
    return out


def _bit_cells(diagram: str) -> list[tuple[str, int | None]]:
    """(label, bits) of the diagram's boxes in order; a `/` row is (label, None); the
    continuation of a field crossing a row is merged into it."""
    out: list[tuple[str, int | None]] = []
    for line in diagram.splitlines():
        if line.startswith("/"):
            out.append((line.strip("/ "), None))
        elif line.startswith("|"):
            for cell in line[1:-1].split("|"):
                name, bits = cell.strip(), (len(cell) + 1) // 2
                if name.startswith("(") and out and out[-1][1] is not None:
                    out[-1] = (out[-1][0], out[-1][1] + bits)
                else:
                    out.append((name, bits))
    return out


# every (message, version) pair the message exists in
_SPEC_VERSIONS = [(spec, v) for spec in MESSAGES for v in SUPPORTED_VERSIONS if spec.in_version(v)]
_SPEC_VERSION_IDS = [f"{spec.name}-v{v}" for spec, v in _SPEC_VERSIONS]


@pytest.mark.parametrize(("spec", "version"), _SPEC_VERSIONS, ids=_SPEC_VERSION_IDS)
def test_packet_diagram_lists_every_field_with_fixed_offsets(spec, version: int) -> None:
    layout = spec.layout_for(version)
    text = packet_diagram_text(spec, version=version)
    listed = {}
    lines = text.splitlines()
    assert lines[0] == f"{spec.name} (type 0x{spec.code:02X}) payload" + (
        f" (v{spec.since})" if spec.since > FIRST else ""
    )
    header = next((k for k, line in enumerate(lines) if re.match(r"field\s+offset\s+size$", line)), None)
    for line in lines[header + 1 :] if header is not None else []:
        parts = re.split(r"\s{2,}", line.strip())
        listed[parts[0]] = parts[1]
    fields = packet_fields(spec, version)
    assert [f.path for f in fields] == list(listed)
    for name, offset in _fixed_prefix(layout):
        assert listed[name] == str(offset), name
    for sub in spec.layout.subcons:
        # a field a later version added is not in an earlier version's frames
        assert (sub.name in text) == (spec.field_since(sub.name) <= version), sub.name


@pytest.mark.parametrize(("spec", "version"), _SPEC_VERSIONS, ids=_SPEC_VERSION_IDS)
def test_packet_bit_diagram_has_the_layouts_widths(spec, version: int) -> None:
    cells = _bit_cells(packet_diagram_text(spec, fields=False, version=version).split("\n\neach ")[0])
    expected: list[tuple[str, int | None]] = []
    for sub in spec.layout_for(version).subcons:
        con = unwrap(sub)
        if isinstance(con, Ident):
            expected += [("len", 8 * con.length_field.sizeof()), (sub.name, None)]
        elif isinstance(con, Text):
            expected += [("len", 8 * con.subcon.lengthfield.sizeof()), (sub.name, None)]
        elif isinstance(con, List):
            expected += [("count", 8 * con.count_field.sizeof()), (sub.name, None)]
        else:
            expected.append((sub.name, 8 * con.sizeof()))
    assert [bits for _, bits in cells] == [bits for _, bits in expected]
    for (drawn, _), (name, _) in zip(cells, expected, strict=True):
        assert name in drawn, (drawn, name)
    for line in packet_diagram_text(spec, version=version).splitlines():
        if line[:1] in "|/+":
            assert len(line) <= 65  # 32 bits, two columns each, and the closing mark


@pytest.mark.parametrize("spec", [s for s in MESSAGES if any(v > s.since for _, v in s.added)], ids=lambda s: s.name)
def test_packet_diagram_marks_the_fields_a_later_version_added(spec) -> None:
    text = packet_diagram_text(spec, fields=False)
    for sub in spec.layout.subcons:
        version = spec.field_since(sub.name)
        marked = re.search(rf"\b{sub.name}\b[^|/]*\(v{version}\)", text) is not None
        assert marked == (version > spec.since), sub.name


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_packets_svg_names_every_field(version: int) -> None:
    svg = ET.fromstring(packets_svg(version).encode("utf-8"))
    groups = {g.get("id"): g for g in svg.iter(f"{SVG}g")}
    assert set(groups) == {f"msg-{spec.name}" for spec in MESSAGES if spec.in_version(version)}
    for spec in MESSAGES:
        if not spec.in_version(version):
            continue
        group = groups[f"msg-{spec.name}"]
        texts = [t.text for t in group.iter(f"{SVG}text")]
        layout = spec.layout_for(version)
        assert [sub.name for sub in spec.layout.subcons if sub.name in texts] == [
            sub.name for sub in layout.subcons
        ], spec.name
        for name, offset in _fixed_prefix(layout):
            index = texts.index(name)
            assert str(offset) in texts[index:], (spec.name, name)
        # what a later version added is green, and nothing else is
        green = {
            r.get("x") for r in group.iter(f"{SVG}rect") if r.get("stroke") == NEW_ROW_COLOR
        }
        added = [name for name, v in spec.added if spec.since < v <= version]
        assert len(green) == len(added), spec.name
        assert (f"(v{spec.since})" in texts) == (spec.since > FIRST), spec.name


# --- the command ---------------------------------------------------------------------------


def test_cli_state_diagrams(tmp_path, capsys: pytest.CaptureFixture) -> None:
    from dfachat import cli

    assert cli.main(["diagram", "--role", "client"]) == 0  # mermaid by default: no Graphviz
    assert capsys.readouterr().out == mermaid_state_diagram("client", detailed=True)
    assert cli.main(["diagram", "--role", "server", "--format", "dot"]) == 0
    assert capsys.readouterr().out == state_dot("server")
    assert cli.main(["diagram", "-o", str(tmp_path / "m.mmd")]) == 0  # both roles, one file each
    assert (tmp_path / "m-server.mmd").read_text() == mermaid_state_diagram("server", detailed=True)
    assert (tmp_path / "m-client.mmd").read_text() == mermaid_state_diagram("client", detailed=True)
    assert cli.main(["diagram", "--role", "server", "--format", "text"]) == 2
    assert "svg, png, pdf, dot or mermaid" in capsys.readouterr().err


@needs_dot
def test_cli_renders_svg_to_a_file(tmp_path, capsys: pytest.CaptureFixture) -> None:
    from dfachat import cli

    assert cli.main(["diagram", "--role", "server", "-o", str(tmp_path / "s.svg")]) == 0
    ET.parse(tmp_path / "s.svg")
    assert f"wrote {tmp_path / 's.svg'}" in capsys.readouterr().out


def test_cli_sequences_and_packets(capsys: pytest.CaptureFixture) -> None:
    from dfachat import cli
    from dfachat.conformance.scenarios import SCENARIOS, run_scenario, sequence_mermaid

    assert cli.main(["diagram", "--list"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == list(SCENARIOS)
    assert cli.main(["diagram", "--sequence", "quit"]) == 0
    assert capsys.readouterr().out == sequence_mermaid(run_scenario("quit"))
    assert cli.main(["diagram", "--sequence", "quit", "--format", "svg"]) == 0
    ET.fromstring(capsys.readouterr().out.encode("utf-8"))
    assert cli.main(["diagram", "--sequence", "nope"]) == 2
    err = capsys.readouterr().err
    assert "no scenario named 'nope'" in err and "login" in err and "Traceback" not in err
    assert cli.main(["diagram", "--sequence", "quit", "--format", "png"]) == 2


def test_cli_packets(capsys: pytest.CaptureFixture) -> None:
    from dfachat import cli

    assert cli.main(["diagram", "--packets"]) == 0
    out = capsys.readouterr().out
    assert all(f"{spec.name} (type 0x{spec.code:02X}) payload" in out for spec in MESSAGES)
    assert cli.main(["diagram", "--packets", "--format", "pdf"]) == 2
    assert "--packets draws text or svg" in capsys.readouterr().err


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_cli_draws_one_version(version: int, capsys: pytest.CaptureFixture) -> None:
    from dfachat import cli
    from dfachat.spec.diagrams import packet_diagrams_text

    assert cli.main(["diagram", "--role", "client", "--protocol-version", str(version)]) == 0
    assert capsys.readouterr().out == mermaid_state_diagram("client", detailed=True, version=version)
    assert cli.main(["diagram", "--role", "server", "--format", "dot", "--protocol-version", str(version)]) == 0
    assert capsys.readouterr().out == state_dot("server", version)
    assert cli.main(["diagram", "--packets", "--protocol-version", str(version)]) == 0
    out = capsys.readouterr().out
    assert out == packet_diagrams_text(version)
    for spec in MESSAGES:
        assert (f"{spec.name} (type 0x{spec.code:02X}) payload" in out) == spec.in_version(version)


def test_cli_refuses_an_unknown_version(capsys: pytest.CaptureFixture) -> None:
    from dfachat import cli

    unknown = max(SUPPORTED_VERSIONS) + 1
    assert cli.main(["diagram", "--protocol-version", str(unknown)]) == 2
    err = capsys.readouterr().err
    assert f"--protocol-version {unknown}" in err and "Traceback" not in err
    assert cli.main(["diagram", "--sequence", "quit", "--protocol-version", str(FIRST)]) == 2
    assert "not --sequence" in capsys.readouterr().err
    with pytest.raises(Exception, match="not one of"):
        mermaid_state_diagram("client", version=unknown)
