"""RuleIndex and VectorIndex: the three retrieval modes with exact expectations, scope filtering,
lazy refresh, and ScaNN against exact search."""

import numpy as np
import pytest

from jerp_jax.rules import index as index_lib
from jerp_jax.rules.index import RuleIndex, VectorIndex, exact_top_k
from jerp_jax.rules.pool import RulePool

PICK = "pick_and_place_simple"
CLEAN = "pick_clean_then_place_in_recep"

# Text -> unit vector; the query "put x" is (1, 0, 0), so each similarity is the first coordinate.
VECTORS = {
  "a": (0.6, 0.8, 0.0),
  "b": (0.0, 1.0, 0.0),
  "c": (0.8, 0.6, 0.0),
  "d": (1.0, 0.0, 0.0),
  "e": (0.28, 0.96, 0.0),
  "f": (0.96, 0.28, 0.0),
  "g": (0.0, 0.0, 1.0),
  "put x": (1.0, 0.0, 0.0),
}


class FakeEmbed:
  def __init__(self):
    self.calls: list[list[str]] = []

  def __call__(self, texts):
    self.calls.append(list(texts))
    return np.asarray([VECTORS[t] for t in texts], np.float32)


def make_pool() -> RulePool:
  p = RulePool(capacity_per_scope=10, max_rule_chars=40)
  for text, scope, score in [
    ("a", PICK, 2),  # R1
    ("b", PICK, 5),  # R2
    ("c", PICK, 3),  # R3
    ("d", CLEAN, 9),  # R4
    ("e", "global", 4),  # R5
    ("f", "global", 2),  # R6
  ]:
    rule_id = p.add(text, scope)
    for _ in range(score - 2):
      p.upvote(rule_id)
  return p


def config(mode, **kw):
  c = index_lib.get_config()
  c.mode = mode
  c.top_k = kw.pop("top_k", 3)
  c.hybrid_candidates = kw.pop("hybrid_candidates", 8)
  for k, v in kw.items():
    c[k] = v
  return c


def ids(rules):
  return [r.id for r in rules]


def test_utility_mode_top_k_by_score_within_scope_and_global():
  p = make_pool()
  index = RuleIndex(p, config("utility"))  # no embeddings needed
  assert ids(index.retrieve(PICK)) == [2, 5, 3]
  assert ids(index.retrieve(CLEAN, k=5)) == [4, 5, 6]
  assert ids(index.retrieve("global")) == [5, 6]
  p.record_use([1], won=True)  # ties at score 2: more successes first
  assert ids(index.retrieve(PICK, k=5)) == [2, 5, 3, 1, 6]
  no_global = RuleIndex(p, config("utility", include_global=False))
  assert ids(no_global.retrieve(PICK, k=5)) == [2, 3, 1]


def test_similarity_mode():
  index = RuleIndex(make_pool(), config("similarity"), FakeEmbed())
  assert ids(index.retrieve(PICK, "put x")) == [6, 3, 1]  # f .96, c .8, a .6; d is CLEAN's
  assert ids(index.retrieve(CLEAN, "put x")) == [4, 6, 5]
  no_global = RuleIndex(make_pool(), config("similarity", include_global=False), FakeEmbed())
  assert ids(no_global.retrieve(PICK, "put x")) == [3, 1, 2]


def test_hybrid_mode():
  # 0.5 * similarity + 0.5 * score / 5: a .5, b .5, c .7, e .54, f .68
  index = RuleIndex(make_pool(), config("hybrid"), FakeEmbed())
  assert ids(index.retrieve(PICK, "put x")) == [3, 6, 5]
  # Only the 3 most similar (f, c, a) are candidates; the best of their scores is 3:
  # f .48 + .5 * 2/3 = .813, c .4 + .5 = .9, a .3 + .333 = .633
  narrow = RuleIndex(make_pool(), config("hybrid", top_k=2, hybrid_candidates=3), FakeEmbed())
  assert ids(narrow.retrieve(PICK, "put x")) == [3, 6]
  pure_utility = RuleIndex(make_pool(), config("hybrid", hybrid_weight=1.0), FakeEmbed())
  assert ids(pure_utility.retrieve(PICK, "put x")) == [2, 5, 3]


def test_batch_equals_one_by_one():
  index = RuleIndex(make_pool(), config("hybrid"), FakeEmbed())
  types = [PICK, CLEAN, "global", PICK]
  batch = index.retrieve_batch(types, ["put x"] * 4)
  assert [ids(b) for b in batch] == [ids(index.retrieve(t, "put x")) for t in types]
  assert [ids(b) for b in batch] == [[3, 6, 5], [4, 6, 5], [6, 5], [3, 6, 5]]


def test_refresh_rebuilds_only_changed_scopes():
  p = make_pool()
  embed = FakeEmbed()
  index = RuleIndex(p, config("similarity"), embed)
  assert index.refresh() == 3 and index.rebuilds == 3
  assert index.refresh() == 0
  p.upvote(1)  # scores are read at retrieval time: nothing to rebuild
  assert index.refresh() == 0
  p.edit(1, "g")  # R1 now points away from the query
  assert ids(index.retrieve(PICK, "put x")) == [6, 3, 5]
  assert index.rebuilds == 4 and embed.calls[-2] == ["g", "b", "c"]
  p.remove(4)
  assert index.refresh() == 0 and CLEAN not in index.scopes
  p.add("d", CLEAN)
  assert index.refresh() == 1
  # The index is derived data: a rebuild from the pool gives the same answers.
  before = index.retrieve_batch([PICK, CLEAN], ["put x"] * 2)
  index.rebuild()
  assert index.retrieve_batch([PICK, CLEAN], ["put x"] * 2) == before


def test_embedding_modes_need_an_embed_fn():
  with pytest.raises(ValueError, match="needs an embed_fn"):
    RuleIndex(make_pool(), config("similarity"))
  with pytest.raises(ValueError, match="rules.retrieval.mode='nearest'"):
    RuleIndex(make_pool(), config("nearest"))


def test_exact_top_k_orders_ties_by_index():
  vectors = np.asarray([[0, 1], [1, 0], [0, 1], [1, 0], [0.6, 0.8]], np.float32)
  idx, scores = exact_top_k(vectors, np.asarray([[1.0, 0.0], [0.0, 1.0]], np.float32), 3)
  assert idx.tolist() == [[1, 3, 4], [0, 2, 4]]
  np.testing.assert_allclose(scores, [[1, 1, 0.6], [1, 1, 0.8]], rtol=1e-6)
  idx, _ = exact_top_k(vectors, np.asarray([[1.0, 0.0]], np.float32), 10)  # k > n
  assert idx.tolist() == [[1, 3, 4, 0, 2]]


def clustered(n, d=32, seed=0, topics=20):
  """Unit vectors around `topics` fixed centres; `seed` picks the draws, not the centres."""
  centres = np.random.default_rng(12345).normal(size=(topics, d))
  rng = np.random.default_rng(seed)
  x = centres[rng.integers(0, topics, n)] + 0.5 * rng.normal(size=(n, d))
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_vector_index_backends():
  x = clustered(100)
  assert VectorIndex(x, exact_threshold=2048).backend == "exact"
  assert VectorIndex(x, exact_threshold=100).backend == "scann"
  with pytest.raises(ValueError, match="at least 16 points"):
    VectorIndex(x[:15], force="scann")
  empty = VectorIndex(np.zeros((0, 32), np.float32))
  assert empty.search(x[:2], 5)[0].shape == (2, 0)


def test_scann_small_index_searches_every_leaf_so_it_is_exact():
  x = clustered(40)
  scann = VectorIndex(x, exact_threshold=16, k=5)
  assert (scann.backend, scann.num_leaves, scann.leaves_to_search) == ("scann", 6, 6)
  queries = clustered(20, seed=1)
  assert scann.search(queries, 5)[0].tolist() == exact_top_k(x, queries, 5)[0].tolist()


def test_scann_recall_against_exact():
  x = clustered(3000)
  queries = clustered(200, seed=1)
  scann = VectorIndex(x, exact_threshold=2048, k=10)
  assert (scann.backend, scann.num_leaves, scann.leaves_to_search) == ("scann", 55, 19)
  found, sims = scann.search(queries, 10)
  truth, _ = exact_top_k(x, queries, 10)
  recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])
  assert recall >= 0.95
  # Reordering rescored the candidates exactly: the returned similarities are true dot products.
  np.testing.assert_allclose(sims, np.sum(x[found] * queries[:, None], axis=-1), atol=1e-5)
  assert (sims[:, :-1] >= sims[:, 1:] - 1e-6).all()
  # A batch above parallel_batch is split across threads; the answers are the same.
  many = np.repeat(queries, 2, axis=0)
  assert scann.parallel_batch == 128
  parallel = scann.search(many, 10)[0]
  scann.parallel_batch = 0
  assert scann.search(many, 10)[0].tolist() == parallel.tolist()


def test_rule_index_over_scann_matches_exact():
  n = 40
  x = clustered(n)
  texts = {f"rule {i}": x[i] for i in range(n)}
  queries = clustered(8, seed=2)
  texts.update({f"task {i}": queries[i] for i in range(8)})
  embed = lambda ts: np.stack([texts[t] for t in ts])
  p = RulePool(capacity_per_scope=n, max_rule_chars=20)
  for i in range(n):
    p.add(f"rule {i}", PICK)
  results = {}
  for threshold in (16, 2048):
    index = RuleIndex(p, config("similarity", top_k=5, exact_threshold=threshold), embed)
    index.refresh()
    assert index.scopes[PICK].index.backend == ("scann" if threshold == 16 else "exact")
    results[threshold] = [ids(r) for r in index.retrieve_batch([PICK] * 8, list(texts)[n:])]
  assert results[16] == results[2048]
  expected = exact_top_k(x, queries, 5)[0] + 1  # rule ids start at 1
  assert results[2048] == expected.tolist()
