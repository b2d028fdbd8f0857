"""Rollout throughput of the default workload: the config's sampler (tight buckets, shared heads
where `sampling.prefix_cache` is on, forced tails in one call) in automatic precision against the
plain path (full prefill, powers of two, float32, a decode step per token).

  python benchmarks/rollout.py --config=configs/default.py
  python benchmarks/rollout.py --config.sampling.prefix_cache=True   # with shared heads

The embedded SmolLM2-135M plays G copies of the first tasks of the generated ALFWorld games in
the config's prompt format, answers decoded under the turn's admissible actions where the config
asks for it (`agent.admissible_only`), as an epoch's rollout does (rules off: the pool starts
empty). Each path plays the same episodes with the same seeds: an untimed round that pays the
compiles, then timed rounds from an empty prefix cache, alternating between the paths (the
fastest counts). In one precision both paths sample the same tokens, so they play the same
games; `same_actions` says whether they did. Ends with one JSON line: turns_per_s,
plain_turns_per_s, speedup, gen_tok_s, prompt_tok_s_saved (prompt tokens a second not prefilled
thanks to shared heads), compiles, cpu, and the details: phases and plain_phases (prefill and
decode seconds of the fastest round) and decode_steps.
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import jax  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from benchmarks.machine import device_name  # noqa: E402
from jerp_jax import episodes as episodes_lib  # noqa: E402
from jerp_jax.agent import policy as policy_lib  # noqa: E402
from jerp_jax.envs import pool as pool_lib, registry  # noqa: E402
from jerp_jax.model import build, config as model_config  # noqa: E402
from jerp_jax.parallel import mesh as mesh_lib  # noqa: E402
from jerp_jax.sampling import sampler as sampler_lib  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Experiment config.")
_TASKS = flags.DEFINE_integer("tasks", 0, "Tasks played (0: the config's jerp.tasks_per_epoch).")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Timed rounds of each path, alternating.")


def play(config, pool, lm, sampler, tasks, seed: int) -> dict:
  """One rollout through `sampler`: figures and the actions taken."""
  params = sampler_lib.SamplingParams.from_config(
    config.sampling,
    stop_strings=tuple(config.sampling.stop_strings) or (f"</{config.actions.tag}>",),
  )
  gen = {"seconds": 0.0, "tokens": 0, "turns": 0}

  def generate(prompts, turn_seed, grammar=None):  # grammar: agent.admissible_only's tries
    start = time.perf_counter()
    out = sampler.generate(lm.variables, prompts, params, seed=turn_seed, grammar=grammar)
    gen["seconds"] += time.perf_counter() - start
    gen["tokens"] += sum(len(c.token_ids) for c in out)
    gen["turns"] += len(out)
    return out

  before = dict(sampler.stats)
  start = time.perf_counter()
  policy = policy_lib.ModelPolicy(
    generate,
    lm.tokenizer,
    config.agent,
    config.actions,
    config.model.max_seq_len - config.sampling.max_new_tokens,
  )
  trajs = episodes_lib.play(pool, policy, tasks, config.jerp.group_size, seed, desc="rollout")
  seconds = time.perf_counter() - start
  stats = {k: v - before.get(k, 0) for k, v in sampler.stats.items()}
  return dict(
    seconds=seconds,
    gen_seconds=gen["seconds"],
    gen_tokens=gen["tokens"],
    turns=gen["turns"],
    prompt_tokens=stats.get("prompt_tokens", 0),
    prefilled_tokens=stats.get("prefilled_tokens", 0),
    phases={k: round(stats.get(k, 0), 2) for k in ("prefill_seconds", "decode_seconds")},
    decode_steps=stats.get("decode_steps", 0),
    actions=[[t.action for t in tr.turns] for tr in trajs],
  )


def main(argv) -> None:
  del argv
  config = _CONFIG.value
  sampler_lib.validate_config(config.sampling)
  mesh = mesh_lib.make_mesh(config.mesh.shape)
  tasks = registry.load_tasks(config.env, "train")[: _TASKS.value or config.jerp.tasks_per_epoch]

  lm = build.build(config.model, mesh, seed=config.seed)
  dtype = model_config.runtime_options(config.model)["dtype"]
  plain_lm = lm
  if dtype != "float32":  # the plain path computes in float32
    plain_config = config.model.copy_and_resolve_references()
    plain_config.dtype = plain_config.param_dtype = "float32"
    plain_lm = build.build(plain_config, mesh, seed=config.seed)
  fast = sampler_lib.Sampler.from_config(
    lm.model, mesh, config.sampling, lm.tokenizer, config.model.max_seq_len
  )
  plain_sampling = config.sampling.copy_and_resolve_references()
  plain_sampling.prefix_cache, plain_sampling.prompt_bucket = False, 0
  plain_sampling.forced_tails = False  # a decode step for every token
  plain = sampler_lib.Sampler.from_config(
    plain_lm.model, mesh, plain_sampling, plain_lm.tokenizer, config.model.max_seq_len
  )

  paths = {"fast": (lm, fast), "plain": (plain_lm, plain)}
  warmup, timed = {}, {name: [] for name in paths}
  with pool_lib.EnvPool(config.env, config.pool) as pool:
    for name, (model, sampler) in paths.items():
      warmup[name] = play(config, pool, model, sampler, tasks, seed=1)  # pays the compiles
    # Timed rounds alternate between the paths, so that load from other processes on a shared
    # machine falls on both; each path's fastest round counts.
    for _ in range(_ROUNDS.value):
      for name, (model, sampler) in paths.items():
        sampler.clear_prefix_cache()  # no prompt of an earlier round is found cached
        timed[name].append(play(config, pool, model, sampler, tasks, seed=1))
        r = timed[name][-1]
        print(
          f"{name}: {r['turns']} turns in {r['seconds']:.1f}s (generation "
          f"{r['gen_seconds']:.1f}s: prefill {r['phases']['prefill_seconds']:.1f}s, "
          f"{r['decode_steps']} decode steps {r['phases']['decode_seconds']:.1f}s; "
          f"{r['prefilled_tokens']}/{r['prompt_tokens']} prompt tokens "
          f"prefilled; warm-up {warmup[name]['seconds']:.1f}s), {sampler.compiles} programs",
          flush=True,
        )
  results = {
    name: dict(
      min(rounds, key=lambda r: r["seconds"]),
      warmup_seconds=warmup[name]["seconds"],
      compiles=paths[name][1].compiles,
      all_seconds=[round(r["seconds"], 1) for r in rounds],
    )
    for name, rounds in timed.items()
  }

  f, p = results["fast"], results["plain"]
  print(
    json.dumps(
      dict(
        turns_per_s=round(f["turns"] / f["seconds"], 3),
        plain_turns_per_s=round(p["turns"] / p["seconds"], 3),
        speedup=round(p["seconds"] / f["seconds"], 3),
        gen_tok_s=round(f["gen_tokens"] / f["gen_seconds"], 2),
        prompt_tok_s_saved=round(
          (f["prompt_tokens"] - f["prefilled_tokens"]) / f["gen_seconds"], 1
        ),
        compiles=f["compiles"],
        plain_compiles=p["compiles"],
        cpu=device_name(),
        dtype=dtype,
        prefix_cache=bool(config.sampling.prefix_cache),
        turns=f["turns"],
        prompt_tokens=f["prompt_tokens"],
        prefilled_tokens=f["prefilled_tokens"],
        same_actions=f["actions"] == p["actions"],
        warmup_seconds=round(f["warmup_seconds"], 1),
        plain_warmup_seconds=round(p["warmup_seconds"], 1),
        backend=jax.devices()[0].platform,
        seconds=f["all_seconds"],
        plain_seconds=p["all_seconds"],
        # Of the fastest round: where generation's time went, and the decode steps it took.
        phases=f["phases"],
        plain_phases=p["phases"],
        decode_steps=f["decode_steps"],
      )
    )
  )


if __name__ == "__main__":
  jax.config.parse_flags_with_absl()
  app.run(main)
