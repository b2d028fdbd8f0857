"""One policy update of the default's shape: tokens/s, FLOPs per token, and MFU against the
matmul peak this machine measures in the dtype in use.

    python benchmarks/learner.py [--config=configs/default.py] [--rows=8] [--length=512]
        [--repeats=2]

The embedded model (the config's dtype: bfloat16 on CPUs with AMX or AVX512-BF16, float32
elsewhere) takes `--repeats` timed updates of `--rows` turns of `--length` tokens (a prompt and a response of
`sampling.max_new_tokens` tokens), with the config's learner (LoRA, KL anchor, micro- and
mini-batches), after one untimed update that pays the compile. Then it times a plain `jnp.dot`
of the model's largest projection at the batch's token count, in the same dtype with float32
accumulation: the peak the update's matmuls could reach here.

FLOPs counted per update (multiply-adds × 2): every projection's forward over every token,
attention's two products over the causal half, the output head on the response window only (as
the learner computes it); backward: the activations' gradients (the forward again, twice for
attention) plus the trained weights' own (the adapters under LoRA: negligible; every weight for
train='full'); the anchor's forward when kl_coef > 0. Not counted: the forward recomputed under
model.remat (model FLOPs, not the hardware's). mfu = those FLOPs / time / peak.
tests/test_benchmarks.py checks the count against the products in the traced update.

Ends with one JSON line: tokens_per_s, flops_per_token, achieved_tflops, peak_tflops, mfu,
update_seconds, dtype, cpu.
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from benchmarks.machine import device_name  # noqa: E402
from jerp_jax.model import build  # noqa: E402
from jerp_jax.parallel import mesh as mesh_lib  # noqa: E402
from jerp_jax.rl import batch as batch_lib  # noqa: E402
from jerp_jax.rl import learner as learner_lib  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Experiment config.")
_ROWS = flags.DEFINE_integer("rows", 8, "Turns in the update (the default: 16, in steps of 8).")
_LENGTH = flags.DEFINE_integer("length", 512, "Tokens per turn, prompt and response.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed updates (the fastest counts).")


def update_flops(args, rows: int, length: int, window: int, cfg) -> float:
  """FLOPs of one update (see the module docstring)."""
  d, layers = args.hidden_size, args.num_layers
  heads, kv, hd, mlp = args.num_heads, args.num_kv_heads, args.head_dim, args.intermediate_size
  weights = d * (heads + 2 * kv) * hd + heads * hd * d + 3 * d * mlp  # multiply-adds per token
  causal = 2 * heads * hd * (length + 1) / 2  # q·k and p·v over the causal half, per token
  proj, attention = (2 * layers * n * rows * length for n in (weights, causal))
  head = 2 * d * args.vocab_size * rows * window
  forward = proj + attention + head
  # The activations' gradients: one product per frozen weight (x·W gives dx = dy·Wᵀ), two for
  # attention's (both of its operands are activations). The weights' own (xᵀ·dy) only when they
  # are trained: every one for train='full', the adapters (negligible) under LoRA.
  backward = proj + 2 * attention + head + (proj + head if cfg.train == "full" else 0.0)
  anchor = forward if cfg.loss.kl_coef > 0 else 0.0
  return forward + backward + anchor


def matmul_peak(tokens: int, d: int, n: int, dtype: str, repeats: int = 20) -> float:
  """TFLOP/s of a [tokens, d] x [d, n] dot in `dtype` with float32 accumulation, as the model's
  projections run."""
  x = jnp.ones((tokens, d), dtype)
  w = jnp.ones((d, n), dtype)
  dot = jax.jit(lambda x, w: jnp.dot(x, w, preferred_element_type=jnp.float32))
  jax.block_until_ready(dot(x, w))
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(dot(x, w))
    best = min(best, time.perf_counter() - start)
  return 2 * tokens * d * n / best / 1e12


def main(argv) -> None:
  del argv
  config = _CONFIG.value
  # Only the model: no sampler, no tokenizer (a preset's shape with random weights has none).
  lm = build.build(config.model, mesh_lib.make_mesh(config.mesh.shape), seed=config.seed)
  args = lm.model.args
  cfg = config.rl.learner
  learner = learner_lib.Learner(
    lm.model, lm.mesh, lm.variables, cfg, config.sampling.temperature or 1.0
  )
  rows, length = _ROWS.value, _LENGTH.value
  response = min(config.sampling.max_new_tokens, length - 1)
  rng = np.random.default_rng(0)
  samples = [
    batch_lib.TurnSample(
      list(rng.integers(1, args.vocab_size, length - response)),
      list(rng.integers(1, args.vocab_size, response)),
      list(-rng.random(response)),
      float(rng.standard_normal()),
    )
    for _ in range(rows)
  ]
  batch = batch_lib.pack(samples, 0, learner.rows_multiple, max_length=length)
  window = learner_lib.window_size(batch.loss_mask)
  variables, opt_state = lm.variables, learner.init_opt_state(lm.variables)
  variables, opt_state, _ = learner.update(variables, opt_state, batch, 0)  # pays the compile
  times = []
  for i in range(_REPEATS.value):
    start = time.perf_counter()
    variables, opt_state, metrics = learner.update(variables, opt_state, batch, i + 1)
    times.append(time.perf_counter() - start)
    print(f"update {i + 1}: {times[-1]:.2f} s ({metrics['steps']:.0f} optimizer steps)", flush=True)
  seconds = min(times)
  flops = update_flops(args, rows, batch.shape[1], window, cfg)
  peak = matmul_peak(rows * batch.shape[1], args.hidden_size, args.intermediate_size, args.dtype)
  achieved = flops / seconds / 1e12
  out = {
    "tokens_per_s": rows * batch.shape[1] / seconds,
    "flops_per_token": flops / (rows * batch.shape[1]),
    "achieved_tflops": achieved,
    "peak_tflops": peak,
    "mfu": achieved / peak,
    "update_seconds": seconds,
    "rows": rows,
    "length": int(batch.shape[1]),
    "window": window,
    "train": cfg.train,
    "kl": cfg.loss.kl_coef > 0,
    "dtype": args.dtype,
    "cpu": device_name(),
  }
  print(
    f"{out['cpu']}, {args.dtype}: {rows}x{out['length']} tokens in {seconds:.2f} s = "
    f"{out['tokens_per_s']:.0f} tok/s, {out['flops_per_token'] / 1e9:.2f} GFLOP/token, "
    f"{achieved:.3f} TFLOP/s of a measured {peak:.3f} peak: mfu {out['mfu']:.3f}"
  )
  print(json.dumps(out))


if __name__ == "__main__":
  app.run(main)
