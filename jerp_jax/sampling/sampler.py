"""Batched generation: one jitted prefill, then decode steps in a jitted loop over a KV cache.

Prompts are left-padded to a bucket (a power of two), and the batch to a power of two that the
mesh's batch axes divide, so a run compiles a handful of programs whatever its prompts. The
generation state is a pytree whose static parts (the prompt bucket) are marked as such; model
weights are an argument of every call, never captured, so the same compiled program serves new
weights after each policy update. The state is donated to each decode call: the cache is updated
in place instead of copied.

Each sampled token comes with its log-probability under the distribution it was drawn from before
top-k/top-p truncation: log_softmax(logits / temperature), or log_softmax(logits) when greedy.
The learner recomputes exactly this from a full forward pass (tests check they agree).

EOS ends a row on the device. Stop strings need text, so with stop strings the decode loop runs
in chunks of `decode_chunk` steps and the host checks the new text between chunks; a row that
hit a stop string is cut right after the token that completed it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Sequence

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from jerp_jax.model import llama
from jerp_jax.model.llama import Decoder, KVCache
from jerp_jax.parallel import mesh as mesh_lib


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.max_new_tokens = 128
  c.temperature = 1.0  # 0: greedy
  c.top_p = 1.0  # 1.0: off
  c.top_k = 0  # 0: off
  c.stop_strings = ()  # e.g. ("</action>",)
  c.min_prompt_bucket = 32  # prompt lengths are padded to powers of two from here
  c.decode_chunk = 16  # decode steps per device call when stop strings need host checks
  # The weight layout while sampling (see Sampler.prepare): 'cpu' (unrolled layers, fused q/k/v,
  # an untied [embed, vocab] head), 'trained' (as trained), or 'auto' (cpu on the CPU backend).
  c.layout = "auto"
  c.seed = 0
  return c


def validate_config(c: ml_collections.ConfigDict) -> None:
  def fail(field, expected):
    raise ValueError(f"sampling.{field}={c[field]!r}: expected {expected}")

  if c.max_new_tokens < 1:
    fail("max_new_tokens", "a positive integer")
  if c.temperature < 0:
    fail("temperature", ">= 0 (0 means greedy)")
  if not 0 < c.top_p <= 1:
    fail("top_p", "a number in (0, 1]")
  if c.top_k < 0:
    fail("top_k", ">= 0 (0 means off)")
  if c.decode_chunk < 1:
    fail("decode_chunk", "a positive integer")
  if c.layout not in ("auto", "cpu", "trained"):
    fail("layout", "'auto', 'cpu' or 'trained'")


def cpu_layout_option(c: ml_collections.ConfigDict) -> bool | None:
  return {"auto": None, "cpu": True, "trained": False}[c.layout]


@dataclasses.dataclass(frozen=True)
class Completion:
  prompt_ids: list[int]
  token_ids: list[int]  # generated tokens, EOS included when it ended the row
  logprobs: list[float]  # one per generated token
  text: str
  finish_reason: str  # 'eos', 'stop' (a stop string) or 'length'


@flax.struct.dataclass
class DecodeState:
  tokens: jax.Array  # [B, P + N] int32: left-padded prompt, then generated tokens
  valid: jax.Array  # [B, P + N] bool: slots holding real tokens
  cache: KVCache  # [L, B, K, P + N, H] (or per-layer tuples when unrolled)
  positions: jax.Array  # [B] rotary position of the next token to feed
  logprobs: jax.Array  # [B, N] float32
  done: jax.Array  # [B] bool
  step: jax.Array  # () int32: generated tokens so far (the last one not yet fed)
  rng: jax.Array
  prompt_len: int = flax.struct.field(pytree_node=False)  # P, the bucket: static

  @property
  def max_new_tokens(self) -> int:
    return self.tokens.shape[1] - self.prompt_len


# --- pure sampling functions --------------------------------------------------------------------


def sample_logits(
  logits_bv: jax.Array,
  rng: jax.Array,
  temperature: jax.Array,
  *,
  greedy: bool,
  top_k: int,
  top_p: float,
) -> tuple[jax.Array, jax.Array]:
  """Next tokens [B] and their log-probs [B] under log_softmax(logits / temperature)."""
  if greedy:
    tokens = jnp.argmax(logits_bv, axis=-1)
    logp = jax.nn.log_softmax(logits_bv, axis=-1)
  else:
    scaled = logits_bv / temperature
    logp = jax.nn.log_softmax(scaled, axis=-1)
    masked = scaled
    if top_k:
      kth = jax.lax.top_k(scaled, top_k)[0][:, -1:]
      masked = jnp.where(scaled < kth, -jnp.inf, masked)
    if top_p < 1.0:
      sorted_desc = -jnp.sort(-masked, axis=-1)
      probs = jax.nn.softmax(sorted_desc, axis=-1)
      # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
      keep = (jnp.cumsum(probs, axis=-1) - probs) < top_p
      threshold = jnp.min(jnp.where(keep, sorted_desc, jnp.inf), axis=-1, keepdims=True)
      masked = jnp.where(masked < threshold, -jnp.inf, masked)
    tokens = jax.random.categorical(rng, masked, axis=-1)
  chosen = jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]
  return tokens.astype(jnp.int32), chosen


def bucket(length: int, minimum: int) -> int:
  return max(minimum, 1 << max(0, math.ceil(math.log2(max(length, 1)))))


# --- the sampler --------------------------------------------------------------------------------


class Sampler:
  """Generates for a batch of token-id prompts with the given weights."""

  def __init__(
    self,
    model: Decoder,
    mesh: Mesh,
    eos_ids: Sequence[int],
    pad_id: int,
    tokenizer: Any = None,
    max_seq_len: int | None = None,
    min_prompt_bucket: int = 32,
    decode_chunk: int = 16,
    cpu_layout: bool | None = None,
  ):
    # The CPU layout (llama.to_cpu_layout) decodes ~2x faster on XLA:CPU at the price of a second
    # copy of the weights while sampling. On GPU/TPU a scanned layer's weight slice fuses into its
    # matmul, so the trained layout is kept (None: decide by backend).
    if cpu_layout is None:
      cpu_layout = jax.default_backend() == "cpu"
    self.source_args = model.args
    self.cpu_layout = cpu_layout
    if cpu_layout:
      model = Decoder(llama.cpu_layout_args(model.args), model.mesh)
    self.model = model
    self.mesh = mesh
    self._prepared: tuple[list, Any] | None = None
    self.eos_ids = tuple(int(e) for e in eos_ids)
    self.pad_id = int(pad_id)
    self.tokenizer = tokenizer
    self.max_seq_len = max_seq_len or model.args.max_position_embeddings
    self.min_prompt_bucket = min_prompt_bucket
    self.decode_chunk = decode_chunk
    self.batch_shards = mesh_lib.mesh_axis_size(mesh, "act_batch")
    self._row = mesh_lib.sharding(mesh, ("act_batch",))
    self._row_len = mesh_lib.sharding(mesh, ("act_batch", None))
    self._cache = jax.tree.map(
      lambda axes: mesh_lib.sharding(mesh, axes),
      llama.cache_axes(model.args),
      is_leaf=lambda x: isinstance(x, tuple) and all(isinstance(a, str) for a in x),
    )

  def prepare(self, variables: dict) -> dict:
    """The weights in the form this sampler runs: LoRA merged, then the CPU layout if chosen.

    Merging adapters takes ~420 small matmuls per step off the decode path. The conversion runs
    once per set of weights: the result for the last arrays seen is kept, so calling generate()
    again with the same weights costs nothing.
    """
    if not self.cpu_layout and "lora" not in variables:
      return variables
    leaves = jax.tree.leaves(variables)
    if self._prepared is not None and len(leaves) == len(self._prepared[0]):
      if all(a is b for a, b in zip(leaves, self._prepared[0])):
        return self._prepared[1]
    abstract = llama.init_abstract(self.model.args.replace(lora_rank=0), self.mesh)
    shardings = mesh_lib.tree_shardings(self.mesh, abstract)
    args, cpu_layout = self.source_args, self.cpu_layout

    def convert(v):
      v = llama.merge_lora(v, args.lora_scale) if "lora" in v else v
      return llama.to_cpu_layout(v, args) if cpu_layout else v

    prepared = jax.jit(convert, out_shardings=shardings)(variables)
    self._prepared = (leaves, prepared)
    return prepared

  # Compiled once per (shapes, static options); weights are arguments.
  @functools.partial(jax.jit, static_argnums=(0, 5, 6, 7, 8))
  def _prefill(self, variables, tokens, valid, rng, p, greedy, top_k, top_p, temperature):
    b, total = tokens.shape
    args = self.model.args
    cache = jax.lax.with_sharding_constraint(KVCache.zeros(args, b, total, args.dtype), self._cache)
    prompt_valid = valid[:, :p]
    positions = jnp.maximum(jnp.cumsum(prompt_valid.astype(jnp.int32), axis=1) - 1, 0)
    logits, cache = self.model.apply(
      variables, tokens[:, :p], positions, valid, cache, jnp.int32(0), last_only=True
    )
    rng, key = jax.random.split(rng)
    first, logp = sample_logits(
      logits[:, 0], key, temperature, greedy=greedy, top_k=top_k, top_p=top_p
    )
    tokens = tokens.at[:, p].set(first)
    valid = valid.at[:, p].set(True)
    n = total - p
    logprobs = jnp.zeros((b, n), jnp.float32).at[:, 0].set(logp)
    done = jnp.isin(first, jnp.asarray(self.eos_ids)) | (n == 1)
    return DecodeState(
      tokens, valid, cache, positions[:, -1] + 1, logprobs, done, jnp.int32(1), rng, p
    )

  @functools.partial(jax.jit, static_argnums=(0, 3, 4, 5, 6), donate_argnums=(2,))
  def _decode(self, variables, state: DecodeState, steps, greedy, top_k, top_p, temperature):
    p, n = state.prompt_len, state.max_new_tokens
    eos = jnp.asarray(self.eos_ids)
    stop_at = jnp.minimum(state.step + steps, n)

    def cond(s: DecodeState):
      return (s.step < stop_at) & ~jnp.all(s.done)

    def body(s: DecodeState):
      slot = p + s.step - 1  # the newest token: feed it, write its keys at its slot
      last = jax.lax.dynamic_slice_in_dim(s.tokens, slot, 1, axis=1)
      logits, cache = self.model.apply(
        variables, last, s.positions[:, None], s.valid, s.cache, slot
      )
      rng, key = jax.random.split(s.rng)
      nxt, logp = sample_logits(
        logits[:, 0], key, temperature, greedy=greedy, top_k=top_k, top_p=top_p
      )
      live = ~s.done
      nxt = jnp.where(live, nxt, self.pad_id)
      tokens = jax.lax.dynamic_update_slice_in_dim(s.tokens, nxt[:, None], slot + 1, axis=1)
      valid = jax.lax.dynamic_update_slice_in_dim(s.valid, live[:, None], slot + 1, axis=1)
      logprobs = jax.lax.dynamic_update_slice_in_dim(
        s.logprobs, jnp.where(live, logp, 0.0)[:, None], s.step, axis=1
      )
      done = s.done | jnp.isin(nxt, eos)
      return s.replace(
        tokens=tokens,
        valid=valid,
        cache=cache,
        positions=s.positions + 1,
        logprobs=logprobs,
        done=done,
        step=s.step + 1,
        rng=rng,
      )

    return jax.lax.while_loop(cond, body, state)

  def generate(
    self,
    variables,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    stop_strings: Sequence[str] = (),
    seed: int = 0,
  ) -> list[Completion]:
    if not prompts:
      return []
    if any(len(p) == 0 for p in prompts):
      raise ValueError("every prompt needs at least one token")
    if max_new_tokens < 1:
      raise ValueError(f"max_new_tokens={max_new_tokens}: expected a positive integer")
    if stop_strings and self.tokenizer is None:
      raise ValueError("stop_strings need a tokenizer to read the generated text")
    longest = max(len(p) for p in prompts)
    p = bucket(longest, self.min_prompt_bucket)
    if p + max_new_tokens > self.max_seq_len:
      p = max(longest, self.max_seq_len - max_new_tokens)
      if longest + max_new_tokens > self.max_seq_len:
        raise ValueError(
          f"a prompt of {longest} tokens + max_new_tokens={max_new_tokens} exceeds "
          f"model.max_seq_len={self.max_seq_len}"
        )
    b = len(prompts)
    b_pad = bucket(b, 1)
    b_pad = -(-max(b_pad, self.batch_shards) // self.batch_shards) * self.batch_shards
    total = p + max_new_tokens

    tokens = np.full((b_pad, total), self.pad_id, np.int32)
    valid = np.zeros((b_pad, total), bool)
    for i, ids in enumerate(prompts):
      tokens[i, p - len(ids) : p] = ids
      valid[i, p - len(ids) : p] = True
    for i in range(b, b_pad):  # filler rows: one real token so no row is all padding
      tokens[i, p - 1] = self.pad_id
      valid[i, p - 1] = True

    variables = self.prepare(variables)
    greedy = temperature == 0
    temp = jnp.float32(1.0 if greedy else temperature)
    static = (greedy, int(top_k), float(top_p))
    state = self._prefill(
      variables,
      jax.device_put(tokens, self._row_len),
      jax.device_put(valid, self._row_len),
      jax.random.PRNGKey(seed),
      p,
      *static,
      temp,
    )
    chunk = self.decode_chunk if stop_strings else max_new_tokens
    stopped_at: dict[int, int] = {}
    while True:
      done = np.asarray(state.done)
      step = int(state.step)
      if stop_strings:
        self._check_stops(np.asarray(state.tokens[:, p : p + step]), b, stop_strings, stopped_at)
        if stopped_at:
          done = done.copy()
          done[list(stopped_at)] = True
          state = state.replace(done=jax.device_put(done, self._row))
      if done[:b].all() or step >= max_new_tokens:
        break
      state = self._decode(variables, state, chunk, *static, temp)

    out_tokens = np.asarray(state.tokens[:, p:])
    out_logp = np.asarray(state.logprobs)
    results = []
    for i in range(b):
      row = out_tokens[i, : int(state.step)].tolist()
      reason = "length"
      cut = len(row)
      for j, t in enumerate(row):
        if t in self.eos_ids:
          cut, reason = j + 1, "eos"
          break
      if i in stopped_at and stopped_at[i] <= cut:
        cut, reason = stopped_at[i], "stop"
      ids = row[:cut]
      text = self.tokenizer.decode(ids) if self.tokenizer is not None else ""
      results.append(Completion(list(prompts[i]), ids, out_logp[i, :cut].tolist(), text, reason))
    return results

  def _check_stops(
    self, generated: np.ndarray, b: int, stop_strings: Sequence[str], stopped_at: dict[int, int]
  ) -> None:
    """Records, per row, the length of the prefix that ends with the first stop string."""
    for i in range(b):
      if i in stopped_at:
        continue
      row = generated[i].tolist()
      text = self.tokenizer.decode(row)
      if not any(s in text for s in stop_strings):
        continue
      for j in range(1, len(row) + 1):  # the shortest prefix whose text holds a stop string
        if any(s in self.tokenizer.decode(row[:j]) for s in stop_strings):
          stopped_at[i] = j
          break
