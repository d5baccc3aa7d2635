"""The training loop: a sharded, donated `jax.jit` train step over a (data, fsdp, tensor) mesh, Orbax checkpoints,
Grain input, tensorboard metrics and a final summary.

The step is a pure function `(state, batch) → (state, metrics)`; the state is a plain dict
`{params, opt_state, step, rng}` whose shardings come from the logical-axis rules. Randomness for step n is
`fold_in(rng, n)`, so a resumed run draws exactly the masks the uninterrupted one would have.
"""

import collections
import contextlib
import functools
import math
import os
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from llada_jax import checkpoint, convert, loss as loss_lib, optim, paths, reporting, sharding
from llada_jax import data as data_lib
from llada_jax import model as model_lib
from llada_jax.config import Experiment, ModelConfig, TrainConfig
from llada_jax.data.packing import PROMPT_LENGTH, TOKENS
from llada_jax.errors import UserError
from llada_jax.sampler import SamplingConfig

State = dict[str, Any]

# ---- Checks that fail before anything compiles ----

def check_experiment(exp: Experiment, mesh, process_count: int) -> None:
  """What only the running job can check (the sections checked themselves when built): the batch against the
  mesh and the processes."""
  data, accum = exp.data, exp.train.grad_accum
  problems = []
  batch_devices = mesh.shape["data"] * mesh.shape["fsdp"]
  if (data.global_batch // accum) % batch_devices:
    problems.append(f"the micro-batch of {data.global_batch // accum} sequences (global_batch/grad_accum) does not "
                    f"divide over the mesh's data×fsdp = {batch_devices} devices; make it a multiple")
  if data.global_batch % process_count:
    problems.append(f"data.global_batch={data.global_batch} is not divisible by the {process_count} processes")
  if problems:
    raise UserError("; ".join(problems))


# ---- State and its shardings ----

def init_state(model_config: ModelConfig, optimizer: optax.GradientTransformation, seed: int,
               params: model_lib.Params | None = None) -> State:
  """A fresh train state; `params` (e.g. pre-trained weights for SFT) replaces the random initialisation."""
  init_rng, train_rng = jax.random.split(jax.random.key(seed))
  if params is None:
    params = model_lib.init_params(model_config, init_rng)
  return {"params": params, "opt_state": optimizer.init(params), "step": jnp.zeros((), jnp.int32),
          "skipped": jnp.zeros((), jnp.int32), "rng": jax.random.key_data(train_rng)}


def state_shardings(model_config: ModelConfig, optimizer: optax.GradientTransformation, mesh) -> tuple[State, State]:
  """(abstract state, shardings): optimizer moments shard like their parameters, scalars are replicated."""
  abstract = jax.eval_shape(functools.partial(init_state, model_config, optimizer), 0)
  param_shardings = model_lib.param_shardings(model_config, mesh)
  replicated = NamedSharding(mesh, P())
  opt_shardings = optax.tree_map_params(optimizer, lambda _, s: s, abstract["opt_state"], param_shardings,
                                        transform_non_params=lambda _: replicated,
                                        is_leaf=lambda x: isinstance(x, NamedSharding))
  shardings = {"params": param_shardings, "opt_state": opt_shardings, "step": replicated, "skipped": replicated,
               "rng": replicated}
  return abstract, shardings


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(("data", "fsdp")))


def jit_train_step(model_config: ModelConfig, train: TrainConfig, optimizer, mesh):
  """(jitted step, abstract state, state shardings): the step `run` trains with and `llada-jax plan` compiles —
  state sharded by `state_shardings` and donated, the batch split over data×fsdp. Call it outside `set_mesh` (Flax
  would read the logical axes as mesh axes); run or lower the step inside it."""
  abstract, shardings = state_shardings(model_config, optimizer, mesh)
  step_fn = jax.jit(make_train_step(model_config, train, optimizer),
                    in_shardings=(shardings, batch_sharding(mesh)), out_shardings=(shardings, None), donate_argnums=0)
  return step_fn, abstract, shardings


def abstract_batch(exp: Experiment, mesh) -> dict:
  """The global batch the step takes, as sharded ShapeDtypeStructs (for ahead-of-time compiles)."""
  rows, sharding_ = exp.data.global_batch, batch_sharding(mesh)
  batch = {TOKENS: jax.ShapeDtypeStruct((rows, exp.data.seq_len), jnp.int32, sharding=sharding_)}
  if exp.train.objective == "sft":
    batch[PROMPT_LENGTH] = jax.ShapeDtypeStruct((rows,), jnp.int32, sharding=sharding_)
  return batch


# ---- The step ----

def _objective_loss(params, batch, rng, model_config: ModelConfig, train: TrainConfig,
                    random_length_prob: float):
  tokens = batch[TOKENS]
  head = functools.partial(model_lib.head, params, config=model_config)

  def token_ce(inputs, key_mask, targets):
    hidden = model_lib.features(params, inputs, key_mask, config=model_config)
    return loss_lib.chunked_token_ce(hidden, head, targets, train.loss_chunk_length)

  if train.objective == "autoregressive":
    return loss_lib.autoregressive_loss(token_ce(tokens, None, loss_lib.next_tokens(tokens)))
  if train.objective == "sft":
    noised = loss_lib.noise_sft(rng, tokens, batch[PROMPT_LENGTH], mask_id=model_config.mask_token_id,
                                eps=train.noise_eps, antithetic=train.antithetic_t)
    return loss_lib.sft_loss(token_ce(noised.inputs, None, tokens), noised, batch[PROMPT_LENGTH])
  if train.masking == "paired_counts":
    noised = loss_lib.noise_paired_counts(rng, tokens, mask_id=model_config.mask_token_id,
                                          random_length_prob=random_length_prob, antithetic=train.antithetic_t)
    hidden = model_lib.features(params, noised.inputs, noised.key_mask, config=model_config)
    ce = loss_lib.masked_token_ce(hidden, head, tokens, noised.masked, train.loss_chunk_length)
    return loss_lib.diffusion_loss(ce, noised)
  noised = loss_lib.noise(rng, tokens, mask_id=model_config.mask_token_id, eps=train.noise_eps,
                          random_length_prob=random_length_prob, antithetic=train.antithetic_t)
  return loss_lib.diffusion_loss(token_ce(noised.inputs, noised.key_mask, tokens), noised)


def make_train_step(model_config: ModelConfig, train: TrainConfig,
                    optimizer: optax.GradientTransformation) -> Callable[[State, dict], tuple[State, dict]]:
  accum = int(train.grad_accum)
  schedule = optim.learning_rate_schedule(train)
  loss_fn = functools.partial(_objective_loss, model_config=model_config, train=train,
                              random_length_prob=train.random_length_prob)
  grad_fn = jax.value_and_grad(loss_fn)

  def step_fn(state: State, batch: dict) -> tuple[State, dict]:
    rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
    # Row i of micro-batch k is global row i·accum + k: each device keeps its own rows for every micro-batch.
    micro = jax.tree.map(lambda x: x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1), batch)

    def accumulate(carry, inputs):
      loss_sum, grad_sum = carry
      index, mb = inputs
      value, grads = grad_fn(state["params"], mb, jax.random.fold_in(rng, index))
      return (loss_sum + value, jax.tree.map(jnp.add, grad_sum, grads)), None

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state["params"])
    (loss_sum, grad_sum), _ = jax.lax.scan(accumulate, (jnp.zeros((), jnp.float32), zeros),
                                           (jnp.arange(accum), micro))
    loss = loss_sum / accum
    grads = jax.tree.map(lambda g, p: (g / accum).astype(p.dtype), grad_sum, state["params"])
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    # A finite loss and gradient can still give a non-finite update (an overflowing moment, a huge learning rate)
    # or parameters: each norm is one reduction, next to nothing beside the step.
    update_norm, param_norm = optax.tree.norm(updates), optax.tree.norm(params)
    finite = (jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(update_norm) & jnp.isfinite(param_norm))
    # A non-finite step changes nothing but the counters (the data moves on); the host decides to go on or stop.
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = {"params": keep(params, state["params"]), "opt_state": keep(opt_state, state["opt_state"]),
                 "step": state["step"] + 1, "skipped": state["skipped"] + (~finite).astype(jnp.int32),
                 "rng": state["rng"]}
    metrics = {"loss": loss, "grad_norm": grad_norm, "update_norm": update_norm, "param_norm": param_norm,
               "finite": finite, "lr": schedule(state["step"]), "skipped": new_state["skipped"]}
    return new_state, metrics

  return step_fn


def make_eval_step(model_config: ModelConfig, train: TrainConfig) -> Callable:
  """The validation loss (for diffusion: the ELBO bound) with masks fixed by the batch index: comparable over time."""
  # One ruler for every run: Bernoulli masks (docs/design.md §4), whatever masking the run trains with (same
  # expectation).
  ruler = train.replace(masking="bernoulli")

  def eval_fn(params, batch, index):
    rng = jax.random.fold_in(jax.random.key(12345), index)
    return _objective_loss(params, batch, rng, model_config, ruler, random_length_prob=0.0)
  return eval_fn


# ---- The loop ----

def _global_batch(local: dict, sharding_) -> dict:
  return {k: jax.make_array_from_process_local_data(sharding_, np.asarray(v)) for k, v in local.items()}


def evaluate(eval_step, params, batches: Iterator[dict], sharding_, num_batches: int) -> float:
  values = []
  for index, local in zip(range(num_batches), batches):
    values.append(float(eval_step(params, _global_batch(local, sharding_), index)))
  return float(np.mean(values)) if values else float("nan")


def run(cfg: ml_collections.ConfigDict, workdir: str, *, resume: bool = False, recover_lr: float | None = None,
        progress: bool = True, log: Callable[[str], None] = print,
        callback: Callable[[int, dict], None] | None = None) -> reporting.Summary:
  """Trains per `cfg` in `workdir`; returns the summary. Everything a user can get wrong fails before compiling,
  and before the workdir is touched. `callback(step, metrics)` is called at every logged step (e.g. to watch a run
  from a notebook)."""
  if recover_lr is not None:
    # The LLaDA recipe after a loss spike: resume the last good checkpoint with a lower peak learning rate.
    if not checkpoint.committed_steps(workdir):
      raise UserError(f"--recover-lr resumes a checkpoint, but {workdir} holds none; train without it first")
    resume = True
    cfg.train.lr = float(recover_lr)
    cfg.train.final_lr = min(cfg.train.final_lr, float(recover_lr))
  if cfg.train.init_from:
    if not paths.path(cfg.train.init_from).exists():
      raise UserError(f"train.init_from: the checkpoint {cfg.train.init_from} does not exist; train that model "
                      "first (e.g. llada-jax train --config configs/tiny.py --workdir runs/tiny) or set "
                      "--config.train.init_from")
    if not cfg.data.tokenizer:  # fine-tune with the tokenizer the weights were trained with
      cfg.data.tokenizer = checkpoint.find_tokenizer(cfg.train.init_from) or ""
  exp = Experiment.from_config(cfg)
  model_config, train = exp.model, exp.train
  mesh = sharding.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
  check_experiment(exp, mesh, jax.process_count())
  sampling = SamplingConfig.from_experiment(cfg)
  sampling.check(model_config, prompt_length=0)
  if checkpoint.committed_steps(workdir) and not resume:
    raise UserError(f"{workdir} already holds checkpoints; pass --resume to continue them or choose a new --workdir")
  tokenizer = data_lib.make_tokenizer(exp.data)
  check_tokenizer(tokenizer, model_config)
  process = dict(process_index=jax.process_index(), process_count=jax.process_count(), objective=train.objective)
  train_iter = data_lib.make_train_iterator(exp.data, tokenizer, seed=exp.seed, **process)
  checkpoint.ensure_writable(workdir)
  store = checkpoint.TrainCheckpoints(workdir, cfg, model_config, keep=train.keep_checkpoints,
                                      async_save=train.async_checkpoint)
  store.save_with_run(tokenizer, convert.generation_config(model_config, sampling))

  optimizer = optim.make_optimizer(train)
  batch_shard = batch_sharding(mesh)
  step_fn, abstract, shardings = jit_train_step(model_config, train, optimizer, mesh)
  cache = train.compilation_cache
  cache = os.path.join(paths.absolute(workdir), "compilation_cache") if cache == "auto" else cache
  tensorboard_dir = os.path.join(workdir, "tensorboard")
  with compilation_cache(cache), jax.set_mesh(mesh):
    eval_fn = jax.jit(make_eval_step(model_config, train), in_shardings=(shardings["params"], batch_shard, None))
    if resume and store.latest_step() is not None:
      state = store.restore(abstract, shardings, mesh, train_iter)
      log(f"resumed from step {int(state['step'])} in {store.directory}")
    else:
      params = _pretrained_params(train.init_from, model_config, mesh) if train.init_from else None
      state = jax.jit(functools.partial(init_state, model_config, optimizer), static_argnums=0,
                      out_shardings=shardings)(exp.seed, params)
    reporter = reporting.Reporter(exp, int(state["step"]), tensorboard_dir if jax.process_index() == 0 else None,
                                  show=progress and jax.process_index() == 0, callback=callback)

    def eval_loss(params):
      batches = data_lib.make_eval_iterator(exp.data, tokenizer, **process)
      return evaluate(eval_fn, params, iter(batches), batch_shard, train.eval_batches)

    try:
      started = time.time()
      state = _loop(state, train=train, step_fn=step_fn, eval_loss=eval_loss, train_iter=train_iter,
                    batch_shard=batch_shard, store=store, reporter=reporter)
      summary = reporter.finish(train.steps, seconds=time.time() - started)
      if train.sample_after and train.objective != "autoregressive":
        summary.sample_settings = sampling.describe()
        summary.sample = _sample(exp, state["params"], tokenizer,
                                 train.sample_prompt or data_lib.sample_prompt(exp.data), sampling)
    finally:
      reporter.close()
  summary.checkpoint_dir = os.path.join(workdir, "checkpoints", str(store.latest_step()))  # as the user named it
  summary.best_step = store.best_step()
  summary.data_stats = data_lib.data_stats(exp.data, tokenizer)
  if exp.data.source == "stream" and exp.data.bad_data == "skip":
    from llada_jax.data import streaming
    summary.data_stats["skipped_documents"] = streaming.skipped_documents(train_iter.get_state())
  summary.tensorboard_dir = tensorboard_dir
  if jax.process_index() == 0 and (summary.losses or summary.val_losses):
    from llada_jax import plots
    per_byte = reporting.bits_per_byte(1.0, summary.data_stats) if summary.data_stats.get("val_bytes") else None
    summary.loss_plot = plots.loss_curves(summary.losses, summary.val_losses, os.path.join(workdir, "loss.png"),
                                          title=f"{train.objective}: {model_config.num_params():,} parameters, "
                                          f"{exp.data.source} data", bits_per_nat_token=per_byte)
  return summary


@contextlib.contextmanager
def compilation_cache(directory: str):
  """Within the block, compiled programs persist in `directory` ("" = no persistent cache); the process's setting
  before it is restored after it."""
  from jax.experimental.compilation_cache import compilation_cache as jax_cache

  def use(path):
    if (jax.config.jax_compilation_cache_dir or "") != (path or ""):
      jax_cache.reset_cache()  # JAX opens its cache once per process: reopen it at the new place
      jax_cache.set_cache_dir(path or None)

  before = jax.config.jax_compilation_cache_dir
  use(directory)
  try:
    yield
  finally:
    use(before)


def _pretrained_params(path: str, model_config: ModelConfig, mesh) -> model_lib.Params:
  """Weights to start from (a checkpoint, workdir or HF directory, e.g. for SFT), checked against the config."""
  from llada_jax.pretrained import load_pretrained
  loaded = load_pretrained(path, dtype=model_config.param_dtype, mesh=mesh)
  if loaded.config.architecture() != model_config.architecture():
    raise UserError(f"train.init_from={path} holds a different architecture than the config's model section; "
                    "make them match")
  return loaded.params


def check_tokenizer(tokenizer, model_config: ModelConfig) -> None:
  if tokenizer.vocab_size > model_config.embedding_size:
    raise UserError(f"the tokenizer has {tokenizer.vocab_size} ids but the model's embedding has "
                    f"{model_config.embedding_size} rows; set model.embedding_size/vocab_size to at least "
                    f"{tokenizer.vocab_size}")
  for name in ("mask", "eos", "bos"):
    ours, theirs = getattr(model_config, f"{name}_token_id"), getattr(tokenizer, f"{name}_id")
    if ours != theirs:
      raise UserError(f"model.{name}_token_id={ours} but the tokenizer's {name} id is {theirs}; set "
                      f"--config.model.{name}_token_id={theirs}")


class DivergenceGuard:
  """Which steps were non-finite (the step dropped their updates), whether the run must stop, and whether the state
  may be checkpointed.

  Each step's finite flag stays on the device until a log or checkpoint step reads the pending ones at once, so the
  guard adds no per-step synchronisation. `nan_policy=stop` stops at the first non-finite step; `skip` goes on
  until `nan_max_consecutive` in a row or more than `nan_max_in_window` within `nan_window` steps. A checkpoint is
  withheld when its interval held a non-finite step: a run drifting towards divergence is not saved over the
  checkpoints from before it."""

  def __init__(self, train: TrainConfig):
    self.train = train
    self._pending: list[tuple[int, jax.Array]] = []
    self._recent: collections.deque[int] = collections.deque()  # non-finite steps within the window
    self.streak = 0
    self.since_checkpoint = 0

  def add(self, step: int, finite: jax.Array) -> None:
    self._pending.append((step, finite))

  def flush(self) -> str | None:
    """Reads the pending flags; returns why the run must stop, or None."""
    if not self._pending:
      return None
    flags = jax.device_get([flag for _, flag in self._pending])
    last_step = self._pending[-1][0]
    for (step, _), finite in zip(self._pending, flags):
      if finite:
        self.streak = 0
        continue
      self.streak += 1
      self.since_checkpoint += 1
      self._recent.append(step)
      if self.train.nan_policy == "stop":
        self._pending = []
        return f"step {step} was not finite (nan_policy=stop)"
      if self.streak >= self.train.nan_max_consecutive:
        self._pending = []
        return f"{self.streak} consecutive steps up to {step} were not finite"
    self._pending = []
    while self._recent and self._recent[0] <= last_step - self.train.nan_window:
      self._recent.popleft()
    if len(self._recent) > self.train.nan_max_in_window:
      return (f"{len(self._recent)} steps within the last {self.train.nan_window} were not finite "
              f"(train.nan_max_in_window={self.train.nan_max_in_window})")
    return None


def _loop(state: State, *, train: TrainConfig, step_fn: Callable, eval_loss: Callable[[Any], float], train_iter,
          batch_shard: NamedSharding, store: checkpoint.TrainCheckpoints, reporter: reporting.Reporter) -> State:
  """Steps from the state's step to `train.steps`: validation every `eval_every`, checkpoints every
  `checkpoint_every` (withheld after non-finite steps), a stop with advice when the run diverges."""
  guard = DivergenceGuard(train)

  def validate(step):
    value = reporter.last_validation(step)
    if value is None:
      value = eval_loss(state["params"])
      reporter.validation(step, value)
    return value

  def stop_if_diverged():
    reason = guard.flush()
    if reason is None:
      return
    reporter.close_bar()
    store.wait()
    good = store.latest_step()
    where = (f"the last good checkpoint is step {good}; resume it with a lower peak learning rate: rerun the same "
             f"command with --recover-lr {train.lr / 4:g}" if good is not None else
             "no checkpoint was written yet; start again with a lower train.lr")
    raise UserError(f"training diverged: {reason} (non-finite loss, gradient, update or parameters; none of those "
                    f"updates was applied or saved); {where}")

  start_step = int(state["step"])
  if train.eval_every > 0 and start_step == 0:
    validate(0)
  for step in range(start_step, train.steps):
    state, metrics = step_fn(state, _global_batch(next(train_iter), batch_shard))
    guard.add(step + 1, metrics["finite"])
    store.check()
    reporter.step_done()
    last = step + 1 == train.steps
    if (step + 1) % train.log_every == 0 or last or step == start_step:
      stop_if_diverged()
      reporter.train_metrics(step + 1, jax.device_get(metrics))
    if train.eval_every > 0 and ((step + 1) % train.eval_every == 0 or last):
      validate(step + 1)
    if (step + 1) % train.checkpoint_every == 0 or last:
      stop_if_diverged()
      val = validate(step + 1) if train.eval_every > 0 else None
      if guard.since_checkpoint or (val is not None and not math.isfinite(val)):
        reporter.summary.withheld.append(step + 1)
        why = (f"{guard.since_checkpoint} non-finite step(s) since the previous checkpoint (updates dropped)"
               if guard.since_checkpoint else f"its validation bound is {val}")
        checkpoint.log.warning("step %d not checkpointed: %s; the checkpoints before it are kept", step + 1, why)
        guard.since_checkpoint = 0
      else:
        store.save(step + 1, state, train_iter, val)
  store.wait()
  return state


def _sample(exp: Experiment, params, tokenizer, prompt: str, sampling: SamplingConfig) -> str:
  """A continuation of `prompt` with the run's sampling defaults (what `generate` on the workdir does), to see what
  the model learned."""
  from llada_jax import sampler
  ids = (tokenizer.encode_chat([{"role": "user", "content": prompt}]) if exp.train.objective == "sft"
         else tokenizer.encode(prompt, add_bos=tokenizer.add_bos_token))
  out = sampler.generate(params, np.asarray([ids], np.int32), config=exp.model, sampling=sampling,
                         rng=jax.random.key(exp.seed))
  return prompt + "⟶" + tokenizer.decode(np.asarray(out.tokens)[0, len(ids):], skip_special_tokens=True)
