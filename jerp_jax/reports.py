"""Figures of finished episodes, and the learning-curve plot: shared by evaluation and training.

This module only summarises and draws; it never plays an episode.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Sequence

from jerp_jax.envs.base import is_fault


@dataclasses.dataclass(frozen=True)
class Episode:
  task_key: str
  task_type: str
  won: bool
  score: float
  length: int
  failure: str | None


def summarize(episodes: Sequence[Episode], task_types: Sequence[str]) -> dict:
  """The figures of a run; per-type rates only for types that occurred, in the env's order."""
  by_type = collections.defaultdict(list)
  for e in episodes:
    by_type[e.task_type].append(e.won)
  order = [t for t in task_types if t in by_type] + sorted(set(by_type) - set(task_types))
  n = len(episodes)
  return {
    "episodes": n,
    "success": sum(e.won for e in episodes) / n if n else 0.0,
    "success_by_type": {t: sum(by_type[t]) / len(by_type[t]) for t in order},
    "score": 100.0 * sum(e.score for e in episodes) / n if n else 0.0,
    "mean_length": sum(e.length for e in episodes) / n if n else 0.0,
    "faults": sum(1 for e in episodes if is_fault(e.failure)),
  }


def plot_learning_curve(records: Sequence[dict], path: str, title: str = "") -> bool:
  """Success by task type (and overall) against epoch, from a run's metrics records.

  Returns False (and writes nothing) when the run has no evaluation records yet.
  """
  evals = [r["eval"] for r in records if "eval" in r]
  if not evals:
    return False
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  epochs = [e["epoch"] for e in evals]
  types = list(dict.fromkeys(t for e in evals for t in e["success_by_type"]))
  fig, ax = plt.subplots(figsize=(7, 4.2))
  for t in types:
    ys = [e["success_by_type"].get(t, float("nan")) for e in evals]
    ax.plot(epochs, ys, marker="o", linewidth=1, alpha=0.7, label=t)
  ax.plot(epochs, [e["success"] for e in evals], marker="s", color="black", linewidth=2.5,
          label="overall")  # fmt: skip
  ax.set_xlabel("epoch")
  ax.set_ylabel("success rate")
  ax.set_ylim(-0.02, 1.02)
  ax.set_title(title or "Evaluation success by task type")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="best")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def print_figures(figures: dict, header: str) -> None:
  print(f"\n{header}")
  line = (
    f"  success {figures['success']:.3f}  score {figures['score']:.1f}  "
    f"mean length {figures['mean_length']:.1f}  faults {figures['faults']}"
  )
  if "invalid_rate" in figures:
    line += f"  invalid actions {figures['invalid_rate']:.3f}"
  print(line)
  for task_type, rate in figures["success_by_type"].items():
    print(f"  {task_type:<36} {rate:.3f}")
