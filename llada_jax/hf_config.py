"""The official Hugging Face config.json (docs/design.md §2) and our ModelConfig, both ways: what conversion, the
HF export and `llada-jax info` read and write."""

from typing import Any, Mapping

from llada_jax.config import ModelConfig
from llada_jax.errors import UserError

# Keys whose official values we do not implement: anything else must be refused, not ignored.
_REQUIRED_HF_VALUES = {
    "alibi": False,
    "include_bias": False,
    "include_qkv_bias": False,
    "layer_norm_type": "rms",
    "layer_norm_with_affine": True,
    "bias_for_layer_norm": False,
    "activation_type": "silu",
    "block_type": "llama",
    "rope": True,
    "rope_full_precision": True,
    "scale_logits": False,
    "input_emb_norm": False,
    "attention_layer_norm": False,
    "block_group_size": 1,
}
_ZERO_DROPOUTS = ("attention_dropout", "residual_dropout", "embedding_dropout")


def from_hf_config(hf: Mapping[str, Any], **overrides) -> ModelConfig:
  """Builds a ModelConfig from an official LLaDA config.json dict; refuses features we do not implement."""
  if hf.get("model_type", "llada") != "llada":
    raise UserError(f"config.json has model_type={hf.get('model_type')!r}; this is not an LLaDA checkpoint")
  missing = [k for k in ("d_model", "n_heads", "n_layers", "vocab_size") if k not in hf]
  if missing:
    raise UserError(f"config.json lacks {', '.join(missing)}; this is not an LLaDA checkpoint")
  refused = [f"{k}={hf[k]!r} (we implement {v!r})" for k, v in _REQUIRED_HF_VALUES.items()
             if k in hf and hf[k] is not None and hf[k] != v]
  refused += [f"{k}={hf[k]}" for k in _ZERO_DROPOUTS if hf.get(k)]
  if hf.get("clip_qkv") is not None:
    refused.append(f"clip_qkv={hf['clip_qkv']}")
  if refused:
    raise UserError("this checkpoint uses features llada-jax does not implement: " + ", ".join(refused))
  n_kv_heads = hf.get("n_kv_heads")
  if n_kv_heads is None:
    n_kv_heads = 1 if hf.get("multi_query_attention") else hf["n_heads"]
  mlp = hf.get("mlp_hidden_size") or hf.get("mlp_ratio", 4) * hf["d_model"]
  values = dict(
      d_model=hf["d_model"], n_heads=hf["n_heads"], n_kv_heads=n_kv_heads, n_layers=hf["n_layers"],
      mlp_hidden_size=mlp, vocab_size=hf["vocab_size"],
      embedding_size=hf.get("embedding_size") or hf["vocab_size"],
      max_sequence_length=hf.get("max_sequence_length", 4096), rope_theta=float(hf.get("rope_theta", 10000.0)),
      rms_norm_eps=float(hf.get("rms_norm_eps", 1e-5)), weight_tying=bool(hf.get("weight_tying", False)))
  for ours in ("mask_token_id", "eos_token_id", "pad_token_id", "bos_token_id", "eot_token_id"):
    if hf.get(ours) is not None:
      values[ours] = hf[ours]
  values.update(overrides)
  return ModelConfig(**values)


def to_hf_config(config: ModelConfig) -> dict[str, Any]:
  """Every key of the official config.json, so the official remote code loads what we export."""
  return {
      "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0, "architectures": ["LLaDAModelLM"],
      "attention_dropout": 0.0, "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
      "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig",
                   "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
                   "AutoModel": "modeling_llada.LLaDAModelLM"},
      "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama", "d_model": config.d_model,
      "embedding_dropout": 0.0, "embedding_size": config.embedding_size, "eos_token_id": config.eos_token_id,
      "flash_attention": False, "include_bias": False, "include_qkv_bias": False, "init_cutoff_factor": None,
      "init_device": "meta", "init_fn": "mitchell", "init_std": 0.02, "input_emb_norm": False,
      "layer_norm_type": "rms", "layer_norm_with_affine": True, "mask_token_id": config.mask_token_id,
      "max_sequence_length": config.max_sequence_length, "mlp_hidden_size": config.mlp_hidden_size,
      "mlp_ratio": 4, "model_type": "llada",
      "multi_query_attention": None, "n_heads": config.n_heads, "n_kv_heads": config.n_kv_heads,
      "n_layers": config.n_layers, "pad_token_id": config.pad_token_id,
      "precision": "amp_bf16",  # the official training precision
      "residual_dropout": 0.0, "rms_norm_eps": config.rms_norm_eps, "rope": True, "rope_full_precision": True,
      "rope_theta": config.rope_theta, "scale_logits": False, "use_cache": False, "vocab_size": config.vocab_size,
      "weight_tying": config.weight_tying,
      # Not read by the official code; keeps our special ids and HF's dtype hint with the weights.
      "bos_token_id": config.bos_token_id, "eot_token_id": config.eot_token_id,
      "torch_dtype": config.param_dtype,
  }
