"""Running the server tests: ``async def`` tests, the ``chat`` fixture, and a log check.

There is no pytest-asyncio here, on purpose: :func:`pytest_pyfunc_call` runs
an ``async def`` test in a fresh event loop (``asyncio.run``) under an overall
time limit, and afterwards closes the :class:`~.client.Chat` the test used
(its clients, then its server) in that same loop, so nothing a test starts
outlives it.

Every test also fails if the server logged an ERROR (an internal error in a
handler, an exception in a task or callback): the server must survive every
input without one.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from pathlib import Path

import pytest

from .client import Chat

TEST_TIMEOUT_S = 45.0  # a whole async test, setup and teardown included


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    func = pyfuncitem.obj
    if not inspect.iscoroutinefunction(func):
        return None
    kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    chats = [value for value in kwargs.values() if isinstance(value, Chat)]

    async def main() -> None:
        try:
            async with asyncio.timeout(TEST_TIMEOUT_S):
                await func(**kwargs)
        finally:
            for chat in chats:
                async with asyncio.timeout(10):
                    await chat.aclose()
        for chat in chats:
            chat.check_no_violations()

    asyncio.run(main())
    return True


@pytest.fixture
def chat(tmp_path: Path) -> Chat:
    """A server harness on a fresh SQLite file; start it with ``await chat.start(...)``."""
    return Chat(tmp_path / "chat.db")


@pytest.fixture(autouse=True)
def _no_errors_logged(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="dfachat")
    yield
    bad = [r for r in caplog.get_records("call") if r.levelno >= logging.ERROR]
    assert not bad, "errors were logged:\n" + "\n".join(
        f"{r.name}: {r.getMessage()}\n{r.exc_text or ''}" for r in bad
    )
