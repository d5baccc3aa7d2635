"""LLaDA's configuration for Hugging Face transformers, with the official config.json's keys (listed in §2 of
docs/design.md in the llada-jax repository).

Defaults are LLaDA-8B's. Only the keys the network reads matter; the rest travel so that the official remote code
reads the same file.
"""

from transformers import PretrainedConfig

LLADA_8B = {
    "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0, "attention_dropout": 0.0,
    "attention_layer_norm": False, "attention_layer_norm_with_affine": True, "bias_for_layer_norm": False,
    "block_group_size": 1, "block_type": "llama", "d_model": 4096, "embedding_dropout": 0.0, "embedding_size": 126464,
    "flash_attention": False, "include_bias": False, "include_qkv_bias": False, "init_cutoff_factor": None,
    "init_device": "meta", "init_fn": "mitchell", "init_std": 0.02, "input_emb_norm": False, "layer_norm_type": "rms",
    "layer_norm_with_affine": True, "mask_token_id": 126336, "max_sequence_length": 4096, "mlp_hidden_size": 12288,
    "mlp_ratio": 4, "multi_query_attention": None, "n_heads": 32, "n_kv_heads": 32, "n_layers": 32,
    "precision": "amp_bf16", "residual_dropout": 0.0, "rms_norm_eps": 1e-5, "rope": True, "rope_full_precision": True,
    "rope_theta": 500000.0, "scale_logits": False, "vocab_size": 126464, "weight_tying": False,
}
_SPECIAL_IDS = {"eos_token_id": 126081, "pad_token_id": 126081, "bos_token_id": 126080}


class LLaDAConfig(PretrainedConfig):
  model_type = "llada"
  attribute_map = {"hidden_size": "d_model", "num_attention_heads": "n_heads", "num_hidden_layers": "n_layers"}

  def __init__(self, **kwargs):
    for key, value in LLADA_8B.items():
      setattr(self, key, kwargs.pop(key, value))
    for key, value in _SPECIAL_IDS.items():
      kwargs.setdefault(key, value)
    kwargs.setdefault("use_cache", False)
    # The head is tied only when the checkpoint says so (weight_tying), never by transformers' default.
    kwargs["tie_word_embeddings"] = bool(self.weight_tying)
    super().__init__(**kwargs)

