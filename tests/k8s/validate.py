"""Validates Kubernetes manifests offline; run by tests/integration/deploy.rs.

Core kinds go through kubernetes-validate (the Kubernetes OpenAPI schemas it
bundles, strict: unknown fields are errors). A ServiceMonitor goes through
the cloudcoil models of the prometheus-operator CRDs (pydantic models
generated from the CRDs' openAPIV3Schema: types, enums, patterns, required
fields); pydantic ignores unknown fields, so a round trip through the model
reports every field the CRD does not know.

Prints one JSON object per document ({file, kind, name, errors, document})
as a JSON list on stdout; exits 1 if any document has errors.
"""

import json
import sys

import kubernetes_validate
import pydantic
import yaml
from cloudcoil.models.prometheus_operator import v1 as monitoring_v1

# The oldest Kubernetes still commonly run, and the newest bundled.
KUBERNETES_VERSIONS = ["1.28.0", kubernetes_validate.utils.latest_version()]

CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): monitoring_v1.ServiceMonitor,
}


def unknown_fields(given, known, path=""):
    """Paths present in `given` but not in the model's dump `known`."""
    if isinstance(given, dict):
        if not isinstance(known, dict):
            return [path or "/"]
        missing = []
        for key, value in given.items():
            if key not in known:
                missing.append(f"{path}/{key}")
            else:
                missing.extend(unknown_fields(value, known[key], f"{path}/{key}"))
        return missing
    if isinstance(given, list) and isinstance(known, list):
        missing = []
        for i, (g, k) in enumerate(zip(given, known)):
            missing.extend(unknown_fields(g, k, f"{path}/{i}"))
        return missing
    return []


def validate_custom(model, document):
    try:
        parsed = model.model_validate(document)
    except pydantic.ValidationError as err:
        return [
            f"/{'/'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()
        ]
    dumped = parsed.model_dump(mode="json", by_alias=True, exclude_unset=True)
    return [f"{p}: unknown field" for p in unknown_fields(document, dumped)]


def validate_core(document):
    errors = []
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            where = "/".join(str(p) for p in err.path)
            errors.append(f"Kubernetes {version}: /{where}: {err.message}")
        except kubernetes_validate.SchemaNotFoundError as err:
            errors.append(f"Kubernetes {version}: no schema: {err}")
    return errors


def main(paths):
    results = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            documents = [d for d in yaml.safe_load_all(f) if d is not None]
        for document in documents:
            kind = document.get("kind")
            model = CUSTOM_KINDS.get((document.get("apiVersion"), kind))
            if model is not None:
                errors = validate_custom(model, document)
            else:
                errors = validate_core(document)
            results.append(
                {
                    "file": path,
                    "kind": kind,
                    "name": (document.get("metadata") or {}).get("name"),
                    "errors": errors,
                    "document": document,
                }
            )
    json.dump(results, sys.stdout, indent=1)
    return 1 if any(r["errors"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
