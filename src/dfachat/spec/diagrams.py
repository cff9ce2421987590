"""Diagrams generated from the spec: state diagrams and packet layouts (``dfachat diagram``).

* State diagrams: each role's machine is built from :data:`~dfachat.spec.machine.TRANSITIONS`
  as a ``transitions`` :class:`~transitions.extensions.diagrams.GraphMachine` with the
  graphviz engine. Its graph class is transitions' own, extended only in how it lays out
  what the machine's markup lists: states grouped in one cluster per phase
  (:attr:`~dfachat.spec.machine.StateSpec.phase`), the initial state entered from a dot,
  terminal states drawn double, received messages (``?M``, solid) told apart from sent
  ones (``!M``, dashed) and the transport closing (dotted), and internal transitions (those
  keeping the state) listed inside their state instead of drawn as loops.
  :func:`state_dot` is the DOT source, :func:`render_state_diagram` runs Graphviz's ``dot``
  on it; :func:`mermaid_state_diagram` is the same machine as a Mermaid ``stateDiagram-v2``,
  which needs no native program. Each draws one protocol version's machine (the newest by
  default); a row a later version added than the first carries the suffix ``(v2)`` in its
  label, and Graphviz draws its edge in green, so one drawing shows both versions.
* Packet diagrams: each message's payload as an RFC-style ASCII bit diagram
  (:func:`packet_diagram_text`) and all of them as one SVG table (:func:`packets_svg`),
  both read off the construct layouts of one version (the newest by default); the offsets
  are those of the protocol document's field walk, and what a later version added is marked
  ``(v2)`` (text) or green (SVG).
* The generated docs (``dfachat docs``): :func:`write_docs` regenerates ``PROTOCOL.md`` and
  everything under ``diagrams/``; :func:`stale_docs` lists what is out of date. Graphviz's
  SVG differs between Graphviz versions, so a rendered SVG is not compared byte for byte:
  it carries the SHA-256 of the DOT source it was drawn from, and is stale when that is not
  the current source's. Every other file is compared exactly.
"""

from __future__ import annotations

import hashlib
import html
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import graphviz  # the Python package (a dependency); the `dot` program may be missing
from construct import Construct, FormatField, Struct
from transitions.extensions.diagrams import GraphMachine, TransitionGraphSupport
from transitions.extensions.diagrams_graphviz import Graph

from dfachat.errors import DfachatError
from dfachat.spec.document import (
    _guard_label,
    _messages,
    _sizeof,
    _trigger_label,
    _walk,
    since_label,
    transition_rows,
)
from dfachat.spec.limits import PROTOCOL_VERSION, SUPPORTED_VERSIONS
from dfachat.spec.machine import (
    CLOSED_TRIGGER,
    ROLES,
    STATES,
    RuleTransition,
    build_machine,
    transitions_of,
)
from dfachat.spec.messages import MessageSpec
from dfachat.spec.types import Ident, List, Text, unwrap

__all__ = [
    "DIAGRAMS_DIR",
    "GRAPHVIZ_FORMATS",
    "PHASES",
    "GraphvizMissing",
    "PacketField",
    "graph_machine",
    "mermaid_state_diagram",
    "packet_diagram_text",
    "packet_diagrams_text",
    "packet_fields",
    "packets_svg",
    "render_dot",
    "render_state_diagram",
    "stale_docs",
    "state_dot",
    "write_docs",
]

GRAPHVIZ_FORMATS = ("svg", "png", "pdf")  # what `dot` renders; dot and mermaid are text

# The phases, in the order the states declare them (a session goes through them in order).
PHASES: tuple[str, ...] = tuple(dict.fromkeys(s.phase for role in ROLES for s in STATES[role]))

INSTALL_GRAPHVIZ = (
    "Graphviz's `dot` program is not on PATH, and rendering svg, png or pdf needs it. "
    "Install Graphviz (Debian/Ubuntu: `sudo apt-get install graphviz`; Fedora: "
    "`sudo dnf install graphviz`; macOS: `brew install graphviz`; Windows: "
    "`winget install graphviz`), or ask for `--format dot` or `--format mermaid`, "
    "which need no native program."
)


class GraphvizMissing(DfachatError):
    """Rendering needs Graphviz's ``dot`` and it is not installed."""

    def __init__(self) -> None:
        super().__init__(INSTALL_GRAPHVIZ)


# --- the state diagram: transitions' GraphMachine ------------------------------------------

# Edge styles by what triggers the transition (the label's prefix says it too).
_EDGE_STYLES = {
    "recv": {"style": "solid", "color": "#1f4e9a", "fontcolor": "#1f4e9a"},
    "send": {"style": "dashed", "color": "#9a4a00", "fontcolor": "#9a4a00"},
    CLOSED_TRIGGER: {"style": "dotted", "color": "#707070", "fontcolor": "#707070"},
}
# A row a later version added keeps its direction's line style, in this colour.
_NEW_ROW_COLOR = "#1b7a3a"
# Cluster fills, given to the phases in order.
_FILLS = ("#eef4fb", "#f3f0fa", "#eef8ee", "#f7f1ea", "#f5f5f5", "#fbf3f3")
_PHASE_FILL = {phase: _FILLS[i % len(_FILLS)] for i, phase in enumerate(PHASES)}
_INTERNAL_PER_LINE = 4


def _direction(trigger: str) -> str:
    return CLOSED_TRIGGER if trigger == CLOSED_TRIGGER else trigger.partition("_")[0]


def _label(transition: dict[str, Any], since: int = SUPPORTED_VERSIONS[0]) -> str:
    """``?MSG``, ``!AUTH_OK [has_more]``, ``closed``: the protocol document's edge label, with
    `` (v2)`` after the label of a row a later version added (``since``)."""
    guards = {"conditions": transition.get("conditions", []), "unless": transition.get("unless", [])}
    return _trigger_label(transition["trigger"]) + _guard_label(guards) + since_label(since)


def _row_key(trigger: str, source: str, dest: str | None, conditions: Any, unless: Any) -> tuple[Any, ...]:
    return (trigger, source, dest, tuple(conditions or ()), tuple(unless or ()))


def _since_of(role: str) -> dict[tuple[Any, ...], int]:
    """The version of each of ``role``'s rows, by what transitions' markup keeps of a row
    (the machine it builds does not carry ``since``)."""
    found: dict[tuple[Any, ...], int] = {}
    for t in transitions_of(role, PROTOCOL_VERSION):
        for source in t["source"] if isinstance(t["source"], list) else [t["source"]]:
            key = _row_key(t["trigger"], source, t["dest"], t["conditions"], t["unless"])
            found[key] = min(found.get(key, t["since"]), t["since"])
    return found


def _markup_since(since: dict[tuple[Any, ...], int], t: dict[str, Any]) -> int:
    return since[_row_key(t["trigger"], t["source"], t.get("dest"), t.get("conditions"), t.get("unless"))]


class _RuleGraphTransition(TransitionGraphSupport, RuleTransition):
    """The spec's transition (with its rule), with transitions' diagram support."""


def _spec_order(role: str) -> list[str]:
    """Every label of ``role``'s transitions, in declaration order."""
    return list(dict.fromkeys(_label(t, t["since"]) for t in transitions_of(role, PROTOCOL_VERSION)))


_EdgeMap = dict[tuple[str, str], dict[tuple[str, bool], list[str]]]


def _edge_map(transitions: list[dict[str, Any]], since: dict[tuple[Any, ...], int]) -> _EdgeMap:
    """(source, dest) -> (direction, added by a later version) -> labels, for the transitions
    that change the state: a later version's rows get edges of their own, drawn in green."""
    edges: _EdgeMap = {}
    for t in transitions:
        if "dest" not in t:
            continue  # internal: drawn inside the state
        version = _markup_since(since, t)
        by_kind = edges.setdefault((t["source"], t["dest"]), {})
        labels = by_kind.setdefault((_direction(t["trigger"]), bool(since_label(version))), [])
        if _label(t, version) not in labels:
            labels.append(_label(t, version))
    return edges


def _edge_style(direction: str, new: bool) -> dict[str, str]:
    style = dict(_EDGE_STYLES[direction])
    if new:
        style.update(color=_NEW_ROW_COLOR, fontcolor=_NEW_ROW_COLOR)
    return style


_LATER_SUFFIXES = tuple(since_label(v) for v in SUPPORTED_VERSIONS if since_label(v))


def _node_label(label: str) -> str:
    """A label inside a state's box (HTML), green when a later version added its row."""
    text = html.escape(label)
    return f'<font color="{_NEW_ROW_COLOR}">{text}</font>' if label.endswith(_LATER_SUFFIXES) else text


class _PhaseGraph(Graph):
    """transitions' graphviz ``Graph``, laying out the machine's states by phase.

    The nodes and edges are still the machine's markup (``_get_elements``); only how they
    are grouped and styled is decided here.
    """

    def _add_nodes(self, states: list[dict[str, Any]], container: Any) -> None:
        role = self.machine.role
        since = _since_of(role)
        specs = {s.name: s for s in STATES[role]}
        internal: dict[str, list[str]] = {}
        transitions = self._get_elements()[1]
        common = self._common_labels(_edge_map(transitions, since))
        every_label = _spec_order(role)
        for t in transitions:
            if "dest" not in t:  # an internal transition: the state does not change
                labels = internal.setdefault(t["source"], [])
                label = _label(t, _markup_since(since, t))
                if label not in labels:
                    labels.append(label)
        for labels in internal.values():
            labels.sort(key=every_label.index)
        for phase in PHASES:
            names = [s["name"] for s in states if specs[s["name"]].phase == phase]
            if not names:
                continue
            with container.subgraph(name=f"cluster_{phase}") as cluster:
                cluster.attr(
                    label=phase, style="rounded,filled", color="#b0b0b0",
                    fillcolor=_PHASE_FILL[phase], fontname="Helvetica-Bold",
                )
                for name in names:
                    spec = specs[name]
                    lines = [f"<b>{html.escape(name)}</b>"]
                    loops = internal.get(name, [])
                    for i in range(0, len(loops), _INTERNAL_PER_LINE):
                        chunk = " ".join(_node_label(x) for x in loops[i : i + _INTERNAL_PER_LINE])
                        lines.append(f'<font point-size="9">{"↺ " if i == 0 else ""}{chunk}</font>')
                    shared = common.get(name)
                    if shared:
                        ordered = [x for x in every_label if x in shared]
                        for i in range(0, len(ordered), _INTERNAL_PER_LINE):
                            chunk = " ".join(_node_label(x) for x in ordered[i : i + _INTERNAL_PER_LINE])
                            lines.append(f'<font point-size="9">{"◆ " if i == 0 else ""}{chunk}</font>')
                    attrs = {"peripheries": "2"} if spec.terminal else {}
                    if spec.initial:
                        attrs["penwidth"] = "2"
                    cluster.node(name, label="<" + "<br/>".join(lines) + ">", **attrs)
        for s in STATES[role]:
            if s.initial:
                start = f"__start_{s.name}"
                container.node(start, label="", shape="point", width="0.15")
                container.edge(start, s.name, label="", style="solid", color="black")

    def _add_edges(self, transitions: list[dict[str, Any]], container: Any) -> None:
        edges = _edge_map(transitions, _since_of(self.machine.role))
        common = self._common_labels(edges)
        for (source, dest), by_kind in edges.items():
            shared = common.get(dest)
            every = {label for labels in by_kind.values() for label in labels}
            if shared is not None and shared <= every:
                # Most states reach this terminal state on the same labels: one unlabelled
                # edge each, the labels written once in the terminal state (see _terminal_note).
                extra = [label for labels in by_kind.values() for label in labels if label not in shared]
                text = "\\n".join([*extra, "+ ◆"]) if extra else ""
                container.edge(source, dest, label=text, **_EDGE_STYLES[CLOSED_TRIGGER])
                continue
            for (direction, new), labels in by_kind.items():
                container.edge(source, dest, label="\\n".join(labels), **_edge_style(direction, new))

    def _common_labels(self, edges: _EdgeMap) -> dict[str, frozenset[str]]:
        """Per terminal state, the label set most of its incoming edges carry (3 or more)."""
        terminal = {s.name for s in STATES[self.machine.role] if s.terminal}
        found: dict[str, frozenset[str]] = {}
        for dest in sorted(terminal):
            sets = [
                frozenset(label for labels in by_direction.values() for label in labels)
                for (_, d), by_direction in edges.items()
                if d == dest
            ]
            best = max(sets, key=lambda s: (sum(s <= other for other in sets), len(s)), default=None)
            if best is not None and sum(best <= other for other in sets) >= 3:
                found[dest] = best
        return found

class _SpecGraphMachine(GraphMachine):
    """A GraphMachine of the spec's transitions, drawn by :class:`_PhaseGraph`."""

    transition_cls = _RuleGraphTransition

    def __init__(self, *args: Any, role: str, version: int, **kwargs: Any) -> None:
        self.role = role
        self.version = version
        super().__init__(*args, graph_engine="graphviz", show_conditions=True, **kwargs)

    def _init_graphviz_engine(self, graph_engine: str) -> type:
        return _PhaseGraph


def _check_version(version: int) -> None:
    if version not in SUPPORTED_VERSIONS:
        raise DfachatError(
            f"protocol version {version} is not one of {', '.join(map(str, SUPPORTED_VERSIONS))}"
        )


def graph_machine(role: str, version: int = PROTOCOL_VERSION) -> GraphMachine:
    """``role``'s machine in protocol ``version`` as a transitions ``GraphMachine`` (the
    graphviz engine), no model."""
    _check_version(version)

    def make(**kwargs: Any) -> GraphMachine:
        title = f"dfachat {role} state machine, protocol version {version}"
        return _SpecGraphMachine(role=role, version=version, title=title, **kwargs)

    return build_machine(role, version=version, machine_cls=make)  # type: ignore[arg-type]


def _graph(role: str, version: int = PROTOCOL_VERSION) -> Any:
    machine = graph_machine(role, version)
    graph = machine.graph_cls(machine).get_graph()
    later = [v for v in SUPPORTED_VERSIONS if since_label(v) and v <= version]
    graph.graph_attr["label"] = (
        f"{machine.title}\\n?M receives M (solid), !M sends M (dashed), "
        f"{CLOSED_TRIGGER}: the transport ended (dotted), [guards]"
        + "".join(f";{since_label(v)} a row version {v} added (green)" for v in later)
        + "\\n↺ transitions that keep the state; ◆ the labels of the unlabelled edges into a state"
    )
    graph.graph_attr.update(
        rankdir="TB", fontname="Helvetica", nodesep="0.35", ranksep="0.45", labelloc="t",
        newrank="true",
    )
    graph.node_attr.update(fontname="Helvetica", fontsize="11", style="rounded,filled")
    graph.edge_attr.update(fontname="Helvetica", fontsize="9")
    return graph


def state_dot(role: str, version: int = PROTOCOL_VERSION) -> str:
    """The DOT source of ``role``'s state diagram in ``version`` (deterministic: the spec's
    order)."""
    return str(_graph(role, version).source)


def render_dot(source: str, fmt: str) -> bytes:
    """``source`` rendered by Graphviz's ``dot`` as ``fmt`` (svg, png or pdf)."""
    if fmt not in GRAPHVIZ_FORMATS:
        raise ValueError(f"dot renders {', '.join(GRAPHVIZ_FORMATS)}, not {fmt!r}")
    if shutil.which("dot") is None:
        raise GraphvizMissing()
    try:
        return bytes(graphviz.Source(source).pipe(format=fmt))
    except graphviz.ExecutableNotFound:  # PATH changed between the check and the run
        raise GraphvizMissing() from None


def render_state_diagram(role: str, fmt: str, version: int = PROTOCOL_VERSION) -> bytes:
    """``role``'s state diagram in protocol ``version`` as ``fmt``: svg, png, pdf (through
    ``dot``), dot or mermaid."""
    if fmt == "dot":
        return state_dot(role, version).encode("utf-8")
    if fmt == "mermaid":
        return mermaid_state_diagram(role, detailed=True, version=version).encode("utf-8")
    if fmt not in GRAPHVIZ_FORMATS:
        raise ValueError(f"state diagrams are svg, png, pdf, dot or mermaid, not {fmt!r}")
    _check_version(version)
    if shutil.which("dot") is None:
        raise GraphvizMissing()
    try:
        return bytes(_graph(role, version).draw(None, format=fmt, prog="dot"))  # transitions' own draw
    except graphviz.ExecutableNotFound:  # PATH changed between the check and the run
        raise GraphvizMissing() from None


# --- Mermaid --------------------------------------------------------------------------------


def mermaid_state_diagram(role: str, *, detailed: bool = False, version: int = PROTOCOL_VERSION) -> str:
    """``role``'s machine in protocol ``version`` as a Mermaid ``stateDiagram-v2`` (no fences).

    Plain: one line per (source, destination) with every label, the initial and terminal
    states; the protocol document embeds this. ``detailed`` adds a class per phase (Mermaid
    cannot draw transitions across composite states, so phases are colours) and a note on
    each state listing its internal transitions, so every row of the table is in the text.
    A row a later version added has the suffix `` (v2)``.
    """
    _check_version(version)
    lines = ["stateDiagram-v2"]
    initial = next(s.name for s in STATES[role] if s.initial)
    lines.append(f"    [*] --> {initial}")
    edges: dict[tuple[str, str], list[str]] = {}
    internal: dict[str, list[str]] = {}
    for source, t in transition_rows(role, version):
        label = _trigger_label(t["trigger"]) + _guard_label(t) + since_label(t["since"])
        if t["dest"] is None:
            loops = internal.setdefault(source, [])
            if label not in loops:
                loops.append(label)
            continue
        labels = edges.setdefault((source, t["dest"]), [])
        if label not in labels:
            labels.append(label)
    for (source, dest), labels in edges.items():
        lines.append(f"    {source} --> {dest} : {'<br/>'.join(labels)}")
    lines += [f"    {s.name} --> [*]" for s in STATES[role] if s.terminal]
    if detailed:
        for state, loops in internal.items():
            lines.append(f"    note right of {state}")
            lines.append("        keeps the state on " + ", ".join(loops))
            lines.append("    end note")
        for phase in PHASES:
            members = [s.name for s in STATES[role] if s.phase == phase]
            if members:
                lines.append(f"    classDef {phase} fill:{_PHASE_FILL[phase]},stroke:#888")
                lines.append(f"    class {','.join(members)} {phase}")
    return "\n".join(lines) + "\n"


# --- packet diagrams --------------------------------------------------------------------------

_ROW_BITS = 32


@dataclass(frozen=True, slots=True)
class PacketField:
    """One field of a payload: ``offset`` is a number of bytes while every earlier field is
    fixed, else relative (``after `text` + 2``), as in the protocol document."""

    path: str
    offset: str
    size: str
    wire: str


def packet_fields(spec: MessageSpec, version: int = PROTOCOL_VERSION) -> list[PacketField]:
    """Every field of ``spec``'s payload in a frame of ``version``, list items (``[i]``)
    included."""
    return [PacketField(f.path, f.offset, f.size, f.wire) for f in _walk(spec.layout_for(version))]


def _field_marks(spec: MessageSpec) -> dict[str, str]:
    """Field name -> `` (v2)`` for the fields a version later than the message's added."""
    return {name: since_label(v) for name, v in spec.added if v > spec.since and since_label(v)}


@dataclass(frozen=True, slots=True)
class _Cell:
    label: str
    bits: int | None  # None: variable size
    short: str = ""  # the label when ``label`` does not fit its box

    def fitted(self, width: int) -> str:
        return self.label if len(self.label) <= width or not self.short else self.short


def _cells(layout: Struct, marks: dict[str, str] | None = None) -> Iterator[_Cell]:
    """The boxes of a layout: fixed integers, length/count prefixes, then variable bodies;
    ``marks`` (field name -> suffix) labels the fields a later version added."""
    marks = marks or {}
    for sub in layout.subcons:
        con = unwrap(sub)
        name = sub.name
        mark = marks.get(name, "")
        fixed = _sizeof(con)
        if fixed is not None and not isinstance(con, (Ident, Text, List)):
            yield _Cell(name + mark, 8 * fixed, name if mark else "")
        elif isinstance(con, Ident):
            yield _Cell(f"{name} len{mark}", 8 * con.length_field.sizeof(), "len")
            yield _Cell(f"{name}: len ASCII bytes ({con.kind}){mark}", None)
        elif isinstance(con, Text):
            yield _Cell(f"{name} len{mark}", 8 * con.subcon.lengthfield.sizeof(), "len")
            yield _Cell(f"{name}: len bytes of TEXT in the session's encoding{mark}", None)
        elif isinstance(con, List):
            item = unwrap(con.item)
            what = f"{con.item.name} records" if con.record is not None else _item_kind(item)
            yield _Cell(f"{name} count{mark}", 8 * con.count_field.sizeof(), "count")
            yield _Cell(f"{name}: count x {what}{mark}", None)
        else:
            raise TypeError(f"no packet diagram for {name}: {con!r}")


def _item_kind(item: Construct) -> str:
    if isinstance(item, Ident):
        return f"(len, {item.kind})"
    if isinstance(item, FormatField):
        return f"u{8 * item.sizeof()}"
    return "item"


def _fit(text: str, width: int) -> str:
    if len(text) > width:
        text = text[: max(width - 1, 0)] + "~"
    return text.center(width)


def _rule(bits: int) -> str:
    return "+" + "-+" * bits


def _bit_diagram(cells: Iterable[_Cell]) -> list[str]:
    """An RFC 791-style diagram: 32 bits a row, two columns a bit.

    A field crossing a row boundary continues on the next row (``(cont.)``); a variable
    field takes a row of its own between ``/`` marks, and the fields after it start on a
    new row, right where it ends (there is no padding).
    """
    out = [
        " " + "".join(f"{b // 10 if b % 10 == 0 else ' ':<2}" for b in range(_ROW_BITS)).rstrip(),
        " " + " ".join(str(b % 10) for b in range(_ROW_BITS)),
    ]
    row: list[tuple[str, int]] = []  # (label, bits) on the current row
    used = 0

    def flush() -> None:
        nonlocal row, used
        if row:
            out.append("|" + "|".join(_fit(label, 2 * bits - 1) for label, bits in row) + "|")
            out.append(_rule(used))
        row, used = [], 0

    out.append(_rule(_ROW_BITS))
    for cell in cells:
        if cell.bits is None:
            flush()
            out.append("/" + _fit(cell.label, 2 * _ROW_BITS - 1) + "/")
            out.append(_rule(_ROW_BITS))
            continue
        left = cell.bits
        first = True
        while left:
            take = min(left, _ROW_BITS - used)
            width = 2 * take - 1
            if first:
                label = cell.fitted(width)
            else:  # the rest of a field that crossed the row boundary
                label = next(
                    (x for x in (f"({cell.label} cont.)", f"({cell.label})") if len(x) <= width),
                    "(cont.)",
                )
            row.append((label, take))
            used += take
            left -= take
            first = False
            if used == _ROW_BITS:
                flush()
    flush()
    return out


def packet_diagram_text(spec: MessageSpec, *, fields: bool = True, version: int = PROTOCOL_VERSION) -> str:
    """``spec``'s payload in a frame of ``version`` as an RFC-style ASCII diagram; with
    ``fields``, a heading and the list of every field with its offset and size under it. A
    message or field a later version added has the suffix `` (v2)``."""
    layout = spec.layout_for(version)
    lines = [f"{spec.name} (type 0x{spec.code:02X}) payload{since_label(spec.since)}"] if fields else []
    cells = list(_cells(layout, _field_marks(spec)))
    if not cells:
        lines.append("  (empty: length 0)")
        return "\n".join(lines) + "\n"
    lines += _bit_diagram(cells)
    for sub in layout.subcons:
        con = unwrap(sub)
        if isinstance(con, List) and con.record is not None:
            lines.append("")
            lines.append(f"each {sub.name}[i] ({con.item.name}):")
            lines += _bit_diagram(_cells(con.record))
    if not fields:
        return "\n".join(lines) + "\n"
    rows = [("field", "offset", "size")] + [(f.path, f.offset, f.size) for f in packet_fields(spec, version)]
    widths = [max(len(r[k]) for r in rows) for k in range(2)]
    lines.append("")
    lines += [f"{p:<{widths[0]}}  {o:<{widths[1]}}  {z}" for p, o, z in rows]
    return "\n".join(lines) + "\n"


def _later_versions(version: int) -> list[int]:
    """The versions up to ``version`` whose additions the diagrams mark."""
    return [v for v in SUPPORTED_VERSIONS if since_label(v) and v <= version]


def packet_diagrams_text(version: int = PROTOCOL_VERSION) -> str:
    """Every message's payload diagram in a frame of ``version``, by type code."""
    _check_version(version)
    head = (
        f"Payload layouts of protocol version {version} (after the frame header), generated\n"
        "from the construct schemas. Bits are numbered from the most significant bit of the\n"
        "first byte; integers are big-endian. Offsets are bytes from the start of the payload;\n"
        "after a field of variable size they are relative to its end. `[i]` rows describe one\n"
        "list item."
        + "".join(f"\n`{since_label(v).strip()}` marks a message or field version {v} added." for v in _later_versions(version))
        + "\n"
    )
    return head + "".join(
        "\n" + packet_diagram_text(spec, version=version) for spec in _messages() if spec.in_version(version)
    )


# SVG: one table row per message, a box per field, byte widths to scale for fixed fields.
_BYTE_W = 22
_VAR_W = 150
_BOX_H = 34
_ROW_GAP = 30
_NAME_W = 130
_PAD = 12
_CHAR_W = 7  # a generous average width of an 11 px Helvetica character


def _svg_text(x: float, y: float, text: str, **attrs: str) -> str:
    extra = "".join(f' {k.replace("_", "-")}="{v}"' for k, v in attrs.items())
    return f'<text x="{x:g}" y="{y:g}"{extra}>{html.escape(text)}</text>'


_NEW_FILL = "#e6f4ea"  # the boxes of fields a later version added


def packets_svg(version: int = PROTOCOL_VERSION) -> str:
    """Every message's payload in a frame of ``version`` as an SVG table: one row per
    message, one box per field (fixed fields to scale where their names fit, variable ones
    dashed), offsets above; what a later version added is green and marked ``(v2)``."""
    _check_version(version)
    # (path, fixed size or None, offset text, size text) per top-level field; list items are
    # inside their list's box (the text diagram draws them)
    rows: list[tuple[MessageSpec, list[tuple[str, int | None, str, str]]]] = [
        (
            spec,
            [
                (f.path, _sizeof(f.con), f.offset, f.size)
                for f in _walk(spec.layout_for(version))
                if "[i]" not in f.path
            ],
        )
        for spec in _messages()
        if spec.in_version(version)
    ]

    def width(path: str, size: int | None) -> int:
        # to scale, but never narrower than the field's name
        return max(_VAR_W if size is None else size * _BYTE_W, _CHAR_W * len(path) + 12)

    total_w = _PAD * 2 + _NAME_W + max(sum(width(b[0], b[1]) for b in boxes) for _, boxes in rows)
    total_h = _PAD * 2 + 24 + len(rows) * (_BOX_H + _ROW_GAP)
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_w}" height="{total_h}" '
        f'viewBox="0 0 {total_w} {total_h}" font-family="Helvetica, Arial, sans-serif" font-size="11">',
        "<title>dfachat payload layouts</title>",
        f'<rect x="0" y="0" width="{total_w}" height="{total_h}" fill="white"/>',
        _svg_text(
            _PAD, _PAD + 12,
            f"Payload layouts of protocol version {version}: offsets in bytes from the payload "
            "start (after a variable field, relative to its end); dashed boxes have a variable size"
            + "".join(f"; green,{since_label(v)}: added in version {v}" for v in _later_versions(version)),
            font_size="12",
        ),
    ]
    y = _PAD + 24 + _ROW_GAP - 8
    for spec, boxes in rows:
        marks = _field_marks(spec)
        out.append(f'<g id="msg-{spec.name}">')
        out.append(_svg_text(_PAD, y + _BOX_H / 2 + 4, f"0x{spec.code:02X} {spec.name}", font_weight="bold"))
        if since_label(spec.since):
            out.append(
                _svg_text(_PAD, y + _BOX_H / 2 + 16, since_label(spec.since).strip(), fill=_NEW_ROW_COLOR, font_size="9")
            )
        x = _PAD + _NAME_W
        if not boxes:
            out.append(_svg_text(x, y + _BOX_H / 2 + 4, "(empty payload)", fill="#707070"))
        for path, size, offset, size_text in boxes:
            w = width(path, size)
            dash = ' stroke-dasharray="4 3"' if size is None else ""
            fill, stroke = (_NEW_FILL, _NEW_ROW_COLOR) if path in marks else ("#f4f7fb", "#333")
            out.append(
                f'<rect x="{x}" y="{y}" width="{w}" height="{_BOX_H}" fill="{fill}" '
                f'stroke="{stroke}"{dash}/>'
            )
            out.append(_svg_text(x + w / 2, y + 15, path, text_anchor="middle"))
            out.append(
                _svg_text(
                    x + w / 2, y + 28, f"{size_text} B{marks.get(path, '')}",
                    text_anchor="middle", fill="#555", font_size="9",
                )
            )
            out.append(_svg_text(x + 2, y - 3, offset, fill="#1f4e9a", font_size="9"))
            x += w
        out.append("</g>")
        y += _BOX_H + _ROW_GAP
    out.append("</svg>")
    return "\n".join(out) + "\n"


# --- the generated docs: PROTOCOL.md and docs/diagrams/ (``dfachat docs``) -------------------

DIAGRAMS_DIR = "diagrams"  # under the docs directory


def _rendered_svgs() -> dict[str, str]:
    """Graphviz output -> its DOT source, both relative to the docs directory."""
    return {
        f"{DIAGRAMS_DIR}/{role}-states.svg": f"{DIAGRAMS_DIR}/{role}-states.dot" for role in ROLES
    }


def _stamp(source_path: str, source: str) -> str:
    digest = hashlib.sha256(source.encode("utf-8")).hexdigest()
    return f"<!-- dfachat: rendered by Graphviz from {source_path}, sha256 {digest} -->"


def _stamped(svg: bytes, stamp: str) -> bytes:
    """``svg`` with ``stamp`` after its XML declaration (a comment: the drawing is unchanged)."""
    text = svg.decode("utf-8")
    head, newline, rest = text.partition("\n")
    if not head.startswith("<?xml"):
        head, rest = "", text
    return (head + newline + stamp + "\n" + rest).encode("utf-8")


def _diagrams_readme() -> str:
    from dfachat.conformance.scenarios import SCENARIOS

    lines = [
        "# Diagrams",
        "",
        "Generated by `dfachat docs` from the spec (`src/dfachat/spec/`) and, for the sequence "
        "charts, by running the real engines through named scenarios. Do not edit: change the "
        "declaration and run `dfachat docs`; `dfachat docs --check` (and the test suite) fails "
        "when a file here is stale.",
        "",
        f"Every drawing shows protocol version {PROTOCOL_VERSION}, the newest"
        + "".join(
            f"; what version {v} added is marked `{since_label(v).strip()}` (and drawn green)"
            for v in _later_versions(PROTOCOL_VERSION)
        )
        + ". `dfachat diagram --protocol-version N` draws version N alone.",
        "",
        "| File | What |",
        "|---|---|",
    ]
    for role in ROLES:
        lines += [
            f"| `{role}-states.dot` | the {role}'s state machine as DOT, from transitions' GraphMachine |",
            f"| `{role}-states.svg` | the same, rendered by Graphviz `dot` |",
            f"| `{role}-states.mmd` | the same as Mermaid `stateDiagram-v2`, internal transitions as notes |",
        ]
    lines += [
        "| `packets.txt` | every payload as an RFC-style bit diagram, with field offsets |",
        "| `packets.svg` | every payload as an SVG table |",
    ]
    for name, scenario in SCENARIOS.items():
        lines.append(
            f"| `sequence-{name}.mmd`, `sequence-{name}.svg` | message sequence chart: "
            f"{scenario.title.lower()} |"
        )
    lines += [
        "",
        "How staleness is judged: every text file (DOT, Mermaid, the packet diagrams, the SVGs "
        "dfachat writes itself) must equal what `dfachat docs` generates now, byte for byte. "
        "The state-machine SVGs are Graphviz output, which differs between Graphviz versions, "
        "so they are not compared: each carries a comment with the SHA-256 of the DOT source "
        "it was rendered from, and it is stale when that is not the current DOT source's. "
        "The check therefore needs no Graphviz; regenerating them does.",
    ]
    return "\n".join(lines) + "\n"


def _generated_texts() -> dict[str, str]:
    """Every generated docs file but the Graphviz SVGs, by path relative to the docs directory."""
    from dfachat.conformance.scenarios import (
        SCENARIOS,
        run_scenario,
        sequence_mermaid,
        sequence_svg,
    )
    from dfachat.spec.document import render_protocol_markdown

    files = {"PROTOCOL.md": render_protocol_markdown(), f"{DIAGRAMS_DIR}/README.md": _diagrams_readme()}
    for role in ROLES:
        files[f"{DIAGRAMS_DIR}/{role}-states.dot"] = state_dot(role)
        files[f"{DIAGRAMS_DIR}/{role}-states.mmd"] = mermaid_state_diagram(role, detailed=True)
    files[f"{DIAGRAMS_DIR}/packets.txt"] = packet_diagrams_text()
    files[f"{DIAGRAMS_DIR}/packets.svg"] = packets_svg()
    for name in SCENARIOS:
        run = run_scenario(name)
        files[f"{DIAGRAMS_DIR}/sequence-{name}.mmd"] = sequence_mermaid(run)
        files[f"{DIAGRAMS_DIR}/sequence-{name}.svg"] = sequence_svg(run)
    return files


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def stale_docs(docs_dir: Path) -> list[str]:
    """The generated files under ``docs_dir`` that are missing or out of date (sorted paths
    relative to it). Needs no Graphviz (see the staleness policy in ``_diagrams_readme``)."""
    texts = _generated_texts()
    stale = [path for path, text in texts.items() if _read(docs_dir / path) != text.encode("utf-8")]
    for svg, dot in _rendered_svgs().items():
        data = _read(docs_dir / svg)
        if data is None or _stamp(dot, texts[dot]).encode("utf-8") not in data:
            stale.append(svg)
    return sorted(stale)


def write_docs(docs_dir: Path) -> list[str]:
    """Regenerate the stale files under ``docs_dir``; return what was written.

    The text files are written first; the Graphviz SVGs last, so that when ``dot`` is
    missing (:class:`GraphvizMissing`) everything else is already current.
    """
    texts = _generated_texts()
    written = []
    for path, text in texts.items():
        target = docs_dir / path
        data = text.encode("utf-8")
        if _read(target) != data:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            written.append(path)
    for svg, dot in _rendered_svgs().items():
        stamp = _stamp(dot, texts[dot])
        current = _read(docs_dir / svg)
        if current is not None and stamp.encode("utf-8") in current:
            continue
        role = svg.rpartition("/")[2].partition("-")[0]
        (docs_dir / svg).write_bytes(_stamped(render_state_diagram(role, "svg"), stamp))
        written.append(svg)
    return written
