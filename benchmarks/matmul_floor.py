"""The floor under a decode step: the model's matmuls alone, as XLA:CPU runs them.

A decode step at small batch is memory-bound: every weight and every cached key and value is read
once per step. This times one jitted pass of exactly the matmuls of a SmolLM2-135M decode step in
the sampler's CPU layout, at batch `--batch`, over a KV cache of `--slots` slots (the 256-token
prompt + 64 new tokens of benchmarks/generation.py by default):

* per layer: q/k/v fused [576, 960]; attention scores keys · q and the output probs · values, as
  `llama.attend` writes them, over a [batch, 3, slots, 64] cache; o [576, 576]; gate and up
  [576, 1536]; down [1536, 576];
* then the [576, 49152] output head.

Every layer has its own arrays, so nothing is served from the CPU's caches, and each product feeds
the next, so they run in the model's order. Nothing else runs: no norms, rotary embeddings, cache
writes or sampling. So no decode step of this model on this machine, with XLA:CPU's matmul
kernels, can be faster than the time printed here.

It first times a plain read (a sum) of as many float32 bytes as a float32 step reads: the rate
the machine streams memory at, against which the matmul kernels' rate is judged. Then, for each
weight dtype (the cache's too, unless --cache_dtype says otherwise), it prints ms per pass, the bytes read per pass and
the rate at which XLA:CPU streamed them, then one JSON line. Compare `matmul_ms_float32` with the
decode ms/step of benchmarks/generation.py, ours and torch's.

  .venv/bin/python benchmarks/matmul_floor.py                  # float32 and bfloat16, batch 8
  .venv/bin/python benchmarks/matmul_floor.py --batch=1 --repeats=50
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

_BATCH = flags.DEFINE_integer("batch", 8, "Rows per matmul (the decode batch).")
_REPEATS = flags.DEFINE_integer("repeats", 20, "Timed passes (the best is reported).")
_DTYPES = flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "Weight and cache dtypes.")
_SLOTS = flags.DEFINE_integer("slots", 320, "KV cache slots attended over (0: no attention).")
_CACHE_DTYPE = flags.DEFINE_string("cache_dtype", None, "KV cache dtype (default: the weights').")

# SmolLM2-135M: hidden 576, 9 query heads and 3 kv heads of 64, MLP 1536, 30 layers, vocab 49152.
HIDDEN, HEADS, KV_HEADS, HEAD_DIM, MLP, LAYERS, VOCAB = 576, 9, 3, 64, 1536, 30, 49152
QKV = (HEADS + 2 * KV_HEADS) * HEAD_DIM
LAYER_SHAPES = ((HIDDEN, QKV), (HIDDEN, HIDDEN), (HIDDEN, MLP), (HIDDEN, MLP), (MLP, HIDDEN))


def arrays(dtype, cache_dtype, batch: int, slots: int, seed: int = 0) -> tuple[list, list]:
  """(weights: 5 per layer + the head, caches: keys and values per layer)."""
  rng = np.random.default_rng(seed)
  make = lambda shape, dt: jnp.asarray(rng.standard_normal(shape, np.float32) * 0.02, dt)
  ws = [make(s, dtype) for _ in range(LAYERS) for s in LAYER_SHAPES] + [
    make((HIDDEN, VOCAB), dtype)
  ]
  cache = (batch, KV_HEADS, slots, HEAD_DIM)
  return ws, ([make(cache, cache_dtype) for _ in range(2 * LAYERS)] if slots else [])


def attention(q_bkhg: jax.Array, keys: jax.Array, values: jax.Array) -> jax.Array:
  """The two cache matmuls of llama.attend at one token (softmax left out), -> [b, k, g, h]."""
  batch = ((0, 1), (0, 1))
  scores = jax.lax.dot_general(
    keys, q_bkhg, (((3,), (2,)), batch), preferred_element_type=jnp.float32
  )
  probs = jax.lax.optimization_barrier(scores).transpose(0, 1, 3, 2).astype(values.dtype)
  return jax.lax.dot_general(
    probs, values, (((3,), (2,)), batch), preferred_element_type=jnp.float32
  )


@jax.jit
def one_pass(x: jax.Array, ws: list[jax.Array], caches: list[jax.Array]) -> jax.Array:
  """Each product feeds the next (a slice of it is added to the next input), so the matmuls run
  one after another as the model's data flow makes them; gate and up share their input."""
  out, b = x, x.shape[0]
  for i in range(LAYERS):
    qkv, o, gate, up, down = ws[5 * i : 5 * i + 5]
    a = jnp.dot(out.astype(qkv.dtype), qkv, preferred_element_type=jnp.float32)
    h = out
    if caches:
      q = a[:, : HEADS * HEAD_DIM].reshape(b, KV_HEADS, HEADS // KV_HEADS, HEAD_DIM)
      q = q.transpose(0, 1, 3, 2).astype(caches[2 * i].dtype)
      att = attention(q, caches[2 * i], caches[2 * i + 1]).reshape(b, HIDDEN)
      h = h + att
    else:
      h = h + a[:, :HIDDEN]
    h = jnp.dot(h.astype(o.dtype), o, preferred_element_type=jnp.float32)
    g = jnp.dot(h.astype(gate.dtype), gate, preferred_element_type=jnp.float32)
    u = jnp.dot(h.astype(up.dtype), up, preferred_element_type=jnp.float32)
    out = out + jnp.dot((g * u).astype(down.dtype), down, preferred_element_type=jnp.float32)
  return jnp.dot(out.astype(ws[-1].dtype), ws[-1], preferred_element_type=jnp.float32)


def best_ms(fn, *args) -> float:
  jax.block_until_ready(fn(*args))  # compile
  times = []
  for _ in range(_REPEATS.value):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return 1e3 * min(times)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  batch, slots, figures = _BATCH.value, _SLOTS.value, {}
  x = jnp.ones((batch, HIDDEN), jnp.float32)
  print(
    f"SmolLM2-135M decode-step matmuls, batch {batch}, {slots} cache slots, {os.cpu_count()} "
    f"cores, jax {jax.__version__} on {jax.devices()[0].platform}, best of {_REPEATS.value}"
  )
  ws, caches = arrays(jnp.float32, jnp.float32, batch, slots)
  n = sum(a.size for a in ws + caches)
  del ws, caches
  flat = jnp.ones((n,), jnp.float32)
  ms = best_ms(jax.jit(jnp.sum), flat)
  print(f"  plain read   {ms:6.2f} ms for {4 * n / 1e6:6.1f} MB  {4 * n / 1e6 / ms:5.1f} GB/s")
  figures.update(read_ms=round(ms, 3), read_gb_s=round(4 * n / 1e6 / ms, 2))
  del flat
  for name in _DTYPES.value:
    ws, caches = arrays(jnp.dtype(name), jnp.dtype(_CACHE_DTYPE.value or name), batch, slots)
    ms = best_ms(one_pass, x, ws, caches)
    mb_w = sum(w.size * w.dtype.itemsize for w in ws) / 1e6
    mb_c = sum(c.size * c.dtype.itemsize for c in caches) / 1e6
    print(
      f"  {name:<9} (cache {caches[0].dtype if caches else '-'}) {ms:6.2f} ms per pass  {mb_w:6.1f} MB of weights + {mb_c:5.1f} MB of cache"
      f"  {(mb_w + mb_c) / ms:5.1f} GB/s"
    )
    figures[f"matmul_ms_{name}"] = round(ms, 3)
    figures[f"weight_mb_{name}"] = round(mb_w, 1)
    figures[f"cache_mb_{name}"] = round(mb_c, 1)
    figures[f"gb_s_{name}"] = round((mb_w + mb_c) / ms, 2)
    del ws, caches
  figures.update(batch=batch, slots=slots, jax=jax.__version__, cores=os.cpu_count())
  print(json.dumps(figures))


if __name__ == "__main__":
  sys.exit(app.run(main))
