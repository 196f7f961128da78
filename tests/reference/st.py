"""Minimal safetensors reader/writer (numpy only), written from spec §7.

File layout: 8-byte little-endian header length N, N bytes of UTF-8 JSON
``{name: {dtype, shape, data_offsets: [b, e]}, "__metadata__": {str: str}}``, then the data
(offsets are relative to the start of the data section).

``load(path)`` returns ``{name: np.ndarray}``: F32/F16/BF16 as float32, F64 as float64.
``save(path, tensors)`` writes F32 by default (F16, BF16 and F64 on request; BF16 rounds
to nearest even).
"""
import json
import struct

import numpy as np

_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
_MAX_HEADER = 100 * 1024 * 1024


class SafetensorsError(ValueError):
    pass


def _no_dup_pairs(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise SafetensorsError(f"duplicate key {k!r} in header")
        out[k] = v
    return out


def bf16_bits_to_f32(bits):
    """uint16 array of bf16 bit patterns -> float32 (bf16 = upper 16 bits of f32)."""
    bits = np.asarray(bits, dtype=np.uint16)
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def f32_to_bf16_bits(x):
    """float32 -> uint16 bf16 bit patterns, round to nearest, ties to even; NaN stays NaN."""
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    u = x.view(np.uint32).astype(np.uint64)
    lsb = (u >> np.uint64(16)) & np.uint64(1)
    r = ((u + np.uint64(0x7FFF) + lsb) >> np.uint64(16)).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        sign = ((u >> np.uint64(16)) & np.uint64(0x8000)).astype(np.uint16)
        r = np.where(nan, sign | np.uint16(0x7FC0), r).astype(np.uint16)
    return r


def read_header(path):
    """Returns (header dict without __metadata__, metadata dict, data start offset, file size)."""
    with open(path, "rb") as f:
        raw = f.read(8)
        f.seek(0, 2)
        size = f.tell()
        if len(raw) < 8:
            raise SafetensorsError("file shorter than 8 bytes")
        (n,) = struct.unpack("<Q", raw)
        if n > _MAX_HEADER or 8 + n > size:
            raise SafetensorsError(f"header length {n} too large for file of {size} bytes")
        f.seek(8)
        hdr_bytes = f.read(n)
    try:
        hdr = json.loads(hdr_bytes.decode("utf-8"), object_pairs_hook=_no_dup_pairs)
    except SafetensorsError:
        raise
    except Exception as e:  # noqa: BLE001
        raise SafetensorsError(f"bad header JSON: {e}") from e
    if not isinstance(hdr, dict):
        raise SafetensorsError("header is not a JSON object")
    meta = hdr.pop("__metadata__", None) or {}
    data_start = 8 + n
    data_len = size - data_start
    spans = []
    for name, info in hdr.items():
        dt = info.get("dtype")
        if dt not in _SIZES:
            raise SafetensorsError(f"{name}: unsupported dtype {dt!r}")
        shape = info.get("shape")
        b, e = info.get("data_offsets")
        if not (0 <= b <= e <= data_len):
            raise SafetensorsError(f"{name}: offsets {b},{e} outside data of {data_len} bytes")
        count = int(np.prod(shape, dtype=np.int64)) if len(shape) else 1
        if count * _SIZES[dt] != e - b:
            raise SafetensorsError(f"{name}: shape {shape} x {dt} != {e - b} bytes")
        spans.append((b, e, name))
    spans.sort()
    pos = 0
    for b, e, name in spans:
        if b != pos:
            raise SafetensorsError(f"{name}: gap or overlap at data offset {b} (expected {pos})")
        pos = e
    if pos != data_len:
        raise SafetensorsError(f"data ends at {pos}, file data is {data_len} bytes")
    return hdr, meta, data_start, size


def load(path, with_metadata=False):
    hdr, meta, data_start, _ = read_header(path)
    with open(path, "rb") as f:
        f.seek(data_start)
        data = f.read()
    out = {}
    for name, info in hdr.items():
        b, e = info["data_offsets"]
        shape = tuple(info["shape"])
        buf = data[b:e]
        dt = info["dtype"]
        if dt == "F32":
            a = np.frombuffer(buf, dtype="<f4").astype(np.float32)
        elif dt == "F64":
            a = np.frombuffer(buf, dtype="<f8").astype(np.float64)
        elif dt == "F16":
            a = np.frombuffer(buf, dtype="<f2").astype(np.float32)
        elif dt == "BF16":
            a = bf16_bits_to_f32(np.frombuffer(buf, dtype="<u2"))
        else:  # pragma: no cover - rejected in read_header
            raise SafetensorsError(dt)
        out[name] = a.reshape(shape)
    return (out, meta) if with_metadata else out


def save(path, tensors, dtype="F32", metadata=None):
    """Write ``{name: array}``; ``dtype`` is one of F32/F16/BF16/F64 or a {name: dtype} dict."""
    header = {}
    blobs = []
    off = 0
    for name in sorted(tensors):
        a = np.asarray(tensors[name])
        dt = dtype[name] if isinstance(dtype, dict) else dtype
        if dt == "F32":
            raw = np.ascontiguousarray(a, dtype="<f4").tobytes()
        elif dt == "F64":
            raw = np.ascontiguousarray(a, dtype="<f8").tobytes()
        elif dt == "F16":
            raw = np.ascontiguousarray(a, dtype="<f2").tobytes()
        elif dt == "BF16":
            raw = f32_to_bf16_bits(a).astype("<u2").tobytes()
        else:
            raise SafetensorsError(f"cannot write dtype {dt!r}")
        header[name] = {"dtype": dt, "shape": [int(s) for s in a.shape],
                        "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * ((-len(hb)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for raw in blobs:
            f.write(raw)
