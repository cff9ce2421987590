"""Authentication (section 6): failures, the back-off, no lock-out, and a second login."""

from __future__ import annotations

import asyncio
import time

from dfachat.codec.messages import (  # type: ignore[attr-defined]
    AUTH_FAILED,
    AUTH_OK,
    DELIVER,
    JOINED,
    LEFT,
    PASS,
    USER,
    RecipientResult,
)
from dfachat.spec import DeliverFlags, ErrorCode, LeftReason, Limits, Outcome

from .client import Chat, ChatClient

BASE_MS = 60  # a back-off base large enough to measure, small enough to keep the tests quick


async def timed_failure(client: ChatClient, user: str, password: str) -> tuple[AUTH_FAILED, float]:
    """USER + PASS that must fail: the AUTH_FAILED and how long it took, in milliseconds."""
    start = time.monotonic()
    reply = await client.try_login(user, password)
    elapsed = (time.monotonic() - start) * 1000
    assert isinstance(reply, AUTH_FAILED), reply
    return reply, elapsed


async def test_wrong_password_up_to_the_limit_then_closed(chat: Chat) -> None:
    await chat.start(limits=Limits(backoff_base_ms=5))
    liz = await chat.login("Liz")
    guesser = await chat.greeted("guesser")
    for attempts_left in (2, 1, 0):
        reply, _ = await timed_failure(guesser, "Steve", f"guess{attempts_left}")
        assert reply == AUTH_FAILED(attempts_left=attempts_left)
    await guesser.wait_closed()  # R6.3: closed after the last AUTH_FAILED ...
    assert guesser.take_all() == []  # ... with nothing after it
    lefts = await liz.collect(0.1)
    assert lefts == []  # the guesser was never online: no JOINED, no LEFT


async def test_the_server_does_not_answer_user(chat: Chat) -> None:
    await chat.start(limits=Limits(backoff_base_ms=5))
    client = await chat.greeted()
    client.send(USER(name="Liz"))
    assert await client.collect(0.3) == []  # R6.2: USER is never answered ...
    client.send(PASS(password="pw1"))
    assert isinstance(await client.next(), AUTH_OK)  # ... and PASS completes the login


async def test_unknown_user_is_answered_like_a_wrong_password(chat: Chat) -> None:
    """R6.2: the same AUTH_FAILED, the same attempts count, the same back-off floor."""
    await chat.start(limits=Limits(backoff_base_ms=BASE_MS, backoff_max_ms=BASE_MS))
    unknown = await chat.greeted("unknown")
    wrong = await chat.greeted("wrong")
    replies = {}
    for label, client, user in (("unknown", unknown, "Nobody"), ("wrong", wrong, "Liz")):
        reply, elapsed = await timed_failure(client, user, "not-the-password")
        assert elapsed >= BASE_MS * 0.9, (label, elapsed)
        replies[label] = reply
        assert client.session.state == "SEND_USER"  # both may try again
    assert replies["unknown"] == replies["wrong"] == AUTH_FAILED(attempts_left=2)
    # And the second attempt of each is answered alike too.
    assert (await timed_failure(unknown, "Nobody", "x"))[0] == (await timed_failure(wrong, "Liz", "x"))[0]


async def test_backoff_doubles_with_each_failure(chat: Chat) -> None:
    """R6.4: each AUTH_FAILED is delayed by the base doubled per earlier failure."""
    await chat.start(limits=Limits(backoff_base_ms=BASE_MS))
    guesser = await chat.greeted()
    times = [(await timed_failure(guesser, "Liz", f"guess{i}"))[1] for i in range(3)]
    first, second, third = times
    assert first >= BASE_MS * 0.9, times
    assert second >= 2 * BASE_MS * 0.9, times
    assert third >= 4 * BASE_MS * 0.9, times
    assert third - first >= 2 * BASE_MS, times


async def test_backoff_counts_failures_per_account_across_connections(chat: Chat) -> None:
    """A new connection does not reset the account's record (nor the address's)."""
    await chat.start(limits=Limits(backoff_base_ms=BASE_MS))
    for i in range(2):
        await timed_failure(await chat.greeted(f"try{i}"), "Steve", "nope")
    _, elapsed = await timed_failure(await chat.greeted("try2"), "Steve", "nope")
    assert elapsed >= 4 * BASE_MS * 0.9


async def test_no_permanent_lockout(chat: Chat) -> None:
    """Failures slow a guesser down, but the right password still works, at once and later."""
    await chat.start(limits=Limits(backoff_base_ms=5))
    client = await chat.greeted()
    await timed_failure(client, "Liz", "wrong")
    await timed_failure(client, "Liz", "wrong again")
    assert isinstance(await client.try_login("Liz", "pw1"), AUTH_OK)  # the same connection

    # Three failures close a connection; a new one may log in right away.
    guesser = await chat.greeted("guesser")
    for _ in range(3):
        await timed_failure(guesser, "Steve", "wrong")
    await guesser.wait_closed()
    steve = await chat.login("Steve")
    assert steve.auth_ok.name == "Steve"


async def test_failure_records_expire_after_the_window(chat: Chat) -> None:
    base = 100
    server = await chat.start(limits=Limits(backoff_base_ms=base, backoff_window_s=1))
    guesser = await chat.greeted()
    for i in range(3):
        await timed_failure(guesser, "Bailey", f"guess{i}")
    await guesser.wait_closed()
    assert server.core.failures_by_account  # remembered for now ...
    deadline = time.monotonic() + 5
    while server.core.failures_by_account and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert not server.core.failures_by_account and not server.core.failures_by_address  # ... then forgotten
    _, elapsed = await timed_failure(await chat.greeted("later"), "Bailey", "again")
    # Back to the base delay: well under the 8x base a remembered fourth failure would cost.
    assert base * 0.9 <= elapsed < 5 * base


async def test_second_login_replaces_the_first_session(chat: Chat) -> None:
    """R6.6: SESSION_REPLACED to the old session; the others see LEFT (REPLACED) then JOINED."""
    await chat.start()
    old = await chat.login("Liz", label="liz-old")
    steve = await chat.login("Steve")
    bailey = await chat.login("Bailey", encoding="utf-16")
    await old.expect(JOINED, name="Steve")
    await old.expect(JOINED, name="Bailey")
    await steve.expect(JOINED, name="Bailey")

    new = await chat.login("liz", label="liz-new", encoding="latin-1")
    assert new.auth_ok.name == "Liz"
    assert sorted(new.online) == ["Bailey", "Liz", "Steve"]  # Liz once
    await old.expect_error(ErrorCode.SESSION_REPLACED, fatal=True, rule="R6.6", regarding=0)
    await old.wait_closed()
    for other in (steve, bailey):
        assert await other.next() == LEFT(reason=LeftReason.REPLACED, name="Liz")
        assert await other.next() == JOINED(name="Liz")
        assert await other.collect(0.2) == []  # no second LEFT when the old socket closes

    # The new session works, both ways, in its own encoding.
    ack = await new.say("I moved ½", to=("Steve",))
    assert ack.results == (RecipientResult(name="Steve", outcome=Outcome.DELIVERED),)
    got = await steve.next()
    assert (got.sender, got.text) == ("Liz", "I moved ½")
    ack = await bailey.say("welcome back €", to=("Liz",))
    assert ack.results == (RecipientResult(name="Liz", outcome=Outcome.LOSSY),)
    got = await new.next()
    assert isinstance(got, DELIVER)
    assert (got.text, got.flags) == ("welcome back ?", DeliverFlags.DIRECTED | DeliverFlags.LOSSY)
    assert [e for e in old.log if isinstance(e, DELIVER)] == []
