"""The model policy through the one episode loop: prompts, rules, parsing, what each turn keeps."""

import dataclasses

import numpy as np
import pytest

from jerp_jax import episodes
from jerp_jax.agent import policy, prompt
from jerp_jax.envs import actions
from jerp_jax.envs import pool as pool_lib
from jerp_jax.envs import base
from jerp_jax.rules.prompt import RuleBlock
from jerp_jax.sampling import grammar as grammar_lib
from tests.envs import fake_env


class CharTokenizer:
  def encode_chat(self, messages):
    return [ord(ch) for m in messages for ch in m["content"]]

  def encode(self, text):
    return [ord(ch) for ch in text]


@dataclasses.dataclass
class Completion:
  token_ids: list
  logprobs: list
  text: str


class ScriptedModel:
  """Answers `win` on every turn for task t0 and rambles (no action tag) for t1."""

  def __init__(self):
    self.calls = []  # (seed, batch size)

  def __call__(self, prompts, seed):
    self.calls.append((seed, len(prompts)))
    out = []
    for ids in prompts:
      text = "".join(map(chr, ids))
      answer = "<action>win</action>" if "solve t0" in text else "I am not sure"
      out.append(Completion([len(answer), seed], [-0.5, -0.25], answer))
    return out


@pytest.fixture(scope="module")
def pool():
  env = fake_env.get_config()
  env.max_steps = 4
  config = pool_lib.get_config()
  config.num_workers = 1
  with pool_lib.EnvPool(env, config) as p:
    yield p


def play(pool, model, rules=None, every_step=False, prefix=""):
  tasks = [base.Task("fake", "train", k, "fake", {}) for k in ("t0", "t1")]
  c = prompt.get_config()
  c.retrieve_every_step = every_step
  c.response_prefix = prefix
  p = policy.ModelPolicy(model, CharTokenizer(), c, actions.get_config(), 4000, rules=rules)
  return episodes.play(pool, p, tasks, group_size=2, seed=7)


def test_model_policy_records_every_turn(pool):
  model = ScriptedModel()
  block = RuleBlock("Rules learned from earlier attempts:\n[R5] Say win.", (5,))
  asked = []

  def rules(types, texts):
    asked.append(list(texts))
    return [block if t == "solve t0" else RuleBlock("", ()) for t in texts]

  trajs = play(pool, model, rules)
  # slots 0, 1 play t0; 2, 3 play t1. The env wins on `win` from its 3rd step; 4 steps at most.
  assert [t.task.key for t in trajs] == ["t0", "t0", "t1", "t1"]
  assert [t.group for t in trajs] == [0, 0, 1, 1]
  assert asked == [["solve t0", "solve t1"]]  # once per task at reset
  assert model.calls == [(7, 4), (8, 4), (9, 4), (10, 2)]  # all live slots, seed + turn
  won, lost = trajs[0], trajs[2]
  assert (won.won, won.score, won.failure, won.length, won.invalid) == (True, 1.0, None, 3, 0)
  assert [(t.action, t.valid, t.reward, t.done) for t in won.turns] == [
    ("win", True, 0.0, False),
    ("win", True, 0.0, False),
    ("win", True, 1.0, True),
  ]
  assert [t.observation for t in won.turns] == ["t0 start", "t0 step 1: win", "t0 step 2: win"]
  assert all(t.rule_ids == (5,) for t in won.turns)
  assert "[R5] Say win." in "".join(map(chr, won.turns[0].prompt_ids))
  assert won.turns[1].response_ids == [20, 8] and won.turns[1].logprobs == [-0.5, -0.25]
  assert (lost.won, lost.failure, lost.length, lost.invalid) == (False, "step limit 4", 4, 4)
  # An answer without an action tag is invalid and steps the env with `look`.
  assert [t.action for t in lost.turns] == [""] * 4
  assert lost.turns[-1].done and lost.turns[0].rule_ids == ()
  record = won.record(epoch=3)
  assert record.steps[0] == ("t0 start", "win") and record.won and record.rule_ids == (5,)
  assert record.task_text == "solve t0" and record.epoch == 3


def test_history_is_in_later_prompts(pool):
  trajs = play(pool, ScriptedModel())
  third = "".join(map(chr, trajs[0].turns[2].prompt_ids))
  assert "Your last 2 steps (of 2 so far):" in third
  assert "Observation: t0 step 1: win\nAction: win" in third
  assert "Now (step 3), the observation: t0 step 2: win" in third


def test_retrieval_every_step_queries_with_the_observation(pool):
  asked = []

  def rules(types, texts):
    asked.append(list(texts))
    return [RuleBlock("", ())] * len(texts)

  play(pool, ScriptedModel(), rules, every_step=True)
  assert asked[0] == ["solve t0", "solve t1"]
  assert asked[1] == ["solve t0 t0 step 1: win"] * 2 + ["solve t1 t1 step 1: look"] * 2
  assert len(asked) == 4


def test_response_prefix_starts_the_answer_in_the_prompt(pool):
  class PrefixedModel(ScriptedModel):
    def __call__(self, prompts, seed):
      out = super().__call__(prompts, seed)
      return [Completion(c.token_ids, c.logprobs, c.text.replace("<action>", "")) for c in out]

  trajs = play(pool, PrefixedModel(), prefix="<{tag}>")
  turn = trajs[0].turns[0]
  assert "".join(map(chr, turn.prompt_ids)).endswith("</action>.<action>")
  assert (turn.text, turn.action, turn.valid) == ("<action>win</action>", "win", True)
  assert trajs[0].won and not trajs[2].won


def test_admissible_only_hands_the_sampler_one_trie_per_admissible_list(pool):
  seen = []

  def generate(prompts, seed, grammar=None):
    seen.append(grammar)
    # Writes the trie's first sequence: the first admissible action, closed.
    out = []
    for g in grammar:
      ids, node = [], 0
      while not g.final[node]:
        ids.append(int(g.child_token[node, 0]))
        node = int(g.child_next[node, 0])
      out.append(Completion(ids, [0.0] * len(ids), "".join(map(chr, ids))))
    return out

  tasks = [base.Task("fake", "train", "t0", "fake", {})]
  c = prompt.get_config()
  c.response_prefix, c.admissible_only = "<{tag}>", True
  p = policy.ModelPolicy(generate, CharTokenizer(), c, actions.get_config(), 4000)
  (e, f) = episodes.play(pool, p, tasks, group_size=2, seed=7)
  # The prefix '<action>' is in the prompt; each answer is 'ACTION</action>' for an admissible one.
  want = grammar_lib.choice_tables([[ord(ch) for ch in f"{a}</action>"] for a in ("go", "win")])
  g0, g1 = seen[0]
  assert g0 is g1  # the group's copies share one trie (one admissible list)
  np.testing.assert_array_equal(g0.child_token, want.child_token)
  np.testing.assert_array_equal(g0.final, want.final)
  assert [(t.text, t.action, t.valid) for t in e.turns][0] == ("<action>go</action>", "go", True)


def test_admissible_only_needs_a_prefix_of_the_opening_tag():
  c = prompt.get_config()
  c.admissible_only, c.response_prefix = True, "<think>"
  with pytest.raises(
    ValueError, match=r"agent.response_prefix='<think>': expected '' or the start"
  ):
    prompt.validate_config(c)
