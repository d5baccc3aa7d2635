"""Scoring rules on hand-made examples with known answers, using a scripted stand-in for the model."""

import dataclasses
import os

import jax
import numpy as np
import pytest

from conftest import REPO, tiny_hf_config, write_hf_dir
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
  result = evaluate.score_multiple_choice(model, tok, _task("multiple_choice", examples), add_bos=False,
                                          batch_size=4, rng=jax.random.key(0), progress=_progress)
  assert result.value == pytest.approx(2 / 3)
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
  scored = [evaluate.score_multiple_choice(model, tok, task, add_bos=True, batch_size=2, rng=rng, progress=_progress,
                                           pairs_per_call=n).details for n in (1, 3)]
  one, together = ([d["log_likelihoods"] for d in details] for details in scored)
  np.testing.assert_allclose(together, one, rtol=1e-5)
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
  result = evaluate.score_generation(ScriptedModel(tok, replies=replies), tok,
                                     _task("generation", examples, gen_length=64, steps=64, block_length=64),
                                     sampling=FAST, add_bos=False, batch_size=2, rng=jax.random.key(0),
                                     progress=_progress)
  assert [d["prediction"] for d in result.details] == ["42", "3", "2.5"]
  assert result.value == pytest.approx(2 / 3)
  assert result.settings["decoding"] == "threshold" and result.settings["threshold"] == 0.8
  assert result.settings["model_calls_mean"] == 3 and result.details[0]["model_calls"] == 3


def test_lambada_checks_the_next_word_and_reversal_checks_a_substring():
  tok = ByteTokenizer()
  lam = [eval_data.Generation("He opened the", "door", "a"), eval_data.Generation("She sang a", "song", "b")]
  replies = {"He opened the": " door.", "She sang a": " tune"}
  model = ScriptedModel(tok, replies=replies)
  result = evaluate.score_generation(model, tok, _task("last_word", lam), sampling=FAST, add_bos=False,
                                     batch_size=8, rng=jax.random.key(0), progress=_progress)
  assert result.value == 0.5 and result.details[0]["prediction"] == "door"
  # the user's decoding options with the task's lengths: one block, one step per answer token (+1)
  used = model.calls[-1]
  assert (used.decoding, used.cache, used.threshold) == ("threshold", "dual", 0.8)
  assert used.gen_length == used.steps == used.block_length == len(tok.encode(" song")) + 1
  poems = [eval_data.Generation("first", "second", "p")]
  chat_prompt = tok.decode(tok.encode_chat([{"role": "user", "content": "first"}]))
  result = evaluate.score_generation(ScriptedModel(tok, replies={chat_prompt: "I think: second."}), tok,
                                     _task("substring", poems), sampling=FAST, add_bos=False, batch_size=8,
                                     rng=jax.random.key(0),
                                     progress=_progress)
  assert result.value == 1.0 and result.metric == "substring_match"


def test_task_loading_errors_and_overrides():
  with pytest.raises(UserError, match="unknown task"):
    evaluate.load_tasks(["hellaswagg"], data=None, limit=1, num_fewshot=None, cfg_scale=None, mc_num=None,
                        gen_length=None, steps=None, block_length=None)
  with pytest.raises(UserError, match="needs --data"):
    evaluate.load_tasks(["reversal_poems"], data=None, limit=1, num_fewshot=None, cfg_scale=None, mc_num=None,
                        gen_length=None, steps=None, block_length=None)
  tasks = evaluate.load_tasks(["reversal_poems"], data=os.path.join(REPO, "..", "shared", "data", "reversal_poems.json"), limit=3,
                              num_fewshot=None, cfg_scale=None, mc_num=None, gen_length=None, steps=None,
                              block_length=None)
  assert [len(t.examples) for t in tasks] == [3, 3] and tasks[0].gen_length == 28
  assert dataclasses.replace(tasks[0], mc_num=4).mc_num == 4
