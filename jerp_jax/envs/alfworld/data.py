"""Finds ALFWorld game files on disk and turns them into Tasks.

Owns the standard layout (`json_2.1.1/{train,valid_seen,valid_unseen}/<task folder>/<trial>/
game.tw-pddl`), the split and task-type names, and the checks that keep bad files out of the
engine: a game that is not JSON, lacks a key, or is marked unsolvable is skipped with a log line
naming the file; a bad folder, split or task type fails at once with the value and what was
expected. It never imports TextWorld and never plays a game.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
from typing import Any, Iterable, Iterator, Sequence

from jerp_jax.envs import base

ENV_NAME = "alfworld"
DATA_FOLDER = "json_2.1.1"
GAME_FILE = "game.tw-pddl"
TRAJ_FILE = "traj_data.json"
# Our split names and the ALFWorld folders they read (train, eval in / out of distribution).
SPLIT_FOLDERS = {
  "train": "train",
  "eval_in_distribution": "valid_seen",
  "eval_out_of_distribution": "valid_unseen",
}
SPLITS = tuple(SPLIT_FOLDERS)
# ALFWorld's task-type ids 1..6, in its own order (alfworld.agents.environment.alfred_tw_env).
TASK_TYPES = (
  "pick_and_place_simple",
  "look_at_obj_in_light",
  "pick_clean_then_place_in_recep",
  "pick_heat_then_place_in_recep",
  "pick_cool_then_place_in_recep",
  "pick_two_obj_and_place",
)
REQUIRED_KEYS = ("pddl_domain", "grammar", "pddl_problem")

log = logging.getLogger(__name__)


def task_type_names(task_types: Iterable[Any]) -> tuple[str, ...]:
  """Maps the config's task types (ids 1..6 or names) to names, failing on anything else."""
  if isinstance(task_types, (str, int)):
    task_types = (task_types,)
  task_types = tuple(task_types)
  expected = ", ".join(f"{i}={name}" for i, name in enumerate(TASK_TYPES, 1))
  if not task_types:
    raise ValueError(f"env.task_types=(); expected a non-empty subset of {expected}")
  names = []
  for t in task_types:
    if isinstance(t, int) and not isinstance(t, bool) and 1 <= t <= len(TASK_TYPES):
      names.append(TASK_TYPES[t - 1])
    elif isinstance(t, str) and t in TASK_TYPES:
      names.append(t)
    else:
      raise ValueError(f"env.task_types contains {t!r}; expected ids or names from {expected}")
  return tuple(dict.fromkeys(names))


def split_folder(split: str) -> str:
  if split not in SPLIT_FOLDERS:
    raise ValueError(f"split={split!r} is not an ALFWorld split; expected one of {SPLITS}")
  return SPLIT_FOLDERS[split]


def resolve_split_dir(data_dir: str | os.PathLike, split: str) -> pathlib.Path:
  """The folder holding a split's task folders; `data_dir` may be json_2.1.1 or its parent."""
  folder = split_folder(split)
  root = pathlib.Path(os.path.expandvars(os.path.expanduser(str(data_dir))))
  if not root.is_dir():
    raise ValueError(
      f"env.data_dir={str(data_dir)!r} is not a folder; expected a folder holding "
      f"{DATA_FOLDER}/ (or {DATA_FOLDER} itself)"
    )
  candidates = (
    [root / DATA_FOLDER / folder, root / folder] if root.name != DATA_FOLDER else [root / folder]
  )
  for candidate in candidates:
    if candidate.is_dir():
      return candidate
  raise ValueError(
    f"env.data_dir={str(data_dir)!r} has no split folder for split={split!r}; "
    f"expected {' or '.join(str(c) for c in candidates)}"
  )


def task_type_of_folder(folder_name: str) -> str:
  """`pick_and_place_simple-Book-None-Desk-303` -> `pick_and_place_simple`."""
  return folder_name.split("-", 1)[0]


def _iter_game_files(split_dir: pathlib.Path) -> Iterator[pathlib.Path]:
  # Sorted walk: the task list (and so data cursors) must not depend on the file system's order.
  for root, dirs, files in os.walk(split_dir):
    dirs.sort()
    if GAME_FILE in files:
      yield pathlib.Path(root) / GAME_FILE


def read_game(path: str | os.PathLike) -> dict:
  """Reads and checks a game file; raises ValueError naming the file, the field and the fault."""
  try:
    with open(path) as f:
      data = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{path}: not a readable JSON game file ({e})") from e
  if not isinstance(data, dict):
    raise ValueError(
      f"{path}: expected a JSON object with keys {REQUIRED_KEYS}, found {type(data).__name__}"
    )
  for key in REQUIRED_KEYS:
    if not isinstance(data.get(key), str) or not data[key].strip():
      raise ValueError(f"{path}: field {key!r} is missing or not a non-empty string")
  walkthrough = data.get("walkthrough")
  if walkthrough is not None and not (
    isinstance(walkthrough, list) and all(isinstance(a, str) for a in walkthrough)
  ):
    raise ValueError(f"{path}: field 'walkthrough' must be a list of commands or null")
  return data


def _task_type_of_trial(game_file: pathlib.Path, task_folder: str) -> str:
  # The full release names the type in traj_data.json (what alfworld reads); the game-only
  # layout has it in the task folder's name.
  traj_file = game_file.parent / TRAJ_FILE
  if traj_file.is_file():
    try:
      with open(traj_file) as f:
        return str(json.load(f)["task_type"])
    except (OSError, ValueError, KeyError, TypeError) as e:
      log.warning(
        "%s: unreadable traj_data.json (%s); task type taken from the folder name", traj_file, e
      )
  return task_type_of_folder(task_folder)


def discover(split_dir: pathlib.Path, task_types: Sequence[str], split: str) -> list[base.Task]:
  """All playable games under a split folder whose type is in `task_types`, in sorted order."""
  tasks, skipped = [], 0
  for game_file in _iter_game_files(split_dir):
    rel = game_file.relative_to(split_dir)
    if len(rel.parts) < 3:
      log.warning("skipping %s: expected <task folder>/<trial>/%s", game_file, GAME_FILE)
      skipped += 1
      continue
    # alfworld does not support movable-receptacle or sliced trajectories in TextWorld.
    if "movable" in rel.parts[0] or "Sliced" in rel.parts[0]:
      skipped += 1
      continue
    task_type = _task_type_of_trial(game_file, rel.parts[0])
    if task_type not in task_types:
      continue
    try:
      data = read_game(game_file)
    except ValueError as e:
      log.warning("skipping %s", e)
      skipped += 1
      continue
    if data.get("solvable") is not True:
      # As alfworld: a game without a `solvable` verdict, or marked unsolvable, is not played.
      log.warning("skipping %s: solvable=%r", game_file, data.get("solvable"))
      skipped += 1
      continue
    tasks.append(base.Task(ENV_NAME, split, rel.as_posix(), task_type, str(game_file)))
  if not tasks:
    raise ValueError(
      f"no playable ALFWorld games of types {tuple(task_types)} under {split_dir} "
      f"({skipped} skipped); expected <task folder>/<trial>/{GAME_FILE} files"
    )
  return tasks
