import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from jerp_jax.envs import base, pool as pool_lib
from tests.envs import fake_env


def task(key, **payload):
  return base.Task("fake", "train", key, "fake", payload)


def make_pool(num_workers=2, step_timeout_s=60.0, **kw):
  config = pool_lib.get_config()
  config.num_workers = num_workers
  config.step_timeout_s = step_timeout_s
  return pool_lib.EnvPool(fake_env.get_config(), config, **kw)


def test_reset_groups_and_step_order():
  with make_pool() as pool:
    first = pool.reset([task("a"), task("b")], group_size=3)
    assert [r.observation for r in first] == ["a start"] * 3 + ["b start"] * 3
    assert [r.task_text for r in first] == ["solve a"] * 3 + ["solve b"] * 3
    out = pool.step(["go", None, "win", "go", "go", "go"])
    assert out[1] is None
    assert [r.observation for r in out if r] == [
      "a step 1: go",
      "a step 1: win",
      "b step 1: go",
      "b step 1: go",
      "b step 1: go",
    ]
    assert pool.stats.resets == 6 and pool.stats.steps == 5 and pool.stats.failures == 0
    assert set(pool.stats.slot_seconds) == set(range(6))  # resets count too


def test_done_slots_must_be_skipped_and_action_count_checked():
  with make_pool(num_workers=1) as pool:
    pool.reset([task("a", win_after=1)])
    assert pool.step(["win"])[0].won
    with pytest.raises(ValueError, match="slot 0 has no running episode"):
      pool.step(["go"])
    with pytest.raises(ValueError, match="got 2 actions for a batch of 1 slots"):
      pool.step(["go", "go"])


def test_expert_actions_play_to_a_win():
  with make_pool(expert=True) as pool:
    results = pool.reset([task("a"), task("b", win_after=2)], group_size=2)
    steps = 0
    while any(r is not None and not r.done for r in results):
      actions = [r.expert_action if r is not None and not r.done else None for r in results]
      results = [new or old for new, old in zip(pool.step(actions), results)]
      steps += 1
    assert [r.won for r in results] == [True] * 4
    assert steps == 3


def test_step_limit_ends_episode_as_failed():
  config = fake_env.get_config()
  config.max_steps = 2
  with pool_lib.EnvPool(config) as pool:
    pool.reset([task("a")])
    assert not pool.step(["go"])[0].done
    last = pool.step(["go"])[0]
    assert last.done and not last.won and last.failure == "step limit 2"


def test_env_exception_fails_only_that_episode():
  with make_pool() as pool:
    pool.reset([task("a", raise_at=1), task("b")])
    out = pool.step(["go", "go"])
    assert out[0].done and not out[0].won
    assert out[0].failure == "env error: RuntimeError: boom at step 1"
    assert not out[1].done and out[1].failure is None
    assert pool.stats.failures == 1 and pool.stats.restarts == 0
    # The failed slot's env is rebuilt on the next reset.
    assert [r.observation for r in pool.reset([task("c"), task("d")])] == ["c start", "d start"]


def test_killed_worker_ends_its_episodes_and_pool_recovers():
  with make_pool() as pool:
    pool.reset([task(k, sleep_s=0.5) for k in "abcd"])
    victim = pool._workers[0].process.pid
    threading.Timer(0.2, os.kill, (victim, signal.SIGKILL)).start()
    out = pool.step(["go"] * 4)
    # Slots 0 and 2 lived on worker 0.
    for slot in (0, 2):
      assert out[slot].done and not out[slot].won
      assert out[slot].failure == "worker 0 died (exit code -9) during step"
    for slot in (1, 3):
      assert not out[slot].done and out[slot].observation.endswith("step 1: go")
    assert pool.stats.restarts == 1 and pool.stats.failures == 2
    assert pool._workers[0].process.pid != victim
    out = pool.step([None, "go", None, "go"])
    assert [r.observation for r in out if r] == ["b step 2: go", "d step 2: go"]
    again = pool.reset([task("e"), task("f")])
    assert [r.observation for r in again] == ["e start", "f start"]


def test_hung_step_times_out_and_pool_recovers():
  with make_pool(step_timeout_s=1.0) as pool:
    pool.reset([task("a"), task("b"), task("c", hang_at=1), task("d")])
    start = time.monotonic()
    out = pool.step(["go"] * 4)
    assert time.monotonic() - start < 10
    assert out[2].done and out[2].failure == "step timed out after 1s"
    # Slot 0 answered first, but its state died with worker 0.
    assert out[0].done and out[0].failure == "worker 0 replaced after slot 2 timed out"
    assert not out[1].done and not out[3].done
    assert pool.stats.restarts == 1 and pool.stats.failures == 2
    assert [r.observation for r in pool.reset([task("x"), task("y")])] == ["x start", "y start"]


def test_lost_episode_not_stepped_is_reported_at_its_next_step():
  with make_pool(step_timeout_s=1.0) as pool:
    pool.reset([task("a"), task("b"), task("c", hang_at=1), task("d")])
    out = pool.step([None, "go", "go", "go"])  # slot 0 idle while worker 0 is replaced
    assert out[0] is None and out[2].failure == "step timed out after 1s"
    out = pool.step(["go", "go", None, "go"])
    assert out[0].done and out[0].failure == "worker 0 replaced after slot 2 timed out"
    assert out[1].observation == "b step 2: go"


def test_bad_config_fails_early():
  config = pool_lib.get_config()
  config.num_workers = 0
  with pytest.raises(ValueError, match="pool.num_workers=0; expected a positive integer"):
    pool_lib.EnvPool(fake_env.get_config(), config)
  config = pool_lib.get_config()
  config.start_method = "fork"
  with pytest.raises(ValueError, match="pool.start_method='fork'"):
    pool_lib.EnvPool(fake_env.get_config(), config)
  with pytest.raises(ValueError, match="env.name='nope' is not a known environment"):
    pool_lib.EnvPool({"name": "nope", "max_steps": 5})


def _alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  # A zombie still answers kill(0); it has exited all the same.
  with open(f"/proc/{pid}/stat") as f:
    return f.read().split()[2] != "Z"


def _wait_gone(pids, timeout_s=10.0):
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline and any(_alive(p) for p in pids):
    time.sleep(0.1)
  return [p for p in pids if _alive(p)]


SCRIPT = textwrap.dedent("""
  import os, signal, sys, time
  from jerp_jax.envs import base, pool as pool_lib
  from tests.envs import fake_env
  with pool_lib.EnvPool(fake_env.get_config()) as pool:
    pool.reset([base.Task("fake", "train", "a", "fake", {"sleep_s": 30})] * 2)
    print(" ".join(str(w.process.pid) for w in pool._workers), flush=True)
    if sys.argv[1] == "sigint":
      # Python's own SIGINT handler: a process started in the background (`cmd &`, nohup) begins
      # with SIGINT ignored, and then nothing would interrupt the step.
      signal.signal(signal.SIGINT, signal.default_int_handler)
      # The handler first: an alarm that fired before it (a loaded machine can stall this
      # process for a second) would end the process silently, by SIGALRM's default action.
      signal.signal(signal.SIGALRM, lambda *a: os.kill(os.getpid(), signal.SIGINT))
      signal.alarm(1)
    pool.step(["go", "go"])
""")


@pytest.mark.parametrize("how", ["sigint", "sigkill"])
def test_no_orphan_workers(how, tmp_path):
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  proc = subprocess.Popen(
    [sys.executable, "-c", SCRIPT, how],
    cwd=root,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    env={**os.environ, "PYTHONPATH": root},
  )
  pids = [int(p) for p in proc.stdout.readline().split()]
  assert len(pids) == 2
  if how == "sigkill":
    time.sleep(0.5)
    proc.kill()
  _, err = proc.communicate(timeout=120)  # generous: a loaded CI machine is slow to unwind
  if how == "sigint":
    assert "KeyboardInterrupt" in err, (proc.returncode, err)
  assert _wait_gone(pids) == []
