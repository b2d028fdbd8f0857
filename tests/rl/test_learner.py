"""The learner on the tiny random model: log-probs that match the sampler's, updates that move the
policy the way the advantage says, frozen and trained subtrees (and what is donated), micro-batching
equal to one big batch, mini-batch steps that move the PPO ratio and clip, ppo_epochs, skipped
non-finite steps, the KL anchor, and a sharded update equal to a single-device one.
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
import optax
import pytest

from jerp_jax.model import build, config as model_config, llama
from jerp_jax.parallel import mesh as mesh_lib
from jerp_jax.rl import learner as learner_lib
from jerp_jax.rl import losses
from jerp_jax.rl.batch import TrainBatch, TurnSample, pack
from jerp_jax.sampling.sampler import Sampler, SamplingParams
from tests.conftest import one_device_mesh

PROMPTS = [[5, 6, 7], [9, 10, 11, 12, 13], [100, 200], [7] * 9, [42], [3, 1, 4, 1, 5], [8, 8], [77]]
ADVANTAGES = [1.0, -0.5, 0.5, -1.0, 2.0, 0.25, -2.0, 1.5]


def host_variables(lm, lora_b: bool, scale: float = 20.0) -> dict:
  """The built weights on the host: dense params x20 (a peaked distribution instead of a near
  uniform one), and LoRA B random (the adapters matter) or zero (as initialised).

  Comparisons of float sums taken in another order (micro-batches, shards) use scale 1: the x20
  model is so ill-conditioned that reordering alone moves its gradients by ~1e-4 relative.
  """
  v = jax.tree.map(np.array, lm.variables)
  v["params"] = jax.tree.map(lambda x: x * scale if x.ndim > 1 else x, v["params"])
  rng = np.random.RandomState(0)
  for module in v["lora"]["layers"].values():
    b = module["b"]
    module["b"] = (0.05 * rng.standard_normal(b.shape)).astype(b.dtype) if lora_b else b
  return v


def on_device(lm, host: dict) -> dict:
  """Fresh device arrays in the model's layout (the update donates what it is given)."""
  return jax.device_put(host, lm.shardings)


def build_tiny(mesh):
  cfg = model_config.get_config()
  cfg.preset, cfg.random_init = "tiny", True
  cfg.lora.rank, cfg.lora.alpha = 4, 8.0
  return build.build(cfg, mesh, seed=1)


def learner_config(**overrides) -> ml_collections.ConfigDict:
  c = learner_lib.get_config()
  c.lr = 1e-3  # large enough that one step visibly moves the tiny model
  for key, value in overrides.items():
    target = c
    *path, last = key.split(".")
    for p in path:
      target = target[p]
    target[last] = value
  return c


@pytest.fixture(scope="module")
def tiny():
  lm = build_tiny(one_device_mesh())
  return lm, host_variables(lm, lora_b=True), host_variables(lm, lora_b=False)


@pytest.fixture(scope="module")
def well_conditioned(tiny):
  lm, _, _ = tiny
  return host_variables(lm, lora_b=True, scale=1.0)


@pytest.fixture(scope="module")
def sampler(tiny):
  lm, _, _ = tiny
  tok = lm.tokenizer
  return Sampler(
    lm.model, lm.mesh, tok.eos_ids, tok.pad_id, tok, max_seq_len=256, min_prompt_bucket=16
  )


@pytest.fixture(scope="module")
def samples(tiny, sampler):
  """Sampled turns with the sampler's log-probs; responses cut to different lengths (one empty)
  so that micro-batches hold different numbers of tokens."""
  lm, v, _ = tiny
  out = sampler.generate(on_device(lm, v), PROMPTS, SamplingParams(8, temperature=1.0), seed=3)
  keep = [8, 3, 5, 1, 0, 8, 2, 6]
  return [
    TurnSample(c.prompt_ids, c.token_ids[:k], c.logprobs[:k], a)
    for c, k, a in zip(out, keep, ADVANTAGES)
  ]


@pytest.fixture(scope="module")
def batch(tiny, samples) -> TrainBatch:
  lm, _, _ = tiny
  return pack(samples, lm.tokenizer.pad_id)


@pytest.fixture(scope="module")
def lora_learner(tiny):
  lm, v, _ = tiny
  return learner_lib.Learner(lm.model, lm.mesh, on_device(lm, v), learner_config(), 1.0)


def with_advantages(batch: TrainBatch, value: float) -> TrainBatch:
  return batch.replace(advantages=np.where(batch.loss_mask > 0, value, 0.0).astype(np.float32))


def assert_trees_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def max_abs(tree) -> float:
  return max(float(np.max(np.abs(np.asarray(x)))) for x in jax.tree.leaves(tree))


def max_abs_diff(a, b) -> float:
  leaves = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in leaves)


def test_logprobs_equal_the_samplers(tiny, sampler, samples, batch, lora_learner):
  lm, v, _ = tiny
  mask = batch.loss_mask > 0
  got = lora_learner.logprobs(on_device(lm, v), batch)
  assert got.shape == batch.shape and got.dtype == np.float32
  # So the first PPO ratio of every sampled token is 1.
  np.testing.assert_allclose(got[mask], batch.old_logprobs[mask], atol=1e-4)
  assert not got[~mask].any()

  out = sampler.generate(on_device(lm, v), PROMPTS[:3], SamplingParams(6, temperature=0.7), seed=5)
  hot = pack([TurnSample(c.prompt_ids, c.token_ids, c.logprobs, 0.0) for c in out], 0)
  learner = learner_lib.Learner(lm.model, lm.mesh, on_device(lm, v), learner_config(), 0.7)
  got = learner.logprobs(on_device(lm, v), hot)
  # Looser: the sampler runs the adapters merged into the kernels, and 1/0.7 scales the rounding.
  hot_mask = hot.loss_mask > 0
  np.testing.assert_allclose(got[hot_mask], hot.old_logprobs[hot_mask], atol=2e-4)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_advantage_sign_moves_the_sampled_logprob(tiny, batch, lora_learner, sign):
  lm, v, _ = tiny
  b = with_advantages(batch, sign)
  variables = on_device(lm, v)
  before = lora_learner.logprobs(variables, b)
  opt_state = lora_learner.init_opt_state(variables)
  variables, _, metrics = lora_learner.update(variables, opt_state, b)
  after = lora_learner.logprobs(variables, b)
  mask = b.loss_mask > 0
  assert metrics["skipped"] == 0.0 and metrics["tokens"] == mask.sum() == 33
  assert sign * (after[mask].sum() - before[mask].sum()) > 0.1


def test_lora_update_keeps_base_params_bit_identical(tiny, batch, lora_learner):
  lm, v, _ = tiny
  variables = on_device(lm, v)
  opt_state = lora_learner.init_opt_state(variables)
  for x, s in zip(jax.tree.leaves(opt_state), jax.tree.leaves(lora_learner.opt_shardings)):
    assert x.sharding.is_equivalent_to(s, x.ndim)
  new, opt_state, metrics = lora_learner.update(variables, opt_state, batch)
  # Only the adapters were donated: the base weights come back as the very arrays passed in,
  # alive, so a caller may keep them (and what it cached on them) across updates.
  assert new["params"] is variables["params"]
  assert not any(x.is_deleted() for x in jax.tree.leaves(variables["params"]))
  assert all(x.is_deleted() for x in jax.tree.leaves(variables["lora"]))
  assert_trees_equal(new["params"], v["params"])
  for name, module in new["lora"]["layers"].items():
    assert not np.allclose(np.asarray(module["b"]), v["lora"]["layers"][name]["b"]), name
    assert not np.allclose(np.asarray(module["a"]), v["lora"]["layers"][name]["a"]), name
  assert int(opt_state[1][0].count) == 1
  assert set(metrics) == {
    "loss",
    "pg_loss",
    "kl",
    "entropy",
    "clip_frac",
    "ratio_mean",
    "ratio_max",
    "approx_kl",
    "grad_norm",
    "steps",
    "skipped",
    "tokens",
  }
  assert (metrics["steps"], metrics["skipped"], metrics["tokens"]) == (1.0, 0.0, 33.0)
  assert lora_learner.trainable(new) is new["lora"]


def test_full_update_changes_params_against_a_kept_anchor(tiny, batch):
  lm, v, _ = tiny
  variables = on_device(lm, v)
  learner = learner_lib.Learner(lm.model, lm.mesh, variables, learner_config(train="full"), 1.0)
  opt_state = learner.init_opt_state(variables)
  lora = variables["lora"]
  variables, opt_state, first = learner.update(variables, opt_state, batch)
  assert variables["lora"] is lora  # frozen in full mode: not donated, returned as passed
  assert max_abs_diff(variables["params"], v["params"]) > 1e-4
  assert_trees_equal(variables["lora"], v["lora"])  # adapters are not trained in full mode
  # The anchor is the initial weights, kept apart from the donated ones: KL is 0, then not.
  assert first["kl"] == 0.0
  _, _, second = learner.update(variables, opt_state, batch)
  assert second["kl"] > 0.0


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean"])
def test_micro_batches_give_the_whole_batch_gradient(
  tiny, well_conditioned, batch, lora_learner, aggregation
):
  lm, _, _ = tiny
  v = well_conditioned
  whole = lora_learner
  if aggregation != "token_mean":
    whole = learner_lib.Learner(
      lm.model, lm.mesh, on_device(lm, v), learner_config(**{"loss.aggregation": aggregation}), 1.0
    )
  cfg = learner_config(**{"loss.aggregation": aggregation, "micro_batch_size": 1})
  micro = learner_lib.Learner(lm.model, lm.mesh, on_device(lm, v), cfg, 1.0)
  g_whole, m_whole = whole.gradients(on_device(lm, v), batch)
  g_micro, m_micro = micro.gradients(on_device(lm, v), batch)
  # A wrong weighting of the micro-batches would be off by O(1) relative; reordering is ~1e-6.
  assert max_abs_diff(g_whole, g_micro) < 2e-5 * max_abs(g_whole)
  for name in ("loss", "pg_loss", "kl", "clip_frac", "approx_kl", "grad_norm", "tokens"):
    np.testing.assert_allclose(m_micro[name], m_whole[name], rtol=1e-5, atol=1e-7, err_msg=name)
  if aggregation == "token_mean":
    variables = on_device(lm, v)
    a, _, _ = whole.update(variables, whole.init_opt_state(variables), batch)
    variables = on_device(lm, v)
    b, _, _ = micro.update(variables, micro.init_opt_state(variables), batch)
    assert max_abs_diff(a, b) < 1e-6


# --- the response window ------------------------------------------------------------------------


def test_window_size_covers_every_rows_response_in_a_power_of_two():
  mask = np.zeros((3, 64), np.float32)
  mask[0, 10:13] = 1  # 3 positions
  mask[1, 40:50] = 1  # 10 positions: the longest
  assert learner_lib.window_size(mask) == 16
  assert learner_lib.window_size(mask[:1]) == 8  # at least 8
  assert learner_lib.window_size(np.zeros((2, 64), np.float32)) == 8  # no loss token at all
  mask[2, 0:60] = 1
  assert learner_lib.window_size(mask) == 64  # never past the row


def test_response_window_takes_each_rows_positions_and_masks_past_the_end():
  t = 8
  mask = np.zeros((2, t), np.float32)
  mask[0, 2:4] = 1
  mask[1, 6:8] = 1  # ends at the row's last position: the window runs past it
  ramp = np.arange(2 * t, dtype=np.float32).reshape(2, t)
  batch = TrainBatch(
    tokens=ramp.astype(np.int32),
    positions=ramp.astype(np.int32),
    attention_mask=np.ones((2, t), bool),
    targets=ramp.astype(np.int32) + 100,
    loss_mask=mask,
    old_logprobs=-ramp,
    advantages=ramp / 10,
  )
  at, cut = learner_lib.response_window(batch, 4)
  np.testing.assert_array_equal(at, [[2, 3, 4, 5], [6, 7, 7, 7]])
  np.testing.assert_array_equal(cut.loss_mask, [[1, 1, 0, 0], [1, 1, 0, 0]])
  np.testing.assert_array_equal(cut.targets, [[102, 103, 104, 105], [114, 115, 115, 115]])
  np.testing.assert_array_equal(cut.old_logprobs, [[-2, -3, -4, -5], [-14, -15, -15, -15]])
  np.testing.assert_array_equal(cut.tokens, batch.tokens)  # the forward still reads every token


# --- mini-batch steps and passes ------------------------------------------------------------------


def test_plan_steps_shuffles_rows_with_tokens_into_mini_batches():
  has_tokens = np.array([1, 1, 0, 1, 1, 1, 0, 1], bool)
  steps = learner_lib.plan_steps(has_tokens, 4, 2, seed=7)
  assert [len(r) for r in steps] == [4, 2, 4, 2]  # two passes of 6 rows; empty rows 2, 6 left out
  for first, second in (steps[0:2], steps[2:4]):
    assert sorted(np.concatenate([first, second])) == [0, 1, 3, 4, 5, 7]
  # Deterministic in the seed; each pass (and each seed) shuffles anew.
  again = learner_lib.plan_steps(has_tokens, 4, 2, seed=7)
  assert all(np.array_equal(a, b) for a, b in zip(steps, again, strict=True))
  assert not np.array_equal(np.concatenate(steps[:2]), np.concatenate(steps[2:]))
  other = learner_lib.plan_steps(has_tokens, 4, 2, seed=8)
  assert not np.array_equal(np.concatenate(steps), np.concatenate(other))
  # The whole batch as given: no mini-batches, one no smaller than the batch, nothing to train.
  assert learner_lib.plan_steps(has_tokens, 0, 2, seed=7) is None
  assert learner_lib.plan_steps(has_tokens, 8, 2, seed=7) is None
  assert learner_lib.plan_steps(np.zeros(8, bool), 4, 2, seed=7) is None


def test_aggregate_steps_by_hand():
  step = dict(loss=1.0, pg_loss=1.0, kl=0.0, entropy=2.0, clip_frac=0.0, ratio_mean=1.0)
  step.update(ratio_max=1.0, approx_kl=0.0, grad_norm=2.0, tokens=3.0, rows=1.0, skipped=0.0)
  second = dict(step, loss=5.0, pg_loss=4.0, kl=1.0, entropy=6.0, clip_frac=1.0, ratio_mean=2.0)
  second.update(ratio_max=3.0, approx_kl=0.4, grad_norm=4.0, tokens=1.0, skipped=1.0)
  # No tokens, no weight: its NaN loss stays out of the means.
  empty = dict(step, loss=np.nan, tokens=0.0, rows=0.0, ratio_max=0.0, grad_norm=0.0)
  got = learner_lib.aggregate_steps([step, second, empty], "token_mean")
  # Token weights 3 : 1 (: 0). grad_norm: mean of 2, 4, 0.
  assert got == {
    "loss": (3 * 1.0 + 5.0) / 4,
    "pg_loss": (3 * 1.0 + 4.0) / 4,
    "kl": 0.25,
    "entropy": (3 * 2.0 + 6.0) / 4,
    "clip_frac": 0.25,
    "ratio_mean": 1.25,
    "ratio_max": 3.0,
    "approx_kl": 0.1,
    "grad_norm": 2.0,
    "steps": 2.0,
    "skipped": 1.0,
  }
  # Row weights 1 : 1 for the loss terms; the ratio diagnostics stay token means.
  got = learner_lib.aggregate_steps([step, second, empty], "seq_mean_token_mean")
  assert (got["loss"], got["pg_loss"], got["entropy"]) == (3.0, 2.5, 4.0)
  assert (got["clip_frac"], got["ratio_mean"]) == (0.25, 1.25)


@pytest.fixture(scope="module")
def mini_learner(tiny):
  """Mini-batches of 4 rows (2 micro-batches of 2), a large lr, a tiny clip range, no KL."""
  lm, v, _ = tiny
  eps = {"loss.clip_low": 1e-3, "loss.clip_high": 1e-3, "loss.kl_coef": 0.0}
  cfg = learner_config(mini_batch_size=4, micro_batch_size=2, lr=1e-2, **eps)
  return learner_lib.Learner(lm.model, lm.mesh, on_device(lm, v), cfg, 1.0)


def test_mini_batch_steps_move_the_ratio_and_clip(tiny, batch, mini_learner):
  """Two mini-batches (rows 1 5 2 3, then 7 6 0; the empty row 4 is left out): the first step sees
  the sampling policy (ratio 1 up to the sampler's rounding, nothing clipped at clip 1e-3); the
  second sees the policy after the first step, its ratios against the rollout's log-probs, and
  clips."""
  lm, v, _ = tiny
  learner = mini_learner
  rows = learner_lib.plan_steps(batch.loss_mask.any(axis=1), 4, 1, seed=5)
  assert [len(r) for r in rows] == [4, 3]
  first, second = (learner_lib.take_rows(batch, r) for r in rows)

  variables = on_device(lm, v)
  got, got_opt, per_step = learner.update_steps(
    variables, learner.init_opt_state(variables), batch, seed=5
  )

  # By hand: each mini-batch as a batch of its own, one step after the other.
  variables = on_device(lm, v)
  variables, opt_state, (m1,) = learner.update_steps(
    variables, learner.init_opt_state(variables), first
  )
  assert per_step[0] == m1
  assert m1["clip_frac"] == 0.0 and abs(m1["ratio_mean"] - 1.0) < 1e-4
  logp = learner.logprobs(variables, second)  # the policy after step 1, on step 2's rows
  mask = second.loss_mask > 0
  ratio = np.exp(logp[mask] - second.old_logprobs[mask])
  _, clipped = losses.ppo_clip(
    logp[mask], second.old_logprobs[mask], second.advantages[mask], 1e-3, 1e-3
  )
  m2 = per_step[1]
  assert m2["tokens"] == mask.sum() == 16 and abs(m2["ratio_mean"] - 1.0) > 1e-2
  np.testing.assert_allclose(m2["ratio_mean"], ratio.mean(), rtol=1e-5)
  np.testing.assert_allclose(m2["ratio_max"], ratio.max(), rtol=1e-5)
  assert m2["clip_frac"] == np.mean(np.asarray(clipped)) > 0.0
  variables, opt_state, _ = learner.update_steps(variables, opt_state, second)
  assert_trees_equal(got, variables)
  assert_trees_equal(got_opt, opt_state)
  assert int(got_opt[1][0].count) == 2

  # What update reports: both steps, taken.
  variables = on_device(lm, v)
  _, _, metrics = learner.update(variables, learner.init_opt_state(variables), batch, seed=5)
  assert (metrics["steps"], metrics["skipped"], metrics["tokens"]) == (2.0, 0.0, 33.0)
  assert metrics["ratio_max"] == m2["ratio_max"]
  assert metrics["clip_frac"] == m2["clip_frac"] * 16 / 33  # step 1 clipped nothing


def test_a_non_finite_mini_batch_skips_only_its_own_step(tiny, batch, mini_learner):
  lm, v, _ = tiny
  bad = batch.replace(advantages=batch.advantages.copy())
  bad.advantages[1, bad.loss_mask[1] > 0] = np.nan  # row 1: in the first step at seed 5
  variables = on_device(lm, v)
  opt_state = mini_learner.init_opt_state(variables)
  _, opt_state, per_step = mini_learner.update_steps(variables, opt_state, bad, seed=5)
  assert [m["skipped"] for m in per_step] == [1.0, 0.0]
  assert int(opt_state[1][0].count) == 1  # the second step was taken from the initial state
  variables = on_device(lm, v)
  opt_state = mini_learner.init_opt_state(variables)
  _, _, metrics = mini_learner.update(variables, opt_state, bad, seed=5)
  assert (metrics["steps"], metrics["skipped"]) == (1.0, 1.0)


def test_ppo_epochs_over_one_mini_batch_equal_repeated_updates(tiny, batch, lora_learner):
  lm, v, _ = tiny
  variables = on_device(lm, v)
  opt_state = lora_learner.init_opt_state(variables)
  variables, opt_state, a = lora_learner.update(variables, opt_state, batch)
  want, want_opt, b = lora_learner.update(variables, opt_state, batch)
  # The whole batch (mini_batch_size 0), and a mini-batch no smaller than the batch: one step per
  # pass over the rows as given, so the same program as the single updates.
  for mini in (0, 8):
    cfg = learner_config(ppo_epochs=2, mini_batch_size=mini)
    twice = learner_lib.Learner(lm.model, lm.mesh, on_device(lm, v), cfg, 1.0)
    variables = on_device(lm, v)
    got, got_opt, metrics = twice.update(variables, twice.init_opt_state(variables), batch, seed=3)
    assert_trees_equal(got, want)
    assert_trees_equal(got_opt, want_opt)
    assert (metrics["steps"], metrics["tokens"]) == (2.0, 33.0)
    assert metrics["ratio_max"] == max(a["ratio_max"], b["ratio_max"])
    np.testing.assert_allclose(metrics["loss"], (a["loss"] + b["loss"]) / 2, rtol=1e-6)


def test_whole_batch_update_is_one_optax_step_on_the_gradient(tiny, batch, lora_learner):
  """mini_batch_size 0 is the update as it was before mini-batches: one optimiser step on the
  accumulated gradient of the whole batch. (Checked bit for bit against the old learner when
  mini-batches came in; here against optax applied to `gradients` by hand.)"""
  lm, v, _ = tiny
  assert lora_learner.cfg.mini_batch_size == 0
  grads, _ = lora_learner.gradients(on_device(lm, v), batch)
  variables = on_device(lm, v)
  trainable = jax.tree.map(np.array, lora_learner.trainable(variables))
  opt_state = lora_learner.init_opt_state(variables)
  updates, _ = lora_learner.tx.update(grads, jax.tree.map(np.array, opt_state), trainable)
  want = optax.apply_updates(trainable, updates)
  got, _, metrics = lora_learner.update(variables, opt_state, batch)
  assert metrics["steps"] == 1.0
  assert max_abs_diff(lora_learner.trainable(got), want) < 1e-7


def test_non_finite_advantages_skip_the_step(tiny, batch, lora_learner):
  lm, v, _ = tiny
  bad = batch.replace(advantages=batch.advantages.copy())
  bad.advantages[1, bad.loss_mask[1] > 0] = np.nan
  variables = on_device(lm, v)
  opt_state = lora_learner.init_opt_state(variables)
  opt_host = jax.tree.map(np.array, opt_state)
  new, new_opt, metrics = lora_learner.update(variables, opt_state, bad)
  assert metrics["skipped"] == 1.0
  assert_trees_equal(new, v)
  assert_trees_equal(new_opt, opt_host)
  # The returned trees are live and usable: the next (finite) step runs from them.
  _, _, metrics = lora_learner.update(new, new_opt, batch)
  assert metrics["skipped"] == 0.0


def test_kl_is_zero_at_the_first_step_when_adapters_start_at_zero(tiny, batch, lora_learner):
  lm, _, v0 = tiny
  variables = on_device(lm, v0)
  opt_state = lora_learner.init_opt_state(variables)
  variables, opt_state, first = lora_learner.update(variables, opt_state, batch)
  assert first["kl"] == 0.0
  _, _, second = lora_learner.update(variables, opt_state, batch)
  assert second["kl"] > 0.0


def traced_forwards(learner, variables, batch) -> int:
  """How many model forward passes one trace of the gradient step makes (per micro-batch: the
  scan body is traced once)."""
  calls = []
  forward = learner._forward_logprobs
  learner._forward_logprobs = lambda *a, **k: calls.append(1) or forward(*a, **k)
  try:
    window = learner_lib.window_size(batch.loss_mask)
    jax.eval_shape(
      lambda v, b: learner._grads_and_metrics(v, b, learner.anchor_params, window), variables, batch
    )
  finally:
    del learner._forward_logprobs  # back to the class's method
  return len(calls)


def test_no_kl_term_when_its_coefficient_is_zero(tiny, batch, lora_learner):
  lm, v, _ = tiny
  off = learner_lib.Learner(
    lm.model, lm.mesh, on_device(lm, v), learner_config(**{"loss.kl_coef": 0.0}), 1.0
  )
  _, with_kl = lora_learner.gradients(on_device(lm, v), batch)
  _, without = off.gradients(on_device(lm, v), batch)
  assert with_kl["kl"] > 0.0 and without["kl"] == 0.0
  assert without["loss"] == without["pg_loss"]
  np.testing.assert_allclose(without["pg_loss"], with_kl["pg_loss"], rtol=1e-6)
  # The anchor is never run: one forward pass per micro-batch in the traced step, not two.
  assert traced_forwards(lora_learner, on_device(lm, v), batch) == 2
  assert traced_forwards(off, on_device(lm, v), batch) == 1


def test_config_errors_name_the_field(tiny):
  lm, v, _ = tiny
  cases = [
    ({"train": "both"}, r"rl.learner.train='both': expected one of \('lora', 'full'\)"),
    ({"lr": 0.0}, r"rl.learner.lr=0.0: expected a positive number"),
    ({"micro_batch_size": 0}, r"rl.learner.micro_batch_size=0"),
    (
      {"mini_batch_size": -8},
      r"rl.learner.mini_batch_size=-8: expected a positive integer, or 0 for the whole batch",
    ),
    (
      {"mini_batch_size": 12},
      r"rl.learner.mini_batch_size=12: expected 0 or a multiple of "
      r"rl.learner.micro_batch_size=8$",
    ),
    ({"ppo_epochs": 0}, r"rl.learner.ppo_epochs=0: expected a positive integer$"),
    ({"loss.aggregation": "sum"}, r"rl.learner.loss.aggregation='sum'"),
  ]
  for overrides, message in cases:
    with pytest.raises(ValueError, match=message):
      learner_lib.validate_config(learner_config(**overrides))
  learner_lib.validate_config(learner_config(mini_batch_size=16, ppo_epochs=2))
  plain = llama.Decoder(lm.args.replace(lora_rank=0, lora_alpha=0.0), lm.mesh)
  with pytest.raises(ValueError, match=r"model.lora.rank=0: rl.learner.train='lora' needs"):
    learner_lib.Learner(plain, lm.mesh, {"params": v["params"]}, learner_config())


@pytest.mark.skipif(
  jax.device_count() < 8,
  reason="needs 8 (virtual) devices; tests/conftest.py sets XLA_FLAGS before jax starts",
)
def test_sharded_update_equals_single_device(tiny, well_conditioned, batch, lora_learner):
  lm, _, _ = tiny
  v = well_conditioned
  mesh = mesh_lib.make_mesh((2, 2, 2))
  sharded_lm = build_tiny(mesh)
  with pytest.raises(ValueError, match=r"micro_batch_size=2 is not a multiple of 4"):
    learner_lib.Learner(
      sharded_lm.model, mesh, on_device(sharded_lm, v), learner_config(micro_batch_size=2)
    )
  # Micro-batches of 4 rows: two of them, each split over the 4 batch shards.
  cfg = learner_config(micro_batch_size=4)
  sharded = learner_lib.Learner(sharded_lm.model, mesh, on_device(sharded_lm, v), cfg, 1.0)
  assert sharded.rows_multiple == 4

  variables = on_device(sharded_lm, v)
  opt_state = sharded.init_opt_state(variables)
  got, got_opt, got_metrics = sharded.update(variables, opt_state, batch)
  variables = on_device(lm, v)
  want, _, want_metrics = lora_learner.update(
    variables, lora_learner.init_opt_state(variables), batch
  )
  assert max_abs_diff(got, want) < 1e-5
  for name in ("loss", "kl", "grad_norm", "tokens", "skipped"):
    np.testing.assert_allclose(got_metrics[name], want_metrics[name], rtol=1e-5, err_msg=name)

  # Still laid out as the model's shardings say, and really split across devices.
  for tree in (got, sharded.trainable(got)):
    shardings = sharded_lm.shardings if tree is got else sharded_lm.shardings["lora"]
    for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings), strict=True):
      assert x.sharding.is_equivalent_to(s, x.ndim)
  b_leaf = got["lora"]["layers"]["q_proj"]["b"]
  assert any(axis is not None for axis in b_leaf.sharding.spec)
  assert any(axis is not None for axis in got["params"]["embedding"].sharding.spec)
  mu = got_opt[1][0].mu["layers"]["q_proj"]["b"]
  assert mu.sharding.spec == b_leaf.sharding.spec

  # Mini-batch steps (4 rows each, one micro-batch split over the 4 shards) take the same steps.
  cfg = learner_config(micro_batch_size=4, mini_batch_size=4, ppo_epochs=2)
  results = []
  for model in (sharded_lm, lm):
    learner = learner_lib.Learner(model.model, model.mesh, on_device(model, v), cfg, 1.0)
    variables = on_device(model, v)
    results.append(learner.update(variables, learner.init_opt_state(variables), batch, seed=1))
  (got, _, got_metrics), (want, _, want_metrics) = results
  assert got_metrics["steps"] == want_metrics["steps"] == 4.0
  assert max_abs_diff(got, want) < 1e-5
  for name in ("loss", "clip_frac", "ratio_mean", "ratio_max", "grad_norm", "tokens"):
    np.testing.assert_allclose(got_metrics[name], want_metrics[name], rtol=1e-5, err_msg=name)


def test_logprobs_equal_the_samplers_in_bfloat16():
  """Sampler and learner compute in one dtype, so bf16 log-probs agree to bf16's rounding (the
  sampler runs the adapters merged into bf16 kernels, the learner runs them apart)."""
  cfg = model_config.get_config()
  cfg.preset, cfg.random_init, cfg.dtype = "tiny", True, "bfloat16"
  cfg.lora.rank, cfg.lora.alpha = 4, 8.0
  lm = build.build(cfg, one_device_mesh(), seed=1)
  assert (lm.model.args.dtype, lm.model.args.param_dtype) == ("bfloat16", "bfloat16")
  v = host_variables(lm, lora_b=True, scale=4.0)
  assert {x.dtype for x in jax.tree.leaves(v["lora"])} == {np.dtype("float32")}
  tok = lm.tokenizer
  sampler = Sampler(lm.model, lm.mesh, tok.eos_ids, tok.pad_id, tok, max_seq_len=256)
  out = sampler.generate(on_device(lm, v), PROMPTS, SamplingParams(8), seed=3)
  batch = pack([TurnSample(c.prompt_ids, c.token_ids, c.logprobs, 0.0) for c in out], 0)
  learner = learner_lib.Learner(lm.model, lm.mesh, on_device(lm, v), learner_config(), 1.0)
  got = learner.logprobs(on_device(lm, v), batch)
  mask = batch.loss_mask > 0
  diff = np.abs(got[mask] - batch.old_logprobs[mask])
  print(f"bf16 sampler vs learner log-probs: max {diff.max():.4f}, mean {diff.mean():.4f}")
  # bf16 keeps 8 bits of mantissa: ~0.01 a token on average here (max ~0.05), against ~1e-5 in
  # float32. A PPO ratio clipped at 1 +- 0.2 tolerates that.
  assert mask.sum() == 64 and diff.mean() < 0.02 and diff.max() < 0.1
