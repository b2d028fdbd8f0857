"""`python -m jerp_jax.generate --config=configs/default.py --prompt='TEXT'`: one completion.

Wraps TEXT in the model's chat template as a user message and prints the completion, and nothing
else, on stdout (logs go to stderr), so the output can be piped.
"""

from __future__ import annotations

import sys
from typing import Sequence

import jax
import ml_collections
from absl import app, flags
from ml_collections import config_flags

from jerp_jax.model import build
from jerp_jax.parallel import mesh as mesh_lib
from jerp_jax.sampling import sampler as sampler_lib

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Experiment config file.")
_PROMPT = flags.DEFINE_string("prompt", None, "The user message to complete.")
_SYSTEM = flags.DEFINE_string("system", None, "An optional system message.")
_RAW = flags.DEFINE_bool("raw", False, "Feed the prompt as is, without the chat template.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", None, "Overrides sampling.max_new_tokens.")
_TEMPERATURE = flags.DEFINE_float("temperature", None, "Overrides sampling.temperature (0: greedy).")
_TOP_P = flags.DEFINE_float("top_p", None, "Overrides sampling.top_p.")
_TOP_K = flags.DEFINE_integer("top_k", None, "Overrides sampling.top_k.")


def setup(config: ml_collections.ConfigDict) -> tuple[build.LoadedModel, sampler_lib.Sampler]:
  """The model on its mesh and a sampler for it, after validating the config."""
  sampler_lib.validate_config(config.sampling)
  mesh = mesh_lib.make_mesh(config.mesh.shape)
  lm = build.build(config.model, mesh, seed=config.seed)
  if lm.tokenizer is None:
    raise ValueError(f"model.preset={config.model.preset!r} with random weights has no tokenizer; "
                     "set model.path to a checkpoint")
  sampler = sampler_lib.Sampler(
      lm.model, mesh, lm.tokenizer.eos_ids, lm.tokenizer.pad_id, lm.tokenizer,
      max_seq_len=config.model.max_seq_len, min_prompt_bucket=config.sampling.min_prompt_bucket,
      decode_chunk=config.sampling.decode_chunk)
  return lm, sampler


def prompt_ids(tokenizer, text: str, system: str | None = None, raw: bool = False) -> list[int]:
  if raw:
    return tokenizer.encode(text)
  messages = ([{"role": "system", "content": system}] if system else []) + [
      {"role": "user", "content": text}]
  return tokenizer.encode_chat(messages)


def complete(lm: build.LoadedModel, sampler: sampler_lib.Sampler, s: ml_collections.ConfigDict,
             prompts: Sequence[list[int]]) -> list[sampler_lib.Completion]:
  return sampler.generate(lm.variables, prompts, s.max_new_tokens, temperature=s.temperature,
                          top_p=s.top_p, top_k=s.top_k, stop_strings=tuple(s.stop_strings),
                          seed=s.seed)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _PROMPT.value is None:
    raise app.UsageError("--prompt is required")
  config = _CONFIG.value
  s = config.sampling
  for name, flag in (("max_new_tokens", _MAX_NEW), ("temperature", _TEMPERATURE),
                     ("top_p", _TOP_P), ("top_k", _TOP_K)):
    if flag.value is not None:
      s[name] = flag.value
  lm, sampler = setup(config)
  ids = prompt_ids(lm.tokenizer, _PROMPT.value, _SYSTEM.value, _RAW.value)
  (completion,) = complete(lm, sampler, s, [ids])
  text = lm.tokenizer.decode(completion.token_ids, skip_special_tokens=True)
  sys.stdout.write(text + "\n")
  sys.stdout.flush()


if __name__ == "__main__":
  jax.config.parse_flags_with_absl()
  app.run(main)
