"""Shared test setup: 8 virtual CPU devices (for mesh tests) and the embedded model, loaded once."""

import functools
import importlib.util
import os
import pathlib
import types

# Must happen before jax is imported anywhere: sharding tests build a 2x2x2 mesh on these.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# model.dtype="auto" would be bfloat16 on CPUs with AMX or AVX512-BF16: the exact-number tests (and the runs
# they start as subprocesses) compute in float32 on every machine. Tests of bfloat16 ask for it.
os.environ.setdefault("JERP_AUTO_DTYPE", "float32")

import jax  # noqa: E402
import pytest  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
# CI clones the project with the workplace's shared data folder beside it.
SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"


@functools.cache
def tokenizer_reference_script() -> types.ModuleType:
  """tests/fixtures/make_tokenizer_reference.py as a module (only its `main` needs torch): it
  writes the small GGUF tokenizers the tests load."""
  path = os.path.join(FIXTURES, "make_tokenizer_reference.py")
  spec = importlib.util.spec_from_file_location("make_tokenizer_reference", path)
  assert spec is not None and spec.loader is not None
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def one_device_mesh():
  from jerp_jax.parallel import mesh as mesh_lib

  return mesh_lib.make_mesh((1, 1, 1), jax.devices()[:1])


def peaked_tiny(seed: int):
  """The random 'tiny' model on one device, its matrices ×20: peaked, arbitrary distributions
  (the init's 0.02 scale gives nearly uniform ones)."""
  from jerp_jax.model import build, config as model_config

  cfg = model_config.get_config()
  cfg.preset, cfg.random_init = "tiny", True
  lm = build.build(cfg, one_device_mesh(), seed=seed)
  lm.variables = jax.tree.map(lambda x: x * 20 if x.ndim > 1 else x, lm.variables)
  return lm


def tiny_sampler(lm, **kw):
  """A sampler for a tiny model: short contexts, prompts in buckets from 16 tokens."""
  from jerp_jax.sampling.sampler import Sampler

  tok = lm.tokenizer
  return Sampler(
    lm.model, lm.mesh, tok.eos_ids, tok.pad_id, tok, max_seq_len=256, min_prompt_bucket=16, **kw
  )


@pytest.fixture(scope="session")
def smollm2():
  """The embedded SmolLM2-135M-Instruct on one device: (LoadedModel, Sampler)."""
  from jerp_jax.model import build, config as model_config
  from jerp_jax.sampling.sampler import Sampler

  mesh = one_device_mesh()
  lm = build.build(model_config.get_config(), mesh)
  sampler = Sampler(
    lm.model, mesh, lm.tokenizer.eos_ids, lm.tokenizer.pad_id, lm.tokenizer, max_seq_len=2048
  )
  return lm, sampler


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
  if not SHARED.is_dir():
    pytest.fail(f"{SHARED} is missing: the tests need the shared data folder beside the repository")
  return SHARED
