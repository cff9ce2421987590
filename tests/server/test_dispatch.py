"""Handlers are dispatched from the spec: a client message type without one fails at import."""

from __future__ import annotations

from pathlib import Path

import pytest

from dfachat.errors import SpecError
from dfachat.server import ChatServer, KdfParams, ServerCore, Store
from dfachat.spec import MESSAGES


def test_every_client_message_type_has_a_handler(tmp_path: Path) -> None:
    server = ChatServer(Store(tmp_path / "chat.db", kdf=KdfParams(n=1024)))
    client_types = {spec.code for spec in MESSAGES if spec.sent_by_client}
    assert set(server.core.handlers) == client_types


def test_a_message_type_without_a_handler_fails_when_the_core_is_defined() -> None:
    with pytest.raises(SpecError, match="no handler for LIST"):

        class NoList(ServerCore):  # what a core edited to drop on_LIST would be
            on_LIST = None  # type: ignore[assignment]
