"""A random-weight model with SmolLM2's vocabulary and a two-epoch JERP run: tests, smoke runs."""

import ml_collections

from configs import default
from jerp_jax.envs import alfworld


def get_config() -> ml_collections.ConfigDict:
  c = default.get_config()
  c.model.preset = "tiny"
  c.model.random_init = True
  c.model.max_seq_len = 1024
  c.model.lora.rank = 4
  c.model.lora.alpha = 8.0
  c.sampling.max_new_tokens = 16
  c.sampling.prefix_cache = True  # the tests run the loop through shared heads
  # Full-size generated rooms, free answers and no warm start, as before the default took its
  # easy rooms: the tests' exact figures are of this setting.
  c.env = alfworld.get_config()
  c.agent.admissible_only = False
  c.jerp.warm_start.steps = 0
  c.jerp.warm_start.lr = 1e-4
  c.env.max_steps = 3
  c.env.generated.num_train = 4
  c.env.generated.num_eval_in_distribution = 2
  c.agent.max_observation_chars = 120
  c.agent.max_admissible = 8
  c.rules.reviser.max_new_tokens = 32
  c.rules.reviser.max_prompt_chars = 1500
  # 4: a multiple of the 4 ways a 2x2x2 mesh splits rows, so the tiny run works on it as it is.
  c.rl.learner.micro_batch_size = 4
  c.rl.learner.mini_batch_size = 4  # the 8 turns of an update in 2 steps: tests run that path
  # A random model answers invalidly every turn, so whole episodes score alike and GRPO's
  # advantages are 0; GiGPO's step-level term (same observation, different return-to-go) is not.
  c.rl.advantages.estimator = "gigpo"
  c.jerp.epochs = 2
  c.jerp.tasks_per_epoch = 2
  c.jerp.group_size = 2
  c.jerp.max_update_turns = 8
  c.jerp.eval_limit = 2
  c.jerp.check_revisions = False  # its own test (tests/test_jerp.py) scripts the two plays
  return c
