"""Typed messages: one small immutable class per message type, generated from the layouts.

Nothing here is written per message: :func:`_record_class` reads a layout and
makes ``HELLO``, ``MSG``, ``DELIVER`` ... with keyword-only constructors and
their fields in layout order. A list of records (MSG_ACK's results) gets a
record class named in the spec (``RecipientResult``).

The classes are slotted tuples with named read-only fields (the NamedTuple
idea), not dataclasses: building a frozen dataclass costs 60-80 ns per field
(``object.__setattr__`` for each), which was 40% of decoding a DELIVER, while
a tuple record is built in one C call. Equality and hashing include the
class, so ``LIST() != QUIT()``; ``replace`` and ``as_dict`` stand in for
``dataclasses.replace`` and ``asdict``.

Values are checked when a message is encoded, not when it is built, so the
decoder can build messages on its fast path (``_from_wire``, which takes the
field values as one tuple) without running the checks twice.
"""

from __future__ import annotations

import sys
from operator import itemgetter
from typing import Any, ClassVar

from construct import FormatField, Struct

from dfachat.spec import MESSAGES, MessageSpec
from dfachat.spec.types import Code, Flags, Ident, List, Text, unwrap

__all__ = ["MESSAGE_CLASSES", "MESSAGE_CLASSES_BY_CODE", "RECORD_CLASSES", "Message", "Record"]

_tuple_new = tuple.__new__


def _rebuild(cls: type, values: tuple[Any, ...]) -> Any:
    return _tuple_new(cls, values)


class Record(tuple):
    """An immutable record with named fields; base of messages and their list records."""

    __slots__ = ()
    FIELDS: ClassVar[tuple[str, ...]] = ()

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={value!r}" for name, value in zip(self.FIELDS, self, strict=True))
        return f"{type(self).__name__}({inner})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and tuple.__eq__(self, other)  # type: ignore[arg-type]

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(self)))

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), tuple(self)))

    def as_dict(self) -> dict[str, Any]:
        return dict(zip(self.FIELDS, self, strict=True))

    def replace(self, **changes: Any) -> Any:
        """A copy with some fields changed."""
        unknown = set(changes) - set(self.FIELDS)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field {', '.join(sorted(unknown))}")
        return type(self)(**{**self.as_dict(), **changes})


class Message(Record):
    """Base of every typed message. ``TYPE`` is the wire type code, ``NAME`` the message name."""

    __slots__ = ()
    TYPE: ClassVar[int]
    NAME: ClassVar[str]
    SPEC: ClassVar[MessageSpec]


def _python_type(con: Any) -> Any:
    con = unwrap(con)
    if isinstance(con, Code):
        return con.enum
    if isinstance(con, Flags):
        return con.flags
    if isinstance(con, (Ident, Text)):
        return str
    if isinstance(con, FormatField):
        return int
    if isinstance(con, List):
        item = RECORD_CLASSES[con.item.name] if con.record is not None else _python_type(con.item)
        return tuple[item, ...]  # type: ignore[valid-type]
    raise TypeError(f"no Python type for {con!r}")


def _record_class(
    name: str, layout: Struct, base: type, attrs: dict[str, Any], optional: frozenset[str] = frozenset()
) -> type:
    """``optional``: fields a later protocol version added; they default to 0."""
    fields = tuple(sub.name for sub in layout.subcons)
    namespace: dict[str, Any] = {
        "__slots__": (),
        "__module__": __name__,
        "__annotations__": {sub.name: _python_type(sub) for sub in layout.subcons},
        "FIELDS": fields,
        **attrs,
    }
    for index, sub in enumerate(layout.subcons):
        namespace[sub.name] = property(itemgetter(index), doc=sub.docs or None)
    # A keyword-only constructor with exactly these fields, so a typo is a TypeError.
    args = "".join(f", {f}=0" if f in optional else f", {f}" for f in fields)
    source = (
        f"def __new__(cls, *{args}):\n    return _tuple_new(cls, ({''.join(f'{f}, ' for f in fields)}))\n"
        if fields
        else "def __new__(cls):\n    return _tuple_new(cls, ())\n"
    )
    scope: dict[str, Any] = {"_tuple_new": _tuple_new}
    exec(source, scope)  # noqa: S102 - generated from our own layouts
    namespace["__new__"] = scope["__new__"]
    cls = type(name, (base,), namespace)
    cls._from_wire = staticmethod(lambda values, _cls=cls: _tuple_new(_cls, values))
    return cls


RECORD_CLASSES: dict[str, type[Record]] = {}
for _spec in MESSAGES:
    for _sub in _spec.layout.subcons:
        _list = unwrap(_sub)
        if isinstance(_list, List) and _list.record is not None:
            _item = _list.item
            RECORD_CLASSES[_item.name] = _record_class(
                _item.name, _item.subcon, Record, {"__doc__": f"A record of {_spec.name}.{_sub.name}."}
            )


def _message_class(spec: MessageSpec) -> type[Message]:
    doc = f"{spec.name} (type 0x{spec.code:02X}, sent by {' and '.join(sorted(spec.senders))}): {spec.summary}"
    return _record_class(
        spec.name,
        spec.layout,
        Message,
        {"__doc__": doc, "TYPE": spec.code, "NAME": spec.name, "SPEC": spec},
        frozenset(name for name, _ in spec.added),
    )


MESSAGE_CLASSES: dict[str, type[Message]] = {spec.name: _message_class(spec) for spec in MESSAGES}
MESSAGE_CLASSES_BY_CODE: dict[int, type[Message]] = {cls.TYPE: cls for cls in MESSAGE_CLASSES.values()}

# Export each class as a module attribute: ``from dfachat.codec.messages import MSG``.
_module = sys.modules[__name__]
for _name, _cls in {**MESSAGE_CLASSES, **RECORD_CLASSES}.items():
    setattr(_module, _name, _cls)
__all__ += [*MESSAGE_CLASSES, *RECORD_CLASSES]
