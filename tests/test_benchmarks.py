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
