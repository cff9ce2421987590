"""The text encodings a session may negotiate (section 3).

Each wire name maps to the Python codec that implements the rule exactly:
utf-16 and utf-32 are big-endian without BOM (R3.3), so they map to the
explicit ``-be`` codecs, which neither write nor strip a BOM; strict error
handling rejects everything R3.4 calls invalid.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ENCODINGS", "REPLACEMENT", "Encoding", "encoding_named"]

REPLACEMENT = "?"  # what an unrepresentable character becomes (R3.5)


@dataclass(frozen=True, slots=True)
class Encoding:
    name: str  # on the wire, in HELLO and HELLO_OK
    codec: str  # the Python codec that implements it
    description: str
    universal: bool  # can it carry every Unicode scalar value?


ENCODINGS: dict[str, Encoding] = {
    e.name: e
    for e in (
        Encoding("utf-8", "utf-8", "UTF-8 (RFC 3629), no BOM", True),
        Encoding("utf-16", "utf-16-be", "UTF-16, big-endian, no BOM", True),
        Encoding("utf-32", "utf-32-be", "UTF-32, big-endian, no BOM", True),
        Encoding("latin-1", "latin-1", "ISO 8859-1: U+0000 to U+00FF", False),
        Encoding("ascii", "ascii", "US-ASCII: U+0000 to U+007F", False),
        Encoding("cp1252", "cp1252", "Windows-1252 (0x81 0x8D 0x8F 0x90 0x9D undefined)", False),
    )
}


def encoding_named(name: str) -> Encoding | None:
    """The encoding with this wire name, or None (exact spelling, R3.1)."""
    return ENCODINGS.get(name)
