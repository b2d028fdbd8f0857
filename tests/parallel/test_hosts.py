"""The process helpers on one process (each is the identity there), and start-up's one-line
errors. Several processes are exercised end to end in tests/test_multihost.py."""

import os

import numpy as np
import pytest

from jerp_jax.parallel import hosts


def test_one_process_shares_everything_and_gathers_its_own():
  items = list("abcde")
  assert hosts.share(items) == (items, 0)
  assert hosts.gather(items) == items
  assert hosts.any_process(True) and not hosts.any_process(False)
  assert hosts.rows_of_all(lambda rows: [r.upper() for r in rows], items) == list("ABCDE")
  assert hosts.fetch(np.arange(3)).tolist() == [0, 1, 2]
  hosts.check_same("config", "anything")  # nothing to compare with


def test_shares_of_several_processes_are_contiguous_and_cover_the_list(monkeypatch):
  items = list(range(7))
  shares = []
  for i in range(3):
    monkeypatch.setattr(hosts.jax, "process_count", lambda: 3)
    monkeypatch.setattr(hosts.jax, "process_index", lambda i=i: i)
    shares.append(hosts.share(items))
  assert shares == [([0, 1, 2], 0), ([3, 4], 3), ([5, 6], 5)]


def test_start_up_flags_fail_in_one_line():
  with pytest.raises(ValueError, match="need --distributed=flags"):
    hosts.initialize("off", "localhost:1234")
  with pytest.raises(ValueError, match="--distributed=flags needs --coordinator_address"):
    hosts.initialize("flags", "localhost:1234", 2)
  with pytest.raises(ValueError, match=r"--process_id=2: expected 0..1"):
    hosts.initialize("flags", "localhost:1234", 2, 2)
  with pytest.raises(ValueError, match="--distributed='mpi'"):
    hosts.initialize("mpi")


def test_compile_cache_has_a_folder_per_cpu_instruction_set():
  amx = frozenset({"avx512f", "amx_bf16", "amx_tile"})
  one = hosts.compile_cache_dir("~/c", "cpu", amx)
  assert one.startswith(os.path.expanduser("~/c") + os.sep + "cpu-")
  assert hosts.compile_cache_dir("~/c", "cpu", frozenset(sorted(amx))) == one  # order-free
  assert hosts.compile_cache_dir("~/c", "cpu", frozenset({"avx512f"})) != one
  # Accelerators: JAX's own key names the device, so one folder serves them.
  assert hosts.compile_cache_dir("/x/c", "gpu", amx) == "/x/c"
