"""docs/ARCHITECTURE.md's claim, proved: adding a message type takes the spec and one handler per role.

The worked example in the document (TYPING) is applied verbatim to a copy of
the source tree: each ``<!-- example: FILE after: LINE -->`` block is inserted
after that exact line of that file, and ``TYPING`` is added to the file's
import from ``dfachat.codec.messages`` where a block uses it. Then a fresh
interpreter on the copy shows every generated part picking TYPING up: the
codec (against construct's oracle), both engines, the protocol document, the
checker, and the real server and client library over loopback.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "ARCHITECTURE.md"
EXAMPLE = re.compile(r"<!-- example: (\S+) after: (.+?) -->\n```python\n(.*?)```\n", re.S)
IMPORT_OPEN = "from dfachat.codec.messages import (  # type: ignore[attr-defined]"


def examples() -> list[tuple[str, str, str]]:
    return [(m[1], m[2].strip(), m[3]) for m in EXAMPLE.finditer(DOC.read_text(encoding="utf-8"))]


def apply_example(tree: Path) -> list[str]:
    """Apply the document's blocks to the copy under ``tree``; the files changed."""
    changed: list[str] = []
    for rel, anchor, block in examples():
        path = tree / rel
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        hits = [i for i, line in enumerate(lines) if line.strip() == anchor]
        assert len(hits) == 1, f"{rel}: the anchor {anchor!r} matches {len(hits)} lines, not one"
        lines[hits[0] + 1 : hits[0] + 1] = [block]
        text = "".join(lines)
        if "TYPING(" in block or "TYPING)" in block:
            assert text.count(IMPORT_OPEN) == 1, f"{rel}: no single import from dfachat.codec.messages"
            if "    TYPING,\n" not in text:
                text = text.replace(IMPORT_OPEN + "\n", IMPORT_OPEN + "\n    TYPING,\n", 1)
        path.write_text(text, encoding="utf-8")
        changed.append(rel)
    return changed


def typing_code() -> int:
    """TYPING's type code, as the document's message block declares it (it must be one no
    version uses: version 2 took 0x07 for DELIVER_ACK)."""
    found = r'"TYPING", (0x[0-9A-Fa-f]+)'
    (code,) = {int(m[1], 16) for _, _, block in examples() for m in re.finditer(found, block)}
    return code


def typing_rule() -> str:
    """The rule the document's server rows for TYPING cite (its new rule, numbered after the
    rules its section already has)."""
    found = r'_t\("recv_TYPING", "ESTABLISHED", None, "(R\d+\.\d+)"'
    (rule,) = {m[1] for _, _, block in examples() for m in re.finditer(found, block)}
    return rule


# What the copy must do: runs in a fresh interpreter with the copy first on sys.path.
PROBE = textwrap.dedent(
    '''
    import asyncio, json, sys, tempfile
    from pathlib import Path

    import dfachat
    assert dfachat.__file__.startswith(sys.argv[1]), dfachat.__file__
    out = {}

    # codec: a generated class, encoder and decoder, held to construct's oracle
    from dfachat.codec import decode_frame, encode
    from dfachat.codec.messages import TYPING, MESSAGE_CLASSES
    from dfachat.codec import oracle
    frame = encode(TYPING(name="Steve"), "utf-8")
    decoded = decode_frame(frame, "utf-8")
    out["codec"] = [type(decoded).__name__, decoded.name, oracle.encode(decoded) == frame, TYPING.TYPE]
    out["oracle"] = oracle.decode_frame(frame, "utf-8") == decoded

    # engines: the table has the rows; elsewhere TYPING is unexpected (R12.1)
    from dfachat.fsm import ClientSession, ServerSession, ProtocolViolation, TABLES
    out["rows"] = sorted(
        f"{role} {d} {state}"
        for role, table in TABLES.items()
        for d, mapping in (("send", table.send), ("recv", table.recv))
        for state, row in mapping.items() if TYPING.TYPE in row
    )
    server = ServerSession()
    events = server.receive_data(frame)
    out["early"] = [type(e).__name__ for e in events] + [
        getattr(e, "reply", None) and e.reply.code.name for e in events]

    # the protocol document
    from dfachat.spec.document import render_protocol_markdown
    doc = render_protocol_markdown()
    code, rule = int(sys.argv[2]), sys.argv[3]
    out["doc"] = [f"### TYPING (0x{code:02X})" in doc, rule in doc, doc.count("TYPING")]

    # the diagrams: both roles' state diagrams and the packet layouts
    from dfachat.spec import MESSAGES_BY_NAME
    from dfachat.spec.diagrams import mermaid_state_diagram, packet_diagram_text, state_dot
    out["diagrams"] = [
        "?TYPING" in state_dot("server") and "!TYPING" in state_dot("server"),
        "?TYPING" in state_dot("client") and "!TYPING" in state_dot("client"),
        "TYPING" in mermaid_state_diagram("server", detailed=True),
        "name" in packet_diagram_text(MESSAGES_BY_NAME["TYPING"]),
    ]

    # the checker: explores TYPING and covers its rows
    from dfachat.conformance.checker import ModelConfig, check
    result = check(ModelConfig.for_clients(2, wrong_logins=0, aborts=0, max_msgs=0), max_states=200_000)
    from dfachat.conformance.checker import coverage_report
    report = coverage_report(result.coverage)
    rows = [r for role in report.values() for r in role["rows"] if "TYPING" in r["trigger"]]
    out["checker"] = [sorted({v.property.name for v in result.violations}), len(rows),
                      sum(r["taken"] for r in rows), result.states]

    # the conformance fuzzer: its schema strategies generate TYPING, and the illegal rule
    # sends it where the server's table has no TYPING row
    from hypothesis import HealthCheck, given, settings
    from dfachat.conformance.strategies import any_message, message_strategy
    from dfachat.conformance.fuzz.server_mode import illegal_messages
    drawn = []

    @settings(max_examples=300, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(any_message("utf-8"))
    def draw_any(message):
        drawn.append(message.NAME)

    draw_any()
    typing = []

    @settings(max_examples=5, database=None, derandomize=True)
    @given(message_strategy(MESSAGES_BY_NAME["TYPING"], "latin-1"))
    def draw_typing(message):
        typing.append(decode_frame(encode(message, "latin-1"), "latin-1") == message)

    draw_typing()
    out["fuzzer"] = {
        "drawn": "TYPING" in drawn,
        "typing": bool(typing) and all(typing),
        "illegal": {state: "TYPING" in [m.name for m in illegal_messages(state)] for state in TABLES["server"].recv},
    }

    # the real server and the client library, over loopback
    from dfachat.client import open_chat
    from dfachat.server import ChatServer, KdfParams, ServerConfig, Store

    async def chat():
        db = Path(tempfile.mkdtemp()) / "chat.db"
        store = Store(db, kdf=KdfParams(n=1024))
        store.add_user("Liz", "pw1")
        store.add_user("Steve", "pw2")
        server = ChatServer(store, ServerConfig(host="127.0.0.1", port=0))
        await server.start()
        liz = await open_chat("127.0.0.1", server.port, user="Liz", password="pw1")
        steve = await open_chat("127.0.0.1", server.port, user="Steve", password="pw2")
        liz._write(TYPING(name="Steve"))  # the library has no TYPING verb: the frame, as is
        await liz.ping()
        seen = None
        async with asyncio.timeout(5):
            async for event in steve.events():
                if isinstance(event, TYPING):
                    seen = event.name
                    break
        await liz.quit()
        await steve.quit()
        await server.shutdown()
        return seen

    out["live"] = asyncio.run(chat())
    print(json.dumps(out))
    '''
)


@pytest.fixture(scope="module")
def typing_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = tmp_path_factory.mktemp("typing") / "src"
    shutil.copytree(
        ROOT / "src" / "dfachat", tree / "dfachat", ignore=shutil.ignore_patterns("__pycache__")
    )
    return tree


def test_the_document_has_the_worked_example() -> None:
    files = {rel for rel, _, _ in examples()}
    # the spec, one server handler (in the core), one client handler, and the checker's values:
    # nothing else -- in particular no server code in the checker
    assert files == {
        "src/dfachat/spec/rules.py", "src/dfachat/spec/messages.py", "src/dfachat/spec/machine.py",
        "src/dfachat/server/core.py", "src/dfachat/client/library.py",
        "src/dfachat/conformance/checker/model.py",
    }
    model_blocks = [block for rel, _, block in examples() if rel.endswith("checker/model.py")]
    assert len(model_blocks) == 1 and "def values_TYPING" in model_blocks[0]


def test_adding_typing_reaches_every_part(typing_tree: Path) -> None:
    changed = apply_example(typing_tree.parent)
    assert len(changed) == len(examples())
    env = {**os.environ, "PYTHONPATH": str(typing_tree)}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(typing_tree), str(typing_code()), typing_rule()],
        capture_output=True, text=True, timeout=240, env=env, cwd=typing_tree,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["codec"] == ["TYPING", "Steve", True, typing_code()]
    assert out["oracle"] is True
    assert out["rows"] == sorted(
        ["server recv ESTABLISHED", "client send ESTABLISHED"]
        + [f"server send {s}" for s in ("ESTABLISHED", "ROUTING", "LISTING")]
        + [f"client recv {s}" for s in ("ESTABLISHED", "AWAIT_ACK", "AWAIT_USERS", "AWAIT_BYE")]
    )
    assert out["early"] == ["ProtocolViolation", "UNEXPECTED_MESSAGE"]
    assert out["doc"][:2] == [True, True]
    assert out["diagrams"] == [True, True, True, True]
    # The checker explores TYPING, covers its rows, and finds what the document says it finds:
    # TYPING without bound lets a user who stops reading be cut as a slow consumer, which is
    # the known finding of docs/CHECKING.md (a QUIT in flight then goes unanswered).
    violated, rows, taken, states = out["checker"]
    assert violated in ([], ["every_quit_gets_bye"]), out["checker"]
    assert rows == 9 and taken >= 4 and states > 192, out["checker"]
    # The fuzzer generates TYPING and sends it as illegal wherever the server's table has no row for it.
    assert out["fuzzer"]["drawn"] and out["fuzzer"]["typing"], out["fuzzer"]
    assert out["fuzzer"]["illegal"] == {state: f"server recv {state}" not in out["rows"]
                                        for state in out["fuzzer"]["illegal"]}
    assert out["live"] == "Liz"
