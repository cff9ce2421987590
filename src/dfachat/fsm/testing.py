"""``SessionPair``: a client and a server engine joined in memory, no sockets.

Used by the tests, the model checker and the diagram scenarios to drive whole
conversations through the real engines.
"""

from __future__ import annotations

from dfachat.codec.messages import Message
from dfachat.fsm.events import Event
from dfachat.fsm.session import ClientSession, ServerSession
from dfachat.spec import LIMITS, Limits

__all__ = ["SessionPair"]


class SessionPair:
    """``client_send`` returns what the server's engine made of the bytes, and vice versa."""

    def __init__(self, *, limits: Limits = LIMITS) -> None:
        self.client = ClientSession(limits=limits)
        self.server = ServerSession(limits=limits)
        self.log: list[tuple[str, Message]] = []  # (sender role, message), in order

    def client_send(self, message: Message) -> list[Event]:
        data = self.client.send(message)
        self.log.append(("client", message))
        return self.server.receive_data(data)

    def server_send(self, message: Message) -> list[Event]:
        data = self.server.send(message)
        self.log.append(("server", message))
        return self.client.receive_data(data)

    def states(self) -> tuple[str, str]:
        return self.client.state, self.server.state
