"""TLS: `dfachat cert`, a TLS server, the client library with certificate checking on, and clear
errors on both sides when one side speaks TLS and the other does not."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from dfachat.cli import main
from dfachat.client import ConnectionFailed, Delivery, open_chat, tls_context
from dfachat.server.tls import server_context

from .client import HOST, Chat

pytestmark = pytest.mark.skipif(
    shutil.which("openssl") is None and not os.environ.get("CI"),
    reason="the openssl program is not installed (required when CI is set)",
)


def make_cert(directory: Path, *hosts: str) -> Path:
    argv = ["cert", "--out-dir", str(directory)]
    for host in hosts:
        argv += ["--host", host]
    assert main(argv) == 0
    assert (directory / "key.pem").stat().st_mode & 0o077 == 0
    return directory


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cert(tmp_path_factory.mktemp("tls"))


def tls(certs: Path) -> dict[str, object]:
    return {"tls": server_context(certs / "cert.pem", certs / "key.pem")}


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "dfachat.server"]


async def test_login_and_chat_over_tls(chat: Chat, certs: Path) -> None:
    await chat.start(**tls(certs))
    context = tls_context(certs / "cert.pem")
    liz = await open_chat(HOST, chat.port, user="Liz", password="pw1", ssl=context)
    steve = await open_chat("localhost", chat.port, user="Steve", password="pw2", ssl=context)
    try:
        assert liz._writer.get_extra_info("ssl_object") is not None
        ack = await liz.send("over TLS", to=["Steve"])
        assert ack.delivered == 1
        async for event in steve.events():
            if isinstance(event, Delivery):
                assert (event.sender, event.text) == ("Liz", "over TLS")
                break
    finally:
        await liz.quit()
        await steve.quit()


async def test_certificates_are_checked_by_default(chat: Chat, certs: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    await chat.start(**tls(certs))
    with pytest.raises(ConnectionFailed, match="certificate") as info:
        await open_chat(HOST, chat.port, user="Liz", password="pw1", ssl=tls_context())
    assert "--ca" in str(info.value)
    for _ in range(200):  # the server may log it just after the client gave up
        if any(m.startswith("TLS handshake with 127.0.0.1:") for m in messages(caplog)):
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError(f"no handshake failure logged: {messages(caplog)}")
    assert chat.server is not None and not chat.server.connections


async def test_the_host_name_is_checked(chat: Chat, tmp_path: Path) -> None:
    elsewhere = make_cert(tmp_path, "chat.example.org")
    await chat.start(**tls(elsewhere))
    with pytest.raises(ConnectionFailed, match="certificate.*mismatch"):
        await open_chat(HOST, chat.port, user="Liz", password="pw1", ssl=tls_context(elsewhere / "cert.pem"))


async def test_a_plaintext_client_on_a_tls_port(chat: Chat, certs: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    await chat.start(**tls(certs))
    with pytest.raises(ConnectionFailed, match=f"the server at {HOST}:{chat.port} speaks TLS: use --tls"):
        await open_chat(HOST, chat.port, user="Liz", password="pw1")
    lines = [m for m in messages(caplog) if "not a TLS client" in m]
    assert len(lines) == 1 and "127.0.0.1:" in lines[0], messages(caplog)


async def test_a_tls_client_on_a_plaintext_port(chat: Chat, certs: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    await chat.start()
    with pytest.raises(ConnectionFailed, match=f"the server at {HOST}:{chat.port} does not speak TLS"):
        await open_chat(HOST, chat.port, user="Liz", password="pw1", ssl=tls_context(certs / "cert.pem"))
    lines = [m for m in messages(caplog) if "does not speak TLS" in m]
    assert len(lines) == 1 and "127.0.0.1:" in lines[0], messages(caplog)


def test_cert_refuses_to_overwrite_and_says_when_openssl_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    make_cert(tmp_path)
    assert main(["cert", "--out-dir", str(tmp_path)]) == 2
    assert "--force" in capsys.readouterr().err
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert main(["cert", "--out-dir", str(tmp_path / "new")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "openssl program is not installed" in err


def test_server_needs_both_cert_and_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["server", "--db", str(tmp_path / "db"), "--tls-cert", "cert.pem"]) == 2
    assert "both --tls-cert and --tls-key" in capsys.readouterr().err
    assert main(["server", "--db", str(tmp_path / "db"), "--tls-cert", "no.pem", "--tls-key", "no.pem"]) == 2
    assert "no.pem" in capsys.readouterr().err
