"""Advantage estimators against hand-computed values on a nine-turn table."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jerp_jax.rl import advantages as adv_lib
from jerp_jax.rl.advantages import Turns

# Three groups. The shaped reward is the reward less 0.1 where the action was invalid.
#
#   row  group  episode  anchor  reward  valid  shaped | episode return
#    0     0       0       10      0.0     T     0.0   |  ep0: 0 + 2      =  2
#    1     0       0       11      2.0     T     2.0   |
#    2     0       1       10      0.1     F     0.0   |  ep1: 0 + (-2)   = -2
#    3     0       1       11     -2.0     T    -2.0   |
#    4     0       2       10      0.1     F     0.0   |  ep2: 0          =  0
#    5     1       3       10      1.0     T     1.0   |  ep3: 1 + 1      =  2
#    6     1       3       12      1.0     T     1.0   |
#    7     1       4       10      0.0     T     0.0   |  ep4: 0          =  0
#    8     2       5       10      5.0     T     5.0   |  ep5: 5 (alone in its group)
#
# Anchor 10 is the task's first observation; group 1 reuses the id 10 for another task, which
# must not join group 0's step group.
TURNS = Turns(
  rewards=np.array([0.0, 2.0, 0.1, -2.0, 0.1, 1.0, 1.0, 0.0, 5.0]),
  valid=np.array([True, True, False, True, False, True, True, True, True]),
  episode=np.array([0, 0, 1, 1, 2, 3, 3, 4, 5]),
  group=np.array([0, 0, 0, 0, 0, 1, 1, 1, 2]),
  anchor=np.array([10, 11, 10, 11, 10, 10, 12, 10, 10]),
)
S = 1.0 / math.sqrt(2.0)
# The eps in (std + eps) moves the values by about 1e-6 relative; the tolerance covers it.
TOL = dict(rtol=1e-5, atol=1e-5)


def config(**overrides):
  c = adv_lib.get_config()
  c.update(overrides)
  adv_lib.validate_config(c)
  return c


def test_shaped_rewards_subtract_the_penalty_on_invalid_turns():
  np.testing.assert_allclose(
    adv_lib.shaped_rewards(TURNS, 0.1), [0.0, 2.0, 0.0, -2.0, 0.0, 1.0, 1.0, 0.0, 5.0], atol=1e-12
  )
  np.testing.assert_allclose(
    adv_lib.shaped_rewards(TURNS, 0.5), [0.0, 2.0, -0.4, -2.0, -0.4, 1.0, 1.0, 0.0, 5.0]
  )


def test_discounted_returns_stop_at_the_episode_end():
  # gamma = 0.5 on the shaped rewards:
  #   ep0 [0, 2]  -> [0 + 0.5*2, 2]   = [1, 2]   (row 1 does not see ep1's rewards)
  #   ep1 [0, -2] -> [-1, -2];  ep2 [0];  ep3 [1, 1] -> [1.5, 1];  ep4 [0];  ep5 [5]
  shaped = adv_lib.shaped_rewards(TURNS, 0.1)
  returns = adv_lib.discounted_returns(shaped, TURNS.episode, 0.5)
  np.testing.assert_allclose(returns, [1.0, 2.0, -1.0, -2.0, 0.0, 1.5, 1.0, 0.0, 5.0], atol=1e-12)
  # gamma = 1: plain sums to go; gamma = 0: the reward itself.
  np.testing.assert_allclose(
    adv_lib.discounted_returns([1.0, 2.0, 3.0, 4.0], [7, 7, 7, 8], 1.0), [6.0, 5.0, 3.0, 4.0]
  )
  np.testing.assert_allclose(
    adv_lib.discounted_returns([1.0, 2.0, 3.0], [0, 0, 0], 0.0), [1.0, 2.0, 3.0]
  )


def test_discounted_returns_refuse_a_split_episode():
  with pytest.raises(ValueError, match="contiguous"):
    adv_lib.discounted_returns([1.0, 1.0, 1.0], [0, 1, 0], 0.9)


def test_grpo_normalised_by_std():
  # group 0 returns [2, -2, 0]: mean 0, sample std sqrt((4 + 4 + 0) / 2) = 2 -> [1, -1, 0]
  # group 1 returns [2, 0]:     mean 1, sample std sqrt((1 + 1) / 1) = sqrt 2 -> [1/sqrt2, -1/sqrt2]
  # group 2 has one episode -> 0. Every turn carries its episode's advantage.
  a = adv_lib.compute(TURNS, config(estimator="grpo"))
  assert a.dtype == np.float32 and a.shape == (9,)
  np.testing.assert_allclose(a, [1, 1, -1, -1, 0, S, S, -S, 0], **TOL)


def test_grpo_mean_only():
  # Without the std: group 0 [2, -2, 0] - 0; group 1 [2, 0] - 1 = [1, -1]; group 2 -> 0.
  a = adv_lib.compute(TURNS, config(estimator="grpo", norm_by_std=False))
  np.testing.assert_allclose(a, [2, 2, -2, -2, 0, 1, 1, -1, 0], atol=1e-6)


def test_grpo_uses_the_invalid_penalty():
  # Penalty 0.4: ep1 = (0.1 - 0.4) - 2 = -2.3, ep2 = 0.1 - 0.4 = -0.3; group 0 returns
  #   [2, -2.3, -0.3], mean -0.6 / 3 = -0.2 -> mean-only advantages [2.2, -2.1, -0.1].
  a = adv_lib.compute(TURNS, config(norm_by_std=False, invalid_penalty=0.4))
  np.testing.assert_allclose(a[:5], [2.2, 2.2, -2.1, -2.1, -0.1], atol=1e-6)


def test_equal_returns_and_singleton_groups_give_zero():
  turns = Turns(
    rewards=np.array([1.0, 1.0, 3.0]),
    valid=np.ones(3, bool),
    episode=np.array([0, 1, 2]),
    group=np.array([0, 0, 1]),
    anchor=np.zeros(3, int),
  )
  for estimator in adv_lib.ESTIMATORS:
    np.testing.assert_array_equal(adv_lib.compute(turns, config(estimator=estimator)), [0, 0, 0])


def test_gigpo_adds_the_step_level_advantage():
  # Discounted returns (gamma 0.5) per row: [1, 2, -1, -2, 0, 1.5, 1, 0, 5] (see above).
  # Step groups (group, anchor):
  #   (0, 10) rows 0, 2, 4: [1, -1, 0]  mean 0, std 1       -> [1, -1, 0]
  #   (0, 11) rows 1, 3:    [2, -2]     mean 0, std 2 sqrt2 -> [1/sqrt2, -1/sqrt2]
  #   (1, 10) rows 5, 7:    [1.5, 0]    mean .75, std .75 sqrt2 -> [1/sqrt2, -1/sqrt2]
  #   (1, 12) row 6 and (2, 10) row 8 are alone -> 0
  # step = [1, S, -1, -S, 0, S, 0, -S, 0]; grpo = [1, 1, -1, -1, 0, S, S, -S, 0].
  step = np.array([1, S, -1, -S, 0, S, 0, -S, 0])
  grpo = np.array([1, 1, -1, -1, 0, S, S, -S, 0])
  a = adv_lib.compute(TURNS, config(estimator="gigpo", gamma=0.5))
  np.testing.assert_allclose(a, grpo + step, **TOL)
  a = adv_lib.compute(TURNS, config(estimator="gigpo", gamma=0.5, step_weight=0.5))
  np.testing.assert_allclose(a, grpo + 0.5 * step, **TOL)
  # step_weight 0 is grpo.
  a = adv_lib.compute(TURNS, config(estimator="gigpo", step_weight=0.0))
  np.testing.assert_allclose(a, adv_lib.compute(TURNS, config()), atol=1e-7)


def test_gigpo_mean_only():
  # Step groups without the std: (0, 10) [1, -1, 0]; (0, 11) [2, -2]; (1, 10) [0.75, -0.75].
  # grpo mean-only = [2, 2, -2, -2, 0, 1, 1, -1, 0].
  a = adv_lib.compute(TURNS, config(estimator="gigpo", gamma=0.5, norm_by_std=False))
  np.testing.assert_allclose(a, [3, 4, -3, -4, 0, 1.75, 1, -1.75, 0], atol=1e-6)


def test_empty_table():
  empty = Turns(*(np.zeros(0) for _ in range(5)))
  for estimator in adv_lib.ESTIMATORS:
    a = adv_lib.compute(empty, config(estimator=estimator))
    assert a.shape == (0,) and a.dtype == np.float32


def test_mismatched_lengths_name_the_array():
  turns = Turns(
    rewards=np.zeros(3),
    valid=np.ones(3, bool),
    episode=np.zeros(3, int),
    group=np.zeros(2, int),
    anchor=np.zeros(3, int),
  )
  with pytest.raises(ValueError, match=r"turns.group has shape \(2,\): expected \(3,\)"):
    adv_lib.compute(turns, config())


def test_an_episode_across_groups_is_refused():
  turns = Turns(
    rewards=np.zeros(2),
    valid=np.ones(2, bool),
    episode=np.array([0, 0]),
    group=np.array([0, 1]),
    anchor=np.zeros(2, int),
  )
  with pytest.raises(ValueError, match="group"):
    adv_lib.compute(turns, config())


def test_defaults_validate():
  c = adv_lib.get_config()
  adv_lib.validate_config(c)
  assert (c.estimator, c.gamma, c.invalid_penalty, c.norm_by_std, c.eps, c.step_weight) == (
    "grpo",
    0.95,
    0.1,
    True,
    1e-6,
    1.0,
  )


@pytest.mark.parametrize(
  "field,value,match",
  [
    ("estimator", "ppo", r"rl.advantages.estimator='ppo': expected one of \('grpo', 'gigpo'\)"),
    ("gamma", 1.5, r"rl.advantages.gamma=1.5: expected a number in \[0, 1\]"),
    ("gamma", -0.1, r"rl.advantages.gamma=-0.1: expected a number in \[0, 1\]"),
    ("invalid_penalty", -1.0, r"rl.advantages.invalid_penalty=-1.0: expected a non-negative"),
    ("eps", 0.0, r"rl.advantages.eps=0.0: expected a positive number"),
    ("step_weight", -0.5, r"rl.advantages.step_weight=-0.5: expected a non-negative number"),
  ],
)
def test_bad_values_fail_with_the_field(field, value, match):
  c = adv_lib.get_config()
  c[field] = value
  with pytest.raises(ValueError, match=match):
    adv_lib.validate_config(c)


def test_prefix_names_the_block():
  c = adv_lib.get_config()
  c.gamma = 2.0
  with pytest.raises(ValueError, match=r"^exp.rl.adv.gamma=2.0"):
    adv_lib.validate_config(c, prefix="exp.rl.adv")
