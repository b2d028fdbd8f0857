"""Search: Porter stems, the analyzer, Lucene's length norm and BM25 ranking on a tiny corpus."""

import math

import pytest

from jerp_jax.envs.webshop import porter, search


@pytest.mark.parametrize(
  "word,stem",
  [
    ("caresses", "caress"),
    ("ponies", "poni"),
    ("cats", "cat"),
    ("agreed", "agre"),
    ("plastered", "plaster"),
    ("motoring", "motor"),
    ("hopping", "hop"),
    ("filing", "file"),
    ("happy", "happi"),
    ("relational", "relat"),
    ("conformabli", "conform"),  # -bli -> -ble (reference-code departure), then -able goes
    ("analogousli", "analog"),
    ("generalizations", "gener"),
    ("electrical", "electr"),
    ("adjustment", "adjust"),
    ("adoption", "adopt"),
    ("controll", "control"),
    ("shoes", "shoe"),
    ("is", "is"),  # two letters: untouched
  ],
)
def test_porter(word, stem):
  assert porter.stem(word) == stem


def test_analyze_follows_lucene_chain():
  # Possessive removed, stop words dropped, hyphens split; dots and commas inside numbers, and
  # dots, colons and apostrophes between letters, keep a token whole (Unicode word breaks).
  text = "Women's Running Shoes for the X-Large 7.5 U.S. 1,299.00 color:black don't"
  assert search.analyze(text) == [
    "women", "run", "shoe", "x", "larg", "7.5", "u.", "1,299.00", "color:black", "don't"
  ]  # fmt: skip


def test_lucene_length_norm():
  assert [search.lucene_length(n) for n in (0, 5, 23, 24, 39, 40, 100)] == [
    0,
    5,
    23,
    24,
    39,
    40,
    96,
  ]
  # (n - 24) keeps 4 significant bits: 300 - 24 = 276 = 0b100010100 -> 0b100000000 = 256.
  assert search.lucene_length(300) == 24 + 256


def test_document_text_indexes_first_bullet_and_options():
  product = dict(
    Title="Tea",
    Description="Hot",
    BulletPoints=["one", "two"],
    options={"size": ["s", "m"], "color": ["red"]},
  )
  assert search.document_text(product) == "tea hot one size: s, m, and color: red"


def test_bm25_ranking_and_ties():
  idx = search.SearchIndex(
    ["B3", "B1", "B2", "B4"],
    ["green tea bags", "green tea bags", "black tea", "coffee mug"],
  )
  # B1 and B3 have the same text and score: ASIN order breaks the tie; B4 has no query term.
  assert idx.search("green tea") == ["B1", "B3", "B2"]
  assert idx.search("nothing here") == []
  assert idx.search("the of") == []  # stop words only
  assert idx.search("green tea", top_n=2) == ["B1", "B3"]


def test_bm25_score_hand_computed():
  # Lucene BM25: idf = ln(1 + (N - df + 0.5) / (df + 0.5)), tf / (tf + k1 (1 - b + b dl / avgdl)).
  idx = search.SearchIndex(["A", "B"], ["tea tea", "tea cup mug"])
  scores = idx._bm25.get_scores_from_ids(idx._bm25.get_tokens_ids(search.analyze("tea")))
  idf = math.log(1 + (2 - 2 + 0.5) / (2 + 0.5))
  avgdl = 2.5

  def term(tf, dl):
    return idf * tf / (tf + 0.9 * (1 - 0.4 + 0.4 * dl / avgdl))

  assert scores[0] == pytest.approx(term(2, 2), rel=1e-6)
  assert scores[1] == pytest.approx(term(1, 3), rel=1e-6)


def test_repeated_query_terms_weigh_more():
  idx = search.SearchIndex(["A", "B"], ["tea cup", "mug cup"])
  # 'mug mug tea' counts mug twice: B wins although both contain one query word.
  assert idx.search("mug mug tea")[0] == "B"
  assert idx.search("mug tea tea")[0] == "A"
