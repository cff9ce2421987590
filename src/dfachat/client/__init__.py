"""The reference clients around :class:`dfachat.fsm.ClientSession`.

* :func:`connect` / :func:`open_chat` and :class:`Chat` -- the asyncio library;
* :func:`tls_context` -- the ``ssl`` argument of those for a TLS server (certificates checked);
* the events a chat yields: :class:`Delivery`, :class:`Joined`, :class:`Left`,
  :class:`Notice`, :class:`Closed`; :class:`SendResult` for a MSG_ACK.
"""

from dfachat.client.library import (
    Chat,
    ChatEvent,
    Closed,
    Delivery,
    Joined,
    Left,
    Notice,
    SendResult,
    connect,
    open_chat,
    tls_context,
)
from dfachat.errors import (
    AuthenticationFailed,
    ClientError,
    ConnectionFailed,
    MessageRejected,
    SessionEnded,
)

__all__ = [
    "AuthenticationFailed",
    "Chat",
    "ChatEvent",
    "ClientError",
    "Closed",
    "ConnectionFailed",
    "Delivery",
    "Joined",
    "Left",
    "MessageRejected",
    "Notice",
    "SendResult",
    "SessionEnded",
    "connect",
    "open_chat",
    "tls_context",
]
