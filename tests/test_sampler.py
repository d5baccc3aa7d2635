"""The jitted sampler against the official sampling rules ported onto the PyTorch reference: token-identical."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from conftest import tiny_hf_config, write_hf_dir
from llada_jax import load_pretrained, sampler
from llada_jax.errors import UserError
from llada_jax.torch_reference import generate as reference_generate, generate_fast

HF = tiny_hf_config(n_kv_heads=2)
EOS, EOT, MASK = HF["eos_token_id"], HF["eot_token_id"], HF["mask_token_id"]


def _favour_eos_and_eot(model):
  """Random weights rarely predict EOS/EoT; make them frequent winners so the EOS options matter."""
  head = model.model.transformer.ff_out.weight
  head[EOS] = 3.0 * head[5]
  head[EOT] = 3.0 * head[9]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
  path, ref = write_hf_dir(tmp_path_factory.mktemp("hf"), HF, seed=11, edit=_favour_eos_and_eot)
  return load_pretrained(path), ref


def _prompts(batch=2, length=6, seed=0):
  return np.random.default_rng(seed).integers(0, 100, (batch, length))


def _injected_noise(rng, args, batch, prompt_length, full_canvas=False):
  """Our sampler's uniforms, placed where the reference reads them: each step draws for the current block only
  (the whole canvas when the prompt holds mask tokens); other positions are never committed, so any value will do."""
  steps_per_block = args["steps"] // (args["gen_length"] // args["block_length"])
  length = prompt_length + args["gen_length"]
  draws = []
  for i in range(args["steps"]):
    keys = [sampler.step_keys(key, i) for key in sampler.row_keys(rng, batch)]  # each row draws from its own key
    start = 0 if full_canvas else prompt_length + (i // steps_per_block) * args["block_length"]
    width = length if full_canvas else args["block_length"]
    if args.get("temperature", 0) > 0:
      full = np.full((batch, length, 128), 0.5)
      full[:, start:start + width] = [jax.random.uniform(gumbel, (width, 128), minval=jnp.finfo(jnp.float32).tiny)
                                      for gumbel, _ in keys]
      draws.append(full)
    if args.get("remasking") == "random":
      full = np.full((batch, length), 0.5)
      full[:, start:start + width] = [jax.random.uniform(remask, (width,)) for _, remask in keys]
      draws.append(full)
  it = iter(draws)
  return lambda shape: torch.from_numpy(np.asarray(next(it), np.float64))


CASES = {
    "full_canvas": dict(steps=8, gen_length=8, block_length=8),
    "fewer_steps_than_tokens": dict(steps=4, gen_length=10, block_length=10),  # commits 3,3,2,2
    "semi_autoregressive": dict(steps=8, gen_length=16, block_length=4),
    "cfg": dict(steps=8, gen_length=8, block_length=8, cfg_scale=1.5),
    "logits_eos_inf": dict(steps=8, gen_length=8, block_length=4, logits_eos_inf=True),
    "confidence_eos_eot_inf": dict(steps=8, gen_length=8, block_length=8, confidence_eos_eot_inf=True),
    "random_remasking": dict(steps=8, gen_length=8, block_length=4, remasking="random"),
    "temperature": dict(steps=8, gen_length=8, block_length=8, temperature=0.7),
    "temperature_confidence_eos_eot_inf": dict(steps=6, gen_length=12, block_length=6, temperature=1.0,
                                                confidence_eos_eot_inf=True),
}


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("name", list(CASES))
def test_tokens_identical_to_reference(pair, name, padded):
  model, ref = pair
  args = CASES[name]
  prompt = _prompts(batch=3)
  mask = None
  if padded:
    mask = np.ones_like(prompt)
    mask[0, :3] = 0
    mask[2, :5] = 0
    prompt[mask == 0] = EOS
  rng = jax.random.key(7)
  ours = model.generate(prompt, attention_mask=mask, rng=rng, **args)
  theirs, nfe = reference_generate(
      ref, torch.tensor(prompt), attention_mask=None if mask is None else torch.tensor(mask), mask_id=MASK,
      eos_id=EOS, eot_id=EOT, noise_fn=_injected_noise(rng, args, 3, prompt.shape[1]), **args)
  np.testing.assert_array_equal(np.asarray(ours.tokens), theirs.numpy())
  assert ours.nfe == nfe == args["steps"]
  assert not np.any(np.asarray(ours.tokens) == MASK)


@pytest.mark.parametrize("name", ["semi_autoregressive", "random_remasking", "temperature"])
def test_mask_tokens_inside_the_prompt_are_filled_as_officially(pair, name):
  """A prompt holding mask tokens takes the whole-canvas path: those positions compete for the block's commits,
  as in the official code (so one may stay masked)."""
  model, ref = pair
  args = CASES[name]
  prompt = _prompts(batch=2)
  prompt[:, 2] = MASK
  rng = jax.random.key(3)
  ours = np.asarray(model.generate(prompt, rng=rng, **args).tokens)
  theirs, _ = reference_generate(ref, torch.tensor(prompt), mask_id=MASK, eos_id=EOS, eot_id=EOT,
                                 noise_fn=_injected_noise(rng, args, 2, prompt.shape[1], full_canvas=True), **args)
  np.testing.assert_array_equal(ours, theirs.numpy())


def test_eos_options_change_the_output(pair):
  """Guards the parity cases above against an EOS-free model, where the EOS options would be no-ops."""
  model, _ = pair
  prompt = _prompts(batch=3)
  base = np.asarray(model.generate(prompt, steps=8, gen_length=8, block_length=8).tokens)
  assert np.isin(base[:, 6:], [EOS, EOT]).any()
  no_eos = np.asarray(model.generate(prompt, steps=8, gen_length=8, block_length=8, logits_eos_inf=True).tokens)
  assert not (no_eos[:, 6:] == EOS).any()
  quirk = np.asarray(model.generate(prompt, steps=8, gen_length=8, block_length=8,
                                    confidence_eos_eot_inf=True).tokens)
  assert not np.array_equal(quirk, base)


def test_schedule_and_block_invariants(pair):
  model, _ = pair
  np.testing.assert_array_equal(sampler.transfer_schedule(jnp.array([10, 4]), 4), [[3, 3, 2, 2], [1, 1, 1, 1]])
  prompt = _prompts(batch=2)
  out = np.asarray(model.generate(prompt, steps=4, gen_length=8, block_length=4).tokens)
  np.testing.assert_array_equal(out[:, :6], prompt)  # the prompt is never touched


def test_rng_controls_sampling(pair):
  model, _ = pair
  prompt = _prompts()
  args = dict(steps=8, gen_length=8, block_length=8, temperature=1.0)
  a = model.generate(prompt, rng=jax.random.key(1), **args).tokens
  b = model.generate(prompt, rng=jax.random.key(1), **args).tokens
  c = model.generate(prompt, rng=jax.random.key(2), **args).tokens
  assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize("args,match", [
    (dict(gen_length=10, block_length=4), "not a multiple of block_length"),
    (dict(steps=3, gen_length=8, block_length=4), "not a multiple of the number of blocks"),
    (dict(gen_length=256, block_length=256, steps=256), "exceeds the model's max_sequence_length"),
    (dict(mask_id=500), "outside the vocabulary"),
    (dict(remasking="lowest"), "remasking"),
])
def test_clear_errors(pair, args, match):
  model, _ = pair
  with pytest.raises(UserError, match=match):
    model.generate(_prompts(), **args)


# ------------------------------------------------------------------ Fast-dLLM decoding and block KV caches (§5.8)

def _sharpen_head(model):
  """Random weights are unsure of everything (confidence ≈ 1/vocab): scale the head so that confidences spread
  over (0, 1) and thresholds choose among several positions, as on a trained model."""
  model.model.transformer.ff_out.weight.mul_(12.0)


@pytest.fixture(scope="module")
def sharp_pair(tmp_path_factory):
  path, ref = write_hf_dir(tmp_path_factory.mktemp("sharp"), HF, seed=5, edit=_sharpen_head)
  return load_pretrained(path), ref


def _block_noise(rng, block_length, vocab):
  """Our dynamic-mode uniforms for the reference's noise_fn(shape, block, step, block_offset)."""
  def noise(shape, block, step, block_offset):
    gumbel_key, _ = sampler.step_keys(jax.random.fold_in(rng, block), step)
    full = np.full(shape, 0.5)
    full[:, block_offset:block_offset + block_length] = jax.random.uniform(
        gumbel_key, (1, block_length, vocab), minval=jnp.finfo(jnp.float32).tiny)
    return torch.from_numpy(full)
  return noise


FAST = {
    "threshold": dict(decoding="threshold", threshold=0.3),
    "threshold_prefix": dict(decoding="threshold", threshold=0.3, cache="prefix"),
    "threshold_dual": dict(decoding="threshold", threshold=0.3, cache="dual"),
    "factor_dual": dict(decoding="factor", factor=1.0, cache="dual"),
    "factor_prefix": dict(decoding="factor", factor=2.0, cache="prefix"),
    "schedule_prefix": dict(cache="prefix"),
    "schedule_dual": dict(cache="dual"),
    "threshold_dual_temperature": dict(decoding="threshold", threshold=0.3, cache="dual", temperature=0.8),
}


@pytest.mark.parametrize("name", list(FAST))
def test_fast_modes_token_identical_to_reference(sharp_pair, name):
  """Batch 1, fp32, no CFG: Fast-dLLM's rules (which call commits what, which keys/values are reused, NFE)."""
  model, ref = sharp_pair
  args = dict(steps=8, gen_length=16, block_length=8, **FAST[name])
  prompt = _prompts(batch=1, length=7, seed=4)
  rng = jax.random.key(2)
  ours = model.generate(prompt, rng=rng, **args)
  reference_args = {k: v for k, v in args.items() if k not in ("decoding", "threshold", "factor")}
  if args.get("decoding") == "threshold":
    reference_args["threshold"] = args["threshold"]
  if args.get("decoding") == "factor":
    reference_args["factor"] = args["factor"]
  theirs, nfe = generate_fast(ref, torch.tensor(prompt), mask_id=MASK, noise_fn=_block_noise(rng, 8, 128),
                              **reference_args)
  np.testing.assert_array_equal(np.asarray(ours.tokens), theirs.numpy())
  assert ours.nfe == nfe and list(ours.row_nfe) == [nfe]
  if args.get("decoding"):
    assert nfe < args["gen_length"]  # the rule did commit several positions per call


def test_first_cached_call_equals_the_uncached_model(sharp_pair):
  """The cache-filling forward is the model (within 2e-6 of the logits' scale: eager op-by-op vs one fused
  program), and with nothing stale (the cache filled from the same canvas) a block's cached forward is too: the
  dual call over the block and the prefix call over block + suffix, within 2e-5 of the scale."""
  from llada_jax import model as model_lib
  model, _ = sharp_pair
  c, params = model.config, model.params
  x = jnp.asarray(np.random.default_rng(1).integers(0, 120, (2, 24)), jnp.int32)
  mask = jnp.asarray(np.arange(24)[None, :] >= np.array([[0], [5]]), jnp.int32)  # row 1 left-padded
  full = np.asarray(model_lib.apply(params, x, mask, config=c))
  hidden, cache = model_lib.features_and_cache(params, x, mask, config=c)
  scale = np.abs(full).max()
  np.testing.assert_allclose(np.asarray(model_lib.head(params, hidden, config=c)), full, rtol=0, atol=2e-6 * scale)
  for start, width in ((8, 8), (16, 8), (8, 16)):
    part = model_lib.features(params, x[:, start:start + width], mask, config=c, cache=cache, start=start)
    cached = np.asarray(model_lib.head(params, part, config=c))
    np.testing.assert_allclose(cached, full[:, start:start + width], rtol=0, atol=2e-5 * scale)


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_threshold_above_one_commits_one_per_call(sharp_pair, cache):
  """Only the always-committed top-1 passes a threshold above 1: one position per model call; without a cache
  that is exactly the exact sampler with steps = gen_length."""
  model, _ = sharp_pair
  prompt = _prompts(batch=2)
  out = model.generate(prompt, gen_length=12, block_length=4, decoding="threshold", threshold=1.0 + 1e-6,
                       cache=cache)
  assert list(out.row_nfe) == [12, 12] and not np.any(np.asarray(out.tokens) == MASK)
  if cache == "none":
    exact = model.generate(prompt, steps=12, gen_length=12, block_length=4)
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(exact.tokens))


def test_left_pad_right_aligns_rows_and_masks_the_pads():
  ids, mask = sampler.left_pad([[5, 6, 7], [8], []], EOS, width=4)
  np.testing.assert_array_equal(ids, [[EOS, 5, 6, 7], [EOS, EOS, EOS, 8], [EOS] * 4])
  np.testing.assert_array_equal(mask, [[0, 1, 1, 1], [0, 0, 0, 1], [0, 0, 0, 0]])
  assert ids.dtype == mask.dtype == np.int32


@pytest.mark.parametrize("args", [
    dict(decoding="threshold", threshold=0.9, cache="prefix", cfg_scale=1.0),
    pytest.param(dict(decoding="threshold", threshold=0.3, cache="dual"), marks=pytest.mark.slow),
    pytest.param(dict(decoding="factor", cache="dual", cfg_scale=1.0), marks=pytest.mark.slow),
    pytest.param(dict(decoding="threshold", threshold=0.5), marks=pytest.mark.slow),
], ids=["threshold_prefix_cfg", "threshold_dual", "factor_dual_cfg", "threshold"])
def test_rows_are_batch_invariant(sharp_pair, args):
  """Each row of a left-padded batch of 8 (prompt lengths 3..10) gets the tokens and model-call count it gets
  alone, though the rows finish their blocks after different numbers of calls."""
  model, _ = sharp_pair
  lengths = [3, 10, 5, 8, 4, 9, 6, 7]
  rows = [np.random.default_rng(i).integers(0, 100, n) for i, n in enumerate(lengths)]
  prompt, mask = sampler.left_pad(rows, EOS)
  options = dict(gen_length=16, block_length=8, **args)
  batch = model.generate(prompt, attention_mask=mask, **options)
  tokens = np.asarray(batch.tokens)
  for i, row in enumerate(rows):
    alone = model.generate(row[None], **options)
    np.testing.assert_array_equal(tokens[i, -16:], np.asarray(alone.tokens)[0, -16:])
    assert batch.row_nfe[i] == alone.row_nfe[0]
  assert len(set(batch.row_nfe.tolist())) > 1  # the rows really did advance on their own
  assert not np.any(tokens == MASK)
  np.testing.assert_array_equal(tokens[:, :prompt.shape[1]], prompt)


@pytest.mark.parametrize("args", [dict(temperature=0.8), dict(temperature=0.8, remasking="random"),
                                  dict(decoding="threshold", threshold=0.3, cache="dual", temperature=0.8)],
                         ids=["exact", "random_remasking", "threshold_dual"])
def test_a_row_samples_the_same_tokens_with_its_key_alone_or_in_a_batch(sharp_pair, args):
  """Sampling at temperature > 0: each row draws from its own key, so the row is the same sampled alone."""
  model, _ = sharp_pair
  rows = [np.random.default_rng(i).integers(0, 100, n) for i, n in enumerate([4, 9, 6])]
  prompt, mask = sampler.left_pad(rows, EOS)
  keys = jax.random.split(jax.random.key(3), 3)
  options = dict(gen_length=16, block_length=8, steps=16, **args)
  batch = np.asarray(model.generate(prompt, attention_mask=mask, rng=keys, **options).tokens)
  for i, row in enumerate(rows):
    alone = model.generate(row[None], rng=keys[i], **options)
    np.testing.assert_array_equal(batch[i, -16:], np.asarray(alone.tokens)[0, -16:])
  assert len({tuple(r) for r in batch[:, -16:].tolist()}) == 3
  # One key for the batch: row 0 draws from it, row r from fold_in(key, r).
  shared = np.asarray(model.generate(prompt, attention_mask=mask, rng=keys[0], **options).tokens)
  np.testing.assert_array_equal(shared[0], batch[0])


@pytest.mark.parametrize("args", [dict(), dict(decoding="threshold", threshold=0.3, cache="dual", temperature=0.8)],
                         ids=["exact", "threshold_dual"])
def test_rows_at_different_blocks_share_one_program(sharp_pair, args):
  """`fill_blocks` advances row A from block 1 to 2 and row B from block 0 to 1 in one call, each exactly as it
  advances alone: a server can add a request to a running batch at a block boundary."""
  model, _ = sharp_pair
  options = sampler.SamplingConfig(gen_length=24, block_length=8, steps=24, **args)
  prompts = [np.random.default_rng(i).integers(0, 100, 6) for i in range(2)]
  keys = jax.random.split(jax.random.key(5), 2)
  alone = [[np.asarray(u.tokens)[0] for u in sampler.generate_blocks(model.params, p[None], config=model.config,
                                                                      sampling=options, rng=k)]
           for p, k in zip(prompts, keys)]
  fresh = np.concatenate([prompts[1], np.full(24, MASK)])
  canvas = np.stack([alone[0][0], fresh])  # A has its first block, B nothing yet
  prompt_index = np.stack([np.arange(30) < 6] * 2)
  x, calls = sampler.fill_blocks(model.params, jnp.asarray(canvas, jnp.int32), None, jnp.asarray(prompt_index), keys,
                                 [1, 0], config=model.config, sampling=options, prompt_length=6)
  np.testing.assert_array_equal(np.asarray(x), np.stack([alone[0][1], alone[1][0]]))
  assert np.all(np.asarray(calls) >= 1)
  with pytest.raises(UserError, match="cache=prefix follows one block"):
    sampler.fill_blocks(model.params, jnp.asarray(canvas), None, jnp.asarray(prompt_index), keys, [1, 0],
                        config=model.config, sampling=dataclasses.replace(options, cache="prefix"), prompt_length=6)


@pytest.mark.parametrize("args", [dict(), dict(decoding="threshold", threshold=0.3, cache="dual")])
def test_streaming_yields_the_final_text_block_by_block(sharp_pair, args):
  model, _ = sharp_pair
  prompt = _prompts(batch=2)
  sampling = sampler.SamplingConfig(steps=12, gen_length=12, block_length=4, **args)
  final = np.asarray(model.generate(prompt, sampling=sampling).tokens)
  updates = list(model.generate_blocks(prompt, sampling=sampling))
  assert [u.block for u in updates] == [0, 1, 2]
  for u in updates:
    canvas = np.asarray(u.tokens)
    done = prompt.shape[1] + 4 * (u.block + 1)
    np.testing.assert_array_equal(canvas[:, :done], final[:, :done])  # a block left behind is final
    assert np.all(canvas[:, done:] == MASK)
  np.testing.assert_array_equal(np.asarray(updates[-1].tokens), final)


@pytest.mark.parametrize("args,match", [
    (dict(decoding="threshold", remasking="random"), "needs remasking=low_confidence"),
    (dict(decoding="fast"), "decoding='fast' is not one of"),
    (dict(cache="kv"), "cache='kv' is not one of"),
    (dict(decoding="threshold", threshold=0.0), "must be positive"),
    (dict(gen_length=8, block_length=4, steps=3), "not a multiple of the number of blocks"),
])
def test_bad_sampling_options_fail_with_one_line(args, match):
  with pytest.raises(UserError, match=match):
    sampler.SamplingConfig(**args)


def test_fast_modes_refuse_what_they_cannot_do(sharp_pair):
  model, _ = sharp_pair
  prompt = _prompts()
  prompt[:, 2] = MASK
  with pytest.raises(UserError, match="only decoding=exact with cache=none fills masks inside the prompt"):
    model.generate(prompt, decoding="threshold")
  with pytest.raises(UserError, match="history is kept for decoding=exact"):
    model.generate(_prompts(), cache="dual", return_history=True)
  # steps only sets the exact schedule: threshold decoding accepts any
  assert sampler.SamplingConfig(decoding="threshold", steps=3, gen_length=8, block_length=4).num_blocks == 2


@pytest.mark.parametrize("cache", ["none", "dual"])
def test_eos_options_hold_in_fast_modes(pair, cache):
  """On the EOS-favouring model: logits_eos_inf never yields EOS, and the confidence quirk changes what is
  committed, with threshold decoding and a cache as with the exact sampler."""
  model, _ = pair
  prompt = _prompts(batch=3)
  args = dict(gen_length=8, block_length=4, decoding="threshold", threshold=0.05, cache=cache)
  base = np.asarray(model.generate(prompt, **args).tokens)
  assert np.isin(base[:, 6:], [EOS, EOT]).any()
  assert not (np.asarray(model.generate(prompt, logits_eos_inf=True, **args).tokens)[:, 6:] == EOS).any()
  quirk = np.asarray(model.generate(prompt, confidence_eos_eot_inf=True, **args).tokens)
  assert not np.array_equal(quirk, base) and not np.any(quirk == MASK)
