"""The policy update: PPO/GRPO optimiser steps of the token-level policy loss over a TrainBatch.

Owns the optimiser (clip by global norm, then AdamW), which subtree is trained (the LoRA adapters
or all base parameters), the frozen anchor policy of the KL penalty, the split of an epoch's
turns into shuffled mini-batches (one optimiser step each, `ppo_epochs` passes), gradient
accumulation over micro-batches inside one compiled step, and the skipping of non-finite steps.
The loss itself is `jerp_jax.rl.losses`; the rows come from `jerp_jax.rl.batch.pack`. Never
samples, never builds batches from trajectories, never recomputes the old log-probs (they are the
rollout's, in the batch), never saves anything.

Layout: batch rows are split over the mesh's batch axes ('data', 'fsdp'); trainables and the
optimiser moments keep the parameters' own shardings. Only the trained collection and the
optimiser state are donated to a step: the caller must use the returned ones and drop those it
passed in. Frozen collections (the base weights under LoRA) are read, never donated, and come
back as the very same arrays, so callers may keep them and whatever they cached on them.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jerp_jax import checks
from jerp_jax.model import llama
from jerp_jax.parallel import buckets
from jerp_jax.parallel import mesh as mesh_lib
from jerp_jax.rl import losses
from jerp_jax.rl.batch import TrainBatch, pad_rows

TRAIN_MODES = ("lora", "full")


def compiler_options() -> dict[str, Any]:
  """XLA options of the learner's programs. On CPU, XLA's concurrency-optimized scheduler orders
  the update's ops so that independent ones run side by side, but each of its matmuls is already
  split over every core: on 2 cores they only contend, and one update of the default's shape ran
  1.09x faster without it (4.43 against 4.84 s, Intel Xeon, bfloat16, 2026-12-05)."""
  if jax.default_backend() != "cpu":
    return {}
  return {"xla_cpu_enable_concurrency_optimized_scheduler": False}


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.train = "lora"  # 'lora': adapters only, base weights frozen; 'full': all base parameters
  c.lr = 1e-5  # the paper: 3e-6
  c.b1 = 0.9
  c.b2 = 0.999
  c.eps = 1e-8
  c.weight_decay = 0.01
  c.max_grad_norm = 1.0  # clip by global norm; 0 turns clipping off
  # Rows per forward/backward pass; gradients of the micro-batches are summed inside one jit.
  # Must be a multiple of the mesh's batch-axis size (every micro-batch is split over it).
  c.micro_batch_size = 8
  # Turns per optimiser step: each pass shuffles the epoch's turns into mini-batches of this many
  # rows. From the second step on the policy is no longer the one that sampled, so the PPO ratio
  # moves off 1 and clipping acts. 0: the whole batch in one step (the ratio stays 1).
  # Must be a multiple of micro_batch_size.
  c.mini_batch_size = 0
  c.ppo_epochs = 1  # passes over the epoch's turns, each shuffled anew
  # Row lengths are rounded up to a multiple of this (0: a power of two). Each length compiles
  # its own step; 64 keeps that to a few while a 300-token turn costs 320 tokens, not 512.
  c.length_bucket = 64
  c.loss = losses.get_config()
  return c


def validate_config(c: ml_collections.ConfigDict, prefix: str = "rl.learner") -> None:
  unit = checks.number_in(0, 1, closed=False)
  checks.require(c, prefix, {
    "train": checks.one_of(TRAIN_MODES), "lr": checks.POSITIVE, "b1": unit, "b2": unit,
    "eps": checks.POSITIVE, "weight_decay": checks.NON_NEGATIVE,
    "max_grad_norm": checks.saying(checks.NON_NEGATIVE, "a positive number, or 0 for no clipping"),
    "micro_batch_size": checks.POSITIVE_INT,
    "mini_batch_size": checks.saying(
      checks.COUNT, "a positive integer, or 0 for the whole batch in one step"
    ),
    "ppo_epochs": checks.POSITIVE_INT,
    "length_bucket": checks.saying(checks.COUNT, "a positive integer, or 0 for powers of two"),
  })  # fmt: skip
  if c.mini_batch_size % c.micro_batch_size:
    # Every step sums whole micro-batches: a ragged last one would be a second compiled program.
    multiple = f"0 or a multiple of {prefix}.micro_batch_size={c.micro_batch_size}"
    checks.fail(c, prefix, "mini_batch_size", multiple)
  losses.validate_config(c.loss, f"{prefix}.loss")


def make_optimizer(c: ml_collections.ConfigDict) -> optax.GradientTransformation:
  adamw = optax.adamw(c.lr, b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay)
  if not c.max_grad_norm:
    return adamw
  return optax.chain(optax.clip_by_global_norm(c.max_grad_norm), adamw)


# Metrics that are token means whatever the loss aggregation: micro-batches and steps are
# combined by their token counts. The rest (loss, pg_loss, kl, entropy) follow the aggregation.
TOKEN_METRICS = ("clip_frac", "ratio_mean", "approx_kl")


def plan_steps(
  has_tokens_b: np.ndarray, mini_batch_size: int, ppo_epochs: int, seed: int
) -> list[np.ndarray] | None:
  """The rows of each optimiser step, all passes in order; None: every pass is the whole batch.

  The whole batch (mini_batch_size 0, a batch no larger than one mini-batch, or one with no loss
  token at all) is one step per pass, its rows as given: reordering them would change only the
  order of float sums. Otherwise each pass shuffles the rows that carry loss tokens with a
  generator seeded by (seed, pass) and cuts them into mini-batches of mini_batch_size (the last
  may be short; the caller fills it). Rows without loss tokens are left out: they would cost a
  forward pass and change nothing.
  """
  b = len(has_tokens_b)
  if not mini_batch_size or b <= mini_batch_size or not np.any(has_tokens_b):
    return None
  rows = np.flatnonzero(has_tokens_b)
  steps = []
  for p in range(ppo_epochs):
    order = np.random.default_rng((seed, p)).permutation(rows)
    steps += [order[i : i + mini_batch_size] for i in range(0, len(order), mini_batch_size)]
  return steps


def take_rows(batch: TrainBatch, rows: np.ndarray) -> TrainBatch:
  """The batch's rows `rows`, in that order, on the host."""
  return jax.tree.map(lambda x: np.asarray(x)[rows], batch)


def _weighted_mean(values_s: np.ndarray, weights_s: np.ndarray) -> float:
  # A step of no weight (no tokens) must not turn the mean into NaN.
  total = np.sum(np.where(weights_s > 0, weights_s * values_s, 0.0))
  return float(total / max(float(np.sum(weights_s)), 1.0))


def aggregate_steps(per_step: list[dict[str, float]], aggregation: str) -> dict[str, float]:
  """One update's metrics from those of its optimiser steps (all passes).

  Token means (clip_frac, ratio_mean, approx_kl) weigh each step by its response tokens, the
  loss terms by the loss aggregation's own weights (tokens, or rows with tokens); ratio_max is
  the largest of all; grad_norm the mean over steps; steps counts the steps taken, skipped
  those left out (non-finite, or no response tokens).
  """
  column = lambda name: np.array([m[name] for m in per_step], np.float64)
  tokens_s = column("tokens")
  agg_w_s = tokens_s if aggregation == "token_mean" else column("rows")
  skipped_s = column("skipped")
  out = {}
  for name in per_step[0]:
    if name in TOKEN_METRICS:
      out[name] = _weighted_mean(column(name), tokens_s)
    elif name not in ("tokens", "rows", "skipped", "grad_norm", "ratio_max"):
      out[name] = _weighted_mean(column(name), agg_w_s)
  out["ratio_max"] = float(np.max(column("ratio_max")))
  out["grad_norm"] = float(np.mean(column("grad_norm")))
  out["steps"] = float(len(per_step) - np.sum(skipped_s))
  out["skipped"] = float(np.sum(skipped_s))
  return out


def target_logprobs(
  logits_btv: jax.Array, targets_bt: jax.Array, temperature: float
) -> tuple[jax.Array, jax.Array]:
  """(log p(targets) [B, T], scaled logits [B, T, V]) under softmax(logits / temperature), float32.

  The target's logit is picked with a masked sum over the vocabulary rather than a gather: with
  the vocabulary split over 'tensor' that is a local reduction plus an all-reduce, where a gather
  would first collect the whole [B, T, V] array on every device.
  """
  logits_btv = logits_btv.astype(jnp.float32)
  if temperature != 1.0:
    logits_btv = logits_btv / temperature
  vocab_v = jnp.arange(logits_btv.shape[-1], dtype=targets_bt.dtype)
  picked_bt = jnp.sum(
    jnp.where(vocab_v[None, None, :] == targets_bt[..., None], logits_btv, 0.0), axis=-1
  )
  return picked_bt - jax.nn.logsumexp(logits_btv, axis=-1), logits_btv


def window_size(loss_mask_bt: np.ndarray) -> int:
  """Positions the learner scores per row: the longest run from a row's first loss position to its
  last, rounded up to a power of two (at least 8, at most T). The output head and the softmax over
  the vocabulary then run on those positions only, not on the whole prompt: a 24-token answer
  to a 480-token prompt scores 32 positions, not 512."""
  mask = np.asarray(loss_mask_bt) > 0
  t = mask.shape[1]
  if not mask.any():
    return min(8, t)
  rows = mask.any(axis=1)
  first = np.argmax(mask, axis=1)
  last = t - 1 - np.argmax(mask[:, ::-1], axis=1)
  span = int(np.max(np.where(rows, last - first + 1, 0)))
  return buckets.bucket(span, buckets.POW2, 8, t)


def response_window(m: TrainBatch, window: int) -> tuple[jax.Array, TrainBatch]:
  """(positions [B, W]: each row's first loss position on, the batch with its per-position
  targets, masks, old log-probs and advantages taken at them). Positions past the row's end are
  clipped to its last one and masked out, so nothing is scored twice."""
  t = m.loss_mask.shape[1]
  first_b = jnp.argmax(m.loss_mask > 0, axis=1)
  at_bw = first_b[:, None] + jnp.arange(window)[None, :]
  inside_bw = at_bw < t
  at_bw = jnp.minimum(at_bw, t - 1)
  take = lambda x: jnp.take_along_axis(x, at_bw, axis=1)
  return at_bw, m.replace(
    targets=take(m.targets),
    loss_mask=jnp.where(inside_bw, take(m.loss_mask), 0.0),
    old_logprobs=take(m.old_logprobs),
    advantages=take(m.advantages),
  )


class Learner:
  """Holds the compiled update for one model, mesh and config; weights are always arguments."""

  def __init__(
    self,
    model: llama.Decoder,
    mesh: Mesh,
    variables: dict[str, Any],
    cfg: ml_collections.ConfigDict,
    temperature: float = 1.0,
    anchor_params: Any = None,
  ):
    """`temperature` is the sampler's: old log-probs were taken at it (0, greedy, counts as 1).

    `anchor_params` (train='full' only): the anchor policy's weights for the KL penalty;
    by default a copy of variables['params'] as given now. Pass the initial weights when a
    resumed run builds its learner from trained ones.
    """
    validate_config(cfg)
    if temperature < 0:
      raise ValueError(f"temperature={temperature!r}: expected >= 0 (0 means greedy)")
    self.model = model
    self.mesh = mesh
    self.cfg = cfg
    self.temperature = float(temperature) if temperature > 0 else 1.0
    self.key = {"lora": "lora", "full": "params"}[cfg.train]  # the collection that is trained
    args = model.args
    if cfg.train == "lora" and not args.lora_rank:
      raise ValueError(
        f"model.lora.rank={args.lora_rank!r}: rl.learner.train='lora' needs adapters; set "
        "model.lora.rank and model.lora.alpha (the paper: 64, 64) or rl.learner.train='full'"
      )
    if self.key not in variables:
      raise ValueError(f"variables have no {self.key!r} collection to train: {sorted(variables)}")
    self.batch_shards = mesh_lib.mesh_axis_size(mesh, "act_batch")
    if cfg.micro_batch_size % self.batch_shards:
      raise ValueError(
        f"rl.learner.micro_batch_size={cfg.micro_batch_size} is not a multiple of "
        f"{self.batch_shards}, the number of ways the mesh splits batch rows (mesh shape "
        f"{dict(mesh.shape)}); every micro-batch is split over those devices"
      )
    self.tx = make_optimizer(cfg)
    self.use_kl = cfg.loss.kl_coef > 0

    # The canonical layout (the one build.build loads into): outputs are pinned to it, so the
    # compiled program and the layout of what it returns never drift between steps.
    self.var_shardings = {
      k: v
      for k, v in mesh_lib.tree_shardings(mesh, llama.init_abstract(args, mesh)).items()
      if k in variables
    }
    self.trainable_shardings = self.var_shardings[self.key]
    self.replicated = NamedSharding(mesh, PartitionSpec())
    abstract_opt = jax.eval_shape(self.tx.init, variables[self.key])
    self.opt_shardings = optax.tree_map_params(
      self.tx,
      lambda _, s: s,
      abstract_opt,
      self.trainable_shardings,
      transform_non_params=lambda _: self.replicated,
      is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct),
    )
    self.batch_sharding = mesh_lib.sharding(mesh, ("act_batch", None))
    self.micro_sharding = mesh_lib.sharding(mesh, (None, "act_batch", None))

    # The frozen anchor. LoRA: the same base weights with adapters off, read from the
    # variables of each step (no copy). Full: the weights as they are now, copied because the
    # update donates (and overwrites) the arrays it is given.
    self.anchor_params = None
    if self.use_kl and cfg.train == "full":
      src = variables["params"] if anchor_params is None else anchor_params
      self.anchor_params = jax.jit(
        lambda t: jax.tree.map(jnp.copy, t), out_shardings=self.var_shardings["params"]
      )(src)

    # Donated: the trainables and the optimiser state, which every step writes anew. Not donated:
    # the frozen collections and the anchor, which a step only reads; a caller may hold them
    # (or cache on them) across updates.
    # The response window's size is static: one program per window bucket (see window_size).
    options = compiler_options()
    self._step = jax.jit(
      self._update_step,
      compiler_options=options,
      donate_argnums=(0, 1),
      static_argnums=(5,),
      out_shardings=(self.trainable_shardings, self.opt_shardings, self.replicated),
    )
    self._gradients = jax.jit(
      self._grads_and_metrics,
      compiler_options=options,
      static_argnums=(3,),
      out_shardings=(self.trainable_shardings, self.replicated),
    )
    self._logprobs = jax.jit(
      self._policy_logprobs,
      compiler_options=options,
      static_argnums=(2,),
      out_shardings=self.batch_sharding,
    )
    self._init_opt = jax.jit(self.tx.init, out_shardings=self.opt_shardings)

  # --- public API ---------------------------------------------------------------------------------

  @property
  def rows_multiple(self) -> int:
    """Pass to batch.pack: rows then split into whole micro-batches over the batch axes."""
    return math.lcm(self.cfg.micro_batch_size, self.batch_shards)

  def trainable(self, variables: dict[str, Any]) -> Any:
    return variables[self.key]

  def with_trainable(self, variables: dict[str, Any], trainable: Any) -> dict[str, Any]:
    return {**variables, self.key: trainable}

  def init_opt_state(self, variables: dict[str, Any]) -> Any:
    return self._init_opt(self.trainable(variables))

  def update(
    self, variables: dict[str, Any], opt_state: Any, batch: TrainBatch, seed: int = 0
  ) -> tuple[dict[str, Any], Any, dict[str, float]]:
    """The epoch's policy update: `ppo_epochs` passes of shuffled mini-batch steps over `batch`.

    Returns ({**variables, trained collection: new}, new opt_state, metrics aggregated over all
    steps, see `aggregate_steps`, plus tokens: the batch's response tokens). The trained
    collection and `opt_state` are donated; every other collection comes back as the same
    objects. `seed` picks the shuffle of rows into mini-batches (the same seed, the same steps).
    """
    variables, opt_state, per_step = self.update_steps(variables, opt_state, batch, seed)
    metrics = aggregate_steps(per_step, self.cfg.loss.aggregation)
    metrics["tokens"] = float(batch.num_tokens)
    if metrics["skipped"]:
      empty = sum(1 for m in per_step if m["skipped"] and not m["tokens"])
      logging.warning(
        "policy update: %d of %d steps skipped (%d non-finite loss or gradient, %d with no "
        "response tokens): loss=%s grad_norm=%s; those steps left weights and optimiser alone",
        metrics["skipped"],
        len(per_step),
        metrics["skipped"] - empty,
        empty,
        metrics["loss"],
        metrics["grad_norm"],
      )
    return variables, opt_state, metrics

  def update_steps(
    self, variables: dict[str, Any], opt_state: Any, batch: TrainBatch, seed: int = 0
  ) -> tuple[dict[str, Any], Any, list[dict[str, float]]]:
    """`update` with each optimiser step's own metrics, in order (loss, pg_loss, kl, entropy,
    clip_frac, ratio_mean, ratio_max, approx_kl, grad_norm, tokens, rows, skipped)."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
      raise ValueError(f"seed={seed!r}: expected a non-negative integer")
    frozen = {k: v for k, v in variables.items() if k != self.key}
    trainable = variables[self.key]
    per_step = []
    # Steps are dispatched one after the other without waiting: the host blocks only at the end,
    # when it reads the metrics.
    for device_batch, window in self._step_batches(batch, seed):
      trainable, opt_state, metrics = self._step(
        trainable, opt_state, frozen, device_batch, self.anchor_params, window
      )
      per_step.append(metrics)
    per_step = [{k: float(v) for k, v in m.items()} for m in jax.device_get(per_step)]
    return {**variables, self.key: trainable}, opt_state, per_step

  def gradients(self, variables: dict[str, Any], batch: TrainBatch) -> tuple[Any, dict[str, float]]:
    """(the accumulated gradient of the whole-batch loss w.r.t. the trainables, metrics)."""
    grads, metrics = self._gradients(
      variables, self._device_batch(batch), self.anchor_params, window_size(batch.loss_mask)
    )
    return grads, {k: float(v) for k, v in jax.device_get(metrics).items()}

  def logprobs(self, variables: dict[str, Any], batch: TrainBatch) -> np.ndarray:
    """[B, T] float32: log p(targets) under the current policy at the sampler's temperature,
    on the loss-mask positions (0 elsewhere), for the batch's own rows."""
    b = batch.shape[0]
    out = self._logprobs(variables, self._device_batch(batch), window_size(batch.loss_mask))
    return np.asarray(out)[:b]

  # --- inside jit ---------------------------------------------------------------------------------

  def _step_batches(self, batch: TrainBatch, seed: int):
    """The device batch of each optimiser step, all passes in order."""
    c = self.cfg
    steps = plan_steps(np.any(batch.loss_mask > 0, axis=1), c.mini_batch_size, c.ppo_epochs, seed)
    # One window for every step of the update: one compiled step (the steps' shapes are equal).
    window = window_size(batch.loss_mask)
    if steps is None:
      whole = self._device_batch(batch)  # put on the devices once for all passes
      for _ in range(c.ppo_epochs):
        yield whole, window
      return
    for rows in steps:
      # Every mini-batch has the same shape (the last one filled up): one compiled step.
      yield self._device_batch(pad_rows(take_rows(batch, rows), c.mini_batch_size)), window

  def _device_batch(self, batch: TrainBatch) -> TrainBatch:
    b = batch.shape[0]
    mb = self._micro_rows(b)
    batch = pad_rows(batch, -(-b // mb) * mb)
    return jax.device_put(batch, self.batch_sharding)

  def _micro_rows(self, rows: int) -> int:
    # A batch smaller than one micro-batch runs as one (rounded up to the batch shards).
    small = -(-rows // self.batch_shards) * self.batch_shards
    return min(self.cfg.micro_batch_size, small)

  def _split_micro(self, batch: TrainBatch) -> TrainBatch:
    """[B, T] -> [n_micro, micro, T]. Micro-batch i takes rows i, n + i, 2n + i, ...: with rows
    split over the batch axes in contiguous blocks, this keeps every row on its device and gives
    every micro-batch rows on every device (no device idles, no data moves)."""
    b, t = batch.shape
    mb = self._micro_rows(b)
    n = b // mb
    split = lambda x: jax.lax.with_sharding_constraint(
      x.reshape(mb, n, t).swapaxes(0, 1), self.micro_sharding
    )
    return jax.tree.map(split, batch)

  def _forward_logprobs(self, variables, m: TrainBatch, window: int, entropy: bool = False):
    """(log p(targets), entropy or None) at the `window` positions from each row's first loss
    position on: [B, W], with `m`'s targets, masks, old log-probs and advantages cut alike."""
    at_bw, m = response_window(m, window)
    logits_bwv, _ = self.model.apply(
      variables, m.tokens, m.positions, m.attention_mask, logits_at=at_bw
    )
    logp_bw, scaled_bwv = target_logprobs(logits_bwv, m.targets, self.temperature)
    return logp_bw, (losses.entropy_from_logits(scaled_bwv) if entropy else None), at_bw, m

  def _anchor(self, variables, anchor_params) -> dict[str, Any]:
    if self.cfg.train == "lora":
      # Proj applies adapters only when the 'lora' collection is present: this is the base model.
      return {"params": variables["params"]}
    return {**variables, "params": anchor_params}

  def _grads_and_metrics(self, variables, batch: TrainBatch, anchor_params, window: int):
    c = self.cfg.loss
    trainable = variables[self.key]
    frozen = jax.lax.stop_gradient({k: v for k, v in variables.items() if k != self.key})
    anchor = None
    if self.use_kl:
      anchor = jax.lax.stop_gradient(self._anchor(variables, anchor_params))
    micro = self._split_micro(batch)

    # Weights that make the sum over micro-batches equal the whole-batch aggregate: token_mean
    # divides by all response tokens, seq_mean_token_mean by all rows that have any.
    mask_nbt = micro.loss_mask > 0
    tokens_n = jnp.sum(mask_nbt, axis=(1, 2)).astype(jnp.float32)
    rows_n = jnp.sum(jnp.any(mask_nbt, axis=2), axis=1).astype(jnp.float32)
    token_w_n = tokens_n / jnp.maximum(jnp.sum(tokens_n), 1.0)
    row_w_n = rows_n / jnp.maximum(jnp.sum(rows_n), 1.0)
    agg_w_n = token_w_n if c.aggregation == "token_mean" else row_w_n

    def body(grads_acc, xs):
      m, w = xs
      anchor_logp = None
      if anchor is not None:  # no anchor forward at all when the penalty is off
        anchor_logp, *_ = self._forward_logprobs(anchor, m, window)

      def loss_fn(tr):
        # Entropy is always reported; only with entropy_coef > 0 does it enter the loss.
        logp, entropy, _, mw = self._forward_logprobs({**frozen, self.key: tr}, m, window, True)
        loss, metrics = losses.total_loss(
          logp, mw.old_logprobs, anchor_logp, mw.advantages, mw.loss_mask, c, entropy_bt=entropy
        )
        return loss * w, (loss, metrics)

      (_, (loss, metrics)), g = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
      # Accumulate in float32 whatever the parameters' dtype.
      grads_acc = jax.tree.map(lambda a, x: a + x.astype(jnp.float32), grads_acc, g)
      return grads_acc, dict(metrics, loss=loss)

    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), trainable)
    zeros = jax.lax.with_sharding_constraint(zeros, self.trainable_shardings)
    grads, per_micro = jax.lax.scan(body, zeros, (micro, agg_w_n))

    # Whole-batch metrics: each is a weighted sum with the weights of its own aggregation (the
    # ratio diagnostics are token means whatever the loss aggregation). A micro-batch with no
    # weight must not turn the sum into NaN.
    metrics = {}
    for name, values_n in per_micro.items():
      if name == "ratio_max":
        metrics[name] = jnp.max(values_n)
        continue
      w_n = token_w_n if name in TOKEN_METRICS else agg_w_n
      metrics[name] = jnp.sum(jnp.where(w_n > 0, w_n * values_n, 0.0))
    metrics["tokens"] = jnp.sum(tokens_n)
    metrics["rows"] = jnp.sum(rows_n)  # rows with response tokens: seq_mean's weight per step
    metrics["grad_norm"] = optax.tree.norm(grads)
    return grads, metrics

  def _update_step(self, trainable, opt_state, frozen, batch: TrainBatch, anchor_params, window):
    variables = {**frozen, self.key: trainable}
    grads, metrics = self._grads_and_metrics(variables, batch, anchor_params, window)
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, trainable)
    ok = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
    ok = ok & (metrics["tokens"] > 0)

    def apply(operands):
      tr, state = operands
      updates, state = self.tx.update(grads, state, tr)
      return optax.apply_updates(tr, updates), state

    # A non-finite step leaves weights and moments as they were, decided on the device: the
    # host learns of it from the metrics, after the fact, without a round trip in between.
    trainable, opt_state = jax.lax.cond(ok, apply, lambda o: o, (trainable, opt_state))
    metrics["skipped"] = 1.0 - ok.astype(jnp.float32)
    return trainable, opt_state, metrics

  def _policy_logprobs(self, variables, batch: TrainBatch, window: int):
    micro = self._split_micro(batch)

    def one(m):
      logp_bw, _, at_bw, mw = self._forward_logprobs(variables, m, window)
      logp_bw = jnp.where(mw.loss_mask > 0, logp_bw, 0.0)
      rows = jnp.arange(at_bw.shape[0])[:, None]
      return jnp.zeros(m.loss_mask.shape, jnp.float32).at[rows, at_bw].add(logp_bw)

    logp_nbt = jax.lax.map(one, micro)
    n, mb, t = logp_nbt.shape
    return logp_nbt.swapaxes(0, 1).reshape(n * mb, t)  # back to the batch's row order
