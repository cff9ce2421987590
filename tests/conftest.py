"""Shared test configuration: the Hypothesis profiles the tests run under, where Hypothesis keeps
what it computes once, and how the tests are split between pytest-xdist's workers (below).

``dev`` (the default): no deadline -- the codec's oracle (construct) is slow
and machines vary, so timing is never a failure. ``ci``: the same,
derandomized for reproducible runs; chosen when ``CI`` is set (as CI sets it),
or explicitly with ``HYPOTHESIS_PROFILE=ci``.
"""

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", settings.get_profile("dev"), derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))

# Hypothesis keeps what it computes once per machine under its storage directory (.hypothesis/
# in the working directory): which characters a codec encodes, for one, takes seconds of CPU.
# The programs the tests start in scratch directories (dfachat fuzz above all) share the
# suite's, rather than each computing it again in its first examples: seconds in which the
# fuzzer's open sessions fall silent, so that a server with a 3 s idle timeout rightly times
# one out, and the fuzzer, its keep-alive PING crossing the IDLE_TIMEOUT, blames the server
# (test_fuzz_kills' reference run with the short idle timeout failed so whenever both cores
# were busy).
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", str(Path.cwd() / ".hypothesis"))


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """Before any test runs (and before xdist starts its workers): what a fuzzer run needs at once,
    computed here if this machine has not yet (its regular expressions draw utf-8 characters)."""
    if not hasattr(session.config, "workerinput"):  # not in an xdist worker
        st.characters(codec="utf-8").validate()


# --- running in parallel (pytest-xdist: ``-n auto --dist loadgroup`` in pyproject.toml) ----------
#
# Each worker is a process of its own that collects every test and runs the ones it is handed.
# Three things make the split worth having:
#
# * Half of the suite's time is spent waiting, not computing: on sockets, idle timeouts, login
#   back-offs, servers starting, fuzzers' time budgets. Measured on two otherwise idle cores:
#   430-500 s of CPU in all; 330 s of wall clock with two workers, 290 s with three, 245-280 s
#   with four. So ``-n auto`` starts two workers per core, not one; ``-n N`` or
#   PYTEST_XDIST_AUTO_NUM_WORKERS=N says otherwise.
# * A module's (or class's, or package's) fixture is built once per worker that runs a test using
#   it, so the tests sharing an expensive one (the checker's small model, the scenarios, the
#   protocol document) must land on one worker: they get an xdist_group, and ``loadgroup``
#   hands a group out whole. Session fixtures (Xvfb) are per worker, as they must be.
# * Tests are handed out in collection order, one at a time as workers free up. A test of half a
#   minute handed out last runs alone while the others idle, so the slow ones (SLOW below,
#   tens of seconds each) are collected first. xdist hands out the groups first, largest first.

SLOW = (  # longest first (seconds each, measured with four workers on two cores)
    "tests/fsm/test_conversations.py::TestCrossingConversation",  # 50
    "tests/conformance/test_real_spec.py::test_three_clients_every_property_holds",  # 35
    "tests/test_readme.py::test_the_walk_through_runs_as_written",  # 35
    "tests/conformance/test_fuzz_kills.py::test_the_fuzzer_catches[ignores_idle_timeout]",  # 35
    "tests/server/test_soak.py::test_short_soak_loses_nothing",  # 15-30 each
    "tests/fsm/test_conversations.py::TestSynchronousConversation",  # 30
    "tests/test_core_mutations.py::test_the_fuzzer_catches",  # 10-30 each
    "tests/conformance/test_fuzz_kills.py::test_the_fuzzer_catches",  # 10-20 each
    "tests/conformance/fuzz/test_server_mode.py::test_the_reference_server_passes",  # 2-20 each
    "tests/conformance/test_real_spec.py::test_two_clients_every_property_holds",  # 15
    "tests/conformance/test_fuzz_kills.py::test_the_reference_server_passes",  # 5-10 each
    "tests/conformance/fuzz/test_server_mode.py::",  # 5-10 each
    "tests/conformance/fuzz_client/test_client_mode.py::",  # 2-10 each
    "tests/test_bench.py::",  # 5 each
    "tests/test_architecture.py::test_adding_typing_reaches_every_part",  # 5
)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto``: two workers per core (see above)."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # xdist's own answer: that number
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return 2 * cores


def _shared_scope(item: pytest.Item) -> str | None:
    """The node id of the widest module, class or package fixture ``item`` uses, or None."""
    info = getattr(item, "_fixtureinfo", None)  # a test function's fixtures (pytest's own record)
    scopes = {d.scope for defs in info.name2fixturedefs.values() for d in defs} if info else set()
    for scope, node_type in (("package", pytest.Package), ("module", pytest.Module), ("class", pytest.Class)):
        if scope in scopes:
            node = item.getparent(node_type)
            return node.nodeid if node is not None else None
    return None


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        return next((i for i, prefix in enumerate(SLOW) if item.nodeid.startswith(prefix)), len(SLOW))

    items.sort(key=rank)  # stable: the order within a rank is collection order
    for item in items:
        group = _shared_scope(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
