"""The reverse (unmasking) sampler (docs/design.md §5): the official `generate` semantics, and Fast-dLLM's faster
decoding and block KV caches (§5.8), batched, inside jit.

The canvas starts as `[prompt, MASK × gen_length]`; blocks are filled left to right (semi-autoregressive when
block_length < gen_length), never re-masking. Every option lives in one `SamplingConfig`:

- `decoding="exact"`: each block takes `steps / num_blocks` steps, committing the scheduled number of most
  confident predictions; token-identical to the official code.
- `decoding="threshold"`: each step commits every masked position of the block whose confidence is ≥ `threshold`,
  and always the most confident one; `decoding="factor"` commits the n most confident where
  (n + 1)·(1 − c_n) < `factor`. A block ends when it holds no mask, so the number of steps is dynamic.
- `cache="prefix" | "dual"`: the first call of a block runs the whole canvas and keeps every layer's keys/values;
  later calls run only the block and everything after it (`prefix`, reusing the prefix's keys/values) or only the
  block (`dual`, reusing the prefix's and the suffix's). Approximate by design: the reused keys/values go stale
  within a block; the first call of each block is exact.

One jitted program per block (the block index is traced: one compilation per shape and options; with the prefix
cache it is static, one compilation per block, since the window after the block shrinks), so a caller can
show each block as soon as it is final (`generate_blocks`); the steps inside a block are a `lax.scan` (exact) or a
`lax.while_loop` (every other mode) with no host round trip. In a batch each row advances on its own: a row whose
block holds no mask commits nothing more, the loop ends when every row is done, and each row reports its own model
calls; a row's tokens do not depend on what else is in the batch. Rows may even sit at different blocks of the
same canvas layout (one block index per row), so a server can add a request to a running batch at a block boundary.

Randomness: `rng` is one key per row, or one key from which row r takes `fold_in(rng, r)` (row 0 `rng` itself), and
each row draws only from its own key: exact step i
(counted over all blocks) from `fold_in(key, i)`, a dynamic step i of block b from `fold_in(fold_in(key, b), i)`,
each split into the Gumbel key and the `random`-remasking key; draws cover the row's positions whose logits are
computed (the current block, or the whole canvas when the prompt holds mask tokens). A row therefore samples the
same tokens with its key alone or in any batch, at any temperature.
Temperature sampling uses the Gumbel-max trick as `argmax(l/T − log(−log u))`, which selects exactly what the
official float64 `argmax(exp(l) / (−log u)^T)` does for the same u, without overflow, so float32 suffices.
"""

import dataclasses
import functools
from typing import Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from llada_jax import model as model_lib
from llada_jax.config import ModelConfig
from llada_jax.errors import UserError

REMASKING = ("low_confidence", "random")
DECODING = ("exact", "threshold", "factor")
CACHE = ("none", "prefix", "dual")


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """Every option of the sampler, checked when it is built (a bad value raises one UserError naming the fix).

  block_length None means gen_length (one block); mask_id None means the model's. `steps` sets the exact schedule
  and is ignored by threshold/factor decoding. `confidence_eos_eot_inf` reproduces the official behaviour
  exactly, quirk included (the published evaluation numbers were produced with it): at temperature 0 the EOS and
  EoT columns are −inf in the logits used for the confidence, so a position predicting EOS/EoT gets confidence 0
  (ranked last, still committable); at temperature > 0 only EoT is affected.
  """
  steps: int = 128
  gen_length: int = 128
  block_length: int | None = None
  temperature: float = 0.0
  cfg_scale: float = 0.0
  remasking: str = "low_confidence"
  mask_id: int | None = None
  logits_eos_inf: bool = False
  confidence_eos_eot_inf: bool = False
  decoding: str = "exact"
  threshold: float = 0.9
  factor: float = 1.0
  cache: str = "none"

  def __post_init__(self):
    set_ = functools.partial(object.__setattr__, self)
    if self.block_length is None:
      set_("block_length", self.gen_length)
    for name in ("steps", "gen_length", "block_length"):
      set_(name, int(getattr(self, name)))
    for name in ("temperature", "cfg_scale", "threshold", "factor"):
      set_(name, float(getattr(self, name)))
    if self.gen_length <= 0 or self.block_length <= 0 or self.steps <= 0:
      raise UserError("gen_length, block_length and steps must be positive")
    if self.gen_length % self.block_length:
      raise UserError(f"gen_length={self.gen_length} is not a multiple of block_length={self.block_length}; make it "
                      "one (block_length = gen_length disables semi-autoregressive blocks)")
    for name, allowed in (("remasking", REMASKING), ("decoding", DECODING), ("cache", CACHE)):
      if getattr(self, name) not in allowed:
        raise UserError(f"{name}={getattr(self, name)!r} is not one of {', '.join(allowed)}")
    if self.decoding == "exact" and self.steps % self.num_blocks:
      suggestion = self.num_blocks * max(1, self.steps // self.num_blocks)
      raise UserError(f"steps={self.steps} is not a multiple of the number of blocks ({self.num_blocks} = "
                      f"gen_length / block_length); use e.g. steps={suggestion}")
    if self.temperature < 0 or self.cfg_scale < 0:
      raise UserError("temperature and cfg_scale must be non-negative")
    if self.decoding != "exact" and self.remasking != "low_confidence":
      raise UserError(f"decoding={self.decoding} compares model confidences; it needs remasking=low_confidence")
    if self.threshold <= 0 or self.factor <= 0:
      raise UserError("threshold and factor must be positive")

  @property
  def num_blocks(self) -> int:
    return self.gen_length // self.block_length

  @property
  def is_exact(self) -> bool:
    """The official algorithm, token for token: the step schedule and no cache."""
    return self.decoding == "exact" and self.cache == "none"

  def check(self, config: ModelConfig, prompt_length: int) -> None:
    """The checks that need the model and the prompt, before anything compiles."""
    if prompt_length + self.gen_length > config.max_sequence_length:
      raise UserError(f"prompt ({prompt_length} tokens) + gen_length ({self.gen_length}) exceeds the model's "
                      f"max_sequence_length {config.max_sequence_length}; shorten the prompt or gen_length")
    if not 0 <= self.mask_token(config) < config.embedding_size:
      raise UserError(f"mask id {self.mask_token(config)} is outside the vocabulary (size {config.embedding_size})")
    if self.cache != "none" and config.causal:
      raise UserError("a KV cache is for the bidirectional diffusion model; this model is causal: use cache=none")

  def mask_token(self, config: ModelConfig) -> int:
    return config.mask_token_id if self.mask_id is None else int(self.mask_id)

  @classmethod
  def from_experiment(cls, cfg) -> "SamplingConfig":
    """The `sampling` section of an experiment config (configs/), checked; the defaults where it has none."""
    if "sampling" not in cfg:
      return cls()
    try:
      return cls(**cfg.sampling.to_dict())
    except (UserError, TypeError) as e:
      raise UserError(f"config section sampling: {e}") from None

  def describe(self) -> str:
    """One line for a person: the settings that change what is sampled."""
    parts = ["greedy" if self.temperature == 0 else f"temperature {self.temperature:g}",
             "random unmasking" if self.remasking == "random" else "most confident first",
             f"{self.gen_length} tokens" + (f" in blocks of {self.block_length}" if self.num_blocks > 1 else "")]
    parts.append(f"{self.steps} steps" if self.decoding == "exact" else f"{self.decoding} decoding")
    if self.cfg_scale:
      parts.append(f"cfg {self.cfg_scale:g}")
    return ", ".join(parts)


class GenerateOutput(NamedTuple):
  tokens: jax.Array  # [batch, prompt_length + gen_length], the prompt included
  nfe: int  # model calls the batch made (a CFG call on the doubled batch counts once)
  history: jax.Array | None = None  # [steps, batch, length]: the canvas after each exact step, when asked for
  row_nfe: np.ndarray | None = None  # [batch]: the model calls each row needed


class BlockUpdate(NamedTuple):
  """What `generate_blocks` yields once a block is final."""
  block: int
  tokens: jax.Array  # [batch, prompt_length + gen_length]: blocks ≤ `block` are final, later ones still masked
  row_nfe: jax.Array  # [batch]: model calls so far
  history: jax.Array | None  # [steps of this block, batch, length] (exact decoding, when asked for)


def left_pad(rows, pad_id: int, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(prompts [len(rows), width] int32, attention mask): token rows of different lengths right-aligned, as the
  sampler expects a batch (pads at the left, masked as keys; the official code pads with EOS)."""
  width = max(len(r) for r in rows) if width is None else width
  ids = np.full((len(rows), width), pad_id, np.int32)
  mask = np.zeros((len(rows), width), np.int32)
  for i, row in enumerate(rows):
    if len(row):
      ids[i, -len(row):], mask[i, -len(row):] = row, 1
  return ids, mask


def transfer_schedule(num_masked: jax.Array, steps: int) -> jax.Array:
  """Tokens to commit at each step of a block: base = n // steps, the first n % steps steps get one more.
  num_masked: [batch] → [batch, steps]."""
  base = num_masked // steps
  extra = num_masked % steps
  return base[:, None] + (jnp.arange(steps)[None, :] < extra[:, None]).astype(num_masked.dtype)


def step_keys(rng: jax.Array, step: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(Gumbel key, random-remasking key) of step `step` drawn from `rng`."""
  gumbel_key, remask_key = jax.random.split(jax.random.fold_in(rng, step))
  return gumbel_key, remask_key


def row_key(rng: jax.Array, index: jax.Array | int) -> jax.Array:
  """The key of row (or choice) `index` drawn from one key: `rng` itself for 0, `fold_in(rng, index)` after."""
  return jnp.where(index == 0, rng, jax.random.fold_in(rng, index))


def row_keys(rng: jax.Array, batch: int) -> jax.Array:
  """One key per row: `rng` as given when it holds one per row; from a single key, row r takes `row_key(rng,
  r)`. A row draws only from its own key, over its own positions, so with its key it samples the same tokens alone
  or in any batch (any temperature)."""
  if rng.ndim:
    return rng
  return jax.vmap(row_key, in_axes=(None, 0))(rng, jnp.arange(batch))


def _rank(confidence: jax.Array) -> jax.Array:
  """Each position's rank by confidence within its row (0 = most confident; ties: lowest index first)."""
  order = jnp.argsort(-confidence, axis=-1, stable=True)
  return jnp.argsort(order, axis=-1, stable=True)


def _commit_top_k(confidence: jax.Array, k: jax.Array) -> jax.Array:
  """[batch, length] bool: the k[b] most confident positions of each row."""
  return _rank(confidence) < k[:, None]


def _commit_threshold(confidence: jax.Array, candidates: jax.Array, threshold: float) -> jax.Array:
  """Every candidate at or above the threshold, and always each row's most confident candidate."""
  return candidates & ((_rank(confidence) == 0) | (confidence >= threshold))


def _commit_factor(confidence: jax.Array, candidates: jax.Array, factor: float) -> jax.Array:
  """The n most confident candidates while (r + 2)·(1 − c_r) ≤ factor holds for ranks r = 0, 1, … (rank 0 always).
  As in the reference, when only the last candidate fails it is committed too."""
  ordered = -jnp.sort(-confidence, axis=-1)
  rank = jnp.arange(confidence.shape[-1])
  count = jnp.sum(candidates, axis=-1)
  passes = ((ordered >= 1.0 - factor / (rank + 2.0)) | (rank == 0)) & (rank < count[:, None])
  leading = jnp.sum(jnp.cumprod(passes, axis=-1), axis=-1)
  n = jnp.where(leading >= count - 1, count, leading)
  return candidates & (_rank(confidence) < n[:, None])


def with_guidance(run, x, attention_mask, prompt_index, *, cfg_scale: float, mask_id: int):
  """(fp32 logits, whatever `run` returns beside them). `run(tokens, attention_mask) -> (logits, aux)` runs on the
  batch, or with classifier-free guidance (cfg_scale > 0) once on `[x; x with every prompt position set to
  mask_id]`, combined as `un + (cfg_scale + 1)(cond − un)`."""
  if cfg_scale <= 0:
    logits, aux = run(x, attention_mask)
    return logits.astype(jnp.float32), aux
  unconditional = jnp.where(prompt_index, mask_id, x)
  mask = None if attention_mask is None else jnp.concatenate([attention_mask, attention_mask])
  both, aux = run(jnp.concatenate([x, unconditional]), mask)
  both = both.astype(jnp.float32)
  cond, uncond = both[:x.shape[0]], both[x.shape[0]:]
  return uncond + (cfg_scale + 1.0) * (cond - uncond), aux


def guided_logits(params, x, attention_mask, prompt_index, *, config: ModelConfig, cfg_scale: float, mask_id: int,
                  logits_window=None) -> jax.Array:
  """fp32 logits of the uncached model, with classifier-free guidance when cfg_scale > 0 (one call on the doubled
  batch). Shared by the sampler and the likelihood estimator; works with or without an attention mask."""
  run = lambda tokens, mask: (model_lib.apply(params, tokens, mask, config=config, logits_window=logits_window), None)
  return with_guidance(run, x, attention_mask, prompt_index, cfg_scale=cfg_scale, mask_id=mask_id)[0]


def _predict(logits: jax.Array, keys, sampling: SamplingConfig, eos_id: int, eot_id: int):
  """(x0, confidence) of every position of fp32 logits [batch, width, vocab]; `keys` are each row's (Gumbel,
  remasking) keys of this step."""
  gumbel_keys, remask_keys = keys
  per_row = lambda fn, keys_: jax.vmap(fn)(keys_)
  if sampling.logits_eos_inf:
    logits = logits.at[..., eos_id].set(-jnp.inf)
  if sampling.temperature > 0:
    tiny = jnp.finfo(jnp.float32).tiny
    u = per_row(lambda key: jax.random.uniform(key, logits.shape[1:], minval=tiny), gumbel_keys)
    x0 = jnp.argmax(logits / sampling.temperature - jnp.log(-jnp.log(u)), axis=-1)
  else:
    x0 = jnp.argmax(logits, axis=-1)
  if sampling.remasking == "random":
    return x0, per_row(lambda key: jax.random.uniform(key, x0.shape[1:]), remask_keys)
  if sampling.confidence_eos_eot_inf:
    # The official chained assignment: EoT always, EOS only when the noisy logits alias the logits (T = 0).
    logits = logits.at[..., eot_id].set(-jnp.inf)
    if sampling.temperature == 0:
      logits = logits.at[..., eos_id].set(-jnp.inf)
  probs = jax.nn.softmax(logits, axis=-1)
  return x0, jnp.take_along_axis(probs, x0[..., None], axis=-1)[..., 0]


_STATIC = ("config", "sampling", "prompt_length", "window", "return_history")


def _sample_block(params, x, attention_mask, prompt_index, rng, block, *, config: ModelConfig,
                  sampling: SamplingConfig, prompt_length: int, window: bool, return_history: bool):
  """Fills block `block` of the canvas x [batch, total]: (x, model calls per row, history or None).

  `rng` is one key for every row or one per row ([batch]); `block` one index for every row or one per row (rows
  at different blocks share the program: what a server batching requests at block boundaries needs; the prefix
  cache takes a shared, static block)."""
  if sampling.is_exact:
    return _exact_block(params, x, attention_mask, prompt_index, rng, block, config=config, sampling=sampling,
                        prompt_length=prompt_length, window=window, return_history=return_history)
  return _dynamic_block(params, x, attention_mask, prompt_index, rng, block, config=config, sampling=sampling,
                        prompt_length=prompt_length) + (None,)


_sample_block_traced = jax.jit(_sample_block, static_argnames=_STATIC)
# With the prefix cache a block's later calls run the block and everything after it, a window that shrinks block by
# block: the block index is static there (one compilation per block), so no call computes padding.
_sample_block_static = jax.jit(_sample_block, static_argnames=_STATIC + ("block",))


def _exact_block(params, x, attention_mask, prompt_index, rng, block, *, config, sampling, prompt_length, window,
                 return_history):
  batch, total = x.shape
  mask_id = sampling.mask_token(config)
  steps_per_block = sampling.steps // sampling.num_blocks
  rngs, block = row_keys(rng, batch), jnp.broadcast_to(block, (batch,))
  positions = jnp.arange(total)[None, :]
  start = prompt_length + block * sampling.block_length
  block_end = start + sampling.block_length
  in_block = (positions >= start[:, None]) & (positions < block_end[:, None])
  schedule = transfer_schedule(jnp.sum((x == mask_id) & in_block, axis=1), steps_per_block)
  # Only the current block's logits are needed: positions after it are never committed and earlier ones hold no
  # masks, unless the prompt itself contains mask tokens (the official code may fill those): then use the whole
  # canvas. `window` is static, so this is decided on the host.
  window_start, window_size = (start, sampling.block_length) if window else (0, total)
  in_reach = model_lib.take_window(jnp.broadcast_to(positions, (batch, total)), window_start, window_size) < \
      block_end[:, None]

  def one_step(x, i):
    logits = guided_logits(params, x, attention_mask, prompt_index, config=config, cfg_scale=sampling.cfg_scale,
                           mask_id=mask_id, logits_window=(window_start, window_size))
    keys = jax.vmap(step_keys)(rngs, block * steps_per_block + i)
    x0, confidence = _predict(logits, keys, sampling, config.eos_token_id, config.eot_token_id)
    current = model_lib.take_window(x, window_start, window_size)
    masked = current == mask_id
    confidence = jnp.where(masked & in_reach, confidence, -jnp.inf)
    x0 = jnp.where(masked, x0.astype(x.dtype), current)
    commit = _commit_top_k(confidence, schedule[:, i])
    x = model_lib.put_window(x, window_start, jnp.where(commit, x0, current))
    return x, (x if return_history else None)

  x, history = jax.lax.scan(one_step, x, jnp.arange(steps_per_block))
  return x, jnp.full((batch,), steps_per_block, jnp.int32), history


def _dynamic_block(params, x, attention_mask, prompt_index, rng, block, *, config, sampling, prompt_length):
  """Threshold/factor decoding or the step schedule, each with or without a KV cache, in a `lax.while_loop`."""
  batch, total = x.shape
  size = sampling.block_length
  mask_id = sampling.mask_token(config)
  static = sampling.cache == "prefix"  # the prefix cache's window is shaped by the (static, shared) block
  block = block if static else jnp.broadcast_to(block, (batch,))
  start = prompt_length + block * size
  rngs = jax.vmap(jax.random.fold_in)(row_keys(rng, batch), jnp.broadcast_to(block, (batch,)))
  guide = functools.partial(with_guidance, cfg_scale=sampling.cfg_scale, mask_id=mask_id)
  block_logits = lambda hidden, offset: model_lib.head(params, model_lib.take_window(hidden, offset, size),
                                                       config=config)
  def first_call(x):
    if sampling.cache == "none":
      return guided_logits(params, x, attention_mask, prompt_index, config=config, cfg_scale=sampling.cfg_scale,
                           mask_id=mask_id, logits_window=(start, size)), None

    def run(tokens, mask):
      hidden, cache = model_lib.features_and_cache(params, tokens, mask, config=config)
      return block_logits(hidden, start), cache
    return guide(run, x, attention_mask, prompt_index)

  def later_call(x, cache):
    """Logits of the block. A cached call's fresh keys/values replace the cache's only for that call: the
    positions they cover are recomputed by every later call of the block, and nothing else changes."""
    if sampling.cache == "none":
      return first_call(x)[0]
    width = size if sampling.cache == "dual" else total - start  # prefix: start is static (_sample_block_static)
    part = model_lib.take_window(x, start, width)
    part_prompt = model_lib.take_window(prompt_index, start, width)

    def run(tokens, mask):  # with CFG, tokens and cache both hold the conditional rows, then the unconditional
      hidden = model_lib.features(params, tokens, mask, config=config, cache=cache, start=start)
      return block_logits(hidden, 0), None
    return guide(run, part, attention_mask, part_prompt)[0]

  def commit(x, logits, i):
    keys = jax.vmap(step_keys, in_axes=(0, None))(rngs, i)
    x0, confidence = _predict(logits, keys, sampling, config.eos_token_id, config.eot_token_id)
    current = model_lib.take_window(x, start, size)
    candidates = current == mask_id
    confidence = jnp.where(candidates, confidence, -jnp.inf)
    if sampling.decoding == "threshold":
      chosen = _commit_threshold(confidence, candidates, sampling.threshold)
    elif sampling.decoding == "factor":
      chosen = _commit_factor(confidence, candidates, sampling.factor)
    else:
      chosen = _commit_top_k(confidence, schedule[:, i])
    return model_lib.put_window(x, start, jnp.where(chosen, x0.astype(x.dtype), current))

  block_masked = lambda x: jnp.sum(model_lib.take_window(x, start, size) == mask_id, axis=1)
  if sampling.decoding == "exact":  # the step schedule, with a cache
    schedule = transfer_schedule(block_masked(x), sampling.steps // sampling.num_blocks)
  logits, cache = first_call(x)
  x = commit(x, logits, 0)

  def body(state):
    x, i, row_nfe = state
    active = block_masked(x) > 0
    return commit(x, later_call(x, cache), i), i + 1, row_nfe + active

  def not_done(state):
    return jnp.any(block_masked(state[0]) > 0)

  x, _, row_nfe = jax.lax.while_loop(not_done, body, (x, jnp.int32(1), jnp.ones((batch,), jnp.int32)))
  return x, row_nfe


def _prepare(prompt, attention_mask, sampling: SamplingConfig, config: ModelConfig, return_history: bool):
  prompt = np.asarray(prompt)
  if prompt.ndim == 1:
    prompt = prompt[None]
  sampling.check(config, prompt.shape[1])
  mask_id = sampling.mask_token(config)
  prompt_has_masks = bool(np.any(prompt == mask_id))
  if prompt_has_masks and not sampling.is_exact:
    raise UserError(f"the prompt holds mask tokens (id {mask_id}); only decoding=exact with cache=none fills "
                    "masks inside the prompt")
  if return_history and not sampling.is_exact:
    raise UserError("the step-by-step history is kept for decoding=exact with cache=none only")
  if attention_mask is not None:
    attention_mask = np.asarray(attention_mask)
    attention_mask = attention_mask[None] if attention_mask.ndim == 1 else attention_mask
    if attention_mask.shape != prompt.shape:
      raise UserError(f"attention_mask shape {attention_mask.shape} differs from the prompt's {prompt.shape}")
  return prompt, attention_mask, not prompt_has_masks


def generate_blocks(params, prompt, attention_mask=None, *, config: ModelConfig, sampling: SamplingConfig,
                    rng: jax.Array | None = None, return_history: bool = False) -> Iterator[BlockUpdate]:
  """Samples `sampling.gen_length` tokens after each (left-padded) prompt row, yielding the canvas each time a
  block is final (blocks are final once left behind), for streaming output."""
  prompt, attention_mask, window = _prepare(prompt, attention_mask, sampling, config, return_history)
  config = config.for_inference()
  batch, prompt_length = prompt.shape
  mask_id = sampling.mask_token(config)
  x = jnp.concatenate([jnp.asarray(prompt, jnp.int32), jnp.full((batch, sampling.gen_length), mask_id, jnp.int32)],
                      axis=1)
  if attention_mask is not None:
    attention_mask = jnp.concatenate([jnp.asarray(attention_mask, jnp.int32),
                                      jnp.ones((batch, sampling.gen_length), jnp.int32)], axis=1)
  prompt_index = x != mask_id
  rng = jax.random.key(0) if rng is None else rng
  row_nfe = jnp.zeros((batch,), jnp.int32)
  static_block = sampling.cache == "prefix"
  sample_block = _sample_block_static if static_block else _sample_block_traced
  for block in range(sampling.num_blocks):
    x, calls, history = sample_block(params, x, attention_mask, prompt_index, rng,
                                     block if static_block else jnp.int32(block), config=config, sampling=sampling,
                                     prompt_length=prompt_length, window=window, return_history=return_history)
    row_nfe = row_nfe + calls
    yield BlockUpdate(block, x, row_nfe, history)


def fill_blocks(params, canvas, attention_mask, prompt_index, rngs, blocks, *, config: ModelConfig,
                sampling: SamplingConfig, prompt_length: int) -> tuple[jax.Array, jax.Array]:
  """One block of every row of a canvas [batch, prompt_length + gen_length], each row at its own block: (canvas,
  model calls per row). What a server needs to add requests to a running batch at block boundaries: row r, with
  its key rngs[r], gets exactly the tokens `generate_blocks` gives it alone. The rows' prompts hold no mask tokens;
  the prefix cache (whose window follows one shared block) is not available here."""
  if sampling.cache == "prefix":
    raise UserError("cache=prefix follows one block shared by every row; use cache=dual or none")
  x, calls, _ = _sample_block_traced(params, canvas, attention_mask, prompt_index, rngs, jnp.asarray(blocks, jnp.int32),
                                     config=config.for_inference(), sampling=sampling, prompt_length=prompt_length,
                                     window=True, return_history=False)
  return x, calls


def generate(params, prompt, attention_mask=None, *, config: ModelConfig, sampling: SamplingConfig | None = None,
             rng: jax.Array | None = None, return_history: bool = False, **options) -> GenerateOutput:
  """Samples `gen_length` tokens after each (left-padded) prompt row (docs/design.md §5; module docstring).

  Options come as one `SamplingConfig`, or as its fields by keyword (`steps=…, decoding=…`), not both.
  `cfg_scale > 0` works with or without an attention mask.
  """
  if options:
    if sampling is not None:
      raise TypeError("pass either sampling= or SamplingConfig fields as keywords, not both")
    sampling = SamplingConfig(**options)
  sampling = SamplingConfig() if sampling is None else sampling
  updates = list(generate_blocks(params, prompt, attention_mask, config=config, sampling=sampling, rng=rng,
                                 return_history=return_history))
  last = updates[-1]
  history = jnp.concatenate([u.history for u in updates]) if return_history else None
  row_nfe = np.asarray(last.row_nfe)
  return GenerateOutput(last.tokens, int(row_nfe.max()), history, row_nfe)
