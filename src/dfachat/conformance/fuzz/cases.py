"""Case files: a shrunk failing example, saved to run again (``dfachat fuzz replay``).

A case (format ``dfachat-fuzz-case/1``) lists the actions of the example --
connect, send these messages (split at these offsets), send these raw bytes,
drop, stay silent -- with every message as data
(:func:`dfachat.conformance.checker.report.message_json`), the failures seen and the
accounts it used, so it runs against any target with the same number of
accounts. :func:`load_actions` also reads the model checker's counterexample
traces (``dfachat-trace/1``): their client steps become the same actions,
the checker's accounts mapped in order onto the target's.
"""

from __future__ import annotations

import json
import re
import struct
import time
import zlib
from pathlib import Path
from typing import Any

from dfachat.conformance.fuzz.oracle import Account, Driver, ServerRows
from dfachat.conformance.fuzz.verdicts import Chart, ChartEvent, Verdicts
from dfachat.conformance.fuzz.wire import FuzzError, Target
from dfachat.errors import LocalProtocolError
from dfachat.server.store import name_key

__all__ = ["CASE_FORMAT", "ReplayResult", "load_actions", "replay", "save_case"]

CASE_FORMAT = "dfachat-fuzz-case/1"


def save_case(directory: Path, best: dict[str, Any], *, target: str, seed: int | None,
              accounts: list[Account]) -> Path:
    """Write the case to ``directory`` (created) under a name from its first failed check; its path."""
    directory.mkdir(parents=True, exist_ok=True)
    first = best["failures"][0][0] if best["failures"] else "case"
    stem = re.sub(r"[^A-Za-z0-9.-]+", "_", first) + time.strftime("-%Y%m%dT%H%M%S")
    path = directory / f"{stem}.json"
    n = 1
    while path.exists():
        n += 1
        path = directory / f"{stem}-{n}.json"
    data = {
        "format": CASE_FORMAT,
        "target": target,
        "seed": seed,
        "accounts": [a.name for a in accounts],
        "failures": [{"check": c, "detail": d} for c, d in best["failures"]],
        "actions": best["actions"],
        "chart": best["chart"].as_dict() if isinstance(best["chart"], Chart) else best["chart"],
    }
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise FuzzError(f"cannot read case {path}: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise FuzzError(f"case {path} is not JSON ({exc}): give a case file saved by "
                        "`dfachat fuzz` or a trace of `dfachat check --trace`") from None
    if not isinstance(data, dict):
        raise FuzzError(f"case {path} is not a JSON object: give a case file saved by "
                        "`dfachat fuzz` or a trace of `dfachat check --trace`")
    return data


def _trailing_byte(frame: bytes) -> bytes:
    """The frame with one byte after its payload's last field (R2.7), length and CRC adjusted."""
    head, payload = frame[:8], frame[8:-4] + b"\x00"
    head = head[:4] + struct.pack(">I", len(payload))
    return head + payload + struct.pack(">I", zlib.crc32(head + payload))


def _trace_actions(data: dict[str, Any], accounts: list[Account]) -> list[dict[str, Any]]:
    """A checker trace's client steps as actions; its accounts mapped in order onto ``accounts``."""
    from dfachat.codec import encode
    from dfachat.conformance.checker.report import message_from_json, message_json

    registered = [tuple(a) for a in data.get("config", {}).get("accounts", [])]
    if len(registered) > len(accounts):
        raise FuzzError(f"the trace uses {len(registered)} accounts; give as many --account options "
                        f"(got {len(accounts)})")
    names = {name_key(n): accounts[i] for i, (n, _) in enumerate(registered)}
    passwords = {pw: accounts[i].password for i, (_, pw) in enumerate(registered)}
    conn_of: dict[int, int] = {}
    actions: list[dict[str, Any]] = []
    for step in data.get("steps", []):
        if step.get("actor") != "client":
            continue
        client, action = step.get("client"), step.get("action")
        if action == "connect":
            conn_of[client] = sum(1 for a in actions if a["action"] == "connect")
            actions.append({"action": "connect", "conn": conn_of[client]})
            continue
        if client not in conn_of:
            continue
        if action == "drop":
            actions.append({"action": "drop", "conn": conn_of[client]})
        elif action in ("send", "send-malformed") and "message" in step:
            message = message_from_json(step["message"])
            if message.NAME == "USER" and name_key(message.name) in names:
                message = message.replace(name=names[name_key(message.name)].name)
            elif message.NAME == "PASS" and message.password in passwords:
                message = message.replace(password=passwords[message.password])
            elif message.NAME == "MSG":
                message = message.replace(recipients=tuple(
                    names[name_key(r)].name if name_key(r) in names else r for r in message.recipients))
            if action == "send":
                actions.append({"action": "send", "conn": conn_of[client], "messages": [message_json(message)],
                                "splits": []})
            else:
                # the sessions' version: the newest the trace's clients offered (traces before it: 1)
                version = max(data.get("config", {}).get("versions") or [1])
                raw = _trailing_byte(encode(message, "utf-8" if message.NAME != "MSG" else _encoding(data, client),
                                            version))
                actions.append({"action": "raw", "conn": conn_of[client], "hex": raw.hex(),
                                "what": f"{message.NAME} with a byte after its last field"})
    return actions


def _encoding(data: dict[str, Any], client: int) -> str:
    for entry in data.get("clients", []):
        if entry.get("client") == client:
            return str(entry.get("encoding", "utf-8"))
    return "utf-8"


def load_actions(path: Path, accounts: list[Account]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The actions of a case file or a checker trace, and the file's data."""
    from dfachat.conformance.checker.report import TRACE_FORMAT

    data = _read(path)
    kind = data.get("format")
    if kind == CASE_FORMAT:
        needed = len(data.get("accounts", []))
        if needed > len(accounts):
            raise FuzzError(f"case {path} uses {needed} accounts; give as many --account options (got {len(accounts)})")
        actions = data.get("actions")
        if not isinstance(actions, list):
            raise FuzzError(f"case {path} has no list of actions")
        return _map_case_accounts(actions, data.get("accounts", []), accounts), data
    if kind == TRACE_FORMAT:
        return _trace_actions(data, accounts), data
    raise FuzzError(f"{path} is neither a fuzz case ({CASE_FORMAT}) nor a checker trace ({TRACE_FORMAT}): "
                    f"format {kind!r}")


def _map_case_accounts(actions: list[dict[str, Any]], used: list[str], accounts: list[Account]) -> list[dict[str, Any]]:
    """A case's account names (and their passwords' suffixes) mapped in order onto the target's."""
    mapping = {name_key(n): accounts[i] for i, n in enumerate(used)}
    if all(mapping[k].key == k for k in mapping):
        return actions
    out = []
    for action in actions:
        action = dict(action)
        if action.get("action") == "send":
            messages = []
            for m in action["messages"]:
                fields = dict(m["fields"])
                if m["type"] == "USER" and name_key(fields["name"]) in mapping:
                    fields["name"] = mapping[name_key(fields["name"])].name
                if m["type"] == "MSG":
                    fields["recipients"] = [mapping[name_key(r)].name if name_key(r) in mapping else r
                                            for r in fields["recipients"]]
                messages.append({"type": m["type"], "fields": fields})
            action["messages"] = messages
        out.append(action)
    return out


class ReplayResult:
    """What a replay saw: the failures (check, detail), the chart, the verdicts."""

    def __init__(self, failures: list[tuple[str, str]], chart: Chart, verdicts: Verdicts, steps: int) -> None:
        self.failures = failures
        self.chart = chart
        self.verdicts = verdicts
        self.steps = steps


def replay(actions: list[dict[str, Any]], target: Target, accounts: list[Account], *,
           reply_timeout: float = 1.0) -> ReplayResult:
    """Run ``actions`` against ``target``, judged as in a fuzzing run."""
    from dfachat.conformance.checker.report import message_from_json

    verdicts = Verdicts("server")
    driver = Driver(target, accounts, verdicts=verdicts, reply_timeout=reply_timeout, rows=ServerRows())
    try:
        for number, action in enumerate(actions, 1):
            kind = action.get("action")
            try:
                if kind == "connect":
                    driver.open_conn()
                elif kind == "send":
                    messages = [message_from_json(m) for m in action["messages"]]
                    conn = driver.conns[action["conn"]]
                    if not conn.open:
                        continue
                    driver.send(action["conn"], messages, splits=action.get("splits", ()))
                elif kind == "raw":
                    if driver.conns[action["conn"]].open:
                        driver.send_raw(action["conn"], bytes.fromhex(action["hex"]), action.get("what", "raw bytes"))
                elif kind == "drop":
                    driver.drop(action["conn"])
                elif kind == "idle":
                    if driver.conns[action["conn"]].open:
                        driver.idle(action["conn"])
                elif kind == "barrier":
                    driver.ping_all()
                else:
                    raise FuzzError(f"action {number}: unknown action {kind!r}")
            except (KeyError, IndexError, TypeError, ValueError) as exc:
                raise FuzzError(f"action {number} ({kind}) is malformed: {exc!r}") from None
            except LocalProtocolError as exc:  # the target's answers took the session elsewhere
                driver.chart.events.append(ChartEvent("note", 0, None, f"action {number} not sent: {exc}"))
                break
        driver.settle()
    finally:
        driver.close()
    for check, detail in driver.failures:
        verdicts.fail(check, detail, driver.chart)
    return ReplayResult(list(driver.failures), driver.chart, verdicts, driver.steps)
