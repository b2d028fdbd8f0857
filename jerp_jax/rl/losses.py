"""The token-level policy loss: policy-gradient term, KL to the anchor policy, aggregation.

The anchor is the frozen policy the KL penalty holds the learner near (often called the reference
policy; here "reference" names only the rule side's reference trajectories).

Each piece is a small pure jax.numpy function registered by name and picked from the config:
  POLICY_LOSSES  `rl.loss.policy_loss`   per-token loss from (logp, old_logp, advantages)
  KL_ESTIMATORS  `rl.loss.kl_estimator`  per-token KL(pi || ref) estimate from sampled tokens
  AGGREGATIONS   `rl.loss.aggregation`   [B, T] values and mask -> one scalar

`total_loss` composes them. Shapes: `_bt` is [batch rows, tokens]; the mask is 1 on the response
tokens being trained and 0 on prompt, observation and padding tokens. Masked positions contribute
nothing to the loss, to the metrics or to the gradient, whatever finite values they hold.

Never computes log-probabilities (the caller gathers them from the model's logits) and never
touches parameters or optimiser state.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections

from jerp_jax import checks


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.policy_loss = "ppo_clip"  # a key of POLICY_LOSSES
  c.clip_low = 0.2  # ratio clipped below at 1 - clip_low
  c.clip_high = 0.2  # ratio clipped above at 1 + clip_high (DAPO raises it, e.g. 0.28)
  c.kl_coef = 0.01  # weight of the KL-to-anchor term; 0 turns it off
  c.kl_estimator = "k3"  # a key of KL_ESTIMATORS
  c.aggregation = "token_mean"  # a key of AGGREGATIONS
  c.entropy_coef = 0.0  # weight of the entropy bonus; > 0 needs entropy_bt in total_loss
  return c


def validate_config(c: ml_collections.ConfigDict, prefix: str = "rl.loss") -> None:
  checks.require(c, prefix, {
    "policy_loss": checks.one_of(POLICY_LOSSES),
    # 1 - clip_low must stay positive, or the lower clip would allow a non-positive ratio.
    "clip_low": checks.number_in(0, 1, closed=False),
    "clip_high": checks.NON_NEGATIVE, "kl_coef": checks.NON_NEGATIVE,
    "kl_estimator": checks.one_of(KL_ESTIMATORS), "aggregation": checks.one_of(AGGREGATIONS),
    "entropy_coef": checks.NON_NEGATIVE,
  })  # fmt: skip


# --- KL estimators (Schulman, "Approximating KL divergence", 2020) -------------------------------
# Each estimates KL(pi || ref) from a token sampled from pi; the expectation under pi of k1 and k3
# is exactly the KL, k2's is close to it for nearby policies.


def kl_k1(logp: jax.Array, anchor_logp: jax.Array) -> jax.Array:
  """log(pi / ref): unbiased, high variance, negative on some tokens."""
  return logp - anchor_logp


def kl_k2(logp: jax.Array, anchor_logp: jax.Array) -> jax.Array:
  """0.5 * log(pi / ref)^2: biased, low variance, never negative."""
  return 0.5 * (logp - anchor_logp) ** 2


def kl_k3(logp: jax.Array, anchor_logp: jax.Array) -> jax.Array:
  """ref/pi - log(ref/pi) - 1: unbiased, low variance, never negative (x - 1 >= log x)."""
  log_ratio = anchor_logp - logp
  return jnp.exp(log_ratio) - log_ratio - 1.0


KlEstimator = Callable[[jax.Array, jax.Array], jax.Array]
KL_ESTIMATORS: dict[str, KlEstimator] = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


# --- Policy losses ------------------------------------------------------------------------------


def ppo_clip(
  logp: jax.Array,
  old_logp: jax.Array,
  advantages: jax.Array,
  clip_low: float,
  clip_high: float,
) -> tuple[jax.Array, jax.Array]:
  """(per-token loss, clipped): PPO's clipped surrogate, -min(r A, clip(r, 1-lo, 1+hi) A).

  `clipped` marks the tokens where the clipped branch is strictly smaller, i.e. where the
  gradient is cut off; at equality the unclipped branch carries the gradient.
  """
  ratio = jnp.exp(logp - old_logp)
  unclipped = ratio * advantages
  clipped = jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high) * advantages
  return -jnp.minimum(unclipped, clipped), clipped < unclipped


def behaviour_cloning(
  logp: jax.Array,
  old_logp: jax.Array,
  advantages: jax.Array,
  clip_low: float,
  clip_high: float,
) -> tuple[jax.Array, jax.Array]:
  """(per-token loss, clipped): the demonstrated token's negative log-likelihood, weighted by its
  advantage (1 for an expert demonstration). The warm start's loss; never clipped, and the
  sampling policy's log-probs play no part (a demonstration was not sampled)."""
  del old_logp, clip_low, clip_high
  return -logp * advantages, jnp.zeros(logp.shape, bool)


PolicyLoss = Callable[[jax.Array, jax.Array, jax.Array, float, float], tuple[jax.Array, jax.Array]]
POLICY_LOSSES: dict[str, PolicyLoss] = {"ppo_clip": ppo_clip, "bc": behaviour_cloning}


# --- Aggregations -------------------------------------------------------------------------------
# jnp.where, not values * mask: a masked position holding inf would otherwise give inf * 0 = NaN.


def token_mean(values_bt: jax.Array, mask_bt: jax.Array) -> jax.Array:
  """Mean over all unmasked tokens of the batch: every token weighs the same (DAPO)."""
  mask_bt = mask_bt.astype(bool)
  total = jnp.sum(jnp.where(mask_bt, values_bt, 0.0))
  return total / jnp.maximum(jnp.sum(mask_bt), 1)


def seq_mean_token_mean(values_bt: jax.Array, mask_bt: jax.Array) -> jax.Array:
  """Mean over rows with any unmasked token of each row's token mean: every row weighs the same."""
  mask_bt = mask_bt.astype(bool)
  tokens_b = jnp.sum(mask_bt, axis=-1)
  row_mean_b = jnp.sum(jnp.where(mask_bt, values_bt, 0.0), axis=-1) / jnp.maximum(tokens_b, 1)
  has_tokens_b = tokens_b > 0
  total = jnp.sum(jnp.where(has_tokens_b, row_mean_b, 0.0))
  return total / jnp.maximum(jnp.sum(has_tokens_b), 1)


Aggregation = Callable[[jax.Array, jax.Array], jax.Array]
AGGREGATIONS: dict[str, Aggregation] = {
  "token_mean": token_mean,
  "seq_mean_token_mean": seq_mean_token_mean,
}


def entropy_from_logits(logits_btv: jax.Array) -> jax.Array:
  """[B, T] entropy of the softmax over the vocabulary, for `total_loss(..., entropy_bt=)`."""
  logp_btv = jax.nn.log_softmax(logits_btv.astype(jnp.float32), axis=-1)
  return -jnp.sum(jnp.exp(logp_btv) * logp_btv, axis=-1)


# --- The loss -----------------------------------------------------------------------------------


def total_loss(
  logp_bt: jax.Array,
  old_logp_bt: jax.Array,
  anchor_logp_bt: jax.Array | None,
  advantages_bt: jax.Array,
  mask_bt: jax.Array,
  c: ml_collections.ConfigDict,
  entropy_bt: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(scalar loss, metrics): policy loss + kl_coef * KL(pi || ref) - entropy_coef * entropy.

  logp_bt are the current policy's log-probabilities of the sampled tokens and entropy_bt its
  entropies (optional), the inputs the gradient flows through; old_logp_bt (the sampling
  policy's), anchor_logp_bt (the anchor's, or None for no KL term) and advantages_bt ([B, T] or
  broadcastable, e.g. [B, 1]) are data: gradients are stopped there.
  Metrics: pg_loss, kl, clip_frac, ratio_mean, ratio_max, approx_kl (and entropy when entropy_bt
  is given); ratio_max is 0 when no token is unmasked.
  """
  mask_bt = mask_bt.astype(bool)
  aggregate = AGGREGATIONS[c.aggregation]
  # Zero the inputs at masked positions before any exp: a garbage log-ratio there could overflow,
  # and an inf in the unselected branch of a where still turns the gradient into NaN.
  logp_bt = jnp.where(mask_bt, logp_bt, 0.0)
  old_logp_bt = jnp.where(mask_bt, jax.lax.stop_gradient(old_logp_bt), 0.0)
  advantages_bt = jnp.where(mask_bt, jax.lax.stop_gradient(advantages_bt), 0.0)

  pg_bt, clipped_bt = POLICY_LOSSES[c.policy_loss](
    logp_bt, old_logp_bt, advantages_bt, c.clip_low, c.clip_high
  )
  pg_loss = aggregate(pg_bt, mask_bt)
  loss = pg_loss

  kl = jnp.zeros((), jnp.float32)
  if anchor_logp_bt is not None:
    anchor_logp_bt = jnp.where(mask_bt, jax.lax.stop_gradient(anchor_logp_bt), 0.0)
    kl = aggregate(KL_ESTIMATORS[c.kl_estimator](logp_bt, anchor_logp_bt), mask_bt)
    if c.kl_coef > 0:
      loss = loss + c.kl_coef * kl

  metrics = {"pg_loss": pg_loss, "kl": kl}
  if entropy_bt is not None:
    entropy = aggregate(jnp.where(mask_bt, entropy_bt, 0.0), mask_bt)
    metrics["entropy"] = entropy
    if c.entropy_coef > 0:
      loss = loss - c.entropy_coef * entropy
  elif c.entropy_coef > 0:
    raise ValueError(f"entropy_coef={c.entropy_coef!r} > 0 needs entropy_bt, got None")

  log_ratio_bt = logp_bt - old_logp_bt
  metrics["clip_frac"] = token_mean(clipped_bt.astype(jnp.float32), mask_bt)
  ratio_bt = jnp.exp(log_ratio_bt)
  metrics["ratio_mean"] = token_mean(ratio_bt, mask_bt)
  # Where the mean hides a few tokens far off 1 (what clipping is for).
  metrics["ratio_max"] = jnp.max(jnp.where(mask_bt, ratio_bt, 0.0))
  metrics["approx_kl"] = token_mean(0.5 * log_ratio_bt**2, mask_bt)
  # Diagnostics only: no gradient through them when a caller differentiates the metrics too.
  return loss, jax.tree.map(jax.lax.stop_gradient, metrics)
