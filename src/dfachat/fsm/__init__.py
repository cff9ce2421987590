"""The sans-IO protocol engine: each role's state table, generated from the spec, and sessions.

* :class:`ServerSession`, :class:`ClientSession` -- ``receive_data(bytes) -> events``,
  ``send(message) -> bytes``, ``state``, ``closed``, ``must_close``,
  ``snapshot()`` and ``restore(snapshot)`` (:class:`SessionSnapshot`, a hashable value);
* :class:`ProtocolViolation`, :class:`ConnectionClosed` -- the events that are not messages;
* :data:`TABLES_BY_VERSION` -- the frozen ``(version, role, state, trigger) -> branches``
  tables (:data:`TABLES`: version 1's);
* :class:`SessionPair` (in :mod:`.testing`) -- a client and a server joined in memory.
"""

from dfachat.fsm._table import TABLES, TABLES_BY_VERSION, Branch, RoleTable, resolve
from dfachat.fsm.events import ConnectionClosed, Event, ProtocolViolation, SessionEvent
from dfachat.fsm.session import ClientSession, ServerSession, Session, SessionSnapshot, make_error
from dfachat.fsm.testing import SessionPair

__all__ = [
    "TABLES",
    "TABLES_BY_VERSION",
    "Branch",
    "ClientSession",
    "ConnectionClosed",
    "Event",
    "ProtocolViolation",
    "RoleTable",
    "ServerSession",
    "Session",
    "SessionEvent",
    "SessionPair",
    "SessionSnapshot",
    "make_error",
    "resolve",
]
