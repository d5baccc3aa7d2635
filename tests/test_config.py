"""ModelConfig checks, config files and command-line overrides."""

import glob
import os
import subprocess
import sys

import pytest

from conftest import REPO
from llada_jax import config as config_lib
from llada_jax.config import ModelConfig
from llada_jax.errors import UserError


@pytest.mark.parametrize("values,match", [
    ({"n_heads": 5}, "not divisible by n_heads"), ({"n_kv_heads": 3}, "not a multiple of n_kv_heads"),
    ({"mask_token_id": 200_000}, "outside the embedding table"), ({"dtype": "int8"}, "dtype='int8'"),
    ({"embedding_size": 100}, "smaller than vocab_size")])
def test_invalid_model_configs_are_refused(values, match):
  with pytest.raises(UserError, match=match):
    ModelConfig(**values)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "configs", "*.py"))))
def test_every_config_file_builds_a_model_config(path):
  cfg = config_lib.load_config_file(path)
  assert isinstance(config_lib.model_config_from(cfg), ModelConfig)


def test_shipped_sizes_are_the_issue_sizes():
  def model(name):
    return config_lib.model_config_from(config_lib.load_config_file(os.path.join(REPO, "configs", name + ".py")))
  assert model("llada_8b").num_params() == 8_015_581_184
  tiny, small = model("tiny"), model("small")
  assert (tiny.d_model, tiny.n_heads, tiny.n_layers, tiny.mlp_hidden_size, tiny.vocab_size) == (96, 4, 4, 256, 8192)
  assert (small.d_model, small.n_heads, small.n_layers, small.mlp_hidden_size, small.vocab_size) == (
      512, 8, 8, 1536, 8192)
  assert 0.9e9 < model("llada_1b").num_params(include_embeddings=False) < 1.1e9


def test_overrides_are_typed_and_checked():
  cfg = config_lib.load_config_file(os.path.join(REPO, "configs", "tiny.py"))
  config_lib.apply_overrides(cfg, ["model.n_layers=2", "model.rope_theta=500000", "model.weight_tying=true",
                                   "model.dtype=bfloat16"])
  assert (cfg.model.n_layers, cfg.model.rope_theta, cfg.model.weight_tying, cfg.model.dtype) == (
      2, 500000.0, True, "bfloat16")
  with pytest.raises(UserError, match="unknown config key 'model.n_layer'"):
    config_lib.apply_overrides(cfg, ["model.n_layer=2"])
  with pytest.raises(UserError, match="must be a int"):
    config_lib.apply_overrides(cfg, ["model.n_layers=2.5"])
  config_lib.apply_overrides(cfg, ["train.steps=1e3"])  # a whole number in float notation fits an int field
  assert cfg.train.steps == 1000 and isinstance(cfg.train.steps, int)


def test_both_override_forms_and_print_config():
  from llada_jax import cli
  overrides, rest = cli._split_overrides(["train", "--config", "c.py", "--config.train.steps", "20",
                                          "--config.data.seq_len=64", "--resume"])
  assert overrides == ["train.steps=20", "data.seq_len=64"] and rest == ["train", "--config", "c.py", "--resume"]
  out = subprocess.run([sys.executable, "-m", "llada_jax.cli", "train", "--config", "configs/tiny.py",
                        "--print-config", "--config.train.steps", "2e3", "--config.model.n_layers=3"],
                       capture_output=True, text=True, cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 0, out.stderr
  assert "steps: 2000" in out.stdout and "n_layers: 3" in out.stdout
  out = subprocess.run([sys.executable, "-m", "llada_jax.cli", "train", "--config", "configs/tiny.py",
                        "--config.train.steps"], capture_output=True, text=True, cwd=REPO)
  assert out.returncode == 2 and "needs a value" in out.stderr and len(out.stderr.strip().splitlines()) == 1
  with pytest.raises(UserError, match="does not exist"):
    config_lib.load_config_file("configs/nope.py")


def test_sections_are_typed_and_checked_once_when_built():
  cfg = config_lib.load_config_file(os.path.join(REPO, "configs", "tiny.py"))
  exp = config_lib.Experiment.from_config(cfg)
  assert (exp.data.seq_len, exp.train.steps, exp.tokens_per_step) == (256, 1500, 8 * 256)
  with pytest.raises(UserError, match="train.schedule='linear' is not one of wsd, cosine, constant"):
    config_lib.TrainConfig(schedule="linear")
  with pytest.raises(UserError, match="train.masking='exact' is not one of bernoulli, paired_counts"):
    config_lib.TrainConfig(masking="exact")
  with pytest.raises(UserError, match="data.val_fraction=1.0 must be in"):
    config_lib.DataConfig(val_fraction=1.0)
  with pytest.raises(UserError, match="unknown train config field\\(s\\): lr_peak"):
    config_lib.TrainConfig.from_dict({"lr_peak": 1.0})
  rules = [(dict(train=exp.train.replace(objective="sft")), "train.objective=sft reads data.source chat_jsonl"),
           (dict(data=exp.data.replace(seq_len=8192)), "exceeds model.max_sequence_length"),
           (dict(train=exp.train.replace(grad_accum=3)), "not divisible by train.grad_accum=3"),
           (dict(train=exp.train.replace(masking="paired_counts", grad_accum=8)),
            "has 1 rows; make data.global_batch a multiple of 2"),
           (dict(train=exp.train.replace(masking="paired_counts", objective="sft")),
            "train.masking=paired_counts is a pre-training mask")]
  for changes, match in rules:
    with pytest.raises(UserError, match=match):
      exp.replace(**changes)
