"""The agent's prompt for one turn: task, retrieved rules, recent history, observation, actions.

    Your task is to: put a clean mug in coffeemachine.

    Rules learned from earlier attempts (follow them when they apply):
    [R3] ...

    Your last 2 steps (of 5 so far):
    Observation: You arrive at countertop 1. On the countertop 1, you see a mug 1.
    Action: take mug 1 from countertop 1
    ...
    Now (step 6), the observation: You pick up the mug 1 from the countertop 1.
    Admissible actions: go to sinkbasin 1, clean mug 1 with sinkbasin 1, ...

    <answer format>

The system text and the answer format come from config, so a paper config can ask for
`<think>…</think><action>…</action>` while the CPU default asks only for the action (a 135M model
spends its few tokens better that way). The prompt is kept within a token budget by showing fewer
history turns first, then shorter observations and fewer admissible actions. This module only
writes text; it never samples, parses or steps.
"""

from __future__ import annotations

from typing import Sequence

import ml_collections

from jerp_jax import checks


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.system = (
    "You are an expert agent acting in a text-based environment. You complete the task by "
    "choosing one admissible action per step."
  )
  c.history_window = 2  # H: the last H (observation, action) turns shown
  c.max_observation_chars = 600  # each observation is cut to this (history and current)
  c.show_admissible = True
  c.max_admissible = 60  # at most this many admissible actions are listed
  # `{tag}` becomes actions.tag.
  c.answer_format = (
    "First reason briefly about the situation inside <think> </think>. Then give exactly one "
    "admissible action inside <{tag}> </{tag}>."
  )
  # Text the assistant's answer starts with, written into the prompt (so not trained): e.g.
  # '<{tag}>' makes a small model answer with an action straight away. '' : none.
  c.response_prefix = ""
  # True: the answer is decoded under the turn's admissible actions (a trie of their tokens,
  # `sampling.grammar.Choices`), so it is '<tag>ACTION</tag>' for one of them and nothing else:
  # for a model too small to copy an action from the list. response_prefix must then be '' or
  # the start of '<tag>'.
  c.admissible_only = False
  # Rules are retrieved once per episode at reset (the paper's choice); True: before every turn,
  # with the current observation added to the query (matters for similarity retrieval only).
  c.retrieve_every_step = False
  return c


def validate_config(c: ml_collections.ConfigDict, prefix: str = "agent") -> None:
  checks.require(c, prefix, {
    "history_window": checks.COUNT, "max_observation_chars": checks.POSITIVE_INT,
    "max_admissible": checks.POSITIVE_INT,
    "answer_format": ("a text naming the action tag as {tag}",
                      lambda v: isinstance(v, str) and "{tag}" in v),
    "response_prefix": ("a string ('' for none)", lambda v: isinstance(v, str)),
    "admissible_only": checks.BOOL,
  })  # fmt: skip
  if c.admissible_only and not "<{tag}>".startswith(c.response_prefix):
    checks.fail(
      c, prefix, "response_prefix", "'' or the start of '<{tag}>' with agent.admissible_only"
    )


def cut(text: str, n: int) -> str:
  text = " ".join(text.split())
  return text if len(text) <= n else text[: max(0, n - 3)] + "..."


def user_message(
  c: ml_collections.ConfigDict,
  tag: str,
  task_text: str,
  rule_block: str,
  history: Sequence[tuple[str, str]],
  observation: str,
  admissible: Sequence[str] | None,
  *,
  window: int | None = None,
  obs_chars: int | None = None,
  max_admissible: int | None = None,
) -> str:
  """The text of one turn's user message. `history` holds every earlier (observation, action)."""
  window = c.history_window if window is None else window
  obs_chars = c.max_observation_chars if obs_chars is None else obs_chars
  max_admissible = c.max_admissible if max_admissible is None else max_admissible
  parts = [f"Your task is to: {task_text.strip()}"]
  if rule_block:
    parts.append(rule_block)
  shown = list(history[-window:]) if window else []
  if shown:
    lines = [f"Your last {len(shown)} steps (of {len(history)} so far):"]
    for obs, action in shown:
      lines += [f"Observation: {cut(obs, obs_chars)}", f"Action: {action}"]
    parts.append("\n".join(lines))
  parts.append(f"Now (step {len(history) + 1}), the observation: {cut(observation, obs_chars)}")
  if c.show_admissible and admissible:
    listed = list(admissible[:max_admissible])
    more = f" (and {len(admissible) - len(listed)} more)" if len(admissible) > len(listed) else ""
    parts.append("Admissible actions: " + ", ".join(listed) + more)
  parts.append(c.answer_format.format(tag=tag))
  return "\n\n".join(parts)


def prompt_ids(
  tokenizer,
  c: ml_collections.ConfigDict,
  tag: str,
  task_text: str,
  rule_block: str,
  history: Sequence[tuple[str, str]],
  observation: str,
  admissible: Sequence[str] | None,
  max_tokens: int,
) -> list[int]:
  """The chat-templated ids of a turn, within `max_tokens`, shrinking what is shown until it fits.

  With `response_prefix`, the ids end with the start of the answer. History goes first (oldest turns), then observations are halved, then the action list. The task
  and the rules are never cut: they are what the episode is conditioned on.
  """
  window, obs_chars, n_adm = c.history_window, c.max_observation_chars, c.max_admissible
  while True:
    text = user_message(
      c,
      tag,
      task_text,
      rule_block,
      history,
      observation,
      admissible,
      window=window,
      obs_chars=obs_chars,
      max_admissible=n_adm,
    )
    messages = [{"role": "system", "content": c.system}] if c.system else []
    ids = tokenizer.encode_chat(messages + [{"role": "user", "content": text}])
    if c.response_prefix:
      ids = ids + tokenizer.encode(c.response_prefix.format(tag=tag))
    if len(ids) <= max_tokens:
      return ids
    if window > 0:
      window -= 1
    elif obs_chars > 80:
      obs_chars //= 2
    elif n_adm > 8:
      n_adm //= 2
    else:
      raise ValueError(
        f"the prompt needs {len(ids)} tokens with the shortest view of the episode, over the "
        f"{max_tokens} left by model.max_seq_len minus sampling.max_new_tokens: raise "
        "model.max_seq_len or shorten agent.system / the rules (rules.pool.max_rule_chars, "
        "rules.retrieval.top_k)"
      )
