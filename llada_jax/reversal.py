"""The reversal-curse experiment (docs/design.md §7's reversal poems, at laptop scale): LLaDA and its autoregressive
twin learn the same pairs, each written only forwards, and are asked for them in both directions.

Data (seeded): `pairs` test pairs (first, second) and `format_pairs` format pairs of made-up names, each name
`name_tokens` word tokens of the tokenizer's vocabulary. The training text is one line per document:
- every pair forwards, in `phrasings` statements (STATEMENTS): `{first} -> next:{second}`, `{first} is followed
  by{second}.`, `after{first} comes{second}.`, …
- a format pair also backwards: `{second} -> previous:{first}`
(names start with a space). The format pairs teach what the two questions ask without ever showing a test pair
backwards, as the poems are only ever read forwards. The lines are written `copies` times, each time in a new
order, so the windows the trainer cuts from the stream split a line in different places each time.

Evaluation asks every test pair forwards (prompt `{first} -> next:`, answer `{second}`) and backwards (prompt
`{second} -> previous:`, answer `{first}`), greedily; a prompt starts with EOS, as every training line does after
the one before it. LLaDA fills the answer's masks with the reverse sampler (exact, and threshold decoding as an
extra column); the twin decodes left to right. The score is exact match of the whole answer, with a bootstrap 95%
interval over the pairs.
"""

import dataclasses
import json
import math
import os
import re
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from llada_jax import model as model_lib
from llada_jax import paths
from llada_jax.config import ModelConfig, model_config_from
from llada_jax.errors import UserError
from llada_jax.sampler import SamplingConfig, left_pad

FORWARD = "{first} -> next:"
BACKWARD = "{second} -> previous:"
# Every pair's forward statements: the question's own line, then (reversal.phrasings > 1) the same order in other
# words, so what is learnt of a pair is less tied to one layout.
STATEMENTS = (FORWARD + "{second}", "{first} is followed by{second}.", "after{first} comes{second}.",
              "{first} and then{second}.")
DIRECTIONS = ("forward", "backward")
# The probe beside the questions: LLaDA fills the first name's masks in the training line itself,
# `[MASK…] -> next:{second}`, no question format involved; a left-to-right model cannot.
INFILL = "backward_infill"
MODELS = ("llada", "autoregressive")
_WORD = re.compile(r"^ [A-Za-z]{3,}$")


@dataclasses.dataclass(frozen=True)
class Question:
  pair: int
  direction: str
  prompt: str  # text
  answer: str
  prompt_ids: tuple[int, ...]
  answer_ids: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Data:
  test_pairs: tuple[tuple[str, str], ...]
  format_pairs: tuple[tuple[str, str], ...]
  lines: tuple[str, ...]  # the training text, copies included, in training order
  questions: tuple[Question, ...]  # every test pair in both directions
  infills: tuple[Question, ...]  # every test pair's training line with the first name masked (INFILL)


def _line(direction: str, first: str, second: str) -> tuple[str, str]:
  """(prompt, answer) text of one question."""
  if direction == "forward":
    return FORWARD.format(first=first), second
  return BACKWARD.format(second=second), first


def name_words(tokenizer) -> list[int]:
  """The ids of the vocabulary's whole-word tokens (a space and three or more letters) that encode back to
  themselves alone: the pieces names are made of."""
  words = []
  for i in range(tokenizer.vocab_size):
    text = tokenizer.decode([i])
    if _WORD.match(text) and tokenizer.encode(text) == [i]:
      words.append(i)
  return words


def make_data(tokenizer, *, pairs: int, format_pairs: int, name_tokens: int, copies: int, seed: int,
              phrasings: int = 1) -> Data:
  """The experiment's pairs, training lines and questions; the same for the same arguments and tokenizer."""
  if min(pairs, format_pairs, name_tokens, copies, phrasings) < 1:
    raise UserError("reversal.pairs, format_pairs, name_tokens, copies and phrasings must be at least 1")
  if phrasings > len(STATEMENTS):
    raise UserError(f"reversal.phrasings={phrasings}: there are {len(STATEMENTS)} forward phrasings")
  words = name_words(tokenizer)
  needed = 2 * (pairs + format_pairs)
  if len(words) < 2 * name_tokens:
    raise UserError(f"the tokenizer has only {len(words)} whole-word tokens to build names from; use a larger "
                    "vocabulary (data.tokenizer_vocab_size) or a tokenizer trained on more text")
  if math.perm(len(words), name_tokens) < needed:
    raise UserError(f"cannot make {needed} distinct names of {name_tokens} token(s) from {len(words)} words; lower "
                    "reversal.pairs/format_pairs or raise reversal.name_tokens")
  rng = np.random.default_rng(seed)
  names, seen = [], set()
  for _ in range(100 * needed):
    if len(names) == needed:
      break
    ids = tuple(int(i) for i in rng.choice(words, name_tokens, replace=False))
    if ids not in seen:
      seen.add(ids)
      names.append(ids)
  if len(names) < needed:
    raise UserError(f"drew only {len(names)} of {needed} distinct names of {name_tokens} token(s) from {len(words)} "
                    "words; lower reversal.pairs/format_pairs or raise reversal.name_tokens")
  text = {ids: tokenizer.decode(list(ids)) for ids in names}
  all_pairs = [(text[a], text[b]) for a, b in zip(names[0::2], names[1::2])]
  test, fmt = tuple(all_pairs[:pairs]), tuple(all_pairs[pairs:])
  ids_of = {name: ids for ids, name in text.items()}
  once = [statement.format(first=a, second=b) for a, b in test + fmt for statement in STATEMENTS[:phrasings]]
  once += [BACKWARD.format(second=b) + a for a, b in fmt]
  lines = []
  for _ in range(copies):
    lines += [once[i] for i in rng.permutation(len(once))]
  questions = []
  for index, (first, second) in enumerate(test):
    for direction in DIRECTIONS:
      prompt, answer = _line(direction, first, second)
      prompt_ids = [tokenizer.eos_id] + tokenizer.encode(prompt)
      answer_ids = list(ids_of[answer])
      if tokenizer.encode(prompt + answer) != prompt_ids[1:] + answer_ids:
        raise UserError(f"the tokenizer does not split {prompt + answer!r} between question and answer; use a "
                        "tokenizer whose pre-tokenizer splits at spaces (the built-in byte-level BPE does)")
      questions.append(Question(index, direction, prompt, answer, tuple(prompt_ids), tuple(answer_ids)))
  infills = []
  for index, (first, second) in enumerate(test):
    rest = tokenizer.encode(FORWARD.format(first="") + second)
    if tokenizer.encode(FORWARD.format(first=first) + second) != list(ids_of[first]) + rest:
      raise UserError(f"the tokenizer does not split {FORWARD.format(first=first) + second!r} after the first name; "
                      "use a tokenizer whose pre-tokenizer splits at spaces (the built-in byte-level BPE does)")
    line = [tokenizer.eos_id] + [tokenizer.mask_id] * name_tokens + rest
    infills.append(Question(index, INFILL, "[first]" + FORWARD.format(first="") + second, first, tuple(line),
                            ids_of[first]))
  return Data(test, fmt, tuple(lines), tuple(questions), tuple(infills))


def corpus_text(data: Data) -> str:
  """The training lines as JSONL documents (`{"text": line}`), the trainer's `jsonl` source."""
  return "".join(json.dumps({"text": line}) + "\n" for line in data.lines)


def greedy_autoregressive(params, prompts: np.ndarray, attention_mask: np.ndarray, answer_length: int, *,
                          config: ModelConfig) -> np.ndarray:
  """The answers [batch, answer_length] a causal model decodes greedily after left-padded prompts: each step runs
  the whole canvas (the prefix recomputed; cheap at this size) and appends the argmax after the last token."""
  return np.asarray(_decode_left_to_right(params, jnp.asarray(prompts, jnp.int32),
                                          jnp.asarray(attention_mask, jnp.int32), config=config,
                                          answer_length=answer_length))


def _decode_left_to_right_impl(params, prompts, attention_mask, *, config: ModelConfig, answer_length: int):
  batch, prompt_length = prompts.shape
  canvas = jnp.concatenate([prompts, jnp.zeros((batch, answer_length), prompts.dtype)], axis=1)
  mask = jnp.concatenate([attention_mask, jnp.ones((batch, answer_length), attention_mask.dtype)], axis=1)

  def step(i, canvas):
    position = prompt_length - 1 + i
    logits = model_lib.apply(params, canvas, mask, config=config, logits_window=(position, 1))
    token = jnp.argmax(logits[:, 0], axis=-1).astype(canvas.dtype)
    return jax.lax.dynamic_update_slice_in_dim(canvas, token[:, None], position + 1, axis=1)

  canvas = jax.lax.fori_loop(0, answer_length, step, canvas)
  return canvas[:, prompt_length:]


_decode_left_to_right = jax.jit(_decode_left_to_right_impl, static_argnames=("config", "answer_length"))


def _batch(questions: Sequence[Question], pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  prompts, mask = left_pad([q.prompt_ids for q in questions], pad_id)
  return prompts, mask, np.asarray([q.answer_ids for q in questions], np.int32)


def answers(model, questions: Sequence[Question], *, pad_id: int, sampling=None,
            batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
  """(answers [len(questions), answer_length], model calls per answer) of a loaded model (`pretrained.LLaDAModel`),
  greedy: the reverse sampler with `sampling` for a diffusion model, left-to-right decoding for a causal one."""
  tokens, calls = [], []
  for start in range(0, len(questions), batch_size):
    prompts, mask, expected = _batch(questions[start:start + batch_size], pad_id)
    length = expected.shape[1]
    if model.config.causal:
      tokens.append(greedy_autoregressive(model.params, prompts, mask, length, config=model.config))
      calls.append(np.full(len(prompts), length))
    else:
      result = model.generate(prompts, mask, sampling=dataclasses.replace(sampling, gen_length=length,
                                                                          block_length=length, steps=length))
      tokens.append(np.asarray(result.tokens)[:, prompts.shape[1]:])
      calls.append(result.row_nfe)
  return np.concatenate(tokens), np.concatenate(calls)


def infill_answers(model, questions: Sequence[Question], *, pad_id: int, batch_size: int = 64) -> np.ndarray:
  """[len(questions), masks] the masks of each (left-padded) line filled greedily by a diffusion model, one per
  call, most confident first (the exact sampler's rule, applied to masks inside the text)."""
  out = []
  for start in range(0, len(questions), batch_size):
    canvas, mask, expected = _batch(questions[start:start + batch_size], pad_id)
    filled = np.asarray(_fill_masks(model.params, jnp.asarray(canvas), jnp.asarray(mask), config=model.config,
                                    steps=expected.shape[1]))
    out.append(filled[canvas == model.config.mask_token_id].reshape(expected.shape))
  return np.concatenate(out)


def _fill_masks_impl(params, canvas, attention_mask, *, config: ModelConfig, steps: int):
  mask_id = config.mask_token_id

  def step(_, canvas):
    probs = jax.nn.softmax(model_lib.apply(params, canvas, attention_mask, config=config).astype(jnp.float32))
    confidence = jnp.where(canvas == mask_id, probs.max(axis=-1), -1.0)
    position = jnp.argmax(confidence, axis=-1)
    token = jnp.take_along_axis(probs.argmax(axis=-1), position[:, None], axis=1)
    return jnp.where(jnp.arange(canvas.shape[1]) == position[:, None], token.astype(canvas.dtype), canvas)

  return jax.lax.fori_loop(0, steps, step, canvas)


_fill_masks = jax.jit(_fill_masks_impl, static_argnames=("config", "steps"))


def bootstrap_interval(correct: np.ndarray, *, resamples: int, seed: int, level: float = 0.95) -> tuple[float, float]:
  """The percentile bootstrap interval of the mean of 0/1 outcomes, resampling the pairs."""
  correct = np.asarray(correct, np.float64)
  rng = np.random.default_rng(seed)
  means = correct[rng.integers(0, len(correct), (resamples, len(correct)))].mean(axis=1)
  return float(np.quantile(means, (1 - level) / 2)), float(np.quantile(means, (1 + level) / 2))


# ---- The experiment: data, two training runs, the table's cells, a report ----

COLUMNS = {"llada": "LLaDA", "llada_threshold": "LLaDA, threshold {threshold:g}",
           "autoregressive": "autoregressive twin"}


def model_experiment(cfg: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """One model's training config: LLaDA is the config as written; the twin the same with a causal mask and the
  next-token loss (same size, data, batch, steps and optimiser)."""
  cfg = cfg.copy_and_resolve_references()
  cfg.model.causal = name == "autoregressive"
  cfg.train.objective = "autoregressive" if name == "autoregressive" else "diffusion"
  cfg.train.sample_after = False
  return cfg


def experiment_tokenizer(cfg: ml_collections.ConfigDict):
  """data.tokenizer when set, else the built-in Shakespeare BPE of that vocabulary size (the tiny default's)."""
  from llada_jax import config as config_lib, data as data_lib
  from llada_jax.tokenizer import load_tokenizer
  if cfg.data.tokenizer:
    return load_tokenizer(cfg.data.tokenizer)
  return data_lib.make_tokenizer(config_lib.DataConfig(tokenizer_vocab_size=cfg.data.tokenizer_vocab_size,
                                                       cache_dir=cfg.data.cache_dir))


def score(model, data: Data, *, pad_id: int, sampling=None, resamples: int, seed: int, infill: bool = False) -> dict:
  """Exact-match accuracy per direction (and the INFILL probe, when asked) with its bootstrap interval, the
  answers, and model calls per answer."""
  cells = {}
  for direction in DIRECTIONS + ((INFILL,) if infill else ()):
    if direction == INFILL:
      questions = data.infills
      tokens = infill_answers(model, questions, pad_id=pad_id)
      calls = np.full(len(questions), tokens.shape[1])
    else:
      questions = [q for q in data.questions if q.direction == direction]
      tokens, calls = answers(model, questions, pad_id=pad_id, sampling=sampling)
    correct = (tokens == np.asarray([q.answer_ids for q in questions])).all(axis=1)
    low, high = bootstrap_interval(correct, resamples=resamples, seed=seed)
    cells[direction] = {"accuracy": float(correct.mean()), "interval": [low, high], "n": len(questions),
                        "model_calls_per_answer": float(np.mean(calls)), "correct": correct.tolist(),
                        "answers": tokens.tolist()}
  return cells


def run(cfg: ml_collections.ConfigDict, workdir: str, *, resume: bool = False, progress: bool = True,
        log: Callable[[str], None] = print) -> dict:
  """Makes the data in `workdir`, trains LLaDA and its twin there (`workdir/llada`, `workdir/autoregressive`),
  scores both, and writes `reversal.json` and `reversal.png`; returns the report (what the JSON holds)."""
  from llada_jax import checkpoint, pretrained, train

  if "reversal" not in cfg:
    raise UserError("the config has no `reversal` section; start from configs/reversal.py")
  settings = cfg.reversal
  for name in MODELS:
    model_config_from(model_experiment(cfg, name))  # a bad model section fails before anything is written
  run_dirs = {name: os.path.join(workdir, name) for name in MODELS}
  if not resume and any(checkpoint.committed_steps(d) for d in run_dirs.values()):
    raise UserError(f"{workdir} already holds this experiment's runs; pass --resume to continue them (and "
                    "re-score), or choose a new --workdir")
  tokenizer = experiment_tokenizer(cfg)
  data = make_data(tokenizer, pairs=settings.pairs, format_pairs=settings.format_pairs,
                   name_tokens=settings.name_tokens, copies=settings.copies, seed=settings.seed,
                   phrasings=settings.phrasings)
  corpus = os.path.join(workdir, "data", "train.jsonl")
  if resume and paths.path(corpus).exists():
    if paths.path(corpus).read_text() != corpus_text(data):
      raise UserError(f"the data these settings make differ from {corpus} (reversal.* or the tokenizer changed); "
                      "resume with the settings the runs were started with, or choose a new --workdir")
  else:
    paths.write_atomically(corpus, corpus_text(data))
  cfg = cfg.copy_and_resolve_references()
  cfg.data.paths = corpus
  cfg.data.tokenizer = tokenizer.save(os.path.join(workdir, "tokenizer"))

  training = {}
  for name in MODELS:
    model_cfg = model_experiment(cfg, name)
    done = checkpoint.committed_steps(run_dirs[name])
    record = paths.path(run_dirs[name], "training.json")
    if done and done[-1] >= model_cfg.train.steps and record.exists():
      log(f"{name}: already trained ({run_dirs[name]}, step {done[-1]})")
    else:
      log(f"training {COLUMNS[name].format(threshold=settings.threshold)} ({model_cfg.train.objective} objective) "
          f"in {run_dirs[name]}")
      summary = train.run(model_cfg, run_dirs[name], resume=bool(done), progress=progress, log=log)
      paths.write_atomically(str(record), json.dumps({
          "seconds": summary.seconds, "tokens": summary.tokens, "final_loss": summary.loss,
          "tokens_per_sec": summary.tokens_per_sec}) + "\n")
    training[name] = json.loads(record.read_text())

  log(f"scoring {len(data.test_pairs)} test pairs in both directions")
  exact = SamplingConfig(temperature=0.0)
  fast = SamplingConfig(temperature=0.0, decoding="threshold", threshold=settings.threshold)
  columns = {}
  for name in MODELS:
    model = pretrained.load_pretrained(run_dirs[name])
    for column, sampling in ((name, exact), ("llada_threshold", fast)) if name == "llada" else ((name, None),):
      columns[column] = score(model, data, pad_id=tokenizer.pad_id, sampling=sampling,
                              resamples=settings.bootstrap, seed=settings.seed, infill=column == "llada")
  report = {
      "settings": settings.to_dict(),
      "templates": {"statements": list(STATEMENTS[:settings.phrasings]), "format_backward": BACKWARD + "{first}",
                    "forward": FORWARD + "{second}", "backward": BACKWARD + "{first}",
                    INFILL: "[MASK × name_tokens]" + FORWARD.format(first="") + "{second}"},
      "model": {"parameters": model_config_from(cfg).num_params(), "d_model": cfg.model.d_model,
                "n_layers": cfg.model.n_layers, "vocab": cfg.model.vocab_size},
      "train": {"steps": cfg.train.steps, "tokens": cfg.train.steps * cfg.data.global_batch * cfg.data.seq_len,
                "lines": len(data.lines)},
      "training": training,
      "results": {column: {direction: {k: v for k, v in cell.items() if k not in ("correct", "answers")}
                           for direction, cell in cells.items()} for column, cells in columns.items()},
      "examples": _examples(data, columns, tokenizer),
      "tensorboard": {name: os.path.join(run_dirs[name], "tensorboard") for name in MODELS},
  }
  report["json"] = os.path.join(workdir, "reversal.json")
  report["chart"] = bar_chart(report, os.path.join(workdir, "reversal.png"))
  paths.write_atomically(report["json"], json.dumps(report, indent=2) + "\n")
  return report


ROWS = {"forward": "forward", "backward": "backward", INFILL: "backward, infilled"}


def _examples(data: Data, columns: dict, tokenizer, count: int = 3) -> list[dict]:
  """The first test pairs' questions with every column's answer, for a person to read."""
  rows = []
  for direction in ROWS:
    questions = data.infills if direction == INFILL else [q for q in data.questions if q.direction == direction]
    for i, question in enumerate(questions[:count]):
      rows.append({"direction": direction, "prompt": question.prompt, "expected": question.answer,
                   **{column: tokenizer.decode(cells[direction]["answers"][i])
                      for column, cells in columns.items() if direction in cells}})
  return rows


def column_label(column: str, report: dict) -> str:
  return COLUMNS[column].format(threshold=report["settings"]["threshold"])


def format_table(report: dict) -> str:
  """The accuracy table: a row per direction (and the infilling probe), a column per model (LLaDA's threshold
  decoding as the extra one); — where a model cannot be asked that way."""
  columns = list(report["results"])
  width = 26
  lines = ["".ljust(20) + "".join(column_label(c, report).ljust(width) for c in columns)]
  for direction, label in ROWS.items():
    cells = []
    for column in columns:
      cell = report["results"][column].get(direction)
      text = "—" if cell is None else f"{cell['accuracy']:.1%} [{cell['interval'][0]:.1%}, {cell['interval'][1]:.1%}]"
      cells.append(text.ljust(width))
    lines.append(label.ljust(20) + "".join(cells))
  return "\n".join(lines)


def format_summary(report: dict) -> str:
  settings, train_info = report["settings"], report["train"]
  lines = ["─── llada-jax experiment reversal: summary " + "─" * 30,
           f"data         {settings['pairs']} test pairs (forwards only), {settings['format_pairs']} format pairs "
           f"(both ways), names of {settings['name_tokens']} word token(s), {settings['phrasings']} forward "
           f"phrasing(s), {train_info['lines']:,} training lines",
           f"models       {report['model']['parameters']:,} parameters each (d {report['model']['d_model']} × "
           f"{report['model']['n_layers']} layers), {train_info['steps']} steps, {train_info['tokens']:,} tokens each"]
  for name, info in report["training"].items():
    lines.append(f"training     {name}: {info['seconds']:.0f} s, final loss {info['final_loss']:.4f}")
  lines += ["exact match of the whole answer, greedy, with 95% bootstrap intervals:", format_table(report),
            "examples (expected → each model's answer):"]
  shown = {}
  for example in report["examples"]:
    if shown.setdefault(example["direction"], 0) < 1:
      shown[example["direction"]] += 1
      answers = ", ".join(f"{example[c]!r}" for c in report["results"] if c in example)
      lines.append(f"  {example['prompt']!r} → {example['expected']!r}: {answers}")
  lines += [f"report       {report['json']}", f"chart        {report['chart']}",
            f"tensorboard  tensorboard --logdir {os.path.dirname(os.path.dirname(report['tensorboard']['llada']))}"]
  return "\n".join(lines)


def bar_chart(report: dict, path: str) -> str:
  """Accuracy per direction and model with the bootstrap intervals as error bars, as a PNG; returns the path."""
  from llada_jax import plots
  columns = list(report["results"])
  colours = {"llada": "#c33", "llada_threshold": "#e98", "autoregressive": "#36a"}
  fig, ax = plots.new_figure()
  width = 0.8 / len(columns)
  groups = list(ROWS)
  present = [[c for c in columns if d in report["results"][c]] for d in groups]  # bars centred per group
  for column in columns:
    where = [g for g, d in enumerate(groups) if d in report["results"][column]]
    cells = [report["results"][column][groups[g]] for g in where]
    values = np.asarray([c["accuracy"] for c in cells])
    errors = np.abs(np.asarray([c["interval"] for c in cells]).T - values)
    x = np.asarray([g + (present[g].index(column) - (len(present[g]) - 1) / 2) * width for g in where])
    ax.bar(x, values * 100, width, yerr=errors * 100, capsize=4, color=colours[column],
           label=column_label(column, report))
    for xi, v, cell in zip(x, values, cells):
      ax.text(xi, max(v, cell["interval"][1]) * 100 + 2, f"{v:.0%}", ha="center", fontsize=8)
  given = {"forward": "question, given first", "backward": "question, given second",
           INFILL: "training line, first masked"}
  ax.set_xticks(np.arange(len(groups)), [f"{ROWS[d]}\n({given[d]})" for d in groups])
  ax.set_ylabel("exact match (%)")
  ax.set_ylim(0, 122)
  ax.set_title(f"The reversal curse: {report['settings']['pairs']} pairs seen only forwards, "
               f"{report['model']['parameters']:,}-parameter models", fontsize=10)
  ax.legend(loc="upper center", ncol=len(columns), fontsize=8)
  ax.grid(axis="y", alpha=0.3)
  return plots.save_png(fig, path)
