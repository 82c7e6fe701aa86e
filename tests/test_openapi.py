"""The OpenAPI document the server publishes: valid, every reference resolving, every operation
described with examples, and errors documented as the body the server really sends."""

from __future__ import annotations

import json

import pytest
from openapi_spec_validator import OpenAPIV30SpecValidator, OpenAPIV31SpecValidator, validate

from service.app import create_app
from service.http.docs import openapi_3_0
from service.settings import Settings

READINESS_PROBES = {"/health/ready", "/v2/health/ready"}  # their 503 body is the probe's own schema


@pytest.fixture(scope="module")
def client(model_dir, asgi_client):
    return asgi_client(create_app(Settings(model_dir=model_dir, benchmark_endpoints=True)))


@pytest.fixture(scope="module")
def document(client) -> dict:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.json()


def operations(document: dict):
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield f"{method.upper()} {path}", path, operation


def resolve(document: dict, ref: str) -> dict:
    assert ref.startswith("#/"), f"{ref}: expected a reference inside the document"
    node = document
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"{ref} points nowhere"
        node = node[part]
    return node


def refs(node):
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def test_the_document_is_valid_openapi_3_1(document):
    assert document["openapi"].startswith("3.1.")
    validate(document, cls=OpenAPIV31SpecValidator)


def test_every_reference_resolves(document):
    """The validator does not follow references; a schema's `#/$defs/...` would point nowhere."""
    dangling = sorted({ref for ref in refs(document) if not _resolves(document, ref)})
    assert dangling == []


def _resolves(document: dict, ref: str) -> bool:
    try:
        resolve(document, ref)
    except AssertionError:
        return False
    return True


ROUTES = {
    "GET /health/live", "GET /health/ready", "GET /metrics", "GET /models", "GET /models/{name}",
    *(f"POST /models/{{name}}/{op}" for op in ("encode", "decode", "sample", "reconstruct", "elbo", "iwae",
                                                "classify", "anomaly")),
    "GET /v2", "GET /v2/health/live", "GET /v2/health/ready", "GET /v2/models/{model}", "GET /v2/models/{model}/ready",
    "GET /v2/models/{model}/versions/{model_version}", "GET /v2/models/{model}/versions/{model_version}/ready",
    "POST /v2/models/{model}/infer", "POST /v2/models/{model}/versions/{model_version}/infer",
    "POST /benchmark/noop",
    "POST /v2/repository/index", "POST /v2/repository/models/{name}/load", "POST /v2/repository/models/{name}/unload",
}


def test_the_document_lists_every_route_and_no_page(document):
    assert {name for name, *_ in operations(document)} == ROUTES  # not /docs, its assets or its 3.0 document


def test_every_operation_has_a_summary_and_a_description(document):
    undescribed = [name for name, _, op in operations(document) if not op.get("summary") or not op.get("description")]
    assert undescribed == []


def test_errors_are_documented_as_the_error_body(document):
    """Every 4xx and 5xx is {"error": "..."}, FastAPI's default 422 schema included."""
    error = {"$ref": "#/components/schemas/ErrorResponse"}
    wrong = []
    for name, path, operation in operations(document):
        for status, response in operation["responses"].items():
            if status[0] not in "45" or (status == "503" and path in READINESS_PROBES):
                continue
            if response["content"]["application/json"]["schema"] != error:
                wrong.append(f"{name} {status}")
    assert wrong == []
    assert all("422" in op["responses"] for name, _, op in operations(document) if name.startswith("POST /models/"))
    assert resolve(document, error["$ref"])["properties"]["error"]["type"] == "string"
    text = json.dumps(document)
    assert "HTTPValidationError" not in text and '"ValidationError"' not in text


def test_every_response_has_an_example(document):
    missing = []
    for name, _, operation in operations(document):
        for status, response in operation["responses"].items():
            for media, content in response.get("content", {}).items():
                if media == "application/octet-stream":
                    continue
                schema = content.get("schema", {})
                if "$ref" in schema:
                    schema = resolve(document, schema["$ref"])
                if not ({"example", "examples"} & set(content) or "examples" in schema):
                    missing.append(f"{name} {status} {media}")
    assert missing == []


def test_the_error_examples_are_error_bodies(document):
    for name, _, operation in operations(document):
        for status, response in operation["responses"].items():
            content = response.get("content", {}).get("application/json", {})
            if content.get("schema") == {"$ref": "#/components/schemas/ErrorResponse"}:
                example = content["example"]
                assert set(example) == {"error"} and isinstance(example["error"], str), (name, status)


def test_docs_reads_the_same_document_as_openapi_3_0(client, document):
    """Swagger UI 4 renders 3.0 only: /docs reads a 3.0 rewrite with the same operations."""
    response = client.get("/docs/openapi-3.0.json")
    assert response.status_code == 200
    rewritten = response.json()
    assert rewritten["openapi"] == "3.0.3"
    OpenAPIV30SpecValidator(rewritten).validate()
    assert [name for name, *_ in operations(rewritten)] == [name for name, *_ in operations(document)]
    assert not [ref for ref in refs(rewritten) if not _resolves(rewritten, ref)]


def test_openapi_3_0_spells_json_schema_the_3_0_way():
    document = {"openapi": "3.1.0", "info": {"title": "t", "version": "1"}, "paths": {}, "components": {"schemas": {
        "A": {"type": "object", "properties": {
            "ref_or_null": {"anyOf": [{"$ref": "#/components/schemas/B"}, {"type": "null"}], "title": "R"},
            "int_or_null": {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "null"}], "default": None},
            "rate": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1, "examples": [0.05, 0.1]},
            "kind": {"const": "gaussian"},
            "either": {"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]},
        }},
        "B": {"type": "string"}}}}
    properties = openapi_3_0(document)["components"]["schemas"]["A"]["properties"]
    assert properties == {
        "ref_or_null": {"allOf": [{"$ref": "#/components/schemas/B"}], "title": "R", "nullable": True},
        "int_or_null": {"type": "integer", "minimum": 0, "default": None, "nullable": True},
        "rate": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 1, "exclusiveMaximum": True,
                 "example": 0.05},
        "kind": {"enum": ["gaussian"]},
        "either": {"anyOf": [{"type": "string"}, {"type": "integer"}], "nullable": True},
    }
    assert document["components"]["schemas"]["A"]["properties"]["kind"] == {"const": "gaussian"}  # not modified
