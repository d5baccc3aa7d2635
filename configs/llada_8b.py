"""LLaDA-8B exactly as released (LLADA_SPEC §1): fp32 master weights, bf16 compute."""

from llada_jax.config import base_config


def get_config():
  cfg = base_config()  # the ModelConfig defaults are the official 8B values
  cfg.model.update(param_dtype="float32", dtype="bfloat16", remat_policy="save_dots")
  return cfg
