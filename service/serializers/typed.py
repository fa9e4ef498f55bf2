"""Typed JSON: bytes into a declared type, every field checked and converted, and back.

:func:`json_codec` builds, once per type, the :class:`JsonCodec` that
:class:`~service.serializers.json.JsonSerializer` and the ``publish`` command both use:

* dataclasses (nested, frozen, slotted, with ``__post_init__`` checks), and the field types
  ``str``, ``int``, ``float``, ``bool``, ``UUID`` (text), ``Decimal`` (text or number, kept
  exact), ``datetime``/``date``/``time`` (RFC 3339 text), ``Enum`` (by value), ``Literal``,
  ``list``/``tuple``/``set``/``dict``, ``X | None`` and fields with defaults are decoded by
  `msgspec <https://jcristharif.com/msgspec/>`_ (``msgspec.json.Decoder(type=...)``);
* pydantic models and pydantic dataclasses, and types that hold one, are decoded by pydantic
  (``model_validate_json`` / ``TypeAdapter.validate_json``) with the model's own settings,
  so their validators run.

Decoding is strict: a string where an ``int`` belongs is refused, not converted; fields the
type does not declare are ignored (a tolerant reader: producers may add fields). A payload
that does not fit raises :class:`~service.errors.DeserializationError` whose text names the
field by its JSON path, e.g. ``$.amount.currency: expected str, got int``.

Encoding writes what decoding reads: ``UUID``, ``datetime`` and ``Decimal`` as text, enums
by value, pydantic fields by their alias. A dataclass decoded from JSON that lacked a field
with a plain default re-encodes without that field (msgspec reads such a default from the
class, as ``dataclasses`` itself does for ``init=False`` fields); decoding it again gives the
same object.
"""

from __future__ import annotations

import dataclasses
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

import msgspec
import msgspec.inspect
import pydantic
import pydantic.dataclasses
import pydantic_core

from service.errors import ConfigurationError, DeserializationError, SerializationError

__all__ = ["JsonCodec", "decode_json_object", "encode_json", "is_json_bindable", "json_codec"]

T = TypeVar("T")

_MSGSPEC_PATH = re.compile(r"(?s)(?P<what>.*?)(?: - at `(?P<path>\$.*)`)?")
_MISSING = re.compile(r"Object missing required field `(?P<name>.*)`")
_JSON_TYPES = {
    bool: "bool",
    int: "int",
    float: "float",
    str: "str",
    type(None): "null",
    list: "array",
    dict: "object",
}
_DICT_DECODER = msgspec.json.Decoder(dict[str, Any])


def _encode_hook(obj: Any) -> Any:
    """Values msgspec does not encode natively: pydantic models, as their JSON mode dump."""
    if isinstance(obj, pydantic.BaseModel):
        return obj.model_dump(mode="json", by_alias=True)
    raise TypeError(f"objects of type {type(obj).__qualname__} cannot be encoded as JSON")


_ENCODER = msgspec.json.Encoder(enc_hook=_encode_hook, decimal_format="string")


class JsonCodec(Generic[T]):
    """Decodes JSON into one type and encodes its instances; built by :func:`json_codec`.

    Thread-safe: both directions keep no state between calls.
    """

    __slots__ = ("_decode", "_encode", "cls", "engine")

    def __init__(
        self,
        cls: type[T],
        engine: str,
        decode: Callable[[bytes], T],
        encode: Callable[[T], bytes],
    ) -> None:
        self.cls = cls
        self.engine = engine
        """``"msgspec"`` or ``"pydantic"``: which library does the work."""
        self._decode = decode
        self._encode = encode

    def decode(self, data: bytes) -> T:
        """An instance of the type built from the JSON ``data``.

        Raises:
            DeserializationError: ``data`` is not JSON, or does not fit the type; the text
                names the field by its path (``$.amount.currency: expected str, got int``).
        """
        try:
            return self._decode(data)
        except msgspec.ValidationError as exc:
            raise DeserializationError(
                f"JSON does not fit {self.cls.__qualname__}: {_msgspec_problem(str(exc))}"
            ) from exc
        except pydantic.ValidationError as exc:
            if any(e["type"] == "json_invalid" for e in exc.errors()):
                raise DeserializationError(
                    f"payload is not valid JSON: {exc.errors()[0]['msg']}"
                ) from exc
            raise DeserializationError(
                f"JSON does not fit {self.cls.__qualname__}: {_pydantic_problems(exc)}"
            ) from exc
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
            raise DeserializationError(f"payload is not valid JSON: {exc}") from exc
        except Exception as exc:  # policy below: a refusal by the type's own code
            # The type's own code (__post_init__, a validator) refused the payload with an
            # exception neither library translates: the payload does not fit, and retrying
            # the same bytes cannot help.
            raise DeserializationError(
                f"JSON does not fit {self.cls.__qualname__}: its constructor raised "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def encode(self, obj: T) -> bytes:
        """``obj`` as compact UTF-8 JSON.

        Raises:
            SerializationError: a value has no JSON form.
        """
        try:
            return self._encode(obj)
        except (
            TypeError,
            ValueError,
            OverflowError,
            pydantic_core.PydanticSerializationError,
        ) as exc:
            raise SerializationError(
                f"cannot encode {type(obj).__qualname__} as JSON: {exc}"
            ) from exc


_CODECS: dict[type, JsonCodec[Any]] = {}
_CODECS_LOCK = threading.Lock()


def json_codec(cls: type[T]) -> JsonCodec[T]:
    """The codec of ``cls`` (built once, then cached).

    Raises:
        ConfigurationError: ``cls`` or one of its field types cannot be built from JSON (the
            text names the type), or a type hint does not resolve.
    """
    codec = _CODECS.get(cls)
    if codec is None:
        codec = _build(cls)
        with _CODECS_LOCK:
            codec = _CODECS.setdefault(cls, codec)
    return codec


def is_json_bindable(cls: type) -> bool:
    """Whether instances of ``cls`` are JSON objects: a dataclass, a pydantic model or a Struct."""
    return isinstance(cls, type) and (
        dataclasses.is_dataclass(cls) or issubclass(cls, pydantic.BaseModel | msgspec.Struct)
    )


def decode_json_object(data: bytes) -> dict[str, Any]:
    """``data`` decoded as a JSON object, as a dict of plain JSON values.

    Raises:
        DeserializationError: ``data`` is not JSON, or not a JSON object.
    """
    try:
        decoded: dict[str, Any] = _DICT_DECODER.decode(data)
    except msgspec.ValidationError as exc:
        raise DeserializationError(
            f"payload is not a JSON object: {_msgspec_problem(str(exc))}"
        ) from exc
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        raise DeserializationError(f"payload is not valid JSON: {exc}") from exc
    return decoded


def encode_json(obj: Any) -> bytes:
    """Any JSON-encodable value (dicts, dataclasses, pydantic models...) as compact JSON.

    Raises:
        SerializationError: a value has no JSON form.
    """
    try:
        if isinstance(obj, pydantic.BaseModel):
            return obj.model_dump_json(by_alias=True).encode()
        return _ENCODER.encode(obj)
    except (TypeError, ValueError, OverflowError, pydantic_core.PydanticSerializationError) as exc:
        raise SerializationError(f"cannot encode {type(obj).__qualname__} as JSON: {exc}") from exc


def _build(cls: type[T]) -> JsonCodec[T]:
    name = getattr(cls, "__qualname__", repr(cls))
    if isinstance(cls, type) and issubclass(cls, pydantic.BaseModel):
        model = cls

        def validate(data: bytes) -> Any:
            return model.model_validate_json(data)

        return JsonCodec(cls, "pydantic", validate, encode_json)
    try:
        info = msgspec.inspect.type_info(cls)
    except (NameError, TypeError) as exc:
        raise ConfigurationError(f"{name}: cannot be decoded from JSON: {exc}") from exc
    custom = set(_custom_types(info, set()))
    unsupported = sorted(c.__qualname__ for c in custom if not _is_pydantic(c))
    if unsupported:
        raise ConfigurationError(
            f"{name}: its type {unsupported[0]} cannot be decoded from JSON; use a dataclass, "
            "a pydantic model, or a standard type (str, int, Decimal, UUID, datetime, Enum...)"
        )
    if custom:  # a pydantic model or dataclass inside: pydantic builds (validates) the tree
        try:
            adapter: pydantic.TypeAdapter[T] = pydantic.TypeAdapter(cls)
        except pydantic.PydanticUserError as exc:
            raise ConfigurationError(f"{name}: cannot be decoded from JSON: {exc}") from exc

        def dump(obj: T) -> bytes:
            return adapter.dump_json(obj, by_alias=True)

        return JsonCodec(cls, "pydantic", adapter.validate_json, dump)
    decoder: msgspec.json.Decoder[T] = msgspec.json.Decoder(cls)
    return JsonCodec(cls, "msgspec", decoder.decode, _ENCODER.encode)


def _is_pydantic(cls: type) -> bool:
    return issubclass(cls, pydantic.BaseModel) or pydantic.dataclasses.is_pydantic_dataclass(cls)


def _custom_types(info: msgspec.inspect.Type, seen: set[int]) -> Iterator[type]:
    """The classes msgspec cannot build faithfully, anywhere in ``info``'s tree.

    Those it would hand to a hook, and pydantic dataclasses (msgspec would skip their
    validators).
    """
    if id(info) in seen:  # recursive types refer back to a node already walked
        return
    seen.add(id(info))
    if isinstance(info, msgspec.inspect.CustomType):
        yield info.cls
        return
    if isinstance(info, msgspec.inspect.DataclassType) and _is_pydantic(info.cls):
        yield info.cls
    for attribute in info.__struct_fields__:
        value = getattr(info, attribute)
        for item in value if isinstance(value, tuple) else (value,):
            node = item.type if isinstance(item, msgspec.inspect.Field) else item
            if isinstance(node, msgspec.inspect.Type):
                yield from _custom_types(node, seen)


def _msgspec_problem(text: str) -> str:
    """Msgspec's ``Expected `str`, got `int` - at `$.a`` as ``$.a: expected str, got int``."""
    match = _MSGSPEC_PATH.fullmatch(text)
    what, path = (match["what"], match["path"] or "$") if match else (text, "$")
    missing = _MISSING.fullmatch(what)
    if missing:
        return f"{path}.{missing['name']}: required field missing"
    what = what.replace("`", "")
    return f"{path}: {what[:1].lower()}{what[1:]}"


def _pydantic_problems(exc: pydantic.ValidationError, limit: int = 3) -> str:
    """Pydantic's errors in the same shape as :func:`_msgspec_problem`, at most ``limit``."""
    problems = []
    for error in exc.errors()[:limit]:
        path = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"])
        if error["type"] == "missing":
            problems.append(f"{path}: required field missing")
            continue
        message = error["msg"]
        text = f"{path}: {message[:1].lower()}{message[1:]}"
        if error["type"].endswith("_type"):
            got = _JSON_TYPES.get(type(error["input"]), type(error["input"]).__name__)
            text += f", got {got}"
        problems.append(text)
    more = exc.error_count() - limit
    return "; ".join(problems) + (f" (and {more} more)" if more > 0 else "")
