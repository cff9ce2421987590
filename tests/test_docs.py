"""The generated docs (docs/PROTOCOL.md, docs/diagrams/): current, and `dfachat docs` keeps them so.

Text files are compared byte for byte. The Graphviz SVGs vary between Graphviz
versions, so they are judged by the SHA-256 of the DOT source stamped in them
(docs/diagrams/README.md says so).
"""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from dfachat import cli
from dfachat.spec import diagrams
from dfachat.spec.diagrams import DIAGRAMS_DIR, stale_docs, write_docs

DOCS = Path(__file__).resolve().parents[1] / "docs"
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")


@pytest.fixture
def docs_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "docs"
    shutil.copytree(DOCS, copy)
    return copy


def test_committed_docs_are_current() -> None:
    stale = stale_docs(DOCS)
    assert stale == [], f"stale generated docs: {stale}; regenerate them with `dfachat docs`"


def test_every_diagram_file_is_generated() -> None:
    """Nothing in docs/diagrams/ is left over from an older generator (or written by hand)."""
    generated = set(diagrams._generated_texts()) | set(diagrams._rendered_svgs())
    present = {f"{DIAGRAMS_DIR}/{p.name}" for p in (DOCS / DIAGRAMS_DIR).iterdir()}
    assert present == {p for p in generated if p.startswith(f"{DIAGRAMS_DIR}/")}
    for svg in (DOCS / DIAGRAMS_DIR).glob("*.svg"):
        ET.parse(svg)  # well-formed, the Graphviz ones with their stamp comment too


def test_check_lists_stale_and_missing_files(docs_copy: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["docs", "--check", "--dir", str(docs_copy)]) == 0
    (docs_copy / DIAGRAMS_DIR / "packets.txt").write_text("edited by hand\n")
    (docs_copy / DIAGRAMS_DIR / "sequence-login.mmd").unlink()
    capsys.readouterr()
    assert cli.main(["docs", "--check", "--dir", str(docs_copy)]) == 1
    err = capsys.readouterr().err
    assert "packets.txt" in err and "sequence-login.mmd" in err and "dfachat docs" in err
    assert "PROTOCOL.md" not in err


def test_svg_is_judged_by_its_dot_source_not_its_bytes(
    docs_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    svg = docs_copy / DIAGRAMS_DIR / "server-states.svg"
    text = svg.read_text(encoding="utf-8")
    # Another Graphviz version draws differently: still current.
    svg.write_text(text.replace("<title>", "<title>drawn elsewhere ", 1), encoding="utf-8")
    assert stale_docs(docs_copy) == []
    # The machine changed: the DOT source and the SVG rendered from it are stale.
    real = diagrams.state_dot
    monkeypatch.setattr(diagrams, "state_dot", lambda role: real(role) + "// changed\n")
    assert stale_docs(docs_copy) == [
        f"{DIAGRAMS_DIR}/client-states.dot",
        f"{DIAGRAMS_DIR}/client-states.svg",
        f"{DIAGRAMS_DIR}/server-states.dot",
        f"{DIAGRAMS_DIR}/server-states.svg",
    ]
    # An SVG without the stamp (drawn by hand) is stale.
    monkeypatch.setattr(diagrams, "state_dot", real)
    svg.write_text(text.replace("<!-- dfachat: rendered", "<!-- ", 1), encoding="utf-8")
    assert stale_docs(docs_copy) == [f"{DIAGRAMS_DIR}/server-states.svg"]


@needs_dot
def test_docs_regenerates_what_is_stale(docs_copy: Path, capsys: pytest.CaptureFixture) -> None:
    (docs_copy / "PROTOCOL.md").write_text("old\n")
    (docs_copy / DIAGRAMS_DIR / "client-states.svg").unlink()
    capsys.readouterr()
    assert cli.main(["docs", "--dir", str(docs_copy)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        f"wrote {docs_copy / 'PROTOCOL.md'}",
        f"wrote {docs_copy / DIAGRAMS_DIR / 'client-states.svg'}",
    ]
    assert stale_docs(docs_copy) == []
    assert (docs_copy / "PROTOCOL.md").read_bytes() == (DOCS / "PROTOCOL.md").read_bytes()
    assert write_docs(docs_copy) == []  # nothing left to do


def test_docs_without_dot_writes_the_rest_and_says_how_to_install(
    docs_copy: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    (docs_copy / DIAGRAMS_DIR / "server-states.svg").unlink()
    (docs_copy / DIAGRAMS_DIR / "packets.svg").unlink()
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    assert cli.main(["docs", "--dir", str(docs_copy)]) == 2
    assert "apt-get install graphviz" in capsys.readouterr().err
    assert stale_docs(docs_copy) == [f"{DIAGRAMS_DIR}/server-states.svg"]


def test_docs_needs_a_docs_directory(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["docs", "--check", "--dir", str(tmp_path / "nowhere")]) == 2
    assert "no docs directory" in capsys.readouterr().err
