"""LLaDA-1B of the paper's scaling study (Table 5): 22 layers, d 2048, 32 heads with 4 kv heads, FFN 5634."""

from llada_jax.config import base_config


def get_config():
  cfg = base_config()
  # save_dots on a v5e-16 (v5e:4x4) at 1 × 4096 tokens per chip: 6.42 GiB of 16 (README, Plans).
  cfg.model.update(d_model=2048, n_heads=32, n_kv_heads=4, n_layers=22, mlp_hidden_size=5634,
                   param_dtype="float32", dtype="bfloat16", remat_policy="save_dots")
  cfg.train.loss_chunk_length = 1024  # the 126464-wide logits, 1024 positions at a time (see configs/llada_8b.py)
  return cfg
