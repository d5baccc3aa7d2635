"""Log-likelihood estimates: the official Monte-Carlo estimator (LLADA_SPEC §6) and the ELBO bound over text.

`log_likelihood(prompt, answer)` draws `mc_num / batch_size` mini-batches; in each, k ~ U{1..T} and row i masks
exactly x_i = ((round(k + i·T/b) − 1) mod T) + 1 answer positions (stratified over [1, T]), chosen uniformly; the
prompt is never masked. Row loss = Σ_masked CE / (x_i / T); the estimate is −mean over mini-batches of the
row-mean. All mini-batches run in one jitted `lax.scan`. Sequences are right-padded to a length bucket with the
padding masked as keys, which leaves every real position's logits unchanged, so one compilation serves many
lengths.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from llada_jax import loss as loss_lib
from llada_jax import model as model_lib
from llada_jax import sampler
from llada_jax.config import ModelConfig
from llada_jax.errors import UserError

BUCKET = 64


def stratified_counts(rng: jax.Array, batch: int, answer_length: jax.Array) -> jax.Array:
  """[batch] mask counts in [1, T], evenly spread from a random start, as the official `forward_process`."""
  answer_length = jnp.asarray(answer_length)
  t = answer_length.astype(jnp.float32)
  k = jax.random.randint(rng, (), 1, answer_length + 1).astype(jnp.float32)
  x = jnp.round(jnp.linspace(k, k + (batch - 1) * (t / batch), batch)).astype(jnp.int32)
  return (x - 1) % answer_length + 1


def draw_masks(rng: jax.Array, batch: int, length: int, prompt_length: jax.Array,
               answer_length: jax.Array) -> jax.Array:
  """[batch, length] bool: row i masks stratified_counts[i] answer positions chosen uniformly at random."""
  count_rng, perm_rng = jax.random.split(rng)
  counts = stratified_counts(count_rng, batch, answer_length)
  position = jnp.arange(length)[None, :]
  answer = (position >= prompt_length) & (position < prompt_length + answer_length)
  scores = jnp.where(answer, jax.random.uniform(perm_rng, (batch, length)), 2.0)  # non-answer positions rank last
  rank = jnp.argsort(jnp.argsort(scores, axis=-1), axis=-1)
  return rank < counts[:, None]


def minibatch_loss(params, seq, masks, prompt_length, answer_length, *, config: ModelConfig, cfg_scale: float,
                   mask_id: int) -> jax.Array:
  """Σ_rows Σ_masked CE / (x_i / T) / b for one mini-batch of masks [b, L] over the padded sequence seq [L]."""
  batch, length = masks.shape
  position = jnp.arange(length)
  valid = position < prompt_length + answer_length
  x = jnp.where(masks, mask_id, seq[None, :])
  logits = sampler.guided_logits(params, x, jnp.broadcast_to(valid, x.shape), position < prompt_length,
                                 config=config, cfg_scale=cfg_scale, mask_id=mask_id)
  ce = loss_lib.token_ce(logits, jnp.broadcast_to(seq, x.shape))
  p = jnp.sum(masks, axis=1) / answer_length
  scored = (x == mask_id) & valid  # as officially: every mask token counts, also one already in the text
  return jnp.sum(jnp.where(scored, ce / p[:, None], 0.0)) / batch


@functools.partial(jax.jit, static_argnames=("config", "num_batches", "batch_size", "cfg_scale", "mask_id"))
def _estimate(params, seq, prompt_length, answer_length, rng, *, config, num_batches, batch_size, cfg_scale,
              mask_id):
  def one(_, key):
    masks = draw_masks(key, batch_size, seq.shape[0], prompt_length, answer_length)
    return None, minibatch_loss(params, seq, masks, prompt_length, answer_length, config=config,
                                cfg_scale=cfg_scale, mask_id=mask_id)
  _, losses = jax.lax.scan(one, None, jax.random.split(rng, num_batches))
  return -jnp.mean(losses)


def pad_to_bucket(ids: np.ndarray, pad_id: int, bucket: int = BUCKET) -> np.ndarray:
  length = -(-len(ids) // bucket) * bucket
  return np.concatenate([ids, np.full(length - len(ids), pad_id, ids.dtype)])


def log_likelihood(params, prompt, answer, *, config: ModelConfig, mc_num: int = 128, batch_size: int = 16,
                   cfg_scale: float = 0.0, mask_id: int | None = None, rng: jax.Array | None = None) -> float:
  """Monte-Carlo estimate of log p(answer | prompt) (nats), the official estimator. mc_num=1 suffices for
  single-token answers (MMLU-style)."""
  prompt, answer = np.asarray(prompt, np.int32).reshape(-1), np.asarray(answer, np.int32).reshape(-1)
  mask_id = config.mask_token_id if mask_id is None else int(mask_id)
  batch_size = min(batch_size, mc_num)
  if len(answer) == 0:
    raise UserError("the answer is empty: there is nothing to score")
  if mc_num % batch_size:
    raise UserError(f"mc_num={mc_num} must be a multiple of batch_size={batch_size}")
  if len(prompt) + len(answer) > config.max_sequence_length:
    raise UserError(f"prompt + answer ({len(prompt) + len(answer)} tokens) exceed the model's max_sequence_length "
                    f"{config.max_sequence_length}")
  if not 0 <= mask_id < config.embedding_size:
    raise UserError(f"mask id {mask_id} is outside the vocabulary (size {config.embedding_size})")
  seq = pad_to_bucket(np.concatenate([prompt, answer]), config.pad_token_id)
  rng = jax.random.key(0) if rng is None else rng
  return float(_estimate(params, jnp.asarray(seq), len(prompt), len(answer), rng, config=config,
                         num_batches=mc_num // batch_size, batch_size=batch_size, cfg_scale=float(cfg_scale),
                         mask_id=mask_id))


@functools.partial(jax.jit, static_argnames=("config", "eps"))
def _window_bound(params, tokens, rng, *, config: ModelConfig, eps: float):
  noised = loss_lib.noise(rng, tokens, mask_id=config.mask_token_id, eps=eps)
  logits = model_lib.apply(params, noised.inputs, config=config)
  return loss_lib.diffusion_loss(loss_lib.token_ce(logits, tokens), noised)


def elbo_bound(params, windows: np.ndarray, *, config: ModelConfig, samples: int = 8, batch_size: int = 8,
               rng: jax.Array | None = None, eps: float = 1e-3, progress=None) -> float:
  """The diffusion loss (an upper bound on NLL, nats/token) averaged over windows [n, L] and `samples` draws.
  exp() of it bounds the perplexity."""
  rng = jax.random.key(0) if rng is None else rng
  values = []
  for start in range(0, len(windows), batch_size):
    chunk = jnp.asarray(windows[start:start + batch_size])
    for s in range(samples):
      values.append((float(_window_bound(params, chunk, jax.random.fold_in(rng, start * samples + s),
                                         config=config, eps=eps)), len(chunk)))
    if progress:
      progress(len(chunk))
  total = sum(n for _, n in values)
  return sum(v * n for v, n in values) / total
