"""LLaDA (arXiv 2502.09992) for PyTorch and Hugging Face transformers: the remote code of a llada-jax HF export.

Written for llada-jax from the LLaDA paper (arXiv 2502.09992) and the project's design document, docs/design.md in the
llada-jax repository (§1 network, §2 checkpoint names), following the official release's numerics:
RMSNorm in fp32 then cast back, rotate-half RoPE in fp32, bidirectional attention with padded keys masked. The same
network is the PyTorch oracle llada-jax's tests check the JAX model against (logits within 6e-6).

    model = AutoModel.from_pretrained(export_dir, trust_remote_code=True)
    logits = model(input_ids, attention_mask=mask).logits   # (B, T, embedding_size)

The model has no time input: masked-diffusion sampling (llada-jax `generate`, or the official `generate()`) calls it
on a canvas holding `mask_token_id` wherever a token is still to be predicted.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_llada import LLaDAConfig

# config.json fields whose other values select code paths the official model has and LLaDA does not use.
# This reference implements only the LLaDA choice, so a config asking for anything else is refused, not misread.
_LLADA_ONLY = {
  'activation_type': 'silu', 'block_type': 'llama', 'layer_norm_type': 'rms', 'layer_norm_with_affine': True,
  'bias_for_layer_norm': False, 'rope': True, 'rope_full_precision': True, 'alibi': False, 'include_bias': False,
  'include_qkv_bias': False, 'scale_logits': False, 'input_emb_norm': False, 'attention_layer_norm': False,
}


class RMSNorm(nn.Module):
  """RMSNorm as the official model computes it: normalise in fp32, cast back, then scale in the input dtype."""

  def __init__(self, dim, eps):
    super().__init__()
    self.eps = eps
    self.weight = nn.Parameter(torch.ones(dim))

  def forward(self, x):
    y = x.float()
    y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)
    return self.weight * y.to(x.dtype)


def rope_tables(seq_len, head_dim, theta, device):
  """fp32 cos/sin tables (seq_len, head_dim) for absolute positions 0..seq_len-1, rotate-half layout."""
  inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
  freqs = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
  emb = torch.cat((freqs, freqs), dim=-1)
  return emb.cos(), emb.sin()


def rotate_half(x):
  half = x.shape[-1] // 2
  return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x, cos, sin):
  """Rotates in fp32 whatever the model dtype (`rope_full_precision`), then casts back."""
  xf = x.float()
  return (xf * cos + rotate_half(xf) * sin).to(x.dtype)


class LLaDABlock(nn.Module):
  """One LLaMA-style block: pre-norm attention (bidirectional unless masked) and a pre-norm SwiGLU MLP."""

  def __init__(self, d_model, n_heads, n_kv_heads, mlp_hidden_size, eps):
    super().__init__()
    self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
    self.head_dim = d_model // n_heads
    self.attn_norm = RMSNorm(d_model, eps)
    self.q_proj = nn.Linear(d_model, d_model, bias=False)
    self.k_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=False)
    self.v_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=False)
    self.attn_out = nn.Linear(d_model, d_model, bias=False)
    self.ff_norm = RMSNorm(d_model, eps)
    self.ff_proj = nn.Linear(d_model, mlp_hidden_size, bias=False)  # gate
    self.up_proj = nn.Linear(d_model, mlp_hidden_size, bias=False)
    self.ff_out = nn.Linear(mlp_hidden_size, d_model, bias=False)  # down

  def forward(self, x, cos, sin, bias, past=None, replace_at=None):
    """-> (x, (keys, values) attended to, before the GQA repeat). `past`: cached (keys, values) (B, kv_heads, T, hd)
    of other positions; the new ones follow them (prefix cache) or, with `replace_at`, overwrite their slots from
    that position on (dual cache)."""
    b, t, _ = x.shape
    h = self.attn_norm(x)
    q = self.q_proj(h).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
    k = self.k_proj(h).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
    v = self.v_proj(h).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    if past is not None and replace_at is None:
      k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
    elif past is not None:
      new_k, new_v = k, v
      k, v = past[0].clone(), past[1].clone()
      k[:, :, replace_at:replace_at + t], v[:, :, replace_at:replace_at + t] = new_k, new_v
    present = (k, v)
    # GQA: query head h reads kv head h // group, which is what repeat_interleave on the head axis produces.
    group = self.n_heads // self.n_kv_heads
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0 / math.sqrt(self.head_dim))
    x = x + self.attn_out(a.transpose(1, 2).reshape(b, t, -1))
    h = self.ff_norm(x)
    return x + self.ff_out(F.silu(self.ff_proj(h)) * self.up_proj(h)), present


class LLaDANetwork(nn.Module):
  """LLaDA's network, built from the keys of an official config.json (a dict).

  It holds `transformer` (wte, blocks, ln_f, ff_out), so under a module attribute `model` the parameters have
  exactly the official checkpoint names (`model.transformer.…`; docs/design.md §2 in the llada-jax repository).
  No buffers are registered: RoPE tables are computed per forward, so `max_sequence_length` needs no storage and is
  not enforced (the official model also grows its table for longer inputs).
  `causal=True` adds a causal mask on top of everything else: the paper's autoregressive baseline.
  """

  def __init__(self, config, causal=False):
    super().__init__()
    for key, want in _LLADA_ONLY.items():
      if key in config and config[key] != want:
        raise ValueError(f'config {key}={config[key]!r} is not supported (LLaDA uses {want!r})')
    self.config = dict(config)
    self.causal = causal
    d_model, n_heads = config['d_model'], config['n_heads']
    n_kv_heads = config.get('n_kv_heads') or n_heads
    if d_model % n_heads or n_heads % n_kv_heads:
      raise ValueError(f'd_model {d_model}, n_heads {n_heads}, n_kv_heads {n_kv_heads} do not divide evenly')
    mlp_hidden_size = config.get('mlp_hidden_size') or config.get('mlp_ratio', 4) * d_model
    embedding_size = config.get('embedding_size') or config['vocab_size']
    eps = config.get('rms_norm_eps', 1e-5)
    self.head_dim = d_model // n_heads
    self.rope_theta = config.get('rope_theta', 10000.0)
    self.weight_tying = bool(config.get('weight_tying', False))

    self.transformer = nn.ModuleDict({
      'wte': nn.Embedding(embedding_size, d_model),
      'blocks': nn.ModuleList(
        LLaDABlock(d_model, n_heads, n_kv_heads, mlp_hidden_size, eps) for _ in range(config['n_layers'])),
      'ln_f': RMSNorm(d_model, eps),
    })
    if not self.weight_tying:
      self.transformer['ff_out'] = nn.Linear(d_model, embedding_size, bias=False)

  def _attention_bias(self, attention_mask, t, dtype, device):
    """Additive bias: 0 where attention is allowed, the dtype's minimum on padded keys (and future keys if causal).

    Queries are never masked, so padded positions still get (unused) outputs, as in the official model.
    """
    allowed = None
    if attention_mask is not None:
      allowed = (attention_mask != 0)[:, None, None, :]  # (B, 1, 1, T): keys only
    if self.causal:
      future_free = torch.ones(t, t, dtype=torch.bool, device=device).tril()
      allowed = future_free if allowed is None else allowed & future_free
    if allowed is None:
      return None
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)

  def forward(self, input_ids, attention_mask=None, past_key_values=None, replace_at=None, use_cache=False):
    """(B, T) token ids [+ (B, T) mask, 0 = padding] -> (B, T, embedding_size) logits in the model dtype.

    Fast-dLLM's cached calls (batch 1, no padding): `past_key_values` (one (keys, values) per layer) holds the
    canvas positions before `input_ids` (prefix cache), or with `replace_at` the whole canvas, whose slots from
    `replace_at` on the new positions overwrite (dual cache). RoPE uses absolute canvas positions either way.
    `use_cache=True` returns (logits, the keys/values of every layer over everything attended to).
    """
    tr = self.transformer
    x = tr.wte(input_ids)
    t = input_ids.shape[1]
    if past_key_values is not None and (attention_mask is not None or self.causal):
      raise ValueError('cached calls are for the bidirectional model without padding')
    offset = 0 if past_key_values is None else (
        past_key_values[0][0].shape[2] if replace_at is None else replace_at)
    cos, sin = rope_tables(offset + t, self.head_dim, self.rope_theta, x.device)  # left pads consume positions
    cos, sin = cos[offset:], sin[offset:]
    bias = self._attention_bias(attention_mask, t, x.dtype, x.device)
    presents = []
    for i, block in enumerate(tr.blocks):
      x, present = block(x, cos, sin, bias, None if past_key_values is None else past_key_values[i], replace_at)
      presents.append(present)
    x = tr.ln_f(x)
    logits = F.linear(x, tr.wte.weight) if self.weight_tying else tr.ff_out(x)
    return (logits, presents) if use_cache else logits


class LLaDAModelLM(PreTrainedModel):
  """The checkpoint's model: `model` is the network, so state-dict names are the official ones (docs/design.md §2 in
  the llada-jax repository)."""

  config_class = LLaDAConfig
  base_model_prefix = "model"
  _no_split_modules = ["LLaDABlock"]
  supports_gradient_checkpointing = False

  def __init__(self, config: LLaDAConfig):
    super().__init__(config)
    self.model = LLaDANetwork(config.to_dict())
    self.post_init()

  @torch.no_grad()
  def _init_weights(self, module):
    """Only for weights a checkpoint lacks: normal(init_std) matrices, unit norms."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
      module.weight.normal_(0.0, self.config.init_std)
    elif isinstance(module, RMSNorm):
      module.weight.fill_(1.0)

  def get_input_embeddings(self):
    return self.model.transformer.wte

  def set_input_embeddings(self, value):
    self.model.transformer.wte = value

  def forward(self, input_ids, attention_mask=None, return_dict=None, **kwargs):
    """(B, T) ids [+ (B, T) mask, 0 = padding] -> CausalLMOutputWithPast with `logits` (B, T, embedding_size).

    There is no loss: LLaDA's training loss (1/t-weighted masked cross-entropy) needs the masking, which llada-jax
    trains with."""
    unused = sorted(k for k, v in kwargs.items() if v is not None and k not in ("use_cache", "output_attentions",
                                                                             "output_hidden_states"))
    if unused:
      raise ValueError(f"LLaDAModelLM.forward does not take {', '.join(unused)}")
    logits = self.model(input_ids, attention_mask=attention_mask)
    if return_dict is False:
      return (logits,)
    return CausalLMOutputWithPast(logits=logits)
