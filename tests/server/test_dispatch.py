"""Handlers are dispatched from the spec: a client message type without one fails at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from dfachat.errors import SpecError
from dfachat.server import ChatServer, KdfParams, Store
from dfachat.spec import MESSAGES


def test_every_client_message_type_has_a_handler(tmp_path: Path) -> None:
    server = ChatServer(Store(tmp_path / "chat.db", kdf=KdfParams(n=1024)))
    client_types = {spec.code for spec in MESSAGES if spec.sent_by_client}
    assert set(server.handlers) == client_types


def test_a_message_type_without_a_handler_fails_when_the_server_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(ChatServer, "on_LIST")
    with pytest.raises(SpecError, match="no handler for LIST"):
        ChatServer(Store(tmp_path / "chat.db", kdf=KdfParams(n=1024)))
