"""The protocol every text environment speaks, and the records that cross the process pool.

An environment owns one episode at a time: `reset(task)` starts it, `step(action)` advances it.
It imports nothing of the model, and everything it returns is plain picklable data, because it
runs in a pool worker process and its results are sent back through a pipe.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol


@dataclasses.dataclass(frozen=True)
class Task:
  """One thing to solve: an ALFWorld game or a WebShop goal.

  `key` is stable across runs and unique within (env, split); rule scopes, reference
  trajectories and data cursors use it. `payload` is what the environment needs to reset to the
  task (a game file path, a goal index) and is opaque to everyone else.
  """

  env: str
  split: str
  key: str
  task_type: str
  payload: Any = None


@dataclasses.dataclass(frozen=True)
class StepResult:
  """What a reset or a step returns.

  `task_text` is set on reset only (e.g. ALFWorld's "put a clean mug in coffeemachine."), split
  from the first observation. `admissible` is None for environments without an action list.
  `won` is the success flag the paper reports; `score` is the episode's score so far in [0, 1]
  (WebShop's reward at purchase; 1.0 or 0.0 in ALFWorld). `expert_action` is filled only when the
  caller asked for expert actions. `failure` names what ended the episode when it was not the
  environment's own verdict (a crash, a timeout, the step limit).
  """

  observation: str
  reward: float = 0.0
  done: bool = False
  won: bool = False
  score: float = 0.0
  admissible: tuple[str, ...] | None = None
  task_text: str = ""
  task_type: str = ""
  expert_action: str | None = None
  failure: str | None = None
  info: dict[str, Any] = dataclasses.field(default_factory=dict)


class TextEnv(Protocol):
  """A single-episode text environment. Implementations must be deterministic given the task."""

  def reset(self, task: Task) -> StepResult: ...

  def step(self, action: str) -> StepResult: ...

  def expert_action(self) -> str | None:
    """The next action of the environment's expert (walkthrough or oracle), or None."""
    ...

  def close(self) -> None: ...


STEP_LIMIT = "step limit"  # prefix of the failure TimeLimit writes


def is_fault(failure: str | None) -> bool:
  """Whether an episode's `failure` is a fault (crash, timeout, env error), not the step limit."""
  return bool(failure) and not failure.startswith(STEP_LIMIT)


class TimeLimit:
  """Ends an episode after `max_steps` steps as failed, the way ALFWorld's 50-step cap does."""

  def __init__(self, env: TextEnv, max_steps: int):
    if max_steps < 1:
      raise ValueError(f"env.max_steps={max_steps}; expected a positive integer")
    self.env = env
    self.max_steps = max_steps
    self._steps = 0

  def reset(self, task: Task) -> StepResult:
    self._steps = 0
    return self.env.reset(task)

  def step(self, action: str) -> StepResult:
    self._steps += 1
    result = self.env.step(action)
    if self._steps >= self.max_steps and not result.done:
      result = dataclasses.replace(result, done=True, failure=f"{STEP_LIMIT} {self.max_steps}")
    return result

  def expert_action(self) -> str | None:
    return self.env.expert_action()

  def close(self) -> None:
    self.env.close()
