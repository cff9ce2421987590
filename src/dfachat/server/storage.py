"""The server core's two seams to shared state: durable storage and presence.

The core (:mod:`dfachat.server.core`) decides; what it decides *about* --
accounts, stored messages, message ids, who is online -- sits behind the two
small interfaces here, so that the same decisions run over:

* :class:`dfachat.server.store.Store` -- SQLite, the reference server's default;
* :class:`MemoryStore` -- a dict, for the model checker and the fuzzer's oracle
  (and for tests): cheap to copy into and out of a checker state;
* a cluster's shared store (several nodes on one broker), later, implementing
  the same :class:`Storage`, and a :class:`Presence` that also knows the users
  online at other nodes.

Password checks are not here: they cost tens of milliseconds of CPU, so the
core asks for them as an effect (``check_password``) and its I/O shell runs
them where it likes (a worker thread); :meth:`Storage.verify` is what it runs.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

__all__ = ["Account", "MemoryStore", "Presence", "Storage", "StoredMessage", "name_key", "text_size"]


def name_key(name: str) -> str:
    """The identity of a name: case-insensitive (R4.1)."""
    return name.casefold()


@dataclass(frozen=True, slots=True)
class Account:
    name: str  # the registered spelling (R4.1)
    key: str  # name_key(name)


class StoredMessage(NamedTuple):
    """One stored message for one recipient (R7.7). ``id`` is the store's own handle."""

    id: Hashable
    server_msg_id: int
    timestamp_ms: int
    sender: str
    flags: int
    text: str


class Storage(Protocol):
    """What the core reads and writes durably. Every call returns once it is done (durable)."""

    def lookup(self, name: str) -> Account | None:
        """The account registered under ``name`` (any case), or None."""

    def verify(self, name: str, password: str) -> Account | None:
        """The account when ``password`` is right; the same cost either way (R6.2). Slow: the
        core never calls it; its shell does, off the event loop, when asked to check a password."""

    def next_msg_id(self) -> int:
        """A server message id greater than every id issued before, restarts included (R7.3)."""

    def id_mark(self) -> int:
        """An id at or above every server message id issued so far (none is issued twice, R7.3)."""

    def store(
        self, recipient_keys: Iterable[str], server_msg_id: int, timestamp_ms: int, sender: str, flags: int, text: str
    ) -> None:
        """Keep a message for recipients, all with the same flags: :meth:`store_groups` with one group."""

    def store_groups(
        self, groups: Iterable[tuple[Iterable[str], int]], server_msg_id: int, timestamp_ms: int, sender: str, text: str
    ) -> None:
        """Put one message in the inbox of every recipient of every (recipient keys, flags) group,
        all or nothing; durable when this returns (R7.7, R7.10). Raises on failure, storing nothing."""

    def stored_for(self, recipient_key: str, *, after: int = 0, limit: int | None = None) -> list[StoredMessage]:
        """A recipient's inbox, oldest first: the messages with a server message id above ``after``,
        at most ``limit`` of them."""

    def forget(self, ids: Iterable[Hashable]) -> None:
        """Delete stored messages (by :attr:`StoredMessage.id`) once they are delivered (version 1)."""

    def acknowledge(self, recipient_key: str, server_msg_id: int) -> None:
        """Delete a recipient's messages up to ``server_msg_id`` included (version 2, R7.10)."""

    def inbox_usage(self, recipient_key: str) -> tuple[int, int]:
        """(messages, bytes of UTF-8 text) in a recipient's inbox, for its quota (R7.14)."""

    def tidy(self) -> None:
        """Deferred housekeeping (deleting acknowledged messages); the core calls it from tick."""

    def commit(self) -> None:
        """Make the writes of a batch durable (group commit; a no-op for a store that writes
        through). Raises, keeping none of them, when it cannot."""

    def rollback(self) -> None:
        """Drop the writes of a batch."""


def text_size(text: str) -> int:
    """What a text costs against an inbox quota: its UTF-8 bytes (R7.14)."""
    return len(text.encode("utf-8", "surrogatepass"))


class MemoryStore:
    """:class:`Storage` in a few dicts: accounts with plain passwords, for models and tests.

    Its whole content is a value (:meth:`snapshot`, :meth:`restore`), which is
    what the model checker keeps in its states. A stored message's ``id`` is
    ``(recipient_key, server_msg_id)``, so equal contents are equal snapshots
    whatever the history that made them.
    """

    __slots__ = ("_accounts", "_stored", "_next_id")

    def __init__(self, accounts: Iterable[tuple[str, str]] = (), *, next_id: int = 1) -> None:
        self._accounts: dict[str, tuple[str, str]] = {name_key(n): (n, p) for n, p in accounts}
        self._stored: list[tuple[str, StoredMessage]] = []  # (recipient_key, message), in order
        self._next_id = next_id

    def copy(self) -> MemoryStore:
        """Another store with the same accounts (shared: both read them) and content."""
        other = MemoryStore.__new__(MemoryStore)
        other._accounts = self._accounts
        other._stored = list(self._stored)
        other._next_id = self._next_id
        return other

    # --- snapshots ----------------------------------------------------------------
    def snapshot(self) -> tuple[tuple[tuple[str, StoredMessage], ...], int]:
        """(stored messages with their recipient keys, the next message id): hashable."""
        return tuple(self._stored), self._next_id

    def restore(self, snapshot: tuple[tuple[tuple[str, StoredMessage], ...], int]) -> MemoryStore:
        """Replace the stored messages and the id counter (accounts stay); returns self."""
        stored, self._next_id = snapshot
        self._stored = list(stored)
        return self

    @property
    def stored(self) -> tuple[tuple[str, StoredMessage], ...]:
        return tuple(self._stored)

    # --- Storage --------------------------------------------------------------------
    def add_user(self, name: str, password: str) -> Account:
        self._accounts[name_key(name)] = (name, password)
        return Account(name, name_key(name))

    def lookup(self, name: str) -> Account | None:
        entry = self._accounts.get(name_key(name))
        return Account(entry[0], name_key(name)) if entry else None

    def verify(self, name: str, password: str) -> Account | None:
        entry = self._accounts.get(name_key(name))
        return Account(entry[0], name_key(name)) if entry and entry[1] == password else None

    def next_msg_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def id_mark(self) -> int:
        return self._next_id - 1

    def store(
        self, recipient_keys: Iterable[str], server_msg_id: int, timestamp_ms: int, sender: str, flags: int, text: str
    ) -> None:
        self.store_groups([(recipient_keys, flags)], server_msg_id, timestamp_ms, sender, text)

    def store_groups(
        self, groups: Iterable[tuple[Iterable[str], int]], server_msg_id: int, timestamp_ms: int, sender: str, text: str
    ) -> None:
        for keys, flags in groups:
            for key in keys:
                message = StoredMessage((key, server_msg_id), server_msg_id, timestamp_ms, sender, flags, text)
                self._stored.append((key, message))

    def stored_for(self, recipient_key: str, *, after: int = 0, limit: int | None = None) -> list[StoredMessage]:
        found = [m for key, m in self._stored if key == recipient_key and m.server_msg_id > after]
        return found if limit is None else found[:limit]

    def forget(self, ids: Iterable[Hashable]) -> None:
        gone = set(ids)
        self._stored = [entry for entry in self._stored if entry[1].id not in gone]

    def acknowledge(self, recipient_key: str, server_msg_id: int) -> None:
        self._stored = [
            (key, m) for key, m in self._stored if key != recipient_key or m.server_msg_id > server_msg_id
        ]

    def inbox_usage(self, recipient_key: str) -> tuple[int, int]:
        texts = [m.text for key, m in self._stored if key == recipient_key]
        return len(texts), sum(map(text_size, texts))

    def tidy(self) -> None:
        pass  # acknowledged messages are deleted at once

    def commit(self) -> None:
        pass  # every write is already in place

    def rollback(self) -> None:
        pass

    def close(self) -> None:
        pass


class Presence:
    """Who is online, in login order: account key -> the core's connection (R8.1).

    This node's sessions only. A cluster's presence would subclass it and also
    report the users online at other nodes; the core asks nothing else of it.
    """

    __slots__ = ("_by_key",)

    def __init__(self) -> None:
        self._by_key: dict[str, Any] = {}

    def get(self, key: str) -> Any | None:
        return self._by_key.get(key)

    def add(self, key: str, conn: Any) -> None:
        self._by_key[key] = conn

    def remove(self, key: str, conn: Any) -> bool:
        """Take ``conn`` off; False when it was not ``key``'s online session."""
        if self._by_key.get(key) is not conn:
            return False
        del self._by_key[key]
        return True

    def sessions(self) -> Iterator[Any]:
        return iter(self._by_key.values())

    def items(self) -> Iterator[tuple[str, Any]]:
        return iter(self._by_key.items())

    def keys(self) -> tuple[str, ...]:
        return tuple(self._by_key)

    def __len__(self) -> int:
        return len(self._by_key)

    @property
    def by_key(self) -> dict[str, Any]:
        """The mapping itself, for :func:`dfachat.server.routing.route` (read only)."""
        return self._by_key
