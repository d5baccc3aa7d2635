"""The JAX model against the independent PyTorch reference (llada_jax/torch_reference.py), plus its invariants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from conftest import tiny_hf_config, write_hf_dir
from llada_jax import load_pretrained
from llada_jax import model as model_lib
from llada_jax.config import REMAT_POLICIES
from llada_jax.hf_config import from_hf_config

FP32_BOUND = 1e-5


def _tokens(hf_config, batch=3, length=17, seed=0):
  return np.random.default_rng(seed).integers(0, hf_config["vocab_size"], (batch, length))


def _max_delta(ours, theirs):
  return float(np.max(np.abs(np.asarray(ours, np.float32) - theirs.float().detach().numpy())))


@pytest.mark.parametrize("changes", [
    {},  # MHA, untied head
    {"n_kv_heads": 2},  # GQA
    {"n_kv_heads": 1, "weight_tying": True},  # multi-query, tied head
])
def test_fp32_logits_match_reference(tmp_path, changes):
  hf_config = tiny_hf_config(**changes)
  path, ref = write_hf_dir(tmp_path / "hf", hf_config, seed=1)
  model = load_pretrained(path)
  tokens = _tokens(hf_config)
  delta = _max_delta(model.logits(tokens), ref(torch.tensor(tokens)))
  assert delta <= FP32_BOUND, delta


def test_left_padded_batch_with_attention_mask_matches_reference(tmp_path):
  hf_config = tiny_hf_config(n_kv_heads=2)
  path, ref = write_hf_dir(tmp_path / "hf", hf_config, seed=2)
  model = load_pretrained(path)
  tokens = _tokens(hf_config, batch=3, length=12)
  mask = np.ones_like(tokens)
  mask[0, :5] = 0
  mask[2, :11] = 0  # a single real token
  tokens[mask == 0] = hf_config["eos_token_id"]
  ours = model.logits(tokens, mask)
  theirs = ref(torch.tensor(tokens), attention_mask=torch.tensor(mask))
  assert _max_delta(ours, theirs) <= FP32_BOUND  # padded queries included: keys-only masking, as officially
  unmasked = model.logits(tokens)
  assert np.max(np.abs(np.asarray(ours)[1] - np.asarray(unmasked)[1])) < 1e-6  # unpadded row unaffected
  assert np.max(np.abs(np.asarray(ours)[0, 5:] - np.asarray(unmasked)[0, 5:])) > 1e-3  # padding matters


def test_bf16_logits_close_to_reference(tmp_path):
  """bf16 weights and compute on both sides: rounding differs in op order, so the bound is bf16-sized."""
  hf_config = tiny_hf_config()
  path, ref = write_hf_dir(tmp_path / "hf", hf_config, seed=3, dtype="bfloat16")
  model = load_pretrained(path, dtype="bfloat16")
  assert model.config.param_dtype == model.config.dtype == "bfloat16"
  tokens = _tokens(hf_config)
  ours = model.logits(tokens)
  assert ours.dtype == jnp.bfloat16
  theirs = ref(torch.tensor(tokens))
  scale = float(theirs.float().abs().max())
  assert _max_delta(ours, theirs) <= 0.05 * scale


def test_causal_baseline_matches_reference(tmp_path):
  from llada_jax.torch_reference import TorchLLaDA
  hf_config = tiny_hf_config()
  path, ref = write_hf_dir(tmp_path / "hf", hf_config, seed=4)
  causal_ref = TorchLLaDA(hf_config, causal=True)
  causal_ref.load_state_dict(ref.state_dict())
  model = load_pretrained(path)
  config = model.config.replace(causal=True)
  tokens = _tokens(hf_config)
  ours = model_lib.apply(model.params, jnp.asarray(tokens), config=config)
  assert _max_delta(ours, causal_ref(torch.tensor(tokens))) <= FP32_BOUND


@pytest.mark.parametrize("changes,causal", [({}, False), ({"n_kv_heads": 2, "weight_tying": True}, False),
                                            ({"n_kv_heads": 1}, True)])
def test_fp32_gradients_match_reference_autograd(tmp_path, changes, causal):
  """The hand-written backward passes (attention, projections) against PyTorch autograd, with left padding."""
  from llada_jax import checkpoint, convert
  from llada_jax.torch_reference import TorchLLaDA
  hf_config = tiny_hf_config(**changes)
  path, ref = write_hf_dir(tmp_path / "hf", hf_config, seed=5)
  if causal:
    causal_ref = TorchLLaDA(hf_config, causal=True)
    causal_ref.load_state_dict(ref.state_dict())
    ref = causal_ref
  model = load_pretrained(path)
  config = model.config.replace(causal=causal)
  tokens = _tokens(hf_config, batch=2, length=16)
  mask = np.ones_like(tokens)
  mask[1, :6] = 0
  weights = np.random.default_rng(6).standard_normal((2, 16, hf_config["embedding_size"])).astype(np.float32)

  def loss(p):
    return jnp.sum(model_lib.apply(p, jnp.asarray(tokens), jnp.asarray(mask), config=config) * weights)

  grads = jax.grad(loss)(model.params)
  (ref(torch.tensor(tokens), attention_mask=torch.tensor(mask)) * torch.from_numpy(weights)).sum().backward()
  theirs = dict(ref.named_parameters())
  layered = jax.tree.map(np.asarray, checkpoint.to_layered(grads, config.n_layers))
  for name, ours in convert.hf_tensors(layered, config):
    expected = theirs[name].grad.numpy()
    assert np.max(np.abs(ours - expected)) <= 1e-4 * np.max(np.abs(expected)), name


@pytest.mark.parametrize("changes", [{"scan_layers": False}] + [
    {"remat_policy": policy} for policy in REMAT_POLICIES if policy != "none"])
def test_layer_loop_and_remat_variants_equal_scan(changes):
  config = from_hf_config(tiny_hf_config())
  params = model_lib.init_params(config, jax.random.key(0))
  tokens = jnp.asarray(_tokens(tiny_hf_config()))

  def loss(p, c):
    return jnp.mean(model_lib.apply(p, tokens, config=c) ** 2)

  base_value, base_grad = jax.value_and_grad(loss)(params, config)
  value, grad = jax.value_and_grad(loss)(params, config.replace(**changes))
  np.testing.assert_allclose(value, base_value, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(base_grad)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_mitchell_init_statistics():
  config = from_hf_config(tiny_hf_config(d_model=256, n_heads=4, n_layers=4, mlp_hidden_size=512,
                                         embedding_size=512))
  p = model_lib.init_params(config, jax.random.key(0))
  d, m = config.d_model, config.mlp_hidden_size
  sd_truncated = 0.98658  # std of a unit normal truncated at ±3σ

  def check(w, std):
    w = np.asarray(w, np.float64)
    assert abs(w.std() / (std * sd_truncated) - 1) < 0.02
    assert np.abs(w).max() <= 3 * std * (1 + 1e-6)

  check(p["wte"], d ** -0.5)
  check(p["ff_out"], d ** -0.5)
  check(p["blocks"]["q_proj"], d ** -0.5)
  for layer in (0, 3):
    check(p["blocks"]["attn_out"][layer], d ** -0.5 / np.sqrt(2 * (layer + 1)))
    check(p["blocks"]["ff_out"][layer], m ** -0.5 / np.sqrt(2 * (layer + 1)))
  assert np.all(np.asarray(p["blocks"]["attn_norm"]) == 1) and np.all(np.asarray(p["ln_f"]) == 1)


def test_rejects_tokens_outside_the_vocabulary(tmp_path):
  from llada_jax.errors import UserError
  path, _ = write_hf_dir(tmp_path / "hf", tiny_hf_config())
  model = load_pretrained(path)
  with pytest.raises(UserError, match="token ids must lie in"):
    model.logits(np.array([[1, 2, 10_000]]))
  with pytest.raises(UserError, match="attention_mask shape"):
    model.logits(np.array([[1, 2, 3]]), np.array([[1, 1]]))
