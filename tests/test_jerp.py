"""The JERP loop: its pure pieces, then the real loop end to end on the tiny config."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jerp_jax import jerp
from jerp_jax.agent.rollout import Trajectory, Turn
from jerp_jax.envs import base

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_epoch_tasks_walk_seeded_passes_over_the_split():
  tasks = list("abcde")
  first = jerp.epoch_tasks(tasks, 0, 5, seed=1)
  assert sorted(first) == tasks  # one pass holds every task once
  stream = jerp.epoch_tasks(tasks, 0, 12, seed=1)
  # The cursor is all the state there is: resuming at position 7 continues the same stream.
  assert jerp.epoch_tasks(tasks, 7, 5, seed=1) == stream[7:12]
  assert stream[:5] == first and sorted(stream[5:10]) == tasks
  assert jerp.epoch_tasks(tasks, 0, 5, seed=2) != first


def trajectory(group, rewards, valid, won):
  turns = [
    Turn(f"obs{i}", [1, 2], [3, 4], [-0.1, -0.2], "", "a", v, (), r, i == len(rewards) - 1)
    for i, (r, v) in enumerate(zip(rewards, valid))
  ]
  task = base.Task("fake", "train", f"k{group}", "x")
  return Trajectory(task, group, "t", turns, won=won, score=float(won))


def test_training_samples_share_the_episode_advantage_and_drop_faults():
  c = jerp.advantages_lib.get_config()
  c.invalid_penalty = 0.0
  c.norm_by_std = False
  trajs = [
    trajectory(0, [0.0, 1.0], [True, True], True),  # return 1
    trajectory(0, [0.0, 0.0], [True, True], False),  # return 0
    trajectory(1, [0.0], [True], False),
  ]
  faulted = trajectory(1, [0.0], [True], False)
  faulted.failure = "worker 0 died (exit code -9) during step"
  samples, adv = jerp.training_samples(trajs + [faulted], c, limit=0, seed=0)
  # Group 0: mean 0.5 -> +0.5 for each turn of the win, -0.5 for the loss; group 1 alone: 0.
  assert [s.advantage for s in samples] == [0.5, 0.5, -0.5, -0.5, 0.0]
  assert samples[0].response_ids == [3, 4] and samples[0].old_logprobs == [-0.1, -0.2]
  # With a budget, turns that carry a gradient (non-zero advantage) are kept first.
  kept, _ = jerp.training_samples(trajs, c, limit=4, seed=0)
  assert sorted(s.advantage for s in kept) == [-0.5, -0.5, 0.5, 0.5]


def test_rollout_stats():
  trajs = [trajectory(0, [0.0, 1.0], [True, False], True), trajectory(0, [0.0], [True], False)]
  s = jerp.rollout_stats(trajs)
  assert (s.success, s.reward, s.invalid_rate, s.mean_length, s.faults) == (0.5, 0.5, 1 / 3, 1.5, 0)


def test_metrics_writer_drops_records_of_the_epoch_that_runs_again(tmp_path):
  w = jerp.MetricsWriter(str(tmp_path), None)
  for epoch in (0, 1, 2):
    w.write({"epoch": epoch, "train": {"success": epoch / 10}})
  w.close()
  w = jerp.MetricsWriter(str(tmp_path), resume_epoch=1)
  w.close()
  assert [r["epoch"] for r in jerp.read_metrics(str(tmp_path))] == [0, 1]
  assert os.listdir(tmp_path / "tb")  # TensorBoard events beside the JSONL


def test_bad_mode_and_missing_adapters_fail_early():
  from configs import tiny

  c = tiny.get_config()
  c.jerp.mode = "ppo"
  with pytest.raises(ValueError, match=r"jerp.mode='ppo': expected one of \('jerp', 'grpo'"):
    jerp.validate(c)
  c = tiny.get_config()
  c.model.lora.rank = 0
  with pytest.raises(ValueError, match="model.lora.rank=0: rl.learner.train='lora' needs adapters"):
    jerp.validate(c)


# --- end to end -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("alfworld_games"))


def main_cmd(workdir, cache_dir, *extra):
  return [
    sys.executable,
    "-m",
    "jerp_jax.main",
    "--config=configs/tiny.py",
    f"--workdir={workdir}",
    f"--config.env.generated.cache_dir={cache_dir}",
    *extra,
  ]


def run_env(devices=1):
  env = dict(os.environ, HF_HUB_OFFLINE="1")
  env.pop("XLA_FLAGS", None)
  if devices > 1:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return env


def run_main(workdir, cache_dir, *extra, devices=1):
  r = subprocess.run(
    main_cmd(workdir, cache_dir, *extra),
    cwd=ROOT,
    env=run_env(devices),
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
  return r


def without_timings(records):
  def clean(x):
    if isinstance(x, dict):
      return {
        k: clean(v)
        for k, v in x.items()
        if not (k.endswith("seconds") or k.endswith("per_s") or k == "loss_scale")
      }
    return x

  return [clean(r) for r in records]


def final_state(workdir):
  from jerp_jax import checkpoint

  with checkpoint.Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
    step = ckpt.latest_step()
    arrays, host = ckpt.restore(step, None)
  return step, arrays, host


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache_dir):
  workdir = str(tmp_path_factory.mktemp("run_a"))
  r = run_main(workdir, cache_dir)
  return workdir, r


def test_two_epochs_of_the_real_loop(uninterrupted):
  workdir, r = uninterrupted
  assert "epoch   1/2" in r.stdout and "epoch   2/2" in r.stdout and "done: 2 epochs" in r.stdout
  records = jerp.read_metrics(workdir)
  assert [("eval" in x, x["epoch"]) for x in records] == [
    (True, 0),
    (False, 1),
    (False, 2),
    (True, 2),
  ]
  train = records[1]
  assert train["rollout"]["env_steps"] > 0 and train["rollout"]["tokens_per_s"] > 0
  assert train["update"]["turns"] > 0 and train["update"]["skipped"] == 0.0
  assert np.isfinite(train["update"]["loss"])
  assert train["rules"]["revised"] > 0  # the reviser was prompted (expert references, failures)
  summary = json.loads(r.stdout.strip().splitlines()[-1])
  assert summary["epochs"] == 2 and summary["final_eval"]["epoch"] == 2
  step, arrays, host = final_state(workdir)
  assert step == 2 and host["epoch"] == 2 and host["cursor"] == 4
  assert "trainable" in arrays and "opt_state" in arrays
  assert len(host["reference"]["by_task"]) > 0
  for name in ("rules.json", "rules.md", "metrics.jsonl"):
    assert os.path.exists(os.path.join(workdir, name))


def test_resume_after_a_kill_mid_epoch_reaches_the_same_state(uninterrupted, tmp_path, cache_dir):
  workdir_a, _ = uninterrupted
  workdir = str(tmp_path / "run_b")
  proc = subprocess.Popen(
    main_cmd(workdir, cache_dir),
    cwd=ROOT,
    env=run_env(),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
    start_new_session=True,
  )
  first = os.path.join(workdir, "checkpoints", "1")
  deadline = time.time() + 600
  while not os.path.isdir(first) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  os.killpg(proc.pid, signal.SIGKILL)  # the run, its env workers and all
  proc.wait()
  assert os.path.isdir(first), "the first run never wrote its first checkpoint"
  assert not os.path.isdir(os.path.join(workdir, "checkpoints", "2")), "killed too late"
  r = run_main(workdir, cache_dir)
  assert "resumed" in r.stdout and "after epoch 1" in r.stdout
  step_a, arrays_a, host_a = final_state(workdir_a)
  step_b, arrays_b, host_b = final_state(workdir)
  assert step_a == step_b == 2
  import jax

  flat_a, tree_a = jax.tree.flatten(arrays_a)
  flat_b, tree_b = jax.tree.flatten(arrays_b)
  assert tree_a == tree_b
  for a, b in zip(flat_a, flat_b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  for key in ("epoch", "cursor", "rule_pool", "reference"):
    assert host_a[key] == host_b[key], key
  assert without_timings(host_a["history"]) == without_timings(host_b["history"])
  assert without_timings(jerp.read_metrics(workdir_a)) == without_timings(
    jerp.read_metrics(workdir)
  )


def test_evaluate_the_trained_checkpoint(uninterrupted, cache_dir):
  workdir, _ = uninterrupted
  r = subprocess.run(
    [
      sys.executable,
      "-m",
      "jerp_jax.evaluate",
      "--config=configs/tiny.py",
      "--policy=model",
      f"--checkpoint={workdir}",
      "--split=eval_in_distribution",
      f"--config.env.generated.cache_dir={cache_dir}",
    ],
    cwd=ROOT,
    env=run_env(),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert r.returncode == 0, r.stderr[-5000:]
  figures = json.loads(r.stdout.strip().splitlines()[-1])
  assert figures["policy"] == "model" and figures["episodes"] == 2
  assert 0.0 <= figures["invalid_rate"] <= 1.0 and set(figures) >= {"success_by_type", "score"}
  report = os.path.join(workdir, "eval_eval_in_distribution_epoch2.json")
  assert json.load(open(report))["episodes"] == 2
  with open(os.path.join(workdir, "learning_curve.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_the_loop_on_a_2x2x2_mesh(tmp_path, cache_dir):
  workdir = str(tmp_path / "mesh")
  r = run_main(
    workdir,
    cache_dir,
    "--config.mesh.shape=(2,2,2)",
    "--config.rl.learner.micro_batch_size=4",  # a multiple of the 4 ways rows are split
    devices=8,
  )
  assert "on 8 cpu device(s)" in r.stdout and "done: 2 epochs" in r.stdout
  records = jerp.read_metrics(workdir)
  assert all(np.isfinite(x["update"]["loss"]) for x in records if "update" in x)


@pytest.mark.parametrize("mode", ["rules_only", "react"])
def test_baselines_without_policy_updates(tmp_path, cache_dir, mode):
  workdir = str(tmp_path / mode)
  r = run_main(workdir, cache_dir, f"--config.jerp.mode={mode}", "--config.jerp.epochs=1")
  assert f"JERP mode={mode}" in r.stdout and "frozen policy" in r.stdout
  (record,) = [x for x in jerp.read_metrics(workdir) if "train" in x]
  assert "update" not in record
  assert ("rules" in record) == (mode == "rules_only")  # react: no rules at all
  step, arrays, host = final_state(workdir)
  assert step == 1 and set(arrays) == {"rng"} and host["mode"] == mode
  # The same folder cannot silently continue as another method.
  r = subprocess.run(
    main_cmd(workdir, cache_dir, "--config.jerp.mode=jerp"),
    cwd=ROOT,
    env=run_env(),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert r.returncode != 0 and f"holds a run of jerp.mode='{mode}', not 'jerp'" in r.stderr
