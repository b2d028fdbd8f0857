"""Policies for `jerp_jax.episodes.play`: the model (prompt → sample → parse) and the env's expert.

`ModelPolicy` writes each live episode's prompt (task, retrieved rules, history window,
observation, admissible actions: `agent.prompt`), samples all of them in one call of `generate`
(one jitted batch), and parses each answer into an action (`envs.actions.parse_action`). Rules are
retrieved once per task at reset, so the G copies of a task see the same rules, unless
`agent.retrieve_every_step` asks for a retrieval before each turn with the observation added to
the query. `ExpertPolicy` answers the environment's own expert action (ALFWorld's walkthrough and
planner, WebShop's oracle); `rl.clone.DemoPolicy` writes them as the model's own answers.

This module never steps an environment, trains or edits rules.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

import ml_collections

from jerp_jax.agent import prompt as prompt_lib
from jerp_jax.envs import actions as actions_lib
from jerp_jax.episodes import Episode, Turn
from jerp_jax.rules.prompt import RuleBlock
from jerp_jax.sampling import grammar

# prompts (token ids), a seed and optionally one grammar per prompt -> one Completion-like object
# per prompt, with .token_ids, .logprobs and .text (jerp_jax.sampling.sampler.Completion).
GenerateFn = Callable[..., Sequence]
# (task types, query texts) -> one RuleBlock per query.
RulesFn = Callable[[Sequence[str], Sequence[str]], Sequence[RuleBlock]]

NO_RULES = RuleBlock("", ())


@dataclasses.dataclass(eq=False)
class ModelPolicy:
  """The language model acting through its prompt; counts its generated tokens and time."""

  generate: GenerateFn
  tokenizer: Any
  agent_cfg: ml_collections.ConfigDict
  actions_cfg: ml_collections.ConfigDict
  max_prompt_tokens: int
  rules: RulesFn | None = None
  tokens: int = dataclasses.field(default=0, init=False)  # generated tokens, for tokens/s
  seconds: float = dataclasses.field(default=0.0, init=False)  # time spent in generate

  def __post_init__(self):
    self.prefix = self.agent_cfg.response_prefix.format(tag=self.actions_cfg.tag)
    self._blocks: dict[int, RuleBlock] = {}  # id(episode) -> the rules in its prompt
    self._turn = 0  # turns acted since `begin`

  def begin(self, episodes: Sequence[Episode]) -> None:
    self._blocks = {id(e): NO_RULES for e in episodes}
    self._turn = 0
    if self.rules is None:
      return
    # One retrieval per task: its G copies (consecutive, same group) see the same rules.
    firsts = {e.group: e for e in reversed(episodes)}
    groups = sorted(firsts)
    found = self.rules([firsts[g].task.task_type for g in groups],
                       [firsts[g].task_text for g in groups])  # fmt: skip
    by_group = dict(zip(groups, found))
    for e in episodes:
      self._blocks[id(e)] = by_group[e.group]

  def act(self, episodes: Sequence[Episode], seed: int) -> list[Turn]:
    c, tag = self.agent_cfg, self.actions_cfg.tag
    # After the first turn (its rules came with `begin`), and on every process of a multi-host
    # run alike, those with no live episode included: retrieval may embed, a collective program.
    if self.rules is not None and c.retrieve_every_step and self._turn:
      found = self.rules(
        [e.task.task_type for e in episodes],
        [f"{e.task_text} {e.latest.observation}" for e in episodes],
      )
      for e, block in zip(episodes, found):
        self._blocks[id(e)] = block
    history = lambda e: [(t.observation, t.action) for t in e.turns]
    prompts = [
      prompt_lib.prompt_ids(self.tokenizer, c, tag, e.task_text, self._blocks[id(e)].text,
                            history(e), e.latest.observation, e.latest.admissible,
                            self.max_prompt_tokens)
      for e in episodes
    ]  # fmt: skip
    start = time.time()
    grammars = (self._choices(episodes),) if c.admissible_only else ()
    completions = self.generate(prompts, seed, *grammars)
    self.seconds += time.time() - start
    self.tokens += sum(len(x.token_ids) for x in completions)
    self._turn += 1
    a, turns = self.actions_cfg, []
    for e, ids, x in zip(episodes, prompts, completions):
      text = self.prefix + x.text
      action, valid = actions_lib.parse_action(text, tag, a.max_action_chars, a.lowercase)
      rule_ids = self._blocks[id(e)].rule_ids
      turns.append(Turn(e.latest.observation, text, action, valid, rule_ids, list(ids),
                        list(x.token_ids), list(x.logprobs)))  # fmt: skip
    return turns

  def _choices(self, episodes: Sequence[Episode]) -> list[grammar.Choices]:
    """Per episode, the trie of its admissible answers (one object per distinct list)."""
    tag, tries = self.actions_cfg.tag, {}
    for e in episodes:
      key = tuple(e.latest.admissible or ())
      if key not in tries:
        answers = [f"<{tag}>{a}</{tag}>"[len(self.prefix) :] for a in key]
        tries[key] = grammar.choice_tables([self.tokenizer.encode(x) for x in answers])
    return [tries[tuple(e.latest.admissible or ())] for e in episodes]


class ExpertPolicy:
  """The environment's expert: needs a pool made with `expert=True`."""

  def begin(self, episodes: Sequence[Episode]) -> None:
    pass

  def act(self, episodes: Sequence[Episode], seed: int) -> list[Turn | None]:
    return [None if (a := e.latest.expert_action) is None else
            Turn(e.latest.observation, a, a, True) for e in episodes]  # fmt: skip
