"""The bytes on the wire: a small self-describing codec and the message envelope.

Every protocol message is encoded to bytes before it travels (in-process or inside a Flower
message), so byte counts are real and a tampered or truncated message is caught by the decoder.
The envelope names the session, the round, the sender and the recipient; a receiver refuses a
message whose envelope does not match what it expects (a replay from another round, a message
addressed to another client, a message from another session).
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from secure_agg.errors import SecAggError

SERVER = "server"

_NONE, _FALSE, _TRUE, _INT, _BYTES, _STR, _LIST, _DICT, _ARRAY = range(9)
_DTYPES = {"u4": np.dtype("<u4"), "u8": np.dtype("<u8"), "i8": np.dtype("<i8"), "f8": np.dtype("<f8")}


def _len(n: int) -> bytes:
    return struct.pack("<I", n)


def _encode(obj: Any, out: list[Any]) -> None:
    # Parts are collected and joined once, so a large array is copied a single time.
    if obj is None:
        out.append(bytes((_NONE,)))
    elif obj is True or obj is False:
        out.append(bytes((_TRUE if obj else _FALSE,)))
    elif isinstance(obj, (int, np.integer)):
        value = int(obj)
        raw = value.to_bytes((value.bit_length() + 8) // 8 or 1, "little", signed=True)
        out.append(bytes((_INT, len(raw))) + raw)
    elif isinstance(obj, (bytes, bytearray)):
        out.append(bytes((_BYTES,)) + _len(len(obj)))
        out.append(obj)
    elif isinstance(obj, str):
        raw = obj.encode()
        out.append(bytes((_STR,)) + _len(len(raw)) + raw)
    elif isinstance(obj, (list, tuple)):
        out.append(bytes((_LIST,)) + _len(len(obj)))
        for item in obj:
            _encode(item, out)
    elif isinstance(obj, dict):
        out.append(bytes((_DICT,)) + _len(len(obj)))
        for key, value in obj.items():
            _encode(key, out)
            _encode(value, out)
    elif isinstance(obj, np.ndarray):
        code = obj.dtype.newbyteorder("<").str[1:]
        if code not in _DTYPES or obj.ndim != 1:
            raise SecAggError(f"only 1-D arrays of {sorted(_DTYPES)} travel on the wire, got {obj.dtype} ndim {obj.ndim}")
        arr = np.ascontiguousarray(obj, dtype=_DTYPES[code])
        out.append(bytes((_ARRAY,)) + code.encode() + _len(arr.nbytes))
        out.append(memoryview(arr).cast("B"))
    else:
        raise SecAggError(f"cannot encode a {type(obj).__name__} on the wire")


def encode(obj: Any) -> bytes:
    """Encodes None, bool, int, bytes, str, list, dict and 1-D numeric arrays to bytes."""
    out: list[Any] = []
    _encode(obj, out)
    return b"".join(out)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.data):
            raise SecAggError("malformed message: truncated")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def length(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def value(self, depth: int = 0) -> Any:
        if depth > 16:
            raise SecAggError("malformed message: nested too deeply")
        tag = self.take(1)[0]
        if tag == _NONE:
            return None
        if tag in (_FALSE, _TRUE):
            return tag == _TRUE
        if tag == _INT:
            return int.from_bytes(self.take(self.take(1)[0]), "little", signed=True)
        if tag == _BYTES:
            return bytes(self.take(self.length()))
        if tag == _STR:
            return bytes(self.take(self.length())).decode()
        if tag == _LIST:
            return [self.value(depth + 1) for _ in range(self.length())]
        if tag == _DICT:
            result = {}
            for _ in range(self.length()):
                key = self.value(depth + 1)
                result[key] = self.value(depth + 1)
            return result
        if tag == _ARRAY:
            code = bytes(self.take(2)).decode(errors="replace")
            if code not in _DTYPES:
                raise SecAggError(f"malformed message: unknown array dtype {code!r}")
            raw = self.take(self.length())
            if len(raw) % _DTYPES[code].itemsize:
                raise SecAggError("malformed message: array bytes not a multiple of the item size")
            return np.frombuffer(raw, dtype=_DTYPES[code]).copy()
        raise SecAggError(f"malformed message: unknown tag {tag}")


def decode(data: bytes) -> Any:
    """Decodes what :func:`encode` wrote; raises SecAggError on anything malformed."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SecAggError(f"a message must be bytes, got {type(data).__name__}")
    reader = _Reader(data if isinstance(data, bytes) else bytes(data))
    value = reader.value()
    if reader.pos != len(reader.data):
        raise SecAggError("malformed message: trailing bytes")
    return value


def seal(session: bytes, round_name: str, sender: Any, recipient: Any, **payload: Any) -> bytes:
    """Encodes one protocol message with its envelope."""
    return encode({"session": session, "round": round_name, "sender": sender, "recipient": recipient, **payload})


def open_message(data: bytes, *, session: bytes | None, round_name: str, recipient: Any,
                 sender: Any = None) -> dict[str, Any]:
    """Decodes a message and checks its envelope.

    Args:
        data: The encoded message.
        session: The expected session id (``None`` accepts any, only for the first request).
        round_name: The round the receiver is in.
        recipient: Who is reading (a client id or :data:`SERVER`).
        sender: The expected sender, or ``None`` to accept any.

    Raises:
        SecAggError: The message is malformed, from another session or round, or addressed
            to someone else.
    """
    msg = decode(data)
    if not isinstance(msg, dict) or not {"session", "round", "sender", "recipient"} <= msg.keys():
        raise SecAggError("malformed message: missing envelope")
    if session is not None and msg["session"] != session:
        raise SecAggError("message rejected: it belongs to another session")
    if msg["round"] != round_name:
        raise SecAggError(f"message rejected: it is for round {msg['round']!r} but this party is in round {round_name!r}")
    if msg["recipient"] != recipient:
        raise SecAggError(f"message rejected: addressed to {msg['recipient']!r}, not to {recipient!r}")
    if sender is not None and msg["sender"] != sender:
        raise SecAggError(f"message rejected: claims sender {msg['sender']!r}, expected {sender!r}")
    return msg


def pack_blobs(blobs: dict[int, bytes]) -> dict[str, Any]:
    """Packs many byte strings keyed by client id into three fields (fast to encode and route)."""
    ids = np.fromiter(blobs.keys(), dtype=np.int64, count=len(blobs))
    sizes = np.fromiter((len(b) for b in blobs.values()), dtype=np.int64, count=len(blobs))
    return {"ids": ids, "sizes": sizes, "data": b"".join(blobs.values())}


def unpack_blobs(packed: Any) -> dict[int, bytes]:
    """Inverse of :func:`pack_blobs`; raises SecAggError when the fields disagree."""
    if not isinstance(packed, dict) or not {"ids", "sizes", "data"} <= packed.keys():
        raise SecAggError("malformed message: packed blobs lack ids, sizes or data")
    ids, sizes, data = packed["ids"], packed["sizes"], packed["data"]
    if not isinstance(ids, np.ndarray) or not isinstance(sizes, np.ndarray) or not isinstance(data, bytes) \
            or ids.shape != sizes.shape or np.any(sizes < 0) or int(sizes.sum()) != len(data) \
            or len(np.unique(ids)) != len(ids):
        raise SecAggError("malformed message: packed blobs are inconsistent")
    ends = np.cumsum(sizes).tolist()
    starts = [0, *ends][: len(ends)]
    return {int(i): data[s:e] for i, s, e in zip(ids.tolist(), starts, ends, strict=True)}


def pack_roster(entries: dict[int, tuple[int, bytes, bytes]]) -> dict[str, Any]:
    """Packs ``{id: (shamir_x, c_pk, s_pk)}`` into arrays and two byte strings."""
    ids = sorted(entries)
    return {"ids": np.array(ids, dtype=np.int64), "xs": np.array([entries[u][0] for u in ids], dtype=np.int64),
            "c_pk": b"".join(entries[u][1] for u in ids), "s_pk": b"".join(entries[u][2] for u in ids)}


def unpack_roster(packed: Any, key_bytes: int = 32) -> dict[int, tuple[int, bytes, bytes]]:
    """Inverse of :func:`pack_roster`; raises SecAggError when the fields disagree."""
    if not isinstance(packed, dict) or not {"ids", "xs", "c_pk", "s_pk"} <= packed.keys():
        raise SecAggError("malformed message: roster lacks ids, xs or keys")
    ids, xs, c_pk, s_pk = packed["ids"], packed["xs"], packed["c_pk"], packed["s_pk"]
    n = len(ids) if isinstance(ids, np.ndarray) else -1
    if n < 0 or not isinstance(xs, np.ndarray) or len(xs) != n or not isinstance(c_pk, bytes) \
            or not isinstance(s_pk, bytes) or len(c_pk) != n * key_bytes or len(s_pk) != n * key_bytes:
        raise SecAggError("malformed message: roster fields disagree in length")
    return {int(u): (int(x), c_pk[i * key_bytes:(i + 1) * key_bytes], s_pk[i * key_bytes:(i + 1) * key_bytes])
            for i, (u, x) in enumerate(zip(ids.tolist(), xs.tolist(), strict=True))}
