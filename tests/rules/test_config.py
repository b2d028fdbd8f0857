"""The composed `rules` config: every block present, defaults valid, bad values named."""

import pytest

import jerp_jax.rules as rules


def test_defaults_validate():
  c = rules.get_config()
  rules.validate_config(c)
  assert sorted(c.keys()) == ["embed", "pool", "reference", "retrieval", "reviser"]
  assert (c.pool.capacity_per_scope, c.pool.max_rule_chars) == (20, 300)
  assert (c.retrieval.mode, c.retrieval.top_k, c.retrieval.exact_threshold) == ("utility", 8, 2048)
  assert (c.reviser.weights, c.reviser.max_edits_per_revision) == ("policy", 6)
  assert (c.embed.weights, c.reference.max_per_task, c.reference.seed_from_expert) == (
    "base",
    2,
    False,
  )


@pytest.mark.parametrize(
  "block,field,value,match",
  [
    ("retrieval", "mode", "bm25", r"rules.retrieval.mode='bm25': expected one of"),
    (
      "retrieval",
      "exact_threshold",
      8,
      r"rules.retrieval.exact_threshold=8: expected an integer >= 16",
    ),
    (
      "retrieval",
      "hybrid_candidates",
      2,
      r"rules.retrieval.hybrid_candidates=2: expected an integer >= top_k=8",
    ),
    (
      "reviser",
      "weights",
      "lora",
      r"rules.reviser.weights='lora': expected one of \('base', 'policy'\)",
    ),
    (
      "reviser",
      "max_new_tokens",
      0,
      r"rules.reviser.max_new_tokens=0: expected a positive integer",
    ),
    ("embed", "batch_size", 0, r"rules.embed.batch_size=0: expected a positive integer"),
    ("pool", "capacity_per_scope", -1, r"rules.pool.capacity_per_scope=-1"),
    ("reference", "max_per_task", 0, r"rules.reference.max_per_task=0"),
  ],
)
def test_bad_values_fail_with_the_field(block, field, value, match):
  c = rules.get_config()
  c[block][field] = value
  with pytest.raises(ValueError, match=match):
    rules.validate_config(c)
