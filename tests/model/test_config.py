"""ModelArgs validation and the config.json mapping."""

import pytest

from jerp_jax.model import config as model_config, presets


def test_bad_values_name_the_field():
  good = presets.PRESETS["tiny"]
  with pytest.raises(ValueError, match=r"model.num_kv_heads=3: expected a divisor of num_heads=4"):
    model_config.ModelArgs(**dict(good, num_kv_heads=3))
  with pytest.raises(ValueError, match=r"model.family='gpt2': expected one of"):
    model_config.ModelArgs(**dict(good, family="gpt2"))
  with pytest.raises(ValueError, match=r"model.dtype='fp8': expected one of"):
    model_config.ModelArgs(**good, dtype="fp8")
  with pytest.raises(ValueError, match=r"model.lora.alpha=0.0: expected a positive number"):
    model_config.ModelArgs(**good, lora_rank=8)
  with pytest.raises(ValueError, match=r"unknown: \['qkv'\]"):
    model_config.ModelArgs(**good, lora_rank=8, lora_alpha=8.0, lora_targets=("qkv",))
  with pytest.raises(ValueError, match=r"model.preset='gpt-5': expected one of"):
    presets.preset_args("gpt-5")


def test_bad_values_of_the_new_families_name_the_field():
  gemma = presets.PRESETS["tiny-gemma3"]
  with pytest.raises(ValueError, match=r"model.layer_types=.*: expected one entry per layer \(3\)"):
    model_config.ModelArgs(**dict(gemma, layer_types=("full_attention",)))
  with pytest.raises(ValueError, match=r"model.layer_types=.*: expected entries from"):
    model_config.ModelArgs(**dict(gemma, layer_types=("local",) * 3))
  with pytest.raises(ValueError, match=r"model.sliding_window=0: expected a positive integer"):
    model_config.ModelArgs(**dict(gemma, sliding_window=0))
  with pytest.raises(ValueError, match=r"model.mlp_activation='relu': expected one of"):
    model_config.ModelArgs(**dict(gemma, mlp_activation="relu"))
  with pytest.raises(ValueError, match=r"model.rope_scaling.rope_type='yarn': expected one of"):
    model_config.ModelArgs(
      **dict(gemma, rope_scaling=model_config.RopeScaling(2.0, rope_type="yarn"))
    )
  with pytest.raises(
    ValueError, match=r"config.json: final_logit_softcapping=30.0 is not supported"
  ):
    model_config.from_hf_config(
      dict(
        model_config.to_hf_config(presets.preset_args("tiny-gemma3")), final_logit_softcapping=30.0
      )
    )
  with pytest.raises(ValueError, match=r"rope type 'yarn' is not supported; expected 'default'"):
    model_config.from_hf_config(
      dict(
        model_config.to_hf_config(presets.preset_args("tiny-qwen3")),
        rope_parameters={"rope_type": "yarn"},
      )
    )


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_presets_round_trip_through_config_json(name):
  args = presets.preset_args(name)
  assert model_config.from_hf_config(model_config.to_hf_config(args)) == args


def test_transformers_4_style_config_is_read():
  hf = {
    "model_type": "llama",
    "vocab_size": 128256,
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": {
      "factor": 32.0,
      "high_freq_factor": 4.0,
      "low_freq_factor": 1.0,
      "original_max_position_embeddings": 8192,
      "rope_type": "llama3",
    },
    "tie_word_embeddings": True,
    "max_position_embeddings": 131072,
  }
  assert model_config.from_hf_config(hf) == presets.preset_args("llama-3.2-1b-instruct")
  with pytest.raises(ValueError, match="rope type 'yarn' is not supported"):
    model_config.from_hf_config(dict(hf, rope_scaling={"rope_type": "yarn", "factor": 4.0}))


def test_lora_targets_from_a_comma_list():
  cfg = model_config.get_config()
  cfg.lora.rank, cfg.lora.alpha, cfg.lora.targets = 64, 64.0, "q_proj, v_proj"
  opts = model_config.runtime_options(cfg)
  assert opts["lora_targets"] == ("q_proj", "v_proj")
  assert model_config.ModelArgs(**presets.PRESETS["tiny"], **opts).lora_scale == 1.0


def test_auto_dtypes_follow_the_backend(monkeypatch):
  monkeypatch.delenv(model_config.AUTO_DTYPE_ENV)  # the suite's own float32 override
  monkeypatch.setattr(model_config, "cpu_flags", lambda: frozenset())  # a CPU without AMX
  cfg = model_config.get_config()
  assert (cfg.dtype, cfg.param_dtype) == ("auto", "auto")
  opts = model_config.runtime_options(cfg)
  assert (opts["dtype"], opts["param_dtype"]) == ("float32", "float32")  # that CPU
  assert opts["remat"] is False  # float32 on CPU: recomputing costs more than it saves
  monkeypatch.setattr(model_config, "cpu_flags", lambda: frozenset({"amx_bf16"}))
  assert model_config.runtime_options(cfg)["remat"] is True  # bfloat16 on CPU
  cfg.remat = "False"  # as --config.model.remat=False gives it
  assert model_config.runtime_options(cfg)["remat"] is False
  cfg.remat = "maybe"
  with pytest.raises(ValueError, match=r"model.remat='maybe': expected 'auto', True or False"):
    model_config.runtime_options(cfg)
  cfg.remat = "auto"
  monkeypatch.setattr(model_config.jax, "default_backend", lambda: "tpu")
  opts = model_config.runtime_options(cfg)
  assert (opts["dtype"], opts["param_dtype"]) == ("bfloat16", "float32")  # trained: a master copy
  assert opts["remat"] is False  # on an accelerator the recompute is extra work
  cfg.lora.rank = 8
  opts = model_config.runtime_options(cfg)
  assert (opts["dtype"], opts["param_dtype"]) == ("bfloat16", "bfloat16")  # frozen under LoRA
  cfg.dtype = "float32"
  assert model_config.runtime_options(cfg)["dtype"] == "float32"


def test_bf16_is_chosen_on_cpus_with_bf16_units(tmp_path, monkeypatch):
  xeon, zen4, zen3 = tmp_path / "xeon", tmp_path / "zen4", tmp_path / "zen3"
  xeon.write_text("processor : 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 amx_bf16 amx_tile\n")
  zen4.write_text("processor : 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n")
  zen3.write_text("processor : 0\nflags\t\t: fpu sse2 avx2 fma\n")
  assert model_config.cpu_flags(str(xeon)) >= {"avx512_bf16", "amx_bf16"}
  assert model_config.bf16_matmuls_are_fast("cpu", model_config.cpu_flags(str(xeon)))
  assert model_config.bf16_matmuls_are_fast("cpu", model_config.cpu_flags(str(zen4)))
  assert not model_config.bf16_matmuls_are_fast("cpu", model_config.cpu_flags(str(zen3)))
  assert not model_config.bf16_matmuls_are_fast("cpu", model_config.cpu_flags(str(tmp_path / "no")))
  assert model_config.bf16_matmuls_are_fast("gpu", frozenset())
  read = model_config.cpu_flags
  monkeypatch.delenv(model_config.AUTO_DTYPE_ENV)  # the suite's own float32 override
  monkeypatch.setattr(model_config, "cpu_flags", lambda: read(str(xeon)))
  assert model_config.resolve_dtype("auto") == "bfloat16"
  monkeypatch.setattr(model_config, "cpu_flags", lambda: read(str(zen3)))
  assert model_config.resolve_dtype("auto") == "float32"
  assert model_config.resolve_dtype("float16") == "float16"
  monkeypatch.setenv(model_config.AUTO_DTYPE_ENV, "float32")
  monkeypatch.setattr(model_config, "cpu_flags", lambda: read(str(xeon)))
  assert model_config.resolve_dtype("auto") == "float32"
