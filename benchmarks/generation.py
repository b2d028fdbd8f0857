"""Generation throughput: our JAX sampler against transformers + torch, prefill and decode apart.

What it measures, per batch size (default 1, 8, 32), for greedy decoding of `--new_tokens` (64)
tokens after prompts of exactly `--prompt_len` (256) tokens, on the model of configs/default.py
(the embedded SmolLM2-135M-Instruct GGUF in `model.dtype`: `auto` is bfloat16 on CPUs with AMX or
AVX512-BF16; `--config.model.dtype=float32` compares like with torch's float32):

* ours: `Sampler._prefill` (the prompt forward pass + the first token) and `Sampler._decode` (the
  remaining new_tokens - 1 steps in one jitted loop), each timed with `jax.block_until_ready`
  after an untimed warm-up call of the same shapes, so compilation is excluded.
* transformers + torch (when torch imports): `AutoModelForCausalLM.from_pretrained(gguf_dir,
  gguf_file=..., dtype=torch.float32)` on the same GGUF and the same prompt ids,
  `generate(do_sample=False, max_new_tokens=N, min_new_tokens=N)` after a warm-up call. A
  stopping criterion stamps the time as each token is produced, so one call gives the prefill
  (start -> first token) and the decode ((last token - first token) / (N - 1) steps).

prefill tok/s = batch * prompt_len / prefill time; decode tok/s = batch * (N - 1) / decode time.
Each figure is the best of `--repeats` timed runs (every run is printed). At each batch size the
two frameworks' runs alternate, so slow spells of a shared virtual machine (run-to-run swings of
+-30% are common on the 2-core CPU) hit both alike; compare ratios, and rerun before trusting a
small change. EOS cannot end a row early in either framework (ours gets an EOS id that no token
has; torch's generation config gets none, so nothing stops or masks a row), so both produce
exactly N tokens per row. Prompts are real text, tokenized and tiled to prompt_len, each row
starting at a different offset; both frameworks get the same ids. As a sanity check (not a
failure), it prints whether our greedy tokens equal torch's for the first prompt at batch 1.

Run from the repository root:

  .venv-ref/bin/python benchmarks/generation.py            # side by side (that venv has torch)
  .venv/bin/python benchmarks/generation.py                # ours only (torch keys are null)
  .venv-ref/bin/python benchmarks/generation.py --batch_sizes=1,8 --repeats=3 --skip_torch
  ... --config.model.param_dtype=bfloat16                   # any configs/default.py override

Output: a table, then exactly one JSON line (the last line of stdout) with decode_tok_s_b{B},
prefill_tok_s_b{B}, torch_decode_tok_s_b{B}, torch_prefill_tok_s_b{B}, decode_ratio_b{B},
prefill_ratio_b{B} (ours / torch) for B in 1, 8, 32 (null when not run), and device/jax/torch
versions.

Target: decode at batch 8 >= 3x transformers + torch on a 2-core CPU (decode_ratio_b8 >= 3).
"""

from __future__ import annotations

import json
import os
import sys
import time
import types
from typing import Any, Sequence

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:  # `python benchmarks/generation.py` puts benchmarks/ first, not the repo
  sys.path.insert(0, _REPO)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
from absl import app, flags, logging  # pylint: disable=wrong-import-position
from ml_collections import config_flags  # pylint: disable=wrong-import-position

from benchmarks.machine import device_name  # pylint: disable=wrong-import-position
from jerp_jax.model import build, presets  # pylint: disable=wrong-import-position
from jerp_jax.model import config as model_config  # pylint: disable=wrong-import-position
from jerp_jax.parallel import mesh as mesh_lib  # pylint: disable=wrong-import-position
from jerp_jax.sampling import sampler as sampler_lib  # pylint: disable=wrong-import-position

_CONFIG = config_flags.DEFINE_config_file(
  "config", os.path.join(_REPO, "configs", "default.py"), "Experiment config file."
)
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1", "8", "32"], "Batch sizes to measure.")
_PROMPT_LEN = flags.DEFINE_integer(
  "prompt_len", 256, "Prompt length in tokens (every row). Ours pads it to a power-of-two bucket."
)
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 64, "Tokens generated per row.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs per batch size (the best is reported).")
_SKIP_TORCH = flags.DEFINE_bool("skip_torch", False, "Do not run transformers + torch.")

REPORTED_BATCHES = (1, 8, 32)  # always present in the JSON line (null when not run)
NO_EOS = (-1,)  # an id no token has: rows never finish early

_TEXT = (
  "The old lighthouse stood at the edge of the cliff, its white paint peeling after decades of "
  "salt wind. Every evening the keeper climbed the spiral stairs, one hundred and twelve steps, "
  "to light the lamp and wind the clockwork that turned the great lens. Ships passing in the "
  "night saw its beam sweep across the water every ten seconds, a signal that meant rocks, "
  "shallows, and the harbour beyond. In the morning he wrote the weather in a leather logbook: "
  "wind from the north-west, visibility good, two fishing boats returned before noon. "
  "You are in a kitchen. Your task is to put a clean mug in the coffee machine. On the counter "
  "there is a sponge, a dirty mug, a kettle and a loaf of bread; the sink is to your left and "
  "the coffee machine to your right. First, take the mug from the counter. Then go to the sink, "
  "rinse the mug with water and scrub it with the sponge until it is clean. Finally, walk to the "
  "coffee machine and put the clean mug under the spout. The capital of France is Paris, a city "
  "on the Seine known for its museums, cafes and the iron tower built for the 1889 exhibition."
)


def make_prompts(tokenizer, batch: int, length: int, vocab_size: int) -> list[list[int]]:
  """`batch` rows of exactly `length` ids: the text's tokens tiled, row i starting 13*i further.
  A model without a tokenizer (a preset's shape with random weights) gets seeded random ids."""
  if tokenizer is None:
    return np.random.default_rng(0).integers(1, vocab_size, (batch, length)).tolist()
  ids = tokenizer.encode(_TEXT)
  stream = ids * (2 + (length + 13 * batch) // len(ids))
  return [stream[(13 * i) % len(ids) :][:length] for i in range(batch)]


# --- ours ---------------------------------------------------------------------------------------


class Ours:
  """Our model and sampler, with EOS disabled; times `_prefill` and `_decode` separately."""

  def __init__(self, config):
    sampler_lib.validate_config(config.sampling)
    self.mesh = mesh_lib.make_mesh(config.mesh.shape)
    self.lm = build.build(config.model, self.mesh, seed=config.seed)
    # A preset's shape with random weights has no tokenizer: the prompts are ids, and nothing is
    # decoded to text here, so the sampler needs only a pad id (its eos_ids are given below).
    tok = self.lm.tokenizer or types.SimpleNamespace(pad_id=0)
    self.sampler = sampler_lib.Sampler.from_config(
      self.lm.model, self.mesh, config.sampling, tok, config.model.max_seq_len, eos_ids=NO_EOS
    )

  @staticmethod
  def warmup_tokens(new_tokens: int) -> int:
    return new_tokens  # the decode program's shapes (and its static step count) depend on it

  def run_once(self, prompts, new_tokens: int) -> tuple[float, float, np.ndarray]:
    """(prefill seconds, decode seconds, generated tokens [B, new_tokens])."""
    s = self.sampler
    variables = s.prepare(self.lm.variables)  # the sampler's weight layout, converted once
    assert len(prompts) == s.batch_rows(len(prompts)), "batch must be a power of 2"
    params = sampler_lib.SamplingParams(new_tokens, temperature=0.0)
    p, tokens, valid, positions, _ = s.layout(prompts, new_tokens)  # no prompt shares a head
    t0 = time.perf_counter()
    state = s.run_prefill(variables, tokens, valid, positions, jax.random.PRNGKey(0), p, params)
    jax.block_until_ready(state)
    t1 = time.perf_counter()
    # One call runs every remaining step, as generate() does without stop strings.
    state = s.run_decode(variables, state, new_tokens, params)
    jax.block_until_ready(state)
    t2 = time.perf_counter()
    out = np.asarray(state.tokens[:, p:])
    if int(state.step) != new_tokens:
      raise RuntimeError(f"decoded {int(state.step)} tokens, expected {new_tokens}")
    return t1 - t0, t2 - t1, out


# --- transformers + torch -----------------------------------------------------------------------


class Torch:
  """transformers' LlamaForCausalLM from the same GGUF; per-token timestamps from one generate."""

  def __init__(self, gguf_path: str):
    import torch  # pylint: disable=import-outside-toplevel
    import transformers  # pylint: disable=import-outside-toplevel

    self.torch = torch
    self.transformers = transformers
    torch.set_num_threads(os.cpu_count() or 1)
    transformers.utils.logging.disable_progress_bar()
    self.model = transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path), dtype=torch.float32
    )
    self.model.eval()
    gen = self.model.generation_config
    self.pad_id = gen.pad_token_id if gen.pad_token_id is not None else gen.eos_token_id
    # No EOS at all: nothing stops a row and nothing masks a token, so greedy picks what ours does.
    gen.eos_token_id = None

  @staticmethod
  def warmup_tokens(new_tokens: int) -> int:
    return min(new_tokens, 4)  # nothing compiles: a prefill and a few steps warm it up

  def run_once(self, prompts, new_tokens: int) -> tuple[float, float, np.ndarray]:
    torch = self.torch
    stamps: list[float] = []

    class Stamp(self.transformers.StoppingCriteria):
      def __call__(self, input_ids, scores, **kwargs):
        stamps.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    ids = torch.tensor(np.asarray(prompts, np.int64))
    mask = torch.ones_like(ids)
    with torch.inference_mode():
      t0 = time.perf_counter()
      out = self.model.generate(
        input_ids=ids,
        attention_mask=mask,
        do_sample=False,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        pad_token_id=self.pad_id,
        stopping_criteria=self.transformers.StoppingCriteriaList([Stamp()]),
      )
    generated = out[:, ids.shape[1] :].numpy()
    if generated.shape[1] != new_tokens or len(stamps) != new_tokens:
      raise RuntimeError(
        f"torch generated {generated.shape[1]} tokens ({len(stamps)} stamps), expected {new_tokens}"
      )
    return stamps[0] - t0, stamps[-1] - stamps[0], generated


# --- driver -------------------------------------------------------------------------------------


def measure(runners: dict[str, Any], prompts, new_tokens: int, repeats: int) -> dict[str, dict]:
  """Best-of-`repeats` timings for each runner, their runs interleaved so drift hits all alike."""
  for runner in runners.values():  # warm-up: compilation (ours), allocator and oneDNN (torch)
    runner.run_once(prompts, runner.warmup_tokens(new_tokens))
  runs: dict[str, list] = {name: [] for name in runners}
  for _ in range(repeats):
    for name, runner in runners.items():
      runs[name].append(runner.run_once(prompts, new_tokens))
  b, results = len(prompts), {}
  for name, timed in runs.items():
    pre, dec = min(r[0] for r in timed), min(r[1] for r in timed)
    results[name] = dict(
      prefill_s=pre,
      decode_s=dec,
      tokens=timed[-1][2],
      prefill_tok_s=b * len(prompts[0]) / pre,
      decode_tok_s=b * (new_tokens - 1) / dec,
      decode_step_ms=1e3 * dec / (new_tokens - 1),
      all_prefill_s=[round(r[0], 3) for r in timed],
      all_decode_s=[round(r[1], 3) for r in timed],
    )
  return results


def _fmt(x: float | None, spec: str = "10.1f") -> str:
  return format(x, spec) if x is not None else format("-", ">" + spec.split(".")[0])


def _ratio(a: dict | None, b: dict | None, key: str) -> float | None:
  if a is None or b is None or a.get(key) is None or b.get(key) is None:
    return None
  return a[key] / b[key]


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  batches = [int(b) for b in _BATCH_SIZES.value]
  if any(b < 1 or b & (b - 1) for b in batches):
    raise app.UsageError(
      f"--batch_sizes={_BATCH_SIZES.value}: expected powers of two (the sampler "
      "pads other batch sizes up to one, which would skew tok/s)"
    )
  plen, new, repeats = _PROMPT_LEN.value, _NEW_TOKENS.value, _REPEATS.value
  if new < 2:
    raise app.UsageError("--new_tokens must be >= 2 (decode is the tokens after the first)")
  config.model.max_seq_len = max(config.model.max_seq_len, plen + new)
  cores = os.cpu_count() or 1
  start = time.time()

  ours = Ours(config)
  vocab = ours.lm.model.args.vocab_size
  prompts = {b: make_prompts(ours.lm.tokenizer, b, plen, vocab) for b in batches}
  print(
    f"model: {config.model.preset} from {ours.lm.source} "
    f"(dtype={model_config.runtime_options(config.model)['dtype']}, "
    f"param_dtype={model_config.runtime_options(config.model)['param_dtype']}); "
    f"{cores} cores, {device_name()}; jax {jax.__version__} on {jax.devices()[0].platform}; "
    f"prompt_len={plen}, new_tokens={new}, greedy, best of {repeats}",
    flush=True,
  )

  torch_version = None
  torch_skip_reason = "--skip_torch" if _SKIP_TORCH.value else None
  if not _SKIP_TORCH.value:
    try:
      import torch  # pylint: disable=import-outside-toplevel

      torch_version = torch.__version__
    except ImportError:
      torch_skip_reason = "torch is not importable in this venv (use .venv-ref/bin/python)"
  runners: dict[str, Any] = {"ours": ours}
  if torch_version is not None:
    runners["torch"] = Torch(
      presets.embedded_path(config.model.preset) if not config.model.path else config.model.path
    )
  else:
    print(f"transformers + torch skipped: {torch_skip_reason}")

  results: dict[int, dict[str, Any]] = {}
  torch_results: dict[int, dict[str, Any]] = {}
  for b in batches:
    t = time.time()
    measured = measure(runners, prompts[b], new, repeats)
    results[b] = measured["ours"]
    if "torch" in measured:
      torch_results[b] = measured["torch"]
    for name, r in measured.items():
      print(
        f"  {name:<5} b={b:<3d} prefill {r['prefill_s']:7.3f}s ({r['prefill_tok_s']:8.1f} tok/s)"
        f"  decode {r['decode_s']:7.3f}s ({r['decode_tok_s']:8.1f} tok/s, "
        f"{r['decode_step_ms']:6.1f} ms/step)  runs: prefill {r['all_prefill_s']} "
        f"decode {r['all_decode_s']}",
        flush=True,
      )
    print(f"  [batch {b}: {time.time() - t:.0f}s]", flush=True)

  # Table.
  print()
  header = (
    f"{'batch':>5} | {'ours prefill':>12} {'torch prefill':>13} {'ratio':>6} | "
    f"{'ours decode':>11} {'torch decode':>12} {'ratio':>6} | {'ours ms/step':>12} "
    f"{'torch ms/step':>13}"
  )
  print("tok/s (ratio = ours / torch)")
  print(header)
  print("-" * len(header))
  for b in batches:
    o, t = results[b], torch_results.get(b)
    print(
      f"{b:>5} | {_fmt(o['prefill_tok_s'], '12.1f')} "
      f"{_fmt(t and t['prefill_tok_s'], '13.1f')} "
      f"{_fmt(_ratio(o, t, 'prefill_tok_s'), '6.2f')} | "
      f"{_fmt(o['decode_tok_s'], '11.1f')} {_fmt(t and t['decode_tok_s'], '12.1f')} "
      f"{_fmt(_ratio(o, t, 'decode_tok_s'), '6.2f')} | "
      f"{_fmt(o['decode_step_ms'], '12.1f')} {_fmt(t and t['decode_step_ms'], '13.1f')}"
    )
  print()

  # Greedy sanity check (not a failure): the first prompt at batch 1, and every row elsewhere.
  match_b1 = None
  if torch_results:
    check_b = 1 if 1 in batches else batches[0]
    ours_row, torch_row = results[check_b]["tokens"][0], torch_results[check_b]["tokens"][0]
    same = int(np.sum(np.cumprod(ours_row == torch_row)))
    match_b1 = bool(same == new) if check_b == 1 else None
    print(
      f"greedy check, batch {check_b}, first prompt: "
      f"{'MATCH' if same == new else 'MISMATCH'} ({same}/{new} leading tokens equal)"
    )
    if same != new:
      tok = ours.lm.tokenizer
      print(f"  ours : {tok.decode(ours_row)!r}\n  torch: {tok.decode(torch_row)!r}")
    for b in batches:
      rows = np.all(results[b]["tokens"] == torch_results[b]["tokens"], axis=1)
      print(f"  batch {b}: {int(rows.sum())}/{b} rows identical over {new} tokens")
  else:
    print("greedy check skipped: torch did not run")
  print(f"total wall time {time.time() - start:.0f}s")

  summary: dict[str, Any] = {}
  for b in sorted(set(REPORTED_BATCHES) | set(batches)):
    o, t = results.get(b), torch_results.get(b)
    summary[f"decode_tok_s_b{b}"] = o and round(o["decode_tok_s"], 2)
    summary[f"prefill_tok_s_b{b}"] = o and round(o["prefill_tok_s"], 2)
    summary[f"torch_decode_tok_s_b{b}"] = t and round(t["decode_tok_s"], 2)
    summary[f"torch_prefill_tok_s_b{b}"] = t and round(t["prefill_tok_s"], 2)
    dr, pr = _ratio(o, t, "decode_tok_s"), _ratio(o, t, "prefill_tok_s")
    summary[f"decode_ratio_b{b}"] = dr and round(dr, 3)
    summary[f"prefill_ratio_b{b}"] = pr and round(pr, 3)
  summary.update(
    {
      "greedy_match_b1": match_b1,
      "prompt_len": plen,
      "new_tokens": new,
      "repeats": repeats,
      "dtype": model_config.runtime_options(config.model)["dtype"],
      "param_dtype": model_config.runtime_options(config.model)["param_dtype"],
      "device": f"{jax.devices()[0].platform}: {device_name()} ({cores} cores)",
      "jax": jax.__version__,
      "torch": torch_version,
    }
  )
  print(json.dumps(summary), flush=True)


if __name__ == "__main__":
  logging.set_verbosity(logging.WARNING)
  jax.config.parse_flags_with_absl()
  app.run(main)
