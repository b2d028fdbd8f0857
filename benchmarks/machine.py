"""What every benchmark prints beside its figures: the processor they were measured on."""

from __future__ import annotations

import platform


def cpu_name() -> str:
  """The CPU's model name as the kernel reports it (what `lscpu` shows as 'Model name')."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown cpu"


def device_name() -> str:
  """What the figures were computed on: the CPU's model name, or the accelerator's kind."""
  import jax  # pylint: disable=import-outside-toplevel  (cpu_name is read before jax starts)

  return cpu_name() if jax.default_backend() == "cpu" else str(jax.devices()[0].device_kind)
