"""The jitted sampler against the official sampling rules ported onto the PyTorch reference: token-identical."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from conftest import tiny_hf_config, write_hf_dir
from llada_jax import load_pretrained, sampler
from llada_jax.errors import UserError
from torch_reference import generate as reference_generate

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
    gumbel_key, remask_key = sampler.step_keys(rng, i)
    start = 0 if full_canvas else prompt_length + (i // steps_per_block) * args["block_length"]
    width = length if full_canvas else args["block_length"]
    if args.get("temperature", 0) > 0:
      full = np.full((batch, length, 128), 0.5)
      full[:, start:start + width] = jax.random.uniform(gumbel_key, (batch, width, 128),
                                                        minval=jnp.finfo(jnp.float32).tiny)
      draws.append(full)
    if args.get("remasking") == "random":
      full = np.full((batch, length), 0.5)
      full[:, start:start + width] = jax.random.uniform(remask_key, (batch, width))
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
