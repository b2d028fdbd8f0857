"""The JERP loop: its pure pieces, the epoch function in-process, then the real loop end to end
on the tiny config (kill and resume, damaged checkpoints, evaluation, a mesh, the baselines)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jerp_jax import checkpoint, jerp, state as state_lib
from jerp_jax.envs import pool as pool_lib
from jerp_jax.envs import registry
from jerp_jax.reports import read_metrics
from tests.conftest import tokenizer_reference_script

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


def test_a_bad_curriculum_stage_fails_validation_naming_it():
  from configs import tiny

  c = tiny.get_config()
  c.jerp.curriculum = ("2: max_stepz=5",)
  with pytest.raises(ValueError, match=r"^jerp\.curriculum\[0\]='2: max_stepz=5': expected"):
    jerp.validate(c)


def test_bad_mode_and_missing_adapters_fail_early():
  from configs import tiny

  c = tiny.get_config()
  c.jerp.mode = "ppo"
  with pytest.raises(ValueError, match=r"jerp.mode='ppo': expected one of \('jerp', 'grpo'"):
    jerp.validate(c)
  c = tiny.get_config()
  c.model.lora.rank = 0
  expected = r"model.lora.rank=0: expected adapters \(rank >= 1\) for rl.learner.train='lora'"
  with pytest.raises(ValueError, match=expected):
    jerp.validate(c)
  c = tiny.get_config()
  c.mesh.shape = (2, 2, 2)  # batch rows split 4 ways; micro-batches of 2 cannot be
  c.rl.learner.micro_batch_size, c.rl.learner.mini_batch_size = 2, 4
  with pytest.raises(ValueError, match=r"micro_batch_size=2: expected a multiple of 4, the ways"):
    jerp.validate(c)


# --- end to end -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("alfworld_games"))


# The runs compared with each other (kept, killed and resumed, damaged) change stage at epoch 2.
CURRICULUM = "--config.jerp.curriculum=('2: max_steps=2',)"


def main_cmd(workdir, cache_dir, *extra):
  return [
    sys.executable,
    "-m",
    "jerp_jax.main",
    "--config=configs/tiny.py",
    f"--workdir={workdir}",
    f"--config.env.generated.cache_dir={cache_dir}",
    # Compiled programs shared by the module's runs (the tiny model's compile in well under
    # JAX's default 1 s floor for caching one).
    f"--compile_cache={os.path.join(cache_dir, 'xla')}",
    "--jax_persistent_cache_min_compile_time_secs=0",
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


def assert_same_end_state(workdir_a, workdir_b, atol=0.0):
  """Checkpointed arrays equal (within `atol` when given), host state equal."""
  step_a, arrays_a, host_a = final_state(workdir_a)
  step_b, arrays_b, host_b = final_state(workdir_b)
  assert step_a == step_b
  flat_a, tree_a = jax.tree.flatten(arrays_a)
  flat_b, tree_b = jax.tree.flatten(arrays_b)
  assert tree_a == tree_b
  for a, b in zip(flat_a, flat_b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=atol)
  for key in ("epoch", "cursor", "version", "rule_pool", "reference"):
    assert host_a[key] == host_b[key], key
  assert without_timings(host_a["history"]) == without_timings(host_b["history"])


def kill_after_first_checkpoint(cmd, workdir, env, timeout=900):
  """Runs `cmd` until `workdir` has its first checkpoint, then kills it and all it started."""
  proc = subprocess.Popen(
    cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    start_new_session=True,
  )  # fmt: skip
  first = os.path.join(workdir, "checkpoints", "1")
  deadline = time.time() + timeout
  while not os.path.isdir(first) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  os.killpg(proc.pid, signal.SIGKILL)  # the run, its env workers and all
  proc.wait()
  assert os.path.isdir(first), "the first run never wrote its first checkpoint"
  assert not os.path.isdir(os.path.join(workdir, "checkpoints", "2")), "killed too late"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache_dir):
  workdir = str(tmp_path_factory.mktemp("run_a"))
  r = run_main(workdir, cache_dir, CURRICULUM)
  return workdir, r


def test_two_epochs_of_the_real_loop(uninterrupted, cache_dir):
  workdir, r = uninterrupted
  assert "epoch   1/2" in r.stdout and "epoch   2/2" in r.stdout and "done: 2 epochs" in r.stdout
  records = read_metrics(workdir)
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
  # The curriculum's stage 2 plays at most 2 steps (the config's 3 before), evaluation included.
  assert records[2]["train"]["mean_length"] <= 2.0 and records[3]["eval"]["mean_length"] <= 2.0
  assert records[0]["eval"]["mean_length"] > 2.0 or records[1]["train"]["mean_length"] > 2.0
  summary = json.loads(r.stdout.strip().splitlines()[-1])
  assert summary["epochs"] == 2 and summary["final_eval"]["epoch"] == 2
  step, arrays, host = final_state(workdir)
  assert step == 2 and host["epoch"] == 2 and host["cursor"] == 4
  assert "trainable" in arrays and "opt_state" in arrays
  assert len(host["reference"]["by_task"]) > 0
  for name in ("rules.json", "rules.md", "metrics.jsonl"):
    assert os.path.exists(os.path.join(workdir, name))
  # The run kept its compiled programs for the next, in a folder for this CPU's instruction set.
  (machine,) = os.listdir(os.path.join(cache_dir, "xla"))
  assert machine.startswith("cpu-") and os.listdir(os.path.join(cache_dir, "xla", machine))


def test_resume_after_a_kill_mid_epoch_reaches_the_same_state(uninterrupted, tmp_path, cache_dir):
  workdir_a, _ = uninterrupted
  workdir = str(tmp_path / "run_b")
  kill_after_first_checkpoint(main_cmd(workdir, cache_dir, CURRICULUM), workdir, run_env())
  r = run_main(workdir, cache_dir, CURRICULUM)
  assert "resumed" in r.stdout and "after epoch 1" in r.stdout
  assert_same_end_state(workdir_a, workdir)
  assert without_timings(read_metrics(workdir_a)) == without_timings(read_metrics(workdir))


def test_a_damaged_latest_checkpoint_is_set_aside_and_the_run_goes_on(uninterrupted, tmp_path,
                                                                      cache_dir):  # fmt: skip
  workdir_a, _ = uninterrupted
  workdir = str(tmp_path / "damaged")
  shutil.copytree(workdir_a, workdir)
  latest = os.path.join(workdir, "checkpoints", "2")
  damaged = 0
  for folder, _, files in os.walk(os.path.join(latest, "arrays")):
    for name in files:
      path = os.path.join(folder, name)
      if os.path.getsize(path) > 64 and "ocdbt" in folder + name:  # the array data files
        with open(path, "r+b") as f:
          f.truncate(os.path.getsize(path) // 2)
        damaged += 1
  assert damaged, "found no array file to damage"
  r = run_main(workdir, cache_dir, CURRICULUM)
  assert f"checkpoint {latest} cannot be read" in r.stdout
  assert "after epoch 1" in r.stdout and "done: 2 epochs" in r.stdout
  assert os.path.isdir(latest + ".unreadable")  # set aside, not deleted
  assert_same_end_state(workdir_a, workdir)
  assert without_timings(read_metrics(workdir_a)) == without_timings(read_metrics(workdir))
  for name in ("rules.json", "rules.md", "tb"):
    assert os.path.exists(os.path.join(workdir, name))
  # With nothing readable left, a start stops with one line naming the folder.
  for step in ("1", "2"):
    shutil.rmtree(os.path.join(workdir, "checkpoints", step), ignore_errors=True)
    os.makedirs(os.path.join(workdir, "checkpoints", step, "arrays"))
  r = subprocess.run(
    main_cmd(workdir, cache_dir, CURRICULUM), cwd=ROOT, env=run_env(), capture_output=True, text=True,
    timeout=600,
  )  # fmt: skip
  assert r.returncode != 0
  assert f"no readable checkpoint in {os.path.join(workdir, 'checkpoints')}" in r.stderr
  assert "Traceback" not in r.stderr


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
      f"--report={workdir}/report.json",
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
  report = json.load(open(os.path.join(workdir, "report.json")))
  assert report["episodes"] == 2 and report["epoch"] == 2 and len(report["records"]) == 2
  for record in report["records"]:
    assert record["task_type"] and record["length"] == len(record["turns"]) > 0
    assert record["won"] in (True, False) and "failure" in record
    for turn in record["turns"]:
      assert set(turn) == {"observation", "answer", "action", "valid", "reward", "rule_ids"}
      assert turn["answer"].startswith("<action>")  # the tiny config's response prefix
  assert sum(not t["valid"] for r in report["records"] for t in r["turns"]) == round(
    figures["invalid_rate"] * sum(r["length"] for r in report["records"])
  )
  with open(os.path.join(workdir, "learning_curve.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


MESH = ("--config.mesh.shape=(2,2,2)", "--config.rl.learner.micro_batch_size=4")


@pytest.fixture(scope="module")
def mesh_run(tmp_path_factory, cache_dir):
  """The loop on a 2x2x2 mesh of 8 CPU devices (micro-batches a multiple of the 4 row shards)."""
  workdir = str(tmp_path_factory.mktemp("mesh"))
  return workdir, run_main(workdir, cache_dir, *MESH, devices=8)


def test_the_loop_on_a_2x2x2_mesh(mesh_run):
  workdir, r = mesh_run
  assert "on 8 cpu device(s)" in r.stdout and "done: 2 epochs" in r.stdout
  records = read_metrics(workdir)
  assert all(np.isfinite(x["update"]["loss"]) for x in records if "update" in x)


def test_two_epochs_in_process_through_the_epoch_function(mesh_run, cache_dir):
  """run_epoch called twice here (8 devices, as in this process) gives the command's run."""
  from configs import tiny

  workdir, _ = mesh_run
  config = tiny.get_config()
  config.env.generated.cache_dir = cache_dir
  config.mesh.shape = (2, 2, 2)
  config.rl.learner.micro_batch_size = 4
  parts, state0 = jerp.build(config)
  train_tasks = registry.load_tasks(config.env, "train")
  state0.rules.references.seed(jerp.expert_references(config.env, config.pool, train_tasks))
  references = state0.rules.references.to_dict()
  with pool_lib.EnvPool(config.env, config.pool) as pool:
    state1, record1 = jerp.run_epoch(parts, state0, pool, train_tasks)
    state2, record2 = jerp.run_epoch(parts, state1, pool, train_tasks)
  # The state given in is not changed: an epoch edits its own copy of the rules.
  assert (state0.epoch, state0.cursor, len(state0.rules.pool)) == (0, 0, 0)
  assert state0.rules.references.to_dict() == references
  assert (state1.epoch, state1.cursor, state2.epoch, state2.cursor) == (1, 2, 2, 4)
  updates = [r["update"] for r in (record1, record2)]
  assert state2.train.version == sum(u["steps"] > 0 for u in updates) == 2
  assert state2.rng is state0.rng  # the run's key never changes; epochs fold their number in
  # Exactly the command's records and end state.
  train_records = [r for r in read_metrics(workdir) if "train" in r]
  assert without_timings([record1, record2]) == without_timings(train_records)
  _, arrays, host = final_state(workdir)
  for a, b in zip(
    jax.tree.leaves(arrays["trainable"]), jax.tree.leaves(state2.train.variables["lora"])
  ):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert host["rule_pool"] == state2.rules.pool.to_dict()
  assert host["reference"] == state2.rules.references.to_dict()


def test_warm_start_clones_the_expert(cache_dir):
  from configs import tiny

  config = tiny.get_config()
  config.env.generated.cache_dir = cache_dir
  config.mesh.shape = (1, 8, 1)
  config.rl.learner.micro_batch_size = config.rl.learner.mini_batch_size = 8
  config.jerp.warm_start.steps = 3
  config.jerp.warm_start.batch_size = 64  # every demonstrated turn in every step
  config.jerp.warm_start.lr = 1e-3
  parts, state = jerp.build(config)
  before = [np.asarray(x) for x in jax.tree.leaves(state.train.variables["lora"])]
  tasks = registry.load_tasks(config.env, "train")
  warm, record = jerp.warm_start(parts, state, config.env, tasks)
  assert record["demonstrations"] == 4 and record["won"] == 4  # the expert wins every game
  assert record["steps"] == 3 and record["turns"] > 4
  # The same turns each step: behaviour cloning lowers their negative log-likelihood.
  assert record["loss_last"] < record["loss_first"]
  assert warm.train.version == state.train.version + 1 and warm.epoch == 0
  after = [np.asarray(x) for x in jax.tree.leaves(warm.train.variables["lora"])]
  assert any(not np.array_equal(a, b) for a, b in zip(before, after))
  # The RL optimizer state is the untouched initial one; the warm start had its own.
  assert warm.train.opt_state is state.train.opt_state


def test_evaluating_a_full_checkpoint_reads_no_optimizer_state(tmp_path, cache_dir, monkeypatch):
  from configs import tiny

  config = tiny.get_config()
  config.env.generated.cache_dir = cache_dir
  config.mesh.shape = (1, 8, 1)
  config.rl.learner.train = "full"
  config.rl.learner.micro_batch_size = config.rl.learner.mini_batch_size = 8
  parts, state = jerp.build(config)
  trained = jax.tree.map(lambda x: x * 0.5, state.train.variables["params"])
  state = state.replace(
    train=state.train.replace(variables={**state.train.variables, "params": trained})
  )
  workdir = str(tmp_path)
  with checkpoint.Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
    state_lib.save(ckpt, state.replace(epoch=1), parts.trainable_key)
  del parts, state

  def no_learner(*args, **kwargs):
    raise AssertionError("an evaluation built a learner")

  restores = []
  real_restore = checkpoint.Checkpointer.restore

  def spy(self, step, target, partial=False):
    restores.append((sorted(target), partial))
    return real_restore(self, step, target, partial)

  monkeypatch.setattr(jerp.learner_lib, "Learner", no_learner)
  monkeypatch.setattr(checkpoint.Checkpointer, "restore", spy)
  parts, state = jerp.load_for_eval(config, workdir)
  assert parts.learner is None and state.train.opt_state is None
  assert restores == [(["rng", "trainable"], True)]  # the optimizer state is never read
  for a, b in zip(jax.tree.leaves(state.train.variables["params"]), jax.tree.leaves(trained)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  tasks = registry.load_tasks(config.env, "eval_in_distribution")
  with pool_lib.EnvPool(config.env, config.pool) as pool:
    figures, played = jerp.evaluate(parts, state, pool, tasks, seed=0)
  assert figures["episodes"] == len(played) == 2 and all(e.turns for e in played)


@pytest.mark.parametrize("mode", ["rules_only", "react"])
def test_baselines_without_policy_updates(tmp_path, cache_dir, mode):
  workdir = str(tmp_path / mode)
  # rules_only starts from the warm start as the RL modes would: its cloned adapters are saved.
  warm = ("--config.jerp.warm_start.steps=2",) if mode == "rules_only" else ()
  warm += ("--config.jerp.warm_start.evaluate=True",)  # no warm start (react): no second eval
  r = run_main(workdir, cache_dir, f"--config.jerp.mode={mode}", "--config.jerp.epochs=1", *warm)
  assert f"JERP mode={mode}" in r.stdout and "frozen policy" in r.stdout
  warm = warm[:-1]
  assert ("warm start: 2 steps" in r.stdout) == bool(warm)
  # The untrained policy first, then (with a warm start) the cloned one, then the trained one.
  evals = [x["eval"] for x in read_metrics(workdir) if "eval" in x]
  marks = [(e["epoch"], e.get("after_warm_start", False)) for e in evals]
  assert marks == ([(0, False), (0, True), (1, False)] if warm else [(0, False), (1, False)])
  (record,) = [x for x in read_metrics(workdir) if "train" in x]
  assert "update" not in record
  assert ("rules" in record) == (mode == "rules_only")  # react: no rules at all
  step, arrays, host = final_state(workdir)
  assert step == 1 and host["mode"] == mode
  assert set(arrays) == ({"rng", "trainable"} if warm else {"rng"})
  if warm:
    with checkpoint.Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
      assert ckpt.all_steps() == [0, 1]  # the warm start's own checkpoint
      assert ckpt.read_host(1)["version"] == 1
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
  if warm:
    # Another run starting from this one's warm start instead of cloning again ends where this
    # one did (benchmarks/learning.py shares a seed's warm start between modes this way).
    shared = str(tmp_path / "shared")
    from_run = f"--config.jerp.warm_start.from_run={workdir}"
    r = run_main(shared, cache_dir, f"--config.jerp.mode={mode}", "--config.jerp.epochs=1",
                 "--config.jerp.eval_at_start=False", from_run)  # fmt: skip
    assert f"warm start: that of {workdir}" in r.stdout and "warm start: 2 steps" not in r.stdout
    step, shared_arrays, shared_host = final_state(shared)
    assert step == 1 and shared_host["version"] == host["version"] == 1
    np.testing.assert_array_equal(
      *(np.concatenate([np.ravel(x) for x in jax.tree.leaves(a["trainable"])])
        for a in (arrays, shared_arrays))
    )  # fmt: skip
    for key in ("epoch", "cursor", "rule_pool", "reference"):
      assert shared_host[key] == host[key], key
    assert without_timings(shared_host["history"]) == without_timings(host["history"][-1:])
    # A folder without a warm start is named in one line.
    r = subprocess.run(
      main_cmd(str(tmp_path / "c"), cache_dir, f"--config.jerp.mode={mode}",
               f"--config.jerp.warm_start.from_run={tmp_path / 'nowhere'}"),
      cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode != 0 and "holds no warm start" in r.stderr, r.stderr[-2000:]
    assert not os.path.exists(tmp_path / "nowhere")


@pytest.mark.parametrize("preset", ["tiny-qwen3", "tiny-gemma3"])
def test_an_epoch_of_the_new_families_on_a_2x2x2_mesh_and_one_device(tmp_path, cache_dir, preset):
  from configs import tiny

  config = tiny.get_config()
  config.model.preset = preset
  config.env.generated.cache_dir = cache_dir
  config.mesh.shape = (2, 2, 2)
  config.rl.learner.micro_batch_size = 4
  parts, state = jerp.build(config)
  tasks = registry.load_tasks(config.env, "train")
  with pool_lib.EnvPool(config.env, config.pool) as pool:
    state, record = jerp.run_epoch(parts, state, pool, tasks)
  assert state.epoch == 1 and record["update"]["steps"] > 0
  assert np.isfinite(record["update"]["loss"]) and record["train"]["episodes"] == 4
  # The same through the command, on one device.
  r = run_main(
    str(tmp_path), cache_dir, f"--config.model.preset={preset}", "--config.jerp.epochs=1",
    "--config.jerp.eval_at_start=False", "--config.jerp.eval_limit=1",
  )  # fmt: skip
  assert (
    f"{preset} " in r.stdout and "on 1 cpu device(s)" in r.stdout and "done: 1 epochs" in r.stdout
  )


@pytest.mark.parametrize(
  "with_rule, without_rule, kept",
  [
    ((0.0, 3.0), (0.5, 2.0), False),  # fewer wins: undone
    ((0.5, 2.5), (0.5, 2.0), False),  # as many wins in more steps: undone
    ((0.5, 2.0), (0.5, 2.0), True),  # no worse: kept
    ((1.0, 3.0), (0.5, 2.0), True),  # more wins: kept
  ],
)
def test_a_revision_that_plays_worse_is_undone(cache_dir, monkeypatch, with_rule, without_rule,
                                               kept):  # fmt: skip
  """jerp.check_revisions: the epoch's revision adds a rule; the greedy check of the epoch's
  tasks with and without it decides whether the epoch's state keeps it."""
  from configs import tiny

  config = tiny.get_config()
  config.env.generated.cache_dir = cache_dir
  config.jerp.mode, config.jerp.check_revisions = "rules_only", True
  parts, state0 = jerp.build(config)
  tasks = registry.load_tasks(config.env, "train")

  def revise(parts, state, rules, episodes, epoch):
    rules.pool.add("Open a closed receptacle before looking inside it.", epoch=epoch)
    return {"applied_add": 1}

  checked = []

  def evaluate(parts, state, pool, tasks_, seed, desc="eval"):
    checked.append((desc, [t.key for t in tasks_], seed))
    success, length = with_rule if len(state.rules.pool) else without_rule
    return {"success": success, "mean_length": length}, []

  monkeypatch.setattr(jerp, "revise", revise)
  monkeypatch.setattr(jerp, "evaluate", evaluate)
  with pool_lib.EnvPool(config.env, config.pool) as pool:
    state1, record = jerp.run_epoch(parts, state0, pool, tasks)
  seed = jerp.epoch_seed(state0.rng, 1, jerp.CHECK)
  epoch_keys = [
    t.key for t in jerp.epoch_tasks(tasks, 0, 2, jerp.epoch_seed(state0.rng, 0, jerp.TASKS))
  ]
  assert checked == [("check", epoch_keys, seed)] * 2  # the epoch's own tasks, revised first
  assert record["rules"]["check"] == {
    "kept": kept, "success": with_rule[0], "success_before": without_rule[0],
    "length": with_rule[1], "length_before": without_rule[1],
  }  # fmt: skip
  assert len(state1.rules.pool) == record["rules"]["pool_size"] == int(kept)
  assert len(state0.rules.pool) == 0


def test_a_base_model_tokenizer_is_refused_in_one_line_before_any_play(tmp_path, cache_dir):
  # The agent's prompts are chat messages: a tokenizer without a chat template (a base model's,
  # such as the embedded Gemma 3 270M) is named before the first evaluation, not mid-episode.
  gguf = str(tokenizer_reference_script().write_sentencepiece_gguf(tmp_path / "base.gguf", "llama"))
  workdir = tmp_path / "run"
  r = subprocess.run(
    main_cmd(str(workdir), cache_dir, f"--config.model.tokenizer={gguf}"),
    cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=600,
  )  # fmt: skip
  assert r.returncode != 0
  assert f"The tokenizer loaded from {gguf} has no chat template" in r.stderr, r.stderr[-2000:]
  assert "Traceback" not in r.stderr and "eval" not in r.stdout
