import pytest

from jerp_jax.envs import curriculum


def test_stages_change_the_env_from_their_epoch_on():
  from configs import tiny

  env = tiny.get_config().env
  stages = curriculum.parse(
    env, ("2: max_steps=5 generated.max_receptacles=8", "4: task_types=(1,2)"), "c"
  )
  assert stages == [
    (2, [("max_steps", 5), ("generated.max_receptacles", 8)]),
    (4, [("task_types", (1, 2))]),
  ]
  at = [curriculum.env_at(env, stages, e) for e in (0, 1, 2, 3, 4)]
  assert [e.max_steps for e in at] == [3, 3, 5, 5, 5]
  assert [e.generated.max_receptacles for e in at] == [30, 30, 8, 8, 8]
  assert at[4].task_types == (1, 2) and at[3].task_types == env.task_types
  assert env.max_steps == 3  # the block itself is left alone


@pytest.mark.parametrize(
  "bad, why",
  [
    (("2 max_steps=5",), "expected 'EPOCH: FIELD=VALUE ...'"),
    (("2: max_stepz=5",), "KeyError"),
    (("2: max_steps",), "has no '='"),
    (("3: max_steps=5", "2: max_steps=6"), "rise stage by stage"),
    (("1: max_steps=five",), "ValueError"),
  ],
)
def test_bad_stages_fail_naming_the_stage(bad, why):
  from configs import tiny

  with pytest.raises(ValueError, match=rf"^jerp\.curriculum\[\d\]=.*{why}"):
    curriculum.parse(tiny.get_config().env, bad, "jerp.curriculum")
