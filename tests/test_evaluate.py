import json
import os
import subprocess
import sys

import pytest

from jerp_jax import evaluate
from jerp_jax.envs import base, pool as pool_lib
from tests.envs import fake_env


def task(key, task_type, **payload):
  return base.Task("fake", "train", key, task_type, payload)


def test_run_episodes_and_summary_with_the_expert():
  tasks = [
    task("a", "x", win_after=1),
    task("b", "x", win_after=2),
    task("c", "y", win_after=20),  # beyond the step limit (10): ends unwon
    task("d", "y", raise_at=2),  # an env error on its second step
    task("e", "y", win_after=3),
  ]
  with pool_lib.EnvPool(fake_env.get_config(), expert=True) as pool:
    episodes = evaluate.run_episodes(pool, tasks, evaluate.expert_policy, batch_size=2)
  assert [(e.task_key, e.won, e.length) for e in episodes] == [
    ("a", True, 1),
    ("b", True, 2),
    ("c", False, 10),
    ("d", False, 2),
    ("e", True, 3),
  ]
  assert episodes[2].failure == "step limit 10"
  assert episodes[3].failure == "env error: RuntimeError: boom at step 2"
  figures = evaluate.summarize(episodes, task_types=("y", "x"))
  assert figures == {
    "episodes": 5,
    "success": 0.6,
    "success_by_type": {"y": pytest.approx(1 / 3), "x": 1.0},
    "score": pytest.approx(60.0),
    "mean_length": 3.6,
    "faults": 1,
  }
  assert list(figures["success_by_type"]) == ["y", "x"]


def test_a_policy_without_an_action_ends_the_episode():
  with pool_lib.EnvPool(fake_env.get_config()) as pool:
    episodes = evaluate.run_episodes(pool, [task("a", "x")], lambda rs: [None] * len(rs), 4)
  assert episodes[0].failure == "policy gave no action" and episodes[0].length == 0


def evaluate_cli(*args) -> subprocess.CompletedProcess:
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return subprocess.run(
    [sys.executable, "-m", "jerp_jax.evaluate", *args],
    cwd=root,
    capture_output=True,
    text=True,
    timeout=600,
  )


def run_cli(*args):
  out = evaluate_cli(*args)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1]), out


def test_webshop_oracle_on_the_first_500_real_goals(shared_dir):
  figures, out = run_cli(
    "--config=configs/webshop.py",
    "--policy=expert",
    "--split=test",
    f"--config.env.data_dir={shared_dir / 'webshop' / 'data'}",
  )
  assert figures["episodes"] == 500 and figures["faults"] == 0
  assert figures["success"] >= 0.95
  assert 95.0 <= figures["score"] <= 100.0
  assert set(figures["success_by_type"]) <= {
    "beauty",
    "electronics",
    "fashion",
    "garden",
    "grocery",
    "other",
  }
  assert "webshop test, policy expert: 500 episodes" in out.stdout


def test_unknown_split_is_a_clear_error():
  out = evaluate_cli("--config=configs/webshop.py", "--split=nope")
  assert out.returncode != 0
  assert "--split='nope' is not a split of webshop; expected one of" in out.stderr


def test_alfworld_expert_wins_all_300_shared_games_through_the_pool(shared_dir):
  figures, _ = run_cli(
    "--config=configs/default.py",
    "--policy=expert",
    "--split=train",
    f"--config.env.data_dir={shared_dir / 'alfworld'}",
    "--config.env.max_steps=50",  # ALFWorld's limit; the default's 8 is the CPU training budget
  )
  assert figures["episodes"] == 300 and figures["faults"] == 0
  assert figures["success"] == 1.0
  assert figures["success_by_type"] == {
    "pick_and_place_simple": 1.0,
    "look_at_obj_in_light": 1.0,
    "pick_clean_then_place_in_recep": 1.0,
    "pick_heat_then_place_in_recep": 1.0,
    "pick_cool_then_place_in_recep": 1.0,
    "pick_two_obj_and_place": 1.0,
  }


def test_alfworld_expert_wins_generated_games_of_every_type(tmp_path):
  figures, _ = run_cli(
    "--config=configs/default.py",
    "--policy=expert",
    "--split=eval_out_of_distribution",
    f"--config.env.generated.cache_dir={tmp_path}",
    "--config.env.generated.num_eval_out_of_distribution=12",
    "--config.env.max_steps=50",  # ALFWorld's limit; the default's 8 is the CPU training budget
  )
  assert figures["episodes"] == 12 and figures["faults"] == 0
  assert figures["success"] == 1.0
  assert len(figures["success_by_type"]) == 6
