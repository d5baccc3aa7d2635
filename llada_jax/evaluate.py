"""`llada-jax eval`: score a checkpoint on the paper's benchmarks (LLADA_SPEC §7), offline.

Multiple-choice tasks pick the choice with the highest Monte-Carlo log-likelihood (the official estimator, with
CFG where the paper used it); GSM8K generates and compares the final number; LAMBADA generates the last word;
reversal poems check that the answer is a substring of the chat reply; `elbo` reports the diffusion bound on NLL
over a text file. Generation runs in left-padded batches with an attention mask.
"""

import dataclasses
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
  task: str
  metric: str
  value: float
  count: int
  settings: dict
  seconds: float
  details: list = dataclasses.field(default_factory=list)


def encode_pair(tokenizer, context: str, continuation: str, add_bos: bool) -> tuple[list[int], list[int]]:
  """Context and continuation ids, encoded separately after lm-eval's whitespace move (LLADA_SPEC §6)."""
  context, continuation = eval_data.split_pair(context, continuation)
  return tokenizer.encode(context, add_bos=add_bos), tokenizer.encode(continuation)


def choice_key(rng: jax.Array, example: int, choice: int) -> jax.Array:
  """The mask key of one choice of one example. `eval` and the lm-eval model both draw with it, so they give the
  same log-likelihoods for the same seed whatever the batching."""
  return jax.random.fold_in(rng, example * 16 + choice)


def score_multiple_choice(model, tokenizer, task, *, add_bos: bool, batch_size: int, rng, progress,
                          pairs_per_call: int = 4) -> TaskResult:
  """Accuracy of picking the most likely choice. The choices of `pairs_per_call` examples at a time go to the
  batched estimator; each choice draws its masks from `choice_key`, whatever the batching."""
  correct, details = 0, []
  examples = list(task.examples)
  for first in range(0, len(examples), pairs_per_call):
    chunk = list(enumerate(examples[first:first + pairs_per_call], start=first))
    pairs, keys = [], []
    for index, example in chunk:
      for choice_index, choice in enumerate(example.choices):
        pairs.append(encode_pair(tokenizer, choice.context, choice.continuation, add_bos))
        keys.append(choice_key(rng, index, choice_index))
    values = iter(model.log_likelihoods(pairs, rngs=keys, mc_num=task.mc_num, batch_size=min(batch_size, task.mc_num),
                                        cfg_scale=task.cfg_scale, pairs_per_call=pairs_per_call).tolist())
    for index, example in chunk:
      scores = [next(values) for _ in example.choices]
      prediction = int(np.argmax(scores))
      correct += prediction == example.gold
      details.append({"id": example.id, "gold": example.gold, "prediction": prediction, "log_likelihoods": scores})
    progress(len(chunk))
  return TaskResult(task.name, "accuracy", correct / max(len(examples), 1), len(examples),
                    dict(num_fewshot=task.num_fewshot, cfg_scale=task.cfg_scale, mc_num=task.mc_num), 0.0, details)


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
  one block of one step per token; chat tasks never generate EOS (spec §7)."""
  last_word = task.kind == "last_word"
  return dataclasses.replace(base, gen_length=gen_length, steps=gen_length if last_word else task.steps,
                             block_length=gen_length if last_word else task.block_length, cfg_scale=task.cfg_scale,
                             logits_eos_inf=base.logits_eos_inf or task.kind == "substring")


def score_generation(model, tokenizer, task, *, sampling: SamplingConfig, add_bos: bool, batch_size: int, rng,
                     progress) -> TaskResult:
  correct, details, calls = 0, [], []
  chat = task.kind == "substring"
  examples = list(task.examples)
  for start in range(0, len(examples), batch_size):
    chunk = examples[start:start + batch_size]
    if chat:
      prompts = [tokenizer.encode_chat([{"role": "user", "content": e.prompt}]) for e in chunk]
    else:
      prompts = [tokenizer.encode(e.prompt, add_bos=add_bos) for e in chunk]
    gen_length = task.gen_length
    if task.kind == "last_word":  # the answer's own length (+1 so a trailing punctuation token fits)
      gen_length = max(len(tokenizer.encode(" " + e.answer)) for e in chunk) + 1
    texts, row_nfe = generate_batch(model, tokenizer, prompts, task_sampling(task, sampling, gen_length),
                                    rng=jax.random.fold_in(rng, start))
    for example, text, nfe in zip(chunk, texts, row_nfe):
      ok, predicted = _is_correct(task.kind, example.answer, text)
      correct += ok
      calls.append(int(nfe))
      details.append({"id": example.id, "answer": example.answer, "prediction": predicted, "output": text,
                      "model_calls": int(nfe)})
    progress(len(chunk))
  settings = dict(num_fewshot=task.num_fewshot, gen_length=task.gen_length, steps=task.steps,
                  block_length=task.block_length, cfg_scale=task.cfg_scale, decoding=sampling.decoding,
                  cache=sampling.cache, model_calls_mean=float(np.mean(calls)) if calls else 0.0)
  if sampling.decoding != "exact":
    settings[sampling.decoding] = getattr(sampling, sampling.decoding)
  return TaskResult(task.name, "exact_match" if not chat else "substring_match", correct / max(len(examples), 1),
                    len(examples), settings, 0.0, details)


def score_elbo(model, path: str, *, seq_len: int, samples: int, limit: int | None, tokenizer, rng,
               progress) -> TaskResult:
  """The diffusion bound on NLL over a text file, in nats per token (exp of it bounds the perplexity)."""
  if not path or not os.path.isfile(path):
    raise UserError("--tasks elbo needs --data pointing at a text file")
  with open(path, encoding="utf-8") as f:
    ids = np.asarray(tokenizer.encode(f.read()), np.int32)
  seq_len = min(seq_len, model.config.max_sequence_length)
  windows = ids[:len(ids) // seq_len * seq_len].reshape(-1, seq_len)
  if limit:
    windows = windows[:limit]
  if not len(windows):
    raise UserError(f"{path} has {len(ids)} tokens, fewer than one window of {seq_len}; pass a longer file")
  value = likelihood.elbo_bound(model.params, windows, config=model.config, samples=samples, rng=rng,
                                progress=progress)
  return TaskResult("elbo", "nll_bound_nats", value, len(windows),
                    dict(seq_len=seq_len, samples=samples, perplexity_bound=math.exp(min(value, 50.0))), 0.0)


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
      if not data:
        raise UserError("--tasks reversal_poems needs --data pointing at reversal_poems.json")
      loaded = [eval_data.reversal_poems(data, direction) for direction in ("forward", "backward")]
      loaded = [dataclasses.replace(t, examples=t.examples[:limit]) if limit else t for t in loaded]
    else:
      loaded = [eval_data.load_task(name, num_fewshot=num_fewshot, limit=limit,
                                    data_path=data if name not in EXTRA_TASKS else None)]
    overrides = {k: v for k, v in dict(cfg_scale=cfg_scale, mc_num=mc_num, gen_length=gen_length, steps=steps,
                                       block_length=block_length).items() if v is not None}
    tasks += [dataclasses.replace(t, **overrides) for t in loaded]
  return tasks


def run(model, tokenizer, tasks: list, *, sampling: SamplingConfig, data: str | None, limit: int | None,
        batch_size: int, add_bos: bool, seed: int, elbo_seq_len: int, elbo_samples: int,
        progress_factory: Callable, pairs_per_call: int = 4) -> list[TaskResult]:
  """Scores every task; generation tasks decode with `sampling`'s options (its lengths come from each task)."""
  rng = jax.random.key(seed)
  results = []
  for task in tasks:
    start = time.time()
    if task == "elbo":
      bar = progress_factory("elbo", None)
      result = score_elbo(model, data, seq_len=elbo_seq_len, samples=elbo_samples, limit=limit,
                          tokenizer=tokenizer, rng=rng, progress=bar.update)
    else:
      bar = progress_factory(task.name, len(task.examples))
      if task.kind == "multiple_choice":
        result = score_multiple_choice(model, tokenizer, task, add_bos=add_bos, batch_size=batch_size, rng=rng,
                                       progress=bar.update, pairs_per_call=pairs_per_call)
      else:
        result = score_generation(model, tokenizer, task, sampling=sampling, add_bos=add_bos, batch_size=batch_size,
                                  rng=rng, progress=bar.update)
    bar.close()
    result.seconds = time.time() - start
    results.append(result)
  return results


def format_table(results: list[TaskResult]) -> str:
  lines = [f"{'task':<26} {'metric':<16} {'value':>9} {'n':>6} {'seconds':>8}  settings", "-" * 100]
  for r in results:
    lines.append(f"{r.task:<26} {r.metric:<16} {r.value:>9.4f} {r.count:>6} {r.seconds:>8.1f}  "
                 + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.settings.items()))
  return "\n".join(lines)


def write_json(path: str, results: list[TaskResult], checkpoint: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  paths.write_atomically(path, json.dumps({"checkpoint": checkpoint,
                                           "results": [dataclasses.asdict(r) for r in results]}, indent=2))
