"""Does it learn? `grpo`, `jerp`, `rules_only` and `react` on the same budget, tasks and seeds.

    python benchmarks/learning.py [--config=configs/learning.py] [--seeds=0,1,2]
        [--modes=grpo,jerp,rules_only,react] [--epochs=N] [--out=runs/learning]
        [any --config.FIELD=VALUE override, passed to every run]

Per seed, runs `python -m jerp_jax.main` once for the start (the config's warm start, if it has
one, and an evaluation of it: "before RL") and once per mode from there
(`jerp.warm_start.from_run`), each in its own workdir under --out, with the same config: the
same task stream for a seed, the same warm start and the same held-out games, evaluated greedily
before RL and after the last epoch. `configs/learning.py` (the default) plays one epoch of 64
episodes and evaluates on 32 held-out games: the 4 modes x 3 seeds take about 65 minutes on 2
cores. `react` (the warm-started policy, frozen, no rules) learns nothing from playing, so its run
skips the epochs and only evaluates. A finished run in --out is read again rather than retrained.

Prints, per mode, held-out success before -> after as mean ± std over seeds, each seed's gain,
and success per task type; draws the evaluation curves of every run as `--out/learning.png`;
ends with one JSON line: `gain_<mode>` (mean gain over seeds), `jerp_minus_grpo` (mean and std
over seeds of the paired difference of final success), `seeds`, `cpu`, and every run's figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.machine import cpu_name  # noqa: E402
from jerp_jax import reports  # noqa: E402


def main_run(workdir: str, args, flags: list[str]) -> list[dict]:
  """`python -m jerp_jax.main` in `workdir` (read again if it finished before); its records."""
  cmd = [sys.executable, "-m", "jerp_jax.main", f"--config={args.config}", f"--workdir={workdir}"]
  cmd += flags
  print(f"\n=== {' '.join(cmd[2:])}", flush=True)
  subprocess.run(cmd, cwd=ROOT, check=True)
  return reports.read_metrics(workdir)


def shared_start(seed: int, args, overrides: list[str]) -> tuple[str | None, dict]:
  """Where every mode of a seed starts: the config's warm start (if any) run once and shared, and
  its evaluation, "before RL" for all. (The warm start's workdir or None, that evaluation.)"""
  workdir = os.path.join(args.out, f"start-seed{seed}")
  flags = [*overrides, f"--config.seed={seed}", "--config.jerp.epochs=0"]
  flags += ["--config.jerp.warm_start.evaluate=True"]  # ignored without a warm start
  evals = [r["eval"] for r in main_run(workdir, args, flags) if "eval" in r]
  if not evals:
    sys.exit("nothing to compare with: give the config a warm start or jerp.eval_at_start=True")
  warm = os.path.isdir(os.path.join(workdir, "checkpoints", "0"))
  return (workdir if warm else None), evals[-1]


def mode_flags(mode: str, seed: int, epochs: int, warm: str | None) -> list[str]:
  """The flags of one mode's run of a seed (`epochs` 0: the config's), from the shared start."""
  flags = [f"--config.jerp.mode={mode}", f"--config.seed={seed}"]
  if mode == "react":
    # A frozen policy without rules: epochs would change nothing it is evaluated on, so its run
    # evaluates the start alone (after the warm start, or the config's weights without one).
    flags += ["--config.jerp.epochs=0", f"--config.jerp.eval_at_start={not warm}"]
    flags += [f"--config.jerp.warm_start.evaluate={bool(warm)}"]
  else:
    flags += [f"--config.jerp.epochs={epochs}"] if epochs else []
    flags += ["--config.jerp.eval_at_start=False", "--config.jerp.warm_start.evaluate=False"]
  if warm:
    flags += [f"--config.jerp.warm_start.from_run={warm}", "--config.jerp.warm_start.steps=0"]
  return flags


def run(mode: str, seed: int, args, overrides: list[str], warm: str | None, before: dict) -> dict:
  workdir = os.path.join(args.out, f"{mode}-seed{seed}")
  flags = [*overrides, *mode_flags(mode, seed, args.epochs, warm)]
  t0 = time.time()
  records = main_run(workdir, args, flags)
  evals = [r["eval"] for r in records if "eval" in r]
  first, last = before, evals[-1]
  rules = os.path.join(workdir, "rules.json")
  return {
    "mode": mode,
    "seed": seed,
    "seconds": time.time() - t0,
    "eval_episodes": last["episodes"],
    "success_before": first["success"],
    "success_after": last["success"],
    "gain": last["success"] - first["success"],
    "by_type_before": first["success_by_type"],
    "by_type_after": last["success_by_type"],
    "invalid_before": first["invalid_rate"],
    "invalid_after": last["invalid_rate"],
    "curve": [(e["epoch"], e["success"]) for e in (first, *evals)],
    "rules": len(json.load(open(rules))["rules"]) if os.path.exists(rules) else 0,
  }


def mean_std(xs: list[float]) -> tuple[float, float]:
  return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def plot(results: list[dict], path: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  fig, ax = plt.subplots(figsize=(7, 4.2))
  colours = {}
  for r in results:
    colour = colours.setdefault(r["mode"], f"C{len(colours)}")
    xs, ys = zip(*r["curve"])
    label = r["mode"] if r["seed"] == results[0]["seed"] else None
    ax.plot(xs, ys, marker="o", color=colour, alpha=0.6, label=label)
  ax.set_xlabel("epoch")
  ax.set_ylabel("held-out success")
  ax.set_ylim(-0.02, 1.02)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--config", default="configs/learning.py")
  p.add_argument("--epochs", type=int, default=0, help="epochs of RL per mode (0: the config's)")
  p.add_argument("--out", default="runs/learning")
  p.add_argument("--modes", default="grpo,jerp,rules_only,react")
  p.add_argument("--seeds", default="0,1,2")
  args, overrides = p.parse_known_args()
  bad = [o for o in overrides if not o.startswith("--config.")]
  if bad:
    p.error(f"unknown arguments {bad}: only --config.FIELD=VALUE overrides pass through")
  modes, seeds = args.modes.split(","), [int(s) for s in args.seeds.split(",")]
  args.out = os.path.abspath(args.out)  # the runs start in the repository's root
  start = time.time()
  results = []
  for s in seeds:
    warm, before = shared_start(s, args, overrides)
    results += [run(m, s, args, overrides, warm, before) for m in modes]
  os.makedirs(args.out, exist_ok=True)
  plot(results, os.path.join(args.out, "learning.png"))
  summary: dict = {"seeds": seeds, "cpu": cpu_name(), "config": args.config}
  print(f"\n{'mode':<11} {'success before':>16} {'success after':>16}  gain per seed")
  for m in modes:
    rs = [r for r in results if r["mode"] == m]
    (b, bs), (a, as_) = (
      mean_std([r["success_before"] for r in rs]),
      mean_std([r["success_after"] for r in rs]),
    )
    gains = [r["gain"] for r in rs]
    summary[f"gain_{m}"] = statistics.fmean(gains)
    print(
      f"{m:<11} {b:>8.3f} ± {bs:.3f} {a:>8.3f} ± {as_:.3f}  " + " ".join(f"{g:+.3f}" for g in gains)
    )
    types = sorted({t for r in rs for t in r["by_type_after"]})
    for t in types:
      before = statistics.fmean(r["by_type_before"].get(t, 0.0) for r in rs)
      after = statistics.fmean(r["by_type_after"].get(t, 0.0) for r in rs)
      print(f"    {t:<34} {before:.3f} -> {after:.3f}")
  if "jerp" in modes and "grpo" in modes:
    diffs = [
      next(r for r in results if r["mode"] == "jerp" and r["seed"] == s)["success_after"]
      - next(r for r in results if r["mode"] == "grpo" and r["seed"] == s)["success_after"]
      for s in seeds
    ]
    summary["jerp_minus_grpo"] = dict(zip(("mean", "std"), mean_std(diffs)))
    print(f"jerp - grpo (final success, paired by seed): {summary['jerp_minus_grpo']}")
  summary["seconds"] = time.time() - start
  print(f"curves: {os.path.join(args.out, 'learning.png')}")
  print(json.dumps({**summary, "runs": results}))


if __name__ == "__main__":
  main()
