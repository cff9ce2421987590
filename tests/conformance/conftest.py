"""Helpers for the checker's tests: temporarily patched engine tables.

A broken variant of the protocol is built by replacing one row of a role's
frozen table (generated from the spec) on the engine class, for one test only
(pytest's ``monkeypatch`` undoes it). Nothing here ships a fault switch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import pytest

from dfachat.fsm import ClientSession, ServerSession
from dfachat.fsm._table import Branch
from dfachat.spec import MESSAGES_BY_NAME

ROLE_CLASSES = {"client": ClientSession, "server": ServerSession}


@pytest.fixture
def patch_row(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """``patch_row(role, "recv"|"send", state, "MSG", dest)``: set the row to one unguarded branch
    to ``dest`` (``None`` keeps the state); ``dest=False`` removes the row."""

    def patch(role: str, direction: str, state: str, message: str, dest: Any) -> None:
        cls = ROLE_CLASSES[role]
        table = cls._table
        code = MESSAGES_BY_NAME[message].code
        rows = {s: dict(row) for s, row in getattr(table, direction).items()}
        if dest is False:
            del rows[state][code]
        else:
            rows[state][code] = (Branch((), dest, (), "R12.1", f"{direction}_{message}"),)
        frozen = MappingProxyType({s: MappingProxyType(row) for s, row in rows.items()})
        patched = dataclasses.replace(table, **{direction: frozen})
        monkeypatch.setattr(cls, "_table", patched)
        monkeypatch.setattr(cls, "_recv", patched.recv)

    return patch
