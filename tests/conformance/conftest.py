"""Helpers for the checker's tests: temporarily patched engine tables.

A broken variant of the protocol is built by replacing one row of a role's
frozen table (generated from the spec) in the tables the engine reads
(``dfachat.fsm.session.TABLES_BY_VERSION``), in every protocol version, for one
test only (pytest's ``monkeypatch`` undoes it). Nothing here ships a fault switch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import pytest

import dfachat.fsm.session as engine
from dfachat.fsm._table import Branch, RoleTable
from dfachat.spec import MESSAGES_BY_NAME


@pytest.fixture
def patch_row(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """``patch_row(role, "recv"|"send", state, "MSG", dest)``: set the row to one unguarded branch
    to ``dest`` (``None`` keeps the state); ``dest=False`` removes the row."""

    def patched(table: RoleTable, direction: str, state: str, message: str, dest: Any) -> RoleTable:
        code = MESSAGES_BY_NAME[message].code
        rows = {s: dict(row) for s, row in getattr(table, direction).items()}
        if dest is False:
            del rows[state][code]
        else:
            rows[state][code] = (Branch((), dest, (), "R12.1", f"{direction}_{message}"),)
        frozen = MappingProxyType({s: MappingProxyType(row) for s, row in rows.items()})
        return dataclasses.replace(table, **{direction: frozen})

    def patch(role: str, direction: str, state: str, message: str, dest: Any) -> None:
        tables = MappingProxyType({
            version: MappingProxyType({
                r: patched(table, direction, state, message, dest) if r == role else table
                for r, table in by_role.items()
            })
            for version, by_role in engine.TABLES_BY_VERSION.items()
        })
        monkeypatch.setattr(engine, "TABLES_BY_VERSION", tables)

    return patch
