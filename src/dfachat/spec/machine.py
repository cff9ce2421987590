"""The DFA of each role, declared once as a ``transitions`` machine.

A role's session is in exactly one state. A trigger is a message and a
direction (``recv_USER``, ``send_AUTH_OK``), or the pseudo-trigger
``closed`` (the transport ended). A transition names its source, its
destination (``None``: an internal transition, the state does not change),
optional guards over the message (``conditions``/``unless``, tried in
declaration order), optional actions the engine runs after it (``after``),
the rule that allows it, the rule a refusal of its guards breaks when that
is another one (``refused``: a DELIVER beyond the window breaks R7.12, not
the rules that allow DELIVER), and the first protocol version that has it
(``since``; version 2 only adds rows to version 1's tables).

The machine built here is the declaration and the diagram source. The
engine in :mod:`dfachat.fsm` does not run it per session: it runs a frozen
table generated from this machine at import, and a test proves the two agree
on every state and trigger.

What may cross in flight, and why both tables agree on it:

* A client waiting for a reply (AWAIT_HELLO_OK, AWAIT_AUTH, AWAIT_ACK,
  AWAIT_USERS) sends nothing but PONG, so the server, whose matching states
  (NEGOTIATING, AUTHENTICATING, ROUTING, LISTING) owe that reply, needs no
  rows for anything else.
* Pushes (DELIVER, JOINED, LEFT, PING, non-fatal ERROR) may reach a client
  in any state after AUTH_OK, including AWAIT_BYE, because the server may
  have sent them before it read the client's QUIT (R8.4, R10.4).
* A QUIT or MSG crossing the server's BYE or fatal ERROR arrives at a server
  in CLOSED, which discards it (R12.4); the client learns from BYE that its
  MSG was not processed (R10.3).
* A client PING and its PONG: the client may send QUIT right after PING;
  the server, processing frames in order, answers PONG before it reads QUIT.
* A non-fatal ERROR regarding MSG or LIST ends the client's wait for MSG_ACK
  or USERS, so the server sends non-fatal ERRORs only from ESTABLISHED, the
  one state where it reads frames and owes nothing (R11.3), and, in version
  2, the one regarding MSG that answers an outstanding MSG (R7.15, R7.16).
* Version 2 counts: MSGs outstanding (a window instead of one, R7.16) and
  DELIVERs unacknowledged (R7.12). A count is not a state, so the windows
  are guards over the session's counters, kept by actions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transitions import Machine
from transitions.core import Transition

from dfachat.spec.codes import ErrorFlags, ListFlags
from dfachat.spec.limits import PROTOCOL_VERSION, SUPPORTED_VERSIONS

__all__ = [
    "ACTIONS",
    "CLOSED_TRIGGER",
    "GUARDS",
    "ROLES",
    "STATES",
    "TRANSITIONS",
    "RuleTransition",
    "StateSpec",
    "build_machine",
    "transitions_of",
]

ROLES = ("server", "client")
CLOSED_TRIGGER = "closed"


@dataclass(frozen=True, slots=True)
class StateSpec:
    name: str
    phase: str  # handshake, authentication, chat, closing
    doc: str
    rule: str  # cited when a message arrives that this state has no row for
    authenticated: bool = False  # after AUTH_OK: pushes may arrive or be sent (R8.4)
    recovers: bool = False  # the server answers protocol errors here with a non-fatal ERROR (R11.3)
    discards_input: bool = False  # everything received here is dropped (R12.4)
    initial: bool = False
    terminal: bool = False


def _s(name: str, phase: str, doc: str, rule: str, **flags: bool) -> StateSpec:
    return StateSpec(name, phase, doc, rule, **flags)


STATES: dict[str, tuple[StateSpec, ...]] = {
    "server": (
        _s("AWAIT_HELLO", "handshake", "connection accepted; waiting for HELLO", "R5.1", initial=True),
        _s("NEGOTIATING", "handshake", "HELLO received; owes HELLO_OK or a fatal ERROR", "R5.5"),
        _s("AWAIT_USER", "authentication", "waiting for USER", "R6.1"),
        _s("AWAIT_PASS", "authentication", "USER received; waiting for PASS", "R6.1"),
        _s("AUTHENTICATING", "authentication", "PASS received; owes AUTH_OK or AUTH_FAILED", "R6.1"),
        _s("ESTABLISHED", "chat", "authenticated and idle", "R12.1", authenticated=True, recovers=True),
        _s("ROUTING", "chat", "MSG received; owes MSG_ACK", "R7.2", authenticated=True),
        _s("LISTING", "chat", "owes USERS frames, the last without MORE", "R7.2", authenticated=True),
        _s("CLOSING", "closing", "QUIT received; owes BYE", "R10.2", discards_input=True),
        _s("CLOSED", "closing", "the session is over", "R12.4", discards_input=True, terminal=True),
    ),
    "client": (
        _s("CONNECTED", "handshake", "connection open; must send HELLO", "R5.1", initial=True),
        _s("AWAIT_HELLO_OK", "handshake", "HELLO sent; waiting for HELLO_OK", "R5.5"),
        _s("SEND_USER", "authentication", "must send USER (or QUIT)", "R6.1"),
        _s("SEND_PASS", "authentication", "USER sent; must send PASS (or QUIT)", "R6.1"),
        _s("AWAIT_AUTH", "authentication", "PASS sent; waiting for AUTH_OK or AUTH_FAILED", "R6.5"),
        _s("ESTABLISHED", "chat", "authenticated and idle", "R12.1", authenticated=True),
        _s("AWAIT_ACK", "chat", "MSG sent; waiting for MSG_ACK", "R7.3", authenticated=True),
        _s("AWAIT_USERS", "chat", "waiting for USERS frames, the last without MORE", "R8.3", authenticated=True),
        _s("AWAIT_BYE", "closing", "QUIT sent; waiting for BYE", "R10.2"),
        _s("CLOSED", "closing", "the session is over", "R12.4", discards_input=True, terminal=True),
    ),
}


# Guards: predicates over (session, message), named in transitions' conditions.
def _is_fatal(session: Any, message: Any) -> bool:
    """The ERROR has the FATAL flag set."""
    return bool(message.flags & ErrorFlags.FATAL)


def _has_more(session: Any, message: Any) -> bool:
    """The AUTH_OK or USERS frame has the MORE flag set: more USERS frames follow."""
    return bool(message.flags & ListFlags.MORE)


def _has_attempts(session: Any, message: Any) -> bool:
    """AUTH_FAILED's attempts_left is greater than 0."""
    return message.attempts_left > 0


def _regards(type_name: str) -> Any:
    def guard(session: Any, message: Any) -> bool:
        from dfachat.spec.messages import MESSAGES_BY_NAME

        return message.regarding == MESSAGES_BY_NAME[type_name].code

    guard.__doc__ = f"The ERROR's regarding field is the type code of {type_name}."
    return guard


def _window_open(session: Any, message: Any) -> bool:
    """Fewer MSGs are outstanding than the session's msg_window (R7.16)."""
    return session.outstanding < session.msg_window


def _more_outstanding(session: Any, message: Any) -> bool:
    """More than one MSG is outstanding: this answer leaves the rest waiting (R7.16)."""
    return session.outstanding > 1


def _deliver_window_open(session: Any, message: Any) -> bool:
    """Fewer DELIVERs are unacknowledged than the session's deliver_window (R7.12); version 1
    has no window."""
    return session.version < 2 or len(session.unacknowledged) < session.deliver_window


def _acknowledges_delivered(session: Any, message: Any) -> bool:
    """DELIVER_ACK names a DELIVER of this session not yet acknowledged (R7.10)."""
    return message.server_msg_id in session.unacknowledged


def _matches_offer(session: Any, message: Any) -> bool:
    """HELLO_OK names a version the client offered in HELLO and the encoding it asked for."""
    return message.version in session.offered_versions and message.encoding == session.encoding


GUARDS = {
    "is_fatal": _is_fatal,
    "has_more": _has_more,
    "has_attempts": _has_attempts,
    "regards_MSG": _regards("MSG"),
    "regards_LIST": _regards("LIST"),
    "matches_offer": _matches_offer,
    "window_open": _window_open,
    "more_outstanding": _more_outstanding,
    "deliver_window_open": _deliver_window_open,
    "acknowledges_delivered": _acknowledges_delivered,
}

# Actions: what the engine does after a transition; each is a method of the engine's session.
ACTIONS = {
    "offer": "HELLO records the versions and the encoding the client offers (R5.1, R5.5)",
    "adopt_encoding": "HELLO_OK fixes the session's version and encoding (R5.4)",
    "authenticate": "AUTH_OK fixes the session's user name (R6.5)",
    "count_failure": "AUTH_FAILED counts a failed login (R6.3)",
    "count_msg": "MSG is outstanding until it is answered (R7.2, R7.16)",
    "count_answer": "MSG_ACK, or an ERROR regarding MSG, answers the oldest outstanding MSG (R7.16)",
    "count_deliver": "in version 2, DELIVER is unacknowledged until a DELIVER_ACK covers it (R7.12)",
    "acknowledge": "DELIVER_ACK acknowledges its DELIVER and every earlier one of the session (R7.10)",
}


def _t(
    trigger: str,
    source: str | tuple[str, ...],
    dest: str | None,
    rule: str,
    *,
    when: str | tuple[str, ...] | None = None,
    unless: str | None = None,
    after: str | None = None,
    refused: str | None = None,
    since: int = 1,
) -> dict[str, Any]:
    return {
        "trigger": trigger,
        "source": list(source) if isinstance(source, tuple) else source,
        "dest": dest,
        "conditions": list(when) if isinstance(when, tuple) else [when] if when else [],
        "unless": [unless] if unless else [],
        "after": [after] if after else [],
        "rule": rule,
        "refused": refused,
        "since": since,
    }


def _everywhere(role: str, *, but: tuple[str, ...] = ()) -> tuple[str, ...]:
    return tuple(s.name for s in STATES[role] if s.name not in but)


_SERVER_AUTHED = ("ESTABLISHED", "ROUTING", "LISTING")
_SERVER_OPEN = _everywhere("server", but=("CLOSED",))
_CLIENT_AUTHED = ("ESTABLISHED", "AWAIT_ACK", "AWAIT_USERS", "AWAIT_BYE")
_CLIENT_PRE_AUTH = ("CONNECTED", "AWAIT_HELLO_OK", "SEND_USER", "SEND_PASS", "AWAIT_AUTH")

TRANSITIONS: dict[str, list[dict[str, Any]]] = {
    "server": [
        _t("recv_HELLO", "AWAIT_HELLO", "NEGOTIATING", "R5.1"),
        _t("send_HELLO_OK", "NEGOTIATING", "AWAIT_USER", "R5.4", after="adopt_encoding"),
        _t("recv_USER", "AWAIT_USER", "AWAIT_PASS", "R6.1"),
        _t("recv_PASS", "AWAIT_PASS", "AUTHENTICATING", "R6.1"),
        _t("send_AUTH_OK", "AUTHENTICATING", "LISTING", "R6.5", when="has_more", after="authenticate"),
        _t("send_AUTH_OK", "AUTHENTICATING", "ESTABLISHED", "R6.5", after="authenticate"),
        _t("send_AUTH_FAILED", "AUTHENTICATING", "AWAIT_USER", "R6.3", when="has_attempts", after="count_failure"),
        _t("send_AUTH_FAILED", "AUTHENTICATING", "CLOSED", "R6.3", after="count_failure"),
        _t("recv_MSG", "ESTABLISHED", "ROUTING", "R7.1", after="count_msg"),
        _t("recv_MSG", "ROUTING", None, "R7.16", when="window_open", after="count_msg", since=2),
        _t("send_MSG_ACK", "ROUTING", None, "R7.16", when="more_outstanding", after="count_answer", since=2),
        _t("send_MSG_ACK", "ROUTING", "ESTABLISHED", "R7.3", after="count_answer"),
        _t("send_ERROR", "ROUTING", None, "R7.15", when=("regards_MSG", "more_outstanding"), unless="is_fatal",
           after="count_answer", since=2),
        _t("send_ERROR", "ROUTING", "ESTABLISHED", "R7.15", when="regards_MSG", unless="is_fatal",
           after="count_answer", since=2),
        _t("recv_DELIVER_ACK", _SERVER_AUTHED, None, "R7.10", when="acknowledges_delivered", after="acknowledge",
           since=2),
        _t("recv_LIST", "ESTABLISHED", "LISTING", "R8.3"),
        _t("send_USERS", "LISTING", None, "R8.3", when="has_more"),
        _t("send_USERS", "LISTING", "ESTABLISHED", "R8.3"),
        _t("recv_PING", "ESTABLISHED", None, "R9.1"),
        _t("send_PONG", _SERVER_AUTHED, None, "R9.1"),
        _t("send_PING", _SERVER_AUTHED, None, "R9.1"),
        _t("recv_PONG", _SERVER_AUTHED, None, "R9.1"),
        _t("send_DELIVER", _SERVER_AUTHED, None, "R7.5", when="deliver_window_open", after="count_deliver",
           refused="R7.12"),
        _t("send_JOINED", _SERVER_AUTHED, None, "R8.1"),
        _t("send_LEFT", _SERVER_AUTHED, None, "R8.2"),
        # Only where the server recovers: in ROUTING and LISTING the client waits for a reply,
        # and a non-fatal ERROR regarding MSG or LIST would end that wait (R7.9, R8.3).
        _t("send_ERROR", "ESTABLISHED", None, "R11.3", unless="is_fatal"),
        _t("recv_QUIT", ("AWAIT_USER", "AWAIT_PASS", "ESTABLISHED"), "CLOSING", "R10.1"),
        _t("send_BYE", _SERVER_OPEN, "CLOSED", "R10.2"),
        _t("send_ERROR", _SERVER_OPEN, "CLOSED", "R10.4", when="is_fatal"),
        _t("recv_ERROR", _everywhere("server", but=("CLOSING", "CLOSED")), "CLOSED", "R11.3", when="is_fatal"),
        _t(CLOSED_TRIGGER, _SERVER_OPEN, "CLOSED", "R10.5"),
        _t(CLOSED_TRIGGER, "CLOSED", None, "R10.5"),
    ],
    "client": [
        _t("send_HELLO", "CONNECTED", "AWAIT_HELLO_OK", "R5.1", after="offer"),
        _t("recv_HELLO_OK", "AWAIT_HELLO_OK", "SEND_USER", "R5.5", when="matches_offer", after="adopt_encoding"),
        _t("send_USER", "SEND_USER", "SEND_PASS", "R6.1"),
        _t("send_PASS", "SEND_PASS", "AWAIT_AUTH", "R6.1"),
        _t("recv_AUTH_OK", "AWAIT_AUTH", "AWAIT_USERS", "R6.5", when="has_more", after="authenticate"),
        _t("recv_AUTH_OK", "AWAIT_AUTH", "ESTABLISHED", "R6.5", after="authenticate"),
        _t("recv_AUTH_FAILED", "AWAIT_AUTH", "SEND_USER", "R6.3", when="has_attempts", after="count_failure"),
        _t("recv_AUTH_FAILED", "AWAIT_AUTH", "CLOSED", "R6.3", after="count_failure"),
        _t("send_MSG", "ESTABLISHED", "AWAIT_ACK", "R7.2", after="count_msg"),
        _t("send_MSG", "AWAIT_ACK", None, "R7.16", when="window_open", after="count_msg", since=2),
        _t("recv_MSG_ACK", "AWAIT_ACK", None, "R7.16", when="more_outstanding", after="count_answer", since=2),
        _t("recv_MSG_ACK", "AWAIT_ACK", "ESTABLISHED", "R7.3", after="count_answer"),
        _t("recv_ERROR", "AWAIT_ACK", None, "R7.16", when=("regards_MSG", "more_outstanding"), unless="is_fatal",
           after="count_answer", since=2),
        _t("recv_ERROR", "AWAIT_ACK", "ESTABLISHED", "R7.9", when="regards_MSG", unless="is_fatal",
           after="count_answer"),
        _t("send_LIST", "ESTABLISHED", "AWAIT_USERS", "R8.3"),
        _t("recv_USERS", "AWAIT_USERS", None, "R8.3", when="has_more"),
        _t("recv_USERS", "AWAIT_USERS", "ESTABLISHED", "R8.3"),
        _t("recv_ERROR", "AWAIT_USERS", "ESTABLISHED", "R8.3", when="regards_LIST", unless="is_fatal"),
        _t("send_PING", "ESTABLISHED", None, "R9.1"),
        _t("send_PONG", ("ESTABLISHED", "AWAIT_ACK", "AWAIT_USERS"), None, "R9.1"),
        _t("recv_PING", _CLIENT_AUTHED, None, "R8.4"),
        _t("recv_PONG", _CLIENT_AUTHED, None, "R9.1"),
        _t("recv_DELIVER", _CLIENT_AUTHED, None, "R8.4", when="deliver_window_open", after="count_deliver",
           refused="R7.12"),
        _t("send_DELIVER_ACK", ("ESTABLISHED", "AWAIT_ACK", "AWAIT_USERS"), None, "R7.11",
           when="acknowledges_delivered", after="acknowledge", since=2),
        _t("recv_JOINED", _CLIENT_AUTHED, None, "R8.4"),
        _t("recv_LEFT", _CLIENT_AUTHED, None, "R8.4"),
        _t("recv_ERROR", _CLIENT_AUTHED, None, "R11.2", unless="is_fatal"),
        _t("send_QUIT", ("SEND_USER", "SEND_PASS", "ESTABLISHED"), "AWAIT_BYE", "R10.1"),
        _t("recv_BYE", _everywhere("client", but=("CLOSED",)), "CLOSED", "R10.3"),
        _t("recv_ERROR", _CLIENT_PRE_AUTH, "CLOSED", "R6.7", when="is_fatal"),
        _t("recv_ERROR", _CLIENT_AUTHED, "CLOSED", "R10.4", when="is_fatal"),
        _t("send_ERROR", _everywhere("client", but=("CLOSED",)), "CLOSED", "R11.3", when="is_fatal"),
        _t(CLOSED_TRIGGER, _everywhere("client", but=("CLOSED",)), "CLOSED", "R10.5"),
        _t(CLOSED_TRIGGER, "CLOSED", None, "R10.5"),
    ],
}


class RuleTransition(Transition):
    """A transitions ``Transition`` that also carries the spec rule allowing it, and the rule a
    refusal of its guards breaks (``refused``; the allowing rule unless the row names another)."""

    def __init__(self, *args: Any, rule: str = "R12.1", refused: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rule = rule
        self.refused = refused or rule


class SpecMachine(Machine):
    transition_cls = RuleTransition


def transitions_of(role: str, version: int = PROTOCOL_VERSION) -> list[dict[str, Any]]:
    """``role``'s transitions in protocol ``version`` (its rows and every earlier version's)."""
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(f"protocol version {version} is not one of {SUPPORTED_VERSIONS}")
    return [t for t in TRANSITIONS[role] if t["since"] <= version]


def build_machine(
    role: str, model: Any = None, *, version: int = PROTOCOL_VERSION, machine_cls: type[Machine] = SpecMachine
) -> Machine:
    """The transitions machine of ``role`` (``"server"`` or ``"client"``) in ``version``.

    With ``model=None`` the machine has no model: it is the declaration the
    engine's table, the documents and the diagrams are generated from. Pass a
    model (with a method per guard name taking the transitions ``EventData``)
    to run it.
    """
    states = STATES[role]
    return machine_cls(
        model=model,
        states=[s.name for s in states],
        transitions=[{k: v for k, v in t.items() if k != "since"} for t in transitions_of(role, version)],
        initial=next(s.name for s in states if s.initial),
        auto_transitions=False,
        send_event=True,
        ignore_invalid_triggers=False,
        queued=False,
    )
