"""Every jitted program of llada-jax compiled ahead of time for accelerators that are not here: 8 H100s (through
JAX's CUDA plugin, cuDNN attention) and a v5e 2x2 slice (through libtpu, splash attention), at the 8B's widths with
two layers so each compile takes seconds. All programs of both targets compile in this one process, which is how a
real run uses them (a kernel cache that leaked a tracer would fail here). Each target skips, saying why, where its
compiler is not installed; CI installs both.
"""

import functools
import importlib.util

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from llada_jax import likelihood, model as model_lib, ops, optim, plan, sampler, sharding, train
from llada_jax.config import DataConfig, Experiment, ModelConfig, TrainConfig
from llada_jax.sampler import SamplingConfig

WIDE = ModelConfig(d_model=4096, n_heads=32, n_kv_heads=32, n_layers=2, mlp_hidden_size=12288, vocab_size=126464,
                   embedding_size=126464, dtype="bfloat16", remat_policy="save_qkv_proj")
SEQ, PROMPT, GEN, BLOCK = 256, 64, 64, 32
TARGETS = {
    "h100:8": (plan.has_cuda_plugin, "cudnn", "compiling for GPUs needs JAX's CUDA plugin (pip install -e "
               "'.[gpu]'); no GPU is needed"),
    "v5e:2x2": (lambda: importlib.util.find_spec("libtpu") is not None, "splash",
                "compiling for TPUs needs libtpu (pip install -e '.[tpu]'); no TPU is needed"),
}


@pytest.fixture(scope="module", params=list(TARGETS))
def target(request):
  installed, kernel, why = TARGETS[request.param]
  if not installed():
    pytest.skip(why)
  devices, _, _ = plan.devices_for(request.param)
  mesh = sharding.make_mesh(1, len(devices), 1, devices=devices)
  with jax.set_mesh(mesh):
    assert ops.resolve_attention_impl(WIDE) == kernel  # what "auto" means for those chips
  return request.param, mesh, kernel


def _compile(fn, *args, **kwargs):
  """Compiles for the target and returns the program's text (the compiled HLO)."""
  return fn.lower(*args, **kwargs).compile().as_text()


def _fused_calls(text: str, kernel: str) -> int:
  return len(plan.FUSED_ATTENTION[kernel].findall(text))


def _abstract_params(config, mesh):
  shardings = model_lib.param_shardings(config, mesh)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      model_lib.abstract_params(config), shardings)


def _rows(mesh, shape, dtype=jnp.int32):
  return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, P(("data", "fsdp"))))


def _replicated(mesh, make):
  """A scalar or key argument as the target sees it: abstract, since a concrete array made inside the target's
  mesh would be placed on chips that are not here."""
  abstract = jax.eval_shape(make)
  return jax.ShapeDtypeStruct(abstract.shape, abstract.dtype, sharding=NamedSharding(mesh, P()))


@pytest.mark.parametrize("objective", ["diffusion", "sft", "autoregressive"])
def test_train_steps_compile_with_the_fused_kernel(target, objective):
  topology, mesh, kernel = target
  config = WIDE.replace(causal=objective == "autoregressive")
  train_cfg = TrainConfig(objective=objective, masking="bernoulli", loss_chunk_length=128)
  source = "chatterbot" if objective == "sft" else "builtin"
  exp = Experiment(model=config, data=DataConfig(source=source, seq_len=SEQ, global_batch=len(mesh.devices.flat)),
                   train=train_cfg)
  step_fn, abstract, shardings = train.jit_train_step(config, train_cfg, optim.make_optimizer(train_cfg), mesh)
  with jax.set_mesh(mesh):
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    text = _compile(step_fn, state, train.abstract_batch(exp, mesh))
  # Forward and backward of both layers run the fused kernel: no [heads, L, L] scores are materialised.
  assert _fused_calls(text, kernel) >= 2, f"{topology}: no {kernel} attention in the {objective} step"


def test_the_eval_step_compiles(target):
  _, mesh, kernel = target
  train_cfg = TrainConfig(masking="bernoulli")
  eval_fn = jax.jit(train.make_eval_step(WIDE, train_cfg))
  params = _abstract_params(WIDE, mesh)  # outside set_mesh, where Flax would read logical axes as mesh axes
  with jax.set_mesh(mesh):
    text = _compile(eval_fn, params, {"tokens": _rows(mesh, (len(mesh.devices.flat), SEQ))},
                    _replicated(mesh, lambda: jnp.int32(0)))
  assert _fused_calls(text, kernel) >= 1


@pytest.mark.parametrize("decoding,cache,cfg_scale", [
    ("exact", "none", 0.0), ("exact", "none", 0.5), ("threshold", "none", 0.0), ("threshold", "prefix", 0.0),
    ("threshold", "dual", 0.0), ("factor", "dual", 0.5)])
def test_sampler_blocks_compile(target, decoding, cache, cfg_scale):
  """One block program per sampling mode, on a left-padded batch (a key mask), with and without guidance."""
  _, mesh, _ = target
  config = WIDE.for_inference()
  sampling = SamplingConfig(steps=GEN, gen_length=GEN, block_length=BLOCK, decoding=decoding, cache=cache,
                            cfg_scale=cfg_scale, mask_id=126336)
  rows = len(mesh.devices.flat)
  static = cache == "prefix"
  block_fn = sampler._sample_block_static if static else sampler._sample_block_traced
  params, block = _abstract_params(config, mesh), 1 if static else _replicated(mesh, lambda: jnp.int32(1))
  with jax.set_mesh(mesh):
    text = _compile(block_fn, params, _rows(mesh, (rows, PROMPT + GEN)),
                    _rows(mesh, (rows, PROMPT + GEN)), _rows(mesh, (rows, PROMPT + GEN), jnp.bool_),
                    _replicated(mesh, lambda: jax.random.key(0)), block, config=config, sampling=sampling,
                    prompt_length=PROMPT, window=True, return_history=False)
  assert "while" in text or decoding == "exact"  # dynamic decoding loops until the block holds no mask


def test_the_likelihood_estimator_compiles(target):
  _, mesh, kernel = target
  config = WIDE.for_inference()
  pairs, params = len(mesh.devices.flat), _abstract_params(config, mesh)
  with jax.set_mesh(mesh):
    text = _compile(likelihood._estimate_many, params, _rows(mesh, (pairs, SEQ)),
                    _rows(mesh, (pairs,)), _rows(mesh, (pairs,)),
                    _replicated(mesh, lambda: jax.random.split(jax.random.key(0), pairs)),
                    config=config, num_batches=2, batch_size=4, cfg_scale=0.5, mask_id=126336, window=None)
  assert _fused_calls(text, kernel) >= 1


def test_a_second_program_of_one_shape_compiles_in_the_same_process(target):
  """The forward of the eval step again, now without a key mask: the same attention shape in a new program."""
  _, mesh, kernel = target
  logits = jax.jit(functools.partial(model_lib.apply, config=WIDE.for_inference()))
  params = _abstract_params(WIDE.for_inference(), mesh)
  with jax.set_mesh(mesh):
    text = _compile(logits, params,
                    _rows(mesh, (len(mesh.devices.flat), SEQ)))
  assert _fused_calls(text, kernel) >= 1

