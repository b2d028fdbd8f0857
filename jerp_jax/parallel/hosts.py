"""The processes of a multi-host run (`jax.distributed`): start-up, and host <-> global helpers.

JAX's own multi-controller model is the engine: every process runs the same program on its own
share of the host work (its slice of the tasks, in its own env pool) and takes part in every
device computation, which runs once over the global mesh. This module is the one place where
host values move between processes:

  initialize(...)          jax.distributed, before anything touches a device
  check_same(name, text)   a one-line error when processes were started with different configs
  share(items)             this process's contiguous slice of a list (and where it starts)
  gather(items)            the lists of all processes, concatenated in process order
  rows_of_all(fn, rows)    fn over the rows of every process at once, this process's results back
  any_process(flag)        True on every process while any process says True (lockstep loops)
  fetch(x)                 a global jax.Array as one numpy array, on every process
  replicated(x, mesh)      a host-made array as one global value (what orbax can save)
  compile_cache_dir(...)   where this machine keeps its compiled programs between runs

With one process each helper is the identity (or a plain np.asarray): single-process runs take
exactly the path they took before multi-host existed. Host values that go to devices
(`jax.device_put(x, sharding)`) must be the same on every process; that is what `gather` and
`rows_of_all` arrange. This module never builds a mesh or decides what runs where.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from typing import Any, Callable, Sequence

import jax
import numpy as np

DISTRIBUTED = ("off", "flags", "auto")


def initialize(
  mode: str = "off",
  coordinator_address: str = "",
  num_processes: int = 0,
  process_id: int = -1,
) -> None:
  """Starts jax.distributed; call before any backend use. 'flags': the three values given;
  'auto': JAX's own detection (TPU VMs, SLURM, Open MPI), flags given override what it finds."""
  if mode not in DISTRIBUTED:
    raise ValueError(f"--distributed={mode!r}: expected one of {DISTRIBUTED}")
  if mode == "off":
    if coordinator_address or num_processes or process_id >= 0:
      raise ValueError(
        "--coordinator_address, --num_processes and --process_id need --distributed=flags (or auto)"
      )
    return
  if mode == "flags" and not (coordinator_address and num_processes > 0 and process_id >= 0):
    raise ValueError(
      "--distributed=flags needs --coordinator_address=HOST:PORT, --num_processes=N and "
      f"--process_id=0..N-1 (got {coordinator_address!r}, {num_processes}, {process_id})"
    )
  if mode == "flags" and not 0 <= process_id < num_processes:
    raise ValueError(f"--process_id={process_id}: expected 0..{num_processes - 1}")
  # Collectives across CPU processes (tests, cpu_multiprocess.sh) go through gloo; GPU and TPU
  # backends ignore this option.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = {}
  if coordinator_address:
    kwargs["coordinator_address"] = coordinator_address
  if num_processes > 0:
    kwargs["num_processes"] = num_processes
  if process_id >= 0:
    kwargs["process_id"] = process_id
  jax.distributed.initialize(**kwargs)


def count() -> int:
  return jax.process_count()


def index() -> int:
  return jax.process_index()


def is_main() -> bool:
  """Process 0 writes what a run writes for people and on the host (metrics, rules, logs)."""
  return jax.process_index() == 0


def _allgather_bytes(data: bytes) -> list[bytes]:
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

  # Lengths first: the byte arrays of all processes must share one shape to be gathered.
  lengths = multihost_utils.process_allgather(np.asarray([len(data)], np.int64))
  longest = int(np.max(lengths))
  padded = np.zeros((longest,), np.uint8)
  padded[: len(data)] = np.frombuffer(data, np.uint8)
  gathered = np.asarray(multihost_utils.process_allgather(padded)).reshape(-1, longest)
  return [gathered[i, : int(n)].tobytes() for i, n in enumerate(np.asarray(lengths).reshape(-1))]


def gather_objects(obj: Any) -> list[Any]:
  """`obj` of every process, in process order (pickled: host values, not device arrays)."""
  if count() == 1:
    return [obj]
  return [pickle.loads(b) for b in _allgather_bytes(pickle.dumps(obj))]


def gather(items: Sequence) -> list:
  """The lists of all processes, concatenated in process order (the global order when each
  process holds its `share`)."""
  if count() == 1:
    return list(items)
  return [x for part in gather_objects(list(items)) for x in part]


def share(items: Sequence) -> tuple[list, int]:
  """(this process's contiguous slice of `items`, the index of its first item).

  Slices differ in length by at most one and follow process order, so `gather` of the slices is
  `items` again. The first processes take the extra items."""
  n, p, i = len(items), count(), index()
  start = i * (n // p) + min(i, n % p)
  stop = start + n // p + (1 if i < n % p else 0)
  return list(items[start:stop]), start


def rows_of_all(fn: Callable[[list], Sequence], rows: Sequence) -> list:
  """`fn` over the rows of every process at once (in process order); this process's results.

  For SPMD work on per-process rows whose results must not depend on how rows are spread over
  processes: the global batch is what one process holding every row would have built. Every
  process must call this the same number of times, with no rows if it has none left.
  """
  if count() == 1:
    return list(fn(list(rows)))
  parts = gather_objects(list(rows))
  everything = [x for part in parts for x in part]
  out = list(fn(everything)) if everything else []
  start = sum(len(part) for part in parts[: index()])
  return out[start : start + len(rows)]


def any_process(flag: bool) -> bool:
  """True on every process while any process says True: lockstep loops end together."""
  if count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

  return bool(np.any(multihost_utils.process_allgather(np.asarray([bool(flag)]))))


def fetch(x: jax.Array) -> np.ndarray:
  """The whole value of a (possibly multi-host) array as numpy, on every process."""
  if getattr(x, "is_fully_addressable", True):
    return np.asarray(x)
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def replicated(x: jax.Array, mesh: jax.sharding.Mesh) -> jax.Array:
  """A small host-made array (the run's key) as one global value over `mesh`: with several
  processes a value on one local device is not one array, and orbax cannot save it."""
  if count() == 1:
    return x
  return jax.device_put(
    np.asarray(x), jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  )


def check_same(name: str, text: str) -> None:
  """Raises ValueError (one line) when `text` differs between processes, e.g. their configs."""
  if count() == 1:
    return
  digest = hashlib.sha256(text.encode()).hexdigest()[:16]
  digests = gather_objects(digest)
  if len(set(digests)) > 1:
    differ = [i for i, d in enumerate(digests) if d != digests[0]]
    raise ValueError(
      f"the {name} of process(es) {differ} differs from process 0's (sha256 "
      f"{', '.join(digests)}): start every process with the same command"
    )


def barrier(name: str) -> None:
  if count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

    multihost_utils.sync_global_devices(name)


def compile_cache_dir(root: str, platform: str, cpu_flags: frozenset[str]) -> str:
  """The folder under `root` for JAX's persistent compilation cache on this machine.

  JAX keys a cached program by its text, options, jax version and accelerator, but on CPU not by
  the instruction set XLA compiled it for: a home folder shared by machines with AMX and without
  would hand one the other's code. So CPU programs go to a folder per set of CPU feature flags.
  """
  root = os.path.expanduser(root)
  if platform != "cpu":
    return root
  digest = hashlib.sha256(" ".join(sorted(cpu_flags)).encode()).hexdigest()[:12]
  return os.path.join(root, f"cpu-{digest}")
