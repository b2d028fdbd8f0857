"""Episodes: the one loop that plays them, the records it keeps, and the figures drawn from them.

`play(pool, policy, tasks, group_size, seed)` is the only episode loop of the stack: training
rollouts, evaluation and the environment's expert all go through it, and differ only in the
policy (`jerp_jax.agent.policy`). Every turn sends all live episodes to the policy at once (one
jitted batch for a model), steps the pool, and records what happened: the observation acted on,
the answer, the action, its validity, the reward, the rule ids in the prompt and, for a model,
the token ids and log-probs that the learner trains on in the very context they were sampled in.

`figures(episodes)` is the only place statistics of episodes are computed: the training records,
the evaluation records and the reports all print it. Every rate and `score` is a fraction in
[0, 1] (WebShop's score is usually quoted ×100; we never do).

This module never samples, trains or revises rules.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Callable, Protocol, Sequence

from tqdm import tqdm

from jerp_jax.envs import base
from jerp_jax.rules.records import ROLLOUT, EpisodeRecord
from jerp_jax.rules.prompt import episode_rule_ids

NO_ACTION = "policy gave no action"


@dataclasses.dataclass
class Turn:
  observation: str  # what the agent acted on (GiGPO's anchor)
  text: str  # the answer as the policy gave it (response_prefix included)
  action: str
  valid: bool
  rule_ids: tuple[int, ...] = ()
  prompt_ids: list[int] = dataclasses.field(default_factory=list)
  response_ids: list[int] = dataclasses.field(default_factory=list)
  logprobs: list[float] = dataclasses.field(default_factory=list)  # one per response token
  reward: float = 0.0
  done: bool = False

  def report(self) -> dict[str, Any]:
    """The turn as a reader wants it: no token ids."""
    d = dataclasses.asdict(self) | {"rule_ids": list(self.rule_ids)}
    return {"answer": d.pop("text"), **{k: v for k, v in d.items() if k not in _TRAINING_ONLY}}


_TRAINING_ONLY = ("prompt_ids", "response_ids", "logprobs", "done")


@dataclasses.dataclass
class Episode:
  task: base.Task
  group: int  # index of the task in its batch: the G copies of a task share it
  task_text: str
  turns: list[Turn] = dataclasses.field(default_factory=list)
  won: bool = False
  score: float = 0.0  # in [0, 1]
  failure: str | None = None  # a fault or the step limit, when the env did not end it
  # The latest result (what the policy acts on next); not part of the record.
  latest: base.StepResult | None = dataclasses.field(default=None, repr=False, compare=False)

  @property
  def length(self) -> int:
    return len(self.turns)

  @property
  def invalid(self) -> int:
    return sum(not t.valid for t in self.turns)

  @property
  def ret(self) -> float:
    return sum(t.reward for t in self.turns)

  @property
  def fault(self) -> bool:
    return base.is_fault(self.failure)

  @property
  def live(self) -> bool:
    return self.failure is None and not (self.latest is not None and self.latest.done)

  def record(self, epoch: int = 0) -> EpisodeRecord:
    """The text-only view the rule side reads (reviser, reference store)."""
    steps = tuple((t.observation, t.action) for t in self.turns)
    rule_ids = episode_rule_ids(t.rule_ids for t in self.turns)
    return EpisodeRecord(self.task.key, self.task_text, self.task.task_type, steps, self.won,
                         self.score, rule_ids, ROLLOUT, epoch)  # fmt: skip

  def report(self) -> dict[str, Any]:
    out = {"task": self.task.key, "task_type": self.task.task_type, "task_text": self.task_text}
    out.update(won=self.won, score=self.score, length=self.length, failure=self.failure)
    return {**out, "turns": [t.report() for t in self.turns]}


class Policy(Protocol):
  """Chooses the actions of live episodes. A model or the environment's expert."""

  def begin(self, episodes: Sequence[Episode]) -> None:
    """Called once after reset, with every episode of the batch (e.g. to retrieve rules)."""

  def act(self, episodes: Sequence[Episode], seed: int) -> list[Turn | None]:
    """One turn (reward and done not yet known) per live episode; None: no action."""


def play(
  pool, policy: Policy, tasks: Sequence[base.Task], group_size: int = 1, seed: int = 0,
  batch_tasks: int = 0, desc: str = "episodes", first_group: int = 0,
  any_live: Callable[[bool], bool] = bool,
) -> list[Episode]:  # fmt: skip
  """Plays G episodes of each task; returns them slot by slot (task i's copies at i*G ... i*G+G-1).

  `batch_tasks` (0: all) bounds how many tasks share the pool at once. Turn t of a batch acts
  with `seed + t`, so a replayed epoch samples the same tokens. A progress bar counts env steps.

  Several processes (`parallel.hosts`) each play their share of a batch: `first_group` is the
  index of this share's first task in the whole batch, and `any_live` (hosts.any_process) keeps
  a process whose episodes have ended calling the policy, with none, while another's still run:
  the model's generation is one program that every process runs at every turn.
  """
  out: list[Episode] = []
  step = batch_tasks or max(len(tasks), 1)
  with tqdm(desc=desc, unit="step", leave=False, dynamic_ncols=True) as bar:
    # A share with no task still plays one (empty) batch: it takes part in every turn.
    for start in range(0, max(len(tasks), 1), step):
      out += _play_batch(
        pool, policy, tasks[start : start + step], group_size, seed, first_group + start, bar,
        any_live,
      )  # fmt: skip
  return out


def _play_batch(
  pool, policy, tasks, group_size, seed, first_group, progress, any_live
) -> list[Episode]:
  results = pool.reset(tasks, group_size=group_size)
  episodes = [
    Episode(tasks[i // group_size], first_group + i // group_size, r.task_text, failure=r.failure,
            latest=r)
    for i, r in enumerate(results)
  ]  # fmt: skip
  policy.begin(episodes)
  turn = 0
  while True:
    live = [i for i, e in enumerate(episodes) if e.live]
    if not any_live(bool(live)):
      break
    answers = policy.act([episodes[i] for i in live], seed + turn)
    actions: list[str | None] = [None] * len(episodes)
    for i, answer in zip(live, answers):
      if answer is None:
        episodes[i].failure = NO_ACTION
        continue
      episodes[i].turns.append(answer)
      # An empty action still steps the env (it answers "Nothing happens."): an invalid answer
      # costs a step, as it does in the paper's setup.
      actions[i] = answer.action or "look"
    for i, r in enumerate(pool.step(actions)):
      if r is None:
        continue
      e = episodes[i]
      e.latest = r
      e.turns[-1].reward, e.turns[-1].done = float(r.reward), bool(r.done)
      e.won, e.score = bool(r.won), float(r.score)
      if r.failure is not None:
        e.failure = r.failure
    progress.update(sum(a is not None for a in actions))
    progress.set_postfix(live=len(live), won=sum(e.won for e in episodes))
    turn += 1
  return episodes


def figures(episodes: Sequence[Episode], task_types: Sequence[str] = ()) -> dict[str, Any]:
  """The figures of a set of episodes, all fractions in [0, 1] except counts and means.

  success (won episodes), success_by_type (for types that occurred, in `task_types`' order, then
  any others sorted), score (mean final score), reward (mean return), invalid_rate (invalid
  answers per turn), mean_length (turns), faults (episodes ended by a crash or timeout).
  """
  n = len(episodes)
  turns = sum(e.length for e in episodes)
  by_type: dict[str, list[bool]] = collections.defaultdict(list)
  for e in episodes:
    by_type[e.task.task_type].append(e.won)
  order = [t for t in task_types if t in by_type] + sorted(set(by_type) - set(task_types))
  mean = lambda xs: sum(xs) / n if n else 0.0
  return {
    "episodes": n,
    "success": mean(e.won for e in episodes),
    "success_by_type": {t: sum(by_type[t]) / len(by_type[t]) for t in order},
    "score": mean(e.score for e in episodes),
    "reward": mean(e.ret for e in episodes),
    "invalid_rate": sum(e.invalid for e in episodes) / turns if turns else 0.0,
    "mean_length": mean(e.length for e in episodes),
    "faults": sum(e.fault for e in episodes),
  }
