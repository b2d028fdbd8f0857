"""Behaviour cloning: demonstrations in the model's own prompt format."""

from jerp_jax import episodes
from jerp_jax.agent import prompt
from jerp_jax.envs import actions, base
from jerp_jax.envs import pool as pool_lib
from jerp_jax.rl import clone
from tests.agent.test_policy import CharTokenizer
from tests.envs import fake_env


def test_demo_policy_writes_the_expert_actions_as_answers():
  env = fake_env.get_config()
  config = pool_lib.get_config()
  config.num_workers = 1
  tasks = [base.Task("fake", "train", "t0", "fake", {"win_after": 2})]
  c = prompt.get_config()
  c.response_prefix = "<{tag}>"
  demo = clone.DemoPolicy(CharTokenizer(), c, actions.get_config(), 4000)
  with pool_lib.EnvPool(env, config, expert=True) as p:
    (e,) = episodes.play(p, demo, tasks)
  assert e.won and [(t.action, t.valid) for t in e.turns] == [("go", True), ("win", True)]
  # The prompt ends with the response prefix; the answer is the rest of `<action>go</action>`.
  first = e.turns[0]
  assert "".join(map(chr, first.prompt_ids)).endswith("<action>")
  assert "".join(map(chr, first.response_ids)) == "go</action>" and first.logprobs == [0.0] * 11
  assert first.text == "<action>go</action>"
  assert "Action: go" in "".join(map(chr, e.turns[1].prompt_ids))  # history, as the model sees it
