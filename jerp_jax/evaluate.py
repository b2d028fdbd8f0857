"""Evaluation on a named split: `python -m jerp_jax.evaluate --config=CONFIG --policy=expert
--split=SPLIT`.

Runs every task of the split through the EnvPool with the chosen policy and prints success
overall and per task type, ending with one JSON line: `success` (overall rate in [0, 1]),
`success_by_type`, `episodes`, `score` (mean episode score × 100: WebShop's score), the mean
episode length and how many episodes ended by a fault. The `expert` policy plays the
environment's own expert (ALFWorld's walkthrough, WebShop's oracle), so this works before any
training exists and checks the environments end to end.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import sys
import time
from typing import Callable, Sequence

from absl import app, flags, logging
from ml_collections import config_flags
from tqdm import tqdm

from jerp_jax.envs import base, pool as pool_lib, registry

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Experiment config file.")
_POLICY = flags.DEFINE_enum("policy", "expert", ["expert"], "Who chooses the actions.")
_SPLIT = flags.DEFINE_string("split", None, "Split to evaluate (the env's split names).")
_LIMIT = flags.DEFINE_integer("limit", None, "Evaluate only the first N tasks of the split.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Episodes stepped together through the pool.")
_REPORT = flags.DEFINE_string("report", None, "Also write per-episode records as JSON here.")

# A policy sees the latest result of every running slot and answers an action for each.
Policy = Callable[[Sequence[base.StepResult]], list[str | None]]


@dataclasses.dataclass(frozen=True)
class Episode:
  task_key: str
  task_type: str
  won: bool
  score: float
  length: int
  failure: str | None


def expert_policy(results: Sequence[base.StepResult]) -> list[str | None]:
  return [r.expert_action for r in results]


def run_episodes(
  pool: pool_lib.EnvPool,
  tasks: Sequence[base.Task],
  policy: Policy,
  batch_size: int,
  progress: tqdm | None = None,
) -> list[Episode]:
  """Plays each task once, `batch_size` episodes at a time, and returns them in task order."""
  episodes: list[Episode] = []
  for start in range(0, len(tasks), batch_size):
    batch = tasks[start : start + batch_size]
    latest = pool.reset(batch)
    lengths = [0] * len(batch)
    failures: list[str | None] = [r.failure for r in latest]
    while True:
      live = [i for i, r in enumerate(latest) if not r.done and failures[i] is None]
      if not live:
        break
      answers = policy([latest[i] for i in live])
      actions: list[str | None] = [None] * len(batch)
      for i, action in zip(live, answers):
        if action is None:
          failures[i] = "policy gave no action"
        else:
          actions[i] = action
      for i, result in enumerate(pool.step(actions)):
        if result is not None:
          latest[i], lengths[i], failures[i] = result, lengths[i] + 1, result.failure
    for task, result, length, failure in zip(batch, latest, lengths, failures):
      episodes.append(Episode(task.key, task.task_type, result.won, result.score, length, failure))
    if progress is not None:
      progress.update(len(batch))
      progress.set_postfix(success=f"{sum(e.won for e in episodes) / len(episodes):.3f}")
  return episodes


def summarize(episodes: Sequence[Episode], task_types: Sequence[str]) -> dict:
  """The figures of a run; per-type rates only for types that occurred, in the env's order."""
  by_type = collections.defaultdict(list)
  for e in episodes:
    by_type[e.task_type].append(e.won)
  order = [t for t in task_types if t in by_type] + sorted(set(by_type) - set(task_types))
  n = len(episodes)
  return {
    "episodes": n,
    "success": sum(e.won for e in episodes) / n if n else 0.0,
    "success_by_type": {t: sum(by_type[t]) / len(by_type[t]) for t in order},
    "score": 100.0 * sum(e.score for e in episodes) / n if n else 0.0,
    "mean_length": sum(e.length for e in episodes) / n if n else 0.0,
    "faults": sum(1 for e in episodes if e.failure and not e.failure.startswith("step limit")),
  }


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  module = registry.env_module(config.env.name)
  split = _SPLIT.value or module.SPLITS[0]
  if split not in module.SPLITS:
    raise app.UsageError(
      f"--split={split!r} is not a split of {config.env.name}; expected one of {module.SPLITS}"
    )
  tasks = registry.load_tasks(config.env, split)
  if _LIMIT.value is not None:
    tasks = tasks[: _LIMIT.value]
  if not tasks:
    raise app.UsageError(f"split {split!r} of {config.env.name} has no tasks")
  start = time.time()
  with pool_lib.EnvPool(config.env, config.pool, expert=True) as pool:
    with tqdm(total=len(tasks), desc=f"{config.env.name}/{split}", unit="ep") as bar:
      episodes = run_episodes(pool, tasks, expert_policy, _BATCH.value, bar)
  figures = summarize(episodes, module.TASK_TYPES)
  print(
    f"\n{config.env.name} {split}, policy {_POLICY.value}: {figures['episodes']} episodes "
    f"in {time.time() - start:.1f}s"
  )
  print(
    f"  success {figures['success']:.3f}  score {figures['score']:.1f}  "
    f"mean length {figures['mean_length']:.1f}  faults {figures['faults']}"
  )
  for task_type, rate in figures["success_by_type"].items():
    print(f"  {task_type:<36} {rate:.3f}")
  for e in episodes:
    if e.failure and not e.failure.startswith("step limit"):
      print(f"  fault in {e.task_key}: {e.failure}", file=sys.stderr)
  if _REPORT.value:
    with open(_REPORT.value, "w") as f:
      json.dump({**figures, "records": [dataclasses.asdict(e) for e in episodes]}, f, indent=1)
  print(json.dumps({"env": config.env.name, "split": split, "policy": _POLICY.value, **figures}))


if __name__ == "__main__":
  app.run(main)
