"""Command line: write N verified ALFWorld games in the standard layout.

  python -m jerp_jax.envs.alfworld.generate --out=DIR --num=N --seed=S

writes DIR/json_2.1.1/<split folder>/<task_type>-<Object>-None-<Receptacle>-<scene>/<trial>/
game.tw-pddl, which `env.data_dir=DIR` then reads like ALFWorld's own data. All the work is in
gen.py; this module only parses flags.
"""

from __future__ import annotations

import pathlib

from absl import app, flags

from jerp_jax.envs.alfworld import data as data_lib
from jerp_jax.envs.alfworld import gen

_OUT = flags.DEFINE_string("out", None, "Folder to write json_2.1.1/ into.", required=True)
_NUM = flags.DEFINE_integer("num", 60, "Number of games.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed: the same seed writes byte-identical files.")
_SPLIT = flags.DEFINE_enum(
  "split",
  "train",
  list(data_lib.SPLITS),
  "Split to write (eval_out_of_distribution uses ALFRED's unseen floor plans).",
)
_TASK_TYPES = flags.DEFINE_list(
  "task_types", ["1", "2", "3", "4", "5", "6"], "ALFWorld task-type ids 1-6 (or names)."
)
_MAX_RECEPTACLES = flags.DEFINE_integer("max_receptacles", gen.Knobs.max_receptacles, "")
_MIN_DISTRACTORS = flags.DEFINE_integer("min_distractors", gen.Knobs.min_distractors, "")
_MAX_DISTRACTORS = flags.DEFINE_integer("max_distractors", gen.Knobs.max_distractors, "")
_MAX_TARGET_COPIES = flags.DEFINE_integer("max_target_copies", gen.Knobs.max_target_copies, "")


def _task_types(values: list[str]) -> tuple:
  return tuple(int(v) if v.isdigit() else v for v in values)


def main(argv):
  del argv
  knobs = gen.Knobs(
    max_receptacles=_MAX_RECEPTACLES.value,
    min_distractors=_MIN_DISTRACTORS.value,
    max_distractors=_MAX_DISTRACTORS.value,
    max_target_copies=_MAX_TARGET_COPIES.value,
  )
  split_dir = pathlib.Path(_OUT.value) / data_lib.DATA_FOLDER / data_lib.SPLIT_FOLDERS[_SPLIT.value]
  paths = gen.generate_split(
    split_dir,
    _NUM.value,
    _SEED.value,
    data_lib.task_type_names(_task_types(_TASK_TYPES.value)),
    knobs,
    gen.scenes_for(_SPLIT.value),
    tag=_SPLIT.value,
  )
  print(f"wrote {len(paths)} games under {split_dir}")


if __name__ == "__main__":
  app.run(main)
