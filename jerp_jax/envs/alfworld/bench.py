"""Times ALFWorld resets and steps in-process (no pool, no model).

  python -m jerp_jax.envs.alfworld.bench --data_dir=../shared/alfworld --num_tasks=30

`time_env` is the function a benchmark calls: it plays each task's expert (walkthrough) to the
end, first from a cold cache, then again warm, and reports resets/s and steps/s of each. Owns
nothing else; never changes what it measures.
"""

from __future__ import annotations

import time
from typing import Sequence

from jerp_jax.envs import base


def time_env(env: base.TextEnv, tasks: Sequence[base.Task], repeats: int = 2) -> dict:
  """Reset + expert play of every task, `repeats` times; pass 0 is cold, later ones warm."""
  figures: dict = {"tasks": len(tasks)}
  for rep in range(repeats):
    reset_s = step_s = 0.0
    steps = wins = 0
    for task in tasks:
      t0 = time.perf_counter()
      result = env.reset(task)
      reset_s += time.perf_counter() - t0
      while not result.done:
        action = env.expert_action()
        if action is None:
          break
        t0 = time.perf_counter()
        result = env.step(action)
        step_s += time.perf_counter() - t0
        steps += 1
      wins += int(result.won)
    tag = "cold" if rep == 0 else "warm"
    figures[f"{tag}_resets_per_s"] = len(tasks) / reset_s if reset_s else float("inf")
    figures[f"{tag}_reset_ms"] = 1000 * reset_s / max(1, len(tasks))
    figures[f"{tag}_steps_per_s"] = steps / step_s if step_s else float("inf")
    figures[f"{tag}_step_ms"] = 1000 * step_s / max(1, steps)
    figures["steps"] = steps
    figures["expert_wins"] = wins
  return figures


def main(argv):
  del argv
  from absl import flags

  from jerp_jax.envs import alfworld

  config = alfworld.get_config()
  config.data_dir = flags.FLAGS.data_dir
  tasks = alfworld.load_tasks(config, flags.FLAGS.split)
  step = max(1, len(tasks) // flags.FLAGS.num_tasks)
  tasks = tasks[::step][: flags.FLAGS.num_tasks]
  env = alfworld.make_env(config.to_dict())
  for key, value in time_env(env, tasks, repeats=2).items():
    print(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")
  env.close()


if __name__ == "__main__":
  from absl import app, flags

  flags.DEFINE_string("data_dir", "", "ALFWorld data folder; empty = generated games.")
  flags.DEFINE_string("split", "train", "Split to time.")
  flags.DEFINE_integer("num_tasks", 30, "Tasks to time (spread over the split).")
  app.run(main)
