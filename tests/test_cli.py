"""The `llada-jax` command as a user runs it: exit codes, one-line errors, nothing half-written."""

import json
import os
import subprocess
import sys

from conftest import REPO, tiny_hf_config, write_hf_dir


def run_cli(*args, cwd=REPO):
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "llada_jax.cli", *args], capture_output=True, text=True, cwd=cwd,
                        env=env, timeout=300)


def test_help_explains_every_command():
  out = run_cli("--help")
  assert out.returncode == 0
  for command in ("convert", "init", "info"):
    assert command in out.stdout
  out = run_cli("convert", "--help")
  assert "--max-shard-size" in out.stdout and "--dtype" in out.stdout


def test_init_then_convert_both_ways(tmp_path):
  hf, jx, back = (str(tmp_path / n) for n in ("hf", "jax", "back"))
  out = run_cli("init", "--config", "configs/tiny.py", "--config.model.n_layers=2", "--format", "hf", "--out", hf)
  assert out.returncode == 0, out.stderr
  with open(os.path.join(hf, "config.json")) as f:
    assert json.load(f)["n_layers"] == 2
  assert run_cli("convert", "hf-to-jax", hf, jx, "--dtype", "bfloat16").returncode == 0
  out = run_cli("convert", "jax-to-hf", jx, back, "--max-shard-size", "2MB")
  assert out.returncode == 0, out.stderr
  assert "safetensors shard(s)" in out.stdout
  with open(os.path.join(back, "config.json")) as f:
    assert json.load(f)["torch_dtype"] == "bfloat16"
  info = run_cli("info", jx)
  assert "layout version 1" in info.stdout and "n_layers             2" in info.stdout


def test_user_errors_are_one_line_with_exit_code_2(tmp_path):
  src, _ = write_hf_dir(tmp_path / "hf", tiny_hf_config())
  os.remove(os.path.join(src, "model-00001-of-00002.safetensors"))
  cases = [
      ("convert", "hf-to-jax", src, str(tmp_path / "out")),
      ("convert", "jax-to-hf", str(tmp_path), str(tmp_path / "out")),
      ("init", "--config", "configs/missing.py", "--out", str(tmp_path / "out")),
      ("init", "--config", "configs/tiny.py", "--config.model.n_heads=3", "--out", str(tmp_path / "out")),
      ("convert", "jax-to-hf", src, str(tmp_path / "out"), "--max-shard-size", "lots"),
  ]
  for args in cases:
    out = run_cli(*args)
    assert out.returncode == 2, (args, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llada-jax ") and "Traceback" not in out.stderr, out.stderr
  assert not os.path.exists(tmp_path / "out")
