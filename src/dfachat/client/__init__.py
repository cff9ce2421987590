"""The reference clients around :class:`dfachat.fsm.ClientSession`.

* :func:`connect` / :func:`open_chat` and :class:`Chat` -- the asyncio library;
* :func:`tls_context` -- the ``ssl`` argument of those for a TLS server (certificates checked);
* the events a chat yields: :class:`Delivery`, :class:`Joined`, :class:`Left`,
  :class:`Notice`, :class:`Closed`; :class:`SendResult` for a MSG_ACK;
* :class:`TakenRecord` -- the highest message id the application has taken (R7.11), in
  memory or a file (:func:`taken_path_for` is where the reference clients keep it).
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
    TakenRecord,
    connect,
    open_chat,
    taken_path_for,
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
    "TakenRecord",
    "connect",
    "open_chat",
    "taken_path_for",
    "tls_context",
]
