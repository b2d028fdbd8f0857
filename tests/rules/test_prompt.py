"""The rule block of the agent prompt: the fixed format, and the ids recorded with a turn."""

from jerp_jax.rules.pool import Rule
from jerp_jax.rules.prompt import RULES_HEADER, RuleBlock, episode_rule_ids, render_rule_block


def test_block_format():
  rules = [Rule(12, "Take one object at a time.", "global", 3), Rule(3, "Check the sink.", "x", 2)]
  block = render_rule_block(rules)
  assert block == RuleBlock(
    "Rules learned from earlier attempts (follow them when they apply):\n"
    "[R12] Take one object at a time.\n"
    "[R3] Check the sink.",
    (12, 3),
  )
  assert block.text.splitlines()[0] == RULES_HEADER


def test_no_rules_no_block():
  assert render_rule_block([]) == RuleBlock("", ())


def test_episode_rule_ids_first_seen_order():
  assert episode_rule_ids([(3, 1), (1, 7), (), (9, 3)]) == (3, 1, 7, 9)
