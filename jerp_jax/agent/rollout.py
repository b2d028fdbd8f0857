"""The batched multi-turn rollout: G copies of each task played at once through the EnvPool.

Every turn samples all live episodes in one call of the policy (one jitted batch), parses each
answer into an action (`envs.actions.parse_action`), and steps the pool. Each turn keeps what the
learner needs to train it in the same context it was sampled in: the prompt ids (the rule block
included), the response ids and their sampled log-probs, plus the action, its validity, the rule
ids, the reward and whether it ended the episode. Rules are fixed per episode at reset unless
`agent.retrieve_every_step` asks for a retrieval before each turn.

This module never updates weights or rules: it plays and records.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import ml_collections
from tqdm import tqdm

from jerp_jax.agent import prompt as prompt_lib
from jerp_jax.envs import actions as actions_lib
from jerp_jax.envs import base
from jerp_jax.rules.episodes import ROLLOUT, EpisodeRecord
from jerp_jax.rules.prompt import RuleBlock, episode_rule_ids

# prompts (token ids) and a seed -> one Completion-like object per prompt, with .token_ids,
# .logprobs and .text (jerp_jax.sampling.sampler.Completion).
GenerateFn = Callable[[Sequence[Sequence[int]], int], Sequence]
# (task types, query texts) -> one RuleBlock per query.
RulesFn = Callable[[Sequence[str], Sequence[str]], Sequence[RuleBlock]]


@dataclasses.dataclass
class Turn:
  observation: str  # what the agent acted on (GiGPO's anchor)
  prompt_ids: list[int]
  response_ids: list[int]
  logprobs: list[float]  # one per response token, as sampled
  text: str  # the answer, response_prefix included
  action: str
  valid: bool
  rule_ids: tuple[int, ...]
  reward: float = 0.0
  done: bool = False


@dataclasses.dataclass
class Trajectory:
  task: base.Task
  group: int  # index of the task in the rollout's batch: the G copies share it
  task_text: str
  turns: list[Turn]
  won: bool = False
  score: float = 0.0
  failure: str | None = None  # a fault or the step limit, when the env did not end it

  @property
  def length(self) -> int:
    return len(self.turns)

  @property
  def invalid(self) -> int:
    return sum(not t.valid for t in self.turns)

  def record(self, epoch: int = 0) -> EpisodeRecord:
    """The text-only view the rule side reads (reviser, reference store)."""
    return EpisodeRecord(
      task_key=self.task.key,
      task_text=self.task_text,
      task_type=self.task.task_type,
      steps=tuple((t.observation, t.action) for t in self.turns),
      won=self.won,
      score=self.score,
      rule_ids=episode_rule_ids(t.rule_ids for t in self.turns),
      source=ROLLOUT,
      epoch=epoch,
    )


def rollout(
  pool,
  generate: GenerateFn,
  tokenizer,
  tasks: Sequence[base.Task],
  group_size: int,
  agent_cfg: ml_collections.ConfigDict,
  actions_cfg: ml_collections.ConfigDict,
  max_prompt_tokens: int,
  rules: RulesFn | None = None,
  seed: int = 0,
  progress: tqdm | None = None,
) -> list[Trajectory]:
  """Plays G episodes of each task; returns them slot by slot (task i's copies at i*G ... i*G+G-1).

  `seed` fixes the sampling: turn t samples with seed + t, so a resumed run that replays an epoch
  samples the same tokens. `progress` advances by one per env step taken.
  """
  results = pool.reset(tasks, group_size=group_size)
  n = len(results)
  trajs = [
    Trajectory(tasks[i // group_size], i // group_size, r.task_text, [], failure=r.failure)
    for i, r in enumerate(results)
  ]
  latest = list(results)
  histories: list[list[tuple[str, str]]] = [[] for _ in range(n)]
  blocks = [RuleBlock("", ())] * n
  if rules is not None:
    # One retrieval per task at reset: its G copies see the same rules.
    firsts = [trajs[g * group_size] for g in range(len(tasks))]
    per_task = list(rules([t.task.task_type for t in firsts], [t.task_text for t in firsts]))
    blocks = [per_task[i // group_size] for i in range(n)]
  turn = 0
  while True:
    live = [i for i in range(n) if not latest[i].done and trajs[i].failure is None]
    if not live:
      break
    if rules is not None and agent_cfg.retrieve_every_step and turn > 0:
      found = rules(
        [trajs[i].task.task_type for i in live],
        [f"{trajs[i].task_text} {latest[i].observation}" for i in live],
      )
      for i, block in zip(live, found):
        blocks[i] = block
    prompts = [
      prompt_lib.prompt_ids(
        tokenizer,
        agent_cfg,
        actions_cfg.tag,
        trajs[i].task_text,
        blocks[i].text,
        histories[i],
        latest[i].observation,
        latest[i].admissible,
        max_prompt_tokens,
      )
      for i in live
    ]
    completions = generate(prompts, seed + turn)
    step_actions: list[str | None] = [None] * n
    prefix = agent_cfg.response_prefix.format(tag=actions_cfg.tag)
    for i, ids, c in zip(live, prompts, completions):
      action, valid = actions_lib.parse_action(
        prefix + c.text, actions_cfg.tag, actions_cfg.max_action_chars, actions_cfg.lowercase
      )
      trajs[i].turns.append(
        Turn(
          latest[i].observation,
          list(ids),
          list(c.token_ids),
          list(c.logprobs),
          prefix + c.text,
          action,
          valid,
          blocks[i].rule_ids,
        )
      )
      histories[i].append((latest[i].observation, action))
      # An empty action still steps the env (it answers "Nothing happens."): an invalid answer
      # costs a step, as it does in the paper's setup.
      step_actions[i] = action or "look"
    for i, r in enumerate(pool.step(step_actions)):
      if r is None:
        continue
      latest[i] = r
      last = trajs[i].turns[-1]
      last.reward, last.done = float(r.reward), bool(r.done)
      trajs[i].won, trajs[i].score = bool(r.won), float(r.score)
      if r.failure is not None:
        trajs[i].failure = r.failure
    if progress is not None:
      progress.update(len(live))
      progress.set_postfix(live=len(live), won=sum(t.won for t in trajs))
    turn += 1
  return trajs
