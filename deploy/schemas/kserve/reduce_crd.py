"""Reduce KServe's InferenceService CRD to the JSON schema vendored beside this file.

    python deploy/schemas/kserve/reduce_crd.py serving.kserve.io_inferenceservices.yaml \
        > deploy/schemas/kserve/inferenceservice-v1beta1.schema.json

The CRD (config/crd/full/ in github.com/kserve/kserve) is about 2 MB of YAML, most of it field
descriptions and the same pod template repeated for every built-in framework. What is kept, and
what the tests check against it, is in README.md beside this file.
"""

from __future__ import annotations

import argparse
import json
import sys

import yaml

# The predictor's built-in framework specs and multi-node workers: each is a whole container (or
# pod) schema again. Our predictor is a custom container, so these stay accepted but unchecked.
OPAQUE_PREDICTOR_FIELDS = ("huggingface", "lightgbm", "onnx", "paddle", "pmml", "pytorch", "sklearn",
                           "tensorflow", "triton", "xgboost", "workerSpec")
# Components other than the predictor: accepted but unchecked.
OPAQUE_SPEC_FIELDS = ("canary", "explainer", "transformer")
OPAQUE = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}

SUBSCHEMA_KEYS = ("items", "additionalProperties", "not")
SUBSCHEMA_LIST_KEYS = ("allOf", "anyOf", "oneOf")


def without_descriptions(schema):
    """The schema with every `description` keyword dropped (a property *named* description stays)."""
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "description":
            continue
        if key == "properties":
            out[key] = {name: without_descriptions(sub) for name, sub in value.items()}
        elif key in SUBSCHEMA_KEYS:
            out[key] = without_descriptions(value)
        elif key in SUBSCHEMA_LIST_KEYS:
            out[key] = [without_descriptions(sub) for sub in value]
        else:
            out[key] = value
    return out


def reduce_crd(crd: dict, version: str = "v1beta1") -> dict:
    """The openAPIV3Schema of `version`, without status and descriptions, opaque where noted above."""
    if crd.get("kind") != "CustomResourceDefinition" or crd["spec"]["names"]["kind"] != "InferenceService":
        raise ValueError(f"expected the InferenceService CustomResourceDefinition, got {crd.get('kind')} "
                         f"{crd.get('metadata', {}).get('name')}")
    versions = {v["name"]: v for v in crd["spec"]["versions"]}
    if version not in versions:
        raise ValueError(f"expected a version {version} in the CRD, found {sorted(versions)}")
    schema = without_descriptions(versions[version]["schema"]["openAPIV3Schema"])
    schema["properties"].pop("status", None)
    spec = schema["properties"]["spec"]["properties"]
    for name in OPAQUE_SPEC_FIELDS:
        spec[name] = dict(OPAQUE)
    predictor = spec["predictor"]["properties"]
    for name in OPAQUE_PREDICTOR_FIELDS:
        predictor[name] = dict(OPAQUE)
    return schema


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("crd", help="serving.kserve.io_inferenceservices.yaml")
    args = parser.parse_args(argv)
    with open(args.crd) as f:
        crd = yaml.safe_load(f)
    json.dump(reduce_crd(crd), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
