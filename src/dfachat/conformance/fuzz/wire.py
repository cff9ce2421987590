"""Sockets to the target and the process under test (``--target-cmd``).

The fuzzer faces a black box: it connects, writes bytes and reads what
arrives, with bounded waits, nothing else. Connections to a loopback target
come from rotating loopback source addresses (127.0.0.2 ...), because the spec
lets a server bound logins (R9.5), back-off (R6.4) and connections (R1.5) per
peer address, and a fuzzer logs in far more often than one person would.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field

from dfachat.errors import DfachatError

__all__ = ["FuzzError", "Target", "TargetProcess", "parse_address"]


class FuzzError(DfachatError):
    """The fuzzer cannot run as asked: bad arguments, an unreachable target, a target that won't start."""

    rule, code_name = "R1.1", "INTERNAL_ERROR"


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as a pair; FuzzError naming the problem otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise FuzzError(f"target {text!r} is not HOST:PORT (a port from 1 to 65535)")
    return host.strip("[]"), int(port)


@dataclass(slots=True)
class Target:
    """Where the implementation under test listens, and how to reach it."""

    host: str
    port: int
    tls: ssl.SSLContext | None = None
    spread_sources: bool = True  # rotate loopback source addresses (see the module docstring)
    connect_timeout: float = 5.0
    _next_source: int = field(default=0, repr=False)

    def __str__(self) -> str:
        return f"{self.host}:{self.port}{' (TLS)' if self.tls else ''}"

    def _loopback_v4(self) -> bool:
        try:
            return ipaddress.ip_address(socket.gethostbyname(self.host)).is_loopback
        except (OSError, ValueError):
            return False

    def connect(self) -> socket.socket:
        """A new connection (TLS-wrapped with ``tls``); FuzzError when the target refuses it."""
        source = None
        if self.spread_sources and sys.platform.startswith("linux") and self._loopback_v4():
            # 127.1.0.1 onwards: millions of loopback addresses, so one is rarely seen twice
            n = self._next_source = self._next_source + 1
            source = (f"127.{1 + (n // 65025) % 200}.{(n // 255) % 255}.{1 + n % 255}", 0)
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout, source_address=source)
        except OSError as exc:
            if source is not None:  # the address is not there after all: go on without spreading
                self.spread_sources = False
                return self.connect()
            raise FuzzError(f"cannot connect to {self}: {exc.strerror or exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls is not None:
            try:
                sock = self.tls.wrap_socket(sock, server_hostname=self.host)
            except (ssl.SSLError, OSError) as exc:
                sock.close()
                raise FuzzError(f"TLS handshake with {self} failed: {exc}") from None
        sock.setblocking(False)
        return sock

    def wait_ready(self, timeout: float) -> None:
        """Until the port accepts a TCP connection (bounded); FuzzError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() >= deadline:
                    raise FuzzError(f"{self} accepted no connection within {timeout:g} s") from None
                time.sleep(0.05)


class TargetProcess:
    """``--target-cmd``: start the implementation under test, wait until it listens, stop it after."""

    def __init__(self, command: str, target: Target, *, start_timeout: float = 20.0, stop_timeout: float = 5.0) -> None:
        try:
            self.argv = shlex.split(command)
        except ValueError as exc:
            raise FuzzError(f"--target-cmd {command!r}: {exc}") from None
        if not self.argv:
            raise FuzzError("--target-cmd is empty")
        self.command = command
        self.target = target
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> TargetProcess:
        try:
            self.process = subprocess.Popen(  # noqa: S603 - the user's own command line
                self.argv, stdin=subprocess.DEVNULL, start_new_session=True
            )
        except OSError as exc:
            raise FuzzError(f"cannot start --target-cmd {self.command!r}: {exc.strerror or exc}") from None
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.process.poll() is not None:
                raise FuzzError(
                    f"--target-cmd {self.command!r} exited with status {self.process.returncode} before "
                    f"{self.target} accepted a connection"
                )
            try:
                self.target.wait_ready(min(0.2, max(0.0, deadline - time.monotonic())))
                return self
            except FuzzError:
                if time.monotonic() >= deadline:
                    self.stop()
                    raise FuzzError(
                        f"--target-cmd started, but {self.target} accepted no connection within "
                        f"{self.start_timeout:g} s"
                    ) from None

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after ``stop_timeout``; the exit status."""
        process = self.process
        if process is None or process.poll() is not None:
            return None if process is None else process.returncode
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            return process.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            return process.wait(self.stop_timeout)
