"""Every attention implementation equals the XLA path: splash runs here in Pallas' interpreter (the TPU kernel's own
code, executed exactly on CPU), cuDNN only on a GPU."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llada_jax import model as model_lib, ops, optim, sampler, sharding, train
from llada_jax.config import ModelConfig, TrainConfig
from llada_jax.pretrained import LLaDAModel

# Splash tiles by 128; 200 tokens with 128-blocks exercise several blocks and the padding of a partial one.
LENGTH = 200


def _inputs(heads, kv_heads, head_dim=64, batch=2, seed=0):
  rng = np.random.default_rng(seed)
  q, k, v, d_out = (jnp.asarray(rng.normal(size=(batch, LENGTH, h, head_dim)), jnp.float32)
                    for h in (heads, kv_heads, kv_heads, heads))
  left_pads = np.array([0, 37])[:batch]
  key_mask = jnp.asarray(np.arange(LENGTH)[None, :] >= left_pads[:, None])
  return q, k, v, d_out, key_mask


def _value_and_grads(config, q, k, v, d_out, key_mask):
  out, vjp = jax.vjp(lambda q, k, v: ops.attention(q, k, v, key_mask, config), q, k, v)
  return (out, *vjp(d_out))


@pytest.mark.parametrize("heads,kv_heads,causal,masked", [(4, 4, False, False), (4, 2, False, True),
                                                          (4, 1, True, True)])
def test_splash_attention_equals_the_xla_path(heads, kv_heads, causal, masked):
  q, k, v, d_out, key_mask = _inputs(heads, kv_heads)
  if causal:  # right padding: with left padding a causal row before the first real key has no key to attend to
    key_mask = key_mask[:, ::-1]
  key_mask = key_mask if masked else None
  base = ModelConfig(d_model=heads * 64, n_heads=heads, n_kv_heads=kv_heads, causal=causal,
                     attention_block_q=128, attention_block_kv=128)
  ref = _value_and_grads(base.replace(attention_impl="xla"), q, k, v, d_out, key_mask)
  got = _value_and_grads(base.replace(attention_impl="splash"), q, k, v, d_out, key_mask)
  for name, a, b in zip(("output", "d_q", "d_k", "d_v"), got, ref):
    scale = float(jnp.max(jnp.abs(b)))
    assert float(jnp.max(jnp.abs(a - b))) <= 2e-5 * scale, name  # fp32: summation order only


def test_splash_attention_sharded_over_batch_and_heads_equals_one_device():
  if len(jax.devices()) < 4:
    pytest.skip("needs 4 (simulated) devices")
  q, k, v, d_out, key_mask = _inputs(4, 2)
  config = ModelConfig(d_model=256, n_heads=4, n_kv_heads=2, attention_impl="splash", attention_block_q=128,
                       attention_block_kv=128)
  single = _value_and_grads(config, q, k, v, d_out, key_mask)
  mesh = sharding.make_mesh(data=1, fsdp=2, tensor=2, devices=jax.devices()[:4])
  with jax.set_mesh(mesh):
    sharded = jax.jit(lambda *a: _value_and_grads(config, *a))(q, k, v, d_out, key_mask)
  for a, b in zip(sharded, single):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_splash_logits_equal_the_xla_logits():
  config = ModelConfig(d_model=128, n_heads=4, n_kv_heads=2, n_layers=2, mlp_hidden_size=256, vocab_size=512,
                       embedding_size=512, mask_token_id=500, eos_token_id=1, pad_token_id=1,
                       attention_block_q=128, attention_block_kv=128)
  params = model_lib.init_params(config.replace(attention_impl="xla"), jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (2, 150), 0, 512)
  mask = jnp.arange(150)[None, :] >= jnp.array([[0], [20]])
  ref = model_lib.apply(params, tokens, mask, config=config.replace(attention_impl="xla"))
  got = model_lib.apply(params, tokens, mask, config=config.replace(attention_impl="splash"))
  assert float(jnp.max(jnp.abs(got - ref))) <= 1e-5 * float(jnp.max(jnp.abs(ref)))


# One layer, 2 query heads on 1 kv head: every length below 128 pads to one splash block, so all programs of these
# tests share one kernel.
TINY = ModelConfig(d_model=64, n_heads=2, n_kv_heads=1, n_layers=1, mlp_hidden_size=64, vocab_size=64,
                   embedding_size=64, mask_token_id=63, eos_token_id=1, pad_token_id=1)


def test_two_splash_programs_of_one_shape_in_one_process_equal_the_xla_path():
  """Issue 30: the kernel is cached per shape and built inside the first program's trace; the second program (here
  logits without a key mask after logits with one) must not receive the first trace's tables as tracers."""
  params = model_lib.init_params(TINY, jax.random.key(0))
  tokens = np.random.default_rng(0).integers(2, 60, (2, 24))
  mask = np.arange(24)[None, :] >= np.array([[0], [5]])
  splash, xla = (LLaDAModel(TINY.replace(attention_impl=impl), params) for impl in ("splash", "xla"))
  ops._splash_kernel.cache_clear()  # so that the first program below builds the kernel, whatever ran before
  for attention_mask in (mask, None):
    ref = xla.logits(tokens, attention_mask)
    got = splash.logits(tokens, attention_mask)
    assert float(jnp.max(jnp.abs(got - ref))) <= 1e-5 * float(jnp.max(jnp.abs(ref)))


def test_a_train_step_an_eval_step_and_a_sampler_block_share_one_splash_kernel():
  """What a run does on TPU, where "auto" is splash: compile the train step, the eval step and the sampler's blocks
  in one process, all of one attention shape here. The losses equal the XLA path's."""
  train_cfg = TrainConfig(warmup_steps=1)
  optimizer = optim.make_optimizer(train_cfg)
  state = train.init_state(TINY, optimizer, 0)
  batch = {"tokens": jnp.asarray(np.random.default_rng(0).integers(2, 60, (2, 24)), jnp.int32)}
  ops._splash_kernel.cache_clear()  # so that the train step builds the kernel, whatever ran before
  losses = {}
  for impl in ("splash", "xla"):
    config = TINY.replace(attention_impl=impl)
    new_state, metrics = jax.jit(train.make_train_step(config, train_cfg, optimizer))(state, batch)
    eval_loss = jax.jit(train.make_eval_step(config, train_cfg))(new_state["params"], batch, 0)
    losses[impl] = (float(metrics["loss"]), float(eval_loss))
  np.testing.assert_allclose(losses["splash"], losses["xla"], rtol=1e-5)
  out = sampler.generate(new_state["params"], batch["tokens"][:, :6], config=TINY.replace(attention_impl="splash"),
                         steps=4, gen_length=8, block_length=8)
  np.testing.assert_array_equal(np.asarray(out.tokens[:, :6]), batch["tokens"][:, :6])
  assert out.tokens.shape == (2, 14) and out.nfe == 4


def test_auto_is_the_xla_path_on_cpu():
  assert jax.default_backend() != "cpu" or ops.resolve_attention_impl(ModelConfig()) == "xla"


def _masks(batch=3):
  """Keys a run hands to attention: a right cut (pre-training's random length), left padding (sampling and eval
  batches) and a scattered mask (none of ours, but any key mask must work)."""
  positions = np.arange(LENGTH)[None, :]
  cut, left = positions < np.array([[LENGTH], [123], [LENGTH]]), positions >= np.array([[0], [0], [37]])
  scattered = np.random.default_rng(1).random((batch, LENGTH)) < 0.7
  return {"cut": jnp.asarray(cut & left), "scattered": jnp.asarray(scattered | (positions == 0))}


@pytest.mark.parametrize("heads,kv_heads,causal,queries,mask", [
    (4, 4, False, LENGTH, "cut"), (4, 2, False, LENGTH, "scattered"), (4, 1, True, LENGTH, "cut"),
    (4, 2, True, LENGTH, "scattered"), (4, 2, False, 32, "cut"), (4, 4, False, LENGTH, None)])
def test_the_masking_rule_handed_to_cudnn_equals_the_xla_path(heads, kv_heads, causal, queries, mask):
  """cudnn_attention's operands (keys reordered, per-row lengths) through JAX's reference of cuDNN's semantics equal
  the XLA path's key mask, values and gradients, at every query that has a valid key (padded queries are unread)."""
  q, k, v, d_out, _ = _inputs(heads, kv_heads, batch=3)
  q, d_out = q[:, LENGTH - queries:], d_out[:, LENGTH - queries:]  # a cached call: the last few queries
  key_mask = None if mask is None else _masks()[mask]

  def both(fn):
    out, vjp = jax.vjp(fn, q, k, v)
    return (out, *vjp(d_out if key_mask is None else d_out * key_mask[:, LENGTH - queries:, None, None]))

  rule = both(lambda q, k, v: ops.cudnn_attention(q, k, v, key_mask, causal, implementation="xla"))
  ref = both(lambda q, k, v: ops._xla_attention(q, k, v, key_mask, causal))
  rows = np.ones((3, queries), bool) if key_mask is None else np.asarray(key_mask[:, LENGTH - queries:])
  for got, want in zip(rule, ref):
    if got.shape[1] == queries:
      got, want = np.asarray(got)[rows], np.asarray(want)[rows]
    np.testing.assert_allclose(got, want, atol=2e-5 * float(np.abs(want).max()))


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="the cuDNN attention kernel needs an NVIDIA GPU")
def test_cudnn_attention_equals_the_xla_path():
  q, k, v, _, key_mask = (a.astype(jnp.bfloat16) if a.dtype == jnp.float32 else a for a in _inputs(8, 2))
  config = ModelConfig(d_model=512, n_heads=8, n_kv_heads=2, dtype="bfloat16")
  ref = ops.attention(q, k, v, key_mask, config.replace(attention_impl="xla")).astype(jnp.float32)
  fast = ops.attention(q, k, v, key_mask, config.replace(attention_impl="cudnn")).astype(jnp.float32)
  np.testing.assert_allclose(fast, ref, atol=2e-2)


def test_load_pretrained_selects_the_kernel(tmp_path):
  import llada_jax
  from llada_jax.errors import UserError
  from test_checkpoint import _save_params
  _save_params(tmp_path / "ckpt")
  assert llada_jax.load_pretrained(str(tmp_path / "ckpt")).config.attention_impl == "auto"
  assert llada_jax.load_pretrained(str(tmp_path / "ckpt"), attention_impl="splash").config.attention_impl == "splash"
  with pytest.raises(UserError, match="attention_impl='flash' is not one of auto, xla, cudnn, splash"):
    llada_jax.load_pretrained(str(tmp_path / "ckpt"), attention_impl="flash")
