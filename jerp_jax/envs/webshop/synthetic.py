"""A synthetic WebShop catalogue in the real file formats, deterministic by seed.

It owns `generate(seed, num_products) -> (raw product records, attribute table)` and `write(...)`,
which puts them in a folder as `items_shuffle_synthetic.json` (the raw `items_shuffle*.json`
schema, SPEC §1.2) and `items_ins_v2_synthetic.json` (the `items_ins_v2*.json` schema, §1.5), so
that the environment reads them through the same loader as real data. It never builds goals
or scores: goals come from these files exactly as from the real ones.

The catalogue is made for the embedded default and for tests, not to resemble Amazon: five
categories of the real data, several product types each, products of one type differing in
brand, attributes, price and options so that searching and choosing matter. About half of the
products that have attributes carry a synthetic instruction ("Find me ... with ...").
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import string
from typing import Any

# Part of the cache folder name: bump it whenever the generator changes what it writes.
VERSION = 1
PRODUCTS_FILE = "items_shuffle_synthetic.json"
ATTRIBUTES_FILE = "items_ins_v2_synthetic.json"

BRANDS = (
  "Aldora Brivo Calloway Dunmore Elkridge Fenwick Galvani Harlow Istra Juniper Kestrel Lumora "
  "Marlowe Norvik Oakhurst Pemberly Quillon Rowan Solvay Tamsin Ulster Verity Wexford Yarrow"
).split()

# (category, query, product noun phrase, product_category, attribute pool, option groups)
PRODUCT_TYPES = (
  (
    "beauty",
    "body lotion",
    "Body Lotion",
    "Beauty & Personal Care › Skin Care › Body › Moisturizers › Lotions",
    [
      "dry skin",
      "paraben free",
      "cruelty free",
      "natural ingredients",
      "long lasting",
      "shea butter",
    ],
    {"Scent": ["lavender", "coconut", "unscented", "vanilla"], "Size": ["8 fl oz", "16 fl oz"]},
  ),
  (
    "beauty",
    "shampoo",
    "Shampoo",
    "Beauty & Personal Care › Hair Care › Shampoo & Conditioner › Shampoos",
    ["sulfate free", "hair growth", "dry hair", "tea tree", "natural ingredients", "color safe"],
    {"Size": ["12 fl oz", "24 fl oz", "pack of 2"]},
  ),
  (
    "beauty",
    "lip balm",
    "Lip Balm",
    "Beauty & Personal Care › Skin Care › Lip Care › Balms & Moisturizers",
    ["long lasting", "easy carry", "cruelty free", "dry lips", "travel size"],
    {"Flavor Name": ["mint", "cherry", "honey"], "Size": ["pack of 3", "pack of 6"]},
  ),
  (
    "electronics",
    "wireless earbuds",
    "Wireless Earbuds",
    "Electronics › Headphones, Earbuds & Accessories › Earbuds",
    ["noise cancelling", "long battery life", "water resistant", "fast charging", "hands free"],
    {"Color": ["black", "white", "navy blue"]},
  ),
  (
    "electronics",
    "usb c cable",
    "USB C Charging Cable",
    "Electronics › Computers & Accessories › Cables & Accessories › Cables › USB Cables",
    ["fast charging", "high speed", "braided nylon", "easy use", "durable design"],
    {"Color": ["black", "gray", "red"], "Size": ["3 ft", "6 ft", "10 ft"]},
  ),
  (
    "electronics",
    "portable speaker",
    "Portable Bluetooth Speaker",
    "Electronics › Portable Audio & Video › Portable Speakers & Docks › Bluetooth Speakers",
    ["water resistant", "long battery life", "easy carry", "high quality", "stereo sound"],
    {"Color": ["black", "blue", "green", "orange"]},
  ),
  (
    "fashion",
    "women's t-shirts",
    "Women's Crew Neck T-Shirt",
    "Clothing, Shoes & Jewelry › Women › Clothing › Tops, Tees & Blouses › T-Shirts",
    ["machine wash", "short sleeve", "cotton spandex", "daily wear", "relaxed fit", "crew neck"],
    {"Color": ["black", "white", "heather grey", "pink"], "Size": ["small", "medium", "large"]},
  ),
  (
    "fashion",
    "men's running shoes",
    "Men's Running Shoe",
    "Clothing, Shoes & Jewelry › Men › Shoes › Athletic › Running",
    ["non slip", "rubber sole", "lace up", "lightweight", "breathable mesh"],
    {"Color": ["black", "grey", "navy"], "Size": ["8", "9", "10", "11"]},
  ),
  (
    "fashion",
    "women's jeans",
    "Women's High Waist Skinny Jeans",
    "Clothing, Shoes & Jewelry › Women › Clothing › Jeans",
    ["high waist", "slim fit", "machine wash", "button closure", "stretch denim"],
    {"Color": ["light blue", "dark blue", "black"], "Size": ["4", "6", "8", "10"]},
  ),
  (
    "garden",
    "throw pillow covers",
    "Throw Pillow Cover",
    "Home & Kitchen › Bedding › Decorative Pillows, Inserts & Covers › Throw Pillow Covers",
    ["living room", "machine washable", "double sided", "hidden zipper", "soft velvet"],
    {"Color": ["beige", "green", "rust", "grey"], "Size": ['18" x 18"', '20" x 20"']},
  ),
  (
    "garden",
    "coffee tables",
    "Coffee Table",
    "Home & Kitchen › Furniture › Living Room Furniture › Tables › Coffee Tables",
    ["living room", "easy assemble", "solid wood", "storage space", "mid century"],
    {"Color": ["walnut", "white", "espresso"]},
  ),
  (
    "garden",
    "desk lamps",
    "LED Desk Lamp",
    "Tools & Home Improvement › Lighting & Ceiling Fans › Lamps & Shades › Desk Lamps",
    ["eye caring", "usb port", "dimmable light", "easy install", "living room"],
    {"Color": ["black", "white", "silver"]},
  ),
  (
    "grocery",
    "green tea",
    "Organic Green Tea Bags",
    "Grocery & Gourmet Food › Beverages › Coffee, Tea & Cocoa › Tea › Green",
    ["usda organic", "caffeine free", "non gmo", "individually wrapped", "natural flavors"],
    {"Flavor Name": ["jasmine", "mint", "matcha"], "Size": ["20 count", "100 count"]},
  ),
  (
    "grocery",
    "protein bars",
    "Protein Bar",
    "Grocery & Gourmet Food › Snack Foods › Bars › Protein Bars",
    ["gluten free", "low sugar", "high protein", "keto friendly", "individually wrapped"],
    {"Flavor Name": ["chocolate", "peanut butter", "almond"], "Size": ["12 count", "24 count"]},
  ),
  (
    "grocery",
    "olive oil",
    "Extra Virgin Olive Oil",
    "Grocery & Gourmet Food › Pantry Staples › Cooking Oils › Olive Oils",
    ["cold pressed", "non gmo", "gluten free", "first cold", "kosher certified"],
    {"Size": ["16.9 fl oz", "33.8 fl oz", "pack of 2"]},
  ),
)

_DESCRIPTORS = ("Premium", "Classic", "Everyday", "Deluxe", "Essential", "Signature", "Ultra")


def _asin(rng: random.Random, used: set[str]) -> str:
  while True:
    asin = "B0" + "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(8))
    if asin not in used:
      used.add(asin)
      return asin


def _pricing(rng: random.Random) -> str:
  roll = rng.random()
  low = round(rng.uniform(5.0, 120.0), 2)
  if roll < 0.08:
    return ""
  if roll < 0.25:
    return f"${low:.2f} - ${low + round(rng.uniform(2.0, 30.0), 2):.2f}"
  return f"${low:.2f}"


def _options(rng: random.Random, spec: dict[str, list[str]]) -> dict[str, Any] | str:
  if rng.random() < 0.2:
    return ""
  out = {}
  for name, values in spec.items():
    k = rng.randint(2, len(values))
    chosen = sorted(rng.sample(values, k), key=values.index)
    out[name] = [{"value": v, "image": f"https://example.invalid/{v}.jpg"} for v in chosen]
  return out


def _instruction(rng: random.Random, query: str, attributes: list[str]) -> str:
  """`Find me <a>, <b> <query> with <c>, <d>`: the shape of the real synthetic instructions."""
  k = rng.randint(0, len(attributes))
  before, after = attributes[:k], attributes[k:]
  text = "Find me " + (", ".join(before) + " " if before else "") + query
  if after:
    text += " with " + ", ".join(after)
  return text


def generate(seed: int, num_products: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
  """Raw product records (catalogue order) and the attribute table keyed by ASIN."""
  if num_products < len(PRODUCT_TYPES):
    raise ValueError(
      f"env.synthetic_num_products={num_products}; expected at least {len(PRODUCT_TYPES)}"
    )
  rng = random.Random(seed)
  used: set[str] = set()
  records, table = [], {}
  for i in range(num_products):
    category, query, noun, path, pool, option_spec = PRODUCT_TYPES[i % len(PRODUCT_TYPES)]
    asin = _asin(rng, used)
    brand = rng.choice(BRANDS)
    attributes = rng.sample(pool, rng.randint(0, min(4, len(pool))))
    features = [a.title() for a in attributes[:2]]
    title = " ".join([brand, rng.choice(_DESCRIPTORS), *features, noun])
    if rng.random() < 0.5:
      title += f", {rng.randint(1, 4)} Pack"
    bullets = [f"{a.capitalize()}: made by {brand} for everyday use." for a in attributes] or [
      f"{noun} by {brand}."
    ]
    records.append(
      dict(
        name=title,
        full_description=(
          f"The {brand} {noun.lower()} is designed for comfort and value."
          if rng.random() < 0.7
          else ""
        ),
        pricing=_pricing(rng),
        images=[f"https://example.invalid/{asin}.jpg"],
        product_category=path,
        average_rating="",
        small_description=bullets,
        customization_options=_options(rng, option_spec),
        asin=asin,
        category=category,
        query=query,
        page=1 + i // 10,
      )
    )
    entry: dict[str, Any] = {"attributes": attributes}
    if attributes and rng.random() < 0.55:
      named = rng.sample(attributes, rng.randint(1, min(3, len(attributes))))
      entry["instruction"] = _instruction(rng, query, named)
      entry["instruction_attributes"] = named
    table[asin] = entry
  return records, table


def write(folder: str | os.PathLike, seed: int, num_products: int) -> pathlib.Path:
  """Writes the two files into `folder` (atomically each) unless they are already there."""
  folder = pathlib.Path(folder)
  if (folder / PRODUCTS_FILE).is_file() and (folder / ATTRIBUTES_FILE).is_file():
    return folder
  folder.mkdir(parents=True, exist_ok=True)
  records, table = generate(seed, num_products)
  for name, payload in ((PRODUCTS_FILE, records), (ATTRIBUTES_FILE, table)):
    tmp = folder / f"{name}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
      json.dump(payload, f, indent=1)
    os.replace(tmp, folder / name)
  return folder
