"""The network's kernels, chosen by `ModelConfig.attention_impl`: attention ("xla", "cudnn", "splash", "auto") and
the projections. `model.py` says what is computed; this module says how, per backend. Every attention
implementation must equal "xla" (tests/test_ops.py).
"""

import concurrent.futures
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from llada_jax import sharding
from llada_jax.config import ModelConfig


def target_platform() -> str:
  """The platform being compiled for: the current mesh's devices (which may be an ahead-of-time TPU topology while
  this process runs on CPU), else the default backend."""
  mesh = jax.sharding.get_abstract_mesh()
  device = None if mesh.empty else getattr(mesh, "abstract_device", None)
  return device.platform if device is not None else jax.default_backend()


def resolve_attention_impl(config: ModelConfig) -> str:
  """What "auto" means on the platform compiled for: splash on TPU, cuDNN flash on GPU (which has no fp32 kernel),
  the XLA path on CPU."""
  if config.attention_impl != "auto":
    return config.attention_impl
  backend = target_platform()
  if backend == "tpu":
    return "splash"
  if backend == "gpu" and config.dtype in ("bfloat16", "float16"):
    return "cudnn"
  return "xla"


def attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None,
              config: ModelConfig) -> jax.Array:
  """Scaled dot-product attention with grouped kv heads.

  q: [batch, q_len, heads, head_dim]; k, v: [batch, kv_len, kv_heads, head_dim]; key_mask: [batch, kv_len] bool,
  False for padded keys (keys only: padded queries still produce outputs, as in the official model). A query with
  no key to attend to (causal attention before the first real key) has no defined output, and the
  implementations differ there. cuDNN takes every call but a causal one with a key mask and fewer queries than
  keys (no program of ours makes one: caches are refused on causal models), which takes the XLA path.
  """
  impl = resolve_attention_impl(config)
  if impl == "cudnn" and not (config.causal and key_mask is not None and q.shape[1] != k.shape[1]):
    return cudnn_attention(q, k, v, key_mask, config.causal)
  if impl == "splash" and q.shape[1] == k.shape[1]:  # a cached sampler call's few queries gain nothing from tiling
    return _splash_attention(q, k, v, key_mask, config)
  return _xla_attention(q, k, v, key_mask, config.causal)


def cudnn_attention(q, k, v, key_mask, causal: bool, implementation: str = "cudnn") -> jax.Array:
  """cuDNN's fused flash attention for any key mask, through the one masking rule it supports: per-row lengths.

  Attention is a softmax over a *set* of keys (RoPE has already put the positions into q and k), so moving the
  valid keys of each row to the front, in their order, and passing how many there are as `key_value_seq_lengths`
  selects exactly the keys the XLA path allows: right-cut rows (pre-training's random length), left-padded
  prompts (sampling, eval batches), cached calls with fewer queries than keys, and guidance's doubled batch alike.
  Causal attention also needs the queries in the same order, so there queries move with their keys and the
  outputs move back (self-attention only: `attention` gives causal calls with fewer queries than keys the XLA
  path). Outputs of padded queries, which nothing reads, may differ from the XLA path's. `implementation="xla"`
  runs the same operands through JAX's reference of the cuDNN semantics: that is how the rule is tested on CPU.
  """
  if key_mask is None:
    return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation=implementation)
  order = jnp.argsort(~key_mask, axis=1, stable=True)  # valid keys first, in their order
  lengths = jnp.sum(key_mask, axis=1, dtype=jnp.int32)
  gather = lambda a: jnp.take_along_axis(a, order[:, :, None, None], axis=1)
  if causal:
    out = jax.nn.dot_product_attention(gather(q), gather(k), gather(v), is_causal=True,
                                       key_value_seq_lengths=lengths, implementation=implementation)
    return jnp.take_along_axis(out, jnp.argsort(order, axis=1)[:, :, None, None], axis=1)
  return jax.nn.dot_product_attention(q, gather(k), gather(v), key_value_seq_lengths=lengths,
                                      implementation=implementation)


def _xla_attention(q, k, v, key_mask, causal: bool) -> jax.Array:
  batch, q_len, heads, head_dim = q.shape
  kv_len, kv_heads = k.shape[1], k.shape[2]
  groups = heads // kv_heads
  # Query heads sharing a kv head are folded into the query-length dimension, so every product is a plain batched
  # matmul over (batch, kv_heads): markedly faster on CPU than the equivalent 5-D einsums.
  q = q.reshape(batch, q_len, kv_heads, groups, head_dim).transpose(0, 2, 3, 1, 4)
  q = q.reshape(batch, kv_heads, groups * q_len, head_dim)
  allowed = None if key_mask is None else key_mask[:, None, None, :]
  if causal:
    lower = jnp.tile(jnp.tril(jnp.ones((q_len, kv_len), bool)), (groups, 1))[None, None]
    allowed = lower if allowed is None else allowed & lower
  out = _attention_core(q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), allowed, 1.0 / math.sqrt(head_dim))
  return out.reshape(batch, kv_heads, groups, q_len, head_dim).transpose(0, 3, 1, 2, 4).reshape(
      batch, q_len, heads, head_dim)


def _masked_scores(q: jax.Array, k: jax.Array, allowed: jax.Array | None, scale: float) -> jax.Array:
  scores = jnp.matmul(q, jnp.swapaxes(k, -1, -2), preferred_element_type=jnp.float32) * scale
  return scores if allowed is None else jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _attention_core(q: jax.Array, k: jax.Array, v: jax.Array, allowed: jax.Array | None,
                    scale: float) -> jax.Array:
  """softmax(q kᵀ · scale, masked) v over [batch, kv_heads, rows, head_dim] operands.

  The backward pass keeps only the output and the log-sum-exp and recomputes the probabilities (as flash attention
  does): the [rows, kv_len] probabilities of every layer are never stored for the backward pass, which saves memory
  everywhere and, on CPU, the copies of those tensors in and out of the layer scan.
  """
  return _attention_forward(q, k, v, allowed, scale)[0]


def _attention_forward(q, k, v, allowed, scale):
  scores = _masked_scores(q, k, allowed, scale)
  row_max = jnp.max(scores, axis=-1, keepdims=True)
  unnormalised = jnp.exp(scores - row_max)
  row_sum = jnp.sum(unnormalised, axis=-1, keepdims=True)
  # Normalising after the value product divides [rows, head_dim] instead of [rows, kv_len].
  out = (jnp.matmul(unnormalised.astype(v.dtype), v, preferred_element_type=jnp.float32) / row_sum).astype(v.dtype)
  return out, (q, k, v, allowed, out, row_max + jnp.log(row_sum))


def _attention_backward(scale, residuals, d_out):
  q, k, v, allowed, out, log_sum_exp = residuals
  probs = jnp.exp(_masked_scores(q, k, allowed, scale) - log_sum_exp)
  d_v = jnp.matmul(jnp.swapaxes(probs.astype(v.dtype), -1, -2), d_out)
  d_probs = jnp.matmul(d_out, jnp.swapaxes(v, -1, -2), preferred_element_type=jnp.float32)
  # Σ_k p·dp per row equals Σ_d out·d_out: a [rows, head_dim] reduction instead of a [rows, kv_len] one.
  row_dot = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)
  d_scores = (probs * (d_probs - row_dot) * scale).astype(q.dtype)
  d_q = jnp.matmul(d_scores, k)
  d_k = jnp.matmul(jnp.swapaxes(d_scores, -1, -2), q)
  return d_q, d_k, d_v, None


_attention_core.defvjp(_attention_forward, _attention_backward)


# ---- Splash attention (Pallas, TPU) ----

_LANES = 128  # splash tiles sequences in multiples of the TPU's 128 lanes


def _splash_attention(q, k, v, key_mask, config: ModelConfig) -> jax.Array:
  """Pallas splash attention, one kernel per device under shard_map: batch over the mesh's batch axes, heads over
  `tensor` (when both the query and the kv heads divide it). Lengths are padded up to whole blocks with keys that
  no query may attend, so any length runs; padded query rows are dropped. Off TPU the kernel runs in Pallas'
  interpreter (exact, slow: for tests)."""
  batch, length, heads, head_dim = q.shape
  kv_heads = k.shape[2]
  tile = lambda size: min(size, -(-length // _LANES) * _LANES)
  block_q, block_kv = tile(config.attention_block_q), tile(config.attention_block_kv)
  padded = -(-length // math.lcm(block_q, block_kv)) * math.lcm(block_q, block_kv)
  valid = jnp.ones((batch, length), bool) if key_mask is None else key_mask
  if padded != length:
    pad = ((0, 0), (0, padded - length), (0, 0), (0, 0))
    q, k, v = (jnp.pad(a, pad) for a in (q, k, v))
    valid = jnp.pad(valid, ((0, 0), (0, padded - length)))
  # The XLA path scales the fp32 scores; splash takes the scale folded into q.
  q = (q.astype(jnp.float32) / math.sqrt(head_dim)).astype(q.dtype)
  use_segments = key_mask is not None or padded != length

  def local(q, k, v, valid):
    kernel = _splash_kernel(q.shape[2], padded, config.causal, block_q, block_kv, target_platform() != "tpu")
    from jax.experimental.pallas.ops.tpu.splash_attention import SegmentIds
    heads_first = lambda a: a.transpose(0, 2, 1, 3)
    # Queries are segment 1, valid keys 1, padded keys 0: a padded key matches no query.
    segments = SegmentIds(q=jnp.ones(valid.shape, jnp.int32), kv=valid.astype(jnp.int32)) if use_segments else None
    call = lambda q, k, v, segments: kernel(q, k, v, segment_ids=segments)
    return jax.vmap(call)(heads_first(q), heads_first(k), heads_first(v), segments).transpose(0, 2, 1, 3)

  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    out = local(q, k, v, valid)
  else:
    batch_axes = sharding.fit_spec((batch,), ("activation_batch",), mesh)[0]
    head_axes = sharding.fit_spec((heads,), ("activation_heads",), mesh)[0]
    if sharding.fit_spec((kv_heads,), ("activation_kv_heads",), mesh)[0] != head_axes:
      head_axes = None  # a shard's query heads must find their kv heads on the same device
    spec = P(batch_axes, None, head_axes, None)
    out = jax.shard_map(local, in_specs=(spec, spec, spec, P(batch_axes, None)), out_specs=spec,
                        check_vma=False)(q, k, v, valid)
  return out[:, :length]


@functools.lru_cache(maxsize=64)
def _splash_kernel(heads: int, length: int, causal: bool, block_q: int, block_kv: int, interpret: bool):
  """The kernel and its block-sparsity tables for one shape. Cached, and called inside traces, so it is built
  outside them: `make_splash_mha` turns its numpy tables into arrays with `jnp.array`, which inside a trace makes
  tracers of that trace (the next program of the same shape would get them: UnexpectedTracerError) and, inside an
  ahead-of-time compile's mesh, tries to place them on chips that are not there. A worker thread has neither
  trace nor mesh; the tables come back as numpy, which each program embeds as its own constants."""
  from jax.experimental.pallas.ops.tpu import splash_attention as splash
  shape = (length, length)
  mask = splash.MultiHeadMask([splash.CausalMask(shape) if causal else splash.FullMask(shape)] * heads)
  blocks = splash.BlockSizes(block_q=block_q, block_kv=block_kv, block_kv_compute=block_kv, block_q_dkv=block_q,
                             block_kv_dkv=block_kv, block_kv_dkv_compute=block_kv, block_q_dq=block_q,
                             block_kv_dq=block_kv)
  build = functools.partial(splash.make_splash_mha, mask, block_sizes=blocks, head_shards=1, q_seq_shards=1,
                            interpret=interpret)
  with concurrent.futures.ThreadPoolExecutor(max_workers=1) as worker:
    kernel = worker.submit(build).result()
  return jax.tree.map(np.asarray, kernel)


# ---- Projections ----

def project(x: jax.Array, w: jax.Array, in_dims: int = 1) -> jax.Array:
  """x [tokens, *in] · w [*in, *out] → [tokens, *out], as one 2-D matmul (what XLA's CPU backend runs fastest)."""
  tokens, out_shape = x.shape[0], w.shape[in_dims:]
  y = _matmul(x.reshape(tokens, -1), w.reshape(math.prod(w.shape[:in_dims]), -1))
  return y.reshape(tokens, *out_shape)


@jax.custom_vjp
def _matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  """x @ w whose weight gradient transposes the narrower of x and the incoming gradient.

  XLA's CPU matmuls take only a transposed right operand, so xᵀ·g needs one explicit transpose of a
  [tokens, ·] array. Left to itself XLA picked the gradient and fused that transpose into the elementwise ops
  producing it (RoPE's backward, the head transposes, the residual sums), which ran ~20× slower than a plain
  transpose and cost ~15% of a training step; transposing the narrower operand also moves the fewest bytes.
  """
  return x @ w


def _matmul_forward(x, w):
  return x @ w, (x, w)


def _matmul_backward(residuals, grad):
  x, w = residuals
  d_w = x.T @ grad if x.shape[1] <= grad.shape[1] else (grad.T @ x).T
  return grad @ w.T, d_w


_matmul.defvjp(_matmul_forward, _matmul_backward)


def tokens_first(x: jax.Array) -> jax.Array:
  """[batch, length, …] → [batch·length, …]: projections as plain 2-D matmuls, which XLA's CPU backend runs
  much faster than the same contraction written with two batch-like dimensions."""
  return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


