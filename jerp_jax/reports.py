"""What a run writes for people: metrics.jsonl and TensorBoard, the epoch and evaluation lines,
the learning-curve plot. The figures themselves come from `episodes.figures`.

This module only records and draws; it never plays an episode.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import tensorboardX
from flax import traverse_util


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
  ax.set(xlabel="epoch", ylabel="success rate", ylim=(-0.02, 1.02),
         title=title or "Evaluation success by task type")  # fmt: skip
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="best")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def figures_text(f: dict[str, Any]) -> str:
  """Figures as printed: a line of rates, then success by task type."""
  lines = [f"  success {f['success']:.3f}  score {f['score']:.3f}  reward {f['reward']:+.2f}  "
           f"invalid {f['invalid_rate']:.3f}  mean length {f['mean_length']:.1f}  "
           f"faults {f['faults']}"]  # fmt: skip
  return "\n".join(lines + [f"  {t:<36} {rate:.3f}" for t, rate in f["success_by_type"].items()])


def eval_line(figs: dict[str, Any]) -> str:
  after = " after the warm start" if figs.get("after_warm_start") else ""
  return (
    f"eval  epoch {figs['epoch']:3d}{after}  {figs['split']}: success {figs['success']:.3f}  "
    f"score {figs['score']:.3f}  invalid {figs['invalid_rate']:.3f}  "
    f"length {figs['mean_length']:.1f}  ({figs['episodes']} episodes, {figs['seconds']:.0f}s)"
  )


def warm_start_line(r: dict[str, Any]) -> str:
  return (
    f"warm start: {r['steps']} steps on {r['turns']} demonstrated turns of {r['won']}/"
    f"{r['demonstrations']} expert wins, loss {r['loss_first']:.3f} -> {r['loss_last']:.3f} "
    f"[{r['seconds']:.0f}s]"
  )


def epoch_line(record: dict[str, Any], epochs: int) -> str:
  t, r = record["train"], record["rollout"]
  parts = [f"epoch {record['epoch']:3d}/{epochs}", f"success {t['success']:.3f}",
           f"reward {t['reward']:+.2f}", f"invalid {t['invalid_rate']:.3f}"]  # fmt: skip
  if x := record.get("rules"):
    edited = x.get("applied_edit", 0) + x.get("applied_merge", 0)
    parts.append(f"rules +{x.get('applied_add', 0)} ~{edited} -{x.get('applied_remove', 0)} "
                 f"(pool {x['pool_size']})")  # fmt: skip
    if k := x.get("check"):  # jerp.check_revisions: the greedy check of the revised rules
      parts.append(f"{'kept' if k['kept'] else 'undone'}: {k['success']:.2f} vs "
                   f"{k['success_before']:.2f} before")  # fmt: skip
  parts += [f"{r['tokens_per_s']:.0f} tok/s", f"{r['env_steps_per_s']:.0f} env steps/s"]
  if u := record.get("update"):
    parts.append(f"update {u['update_seconds']:.1f}s")
    if u.get("no_signal"):
      parts.append("(no signal: all advantages 0)")
    elif "loss" in u:
      parts.append(f"loss {u['loss']:+.4f}")
  return "  ".join(parts + [f"[{record['seconds']:.0f}s]"])


class MetricsWriter:
  """One JSON line per record in metrics.jsonl, and the scalars in TensorBoard.

  `enabled=False` (every process of a multi-host run but process 0) writes nothing at all."""

  def __init__(self, workdir: str, resume_epoch: int | None, enabled: bool = True):
    self.path, self.enabled, self.tb = os.path.join(workdir, "metrics.jsonl"), enabled, None
    if not enabled:
      return
    if os.path.exists(self.path):
      # Records past the restored checkpoint belong to an epoch that will run again.
      with open(self.path) as f:
        keep = [line for line in f if resume_epoch is not None and line.strip()
                and json.loads(line).get("epoch", 0) <= resume_epoch]  # fmt: skip
      with open(self.path, "w") as f:
        f.writelines(keep)
    self.tb = tensorboardX.SummaryWriter(os.path.join(workdir, "tb"))

  def write(self, record: dict[str, Any]) -> None:
    if not self.enabled:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    for key, value in traverse_util.flatten_dict(record, sep="/").items():
      if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch":
        self.tb.add_scalar(key, value, int(record.get("epoch", 0)))
    self.tb.flush()

  def close(self) -> None:
    if self.tb is not None:
      self.tb.close()


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
