"""RuleIndex: which rules go into a task's prompt. Derived data, always rebuildable from the pool.

Retrieval modes (`retrieval.mode`):
  utility     the paper: the top_k rules of the task's scope (and 'global') by utility score
              (ties: more successes, then the older id). Needs no embeddings.
  similarity  the top_k by cosine similarity between the rule text and the task text.
  hybrid      the `hybrid_candidates` most similar rules, re-ranked by
              (1 - hybrid_weight) * similarity + hybrid_weight * score / (best candidate score).

Scope filtering: one sub-index per scope. A task of type T searches T's sub-index and the global
one and merges the two lists. Scopes are few (ALFWorld has six task types) and each is capped by
the pool's capacity, so per-scope indices cost nothing extra, filter exactly, and never need the
over-fetching (and its recall loss when a scope is rare) that one shared index would.

Each sub-index (`VectorIndex`) searches exactly (one matmul) below `exact_threshold` vectors and
with ScaNN above it: a k-means tree over unit vectors (spherical), anisotropic hashing scores in
the searched leaves, then exact re-scoring of the best `reorder` candidates. Tree and search sizes
grow with the index (`num_leaves = leaves_per_sqrt_n * sqrt(n)`, `leaves_to_search =
search_per_sqrt_leaves * sqrt(num_leaves)`, k-means trained on `training_points_per_leaf` points
per leaf); the constants were chosen by measurement (benchmarks/retrieval.py). Query batches
larger than `parallel_batch` are split over ScaNN's thread pool, as numpy's BLAS does for exact
search. ScaNN needs at least 16 points, so the threshold is never below that.

The index is refreshed lazily: each retrieval compares the pool's version with the one it was built
from and re-embeds and rebuilds only the scopes whose (id, text) set changed; score changes need
no rebuild, as scores are read from the pool at retrieval time. It never changes the pool.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import ml_collections
import numpy as np

from jerp_jax import checks
from jerp_jax.rules.pool import GLOBAL_SCOPE, Rule, RulePool

MODES = ("utility", "similarity", "hybrid")
EmbedFn = Callable[[Sequence[str]], np.ndarray]  # texts -> [n, d] float32 unit vectors
SCANN_MIN_POINTS = 16


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.mode = "utility"  # 'utility' (the paper) | 'similarity' | 'hybrid'
  c.top_k = 8  # rules per prompt
  c.include_global = True  # global rules compete with the task type's own
  c.hybrid_weight = 0.5  # weight of the normalised utility score in 'hybrid'
  c.hybrid_candidates = 32  # similar rules re-ranked by 'hybrid' (at least top_k)
  c.exact_threshold = 2048  # sub-indices with fewer vectors are searched exactly
  c.scann = ml_collections.ConfigDict()
  c.scann.leaves_per_sqrt_n = 1.0
  c.scann.search_per_sqrt_leaves = 2.5
  c.scann.dims_per_block = 2
  c.scann.anisotropic_quantization_threshold = 0.2
  c.scann.reorder = 100
  # k-means needs enough points per leaf: at 1M rules, 100 per leaf gave recall@10 0.87 where
  # 250 gave 0.98 at the same search cost (benchmarks/retrieval.py).
  c.scann.training_points_per_leaf = 250
  # Larger query batches are split into batches of this size searched on all cores (0: one
  # thread). numpy's exact search uses every core through BLAS too, so this is the fair setting.
  c.scann.parallel_batch = 128
  return c


def validate_config(c: ml_collections.ConfigDict, prefix: str = "rules.retrieval") -> None:
  positive = checks.POSITIVE_INT
  checks.require(c, prefix, {
    "mode": checks.one_of(MODES), "top_k": positive,
    "hybrid_weight": checks.number_in(0, 1),
    "hybrid_candidates": checks.int_at_least(c.top_k, f"top_k={c.top_k}"),
    "exact_threshold": checks.int_at_least(SCANN_MIN_POINTS, f"{SCANN_MIN_POINTS} (ScaNN's minimum)"),
    "scann.leaves_per_sqrt_n": checks.POSITIVE, "scann.search_per_sqrt_leaves": checks.POSITIVE,
    "scann.dims_per_block": positive, "scann.reorder": positive,
    "scann.training_points_per_leaf": positive,
    "scann.anisotropic_quantization_threshold": checks.number_in(0, 1, closed=False),
    "scann.parallel_batch": checks.saying(checks.COUNT, "0 (off) or a positive integer"),
  })  # fmt: skip


def exact_top_k(vectors_nd: np.ndarray, queries_qd: np.ndarray, k: int):
  """(indices [q, k], scores [q, k]) by dot product, best first; ties: the lower index first."""
  n = vectors_nd.shape[0]
  k = min(k, n)
  scores_qn = queries_qd @ vectors_nd.T
  if k < n:
    idx = np.argpartition(-scores_qn, k - 1, axis=1)[:, :k]
  else:
    idx = np.broadcast_to(np.arange(n), scores_qn.shape)
  top = np.take_along_axis(scores_qn, idx, axis=1)
  # Sort each row by (-score, index); lexsort's last key is the primary one.
  order = np.lexsort((idx, -top), axis=1)
  return np.take_along_axis(idx, order, axis=1).astype(np.int64), np.take_along_axis(
    top, order, axis=1
  )


class VectorIndex:
  """Top-k inner-product search over fixed unit vectors: exact when small, ScaNN when large."""

  def __init__(
    self,
    vectors_nd: np.ndarray,
    scann_config: ml_collections.ConfigDict | None = None,
    exact_threshold: int = 2048,
    k: int = 10,
    force: str | None = None,  # 'exact' | 'scann' | None (by size); the benchmark forces both
  ):
    self.vectors = np.ascontiguousarray(vectors_nd, dtype=np.float32)
    n = self.vectors.shape[0]
    self.k = k
    s = scann_config if scann_config is not None else get_config().scann
    use_scann = n >= exact_threshold if force is None else force == "scann"
    if use_scann and n < SCANN_MIN_POINTS:
      raise ValueError(f"ScaNN needs at least {SCANN_MIN_POINTS} points, got {n}")
    self.backend = "scann" if use_scann else "exact"
    self.searcher = None
    self.parallel_batch = int(s.parallel_batch)
    if use_scann:
      import scann  # pylint: disable=import-outside-toplevel  (only large indices need it)

      self.num_leaves = max(2, min(n // 2, round(s.leaves_per_sqrt_n * math.sqrt(n))))
      self.leaves_to_search = max(
        1, min(self.num_leaves, math.ceil(s.search_per_sqrt_leaves * math.sqrt(self.num_leaves)))
      )
      self.reorder = max(s.reorder, k)
      self.searcher = (
        scann.scann_ops_pybind.builder(self.vectors, k, "dot_product")
        .tree(
          num_leaves=self.num_leaves,
          num_leaves_to_search=self.leaves_to_search,
          training_sample_size=min(n, s.training_points_per_leaf * self.num_leaves),
          spherical=True,
        )
        .score_ah(
          s.dims_per_block,
          anisotropic_quantization_threshold=s.anisotropic_quantization_threshold,
        )
        .reorder(self.reorder)
        .build()
      )

  def __len__(self) -> int:
    return self.vectors.shape[0]

  def search(self, queries_qd: np.ndarray, k: int | None = None):
    """(indices [q, min(k, n)] int64, scores [q, min(k, n)] float32), best first."""
    k = self.k if k is None else k
    queries = np.ascontiguousarray(queries_qd, dtype=np.float32)
    if len(self) == 0 or queries.shape[0] == 0:
      shape = (queries.shape[0], 0)
      return np.zeros(shape, np.int64), np.zeros(shape, np.float32)
    if self.searcher is None:
      return exact_top_k(self.vectors, queries, k)
    k = min(k, len(self))
    kw = dict(
      final_num_neighbors=k,
      leaves_to_search=self.leaves_to_search,
      pre_reorder_num_neighbors=max(self.reorder, k),
    )
    if self.parallel_batch and queries.shape[0] > self.parallel_batch:
      idx, scores = self.searcher.search_batched_parallel(
        queries, batch_size=self.parallel_batch, **kw
      )
    else:
      idx, scores = self.searcher.search_batched(queries, **kw)
    return idx.astype(np.int64), scores.astype(np.float32)


class _ScopeIndex:
  def __init__(self, fingerprint, rule_ids: np.ndarray, index: VectorIndex):
    self.fingerprint = fingerprint
    self.rule_ids = rule_ids  # [n] rule id of each vector
    self.index = index


class RuleIndex:
  """Retrieves rules for tasks from a RulePool, refreshing itself when the pool changed."""

  def __init__(
    self, pool: RulePool, config: ml_collections.ConfigDict, embed_fn: EmbedFn | None = None
  ):
    validate_config(config)
    if config.mode != "utility" and embed_fn is None:
      raise ValueError(f"rules.retrieval.mode={config.mode!r} needs an embed_fn (an Embedder)")
    self.pool = pool
    self.config = config
    self.embed_fn = embed_fn
    self.scopes: dict[str, _ScopeIndex] = {}
    self.built_version = -1
    self.rebuilds = 0  # sub-indices built so far (tests, metrics)

  # --- building ---------------------------------------------------------------------------------

  def refresh(self) -> int:
    """Brings the sub-indices up to date with the pool; returns how many were rebuilt."""
    if self.config.mode == "utility" or self.built_version == self.pool.version:
      self.built_version = self.pool.version
      return 0
    by_scope: dict[str, list[Rule]] = {}
    for r in sorted(self.pool.rules.values(), key=lambda r: r.id):
      by_scope.setdefault(r.scope, []).append(r)
    rebuilt = 0
    for scope in list(self.scopes):
      if scope not in by_scope:
        del self.scopes[scope]
    for scope, rules in by_scope.items():
      fingerprint = tuple((r.id, r.text) for r in rules)
      current = self.scopes.get(scope)
      if current is not None and current.fingerprint == fingerprint:
        continue
      vectors = np.asarray(self.embed_fn([r.text for r in rules]), np.float32)
      k = max(self.config.top_k, self.config.hybrid_candidates)
      index = VectorIndex(vectors, self.config.scann, self.config.exact_threshold, k)
      self.scopes[scope] = _ScopeIndex(fingerprint, np.asarray([r.id for r in rules]), index)
      rebuilt += 1
    self.rebuilds += rebuilt
    self.built_version = self.pool.version
    return rebuilt

  def rebuild(self) -> None:
    """Forgets every sub-index and builds them again from the pool."""
    self.scopes.clear()
    self.built_version = -1
    self.refresh()

  # --- retrieval --------------------------------------------------------------------------------

  def candidate_scopes(self, task_type: str) -> tuple[str, ...]:
    if task_type == GLOBAL_SCOPE or not self.config.include_global:
      return (task_type,)
    return (task_type, GLOBAL_SCOPE)

  def retrieve(self, task_type: str, task_text: str = "", k: int | None = None) -> list[Rule]:
    return self.retrieve_batch([task_type], [task_text], k)[0]

  def retrieve_batch(
    self,
    task_types: Sequence[str],
    task_texts: Sequence[str] | None = None,
    k: int | None = None,
    query_vectors: np.ndarray | None = None,
  ) -> list[list[Rule]]:
    """For each task, its rules in prompt order (best first).

    `query_vectors` [len(task_types), d] replace embedding the task texts (benchmarks, callers
    that embedded them already).
    """
    k = self.config.top_k if k is None else k
    mode = self.config.mode
    if mode == "utility":
      return [self._by_utility(t, k) for t in task_types]
    self.refresh()
    if query_vectors is None:
      if task_texts is None or len(task_texts) != len(task_types):
        raise ValueError("similarity retrieval needs one task text per task type")
      query_vectors = np.asarray(self.embed_fn(list(task_texts)), np.float32)
    fetch = k if mode == "similarity" else max(k, self.config.hybrid_candidates)
    # (similarity, rule id) candidates per query, gathered scope by scope in one batch each.
    found: list[list[tuple[float, int]]] = [[] for _ in task_types]
    queries_by_scope: dict[str, list[int]] = {}
    for q, t in enumerate(task_types):
      for scope in self.candidate_scopes(t):
        queries_by_scope.setdefault(scope, []).append(q)
    for scope, rows in queries_by_scope.items():
      sub = self.scopes.get(scope)
      if sub is None:
        continue
      idx, sims = sub.index.search(query_vectors[rows], fetch)
      ids = sub.rule_ids[np.maximum(idx, 0)]
      for row, q in enumerate(rows):
        found[q].extend(
          (float(s), int(i)) for s, i, j in zip(sims[row], ids[row], idx[row]) if j >= 0
        )
    rules = self.pool.rules
    out = []
    for cands in found:
      if mode == "similarity":
        ranked = sorted(cands, key=lambda c: (-c[0], c[1]))[:k]
      else:
        cands = sorted(cands, key=lambda c: (-c[0], c[1]))[:fetch]
        best = max([rules[i].score for _, i in cands] + [1])  # scores > remove_at >= 0 usually
        w = self.config.hybrid_weight
        ranked = sorted(
          cands, key=lambda c: (-((1 - w) * c[0] + w * rules[c[1]].score / best), c[1])
        )[:k]
      out.append([rules[i] for _, i in ranked])
    return out

  def _by_utility(self, task_type: str, k: int) -> list[Rule]:
    scopes = self.candidate_scopes(task_type)
    rules = [r for r in self.pool.rules.values() if r.scope in scopes]
    return sorted(rules, key=lambda r: (-r.score, -r.successes, r.id))[:k]
