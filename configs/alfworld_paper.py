"""The paper's ALFWorld setting: Qwen2.5-1.5B-Instruct with LoRA 64/64, group 8, 256 trajectories.

Needs the model as a local Hugging Face folder and the real ALFWorld data (`alfworld-download`):

  python -m jerp_jax.main --config=configs/alfworld_paper.py --workdir=runs/alfworld \
      --config.model.path=/data/Qwen2.5-1.5B-Instruct --config.env.data_dir=/data/alfworld

Settings from the paper: group size 8, 50 steps per episode, lr 3e-6, LoRA rank 64 / alpha 64,
discount 0.95, 256 trajectories (32 tasks × 8) per update, 200 epochs. Sized for an accelerator
(bfloat16 is chosen automatically there); on a CPU it runs, very slowly.
"""

import ml_collections

from configs import default
from jerp_jax.agent import prompt
from jerp_jax.envs import alfworld


def get_config() -> ml_collections.ConfigDict:
  c = default.get_config()
  c.model.preset = "qwen2.5-1.5b-instruct"
  c.model.path = ""  # required: --config.model.path=/path/to/Qwen2.5-1.5B-Instruct
  c.model.max_seq_len = 4096
  c.model.lora.rank = 64
  c.model.lora.alpha = 64.0
  c.sampling.max_new_tokens = 512
  c.sampling.temperature = 1.0
  # The sampler's own default, which the CPU default turns off: here 8 copies of a task share its
  # long head (system text, task, rules) every turn.
  c.sampling.prefix_cache = True
  c.env = alfworld.get_config()  # ALFWorld's six task types, full-size rooms
  c.env.max_steps = 50
  c.env.generated.num_train = 3553  # the size of ALFWorld's train split, when generating
  c.env.generated.num_eval_in_distribution = 140
  c.agent = prompt.get_config()  # the <think>…</think><action>…</action> format
  c.agent.history_window = 2
  c.rules.reviser.max_new_tokens = 256
  c.rules.reviser.answer_prefix = ""  # a 1.5B model writes its edits in full
  c.rules.reference.seed_from_expert = False  # references: the agent's own successes
  c.rules.reviser.max_prompt_chars = 12000
  c.rl.advantages.gamma = 0.95
  c.rl.learner.lr = 3e-6  # the paper (verl-agent's ALFWorld examples use 1e-6)
  # Peer values: verl-agent's GiGPO and GRPO ALFWorld examples
  # (examples/{gigpo,grpo}_trainer/run_alfworld.sh) set actor.ppo_mini_batch_size=256, counted in
  # env steps (each step of each trajectory is one sample there, rollout.n=1), with verl's default
  # ppo_epochs=1 and no shuffle; the same scripts use clip 0.2 and a 0.01 low_var_kl (k3) loss,
  # this project's rl.learner.loss defaults. The paper's "batch 256 / 64" is the same pair of
  # numbers; we read it as trajectories per update (jerp.tasks_per_epoch x group_size).
  # micro_batch_size is this project's choice (verl-agent: 32 per GPU on 4 GPUs).
  c.rl.learner.micro_batch_size = 8
  c.rl.learner.mini_batch_size = 256  # turns per optimiser step
  c.rl.learner.ppo_epochs = 1
  c.jerp.epochs = 200
  c.jerp.tasks_per_epoch = 32
  c.jerp.group_size = 8
  c.jerp.max_update_turns = 0
  c.jerp.warm_start.steps = 0  # the paper starts RL from the instruct model
  c.jerp.eval_limit = 0
  c.jerp.eval_every = 10
  return c
