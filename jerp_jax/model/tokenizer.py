"""Tokenizers for jerp_jax: load one from a Hugging Face folder or from a GGUF file's metadata.

This module owns turning text (and chat messages) into token ids and back, and knowing which ids
end generation (`eos_ids`), pad, and begin a sequence. It never imports torch, directly or through
transformers:

* an HF folder (tokenizer.json / tokenizer_config.json, ...) is loaded with
  `transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)`;
* a `.gguf` file's `tokenizer.*` metadata (read with `jerp_jax.model.gguf_file`, which skips the
  tensors and is ~50x faster than `gguf.GGUFReader` on a 49k vocabulary) is put into the dict
  that `transformers.integrations.gguf.gguf_tokenizer_mapping.convert_gguf_tokenizer` (torch-free)
  turns into a `tokenizers` backend, and that is wrapped in a `PreTrainedTokenizerFast` with the
  file's special tokens, add-BOS/EOS flags and chat template. transformers' own
  `AutoTokenizer.from_pretrained(..., gguf_file=...)` is not used because its GGUF reader imports
  torch. `tests/fixtures/tokenizer_reference.json` pins our result to that path's output.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

import gguf
import numpy as np
import transformers

from jerp_jax.model.gguf_file import GGUFFile

__all__ = ["Tokenizer", "load_tokenizer"]

# Files any one of which makes a folder a Hugging Face tokenizer folder.
_HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")

# Tokens that close a chat turn. Added to `eos_ids` when the chat template writes them and the
# vocabulary has them, since a model stops its reply with those, not always with its `eos_token`.
_TURN_END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")


class NoChatTemplate(ValueError):
  """A chat prompt asked of a tokenizer without a chat template (a base model's)."""


@dataclasses.dataclass(frozen=True)
class Tokenizer:
  """A loaded tokenizer and the ids generation needs.

  hf: the underlying fast tokenizer.
  eos_ids: every id that ends generation (the tokenizer's eos, then any from generation_config.json,
      then end-of-turn tokens the chat template writes, e.g. `<|im_end|>`), without repeats.
  pad_id: the pad id; the first eos id when the tokenizer has no pad token.
  bos_id: the bos id, or None.
  source: the folder or .gguf file this was loaded from.
  enable_thinking: passed to the chat template, for templates that switch reasoning on it
      (Qwen3: False writes an empty <think></think> block after the generation prompt); None:
      not passed, the template's own default.
  """

  hf: transformers.PreTrainedTokenizerBase
  eos_ids: tuple[int, ...]
  pad_id: int
  bos_id: int | None
  source: str
  enable_thinking: bool | None = None

  def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
    """Token ids of `text`. With `add_special_tokens`, BOS/EOS are added as the tokenizer's flags say."""
    return list(self.hf.encode(text, add_special_tokens=add_special_tokens))

  def decode(self, ids: Iterable[int] | np.ndarray, skip_special_tokens: bool = False) -> str:
    """Text of `ids` (a list, tuple, or numpy/JAX integer array)."""
    if hasattr(ids, "tolist"):
      ids = ids.tolist()
    return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  def require_chat_template(self) -> None:
    """Raises NoChatTemplate unless the tokenizer can render chat messages."""
    if not self.hf.chat_template:
      raise NoChatTemplate(
        f"The tokenizer loaded from {self.source} has no chat template: a base model, whose "
        "prompts must be raw text (the agent's are chat messages; use an instruct model)"
      )

  def apply_chat_template(
    self, messages: list[dict[str, Any]], add_generation_prompt: bool = True
  ) -> str:
    """The chat template rendered over `messages` (dicts with "role" and "content"), as text."""
    self.require_chat_template()
    switches = {} if self.enable_thinking is None else {"enable_thinking": self.enable_thinking}
    text = self.hf.apply_chat_template(
      messages, tokenize=False, add_generation_prompt=add_generation_prompt, **switches
    )
    assert isinstance(text, str)
    return text

  def encode_chat(
    self, messages: list[dict[str, Any]], add_generation_prompt: bool = True
  ) -> list[int]:
    """Ids of the templated text. No special tokens are added: the template already writes them."""
    text = self.apply_chat_template(messages, add_generation_prompt)
    return self.encode(text, add_special_tokens=False)

  @property
  def vocab_size(self) -> int:
    """How many ids the tokenizer can produce, added tokens included.

    A model's embedding table may have more rows (padded vocabularies)."""
    return len(self.hf)


def load_tokenizer(path: str | os.PathLike[str], enable_thinking: bool | None = None) -> Tokenizer:
  """Load the tokenizer of an HF model folder or of a .gguf file."""
  source = os.fspath(path)
  if os.path.isdir(source):
    return dataclasses.replace(_load_hf_folder(source), enable_thinking=enable_thinking)
  if os.path.isfile(source):
    return dataclasses.replace(_load_gguf(source), enable_thinking=enable_thinking)
  raise FileNotFoundError(
    f"No tokenizer at {source!r}: expected a Hugging Face model folder with tokenizer.json "
    "(or tokenizer_config.json) or a .gguf file."
  )


# --- Hugging Face folder -------------------------------------------------------------------------


def _load_hf_folder(folder: str) -> Tokenizer:
  if not any(os.path.isfile(os.path.join(folder, name)) for name in _HF_TOKENIZER_FILES):
    ggufs = sorted(name for name in os.listdir(folder) if name.endswith(".gguf"))
    hint = f" It holds {', '.join(ggufs)}: pass the .gguf file's path instead." if ggufs else ""
    expected = ", ".join(_HF_TOKENIZER_FILES)
    raise FileNotFoundError(
      f"The folder {folder!r} has no tokenizer files (expected one of {expected}).{hint}"
    )
  hf = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
  extra_eos: list[int] = []
  generation_config = os.path.join(folder, "generation_config.json")
  if os.path.isfile(generation_config):
    with open(generation_config, encoding="utf-8") as f:
      eos = json.load(f).get("eos_token_id")
    if eos is not None:
      extra_eos = [int(i) for i in (eos if isinstance(eos, list) else [eos])]
  return _wrap(hf, folder, extra_eos)


def _wrap(
  hf: transformers.PreTrainedTokenizerBase, source: str, extra_eos: Sequence[int] = ()
) -> Tokenizer:
  """A `Tokenizer` around `hf`, with eos/pad/bos ids gathered as `Tokenizer` documents."""
  eos: list[int] = []
  candidates: list[int | None] = [hf.eos_token_id, *extra_eos]
  template = hf.chat_template if isinstance(hf.chat_template, str) else ""
  vocab = hf.get_vocab()
  candidates += [vocab.get(token) for token in _TURN_END_TOKENS if token in template]
  for token_id in candidates:
    if token_id is not None and token_id not in eos:
      eos.append(int(token_id))
  if not eos:
    raise ValueError(
      f"The tokenizer loaded from {source} has no eos token and no generation_config.json eos ids."
    )
  pad_id = hf.pad_token_id if hf.pad_token_id is not None else eos[0]
  return Tokenizer(
    hf=hf, eos_ids=tuple(eos), pad_id=int(pad_id), bos_id=hf.bos_token_id, source=source
  )


# --- GGUF ----------------------------------------------------------------------------------------


def _load_gguf(path: str) -> Tokenizer:
  # Imported here: importing the submodule directly skips the package's torch-importing GGUF reader.
  from transformers.integrations.gguf import gguf_tokenizer_mapping as mapping

  # transformers 5.17 (on a lent GPU host) laid its GGUF tokenizer code out another way.
  if not hasattr(mapping, "convert_gguf_tokenizer"):
    raise ImportError(
      f"transformers {transformers.__version__} cannot build a tokenizer from a GGUF file the way "
      "this package reads one: install the pinned version (requirements.txt: transformers==5.23.0)"
    )
  meta = GGUFFile(path, prefixes=("tokenizer.", "general.architecture"), tensors=False).metadata
  keys = gguf.Keys.Tokenizer
  tokenizer_type = meta.get(keys.MODEL)
  if tokenizer_type is None or keys.LIST not in meta:
    raise ValueError(f"{path} has no tokenizer in its metadata (no {keys.MODEL} / {keys.LIST}).")
  architecture = meta.get("general.architecture", "")
  try:
    mapping.select_tokenizer_builder(architecture, tokenizer_type)
  except ValueError as e:
    raise ValueError(
      f"{path}: cannot build a tokenizer for GGUF tokenizer model {tokenizer_type!r} "
      f"(architecture {architecture!r}): {e}"
    ) from None

  # The dict transformers' converter reads, under its names, with what the file has.
  renames = {
        keys.MODEL: "tokenizer_type", keys.PRE: "pre_tokenizer_type", keys.LIST: "tokens",
        keys.SCORES: "scores", keys.TOKEN_TYPE: "token_type", keys.MERGES: "merges",
        keys.PRECOMPILED_CHARSMAP: "precompiled_charsmap", keys.BOS_ID: "bos_token_id",
        keys.EOS_ID: "eos_token_id", keys.UNK_ID: "unk_token_id", keys.PAD_ID: "pad_token_id",
        keys.ADD_PREFIX: "add_prefix_space",
    }  # fmt: skip
  tokenizer_dict = {name: meta[key] for key, name in renames.items() if key in meta}
  backend, _ = mapping.convert_gguf_tokenizer(architecture, tokenizer_dict)

  tokens = tokenizer_dict["tokens"]
  special_ids = {"bos": keys.BOS_ID, "eos": keys.EOS_ID, "unk": keys.UNK_ID, "pad": keys.PAD_ID}
  special = {
    f"{name}_token": tokens[meta[key]] if key in meta else None for name, key in special_ids.items()
  }
  flag_keys = {"add_bos_token": keys.ADD_BOS, "add_eos_token": keys.ADD_EOS}
  flags: dict[str, Any] = {name: meta[key] for name, key in flag_keys.items() if key in meta}
  if tokenizer_type == "llama":
    flags.setdefault("add_bos_token", True)  # llama.cpp's default for sentencepiece vocabularies
  elif tokenizer_type == "gemma4":
    flags["add_bos_token"] = False  # its chat template writes <bos> itself
  if keys.CHAT_TEMPLATE in meta:
    flags["chat_template"] = meta[keys.CHAT_TEMPLATE]

  # For vocabularies over 100k (Gemma's 262k) transformers looks beside `name_or_path` for a
  # Mistral config.json, or asks the hub: name the file's folder, local only. A file path there
  # fails offline (it is not a repo id) and would be sent to the hub online.
  hf = transformers.PreTrainedTokenizerFast(
    tokenizer_object=backend,
    name_or_path=os.path.dirname(os.path.abspath(path)),
    local_files_only=True,
    **special,
    **flags,
  )
  extra_eos = [meta[key] for key in (keys.EOT_ID, keys.EOM_ID) if key in meta]
  return _wrap(hf, path, extra_eos)
