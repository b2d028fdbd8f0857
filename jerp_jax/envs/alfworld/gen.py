"""Writes new ALFWorld games offline, each verified by winning it in the real engine.

A game is ALFWorld's own domain and grammar (the `alfred.pddl` / `alfred.twl2` the alfworld
package ships) plus a PDDL problem written here: one of the package's AI2-THOR floor plans
(`alfworld/gen/layouts`: which object and receptacle types a room holds, and where its
receptacles stand), receptacle instances and objects placed where ALFRED allows them
(`constants.VAL_RECEPTACLE_OBJECTS`), openable receptacles closed as in every ALFWorld game, the
affordances ALFRED gives each object type, a goal from alfworld's goal library and a templated
task sentence. The walkthrough is a scripted expert's command list; the game is kept only if
playing it in the engine wins on the last command and not before. Everything is drawn from a
random generator seeded by (seed, split, index, attempt), so a seed gives byte-identical files.

Owns the problem format, room building, the walkthrough and the on-disk cache of generated
splits. Never reads the shared real games and never plays a game except to verify it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import pathlib
import random
import shutil
from typing import Any, Iterable, Mapping, Sequence

import alfworld
import alfworld.gen
from alfworld.gen import constants as C
from alfworld.gen import goal_library

from jerp_jax.envs.alfworld import data as data_lib

# Bump when the output for a given seed changes: it keys the cache.
GENERATOR_VERSION = 1
ALFWORLD_DATA = pathlib.Path(alfworld.__file__).parent / "data"
LAYOUTS = pathlib.Path(alfworld.gen.__file__).parent / "layouts"
# ALFRED's valid_unseen floor plans (one per room kind): held out of train / in-distribution
# games, so eval_out_of_distribution plays rooms that training never saw.
UNSEEN_SCENES = (10, 219, 308, 424)
ALL_SCENES = tuple(sorted(C.TRAIN_SCENE_NUMBERS + C.TEST_SCENE_NUMBERS))
STATIC_RECEPTACLES = frozenset(C.RECEPTACLES - C.MOVABLE_RECEPTACLES_SET)
# Types some receptacle may hold: the pickupable objects an ALFWorld room scatters around.
PLACEABLE = frozenset(
  o
  for objs in C.VAL_RECEPTACLE_OBJECTS.values()
  for o in objs
  if o in C.OBJECTS and not o.endswith("Sliced")
)
# Desk lamps stand on furniture (ALFWorld's look-at tasks toggle one there); floor lamps stand
# on no receptacle, so no command could reach them.
LAMP = "DeskLamp"
LAMP_HOSTS = ("Desk", "SideTable", "Dresser", "Shelf")
# Receptacle types a scene lists without a position in its layout get this many instances.
SYNTHETIC_COUNTS = {"StoveBurner": 4}
# The appliance each state-change task uses: (receptacle type, verb, affordance predicate).
APPLIANCE = {
  "pick_clean_then_place_in_recep": ("SinkBasin", "clean", "Cleanable"),
  "pick_heat_then_place_in_recep": ("Microwave", "heat", "Heatable"),
  "pick_cool_then_place_in_recep": ("Fridge", "cool", "Coolable"),
}
_AFFORDANCES = (("cleanable", "Cleanable"), ("heatable", "Heatable"), ("coolable", "Coolable"))


@dataclasses.dataclass(frozen=True)
class Knobs:
  """Difficulty knobs of one generated game."""

  max_receptacles: int = 30  # receptacle instances in the room (the task's are always kept)
  min_distractors: int = 8  # objects besides the task's own
  max_distractors: int = 25
  max_target_copies: int = 3  # objects of the target type (pick_two needs at least 2)

  def __post_init__(self):
    if self.max_receptacles < 4:
      raise ValueError(f"generated.max_receptacles={self.max_receptacles}; expected >= 4")
    if not 0 <= self.min_distractors <= self.max_distractors:
      raise ValueError(
        f"generated.min_distractors={self.min_distractors}, max_distractors="
        f"{self.max_distractors}; expected 0 <= min_distractors <= max_distractors"
      )
    if self.max_target_copies < 2:
      raise ValueError(f"generated.max_target_copies={self.max_target_copies}; expected >= 2")


# ----------------------------------------------------------------------------- the package's data


@functools.lru_cache(maxsize=None)
def game_logic() -> tuple[str, str]:
  """ALFWorld's PDDL domain and TextWorld grammar, as the alfworld package ships them."""
  return (ALFWORLD_DATA / "alfred.pddl").read_text(), (ALFWORLD_DATA / "alfred.twl2").read_text()


def receptacle_type(receptacle_id: str) -> str:
  """`Sink|+00.1|+00.9|-01.2|SinkBasin` -> SinkBasin; `Drawer|...` -> Drawer."""
  parts = receptacle_id.split("|")
  return parts[4] if len(parts) > 4 else parts[0]


@dataclasses.dataclass(frozen=True)
class Scene:
  number: int
  object_types: frozenset[str]  # everything the floor plan holds
  receptacles: tuple[tuple[str, tuple[float, float, int, int]], ...]  # (id, (x, z, rot, horizon))

  @property
  def receptacle_types(self) -> frozenset[str]:
    return self.object_types & STATIC_RECEPTACLES

  @property
  def placeable(self) -> frozenset[str]:
    return self.object_types & PLACEABLE


@functools.lru_cache(maxsize=None)
def scene(number: int) -> Scene:
  types = json.loads((LAYOUTS / f"FloorPlan{number}-objects.json").read_text())
  points = json.loads((LAYOUTS / f"FloorPlan{number}-openable.json").read_text())
  receptacles = tuple(
    (rid, tuple(p)) for rid, p in sorted(points.items()) if receptacle_type(rid) in types
  )
  return Scene(number, frozenset(types), receptacles)


# ----------------------------------------------------------------------------- the task


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  task_type: str
  obj: str  # target object type
  recep: str  # goal receptacle type ("" for look_at_obj_in_light)
  toggle: str  # "DeskLamp" for look_at_obj_in_light, else ""
  scene: int

  @property
  def folder(self) -> str:
    return f"{self.task_type}-{self.obj}-None-{self.recep or self.toggle}-{self.scene}"


def _hosts(obj: str, receptacle_types: Iterable[str]) -> list[str]:
  return sorted(r for r in receptacle_types if obj in C.VAL_RECEPTACLE_OBJECTS.get(r, ()))


def _start_hosts(spec: TaskSpec, receptacle_types: Iterable[str]) -> list[str]:
  """Where the target objects may start: never in the goal's receptacle type (the goal would
  hold at the start), and not in the fridge of a cooling task."""
  banned = {spec.recep}
  if spec.task_type == "pick_cool_then_place_in_recep":
    banned.add("Fridge")
  return [r for r in _hosts(spec.obj, receptacle_types) if r not in banned]


def task_options(task_type: str, sc: Scene) -> list[TaskSpec]:
  """Every (object, receptacle) task of this type the scene can hold, with a place to start."""
  rtypes = sc.receptacle_types
  options = []
  if task_type == "look_at_obj_in_light":
    if LAMP not in sc.object_types or not set(LAMP_HOSTS) & rtypes:
      return []
    for obj in sorted(sc.placeable):
      spec = TaskSpec(task_type, obj, "", LAMP, sc.number)
      if _start_hosts(spec, rtypes):
        options.append(spec)
    return options
  objs = sorted(sc.placeable)
  if task_type in APPLIANCE:
    appliance, _, affordance = APPLIANCE[task_type]
    if appliance not in rtypes:
      return []
    objs = [o for o in objs if o in C.VAL_ACTION_OBJECTS[affordance]]
  for obj in objs:
    for recep in _hosts(obj, rtypes):
      spec = TaskSpec(task_type, obj, recep, "", sc.number)
      if _start_hosts(spec, rtypes):
        options.append(spec)
  return options


def task_description(spec: TaskSpec, rng: random.Random) -> str:
  template = rng.choice(goal_library.gdict[spec.task_type]["templates"])
  return template.format(obj=spec.obj.lower(), recep=spec.recep.lower(), toggle=spec.toggle.lower())


def goal_pddl(spec: TaskSpec) -> str:
  # The goal library writes PDDL's `-` as `#` (ALFRED fixes it up the same way).
  template = goal_library.gdict[spec.task_type]["pddl"].replace("#", "-")
  return template.format(obj=spec.obj, recep=spec.recep, toggle=spec.toggle)


# ----------------------------------------------------------------------------- the room


@dataclasses.dataclass
class Room:
  receptacles: dict[str, str]  # id -> location
  objects: dict[str, str]  # id -> host receptacle id
  agent_location: str
  lamp: str | None = None


def _coord(rng: random.Random, center: float = 0.0, spread: float = 2.5) -> str:
  return f"{center + rng.uniform(-spread, spread):+06.2f}"


def _location(x: float, z: float, rotation: int, horizon: int) -> str:
  # ALFRED's grid: 0.25 m steps, rotations in quarter turns.
  return f"loc|{round(x / 0.25)}|{round(z / 0.25)}|{round(rotation / 90) % 4}|{int(horizon)}"


def _random_location(rng: random.Random) -> str:
  return _location(
    rng.randint(-16, 16) * 0.25,
    rng.randint(-16, 16) * 0.25,
    rng.choice((0, 90, 180, 270)),
    rng.choice((0, 15, 30, 45, 60)),
  )


def _receptacle_instances(sc: Scene, rng: random.Random) -> dict[str, str]:
  instances = {rid: _location(*p) for rid, p in sc.receptacles}
  placed = {receptacle_type(r) for r in instances}
  for rtype in sorted(sc.receptacle_types - placed):
    for _ in range(SYNTHETIC_COUNTS.get(rtype, 1)):
      coords = "|".join(_coord(rng) for _ in range(3))
      if rtype in ("SinkBasin", "BathtubBasin"):
        rid = f"{rtype[: -len('Basin')]}|{coords}|{rtype}"
      else:
        rid = f"{rtype}|{coords}"
      instances[rid] = _random_location(rng)
  return instances


def _prune_receptacles(
  instances: dict[str, str], keep_types: set[str], limit: int, rng: random.Random
) -> dict[str, str]:
  """At most `limit` instances, keeping one of each type the task needs."""
  ids = sorted(instances)
  rng.shuffle(ids)
  kept, needed = [], set(keep_types)
  for rid in ids:  # the task's types first
    if receptacle_type(rid) in needed:
      kept.append(rid)
      needed.discard(receptacle_type(rid))
  for rid in ids:
    if len(kept) >= limit:
      break
    if rid not in kept:
      kept.append(rid)
  return {rid: instances[rid] for rid in sorted(kept)}


def _object_id(obj_type: str, rng: random.Random, taken: set[str]) -> str:
  while True:
    oid = f"{obj_type}|{_coord(rng)}|{_coord(rng, 0.8, 0.7)}|{_coord(rng)}"
    if oid not in taken:
      taken.add(oid)
      return oid


def build_room(spec: TaskSpec, knobs: Knobs, rng: random.Random) -> Room:
  sc = scene(spec.scene)
  needed = {spec.recep} if spec.recep else set()
  if spec.task_type in APPLIANCE:
    needed.add(APPLIANCE[spec.task_type][0])
  start_types = _start_hosts(spec, sc.receptacle_types)
  needed.add(rng.choice(start_types))
  lamp_hosts = sorted(set(LAMP_HOSTS) & sc.receptacle_types)
  if spec.toggle:
    needed.add(rng.choice(lamp_hosts))
  receptacles = _prune_receptacles(
    _receptacle_instances(sc, rng), needed, max(knobs.max_receptacles, len(needed)), rng
  )
  by_type: dict[str, list[str]] = {}
  for rid in receptacles:
    by_type.setdefault(receptacle_type(rid), []).append(rid)

  taken: set[str] = set()
  objects: dict[str, str] = {}
  hosts = [rid for t in start_types for rid in by_type.get(t, [])]
  copies = rng.randint(
    2 if spec.task_type == "pick_two_obj_and_place" else 1, knobs.max_target_copies
  )
  for _ in range(copies):
    objects[_object_id(spec.obj, rng, taken)] = rng.choice(hosts)

  lamp = None
  present_lamp_hosts = [rid for t in lamp_hosts for rid in by_type.get(t, [])]
  if LAMP in sc.object_types and present_lamp_hosts:
    # Rooms with desk lamps show them whether or not the task uses one.
    lamp = _object_id(LAMP, rng, taken)
    objects[lamp] = rng.choice(present_lamp_hosts)

  # Distractors: other types only, so no copy of the target can satisfy the goal at the start.
  kinds = sorted(t for t in sc.placeable if t != spec.obj and _hosts(t, by_type))
  for _ in range(rng.randint(knobs.min_distractors, knobs.max_distractors) if kinds else 0):
    kind = rng.choice(kinds)
    host_type = rng.choice(_hosts(kind, by_type))
    objects[_object_id(kind, rng, taken)] = rng.choice(by_type[host_type])

  used = set(receptacles.values())
  agent = _random_location(rng)
  while agent in used:
    agent = _random_location(rng)
  return Room(receptacles, objects, agent, lamp)


# ----------------------------------------------------------------------------- the PDDL problem


def mangle(name: str) -> str:
  """ALFRED ids to PDDL names (the inverse of alfworld's Demangler)."""
  for a, b in (("-", "_minus_"), ("|", "_bar_"), ("+", "_plus_"), (".", "_dot_"), (",", "_comma_")):
    name = name.replace(a, b)
  return name


def object_type(object_id: str) -> str:
  return object_id.split("|", 1)[0]


def problem_pddl(spec: TaskSpec, room: Room, problem_name: str) -> str:
  """The problem in the layout of ALFWorld's game files (:objects, :init, :goal)."""
  m = mangle
  otypes = sorted(C.OBJECTS_SET - STATIC_RECEPTACLES)
  rtypes = sorted(STATIC_RECEPTACLES)
  objs = sorted(room.objects)
  receps = sorted(room.receptacles)
  locations = sorted(set(room.receptacles.values()) | {room.agent_location})
  scene_otypes = {object_type(o) for o in objs}
  scene_rtypes = sorted({receptacle_type(r) for r in receps})

  init = [f"(receptacleType {m(r)} {receptacle_type(r)}Type)" for r in receps]
  init += [f"(objectType {m(o)} {object_type(o)}Type)" for o in objs]
  init += [
    f"(canContain {rt}Type {ot}Type)"
    for rt in scene_rtypes
    for ot in sorted(C.VAL_RECEPTACLE_OBJECTS.get(rt, ()))
    if ot in scene_otypes
  ]
  init += [f"(pickupable {m(o)})" for o in objs if object_type(o) in PLACEABLE]
  init += [
    f"(isReceptacleObject {m(o)})" for o in objs if object_type(o) in C.MOVABLE_RECEPTACLES_SET
  ]
  init += [f"(openable {m(r)})" for r in receps if receptacle_type(r) in C.OPENABLE_CLASS_SET]
  init.append(f"(atLocation agent1 {m(room.agent_location)})")
  for predicate, affordance in _AFFORDANCES:
    init += [
      f"({predicate} {m(o)})" for o in objs if object_type(o) in C.VAL_ACTION_OBJECTS[affordance]
    ]
  if spec.toggle and room.lamp:
    init.append(f"(toggleable {m(room.lamp)})")
  init += [
    f"(sliceable {m(o)})" for o in objs if object_type(o) in C.VAL_ACTION_OBJECTS["Sliceable"]
  ]
  init += [f"(inReceptacle {m(o)} {m(room.objects[o])})" for o in objs]
  init += [f"(receptacleAtLocation {m(r)} {m(room.receptacles[r])})" for r in receps]
  init += [f"(objectAtLocation {m(o)} {m(room.receptacles[room.objects[o]])})" for o in objs]

  indent = "\n        "
  declarations = (
    ["agent1 - agent"]
    + [f"{t}Type - otype" for t in otypes]
    + [f"{t}Type - rtype" for t in rtypes]
    + [f"{m(o)} - object" for o in objs]
    + [f"{m(r)} - receptacle" for r in receps]
    + [f"{m(loc)} - location" for loc in locations]
  )
  return (
    f"\n(define (problem {problem_name})\n(:domain alfred)\n(:objects{indent}"
    + indent.join(declarations)
    + f"{indent})\n\n(:init{indent}"
    + indent.join(init)
    + f"{indent})\n\n{goal_pddl(spec).strip()}\n"
  )


# ----------------------------------------------------------------------------- the walkthrough


def walkthrough(
  spec: TaskSpec, room: Room, names: Mapping[str, str], rng: random.Random
) -> list[str]:
  """A scripted expert's commands: fetch, treat, place (twice for pick_two), or fetch and light.

  `names` maps PDDL names (lowercased, as Fast Downward keeps them) to the names the game shows.
  """
  name = lambda ident: names[mangle(ident).lower()]  # noqa: E731
  commands: list[str] = []
  here, opened = None, set()

  def go(rid: str) -> None:
    nonlocal here
    if here != rid:
      commands.append(f"go to {name(rid)}")
      here = rid
    if receptacle_type(rid) in C.OPENABLE_CLASS_SET and rid not in opened:
      commands.append(f"open {name(rid)}")
      opened.add(rid)

  targets = sorted(o for o in room.objects if object_type(o) == spec.obj)
  rng.shuffle(targets)
  by_type = {}
  for rid in sorted(room.receptacles):
    by_type.setdefault(receptacle_type(rid), []).append(rid)
  goal = rng.choice(by_type[spec.recep]) if spec.recep else None
  rounds = 2 if spec.task_type == "pick_two_obj_and_place" else 1
  for obj in targets[:rounds]:
    go(room.objects[obj])
    commands.append(f"take {name(obj)} from {name(room.objects[obj])}")
    if spec.task_type in APPLIANCE:
      appliance, verb, _ = APPLIANCE[spec.task_type]
      device = rng.choice(by_type[appliance])
      # Heating, cooling and cleaning need the appliance reached, not opened.
      if here != device:
        commands.append(f"go to {name(device)}")
        here = device
      commands.append(f"{verb} {name(obj)} with {name(device)}")
    if spec.toggle:
      go(room.objects[room.lamp])
      commands.append(f"use {name(room.lamp)}")
    else:
      go(goal)
      commands.append(f"move {name(obj)} to {name(goal)}")
  return commands


# ----------------------------------------------------------------------------- one game


def _grammar(description: str) -> str:
  _, grammar = game_logic()
  return grammar.replace("UNKNOWN GOAL", description)


class Verifier:
  """Plays a candidate game's walkthrough in the real engine (one planner library, reused)."""

  def __init__(self):
    from jerp_jax.envs.alfworld import engine  # TextWorld only when generating

    self._engine_lib = engine
    self._engine = engine._Engine()

  def names(self, game_data: Mapping[str, Any]) -> tuple[Any, dict[str, str]]:
    game = self._engine_lib.compile_game("<generated>", game_data)
    self._engine.use(game)
    self._engine.reset()
    return game, {k: info.name for k, info in game.entity_infos.items()}

  def wins(self, game, commands: Sequence[str]) -> bool:
    """True iff the commands are all admissible, the last wins and none before it does."""
    self._engine.use(game)
    state = self._engine.reset()
    if state["won"]:
      return False
    for i, command in enumerate(commands):
      if command not in state["admissible_commands"]:
        return False
      state, _, _ = self._engine.step(command)
      if bool(state["won"]) != (i == len(commands) - 1):
        return False
    return bool(commands)


@dataclasses.dataclass(frozen=True)
class Generated:
  spec: TaskSpec
  trial: str
  data: dict

  @property
  def relpath(self) -> str:
    return f"{self.spec.folder}/{self.trial}/{data_lib.GAME_FILE}"


def generate_game(
  rng: random.Random,
  task_type: str,
  scenes: Sequence[int],
  knobs: Knobs,
  trial: str,
  verifier: Verifier,
) -> Generated | None:
  """One verified game, or None when this draw did not give one (the caller retries)."""
  options = [s for n in scenes for s in task_options(task_type, scene(n))]
  if not options:
    raise ValueError(f"no floor plan among scenes {tuple(scenes)} can hold a {task_type} task")
  spec = rng.choice(options)
  room = build_room(spec, knobs, rng)
  domain, _ = game_logic()
  game_data = {
    "pddl_domain": domain,
    "grammar": _grammar(task_description(spec, rng)),
    "pddl_problem": problem_pddl(spec, room, f"plan_{trial}"),
    "solvable": None,
    "walkthrough": None,
  }
  game, names = verifier.names(game_data)
  commands = walkthrough(spec, room, names, rng)
  if not verifier.wins(game, commands):
    return None
  game_data["solvable"] = True
  game_data["walkthrough"] = commands
  return Generated(spec, trial, game_data)


def write_game(out_split_dir: pathlib.Path, game: Generated) -> pathlib.Path:
  path = out_split_dir / game.relpath
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(game.data))
  return path


def generate_split(
  out_split_dir: str | os.PathLike,
  num: int,
  seed: int,
  task_types: Sequence[str] = data_lib.TASK_TYPES,
  knobs: Knobs = Knobs(),
  scenes: Sequence[int] | None = None,
  max_attempts: int = 20,
  progress: bool = True,
  tag: str = "train",
) -> list[pathlib.Path]:
  """Writes `num` verified games under `out_split_dir`, task types in turn. Deterministic."""
  from tqdm import tqdm

  if num < 1:
    raise ValueError(f"num={num}; expected a positive number of games")
  task_types = data_lib.task_type_names(task_types)
  scenes = tuple(scenes) if scenes is not None else scenes_for(tag)
  out = pathlib.Path(out_split_dir)
  verifier = Verifier()
  paths = []
  for index in tqdm(range(num), desc=f"generating {tag} games", disable=not progress):
    task_type = task_types[index % len(task_types)]
    trial = f"trial_G{seed}_{index:06d}"
    for attempt in range(max_attempts):
      rng = random.Random(f"{GENERATOR_VERSION}:{seed}:{tag}:{index}:{attempt}")
      game = generate_game(rng, task_type, scenes, knobs, trial, verifier)
      if game is not None:
        paths.append(write_game(out, game))
        break
    else:
      raise RuntimeError(
        f"could not generate a winnable {task_type} game (index {index}) in {max_attempts} tries"
      )
  return paths


def scenes_for(split: str) -> tuple[int, ...]:
  if split == "eval_out_of_distribution":
    return UNSEEN_SCENES
  return tuple(s for s in ALL_SCENES if s not in UNSEEN_SCENES)


# ----------------------------------------------------------------------------- the cache

# The seed of each split is offset so the three splits never share a game.
SPLIT_SEED_OFFSET = {
  "train": 0,
  "eval_in_distribution": 1_000_003,
  "eval_out_of_distribution": 2_000_003,
}


def knobs_from_config(generated: Mapping[str, Any]) -> Knobs:
  return Knobs(
    max_receptacles=int(generated["max_receptacles"]),
    min_distractors=int(generated["min_distractors"]),
    max_distractors=int(generated["max_distractors"]),
    max_target_copies=int(generated["max_target_copies"]),
  )


def num_games(generated: Mapping[str, Any], split: str) -> int:
  key = f"num_{split}"
  value = generated[key]
  if not isinstance(value, int) or value < 1:
    raise ValueError(f"env.generated.{key}={value!r}; expected a positive integer")
  return value


def ensure_generated(
  generated: Mapping[str, Any], split: str, task_types: Sequence[str]
) -> pathlib.Path:
  """The json_2.1.1 root holding this split's generated games; generates them on first use.

  The cache folder is named by a hash of everything that decides the games, so a changed knob
  gets new games and an unchanged one reuses the old. A split is written to a temporary folder
  and renamed into place when complete: a crash or a concurrent run never leaves half a split.
  """
  data_lib.split_folder(split)
  knobs = knobs_from_config(generated)
  num = num_games(generated, split)
  seed = int(generated["seed"]) + SPLIT_SEED_OFFSET[split]
  key = json.dumps(
    {
      "version": GENERATOR_VERSION,
      "split": split,
      "num": num,
      "seed": seed,
      "task_types": list(task_types),
      "knobs": dataclasses.asdict(knobs),
    },
    sort_keys=True,
  )
  digest = hashlib.sha256(key.encode()).hexdigest()[:16]
  cache_dir = pathlib.Path(os.path.expanduser(os.path.expandvars(str(generated["cache_dir"]))))
  root = cache_dir / f"{split}-{digest}"
  if (root / data_lib.DATA_FOLDER).is_dir():
    return root
  tmp = cache_dir / f".{split}-{digest}.tmp{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  split_dir = tmp / data_lib.DATA_FOLDER / data_lib.SPLIT_FOLDERS[split]
  logging.getLogger(__name__).info("generating %d %s games into %s", num, split, root)
  generate_split(split_dir, num, seed, task_types, knobs, scenes_for(split), tag=split)
  (tmp / "key.json").write_text(key)
  try:
    os.rename(tmp, root)
  except OSError:  # another process finished the same split first: use theirs
    shutil.rmtree(tmp, ignore_errors=True)
  return root
