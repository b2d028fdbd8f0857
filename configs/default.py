"""The embedded default: a complete JERP run of SmolLM2-135M-Instruct on generated ALFWorld games.

Runs on a fresh 2-core CPU with no download, in about ten minutes: `python -m jerp_jax.main`. It
evaluates the untrained model, clones the expert (the warm start), runs one JERP epoch and
evaluates again. It is sized for that budget (easy rooms, short episodes, few tasks, LoRA rank 8,
a sample of turns per update), not to reproduce the paper: `configs/alfworld_paper.py` and `configs/webshop_paper.py` hold the
paper's settings. Override any field from the command line, e.g. `--config.jerp.mode=grpo` or
`--config.model.path=/data/Qwen2.5-1.5B-Instruct --config.model.preset=qwen2.5-1.5b-instruct`.
"""

import ml_collections

from jerp_jax import checkpoint, jerp, rules
from jerp_jax.agent import prompt
from jerp_jax.envs import actions, alfworld, pool
from jerp_jax.model import config as model_config
from jerp_jax.parallel import mesh
from jerp_jax.rl import advantages, learner
from jerp_jax.sampling import sampler


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = model_config.get_config()
  c.model.max_seq_len = 1024
  c.model.lora.rank = 8
  c.model.lora.alpha = 16.0
  c.mesh = mesh.get_config()
  # Rollout sampling: GRPO needs different answers within a group, but at temperature 1 a 135M
  # model mostly rambles; 0.8 keeps it near the format. Answers stop at the closing action tag.
  c.sampling = sampler.get_config()
  c.sampling.max_new_tokens = 24
  c.sampling.temperature = 0.8
  c.sampling.stop_strings = ("</action>",)
  # Shared prompt heads do not pay here: what an episode's turns share (system text and task,
  # ~50 tokens) is under one 64-token block, and prefilling a group's shared rows first costs a
  # second call per turn. Without them benchmarks/rollout.py's timed rounds ran 1.05x (float32)
  # and 1.14x (bfloat16) faster, its first round, which compiles, 1.4x and 2.0x (AMD EPYC,
  # 2026-12-03).
  c.sampling.prefix_cache = False
  # The default's prompts are 176-233 tokens: multiples of 64 pad most calls to 256, multiples
  # of 16 to the longest row plus at most 15. benchmarks/rollout.py, Intel Xeon, bfloat16
  # (2026-12-05): prefill 6.1-6.3 s against 7.1 s a round, speedup 2.97-3.02x against 2.79x;
  # 10 programs against 6, which the first round pays for (59 s against 41 s).
  c.sampling.prompt_bucket = 16
  # ALFWorld games generated offline (env.data_dir=''); point data_dir at a json_2.1.1 release
  # for the real games. `configs/webshop.py` swaps in WebShop.
  c.env = alfworld.get_config()
  # Rooms a 135M model can learn to win on a CPU budget: pick-and-place only, 5 receptacles,
  # 0-2 distractors, 10 steps (the expert needs 4-6). Full-size generated rooms (30 receptacles,
  # 8-25 distractors) are never won by it, so RL there has no signal; `jerp.curriculum` can
  # raise these from an epoch on.
  c.env.task_types = (1,)
  c.env.max_steps = 10
  c.env.generated.max_receptacles = 5
  c.env.generated.min_distractors = 0
  c.env.generated.max_distractors = 2
  c.env.generated.num_train = 16
  c.env.generated.num_eval_in_distribution = 8
  c.pool = pool.get_config()
  c.actions = actions.get_config()
  c.agent = prompt.get_config()
  # A 135M model has no room to think in 24 tokens: ask for the action alone, and start its
  # answer with the opening tag (without it, SmolLM2-135M never answers in the format).
  c.agent.answer_format = "Reply with the best admissible action inside <{tag}> </{tag}>, for example <{tag}>look</{tag}>."
  c.agent.response_prefix = "<{tag}>"
  # ...and decode it under the turn's admissible actions: untrained, it writes "take garbagecan
  # 1" or loops on "Nothing happens."; constrained, every answer is a legal move it chose.
  c.agent.admissible_only = True
  c.agent.history_window = 1
  c.agent.max_observation_chars = 240
  c.agent.max_admissible = 20  # short prompts: the update costs time in proportion to them
  c.rules = rules.get_config()
  c.rules.reference.seed_from_expert = True  # the reviser needs a success to compare with
  c.rules.retrieval.top_k = 3  # rules per prompt: short prompts on a CPU
  # One short sentence of advice: a 135M writer given 300 characters runs on and repeats itself.
  c.rules.pool.max_rule_chars = 120
  c.rules.reviser.max_new_tokens = 64
  # SmolLM2-135M never writes the edit format by itself: the reviser decodes under each group's
  # edit grammar (rules.reviser.constrained, the default), so every line is a well-formed edit;
  # which edit, scope, id and words are still the model's own.
  c.rules.reviser.max_prompt_chars = 2800  # ~800 tokens: within max_seq_len with the answer
  c.rl = ml_collections.ConfigDict()
  c.rl.advantages = advantages.get_config()
  c.rl.learner = learner.get_config()
  c.rl.learner.lr = 1e-4
  c.rl.learner.micro_batch_size = 4
  # This project's choice, sized for the CPU run: the (at most) 16 turns of an update
  # (jerp.max_update_turns) in 2 optimiser steps of 8, one pass, so the second step's PPO ratio
  # is off 1 and clipping can act.
  c.rl.learner.mini_batch_size = 8
  c.rl.learner.ppo_epochs = 1
  # No KL term. Its anchor is the model with its adapters off, that is the untrained model, which
  # would pull the cloned policy back to where it never won (KL 0.65 in the default's update at
  # kl_coef=0.01). DAPO (Yu et al., 2025) drops the term as well; it also saves the anchor's pass.
  c.rl.learner.loss.kl_coef = 0.0
  c.jerp = jerp.get_config()
  # One epoch: 8 episodes, one update (2 optimiser steps) and a revision fit the 10-minute
  # budget after the warm start; more epochs: --config.jerp.epochs=N.
  c.jerp.epochs = 1
  c.jerp.tasks_per_epoch = 4
  c.jerp.group_size = 2
  c.jerp.max_update_turns = 16
  c.jerp.eval_limit = 8
  c.jerp.eval_every = 0
  # The 135M writer's rules are no advice, and one can wreck greedy play: a revision is kept
  # only if the epoch's tasks, played greedily, go no worse with it (jerp.check_revisions).
  c.jerp.check_revisions = True
  # Behaviour cloning of the expert's 74 turns on the 16 training games before RL: without it
  # the model never wins, and GRPO has no signal. 12 steps of 8 turns at a high LoRA rate take
  # the demonstrated tokens' NLL from 0.80 to 0.12 in ~3 minutes on 2 cores.
  c.jerp.warm_start.steps = 12
  c.jerp.warm_start.lr = 2e-3
  c.checkpoint = checkpoint.get_config()
  # What `python -m jerp_jax.main --mode=generate` answers, greedily.
  c.generate = ml_collections.ConfigDict()
  c.generate.temperature = 0.0
  c.generate.max_new_tokens = 64
  c.generate.prompts = (
    "What is the capital of France?",
    "You are in a kitchen. Your task is to: put a clean mug in the coffeemachine. "
    "What is your first action?",
  )
  return c
