import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[3]


def test_cli_writes_the_standard_layout(tmp_path):
  out = tmp_path / "games"
  env = dict(os.environ, PYTHONPATH=str(REPO))
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "jerp_jax.envs.alfworld.generate",
      f"--out={out}",
      "--num=3",
      "--seed=5",
      "--task_types=4,5,6",
    ],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr
  games = sorted(out.glob("json_2.1.1/train/*/trial_*/game.tw-pddl"))
  assert len(games) == 3
  assert [g.parent.parent.name.split("-")[0] for g in games] == [
    "pick_cool_then_place_in_recep",
    "pick_heat_then_place_in_recep",
    "pick_two_obj_and_place",
  ]
  assert f"wrote 3 games under {out}/json_2.1.1/train" in proc.stdout


def test_cli_rejects_a_bad_task_type(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(REPO))
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "jerp_jax.envs.alfworld.generate",
      f"--out={tmp_path}",
      "--num=1",
      "--task_types=9",
    ],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode != 0 and "env.task_types contains 9" in proc.stderr
