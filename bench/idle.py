"""Idle sessions: the reference server's memory per authenticated idle session, against a bare echo server.

    python bench/idle.py [--sessions 5000] [--concurrency 16] [--rounds 1]

The servers run in child processes, the clients in this one, all on
127.0.0.1 (RLIMIT_NOFILE raised to the hard limit in every process):

* the reference server, started as in bench/fanout.py (``ChatServer`` over a
  fresh SQLite file, plain asyncio, log level warning, idle timeout 3600 s),
  with ``--sessions`` distinct scrypt n=1024 accounts made beforehand (a
  second login to an account would replace the first session, R6.6). Each
  client logs in through the real handshake (:class:`~dfachat.fsm.ClientSession`),
  ``--concurrency`` handshakes at a time; then the generator reads every
  JOINED the logins push (N(N-1)/2 in all) so nothing is left queued;
* the baseline: a bare ``asyncio.Protocol`` echo server (below,
  ``--serve-echo``), each client connecting and getting one frame echoed
  (64 at a time).

For each server: a warm-up first (32 sessions opened and closed: for the
reference server that starts the password-check threads and their scrypt
buffers, a one-time cost), then the server's VmRSS (``/proc/<pid>/status``)
before, the sessions opened, a second to settle, VmRSS after. Bytes per
session = (after - before) / sessions: what the sessions hold, plus what
the allocator keeps of the buffers the logins went through (more handshakes
at a time: a few hundred bytes more). Prints a table and, last, one JSON
line with ``bytes_per_session`` (target < 4096) and
``baseline_bytes_per_session``; with several rounds, medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from fanout import (
    BENCH,
    ServerProcess,
    account_name,
    chat_server,
    close_all,
    create_accounts,
    drain_joined,
    open_clients,
    raise_nofile,
)

HOST = "127.0.0.1"
WARM_UP = 32


class Echo(asyncio.Protocol):
    """The baseline: a protocol object holding its transport, writing back what it reads."""

    __slots__ = ("transport",)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


def serve_echo() -> int:
    import signal

    raise_nofile()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Echo, HOST, 0, reuse_address=True)
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(server.sockets[0].getsockname()[1], flush=True)
        await stop.wait()
        server.close()

    asyncio.run(main())
    return 0


def settled_rss(server: ServerProcess, seconds: float = 1.0, samples: int = 5) -> int:
    """The median of a few VmRSS readings over ``seconds``, once the server has had time to settle."""
    readings = []
    for _ in range(samples):
        time.sleep(seconds / samples)
        readings.append(server.rss())
    return int(statistics.median(readings))


def measure(
    server: ServerProcess, names: list[str], warm_names: list[str], *, login: bool, concurrency: int
) -> dict[str, float]:
    """Warm up, RSS, open the sessions, RSS; then stop the server and close the sessions."""
    close_all(open_clients(server.port, warm_names, login=login, concurrency=concurrency))
    before = settled_rss(server)
    cpu0 = server.cpu()
    start = time.perf_counter()
    clients = open_clients(server.port, names, login=login, concurrency=concurrency)
    if login:
        drain_joined(clients, len(names) * (len(names) - 1) // 2)
    open_s = time.perf_counter() - start
    cpu = server.cpu() - cpu0
    after = settled_rss(server)
    result = {
        "rss_before": before,
        "rss_after": after,
        "bytes_per_session": (after - before) / len(names),
        "open_s": open_s,
        "server_cpu_s": cpu,
    }
    server.stop()  # first: each close would push a LEFT to every session still open
    close_all(clients)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=16, help="handshakes at a time")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--profile", help="write a cProfile of the reference server to this file")
    parser.add_argument("--serve-echo", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_echo:
        return serve_echo()
    if not 1 <= args.sessions <= 9999 - WARM_UP:
        parser.error(f"--sessions must be 1..{9999 - WARM_UP}")
    raise_nofile()
    names = [account_name(i) for i in range(args.sessions)]
    warm_names = [account_name(i) for i in range(args.sessions, args.sessions + WARM_UP)]
    ours, base = [], []
    with tempfile.TemporaryDirectory(prefix="dfachat-idle-") as tmp:
        db = Path(tmp) / "idle.db"
        setup_s = create_accounts(db, args.sessions + WARM_UP)
        for _ in range(args.rounds):
            server = chat_server(db, args.profile)
            try:
                ours.append(measure(server, names, warm_names, login=True, concurrency=args.concurrency))
            finally:
                server.stop()
            server = ServerProcess([str(BENCH / "idle.py"), "--serve-echo"], "echo server")
            try:
                base.append(measure(server, names, warm_names, login=False, concurrency=64))
            finally:
                server.stop()

    def med(runs: list[dict[str, float]], key: str) -> float:
        return statistics.median(run[key] for run in runs)

    print(
        f"idle: {args.sessions} sessions, {args.concurrency} handshakes at a time, {args.rounds} round(s), "
        f"medians; accounts made in {setup_s:.1f} s (scrypt n=1024); load average {os.getloadavg()[0]:.2f}"
    )
    print(f"{'server':34} {'RSS before':>11} {'RSS after':>11} {'bytes/session':>14} {'open s':>7} {'srv cpu s':>9}")
    for label, runs in (("dfachat (authenticated, idle)", ours), ("bare asyncio echo (connected)", base)):
        print(
            f"{label:34} {med(runs, 'rss_before') / 2**20:9.1f}Mi {med(runs, 'rss_after') / 2**20:9.1f}Mi "
            f"{med(runs, 'bytes_per_session'):14,.0f} {med(runs, 'open_s'):7.1f} {med(runs, 'server_cpu_s'):9.1f}"
        )
    result = {
        "bench": "idle",
        "sessions": args.sessions,
        "bytes_per_session": round(med(ours, "bytes_per_session")),
        "baseline_bytes_per_session": round(med(base, "bytes_per_session")),
        "rss_before": round(med(ours, "rss_before")),
        "rss_after": round(med(ours, "rss_after")),
        "login_s": round(med(ours, "open_s"), 1),
        "rounds": args.rounds,
        "target": 4096,
    }
    result["meets_target"] = result["bytes_per_session"] < 4096
    print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
