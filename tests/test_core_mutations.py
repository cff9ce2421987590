"""The checker and the fuzzer judge the code the server runs: mutate the server core, both notice.

Each mutation below is one behavioural change to ``src/dfachat/server/core.py``
(a line replaced by another, in a copy of the source tree) and nothing else:
no test, model, oracle or fixture is touched. Then, from that copy,

* ``dfachat check --clients 2`` must fail with a property violation: the
  checker's server *is* the core, so it explores the mutant;
* ``dfachat server`` runs the mutated core, and ``dfachat fuzz server`` -- run
  from the unmutated tree, whose oracle is the unmutated core -- must fail.

A mutant that one of them lets through is a hole in what we claim to check.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from dfachat.server.store import DEMO_ACCOUNTS

ROOT = Path(__file__).resolve().parents[1]
CORE = Path("dfachat") / "server" / "core.py"


@dataclass(frozen=True)
class Mutation:
    name: str
    what: str
    line: str  # text in core.py, replaced everywhere it stands (it must stand somewhere)
    replacement: str


MUTATIONS = (
    Mutation(
        "broadcast_echoed_to_sender",
        "a broadcast is echoed to its sender (R7.8)",
        "        plan = self.route(conn, msg.recipients)\n",
        "        plan = self.route(conn, msg.recipients)\n"
        "        if not plan.directed:\n"
        "            plan.live.append(conn)\n",
    ),
    Mutation(
        "no_left_on_drop",
        "no LEFT when a transport drops (R8.2, R10.5)",
        "        self.push_all(LEFT(reason=conn.left_reason, name=name), exclude=None)\n",
        "        if conn.left_reason is not LeftReason.DROPPED:\n"
        "            self.push_all(LEFT(reason=conn.left_reason, name=name), exclude=None)\n",
    ),
    Mutation(
        "stored_not_forgotten",
        "a stored message is not forgotten once delivered (R7.7)",
        "        self.storage.forget(item.id for item in stored)\n",
        "        pass\n",
    ),
    Mutation(
        "auth_ok_without_new_user",
        "AUTH_OK's online list lacks the user it logs in (R6.5)",
        "        online = [c.session.user or k for k, c in self.presence.items() if c is not conn] + [name]\n",
        "        online = [c.session.user or k for k, c in self.presence.items() if c is not conn]\n",
    ),
    Mutation(
        "last_page_flagged_more",
        "the last USERS page is still flagged MORE (R4.9, R8.3)",
        "USERS(flags=ListFlags.MORE if i < len(split) else ListFlags(0), online=page)",
        "USERS(flags=ListFlags.MORE, online=page)",
    ),
    Mutation(
        "joined_to_self",
        "a user is told JOINED about itself (R8.1)",
        "        self.push_all(JOINED(name=name), exclude=conn)\n",
        "        self.push_all(JOINED(name=name), exclude=None)\n",
    ),
)
ACCOUNTS = [arg for name, password in DEMO_ACCOUNTS for arg in ("--account", f"{name}:{password}")]
FUZZ_BUDGET_S = 120


def mutated_tree(mutation: Mutation, where: Path) -> Path:
    """A copy of the package with ``mutation`` applied to the core; the folder to put on sys.path."""
    tree = where / mutation.name / "src"
    shutil.copytree(ROOT / "src" / "dfachat", tree / "dfachat", ignore=shutil.ignore_patterns("__pycache__"))
    core = tree / CORE
    text = core.read_text(encoding="utf-8")
    assert mutation.line in text, f"{mutation.name}: the core no longer has the line it mutates"
    core.write_text(text.replace(mutation.line, mutation.replacement), encoding="utf-8")
    return tree


def run_checker(tree: Path) -> tuple[int, list[str]]:
    done = subprocess.run(
        [sys.executable, "-m", "dfachat", "check", "--clients", "2", "--json"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(tree)},
    )
    summary = json.loads(done.stdout) if done.stdout.lstrip().startswith("{") else {}
    return done.returncode, [v["property"] for v in summary.get("violations", [])]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run_fuzzer(tree: Path, workdir: Path) -> tuple[int, list[tuple[str, str]], str]:
    """``dfachat fuzz server`` (this tree) against ``dfachat server`` (the mutated tree)."""
    port = free_port()
    target = (
        f"env PYTHONPATH={tree} {sys.executable} -m dfachat server --demo --port {port} "
        f"--db {workdir / 'chat.db'}"
    )
    report = workdir / "fuzz.json"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-m", "dfachat", "fuzz", "server", f"127.0.0.1:{port}", *ACCOUNTS,
         "--target-cmd", target, "--seed", "1", "--time-budget", str(FUZZ_BUDGET_S), "-x",
         "--no-cases", "--quiet", "--json", str(report)],
        capture_output=True, text=True, timeout=FUZZ_BUDGET_S + 120, cwd=workdir, env=env,
    )
    failures = []
    if report.exists():
        verdicts = json.loads(report.read_text(encoding="utf-8"))
        failures = [
            (check["id"], check["failures"][0]["detail"])
            for section in verdicts["sections"]
            for check in section["checks"]
            if check["failures"]
        ]
    return done.returncode, failures, (done.stdout + done.stderr)[-2000:]


def test_every_mutation_applies_to_the_core_as_it_is() -> None:
    text = (ROOT / "src" / CORE).read_text(encoding="utf-8")
    for mutation in MUTATIONS:
        assert mutation.line in text, mutation.name
    assert len({m.name for m in MUTATIONS}) == len(MUTATIONS) >= 5


# Each mutant through each tool is a test of its own, so that pytest-xdist's workers share them out.


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.name)
def test_the_checker_catches_a_mutated_core(mutation: Mutation, tmp_path: Path) -> None:
    code, violated = run_checker(mutated_tree(mutation, tmp_path))
    assert code == 1 and violated, f"dfachat check --clients 2 let through: {mutation.what}"


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.name)
def test_the_fuzzer_catches_a_server_running_a_mutated_core(mutation: Mutation, tmp_path: Path) -> None:
    tree = mutated_tree(mutation, tmp_path)
    code, failures, output = run_fuzzer(tree, tree.parent)
    assert code == 1 and failures, f"dfachat fuzz server let through: {mutation.what}\n{output}"
