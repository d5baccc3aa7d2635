"""HF ⇄ llada-jax conversion: bit-exact round trips, every input layout, and refusals that write nothing."""

import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import SPEC_8B_CONFIG, tiny_hf_config, write_hf_dir
from llada_jax import checkpoint, convert
from llada_jax.errors import UserError


def _hf_state(path):
  with open(os.path.join(path, "model.safetensors.index.json")) as f:
    files = set(json.load(f)["weight_map"].values())
  state = {}
  for file in files:
    state.update(load_file(os.path.join(path, file)))
  return state


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("layout", ["sharded", "single", "bin"])
def test_round_trip_is_bit_exact(tmp_path, dtype, layout):
  hf_config = tiny_hf_config(n_kv_heads=2)
  src, ref = write_hf_dir(tmp_path / "src", hf_config, seed=5, dtype=dtype, layout=layout)
  convert.hf_to_jax(src, str(tmp_path / "jax"))
  files, _ = convert.jax_to_hf(str(tmp_path / "jax"), str(tmp_path / "out"), max_shard_size="40KB")
  assert len(files) > 1 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
  out = _hf_state(tmp_path / "out")
  expected = ref.state_dict()
  assert set(out) == set(expected)
  for name, tensor in expected.items():
    assert out[name].dtype == tensor.dtype
    assert torch.equal(out[name].view(torch.int16 if dtype == "bfloat16" else torch.int32),
                       tensor.contiguous().view(torch.int16 if dtype == "bfloat16" else torch.int32)), name


def test_exported_directory_loads_into_the_reference_and_keeps_every_config_key(tmp_path):
  from llada_jax.torch_reference import TorchLLaDA
  hf_config = tiny_hf_config(weight_tying=True)
  src, ref = write_hf_dir(tmp_path / "src", hf_config, seed=6)
  convert.hf_to_jax(src, str(tmp_path / "jax"))
  convert.jax_to_hf(str(tmp_path / "jax"), str(tmp_path / "out"))
  with open(tmp_path / "out" / "config.json") as f:
    exported = json.load(f)
  assert set(SPEC_8B_CONFIG) <= set(exported)
  for key in ("d_model", "n_heads", "n_kv_heads", "n_layers", "mlp_hidden_size", "vocab_size", "embedding_size",
              "mask_token_id", "eos_token_id", "pad_token_id", "weight_tying", "rope_theta"):
    assert exported[key] == hf_config[key], key
  with open(tmp_path / "out" / "generation_config.json") as f:
    assert json.load(f)["eos_token_id"] == hf_config["eos_token_id"]
  reloaded = TorchLLaDA(exported)
  reloaded.load_state_dict(_hf_state(tmp_path / "out"), strict=True)
  tokens = torch.randint(0, hf_config["vocab_size"], (2, 9))
  assert torch.equal(reloaded(tokens), ref(tokens))


def test_dtype_cast_on_conversion(tmp_path):
  src, ref = write_hf_dir(tmp_path / "src", tiny_hf_config(), seed=7)
  config, _ = convert.hf_to_jax(src, str(tmp_path / "jax"), dtype="bfloat16")
  assert config.param_dtype == "bfloat16"
  layered = checkpoint.restore_layered(str(tmp_path / "jax"), config, as_numpy=True)
  want = ref.state_dict()["model.transformer.wte.weight"].to(torch.bfloat16).float().numpy()
  np.testing.assert_array_equal(np.asarray(layered["wte"], np.float32), want)


def _expect_refusal(tmp_path, src, match, **kwargs):
  out = tmp_path / "never"
  with pytest.raises(UserError, match=match):
    convert.hf_to_jax(str(src), str(out), **kwargs)
  assert not out.exists()
  assert not [p for p in os.listdir(tmp_path) if p.startswith(".llada-jax-")]  # no half-written temp dirs


def test_refuses_a_directory_without_config(tmp_path):
  (tmp_path / "empty").mkdir()
  _expect_refusal(tmp_path, tmp_path / "empty", "no config.json")


def test_refuses_a_missing_shard(tmp_path):
  src, _ = write_hf_dir(tmp_path / "src", tiny_hf_config())
  os.remove(os.path.join(src, "model-00002-of-00002.safetensors"))
  _expect_refusal(tmp_path, src, "shard model-00002-of-00002.safetensors .* is missing")


def test_refuses_a_shape_mismatch(tmp_path):
  src, _ = write_hf_dir(tmp_path / "src", tiny_hf_config())
  with open(os.path.join(src, "config.json")) as f:
    cfg = json.load(f)
  with open(os.path.join(src, "config.json"), "w") as f:
    json.dump(dict(cfg, mlp_hidden_size=128), f)
  _expect_refusal(tmp_path, src, r"has shape .* config.json implies")


@pytest.mark.parametrize("change,match", [
    ({"alibi": True}, "alibi"), ({"include_bias": True}, "include_bias"),
    ({"layer_norm_type": "default"}, "layer_norm_type"), ({"activation_type": "gelu"}, "activation_type"),
    ({"attention_layer_norm": True}, "attention_layer_norm"), ({"residual_dropout": 0.1}, "residual_dropout"),
    ({"model_type": "llama"}, "not an LLaDA checkpoint")])
def test_refuses_config_values_we_do_not_implement(tmp_path, change, match):
  src, _ = write_hf_dir(tmp_path / "src", tiny_hf_config())
  with open(os.path.join(src, "config.json"), "w") as f:
    json.dump(tiny_hf_config(**change), f)
  _expect_refusal(tmp_path, src, match)


def test_refuses_extra_tensors_and_unrepresentable_dtypes(tmp_path):
  from safetensors.torch import save_file
  src, ref = write_hf_dir(tmp_path / "src", tiny_hf_config(), layout="single")
  state = dict(ref.state_dict())
  state["model.transformer.blocks.0.q_proj.bias"] = torch.zeros(64)
  save_file(state, os.path.join(src, "model.safetensors"))
  _expect_refusal(tmp_path, src, "does not have")
  del state["model.transformer.blocks.0.q_proj.bias"]
  state["model.transformer.wte.weight"] = state["model.transformer.wte.weight"] * 1e6  # beyond float16's range
  save_file(state, os.path.join(src, "model.safetensors"))
  _expect_refusal(tmp_path, src, "overflows float16", dtype="float16")


def test_refuses_a_corrupt_checkpoint(tmp_path):
  src, _ = write_hf_dir(tmp_path / "src", tiny_hf_config())
  convert.hf_to_jax(src, str(tmp_path / "jax"))
  damaged = 0
  for root, _, files in os.walk(tmp_path / "jax" / "params" / "wte"):
    for f in files:
      with open(os.path.join(root, f), "wb") as fh:
        fh.write(b"garbage")
      damaged += 1
  assert damaged
  with pytest.raises(UserError, match="corrupt"):
    convert.jax_to_hf(str(tmp_path / "jax"), str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()
