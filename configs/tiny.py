"""tiny: the CPU default — trains on the built-in Shakespeare corpus in under 10 minutes on 2 cores.

d 128, 4 heads, 4 layers, mlp 384, vocab 8192 (the built-in sentencepiece tokenizer), batch 16 × 256 tokens.
"""

from llada_jax.config import base_config


def get_config():
  cfg = base_config()
  cfg.model.update(d_model=128, n_heads=4, n_kv_heads=4, n_layers=4, mlp_hidden_size=384, vocab_size=8192,
                   embedding_size=8192, max_sequence_length=4096, rope_theta=10000.0, weight_tying=False,
                   bos_token_id=1, eos_token_id=2, pad_token_id=2, mask_token_id=3, eot_token_id=6)
  cfg.data.update(source="builtin", seq_len=256, global_batch=16)
  cfg.train.update(steps=450, lr=2e-3, warmup_steps=45, decay_fraction=0.2, final_lr=1e-4, eval_every=50,
                   eval_batches=4, log_every=10, checkpoint_every=150)
  return cfg
