"""What the checker tells people and tools: summaries, message sequence charts, traces.

* :func:`summary_text` / :func:`summary_json` -- the verdict per property, the
  numbers, the spec coverage (rows of each role's table the exploration took);
* :func:`msc_text` -- a counterexample as an ASCII message sequence chart, one
  column per client and one for the server;
* :func:`msc_mermaid` -- the same as a Mermaid ``sequenceDiagram``;
* :func:`trace_json` -- the same as data: every step with who did what, the
  message and its fields, what the server wrote where, drops and closes, so a
  fuzzer's ``replay`` can drive a live server through it
  (:func:`message_from_json` rebuilds a message from it).
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from dfachat.codec.messages import MESSAGE_CLASSES, Message, Record
from dfachat.conformance.checker.explore import CheckResult, Violation, coverage_report
from dfachat.conformance.checker.model import (
    EvAborted,
    EvApplication,
    EvClientReceived,
    EvServerReceived,
    ModelConfig,
    Step,
)

__all__ = [
    "TRACE_FORMAT",
    "message_from_json",
    "message_json",
    "msc_mermaid",
    "msc_text",
    "summary_json",
    "summary_text",
    "trace_json",
]

TRACE_FORMAT = "dfachat-trace/1"


# --- messages as data and as labels --------------------------------------------------------


def _value(value: Any) -> Any:
    if isinstance(value, Record):
        return {name: _value(v) for name, v in zip(value.FIELDS, value, strict=True)}
    if isinstance(value, Enum):
        return int(value.value)
    if isinstance(value, tuple):
        return [_value(v) for v in value]
    return value


def message_json(message: Message) -> dict[str, Any]:
    """``{"type": "MSG", "fields": {...}}``; enumerations and flags as integers."""
    return {"type": message.NAME, "fields": _value(message)}


def message_from_json(data: dict[str, Any]) -> Message:
    """The message :func:`message_json` describes."""
    cls = MESSAGE_CLASSES[data["type"]]
    fields = {}
    for name, value in data["fields"].items():
        annotation = cls.__annotations__.get(name)
        if isinstance(value, list):
            item = getattr(annotation, "__args__", (None,))[0]
            if isinstance(item, type) and issubclass(item, Record):
                value = tuple(item(**v) for v in value)
            else:
                value = tuple(value)
        fields[name] = value
    return cls(**fields)


def label(message: Message | None) -> str:
    """A short description of a message for charts."""
    if message is None:
        return "EOF"
    m = message
    name = m.NAME
    if name == "HELLO":
        return f"HELLO {m.encoding}"
    if name == "HELLO_OK":
        return f"HELLO_OK {m.encoding}"
    if name == "USER":
        return f"USER {m.name}"
    if name == "PASS":
        return f"PASS {m.password!r}"
    if name == "MSG":
        to = ",".join(m.recipients) if m.recipients else "everyone"
        return f"MSG {m.msg_id} to {to}: {m.text!r}"
    if name == "MSG_ACK":
        results = " ".join(f"{r.name}={r.outcome.name}" for r in m.results)
        return f"MSG_ACK {m.msg_id} id={m.server_msg_id} delivered={m.delivered}" + (
            f" {results}" if results else ""
        )
    if name == "DELIVER":
        flags = "|".join(f.name for f in type(m.flags) if f in m.flags)
        return f"DELIVER id={m.server_msg_id} from {m.sender}{' ' + flags if flags else ''}: {m.text!r}"
    if name == "AUTH_OK":
        more = " MORE" if m.flags else ""
        return f"AUTH_OK {m.name} online={','.join(m.online)}{more}"
    if name == "AUTH_FAILED":
        return f"AUTH_FAILED left={m.attempts_left}"
    if name == "USERS":
        return f"USERS {','.join(m.online)}{' MORE' if m.flags else ''}"
    if name in ("JOINED",):
        return f"JOINED {m.name}"
    if name == "LEFT":
        return f"LEFT {m.name} {m.reason.name}"
    if name == "BYE":
        return f"BYE {m.reason.name}"
    if name == "ERROR":
        return f"ERROR {m.code.name}{' fatal' if m.flags else ''}"
    if name in ("PING", "PONG"):
        return f"{name} {m.nonce}"
    return name


def client_label(config: ModelConfig, i: int) -> str:
    spec = config.clients[i]
    accounts = "/".join(config.domain.accounts[a][0] for a in spec.accounts)
    return f"c{i + 1} {accounts} {spec.encoding}"


# --- traces --------------------------------------------------------------------------------


def _received(step: Step) -> tuple[bool | None, str | None]:
    for event in step.events:
        if isinstance(event, (EvClientReceived, EvServerReceived)):
            return event.accepted, event.state
    return None, None


def trace_json(violation: Violation, config: ModelConfig) -> dict[str, Any]:
    """The counterexample as data (format ``dfachat-trace/1``)."""
    steps = []
    for number, step in enumerate(violation.steps, 1):
        entry: dict[str, Any] = {
            "step": number,
            "actor": step.actor,
            "client": step.client,
            "action": step.action,
        }
        if step.message is not None:
            entry["message"] = message_json(step.message)
        elif step.action in ("receive", "serve"):
            entry["eof"] = True
        accepted, state = _received(step)
        if accepted is not None:
            entry["accepted"] = accepted
            entry["state"] = state
        if step.writes:
            entry["writes"] = [
                {
                    "client": i,
                    **({"close": True} if m is None else {"message": message_json(m)}),
                    "reached": reached,
                }
                for i, m, reached in step.writes
            ]
        steps.append(entry)
    return {
        "format": TRACE_FORMAT,
        "property": violation.property.name,
        "kind": violation.kind,
        "rules": violation.property.rule_texts(),
        "doc": violation.property.doc,
        "config": config.as_dict(),
        "clients": [
            {
                "client": i,
                "label": client_label(config, i),
                "encoding": spec.encoding,
                "accounts": [config.domain.accounts[a][0] for a in spec.accounts],
            }
            for i, spec in enumerate(config.clients)
        ],
        "steps": steps,
    }


def _chart_events(violation: Violation) -> list[tuple[str, int | None, int | None, str]]:
    """(kind, from column, to column, text): kind is arrow or note; the server is column -1."""
    out: list[tuple[str, int | None, int | None, str]] = []
    for step in violation.steps:
        i = step.client
        if step.actor == "client":
            if step.action == "connect":
                out.append(("note", i, None, "connects"))
            elif step.action in ("send", "send-malformed"):
                broken = " (broken)" if step.action == "send-malformed" else ""
                out.append(("arrow", i, -1, label(step.message) + broken))
            elif step.action == "drop":
                out.append(("note", i, None, "drops the connection"))
            elif step.action == "crash":
                lost = [e.server_msg_id for e in step.events if isinstance(e, EvApplication) and e.what == "lost"]
                out.append(("note", i, None, "CRASHES" + (f", losing {', '.join(map(str, lost))} not taken" if lost else "")))
            elif step.action == "take":
                took = next(e.server_msg_id for e in step.events if isinstance(e, EvApplication))
                out.append(("note", i, None, f"application takes {took}"))
            elif step.action == "receive":
                accepted, state = _received(step)
                if step.message is None:
                    out.append(("note", i, None, "connection closed"))
                elif accepted is False:
                    out.append(("note", i, None, f"REJECTS {label(step.message)} in {state}"))
                else:
                    dropped = any(isinstance(e, EvApplication) and e.what == "dropped" for e in step.events)
                    out.append(("note", i, None, f"takes {label(step.message)}" + (" (dropped: taken before)" if dropped else "")))
        else:
            if step.action == "serve":
                accepted, state = _received(step)
                what = "EOF" if step.message is None else label(step.message)
                verb = "takes" if accepted is not False else "REJECTS"
                out.append(
                    (
                        "note",
                        -1,
                        None,
                        f"{verb} {what} from c{i + 1}"
                        + ("" if accepted is not False else f" in {state}"),
                    )
                )
            elif step.action == "auth":
                out.append(("note", -1, None, f"password check of c{i + 1} done"))
            elif step.action == "lost":
                out.append(("note", -1, None, f"c{i + 1}'s connection lost"))
            elif step.action == "timeout":
                out.append(("note", -1, None, f"idle timeout of c{i + 1}"))
            elif step.action == "ping":
                out.append(("note", -1, None, f"keep-alive for c{i + 1}"))
            elif step.action == "restart":
                out.append(("note", -1, None, "RESTART (store kept)"))
            for target, message, reached in step.writes:
                text = "close" if message is None else label(message)
                out.append(
                    (
                        "arrow",
                        -1,
                        target,
                        text if reached else f"{text} (lost: c{target + 1} is gone)",
                    )
                )
            for event in step.events:
                if isinstance(event, EvAborted):
                    out.append(
                        (
                            "note",
                            -1,
                            None,
                            f"aborts c{event.client + 1} (slow consumer): {event.dropped} unread frames dropped",
                        )
                    )
    return out


def msc_text(violation: Violation, config: ModelConfig, *, width: int = 24) -> str:
    """The counterexample as an ASCII message sequence chart."""
    n = len(config.clients)
    centers = [2 + k * width for k in range(n + 1)]
    total = centers[-1] + width + 40
    heads = [client_label(config, i) for i in range(n)] + ["server"]

    def blank() -> list[str]:
        row = [" "] * total
        for x in centers:
            row[x] = "|"
        return row

    def col(c: int) -> int:
        return centers[n] if c == -1 else centers[c]

    lines = []
    head = [" "] * total
    for x, text in zip(centers, heads, strict=True):
        start = max(0, x - len(text) // 2)
        head[start : start + len(text)] = text[: total - start]
    lines.append("".join(head).rstrip())
    lines.append("".join(blank()).rstrip())
    for kind, a, b, text in _chart_events(violation):
        row = blank()
        if kind == "arrow" and a is not None and b is not None:
            x0, x1 = col(a), col(b)
            lo, hi = min(x0, x1), max(x0, x1)
            for x in range(lo + 1, hi):
                row[x] = "-"
            if x1 > x0:
                row[hi - 1] = ">"
            else:
                row[lo + 1] = "<"
            tag = f" {text} "
            start = lo + 2
            if len(tag) > hi - lo - 4:  # too long for the span: write it after the arrow
                row[hi + 1 : hi + 1 + len(tag)] = tag
            else:
                row[start : start + len(tag)] = tag
        elif a is not None:
            x = col(a)
            row[x] = "*"
            tag = f" {text}"
            row[x + 1 : x + 1 + len(tag)] = tag
        lines.append("".join(row).rstrip())
    return "\n".join(lines) + "\n"


def _mermaid_text(text: str) -> str:
    return text.replace(";", ",").replace("#", "no.").replace("\n", " ")


def msc_mermaid(violation: Violation, config: ModelConfig) -> str:
    """The counterexample as a Mermaid ``sequenceDiagram``."""
    n = len(config.clients)
    out = ["sequenceDiagram"]
    for i in range(n):
        out.append(f"    participant C{i} as {_mermaid_text(client_label(config, i))}")
    out.append("    participant S as server")
    out.append(
        f"    Note over C0,S: {_mermaid_text(violation.property.name)} ({', '.join(violation.property.rules)})"
    )

    def who(c: int) -> str:
        return "S" if c == -1 else f"C{c}"

    for kind, a, b, text in _chart_events(violation):
        if kind == "arrow" and a is not None and b is not None:
            arrow = "--x" if text == "close" else "-)"
            out.append(f"    {who(a)}{arrow}{who(b)}: {_mermaid_text(text)}")
        elif a is not None:
            out.append(f"    Note over {who(a)}: {_mermaid_text(text)}")
    return "\n".join(out) + "\n"


# --- summaries -------------------------------------------------------------------------------


def _config_line(config: ModelConfig) -> str:
    clients = ", ".join(client_label(config, i) for i in range(len(config.clients)))
    msgs = f"{config.max_msgs} MSG" + (
        f" ({config.total_msgs} in the run)" if config.total_msgs else ""
    )
    bounds = (
        f"capacity {config.capacity}, {msgs}, {config.max_lists} LIST, {config.max_pings} PING, "
        f"{config.wrong_logins} wrong login, {config.aborts} abort, {config.malformed} malformed "
        f"per client; {config.sessions} session each; {config.timeouts} timeout, "
        f"{config.server_pings} server PING per client; {config.restarts} restart; "
        f"login attempts {config.login_attempts}, page size {config.pages}"
        + ("; wire" if config.wire else "")
        + (f"; {config.crashes} crash per client" if config.crashes else "")
        + (f"; protocol version {config.version}, deliver window {config.deliver_window}" if config.version >= 2 else "")
    )
    return f"{len(config.clients)} clients ({clients}); {bounds}"


def summary_json(result: CheckResult) -> dict[str, Any]:
    coverage = coverage_report(result.coverage, result.config.version)
    return {
        "ok": result.ok,
        "config": result.config.as_dict(),
        "strategy": result.strategy,
        "symmetry": result.symmetry,
        "reduction": result.reduce,
        "workers": result.workers,
        "states": result.states,
        "transitions": result.transitions,
        "depth": result.depth,
        "seconds": round(result.seconds, 3),
        "states_per_s": round(result.states_per_s),
        "complete": result.complete,
        "limit": result.limit,
        "stopped": stop_message(result),
        "max_states": result.max_states,
        "max_memory_mib": result.max_memory_mb,
        "memory_mib": round(result.memory_mb),
        "truncated": result.truncated,
        "warnings": result.warnings,
        "properties": [
            {
                "name": p.name,
                "kind": p.kind,
                "rules": list(p.rules),
                "status": result.status(p),
                "doc": p.doc,
            }
            for p in result.properties
        ],
        "violations": [trace_json(v, result.config) for v in result.violations],
        "coverage": {
            role: {
                "taken": c["taken"],
                "total": c["total"],
                "unreached": [
                    f"{r['state']} --{r['trigger']}{' [' + r['guards'] + ']' if r['guards'] else ''}--> {r['dest']} ({r['rule']})"
                    for r in c["rows"]
                    if not r["taken"]
                ],
            }
            for role, c in coverage.items()
        },
    }


def stop_message(result: CheckResult) -> str | None:
    """Why an exploration stopped before the end, and the option that goes further."""
    if result.violations or result.complete:
        return None
    if result.limit == "states":
        return (f"stopped at the state limit ({result.max_states:,} distinct states): the result is "
                "partial; raise it with --max-states N (0: no limit)")
    if result.limit == "memory":
        return (f"stopped at the memory limit ({result.max_memory_mb:,} MiB resident, reached with "
                f"{result.states:,} states): the result is partial; raise it with --max-memory MIB "
                "(0: no limit), or tighten the model's bounds")
    if result.limit == "interrupted":
        return "interrupted (Ctrl-C): the result so far, which proves nothing about the states not reached"
    if result.limit == "depth":
        return "stopped at the depth limit: raise --depth to go deeper"
    return None


def summary_text(result: CheckResult, *, coverage: bool = True, verbose: bool = False) -> str:
    """The report; ``verbose`` lists each table row the exploration did not take."""
    lines = [f"dfachat check: {_config_line(result.config)}"]
    how = (
        result.strategy
        + (", symmetry" if result.symmetry else "")
        + ("" if result.reduce else ", no reduction")
    )
    if result.workers > 1:
        how += f", {result.workers} workers"
    state = (
        "complete"
        if result.complete
        else f"stopped: {result.limit} limit"
        if result.limit
        else "stopped"
    )
    if result.violations:
        state = "stopped at the first violation"
    lines.append(
        f"explored {result.states:,} distinct states, {result.transitions:,} transitions, depth {result.depth}, "
        f"in {result.seconds:.1f} s ({result.states_per_s:,.0f} states/s; {how}); {state}"
    )
    if result.truncated:
        lines.append(f"  {result.truncated:,} states at the depth limit were not expanded")
    lines += [f"warning: {w}" for w in result.warnings]
    if (stop := stop_message(result)) is not None:
        lines.append(stop)
    lines.append("properties:")
    width = max(len(p.name) for p in result.properties) if result.properties else 0
    for p in result.properties:
        lines.append(
            f"  {result.status(p):<12} {p.kind:<10} {p.name:<{width}}  {' '.join(p.rules)}"
        )
    for v in result.violations:
        lines.append("")
        lines.append(f"VIOLATED: {v.property.name} ({v.kind}): {v.property.doc}")
        for rule, text in v.property.rule_texts().items():
            lines.append(f"  {rule}: {text}")
        lines.append(
            f"shortest trace found ({len(v.steps)} steps):"
            if result.strategy == "bfs"
            else f"trace ({len(v.steps)} steps):"
        )
        lines.append(msc_text(v, result.config).rstrip())
    for name in result.unwitnessed:
        lines.append(
            f"NOT WITNESSED: {name}: the bounds never reach it (the model may be vacuous there)"
        )
    if coverage:
        report = coverage_report(result.coverage, result.config.version)
        lines.append("")
        lines.append(
            "coverage (rows of each role's table taken): "
            + ", ".join(f"{role} {c['taken']}/{c['total']}" for role, c in report.items())
        )
        for role, c in report.items():
            for r in c["rows"] if verbose else ():
                if not r["taken"]:
                    guards = f" [{r['guards']}]" if r["guards"] else ""
                    lines.append(
                        f"  unreached {role:<6} {r['state']} --{r['trigger']}{guards}--> {r['dest']} ({r['rule']})"
                    )
    return "\n".join(lines) + "\n"
