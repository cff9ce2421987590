"""A message the table allows but whose values an action refuses: LocalProtocolError, nothing changed.

Regression for a finding of ``fuzz/server_session.py``: a server answering a
HELLO with the HELLO_OK of the encoding it asked for, one the spec's table
lacks (a valid IDENT such as ``utf-17``), got ``UnsupportedEncoding`` out of
``send`` *after* the session had moved to AWAIT_USER, with no bytes to
send. ``send`` promises LocalProtocolError for anything our own side cannot
send (R12.2, here R3.1), and a refused send must leave the session as it was.
The client's HELLO has the same action path (``offer``).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dfachat.codec import encode
from dfachat.errors import LocalProtocolError
from dfachat.fsm import ClientSession, ServerSession
from dfachat.spec import ENCODINGS, MESSAGES_BY_NAME
from dfachat.spec.types import unwrap

from .samples import plain


def _encoding_field(type_name: str):
    return next(unwrap(sub) for sub in MESSAGES_BY_NAME[type_name].layout.subcons if sub.name == "encoding")


def unlisted_encodings(type_name: str) -> st.SearchStrategy[str]:
    """Encoding names the layout accepts (IDENT) that are not in the spec's table."""
    pattern = _encoding_field(type_name).regex.pattern.decode("ascii")
    return st.from_regex(pattern, fullmatch=True).filter(lambda name: name not in ENCODINGS)


def _negotiating() -> ServerSession:
    server = ServerSession()
    (hello,) = server.receive_data(encode(plain("HELLO")))
    assert hello.NAME == "HELLO"
    return server


@settings(max_examples=30)
@given(encoding=unlisted_encodings("HELLO_OK"))
def test_server_refuses_hello_ok_with_an_unlisted_encoding(encoding: str) -> None:
    server = _negotiating()
    before = (server.state, server.encoding, server.version)
    with pytest.raises(LocalProtocolError) as caught:
        server.send(plain("HELLO_OK", encoding=encoding))
    assert caught.value.rule == "R3.1"
    assert caught.value.state == before[0]
    assert (server.state, server.encoding, server.version) == before
    # and the session goes on: a listed encoding is sent and adopted
    server.send(plain("HELLO_OK", encoding="utf-16"))
    assert (server.state, server.encoding) == ("AWAIT_USER", "utf-16")


def test_the_fuzzer_finding() -> None:
    """The value the fuzzer found: ``utf-17``."""
    server = _negotiating()
    with pytest.raises(LocalProtocolError, match="utf-17"):
        server.send(plain("HELLO_OK", encoding="utf-17"))
    assert server.state == "NEGOTIATING" and not server.must_close


@settings(max_examples=30)
@given(encoding=unlisted_encodings("HELLO"))
def test_client_refuses_hello_with_an_unlisted_encoding(encoding: str) -> None:
    client = ClientSession()
    before = (client.state, client.encoding, client.offered_versions)
    with pytest.raises(LocalProtocolError) as caught:
        client.hello(encoding=encoding)
    assert caught.value.rule == "R3.1"
    assert (client.state, client.encoding, client.offered_versions) == before
    client.hello(encoding="latin-1")
    assert client.encoding == "latin-1" and client.offered_versions
