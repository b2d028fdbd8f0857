"""A fast, read-only view of a GGUF file: metadata, the tensor table, and tensor bytes.

`gguf.GGUFReader` builds numpy memmap views of every string in the file (about 2.5 s for a 49k
vocabulary and its merges, every time the file is opened); this reader walks the header with
`struct`, keeps only the metadata keys asked for, and maps tensor bytes lazily. It uses the
`gguf` package for its constants and its dequantisers only.
"""

from __future__ import annotations

import dataclasses
import mmap
import struct
from typing import Any

import gguf
import numpy as np

_T = gguf.GGUFValueType
_SCALAR_FORMAT = {
    _T.UINT8: "B", _T.INT8: "b", _T.UINT16: "H", _T.INT16: "h", _T.UINT32: "I", _T.INT32: "i",
    _T.FLOAT32: "f", _T.BOOL: "?", _T.UINT64: "Q", _T.INT64: "q", _T.FLOAT64: "d",
}  # fmt: skip
_SCALAR_DTYPE = {
    _T.UINT8: "u1", _T.INT8: "i1", _T.UINT16: "u2", _T.INT16: "i2", _T.UINT32: "u4", _T.INT32: "i4",
    _T.FLOAT32: "f4", _T.BOOL: "?", _T.UINT64: "u8", _T.INT64: "i8", _T.FLOAT64: "f8",
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class TensorInfo:
  name: str
  shape: tuple[int, ...]  # numpy order (rows first): the reverse of GGML's ne[]
  type: gguf.GGMLQuantizationType
  offset: int  # from the start of the file


class GGUFFile:
  """Metadata (the keys starting with `prefixes`; all when None) and tensors of a GGUF file."""

  def __init__(self, path: str, prefixes: tuple[str, ...] | None = None, tensors: bool = True):
    self.path = path
    with open(path, "rb") as f:
      self._blob = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    blob = self._blob
    if len(blob) < 24 or struct.unpack_from("<I", blob, 0)[0] != gguf.GGUF_MAGIC:
      raise ValueError(f"{path}: not a GGUF file (no GGUF magic bytes)")
    # As in gguf.GGUFReader: a version with an empty low half was written in the other byte order.
    self.order = "<" if struct.unpack_from("<I", blob, 4)[0] & 0xFFFF else ">"
    version, tensor_count, kv_count = struct.unpack_from(self.order + "IQQ", blob, 4)
    if version < 2:
      raise ValueError(f"{path}: GGUF v{version}; only v2 and later are supported")
    self._pos = 24
    try:
      self.metadata: dict[str, Any] = {}
      alignment = 32
      for _ in range(kv_count):
        key = self._string()
        (value_type,) = self._unpack("I")
        wanted = prefixes is None or key.startswith(prefixes) or key == "general.alignment"
        value = self._value(value_type, keep=wanted)
        if key == "general.alignment":
          alignment = int(value)
        if wanted:
          self.metadata[key] = value
      self.tensors: dict[str, TensorInfo] = {}
      if not tensors:
        return
      infos = []
      for _ in range(tensor_count):
        name = self._string()
        (n_dims,) = self._unpack("I")
        dims = self._unpack("Q" * n_dims)
        (ggml_type, offset) = self._unpack("IQ")
        infos.append((name, tuple(reversed(dims)), gguf.GGMLQuantizationType(ggml_type), offset))
      data_start = -(-self._pos // alignment) * alignment
      for name, shape, ggml_type, offset in infos:
        self.tensors[name] = TensorInfo(name, shape, ggml_type, data_start + offset)
    except (struct.error, UnicodeDecodeError, ValueError) as e:
      raise ValueError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from e

  def dequantize(self, name: str) -> np.ndarray:
    """A tensor as float32, in numpy order ([out, in] for a weight matrix)."""
    info = self.tensors[name]
    block, type_size = gguf.GGML_QUANT_SIZES[info.type]
    rows = int(np.prod(info.shape[:-1]))
    row_bytes = info.shape[-1] // block * type_size
    raw = np.frombuffer(self._blob, np.uint8, rows * row_bytes, info.offset)
    if info.type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
      dtype = np.dtype("f4" if info.type == gguf.GGMLQuantizationType.F32 else "f2")
      w = raw.view(dtype.newbyteorder(self.order))
    else:
      w = gguf.quants.dequantize(raw.reshape(rows, row_bytes), info.type)
    return np.asarray(w, np.float32).reshape(info.shape)

  # --- header walking ---

  def _unpack(self, fmt: str) -> tuple[Any, ...]:
    values = struct.unpack_from(self.order + fmt, self._blob, self._pos)
    self._pos += struct.calcsize(self.order + fmt)
    return values

  def _string(self) -> str:
    (length,) = self._unpack("Q")
    start, self._pos = self._pos, self._pos + length
    return self._blob[start : self._pos].decode("utf-8")

  def _value(self, value_type: int, keep: bool) -> Any:
    if value_type in _SCALAR_FORMAT:
      return self._unpack(_SCALAR_FORMAT[value_type])[0]
    if value_type == _T.STRING:
      return self._string()
    if value_type != _T.ARRAY:
      raise ValueError(f"unknown GGUF value type {value_type} at byte {self._pos}")
    element_type, count = self._unpack("IQ")
    if element_type in _SCALAR_DTYPE:
      dtype = np.dtype(_SCALAR_DTYPE[element_type]).newbyteorder(self.order)
      start, self._pos = self._pos, self._pos + count * dtype.itemsize
      return np.frombuffer(self._blob, dtype, count, start).tolist() if keep else None
    if element_type == _T.STRING:
      if keep:
        return [self._string() for _ in range(count)]
      q = self.order + "Q"
      for _ in range(count):  # skip without decoding
        self._pos += 8 + struct.unpack_from(q, self._blob, self._pos)[0]
      return None
    return [self._value(element_type, keep) for _ in range(count)]  # arrays of arrays
