"""Faulty clients for the client-mode fuzzer's tests: the reference terminal client, one behaviour broken.

    python faulty_clients.py FAULT [dfachat client options ...]

patches one method of :class:`dfachat.client.library.Chat` (in this process
only: nothing in the product has a fault switch), then runs ``dfachat client``
with the remaining arguments. :data:`FAULTS` names each fault, what it does
wrong, and the rules the fuzzer must cite for it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dfachat.client.library import Chat
from dfachat.codec import encode
from dfachat.codec.messages import DELIVER, ERROR, LIST, MSG, PASS, PING, QUIT  # type: ignore[attr-defined]
from dfachat.fsm import ProtocolViolation
from dfachat.spec import ErrorFlags


@dataclass(frozen=True)
class Fault:
    what: str
    rules: frozenset[str]  # a failed check citing one of these catches it
    patch: Callable[[], None]


def _raw(chat: Chat, message: Any) -> None:
    """Write ``message`` past the client's engine, which would refuse it."""
    chat._writer.write(encode(message, chat.encoding))


_write, _handle, _handshake_failure = Chat._write, Chat._handle, Chat._handshake_failure


def _no_pong() -> None:
    def handle(self: Chat, event: Any) -> None:
        if not isinstance(event, PING):
            _handle(self, event)

    Chat._handle = handle  # type: ignore[method-assign]


def _msg_before_auth() -> None:
    def write(self: Chat, message: Any) -> None:
        _write(self, message)
        if isinstance(message, PASS):
            _raw(self, MSG(msg_id=99, recipients=(), text="too early"))

    Chat._write = write  # type: ignore[method-assign]


def _quits_after_fatal_error() -> None:
    """Says QUIT to a fatal ERROR instead of just closing: keeps sending after the session ended."""

    def polite(self: Chat, event: Any) -> None:
        if isinstance(event, ERROR) and event.flags & ErrorFlags.FATAL:
            _raw(self, QUIT())

    def handle(self: Chat, event: Any) -> None:
        polite(self, event)
        _handle(self, event)

    def handshake_failure(self: Chat, event: Any) -> None:
        polite(self, event)
        _handshake_failure(self, event)

    Chat._handle = handle  # type: ignore[method-assign]
    Chat._handshake_failure = handshake_failure  # type: ignore[method-assign]


def _bad_crc() -> None:
    def write(self: Chat, message: Any) -> None:
        if isinstance(message, MSG):
            data = self.session.send(message)
            self._writer.write(data[:-1] + bytes([data[-1] ^ 0x5A]))
        else:
            _write(self, message)

    Chat._write = write  # type: ignore[method-assign]


def _crash_on_utf16_deliver() -> None:
    def handle(self: Chat, event: Any) -> None:
        if isinstance(event, DELIVER) and self.encoding == "utf-16":
            os._exit(3)  # dies on the spot: no ERROR, no QUIT
        _handle(self, event)

    Chat._handle = handle  # type: ignore[method-assign]


def _sends_after_quit() -> None:
    def write(self: Chat, message: Any) -> None:
        _write(self, message)
        if isinstance(message, QUIT):
            _raw(self, LIST())

    Chat._write = write  # type: ignore[method-assign]


def _survives_malformed() -> None:
    """Ignores malformed and unexpected frames: no fatal ERROR, no close (the engine stops reading)."""

    def handle(self: Chat, event: Any) -> None:
        if not isinstance(event, ProtocolViolation):
            _handle(self, event)

    def handshake_failure(self: Chat, event: Any) -> None:
        if not isinstance(event, ProtocolViolation):
            _handshake_failure(self, event)

    Chat._handle = handle  # type: ignore[method-assign]
    Chat._handshake_failure = handshake_failure  # type: ignore[method-assign]


def _two_msgs_outstanding() -> None:
    def write(self: Chat, message: Any) -> None:
        _write(self, message)
        if isinstance(message, MSG):
            _raw(self, message.replace(msg_id=(message.msg_id + 1000) & 0xFFFFFFFF))

    Chat._write = write  # type: ignore[method-assign]


def _utf16_little_endian() -> None:
    """Writes and reads utf-16 little-endian, as if the spec's utf-16 were the platform's (R3.3)."""
    from dfachat.codec import frames

    frames._CODECS["utf-16"] = "utf-16-le"


FAULTS: dict[str, Fault] = {
    "no-pong": Fault("never answers PING", frozenset({"R9.1"}), _no_pong),
    "msg-before-auth": Fault("sends MSG before AUTH_OK", frozenset({"R6.1"}), _msg_before_auth),
    "quits-after-fatal-error": Fault(
        "answers a fatal ERROR with QUIT", frozenset({"R6.7", "R10.4"}), _quits_after_fatal_error
    ),
    "bad-crc": Fault("sends MSG frames with a wrong CRC-32", frozenset({"R2.5"}), _bad_crc),
    # Which legal frame a silent exit is blamed on is a guess among those not yet shown processed
    # (client_play._blame): a presence rule, whichever the guess.
    "crash-on-utf16-deliver": Fault(
        "exits without a word on a DELIVER in utf-16", frozenset({"R8.4/survives", "R8.3/survives"}),
        _crash_on_utf16_deliver,
    ),
    "sends-after-quit": Fault("sends LIST after QUIT", frozenset({"R10.1"}), _sends_after_quit),
    "survives-malformed": Fault(
        "neither answers nor closes after a malformed or unexpected frame",
        frozenset({"R11.3", "R2.8"}), _survives_malformed,
    ),
    "utf16-little-endian": Fault(
        "sends utf-16 text little-endian", frozenset({"R3.2", "R3.4", "R4.4"}), _utf16_little_endian
    ),
    "two-msgs-outstanding": Fault(
        "sends a second MSG before the first one's MSG_ACK", frozenset({"R7.2"}), _two_msgs_outstanding
    ),
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in FAULTS:
        print(f"usage: faulty_clients.py {{{','.join(FAULTS)}}} [dfachat client options]", file=sys.stderr)
        return 2
    FAULTS[argv[0]].patch()
    from dfachat.cli import main as dfachat_main

    return dfachat_main(["client", *argv[1:]])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
