"""The reference server (``dfachat server``): a sans-IO core and the asyncio shell that runs it.

* :mod:`.core` -- :class:`ServerCore`: everything the server decides, events in
  and effects out; the checker and the fuzzer's oracle run it too;
* :mod:`.storage` -- the core's seams: :class:`Storage` (with :class:`MemoryStore`)
  and :class:`Presence`;
* :mod:`.routing` -- where a MSG goes and what each recipient sees (pure functions the core calls);
* :mod:`.app` -- :class:`ChatServer`: sockets, TLS, timers and worker threads around the core;
* :mod:`.store` -- :class:`Store`: accounts, stored messages and message ids in one SQLite file;
* :mod:`.run` -- running it: logging, signals, the event loop.
"""

from dfachat.server.app import ChatServer, Connection, ServerConfig
from dfachat.server.core import CoreConfig, CoreConnection, Effects, ServerCore
from dfachat.server.routing import Route, reencode, route
from dfachat.server.storage import MemoryStore, Presence, Storage
from dfachat.server.store import DEMO_ACCOUNTS, AccountError, KdfParams, Store, default_db_path

__all__ = [
    "DEMO_ACCOUNTS",
    "AccountError",
    "ChatServer",
    "Connection",
    "CoreConfig",
    "CoreConnection",
    "Effects",
    "KdfParams",
    "MemoryStore",
    "Presence",
    "Route",
    "ServerConfig",
    "ServerCore",
    "Storage",
    "Store",
    "default_db_path",
    "reencode",
    "route",
]
