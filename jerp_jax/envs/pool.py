"""EnvPool: text environments stepped in host worker processes, in parallel, surviving faults.

Owns the worker processes and the mapping from batch slots to them; never sees the model. A batch
is `len(tasks) * group_size` slots, task-major (slot i plays task i // group_size), and slot i
lives on worker i % num_workers, so the G members of a group start from the same task and the
load spreads evenly. Workers stream one result per environment call back to the parent, which
waits on all pipes at once: that is how a hung call is pinned to its slot and timed out while the
other workers' results keep arriving.

Faults never drop an episode. A worker that dies or hangs is killed and replaced; every live
episode it held ends as done and not won, with `failure` saying why, and the pool stays usable.
Workers start with forkserver (or spawn): JAX in the parent and fork do not mix. They ignore
Ctrl-C (the parent closes them), and exit by themselves when the parent disappears.
"""

from __future__ import annotations

import atexit
import collections
import dataclasses
import multiprocessing as mp
import os
import signal
import threading
import time
import weakref
from multiprocessing import connection
from typing import Any, Callable, Mapping, Sequence

import ml_collections

from jerp_jax.envs import base, registry

START_METHODS = ("forkserver", "spawn")


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.num_workers = 2
  c.step_timeout_s = 60.0  # one env step; a step past it ends the episode as failed
  c.reset_timeout_s = 300.0  # resets parse and ground a PDDL game: slower than steps
  c.start_method = "forkserver"
  return c


def validate_config(c: ml_collections.ConfigDict) -> None:
  if not isinstance(c.num_workers, int) or c.num_workers < 1:
    raise ValueError(f"pool.num_workers={c.num_workers!r}; expected a positive integer")
  for field in ("step_timeout_s", "reset_timeout_s"):
    if not c[field] > 0:
      raise ValueError(f"pool.{field}={c[field]!r}; expected a positive number of seconds")
  if c.start_method not in START_METHODS:
    raise ValueError(f"pool.start_method={c.start_method!r}; expected one of {START_METHODS}")


# ----------------------------------------------------------------------------- worker side


def _gone(pid: int) -> bool:
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")  # exited, not yet reaped
  except FileNotFoundError:
    return True
  except OSError:  # no /proc (macOS): signal 0 only tells whether the pid exists
    try:
      os.kill(pid, 0)
      return False
    except ProcessLookupError:
      return True


def _watch_owner(owner_pid: int) -> None:
  # A worker stuck inside an env call never reads its pipe again; this thread still notices
  # that the pool's owner is gone and ends the process, so nothing is orphaned. (The owner is
  # not our parent under forkserver, and the fork server outlives it while we run.)
  while True:
    time.sleep(1.0)
    if _gone(owner_pid):
      os._exit(0)


def _worker(conn, env_config: dict, expert: bool, owner_pid: int) -> None:
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  threading.Thread(target=_watch_owner, args=(owner_pid,), daemon=True).start()
  envs: dict[int, base.TextEnv] = {}

  def call(slot: int, fn: Callable[[base.TextEnv], base.StepResult]) -> tuple:
    start, fault = time.perf_counter(), False
    try:
      if slot not in envs:
        envs[slot] = registry.make_env(env_config)
      result = fn(envs[slot])
      if expert and not result.done:
        result = dataclasses.replace(result, expert_action=envs[slot].expert_action())
    except Exception as e:  # noqa: BLE001 - any env error ends just this episode
      env = envs.pop(slot, None)
      if env is not None:
        try:
          env.close()
        except Exception:  # noqa: BLE001
          pass
      result = base.StepResult(
        observation="", done=True, failure=f"env error: {type(e).__name__}: {e}"[:500]
      )
      fault = True
    return slot, result, time.perf_counter() - start, fault

  while True:
    try:
      command, items = conn.recv()
    except (EOFError, OSError):
      break
    if command == "close":
      break
    for slot, arg in items:
      if command == "reset":
        out = call(slot, lambda env, task=arg: env.reset(task))
      else:
        out = call(slot, lambda env, action=arg: env.step(action))
      conn.send(out)
  for env in envs.values():
    try:
      env.close()
    except Exception:  # noqa: BLE001
      pass


# ----------------------------------------------------------------------------- parent side


@dataclasses.dataclass
class PoolStats:
  """Counts and seconds, for progress lines and benchmarks. `env_seconds` is time spent inside
  environment calls in the workers; `wall_seconds` is the parent's time in reset/step."""

  resets: int = 0
  steps: int = 0
  failures: int = 0  # episodes ended by a fault: env error, crash, timeout
  restarts: int = 0
  env_seconds: float = 0.0
  wall_seconds: float = 0.0
  slot_seconds: dict[int, float] = dataclasses.field(default_factory=dict)


class _Worker:
  def __init__(self, ctx, env_config: dict, expert: bool):
    self.conn, child = ctx.Pipe()
    self.process = ctx.Process(
      target=_worker, args=(child, env_config, expert, os.getpid()), daemon=True
    )
    self.process.start()
    child.close()

  def kill(self) -> None:
    if self.process.is_alive():
      self.process.kill()
    self.process.join(timeout=5)
    self.conn.close()


class EnvPool:
  """Batched reset/step over worker processes. Use as a context manager, or call close()."""

  def __init__(
    self,
    env_config: ml_collections.ConfigDict | Mapping[str, Any],
    config: ml_collections.ConfigDict | None = None,
    expert: bool = False,
  ):
    config = config if config is not None else get_config()
    validate_config(config)
    self.config = config
    self.env_config = (
      env_config.to_dict()
      if isinstance(env_config, ml_collections.ConfigDict)
      else dict(env_config)
    )
    registry.env_module(self.env_config["name"])  # a bad name fails here, not in a worker
    self.expert = expert
    self._ctx = mp.get_context(config.start_method)
    if config.start_method == "forkserver":
      # Workers import only the env registry, never the parent's __main__ (which imports JAX).
      self._ctx.set_forkserver_preload(["jerp_jax.envs.registry"])
    self._workers = [self._start_worker() for _ in range(config.num_workers)]
    self._num_slots = 0
    self._live: set[int] = set()  # slots whose episode is running
    self._lost: dict[int, str] = {}  # live slots whose worker died: reason, reported at next step
    self.stats = PoolStats()
    self._closed = False
    # Close on interpreter exit too; a weak reference keeps the pool collectable.
    ref = weakref.ref(self)
    self._atexit = lambda: ref() is not None and ref().close()
    atexit.register(self._atexit)

  @property
  def num_workers(self) -> int:
    return len(self._workers)

  def _start_worker(self) -> _Worker:
    return _Worker(self._ctx, self.env_config, self.expert)

  def __enter__(self) -> EnvPool:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def reset(
    self,
    tasks: Sequence[base.Task],
    group_size: int = 1,
    on_result: Callable[[int, base.StepResult], None] | None = None,
  ) -> list[base.StepResult]:
    """Starts len(tasks) * group_size episodes; result i belongs to task i // group_size."""
    self._check_open()
    if group_size < 1:
      raise ValueError(f"group_size={group_size}; expected a positive integer")
    items = [(slot, tasks[slot // group_size]) for slot in range(len(tasks) * group_size)]
    self._num_slots = len(items)
    self._live.clear()
    self._lost.clear()
    results = self._run("reset", items, self.config.reset_timeout_s, on_result)
    self.stats.resets += len(items)
    return [results[slot] for slot in range(self._num_slots)]

  def step(
    self,
    actions: Sequence[str | None],
    on_result: Callable[[int, base.StepResult], None] | None = None,
  ) -> list[base.StepResult | None]:
    """Steps every slot whose action is not None; returns None for the others."""
    self._check_open()
    if len(actions) != self._num_slots:
      raise ValueError(f"got {len(actions)} actions for a batch of {self._num_slots} slots")
    items, results = [], {}
    for slot, action in enumerate(actions):
      if action is None:
        continue
      if slot in self._lost:
        results[slot] = self._failed(slot, self._lost.pop(slot))
      elif slot not in self._live:
        raise ValueError(f"slot {slot} has no running episode (it is done); pass None for it")
      else:
        items.append((slot, action))
    results.update(self._run("step", items, self.config.step_timeout_s, on_result))
    self.stats.steps += len(items)
    return [results.get(slot) for slot in range(self._num_slots)]

  def _failed(self, slot: int, reason: str) -> base.StepResult:
    self._live.discard(slot)
    self.stats.failures += 1
    return base.StepResult(observation="", done=True, failure=reason)

  def _run(self, command, items, timeout_s, on_result) -> dict[int, base.StepResult]:
    start = time.perf_counter()
    queues = collections.defaultdict(collections.deque)  # worker index -> slots awaited, in order
    for slot, arg in items:
      queues[slot % self.num_workers].append((slot, arg))
    for w, queue in queues.items():
      try:
        self._workers[w].conn.send((command, list(queue)))
      except (BrokenPipeError, OSError):
        pass  # found dead below, when its results do not come
    queues = {w: collections.deque(slot for slot, _ in q) for w, q in queues.items()}
    deadline = {w: time.monotonic() + timeout_s for w in queues}
    results: dict[int, base.StepResult] = {}

    def record(slot: int, result: base.StepResult, fault: bool) -> None:
      results[slot] = result
      if command == "reset" and not result.done:
        self._live.add(slot)
      elif result.done:
        self._live.discard(slot)
      self.stats.failures += fault
      if on_result is not None:
        on_result(slot, result)

    def replace_worker(w: int, reason: str, current: str) -> None:
      self._workers[w].kill()
      self._workers[w] = self._start_worker()
      self.stats.restarts += 1
      pending = queues.pop(w)
      deadline.pop(w)
      for i, slot in enumerate(pending):
        results[slot] = self._failed(slot, current if i == 0 else reason)
        if on_result is not None:
          on_result(slot, results[slot])
      # Episodes of this worker that already answered this call, or were not in it, lost their
      # state with the process: those in this call end now, the others at their next step.
      for slot in list(self._live):
        if slot % self.num_workers == w:
          if slot in results:
            results[slot] = dataclasses.replace(results[slot], done=True, won=False, failure=reason)
            self._live.discard(slot)
            self.stats.failures += 1
          else:
            self._live.discard(slot)
            self._lost[slot] = reason

    while queues:
      conns = {self._workers[w].conn: w for w in queues}
      wait_s = max(0.0, min(deadline.values()) - time.monotonic())
      for conn in connection.wait(list(conns), timeout=wait_s):
        w = conns[conn]
        try:
          slot, result, seconds, fault = conn.recv()
        except (EOFError, OSError):
          self._workers[w].process.join(timeout=2)  # reap it, so its exit code is known
          code = self._workers[w].process.exitcode
          reason = f"worker {w} died (exit code {code}) during {command}"
          replace_worker(w, reason, reason)
          continue
        queues[w].popleft()
        deadline[w] = time.monotonic() + timeout_s
        self.stats.env_seconds += seconds
        self.stats.slot_seconds[slot] = self.stats.slot_seconds.get(slot, 0.0) + seconds
        record(slot, result, fault)
        if not queues[w]:
          del queues[w], deadline[w]
      now = time.monotonic()
      for w in [w for w, d in deadline.items() if d <= now]:
        slot = queues[w][0]
        replace_worker(
          w,
          f"worker {w} replaced after slot {slot} timed out",
          f"{command} timed out after {timeout_s:g}s",
        )
    self.stats.wall_seconds += time.perf_counter() - start
    return results

  def _check_open(self) -> None:
    if self._closed:
      raise RuntimeError("the EnvPool is closed")

  def close(self) -> None:
    """Stops every worker: politely first, then by force. Safe to call twice."""
    if self._closed:
      return
    self._closed = True
    atexit.unregister(self._atexit)
    for worker in self._workers:
      try:
        worker.conn.send(("close", []))
      except (BrokenPipeError, OSError):
        pass
    deadline = time.monotonic() + 2.0  # a worker busy in a long env call is then killed
    for worker in self._workers:
      worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
      worker.kill()
