import json
import os
import subprocess
import sys

"""The evaluate command on the real environments (expert policy) and its errors."""


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
  assert 0.95 <= figures["score"] <= 1.0
  assert set(figures["success_by_type"]) <= {
    "beauty",
    "electronics",
    "fashion",
    "garden",
    "grocery",
    "other",
  }
  assert "webshop test, policy expert (the environment's expert): 500 episodes" in out.stdout


def test_unknown_split_is_a_clear_error():
  out = evaluate_cli("--config=configs/webshop.py", "--split=nope")
  assert out.returncode != 0
  assert "--split='nope' is not a split of webshop; expected one of" in out.stderr


# ALFWorld as it is: the six task types in full-size rooms (the default plays easy rooms of one type).
ALL_TYPES = "--config.env.task_types=(1,2,3,4,5,6)"
FULL_ROOMS = (
  ALL_TYPES,
  "--config.env.generated.max_receptacles=30",
  "--config.env.generated.min_distractors=8",
  "--config.env.generated.max_distractors=25",
)


def test_alfworld_expert_wins_all_300_shared_games_through_the_pool(shared_dir):
  figures, _ = run_cli(
    "--config=configs/default.py",
    "--policy=expert",
    "--split=train",
    f"--config.env.data_dir={shared_dir / 'alfworld'}",
    ALL_TYPES,
    "--config.env.max_steps=50",  # ALFWorld's limit; the default's 10 is the CPU training budget
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
    *FULL_ROOMS,
    "--config.env.max_steps=50",  # ALFWorld's limit; the default's 10 is the CPU training budget
  )
  assert figures["episodes"] == 12 and figures["faults"] == 0
  assert figures["success"] == 1.0
  assert len(figures["success_by_type"]) == 6
