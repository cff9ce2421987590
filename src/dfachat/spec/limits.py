"""Protocol constants and limits: each number is stated here once.

The rules in :mod:`dfachat.spec.rules` quote these by name; the server
announces the negotiable ones in HELLO_OK; the codec enforces the field
bounds; the engine takes a :class:`Limits` as a constructor argument.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["DEFAULT_PORT", "LIMITS", "MAGIC", "PROTOCOL_VERSION", "SUPPORTED_VERSIONS", "Limits"]

MAGIC = b"DF"
PROTOCOL_VERSION = 2  # the newest version; HELLO itself travels in version 1 (R5.2)
SUPPORTED_VERSIONS = (1, 2)
DEFAULT_PORT = 33318


@dataclass(frozen=True, slots=True)
class Limits:
    """Every bound of the protocol. Frozen: pass a new one to change a limit."""

    default_port: int = DEFAULT_PORT
    max_frame: int = 65536  # bytes, header and checksum included (R2.4)
    max_name: int = 32  # characters in a user name (R4.1)
    max_text: int = 4096  # code points in a chat text (R4.2)
    max_recipients: int = 32  # names in one MSG (R4.3)
    max_password: int = 256  # code points (R4.4)
    max_versions: int = 8  # entries in HELLO (R4.5)
    max_software: int = 64  # characters of a software name (R4.8)
    max_encoding_name: int = 16  # characters of an encoding name (R4.8)
    max_names_per_frame: int = 1024  # names in one AUTH_OK or USERS frame (R4.9)
    max_reason: int = 512  # characters of an ERROR's reason text (R4.12)
    login_attempts: int = 3  # failed logins before the server closes (R6.3)
    backoff_base_ms: int = 250  # first failed-login delay (R6.4)
    backoff_max_ms: int = 8000  # cap of that delay (R6.4)
    backoff_window_s: int = 900  # how long failures are remembered (R6.4)
    idle_timeout_s: int = 120  # silence before IDLE_TIMEOUT (R6.8, R9.2)
    max_output_buffer: int = 1 << 20  # bytes queued per session before SLOW_CONSUMER (R9.3)
    max_per_address: int = 64  # connections open at once from one peer address (R1.5)
    max_bytes_per_s: int = 256 * 1024  # refill rate of a session's receive token bucket (R9.4)
    max_burst_bytes: int = 1 << 20  # size of that bucket, at least max_frame (R9.4)
    max_logins_per_minute: int = 30  # PASS frames from one peer address in any 60 s (R9.5)
    deliver_window: int = 64  # unacknowledged DELIVERs per session, version 2 (R7.12)
    msg_window: int = 16  # outstanding MSGs per session, version 2 (R7.16)
    max_inbox_messages: int = 20_000  # messages kept for one recipient (R7.14)
    max_inbox_bytes: int = 32 << 20  # bytes of text kept for one recipient (R7.14)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


LIMITS = Limits()
