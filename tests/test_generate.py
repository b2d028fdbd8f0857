"""The user-facing commands, run as a user runs them (subprocesses, no torch)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args):
  env = dict(os.environ, HF_HUB_OFFLINE="1")
  env.pop("XLA_FLAGS", None)  # one device, as a user has
  return subprocess.run(
    [sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
  )


def test_generate_prints_only_the_completion():
  r = run(
    "jerp_jax.generate",
    "--config=configs/default.py",
    "--prompt=What is the capital of France?",
    "--max_new_tokens=16",
    "--temperature=0",
  )
  assert r.returncode == 0, r.stderr
  assert r.stdout == "The capital of France is Paris.\n"


def test_generate_config_override_and_clear_error():
  r = run(
    "jerp_jax.generate",
    "--config=configs/default.py",
    "--prompt=hi",
    "--config.model.path=/nonexistent/Qwen2.5-1.5B-Instruct",
  )
  assert r.returncode != 0 and r.stdout == ""
  assert "model.path='/nonexistent/Qwen2.5-1.5B-Instruct' does not exist" in r.stderr


def test_main_runs_on_the_tiny_config():
  r = run(
    "jerp_jax.main",
    "--mode=generate",
    "--config=configs/tiny.py",
    "--config.generate.max_new_tokens=4",
  )
  assert r.returncode == 0, r.stderr
  assert "model: tiny from random init" in r.stdout
  assert r.stdout.count(">>> ") == 2 and "tokens for 2 prompts" in r.stdout
