"""Shared test setup: 8 simulated CPU devices (set before jax is imported) and tiny configs."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# TPU programs are only compiled here, in this process and in the CLI's subprocesses: libtpu's one-process lock
# (meant for a host's real chips) would refuse the second.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC_8B_CONFIG = {
    "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0, "architectures": ["LLaDAModelLM"],
    "attention_dropout": 0.0, "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
    "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig",
                 "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM", "AutoModel": "modeling_llada.LLaDAModelLM"},
    "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama", "d_model": 4096,
    "embedding_dropout": 0.0, "embedding_size": 126464, "eos_token_id": 126081, "flash_attention": False,
    "include_bias": False, "include_qkv_bias": False, "init_cutoff_factor": None, "init_device": "meta",
    "init_fn": "mitchell", "init_std": 0.02, "input_emb_norm": False, "layer_norm_type": "rms",
    "layer_norm_with_affine": True, "mask_token_id": 126336, "max_sequence_length": 4096, "mlp_hidden_size": 12288,
    "mlp_ratio": 4, "model_type": "llada", "multi_query_attention": None, "n_heads": 32, "n_kv_heads": 32,
    "n_layers": 32, "pad_token_id": 126081, "precision": "amp_bf16", "residual_dropout": 0.0, "rms_norm_eps": 1e-05,
    "rope": True, "rope_full_precision": True, "rope_theta": 500000.0, "scale_logits": False, "use_cache": False,
    "vocab_size": 126464, "weight_tying": False}


def tiny_hf_config(**changes) -> dict:
  """The official 8B config.json scaled down to a few-second test model (fp32, mask id inside the vocab)."""
  cfg = dict(SPEC_8B_CONFIG, d_model=64, n_heads=4, n_kv_heads=4, n_layers=2, mlp_hidden_size=96, vocab_size=120,
             embedding_size=128, max_sequence_length=256, rope_theta=10000.0, mask_token_id=126, eos_token_id=125,
             pad_token_id=125, bos_token_id=124, eot_token_id=123)
  cfg.update(changes)
  return cfg


@pytest.fixture
def small_disk(tmp_path):
  """A 7 MiB tmpfs: room for a tokenizer, the compilation cache and one checkpoint of the small test runs (about
  4.2 MB each with the tiny vocabulary of 8192; the workdir holds about 5 MB with one, 9.2 MB with two), not two."""
  import subprocess
  mount = tmp_path / "disk"
  mount.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=7m", "tmpfs", str(mount)], capture_output=True).returncode:
    pytest.skip("mounting a tmpfs needs root")
  yield mount
  subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.fixture
def tiny_config():
  return tiny_hf_config


def write_hf_dir(path, hf_config: dict, seed: int = 0, dtype: str = "float32", layout: str = "sharded", edit=None):
  """An HF-format LLaDA directory written by the independent PyTorch reference; returns (path, torch model).

  layout: "sharded" (two safetensors shards + index), "single" (model.safetensors) or "bin" (pytorch_model.bin).
  edit: optional function changing the torch model's weights in place before they are saved.
  """
  import json

  import torch
  from safetensors.torch import save_file
  from llada_jax.torch_reference import TorchLLaDA, mitchell_init_

  model = mitchell_init_(TorchLLaDA(hf_config), seed).to(getattr(torch, dtype))
  if edit is not None:
    with torch.no_grad():
      edit(model)
  state = {k: v.contiguous() for k, v in model.state_dict().items()}
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(hf_config, f)
  if layout == "bin":
    torch.save(state, os.path.join(path, "pytorch_model.bin"))
  elif layout == "single":
    save_file(state, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
  else:
    names = list(state)
    halves = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for file, keys in halves.items():
      save_file({k: state[k] for k in keys}, os.path.join(path, file), metadata={"format": "pt"})
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
      json.dump({"metadata": {}, "weight_map": {k: file for file, keys in halves.items() for k in keys}}, f)
  return str(path), model
