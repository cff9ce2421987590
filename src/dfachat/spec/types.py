"""The field types layouts are built from: construct classes with their bounds.

Each type is a construct ``Adapter`` whose ``_decode``/``_encode`` enforce the
spec's rules, so the construct schemas alone are a complete, checking
reference codec (the oracle). The attributes they carry (``max_items``,
``pattern``, ``rule`` ...) are what the generated fast codec and the protocol
document read: a bound is written once, here or in :mod:`.limits`.

The session's text encoding reaches ``Text`` through construct's context
parameters: ``schema.parse(data, encoding="utf-16-be")``.
"""

from __future__ import annotations

import re
from enum import IntEnum, IntFlag
from typing import Any

from construct import (
    Adapter,
    Construct,
    FormatField,
    GreedyBytes,
    Int8ub,
    Int16ub,
    Prefixed,
    PrefixedArray,
    Renamed,
    Struct,
)

from dfachat.errors import FieldInvalid, InvalidText
from dfachat.spec.codes import since

__all__ = [
    "at_version",
    "unwrap",
    "Code",
    "Flags",
    "Ident",
    "List",
    "Text",
    "field_path",
]


def unwrap(con: Construct) -> Construct:
    """The construct under any ``"name" / con * "doc"`` wrappers."""
    while isinstance(con, Renamed):
        con = con.subcon
    return con


def field_path(path: str) -> str:
    """construct's ``(parsing) -> a -> b`` path as ``a.b`` for error messages."""
    parts = [p.strip() for p in path.split("->")[1:]]
    return ".".join(p for p in parts if p and not p.isdigit()) or "payload"


class Ident(Adapter):
    """An ASCII identifier: a length byte (or word), then ASCII bytes matching ``pattern`` (R3.7).

    ``kind`` names it in documents (NAME for user names, IDENT for the rest,
    REASON for ERROR texts); ``casefold`` marks names compared without case.
    """

    def __init__(
        self,
        kind: str,
        pattern: str,
        rule: str,
        description: str,
        *,
        length: FormatField = Int8ub,
        casefold: bool = False,
    ) -> None:
        super().__init__(Prefixed(length, GreedyBytes))
        self.kind = kind
        self.pattern = pattern
        self.regex = re.compile(pattern.encode("ascii"))
        self.rule = rule
        self.description = description
        self.length_field = length
        self.casefold = casefold

    def _decode(self, obj: bytes, context: Any, path: str) -> str:
        if self.regex.fullmatch(obj) is None:
            raise FieldInvalid(
                f"{field_path(path)}: {bytes(obj)!r} is not a valid {self.description}", rule=self.rule
            )
        return obj.decode("ascii")

    def _encode(self, obj: str, context: Any, path: str) -> bytes:
        try:
            data = obj.encode("ascii")
        except (UnicodeEncodeError, AttributeError):
            data = None  # not b"": a pattern that allows empty (REASON) must not accept "café"
        if not isinstance(obj, str) or data is None or self.regex.fullmatch(data) is None:
            raise FieldInvalid(
                f"{field_path(path)}: {obj!r} is not a valid {self.description}", rule=self.rule
            )
        return data


class Text(Adapter):
    """Text in the session's encoding (R3.2): a 16-bit byte length, then the bytes.

    ``min_chars``/``max_chars`` name limits in :class:`~dfachat.spec.limits.Limits`
    or are numbers; they count code points after decoding.
    """

    def __init__(self, max_limit: str, rule: str, *, min_chars: int = 0) -> None:
        super().__init__(Prefixed(Int16ub, GreedyBytes))
        self.max_limit = max_limit
        self.rule = rule
        self.min_chars = min_chars

    @property
    def max_chars(self) -> int:
        from dfachat.spec.limits import LIMITS

        return int(getattr(LIMITS, self.max_limit))

    def _decode(self, obj: bytes, context: Any, path: str) -> str:
        codec = context._params.encoding
        try:
            text = obj.decode(codec)
        except UnicodeDecodeError as exc:
            raise InvalidText(
                f"{field_path(path)}: bytes are not valid {codec} at offset {exc.start}"
            ) from None
        if not self.min_chars <= len(text) <= self.max_chars:
            raise FieldInvalid(
                f"{field_path(path)}: {len(text)} code points, allowed {self.min_chars}..{self.max_chars}",
                rule=self.rule,
            )
        return text

    def _encode(self, obj: str, context: Any, path: str) -> bytes:
        if not isinstance(obj, str) or not self.min_chars <= len(obj) <= self.max_chars:
            raise FieldInvalid(
                f"{field_path(path)}: text of {len(obj) if isinstance(obj, str) else '?'} code points,"
                f" allowed {self.min_chars}..{self.max_chars}",
                rule=self.rule,
            )
        codec = context._params.encoding
        try:
            return obj.encode(codec)
        except UnicodeEncodeError as exc:
            raise InvalidText(
                f"{field_path(path)}: {obj[exc.start:exc.end]!r} cannot be encoded in {codec}",
                rule="R3.2",
            ) from None


class Code(Adapter):
    """An enumerated integer: only the values of ``enum`` are valid (R4.6)."""

    def __init__(self, subcon: FormatField, enum: type[IntEnum], *, version: int | None = None) -> None:
        super().__init__(subcon)
        self.enum = enum
        # the members a frame of ``version`` may carry (all of them when None, R4.6)
        self.members: tuple[IntEnum, ...] = tuple(m for m in enum if version is None or since(m) <= version)
        self._values = {int(m): m for m in self.members}
        self.rule = "R4.6"

    def at_version(self, version: int) -> Code:
        restricted = Code(self.subcon, self.enum, version=version)
        return self if restricted.members == self.members else restricted

    def _decode(self, obj: int, context: Any, path: str) -> IntEnum:
        value = self._values.get(obj)
        if value is None:
            raise FieldInvalid(f"{field_path(path)}: {obj} is not a {self.enum.__name__}", rule=self.rule)
        return value

    def _encode(self, obj: Any, context: Any, path: str) -> int:
        if not isinstance(obj, int) or int(obj) not in self._values:
            raise FieldInvalid(f"{field_path(path)}: {obj!r} is not a {self.enum.__name__}", rule=self.rule)
        return int(obj)


class Flags(Adapter):
    """A flag set: bits ``flags`` does not define are reserved and must be zero (R4.7)."""

    def __init__(self, subcon: FormatField, flags: type[IntFlag], *, version: int | None = None) -> None:
        super().__init__(subcon)
        self.flags = flags
        self.mask = 0  # the bits a frame of ``version`` may set (all defined ones when None)
        for member in flags:
            if version is None or since(member) <= version:
                self.mask |= int(member)
        self.rule = "R4.7"

    def at_version(self, version: int) -> Flags:
        restricted = Flags(self.subcon, self.flags, version=version)
        return self if restricted.mask == self.mask else restricted

    def _check(self, obj: Any, path: str) -> int:
        if not isinstance(obj, int) or obj < 0 or obj & ~self.mask:
            raise FieldInvalid(
                f"{field_path(path)}: {obj!r} sets reserved {self.flags.__name__} bits", rule=self.rule
            )
        return int(obj)

    def _decode(self, obj: int, context: Any, path: str) -> IntFlag:
        return self.flags(self._check(obj, path))

    def _encode(self, obj: Any, context: Any, path: str) -> int:
        return self._check(obj, path)


def at_version(con: Construct, version: int) -> Construct:
    """``con`` as a frame of ``version`` carries it: enumeration members and flags added
    later are undefined there (R4.6, R4.7). Returns ``con`` itself when nothing differs."""
    if isinstance(con, Renamed):
        inner = at_version(con.subcon, version)
        return con if inner is con.subcon else Renamed(inner, newname=con.name, newdocs=con.docs)
    if isinstance(con, (Code, Flags, List)):
        return con.at_version(version)
    if isinstance(con, Struct):
        subcons = [at_version(sub, version) for sub in con.subcons]
        if all(a is b for a, b in zip(subcons, con.subcons, strict=True)):
            return con
        return Struct(*subcons)
    return con


class List(Adapter):
    """A counted list (``count`` items of ``item``), decoded as a tuple, with bounds.

    ``max_limit`` names a limit (or is a number); ``unique`` forbids repeats,
    compared case-insensitively when the items are case-folded names.
    """

    def __init__(
        self,
        count: FormatField,
        item: Construct,
        max_limit: str | int,
        rule: str,
        *,
        min_items: int = 0,
        unique: bool = False,
    ) -> None:
        super().__init__(PrefixedArray(count, item))
        self.count_field = count
        self.item = item
        # a list of records names its record type: "Result" / Struct(...)
        self.record = item.subcon if isinstance(item, Renamed) and isinstance(item.subcon, Struct) else None
        self.max_limit = max_limit
        self.rule = rule
        self.min_items = min_items
        self.unique = unique

    def at_version(self, version: int) -> List:
        item = at_version(self.item, version)
        if item is self.item:
            return self
        return List(
            self.count_field, item, self.max_limit, self.rule, min_items=self.min_items, unique=self.unique
        )

    @property
    def max_items(self) -> int:
        if isinstance(self.max_limit, int):
            return self.max_limit
        from dfachat.spec.limits import LIMITS

        return int(getattr(LIMITS, self.max_limit))

    def _check(self, items: Any, path: str) -> tuple[Any, ...]:
        try:
            if isinstance(items, (str, bytes)):
                raise TypeError
            items = tuple(items)
        except TypeError:
            raise FieldInvalid(f"{field_path(path)}: {items!r} is not a list", rule=self.rule) from None
        if not self.min_items <= len(items) <= self.max_items:
            raise FieldInvalid(
                f"{field_path(path)}: {len(items)} items, allowed {self.min_items}..{self.max_items}",
                rule=self.rule,
            )
        if self.unique:
            keys = [
                i.casefold() if isinstance(i, str) and getattr(self.item, "casefold", False) else i
                for i in items
            ]
            try:
                repeated = len(set(keys)) != len(keys)
            except TypeError:  # unhashable: not a valid item, which the item's own check reports
                repeated = False
            if repeated:
                raise FieldInvalid(f"{field_path(path)}: an item appears twice", rule=self.rule)
        return items

    def _decode(self, obj: Any, context: Any, path: str) -> tuple[Any, ...]:
        if self.record is not None:
            obj = [{k: v for k, v in entry.items() if not k.startswith("_")} for entry in obj]
        return self._check(obj, path)

    def _encode(self, obj: Any, context: Any, path: str) -> list[Any]:
        items = list(self._check(obj, path))
        if self.record is not None and not all(isinstance(item, dict) for item in items):
            # the oracle's encoder turns records into dicts; anything else was not a record
            raise FieldInvalid(f"{field_path(path)}: items must be {self.item.name} records", rule=self.rule)
        return items
