"""Convert a CustomResourceDefinition's openAPIV3Schema into a strict JSON Schema (kubeconform layout).

    python scripts/crd_json_schema.py CRD.yaml VERSION OUT.json

Strict as a validating API server with field validation Strict: every object that lists properties and
does not say otherwise rejects unknown fields (``additionalProperties: false``); ``x-kubernetes-int-or-string``
becomes ``integer`` or ``string``; ``x-kubernetes-preserve-unknown-fields`` stays open. Descriptions are
dropped (the CRD has them).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml


def strict(node: Any) -> Any:
    """``node`` with the rules above applied at every level."""
    if isinstance(node, list):
        return [strict(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict(v) for k, v in node.items() if k != "description" or not isinstance(v, str)}
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if "properties" in out and "additionalProperties" not in out \
            and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def convert(crd: dict[str, Any], version: str) -> dict[str, Any]:
    (entry,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = strict(entry["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    schema["properties"]["apiVersion"] = {"type": "string", "enum": [f"{group}/{version}"]}
    schema["properties"]["kind"] = {"type": "string", "enum": [kind]}
    return {"$schema": "http://json-schema.org/draft-07/schema#", **schema}


if __name__ == "__main__":
    source, version, target = sys.argv[1:4]
    crd = yaml.safe_load(Path(source).read_text())
    Path(target).write_text(json.dumps(convert(crd, version), indent=1, sort_keys=True) + "\n")
