"""Engine speed and size: the generated table against the transitions machine it is generated from.

    python bench/engine.py [--rounds 7] [--sessions 10000]

One recorded conversation -- a login (HELLO, HELLO_OK, USER, PASS, AUTH_OK),
20 exchanges of MSG / MSG_ACK / DELIVER, LIST answered by two USERS frames,
PING / PONG, QUIT / BYE -- is a list of ``(role, trigger, message)`` steps,
each message appearing once as the sender's ``send_`` step and once as the
receiver's ``recv_`` step. It is replayed:

  (a) through the engine's table: the lookup ``next_event`` and ``send`` make
      (``TABLES[role].recv[state].get(code)`` or ``.send``, the branch's guards),
      then the session's own ``_apply`` -- the state transitions alone, no codec;
  (b) through the spec's transitions ``Machine`` (``model.trigger(...)`` on a
      model with the spec's guards and no-op actions), the same steps;
  (c) through the real engine, bytes to events, server side: ``receive_data``
      for what the client sends, ``send`` for the server's answers (informational);
  (d) memory and time per session: ``--sessions`` ServerSessions, each driven
      through HELLO / HELLO_OK / USER / PASS / AUTH_OK from fresh bytes, the
      retained memory measured with tracemalloc after ``gc.collect()`` (the
      shared tables exist before measuring starts, so they are excluded).

Several rounds each; medians. Prints a table, then, last, one JSON line with
``events_per_s`` (a), ``machine_events_per_s`` (b), ``ratio`` (a)/(b) (target
>= 20), ``engine_events_per_s`` (c), ``bytes_per_session`` (target < 1024)
and ``us_per_session_login`` (d).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from dfachat.codec import encode
from dfachat.codec.messages import (
    AUTH_OK,
    BYE,
    DELIVER,
    HELLO,
    HELLO_OK,
    LIST,
    MSG,
    MSG_ACK,
    PASS,
    PING,
    PONG,
    QUIT,
    RECORD_CLASSES,
    USER,
    USERS,
    Message,
)
from dfachat.fsm import TABLES, ClientSession, ServerSession, Session
from dfachat.spec import (
    ACTIONS,
    GUARDS,
    LIMITS,
    ByeReason,
    DeliverFlags,
    ListFlags,
    Outcome,
    build_machine,
)

ENCODING = "utf-8"
PEER = {"client": "server", "server": "client"}
Step = tuple[str, str, Message]  # (role, trigger, message)


# --- the recorded conversation --------------------------------------------------------
def conversation() -> list[Step]:
    """Every message of one session, in order, as (sender, message)."""
    result = RECORD_CLASSES["RecipientResult"]
    text = "The quick brown fox jumps over the lazy dog."
    said: list[tuple[str, Message]] = [
        ("client", HELLO(versions=(1,), encoding=ENCODING, software="bench/1")),
        (
            "server",
            HELLO_OK(
                version=1,
                max_frame=LIMITS.max_frame,
                max_text=LIMITS.max_text,
                idle_timeout_s=LIMITS.idle_timeout_s,
                max_recipients=LIMITS.max_recipients,
                login_attempts=LIMITS.login_attempts,
                encoding=ENCODING,
                software="dfachat-bench/1",
            ),
        ),
        ("client", USER(name="Liz")),
        ("client", PASS(password="pw1")),
        ("server", AUTH_OK(flags=ListFlags(0), name="Liz", online=("Liz", "Steve", "Bailey"))),
    ]
    for i in range(20):
        said += [
            ("client", MSG(msg_id=i, recipients=("Steve",), text=text)),
            (
                "server",
                MSG_ACK(
                    msg_id=i,
                    server_msg_id=1000 + 2 * i,
                    delivered=1,
                    lossy=0,
                    results=(result(name="Steve", outcome=Outcome.DELIVERED),),
                ),
            ),
            (
                "server",
                DELIVER(
                    server_msg_id=1001 + 2 * i,
                    timestamp_ms=1_790_000_000_000 + i,
                    flags=DeliverFlags.DIRECTED,
                    sender="Steve",
                    text=text,
                ),
            ),
        ]
    said += [
        ("client", LIST()),
        ("server", USERS(flags=ListFlags.MORE, online=("Liz", "Steve"))),
        ("server", USERS(flags=ListFlags(0), online=("Bailey",))),
        ("client", PING(nonce=7)),
        ("server", PONG(nonce=7)),
        ("client", QUIT()),
        ("server", BYE(reason=ByeReason.QUIT)),
    ]
    steps: list[Step] = []
    for sender, message in said:
        steps.append((sender, f"send_{message.NAME}", message))
        steps.append((PEER[sender], f"recv_{message.NAME}", message))
    return steps


# --- (a) the table: the engine's own lookup, then its _apply ------------------------------
def table_replay(steps: list[Step]) -> Callable[[int], None]:
    sessions = {"client": ClientSession(), "server": ServerSession()}
    plan = []
    for role, trigger, message in steps:
        table = TABLES[role]
        rows = table.recv if trigger.startswith("recv_") else table.send
        plan.append((sessions[role], rows, message.TYPE, message))
    client, server = sessions["client"], sessions["server"]
    c0, s0 = TABLES["client"].initial, TABLES["server"].initial

    def run(n: int) -> None:
        for _ in range(n):
            client._state, server._state = c0, s0
            for session, rows, code, message in plan:
                # as Session.next_event / Session.send: row, first admitted branch, _apply
                branches = rows[session._state].get(code)
                for branch in branches:
                    if not branch.guards or branch.admits(session, message):
                        session._apply(branch, message)
                        break
                else:
                    raise AssertionError(f"{session.role} refuses {message!r} in {session._state}")
        assert client._state == server._state == "CLOSED"

    return run


# --- (b) the transitions machine --------------------------------------------------------
class _Model:
    def __init__(self) -> None:
        self.offered_versions = (1,)  # what the no-op "offer" action would have recorded
        self.encoding = ENCODING


def _guard(name: str) -> Any:
    predicate = GUARDS[name]
    return lambda self, event: predicate(self, event.kwargs["message"])


for _name in GUARDS:
    setattr(_Model, _name, _guard(_name))
for _name in ACTIONS:
    setattr(_Model, _name, lambda self, event: None)


def machine_replay(steps: list[Step]) -> Callable[[int], None]:
    models = {role: _Model() for role in ("client", "server")}
    machines = {role: build_machine(role, models[role]) for role in models}
    plan = [(models[role], trigger, message) for role, trigger, message in steps]
    initial = {role: machines[role].initial for role in machines}

    def run(n: int) -> None:
        for _ in range(n):
            for role, machine in machines.items():
                machine.set_state(initial[role], models[role])
            for model, trigger, message in plan:
                if not model.trigger(trigger, message=message):
                    raise AssertionError(f"machine refuses {trigger} in {model.state}")
        assert models["client"].state == models["server"].state == "CLOSED"

    return run


# --- (c) the real engine, server side, bytes to events -----------------------------------
def engine_replay(steps: list[Step]) -> tuple[Callable[[int], None], int]:
    plan: list[tuple[bool, Any]] = []  # (received?, frame bytes or message to send)
    for role, trigger, message in steps:
        if role == "server":
            received = trigger.startswith("recv_")
            plan.append((received, encode(message, ENCODING) if received else message))

    def run(n: int) -> None:
        for _ in range(n):
            server = ServerSession()
            receive, send = server.receive_data, server.send
            for received, item in plan:
                if received:
                    receive(item)
                else:
                    send(item)
            assert server.closed

    return run, len(plan)


# --- (d) per session: login, memory and time ----------------------------------------------
_CLIENT_FRAMES = [
    encode(HELLO(versions=(1,), encoding=ENCODING, software="bench/1"), ENCODING),
    encode(USER(name="Liz"), ENCODING),
    encode(PASS(password="pw1"), ENCODING),
]
_HELLO_OK = conversation()[2][2]


def login(count: int) -> list[Session]:
    """``count`` server sessions, each logged in from fresh bytes (as a socket would hand them)."""
    hello, user, password = _CLIENT_FRAMES
    sessions: list[Session] = []
    for _ in range(count):
        server = ServerSession()
        server.receive_data(bytes(memoryview(hello)))
        server.send(_HELLO_OK)
        (who,) = server.receive_data(bytes(memoryview(user)))
        server.receive_data(bytes(memoryview(password)))
        server.send(AUTH_OK(flags=ListFlags(0), name=who.name, online=(who.name,)))
        sessions.append(server)
    assert sessions[-1].state == "ESTABLISHED"
    return sessions


def bytes_per_session(count: int) -> float:
    login(100)  # warm up caches (codec paths, interned strings)
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        sessions = login(count)
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert len(sessions) == count
    return used / count


# --- running -------------------------------------------------------------------------
def _median_rate(fn: Callable[[int], None], n: int, per_call: int, rounds: int) -> float:
    fn(max(1, n // 10))  # warm up
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn(n)
        rates.append(n * per_call / (time.perf_counter() - start))
    return statistics.median(rates)


def _calibrate(fn: Callable[[int], None], target_s: float) -> int:
    n = 1
    while True:
        start = time.perf_counter()
        fn(n)
        elapsed = time.perf_counter() - start
        if elapsed >= target_s / 10:
            return max(1, int(n * target_s / elapsed))
        n *= 4


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--round-seconds", type=float, default=0.4)
    args = parser.parse_args()
    steps = conversation()
    rounds, target = args.rounds, args.round_seconds

    table = table_replay(steps)
    machine = machine_replay(steps)
    engine, engine_steps = engine_replay(steps)
    table(1), machine(1), engine(1)  # each checks it ends CLOSED on both sides

    events_per_s = _median_rate(table, _calibrate(table, target), len(steps), rounds)
    machine_per_s = _median_rate(machine, _calibrate(machine, target), len(steps), rounds)
    engine_per_s = _median_rate(engine, _calibrate(engine, target), engine_steps, rounds)

    login_times = []
    for _ in range(max(3, rounds // 2)):
        gc.collect()
        start = time.perf_counter()
        kept = login(args.sessions)
        login_times.append((time.perf_counter() - start) / args.sessions * 1e6)
        del kept
    us_per_login = statistics.median(login_times)
    memory = statistics.median(bytes_per_session(args.sessions) for _ in range(3))

    ratio = events_per_s / machine_per_s
    print(
        f"conversation: {len(steps)} steps ({len(steps) // 2} messages); {rounds} rounds, medians"
    )
    print(f"{'path':44} {'events/s':>12} {'ns/event':>9}")
    for label, rate in (
        ("(a) generated table (lookup + guards + _apply)", events_per_s),
        ("(b) transitions Machine (model.trigger)", machine_per_s),
        ("(c) engine, server side, bytes <-> events", engine_per_s),
    ):
        print(f"{label:44} {rate:12,.0f} {1e9 / rate:9.0f}")
    print(f"table / machine: {ratio:.1f}x (target >= 20)")
    print(
        f"(d) {args.sessions:,} server sessions logged in: {memory:.0f} bytes/session retained "
        f"(target < 1024), {us_per_login:.1f} us/session for the login"
    )
    result = {
        "bench": "engine",
        "events_per_s": round(events_per_s),
        "machine_events_per_s": round(machine_per_s),
        "ratio": round(ratio, 2),
        "engine_events_per_s": round(engine_per_s),
        "bytes_per_session": round(memory, 1),
        "us_per_session_login": round(us_per_login, 2),
        "conversation_steps": len(steps),
        "sessions": args.sessions,
        "rounds": rounds,
        "targets": {"ratio": 20, "bytes_per_session": 1024},
    }
    result["meets_targets"] = ratio >= 20 and memory < 1024
    print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
