"""Difficulty that rises over epochs: stages of env-block changes, each in force from its epoch on.

A stage is written 'EPOCH: FIELD=VALUE FIELD=VALUE', with fields of the env block (dotted for its
sub-blocks) and Python literals as values, e.g.
'4: generated.max_receptacles=8 generated.max_distractors=4 max_steps=12'. The run's stages are
`jerp.curriculum`; `env_at(env, stages, epoch)` is the env block an epoch plays.
"""

from __future__ import annotations

import ast
from typing import Any, Sequence

import ml_collections

Stage = tuple[int, list[tuple[str, Any]]]  # (first epoch, [(env field, value), ...])


def parse(env: ml_collections.ConfigDict, stages: Sequence[str], name: str) -> list[Stage]:
  """The stages parsed and checked against `env`'s fields; errors name `name[i]`."""
  out: list[Stage] = []
  for i, text in enumerate(stages):
    head, sep, body = str(text).partition(":")
    try:
      epoch, changes = int(head), []
      for item in body.split():
        field, eq, value = item.partition("=")
        if not eq:
          raise ValueError(f"{item!r} has no '='")
        _parent(env, field)[field.split(".")[-1]]  # an unknown field raises KeyError
        changes.append((field, ast.literal_eval(value)))
      if not sep or epoch < 1 or (out and epoch <= out[-1][0]):
        raise ValueError("epochs start at 1 and rise stage by stage")
    except (ValueError, KeyError, SyntaxError, AttributeError) as e:
      raise ValueError(
        f"{name}[{i}]={text!r}: expected 'EPOCH: FIELD=VALUE ...' with fields of the env block "
        f"and literal values ({type(e).__name__}: {e})"
      ) from None
    out.append((epoch, changes))
  return out


def env_at(env: ml_collections.ConfigDict, stages: Sequence[Stage], epoch: int):
  """The env block for training epoch `epoch` (1-based): `env`, then every stage begun by then.
  An evaluation after epoch N plays epoch N's games; before training, the first epoch's."""
  env = ml_collections.ConfigDict(env.to_dict())
  for first, changes in stages:
    if max(epoch, 1) >= first:
      for field, value in changes:
        _parent(env, field)[field.split(".")[-1]] = value
  return env


def _parent(block, field: str):
  for name in field.split(".")[:-1]:
    block = block[name]
  return block
