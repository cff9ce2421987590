"""The fuzzer and protocol versions: sessions offer the versions the fuzzer judges, and every frame it
builds by hand carries the session's version -- but the one attack that must carry another."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dfachat.cli import main
from dfachat.codec import FrameDecoder
from dfachat.codec.messages import JOINED  # type: ignore[attr-defined]
from dfachat.conformance.fuzz.client_plan import ATTACKS, UNEXPECTED_CANDIDATES, VERSION, Attack
from dfachat.conformance.fuzz.client_play import attack_frame
from dfachat.conformance.fuzz.oracle import Account
from dfachat.conformance.fuzz.server_mode import FuzzSettings, illegal_messages
from dfachat.conformance.fuzz.values import (
    JUDGED_VERSIONS,
    MALFORMED,
    TRAILING,
    other_version,
    truncated,
)
from dfachat.conformance.fuzz.wire import FuzzError, Target
from dfachat.errors import FrameError, UnsupportedVersion
from dfachat.fsm import TABLES_BY_VERSION
from dfachat.spec import ENCODINGS, HEADER, MESSAGES_BY_NAME, STATES, SUPPORTED_VERSIONS

from .conftest import account_args

# the header's version byte: after the fields before it (the magic, R2.1)
_VERSION_AT = sum(s.sizeof() for s in itertools.takewhile(lambda s: s.name != "version", HEADER.subcons))


def _version_of(frame: bytes) -> int:
    return frame[_VERSION_AT]


def test_the_fuzzer_judges_supported_versions_only() -> None:
    assert JUDGED_VERSIONS and set(JUDGED_VERSIONS) <= set(SUPPORTED_VERSIONS)
    assert max(JUDGED_VERSIONS) == VERSION


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_other_version_is_never_the_sessions(version: int) -> None:
    other = other_version(version)
    assert other != version
    with pytest.raises(UnsupportedVersion):  # a session of ``version`` refuses it (R2.2)
        decoder = FrameDecoder(versions=frozenset({version}))
        decoder.feed(MALFORMED[UnsupportedVersion](True, "utf-8", version)[0])
        decoder.next_message()


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
@pytest.mark.parametrize("authenticated", [False, True])
@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_malformed_frames_carry_the_sessions_version(version: int, authenticated: bool, encoding: str) -> None:
    for error, builder in [*MALFORMED.items(), (None, TRAILING)]:
        data, what = builder(authenticated, encoding, version)
        if error is UnsupportedVersion:
            assert _version_of(data) != version, what
            continue
        assert _version_of(data) == version, what
        if error is not None:  # the defect is the one the builder is for, not the version
            decoder = FrameDecoder(encoding, versions=frozenset({version}))
            decoder.feed(data)
            with pytest.raises(FrameError) as caught:
                while decoder.next_message() is not None:
                    pass
            assert not isinstance(caught.value, UnsupportedVersion), what
    assert _version_of(truncated("utf-8", version)) == version


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_illegal_messages_exist_in_the_sessions_version(version: int) -> None:
    table = TABLES_BY_VERSION[version]["server"]
    for state in STATES["server"]:
        for spec in illegal_messages(state.name, version):
            assert spec.in_version(version) and spec.code not in table.recv[state.name]


@given(kind=st.sampled_from(ATTACKS), value=st.integers(0, 255), version=st.sampled_from(SUPPORTED_VERSIONS),
       encoding=st.sampled_from(list(ENCODINGS)))
def test_client_attacks_carry_the_sessions_version(kind: str, value: int, version: int, encoding: str) -> None:
    attack = Attack(kind=kind, message=JOINED(name="Someone"), value=value)
    data = attack_frame(attack, encoding, version)
    if kind == "bad-magic":
        return  # its header is not a dfachat header
    if kind == "bad-version":
        assert _version_of(data) != version
    else:
        assert _version_of(data) == version


def test_unexpected_candidates_exist_in_the_plans_version() -> None:
    assert all(spec.in_version(VERSION) for spec in UNEXPECTED_CANDIDATES)


def test_reserved_flags_of_a_version_include_later_versions_flags() -> None:
    """A flag a later version defines is reserved in an earlier one (R4.7): the attack may set it."""
    from dfachat.spec import DeliverFlags
    from dfachat.spec.codes import since

    later = [f for f in DeliverFlags if since(f) > 1]
    subs = MESSAGES_BY_NAME["DELIVER"].layout.subcons
    at = HEADER.sizeof() + sum(s.sizeof() for s in itertools.takewhile(lambda s: s.name != "flags", subs))
    seen = set()
    for value in range(256):
        data = attack_frame(Attack(kind="reserved-flags", message=None, value=value), "utf-8", 1)
        seen.add(data[at])
    for flag in later:
        assert any(bits & int(flag) for bits in seen)


def test_sessions_offer_the_configured_versions_and_no_unjudged_one() -> None:
    target = Target("127.0.0.1", 1)
    accounts = [Account("Liz", "pw1"), Account("Steve", "pw2")]
    assert FuzzSettings(target, accounts).versions == JUDGED_VERSIONS
    for version in (v for v in SUPPORTED_VERSIONS if v not in JUDGED_VERSIONS):
        with pytest.raises(FuzzError, match="issue 14"):
            FuzzSettings(target, accounts, versions=(version,))


def test_protocol_version_option(capsys: pytest.CaptureFixture[str]) -> None:
    for version in (v for v in SUPPORTED_VERSIONS if v not in JUDGED_VERSIONS):
        assert main(["fuzz", "server", "127.0.0.1:1", *account_args(), "--protocol-version", str(version)]) == 2
        err = capsys.readouterr().err
        assert f"not {version}" in err and "Traceback" not in err
    assert main(["fuzz", "server", "127.0.0.1:1", *account_args(), "--protocol-version",
                 str(max(SUPPORTED_VERSIONS) + 1)]) == 2
    assert "invalid choice" in capsys.readouterr().err
