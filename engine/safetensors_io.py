"""Reading and writing .safetensors files, with or without the `safetensors` package.

The format is small and fixed (an 8-byte little-endian header length, a JSON header of
name -> dtype, shape and byte range, then the raw little-endian tensor bytes), so where the
package is missing (a bare GPU machine with only torch) the engine writes and reads it itself;
the tests check both directions against the package.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
_FROM_NAME = {name: dtype for dtype, name in _DTYPES.items()}


def save_file(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    try:
        from safetensors.torch import save_file as package_save
    except ImportError:
        _save(tensors, Path(path), metadata)
        return
    package_save(tensors, str(path), metadata=metadata)


def load_file(path: str | Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file as package_load
    except ImportError:
        return _load(Path(path))
    return package_load(str(path))


def _save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        if t.dtype not in _DTYPES:
            raise TypeError(f"{name}: dtype {t.dtype} has no safetensors name")
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header to 8-byte alignment
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for data in blobs:
            f.write(data)


def _load(path: Path) -> dict[str, torch.Tensor]:
    raw = path.read_bytes()
    if len(raw) < 8:
        raise ValueError(f"{path} is not a safetensors file (too short)")
    (size,) = struct.unpack("<Q", raw[:8])
    if 8 + size > len(raw):
        raise ValueError(f"{path} is not a safetensors file (header of {size} bytes past the end)")
    header = json.loads(raw[8:8 + size])
    header.pop("__metadata__", None)
    body = memoryview(raw)[8 + size:]
    tensors = {}
    for name, entry in header.items():
        start, end = entry["data_offsets"]
        dtype = _FROM_NAME[entry["dtype"]]
        flat = torch.frombuffer(bytearray(body[start:end]), dtype=torch.uint8) if end > start else torch.empty(0, dtype=torch.uint8)
        tensors[name] = flat.view(dtype).reshape(entry["shape"])
    return tensors
