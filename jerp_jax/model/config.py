"""Model architecture and runtime options, and their mapping to Hugging Face `config.json`.

`ModelArgs` is frozen and hashable so it can sit in a Flax module and in jit's static arguments.
It owns validation: a bad value fails here, with the field's name, before anything is traced.
This module never touches weights or devices.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Mapping

import jax
import ml_collections

FAMILIES = ("llama", "qwen2", "qwen3", "gemma3")
DTYPES = ("float32", "bfloat16", "float16")
# Projections that may carry LoRA adapters, by the names used in the parameter tree.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ROPE_TYPES = ("llama3", "linear")
MLP_ACTIVATIONS = ("silu", "gelu_tanh")  # SwiGLU (Llama, Qwen) / GeGLU with tanh GELU (Gemma)
LAYER_TYPES = ("full_attention", "sliding_attention")  # transformers' names


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """RoPE frequency scaling: Llama 3's band-wise one (`rope_type: llama3`, the default), or
  `linear` (every frequency divided by `factor`; Gemma 3's global layers), which reads only
  `factor`."""

  factor: float
  low_freq_factor: float = 0.0
  high_freq_factor: float = 0.0
  original_max_position_embeddings: int = 0
  rope_type: str = "llama3"


@dataclasses.dataclass(frozen=True)
class ModelArgs:
  """Everything that fixes the shape of the network and how it computes."""

  family: str
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rope_theta: float
  rms_norm_eps: float
  tie_embeddings: bool
  qkv_bias: bool
  max_position_embeddings: int
  rope_scaling: RopeScaling | None = None  # global layers only when some layers slide
  # Switches of the newer families (the defaults are Llama's).
  qk_norm: bool = False  # RMSNorm over head_dim on q and k before RoPE (Qwen3, Gemma 3)
  norm_plus_one: bool = False  # RMSNorm scales by (1 + weight), in float32 (Gemma)
  sandwich_norms: bool = False  # also a norm on each block's output before the residual (Gemma)
  scale_embeddings: bool = False  # embeddings times sqrt(hidden_size) (Gemma)
  mlp_activation: str = "silu"
  query_pre_attn_scalar: float = 0.0  # attention scores scaled by its -1/2 power; 0: head_dim
  # Per layer "full_attention" or "sliding_attention" (empty: all full). A sliding layer sees its
  # own token and the sliding_window - 1 real tokens before it, with RoPE base rope_local_theta.
  layer_types: tuple[str, ...] = ()
  sliding_window: int = 0
  rope_local_theta: float = 0.0
  # Runtime options (not part of a checkpoint's architecture).
  dtype: str = "float32"  # compute dtype
  param_dtype: str = "float32"  # storage dtype of the base weights
  lora_rank: int = 0  # 0: no adapters
  lora_alpha: float = 0.0
  lora_targets: tuple[str, ...] = LORA_TARGETS
  remat: bool = False  # rematerialise each layer in the backward pass
  # True: one layer body under nn.scan, parameters stacked on a leading `layers` axis (fast to
  # compile; the layout of checkpoints and of training). False: layers unrolled with their own
  # arrays, which the sampler uses on CPU (see Sampler).
  scan_layers: bool = True
  # True: q, k and v come from one projection `qkv_proj` ([embed, q + k + v columns]), the
  # sampler's layout on CPU, where one wide matmul streams its weights faster than three.
  fused_qkv: bool = False

  def __post_init__(self):
    def fail(field: str, value: Any, expected: str):
      raise ValueError(f"model.{field}={value!r}: expected {expected}")

    if self.family not in FAMILIES:
      fail("family", self.family, f"one of {FAMILIES}")
    for name in (
      "vocab_size",
      "hidden_size",
      "intermediate_size",
      "num_layers",
      "num_heads",
      "num_kv_heads",
      "head_dim",
      "max_position_embeddings",
    ):
      value = getattr(self, name)
      if not isinstance(value, int) or value <= 0:
        fail(name, value, "a positive integer")
    if self.num_heads % self.num_kv_heads:
      fail(
        "num_kv_heads",
        self.num_kv_heads,
        f"a divisor of num_heads={self.num_heads} (grouped-query attention)",
      )
    if self.head_dim % 2:
      fail("head_dim", self.head_dim, "an even number (rotary embedding rotates pairs)")
    if self.rope_theta <= 0:
      fail("rope_theta", self.rope_theta, "a positive number")
    if self.rms_norm_eps <= 0:
      fail("rms_norm_eps", self.rms_norm_eps, "a positive number")
    if self.mlp_activation not in MLP_ACTIVATIONS:
      fail("mlp_activation", self.mlp_activation, f"one of {MLP_ACTIVATIONS}")
    if self.query_pre_attn_scalar < 0:
      fail("query_pre_attn_scalar", self.query_pre_attn_scalar, "a positive number, or 0: head_dim")
    if self.layer_types:
      if len(self.layer_types) != self.num_layers:
        fail("layer_types", self.layer_types, f"one entry per layer ({self.num_layers})")
      unknown = set(self.layer_types) - set(LAYER_TYPES)
      if unknown:
        fail("layer_types", self.layer_types, f"entries from {LAYER_TYPES}")
    if self.has_sliding_layers and self.sliding_window <= 0:
      fail("sliding_window", self.sliding_window, "a positive integer (some layers slide)")
    if self.has_sliding_layers and self.rope_local_theta <= 0:
      fail("rope_local_theta", self.rope_local_theta, "a positive number (some layers slide)")
    s = self.rope_scaling
    if s is not None:
      if s.rope_type not in ROPE_TYPES:
        fail("rope_scaling.rope_type", s.rope_type, f"one of {ROPE_TYPES}")
      if s.factor <= 0:
        fail("rope_scaling.factor", s.factor, "a positive number")
      if s.rope_type == "llama3" and not (
        0 < s.low_freq_factor < s.high_freq_factor and s.original_max_position_embeddings > 0
      ):
        fail("rope_scaling", s, "0 < low_freq_factor < high_freq_factor and a positive length")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in DTYPES:
        fail(name, getattr(self, name), f"one of {DTYPES}")
    if self.lora_rank < 0:
      fail("lora.rank", self.lora_rank, "0 (off) or a positive integer")
    if self.lora_rank and self.lora_alpha <= 0:
      fail("lora.alpha", self.lora_alpha, "a positive number when lora.rank > 0")
    unknown = set(self.lora_targets) - set(LORA_TARGETS)
    if unknown:
      fail(
        "lora.targets", self.lora_targets, f"a subset of {LORA_TARGETS}; unknown: {sorted(unknown)}"
      )

  @property
  def has_sliding_layers(self) -> bool:
    return "sliding_attention" in self.layer_types

  @property
  def attention_scale(self) -> float:
    return float(self.query_pre_attn_scalar or self.head_dim) ** -0.5  # as transformers

  @property
  def lora_scale(self) -> float:
    return self.lora_alpha / self.lora_rank if self.lora_rank else 0.0

  def replace(self, **changes) -> ModelArgs:
    return dataclasses.replace(self, **changes)


def get_config() -> ml_collections.ConfigDict:
  """Defaults of the `model` block of an experiment config."""
  c = ml_collections.ConfigDict()
  # A name from jerp_jax.model.presets: the architecture, and the embedded weights if it has some.
  c.preset = "smollm2-135m-instruct"
  # An HF folder (config.json + safetensors) or a .gguf file. Empty: the preset's embedded weights.
  c.path = ""
  # Where the tokenizer comes from when not beside the weights (an HF folder or a .gguf file).
  c.tokenizer = ""
  # Chat templates that switch reasoning on `enable_thinking` (Qwen3): False closes an empty
  # <think> block after the generation prompt, so the reply starts at once (an agent's turns are
  # short); True lets the model think first. Templates without the switch ignore it.
  c.enable_thinking = False
  # Start from random weights of the preset's architecture (tests, benchmarks) instead of a file.
  c.random_init = False
  # Compute / storage dtypes. dtype 'auto': bfloat16 (with float32 accumulation) where the
  # backend's bf16 matmuls are faster (GPU, TPU, CPUs with AMX or AVX512-BF16), else float32
  # (which also reproduces reference implementations exactly); see bf16_matmuls_are_fast.
  # param_dtype 'auto': the compute dtype for frozen base weights (LoRA on), float32 for weights
  # that are trained (their master copy). LoRA weights are always float32.
  c.dtype = "auto"
  c.param_dtype = "auto"
  c.max_seq_len = 2048  # prompt + generated tokens, the size of the KV cache
  # Recompute each layer in the backward pass: True, False, or 'auto' (see resolve_remat).
  c.remat = "auto"
  c.lora = ml_collections.ConfigDict()
  c.lora.rank = 0  # the paper: 64
  c.lora.alpha = 0.0  # the paper: 64
  c.lora.targets = ",".join(LORA_TARGETS)
  return c


AUTO_DTYPE_ENV = "JERP_AUTO_DTYPE"  # what 'auto' resolves to, when set

# CPU units that run bfloat16 dot products natively: Intel's AMX tiles, and AVX512-BF16 (e.g. AMD
# EPYC Zen 4). Without either, XLA:CPU converts bfloat16 to float32 and gains nothing.
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=None)
def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
  """The CPU's feature flags as the kernel lists them (empty where there is no such file)."""
  try:
    with open(cpuinfo, encoding="utf-8") as f:
      for line in f:
        if line.startswith("flags"):
          return frozenset(line.split(":", 1)[1].split())
  except OSError:
    pass
  return frozenset()


def bf16_matmuls_are_fast(backend: str | None = None, flags: frozenset[str] | None = None) -> bool:
  """Whether bfloat16 compute (float32 accumulation) beats float32 on this backend.

  Always on GPU and TPU. On CPU with AMX or AVX512-BF16. Measured on 2-core machines: on an
  Intel Xeon with AMX a bf16 dot with a float32 result ran 4-5x float32's speed at the model's
  shapes; on an AMD EPYC with AVX512-BF16 2.2x (0.37 against 0.16 TFLOP/s), and the default's
  rollout ran 1.66x and its policy update 1.29x faster in bfloat16 (2026-12-03).
  """
  if (backend or jax.default_backend()) != "cpu":
    return True
  return any(f in (cpu_flags() if flags is None else flags) for f in BF16_CPU_FLAGS)


def resolve_dtype(name: str) -> str:
  """A dtype name, with 'auto' resolved to the compute dtype this machine runs fastest."""
  if name != "auto":
    return name
  # An override for runs that must not depend on the machine (the test suite sets float32, so
  # its exact-number checks hold on every CPU, and its subprocesses inherit it).
  if os.environ.get(AUTO_DTYPE_ENV):
    return os.environ[AUTO_DTYPE_ENV]
  return "bfloat16" if bf16_matmuls_are_fast() else "float32"


def resolve_remat(value: Any, dtype: str, backend: str | None = None) -> bool:
  """model.remat, with 'auto' resolved: on for bfloat16 compute on CPU, off elsewhere.

  Without it XLA:CPU writes a scanned layer's bfloat16 residuals for the backward pass through a
  convert_fusion of a dynamic-update-slice (a third of the default's policy update in a profile);
  recomputing each layer instead made that update 1.63x faster (10.1 -> 6.2 s, 8 x 320 tokens,
  Intel Xeon with AMX, 2026-12-03). In float32 it cost 12% there (11.9 -> 13.4 s), and on an
  accelerator the recompute is plain extra work, so 'auto' leaves it off.
  """
  choice = str(value).lower()  # the field is a string: --config.model.remat=True gives 'True'
  if choice not in ("auto", "true", "false"):
    raise ValueError(f"model.remat={value!r}: expected 'auto', True or False")
  if choice == "auto":
    return dtype == "bfloat16" and (backend or jax.default_backend()) == "cpu"
  return choice == "true"


def runtime_options(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """The runtime fields of ModelArgs, read from a `model` config block."""
  targets = cfg.lora.targets
  if isinstance(targets, str):
    targets = tuple(t.strip() for t in targets.split(",") if t.strip())
  dtype = resolve_dtype(cfg.dtype)
  # Trained weights keep a float32 master copy; frozen ones (under LoRA) follow the compute.
  param_dtype = cfg.param_dtype
  if param_dtype == "auto":
    param_dtype = dtype if cfg.lora.rank else "float32"
  return dict(
    dtype=dtype,
    param_dtype=param_dtype,
    lora_rank=int(cfg.lora.rank),
    lora_alpha=float(cfg.lora.alpha),
    lora_targets=tuple(targets),
    remat=resolve_remat(cfg.remat, dtype),
  )


# --- Hugging Face config.json ------------------------------------------------------------------

_HF_FAMILY = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma3_text": "gemma3"}
_HF_ARCH = {
  "llama": "LlamaForCausalLM",
  "qwen2": "Qwen2ForCausalLM",
  "qwen3": "Qwen3ForCausalLM",
  "gemma3": "Gemma3ForCausalLM",
}
_HF_MODEL_TYPE = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma3": "gemma3_text"}
# The switches each family turns on; everything else is read from the config.
FAMILY_SWITCHES: dict[str, dict[str, Any]] = {
  "llama": {},
  "qwen2": dict(qkv_bias=True),  # q/k/v bias (and no o_proj bias)
  "qwen3": dict(qk_norm=True),
  "gemma3": dict(
    qk_norm=True,
    norm_plus_one=True,
    sandwich_norms=True,
    scale_embeddings=True,
    mlp_activation="gelu_tanh",
  ),
}
GEMMA3_SLIDING_PATTERN = 6  # every 6th layer global: transformers' and llama.cpp's default


def gemma3_layer_types(num_layers: int, pattern: int = GEMMA3_SLIDING_PATTERN) -> tuple[str, ...]:
  return tuple(
    "sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(num_layers)
  )


def _rope_scaling(rope: Mapping[str, Any], source: str) -> RopeScaling | None:
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  if rope_type in ("default", None):
    return None
  if rope_type == "linear":
    return RopeScaling(float(rope["factor"]), rope_type="linear")
  if rope_type == "llama3":
    return RopeScaling(
      float(rope["factor"]),
      float(rope["low_freq_factor"]),
      float(rope["high_freq_factor"]),
      int(rope["original_max_position_embeddings"]),
    )
  raise ValueError(
    f"{source}: rope type {rope_type!r} is not supported; expected 'default', 'linear' or 'llama3'"
  )


def _gemma3_text(hf: Mapping[str, Any], source: str) -> dict[str, Any]:
  """A Gemma 3 text config with transformers' defaults filled in (hub configs omit many keys).

  The multimodal `gemma3` config's `text_config` is its language model."""
  import transformers  # pylint: disable=import-outside-toplevel

  if hf.get("model_type") == "gemma3":
    hf = hf.get("text_config") or {}
  for key in ("final_logit_softcapping", "attn_logit_softcapping", "use_bidirectional_attention"):
    if hf.get(key):
      raise ValueError(f"{source}: {key}={hf[key]!r} is not supported (Gemma 3 has none)")
  keys = {k: v for k, v in hf.items() if k not in ("model_type", "architectures")}
  return transformers.Gemma3TextConfig(**keys).to_dict()


def from_hf_config(hf: Mapping[str, Any], source: str = "config.json", **runtime) -> ModelArgs:
  """ModelArgs from a transformers config dict (v4 `rope_scaling`/`rope_theta` or v5 `rope_parameters`)."""
  model_type = hf.get("model_type")
  if model_type == "gemma3":  # the multimodal wrapper: its language model
    model_type = "gemma3_text"
  if model_type not in _HF_FAMILY:
    raise ValueError(
      f"{source}: model_type={model_type!r} is not supported; expected one of "
      f"{sorted(_HF_FAMILY) + ['gemma3']} (Llama 2/3, SmolLM2, Qwen2/2.5, Qwen3, Gemma 3)"
    )
  family = _HF_FAMILY[model_type]
  extra: dict[str, Any] = {}
  if family == "gemma3":
    hf = _gemma3_text(hf, source)
    rope = dict(hf["rope_parameters"]["full_attention"])
    local = hf["rope_parameters"].get("sliding_attention") or {}
    if _rope_scaling(local, source) is not None:
      raise ValueError(f"{source}: RoPE scaling on sliding layers is not supported ({local})")
    if hf.get("hidden_activation") not in ("gelu_pytorch_tanh", "gelu_tanh"):
      raise ValueError(
        f"{source}: hidden_activation={hf.get('hidden_activation')!r} is not supported; "
        "expected 'gelu_pytorch_tanh'"
      )
    layer_types = tuple(hf["layer_types"])
    sliding = "sliding_attention" in layer_types
    extra = dict(
      query_pre_attn_scalar=float(hf["query_pre_attn_scalar"]),
      layer_types=layer_types,
      sliding_window=int(hf["sliding_window"]) if sliding else 0,
      rope_local_theta=float(local.get("rope_theta", 10000.0)) if sliding else 0.0,
    )
  else:
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    if hf.get("use_sliding_window"):
      raise ValueError(f"{source}: use_sliding_window=true is not supported")
  theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
  scaling = _rope_scaling(rope, source)
  if hf.get("attention_bias") or hf.get("mlp_bias"):
    raise ValueError(
      f"{source}: attention_bias/mlp_bias=true is not supported (no Llama, Qwen3 or Gemma 3 "
      "release uses it)"
    )
  heads = hf["num_attention_heads"]
  switches = dict(FAMILY_SWITCHES[family])
  # Gemma 3's configs leave it out: their class defaults it to true (filled in above).
  switches["tie_embeddings"] = bool(hf.get("tie_word_embeddings", False))
  return ModelArgs(
    family=family,
    vocab_size=hf["vocab_size"],
    hidden_size=hf["hidden_size"],
    intermediate_size=hf["intermediate_size"],
    num_layers=hf["num_hidden_layers"],
    num_heads=heads,
    num_kv_heads=hf.get("num_key_value_heads") or heads,
    head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
    rope_theta=float(theta),
    rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
    max_position_embeddings=hf.get("max_position_embeddings", 4096),
    rope_scaling=scaling,
    **{"qkv_bias": False, **switches},
    **extra,
    **runtime,
  )


def _hf_rope(args: ModelArgs) -> dict[str, Any]:
  rope: dict[str, Any] = {"rope_type": "default", "rope_theta": args.rope_theta}
  s = args.rope_scaling
  if s is not None and s.rope_type == "linear":
    rope.update(rope_type="linear", factor=s.factor)
  elif s is not None:
    rope.update(dataclasses.asdict(s))
  return rope


def _int_if_whole(x: float) -> int | float:
  return int(x) if float(x).is_integer() else x


def to_hf_config(args: ModelArgs, **extra) -> dict[str, Any]:
  """A config.json dict that transformers (and vLLM) load as the same architecture."""
  rope = _hf_rope(args)
  hf = {
    "architectures": [_HF_ARCH[args.family]],
    "model_type": _HF_MODEL_TYPE[args.family],
    "vocab_size": args.vocab_size,
    "hidden_size": args.hidden_size,
    "intermediate_size": args.intermediate_size,
    "num_hidden_layers": args.num_layers,
    "num_attention_heads": args.num_heads,
    "num_key_value_heads": args.num_kv_heads,
    "head_dim": args.head_dim,
    "hidden_act": "silu",
    "max_position_embeddings": args.max_position_embeddings,
    "rms_norm_eps": args.rms_norm_eps,
    "tie_word_embeddings": args.tie_embeddings,
    # Both spellings: transformers 5 reads rope_parameters, 4.x and vLLM read the pair below.
    "rope_parameters": rope,
    "rope_theta": args.rope_theta,
    "rope_scaling": None if args.rope_scaling is None else dict(rope),
    "torch_dtype": args.param_dtype,
  }
  if args.family == "llama":
    hf["attention_bias"] = args.qkv_bias
    hf["mlp_bias"] = False
  elif args.family in ("qwen2", "qwen3"):
    hf["use_sliding_window"] = False
    if args.family == "qwen3":
      hf["attention_bias"] = False
  else:  # gemma3: rope per layer type (v5), with 4.x's spellings beside it
    del hf["hidden_act"]
    local = {"rope_type": "default", "rope_theta": args.rope_local_theta or 10000.0}
    hf.update(
      hidden_activation="gelu_pytorch_tanh",
      # An int where it is one: transformers' config class rejects 256.0.
      query_pre_attn_scalar=_int_if_whole(args.query_pre_attn_scalar or args.head_dim),
      layer_types=list(args.layer_types or ["full_attention"] * args.num_layers),
      sliding_window=args.sliding_window or None,
      rope_parameters={"full_attention": rope, "sliding_attention": local},
      rope_local_base_freq=local["rope_theta"],
      attention_bias=False,
      final_logit_softcapping=None,
      attn_logit_softcapping=None,
    )
  hf.update(extra)
  return hf
