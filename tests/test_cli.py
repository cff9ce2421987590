"""The ``dfachat`` command line, run as a user runs it: ``python -m dfachat ...``."""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys

import pytest

import dfachat
from dfachat.cli import main
from dfachat.errors import SpecError
from dfachat.spec import (
    DEFAULT_PORT,
    ENCODINGS,
    ERROR_INFO,
    LIMITS,
    MAGIC,
    MESSAGES,
    PROTOCOL_VERSION,
    RULES,
    ErrorCode,
    rule_text,
)
from dfachat.spec.document import protocol_summary, render_protocol_markdown


def run(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "dfachat", *args], capture_output=True, timeout=120, check=False
    )


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout.decode() == f"dfachat {dfachat.__version__} (protocol {PROTOCOL_VERSION})\n"
    )


def test_spec_summary() -> None:
    result = run("spec")
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert f"dfachat protocol {PROTOCOL_VERSION}" in out
    assert str(DEFAULT_PORT) in out
    assert str(LIMITS.max_frame) in out
    for spec in MESSAGES:
        assert f"0x{spec.code:02X}  {spec.name} " in out
    for name in ENCODINGS:
        assert f"  {name} " in out
    for code in ErrorCode:
        assert f"{int(code):>3}  {code.name} " in out
    for name, value in LIMITS.as_dict().items():
        assert f"  {name} " in out and str(value) in out


def test_spec_json_matches_the_spec() -> None:
    result = run("spec", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data == json.loads(json.dumps(protocol_summary()))
    assert data["protocol_version"] == PROTOCOL_VERSION
    assert data["default_port"] == DEFAULT_PORT
    assert bytes.fromhex(data["magic"]) == MAGIC
    assert data["max_frame"] == LIMITS.max_frame
    assert [(m["name"], m["code"]) for m in data["messages"]] == sorted(
        ((m.name, m.code) for m in MESSAGES), key=lambda x: x[1]
    )
    for entry in data["messages"]:
        spec = next(m for m in MESSAGES if m.name == entry["name"])
        assert set(entry["senders"]) == spec.senders
        assert entry["summary"] == spec.summary
        assert entry["fields"] == [sub.name for sub in spec.layout.subcons]
    assert [e["name"] for e in data["encodings"]] == list(ENCODINGS)
    assert data["limits"] == LIMITS.as_dict()
    assert [(e["code"], e["name"]) for e in data["error_codes"]] == [
        (int(c), c.name) for c in ErrorCode
    ]
    for entry in data["error_codes"]:
        info = ERROR_INFO[ErrorCode[entry["name"]]]
        assert entry["rule"] == info.rule
        assert entry["fatal"] == ("always" if info.always_fatal else "before AUTH_OK")
    assert data["rules"] == {rule_id: rule_text(rule_id) for rule_id in RULES}


def test_spec_markdown_is_the_document() -> None:
    result = run("spec", "--markdown")
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode("utf-8") == render_protocol_markdown()


@pytest.mark.parametrize(
    ("args", "complaint", "help_of"),
    [
        (("serve-me-tea",), "invalid choice: 'serve-me-tea'", "dfachat"),
        (("spec", "--json", "--markdown"), "not allowed with", "dfachat spec"),
        (("spec", "--yaml"), "unrecognized arguments: --yaml", "dfachat"),
    ],
)
def test_bad_usage_exits_2_with_one_line(args: tuple[str, ...], complaint: str, help_of: str) -> None:
    result = run(*args)
    assert result.returncode == 2
    err = result.stderr.decode()
    assert err.count("\n") == 1 and err.startswith(f"{help_of}: error: ")  # no usage block
    assert complaint in err and f"(see `{help_of} --help`)" in err
    assert result.stdout == b""


def test_dfachat_alone_lists_every_command_on_one_line() -> None:
    result = run()
    assert result.returncode == 0 and result.stderr == b""
    out = result.stdout.decode()
    names = ["spec", "server", "users", "client", "gui", "cert", "check", "diagram", "docs", "fuzz"]
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("  ")]
    assert listed == names
    assert "dfachat server --demo" in out and "--help" in out


def test_help_lists_the_commands() -> None:
    result = run("--help")
    assert result.returncode == 0
    assert "spec" in result.stdout.decode()


# --- in process ---------------------------------------------------------------------------


def test_main_returns_the_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert main(["spec", "--json"]) == 0
    assert main(["no-such-command"]) == 2
    capsys.readouterr()


def test_a_dfachat_error_is_one_line_on_stderr(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import dfachat.spec.document

    def broken() -> str:
        raise SpecError("the spec contradicts itself:\nsomething", rule="R12.1")

    monkeypatch.setattr(dfachat.spec.document, "render_protocol_markdown", broken)
    assert main(["spec", "--markdown"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "dfachat: error: the spec contradicts itself: something [R12.1]\n"


# --- help: every command's --help ends with examples that parse -----------------------------------


def _all_parsers() -> dict[str, argparse.ArgumentParser]:
    from dfachat.cli import _subparsers, build_parser

    found: dict[str, argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for name, sub in _subparsers(parser).items():
            found[f"{path} {name}".strip()] = sub
            walk(sub, f"{path} {name}".strip())

    walk(build_parser(), "")
    return found


def _example_argv(line: str) -> list[str]:
    """The dfachat arguments of an example line: after any pipe, without env, comment or redirection."""
    words = shlex.split(line.split("|")[-1], comments=True)
    while "=" in words[0]:
        words.pop(0)
    if ">" in words:
        words = words[: words.index(">")]
    assert words[0] == "dfachat", line
    return words[1:]


def test_every_help_ends_with_examples_that_parse() -> None:
    from dfachat.cli import build_parser

    parsers = _all_parsers()
    assert {"server", "client", "check", "fuzz server", "fuzz replay", "fuzz client", "users add"} <= set(parsers)
    for path, parser in parsers.items():
        text = parser.format_help()
        examples = text.split("\nexamples:\n")[-1].splitlines()
        assert "\nexamples:\n" in text and examples, path
        for line in examples:
            argv = _example_argv(line.strip())
            assert " ".join(argv[: len(path.split())]) == path or path.startswith(argv[0]), (path, line)
            build_parser().parse_args(argv)  # a usage error would exit: the example is wrong


def test_help_as_a_user_sees_it_ends_with_examples() -> None:
    result = run("server", "--help")
    assert result.returncode == 0
    tail = result.stdout.decode().rstrip().splitlines()
    assert "dfachat server --demo" in "\n".join(tail[-4:])


def test_check_help_points_at_nothing_a_pip_user_lacks() -> None:
    text = _all_parsers()["check"].format_help()
    assert "docs/CHECKING.md in the source repository" in " ".join(text.split())
