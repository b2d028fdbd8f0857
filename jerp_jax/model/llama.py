"""The Flax decoder for the Llama family and its relatives: Llama 2/3, Qwen2/2.5, Qwen3,
SmolLM2 and Gemma 3 (text).

RMSNorm, rotary embeddings (with Llama 3's or linear scaling), grouped-query attention, a gated
MLP, layers stacked with `nn.scan` (one compiled layer body however deep the model; parameters
get a leading `layers` axis). Optional LoRA adapters live in their own variable collection, `lora`: applying the
model without that collection runs the frozen base weights, which is the reference model of the
KL penalty. Every parameter and activation carries logical axis names; the mapping to the device
mesh is `jerp_jax.parallel.mesh.LOGICAL_AXIS_RULES`. The families differ only by switches of
`ModelArgs` (q/k norms, Gemma's (1 + weight) norms and extra norms, embedding scale, GeGLU, the
query scale, and sliding-window layers with their own RoPE base), not by separate classes.

The KV cache is a plain pytree `KVCache(k, v)` of shape [layers, batch, kv_heads, slots, head_dim]
carried through the layer scan, so each step writes only the new slots in place. With
`scan_layers=False` the layers are unrolled instead, each with its own parameters (`layers_{i}`)
and cache arrays; `unstack_layers` converts the stacked layout. This module knows nothing of
tokenizers, files or sampling.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util
from jax.sharding import Mesh

from jerp_jax.model.config import ModelArgs
from jerp_jax.parallel.mesh import constrain

Array = jax.Array
_KERNEL_INIT = nn.initializers.normal(stddev=0.02)
# Kaiming-uniform with a=sqrt(5), the usual LoRA `A` init; `B` starts at zero so the adapted
# model equals the base model at step 0.
_LORA_A_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class KVCache(NamedTuple):
  """Keys and values. Stacked layers: [layers, batch, kv_heads, slots, head_dim] arrays.
  Unrolled layers (scan_layers=False): tuples of per-layer [batch, kv_heads, slots, head_dim].

  Heads before slots: both attention matmuls then read the cache as it lies (a [slots, head_dim]
  matrix per batch row and head). Slots before heads made XLA:CPU transpose the whole cache of
  every layer on every decode step.
  """

  k: Any
  v: Any

  @staticmethod
  def zeros(args: ModelArgs, batch: int, slots: int, dtype: Any = None) -> KVCache:
    shape = (batch, args.num_kv_heads, slots, args.head_dim)
    dtype = dtype or args.dtype
    if args.scan_layers:
      z = jnp.zeros((args.num_layers,) + shape, dtype)
      return KVCache(z, z)
    z = tuple(jnp.zeros(shape, dtype) for _ in range(args.num_layers))
    return KVCache(z, z)

  @property
  def slots(self) -> int:
    return self.k[0].shape[2] if isinstance(self.k, tuple) else self.k.shape[3]


CACHE_AXES = ("layers", "cache_batch", "kv_heads", "cache_length", "head_dim")


def cache_axes(args: ModelArgs) -> Any:
  """Logical axes of each cache array, as a KVCache-shaped tree of tuples."""
  if args.scan_layers:
    return KVCache(CACHE_AXES, CACHE_AXES)
  per_layer = tuple(CACHE_AXES[1:] for _ in range(args.num_layers))
  return KVCache(per_layer, per_layer)


# --- rotary embeddings ------------------------------------------------------------------------


def rope_inv_freq(args: ModelArgs, sliding: bool = False) -> np.ndarray:
  """Inverse frequencies [head_dim // 2] of the global layers, scaled as configured, or of the
  sliding layers (base rope_local_theta, never scaled, as in Gemma 3)."""
  exponent = np.arange(0, args.head_dim, 2, dtype=np.int64).astype(np.float32) / args.head_dim
  theta = args.rope_local_theta if sliding else args.rope_theta
  inv_freq = (1.0 / (theta**exponent)).astype(np.float32)
  s = None if sliding else args.rope_scaling
  if s is None:
    return inv_freq
  if s.rope_type == "linear":
    return (inv_freq / s.factor).astype(np.float32)
  # Long wavelengths are slowed down by `factor`, short ones kept, the band between interpolated.
  low_freq_wavelen = s.original_max_position_embeddings / s.low_freq_factor
  high_freq_wavelen = s.original_max_position_embeddings / s.high_freq_factor
  wavelen = 2 * math.pi / inv_freq
  scaled = np.where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq)
  smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
    s.high_freq_factor - s.low_freq_factor
  )
  smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
  medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
  return np.where(medium, smoothed, scaled).astype(np.float32)


def rope_cos_sin(positions_bt: Array, inv_freq: np.ndarray) -> tuple[Array, Array]:
  """cos and sin [B, T, head_dim], in float32, halves duplicated (the rotate-half layout)."""
  angles = positions_bt.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
  angles = jnp.concatenate([angles, angles], axis=-1)
  return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x_btnh: Array, cos: Array, sin: Array) -> Array:
  half = x_btnh.shape[-1] // 2
  rotated = jnp.concatenate([-x_btnh[..., half:], x_btnh[..., :half]], axis=-1)
  cos, sin = cos[:, :, None, :].astype(x_btnh.dtype), sin[:, :, None, :].astype(x_btnh.dtype)
  return x_btnh * cos + rotated * sin


# --- layers -------------------------------------------------------------------------------------


def heads_first(x_btkh: Array) -> Array:
  return x_btkh.transpose(0, 2, 1, 3)


ATTEND_BLOCK = 128  # query rows per block of multi-token attention (see _query_blocks)


def attend(
  q_btnh: Array,
  keys_bksh: Array,
  values_bksh: Array,
  mask_bts: Array,
  k: int,
  scale: float | None = None,
  causal: bool = False,
) -> Array:
  """Grouped-query attention: each of the k kv heads serves n // k query heads. -> [B, T, n, h].

  Scores are scaled by `scale` (1 / sqrt(head_dim) when None). `causal`: the mask lets query i
  see no key past slot i (attention within one sequence, no cache), so a block of queries reads
  only the keys up to its last row."""
  b, t, n, h = q_btnh.shape
  scale = h**-0.5 if scale is None else float(scale)
  if t > 1:
    return _attend_blocks(q_btnh, keys_bksh, values_bksh, mask_bts, k, scale, causal)
  g, neg = n // k, jnp.finfo(jnp.float32).min
  # Decoding reads the whole cache for one token, so both matmuls are spelled out to read it as
  # it lies: scores = keys · q, out = probs · values, a row-major [slots, head_dim] matrix per
  # (batch, kv head). XLA:CPU hands such dots to its fast kernels as they are. Einsums let XLA
  # pick the operand order, and it picked one that transposed every layer's cache every step;
  # the barrier keeps it from folding the small transpose of the scores back into the dot.
  batch = ((0, 1), (0, 1))
  q_bkhg = q_btnh.reshape(b, k, g, h).transpose(0, 1, 3, 2)
  scores = jax.lax.dot_general(
    keys_bksh, q_bkhg, (((3,), (2,)), batch), preferred_element_type=jnp.float32
  )  # [b, k, s, g]
  scores = jax.lax.optimization_barrier(scores).transpose(0, 1, 3, 2)
  scores = jnp.where(mask_bts[:, :, None], scores * scale, neg)  # softmax along contiguous slots
  probs = jax.nn.softmax(scores, axis=-1).astype(values_bksh.dtype)
  out = jax.lax.dot_general(
    probs, values_bksh, (((3,), (2,)), batch), preferred_element_type=jnp.float32
  )  # [b, k, g, h]
  return out.astype(q_btnh.dtype).reshape(b, 1, n, h)


# Multi-token attention (prefill, training) runs over blocks of ATTEND_BLOCK query rows: queries
# as [b, k, g * c, h] and both products as batched dots, which XLA:CPU runs on its fast kernels
# (bf16 x bf16 -> f32 included), where the einsum over [b, t, k, g, h] ran at a third of their
# speed; each block's float32 scores ([b, k, g, c, s]) stay in cache through masking and softmax
# instead of streaming the whole [.., t, s] array to memory and back (2x faster at t = 512 on 2
# cores). `causal` (no cache): a block reads only the keys up to its last row.
#
# Its backward is written out (flash-attention style) rather than left to autodiff, which on
# XLA:CPU ran attention's gradients as float32 dots and assembled the queries' gradient by
# padding every block's to the full length and adding them up. Here each block recomputes its
# probabilities from the saved row maxima and sums (exactly the forward's), its five products
# (the scores again, then dv, dprobs, dk, dq) take operands in the compute dtype (probabilities
# and score gradients rounded to it, as FlashAttention does in bf16), and the queries' gradient
# is the blocks' concatenated. One layer's attention, forward and backward, at the default
# learner's shape (4 x 320 tokens, bf16, Intel Xeon, 2026-12-05): 12.7 ms against autodiff's
# 20.8 under the learner's compiler options (22.0 against 25.5 without them).


def _query_blocks(t: int, s: int, causal: bool) -> list[tuple[int, int, int]]:
  """(first row, end row, keys read) of each block of query rows."""
  return [
    (i, min(i + ATTEND_BLOCK, t), min(i + ATTEND_BLOCK, s) if causal else s)
    for i in range(0, t, ATTEND_BLOCK)
  ]


_BATCH_KV = ((0, 1), (0, 1))  # dot_general batch dims: (batch row, kv head)


def _block_scores(q_bkgch: Array, keys_bksh: Array, mask_bcs: Array, scale: float) -> Array:
  """Masked, scaled float32 scores [b, k, g, c, s] of one block of queries."""
  b, k, g, c, h = q_bkgch.shape
  scores = jax.lax.dot_general(
    q_bkgch.reshape(b, k, g * c, h), keys_bksh, (((3,), (3,)), _BATCH_KV),
    preferred_element_type=jnp.float32,
  ).reshape(b, k, g, c, -1)  # fmt: skip
  return jnp.where(mask_bcs[:, None, None], scores * scale, jnp.finfo(jnp.float32).min)


def _queries_by_kv_head(x_btnh: Array, k: int) -> Array:
  b, t, n, h = x_btnh.shape
  return x_btnh.reshape(b, t, k, n // k, h).transpose(0, 2, 3, 1, 4)  # [b, k, g, t, h]


def _attend_blocks_fwd(q_btnh, keys_bksh, values_bksh, mask_bts, k, scale, causal):
  """(out [b, t, n, h], (each query row's largest score, its sum of exp(score - largest)): two
  [b, k, g, t] float32 arrays, from which the backward recomputes the probabilities)."""
  b, t, n, h = q_btnh.shape
  q = _queries_by_kv_head(q_btnh, k)
  outs, tops, totals = [], [], []
  for i, end, s in _query_blocks(t, keys_bksh.shape[2], causal):
    scores = _block_scores(q[:, :, :, i:end], keys_bksh[:, :, :s], mask_bts[:, i:end, :s], scale)
    # jax.nn.softmax's own steps, so the primal's probabilities are bit for bit the same.
    top = jax.lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True))
    unnormalized = jnp.exp(scores - top)
    total = jnp.sum(unnormalized, axis=-1, keepdims=True)
    probs = (unnormalized / total).astype(values_bksh.dtype)
    c = end - i
    out = jax.lax.dot_general(
      probs.reshape(b, k, -1, s), values_bksh[:, :, :s], (((3,), (2,)), _BATCH_KV),
      preferred_element_type=jnp.float32,
    )  # fmt: skip
    outs.append(out.reshape(b, k, n // k, c, h))
    tops.append(top[..., 0])
    totals.append(total[..., 0])
  out = jnp.concatenate(outs, axis=3).transpose(0, 3, 1, 2, 4).astype(values_bksh.dtype)
  return out.reshape(b, t, n, h), tuple(jnp.concatenate(x, axis=3) for x in (tops, totals))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _attend_blocks(q_btnh, keys_bksh, values_bksh, mask_bts, k, scale, causal):
  return _attend_blocks_fwd(q_btnh, keys_bksh, values_bksh, mask_bts, k, scale, causal)[0]


def _attend_blocks_vjp_fwd(q_btnh, keys_bksh, values_bksh, mask_bts, k, scale, causal):
  out, rows = _attend_blocks_fwd(q_btnh, keys_bksh, values_bksh, mask_bts, k, scale, causal)
  return out, (q_btnh, keys_bksh, values_bksh, mask_bts, out, rows)


def _attend_blocks_vjp_bwd(k, scale, causal, residuals, dout_btnh):
  # Everything runs transposed, keys along rows ([b, k, s, g * c]): every product is then either
  # a plain [M, K] x [K, N] or contracts both operands' last dims, the two forms XLA:CPU hands to
  # its fast bf16 kernels; contracting over rows (pᵀ·dout, dsᵀ·q) made it convert both operands
  # to float32 and run a slow generic dot (the backward took about 2.5x as long).
  q_btnh, keys_bksh, values_bksh, mask_bts, out_btnh, (top_bkgt, total_bkgt) = residuals
  b, t, n, h = q_btnh.shape
  g, s_all, dt = n // k, keys_bksh.shape[2], values_bksh.dtype
  q, dout = _queries_by_kv_head(q_btnh, k), _queries_by_kv_head(dout_btnh.astype(dt), k)
  # Each row's sum of dout * out: softmax's backward subtracts it from every score's gradient.
  delta = jnp.sum(
    dout.astype(jnp.float32) * _queries_by_kv_head(out_btnh, k).astype(jnp.float32), axis=-1
  )
  dot = lambda x, y, dims: jax.lax.dot_general(
    x, y, (dims, _BATCH_KV), preferred_element_type=jnp.float32
  )
  # Without the barrier XLA folds the transpose back into the dot, which then contracts over rows.
  keys_bkhs = jax.lax.optimization_barrier(keys_bksh.transpose(0, 1, 3, 2))
  neg = jnp.finfo(jnp.float32).min
  dqs = []
  dk = dv = jnp.zeros((b, k, s_all, h), jnp.float32)
  for i, end, s in _query_blocks(t, s_all, causal):
    c = end - i
    q_c, dout_c = (x[:, :, :, i:end].reshape(b, k, g * c, h) for x in (q, dout))
    scores = dot(keys_bksh[:, :, :s], q_c, ((3,), (3,))).reshape(b, k, s, g, c)
    mask = mask_bts[:, i:end, :s].transpose(0, 2, 1)[:, None, :, None, :]
    # The forward's own steps, not exp(score - log-sum-exp): a row with no key to see (all
    # masked) is uniform there, and its log-sum-exp would round to the mask's fill value.
    top, total = (x[:, :, None, :, i:end] for x in (top_bkgt, total_bkgt))
    probs = jnp.exp(jnp.where(mask, scores * scale, neg) - top) / total  # [b, k, s, g, c]
    dv = dv.at[:, :, :s].add(dot(probs.astype(dt).reshape(b, k, s, g * c), dout_c, ((3,), (2,))))
    dprobs = dot(values_bksh[:, :, :s], dout_c, ((3,), (3,))).reshape(b, k, s, g, c)
    # Masked scores were replaced by a constant: no gradient reaches them (it would, in a row
    # with no key to see, whose probabilities are not 0).
    dscores = probs * (dprobs - delta[:, :, None, :, i:end]) * scale
    dscores = jnp.where(mask, dscores, 0.0).astype(dt)
    dscores = dscores.reshape(b, k, s, g * c)
    dk = dk.at[:, :, :s].add(dot(dscores, q_c, ((3,), (2,))))
    dqs.append(dot(keys_bkhs[:, :, :, :s], dscores, ((3,), (2,))).reshape(b, k, h, g, c))
  dq = jnp.concatenate(dqs, axis=4).transpose(0, 4, 1, 3, 2).reshape(b, t, n, h)
  return dq.astype(q_btnh.dtype), dk.astype(keys_bksh.dtype), dv.astype(dt), None


_attend_blocks.defvjp(_attend_blocks_vjp_fwd, _attend_blocks_vjp_bwd)


class RMSNorm(nn.Module):
  """RMSNorm over the last axis. plus_one (Gemma): the weight is stored as an offset from 1 and
  applied in float32 before the cast, as transformers' Gemma3RMSNorm does; Llama's casts first."""

  eps: float
  dtype: Any
  param_dtype: Any
  plus_one: bool = False
  axis_name: str = "norm"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    init = nn.initializers.zeros if self.plus_one else nn.initializers.ones
    scale = self.param(
      "scale",
      nn.with_logical_partitioning(init, (self.axis_name,)),
      (x.shape[-1],),
      self.param_dtype,
    )
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    if self.plus_one:
      return (normed * (1.0 + scale.astype(jnp.float32))).astype(self.dtype)
    return normed.astype(self.dtype) * scale.astype(self.dtype)


def make_norm(args: ModelArgs, name: str, axis_name: str = "norm") -> RMSNorm:
  return RMSNorm(
    args.rms_norm_eps, args.dtype, args.param_dtype, args.norm_plus_one, axis_name, name=name
  )


class AttentionInputs(NamedTuple):
  """What one kind of layer (full or sliding) attends with: rotary cos/sin [B, T, head_dim] and
  which keys each query sees [B, T, S]."""

  cos: Array
  sin: Array
  mask_bts: Array


class Proj(nn.Module):
  """A linear map contracting the last len(in_features) dims of x; optional bias and LoRA.

  The kernel is [*in_features, *out_features]. LoRA adds (x · A) · B × alpha/rank with
  A: [*in_features, rank], B: [rank, *out_features], both in the `lora` collection.
  """

  in_features: tuple[int, ...]
  out_features: tuple[int, ...]
  in_axes: tuple[str, ...]
  out_axes: tuple[str, ...]
  dtype: Any
  param_dtype: Any
  use_bias: bool = False
  lora_rank: int = 0
  lora_scale: float = 0.0

  @nn.compact
  def __call__(self, x: Array) -> Array:
    n_in = len(self.in_features)
    kernel = self.param(
      "kernel",
      nn.with_logical_partitioning(_KERNEL_INIT, self.in_axes + self.out_axes),
      self.in_features + self.out_features,
      self.param_dtype,
    )
    y = self._contract(x.astype(self.dtype), kernel.astype(self.dtype), n_in)
    if self.use_bias:
      bias = self.param(
        "bias",
        nn.with_logical_partitioning(nn.initializers.zeros, self.out_axes),
        self.out_features,
        self.param_dtype,
      )
      y = y + bias.astype(self.dtype)
    if self.lora_rank and (self.is_initializing() or self.has_variable("lora", "a")):
      a = self.variable(
        "lora",
        "a",
        nn.with_logical_partitioning(_LORA_A_INIT, self.in_axes + ("lora_rank",)),
        self.make_rng("params") if self.is_initializing() else None,
        self.in_features + (self.lora_rank,),
        jnp.float32,
      ).value
      b = self.variable(
        "lora",
        "b",
        nn.with_logical_partitioning(nn.initializers.zeros, ("lora_rank",) + self.out_axes),
        None,
        (self.lora_rank,) + self.out_features,
        jnp.float32,
      ).value
      low = self._contract(x.astype(self.dtype), a.astype(self.dtype), n_in)
      y = y + self._contract(low, b.astype(self.dtype), 1) * jnp.asarray(
        self.lora_scale, self.dtype
      )
    return y

  @staticmethod
  def _contract(x: Array, w: Array, n: int) -> Array:
    if x.dtype == jnp.float32:
      return _dot32(x, w, _contraction(x.ndim, n), x.dtype)
    return _contract_low(x, w, n)


def _contraction(ndim: int, n: int):
  """dot_general dims contracting the last `n` of `ndim` dims with a kernel's first `n`."""
  return ((tuple(range(ndim - n, ndim)), tuple(range(n))), ((), ()))


def _dot32(a: Array, b: Array, dims, dtype) -> Array:
  # Accumulate in float32 whatever the compute dtype: XLA:CPU takes its fast bf16 kernels only
  # for dots that ask for float32 results, and bf16 sums lose the small terms.
  return jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32).astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _contract_low(x: Array, w: Array, n: int) -> Array:
  """`Proj`'s contraction in a low-precision compute dtype, with a backward pass that stays in it.

  Autodiff of `_dot32` would hand the transposed dots a float32 cotangent (the transpose of the
  final cast) against bfloat16 operands, and XLA:CPU then runs them as float32 dots, several
  times slower than its bf16 kernels (a profile of the bf16 learner: its backward projections
  were all float32). The cotangent is exactly representable in the compute dtype (the output was
  rounded to it), so casting it back loses nothing: the backward computes the same products,
  accumulated in float32 as before; only the summation order may differ."""
  return _dot32(x, w, _contraction(x.ndim, n), x.dtype)


def _contract_low_fwd(x, w, n):
  return _contract_low(x, w, n), (x, w)


def _contract_low_bwd(n, residuals, g):
  x, w = residuals
  batch, out = x.ndim - n, w.ndim - n
  g = g.astype(x.dtype)
  dx = _dot32(
    g, w, ((tuple(range(batch, batch + out)), tuple(range(n, n + out))), ((), ())), x.dtype
  )
  dw = _dot32(x, g, ((tuple(range(batch)), tuple(range(batch))), ((), ())), w.dtype)
  return dx, dw


_contract_low.defvjp(_contract_low_fwd, _contract_low_bwd)


class DecoderLayer(nn.Module):
  """Pre-norm attention + gated MLP block: (carry, layer) -> (carry, None).

  Under nn.scan `layer` is the traced layer index and the cache in the carry is stacked; unrolled,
  `layer` is None, the cache is this layer's own and `layer_type` says whether it slides.
  `inputs` holds an AttentionInputs per layer type ("full_attention", "sliding_attention").
  """

  args: ModelArgs
  mesh: Mesh | None = None
  layer_type: str | None = None  # unrolled layers only

  def _proj(self, name, in_f, out_f, in_axes, out_axes, use_bias=False):
    a = self.args
    rank = a.lora_rank if name in a.lora_targets else 0
    return Proj(
      in_f,
      out_f,
      in_axes,
      out_axes,
      dtype=a.dtype,
      param_dtype=a.param_dtype,
      use_bias=use_bias,
      lora_rank=rank,
      lora_scale=a.lora_scale,
      name=name,
    )

  @nn.compact
  def __call__(
    self,
    carry,
    layer: Array | None,
    inputs: dict[str, AttentionInputs],
    cache_index: Array | None,
  ):
    a, mesh = self.args, self.mesh
    x, cache = carry
    d, n, k, h, f = a.hidden_size, a.num_heads, a.num_kv_heads, a.head_dim, a.intermediate_size
    norm = lambda name: make_norm(a, name)
    cos, sin, mask_bts = self._inputs(layer, inputs)

    # Attention.
    y = norm("input_norm")(x)
    if a.fused_qkv:
      qkv = self._proj("qkv_proj", (d,), ((n + 2 * k) * h,), ("embed",), (None,), a.qkv_bias)(y)
      q, kk, v = jnp.split(qkv.reshape(qkv.shape[:2] + (n + 2 * k, h)), (n, n + k), axis=2)
    else:
      q = self._proj("q_proj", (d,), (n, h), ("embed",), ("heads", "head_dim"), a.qkv_bias)(y)
      kk = self._proj("k_proj", (d,), (k, h), ("embed",), ("kv_heads", "head_dim"), a.qkv_bias)(y)
      v = self._proj("v_proj", (d,), (k, h), ("embed",), ("kv_heads", "head_dim"), a.qkv_bias)(y)
    if a.qk_norm:  # per head, before RoPE (Qwen3, Gemma 3)
      q = make_norm(a, "q_norm", "qk_norm")(q)
      kk = make_norm(a, "k_norm", "qk_norm")(kk)
    q = constrain(apply_rope(q, cos, sin), mesh, ("act_batch", "act_length", "act_heads", None))
    kk = constrain(
      apply_rope(kk, cos, sin), mesh, ("act_batch", "act_length", "act_kv_heads", None)
    )
    if cache is not None:
      # Write this step's keys/values at [layer, :, :, cache_index:cache_index+T] in place, then
      # attend over the layer's whole cache (unwritten slots are masked out).
      lead = () if layer is None else (layer,)
      start = lead + (0, 0, cache_index, 0)
      expand = (lambda u: u) if layer is None else (lambda u: u[None])
      cache = KVCache(
        jax.lax.dynamic_update_slice(cache.k, expand(heads_first(kk)).astype(cache.k.dtype), start),
        jax.lax.dynamic_update_slice(cache.v, expand(heads_first(v)).astype(cache.v.dtype), start),
      )
      if layer is None:
        keys, values = cache.k.astype(a.dtype), cache.v.astype(a.dtype)
      else:
        keys = jax.lax.dynamic_index_in_dim(cache.k, layer, 0, keepdims=False).astype(a.dtype)
        values = jax.lax.dynamic_index_in_dim(cache.v, layer, 0, keepdims=False).astype(a.dtype)
    else:
      keys, values = heads_first(kk), heads_first(v)
    out = attend(q, keys, values, mask_bts, k, a.attention_scale, causal=cache is None)
    out = constrain(out, mesh, ("act_batch", "act_length", "act_heads", None))
    out = self._proj("o_proj", (n, h), (d,), ("heads", "head_dim"), ("embed",))(out)
    if a.sandwich_norms:
      out = norm("attn_out_norm")(out)
    x = constrain(x + out, mesh, ("act_batch", "act_length", "act_embed"))

    # Gated MLP: SwiGLU, or GeGLU with tanh-approximated GELU (Gemma). Its input norm is
    # post_attn_norm in every family: Llama's post_attention_layernorm, Gemma's
    # pre_feedforward_layernorm (Gemma's post_attention_layernorm is attn_out_norm above).
    y = norm("post_attn_norm")(x)
    gate = self._proj("gate_proj", (d,), (f,), ("embed",), ("mlp",))(y)
    up = self._proj("up_proj", (d,), (f,), ("embed",), ("mlp",))(y)
    act = nn.silu(gate) if a.mlp_activation == "silu" else nn.gelu(gate, approximate=True)
    hidden = constrain(act * up, mesh, ("act_batch", "act_length", "act_mlp"))
    out = self._proj("down_proj", (f,), (d,), ("mlp",), ("embed",))(hidden)
    if a.sandwich_norms:
      out = norm("mlp_out_norm")(out)
    x = constrain(x + out, mesh, ("act_batch", "act_length", "act_embed"))
    return (x, cache), None

  def _inputs(self, layer: Array | None, inputs: dict[str, AttentionInputs]) -> AttentionInputs:
    """This layer's rotary tables and mask: chosen statically when unrolled or when all layers
    are alike, by the traced layer index under nn.scan (a select over small arrays)."""
    types = self.args.layer_types
    if not self.args.has_sliding_layers:
      return inputs["full_attention"]
    if layer is None:
      return inputs[self.layer_type or "full_attention"]
    sliding = jnp.asarray(np.asarray([t == "sliding_attention" for t in types]))[layer]
    return jax.tree.map(
      lambda s, f: jnp.where(sliding, s, f), inputs["sliding_attention"], inputs["full_attention"]
    )


class Decoder(nn.Module):
  """tokens [B, T] -> logits [B, T, V] (float32), optionally through a KV cache.

  Without a cache, `mask_bt` marks real (non-padding) tokens and attention is causal over the
  given sequence. With a cache, the T new tokens go to slots [cache_index, cache_index + T) and
  `mask_bt` is [B, slots]: which cache slots hold real tokens (including the new ones).
  `positions_bt` are the rotary positions (left padding makes them differ from slot indices).
  Returns (logits [B, T, V] float32, or [B, 1, V] with last_only, or [B, W, V] at the positions
  `logits_at` [B, W] gives, or the final normed hidden states with return_hidden; the updated
  cache or None).
  """

  args: ModelArgs
  mesh: Mesh | None = None

  @nn.compact
  def __call__(
    self,
    tokens_bt: Array,
    positions_bt: Array,
    mask_bt: Array | None = None,
    cache: KVCache | None = None,
    cache_index: Array | None = None,
    return_hidden: bool = False,
    last_only: bool = False,
    logits_at: Array | None = None,
  ):
    a, mesh = self.args, self.mesh
    b, t = tokens_bt.shape
    embedding = self.param(
      "embedding",
      nn.with_logical_partitioning(_KERNEL_INIT, ("vocab", "embed")),
      (a.vocab_size, a.hidden_size),
      a.param_dtype,
    )
    # FSDP: gather the table's embed dimension first; a row gather from a table split along
    # embed cannot produce batch-split rows without replicating everything.
    table = constrain(embedding, mesh, ("vocab", None))
    x = jnp.take(table, tokens_bt, axis=0)
    if a.scale_embeddings:  # Gemma: sqrt(hidden) rounded to the table's dtype, as transformers
      x = x * jnp.asarray(math.sqrt(a.hidden_size), table.dtype)
    x = x.astype(a.dtype)
    x = constrain(x, mesh, ("act_batch", "act_length", "act_embed"))

    if cache is None:
      query_slots = jnp.arange(t)
      key_slots = jnp.arange(t)
      key_valid = jnp.ones((b, t), bool) if mask_bt is None else mask_bt.astype(bool)
      cache_index = None
    else:
      if mask_bt is None or cache_index is None:
        raise ValueError("a KV cache needs mask_bt (valid slots) and cache_index")
      query_slots = cache_index + jnp.arange(t)
      key_slots = jnp.arange(cache.slots)
      key_valid = mask_bt.astype(bool)
      cache_index = jnp.asarray(cache_index, jnp.int32)
    mask_bts = (key_slots[None, None, :] <= query_slots[None, :, None]) & key_valid[:, None, :]
    inputs = {
      "full_attention": AttentionInputs(*rope_cos_sin(positions_bt, rope_inv_freq(a)), mask_bts)
    }
    if a.has_sliding_layers:
      # The window counts real tokens (valid slots), so padding inside a row never narrows it; for
      # left-padded rows, as transformers builds them, that equals its distance in slots.
      key_pos = jnp.cumsum(key_valid.astype(jnp.int32), axis=-1)  # [B, S]
      query_pos = jnp.take(key_pos, query_slots, axis=1)  # [B, T]
      recent = key_pos[:, None, :] > query_pos[:, :, None] - a.sliding_window
      cos_l, sin_l = rope_cos_sin(positions_bt, rope_inv_freq(a, sliding=True))
      inputs["sliding_attention"] = AttentionInputs(cos_l, sin_l, mask_bts & recent)

    layer_cls = DecoderLayer
    if a.remat:
      layer_cls = nn.remat(layer_cls, prevent_cse=False, static_argnums=())
    if a.scan_layers:
      stack = nn.scan(
        layer_cls,
        variable_axes={"params": 0, "lora": 0},
        split_rngs={"params": True},
        in_axes=(0, nn.broadcast, nn.broadcast),
        length=a.num_layers,
        metadata_params={nn.PARTITION_NAME: "layers"},
      )(a, mesh, name="layers")
      (x, cache), _ = stack((x, cache), jnp.arange(a.num_layers), inputs, cache_index)
    else:
      # One program per layer, each with its own weight arrays. XLA:CPU copies a scanned layer's
      # weight slice before every matmul; for memory-bound decoding that doubles the weight reads.
      k_out, v_out = [], []
      for i in range(a.num_layers):
        layer_cache = None if cache is None else KVCache(cache.k[i], cache.v[i])
        layer_type = a.layer_types[i] if a.layer_types else None
        (x, layer_cache), _ = layer_cls(a, mesh, layer_type, name=f"layers_{i}")(
          (x, layer_cache), None, inputs, cache_index
        )
        if layer_cache is not None:
          k_out.append(layer_cache.k)
          v_out.append(layer_cache.v)
      cache = None if cache is None else KVCache(tuple(k_out), tuple(v_out))

    if last_only:  # prefill needs only the next-token logits: skip [B, T, vocab]
      x = x[:, -1:]
    elif logits_at is not None:  # the learner scores only the response's positions
      x = jnp.take_along_axis(x, logits_at[..., None], axis=1)
    x = make_norm(a, "final_norm")(x)
    if return_hidden:
      return x, cache
    if a.tie_embeddings:
      logits = jnp.einsum(
        "btd,vd->btv", x, embedding.astype(a.dtype), preferred_element_type=jnp.float32
      )
    else:
      head = self.param(
        "lm_head",
        nn.with_logical_partitioning(_KERNEL_INIT, ("embed", "vocab")),
        (a.hidden_size, a.vocab_size),
        a.param_dtype,
      )
      logits = jnp.einsum(
        "btd,dv->btv", x, head.astype(a.dtype), preferred_element_type=jnp.float32
      )
    logits = constrain(logits.astype(jnp.float32), mesh, ("act_batch", "act_length", "act_vocab"))
    return logits, cache


def positions_from_mask(mask_bt: Array) -> Array:
  """Rotary positions for left-padded rows: 0 at the first real token, pads clipped to 0."""
  return jnp.maximum(jnp.cumsum(mask_bt.astype(jnp.int32), axis=-1) - 1, 0)


def merge_lora(variables: dict, lora_scale: float) -> dict:
  """{'params': ...} with every adapter folded into its kernel: W + A·B·alpha/rank.

  Works on stacked ([L, ...]) and unrolled layers alike. The merged model computes what the
  adapted one does up to float rounding, with no low-rank matmuls.
  """
  params = traverse_util.flatten_dict(dict(variables["params"]), sep="/")
  for key, a in traverse_util.flatten_dict(dict(variables.get("lora", {})), sep="/").items():
    if not key.endswith("/a"):
      continue
    module = key[: -len("/a")]
    b = variables["lora"]
    for part in module.split("/") + ["b"]:
      b = b[part]
    kernel = params[module + "/kernel"]
    lead = a.ndim + b.ndim - 2 - kernel.ndim  # 1 when layers are stacked, else 0
    rank = a.shape[-1]
    delta = a.reshape(a.shape[:lead] + (-1, rank)) @ b.reshape(b.shape[:lead] + (rank, -1))
    params[module + "/kernel"] = kernel + (delta.reshape(kernel.shape) * lora_scale).astype(
      kernel.dtype
    )
  return {"params": traverse_util.unflatten_dict(params, sep="/")}


def unstack_layers(variables: dict, num_layers: int) -> dict:
  """Stacked `layers` subtrees ([L, ...] leaves) -> `layers_0` ... `layers_{L-1}`, per collection."""
  out = {}
  for collection, tree in variables.items():
    tree = dict(tree)
    stacked = tree.pop("layers", None)
    if stacked is not None:
      for i in range(num_layers):
        tree[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
    out[collection] = tree
  return out


def cpu_layout_args(args: ModelArgs) -> ModelArgs:
  return args.replace(scan_layers=False, tie_embeddings=False, fused_qkv=True, lora_rank=0)


def to_cpu_layout(variables: dict, args: ModelArgs) -> dict:
  """Base weights ({'params'}) of `args`' model -> those of `cpu_layout_args(args)`' model.

  Three changes, each measured on XLA:CPU decoding SmolLM2-135M at batch 8: layers unrolled
  (XLA:CPU copies a scanned layer's weight slice before every matmul; 39 -> 30 ms a step), q/k/v
  in one projection (one wide matmul streams its weights faster than three narrow ones), and the
  output head stored [embed, vocab] (faster than reading the tied [vocab, embed] table
  transposed). The model computes the same function; only the summation order may differ.
  """
  params = unstack_layers(variables, args.num_layers)["params"]  # no-op when already unrolled
  flat = traverse_util.flatten_dict(params, sep="/")
  for key in [k for k in flat if k.endswith("/q_proj/kernel")]:
    layer = key[: -len("/q_proj/kernel")]
    for part in ("kernel", "bias"):
      names = [f"{layer}/{p}_proj/{part}" for p in "qkv"]
      if names[0] in flat:  # [..., heads, head_dim] -> [..., heads * head_dim], side by side
        arrays = [flat.pop(n) for n in names]
        flat[f"{layer}/qkv_proj/{part}"] = jnp.concatenate(
          [x.reshape(x.shape[:-2] + (-1,)) for x in arrays], axis=-1
        )
  if args.tie_embeddings:
    flat["lm_head"] = flat["embedding"].T
  return {"params": traverse_util.unflatten_dict(flat, sep="/")}


def init_abstract(args: ModelArgs, mesh: Mesh | None = None) -> Any:
  """Shapes and logical axes of every variable (params and, with LoRA, lora), without memory."""
  model = Decoder(args, mesh)
  tokens = jnp.zeros((1, 1), jnp.int32)
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens, tokens))


def count_params(tree: Any) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
