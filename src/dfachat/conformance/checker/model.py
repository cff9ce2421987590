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

No protocol rule is restated here. What a client may send in a state is
``ClientSession._table.send[state]`` (the engine's table, generated from the
spec) filtered by the engine itself (``send`` raises when a guard or the codec
refuses); what either side may receive, the engines decide; the values come
from :class:`Domain`, the one place they are given. What *is* restated is the
server's behaviour around its engine: the handlers mirror
:class:`dfachat.server.app.ChatServer` handler by handler, and use the same
routing functions (:func:`~dfachat.server.routing.route`,
:func:`~dfachat.server.routing.reencode`) and the same push rule (the states
where DELIVER, JOINED and LEFT are unguarded internal sends, read from the table).
The environment's budgets (drops, timeouts, keep-alives) are per client, so that
one client's steps never disable another's (see :meth:`Model.successors`).

Steps (each one atomic; every interleaving of them is explored):

* client ``i``: connect; send one message its table and the domain allow; take
  the next frame of its ``s2c`` channel (answering PING with PONG, and closing
  after BYE, a fatal ERROR or a frame its engine rejects, which it answers with
  the engine's fatal ERROR); drop the connection (budget ``aborts``).
* server, per connection: take the next frame of ``c2s`` and run its handler;
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

import contextlib
import itertools
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from dfachat.codec import decode_frame, encode
from dfachat.codec.frames import FrameDecoder
from dfachat.codec.messages import (  # type: ignore[attr-defined]
    AUTH_FAILED,
    AUTH_OK,
    BYE,
    DELIVER,
    ERROR,
    HELLO,
    HELLO_OK,
    JOINED,
    LEFT,
    LIST,
    MSG,
    MSG_ACK,
    PASS,
    PING,
    PONG,
    QUIT,
    USER,
    USERS,
    Message,
    RecipientResult,
)
from dfachat.errors import DfachatError, LocalProtocolError, SpecError
from dfachat.fsm import (
    ClientSession,
    ConnectionClosed,
    ProtocolViolation,
    ServerSession,
    make_error,
)
from dfachat.server.routing import reencode, route
from dfachat.spec import (
    CLOSED_TRIGGER,
    ENCODINGS,
    FRAME_OVERHEAD,
    HEADER,
    LIMITS,
    MESSAGES,
    MESSAGES_BY_CODE,
    SUPPORTED_VERSIONS,
    ByeReason,
    DeliverFlags,
    ErrorCode,
    ErrorFlags,
    LeftReason,
    ListFlags,
    Outcome,
)

__all__ = [
    "DOMAIN",
    "EOF",
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
    domain: Domain = DOMAIN

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
                )
            },
            "page_size": self.pages,
            "accounts": [list(a) for a in self.registered],
            "wrong_password": self.domain.wrong_password,
            "texts": list(self.domain.texts),
            "unknown_users": list(self.domain.unknown_users),
        }


# --- components ----------------------------------------------------------------------------


class Client(NamedTuple):
    """One model client: its engine's fields and what it did (budgets, the history it saw)."""

    engine: tuple[Any, ...] | None  # ClientSession snapshot; None before the first connection
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


class Conn(NamedTuple):
    """The server's side of one connection: the engine's fields and what the server keeps."""

    engine: tuple[Any, ...]  # ServerSession snapshot
    key: str | None  # account key once logged in
    online: bool  # this connection is the account's online session
    login_name: str | None  # the name USER asked for (R6.2)
    pending: str | None  # the password being checked: the connection is busy
    pinged: bool


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
ENDED_BY_BYE, ENDED_BY_ERROR, ENDED_BY_CLOSE, ENDED_BY_DROP, ENDED_BY_REJECT = (
    "bye",
    "error",
    "closed",
    "dropped",
    "rejected",
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


# --- the model -----------------------------------------------------------------------------


def _snapshot(session: Any) -> tuple[Any, ...]:
    return (
        session._state,
        session._encoding,
        session._stopped,
        session.version,
        session.user,
        session.failed_logins,
        session.offered_versions,
    )


@dataclass(slots=True)
class Coverage:
    """Which rows of each role's table the exploration took: (role, state, trigger, branch index)."""

    taken: set[tuple[str, str, str, int]] = field(default_factory=set)


class Model:
    """The transition relation. Subclass and override a handler to build a broken variant."""

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.n = len(config.clients)
        domain = config.domain
        self.limits = LIMITS.__class__(
            **{
                **LIMITS.as_dict(),
                "login_attempts": config.login_attempts,
                "max_names_per_frame": config.pages,
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
        self.server_table = ServerSession._table
        self.client_table = ClientSession._table
        # The push rule of the server (app._PUSHABLE), read from the table the same way.
        t = self.server_table
        self.pushable = (
            t.internal_sends(DELIVER.TYPE)
            & t.internal_sends(JOINED.TYPE)
            & t.internal_sends(LEFT.TYPE)
        )
        self.waiting = frozenset(  # client states that send nothing but answers or a last ERROR
            state
            for state, row in self.client_table.send.items()
            if row and set(row) <= {PONG.TYPE, ERROR.TYPE}
        )
        self.handlers = self._dispatch_table()
        self.values = self._domain_table()
        self._give_up = [make_error(ErrorCode.INTERNAL_ERROR, "the client gives up", fatal=True)]
        self.coverage = Coverage()
        self._ids: dict[Any, int] = {}
        self._vals: list[Any] = []
        self._send_memo: dict[Any, Any] = {}
        self._client_memo: dict[Any, Any] = {}
        self._private_memo: dict[Any, Any] = {}
        self._channel_ids: dict[int, frozenset[int]] = {}
        self._recv_memo: dict[Any, Any] = {}
        self._decoder = FrameDecoder("utf-8", max_frame=self.limits.max_frame)
        self.groups = config.groups()
        for spec in config.clients:
            if spec.encoding not in ENCODINGS:
                raise SpecError(
                    f"the model's client encoding {spec.encoding!r} is not in the spec", rule="R3.1"
                )
        del domain

    # --- one place per message type: handlers and values, checked against the spec --------
    def _dispatch_table(self) -> dict[int, Callable[[_World, int, Message], None]]:
        table, missing = {}, []
        for spec in MESSAGES:
            if spec.sent_by_client:
                handler = getattr(self, f"on_{spec.name}", None)
                if handler is None:
                    missing.append(spec.name)
                else:
                    table[spec.code] = handler
        if missing:
            raise SpecError(
                f"the model server has no handler for {', '.join(missing)}", rule="R12.1"
            )
        return table

    def _domain_table(self) -> dict[int, Callable[[Client, int], list[Message]]]:
        table, missing = {}, []
        for spec in MESSAGES:
            if spec.sent_by_client:
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
                versions=SUPPORTED_VERSIONS,
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
    def _restore(self, cls: type, snap: tuple[Any, ...]) -> Any:
        session = cls.__new__(cls)
        (
            session._state,
            session._encoding,
            session._stopped,
            session.version,
            session.user,
            session.failed_logins,
            session.offered_versions,
        ) = snap
        decoder = self._decoder
        if decoder.failed is not None:
            decoder = self._decoder = FrameDecoder("utf-8", max_frame=self.limits.max_frame)
        decoder.discard()
        decoder.encoding = snap[1]
        session._decoder = decoder
        session._eof = False
        session._close_reported = False
        session.limits = self.limits
        return session

    def _branch(self, role: str, rows: Any, session: Any, message: Message) -> int | None:
        for index, branch in enumerate(rows[session._state].get(message.TYPE, ())):
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
            index = self._branch(cls.role, cls._table.send, session, message)
            try:
                data = session.send(message)
            except LocalProtocolError as err:
                hit = err
            else:
                self.coverage.taken.add((cls.role, snap[0], f"send_{message.NAME}", index or 0))
                hit = (data if self.config.wire else message, _snapshot(session))
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
            state = snap[0]
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
                message = self.message_of(item, snap[1])
                index = self._branch(cls.role, cls._recv, session, message)
                if self.config.wire:
                    session.feed(item)
                    event = session.next_event()
                    if isinstance(event, Message):
                        message = event
                else:
                    event = session.receive_message(message)
                if event is message and index is not None:
                    self.coverage.taken.add((cls.role, state, f"recv_{message.NAME}", index))
            hit = (event, message, _snapshot(session))
            self._recv_memo[key] = hit
        return hit

    def engine_close(self, cls: type, snap: tuple[Any, ...]) -> tuple[Any, ...]:
        """Our side ended the transport (``close``)."""
        session = self._restore(cls, snap)
        if snap[0] != _CLOSED:
            self.coverage.taken.add((cls.role, snap[0], CLOSED_TRIGGER, 0))
        session.close()
        return _snapshot(session)

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
            and MSG.TYPE in self.client_table.send[c.engine[0]]
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
        if not c.open:
            if k is None and c.sessions < cfg.sessions:
                yield self._step(state, decoded, "client", i, "connect", None, self.connect)
            return
        cstate = engine[0]
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
        if c.pinged < cfg.server_pings and not k.pinged and k.engine[0] in self.pushable:
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
        try:
            if i is None:
                run(w)
            else:
                run(w, i)
        except _Blocked:
            return None
        if actor == "server":
            self.slow_consumers(w)
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
            engine=_snapshot(session),
            open=True,
            sessions=c.sessions + 1,
            account=None,
            quit=False,
            ended=None,
            view=(),
            collecting=False,
        )
        w.cn[i] = Conn(_snapshot(ServerSession(limits=self.limits)), None, False, None, None, False)
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
        if snap[0] == _CLOSED:
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
            w.q[i] = (*w.q[i], Malformed(corrupt(encode(message, c.engine[1])), message))

    def client_close(self, w: _World, i: int, how: str) -> None:
        """The client closes its end: what it has not read is lost; the server reads EOF next."""
        c = w.cl[i]
        snap = c.engine if c.engine[0] == _CLOSED else self.engine_close(ClientSession, c.engine)
        w.cl[i] = c._replace(engine=snap, open=False, ended=how or c.ended or ENDED_BY_CLOSE)
        w.r[i] = ()
        if w.cn[i] is not None:
            w.q[i] = (*w.q[i], EOF)

    def client_drop(self, w: _World, i: int) -> None:
        w.cl[i] = w.cl[i]._replace(aborts=w.cl[i].aborts + 1)
        self.client_close(w, i, ENDED_BY_DROP)

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
        account = name_key(before[4]) if before[4] is not None else None
        accepted = event is message
        w.events.append(
            EvClientReceived(
                i,
                message,
                before[0],
                before[4],
                accepted,
                account,
                self.config.clients[i].encoding,
                c.msgs if before[0] == "AWAIT_ACK" else None,
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
            if self.client_table.send[snap[0]].get(PONG.TYPE) is not None:
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
        elif name == "BYE":
            c = c._replace(ended=ENDED_BY_BYE)
        elif name == "ERROR" and message.flags & ErrorFlags.FATAL:
            c = c._replace(ended=ENDED_BY_ERROR)
        w.cl[i] = c
        if snap[0] == _CLOSED:
            self.client_close(w, i, None)

    # --- server steps: the reference server's handlers, one by one ------------------------------
    def serve(self, w: _World, i: int) -> None:
        """Connection.process: take the next event and answer it."""
        k = w.cn[i]
        item, w.q[i] = w.q[i][0], w.q[i][1:]
        event, message, snap = self.engine_receive(ServerSession, k.engine, item)
        w.message = message
        w.cn[i] = k._replace(engine=snap, pinged=False)
        accepted = event is message or event is None
        rule = event.rule if isinstance(event, ProtocolViolation) else None
        w.events.append(
            EvServerReceived(
                i,
                message,
                k.engine[0],
                accepted or isinstance(event, ConnectionClosed),
                rule,
                isinstance(item, Malformed),
            )
        )
        try:
            if isinstance(event, ConnectionClosed):
                self.peer_closed(w, i)
            elif isinstance(event, ProtocolViolation):
                self.protocol_violation(w, i, event)
            elif event is not None:
                self.handlers[event.TYPE](w, i, event)
        except DfachatError as err:  # Connection.process: a bug of ours ends this session (R11.4)
            self.internal_error(w, i, err)

    def conn_send(self, w: _World, i: int, message: Message) -> None:
        """Connection.send: run the message through the engine and queue its frame."""
        k = w.cn[i]
        state = k.engine[0]
        item, snap = self.engine_send(ServerSession, k.engine, message)
        w.cn[i] = k._replace(engine=snap)
        w.write(i, item, message, state, self.server_table.states[state].authenticated)

    def push(self, w: _World, i: int, message: Message) -> None:
        """A push (DELIVER, JOINED, LEFT) queued without the engine, as push_all and on_MSG do."""
        k = w.cn[i]
        state = k.engine[0]
        item = encode(message, k.engine[1])
        self.coverage.taken.add(("server", state, f"send_{message.NAME}", 0))
        w.write(
            i,
            item if self.config.wire else message,
            message,
            state,
            self.server_table.states[state].authenticated,
        )

    def close_transport(self, w: _World, i: int) -> None:
        """The server closes its end: the client reads what was written, then EOF."""
        w.cn[i] = None
        w.q[i] = ()
        if w.cl[i].open:
            w.r[i] = (*w.r[i], EOF)
        w.writes.append((i, None, w.cl[i].open))

    def end(self, w: _World, i: int, error: Message | None, reason: LeftReason) -> None:
        """Connection.end: an optional last frame, close the session, leave, close."""
        k = w.cn[i]
        if error is not None and k.engine[0] != _CLOSED:
            try:
                self.conn_send(w, i, error)
            except LocalProtocolError:
                w.cn[i] = w.cn[i]._replace(engine=self.engine_close(ServerSession, w.cn[i].engine))
        if w.cn[i].engine[0] != _CLOSED:
            w.cn[i] = w.cn[i]._replace(engine=self.engine_close(ServerSession, w.cn[i].engine))
        self.leave(w, i, reason)
        self.close_transport(w, i)

    def leave(self, w: _World, i: int, reason: LeftReason) -> None:
        """ChatServer.leave: off the online list; LEFT to every other online session, once (R8.2)."""
        k = w.cn[i]
        if k.key is None or not k.online:
            return
        w.cn[i] = k._replace(online=False)
        w.srv = w.srv._replace(online=tuple(key for key in w.srv.online if key != k.key))
        self.push_all(w, LEFT(reason=reason, name=k.engine[4] or k.key), exclude=None)

    def push_all(self, w: _World, message: Message, *, exclude: int | None) -> None:
        for j in w.online_slots():
            if j != exclude and w.cn[j].engine[0] in self.pushable:
                self.push(w, j, message)

    def peer_closed(self, w: _World, i: int) -> None:
        self.end(w, i, None, LeftReason.DROPPED)

    def connection_lost(self, w: _World, i: int) -> None:
        """Connection.connection_lost while busy: session closed, leave, forget the connection."""
        w.message = None
        k = w.cn[i]
        w.events.append(EvServerReceived(i, None, k.engine[0], True, None))
        w.cn[i] = k._replace(engine=self.engine_close(ServerSession, k.engine))
        self.leave(w, i, LeftReason.DROPPED)
        w.cn[i] = None
        w.q[i] = ()
        if w.cl[i].open:
            w.r[i] = (*w.r[i], EOF)

    def protocol_violation(self, w: _World, i: int, event: ProtocolViolation) -> None:
        if event.fatal:
            self.end(w, i, event.reply, LeftReason.ERROR)
        else:
            self.conn_send(w, i, event.reply)

    def internal_error(self, w: _World, i: int, err: Exception) -> None:
        w.events.append(EvInternalError(i, str(err)))
        if w.cn[i] is not None:
            self.end(
                w,
                i,
                make_error(ErrorCode.INTERNAL_ERROR, "the server failed handling your frame"),
                LeftReason.ERROR,
            )

    def on_HELLO(self, w: _World, i: int, hello: Message) -> None:
        common = set(hello.versions) & set(SUPPORTED_VERSIONS)
        if not common:
            self.end(
                w,
                i,
                make_error(ErrorCode.UNSUPPORTED_VERSION, "no common version", rule="R5.2"),
                LeftReason.ERROR,
            )
        elif hello.encoding not in ENCODINGS:
            self.end(
                w,
                i,
                make_error(ErrorCode.UNSUPPORTED_ENCODING, "no such encoding"),
                LeftReason.ERROR,
            )
        else:
            limits = self.limits
            self.conn_send(
                w,
                i,
                HELLO_OK(
                    version=max(common),
                    max_frame=limits.max_frame,
                    max_text=limits.max_text,
                    idle_timeout_s=limits.idle_timeout_s,
                    max_recipients=limits.max_recipients,
                    login_attempts=limits.login_attempts,
                    encoding=hello.encoding,
                    software=self.config.domain.software,
                ),
            )

    def on_USER(self, w: _World, i: int, user: Message) -> None:
        w.cn[i] = w.cn[i]._replace(login_name=user.name)  # no answer (R6.2)

    def on_PASS(self, w: _World, i: int, password: Message) -> None:
        w.cn[i] = w.cn[i]._replace(pending=password.password)  # busy until the check is done

    def authenticate(self, w: _World, i: int) -> None:
        """ChatServer._authenticate: the password check (and back-off) has finished."""
        k = w.cn[i]
        w.cn[i] = k._replace(pending=None)
        name = k.login_name or ""
        account = self.accounts.get(name_key(name))
        try:
            if account is not None and account[1] == k.pending:
                self.login(w, i, account[0], name_key(name), k)
            else:
                self.login_failed(w, i)
        except DfachatError as err:
            self.internal_error(w, i, err)

    def login_failed(self, w: _World, i: int) -> None:
        k = w.cn[i]
        left = max(self.limits.login_attempts - k.engine[5] - 1, 0)
        self.conn_send(w, i, AUTH_FAILED(attempts_left=left))
        if w.cn[i].engine[0] == _CLOSED:
            self.close_transport(w, i)

    def login(self, w: _World, i: int, name: str, key: str, k: Conn) -> None:
        for j in w.online_slots():
            if w.cn[j].key == key:  # R6.6: the new session wins
                self.end(
                    w,
                    j,
                    make_error(
                        ErrorCode.SESSION_REPLACED, f"{name} logged in from another session"
                    ),
                    LeftReason.REPLACED,
                )
        w.cn[i] = w.cn[i]._replace(key=key, online=True)
        others = [w.cn[j].engine[4] or w.cn[j].key for j in w.online_slots()]
        w.srv = w.srv._replace(online=(*w.srv.online, key))
        names = [*others, name]
        size = self.limits.max_names_per_frame
        pages = [tuple(names[p : p + size]) for p in range(0, len(names), size)] or [()]
        w.events.append(EvLogin(i, name, k.login_name, k.pending or ""))
        self.conn_send(
            w,
            i,
            AUTH_OK(
                flags=ListFlags.MORE if len(pages) > 1 else ListFlags(0), name=name, online=pages[0]
            ),
        )
        for p, page in enumerate(pages[1:], 2):
            self.conn_send(
                w, i, USERS(flags=ListFlags.MORE if p < len(pages) else ListFlags(0), online=page)
            )
        self.push_all(w, JOINED(name=name), exclude=i)
        self.deliver_stored(w, i, key)

    def deliver_stored(self, w: _World, i: int, key: str) -> None:
        stored = [item for item in w.srv.store if item.key == key]
        if not stored:
            return
        encoding = w.cn[i].engine[1]
        for item in stored:
            text, replaced = reencode(item.text, encoding)
            flags = DeliverFlags(item.flags) | DeliverFlags.STORED
            if replaced:
                flags |= DeliverFlags.LOSSY
            self.conn_send(
                w,
                i,
                DELIVER(
                    server_msg_id=item.server_msg_id,
                    timestamp_ms=0,
                    flags=flags,
                    sender=item.sender,
                    text=text,
                ),
            )
        self.forget(w, key, stored)

    def forget(self, w: _World, key: str, items: list[Stored]) -> None:
        """Store.forget: the stored messages were handed to the transport (R7.7)."""
        w.srv = w.srv._replace(store=tuple(item for item in w.srv.store if item not in items))

    def route(self, w: _World, i: int, msg: Message) -> Any:
        """routing.route, called as the server calls it: online maps keys to sessions, in login order."""
        online = {w.cn[j].key: j for j in w.online_slots()}
        return route(w.cn[i].key or "", msg.recipients, online, self.account_name, name_key)

    def account_name(self, key: str) -> str | None:
        account = self.accounts.get(key)
        return account[0] if account else None

    def on_MSG(self, w: _World, i: int, msg: Message) -> None:
        k = w.cn[i]
        sender = k.engine[4] or ""
        online_before = w.srv.online
        plan = self.route(w, i, msg)
        server_msg_id = w.srv.next_id
        w.srv = w.srv._replace(next_id=server_msg_id + 1)
        flags = DeliverFlags.DIRECTED if plan.directed else DeliverFlags(0)
        frames: dict[str, tuple[Message, bool]] = {}
        delivered = lossy = 0
        lossy_keys: set[str] = set()
        live: list[str] = []
        for target in plan.live:
            encoding = w.cn[target].engine[1]
            entry = frames.get(encoding)
            if entry is None:
                text, replaced = reencode(msg.text, encoding)
                entry = frames[encoding] = (
                    DELIVER(
                        server_msg_id=server_msg_id,
                        timestamp_ms=0,
                        flags=flags | DeliverFlags.LOSSY if replaced else flags,
                        sender=sender,
                        text=text,
                    ),
                    bool(replaced),
                )
            if w.cn[target].engine[0] in self.pushable:
                self.push(w, target, entry[0])
                live.append(w.cn[target].key or "")
                delivered += 1
                if entry[1]:
                    lossy += 1
                    lossy_keys.add(w.cn[target].key or "")
        if plan.stored:  # durable before the MSG_ACK that says QUEUED (R7.7)
            w.srv = w.srv._replace(
                store=(
                    *w.srv.store,
                    *(
                        Stored(key, server_msg_id, sender, int(flags), msg.text)
                        for key, _ in plan.stored
                    ),
                )
            )
        results = tuple(
            RecipientResult(
                name=name,
                outcome=Outcome.LOSSY
                if outcome is Outcome.DELIVERED and name_key(name) in lossy_keys
                else outcome,
            )
            for name, outcome in plan.results
        )
        w.events.append(
            EvRouted(
                i,
                k.key or "",
                tuple(msg.recipients),
                online_before,
                tuple(live),
                tuple(key for key, _ in plan.stored),
                server_msg_id,
                w.g.last_id,
                tuple((r.name, int(r.outcome)) for r in results),
            )
        )
        w.g = w.g._replace(
            last_id=max(w.g.last_id, server_msg_id),
            log=(
                *w.g.log,
                Logged(
                    server_msg_id,
                    k.key or "",
                    sender,
                    tuple(msg.recipients),
                    msg.text,
                    tuple((r.name, int(r.outcome)) for r in results),
                    delivered,
                    lossy,
                ),
            ),
        )
        self.conn_send(
            w,
            i,
            MSG_ACK(
                msg_id=msg.msg_id,
                server_msg_id=server_msg_id,
                delivered=delivered,
                lossy=lossy,
                results=results,
            ),
        )

    def on_LIST(self, w: _World, i: int, _: Message) -> None:
        names = [w.cn[j].engine[4] or w.cn[j].key for j in w.online_slots()]
        size = self.limits.max_names_per_frame
        pages = [tuple(names[p : p + size]) for p in range(0, len(names), size)] or [()]
        for p, page in enumerate(pages, 1):
            self.conn_send(
                w, i, USERS(flags=ListFlags.MORE if p < len(pages) else ListFlags(0), online=page)
            )

    def on_PING(self, w: _World, i: int, ping: Message) -> None:
        self.conn_send(w, i, PONG(nonce=ping.nonce))

    def on_PONG(self, w: _World, i: int, _: Message) -> None:
        pass  # activity is noted on every frame (R9.2)

    def on_QUIT(self, w: _World, i: int, _: Message) -> None:
        self.conn_send(w, i, BYE(reason=ByeReason.QUIT))
        self.leave(w, i, LeftReason.QUIT)
        self.close_transport(w, i)

    def on_ERROR(self, w: _World, i: int, _: Message) -> None:
        self.end(w, i, None, LeftReason.ERROR)

    # --- server steps: time and resources ------------------------------------------------------
    def server_ping(self, w: _World, i: int) -> None:
        w.cl[i] = w.cl[i]._replace(pinged=w.cl[i].pinged + 1)
        w.cn[i] = w.cn[i]._replace(pinged=True)
        message = PING(nonce=self.config.domain.server_nonce)
        w.message = message
        self.conn_send(w, i, message)

    def idle_timeout(self, w: _World, i: int) -> None:
        w.cl[i] = w.cl[i]._replace(timeouts=w.cl[i].timeouts + 1)
        self.end(w, i, make_error(ErrorCode.IDLE_TIMEOUT, "nothing received"), LeftReason.TIMEOUT)

    def slow_consumers(self, w: _World) -> None:
        """ChatServer.slow_consumer for every channel over capacity (R9.3): ERROR, leave, abort."""
        capacity = self.config.capacity
        again = True
        while again:
            again = False
            for j in range(self.n):
                if w.cn[j] is not None and len(w.r[j]) > capacity:
                    self.end(
                        w,
                        j,
                        make_error(
                            ErrorCode.SLOW_CONSUMER, "your unread output exceeded the limit"
                        ),
                        LeftReason.ERROR,
                    )
                    if w.cl[j].open:
                        w.events.append(EvAborted(j, len(w.r[j]) - 1))
                        w.r[j] = (EOF,)  # transport.abort(): the unsent output is dropped
                    again = True

    def restart(self, w: _World) -> None:
        """ChatServer.shutdown, then a new server on the same store (R10.3, R7.3, R7.7)."""
        w.srv = w.srv._replace(restarts=w.srv.restarts + 1)
        for j in range(self.n):
            k = w.cn[j]
            if k is None:
                continue
            if k.engine[0] != _CLOSED:
                with contextlib.suppress(LocalProtocolError):
                    self.conn_send(w, j, BYE(reason=ByeReason.SHUTDOWN))
            w.cn[j] = w.cn[j]._replace(online=False)
            self.close_transport(w, j)
        self.restarted(w)

    def restarted(self, w: _World) -> None:
        """What the new server starts with: nobody online; the store and the id counter as they were."""
        w.srv = w.srv._replace(online=())


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

    def online_slots(self) -> list[int]:
        """The online connections, in login order (the server's ``online`` dict)."""
        out = []
        for key in self.srv.online:
            for j, k in enumerate(self.cn):
                if k is not None and k.online and k.key == key:
                    out.append(j)
                    break
        return out

    def write(self, i: int, item: Any, message: Message, state: str, authenticated: bool) -> None:
        self.events.append(EvWritten(i, message, state, authenticated, self.cn[i].key))
        self.writes.append((i, message, self.cl[i].open))
        if message.NAME == "DELIVER":
            entry = (message.server_msg_id, self.cn[i].key or "")
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
        return [next(k.engine[4] or k.key for k in conns if k.key == key) for key in self.online]

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
        return client.engine is not None and client.engine[0] in self.model.waiting

    def server_authenticated(self, conn: Conn) -> bool:
        return self.model.server_table.states[conn.engine[0]].authenticated

    def logged(self, server_msg_id: int) -> Logged | None:
        for entry in self.ghost.log:
            if entry.server_msg_id == server_msg_id:
                return entry
        return None
