"""The objectives against direct NumPy computations on fixed maskings, and the masking invariants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llada_jax import loss

MASK = 7


def _numpy_ce(logits, targets):
  logits = logits.astype(np.float64)
  log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  return log_z - np.take_along_axis(logits, targets[..., None], -1)[..., 0]


def _fixed(b=3, l=6, v=11, seed=0):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(b, l, v)).astype(np.float32)
  targets = rng.integers(0, v, (b, l))
  masked = rng.random((b, l)) < 0.5
  masked[0, 0] = True
  p = np.array([0.3, 0.7, 0.05])[:b]
  return logits, targets, masked, p


def test_diffusion_loss_equals_hand_computation():
  logits, targets, masked, p = _fixed()
  noised = loss.Noised(jnp.where(masked, MASK, targets), jnp.asarray(masked), jnp.asarray(p, jnp.float32),
                       jnp.ones(masked.shape, bool), jnp.asarray(6))
  got = loss.diffusion_loss(loss.token_ce(jnp.asarray(logits), jnp.asarray(targets)), noised)
  ce = _numpy_ce(logits, targets)
  want = sum(ce[i, j] / p[i] for i in range(3) for j in range(6) if masked[i, j]) / (3 * 6)
  np.testing.assert_allclose(float(got), want, rtol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_token_ce_gradient_is_softmax_minus_onehot(dtype):
  logits, targets, _, _ = _fixed()
  weights = np.random.default_rng(1).normal(size=targets.shape)
  x = jnp.asarray(logits, dtype)
  value, grad = jax.value_and_grad(lambda z: jnp.sum(loss.token_ce(z, jnp.asarray(targets)) * weights))(x)
  rounded = np.asarray(x.astype(jnp.float32))
  np.testing.assert_allclose(float(value), float(np.sum(_numpy_ce(rounded, targets) * weights)), rtol=1e-5)
  softmax = np.exp(rounded - rounded.max(-1, keepdims=True))
  softmax /= softmax.sum(-1, keepdims=True)
  want = (softmax - np.eye(logits.shape[-1])[targets]) * weights[..., None]
  assert grad.dtype == dtype
  np.testing.assert_allclose(np.asarray(grad, np.float32), want, atol=1e-6 if dtype == jnp.float32 else 2e-2)


@pytest.mark.parametrize("chunk_length,dtype", [(2, jnp.float32), (3, jnp.float32), (4, jnp.bfloat16)])
def test_chunked_head_and_ce_equal_the_whole_batch_at_once(chunk_length, dtype):
  """Values and gradients (hidden states and head weights) of the chunked head + CE equal today's unchunked ones."""
  rng = np.random.default_rng(2)
  hidden = jnp.asarray(rng.normal(size=(3, 12, 5)), dtype)
  weights = jnp.asarray(rng.normal(size=(5, 11)), jnp.float32)  # a parameter: fp32 whatever the compute dtype
  targets = jnp.asarray(rng.integers(0, 11, (3, 12)))
  scale = jnp.asarray(rng.normal(size=(3, 12)), jnp.float32)
  head = lambda w: lambda h: jnp.einsum("bld,dv->blv", h, w.astype(h.dtype))

  def total(h, w, chunk):
    return jnp.sum(loss.chunked_token_ce(h, head(w), targets, chunk) * scale)

  want, want_grads = jax.value_and_grad(total, argnums=(0, 1))(hidden, weights, 0)
  got, got_grads = jax.jit(jax.value_and_grad(total, argnums=(0, 1)), static_argnums=2)(hidden, weights,
                                                                                         chunk_length)
  tol = 1e-6 if dtype == jnp.float32 else 1e-2
  np.testing.assert_allclose(float(got), float(want), rtol=tol)
  for g, w in zip(got_grads, want_grads):
    assert g.dtype == w.dtype
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32), rtol=tol, atol=tol)


def test_random_length_cut_normalises_by_the_cut_length():
  logits, targets, masked, p = _fixed()
  cut = 4
  key_mask = np.arange(6)[None, :] < cut
  noised = loss.Noised(jnp.asarray(targets), jnp.asarray(masked & key_mask), jnp.asarray(p, jnp.float32),
                       jnp.asarray(np.broadcast_to(key_mask, masked.shape)), jnp.asarray(cut))
  got = loss.diffusion_loss(loss.token_ce(jnp.asarray(logits), jnp.asarray(targets)), noised)
  ce = _numpy_ce(logits, targets)
  want = sum(ce[i, j] / p[i] for i in range(3) for j in range(cut) if masked[i, j]) / (3 * cut)
  np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_sft_loss_equals_hand_computation():
  logits, targets, masked, p = _fixed()
  prompt_length = np.array([2, 0, 5])
  masked = masked & (np.arange(6)[None, :] >= prompt_length[:, None])
  noised = loss.Noised(jnp.asarray(targets), jnp.asarray(masked), jnp.asarray(p, jnp.float32),
                       jnp.ones(masked.shape, bool), jnp.asarray(6))
  got = loss.sft_loss(loss.token_ce(jnp.asarray(logits), jnp.asarray(targets)), noised, jnp.asarray(prompt_length))
  ce = _numpy_ce(logits, targets)
  rows = [sum(ce[i, j] / p[i] for j in range(6) if masked[i, j]) / (6 - prompt_length[i]) for i in range(3)]
  np.testing.assert_allclose(float(got), np.mean(rows), rtol=1e-5)


def test_autoregressive_loss_is_next_token_ce():
  logits, targets, _, _ = _fixed()
  got = loss.autoregressive_loss(loss.token_ce(jnp.asarray(logits), loss.next_tokens(jnp.asarray(targets))))
  np.testing.assert_allclose(float(got), _numpy_ce(logits[:, :-1], targets[:, 1:]).mean(), rtol=1e-5)


def test_noise_masks_with_probability_p_and_only_to_the_mask_id():
  tokens = jnp.asarray(np.random.default_rng(0).integers(8, 100, (512, 256)))
  noised = loss.noise(jax.random.key(0), tokens, mask_id=MASK, eps=1e-3)
  masked = np.asarray(noised.masked)
  assert np.array_equal(np.asarray(noised.inputs) == MASK, masked)
  assert np.array_equal(np.asarray(noised.inputs)[~masked], np.asarray(tokens)[~masked])
  p = np.asarray(noised.p)
  assert p.min() >= 1e-3 and p.max() <= 1.0
  rate = masked.mean(axis=1)
  assert np.abs(rate - p).max() < 0.12  # 256 Bernoulli draws per row
  assert abs(np.corrcoef(rate, p)[0, 1] - 1) < 0.01
  assert int(noised.length) == 256 and np.asarray(noised.key_mask).all()


def test_random_length_cut_happens_at_the_configured_rate_and_masks_keys():
  tokens = jnp.zeros((2, 64), jnp.int32) + 9
  cuts = [loss.noise(jax.random.key(i), tokens, mask_id=MASK, eps=1e-3, random_length_prob=0.25)
          for i in range(400)]
  lengths = np.array([int(n.length) for n in cuts])
  assert 0.18 < np.mean(lengths < 64) < 0.32
  cut = next(n for n in cuts if int(n.length) < 64)
  length = int(cut.length)
  assert np.asarray(cut.key_mask)[:, :length].all() and not np.asarray(cut.key_mask)[:, length:].any()
  assert not np.asarray(cut.masked)[:, length:].any()


def test_sft_noise_never_touches_the_prompt():
  tokens = jnp.asarray(np.random.default_rng(1).integers(8, 100, (64, 32)))
  prompt_length = jnp.asarray(np.random.default_rng(2).integers(0, 32, (64,)))
  noised = loss.noise_sft(jax.random.key(3), tokens, prompt_length, mask_id=MASK, eps=1e-3)
  prompt = np.arange(32)[None, :] < np.asarray(prompt_length)[:, None]
  assert np.array_equal(np.asarray(noised.inputs)[prompt], np.asarray(tokens)[prompt])
  assert not np.asarray(noised.masked)[prompt].any()
  assert np.asarray(noised.masked)[~prompt].mean() > 0.2


@pytest.mark.parametrize("batch", [4, 16])
def test_antithetic_t_is_evenly_spread(batch):
  t = np.sort(np.asarray(loss.sample_t(jax.random.key(0), batch, antithetic=True)))
  np.testing.assert_allclose(np.diff(t), 1 / batch, atol=1e-6)


@pytest.mark.parametrize("antithetic", [False, True])
def test_paired_counts_mask_exactly_k_and_n_plus_1_minus_k_uniformly(antithetic):
  tokens = jnp.asarray(np.random.default_rng(4).integers(8, 100, (8, 32)))
  draws = [loss.noise_paired_counts(jax.random.key(i), tokens, mask_id=MASK, random_length_prob=0.2,
                                    antithetic=antithetic) for i in range(300)]
  counts_at = {32: [], "cut": []}
  for noised in draws:
    masked, n = np.asarray(noised.masked), int(noised.length)
    counts = masked.sum(axis=1)
    assert np.array_equal(np.asarray(noised.inputs) == MASK, masked)
    assert not masked[:, n:].any()
    assert (counts >= 1).all() and (counts[0::2] + counts[1::2] == n + 1).all()
    np.testing.assert_allclose(np.asarray(noised.p), counts / n, rtol=1e-6)
    counts_at[32 if n == 32 else "cut"].extend(counts)
  assert counts_at["cut"]  # the cut happened, and was honoured above
  counts = np.asarray(counts_at[32])
  assert set(counts) == set(range(1, 33))  # every count 1..32 occurs (~70 draws each)
  assert abs(counts.mean() - 16.5) < 0.5
  full = [np.asarray(n.masked) for n in draws if int(n.length) == 32]
  assert np.abs(np.mean(full, axis=(0, 1)) - 0.5).max() < 0.1  # every position equally likely masked


def test_paired_counts_estimate_the_same_bound_as_bernoulli_masks_with_less_variance():
  """A toy whose CE depends on how many tokens of the row are masked (as a real model's does): both maskings'
  diffusion_loss average to Σ_k f(k) / l (f = the term of count k, exact), the paired one with a smaller spread."""
  b, l = 8, 16
  per_position = jnp.linspace(0.5, 2.0, l)
  f = lambda count: 1.0 / (1.0 + count / 4.0) + (count / l) ** 2

  def estimate(noised):
    counts = noised.masked.sum(axis=1, keepdims=True)
    return loss.diffusion_loss(per_position[None, :] * f(counts), noised)

  tokens = jnp.zeros((b, l), jnp.int32) + 9
  keys = jax.random.split(jax.random.key(5), 20000)
  paired = jax.vmap(lambda k: estimate(loss.noise_paired_counts(k, tokens, mask_id=MASK, antithetic=True)))(keys)
  bernoulli = jax.vmap(lambda k: estimate(loss.noise(k, tokens, mask_id=MASK, eps=1e-3, antithetic=True)))(keys)
  exact = float(jnp.mean(per_position)) * float(np.mean([f(k) for k in range(1, l + 1)]))
  paired, bernoulli = np.asarray(paired), np.asarray(bernoulli)
  assert abs(paired.mean() - exact) < 4 * paired.std() / np.sqrt(len(keys))
  assert abs(bernoulli.mean() - exact) < 4 * bernoulli.std() / np.sqrt(len(keys)) + 2e-3  # eps shifts it slightly
  assert paired.std() < 0.5 * bernoulli.std()


@pytest.mark.parametrize("chunk_length,cut", [(0, 16), (4, 16), (8, 11), (16, 16)])
def test_masked_token_ce_equals_the_whole_head_at_the_masked_positions(chunk_length, cut):
  """Values and gradients: the head on the gathered masked positions is the full head's CE, zero elsewhere."""
  rng = np.random.default_rng(6)
  hidden = jnp.asarray(rng.normal(size=(6, 16, 5)), jnp.float32)
  weights = jnp.asarray(rng.normal(size=(5, 11)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, 11, (6, 16)))
  noised = loss.noise_paired_counts(jax.random.key(7), targets, mask_id=MASK)
  noised = noised._replace(masked=noised.masked & (jnp.arange(16) < cut))  # pairs with fewer than l + 1 masked
  head = lambda w: lambda h: jnp.einsum("bld,dv->blv", h, w)

  def total(h, w, gathered):
    ce = (loss.masked_token_ce(h, head(w), targets, noised.masked, chunk_length) if gathered
          else jnp.where(noised.masked, loss.token_ce(head(w)(h), targets), 0.0))
    return loss.diffusion_loss(ce, noised)

  want, want_grads = jax.value_and_grad(total, argnums=(0, 1))(hidden, weights, False)
  got, got_grads = jax.jit(jax.value_and_grad(total, argnums=(0, 1)), static_argnums=2)(hidden, weights, True)
  np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
  for g, w in zip(got_grads, want_grads):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7)
  assert loss.paired_capacity(16, chunk_length) == {0: 17, 4: 20, 8: 24, 16: 17}[chunk_length]
