"""Text embeddings from the policy model itself: the mean of its final (normed) hidden states.

One jitted forward pass per (batch, length bucket): texts are tokenized, cut to `max_tokens`,
right-padded to a power-of-two length, and the batch padded to `batch_size` rows, so a run
compiles a handful of programs. Right padding needs no position fix-up: causal attention keeps
real tokens from seeing the pads after them. Vectors are L2-normalised, so a dot product is a
cosine similarity. Results are cached by text; the cache is emptied when the weights change: the
caller passes the weights' version (`state.TrainState.version`), or without one the arrays are
compared by identity.

With `weights='base'` (the default) the adapters are left out: embeddings of the frozen base model
do not drift as LoRA trains, so the cache and the index stay valid for the whole run.
This module never retrieves or ranks: RuleIndex does.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jerp_jax import checks
from jerp_jax.model.llama import Decoder
from jerp_jax.parallel import buckets, hosts

WEIGHTS = ("base", "policy")


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.weights = "base"  # 'base': frozen model without adapters (stable); 'policy': with LoRA
  c.max_tokens = 128  # longer texts are cut (rules are short; task texts a sentence)
  c.batch_size = 16
  c.min_bucket = 16  # token lengths are padded to powers of two from here
  c.cache_size = 100_000  # texts kept; the oldest go first
  return c


def validate_config(c: ml_collections.ConfigDict, prefix: str = "rules.embed") -> None:
  positive = checks.POSITIVE_INT
  checks.require(c, prefix, {
    "weights": checks.one_of(WEIGHTS), "max_tokens": positive, "batch_size": positive,
    "min_bucket": positive, "cache_size": positive,
  })  # fmt: skip


def select_weights(variables: dict, weights: str) -> dict:
  """The variables a component runs with: all of them ('policy') or the base model ('base')."""
  if weights not in WEIGHTS:
    raise ValueError(f"weights={weights!r}: expected one of {WEIGHTS}")
  if weights == "base":
    return {k: v for k, v in variables.items() if k != "lora"}
  return variables


class Embedder:
  """texts -> [n, hidden] float32 unit vectors, with the given model weights."""

  def __init__(
    self,
    model: Decoder,
    tokenizer: Any,
    weights: str = "base",
    max_tokens: int = 128,
    batch_size: int = 16,
    min_bucket: int = 16,
    cache_size: int = 100_000,
  ):
    if weights not in WEIGHTS:
      raise ValueError(f"weights={weights!r}: expected one of {WEIGHTS}")
    self.model = model
    self.tokenizer = tokenizer
    self.weights = weights
    self.max_tokens = max_tokens
    self.batch_size = batch_size
    self.min_bucket = min_bucket
    self.cache_size = cache_size
    self.cache: dict[str, np.ndarray] = {}
    self._weights_seen: Any = None  # the version (or the leaves) the cache was filled with
    self.forward_rows = 0  # texts actually run through the model (tests, metrics)

  @classmethod
  def from_config(cls, c: ml_collections.ConfigDict, model: Decoder, tokenizer: Any) -> Embedder:
    validate_config(c)
    return cls(model, tokenizer, c.weights, c.max_tokens, c.batch_size, c.min_bucket, c.cache_size)

  @property
  def dim(self) -> int:
    return self.model.args.hidden_size

  @functools.partial(jax.jit, static_argnums=0)
  def _embed(self, variables, tokens_bt, mask_bt):
    positions = jnp.broadcast_to(jnp.arange(tokens_bt.shape[1]), tokens_bt.shape)
    hidden_btd, _ = self.model.apply(variables, tokens_bt, positions, mask_bt, return_hidden=True)
    m = mask_bt.astype(jnp.float32)[..., None]
    mean_bd = jnp.sum(hidden_btd.astype(jnp.float32) * m, axis=1) / jnp.maximum(m.sum(axis=1), 1.0)
    return mean_bd / jnp.maximum(jnp.linalg.norm(mean_bd, axis=-1, keepdims=True), 1e-6)

  def _check_weights(self, variables: dict, version: int | None) -> None:
    seen = self._weights_seen
    if version is not None:
      if seen != ("version", version):
        self.cache.clear()
        self._weights_seen = ("version", version)
      return
    leaves = jax.tree.leaves(variables)
    if (
      not isinstance(seen, list)
      or len(seen) != len(leaves)
      or any(a is not b for a, b in zip(leaves, seen))
    ):
      self.cache.clear()
      self._weights_seen = leaves

  def embed(self, variables: dict, texts: Sequence[str], version: int | None = None) -> np.ndarray:
    """[len(texts), hidden] float32, unit rows. Cached texts cost nothing.

    `version` names the weights embedded with: the cache survives calls with the same version
    (new arrays of unchanged weights, as after a LoRA update with `weights='base'`).
    """
    variables = select_weights(variables, self.weights)
    self._check_weights(variables, version)
    missing = list(dict.fromkeys(t for t in texts if t not in self.cache))
    for start in range(0, len(missing), self.batch_size):
      chunk = missing[start : start + self.batch_size]
      ids = [self.tokenizer.encode(t)[: self.max_tokens] or [self.tokenizer.pad_id] for t in chunk]
      length = buckets.bucket(max(len(i) for i in ids), buckets.POW2, self.min_bucket)
      tokens = np.full((self.batch_size, length), self.tokenizer.pad_id, np.int32)
      mask = np.zeros((self.batch_size, length), bool)
      for row, seq in enumerate(ids):
        tokens[row, : len(seq)] = seq
        mask[row, : len(seq)] = True
      mask[len(ids) :, 0] = True  # filler rows: one real token, so no row divides by zero
      # Host arrays, the same on every process of a multi-host run (its callers see to that).
      vectors = hosts.fetch(self._embed(variables, tokens, mask))
      self.forward_rows += len(chunk)
      for text, v in zip(chunk, vectors[: len(chunk)]):
        self.cache[text] = v
    while len(self.cache) > self.cache_size:  # dicts keep insertion order: drop the oldest
      self.cache.pop(next(iter(self.cache)))
    if not texts:
      return np.zeros((0, self.dim), np.float32)
    return np.stack([self.cache[t] for t in texts]).astype(np.float32)
