"""Environment throughput: resets/s and steps/s in-process and through the EnvPool, side by side.

  python benchmarks/envs.py --config=configs/default.py --workers=1,2,4 --episodes=24

Every setting plays the same episodes (the expert's actions, so the work is identical) after an
untimed warm-up round that pays the imports in fresh workers. Ends with one JSON line with
`overhead_1w` (pool at 1 worker vs in-process, as a fraction of in-process time) and
`speedup_2w` (2 workers vs 1). Targets on 2 cores: overhead_1w <= 0.10, speedup_2w >= 1.7.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from jerp_jax.envs import base, pool as pool_lib, registry  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Experiment config.")
_WORKERS = flags.DEFINE_list("workers", ["1", "2", "4"], "Pool sizes to measure.")
_EPISODES = flags.DEFINE_integer("episodes", 24, "Episodes per setting.")
_BATCH = flags.DEFINE_integer("batch", 8, "Episodes stepped together.")
_SPLIT = flags.DEFINE_string("split", "train", "Split to draw tasks from.")


def run_in_process(env_config: dict, tasks: Sequence[base.Task], batch: int) -> dict:
  """The same batched schedule as the pool, with every env in this process."""
  envs = [registry.make_env(env_config) for _ in range(batch)]
  reset_s = step_s = 0.0
  resets = steps = 0
  for start in range(0, len(tasks), batch):
    chunk = tasks[start : start + batch]
    t = time.perf_counter()
    latest = [env.reset(task) for env, task in zip(envs, chunk)]
    actions = [None if r.done else envs[i].expert_action() for i, r in enumerate(latest)]
    reset_s += time.perf_counter() - t
    resets += len(chunk)
    while any(a is not None for a in actions):
      t = time.perf_counter()
      for i, action in enumerate(actions):
        if action is not None:
          latest[i] = envs[i].step(action)
          actions[i] = None if latest[i].done else envs[i].expert_action()
          steps += 1
      step_s += time.perf_counter() - t
  for env in envs:
    env.close()
  return _figures(resets, reset_s, steps, step_s)


def run_pool(env_config: dict, tasks: Sequence[base.Task], batch: int, workers: int) -> dict:
  config = pool_lib.get_config()
  config.num_workers = workers
  with pool_lib.EnvPool(env_config, config, expert=True) as pool:
    pool.reset(tasks[:batch])  # warm-up: imports and first-game caches in every worker
    reset_s = step_s = 0.0
    resets = steps = 0
    for start in range(0, len(tasks), batch):
      chunk = tasks[start : start + batch]
      t = time.perf_counter()
      latest = pool.reset(chunk)
      reset_s += time.perf_counter() - t
      resets += len(chunk)
      while True:
        actions = [None if r.done else r.expert_action for r in latest]
        if all(a is None for a in actions):
          break
        t = time.perf_counter()
        out = pool.step(actions)
        step_s += time.perf_counter() - t
        steps += sum(a is not None for a in actions)
        latest = [new or old for new, old in zip(out, latest)]
    faults = pool.stats.failures
  figures = _figures(resets, reset_s, steps, step_s)
  figures["faults"] = faults
  return figures


def _figures(resets, reset_s, steps, step_s) -> dict:
  return {
    "resets": resets,
    "steps": steps,
    "reset_s": reset_s,
    "step_s": step_s,
    "total_s": reset_s + step_s,
    "resets_per_s": resets / reset_s if reset_s else 0.0,
    "steps_per_s": steps / step_s if step_s else 0.0,
  }


def main(argv: Sequence[str]) -> None:
  del argv
  config = _CONFIG.value
  env_config = config.env.to_dict()
  tasks = registry.load_tasks(config.env, _SPLIT.value)[: _EPISODES.value]
  batch = min(_BATCH.value, len(tasks))
  print(
    f"{config.env.name}/{_SPLIT.value}: {len(tasks)} episodes, batch {batch}, "
    f"{os.cpu_count()} cores",
    flush=True,
  )

  warm = registry.make_env(env_config)
  for task in tasks[:batch]:  # imports and first-game caches, as the pool's warm-up does
    warm.reset(task)
  warm.close()
  rows = {"in-process": run_in_process(env_config, tasks, batch)}
  for w in sorted({int(x) for x in _WORKERS.value}):
    rows[f"pool {w}w"] = run_pool(env_config, tasks, batch, w)

  base_s = rows["in-process"]["total_s"]
  print(f"\n{'setting':<12} {'resets/s':>9} {'steps/s':>9} {'total s':>8} {'vs in-proc':>10}")
  for name, r in rows.items():
    print(
      f"{name:<12} {r['resets_per_s']:9.1f} {r['steps_per_s']:9.1f} {r['total_s']:8.2f} "
      f"{r['total_s'] / base_s:9.2f}x"
    )
  result = {"env": config.env.name, "episodes": len(tasks), "batch": batch}
  for name, r in rows.items():
    key = name.replace(" ", "_").replace("-", "_")
    result[f"{key}_resets_per_s"] = round(r["resets_per_s"], 2)
    result[f"{key}_steps_per_s"] = round(r["steps_per_s"], 2)
  if "pool 1w" in rows:
    result["overhead_1w"] = round(rows["pool 1w"]["total_s"] / base_s - 1.0, 4)
  if "pool 1w" in rows and "pool 2w" in rows:
    result["speedup_2w"] = round(rows["pool 1w"]["total_s"] / rows["pool 2w"]["total_s"], 3)
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
