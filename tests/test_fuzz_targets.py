"""The fuzz targets in ``fuzz/`` run in the suite, without atheris.

Each target's ``TestOneInput`` takes its spec-derived seeds, a bounded
Hypothesis search (seeds with byte edits, and plain random bytes), and every
regression input under ``tests/fuzz_corpus/<target>/`` (inputs a fuzzing run
once found). Then: the targets' checks really fail on a broken decoder,
engine or server, and the command line works without atheris.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dfachat.errors import FrameError

ROOT = Path(__file__).resolve().parent.parent
FUZZ_DIR = ROOT / "fuzz"
REGRESSIONS = Path(__file__).resolve().parent / "fuzz_corpus"
TARGETS = ("decoder", "server_session", "server_connection")
# Hypothesis examples per target: the server target runs a whole server per input.
EXAMPLES = {"decoder": 150, "server_session": 150, "server_connection": 30}

if str(FUZZ_DIR) not in sys.path:
    sys.path.insert(0, str(FUZZ_DIR))


def target(name: str) -> ModuleType:
    return importlib.import_module(name)


def test_atheris_is_optional() -> None:
    """The harness imports without atheris (CI does not install it); then Hypothesis runs the targets."""
    code = "import sys; sys.modules['atheris'] = None; import _harness; assert _harness.atheris is None"
    subprocess.run([sys.executable, "-c", code], cwd=FUZZ_DIR, check=True, timeout=60)


@pytest.mark.parametrize("name", TARGETS)
def test_seeds(name: str) -> None:
    module = target(name)
    seeds = module.seeds()
    assert seeds
    for data in seeds.values():
        module.TestOneInput(data)


def _regressions(name: str) -> list[Path]:
    folder = REGRESSIONS / name
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")) if folder.is_dir() else []


@pytest.mark.parametrize(
    ("name", "path"),
    [(name, path) for name in TARGETS for path in _regressions(name)],
    ids=lambda v: v if isinstance(v, str) else v.name,
)
def test_regressions(name: str, path: Path) -> None:
    target(name).TestOneInput(path.read_bytes())


def test_every_regression_folder_is_a_target() -> None:
    if REGRESSIONS.is_dir():
        assert {p.name for p in REGRESSIONS.iterdir() if p.is_dir()} <= set(TARGETS)


@st.composite
def edited_seeds(draw: st.DrawFn, seeds: tuple[bytes, ...]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        edit = draw(st.sampled_from(["set", "insert", "delete", "cut"]))
        if edit == "set" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif edit == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=6))
        elif edit == "delete":
            del data[at : at + draw(st.integers(1, 6))]
        else:
            del data[at:]
    return bytes(data)


@pytest.mark.parametrize("name", TARGETS)
def test_bounded_search(name: str) -> None:
    module = target(name)
    seeds = tuple(sorted(module.seeds().values()))

    @settings(max_examples=EXAMPLES[name], database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.one_of(edited_seeds(seeds), st.binary(max_size=300)))
    def run(data: bytes) -> None:
        module.TestOneInput(data)

    run()


# --- the checks can fail ------------------------------------------------------------------
def _first_seed(module: ModuleType, prefix: str) -> bytes:
    return next(data for label, data in sorted(module.seeds().items()) if label.startswith(prefix))


def test_decoder_target_lets_foreign_exceptions_through(monkeypatch: pytest.MonkeyPatch) -> None:
    decoder = target("decoder")
    data = _first_seed(decoder, "v1-PING-")

    def broken(*args: object) -> object:
        raise KeyError("a bug in a generated decoder")

    ping_type = decoder.decode_frame(decoder.split_input(data)[1]).TYPE
    monkeypatch.setitem(decoder._frames.DECODERS, (1, ping_type), broken)
    with pytest.raises(KeyError):
        decoder.TestOneInput(data)


def test_decoder_target_checks_the_canonical_encoding(monkeypatch: pytest.MonkeyPatch) -> None:
    decoder = target("decoder")
    data = _first_seed(decoder, "v1-PING-")
    monkeypatch.setattr(decoder, "encode", lambda message, encoding="utf-8", version=1: b"not the frame")
    with pytest.raises(AssertionError, match="not canonical"):
        decoder.TestOneInput(data)


def test_decoder_target_checks_documented_errors() -> None:
    """A FrameError citing no rule of the spec is caught too."""
    with pytest.raises(AssertionError, match="R99.99"):
        target("decoder").check_error(FrameError("no such rule", rule="R99.99"))


def test_session_target_checks_fatal_violations(monkeypatch: pytest.MonkeyPatch) -> None:
    """An engine that forgave a violation before authentication (R6.7) fails the target."""
    session = target("server_session")
    monkeypatch.setattr(session.ServerSession, "_is_fatal", lambda self, error: False)
    data = _first_seed(session, "USER-")  # USER in AWAIT_HELLO: unexpected, fatal there
    with pytest.raises(AssertionError):
        session.TestOneInput(data)


def test_session_target_checks_legal_events(monkeypatch: pytest.MonkeyPatch) -> None:
    session = target("server_session")
    original = session.ServerSession.receive_message

    def lenient(self: object, message: object) -> object:
        event = original(self, message)
        return message if event is not None and not isinstance(event, type(message)) else event

    monkeypatch.setattr(session.ServerSession, "receive_message", lenient)
    with pytest.raises(AssertionError, match="without a row"):
        session.TestOneInput(_first_seed(session, "USER-"))


def test_connection_target_catches_internal_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    """A handler that raises takes the server's internal-error path (R11.4): the target fails."""
    connection = target("server_connection")

    class Broken(connection.ServerCore):
        def on_PING(self, conn: object, ping: object, now: float) -> None:
            raise ZeroDivisionError("a bug in a handler")

    monkeypatch.setattr(connection, "ServerCore", Broken)
    with pytest.raises(AssertionError, match="ZeroDivisionError"):
        connection.TestOneInput(_first_seed(connection, "chat-utf-8"))


# --- the command line ---------------------------------------------------------------------------
def test_command_line_hypothesis_and_corpus(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "decoder.py", "--hypothesis", "--max-examples", "25"],
        cwd=FUZZ_DIR, capture_output=True, text=True, timeout=120, check=True,
    )
    assert "decoder: Hypothesis tried 25 inputs" in run.stdout, run.stdout + run.stderr
    subprocess.run(
        [sys.executable, "server_session.py", "--make-corpus", str(tmp_path)],
        cwd=FUZZ_DIR, capture_output=True, text=True, timeout=120, check=True,
    )
    written = sorted(tmp_path.iterdir())
    assert len(written) == len(target("server_session").seeds())
    assert all(p.stat().st_size > 0 for p in written)
