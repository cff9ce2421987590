"""The single source of truth: protocol versions 1 and 2 of dfachat (2 is a delta on 1).

* :mod:`.rules` -- the numbered rules every error and check cites;
* :mod:`.limits` -- constants and limits;
* :mod:`.encodings` -- the text encodings;
* :mod:`.codes` -- error codes, outcomes, reasons, flags;
* :mod:`.types` and :mod:`.messages` -- every packet layout, as construct schemas;
* :mod:`.machine` -- each role's DFA, as a transitions machine.

Importing this package checks that the parts agree (:func:`validate`): a
trigger naming no message, a guard or action nobody defines, a rule id that
does not exist -- each is a :class:`~dfachat.errors.SpecError` at import.
"""

from __future__ import annotations

import re

from dfachat.errors import SpecError
from dfachat.spec.codes import (
    ERROR_INFO,
    ByeReason,
    DeliverFlags,
    ErrorCode,
    ErrorFlags,
    ErrorInfo,
    LeftReason,
    ListFlags,
    Outcome,
)
from dfachat.spec.encodings import ENCODINGS, REPLACEMENT, Encoding, encoding_named
from dfachat.spec.limits import (
    DEFAULT_PORT,
    LIMITS,
    MAGIC,
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    Limits,
)
from dfachat.spec.machine import (
    ACTIONS,
    CLOSED_TRIGGER,
    GUARDS,
    ROLES,
    STATES,
    TRANSITIONS,
    StateSpec,
    build_machine,
    transitions_of,
)
from dfachat.spec.messages import (
    FRAME,
    FRAME_OVERHEAD,
    HEADER,
    MESSAGES,
    MESSAGES_BY_CODE,
    MESSAGES_BY_NAME,
    MessageSpec,
)
from dfachat.spec.rules import RULES, SECTIONS, Rule, Section, rule_text

__all__ = [
    "ACTIONS",
    "CLOSED_TRIGGER",
    "DEFAULT_PORT",
    "ENCODINGS",
    "ERROR_INFO",
    "FRAME",
    "FRAME_OVERHEAD",
    "GUARDS",
    "HEADER",
    "LIMITS",
    "MAGIC",
    "MESSAGES",
    "MESSAGES_BY_CODE",
    "MESSAGES_BY_NAME",
    "PROTOCOL_VERSION",
    "REPLACEMENT",
    "ROLES",
    "RULES",
    "SECTIONS",
    "STATES",
    "SUPPORTED_VERSIONS",
    "TRANSITIONS",
    "ByeReason",
    "DeliverFlags",
    "Encoding",
    "ErrorCode",
    "ErrorFlags",
    "ErrorInfo",
    "LeftReason",
    "Limits",
    "ListFlags",
    "MessageSpec",
    "Outcome",
    "Rule",
    "Section",
    "StateSpec",
    "build_machine",
    "encoding_named",
    "rule_text",
    "transitions_of",
    "validate",
]

_RULE_REF = re.compile(r"\bR\d+\.\d+\b")


def validate() -> None:
    """Check that the parts of the spec agree with each other; raise SpecError if not."""
    problems: list[str] = []
    codes = [m.code for m in MESSAGES]
    if len(set(codes)) != len(codes) or len(MESSAGES_BY_NAME) != len(MESSAGES):
        problems.append("message names and type codes must be unique")
    if any(not 0 < c < 256 for c in codes):
        problems.append("message type codes must fit one byte and not be 0 (ERROR.regarding uses 0)")
    for code in ErrorCode:
        if code not in ERROR_INFO:
            problems.append(f"error code {code.name} has no ERROR_INFO entry")
    cited = [info.rule for info in ERROR_INFO.values()]
    for role in ROLES:
        names = {s.name for s in STATES[role]}
        cited += [s.rule for s in STATES[role]]
        if sum(s.initial for s in STATES[role]) != 1:
            problems.append(f"{role}: exactly one initial state")
        for t in TRANSITIONS[role]:
            cited.append(t["rule"])
            trigger = t["trigger"]
            if trigger != CLOSED_TRIGGER:
                direction, _, message = trigger.partition("_")
                spec = MESSAGES_BY_NAME.get(message)
                if direction not in ("send", "recv") or spec is None:
                    problems.append(f"{role}: trigger {trigger} names no message")
                else:
                    sender = role if direction == "send" else ("client" if role == "server" else "server")
                    if sender not in spec.senders:
                        problems.append(f"{role}: {trigger}: {message} is not sent by the {sender}")
                    if t["since"] < spec.since:
                        problems.append(f"{role}: {trigger} is a row of version {t['since']}, before {message}")
            if t["since"] not in SUPPORTED_VERSIONS:
                problems.append(f"{role}: {trigger} names unsupported version {t['since']}")
            sources = t["source"] if isinstance(t["source"], list) else [t["source"]]
            for state in [*sources, t["dest"]]:
                if state is not None and state not in names:
                    problems.append(f"{role}: {trigger} names unknown state {state}")
            for guard in t["conditions"] + t["unless"]:
                if guard not in GUARDS:
                    problems.append(f"{role}: {trigger} uses undefined guard {guard}")
            for action in t["after"]:
                if action not in ACTIONS:
                    problems.append(f"{role}: {trigger} uses undefined action {action}")
    for section in SECTIONS:
        for rule in section.rules:
            cited += _RULE_REF.findall(rule.text)
    problems += [f"rule {r} is cited but not declared" for r in sorted(set(cited) - set(RULES))]
    try:
        for rule_id in RULES:
            rule_text(rule_id)
    except KeyError as exc:
        problems.append(f"a rule names an unknown limit {exc}")
    if problems:
        raise SpecError("the spec contradicts itself: " + "; ".join(problems), rule="R12.1")


validate()
