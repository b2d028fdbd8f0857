"""Evaluation on a named split.

    python -m jerp_jax.evaluate --config=CONFIG --policy=model --checkpoint=RUN_DIR --split=SPLIT
    python -m jerp_jax.evaluate --config=CONFIG --policy=expert --split=SPLIT

Runs every task of the split through the EnvPool with the chosen policy and prints success
overall and per task type, ending with one JSON line: `success` (overall rate in [0, 1]),
`success_by_type`, `episodes`, `score` (mean episode score × 100: WebShop's score), the mean
episode length and how many episodes ended by a fault; the model policy adds `invalid_rate`.
`model` plays the trained policy with its rule pool from a run's latest checkpoint (or the
config's untrained weights without --checkpoint), greedily by default; it writes the JSON report
and a PNG learning curve (success by task type against epoch, from the run's metrics) into the
run folder. `expert` plays the environment's own expert (ALFWorld's walkthrough, WebShop's
oracle), so the environments can be checked end to end before any training exists.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Callable, Sequence

from absl import app, flags, logging
from ml_collections import config_flags
from tqdm import tqdm

from jerp_jax import reports
from jerp_jax.envs import base, pool as pool_lib, registry
from jerp_jax.reports import Episode, summarize

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Experiment config file.")
_POLICY = flags.DEFINE_enum("policy", "expert", ["expert", "model"], "Who chooses the actions.")
_CHECKPOINT = flags.DEFINE_string(
  "checkpoint", None, "--policy=model: a run folder (its latest checkpoint) to evaluate."
)
_STEP = flags.DEFINE_integer(
  "step", None, "--policy=model: the checkpoint's epoch (default: latest)."
)
_SPLIT = flags.DEFINE_string("split", None, "Split to evaluate (the env's split names).")
_LIMIT = flags.DEFINE_integer("limit", None, "Evaluate only the first N tasks of the split.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Episodes stepped together through the pool.")
_REPORT = flags.DEFINE_string(
  "report",
  None,
  "Write the figures and per-episode records as JSON here (model: default in the run).",
)

# A policy sees the latest result of every running slot and answers an action for each.
Policy = Callable[[Sequence[base.StepResult]], list[str | None]]


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


def run_model(config, split: str) -> dict:
  from jerp_jax import jerp  # pylint: disable=import-outside-toplevel

  start = time.time()
  if _CHECKPOINT.value:
    figures, run = jerp.eval_only(config, _CHECKPOINT.value, split, _LIMIT.value or 0, _STEP.value)
    records = jerp.read_metrics(_CHECKPOINT.value)
    where = f"checkpoint of epoch {run.epoch} in {_CHECKPOINT.value}"
  else:
    import tempfile  # pylint: disable=import-outside-toplevel

    with tempfile.TemporaryDirectory() as tmp:
      figures, run = jerp.eval_only(config, tmp, split, _LIMIT.value or 0, trained=False)
    records, where = [], "untrained weights from the config"
  reports.print_figures(
    figures,
    f"{config.env.name} {split}, policy model ({where}): {figures['episodes']} episodes in "
    f"{time.time() - start:.1f}s",
  )
  if _CHECKPOINT.value:
    report = _REPORT.value or os.path.join(_CHECKPOINT.value, f"eval_{split}_epoch{run.epoch}.json")
    with open(report, "w") as f:
      json.dump({"split": split, "epoch": run.epoch, **figures}, f, indent=1)
    print(f"  report: {report}")
    curve = os.path.join(_CHECKPOINT.value, "learning_curve.png")
    if reports.plot_learning_curve(records, curve, f"{config.env.name}: {config.jerp.mode}"):
      print(f"  learning curve: {curve}")
  elif _REPORT.value:
    with open(_REPORT.value, "w") as f:
      json.dump({"split": split, **figures}, f, indent=1)
  return figures


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
  if _POLICY.value == "expert" and _CHECKPOINT.value:
    raise app.UsageError("--checkpoint goes with --policy=model")
  if _POLICY.value == "model":
    figures = run_model(config, split)
    print(json.dumps({"env": config.env.name, "split": split, "policy": "model", **figures}))
    return
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
  reports.print_figures(
    figures,
    f"{config.env.name} {split}, policy {_POLICY.value}: {figures['episodes']} episodes "
    f"in {time.time() - start:.1f}s",
  )
  for e in episodes:
    if base.is_fault(e.failure):
      print(f"  fault in {e.task_key}: {e.failure}", file=sys.stderr)
  if _REPORT.value:
    with open(_REPORT.value, "w") as f:
      json.dump({**figures, "records": [dataclasses.asdict(e) for e in episodes]}, f, indent=1)
  print(json.dumps({"env": config.env.name, "split": split, "policy": _POLICY.value, **figures}))


if __name__ == "__main__":
  app.run(main)
