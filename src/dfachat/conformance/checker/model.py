"""The model the checker explores: one server and N clients, all running the real engines.

A global state is an immutable tuple of small integers. Each integer names an
*interned component* -- one client, the server's side of one connection, one
channel, the server's shared data, the history the properties read -- so a
state is cheap to hash and to store, a step rebuilds only the components it
changes, and engines are restored from the component's snapshot of their
fields. Per client ``i`` the state holds a *bundle* of four components::

    (client, connection, c2s, s2c)

* ``client`` -- the client's :class:`~dfachat.fsm.ClientSession` fields and
  what the client has done (messages sent, logins tried ...), see :class:`Client`;
* ``connection`` -- the server's side of the client's current connection (its
  :class:`~dfachat.fsm.ServerSession` fields and the data the reference server
  keeps per connection), or None when the server has no connection;
* ``c2s``, ``s2c`` -- the FIFO channels, as tuples of messages (typed mode) or of
  encoded frames (``wire`` mode), :data:`EOF` marking a closed end.

followed by the :class:`Server` (who is online, the durable store, the message
id counter, restarts done) and the :class:`Ghost` (history the
properties need: every MSG with its MSG_ACK, and which account was sent which
DELIVER). History splits states that are otherwise equal, so it is kept to what
a property cannot judge from one step: see :class:`Ghost`.

Neither the protocol nor the server is restated here. What a client may send
in a state is the engine's table for the session's version (``TABLES_BY_VERSION``,
generated from the spec; the versions the clients offer are a bound, :attr:`ModelConfig.versions`) filtered by the engine itself (``send`` raises when a
guard or the codec refuses); what either side may receive, the engines
decide; the values come from :class:`Domain`, the one place they are given.
The server *is* :class:`dfachat.server.core.ServerCore`, the object the
reference server runs: each server step rebuilds a core from the state's
components (:meth:`~dfachat.server.core.ServerCore.adopt` for each connection,
a :class:`~dfachat.server.storage.MemoryStore` for the durable store), feeds it
one input, and turns its effects (:class:`_WorldEffects`) into channel writes,
closes and the facts the properties read. What the model adds is only the
environment: clients, channels, budgets, crashes, restarts, and time (which it
does not model: ``now`` is always 0, password checks and back-offs finish in
one step, and the core's back-off and rate records start empty at each step).
The environment's budgets (drops, timeouts, keep-alives) are per client, so that
one client's steps never disable another's (see :meth:`Model.successors`).

Steps (each one atomic; every interleaving of them is explored):

* client ``i``: connect; send one message its table and the domain allow; take
  the next frame of its ``s2c`` channel (answering PING with PONG, and closing
  after BYE, a fatal ERROR or a frame its engine rejects, which it answers with
  the engine's fatal ERROR); drop the connection (budget ``aborts``). With
  :attr:`ModelConfig.applications`: its application takes the next message that
  arrived (``take``); it crashes (budget ``crashes``), losing its connection, its
  engine and what was not taken, but not the application's log (``crash``).
* server, per connection: take the next frame of ``c2s`` and hand it to the core;
  finish a password check (PASS makes the connection *busy*, as in the server,
  so the check is a step of its own); PING an idle session (budget
  ``server_pings``); IDLE_TIMEOUT (budget ``timeouts``).
* server: restart (budget ``restarts``): BYE (SHUTDOWN) to every session, close
  them all; the durable store and the message id counter survive.

A server write goes straight into the ``s2c`` channel: which channel's frame is
delivered next is the scheduler's choice, which is the same nondeterminism as
which connection's queued output the server flushes first. A channel holding
more than ``capacity`` frames is a slow consumer (R9.3): the server aborts that
connection, dropping what it held. A client whose ``c2s`` channel is full
cannot send (flow control).
"""

from __future__ import annotations

import itertools
import logging
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import dfachat.fsm.session as engine
from dfachat.codec import decode_frame, encode
from dfachat.codec.messages import (  # type: ignore[attr-defined]
    DELIVER,
    DELIVER_ACK,
    ERROR,
    HELLO,
    LIST,
    MSG,
    PASS,
    PING,
    PONG,
    QUIT,
    USER,
    Message,
)
from dfachat.errors import LocalProtocolError, SpecError
from dfachat.fsm import (
    ClientSession,
    ConnectionClosed,
    ProtocolViolation,
    ServerSession,
    SessionSnapshot,
    make_error,
)
from dfachat.server.core import PUSHABLE, ConnectionSnapshot, CoreConfig, CoreConnection, ServerCore
from dfachat.server.storage import MemoryStore, StoredMessage
from dfachat.spec import (
    CLOSED_TRIGGER,
    ENCODINGS,
    FRAME_OVERHEAD,
    HEADER,
    LIMITS,
    MESSAGES,
    MESSAGES_BY_CODE,
    SUPPORTED_VERSIONS,
    ErrorCode,
    ErrorFlags,
    ListFlags,
    Outcome,
)

__all__ = [
    "DOMAIN",
    "EOF",
    "MODEL_VERSIONS",
    "EvApplication",
    "Client",
    "ClientSpec",
    "Conn",
    "Domain",
    "Ghost",
    "Logged",
    "Malformed",
    "Model",
    "ModelConfig",
    "Server",
    "Step",
    "Stored",
    "View",
    "name_key",
]

# The protocol versions the model can explore: version 2's clients take DELIVERs into an
# application, acknowledge what it took, and may crash (ModelConfig.crashes, ``applications``).
MODEL_VERSIONS = (1, 2)
EOF = None  # the end of a channel: the sender closed its side of the connection
_HEADER_SIZE = HEADER.sizeof()
_TYPE_AT = sum(
    sub.sizeof() for sub in itertools.takewhile(lambda sub: sub.name != "type", HEADER.subcons)
)
_LENGTH_AT = sum(
    sub.sizeof() for sub in itertools.takewhile(lambda sub: sub.name != "length", HEADER.subcons)
)
_LENGTH_SIZE = next(sub.sizeof() for sub in HEADER.subcons if sub.name == "length")
_CLOSED = "CLOSED"


def name_key(name: str) -> str:
    """The identity of a user name: case-insensitive (R4.1), as the server's store folds it."""
    return name.casefold()


# --- the values clients choose from: the one place they are given ---------------------------


@dataclass(frozen=True, slots=True)
class Domain:
    """Every value a model client may put in a message.

    ``accounts`` are registered (name, password); the first ``len(clients)``
    (at least) are in the server's store. A login names one of the client's
    accounts with its right password or ``wrong_password``. A MSG names a
    subset of the registered names (the empty one is a broadcast) and carries
    one of ``texts``: the second holds a character latin-1 cannot carry, so
    a latin-1 client cannot send it and receives it lossy (R3.5).
    """

    accounts: tuple[tuple[str, str], ...] = (
        ("Liz", "pw1"),
        ("Steve", "pw2"),
        ("Bailey", "pw3"),
        ("Ann", "pw4"),
        ("Kim", "pw5"),
        ("Lou", "pw6"),
    )
    wrong_password: str = "guess"
    unknown_users: tuple[
        str, ...
    ] = ()  # names no account has: MSG may name them, USER may try them
    texts: tuple[str, ...] = ("hi", "5 \u20ac")
    encodings: tuple[str, ...] = ("utf-8", "latin-1")  # client i gets encodings[i % len]
    software: str = "dfachat-check"
    malformed: tuple[str, ...] = (
        "MSG",
        "LIST",
        "PING",
    )  # what a client may send broken (budget ``malformed``)
    client_nonce: int = 1
    server_nonce: int = 2


DOMAIN = Domain()


@dataclass(frozen=True, slots=True)
class ClientSpec:
    """A client's fixed parameters: clients with equal specs are interchangeable (symmetry)."""

    encoding: str
    accounts: tuple[int, ...]  # indices into Domain.accounts this client may log in to


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """The model's bounds. Every budget is finite, so the state space is."""

    clients: tuple[ClientSpec, ...]
    capacity: int = 3  # frames per channel direction (c2s: the client waits; s2c: R9.3)
    max_msgs: int = 1  # MSGs each client sends, over all its sessions
    total_msgs: int = 0  # MSGs all clients send together; 0: no cap but max_msgs each
    max_lists: int = 0  # LISTs each client sends
    max_pings: int = 0  # PINGs each client sends
    wrong_logins: int = 1  # wrong passwords each client tries
    sessions: int = 1  # connections each client opens, one after the other
    aborts: int = 1  # drops or fatal ERRORs each client may do
    timeouts: int = 0  # IDLE_TIMEOUTs the server may fire at each client
    server_pings: int = 0  # keep-alive PINGs the server may send each client
    restarts: int = 0  # server restarts, over the whole run
    malformed: int = (
        0  # frames each client sends with a payload error (R2.7), to exercise R7.9, R8.3, R11.3
    )
    login_attempts: int = 2  # the server's limit (R6.3), announced in HELLO_OK
    page_size: int = 0  # names per AUTH_OK/USERS frame; 0: one less than the clients (R4.9)
    wire: bool = False  # channels carry encoded frames through the real codec
    # The protocol versions each client offers in HELLO (R5.2); the model explores MODEL_VERSIONS.
    versions: tuple[int, ...] = (1,)
    # Client crashes each client may suffer: the process dies, losing its connection, its engine
    # and what arrived but its application did not take; the application's log survives.
    crashes: int = 0
    deliver_window: int = 1  # the server's deliver_window (R7.12), announced in version 2's HELLO_OK
    domain: Domain = DOMAIN

    def __post_init__(self) -> None:
        unknown = [v for v in self.versions if v not in SUPPORTED_VERSIONS]
        if not self.versions or unknown:
            raise ValueError(
                f"the clients must offer protocol versions among {SUPPORTED_VERSIONS}, not {self.versions}"
            )
        beyond = [v for v in self.versions if v not in MODEL_VERSIONS]
        if beyond:
            raise ValueError(
                f"the model checker explores protocol versions {', '.join(map(str, MODEL_VERSIONS))} only, "
                f"not {', '.join(map(str, beyond))}"
            )
        if self.deliver_window < 1:
            raise ValueError(f"the deliver window must be at least 1, not {self.deliver_window}")

    @property
    def applications(self) -> bool:
        """Clients hand DELIVERs to an application (a step of its own) that logs what it took:
        in version 2 (it acknowledges what was taken) and with crashes (what was not taken is lost).
        Off in version 1 without crashes, which keeps that model as it was."""
        return self.version >= 2 or self.crashes > 0

    @property
    def version(self) -> int:
        """The version every session runs: the newest the clients offer (the reference server
        supports them all and chooses the newest common one, R5.2)."""
        return max(self.versions)

    @classmethod
    def for_clients(cls, n: int = 3, *, symmetric: bool = False, **bounds: Any) -> ModelConfig:
        """``n`` clients. Default: client i logs in to account i, encodings alternate
        (utf-8, latin-1, ...). ``symmetric``: every client has the first encoding and
        may log in to any of the ``n`` accounts, so all clients are interchangeable."""
        domain = bounds.get("domain", DOMAIN)
        if not 1 <= n <= len(domain.accounts):
            raise ValueError(
                f"the domain has accounts for 1 to {len(domain.accounts)} clients, not {n}"
            )
        if symmetric:
            specs = tuple(ClientSpec(domain.encodings[0], tuple(range(n))) for _ in range(n))
        else:
            specs = tuple(
                ClientSpec(domain.encodings[i % len(domain.encodings)], (i,)) for i in range(n)
            )
        return cls(clients=specs, **bounds)

    @property
    def registered(self) -> tuple[tuple[str, str], ...]:
        """The accounts in the server's store."""
        used = max((max(c.accounts) for c in self.clients), default=0) + 1
        return self.domain.accounts[: max(used, len(self.clients))]

    @property
    def pages(self) -> int:
        return self.page_size or max(1, len(self.clients) - 1)

    def groups(self) -> tuple[tuple[int, ...], ...]:
        """Indices of interchangeable clients (equal specs), for symmetry reduction."""
        by_spec: dict[ClientSpec, list[int]] = {}
        for i, spec in enumerate(self.clients):
            by_spec.setdefault(spec, []).append(i)
        return tuple(tuple(g) for g in by_spec.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "clients": [
                {
                    "encoding": c.encoding,
                    "accounts": [self.domain.accounts[a][0] for a in c.accounts],
                }
                for c in self.clients
            ],
            **{
                name: getattr(self, name)
                for name in (
                    "capacity",
                    "max_msgs",
                    "total_msgs",
                    "max_lists",
                    "max_pings",
                    "wrong_logins",
                    "sessions",
                    "aborts",
                    "timeouts",
                    "restarts",
                    "server_pings",
                    "malformed",
                    "login_attempts",
                    "wire",
                    "crashes",
                    "deliver_window",
                )
            },
            "versions": list(self.versions),
            "page_size": self.pages,
            "accounts": [list(a) for a in self.registered],
            "wrong_password": self.domain.wrong_password,
            "texts": list(self.domain.texts),
            "unknown_users": list(self.domain.unknown_users),
        }


# --- components ----------------------------------------------------------------------------


class Client(NamedTuple):
    """One model client: its engine's fields and what it did (budgets, the history it saw)."""

    engine: SessionSnapshot | None  # the ClientSession's snapshot; None before the first connection
    open: bool  # the client's end of the connection is open
    sessions: int  # connections opened
    msgs: int  # MSGs sent (the last one's msg_id)
    lists: int
    pings: int
    wrongs: int  # wrong passwords sent
    aborts: (
        int  # drops and fatal ERRORs (the environment's budgets are per client, see Model.ample)
    )
    timeouts: int  # IDLE_TIMEOUTs the server fired at it
    pinged: int  # keep-alive PINGs the server sent it
    malformed: int  # frames sent with a payload error
    account: int | None  # the account named in the last USER
    quit: bool  # sent QUIT in this session
    ended: str | None  # how the last session ended: bye, error, closed, dropped, rejected
    view: tuple[str, ...]  # who it was told is online (AUTH_OK and its pages, JOINED, LEFT), sorted
    collecting: bool  # AUTH_OK had MORE: USERS frames continue the login's list
    # With ModelConfig.applications (the application above the client library):
    crashes: int = 0  # crashes suffered; each allows one more connection (a fresh login)
    arrived: tuple[int, ...] = ()  # ids of DELIVERs the engine took and the application did not yet
    app: tuple[int, ...] = ()  # ids the application took, in order: its durable log (survives a crash)
    taken: int = 0  # the highest id the application took (R7.11), kept as durably as ``app``


class Conn(NamedTuple):
    """The server's side of one connection: the core's :class:`ConnectionSnapshot` (its
    engine and what the server keeps beside it) and what the world keeps about it."""

    core: ConnectionSnapshot
    online: bool  # this connection is the account's online session (the core's presence)
    pending: tuple[str, str] | None  # (name, password) being checked: the connection is busy
    # Version 2: what the core keeps beside the snapshot to serve the inbox (R7.12, R7.13):
    # (cursor, caught_up, login_mark, queued DELIVERs as (message, frame)); () in version 1.
    inbox: tuple[Any, ...] = ()

    @property
    def engine(self) -> SessionSnapshot:
        return self.core.session

    @property
    def key(self) -> str | None:
        return self.core.key

    @property
    def login_name(self) -> str | None:
        return self.core.login_name

    @property
    def pinged(self) -> bool:
        return self.core.pinged


class Stored(NamedTuple):
    """One durable store-and-forward entry (R7.7)."""

    key: str
    server_msg_id: int
    sender: str
    flags: int
    text: str


class Server(NamedTuple):
    online: tuple[str, ...]  # account keys, in login order
    store: tuple[Stored, ...]  # durable: survives restarts
    next_id: int  # the next server message id (R7.3)
    restarts: int  # restarts done


class Logged(NamedTuple):
    """A MSG the server processed and the MSG_ACK it answered (history for the properties)."""

    server_msg_id: int
    sender: str  # the sender's account key
    sender_name: str
    recipients: tuple[str, ...]
    text: str
    results: tuple[tuple[str, int], ...]  # MSG_ACK results (name, Outcome)
    delivered: int
    lossy: int


class Ghost(NamedTuple):
    """History for the properties: what cannot be judged from one step alone."""

    log: tuple[
        Logged, ...
    ]  # the MSGs the server processed, with their MSG_ACK (live ones, see below)
    written: tuple[
        tuple[int, str], ...
    ]  # (server_msg_id, key): a DELIVER was written to key's session, sorted
    last_id: int  # the greatest server message id issued (R7.3)
    # With ModelConfig.applications: (server_msg_id, recipient key) for every recipient a MSG_ACK
    # reported DELIVERED, LOSSY or QUEUED (a broadcast: each session it went to). Never forgotten:
    # an application must take each exactly once, whatever copies are left (R7.10, R7.11).
    promised: tuple[tuple[int, str], ...] = ()

    # A message is *live* while a copy of it exists: a DELIVER in a channel or an entry in the
    # store. Only a live message can still be delivered, so the entries of the others are
    # dropped (Model.collect): states that differ only in finished history are one state.


class Malformed(NamedTuple):
    """A channel item: the frame of ``message`` with one byte too many in its payload (R2.7)."""

    frame: bytes
    message: Message


def corrupt(frame: bytes) -> bytes:
    """``frame`` with one more byte in its payload: intact framing, a payload error (R2.7)."""
    length = int.from_bytes(frame[_LENGTH_AT : _LENGTH_AT + _LENGTH_SIZE], "big")
    header = (
        frame[:_LENGTH_AT]
        + (length + 1).to_bytes(_LENGTH_SIZE, "big")
        + frame[_LENGTH_AT + _LENGTH_SIZE : _HEADER_SIZE]
    )
    body = header + frame[_HEADER_SIZE : _HEADER_SIZE + length] + b"\0"
    return body + zlib.crc32(body).to_bytes(FRAME_OVERHEAD - _HEADER_SIZE, "big")


# Client.ended values
ENDED_BY_BYE, ENDED_BY_ERROR, ENDED_BY_CLOSE, ENDED_BY_DROP, ENDED_BY_REJECT, ENDED_BY_CRASH = (
    "bye",
    "error",
    "closed",
    "dropped",
    "rejected",
    "crashed",
)


class Step(NamedTuple):
    """One explored step: who did what, and the facts the properties judge."""

    actor: str  # "client" or "server"
    client: int | None  # the client (or connection) concerned; None for a restart
    action: str  # connect, send, receive, drop, serve, auth, ping, timeout, restart
    message: Message | None  # what was sent or taken (None for EOF and the rest)
    events: tuple[Any, ...]  # facts, see the Ev* classes
    writes: tuple[tuple[int, Message | None, bool], ...]  # the server's writes: (client, message or
    # None for a close, whether it reached the client: False when the client had already closed)
    shared: bool = False  # the same object stands for this step in many states (memoized)


# --- facts a step reports (the properties subscribe to these) ------------------------------


class EvClientReceived(NamedTuple):
    """Client ``client`` took ``message`` in ``state``; ``accepted``: its engine took it."""

    client: int
    message: Message
    state: str
    user: str | None  # the engine's user before (set by AUTH_OK)
    accepted: bool
    account: str | None  # the key of the account it logged in to, when it has
    encoding: str
    awaiting_msg_id: int | None  # the msg_id of the MSG it waits an answer for
    view: tuple[str, ...]  # who it believed online before

    @property
    def authenticated(self) -> bool:
        """The client's session had authenticated (AUTH_OK set its user)."""
        return self.user is not None


class EvServerReceived(NamedTuple):
    client: int
    message: Message | None  # None: the end of the stream
    state: str
    accepted: bool
    rule: str | None
    malformed: bool = False  # the client sent it broken on purpose


class EvWritten(NamedTuple):
    """The server wrote ``message`` to connection ``client`` whose session was in ``state``."""

    client: int
    message: Message
    state: str
    authenticated: bool  # the session's state is one the spec marks authenticated
    key: str | None  # the account the session logged in to


class EvLogin(NamedTuple):
    """The server sent AUTH_OK for ``name`` after USER ``login_name`` and PASS ``password``."""

    client: int
    name: str
    login_name: str | None
    password: str


class EvRouted(NamedTuple):
    """The server processed a MSG: who was online, who got it now, who will get it later."""

    client: int
    sender: str  # the sender's key
    recipients: tuple[str, ...]
    online: tuple[str, ...]  # keys online before
    live: tuple[str, ...]  # keys of the sessions a DELIVER was written to
    stored: tuple[str, ...]  # keys it was stored for
    server_msg_id: int
    last_id: int  # the greatest id issued before
    results: tuple[tuple[str, int], ...]  # MSG_ACK's results (name, Outcome)


class EvStoreChanged(NamedTuple):
    """The durable store lost ``removed`` and gained ``added`` in this step."""

    removed: tuple[Stored, ...]
    added: tuple[Stored, ...]


class EvAborted(NamedTuple):
    """The server aborted connection ``client`` as a slow consumer (R9.3), dropping ``dropped``
    unread frames, its own SLOW_CONSUMER ERROR among them (as transport.abort() does)."""

    client: int
    dropped: int


class EvInternalError(NamedTuple):
    client: int
    error: str


class EvApplication(NamedTuple):
    """Client ``client``'s application and a DELIVER: ``took`` it (appended to its log),
    ``dropped`` it at arrival (at or below the highest id taken, R7.11), or ``lost`` it in a
    crash (it had arrived, not been taken)."""

    client: int
    server_msg_id: int
    what: str  # took, dropped, lost


# --- the model -----------------------------------------------------------------------------


@dataclass(slots=True)
class Coverage:
    """Which rows of each role's table the exploration took: (role, state, trigger, branch index)."""

    taken: set[tuple[str, str, str, int]] = field(default_factory=set)


class Model:
    """The transition relation. A broken server is a :class:`ServerCore` subclass given as
    ``core_class`` (on a subclass of this); a broken environment overrides a step."""

    core_class: type[ServerCore] = ServerCore

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.n = len(config.clients)
        domain = config.domain
        self.limits = LIMITS.__class__(
            **{
                **LIMITS.as_dict(),
                "login_attempts": config.login_attempts,
                "max_names_per_frame": config.pages,
                "deliver_window": config.deliver_window,
            }
        )
        self.accounts: dict[str, tuple[str, str]] = {
            name_key(name): (name, password) for name, password in config.registered
        }
        self.names = tuple(name for name, _ in config.registered) + config.domain.unknown_users
        self.subsets = tuple(
            subset
            for size in range(len(self.names) + 1)
            for subset in itertools.combinations(self.names, size)
        )
        # Version 1's rows are a subset of every later version's, so the handshake's rows are
        # in the session version's table too.
        # The engine's own tables (what its sessions run, a patched table in a test included).
        self.server_table = engine.TABLES_BY_VERSION[config.version]["server"]
        self.client_table = engine.TABLES_BY_VERSION[config.version]["client"]
        self.pushable = PUSHABLE  # where the core may push (and PING): its rule, not a copy
        # client states that send nothing but answers or a last ERROR (and, in version 2,
        # acknowledgements: they answer DELIVERs, not the request the client waits on)
        answers = {PONG.TYPE, ERROR.TYPE, DELIVER_ACK.TYPE}
        self.waiting = frozenset(
            state for state, row in self.client_table.send.items() if row and set(row) <= answers
        )
        self.values = self._domain_table()
        self.core_config = CoreConfig(
            limits=self.limits, software=domain.software, log_level=logging.DEBUG
        )
        self.accounts_store = MemoryStore(config.registered)
        # A connection as the core opens it, before anything is received.
        opened = ServerCore(MemoryStore(), _NoEffects(), self.core_config)
        self.new_conn = Conn(opened.connection_opened(None, _ADDRESS, _ADDRESS, 0.0).snapshot(), False, None)
        self._give_up = [make_error(ErrorCode.INTERNAL_ERROR, "the client gives up", fatal=True)]
        self.coverage = Coverage()
        self._ids: dict[Any, int] = {}
        self._vals: list[Any] = []
        self._send_memo: dict[Any, Any] = {}
        self._client_memo: dict[Any, Any] = {}
        self._private_memo: dict[Any, Any] = {}
        self._channel_ids: dict[int, frozenset[int]] = {}
        self._recv_memo: dict[Any, Any] = {}
        self._server_memo: dict[Any, Any] = {}
        self.groups = config.groups()
        for spec in config.clients:
            if spec.encoding not in ENCODINGS:
                raise SpecError(
                    f"the model's client encoding {spec.encoding!r} is not in the spec", rule="R3.1"
                )
        del domain

    # --- one place per message type: the values a client may send, checked against the spec ----
    def _domain_table(self) -> dict[int, Callable[[Client, int], list[Message]]]:
        table, missing = {}, []
        for spec in MESSAGES:
            if spec.sent_by_client and any(spec.in_version(v) for v in self.config.versions):
                values = getattr(self, f"values_{spec.name}", None)
                if values is None:
                    missing.append(spec.name)
                else:
                    table[spec.code] = values
        if missing:
            raise SpecError(
                f"the model client has no values for {', '.join(missing)}", rule="R12.2"
            )
        return table

    # --- the domain: what a client may put in each message type ---------------------------
    def values_HELLO(self, c: Client, i: int) -> list[Message]:
        spec = self.config.clients[i]
        return [
            HELLO(
                versions=self.config.versions,
                encoding=spec.encoding,
                software=self.config.domain.software,
            )
        ]

    def values_USER(self, c: Client, i: int) -> list[Message]:
        domain = self.config.domain
        names = [domain.accounts[a][0] for a in self.config.clients[i].accounts]
        return [USER(name=name) for name in (*names, *domain.unknown_users)]

    def values_PASS(self, c: Client, i: int) -> list[Message]:
        domain = self.config.domain
        out = [] if c.account is None else [PASS(password=domain.accounts[c.account][1])]
        if c.wrongs < self.config.wrong_logins or c.account is None:
            out.append(PASS(password=domain.wrong_password))
        return out

    def values_MSG(self, c: Client, i: int) -> list[Message]:
        if c.msgs >= self.config.max_msgs:
            return []
        return [
            MSG(msg_id=c.msgs + 1, recipients=subset, text=text)
            for subset in self.subsets
            for text in self.config.domain.texts
        ]

    def values_LIST(self, c: Client, i: int) -> list[Message]:
        return [LIST()] if c.lists < self.config.max_lists else []

    def values_PING(self, c: Client, i: int) -> list[Message]:
        return (
            [PING(nonce=self.config.domain.client_nonce)] if c.pings < self.config.max_pings else []
        )

    def values_PONG(self, c: Client, i: int) -> list[Message]:
        return []  # a client answers the server's PING as it takes it (R9.1)

    def values_QUIT(self, c: Client, i: int) -> list[Message]:
        return [QUIT()]

    def values_DELIVER_ACK(self, c: Client, i: int) -> list[Message]:
        # R7.11: acknowledge, cumulatively, the newest unacknowledged DELIVER of the session whose
        # id the application has taken (or dropped as taken before): never one it did not take.
        taken = [sid for sid in c.engine.unacknowledged if sid <= c.taken]
        return [DELIVER_ACK(server_msg_id=max(taken))] if taken else []

    def values_ERROR(self, c: Client, i: int) -> list[Message]:
        # A client that gives up: a fatal ERROR, then it closes (R10.4, R11.4); an abort.
        return self._give_up

    # --- interning ---------------------------------------------------------------------------
    def intern(self, value: Any) -> int:
        ident = self._ids.get(value)
        if ident is None:
            ident = self._ids[value] = len(self._vals)
            self._vals.append(value)
        return ident

    def value(self, ident: int) -> Any:
        return self._vals[ident]

    # --- states ------------------------------------------------------------------------------
    def initial(self) -> tuple[int, ...]:
        client = Client(None, False, 0, 0, 0, 0, 0, 0, 0, 0, 0, None, False, None, (), False)
        bundle = (self.intern(client), self.intern(None), self.intern(()), self.intern(()))
        server = Server((), (), 1, 0)
        ghost = Ghost((), (), 0)
        return (*bundle * self.n, self.intern(server), self.intern(ghost))

    def canonical(self, state: tuple[int, ...]) -> tuple[int, ...]:
        """The representative of ``state`` under permutations of interchangeable clients."""
        out = list(state)
        for group in self.groups:
            if len(group) < 2:
                continue
            bundles = sorted(state[4 * i : 4 * i + 4] for i in group)
            for i, bundle in zip(group, bundles, strict=True):
                out[4 * i : 4 * i + 4] = bundle
        return tuple(out)

    def decode(
        self, state: tuple[int, ...]
    ) -> tuple[list[Any], list[Any], list[Any], list[Any], Server, Ghost]:
        vals = self._vals
        n = self.n
        return (
            [vals[state[4 * i]] for i in range(n)],
            [vals[state[4 * i + 1]] for i in range(n)],
            [vals[state[4 * i + 2]] for i in range(n)],
            [vals[state[4 * i + 3]] for i in range(n)],
            vals[state[4 * n]],
            vals[state[4 * n + 1]],
        )

    def message_of(self, item: Any, encoding: str) -> Message | None:
        """A channel item as a message (wire mode decodes the frame)."""
        if item is EOF or isinstance(item, Message):
            return item
        if isinstance(item, Malformed):
            return item.message
        return decode_frame(item, encoding)

    # --- engines -----------------------------------------------------------------------------
    def _restore(self, cls: type, snap: SessionSnapshot) -> Any:
        return cls.restore(snap, limits=self.limits)

    def branch_index(self, role: str, state: str, message: Message, after: str) -> int:
        """Which of the table's rows for sending ``message`` in ``state`` led to ``after``."""
        table = self.server_table if role == "server" else self.client_table
        for index, branch in enumerate(table.send[state].get(message.TYPE, ())):
            if (branch.dest or state) == after:
                return index
        return 0

    def _branch(self, role: str, rows: Any, session: Any, message: Message) -> int | None:
        for index, branch in enumerate(rows[session.state].get(message.TYPE, ())):
            if branch.admits(session, message):
                return index
        return None

    def engine_send(
        self, cls: type, snap: tuple[Any, ...], message: Message
    ) -> tuple[Any, tuple[Any, ...]]:
        """Run ``send`` on an engine restored from ``snap``: (channel item, new snapshot).

        Raises LocalProtocolError as the engine does (no row, a guard, the codec).
        """
        key = (cls, snap, message)
        hit = self._send_memo.get(key)
        if hit is None:
            session = self._restore(cls, snap)
            index = self._branch(cls.role, session._table.send, session, message)
            try:
                data = session.send(message)
            except LocalProtocolError as err:
                hit = err
            else:
                self.coverage.taken.add((cls.role, snap.state, f"send_{message.NAME}", index or 0))
                hit = (data if self.config.wire else message, session.snapshot())
            self._send_memo[key] = hit
        if isinstance(hit, Exception):
            raise hit
        return hit

    def engine_receive(
        self, cls: type, snap: tuple[Any, ...], item: Any
    ) -> tuple[Any, Message | None, tuple[Any, ...]]:
        """Feed one channel item to an engine restored from ``snap``: (event, message, new snapshot).

        The event is the message itself, a ProtocolViolation, None (discarded, R12.4)
        or ConnectionClosed (``item`` is EOF)."""
        key = (cls, snap, item)
        hit = self._recv_memo.get(key)
        if hit is None:
            session = self._restore(cls, snap)
            state = snap.state
            if item is EOF:
                session.feed(b"")
                event = session.next_event()
                message = None
                self.coverage.taken.add((cls.role, state, CLOSED_TRIGGER, 0))
            elif isinstance(
                item, Malformed
            ):  # the engine must reject it: its bytes, whatever the mode
                session.feed(item.frame)
                event = session.next_event()
                message = item.message
            else:
                message = self.message_of(item, snap.encoding)
                index = self._branch(cls.role, session._recv, session, message)
                if self.config.wire:
                    session.feed(item)
                    event = session.next_event()
                    if isinstance(event, Message):
                        message = event
                else:
                    event = session.receive_message(message)
                if event is message and index is not None:
                    self.coverage.taken.add((cls.role, state, f"recv_{message.NAME}", index))
            hit = (event, message, session.snapshot())
            self._recv_memo[key] = hit
        return hit

    def engine_close(self, cls: type, snap: tuple[Any, ...]) -> tuple[Any, ...]:
        """Our side ended the transport (``close``)."""
        session = self._restore(cls, snap)
        if snap.state != _CLOSED:
            self.coverage.taken.add((cls.role, snap.state, CLOSED_TRIGGER, 0))
        session.close()
        return session.snapshot()

    # --- successors --------------------------------------------------------------------------
    def successors(
        self, state: tuple[int, ...], *, reduce: bool = True
    ) -> list[tuple[Step, tuple[int, ...]]]:
        """The steps enabled in ``state`` and the states they lead to, in a fixed order.

        With ``reduce``, a local-first partial-order reduction: when some client is
        *private* -- no other session can observe it, because its connection is not
        online and no password check is pending -- and no restart can happen, the
        steps of that client and of the server's side of its connection commute with
        every other step (nothing else reads or writes its bundle, and they touch
        nothing else). Exploring only them is then an ample set: every state and
        every event of the full graph has a reordered counterpart, deadlocks are
        kept, and the graph has no cycles. Whether the steps really touched only
        the client's bundle is checked on each step; if one did not, the state is
        expanded in full.
        """
        decoded = self.decode(state)
        restart = decoded[4].restarts < self.config.restarts
        if reduce and not restart:
            conns = decoded[1]
            for i in range(self.n):
                k = conns[i]
                if k is not None and (k.online or k.pending is not None):
                    continue
                if self._shares_a_cap(decoded, i):
                    continue
                found = self._client_successors(state, decoded, i) + self._private_successors(
                    state, decoded, i
                )
                if found and all(self._local(state, nxt, i) for _, nxt in found):
                    return found
        found = []
        for i in range(self.n):
            found += self._client_successors(state, decoded, i)
            if decoded[1][i] is not None:
                found += [
                    step for step in self._server_steps(state, decoded, i) if step is not None
                ]
        if restart:
            found.append(self._step(state, decoded, "server", None, "restart", None, self.restart))
        return found

    def _may_send_msg(self, decoded: Any, i: int) -> bool:
        """The caps allow client ``i`` a MSG (its own, and the run's total)."""
        clients = decoded[0]
        if clients[i].msgs >= self.config.max_msgs:
            return False
        total = self.config.total_msgs
        return not total or sum(c.msgs for c in clients) < total

    def _shares_a_cap(self, decoded: Any, i: int) -> bool:
        """Client ``i`` could take a MSG from the run's total: its steps are then not
        independent of the other clients' (one MSG may disable another)."""
        c = decoded[0][i]
        return bool(
            self.config.total_msgs
            and c.engine is not None
            and MSG.TYPE in self.client_table.send[c.engine.state]
            and self._may_send_msg(decoded, i)
        )

    @staticmethod
    def _local(state: tuple[int, ...], nxt: tuple[int, ...], i: int) -> bool:
        lo, hi = 4 * i, 4 * i + 4
        return nxt[:lo] == state[:lo] and nxt[hi:] == state[hi:]

    def _client_successors(
        self, state: tuple[int, ...], decoded: Any, i: int
    ) -> list[tuple[Step, tuple[int, ...]]]:
        """Client ``i``'s steps. They read and write only its bundle, so they are computed
        once per bundle; the history of a DELIVER they consume is collected afterwards."""
        lo, hi = 4 * i, 4 * i + 4
        bundle = state[lo:hi]
        key = (i, bundle, self._may_send_msg(decoded, i))
        steps = self._client_memo.get(key)
        if steps is None:
            steps = []
            old = self._deliver_ids(bundle[3])
            for found in self._client_steps(state, decoded, i):
                if found is not None:
                    step, nxt = found
                    consumed = bool(old - self._deliver_ids(nxt[hi - 1]))
                    steps.append((step._replace(shared=True), nxt[lo:hi], consumed))
            self._client_memo[key] = steps
        head, tail = state[:lo], state[hi:]
        out = []
        for step, new, consumed in steps:
            nxt = head + new + tail
            out.append((step, self._collect_state(nxt) if consumed else nxt))
        return out

    def _private_successors(
        self, state: tuple[int, ...], decoded: Any, i: int
    ) -> list[tuple[Step, tuple[int, ...]]]:
        """The server's steps on a private connection: computed once per (bundle, server)
        when they touch only the bundle (checked), else every time."""
        lo, hi = 4 * i, 4 * i + 4
        key = (i, state[lo:hi], state[4 * self.n])
        steps = self._private_memo.get(key)
        if steps is None:
            found = [step for step in self._server_steps(state, decoded, i) if step is not None]
            if not all(self._local(state, nxt, i) for _, nxt in found):
                return found
            steps = self._private_memo[key] = [
                (step._replace(shared=True), nxt[lo:hi]) for step, nxt in found
            ]
        head, tail = state[:lo], state[hi:]
        return [(step, head + new + tail) for step, new in steps]

    def _deliver_ids(self, channel: int) -> frozenset[int]:
        """The server message ids of the DELIVERs in a channel (by component id)."""
        ids = self._channel_ids.get(channel)
        if ids is None:
            found = set()
            for item in self._vals[channel]:
                if isinstance(item, Message):
                    if item.TYPE == DELIVER.TYPE:
                        found.add(item.server_msg_id)
                elif isinstance(item, bytes) and item[_TYPE_AT] == DELIVER.TYPE:
                    found.add(int.from_bytes(item[_HEADER_SIZE : _HEADER_SIZE + 8], "big"))
            ids = self._channel_ids[channel] = frozenset(found)
        return ids

    def _collect_state(self, state: tuple[int, ...]) -> tuple[int, ...]:
        """``state`` with the history of messages no longer live forgotten (see :class:`Ghost`)."""
        n4 = 4 * self.n
        g = self._vals[state[n4 + 1]]
        if not g.log and not g.written:
            return state
        live = {item.server_msg_id for item in self._vals[state[n4]].store}
        for i in range(self.n):
            live |= self._deliver_ids(state[4 * i + 3])
        log = tuple(entry for entry in g.log if entry.server_msg_id in live)
        written = tuple(entry for entry in g.written if entry[0] in live)
        if len(log) == len(g.log) and len(written) == len(g.written):
            return state
        return (*state[: n4 + 1], self.intern(g._replace(log=log, written=written)))

    def _client_steps(
        self, state: tuple[int, ...], decoded: Any, i: int
    ) -> Iterator[tuple[Step, tuple[int, ...]] | None]:
        """The steps of client ``i``: connect, send (each value the table and domain allow), drop, receive."""
        cfg = self.config
        clients, conns, c2s, s2c, server, _ = decoded
        c = clients[i]
        k = conns[i]
        engine = c.engine
        if c.arrived:  # the application takes the next message, connected or not
            yield self._step(state, decoded, "client", i, "take", None, self.application_take)
        if c.crashes < cfg.crashes and self.may_crash(c):
            yield self._step(state, decoded, "client", i, "crash", None, self.client_crash)
        if not c.open:
            if k is None and c.sessions < cfg.sessions + c.crashes:  # a crash is followed by a fresh login
                yield self._step(state, decoded, "client", i, "connect", None, self.connect)
            return
        cstate = engine.state
        if cstate != _CLOSED:
            if k is None or len(c2s[i]) < cfg.capacity:
                for code in self.client_table.send[cstate]:
                    if code == ERROR.TYPE and c.aborts >= cfg.aborts:
                        continue
                    if code == MSG.TYPE and not self._may_send_msg(decoded, i):
                        continue
                    values = self.values[code](c, i)
                    for message in values:
                        try:
                            self.engine_send(ClientSession, engine, message)
                        except LocalProtocolError:
                            continue
                        yield self._step(
                            state, decoded, "client", i, "send", message, self.client_send
                        )
                    if (
                        values
                        and c.malformed < cfg.malformed
                        and MESSAGES_BY_CODE[code].name in cfg.domain.malformed
                    ):
                        try:
                            self.engine_send(ClientSession, engine, values[0])
                        except LocalProtocolError:
                            continue
                        yield self._step(
                            state,
                            decoded,
                            "client",
                            i,
                            "send-malformed",
                            values[0],
                            self.client_send_malformed,
                        )
            if c.aborts < cfg.aborts:
                yield self._step(state, decoded, "client", i, "drop", None, self.client_drop)
        if s2c[i]:
            yield self._step(state, decoded, "client", i, "receive", None, self.client_receive)

    def _server_steps(
        self, state: tuple[int, ...], decoded: Any, i: int
    ) -> Iterator[tuple[Step, tuple[int, ...]] | None]:
        """The server's steps on client ``i``'s connection: serve, auth, lost, ping, timeout."""
        cfg = self.config
        clients, conns, c2s, _, _, _ = decoded
        k = conns[i]
        if k is None:
            return
        c = clients[i]
        if k.pending is not None:
            yield self._step(state, decoded, "server", i, "auth", None, self.authenticate)
            if EOF in c2s[i]:  # the transport is lost while the check runs (connection_lost)
                yield self._step(state, decoded, "server", i, "lost", None, self.connection_lost)
            return
        if c2s[i]:
            yield self._step(state, decoded, "server", i, "serve", None, self.serve)
        if c.pinged < cfg.server_pings and not k.pinged and k.engine.state in self.pushable:
            yield self._step(state, decoded, "server", i, "ping", None, self.server_ping)
        if c.timeouts < cfg.timeouts:
            yield self._step(state, decoded, "server", i, "timeout", None, self.idle_timeout)

    def _step(
        self,
        state: tuple[int, ...],
        decoded: Any,
        actor: str,
        i: int | None,
        action: str,
        message: Message | None,
        run: Callable[..., None],
    ) -> tuple[Step, tuple[int, ...]] | None:
        w = _World(self, state, decoded)
        w.message = message
        if actor == "server" and action in _MEMOIZED:
            self._server_step(w, state, i, action, run)
        else:
            try:
                if i is None:
                    run(w)
                else:
                    run(w, i)
            except _Blocked:
                return None
        if actor == "server":
            self.slow_consumers(w)
            if w.has_core:
                self.read_back(w)
            if w.g.log or w.g.written:
                self.collect(w)
            store = decoded[4].store
            if w.srv.store != store:
                w.events.append(
                    EvStoreChanged(
                        tuple(item for item in store if item not in w.srv.store),
                        tuple(item for item in w.srv.store if item not in store),
                    )
                )
        return Step(actor, i, action, w.message, tuple(w.events), tuple(w.writes)), w.freeze()

    def _server_step(self, w: _World, state: tuple[int, ...], i: int, action: str, run: Callable[..., None]) -> None:
        """A server step on connection ``i``, run once per input: the core's effects depend only
        on the server's components (every connection, the store, who is online) and the input,
        so they are recorded and replayed on the states that share those."""
        n = self.n
        key = (action, i, state[4 * i + 2], state[4 * n], *state[1 : 4 * n : 4])
        hit = self._server_memo.get(key)
        if hit is None:
            w.effects.recording = ops = []
            run(w, i)
            if w.has_core:
                self.read_back(w)
            w.effects.recording = None
            self._server_memo[key] = (tuple(ops), tuple(w.cn), w.q[i], w.srv, w.message)
            return
        ops, cn, q, srv, w.message = hit
        w.q[i] = q
        apply = w.effects.apply
        for op in ops:
            apply(op)
        w.cn = list(cn)
        w.srv = srv

    def collect(self, w: _World) -> None:
        """Forget the history of messages that are no longer live (see :class:`Ghost`)."""
        g = w.g
        if not g.log and not g.written:
            return
        live = {item.server_msg_id for item in w.srv.store}
        for channel in w.r:
            for item in channel:
                if item is EOF:
                    continue
                if isinstance(item, Message):
                    if item.TYPE == DELIVER.TYPE:
                        live.add(item.server_msg_id)
                elif item[_TYPE_AT] == DELIVER.TYPE:  # the id is DELIVER's first field
                    live.add(int.from_bytes(item[_HEADER_SIZE : _HEADER_SIZE + 8], "big"))
        log = tuple(entry for entry in g.log if entry.server_msg_id in live)
        written = tuple(entry for entry in g.written if entry[0] in live)
        if len(log) != len(g.log) or len(written) != len(g.written):
            w.g = g._replace(log=log, written=written)

    # --- client steps --------------------------------------------------------------------------
    def connect(self, w: _World, i: int) -> None:
        c = w.cl[i]
        session = ClientSession(limits=self.limits)
        w.cl[i] = c._replace(
            engine=session.snapshot(),
            open=True,
            sessions=c.sessions + 1,
            account=None,
            quit=False,
            ended=None,
            view=(),
            collecting=False,
        )
        w.cn[i] = self.new_conn
        w.q[i] = ()
        w.r[i] = ()

    def client_send(self, w: _World, i: int) -> None:
        c = w.cl[i]
        message = w.message
        item, snap = self.engine_send(ClientSession, c.engine, message)
        changes = self._counted(c, i, message)
        changes["engine"] = snap
        w.cl[i] = c._replace(**changes)
        if w.cn[i] is not None:
            w.q[i] = (*w.q[i], item)
        if snap.state == _CLOSED:
            self.client_close(w, i, ENDED_BY_DROP)

    def _counted(self, c: Client, i: int, message: Message) -> dict[str, Any]:
        """What sending ``message`` changes in the client's budgets and choices."""
        name = message.NAME
        changes: dict[str, Any] = {}
        if name == "MSG":
            changes["msgs"] = c.msgs + 1
        elif name == "LIST":
            changes["lists"] = c.lists + 1
        elif name == "PING":
            changes["pings"] = c.pings + 1
        elif name == "USER":
            key = name_key(message.name)
            accounts = self.config.clients[i].accounts
            changes["account"] = next(  # None: an unknown name (R6.2)
                (a for a in accounts if name_key(self.config.domain.accounts[a][0]) == key), None
            )
        elif name == "PASS":
            if c.account is None or message.password != self.config.domain.accounts[c.account][1]:
                changes["wrongs"] = c.wrongs + 1
        elif name == "QUIT":
            changes["quit"] = True
        elif name == "ERROR":
            changes["aborts"] = c.aborts + 1
        return changes

    def client_send_malformed(self, w: _World, i: int) -> None:
        """The client sends ``w.message`` broken: its engine moves as for the message, the
        server gets a frame with a payload error (the client breaks R4.10 on purpose)."""
        c = w.cl[i]
        message = w.message
        _, snap = self.engine_send(ClientSession, c.engine, message)
        w.cl[i] = c._replace(engine=snap, malformed=c.malformed + 1, **self._counted(c, i, message))
        if w.cn[i] is not None:
            w.q[i] = (*w.q[i], Malformed(corrupt(encode(message, c.engine.encoding, c.engine.version or 1)), message))

    def client_close(self, w: _World, i: int, how: str) -> None:
        """The client closes its end: what it has not read is lost; the server reads EOF next."""
        c = w.cl[i]
        snap = c.engine if c.engine.state == _CLOSED else self.engine_close(ClientSession, c.engine)
        w.cl[i] = c._replace(engine=snap, open=False, ended=how or c.ended or ENDED_BY_CLOSE)
        w.r[i] = ()
        if w.cn[i] is not None:
            w.q[i] = (*w.q[i], EOF)

    def client_drop(self, w: _World, i: int) -> None:
        w.cl[i] = w.cl[i]._replace(aborts=w.cl[i].aborts + 1)
        self.client_close(w, i, ENDED_BY_DROP)

    def may_crash(self, c: Client) -> bool:
        """A crash can lose something: a connection, or messages the application has not taken.
        (A test narrows it, e.g. to crashes between a DELIVER's arrival and its taking.)"""
        return c.open or bool(c.arrived)

    def client_crash(self, w: _World, i: int) -> None:
        """The client's process dies: its connection ends as a drop does, and its engine and
        what arrived but was not taken die with it. The application's log and the highest id
        it took survive (R7.11); the next connection is a fresh login."""
        c = w.cl[i]
        w.events.extend(EvApplication(i, sid, "lost") for sid in c.arrived)
        w.cl[i] = c._replace(crashes=c.crashes + 1, arrived=())
        if c.open:
            self.client_close(w, i, ENDED_BY_CRASH)

    def application_take(self, w: _World, i: int) -> None:
        """The application takes the oldest message that arrived: into its log."""
        c = w.cl[i]
        sid = c.arrived[0]
        w.cl[i] = c._replace(arrived=c.arrived[1:], app=(*c.app, sid), taken=max(c.taken, sid))
        w.events.append(EvApplication(i, sid, "took"))

    def client_receive(self, w: _World, i: int) -> None:
        c = w.cl[i]
        item, rest = w.r[i][0], w.r[i][1:]
        w.r[i] = rest
        before = c.engine
        event, message, snap = self.engine_receive(ClientSession, before, item)
        w.message = message
        c = c._replace(engine=snap)
        if item is EOF:  # the server closed the connection (ConnectionClosed)
            w.cl[i] = c
            self.client_close(w, i, ENDED_BY_CLOSE)
            return
        account = name_key(before.user) if before.user is not None else None
        accepted = event is message
        w.events.append(
            EvClientReceived(
                i,
                message,
                before.state,
                before.user,
                accepted,
                account,
                self.config.clients[i].encoding,
                # the oldest MSG outstanding: answers come in order (R7.16; one at a time in version 1)
                c.msgs - before.outstanding + 1 if before.state == "AWAIT_ACK" else None,
                c.view,
            )
        )
        if not accepted:
            w.cl[i] = c._replace(ended=ENDED_BY_REJECT)
            if isinstance(event, ProtocolViolation) and event.fatal:
                try:  # R11.3: the client MAY tell the server what it broke, then closes
                    item, snap = self.engine_send(ClientSession, snap, event.reply)
                except LocalProtocolError:
                    pass
                else:
                    w.cl[i] = w.cl[i]._replace(engine=snap)
                    if w.cn[i] is not None:
                        w.q[i] = (*w.q[i], item)
            self.client_close(w, i, ENDED_BY_REJECT)
            return
        name = message.NAME
        if name == "PING":
            if self.client_table.send[snap.state].get(PONG.TYPE) is not None:
                if w.cn[i] is not None and len(w.q[i]) >= self.config.capacity:
                    raise _Blocked
                item, snap = self.engine_send(ClientSession, snap, PONG(nonce=message.nonce))
                c = c._replace(engine=snap)
                if w.cn[i] is not None:
                    w.q[i] = (*w.q[i], item)
        elif name == "AUTH_OK":
            c = c._replace(
                view=tuple(sorted(message.online)), collecting=bool(message.flags & ListFlags.MORE)
            )
        elif name == "USERS" and c.collecting:
            c = c._replace(
                view=tuple(sorted((*c.view, *message.online))),
                collecting=bool(message.flags & ListFlags.MORE),
            )
        elif name == "JOINED":
            c = c._replace(view=tuple(sorted((*c.view, message.name))))
        elif name == "LEFT":
            view = list(c.view)
            if message.name in view:
                view.remove(message.name)
            c = c._replace(view=tuple(view))
        elif name == "DELIVER" and self.config.applications:
            sid = message.server_msg_id
            # taken before, or already waiting to be taken (a copy from before a dropped
            # connection, which the client survived): dropped, acknowledged all the same once
            # the application has taken the first copy (R7.11)
            if sid <= max((c.taken, *c.arrived)):
                w.events.append(EvApplication(i, sid, "dropped"))
            else:
                c = c._replace(arrived=(*c.arrived, sid))
        elif name == "BYE":
            c = c._replace(ended=ENDED_BY_BYE)
        elif name == "ERROR" and message.flags & ErrorFlags.FATAL:
            c = c._replace(ended=ENDED_BY_ERROR)
        w.cl[i] = c
        if snap.state == _CLOSED:
            self.client_close(w, i, None)

    # --- server steps: the server core, fed one input each ----------------------------------------
    def serve(self, w: _World, i: int) -> None:
        """The shell's data_received: take the next frame and hand the core its event."""
        k = w.cn[i]
        item, w.q[i] = w.q[i][0], w.q[i][1:]
        event, message, snap = self.engine_receive(ServerSession, k.engine, item)
        w.message = message
        w.cn[i] = k._replace(core=k.core._replace(session=snap, pinged=False))
        accepted = event is message or event is None
        rule = event.rule if isinstance(event, ProtocolViolation) else None
        # an op, so that a replayed step (Model._server_step) reports it too
        w.effects.apply(("event", i, EvServerReceived(
                i,
                message,
                k.engine.state,
                accepted or isinstance(event, ConnectionClosed),
                rule,
                isinstance(item, Malformed),
            )))
        if event is not None:
            w.core.handle(w.conn(i), event, 0.0)

    def authenticate(self, w: _World, i: int) -> None:
        """The password check the core asked for has finished (and any back-off with it)."""
        name, password = w.cn[i].pending
        w.cn[i] = w.cn[i]._replace(pending=None)
        w.effects.credentials[i] = (name, password)
        conn = w.conn(i)
        w.core.password_checked(conn, w.core.storage.verify(name, password), 0.0)
        if i in w.effects.backoffs:  # time is not modelled: the back-off elapses at once
            w.effects.backoffs.discard(i)
            w.core.backoff_elapsed(conn, 0.0)

    def connection_lost(self, w: _World, i: int) -> None:
        """The transport is lost while the connection waits for its password check."""
        w.message = None
        state = w.cn[i].engine.state
        w.events.append(EvServerReceived(i, None, state, True, None))
        self.coverage.taken.add(("server", state, CLOSED_TRIGGER, 0))
        w.core.connection_lost(w.conn(i), 0.0)
        w.cn[i] = None
        w.q[i] = ()
        if w.cl[i].open:
            w.r[i] = (*w.r[i], EOF)

    def close_transport(self, w: _World, i: int) -> None:
        """The server closes its end: the client reads what was written, then EOF."""
        w.cn[i] = None
        w.q[i] = ()
        if w.cl[i].open:
            w.r[i] = (*w.r[i], EOF)
        w.writes.append((i, None, w.cl[i].open))

    # --- server steps: time and resources ------------------------------------------------------
    def server_ping(self, w: _World, i: int) -> None:
        w.cl[i] = w.cl[i]._replace(pinged=w.cl[i].pinged + 1)
        w.core.keepalive(w.conn(i), self.config.domain.server_nonce / 1000)

    def idle_timeout(self, w: _World, i: int) -> None:
        w.cl[i] = w.cl[i]._replace(timeouts=w.cl[i].timeouts + 1)
        w.core.timed_out(w.conn(i))

    def slow_consumers(self, w: _World) -> None:
        """The core's slow_consumer for every channel over capacity (R9.3)."""
        capacity = self.config.capacity
        again = True
        while again:
            again = False
            for j in range(self.n):
                if w.cn[j] is not None and len(w.r[j]) > capacity:
                    w.core.slow_consumer(w.conn(j))
                    again = True

    def restart(self, w: _World) -> None:
        """The core's shutdown, then a new core on the same store (R10.3, R7.3, R7.7)."""
        w.core.shutdown()
        self.read_back(w)
        w.drop_core()  # the next core starts empty but for the store
        w.srv = w.srv._replace(restarts=w.srv.restarts + 1)
        self.restarted(w)

    def restarted(self, w: _World) -> None:
        """What the new server starts with: nobody online; the store and the id counter as they were."""
        w.srv = w.srv._replace(online=())
        w.cn = [None if k is None else k._replace(online=False) for k in w.cn]

    def promised(self, fields: dict[str, Any]) -> tuple[tuple[int, str], ...]:
        """(server_msg_id, key) for each recipient the MSG_ACK promises the message to: a named
        one reported DELIVERED, LOSSY or QUEUED (R7.4), or, for a broadcast, each session it
        counted as delivered."""
        sid = fields["server_msg_id"]
        if not fields["recipients"]:
            keys = fields["live"]
        else:
            kept = {int(Outcome.DELIVERED), int(Outcome.LOSSY), int(Outcome.QUEUED)}
            keys = tuple(name_key(name) for name, outcome in fields["results"] if outcome in kept)
        return tuple(sorted({(sid, key) for key in keys}))

    # --- the core, rebuilt from a state -----------------------------------------------------------
    def build_core(self, w: _World) -> ServerCore:
        """A core holding exactly what the state's server components say."""
        srv = w.srv
        storage = self.accounts_store.copy().restore(
            (
                tuple(
                    (item.key, StoredMessage((item.key, item.server_msg_id), item.server_msg_id, 0, item.sender, item.flags, item.text))
                    for item in srv.store
                ),
                srv.next_id,
            )
        )
        core = self.core_class(storage, w.effects, self.core_config)
        conns = w.effects.conns
        for j, k in enumerate(w.cn):
            if k is not None:
                conn = conns[j] = core.adopt(j, k.core, address=_ADDRESS)
                w.effects.states[j] = k.engine.state
                if k.inbox:  # what ConnectionSnapshot does not carry of version 2's inbox delivery
                    conn.cursor, conn.caught_up, conn.login_mark, queued = k.inbox
                    conn.queued = deque(queued)
                    conn.window_bytes = conn.session.deliver_window * self.limits.max_frame
        for key in srv.online:
            for j, k in enumerate(w.cn):
                if k is not None and k.online and k.key == key:
                    core.presence.add(key, conns[j])
                    break
        return core

    def read_back(self, w: _World) -> None:
        """The core's state after a step, into the state's components."""
        core = w.core
        presence = core.presence
        for j, conn in w.effects.conns.items():
            k = w.cn[j]
            if k is None or conn.closed:
                continue
            snap = conn.snapshot()
            online = conn.key is not None and presence.get(conn.key) is conn
            inbox = (
                (conn.cursor, conn.caught_up, conn.login_mark, tuple(conn.queued))
                if (conn.session.version or 1) >= 2 and conn.key is not None
                else ()
            )
            if snap != k.core or online != k.online or inbox != k.inbox:
                w.cn[j] = k._replace(core=snap, online=online, inbox=inbox)
        store, next_id = core.storage.snapshot()  # type: ignore[attr-defined]
        stored = tuple(Stored(key, m.server_msg_id, m.sender, m.flags, m.text) for key, m in store)
        online_keys = presence.keys()
        if stored != w.srv.store or next_id != w.srv.next_id or online_keys != w.srv.online:
            w.srv = w.srv._replace(online=online_keys, store=stored, next_id=next_id)


_ADDRESS = "127.0.0.1"  # every model client connects from one address
_MEMOIZED = frozenset({"serve", "auth"})  # server steps whose core effects are replayed (Model._server_step)


class _WorldEffects:
    """The core's effects in the model's world: channel writes, closes, and facts for the properties.

    Each effect becomes an *op* (a tuple naming slots, not core objects) applied to the world;
    while ``recording`` is a list, ops are also kept there, to replay the step elsewhere."""

    __slots__ = ("w", "m", "conns", "states", "credentials", "backoffs", "recording")

    def __init__(self, w: _World, model: Model) -> None:
        self.w = w
        self.m = model
        self.conns: dict[int, CoreConnection] = {}  # slot -> the core's connection
        self.states: dict[int, str] = {}  # slot -> its engine's state before the next send
        self.credentials: dict[int, tuple[str, str]] = {}  # slot -> the login being checked
        self.backoffs: set[int] = set()
        self.recording: list[tuple[Any, ...]] | None = None

    # --- Effects ------------------------------------------------------------------------------
    def send(self, conn: CoreConnection, message: Message, frame: bytes) -> None:
        i = conn.handle
        before = self.states[i]
        after = self.states[i] = conn.session.state
        self.apply(("send", i, message, frame, before, after, conn.key))

    def close(self, conn: CoreConnection, abort: bool) -> None:
        i = conn.handle
        state = self.states[i]
        self.states[i] = _CLOSED
        self.apply(("close", i, abort, state))

    def check_password(self, conn: CoreConnection, name: str, password: str) -> None:
        self.apply(("check", conn.handle, name, password))

    def start_backoff(self, conn: CoreConnection, delay_ms: int) -> None:
        self.backoffs.add(conn.handle)

    def log(self, level: int, event: str, text: str, fields: dict[str, Any]) -> None:
        if event == "routed":
            self.apply(("routed", self._slot(fields["conn"]), fields))
        elif event == "login":
            i = self._slot(fields["conn"])
            name, password = self.credentials.get(i, (fields.get("login_name"), ""))
            self.apply(("login", i, fields["user"], name, password))
        elif event == "internal_error":
            self.apply(("internal", self._slot(fields["conn"]), str(fields.get("exc"))))

    def _slot(self, conn_id: int) -> int:
        return next(j for j, conn in self.conns.items() if conn.id == conn_id)

    # --- ops on the world -------------------------------------------------------------------------
    def apply(self, op: tuple[Any, ...]) -> None:
        if self.recording is not None:
            self.recording.append(op)
        w = self.w
        m = self.m
        kind, i = op[0], op[1]
        if kind == "send":
            _, _, message, frame, before, after, key = op
            m.coverage.taken.add(("server", before, f"send_{message.NAME}", m.branch_index("server", before, message, after)))
            if message.NAME == "PING" and w.message is None:
                w.message = message
            w.write(i, frame if m.config.wire else message, message, before, m.server_table.states[before].authenticated, key)
        elif kind == "close":
            if op[3] != _CLOSED:
                m.coverage.taken.add(("server", op[3], CLOSED_TRIGGER, 0))
            m.close_transport(w, i)
            if op[2] and w.cl[i].open:  # transport.abort(): the unsent output is dropped
                w.events.append(EvAborted(i, len(w.r[i]) - 1))
                w.r[i] = (EOF,)
        elif kind == "check":
            if w.cn[i] is not None:
                w.cn[i] = w.cn[i]._replace(pending=(op[2], op[3]))
        elif kind == "routed":
            fields = op[2]
            w.events.append(
                EvRouted(
                    i,
                    fields["sender"],
                    fields["recipients"],
                    fields["online"],
                    fields["live"],
                    fields["stored"],
                    fields["server_msg_id"],
                    w.g.last_id,
                    fields["results"],
                )
            )
            logged = Logged(
                fields["server_msg_id"],
                fields["sender"],
                fields["sender_name"],
                fields["recipients"],
                fields["msg_text"],
                fields["results"],
                fields["delivered"],
                fields["lossy"],
            )
            w.g = w.g._replace(last_id=max(w.g.last_id, logged.server_msg_id), log=(*w.g.log, logged))
            if m.config.applications:
                w.g = w.g._replace(promised=(*w.g.promised, *m.promised(fields)))
        elif kind == "login":
            w.events.append(EvLogin(i, op[2], op[3], op[4]))
        elif kind == "internal":
            w.events.append(EvInternalError(i, op[2]))
        elif kind == "event":
            w.events.append(op[2])


class _Blocked(Exception):
    """A step that cannot be taken after all (a write to a full channel)."""


class _World:
    """A step's working copy of one state: lists of components, replaced, never mutated."""

    __slots__ = (
        "m",
        "state",
        "cl",
        "cn",
        "q",
        "r",
        "srv",
        "g",
        "events",
        "writes",
        "message",
        "_orig",
        "_core",
        "effects",
    )

    def __init__(self, model: Model, state: tuple[int, ...], decoded: Any) -> None:
        self.m = model
        self.state = state
        clients, conns, c2s, s2c, server, ghost = decoded
        self.cl = list(clients)
        self.cn = list(conns)
        self.q = list(c2s)
        self.r = list(s2c)
        self.srv = server
        self.g = ghost
        self.events: list[Any] = []
        self.writes: list[tuple[int, Message | None, bool]] = []
        self.message: Message | None = None
        self._orig = decoded
        self._core: ServerCore | None = None
        self.effects = _WorldEffects(self, model)

    @property
    def core(self) -> ServerCore:
        """The server core as this state has it, built on first use."""
        if self._core is None:
            self._core = self.m.build_core(self)
        return self._core

    @property
    def has_core(self) -> bool:
        return self._core is not None

    def drop_core(self) -> None:
        self._core = None
        self.effects = _WorldEffects(self, self.m)

    def conn(self, i: int) -> CoreConnection:
        """The core's connection for client ``i``."""
        return self.core.connections[self.effects.conns[i].id]

    def write(
        self, i: int, item: Any, message: Message, state: str, authenticated: bool, key: str | None
    ) -> None:
        self.events.append(EvWritten(i, message, state, authenticated, key))
        self.writes.append((i, message, self.cl[i].open))
        if message.NAME == "DELIVER":
            entry = (message.server_msg_id, key or "")
            self.g = self.g._replace(written=tuple(sorted((*self.g.written, entry))))
        if self.cl[i].open:
            self.r[i] = (*self.r[i], item)

    def freeze(self) -> tuple[int, ...]:
        m = self.m
        state = self.state
        clients, conns, c2s, s2c, server, ghost = self._orig
        out = list(state)
        intern = m.intern
        for i in range(m.n):
            if self.cl[i] is not clients[i]:
                out[4 * i] = intern(self.cl[i])
            if self.cn[i] is not conns[i]:
                out[4 * i + 1] = intern(self.cn[i])
            if self.q[i] is not c2s[i]:
                out[4 * i + 2] = intern(self.q[i])
            if self.r[i] is not s2c[i]:
                out[4 * i + 3] = intern(self.r[i])
        n4 = 4 * m.n
        if self.srv is not server:
            out[n4] = intern(self.srv)
        if self.g is not ghost:
            out[n4 + 1] = intern(self.g)
        return tuple(out)


class View:
    """A state as the properties read it (decoded lazily), plus the step that led to it."""

    __slots__ = ("model", "state", "step", "enabled", "_before", "_decoded")

    def __init__(
        self,
        model: Model,
        state: tuple[int, ...],
        step: Step | None = None,
        enabled: int = -1,
        before: tuple[int, ...] | None = None,
    ) -> None:
        self.model = model
        self.state = state
        self.step = step  # for event properties: the step being judged
        self.enabled = enabled  # for state properties: how many steps are enabled (-1: unknown)
        self._before = before
        self._decoded: Any = None

    @property
    def before(self) -> View:
        """For event properties: the state the step started from (history is looked up there:
        a step may consume the last copy of a message, and its history goes with it)."""
        if self._before is None:
            raise ValueError("no state before: this view is not of a step")
        return View(self.model, self._before)

    def _d(self) -> Any:
        if self._decoded is None:
            self._decoded = self.model.decode(self.state)
        return self._decoded

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def accounts(self) -> dict[str, tuple[str, str]]:
        """Registered accounts: key -> (name, password)."""
        return self.model.accounts

    @property
    def clients(self) -> list[Client]:
        return self._d()[0]

    @property
    def conns(self) -> list[Conn | None]:
        return self._d()[1]

    @property
    def c2s(self) -> list[tuple[Any, ...]]:
        return self._d()[2]

    @property
    def s2c(self) -> list[tuple[Any, ...]]:
        return self._d()[3]

    @property
    def server(self) -> Server:
        return self._d()[4]

    @property
    def ghost(self) -> Ghost:
        return self._d()[5]

    @property
    def online(self) -> tuple[str, ...]:
        """Account keys online at the server, in login order."""
        return self.server.online

    def online_names(self) -> list[str]:
        """The names the server reports online (its sessions' users), in login order."""
        conns = [k for k in self.conns if k is not None and k.online]
        return [next(k.engine.user or k.key for k in conns if k.key == key) for key in self.online]

    @property
    def quiet(self) -> bool:
        """Nothing in flight and no server work pending: a state the system may rest in."""
        d = self._d()
        return (
            not any(d[2])
            and not any(d[3])
            and not any(k is not None and k.pending is not None for k in d[1])
        )

    @property
    def final(self) -> bool:
        """Every client is disconnected and the server holds no connection."""
        d = self._d()
        return not any(c.open for c in d[0]) and all(k is None for k in d[1])

    def waiting(self, client: Client) -> bool:
        """The client's state is one where it waits for the server (its table lets it send
        nothing but an answer or a last ERROR)."""
        return client.engine is not None and client.engine.state in self.model.waiting

    def server_authenticated(self, conn: Conn) -> bool:
        return self.model.server_table.states[conn.engine.state].authenticated

    def logged(self, server_msg_id: int) -> Logged | None:
        for entry in self.ghost.log:
            if entry.server_msg_id == server_msg_id:
                return entry
        return None


class _NoEffects:
    """For a core that only opens a connection (the model's template of a new one)."""

    def send(self, *args: Any) -> None: ...
    def close(self, *args: Any) -> None: ...
    def check_password(self, *args: Any) -> None: ...
    def start_backoff(self, *args: Any) -> None: ...
    def log(self, *args: Any) -> None: ...
