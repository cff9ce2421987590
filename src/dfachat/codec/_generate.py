"""Generate the runtime codec from the construct schemas, at import.

construct interprets a schema at about 1/20 the speed of hand-written
``struct`` code, and its compiled parsers trust length prefixes (unsafe on
network bytes). So the schemas stay the declaration and the oracle, and this
module walks each layout and emits specialised Python source: one encoder and
one decoder per message type, with consecutive fixed-size fields merged into
one ``struct`` call and every length checked against the bytes really there.

The decoders check in exactly the order construct parses (field by field; a
list's items before its count bounds), so generated codec and oracle raise the
same error for the same bytes: the differential tests hold them to it.

Supported constructs are the ones the spec uses: ``FormatField`` (big-endian
unsigned ints), :class:`Code`, :class:`Flags`, :class:`Ident`, :class:`Text`
and :class:`List` of ints, idents or records. Anything else is a
:class:`~dfachat.errors.SpecError` at import, never a silent fallback.
"""

from __future__ import annotations

import operator
import struct
import zlib
from collections.abc import Callable
from typing import Any

from construct import FormatField, Struct

from dfachat.errors import FieldInvalid, FrameTooLarge, InvalidText, MalformedPayload, SpecError
from dfachat.spec import FRAME, HEADER, LIMITS, MAGIC, MESSAGES, SUPPORTED_VERSIONS, MessageSpec
from dfachat.spec.types import Code, Flags, Ident, List, Text, unwrap

__all__ = ["generate", "header_struct", "checksum_struct", "max_payload"]

_CACHE_LIMIT = 4096  # distinct identifiers remembered per field type


def header_struct() -> struct.Struct:
    """The frame header as one ``struct``, read off :data:`~dfachat.spec.HEADER`."""
    fmt = ">"
    for sub in HEADER.subcons:
        con = unwrap(sub)
        if isinstance(con, FormatField):
            fmt += con.fmtstr[1:]
        elif type(con).__name__ == "Const":
            fmt += f"{len(con.value)}s"
        else:
            raise SpecError(f"header field {sub.name}: unsupported construct {con!r}")
    return struct.Struct(fmt)


def checksum_struct() -> struct.Struct:
    crc = unwrap(FRAME.subcons[-1])
    return struct.Struct(crc.checksumfield.fmtstr)


def max_payload() -> int:
    return LIMITS.max_frame - header_struct().size - checksum_struct().size


def _fixed(con: Any) -> bool:
    return isinstance(con, (FormatField, Code, Flags))


def _fmt(con: Any) -> str:
    base = con.subcon if isinstance(con, (Code, Flags)) else con
    if not isinstance(base, FormatField) or base.fmtstr[0] != ">" or base.fmtstr[1] not in "BHILQ":
        raise SpecError(f"unsupported fixed field {con!r}: only big-endian unsigned ints")
    return base.fmtstr[1]


def _groups(layout: Struct) -> list[list[tuple[str, Any]]]:
    """Split a layout into runs: consecutive fixed fields together, others alone."""
    groups: list[list[tuple[str, Any]]] = []
    for sub in layout.subcons:
        con = unwrap(sub)
        if _fixed(con) and groups and _fixed(groups[-1][0][1]):
            groups[-1].append((sub.name, con))
        else:
            groups.append([(sub.name, con)])
    return groups


class _Emitter:
    """Collects source lines and the constants they refer to."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.namespace: dict[str, Any] = {}
        self._counter = 0

    def const(self, value: Any, hint: str = "k") -> str:
        self._counter += 1
        name = f"_{hint}{self._counter}"
        self.namespace[name] = value
        return name

    def emit(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)

    def var(self, hint: str = "v") -> str:
        self._counter += 1
        return f"{hint}{self._counter}"


# ---------------------------------------------------------------------------
# Helpers the generated code calls on its rare paths (errors, cache misses).


def _ident_decoder(con: Ident, where: str) -> Callable[[bytes], str]:
    cache: dict[bytes, str] = {}
    match = con.regex.fullmatch

    def slow(raw: bytes) -> str:
        if match(raw) is None:
            raise FieldInvalid(f"{where}: {raw!r} is not a valid {con.description}", rule=con.rule)
        text = raw.decode("ascii")
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        cache[raw] = text
        return text

    def decode(raw: bytes) -> str:
        text = cache.get(raw)
        return text if text is not None else slow(raw)

    decode.cache = cache  # type: ignore[attr-defined]
    decode.slow = slow  # type: ignore[attr-defined]
    return decode


def _ident_encoder(con: Ident, where: str) -> Callable[[Any], bytes]:
    """Returns the length-prefixed ASCII bytes of an identifier, checked once and remembered."""
    cache: dict[str, bytes] = {}
    match = con.regex.fullmatch
    prefix = struct.Struct(con.length_field.fmtstr).pack

    def slow(value: Any) -> bytes:
        raw = value.encode("ascii", "replace") if isinstance(value, str) else b""
        if type(value) is not str or not value.isascii() or match(raw) is None:
            raise FieldInvalid(f"{where}: {value!r} is not a valid {con.description}", rule=con.rule)
        wire = prefix(len(raw)) + raw
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        cache[value] = wire
        return wire

    def encode(value: Any) -> bytes:
        try:
            wire = cache.get(value)
        except TypeError:  # unhashable: certainly not a name
            wire = None
        return wire if wire is not None else slow(value)

    return encode


def _distinct(items: Any, fold: bool) -> bool:
    try:
        keys = [i.casefold() if fold and isinstance(i, str) else i for i in items]
        return len(set(keys)) == len(keys)
    except TypeError:
        return True  # unhashable items fail their own check next


def _fixed_slow(buf: bytes, pos: int, end: int, fields: list[tuple[str, str, Any]]) -> None:
    """The short-payload path of a fixed group: read field by field as construct does, then fail."""
    for where, fmt, check in fields:
        size = struct.calcsize(">" + fmt)
        if pos + size > end:
            raise MalformedPayload(f"{where}: payload ends inside the field")
        (raw,) = struct.unpack_from(">" + fmt, buf, pos)
        pos += size
        if check is not None:
            check(raw)
    raise AssertionError("unreachable: the group did not fit but every field did")


def _code_checker(con: Code, where: str) -> tuple[dict[int, Any], Callable[[int], Any]]:
    table = {int(member): member for member in con.members}

    def check(raw: int) -> Any:
        value = table.get(raw)
        if value is None:
            raise FieldInvalid(f"{where}: {raw} is not a {con.enum.__name__}", rule=con.rule)
        return value

    return table, check


def _flags_checker(con: Flags, where: str) -> tuple[dict[int, Any], Callable[[int], Any]]:
    table = {value: con.flags(value) for value in range(con.mask + 1) if not value & ~con.mask}

    def check(raw: int) -> Any:
        value = table.get(raw)
        if value is None:
            raise FieldInvalid(f"{where}: {raw!r} sets reserved {con.flags.__name__} bits", rule=con.rule)
        return value

    return table, check


def _fixed_encode_error(values: list[Any], fields: list[tuple[str, str, Any]]) -> FieldInvalid:
    for value, (where, fmt, con) in zip(values, fields, strict=True):
        if isinstance(con, Code):
            if not isinstance(value, int) or int(value) not in {int(m) for m in con.members}:
                return FieldInvalid(f"{where}: {value!r} is not a {con.enum.__name__}", rule=con.rule)
        elif isinstance(con, Flags) and (not isinstance(value, int) or value < 0 or value & ~con.mask):
            return FieldInvalid(f"{where}: {value!r} sets reserved {con.flags.__name__} bits", rule=con.rule)
        try:
            struct.pack(">" + fmt, value)
        except (struct.error, TypeError):
            bits = struct.calcsize(">" + fmt) * 8
            return FieldInvalid(f"{where}: {value!r} is not an integer from 0 to 2**{bits}-1", rule="R4.10")
    return FieldInvalid("a fixed field is out of range", rule="R4.10")


# ---------------------------------------------------------------------------
# Decoders


def _emit_decode_layout(e: _Emitter, layout: Struct, owner: str, indent: int) -> list[str]:
    """Emit code reading ``layout`` from buf[pos:end]; returns the variables holding its fields."""
    out: list[str] = []
    for group in _groups(layout):
        name, con = group[0]
        if _fixed(con):
            out += _emit_decode_fixed(e, group, owner, indent)
        else:
            out.append(_emit_decode_var(e, con, f"{owner}.{name}", indent))
    return out


def _emit_decode_fixed(e: _Emitter, group: list[tuple[str, Any]], owner: str, indent: int) -> list[str]:
    fmt = "".join(_fmt(con) for _, con in group)
    st = struct.Struct(">" + fmt)
    names = [e.var("f") for _ in group]
    slow_fields = []
    checks: list[tuple[str, str] | None] = []
    for (name, con), _var in zip(group, names, strict=True):
        where = f"{owner}.{name}"
        check = None
        if isinstance(con, Code):
            table, check = _code_checker(con, where)
            checks.append((e.const(table, "codes"), e.const(check, "chk")))
        elif isinstance(con, Flags):
            table, check = _flags_checker(con, where)
            checks.append((e.const(table, "flags"), e.const(check, "chk")))
        else:
            checks.append(None)
        slow_fields.append((where, _fmt(con), check))
    unpack = e.const(st.unpack_from, "unpack")
    slow = e.const(slow_fields, "slowfields")
    e.emit(indent, f"if pos + {st.size} > end:")
    e.emit(indent + 1, f"_fixed_slow(buf, pos, end, {slow})")
    if len(names) == 1 and fmt == "B":
        e.emit(indent, f"{names[0]} = buf[pos]")
    else:
        e.emit(indent, f"{', '.join(names)}{',' if len(names) == 1 else ''} = {unpack}(buf, pos)")
    e.emit(indent, f"pos += {st.size}")
    out = []
    for var, check in zip(names, checks, strict=True):
        if check is None:
            out.append(var)
            continue
        table, checker = check
        typed = e.var("c")
        e.emit(indent, f"{typed} = {table}.get({var})")
        e.emit(indent, f"if {typed} is None:")
        e.emit(indent + 1, f"{checker}({var})")
        out.append(typed)
    return out


def _emit_length(e: _Emitter, field: FormatField, where: str, indent: int) -> str:
    n = e.var("n")
    size = field.sizeof()
    e.emit(indent, f"if pos + {size} > end:")
    e.emit(indent + 1, f"raise MalformedPayload({where + ': payload ends inside the length'!r})")
    if size == 1:
        e.emit(indent, f"{n} = buf[pos]")
    elif size == 2:
        e.emit(indent, f"{n} = (buf[pos] << 8) | buf[pos + 1]")
    else:
        e.emit(indent, f"({n},) = {e.const(struct.Struct(field.fmtstr).unpack_from, 'unpack')}(buf, pos)")
    e.emit(indent, f"pos += {size}")
    return n


def _emit_take(e: _Emitter, n: str, where: str, indent: int) -> str:
    stop, raw = e.var("e"), e.var("raw")
    e.emit(indent, f"{stop} = pos + {n}")
    e.emit(indent, f"if {stop} > end:")
    e.emit(indent + 1, f"raise MalformedPayload({where!r} + f': length {{{n}}} runs past the payload')")
    e.emit(indent, f"{raw} = buf[pos:{stop}]")
    e.emit(indent, f"pos = {stop}")
    return raw


def _emit_decode_var(e: _Emitter, con: Any, where: str, indent: int) -> str:
    if isinstance(con, Ident):
        n = _emit_length(e, con.length_field, where, indent)
        raw = _emit_take(e, n, where, indent)
        dec = _ident_decoder(con, where)
        cache, slow = e.const(dec.cache, "names"), e.const(dec.slow, "ident")  # type: ignore[attr-defined]
        v = e.var("s")
        e.emit(indent, f"{v} = {cache}.get({raw})")
        e.emit(indent, f"if {v} is None:")
        e.emit(indent + 1, f"{v} = {slow}({raw})")
        return v
    if isinstance(con, Text):
        n = _emit_length(e, con.subcon.lengthfield, where, indent)
        raw = _emit_take(e, n, where, indent)
        v = e.var("t")
        e.emit(indent, "try:")
        e.emit(indent + 1, f"{v} = {raw}.decode(codec)")
        e.emit(indent, "except UnicodeDecodeError as exc:")
        e.emit(
            indent + 1,
            f"raise InvalidText({where!r} + f': bytes are not valid {{codec}} at offset {{exc.start}}') from None",
        )
        lo, hi = con.min_chars, con.max_chars
        cond = f"len({v}) > {hi}" if lo == 0 else f"not {lo} <= len({v}) <= {hi}"
        e.emit(indent, f"if {cond}:")
        e.emit(
            indent + 1,
            f"raise FieldInvalid({where!r} + f': {{len({v})}} code points, allowed {lo}..{hi}', rule={con.rule!r})",
        )
        return v
    if isinstance(con, List):
        count = _emit_length(e, con.count_field, where, indent)
        items = e.var("items")
        e.emit(indent, f"{items} = []")
        e.emit(indent, f"for _ in range({count}):")
        item = unwrap(con.item)
        if con.record is not None:
            from dfachat.codec.messages import RECORD_CLASSES

            fields = _emit_decode_layout(e, con.record, where, indent + 1)
            cls = e.const(RECORD_CLASSES[con.item.name], "record")
            e.emit(indent + 1, f"{items}.append(_tuple_new({cls}, ({''.join(f + ', ' for f in fields)})))")
        elif _fixed(item):
            (v,) = _emit_decode_fixed(e, [("item", item)], where, indent + 1)
            e.emit(indent + 1, f"{items}.append({v})")
        else:
            v = _emit_decode_var(e, item, where, indent + 1)
            e.emit(indent + 1, f"{items}.append({v})")
        lo, hi = con.min_items, con.max_items
        e.emit(indent, f"if not {lo} <= {count} <= {hi}:")
        e.emit(
            indent + 1,
            f"raise FieldInvalid({where!r} + f': {{{count}}} items, allowed {lo}..{hi}', rule={con.rule!r})",
        )
        if con.unique:
            fold = bool(getattr(item, "casefold", False))
            keys = f"set(map(_casefold, {items}))" if fold else f"set({items})"
            e.emit(indent, f"if {count} > 1 and len({keys}) != {count}:")
            e.emit(indent + 1, f"raise FieldInvalid({where + ': an item appears twice'!r}, rule={con.rule!r})")
        v = e.var("tup")
        e.emit(indent, f"{v} = tuple({items})")
        return v
    raise SpecError(f"{where}: the codec generator does not support {con!r}")


def _decoder_source(e: _Emitter, spec: MessageSpec, cls: type, version: int) -> str:
    fname = f"decode_{spec.name}_v{version}"
    layout = spec.layout_for(version)
    e.emit(0, f"def {fname}(buf, pos, end, codec):")
    values = iter(_emit_decode_layout(e, layout, spec.name, 1))
    # a field a later version added is not in this version's frame: it reads as 0
    carried = {sub.name for sub in layout.subcons}
    fields = [next(values) if sub.name in carried else "0" for sub in spec.layout.subcons]
    e.emit(1, "if pos != end:")
    e.emit(2, f"raise MalformedPayload(f'{spec.name}: {{end - pos}} bytes left over after the last field', rule='R2.7')")
    name = e.const(cls, "cls")
    e.emit(1, f"return _tuple_new({name}, ({''.join(f + ', ' for f in fields)}))")
    e.emit(0, "")
    return fname


# ---------------------------------------------------------------------------
# Encoders


def _emit_encode_layout(
    e: _Emitter,
    layout: Struct,
    owner: str,
    obj: str,
    indent: int,
    *,
    local: bool = False,
    unpack: bool = False,
) -> None:
    def ref(name: str) -> str:
        return f"{obj}_{name}" if local else f"{obj}.{name}"

    if unpack:  # records are tuples: one unpack instead of an attribute lookup per field
        e.emit(indent, f"{''.join(ref(sub.name) + ', ' for sub in layout.subcons)}= {obj}")

    for group in _groups(layout):
        name, con = group[0]
        if _fixed(con):
            _emit_encode_fixed(e, group, owner, [ref(n) for n, _ in group], indent)
        else:
            _emit_encode_var(e, con, f"{owner}.{name}", ref(name), indent)


def _emit_encode_fixed(e: _Emitter, group: list[tuple[str, Any]], owner: str, exprs: list[str], indent: int) -> None:
    fmt = "".join(_fmt(con) for _, con in group)
    pack = e.const(struct.Struct(">" + fmt).pack, "pack")
    fields = [(f"{owner}.{name}", _fmt(con), con) for name, con in group]
    conds = []
    for (_, con), expr in zip(group, exprs, strict=True):
        if isinstance(con, Code):
            valid = e.const(frozenset(int(m) for m in con.members), "valid")
            conds.append(f"{expr} not in {valid}")
        elif isinstance(con, Flags):
            conds.append(f"_index({expr}) & {~con.mask & 0xFFFFFFFFFFFFFFFF} or {expr} < 0")
    err = e.const(_fixed_encode_error, "fixerr")
    flds = e.const(fields, "fields")
    e.emit(indent, "try:")
    for cond in conds:
        e.emit(indent + 1, f"if {cond}:")
        e.emit(indent + 2, "raise TypeError")
    e.emit(indent + 1, f"parts.append({pack}({', '.join(exprs)}))")
    e.emit(indent, "except (struct.error, TypeError):")
    e.emit(indent + 1, f"raise {err}([{', '.join(exprs)}], {flds}) from None")


def _emit_encode_var(e: _Emitter, con: Any, where: str, expr: str, indent: int) -> None:
    if isinstance(con, Ident):
        enc = e.const(_ident_encoder(con, where), "ident")
        e.emit(indent, f"parts.append({enc}({expr}))")
        return
    if isinstance(con, Text):
        t, b = e.var("t"), e.var("b")
        lo, hi = con.min_chars, con.max_chars
        e.emit(indent, f"{t} = {expr}")
        e.emit(indent, f"if type({t}) is not str or not {lo} <= len({t}) <= {hi}:")
        e.emit(
            indent + 1,
            f"raise FieldInvalid({where!r} + f': text of {{len({t}) if isinstance({t}, str) else {t}!r}} code points, allowed {lo}..{hi}', rule={con.rule!r})",
        )
        e.emit(indent, "try:")
        e.emit(indent + 1, f"{b} = {t}.encode(codec)")
        e.emit(indent, "except UnicodeEncodeError as exc:")
        e.emit(
            indent + 1,
            f"raise InvalidText({where!r} + f': {{{t}[exc.start:exc.end]!r}} cannot be encoded in {{codec}}', rule='R3.2') from None",
        )
        limit = (1 << (8 * con.subcon.lengthfield.sizeof())) - 1
        e.emit(indent, f"if len({b}) > {limit}:")
        e.emit(indent + 1, f"raise FieldInvalid({where!r} + ': encoded text too long for its length field', rule={con.rule!r})")
        pack = e.const(struct.Struct(con.subcon.lengthfield.fmtstr).pack, "pack")
        e.emit(indent, f"parts.append({pack}(len({b})))")
        e.emit(indent, f"parts.append({b})")
        return
    if isinstance(con, List):
        items = e.var("items")
        lo, hi = con.min_items, con.max_items
        e.emit(indent, f"{items} = {expr}")
        e.emit(indent, f"if isinstance({items}, (str, bytes)) or not hasattr({items}, '__len__') or not {lo} <= len({items}) <= {hi}:")
        e.emit(
            indent + 1,
            f"raise FieldInvalid({where!r} + f': {{len({items}) if hasattr({items}, \"__len__\") else {items}!r}} items, allowed {lo}..{hi}', rule={con.rule!r})",
        )
        item = unwrap(con.item)
        if con.unique:
            fold = bool(getattr(item, "casefold", False))
            keys = f"set(map(_casefold, {items}))" if fold else f"set({items})"
            e.emit(indent, f"if len({items}) > 1:")
            e.emit(indent + 1, "try:")
            e.emit(indent + 2, f"distinct = len({keys}) == len({items})")
            e.emit(indent + 1, "except (AttributeError, TypeError):")
            e.emit(indent + 2, f"distinct = _distinct({items}, {fold})")
            e.emit(indent + 1, "if not distinct:")
            e.emit(indent + 2, f"raise FieldInvalid({where + ': an item appears twice'!r}, rule={con.rule!r})")
        pack = e.const(struct.Struct(con.count_field.fmtstr).pack, "pack")
        e.emit(indent, f"parts.append({pack}(len({items})))")
        x = e.var("x")
        if con.record is not None:
            from dfachat.codec.messages import RECORD_CLASSES

            record = e.const(RECORD_CLASSES[con.item.name], "record")
            e.emit(indent, f"for {x} in {items}:")
            e.emit(indent + 1, f"if type({x}) is not {record}:")
            e.emit(
                indent + 2,
                f"raise FieldInvalid({where!r} + f': {{{x}!r}} is not a {con.item.name}', rule={con.rule!r})",
            )
            _emit_encode_layout(e, con.record, where, x, indent + 1, local=True, unpack=True)
        elif _fixed(item):
            e.emit(indent, f"for {x} in {items}:")
            _emit_encode_fixed(e, [("item", item)], where, [x], indent + 1)
        elif isinstance(item, Ident):
            enc = e.const(_ident_encoder(item, where), "ident")
            e.emit(indent, f"parts.extend(map({enc}, {items}))")
        else:
            raise SpecError(f"{where}: unsupported list item {item!r}")
        return
    raise SpecError(f"{where}: the codec generator does not support {con!r}")


def _encoder_source(e: _Emitter, spec: MessageSpec, version: int) -> str:
    fname = f"encode_{spec.name}_v{version}"
    layout = spec.layout_for(version)
    e.emit(0, f"def {fname}(m, codec):")
    e.emit(1, "parts = []")
    fields = [sub.name for sub in spec.layout.subcons]
    if fields:  # messages are tuples: one unpack instead of an attribute lookup per field
        e.emit(1, f"{''.join(f'm_{f}, ' for f in fields)}= m")
    _emit_encode_layout(e, layout, spec.name, "m", 1, local=True)
    e.emit(1, "payload = b''.join(parts)")
    e.emit(1, f"if len(payload) > {max_payload()}:")
    e.emit(2, f"raise FrameTooLarge(f'{spec.name}: payload of {{len(payload)}} bytes exceeds {max_payload()}')")
    e.emit(1, f"head = _header(_MAGIC, {version}, {spec.code}, len(payload))")
    e.emit(1, "return b''.join((head, payload, _crc_pack(_crc32(payload, _crc32(head)))))")
    e.emit(0, "")
    return fname


Encoders = dict[tuple[int, type], Callable[[Any, str], bytes]]
Decoders = dict[tuple[int, int], Callable[..., Any]]


def generate() -> tuple[Encoders, Decoders, str]:
    """Generate the codec: (encoder per (version, message class), decoder per (version, type
    code), the source). A message a version lacks has neither in that version."""
    from dfachat.codec.messages import MESSAGE_CLASSES

    e = _Emitter()
    e.namespace.update(
        struct=struct,
        MalformedPayload=MalformedPayload,
        FieldInvalid=FieldInvalid,
        InvalidText=InvalidText,
        FrameTooLarge=FrameTooLarge,
        _fixed_slow=_fixed_slow,
        _distinct=_distinct,
        _index=operator.index,
        _tuple_new=tuple.__new__,
        _casefold=str.casefold,
        _header=header_struct().pack,
        _crc_pack=checksum_struct().pack,
        _crc32=zlib.crc32,
        _MAGIC=MAGIC,
    )
    names: list[tuple[int, MessageSpec, str, str]] = []
    for version in SUPPORTED_VERSIONS:
        for spec in MESSAGES:
            if spec.in_version(version):
                cls = MESSAGE_CLASSES[spec.name]
                names.append((version, spec, _encoder_source(e, spec, version), _decoder_source(e, spec, cls, version)))
    source = "\n".join(e.lines)
    code = compile(source, "<dfachat generated codec>", "exec")
    exec(code, e.namespace)  # noqa: S102 - our own generated source, from our own schemas
    encoders = {(v, MESSAGE_CLASSES[spec.name]): e.namespace[enc] for v, spec, enc, _ in names}
    decoders = {(v, spec.code): e.namespace[dec] for v, spec, _, dec in names}
    return encoders, decoders, source
