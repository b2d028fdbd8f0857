"""The benchmarks still run on the workloads they claim to measure (tiny config, a few turns).

Their figures are read on real machines; here only that they run and that what they compare is
comparable. A benchmark that broke when the default changed would otherwise be found on a lent
GPU, where a failed run costs the device time.
"""

import json
import math
import os
import subprocess
import sys

import flax.linen as nn
import jax
import pytest

from tests.conftest import one_device_mesh

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
  assert r["decode_steps"] >= 1 and min(r["phases"].values()) > 0


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


def traced_dot_flops(jaxpr) -> int:
  """2 x the multiply-adds of every dot_general a traced program runs (a scan's body times its
  length): the products the learner really computes."""
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (contracted, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[i] for i in contracted)
    for value in eqn.params.values():
      inner = getattr(value, "jaxpr", value)  # ClosedJaxpr -> Jaxpr
      if hasattr(inner, "eqns"):
        total += eqn.params.get("length", 1) * traced_dot_flops(inner)
  return total


@pytest.mark.parametrize("train, kl_coef", [("lora", 0.0), ("lora", 0.01), ("full", 0.0)])
def test_learner_benchmark_counts_the_products_the_update_computes(train, kl_coef):
  # The benchmark's mfu divides the FLOPs of update_flops by time: a count above what the update
  # computes would inflate it (the backward once counted every projection twice under LoRA,
  # where frozen weights take no gradient). Traced without recompute, in float32, from shapes
  # only: SmolLM2-135M, 4 turns of 320 tokens, the last 32 of them the response.
  sys.path.insert(0, ROOT)
  from benchmarks.learner import update_flops
  from jerp_jax.model import build, llama
  from jerp_jax.model import config as model_config
  from jerp_jax.rl import batch as batch_lib
  from jerp_jax.rl import learner as learner_lib

  cfg = model_config.get_config()
  cfg.random_init, cfg.dtype, cfg.remat = True, "float32", "false"
  cfg.lora.rank, cfg.lora.alpha = (8, 16.0) if train == "lora" else (0, 0.0)
  args, _ = build.model_args(cfg)
  mesh = one_device_mesh()
  variables = nn.unbox(llama.init_abstract(args, mesh))
  c = learner_lib.get_config()
  c.train, c.micro_batch_size, c.loss.kl_coef = train, 4, kl_coef
  learner = learner_lib.Learner(llama.Decoder(args, mesh), mesh, variables, c)
  length, response = 320, 32
  turn = batch_lib.TurnSample([1] * (length - response), [2] * response, [-1.0] * response, 1.0)
  batch = batch_lib.pack([turn] * 4, 0, learner.rows_multiple, max_length=length)
  window = learner_lib.window_size(batch.loss_mask)
  traced = jax.make_jaxpr(learner._grads_and_metrics, static_argnums=(3,))(
    variables, batch, None, window
  )
  counted, run = update_flops(args, 4, length, window, c), traced_dot_flops(traced.jaxpr)
  # Never above the products run; below them only by what the count leaves out (the diagonal
  # blocks of blocked attention beyond the causal half, the adapters, the first layer's dx).
  assert 0.9 * run <= counted <= run
