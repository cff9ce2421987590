"""Where a MSG goes, and what each recipient sees: pure functions, no I/O.

The server runs these, and so will the model checker and the fuzzer's
reference model, so the routing rules (R7.1-R7.8, R3.5, R3.6) are written
once. Nothing here knows about sockets, sessions or SQLite: the caller hands
in who is online and a way to look up accounts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from dfachat.spec import ENCODINGS, REPLACEMENT, Outcome

__all__ = ["Route", "reencode", "route"]

T = TypeVar("T")  # whatever the caller uses for an online user (a connection, a model client)


def reencode(text: str, encoding: str) -> tuple[str, int]:
    """``text`` as a session in ``encoding`` will receive it, and how many characters were replaced (R3.5).

    Each character the encoding cannot represent becomes ``REPLACEMENT``;
    nothing else changes, and nothing is dropped or cut.
    """
    spec = ENCODINGS[encoding]
    if spec.universal:
        return text, 0
    try:
        text.encode(spec.codec)
        return text, 0
    except UnicodeEncodeError:
        pass
    out: list[str] = []
    replaced = 0
    for char in text:
        try:
            char.encode(spec.codec)
            out.append(char)
        except UnicodeEncodeError:
            out.append(REPLACEMENT)
            replaced += 1
    return "".join(out), replaced


@dataclass(slots=True)
class Route(Generic[T]):
    """The plan for one MSG: who gets it now, who gets it later, what the sender is told."""

    directed: bool
    live: list[T] = field(default_factory=list)  # online recipients, each once
    stored: list[tuple[str, str]] = field(default_factory=list)  # (key, name) of offline accounts
    # per named recipient, in the MSG's order (R7.4); LOSSY is decided per encoding by the caller
    results: list[tuple[str, Outcome]] = field(default_factory=list)


def route(
    sender_key: str,
    recipients: Iterable[str],
    online: Mapping[str, T],
    account_name: Callable[[str], str | None],
    key_of: Callable[[str], str],
) -> Route[T]:
    """Route a MSG from ``sender_key`` to ``recipients`` (none: everyone online but the sender).

    ``online`` maps account keys to online users; ``account_name(key)`` gives
    a registered account's name or None; ``key_of(name)`` folds a name to its
    key (R4.1). A directed recipient is DELIVERED (live; the caller may turn it
    into LOSSY), QUEUED (registered, offline: to store) or UNKNOWN_USER (R7.4).
    """
    names = tuple(recipients)
    if not names:  # broadcast: never to the sender, never stored (R7.7, R7.8)
        return Route(False, [user for key, user in online.items() if key != sender_key])
    plan: Route[T] = Route(True)
    for name in names:
        key = key_of(name)
        user = online.get(key)
        if user is not None:
            plan.live.append(user)
            plan.results.append((name, Outcome.DELIVERED))
            continue
        registered = account_name(key)
        if registered is None:
            plan.results.append((name, Outcome.UNKNOWN_USER))
        else:
            plan.stored.append((key, registered))
            plan.results.append((name, Outcome.QUEUED))
    return plan
