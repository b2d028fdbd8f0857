import json

from jerp_jax.envs import alfworld
from jerp_jax.envs.alfworld import bench


def test_time_env_reports_resets_and_steps(real_subset):
  env = alfworld.make_env({})
  try:
    figures = bench.time_env(env, real_subset[:2], repeats=2)
  finally:
    env.close()
  assert figures["tasks"] == 2 and figures["expert_wins"] == 2
  walkthroughs = [json.loads(open(t.payload).read())["walkthrough"] for t in real_subset[:2]]
  assert figures["steps"] == sum(map(len, walkthroughs))  # the expert plays the walkthroughs
  for key in ("cold_resets_per_s", "warm_resets_per_s", "cold_steps_per_s", "warm_steps_per_s"):
    assert figures[key] > 0
