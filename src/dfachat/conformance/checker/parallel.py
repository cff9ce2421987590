"""Breadth-first exploration with several processes (``--workers K``).

Level-synchronous and partitioned by owner: a state belongs to the worker
given by the value hash of its first client's component (which forked
processes compute alike, and which most steps leave unchanged, so most
successors stay where they were found). Each level, every worker expands the
new states it owns, keeps the successors it owns (deduplicated in its own
visited set, on tuples of its own component ids) and sends the others, as
component values, to their owners' queues, where they are interned again.
With symmetry the canonical order of interchangeable clients is by value hash,
for the same reason; it may pick other representatives than the one-process
search (by component id), so the partial-order reduction, which reads the
order, may keep a few more or fewer states -- the verdicts are the same.

States that cross are pickled, which costs about as much as expanding them;
see docs/CHECKING.md for what it gains on this 2-core machine. A violation
stops every worker; its shortest trace is then rebuilt by a sequential
breadth-first search bounded at its depth.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Iterable
from typing import Any, TextIO

from dfachat.conformance.checker.explore import Checker, CheckResult, _Progress
from dfachat.conformance.checker.model import Model, ModelConfig

__all__ = ["check_parallel"]


class _Keys:
    """Per process: each component's value hash, cached by component id. Forked processes hash
    values alike, so owners and canonical orders derived from these agree across workers,
    while a worker dedups its own states on tuples of its own component ids (cheap)."""

    def __init__(self, model: Model, k: int, symmetry: bool) -> None:
        self.model = model
        self.k = k
        self.groups = [g for g in model.groups if len(g) > 1] if symmetry else []
        self._hash: dict[int, int] = {}

    def value_hash(self, ident: int) -> int:
        h = self._hash.get(ident)
        if h is None:
            h = self._hash[ident] = hash(self.model._vals[ident])
        return h

    def canonical(self, state: tuple[int, ...]) -> tuple[int, ...]:
        """Interchangeable clients' bundles in the order of their value hashes."""
        if not self.groups:
            return state
        out = list(state)
        vh = self.value_hash
        for group in self.groups:
            bundles = sorted(
                (state[4 * i : 4 * i + 4] for i in group), key=lambda b: tuple(map(vh, b))
            )
            for i, bundle in zip(group, bundles, strict=True):
                out[4 * i : 4 * i + 4] = bundle
        return tuple(out)

    def owner(self, state: tuple[int, ...]) -> int:
        """By the first client's component, which most steps leave alone: most successors
        stay with the worker that found them."""
        return self.value_hash(state[0]) % self.k


def _worker(
    me: int,
    k: int,
    config: ModelConfig,
    names: list[str] | None,
    symmetry: bool,
    reduce: bool,
    model_cls: type[Model],
    control: Any,
    inboxes: list[Any],
) -> None:
    checker = Checker(config, properties=names, symmetry=False, reduce=reduce, model_cls=model_cls)
    model = checker.model
    keys = _Keys(model, k, symmetry)
    vals = model._vals
    intern = model.intern
    visited: set[int] = set()
    frontier: list[tuple[int, ...]] = []
    initial = keys.canonical(model.initial())
    if keys.owner(initial) == me:
        visited.add(hash(initial))
        frontier.append(initial)
    depth = 0
    while True:
        command = control.recv()
        if command[0] == "stop":
            control.send(("done", set(model.coverage.taken), dict(checker.witnessed)))
            return
        max_depth = command[1]
        outboxes: list[list[tuple[Any, ...]]] = [[] for _ in range(k)]
        following: list[tuple[int, ...]] = []
        failed: list[tuple[str, int]] = []
        transitions = truncated = 0
        for state in frontier:
            found = model.successors(state, reduce=reduce)
            bad = checker.judge_state(state, len(found), depth)
            if bad:
                failed += [(p.name, depth) for p in bad]
                continue
            if max_depth is not None and depth >= max_depth:
                truncated += bool(found)
                continue
            for step, nxt in found:
                transitions += 1
                if step.events:
                    bad = checker.judge_step(state, step, nxt, depth + 1)
                    if bad:
                        failed += [(p.name, depth + 1) for p in bad]
                nxt = keys.canonical(nxt)
                owner = keys.owner(nxt)
                if owner == me:
                    fp = hash(nxt)
                    if fp not in visited:
                        visited.add(fp)
                        following.append(nxt)
                else:
                    outboxes[owner].append(tuple(vals[i] for i in nxt))
        for owner in range(k):
            if owner != me:
                inboxes[owner].put((me, outboxes[owner]))
        for _ in range(k - 1):
            _, batch = inboxes[me].get()
            for values in batch:
                state = tuple(intern(v) for v in values)
                fp = hash(state)
                if fp not in visited:
                    visited.add(fp)
                    following.append(state)
        frontier = following
        depth += 1
        control.send(("level", len(visited), len(frontier), transitions, truncated, failed))


def check_parallel(
    config: ModelConfig,
    *,
    properties: Iterable[str] | None = None,
    max_depth: int | None = None,
    max_states: int | None = None,
    symmetry: bool = False,
    reduce: bool = True,
    workers: int = 2,
    progress: TextIO | None = None,
    model_cls: type[Model] = Model,
) -> CheckResult:
    """Breadth-first search with ``workers`` processes; the result is as :func:`check`'s."""
    names = None if properties is None else list(properties)
    probe = Checker(config, properties=names, symmetry=symmetry, reduce=reduce, model_cls=model_cls)
    result = CheckResult(config, "bfs", symmetry, reduce, probe.properties, workers=workers)
    result.model = probe.model
    result.skipped = list(probe.skipped)
    context = mp.get_context("fork")
    inboxes = [context.Queue() for _ in range(workers)]
    pipes = [context.Pipe() for _ in range(workers)]
    procs = [
        context.Process(
            target=_worker,
            args=(w, workers, config, names, symmetry, reduce, model_cls, pipes[w][1], inboxes),
            daemon=True,
        )
        for w in range(workers)
    ]
    show = _Progress(progress)
    start = time.perf_counter()
    for proc in procs:
        proc.start()
    depth = 0
    failed: list[tuple[str, int]] = []
    complete = True
    try:
        while True:
            for parent, _ in pipes:
                parent.send(("level", max_depth))
            visited = frontier = 0
            for parent, _ in pipes:
                _, seen, queued, transitions, truncated, bad = parent.recv()
                visited += seen
                frontier += queued
                result.transitions += transitions
                result.truncated += truncated
                failed += bad
            result.states = visited
            result.depth = depth
            show(result.transitions, visited, frontier, depth)
            if failed:
                break
            if result.truncated:
                complete = False
            if max_states is not None and visited >= max_states:
                result.limit = "states"
                complete = False
                break
            if not frontier:
                break
            depth += 1
        for parent, _ in pipes:
            parent.send(("stop",))
        for parent, _ in pipes:
            _, taken, witnessed = parent.recv()
            result.coverage |= taken
            for name, at in witnessed.items():
                result.witnessed[name] = min(at, result.witnessed.get(name, at))
    finally:
        show.done()
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
    result.seconds = time.perf_counter() - start
    result.complete = complete and not failed and result.limit is None
    if result.truncated and result.limit is None:
        result.limit = "depth"
    if failed:  # the shortest trace: a sequential search bounded at the violation's depth
        names_failed = sorted({name for name, _ in failed})
        bound = min(at for _, at in failed)
        again = Checker(
            config, properties=names_failed, symmetry=symmetry, reduce=reduce, model_cls=model_cls
        )
        replay = again.run(strategy="bfs", max_depth=bound)
        if not replay.violations:  # the one-process reduction may reach it a little deeper
            again = Checker(
                config,
                properties=names_failed,
                symmetry=symmetry,
                reduce=reduce,
                model_cls=model_cls,
            )
            replay = again.run(strategy="bfs")
        by_name = {p.name: p for p in result.properties}
        for v in replay.violations:
            v.property = by_name[v.property.name]
        result.violations = replay.violations
    return result
