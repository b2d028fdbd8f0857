"""The sampler: exact greedy tokens, log-probs that a full forward pass reproduces, stops, buckets."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jerp_jax.model import build, config as model_config
from jerp_jax.sampling import sampler as sampler_lib
from jerp_jax.sampling.sampler import Sampler, SamplingParams, sample_logits
from tests.conftest import FIXTURES, one_device_mesh, peaked_tiny, tiny_sampler


@pytest.fixture(scope="module")
def greedy_fixture():
  with open(os.path.join(FIXTURES, "smollm2_greedy.json")) as f:
    return json.load(f)


@pytest.fixture(scope="module")
def tiny():
  lm = peaked_tiny(seed=1)
  return lm, tiny_sampler(lm)


def full_forward_logprobs(lm, completion, temperature=1.0):
  seq = completion.prompt_ids + completion.token_ids
  logits, _ = lm.model.apply(lm.variables, jnp.asarray([seq]), jnp.arange(len(seq))[None])
  logp = jax.nn.log_softmax(logits[0] / temperature, axis=-1)
  start = len(completion.prompt_ids) - 1
  return np.asarray([logp[start + j, t] for j, t in enumerate(completion.token_ids)])


def test_greedy_reproduces_transformers_token_ids(smollm2, greedy_fixture):
  lm, sampler = smollm2
  records = greedy_fixture["records"]
  for r in records:  # our torch-free tokenizer and chat template give the same prompt
    assert lm.tokenizer.encode_chat([{"role": "user", "content": r["prompt"]}]) == r["prompt_ids"]
  out = sampler.generate(
    lm.variables,
    [r["prompt_ids"] for r in records],
    SamplingParams(greedy_fixture["max_new_tokens"], temperature=0),
  )
  for completion, r in zip(out, records):
    assert completion.token_ids == r["greedy_ids"]
    assert completion.text == r["greedy_text"]
  assert [c.finish_reason for c in out] == ["eos", "length", "length"]


def test_embedded_last_logits_close_to_transformers(smollm2, greedy_fixture):
  lm, _ = smollm2
  ids = greedy_fixture["records"][0]["prompt_ids"]
  logits, _ = lm.model.apply(lm.variables, jnp.asarray([ids]), jnp.arange(len(ids))[None])
  want = np.load(os.path.join(FIXTURES, "smollm2_last_logits.npy"))
  np.testing.assert_allclose(np.asarray(logits[0, -1]), want, atol=5e-4)


def test_sampled_logprobs_equal_full_forward(smollm2):
  lm, sampler = smollm2
  prompts = [
    lm.tokenizer.encode_chat([{"role": "user", "content": t}])
    for t in ("Name a fruit.", "Count to five, please.", "Hi")
  ]
  out = sampler.generate(lm.variables, prompts, SamplingParams(12, temperature=1.0), seed=7)
  for c in out:
    assert len(c.logprobs) == len(c.token_ids) > 0
    np.testing.assert_allclose(c.logprobs, full_forward_logprobs(lm, c), atol=2e-4)


def test_logprobs_at_temperature_are_of_the_scaled_distribution(tiny):
  lm, sampler = tiny
  (c,) = sampler.generate(lm.variables, [[5, 6, 7]], SamplingParams(8, temperature=0.7), seed=3)
  np.testing.assert_allclose(c.logprobs, full_forward_logprobs(lm, c, 0.7), atol=1e-4)


def test_same_seed_same_sample_and_top_k_1_is_greedy(tiny):
  lm, sampler = tiny
  prompts = [[5, 6, 7, 8], [9, 10]]
  a = sampler.generate(lm.variables, prompts, SamplingParams(10, temperature=1.0), seed=11)
  b = sampler.generate(lm.variables, prompts, SamplingParams(10, temperature=1.0), seed=11)
  c = sampler.generate(lm.variables, prompts, SamplingParams(10, temperature=1.0), seed=12)
  assert [x.token_ids for x in a] == [x.token_ids for x in b]
  assert [x.token_ids for x in a] != [x.token_ids for x in c]
  greedy = sampler.generate(lm.variables, prompts, SamplingParams(10, temperature=0))
  top1 = sampler.generate(
    lm.variables, prompts, SamplingParams(10, temperature=1.0, top_k=1), seed=11
  )
  tiny_p = sampler.generate(
    lm.variables, prompts, SamplingParams(10, temperature=1.0, top_p=1e-6), seed=11
  )
  assert [x.token_ids for x in top1] == [x.token_ids for x in greedy]
  assert [x.token_ids for x in tiny_p] == [x.token_ids for x in greedy]


def test_greedy_and_sampled_plays_share_their_programs(tiny):
  # An evaluation (greedy) and a rollout (sampled) of the same shapes run the same compiled
  # prefill and decode: greedy is the traced temperature 0, not a static flag.
  lm, sampler = tiny
  prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13]]
  sampler.generate(lm.variables, prompts, SamplingParams(6, temperature=0.0))
  sizes = (Sampler._prefill._cache_size(), Sampler._decode._cache_size())
  sampled = sampler.generate(lm.variables, prompts, SamplingParams(6, temperature=0.9), seed=4)
  assert (Sampler._prefill._cache_size(), Sampler._decode._cache_size()) == sizes
  np.testing.assert_allclose(
    sampled[0].logprobs, full_forward_logprobs(lm, sampled[0], 0.9), atol=1e-4
  )


def test_sample_logits_top_k_and_top_p_support():
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
  keys = jax.random.split(jax.random.PRNGKey(0), 400)
  draw = lambda **kw: {int(sample_logits(logits, k, jnp.float32(1.0), **kw)[0][0]) for k in keys}
  assert draw(top_k=0, top_p=1.0) == {0, 1, 2, 3}
  assert draw(top_k=2, top_p=1.0) == {0, 1}
  assert draw(top_k=0, top_p=0.6) == {0, 1}  # 0.5 < 0.6, so the second token is needed too
  assert draw(top_k=0, top_p=0.5) == {0}
  tok, logp = sample_logits(logits, keys[0], jnp.float32(2.0), top_k=0, top_p=1.0)
  want = jax.nn.log_softmax(logits[0] / 2.0)[tok[0]]
  np.testing.assert_allclose(float(logp[0]), float(want), rtol=1e-6)
  # Temperature 0: the argmax whatever the key, its log-prob under the unscaled logits.
  for key in keys[:20]:
    tok, logp = sample_logits(logits, key, jnp.float32(0.0), top_k=0, top_p=1.0)
    assert int(tok[0]) == 0 and abs(float(logp[0]) - np.log(0.5)) < 1e-6


def test_stop_string_cuts_after_the_completing_token(smollm2, greedy_fixture):
  lm, sampler = smollm2
  r = greedy_fixture["records"][1]  # "The waves of the sea, a silent beauty,\nA gentle ..."
  (c,) = sampler.generate(
    lm.variables, [r["prompt_ids"]], SamplingParams(32, temperature=0, stop_strings=("beauty",))
  )
  assert c.finish_reason == "stop"
  assert c.text == "The waves of the sea, a silent beauty"
  assert c.token_ids == r["greedy_ids"][: len(c.token_ids)]
  assert len(c.logprobs) == len(c.token_ids)


def test_eos_is_kept_and_ends_the_row(smollm2, greedy_fixture):
  lm, sampler = smollm2
  r = greedy_fixture["records"][0]
  (c,) = sampler.generate(lm.variables, [r["prompt_ids"]], SamplingParams(32, temperature=0))
  assert c.token_ids[-1] in lm.tokenizer.eos_ids and c.finish_reason == "eos"
  assert (
    lm.tokenizer.decode(c.token_ids, skip_special_tokens=True) == "The capital of France is Paris."
  )


def test_prompt_lengths_share_a_bucket(tiny):
  lm, _ = tiny
  # A fresh sampler (compiles counts its programs), without the prefix cache's store programs.
  sampler = tiny_sampler(lm, prefix_cache=False)
  for n in (3, 9, 16, 40, 64):  # all within the 64-token bucket; batch 3 and 4 both pad to 4
    prompts = [list(range(5, 5 + n)), [5], [6, 7]] + [[8]] * (n % 2)
    sampler.generate(lm.variables, prompts, SamplingParams(6, temperature=0))
  assert sampler.compiles == 2  # one prefill and one decode program
  sampler.generate(lm.variables, [list(range(5, 70))], SamplingParams(6, temperature=0))
  assert sampler.compiles == 4  # 65 tokens: the 128 bucket, batch 1 (2 programs more)
  assert sampler.layout([list(range(65))], 6)[0] == 128
  assert tiny_sampler(lm, prompt_bucket=0).layout([list(range(65))], 6)[0] == 128
  assert tiny_sampler(lm, prompt_bucket=0).layout([list(range(129))], 6)[0] == 250  # capped
  assert tiny_sampler(lm).layout([list(range(129))], 6)[0] == 192
  assert [sampler.batch_rows(b) for b in (1, 3, 5, 8)] == [1, 4, 8, 8]


def test_stats_count_the_decode_steps_and_time_both_phases(tiny):
  lm, _ = tiny
  sampler = tiny_sampler(lm, prefix_cache=False)
  out = sampler.generate(lm.variables, [[5, 6], [7, 8, 9]], SamplingParams(6, temperature=0))
  # The prefill samples each row's first token; every later position is one decode step.
  assert sampler.stats["decode_steps"] == max(len(c.token_ids) for c in out) - 1 == 5
  assert sampler.stats["prefill_seconds"] > 0 and sampler.stats["decode_seconds"] > 0
  sampler.generate(lm.variables, [[5]], SamplingParams(1, temperature=0))
  assert sampler.stats["decode_steps"] == 5  # one token: the prefill's only


def test_sampling_params_from_config_keep_every_field():
  c = sampler_lib.get_config()
  c.max_new_tokens, c.top_k, c.stop_strings = 7, 5, ["</a>"]
  p = SamplingParams.from_config(c, temperature=0.0)
  assert p == SamplingParams(7, temperature=0.0, top_p=1.0, top_k=5, stop_strings=("</a>",))
  assert p.greedy and dataclasses.replace(p, temperature=0.5).temperature == 0.5
  c.top_k = -1
  with pytest.raises(ValueError, match=r"sampling.top_k=-1: expected an integer >= 0"):
    SamplingParams.from_config(c)
  with pytest.raises(ValueError, match=r"rules.reviser.top_p=2.0: expected a number in \(0, 1\]"):
    SamplingParams.from_config(c, where="rules.reviser", top_k=0, top_p=2.0)
  with pytest.raises(ValueError, match=r"SamplingParams.max_new_tokens=0: expected a positive"):
    SamplingParams(0)
  with pytest.raises(ValueError, match=r"unknown fields \['seed'\]"):
    SamplingParams.from_config(c, seed=1)


def test_weights_are_converted_once_per_version(tiny):
  lm, _ = tiny
  s = tiny_sampler(lm, cpu_layout=True)
  first = s.prepare(lm.variables, version=1)
  assert s.prepare(dict(lm.variables), version=1) is first and s.conversions == 1
  assert s.prepare(lm.variables, version=2) is not first and s.conversions == 2
  s.generate(lm.variables, [[5, 6]], SamplingParams(2), version=2)
  assert s.conversions == 2
  s.prepare(lm.variables)  # no version: an identity check, a new set of weights
  s.prepare(lm.variables)
  assert s.conversions == 3
  assert s._convert._cache_size() == 1  # one program for every conversion of the same shapes


def test_batch_is_padded_and_results_keep_order(tiny):
  lm, sampler = tiny
  prompts = [[5, 6], [7, 8, 9], [10]]
  together = sampler.generate(lm.variables, prompts, SamplingParams(6, temperature=0))
  alone = [
    sampler.generate(lm.variables, [p], SamplingParams(6, temperature=0))[0] for p in prompts
  ]
  assert [c.token_ids for c in together] == [c.token_ids for c in alone]
  assert [c.prompt_ids for c in together] == prompts


def test_bad_input_is_named(tiny):
  lm, sampler = tiny
  with pytest.raises(ValueError, match=r"exceeds model.max_seq_len=256"):
    sampler.generate(lm.variables, [list(range(250))], SamplingParams(16, temperature=0))
  with pytest.raises(ValueError, match="at least one token"):
    sampler.generate(lm.variables, [[]], SamplingParams(4))
  cfg = sampler_lib.get_config()
  cfg.top_p = 1.5
  with pytest.raises(ValueError, match=r"sampling.top_p=1.5: expected a number in \(0, 1\]"):
    sampler_lib.validate_config(cfg)
  assert isinstance(cfg, ml_collections.ConfigDict)


def test_cpu_and_trained_layouts_sample_alike(tiny):
  lm, _ = tiny
  prompts = [[5, 6, 7, 8], [9, 10], [11]]
  outs = []
  for cpu in (False, True):
    s = tiny_sampler(lm, cpu_layout=cpu)
    assert s.model.args.scan_layers == (not cpu) and s.model.args.fused_qkv == cpu
    outs.append(s.generate(lm.variables, prompts, SamplingParams(8, temperature=1.0), seed=4))
    if cpu:  # weights are converted once and reused while they do not change
      assert s.prepare(lm.variables) is s.prepare(dict(lm.variables))
  for a, b in zip(*outs):
    assert a.token_ids == b.token_ids
    # Fused and split q/k/v matmuls sum in different orders: float32 rounding, nothing more.
    np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-4)


def test_lora_is_merged_for_sampling_and_logprobs_match_the_adapted_model():
  cfg = model_config.get_config()
  cfg.preset, cfg.random_init = "tiny", True
  cfg.lora.rank, cfg.lora.alpha = 4, 8.0
  lm = build.build(cfg, one_device_mesh(), seed=2)
  lm.variables = dict(
    params=jax.tree.map(lambda x: x * 20 if x.ndim > 1 else x, lm.variables["params"]),
    lora=jax.tree.map(lambda x: x + 0.3, lm.variables["lora"]),
  )
  for cpu in (False, True):
    s = tiny_sampler(lm, cpu_layout=cpu)
    assert list(s.prepare(lm.variables)) == ["params"]
    out = s.generate(lm.variables, [[5, 6, 7], [8]], SamplingParams(8, temperature=1.0), seed=9)
    for c in out:  # the full forward pass runs the unmerged adapters
      np.testing.assert_allclose(c.logprobs, full_forward_logprobs(lm, c), atol=2e-4)
  base = s.generate(
    {"params": lm.variables["params"]}, [[5, 6, 7]], SamplingParams(8, temperature=0)
  )
  adapted = s.generate(lm.variables, [[5, 6, 7]], SamplingParams(8, temperature=0))
  assert base[0].token_ids != adapted[0].token_ids  # adapters off is another model


# --- shared prompt heads -------------------------------------------------------------------------


def shared_head_prompts() -> list[list[int]]:
  """Two tasks x three rows: a 37-token system text, a task (20 or 45 tokens), a row's own end."""
  rs = np.random.RandomState(0)
  system = rs.randint(100, 1000, 37).tolist()
  tasks = [rs.randint(100, 1000, n).tolist() for n in (20, 45)]
  return [system + t + rs.randint(100, 1000, k).tolist() for t in tasks for k in (3, 9, 20)]


def peaked(mesh):
  """The tiny model with weights x4: peaked enough that no greedy choice is a near tie, while
  float rounding stays far below 1e-5 (x20 amplifies a reordered sum to ~1e-4)."""
  cfg = model_config.get_config()
  cfg.preset, cfg.random_init = "tiny", True
  lm = build.build(cfg, mesh, seed=1)
  lm.variables = jax.tree.map(lambda x: x * 4 if x.ndim > 1 else x, lm.variables)
  return lm


def prefix_samplers(lm):
  """(with the prefix cache, without): 16-token blocks and buckets, so short prompts share."""
  kw = dict(max_seq_len=256, prompt_bucket=16, min_prompt_bucket=16, prefix_block=16)
  tok = lm.tokenizer
  make = lambda on: Sampler(lm.model, lm.mesh, tok.eos_ids, tok.pad_id, tok, prefix_cache=on, **kw)
  return make(True), make(False)


def assert_same_completions(got, want):
  for a, b in zip(got, want, strict=True):
    assert a.token_ids == b.token_ids
    np.testing.assert_allclose(a.logprobs, b.logprobs, rtol=0, atol=1e-5)


def check_shared_heads(lm):
  cached, plain = prefix_samplers(lm)
  prompts = shared_head_prompts()
  assert [len(p) for p in prompts] == [60, 66, 77, 85, 91, 102]  # 481 tokens
  for params, seed in ((SamplingParams(8, temperature=0.0), 0), (SamplingParams(8), 3)):
    got = cached.generate(lm.variables, prompts, params, seed=seed)
    assert_same_completions(got, plain.generate(lm.variables, prompts, params, seed=seed))
    if seed == 0:
      # The heads the rows share are prefilled once: 3 blocks for the first task's rows, 5 for
      # the second's (the system text's 2 blocks in each), then each row's rest: 12 + 18 + 29
      # and 5 + 11 + 22 tokens. 225 of 481 tokens.
      assert cached.stats["prefilled_tokens"] == 48 + 80 + 59 + 38
      # Kept: the first task's 3 blocks, the second's 3 beyond the system text, and one more
      # whole block each for the rows of 66, 77 and 102 tokens.
      assert cached.stats["kept_blocks"] == 9 and cached.stats["shared_heads"] == 2
  # The second call found every whole block but each row's last one: 49 tokens prefilled.
  assert cached.stats["prefilled_tokens"] == 225 + 49
  # The next turn: each prompt goes on with its answer and a new observation.
  rs = np.random.RandomState(1)
  turn2 = [p + c.token_ids + rs.randint(100, 1000, 5).tolist() for p, c in zip(prompts, got)]
  params = SamplingParams(8)
  got = cached.generate(lm.variables, turn2, params, seed=4)
  assert_same_completions(got, plain.generate(lm.variables, turn2, params, seed=4))
  # Each row starts from the first turn's whole prompt blocks (answers are not kept).
  rest = [len(q) - 16 * (len(p) // 16) for p, q in zip(prompts, turn2)]
  assert cached.stats["prefilled_tokens"] - 274 == sum(rest) == 127
  # New weights: nothing cached is valid any more.
  before = cached.stats["prefilled_tokens"]
  cached.generate(lm.variables, turn2[:1], params, version=7)
  assert cached.stats["prefilled_tokens"] - before == len(turn2[0])


def test_shared_heads_are_prefilled_once_with_the_same_tokens_and_logprobs():
  check_shared_heads(peaked(one_device_mesh()))


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (virtual) devices")
def test_shared_heads_on_a_2x2x2_mesh():
  from jerp_jax.parallel import mesh as mesh_lib

  check_shared_heads(peaked(mesh_lib.make_mesh((2, 2, 2))))


def test_prefix_cache_settings_are_checked():
  cfg = sampler_lib.get_config()
  assert (cfg.prefix_cache, cfg.prefix_block, cfg.prompt_bucket) == (True, 64, 64)
  cfg.prefix_cache_tokens = 10
  with pytest.raises(ValueError, match=r"sampling.prefix_cache_tokens=10: expected an integer >= "):
    sampler_lib.validate_config(cfg)
  cfg.prefix_cache_tokens, cfg.prompt_bucket = 8192, -64
  with pytest.raises(ValueError, match=r"sampling.prompt_bucket=-64: expected an integer >= 0"):
    sampler_lib.validate_config(cfg)
