"""Breadth-first exploration with several processes (``--workers K``).

Level-synchronous and partitioned by owner: worker ``w`` owns the states whose
fingerprint (the hash of the state's component *values*, which forked
processes compute alike) is ``w`` modulo ``K``. Each level, every worker
expands the new states it owns, keeps the successors it owns (deduplicated in
its own visited set) and sends the others, as component values, to their
owners' queues. Component ids are per process, so states cross as values and
are interned again by their owner; with symmetry the canonical order of
interchangeable clients is by value hash for the same reason.

States cross process boundaries pickled, which costs about as much as
expanding them; on a 2-core machine this does not pay (see docs/CHECKING.md
for the measurement). A violation stops every worker; its shortest trace is
then rebuilt by a sequential breadth-first search bounded at its depth.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Iterable
from typing import Any, TextIO

from dfachat.conformance.explore import Checker, CheckResult, _Progress
from dfachat.conformance.model import Model, ModelConfig

__all__ = ["check_parallel"]


def _values(model: Model, state: tuple[int, ...]) -> tuple[Any, ...]:
    vals = model._vals
    return tuple(vals[i] for i in state)


def _canonical_values(model: Model, values: tuple[Any, ...], symmetry: bool) -> tuple[Any, ...]:
    if not symmetry:
        return values
    out = list(values)
    for group in model.groups:
        if len(group) < 2:
            continue
        bundles = sorted((values[4 * i : 4 * i + 4] for i in group), key=hash)
        for i, bundle in zip(group, bundles, strict=True):
            out[4 * i : 4 * i + 4] = bundle
    return tuple(out)


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
    visited: set[int] = set()
    frontier: list[tuple[int, ...]] = []
    initial = _canonical_values(model, _values(model, model.initial()), symmetry)
    if hash(initial) % k == me:
        visited.add(hash(initial))
        frontier.append(tuple(model.intern(v) for v in initial))
    depth = 0
    while True:
        command = control.recv()
        if command[0] == "stop":
            control.send(("done", set(model.coverage.taken), dict(checker.witnessed)))
            return
        max_depth = command[1]
        outboxes: list[list[tuple[int, tuple[Any, ...]]]] = [[] for _ in range(k)]
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
                values = _canonical_values(model, _values(model, nxt), symmetry)
                fp = hash(values)
                owner = fp % k
                if owner == me:
                    if fp not in visited:
                        visited.add(fp)
                        following.append(tuple(model.intern(v) for v in values))
                else:
                    outboxes[owner].append((fp, values))
        for owner in range(k):
            if owner != me:
                inboxes[owner].put((me, outboxes[owner]))
        for _ in range(k - 1):
            _, batch = inboxes[me].get()
            for fp, values in batch:
                if fp not in visited:
                    visited.add(fp)
                    following.append(tuple(model.intern(v) for v in values))
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
        by_name = {p.name: p for p in result.properties}
        for v in replay.violations:
            v.property = by_name[v.property.name]
        result.violations = replay.violations
    return result
