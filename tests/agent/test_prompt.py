import ml_collections
import pytest

from jerp_jax.agent import prompt


def cfg(**kw) -> ml_collections.ConfigDict:
  c = prompt.get_config()
  c.answer_format = "Answer in <{tag}> </{tag}>."
  c.update(kw)
  return c


def test_user_message_exact_text():
  text = prompt.user_message(
    cfg(history_window=1, max_admissible=2),
    "action",
    "put a mug in the sink.",
    "Rules learned from earlier attempts (follow them when they apply):\n[R3] Look first.",
    [("You are in a room.", "go to desk 1"), ("On the desk 1, you see a mug 1.", "take mug 1")],
    "You pick up the mug 1.",
    ("go to sinkbasin 1", "look", "inventory"),
  )
  assert text == (
    "Your task is to: put a mug in the sink.\n\n"
    "Rules learned from earlier attempts (follow them when they apply):\n[R3] Look first.\n\n"
    "Your last 1 steps (of 2 so far):\n"
    "Observation: On the desk 1, you see a mug 1.\nAction: take mug 1\n\n"
    "Now (step 3), the observation: You pick up the mug 1.\n\n"
    "Admissible actions: go to sinkbasin 1, look (and 1 more)\n\n"
    "Answer in <action> </action>."
  )


def test_no_rules_no_history_no_actions():
  text = prompt.user_message(cfg(show_admissible=False), "act", "t.", "", [], "obs", ("a",))
  assert (
    text == "Your task is to: t.\n\nNow (step 1), the observation: obs\n\nAnswer in <act> </act>."
  )


class CharTokenizer:
  def encode_chat(self, messages):
    return [ord(ch) for m in messages for ch in m["content"]]


def test_prompt_ids_shrinks_history_then_observations_to_fit():
  c = cfg(system="", history_window=3, max_observation_chars=400)
  history = [("x" * 300, "a")] * 3
  full = prompt.prompt_ids(CharTokenizer(), c, "action", "t.", "", history, "y" * 300, None, 10_000)
  short = prompt.prompt_ids(CharTokenizer(), c, "action", "t.", "", history, "y" * 300, None, 500)
  assert len(full) > 1000 and len(short) <= 500
  text = "".join(map(chr, short))
  assert "Your last" not in text  # every history turn dropped first
  assert "observation: " + "y" * 300 + "\n" in text  # the observation still whole
  tiny = prompt.prompt_ids(CharTokenizer(), c, "action", "t.", "", history, "y" * 300, None, 150)
  assert len(tiny) <= 150 and "y" * 47 + "...\n" in "".join(map(chr, tiny))


def test_prompt_that_cannot_fit_names_the_fields():
  with pytest.raises(ValueError, match="model.max_seq_len"):
    prompt.prompt_ids(CharTokenizer(), cfg(), "action", "t" * 500, "", [], "o", None, 100)


@pytest.mark.parametrize(
  "field,value,expected",
  [("history_window", -1, "an integer >= 0"), ("answer_format", "no tag", "{tag}")],
)
def test_bad_config(field, value, expected):
  c = cfg()
  c[field] = value
  with pytest.raises(ValueError, match=f"agent.{field}=.*expected.*{expected[:8]}"):
    prompt.validate_config(c)
