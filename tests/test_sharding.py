"""Logical-axis rules on a simulated 8-device mesh: every shipped config lowers sharded, and sharding is exact."""

import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, tiny_hf_config
from llada_jax import config as config_lib, sharding
from llada_jax import model as model_lib
from llada_jax.hf_config import from_hf_config
from llada_jax.errors import UserError


@pytest.mark.parametrize("mesh_shape", [(1, 8, 1), (2, 2, 2)])
@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "configs", "*.py"))))
def test_every_config_lowers_on_an_8_device_mesh(path, mesh_shape):
  """Abstract inputs only: the 8B forward is traced and lowered sharded without allocating it."""
  config = config_lib.model_config_from(config_lib.load_config_file(path))
  mesh = sharding.make_mesh(*mesh_shape)
  params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        model_lib.abstract_params(config), model_lib.param_shardings(config, mesh))
  tokens = jax.ShapeDtypeStruct((8, 128), jnp.int32, sharding=sharding.named_sharding(
      mesh, ("activation_batch", "activation_length"), (8, 128)))
  with jax.set_mesh(mesh):
    lowered = jax.jit(model_lib.apply, static_argnames="config").lower(params, tokens, config=config)
  assert "sharding" in lowered.as_text()
  out = jax.eval_shape(lambda p, t: model_lib.apply(p, t, config=config), params, tokens)
  assert out.shape == (8, 128, config.embedding_size)


def test_fsdp_and_tensor_parallel_forward_equals_single_device():
  config = from_hf_config(tiny_hf_config(n_kv_heads=2))
  params = model_lib.init_params(config, jax.random.key(0))
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 120, (8, 16)))
  expected = model_lib.apply(params, tokens, config=config)
  for shape in [(1, 8, 1), (2, 2, 2), (1, 4, 2)]:
    mesh = sharding.make_mesh(*shape)
    placed = jax.device_put(params, model_lib.param_shardings(config, mesh))
    with jax.set_mesh(mesh):
      got = jax.jit(model_lib.apply, static_argnames="config")(placed, tokens, config=config)
    np.testing.assert_allclose(got, expected, atol=2e-5, rtol=1e-5)


def test_rules_shard_fsdp_and_tensor_axes_and_replicate_what_does_not_divide():
  config = from_hf_config(tiny_hf_config(n_kv_heads=1))
  mesh = sharding.make_mesh(1, 4, 2)
  shardings = model_lib.param_shardings(config, mesh)
  assert shardings["blocks"]["q_proj"].spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
  assert shardings["blocks"]["k_proj"].spec == jax.sharding.PartitionSpec(None, "fsdp", None, None)  # 1 kv head
  assert shardings["wte"].spec == jax.sharding.PartitionSpec("tensor", "fsdp")


def test_mesh_errors_name_the_fix():
  with pytest.raises(UserError, match="product is the device count"):
    sharding.make_mesh(2, 2, 1)
  with pytest.raises(UserError, match="does not divide 8 devices"):
    sharding.make_mesh(3, -1, 1)
