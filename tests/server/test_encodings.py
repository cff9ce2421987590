"""Mixed encodings (section 3): every session gets the text exactly, or '?' marked LOSSY."""

from __future__ import annotations

import pytest

from dfachat.codec.messages import DELIVER, JOINED, RecipientResult  # type: ignore[attr-defined]
from dfachat.spec import DeliverFlags, Outcome

from .client import Chat, ChatClient

# Python codecs written out here, independently of the spec's table (R3.3: big-endian, no BOM).
CODECS = {
    "utf-8": "utf-8",
    "utf-16": "utf-16-be",
    "utf-32": "utf-32-be",
    "latin-1": "latin-1",
    "ascii": "ascii",
    "cp1252": "cp1252",
}
# One account per encoding besides the demo ones.
USERS = tuple((f"u_{name.replace('-', '')}", f"pw-{name}") for name in CODECS)
# Characters from every range: ASCII, Latin-1, cp1252 only, BMP beyond both, astral, a BOM as content.
MIXED = "\ufeffHi? café ÿ € “q” — 日本 𝄞😀 end"


def expected(text: str, encoding: str) -> tuple[str, int]:
    """What R3.5 says a session in ``encoding`` receives, and how many characters were replaced."""
    out, replaced = [], 0
    for char in text:
        try:
            char.encode(CODECS[encoding])
            out.append(char)
        except UnicodeEncodeError:
            out.append("?")
            replaced += 1
    return "".join(out), replaced


def account(encoding: str) -> str:
    return f"u_{encoding.replace('-', '')}"


async def everyone(chat: Chat) -> dict[str, ChatClient]:
    """One logged-in client per encoding, arrivals drained."""
    await chat.start(users=USERS)
    clients: dict[str, ChatClient] = {}
    for encoding in CODECS:
        clients[encoding] = await chat.login(account(encoding), encoding=encoding)
    for i, encoding in enumerate(CODECS):
        for later in list(CODECS)[i + 1 :]:
            await clients[encoding].expect(JOINED, name=account(later), only=True)
    return clients


def test_the_fixture_text_exercises_every_case() -> None:
    """Sanity of the test data: lossless somewhere, lossy elsewhere, cp1252 beats latin-1 on '€'."""
    counts = {encoding: expected(MIXED, encoding)[1] for encoding in CODECS}
    assert counts["utf-8"] == counts["utf-16"] == counts["utf-32"] == 0
    assert 0 < counts["cp1252"] < counts["latin-1"] < counts["ascii"]


async def test_seed_encodings_utf8_to_latin1_and_utf16(chat: Chat) -> None:
    """The seed's three users: a utf-8 sender, a latin-1 and a utf-16 recipient (R3.5)."""
    await chat.start()
    liz = await chat.login("Liz", encoding="utf-8")
    steve = await chat.login("Steve", encoding="latin-1")
    bailey = await chat.login("Bailey", encoding="utf-16")
    await liz.expect(JOINED, name="Steve")
    for client in (liz, steve):
        await client.expect(JOINED, name="Bailey")

    text = "Price: 5€ (about ¥700) – see 日本 ✓ café"
    latin1_text, replaced = expected(text, "latin-1")
    assert replaced == 5  # €, –, 日, 本, ✓

    # Broadcast: the counts say one of two copies was lossy.
    ack = await liz.say(text)
    assert (ack.delivered, ack.lossy, ack.results) == (2, 1, ())
    at_steve = await steve.next()
    assert isinstance(at_steve, DELIVER)
    assert at_steve.text == latin1_text
    assert len(at_steve.text) == len(text)  # nothing cut ...
    assert at_steve.text.count("?") == text.count("?") + replaced  # ... each loss marked
    assert at_steve.flags == DeliverFlags.LOSSY
    at_bailey = await bailey.next()
    assert isinstance(at_bailey, DELIVER)
    assert (at_bailey.text, at_bailey.flags) == (text, DeliverFlags(0))
    assert at_steve.server_msg_id == at_bailey.server_msg_id == ack.server_msg_id

    # Directed: the sender learns which recipient got a lossy copy.
    ack = await liz.say(text, to=("Bailey", "Steve"))
    assert ack.results == (
        RecipientResult(name="Bailey", outcome=Outcome.DELIVERED),
        RecipientResult(name="Steve", outcome=Outcome.LOSSY),
    )
    assert (ack.delivered, ack.lossy) == (2, 1)
    at_steve = await steve.next()
    assert (at_steve.text, at_steve.flags) == (latin1_text, DeliverFlags.DIRECTED | DeliverFlags.LOSSY)
    at_bailey = await bailey.next()
    assert (at_bailey.text, at_bailey.flags) == (text, DeliverFlags.DIRECTED)

    # Text the latin-1 and utf-16 senders send arrives exactly at the utf-8 recipient.
    for sender, sent in ((steve, "Grüße, ½ café ÿ ©"), (bailey, "日本語 𝄞 \ufeff😀 ok")):
        ack = await sender.say(sent, to=("Liz",))
        assert ack.results == (RecipientResult(name="Liz", outcome=Outcome.DELIVERED),)
        got = await liz.next()
        assert isinstance(got, DELIVER)
        assert (got.text, got.flags, got.sender) == (sent, DeliverFlags.DIRECTED, sender.auth_ok.name)

    # A text that fits latin-1 is not marked lossy.
    ack = await bailey.say("naïve façade", to=("Steve",))
    assert ack.results == (RecipientResult(name="Steve", outcome=Outcome.DELIVERED),)
    assert (ack.delivered, ack.lossy) == (1, 0)
    got = await steve.next()
    assert (got.text, got.flags) == ("naïve façade", DeliverFlags.DIRECTED)


@pytest.mark.parametrize("sender", ["utf-8", "utf-16", "utf-32"])
async def test_broadcast_to_every_encoding(chat: Chat, sender: str) -> None:
    """A universal sender's text reaches each of the five others as R3.5 says, counted in MSG_ACK."""
    clients = await everyone(chat)
    ack = await clients[sender].say(MIXED)
    lossy = 0
    for encoding, client in clients.items():
        if encoding == sender:
            continue
        want, replaced = expected(MIXED, encoding)
        got = await client.next()
        assert isinstance(got, DELIVER), (encoding, got)
        assert got.text == want, encoding
        assert got.flags == (DeliverFlags.LOSSY if replaced else DeliverFlags(0)), encoding
        lossy += bool(replaced)
    assert (ack.delivered, ack.lossy) == (5, lossy) == (5, 3)
    for client in clients.values():
        assert await client.collect(0.05) == []


async def test_directed_outcomes_per_encoding(chat: Chat) -> None:
    clients = await everyone(chat)
    names = tuple(account(e) for e in CODECS if e != "utf-8")
    ack = await clients["utf-8"].say(MIXED, to=names)
    assert ack.results == tuple(
        RecipientResult(
            name=account(e), outcome=Outcome.LOSSY if expected(MIXED, e)[1] else Outcome.DELIVERED
        )
        for e in CODECS
        if e != "utf-8"
    )
    assert (ack.delivered, ack.lossy) == (5, 3)


@pytest.mark.parametrize(
    ("sender", "text"),
    [
        ("latin-1", "Ærøskøbing ½ ÿ ¿"),
        ("cp1252", "€ “curly” – dash… œ"),
        ("ascii", "plain old ASCII ~ {}"),
        ("utf-16", "Ελληνικά 日本 𝄞"),
        ("utf-32", "😀 жизнь \ufeff"),
    ],
)
async def test_every_encoding_reaches_utf8_exactly(chat: Chat, sender: str, text: str) -> None:
    clients = await everyone(chat)
    ack = await clients[sender].say(text, to=("u_utf8",))
    assert ack.results == (RecipientResult(name="u_utf8", outcome=Outcome.DELIVERED),)
    got = await clients["utf-8"].next()
    assert isinstance(got, DELIVER)
    assert (got.text, got.flags, got.sender) == (text, DeliverFlags.DIRECTED, account(sender))


async def test_the_longest_text_is_never_cut(chat: Chat) -> None:
    """max_text astral characters: 16 KB in every UTF, all '?' in latin-1, all counted (R3.5, R4.2)."""
    await chat.start()
    liz = await chat.login("Liz", encoding="utf-32")
    steve = await chat.login("Steve", encoding="latin-1")
    bailey = await chat.login("Bailey", encoding="utf-16")
    text = "😀" * (liz.hello_ok.max_text - 1) + "!"
    ack = await liz.say(text)
    assert (ack.delivered, ack.lossy) == (2, 1)
    at_steve = await steve.expect(DELIVER)
    assert at_steve.text == "?" * (len(text) - 1) + "!" and at_steve.flags == DeliverFlags.LOSSY
    at_bailey = await bailey.expect(DELIVER)
    assert at_bailey.text == text and at_bailey.flags == DeliverFlags(0)
