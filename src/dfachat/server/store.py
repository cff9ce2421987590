"""The server's durable state in one SQLite file: accounts, stored messages, message ids.

* Accounts: names are matched case-insensitively and keep their registered
  spelling (R4.1); passwords are hashed with scrypt (memory-hard, stdlib),
  a random salt per account, and compared in constant time. Checking an
  unknown name costs the same as a wrong password (R6.2).
* Stored messages (R7.7): a directed message for an offline user is
  committed before its MSG_ACK says QUEUED, and deleted only once delivered.
  The database runs in WAL mode with ``synchronous=FULL``: acknowledged means
  durable, a killed process or a power cut included.
* Server message ids (R7.3): strictly increasing across restarts. Ids are
  reserved in blocks (one commit per block); a restart skips the rest of the
  block, so an id is never issued twice.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sqlite3
import time
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dfachat.errors import DfachatError
from dfachat.server.storage import Account, StoredMessage, name_key, text_size
from dfachat.spec.messages import USER_NAME

__all__ = [
    "DEMO_ACCOUNTS",
    "Account",
    "AccountError",
    "KdfParams",
    "Store",
    "StoreError",
    "StoredMessage",
    "default_db_path",
    "name_key",
]

# The seed's accounts, created by ``dfachat server --demo``.
DEMO_ACCOUNTS = (("Liz", "pw1"), ("Steve", "pw2"), ("Bailey", "pw3"))

_SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    key        TEXT PRIMARY KEY,      -- the name, case-folded (R4.1)
    name       TEXT NOT NULL,         -- the registered spelling
    salt       BLOB NOT NULL,
    hash       BLOB NOT NULL,
    kdf        TEXT NOT NULL,         -- scrypt$n$r$p
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS stored (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient_key TEXT NOT NULL,
    server_msg_id INTEGER NOT NULL,
    timestamp_ms  INTEGER NOT NULL,
    sender        TEXT NOT NULL,
    flags         INTEGER NOT NULL,
    text          TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS stored_by_recipient ON stored (recipient_key, id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class StoreError(DfachatError):
    """The database cannot be opened or written (a path that is not a writable file)."""


class AccountError(DfachatError):
    """An account operation that cannot be done (exists already, no such user, bad name)."""

    rule = "R4.1"


@dataclass(frozen=True, slots=True)
class KdfParams:
    """scrypt cost: n=2**14, r=8 takes 16 MiB and tens of milliseconds per check."""

    n: int = 1 << 14
    r: int = 8
    p: int = 1

    def encode(self) -> str:
        return f"scrypt${self.n}${self.r}${self.p}"

    @classmethod
    def decode(cls, text: str) -> KdfParams:
        kind, n, r, p = text.split("$")
        if kind != "scrypt":
            raise AccountError(f"unknown password hash {kind!r}")
        return cls(int(n), int(r), int(p))




def _password_bytes(password: str) -> bytes:
    # Normalise so the same password typed in any encoding and form checks the same.
    return unicodedata.normalize("NFC", password).encode("utf-8", "surrogatepass")


def _hash(password: str, salt: bytes, kdf: KdfParams) -> bytes:
    return hashlib.scrypt(
        _password_bytes(password), salt=salt, n=kdf.n, r=kdf.r, p=kdf.p, maxmem=256 * kdf.n * kdf.r, dklen=32
    )


def default_db_path() -> Path:
    """``$XDG_DATA_HOME/dfachat/dfachat.db`` (``~/.local/share`` when unset)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "dfachat" / "dfachat.db"


class Store:
    """One SQLite database (a :class:`~dfachat.server.storage.Storage`); use from one thread
    (the server's event loop), except :func:`verify_password` which any thread may run."""

    ID_BLOCK = 1024

    def __init__(self, path: str | os.PathLike[str], *, kdf: KdfParams | None = None) -> None:
        self.path = Path(path)
        self.kdf = kdf or KdfParams()
        if self.path.is_dir():
            raise StoreError(f"the database {self.path} is a directory: give a file path, "
                             f"such as {self.path / 'dfachat.db'}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(unusable(self.path, exc)) from None
        self._next_id = 0
        self._id_limit = 0
        self._usage: dict[str, list[int]] = {}  # recipient key -> [messages, bytes] (R7.14)
        self.batching = False  # see begin_batch
        self._acked: dict[str, int] = {}  # acknowledged, not yet deleted: recipient -> newest id
        self._dummy_salt = os.urandom(16)

    def close(self) -> None:
        self._db.close()

    # --- accounts -----------------------------------------------------------------
    @staticmethod
    def check_name(name: str) -> None:
        if not isinstance(name, str) or not name.isascii() or USER_NAME.regex.fullmatch(name.encode()) is None:
            raise AccountError(f"{name!r} is not a valid user name: a letter, then letters, digits, _ . -")

    def add_user(self, name: str, password: str) -> Account:
        self.check_name(name)
        if not password:
            raise AccountError("a password cannot be empty", rule="R4.4")
        salt = os.urandom(16)
        try:
            self._db.execute(
                "INSERT INTO accounts (key, name, salt, hash, kdf, created_ms) VALUES (?, ?, ?, ?, ?, ?)",
                (name_key(name), name, salt, _hash(password, salt, self.kdf), self.kdf.encode(), _now_ms()),
            )
        except sqlite3.IntegrityError:
            raise AccountError(f"an account named {name!r} exists already") from None
        return Account(name, name_key(name))

    def remove_user(self, name: str) -> bool:
        with self._transaction():
            self._db.execute("DELETE FROM stored WHERE recipient_key = ?", (name_key(name),))
            cursor = self._db.execute("DELETE FROM accounts WHERE key = ?", (name_key(name),))
        return cursor.rowcount > 0

    def set_password(self, name: str, password: str) -> None:
        if not password:
            raise AccountError("a password cannot be empty", rule="R4.4")
        salt = os.urandom(16)
        cursor = self._db.execute(
            "UPDATE accounts SET salt = ?, hash = ?, kdf = ? WHERE key = ?",
            (salt, _hash(password, salt, self.kdf), self.kdf.encode(), name_key(name)),
        )
        if cursor.rowcount == 0:
            raise AccountError(f"no account named {name!r}")

    def list_users(self) -> list[str]:
        return [row[0] for row in self._db.execute("SELECT name FROM accounts ORDER BY key")]

    def lookup(self, name: str) -> Account | None:
        row = self._db.execute("SELECT name, key FROM accounts WHERE key = ?", (name_key(name),)).fetchone()
        return Account(row[0], row[1]) if row else None

    def credentials(self, name: str) -> tuple[Account | None, bytes, bytes, KdfParams]:
        """What :func:`verify_password` needs; for an unknown name, a dummy with the same cost (R6.2)."""
        row = self._db.execute(
            "SELECT name, key, salt, hash, kdf FROM accounts WHERE key = ?", (name_key(name),)
        ).fetchone()
        if row is None:
            return None, self._dummy_salt, b"\0" * 32, self._dummy_kdf()
        return Account(row[0], row[1]), row[2], row[3], KdfParams.decode(row[4])

    def _dummy_kdf(self) -> KdfParams:
        """The cost of the newest account's hash: an unknown name must cost what a wrong password
        costs (R6.2) even when the accounts were hashed with other parameters than this Store's."""
        row = self._db.execute("SELECT kdf FROM accounts ORDER BY rowid DESC LIMIT 1").fetchone()
        return KdfParams.decode(row[0]) if row else self.kdf

    def verify(self, name: str, password: str) -> Account | None:
        """The account when the password is right; None otherwise (same cost either way)."""
        account, salt, expected, kdf = self.credentials(name)
        return account if verify_password(password, salt, expected, kdf) and account else None

    def ensure_users(self, accounts: Iterable[tuple[str, str]]) -> list[str]:
        """Create the accounts that do not exist yet; returns the names created."""
        created = []
        for name, password in accounts:
            if self.lookup(name) is None:
                self.add_user(name, password)
                created.append(name)
        return created

    # --- server message ids (R7.3) -----------------------------------------------
    def next_msg_id(self) -> int:
        if self._next_id >= self._id_limit:
            with self._transaction():
                row = self._db.execute("SELECT value FROM meta WHERE key = 'msg_id_limit'").fetchone()
                # never below what this run issued: a rolled-back batch may have held the last block
                start = max(row[0] if row else 1, self._next_id)
                self._id_limit = start + self.ID_BLOCK
                self._db.execute(
                    "INSERT INTO meta (key, value) VALUES ('msg_id_limit', ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (self._id_limit,),
                )
            self._next_id = start
        self._next_id += 1
        return self._next_id - 1

    def id_mark(self) -> int:
        """At or above every id issued, this run or before (a restart skips to a new block)."""
        if self._next_id:
            return self._next_id - 1
        row = self._db.execute("SELECT value FROM meta WHERE key = 'msg_id_limit'").fetchone()
        return row[0] - 1 if row else 0

    # --- inboxes: store and forward (R7.7), acknowledged delivery (R7.10) ----------------
    def store(
        self, recipient_keys: Iterable[str], server_msg_id: int, timestamp_ms: int, sender: str, flags: int, text: str
    ) -> None:
        self.store_groups([(recipient_keys, flags)], server_msg_id, timestamp_ms, sender, text)

    def store_groups(
        self, groups: Iterable[tuple[Iterable[str], int]], server_msg_id: int, timestamp_ms: int, sender: str, text: str
    ) -> None:
        """Commit one message to many inboxes in one transaction; returns once it is durable."""
        rows = [(key, server_msg_id, timestamp_ms, sender, flags, text) for keys, flags in groups for key in keys]
        if not rows:
            return
        with self._transaction():
            self._db.executemany(
                "INSERT INTO stored (recipient_key, server_msg_id, timestamp_ms, sender, flags, text) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
        size = text_size(text)
        for row in rows:
            usage = self._usage.get(row[0])
            if usage is not None:
                usage[0] += 1
                usage[1] += size

    def stored_for(self, recipient_key: str, *, after: int = 0, limit: int | None = None) -> list[StoredMessage]:
        rows = self._db.execute(
            "SELECT id, server_msg_id, timestamp_ms, sender, flags, text FROM stored "
            "WHERE recipient_key = ? AND server_msg_id > ? ORDER BY id LIMIT ?",
            (recipient_key, max(after, self._acked.get(recipient_key, 0)), -1 if limit is None else limit),
        )
        return [StoredMessage(*row) for row in rows]

    def forget(self, ids: Iterable[int]) -> None:
        """Delete stored messages once they are delivered (version 1)."""
        gone: list[tuple[str, int]] = []
        with self._transaction():
            for i in ids:
                gone += self._db.execute(
                    "DELETE FROM stored WHERE id = ? RETURNING recipient_key, length(CAST(text AS BLOB))", (i,)
                ).fetchall()
        self._release(gone)

    def acknowledge(self, recipient_key: str, server_msg_id: int) -> None:
        """Forget a recipient's messages up to ``server_msg_id`` (version 2, R7.10).

        At once for this process (:meth:`stored_for` skips them), on disk at the next
        :meth:`tidy`: an acknowledgement lost to a crash only brings messages back flagged
        REDELIVERED, which the client drops (R7.11). A statement and a commit per
        acknowledgement cost more than the delivery itself (bench/fanout.py)."""
        if server_msg_id > self._acked.get(recipient_key, 0):
            self._acked[recipient_key] = server_msg_id

    def tidy(self) -> None:
        """Delete what was acknowledged since the last call: joins an open batch, or commits
        on its own without waiting for the disk."""
        acks, self._acked = self._acked, {}
        if not acks:
            return
        if self._db.in_transaction:
            self._release(self._delete_acknowledged(acks))
        else:
            self._commit_acks(acks)

    def _delete_acknowledged(self, acks: dict[str, int]) -> list[tuple[str, int]]:
        gone: list[tuple[str, int]] = []
        for key, last in acks.items():
            gone += self._db.execute(
                "DELETE FROM stored WHERE recipient_key = ? AND server_msg_id <= ? "
                "RETURNING recipient_key, length(CAST(text AS BLOB))",
                (key, last),
            ).fetchall()
        return gone

    def _commit_acks(self, acks: dict[str, int]) -> None:
        """Acknowledgements alone: one transaction that does not wait for the disk."""
        self._db.execute("PRAGMA synchronous=NORMAL")
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                gone = self._delete_acknowledged(acks)
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        finally:
            self._db.execute("PRAGMA synchronous=FULL")
        self._release(gone)

    def _release(self, rows: Iterable[tuple[str, int]]) -> None:
        for key, size in rows:
            usage = self._usage.get(key)
            if usage is not None:
                usage[0] -= 1
                usage[1] -= size

    def inbox_usage(self, recipient_key: str) -> tuple[int, int]:
        """(messages, bytes) in a recipient's inbox (R7.14); counted once, then kept up to date."""
        usage = self._usage.get(recipient_key)
        if usage is None:
            count, size = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(length(CAST(text AS BLOB))), 0) FROM stored WHERE recipient_key = ?",
                (recipient_key,),
            ).fetchone()
            usage = self._usage[recipient_key] = [count, size]
        return usage[0], usage[1]

    def stored_count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM stored").fetchone()[0]

    # --- batches: many writes, one commit (the server's group commit) ------------------
    def begin_batch(self) -> None:
        """From now on writes join one open transaction until :meth:`commit` (or :meth:`rollback`):
        none of them is durable before that. The server commits once per event-loop iteration."""
        self.batching = True

    def commit(self) -> None:
        """Make every write since the last commit durable; raises (and keeps nothing) on failure.
        """
        if self._db.in_transaction:
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error:
                self.rollback()
                raise

    def rollback(self) -> None:
        """Drop every write since the last commit."""
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")
        self._usage.clear()  # counted with the dropped writes: count again from the file
        self._id_limit = 0  # the block reservation may have been dropped: reserve again

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db, self.batching)


class _Transaction:
    def __init__(self, db: sqlite3.Connection, batching: bool) -> None:
        self._db = db
        self._batching = batching

    def __enter__(self) -> None:
        if not (self._batching and self._db.in_transaction):
            self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, value: object, tb: object) -> None:
        if self._batching:  # a failure fails the whole batch: the caller rolls it back
            return
        if kind is None:
            self._db.execute("COMMIT")
        elif self._db.in_transaction:  # SQLite may have rolled back already (a full disk does)
            self._db.execute("ROLLBACK")


def unusable(path: Path, exc: BaseException) -> str:
    """Why the database at ``path`` cannot be used, and what to do, in one sentence."""
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return (f"cannot use the database {path}: {reason}; check that its directory exists and "
            "that you may write to it and to the file, or give --db another path")


def verify_password(password: str, salt: bytes, expected: bytes, kdf: KdfParams) -> bool:
    """Constant-time check; safe to run in a worker thread (no database access)."""
    return hmac.compare_digest(_hash(password, salt, kdf), expected)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
