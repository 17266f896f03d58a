"""Checkpoints that hold data, never code: JSON for structure, arrays in an ``.npz`` beside it.

A checkpoint is one ``.npz`` file (a zip of ``.npy`` arrays) read with
``numpy.load(allow_pickle=False)``, so loading one can never run code, unlike a pickle.
Member ``__json__`` holds the structure as UTF-8 JSON; every numpy array, numpy scalar and
torch tensor in the state is stored as its own member and referenced from the JSON.

What round-trips exactly: ``None``, ``bool``, ``int`` (any size), ``float`` (NaN and inf
included), ``str``, ``list``, ``tuple``, ``set``, ``dict`` (any keys of these types), numpy
arrays and scalars of any non-object dtype, and torch tensors of any dtype (on the CPU, without
autograd history). Anything else (a dataclass, a model object) is refused with the path of
the offending value: turn it into plain data first (``dataclasses.asdict``,
``module.state_dict()``).
"""

from __future__ import annotations

import io
import json
import math
from typing import Any

import numpy as np

FORMAT = "agora-checkpoint-1"
_MARK = "__"  # keys of the JSON objects that stand for a non-JSON value start with this

# Torch dtypes numpy has no type for: stored as raw bits of an integer of the same width.
_BITS_VIEW = {"bfloat16": "int16", "float8_e4m3fn": "int8", "float8_e5m2": "int8"}


class CheckpointFormatError(ValueError):
    """The bytes are not a checkpoint of this format, or the state holds something it cannot store."""


def dumps(document: dict[str, Any]) -> bytes:
    """Encodes ``document`` (a dict of plain data, arrays and tensors) as checkpoint bytes.

    Raises:
        CheckpointFormatError: naming the path of a value that is not plain data.
    """
    arrays: dict[str, np.ndarray] = {}
    tree = _encode(document, arrays, "")
    text = json.dumps({"format": FORMAT, "document": tree}, allow_nan=True, separators=(",", ":"))
    buf = io.BytesIO()
    np.savez(buf, __json__=np.frombuffer(text.encode(), dtype=np.uint8), **arrays)
    return buf.getvalue()


def loads(data: bytes) -> dict[str, Any]:
    """Decodes checkpoint bytes written by :func:`dumps`.

    Raises:
        CheckpointFormatError: for anything else (a pickle, a torn file, a foreign ``.npz``).
    """
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            names = set(npz.files)
            if "__json__" not in names:
                raise CheckpointFormatError("it has no __json__ member")
            meta = json.loads(npz["__json__"].tobytes().decode())
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise CheckpointFormatError(f"its format is not {FORMAT!r}")
            arrays = {name: npz[name] for name in names - {"__json__"}}
    except CheckpointFormatError:
        raise
    except Exception as exc:  # noqa: BLE001 -- zip, npy, JSON and pickle refusals all mean "not ours"
        raise CheckpointFormatError(f"{type(exc).__name__}: {exc}".splitlines()[0][:200]) from None
    out = _decode(meta.get("document"), arrays)
    if not isinstance(out, dict):
        raise CheckpointFormatError("its document is not a mapping")
    return out


def _encode(value: Any, arrays: dict[str, np.ndarray], path: str) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.generic):  # before int/float: np.float64 is a float subclass
        return {"__npscalar__": _put(arrays, np.asarray(value), path)}
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else {"__float__": repr(float(value))}
    if isinstance(value, np.ndarray):
        return {"__ndarray__": _put(arrays, value, path)}
    if _is_tensor(value):
        return _encode_tensor(value, arrays, path)
    if isinstance(value, list):
        return [_encode(v, arrays, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, arrays, f"{path}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, (set, frozenset)):
        items = sorted(value, key=repr)
        return {"__set__": [_encode(v, arrays, f"{path}{{{i}}}") for i, v in enumerate(items)]}
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith(_MARK) for k in value):
            return {k: _encode(v, arrays, f"{path}.{k}" if path else k) for k, v in value.items()}
        return {"__dict__": [[_encode(k, arrays, f"{path}<key>"), _encode(v, arrays, f"{path}[{k!r}]")]
                             for k, v in value.items()]}
    where = f" at {path!r}" if path else ""
    raise CheckpointFormatError(
        f"checkpoint state{where} is a {type(value).__module__}.{type(value).__qualname__}; checkpoints hold "
        "plain data (dict, list, tuple, str, int, float, bool, None, numpy arrays, torch tensors)")


def _put(arrays: dict[str, np.ndarray], array: np.ndarray, path: str) -> str:
    if array.dtype.hasobject:
        raise CheckpointFormatError(f"checkpoint state at {path!r} is an object array; store numbers or strings")
    name = f"a{len(arrays)}"
    arrays[name] = array
    return name


def _is_tensor(value: Any) -> bool:
    # No torch import here: a run without torch must not pay for it.
    return type(value).__module__.startswith("torch") and hasattr(value, "detach") and hasattr(value, "dtype")


def _encode_tensor(value: Any, arrays: dict[str, np.ndarray], path: str) -> dict[str, Any]:
    import torch

    t = value.detach().cpu()
    dtype = str(t.dtype).removeprefix("torch.")
    if dtype in _BITS_VIEW:
        t = t.view(getattr(torch, _BITS_VIEW[dtype]))
    return {"__tensor__": _put(arrays, t.contiguous().numpy(), path), "dtype": dtype}


def _decode(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(value, list):
        return [_decode(v, arrays) for v in value]
    if not isinstance(value, dict):
        return value
    marks = [k for k in value if k.startswith(_MARK)]
    if marks:
        if len(marks) != 1:
            raise CheckpointFormatError(f"an object holds several markers {marks}")
        mark = marks[0]
        body = value[mark]
        if mark == "__float__":
            return float(body)
        if mark == "__tuple__":
            return tuple(_decode(v, arrays) for v in body)
        if mark == "__set__":
            return {_decode(v, arrays) for v in body}
        if mark == "__dict__":
            return {_decode(k, arrays): _decode(v, arrays) for k, v in body}
        if mark in ("__ndarray__", "__npscalar__", "__tensor__"):
            if body not in arrays:
                raise CheckpointFormatError(f"array {body!r} is missing")
            array = arrays[body]
            if mark == "__ndarray__":
                return array
            if mark == "__npscalar__":
                return array[()]
            return _decode_tensor(array, str(value.get("dtype")))
        raise CheckpointFormatError(f"unknown marker {mark!r}")
    return {k: _decode(v, arrays) for k, v in value.items()}


def _decode_tensor(array: np.ndarray, dtype: str) -> Any:
    import torch

    if not hasattr(torch, dtype) or not isinstance(getattr(torch, dtype), torch.dtype):
        raise CheckpointFormatError(f"unknown tensor dtype {dtype!r}")
    t = torch.from_numpy(np.array(array))  # a writable copy: the npz buffer is read-only
    return t.view(getattr(torch, dtype)) if dtype in _BITS_VIEW else t
