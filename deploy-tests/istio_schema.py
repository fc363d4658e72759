"""Validation of Istio resources against the openAPIV3Schema of Istio's published CRDs
(testdata/istio-crds.gen.yaml), as strictly as the API server with `--validate=strict`:

- Unknown fields are errors. A structural CRD schema prunes every field it does not declare,
  so each object schema without `additionalProperties` gets `additionalProperties: false`.
  Where the schema says `x-kubernetes-preserve-unknown-fields: true` the API server keeps
  unknown fields, so they are allowed there too; in these CRDs that is only `status`, which a
  manifest must not set at all (checked separately, so nothing slips through that door).
- `nullable: true` (OpenAPI) becomes "or null"; `format: int32/int64/uint32` becomes a range.
- `metadata` is validated against the Kubernetes ObjectMeta schema (strict) that
  kubernetes-validate ships.
- The CEL rules (`x-kubernetes-validations`) are evaluated by a small interpreter that knows
  exactly the rule texts these CRDs use (CEL_RULES). A rule it does not know, on a value a
  manifest sets, is reported as an error rather than skipped: extend CEL_RULES then.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import yaml

INT_RANGES = {
    "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint32": (0, 2**32 - 1),
    "uint64": (0, 2**64 - 1),
}

_DURATION = re.compile(r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|µs|ms|s|m|h)")
_UNIT_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}


def parse_duration(text: str) -> float:
    """A Go / CEL duration ("1.5s", "1m30s", "250ms") in seconds; ValueError if invalid."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"not a duration: {text!r}")
    s, total = text, 0.0
    sign = -1 if s.startswith("-") else 1
    s = s.lstrip("+-")
    if s == "0":
        return 0.0
    if not s:
        raise ValueError(f"not a duration: {text!r}")
    while s:
        m = _DURATION.match(s)
        if not m:
            raise ValueError(f"not a duration: {text!r}")
        total += float(m.group(1)) * _UNIT_NS[m.group(3)]
        s = s[m.end():]
    return sign * total / 1e9


def _count_has(rule: str, value: dict) -> int:
    return sum(1 for f in re.findall(r"has\(self\.(\w+)\)", rule) if f in value)


def _service_accounts_rule(value: dict) -> bool:
    if "serviceAccounts" in value or "notServiceAccounts" in value:
        return not any(k in value for k in ("principals", "notPrincipals", "namespaces", "notNamespaces"))
    return True


def _port_level_mtls_rule(value: dict) -> bool:
    if "portLevelMtls" not in value:
        return True
    return bool((value.get("selector") or {}).get("matchLabels"))


def _port_keys_rule(value: dict) -> bool:
    try:
        return all(0 < int(k) <= 65535 for k in value)
    except ValueError:
        return False


def _url_scheme_rule(value: str) -> bool:
    return value.split("://", 1)[0] in ("http", "https") and "://" in value


def _duration_at_least_1ms(value) -> bool:
    try:
        return parse_duration(value) >= 0.001
    except ValueError:
        return False


# Rule text -> predicate over the value at that node. Only rules whose meaning is unambiguous
# are here; the "at most one of" rules are recognised by shape (below).
CEL_RULES = {
    "duration(self) >= duration('1ms')": _duration_at_least_1ms,
    'self.all(key, !key.contains("*"))': lambda v: all("*" not in k for k in v),
    "self.all(key, key.size() != 0)": lambda v: all(len(k) != 0 for k in v),
    '!self.contains("*")': lambda v: "*" not in v,
    "self.size() == 0": lambda v: len(v) == 0,
    "self.all(key, 0 < int(key) && int(key) <= 65535)": _port_keys_rule,
    "url(self).getScheme() in [\"http\", \"https\"]": _url_scheme_rule,
    "(has(self.serviceAccounts) || has(self.notServiceAccounts)) ? (!has(self.principals) &&\n"
    "!has(self.notPrincipals) && !has(self.namespaces) && !has(self.notNamespaces)) : true": _service_accounts_rule,
    "has(self.portLevelMtls) ? (((has(self.selector) && has(self.selector.matchLabels)) ? "
    "self.selector.matchLabels : {}).size() > 0) : true": _port_level_mtls_rule,
}
_AT_MOST_ONE = re.compile(r"^\(has\(self\.\w+\) \? 1 : 0\)( \+ \(has\(self\.\w+\) \? 1 : 0\))+ <= 1$")


def cel_check(rule: str, value) -> bool:
    """True if value satisfies rule; KeyError if the rule is not one this checker knows."""
    if rule in CEL_RULES:
        return CEL_RULES[rule](value)
    if _AT_MOST_ONE.match(rule):
        return _count_has(rule, value) <= 1
    raise KeyError(rule)


def strict_schema(schema):
    """A copy of a CRD schema in which unknown fields are errors (see the module comment)."""
    if isinstance(schema, list):
        return [strict_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in ("properties", "patternProperties", "definitions", "$defs"):
            out[key] = {k: strict_schema(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "not") or key in ("oneOf", "anyOf", "allOf"):
            out[key] = strict_schema(value) if not isinstance(value, bool) else value
        else:
            out[key] = value
    if schema.get("type") == "object" and "additionalProperties" not in schema \
            and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if schema.get("nullable") and "type" in schema:
        out["type"] = [schema["type"], "null"]
    fmt = schema.get("format")
    if schema.get("type") == "integer" and fmt in INT_RANGES:
        lo, hi = INT_RANGES[fmt]
        out.setdefault("minimum", lo)
        out.setdefault("maximum", hi)
    if schema.get("x-kubernetes-int-or-string") and "type" not in schema and "anyOf" not in schema:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    return out


def _walk_cel(schema, value, path: str, errors: list[str]) -> None:
    if not isinstance(schema, dict):
        return
    for rule in schema.get("x-kubernetes-validations", []):
        try:
            ok = cel_check(rule["rule"], value)
        except KeyError:
            errors.append(f"{path}: CEL rule not known to this checker (extend CEL_RULES): {rule['rule']!r}")
            continue
        except (TypeError, ValueError, AttributeError) as e:
            ok = False
            rule = dict(rule, message=f"{rule.get('message', '')} ({e})")
        if not ok:
            errors.append(f"{path}: {rule.get('message') or rule['rule']} (got {json.dumps(value)})")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        addl = schema.get("additionalProperties")
        for k, v in value.items():
            if k in props:
                _walk_cel(props[k], v, f"{path}.{k}", errors)
            elif isinstance(addl, dict):
                _walk_cel(addl, v, f"{path}.{k}", errors)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(value):
            _walk_cel(schema["items"], v, f"{path}[{i}]", errors)


@dataclass
class CrdVersion:
    group: str
    version: str
    kind: str
    served: bool
    schema: dict


class IstioSchemas:
    def __init__(self, crd_file: Path):
        self.versions: dict[tuple[str, str, str], CrdVersion] = {}
        for doc in yaml.safe_load_all(crd_file.read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for v in spec["versions"]:
                key = (spec["group"], v["name"], spec["names"]["kind"])
                self.versions[key] = CrdVersion(
                    group=spec["group"], version=v["name"], kind=spec["names"]["kind"],
                    served=v.get("served", False), schema=v["schema"]["openAPIV3Schema"])
        self._object_meta = object_meta_validator()

    def kinds(self) -> set[tuple[str, str]]:
        return {(f"{g}/{v}", k) for (g, v, k) in self.versions}

    def validate(self, doc: dict) -> list[str]:
        """Problems with one Istio resource (empty when it is valid)."""
        api_version, kind = doc.get("apiVersion", ""), doc.get("kind", "")
        if "/" not in api_version:
            return [f"apiVersion {api_version!r} is not group/version"]
        group, version = api_version.split("/", 1)
        crd = self.versions.get((group, version, kind))
        if crd is None:
            return [f"no CRD for {kind} in {api_version}"]
        if not crd.served:
            return [f"{kind} {api_version} is not served"]
        errors = []
        extra = set(doc) - {"apiVersion", "kind", "metadata", "spec"}
        if extra:
            errors.append(f"fields not allowed at the top level of a manifest: {sorted(extra)}")
        meta_errors = sorted(self._object_meta.iter_errors(doc.get("metadata", {})),
                             key=lambda e: list(e.path))
        errors += [f"metadata.{'.'.join(map(str, e.path))}: {e.message}" for e in meta_errors]
        schema = strict_schema(crd.schema)
        body = {k: v for k, v in doc.items() if k in ("spec",)}
        object_schema = {"type": "object", "properties": {"spec": schema["properties"]["spec"]},
                         "additionalProperties": False}
        for e in sorted(jsonschema.Draft202012Validator(object_schema).iter_errors(body), key=lambda e: list(e.path)):
            errors.append(f"{'.'.join(map(str, e.path)) or '<root>'}: {e.message}")
        _walk_cel(crd.schema["properties"]["spec"], doc.get("spec", {}), "spec", errors)
        return errors


def object_meta_validator() -> jsonschema.protocols.Validator:
    """Kubernetes' ObjectMeta, strict, from the schemas kubernetes-validate ships (newest),
    resolved the same way kubernetes_validate.validate resolves its references."""
    import kubernetes_validate.utils as kv
    from referencing import Registry, Resource

    version = kv.latest_version()
    folder = f"kubernetes-json-schema/v{version}-local-strict"
    schema = kv.schema_contents(f"{folder}/objectmeta-meta-v1.json", version)
    definitions = kv.schema_contents(f"{folder}/_definitions.json", version)
    registry = Resource.from_contents(schema) @ Registry()
    registry = Resource.from_contents(definitions) @ registry
    return jsonschema.Draft202012Validator(schema, registry=registry)
