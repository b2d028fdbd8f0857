"""The main entry point: `python -m jerp_jax.main --config=configs/default.py`.

Modes: `generate` answers the config's `generate.prompts` with the configured model and reports
throughput. (The JERP training loop becomes the default mode when it lands.)
"""

from __future__ import annotations

import os

# transformers' advice that torch is absent is noise here: we use it for tokenizers only.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import time
from typing import Sequence

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from jerp_jax import inference

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Experiment config file.")
_MODE = flags.DEFINE_enum("mode", "generate", ["generate"], "What to run.")


def run_generate(config) -> None:
  start = time.time()
  lm, sampler = inference.setup(config)
  print(
    f"model: {config.model.preset} from {lm.source} "
    f"({sum(x.size for x in jax.tree.leaves(lm.variables)) / 1e6:.1f}M parameters) on "
    f"{jax.device_count()} {jax.devices()[0].platform} device(s), mesh {dict(lm.mesh.shape)}, "
    f"loaded in {time.time() - start:.1f}s",
    flush=True,
  )
  prompts = [inference.prompt_ids(lm.tokenizer, p) for p in config.generate.prompts]
  start = time.time()
  completions = inference.complete(lm, sampler, config.sampling, prompts)
  elapsed = time.time() - start
  for text, c in zip(config.generate.prompts, completions):
    answer = lm.tokenizer.decode(c.token_ids, skip_special_tokens=True)
    print(f"\n>>> {text}\n{answer}\n[{len(c.token_ids)} tokens, {c.finish_reason}]", flush=True)
  generated = sum(len(c.token_ids) for c in completions)
  print(
    f"\n{generated} tokens for {len(prompts)} prompts in {elapsed:.1f}s "
    "(first call includes compilation)",
    flush=True,
  )


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  if _MODE.value == "generate":
    run_generate(_CONFIG.value)


if __name__ == "__main__":
  jax.config.parse_flags_with_absl()
  app.run(main)
