"""The validation engine of config/'s models: the part of pydantic 2.x they use.

Owned by config/. Every model module (config.model, config.policy, config.k8s,
config.endpoints) and config.parse import their validation names from here, never from
pydantic: a daemon reading Calico's datastore then loads no pydantic and no
pydantic_core (issue 17: ~9 MiB of an idle bgpd's 37 MiB RSS). The names and their
meaning are pydantic's, so the models read as pydantic models and a reader's knowledge
of pydantic applies:

- ``BaseModel`` with ``model_config = ConfigDict(frozen=..., extra="allow",
  populate_by_name=..., alias_generator=...)``; fields from annotations (resolved on
  first use, as ``defer_build``), defaults, ``Field(default, alias=, default_factory=)``;
- ``Annotated[T, BeforeValidator(f)]``, ``@field_validator(*names, mode="before"|"after")``,
  ``@model_validator(mode="before"|"after")``, ``@model_serializer(mode="wrap")``,
  ``@field_serializer(*names)`` — run in pydantic's order (before-validators last
  defined first, after-validators in definition order, a subclass's before its base's);
- the types the models use: ``str int float bool None Any``, ``Literal[...]``,
  ``X | None``, unions of those (pydantic's "smart" mode: an exact type first, then the
  first lax match; errors tagged by member), ``tuple[X, ...]``, ``list[X]``,
  ``dict[K, V]``, nested models — with pydantic's lax coercions (``"12"`` and ``12.0``
  are the integer 12, ``"yes"`` is True, ...) and its error types, texts, locations and
  inputs (`ValidationError.errors()`), which config.parse turns into FieldProblems;
- ``model_validate``, ``model_dump(mode=, by_alias=, exclude_none=)``, ``model_copy``,
  ``model_construct``, ``model_fields``, ``model_extra``, equality, hashing, frozenness.

An annotation outside that subset is refused when its model is first built
(``TypeError`` naming it), not validated loosely. tests/unit/test_config_lite_diff.py
holds this engine to pydantic itself (which bgpctl's environment still has): the same
models built on real pydantic give the same results and the same errors for Calico's
examples and for generated mutations of them.
"""

from __future__ import annotations

import datetime as _dt
import functools
import math
import re
import types
import typing
from typing import Any

__all__ = [
    "BaseModel",
    "BeforeValidator",
    "ConfigDict",
    "Field",
    "PydanticCustomError",
    "ValidationError",
    "field_serializer",
    "field_validator",
    "model_serializer",
    "model_validator",
    "to_camel",
]

_MISSING: Any = type("_Missing", (), {"__repr__": lambda self: "PydanticUndefined"})()


# ------------------------------------------------------------------ errors


class PydanticCustomError(ValueError):
    """An error of the caller's own type: ``template.format(**context)`` is its message."""

    def __init__(self, error_type: str, message_template: str, context: dict | None = None):
        super().__init__(error_type, message_template, context)
        self.type = error_type
        self.message_template = message_template
        self.context = context

    def message(self) -> str:
        return self.message_template.format(**(self.context or {}))

    def __str__(self) -> str:
        return self.message()


class _Fail(Exception):
    """Internal: validation of one value failed; ``errors`` are (type, loc, msg, input, ctx)."""

    __slots__ = ("errors",)

    def __init__(self, errors: list):
        self.errors = errors


def _err(kind: str, msg: str, value: Any, ctx: dict | None = None) -> _Fail:
    return _Fail([(kind, (), msg, value, ctx)])


def _prefixed(errors: list, *loc: Any) -> list:
    return [(k, (*loc, *where), m, i, c) for k, where, m, i, c in errors]


class ValidationError(ValueError):
    """Validation of a model failed; `errors` lists each problem as pydantic does."""

    def __init__(self, title: str, errors: list):
        super().__init__(title)
        self.title = title
        self._errors = errors

    def errors(self, *, include_url: bool = True, include_context: bool = True,
               include_input: bool = True) -> list[dict[str, Any]]:
        out = []
        for kind, loc, msg, value, ctx in self._errors:
            item: dict[str, Any] = {"type": kind, "loc": loc, "msg": msg}
            if include_input:
                item["input"] = value
            if ctx is not None and include_context:
                item["ctx"] = ctx
            out.append(item)
        return out

    def error_count(self) -> int:
        return len(self._errors)

    def __str__(self) -> str:
        n = len(self._errors)
        lines = [f"{n} validation error{'' if n == 1 else 's'} for {self.title}"]
        for kind, loc, msg, value, _ in self._errors:
            lines.append(".".join(str(p) for p in loc) or "")
            lines.append(f"  {msg} [type={kind}, input_value={value!r}, "
                         f"input_type={type(value).__name__}]")
        return "\n".join(lines)

    __repr__ = __str__


def _call(func: Any, *args: Any, shown: Any = _MISSING) -> Any:
    """``func(*args)``, its ValueError/AssertionError/custom error made a _Fail at loc ()
    whose input is ``shown`` (by default the value handed to ``func``: ``args[-1]``)."""
    try:
        return func(*args)
    except _Fail:
        raise
    except (PydanticCustomError, AssertionError, ValueError) as exc:
        value = args[-1] if shown is _MISSING else shown
        if isinstance(exc, PydanticCustomError):
            raise _err(exc.type, exc.message(), value, exc.context) from None
        if isinstance(exc, AssertionError):
            raise _err("assertion_error", f"Assertion failed, {exc}", value,
                       {"error": exc}) from None
        raise _err("value_error", f"Value error, {exc}", value, {"error": exc}) from None


# ------------------------------------------------------------------ public markers


def ConfigDict(**settings: Any) -> dict[str, Any]:
    return dict(settings)


class FieldInfo:
    """One declared field: its default (or factory), alias and annotation."""

    __slots__ = ("alias", "annotation", "default", "default_factory")

    def __init__(self, default: Any = _MISSING, *, alias: str | None = None,
                 default_factory: Any = None):
        self.default = default
        self.alias = alias
        self.default_factory = default_factory
        self.annotation: Any = None

    def is_required(self) -> bool:
        return self.default is _MISSING and self.default_factory is None

    def __repr__(self) -> str:
        return (f"FieldInfo(annotation={self.annotation!r}, default={self.default!r}, "
                f"alias={self.alias!r})")


def Field(default: Any = _MISSING, *, alias: str | None = None,
          default_factory: Any = None) -> Any:
    return FieldInfo(default, alias=alias, default_factory=default_factory)


class BeforeValidator:
    """``Annotated[T, BeforeValidator(f)]``: ``f(value)`` runs before T's own check."""

    __slots__ = ("func",)

    def __init__(self, func: Any):
        self.func = func


class _Decorated:
    """What a validator/serializer decorator leaves in the class body until the class is made."""

    __slots__ = ("fields", "func", "kind", "mode")

    def __init__(self, kind: str, func: Any, mode: str, fields: tuple[str, ...] = ()):
        self.kind, self.func, self.mode, self.fields = kind, func, mode, fields


def _decorator(kind: str, mode: str, fields: tuple[str, ...] = ()) -> Any:
    if mode not in ("before", "after", "wrap", "plain"):
        raise TypeError(f"config.lite: mode {mode!r} is not supported")

    def wrap(func: Any) -> _Decorated:
        return _Decorated(kind, func, mode, fields)

    return wrap


def field_validator(*fields: str, mode: str = "after") -> Any:
    if mode not in ("before", "after"):
        raise TypeError(f"config.lite: field_validator mode {mode!r} is not supported")
    return _decorator("field", mode, fields)


def model_validator(*, mode: str) -> Any:
    if mode not in ("before", "after"):
        raise TypeError(f"config.lite: model_validator mode {mode!r} is not supported")
    return _decorator("model", mode)


def model_serializer(func: Any = None, *, mode: str = "plain") -> Any:
    if mode != "wrap":
        raise TypeError("config.lite: only model_serializer(mode='wrap') is supported")
    return _decorator("model_ser", mode) if func is None else _Decorated("model_ser", func, mode)


def field_serializer(*fields: str, mode: str = "plain") -> Any:
    if mode != "plain":
        raise TypeError("config.lite: only plain field serializers are supported")
    return _decorator("field_ser", mode, fields)


def _bound(func: Any) -> Any:
    """The function of a classmethod/staticmethod or the function itself."""
    return getattr(func, "__func__", func)


# ------------------------------------------------------------------ to_camel (pydantic's rule)

_CAMEL_ALREADY = re.compile(r"^[a-z]+[A-Za-z0-9]*$")
_DIGIT_LOWER = re.compile(r"\d[a-z]")
_PASCAL_JOIN = re.compile(r"([0-9A-Za-z])_(?=[0-9A-Z])")
_FIRST_UPPER = re.compile(r"(^_*[A-Z])")


def to_camel(snake: str) -> str:
    """snake_case -> camelCase exactly as ``pydantic.alias_generators.to_camel``."""
    if _CAMEL_ALREADY.match(snake) and not _DIGIT_LOWER.search(snake):
        return snake
    pascal = _PASCAL_JOIN.sub(lambda m: m.group(1), snake.title())
    return _FIRST_UPPER.sub(lambda m: m.group(1).lower(), pascal)


# ------------------------------------------------------------------ scalar validators

_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})
_INT_TEXT = re.compile(r"[+-]?\d+(?:_\d+)*(?:\.0*)?")
_INT_PARSING = "Input should be a valid integer, unable to parse string as an integer"


def _v_any(value: Any) -> Any:
    return value


def _v_str(value: Any) -> str:
    if type(value) is str:
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode()
        except UnicodeDecodeError:
            raise _err("string_unicode", "Input should be a valid string, unable to parse "
                       "raw data as a unicode string", value) from None
    raise _err("string_type", "Input should be a valid string", value)


def _int_from_text(value: Any, text: str) -> int:
    text = text.strip()
    if _INT_TEXT.fullmatch(text):
        return int(text.split(".", 1)[0].replace("_", ""))
    raise _err("int_parsing", _INT_PARSING, value)


def _v_int(value: Any) -> int:
    if type(value) is int:
        return value
    if isinstance(value, int):  # bool and int subclasses
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _err("finite_number", "Input should be a finite number", value)
        if not value.is_integer():
            raise _err("int_from_float", "Input should be a valid integer, got a number with "
                       "a fractional part", value)
        return int(value)
    if isinstance(value, str):
        return _int_from_text(value, value)
    if isinstance(value, (bytes, bytearray)):
        try:
            return _int_from_text(value, bytes(value).decode())
        except UnicodeDecodeError:
            raise _err("int_parsing", _INT_PARSING, value) from None
    raise _err("int_type", "Input should be a valid integer", value)


def _v_float(value: Any) -> float:
    if type(value) is float:
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, (str, bytes, bytearray)):
        try:
            text = value if isinstance(value, str) else bytes(value).decode()
            return float(text.strip())
        except (ValueError, UnicodeDecodeError):
            raise _err("float_parsing", "Input should be a valid number, unable to parse "
                       "string as a number", value) from None
    raise _err("float_type", "Input should be a valid number", value)


def _v_bool(value: Any) -> bool:
    if value is True or value is False:
        return value
    if isinstance(value, (int, float)):
        # pydantic reads a number as a 64-bit integer first: a fraction or a wider one
        # is not a boolean at all, another integer is one it cannot interpret
        if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
            raise _err("bool_type", "Input should be a valid boolean", value)
        if not -(2**63) <= value < 2**63:
            raise _err("bool_type", "Input should be a valid boolean", value)
        if value == 0:
            return False
        if value == 1:
            return True
    elif isinstance(value, (str, bytes, bytearray)):
        try:
            text = (value if isinstance(value, str) else bytes(value).decode()).lower()
        except UnicodeDecodeError:
            text = ""
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    else:
        raise _err("bool_type", "Input should be a valid boolean", value)
    raise _err("bool_parsing", "Input should be a valid boolean, unable to interpret input",
               value)


def _v_none(value: Any) -> None:
    if value is None:
        return None
    raise _err("none_required", "Input should be None", value)


_SCALARS: dict[Any, Any] = {
    str: _v_str, int: _v_int, float: _v_float, bool: _v_bool, type(None): _v_none,
    Any: _v_any, object: _v_any,
}
# The types a union may hold; a union's first ("exact type") pass is pydantic's strict check.
_EXACT = (str, int, float, bool)


def _literal(values: tuple[Any, ...]) -> Any:
    shown = [repr(v) for v in values]
    expected = shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"
    msg = f"Input should be {expected}"

    def check(value: Any) -> Any:
        for lit in values:
            if isinstance(lit, bool) or isinstance(value, bool):
                if value is lit:
                    return lit
            elif isinstance(lit, int):
                if isinstance(value, (int, float)) and value == lit:
                    return lit
            elif isinstance(lit, str):
                if isinstance(value, str) and value == lit:
                    return lit
            elif type(value) is type(lit) and value == lit:
                return lit
        raise _err("literal_error", msg, value, {"expected": expected})

    return check


# ------------------------------------------------------------------ containers


def _v_items(kind: str, label: str, item: Any, out_type: type) -> Any:
    msg = f"Input should be a valid {label}"

    def check(value: Any) -> Any:
        if not isinstance(value, (list, tuple, set, frozenset)):
            raise _err(kind, msg, value)
        out = []
        errors: list = []
        for i, v in enumerate(value):
            try:
                out.append(item(v))
            except _Fail as exc:
                errors.extend(_prefixed(exc.errors, i))
        if errors:
            raise _Fail(errors)
        return out_type(out)

    return check


def _v_dict(key: Any, val: Any) -> Any:
    def check(value: Any) -> Any:
        if not isinstance(value, dict):
            raise _err("dict_type", "Input should be a valid dictionary", value)
        out = {}
        errors: list = []
        for k, v in value.items():
            try:
                k2 = key(k)
            except _Fail as exc:
                errors.extend(_prefixed(exc.errors, k, "[key]"))
                k2 = _MISSING
            try:
                v2 = val(v)
            except _Fail as exc:
                errors.extend(_prefixed(exc.errors, k))
                continue
            if k2 is not _MISSING:
                out[k2] = v2
        if errors:
            raise _Fail(errors)
        return out

    return check


def _union(members: list[tuple[str, Any, Any]]) -> Any:
    """pydantic's smart union: an exact-type match first, then the first lax match."""

    def check(value: Any) -> Any:
        for _, exact, func in members:
            if type(value) is exact:
                return func(value)
        errors: list = []
        for tag, _, func in members:
            try:
                return func(value)
            except _Fail as exc:
                errors.extend(_prefixed(exc.errors, tag))
        raise _Fail(errors)

    return check


def _nullable(inner: Any) -> Any:
    def check(value: Any) -> Any:
        return None if value is None else inner(value)

    return check


def _before(func: Any, inner: Any) -> Any:
    def check(value: Any) -> Any:
        return inner(_call(func, value))

    return check


def _compile(tp: Any, where: str) -> Any:
    """A checking function for annotation ``tp`` (see the module's list); TypeError if not."""
    if tp in _SCALARS:
        return _SCALARS[tp]
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp._lite_validator_of_field
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        func = _compile(args[0], where)
        for meta in reversed(args[1:]):
            if isinstance(meta, BeforeValidator):
                func = _before(meta.func, func)
            elif not isinstance(meta, FieldInfo):
                raise TypeError(f"config.lite: {where}: Annotated metadata {meta!r} "
                                "is not supported")
        return func
    if origin is typing.Literal:
        return _literal(args)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            inner = _compile(rest[0], where)
        else:
            members = []
            for a in rest:
                if a not in _EXACT:
                    raise TypeError(f"config.lite: {where}: union member {a!r} is not supported")
                members.append((a.__name__, a, _compile(a, where)))
            inner = _union(members)
        return _nullable(inner) if len(rest) < len(args) else inner
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return _v_items("tuple_type", "tuple", _compile(args[0], where), tuple)
    if origin is list and len(args) == 1:
        return _v_items("list_type", "list", _compile(args[0], where), list)
    if origin is dict and len(args) == 2:
        return _v_dict(_compile(args[0], where), _compile(args[1], where))
    raise TypeError(f"config.lite: {where}: annotation {tp!r} is not supported")


# ------------------------------------------------------------------ serialization


def _ser(value: Any, json: bool, by_alias: bool, exclude_none: bool) -> Any:
    if isinstance(value, BaseModel):
        return value._lite_dump(json, by_alias, exclude_none)
    if isinstance(value, dict):
        return {(_ser_key(k) if json else k): _ser(v, json, by_alias, exclude_none)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [_ser(v, json, by_alias, exclude_none) for v in value]
        return items if json or isinstance(value, list) else type(value)(items)
    if isinstance(value, (set, frozenset)):
        items = [_ser(v, json, by_alias, exclude_none) for v in value]
        return items if json else type(value)(items)
    if not json:
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, _dt.datetime):
        text = value.isoformat()
        return text[:-6] + "Z" if text.endswith("+00:00") else text
    if isinstance(value, (_dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode()  # UnicodeDecodeError (a ValueError) as pydantic refuses it
    return value


def _ser_key(key: Any) -> Any:
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, (int, float)):
        return str(key)
    return key


# ------------------------------------------------------------------ models


class _Built:
    """A model class's compiled form: fields in order with their checks, and its hooks."""

    __slots__ = ("field_ser", "fields", "model_after", "model_before", "model_ser")

    def __init__(self, cls: type) -> None:
        hints = typing.get_type_hints(cls, include_extras=True)
        decorated = _decorators(cls)
        fvals: dict[str, list] = {}
        for dec in decorated:
            if dec.kind == "field":
                for name in dec.fields:
                    if name not in cls.__lite_fields__:
                        raise TypeError(f"config.lite: {cls.__name__}: validator for "
                                        f"unknown field {name!r}")
                    fvals.setdefault(name, []).append(dec)
        self.fields = []
        for name, info in cls.__lite_fields__.items():
            info.annotation = hints[name]
            func = _compile(info.annotation, f"{cls.__name__}.{name}")
            decs = fvals.get(name, [])
            for dec in decs:  # after-validators wrap the check, in definition order
                if dec.mode == "after":
                    func = _after(functools.partial(_bound(dec.func), cls), func)
            for dec in decs:  # each before-validator wraps all: the last one defined runs first
                if dec.mode == "before":
                    func = _before(functools.partial(_bound(dec.func), cls), func)
            self.fields.append((name, info.alias or name, func, info))
        self.model_before = [_bound(d.func) for d in reversed(decorated)
                             if d.kind == "model" and d.mode == "before"]
        self.model_after = [d.func for d in decorated if d.kind == "model" and d.mode == "after"]
        sers = [d.func for d in decorated if d.kind == "model_ser"]
        self.model_ser = sers[-1] if sers else None
        self.field_ser = {name: d.func for d in decorated if d.kind == "field_ser"
                          for name in d.fields}


def _after(func: Any, inner: Any) -> Any:
    def check(value: Any) -> Any:
        # pydantic names the value the field was given, not the checked one
        return _call(func, inner(value), shown=value)

    return check


def _decorators(cls: type) -> list[_Decorated]:
    """Every validator/serializer of ``cls`` and its bases, bases first, by function name."""
    found: dict[str, _Decorated] = {}
    for klass in reversed(cls.__mro__):
        for name, dec in vars(klass).get("__lite_decorators__", {}).items():
            found[name] = dec
    return list(found.values())


class _ModelMeta(type):
    def __new__(mcs, name: str, bases: tuple, namespace: dict, **kwargs: Any):
        decorators = {k: v for k, v in namespace.items() if isinstance(v, _Decorated)}
        for key, dec in decorators.items():
            # the class keeps a callable under the name, as pydantic leaves one
            namespace[key] = dec.func
        own: dict[str, FieldInfo] = {}
        for field in namespace.get("__annotations__", {}):
            if field.startswith("_") or field == "model_config":
                continue
            annotation = namespace["__annotations__"][field]
            if isinstance(annotation, str) and annotation.startswith("ClassVar"):
                continue
            default = namespace.pop(field, _MISSING)
            info = default if isinstance(default, FieldInfo) else FieldInfo(default)
            own[field] = info
        namespace["__lite_decorators__"] = decorators
        cls = super().__new__(mcs, name, bases, namespace, **kwargs)
        config: dict[str, Any] = {}
        fields: dict[str, FieldInfo] = {}
        for klass in reversed(cls.__mro__):
            config.update(vars(klass).get("model_config", {}))
            fields.update(vars(klass).get("__lite_own_fields__", {}))
        fields.update(own)
        generator = config.get("alias_generator")
        for fname, info in own.items():
            if info.alias is None and generator is not None:
                info.alias = generator(fname)
        cls.__lite_own_fields__ = own
        cls.__lite_fields__ = fields
        cls.__lite_config__ = config
        cls.__lite_built__ = None
        return cls

    @property
    def model_fields(cls) -> dict[str, FieldInfo]:
        cls._lite_build()
        return dict(cls.__lite_fields__)

    @property
    def __pydantic_complete__(cls) -> bool:
        return vars(cls).get("__lite_built__") is not None


class BaseModel(metaclass=_ModelMeta):
    """A frozen-or-not model validated from a mapping; see the module docstring."""

    __slots__ = ("__dict__", "__pydantic_extra__", "__pydantic_fields_set__")
    model_config: dict[str, Any] = {}

    # ---------------------------------------------------------------- building

    @classmethod
    def _lite_build(cls) -> _Built:
        built = vars(cls).get("__lite_built__")
        if built is None:
            built = _Built(cls)
            cls.__lite_built__ = built
        return built

    @classmethod
    def _lite_validator_of_field(cls, value: Any) -> Any:
        if isinstance(value, cls):
            return value
        return cls._lite_validate(value)

    @classmethod
    def _lite_validate(cls, value: Any) -> Any:
        built = vars(cls).get("__lite_built__") or cls._lite_build()
        original = value
        for func in built.model_before:
            value = _call(func, cls, value)
        if not isinstance(value, dict):
            raise _err("model_type", f"Input should be a valid dictionary or instance of "
                       f"{cls.__name__}", value, {"class_name": cls.__name__})
        by_name = cls.__lite_config__.get("populate_by_name", False)
        values: dict[str, Any] = {}
        used: set = set()
        fields_set: set = set()
        errors: list = []
        for name, alias, func, info in built.fields:
            if alias in value:
                key = alias
            elif by_name and name in value:
                key = name
            else:
                if info.default is not _MISSING:
                    values[name] = info.default
                elif info.default_factory is not None:
                    values[name] = info.default_factory()
                else:
                    errors.append(("missing", (alias,), "Field required", value, None))
                continue
            used.add(key)
            fields_set.add(name)
            try:
                values[name] = func(value[key])
            except _Fail as exc:
                errors.extend(_prefixed(exc.errors, key))
        extra_mode = cls.__lite_config__.get("extra", "ignore")
        extra: dict[str, Any] | None = None
        if extra_mode == "allow":
            extra = {k: v for k, v in value.items() if k not in used}
        elif extra_mode == "forbid":
            for k, v in value.items():
                if k not in used:
                    errors.append(("extra_forbidden", (k,), "Extra inputs are not permitted",
                                   v, None))
        if errors:
            raise _Fail(errors)
        obj = _instance(cls, values, extra, fields_set)
        for func in built.model_after:  # an error names the model's input, as pydantic's
            obj = _call(func, obj, shown=original)
        return obj

    # ---------------------------------------------------------------- pydantic's API

    def __init__(self, **data: Any) -> None:
        try:
            obj = type(self)._lite_validate(data)
        except _Fail as exc:
            raise ValidationError(type(self).__name__, exc.errors) from None
        _set = object.__setattr__
        _set(self, "__dict__", obj.__dict__)
        _set(self, "__pydantic_extra__", obj.__pydantic_extra__)
        _set(self, "__pydantic_fields_set__", obj.__pydantic_fields_set__)

    @classmethod
    def model_validate(cls, obj: Any) -> Any:
        if isinstance(obj, cls):
            return obj
        try:
            return cls._lite_validate(obj)
        except _Fail as exc:
            raise ValidationError(cls.__name__, exc.errors) from None

    @classmethod
    def model_construct(cls, _fields_set: set | None = None, **values: Any) -> Any:
        built = cls._lite_build()
        data: dict[str, Any] = {}
        taken: set = set()
        for name, alias, _, info in built.fields:
            if alias in values:
                data[name] = values[alias]
                taken.add(alias)
            elif name in values:
                data[name] = values[name]
                taken.add(name)
            elif info.default is not _MISSING:
                data[name] = info.default
            elif info.default_factory is not None:
                data[name] = info.default_factory()
        extra = None
        if cls.__lite_config__.get("extra") == "allow":
            extra = {k: v for k, v in values.items() if k not in taken}
        if _fields_set is None:
            _fields_set = {name for name, alias, _, _ in built.fields
                           if alias in values or name in values}
        return _instance(cls, data, extra, set(_fields_set))

    def model_copy(self, *, update: dict[str, Any] | None = None, deep: bool = False) -> Any:
        if deep:
            raise TypeError("config.lite: model_copy(deep=True) is not supported")
        cls = type(self)
        data = dict(self.__dict__)
        extra = dict(self.__pydantic_extra__) if self.__pydantic_extra__ is not None else None
        fields_set = set(self.__pydantic_fields_set__)
        for key, value in (update or {}).items():
            if key in cls.__lite_fields__:
                data[key] = value
                fields_set.add(key)
            elif extra is not None:
                extra[key] = value
            else:
                data[key] = value
        return _instance(cls, data, extra, fields_set)

    def model_dump(self, *, mode: str = "python", by_alias: bool | None = None,
                   exclude_none: bool = False) -> dict[str, Any]:
        if mode not in ("python", "json"):
            raise ValueError(f"config.lite: model_dump mode {mode!r}")
        return self._lite_dump(mode == "json", bool(by_alias), exclude_none)

    def _lite_dump(self, json: bool, by_alias: bool, exclude_none: bool) -> Any:
        built = type(self)._lite_build()

        def handler(obj: BaseModel) -> dict[str, Any]:
            out: dict[str, Any] = {}
            values = obj.__dict__
            for name, alias, _, _ in built.fields:
                value = values[name]
                ser = built.field_ser.get(name)
                if ser is not None:
                    value = ser(obj, value)
                if exclude_none and value is None:
                    continue
                out[alias if by_alias else name] = _ser(value, json, by_alias, exclude_none)
            for key, value in (obj.__pydantic_extra__ or {}).items():
                if exclude_none and value is None:
                    continue
                out[key] = _ser(value, json, by_alias, exclude_none)
            return out

        if built.model_ser is not None:
            return built.model_ser(self, handler)
        return handler(self)

    @property
    def model_extra(self) -> dict[str, Any] | None:
        return self.__pydantic_extra__

    @property
    def model_fields_set(self) -> set[str]:
        return self.__pydantic_fields_set__

    # ---------------------------------------------------------------- Python protocol

    def __getattr__(self, name: str) -> Any:
        try:
            extra = object.__getattribute__(self, "__pydantic_extra__")
        except AttributeError:
            extra = None
        if extra and name in extra:
            return extra[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if type(self).__lite_config__.get("frozen"):
            raise ValidationError(type(self).__name__, [(
                "frozen_instance", (name,), "Instance is frozen", value, None)])
        if name in type(self).__lite_fields__:
            self.__dict__[name] = value
            self.__pydantic_fields_set__.add(name)
        elif self.__pydantic_extra__ is not None:
            self.__pydantic_extra__[name] = value
        else:
            raise ValueError(f'"{type(self).__name__}" object has no field "{name}"')

    def __delattr__(self, name: str) -> None:
        raise ValidationError(type(self).__name__, [(
            "frozen_instance", (name,), "Instance is frozen", None, None)])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BaseModel):
            return NotImplemented
        return (type(self) is type(other) and self.__dict__ == other.__dict__
                and self.__pydantic_extra__ == other.__pydantic_extra__)

    def __hash__(self) -> int:
        if not type(self).__lite_config__.get("frozen"):
            raise TypeError(f"unhashable type: {type(self).__name__!r}")
        return hash((type(self), *self.__dict__.values()))

    def _lite_items(self) -> list[tuple[str, Any]]:
        return [*self.__dict__.items(), *(self.__pydantic_extra__ or {}).items()]

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self._lite_items())
        return f"{type(self).__name__}({inner})"

    def __str__(self) -> str:
        return " ".join(f"{k}={v!r}" for k, v in self._lite_items())

    def __copy__(self) -> Any:
        return self.model_copy()

    def __reduce__(self) -> Any:
        return (_instance, (type(self), self.__dict__, self.__pydantic_extra__,
                           self.__pydantic_fields_set__))


def _instance(cls: type, data: dict, extra: dict | None, fields_set: set) -> Any:
    """A model instance of its field values, unknown fields and the fields given (taken
    as they are: the caller hands fresh ones), without validation."""
    obj = cls.__new__(cls)
    _set = object.__setattr__
    _set(obj, "__dict__", data)
    _set(obj, "__pydantic_extra__", extra)
    _set(obj, "__pydantic_fields_set__", fields_set)
    return obj

