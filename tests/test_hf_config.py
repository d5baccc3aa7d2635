"""ModelConfig ⇄ the official config.json."""

from conftest import SPEC_8B_CONFIG
from llada_jax.config import ModelConfig
from llada_jax.hf_config import from_hf_config, to_hf_config


def test_official_8b_config_maps_both_ways():
  config = from_hf_config(SPEC_8B_CONFIG)
  assert config == ModelConfig()  # our defaults are the released 8B
  assert config.head_dim == 128
  assert config.num_params() == 8_015_581_184
  assert config.num_params(include_embeddings=False) == 6_979_588_096
  exported = to_hf_config(config)
  for key, value in SPEC_8B_CONFIG.items():
    assert exported[key] == value, key
  assert from_hf_config(exported) == config


def test_gqa_tied_and_padded_embedding_fields_survive():
  hf = dict(SPEC_8B_CONFIG, n_kv_heads=8, mlp_hidden_size=14336, vocab_size=155136, embedding_size=155200,
            weight_tying=True, max_sequence_length=8192, mask_token_id=5)
  config = from_hf_config(hf)
  assert (config.n_kv_heads, config.mlp_hidden_size, config.embedding_size) == (8, 14336, 155200)
  assert config.weight_tying and config.mask_token_id == 5
  assert from_hf_config(to_hf_config(config)) == config
  assert from_hf_config(dict(hf, n_kv_heads=None, multi_query_attention=True)).n_kv_heads == 1
