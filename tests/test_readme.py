"""The README's commands, run exactly as written, the way a person would type them.

One interactive bash in a pseudo-terminal, in a scratch home directory (so
``--demo`` makes its database there), takes every line of every ``sh`` block
after the first, in order; the ``console`` block is typed into the same
shell, answering the client's prompts and checking what it prints. The first
block (the two fresh-machine commands) is what CI runs: ``.ci/run`` ends with
its second line, and its first line's server command is the walk-through's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from dfachat.spec import LIMITS

pexpect = pytest.importorskip("pexpect")

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```\n", re.S | re.M)
READY = "__README_READY__"
PROMPT = re.compile(r"(Host|Encode format|User|Password): ?(.*)$")
CONTROL = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|[@-Z\\-_])|[\x08\r]")
COMMAND_TIMEOUT = 120.0


def blocks() -> list[tuple[str, str]]:
    return [(m[1], m[2]) for m in BLOCK.finditer(README.read_text(encoding="utf-8"))]


def test_the_first_lines_are_what_ci_runs() -> None:
    kind, first = blocks()[0]
    assert kind == "sh"
    run, test = first.strip().splitlines()
    assert (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1] == test
    install, server = run.split(" && ")
    assert install == "pip install -e ."
    walk = [line for kind, body in blocks()[1:] if kind == "sh" for line in body.splitlines()]
    assert walk[0].startswith(f"{server} ") and walk[0].endswith(" &"), "the walk-through starts the same server"


class Shell:
    """An interactive bash in a pty; ``run`` types a line and returns (status, output)."""

    def __init__(self, home: Path) -> None:
        env = {
            "HOME": str(home),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "TERM": "xterm-256color",
            "PROMPT_TOOLKIT_NO_CPR": "1",
        }
        if os.environ.get("VIRTUAL_ENV"):
            env["VIRTUAL_ENV"] = os.environ["VIRTUAL_ENV"]
        self.child = pexpect.spawn(
            "bash", ["--norc", "--noprofile", "-i"], cwd=str(home), env=env,
            encoding="utf-8", codec_errors="replace", dimensions=(50, 250), timeout=COMMAND_TIMEOUT,
        )  # fmt: skip
        self.child.sendline(f"stty -echo; PS2=''; PS1='{READY}$? '")
        self.child.expect(f"{READY}0 ")

    def run(self, line: str, timeout: float = COMMAND_TIMEOUT) -> tuple[int, str]:
        self.child.sendline(line)
        self.child.expect(rf"{READY}(\d+) ", timeout=timeout)
        return int(self.child.match.group(1)), CONTROL.sub("", self.child.before)

    def expect(self, pattern: str, timeout: float = 15.0) -> None:
        try:
            self.child.expect(pattern, timeout=timeout)
        except pexpect.TIMEOUT:
            seen = CONTROL.sub("", self.child.before or "")
            raise AssertionError(f"the README says {pattern!r} appears; got:\n{seen[-2000:]}") from None

    def close(self) -> None:
        self.child.sendline("kill $(jobs -p) 2>/dev/null")
        self.child.close(force=True)


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on port {port} after {timeout} s")


def console(shell: Shell, transcript: str) -> None:
    """Type a ``console`` block: ``$ command``, prompts answered, ``> `` lines typed, the rest expected."""
    lines = transcript.splitlines()
    assert lines[0].startswith("$ ")
    shell.child.sendline(lines[0][2:])
    for line in lines[1:]:
        prompt = PROMPT.match(line)
        if prompt:
            shell.expect(re.escape(f"{prompt[1]}: "))
            shell.child.send(prompt[2] + "\r")
        elif line.startswith("> "):
            shell.child.send(line[2:] + "\r")
        else:
            # HH:MM stands for the time of day; the input line's redraws may interleave escapes
            pattern = re.escape(line).replace("HH:MM", r"\d\d:\d\d")
            shell.expect(pattern)
    shell.child.expect(rf"{READY}(\d+) ", timeout=15)
    assert shell.child.match.group(1) == "0", CONTROL.sub("", shell.child.before)


@pytest.fixture
def shell(tmp_path: Path):
    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", LIMITS.default_port)) == 0:
            pytest.fail(f"port {LIMITS.default_port} is taken: the README's commands need it")
    sh = Shell(tmp_path)
    yield sh
    sh.close()


def needs_dot(line: str) -> bool:
    """A README line that renders through Graphviz (svg, png or pdf)."""
    return line.startswith("dfachat diagram") and re.search(r"-o \S+\.(svg|png|pdf)\b", line) is not None


def test_the_walk_through_runs_as_written(shell: Shell, tmp_path: Path) -> None:
    outputs: dict[str, str] = {}
    ran = 0
    have_dot = shutil.which("dot") is not None
    not_run: list[str] = []  # lines that need what this machine lacks
    for kind, body in blocks()[1:]:
        if kind == "console":
            console(shell, body)
            ran += 1
            continue
        if kind != "sh":
            continue
        for line in body.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if needs_dot(line) and not have_dot:
                not_run.append(line)
                continue
            status, output = shell.run(line)
            assert status == 0, f"{line!r} exited {status}:\n{output[-3000:]}"
            outputs[line] = output
            ran += 1
            if line.startswith("dfachat server") and line.endswith("&"):
                wait_for_port(LIMITS.default_port)
    assert ran >= 10

    def output_of(start: str) -> str:
        return next(out for line, out in outputs.items() if line.startswith(start))

    # Steve: both offline, both queued
    assert "Liz is offline and will get it on logging in" in output_of("printf '/to Liz,Bailey")
    # Bailey: the stored message, lossy in latin-1
    bailey = [json.loads(x) for x in output_of("DFACHAT_PASSWORD=pw3").splitlines() if x.startswith("{")]
    message = next(e for e in bailey if e["type"] == "message")
    assert (message["from"], message["text"], message["lossy"], message["stored"]) == (
        "Steve", "snow ? tonight?", True, True)
    # the fuzzer's JUnit report and the diagram are real files
    suites = ET.parse(tmp_path / "fuzz.xml").getroot()
    assert suites.iter("testcase") and not list(suites.iter("failure"))
    assert "sequenceDiagram" in output_of("dfachat diagram --sequence offline")
    assert "MSG_ACK" in output_of("dfachat diagram --packets")
    if not_run:  # every other line ran and was checked; say what was not
        pytest.skip(f"Graphviz's dot is not installed (Debian: graphviz), so {not_run} did not run")
    svg = ET.parse(tmp_path / "client.svg").getroot()
    assert svg.tag.endswith("svg")
