"""The one pure parser: dicts, etcd values and YAML text -> validated resources.

Owned by config/. Used alike by the etcd datastore, the file datastore and
bgpctl, so a resource is accepted or rejected the same way everywhere. Every
failure is a `ConfigError` naming kind, resource name, field, value and
reason; no other exception escapes these functions for any input.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Mapping
from typing import Any

from config import keys
from config.errors import ConfigError, FieldProblem
from config.lite import BaseModel, ValidationError
from config.model import (
    API_VERSION,
    MODELS,
    Affinity,
    BlockAffinity,
    Lent,
    Resource,
    _loose_bool,
)

__all__ = [
    "parse_affinity",
    "parse_block_lending",
    "parse_json",
    "parse_namespaced_json",
    "parse_resource",
    "parse_yaml_documents",
    "to_calico_dict",
    "to_json",
    "unknown_fields",
]

_AFFINITY_STATES = ("confirmed", "pending", "pendingDeletion", "")
# Every kind parse_resource knows: the routing resources and the policy ones. The
# policy kinds' models (config.policy) and the Kubernetes documents' (config.k8s), and
# yaml for YAML text, are imported on first use: a routing daemon reading etcd needs
# none of them (issue 17: ~1.3 MiB of an idle bgpd). tests/unit/test_config_parse.py
# holds these names to config.policy.POLICY_MODELS and config.k8s.FOREIGN_KINDS.
_POLICY_KINDS = ("NetworkPolicy", "GlobalNetworkPolicy", "Profile")
_FOREIGN_KINDS = frozenset({("networking.k8s.io/v1", "NetworkPolicy"), ("v1", "Namespace")})
_KINDS = (*MODELS, *_POLICY_KINDS)


def _model(kind: str) -> Any:
    model = MODELS.get(kind)
    if model is None and kind in _POLICY_KINDS:
        from config.policy import POLICY_MODELS

        model = POLICY_MODELS[kind]
    return model


def _is_foreign(obj: Mapping[str, Any]) -> bool:
    api, kind = obj.get("apiVersion"), obj.get("kind")
    return isinstance(api, str) and isinstance(kind, str) and (api, kind) in _FOREIGN_KINDS


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _reason(err: Mapping[str, Any]) -> str:
    kind = err.get("type", "")
    msg = str(err.get("msg", ""))
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field is missing"
    if kind == "model_type" or kind == "dict_type":
        return "must be a mapping"
    if kind in ("tuple_type", "list_type"):
        return "must be a list"
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            return msg[len(prefix) :]
    return msg


def _problems(exc: ValidationError) -> list[FieldProblem]:
    problems = []
    for err in exc.errors(include_url=False):
        loc = tuple(err.get("loc", ()))
        # pydantic puts the function name of a BeforeValidator-wrapped Literal etc. in loc
        loc = tuple(p for p in loc if not (isinstance(p, str) and p.startswith("function-")))
        value = err.get("input")
        ctx = err.get("ctx") or {}
        if err.get("type") == "podbgp_field":
            loc = loc + tuple(_split_field(ctx["field"]))
            value = ctx.get("value")
        elif err.get("type") == "missing":
            value = None
        problems.append(FieldProblem(_path(loc), value, _reason(err)))
    return problems


def _split_field(field: str) -> list[Any]:
    parts: list[Any] = []
    for piece in field.split("."):
        name, _, rest = piece.partition("[")
        if name:
            parts.append(name)
        while rest:
            idx, _, rest = rest.partition("]")
            parts.append(int(idx) if idx.isdigit() else idx)
            rest = rest.lstrip("[")
    return parts


def _name_of(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata")
    if isinstance(meta, Mapping):
        name = meta.get("name")
        if isinstance(name, str):
            return name
    return ""


def unknown_fields(model: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted path, value) of every field in ``model`` its class does not declare.

    Walks nested models, tuples and lists: ``spec.interfaces``,
    ``spec.exportV4[0].peerType``. Empty for a resource podbgp fully knows.
    """
    out: list[tuple[str, Any]] = []
    if isinstance(model, BaseModel):
        for name, info in type(model).model_fields.items():
            value = getattr(model, name)
            if isinstance(value, (BaseModel, tuple, list)):
                out.extend(unknown_fields(value, _join(prefix, info.alias or name)))
        for key, value in (model.__pydantic_extra__ or {}).items():
            out.append((_join(prefix, key), value))
    elif isinstance(model, (tuple, list)):
        for i, item in enumerate(model):
            if isinstance(item, BaseModel):
                out.extend(unknown_fields(item, f"{prefix}[{i}]"))
    return out


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def parse_resource(obj: Mapping[str, Any], *, strict: bool = False) -> Resource:
    """Validate one ``projectcalico.org/v3`` resource (a decoded YAML/JSON mapping).

    ``strict=False`` (reading the datastore): a field podbgp does not model is
    kept in the resource and written back, never a reason to reject it
    (`unknown_fields` lists them). ``strict=True`` (a user's input to bgpctl):
    an unknown field is a `ConfigError` naming it, as calicoctl refuses it.
    Invalid values of known fields are an error either way.
    """
    if not isinstance(obj, Mapping):
        raise ConfigError(
            "?", "", "", type(obj).__name__, "a resource must be a mapping with kind/metadata/spec"
        )
    name = _name_of(obj)
    kind = obj.get("kind")
    if kind is None:
        raise ConfigError("?", name, "kind", reason="required field is missing")
    try:
        bad = _non_finite(obj)
    except RecursionError:
        raise ConfigError(kind if isinstance(kind, str) else "?", name, "", reason="document nested too deeply") from None
    if bad is not None:
        # Calico's Go decoder refuses NaN/Infinity; a field we do not model would
        # otherwise be written back as null (JSON cannot hold them). Likewise YAML's
        # !!binary that is not UTF-8 text: no JSON string holds it, so it could not be
        # written back as read.
        path, value = bad
        reason = ("not a finite number (JSON has no NaN or Infinity)"
                  if isinstance(value, float) else
                  "binary data that is not UTF-8 text (JSON cannot hold it)")
        raise ConfigError(kind if isinstance(kind, str) else "?", name, path, value, reason)
    if _is_foreign(obj):
        from config import k8s

        return k8s.convert(obj, _problems, unknown_fields if strict else None)
    model = _model(kind) if isinstance(kind, str) else None
    if model is None:
        raise ConfigError(
            "?", name, "kind", kind, f"unknown kind (expected one of {', '.join(_KINDS)})"
        )
    api = obj.get("apiVersion", API_VERSION)
    if api != API_VERSION:
        raise ConfigError(kind, name, "apiVersion", api, f"must be {API_VERSION}")
    try:
        res = model.model_validate(dict(obj))
    except ValidationError as exc:
        problems = _problems(exc)
        first = problems[0]
        raise ConfigError(
            kind, name, first.field, first.value, first.reason, problems=problems
        ) from None
    except RecursionError:
        raise ConfigError(kind, name, "", reason="document nested too deeply") from None
    if strict and res.kind == "NetworkPolicy" and res.metadata.name.startswith(
            _knp_prefix()):
        # calicoctl refuses these: in etcd mode the prefix multiplexes Kubernetes
        # NetworkPolicies (written from networking.k8s.io/v1 documents) with Calico's.
        raise ConfigError(kind, name, "metadata.name", name,
                          f"names starting with {_knp_prefix()!r} are reserved for Kubernetes "
                          "NetworkPolicies: apply the networking.k8s.io/v1 document instead")
    if strict:
        unknown = unknown_fields(res)
        if unknown:
            problems = [FieldProblem(path, value, "unknown field") for path, value in unknown]
            first = problems[0]
            raise ConfigError(kind, name, first.field, first.value, first.reason,
                              problems=problems)
    return res  # type: ignore[return-value]


def _knp_prefix() -> str:
    from config.k8s import KNP_PREFIX

    return KNP_PREFIX


def _non_finite(obj: Any, prefix: str = "") -> tuple[str, Any] | None:
    """The first NaN/Infinity, or bytes that are not UTF-8, in a decoded document, as
    (dotted path, value): what JSON cannot hold."""
    if isinstance(obj, float):
        return None if math.isfinite(obj) else (prefix, obj)
    if isinstance(obj, (bytes, bytearray)):
        try:
            bytes(obj).decode()
        except UnicodeDecodeError:
            return (prefix, obj)
        return None
    items: Any = (obj.items() if isinstance(obj, Mapping)
                  else enumerate(obj) if isinstance(obj, list) else ())
    for key, value in items:
        found = _non_finite(value, f"{prefix}[{key}]" if isinstance(key, int)
                            else _join(prefix, str(key)))
        if found is not None:
            return found
    return None


def _decode(raw: bytes | str) -> str:
    if isinstance(raw, (bytes, bytearray, memoryview)):
        return bytes(raw).decode("utf-8")
    return raw


def parse_json(key: str, raw: bytes | str) -> Resource:
    """Parse an etcd value stored under resource ``key``; checks key against kind/name."""
    where = keys.parse_resource_key(key)
    if where is None:
        raise ConfigError("?", "", "", key, "not a Calico v3 resource key", key=key)
    kind, name = where
    try:
        obj = json.loads(_decode(raw))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ConfigError(kind, name, "", reason=f"value is not valid JSON: {exc}", key=key) from None
    if not isinstance(obj, dict):
        raise ConfigError(kind, name, "", type(obj).__name__, "value is not a JSON object", key=key)
    try:
        res = parse_resource(obj)
    except ConfigError as exc:
        raise ConfigError(
            exc.kind if exc.kind != "?" else kind,
            exc.name or name,
            exc.field,
            exc.value if exc.has_value else None,
            exc.reason,
            key=key,
            problems=exc.problems,
        ) from None
    if res.kind != kind:
        raise ConfigError(
            res.kind, res.metadata.name, "kind", res.kind,
            f"stored under the key for {kind}", key=key,
        )
    if res.metadata.name != name:
        raise ConfigError(
            kind, name, "metadata.name", res.metadata.name,
            "does not match the name in the key", key=key,
        )
    return res


def parse_namespaced_json(key: str, raw: bytes | str) -> Any:
    """Parse the value under a namespaced key (``<plural>/<namespace>/<name>``).

    The key's kind, namespace and name must match the document's; a value that
    leaves the namespace to the key (Calico's etcd backend may) gets it from
    the key. WorkloadEndpoints go to config.endpoints' parser.
    """
    where = keys.parse_namespaced_key(key)
    if where is None:
        raise ConfigError("?", "", "", key, "not a namespaced Calico v3 resource key", key=key)
    kind, namespace, name = where
    if kind == "WorkloadEndpoint":
        from config.endpoints import parse_endpoint_json

        return parse_endpoint_json(key, raw)
    try:
        obj = json.loads(_decode(raw))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ConfigError(kind, name, "", reason=f"value is not valid JSON: {exc}", key=key) from None
    if not isinstance(obj, dict):
        raise ConfigError(kind, name, "", type(obj).__name__, "value is not a JSON object", key=key)
    meta = obj.get("metadata")
    if isinstance(meta, dict) and not meta.get("namespace"):
        obj = {**obj, "metadata": {**meta, "namespace": namespace}}
    try:
        res = parse_resource(obj)
    except ConfigError as exc:
        raise ConfigError(exc.kind if exc.kind != "?" else kind, exc.name or name, exc.field,
                          exc.value if exc.has_value else None, exc.reason, key=key,
                          problems=exc.problems) from None
    for field, got, want in (("kind", res.kind, kind), ("metadata.name", res.metadata.name, name),
                             ("metadata.namespace", res.metadata.namespace, namespace)):
        if got != want:
            raise ConfigError(kind, name, field, got,
                              f"does not match the key ({want!r})", key=key)
    return res


@functools.cache
def _yaml_loader() -> Any:
    """yaml's SafeLoader without YAML 1.1's base-60 numbers, floats and timestamps
    (made, and yaml imported, on first use).

    Calico reads YAML with Go's yaml library, which has no base-60: a community
    ``5663:12`` must stay a string, not become the integer 339792. No podbgp
    field is a float, so an unquoted dotted AS number ``1.10`` stays the string
    "1.10" (= 65546) instead of the float 1.1.
    """
    import yaml

    class _Loader(yaml.SafeLoader):
        pass

    _Loader.yaml_implicit_resolvers = {
        first: [
            (tag, regexp)
            for tag, regexp in resolvers
            if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
                           "tag:yaml.org,2002:timestamp")
        ]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    _Loader.add_implicit_resolver(
        "tag:yaml.org,2002:int",
        re.compile(
            r"""^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$""",
            re.X,
        ),
        list("-+0123456789"),
    )
    return _Loader


def load_yaml_documents(text: str | bytes) -> list[Any]:
    """The decoded documents of a (multi-document) YAML text, ``kind: List`` items
    expanded and empty documents skipped; raises `ConfigError` for unreadable YAML."""
    import yaml

    try:
        docs = list(yaml.load_all(_decode(text), Loader=_yaml_loader()))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError("YAML", "", "", reason=f"invalid YAML{where}: {problem}") from None
    except (UnicodeDecodeError, RecursionError) as exc:
        raise ConfigError("YAML", "", "", reason=f"unreadable YAML: {exc}") from None
    out: list[Any] = []
    for number, doc in enumerate(docs, start=1):
        if doc is None:
            continue
        if isinstance(doc, dict) and _is_list(doc.get("kind")):
            items = doc.get("items") or []
            if not isinstance(items, list):
                raise ConfigError("List", f"document {number}", "items", items, "must be a list")
            out.extend(items)
        else:
            out.append(doc)
    return out


def _is_list(kind: Any) -> bool:
    return kind == "List" or (isinstance(kind, str) and kind.endswith("List")
                              and kind[:-len("List")] in (*_KINDS, "Namespace"))


def parse_document(doc: Any, number: int, *, strict: bool = False) -> Resource:
    """One decoded document (number ``number`` in its text, for messages)."""
    if not isinstance(doc, dict):
        raise ConfigError(
            "YAML", f"document {number}", "", type(doc).__name__, "a document must be a mapping"
        )
    return parse_resource(doc, strict=strict)


def parse_yaml_documents(text: str | bytes, *, strict: bool = False) -> list[Resource]:
    """Every resource in a (multi-document) YAML text; ``kind: List`` items are expanded.

    All-or-nothing: the first bad document raises `ConfigError` (naming the
    document number when it has no usable kind/name) and nothing is returned.
    ``strict`` as in `parse_resource` (bgpctl passes True).
    """
    return [parse_document(doc, n, strict=strict)
            for n, doc in enumerate(load_yaml_documents(text), start=1)]


# Calico's Go structs mark these booleans omitempty: false is not stored.
_OMIT_FALSE = {"IPPool": ("natOutgoing", "disabled", "disableBGPExport")}


def to_calico_dict(res: Resource) -> dict[str, Any]:
    """The JSON object Calico stores for ``res`` (camelCase, unset fields omitted)."""
    dumped = res.model_dump(mode="json", by_alias=True, exclude_none=True)
    spec = dumped.get("spec", {})
    for field in _OMIT_FALSE.get(res.kind, ()):
        if spec.get(field) is False:
            del spec[field]
    if isinstance(res, BlockAffinity):
        # Calico's v3 BlockAffinitySpec.Deleted is a string.
        spec["deleted"] = "true" if res.spec.deleted else "false"
    out: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": res.kind,
        "metadata": dumped["metadata"],
        "spec": spec,
    }
    for key, value in dumped.items():  # status, and whatever else the object carried
        out.setdefault(key, value)
    return out


def to_json(res: Resource) -> bytes:
    """The etcd value bytes for ``res`` (compact JSON, as Calico writes)."""
    return json.dumps(to_calico_dict(res), separators=(",", ":")).encode()


def parse_affinity(key: str, raw: bytes | str) -> Affinity:
    """Parse a host-affinity etcd entry (``/calico/ipam/v2/host/<node>/ipv4/block/<cidr->``).

    The value is ``{"state": ..., "deleted": ...}``; very old Calico wrote an
    empty value, which is a state-less (hence advertised) affinity.
    """
    where = keys.parse_affinity_key(key)
    if where is None:
        raise ConfigError("BlockAffinity", "", "", key, "not a Calico block affinity key", key=key)
    node, cidr = where
    name = f"{node}/{cidr}"
    try:
        text = _decode(raw).strip()
    except UnicodeDecodeError as exc:
        raise ConfigError("BlockAffinity", name, "", reason=f"value is not UTF-8: {exc}",
                          key=key) from None
    if not text:
        return Affinity(node, cidr)
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ConfigError("BlockAffinity", name, "", reason=f"value is not valid JSON: {exc}",
                          key=key) from None
    if not isinstance(obj, dict):
        raise ConfigError("BlockAffinity", name, "", type(obj).__name__,
                          "value is not a JSON object", key=key)
    # Other keys are ignored (read leniently): podbgp never writes an affinity
    # it did not create, so nothing of them can be lost.
    state = obj.get("state", "")
    if state is None:
        state = ""
    if state not in _AFFINITY_STATES:
        raise ConfigError("BlockAffinity", name, "state", state,
                          "must be confirmed, pending, pendingDeletion or empty", key=key)
    deleted = obj.get("deleted", False)
    try:
        deleted = False if deleted is None else _loose_bool(deleted)
    except ValueError as exc:
        raise ConfigError("BlockAffinity", name, "deleted", deleted, str(exc), key=key) from None
    return Affinity(node, cidr, state, deleted)


def affinity_value(affinity: Affinity) -> bytes:
    """The etcd value Calico writes for a host affinity."""
    return json.dumps(
        {"state": affinity.state, "deleted": affinity.deleted}, separators=(",", ":")
    ).encode()



def parse_block_lending(key: str, raw: bytes | str) -> tuple[Lent, ...]:
    """The borrowed addresses of one IPAM block (``/calico/ipam/v2/assignment/...``):
    allocations whose ``secondary.node`` is not the block's affine host.

    Raises ``ValueError`` (naming key and field) for a block that is not Calico's shape.
    """
    from ipam.model import IPAMBlock  # stdlib-only records; ipam/ owns their shape

    block = IPAMBlock.from_json(key, raw)
    owner = block.host
    if owner is None or block.deleted:
        return ()
    out = []
    for ordinal, idx in enumerate(block.allocations):
        if idx is None:
            continue
        holder = block.attributes[idx].secondary.get("node")
        if holder and holder != owner:
            out.append(Lent(str(block.ip(ordinal)), holder, owner))
    return tuple(out)
