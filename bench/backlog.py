"""Backlog: one user logs in to a 10,000-message inbox while other sessions PING.

    python bench/backlog.py [--messages 10000] [--pingers 20] [--ping-ms 10] [--protocol-version 1,2]

The inbox is filled while its user is offline, through the server's own
store (:meth:`dfachat.server.store.Store.store`, flags STORED, as the server
stores a MSG for an offline recipient), once, into a template database that
each version's run copies. Then, per protocol version (``--protocol-version``,
default ``1,2``, version 1 for comparison), three processes on 127.0.0.1:

* the reference server in a child (``bench/fanout.py --serve-chat DB``, as
  fan-out runs it), whose RSS is read from ``/proc/<pid>/status``;
* the pingers, another child (``bench/backlog.py --ping ...``): ``--pingers``
  sessions, logged in through the real protocol in the version under test,
  each sending a PING every ``--ping-ms`` ms (stop-and-wait: the next when
  the PONG is back and the time is due) and timing the round trip;
* this process: the user whose inbox it is logs in (HELLO offering exactly
  the version under test, USER, PASS) and reads the backlog. In version 1
  the server sends the whole inbox at once after AUTH_OK (R7.7); in version 2
  at most the window (HELLO_OK's ``deliver_window``) is unacknowledged, and
  this client acknowledges as a real one does: one cumulative DELIVER_ACK for
  the newest DELIVER of each batch read from the socket (R7.10, R7.12).

Checked, from the DELIVERs' texts (each carries its index in the backlog):
every message delivered once (``delivered``, ``duplicates``, ``missing``),
in order (``reordered``: a DELIVER whose index is below one already seen),
each flagged STORED and none REDELIVERED (first login), and, after a
PING/PONG barrier on the user's session and the server's stop, how many rows
the store still holds (version 2: 0, everything was acknowledged).
Measured: time from HELLO to the last DELIVER (``deliver_s``); the pingers'
round trips while the backlog was being delivered (p50, p99, max), and for
reference over one idle second before it; the server's RSS before the login
and its peak during the backlog (the kernel's VmHWM, reset through
``/proc/<pid>/clear_refs`` before the login, and samples every 20 ms where
that is not allowed), ``rss_growth_mb``.

The last line is one JSON object; its targets (issue 14) are for the newest
version measured: everything delivered in order, PING p99 under 50 ms, RSS
growth under 20 MB (``meets_targets``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import selectors
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dfachat.codec import encode
from dfachat.codec.messages import (  # type: ignore[attr-defined]
    AUTH_OK,
    DELIVER_ACK,
    HELLO_OK,
    JOINED,
    PASS,
    PING,
    USER,
    USERS,
)
from dfachat.fsm import ClientSession
from dfachat.spec import SUPPORTED_VERSIONS, DeliverFlags, ListFlags
from fanout import (
    BENCH,
    PASSWORD,
    ServerProcess,
    account_name,
    chat_server,
    close_all,
    create_accounts,
    drain_joined,
    open_clients,
    raise_nofile,
    recv,
    send,
)

HOST = "127.0.0.1"
_HEADER = struct.Struct(">2sBBL")  # magic, version, type, payload length; then payload, CRC-32
_OVERHEAD = 12
_DELIVER_HEAD = struct.Struct(">QQBB")  # server_msg_id, timestamp_ms, flags, sender length
_TEXT_LEN = struct.Struct(">H")
_DELIVER, _PONG = 0x45, 0x71
_FATAL = {0x49: "BYE", 0x7F: "ERROR"}
_FILLER = " backlog filler: the quick brown fox jumps over the lazy dog, again and again."
_INDEX_DIGITS = 6
TARGET = 0  # account_name(TARGET) owns the backlog
SENDER = 1  # account_name(SENDER) sent it; the pingers are the accounts after it


def backlog_text(i: int) -> str:
    return f"{i:0{_INDEX_DIGITS}d}{_FILLER}"


# --- setup ---------------------------------------------------------------------------------
def fill_backlog(db: Path, messages: int) -> None:
    """``messages`` MSGs from SENDER to TARGET, stored as the server stores them for an offline user."""
    from dfachat.server import KdfParams, Store
    from dfachat.server.storage import name_key

    store = Store(db, kdf=KdfParams(n=1024))
    try:
        key, sender = name_key(account_name(TARGET)), account_name(SENDER)
        now_ms = int(time.time() * 1000)
        for i in range(messages):
            store.store([key], store.next_msg_id(), now_ms + i, sender, int(DeliverFlags.STORED), backlog_text(i))
    finally:
        store.close()


def stored_rows(db: Path) -> int:
    from dfachat.server import KdfParams, Store

    store = Store(db, kdf=KdfParams(n=1024))
    try:
        return store.stored_count()
    finally:
        store.close()


# --- the pingers' process ----------------------------------------------------------------------
def serve_pings(port: int, count: int, interval_ms: float, version: int) -> int:
    """The pingers' child: log in, print ``ready``, PING until a line on stdin, print the samples.

    Each sample is ``[sent_ns, rtt_ns]`` on the monotonic clock, which every
    process on the machine shares.
    """
    raise_nofile()
    names = [account_name(SENDER + 1 + i) for i in range(count)]
    clients = open_clients(port, names, login=True, versions=(version,))
    drain_joined(clients, count * (count - 1) // 2)
    gc.collect()
    gc.freeze()
    gc.disable()  # the pingers' own pauses out of the round trips
    print("ready", flush=True)
    sel = selectors.DefaultSelector()
    for c in clients:
        sel.register(c.sock, selectors.EVENT_READ, c)
    sel.register(sys.stdin, selectors.EVENT_READ, None)
    interval = int(interval_ms * 1e6)
    clock = time.monotonic_ns
    start = clock()
    for i, c in enumerate(clients):
        c.due = start + i * interval // count  # spread evenly over the interval
    samples: list[tuple[int, int]] = []
    nonce = 0
    running = True
    while running:
        now = clock()
        timeout = interval / 1e9
        for c in clients:
            if not c.waiting:
                if now >= c.due:
                    nonce = (nonce + 1) & 0xFFFFFFFF
                    c.waiting = now
                    c.due = max(c.due + interval, now)
                    send(c.sock, encode(PING(nonce=nonce), "utf-8", c.version))
                else:
                    timeout = min(timeout, (c.due - now) / 1e9)
        for key, _ in sel.select(max(0.0, timeout)):
            c = key.data
            if c is None:
                running = False
                break
            data = recv(c.sock)
            t = clock()
            for frame in c.frames(data):
                mtype = frame[3]
                if mtype == _PONG and c.waiting:
                    samples.append((c.waiting, t - c.waiting))
                    c.waiting = 0
                elif mtype in _FATAL:
                    raise RuntimeError(f"{c.name}: the server sent {_FATAL[mtype]}")
    sel.close()
    close_all(clients)
    print(json.dumps(samples, separators=(",", ":")), flush=True)
    return 0


class Pingers:
    def __init__(self, port: int, count: int, interval_ms: float, version: int) -> None:
        argv = [sys.executable, str(BENCH / "backlog.py"), "--ping", str(port), str(count), str(interval_ms), str(version)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.proc.kill()
            raise RuntimeError(f"the pingers did not start (they printed {line!r})")

    def stop(self, timeout: float = 30.0) -> list[tuple[int, int]]:
        out, _ = self.proc.communicate("stop\n", timeout=timeout)
        if self.proc.returncode:
            raise RuntimeError(f"the pingers failed ({self.proc.returncode})")
        return [tuple(s) for s in json.loads(out.strip().splitlines()[-1])]  # type: ignore[misc]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# --- the user with the backlog ----------------------------------------------------------------
def _status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} for process {pid}")


def reset_peak_rss(pid: int) -> bool:
    """Reset the kernel's peak RSS (VmHWM) of ``pid`` to its RSS now; False where it cannot."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def take_backlog(server: ServerProcess, messages: int, version: int, timeout: float) -> dict[str, Any]:
    """Log in as TARGET and read the whole backlog; counts, order, timings and the server's RSS."""
    import socket

    sock = socket.create_connection((HOST, server.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    session: ClientSession | None = ClientSession()
    seen = bytearray(messages)  # deliveries per index, saturating at 255
    delivered = duplicates = reordered = not_stored = redelivered = foreign = acks = 0
    highest = -1
    pending = b""
    clock = time.monotonic_ns
    hwm = reset_peak_rss(server.pid)  # the kernel's own peak: no burst falls between two samples
    rss0 = rss_peak = server.rss()
    next_rss = 0
    start = clock()
    first = last = 0
    deadline = start + int(timeout * 1e9)
    send(sock, session.hello(software="dfachat-bench", versions=(version,)))
    session_version = 0
    try:
        while delivered < messages or session is not None:
            now = clock()
            if now > deadline:
                break
            if now >= next_rss:
                rss_peak = max(rss_peak, server.rss())
                next_rss = now + 20_000_000
            if not sel.select(0.02):
                continue
            data = recv(sock)
            t = clock()
            buf = pending + data if pending else data
            pos, size, newest = 0, len(buf), 0
            while size - pos >= _OVERHEAD:
                end = pos + _OVERHEAD + _HEADER.unpack_from(buf, pos)[3]
                if end > size:
                    break
                mtype = buf[pos + 3]
                if session is not None:  # the handshake, through the engine
                    for event in session.receive_data(buf[pos:end]):
                        if isinstance(event, HELLO_OK):
                            session_version = event.version
                            send(sock, session.send(USER(name=account_name(TARGET))) + session.send(PASS(password=PASSWORD)))
                        elif isinstance(event, AUTH_OK | USERS):
                            if not event.flags & ListFlags.MORE:
                                session = None  # raw frames from here on
                        elif not isinstance(event, JOINED):
                            raise RuntimeError(f"unexpected {event!r} while logging in")
                elif mtype == _DELIVER:
                    server_msg_id, _, flags, sender_len = _DELIVER_HEAD.unpack_from(buf, pos + 8)
                    at = pos + 28 + sender_len
                    try:
                        index = int(buf[at : at + _INDEX_DIGITS])
                    except ValueError:
                        index = -1
                    if not 0 <= index < messages:
                        foreign += 1
                    else:
                        if seen[index]:
                            duplicates += 1
                        else:
                            delivered += 1
                        seen[index] = min(255, seen[index] + 1)
                        if index < highest:
                            reordered += 1
                        highest = max(highest, index)
                    if not flags & DeliverFlags.STORED:
                        not_stored += 1
                    if flags & DeliverFlags.REDELIVERED:
                        redelivered += 1
                    first = first or t
                    last = t
                    newest = max(newest, server_msg_id)
                elif mtype in _FATAL:
                    raise RuntimeError(f"the server sent {_FATAL[mtype]} to the user with the backlog")
                pos = end
            pending = buf[pos:]
            if newest and session_version >= 2:
                # cumulative (R7.10): this id and every earlier one, as a client acknowledges
                send(sock, encode(DELIVER_ACK(server_msg_id=newest), "utf-8", 2))
                acks += 1
        rss_peak = max(rss_peak, server.rss(), _status_kb(server.pid, "VmHWM") if hwm else 0)
        # a barrier: the PONG comes after the server has handled every DELIVER_ACK before it
        send(sock, encode(PING(nonce=1), "utf-8", session_version or 1))
        barrier = clock() + 10_000_000_000
        while clock() < barrier and not any(f[3] == _PONG for f in _frames(recv(sock) if sel.select(0.1) else b"")):
            pass
    finally:
        sel.close()
        sock.close()
    return {
        "version": session_version,
        "delivered": delivered,
        "duplicates": duplicates,
        "missing": messages - delivered,
        "reordered": reordered,
        "not_stored_flag": not_stored,
        "redelivered_flag": redelivered,
        "foreign": foreign,
        "deliver_acks": acks,
        "start_ns": start,
        "first_ns": first,
        "end_ns": last or clock(),
        "deliver_s": ((last or clock()) - start) / 1e9,
        "login_to_first_s": (first - start) / 1e9 if first else None,
        "rss_before_mb": rss0 / 2**20,
        "rss_peak_mb": rss_peak / 2**20,
        "rss_growth_mb": (rss_peak - rss0) / 2**20,
    }


def _frames(data: bytes) -> list[bytes]:
    """Whole frames in ``data`` (the barrier's PONG; a partial tail is dropped)."""
    out, pos = [], 0
    while len(data) - pos >= _OVERHEAD:
        end = pos + _OVERHEAD + _HEADER.unpack_from(data, pos)[3]
        out.append(data[pos:end])
        pos = end
    return out


def _percentile(values: list[int], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))] / 1e6


def run_version(template: Path, tmp: Path, version: int, args: argparse.Namespace) -> dict[str, Any]:
    db = tmp / f"backlog-v{version}.db"
    shutil.copyfile(template, db)
    server = chat_server(db)
    pingers: Pingers | None = None
    try:
        pingers = Pingers(server.port, args.pingers, args.ping_ms, version)
        time.sleep(1.0)  # one idle second of round trips, for reference
        result = take_backlog(server, args.messages, version, args.timeout)
        time.sleep(0.2)
        samples = pingers.stop()
        pingers = None
    finally:
        if pingers is not None:
            pingers.kill()
        server.stop()
    start, end = result.pop("start_ns"), result.pop("end_ns")
    result.pop("first_ns")
    during = [rtt for sent, rtt in samples if start <= sent <= end]
    idle = [rtt for sent, rtt in samples if sent < start]
    result.update({
        "ping_samples": len(during),
        "ping_p50_ms": _percentile(during, 0.5),
        "ping_p99_ms": _percentile(during, 0.99),
        "ping_max_ms": max(during) / 1e6 if during else None,
        "idle_ping_p50_ms": _percentile(idle, 0.5),
        "idle_ping_p99_ms": _percentile(idle, 0.99),
        "stored_after": stored_rows(db),
    })
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000, help="the backlog")
    parser.add_argument("--pingers", type=int, default=20, help="other sessions, each PINGing")
    parser.add_argument("--ping-ms", type=float, default=10.0, help="each pinger's interval")
    parser.add_argument("--protocol-version", default=",".join(map(str, SUPPORTED_VERSIONS)),
                        help="comma-separated protocol versions, each run in turn (default: all)")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up on a backlog after this long")
    parser.add_argument("--ping", nargs=4, metavar=("PORT", "COUNT", "MS", "VERSION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ping:
        port, count, ms, version = args.ping
        return serve_pings(int(port), int(count), float(ms), int(version))
    versions = sorted({int(v) for v in args.protocol_version.split(",")})
    if not versions or not set(versions) <= set(SUPPORTED_VERSIONS):
        parser.error(f"protocol versions: some of {SUPPORTED_VERSIONS}")
    if not 1 <= args.messages < 10**_INDEX_DIGITS or args.pingers < 1:
        parser.error(f"need 1 <= messages < {10**_INDEX_DIGITS} and pingers >= 1")
    raise_nofile()
    load_before = os.getloadavg()[0]
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="dfachat-backlog-") as tmp_name:
        tmp = Path(tmp_name)
        template = tmp / "template.db"
        t0 = time.perf_counter()
        create_accounts(template, SENDER + 1 + args.pingers)
        fill_backlog(template, args.messages)
        setup_s = time.perf_counter() - t0
        for version in versions:
            results[str(version)] = run_version(template, tmp, version, args)
    load = (load_before, os.getloadavg()[0])

    print(
        f"backlog: {args.messages} stored messages for one user, {args.pingers} other sessions PINGing every "
        f"{args.ping_ms:g} ms; {os.cpu_count()} CPUs, load average {load[0]:.2f} before, {load[1]:.2f} after; "
        f"setup (accounts, backlog) {setup_s:.1f} s"
    )
    if load[0] > 1.0:
        print("note: the machine was busy before the run: timings are noisy")

    def ms(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f}"

    print(
        f"{'version':>7} {'delivered':>9} {'dup':>4} {'miss':>4} {'reord':>5} {'seconds':>7} {'msg/s':>7} {'acks':>5} "
        f"{'ping p50':>8} {'p99':>6} {'max':>6} {'idle p99':>8} {'RSS MB':>6} {'growth':>6} {'left':>4}"
    )
    for version, r in results.items():
        print(
            f"{version:>7} {r['delivered']:9d} {r['duplicates']:4d} {r['missing']:4d} {r['reordered']:5d} "
            f"{r['deliver_s']:7.2f} {r['delivered'] / max(r['deliver_s'], 1e-9):7,.0f} {r['deliver_acks']:5d} "
            f"{ms(r['ping_p50_ms']):>8} {ms(r['ping_p99_ms']):>6} {ms(r['ping_max_ms']):>6} "
            f"{ms(r['idle_ping_p99_ms']):>8} {r['rss_before_mb']:6.1f} {r['rss_growth_mb']:6.1f} {r['stored_after']:4d}"
        )
    judged = results[str(versions[-1])]
    complete = (
        judged["delivered"] == args.messages and judged["duplicates"] == 0 and judged["reordered"] == 0
        and judged["foreign"] == 0 and judged["not_stored_flag"] == 0 and judged["redelivered_flag"] == 0
        and judged["version"] == versions[-1] and (versions[-1] < 2 or judged["stored_after"] == 0)
    )
    p99 = judged["ping_p99_ms"]
    result = {
        "bench": "backlog",
        "messages": args.messages,
        "pingers": args.pingers,
        "ping_ms": args.ping_ms,
        "protocol_version": versions[-1],
        "complete": complete,
        "deliver_s": round(judged["deliver_s"], 3),
        "ping_p99_ms": None if p99 is None else round(p99, 3),
        "rss_growth_mb": round(judged["rss_growth_mb"], 2),
        "versions": {v: {k: round(x, 3) if isinstance(x, float) else x for k, x in r.items()} for v, r in results.items()},
        "load_average": [round(x, 2) for x in load],
        "targets": {"complete": True, "ping_p99_ms": 50, "rss_growth_mb": 20},
        "meets_targets": complete and p99 is not None and p99 < 50 and judged["rss_growth_mb"] < 20,
    }
    print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
