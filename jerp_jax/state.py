"""A run's state: everything a run learns and checkpoints, as one value saved and restored whole.

    RunState
      train   TrainState: the model variables (frozen base + trainables), the optimizer state
              (None for a frozen policy) and the weight version
      rules   RuleState: the rule pool and the reference trajectories
      rng     the run's key: every random choice of an epoch derives from it (jerp.epoch_seed)
      epoch, cursor, history, mode

What computes on the state (model, sampler, learner, embedder, env pool, reviser) is built from
the config by `jerp.build` and holds none of it. The weight version goes up by one with
every applied policy update; caches of derived weights (the sampler's merged LoRA, embeddings)
key on it instead of on array identity.

On disk (one orbax step, see `checkpoint`): arrays {rng, trainable, opt_state} and a JSON host
item {epoch, cursor, version, mode, rule_pool, reference, history}. `restore` reads the whole
state for a resume, or only the weights and rules for an evaluation (no optimizer state is read
or allocated).
"""

from __future__ import annotations

import copy
import dataclasses
import os
from typing import Any

import jax

from jerp_jax import checkpoint as checkpoint_lib
from jerp_jax.rules.pool import RulePool
from jerp_jax.rules.reference import ReferenceStore


class CannotResume(Exception):
  """A workdir whose checkpoints this run cannot continue: another mode, or none readable."""


@dataclasses.dataclass(frozen=True)
class TrainState:
  variables: dict[str, Any]  # {'params': ..., 'lora': ...}: what the sampler and learner run
  opt_state: Any = None  # None when the policy is frozen or the state is for evaluation
  version: int = 0  # +1 per applied update

  def replace(self, **changes) -> TrainState:
    return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class RuleState:
  pool: RulePool
  references: ReferenceStore  # the paper's reference successful trajectories, by task

  def copy(self) -> RuleState:
    """A deep copy: an epoch edits its own copy, never the state it was given."""
    return RuleState(copy.deepcopy(self.pool), copy.deepcopy(self.references))


@dataclasses.dataclass(frozen=True)
class RunState:
  train: TrainState
  rules: RuleState
  rng: jax.Array  # the run's key (legacy uint32[2])
  mode: str  # jerp.mode of the run that made it: a workdir never switches method
  epoch: int = 0  # epochs completed
  cursor: int = 0  # position in the stream of training tasks
  history: tuple[dict[str, Any], ...] = ()  # evaluation figures, for the learning curve

  def replace(self, **changes) -> RunState:
    return dataclasses.replace(self, **changes)


def _arrays(state: RunState, trainable_key: str | None) -> dict[str, Any]:
  """The state's arrays on disk: the key, the trainables and (when it has some) optimizer state."""
  arrays: dict[str, Any] = {"rng": state.rng}
  if trainable_key is not None:
    arrays["trainable"] = state.train.variables[trainable_key]
  if state.train.opt_state is not None:
    arrays["opt_state"] = state.train.opt_state
  return arrays


def save(ckpt: checkpoint_lib.Checkpointer, state: RunState, trainable_key: str | None) -> None:
  """`trainable_key`: the collection that training changes ('lora' or 'params'), None when no
  stage does (only the key is saved then)."""
  rules = state.rules
  host = {"epoch": state.epoch, "cursor": state.cursor, "mode": state.mode,
          "version": state.train.version, "history": list(state.history),
          "rule_pool": rules.pool.to_dict(), "reference": rules.references.to_dict()}  # fmt: skip
  ckpt.save(state.epoch, _arrays(state, trainable_key), host)


def restore(
  ckpt: checkpoint_lib.Checkpointer,
  template: RunState,
  trainable_key: str | None,
  step: int | None = None,
  any_mode: bool = False,
) -> RunState:
  """The state saved at `step` (None: the latest), read into `template`'s shapes and shardings.

  A template without optimizer state (an evaluation's) reads only the key and the trainables:
  the optimizer state on disk is never loaded. Raises `checkpoint.Unreadable` for damaged files,
  CannotResume for another mode's run (unless `any_mode`), and ValueError when the step does not
  fit the template (another config).
  """
  step = ckpt.latest_step() if step is None else step
  host = ckpt.read_host(step)
  if host.get("mode") != template.mode and not any_mode:
    raise CannotResume(
      f"{ckpt.directory} holds a run of jerp.mode={host.get('mode')!r}, not {template.mode!r}: "
      "use another --workdir"
    )
  # Partial: an evaluation's template (no optimizer state) leaves the saved one unread.
  target = checkpoint_lib.abstract_like(_arrays(template, trainable_key))
  arrays, host = ckpt.restore(step, target, partial=True)
  variables = template.train.variables
  if trainable_key is not None:
    variables = {**variables, trainable_key: arrays["trainable"]}
  rules = RuleState(RulePool.from_dict(host["rule_pool"]),
                    ReferenceStore.from_dict(host["reference"]))  # fmt: skip
  return template.replace(
    train=TrainState(variables, arrays.get("opt_state"), int(host.get("version", 0))),
    rules=rules, rng=arrays["rng"], epoch=int(host["epoch"]),
    cursor=int(host["cursor"]), history=tuple(host["history"]),
  )  # fmt: skip


def warm_start_checkpoints(workdir: str) -> str:
  """The checkpoint folder of the run in `workdir`, which must hold its warm start (step 0)."""
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(os.path.join(directory, "0")):
    raise CannotResume(
      f"jerp.warm_start.from_run={workdir!r}: {directory} holds no warm start (an epoch-0 "
      "checkpoint); expected the workdir of a run with jerp.warm_start.steps > 0 (whose "
      "checkpoint.keep has not yet deleted it)"
    )
  return directory


def adopt_warm_start(workdir: str, state: RunState, trainable_key: str) -> RunState:
  """`state` with the trainables of the warm start saved in `workdir` (that run's epoch-0
  checkpoint, whatever its mode): one warm start shared by runs of several modes."""
  try:
    with checkpoint_lib.Checkpointer(warm_start_checkpoints(workdir)) as ckpt:
      template = state.replace(train=state.train.replace(opt_state=None))
      variables = restore(ckpt, template, trainable_key, 0, any_mode=True).train.variables
  except (checkpoint_lib.Unreadable, ValueError) as e:  # damaged, or another model or rank
    raise CannotResume(f"jerp.warm_start.from_run={workdir!r}: {e}") from e
  return state.replace(
    train=state.train.replace(variables=variables, version=state.train.version + 1)
  )


def restore_newest_readable(
  ckpt: checkpoint_lib.Checkpointer, template: RunState, trainable_key: str | None, log=print
) -> RunState | None:
  """The newest checkpoint that can be read, or None when there is none at all.

  A step whose files cannot be read (a truncated array file after a disk or copy fault) is named,
  set aside (renamed `<step>.unreadable`, never deleted) and the previous one is tried. With
  checkpoints present but none readable, raises CannotResume naming the folder.
  """
  set_aside = []
  while (step := ckpt.latest_step()) is not None:
    try:
      return restore(ckpt, template, trainable_key, step)
    except checkpoint_lib.Unreadable as e:
      moved = ckpt.set_aside(step)
      set_aside.append(moved)
      log(f"{e}\n  set aside as {moved}; trying the previous checkpoint")
  if set_aside:
    raise CannotResume(
      f"no readable checkpoint in {ckpt.directory} (set aside: {', '.join(set_aside)}): start "
      "a new run with another --workdir, or repair the files"
    )
  return None
