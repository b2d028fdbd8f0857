"""Reading WebShop's data files into the records the environment serves (SPEC §1).

It owns the product loader (raw `items_shuffle*.json` records or records already in the
post-load form of `items_shuffle_1000.loaded.json`), the attribute / synthetic-instruction file
(`items_ins_v2*.json`), the human-instruction file (`items_human_ins.json`) and the server prices.
It never builds goals, searches or renders pages.

A loaded product is a dict with the upstream post-load keys the rest of the package reads:
asin, name, Title, Description, BulletPoints, MainImage, pricing (floats), Price (display),
options (name -> values), option_to_image, Attributes, category, query, product_category, and
either `instructions` (human records) or `instruction_text` / `instruction_attributes`.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
from decimal import Decimal, InvalidOperation
from typing import Any, Mapping, Sequence

log = logging.getLogger(__name__)

_RAW_REQUIRED = ("asin", "name", "product_category", "category", "query")
_NOT_PRICE = re.compile(r"[^\d.]")


class DataError(ValueError):
  """A data file that does not have the expected shape; the message names file, record and key."""


def read_json(path: str | os.PathLike, what: str) -> Any:
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    raise DataError(f"{what} file {path} does not exist") from None
  except json.JSONDecodeError as e:
    raise DataError(f"{what} file {path} is not valid JSON: {e}") from None


def parse_pricing(pricing: Any, where: str) -> tuple[list[float], str]:
  """`$`-string -> (up to two prices, display string); missing or empty -> ([100.0], '$100.0').

  Every piece after a `$` keeps only its digits and dots (`$1,299.00` -> 1299.0). A piece with
  no readable number is skipped with a warning (upstream would stop with an exception).
  """
  if isinstance(pricing, list) and all(isinstance(p, (int, float)) for p in pricing) and pricing:
    values = [float(p) for p in pricing][:2]
  elif not pricing:
    return [100.0], "$100.0"
  elif isinstance(pricing, str):
    values = []
    for piece in pricing.split("$")[1:]:
      digits = _NOT_PRICE.sub("", piece)
      try:
        values.append(float(Decimal(digits)))
      except InvalidOperation:
        log.warning("%s: pricing %r has an unreadable piece %r; skipped", where, pricing, piece)
    if not values:
      log.warning("%s: pricing %r has no price; using 100.0", where, pricing)
      return [100.0], "$100.0"
    values = values[:2]
  else:
    raise DataError(f"{where}: pricing={pricing!r}; expected a '$'-string, '' or a list of numbers")
  if len(values) == 1:
    return values, f"${values[0]}"
  return values, f"${values[0]} to ${values[1]}"


def parse_options(custom: Any, where: str) -> tuple[dict[str, list[str]], dict[str, Any]]:
  """customization_options -> (lower-case name -> cleaned values, value -> image)."""
  options: dict[str, list[str]] = {}
  option_to_image: dict[str, Any] = {}
  if not custom:
    return options, option_to_image
  if not isinstance(custom, Mapping):
    raise DataError(f"{where}: customization_options must be an object or '', got {custom!r:.80}")
  for name, contents in custom.items():
    if contents is None:
      continue
    if not isinstance(contents, list):
      raise DataError(f"{where}: customization_options[{name!r}] must be a list or null")
    values = []
    for item in contents:
      if not isinstance(item, Mapping) or not isinstance(item.get("value"), str):
        raise DataError(
          f"{where}: customization_options[{name!r}] item {item!r:.80} has no 'value'"
        )
      value = item["value"].strip().replace("/", " | ").lower()
      values.append(value)
      option_to_image[value] = item.get("image")
    options[name.lower()] = values
  return options, option_to_image


def _from_raw(p: Mapping[str, Any], where: str) -> dict[str, Any]:
  for key in _RAW_REQUIRED:
    if not isinstance(p.get(key), str):
      raise DataError(f"{where}: key {key!r} is {p.get(key)!r:.60}; expected a string")
  bullets = p.get("small_description", [])
  if isinstance(bullets, str):
    bullets = [bullets]
  elif not isinstance(bullets, list):
    raise DataError(f"{where}: small_description must be a list of strings or a string")
  pricing, price_tag = parse_pricing(p.get("pricing"), where)
  options, option_to_image = parse_options(p.get("customization_options"), where)
  images = p.get("images") or [None]
  return dict(
    asin=p["asin"],
    name=p["name"],
    category=p["category"],
    product_category=p["product_category"],
    query=p["query"].lower().strip(),
    Title=p["name"],
    Description=p.get("full_description") or "",
    BulletPoints=list(bullets),
    MainImage=images[0],
    pricing=pricing,
    Price=price_tag,
    options=options,
    option_to_image=option_to_image,
    Reviews=[],
    Rating="N.A.",
  )


def _from_loaded(p: Mapping[str, Any], where: str) -> dict[str, Any]:
  """A record already in post-load form: take its derived fields as they are."""
  out = _from_raw({**p, "customization_options": None, "pricing": None}, where)
  pricing, price_tag = parse_pricing(p["pricing"], where)
  options = p.get("options") or {}
  if not isinstance(options, Mapping):
    raise DataError(f"{where}: options must be an object, got {options!r:.60}")
  out.update(
    Title=p.get("Title", p["name"]),
    Description=p.get("Description", out["Description"]) or "",
    BulletPoints=list(p.get("BulletPoints", out["BulletPoints"])),
    MainImage=p.get("MainImage", out["MainImage"]),
    pricing=pricing,
    Price=p.get("Price", price_tag),
    options={str(k): [str(v) for v in vs] for k, vs in options.items()},
    option_to_image=dict(p.get("option_to_image") or {}),
  )
  return out


def load_products(
  path: str | os.PathLike,
  attributes: Mapping[str, Any],
  human: Mapping[str, Any] | None,
  num_products: int | None = None,
) -> list[dict[str, Any]]:
  """Loads and cleans a catalogue file in file order (SPEC §1.3).

  `human` is the human-instruction table when goals are human ones, else None (then each product
  gets `instruction_text` / `instruction_attributes` from the attribute file).
  """
  records = read_json(path, "products")
  if not isinstance(records, list):
    raise DataError(f"products file {path}: expected a JSON array of product objects")
  if num_products:
    records = records[:num_products]
  products, seen = [], set()
  for i, p in enumerate(records):
    where = f"products file {path}, record {i}"
    if not isinstance(p, Mapping):
      raise DataError(f"{where}: expected an object, got {type(p).__name__}")
    asin = p.get("asin")
    if not isinstance(asin, str):
      raise DataError(f"{where}: asin={asin!r}; expected a string")
    if asin == "nan" or len(asin) > 10 or asin in seen:
      continue
    seen.add(asin)
    loaded = isinstance(p.get("pricing"), list) and "options" in p
    product = _from_loaded(p, where) if loaded else _from_raw(p, where)
    entry = attributes.get(asin)
    if isinstance(entry, Mapping) and "attributes" in entry:
      product["Attributes"] = list(entry["attributes"])
    else:
      product["Attributes"] = ["DUMMY_ATTR"]
    if human is not None:
      if asin in human:
        product["instructions"] = human[asin]
    else:
      entry = entry if isinstance(entry, Mapping) else {}
      product["instruction_text"] = entry.get("instruction")
      product["instruction_attributes"] = entry.get("instruction_attributes")
    products.append(product)
  if not products:
    raise DataError(f"products file {path} holds no usable product")
  return products


def load_attributes(path: str | os.PathLike) -> dict[str, Any]:
  table = read_json(path, "attributes")
  if not isinstance(table, dict):
    raise DataError(f"attributes file {path}: expected an object keyed by ASIN")
  for asin, entry in table.items():
    if not isinstance(entry, dict) or not isinstance(entry.get("attributes", []), list):
      raise DataError(f"attributes file {path}, ASIN {asin}: expected {{'attributes': [str, ...]}}")
    if entry.get("instruction") is not None and not entry.get("instruction_attributes"):
      raise DataError(
        f"attributes file {path}, ASIN {asin}: has an instruction but no instruction_attributes"
      )
  return table


def load_human_instructions(path: str | os.PathLike) -> dict[str, list[dict[str, Any]]]:
  table = read_json(path, "human instructions")
  if not isinstance(table, dict):
    raise DataError(f"human instructions file {path}: expected an object keyed by ASIN")
  for asin, records in table.items():
    if not isinstance(records, list):
      raise DataError(f"human instructions file {path}, ASIN {asin}: expected a list of records")
    for j, r in enumerate(records):
      if not isinstance(r, dict) or not isinstance(r.get("instruction"), str):
        raise DataError(f"human instructions file {path}, ASIN {asin}, record {j}: no instruction")
  return table


def server_prices(products: Sequence[Mapping[str, Any]], rng: random.Random) -> dict[str, float]:
  """The hidden price per ASIN (SPEC §1.4): a range draws uniformly between its ends."""
  prices = {}
  for p in products:
    pricing = p["pricing"]
    if not pricing:
      prices[p["asin"]] = 100.0
    elif len(pricing) == 1:
      prices[p["asin"]] = pricing[0]
    else:
      prices[p["asin"]] = rng.uniform(*pricing[:2])
  return prices
