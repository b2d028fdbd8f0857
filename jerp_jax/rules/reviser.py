"""The reviser: the model itself turns this epoch's rollouts into rule edits.

For each task key with something to learn from, one prompt holds the task, the rules a task of
its type sees (ids, scores, scopes), a compact view of this epoch's failed and successful rollouts
and a reference success (the ReferenceStore's best, or else one of this epoch's wins). Groups with
no failure, or with neither a reference nor a success, are skipped and counted. All prompts go to
the model in one batch; the model's text is parsed line by line.

Edit line format (strict; one edit per line; the first word is upper-case; spaces around ':' and
',' are tolerated, nothing else is):

    ADD <scope>: <rule text>            <scope> is the task's type or 'global'
    EDIT R<id>: <new rule text>
    UPVOTE R<id>
    DOWNVOTE R<id>
    MERGE R<id>,R<id>[,R<id>...]: <merged rule text>
    REMOVE R<id>

A well-formed line is still rejected when it names an id that was not in its prompt, a scope other
than the two allowed, a text that the pool refuses (empty, over `max_rule_chars` — texts are never
cut —, control characters, chat-template markers), an id already touched earlier in the same
output, or comes after `max_edits_per_revision` accepted edits. It is also rejected, and counted as
degenerate, when its text is no rule: no word of two letters, the text of an existing rule or of an
earlier edit of the same output, a copy of the prompt's text (one of its lines, or a text made
mostly of runs of four of its words), or a text that names a numbered object ('apple 1': a detail
of one game, which misled held-out games when kept). Blank lines are ignored; any
other line is counted as malformed. Nothing the model writes can break the pool's invariants: the parser
only proposes, and RulePool.apply checks again (an edit that conflicts with an earlier group's,
e.g. on a rule that group removed, is rejected there).

With `constrained` (the default) the model writes under each prompt's edit grammar
(jerp_jax/sampling/grammar.py): at every step only tokens that keep the answer a prefix of
well-formed edit lines, on that prompt's scopes and shown ids, can be drawn, so even a 135M model
writes no malformed line; whether an edit is any good is still the parser's and the pool's call.

Which weights write the edits is the config's choice: the current policy (default, the paper's
"same model") or the frozen base model without adapters. The reviser never trains or retrieves;
it takes a `generate` function (prompts -> texts), so tests can script the model.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from typing import Any, Callable, Sequence

import ml_collections

from jerp_jax import checks
from jerp_jax.rules.embed import WEIGHTS, select_weights
from jerp_jax.rules.pool import (
  GLOBAL_SCOPE,
  Edit,
  RuleError,
  RulePool,
  normalize_text,
  text_problem,
)
from jerp_jax.rules.records import EpisodeRecord
from jerp_jax.rules.reference import ReferenceStore
from jerp_jax.sampling import grammar as grammar_lib
from jerp_jax.sampling import sampler as sampler_lib

# prompts -> texts; with `rules.reviser.answer_prefix` set, also the start of each answer (which
# is part of the prompt, and not repeated in the text returned); with `constrained`, the keyword
# `grammars`: one grammar.EditGrammar per prompt.
GenerateFn = Callable[..., list[str]]
_WORD = re.compile(r"[A-Za-z]{2}")  # a rule holds a word; the edit grammar opens with one

_ID = r"R(\d{1,9})"
_LINE_FORMS = {
  "ADD": re.compile(r"ADD\s+([A-Za-z0-9_\-]{1,64})\s*:\s*(.*)"),
  "EDIT": re.compile(rf"EDIT\s+{_ID}\s*:\s*(.*)"),
  "UPVOTE": re.compile(rf"UPVOTE\s+{_ID}"),
  "DOWNVOTE": re.compile(rf"DOWNVOTE\s+{_ID}"),
  "MERGE": re.compile(r"MERGE\s+(R\d{1,9}(?:\s*,\s*R\d{1,9})+)\s*:\s*(.*)"),
  "REMOVE": re.compile(rf"REMOVE\s+{_ID}"),
}


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.weights = "policy"  # 'policy': current LoRA policy (the paper) | 'base': frozen base model
  c.max_new_tokens = 256
  c.temperature = 0.7
  c.top_p = 1.0
  c.top_k = 0  # 0: off
  c.stop_strings = ()
  c.seed = 0
  c.max_edits_per_revision = 6  # accepted edits per task group; later lines are rejected
  c.max_failed_shown = 2  # failed rollouts shown per prompt
  c.max_steps_shown = 10  # last steps of each rollout shown
  c.max_obs_chars = 160  # each observation is cut to this
  # Rollout views shrink until a prompt fits (~4 chars a token: 6000 leaves SmolLM2's 2048-token
  # context room for the answer). Rules and instructions are never cut.
  c.max_prompt_chars = 6000
  # The start of every answer, written for the model: e.g. 'ADD {task_type}:' makes a small model
  # that cannot produce the line format write at least one ADD edit for the group's task type.
  # '' (the default and the paper): the model writes the whole answer.
  c.answer_prefix = ""
  # Decode under each prompt's edit grammar (sampling/grammar.py): every answer is well-formed
  # edit lines. False: free text, parsed as written (with answer_prefix, if any).
  c.constrained = True
  # Edit lines shown after the instructions as examples of the form and of advice (few-shot),
  # e.g. ('ADD global: Open a closed receptacle before looking for an object in it.',). A rule
  # copied from them is a copy of the prompt: rejected as degenerate. (): none.
  c.examples = ()
  # With `constrained`: words every rule text opens with (grammar.EditGrammar.openers), e.g.
  # ('Always', 'Never', 'Before', 'After'), named in the instructions; (): any word. And
  # `words_only`: rule texts of letters, spaces and , . ' - (no digits, '_' or symbols).
  c.openers = ()
  c.words_only = False
  return c


def validate_config(c: ml_collections.ConfigDict, prefix: str = "rules.reviser") -> None:
  positive = checks.POSITIVE_INT
  checks.require(c, prefix, {
    "weights": checks.one_of(WEIGHTS), "max_new_tokens": positive,
    "max_edits_per_revision": positive, "max_failed_shown": positive,
    "max_steps_shown": positive, "max_obs_chars": positive, "max_prompt_chars": positive,
  })  # fmt: skip
  # The generation fields (temperature, top_p, top_k, stop_strings) are checked as the sampler
  # will read them.
  sampler_lib.SamplingParams.from_config(c, where=prefix)
  checks.require(c, prefix, {
    "answer_prefix": ("a string ('' for none)", lambda v: isinstance(v, str)),
    "constrained": checks.BOOL,
    "examples": ("a tuple of edit lines (ADD <scope>: <text>, ...)",
                 lambda v: isinstance(v, (tuple, list)) and all(_is_edit_line(x) for x in v)),
    "openers": ("a tuple of words (e.g. ('Always', 'Before')), with constrained=True",
                lambda v: isinstance(v, (tuple, list)) and (c.constrained or not v) and all(
                  isinstance(x, str) and grammar_lib.OPENER.fullmatch(x) for x in v)),
    "words_only": checks.BOOL,
  })  # fmt: skip
  if c.constrained and c.answer_prefix:
    checks.fail(
      c, prefix, "answer_prefix", "'' when constrained=True (the grammar writes the whole answer)"
    )


def _line_form(line: str) -> tuple[str | None, re.Match | None]:
  """(the edit form `line` is written in, its match), or (None, None) for no edit line."""
  for name, form in _LINE_FORMS.items():
    if match := form.fullmatch(line):
      return name, match
  return None, None


def _is_edit_line(line) -> bool:
  return isinstance(line, str) and _line_form(line.strip())[0] is not None


# --- parsing ------------------------------------------------------------------------------------


@dataclasses.dataclass
class ParseResult:
  edits: list[Edit]
  rejected: list[tuple[str, str]]  # (line cut to 200 chars, reason) for refused well-formed lines
  malformed: int  # non-blank lines in none of the forms
  degenerate: int = 0  # of `rejected`: texts that are no rule (reasons 'degenerate: ...')


def _ids(text: str) -> tuple[int, ...]:
  return tuple(int(t.strip()[1:]) for t in text.split(","))


def _key(text: str) -> str:
  """How texts are compared for copies: one spacing, no case, no closing punctuation."""
  return normalize_text(text).casefold().rstrip(" .!;,")


# A text whose words lie mostly (COPY_SHARE) in runs of COPY_RUN words found in the prompt copies
# it, whatever it adds: SmolLM2-135M wrote "pick_and_place_simple or global. Use only the rule ids
# listed above. A rule text is one short general instruction of atm" (19 of 20 words copied).
COPY_RUN = 4
COPY_SHARE = 0.75


def _words(text: str) -> list[str]:
  return re.findall(r"[a-z0-9_]+", text.casefold())


@dataclasses.dataclass(frozen=True)
class PromptText:
  """What a rule text could copy from its prompt."""

  # The keys of each line, each ' | ' part of it, and each part after its label ('Task: ...',
  # '1. saw: ...'): a short text equal to one of them is a copy.
  parts: frozenset[str]
  runs: frozenset[tuple[str, ...]]  # every run of COPY_RUN words

  @classmethod
  def of(cls, prompt: str) -> PromptText:
    parts = set()
    for line in prompt.splitlines():
      for part in [line] + line.split(" | "):
        parts.update({_key(part), _key(part.split(": ", 1)[-1])})
    parts.discard("")
    w = _words(prompt)
    runs = {tuple(w[i : i + COPY_RUN]) for i in range(len(w) - COPY_RUN + 1)}
    return cls(frozenset(parts), frozenset(runs))

  def copied_by(self, text: str) -> bool:
    if _key(text) in self.parts:
      return True
    w = _words(text)
    covered = [False] * len(w)
    for i in range(len(w) - COPY_RUN + 1):
      if tuple(w[i : i + COPY_RUN]) in self.runs:
        covered[i : i + COPY_RUN] = [True] * COPY_RUN
    return len(w) >= COPY_RUN and sum(covered) >= COPY_SHARE * len(w)


REPEAT_MIN_WORDS = 12  # texts this long or longer are checked for repetition
# Words of the instructions, not of any task: a text that uses them is about writing rules
# ("Never write anything, use only the rule ids listed above.", SmolLM2-135M under openers).
META_WORDS = frozenset({"rule", "rules", "edit", "edits", "ids", "scope", "scopes"})
# A word and a number ('sinkbasin 1', 'drawer 2'): an object of one game, not advice. SmolLM2-135M
# wrote such rules from its rollouts ("move apple 1 to microwave 1"); kept, they cost held-out
# games (13 of 32 won without one run's four such rules, 6 with them, same weights; 2026-12-04).
_NUMBERED = re.compile(r"\b[A-Za-z]+ \d+\b")


def degenerate_reason(
  op: str,
  ids: tuple[int, ...],
  text: str,
  rule_texts: dict[int, str],
  earlier: set[str],
  prompt: PromptText,
) -> str | None:
  """Why a well-formed text is no rule, or None: no word, a text that keeps repeating itself, the
  text of an existing rule (other than those a MERGE joins) or of an earlier edit, or a copy of
  the prompt's text (a line of it, or mostly runs of its words), a text about rules and edits
  (META_WORDS) rather than the task, or one that names a numbered object (_NUMBERED)."""
  key = _key(text)
  if not _WORD.search(text):
    return "degenerate: no words"
  words = re.findall(r"[a-z]+", text.lower())
  # A small model that runs on repeats its phrases ("The next step is the final step." three
  # times): under half distinct words in a long text. Advice of 30 words measured 0.67.
  if len(words) >= REPEAT_MIN_WORDS and len(set(words)) < 0.5 * len(words):
    return "degenerate: repeats itself"
  if any(_key(t) == key for i, t in rule_texts.items() if not (op == "MERGE" and i in ids)):
    return "degenerate: duplicate rule"
  if key in earlier:
    return "degenerate: duplicate edit"
  if prompt.copied_by(text):
    return "degenerate: copies the prompt"
  if META_WORDS.intersection(words):
    return "degenerate: about the rules, not the task"
  if _NUMBERED.search(text):
    return "degenerate: names a numbered object"
  return None


def parse_edits(
  text: str,
  known_ids: set[int] | frozenset[int],
  allowed_scopes: Sequence[str],
  max_rule_chars: int,
  max_edits: int,
  rule_texts: dict[int, str] | None = None,
  prompt: str = "",
) -> ParseResult:
  """The model's output -> the edits it may make; every other line is rejected or malformed.

  `rule_texts` (id -> text of the pool's rules) and `prompt` feed the degenerate checks.
  """
  rule_texts = rule_texts or {}
  prompt_text = PromptText.of(prompt)
  earlier: set[str] = set()
  degenerate = 0
  edits: list[Edit] = []
  rejected: list[tuple[str, str]] = []
  malformed = 0
  touched: set[int] = set()
  for raw in str(text).splitlines():
    line = raw.strip()
    if not line:
      continue
    op, match = _line_form(line)
    if op is None:
      malformed += 1
      continue
    shown = line if len(line) <= 200 else line[:200] + "..."  # reports stay small

    def reject(reason: str, shown=shown):
      rejected.append((shown, reason))

    if op == "ADD":
      ids, scope, body = (), match.group(1), match.group(2)
    elif op == "EDIT":
      ids, scope, body = (int(match.group(1)),), "", match.group(2)
    elif op == "MERGE":
      ids, scope, body = _ids(match.group(1)), "", match.group(2)
    else:
      ids, scope, body = (int(match.group(1)),), "", ""
    if len(edits) >= max_edits:
      reject("over max_edits_per_revision")
      continue
    if op == "ADD" and scope not in allowed_scopes:
      reject("scope not allowed")
      continue
    if any(i not in known_ids for i in ids):
      reject("unknown id")
      continue
    if len(set(ids)) != len(ids):
      reject("repeated id")
      continue
    if any(i in touched for i in ids):
      reject("id already edited")
      continue
    text_norm = ""
    if op in ("ADD", "EDIT", "MERGE"):
      text_norm = normalize_text(body)
      problem = text_problem(text_norm, max_rule_chars)
      if problem:
        reject(problem)
        continue
    if text_norm:
      reason = degenerate_reason(op, ids, text_norm, rule_texts, earlier, prompt_text)
      if reason:
        reject(reason)
        degenerate += 1
        continue
      earlier.add(_key(text_norm))
    touched.update(ids)
    edits.append(Edit(op, ids, text_norm, scope))
  return ParseResult(edits, rejected, malformed, degenerate)


# --- prompts ------------------------------------------------------------------------------------

_INSTRUCTIONS = """\
Compare the failed attempts with the successful one and improve the rules, so that an agent that \
reads them fails less on tasks like this one. Write at most {max_edits} edits, one per line, each \
in exactly one of these forms:
ADD <scope>: <rule text>
EDIT R<id>: <new rule text>
UPVOTE R<id>
DOWNVOTE R<id>
MERGE R<id>,R<id>: <merged rule text>
REMOVE R<id>
<scope> is {task_type} or global. Use only the rule ids listed above. A rule text is one short \
general instruction of at most {max_chars} characters. Write only edit lines, nothing else."""


def _cut(text: str, n: int) -> str:
  text = " ".join(str(text).split())
  return text if len(text) <= n else text[: n - 3] + "..."


def render_episode(e: EpisodeRecord, title: str, max_steps: int, max_obs_chars: int) -> str:
  shown = e.steps[-max_steps:]
  skipped = len(e.steps) - len(shown)
  head = f"{title} ({len(e.steps)} steps"  # the title says whether it failed
  head += f"; the last {len(shown)} shown):" if skipped else "):"
  lines = [head]
  for n, (obs, act) in enumerate(shown, start=skipped + 1):
    lines.append(f"{n}. saw: {_cut(obs, max_obs_chars)} | did: {_cut(act, max_obs_chars)}")
  return "\n".join(lines)


@dataclasses.dataclass
class RevisionGroup:
  task_key: str
  task_text: str
  task_type: str
  failures: list[EpisodeRecord]
  successes: list[EpisodeRecord]
  reference: EpisodeRecord | None  # from the store, else the shortest of `successes`
  shown_ids: frozenset[int] = frozenset()
  prompt: str = ""
  fits: bool = True  # the model can read `prompt` and still answer (set by build_prompt)


@dataclasses.dataclass
class RevisionReport:
  groups: int = 0  # task keys seen
  revised: int = 0  # groups that got a prompt
  skipped_no_failure: int = 0
  skipped_no_success: int = 0  # a failure, but neither a reference nor a success
  skipped_too_long: int = 0  # a prompt that leaves the model no room to answer, even shortened
  proposed: int = 0  # well-formed edit lines
  applied: int = 0
  rejected: int = 0  # well-formed but refused, by the parser's limits or by the pool
  degenerate: int = 0  # of `rejected`: texts that are no rule (see degenerate_reason)
  malformed: int = 0  # non-blank lines in none of the forms
  applied_by_op: dict[str, int] = dataclasses.field(default_factory=dict)
  rejected_reasons: dict[str, int] = dataclasses.field(default_factory=dict)
  prompts: list[str] = dataclasses.field(default_factory=list)
  outputs: list[str] = dataclasses.field(default_factory=list)

  def metrics(self) -> dict[str, int]:
    """Scalar counts for the metrics writer (prompts and outputs left out), rejections by reason."""
    out = {
      k: v for k, v in dataclasses.asdict(self).items() if isinstance(v, int) and k != "prompts"
    }
    out.update({f"applied_{op.lower()}": n for op, n in sorted(self.applied_by_op.items())})
    # Reasons are a fixed set of phrases ('degenerate: duplicate rule' -> 'rejected_degenerate_...').
    out.update(
      {"rejected_" + re.sub(r"\W+", "_", r).strip("_"): n for r, n in self.rejected_reasons.items()}
    )
    return out


class Reviser:
  def __init__(self, config: ml_collections.ConfigDict, generate: GenerateFn):
    validate_config(config)
    self.config = config
    self.generate = generate

  def groups(
    self, episodes: Sequence[EpisodeRecord], reference_store: ReferenceStore | None
  ) -> tuple[list[RevisionGroup], RevisionReport]:
    """Episodes by task key (in first-seen order), with the skips counted."""
    by_key: dict[str, list[EpisodeRecord]] = collections.OrderedDict()
    for e in episodes:
      by_key.setdefault(e.task_key, []).append(e)
    report = RevisionReport(groups=len(by_key))
    groups = []
    for key, eps in by_key.items():
      failures = [e for e in eps if not e.won]
      successes = sorted((e for e in eps if e.won), key=lambda e: len(e.steps))
      if not failures:
        report.skipped_no_failure += 1
        continue
      reference = reference_store.get(key) if reference_store is not None else None
      if reference is None and successes:
        reference = successes[0]
      if reference is None:
        report.skipped_no_success += 1
        continue
      first = eps[0]
      groups.append(
        RevisionGroup(key, first.task_text, first.task_type, failures, successes, reference)
      )
    return groups, report

  def build_prompt(self, group: RevisionGroup, pool: RulePool) -> str:
    """The group's prompt; rollouts are shown shorter until it fits `max_prompt_chars`.

    The rules and the instructions are always shown in full; the view of each rollout shrinks
    (fewer steps, then shorter observations) so that the prompt stays within the model's context.
    """
    c = self.config
    rules = sorted(pool.for_task(group.task_type), key=lambda r: (-r.score, r.id))
    group.shown_ids = frozenset(r.id for r in rules)
    head = [
      "You maintain the rules that guide an agent in a text-based household environment.",
      f"Task: {_cut(group.task_text, 300)}",
      f"Task type: {group.task_type}",
      "",
      "Current rules (id, score, scope):",
    ]
    head += [f"R{r.id} (score {r.score}, {r.scope}): {r.text}" for r in rules] or ["(none yet)"]
    tail = _INSTRUCTIONS.format(
      max_edits=c.max_edits_per_revision, task_type=group.task_type, max_chars=pool.max_rule_chars
    )
    if c.openers:
      tail += f" Start each rule text with one of: {', '.join(c.openers)}."
    if c.examples:
      tail += "\nExamples of edits for other tasks (write your own):\n" + "\n".join(c.examples)
    shown = [
      (e, f"Failed attempt {n}") for n, e in enumerate(group.failures[: c.max_failed_shown], 1)
    ]
    shown += [(e, "Successful attempt") for e in group.successes if e is not group.reference][:1]
    title = "Reference success" + (" (expert)" if group.reference.source == "expert" else "")
    shown.append((group.reference, title))
    steps, obs_chars = c.max_steps_shown, c.max_obs_chars
    while True:
      views = [render_episode(e, t, steps, obs_chars) for e, t in shown]
      prompt = "\n\n".join(["\n".join(head)] + views + [tail])
      fits = len(prompt) <= c.max_prompt_chars and self._fits(prompt)
      if fits or (steps == 1 and obs_chars <= 40):
        group.fits = fits or self._fits(prompt)  # the shortest view, still too long?
        break
      if steps > 1:
        steps = max(1, steps // 2)
      else:
        obs_chars = max(40, obs_chars // 2)
    group.prompt = prompt
    return prompt

  def _fits(self, prompt: str) -> bool:
    """Whether the model can read `prompt` and still answer: the generate function's own check
    (`generate.fits`, in tokens) where it has one; scripted ones take any prompt."""
    return getattr(self.generate, "fits", lambda _: True)(prompt)

  def grammar(self, group: RevisionGroup, pool: RulePool) -> grammar_lib.EditGrammar:
    """What the group's answer may be (after build_prompt, which sets the ids it shows)."""
    c = self.config
    return grammar_lib.EditGrammar(
      group.task_type, group.shown_ids, pool.max_rule_chars, c.max_edits_per_revision, c.openers,
      c.words_only,
    )  # fmt: skip

  def revise(
    self,
    pool: RulePool,
    episodes: Sequence[EpisodeRecord],
    reference_store: ReferenceStore | None = None,
    epoch: int = 0,
  ) -> RevisionReport:
    """Prompts the model once per informative group and applies the edits it wrote."""
    groups, report = self.groups(episodes, reference_store)
    prompts = [self.build_prompt(g, pool) for g in groups]
    # A group whose shortest prompt still leaves no room for the answer is skipped, not fatal.
    report.skipped_too_long = sum(not g.fits for g in groups)
    prompts = [p for g, p in zip(groups, prompts) if g.fits]
    groups = [g for g in groups if g.fits]
    if not groups:
      return report
    if self.config.constrained:
      outputs = list(self.generate(prompts, grammars=[self.grammar(g, pool) for g in groups]))
    elif self.config.answer_prefix:
      prefixes = [self.config.answer_prefix.format(task_type=g.task_type) for g in groups]
      # Whitespace the model puts right after the prefix (a small model starts a new line) is
      # layout, not content: the edit's text is what follows it.
      answers = self.generate(prompts, prefixes)
      outputs = [p.rstrip() + " " + o.lstrip() for p, o in zip(prefixes, answers)]
    else:
      outputs = list(self.generate(prompts))
    if len(outputs) != len(prompts):
      raise ValueError(f"generate returned {len(outputs)} texts for {len(prompts)} prompts")
    report.revised = len(groups)
    report.prompts, report.outputs = prompts, outputs
    applied_by_op: collections.Counter[str] = collections.Counter()
    reasons: collections.Counter[str] = collections.Counter()
    for group, text in zip(groups, outputs):
      parsed = parse_edits(
        text,
        group.shown_ids,
        (group.task_type, GLOBAL_SCOPE),
        pool.max_rule_chars,
        self.config.max_edits_per_revision,
        {r.id: r.text for r in pool.rules.values()},
        group.prompt,
      )
      report.malformed += parsed.malformed
      report.degenerate += parsed.degenerate
      report.proposed += len(parsed.edits) + len(parsed.rejected)
      for _, reason in parsed.rejected:
        reasons[reason] += 1
      for edit in parsed.edits:
        try:
          pool.apply(edit, epoch=epoch, source=f"task:{group.task_key}")
        except RuleError as e:
          reasons[f"pool: {e.kind}"] += 1
          continue
        applied_by_op[edit.op] += 1
    report.applied = sum(applied_by_op.values())
    report.rejected = sum(reasons.values())
    report.applied_by_op = dict(sorted(applied_by_op.items()))
    report.rejected_reasons = dict(sorted(reasons.items()))
    return report


def make_generate_fn(
  sampler: Any, variables: dict, config: ml_collections.ConfigDict
) -> GenerateFn:
  """prompts -> texts with the real model: chat template, the configured weights, one batch.

  `sampler` is a jerp_jax.sampling.sampler.Sampler with a tokenizer. Special tokens (the end of
  turn) are dropped from the text, so they cannot make a last edit line malformed. Each call uses
  a new seed, so two revisions of one epoch do not sample the same way. With `grammars`, each
  prompt is decoded under its EditGrammar's token tables, built once per grammar per function.
  """
  validate_config(config)
  params = sampler_lib.SamplingParams.from_config(config, where="rules.reviser")
  if sampler.tokenizer is None:
    raise ValueError("the reviser's sampler needs a tokenizer")
  weights = select_weights(variables, config.weights)
  tokenizer = sampler.tokenizer
  calls = [0]
  tables: dict[grammar_lib.EditGrammar, grammar_lib.Tables] = {}

  def generate(
    prompts: Sequence[str],
    prefixes: Sequence[str] | None = None,
    grammars: Sequence[grammar_lib.EditGrammar] | None = None,
  ) -> list[str]:
    ids = [tokenizer.encode_chat([{"role": "user", "content": p}]) for p in prompts]
    if prefixes is not None:
      ids = [i + tokenizer.encode(x) for i, x in zip(ids, prefixes)]
    extra = {}
    if grammars is not None:
      for g in grammars:
        if g not in tables:
          tables[g] = grammar_lib.edit_tables(g, tokenizer)
      extra["grammar"] = [tables[g] for g in grammars]
    completions = sampler.generate(weights, ids, params, seed=config.seed + calls[0], **extra)
    calls[0] += 1
    return [tokenizer.decode(c.token_ids, skip_special_tokens=True) for c in completions]

  # Room for the answer: its tokens and an answer prefix's (the longest task type is ~30 chars).
  prefix = len(tokenizer.encode(config.answer_prefix.format(task_type="x" * 32)))
  room = sampler.max_seq_len - params.max_new_tokens - prefix
  generate.fits = lambda prompt: (
    len(tokenizer.encode_chat([{"role": "user", "content": prompt}])) <= room
  )
  return generate
