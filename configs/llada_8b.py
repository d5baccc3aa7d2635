"""LLaDA-8B exactly as released (LLADA_SPEC §1): fp32 master weights, bf16 compute."""

from llada_jax.config import base_config


def get_config():
  cfg = base_config()  # the ModelConfig defaults are the official 8B values
  # save_dots does not fit a v5e-256 at 1 × 4096 tokens per chip (17.03 GiB of 16); saving only q/k/v does (11.98):
  # `llada-jax plan --config configs/llada_8b.py --topology v5e:16x16 --per-device-batch 1 --seq-len 4096`.
  cfg.model.update(param_dtype="float32", dtype="bfloat16", remat_policy="save_qkv_proj")
  # The logits of 1 × 4096 tokens are 126464 wide: computing head + loss 1024 positions at a time is what lets full
  # remat fit 4 × 4096 per chip (10.27 GiB; 17.08 unchunked).
  cfg.train.loss_chunk_length = 1024
  return cfg
