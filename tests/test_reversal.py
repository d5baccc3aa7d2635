"""The reversal experiment: its data never shows a test pair backwards, the twin's left-to-right decoding equals a
step-by-step reference, the bootstrap interval, and the whole command at toy size."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llada_jax import cli, data, model as model_lib, reversal
from llada_jax.config import ModelConfig
from llada_jax.errors import UserError
from llada_jax.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  return train_tokenizer(list(data.builtin_documents())[:2], 400, str(tmp_path_factory.mktemp("tok")))


def test_test_pairs_appear_only_forwards_and_format_pairs_both_ways(tokenizer):
  made = reversal.make_data(tokenizer, pairs=6, format_pairs=5, name_tokens=2, copies=3, seed=1)
  assert len(made.lines) == 3 * (6 + 2 * 5)
  lines = set(made.lines)
  assert len(lines) == 6 + 2 * 5 and all(made.lines.count(line) == 3 for line in lines)
  for first, second in made.test_pairs:
    assert f"{first} -> next:{second}" in lines
    assert not any(first in line and line.startswith(second) for line in lines)  # never backwards
  for first, second in made.format_pairs:
    assert {f"{first} -> next:{second}", f"{second} -> previous:{first}"} <= lines
  names = [name for pair in made.test_pairs + made.format_pairs for name in pair]
  assert len(set(names)) == len(names)
  assert len(made.questions) == 12 and len(made.infills) == 6
  for infill, (first, second) in zip(made.infills, made.test_pairs):  # the training line, first name masked
    ids = list(infill.prompt_ids)
    assert ids[:3] == [tokenizer.eos_id, tokenizer.mask_id, tokenizer.mask_id] and infill.answer == first
    assert ids[3:] == tokenizer.encode(f" -> next:{second}")
    assert list(infill.answer_ids) + ids[3:] == tokenizer.encode(f"{first} -> next:{second}")
  for question in made.questions:
    first, second = made.test_pairs[question.pair]
    assert question.answer == (second if question.direction == "forward" else first)
    assert question.prompt_ids[0] == tokenizer.eos_id and len(question.answer_ids) == 2
    assert tokenizer.encode(question.prompt + question.answer) == list(question.prompt_ids[1:] + question.answer_ids)
  again = reversal.make_data(tokenizer, pairs=6, format_pairs=5, name_tokens=2, copies=3, seed=1)
  assert again == made
  assert reversal.make_data(tokenizer, pairs=6, format_pairs=5, name_tokens=2, copies=3, seed=2) != made


def test_more_phrasings_add_forward_statements_only(tokenizer):
  made = reversal.make_data(tokenizer, pairs=5, format_pairs=4, name_tokens=2, copies=2, seed=3, phrasings=3)
  lines = set(made.lines)
  assert len(made.lines) == 2 * len(lines) and len(lines) == 5 * 3 + 4 * 4
  for first, second in made.test_pairs + made.format_pairs:
    mentions = [line for line in lines if first in line]
    assert {statement.format(first=first, second=second) for statement in reversal.STATEMENTS[:3]} <= lines
    forwards = [line for line in mentions if line.index(first) < line.index(second)]
    assert len(forwards) == 3  # every statement keeps the order: first, then second
    assert len(mentions) == (3 if (first, second) in made.test_pairs else 4)
  assert made.questions == reversal.make_data(tokenizer, pairs=5, format_pairs=4, name_tokens=2, copies=2, seed=3,
                                              phrasings=1).questions
  with pytest.raises(UserError, match="phrasings"):
    reversal.make_data(tokenizer, pairs=5, format_pairs=4, name_tokens=2, copies=2, seed=3, phrasings=9)


def test_names_too_many_for_the_vocabulary_fail_in_one_line(tokenizer):
  with pytest.raises(UserError, match="distinct names"):
    reversal.make_data(tokenizer, pairs=100_000, format_pairs=1, name_tokens=1, copies=1, seed=0)


def test_bootstrap_interval():
  assert reversal.bootstrap_interval(np.ones(50), resamples=200, seed=0) == (1.0, 1.0)
  assert reversal.bootstrap_interval(np.zeros(50), resamples=200, seed=0) == (0.0, 0.0)
  correct = np.arange(400) % 4 == 0  # a quarter right
  low, high = reversal.bootstrap_interval(correct, resamples=2000, seed=0)
  # The normal approximation's half-width is 1.96 · sqrt(0.25 · 0.75 / 400) = 0.042.
  assert low == pytest.approx(0.25 - 0.042, abs=0.01) and high == pytest.approx(0.25 + 0.042, abs=0.01)


def test_left_to_right_decoding_equals_one_forward_per_token():
  config = ModelConfig(d_model=32, n_heads=2, n_kv_heads=2, n_layers=2, mlp_hidden_size=64, vocab_size=50,
                       embedding_size=64, max_sequence_length=64, causal=True, bos_token_id=1, eos_token_id=2,
                       pad_token_id=2, mask_token_id=3, eot_token_id=6)
  params = model_lib.init_params(config, jax.random.key(3))
  prompts = np.asarray([[5, 6, 7, 8, 9], [0, 0, 11, 12, 13]], np.int32)
  mask = np.asarray([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]], np.int32)
  got = reversal.greedy_autoregressive(params, prompts, mask, 4, config=config)
  for row in range(2):
    keep = mask[row].astype(bool)
    canvas = list(prompts[row][keep])
    for _ in range(4):  # no padding, the prefix only, one call per token
      logits = model_lib.apply(params, jnp.asarray([canvas]), config=config)
      canvas.append(int(jnp.argmax(logits[0, -1])))
    assert got[row].tolist() == canvas[-4:]


def test_infilling_commits_the_most_confident_mask_first():
  config = ModelConfig(d_model=32, n_heads=2, n_kv_heads=2, n_layers=2, mlp_hidden_size=64, vocab_size=50,
                       embedding_size=64, max_sequence_length=64, bos_token_id=1, eos_token_id=2, pad_token_id=2,
                       mask_token_id=3, eot_token_id=6)
  params = model_lib.init_params(config, jax.random.key(4))
  canvas = np.asarray([[2, 3, 3, 3, 20, 21, 22], [2, 2, 2, 3, 3, 3, 30]], np.int32)
  mask = np.asarray([[1] * 7, [0, 0, 1, 1, 1, 1, 1]], np.int32)
  got = np.asarray(reversal._fill_masks(params, jnp.asarray(canvas), jnp.asarray(mask), config=config, steps=3))
  for row in range(2):
    x = canvas[row:row + 1].copy()
    for _ in range(3):
      probs = np.asarray(jax.nn.softmax(model_lib.apply(params, jnp.asarray(x), jnp.asarray(mask[row:row + 1]),
                                                        config=config)))[0]
      masked = np.flatnonzero(x[0] == 3)
      best = masked[np.argmax(probs[masked].max(axis=-1))]
      x[0, best] = probs[best].argmax()
    assert got[row].tolist() == x[0].tolist()


def test_experiment_command_at_toy_size(tokenizer, tmp_path, capsys):
  workdir = str(tmp_path / "rev")
  args = ["experiment", "reversal", "--workdir", workdir, "--pairs", "4", "--steps", "4", "--no-progress",
          f"--config.data.tokenizer={os.path.dirname(tokenizer.save(str(tmp_path / 'tok')))}",
          "--config.reversal.format_pairs=4", "--config.reversal.copies=2", "--config.reversal.bootstrap=50",
          "--config.model.d_model=32", "--config.model.n_heads=2", "--config.model.n_kv_heads=2",
          "--config.model.n_layers=1", "--config.model.mlp_hidden_size=64", "--config.model.vocab_size=448",
          "--config.model.embedding_size=448", "--config.data.seq_len=32", "--config.data.global_batch=8",
          "--config.train.warmup_steps=1", "--config.train.log_every=2"]
  assert cli.main(args) == 0
  out = capsys.readouterr().out
  assert "greedy, with 95% bootstrap intervals" in out and "autoregressive twin" in out and "backward, infilled" in out
  report = json.loads(open(os.path.join(workdir, "reversal.json")).read())
  assert set(report["results"]) == {"llada", "llada_threshold", "autoregressive"}
  for column, cells in report["results"].items():
    assert set(cells) == ({"forward", "backward", "backward_infill"} if column == "llada" else {"forward", "backward"})
    for cell in cells.values():
      assert cell["n"] == 4 and 0.0 <= cell["interval"][0] <= cell["accuracy"] <= cell["interval"][1] <= 1.0
  assert report["results"]["autoregressive"]["forward"]["model_calls_per_answer"] == 2.0
  assert set(report["training"]) == {"llada", "autoregressive"}
  assert report["train"]["tokens"] == 4 * 8 * 32
  assert report["train"]["lines"] == 2 * (4 * 3 + 4 * 4)  # copies × (3 phrasings of 8 pairs + 4 backward lines)
  with open(report["chart"], "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  for name in ("llada", "autoregressive"):
    assert os.listdir(os.path.join(workdir, name, "tensorboard"))
    assert os.path.isdir(os.path.join(workdir, name, "checkpoints", "4"))

  assert cli.main(args) == 2  # the runs exist: refused without --resume
  assert "pass --resume" in capsys.readouterr().err
  assert cli.main(args + ["--resume"]) == 0  # nothing trained again, the same scores
  assert "already trained" in capsys.readouterr().out
  again = json.loads(open(os.path.join(workdir, "reversal.json")).read())
  assert again["results"] == report["results"] and again["training"] == report["training"]
