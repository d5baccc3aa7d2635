"""Scoring rules on hand-made examples with known answers, using a scripted stand-in for the model."""

import dataclasses

import jax
import numpy as np
import pytest

from conftest import tiny_hf_config, write_hf_dir
from llada_jax import eval_data, evaluate
from llada_jax.config import ModelConfig
from llada_jax.errors import UserError
from llada_jax.sampler import SamplingConfig


class ByteTokenizer:
  """Bytes as ids 10..265; the special ids of the built-in tokenizer."""
  bos_id, eos_id, pad_id, mask_id, eot_id = 1, 2, 2, 3, 6

  def encode(self, text, add_bos=False):
    return [self.bos_id] * add_bos + [10 + b for b in text.encode()]

  def decode(self, ids, skip_special_tokens=True):
    return bytes(int(i) - 10 for i in ids if int(i) >= 10).decode(errors="replace")

  def encode_chat(self, messages, add_generation_prompt=True):
    return [self.bos_id, 4] + self.encode(messages[-1]["content"]) + [6, 4, 5]


class ScriptedModel:
  """log_likelihood: prefers the continuation listed in `best`; generate: writes a fixed reply per prompt."""

  def __init__(self, tokenizer, best=(), replies=None):
    self.tokenizer, self.best, self.replies = tokenizer, set(best), replies or {}
    self.config = ModelConfig(vocab_size=300, embedding_size=300, mask_token_id=3, eos_token_id=2, pad_token_id=2,
                              bos_token_id=1, eot_token_id=6)
    self.calls = []

  def log_likelihoods(self, pairs, *, rngs, **options):
    assert len(rngs) == len(pairs)
    self.calls.append(options)
    texts = [self.tokenizer.decode(answer) for _, answer in pairs]
    return np.array([-1.0 if text in self.best else -5.0 - len(text) for text in texts])

  def generate(self, ids, attention_mask=None, sampling=None, rng=None):
    self.calls.append(sampling)
    gen_length = sampling.gen_length
    rows = []
    for row, mask in zip(np.asarray(ids), np.asarray(attention_mask)):
      prompt = self.tokenizer.decode(row[mask == 1])
      reply = self.tokenizer.encode(self.replies.get(prompt, ""))[:gen_length]
      rows.append(np.concatenate([row, reply + [2] * (gen_length - len(reply))]))
    return type("Out", (), {"tokens": np.asarray(rows), "nfe": gen_length, "row_nfe": np.full(len(rows), 3)})


FAST = SamplingConfig(steps=1, gen_length=1, decoding="threshold", threshold=0.8, cache="dual")


def _task(kind, examples, **kw):
  defaults = dict(name="t", kind=kind, examples=tuple(examples), num_fewshot=0, cfg_scale=0.5, mc_num=8,
                  gen_length=16, steps=16, block_length=16)
  return eval_data.Task(**{**defaults, **kw})


def _progress(_):
  pass


def test_multiple_choice_picks_the_most_likely_continuation_with_the_task_settings():
  tok = ByteTokenizer()
  examples = [
      eval_data.MultipleChoice((eval_data.Choice("Q: sky?", " blue"), eval_data.Choice("Q: sky?", " green")), 0, "a"),
      eval_data.MultipleChoice((eval_data.Choice("Q: 2+2?", " five"), eval_data.Choice("Q: 2+2?", " four")), 1, "b"),
      eval_data.MultipleChoice((eval_data.Choice("Q: x", " one"), eval_data.Choice("Q: x", " two")), 0, "c"),
  ]
  model = ScriptedModel(tok, best={" blue", " four", " two"})
  result = evaluate.score_task(model, tok, _task("multiple_choice", examples), evaluate.EvalOptions(batch_size=4),
                               rng=jax.random.key(0), progress=_progress)
  assert result.metrics == {"acc": pytest.approx(2 / 3)}  # no acc_norm: lm-eval reports none for this task
  assert result.stderr["acc"] == pytest.approx(np.std([1, 1, 0], ddof=1) / np.sqrt(3))
  assert [d["prediction"] for d in result.details] == [0, 1, 1]
  assert all(c["cfg_scale"] == 0.5 and c["mc_num"] == 8 and c["batch_size"] == 4 for c in model.calls)


def test_multiple_choice_scores_do_not_depend_on_the_batching(tmp_path):
  """A real model: choice c of example i is the estimate with key fold_in(rng, 16·i + c) — whether scored one
  pair per call or the choices of three examples together."""
  from llada_jax import load_pretrained
  tok = ByteTokenizer()
  path, _ = write_hf_dir(tmp_path, tiny_hf_config(vocab_size=280, embedding_size=288, mask_token_id=3,
                                                  eos_token_id=2, pad_token_id=2, bos_token_id=1), seed=3)
  model = load_pretrained(path)
  examples = [eval_data.MultipleChoice((eval_data.Choice("Q: sky?", " blue"), eval_data.Choice("Q: sky?", " green")),
                                       0, "a"),
              eval_data.MultipleChoice((eval_data.Choice("Q: 2+2?", " four"), eval_data.Choice("Q: 2+2?", " five")),
                                       0, "b"),
              eval_data.MultipleChoice((eval_data.Choice("A much longer question, to land in another bucket " * 2,
                                                         " yes"), eval_data.Choice("Q", " no")), 1, "c")]
  task = _task("multiple_choice", examples, mc_num=4)
  rng = jax.random.key(5)
  scored = [evaluate.score_task(model, tok, task, evaluate.EvalOptions(add_bos=True, batch_size=2, pairs_per_call=n),
                                rng=rng, progress=_progress).details for n in (1, 3)]
  one, together = ([d["log_likelihoods"] for d in details] for details in scored)
  np.testing.assert_allclose(together, one, rtol=1e-5)
  # data-parallel over 4 devices (the eval --mesh data=4): the rows split, the numbers stay
  from llada_jax import sharding
  parallel = load_pretrained(path, mesh=sharding.make_mesh(4, 1, 1, devices=jax.devices()[:4]))
  spread = evaluate.score_task(parallel, tok, task, evaluate.EvalOptions(add_bos=True, batch_size=2,
                                                                         pairs_per_call=3),
                               rng=rng, progress=_progress).details
  np.testing.assert_allclose([d["log_likelihoods"] for d in spread], one, rtol=1e-5)
  context, continuation = evaluate.encode_pair(tok, "Q: 2+2?", " five", add_bos=True)
  alone = model.log_likelihood(context, continuation, mc_num=4, batch_size=2, cfg_scale=0.5,
                               rng=jax.random.fold_in(rng, 16 * 1 + 1))
  assert one[1][1] == pytest.approx(alone, rel=1e-6)


def test_pair_encoding_moves_the_context_space_into_the_continuation():
  tok = ByteTokenizer()
  context, continuation = evaluate.encode_pair(tok, "Answer: ", "Paris", add_bos=True)
  assert context == [1] + tok.encode("Answer:") and continuation == tok.encode(" Paris")


def test_gsm8k_compares_the_first_final_number():
  tok = ByteTokenizer()
  examples = [eval_data.Generation("Question: 6*7?\nAnswer:", "42", "a"),
              eval_data.Generation("Question: 1+1?\nAnswer:", "2", "b"),
              eval_data.Generation("Question: 10/4?\nAnswer:", "2.5", "c")]
  replies = {"Question: 6*7?\nAnswer:": " 6*7 is 42. The answer is 42.\n\nQuestion: 5+5?\nAnswer: 10",
             "Question: 1+1?\nAnswer:": " It is 3.",
             "Question: 10/4?\nAnswer:": " So the answer is 2.50"}
  result = evaluate.score_task(ScriptedModel(tok, replies=replies), tok,
                               _task("generation", examples, gen_length=64, steps=64, block_length=64),
                               evaluate.EvalOptions(sampling=FAST, batch_size=2), rng=jax.random.key(0),
                               progress=_progress)
  assert [d["prediction"] for d in result.details] == ["42", "3", "2.5"]
  assert result.metrics == {"exact_match": pytest.approx(2 / 3)}
  assert result.settings["decoding"] == "threshold" and result.settings["threshold"] == 0.8
  assert result.settings["model_calls_mean"] == 3 and result.details[0]["model_calls"] == 3


def test_lambada_checks_the_next_word_and_reversal_checks_a_substring():
  tok = ByteTokenizer()
  lam = [eval_data.Generation("He opened the", "door", "a"), eval_data.Generation("She sang a", "song", "b")]
  replies = {"He opened the": " door.", "She sang a": " tune"}
  model = ScriptedModel(tok, replies=replies)
  result = evaluate.score_task(model, tok, _task("last_word", lam), evaluate.EvalOptions(sampling=FAST, batch_size=8),
                               rng=jax.random.key(0), progress=_progress)
  assert result.metrics["exact_match"] == 0.5 and result.details[0]["prediction"] == "door"
  # the user's decoding options with the task's lengths: one block, one step per answer token (+1)
  used = model.calls[-1]
  assert (used.decoding, used.cache, used.threshold) == ("threshold", "dual", 0.8)
  assert used.gen_length == used.steps == used.block_length == len(tok.encode(" song")) + 1
  poems = [eval_data.Generation("first", "second", "p")]
  chat_prompt = tok.decode(tok.encode_chat([{"role": "user", "content": "first"}]))
  result = evaluate.score_task(ScriptedModel(tok, replies={chat_prompt: "I think: second."}), tok,
                               _task("substring", poems), evaluate.EvalOptions(sampling=FAST, batch_size=8),
                               rng=jax.random.key(0), progress=_progress)
  assert result.metrics == {"substring_match": 1.0} and result.stderr == {"substring_match": None}


def test_task_loading_errors_and_overrides():
  with pytest.raises(UserError, match="unknown task"):
    evaluate.load_tasks(["hellaswagg"], data=None, limit=1, num_fewshot=None, cfg_scale=None, mc_num=None,
                        gen_length=None, steps=None, block_length=None)
  tasks = evaluate.load_tasks(["reversal_poems"], data=None, limit=3, num_fewshot=None, cfg_scale=None,
                              mc_num=None, gen_length=None, steps=None, block_length=None)  # the packaged couplets
  assert [len(t.examples) for t in tasks] == [3, 3] and tasks[0].gen_length == 28
  assert tasks[1].examples[0].answer == "窈窕淑女"
  assert dataclasses.replace(tasks[0], mc_num=4).mc_num == 4


class TableModel(ScriptedModel):
  """log_likelihoods: a fixed value per continuation text; counts the pairs it was asked to score."""

  def __init__(self, tokenizer, table):
    super().__init__(tokenizer)
    self.table, self.scored = table, 0

  def log_likelihoods(self, pairs, *, rngs, **options):
    self.scored += len(pairs)
    return np.array([self.table[self.tokenizer.decode(answer)] for _, answer in pairs])


def _hellaswag_like(n):
  """n two-choice examples: the long choice is less likely in total but more likely per character."""
  return _task("multiple_choice", [eval_data.MultipleChoice(
      (eval_data.Choice(f"Q{i}", " ab"), eval_data.Choice(f"Q{i}", " abcdefghijk")), i % 2, str(i))
      for i in range(n)], name="hellaswag")


def test_acc_norm_divides_by_the_continuation_characters_as_lm_eval():
  tok = ByteTokenizer()
  model = TableModel(tok, {" ab": -3.0, " abcdefghijk": -6.0})
  result = evaluate.score_task(model, tok, _hellaswag_like(4), evaluate.EvalOptions(), rng=jax.random.key(0),
                               progress=_progress)
  # acc picks " ab" (gold for examples 0 and 2); acc_norm picks the long one (−6/12 > −3/3): examples 1 and 3
  assert [d["prediction"] for d in result.details] == [0] * 4
  assert [d["prediction_norm"] for d in result.details] == [1] * 4
  assert result.metrics == {"acc": 0.5, "acc_norm": 0.5}
  assert result.stderr["acc"] == pytest.approx(np.std([1, 0, 1, 0], ddof=1) / 2)


def test_a_resumed_run_scores_only_what_is_missing_and_equals_an_uninterrupted_one(tmp_path):
  tok = ByteTokenizer()
  table = {" ab": -3.0, " abcdefghijk": -6.0}
  options = evaluate.EvalOptions(pairs_per_call=2)
  run_options = dict(options.run_options(), checkpoint="ckpt")
  path = str(tmp_path / "r.jsonl")

  class Bar:
    """A progress bar that interrupts the run (as Ctrl-C would) once `fail_after` examples are done."""

    def __init__(self, fail_after=None):
      self.done, self.fail_after = 0, fail_after

    def update(self, n):
      self.done += n
      if self.fail_after is not None and self.done >= self.fail_after:
        raise KeyboardInterrupt

    def close(self):
      pass

  def scored(task, records, model, fail_after=None):
    return evaluate.run(model, tok, [task], options, data=None, limit=None, records=records,
                        progress_factory=lambda name, total: Bar(fail_after))

  full = scored(_hellaswag_like(7), None, TableModel(tok, table))[0]
  first = TableModel(tok, table)
  records = evaluate.Records(path, run_options, resume=False)
  with pytest.raises(KeyboardInterrupt):
    scored(_hellaswag_like(5), records, first, fail_after=4)  # two chunks of two examples saved, then killed
  records.close()
  assert first.scored == 8
  with open(path, "a") as f:
    f.write('{"task": "hellaswag", "record": {"ind')  # a line cut off mid-write
  second = TableModel(tok, table)
  records = evaluate.Records(path, run_options, resume=True)
  resumed = scored(_hellaswag_like(7), records, second)[0]  # a larger limit: examples 4..6 are new
  records.close()
  assert second.scored == 2 * 3
  assert (resumed.metrics, resumed.stderr, resumed.count) == (full.metrics, full.stderr, full.count)
  assert resumed.details == full.details
  with pytest.raises(UserError, match=r"seed=0.*this run has seed=1.*same options"):
    evaluate.Records(path, dict(run_options, seed=1), resume=True)
  records = evaluate.Records(path, run_options, resume=True)
  with pytest.raises(UserError, match=r"mc_num=8.*this run has mc_num=4"):
    records.begin("hellaswag", {"num_fewshot": 0, "cfg_scale": 0.5, "mc_num": 4})
  with pytest.raises(UserError, match="nothing to resume"):
    evaluate.Records(str(tmp_path / "missing.jsonl"), run_options, resume=True)
  (tmp_path / "other.jsonl").write_text("not json\n")
  with pytest.raises(UserError, match="not an eval records file"):
    evaluate.Records(str(tmp_path / "other.jsonl"), run_options, resume=True)
  assert evaluate.records_path("out/results.json") == "out/results.jsonl"


def test_paper_settings_are_found_by_task_name():
  assert eval_data.paper_settings("llada_hellaswag").cfg_scale == 0.5
  assert eval_data.paper_settings("mmlu_anatomy").mc_num == 1
  assert eval_data.paper_settings("arc_easy").cfg_scale == 0.0
  assert eval_data.paper_settings("gpqa_main_n_shot").cfg_scale == 0.5
  assert eval_data.paper_settings("truthfulqa_mc2").cfg_scale == 2.0 and eval_data.paper_settings("unknown") is None
  task = eval_data.load_task("gsm8k", limit=1)
  assert (task.num_fewshot, task.gen_length, task.steps, task.block_length) == (4, 256, 256, 256)
