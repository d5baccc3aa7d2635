"""small: the CPU benchmark size (d 512, 8 heads, 8 layers, mlp 1536, vocab 8192, batch 8 × seq 512)."""

from llada_jax.config import base_config


def get_config():
  cfg = base_config()
  cfg.model.update(d_model=512, n_heads=8, n_kv_heads=8, n_layers=8, mlp_hidden_size=1536, vocab_size=8192,
                   embedding_size=8192, max_sequence_length=4096, rope_theta=10000.0, weight_tying=False,
                   bos_token_id=1, eos_token_id=2, pad_token_id=2, mask_token_id=3, eot_token_id=6)
  # Unrolled layers: in XLA:CPU's backward scan every saved activation is copied out of a stacked buffer, which at
  # this size cost more (5.5 vs 4.2 s/step, `llada-jax bench train`) than the longer compile; at tiny, the scan wins.
  cfg.model.update(scan_layers=False)
  cfg.data.update(source="builtin", seq_len=512, global_batch=8)
  cfg.train.update(steps=2000, lr=1e-3, warmup_steps=100, final_lr=1e-4, eval_every=200, checkpoint_every=500)
  return cfg
