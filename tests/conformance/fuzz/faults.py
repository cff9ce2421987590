"""Reference servers with one fault each, for the fuzzer's own tests (never shipped).

A fault is a ``ChatServer`` subclass: message-level faults rewrite what a
connection sends (:class:`RewritingConnection`), push faults rewrite the
frames it queues. Each names the check the fuzzer must fail.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from dfachat.codec import decode_frame, encode
from dfachat.codec.messages import Message  # type: ignore[attr-defined]
from dfachat.server import ChatServer
from dfachat.server.app import Connection
from dfachat.spec import DeliverFlags, ErrorCode

Rewrite = Callable[[Connection, Message], list[Message]]


class RewritingConnection(Connection):
    """A connection whose outgoing frames pass through the server's ``rewrite``."""

    __slots__ = ()

    def queue(self, frame: bytes) -> None:
        rewrite = getattr(self.server, "rewrite", None)
        if rewrite is None:
            return super().queue(frame)
        try:
            message = decode_frame(frame, self.session.encoding)
        except Exception:  # noqa: BLE001 - not ours to judge
            return super().queue(frame)
        for out in rewrite(self, message):
            super().queue(out if isinstance(out, bytes) else encode(out, self.session.encoding))
        return None


class FaultyServer(ChatServer):
    rewrite: Rewrite | None = None

    def _new_connection(self) -> Connection:
        conn = RewritingConnection(self, self._next_conn_id)
        self._next_conn_id += 1
        return conn


def _only(name: str, change: Callable[[Connection, Message], list[Any]]) -> Rewrite:
    return lambda conn, m: change(conn, m) if name == m.NAME else [m]


class AcceptsWrongPassword(FaultyServer):
    async def _login_failed(self, conn: Connection, name: str) -> None:
        account = self.store.lookup(name.casefold())
        if account is not None:
            self._login(conn, account.name, account.key)
        else:
            await super()._login_failed(conn, name)


class SkipsJoined(FaultyServer):
    rewrite = staticmethod(_only("JOINED", lambda c, m: []))


class LeftTwice(FaultyServer):
    rewrite = staticmethod(_only("LEFT", lambda c, m: [m, m]))


class DirectedToEveryone(FaultyServer):
    def on_MSG(self, conn: Connection, msg: Message) -> None:
        if msg.recipients:
            others = [c for c in self.online.values() if c is not conn and c.session.user not in msg.recipients]
            for other in others:
                other.queue(encode(_deliver(conn, msg), other.session.encoding))
        super().on_MSG(conn, msg)


def _deliver(conn: Connection, msg: Message) -> Message:
    from dfachat.codec.messages import DELIVER  # type: ignore[attr-defined]

    return DELIVER(server_msg_id=2**41, timestamp_ms=1, flags=DeliverFlags.DIRECTED,
                   sender=conn.session.user or "", text=msg.text)


class DropsLongTexts(FaultyServer):
    rewrite = staticmethod(_only("DELIVER", lambda c, m: [] if len(m.text) > 100 else [m]))


def _bad_crc(frame: bytes) -> bytes:
    return frame[:-4] + struct.pack(">I", struct.unpack(">I", frame[-4:])[0] ^ 1)


class WrongCrcOnDeliver(FaultyServer):
    rewrite = staticmethod(_only("DELIVER", lambda c, m: [_bad_crc(encode(m, c.session.encoding))]))


class MangledWithoutLossy(FaultyServer):
    rewrite = staticmethod(_only("DELIVER", lambda c, m: [
        m.replace(text=m.text.encode("ascii", "replace").decode("ascii"), flags=m.flags & ~DeliverFlags.LOSSY)]))


class ClosesOnIllegal(FaultyServer):
    def protocol_violation(self, conn: Connection, event: Any) -> None:
        if not event.fatal:
            conn.close_transport()
            return
        super().protocol_violation(conn, event)


class WrongErrorCode(FaultyServer):
    rewrite = staticmethod(_only("ERROR", lambda c, m: [
        m.replace(code=ErrorCode.MALFORMED_PAYLOAD if m.code != ErrorCode.MALFORMED_PAYLOAD else ErrorCode.FIELD_INVALID)]))


class NoByeAfterQuit(FaultyServer):
    rewrite = staticmethod(_only("BYE", lambda c, m: []))


class WrongSender(FaultyServer):
    rewrite = staticmethod(_only("DELIVER", lambda c, m: [m.replace(sender=c.session.user or m.sender)]))


class DuplicatesDelivery(FaultyServer):
    rewrite = staticmethod(_only("DELIVER", lambda c, m: [m, m]))


class LosesStored(FaultyServer):
    def _deliver_stored(self, conn: Connection, key: str) -> None:
        self.store.forget(item.id for item in self.store.stored_for(key))


class WrongOnlineList(FaultyServer):
    rewrite = staticmethod(lambda c, m: [m.replace(online=m.online[1:])] if m.NAME in ("USERS", "AUTH_OK")
                           and len(m.online) > 1 else [m])


class DeliversAfterQuit(FaultyServer):
    """QUIT is answered, but the session stays on the online list (no LEFT, still routed to)."""

    def on_QUIT(self, conn: Connection, _: Message) -> None:
        from dfachat.codec.messages import BYE  # type: ignore[attr-defined]
        from dfachat.spec import ByeReason

        conn.send(BYE(reason=ByeReason.QUIT))
        conn.flush()


class IgnoresIdleTimeout(FaultyServer):
    def sweep(self) -> None:
        pass


FAULTS: dict[str, tuple[type[ChatServer], str]] = {
    "accepts a wrong password": (AcceptsWrongPassword, "R6"),
    "skips JOINED": (SkipsJoined, "R8.1"),
    "sends LEFT twice": (LeftTwice, "R8.2"),
    "directed message to everyone": (DirectedToEveryone, "R7.1"),
    "drops long texts": (DropsLongTexts, "R7"),
    "wrong CRC on DELIVER": (WrongCrcOnDeliver, "R2.5"),
    "mangles text without LOSSY": (MangledWithoutLossy, "R3"),
    "closes on a non-fatal error": (ClosesOnIllegal, "R11.3"),
    "wrong error code": (WrongErrorCode, "R11.1"),
    "BYE missing after QUIT": (NoByeAfterQuit, "R10.2"),
    "DELIVER with the wrong sender": (WrongSender, "R7.5"),
    "duplicates a delivery": (DuplicatesDelivery, "R7.6"),
    "loses stored messages": (LosesStored, "R7.7"),
    "wrong online list": (WrongOnlineList, "R"),
    "keeps a session after QUIT": (DeliversAfterQuit, "R"),
    "ignores the idle timeout": (IgnoresIdleTimeout, "R9.2"),
}
