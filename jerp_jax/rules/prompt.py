"""The rule block of the agent prompt: how retrieved rules are written, and which ids were used.

Format (fixed; tests pin it). With rules:

    Rules learned from earlier attempts (follow them when they apply):
    [R3] Check the sinkbasin before looking elsewhere for a clean item.
    [R12] Take one object at a time.

The header line, then one line per rule in retrieval order, `[R<id>] <text>`. With no rules the
block is the empty string, so a prompt without rules is the same as before any were learned.
Scores are not shown to the agent: they are for the reviser. `RuleBlock.rule_ids` is stored with
every turn sampled under the block, so the rules in a trained turn's prompt are known later.
This module never retrieves or edits rules.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

from jerp_jax.rules.pool import Rule

RULES_HEADER = "Rules learned from earlier attempts (follow them when they apply):"


@dataclasses.dataclass(frozen=True)
class RuleBlock:
  text: str  # '' when there are no rules
  rule_ids: tuple[int, ...]  # in the order written


def render_rule_block(rules: Sequence[Rule]) -> RuleBlock:
  if not rules:
    return RuleBlock("", ())
  lines = [RULES_HEADER] + [f"[R{r.id}] {r.text}" for r in rules]
  return RuleBlock("\n".join(lines), tuple(r.id for r in rules))


def episode_rule_ids(turn_rule_ids: Iterable[Sequence[int]]) -> tuple[int, ...]:
  """The rules seen in any turn of an episode, in first-seen order (for EpisodeRecord.rule_ids)."""
  return tuple(dict.fromkeys(i for ids in turn_rule_ids for i in ids))
