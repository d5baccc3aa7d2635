"""FLOP counting and peak lookup: hand-counted numbers for a small network."""

import math
import os
import types

import jax

from llada_jax import flops
from llada_jax.config import DataConfig, Experiment, ModelConfig, TrainConfig


def test_train_flops_per_token_counts_every_matmul_and_full_attention():
  config = ModelConfig(d_model=64, n_heads=4, n_kv_heads=2, n_layers=2, mlp_hidden_size=128, vocab_size=256,
                       embedding_size=256, max_sequence_length=64, mask_token_id=3, eos_token_id=2, pad_token_id=2,
                       bos_token_id=1, eot_token_id=4)
  # Per layer: q, o (64 × 64), k, v (64 × 32), three MLP matrices (64 × 128) and two norm vectors; a final norm;
  # the head 64 × 256. Attention: QKᵀ and PV, 2 · 2 · 32 keys · 64 dims per query per layer.
  layer = 2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128 + 2 * 64
  params = 2 * layer + 64 + 64 * 256
  attention = 2 * 2 * 2 * 32 * 64
  assert flops.train_flops_per_token(config, seq_len=32) == 3 * (2 * params + attention)
  # train.masking=paired_counts runs the head on 33 of every 64 positions (a pair of rows masks at most 33 tokens).
  assert flops.train_flops_per_token(config, 32, 33 / 64) == 3 * (2 * (params - 64 * 256 * 31 / 64) + attention)
  exp = Experiment(model=config, data=DataConfig(seq_len=32, global_batch=4), train=TrainConfig())
  assert flops.train_flops_per_step(exp) == 4 * 32 * flops.train_flops_per_token(config, 32)
  paired = exp.replace(train=TrainConfig(masking="paired_counts"))
  assert flops.train_flops_per_step(paired) == 4 * 32 * flops.train_flops_per_token(config, 32, 33 / 64)


def test_kernel_counts():
  assert flops.projection(10, 3, 5) == 300
  assert flops.attention(2, 8, 4, 16) == 2 * 2 * (2 * 4 * 8) * 16 * 8


def test_peak_flops_by_device_kind():
  device = lambda kind, platform: types.SimpleNamespace(device_kind=kind, platform=platform)
  assert flops.peak_flops(device("TPU v5 lite", "tpu")) == 197e12
  assert flops.peak_flops(device("NVIDIA H100 80GB HBM3", "gpu")) == 989e12
  assert math.isnan(flops.peak_flops(device("Some Future Chip", "gpu")))
  cores = len(os.sched_getaffinity(0))
  assert flops.peak_flops(jax.devices("cpu")[0]) == flops.CPU_CORE_FLOPS * cores / jax.local_device_count("cpu")
