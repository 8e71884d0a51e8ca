"""OTLP/JSON request bodies → protobuf messages, and protobuf replies → OTLP/JSON.

OTLP/JSON is the proto3 JSON mapping with the changes listed in the OTLP specification
("JSON Protobuf Encoding"): trace and span ids are hex strings rather than base64, enums are
integers, keys are lowerCamelCase. Parsers must also accept what any proto3 JSON parser accepts,
so this module takes enum names, original ``snake_case`` keys, 64-bit integers as numbers or
strings and doubles as numbers or ``"NaN"``/``"Infinity"``/``"-Infinity"``; unknown fields are
ignored and ``null`` means "not set".

``google.protobuf.json_format`` is about a hundred times slower than parsing the same request in
binary, so the body is decoded by msgspec into Python builtins and converted by a plan made once
per message type from its descriptor: for every JSON key (``json_name`` and ``name``) the field's
keyword name and a converter. The result is a tree of keyword dicts given to the message class
in one call; upb builds the nested messages in C, which is faster than filling them in place.

Every error in a request raises :class:`~opstrata.otlp.decoded.InvalidRequest` with the path of
the offending value, e.g. ``resourceSpans[0].scopeSpans[0].spans[3].traceId: not hex``.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import threading
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import msgspec
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from opstrata.otlp.decoded import InvalidRequest

__all__ = ["MAX_DEPTH", "message_to_json", "parse_json_request"]

# Nesting of JSON objects accepted, the request object itself being level 1. Only AnyValue
# (arrays and key/value lists inside each other) can nest without bound; a span attribute sits at
# level 6, and every array level adds 2, every key/value list level 3.
MAX_DEPTH = 64

# Fields that OTLP/JSON encodes in hex; every other bytes field is base64.
_ID_FIELDS = frozenset({"trace_id", "span_id", "parent_span_id"})

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode

_Converter = Callable[[Any, int], Any]


class _Bad(Exception):
    """A value that cannot be converted; the path is collected while the error unwinds."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path: list[str | int] = []  # innermost first

    def render(self) -> str:
        out: list[str] = []
        for part in reversed(self.path):
            if isinstance(part, int):
                out.append(f"[{part}]")
            else:
                out.append(f".{part}" if out else part)
        where = "".join(out)
        return f"{where}: {self.reason}" if where else self.reason


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _expected(what: str, value: object) -> _Bad:
    return _Bad(f"expected {what}, got {_json_type(value)}")


# --- scalars -------------------------------------------------------------------------------

_INT_RE = re.compile(r"-?[0-9]+", re.ASCII)
_NUMBER_RE = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?", re.ASCII)
_SPECIAL_FLOATS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_FLOAT32_MAX = 3.4028234663852886e38
_MAX_INT_CHARS = 40  # longer strings are not 64-bit integers in any sensible spelling


def _int_slow(value: object, lo: int, hi: int) -> int:
    """Integers given as anything but a plain JSON integer or a short string of digits."""
    if isinstance(value, float):
        if not value.is_integer():
            raise _Bad(f"not an integer: {value!r}")
        number = int(value)
    elif isinstance(value, str):
        if len(value) > _MAX_INT_CHARS:  # also keeps int() and Decimal away from huge inputs
            raise _Bad(f"not an integer in range: {value[:40]!r}...")
        if _INT_RE.fullmatch(value):
            number = int(value)
        elif _NUMBER_RE.fullmatch(value):  # "1e3", "5.0": integral values in number syntax
            exact = Decimal(value)
            if exact.adjusted() > _MAX_INT_CHARS:
                raise _Bad(f"integer out of range: {value}")
            if exact != exact.to_integral_value():
                raise _Bad(f"not an integer: {value!r}")
            number = int(exact)
        else:
            raise _Bad(f"not an integer: {value!r}")
    else:
        raise _expected("integer", value)
    if not lo <= number <= hi:
        raise _Bad(f"integer out of range: {number}")
    return number


def _int_converter(lo: int, hi: int) -> _Converter:
    def convert(value: Any, depth: int) -> int:
        if type(value) is int:
            if lo <= value <= hi:
                return value
            raise _Bad(f"integer out of range: {value}")
        if type(value) is str and len(value) < 21 and value.isdigit() and value.isascii():
            number = int(value)
            if number <= hi:
                return number
            raise _Bad(f"integer out of range: {number}")
        return _int_slow(value, lo, hi)

    return convert


_INT32 = _int_converter(-(2**31), 2**31 - 1)
_UINT32 = _int_converter(0, 2**32 - 1)
_INT64 = _int_converter(-(2**63), 2**63 - 1)
_UINT64 = _int_converter(0, 2**64 - 1)


def _double(value: Any, depth: int) -> float:
    kind = type(value)
    if kind is float:
        return value
    if kind is int:
        try:
            return float(value)
        except OverflowError:
            raise _Bad("number out of range") from None
    if kind is str:
        special = _SPECIAL_FLOATS.get(value)
        if special is not None:
            return special
        if _NUMBER_RE.fullmatch(value):
            number = float(value)
            if math.isinf(number):
                raise _Bad("number out of range")
            return number
        raise _Bad(f"not a number: {value[:40]!r}")  # (cut: it is echoed to the client)
    raise _expected("number", value)


def _float(value: Any, depth: int) -> float:
    number = _double(value, depth)
    if math.isfinite(number) and abs(number) > _FLOAT32_MAX:
        raise _Bad("number out of range for float")
    return number


def _bool(value: Any, depth: int) -> bool:
    if type(value) is bool:
        return value
    raise _expected("boolean", value)


def _string(value: Any, depth: int) -> str:
    if type(value) is str:
        return value
    raise _expected("string", value)


def _hex(value: Any, depth: int) -> bytes:
    if type(value) is not str:
        raise _expected("hex string", value)
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise _Bad("not hex") from None
    if len(raw) * 2 != len(value):  # bytes.fromhex skips whitespace between bytes
        raise _Bad("not hex")
    return raw


def _base64(value: Any, depth: int) -> bytes:
    if type(value) is not str:
        raise _expected("base64 string", value)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        pass
    # proto3 JSON also accepts the URL-safe alphabet and missing padding.
    text = value.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _Bad("not base64") from None


def _enum_converter(field: FieldDescriptor) -> _Converter:
    by_name = {value.name: value.number for value in field.enum_type.values}

    def convert(value: Any, depth: int) -> int:
        if type(value) is int:
            if -(2**31) <= value < 2**31:
                return value
            raise _Bad(f"enum value out of range: {value}")
        if type(value) is str:
            number = by_name.get(value)
            if number is not None:
                return number
            if not _INT_RE.fullmatch(value):
                # A name from a newer version of the enum: like proto3 JSON parsers that
                # ignore unknown fields, treat it as unset (0) rather than fail the request.
                return 0
        return _INT32(value, depth)

    return convert


_SCALARS: dict[int, _Converter] = {
    FieldDescriptor.TYPE_DOUBLE: _double,
    FieldDescriptor.TYPE_FLOAT: _float,
    FieldDescriptor.TYPE_INT64: _INT64,
    FieldDescriptor.TYPE_SINT64: _INT64,
    FieldDescriptor.TYPE_SFIXED64: _INT64,
    FieldDescriptor.TYPE_UINT64: _UINT64,
    FieldDescriptor.TYPE_FIXED64: _UINT64,
    FieldDescriptor.TYPE_INT32: _INT32,
    FieldDescriptor.TYPE_SINT32: _INT32,
    FieldDescriptor.TYPE_SFIXED32: _INT32,
    FieldDescriptor.TYPE_UINT32: _UINT32,
    FieldDescriptor.TYPE_FIXED32: _UINT32,
    FieldDescriptor.TYPE_BOOL: _bool,
    FieldDescriptor.TYPE_STRING: _string,
}


# --- messages ------------------------------------------------------------------------------


def _repeated(convert: _Converter) -> _Converter:
    def convert_list(value: Any, depth: int) -> list:
        if type(value) is not list:
            raise _expected("array", value)
        out: list = []
        append = out.append
        try:
            for item in value:
                append(convert(item, depth))
        except _Bad as bad:
            bad.path.append(len(out))  # the index of the element that failed
            raise
        return out

    return convert_list


_KEY_VALUE = "opentelemetry.proto.common.v1.KeyValue"
# AnyValue scalars by JSON key (both spellings): the keyword for the constructor and converter.
_ANY_SCALARS: dict[str, tuple[str, _Converter]] = {
    key: (name, convert)
    for keys, name, convert in (
        (("stringValue", "string_value"), "string_value", _string),
        (("intValue", "int_value"), "int_value", _INT64),
        (("boolValue", "bool_value"), "bool_value", _bool),
        (("doubleValue", "double_value"), "double_value", _double),
    )
    for key in keys
}


def _is_plain_key_value(descriptor: Descriptor) -> bool:
    """Whether ``descriptor`` is OTLP's KeyValue, with the fields the attribute fast path sets."""
    if descriptor.full_name != _KEY_VALUE:
        return False
    fields = descriptor.fields_by_name
    key, value = fields.get("key"), fields.get("value")
    if key is None or key.type != FieldDescriptor.TYPE_STRING or value is None:
        return False
    any_fields = value.message_type.fields_by_name
    return all(
        name in any_fields
        and any_fields[name].json_name in _ANY_SCALARS
        and _SCALARS[any_fields[name].type] is convert
        for name, convert in _ANY_SCALARS.values()
    )


def _attributes(convert: _Converter) -> _Converter:
    """``repeated KeyValue`` with a fast path for ``{"key": k, "value": {"<scalar>": v}}``.

    Attributes are most of an OTLP payload; this shape skips two generic message conversions
    per attribute. Anything else (and any error) goes through the generic ``convert``.
    """
    generic = _repeated(convert)
    scalars = _ANY_SCALARS

    def convert_list(value: Any, depth: int) -> list:
        if type(value) is not list or depth + 2 > MAX_DEPTH:
            return generic(value, depth)
        out = []
        append = out.append
        for index, pair in enumerate(value):
            if type(pair) is dict and len(pair) == 2:
                key = pair.get("key")
                any_value = pair.get("value")
                if type(key) is str and type(any_value) is dict and len(any_value) == 1:
                    item = any_value.get("stringValue")
                    if type(item) is str:
                        append({"key": key, "value": {"string_value": item}})
                        continue
                    for scalar_key, item in any_value.items():  # the one member
                        entry = scalars.get(scalar_key)
                        if entry is not None:
                            try:
                                item = entry[1](item, depth)
                            except _Bad:
                                break  # reported with its path by the generic conversion
                            append({"key": key, "value": {entry[0]: item}})
                    if len(out) > index:
                        continue
            try:
                append(convert(pair, depth))
            except _Bad as bad:
                bad.path.append(index)
                raise
        return out

    return convert_list


def _check_oneofs(kwargs: dict, oneofs: list[tuple[str, frozenset[str]]]) -> None:
    for name, members in oneofs:
        present = members & kwargs.keys()
        if len(present) > 1:
            raise _Bad(f"more than one field of oneof {name!r}: {', '.join(sorted(present))}")


def _message_converter(fields: dict[str, tuple[str, _Converter]], oneofs: list) -> _Converter:
    get = fields.get

    def convert(value: Any, depth: int) -> dict:
        if type(value) is not dict:
            raise _expected("object", value)
        if depth >= MAX_DEPTH:
            raise _Bad(f"nested deeper than {MAX_DEPTH} objects")
        depth += 1
        kwargs = {}
        for key, item in value.items():
            entry = get(key)
            if entry is None or item is None:  # unknown field, or null: not set
                continue
            name, convert_field = entry
            if convert_field is _string and type(item) is str:
                kwargs[name] = item
                continue
            try:
                kwargs[name] = convert_field(item, depth)
            except _Bad as bad:
                bad.path.append(key)
                raise
        if oneofs and len(kwargs) > 1:
            _check_oneofs(kwargs, oneofs)
        return kwargs

    return convert


def _field_converter(field: FieldDescriptor, building: dict[str, _Converter]) -> _Converter:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        message = field.message_type
        if message.GetOptions().map_entry:
            raise NotImplementedError(f"map field {field.full_name} (not used by OTLP)")
        return _build(message, building)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return _hex if field.name in _ID_FIELDS else _base64
    if field.type == FieldDescriptor.TYPE_ENUM:
        return _enum_converter(field)
    return _SCALARS[field.type]


def _build(descriptor: Descriptor, building: dict[str, _Converter]) -> _Converter:
    existing = building.get(descriptor.full_name)
    if existing is not None:
        return existing
    if descriptor.full_name.startswith("google.protobuf."):
        raise NotImplementedError(f"well-known type {descriptor.full_name} (not used by OTLP)")
    fields: dict[str, tuple[str, _Converter]] = {}
    oneofs = [
        (oneof.name, frozenset(f.name for f in oneof.fields))
        for oneof in descriptor.oneofs
        if len(oneof.fields) > 1
    ]
    # Registered before its fields are filled in, so that recursive types (AnyValue) resolve.
    converter = _message_converter(fields, oneofs)
    building[descriptor.full_name] = converter
    for field in descriptor.fields:
        convert = _field_converter(field, building)
        if field.is_repeated:
            if field.message_type is not None and _is_plain_key_value(field.message_type):
                convert = _attributes(convert)
            else:
                convert = _repeated(convert)
        entry = (field.name, convert)
        fields[field.json_name] = entry
        fields[field.name] = entry
    return converter


_plans: dict[type[Message], _Converter] = {}
_plans_lock = threading.Lock()


def _plan(message_type: type[Message]) -> _Converter:
    converter = _plans.get(message_type)
    if converter is None:
        with _plans_lock:
            converter = _plans.get(message_type)
            if converter is None:
                converter = _build(message_type.DESCRIPTOR, {})
                _plans[message_type] = converter
    return converter


def parse_json_request(body: bytes, message_type: type[Message]) -> Message:
    """An OTLP/JSON request body as a ``message_type`` message (e.g. ExportTraceServiceRequest).

    Raises :class:`InvalidRequest` for malformed JSON, a top level that is not an object, values
    of the wrong type, ids that are not hex, out-of-range numbers or nesting deeper than
    :data:`MAX_DEPTH`; the message names the path of the offending value.
    """
    convert = _plan(message_type)
    try:
        data = _decode(body)
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"malformed JSON: {exc}") from None
    except RecursionError:
        raise InvalidRequest(f"JSON nested deeper than {MAX_DEPTH} levels") from None
    if type(data) is not dict:
        raise InvalidRequest(f"expected a JSON object at the top level, got {_json_type(data)}")
    try:
        kwargs = convert(data, 0)
    except _Bad as bad:
        raise InvalidRequest(bad.render()) from None
    try:
        return message_type(**kwargs)
    except (ValueError, TypeError) as exc:  # e.g. lone surrogates in strings
        raise InvalidRequest(f"invalid request: {exc}") from None


# --- replies -------------------------------------------------------------------------------


def _ids_to_hex(data: dict, descriptor: Descriptor) -> None:
    for field in descriptor.fields:
        value = data.get(field.json_name)
        if value is None:
            continue
        if field.type == FieldDescriptor.TYPE_BYTES and field.name in _ID_FIELDS:
            if field.is_repeated:
                data[field.json_name] = [base64.b64decode(v).hex() for v in value]
            else:
                data[field.json_name] = base64.b64decode(value).hex()
        elif field.type == FieldDescriptor.TYPE_MESSAGE and not (
            field.message_type.GetOptions().map_entry
            or field.message_type.full_name.startswith("google.protobuf.")
        ):
            for item in value if field.is_repeated else (value,):
                _ids_to_hex(item, field.message_type)


def message_to_json(message: Message) -> bytes:
    """A (small) message as OTLP/JSON: lowerCamelCase keys, hex ids, integer enums.

    Fields with default values are omitted and 64-bit integers are strings, as in the proto3
    JSON mapping. Meant for replies (``Export*ServiceResponse``, ``google.rpc.Status``), not for
    bulk data.
    """
    data = json_format.MessageToDict(message, use_integers_for_enums=True)
    _ids_to_hex(data, message.DESCRIPTOR)
    return _encode(data)
