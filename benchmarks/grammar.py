"""Constrained decoding's cost: the same batch decoded with and without the edit grammar.

On the model of configs/default.py (the embedded SmolLM2-135M-Instruct), for `--batch` rows of
`--prompt_len` prompt tokens, greedy, `--new_tokens` new tokens: `Sampler.run_prefill` then one
`Sampler.run_decode` call for all the remaining steps, timed with `jax.block_until_ready` after
an untimed warm-up of the same shapes (compilation excluded). Both runs get EOS ids that no token
has, so every row writes exactly new_tokens tokens in both: under the grammar a row in a final
state goes on with another edit line instead of ending. Runs alternate (a shared machine's slow
spells hit both alike); each figure is the best of `--repeats`.

Also timed: building the token tables of an edit grammar (`grammar.edit_tables`), cold (the
first, with the vocabulary's bytes and outlines' Vocabulary) and warm (another grammar), and
moving a batch's tables to the device.

  .venv/bin/python benchmarks/grammar.py
  .venv/bin/python benchmarks/grammar.py --batch=8 --new_tokens=64 --repeats=3

Output: a table, then one JSON line (the last of stdout): decode tok/s of both, `ratio`
(constrained / unconstrained; the target is >= 0.8), table build seconds, states, `cpu`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Sequence

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:  # `python benchmarks/grammar.py` puts benchmarks/ first, not the repo
  sys.path.insert(0, _REPO)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
from absl import app, flags  # pylint: disable=wrong-import-position
from ml_collections import config_flags  # pylint: disable=wrong-import-position

from benchmarks.machine import device_name  # pylint: disable=wrong-import-position
from jerp_jax.model import build  # pylint: disable=wrong-import-position
from jerp_jax.parallel import mesh as mesh_lib  # pylint: disable=wrong-import-position
from jerp_jax.sampling import grammar as grammar_lib  # pylint: disable=wrong-import-position
from jerp_jax.sampling import sampler as sampler_lib  # pylint: disable=wrong-import-position

_CONFIG = config_flags.DEFINE_config_file(
  "config", os.path.join(_REPO, "configs", "default.py"), "Experiment config file."
)
_BATCH = flags.DEFINE_integer("batch", 8, "Rows (a power of two).")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 256, "Prompt tokens per row.")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 64, "Tokens generated per row.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs of each (the best is reported).")

NO_EOS = (-1,)  # an id no token has: rows never finish early
# Two groups' grammars, as a revision of an ALFWorld epoch makes them: rows alternate.
GRAMMARS = (
  grammar_lib.EditGrammar("pick_and_place_simple", (1, 2, 3, 7, 12), 300, 6),
  grammar_lib.EditGrammar("pick_clean_then_place_in_recep", (2, 4, 5, 9, 10, 11, 13), 300, 6),
)


def make_prompts(tokenizer, batch: int, length: int) -> list[list[int]]:
  """`batch` revision-like prompts of exactly `length` ids, row i starting 13 * i further."""
  text = (
    "Compare the failed attempts with the successful one and improve the rules, so that an "
    "agent that reads them fails less on tasks like this one. 1. saw: You are in the middle of "
    "a room. Looking quickly around you, you see a cabinet 1, a countertop 1, a drawer 2. | did: "
    "go to countertop 1\n2. saw: On the countertop 1, you see a cup 1. | did: take cup 1\n"
  )
  ids = tokenizer.encode(text)
  stream = ids * (2 + (length + 13 * batch) // len(ids))
  return [stream[(13 * i) % len(ids) :][:length] for i in range(batch)]


def run_once(sampler, variables, prompts, new_tokens, device_tables):
  """(prefill seconds, decode seconds, tokens [B, new_tokens]) of one batch."""
  params = sampler_lib.SamplingParams(new_tokens, temperature=0.0)
  p, tokens, valid, positions, _ = sampler.layout(prompts, new_tokens)
  t0 = time.perf_counter()
  state = sampler.run_prefill(
    variables, tokens, valid, positions, jax.random.PRNGKey(0), p, params, grammar=device_tables
  )
  jax.block_until_ready(state)
  t1 = time.perf_counter()
  state = sampler.run_decode(variables, state, new_tokens, params, device_tables)
  jax.block_until_ready(state)
  t2 = time.perf_counter()
  if int(state.step) != new_tokens:
    raise RuntimeError(f"decoded {int(state.step)} tokens, expected {new_tokens}")
  return t1 - t0, t2 - t1, np.asarray(state.tokens[:, p:])


def main(argv: Sequence[str]) -> None:
  del argv
  config = _CONFIG.value
  b, n = _BATCH.value, _NEW_TOKENS.value
  mesh = mesh_lib.make_mesh(config.mesh.shape)
  lm = build.build(config.model, mesh, seed=config.seed)
  tok = lm.tokenizer
  sampler = sampler_lib.Sampler.from_config(
    lm.model, mesh, config.sampling, tok, config.model.max_seq_len, eos_ids=NO_EOS
  )
  if b != sampler.batch_rows(b):
    raise ValueError(f"--batch={b}: expected a power of two")
  variables = sampler.prepare(lm.variables)

  t0 = time.perf_counter()
  tables = [grammar_lib.edit_tables(GRAMMARS[0], tok)]
  t1 = time.perf_counter()
  tables.append(grammar_lib.edit_tables(GRAMMARS[1], tok))
  t2 = time.perf_counter()
  device_tables = sampler.device_tables([tables[i % 2] for i in range(b)], b)
  jax.block_until_ready(device_tables)
  t3 = time.perf_counter()
  build_s = dict(cold=t1 - t0, warm=t2 - t1, to_device=t3 - t2)

  prompts = make_prompts(tok, b, _PROMPT_LEN.value)
  runners = {"unconstrained": None, "constrained": device_tables}
  for g in runners.values():  # warm-up: compilation
    run_once(sampler, variables, prompts, n, g)
  runs: dict[str, list] = {name: [] for name in runners}
  for _ in range(_REPEATS.value):
    for name, g in runners.items():
      runs[name].append(run_once(sampler, variables, prompts, n, g))

  results = {}
  for name, timed in runs.items():
    decode_s = min(r[1] for r in timed)
    results[name] = dict(
      prefill_s=min(r[0] for r in timed),
      decode_s=decode_s,
      decode_tok_s=b * (n - 1) / decode_s,
      all_decode_s=[round(r[1], 3) for r in timed],
    )
  ratio = results["constrained"]["decode_tok_s"] / results["unconstrained"]["decode_tok_s"]

  # Sanity: the constrained rows are edits (up to the last, cut by the token budget).
  texts = [tok.decode(row.tolist()) for row in runs["constrained"][-1][2]]
  print(f"{os.cpu_count()} cores, {device_name()}; batch {b}, prompt {_PROMPT_LEN.value}, new {n}")
  print(
    f"tables: {[t.states for t in tables]} states x {tables[0].next_state.shape[1]} tokens; "
    f"build cold {build_s['cold']:.2f} s, warm {build_s['warm']:.2f} s, "
    f"to device {build_s['to_device']:.3f} s"
  )
  for name, r in results.items():
    print(
      f"{name:>14}: decode {r['decode_tok_s']:7.1f} tok/s ({1e3 * r['decode_s'] / (n - 1):.1f} "
      f"ms/step), prefill {r['prefill_s']:.2f} s; decode runs {r['all_decode_s']}"
    )
  print(f"ratio constrained / unconstrained: {ratio:.3f} (target >= 0.8)")
  print("first constrained row:", repr(texts[0][:200]))
  summary = dict(
    cpu=device_name(),
    cores=os.cpu_count(),
    batch=b,
    prompt_len=_PROMPT_LEN.value,
    new_tokens=n,
    unconstrained_decode_tok_s=round(results["unconstrained"]["decode_tok_s"], 2),
    constrained_decode_tok_s=round(results["constrained"]["decode_tok_s"], 2),
    ratio=round(ratio, 3),
    table_build_cold_s=round(build_s["cold"], 3),
    table_build_warm_s=round(build_s["warm"], 3),
    tables_to_device_s=round(build_s["to_device"], 3),
    table_states=[t.states for t in tables],
    device_table_mib=round(device_tables.next_state.nbytes / 2**20, 1),
    dtype=str(lm.args.dtype),
    jax=jax.__version__,
  )
  print(json.dumps(summary))


if __name__ == "__main__":
  app.run(main)
