import dataclasses
import json

import pytest

from jerp_jax.envs import alfworld, base, registry
from jerp_jax.envs.alfworld import data as data_lib
from jerp_jax.envs.alfworld import engine


@pytest.fixture(scope="module")
def env():
  env = alfworld.make_env({"name": "alfworld", "max_steps": 50})
  yield env
  env.close()


def _walkthrough(task):
  return json.loads(open(task.payload).read())["walkthrough"]


def _play(env, task, actions):
  results = [env.reset(task)]
  for action in actions:
    results.append(env.step(action))
  return results


def test_walkthroughs_win_on_real_games_of_every_type(env, real_subset):
  assert {t.task_type for t in real_subset} == set(data_lib.TASK_TYPES)
  for task in real_subset:
    walkthrough = _walkthrough(task)
    first = env.reset(task)
    assert not first.done and not first.won and first.task_type == task.task_type
    for i, action in enumerate(walkthrough):
      assert env.expert_action() == action
      result = env.step(action)
      last = i == len(walkthrough) - 1
      assert (result.won, result.done, result.reward, result.score) == (
        (True, True, 1.0, 1.0) if last else (False, False, 0.0, 0.0)
      ), (task.key, i, action)
    assert env.expert_action() is None


def test_first_observation_splits_off_the_task(env, real_tasks):
  task = real_tasks[0]  # look_at_obj_in_light-AlarmClock-None-DeskLamp-303
  result = env.reset(task)
  assert result.task_text == "examine the alarmclock with the desklamp."
  assert result.observation.startswith("You are in the middle of a room. Looking quickly around")
  assert "Your task is to" not in result.observation and "Welcome" not in result.observation
  assert result.admissible[:2] == ("go to bed 1", "go to desk 1")
  assert "help" not in result.admissible and "look" in result.admissible
  assert result.info == {"gamefile": task.payload}


def test_invalid_command_changes_nothing(env, real_tasks):
  first = env.reset(real_tasks[0])
  result = env.step("fly to the moon")
  assert result.observation == "Nothing happens."
  assert (result.won, result.done, result.reward) == (False, False, 0.0)
  assert result.admissible == first.admissible


def test_deterministic_per_task(env, real_subset):
  task = real_subset[4]
  actions = ["look", "inventory"] + _walkthrough(task)
  first = _play(env, task, actions)
  other = alfworld.make_env({})
  try:
    assert _play(other, task, actions) == first  # a fresh env
  finally:
    other.close()
  assert _play(env, task, actions) == first  # the same env, warm cache


def test_planner_expert_takes_over_off_the_walkthrough(env, real_subset):
  task = real_subset[6]  # pick_clean_then_place_in_recep
  env.reset(task)
  result = env.step("inventory")  # departs from the walkthrough
  steps = 0
  while not result.done and steps < 20:
    result = env.step(env.expert_action())
    steps += 1
  assert result.won and result.reward == 1.0
  assert steps == len(_walkthrough(task))  # inventory changed nothing: same plan length


def test_registry_env_has_the_step_limit(real_subset):
  config = alfworld.get_config()
  config.max_steps = 2
  env = registry.make_env(config.to_dict())
  try:
    assert isinstance(env, base.TimeLimit)
    env.reset(real_subset[0])
    assert env.step("look").done is False
    result = env.step("look")
    assert (result.done, result.won, result.failure) == (True, False, "step limit 2")
  finally:
    env.close()


def test_corrupt_game_at_reset_names_the_file(env, tmp_path):
  path = tmp_path / "game.tw-pddl"
  path.write_text(json.dumps({"pddl_domain": "(define", "grammar": "x", "pddl_problem": "y"}))
  task = base.Task("alfworld", "train", "bad/game.tw-pddl", "pick_and_place_simple", str(path))
  with pytest.raises(ValueError, match=str(path)):
    env.reset(task)


def test_cache_is_bounded(real_subset):
  engine._GAMES.clear()
  env = engine.AlfWorldEnv(cache_size=2)
  try:
    for task in real_subset[:3]:
      env.reset(task)
    assert list(engine._GAMES) == [t.payload for t in real_subset[1:3]]
  finally:
    env.close()


def test_step_result_is_plain_data(env, real_subset):
  result = env.reset(real_subset[0])
  assert isinstance(result.admissible, tuple)
  assert all(isinstance(a, str) for a in result.admissible)
  assert dataclasses.asdict(result)["task_type"] == real_subset[0].task_type
