"""Multi-host runs (jax.distributed) as several CPU processes on this machine, against the same
run in one process: 2 processes x 4 CPU devices and 1 process x 8 devices on one 2x2x2 mesh play
the same tasks, sample the same tokens, keep the same rules and references and end with the same
trainables (up to the order of cross-process sums); the metrics are written once. Rules are
retrieved by embedding ('hybrid', before every turn), the path where processes embed together.
Each run takes minutes on two cores: the configuration is the tiny one without the evaluation at
start."""

import json
import os
import subprocess
import sys

import pytest
from flax import traverse_util

from jerp_jax.reports import read_metrics
from tests.test_jerp import (
  ROOT,
  assert_same_end_state,
  kill_after_first_checkpoint,
  main_cmd,
  run_env,
  run_main,
  without_timings,
)

SIZE = (
  "--config.mesh.shape=(2,2,2)",
  "--config.rl.learner.micro_batch_size=4",
  "--config.jerp.eval_at_start=False",
  # Retrieval that embeds (similarity and utility both), before every turn: a device program
  # whose texts differ per process, called by processes whose episodes have ended as well.
  "--config.rules.retrieval.mode=hybrid",
  "--config.agent.retrieve_every_step=True",
)
# Gradients are summed across processes by gloo, in another order than within one process.
ATOL = 1e-5


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("alfworld_games"))


def launch_cmd(processes, workdir, cache_dir, *extra, size=SIZE):
  flags = main_cmd(workdir, cache_dir, *size, *extra)[3:]  # without `python -m jerp_jax.main`
  return ["bash", "launch/cpu_multiprocess.sh", str(processes), *flags]


def launch_env():
  return dict(run_env(), JERP_VENV=sys.prefix)


def run_launch(processes, workdir, cache_dir, *extra, check=True, size=SIZE):
  r = subprocess.run(
    launch_cmd(processes, workdir, cache_dir, *extra, size=size),
    cwd=ROOT,
    env=launch_env(),
    capture_output=True,
    text=True,
    timeout=1200,
  )
  if check:
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
  return r


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, cache_dir):
  workdir = str(tmp_path_factory.mktemp("one_process"))
  return workdir, run_main(workdir, cache_dir, *SIZE, devices=8)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, cache_dir):
  workdir = str(tmp_path_factory.mktemp("two_processes"))
  return workdir, run_launch(2, workdir, cache_dir)


def assert_close_records(records_a, records_b):
  assert len(records_a) == len(records_b)
  for a, b in zip(without_timings(records_a), without_timings(records_b)):
    a, b = (traverse_util.flatten_dict(x, sep="/") for x in (a, b))
    assert sorted(a) == sorted(b)
    for key in a:
      if isinstance(a[key], float):
        assert b[key] == pytest.approx(a[key], abs=ATOL), key
      else:
        assert a[key] == b[key], key


def assert_same_run(workdir_a, workdir_b):
  # Rules are written by the model (sampled tokens) from the episodes' actions (sampled tokens):
  # equal pools and references mean the same tasks were played and the same tokens sampled.
  assert_same_end_state(workdir_a, workdir_b, atol=ATOL)
  assert_close_records(read_metrics(workdir_a), read_metrics(workdir_b))


def summary_line(r):
  summary = json.loads(r.stdout.strip().splitlines()[-1])
  summary.pop("workdir")
  return without_timings([summary])[0]


def test_two_processes_reach_the_one_process_run(one_process, two_processes):
  (workdir_1, r1), (workdir_2, r2) = one_process, two_processes
  assert "on 8 cpu device(s)" in r2.stdout and "done: 2 epochs" in r2.stdout
  # Only process 0 prints: one epoch line each, one summary.
  assert r2.stdout.count("epoch   2/2") == 1 and r2.stdout.count("done: 2 epochs") == 1
  assert_same_run(workdir_1, workdir_2)
  assert [("eval" in x, x["epoch"]) for x in read_metrics(workdir_2)] == [
    (False, 1),
    (False, 2),
    (True, 2),
  ]  # written once
  assert summary_line(r1) == summary_line(r2)


def test_two_processes_killed_after_their_first_checkpoint_resume_to_the_same_state(
  two_processes, tmp_path, cache_dir
):
  workdir_a, _ = two_processes
  workdir = str(tmp_path / "killed")
  # The launcher, every process and their env workers are killed at once.
  kill_after_first_checkpoint(launch_cmd(2, workdir, cache_dir), workdir, launch_env())
  r = run_launch(2, workdir, cache_dir)
  assert r.stdout.count("after epoch 1") == 1
  assert_same_run(workdir_a, workdir)


def test_processes_that_disagree_stop_with_one_line(tmp_path, cache_dir):
  # A mesh that does not fit the devices of all processes together.
  # (A repeated --config flag would extend the tuple: the mesh is given once.)
  r = run_launch(
    2, str(tmp_path / "mesh"), cache_dir, "--config.mesh.shape=(2,2,1)", check=False, size=()
  )
  assert r.returncode != 0
  assert "mesh.shape=(2, 2, 1) needs 4 devices; 8 available (2 processes × 4 devices)" in r.stderr
  assert "Traceback" not in r.stderr
  # Processes started with different configs.
  port = 20000 + os.getpid() % 20000
  procs = [
    subprocess.Popen(
      main_cmd(str(tmp_path / "configs"), cache_dir, f"--config.seed={i}")
      + ["--distributed=flags", f"--coordinator_address=localhost:{port}", "--num_processes=2",
         f"--process_id={i}"],
      cwd=ROOT,
      env=run_env(4),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]  # fmt: skip
  errors = [p.communicate(timeout=300)[1] for p in procs]
  assert all(p.returncode != 0 for p in procs)
  assert "the config of process(es) [1] differs from process 0's" in errors[0]
  assert "Traceback" not in errors[0]


# Two processes play fake tasks in lockstep, with a model-less policy that still takes part in a
# cross-process call every turn (as generation does). Process 1's env worker dies in one episode
# and hangs in another.
PLAY_IN_LOCKSTEP = """
import sys, time
from jerp_jax import episodes
from jerp_jax.envs import base, pool as pool_lib
from jerp_jax.parallel import hosts
from tests.envs import fake_env


class Policy:
  def begin(self, eps):
    pass

  def act(self, eps, seed):
    hosts.rows_of_all(lambda rows: rows, [e.task.key for e in eps])
    return [episodes.Turn(e.latest.observation, "go", "go", True) for e in eps]


def main():  # env workers are spawned processes: they import this file, and must not run it
  hosts.initialize("flags", sys.argv[1], 2, int(sys.argv[2]))
  payloads = [{}, {}, {}, {"exit_at": 2}, {"hang_at": 3}, {}]
  tasks = [base.Task("fake", "train", f"t{i}", "fake", p) for i, p in enumerate(payloads)]
  config = pool_lib.get_config()
  config.num_workers, config.step_timeout_s = 3, 10.0  # a worker per episode
  env = fake_env.get_config()
  env.max_steps = 4
  mine, first = hosts.share(tasks)
  start = time.time()
  with pool_lib.EnvPool(env, config) as pool:
    played = episodes.play(pool, Policy(), mine, 1, first_group=first, any_live=hosts.any_process)
  seconds = time.time() - start
  played = hosts.gather(played)
  print("RESULT", [(e.task.key, e.group, e.length, e.fault) for e in played], round(seconds))


if __name__ == "__main__":
  main()
"""


def test_a_crashed_env_worker_fails_its_episode_and_stalls_no_process(tmp_path):
  script = tmp_path / "play.py"
  script.write_text(PLAY_IN_LOCKSTEP)
  address = f"localhost:{20000 + (os.getpid() + 7) % 20000}"
  env = dict(run_env(1), PYTHONPATH=ROOT)
  procs = [
    subprocess.Popen(
      [sys.executable, str(script), address, str(i)],
      cwd=ROOT,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  outs = [p.communicate(timeout=300) for p in procs]
  assert all(p.returncode == 0 for p in procs), [err[-3000:] for _, err in outs]
  results = [next(x for x in out.splitlines() if x.startswith("RESULT")) for out, _ in outs]
  assert results[0].rsplit(" ", 1)[0] == results[1].rsplit(" ", 1)[0]  # the same on both
  played = eval(results[0].split(" ", 1)[1].rsplit(" ", 1)[0])
  keys = [f"t{i}" for i in range(6)]
  assert [p[:2] for p in played] == list(zip(keys, range(6)))  # global order and groups
  # On process 1, t3's worker died at its 2nd step and t4's hung at its 3rd: both failed; every
  # other episode ran to the step limit.
  assert [(length, fault) for _, _, length, fault in played] == [
    (4, False), (4, False), (4, False), (2, True), (3, True), (4, False)
  ]  # fmt: skip
  # Process 0's episodes were done after 4 quick turns; it waited for process 1 no longer than
  # one step timeout (10 s) beyond that.
  assert int(results[0].rsplit(" ", 1)[1]) < 60
