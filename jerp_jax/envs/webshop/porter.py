"""The Porter stemmer in the form Lucene's PorterStemFilter applies it (Porter's reference version).

It owns one pure function, `stem(word)`, for lower-case words. It never tokenises or lower-cases:
that is the analyzer's job (search.py). Lucene ports Porter's own C implementation, which departs
from the 1980 paper in three places that we keep: words of one or two letters are left alone,
`-bli` becomes `-ble` (the paper has `-abli` to `-able`) and `-logi` becomes `-log`.
"""

from __future__ import annotations

import functools

_VOWELS = frozenset("aeiou")


def _is_consonant(w: str, i: int) -> bool:
  c = w[i]
  if c in _VOWELS:
    return False
  if c == "y":
    # A 'y' after a consonant acts as a vowel ("happy"); at the start or after a vowel it does not.
    return i == 0 or not _is_consonant(w, i - 1)
  return True


def _measure(stem_: str) -> int:
  """m in [C](VC)^m[V]: the number of vowel-consonant sequences of the stem."""
  m = 0
  i, n = 0, len(stem_)
  while i < n and _is_consonant(stem_, i):
    i += 1
  while i < n:
    while i < n and not _is_consonant(stem_, i):
      i += 1
    if i >= n:
      break
    while i < n and _is_consonant(stem_, i):
      i += 1
    m += 1
  return m


def _has_vowel(stem_: str) -> bool:
  return any(not _is_consonant(stem_, i) for i in range(len(stem_)))


def _double_consonant(w: str) -> bool:
  return len(w) >= 2 and w[-1] == w[-2] and _is_consonant(w, len(w) - 1)


def _cvc(w: str) -> bool:
  """Ends consonant-vowel-consonant with the last not w, x or y (e.g. -hop, -fil)."""
  if len(w) < 3:
    return False
  if not (_is_consonant(w, len(w) - 1) and not _is_consonant(w, len(w) - 2)):
    return False
  if not _is_consonant(w, len(w) - 3):
    return False
  return w[-1] not in "wxy"


def _replace_if_m(w: str, suffix: str, repl: str, min_m: int) -> tuple[str, bool]:
  """(w with suffix replaced if the stem's measure exceeds min_m, whether w ends with suffix)."""
  if not w.endswith(suffix):
    return w, False
  stem_ = w[: len(w) - len(suffix)]
  if _measure(stem_) > min_m:
    return stem_ + repl, True
  return w, True


def _step1ab(w: str) -> str:
  if w.endswith("s"):
    if w.endswith("sses"):
      w = w[:-2]
    elif w.endswith("ies"):
      w = w[:-2]
    elif not w.endswith("ss"):
      w = w[:-1]
  if w.endswith("eed"):
    if _measure(w[:-3]) > 0:
      w = w[:-1]
    return w
  for suffix in ("ed", "ing"):
    if w.endswith(suffix) and _has_vowel(w[: -len(suffix)]):
      w = w[: -len(suffix)]
      if w.endswith(("at", "bl", "iz")):
        return w + "e"
      if _double_consonant(w) and w[-1] not in "lsz":
        return w[:-1]
      if _measure(w) == 1 and _cvc(w):
        return w + "e"
      return w
  return w


def _step1c(w: str) -> str:
  if w.endswith("y") and _has_vowel(w[:-1]):
    return w[:-1] + "i"
  return w


# Step 2 rules are grouped by the penultimate letter and step 3 rules by the last letter, the way
# the reference code dispatches them; the first suffix that matches ends the step whether or not the
# measure allows the change.
_STEP2 = {
  "a": (("ational", "ate"), ("tional", "tion")),
  "c": (("enci", "ence"), ("anci", "ance")),
  "e": (("izer", "ize"),),
  "l": (("bli", "ble"), ("alli", "al"), ("entli", "ent"), ("eli", "e"), ("ousli", "ous")),
  "o": (("ization", "ize"), ("ation", "ate"), ("ator", "ate")),
  "s": (("alism", "al"), ("iveness", "ive"), ("fulness", "ful"), ("ousness", "ous")),
  "t": (("aliti", "al"), ("iviti", "ive"), ("biliti", "ble")),
  "g": (("logi", "log"),),
}
_STEP3 = {
  "e": (("icate", "ic"), ("ative", ""), ("alize", "al")),
  "i": (("iciti", "ic"),),
  "l": (("ical", "ic"), ("ful", "")),
  "s": (("ness", ""),),
}
_STEP4 = {
  "a": ("al",),
  "c": ("ance", "ence"),
  "e": ("er",),
  "i": ("ic",),
  "l": ("able", "ible"),
  "n": ("ant", "ement", "ment", "ent"),
  "o": ("ion", "ou"),
  "s": ("ism",),
  "t": ("ate", "iti"),
  "u": ("ous",),
  "v": ("ive",),
  "z": ("ize",),
}


def _step23(w: str, table, key_pos: int) -> str:
  if len(w) < 2:
    return w
  for suffix, repl in table.get(w[key_pos], ()):
    w2, matched = _replace_if_m(w, suffix, repl, 0)
    if matched:
      return w2
  return w


def _step4(w: str) -> str:
  if len(w) < 2:
    return w
  for suffix in _STEP4.get(w[-2], ()):
    if not w.endswith(suffix):
      continue
    stem_ = w[: -len(suffix)]
    if suffix == "ion" and not stem_.endswith(("s", "t")):
      return w
    if _measure(stem_) > 1:
      return stem_
    return w
  return w


def _step5(w: str) -> str:
  if w.endswith("e"):
    m = _measure(w[:-1])
    if m > 1 or (m == 1 and not _cvc(w[:-1])):
      w = w[:-1]
  if w.endswith("ll") and _measure(w) > 1:
    w = w[:-1]
  return w


@functools.lru_cache(maxsize=1 << 18)
def stem(word: str) -> str:
  """The Porter stem of a lower-case word; words of at most two characters are returned as is."""
  if len(word) <= 2:
    return word
  w = _step1ab(word)
  w = _step1c(w)
  w = _step23(w, _STEP2, -2)
  w = _step23(w, _STEP3, -1)
  w = _step4(w)
  return _step5(w)
