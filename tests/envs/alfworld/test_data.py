import json
import logging
import shutil

import pytest

from jerp_jax.envs import alfworld, registry
from jerp_jax.envs.alfworld import data as data_lib


def _config(data_dir, task_types=(1, 2, 3, 4, 5, 6)):
  config = alfworld.get_config()
  config.data_dir = str(data_dir)
  config.task_types = task_types
  return config


def _copy_games(real_root, dest, names):
  """Copies the named task folders of the shared train split into dest/json_2.1.1/train."""
  split = real_root / "json_2.1.1" / "train"
  for name in names:
    shutil.copytree(split / name, dest / "json_2.1.1" / "train" / name)
  return dest / "json_2.1.1" / "train"


def _first_folders(real_root, count):
  return sorted(p.name for p in (real_root / "json_2.1.1" / "train").iterdir())[:count]


def test_registry_interface():
  module = registry.env_module("alfworld")
  assert module.SPLITS == ("train", "eval_in_distribution", "eval_out_of_distribution")
  assert module.TASK_TYPES == (
    "pick_and_place_simple",
    "look_at_obj_in_light",
    "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep",
    "pick_cool_then_place_in_recep",
    "pick_two_obj_and_place",
  )
  config = module.get_config()
  assert (config.name, config.data_dir, config.max_steps) == ("alfworld", "", 50)
  assert tuple(config.task_types) == (1, 2, 3, 4, 5, 6)
  assert config.generated.cache_dir.endswith(".cache/jerp_jax/alfworld")


def test_discovers_all_shared_games(real_tasks):
  assert len(real_tasks) == 300
  counts = {t: sum(task.task_type == t for task in real_tasks) for t in alfworld.TASK_TYPES}
  assert counts == {t: 50 for t in alfworld.TASK_TYPES}
  keys = [t.key for t in real_tasks]
  assert keys == sorted(keys) and len(set(keys)) == 300
  first = real_tasks[0]
  assert first.env == "alfworld" and first.split == "train"
  assert first.key.count("/") == 2 and first.key.endswith("/game.tw-pddl")
  assert first.payload.endswith(first.key)


def test_data_dir_may_be_json_folder_itself(real_root):
  tasks = alfworld.load_tasks(_config(real_root / "json_2.1.1", (2,)), "train")
  assert len(tasks) == 50
  assert {t.task_type for t in tasks} == {"look_at_obj_in_light"}


def test_task_type_filter_by_id_and_name(real_root):
  tasks = alfworld.load_tasks(_config(real_root, (1, "pick_two_obj_and_place")), "train")
  assert len(tasks) == 100
  assert {t.task_type for t in tasks} == {"pick_and_place_simple", "pick_two_obj_and_place"}


@pytest.mark.parametrize("bad", [(7,), (0,), ("pick_and_place_with_movable_recep",), ()])
def test_unknown_task_type_fails(real_root, bad):
  with pytest.raises(ValueError, match="env.task_types"):
    alfworld.load_tasks(_config(real_root, bad), "train")


def test_unknown_split_fails(real_root):
  with pytest.raises(ValueError, match=r"split='valid_seen'.*expected one of"):
    alfworld.load_tasks(_config(real_root), "valid_seen")


def test_missing_split_folder_fails(real_root):
  # The shared sample holds train only: the eval splits must fail naming the folder they need.
  with pytest.raises(ValueError, match="valid_unseen"):
    alfworld.load_tasks(_config(real_root), "eval_out_of_distribution")


def test_missing_data_dir_fails(tmp_path):
  with pytest.raises(ValueError, match="is not a folder"):
    alfworld.load_tasks(_config(tmp_path / "nowhere"), "train")


def test_empty_data_folder_fails(tmp_path):
  (tmp_path / "json_2.1.1" / "train").mkdir(parents=True)
  with pytest.raises(ValueError, match="no playable ALFWorld games"):
    alfworld.load_tasks(_config(tmp_path), "train")


def test_bad_games_are_skipped_with_a_log(real_root, tmp_path, caplog):
  names = _first_folders(real_root, 4)
  split = _copy_games(real_root, tmp_path, names)
  games = sorted(split.glob("*/*/game.tw-pddl"))
  games[0].write_text("{not json")
  data = json.loads(games[1].read_text())
  del data["pddl_problem"]
  games[1].write_text(json.dumps(data))
  data = json.loads(games[2].read_text())
  data["solvable"] = False
  games[2].write_text(json.dumps(data))
  with caplog.at_level(logging.WARNING):
    tasks = alfworld.load_tasks(_config(tmp_path), "train")
  assert [t.payload for t in tasks] == [str(games[3])]
  log = caplog.text
  assert str(games[0]) in log and "not a readable JSON game file" in log
  assert str(games[1]) in log and "'pddl_problem' is missing" in log
  assert str(games[2]) in log and "solvable=False" in log


def test_all_games_bad_fails(real_root, tmp_path):
  split = _copy_games(real_root, tmp_path, _first_folders(real_root, 1))
  next(split.glob("*/*/game.tw-pddl")).write_text("[]")
  with pytest.raises(ValueError, match=r"no playable ALFWorld games.*\(1 skipped\)"):
    alfworld.load_tasks(_config(tmp_path), "train")


def test_read_game_names_the_field(tmp_path):
  path = tmp_path / "game.tw-pddl"
  path.write_text(json.dumps({"pddl_domain": "x", "grammar": "y", "pddl_problem": 3}))
  with pytest.raises(ValueError, match=r"game.tw-pddl: field 'pddl_problem'"):
    data_lib.read_game(path)


def test_full_release_layout_reads_traj_data(real_root, tmp_path):
  # The full release has traj_data.json beside the game: its task_type wins over the folder
  # name, and movable-receptacle / sliced folders are skipped as alfworld does.
  name = _first_folders(real_root, 1)[0]  # a look_at_obj_in_light folder
  split = _copy_games(real_root, tmp_path, [name])
  trial = next(split.glob("*/*"))
  (trial / "traj_data.json").write_text(json.dumps({"task_type": "pick_and_place_simple"}))
  shutil.copytree(split / name, split / ("pick_and_place_with_movable_recep-" + name))
  tasks = alfworld.load_tasks(_config(tmp_path), "train")
  assert [(t.key.split("/")[0], t.task_type) for t in tasks] == [(name, "pick_and_place_simple")]
