"""TLS for the reference server: its context, a self-signed certificate, and telling TLS from plaintext.

A TLS listener peeks at the first bytes of each accepted connection before
the handshake: a TLS client opens with a handshake record (0x16 0x03 ...), a
dfachat client with the magic bytes "DF" (R2.1). A plaintext client gets a
TLS alert record (which the client library recognises) and one log line,
instead of a handshake that fails in silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import shutil
import socket
import ssl
import subprocess
from collections.abc import Sequence
from pathlib import Path

from dfachat.errors import DfachatError

__all__ = [
    "TLS_ALERT",
    "looks_like_tls",
    "make_certificate",
    "peek",
    "refuse_plaintext",
    "server_context",
]

# A fatal TLS alert record (level 2, unexpected_message), sent to a plaintext client.
TLS_ALERT = bytes([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x0A])


def looks_like_tls(data: bytes) -> bool:
    """Whether ``data`` starts like a TLS record (handshake or alert), not like a dfachat frame."""
    return len(data) >= 1 and data[0] in (0x15, 0x16) and (len(data) < 2 or data[1] == 0x03)


def server_context(cert: str | Path, key: str | Path) -> ssl.SSLContext:
    """The server's TLS context (TLS 1.2 or later) from a PEM certificate chain and key."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    for path in (cert, key):
        if not Path(path).is_file():
            raise DfachatError(f"cannot read {path}: no such file; `dfachat cert` makes a self-signed "
                               "cert.pem and key.pem")
    try:
        context.load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError) as exc:
        raise DfachatError(f"cannot use the TLS certificate {cert} with the key {key}: {exc}") from None
    return context


async def peek(loop: asyncio.AbstractEventLoop, sock: socket.socket, timeout: float, size: int = 5) -> bytes:
    """The first bytes the peer sent, left unread (MSG_PEEK); b"" when it closed at once."""
    fd = sock.fileno()
    ready: asyncio.Future[None] = loop.create_future()
    loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
    try:
        async with asyncio.timeout(timeout):
            await ready
    finally:
        loop.remove_reader(fd)
    return sock.recv(size, socket.MSG_PEEK)


def refuse_plaintext(sock: socket.socket) -> None:
    """Answer a plaintext client on a TLS port with a TLS alert record, then close."""
    with contextlib.suppress(OSError):
        sock.recv(65536)  # read what it sent, so that the close is a FIN, not a reset
        sock.send(TLS_ALERT)
        sock.shutdown(socket.SHUT_WR)
    sock.close()


def make_certificate(out_dir: str | Path, hosts: Sequence[str] = ("localhost", "127.0.0.1"),
                     *, force: bool = False, days: int = 365) -> tuple[Path, Path]:
    """A self-signed certificate and its key (``cert.pem``, ``key.pem``) made by the ``openssl`` binary."""
    if not hosts:
        raise DfachatError("give at least one --host name for the certificate")
    for host in hosts:
        # openssl's own complaint about a bad subjectAltName is three lines of library internals.
        if not host or any(c.isspace() or c in ",/\\" for c in host):
            raise DfachatError(f"--host {host!r} is not a host name or IP address: give one such as "
                               "chat.example.org or 127.0.0.1")
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DfachatError(f"cannot make the directory {out}: {exc.strerror or exc}; "
                           "give --out-dir a directory you may write to") from None
    cert, key = out / "cert.pem", out / "key.pem"
    existing = [str(p) for p in (cert, key) if p.exists()]
    if existing and not force:
        raise DfachatError(f"{' and '.join(existing)} already exist; use --force to replace them")
    # the arguments first: a bad one is named whether or not openssl is there
    openssl = shutil.which("openssl")
    if openssl is None:
        raise DfachatError("the openssl program is not installed (on Debian: apt install openssl)")
    names = []
    for host in hosts:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            names.append(f"DNS:{host}")
        else:
            names.append(f"IP:{host}")
    argv = [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", str(days),
            "-subj", f"/CN={hosts[0]}", "-addext", f"subjectAltName={','.join(names)}",
            "-keyout", str(key), "-out", str(cert)]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        detail = " ".join(result.stderr.split())[-300:]
        raise DfachatError(f"openssl failed to make the certificate: {detail}")
    key.chmod(0o600)
    return cert, key
