"""Plays ALFWorld TextWorld games in-process with the real engine, fast to reset.

The engine is TextWorld's PddlEnv over Fast Downward, driven as alfworld's AlfredTWEnv drives it
(PddlEnv + AlfredDemangler + AlfredInfos, requesting admissible commands, `won` and the game
file), with none of AI2-THOR or alfworld's config yaml. What PddlEnv recomputes on every reset
from the same game file (parsing the grammar, translating the PDDL problem to SAS twice, the
demangled names, the intro text, the text of each grounded command) is computed once per game
file and kept in a per-process cache, so a reset only loads the cached SAS task into this env's
own copy of the planner library. The text each step prints is still derived by the engine.

Owns `AlfWorldEnv` (the TextEnv) and that cache. Never decides which games exist (data.py) and
never writes games (gen.py).
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import re
import sys
import threading
from typing import Any, Mapping

import fast_downward
import textworld
import textworld.logic
from alfworld.agents.utils.misc import Demangler
from textworld.envs import PddlEnv
from textworld.envs.pddl import logic as pddl_logic
from textworld.envs.pddl import textgen
from textworld.generator.game import EntityInfo
from textworld.logic import Proposition, Variable

from jerp_jax.envs import base
from jerp_jax.envs.alfworld import data as data_lib

TASK_PREFIX = "Your task is to: "
# Kept in the engine (and accepted by step) but not offered: it prints the command list only.
HIDDEN_COMMANDS = ("help",)
_PDDL2SAS_LOCK = threading.Lock()


def pddl2sas(domain: str, problem: str, optimize: bool):
  """fast_downward.pddl2sas without its side effects on the process.

  It rewrites sys.argv for the translator's option parser and swaps sys.stdout while it runs;
  both are restored here, and a lock keeps two threads from sharing those globals.
  """
  with _PDDL2SAS_LOCK:
    argv = list(sys.argv)
    try:
      return fast_downward.pddl2sas(domain, problem, optimize=optimize)
    finally:
      sys.argv[:] = argv


class _MemoGrammar(textgen.ContextSensitiveGrammar):
  """TextWorld's grammar, but each distinct start string is parsed once (TatSu is slow).

  `derive` is TextWorld's own (textgen.ContextSensitiveGrammar.derive) with the parse memoised;
  the parsed symbols are copied before use because derivation writes contexts into them.
  """

  def __init__(self, grammar: textgen.ContextSensitiveGrammar):
    super().__init__()
    self._rules = grammar._rules
    self._parsed: dict[str, list] = {}

  def derive(self, start: str, context={}) -> str:  # noqa: B006 (TextWorld's signature)
    if start not in self._parsed:
      self._parsed[start] = textgen._parse_and_convert(start, rule_name="symbols")
    derivation = copy.deepcopy(self._parsed[start])[::-1]
    for symbol in derivation:
      symbol.context = textgen.copy_context(context)
    derived = []
    while derivation:
      symbol = derivation.pop()
      if isinstance(symbol, textgen.TerminalSymbol):
        derived.append(symbol)
      elif isinstance(symbol, textgen.NonterminalSymbol):
        derivation += self.replace(symbol)[::-1]
      elif isinstance(symbol, (textgen.ConditionalSymbol, textgen.EvalSymbol, textgen.ListSymbol)):
        derivation += symbol.derive()[::-1]
      else:
        raise NotImplementedError(f"Unknown symbol: {type(symbol)}")
    return "".join(map(str, derived))


def _fluent_predicates(task) -> frozenset[str]:
  """Predicates some action can change; everything else is fixed for the whole game."""
  names = set()
  for action in task.actions:
    for effect in action.effects:
      names.add(effect.literal.predicate.lower())
  return frozenset(names)


def _static_templates(logic, fluents: frozenset[str]) -> frozenset[str]:
  """Command templates whose text depends only on the action's arguments and static facts.

  ALFWorld's `go to [{r.name | receptacleatlocation(...)}]` queries the state, but only a static
  predicate, so its text (like `take {o} from {r}`) can be cached per grounded action.
  """
  static = set()
  for name, action in logic.actions.items():  # keyed by the lowercased name FD gives operators
    queried = {p.lower() for p in re.findall(r"(\w+)\s*\(", action.template)}
    if not queried & fluents:
      static.add(name)
  return frozenset(static)


def _atom_to_fact(atom, name2type) -> Proposition | None:
  # As textworld's PddlState: `=` atoms, the cost fluent and numeric distances are not facts.
  if isinstance(atom, fast_downward.translate.pddl.conditions.Atom):
    if atom.predicate == "=":
      return None
    return Proposition(atom.predicate, [Variable(a, name2type[a]) for a in atom.args])
  if isinstance(atom, fast_downward.translate.pddl.f_expression.Assign):
    if atom.fluent.symbol == "total-cost":
      return None
    name = f"{atom.expression.value}"
    if name.isdigit():
      return None
    return Proposition(name, [Variable(a, name2type[a]) for a in atom.fluent.args])
  return None


@dataclasses.dataclass
class CompiledGame:
  """Everything about one game file that does not change between resets."""

  path: str
  data: dict
  logic: Any  # textworld PDDL GameLogic with a _MemoGrammar
  task: Any  # Fast Downward's normalised PDDL task
  sas: bytes
  name2type: dict[str, str]
  init_facts: list[Proposition]
  static_actions: frozenset[str]
  walkthrough: tuple[str, ...] | None
  # Filled by the first reset that needs them (they need a loaded planner library).
  entity_infos: dict | None = None
  state_facts: list[Proposition] | None = None
  intro: str | None = None
  sas_replan: bytes | None = None
  commands: dict[str, str] = dataclasses.field(default_factory=dict)  # operator name -> text

  def replan_sas(self) -> bytes:
    if self.sas_replan is None:
      _, sas = pddl2sas(self.data["pddl_domain"], self.data["pddl_problem"], optimize=True)
      self.sas_replan = sas.encode("utf-8")
    return self.sas_replan


def compile_game(path: str, data: Mapping | None = None) -> CompiledGame:
  """Parses and translates one game (a file, or its already-read JSON in `data`)."""
  data = dict(data) if data is not None else data_lib.read_game(path)
  for key in data_lib.REQUIRED_KEYS:
    if not isinstance(data.get(key), str):
      raise ValueError(f"{path}: field {key!r} is missing or not a string")
  try:
    logic = pddl_logic.GameLogic(domain=data["pddl_domain"], grammar=data["grammar"])
    logic.grammar = _MemoGrammar(logic.grammar)
    task, sas = pddl2sas(data["pddl_domain"], data["pddl_problem"], optimize=False)
  except (Exception, SystemExit) as e:  # TatSu and the translator (sys.exit) fail many ways
    raise ValueError(f"{path}: the game's PDDL or grammar does not parse ({e!r})") from e
  for type_ in task.types:
    try:
      logic.types.add(textworld.logic.Type(type_.name, type_.supertype_names))
    except ValueError:
      pass  # already known
  name2type = {o.name: o.type_name for o in task.objects}
  init_facts = [f for f in (_atom_to_fact(a, name2type) for a in task.init) if f is not None]
  walkthrough = data.get("walkthrough")
  return CompiledGame(
    path=path,
    data=data,
    logic=logic,
    task=task,
    sas=sas.encode("utf-8"),
    name2type=name2type,
    init_facts=init_facts,
    static_actions=_static_templates(logic, _fluent_predicates(task)),
    walkthrough=tuple(walkthrough) if walkthrough else None,
  )


# Per process: pool workers each keep their own. Keyed by path; game files do not change.
_GAMES: collections.OrderedDict[str, CompiledGame] = collections.OrderedDict()


def cached_game(path: str, maxsize: int = 128) -> CompiledGame:
  """The compiled game for a file, from this process's LRU cache of `maxsize` games."""
  game = _GAMES.get(path)
  if game is None:
    game = compile_game(path)
    _GAMES[path] = game
    while len(_GAMES) > max(1, maxsize):
      _GAMES.popitem(last=False)
  else:
    _GAMES.move_to_end(path)
  return game


def _demangled_infos(facts: list[Proposition]) -> dict:
  """Entity infos named as ALFWorld shows them (`drawer 3`), as PddlEnv + AlfredDemangler do."""
  infos = {}
  for fact in facts:
    for v in fact.arguments:
      if v.name not in infos:
        info = EntityInfo(v.name, v.type)
        info.definite, info.indefinite = "the", "a"
        infos[v.name] = info
  demangler = Demangler(game_infos=infos, shuffle=False)
  for info in infos.values():
    info.name = demangler.demangle_alfred_name(info.id)
  return infos


# Planner libraries of closed envs, for the next env of this process. Each env needs its own
# copy of libdownward (the planner state is global to a copy), and a copy is never unloaded:
# dlclose followed by loading another copy crashes the process.
_FREE_LIBS: list = []


class _Engine(PddlEnv):
  """TextWorld's PddlEnv reading its game from a CompiledGame instead of re-deriving it."""

  def __init__(self):
    # PddlEnv.__init__ minus its load_lib: a library is reused when a closed env left one.
    textworld.Environment.__init__(
      self, textworld.EnvInfos(won=True, admissible_commands=True, extras=["gamefile"])
    )
    self.downward_lib = _FREE_LIBS.pop() if _FREE_LIBS else fast_downward.load_lib()
    self.game: CompiledGame | None = None
    self._replan_loaded = False

  def close(self) -> None:
    super().close()
    if self.downward_lib is not None:
      _FREE_LIBS.append(self.downward_lib)
      self.downward_lib = None

  def use(self, game: CompiledGame) -> None:
    self.game = game
    self._game_data = game.data
    self._game_file = game.path
    self.walkthrough = list(game.walkthrough) if game.walkthrough else None
    self._logic = game.logic

  def _new_state(self):
    # textworld's PddlState.__init__, minus the two PDDL->SAS translations (cached in `game`).
    game, lib = self.game, self.downward_lib
    state = pddl_logic.PddlState.__new__(pddl_logic.PddlState)
    # PddlState skips State.__init__ (whose type check rejects the PDDL GameLogic); so do we.
    state._logic = game.logic
    state._facts = collections.defaultdict(set)
    state._vars_by_name = {}
    state._vars_by_type = collections.defaultdict(set)
    state._var_counts = collections.Counter()
    state.downward_lib = lib
    state.pddl_problem = game.data["pddl_problem"]
    state.task, state.sas, state.sas_replan = game.task, game.sas, None
    state._actions = {a.name: a for a in game.task.actions}
    state.name2type = game.name2type
    lib.load_sas(game.sas)
    if game.state_facts is None:
      atoms = (pddl_logic.Atom * lib.get_state_size())()
      lib.get_state(atoms)
      facts = [a.get_fact(game.name2type) for a in atoms]
      game.state_facts = [f for f in facts if not f.is_negation]
    state.add_facts(game.init_facts)
    state.add_facts(game.state_facts)
    return state

  def reset(self):
    game = self.game
    self._pddl_state = self._new_state()
    self._replan_loaded = False
    if game.entity_infos is None:
      game.entity_infos = _demangled_infos(list(self._pddl_state.facts))
    self._entity_infos = game.entity_infos
    self.prev_state = None
    self.state = textworld.core.GameState()
    self._last_action = None
    self._moves = 0
    if game.intro is None:
      context = {
        "state": self._pddl_state,
        "facts": list(self._pddl_state.facts),
        "variables": {},
        "mapping": {},
        "entity_infos": self._entity_infos,
      }
      game.intro = self._logic.grammar.derive("#intro#", context)
    self.state.feedback = self.state.raw = game.intro
    self._gather_infos()
    self.state["extra.gamefile"] = game.path
    return self.state

  def _gather_infos(self):
    # PddlEnv._gather_infos with the text of static command templates cached per grounded action
    # (it is the same on every step) and one facts list per step instead of one per action.
    state, game = self._pddl_state, self.game
    self.state["won"] = state.check_goal()
    self.state["lost"] = False
    self.state["last_action"] = None
    self.state["_last_action"] = self._last_action
    self.state["_valid_actions"] = actions = list(state.all_applicable_actions())
    mapping = {k: info.name for k, info in self._entity_infos.items()}
    facts = None
    commands = []
    for action in actions:
      key = " ".join([action.name] + [v.name for v in action.mapping.values()])
      text = game.commands.get(key)
      if text is None:
        if facts is None:
          facts = list(state.facts)
        context = {
          "state": state,
          "facts": facts,
          "variables": {ph.name: self._entity_infos[v.name] for ph, v in action.mapping.items()},
          "mapping": action.mapping,
          "entity_infos": self._entity_infos,
        }
        action.command_template = self._logic.grammar.derive(action.command_template, context)
        text = action.format_command(mapping)
        if action.name in game.static_actions:
          game.commands[key] = text
      commands.append(text)
    self.state["_valid_commands"] = commands
    self.state["admissible_commands"] = sorted(set(commands))
    self.state["moves"] = self._moves

  def replan(self) -> list[str]:
    """Fast Downward's optimal plan from the current state, as commands ([] if none)."""
    if not self._replan_loaded:
      self.downward_lib.load_sas_replan(self.game.replan_sas())
      self._replan_loaded = True
    return self._pddl_state.replan(self._entity_infos)


def split_intro(feedback: str) -> tuple[str, str]:
  """The first observation split into (room description, task sentence without its prefix)."""
  text, _, task = feedback.partition(TASK_PREFIX)
  lines = text.strip().split("\n\n", 1)
  # Drop TextWorld's "-= Welcome to TextWorld, ALFRED! =-" banner: it carries no information.
  if len(lines) == 2 and lines[0].startswith("-="):
    text = lines[1]
  return text.strip(), task.strip()


def _admissible(commands) -> tuple[str, ...]:
  return tuple(c for c in commands if c not in HIDDEN_COMMANDS)


class AlfWorldEnv:
  """One ALFWorld episode at a time (the TextEnv protocol); deterministic per game file.

  The expert is the game's walkthrough while the episode follows it; once an action departs
  from it (or a game has none) it is Fast Downward's optimal plan from the current state, what
  alfworld's AlfredExpert calls the planner expert.
  """

  def __init__(self, cache_size: int = 128):
    self._engine = _Engine()
    self._cache_size = cache_size
    self._task: base.Task | None = None
    self._walked = 0  # walkthrough commands followed so far
    self._on_walkthrough = False
    self._plan: list[str] | None = None
    self._won = False

  def reset(self, task: base.Task) -> base.StepResult:
    path = task.payload if isinstance(task.payload, str) else task.payload["gamefile"]
    game = cached_game(path, self._cache_size)
    self._engine.use(game)
    state = self._engine.reset()
    self._task, self._walked, self._plan, self._won = task, 0, None, bool(state["won"])
    self._on_walkthrough = game.walkthrough is not None
    observation, task_text = split_intro(state["feedback"])
    return base.StepResult(
      observation=observation,
      admissible=_admissible(state["admissible_commands"]),
      task_text=task_text,
      task_type=task.task_type,
      won=self._won,
      score=float(self._won),
      done=self._won,
      info={"gamefile": path},
    )

  def step(self, action: str) -> base.StepResult:
    if self._task is None:
      raise RuntimeError("AlfWorldEnv.step called before reset")
    action = action.strip()
    walkthrough = self._engine.game.walkthrough
    if (
      self._on_walkthrough
      and self._walked < len(walkthrough)
      and (action == walkthrough[self._walked])
    ):
      self._walked += 1
    else:
      self._on_walkthrough = False
    self._plan = None
    state, _, _ = self._engine.step(action)
    won = bool(state["won"])
    reward = 1.0 if won and not self._won else 0.0
    self._won = self._won or won
    return base.StepResult(
      observation=state["feedback"].strip(),
      reward=reward,
      done=won,
      won=won,
      score=float(won),
      admissible=_admissible(state["admissible_commands"]),
      task_type=self._task.task_type,
    )

  def expert_action(self) -> str | None:
    if self._task is None or self._won:
      return None
    walkthrough = self._engine.game.walkthrough
    if self._on_walkthrough and self._walked < len(walkthrough):
      return walkthrough[self._walked]
    if self._plan is None:
      self._plan = self._engine.replan()
    return self._plan[0] if self._plan else None

  def close(self) -> None:
    if self._engine is not None:
      self._engine.close()
      self._engine = None
