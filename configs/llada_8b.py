"""LLaDA-8B exactly as released (docs/design.md §1): fp32 master weights, bf16 compute."""

from llada_jax.config import base_config


def get_config():
  cfg = base_config()  # the ModelConfig defaults are the official 8B values
  # On a v5e-256 at 1 × 4096 tokens per chip (with the chunked loss below), saving only q/k/v needs 8.74 GiB of 16;
  # save_dots 15.72 (no headroom), save_qkv_out_proj 9.74. For more sequences per chip use full (4 × 4096: 10.27)
  # or offload_layer_input (4 × 4096: 5.13). `llada-jax plan --config configs/llada_8b.py --topology v5e:16x16
  # --seq-len 4096 --fit --policies full,save_qkv_proj,save_dots` (README, Plans).
  cfg.model.update(param_dtype="float32", dtype="bfloat16", remat_policy="save_qkv_proj")
  # The logits of 1 × 4096 tokens are 126464 wide: computing head + loss 1024 positions at a time is what lets full
  # remat fit 4 × 4096 per chip (10.27 GiB; 17.08 unchunked).
  cfg.train.loss_chunk_length = 1024
  return cfg
