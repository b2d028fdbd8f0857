"""Our GGUF reader against the gguf package's own reader."""

import gguf
import numpy as np
import pytest

from jerp_jax.model import presets
from jerp_jax.model.gguf_file import GGUFFile


@pytest.mark.parametrize("endianess", [gguf.GGUFEndian.LITTLE, gguf.GGUFEndian.BIG])
def test_metadata_and_tensors_agree_with_gguf_reader(tmp_path, endianess):
  path = str(tmp_path / "types.gguf")
  writer = gguf.GGUFWriter(path, "llama", endianess=endianess)
  writer.add_uint8("tokenizer.u8", 7)
  writer.add_int32("tokenizer.i32", -5)
  writer.add_uint64("tokenizer.u64", 2**40)
  writer.add_float32("tokenizer.f32", 0.1)
  writer.add_float64("tokenizer.f64", -2.5)
  writer.add_bool("tokenizer.flag", True)
  writer.add_string("tokenizer.text", "h\u00e9llo \U0001f600")
  writer.add_array("tokenizer.strings", ["a", "", "\u00e9\u00e9", "\u4f60\u597d"])
  writer.add_array("tokenizer.ints", [1, -2, 3])
  writer.add_array("tokenizer.floats", [0.5, -1.25])
  writer.add_array("tokenizer.bools", [True, False])
  writer.add_array("other.strings", ["skipped"])
  matrix = np.arange(24, dtype=np.float32).reshape(4, 6) / 7
  writer.add_tensor("dummy", np.zeros(4, dtype=np.float32))
  writer.add_tensor("matrix", matrix)
  writer.add_tensor("half", matrix.astype(np.float16))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()

  ours = GGUFFile(path, prefixes=("tokenizer.", "general.architecture"))
  theirs = {key: field.contents() for key, field in gguf.GGUFReader(path).fields.items()}
  assert "other.strings" not in ours.metadata
  assert ours.metadata["general.architecture"] == "llama"
  for key, value in ours.metadata.items():
    assert value == theirs[key], key
  assert set(ours.metadata) == (
    {k for k in theirs if k.startswith("tokenizer.")} | {"general.architecture"}
  )
  np.testing.assert_array_equal(ours.dequantize("matrix"), matrix)
  np.testing.assert_array_equal(
    ours.dequantize("half"), matrix.astype(np.float16).astype(np.float32)
  )
  assert ours.tensors["matrix"].shape == (4, 6)


def test_quantized_tensors_of_the_embedded_model_agree_with_gguf_reader():
  path = presets.embedded_path("smollm2-135m-instruct")
  ours = GGUFFile(path, prefixes=("general.",))
  reader = gguf.GGUFReader(path)
  seen = set()
  for t in reader.tensors:
    if t.tensor_type in seen and not t.name.startswith("blk.0."):
      continue
    seen.add(t.tensor_type)
    want = gguf.quants.dequantize(t.data, t.tensor_type)
    np.testing.assert_array_equal(ours.dequantize(t.name), want, err_msg=t.name)
  assert {s.name for s in seen} == {"F32", "Q4_1", "Q8_0"}
  assert len(ours.tensors) == len(reader.tensors) == 272


def test_not_a_gguf_file(tmp_path):
  path = tmp_path / "x.gguf"
  path.write_bytes(b"not a gguf file at all, really")
  with pytest.raises(ValueError, match="x.gguf: not a GGUF file"):
    GGUFFile(str(path))
  path.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 16)
  with pytest.raises(ValueError, match="x.gguf: not a readable GGUF file"):
    GGUFFile(str(path))
