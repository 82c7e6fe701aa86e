"""OIP tensors to and from numpy: datatypes, JSON and binary tensor data, gzip bodies.

The binary tensor data extension (what `tritonclient` sends by default) puts raw little-endian
tensors after a JSON header of `Inference-Header-Content-Length` bytes.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
from fastapi import Request, Response
from pydantic import ValidationError
from pydantic_core import to_json

from service.core.errors import BadInputError, PayloadTooLargeError, UnsupportedError, bad_input_from, plural
from service.http.bodies import parse_json
from service.http.images import as_number_array
from service.oip.types import InferRequest, InputTensor

DTYPES: dict[str, np.dtype] = {name: np.dtype(t) for name, t in {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64}.items()}
OIP_NAMES = {dtype: name for name, dtype in DTYPES.items()}
FLOATS = ("FP16", "FP32", "FP64")
INTEGERS = ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")
PER_REQUEST_OUTPUTS = {"threshold"}  # one value per request, not per row
# Request parameters of the protocol or of Triton's client that mean nothing here and are ignored.
IGNORED_PARAMETERS = {"binary_data_output", "sequence_id", "sequence_start", "sequence_end", "priority", "timeout"}


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise BadInputError(f"Content-Encoding: expected gzip, deflate or none, got {encoding!r}")
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as error:
        raise BadInputError(f"body: expected {encoding} data, got undecodable bytes ({error})") from None
    if len(out) > limit:
        raise PayloadTooLargeError(f"body: expected at most {limit} bytes once decompressed (VAE_MAX_BODY_BYTES)")
    return out


async def read_infer_request(request: Request, limit: int) -> tuple[InferRequest, memoryview]:
    body = _decompress(await request.body(), request.headers.get("content-encoding", "").lower(), limit)
    header = request.headers.get("inference-header-content-length")
    if header is not None:
        try:
            size = int(header)
        except ValueError:
            raise BadInputError(f"Inference-Header-Content-Length: expected an integer, got {header!r}") from None
        if not 0 <= size <= len(body):
            raise BadInputError(f"Inference-Header-Content-Length: expected at most the body's {plural(len(body), 'byte')}, got {size}")
        head, binary = body[:size], memoryview(body)[size:]
    else:
        head, binary = body, memoryview(b"")
    data = parse_json(head, "an OIP inference request in JSON")
    try:
        return InferRequest.model_validate(data), binary
    except ValidationError as error:
        raise bad_input_from(error) from None


def tensor_array(tensor: InputTensor, binary: memoryview, offset: int) -> tuple[np.ndarray, int]:
    """The tensor as a numpy array of its shape, and the offset of the next binary tensor."""
    field = f"inputs.{tensor.name}"
    dtype = DTYPES.get(tensor.datatype)
    if dtype is None:
        raise BadInputError(f"{field}.datatype: expected one of {sorted(DTYPES)}, got {tensor.datatype!r}")
    if any(d < 0 for d in tensor.shape):
        raise BadInputError(f"{field}.shape: expected non-negative sizes, got {tensor.shape}")
    count = math.prod(tensor.shape)
    if "shared_memory_region" in tensor.parameters:
        raise UnsupportedError(f"{field}: the shared-memory extension is not supported; send the data")
    size = tensor.parameters.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size != count * dtype.itemsize:
            expected = plural(count * dtype.itemsize, "byte")
            raise BadInputError(f"{field}.parameters.binary_data_size: expected {expected} for shape {tensor.shape} "
                                f"of {tensor.datatype}, got {size!r}")
        if offset + size > len(binary):
            raise BadInputError(f"{field}: expected {plural(size, 'byte')} of binary data, but the body holds "
                                f"{len(binary) - offset} after the JSON header")
        array = np.frombuffer(binary[offset:offset + size], dtype=dtype.newbyteorder("<")).reshape(tensor.shape)
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise BadInputError(f"{field}: expected finite numbers, got NaN or infinity")
        return array, offset + size
    if tensor.data is None:
        raise BadInputError(f"{field}.data: expected the tensor's values (or binary data), got none")
    values = tensor.data if isinstance(tensor.data, list) else [tensor.data]
    if tensor.datatype == "BOOL":
        try:
            array = np.asarray(values, dtype=np.bool_)
        except (ValueError, TypeError):
            raise BadInputError(f"{field}.data: expected a flat or regularly nested list of booleans") from None
    elif tensor.datatype in INTEGERS:
        array = _integer_array(values, dtype, f"{field}.data")
    else:
        array = as_number_array(values, f"{field}.data").astype(dtype)
    if array.size != count:
        raise BadInputError(f"{field}: expected {plural(count, 'value')} for shape {tensor.shape}, got {array.size}")
    return array.reshape(tensor.shape), offset


def _integer_array(values: list, dtype: np.dtype, field: str) -> np.ndarray:
    """Integers parsed exactly (not through float32) and checked against the datatype's range."""
    try:
        array = np.asarray(values)
    except (ValueError, TypeError):
        raise BadInputError(f"{field}: expected a flat or regularly nested list of integers") from None
    if array.dtype.kind == "f" and array.size and np.all(np.isfinite(array)) and np.all(array == np.round(array)):
        array = array.astype(np.int64) if np.all(np.abs(array) < 2**62) else array
    if array.size and array.dtype.kind not in "iu":
        raise BadInputError(f"{field}: expected integers, got {array.dtype.name} values")
    info = np.iinfo(dtype)
    if array.size and (array.min() < info.min or array.max() > info.max):
        raise BadInputError(f"{field}: expected integers in [{info.min}, {info.max}] for {dtype.name}, "
                            f"got values in [{array.min()}, {array.max()}]")
    return array.astype(dtype)


def flag(value, field: str) -> bool:
    """A JSON boolean parameter; strings such as "false" are refused rather than read as true."""
    if not isinstance(value, bool):
        raise BadInputError(f"{field}: expected true or false, got {value!r}")
    return value


def encode_response(model: str, request: InferRequest, outputs: dict[str, np.ndarray], version: str) -> Response:
    """The InferResponse of `version` of `model` (JSON, or a JSON header and binary tensors)."""
    default_binary = flag(request.parameters.get("binary_data_output", False), "parameters.binary_data_output")
    if request.outputs:
        wanted = []
        for out in request.outputs:
            if out.name not in outputs:
                raise BadInputError(f"outputs: {model} has outputs {sorted(outputs)}, got a request for {out.name!r}")
            if "classification" in out.parameters:
                raise UnsupportedError(f"outputs.{out.name}: the classification extension is not supported")
            wanted.append((out.name, flag(out.parameters.get("binary_data", default_binary),
                                           f"outputs.{out.name}.parameters.binary_data")))
    else:
        wanted = [(name, default_binary) for name in outputs]
    tensors, buffers = [], []
    for name, binary in wanted:
        array = np.ascontiguousarray(outputs[name])
        tensor = {"name": name, "datatype": OIP_NAMES[array.dtype], "shape": list(array.shape)}
        if binary:
            raw = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            buffers.append(raw)
        else:
            tensor["data"] = array.reshape(-1).tolist()
        tensors.append(tensor)
    body = {"model_name": model, "model_version": version, "outputs": tensors}
    if request.id is not None:
        body["id"] = request.id
    head = to_json(body)  # pydantic-core's encoder: several times faster than json.dumps on big outputs
    if not buffers:
        return Response(head, media_type="application/json")
    return Response(head + b"".join(buffers), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(head))})
