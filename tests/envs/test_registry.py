import pytest

from jerp_jax.envs import registry
from tests.envs import fake_env


def test_load_split_takes_the_first_tasks_of_a_known_split():
  tasks = registry.load_split(fake_env.get_config(), "train", "jerp.train_split", limit=3)
  assert [t.key for t in tasks] == ["t0", "t1", "t2"]
  assert len(registry.load_split(fake_env.get_config(), "train", "x")) == 4  # limit 0: all


def test_an_unknown_or_empty_split_is_one_line_naming_the_field(monkeypatch):
  config = fake_env.get_config()
  with pytest.raises(ValueError) as e:
    registry.load_split(config, "test", "--split")
  assert str(e.value) == (
    "--split='test' is not a split of tests.envs.fake_env; expected one of ('train',)"
  )
  monkeypatch.setattr(fake_env, "load_tasks", lambda config, split: [])
  with pytest.raises(ValueError) as e:
    registry.load_split(config, "train", "jerp.train_split")
  assert str(e.value) == "jerp.train_split='train': that split of tests.envs.fake_env has no tasks"
