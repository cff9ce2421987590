"""The properties the checker proves, each a named function citing the rules it defends.

Adding a property is adding one function here with one of three decorators:

* ``@always(rules..., on=EventType)`` -- an invariant judged on every step that
  reports such an event: ``f(event, s) -> bool`` where ``s`` is the state after
  the step (``s.step`` is the step, ``s.before`` the state it started from). Without ``on``: judged on every reachable
  state, ``f(s) -> bool`` (``s.enabled`` is the number of enabled steps).
* ``@eventually(rules...)`` -- bounded liveness: ``f(s) -> bool`` must hold in
  every *quiet* state (nothing in flight, no server work pending) and every
  state without successors. A quiet state is one the system may rest in for
  ever (clients are not obliged to act; the network and the server are), so a
  quiet state where the obligation is pending starts a path on which it is
  never met. Within the explored depth: states beyond it are not seen.
* ``@sometimes(rules..., on=EventType)`` -- a reachability witness: some step
  (or state, without ``on``) satisfies ``f``. An unwitnessed ``sometimes``
  after a complete exploration means the model is vacuous there.

``requires`` (a predicate over the ModelConfig) skips a property the bounds
cannot exercise. Properties never restate the protocol: they compare what the
engines and the server did with what the rules promise, from the facts each
step reports (:mod:`dfachat.conformance.checker.model`, the ``Ev*`` records).
"""

from __future__ import annotations

import dis
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dfachat.conformance.checker.model import (
    EvApplication,
    EvClientReceived,
    EvInternalError,
    EvLogin,
    EvRouted,
    EvServerReceived,
    EvStoreChanged,
    EvWritten,
    ModelConfig,
    View,
    name_key,
)
from dfachat.spec import ENCODINGS, REPLACEMENT, DeliverFlags, Outcome, rule_text

__all__ = ["PROPERTIES", "Property", "always", "eventually", "property_named", "sometimes"]

PUSHES = frozenset({"DELIVER", "JOINED", "LEFT"})


@dataclass(frozen=True, slots=True)
class Property:
    name: str
    kind: str  # always, eventually, sometimes
    rules: tuple[str, ...]
    fn: Callable[..., bool]
    on: tuple[type, ...]  # event types it judges; empty: it judges states
    requires: Callable[[ModelConfig], bool] | None = None

    @property
    def pure(self) -> bool:
        """An event property that never reads the state: its verdict depends on the event alone."""
        if not self.on:
            return False
        code = self.fn.__code__
        state = code.co_varnames[1]
        return (
            not any(
                ins.argval == state
                for ins in dis.get_instructions(code)
                if ins.opname.startswith("LOAD_")
            )
            and not code.co_freevars
        )

    @property
    def doc(self) -> str:
        """The docstring's first paragraph, on one line."""
        return " ".join((self.fn.__doc__ or self.name).strip().split("\n\n")[0].split())

    def applies(self, config: ModelConfig) -> bool:
        return self.requires is None or bool(self.requires(config))

    def rule_texts(self) -> dict[str, str]:
        return {rule: rule_text(rule) for rule in self.rules}


PROPERTIES: dict[str, Property] = {}


def _declare(
    kind: str, rules: tuple[str, ...], on: Any, requires: Any
) -> Callable[[Callable[..., bool]], Callable[..., bool]]:
    events = () if on is None else (on if isinstance(on, tuple) else (on,))

    def register(fn: Callable[..., bool]) -> Callable[..., bool]:
        if fn.__name__ in PROPERTIES:
            raise ValueError(f"property {fn.__name__} declared twice")
        rule_text_check = [
            rule_text(rule) for rule in rules
        ]  # an unknown rule fails here, at import
        del rule_text_check
        PROPERTIES[fn.__name__] = Property(fn.__name__, kind, rules, fn, events, requires)
        return fn

    return register


def always(
    *rules: str, on: Any = None, requires: Any = None
) -> Callable[[Callable[..., bool]], Callable[..., bool]]:
    return _declare("always", rules, on, requires)


def eventually(
    *rules: str, requires: Any = None
) -> Callable[[Callable[..., bool]], Callable[..., bool]]:
    return _declare("eventually", rules, None, requires)


def sometimes(
    *rules: str, on: Any = None, requires: Any = None
) -> Callable[[Callable[..., bool]], Callable[..., bool]]:
    return _declare("sometimes", rules, on, requires)


def property_named(name: str) -> Property:
    try:
        return PROPERTIES[name]
    except KeyError:
        raise KeyError(f"no property {name!r}; known: {', '.join(PROPERTIES)}") from None


def _rendered(text: str, encoding: str) -> tuple[str, bool]:
    """R3.5, stated on its own: each character the encoding cannot carry becomes '?'."""
    codec = ENCODINGS[encoding].codec
    out = [c if c.encode(codec, "ignore") else REPLACEMENT for c in text]
    return "".join(out), any(o != c for o, c in zip(out, text, strict=True))


# --- always: invariants --------------------------------------------------------------------


@always("R12.1", "R12.3", "R8.4", on=EvClientReceived)
def client_accepts_every_frame(e: EvClientReceived, s: View) -> bool:
    """No client ever receives a frame its ClientSession rejects in its current state."""
    return e.accepted


@always("R12.1", "R12.2", "R7.2", on=EvServerReceived)
def server_accepts_every_frame(e: EvServerReceived, s: View) -> bool:
    """The server never rejects a frame from a client that follows its own table
    (frames a model client breaks on purpose excepted: those it must reject)."""
    return e.accepted != e.malformed


@always("R8.4", "R6.5", on=(EvWritten, EvClientReceived))
def pushes_only_to_authenticated_sessions(e: Any, s: View) -> bool:
    """No DELIVER, JOINED or LEFT is written to, or reaches, a session that is not authenticated."""
    return e.message.NAME not in PUSHES or e.authenticated


@always("R6.1", "R6.2", "R6.5", on=EvLogin)
def login_needs_the_right_password(e: EvLogin, s: View) -> bool:
    """A session is authenticated only after the right password for the account USER named."""
    account = s.accounts.get(name_key(e.login_name or ""))
    return account is not None and account == (e.name, e.password)


@always("R6.5", "R12.1")
def authenticated_sessions_are_logged_in(s: View) -> bool:
    """A server session in an authenticated state belongs to the account it logged in to."""
    return all(k.key is not None for k in s.conns if k is not None and s.server_authenticated(k))


@always("R6.5", "R8.3", on=EvWritten)
def who_is_online_is_true(e: EvWritten, s: View) -> bool:
    """Every name AUTH_OK or USERS lists was online at the server (the session's own user
    included), and each is listed once."""
    if e.message.NAME not in ("AUTH_OK", "USERS"):
        return True
    names = e.message.online
    online = {*s.before.online, e.key}  # before the step, and the user this step logs in
    return len(set(names)) == len(names) and {name_key(n) for n in names} <= online


@always("R7.3", on=EvClientReceived)
def every_msg_ack_answers_its_msg(e: EvClientReceived, s: View) -> bool:
    """A MSG_ACK reaches a client only while it waits for one, and carries its MSG's msg_id."""
    return e.message.NAME != "MSG_ACK" or e.awaiting_msg_id == e.message.msg_id


@always("R7.3", on=EvRouted)
def server_msg_ids_increase(e: EvRouted, s: View) -> bool:
    """Every server message id is greater than every one issued before, restarts included."""
    return e.server_msg_id > e.last_id


@always("R7.1", "R7.4", "R7.7", "R7.8", on=EvRouted)
def msg_goes_to_exactly_its_recipients(e: EvRouted, s: View) -> bool:
    """A MSG reaches exactly its named recipients (or everyone online but the sender), none twice."""
    if len(set(e.live)) != len(e.live) or len(set(e.stored)) != len(e.stored):
        return False
    online = set(e.online)
    if not e.recipients:  # broadcast: never to the sender, never stored (R7.7, R7.8)
        return set(e.live) == online - {e.sender} and not e.stored
    named = {name_key(r) for r in e.recipients} & set(s.accounts)
    return set(e.live) == named & online and set(e.stored) == named - online


@always("R7.4", "R7.7", on=EvRouted)
def msg_ack_tells_the_truth(e: EvRouted, s: View) -> bool:
    """MSG_ACK reports DELIVERED/LOSSY for who got it, QUEUED only once stored, UNKNOWN_USER else."""
    live, queued = (
        set(e.live),
        {item.key for item in s.server.store if item.server_msg_id == e.server_msg_id},
    )
    expect = {
        Outcome.DELIVERED: lambda key: key in live,
        Outcome.LOSSY: lambda key: key in live,
        Outcome.QUEUED: lambda key: key in queued,
        Outcome.UNKNOWN_USER: lambda key: key not in s.accounts,
    }
    return len(e.results) == len(e.recipients) and all(
        expect[Outcome(o)](name_key(n)) for n, o in e.results
    )


@always("R7.5", "R7.6", "R3.5", "R7.8", on=EvClientReceived)
def deliver_is_faithful(e: EvClientReceived, s: View) -> bool:
    """A DELIVER goes to a named recipient (or, broadcast, not to the sender), with the sender,
    the DIRECTED and LOSSY flags and the text (or its '?' rendering) of the MSG."""
    m = e.message
    if m.NAME != "DELIVER":
        return True
    logged = s.before.logged(m.server_msg_id)
    if logged is None or m.sender != logged.sender_name:
        return False
    if bool(m.flags & DeliverFlags.DIRECTED) != bool(logged.recipients):
        return False
    if logged.recipients and e.account not in {name_key(r) for r in logged.recipients}:
        return False
    if not logged.recipients and e.account == logged.sender:
        return False
    text, lossy = _rendered(logged.text, e.encoding)
    return m.text == text and bool(m.flags & DeliverFlags.LOSSY) == lossy


@always("R7.6", "R7.13", on=EvWritten)
def deliver_at_most_once(e: EvWritten, s: View) -> bool:
    """An account is sent each server message id at most once, over all its sessions; in
    version 2 again only at a later login, flagged REDELIVERED or STORED (R7.13)."""
    # <= 1: the entry is forgotten in the same step when no copy of the message is left (Ghost)
    m = e.message
    if m.NAME != "DELIVER" or s.ghost.written.count((m.server_msg_id, e.key or "")) <= 1:
        return True
    return s.config.version >= 2 and bool(m.flags & (DeliverFlags.REDELIVERED | DeliverFlags.STORED))


@always("R7.7", "R7.4", "R7.10", on=EvStoreChanged)
def nothing_acknowledged_is_lost(e: EvStoreChanged, s: View) -> bool:
    """A stored (QUEUED) message leaves the durable store only written to its recipient (version 1)
    or acknowledged by a DELIVER_ACK of its recipient's session (version 2); restarts keep it."""
    if s.config.version >= 2:
        acked = {
            (s.before.conns[ev.client].key, ev.message.server_msg_id)
            for ev in s.step.events
            if isinstance(ev, EvServerReceived) and ev.accepted and ev.message is not None
            and ev.message.NAME == "DELIVER_ACK"
        }
        return all(
            any(key == item.key and item.server_msg_id <= sid for key, sid in acked) for item in e.removed
        )
    written = {
        (ev.message.server_msg_id, ev.key)
        for ev in s.step.events
        if isinstance(ev, EvWritten) and ev.message.NAME == "DELIVER"
    }
    return all((item.server_msg_id, item.key) in written for item in e.removed)


@always("R7.7", requires=lambda config: config.version == 1)
def no_stored_message_waits_for_an_online_user(s: View) -> bool:
    """A message stored for an offline user is delivered at that user's next login: none waits while it is online."""
    online = set(s.online)
    return not any(item.key in online for item in s.server.store)


@always("R8.1", "R8.2", "R6.6", on=EvClientReceived)
def presence_announced_once(e: EvClientReceived, s: View) -> bool:
    """JOINED names someone the client did not see online; LEFT someone it did: one LEFT per JOINED."""
    m = e.message
    if m.NAME == "JOINED":
        return m.name not in e.view
    if m.NAME == "LEFT":
        return m.name in e.view
    return True


@always("R11.4", on=EvInternalError)
def server_never_fails(e: EvInternalError, s: View) -> bool:
    """The server never fails handling a frame (no INTERNAL_ERROR of its own)."""
    return False


def _applications(config: ModelConfig) -> bool:
    return config.applications and not _replacement_possible(config)


@always("R7.11", requires=_applications)
def no_application_takes_a_message_twice(s: View) -> bool:
    """No application takes a server message id twice, over all its sessions and crashes."""
    return all(len(set(c.app)) == len(c.app) for c in s.clients)


@always("R12.1", "R10.5")
def no_deadlock(s: View) -> bool:
    """Every reachable state has an enabled step or is final (everyone disconnected)."""
    return s.enabled != 0 or s.final


# --- eventually: bounded liveness (judged in quiet states) ---------------------------------


@eventually("R7.3", "R7.2")
def every_msg_gets_an_ack(s: View) -> bool:
    """Every MSG gets its MSG_ACK: no client with an open connection rests waiting for one."""
    return not any(c.open and c.engine.state == "AWAIT_ACK" for c in s.clients)


@eventually("R5.5", "R6.5", "R6.3", "R8.3")
def every_request_is_answered(s: View) -> bool:
    """HELLO, PASS and LIST are answered: no client with an open connection rests waiting."""
    return not any(
        c.open and s.waiting(c) and c.engine.state not in ("AWAIT_ACK", "AWAIT_BYE") for c in s.clients
    )


@eventually("R10.1", "R10.2", "R10.4")
def every_quit_gets_bye(s: View) -> bool:
    """Every QUIT leads to BYE (or the server's earlier fatal ERROR) and both ends closed,
    unless the client gave up first (it dropped the connection, sent a fatal ERROR or crashed)."""
    return all(
        not c.quit or (not c.open and k is None and c.ended in ("bye", "error", "dropped", "crashed"))
        for c, k in zip(s.clients, s.conns, strict=True)
    )


@eventually("R7.10", "R7.11", "R7.13", requires=_applications)
def acknowledged_reaches_the_application_once(s: View) -> bool:
    """Every MSG whose MSG_ACK said DELIVERED, LOSSY or QUEUED for a recipient (a broadcast: for
    each session it went to) reaches that recipient's application exactly once: once the
    recipient is logged in and has taken and acknowledged everything that came, its
    application's log holds it. Version 1 forgets a message once it is written (R7.7), so a
    client crash before its application takes it refutes this there."""
    account_of = {
        name_key(s.config.domain.accounts[spec.accounts[0]][0]): i for i, spec in enumerate(s.config.clients)
    }
    for sid, key in s.ghost.promised:
        c = s.clients[account_of[key]]
        if sid in c.app or not c.open or c.engine.user is None or c.engine.state == "CLOSED":
            continue  # taken, or its user is not logged in: not obliged yet
        if not c.arrived and not any(u <= c.taken for u in c.engine.unacknowledged):
            return False  # it has taken and acknowledged all that came, and this never came
    return True


@eventually("R8.1", "R8.2", "R6.5", "R6.6")
def joined_matched_by_left(s: View) -> bool:
    """Every JOINED is matched by one LEFT once that session ends: each client sees who is online."""
    online = sorted(s.online_names())
    return all(list(c.view) == online for c in s.clients if c.open and c.engine.user is not None)


# --- sometimes: the model is not vacuous ----------------------------------------------------


def _replacement_possible(config: ModelConfig) -> bool:
    accounts = [a for c in config.clients for a in c.accounts]
    return len(accounts) != len(set(accounts))


def _two_users(config: ModelConfig) -> bool:
    return len(config.clients) >= 2 and config.max_msgs >= 1


@sometimes("R7.1", "R7.5", on=EvClientReceived, requires=_two_users)
def two_users_exchange_a_directed_message(e: EvClientReceived, s: View) -> bool:
    """A user receives a directed message from another user."""
    m = e.message
    return (
        e.accepted
        and m.NAME == "DELIVER"
        and bool(m.flags & DeliverFlags.DIRECTED)
        and name_key(m.sender) != e.account
    )


@sometimes("R7.7", on=EvClientReceived, requires=_two_users)
def stored_message_delivered_at_login(e: EvClientReceived, s: View) -> bool:
    """A message stored for an offline user reaches it at its login."""
    return (
        e.accepted and e.message.NAME == "DELIVER" and bool(e.message.flags & DeliverFlags.STORED)
    )


def _lossy_possible(config: ModelConfig) -> bool:
    encodings = {c.encoding for c in config.clients}
    return (
        _two_users(config)
        and any(not ENCODINGS[e].universal for e in encodings)
        and len(encodings) > 1
    )


@sometimes("R3.5", on=EvClientReceived, requires=_lossy_possible)
def lossy_delivery(e: EvClientReceived, s: View) -> bool:
    """A recipient whose encoding cannot carry the text receives it flagged LOSSY."""
    return e.accepted and e.message.NAME == "DELIVER" and bool(e.message.flags & DeliverFlags.LOSSY)


@sometimes("R8.1", "R6.5")
def everyone_online(s: View) -> bool:
    """Every client is logged in at the same time (as many users online as there can be)."""
    accounts = {a for c in s.config.clients for a in c.accounts}
    return len(s.online) == min(len(s.clients), len(accounts))


@sometimes("R8.2", on=EvClientReceived, requires=lambda config: len(config.clients) >= 2)
def someone_sees_a_user_leave(e: EvClientReceived, s: View) -> bool:
    """A client is told that another user left."""
    return e.accepted and e.message.NAME == "LEFT"


@sometimes("R10.2", on=EvClientReceived)
def clean_quit(e: EvClientReceived, s: View) -> bool:
    """A client that sent QUIT receives BYE."""
    return e.accepted and e.message.NAME == "BYE" and e.state == "AWAIT_BYE"


@sometimes("R6.6", on=EvClientReceived, requires=_replacement_possible)
def session_replaced(e: EvClientReceived, s: View) -> bool:
    """A second login to an account replaces the first session (fatal SESSION_REPLACED)."""
    return e.message.NAME == "ERROR" and e.message.code.name == "SESSION_REPLACED"


@sometimes(
    "R7.4",
    "R6.2",
    on=EvRouted,
    requires=lambda config: bool(config.domain.unknown_users) and config.max_msgs >= 1,
)
def msg_to_an_unknown_user(e: EvRouted, s: View) -> bool:
    """A MSG names someone without an account and MSG_ACK says UNKNOWN_USER."""
    return any(outcome == Outcome.UNKNOWN_USER for _, outcome in e.results)


def _crashes_in_version_2(config: ModelConfig) -> bool:
    return config.version >= 2 and config.crashes > 0 and config.max_msgs >= 1 and _applications(config)


@sometimes("R7.13", on=EvClientReceived, requires=_crashes_in_version_2)
def redelivered_after_a_crash(e: EvClientReceived, s: View) -> bool:
    """A DELIVER a crashed session did not acknowledge comes again at the next login, flagged REDELIVERED."""
    return (
        e.accepted and e.message.NAME == "DELIVER" and bool(e.message.flags & DeliverFlags.REDELIVERED)
    )


@sometimes("R7.11", on=EvApplication, requires=_crashes_in_version_2)
def taken_message_dropped_when_redelivered(e: EvApplication, s: View) -> bool:
    """A message the application took before a crash comes again and the client drops it."""
    return e.what == "dropped"
