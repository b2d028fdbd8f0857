"""The WebShop text environment: a shop (catalogue, goals, search, nouns) and one browsing session.

It owns `Shop` (everything read or derived from the data files, built once per process and
shared by all environments of that process), `WebShopEnv` (the session state machine of
SPEC §4: search, result pages, item page, options, sub-pages, Buy Now) and the oracle behind
`expert_action()`. It never talks to a model, never sleeps on a server, and keeps one session per
environment object (upstream keeps every session id it has seen).

Differences from upstream that a caller can see, all deliberate:
- after the purchase the episode is over: further steps return the done page again with reward 0
  (upstream would go on serving a finished session; every wrapper stops at done);
- `info['valid']` says whether the action did anything (upstream is silent about no-ops; the
  observation is unchanged either way, as upstream);
- the admissible list is verl-agent's: `search[<your query>]` on the search page, then
  `click[<clickable>]` for every clickable except `search`;
- a task names its goal by index; there are no weighted-random resets (upstream's draw has an
  off-by-one, SPEC §2.5).

The oracle searches the goal's instruction (without its lead-in and price clause) when that finds
the product on the first result page, else the product's title (which it knows and an agent does
not); it then walks the result pages to the product, clicks the goal's option values (for human
goals, the product value that matches each wanted value best) and buys.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import random
import re
from typing import Any, Mapping

from jerp_jax.envs import base
from jerp_jax.envs.webshop import data as data_lib
from jerp_jax.envs.webshop import goals as goals_lib
from jerp_jax.envs.webshop import nouns as nouns_lib
from jerp_jax.envs.webshop import pages
from jerp_jax.envs.webshop import reward as reward_lib
from jerp_jax.envs.webshop import search as search_lib
from jerp_jax.envs.webshop import synthetic

log = logging.getLogger(__name__)

ENV_NAME = "webshop"
CATEGORIES = ("beauty", "electronics", "fashion", "garden", "grocery")
OTHER_CATEGORY = "other"
SEARCH_CACHE_SIZE = 4096

PRODUCT_FILES = (
  "items_shuffle_1000.json",
  "items_shuffle_1000.reconstructed.json",
  "items_shuffle_1000.loaded.json",
  "items_shuffle.json",
)
ATTRIBUTE_FILES = ("items_ins_v2_1000.json", "items_ins_v2.json")
HUMAN_FILES = ("items_human_ins.json", "items_human_ins.subset_1000.json")
NOUN_FILE_GLOB = "title_nouns*.json"


@dataclasses.dataclass(frozen=True)
class ShopSettings:
  """The part of the env config that decides what a shop holds (its cache key)."""

  data_dir: str = ""
  products_file: str = ""
  attributes_file: str = ""
  human_file: str = ""
  title_nouns_file: str = ""
  num_products: int = 0
  goal_source: str = "synthetic"
  price_seed: int = 233
  shuffle_seed: int = 233
  synthetic_seed: int = 0
  synthetic_num_products: int = 1000
  cache_dir: str = ""

  @classmethod
  def from_config(cls, config: Mapping[str, Any]) -> "ShopSettings":
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for name, f in fields.items():
      if name not in config:
        continue
      value = config[name]
      expected = type(f.default)
      if expected is int and isinstance(value, bool) or not isinstance(value, expected):
        raise ValueError(f"env.{name}={value!r}; expected {expected.__name__}")
      values[name] = value
    settings = cls(**values)
    if settings.goal_source not in ("synthetic", "human"):
      raise ValueError(f"env.goal_source={settings.goal_source!r}; expected 'synthetic' or 'human'")
    if settings.num_products < 0:
      raise ValueError(f"env.num_products={settings.num_products}; expected >= 0 (0 = all)")
    return settings

  @property
  def resolved_cache_dir(self) -> pathlib.Path:
    return pathlib.Path(self.cache_dir or "~/.cache/jerp_jax/webshop").expanduser()


def _pick(
  folder: pathlib.Path, given: str, candidates: tuple[str, ...], field: str
) -> pathlib.Path:
  if given:
    path = folder / given  # an absolute `given` replaces the folder
    if not path.is_file():
      raise data_lib.DataError(f"env.{field}={given!r}: {path} does not exist")
    return path
  for name in candidates:
    if (folder / name).is_file():
      return folder / name
  raise data_lib.DataError(
    f"env.data_dir={str(folder)!r} has none of {list(candidates)}; set env.{field} to the file"
  )


def resolve_files(settings: ShopSettings) -> dict[str, pathlib.Path | None]:
  """Paths of the products, attributes, human-instruction and noun files the shop reads."""
  if not settings.data_dir:
    folder = settings.resolved_cache_dir / (
      f"synthetic_v{synthetic.VERSION}_seed{settings.synthetic_seed}"
      f"_n{settings.synthetic_num_products}"
    )
    synthetic.write(folder, settings.synthetic_seed, settings.synthetic_num_products)
    if settings.goal_source == "human":
      raise ValueError("env.goal_source='human' needs real data: set env.data_dir")
    return dict(
      products=folder / synthetic.PRODUCTS_FILE,
      attributes=folder / synthetic.ATTRIBUTES_FILE,
      human=None,
      nouns=None,
    )
  folder = pathlib.Path(settings.data_dir).expanduser()
  if not folder.is_dir():
    raise data_lib.DataError(f"env.data_dir={settings.data_dir!r} is not a folder")
  products = _pick(folder, settings.products_file, PRODUCT_FILES, "products_file")
  # The full catalogue goes with the full attribute file, the 1000 one with the 1000 one.
  attribute_files = ATTRIBUTE_FILES if "1000" in products.name else ATTRIBUTE_FILES[::-1]
  files = dict(
    products=products,
    attributes=_pick(folder, settings.attributes_file, attribute_files, "attributes_file"),
    human=None,
    nouns=None,
  )
  if settings.goal_source == "human":
    files["human"] = _pick(folder, settings.human_file, HUMAN_FILES, "human_file")
  if settings.title_nouns_file:
    files["nouns"] = _pick(folder, settings.title_nouns_file, (), "title_nouns_file")
  else:
    found = sorted(folder.glob(NOUN_FILE_GLOB))
    files["nouns"] = found[0] if found else None
  return files


class Shop:
  """Catalogue, server prices, goals in environment order, search index and title nouns."""

  def __init__(self, settings: ShopSettings):
    self.settings = settings
    self.files = resolve_files(settings)
    attributes = data_lib.load_attributes(self.files["attributes"])
    human = None
    if settings.goal_source == "human":
      human = data_lib.load_human_instructions(self.files["human"])
    self.products = data_lib.load_products(
      self.files["products"], attributes, human, settings.num_products or None
    )
    self.by_asin = {p["asin"]: p for p in self.products}
    self.prices = data_lib.server_prices(self.products, random.Random(settings.price_seed))
    build = goals_lib.human_goals if human is not None else goals_lib.synthetic_goals
    goals = build(self.products, self.prices, random.Random(settings.price_seed))
    if not goals:
      raise data_lib.DataError(
        f"no {settings.goal_source} goals in {self.files['products']} with "
        f"{self.files['human'] or self.files['attributes']}"
      )
    self.goals = goals_lib.shuffled(goals, settings.shuffle_seed)
    self.nouns = nouns_lib.TitleNouns(
      {p["asin"]: p["name"] for p in self.products},
      settings.resolved_cache_dir,
      self.files["nouns"],
    )
    self._index: search_lib.SearchIndex | None = None
    self._search_cache: dict[str, tuple[str, ...]] = {}

  @property
  def index(self) -> search_lib.SearchIndex:
    if self._index is None:
      self._index = search_lib.SearchIndex.from_products(self.products)
    return self._index

  def search(self, keywords: str) -> tuple[str, ...]:
    """Hits of a query, remembered: result pages and the oracle re-run the same queries."""
    hits = self._search_cache.get(keywords)
    if hits is None:
      if len(self._search_cache) >= SEARCH_CACHE_SIZE:
        self._search_cache.clear()
      hits = self._search_cache[keywords] = tuple(self.index.search(keywords))
    return hits

  def task_type(self, goal: Mapping[str, Any]) -> str:
    return goal["category"] if goal["category"] in CATEGORIES else OTHER_CATEGORY

  def reward(
    self, asin: str, options: Mapping[str, str], goal: Mapping[str, Any]
  ) -> tuple[float, dict[str, Any]]:
    return reward_lib.purchase_reward(
      self.by_asin[asin],
      goal,
      self.prices[asin],
      options,
      self.nouns(asin),
      self.nouns(goal["asin"]),
    )


_SHOPS: dict[ShopSettings, Shop] = {}


def get_shop(config: Mapping[str, Any]) -> Shop:
  """The process's shop for these settings (loading a catalogue once per process)."""
  settings = ShopSettings.from_config(config)
  if settings not in _SHOPS:
    _SHOPS[settings] = Shop(settings)
  return _SHOPS[settings]


@dataclasses.dataclass
class _Session:
  goal: dict[str, Any]
  page: str = "search"  # search | results | item | sub | done
  keywords: str = ""
  page_num: int = 1
  hits: tuple[str, ...] = ()
  asin: str | None = None
  sub: str = ""
  options: dict[str, str] = dataclasses.field(default_factory=dict)
  visited: set[str] = dataclasses.field(default_factory=set)
  clicked: set[str] = dataclasses.field(default_factory=set)  # option values clicked on this item
  reward: float = 0.0


class WebShopEnv:
  """One WebShop session at a time over a shared `Shop`."""

  def __init__(self, shop: Shop, observation_mode: str = "text", show_attrs: bool = False):
    if observation_mode not in ("text", "text_rich"):
      raise ValueError(f"env.observation_mode={observation_mode!r}; expected 'text' or 'text_rich'")
    self.shop = shop
    self.observation_mode = observation_mode
    self.show_attrs = show_attrs
    self._s: _Session | None = None
    self._nodes: list[pages.Node] = []
    self._expert_query: str | None = None

  # -- protocol --------------------------------------------------------------------------------

  def reset(self, task: base.Task) -> base.StepResult:
    if task.env != ENV_NAME:
      raise ValueError(f"task {task.key!r} is for env {task.env!r}, not {ENV_NAME!r}")
    idx = task.payload
    if isinstance(idx, bool) or not isinstance(idx, int) or not 0 <= idx < len(self.shop.goals):
      raise ValueError(
        f"task {task.key!r}: payload={idx!r}; expected a goal index in [0, {len(self.shop.goals)})"
      )
    self._s = _Session(goal=self.shop.goals[idx])
    self._expert_query = None
    self._render()
    return self._result(task_text=self.instruction, task_type=self.shop.task_type(self._s.goal))

  def step(self, action: str) -> base.StepResult:
    s = self._session()
    if s.page == "done":
      return self._result(done=True, info={"valid": False, "page": "done"})
    valid = self._apply(action)
    self._render()
    if s.page == "done":
      r = s.reward
      info = dict(self._purchase_info, valid=True, page="done")
      return self._result(reward=r, done=True, won=r == 1.0, score=r, info=info)
    return self._result(info={"valid": valid, "page": s.page})

  def close(self) -> None:
    self._s = None

  @property
  def instruction(self) -> str:
    return self._session().goal["instruction_text"]

  @property
  def goal(self) -> dict[str, Any]:
    return self._session().goal

  def available_actions(self) -> dict[str, Any]:
    """Upstream's {has_search_bar, clickables} for the current page."""
    return {"has_search_bar": self._session().page == "search", "clickables": self._clickables}

  # -- transitions -----------------------------------------------------------------------------

  def _session(self) -> _Session:
    if self._s is None:
      raise RuntimeError("WebShopEnv: call reset(task) before step()")
    return self._s

  def _apply(self, action: str) -> bool:
    """Applies one action; False (and no change) when upstream would ignore it."""
    s = self._session()
    name, arg = pages.parse_action(action)
    if name == "search" and arg:
      s.keywords = " ".join(arg.split(" "))
      s.page, s.page_num, s.asin, s.options = "results", 1, None, {}
      s.hits = self.shop.search(s.keywords)
      return True
    if name != "click" or arg is None or arg == "search" or arg not in self._clickables:
      return False
    if arg == "buy now":
      s.reward, self._purchase_info = self._buy()
      s.page = "done"
    elif arg == "back to search":
      s.page, s.keywords, s.page_num, s.hits, s.asin = "search", "", 1, (), None
      s.options, s.visited = {}, set()
    elif arg == "next >":
      s.page_num += 1
    elif arg == "< prev":
      if s.page == "results":
        s.page_num -= 1
      elif s.page == "sub":
        s.page = "item"
      else:  # item page: back to the result page it came from, choices dropped
        s.page, s.asin, s.options = "results", None, {}
    elif s.page == "item" and arg in ("description", "features", "reviews", "attributes"):
      s.page, s.sub = "sub", arg.capitalize()
    elif s.page == "results":
      s.asin = next(a for a in s.hits if a.lower() == arg)
      s.page, s.options, s.clicked = "item", {}, set()
      s.visited.add(s.asin)
    elif s.page == "item":
      # A value listed in two groups selects the later one (the last radio button wins).
      groups = [n for n, vs in self.shop.by_asin[s.asin]["options"].items() if arg in vs]
      s.options[groups[-1]] = arg
      s.clicked.add(arg)
    return True

  def _buy(self) -> tuple[float, dict[str, Any]]:
    s = self._session()
    r, details = self.shop.reward(s.asin, s.options, s.goal)
    details.update(purchased_asin=s.asin, goal_asin=s.goal["asin"], options=dict(s.options))
    return r, details

  # -- observation -----------------------------------------------------------------------------

  def _render(self) -> None:
    s = self._session()
    instruction = s.goal["instruction_text"]
    if s.page == "search":
      nodes = pages.search_page(instruction)
    elif s.page == "results":
      start = (s.page_num - 1) * pages.PRODUCTS_PER_PAGE
      shown = [self.shop.by_asin[a] for a in s.hits[start : start + pages.PRODUCTS_PER_PAGE]]
      nodes = pages.results_page(instruction, s.page_num, len(s.hits), shown)
    elif s.page == "item":
      nodes = pages.item_page(instruction, self.shop.by_asin[s.asin], self.show_attrs)
    elif s.page == "sub":
      nodes = pages.sub_page(instruction, self.shop.by_asin[s.asin], s.sub)
    else:
      nodes = pages.done_page(s.asin, s.options, s.reward)
    self._nodes = nodes
    self._clickables = [] if s.page == "done" else pages.clickables(nodes)

  def observation(self) -> str:
    s = self._session()
    if self.observation_mode == "text_rich":
      return pages.render_text_rich(self._nodes, s.options.values(), s.visited)
    return pages.render_text(self._nodes)

  def admissible_actions(self) -> tuple[str, ...]:
    s = self._session()
    actions = ["search[<your query>]"] if s.page == "search" else []
    actions += [f"click[{c}]" for c in self._clickables if c != "search"]
    return tuple(actions)

  def _result(self, **kw) -> base.StepResult:
    return base.StepResult(
      observation=self.observation(), admissible=self.admissible_actions(), **kw
    )

  # -- oracle ----------------------------------------------------------------------------------

  def expert_action(self) -> str | None:
    """The oracle's next action: search, walk to the goal product, choose its options, buy."""
    s = self._session()
    target = s.goal["asin"]
    if s.page == "done":
      return None
    if s.page in ("item", "sub") and s.asin == target:
      if s.page == "sub":
        return "click[< prev]"
      for group, value in self._goal_choices():
        if s.options.get(group) != value and value not in s.clicked:
          return f"click[{value}]"
      return "click[buy now]"
    if s.page == "results" and target in s.hits:
      want = s.hits.index(target) // pages.PRODUCTS_PER_PAGE + 1
      if want == s.page_num:
        return f"click[{target.lower()}]"
      return "click[next >]" if want > s.page_num else "click[< prev]"
    return f"search[{self._oracle_query()}]"

  def _oracle_query(self) -> str:
    """The goal's instruction as a query when it finds the product on page 1, else its title."""
    if self._expert_query is None:
      s = self._session()
      target = s.goal["asin"]
      instruction = re.sub(
        r"^(find me|i am looking for|i'm looking for|i need)\s+",
        "",
        s.goal["instruction_base"].lower(),
      )
      candidates = [instruction, self.shop.by_asin[target]["Title"].lower()]
      candidates = [re.sub(r"[\[\]\n]", " ", c).strip() for c in candidates]

      def rank(query: str) -> int:
        hits = self.shop.search(query)
        return hits.index(target) if target in hits else len(hits) + 1000

      best = min(candidates, key=rank)
      first_page = [c for c in candidates if rank(c) < pages.PRODUCTS_PER_PAGE]
      self._expert_query = first_page[0] if first_page else best
    return self._expert_query

  def _goal_choices(self) -> list[tuple[str, str]]:
    """(group, value) pairs of the goal product to select, in page order."""
    s = self._session()
    options = self.shop.by_asin[s.asin]["options"]
    wanted = s.goal["goal_options"]
    if isinstance(wanted, Mapping):
      return [(g, wanted[g]) for g in options if g in wanted and wanted[g] in options[g]]
    # Human goals name values only: give each wanted value the best matching free group.
    choices: dict[str, str] = {}
    for w in wanted:
      best, best_score = None, reward_lib.FUZZ_THRESHOLD
      for group, values in options.items():
        if group in choices:
          continue
        for v in values:
          if v == w.lower().strip():
            score = 1000
          else:
            score = reward_lib.token_set_ratio(
              reward_lib.normalize_color(v), reward_lib.normalize_color(w)
            )
          if score > best_score:
            best, best_score = (group, v), score
      if best is not None:
        choices[best[0]] = best[1]
    return [(g, choices[g]) for g in options if g in choices]
