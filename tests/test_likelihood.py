"""The Monte-Carlo likelihood estimator against the official rules on the PyTorch reference, and its invariants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from conftest import tiny_hf_config, write_hf_dir
from llada_jax import likelihood, load_pretrained
from llada_jax.errors import UserError
from llada_jax.torch_reference import get_log_likelihood

HF = tiny_hf_config(n_kv_heads=2)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
  path, ref = write_hf_dir(tmp_path_factory.mktemp("hf"), HF, seed=21)
  return load_pretrained(path), ref


@pytest.mark.parametrize("cfg_scale,window", [(0.0, None), (1.5, None), (1.5, 16)])
def test_equals_reference_when_the_same_masks_are_injected(pair, cfg_scale, window):
  """Also with the head and cross-entropy run only over a 16-position window holding the 12-token answer."""
  model, ref = pair
  prompt, answer = np.arange(10, 19), np.arange(40, 52)
  lp, t, b = len(prompt), len(answer), 4
  seq = likelihood.pad_to_bucket(np.concatenate([prompt, answer]).astype(np.int32), model.config.pad_token_id)
  keys = jax.random.split(jax.random.key(3), 3)
  masks = [likelihood.draw_masks(k, b, len(seq), lp, t) for k in keys]
  ours = -np.mean([float(likelihood.minibatch_loss(model.params, jnp.asarray(seq), m, lp, t, config=model.config,
                                                   cfg_scale=cfg_scale, mask_id=model.config.mask_token_id,
                                                   window=window))
                   for m in masks])
  theirs = get_log_likelihood(ref, torch.tensor(prompt), torch.tensor(answer), mc_num=12, batch_size=b,
                              cfg_scale=cfg_scale, mask_id=model.config.mask_token_id,
                              masks=[torch.tensor(np.asarray(m)[:, :lp + t]) for m in masks])
  np.testing.assert_allclose(ours, theirs, rtol=2e-5)


def test_stratified_counts_cover_one_to_t():
  for t in (1, 7, 16, 33):
    for seed in range(5):
      counts = np.asarray(likelihood.stratified_counts(jax.random.key(seed), t, jnp.asarray(t)))
      assert sorted(counts) == list(range(1, t + 1)), (t, counts)  # b = T: every count exactly once


def test_mask_counts_equal_the_official_rounded_linspace_exactly():
  """torch.round(torch.linspace(k, k + (b−1)·T/b, b)) of the official code, for every start k: the .5 ties
  included (b = 16, T = 8 puts one on every other row)."""
  torch = pytest.importorskip("torch")
  counts = jax.jit(likelihood.spread_counts, static_argnums=1)
  for b in (1, 3, 4, 16, 32):
    for t in (1, 2, 5, 8, 16, 24, 40, 63, 100):
      for k in range(1, t + 1):
        official = torch.round(torch.linspace(float(k), k + (b - 1) * (t / b), steps=b)).long()
        official = ((official - 1) % t + 1).tolist()
        assert np.asarray(counts(jnp.asarray(k), b, jnp.asarray(t))).tolist() == official, (b, t, k)


def test_masks_touch_only_the_answer_with_the_drawn_counts():
  masks = np.asarray(likelihood.draw_masks(jax.random.key(0), 16, 64, jnp.asarray(9), jnp.asarray(20)))
  assert not masks[:, :9].any() and not masks[:, 29:].any()
  counts = masks.sum(1)
  assert counts.min() >= 1 and counts.max() <= 20
  assert len(set(map(tuple, masks))) == 16  # rows are different subsets


def test_estimate_is_near_the_exact_value_for_a_one_token_answer(pair):
  """For T = 1 every draw masks the single answer token: the estimate is exactly log softmax there."""
  model, _ = pair
  prompt, answer = np.arange(10, 20), np.array([77])
  x = np.concatenate([prompt, [model.config.mask_token_id]])
  logits = np.asarray(model.logits(x[None]), np.float64)[0, -1]
  exact = logits[77] - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
  estimate = model.log_likelihood(prompt, answer, mc_num=1, batch_size=1)
  np.testing.assert_allclose(estimate, exact, rtol=1e-5)


def test_estimator_prefers_the_answer_the_model_predicts(pair):
  model, _ = pair
  prompt = np.arange(10, 20)
  x = np.concatenate([prompt, [model.config.mask_token_id] * 3])
  greedy = np.asarray(model.logits(x[None]))[0, -3:, :120].argmax(-1)
  other = (greedy + 50) % 120
  assert model.log_likelihood(prompt, greedy, mc_num=16) > model.log_likelihood(prompt, other, mc_num=16)


@pytest.mark.parametrize("cfg_scale", [pytest.param(0.0, marks=pytest.mark.slow), 0.5])
def test_batched_pairs_equal_each_pair_alone(pair, cfg_scale):
  """Five pairs over two length buckets, two per call (so the last call of a bucket is filled with a copy):
  each value is the pair's own estimate with its key, to float rounding of the larger matmuls."""
  model, _ = pair
  rng = np.random.default_rng(4)
  pairs = [(rng.integers(10, 120, lp), rng.integers(10, 120, la)) for lp, la in ((9, 12), (5, 3), (40, 30),
                                                                                 (20, 7), (50, 29))]
  keys = [jax.random.key(100 + i) for i in range(len(pairs))]
  batched = model.log_likelihoods(pairs, rngs=keys, mc_num=8, batch_size=4, cfg_scale=cfg_scale, pairs_per_call=2)
  alone = [model.log_likelihood(p, a, mc_num=8, batch_size=4, cfg_scale=cfg_scale, rng=k)
           for (p, a), k in zip(pairs, keys)]
  np.testing.assert_allclose(batched, alone, rtol=1e-5)
  assert len(set(np.round(batched, 3))) == len(pairs)  # different pairs really got their own values


def test_errors(pair):
  model, _ = pair
  with pytest.raises(UserError, match="multiple of batch_size"):
    model.log_likelihood([1, 2], [3, 4], mc_num=10, batch_size=4)
  with pytest.raises(UserError, match="answer is empty"):
    model.log_likelihood([1, 2], [], mc_num=4)
  with pytest.raises(UserError, match="max_sequence_length"):
    model.log_likelihood(np.ones(250, int), np.ones(10, int), mc_num=4)
  with pytest.raises(UserError, match="pairs_per_call"):
    model.log_likelihoods([([1], [2])], rngs=[jax.random.key(0)], mc_num=4, pairs_per_call=0)
