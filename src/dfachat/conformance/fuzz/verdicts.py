"""The check catalogue and the verdicts of one fuzzing run, for both modes.

A check is a numbered spec rule judged for one role (h2spec's way): its id is
the rule id, with a short suffix when one rule has several checks
(``R7.4/outcome``); section, level and text come from
:data:`dfachat.spec.SECTIONS`, never restated here. Every rule of the spec is
a check for each role, so an unexercised rule shows in the report as such.

:class:`Verdicts` collects what a run observed: each check is *exercised*
(the fuzzer put it to the test), and *fails* with a detail and a message
sequence chart. A MUST check that failed fails the run; a SHOULD check that
failed is reported as non-strict (it fails the run with ``strict``); a MAY
check never fails one. :class:`RunResult` is what the report writers take.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

from dfachat.spec import SECTIONS, rule_text

__all__ = [
    "CHECKS",
    "ROLES",
    "Chart",
    "ChartEvent",
    "Check",
    "CheckStatus",
    "Failure",
    "Level",
    "RunResult",
    "Verdicts",
    "check_for",
    "checks_for",
    "define_check",
]

ROLES = ("server", "client")


class Level(StrEnum):
    """How a broken rule is graded (R-levels of the spec, RFC 2119)."""

    MUST = "MUST"
    SHOULD = "SHOULD"
    MAY = "MAY"


class CheckStatus(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    NON_STRICT = "non-strict"  # a SHOULD (or MAY) check that failed
    UNEXERCISED = "unexercised"


@dataclass(frozen=True, slots=True)
class Check:
    """One check: a rule judged for one role, optionally one aspect of it (``suffix``)."""

    id: str  # "R7.4" or "R7.4/outcome"
    rule: str
    role: str
    section: int
    section_title: str
    level: Level
    title: str  # what this check judges; the rule's first sentence when it has no suffix

    @property
    def text(self) -> str:
        """The rule's normative text, limits filled in."""
        return rule_text(self.rule)


def _first_sentence(text: str, limit: int = 110) -> str:
    sentence = text.split(". ")[0].rstrip(".")
    return sentence if len(sentence) <= limit else sentence[: limit - 3] + "..."


def _catalogue() -> dict[str, dict[str, Check]]:
    out: dict[str, dict[str, Check]] = {role: {} for role in ROLES}
    for section in SECTIONS:
        for rule in section.rules:
            for role in ROLES:
                out[role][rule.id] = Check(
                    rule.id, rule.id, role, section.number, section.title, Level(rule.level),
                    _first_sentence(rule_text(rule.id)),
                )
    return out


CHECKS: dict[str, dict[str, Check]] = _catalogue()
"""``CHECKS[role][check_id]``: every check; one per rule and role, plus the suffixed ones."""


def define_check(role: str, rule: str, suffix: str, title: str) -> Check:
    """Register the check ``rule/suffix`` for ``role`` (idempotent); section and level from the rule."""
    base = CHECKS[role][rule]
    check_id = f"{rule}/{suffix}"
    existing = CHECKS[role].get(check_id)
    if existing is not None:
        return existing
    check = Check(check_id, rule, role, base.section, base.section_title, base.level, title)
    CHECKS[role][check_id] = check
    return check


def check_for(role: str, check_id: str) -> Check:
    """The check ``check_id`` of ``role``; an unknown suffix of a known rule is registered on the fly."""
    check = CHECKS[role].get(check_id)
    if check is not None:
        return check
    rule, _, suffix = check_id.partition("/")
    if rule not in CHECKS[role] or not suffix:
        raise KeyError(f"no check {check_id!r}: the spec has no rule {rule!r}")
    return define_check(role, rule, suffix, suffix.replace("-", " "))


def checks_for(role: str) -> list[Check]:
    """The catalogue of one role in spec order (section, rule number, then suffix)."""

    def order(check: Check) -> tuple[int, int, str]:
        section, number = check.rule[1:].split(".")
        return int(section), int(number), check.id

    return sorted(CHECKS[role].values(), key=order)


# --- message sequence charts --------------------------------------------------------------


class ChartEvent(NamedTuple):
    """One line of a sequence chart: an ``arrow`` from one participant to another, or a ``note``
    on one participant. Participants are indices into :attr:`Chart.participants`."""

    kind: str  # "arrow" or "note"
    source: int
    target: int | None
    text: str
    bad: bool = False  # the frame or event a check failed on


@dataclass(slots=True)
class Chart:
    """A message sequence chart: participants (the target is one of them) and events in order."""

    participants: list[str]
    events: list[ChartEvent] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"participants": list(self.participants), "events": [e._asdict() for e in self.events]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Chart:
        return cls(list(data["participants"]), [ChartEvent(**e) for e in data["events"]])


# --- verdicts -------------------------------------------------------------------------------


@dataclass(slots=True)
class Failure:
    """One observed deviation from a check."""

    check_id: str
    detail: str
    chart: Chart | None = None
    case: str | None = None  # the case file that reproduces it, once saved
    example: int | None = None  # the Hypothesis example it was seen in

    def as_dict(self) -> dict[str, Any]:
        return {
            "check": self.check_id,
            "detail": self.detail,
            "case": self.case,
            "example": self.example,
            "chart": None if self.chart is None else self.chart.as_dict(),
        }


class Verdicts:
    """What a run observed, per check of one role."""

    def __init__(self, role: str) -> None:
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, not {role!r}")
        self.role = role
        self.exercised: dict[str, int] = {}
        self.failures: dict[str, list[Failure]] = {}
        self.max_failures_per_check = 5  # the first few: the rest repeat them

    def exercise(self, check_id: str, times: int = 1) -> None:
        """The check was put to the test (and passed unless :meth:`fail` says otherwise)."""
        check_for(self.role, check_id)
        self.exercised[check_id] = self.exercised.get(check_id, 0) + times

    def fail(self, check_id: str, detail: str, chart: Chart | None = None, *, example: int | None = None) -> Failure:
        """The check failed; returns the recorded :class:`Failure` (kept up to a bound per check)."""
        self.exercise(check_id)
        failure = Failure(check_id, detail, chart, example=example)
        found = self.failures.setdefault(check_id, [])
        if len(found) < self.max_failures_per_check:
            found.append(failure)
        return failure

    def merge(self, other: Verdicts) -> None:
        for check_id, times in other.exercised.items():
            self.exercised[check_id] = self.exercised.get(check_id, 0) + times
        for check_id, failures in other.failures.items():
            found = self.failures.setdefault(check_id, [])
            found.extend(failures[: self.max_failures_per_check - len(found)])

    def status(self, check: Check) -> CheckStatus:
        if self.failures.get(check.id):
            return CheckStatus.FAILED if check.level is Level.MUST else CheckStatus.NON_STRICT
        if self.exercised.get(check.id):
            return CheckStatus.PASSED
        return CheckStatus.UNEXERCISED

    def checks(self) -> list[Check]:
        """Every check of the role (spec order), the suffixed ones included."""
        return checks_for(self.role)

    def failed(self, *, strict: bool = False) -> list[Check]:
        """The checks that fail the run: MUST failures; SHOULD too when ``strict``."""
        bad = []
        for check in self.checks():
            status = self.status(check)
            if status is CheckStatus.FAILED or (
                strict and status is CheckStatus.NON_STRICT and check.level is Level.SHOULD
            ):
                bad.append(check)
        return bad

    def all_failures(self) -> list[Failure]:
        return [f for check in self.checks() for f in self.failures.get(check.id, ())]


@dataclass(slots=True)
class RunResult:
    """A whole run, for the report writers (terminal, JSON, JUnit, HTML)."""

    mode: str  # "server" (the target is a server) or "client"
    target: str
    verdicts: Verdicts
    seed: int | None = None
    strict: bool = False
    examples: int = 0
    steps: int = 0
    duration_s: float = 0.0
    started: float = field(default_factory=time.time)
    coverage: dict[str, Any] = field(default_factory=dict)  # {"total": n, "covered": [...], "missing": [...]}
    cases: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # budget reached, target stopped ...
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def failed_checks(self) -> list[Check]:
        return self.verdicts.failed(strict=self.strict)

    @property
    def exit_code(self) -> int:
        """0 only when nothing failed (1 otherwise; usage errors are 2, the CLI's)."""
        return 1 if self.failed_checks else 0

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.duration_s if self.duration_s > 0 else 0.0
