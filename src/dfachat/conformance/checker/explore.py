"""Explicit-state exploration of the model: breadth-first, depth-first or random walks.

States are kept as fingerprints (the 64-bit hash of the state's tuple of
component ids, see :mod:`.model`) with the fingerprint of the state each was
first reached from, so a counterexample is rebuilt by replaying the model from
the initial state along that chain. Breadth-first (the default) finds the
shortest one. With ``symmetry`` the state stored is the canonical
representative under permutations of interchangeable clients; the replay keeps
the concrete clients, so a trace is always a real run of the model.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO

from dfachat.conformance.checker.model import Model, ModelConfig, Step, View
from dfachat.conformance.checker.properties import PROPERTIES, Property
from dfachat.fsm import TABLES_BY_VERSION
from dfachat.spec import CLOSED_TRIGGER

__all__ = ["CheckResult", "Checker", "Violation", "check", "coverage_report"]

STRATEGIES = ("bfs", "dfs", "random")


@dataclass(slots=True)
class Violation:
    property: Property
    kind: str  # always, eventually, sometimes, deadlock
    depth: int
    steps: list[Step] = field(default_factory=list)  # the trace, from the initial state
    states: list[tuple[int, ...]] = field(
        default_factory=list
    )  # concrete states along it (len(steps)+1)
    detail: str = ""


@dataclass(slots=True)
class CheckResult:
    config: ModelConfig
    strategy: str
    symmetry: bool
    reduce: bool
    properties: list[Property]
    states: int = 0  # distinct states
    transitions: int = 0
    depth: int = 0  # the deepest level reached
    seconds: float = 0.0
    complete: bool = False  # every reachable state within the bounds was explored
    limit: str | None = None  # what stopped it early: depth, states, memory, random, interrupted
    max_states: int | None = None  # the bounds it ran under (None: none)
    max_memory_mb: int | None = None
    memory_mb: float = 0.0  # the process's resident memory at the end
    truncated: int = 0  # states at the depth limit whose successors were not explored
    violations: list[Violation] = field(default_factory=list)
    witnessed: dict[str, int] = field(
        default_factory=dict
    )  # sometimes -> depth of its first witness
    skipped: list[str] = field(default_factory=list)  # properties the bounds cannot exercise
    coverage: set[tuple[str, str, str, int]] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)
    workers: int = 1
    model: Model | None = None

    @property
    def ok(self) -> bool:
        return not self.violations and not self.unwitnessed

    @property
    def unwitnessed(self) -> list[str]:
        """Witnesses a complete exploration did not find (an incomplete one proves nothing here)."""
        if not self.complete:
            return []
        return [
            p.name
            for p in self.properties
            if p.kind == "sometimes" and p.name not in self.witnessed and p.name not in self.skipped
        ]

    @property
    def states_per_s(self) -> float:
        return self.states / self.seconds if self.seconds else 0.0

    def status(self, prop: Property) -> str:
        """violated, holds (complete exploration), unrefuted (incomplete), witnessed,
        unwitnessed, not witnessed yet (incomplete), skipped (the bounds cannot exercise it)."""
        if prop.name in self.skipped:
            return "skipped"
        if any(v.property is prop for v in self.violations):
            return "violated"
        if prop.kind == "sometimes":
            if prop.name in self.witnessed:
                return "witnessed"
            return "unwitnessed" if self.complete else "not yet"
        return "holds" if self.complete else "unrefuted"


def resident_mb() -> float:
    """This process's resident memory in MiB (its peak where /proc is missing)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class _OverMemory(Exception):
    pass


class _Progress:
    """Every ``interval`` seconds: the memory bound checked and, on a terminal, a status line
    with an estimate of the time left to the state bound."""

    def __init__(
        self,
        stream: TextIO | None,
        interval: float = 0.5,
        *,
        max_states: int | None = None,
        max_memory_mb: int | None = None,
    ) -> None:
        self.stream = stream
        self.interval = interval
        self.max_states = max_states
        self.max_memory_mb = max_memory_mb
        self.start = time.perf_counter()
        self.last = 0.0
        self.shown = False

    def __call__(
        self, states: int, distinct: int, queue: int, depth: int, force: bool = False
    ) -> None:
        now = time.perf_counter()
        if not force and now - self.last < self.interval:
            return
        self.last = now
        memory = resident_mb() if self.max_memory_mb is not None or self.stream else 0.0
        if self.max_memory_mb is not None and memory >= self.max_memory_mb:
            raise _OverMemory
        if self.stream is None:
            return
        elapsed = max(now - self.start, 1e-9)
        rate = distinct / elapsed
        estimate = ""
        if self.max_states is not None and rate > 0:
            estimate = f"  ~{max(self.max_states - distinct, 0) / rate:,.0f} s to the state limit at most"
        self.stream.write(
            f"\r  {distinct:>10,} distinct states  {rate:>8,.0f}/s  queue {queue:>9,}  depth {depth:>3}"
            f"  {memory:,.0f} MiB  {elapsed:6.1f} s{estimate} "
        )
        self.stream.flush()
        self.shown = True

    def done(self) -> None:
        if self.stream is not None and self.shown:
            self.stream.write("\n")
            self.stream.flush()


class _Found(Exception):
    def __init__(self, violations: list[Violation]) -> None:
        self.violations = violations


class Checker:
    """Explores one model and judges the properties. See :func:`check`."""

    def __init__(
        self,
        config: ModelConfig,
        *,
        properties: Iterable[str] | None = None,
        symmetry: bool = False,
        reduce: bool = True,
        model_cls: type[Model] = Model,
    ) -> None:
        self.config = config
        self.model = model_cls(config)
        self.symmetry = symmetry
        self.reduce = reduce
        names = list(PROPERTIES) if properties is None else list(properties)
        self.properties = [PROPERTIES[name] for name in names]
        self.active = [p for p in self.properties if p.applies(config)]
        self.skipped = [p.name for p in self.properties if not p.applies(config)]
        self.by_event: dict[type, list[Property]] = {}
        self.pure_by_event: dict[type, list[Property]] = {}
        self.impure_by_event: dict[type, list[Property]] = {}
        for p in self.active:
            for event_type in p.on:
                self.by_event.setdefault(event_type, []).append(p)
                (self.pure_by_event if p.pure else self.impure_by_event).setdefault(
                    event_type, []
                ).append(p)
        self._verdicts: dict[int, list[Property]] = {}
        self.state_always = [p for p in self.active if p.kind == "always" and not p.on]
        self.state_eventually = [p for p in self.active if p.kind == "eventually"]
        self.state_sometimes = [p for p in self.active if p.kind == "sometimes" and not p.on]
        self.witnessed: dict[str, int] = {}

    # --- judging ---------------------------------------------------------------------------
    def _canon(self, state: tuple[int, ...]) -> tuple[int, ...]:
        return self.model.canonical(state) if self.symmetry else state

    def judge_step(
        self, before: tuple[int, ...], step: Step, after: tuple[int, ...], depth: int
    ) -> list[Property]:
        """The properties ``step`` violates; records the sometimes it witnesses.

        A shared (memoized) step is judged by the properties that read only the event
        once; the others, which read the states, every time."""
        failed: list[Property] = []
        view = None
        if step.shared:
            verdict = self._verdicts.get(id(step))
            if verdict is None:
                verdict = self._verdicts[id(step)] = self._judge_pure(step, depth)
            failed += verdict
            by_event = self.impure_by_event
        else:
            by_event = self.by_event
        for event in step.events:
            props = by_event.get(type(event))
            if not props:
                continue
            if view is None:
                view = View(self.model, after, step, before=before)
            for p in props:
                if p.kind == "sometimes":
                    if p.name not in self.witnessed and p.fn(event, view):
                        self.witnessed[p.name] = depth
                elif not p.fn(event, view):
                    failed.append(p)
        return failed

    def _judge_pure(self, step: Step, depth: int) -> list[Property]:
        failed = []
        for event in step.events:
            for p in self.pure_by_event.get(type(event), ()):
                if p.kind == "sometimes":
                    if p.name not in self.witnessed and p.fn(event, None):
                        self.witnessed[p.name] = depth
                elif not p.fn(event, None):
                    failed.append(p)
        return failed

    def judge_state(self, state: tuple[int, ...], enabled: int, depth: int) -> list[Property]:
        """The properties ``state`` violates (``enabled``: how many steps it has)."""
        view = View(self.model, state, None, enabled)
        failed = [p for p in self.state_always if not p.fn(view)]
        if self.state_eventually and (enabled == 0 or view.quiet):
            failed += [p for p in self.state_eventually if not p.fn(view)]
        for p in self.state_sometimes:
            if p.name not in self.witnessed and p.fn(view):
                self.witnessed[p.name] = depth
        return failed

    # --- exploring -------------------------------------------------------------------------
    def run(
        self,
        *,
        strategy: str = "bfs",
        max_depth: int | None = None,
        max_states: int | None = None,
        max_memory_mb: int | None = None,
        seed: int = 0,
        progress: TextIO | None = None,
    ) -> CheckResult:
        """Explore; stop at a bound (``result.limit`` says which) or at Ctrl-C (KeyboardInterrupt:
        ``limit`` "interrupted"), with the result so far."""
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}")
        result = CheckResult(self.config, strategy, self.symmetry, self.reduce, self.properties)
        result.model = self.model
        result.max_states, result.max_memory_mb = max_states, max_memory_mb
        result.skipped = list(self.skipped)
        if self.symmetry and self.state_eventually and any(len(g) > 1 for g in self.model.groups):
            result.warnings.append(
                "symmetry reduction with eventually properties: a liveness verdict holds for the "
                "canonical representatives only, which is unsound if a property tells the clients apart"
            )
        show = _Progress(progress, max_states=max_states, max_memory_mb=max_memory_mb)
        start = time.perf_counter()
        try:
            explore = {"bfs": self._bfs, "dfs": self._dfs, "random": self._random}[strategy]
            explore(result, max_depth, max_states, seed, show)
        except _Found as found:
            result.violations = found.violations
        except _OverMemory:
            result.limit, result.complete = "memory", False
        except KeyboardInterrupt:  # Ctrl-C: the partial result is still worth reporting
            result.limit, result.complete = "interrupted", False
        finally:
            show.done()
        result.memory_mb = resident_mb()
        result.seconds = time.perf_counter() - start
        result.witnessed = dict(self.witnessed)
        result.coverage = set(self.model.coverage.taken)
        return result

    def _bfs(
        self,
        result: CheckResult,
        max_depth: int | None,
        max_states: int | None,
        seed: int,
        show: Any,
    ) -> None:
        model = self.model
        canon = self._canon
        init = canon(model.initial())
        parents: dict[int, int] = {hash(init): 0}
        frontier = [init]
        depth = 0
        transitions = 0
        complete = True
        while frontier:
            result.depth = depth
            at_limit = max_depth is not None and depth >= max_depth
            following: list[tuple[int, ...]] = []
            for state in frontier:
                found = model.successors(state, reduce=self.reduce)
                failed = self.judge_state(state, len(found), depth)
                if failed:
                    raise _Found(self._state_violation(failed, state, parents, depth))
                if at_limit:
                    if found:
                        result.truncated += 1
                        complete = False
                    continue
                fp_state = hash(state)
                for step, nxt in found:
                    transitions += 1
                    nxt = canon(nxt)
                    if step.events:
                        failed = self.judge_step(state, step, nxt, depth + 1)
                        if failed:
                            raise _Found(self._step_violation(failed, state, parents, depth, nxt))
                    fp = hash(nxt)
                    if fp not in parents:
                        parents[fp] = fp_state
                        following.append(nxt)
                result.states = len(parents)
                result.transitions = transitions
                show(transitions, len(parents), len(following) + len(frontier), depth)
                if max_states is not None and len(parents) >= max_states:
                    result.limit = "states"
                    result.complete = False
                    return
            frontier = following
            depth += 1 if frontier else 0
        if not complete:
            result.limit = "depth"
        result.complete = complete
        show(transitions, len(parents), 0, depth, force=True)

    def _dfs(
        self,
        result: CheckResult,
        max_depth: int | None,
        max_states: int | None,
        seed: int,
        show: Any,
    ) -> None:
        model = self.model
        canon = self._canon
        init = canon(model.initial())
        parents: dict[int, int] = {hash(init): 0}
        stack: list[tuple[tuple[int, ...], int]] = [(init, 0)]
        transitions = 0
        complete = True
        while stack:
            state, depth = stack.pop()
            result.depth = max(result.depth, depth)
            found = model.successors(state, reduce=self.reduce)
            failed = self.judge_state(state, len(found), depth)
            if failed:
                raise _Found(self._state_violation(failed, state, parents, depth))
            if max_depth is not None and depth >= max_depth:
                if found:
                    result.truncated += 1
                    complete = False
                continue
            fp_state = hash(state)
            for step, nxt in reversed(found):
                transitions += 1
                nxt = canon(nxt)
                if step.events:
                    failed = self.judge_step(state, step, nxt, depth + 1)
                    if failed:
                        raise _Found(self._step_violation(failed, state, parents, depth, nxt))
                fp = hash(nxt)
                if fp not in parents:
                    parents[fp] = fp_state
                    stack.append((nxt, depth + 1))
            result.states = len(parents)
            result.transitions = transitions
            show(transitions, len(parents), len(stack), depth)
            if max_states is not None and len(parents) >= max_states:
                result.limit = "states"
                return
        result.limit = None if complete else "depth"
        result.complete = complete

    def _random(
        self,
        result: CheckResult,
        max_depth: int | None,
        max_states: int | None,
        seed: int,
        show: Any,
    ) -> None:
        """Random walks from the initial state, each to a state without successors or the depth
        limit (default 200), until ``max_states`` steps (default 100,000) have been taken."""
        model = self.model
        rng = random.Random(seed)
        limit = max_depth if max_depth is not None else 200
        budget = max_states if max_states is not None else 100_000
        seen: set[int] = set()
        transitions = 0
        while transitions < budget:
            state = model.initial()
            path_states = [state]
            path_steps: list[Step] = []
            for depth in range(limit + 1):
                seen.add(hash(self._canon(state)))
                found = model.successors(state, reduce=self.reduce)
                failed = self.judge_state(state, len(found), depth)
                if failed:
                    raise _Found(
                        [self._violation(p, depth, path_steps, path_states) for p in failed]
                    )
                if not found or depth == limit:
                    break
                step, nxt = found[rng.randrange(len(found))]
                transitions += 1
                path_steps.append(step)
                path_states.append(nxt)
                if step.events:
                    failed = self.judge_step(state, step, nxt, depth + 1)
                    if failed:
                        raise _Found(
                            [self._violation(p, depth + 1, path_steps, path_states) for p in failed]
                        )
                state = nxt
                result.depth = max(result.depth, depth + 1)
            result.states = len(seen)
            result.transitions = transitions
            show(transitions, len(seen), 0, result.depth)
        result.limit = "random"
        result.complete = False

    # --- counterexamples -------------------------------------------------------------------
    def _violation(
        self, prop: Property, depth: int, steps: list[Step], states: list[tuple[int, ...]]
    ) -> Violation:
        kind = "deadlock" if prop.name == "no_deadlock" else prop.kind
        return Violation(prop, kind, depth, list(steps), list(states))

    def _chain(self, parents: dict[int, int], fp: int) -> list[int]:
        chain = [fp]
        while parents.get(chain[-1], 0) != 0:
            chain.append(parents[chain[-1]])
        return chain[::-1]

    def _replay(self, chain: list[int]) -> tuple[list[Step], list[tuple[int, ...]]]:
        """The concrete run through the canonical fingerprints of ``chain``."""
        state = self.model.initial()
        states, steps = [state], []
        for fp in chain[1:]:
            for step, nxt in self.model.successors(state, reduce=self.reduce):
                if hash(self._canon(nxt)) == fp:
                    steps.append(step)
                    states.append(nxt)
                    state = nxt
                    break
            else:  # pragma: no cover - the chain came from this very model
                raise RuntimeError("could not replay the counterexample")
        return steps, states

    def _state_violation(
        self, failed: list[Property], state: tuple[int, ...], parents: dict[int, int], depth: int
    ) -> list[Violation]:
        steps, states = self._replay(self._chain(parents, hash(state)))
        return [self._violation(p, depth, steps, states) for p in failed]

    def _step_violation(
        self,
        failed: list[Property],
        state: tuple[int, ...],
        parents: dict[int, int],
        depth: int,
        nxt: tuple[int, ...],
    ) -> list[Violation]:
        steps, states = self._replay(self._chain(parents, hash(state)))
        target = hash(nxt)
        for step, after in self.model.successors(states[-1], reduce=self.reduce):
            if hash(self._canon(after)) != target:
                continue
            view = View(self.model, after, step, before=states[-1])
            if any(
                not p.fn(ev, view) for p in failed for ev in step.events if isinstance(ev, p.on)
            ):
                steps.append(step)
                states.append(after)
                break
        return [self._violation(p, depth + 1, steps, states) for p in failed]


def check(
    config: ModelConfig,
    *,
    properties: Iterable[str] | None = None,
    strategy: str = "bfs",
    max_depth: int | None = None,
    max_states: int | None = None,
    max_memory_mb: int | None = None,
    symmetry: bool = False,
    reduce: bool = True,
    workers: int = 1,
    seed: int = 0,
    progress: TextIO | None = None,
    model_cls: type[Model] = Model,
) -> CheckResult:
    """Explore ``config``'s model and judge ``properties`` (default: all). See the module doc.

    ``max_memory_mb`` bounds the process's resident memory (one process only: the workers of
    ``workers > 1`` are bounded by ``max_states``)."""
    if workers > 1:
        from dfachat.conformance.checker.parallel import check_parallel

        result = check_parallel(
            config,
            properties=properties,
            max_depth=max_depth,
            max_states=max_states,
            symmetry=symmetry,
            reduce=reduce,
            workers=workers,
            progress=progress,
            model_cls=model_cls,
        )
        result.max_states = max_states
        return result
    checker = Checker(
        config, properties=properties, symmetry=symmetry, reduce=reduce, model_cls=model_cls
    )
    return checker.run(
        strategy=strategy, max_depth=max_depth, max_states=max_states, max_memory_mb=max_memory_mb,
        seed=seed, progress=progress,
    )


def coverage_report(taken: set[tuple[str, str, str, int]], version: int = 1) -> dict[str, dict[str, Any]]:
    """Per role: every row of its table in protocol ``version``, whether the exploration took it."""
    out: dict[str, dict[str, Any]] = {}
    for role, table in TABLES_BY_VERSION[version].items():
        rows: list[dict[str, Any]] = []
        for _direction, mapping in (("send", table.send), ("recv", table.recv)):
            for state, row in mapping.items():
                for branches in row.values():
                    for index, branch in enumerate(branches):
                        rows.append(_row(role, state, branch.trigger, index, branch, taken))
        for state, branch in table.closed.items():
            rows.append(_row(role, state, CLOSED_TRIGGER, 0, branch, taken))
        reached = sum(r["taken"] for r in rows)
        out[role] = {"rows": rows, "taken": reached, "total": len(rows)}
    return out


def _row(
    role: str, state: str, trigger: str, index: int, branch: Any, taken: set[Any]
) -> dict[str, Any]:
    return {
        "state": state,
        "trigger": trigger,
        "guards": branch.describe_guards(),
        "dest": branch.dest or state,
        "rule": branch.rule,
        "taken": (role, state, trigger, index) in taken,
    }
