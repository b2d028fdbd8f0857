"""Our decoder against transformers' PyTorch implementation (fixtures), and LoRA semantics."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jerp_jax.model import build, config as model_config, llama, presets
from tests.conftest import FIXTURES, one_device_mesh

HF = os.path.join(FIXTURES, "hf")
NAMES = ("tiny_llama3", "tiny_qwen2", "tiny_smollm2", "tiny_qwen3", "tiny_gemma3")


@pytest.fixture(scope="module")
def reference():
  return np.load(os.path.join(HF, "reference_logits.npz"))


def load(name, **overrides):
  cfg = model_config.get_config()
  cfg.path = os.path.join(HF, name)
  for k, v in overrides.items():
    cfg[k] = v
  return build.build(cfg, one_device_mesh())


@pytest.mark.parametrize("name", NAMES)
def test_logits_match_transformers(name, reference):
  lm = load(name)
  ids = reference[f"{name}_input_ids"]
  positions = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
  logits, _ = lm.model.apply(lm.variables, jnp.asarray(ids), jnp.asarray(positions))
  np.testing.assert_allclose(np.asarray(logits), reference[f"{name}_logits"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_left_padded_logits_match_transformers(name, reference):
  lm = load(name)
  ids, mask = reference[f"{name}_input_ids"], reference[f"{name}_attention_mask"]
  positions = llama.positions_from_mask(jnp.asarray(mask))
  np.testing.assert_array_equal(np.asarray(positions), reference[f"{name}_position_ids"])
  logits, _ = lm.model.apply(lm.variables, jnp.asarray(ids), positions, jnp.asarray(mask))
  got = np.asarray(logits)[mask.astype(bool)]
  want = reference[f"{name}_logits_padded"][mask.astype(bool)]
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_architecture_read_from_config_json():
  args, _ = build.model_args(_cfg(path=os.path.join(HF, "tiny_llama3")))
  assert (args.family, args.num_heads, args.num_kv_heads, args.head_dim) == ("llama", 4, 2, 16)
  assert args.rope_scaling == model_config.RopeScaling(8.0, 1.0, 4.0, 64)
  assert not args.tie_embeddings and not args.qkv_bias
  qwen, _ = build.model_args(_cfg(path=os.path.join(HF, "tiny_qwen2")))
  assert qwen.family == "qwen2" and qwen.qkv_bias and qwen.rope_theta == 1e6
  smol, _ = build.model_args(_cfg(path=os.path.join(HF, "tiny_smollm2")))
  assert smol.tie_embeddings and (smol.num_heads, smol.num_kv_heads) == (6, 2)


@pytest.mark.parametrize("name", ["tiny_qwen3", "tiny_gemma3"])
def test_kv_cache_one_token_at_a_time_matches_transformers(name, reference):
  """Prefill 2 tokens, then feed the other 14 one by one: for Gemma 3 well past its window of 5,
  so the sliding layers must drop the oldest keys at every step as transformers does."""
  lm = load(name)
  ids = jnp.asarray(reference[f"{name}_input_ids"])
  want = reference[f"{name}_logits"]
  b, t = ids.shape
  pos = jnp.broadcast_to(jnp.arange(t), (b, t))
  cache = llama.KVCache.zeros(lm.args, b, t)
  valid = jnp.ones((b, t), bool)
  step = jax.jit(lm.model.apply)
  logits, cache = step(lm.variables, ids[:, :2], pos[:, :2], valid, cache, 0)
  np.testing.assert_allclose(np.asarray(logits), want[:, :2], atol=1e-4, rtol=0)
  for i in range(2, t):
    logits, cache = step(lm.variables, ids[:, i : i + 1], pos[:, i : i + 1], valid, cache, i)
    np.testing.assert_allclose(np.asarray(logits[:, 0]), want[:, i], atol=1e-4, rtol=0)


def test_new_families_read_from_config_json():
  qwen3, _ = build.model_args(_cfg(path=os.path.join(HF, "tiny_qwen3")))
  assert qwen3.family == "qwen3" and qwen3.qk_norm and not qwen3.qkv_bias
  assert (qwen3.hidden_size // qwen3.num_heads, qwen3.head_dim) == (16, 32)
  assert qwen3.tie_embeddings and not qwen3.norm_plus_one and qwen3.layer_types == ()
  gemma, _ = build.model_args(_cfg(path=os.path.join(HF, "tiny_gemma3")))
  assert gemma.family == "gemma3" and gemma.qk_norm and gemma.norm_plus_one
  assert gemma.sandwich_norms and gemma.scale_embeddings and gemma.mlp_activation == "gelu_tanh"
  assert gemma.layer_types == ("sliding_attention", "full_attention", "sliding_attention")
  assert (gemma.sliding_window, gemma.rope_local_theta, gemma.rope_theta) == (5, 1e4, 1e6)
  assert gemma.rope_scaling == model_config.RopeScaling(4.0, rope_type="linear")
  assert gemma.attention_scale == 24**-0.5


def test_gemma3_legacy_config_keys():
  """Hub configs written before transformers 5: rope_theta / rope_local_base_freq /
  rope_scaling and sliding_window_pattern instead of rope_parameters and layer_types."""
  legacy = {
    "model_type": "gemma3_text", "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 7, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
    "query_pre_attn_scalar": 32, "sliding_window": 16, "sliding_window_pattern": 6,
    "rope_theta": 1e6, "rope_local_base_freq": 1e4,
    "rope_scaling": {"rope_type": "linear", "factor": 8.0},
  }  # fmt: skip
  args = model_config.from_hf_config(legacy)
  assert args.layer_types == model_config.gemma3_layer_types(7)
  assert args.layer_types[5] == "full_attention" and args.layer_types.count("full_attention") == 1
  assert (args.rope_theta, args.rope_local_theta) == (1e6, 1e4)
  assert args.rope_scaling == model_config.RopeScaling(8.0, rope_type="linear")
  multimodal = {"model_type": "gemma3", "text_config": dict(legacy, model_type="gemma3_text")}
  assert model_config.from_hf_config(multimodal) == args


def test_llama3_rope_scaling_bands():
  args = presets.preset_args("tiny").replace(
    rope_theta=500000.0, rope_scaling=model_config.RopeScaling(8.0, 1.0, 4.0, 64)
  )
  base = llama.rope_inv_freq(args.replace(rope_scaling=None))
  scaled = llama.rope_inv_freq(args)
  wavelen = 2 * np.pi / base
  high = wavelen < 64 / 4  # short wavelengths: unchanged
  low = wavelen > 64 / 1  # long wavelengths: divided by the factor
  np.testing.assert_allclose(scaled[high], base[high], rtol=1e-6)
  np.testing.assert_allclose(scaled[low], base[low] / 8, rtol=1e-6)
  mid = ~high & ~low
  assert mid.any()
  smooth = (64 / wavelen[mid] - 1) / (4 - 1)
  np.testing.assert_allclose(
    scaled[mid], (1 - smooth) * base[mid] / 8 + smooth * base[mid], rtol=1e-6
  )


def _cfg(**kw):
  cfg = model_config.get_config()
  for k, v in kw.items():
    cfg[k] = v
  return cfg


def _tiny_lora(rank=4, alpha=8.0):
  cfg = _cfg(preset="tiny", random_init=True)
  cfg.lora.rank, cfg.lora.alpha = rank, alpha
  return build.build(cfg, one_device_mesh())


def test_lora_starts_equal_to_base_and_adapters_off_is_the_base_model():
  lm = _tiny_lora()
  tokens = jnp.asarray([[3, 14, 15, 92, 65]])
  pos = jnp.arange(5)[None]
  with_lora, _ = lm.model.apply(lm.variables, tokens, pos)
  base, _ = lm.model.apply({"params": lm.variables["params"]}, tokens, pos)
  np.testing.assert_array_equal(np.asarray(with_lora), np.asarray(base))  # B starts at zero
  trained = dict(lm.variables, lora=jax.tree.map(lambda x: x + 0.05, lm.variables["lora"]))
  moved, _ = lm.model.apply(trained, tokens, pos)
  assert np.abs(np.asarray(moved) - np.asarray(base)).max() > 1e-3
  base_again, _ = lm.model.apply({"params": trained["params"]}, tokens, pos)
  np.testing.assert_array_equal(np.asarray(base_again), np.asarray(base))


def test_lora_delta_is_scaled_low_rank_product():
  lm = _tiny_lora(rank=4, alpha=8.0)
  trained = dict(
    lm.variables,
    lora=jax.tree.map(
      lambda x: x + 0.05 * jax.random.normal(jax.random.PRNGKey(1), x.shape), lm.variables["lora"]
    ),
  )
  tokens = jnp.asarray([[3, 14, 15, 92, 65]])
  pos = jnp.arange(5)[None]
  adapted, _ = lm.model.apply(trained, tokens, pos)
  merged = llama.merge_lora(trained, lm.args.lora_scale)  # W + A·B·(8/4)
  assert list(merged) == ["params"]
  folded, _ = lm.model.apply(merged, tokens, pos)
  np.testing.assert_allclose(np.asarray(adapted), np.asarray(folded), atol=1e-5)


@pytest.mark.parametrize("preset", ["tiny-qwen3", "tiny-gemma3"])
def test_lora_covers_every_projection_of_the_new_families(preset):
  cfg = _cfg(preset=preset, random_init=True)
  cfg.lora.rank, cfg.lora.alpha = 2, 4.0
  lm = build.build(cfg, one_device_mesh())
  assert sorted(lm.variables["lora"]["layers"]) == sorted(model_config.LORA_TARGETS)
  layer = lm.variables["params"]["layers"]
  assert layer["q_norm"]["scale"].shape == (lm.args.num_layers, lm.args.head_dim)
  norms = {"attn_out_norm", "mlp_out_norm"}
  assert norms <= set(layer) if preset == "tiny-gemma3" else not norms & set(layer)


def test_lora_only_on_targets():
  cfg = _cfg(preset="tiny", random_init=True)
  cfg.lora.rank, cfg.lora.alpha, cfg.lora.targets = 2, 2.0, "q_proj,v_proj"
  lm = build.build(cfg, one_device_mesh())
  assert sorted(lm.variables["lora"]["layers"]) == ["q_proj", "v_proj"]
  assert lm.variables["lora"]["layers"]["q_proj"]["a"].shape == (2, 64, 2)
  assert lm.variables["lora"]["layers"]["q_proj"]["b"].shape == (2, 2, 4, 16)


def test_compute_dtype_bfloat16_runs_close_to_float32():
  lm32 = load("tiny_llama3")
  lm16 = load("tiny_llama3", dtype="bfloat16", param_dtype="bfloat16")
  assert jax.tree.leaves(lm16.variables)[0].dtype == jnp.bfloat16
  tokens = jnp.asarray([[1, 2, 3, 4, 5, 6]])
  pos = jnp.arange(6)[None]
  a, _ = lm32.model.apply(lm32.variables, tokens, pos)
  b, _ = lm16.model.apply(lm16.variables, tokens, pos)
  assert b.dtype == jnp.float32  # logits always float32
  assert np.abs(np.asarray(a) - np.asarray(b)).max() < 0.1 * np.abs(np.asarray(a)).max()


def _dot_operand_dtypes(fn, *args):
  """The operand dtypes of every dot in `fn`'s jaxpr (nested jaxprs included)."""
  out = []

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "dot_general":
        out.append(tuple(str(v.aval.dtype) for v in eqn.invars))
      for sub in jax.core.jaxprs_in_params(eqn.params):
        walk(sub)

  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return out


def test_bfloat16_projection_backward_stays_in_bfloat16_with_the_same_gradients():
  # Plain autodiff hands the transposed dots a float32 cotangent against bfloat16 operands, which
  # XLA:CPU runs as float32 dots; `_contract_low` casts the (bf16-exact) cotangent back.
  k = jax.random.split(jax.random.PRNGKey(0), 2)
  x = jax.random.normal(k[0], (4, 32, 64)).astype(jnp.bfloat16)
  w = (0.1 * jax.random.normal(k[1], (64, 8, 16))).astype(jnp.bfloat16)

  def plain(x, w, n):  # the contraction as autodiff sees it without the custom backward
    return llama._dot32(x, w, llama._contraction(x.ndim, n), x.dtype)

  def loss(contract):
    return lambda x, w: jnp.sum(jnp.sin(contract(x, w, 1).astype(jnp.float32)))

  grad = lambda contract: jax.grad(loss(contract), argnums=(0, 1))
  assert ("float32", "bfloat16") in _dot_operand_dtypes(grad(plain), x, w)  # what it replaces
  assert set(_dot_operand_dtypes(grad(llama._contract_low), x, w)) == {("bfloat16", "bfloat16")}
  np.testing.assert_array_equal(llama._contract_low(x, w, 1), plain(x, w, 1))
  for a, b in zip(grad(plain)(x, w), grad(llama._contract_low)(x, w)):
    assert a.dtype == b.dtype == jnp.bfloat16
    # Same products, float32 sums in another order: at most one bf16 rounding step apart.
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=2**-7)


def test_remat_gives_same_loss_and_grads():
  lm = load("tiny_smollm2")
  tokens = jnp.asarray([[1, 2, 3, 4, 5, 6]])
  pos = jnp.arange(6)[None]
  remat_model = llama.Decoder(lm.args.replace(remat=True))

  def loss(model, params):
    logits, _ = model.apply({"params": params}, tokens, pos)
    return jnp.mean(jax.nn.log_softmax(logits)[..., 7])

  plain = jax.grad(lambda p: loss(lm.model, p))(lm.variables["params"])
  remat = jax.grad(lambda p: loss(remat_model, p))(lm.variables["params"])
  for x, y in zip(jax.tree.leaves(plain), jax.tree.leaves(remat)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6)


def test_unrolled_layers_equal_scanned_layers():
  lm = _tiny_lora()
  trained = dict(lm.variables, lora=jax.tree.map(lambda x: x + 0.05, lm.variables["lora"]))
  unrolled = llama.Decoder(lm.args.replace(scan_layers=False))
  per_layer = llama.unstack_layers(trained, lm.args.num_layers)
  assert sorted(per_layer["params"]) == ["embedding", "final_norm", "layers_0", "layers_1"]
  assert per_layer["lora"]["layers_1"]["q_proj"]["a"].shape == (64, 4)
  tokens = jnp.asarray([[3, 14, 15, 92, 65], [2, 7, 1, 8, 28]])
  pos = jnp.arange(5)[None].repeat(2, 0)
  want, _ = lm.model.apply(trained, tokens, pos)
  got, _ = unrolled.apply(per_layer, tokens, pos)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
  # The KV-cache path too: prefill 3 tokens into a cache of 5 slots, then feed 2 more.
  for model, variables in ((lm.model, trained), (unrolled, per_layer)):
    cache = llama.KVCache.zeros(model.args, 2, 5)
    valid = jnp.ones((2, 5), bool)
    _, cache = model.apply(variables, tokens[:, :3], pos[:, :3], valid, cache, 0)
    logits, _ = model.apply(variables, tokens[:, 3:], pos[:, 3:], valid, cache, 3)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(want[:, 3:]), atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_cpu_layout_matches_transformers(name, reference):
  lm = load(name)
  cpu = llama.Decoder(llama.cpu_layout_args(lm.args))
  variables = llama.to_cpu_layout(lm.variables, lm.args)
  layer = variables["params"]["layers_1"]
  assert "qkv_proj" in layer and "q_proj" not in layer and "lm_head" in variables["params"]
  n, k, h = lm.args.num_heads, lm.args.num_kv_heads, lm.args.head_dim
  assert layer["qkv_proj"]["kernel"].shape == (lm.args.hidden_size, (n + 2 * k) * h)
  assert ("bias" in layer["qkv_proj"]) == lm.args.qkv_bias
  ids = jnp.asarray(reference[f"{name}_input_ids"])
  want = reference[f"{name}_logits"]
  b, t = ids.shape
  pos = jnp.broadcast_to(jnp.arange(t), (b, t))
  logits, _ = cpu.apply(variables, ids, pos)
  np.testing.assert_allclose(np.asarray(logits), want, atol=1e-4, rtol=0)
  # Through the KV cache: prefill all but the last 2 tokens, then feed them one at a time.
  cache = llama.KVCache.zeros(cpu.args, b, t)
  valid = jnp.ones((b, t), bool)
  _, cache = cpu.apply(variables, ids[:, :-2], pos[:, :-2], valid, cache, 0)
  for i in (t - 2, t - 1):
    step, cache = cpu.apply(variables, ids[:, i : i + 1], pos[:, i : i + 1], valid, cache, i)
    np.testing.assert_allclose(np.asarray(step[:, 0]), want[:, i], atol=1e-4, rtol=0)


def test_merge_lora_exact_numbers():
  kernel = jnp.ones((1, 2, 3))  # one stacked layer, in 2, out 3
  a = jnp.asarray([[[1.0], [2.0]]])  # [L, in, r=1]
  b = jnp.asarray([[[1.0, 0.0, -1.0]]])  # [L, r, out]
  variables = {
    "params": {"layers": {"up_proj": {"kernel": kernel}}},
    "lora": {"layers": {"up_proj": {"a": a, "b": b}}},
  }
  merged = llama.merge_lora(variables, lora_scale=0.5)["params"]["layers"]["up_proj"]["kernel"]
  np.testing.assert_array_equal(np.asarray(merged), [[[1.5, 1.0, 0.5], [2.0, 1.0, 0.0]]])
  unrolled = llama.merge_lora(llama.unstack_layers(variables, 1), lora_scale=0.5)
  np.testing.assert_array_equal(
    np.asarray(unrolled["params"]["layers_0"]["up_proj"]["kernel"]), np.asarray(merged[0])
  )


def _plain_attention(q, keys, values, mask, k, scale):
  """Grouped-query attention in one float32 einsum pass: the forward the blocked one must match."""
  b, t, n, h = q.shape
  f32 = lambda x: x.astype(jnp.float32)
  scores = jnp.einsum("btkgh,bksh->bkgts", f32(q).reshape(b, t, k, n // k, h), f32(keys)) * scale
  scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
  out = jnp.einsum("bkgts,bksh->btkgh", jax.nn.softmax(scores, axis=-1), f32(values))
  return out.reshape(b, t, n, h)


@pytest.mark.parametrize("causal", [True, False])
def test_block_attention_backward_equals_autodiff(monkeypatch, causal):
  # Blocks of 4 query rows: 11 rows make three blocks, the last one short. Causal: the second row
  # is left-padded, so its first 3 queries see no key at all. Not causal: 11 new tokens attend
  # over a 15-slot cache from slot 4 on, the second row's first 2 slots empty.
  monkeypatch.setattr(llama, "ATTEND_BLOCK", 4)
  b, t, n, k, h = 2, 11, 6, 2, 8
  s, first = (t, 0) if causal else (15, 4)
  r = jax.random.split(jax.random.PRNGKey(3), 4)
  q = jax.random.normal(r[0], (b, t, n, h))
  keys, values = (jax.random.normal(x, (b, k, s, h)) for x in r[1:3])
  valid = jnp.arange(s)[None] >= jnp.asarray([0, 3 if causal else 2])[:, None]
  mask = valid[:, None, :] & (jnp.arange(s)[None, :] <= first + jnp.arange(t)[:, None])[None]
  weights = jax.random.normal(r[3], (b, t, n, h))

  def grads(attention, dtype):
    loss = lambda *x: jnp.sum(attention(*x, mask).astype(jnp.float32) * weights)
    return jax.grad(loss, argnums=(0, 1, 2))(
      q.astype(dtype), keys.astype(dtype), values.astype(dtype)
    )

  ours = lambda q, kk, v, m: llama.attend(q, kk, v, m, k, 0.3, causal=causal)
  # The same forward, differentiated by autodiff: the definition the written-out backward meets.
  autodiff = lambda q, kk, v, m: llama._attend_blocks_fwd(q, kk, v, m, k, 0.3, causal)[0]
  seeing = np.asarray(jnp.any(mask, axis=-1))  # rows with a key to see: plain attention's too
  plain = _plain_attention(q, keys, values, mask, k, 0.3)
  np.testing.assert_allclose(
    np.asarray(ours(q, keys, values, mask))[seeing], np.asarray(plain)[seeing], atol=1e-6
  )
  assert causal == (not seeing.all())
  for x, y in zip(grads(ours, jnp.float32), grads(autodiff, jnp.float32)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=2e-6)
  # bf16: every product of the backward takes bf16 operands; gradients as close to float32's as
  # rounding the operands and the probabilities to bf16 allows.
  bf16 = lambda x: x.astype(jnp.bfloat16)
  dots = _dot_operand_dtypes(
    jax.grad(lambda *x: jnp.sum(ours(*x, mask).astype(jnp.float32)), argnums=(0, 1, 2)),
    bf16(q), bf16(keys), bf16(values),
  )  # fmt: skip
  assert len(dots) == 3 * 2 + 3 * 5 and set(dots) == {("bfloat16", "bfloat16")}
  for x, y in zip(grads(ours, jnp.bfloat16), grads(autodiff, jnp.float32)):
    assert x.dtype == jnp.bfloat16
    scale = float(jnp.max(jnp.abs(y)))
    np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y), atol=0.03 * scale)
