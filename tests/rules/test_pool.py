"""RulePool: every operation with exact scores, pruning, invariants, the log, JSON and Markdown."""

import json

import ml_collections
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jerp_jax.rules import pool as pool_lib
from jerp_jax.rules.pool import Edit, RuleError, RulePool, ScoringScheme

PICK = "pick_and_place_simple"
CLEAN = "pick_clean_then_place_in_recep"


def small_pool(**kw) -> RulePool:
  return RulePool(capacity_per_scope=kw.pop("capacity", 5), max_rule_chars=40, **kw)


def test_add_starts_at_two_with_provenance_and_log():
  p = small_pool()
  assert p.add("Look in drawers first.", PICK, epoch=3, source="task:a") == 1
  assert p.add("Open before you take.", epoch=4) == 2
  r = p.get(1)
  assert (r.id, r.text, r.scope, r.score, r.uses, r.successes) == (
    1,
    "Look in drawers first.",
    PICK,
    2,
    0,
    0,
  )
  assert (r.provenance, r.created_epoch, r.updated_epoch, r.tag) == (["task:a"], 3, 3, "R1")
  assert p.get(2).scope == "global" and p.get(2).provenance == []
  assert p.next_id == 3 and p.version == 2
  assert p.log == [
    {
      "epoch": 3,
      "op": "ADD",
      "ids": [1],
      "source": "task:a",
      "text": "Look in drawers first.",
      "scope": PICK,
      "score": 2,
    },
    {
      "epoch": 4,
      "op": "ADD",
      "ids": [2],
      "source": "",
      "text": "Open before you take.",
      "scope": "global",
      "score": 2,
    },
  ]


def test_edit_upvote_downvote_scores():
  p = small_pool()
  p.add("Rule one.", PICK)
  p.edit(1, "Rule one, better.", epoch=2, source="task:b")
  assert (p.get(1).text, p.get(1).score, p.get(1).updated_epoch) == ("Rule one, better.", 3, 2)
  assert p.get(1).provenance == ["task:b"]
  assert p.log[-1]["old_text"] == "Rule one."
  p.upvote(1, epoch=3)
  assert p.get(1).score == 4
  p.downvote(1, epoch=4)
  assert p.get(1).score == 3
  assert [e["op"] for e in p.log] == ["ADD", "EDIT", "UPVOTE", "DOWNVOTE"]
  assert [e["score"] for e in p.log] == [2, 3, 4, 3]
  version = p.version
  p.upvote(1)  # score changes do not make the index stale
  assert p.version == version


def test_downvote_to_zero_removes():
  p = small_pool()
  p.add("Fragile rule.")
  p.downvote(1, epoch=1)
  assert p.get(1).score == 1
  p.downvote(1, epoch=2)
  assert 1 not in p and len(p) == 0
  assert [(e["op"], e["epoch"], e["score"]) for e in p.log[-2:]] == [
    ("DOWNVOTE", 2, 0),
    ("DROP", 2, 0),
  ]
  with pytest.raises(RuleError, match="unknown rule R1"):
    p.upvote(1)


def test_merge_max_score_new_id_counts_and_provenance():
  p = small_pool()
  p.add("Rule a.", PICK)
  p.add("Rule b.", "global")
  p.upvote(2)
  p.upvote(2)  # R2 at 4
  p.record_use([1, 2], won=True)
  p.record_use([2], won=False)
  new = p.merge([1, 2], "Rules a and b.", epoch=5, source="task:c")
  assert new == 3 and 1 not in p and 2 not in p
  r = p.get(3)
  assert (r.scope, r.score, r.uses, r.successes) == (PICK, 4, 3, 2)
  assert r.provenance == ["merge:R1,R2", "task:c"]
  assert p.log[-1] == {
    "epoch": 5,
    "op": "MERGE",
    "ids": [1, 2],
    "source": "task:c",
    "text": "Rules a and b.",
    "scope": PICK,
    "new_id": 3,
    "score": 4,
  }


@pytest.mark.parametrize("merge,expected", [("max", 3), ("sum", 5), ("initial", 2)])
def test_merge_scoring_schemes(merge, expected):
  p = small_pool(scoring=ScoringScheme(merge=merge))
  p.add("Rule a.")
  p.add("Rule b.")
  p.upvote(1)
  assert p.get(p.merge([1, 2], "Merged.")).score == expected


def test_merge_may_keep_the_text_of_a_source():
  p = small_pool()
  p.add("Same.")
  p.add("Other.")
  assert p.get(p.merge([2, 1], "Same.")).text == "Same."


def test_remove():
  p = small_pool()
  p.add("Rule a.")
  p.remove(1, epoch=7, source="task:d")
  assert len(p) == 0
  assert p.log[-1] == {
    "epoch": 7,
    "op": "REMOVE",
    "ids": [1],
    "source": "task:d",
    "text": "Rule a.",
    "scope": "global",
    "score": 2,
  }


def test_custom_scoring_scheme():
  p = small_pool(scoring=ScoringScheme(initial=3, upvote=2, edit=0, downvote=-2, remove_at=1))
  p.add("Rule a.")
  p.upvote(1)
  p.edit(1, "Rule a2.")
  assert p.get(1).score == 5
  p.downvote(1)
  assert p.get(1).score == 3
  p.downvote(1)  # 1 <= remove_at
  assert 1 not in p


def test_apply_dispatches_every_op():
  p = small_pool()
  assert p.apply(Edit("ADD", text="Rule a.", scope=PICK), epoch=1, source="s") == [1]
  assert p.apply(Edit("ADD", text="Rule b.", scope="global")) == [2]
  assert p.apply(Edit("EDIT", (1,), "Rule a, edited.")) == [1]
  assert p.apply(Edit("UPVOTE", (2,))) == []
  assert p.apply(Edit("DOWNVOTE", (1,))) == []
  assert p.apply(Edit("MERGE", (1, 2), "Both.")) == [3]
  assert p.apply(Edit("REMOVE", (3,))) == []
  assert [e["op"] for e in p.log] == ["ADD", "ADD", "EDIT", "UPVOTE", "DOWNVOTE", "MERGE", "REMOVE"]
  with pytest.raises(RuleError, match="unknown operation"):
    p.apply(Edit("DELETE", (1,)))
  with pytest.raises(RuleError, match="exactly one rule id"):
    p.apply(Edit("UPVOTE", (1, 2)))


def test_edit_line_format():
  assert str(Edit("ADD", text="Be brief.", scope=PICK)) == f"ADD {PICK}: Be brief."
  assert str(Edit("EDIT", (12,), "New.")) == "EDIT R12: New."
  assert str(Edit("MERGE", (1, 2), "Both.")) == "MERGE R1,R2: Both."
  assert str(Edit("UPVOTE", (3,))) == "UPVOTE R3"
  assert str(Edit("REMOVE", (5,))) == "REMOVE R5"


def test_capacity_prunes_lowest_score_then_least_recently_updated():
  p = small_pool(capacity=3)
  p.add("Rule a.", PICK, epoch=0)  # R1
  p.add("Rule b.", PICK, epoch=0)  # R2
  p.add("Rule c.", PICK, epoch=0)  # R3
  p.upvote(1, epoch=1)  # R1: 3
  p.upvote(3, epoch=1)  # R3: 3
  p.add("Other scope.", CLEAN)  # other scopes do not count
  p.add("Rule d.", PICK, epoch=2)  # R5: 4 in PICK -> R2 (score 2) goes
  assert sorted(r.id for r in p.in_scope(PICK)) == [1, 3, 5]
  assert p.log[-1] == {
    "epoch": 2,
    "op": "PRUNE",
    "ids": [2],
    "source": "capacity",
    "text": "Rule b.",
    "scope": PICK,
    "score": 2,
  }
  p.upvote(5, epoch=3)  # R5: 3; now R1, R3, R5 all at 3; R1 and R3 last updated at epoch 1
  p.add("Rule e.", PICK, epoch=4)  # R6 is never the one pruned; of the ties R1 (older id) goes
  assert sorted(r.id for r in p.in_scope(PICK)) == [3, 5, 6]
  assert p.log[-1]["ids"] == [1]


def test_merge_into_full_scope_prunes():
  p = small_pool(capacity=2)
  p.add("Rule a.", PICK)
  p.add("Rule b.", PICK)
  p.add("Global.")
  p.merge([3, 1], "Merged into global.")  # the first id's scope: global; PICK drops to 1
  assert [r.id for r in p.in_scope("global")] == [4] and [r.id for r in p.in_scope(PICK)] == [2]


@pytest.mark.parametrize(
  "call,match",
  [
    (lambda p: p.add(""), "empty text"),
    (lambda p: p.add("x" * 41), "text too long"),
    (lambda p: p.add("Rule a."), "already has this text"),
    (lambda p: p.add("Fine.", "bad scope!"), "scope"),
    (lambda p: p.add("Say <|im_start|>system hi"), "chat-template marker"),
    (lambda p: p.add("bell \x07 char"), "non-printable"),
    (lambda p: p.edit(9, "Text."), "unknown rule R9"),
    (lambda p: p.edit(1, "Rule b."), "already has this text"),
    (lambda p: p.merge([1], "One."), "two or more"),
    (lambda p: p.merge([1, 1], "One."), "two or more"),
    (lambda p: p.merge([1, 9], "One."), "unknown rule R9"),
    (lambda p: p.merge([1, 2], "x" * 41), "text too long"),
    (lambda p: p.remove(9), "unknown rule R9"),
    (lambda p: p.downvote(9), "unknown rule R9"),
  ],
)
def test_invalid_operations_change_nothing(call, match):
  p = small_pool()
  p.add("Rule a.")
  p.add("Rule b.")
  before = p.to_json()
  with pytest.raises(RuleError, match=match):
    call(p)
  assert p.to_json() == before


def test_text_is_normalised_to_one_line():
  p = small_pool()
  p.add("  Two\nlines\t here ")
  assert p.get(1).text == "Two lines here"
  with pytest.raises(RuleError, match="already has this text"):
    p.add("Two lines here")


def test_closed_scope_set():
  p = RulePool(scopes=[PICK])
  assert p.scopes == ("global", PICK)
  p.add("Fine.", PICK)
  with pytest.raises(RuleError, match="unknown scope"):
    p.add("Not fine.", CLEAN)


def test_record_use():
  p = small_pool()
  p.add("Rule a.")
  p.add("Rule b.")
  p.record_use([1, 2, 2, 99], won=True)  # repeats count once; unknown ids are skipped
  p.record_use([1], won=False)
  assert [(r.uses, r.successes) for r in p.rules.values()] == [(2, 1), (1, 1)]


def test_json_round_trip_is_exact(tmp_path):
  p = RulePool(capacity_per_scope=3, max_rule_chars=60, scopes=[PICK, CLEAN])
  p.add("Rule a — with ünïcode.", PICK, epoch=1, source="task:x")
  p.add("Rule b.", CLEAN, epoch=1)
  p.add("Rule c.", epoch=2)
  p.upvote(1, epoch=2)
  p.merge([2, 3], "Merged.", epoch=3, source="task:y")
  p.record_use([1], won=True)
  path = tmp_path / "rules.json"
  p.save(path)
  q = RulePool.load(path)
  assert q == p and q.to_dict() == p.to_dict()
  assert q.to_json() == path.read_text(encoding="utf-8")
  assert q.rules[1] == p.rules[1] and q.scoring == p.scoring and q.scopes == p.scopes
  # The loaded pool carries on exactly where the saved one stopped.
  assert q.add("Next.", PICK) == p.add("Next.", PICK) == 5
  assert q == p
  assert json.loads(path.read_text())["format"] == 1


def test_markdown_view():
  p = small_pool()
  p.add("Open | close.", PICK, epoch=1)
  p.add("Global rule.", epoch=2)
  p.upvote(2, epoch=3)
  assert p.to_markdown() == (
    "# Rule pool\n\n2 rules; next id R3; 3 logged edits.\n\n"
    "## global (1)\n\n| id | score | uses | wins | epochs | rule |\n|---|---|---|---|---|---|\n"
    "| R2 | 3 | 0 | 0 | 2-3 | Global rule. |\n\n"
    f"## {PICK} (1)\n\n| id | score | uses | wins | epochs | rule |\n|---|---|---|---|---|---|\n"
    "| R1 | 2 | 0 | 0 | 1-1 | Open \\| close. |\n"
  )


def test_config_defaults_and_validation():
  c = pool_lib.get_config()
  p = RulePool.from_config(c)
  assert (p.capacity_per_scope, p.max_rule_chars) == (20, 300)
  assert p.scoring == ScoringScheme(2, 1, 1, -1, 0, "max")
  for field, value, match in [
    ("capacity_per_scope", 0, r"rules.pool.capacity_per_scope=0: expected a positive integer"),
    ("max_rule_chars", 4, r"rules.pool.max_rule_chars=4"),
    ("scoring.downvote", 1, r"rules.pool.scoring.downvote=1: expected a negative integer"),
    ("scoring.merge", "avg", r"rules.pool.scoring.merge='avg'"),
    ("scoring.initial", 0, r"rules.pool.scoring.initial=0: expected > scoring.remove_at=0"),
  ]:
    bad = ml_collections.ConfigDict(c.to_dict())
    head, _, tail = field.partition(".")
    if tail:
      bad[head][tail] = value
    else:
      bad[head] = value
    with pytest.raises(ValueError, match=match):
      pool_lib.validate_config(bad)


# --- invariants under arbitrary operation sequences ---------------------------------------------

_texts = st.one_of(
  st.sampled_from(["Rule a.", "Rule b.", "Rule c.", "  ", "<|im_end|>", "x" * 50]),
  st.text(max_size=60),
)
_ops = st.lists(
  st.tuples(
    st.sampled_from(pool_lib.OPS),
    st.lists(st.integers(0, 12), max_size=3),
    _texts,
    st.sampled_from([PICK, CLEAN, "global", "bad scope"]),
  ),
  max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(_ops)
def test_invariants_hold_for_any_operation_sequence(ops):
  p = RulePool(capacity_per_scope=3, max_rule_chars=40, scopes=[PICK, CLEAN])
  for epoch, (op, ids, text, scope) in enumerate(ops):
    before = p.to_json()
    try:
      p.apply(Edit(op, tuple(ids), text, scope), epoch=epoch)
    except RuleError:
      assert p.to_json() == before
    p.check_invariants()
  assert RulePool.from_json(p.to_json()) == p
