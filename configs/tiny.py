"""tiny: the CPU default — trains on the built-in Shakespeare corpus in under 10 minutes on 2 cores.

d 96, 4 heads, 4 layers, mlp 256, vocab 4096 (the built-in byte-level BPE), batch 8 × 256 tokens, 1500 steps.

Why these numbers (measured on 2 cores; issue 13's note has the table): at this budget the model sees 3 M tokens,
so a narrower model that takes more optimizer steps learns faster per second than d 128 at batch 16, and a 4096-id
vocabulary keeps the output head from costing more than the layers. Antithetic t (evenly spread noise levels across
the batch) lowers the variance of the 1/t-weighted loss, which a batch of 8 needs. A model this small is far from
confident: greedy decoding of a whole canvas commits its most frequent tokens (newlines) everywhere, so its
sampling defaults (saved with the run, used by `generate` and `chat` on it) commit two tokens at a time left to
right, sampled at temperature 0.8.
"""

from llada_jax.config import base_config


def get_config():
  cfg = base_config()
  cfg.model.update(d_model=96, n_heads=4, n_kv_heads=4, n_layers=4, mlp_hidden_size=256, vocab_size=4096,
                   embedding_size=4096, max_sequence_length=4096, rope_theta=10000.0, weight_tying=False,
                   bos_token_id=1, eos_token_id=2, pad_token_id=2, mask_token_id=3, eot_token_id=6)
  cfg.data.update(source="builtin", tokenizer_vocab_size=4096, seq_len=256, global_batch=8)
  cfg.train.update(steps=1500, lr=5e-3, warmup_steps=100, decay_fraction=0.2, final_lr=1e-4, antithetic_t=True,
                   eval_every=100, eval_batches=8, log_every=20, checkpoint_every=500)
  cfg.sampling.update(steps=64, gen_length=64, block_length=2, temperature=0.8)
  return cfg
