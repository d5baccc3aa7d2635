"""The `load_pretrained` facade: both source formats, both save formats, and sharded loading."""

import numpy as np
import pytest

from conftest import tiny_hf_config, write_hf_dir
from llada_jax import load_pretrained, sharding
from llada_jax.errors import UserError


def test_hf_and_jax_formats_load_to_the_same_model(tmp_path):
  src, _ = write_hf_dir(tmp_path / "hf", tiny_hf_config(n_kv_heads=2), seed=8)
  model = load_pretrained(src)
  tokens = np.arange(24).reshape(2, 12) % 120
  expected = np.asarray(model.logits(tokens))
  model.save_pretrained(str(tmp_path / "jax"), format="jax")
  model.save_pretrained(str(tmp_path / "hf2"), format="hf", max_shard_size="100KB")
  for path in ("jax", "hf2"):
    again = load_pretrained(str(tmp_path / path))
    assert again.config == model.config
    np.testing.assert_array_equal(np.asarray(again.logits(tokens)), expected)


def test_sharded_load_gives_the_same_logits(tmp_path):
  src, _ = write_hf_dir(tmp_path / "hf", tiny_hf_config(), seed=9)
  tokens = np.arange(48).reshape(8, 6) % 120
  expected = np.asarray(load_pretrained(src).logits(tokens))
  mesh = sharding.make_mesh(2, 2, 2)
  model = load_pretrained(src, mesh=mesh)
  assert len(model.params["blocks"]["q_proj"].sharding.device_set) == 8
  np.testing.assert_allclose(np.asarray(model.logits(tokens)), expected, atol=2e-5)


def test_load_errors(tmp_path):
  with pytest.raises(UserError, match="does not exist"):
    load_pretrained(str(tmp_path / "missing"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(UserError, match="neither a llada-jax checkpoint .* nor a Hugging Face LLaDA directory"):
    load_pretrained(str(tmp_path / "empty"))
  src, _ = write_hf_dir(tmp_path / "hf", tiny_hf_config())
  with pytest.raises(UserError, match="format must be"):
    load_pretrained(src).save_pretrained(str(tmp_path / "x"), format="onnx")
