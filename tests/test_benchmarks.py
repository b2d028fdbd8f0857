"""The benchmarks still run on the workloads they claim to measure (tiny config, a few turns).

Their figures are read on real machines; here only that they run and that what they compare is
comparable. A benchmark that broke when the default changed would otherwise be found on a lent
GPU, where a failed run costs the device time.
"""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_benchmark(script: str, *args: str) -> dict:
  out = subprocess.run(
    [sys.executable, os.path.join("benchmarks", script), *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_rollout_benchmark_decodes_under_the_admissible_actions_as_the_default_does():
  # The default decodes each answer under the turn's admissible actions (agent.admissible_only):
  # the benchmark's generate must take the tries, and both paths must play the same games.
  r = run_benchmark(
    "rollout.py",
    "--config=configs/tiny.py",
    "--config.agent.admissible_only=True",
    "--tasks=1",
    "--rounds=1",
  )
  assert r["same_actions"] is True  # float32 both (the suite's auto dtype): exact prefix reuse
  assert 0 < r["turns"] <= 2 * 3  # G=2 copies of one task, at most 3 steps each
  assert 0 < r["prefilled_tokens"] < r["prompt_tokens"]  # the group's copies share their head
  assert r["dtype"] == "float32" and r["cpu"]
  assert r["compiles"] >= 1 and r["plain_compiles"] >= 1


def test_learning_benchmark_runs_react_as_an_evaluation_of_the_shared_start():
  sys.path.insert(0, ROOT)
  from benchmarks import learning

  warm = "/runs/start-seed1"
  assert learning.mode_flags("react", 1, 3, warm) == [
    "--config.jerp.mode=react", "--config.seed=1", "--config.jerp.epochs=0",
    "--config.jerp.eval_at_start=False", "--config.jerp.warm_start.evaluate=True",
    f"--config.jerp.warm_start.from_run={warm}", "--config.jerp.warm_start.steps=0",
  ]  # fmt: skip
  # Without a warm start, react evaluates the config's own weights at the start.
  assert "--config.jerp.eval_at_start=True" in learning.mode_flags("react", 0, 0, None)
  # The other modes play the epochs asked for (0: the config's), evaluated only at the end.
  assert learning.mode_flags("jerp", 2, 0, None) == [
    "--config.jerp.mode=jerp", "--config.seed=2",
    "--config.jerp.eval_at_start=False", "--config.jerp.warm_start.evaluate=False",
  ]  # fmt: skip
  assert "--config.jerp.epochs=3" in learning.mode_flags("grpo", 0, 3, warm)
