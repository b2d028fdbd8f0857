import pytest

from jerp_jax.envs.actions import parse_action


@pytest.mark.parametrize(
  "text, expected",
  [
    (
      "<think>the mug is dirty</think><action>go to sinkbasin 1</action>",
      ("go to sinkbasin 1", True),
    ),
    (
      "<action>  Take Mug 1 from\n countertop 2 </action>\n",
      ("take mug 1 from countertop 2", True),
    ),
    ("go to desk 1", ("", False)),  # no tag at all
    ("<action></action>", ("", False)),  # empty
    ("<action>look</action> and then <action>inventory</action>", ("inventory", False)),  # two
    ("<action>look</action> I will look.", ("look", False)),  # trailing chatter
    ("<think>hmm</think><action>open fridge 1", ("open fridge 1", False)),  # unclosed
    ("<action>a <action>b</action>", ("a <action>b", False)),  # nested opening tag
    ("<action>" + "x" * 201 + "</action>", ("x" * 200, False)),  # over the length cap
  ],
)
def test_parse_action(text, expected):
  assert parse_action(text) == expected


def test_custom_tag_and_case():
  assert parse_action("<act>click[Buy Now]</act>", tag="act", lowercase=False) == (
    "click[Buy Now]",
    True,
  )
  assert parse_action("<action>x</action>", tag="act") == ("", False)


def test_bad_tag_is_rejected():
  with pytest.raises(ValueError, match=r"actions.tag='<action>'; expected an XML-like tag name"):
    parse_action("x", tag="<action>")
