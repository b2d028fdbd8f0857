"""Constrained decoding: a regular grammar as dense token tables, and its step inside the decoder.

The host side turns a regex into a token-level automaton with outlines-core (`outlines_core.Index`
walks every token's bytes through the regex's DFA) and lays it out as dense numpy tables:
`next_state[S, V]` (-1: the token is not allowed) and `final[S]`. The device side is three pure
functions the sampler calls in its jitted loop: which tokens a row may write next, the logits
masked to them, and the row's state after the sampled token.

Two counters ride beside the automaton state instead of inside it: the bytes of the current
segment (since the last separator byte: ':' or '\n' for edits; only segments that follow a
`bounded_after` byte, the rule texts after ':', are bounded) and the newlines so far. A bounded
run such as `[ -~]{0,300}` makes one DFA state per character, and every such state allows most of
the vocabulary: 300 characters x 6 lines of rule text would be ~3600 states (700 MB of int32
next_state over SmolLM2's 49k tokens, and as many Python dict entries out of outlines). The
automaton keeps the unbounded `[ -~]*` loop (a handful of states) and the counters bound it, from
per-token counts of bytes, separators and newlines.

A row is also kept able to finish: a token is allowed only if a final state stays reachable
within the tokens left (`to_final`, the fewest tokens from each state to a final one), so a row
that runs out of tokens stops in a final state and its text is in the grammar.

The edit grammar of the reviser (`edit_regex`, `edit_tables`) lives here too: its line forms
mirror `jerp_jax.rules.reviser._LINE_FORMS`. This module never runs a model.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import outlines_core

from jerp_jax.parallel import buckets

# A dense table beyond this is refused: S * V int32 entries on the device for every automaton.
MAX_TABLE_BYTES = 256 << 20
UNBOUNDED = 1 << 30  # a counter limit that never binds

# Rule text: printable ASCII without the characters of chat-template markers ('<|', '|>', '<s>',
# '[INST]', ...: see rules/pool.py FORBIDDEN_MARKERS), so a well-formed text is never refused
# for a marker, and without ':', so that a text is the segment after its line's only ':' and the
# segment counter bounds it exactly. Non-ASCII letters are left out: their UTF-8 classes multiply
# the DFA's states.
TEXT_CHAR = r"[\x20-\x39\x3B\x3D\x3F-\x5A\x5C\x5E-\x7B\x7D\x7E]"
# With EditGrammar.words_only: words and plain punctuation only.
WORD_CHAR = r"[A-Za-z ,.'\-]"
EDIT_SEPARATORS = b":\n"
# A rule opens with a word of two letters (or 'A '/'I ' and one), so "1." or "**/**" is no rule.
_TEXT_HEADS = ((r"[A-Za-z]{2}", 2), (r"[AI] [A-Za-z]{2}", 4))  # (regex, its characters)
_SCOPE = re.compile(r"[A-Za-z0-9_\-]{1,64}")
OPENER = re.compile(r"[A-Za-z]+(?: [A-Za-z]+)*")


# --- the edit grammar ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EditGrammar:
  """What one revision prompt lets the model write: its scopes, the rule ids it shows, limits."""

  task_type: str
  shown_ids: tuple[int, ...]
  max_rule_chars: int
  max_edits: int
  # Words a rule text must open with, each followed by a space (e.g. 'Before', 'Never'); ():
  # any word. Advice reads as advice from its first word on: without them SmolLM2-135M wrote
  # actions ("take apple 2 from fridge 1") and task names as rules.
  openers: tuple[str, ...] = ()
  # True: letters, spaces and , . ' - only. No digits, so a rule cannot name one game's objects
  # ('apple 2', 'fridge 1'); no '_' or symbols ('are_your_own_categories', '**/**').
  words_only: bool = False

  def __post_init__(self):
    object.__setattr__(self, "shown_ids", tuple(sorted(set(int(i) for i in self.shown_ids))))
    object.__setattr__(self, "openers", tuple(self.openers))
    if not _SCOPE.fullmatch(self.task_type):
      raise ValueError(f"EditGrammar.task_type={self.task_type!r}: expected [A-Za-z0-9_-]{{1,64}}")
    if self.max_rule_chars < 4:
      raise ValueError(f"EditGrammar.max_rule_chars={self.max_rule_chars}: expected >= 4")
    for o in self.openers:
      if not (isinstance(o, str) and OPENER.fullmatch(o) and len(o) + 2 <= self.max_rule_chars):
        raise ValueError(
          f"EditGrammar.openers: {o!r}: expected words of letters (e.g. 'Before') that leave "
          f"room for a word within max_rule_chars={self.max_rule_chars}"
        )
    if self.max_edits < 1:
      raise ValueError(f"EditGrammar.max_edits={self.max_edits}: expected a positive integer")

  @property
  def scopes(self) -> tuple[str, ...]:
    return tuple(dict.fromkeys((self.task_type, "global")))


def _text(g: EditGrammar, max_chars: int | None) -> str:
  """A rule text: at most max_chars characters (None: unbounded, the counters bound it)."""
  char = WORD_CHAR if g.words_only else TEXT_CHAR
  heads = [(o + " [A-Za-z]", len(o) + 2) for o in g.openers] or _TEXT_HEADS  # then a word
  alternatives = []
  for head, used in heads:
    tail = "*" if max_chars is None else f"{{0,{max_chars - used}}}"
    alternatives.append(f"{head}{char}{tail}")
  return "(?:" + "|".join(alternatives) + ")"


def _line(g: EditGrammar, max_chars: int | None) -> str:
  text = _text(g, max_chars)
  forms = [f"ADD (?:{'|'.join(g.scopes)}): {text}"]
  if g.shown_ids:
    rid = "R(?:" + "|".join(str(i) for i in g.shown_ids) + ")"
    forms += [
      f"EDIT {rid}: {text}",
      f"UPVOTE {rid}",
      f"DOWNVOTE {rid}",
      f"REMOVE {rid}",
      f"MERGE {rid}(?:,{rid})+: {text}",
    ]
  return "(?:" + "|".join(forms) + ")"


def edit_regex(g: EditGrammar, bounded: bool = True) -> str:
  """The answers a revision prompt allows: 1..max_edits edit lines joined by '\\n'.

  Scopes are the group's task type and 'global'; ids only those shown (none: no id forms). With
  `bounded` the rule texts and the line count carry their limits (the exact language, for
  checking outputs); without, they are unbounded loops for the automaton, whose counters bound
  them (see `edit_tables`).
  """
  line = _line(g, g.max_rule_chars if bounded else None)
  more = f"{{0,{g.max_edits - 1}}}" if bounded else "*"
  return f"{line}(?:\\n{line}){more}"


def edit_tables(g: EditGrammar, tokenizer: Any, max_table_bytes: int = MAX_TABLE_BYTES) -> Tables:
  """Token tables of `edit_regex(g)`: the unbounded automaton with its segment and line bounds.

  A rule text is the segment after its line's only ':' (' ' and the text), so a bound of
  max_rule_chars + 1 bytes on segments after ':' is exact.
  """
  return token_tables(
    edit_regex(g, bounded=False),
    tokenizer,
    separators=EDIT_SEPARATORS,
    bounded_after=b":",
    max_segment=g.max_rule_chars + 1,
    max_lines=g.max_edits,
    max_table_bytes=max_table_bytes,
  )


# --- token tables (host) ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Tables:
  """One regex's token automaton as dense arrays, with its counters' per-token counts."""

  next_state: np.ndarray  # [S, V] int32: -1 where the token is not allowed; EOS columns are -1
  final: np.ndarray  # [S] bool: EOS may end the text here
  to_final: np.ndarray  # [S] int32: fewest tokens from the state to a final state
  bounded: np.ndarray  # [S] bool: in a segment that max_segment bounds
  initial: int
  token_chars: np.ndarray  # [V] int32: bytes of each token
  token_seps: np.ndarray  # [V] int32: separator bytes in each token
  token_newlines: np.ndarray  # [V] int32: '\n' in each token
  token_head: np.ndarray  # [V] int32: bytes before its first separator (all without one)
  token_tail: np.ndarray  # [V] int32: bytes after its last separator
  token_inner: np.ndarray  # [V] int32: its longest segment between two separators
  max_segment: int  # bytes of a bounded segment (and of any segment inside one token)
  max_lines: int  # newlines + 1

  @property
  def states(self) -> int:
    return self.next_state.shape[0]


def _bytes_to_unicode() -> dict[int, str]:
  """GPT-2's byte-level alphabet: each byte as the printable character its BPE tokens spell."""
  keep = list(range(ord("!"), ord("~") + 1))
  keep += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
  chars, extra = {}, 0
  for b in range(256):
    if b in keep:
      chars[b] = chr(b)
    else:
      chars[b] = chr(256 + extra)
      extra += 1
  return chars


_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@functools.lru_cache(maxsize=4)
def token_bytes(tokenizer: Any) -> tuple[bytes | None, ...]:
  """Each id's bytes as the tokenizer's decoder writes them; None for added and special tokens.

  Byte-level BPE (GPT-2, SmolLM2, Qwen) spells bytes as printable characters ('Ġ' is a space);
  SentencePiece-style vocabularies write '▁' for a space and '<0x0A>' for raw bytes. Added tokens
  are never in a grammar: a chat marker must not be writable as text. The mapping is checked on a
  probe string: its tokens' bytes must join to its UTF-8.
  """
  hf = tokenizer.hf
  decoder = str(hf.backend_tokenizer.decoder)
  added = set(hf.added_tokens_decoder)
  pieces = hf.convert_ids_to_tokens(list(range(len(hf))))
  if decoder.startswith("ByteLevel"):
    inverse = {c: b for b, c in _bytes_to_unicode().items()}
    spell = lambda p: bytes(inverse[c] for c in p) if all(c in inverse for c in p) else None
  elif "ByteFallback" in decoder and "▁" in decoder:

    def spell(p):
      m = _BYTE_FALLBACK.fullmatch(p)
      return bytes([int(m.group(1), 16)]) if m else p.replace("▁", " ").encode("utf-8")

  else:
    raise ValueError(f"tokenizer decoder {decoder[:80]}: expected ByteLevel or ▁ with ByteFallback")
  out = tuple(None if i in added or p is None else spell(p) for i, p in enumerate(pieces))
  probe = "ADD global: Open the fridge, then look.\nEDIT R12: Go to 3 places; UPVOTE R7"
  got = b"".join(out[i] or b"?" for i in tokenizer.encode(probe))
  if got.lstrip(b" ") != probe.encode("utf-8"):
    raise ValueError(f"token bytes of {tokenizer.source}: {got[:40]!r} for {probe[:40]!r}")
  return out


@functools.lru_cache(maxsize=4)
def _vocabulary(tokenizer: Any) -> outlines_core.Vocabulary:
  """The outlines Vocabulary of `tokenizer`: every token's bytes but added tokens and EOS."""
  by_bytes: dict[bytes, list[int]] = {}
  for i, b in enumerate(token_bytes(tokenizer)):
    if b and i not in tokenizer.eos_ids:
      by_bytes.setdefault(b, []).append(i)
  # outlines keeps EOS apart from the map; it is allowed in final states (we read `final`).
  return outlines_core.Vocabulary(int(tokenizer.eos_ids[0]), by_bytes)


@functools.lru_cache(maxsize=8)
def token_counts(tokenizer: Any, separators: bytes) -> dict[str, np.ndarray]:
  """Per-token counts for the segment and line counters (the Tables fields of those names)."""
  split = re.compile(b"[" + re.escape(separators) + b"]")
  parts = [split.split(b or b"") for b in token_bytes(tokenizer)]
  return {
    "token_chars": np.asarray([len(b or b"") for b in token_bytes(tokenizer)], np.int32),
    "token_seps": np.asarray([len(p) - 1 for p in parts], np.int32),
    "token_newlines": np.asarray(
      [(b or b"").count(b"\n") for b in token_bytes(tokenizer)], np.int32
    ),
    "token_head": np.asarray([len(p[0]) for p in parts], np.int32),
    "token_tail": np.asarray([len(p[-1]) for p in parts], np.int32),
    "token_inner": np.asarray([max(map(len, p[1:-1]), default=0) for p in parts], np.int32),
  }


def minimize(next_state: np.ndarray, final: np.ndarray, initial: int) -> tuple[np.ndarray, ...]:
  """(next_state, final, initial) of the minimal automaton with the same token language.

  outlines' DFA keeps equivalent states apart (the rule text after ADD, EDIT and MERGE are three
  copies of one loop, and again after each newline); merging them (Moore's partition refinement)
  shrinks the edit grammar's table ~3x. Equivalent states agree on every token's next state
  class, so the counters and `to_final` are unchanged. Tokens with equal columns are refined as
  one (a few hundred columns instead of the whole vocabulary).
  """
  seen: dict[bytes, int] = {}  # a column's bytes as its key: exact, and faster than np.unique
  token_class = np.asarray([seen.setdefault(c.tobytes(), len(seen)) for c in next_state.T])
  columns = next_state[:, np.unique(token_class, return_index=True)[1]]  # [S, C]
  cls = final.astype(np.int64)
  while True:  # a state's class: whether final, and its successors' classes (Moore)
    mapped = np.where(columns >= 0, cls[np.maximum(columns, 0)], -1)
    rows: dict[bytes, int] = {}
    new = np.asarray(
      [rows.setdefault(bytes([f]) + r.tobytes(), len(rows)) for f, r in zip(final.tolist(), mapped)]
    )
    if len(rows) == cls.max() + 1:  # refines the last partition with as many classes: stable
      break
    cls = new
  # Classes renumbered so that the initial state's is 0, the others by their first state.
  firsts = np.unique(cls, return_index=True)[1]
  order = [int(cls[initial])] + [int(cls[i]) for i in np.sort(firsts) if cls[i] != cls[initial]]
  renumber = np.empty(len(order), np.int64)
  renumber[order] = np.arange(len(order))
  reps = firsts[order]  # one state of each class, in the new order
  small = np.where(columns[reps] >= 0, renumber[cls[np.maximum(columns[reps], 0)]], -1)
  return small[:, token_class].astype(np.int32), final[reps], 0


def bounded_states(
  next_state: np.ndarray, tokenizer: Any, separators: bytes, after: bytes
) -> np.ndarray:
  """[S] bool: states inside a segment that began after a byte of `after`.

  Walked byte by byte with the single-byte tokens (a byte-level vocabulary has one for every
  byte): the states that one of `after` leads to, then every state that bytes other than
  separators lead to from those.
  """
  bounded = np.zeros(next_state.shape[0], bool)
  if not after:
    return bounded
  single: dict[int, int] = {}
  for i, b in enumerate(token_bytes(tokenizer)):
    if b is not None and len(b) == 1 and i not in tokenizer.eos_ids:
      single.setdefault(b[0], i)
  missing = [bytes([x]) for x in after if x not in single]
  if missing:
    raise ValueError(f"bounded_after={after!r}: the vocabulary has no token for {missing}")
  inside = [i for x, i in single.items() if x not in separators]
  frontier = next_state[:, [single[x] for x in after]].ravel()
  while True:
    frontier = np.unique(frontier[frontier >= 0])
    frontier = frontier[~bounded[frontier]]
    if not len(frontier):
      return bounded
    bounded[frontier] = True
    frontier = next_state[np.ix_(frontier, inside)].ravel()


def fewest_tokens_to_final(next_state: np.ndarray, final: np.ndarray) -> np.ndarray:
  """[S] int32: the fewest tokens from each state to a final state (UNBOUNDED: none reachable)."""
  successors = [np.unique(row[row >= 0]) for row in next_state]
  dist = np.where(final, 0, UNBOUNDED).astype(np.int64)
  for _ in range(len(final)):  # Bellman-Ford on unit edges: at most S rounds
    best = np.asarray([dist[s].min() + 1 if len(s) else UNBOUNDED for s in successors])
    new = np.minimum(dist, best)
    if np.array_equal(new, dist):
      break
    dist = new
  return np.minimum(dist, UNBOUNDED).astype(np.int32)


def token_tables(
  regex: str,
  tokenizer: Any,
  separators: bytes = b"\n",
  bounded_after: bytes = b"",
  max_segment: int = UNBOUNDED,
  max_lines: int = UNBOUNDED,
  max_table_bytes: int = MAX_TABLE_BYTES,
) -> Tables:
  """The dense token tables of `regex` over `tokenizer`'s vocabulary.

  Segments are the bytes between `separators`; those that begin after a byte of `bounded_after`
  may hold at most `max_segment` bytes, and the text at most `max_lines` lines. The automaton is
  minimized and its states numbered 0..S-1, the initial state 0. Fails in one line when outlines'
  automaton would exceed `max_table_bytes` as a table.
  """
  v = len(tokenizer.hf)
  index = outlines_core.Index(regex, _vocabulary(tokenizer))
  transitions = index.get_transitions()  # {state: {token: next state}}
  initial = index.get_initial_state()
  order = [initial] + sorted(s for s in transitions if s != initial)
  order += sorted(set(index.get_final_states()) - set(order))
  if len(order) * v * 4 > max_table_bytes:
    raise ValueError(
      f"grammar of {len(order)} states x {v} tokens = {len(order) * v * 4 >> 20} MiB: expected "
      f"at most max_table_bytes={max_table_bytes >> 20} MiB (a smaller grammar)"
    )
  number = np.full(max(order) + 1, -1, np.int32)  # outlines' state ids -> 0..S-1
  number[order] = np.arange(len(order))
  next_state = np.full((len(order), v), -1, np.int32)
  for s, row in transitions.items():
    tokens = np.fromiter(row.keys(), np.int64, len(row))
    next_state[number[s], tokens] = number[np.fromiter(row.values(), np.int64, len(row))]
  next_state[:, list(tokenizer.eos_ids)] = -1
  final = np.zeros(len(order), bool)
  final[number[list(index.get_final_states())]] = True
  next_state, final, initial = minimize(next_state, final, 0)
  pad = lambda x: np.pad(x, (0, v - len(x)))
  return Tables(
    next_state=next_state,
    final=final,
    to_final=fewest_tokens_to_final(next_state, final),
    bounded=bounded_states(next_state, tokenizer, separators, bounded_after),
    initial=initial,
    max_segment=int(max_segment),
    max_lines=int(max_lines),
    **{k: pad(x) for k, x in token_counts(tokenizer, separators).items()},
  )


# --- on the device ------------------------------------------------------------------------------


@flax.struct.dataclass
class DeviceTables:
  """The automata of one batch on the device: rows' tables concatenated, states offset."""

  next_state: jax.Array  # [S, V] int32, states of all automata (row b starts at initial[b])
  final: jax.Array  # [S] bool
  to_final: jax.Array  # [S] int32
  bounded: jax.Array  # [S] bool
  token_chars: jax.Array  # [V] int32
  token_seps: jax.Array  # [V] int32
  token_newlines: jax.Array  # [V] int32
  token_head: jax.Array  # [V] int32
  token_tail: jax.Array  # [V] int32
  token_inner: jax.Array  # [V] int32
  initial: jax.Array  # [B] int32
  max_segment: jax.Array  # [B] int32
  max_lines: jax.Array  # [B] int32


@flax.struct.dataclass
class RowState:
  state: jax.Array  # [B] int32: the automaton state
  segment: jax.Array  # [B] int32: bytes since the last separator
  newlines: jax.Array  # [B] int32


_TOKEN_FIELDS = (
  "token_chars",
  "token_seps",
  "token_newlines",
  "token_head",
  "token_tail",
  "token_inner",
)


def stack_tables(
  tables: Sequence[Tables], rows: int, vocab_size: int, state_bucket: int = 64
) -> dict:
  """Host arrays of DeviceTables for `rows` rows: row i uses tables[i] (filler rows: tables[0]).

  One object is stored once (the G copies of a group share one automaton). The state count is
  padded to a multiple of `state_bucket` with dead states, so a run compiles a few programs, and
  the tokens to the model's `vocab_size` (padded vocabularies: the extra ids are never allowed).
  """
  distinct: list[Tables] = []
  for t in tables:
    if not any(t is d for d in distinct):
      distinct.append(t)
  v = distinct[0].next_state.shape[1]
  if v > vocab_size:
    raise ValueError(
      f"tables over {v} tokens: expected at most the model's vocab_size={vocab_size}"
    )
  for t in distinct[1:]:
    same = all(np.array_equal(getattr(t, k), getattr(distinct[0], k)) for k in _TOKEN_FIELDS)
    if t.next_state.shape[1] != v or not same:
      raise ValueError("stack_tables: every row's tables must share a tokenizer and separators")
  offsets = np.cumsum([0] + [t.states for t in distinct])
  total = -(-int(offsets[-1]) // state_bucket) * state_bucket
  next_state = np.full((total, vocab_size), -1, np.int32)
  final = np.zeros(total, bool)
  to_final = np.full(total, UNBOUNDED, np.int32)
  bounded = np.zeros(total, bool)
  for t, o in zip(distinct, offsets):
    bounded[o : o + t.states] = t.bounded
    next_state[o : o + t.states, :v] = np.where(t.next_state >= 0, t.next_state + o, -1)
    final[o : o + t.states] = t.final
    to_final[o : o + t.states] = t.to_final
  which = [next(k for k, d in enumerate(distinct) if d is t) for t in tables]
  which += [0] * (rows - len(tables))
  pad = lambda x: np.pad(x, (0, vocab_size - v))
  first = distinct[0]
  return dict(
    next_state=next_state,
    final=final,
    to_final=to_final,
    bounded=bounded,
    **{k: pad(getattr(first, k)) for k in _TOKEN_FIELDS},
    initial=np.asarray([offsets[k] + distinct[k].initial for k in which], np.int32),
    max_segment=np.asarray([distinct[k].max_segment for k in which], np.int32),
    max_lines=np.asarray([distinct[k].max_lines for k in which], np.int32),
  )


def start(g: DeviceTables) -> RowState:
  zeros = jnp.zeros_like(g.initial)
  return RowState(g.initial, zeros, zeros)


def allowed(g: DeviceTables, r: RowState, left: jax.Array, eos_ids: Sequence[int]) -> jax.Array:
  """[B, V] bool: the tokens each row may write with `left` tokens to come after this one.

  A token must be a transition of the automaton, keep every segment and the line count within
  their bounds, and leave a final state within reach; EOS is allowed in final states, and is the
  only choice of a row that has none other (it ends there).
  """
  if isinstance(g, DeviceChoices):
    return _with_eos(_choices_allowed(g, r, left), g.final[r.state], eos_ids)
  nxt = g.next_state[r.state]  # [B, V]
  m = g.max_segment[:, None]
  now, then = g.bounded[r.state][:, None], g.bounded[jnp.maximum(nxt, 0)]  # [B, 1], [B, V]
  # Without a separator the token extends the open segment; with one, it closes that segment,
  # opens another, and may hold whole ones between (checked as bounded, to be safe).
  same_segment = ~then | (r.segment[:, None] + g.token_chars[None] <= m)
  new_segment = (
    (~now | (r.segment[:, None] + g.token_head[None] <= m))
    & (~then | (g.token_tail[None] <= m))
    & (g.token_inner[None] <= m)
  )
  lines = r.newlines[:, None] + g.token_newlines[None] < g.max_lines[:, None]
  ok = (nxt >= 0) & jnp.where(g.token_seps[None] > 0, new_segment, same_segment) & lines
  ok &= g.to_final[jnp.maximum(nxt, 0)] <= left
  return _with_eos(ok, g.final[r.state], eos_ids)


def _with_eos(ok: jax.Array, final: jax.Array, eos_ids: Sequence[int]) -> jax.Array:
  eos_ids = [e for e in eos_ids if 0 <= e < ok.shape[1]]  # benchmarks pass -1: rows never end
  if not eos_ids:
    return ok
  eos = final | ~ok.any(axis=-1)
  return ok.at[:, jnp.asarray(eos_ids)].set(eos[:, None])


def _choices_allowed(g: DeviceChoices, r: RowState, left: jax.Array) -> jax.Array:
  tok, nxt = g.child_token[r.state], g.child_next[r.state]  # [B, K]
  fits = (tok >= 0) & (g.to_final[nxt] <= left)
  rows = jnp.arange(tok.shape[0])[:, None]
  hits = jnp.zeros((tok.shape[0], g.vocab_size), jnp.int32)
  return hits.at[rows, jnp.maximum(tok, 0)].add(fits.astype(jnp.int32)) > 0


def forced_tail(g: DeviceChoices, r: RowState, width: int) -> tuple[jax.Array, ...]:
  """What each row's trie leaves it no choice about: (length [B], tokens [B, width], end [B]).

  From the row's node, the tokens its one remaining path writes to a sequence's end, where only
  EOS is left (a final node without children), and that end node. length is -1 where a choice
  remains on the way or the path is longer than `width`."""
  node, length = r.state, jnp.full(r.state.shape, -1, jnp.int32)
  walking, tokens = jnp.ones(r.state.shape, bool), []
  for i in range(width + 1):
    children = jnp.sum(g.child_token[node] >= 0, axis=-1)
    length = jnp.where(walking & g.final[node] & (children == 0), i, length)
    walking &= ~g.final[node] & (children == 1)  # children are packed first: the one is at 0
    if i < width:
      tokens.append(jnp.where(walking, g.child_token[node, 0], 0))
      node = jnp.where(walking, g.child_next[node, 0], node)
  return length, jnp.stack(tokens, axis=1), node


def mask_logits(logits_bv: jax.Array, ok_bv: jax.Array) -> jax.Array:
  """float32 logits with -inf off the allowed tokens; allowed ones are kept finite (an allowed
  token at -inf could otherwise lose to a forbidden one when every allowed logit is -inf)."""
  finite = jnp.clip(logits_bv.astype(jnp.float32), -1e30, 1e30)
  return jnp.where(ok_bv, jnp.nan_to_num(finite, nan=-1e30), -jnp.inf)


def advance(g: DeviceTables, r: RowState, tokens: jax.Array, live: jax.Array) -> RowState:
  """The rows' states after writing `tokens` [B]; rows not `live` (or ending with EOS) stay."""
  if isinstance(g, DeviceChoices):
    hit = g.child_token[r.state] == tokens[:, None]  # [B, K]: at most one child per token
    nxt = jnp.where(hit.any(-1), jnp.sum(jnp.where(hit, g.child_next[r.state], 0), -1), -1)
    return r.replace(state=jnp.where(live & (nxt >= 0), nxt, r.state))
  nxt = g.next_state[r.state, tokens]
  moved = live & (nxt >= 0)
  segment = jnp.where(
    g.token_seps[tokens] > 0, g.token_tail[tokens], r.segment + g.token_chars[tokens]
  )
  return RowState(
    jnp.where(moved, nxt, r.state),
    jnp.where(moved, segment, r.segment),
    jnp.where(moved, r.newlines + g.token_newlines[tokens], r.newlines),
  )


# --- a choice among token sequences (sparse) ----------------------------------------------------
#
# Choosing one of a turn's admissible actions is a tiny grammar per row (20 actions, ~150 trie
# nodes) that changes every turn: a dense [S, V] table would be 30 MB per row and outlines would
# rebuild an index per turn. A trie keeps each node's few children instead, [S, K].


@dataclasses.dataclass(frozen=True, eq=False)
class Choices:
  """A trie of token sequences: the row writes exactly one of them, then ends."""

  child_token: np.ndarray  # [S, K] int32: the tokens leaving each node (-1: none)
  child_next: np.ndarray  # [S, K] int32: the node each leads to
  final: np.ndarray  # [S] bool: a whole sequence ends here
  to_final: np.ndarray  # [S] int32: fewest tokens from the node to a sequence's end

  @property
  def states(self) -> int:
    return self.child_token.shape[0]


def choice_tables(sequences: Sequence[Sequence[int]]) -> Choices:
  """The trie of `sequences` (token ids; node 0 the root). No sequence: only the root, final, so
  the row ends at once."""
  children: list[dict[int, int]] = [{}]
  final = [not sequences]
  for seq in sequences:
    node = 0
    for token in seq:
      if token not in children[node]:
        children[node][token] = len(children)
        children.append({})
        final.append(False)
      node = children[node][token]
    final[node] = True
  k = max(1, max(len(c) for c in children))
  child_token = np.full((len(children), k), -1, np.int32)
  child_next = np.zeros((len(children), k), np.int32)
  for s, c in enumerate(children):
    child_token[s, : len(c)] = list(c)
    child_next[s, : len(c)] = list(c.values())
  to_final = np.full(len(children), UNBOUNDED, np.int32)
  for s in reversed(range(len(children))):  # children are numbered after their parents
    below = [to_final[n] + 1 for n in children[s].values()]
    to_final[s] = 0 if final[s] else min(below, default=UNBOUNDED)
  return Choices(child_token, child_next, np.asarray(final), to_final)


@flax.struct.dataclass
class DeviceChoices:
  """The tries of one batch on the device: rows' nodes concatenated, offset like DeviceTables."""

  child_token: jax.Array  # [S, K] int32
  child_next: jax.Array  # [S, K] int32
  final: jax.Array  # [S] bool
  to_final: jax.Array  # [S] int32
  initial: jax.Array  # [B] int32
  vocab_size: int = flax.struct.field(pytree_node=False, default=0)


def stack_choices(choices: Sequence[Choices], rows: int, vocab_size: int) -> dict:
  """Host arrays of DeviceChoices for `rows` rows (filler rows: choices[0]). Nodes and children
  are padded to powers of two (at least 1024 and 16): the tries change every turn, and each new
  shape would compile the sampler's programs again. The default's calls hold 200-1000 nodes: a
  floor of 256 gave three shapes in one epoch (each a prefill and a decode program, 8-13 s apiece
  to compile on a 2-core CPU), one of 1024 gives one; the tables are only ever indexed by each
  row's node, so their size costs nothing per step."""
  distinct: list[Choices] = []
  for c in choices:
    if not any(c is d for d in distinct):
      distinct.append(c)
  offsets = np.cumsum([0] + [c.states for c in distinct])
  total = buckets.bucket(int(offsets[-1]), buckets.POW2, 1024)
  k = buckets.bucket(max(c.child_token.shape[1] for c in distinct), buckets.POW2, 16)
  child_token = np.full((total, k), -1, np.int32)
  child_next = np.zeros((total, k), np.int32)
  final = np.zeros(total, bool)
  to_final = np.full(total, UNBOUNDED, np.int32)
  for c, o in zip(distinct, offsets):
    width = c.child_token.shape[1]
    child_token[o : o + c.states, :width] = c.child_token
    child_next[o : o + c.states, :width] = c.child_next + o
    final[o : o + c.states], to_final[o : o + c.states] = c.final, c.to_final
  if int(child_token.max(initial=-1)) >= vocab_size:
    raise ValueError(f"a choice holds a token id >= the model's vocab_size={vocab_size}")
  which = [next(i for i, d in enumerate(distinct) if d is c) for c in choices]
  which += [0] * (rows - len(choices))
  initial = np.asarray([offsets[i] for i in which], np.int32)
  return dict(child_token=child_token, child_next=child_next, final=final, to_final=to_final,
              initial=initial)  # fmt: skip
