"""The main entry point: `python -m jerp_jax.main --config=configs/default.py --workdir=DIR`.

Several processes (one per host, `launch/cpu_multiprocess.sh`, `launch/tpu_vm.sh`,
`launch/gpu_slurm.sbatch`) run the same command with `--distributed=flags --coordinator_address=
HOST:PORT --num_processes=N --process_id=I`, or `--distributed=auto` where JAX finds them itself
(TPU VMs, SLURM, Open MPI); see `jerp_jax.parallel.hosts`.

Modes: `train` (the default) runs the JERP loop of `jerp.mode` (jerp, grpo, rules_only, react) in
the workdir, resuming it when the workdir holds a checkpoint; `generate` answers the config's
`generate.prompts` with the configured model and reports throughput.
"""

from __future__ import annotations

import os

# transformers' advice that torch is absent is noise here: we use it for tokenizers only.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import json
import sys
import time
from typing import Sequence

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from jerp_jax import inference
from jerp_jax.model import config as model_config
from jerp_jax.parallel import hosts

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Experiment config file.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "generate"], "What to run.")
_WORKDIR = flags.DEFINE_string(
  "workdir", "runs/default", "Run folder: checkpoints, metrics, rules. Resumed when it has some."
)
_DISTRIBUTED = flags.DEFINE_enum(
  "distributed",
  "off",
  list(hosts.DISTRIBUTED),
  "Several processes: 'flags' (the three flags below) or 'auto' (JAX's detection on TPU VMs, "
  "SLURM, Open MPI).",
)
_COORDINATOR = flags.DEFINE_string(
  "coordinator_address", "", "HOST:PORT of process 0 (--distributed=flags)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "Processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "This process: 0 .. num_processes-1.")
_COMPILE_CACHE = flags.DEFINE_string(
  "compile_cache",
  "~/.cache/jerp_jax/xla",
  "Keep compiled programs here (one folder per CPU instruction set) so that a later run of the "
  "same shapes loads them instead of compiling; '' turns it off. JAX's own "
  "--jax_compilation_cache_dir, when given, wins.",
)


def use_compile_cache() -> None:
  """JAX's persistent compilation cache in --compile_cache: on a 2-core CPU the default run's ~20
  programs take 3-9 s each to compile, about a third of its time."""
  if not _COMPILE_CACHE.value or jax.config.jax_compilation_cache_dir:
    return
  platform = jax.default_backend()
  cpu = model_config.cpu_flags() if platform == "cpu" else frozenset()
  jax.config.update(
    "jax_compilation_cache_dir", hosts.compile_cache_dir(_COMPILE_CACHE.value, platform, cpu)
  )


def start_processes(config) -> None:
  """jax.distributed before anything touches a device; then every process must hold the same
  config. Mistakes are one line each."""
  try:
    hosts.initialize(
      _DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value
    )
    use_compile_cache()  # before the first program: JAX decides once whether it caches
    hosts.check_same("config", config.to_json_best_effort(sort_keys=True))
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  if not hosts.is_main():
    # Every line another process would print is a copy of process 0's; errors still reach stderr.
    sys.stdout = open(os.devnull, "w")  # pylint: disable=consider-using-with
    os.environ["TQDM_DISABLE"] = "1"  # and progress bars (tqdm reads TQDM_* as its defaults)


def run_generate(config) -> None:
  start = time.time()
  lm, sampler = inference.setup(config)
  print(
    f"model: {config.model.preset} from {lm.source} "
    f"({sum(x.size for x in jax.tree.leaves(lm.variables)) / 1e6:.1f}M parameters) on "
    f"{jax.device_count()} {jax.devices()[0].platform} device(s), mesh {dict(lm.mesh.shape)}, "
    f"loaded in {time.time() - start:.1f}s",
    flush=True,
  )
  prompts = [inference.prompt_ids(lm.tokenizer, p) for p in config.generate.prompts]
  start = time.time()
  params = inference.generation_settings(config)
  completions = inference.complete(lm, sampler, params, prompts, seed=config.sampling.seed)
  elapsed = time.time() - start
  for text, c in zip(config.generate.prompts, completions):
    answer = lm.tokenizer.decode(c.token_ids, skip_special_tokens=True)
    print(f"\n>>> {text}\n{answer}\n[{len(c.token_ids)} tokens, {c.finish_reason}]", flush=True)
  generated = sum(len(c.token_ids) for c in completions)
  print(
    f"\n{generated} tokens for {len(prompts)} prompts in {elapsed:.1f}s "
    "(first call includes compilation)",
    flush=True,
  )


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  start_processes(_CONFIG.value)
  if _MODE.value == "generate":
    run_generate(_CONFIG.value)
  else:
    run_train(_CONFIG.value, _WORKDIR.value)


def run_train(config, workdir: str) -> None:
  from jerp_jax import jerp, state  # pylint: disable=import-outside-toplevel
  from jerp_jax.model.tokenizer import NoChatTemplate  # pylint: disable=import-outside-toplevel

  start = time.time()
  # A user's mistake (a bad config value, a workdir of another run) is one line, not a traceback.
  try:
    jerp.validate(config)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  try:
    summary = jerp.train(config, workdir)
  except (state.CannotResume, NoChatTemplate) as e:
    raise app.UsageError(str(e)) from e
  first, final = summary["first_eval"] or {}, summary["final_eval"] or {}
  print(
    f"\ndone: {summary['epochs']} epochs of {summary['mode']} in {time.time() - start:.0f}s. "
    f"Eval success {first.get('success', float('nan')):.3f} (epoch {first.get('epoch', '-')}) "
    f"-> {final.get('success', float('nan')):.3f} (epoch {final.get('epoch', '-')}); "
    f"{summary['rules']} rules. Run folder: {workdir}",
    flush=True,
  )
  print(json.dumps(summary, default=str))


if __name__ == "__main__":
  jax.config.parse_flags_with_absl()
  app.run(main)
