"""reversal: `llada-jax experiment reversal` — LLaDA and its autoregressive twin on the reversal curse.

Both models use this config; the experiment sets model.causal and train.objective for the twin, so they share
size, data, batch, steps and optimiser. The reversal section describes the data (llada_jax/reversal.py).
"""

import ml_collections

from llada_jax.config import base_config


def get_config():
  cfg = base_config()
  cfg.model.update(d_model=128, n_heads=4, n_kv_heads=4, n_layers=4, mlp_hidden_size=384, vocab_size=4096,
                   embedding_size=4096, max_sequence_length=512, rope_theta=10000.0, weight_tying=False,
                   bos_token_id=1, eos_token_id=2, pad_token_id=2, mask_token_id=3, eot_token_id=6)
  # The built-in Shakespeare tokenizer at 4096 ids (the tiny default's until issue 13): names are made of its
  # whole-word tokens.
  # Masked diffusion learns each conditional from a fraction of its examples, so memorising pairs takes many
  # updates: batch 16 beat batch 32 for the same tokens (LLaDA forward 96% vs 66% on 100 pairs, one phrasing).
  # 3000 steps memorise the 60 pairs and keep the command well inside 20 minutes on a slow day. The README's
  # *The reversal curse* lists every setting tried.
  cfg.data.update(source="jsonl", tokenizer_vocab_size=4096, seq_len=64, global_batch=16, val_fraction=0.0)
  cfg.train.update(steps=3000, lr=2e-3, warmup_steps=100, decay_fraction=0.2, final_lr=1e-4, antithetic_t=True,
                   random_length_prob=0.0, eval_every=0, log_every=20, checkpoint_every=3000, sample_after=False)
  cfg.reversal = ml_collections.ConfigDict(dict(
      pairs=60,  # test pairs: written only forwards, asked both ways
      format_pairs=60,  # written both ways: they teach the two question formats
      name_tokens=2,  # word tokens per name
      copies=20,  # times the lines are written, each time reshuffled
      phrasings=3,  # forward statements of each pair (reversal.STATEMENTS): with one, LLaDA does not transfer
      seed=0,
      threshold=0.9,  # LLaDA's extra column: threshold decoding
      bootstrap=1000,  # resamples for the 95% intervals
  ))
  return cfg
