"""tiny_sft: the tiny model fine-tuned on the ~2.3k question/answer pairs of the chatterbot-corpus package.

Starts from the weights and tokenizer of a `configs/tiny.py` run in runs/tiny (override train.init_from).
"""

import importlib.util
import os

_TINY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny.py")


def get_config():
  spec = importlib.util.spec_from_file_location("tiny_config", _TINY)
  tiny = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(tiny)
  cfg = tiny.get_config()
  cfg.data.update(source="chatterbot", seq_len=128, global_batch=16, overlong="truncate")
  # SFT masks with its own noise (the prompt kept): the tiny default's paired-count pre-training masks do not apply.
  cfg.train.update(objective="sft", masking="bernoulli", init_from="runs/tiny", steps=300, lr=5e-4, warmup_steps=20,
                   decay_fraction=0.1, final_lr=5e-5, eval_every=50, checkpoint_every=150,
                   sample_prompt="What is your name?")
  return cfg
