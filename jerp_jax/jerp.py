"""The JERP epoch loop, and the baselines that are the same loop with a part switched off.

    parts, state = build(config)                   # parts compute, the state is what is learned
    state, record = run_epoch(parts, state, pool, train_tasks)
    figures, episodes = evaluate(parts, state, pool, tasks, seed)
    summary = train(config, workdir)               # the whole run, resumable

One epoch: take the next tasks of the training split → play G episodes of each with the rules
retrieved for the task (`episodes.play` with `agent.policy.ModelPolicy`) → a group-relative policy
update on those turns (`rl.batch`, `rl.learner`) → keep new successes as reference trajectories →
the model revises the rule pool from the same episodes. `jerp.mode` switches parts off: `grpo`
(no rules), `rules_only` (no weight updates, ExpeL-like) and `react` (neither).

A run lives in its workdir: `checkpoints/` (orbax), `metrics.jsonl`, `tb/` (TensorBoard),
`rules.json` and `rules.md`. Starting a run in a workdir that has checkpoints resumes it from the
newest readable one: the same next tasks, the same rules, the same sampling seeds, so the resumed
run reaches the state an uninterrupted one would (tests check it after a kill mid-epoch).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from typing import Any, NamedTuple, Sequence

import jax
import ml_collections
import numpy as np

from jerp_jax import checkpoint as checkpoint_lib
from jerp_jax import checks, inference, reports
from jerp_jax import episodes as episodes_lib
from jerp_jax import rules as rules_lib
from jerp_jax import state as state_lib
from jerp_jax.agent import policy as policy_lib
from jerp_jax.agent import prompt as prompt_lib
from jerp_jax.envs import pool as pool_lib
from jerp_jax.envs import curriculum as curriculum_lib
from jerp_jax.envs import registry
from jerp_jax.model import config as model_config
from jerp_jax.parallel import hosts
from jerp_jax.parallel import mesh as mesh_lib
from jerp_jax.rl import advantages as advantages_lib
from jerp_jax.rl import batch as batch_lib
from jerp_jax.rl import clone as clone_lib
from jerp_jax.rl import learner as learner_lib
from jerp_jax.rules import embed as embed_lib
from jerp_jax.rules import index as index_lib
from jerp_jax.rules import prompt as rule_prompt
from jerp_jax.rules import reviser as reviser_lib
from jerp_jax.rules.pool import RulePool
from jerp_jax.rules.records import EXPERT
from jerp_jax.rules.reference import ReferenceStore
from jerp_jax.sampling import sampler as sampler_lib
from jerp_jax.state import RuleState, RunState, TrainState

# mode -> (rules in the prompt and revised, policy updated)
MODES = {
  "jerp": (True, True),
  "grpo": (False, True),
  "rules_only": (True, False),
  "react": (False, False),
}


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.mode = "jerp"
  c.epochs = 200
  c.train_split = "train"
  c.tasks_per_epoch = 32  # × group_size trajectories per update (the paper: 32 × 8 = 256)
  c.group_size = 8
  # 0: train on every turn. Otherwise a seeded sample of at most this many turns, those with a
  # non-zero advantage first (they carry the policy gradient): a CPU budget, not the paper's.
  c.max_update_turns = 0
  c.eval_split = ""  # '' : the env's first evaluation split
  c.eval_limit = 0  # evaluate on the first N tasks of the split (0: all)
  c.eval_every = 10  # epochs between evaluations (0: only before and after training)
  c.eval_at_start = True  # evaluate the untrained policy too: the curve's first point
  c.eval_temperature = 0.0  # greedy evaluation
  # Keep a revision only if the rules it leaves play the epoch's tasks, greedily, at least as
  # well as the rules before it (more wins, or as many in no more steps): a small writer's rule
  # can wreck greedy play (one rule took a run's held-out success from 12/32 to 0/32) while
  # sampled rollouts, which escape its loops, still win with it. This project's choice, not
  # the paper's; it costs two greedy plays of the epoch's tasks when the pool changed.
  c.check_revisions = False
  # The optional first stage: behaviour cloning from the env expert's demonstrations of training
  # tasks, written as the model's answers to its own prompts. Every mode starts from it alike.
  w = c.warm_start = ml_collections.ConfigDict()
  w.steps = 0  # optimizer steps; 0: no warm start
  w.tasks = 0  # demonstrations of the first N training tasks (0: all)
  w.batch_size = 8  # demonstrated turns per step, drawn at random
  w.lr = 1e-4
  w.target_loss = 0.0  # stop early once a step's loss (NLL per token) is at or below; 0: off
  # Instead of cloning: the workdir of a run whose warm start (its epoch-0 checkpoint) this run
  # starts from, so that several runs share one (benchmarks/learning.py); same config and seed,
  # same state as cloning again.
  w.from_run = ""
  # Evaluate again after it (an epoch-0 record marked `after_warm_start`): RL's own gain is
  # measured from there (benchmarks/learning.py). Off by default: an evaluation costs time.
  w.evaluate = False
  # Difficulty that rises over epochs: stages 'EPOCH: FIELD=VALUE ...' of env fields, each in
  # force from its epoch on (see `curriculum`), e.g. ('4: generated.max_receptacles=8',).
  c.curriculum = ()
  return c


def validate_config(c: ml_collections.ConfigDict, prefix: str = "jerp") -> None:
  count = checks.COUNT
  checks.require(c, prefix, {
    "mode": checks.one_of(MODES), "epochs": checks.saying(count, ">= 0 (0: the warm start only)"),
    "tasks_per_epoch": checks.POSITIVE_INT, "group_size": checks.POSITIVE_INT,
    "max_update_turns": count, "eval_limit": count, "eval_every": count,
    "eval_temperature": checks.saying(checks.NON_NEGATIVE, ">= 0 (0 means greedy)"),
    "check_revisions": checks.BOOL,
  })  # fmt: skip
  checks.require(c.warm_start, f"{prefix}.warm_start", {
    "steps": count, "tasks": count, "batch_size": checks.POSITIVE_INT, "lr": checks.POSITIVE,
    "target_loss": checks.saying(checks.NON_NEGATIVE, ">= 0 (0: off)"), "evaluate": checks.BOOL,
    "from_run": (f"a workdir (not with {prefix}.warm_start.steps > 0)",
                 lambda v: isinstance(v, str) and not (v and c.warm_start.steps)),
  })  # fmt: skip


def warm_started(config: ml_collections.ConfigDict) -> bool:
  return bool(config.jerp.warm_start.steps or config.jerp.warm_start.from_run)


def validate(config: ml_collections.ConfigDict, train: bool = True) -> None:
  """Every block the loop reads, checked before any model is loaded (`train=False`: what an
  evaluation reads, no learner)."""
  validate_config(config.jerp)
  model_config.runtime_options(config.model)  # e.g. a bad model.remat fails here, in one line
  sampler_lib.validate_config(config.sampling)
  prompt_lib.validate_config(config.agent)
  rules_lib.validate_config(config.rules)
  advantages_lib.validate_config(config.rl.advantages)
  learner_lib.validate_config(config.rl.learner)
  checkpoint_lib.validate_config(config.checkpoint)
  pool_lib.validate_config(config.pool)
  curriculum(config)  # a bad stage fails here, naming it
  for field in ("train_split", "eval_split"):
    if config.jerp[field]:
      registry.check_split(config.env.name, config.jerp[field], f"jerp.{field}")
  trains = MODES[config.jerp.mode][1] or warm_started(config)
  if trains and config.rl.learner.train == "lora" and config.model.lora.rank < 1:
    lora = "rl.learner.train='lora'"
    checks.fail(config.model, "model", "lora.rank", f"adapters (rank >= 1) for {lora} (the "
                "paper: rank 64, alpha 64), or rl.learner.train='full'")  # fmt: skip
  # The mesh spans the devices of every process: a shape that does not fit fails here, in one line.
  shape = mesh_lib.resolve_shape(config.mesh.shape, jax.device_count())
  rows = mesh_lib.mesh_axis_size(jax.sharding.AbstractMesh(shape, mesh_lib.AXES), "act_batch")
  if train and MODES[config.jerp.mode][1] and config.rl.learner.micro_batch_size % rows:
    checks.fail(config.rl.learner, "rl.learner", "micro_batch_size", f"a multiple of {rows}, the "
                f"ways mesh.shape={shape} splits batch rows (data × fsdp)")  # fmt: skip


def curriculum(config) -> list[curriculum_lib.Stage]:
  return curriculum_lib.parse(config.env, config.jerp.curriculum, "jerp.curriculum")


def eval_split(config) -> str:
  if config.jerp.eval_split:
    return config.jerp.eval_split
  splits = registry.env_module(config.env.name).SPLITS
  return next((s for s in splits if s != config.jerp.train_split), splits[0])


# Purposes of the seeds derived from the run's key (salts of `epoch_seed`).
TASKS, ROLLOUT, EVAL, REVISE, UPDATE, EVAL_ONLY, WARM_START, CHECK = range(8)


def epoch_seed(key: jax.Array, epoch: int, salt: int) -> int:
  """A seed per (run key, epoch, purpose): replaying an epoch samples the same way.

  The run's key is its whole RNG state: it is checkpointed, and every random choice of an epoch
  (tasks, sampling, turn subsets, revisions) derives from it, so nothing else needs saving.
  """
  k = jax.random.fold_in(jax.random.fold_in(key, epoch), salt)
  return int(jax.random.randint(k, (), 0, 2**30))  # headroom: callers add small offsets


def epoch_tasks(tasks: Sequence, cursor: int, n: int, seed: int) -> list:
  """Tasks cursor .. cursor+n-1 of the stream of seeded passes over the split (each a shuffle)."""
  out = []
  for position in range(cursor, cursor + n):
    lap, offset = divmod(position, len(tasks))
    order = np.random.default_rng([seed, lap]).permutation(len(tasks))
    out.append(tasks[int(order[offset])])
  return out


class Stage(NamedTuple):
  env: ml_collections.ConfigDict  # the env block in force
  train_tasks: list
  eval_tasks: list
  pool: Any  # an EnvPool for `env`


# --- parts ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Parts:
  """What computes on a run's state, built from the config; holds none of the state."""

  config: ml_collections.ConfigDict
  model: Any  # jerp_jax.model.llama.Decoder
  mesh: Any
  tokenizer: Any
  sampler: sampler_lib.Sampler
  learner: learner_lib.Learner | None  # None: a frozen policy, or an evaluation
  embedder: embed_lib.Embedder | None  # None: utility-only retrieval
  env: Any  # the env module (TASK_TYPES, SPLITS)
  use_rules: bool
  update_policy: bool

  @property
  def trainable_key(self) -> str | None:
    """The collection the run trains and checkpoints ('lora' or 'params'); None when no stage
    (RL or the warm start) changes the weights."""
    if not (self.update_policy or warm_started(self.config)):
      return None
    return {"lora": "lora", "full": "params"}[self.config.rl.learner.train]

  @property
  def max_prompt_tokens(self) -> int:
    return self.config.model.max_seq_len - self.config.sampling.max_new_tokens


def build(config: ml_collections.ConfigDict, train: bool = True) -> tuple[Parts, RunState]:
  """The parts of a run and its initial state (the config's weights, an empty rule pool).

  `train=False` builds what an evaluation needs: no learner and no optimizer state.
  """
  validate(config, train)
  use_rules, update_policy = MODES[config.jerp.mode]
  lm, sampler = inference.setup(config)
  lm.tokenizer.require_chat_template()  # the agent's prompts are chat: fail before any play
  learner = opt_state = None
  if update_policy and train:
    learner = learner_lib.Learner(
      lm.model, lm.mesh, lm.variables, config.rl.learner, config.sampling.temperature or 1.0
    )
    opt_state = learner.init_opt_state(lm.variables)
  embedder = None
  if use_rules and config.rules.retrieval.mode != "utility":
    embedder = embed_lib.Embedder.from_config(config.rules.embed, lm.model, lm.tokenizer)
  env = registry.env_module(config.env.name)
  parts = Parts(config, lm.model, lm.mesh, lm.tokenizer, sampler, learner, embedder, env,
                use_rules, update_policy)  # fmt: skip
  rules = RuleState(RulePool.from_config(config.rules.pool, env.TASK_TYPES),
                    ReferenceStore.from_config(config.rules.reference))  # fmt: skip
  rng = hosts.replicated(jax.random.PRNGKey(config.seed), lm.mesh)
  return parts, RunState(TrainState(lm.variables, opt_state, 0), rules, rng, config.jerp.mode)


# --- what an epoch is made of -------------------------------------------------------------------


def rule_index(parts: Parts, state: RunState) -> index_lib.RuleIndex:
  """The retrieval index of the state's rule pool (derived data, rebuilt from the pool)."""
  embed_fn = None
  if parts.embedder is not None:
    # The embedder's weights change only when the ones it embeds with do: with 'base' weights
    # and LoRA training, never; so its cache outlives policy updates.
    frozen = parts.embedder.weights == "base" and parts.config.rl.learner.train == "lora"
    version = 0 if frozen else state.train.version
    variables = state.train.variables
    embed = lambda texts: parts.embedder.embed(variables, texts, version=version)
    # Embedding is a device program over the global mesh: every process embeds the texts of all
    # (its queries differ from the others'), so their calls, caches and programs stay in step.
    embed_fn = lambda texts: hosts.rows_of_all(embed, texts)
  return index_lib.RuleIndex(state.rules.pool, parts.config.rules.retrieval, embed_fn)


def model_policy(parts: Parts, state: RunState, temperature: float) -> policy_lib.ModelPolicy:
  c = parts.config
  params = sampler_lib.SamplingParams.from_config(c.sampling, temperature=temperature)
  if not params.stop_strings:
    params = dataclasses.replace(params, stop_strings=(f"</{c.actions.tag}>",))
  train = state.train

  def generate(prompts, seed, grammar=None):
    # One batch of every process's prompts, laid out as one process holding all episodes would
    # lay it out: the same tokens are sampled whatever the number of processes.
    def run(rows):
      ids, g = zip(*rows) if rows else ((), ())
      g = None if grammar is None else list(g)
      return parts.sampler.generate(
        train.variables, list(ids), params, seed=seed, version=train.version, grammar=g
      )

    return hosts.rows_of_all(run, list(zip(prompts, grammar or [None] * len(prompts))))

  rules = None
  if parts.use_rules:
    index = rule_index(parts, state)

    def rules(task_types, texts):
      return [rule_prompt.render_rule_block(r) for r in index.retrieve_batch(task_types, texts)]

  return policy_lib.ModelPolicy(
    generate, parts.tokenizer, c.agent, c.actions, parts.max_prompt_tokens, rules
  )


def play(pool, policy, tasks, group_size: int, seed: int, desc: str) -> list:
  """`episodes.play` over the processes of a run: each plays its share of the tasks (whole
  groups) in its own pool, in lockstep, and every process gets all episodes back in the order one
  process would have played them. With one process, `episodes.play` itself."""
  mine, first = hosts.share(tasks)
  played = episodes_lib.play(
    pool, policy, mine, group_size, seed, desc=desc, first_group=first, any_live=hosts.any_process
  )
  return hosts.gather(played)


def update(parts: Parts, train: TrainState, episodes, seed: int) -> tuple[TrainState, dict]:
  """One policy update on the epoch's turns; the same state back when no turn carries signal."""
  c = parts.config
  samples, adv = batch_lib.turn_samples(episodes, c.rl.advantages, c.jerp.max_update_turns, seed)
  if not any(s.advantage for s in samples):
    # Every group scored alike: no policy gradient, so no step (the KL term alone would only
    # pull towards where the policy already is; weight decay would move it for nothing).
    return train, {"update_seconds": 0.0, "turns": 0, "skipped": 1.0, "no_signal": 1.0}
  start, learner = time.time(), parts.learner
  length = dict(max_length=c.model.max_seq_len, granularity=c.rl.learner.length_bucket)
  batch = batch_lib.pack(samples, parts.tokenizer.pad_id, learner.rows_multiple, **length)
  variables, opt_state, metrics = learner.update(train.variables, train.opt_state, batch, seed)
  metrics = {k: float(v) for k, v in metrics.items()} | {
    "update_seconds": time.time() - start, "turns": len(samples),
    "adv_mean": float(np.mean(adv)), "adv_abs": float(np.mean(np.abs(adv))),
  }  # fmt: skip
  version = train.version + (1 if metrics["steps"] else 0)  # any optimizer step changed them
  return TrainState(variables, opt_state, version), metrics


def revise(parts: Parts, state: RunState, rules: RuleState, records, epoch: int) -> dict:
  """The model revises `rules.pool` (in place: the epoch's own copy) from this epoch's episode
  records."""
  cfg = ml_collections.ConfigDict(parts.config.rules.reviser.to_dict())
  # A seed per epoch: a resumed run revises as the uninterrupted one did.
  cfg.seed = epoch_seed(state.rng, epoch, REVISE) + parts.config.rules.reviser.seed
  generate = reviser_lib.make_generate_fn(parts.sampler, state.train.variables, cfg)
  report = reviser_lib.Reviser(cfg, generate).revise(rules.pool, records, rules.references, epoch)
  return report.metrics()


def run_epoch(
  parts: Parts, state: RunState, pool, train_tasks: Sequence
) -> tuple[RunState, dict[str, Any]]:
  """One epoch: (state, its record). The given state is left as it was."""
  c = parts.config.jerp
  epoch = state.epoch + 1
  start = time.time()
  tasks = epoch_tasks(train_tasks, state.cursor, c.tasks_per_epoch, epoch_seed(state.rng, 0, TASKS))
  policy = model_policy(parts, state, parts.config.sampling.temperature)
  wall, steps = pool.stats.wall_seconds, pool.stats.steps
  episodes = play(
    pool, policy, tasks, c.group_size, epoch_seed(state.rng, epoch, ROLLOUT), f"epoch {epoch}"
  )
  # This process's rates (env steps per second the loop waits on its pool, resets included),
  # summed over the processes of the run.
  rates = (
    policy.tokens / max(policy.seconds, 1e-9),
    (pool.stats.steps - steps) / max(pool.stats.wall_seconds - wall, 1e-9),
  )
  tokens_per_s, env_steps_per_s = (sum(r) for r in zip(*hosts.gather_objects(rates)))
  rollout = {"seconds": time.time() - start, "tokens_per_s": tokens_per_s, "env_steps_per_s":
             env_steps_per_s, "env_steps": sum(e.length for e in episodes)}  # fmt: skip
  figures = episodes_lib.figures(episodes, parts.env.TASK_TYPES)
  record: dict[str, Any] = {"epoch": epoch, "train": figures, "rollout": rollout}
  train = state.train
  if parts.update_policy:
    train, record["update"] = update(parts, train, episodes, epoch_seed(state.rng, epoch, UPDATE))
  rules = state.rules
  if parts.use_rules:
    # The reviser writes with the weights as updated this epoch.
    rules, updated = rules.copy(), state.replace(train=train)
    records = [e.record(epoch) for e in episodes if not e.fault]  # a fault says nothing of rules
    for r in records:
      rules.pool.record_use(r.rule_ids, r.won)
    added = rules.references.add_all(r for r in records if r.won)
    t0, unrevised = time.time(), rules.copy() if c.check_revisions else None
    revision = revise(parts, updated, rules, records, epoch)
    if unrevised is not None and rules.pool.to_dict() != unrevised.pool.to_dict():
      seed = epoch_seed(state.rng, epoch, CHECK)
      check = check_revision(parts, updated, rules, unrevised, pool, tasks, seed)
      rules = rules if check["kept"] else unrevised
      revision["check"] = check
    record["rules"] = {**revision, "pool_size": len(rules.pool), "references_added": added,
                       "references": len(rules.references),
                       "revise_seconds": time.time() - t0}  # fmt: skip
  record["seconds"] = time.time() - start
  return state.replace(train=train, rules=rules, epoch=epoch,
                       cursor=state.cursor + c.tasks_per_epoch), record  # fmt: skip


def check_revision(parts: Parts, state: RunState, revised: RuleState, unrevised: RuleState, pool,
                   tasks, seed: int) -> dict[str, Any]:  # fmt: skip
  """`tasks` played as evaluations are (greedy by default) with the revised and with the
  unrevised rules, on one seed: the revision is kept unless it wins fewer, or as many in more
  steps."""
  figs = [evaluate(parts, state.replace(rules=r), pool, tasks, seed, "check")[0]
          for r in (revised, unrevised)]  # fmt: skip
  (new, old), key = figs, lambda f: (f["success"], -f["mean_length"])
  return {"kept": key(new) >= key(old), "success": new["success"], "success_before": old["success"],
          "length": new["mean_length"], "length_before": old["mean_length"]}  # fmt: skip


def evaluate(parts: Parts, state: RunState, pool, tasks, seed: int, desc: str = "eval"):
  """(figures, episodes) of the state's policy and rules, one episode per task."""
  policy = model_policy(parts, state, parts.config.jerp.eval_temperature)
  episodes = play(pool, policy, tasks, 1, seed, desc)
  return episodes_lib.figures(episodes, parts.env.TASK_TYPES), episodes


def expert_references(env, pool_config, tasks) -> list:
  """The env's expert played once on each task, as episode records (its wins seed references)."""
  played = play_expert(env, pool_config, policy_lib.ExpertPolicy(), tasks, "expert")
  return [dataclasses.replace(e.record(), source=EXPERT) for e in played]


def play_expert(env, pool_config, policy, tasks, desc: str) -> list:
  """`policy` once on each task in a pool whose envs know the expert's actions (the expert, or
  `rl.clone.DemoPolicy` writing them as the model's answers), within the expert's step limit."""
  with pool_lib.EnvPool(registry.expert_env(env), pool_config, expert=True) as pool:
    return play(pool, policy, tasks, 1, 0, desc)


def warm_start(parts: Parts, state: RunState, env, train_tasks) -> tuple[RunState, dict[str, Any]]:
  """Behaviour cloning (`rl.clone`) from the expert's won demonstrations of training tasks.
  Returns the state with the cloned weights (version + 1) and a record."""
  c, start = parts.config, time.time()
  demo = clone_lib.DemoPolicy(parts.tokenizer, c.agent, c.actions, parts.max_prompt_tokens)
  demos = play_expert(env, c.pool, demo, train_tasks[: c.jerp.warm_start.tasks or None], "demos")
  seed = epoch_seed(state.rng, 0, WARM_START)
  args = (parts.model, parts.mesh, state.train.variables, demos, c, parts.tokenizer.pad_id, seed)
  variables, record = clone_lib.warm_start(*args)
  train = state.train.replace(variables=variables, version=state.train.version + 1)
  return state.replace(train=train), {**record, "seconds": time.time() - start}


# --- the run --------------------------------------------------------------------------------------


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """The whole run in `workdir`, resumed from its newest readable checkpoint; its summary."""
  c = config.jerp
  os.makedirs(workdir, exist_ok=True)
  parts, state = build(config)
  key = parts.trainable_key
  directory = os.path.join(workdir, "checkpoints")
  with (
    checkpoint_lib.Checkpointer(directory, config.checkpoint.keep) as ckpt,
    contextlib.ExitStack() as stack,
  ):
    restored = state_lib.restore_newest_readable(ckpt, state, key)
    if resumed := restored is not None:
      state = restored
      print(f"resumed {workdir} after epoch {state.epoch} (task cursor {state.cursor})")
    elif c.warm_start.from_run:
      state_lib.warm_start_checkpoints(c.warm_start.from_run)  # before any evaluation
    # Every process holds the same state; process 0 alone writes what is written for people.
    writer = reports.MetricsWriter(workdir, state.epoch if resumed else None, hosts.is_main())
    stack.callback(writer.close)
    stage: Stage | None = None

    def stage_for(epoch: int) -> Stage:
      """The curriculum stage in force for `epoch`: its env, tasks and a pool for it. New training
      tasks without a reference get the expert's, when the config asks for them."""
      nonlocal stage
      env = curriculum_lib.env_at(config.env, curriculum(config), epoch)
      if stage is not None and stage.env == env:
        return stage
      if stage is not None:
        stage.pool.close()
      train_tasks = registry.load_split(env, c.train_split, "jerp.train_split")
      eval_tasks = registry.load_split(env, eval_split(config), "jerp.eval_split", c.eval_limit)
      pool = stack.enter_context(pool_lib.EnvPool(env, config.pool))
      stage = Stage(env, train_tasks, eval_tasks, pool)
      if parts.use_rules and config.rules.reference.seed_from_expert:
        need = [t for t in train_tasks if state.rules.references.get(t.key) is None]
        if need:
          n = state.rules.references.seed(expert_references(env, config.pool, need))
          print(f"reference store seeded with {n} expert trajectories", flush=True)
      return stage

    def evaluate_and_log(state: RunState, **marks) -> RunState:
      start, s = time.time(), stage_for(state.epoch)
      seed = epoch_seed(state.rng, state.epoch, EVAL)
      figs, _ = evaluate(parts, state, s.pool, s.eval_tasks, seed)
      figs = {"epoch": state.epoch, "split": eval_split(config), **marks, **figs}
      figs["seconds"] = time.time() - start
      writer.write({"epoch": state.epoch, "eval": figs})
      print(reports.eval_line(figs), flush=True)
      return state.replace(history=state.history + (figs,))

    first = stage_for(state.epoch + 1)
    n_params = sum(x.size for x in jax.tree.leaves(state.train.variables)) / 1e6
    print(f"JERP mode={c.mode} ({'rules' if parts.use_rules else 'no rules'}, "
          f"{'policy updates' if parts.update_policy else 'frozen policy'}), {config.model.preset} "
          f"{n_params:.1f}M parameters on {jax.device_count()} {jax.devices()[0].platform} "
          f"device(s), {len(first.train_tasks)} {c.train_split} tasks, {c.tasks_per_epoch}×"
          f"{c.group_size} episodes per epoch, workdir {workdir}", flush=True)  # fmt: skip
    if c.eval_at_start and not resumed:
      state = evaluate_and_log(state)  # the untrained policy: the curve's first point
    if warm_started(config) and not resumed:
      if c.warm_start.from_run:
        state = state_lib.adopt_warm_start(c.warm_start.from_run, state, key)
        print(f"warm start: that of {c.warm_start.from_run}", flush=True)
      else:
        state, record = warm_start(parts, state, first.env, first.train_tasks)
        writer.write({"epoch": 0, "warm_start": record})
        print(reports.warm_start_line(record), flush=True)
      if c.warm_start.evaluate:
        state = evaluate_and_log(state, after_warm_start=True)
      state_lib.save(ckpt, state, key)  # the warm start is not repeated on resume
    while state.epoch < c.epochs:
      s = stage_for(state.epoch + 1)
      state, record = run_epoch(parts, state, s.pool, s.train_tasks)
      writer.write(record)
      if hosts.is_main():
        write_rules(workdir, state)
      print(reports.epoch_line(record, c.epochs), flush=True)
      if state.epoch == c.epochs or (c.eval_every and state.epoch % c.eval_every == 0):
        state = evaluate_and_log(state)
      if state.epoch % config.checkpoint.every_epochs == 0 or state.epoch == c.epochs:
        state_lib.save(ckpt, state, key)
  evals = state.history or (None,)
  return {"mode": c.mode, "epochs": state.epoch, "first_eval": evals[0], "final_eval": evals[-1],
          "rules": len(state.rules.pool), "workdir": workdir}  # fmt: skip


def write_rules(workdir: str, state: RunState) -> None:
  state.rules.pool.save(os.path.join(workdir, "rules.json"))
  with open(os.path.join(workdir, "rules.md"), "w") as f:
    f.write(state.rules.pool.to_markdown(f"Rule pool after epoch {state.epoch}"))


def load_for_eval(config, workdir: str | None, step: int | None = None) -> tuple[Parts, RunState]:
  """The parts and state an evaluation needs: weights (or adapters) and rules from a run's
  checkpoint (None: the config's own weights, no rules). No learner, no optimizer state."""
  parts, state = build(config, train=False)
  if workdir is None:
    return dataclasses.replace(parts, use_rules=False), state
  with checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
    if ckpt.latest_step() is None:
      raise FileNotFoundError(f"no checkpoint in {ckpt.directory}")
    return parts, state_lib.restore(ckpt, state, parts.trainable_key, step)
