"""Write kubeconform's JSON schemas from the Kubernetes OpenAPI spec and CRD files.

kubeconform validates each object against ``<kind><suffix>.json`` found through its
``-schema-location`` template (``{{ .ResourceKind }}{{ .KindSuffix }}.json``: lower-case kind,
then ``-<first part of the group>-<version>``, e.g. ``deployment-apps-v1.json``,
``configmap-v1.json``, ``scaledobject-keda-v1alpha1.json``). Nothing here is downloaded: the
inputs come from Go modules that ``deploy/deps.sh`` fetched from the Go module proxy,
``k8s.io/kubernetes`` (``api/openapi-spec/swagger.json``) and the CRDs of an operator such as
``github.com/kedacore/keda/v2`` (``config/crd/bases/*.yaml``).

The conversion follows kubeconform's own ``scripts/openapi2jsonschema.py`` (derived from
instrumenta/openapi2jsonschema), in its strict form:

* every object schema that lists ``properties`` gets ``additionalProperties: false`` unless it
  says otherwise or carries ``x-kubernetes-preserve-unknown-fields`` (an unknown or misspelt
  field fails, as ``kubectl apply --validate=strict`` does);
* ``format: int-or-string`` (and ``x-kubernetes-int-or-string``) becomes a string-or-integer
  choice, and ``resource.Quantity`` accepts numbers as the API server does (``memory: 1``);
* each file is standalone: the definitions it references travel in its own ``definitions``.

A CRD's ``metadata`` (``type: object`` in the CRD) is checked against the Kubernetes
``ObjectMeta`` instead, so a misspelt ``labels`` fails there too.

Usage: ``python k8s_schemas.py OUT_DIR SWAGGER_JSON [CRD_YAML ...]``
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

Schema = dict[str, Any]
REF_PREFIX = "#/definitions/"
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"
INT_OR_STRING: Schema = {"oneOf": [{"type": "string"}, {"type": "integer"}]}


def file_name(group: str, version: str, kind: str) -> str:
    """Return the file name kubeconform looks up for one group/version/kind."""
    suffix = f"-{group.split('.')[0]}-{version}" if group else f"-{version}"
    return f"{kind}{suffix}.json".lower()


def strict(node: Any) -> Any:
    """Return a copy of ``node`` with kubeconform's strict rewrites applied (see module doc)."""
    if isinstance(node, list):
        return [strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    if node.get("format") == "int-or-string" or node.get("x-kubernetes-int-or-string"):
        kept = {k: v for k, v in node.items() if k in ("description", "pattern")}
        return {**kept, **INT_OR_STRING}
    out = {key: strict(value) for key, value in node.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(REF_PREFIX):
            yield ref[len(REF_PREFIX) :]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def closure(root: Any, definitions: dict[str, Schema]) -> dict[str, Schema]:
    """Return every definition ``root`` references, directly or through others."""
    found: dict[str, Schema] = {}
    pending = list(_refs(root))
    while pending:
        name = pending.pop()
        if name not in found:
            found[name] = definitions[name]
            pending.extend(_refs(definitions[name]))
    return found


def standalone(root: Schema, definitions: dict[str, Schema]) -> Schema:
    """Return ``root`` with the definitions it needs embedded (refs stay ``#/definitions/``)."""
    needed = closure(root, definitions)
    schema = {key: value for key, value in root.items() if key != "definitions"}
    if needed:
        schema["definitions"] = dict(sorted(needed.items()))
    return schema


def kubernetes_definitions(swagger: Schema) -> dict[str, Schema]:
    """Return the strict form of every definition in a Kubernetes ``swagger.json``."""
    definitions = {name: strict(body) for name, body in swagger["definitions"].items()}
    definitions[QUANTITY] = {
        "description": swagger["definitions"][QUANTITY].get("description", ""),
        "oneOf": [{"type": "string"}, {"type": "number"}],
    }
    return definitions


def kubernetes_schemas(definitions: dict[str, Schema]) -> Iterator[tuple[str, Schema]]:
    """Yield ``(file name, schema)`` for every kind among ``kubernetes_definitions``."""
    for _name, body in sorted(definitions.items()):
        for gvk in body.get("x-kubernetes-group-version-kind", []):
            root = {**body, "$schema": "http://json-schema.org/draft-07/schema#"}
            yield (
                file_name(gvk["group"], gvk["version"], gvk["kind"]),
                standalone(root, definitions),
            )


def crd_schemas(crd: Schema, definitions: dict[str, Schema]) -> Iterator[tuple[str, Schema]]:
    """Yield ``(file name, schema)`` for each served version of a CustomResourceDefinition."""
    spec = crd["spec"]
    for version in spec["versions"]:
        body = strict(version["schema"]["openAPIV3Schema"])
        properties = body.setdefault("properties", {})
        properties["metadata"] = {"$ref": REF_PREFIX + OBJECT_META}
        body.setdefault("additionalProperties", False)
        root = {**body, "$schema": "http://json-schema.org/draft-07/schema#"}
        name = file_name(spec["group"], version["name"], spec["names"]["kind"])
        yield name, standalone(root, definitions)


def main(argv: list[str]) -> int:
    """Write every schema into ``argv[0]``; print how many were written."""
    if len(argv) < 2:
        print(__doc__.split("Usage: ")[1].strip(), file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    definitions = kubernetes_definitions(json.loads(Path(argv[1]).read_text(encoding="utf-8")))
    schemas = list(kubernetes_schemas(definitions))
    for path in argv[2:]:
        for document in yaml.safe_load_all(Path(path).read_text(encoding="utf-8")):
            if document and document.get("kind") == "CustomResourceDefinition":
                schemas.extend(crd_schemas(document, definitions))
    for name, schema in schemas:
        (out / name).write_text(json.dumps(schema, separators=(",", ":")), encoding="utf-8")
    print(f"{len(schemas)} schemas written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
