import json
import pathlib
import random
import re

import pytest

from jerp_jax.envs import alfworld
from jerp_jax.envs.alfworld import data as data_lib
from jerp_jax.envs.alfworld import engine, gen

FOLDER = re.compile(r"^(\w+)-([A-Za-z]+)-None-([A-Za-z]+)-(\d+)$")


def _games(root: pathlib.Path) -> list[pathlib.Path]:
  return sorted(root.glob("json_2.1.1/train/*/*/game.tw-pddl"))


def test_generated_layout_and_format(generated_root):
  games = _games(generated_root)
  assert len(games) == 6
  types = []
  for path in games:
    folder = path.parent.parent.name
    match = FOLDER.match(folder)
    assert match, folder
    types.append(match.group(1))
    data = json.loads(path.read_text())
    assert list(data) == ["pddl_domain", "grammar", "pddl_problem", "solvable", "walkthrough"]
    domain, grammar = gen.game_logic()
    assert data["pddl_domain"] == domain and data["solvable"] is True
    assert "UNKNOWN GOAL" not in data["grammar"] and len(data["grammar"]) > len(grammar)
    assert "(:goal" in data["pddl_problem"] and "(atLocation agent1 " in data["pddl_problem"]
    if match.group(3) in ("Fridge", "Microwave", "Cabinet", "Drawer", "Safe"):
      assert f"(openable {gen.mangle(match.group(3))}" in data["pddl_problem"]
  assert sorted(types) == sorted(data_lib.TASK_TYPES)


def test_generated_games_of_every_type_win(generated_root):
  config = alfworld.get_config()
  config.data_dir = str(generated_root)
  tasks = alfworld.load_tasks(config, "train")
  assert sorted(t.task_type for t in tasks) == sorted(data_lib.TASK_TYPES)
  env = alfworld.make_env(config.to_dict())
  try:
    for task in tasks:
      walkthrough = json.loads(open(task.payload).read())["walkthrough"]
      first = env.reset(task)
      assert not first.won and first.task_text.endswith(".")
      for i, action in enumerate(walkthrough):
        assert env.expert_action() == action
        result = env.step(action)
        assert result.won == (i == len(walkthrough) - 1), (task.key, i, action)
      assert (result.done, result.reward, result.score) == (True, 1.0, 1.0)
  finally:
    env.close()


def test_generation_is_deterministic_by_seed(generated_root, tmp_path):
  again = tmp_path / "again"
  gen.generate_split(again / "json_2.1.1" / "train", 6, seed=7, progress=False)
  ours, theirs = _games(generated_root), _games(again)
  assert [p.relative_to(generated_root) for p in ours] == [p.relative_to(again) for p in theirs]
  assert all(a.read_bytes() == b.read_bytes() for a, b in zip(ours, theirs))

  other = tmp_path / "other"
  gen.generate_split(other / "json_2.1.1" / "train", 2, seed=8, progress=False)
  assert [p.read_bytes() for p in _games(other)] != [p.read_bytes() for p in ours[:2]]


def test_task_options_respect_the_room():
  kitchen, bedroom = gen.scene(1), gen.scene(303)
  heat = gen.task_options("pick_heat_then_place_in_recep", kitchen)
  assert heat and all(
    s.obj in {"Apple", "Bread", "Cup", "Egg", "Mug", "Plate", "Potato", "Tomato"} for s in heat
  )
  assert gen.task_options("pick_heat_then_place_in_recep", bedroom) == []  # no microwave
  look = gen.task_options("look_at_obj_in_light", bedroom)
  assert look and {s.toggle for s in look} == {"DeskLamp"}
  assert gen.task_options("look_at_obj_in_light", kitchen) == []  # no desk lamp


def test_room_never_starts_solved_and_keeps_task_receptacles():
  knobs = gen.Knobs(max_receptacles=5, min_distractors=0, max_distractors=0)
  spec = gen.TaskSpec("pick_cool_then_place_in_recep", "Apple", "DiningTable", "", 11)
  for i in range(20):
    room = gen.build_room(spec, knobs, random.Random(i))
    types = {gen.receptacle_type(r) for r in room.receptacles}
    assert {"Fridge", "DiningTable"} <= types and len(room.receptacles) <= 5
    hosts = {gen.receptacle_type(room.objects[o]) for o in room.objects if o.startswith("Apple|")}
    assert hosts and not hosts & {"Fridge", "DiningTable"}


def test_knobs_are_validated():
  with pytest.raises(ValueError, match="generated.max_receptacles=2"):
    gen.Knobs(max_receptacles=2)
  with pytest.raises(ValueError, match="min_distractors=5, max_distractors=1"):
    gen.Knobs(min_distractors=5, max_distractors=1)


def test_load_tasks_generates_into_the_cache_once(tmp_path, monkeypatch):
  config = alfworld.get_config()
  config.task_types = (1, 2)
  config.generated.cache_dir = str(tmp_path / "cache")
  config.generated.num_eval_out_of_distribution = 2
  tasks = alfworld.load_tasks(config, "eval_out_of_distribution")
  assert [t.task_type for t in tasks] == ["look_at_obj_in_light", "pick_and_place_simple"]
  assert all(int(t.key.split("/")[0].rsplit("-", 1)[1]) in gen.UNSEEN_SCENES for t in tasks)
  assert all("/valid_unseen/" in t.payload for t in tasks)

  def fail(*args, **kwargs):
    raise AssertionError("the cached split was generated again")

  monkeypatch.setattr(gen, "generate_split", fail)
  assert alfworld.load_tasks(config, "eval_out_of_distribution") == tasks
  config.generated.num_eval_out_of_distribution = 0
  with pytest.raises(ValueError, match="generated.num_eval_out_of_distribution=0"):
    alfworld.load_tasks(config, "eval_out_of_distribution")


def test_verifier_rejects_a_wrong_walkthrough(generated_root):
  path = _games(generated_root)[0]
  data = json.loads(path.read_text())
  verifier = gen.Verifier()
  game, _ = verifier.names(data)
  assert verifier.wins(game, data["walkthrough"]) is True
  assert verifier.wins(game, data["walkthrough"][:-1]) is False
  assert verifier.wins(game, ["look"] + data["walkthrough"][1:]) is False
  assert engine.cached_game(str(path)).walkthrough == tuple(data["walkthrough"])
