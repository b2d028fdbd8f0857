"""Behaviour cloning, the warm start: the env expert's actions as the model's own answers, cloned.

`DemoPolicy` plays the expert's actions through `episodes.play` (a pool made with `expert=True`),
each written as the answer the model would give to its own prompt, so the demonstrated turns are
in exactly the context the model is later sampled and trained in. `clone` takes optimizer steps
on random batches of those turns with the `bc` loss (no KL, no clipping) and an optimizer of its
own, every batch padded to one length: one compiled step for the whole stage.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import ml_collections
import numpy as np
from tqdm import tqdm

from jerp_jax.agent.policy import ModelPolicy
from jerp_jax.episodes import Episode, Turn
from jerp_jax.parallel import buckets
from jerp_jax.rl import batch as batch_lib
from jerp_jax.rl import learner as learner_lib


class DemoPolicy(ModelPolicy):
  """The expert's actions written as the model's answers to its own prompts. An answer is
  `<tag>action</tag>` less the response prefix already in the prompt; its log-probs are zeros
  (nothing was sampled)."""

  def __init__(self, tokenizer, agent_cfg, actions_cfg, max_prompt_tokens: int):
    super().__init__(self._answer, tokenizer, agent_cfg, actions_cfg, max_prompt_tokens)
    self._actions: list[str] = []

  def act(self, episodes: Sequence[Episode], seed: int) -> list[Turn | None]:
    known = [e for e in episodes if e.latest.expert_action is not None]
    self._actions = [e.latest.expert_action for e in known]
    turns = iter(super().act(known, seed) if known else [])
    return [next(turns) if e.latest.expert_action is not None else None for e in episodes]

  def _answer(self, prompts, seed, grammar=None):  # the answers are known: no grammar
    tag, out = self.actions_cfg.tag, []
    for action in self._actions:
      text = f"<{tag}>{action}</{tag}>"
      text = text[len(self.prefix) :] if text.startswith(self.prefix) else text
      ids = self.tokenizer.encode(text)
      out.append(_Answer(ids, [0.0] * len(ids), text))
    return out


@dataclasses.dataclass(frozen=True)
class _Answer:
  token_ids: list[int]
  logprobs: list[float]
  text: str


def demonstrated_turns(demos: Sequence[Episode]) -> list[batch_lib.TurnSample]:
  """The turns of the won demonstrations, each a sample of advantage 1."""
  return [
    batch_lib.TurnSample(t.prompt_ids, t.response_ids, t.logprobs, 1.0)
    for e in demos
    if e.won
    for t in e.turns
  ]


def warm_start(
  model, mesh, variables, demos: Sequence[Episode], config: ml_collections.ConfigDict,
  pad_id: int, seed: int,
) -> tuple[dict, dict]:  # fmt: skip
  """The warm start of a run (`config.jerp.warm_start`) from its expert demonstrations: the
  cloned variables and a record of it."""
  samples = demonstrated_turns(demos)
  if not samples:
    raise ValueError("jerp.warm_start: the expert won no training task; nothing to clone")
  variables, losses = clone(
    model, mesh, variables, samples, config.rl.learner, config.jerp.warm_start, pad_id,
    config.model.max_seq_len, seed,
  )  # fmt: skip
  return variables, {
    "demonstrations": len(demos),
    "won": sum(e.won for e in demos),
    "turns": len(samples),
    "steps": len(losses),
    "loss_first": losses[0],
    "loss_last": losses[-1],
  }


def clone(
  model, mesh, variables, samples: Sequence[batch_lib.TurnSample],
  learner_cfg: ml_collections.ConfigDict, warm: ml_collections.ConfigDict, pad_id: int,
  max_length: int, seed: int,
) -> tuple[dict, list[float]]:  # fmt: skip
  """`warm.steps` steps (fewer once a loss reaches `warm.target_loss`) of `warm.batch_size` turns
  drawn at random, at `warm.lr`; the learner's other settings as in `learner_cfg`. Returns the
  cloned variables and each step's loss (NLL per token)."""
  cfg = ml_collections.ConfigDict(learner_cfg.to_dict())
  cfg.lr, cfg.loss.policy_loss, cfg.loss.kl_coef, cfg.loss.entropy_coef = warm.lr, "bc", 0.0, 0.0
  cfg.mini_batch_size, cfg.ppo_epochs = 0, 1  # one step per batch drawn
  learner = learner_lib.Learner(model, mesh, variables, cfg)
  opt_state = learner.init_opt_state(variables)
  rng = np.random.default_rng(seed)
  longest = max(len(s.prompt_ids) + len(s.response_ids) for s in samples)
  length = buckets.bucket(longest, cfg.length_bucket, 32, max_length)
  losses: list[float] = []
  for _ in tqdm(range(warm.steps), desc="warm start", unit="step", leave=False):
    rows = np.sort(rng.choice(len(samples), min(warm.batch_size, len(samples)), replace=False))
    batch = batch_lib.pack(
      [samples[i] for i in rows], pad_id, learner.rows_multiple, min_length=length,
      max_length=max_length, granularity=cfg.length_bucket,
    )  # fmt: skip
    variables, opt_state, metrics = learner.update(variables, opt_state, batch)
    losses.append(float(metrics["loss"]))
    if warm.target_loss and losses[-1] <= warm.target_loss:
      break
  return variables, losses
