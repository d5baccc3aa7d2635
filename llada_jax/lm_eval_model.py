"""The lm-evaluation-harness model `llada_jax` (an `lm_eval.api.model.LM`), as the official LLaDA harness defines
one: `loglikelihood` is the Monte-Carlo estimator, `generate_until` the sampler, and `loglikelihood_rolling` the
diffusion bound.

Run it with `llada-jax lm-eval --model_args checkpoint=DIR,mc_num=128,cfg=0.5 --tasks … [any lm-eval flag]`, which
is lm-eval's own CLI with this module registered (released lm-eval cannot load a model from outside its package
by name). In Python: `lm_eval.simple_evaluate(model=LLaDAHarnessModel(checkpoint=DIR), tasks=[…])`.

Model arguments (`--model_args k=v,…`): `checkpoint` (a llada-jax checkpoint, training workdir or HF directory),
`tokenizer`, `dtype`, `mesh` (local devices as a mesh, e.g. `mesh=data=-1` for data parallelism; `+` between
axes: `mesh=fsdp=2+tensor=4`); likelihood: `mc_num`, `mc_batch_size` (masked copies per pair per call, 16), `cfg`
(guidance scale), `check_greedy` (compute `is_greedy`, off as in the official harness, which returns False);
generation: `gen_length`, `steps`, `block_length`, `temperature`, `remasking`, `decoding`, `threshold`, `factor`,
`cache`; `add_bos`, `seed`, `max_length` (rolling windows), `elbo_samples`. lm-eval's `--batch_size` is the number
of requests per model call (pairs for likelihoods, prompts for generation); "auto" means 4. `--device` is ignored:
JAX places the work on its default devices (or the mesh).

`mc_num`, `cfg` and the generation lengths default per task to the paper's settings (`eval_data.PAPER_SETTINGS`,
found by task name: `hellaswag`, `llada_arc_challenge`, `mmlu_anatomy`, `truthfulqa_mc2`, …; tasks it does not know
get mc_num 128, no guidance and 256 generated tokens); a model arg applies to every task. The settings each task
runs with are printed to stderr once.

Each choice draws its masks from `evaluate.choice_key(key(seed), document, choice)`, as `llada-jax eval` does, so
both give the same per-example log-likelihoods for the same seed, examples and settings.
"""

import dataclasses
import sys

import jax
import numpy as np
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from llada_jax import eval_data, evaluate, sampler, sharding
from llada_jax.errors import UserError
from llada_jax.pretrained import load_for_inference

DEFAULT_BATCH = 4


def _requests_per_call(batch_size) -> int:
  if batch_size is None or str(batch_size).startswith("auto"):
    return DEFAULT_BATCH
  try:
    value = int(batch_size)
  except ValueError:
    raise UserError(f"--batch_size {batch_size!r} is not a whole number or 'auto'") from None
  if value < 1:
    raise UserError(f"--batch_size must be at least 1, got {value}")
  return value


@register_model("llada_jax")
class LLaDAHarnessModel(LM):
  """LLaDA for lm-eval; every argument is a `--model_args` key (module docstring)."""

  def __init__(self, checkpoint: str, tokenizer: str | None = None, dtype: str | None = None,
               mc_num: int | None = None, mc_batch_size: int = 16, cfg: float | None = None,
               check_greedy: bool = False, gen_length: int | None = None, steps: int | None = None,
               block_length: int | None = None, temperature: float = 0.0, remasking: str = "low_confidence",
               decoding: str = "exact", threshold: float = 0.9, factor: float = 1.0, cache: str = "none",
               add_bos: bool | None = None, seed: int = 0, max_length: int | None = None, elbo_samples: int = 8,
               mesh: str = "", batch_size=None, max_batch_size=None, device=None):
    super().__init__()
    self.model, self.tokenizer = load_for_inference(str(checkpoint), tokenizer, dtype,
                                                    mesh=sharding.local_mesh(mesh))
    self.mc_num = None if mc_num is None else int(mc_num)
    self.cfg = None if cfg is None else float(cfg)
    self.mc_batch_size, self.check_greedy = int(mc_batch_size), bool(check_greedy)
    self.add_bos = self.tokenizer.add_bos_token if add_bos is None else bool(add_bos)
    self.seed = int(seed)
    self.max_length = int(max_length or self.model.config.max_sequence_length)
    self.elbo_samples = int(elbo_samples)
    self.requests_per_call = _requests_per_call(batch_size)
    self.lengths = {name: None if value is None else int(value)
                    for name, value in dict(gen_length=gen_length, steps=steps, block_length=block_length).items()}
    self.sampling = sampler.SamplingConfig(temperature=float(temperature), remasking=remasking, decoding=decoding,
                                           threshold=float(threshold), factor=float(factor), cache=cache)
    self.sampling_for(None)  # a bad combination of options fails now, not at the first generation request
    self._announced: set = set()

  def likelihood_settings(self, task_name: str | None) -> tuple[int, float]:
    """(mc_num, cfg) for a task's requests: the model args where given, else the paper's setting for the task
    (`eval_data.PAPER_SETTINGS`), else 128 and no guidance."""
    paper = eval_data.paper_settings(task_name or "")
    mc_num = self.mc_num or (paper.mc_num if paper and paper.mc_num else 128)
    cfg = self._cfg(paper)
    self._announce(task_name, f"mc_num={mc_num} cfg={cfg}")
    return mc_num, cfg

  def sampling_for(self, task_name: str | None) -> sampler.SamplingConfig:
    """The sampler's options for a task's requests: lengths and guidance from the model args where given, else
    the paper's for the task, else one block of 256 tokens in 256 steps."""
    paper = eval_data.paper_settings(task_name or "")
    gen_length = self.lengths["gen_length"] or (paper.gen_length if paper and paper.gen_length else 256)
    paper_lengths = paper and paper.gen_length == gen_length
    steps = self.lengths["steps"] or (paper.steps if paper_lengths else gen_length)
    block_length = self.lengths["block_length"] or (paper.block_length if paper_lengths else gen_length)
    cfg = self._cfg(paper)
    sampling = dataclasses.replace(self.sampling, gen_length=gen_length, steps=steps, block_length=block_length,
                                   cfg_scale=cfg)
    if task_name is not None:
      self._announce(task_name, f"gen_length={gen_length} steps={steps} block_length={block_length} cfg={cfg} "
                     f"decoding={sampling.decoding}")
    return sampling

  def _cfg(self, paper: "eval_data.PaperSettings | None") -> float:
    return self.cfg if self.cfg is not None else (paper.cfg_scale if paper else 0.0)

  def _announce(self, task_name: str | None, settings: str) -> None:
    if (task_name, settings) not in self._announced:
      self._announced.add((task_name, settings))
      print(f"llada_jax: {task_name or 'requests'}: {settings}", file=sys.stderr)

  def _key(self, request, position: int) -> jax.Array:
    """The mask key of one request: by document and choice, as `llada-jax eval` draws them."""
    doc_id = position if request.doc_id is None else request.doc_id
    return evaluate.choice_key(jax.random.key(self.seed), doc_id, request.idx)

  def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
    pairs = [evaluate.encode_pair(self.tokenizer, *r.args, self.add_bos) for r in requests]
    bar = tqdm(total=len(pairs), desc="loglikelihood", unit="pair", disable=disable_tqdm)
    by_task: dict = {}
    for i, r in enumerate(requests):
      by_task.setdefault(r.task_name, []).append(i)
    results: list = [None] * len(requests)
    for task_name, indices in by_task.items():
      mc_num, cfg = self.likelihood_settings(task_name)
      values = self.model.log_likelihoods([pairs[i] for i in indices],
                                          rngs=[self._key(requests[i], i) for i in indices], mc_num=mc_num,
                                          batch_size=self.mc_batch_size, cfg_scale=cfg,
                                          pairs_per_call=self.requests_per_call, progress=bar.update)
      for i, value in zip(indices, values):
        results[i] = (float(value), self._is_greedy(*pairs[i], cfg) if self.check_greedy else False)
        self.cache_hook.add_partial("loglikelihood", requests[i].args, results[i])
    bar.close()
    return results

  def _is_greedy(self, context: list[int], continuation: list[int], cfg: float) -> bool:
    """Whether greedy unmasking from an all-mask continuation — one position per call, most confident first,
    with the guidance of the likelihood — reproduces it (the official harness's `suffix_greedy_prediction`)."""
    n = len(continuation)
    out = self.model.generate(np.asarray(context, np.int32)[None],
                              sampling=sampler.SamplingConfig(gen_length=n, steps=n, block_length=n,
                                                              cfg_scale=cfg))
    return bool(np.array_equal(np.asarray(out.tokens)[0, len(context):], continuation))

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
    """−(the diffusion bound on each text's NLL): a lower bound on its log-likelihood, not an estimate (the
    official harness leaves this unimplemented). Texts longer than `max_length` are scored in consecutive
    windows, each token once."""
    from llada_jax import likelihood
    documents = [self.tokenizer.encode(r.args[0], add_bos=self.add_bos) for r in requests]
    bar = tqdm(total=len(documents), desc="loglikelihood_rolling", unit="window", disable=disable_tqdm)
    bounds = likelihood.nll_bounds(self.model.params, documents, config=self.model.config,
                                   samples=self.elbo_samples, batch_size=self.requests_per_call,
                                   rng=jax.random.key(self.seed), max_length=self.max_length, progress=bar.update)
    bar.close()
    return [-float(b) for b in bounds]

  def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
    """The sampler with this model's settings; each reply is cut at `max_gen_toks` tokens and at the first of the
    request's `until` strings. A request's `temperature` (with do_sample) overrides the model's."""
    replies = [""] * len(requests)
    bar = tqdm(total=len(requests), desc="generate_until", unit="request", disable=disable_tqdm)
    by_options: dict[str, list[int]] = {}
    for i, r in enumerate(requests):
      by_options.setdefault((r.task_name, repr(sorted(r.args[1].items()))), []).append(i)
    for indices in by_options.values():
      options = requests[indices[0]].args[1]
      until = options.get("until") or []
      until = [until] if isinstance(until, str) else list(until)
      sampling = self.sampling_for(requests[indices[0]].task_name)
      max_tokens = int(options.get("max_gen_toks", sampling.gen_length))
      if "temperature" in options:
        temperature = float(options["temperature"]) if options.get("do_sample", True) else 0.0
        sampling = dataclasses.replace(sampling, temperature=temperature)
      for first in range(0, len(indices), self.requests_per_call):
        chunk = indices[first:first + self.requests_per_call]
        prompts = [self.tokenizer.encode(requests[i].args[0], add_bos=self.add_bos) for i in chunk]
        texts, _ = evaluate.generate_batch(self.model, self.tokenizer, prompts, sampling,
                                           rng=jax.random.fold_in(jax.random.key(self.seed), chunk[0]),
                                           max_tokens=max_tokens)
        for i, text in zip(chunk, texts):
          cuts = [text.index(stop) for stop in until if stop and stop in text]
          replies[i] = text[:min(cuts)] if cuts else text
          self.cache_hook.add_partial("generate_until", requests[i].args, replies[i])
        bar.update(len(chunk))
    bar.close()
    return replies
