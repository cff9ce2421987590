"""What a fuzzing run tells people and tools: terminal summary, JSON, JUnit XML, one HTML page.

Every writer takes a :class:`~.verdicts.RunResult`, whichever mode produced
it. Checks are grouped by spec section; each failure carries its message
sequence chart (:func:`chart_text`, and inline SVG in the HTML page, which
references nothing outside itself).
"""

from __future__ import annotations

import html
import json
import time
import xml.etree.ElementTree as ET
from itertools import groupby
from pathlib import Path
from typing import Any

from dfachat.conformance.fuzz.verdicts import Chart, Check, CheckStatus, RunResult

__all__ = [
    "REPORT_FORMAT",
    "chart_svg",
    "chart_text",
    "result_json",
    "summary_text",
    "write_html",
    "write_json",
    "write_junit",
]

REPORT_FORMAT = "dfachat-fuzz-report/1"

_MARK = {
    CheckStatus.PASSED: "ok",
    CheckStatus.FAILED: "FAIL",
    CheckStatus.NON_STRICT: "warn",
    CheckStatus.UNEXERCISED: "-",
}


# --- sequence charts ----------------------------------------------------------------------


def chart_text(chart: Chart, *, width: int = 22) -> str:
    """An ASCII message sequence chart: one column per participant, one line per event."""
    n = len(chart.participants)
    centre = [width // 2 + i * width for i in range(n)]
    total = width * n

    def blank() -> list[str]:
        row = [" "] * total
        for c in centre:
            row[c] = "|"
        return row

    lines = ["".join(p[: width - 1].center(width) for p in chart.participants).rstrip()]
    for event in chart.events:
        row = blank()
        mark = "!! " if event.bad else ""
        if event.kind == "arrow" and event.target is not None and event.target != event.source:
            a, b = centre[event.source], centre[event.target]
            lo, hi = min(a, b), max(a, b)
            for x in range(lo + 1, hi):
                row[x] = "-"
            if b > a:
                row[hi - 1] = ">"
            else:
                row[lo + 1] = "<"
            label = mark + event.text
            line = "".join(row).rstrip()
            lines.append(line + "  " + label)
        else:
            line = "".join(row).rstrip()
            lines.append(line + f"  [{chart.participants[event.source]}] {mark}{event.text}")
    return "\n".join(lines)


def chart_svg(chart: Chart, *, column: int = 190, row: int = 22) -> str:
    """The chart as inline SVG (no scripts, no external references)."""
    n = len(chart.participants)
    height = 40 + row * (len(chart.events) + 1)
    width = column * n + 360
    x = [column // 2 + i * column for i in range(n)]
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="monospace" font-size="12">'
    ]
    for i, name in enumerate(chart.participants):
        out.append(f'<text x="{x[i]}" y="16" text-anchor="middle" font-weight="bold">{html.escape(name)}</text>')
        out.append(f'<line x1="{x[i]}" y1="24" x2="{x[i]}" y2="{height - 6}" stroke="#999"/>')
    for k, event in enumerate(chart.events):
        y = 40 + row * k
        colour = "#c00" if event.bad else "#000"
        text = html.escape(event.text)
        if event.kind == "arrow" and event.target is not None and event.target != event.source:
            a, b = x[event.source], x[event.target]
            head = -7 if b > a else 7
            out.append(f'<line x1="{a}" y1="{y}" x2="{b}" y2="{y}" stroke="{colour}"/>')
            out.append(
                f'<polygon points="{b},{y} {b + head},{y - 4} {b + head},{y + 4}" fill="{colour}"/>'
            )
            out.append(f'<text x="{min(a, b) + 6}" y="{y - 4}" fill="{colour}">{text}</text>')
        else:
            out.append(f'<text x="{x[event.source] + 6}" y="{y + 4}" fill="{colour}">[{text}]</text>')
    out.append("</svg>")
    return "".join(out)


# --- the terminal -------------------------------------------------------------------------


def _sections(result: RunResult) -> list[tuple[tuple[int, str], list[Check]]]:
    checks = result.verdicts.checks()
    return [(key, list(group)) for key, group in groupby(checks, key=lambda c: (c.section, c.section_title))]


def _counts(result: RunResult) -> dict[str, int]:
    counts = {status.value: 0 for status in CheckStatus}
    for check in result.verdicts.checks():
        counts[result.verdicts.status(check).value] += 1
    return counts


def summary_text(result: RunResult, *, charts: bool = True, verbose: bool = False) -> str:
    """Per-section verdicts, then each failure with its chart, then the summary (last)."""
    verdicts = result.verdicts
    lines: list[str] = []
    for (number, title), checks in _sections(result):
        lines.append(f"{number}. {title}")
        for check in checks:
            status = verdicts.status(check)
            if status is CheckStatus.UNEXERCISED and not verbose:
                continue
            times = verdicts.exercised.get(check.id, 0)
            lines.append(f"  [{_MARK[status]:>4}] {check.id:<22} {check.level.value:<6} {check.title} ({times}x)")
        unexercised = [c.id for c in checks if verdicts.status(c) is CheckStatus.UNEXERCISED]
        if unexercised and not verbose:
            lines.append(f"  [   -] not exercised: {', '.join(unexercised)}")
    failures = verdicts.all_failures()
    if failures:
        lines.append("")
        lines.append("Failures")
        for failure in failures:
            check = verdicts.checks()[[c.id for c in verdicts.checks()].index(failure.check_id)]
            lines.append(f"- {failure.check_id} ({check.level.value}, section {check.section}): {failure.detail}")
            if failure.case:
                lines.append(f"  case: {failure.case}")
            if charts and failure.chart is not None:
                lines.extend("    " + line for line in chart_text(failure.chart).splitlines())
    cov = result.coverage
    lines.append("")
    if cov:
        lines.append(
            f"transition coverage: {len(cov.get('covered', ()))}/{cov.get('total', 0)} rows of the "
            f"{result.mode} table"
        )
    for note in result.notes:
        lines.append(f"note: {note}")
    counts = _counts(result)
    verdict = "FAILED" if result.exit_code else "PASSED"
    lines.append(
        f"{verdict}: {counts['passed']} passed, {counts['failed']} failed, {counts['non-strict']} non-strict, "
        f"{counts['unexercised']} not exercised; {result.examples} examples, {result.steps} steps in "
        f"{result.duration_s:.1f} s ({result.steps_per_s:.0f} steps/s), target {result.target}"
        + (f", seed {result.seed}" if result.seed is not None else "")
    )
    return "\n".join(lines) + "\n"


# --- JSON -------------------------------------------------------------------------------


def result_json(result: RunResult) -> dict[str, Any]:
    """The run as data (format ``dfachat-fuzz-report/1``)."""
    verdicts = result.verdicts
    return {
        "format": REPORT_FORMAT,
        "mode": result.mode,
        "target": result.target,
        "seed": result.seed,
        "strict": result.strict,
        "passed": result.exit_code == 0,
        "exit_code": result.exit_code,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(result.started)),
        "duration_s": round(result.duration_s, 3),
        "examples": result.examples,
        "steps": result.steps,
        "steps_per_s": round(result.steps_per_s, 1),
        "counts": _counts(result),
        "coverage": result.coverage,
        "settings": result.settings,
        "notes": list(result.notes),
        "cases": list(result.cases),
        "sections": [
            {
                "section": number,
                "title": title,
                "checks": [
                    {
                        "id": c.id,
                        "rule": c.rule,
                        "role": c.role,
                        "level": c.level.value,
                        "title": c.title,
                        "status": verdicts.status(c).value,
                        "exercised": verdicts.exercised.get(c.id, 0),
                        "failures": [f.as_dict() for f in verdicts.failures.get(c.id, ())],
                    }
                    for c in checks
                ],
            }
            for (number, title), checks in _sections(result)
        ],
    }


def write_json(result: RunResult, path: str | Path) -> None:
    Path(path).write_text(json.dumps(result_json(result), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# --- JUnit XML ----------------------------------------------------------------------------


def write_junit(result: RunResult, path: str | Path) -> None:
    """One ``testsuite`` per spec section, one ``testcase`` per check: failed MUST checks (and
    SHOULD ones under ``strict``) are failures; unexercised and non-strict ones are skipped."""
    verdicts = result.verdicts
    failing = {c.id for c in result.failed_checks}
    root = ET.Element("testsuites", name=f"dfachat fuzz {result.mode}", time=f"{result.duration_s:.3f}")
    total = fails = skips = 0
    for (number, title), checks in _sections(result):
        suite = ET.SubElement(root, "testsuite", name=f"{number}. {title}")
        s_fail = s_skip = 0
        for check in checks:
            case = ET.SubElement(
                suite, "testcase", classname=f"dfachat.{result.mode}.section{number}", name=f"{check.id} {check.title}"
            )
            status = verdicts.status(check)
            found = verdicts.failures.get(check.id, [])
            if check.id in failing:
                s_fail += 1
                node = ET.SubElement(case, "failure", message=found[0].detail if found else "failed", type=check.level.value)
                node.text = "\n\n".join(
                    f.detail + ("\n" + chart_text(f.chart) if f.chart else "") + (f"\ncase: {f.case}" if f.case else "")
                    for f in found
                )
            elif status is CheckStatus.UNEXERCISED:
                s_skip += 1
                ET.SubElement(case, "skipped", message="not exercised")
            elif status is CheckStatus.NON_STRICT:
                s_skip += 1
                ET.SubElement(case, "skipped", message=f"non-strict ({check.level.value}): {found[0].detail}")
        suite.set("tests", str(len(checks)))
        suite.set("failures", str(s_fail))
        suite.set("skipped", str(s_skip))
        suite.set("errors", "0")
        total, fails, skips = total + len(checks), fails + s_fail, skips + s_skip
    root.set("tests", str(total))
    root.set("failures", str(fails))
    root.set("skipped", str(skips))
    root.set("errors", "0")
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


# --- HTML ---------------------------------------------------------------------------------

_STYLE = """
body{font-family:sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin-bottom:1.5em}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}
.passed{background:#e6f4e6}.failed{background:#f9d6d6}.non-strict{background:#fcf0cc}
.unexercised{color:#888}
pre{background:#f6f6f6;padding:8px;overflow-x:auto}
"""


def write_html(result: RunResult, path: str | Path) -> None:
    """One self-contained page: the summary, the per-section table, each failure with its chart."""
    esc = html.escape
    verdicts = result.verdicts
    counts = _counts(result)
    verdict = "FAILED" if result.exit_code else "PASSED"
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>dfachat fuzz {esc(result.mode)}: {verdict}</title><style>{_STYLE}</style></head><body>",
        f"<h1>dfachat fuzz {esc(result.mode)} &mdash; {verdict}</h1>",
        f"<p>Target {esc(result.target)}; seed {esc(str(result.seed))}; {result.examples} examples, "
        f"{result.steps} steps in {result.duration_s:.1f} s. Checks: {counts['passed']} passed, "
        f"{counts['failed']} failed, {counts['non-strict']} non-strict, {counts['unexercised']} not exercised.</p>",
    ]
    cov = result.coverage
    if cov:
        parts.append(
            f"<p>Transition coverage: {len(cov.get('covered', ()))} of {cov.get('total', 0)} rows of the "
            f"{esc(result.mode)} state table.</p>"
        )
        if cov.get("missing"):
            parts.append("<details><summary>rows not covered</summary><pre>" + esc("\n".join(cov["missing"])) + "</pre></details>")
    for note in result.notes:
        parts.append(f"<p><em>{esc(note)}</em></p>")
    anchors: dict[int, str] = {}
    for (number, title), checks in _sections(result):
        parts.append(f"<h2>{number}. {esc(title)}</h2><table><tr><th>check</th><th>level</th><th>status</th>"
                     "<th>exercised</th><th>what it judges</th></tr>")
        for check in checks:
            status = verdicts.status(check)
            cell = esc(check.id)
            found = verdicts.failures.get(check.id, [])
            if found:
                anchors[id(found[0])] = f"f-{check.id.replace('/', '-').replace('.', '-')}"
                cell = f"<a href='#{anchors[id(found[0])]}'>{cell}</a>"
            parts.append(
                f"<tr class='{status.value}'><td>{cell}</td><td>{check.level.value}</td><td>{status.value}</td>"
                f"<td>{verdicts.exercised.get(check.id, 0)}</td><td title='{esc(check.text)}'>{esc(check.title)}</td></tr>"
            )
        parts.append("</table>")
    failures = verdicts.all_failures()
    if failures:
        parts.append("<h2>Failures</h2>")
        for failure in failures:
            anchor = anchors.get(id(failure), "")
            parts.append(f"<h3 id='{anchor}'>{esc(failure.check_id)}</h3><p>{esc(failure.detail)}</p>")
            if failure.case:
                parts.append(f"<p>case file: <code>{esc(failure.case)}</code></p>")
            if failure.chart is not None:
                parts.append(chart_svg(failure.chart))
                parts.append("<details><summary>as text</summary><pre>" + esc(chart_text(failure.chart)) + "</pre></details>")
    parts.append("</body></html>\n")
    Path(path).write_text("".join(parts), encoding="utf-8")
