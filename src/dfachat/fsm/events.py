"""What a session hands its wrapper besides messages.

A received, legal message is itself the event (``MSG``, ``DELIVER`` ...).
Two more kinds exist: :class:`ProtocolViolation` when the peer broke a rule,
and :class:`ConnectionClosed` when the transport ended.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

from dfachat.codec.messages import Message
from dfachat.errors import DfachatError, FrameError

if TYPE_CHECKING:
    from dfachat.codec.messages import Message as ERROR  # the generated ERROR class

__all__ = ["ConnectionClosed", "Event", "ProtocolViolation", "SessionEvent"]


class SessionEvent:
    """Base of the events that are not messages."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class ProtocolViolation(SessionEvent):
    """The peer broke a rule: a malformed frame, or a message its state does not allow.

    ``reply`` is the ERROR frame the spec says to send back. When ``fatal`` the
    session must close after sending it (R10.4): the engine stops reading, and
    sending ``reply`` moves it to CLOSED. Otherwise the state is unchanged and
    the session goes on (R11.3).
    """

    error: DfachatError
    state: str
    message_type: str | None
    fatal: bool
    reply: ERROR

    @property
    def rule(self) -> str:
        return self.error.rule

    def __str__(self) -> str:
        what = self.message_type or "frame"
        return f"{what} in {self.state}: {self.error.detail} [{self.rule}]"


@dataclass(frozen=True, slots=True)
class ConnectionClosed(SessionEvent):
    """The transport ended. ``clean`` when the session had finished closing (BYE, QUIT or a
    fatal ERROR); ``error`` is the TruncatedFrame when it ended inside a frame (R2.9)."""

    clean: bool
    error: FrameError | None = None


Event = Union[Message, ProtocolViolation, ConnectionClosed]  # noqa: UP007 - a runtime alias
