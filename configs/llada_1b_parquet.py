"""LLaDA-1B (configs/llada_1b.py) pre-trained from raw corpora streamed on every host (data.source=stream): a
weighted mixture of web text and code in Parquet and math in zstd JSONL, tokenized with the LLaDA tokenizer while
training. Point the paths at your buckets and data.tokenizer at an HF LLaDA directory (or any tokenizer.json with
LLaDA's special tokens); docs/usage.md ("Pod-scale input") has its plans.

  llada-jax plan --config configs/llada_1b_parquet.py --topology v5e:8x8 --mesh fsdp=64       # fits: 6.03 of 16 GiB
  llada-jax bench data --config configs/llada_1b_parquet.py --workers 4,8,16 --host v5e:4
"""

import importlib.util
import os

_ONE_B = os.path.join(os.path.dirname(os.path.abspath(__file__)), "llada_1b.py")


def get_config():
  spec = importlib.util.spec_from_file_location("llada_1b_config", _ONE_B)
  one_b = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(one_b)
  cfg = one_b.get_config()
  # 4 × 4096 tokens per chip on a v5e-64 (the batch below): full remat needs 6.03 GiB of 16, save_dots 16.45 (no fit).
  cfg.model.remat_policy = "full"
  cfg.data.update(
      source="stream",
      streams=(dict(name="web", paths="gs://my-bucket/corpora/web/*.parquet", field="text", weight=0.7),
               dict(name="code", paths="gs://my-bucket/corpora/code/*.parquet", field="content", weight=0.2),
               dict(name="math", paths="gs://my-bucket/corpora/math/*.jsonl.zst", field="text", weight=0.1)),
      val_paths="gs://my-bucket/corpora/val/*.parquet",
      tokenizer="gs://my-bucket/tokenizers/llada",
      seq_len=4096, global_batch=256,  # 1M tokens per optimizer step
      # 8 one-core workers per host, each reading 16 row groups at once, documents shuffled 4096 at a time.
      num_workers=8, cycle_length=16, shuffle_window=4096)
  return cfg
