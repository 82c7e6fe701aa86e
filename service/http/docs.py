"""The API's documentation: an OpenAPI document that says what the server really does, and `/docs`
served from this machine (swagger-ui-bundle's assets), so it works without a network.

FastAPI's document is adjusted in two ways. Its default 422 body (`HTTPValidationError`) is
replaced by `ErrorResponse`, since `service.http.errors` rewrites every validation error as
`{"error": "..."}`. And request-body schemas embedded through `openapi_extra` keep their nested
models under `$defs`, referenced as `#/$defs/Name`, which points nowhere in an OpenAPI document; those
models move to `components/schemas`.

Swagger UI 4 (what swagger-ui-bundle ships) renders OpenAPI 3.0 only, and FastAPI writes 3.1, so
`/docs` reads the same document rewritten as 3.0 (`openapi_3_0`) from `/docs/openapi-3.0.json`.
`/openapi.json` stays the 3.1 document for clients and generators.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

from service.http.errors import ErrorResponse, error_responses

ASSETS = "/docs-assets"
DOCUMENT_3_0 = "/docs/openapi-3.0.json"
DEFAULT_422 = ("HTTPValidationError", "ValidationError")


def install_docs(app: FastAPI) -> None:
    """Serve `/docs` offline and make `app.openapi()` return the adjusted document.

    The app must be built with `docs_url=None, redoc_url=None` (ReDoc's assets are not shipped).
    """
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            document = build()
            _hoist_defs(document)
            _errors_as_error_response(document)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi
    app.mount(ASSETS, StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")  # behind a proxy that strips a prefix
        return get_swagger_ui_html(
            openapi_url=root + DOCUMENT_3_0, title=f"{app.title}: API documentation",
            swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js", swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS}/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None})  # Swagger UI's default is validator.swagger.io

    @app.get(DOCUMENT_3_0, include_in_schema=False)
    async def document_3_0() -> JSONResponse:
        return JSONResponse(openapi_3_0(app.openapi()))


def _walk(node: Any):
    """Every dict inside a JSON document, outermost first."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _hoist_defs(document: dict) -> None:
    """Move `$defs` of inline schemas into components/schemas and point their refs there."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for node in list(_walk(document["paths"])):
        for name, schema in node.pop("$defs", {}).items():
            assert schemas.get(name, schema) == schema, f"two different schemas are both named {name}"
            schemas[name] = schema
    for node in _walk(document):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            node["$ref"] = "#/components/schemas/" + ref.removeprefix("#/$defs/")


def _errors_as_error_response(document: dict) -> None:
    """Define ErrorResponse (`service.http.errors.error_responses` refers to it) and point FastAPI's
    automatic 422 at it: the body the server really sends."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas["ErrorResponse"] = ErrorResponse.model_json_schema()
    default = {"$ref": "#/components/schemas/HTTPValidationError"}
    for path in document["paths"].values():
        for operation in path.values():
            response = operation.get("responses", {}).get("422")
            if response and response.get("content", {}).get("application/json", {}).get("schema") == default:
                response.update(error_responses(422)[422])
    for name in DEFAULT_422:
        schemas.pop(name, None)


# --- OpenAPI 3.1 -> 3.0, for Swagger UI 4 ----------------------------------------------------------

def openapi_3_0(document: dict) -> dict:
    """The document as OpenAPI 3.0.3: the same paths, with 3.1's JSON Schema spelled the 3.0 way.

    Null types become `nullable`, a list of `examples` in a schema its first `example`, numeric
    exclusive bounds the boolean form, `const` a one-value `enum`.
    """
    out = _rewrite(document, schema=False)
    out["openapi"] = "3.0.3"
    return out


_SUBSCHEMA = {"items", "not", "additionalProperties", "contains", "propertyNames"}
_SUBSCHEMA_LISTS = {"anyOf", "oneOf", "allOf", "prefixItems"}
_SUBSCHEMA_MAPS = {"properties", "patternProperties", "$defs"}
_SCHEMA_MAPS = {"schemas"}  # components/schemas: a map of name to schema


def _rewrite(node: Any, schema: bool) -> Any:
    """Copy `node`, rewriting every schema in it; `schema` says whether `node` itself is one."""
    if isinstance(node, list):
        return [_rewrite(v, schema=False) for v in node]
    if not isinstance(node, dict):
        return node
    if not schema:
        return {k: (_schema_map(v) if k in _SCHEMA_MAPS and isinstance(v, dict) else
                    _rewrite(v, schema=k == "schema")) for k, v in node.items()}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _SUBSCHEMA and isinstance(value, dict):
            out[key] = _rewrite(value, schema=True)
        elif key in _SUBSCHEMA_LISTS:
            out[key] = [_rewrite(v, schema=True) for v in value]
        elif key in _SUBSCHEMA_MAPS:
            out[key] = _schema_map(value)
        elif key == "examples" and isinstance(value, list):
            if value:
                out["example"] = value[0]
        elif key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        else:
            out[key] = value
    return _nullable(out)


def _schema_map(schemas: dict) -> dict:
    return {name: _rewrite(s, schema=True) for name, s in schemas.items()}


def _nullable(schema: dict) -> dict:
    """`anyOf: [X, {type: null}]` as X with `nullable: true`."""
    branches = schema.get("anyOf")
    if not branches or {"type": "null"} not in branches:
        return schema
    rest = [b for b in branches if b != {"type": "null"}]
    out = {k: v for k, v in schema.items() if k != "anyOf"}
    if len(rest) == 1 and "$ref" not in rest[0]:
        out = {**rest[0], **out}
    elif len(rest) == 1:
        out["allOf"] = rest  # in 3.0 a $ref's siblings are ignored, so nullable needs a wrapper
    else:
        out["anyOf"] = rest
    out["nullable"] = True
    return out
