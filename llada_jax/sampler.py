"""The reverse (unmasking) sampler with the official `generate` semantics (LLADA_SPEC §5), in one jitted program.

The canvas starts as `[prompt, MASK × gen_length]`; blocks are filled left to right (semi-autoregressive when
block_length < gen_length), each in `steps / num_blocks` steps, committing the most confident predictions and
never re-masking. The block and step loops are `lax.scan`s: no host round trip per step. One compilation per
(batch, prompt length, gen_length, block_length, steps, options). `return_history=True` also returns the canvas
after every step (for `llada-jax generate --show-denoising`).

Randomness: step i (counted over all blocks) draws from `fold_in(rng, i)`, split into the Gumbel key and the
`random`-remasking key; draws cover the positions whose logits are computed (the current block, or the whole
canvas when the prompt holds mask tokens). Temperature sampling uses the Gumbel-max trick as
`argmax(l/T − log(−log u))`, which selects exactly what the official float64 `argmax(exp(l) / (−log u)^T)` does for
the same u, without overflow, so float32 suffices.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from llada_jax import model as model_lib
from llada_jax.config import ModelConfig
from llada_jax.errors import UserError

REMASKING = ("low_confidence", "random")


class GenerateOutput(NamedTuple):
  tokens: jax.Array  # [batch, prompt_length + gen_length], the prompt included
  nfe: int  # model calls (a CFG call on the doubled batch counts once)
  history: jax.Array | None = None  # [steps, batch, length]: the canvas after each step, when asked for


def transfer_schedule(num_masked: jax.Array, steps: int) -> jax.Array:
  """Tokens to commit at each step of a block: base = n // steps, the first n % steps steps get one more.
  num_masked: [batch] → [batch, steps]."""
  base = num_masked // steps
  extra = num_masked % steps
  return base[:, None] + (jnp.arange(steps)[None, :] < extra[:, None]).astype(num_masked.dtype)


def step_keys(rng: jax.Array, step: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(Gumbel key, random-remasking key) of global step `step`."""
  gumbel_key, remask_key = jax.random.split(jax.random.fold_in(rng, step))
  return gumbel_key, remask_key


def _commit_top_k(confidence: jax.Array, k: jax.Array) -> jax.Array:
  """[batch, length] bool: the k[b] most confident positions of each row (ties: lowest index first)."""
  order = jnp.argsort(-confidence, axis=-1, stable=True)
  rank = jnp.argsort(order, axis=-1, stable=True)
  return rank < k[:, None]


def guided_logits(params, x, attention_mask, prompt_index, *, config: ModelConfig, cfg_scale: float, mask_id: int,
                  logits_window=None) -> jax.Array:
  """fp32 logits, with classifier-free guidance when cfg_scale > 0: the unconditional copy has every prompt
  position set to mask_id, and the result is `un + (cfg_scale + 1)(cond − un)` (one call on the doubled batch).
  Shared by the sampler and the likelihood estimator; works with or without an attention mask."""
  apply = functools.partial(model_lib.apply, params, config=config, logits_window=logits_window)
  if cfg_scale <= 0:
    return apply(x, attention_mask).astype(jnp.float32)
  unconditional = jnp.where(prompt_index, mask_id, x)
  mask = None if attention_mask is None else jnp.concatenate([attention_mask, attention_mask])
  both = apply(jnp.concatenate([x, unconditional]), mask).astype(jnp.float32)
  cond, uncond = both[:x.shape[0]], both[x.shape[0]:]
  return uncond + (cfg_scale + 1.0) * (cond - uncond)


@functools.partial(jax.jit, static_argnames=("config", "steps", "gen_length", "block_length", "temperature",
                                             "cfg_scale", "remasking", "mask_id", "logits_eos_inf",
                                             "confidence_eos_eot_inf", "eos_id", "eot_id", "return_history",
                                             "window"))
def _generate(params, prompt, attention_mask, rng, *, config: ModelConfig, steps: int, gen_length: int,
              block_length: int, temperature: float, cfg_scale: float, remasking: str, mask_id: int,
              logits_eos_inf: bool, confidence_eos_eot_inf: bool, eos_id: int, eot_id: int,
              return_history: bool, window: bool) -> tuple[jax.Array, jax.Array | None]:
  batch, prompt_length = prompt.shape
  total = prompt_length + gen_length
  num_blocks = gen_length // block_length
  steps_per_block = steps // num_blocks
  x = jnp.concatenate([prompt, jnp.full((batch, gen_length), mask_id, prompt.dtype)], axis=1)
  if attention_mask is not None:
    attention_mask = jnp.concatenate([attention_mask, jnp.ones((batch, gen_length), attention_mask.dtype)], axis=1)
  prompt_index = x != mask_id
  positions = jnp.arange(total)[None, :]

  # Only the current block's logits are needed: positions after it are never committed and earlier ones hold no
  # masks, unless the prompt itself contains mask tokens (the official code may fill those): then use the whole
  # canvas. `window` is static, so this is decided on the host.
  window_start = (lambda block: prompt_length + block * block_length) if window else (lambda block: 0)
  window_size = block_length if window else total

  def step(block, i, x, schedule):
    logits = guided_logits(params, x, attention_mask, prompt_index, config=config, cfg_scale=cfg_scale,
                           mask_id=mask_id, logits_window=(window_start(block), window_size))
    if logits_eos_inf:
      logits = logits.at[..., eos_id].set(-jnp.inf)
    gumbel_key, remask_key = step_keys(rng, block * steps_per_block + i)
    if temperature > 0:
      u = jax.random.uniform(gumbel_key, logits.shape, minval=jnp.finfo(jnp.float32).tiny)
      x0 = jnp.argmax(logits / temperature - jnp.log(-jnp.log(u)), axis=-1)
    else:
      x0 = jnp.argmax(logits, axis=-1)
    if remasking == "low_confidence":
      if confidence_eos_eot_inf:
        # The official chained assignment: EoT always, EOS only when the noisy logits alias the logits (T = 0).
        logits = logits.at[..., eot_id].set(-jnp.inf)
        if temperature == 0:
          logits = logits.at[..., eos_id].set(-jnp.inf)
      probs = jax.nn.softmax(logits, axis=-1)
      confidence = jnp.take_along_axis(probs, x0[..., None], axis=-1)[..., 0]
    else:
      confidence = jax.random.uniform(remask_key, x0.shape)
    current = jax.lax.dynamic_slice_in_dim(x, window_start(block), window_size, axis=1)
    masked = current == mask_id
    block_end = prompt_length + (block + 1) * block_length
    in_reach = jax.lax.dynamic_slice_in_dim(positions, window_start(block), window_size, axis=1) < block_end
    confidence = jnp.where(masked & in_reach, confidence, -jnp.inf)
    x0 = jnp.where(masked, x0.astype(x.dtype), current)
    commit = _commit_top_k(confidence, schedule[:, i])
    return jax.lax.dynamic_update_slice_in_dim(x, jnp.where(commit, x0, current), window_start(block), axis=1)

  def run_block(x, block):
    start = prompt_length + block * block_length
    in_block = (positions >= start) & (positions < start + block_length)
    schedule = transfer_schedule(jnp.sum((x == mask_id) & in_block, axis=1), steps_per_block)

    def one_step(x, i):
      x = step(block, i, x, schedule)
      return x, (x if return_history else None)
    return jax.lax.scan(one_step, x, jnp.arange(steps_per_block))

  x, history = jax.lax.scan(run_block, x, jnp.arange(num_blocks))
  return x, (history.reshape(steps, batch, total) if return_history else None)


def generate(params, prompt, attention_mask=None, *, config: ModelConfig, steps: int = 128, gen_length: int = 128,
             block_length: int = 128, temperature: float = 0.0, cfg_scale: float = 0.0,
             remasking: str = "low_confidence", mask_id: int | None = None, logits_eos_inf: bool = False,
             confidence_eos_eot_inf: bool = False, rng: jax.Array | None = None,
             return_history: bool = False) -> GenerateOutput:
  """Samples `gen_length` tokens after each (left-padded) prompt row; the official `generate` (LLADA_SPEC §5).

  `confidence_eos_eot_inf` reproduces the official behaviour exactly, quirk included (the published evaluation
  numbers were produced with it): at temperature 0 the EOS and EoT columns are −inf in the logits used for the
  confidence, so a position predicting EOS/EoT gets confidence 0 (ranked last, still committable); at
  temperature > 0 only EoT is affected. `cfg_scale > 0` works with or without an attention mask.
  """
  prompt = np.asarray(prompt)
  if prompt.ndim == 1:
    prompt = prompt[None]
  mask_id = config.mask_token_id if mask_id is None else int(mask_id)
  check_generate_args(config, prompt.shape[1], steps=steps, gen_length=gen_length, block_length=block_length,
                      temperature=temperature, cfg_scale=cfg_scale, remasking=remasking, mask_id=mask_id)
  if attention_mask is not None:
    attention_mask = np.asarray(attention_mask)
    attention_mask = attention_mask[None] if attention_mask.ndim == 1 else attention_mask
    if attention_mask.shape != prompt.shape:
      raise UserError(f"attention_mask shape {attention_mask.shape} differs from the prompt's {prompt.shape}")
    attention_mask = jnp.asarray(attention_mask, jnp.int32)
  rng = jax.random.key(0) if rng is None else rng
  tokens, history = _generate(
      params, jnp.asarray(prompt, jnp.int32), attention_mask, rng, config=config, steps=steps, gen_length=gen_length,
      block_length=block_length, temperature=float(temperature), cfg_scale=float(cfg_scale), remasking=remasking,
      mask_id=mask_id, logits_eos_inf=logits_eos_inf, confidence_eos_eot_inf=confidence_eos_eot_inf,
      eos_id=config.eos_token_id, eot_id=config.eot_token_id, return_history=return_history,
      window=not bool(np.any(prompt == mask_id)))
  return GenerateOutput(tokens, steps, history)


def check_generate_args(config: ModelConfig, prompt_length: int, *, steps: int, gen_length: int, block_length: int,
                        temperature: float, cfg_scale: float, remasking: str, mask_id: int) -> None:
  """Every user-fixable problem with one clear message, before anything compiles."""
  if gen_length <= 0 or block_length <= 0 or steps <= 0:
    raise UserError("gen_length, block_length and steps must be positive")
  if gen_length % block_length:
    raise UserError(f"gen_length={gen_length} is not a multiple of block_length={block_length}; make it one "
                    "(block_length = gen_length disables semi-autoregressive blocks)")
  num_blocks = gen_length // block_length
  if steps % num_blocks:
    raise UserError(f"steps={steps} is not a multiple of the number of blocks ({num_blocks} = gen_length / "
                    f"block_length); use e.g. steps={num_blocks * max(1, steps // num_blocks)}")
  if prompt_length + gen_length > config.max_sequence_length:
    raise UserError(f"prompt ({prompt_length} tokens) + gen_length ({gen_length}) exceeds the model's "
                    f"max_sequence_length {config.max_sequence_length}; shorten the prompt or gen_length")
  if not 0 <= mask_id < config.embedding_size:
    raise UserError(f"mask id {mask_id} is outside the vocabulary (size {config.embedding_size})")
  if remasking not in REMASKING:
    raise UserError(f"remasking={remasking!r} is not one of {', '.join(REMASKING)}")
  if temperature < 0 or cfg_scale < 0:
    raise UserError("temperature and cfg_scale must be non-negative")
