"""Every command, given bad arguments, run as a user runs it (``python -m dfachat ...``).

Each invocation must exit with status 2 and print one line on stderr that names the
bad value and says what to do, never a traceback and never a protocol rule id (rule
ids belong to protocol errors, not to a mistyped command line).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dfachat.cli import shown_path

RULE_ID = re.compile(r"\[R\d+\.\d+\]")


def run(tmp: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "XDG_DATA_HOME": str(tmp / "xdg"),  # nothing lands in the real home directory
        "DFACHAT_PASSWORD": "pw1",
        "DISPLAY": "",  # no window may open
    }
    return subprocess.run(
        [sys.executable, "-m", "dfachat", *args], input=stdin, capture_output=True, text=True,
        timeout=60, cwd=tmp, env=env, check=False,
    )


def assert_one_clear_line(
    result: subprocess.CompletedProcess[str], bad: str, hint: str, status: int = 2
) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.split("\n") if line.strip()]  # not splitlines: \x85 is no line end here
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("dfachat"), line
    assert bad in line, (bad, line)  # the bad value is named
    assert hint in line, (hint, line)  # and what to do about it
    assert not RULE_ID.search(line), line
    assert result.returncode == status, (result.returncode, line)
    return line


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # free once closed: nothing listens there


# (arguments, the bad value the line names, the advice it gives). "{tmp}" is the test's
# scratch directory, which holds "dir/" and "notjson.json".
HELP = "--help"
CASES: list[tuple[tuple[str, ...], str, str]] = [
    # the command itself
    (("serve-me-tea",), "serve-me-tea", HELP),
    (("--bogus",), "--bogus", HELP),
    # spec
    (("spec", "--yaml"), "--yaml", HELP),
    (("spec", "--json", "--markdown"), "--markdown", HELP),
    # server
    (("server", "--port", "70000"), "70000", "from 0 to 65535"),
    (("server", "--port", "-5"), "-5", "from 0 to 65535"),
    (("server", "--port", "http"), "http", "from 0 to 65535"),
    (("server", "--db", "/proc/x.db"), "/proc/x.db", "give --db another path"),
    (("server", "--db", "{tmp}/dir"), "/dir", "give a file path"),
    (("server", "--db", "{tmp}/typo/x.db"), "typo", "mkdir -p"),
    (("server", "--max-connections", "0"), "'0'", "at least 1"),
    (("server", "--max-burst-bytes", "10"), "10", "at least"),
    (("server", "--tls-cert", "cert.pem"), "--tls-key", "give both"),
    (("server", "--tls-cert", "none.pem", "--tls-key", "none.key"), "none.pem", "dfachat cert"),
    (("server", "--log-level", "loud"), "loud", "choose from"),
    # users
    (("users",), "action", HELP),
    (("users", "add", "1bad"), "1bad", "a letter"),
    (("users", "--db", "/proc/x.db", "add", "Bob"), "/proc/x.db", "give --db another path"),
    (("users", "--db", "{tmp}/typo/x.db", "list"), "typo", "mkdir -p"),
    (("users", "remove", "nobody"), "nobody", "dfachat users list"),
    (("users", "passwd", "nobody"), "nobody", "dfachat users list"),
    (("users", "frobnicate"), "frobnicate", HELP),
    # client
    (("client", "--port", "70000"), "70000", "from 1 to 65535"),
    (("client", "--port", "0"), "'0'", "from 1 to 65535"),
    (("client", "--host", "127.0.0.1", "--user", "Liz", "--encoding", "ebcdic"), "ebcdic", "utf-8"),
    (("client", "--user", "Liz", "--ca", "{tmp}/none.pem"), "none.pem", "dfachat cert"),
    (("client", "--host", "127.0.0.1", "--user", "9lives", "--encoding", "utf-8"), "9lives", "a letter"),
    # gui
    (("gui", "--port", "99999"), "99999", "from 1 to 65535"),
    (("gui", "--encoding", "ebcdic"), "ebcdic", "choose from"),
    (("gui", "--ca", "{tmp}/none.pem"), "none.pem", "dfachat cert"),
    # cert
    (("cert", "--out-dir", "/proc/x"), "/proc/x", "give --out-dir"),
    (("cert", "--host", ""), "''", "give"),
    # check
    (("check", "--clients", "0"), "--clients", "at least 1"),
    (("check", "--clients", "many"), "many", HELP),
    (("check", "--capacity", "-1"), "--capacity", "0 or more"),
    (("check", "--property", "no_such_property"), "no_such_property", "--list-properties"),
    (("check", "--strategy", "sideways"), "sideways", "choose from"),
    (("check", "--workers", "2", "--strategy", "dfs"), "--workers", "--strategy bfs"),
    (("check", "--max-states", "-1"), "--max-states", "0 or more"),
    (("check", "--max-memory", "-5"), "--max-memory", "0 or more"),
    (("check", "--depth", "0"), "--depth", "at least 1"),
    # fuzz
    (("fuzz",), "mode", HELP),
    (("fuzz", "server", "127.0.0.1:1"), "--account", "--account NAME:PASSWORD"),
    (("fuzz", "server", "nohost", "--account", "a:b", "--account", "c:d"), "nohost", "HOST:PORT"),
    (("fuzz", "server", "127.0.0.1:70000", "--account", "a:b", "--account", "c:d"), "70000", "1 to 65535"),
    (("fuzz", "server", "127.0.0.1:1", "--account", "Liz", "--account", "Ann:x"), "Liz", "NAME:PASSWORD"),
    (("fuzz", "server", "127.0.0.1:1", "--account", "9lives:pw", "--account", "Ann:x"), "9lives", "a letter"),
    (("fuzz", "server", "127.0.0.1:1", "--account", "a:b", "--account", "c:d", "--time-budget", "0"),
     "--time-budget", "positive"),
    (("fuzz", "replay", "nofile.json", "127.0.0.1:1"), "nofile.json", "dfachat fuzz server"),
    (("fuzz", "replay", "{tmp}/dir", "127.0.0.1:1"), "/dir", "dfachat fuzz server"),
    (("fuzz", "replay", "{tmp}/notjson.json", "127.0.0.1:1", "--account", "a:b"), "notjson.json", "case file"),
    (("fuzz", "client"), "--target-cmd", "--target-cmd COMMAND"),
    (("fuzz", "client", "--listen", "70000", "--target-cmd", "true"), "70000", "0 to 65535"),
    (("fuzz", "client", "--encoding", "ebcdic", "--target-cmd", "true"), "ebcdic", "utf-8"),
    (("fuzz", "client", "--replay", "none.json", "--target-cmd", "true"), "none.json", "case"),
    # diagram
    (("diagram", "-o", "x.jpg"), "x.jpg", ".svg"),
    (("diagram", "--format", "mermaid", "-o", "x.svg"), "x.svg", ".mmd"),
    (("diagram", "--sequence", "nope"), "nope", "--list"),
    (("diagram", "--packets", "--format", "png"), "png", "text or svg"),
    (("diagram", "--role", "sideways"), "sideways", "choose from"),
    (("diagram", "-o", "/proc/nope/x.mmd"), "/proc/nope/x", "another"),
    # docs
    (("docs", "--dir", "{tmp}/nodocs"), "nodocs", "--dir"),
]


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    (tmp_path / "dir").mkdir()
    (tmp_path / "notjson.json").write_text("this is not JSON\n")
    return tmp_path


@pytest.mark.parametrize(("args", "bad", "hint"), CASES, ids=[" ".join(c[0]) or "-" for c in CASES])
def test_a_bad_argument_is_one_clear_line(args: tuple[str, ...], bad: str, hint: str, scratch: Path) -> None:
    argv = [arg.replace("{tmp}", str(scratch)) for arg in args]
    assert_one_clear_line(run(scratch, *argv), bad, hint)


def test_there_are_at_least_40_and_every_command_has_some() -> None:
    assert len(CASES) >= 40
    commands = {args[0] for args, _, _ in CASES}
    assert {"spec", "server", "users", "client", "gui", "cert", "check", "diagram", "docs", "fuzz"} <= commands
    modes = {args[1] for args, _, _ in CASES if args[0] == "fuzz" and len(args) > 1}
    assert {"server", "client", "replay"} <= modes


def test_nothing_listening_is_one_clear_line(scratch: Path) -> None:
    port = str(closed_port())
    result = run(scratch, "client", "--host", "127.0.0.1", "--port", port, "--user", "Liz", "--encoding", "utf-8")
    line = assert_one_clear_line(result, port, "dfachat server --demo", status=1)  # documented: 1
    assert "nothing listens" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write to a read-only directory")
def test_a_read_only_database_directory(scratch: Path) -> None:
    locked = scratch / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        result = run(scratch, "users", "--db", str(locked / "x.db"), "add", "Bob", stdin="pw\n")
        assert_one_clear_line(result, str(locked / "x.db"), "give --db another path")
    finally:
        locked.chmod(0o755)


def test_a_read_only_database_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """What SQLite says at the first write to a read-only file (root cannot make one), in process."""
    import sqlite3

    from dfachat.cli import main
    from dfachat.server.store import Store

    def readonly(*args: object, **kwargs: object) -> None:
        raise sqlite3.OperationalError("attempt to write a readonly database")

    monkeypatch.setattr(Store, "add_user", readonly)
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("pw\n"))
    db = tmp_path / "x.db"
    assert main(["users", "--db", str(db), "add", "Bob"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot use the database {db}: attempt to write a readonly" in err
    assert "give --db another path" in err


# --- property tests: the input spaces of ports and paths -------------------------------------------


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    command=st.sampled_from(["server", "client", "gui"]),
    port=st.one_of(st.integers(min_value=65536, max_value=10**12), st.integers(max_value=-1)),
)
def test_any_port_out_of_range_is_refused(command: str, port: int, tmp_path: Path) -> None:
    result = run(tmp_path, command, "--port", str(port))
    assert_one_clear_line(result, str(port), "65535")


@given(text=st.text(max_size=12))
@example(text="²")  # a digit to str.isdigit(), not to int()
@example(text=" 80 ")
def test_the_port_type_accepts_exactly_the_ports(text: str) -> None:
    import argparse

    from dfachat.cli import _port

    for allow_zero in (True, False):
        low = 0 if allow_zero else 1
        digits = text.strip()
        is_port = bool(digits) and all(c in "0123456789" for c in digits) and low <= int(digits) <= 65535
        try:
            value = _port(allow_zero=allow_zero)(text)
        except argparse.ArgumentTypeError as exc:
            assert not is_port and repr(text) in str(exc)
        else:
            assert is_port and value == int(text)


_PATH_PART = st.text(st.characters(codec="utf-8", exclude_characters="/\0"), min_size=1, max_size=8).filter(
    lambda part: part not in (".", "..")
)


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(_PATH_PART, min_size=1, max_size=3), command=st.sampled_from(["server", "users"]))
def test_a_db_in_a_missing_directory_is_refused_and_nothing_is_created(
    parts: list[str], command: str, tmp_path: Path
) -> None:
    base = tmp_path / "missing"
    db = base.joinpath(*parts, "chat.db")
    argv = ["server", "--db", str(db)] if command == "server" else ["users", "--db", str(db), "list"]
    result = run(tmp_path, *argv)
    assert_one_clear_line(result, shown_path(db.parent), "mkdir -p")
    assert not base.exists()  # no directory was made for a mistyped path
