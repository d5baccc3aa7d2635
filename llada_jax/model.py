"""The LLaDA network (docs/design.md §1) as a Flax NNX module, used functionally.

Parameters live in a plain pytree (`init_params`); `apply(params, tokens, attention_mask, config=...)` merges them
into the module inside the traced function, so everything is a pure function under `jax.jit`. The layers' weights
are stacked along a leading `layers` axis and run with `lax.scan` (one compiled block, whatever the depth).
Every parameter carries logical axis names; `sharding.LOGICAL_RULES` maps them to the mesh.
"""

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from llada_jax import ops, sharding
from llada_jax.config import DTYPES, ModelConfig

Params = dict[str, Any]


_QKV = ("query_proj", "key_proj", "value_proj")
_OFFLOAD = dict(offload_src="device", offload_dst="pinned_host")
# What each layer keeps for its backward pass (the network, docs/design.md §1, is unchanged; only recomputation
# differs).
# The offload_* policies move what they keep to host memory instead of dropping it.
_REMAT_POLICIES = {
    "full": None,  # save nothing but the layer input
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "save_qkv_proj": jax.checkpoint_policies.save_only_these_names(*_QKV),
    # The five d_model-wide projections; the MLP's two mlp_hidden_size-wide ones (the bulk of save_dots) are redone.
    "save_qkv_out_proj": jax.checkpoint_policies.save_only_these_names(*_QKV, "attention_out", "mlp_out"),
    "offload_qkv_proj": jax.checkpoint_policies.save_and_offload_only_these_names(
        names_which_can_be_saved=[], names_which_can_be_offloaded=list(_QKV), **_OFFLOAD),
    "offload_dots": jax.checkpoint_policies.offload_dot_with_no_batch_dims(**_OFFLOAD),
    # Not even the layer inputs stay on the device (the scan would otherwise keep one per layer).
    "offload_layer_input": jax.checkpoint_policies.save_and_offload_only_these_names(
        names_which_can_be_saved=[], names_which_can_be_offloaded=["layer_input"], **_OFFLOAD),
}


def jnp_dtype(name: str) -> jnp.dtype:
  return jnp.dtype(DTYPES[name])


def _param(rngs: nnx.Rngs, shape: tuple[int, ...], std: Any, axes: tuple[str, ...], dtype) -> nnx.Param:
  """Mitchell init: a normal truncated at ±3σ; `std` may be an array broadcasting over a stacked layers axis."""
  value = (jax.random.truncated_normal(rngs.params(), -3.0, 3.0, shape, jnp.float32) * std).astype(dtype)
  return nnx.Param(value, out_sharding=axes, eager_sharding=False)


def _ones(shape: tuple[int, ...], axes: tuple[str, ...], dtype) -> nnx.Param:
  return nnx.Param(jnp.ones(shape, dtype), out_sharding=axes, eager_sharding=False)


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
  """Normalise in fp32, cast back to the input dtype, then scale in that dtype (as the official code does)."""
  x32 = x.astype(jnp.float32)
  normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return normed.astype(x.dtype) * scale.astype(x.dtype)


def rope_tables(length: int, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
  """fp32 cos/sin of shape [length, head_dim] for absolute positions 0..length-1 (left pads consume positions)."""
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  freqs = jnp.outer(jnp.arange(length, dtype=jnp.float32), inv_freq)
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotate-half RoPE computed in fp32. x: [batch, length, heads, head_dim]; cos/sin: [length, head_dim], or
  [batch, length, head_dim] when rows sit at different canvas positions."""
  x32 = x.astype(jnp.float32)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
  cos, sin = (t[None, :, None, :] if t.ndim == 2 else t[:, :, None, :] for t in (cos, sin))
  return (x32 * cos + rotated * sin).astype(x.dtype)


def take_window(x: jax.Array, start: jax.Array | int, size: int) -> jax.Array:
  """x[:, start:start + size] along axis 1, with `start` one offset for all rows or one per row ([batch]; a batch
  stacked k times, as classifier-free guidance stacks the unconditional rows under the conditional ones, repeats
  the offsets)."""
  if jnp.ndim(start) == 0:
    return jax.lax.dynamic_slice_in_dim(x, start, size, axis=1)
  start = jnp.tile(start, x.shape[0] // start.shape[0])
  return jax.vmap(lambda row, s: jax.lax.dynamic_slice_in_dim(row, s, size, axis=0))(x, start)


def put_window(x: jax.Array, start: jax.Array | int, values: jax.Array) -> jax.Array:
  """x with x[:, start:start + len] replaced by `values`, `start` shared or per row as in `take_window`."""
  if jnp.ndim(start) == 0:
    return jax.lax.dynamic_update_slice_in_dim(x, values, start, axis=1)
  start = jnp.tile(start, x.shape[0] // start.shape[0])
  return jax.vmap(lambda row, s, v: jax.lax.dynamic_update_slice_in_dim(row, v, s, axis=0))(x, start, values)


class Blocks(nnx.Module):
  """All transformer blocks, weights stacked on a leading `layers` axis; `__call__` runs one unstacked layer."""

  def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
    c = config
    n, e, h, kv, hd, m = c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, c.head_dim, c.mlp_hidden_size
    dt = jnp_dtype(c.param_dtype)
    depth_scale = 1.0 / jnp.sqrt(2.0 * jnp.arange(1, n + 1, dtype=jnp.float32))
    std_in, std_mlp = 1.0 / math.sqrt(e), 1.0 / math.sqrt(m)
    self.config = config
    self.attn_norm = _ones((n, e), ("layers", "norm"), dt)
    self.q_proj = _param(rngs, (n, e, h, hd), std_in, ("layers", "embed", "heads", "head_dim"), dt)
    self.k_proj = _param(rngs, (n, e, kv, hd), std_in, ("layers", "embed", "kv_heads", "head_dim"), dt)
    self.v_proj = _param(rngs, (n, e, kv, hd), std_in, ("layers", "embed", "kv_heads", "head_dim"), dt)
    self.attn_out = _param(rngs, (n, h, hd, e), std_in * depth_scale[:, None, None, None],
                           ("layers", "heads", "head_dim", "embed"), dt)
    self.ff_norm = _ones((n, e), ("layers", "norm"), dt)
    self.ff_proj = _param(rngs, (n, e, m), std_in, ("layers", "embed", "mlp"), dt)
    self.up_proj = _param(rngs, (n, e, m), std_in, ("layers", "embed", "mlp"), dt)
    self.ff_out = _param(rngs, (n, m, e), std_mlp * depth_scale[:, None, None], ("layers", "mlp", "embed"), dt)

  def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, key_mask: jax.Array | None,
               cached: tuple[jax.Array, jax.Array, jax.Array] | None = None) -> tuple[jax.Array, tuple]:
    """One layer over x [batch, length, d_model]; returns (x, (keys, values)) with the keys/values it attended to.

    `cached=(keys, values, start)`: this layer's keys/values of a whole canvas [batch, canvas, kv_heads, head_dim]
    and x's offset in it (shared, or one per row); x's fresh keys/values overwrite positions start.. and x's
    queries attend to the whole canvas (cos/sin and key_mask then cover x's positions and the canvas respectively).
    """
    c = self.config
    dt = x.dtype
    batch, length, _ = x.shape
    x = checkpoint_name(x, "layer_input")
    h = ops.tokens_first(rms_norm(x, self.attn_norm[...], c.rms_norm_eps))
    q = checkpoint_name(ops.project(h, self.q_proj[...].astype(dt)), "query_proj")
    k = checkpoint_name(ops.project(h, self.k_proj[...].astype(dt)), "key_proj")
    v = checkpoint_name(ops.project(h, self.v_proj[...].astype(dt)), "value_proj")
    q, k, v = (a.reshape(batch, length, *a.shape[-2:]) for a in (q, k, v))
    q = sharding.constrain(apply_rope(q, cos, sin), ("activation_batch", "activation_length", "activation_heads",
                                                     None))
    k = apply_rope(k, cos, sin)
    if cached is not None:
      cached_k, cached_v, start = cached
      k = put_window(cached_k, start, k.astype(cached_k.dtype))
      v = put_window(cached_v, start, v.astype(cached_v.dtype))
    att = ops.tokens_first(ops.attention(q, k, v, key_mask, c))
    attention_out = checkpoint_name(ops.project(att, self.attn_out[...].astype(dt), in_dims=2), "attention_out")
    x = x + attention_out.reshape(x.shape)
    x = sharding.constrain(x, ("activation_batch", "activation_length", "activation_embed"))
    h = ops.tokens_first(rms_norm(x, self.ff_norm[...], c.rms_norm_eps))
    gate = ops.project(h, self.ff_proj[...].astype(dt))
    up = ops.project(h, self.up_proj[...].astype(dt))
    act = sharding.constrain((jax.nn.silu(gate) * up).reshape(batch, length, -1),
                             ("activation_batch", "activation_length", "activation_mlp"))
    mlp_out = checkpoint_name(ops.project(ops.tokens_first(act), self.ff_out[...].astype(dt)), "mlp_out")
    x = x + mlp_out.reshape(x.shape)
    return sharding.constrain(x, ("activation_batch", "activation_length", "activation_embed")), (k, v)


class LLaDA(nnx.Module):
  """Embedding → stacked blocks → final RMSNorm → output head (or the tied embedding)."""

  def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
    c = config
    dt = jnp_dtype(c.param_dtype)
    std = 1.0 / math.sqrt(c.d_model)
    self.config = config
    self.wte = _param(rngs, (c.embedding_size, c.d_model), std, ("vocab", "embed"), dt)
    self.blocks = Blocks(config, rngs)
    self.ln_f = _ones((c.d_model,), ("norm",), dt)
    if not c.weight_tying:
      self.ff_out = _param(rngs, (c.d_model, c.embedding_size), std, ("embed", "vocab"), dt)

  def __call__(self, tokens: jax.Array, attention_mask: jax.Array | None = None,
               logits_window: tuple[jax.Array | int, int] | None = None) -> jax.Array:
    x = self.features(tokens, attention_mask)
    if logits_window is not None:
      x = take_window(x, *logits_window)
    return self.head(x)

  def features(self, tokens: jax.Array, attention_mask: jax.Array | None, cache: "KVCache | None" = None,
               start: jax.Array | int = 0) -> jax.Array:
    """The final-norm hidden states [batch, length, d_model]: everything but the output head. With `cache` (a
    whole canvas's keys/values), `tokens` are canvas positions start..start+len whose fresh keys/values replace
    the cached ones there, the queries attend to the whole canvas, and `attention_mask` covers the canvas; `start`
    may be one offset per row."""
    return self._features(tokens, attention_mask, cache, start, collect_kv=False)[0]

  def features_and_cache(self, tokens: jax.Array, attention_mask: jax.Array | None) -> tuple[jax.Array, "KVCache"]:
    """(final-norm hidden states, every layer's keys/values): the forward that fills a cache for `tokens`."""
    return self._features(tokens, attention_mask, None, 0, collect_kv=True)

  def _features(self, tokens, attention_mask, cache, start, collect_kv: bool):
    c = self.config
    dt = jnp_dtype(c.dtype)
    x = jnp.take(self.wte[...], tokens, axis=0).astype(dt)
    x = sharding.constrain(x, ("activation_batch", "activation_length", "activation_embed"))
    canvas = tokens.shape[1] if cache is None else cache.keys.shape[2]
    cos, sin = rope_tables(canvas, c.head_dim, c.rope_theta)
    if cache is not None:  # absolute canvas positions, as the uncached model sees them
      cos, sin = (take_window(jnp.broadcast_to(t, (tokens.shape[0], *t.shape)), start, tokens.shape[1])
                  for t in (cos, sin))
    key_mask = None if attention_mask is None else attention_mask.astype(bool)
    x, kv = self._run_blocks(x, cos, sin, key_mask, cache, start, collect_kv)
    return rms_norm(x, self.ln_f[...], c.rms_norm_eps), (KVCache(*kv) if collect_kv else None)

  def head(self, x: jax.Array) -> jax.Array:
    """Hidden states [batch, length, d_model] → logits [batch, length, embedding_size] in the compute dtype."""
    c = self.config
    head = self.wte[...].T if c.weight_tying else self.ff_out[...]
    logits = ops.project(ops.tokens_first(x), head.astype(x.dtype)).reshape(*x.shape[:2], -1)
    return sharding.constrain(logits, ("activation_batch", "activation_length", "activation_vocab"))

  def _run_blocks(self, x, cos, sin, key_mask, cache, start, collect_kv):
    """(x after every layer, (keys, values) stacked over layers, or None: training never keeps them)."""
    c = self.config
    graphdef, stacked = nnx.split(self.blocks)

    def layer(x, inputs):
      layer_state, layer_cache = inputs
      cached = None if layer_cache is None else (*layer_cache, start)
      x, kv = nnx.merge(graphdef, layer_state)(x, cos, sin, key_mask, cached)
      return x, (kv if collect_kv else None)

    if c.remat_policy != "none":
      layer = jax.checkpoint(layer, policy=_REMAT_POLICIES[c.remat_policy], prevent_cse=not c.scan_layers)
    layer_caches = None if cache is None else (cache.keys, cache.values)
    if c.scan_layers:
      return jax.lax.scan(layer, x, (stacked, layer_caches))
    kvs = []
    for i in range(c.n_layers):
      x, kv = layer(x, jax.tree.map(lambda a, i=i: a[i], (stacked, layer_caches)))
      kvs.append(kv)
    return x, (jax.tree.map(lambda *a: jnp.stack(a), *kvs) if collect_kv else None)


class KVCache(NamedTuple):
  """Every layer's attention keys and values over a canvas, after RoPE: [layers, batch, length, kv_heads, head_dim]."""
  keys: jax.Array
  values: jax.Array


@functools.cache
def _structure(config: ModelConfig) -> tuple[nnx.GraphDef, Params, Params]:
  """(graphdef, abstract params, logical axes) — pure structure, computed once per config without allocating."""
  abstract = nnx.eval_shape(lambda: LLaDA(config, nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  axes = jax.tree.map(tuple, nnx.to_pure_dict(nnx.get_partition_spec(state)),
                      is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  return graphdef, nnx.to_pure_dict(state), axes


def abstract_params(config: ModelConfig) -> Params:
  """ShapeDtypeStructs of the parameter pytree."""
  return _structure(config)[1]


def param_logical_axes(config: ModelConfig) -> Params:
  """The parameter pytree with a tuple of logical axis names at each leaf."""
  return _structure(config)[2]


def param_shardings(config: ModelConfig, mesh) -> Params:
  """The NamedSharding of every parameter on `mesh`, by its logical axes and `sharding.LOGICAL_RULES`."""
  return sharding.tree_shardings(mesh, param_logical_axes(config), abstract_params(config))


def init_params(config: ModelConfig, rng: jax.Array) -> Params:
  """Fresh parameters (pure function of the key; jit it with out_shardings to create them sharded)."""
  return nnx.to_pure_dict(nnx.state(LLaDA(config, nnx.Rngs(params=rng))))


def apply(params: Params, tokens: jax.Array, attention_mask: jax.Array | None = None, *,
          config: ModelConfig, logits_window: tuple[jax.Array | int, int] | None = None) -> jax.Array:
  """Logits [batch, length, embedding_size] in the compute dtype. tokens: int [batch, length].

  `logits_window=(start, size)` returns only positions start..start+size-1 (start may be traced, and one per row;
  size static):
  every position still attends to the whole sequence, but the output head — most of the cost of a small model —
  runs only where the caller needs predictions (the sampler's current block).
  """
  model = nnx.merge(_structure(config)[0], params)
  return model(tokens, attention_mask, logits_window)


def features(params: Params, tokens: jax.Array, attention_mask: jax.Array | None = None, *,
             config: ModelConfig, cache: "KVCache | None" = None, start: jax.Array | int = 0) -> jax.Array:
  """`apply` without the output head: the final-norm hidden states [batch, length, d_model]. With `cache`, a
  forward of canvas positions start..start+len that attends to the cached keys/values of the rest of the canvas
  (the sampler's block KV cache; `LLaDA.features`)."""
  return nnx.merge(_structure(config)[0], params).features(tokens, attention_mask, cache, start)


def features_and_cache(params: Params, tokens: jax.Array, attention_mask: jax.Array | None = None, *,
                       config: ModelConfig) -> tuple[jax.Array, KVCache]:
  """Hidden states and every layer's keys/values: the full forward that fills a block KV cache."""
  return nnx.merge(_structure(config)[0], params).features_and_cache(tokens, attention_mask)


def head(params: Params, hidden: jax.Array, *, config: ModelConfig) -> jax.Array:
  """The output head alone: `head(params, features(params, t, m))` equals `apply(params, t, m)`."""
  return nnx.merge(_structure(config)[0], params).head(hidden)
