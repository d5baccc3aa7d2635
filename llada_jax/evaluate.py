"""`llada-jax eval`: score a checkpoint on the paper's benchmarks (docs/design.md §7), offline.

Multiple-choice tasks pick the choice with the highest Monte-Carlo log-likelihood (the official estimator, with
CFG where the paper used it); GSM8K generates and compares the final number; LAMBADA generates the last word;
reversal poems check that the answer is a substring of the chat reply; `elbo` reports the diffusion bound on NLL
over a text file. Generation runs in left-padded batches with an attention mask.

Scores are means over examples with lm-eval's standard errors (`acc_norm` too where lm-eval reports it). Every
example's record is saved to a JSON-lines file as its chunk completes (`Records`), so a run that stops midway is
resumed, not restarted: the resumed run scores only the missing chunks and its numbers equal an uninterrupted
run's.
"""

import dataclasses
import hashlib
import json
import math
import os
import time
from typing import Callable

import jax
import numpy as np

from llada_jax import eval_data, likelihood, paths
from llada_jax.errors import UserError
from llada_jax.sampler import SamplingConfig, left_pad

EXTRA_TASKS = ("elbo", "reversal_poems")


@dataclasses.dataclass
class TaskResult:
  """A task's scores: `metrics` maps each metric to its mean over examples (the first is the headline), `stderr`
  to the standard error of that mean (lm-eval's, the sample standard deviation over √n; None for one example)."""
  task: str
  metrics: dict
  stderr: dict
  count: int
  settings: dict
  seconds: float
  details: list = dataclasses.field(default_factory=list)


def encode_pair(tokenizer, context: str, continuation: str, add_bos: bool) -> tuple[list[int], list[int]]:
  """Context and continuation ids, encoded separately after lm-eval's whitespace move (docs/design.md §6)."""
  context, continuation = eval_data.split_pair(context, continuation)
  return tokenizer.encode(context, add_bos=add_bos), tokenizer.encode(continuation)


def choice_key(rng: jax.Array, example: int, choice: int) -> jax.Array:
  """The mask key of one choice of one example. `eval` and the lm-eval model both draw with it, so they give the
  same log-likelihoods for the same seed whatever the batching."""
  return jax.random.fold_in(rng, example * 16 + choice)


def multiple_choice_records(model, tokenizer, task, chunk: list[tuple[int, object]], *, add_bos: bool,
                            batch_size: int, rng, pairs_per_call: int) -> list[dict]:
  """The records of a chunk of (index, example): every choice's log-likelihood in as few batched calls as
  `pairs_per_call` allows, each choice drawing its masks from `choice_key`. `acc` picks the most likely choice,
  `acc_norm` (where lm-eval reports it) the most likely per character of the continuation, as lm-eval does."""
  pairs, keys = [], []
  for index, example in chunk:
    for choice_index, choice in enumerate(example.choices):
      pairs.append(encode_pair(tokenizer, choice.context, choice.continuation, add_bos))
      keys.append(choice_key(rng, index, choice_index))
  values = iter(model.log_likelihoods(pairs, rngs=keys, mc_num=task.mc_num, batch_size=min(batch_size, task.mc_num),
                                      cfg_scale=task.cfg_scale, pairs_per_call=pairs_per_call).tolist())
  paper = eval_data.paper_settings(task.name)
  records = []
  for index, example in chunk:
    scores = [next(values) for _ in example.choices]
    prediction = int(np.argmax(scores))
    record = {"index": index, "id": example.id, "gold": example.gold, "prediction": prediction,
              "log_likelihoods": scores, "scores": {"acc": float(prediction == example.gold)}}
    if paper is not None and paper.acc_norm:
      lengths = [max(len(c.continuation), 1) for c in example.choices]
      record["prediction_norm"] = int(np.argmax(np.asarray(scores) / lengths))
      record["scores"]["acc_norm"] = float(record["prediction_norm"] == example.gold)
    records.append(record)
  return records


def generate_batch(model, tokenizer, prompts: list[list[int]], sampling: SamplingConfig, rng=None,
                   max_tokens: int | None = None) -> tuple[list[str], np.ndarray]:
  """(replies, model calls per row) for prompts of different lengths: left-padded with EOS, padding masked as
  keys; each reply decodes at most `max_tokens` generated tokens."""
  ids, mask = left_pad(prompts, tokenizer.eos_id)
  width = ids.shape[1]
  out = model.generate(ids, attention_mask=mask, sampling=sampling, rng=rng)
  return [tokenizer.decode(row[width:][:max_tokens], skip_special_tokens=True)
          for row in np.asarray(out.tokens)], out.row_nfe


def _is_correct(kind: str, answer: str, text: str) -> tuple[bool, str | None]:
  if kind == "generation":  # GSM8K: the first reply stops at the next "Question:" exemplar
    predicted = eval_data.extract_number(text.split("Question:")[0])
    return predicted == answer, predicted
  if kind == "last_word":
    words = text.strip().split()
    predicted = words[0].strip(".,;:!?\"'") if words else ""
    return predicted == answer, predicted
  return answer in text, text.strip()  # substring (reversal poems)


def task_sampling(task, base: SamplingConfig, gen_length: int) -> SamplingConfig:
  """The user's decoding options (`base`) with the task's lengths and guidance. LAMBADA's answer-length canvas is
  one block of one step per token; chat tasks never generate EOS (docs/design.md §7)."""
  last_word = task.kind == "last_word"
  return dataclasses.replace(base, gen_length=gen_length, steps=gen_length if last_word else task.steps,
                             block_length=gen_length if last_word else task.block_length, cfg_scale=task.cfg_scale,
                             logits_eos_inf=base.logits_eos_inf or task.kind == "substring")


GENERATION_METRICS = {"generation": "exact_match", "last_word": "exact_match", "substring": "substring_match"}


def generation_records(model, tokenizer, task, chunk: list[tuple[int, object]], *, sampling: SamplingConfig,
                       add_bos: bool, rng) -> list[dict]:
  """The records of a chunk of (index, example), generated as one left-padded batch with a key of the chunk's
  first index (so a chunk decodes the same in a resumed run)."""
  examples = [example for _, example in chunk]
  if task.kind == "substring":
    prompts = [tokenizer.encode_chat([{"role": "user", "content": e.prompt}]) for e in examples]
  else:
    prompts = [tokenizer.encode(e.prompt, add_bos=add_bos) for e in examples]
  gen_length = task.gen_length
  if task.kind == "last_word":  # the answer's own length (+1 so a trailing punctuation token fits)
    gen_length = max(len(tokenizer.encode(" " + e.answer)) for e in examples) + 1
  texts, row_nfe = generate_batch(model, tokenizer, prompts, task_sampling(task, sampling, gen_length),
                                  rng=jax.random.fold_in(rng, chunk[0][0]))
  metric = GENERATION_METRICS[task.kind]
  records = []
  for (index, example), text, nfe in zip(chunk, texts, row_nfe):
    ok, predicted = _is_correct(task.kind, example.answer, text)
    records.append({"index": index, "id": example.id, "answer": example.answer, "prediction": predicted,
                    "output": text, "model_calls": int(nfe), "scores": {metric: float(ok)}})
  return records


def elbo_task(path: str | None, tokenizer, *, seq_len: int, max_sequence_length: int,
              limit: int | None) -> eval_data.Task:
  """A text file as consecutive windows of `seq_len` tokens (the examples of the `elbo` task)."""
  if not path or not os.path.isfile(path):
    raise UserError("--tasks elbo needs --data pointing at a text file")
  with open(path, encoding="utf-8") as f:
    ids = np.asarray(tokenizer.encode(f.read()), np.int32)
  seq_len = min(seq_len, max_sequence_length)
  windows = ids[:len(ids) // seq_len * seq_len].reshape(-1, seq_len)[:limit]
  if not len(windows):
    raise UserError(f"{path} has {len(ids)} tokens, fewer than one window of {seq_len}; pass a longer file")
  return eval_data.Task("elbo", "elbo", tuple(windows), 0, 0.0, 0, seq_len, 0, 0)


def elbo_records(model, chunk: list[tuple[int, np.ndarray]], *, samples: int, rng) -> list[dict]:
  """Per window, the diffusion bound on NLL in nats per token (exp of the mean bounds the perplexity)."""
  bounds = likelihood.nll_bounds(model.params, [w for _, w in chunk], config=model.config, samples=samples,
                                 batch_size=len(chunk), rng=jax.random.fold_in(rng, chunk[0][0]))
  return [{"index": index, "id": example_id(window), "scores": {"nll_bound_nats": float(bound) / len(window)}}
          for (index, window), bound in zip(chunk, bounds)]


def task_settings(task, sampling: SamplingConfig, elbo_samples: int) -> dict:
  """The options that decide a task's numbers, as shown beside its scores."""
  if task.kind == "elbo":
    return dict(seq_len=task.gen_length, samples=elbo_samples)
  if task.kind == "multiple_choice":
    return dict(num_fewshot=task.num_fewshot, cfg_scale=task.cfg_scale, mc_num=task.mc_num)
  settings = dict(num_fewshot=task.num_fewshot, gen_length=task.gen_length, steps=task.steps,
                  block_length=task.block_length, cfg_scale=task.cfg_scale, decoding=sampling.decoding,
                  cache=sampling.cache)
  if sampling.decoding != "exact":
    settings[sampling.decoding] = getattr(sampling, sampling.decoding)
  return settings


def summarize(task, settings: dict, records: list[dict]) -> TaskResult:
  """The task's metrics from its per-example records: means, their standard errors, the time they took."""
  records = sorted(records, key=lambda r: r["index"])
  metrics, stderr = {}, {}
  for name in records[0]["scores"] if records else ():
    values = np.asarray([r["scores"][name] for r in records], np.float64)
    metrics[name] = float(values.mean())
    stderr[name] = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None
  settings = dict(settings)
  if task.kind == "elbo" and metrics:
    settings["perplexity_bound"] = math.exp(min(metrics["nll_bound_nats"], 50.0))
  if task.kind in GENERATION_METRICS and records:
    settings["model_calls_mean"] = float(np.mean([r["model_calls"] for r in records]))
  details = [{k: v for k, v in r.items() if k != "seconds"} for r in records] if task.kind != "elbo" else []
  return TaskResult(task.name, metrics, stderr, len(records), settings,
                    float(sum(r.get("seconds", 0.0) for r in records)), details)


def score_task(model, tokenizer, task, options: "EvalOptions", *, rng, progress: Callable, done: dict | None = None,
               on_chunk: Callable | None = None) -> TaskResult:
  """Scores `task` in fixed chunks of its examples (`pairs_per_call` examples for likelihoods, `batch_size` for
  generation and elbo windows). A chunk whose examples are all in `done` (index → record, from an earlier run) is
  not run again; the others are scored whole, so every number is the one an uninterrupted run gives. `on_chunk`
  receives each new chunk's records (to save them) before `progress` hears of it."""
  done = dict(done or {})
  size = options.pairs_per_call if task.kind == "multiple_choice" else options.batch_size
  examples = list(enumerate(task.examples))
  progress(sum(index in done for index, _ in examples))
  for first in range(0, len(examples), size):
    chunk = examples[first:first + size]
    fresh = sum(index not in done for index, _ in chunk)
    if not fresh:
      continue
    start = time.time()
    if task.kind == "multiple_choice":
      records = multiple_choice_records(model, tokenizer, task, chunk, add_bos=options.add_bos,
                                        batch_size=options.batch_size, rng=rng,
                                        pairs_per_call=options.pairs_per_call)
    elif task.kind == "elbo":
      records = elbo_records(model, chunk, samples=options.elbo_samples, rng=rng)
    else:
      records = generation_records(model, tokenizer, task, chunk, sampling=options.sampling,
                                   add_bos=options.add_bos, rng=rng)
    for record in records:
      record["seconds"] = (time.time() - start) / len(records)
      done[record["index"]] = record
    if on_chunk:
      on_chunk(records)
    progress(fresh)
  return summarize(task, task_settings(task, options.sampling, options.elbo_samples),
                   [done[index] for index, _ in examples])


def load_tasks(names: list[str], *, data: str | None, limit: int | None, num_fewshot: int | None,
               cfg_scale: float | None, mc_num: int | None, gen_length: int | None, steps: int | None,
               block_length: int | None) -> list:
  unknown = [n for n in names if n not in eval_data.TASKS + EXTRA_TASKS]
  if unknown:
    raise UserError(f"unknown task(s) {', '.join(unknown)}; choose from {', '.join(eval_data.TASKS + EXTRA_TASKS)}")
  tasks = []
  for name in names:
    if name == "elbo":
      tasks.append(name)
      continue
    if name == "reversal_poems":
      loaded = [eval_data.reversal_poems(data, direction) for direction in ("forward", "backward")]
      loaded = [dataclasses.replace(t, examples=t.examples[:limit]) if limit else t for t in loaded]
    else:
      loaded = [eval_data.load_task(name, num_fewshot=num_fewshot, limit=limit,
                                    data_path=data if name not in EXTRA_TASKS else None)]
    overrides = {k: v for k, v in dict(cfg_scale=cfg_scale, mc_num=mc_num, gen_length=gen_length, steps=steps,
                                       block_length=block_length).items() if v is not None}
    tasks += [dataclasses.replace(t, **overrides) for t in loaded]
  return tasks


@dataclasses.dataclass(frozen=True)
class EvalOptions:
  """How `run` scores, checked once. `sampling` holds the decoding options of generation tasks; each task
  replaces its lengths and guidance with the task's own (`task_sampling`). `batch_size`: masked copies per
  likelihood pair per call, and prompts per generation batch; `pairs_per_call`: pairs per likelihood call."""
  sampling: SamplingConfig = SamplingConfig()
  batch_size: int = 16
  pairs_per_call: int = 4
  add_bos: bool = False
  seed: int = 0
  elbo_seq_len: int = 256
  elbo_samples: int = 8

  def __post_init__(self):
    for name in ("batch_size", "pairs_per_call", "elbo_seq_len", "elbo_samples"):
      if getattr(self, name) < 1:
        raise UserError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")

  def run_options(self) -> dict:
    """What every task of a run shares and a resumed run must repeat."""
    return dict(batch_size=self.batch_size, pairs_per_call=self.pairs_per_call, add_bos=self.add_bos,
                seed=self.seed)


def records_path(output: str) -> str:
  """The per-example records beside a JSON summary: results.json → results.jsonl."""
  return (output[:-len(".json")] if output.endswith(".json") else output) + ".jsonl"


class Records:
  """The per-example results of one eval run as JSON lines, each chunk written (and synced) as it completes: a
  header with the run's options, then per task a line with its settings and a line per example. A killed run loses
  at most the chunk in flight; resuming reads the file back, checks that the options match, and returns what is
  done so only the rest is scored."""

  def __init__(self, path: str, run_options: dict, *, resume: bool):
    self.path, self._resume, self._file = path, resume, None
    self._tasks: dict[str, tuple[dict, dict]] = {}  # name → (settings, {index: record})
    run_options = _plain(run_options)
    # A new file is created by the first write, so a run that fails before scoring anything leaves none.
    self._pending = [] if resume else [{"run": run_options}]
    if resume:
      self._read(run_options)

  def _read(self, run_options: dict) -> None:
    if not os.path.isfile(self.path):
      raise UserError(f"nothing to resume: {self.path} does not exist; run without --resume, or pass the --output "
                      "of the run to continue")
    with open(self.path, "rb") as f:
      data = f.read()
    complete = data[:data.rfind(b"\n") + 1]  # a line without its newline was cut off mid-write
    try:
      entries = [json.loads(line) for line in complete.decode("utf-8").splitlines()]
      stored = entries[0]["run"]
      for entry in entries[1:]:
        if "settings" in entry:
          self._tasks[entry["task"]] = (entry["settings"], {})
        else:
          self._tasks[entry["task"]][1][entry["record"]["index"]] = entry["record"]
    except (ValueError, KeyError, IndexError, TypeError):
      raise UserError(f"{self.path} is not an eval records file; pass the --output of an earlier llada-jax eval "
                      "to --resume, or start a new run without --resume") from None
    _check_same(self.path, "the run", stored, run_options)
    if len(complete) < len(data):
      with open(self.path, "r+b") as f:
        f.truncate(len(complete))

  def begin(self, task: str, settings: dict) -> dict:
    """The records already saved for `task` (index → record), after checking they were made with `settings`."""
    settings = _plain(settings)
    if task in self._tasks:
      _check_same(self.path, task, self._tasks[task][0], settings)
      return dict(self._tasks[task][1])
    self._tasks[task] = (settings, {})
    self._write([{"task": task, "settings": settings}])
    return {}

  def append(self, task: str, records: list[dict]) -> None:
    self._write([{"task": task, "record": r} for r in records])

  def _write(self, entries: list[dict]) -> None:
    if self._file is None:
      self._file = open(self.path, "a" if self._resume else "w", encoding="utf-8")
    entries, self._pending = self._pending + entries, []
    self._file.write("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries))
    self._file.flush()
    os.fsync(self._file.fileno())

  def close(self) -> None:
    if self._file is not None:
      self._file.close()


def _plain(value: dict) -> dict:
  """`value` as it reads back from JSON (tuples become lists), so stored and current options compare equal."""
  return json.loads(json.dumps(value))


def _check_same(path: str, what: str, stored: dict, current: dict) -> None:
  changed = sorted(k for k in stored.keys() | current.keys() if stored.get(k) != current.get(k))
  if changed:
    raise UserError(f"cannot resume {path}: {what} was scored with "
                    + ", ".join(f"{k}={stored.get(k)!r}" for k in changed) + "; this run has "
                    + ", ".join(f"{k}={current.get(k)!r}" for k in changed)
                    + " — pass the same options, or start a new --output")


def _resumable_settings(task, settings: dict, options: EvalOptions) -> dict:
  """A task's settings plus what else decides its numbers: the full decoding options of generation tasks."""
  if task.kind in GENERATION_METRICS:
    return dict(settings, sampling=dataclasses.asdict(task_sampling(task, options.sampling, task.gen_length)))
  return settings


def run(model, tokenizer, tasks: list, options: EvalOptions, *, data: str | None, limit: int | None,
        progress_factory: Callable, records: Records | None = None) -> list[TaskResult]:
  """Scores every task (the `elbo` entry reads `data`), saving each chunk's records to `records` as it
  completes and skipping what `records` already holds from an earlier run of the same options."""
  rng = jax.random.key(options.seed)
  results = []
  for task in tasks:
    if task == "elbo":
      task = elbo_task(data, tokenizer, seq_len=options.elbo_seq_len,
                       max_sequence_length=model.config.max_sequence_length, limit=limit)
    settings = task_settings(task, options.sampling, options.elbo_samples)
    done = records.begin(task.name, _resumable_settings(task, settings, options)) if records else {}
    for index, record in done.items():
      if index < len(task.examples) and record.get("id") != example_id(task.examples[index]):
        raise UserError(f"cannot resume {records.path}: its {task.name} example {index} is {record.get('id')!r}, "
                        f"the data now gives {example_id(task.examples[index])!r} — pass the same --data, or start "
                        "a new --output")
    bar = progress_factory(task.name, len(task.examples))
    on_chunk = (lambda rs, name=task.name: records.append(name, rs)) if records else None
    results.append(score_task(model, tokenizer, task, options, rng=rng, progress=bar.update, done=done,
                              on_chunk=on_chunk))
    bar.close()
  return results


def example_id(example) -> str:
  """An example's id; an elbo window's is a digest of its tokens (a changed text file shows on resume)."""
  if isinstance(example, np.ndarray):
    return hashlib.sha1(example.tobytes()).hexdigest()[:16]
  return example.id


def format_table(results: list[TaskResult]) -> str:
  """One line per metric: its value ± standard error, the example count, seconds and the task's settings."""
  lines = [f"{'task':<26} {'metric':<16} {'value':>9} {'± stderr':>9} {'n':>6} {'seconds':>8}  settings",
           "-" * 110]
  for r in results:
    for i, (name, value) in enumerate(r.metrics.items()):
      stderr = r.stderr[name]
      settings = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.settings.items())
      first = (f"{r.task:<26}", f"{r.count:>6} {r.seconds:>8.1f}  {settings}") if i == 0 else (" " * 26, "")
      lines.append(f"{first[0]} {name:<16} {value:>9.4f} {'—' if stderr is None else f'{stderr:.4f}':>9} {first[1]}"
                   .rstrip())
  return "\n".join(lines)


def write_json(path: str, results: list[TaskResult], checkpoint: str, records: str | None = None) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  paths.write_atomically(path, json.dumps({"checkpoint": checkpoint, "records": records,
                                           "results": [dataclasses.asdict(r) for r in results]}, indent=2))
