"""Masking and the training objectives (docs/design.md §4), as pure functions of (logits or tokens, rng).

Pre-training: t ~ U(0,1) per row, p = (1 - eps) t + eps, every token masked independently with probability p; the
loss is Σ_masked CE / p over b·l. It upper-bounds the per-token NLL, so exp(loss) bounds the perplexity.
`noise_paired_counts` draws the same bound in its exact-count form (the official likelihood's form, docs/design.md §6):
lower variance, and a fixed number of masked tokens per batch, so the output head runs only where the loss looks.
SFT: the same noise, but the prompt is restored, and each row is normalised by its answer length (EOS padding
counts as answer). The autoregressive baseline uses the ordinary next-token loss with a causal model.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from llada_jax import sharding


class Noised(NamedTuple):
  """A corrupted batch and what the loss needs to score it."""
  inputs: jax.Array  # [b, l] tokens with masked positions set to mask_id
  masked: jax.Array  # [b, l] bool, positions the loss scores
  p: jax.Array  # [b] masking probability of each row
  key_mask: jax.Array  # [b, l] bool, positions that exist (False beyond a random-length cut)
  length: jax.Array  # scalar, the (possibly cut) sequence length used for normalisation


def sample_t(rng: jax.Array, batch: int, antithetic: bool) -> jax.Array:
  """t ~ U(0,1) per row; antithetic draws one offset and spreads the batch evenly (lower-variance loss)."""
  if antithetic:
    return jnp.mod(jax.random.uniform(rng, ()) + jnp.arange(batch) / batch, 1.0)
  return jax.random.uniform(rng, (batch,))


def _random_length_cut(cut_rng: jax.Array, len_rng: jax.Array, b: int, l: int, probability: float):
  """(length, key_mask [b, l]): with `probability` the whole batch is cut to a length uniform in [1, l] (static
  shapes: positions beyond it are masked out of attention and loss), else length l."""
  cut = jax.random.uniform(cut_rng, ()) < probability
  length = jnp.where(cut, jax.random.randint(len_rng, (), 1, l + 1), l)
  return length, jnp.broadcast_to(jnp.arange(l)[None, :] < length, (b, l))


def noise(rng: jax.Array, tokens: jax.Array, *, mask_id: int, eps: float, random_length_prob: float = 0.0,
          antithetic: bool = False) -> Noised:
  """Pre-training corruption. A random-length cut (prob `random_length_prob`) keeps shapes static with a mask."""
  b, l = tokens.shape
  t_rng, mask_rng, cut_rng, len_rng = jax.random.split(rng, 4)
  p = (1.0 - eps) * sample_t(t_rng, b, antithetic) + eps
  masked = jax.random.uniform(mask_rng, (b, l)) < p[:, None]
  length, key_mask = _random_length_cut(cut_rng, len_rng, b, l, random_length_prob)
  masked = masked & key_mask
  return Noised(jnp.where(masked, mask_id, tokens), masked, p, key_mask, length)


def noise_paired_counts(rng: jax.Array, tokens: jax.Array, *, mask_id: int, random_length_prob: float = 0.0,
                        antithetic: bool = False) -> Noised:
  """Pre-training corruption with exact counts: rows 2j and 2j+1 mask exactly k and n + 1 - k tokens (k ~ U{1..n},
  n the possibly cut length) at uniformly random positions, with p = count / n.

  The same bound as `noise` in expectation: given its count a Bernoulli mask is a uniform set of that size, and
  ∫ P(count = k | t) / t dt = 1/k makes the 1/t-weighted sum the mean over k of the count-k term. But each row's
  term is now the mean CE of its masked tokens — no draw where one token masked at t ≈ 0 is weighted 1/t — and a
  pair masks n + 1 ≤ l + 1 tokens, which is what lets `masked_token_ce` run the head on half the positions.
  The batch must have an even number of rows. Counts start at 1, so this is the eps → 0 form of `noise`'s bound
  (validation's Bernoulli masks with eps = 1e-3 differ from it by about that much).
  """
  b, l = tokens.shape
  count_rng, order_rng, cut_rng, len_rng = jax.random.split(rng, 4)
  length, key_mask = _random_length_cut(cut_rng, len_rng, b, l, random_length_prob)
  k = jnp.clip(jnp.floor(sample_t(count_rng, b // 2, antithetic) * length).astype(jnp.int32) + 1, 1, length)
  counts = jnp.stack([k, length + 1 - k], axis=1).reshape(b)
  # Positions beyond the cut rank last, so at most `length` (≥ every count) positions are candidates.
  scores = jnp.where(key_mask, jax.random.uniform(order_rng, (b, l)), 2.0)
  rank = jnp.argsort(jnp.argsort(scores, axis=1), axis=1)
  masked = rank < counts[:, None]
  return Noised(jnp.where(masked, mask_id, tokens), masked, counts / length, key_mask, length)


def noise_sft(rng: jax.Array, tokens: jax.Array, prompt_length: jax.Array, *, mask_id: int, eps: float,
              antithetic: bool = False) -> Noised:
  """SFT corruption: noise everything, then restore the prompt (it is never masked)."""
  b, l = tokens.shape
  t_rng, mask_rng = jax.random.split(rng)
  p = (1.0 - eps) * sample_t(t_rng, b, antithetic) + eps
  answer = jnp.arange(l)[None, :] >= prompt_length[:, None]
  masked = (jax.random.uniform(mask_rng, (b, l)) < p[:, None]) & answer
  return Noised(jnp.where(masked, mask_id, tokens), masked, p, jnp.ones((b, l), bool), jnp.asarray(l))


@jax.custom_vjp
def token_ce(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Cross-entropy per position in fp32. logits: [b, l, vocab]; targets: [b, l] → [b, l].

  A custom VJP: the backward pass keeps the logits in their own dtype and the log-partition, and forms
  softmax - onehot in one elementwise pass. Autodiff of logsumexp instead saves exp(logits - max) in fp32, the
  largest activation of a training step ([tokens, vocab]), and materialises the target selection: measured on the
  tiny config, 134 MB less temporary memory per step and ~5% faster.
  """
  return _token_ce_forward(logits, targets)[0]


def _token_ce_forward(logits, targets):
  logits32 = logits.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits32, axis=-1)
  # One logit per position. With the vocab sharded, XLA partitions this gather without gathering the logits
  # (checked in the HLO of the fsdp×tensor train step: the same collectives as a select-and-sum).
  target_logit = jnp.take_along_axis(logits32, targets[..., None], axis=-1)[..., 0]
  return log_z - target_logit, (logits, targets, log_z)


def _token_ce_backward(residuals, d_ce):
  logits, targets, log_z = residuals
  is_target = jnp.arange(logits.shape[-1]) == targets[..., None]
  d_logits = (jnp.exp(logits.astype(jnp.float32) - log_z[..., None]) - is_target) * d_ce[..., None]
  return d_logits.astype(logits.dtype), None


token_ce.defvjp(_token_ce_forward, _token_ce_backward)


def chunked_token_ce(hidden: jax.Array, head: Callable[[jax.Array], jax.Array], targets: jax.Array,
                     chunk_length: int) -> jax.Array:
  """`token_ce(head(hidden), targets)` without ever holding the logits of the whole batch.

  hidden: [b, l, d]; head maps [b, c, d] → logits [b, c, vocab]. The positions are cut into chunks of
  `chunk_length` (0 or ≥ l: one chunk, no loop); a scan computes each chunk's logits and CE, and the backward pass
  recomputes them chunk by chunk, so only one chunk's logits ([b·c, vocab]) exist at any time. Chunks run along
  the length, not the batch, so every chunk is spread over all devices of the batch axes. The head's weights are
  closed over in their parameter dtype, so their gradient accumulates over chunks in that dtype.
  """
  b, l, d = hidden.shape
  if chunk_length <= 0 or chunk_length >= l:
    return token_ce(head(hidden), targets)
  if l % chunk_length:
    raise ValueError(f"chunk_length={chunk_length} does not divide the sequence length {l}")
  n = l // chunk_length
  chunks = (hidden.reshape(b, n, chunk_length, d).swapaxes(0, 1), targets.reshape(b, n, chunk_length).swapaxes(0, 1))

  @jax.checkpoint
  def one_chunk(carry, chunk):
    h, t = chunk
    return carry, token_ce(head(h), t)

  _, ce = jax.lax.scan(one_chunk, None, chunks)
  return ce.swapaxes(0, 1).reshape(b, l)


def paired_capacity(length: int, chunk_length: int) -> int:
  """Positions per pair of rows that `masked_token_ce` runs the head on: l + 1, rounded up to whole chunks (a chunk
  of l or more is one chunk)."""
  if chunk_length <= 0 or chunk_length >= length:
    return length + 1
  return -(-(length + 1) // chunk_length) * chunk_length


def masked_token_ce(hidden: jax.Array, head: Callable[[jax.Array], jax.Array], targets: jax.Array,
                    masked: jax.Array, chunk_length: int) -> jax.Array:
  """`chunked_token_ce` at the masked positions only (0 elsewhere), for masks of `noise_paired_counts`.

  Each pair of rows masks at most l + 1 positions: they are gathered (masked first, the rest padding that scores 0),
  the head and CE run on `paired_capacity` positions per pair instead of 2l, and the CE is scattered back, so
  `diffusion_loss` reads it like the full one. Pairs are adjacent rows: when each device holds whole pairs (an even
  number of rows) the gather stays on the device; otherwise the pairs' hidden states are gathered onto every device.
  """
  b, l, d = hidden.shape
  chunk_length = chunk_length if 0 < chunk_length < l else 0
  capacity = paired_capacity(l, chunk_length)
  rows = ("activation_batch", "activation_length")
  pair_masked = sharding.constrain(masked.reshape(b // 2, 2 * l), rows)
  index = jnp.argsort(~pair_masked, axis=1, stable=True)[:, :capacity]
  h = jnp.take_along_axis(sharding.constrain(hidden.reshape(b // 2, 2 * l, d), (*rows, "activation_embed")),
                          index[..., None], axis=1)
  h = sharding.constrain(h, (*rows, "activation_embed"))
  ce = chunked_token_ce(h, head, jnp.take_along_axis(targets.reshape(b // 2, 2 * l), index, axis=1), chunk_length)
  ce = jnp.where(jnp.take_along_axis(pair_masked, index, axis=1), ce, 0.0)
  scattered = jnp.zeros((b // 2, 2 * l), ce.dtype).at[jnp.arange(b // 2)[:, None], index]
  return scattered.set(ce, unique_indices=True).reshape(b, l)


def diffusion_loss(ce: jax.Array, noised: Noised) -> jax.Array:
  """Σ_masked CE / p, normalised by b · (cut) length. ce: [b, l] cross-entropy of every position."""
  weighted = ce / noised.p[:, None]
  return jnp.sum(jnp.where(noised.masked, weighted, 0.0)) / (ce.shape[0] * noised.length)


def sft_loss(ce: jax.Array, noised: Noised, prompt_length: jax.Array) -> jax.Array:
  """Per row Σ_masked CE / p / answer length (EOS padding included), averaged over rows."""
  weighted = jnp.where(noised.masked, ce / noised.p[:, None], 0.0)
  answer_length = jnp.maximum(ce.shape[1] - prompt_length, 1)
  return jnp.mean(jnp.sum(weighted, axis=1) / answer_length)


def next_tokens(tokens: jax.Array) -> jax.Array:
  """The autoregressive targets: position i predicts token i + 1 (the last position's target is unused)."""
  return jnp.roll(tokens, -1, axis=1)


def autoregressive_loss(ce: jax.Array) -> jax.Array:
  """Mean next-token CE of a causal model; ce: [b, l] against `next_tokens`, the last position ignored."""
  return jnp.mean(ce[:, :-1])
