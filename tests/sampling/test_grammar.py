"""The edit grammar: its regex, its token tables (exact ids), the device step under any logits,
and the sampler decoding under it."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jerp_jax.model import presets, tokenizer as tokenizer_lib
from jerp_jax.rules.reviser import parse_edits
from jerp_jax.sampling import grammar as grammar_lib
from jerp_jax.sampling.grammar import EditGrammar, edit_regex, edit_tables, token_tables
from jerp_jax.sampling.sampler import Sampler, SamplingParams
from tests.conftest import peaked_tiny, tiny_sampler

PICK = "pick_and_place_simple"


@pytest.fixture(scope="module")
def tok():
  return tokenizer_lib.load_tokenizer(presets.embedded_path("smollm2-135m-instruct"))


def text_of(tok, ids):
  return tok.decode([i for i in ids if i not in tok.eos_ids])


def check_answer(g: EditGrammar, text: str, budget: int, tables):
  """The answer is in the grammar's exact language and parses with no malformed line; or empty
  when the budget cannot hold the shortest edit (EOS is then the only way out)."""
  if budget < tables.to_final[tables.initial]:
    assert text == ""
    return
  assert re.fullmatch(edit_regex(g), text), text
  parsed = parse_edits(text, set(g.shown_ids), g.scopes, g.max_rule_chars, g.max_edits)
  assert parsed.malformed == 0, text
  assert len(parsed.edits) + len(parsed.rejected) == len(text.splitlines())


# --- the regex ----------------------------------------------------------------------------------


def test_edit_regex_allows_the_forms_on_shown_ids_and_scopes_only():
  g = EditGrammar(PICK, (12, 3), max_rule_chars=20, max_edits=2)
  ok = [
    "ADD global: Open the fridge.",
    f"ADD {PICK}: I check it",
    "EDIT R12: Go to 3 places; go\nUPVOTE R3",
    "MERGE R3,R12,R3: Do both",  # well-formed; the parser refuses the repeated id
    "REMOVE R3\nDOWNVOTE R12",
    "ADD global: " + "Ab" * 10,  # 20 characters
  ]
  bad = [
    "",  # at least one edit
    "ADD global: 1. **/**",  # no word first
    "ADD global: A",
    "ADD other_type: Open it.",  # not a scope of this prompt
    "UPVOTE R4",  # not shown
    "ADD global: Say <|im_start|> now",  # marker characters are not rule text
    "ADD global: Tip: look",  # nor is ':', which ends a header
    "UPVOTE R3\n",  # no empty line
    "UPVOTE R3\nUPVOTE R12\nREMOVE R3",  # over max_edits
    "ADD global: " + "Ab" * 10 + "c",  # over max_rule_chars
    "upvote R3",
    "ADD global: Café",  # ASCII only
  ]
  assert [bool(re.fullmatch(edit_regex(g), t)) for t in ok] == [True] * len(ok)
  assert [bool(re.fullmatch(edit_regex(g), t)) for t in bad] == [False] * len(bad)
  no_ids = edit_regex(EditGrammar(PICK, (), 20, 2))
  assert "EDIT" not in no_ids and "UPVOTE" not in no_ids and "MERGE" not in no_ids


def test_openers_and_words_only_shape_every_rule_text():
  g = EditGrammar(PICK, (3,), 24, 2, openers=("Never", "Do not"), words_only=True)
  ok = [
    "ADD global: Never go back, don't.",
    "EDIT R3: Do not take it twice\nUPVOTE R3",
    "MERGE R3,R3: Do not " + "x" * 17,
  ]
  bad = [
    "ADD global: Open the fridge.",  # no opener
    "ADD global: Never ",  # an opener and no word
    "ADD global: Never 2 times",  # a word must follow it
    "ADD global: Never take apple 2",  # a digit
    "ADD global: Never use are_your_own",  # '_'
    "ADD global: Neverland is far",  # the opener is a whole word
    "MERGE R3,R3: Do not " + "x" * 18,  # 25 characters
  ]
  assert [bool(re.fullmatch(edit_regex(g), t)) for t in ok] == [True] * len(ok)
  assert [bool(re.fullmatch(edit_regex(g), t)) for t in bad] == [False] * len(bad)
  with pytest.raises(ValueError, match=r"EditGrammar.openers: 'Before it': expected words"):
    EditGrammar(PICK, (), 10, 2, openers=("Before it",))  # no room for a word in 10
  with pytest.raises(ValueError, match=r"EditGrammar.openers: '1st': expected words"):
    EditGrammar(PICK, (), 20, 2, openers=("1st",))


def test_edit_grammar_fails_early():
  with pytest.raises(ValueError, match=r"EditGrammar.task_type='a b': expected"):
    EditGrammar("a b", (), 20, 2)
  with pytest.raises(ValueError, match=r"EditGrammar.max_edits=0: expected a positive integer"):
    EditGrammar(PICK, (), 20, 0)
  assert EditGrammar(PICK, [3, 1, 3], 20, 2).shown_ids == (1, 3)


# --- token tables (exact) -----------------------------------------------------------------------


def test_token_bytes_join_to_what_the_tokenizer_decodes(tok):
  pieces = grammar_lib.token_bytes(tok)
  assert [i for i, b in enumerate(pieces) if b is None] == list(range(17))  # the added tokens
  assert (pieces[198], pieces[216], pieces[2000]) == (b"\n", b" ", b" temper")
  checked = 0
  for i, b in enumerate(pieces):
    if b is None:
      continue
    try:
      text = b.decode("utf-8")
    except UnicodeDecodeError:  # part of a character: only whole sequences decode
      continue
    assert tok.decode([i]) == text, i
    checked += 1
  assert checked > 48000


def test_table_first_state_allows_exactly_the_expected_tokens(tok):
  t = token_tables("(UP|DOWN)VOTE R[12]", tok)
  first = np.flatnonzero(t.next_state[0] >= 0)
  assert first.tolist() == [52, 69, 11957, 14894, 40626]
  assert tok.hf.convert_ids_to_tokens(first.tolist()) == ["D", "U", "UP", "DO", "DOWN"]
  assert t.next_state[0, first].tolist() == [10, 1, 2, 11, 2]  # 'UP' and 'DOWN' meet at 'VOTE'
  assert t.states == 13 and np.flatnonzero(t.final).tolist() == [9]
  assert t.to_final.tolist() == [5, 5, 4, 4, 3, 3, 2, 2, 1, 0, 5, 6, 5]
  assert np.flatnonzero(t.next_state[8] >= 0).tolist() == [33, 34]  # '1', '2'
  assert (t.next_state[:, tok.eos_ids] == -1).all()  # EOS is read from `final`


def test_minimize_merges_equivalent_states():
  # States 1 and 2 are the same loop reached two ways; 3 is dead.
  next_state = np.asarray([[1, 2, -1], [1, -1, 3], [2, -1, 3], [-1, -1, -1]], np.int32)
  final = np.asarray([False, True, True, False])
  small, small_final, initial = grammar_lib.minimize(next_state, final, 0)
  assert small.tolist() == [[1, 1, -1], [1, -1, 2], [-1, -1, -1]]
  assert (small_final.tolist(), initial) == ([False, True, False], 0)
  dist = grammar_lib.fewest_tokens_to_final(small, small_final)
  assert dist.tolist() == [1, 0, grammar_lib.UNBOUNDED]


def test_edit_tables_size_and_cap(tok):
  t = edit_tables(EditGrammar(PICK, (1, 2, 3, 12, 40), 300, 6), tok)
  assert t.states == 77 and t.next_state.shape == (77, 49152)
  assert (t.max_segment, t.max_lines) == (301, 6)
  # Bounded: what follows ':' (token 42), up to the rule text's loop (state 1, final); merged,
  # ADD, EDIT and MERGE share these states.
  colon = t.next_state[:, 42]
  assert np.unique(colon[colon >= 0]).tolist() == [34]
  assert np.flatnonzero(t.bounded).tolist() == [1, 34, 35, 36, 37, 38]
  with pytest.raises(ValueError, match=r"grammar of \d+ states x 49152 tokens = \d+ MiB: expected"):
    token_tables("[a-z]{0,40}", tok, max_table_bytes=1 << 20)


# --- the device step under any logits -----------------------------------------------------------

GRAMMARS = (
  EditGrammar(PICK, (1, 2, 12), max_rule_chars=24, max_edits=3),
  # Texts open with 'If ' or 'Never ' and a letter, and hold only letters, spaces and , . ' -
  EditGrammar("look_at_obj_in_light", (), 8, 2, openers=("If", "Never"), words_only=True),
)


@pytest.fixture(scope="module")
def device_run(tok):
  """A jitted decode of given logits [T, B, V] under the two grammars (rows alternate)."""
  tables = [edit_tables(g, tok) for g in GRAMMARS]
  rows = 4
  host = grammar_lib.stack_tables([tables[i % 2] for i in range(rows)], rows, 49152)
  g = grammar_lib.DeviceTables(**{k: jnp.asarray(x) for k, x in host.items()})
  eos = tok.eos_ids

  @jax.jit
  def run(logits_tbv, rng, greedy_or_temperature):
    steps = logits_tbv.shape[0]

    def step(carry, x):
      r, done, key = carry
      logits_bv, t = x
      key, sub = jax.random.split(key)
      masked = grammar_lib.mask_logits(logits_bv, grammar_lib.allowed(g, r, steps - 1 - t, eos))
      drawn = jax.random.categorical(sub, masked / jnp.maximum(greedy_or_temperature, 1e-3))
      token = jnp.where(greedy_or_temperature > 0, drawn, jnp.argmax(masked, -1))
      token = jnp.where(done, -1, token)
      r = grammar_lib.advance(g, r, jnp.maximum(token, 0), ~done)
      return (r, done | jnp.isin(token, jnp.asarray(eos)), key), token

    init = (grammar_lib.start(g), jnp.zeros(rows, bool), rng)
    return jax.lax.scan(step, init, (logits_tbv, jnp.arange(steps)))[1]

  return run, tables


# Logits a model could never give, and ones that push hard toward what the grammar forbids.
_logits_kind = st.sampled_from(["normal", "huge", "inf", "eos", "newline", "special", "spaces"])


@settings(max_examples=25, deadline=None)
@given(
  kind=_logits_kind,
  seed=st.integers(0, 2**31 - 1),
  scale=st.sampled_from([0.0, 1.0, 30.0, 1e30]),
  steps=st.sampled_from([1, 3, 8, 40]),
  temperature=st.sampled_from([0.0, 0.7, 1.0, 5.0]),
)
def test_any_logits_decode_to_well_formed_edits(
  device_run, tok, kind, seed, scale, steps, temperature
):
  rng = np.random.default_rng(seed)
  logits = (rng.standard_normal((steps, 4, 49152)) * scale).astype(np.float32)
  favoured = {
    "eos": list(tok.eos_ids),
    "newline": [198, 216],  # '\n', ' '
    "special": list(range(17)),
    "spaces": [i for i, b in enumerate(grammar_lib.token_bytes(tok)) if b and b.isspace()],
  }
  if kind == "huge":
    logits = np.where(rng.random(logits.shape) < 0.5, 3e38, -3e38).astype(np.float32)
  elif kind == "inf":
    logits[rng.random(logits.shape) < 0.9] = -np.inf
    logits[..., tok.eos_ids] = np.inf
  elif kind in favoured:
    logits[..., favoured[kind]] += 1e6
  run, tables = device_run
  tokens = np.asarray(run(jnp.asarray(logits), jax.random.PRNGKey(seed), temperature))
  for b in range(4):
    row = [int(t) for t in tokens[:, b] if t >= 0]
    check_answer(GRAMMARS[b % 2], text_of(tok, row), steps, tables[b % 2])


# --- the sampler under a grammar ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
  lm = peaked_tiny(seed=1)
  return lm, tiny_sampler(lm), [edit_tables(g, lm.tokenizer) for g in GRAMMARS]


@settings(max_examples=8, deadline=None)
@given(
  seed=st.integers(0, 1000),
  params=st.sampled_from(
    [
      SamplingParams(6, temperature=1.0),
      SamplingParams(24, temperature=0.0),
      SamplingParams(24, temperature=1.5, top_k=40),
      SamplingParams(24, temperature=1.0, top_p=0.9),
    ]
  ),
)
def test_sampler_under_the_grammar_writes_well_formed_edits(tiny, seed, params):
  lm, sampler, tables = tiny
  prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [14]]
  which = [0, 1, 1, 0]
  out = sampler.generate(
    lm.variables, prompts, params, seed=seed, grammar=[tables[i] for i in which]
  )
  for c, i in zip(out, which):
    assert len(c.token_ids) <= params.max_new_tokens and len(c.logprobs) == len(c.token_ids)
    check_answer(GRAMMARS[i], text_of(lm.tokenizer, c.token_ids), params.max_new_tokens, tables[i])
    assert np.isfinite(c.logprobs).all()


def test_unconstrained_decoding_is_unchanged_beside_a_grammar(tiny):
  lm, sampler, tables = tiny
  prompts = [[5, 6, 7], [8, 9]]
  params = SamplingParams(12, temperature=1.0)
  before = sampler.generate(lm.variables, prompts, params, seed=3)
  constrained = sampler.generate(lm.variables, prompts, params, seed=3, grammar=tables)
  after = sampler.generate(lm.variables, prompts, params, seed=3)
  assert [c.token_ids for c in before] == [c.token_ids for c in after]
  assert [c.token_ids for c in constrained] != [c.token_ids for c in before]
  with pytest.raises(ValueError, match=r"1 grammars for 2 prompts: expected one each"):
    sampler.generate(lm.variables, prompts, params, grammar=tables[:1])


def test_grammar_with_stop_strings_and_a_shared_prefix(tiny):
  lm, sampler, tables = tiny
  head = list(range(100, 180))  # two rows share more than a prefix block
  prompts = [head + [5], head + [6]]
  params = SamplingParams(20, temperature=1.0, stop_strings=("\n",))
  out = sampler.generate(lm.variables, prompts, params, seed=1, grammar=[tables[0]] * 2)
  for c in out:  # a row cut at its first newline holds one edit, and the newline
    text = text_of(lm.tokenizer, c.token_ids)
    check_answer(GRAMMARS[0], text.split("\n")[0], 20, tables[0])
  assert sampler.stats["shared_heads"] >= 1


# --- a choice among token sequences ---------------------------------------------------------------


def test_choice_tables_are_the_trie_of_the_sequences():
  c = grammar_lib.choice_tables([[5, 6, 7], [5, 8], [9]])
  # Nodes in insertion order: root, 5, 5-6, 5-6-7, 5-8, 9.
  np.testing.assert_array_equal(c.child_token, [[5, 9], [6, 8], [7, -1], [-1, -1], [-1, -1],
                                                [-1, -1]])  # fmt: skip
  np.testing.assert_array_equal(c.child_next[:3], [[1, 5], [2, 4], [3, 0]])
  np.testing.assert_array_equal(c.final, [False, False, False, True, True, True])
  np.testing.assert_array_equal(c.to_final, [1, 1, 1, 0, 0, 0])
  empty = grammar_lib.choice_tables([])
  assert empty.final.tolist() == [True] and empty.child_token.tolist() == [[-1]]


CHOICES = [[[40, 41, 42, 43], [40, 44], [45]], [[46, 47, 48], [49, 50]]]


@settings(max_examples=8, deadline=None)
@given(
  seed=st.integers(0, 1000),
  params=st.sampled_from(
    [
      SamplingParams(6, temperature=1.0),
      SamplingParams(6, temperature=0.0),
      SamplingParams(2, temperature=1.5, top_k=40),
      SamplingParams(6, temperature=1.0, top_p=0.9),
    ]
  ),
)
def test_sampler_under_choices_writes_one_of_them_with_the_models_logprobs(tiny, seed, params):
  lm, sampler, _ = tiny
  prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [14]]
  tries = [grammar_lib.choice_tables(c) for c in CHOICES]
  which = [0, 1, 1, 0]
  out = sampler.generate(
    lm.variables, prompts, params, seed=seed, grammar=[tries[i] for i in which]
  )
  for c, i in zip(out, which):
    ids = [t for t in c.token_ids if t not in lm.tokenizer.eos_ids]
    fitting = [s for s in CHOICES[i] if len(s) <= params.max_new_tokens]
    assert ids in fitting, (ids, fitting)
    # The model's own log-probs (before the mask), as the learner computes them.
    seq = c.prompt_ids + c.token_ids
    logits, _ = lm.model.apply(lm.variables, jnp.asarray([seq]), jnp.arange(len(seq))[None])
    scale = params.temperature or 1.0
    logp = jax.nn.log_softmax(logits[0].astype(jnp.float32) / scale, axis=-1)
    start = len(c.prompt_ids) - 1
    want = [logp[start + j, t] for j, t in enumerate(c.token_ids)]
    np.testing.assert_allclose(c.logprobs, want, atol=1e-4)


def test_forced_tail_is_the_one_path_left_to_a_sequences_end():
  c = grammar_lib.choice_tables([[5, 6, 7, 8], [5, 9], [3]])
  g = grammar_lib.DeviceChoices(**grammar_lib.stack_choices([c], 1, 16), vocab_size=16)
  states = [c.child_next[0, list(c.child_token[0]).index(3)], 0, 1, 2]
  r = grammar_lib.RowState(*(jnp.asarray(x, jnp.int32) for x in (states, [0] * 4, [0] * 4)))
  length, tokens, end = grammar_lib.forced_tail(g, r, 3)
  # After [3]: the end (only EOS left). At the root and after [5]: a choice. After [5, 6]: 7, 8.
  assert length.tolist() == [0, -1, -1, 2] and tokens[3, :2].tolist() == [7, 8]
  assert bool(g.final[end[3]]) and grammar_lib.forced_tail(g, r, 1)[0].tolist()[3] == -1


@pytest.mark.parametrize("temperature, eos_ids", [(0.0, (2,)), (1.0, (2,)), (1.0, (2, 0))])
def test_forced_tails_end_in_one_call_with_a_step_by_step_decodes_tokens(
  tiny, temperature, eos_ids
):
  # Each row picks 40 or 46 and the rest is forced: four or five tokens, then EOS, scored in one
  # call. The same draws as decoding them one step at a time (sampling.forced_tails=False), also
  # where two EOS ids leave a draw at the end (each row's with the key its step would use).
  lm, _, _ = tiny
  tok = lm.tokenizer
  choices = [[40, 41, 42, 43, 44, 45], [46, 47, 48, 49, 50]]
  tries = [grammar_lib.choice_tables(choices)] * 3
  prompts, params = [[5, 6, 7], [8, 9], [10, 11, 12, 13]], SamplingParams(16, temperature)
  runs = []
  for forced_tails in (True, False):
    sampler = Sampler(
      lm.model, lm.mesh, eos_ids, tok.pad_id, tok, 256, min_prompt_bucket=16,
      forced_tails=forced_tails,
    )  # fmt: skip
    out = sampler.generate(lm.variables, prompts, params, seed=3, grammar=tries)
    runs.append((out, sampler.stats["decode_steps"]))
  (fast, fast_calls), (slow, slow_calls) = runs
  assert [c.token_ids for c in fast] == [c.token_ids for c in slow]
  assert all(c.token_ids[:-1] in choices and c.token_ids[-1] in eos_ids for c in fast)
  for a, b in zip(fast, slow):
    np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)
  longest = max(len(c.token_ids) for c in slow)
  assert slow_calls == longest - 1 and fast_calls == 1  # the first token came with the prefill
