"""The reference server (``dfachat server``): asyncio I/O around :class:`dfachat.fsm.ServerSession`.

* :mod:`.app` -- :class:`ChatServer`, one :class:`Connection` per client, handlers per message;
* :mod:`.routing` -- where a MSG goes and what each recipient sees (pure; shared with the checker);
* :mod:`.store` -- accounts, stored messages and message ids in one SQLite file;
* :mod:`.run` -- running it: logging, signals, the event loop.
"""

from dfachat.server.app import ChatServer, Connection, ServerConfig
from dfachat.server.routing import Route, reencode, route
from dfachat.server.store import DEMO_ACCOUNTS, AccountError, KdfParams, Store, default_db_path

__all__ = [
    "DEMO_ACCOUNTS",
    "AccountError",
    "ChatServer",
    "Connection",
    "KdfParams",
    "Route",
    "ServerConfig",
    "Store",
    "default_db_path",
    "reencode",
    "route",
]
