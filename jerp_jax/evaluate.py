"""Evaluation on a named split.

    python -m jerp_jax.evaluate --config=CONFIG --policy=model --checkpoint=RUN_DIR --split=SPLIT
    python -m jerp_jax.evaluate --config=CONFIG --policy=expert --split=SPLIT

Plays every task of the split once through the EnvPool with the chosen policy (`episodes.play`,
the loop training uses) and prints the figures of `episodes.figures`, ending with one JSON line:
`success` overall and `success_by_type`, `score` (mean final score), `reward`, `invalid_rate`,
`mean_length`, `faults`, `episodes`; every rate and the score in [0, 1].

`model` plays the trained policy with its rule pool from a run's checkpoint (the latest, or
--step), greedily by default; only the weights (or adapters) and the rules are read: no learner,
no optimizer state. Without --checkpoint it plays the config's own weights without rules.
With a checkpoint it writes its report and a learning curve (success by task type against epoch,
from the run's metrics) into the run folder. `expert` plays the environment's own expert
(ALFWorld's walkthrough, WebShop's oracle), so the environments can be checked end to end before
any training exists.

The report (--report, or `eval_<split>_epoch<N>.json` in the run folder) holds the figures and
one record per episode: the task, every turn (observation, answer, action, validity, reward, rule
ids shown) and the outcome.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Sequence

from absl import app, flags, logging
from ml_collections import config_flags

from jerp_jax import episodes as episodes_lib
from jerp_jax import reports
from jerp_jax.agent.policy import ExpertPolicy
from jerp_jax.envs import pool as pool_lib
from jerp_jax.envs import registry

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


def play_model(config, tasks, split: str):
  """(figures, episodes, epoch or None) of the model policy from --checkpoint (or the config)."""
  from jerp_jax import checkpoint, jerp  # pylint: disable=import-outside-toplevel
  from jerp_jax.model.tokenizer import NoChatTemplate  # pylint: disable=import-outside-toplevel

  try:
    parts, state = jerp.load_for_eval(config, _CHECKPOINT.value, _STEP.value)
  except (checkpoint.Unreadable, FileNotFoundError, NoChatTemplate) as e:
    raise app.UsageError(str(e)) from e
  seed = jerp.epoch_seed(state.rng, state.epoch, jerp.EVAL_ONLY)
  with pool_lib.EnvPool(config.env, config.pool) as pool:
    figures, episodes = jerp.evaluate(parts, state, pool, tasks, seed, desc=f"eval {split}")
  return figures, episodes, state.epoch if _CHECKPOINT.value else None


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _POLICY.value == "expert" and _CHECKPOINT.value:
    raise app.UsageError("--checkpoint goes with --policy=model")
  logging.set_verbosity(logging.WARNING)
  config, run = _CONFIG.value, _CHECKPOINT.value
  module = registry.env_module(config.env.name)
  split = _SPLIT.value or module.SPLITS[0]
  try:
    tasks = registry.load_split(config.env, split, "--split", _LIMIT.value or 0)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  start, epoch = time.time(), None
  if _POLICY.value == "model":
    figures, episodes, epoch = play_model(config, tasks, split)
    where = f"checkpoint of epoch {epoch} in {run}" if run else "untrained weights from the config"
  else:
    with pool_lib.EnvPool(config.env, config.pool, expert=True) as pool:
      episodes = episodes_lib.play(pool, ExpertPolicy(), tasks, batch_tasks=_BATCH.value)
    figures, where = episodes_lib.figures(episodes, module.TASK_TYPES), "the environment's expert"
  print(f"\n{config.env.name} {split}, policy {_POLICY.value} ({where}): {len(episodes)} episodes "
        f"in {time.time() - start:.1f}s\n{reports.figures_text(figures)}")  # fmt: skip
  for e in episodes:
    if e.fault:
      print(f"  fault in {e.task.key}: {e.failure}", file=sys.stderr)
  header = {"env": config.env.name, "split": split, "policy": _POLICY.value}
  header |= {} if epoch is None else {"epoch": epoch}
  report = _REPORT.value or (run and os.path.join(run, f"eval_{split}_epoch{epoch}.json"))
  if report:
    with open(report, "w") as f:
      json.dump({**header, **figures, "records": [e.report() for e in episodes]}, f, indent=1)
    print(f"  report: {report}")
  curve = run and os.path.join(run, "learning_curve.png")
  title = f"{config.env.name}: {config.jerp.mode}"
  if run and reports.plot_learning_curve(reports.read_metrics(run), curve, title):
    print(f"  learning curve: {curve}")
  print(json.dumps({**header, **figures}))


if __name__ == "__main__":
  app.run(main)
