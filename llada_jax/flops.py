"""FLOP counts and peak throughputs: the one place MFU (train), step-time estimates (plan) and kernel GFLOP/s
(bench) are computed from.

Counting convention: a product of (m × k) by (k × n) is 2·m·k·n FLOPs; a training pass is forward + backward =
3 × forward; attention counts QKᵀ and PV over every key (bidirectional: no causal halving).
"""

import os

import jax

from llada_jax import loss
from llada_jax.config import Experiment, ModelConfig

# Dense bf16 peak FLOP/s per device by `device_kind` prefix, for MFU; CPUs below.
PEAK_FLOPS = {"TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v5": 459e12,
              "TPU v6 lite": 918e12, "TPU v6e": 918e12, "NVIDIA H100": 989e12, "NVIDIA H200": 989e12,
              "NVIDIA A100": 312e12, "NVIDIA B200": 2250e12}
# fp32 matmul throughput per core: XLA and PyTorch reached 125-180 GFLOP/s per core with 2-thread products of the
# small config's shapes on a 2-core AVX-512 machine. An estimate: CPUs publish no peak.
CPU_CORE_FLOPS = 180e9
TRAIN_PASS = 3  # forward + backward, the backward costing two forwards


def peak_flops(device) -> float:
  """Peak FLOP/s of one device (NaN where unknown); simulated CPU devices split the process's cores."""
  kind = getattr(device, "device_kind", "cpu")
  for prefix, flops in PEAK_FLOPS.items():
    if kind.startswith(prefix):
      return flops
  if device.platform == "cpu":
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return CPU_CORE_FLOPS * cores / jax.local_device_count("cpu")
  return float("nan")


def projection(tokens: int, d_in: int, d_out: int) -> float:
  """Forward FLOPs of one dense projection over `tokens` rows."""
  return 2 * tokens * d_in * d_out


def attention(batch: int, length: int, heads: int, head_dim: int) -> float:
  """Forward FLOPs of QKᵀ and PV for every query over every key."""
  return 2 * projection(batch * heads * length, head_dim, length)


def train_flops_per_token(config: ModelConfig, seq_len: int, head_fraction: float = 1.0) -> float:
  """Forward + backward FLOPs per token of the network: every matmul parameter (the embedding lookup not) once per
  token — the output head's on `head_fraction` of the tokens (see `train_flops_per_step`) — plus full attention in
  each layer."""
  matmul_params = config.num_params(include_embeddings=False) + head_fraction * config.d_model * config.embedding_size
  per_layer_attention = attention(1, seq_len, config.n_heads, config.head_dim) / seq_len
  return TRAIN_PASS * (projection(1, 1, matmul_params) + config.n_layers * per_layer_attention)


def train_flops_per_step(exp: Experiment) -> float:
  """`train_flops_per_token` × tokens per step, the head counted where the step runs it: on every position, or with
  `train.masking=paired_counts` on `loss.paired_capacity` of every two rows' positions."""
  l = exp.data.seq_len
  head_fraction = 1.0
  if exp.train.masking == "paired_counts":
    head_fraction = loss.paired_capacity(l, exp.train.loss_chunk_length) / (2 * l)
  return exp.tokens_per_step * train_flops_per_token(exp.model, l, head_fraction)
