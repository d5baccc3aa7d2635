"""Log-likelihood estimates: the official Monte-Carlo estimator (docs/design.md §6) and the ELBO bound over text.

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


BUCKET = 64  # sequences are padded to a multiple of this: one compilation serves many lengths
WINDOW = 16  # answers are scored over a multiple of this many positions


def round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def stratified_counts(rng: jax.Array, batch: int, answer_length: jax.Array) -> jax.Array:
  """[batch] mask counts in [1, T], evenly spread from a random start k ~ U{1..T}, as the official
  `forward_process`."""
  answer_length = jnp.asarray(answer_length, jnp.int32)
  return spread_counts(jax.random.randint(rng, (), 1, answer_length + 1), batch, answer_length)


def spread_counts(k: jax.Array, batch: int, answer_length: jax.Array) -> jax.Array:
  """((round(k + i·T/b) − 1) mod T) + 1 for i < b, rounding half to even, in exact integer arithmetic.

  The official `torch.round(torch.linspace(k, k + (b−1)·T/b, b))` gives exactly these values (checked for b ≤ 128,
  T ≤ 4096), while a float32 `jnp.linspace` lands an ulp off many of the .5 ties (a quarter of all (k, T) at
  b = 16) and differently again when sharded, which would change the masks with the mesh."""
  n = k * batch + jnp.arange(batch, dtype=jnp.int32) * answer_length  # b · (k + i·T/b)
  q, r = n // batch, n % batch
  x = q + ((2 * r > batch) | ((2 * r == batch) & (q % 2 == 1))).astype(jnp.int32)
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


def minibatch_losses(params, seqs, masks, prompt_lengths, answer_lengths, *, config: ModelConfig,
                     cfg_scale: float, mask_id: int, window: int | None = None) -> jax.Array:
  """[pairs] Σ_rows Σ_masked CE / (x_i / T) / b: one mini-batch of masks [pairs, b, L] for each of `pairs` padded
  sequences seqs [pairs, L], all in one model call of pairs·b rows (twice that with guidance).

  `window` (static, ≥ every T): the output head and the cross-entropy run only over `window` positions covering
  each answer, which hold every mask token unless a prompt itself contains one; None scores all L positions.
  """
  pairs, batch, length = masks.shape
  position = jnp.arange(length)[None, :]
  valid = position < (prompt_lengths + answer_lengths)[:, None]  # [pairs, L]
  x = jnp.where(masks, mask_id, seqs[:, None, :])
  window = length if window is None else window
  scored_at = jnp.clip(prompt_lengths, 0, length - window)[:, None] + jnp.arange(window)  # [pairs, window]
  per_row = lambda a: jnp.broadcast_to(a[:, None], (pairs, batch, *a.shape[1:])).reshape(pairs * batch, *a.shape[1:])

  def run(tokens, key_mask):
    hidden = model_lib.features(params, tokens, key_mask, config=config)
    at = jnp.tile(per_row(scored_at), (tokens.shape[0] // (pairs * batch), 1))  # guidance doubles the rows
    return model_lib.head(params, jnp.take_along_axis(hidden, at[..., None], axis=1), config=config), None

  logits, _ = sampler.with_guidance(run, x.reshape(pairs * batch, length), per_row(valid),
                                    per_row(position < prompt_lengths[:, None]), cfg_scale=cfg_scale,
                                    mask_id=mask_id)
  cut = lambda a: jnp.take_along_axis(a, per_row(scored_at), axis=1)
  ce = loss_lib.token_ce(logits.astype(jnp.float32), cut(per_row(seqs)))
  p = (jnp.sum(masks, axis=2) / answer_lengths[:, None]).reshape(pairs * batch)
  # As officially, every mask token counts, also one already in the text.
  scored = (cut(x.reshape(pairs * batch, length)) == mask_id) & cut(per_row(valid))
  return jnp.sum(jnp.where(scored, ce / p[:, None], 0.0).reshape(pairs, -1), axis=1) / batch


def minibatch_loss(params, seq, masks, prompt_length, answer_length, *, config: ModelConfig, cfg_scale: float,
                   mask_id: int, window: int | None = None) -> jax.Array:
  """`minibatch_losses` of one sequence seq [L] with masks [b, L]."""
  return minibatch_losses(params, seq[None], masks[None], jnp.asarray(prompt_length)[None],
                          jnp.asarray(answer_length)[None], config=config, cfg_scale=cfg_scale, mask_id=mask_id,
                          window=window)[0]


@functools.partial(jax.jit, static_argnames=("config", "num_batches", "batch_size", "cfg_scale", "mask_id",
                                             "window"))
def _estimate_many(params, seqs, prompt_lengths, answer_lengths, rngs, *, config, num_batches, batch_size,
                   cfg_scale, mask_id, window):
  """The estimate of each of a group's pairs: a `lax.scan` over mini-batches, each one model call holding every
  pair's masked copies. Pair i's masks come from its own key, so its value does not depend on its companions."""
  length = seqs.shape[1]
  keys = jax.vmap(lambda key: jax.random.split(key, num_batches))(rngs)  # [pairs, num_batches]
  draw = jax.vmap(lambda key, lp, la: draw_masks(key, batch_size, length, lp, la))

  def one(_, minibatch_keys):
    masks = draw(minibatch_keys, prompt_lengths, answer_lengths)
    return None, minibatch_losses(params, seqs, masks, prompt_lengths, answer_lengths, config=config,
                                  cfg_scale=cfg_scale, mask_id=mask_id, window=window)

  _, losses = jax.lax.scan(one, None, jnp.swapaxes(keys, 0, 1))
  return -jnp.mean(losses, axis=0)


def pad_to_bucket(ids: np.ndarray, pad_id: int) -> np.ndarray:
  length = round_up(len(ids), BUCKET)
  return np.concatenate([ids, np.full(length - len(ids), pad_id, ids.dtype)])


def log_likelihood(params, prompt, answer, *, config: ModelConfig, mc_num: int = 128, batch_size: int = 16,
                   cfg_scale: float = 0.0, mask_id: int | None = None, rng: jax.Array | None = None) -> float:
  """Monte-Carlo estimate of log p(answer | prompt) (nats), the official estimator. mc_num=1 suffices for
  single-token answers (MMLU-style)."""
  rng = jax.random.key(0) if rng is None else rng
  return float(log_likelihoods(params, [(prompt, answer)], config=config, mc_num=mc_num, batch_size=batch_size,
                               cfg_scale=cfg_scale, mask_id=mask_id, rngs=[rng], pairs_per_call=1)[0])


def log_likelihoods(params, pairs, *, config: ModelConfig, rngs, mc_num: int = 128, batch_size: int = 16,
                    cfg_scale: float = 0.0, mask_id: int | None = None, pairs_per_call: int = 4,
                    progress=None) -> np.ndarray:
  """`log_likelihood` of many (prompt, answer) pairs, pair i drawing its masks from rngs[i], so each value
  equals the pair's own `log_likelihood` with that key (up to float rounding of the larger matmuls).

  Pairs whose padded lengths share a bucket run up to `pairs_per_call` at a time in one jitted call (batch_size ×
  pairs_per_call rows per model call): the choices of a multiple-choice question, or several questions. A short
  last call of a bucket is filled with copies up to a power of two, so a bucket compiles only a few shapes."""
  mask_id = config.mask_token_id if mask_id is None else int(mask_id)
  batch_size = min(batch_size, mc_num)
  if mc_num % batch_size:
    raise UserError(f"mc_num={mc_num} must be a multiple of batch_size={batch_size}")
  if pairs_per_call < 1:
    raise UserError(f"pairs_per_call={pairs_per_call} must be at least 1")
  if not 0 <= mask_id < config.embedding_size:
    raise UserError(f"mask id {mask_id} is outside the vocabulary (size {config.embedding_size})")
  rngs = list(rngs)
  if len(rngs) != len(pairs):
    raise ValueError(f"{len(pairs)} pairs but {len(rngs)} keys")
  encoded = []
  for prompt, answer in pairs:
    prompt, answer = np.asarray(prompt, np.int32).reshape(-1), np.asarray(answer, np.int32).reshape(-1)
    if len(answer) == 0:
      raise UserError("the answer is empty: there is nothing to score")
    if len(prompt) + len(answer) > config.max_sequence_length:
      raise UserError(f"prompt + answer ({len(prompt) + len(answer)} tokens) exceed the model's "
                      f"max_sequence_length {config.max_sequence_length}")
    seq = pad_to_bucket(np.concatenate([prompt, answer]), config.pad_token_id)
    # A mask token inside the prompt is scored too (officially), so such a pair scores every position.
    window = len(seq) if np.any(prompt == mask_id) else min(len(seq), round_up(len(answer), WINDOW))
    encoded.append((seq, len(prompt), len(answer), window))
  groups: dict[int, list[int]] = {}
  for i, (seq, _, _, _) in enumerate(encoded):
    groups.setdefault(len(seq), []).append(i)
  values = np.zeros(len(pairs), np.float64)
  run_config = config.for_inference()
  for length, indices in groups.items():
    indices.sort(key=lambda i: encoded[i][3])  # neighbours need similar scoring windows
    for first in range(0, len(indices), pairs_per_call):
      chunk = indices[first:first + pairs_per_call]
      size = min(pairs_per_call, 1 << (len(chunk) - 1).bit_length())  # few shapes, under half of them filler
      rows = chunk + [chunk[0]] * (size - len(chunk))
      seqs, prompt_lengths, answer_lengths = (np.stack([encoded[i][j] for i in rows]) for j in range(3))
      out = _estimate_many(params, jnp.asarray(seqs), jnp.asarray(prompt_lengths, jnp.int32),
                           jnp.asarray(answer_lengths, jnp.int32), jnp.stack([rngs[i] for i in rows]),
                           config=run_config, num_batches=mc_num // batch_size, batch_size=batch_size,
                           cfg_scale=float(cfg_scale), mask_id=mask_id, window=encoded[chunk[-1]][3])
      values[chunk] = np.asarray(out)[:len(chunk)]
      if progress:
        progress(len(chunk))
  return values


@functools.partial(jax.jit, static_argnames=("config", "eps"))
def _bound_sums(params, tokens, lengths, rng, *, config: ModelConfig, eps: float):
  """Per row, Σ_masked CE / p over its first lengths[i] tokens (the rest is padding, masked as keys): one draw of
  the diffusion bound on the row's NLL, in nats."""
  noised = loss_lib.noise(rng, tokens, mask_id=config.mask_token_id, eps=eps)
  valid = jnp.arange(tokens.shape[1])[None, :] < lengths[:, None]
  masked = noised.masked & valid
  logits = model_lib.apply(params, jnp.where(masked, config.mask_token_id, tokens), valid, config=config)
  ce = loss_lib.token_ce(logits, tokens)
  return jnp.sum(jnp.where(masked, ce / noised.p[:, None], 0.0), axis=1)


def nll_bounds(params, documents, *, config: ModelConfig, samples: int = 8, batch_size: int = 8,
               rng: jax.Array | None = None, eps: float = 1e-3, max_length: int | None = None,
               progress=None) -> np.ndarray:
  """Per document (a sequence of token ids): the diffusion bound on its NLL in nats, averaged over `samples`
  draws. It is an upper bound on −log p, not an estimate of it: −bound is a lower bound on the log-likelihood.
  A document longer than `max_length` (default the model's) is cut into consecutive windows, each token scored
  once with the context of its own window. Windows are padded to a length bucket, `batch_size` per call."""
  rng = jax.random.key(0) if rng is None else rng
  max_length = min(max_length or config.max_sequence_length, config.max_sequence_length)
  run_config = config.for_inference()
  windows = []  # (document index, tokens)
  for d, doc in enumerate(documents):
    doc = np.asarray(doc, np.int32).reshape(-1)
    windows += [(d, doc[i:i + max_length]) for i in range(0, len(doc), max_length)]
  groups: dict[int, list[int]] = {}
  for w, (_, tokens) in enumerate(windows):
    groups.setdefault(min(round_up(len(tokens), BUCKET), max_length), []).append(w)
  totals = np.zeros(len(documents), np.float64)
  for length, members in sorted(groups.items()):
    for first in range(0, len(members), batch_size):
      chunk = members[first:first + batch_size]
      rows = chunk + [chunk[0]] * (batch_size - len(chunk))  # one shape per bucket
      tokens = np.stack([np.pad(windows[w][1], (0, length - len(windows[w][1])),
                                constant_values=config.pad_token_id) for w in rows])
      lengths = jnp.asarray([len(windows[w][1]) for w in rows], jnp.int32)
      key = jax.random.fold_in(rng, chunk[0])
      draws = np.mean([np.asarray(_bound_sums(params, jnp.asarray(tokens), lengths, jax.random.fold_in(key, s),
                                              config=run_config, eps=eps)) for s in range(samples)], axis=0)
      for w, value in zip(chunk, draws):
        totals[windows[w][0]] += value
      if progress:
        progress(len(chunk))
  return totals
