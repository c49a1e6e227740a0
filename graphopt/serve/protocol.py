"""The KServe v2 / Triton inference protocol (JSON): requests checked against a model's
signature, responses encoded.

A request is ``{"id"?, "inputs": [{"name", "shape", "datatype", "data"}], "outputs"?:
[{"name"}]}``; ``data`` is the tensor's elements in row-major order (flat or nested lists).
Everything in it comes from the network, so every field is checked before anything is
allocated: names (each model input exactly once), datatypes (the model's), shapes (the model's
fixed dims, one size per dynamic dim across inputs), element counts (against the shape, and
against the memory budget before conversion). Any violation is a ``BadRequest`` (HTTP 400)
naming the input and what was expected.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from graphopt.errors import GraphoptError

# graphopt dtype (DType.value) -> KServe v2 datatype, numpy dtype
DATATYPES = {
    "f32": ("FP32", np.float32), "f64": ("FP64", np.float64), "f16": ("FP16", np.float16),
    "i64": ("INT64", np.int64), "i32": ("INT32", np.int32), "i16": ("INT16", np.int16),
    "i8": ("INT8", np.int8), "u8": ("UINT8", np.uint8), "bool": ("BOOL", np.bool_),
}
MAX_ELEMENTS = 1 << 28  # per request input, before the memory budget is even asked


class BadRequest(GraphoptError):
    """A request the model cannot take (HTTP 400); the message says what to send instead."""


def datatype_of(dtype: str) -> str:
    return DATATYPES[dtype][0] if dtype in DATATYPES else dtype.upper()


def tensor_metadata(entries: list[dict]) -> list[dict]:
    """Manifest signature entries as v2 metadata (dynamic dims: -1)."""
    return [{"name": e["name"], "datatype": datatype_of(e["dtype"]),
             "shape": [d if isinstance(d, int) else -1 for d in e["shape"]]} for e in entries]


def parse_request(body: Any, inputs: list[dict]) -> tuple[list[np.ndarray], list[str] | None,
                                                             Any]:
    """(arrays in the model's input order, requested output names or None, request id)."""
    from graphopt.limits import check_bytes

    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        raise BadRequest('the body must be a JSON object with an "inputs" list')
    given: dict[str, dict] = {}
    for i, entry in enumerate(body["inputs"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise BadRequest(f'inputs[{i}] must be an object with a "name"')
        if entry["name"] in given:
            raise BadRequest(f"input {entry['name']!r} is given twice")
        given[entry["name"]] = entry
    expected = [e["name"] for e in inputs]
    unknown = sorted(set(given) - set(expected))
    missing = [n for n in expected if n not in given]
    if unknown or missing:
        raise BadRequest(f"the model takes inputs {expected}; missing {missing}, unknown "
                         f"{unknown}")
    sizes: dict[str, int] = {}  # dynamic dim symbol -> the size this request gives it
    arrays = []
    for spec in inputs:
        shape = _checked_shape(given[spec["name"]], spec, sizes)
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        dtype = DATATYPES.get(spec["dtype"], (None, None))[1]
        if dtype is None:
            raise BadRequest(f"input {spec['name']!r}: dtype {spec['dtype']} is not served")
        if count > MAX_ELEMENTS:
            raise BadRequest(f"input {spec['name']!r}: {count} elements, over the "
                             f"{MAX_ELEMENTS} a request may send")
        check_bytes(count * np.dtype(dtype).itemsize, f"request input {spec['name']!r}")
        arrays.append(_array(given[spec["name"]], spec, shape, count, dtype))
    return arrays, _requested_outputs(body), body.get("id")


def _checked_shape(entry: dict, spec: dict, sizes: dict[str, int]) -> tuple[int, ...]:
    name, shape = spec["name"], entry.get("shape")
    if entry.get("datatype") != datatype_of(spec["dtype"]):
        raise BadRequest(f"input {name!r}: datatype {entry.get('datatype')!r}, the model "
                         f"takes {datatype_of(spec['dtype'])}")
    if (not isinstance(shape, list) or len(shape) != len(spec["shape"])
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                       for d in shape)):
        raise BadRequest(f"input {name!r}: shape must be a list of {len(spec['shape'])} "
                         f"non-negative ints like {tensor_metadata([spec])[0]['shape']}, "
                         f"got {shape!r}")
    for axis, (got, want) in enumerate(zip(shape, spec["shape"])):
        if isinstance(want, int) and got != want:
            raise BadRequest(f"input {name!r}: dim {axis} is {got}, the model takes {want}")
        if isinstance(want, str) and sizes.setdefault(want, got) != got:
            raise BadRequest(f"input {name!r}: dim {axis} is {got} but another input gave "
                             f"the same dynamic dim {sizes[want]}")
        if isinstance(want, str) and got == 0:
            raise BadRequest(f"input {name!r}: dim {axis} is 0 (a dynamic dim must be >= 1)")
    return tuple(shape)


def _array(entry: dict, spec: dict, shape: tuple[int, ...], count: int, dtype) -> np.ndarray:
    data = entry.get("data")
    if not isinstance(data, list):
        raise BadRequest(f"input {spec['name']!r}: \"data\" must be a list of numbers")
    try:
        flat = np.asarray(data, dtype=object).reshape(-1) if _nested(data) else data
        if len(flat) != count:
            raise BadRequest(f"input {spec['name']!r}: {len(flat)} values for shape "
                             f"{list(shape)} ({count} elements)")
        if not all(isinstance(v, (int, float, bool)) for v in flat):
            raise BadRequest(f"input {spec['name']!r}: data holds non-numbers")
        return np.asarray(flat, dtype=dtype).reshape(shape)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise BadRequest(f"input {spec['name']!r}: data is not {datatype_of(spec['dtype'])} "
                         f"values in shape {list(shape)} ({exc})") from None


def _nested(data: list) -> bool:
    return bool(data) and isinstance(data[0], list)


def _requested_outputs(body: dict) -> list[str] | None:
    outputs = body.get("outputs")
    if outputs is None:
        return None
    if not isinstance(outputs, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs):
        raise BadRequest('"outputs" must be a list of {"name": ...}')
    return [o["name"] for o in outputs]


def encode_response(model: str, request_id: Any, outputs: list[np.ndarray],
                    specs: list[dict], wanted: list[str] | None) -> dict:
    names = [s["name"] for s in specs]
    if wanted is not None:
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            raise BadRequest(f"the model has outputs {names}; unknown {unknown}")
    out = []
    for array, spec in zip(outputs, specs):
        if wanted is None or spec["name"] in wanted:
            out.append({"name": spec["name"], "datatype": datatype_of(spec["dtype"]),
                        "shape": list(array.shape), "data": array.reshape(-1).tolist()})
    response = {"model_name": model, "model_version": "1", "outputs": out}
    if request_id is not None:
        response["id"] = request_id
    return response
