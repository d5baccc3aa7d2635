"""tiny: the CPU default — trains in minutes on 2 cores (d 128, 4 heads, 4 layers, vocab 8192, 16 × 256)."""

from llada_jax.config import base_config


def get_config():
  cfg = base_config()
  cfg.model.update(d_model=128, n_heads=4, n_kv_heads=4, n_layers=4, mlp_hidden_size=384, vocab_size=8192,
                   embedding_size=8192, max_sequence_length=1024, rope_theta=10000.0, weight_tying=False,
                   bos_token_id=1, eos_token_id=2, pad_token_id=2, mask_token_id=3, eot_token_id=6)
  return cfg
