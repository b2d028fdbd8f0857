"""The environment on the synthetic catalogue: episodes, pages, invalid actions, splits, errors."""

import json

import pytest

from jerp_jax.envs import base, registry, webshop
from jerp_jax.envs.webshop import data, env as env_lib, synthetic


def _task(i, split="all"):
  return base.Task(env="webshop", split=split, key=f"goal_{i}", task_type="x", payload=i)


@pytest.fixture()
def shop(synthetic_config):
  return env_lib.get_shop(synthetic_config)


def test_full_episode_search_item_options_buy(synthetic_config, shop):
  # A goal whose product has two option groups, so that the episode chooses two options.
  i = next(i for i, g in enumerate(shop.goals) if len(g["goal_options"]) == 2)
  goal = shop.goals[i]
  env = webshop.make_env(synthetic_config)
  r = env.reset(_task(i))
  assert (
    r.observation == f"WebShop [SEP] Instruction: [SEP] {goal['instruction_text']} [SEP] Search"
  )
  assert r.admissible == ("search[<your query>]",)
  assert r.task_text == goal["instruction_text"] and r.task_type == goal["category"]

  title = shop.by_asin[goal["asin"]]["Title"]
  r = env.step(f"search[{title}]")
  assert r.observation.startswith(f"Instruction: [SEP] {goal['instruction_text']} [SEP] Back to")
  assert "Page 1 (Total results: " in r.observation and not r.done
  assert f"click[{goal['asin'].lower()}]" in r.admissible
  assert "click[< prev]" not in r.admissible  # page 1

  r = env.step(f"click[{goal['asin'].lower()}]")
  product = shop.by_asin[goal["asin"]]
  assert product["Title"] in r.observation and f"Price: {product['Price']}" in r.observation
  assert r.admissible[:6] == tuple(
    f"click[{b}]" for b in ("back to search", "< prev", "description", "features", "reviews")
  ) + ("click[buy now]",)
  for value in goal["goal_options"].values():
    r = env.step(f"click[{value}]")
    assert r.info["valid"] and r.reward == 0.0 and not r.done
  r = env.step("click[Buy Now]")  # the argument is lower-cased, as upstream
  assert r.done and r.reward == 1.0 and r.won and r.score == 1.0
  assert r.info["purchased_asin"] == goal["asin"] and r.info["options"] == goal["goal_options"]
  assert "Thank you for shopping with us!" in r.observation and r.admissible == ()
  # The episode is over: later steps change nothing and pay nothing.
  again = env.step("click[buy now]")
  assert again.done and again.reward == 0.0 and again.observation == r.observation


def test_wrong_options_pay_less(synthetic_config, shop):
  i = next(i for i, g in enumerate(shop.goals) if g["goal_options"])
  env = webshop.make_env(synthetic_config)
  env.reset(_task(i))
  env.step(f"search[{shop.by_asin[shop.goals[i]['asin']]['Title']}]")
  env.step(f"click[{shop.goals[i]['asin'].lower()}]")
  r = env.step("click[buy now]")  # no option chosen: O = 0
  assert r.done and 0.0 < r.reward < 1.0 and not r.won
  n_att, n_opt = len(shop.goals[i]["attributes"]), len(shop.goals[i]["goal_options"])
  assert r.reward == pytest.approx((n_att + 1) / (n_att + n_opt + 1))


@pytest.mark.parametrize(
  "action", ["Search[x]", "search[]", "click[nothing]", "click[search]", "Action: click[buy now]"]
)
def test_invalid_actions_change_nothing(synthetic_config, action):
  env = webshop.make_env(synthetic_config)
  first = env.reset(_task(0))
  r = env.step(action)
  assert r.observation == first.observation and r.reward == 0.0 and not r.done
  assert r.info["valid"] is False


def test_paging_sub_pages_and_back(synthetic_config, shop):
  env = webshop.make_env(synthetic_config)
  env.reset(_task(0))
  r = env.step("search[black]")
  total = len(shop.search("black"))
  assert total == 50
  for page in range(2, 7):
    r = env.step("click[next >]")
    assert f"Page {page} (Total results: {total})" in r.observation
    assert "< Prev [SEP] Next >" in r.observation
  assert r.observation.endswith("Next >")  # page 6 is past the end: empty but still offered
  r = env.step("click[< prev]")
  assert "Page 5 (" in r.observation
  asin = shop.search("black")[40]
  r = env.step(f"click[{asin.lower()}]")
  r = env.step("click[features]")
  bullets = shop.by_asin[asin]["BulletPoints"]
  assert r.observation.endswith(" [SEP] < Prev [SEP] " + " [SEP] ".join(b.strip() for b in bullets))
  assert r.admissible == ("click[back to search]", "click[< prev]")
  r = env.step("click[< prev]")
  assert "Buy Now" in r.observation
  r = env.step("click[< prev]")  # item page -> the result page it came from
  assert "Page 5 (" in r.observation
  r = env.step("click[back to search]")
  assert r.observation.startswith("WebShop [SEP] Instruction:")
  # search works from any page, as upstream
  env.step(f"click[{asin.lower()}]")  # not clickable on the search page: ignored
  assert env.step("search[tea]").info["page"] == "results"


def test_text_rich_marks_choices(synthetic_config, shop):
  i = next(i for i, g in enumerate(shop.goals) if g["goal_options"])
  env = webshop.make_env(dict(synthetic_config, observation_mode="text_rich"))
  r = env.reset(_task(i))
  assert r.observation.endswith("[button] Search [button_]\n")
  while env._s.page != "item":
    r = env.step(env.expert_action())
  value = env.expert_action()[len("click[") : -1]
  r = env.step(f"click[{value}]")
  assert r.observation.startswith(f"You have clicked {value}.\n")
  assert f"  [clicked button] {value} [clicked button_]\n" in r.observation


def test_oracle_solves_every_synthetic_goal(synthetic_config, shop):
  env = webshop.make_env(synthetic_config)
  for i in range(len(shop.goals)):
    r = env.reset(_task(i))
    for _ in range(15):
      r = env.step(env.expert_action())
      if r.done:
        break
    assert r.done and r.reward == 1.0, (i, r.info)
  assert env.expert_action() is None


def test_registry_and_splits(synthetic_config):
  config = webshop.get_config()
  config.cache_dir = synthetic_config["cache_dir"]
  test = registry.load_tasks(config, "test")
  train = registry.load_tasks(config, "train")
  everything = webshop.load_tasks(config, "all")
  assert len(test) == 500 and [t.payload for t in test] == list(range(500))
  assert len(train) + 500 == len(everything) > 1000
  assert [t.key for t in webshop.load_tasks(config, "eval")] == [t.key for t in test]
  assert {t.task_type for t in everything} <= set(webshop.TASK_TYPES)
  assert test[7].key == "goal_7" and test[7].env == "webshop"
  env = registry.make_env(dict(synthetic_config))  # a plain dict, as inside a pool worker
  assert isinstance(env, base.TimeLimit) and env.max_steps == 15
  r = env.reset(test[0])
  for _ in range(15):
    r = env.step("click[nothing]")
  assert r.done and r.failure == "step limit 15" and r.reward == 0.0


def test_synthetic_catalogue_is_deterministic_and_in_the_real_format(tmp_path):
  a = synthetic.generate(5, 40)
  assert a == synthetic.generate(5, 40) and a != synthetic.generate(6, 40)
  folder = synthetic.write(tmp_path, 5, 40)
  records = json.loads((folder / synthetic.PRODUCTS_FILE).read_text())
  table = data.load_attributes(folder / synthetic.ATTRIBUTES_FILE)
  products = data.load_products(folder / synthetic.PRODUCTS_FILE, table, None)
  assert len(products) == len(records) == 40 and set(table) == {r["asin"] for r in records}
  assert all(len(p["asin"]) == 10 for p in products)
  assert any(p["options"] for p in products) and any(len(p["pricing"]) == 2 for p in products)


def test_reset_is_deterministic(synthetic_config):
  a, b = webshop.make_env(synthetic_config), webshop.make_env(synthetic_config)
  assert a.reset(_task(3)).observation == b.reset(_task(3)).observation


# -- bad input ----------------------------------------------------------------------------------


def test_bad_config_values(synthetic_config, tmp_path):
  with pytest.raises(ValueError, match="env.goal_source='web'"):
    webshop.load_tasks(dict(synthetic_config, goal_source="web"), "test")
  with pytest.raises(ValueError, match="env.num_products='ten'; expected int"):
    webshop.load_tasks(dict(synthetic_config, num_products="ten"), "test")
  with pytest.raises(ValueError, match="split='dev'"):
    webshop.load_tasks(synthetic_config, "dev")
  with pytest.raises(data.DataError, match="is not a folder"):
    webshop.load_tasks(dict(synthetic_config, data_dir=str(tmp_path / "nope")), "test")
  with pytest.raises(data.DataError, match="has none of"):
    webshop.load_tasks(dict(synthetic_config, data_dir=str(tmp_path)), "test")
  with pytest.raises(ValueError, match="observation_mode='html'"):
    webshop.make_env(dict(synthetic_config, observation_mode="html"))
  with pytest.raises(ValueError, match="synthetic_num_products=3"):
    webshop.load_tasks(dict(synthetic_config, synthetic_num_products=3), "all")


def test_bad_tasks(synthetic_config):
  env = webshop.make_env(synthetic_config)
  with pytest.raises(RuntimeError, match="reset"):
    env.step("search[x]")
  with pytest.raises(ValueError, match="payload=99999"):
    env.reset(_task(99999))
  with pytest.raises(ValueError, match="not 'webshop'"):
    env.reset(base.Task(env="alfworld", split="test", key="g", task_type="x", payload=0))


def _write(folder, products, attributes=None):
  (folder / "items_shuffle_1000.json").write_text(json.dumps(products))
  (folder / "items_ins_v2_1000.json").write_text(json.dumps(attributes or {}))
  return folder


def test_bad_data_files(synthetic_config, tmp_path):
  good = dict(
    asin="B000000001",
    name="Tea",
    product_category="Grocery › Tea",
    category="grocery",
    query="tea",
    small_description=["x"],
    pricing="$3.00",
    customization_options="",
  )
  config = dict(synthetic_config, data_dir=str(tmp_path))
  _write(tmp_path, {"not": "a list"})
  with pytest.raises(data.DataError, match="items_shuffle_1000.json: expected a JSON array"):
    webshop.load_tasks(config, "all")
  _write(tmp_path, [dict(good, name=None)])
  with pytest.raises(data.DataError, match="record 0: key 'name' is None; expected a string"):
    webshop.load_tasks(config, "all")
  _write(tmp_path, [dict(good, pricing=12)])
  with pytest.raises(data.DataError, match="pricing=12"):
    webshop.load_tasks(config, "all")
  _write(tmp_path, [dict(good, customization_options=["red"])])
  with pytest.raises(data.DataError, match="customization_options must be an object"):
    webshop.load_tasks(config, "all")
  _write(tmp_path, [good], {"B000000001": {"attributes": "tea"}})
  with pytest.raises(data.DataError, match="items_ins_v2_1000.json, ASIN B000000001"):
    webshop.load_tasks(config, "all")
  _write(tmp_path, [good], {"B000000001": {"attributes": []}})
  with pytest.raises(data.DataError, match="no synthetic goals"):
    webshop.load_tasks(config, "all")
  (tmp_path / "items_shuffle_1000.json").write_text("[{")
  with pytest.raises(data.DataError, match="is not valid JSON"):
    webshop.load_tasks(config, "all")


def test_loader_rules():
  # Prices: '$' pieces keep digits and dots; two numbers make a range; none gives 100.0.
  assert data.parse_pricing("$1,299.00", "t") == ([1299.0], "$1299.0")
  assert data.parse_pricing("$12.99 - $15.99", "t") == ([12.99, 15.99], "$12.99 to $15.99")
  assert data.parse_pricing("", "t") == ([100.0], "$100.0")
  assert data.parse_pricing(None, "t") == ([100.0], "$100.0")
  options, images = data.parse_options(
    {"Color": [{"value": " Black/White ", "image": "u"}], "Size": None}, "t"
  )
  assert options == {"color": ["black | white"]} and images == {"black | white": "u"}
