"""Product search: the text WebShop indexes, a Lucene-like English analyzer and BM25 through bm25s.

It owns the index over a loaded catalogue and `SearchIndex.search(keywords) -> [asin, ...]`
(at most 50 hits, best first). It never renders pages or keeps session state.

Upstream searches with pyserini (Lucene through a JVM). We keep its observable behaviour
(SPEC §5): the same document text, the analysis chain StandardTokenizer -> English possessive
filter -> lower case -> Lucene's 33 English stop words -> Porter stemmer, BM25 with k1=0.9,
b=0.4 and Lucene's idf, OR semantics with repeated query terms counted, Lucene's lossy one-byte
document-length norm, top 50, ties by ASIN. Approximations: the tokenizer is a regular
expression that follows the Unicode word-break rules for ASCII letters, digits and the
separators `.`, `'`, `:`, `,`, `;` (scripts without spaces and emoji are split differently), and
scores are float32 sums whose rounding can order near-ties differently from Lucene.
"""

from __future__ import annotations

import re
from typing import Sequence

import bm25s
import numpy as np
import scipy.sparse as sp

from jerp_jax.envs.webshop import porter

SEARCH_RETURN_N = 50
K1 = 0.9
B = 0.4

# Lucene's EnglishAnalyzer.ENGLISH_STOP_WORDS_SET, which Anserini's default analyzer uses.
STOP_WORDS = frozenset(
  "a an and are as at be but by for if in into is it no not of on or such that the their then "
  "there these they this to was will with".split()
)

# A token is a run of word characters; separators join two runs only where the Unicode word-break
# rules do: . ' ’ : between letters (WB6/7) and . , ; ' ’ between digits (WB11/12).
_TOKEN = re.compile(
  r"\w+(?:(?:(?<=[^\W\d_])[.:'\u2019](?=[^\W\d_])|(?<=\d)[.,;'\u2019](?=\d))\w+)*"
)
_POSSESSIVE = re.compile(r"['\u2019\uff07]s$")


def analyze(text: str) -> list[str]:
  """Terms of a text as the index sees them (for documents and queries alike)."""
  terms = []
  for token in _TOKEN.findall(text):
    token = _POSSESSIVE.sub("", token.lower())
    if token and token not in STOP_WORDS:
      terms.append(porter.stem(token))
  return terms


def document_text(product: dict) -> str:
  """The indexed text of a loaded product (SPEC §5.1): only the first bullet point is indexed."""
  bullets = product["BulletPoints"]
  first_bullet = bullets[0] if bullets else ""
  option_text = ", and ".join(
    f"{name}: {', '.join(values)}" for name, values in product["options"].items()
  )
  return f"{product['Title']} {product['Description']} {first_bullet} {option_text}".lower()


def lucene_length(n: int) -> int:
  """A document length after Lucene's SmallFloat.intToByte4 / byte4ToInt round trip.

  Lengths below 24 are exact; above, (n - 24) keeps its 4 most significant bits.
  """
  free = 24
  if n < free:
    return n
  v = n - free
  shift = v.bit_length() - 4
  if shift <= 0:
    return n
  return free + ((v >> shift) << shift)


class LuceneBM25(bm25s.BM25):
  """bm25s with Lucene's document lengths: dl is the lossy one-byte norm, avgdl the exact mean."""

  def __init__(self):
    super().__init__(k1=K1, b=B, method="lucene", idf_method="lucene")

  def build_index_from_ids(
    self, unique_token_ids, corpus_token_ids, show_progress=False, leave_progress=False
  ):
    n_docs, n_vocab = len(corpus_token_ids), len(unique_token_ids)
    lengths = np.array([len(ids) for ids in corpus_token_ids], dtype=np.int64)
    avgdl = lengths.mean() if n_docs else 1.0
    if n_docs and lengths.sum():
      doc = np.repeat(np.arange(n_docs, dtype=np.int64), lengths)
      term = np.concatenate([np.asarray(ids, dtype=np.int64) for ids in corpus_token_ids])
    else:
      doc = term = np.zeros(0, dtype=np.int64)
    # One (doc, term, tf) entry per distinct pair.
    pair, tf = np.unique(doc * n_vocab + term, return_counts=True)
    pair_doc, pair_term = pair // max(n_vocab, 1), pair % max(n_vocab, 1)
    df = np.bincount(pair_term, minlength=n_vocab).astype(np.float64)
    idf = np.log(1.0 + (n_docs - df + 0.5) / (df + 0.5))
    dl = np.array([lucene_length(int(n)) for n in lengths], dtype=np.float64)
    norm = K1 * (1.0 - B + B * dl / avgdl)
    tf = tf.astype(np.float64)
    scores = idf[pair_term] * tf / (tf + norm[pair_doc])
    matrix = sp.csc_matrix(
      (scores.astype(self.dtype), (pair_doc, pair_term)), shape=(n_docs, n_vocab), dtype=self.dtype
    )
    self.nonoccurrence_array = None
    return {
      "data": matrix.data,
      "indices": matrix.indices,
      "indptr": matrix.indptr,
      "num_docs": n_docs,
    }


class SearchIndex:
  """BM25 over the indexed text of a catalogue; documents are identified by ASIN."""

  def __init__(self, asins: Sequence[str], texts: Sequence[str]):
    if len(asins) != len(texts):
      raise ValueError(f"search index: {len(asins)} ids for {len(texts)} texts")
    self.asins = list(asins)
    # Tie-break rank: position of each document in ASIN order.
    order = np.argsort(np.array(self.asins, dtype=object), kind="stable")
    self._asin_rank = np.empty(len(self.asins), dtype=np.int64)
    self._asin_rank[order] = np.arange(len(self.asins))
    corpus = [analyze(t) for t in texts]
    self._bm25 = LuceneBM25()
    # bm25s wants at least one token per document; an empty document gets a term no query has.
    self._bm25.index(
      [c if c else ["\x00"] for c in corpus], create_empty_token=False, show_progress=False
    )

  @classmethod
  def from_products(cls, products: Sequence[dict]) -> "SearchIndex":
    return cls([p["asin"] for p in products], [document_text(p) for p in products])

  def search(self, keywords: str, top_n: int = SEARCH_RETURN_N) -> list[str]:
    """ASINs of the best `top_n` documents containing any query term, best first."""
    ids = self._bm25.get_tokens_ids(analyze(keywords))
    if not ids:
      return []
    scores = self._bm25.get_scores_from_ids(ids)
    hit = np.flatnonzero(scores > 0)
    if hit.size > top_n:
      # Keep every document tied with the top_n-th score so that the tie-break can choose.
      kth = np.partition(scores[hit], hit.size - top_n)[hit.size - top_n]
      hit = hit[scores[hit] >= kth]
    order = np.lexsort((self._asin_rank[hit], -scores[hit]))
    return [self.asins[i] for i in hit[order[:top_n]]]
