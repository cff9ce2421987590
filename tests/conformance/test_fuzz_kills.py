"""Every faulty server misbehaves, and ``dfachat fuzz server`` catches it with the right rule.

Two halves:

* a direct probe per fault (:data:`PROBES`): a short scripted conversation with
  the raw test client that returns what went wrong, or None. Each probe passes
  on the reference server and fails on its faulty server, so the fault is real
  and a fuzzer miss is the fuzzer's, not the fault's;
* the kill table: ``dfachat fuzz server`` runs against the reference server
  (which must pass) and against each faulty server (started through
  ``--target-cmd``), and must fail with a check citing one of the fault's rules,
  within the fuzzer's default time budget, stopping at the first failure:
  every fault with ``DFACHAT_FUZZ_KILLS=all`` (about four minutes), eight
  from eight spec sections by default.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from dfachat.codec import encode
from dfachat.codec.messages import (  # type: ignore[attr-defined]
    AUTH_OK,
    BYE,
    DELIVER,
    ERROR,
    HELLO,
    JOINED,
    LEFT,
    MSG_ACK,
    PING,
    PONG,
    QUIT,
)
from dfachat.fsm import ProtocolViolation
from dfachat.server import DEMO_ACCOUNTS, ServerConfig, Store, reencode
from dfachat.spec import MESSAGES, DeliverFlags, ErrorCode, LeftReason, Limits, Outcome
from server.client import PASSWORDS, ChatClient, raw_frame

from .faulty_servers import (
    CHEAP_KDF,
    FAULTS,
    LONG_IDLE_TIMEOUT_S,
    LONG_TEXT,
    SHORT_IDLE_TIMEOUT_S,
    build_server,
    fuzz,
    idle_timeout_for,
)

QUIET_S = 0.3  # how long a probe waits for something that must (or must not) arrive
PROBE_IDLE_TIMEOUT_S = 1  # the idle timeout of the servers the probes run
LIZ, STEVE, BAILEY = (name for name, _ in DEMO_ACCOUNTS)
UNUSED_TYPE = max(spec.code for spec in MESSAGES) + 1  # a type code the spec does not define (R2.3)

Probe = Callable[[int, list[ChatClient]], Awaitable[str | None]]


# --- a server in this process, and clients ----------------------------------------------------------


@contextlib.asynccontextmanager
async def serving(fault: str | None, db: Path) -> AsyncIterator[int]:
    """The server for ``fault`` (None: the reference) on an ephemeral port; yields the port."""
    store = Store(db, kdf=CHEAP_KDF)
    store.ensure_users(DEMO_ACCOUNTS)
    limits = Limits(idle_timeout_s=PROBE_IDLE_TIMEOUT_S)
    server = build_server(fault, store, ServerConfig(port=0, limits=limits, sweep_interval_s=0.1))
    await server.start()
    try:
        yield server.port
    finally:
        await server.shutdown(timeout=2)


async def login(port: int, clients: list[ChatClient], user: str, **options: Any) -> ChatClient:
    client = ChatClient(user, strict=False, **options)
    clients.append(client)
    await client.open(port)
    await client.hello()
    await client.login(user, PASSWORDS[user])
    return client


async def arrives(client: ChatClient, kind: type, **fields: Any) -> Any:
    """The first event of ``kind`` (with ``fields``) within QUIET_S, or None."""
    try:
        return await client.expect(kind, timeout=QUIET_S, **fields)
    except AssertionError:
        return None


def received(client: ChatClient, kind: type) -> list[Any]:
    return [event for event in client.log if isinstance(event, kind)]


# --- the probes: each returns what went wrong, or None ------------------------------------------


async def wrong_password(port: int, clients: list[ChatClient]) -> str | None:
    client = ChatClient("guesser", strict=False)
    clients.append(client)
    await client.open(port)
    await client.hello()
    reply = await client.try_login(LIZ, PASSWORDS[LIZ] + "-wrong")
    return "AUTH_OK for a wrong password" if isinstance(reply, AUTH_OK) else None


async def joined_to_others(port: int, clients: list[ChatClient]) -> str | None:
    liz = await login(port, clients, LIZ)
    await login(port, clients, STEVE)
    return None if await arrives(liz, JOINED, name=STEVE) else "no JOINED for Steve"


async def one_left(port: int, clients: list[ChatClient]) -> str | None:
    liz = await login(port, clients, LIZ)
    steve = await login(port, clients, STEVE)
    await steve.quit()
    await liz.collect(QUIET_S)
    lefts = [e for e in received(liz, LEFT) if e.name == STEVE]
    return None if len(lefts) == 1 else f"{len(lefts)} LEFT for Steve"


async def directed_only_to_named(port: int, clients: list[ChatClient]) -> str | None:
    liz = await login(port, clients, LIZ)
    steve = await login(port, clients, STEVE)
    bailey = await login(port, clients, BAILEY)
    await liz.say("for Steve", to=(STEVE,))
    await steve.expect(DELIVER)
    await bailey.collect(QUIET_S)
    return "Bailey got a message for Steve" if received(bailey, DELIVER) else None


async def broadcast_not_to_sender(port: int, clients: list[ChatClient]) -> str | None:
    liz = await login(port, clients, LIZ)
    steve = await login(port, clients, STEVE)
    await liz.say("to all")
    await steve.expect(DELIVER)
    await liz.collect(QUIET_S)
    return "the sender got its broadcast" if received(liz, DELIVER) else None


async def long_text_delivered(port: int, clients: list[ChatClient]) -> str | None:
    liz = await login(port, clients, LIZ)
    steve = await login(port, clients, STEVE)
    text = "x" * (LONG_TEXT + 1)
    await liz.say(text, to=(STEVE,))
    return None if await arrives(steve, DELIVER, text=text) else f"no DELIVER of {len(text)} characters"


async def deliver_checksum(port: int, clients: list[ChatClient]) -> str | None:
    liz = await login(port, clients, LIZ)
    steve = await login(port, clients, STEVE)
    await liz.say("hi", to=(STEVE,))
    await steve.collect(QUIET_S)
    bad = received(steve, ProtocolViolation)
    return f"Steve's engine rejected: {bad[0]}" if bad else None


async def faithful_reencoding(port: int, clients: list[ChatClient]) -> str | None:
    liz = await login(port, clients, LIZ)
    steve = await login(port, clients, STEVE, encoding="latin-1")
    text = "café ☕"  # é is in latin-1, the cup is not
    await liz.say(text, to=(STEVE,))
    deliver = await steve.expect(DELIVER)
    expected, replaced = reencode(text, "latin-1")
    if (deliver.text, bool(deliver.flags & DeliverFlags.LOSSY)) != (expected, bool(replaced)):
        return f"{text!r} arrived as {deliver.text!r} (flags {deliver.flags!r})"
    return None


async def survives_unexpected_message(port: int, clients: list[ChatClient]) -> str | None:
    liz = await login(port, clients, LIZ)
    liz.send_raw(encode(HELLO(versions=(1,), encoding="utf-8", software="again")))
    error = await arrives(liz, ERROR)
    if error is None:
        return "no ERROR for HELLO after login" + (" (connection closed)" if liz.closed.is_set() else "")
    liz.send(PING(nonce=1))
    return None if await arrives(liz, PONG) else "the session did not survive"


async def ack_carries_msg_id(port: int, clients: list[ChatClient]) -> str | None:
    liz = await login(port, clients, LIZ)
    msg = liz.new_msg("hi")
    liz.send(msg)
    ack = await liz.expect(MSG_ACK)
    return None if ack.msg_id == msg.msg_id else f"MSG_ACK {ack.msg_id} for MSG {msg.msg_id}"


async def nothing_after_quit(port: int, clients: list[ChatClient]) -> str | None:
    liz = await login(port, clients, LIZ)
    steve = await login(port, clients, STEVE)
    steve.send(QUIT())
    await steve.expect(BYE)
    ack = await liz.say("still there?")
    if ack.delivered:
        return f"a broadcast after Steve's QUIT was delivered to {ack.delivered}"
    with contextlib.suppress(AssertionError):
        await steve.wait_closed(QUIET_S)
    return None if steve.closed.is_set() else "still open after BYE"


async def stored_delivered(port: int, clients: list[ChatClient]) -> str | None:
    liz = await login(port, clients, LIZ)
    ack = await liz.say("while you were out", to=(BAILEY,))
    assert [r.outcome for r in ack.results] == [Outcome.QUEUED]
    bailey = await login(port, clients, BAILEY)
    deliver = await arrives(bailey, DELIVER)
    return None if deliver and deliver.text == "while you were out" else "the stored message never came"


async def idle_timeout_enforced(port: int, clients: list[ChatClient]) -> str | None:
    liz = await login(port, clients, LIZ)
    try:
        await liz.expect(ERROR, timeout=PROBE_IDLE_TIMEOUT_S * 3, code=ErrorCode.IDLE_TIMEOUT)
    except AssertionError:
        return f"no IDLE_TIMEOUT after {PROBE_IDLE_TIMEOUT_S * 3} s of silence"
    return None


async def online_list_complete(port: int, clients: list[ChatClient]) -> str | None:
    liz = await login(port, clients, LIZ)
    return None if LIZ in liz.online else f"AUTH_OK lists {liz.online}"


async def error_code_right(port: int, clients: list[ChatClient]) -> str | None:
    liz = await login(port, clients, LIZ)
    liz.send_raw(raw_frame(UNUSED_TYPE, b""))
    error = await liz.expect(ERROR)
    return None if error.code is ErrorCode.UNKNOWN_TYPE else f"type {UNUSED_TYPE} answered {error.code!r}"


async def bye_after_quit(port: int, clients: list[ChatClient]) -> str | None:
    liz = await login(port, clients, LIZ)
    liz.send(QUIT())
    return None if await arrives(liz, BYE) else "no BYE after QUIT"


async def deliver_names_sender(port: int, clients: list[ChatClient]) -> str | None:
    liz = await login(port, clients, LIZ)
    steve = await login(port, clients, STEVE)
    await liz.say("hi", to=(STEVE,))
    deliver = await steve.expect(DELIVER)
    return None if deliver.sender == LIZ else f"DELIVER from {deliver.sender}"


async def delivered_once(port: int, clients: list[ChatClient]) -> str | None:
    liz = await login(port, clients, LIZ)
    steve = await login(port, clients, STEVE)
    ack = await liz.say("once", to=(STEVE,))
    await steve.collect(QUIET_S)
    copies = [e for e in received(steve, DELIVER) if e.server_msg_id == ack.server_msg_id]
    return None if len(copies) == 1 else f"{len(copies)} copies"


async def outcomes_in_order(port: int, clients: list[ChatClient]) -> str | None:
    liz = await login(port, clients, LIZ)
    await login(port, clients, STEVE)
    named = (STEVE, "Nobody", BAILEY)
    ack = await liz.say("hi", to=named)
    got = tuple(r.name for r in ack.results)
    return None if got == named else f"results for {got}, MSG named {named}"


async def no_joined_to_self(port: int, clients: list[ChatClient]) -> str | None:
    liz = await login(port, clients, LIZ)
    await liz.collect(QUIET_S)
    return "JOINED for itself" if [e for e in received(liz, JOINED) if e.name == LIZ] else None


async def pong_echoes_nonce(port: int, clients: list[ChatClient]) -> str | None:
    liz = await login(port, clients, LIZ)
    liz.send(PING(nonce=7))
    pong = await liz.expect(PONG)
    return None if pong.nonce == 7 else f"PONG {pong.nonce} for PING 7"


async def left_reason_right(port: int, clients: list[ChatClient]) -> str | None:
    liz = await login(port, clients, LIZ)
    steve = await login(port, clients, STEVE)
    await steve.quit()
    left = await liz.expect(LEFT, name=STEVE)
    return None if left.reason is LeftReason.QUIT else f"LEFT {left.reason!r} after QUIT"


async def stored_flagged(port: int, clients: list[ChatClient]) -> str | None:
    liz = await login(port, clients, LIZ)
    await liz.say("later", to=(BAILEY,))
    bailey = await login(port, clients, BAILEY)
    deliver = await bailey.expect(DELIVER)
    return None if deliver.flags & DeliverFlags.STORED else f"stored DELIVER flags {deliver.flags!r}"


PROBES: dict[str, Probe] = {
    "accepts_wrong_password": wrong_password,
    "skips_joined": joined_to_others,
    "sends_left_twice": one_left,
    "directed_to_everyone": directed_only_to_named,
    "echoes_broadcast": broadcast_not_to_sender,
    "drops_long_texts": long_text_delivered,
    "wrong_crc_on_deliver": deliver_checksum,
    "mangles_non_ascii": faithful_reencoding,
    "closes_on_illegal": survives_unexpected_message,
    "wrong_ack_id": ack_carries_msg_id,
    "delivers_after_quit": nothing_after_quit,
    "loses_stored_messages": stored_delivered,
    "ignores_idle_timeout": idle_timeout_enforced,
    "online_list_without_self": online_list_complete,
    "wrong_error_code": error_code_right,
    "no_bye_after_quit": bye_after_quit,
    "wrong_sender": deliver_names_sender,
    "duplicates_delivery": delivered_once,
    "ack_results_reversed": outcomes_in_order,
    "joined_to_self": no_joined_to_self,
    "pong_wrong_nonce": pong_echoes_nonce,
    "left_always_dropped": left_reason_right,
    "stored_not_flagged": stored_flagged,
}


async def run_probe(probe: Probe, fault: str | None, db: Path) -> str | None:
    clients: list[ChatClient] = []
    async with asyncio.timeout(20), serving(fault, db) as port:
        try:
            return await probe(port, clients)
        finally:
            for client in clients:
                await client.aclose()


def test_every_fault_has_a_probe() -> None:
    assert set(PROBES) == set(FAULTS)
    assert sum(fault.ours for fault in FAULTS.values()) >= 5


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_the_fault_shows(fault: str, tmp_path: Path) -> None:
    """The probe passes on the reference server and fails on the faulty one."""
    probe = PROBES[fault]
    assert asyncio.run(run_probe(probe, None, tmp_path / "reference.db")) is None
    assert asyncio.run(run_probe(probe, fault, tmp_path / "faulty.db")) is not None


# --- the kill table: dfachat fuzz server against every faulty server ------------------------------

KILL_SEED = 1
# Each run stops at its first failure, once shrunk and saved (-x), within the fuzzer's default
# time budget. Every fault takes 20-35 s that way, so the whole table (about 4 minutes on two
# cores) runs with DFACHAT_FUZZ_KILLS=all and in bench/fuzz.py; by default, eight faults from
# eight sections of the spec run (about a minute and a half).
ALL_KILLS = os.environ.get("DFACHAT_FUZZ_KILLS") == "all"
QUICK_KILLS = (
    "accepts_wrong_password", "closes_on_illegal", "echoes_broadcast", "ignores_idle_timeout",
    "no_bye_after_quit", "sends_left_twice", "wrong_ack_id", "wrong_crc_on_deliver",
)
KILL_OPTIONS = ("-x",)
# The reference server: with the long idle timeout the faults use, and with the short one.
REFERENCE_RUNS = ((1, LONG_IDLE_TIMEOUT_S, 25), (2, LONG_IDLE_TIMEOUT_S, 25), (1, SHORT_IDLE_TIMEOUT_S, 10))
# Each run is a test of its own (one fuzzer process, which starts its own target), so that
# pytest-xdist's workers share them out: as many runs at once as there are workers.


def test_the_quick_kills_are_faults() -> None:
    assert set(QUICK_KILLS) <= set(FAULTS)


@pytest.mark.parametrize(("seed", "idle", "examples"), REFERENCE_RUNS,
                         ids=[f"seed{seed}-idle{idle}s" for seed, idle, _ in REFERENCE_RUNS])
def test_the_reference_server_passes(seed: int, idle: int, examples: int, tmp_path: Path) -> None:
    result = fuzz("none", tmp_path, seed=seed, idle_timeout=idle, options=("--max-examples", str(examples)))
    assert result.exit_code == 0, result.describe()
    assert result.report is not None and result.report["passed"], result.describe()
    assert result.report["steps"] > 0


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_the_fuzzer_catches(fault: str, tmp_path: Path) -> None:
    """Within the time budget, with a failed check citing one of the fault's rules."""
    if not (ALL_KILLS or fault in QUICK_KILLS):
        pytest.skip("the whole kill table runs with DFACHAT_FUZZ_KILLS=all")
    result = fuzz(fault, tmp_path, seed=KILL_SEED, idle_timeout=idle_timeout_for(fault), options=KILL_OPTIONS)
    assert result.caught, f"expected a failure citing one of {FAULTS[fault].rules}\n" + result.describe()
    assert result.report is not None
    budget = result.report["settings"]["time_budget_s"]
    first = result.first_failure_s
    assert first is None or first <= budget, result.describe()
