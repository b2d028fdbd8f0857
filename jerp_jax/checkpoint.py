"""Checkpoints of a training run: everything needed to resume it exactly, saved as one step.

Owns the on-disk layout of a run's checkpoints. Each saved step is one orbax step directory
`<directory>/<step>/` holding two items:

  arrays/  every jax.Array of the run (trainable parameters, optimizer state, rng key), written by
           tensorstore shard by shard and restored straight into the shardings the caller asks
           for, so no host ever holds a whole parameter;
  host/    one JSON document with the host-side state (rule pool, reference store, data cursor,
           epoch, metrics history).

A checkpoint that `latest_step()` can see is complete: orbax writes a step into
`<step>.orbax-checkpoint-tmp` and renames it to `<step>` only after every byte is written (an
atomic POSIX rename). A process killed mid-save leaves only the tmp directory, which the listing
ignores and the next `Checkpointer` on that directory deletes. Saves are synchronous: `save`
returns when the step is committed, so the training loop never has to reason about a save still
in flight when it is killed or when it mutates the host state.

A step whose files were damaged after it was committed (a truncated array file after a disk or
copy fault) raises `Unreadable` on restore; `set_aside` renames it out of the listing so that the
previous step becomes the latest (`state.restore_newest_readable`).

This module never decides when to save (the training loop reads `every_epochs`), never builds a
train state or a mesh, and never converts host objects to dicts: callers pass trees and dicts in
and get trees and dicts back.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from jerp_jax import checks
from jerp_jax.parallel import hosts

ARRAYS = "arrays"
HOST = "host"


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.keep = 3  # the last N checkpoints are kept; older ones are deleted after each save
  c.every_epochs = 1  # the training loop saves after every N-th epoch (and after the last one)
  return c


def validate_config(c: ml_collections.ConfigDict, prefix: str = "checkpoint") -> None:
  checks.require(c, prefix, {"keep": checks.POSITIVE_INT, "every_epochs": checks.POSITIVE_INT})


def abstract_like(tree: Any) -> Any:
  """The restore target for `tree`: each jax.Array becomes a ShapeDtypeStruct with its sharding.

  Other leaves (e.g. ShapeDtypeStructs already) pass through unchanged.
  """
  return jax.tree.map(
    lambda x: (
      jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding) if isinstance(x, jax.Array) else x
    ),
    tree,
  )


class Unreadable(Exception):
  """A checkpoint step whose files cannot be read (truncated, missing, corrupt)."""

  def __init__(self, path: str, cause: BaseException):
    super().__init__(f"checkpoint {path} cannot be read: {type(cause).__name__}: {cause}")
    self.path = path


class Checkpointer:
  """Saves and restores (arrays tree, host dict) pairs under one directory, keeping the last few.

  Typed PRNG keys (`jax.random.key`) need no special handling in orbax 0.12: orbax stores their
  `jax.random.key_data` (uint32) with a note of the key type and wraps them back on restore when
  the target leaf has a key dtype, as `abstract_like` gives it. Legacy uint32 keys
  (`jax.random.PRNGKey`) are plain arrays.
  """

  def __init__(self, directory: str | os.PathLike, keep: int = 3):
    if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
      raise ValueError(f"keep={keep!r}: expected a positive integer")
    self.directory = os.path.abspath(os.fspath(directory))
    os.makedirs(self.directory, exist_ok=True)
    self._options = ocp.CheckpointManagerOptions(
      max_to_keep=keep,
      create=True,
      # Synchronous: a returned save is a committed one, and the caller may mutate what it passed.
      enable_async_checkpointing=False,
      # Deletes `<step>.orbax-checkpoint-tmp` left by a process killed mid-save. orbax runs this
      # in a background thread and waits for it before the next save; listing ignores tmp
      # directories anyway, so `latest_step` is right from the start.
      cleanup_tmp_directories=True,
    )
    self._manager = self._new_manager()
    self._closed = False

  def _new_manager(self) -> ocp.CheckpointManager:
    # Handlers named up front, so metadata and restore work on a fresh manager (without them
    # orbax only learns an item's handler from a save and warns "could not be restored").
    return ocp.CheckpointManager(
      self.directory,
      options=self._options,
      item_handlers={ARRAYS: ocp.PyTreeCheckpointHandler(), HOST: ocp.JsonCheckpointHandler()},
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, arrays: Any, host: dict) -> None:
    """Writes `arrays` (a pytree of jax.Arrays) and `host` (a JSON-able dict) as `step`.

    Returns once the step is committed. Tuples in `host` come back as lists (JSON has no tuple).
    """
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
      raise ValueError(f"step={step!r}: expected an integer >= 0")
    latest = self.latest_step()
    # A step at or below the latest would collide with a saved one, or leave `latest_step` naming
    # a state older than the newest; resuming always moves forward, and a branch from an older
    # step belongs in a new directory.
    if latest is not None and step <= latest:
      raise ValueError(
        f"step={step}: the latest checkpoint in {self.directory} is step {latest}; "
        "expected a larger step"
      )
    _check_arrays(arrays)
    if not isinstance(host, dict):
      raise TypeError(f"host is a {type(host).__name__}: expected a dict")
    # Checked before anything is written, so a bad value names its place instead of failing in
    # json.dumps halfway through a save.
    _check_json(host, "host")
    # force=True: orbax's own save policy (intervals, preemption) would otherwise skip a save
    # silently; when to save is the training loop's decision.
    saved = self._manager.save(
      step,
      args=ocp.args.Composite(
        **{ARRAYS: ocp.args.PyTreeSave(arrays), HOST: ocp.args.JsonSave(host)}
      ),
      force=True,
    )
    self._manager.wait_until_finished()
    if not saved:
      raise RuntimeError(f"orbax did not save step {step} in {self.directory}")

  def restore(
    self, step: int | None, abstract_arrays: Any, partial: bool = False
  ) -> tuple[Any, dict]:
    """Reads `step` (None: the latest) into the structure, dtypes and shardings of the target.

    `abstract_arrays` is a pytree of ShapeDtypeStructs with `.sharding` set (see `abstract_like`)
    or of real arrays, whose shape, dtype and sharding are used (None: the saved layout on one
    device, for inspection). Its tree structure is the one returned, which is how optax's
    namedtuple states come back as namedtuples (on disk they are plain sequences). Arrays go
    straight to their shardings, resharded if they were saved on another layout. `partial=True`
    reads only the subtrees the target names (an evaluation reads the weights, not the optimizer
    state); the others are never loaded.

    A target that does not fit the saved tree (another LoRA rank, model or mode) raises
    ValueError; a step whose files cannot be read raises `Unreadable`.
    """
    if step is None:
      step = self.latest_step()
      if step is None:
        raise FileNotFoundError(f"no checkpoint in {self.directory}")
    elif step not in self._manager.all_steps():
      raise FileNotFoundError(
        f"no checkpoint for step {step} in {self.directory}; steps there: {self.all_steps()}"
      )
    metadata = self._metadata(step)
    if abstract_arrays is None:
      target = self._saved_layout(metadata)
    else:
      target = _restore_target(abstract_arrays)
      # Checked against the metadata before any array is read, so a target that does not fit
      # (a config change) is told apart from damaged files.
      self._check_target(step, metadata, target, partial)
    restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding), target)
    try:
      restored = self._manager.restore(
        step,
        args=ocp.args.Composite(
          **{
            ARRAYS: ocp.args.PyTreeRestore(
              target, restore_args=restore_args, partial_restore=partial
            ),
            HOST: ocp.args.JsonRestore(),
          }
        ),
      )
    except Exception as e:  # tensorstore, JSON and OS errors alike: the files are damaged
      raise Unreadable(self.step_dir(step), e) from e
    return restored[ARRAYS], restored[HOST]

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def set_aside(self, step: int) -> str:
    """Renames an unreadable step's folder out of orbax's sight (never deletes it); returns the new
    path. The manager is rebuilt so that its list of steps forgets the step."""
    src = self.step_dir(step)
    dst = f"{src}.unreadable"
    n = 1
    while os.path.exists(dst):
      n += 1
      dst = f"{src}.unreadable{n}"
    # Every process of a multi-host run finds the step unreadable; one of them renames it.
    if hosts.is_main():
      os.rename(src, dst)
    dst = hosts.gather_objects(dst)[0]
    self._manager.close()
    self._manager = self._new_manager()
    return dst

  def _metadata(self, step: int) -> Any:
    try:
      metadata = self._manager.item_metadata(step)[ARRAYS]
    except Exception as e:
      raise Unreadable(self.step_dir(step), e) from e
    if metadata is None:
      raise Unreadable(self.step_dir(step), FileNotFoundError("no array metadata"))
    return getattr(metadata, "tree", metadata)

  def read_host(self, step: int | None = None) -> dict:
    """Only the JSON item of `step` (None: the latest): cheap, and needs no target arrays."""
    if step is None:
      step = self.latest_step()
      if step is None:
        raise FileNotFoundError(f"no checkpoint in {self.directory}")
    try:
      restored = self._manager.restore(
        step, args=ocp.args.Composite(**{HOST: ocp.args.JsonRestore()})
      )
    except Exception as e:
      raise Unreadable(self.step_dir(step), e) from e
    return restored[HOST]

  def _saved_layout(self, metadata: Any) -> Any:
    """The saved tree (as orbax stores it: namedtuples become sequences) on one device.

    For inspection and comparison of runs, not for resuming: a resume passes its own target.
    """
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
      metadata,
      is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"),
    )

  def _check_target(self, step: int, metadata: Any, target: Any, partial: bool) -> None:
    # Matched by orbax's own leaf names ("opt_state.0.mu.w"), not by flattening order: jax sorts
    # dict keys by value (2 < 10) while the names on disk are strings ("10" < "2").
    saved = ocp.tree.to_flat_dict(metadata)
    want = ocp.tree.to_flat_dict(target)
    missing = sorted(".".join(k) for k in want if k not in saved)
    extra = [] if partial else sorted(".".join(k) for k in saved if k not in want)
    wrong = []
    for key, w in want.items():
      have = saved.get(key)
      if have is None:
        continue
      # orbax would cast each array to the target's dtype without a word; for a resume that is
      # a bug (e.g. float32 Adam moments read into bfloat16), so a dtype that differs fails.
      stored = w
      if jax.dtypes.issubdtype(w.dtype, jax.dtypes.prng_key):
        stored = jax.eval_shape(jax.random.key_data, w)  # a key is stored as its key data
      have_shape = tuple(getattr(have, "shape", stored.shape))
      if getattr(have, "dtype", stored.dtype) != stored.dtype:
        wrong.append(f"{'.'.join(key)}: saved {have.dtype}, target {w.dtype}")
      elif have_shape != tuple(stored.shape):
        wrong.append(f"{'.'.join(key)}: saved shape {have_shape}, target {tuple(stored.shape)}")
    problems = []
    if missing:
      problems.append(f"not saved: {', '.join(missing[:5])}")
    if extra:
      problems.append(f"saved but not in the target: {', '.join(extra[:5])}")
    if wrong:
      problems.append("; ".join(wrong))
    if problems:
      raise ValueError(
        f"step {step} in {self.directory} does not fit the restore target (was it saved with "
        f"another config?): {'; '.join(problems)}"
      )

  def close(self) -> None:
    if not self._closed:
      self._closed = True
      self._manager.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _check_arrays(arrays: Any) -> None:
  for path, leaf in jax.tree_util.tree_flatten_with_path(arrays)[0]:
    if not isinstance(leaf, jax.Array):
      # Host values (an epoch counter, a Python float) belong in `host`; keeping `arrays` pure
      # jax.Arrays means every restore target can carry a sharding.
      raise TypeError(
        f"arrays{jax.tree_util.keystr(path)} is a {type(leaf).__name__}: expected a jax.Array "
        "(put host values in `host`)"
      )


def _check_json(value: Any, where: str) -> None:
  if value is None or isinstance(value, (bool, int, str)):
    return
  if isinstance(value, float):
    # Python's json writes and reads NaN/Infinity (a NaN loss in the metrics history is real).
    return
  if isinstance(value, (list, tuple)):
    for i, v in enumerate(value):
      _check_json(v, f"{where}[{i}]")
    return
  if isinstance(value, dict):
    for k, v in value.items():
      if not isinstance(k, str):
        # json.dumps would turn 3 into "3" and the restored dict would not match.
        raise TypeError(f"{where} has the key {k!r}: expected str keys (JSON keeps only strings)")
      _check_json(v, f"{where}[{k!r}]")
    return
  hint = " (use .item() or float())" if hasattr(value, "item") else ""
  raise TypeError(f"{where} is a {type(value).__name__}: expected a JSON value{hint}")


def _restore_target(tree: Any) -> Any:
  def one(path, x):
    if isinstance(x, jax.Array):
      return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    if isinstance(x, jax.ShapeDtypeStruct):
      # Without a sharding orbax would pick a placement itself; on a mesh that puts a whole
      # parameter on one device, so it is refused rather than guessed.
      if x.sharding is None:
        raise ValueError(
          f"abstract_arrays{jax.tree_util.keystr(path)} has no sharding: expected "
          "jax.ShapeDtypeStruct(shape, dtype, sharding=...) (see abstract_like)"
        )
      return x
    raise TypeError(
      f"abstract_arrays{jax.tree_util.keystr(path)} is a {type(x).__name__}: expected a "
      "jax.Array or a jax.ShapeDtypeStruct"
    )

  return jax.tree_util.tree_map_with_path(one, tree)
