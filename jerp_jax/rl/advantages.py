"""Advantage estimators: one advantage per turn, from the rewards of a flat table of turns.

Each estimator is a small pure function `(Turns, config) -> advantages [N] float32`, registered by
name in `ESTIMATORS` and picked by `advantages.estimator`:
  grpo   episode level: an episode's return (the undiscounted sum of its shaped rewards) against
         the other episodes of its group (the G episodes of one task); every turn of the episode
         gets the episode's advantage.
  gigpo  GiGPO (Feng et al., 2025): grpo plus `step_weight` times a step-level advantage. Within a
         group, the turns that acted on the same observation (same `anchor`) form a step group,
         and each turn's discounted return-to-go is compared with the others of its step group.

Normalisation is `(x - mean) / (std + eps)` (or `x - mean` when `norm_by_std` is off) with the
sample std (ddof=1), as GRPO and verl (`torch.std`) use. A group of one has no baseline to compare
with, so its advantage is 0, not its raw return (verl keeps the raw score there; we would rather
not push the policy on a signal with no baseline).

The reward is shaped before anything else: a turn whose text did not parse to a valid action loses
`invalid_penalty`, so format errors are learned against even in episodes that succeed.

Host-side numpy only (float64 inside, float32 out): the table is small and built from rollouts on
the host, and the result is fed to the device as data. Never touches the model or the device.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import ml_collections
import numpy as np

from jerp_jax import checks


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.estimator = "grpo"  # a key of ESTIMATORS
  c.gamma = (
    0.95  # discount of the step-level returns-to-go (gigpo); grpo's returns are undiscounted
  )
  c.invalid_penalty = 0.1  # subtracted from the reward of a turn whose action did not parse
  c.norm_by_std = True  # divide by the group's std (GRPO) or only subtract its mean (Dr. GRPO)
  c.eps = 1e-6  # keeps a group whose returns are all equal at advantage 0 instead of 0/0
  c.step_weight = 1.0  # gigpo: weight of the step-level advantage added to the episode-level one
  return c


def validate_config(c: ml_collections.ConfigDict, prefix: str = "rl.advantages") -> None:
  checks.require(c, prefix, {
    "estimator": checks.one_of(ESTIMATORS),
    "gamma": checks.number_in(0, 1),
    "invalid_penalty": checks.NON_NEGATIVE, "norm_by_std": checks.BOOL, "eps": checks.POSITIVE,
    "step_weight": checks.NON_NEGATIVE,
  })  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Turns:
  """One row per turn; the turns of an episode are contiguous and in step order."""

  rewards: np.ndarray  # [N] float: the environment's reward for the turn
  valid: np.ndarray  # [N] bool: the model's text parsed to a valid action
  episode: np.ndarray  # [N] int: episode id
  group: np.ndarray  # [N] int: group id, shared by the G episodes of one task
  anchor: np.ndarray  # [N] int: id of the observation acted on (equal id = identical text); gigpo


def shaped_rewards(turns: Turns, invalid_penalty: float) -> np.ndarray:
  """[N] float64: the reward, less `invalid_penalty` where the action was not valid."""
  rewards = np.asarray(turns.rewards, np.float64)
  invalid = ~np.asarray(turns.valid, bool)
  return rewards - invalid_penalty * invalid


def _episode_starts(episode: np.ndarray) -> np.ndarray:
  """[N] bool: the row begins an episode. Raises if an episode's rows are not contiguous."""
  episode = np.asarray(episode)
  starts = np.ones(len(episode), bool)
  starts[1:] = episode[1:] != episode[:-1]
  # A non-contiguous episode would silently be discounted as two episodes; refuse it instead.
  if starts.sum() != len(np.unique(episode)):
    raise ValueError("turns: the rows of each episode must be contiguous")
  return starts


def discounted_returns(rewards: np.ndarray, episode: np.ndarray, gamma: float) -> np.ndarray:
  """[N] float64: each turn's return-to-go, sum_k gamma^k r[t+k], not crossing its episode's end."""
  rewards = np.asarray(rewards, np.float64)
  starts = _episode_starts(episode)
  returns = np.empty_like(rewards)
  running = 0.0
  # Backwards over the rows; the next row's running return counts only if it is the same episode.
  for t in range(len(rewards) - 1, -1, -1):
    continues = t + 1 < len(rewards) and not starts[t + 1]
    running = rewards[t] + (gamma * running if continues else 0.0)
    returns[t] = running
  return returns


def _normalise_within(values: np.ndarray, keys: np.ndarray, norm_by_std: bool, eps: float):
  """[M] float64: each value against the others with its key: (v - mean) [/ (std + eps)].

  std is the sample std (ddof=1); a key held by one value gets 0.
  """
  _, inverse = np.unique(keys, axis=0, return_inverse=True)
  inverse = inverse.reshape(-1)
  counts = np.bincount(inverse).astype(np.float64)
  mean = np.bincount(inverse, weights=values) / counts
  centred = values - mean[inverse]
  if norm_by_std:
    squares = np.bincount(inverse, weights=centred**2)
    std = np.sqrt(squares / np.maximum(counts - 1.0, 1.0))
    centred = centred / (std[inverse] + eps)
  return np.where(counts[inverse] > 1, centred, 0.0)


def _episode_advantages(turns: Turns, c: ml_collections.ConfigDict) -> np.ndarray:
  """[N] float64: grpo's episode-level advantage, repeated on every turn of the episode."""
  episode = np.asarray(turns.episode)
  if len(episode) == 0:
    return np.zeros(0, np.float64)
  _, first_rows, turn_to_episode = np.unique(episode, return_index=True, return_inverse=True)
  returns = np.bincount(turn_to_episode, weights=shaped_rewards(turns, c.invalid_penalty))
  episode_group = np.asarray(turns.group)[first_rows]
  if np.any(episode_group[turn_to_episode] != np.asarray(turns.group)):
    raise ValueError("turns: every turn of an episode must carry the episode's group")
  advantages = _normalise_within(returns, episode_group, c.norm_by_std, c.eps)
  return advantages[turn_to_episode]


def grpo(turns: Turns, c: ml_collections.ConfigDict) -> np.ndarray:
  """[N] float32: each turn gets its episode's return normalised within the episode's group."""
  return _episode_advantages(turns, c).astype(np.float32)


def gigpo(turns: Turns, c: ml_collections.ConfigDict) -> np.ndarray:
  """[N] float32: grpo + step_weight * (discounted return-to-go normalised within its step group).

  A step group is (group, anchor): the same observation in another task's group is another state.
  """
  episode_level = _episode_advantages(turns, c)
  if len(episode_level) == 0:
    return episode_level.astype(np.float32)
  returns = discounted_returns(shaped_rewards(turns, c.invalid_penalty), turns.episode, c.gamma)
  step_keys = np.stack([np.asarray(turns.group), np.asarray(turns.anchor)], axis=1)
  step_level = _normalise_within(returns, step_keys, c.norm_by_std, c.eps)
  return (episode_level + c.step_weight * step_level).astype(np.float32)


Estimator = Callable[[Turns, ml_collections.ConfigDict], np.ndarray]
ESTIMATORS: dict[str, Estimator] = {"grpo": grpo, "gigpo": gigpo}


def compute(turns: Turns, c: ml_collections.ConfigDict) -> np.ndarray:
  """[N] float32 advantages by `c.estimator`, after checking the table's columns agree."""
  n = len(turns.rewards)
  for field in dataclasses.fields(Turns):
    column = np.asarray(getattr(turns, field.name))
    if column.shape != (n,):
      raise ValueError(f"turns.{field.name} has shape {column.shape}: expected ({n},) like rewards")
  return ESTIMATORS[c.estimator](turns, c)
