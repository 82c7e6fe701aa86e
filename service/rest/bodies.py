"""REST request bodies: JSON, or multipart/form-data with image files, into one request schema.

Image endpoints take either body. Routes declare `body: Annotated[XRequest, Depends(body_of(XRequest))]`
and `openapi_extra=request_body_doc(XRequest)` so /docs shows both content types and the examples.
"""

from __future__ import annotations

from typing import TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from service.core.errors import BadInputError, UnsupportedMediaTypeError, bad_input_from
from service.http.bodies import media_type, read_json
from service.rest.schemas import ImagesRequest

Model = TypeVar("Model", bound=BaseModel)
MAX_FORM_FIELDS = 64


async def _read_form(request: Request, max_files: int) -> tuple[dict, list[bytes]]:
    """The form's fields, and the bytes of the files uploaded under `images`, in order."""
    try:
        form = await request.form(max_files=max_files, max_fields=MAX_FORM_FIELDS)
    except HTTPException as error:  # Starlette's report of a malformed multipart body
        raise BadInputError(f"body: expected multipart/form-data, got a malformed body ({error.detail})") from None
    data: dict[str, object] = {}
    files = []
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            if name != "images":
                raise BadInputError(f"{name}: expected image files under the form field 'images', got a file "
                                    f"under {name!r}")
            files.append(await value.read())
        elif name in data:
            previous = data[name]
            data[name] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            data[name] = value
    await form.close()
    return data, files


def body_of(schema: type[Model]):
    """A dependency parsing the request body into `schema` (422 naming the field when it does not fit)."""
    accepts_files = issubclass(schema, ImagesRequest)

    async def parse(request: Request) -> Model:
        media = media_type(request)
        files: list[bytes] = []
        if media in ("", "application/json") or media.endswith("+json"):
            data = await read_json(request)
        elif media == "multipart/form-data" and accepts_files:
            data, files = await _read_form(request, request.app.state.service.settings.max_images)
        else:
            accepted = "application/json" + (" or multipart/form-data" if accepts_files else "")
            hint = " (curl -d sends that; use curl --json, or -H 'content-type: application/json')" \
                if media == "application/x-www-form-urlencoded" else ""
            raise UnsupportedMediaTypeError(f"Content-Type: expected {accepted}, got {media}{hint}")
        if not isinstance(data, dict):
            raise BadInputError(f"body: expected a JSON object, got {type(data).__name__}")
        if files:  # uploads become images_png, so both are decoded, and named in errors, alike
            data["images_png"] = [""] * len(files)  # placeholders for validation; the bytes go in after it
        try:
            body = schema.model_validate(data)
        except ValidationError as error:
            raise bad_input_from(error) from None
        # The files' own bytes, not base64 of them (it would only be decoded again, 256 times a request):
        # `service.http.images.decode_base64_images` takes either.
        return body.model_copy(update={"images_png": files}) if files else body

    return parse


def request_body_doc(schema: type[BaseModel]) -> dict:
    """The OpenAPI requestBody for a route reading its body through `body_of(schema)`."""
    json_schema = schema.model_json_schema()
    examples = json_schema.pop("examples", [])
    content = {"application/json": {"schema": json_schema,
                                    "examples": {f"example {i + 1}": {"value": e} for i, e in enumerate(examples)}}}
    if issubclass(schema, ImagesRequest):
        fields = {k: v for k, v in json_schema["properties"].items() if k not in ("images", "images_png")}
        content["multipart/form-data"] = {"schema": {
            "type": "object",
            "properties": {"images": {"type": "array", "items": {"type": "string", "format": "binary"},
                                      "description": "image files (PNG, JPEG, ...), one per image"}, **fields},
            "required": ["images"],
        }}
    return {"requestBody": {"required": True, "content": content}}
