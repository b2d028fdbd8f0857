"""Batched generation: one jitted prefill, then decode steps in a jitted loop over a KV cache.

Prompts are left-padded to a bucket (a multiple of `prompt_bucket`, or a power of two), and the
batch to a power of two that the mesh's batch axes divide, so a run compiles a handful of programs
whatever its prompts. What to generate is one `SamplingParams` value, passed whole by every
caller. The generation state is a pytree whose static parts (the prompt bucket) are marked as
such; model weights are an argument of every call, never captured, so the same compiled program
serves new weights after each policy update. The state is donated to each decode call: the cache
is updated in place instead of copied.

Shared prompt heads are prefilled once (sampling/prefix.py keeps the books): the KV of whole
blocks of prompt tokens stays in a device pool, heads that several rows of a call share are
prefilled first as one row each, and every row then copies its cached blocks into slots [0, M)
of its cache and prefills only the rest of its prompt, left-padded into [M, P), its rotary
positions carrying on after its head. Attention skips the gap between, so the logits are those of
a full prefill up to the order of float sums.

Each sampled token comes with its log-probability under the distribution it was drawn from before
top-k/top-p truncation and any grammar's mask: log_softmax(logits / temperature), or log_softmax(logits) when greedy.
The learner recomputes exactly this from a full forward pass (tests check they agree).

A row may be decoded under a grammar (sampling/grammar.py: one automaton per row, its tables
stacked for the batch; or a trie of token sequences, such as a turn's admissible actions): its
logits are masked to the tokens the automaton allows and its state
moves with each sampled token, inside the same jitted loop. Without one (grammar=None) the state
carries no grammar leaves and the programs are those of plain sampling. Under a trie, once no
live row has a choice left (an action's closing tag, the rest of the only action that starts
so), the loop stops and one call of TAIL tokens scores what remains of every row.

EOS ends a row on the device. Stop strings need text, so with stop strings the decode loop runs
in chunks of `decode_chunk` steps and the host checks the new text between chunks; a row that
hit a stop string is cut right after the token that completed it.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import time
from typing import Any, Sequence

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from jerp_jax import checks
from jerp_jax.model import llama
from jerp_jax.model.llama import Decoder, KVCache
from jerp_jax.parallel import buckets, hosts
from jerp_jax.parallel import mesh as mesh_lib
from jerp_jax.sampling import grammar as grammar_lib
from jerp_jax.sampling import prefix as prefix_lib


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.max_new_tokens = 128
  c.temperature = 1.0  # 0: greedy
  c.top_p = 1.0  # 1.0: off
  c.top_k = 0  # 0: off
  c.stop_strings = ()  # e.g. ("</action>",)
  # Prompt lengths are padded to multiples of prompt_bucket (0: powers of two), at least
  # min_prompt_bucket. Multiples of 64 compile a few more programs than powers of two, but a
  # 300-token prompt pays for 320 slots instead of 512.
  c.prompt_bucket = 64
  c.min_prompt_bucket = 32
  c.decode_chunk = 16  # decode steps per device call when stop strings need host checks
  # Under a trie of choices, end the rows in one call once none has a choice left (see TAIL).
  c.forced_tails = True
  # Shared prompt heads are prefilled once: the KV of whole blocks of prefix_block prompt tokens
  # stays on the device (at most prefix_cache_tokens of them, least recently used evicted) and a
  # row whose prompt starts with cached blocks prefills only the rest. See sampling/prefix.py.
  c.prefix_cache = True
  c.prefix_block = 64
  c.prefix_cache_tokens = 8192  # SmolLM2-135M in float32: 45 KB a token, 370 MB in all
  # The weight layout while sampling (see Sampler.prepare): 'cpu' (unrolled layers, fused q/k/v,
  # an untied [embed, vocab] head), 'trained' (as trained), or 'auto' (cpu on the CPU backend).
  c.layout = "auto"
  c.seed = 0
  return c


def _params_problems(c: Any) -> list[tuple[str, str]]:
  """(field, what was expected) for each bad sampling setting of a config block or SamplingParams."""
  get = (
    c.get
    if isinstance(c, (dict, ml_collections.ConfigDict))
    else lambda k, d=None: getattr(c, k, d)
  )
  out = []
  if not isinstance(get("max_new_tokens"), int) or get("max_new_tokens") < 1:
    out.append(("max_new_tokens", "a positive integer"))
  if get("temperature", 1.0) < 0:
    out.append(("temperature", ">= 0 (0 means greedy)"))
  if not 0 < get("top_p", 1.0) <= 1:
    out.append(("top_p", "a number in (0, 1]"))
  if not isinstance(get("top_k", 0), int) or get("top_k", 0) < 0:
    out.append(("top_k", "an integer >= 0 (0 means off)"))
  stops = get("stop_strings", ())
  if isinstance(stops, str) or not all(isinstance(x, str) and x for x in stops):
    out.append(("stop_strings", "a tuple of non-empty strings"))
  return out


def validate_config(c: ml_collections.ConfigDict, prefix: str = "sampling") -> None:
  fail = functools.partial(checks.fail, c, prefix)

  for field, expected in _params_problems(c):
    fail(field, expected)
  positive = checks.POSITIVE_INT
  checks.require(c, prefix, {
    "decode_chunk": positive,
    "prompt_bucket": checks.saying(checks.COUNT, "an integer >= 0 (0 means powers of two)"),
    "min_prompt_bucket": positive, "prefix_cache": checks.BOOL, "prefix_block": positive,
    "forced_tails": checks.BOOL,
    "prefix_cache_tokens": checks.int_at_least(c.prefix_block, f"prefix_block={c.prefix_block}"),
    "layout": ("'auto', 'cpu' or 'trained'", lambda v: v in ("auto", "cpu", "trained")),
  })  # fmt: skip


def cpu_layout_option(c: ml_collections.ConfigDict) -> bool | None:
  return {"auto": None, "cpu": True, "trained": False}[c.layout]


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """What to generate: one value that every caller passes whole, so no setting is dropped on the
  way. Variants are `dataclasses.replace(params, temperature=0.0)`."""

  max_new_tokens: int
  temperature: float = 1.0  # 0: greedy
  top_p: float = 1.0  # 1.0: off
  top_k: int = 0  # 0: off
  stop_strings: tuple[str, ...] = ()

  def __post_init__(self):
    object.__setattr__(self, "stop_strings", tuple(self.stop_strings))
    for field, expected in _params_problems(self):
      raise ValueError(f"SamplingParams.{field}={getattr(self, field)!r}: expected {expected}")

  @property
  def greedy(self) -> bool:
    return self.temperature == 0

  @classmethod
  def from_config(
    cls, c: ml_collections.ConfigDict, *, where: str = "sampling", **overrides
  ) -> SamplingParams:
    """The fields of a config block (`sampling`, `rules.reviser`, ...), then the overrides.

    Fields the block lacks take the defaults above; a bad value fails with `where.field`.
    """
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
      raise ValueError(f"SamplingParams.from_config: unknown fields {unknown}; expected {fields}")
    values = {f: c[f] for f in fields if f in c}
    values.update(overrides)
    if "stop_strings" in values and not isinstance(values["stop_strings"], str):
      values["stop_strings"] = tuple(values["stop_strings"])
    for field, expected in _params_problems(values):
      raise ValueError(f"{where}.{field}={values.get(field)!r}: expected {expected}")
    return cls(**values)


@dataclasses.dataclass(frozen=True)
class Completion:
  prompt_ids: list[int]
  token_ids: list[int]  # generated tokens, EOS included when it ended the row
  logprobs: list[float]  # one per generated token
  text: str
  finish_reason: str  # 'eos', 'stop' (a stop string) or 'length'


# Under a choice among token sequences (agent.admissible_only), once every live row's trie leaves
# it one path to the end, those rows finish in one model call of TAIL tokens (the newest and up
# to TAIL - 1 forced ones, e.g. an action's closing tag) instead of a decode step per token.
TAIL = 8


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
  forwards: jax.Array  # () int32: the decode's model calls so far (steps and forced tails)
  prompt_len: int = flax.struct.field(pytree_node=False)  # P, the bucket: static
  # Rows' automaton states under a grammar; None (no leaves) keeps the unconstrained program.
  grammar: grammar_lib.RowState | None = None

  @property
  def max_new_tokens(self) -> int:
    return self.tokens.shape[1] - self.prompt_len


# --- pure sampling functions --------------------------------------------------------------------


def logit_scale(temperature: jax.Array) -> jax.Array:
  """What logits are divided by: the temperature, or 1 when it is 0 (greedy)."""
  return jnp.where(temperature == 0, jnp.float32(1.0), temperature)


def sample_logits(
  logits_bv: jax.Array,
  rng: jax.Array,
  temperature: jax.Array,
  *,
  top_k: int,
  top_p: float,
) -> tuple[jax.Array, jax.Array]:
  """Next tokens [B] and their log-probs [B] under log_softmax(logits / temperature); at
  temperature 0 the argmax, under log_softmax(logits).

  Greedy is decided on the traced temperature, not by a Python flag, so that a greedy play (an
  evaluation) and a sampled one (a rollout) of the same shapes run one compiled program: each
  program of the default's sampler took 8-13 s to compile on a 2-core CPU. The draw that greedy
  rows do not use costs little next to the model's step."""
  scaled = logits_bv / logit_scale(temperature)
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
  sampled = jax.random.categorical(rng, masked, axis=-1)
  tokens = jnp.where(temperature == 0, jnp.argmax(logits_bv, axis=-1), sampled)
  chosen = jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]
  return tokens.astype(jnp.int32), chosen


def gather_blocks(pool_x: jax.Array, table: jax.Array) -> jax.Array:
  """Pool blocks [(L,) blocks, K, block, H] named by table [B, n] -> [(L,) B, K, n * block, H]."""
  lead = pool_x.ndim - 4
  x = jnp.moveaxis(jnp.take(pool_x, table, axis=lead), lead + 1, lead + 2)  # [(L,) B, K, n, b, H]
  return x.reshape(x.shape[: lead + 2] + (-1, x.shape[-1]))


def _shape(grammar) -> tuple:
  """What of a grammar makes a new program: its kind and its table's shape."""
  if grammar is None:
    return ()
  table = getattr(grammar, "next_state", None)
  table = grammar.child_token if table is None else table
  return ((type(grammar).__name__,) + table.shape,)


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
    prompt_bucket: int = 64,
    min_prompt_bucket: int = 32,
    decode_chunk: int = 16,
    cpu_layout: bool | None = None,
    prefix_cache: bool = True,
    prefix_block: int = 64,
    prefix_cache_tokens: int = 8192,
    forced_tails: bool = True,
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
    # (version or None, the leaves seen when version is None, the prepared weights)
    self._prepared: tuple[int | None, list | None, Any] | None = None
    self.conversions = 0  # weight conversions run by prepare(): tests and benchmarks read it
    self._convert = None  # prepare()'s jitted conversion, made on first use
    self.eos_ids = tuple(int(e) for e in eos_ids)
    self.pad_id = int(pad_id)
    self.tokenizer = tokenizer
    self.max_seq_len = max_seq_len or model.args.max_position_embeddings
    self.prompt_bucket = prompt_bucket
    self.min_prompt_bucket = min_prompt_bucket
    self.decode_chunk = decode_chunk
    self.forced_tails = forced_tails
    self.batch_shards = mesh_lib.mesh_axis_size(mesh, "act_batch")
    self._programs: set[tuple] = set()
    self._row = mesh_lib.sharding(mesh, ("act_batch",))
    self._row_len = mesh_lib.sharding(mesh, ("act_batch", None))
    self._cache = jax.tree.map(
      lambda axes: mesh_lib.sharding(mesh, axes),
      llama.cache_axes(model.args),
      is_leaf=lambda x: isinstance(x, tuple) and all(isinstance(a, str) for a in x),
    )
    # The prefix pool is laid out as a cache whose batch rows are blocks: [L, blocks, K, block, H].
    # Any row may read any block, so blocks are not split across the batch axes.
    self._pool_sharding = jax.tree.map(
      lambda axes: mesh_lib.sharding(mesh, tuple(None if a == "cache_batch" else a for a in axes)),
      llama.cache_axes(model.args),
      is_leaf=lambda x: isinstance(x, tuple) and all(isinstance(a, str) for a in x),
    )
    self.prefix_block = prefix_block
    self._blocks = (
      prefix_lib.PrefixBlocks(prefix_block, prefix_cache_tokens // prefix_block)
      if prefix_cache
      else None
    )
    self._pool: KVCache | None = None  # allocated on first use
    # prompt_tokens: all prompt tokens seen; prefilled_tokens: those run through the model
    # (shared heads once, then each row's rest); the difference is what the prefix cache saved.
    # prefill_seconds / decode_seconds: wall time until the prefill's results, then in decode
    # calls (the host waits for each anyway); decode_steps: the decode's model calls (a step
    # per token, or one for every row's forced tail).
    self.stats: collections.Counter = collections.Counter()

  @classmethod
  def from_config(
    cls,
    model: Decoder,
    mesh: Mesh,
    c: ml_collections.ConfigDict,
    tokenizer: Any,
    max_seq_len: int | None = None,
    eos_ids: Sequence[int] | None = None,
  ) -> Sampler:
    """A sampler with the `sampling` block's options (what to generate is a SamplingParams)."""
    validate_config(c)
    return cls(
      model,
      mesh,
      tokenizer.eos_ids if eos_ids is None else eos_ids,
      tokenizer.pad_id,
      tokenizer,
      max_seq_len=max_seq_len,
      prompt_bucket=c.prompt_bucket,
      min_prompt_bucket=c.min_prompt_bucket,
      decode_chunk=c.decode_chunk,
      cpu_layout=cpu_layout_option(c),
      prefix_cache=c.prefix_cache,
      prefix_block=c.prefix_block,
      prefix_cache_tokens=c.prefix_cache_tokens,
      forced_tails=c.forced_tails,
    )

  def clear_prefix_cache(self) -> None:
    """Forgets every cached prompt block (benchmarks: a cold cache with warm programs)."""
    if self._blocks is not None:
      self._blocks.clear()

  @property
  def compiles(self) -> int:
    """Distinct programs (prefill and decode shapes with their static options) run so far."""
    return len(self._programs)

  def prepare(self, variables: dict, version: int | None = None) -> dict:
    """The weights in the form this sampler runs: LoRA merged, then the CPU layout if chosen.

    Merging adapters takes ~420 small matmuls per step off the decode path. The conversion runs
    once per set of weights: with a `version` (the caller bumps it after each update) the result
    is kept for that version, whatever arrays come with it; without one, for the last arrays seen
    (an identity check), so calling generate() again with the same weights costs nothing.
    """
    leaves = jax.tree.leaves(variables)
    if self._prepared is not None:
      seen_version, seen_leaves, prepared = self._prepared
      if version is not None:
        same = seen_version == version
      else:
        same = (
          seen_version is None
          and len(leaves) == len(seen_leaves)
          and all(a is b for a, b in zip(leaves, seen_leaves))
        )
      if same:
        return prepared
    if self.cpu_layout or "lora" in variables:
      if self._convert is None:  # one jitted function: each update's weights reuse its program
        abstract = llama.init_abstract(self.model.args.replace(lora_rank=0), self.mesh)
        shardings = mesh_lib.tree_shardings(self.mesh, abstract)
        args, cpu_layout = self.source_args, self.cpu_layout

        def convert(v):
          v = llama.merge_lora(v, args.lora_scale) if "lora" in v else v
          return llama.to_cpu_layout(v, args) if cpu_layout else v

        self._convert = jax.jit(convert, out_shardings=shardings)
      prepared = self._convert(variables)
      self.conversions += 1
    else:
      prepared = variables
    # With a version the arrays are not kept: holding them would pin the old weights in memory.
    self._prepared = (version, None if version is not None else leaves, prepared)
    if self._blocks is not None:
      self._blocks.clear()  # KV computed with other weights
    return prepared

  # Compiled once per (shapes, static options); weights are arguments.
  @functools.partial(jax.jit, static_argnums=(0, 6, 7, 8))
  def _prefill(
    self,
    variables,
    tokens,
    valid,
    positions,
    rng,
    p,
    top_k,
    top_p,
    temperature,
    pool,
    table,
    grammar,
  ):
    """Prefills slots [M, P) of each row, after the cached head blocks `table` [B, M / block]
    (None: M = 0) are copied from the pool into slots [0, M). With `grammar` (DeviceTables), the
    first token is drawn among those its automaton allows."""
    b, total = tokens.shape
    args = self.model.args
    cache = KVCache.zeros(args, b, total, args.dtype)
    m = 0
    if table is not None:
      m = table.shape[1] * self.prefix_block
      cache = jax.tree.map(
        lambda c, x: jax.lax.dynamic_update_slice_in_dim(c, gather_blocks(x, table), 0, c.ndim - 2),
        cache,
        pool,
      )
    cache = jax.lax.with_sharding_constraint(cache, self._cache)
    logits, cache = self.model.apply(
      variables, tokens[:, m:p], positions, valid, cache, jnp.int32(m), last_only=True
    )
    rng, key = jax.random.split(rng)
    n = total - p
    rows = None if grammar is None else grammar_lib.start(grammar)
    first, logp, rows = self._draw(
      logits[:, 0], key, grammar, rows, jnp.int32(n - 1), jnp.ones(b, bool),
      top_k, top_p, temperature,
    )  # fmt: skip
    tokens = tokens.at[:, p].set(first)
    valid = valid.at[:, p].set(True)
    logprobs = jnp.zeros((b, n), jnp.float32).at[:, 0].set(logp)
    done = jnp.isin(first, jnp.asarray(self.eos_ids)) | (n == 1)
    return DecodeState(
      tokens, valid, cache, positions[:, -1] + 1, logprobs, done, jnp.int32(1), rng,
      jnp.int32(0), p, rows,
    )  # fmt: skip

  def _draw(self, logits_bv, key, grammar, rows, left, live, top_k, top_p, temperature):
    """(token, log-prob, automaton states) per row: sampled among the tokens the rows' automata
    allow with `left` tokens to come, which then move on with it (live rows only); without a
    grammar, plain sampling."""
    if grammar is None:
      token, logp = sample_logits(logits_bv, key, temperature, top_k=top_k, top_p=top_p)
      return token, logp, rows
    ok = grammar_lib.allowed(grammar, rows, left, self.eos_ids)
    masked = grammar_lib.mask_logits(logits_bv, ok)
    token, _ = sample_logits(masked, key, temperature, top_k=top_k, top_p=top_p)
    # The log-prob is the model's own (as under top_k/top_p): what the learner computes again.
    scaled = logits_bv.astype(jnp.float32) / logit_scale(temperature)
    logp = jnp.take_along_axis(jax.nn.log_softmax(scaled, axis=-1), token[:, None], axis=-1)[:, 0]
    return token, logp, grammar_lib.advance(grammar, rows, token, live)

  @functools.partial(jax.jit, static_argnums=(0, 3, 4, 5), donate_argnums=(2,))
  def _decode(self, variables, state: DecodeState, steps, top_k, top_p, temperature, grammar=None):
    p, n = state.prompt_len, state.max_new_tokens
    eos = jnp.asarray(self.eos_ids)
    stop_at = jnp.minimum(state.step + steps, n)
    # A tail ends on EOS: without an EOS id in the vocabulary (benchmarks' NO_EOS) rows run on.
    has_eos = any(0 <= e < self.model.args.vocab_size for e in self.eos_ids)
    tails = self.forced_tails and has_eos and TAIL < n
    tails = tails and isinstance(grammar, grammar_lib.DeviceChoices)

    def tail_of(s: DecodeState):  # (length, tokens, end): each row's forced rest, if any
      return grammar_lib.forced_tail(grammar, s.grammar, TAIL - 1)

    def forced(s: DecodeState, length):  # [B]: rows whose rest is forced, with room to score it
      return (length >= 0) & (s.step + TAIL <= n)

    def cond(s: DecodeState):
      return (s.step < stop_at) & ~jnp.all(s.done | forced(s, tail_of(s)[0]) if tails else s.done)

    def body(s: DecodeState):
      slot = p + s.step - 1  # the newest token: feed it, write its keys at its slot
      last = jax.lax.dynamic_slice_in_dim(s.tokens, slot, 1, axis=1)
      logits, cache = self.model.apply(
        variables, last, s.positions[:, None], s.valid, s.cache, slot
      )
      rng, key = jax.random.split(s.rng)
      live = ~s.done
      nxt, logp, rows = self._draw(  # the tokens after this one: n - 1 - s.step
        logits[:, 0], key, grammar, s.grammar, n - 1 - s.step, live,
        top_k, top_p, temperature,
      )  # fmt: skip
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
        forwards=s.forwards + 1,
        grammar=rows,
      )

    state = jax.lax.while_loop(cond, body, state)
    if not tails:
      return state
    # Every row left is forced: one call scores all their tails (see _score_tails).
    tail = tail_of(state)
    ready = jnp.all(state.done | forced(state, tail[0])) & ~jnp.all(state.done)
    score = functools.partial(
      self._score_tails, tail=tail, grammar=grammar, top_k=top_k, top_p=top_p,
      temperature=temperature,
    )  # fmt: skip
    return jax.lax.cond(ready, score, lambda v, s: s, variables, state)

  def _score_tails(self, variables, s: DecodeState, tail, grammar, top_k, top_p, temperature):
    """Ends the rows whose trie fixes their rest (`tail`: forced_tail's, computed once by the
    caller) in one model call instead of a step per token: the newest token and the forced ones
    are fed together (causal over their slots, like a prefill after the cache), the forced tokens
    get the model's log-probs from the logits before each, and EOS is drawn after the last as a
    step would draw it. The tokens are a step-by-step decode's; the log-probs equal its up to
    float rounding (tests)."""
    p, n = s.prompt_len, s.max_new_tokens
    length, chain, end = tail
    rows, i = ~s.done, jnp.arange(TAIL)
    slot = p + s.step - 1  # the newest token's: it and the tail fill [slot, slot + TAIL)
    feed = jnp.concatenate([jax.lax.dynamic_slice_in_dim(s.tokens, slot, 1, axis=1), chain], 1)
    valid = jax.lax.dynamic_update_slice_in_dim(
      s.valid, rows[:, None] & (i <= length[:, None]), slot, axis=1
    )
    logits, cache = self.model.apply(
      variables, feed, s.positions[:, None] + i, valid, s.cache, slot
    )  # [B, TAIL, V]
    scaled = logits.astype(jnp.float32) / logit_scale(temperature)
    logp = jax.nn.log_softmax(scaled[:, :-1], axis=-1)
    chain_logp = jnp.take_along_axis(logp, chain[..., None], axis=-1)[..., 0]  # [B, TAIL - 1]
    keys, rng = [], s.rng
    for _ in range(TAIL):  # the keys steps would draw with, in order
      rng, key = jax.random.split(rng)
      keys.append(key)
    at_end = s.grammar.replace(state=end)  # only EOS is left there, whatever `left`

    def draw(logits_bv, key):  # (EOS id, its log-prob)
      args = (top_k, top_p, temperature)
      return self._draw(logits_bv, key, grammar, at_end, n - 1 - s.step, rows, *args)[:2]

    at_end_of = lambda x: jnp.take_along_axis(x, length.clip(0)[:, None], axis=1)[:, 0]  # noqa: E731
    if len(self.eos_ids) > 1:
      # A choice among EOS ids: each row draws with the key of the step that would have drawn it
      # (greedy rows take the argmax at their end either way).
      drawn = [draw(logits[:, j], keys[j]) for j in range(TAIL)]
      eos, eos_logp = (at_end_of(jnp.stack([d[k] for d in drawn], 1)) for k in (0, 1))
    else:  # EOS is the only token left: any key draws it
      last = jnp.take_along_axis(logits, length.clip(0)[:, None, None], axis=1)[:, 0]
      eos, eos_logp = draw(last, keys[0])
    at = i[None] - length[:, None]  # < 0: a forced token; 0: EOS; > 0: nothing
    pad = lambda x: jnp.pad(x, ((0, 0), (0, 1)))  # noqa: E731
    new_tokens = jnp.where(at < 0, pad(chain), jnp.where(at == 0, eos[:, None], self.pad_id))
    new_logp = jnp.where(at < 0, pad(chain_logp), jnp.where(at == 0, eos_logp[:, None], 0.0))

    def put(x, new, start):  # rows not ending here keep what they have
      old = jax.lax.dynamic_slice_in_dim(x, start, TAIL, axis=1)
      return jax.lax.dynamic_update_slice_in_dim(x, jnp.where(rows[:, None], new, old), start, 1)

    return s.replace(
      tokens=put(s.tokens, new_tokens, slot + 1),
      logprobs=put(s.logprobs, new_logp, s.step),
      valid=valid,
      cache=cache,  # written in place (every row is done now): no copy of the old one
      done=s.done | rows,
      step=s.step + jnp.max(jnp.where(rows, length + 1, 0)),
      rng=rng,
      forwards=s.forwards + 1,
    )

  @functools.partial(jax.jit, static_argnums=(0,), donate_argnums=(1,))
  def _store(self, pool, cache, rows, starts, where):
    """pool block where[r] <- slots [starts[r], starts[r] + block) of cache row rows[r]."""
    slots = starts[:, None] + jnp.arange(self.prefix_block)  # [R, block]

    def one(pool_x, cache_x):
      if cache_x.ndim == 5:  # stacked layers [L, B, K, S, H]; indexing gives [R, block, L, K, H]
        blocks = cache_x[:, rows[:, None], :, slots].transpose(2, 0, 3, 1, 4)
        return pool_x.at[:, where].set(blocks)
      blocks = cache_x[rows[:, None], :, slots].transpose(
        0, 2, 1, 3
      )  # [B, K, S, H] -> [R, K, b, H]
      return pool_x.at[where].set(blocks)

    # The pool keeps its layout, so the prefill programs that read it are not compiled again.
    return jax.lax.with_sharding_constraint(jax.tree.map(one, pool, cache), self._pool_sharding)

  def prompt_length(self, longest: int, max_new_tokens: int) -> int:
    """P, the prompt bucket: a multiple of prompt_bucket (or a power of two), within the model."""
    if longest + max_new_tokens > self.max_seq_len:
      raise ValueError(
        f"a prompt of {longest} tokens + max_new_tokens={max_new_tokens} exceeds "
        f"model.max_seq_len={self.max_seq_len}"
      )
    return buckets.bucket(
      longest, self.prompt_bucket, self.min_prompt_bucket, self.max_seq_len - max_new_tokens
    )

  def batch_rows(self, b: int) -> int:
    """Rows of the padded batch: a power of two that the mesh's batch axes divide."""
    rows = buckets.bucket(b, buckets.POW2, self.batch_shards)
    return buckets.bucket(rows, self.batch_shards, 1)

  def layout(
    self, prompts: Sequence[Sequence[int]], max_new_tokens: int, heads: Sequence[int] = ()
  ):
    """Host arrays of a prefill: (P, tokens, valid [B, P + N], positions [B, P - M], table).

    Row i's first heads[i] blocks come from the prefix pool into slots [0, heads[i] * block);
    the rest of its prompt is left-padded into slots [M, P), M the longest head, so that every
    row's next token goes to slot P. Slots between are invalid: attention skips them and the
    rotary positions carry on from the head. table [B, M / block] names the pool blocks (None
    when no row has a head; 0, the scratch block, for slots past a row's head). Filler rows hold
    one real (pad) token so that no row attends to nothing. Heads are dropped when the padding
    they cause would not fit in the model.
    """
    b, c = len(prompts), self.prefix_block
    heads = list(heads) or [0] * b
    m = max(heads) * c
    longest_rest = max(len(x) - h * c for x, h in zip(prompts, heads))
    if m and m + longest_rest + max_new_tokens > self.max_seq_len:
      return self.layout(prompts, max_new_tokens)
    p = m + self.prompt_length(longest_rest, max_new_tokens + m)
    b_pad = self.batch_rows(b)
    tokens = np.full((b_pad, p + max_new_tokens), self.pad_id, np.int32)
    valid = np.zeros((b_pad, p + max_new_tokens), bool)
    starts = np.zeros((b_pad, 1), np.int32)  # the rotary position of each row's first slot >= M
    for i, (ids, h) in enumerate(zip(prompts, heads)):
      rest = ids[h * c :]
      tokens[i, p - len(rest) : p] = rest
      valid[i, : h * c] = True
      valid[i, p - len(rest) : p] = True
      starts[i] = h * c
    valid[b:, p - 1] = True
    positions = starts + np.maximum(np.cumsum(valid[:, m:p], axis=1, dtype=np.int32) - 1, 0)
    if not m:
      return p, tokens, valid, positions, None
    table = np.zeros((b_pad, m // c), np.int32)
    for i, (ids, h) in enumerate(zip(prompts, heads)):
      table[i, :h] = [self._blocks.index(k) for k in self._blocks.keys(ids[: h * c])]
    return p, tokens, valid, positions, table

  def run_prefill(
    self,
    variables,
    tokens,
    valid,
    positions,
    rng,
    p,
    params: SamplingParams,
    table=None,
    grammar: grammar_lib.DeviceTables | None = None,
  ):
    static = self._static(params)
    self._programs.add(("prefill", tokens.shape, positions.shape, p) + static + _shape(grammar))
    pool = None
    if table is not None:
      pool, table = self._pool, jax.device_put(table, self._row_len)
    return self._prefill(
      variables,
      jax.device_put(tokens, self._row_len),
      jax.device_put(valid, self._row_len),
      jax.device_put(positions, self._row_len),
      rng,
      p,
      *static,
      self._temperature(params),
      pool,
      table,
      grammar,
    )

  def run_decode(
    self,
    variables,
    state: DecodeState,
    steps: int,
    params: SamplingParams,
    grammar: grammar_lib.DeviceTables | None = None,
  ):
    static = self._static(params)
    key = ("decode", state.tokens.shape, state.prompt_len, steps) + static + _shape(grammar)
    self._programs.add(key)
    return self._decode(variables, state, steps, *static, self._temperature(params), grammar)

  def device_tables(self, tables: Sequence, rows: int):
    """The rows' automata on the device (grammar.Tables -> DeviceTables, grammar.Choices ->
    DeviceChoices): per-row arrays split like rows, tables replicated."""
    v = self.model.args.vocab_size
    if all(isinstance(t, grammar_lib.Choices) for t in tables):
      host, kind = grammar_lib.stack_choices(tables, rows, v), grammar_lib.DeviceChoices
      extra = {"vocab_size": v}
    elif all(isinstance(t, grammar_lib.Tables) for t in tables):
      host, kind, extra = grammar_lib.stack_tables(tables, rows, v), grammar_lib.DeviceTables, {}
    else:
      raise TypeError("grammar: expected all grammar.Tables or all grammar.Choices, one per row")
    per_row = ("initial", "max_segment", "max_lines")
    whole = mesh_lib.sharding(self.mesh, ())
    return kind(
      **{k: jax.device_put(x, self._row if k in per_row else whole) for k, x in host.items()},
      **extra,
    )

  def _prefill_rows(
    self, variables, prompts, params, rng, reuse: bool, grammar=None
  ) -> tuple[DecodeState, int]:
    """Prefills the prompts (after their cached heads when `reuse`) and keeps their new blocks."""
    if not reuse:
      p, tokens, valid, positions, _ = self.layout(prompts, params.max_new_tokens)
      self.stats["prefilled_tokens"] += sum(len(x) for x in prompts)
      state = self.run_prefill(variables, tokens, valid, positions, rng, p, params, grammar=grammar)
      return state, p
    c = self.prefix_block
    if self._pool is None:
      args, blocks = self.model.args, self._blocks.capacity + 1  # + the scratch block
      self._pool = jax.jit(
        lambda: KVCache.zeros(args, blocks, c, args.dtype), out_shardings=self._pool_sharding
      )()
    keys = [self._blocks.keys(x) for x in prompts]
    # A row keeps at least its last token to prefill: the first sample needs its logits.
    heads = [self._blocks.depth(k[: (len(x) - 1) // c]) for x, k in zip(prompts, keys)]
    p, tokens, valid, positions, table = self.layout(prompts, params.max_new_tokens, heads)
    if table is None:
      heads = [0] * len(prompts)
    state = self.run_prefill(variables, tokens, valid, positions, rng, p, params, table, grammar)
    self.stats["prefilled_tokens"] += sum(len(x) - h * c for x, h in zip(prompts, heads))
    self._keep(state.cache, prompts, keys, heads, p)
    return state, p

  def _share_heads(self, variables, prompts: Sequence[Sequence[int]]) -> None:
    """Prefills once each uncached head that several rows share, and keeps its blocks.

    A head is the longest run of whole blocks that a row has in common with another row (the
    system text; the task and its rules within a group of G copies). Each distinct head is one
    row of a prefill whose sampled token is thrown away; the rows then find it cached.
    """
    usable = [self._blocks.keys(x[: len(x) - 1]) for x in prompts]
    counts = collections.Counter(key for keys in usable for key in keys)
    heads = {}
    for keys in usable:
      shared = 0
      while shared < len(keys) and counts[keys[shared]] >= 2:
        shared += 1
      if shared and self._blocks.depth(keys[:shared]) < shared:
        heads.setdefault(keys[shared - 1], None)  # a key is the head's tokens
    if heads:
      rows = [list(h) for h in heads]
      greedy_one = SamplingParams(1, temperature=0.0)
      self._prefill_rows(variables, rows, greedy_one, jax.random.PRNGKey(0), True)
      self.stats["shared_heads"] += len(rows)

  def _keep(self, cache: KVCache, prompts, keys, heads, p: int) -> None:
    """Copies the prompts' whole blocks that are not cached yet from the row caches to the pool.

    Row i's token at position j >= its head sits in slot p - len(prompt) + j (see layout).
    """
    c = self.prefix_block
    pinned = {k for ks, h in zip(keys, heads) for k in ks[:h]}  # read by this call: keep them
    rows, starts, where = [], [], []
    for i, (x, ks, h) in enumerate(zip(prompts, keys, heads)):
      for j in range(h, len(ks)):
        if ks[j] in self._blocks:
          continue
        index = self._blocks.allocate(ks[j], pinned)
        if index is None:  # every block is in use by this call: keep no more
          break
        pinned.add(ks[j])
        rows.append(i)
        starts.append(p - len(x) + j * c)
        where.append(index)
    for ks in keys:
      self._blocks.touch(ks)
    if not rows:
      return
    # A few program shapes: the count of new blocks is padded with writes to the scratch block.
    pad = buckets.bucket(len(rows), buckets.POW2, 8) - len(rows)
    arrays = [np.asarray(a + [0] * pad, np.int32) for a in (rows, starts, where)]
    self._programs.add(("store", jax.tree.leaves(cache)[0].shape, len(rows) + pad))
    self.stats["kept_blocks"] += len(rows)
    self._pool = self._store(self._pool, cache, *arrays)

  @staticmethod
  def _static(params: SamplingParams) -> tuple[int, float]:
    return (int(params.top_k), float(params.top_p))

  @staticmethod
  def _temperature(params: SamplingParams) -> jax.Array:
    return jnp.float32(params.temperature)  # 0: greedy, decided inside the programs

  def generate(
    self,
    variables,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams,
    seed: int = 0,
    version: int | None = None,
    prefix_cache: bool = True,
    grammar: Sequence[grammar_lib.Tables] | None = None,
  ) -> list[Completion]:
    """Completions of `prompts` under `params`; `version` names the weights (see prepare).

    With the sampler's prefix cache on (and `prefix_cache` not False), prompt heads that rows
    share or that an earlier call prefilled are not prefilled again; the tokens and log-probs are
    those of a full prefill up to float rounding.

    With `grammar` (one grammar.Tables or grammar.Choices per prompt), each row writes only what
    its automaton allows and stops in a final state (sampling/grammar.py); its log-probs are the
    model's own, before the mask (as under top_k/top_p): what the learner computes again.
    """
    if not isinstance(params, SamplingParams):
      raise TypeError(f"params={params!r}: expected a SamplingParams")
    if not prompts:
      return []
    if any(len(p) == 0 for p in prompts):
      raise ValueError("every prompt needs at least one token")
    if params.stop_strings and self.tokenizer is None:
      raise ValueError("stop_strings need a tokenizer to read the generated text")
    if grammar is not None and len(grammar) != len(prompts):
      raise ValueError(f"{len(grammar)} grammars for {len(prompts)} prompts: expected one each")
    n_new = params.max_new_tokens
    b = len(prompts)
    device_grammar = None
    if grammar is not None:
      device_grammar = self.device_tables(grammar, self.batch_rows(b))
    variables = self.prepare(variables, version)
    self.stats["prompt_tokens"] += sum(len(x) for x in prompts)
    reuse = prefix_cache and self._blocks is not None
    start = time.perf_counter()
    if reuse:
      self._share_heads(variables, prompts)
    state, p = self._prefill_rows(
      variables, prompts, params, jax.random.PRNGKey(seed), reuse, device_grammar
    )
    stops = params.stop_strings
    chunk = self.decode_chunk if stops else n_new
    stopped_at: dict[int, int] = {}
    phase = "prefill"
    while True:
      done = hosts.fetch(state.done)
      step = int(state.step)
      now = time.perf_counter()
      self.stats[f"{phase}_seconds"] += now - start
      phase, start = "decode", now
      if not done[b:].all():  # the batch's filler rows: nobody reads them, so nobody waits
        done = done.copy()
        done[b:] = True
        state = state.replace(done=jax.device_put(done, self._row))
      if stops:
        self._check_stops(hosts.fetch(state.tokens[:, p : p + step]), b, stops, stopped_at)
        if stopped_at:
          done = done.copy()
          done[list(stopped_at)] = True
          state = state.replace(done=jax.device_put(done, self._row))
      if done[:b].all() or step >= n_new:
        break
      state = self.run_decode(variables, state, chunk, params, device_grammar)
    self.stats["decode_steps"] += int(state.forwards)

    out_tokens = hosts.fetch(state.tokens[:, p:])
    out_logp = hosts.fetch(state.logprobs)
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
