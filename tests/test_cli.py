"""The `llada-jax` command as a user runs it: exit codes, one-line errors, nothing half-written."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, tiny_hf_config, write_hf_dir


def run_cli(*args, cwd=REPO):
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "llada_jax.cli", *args], capture_output=True, text=True, cwd=cwd,
                        env=env, timeout=300)


def test_help_explains_every_command():
  out = run_cli("--help")
  assert out.returncode == 0
  for command in ("convert", "init", "info", "train", "generate", "chat", "eval", "tokenizer", "prepare-data",
                  "bench"):
    assert command in out.stdout
  out = run_cli("convert", "--help")
  assert "--max-shard-size" in out.stdout and "--dtype" in out.stdout


def test_loop_commands_restart_once_with_the_steady_state_allocator(monkeypatch):
  """`llada-jax train|generate|chat|eval|bench train|sample|kernels` re-execute once with glibc tunables that keep
  XLA's per-step buffers mapped (they were faulted in anew on every step), keeping the user's own tunables and
  arguments; the child, which has them, runs main directly; conversion keeps the default allocator."""
  from llada_jax import cli
  if not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
    pytest.skip("glibc only")
  calls = []
  monkeypatch.setattr(os, "execve", lambda exe, argv, env: calls.append((argv, env["GLIBC_TUNABLES"])))
  monkeypatch.setattr(cli, "main", lambda: 0)
  monkeypatch.setattr(sys, "argv", ["llada-jax", "train", "--config", "configs/tiny.py"])
  monkeypatch.setenv("GLIBC_TUNABLES", "glibc.rtld.optional_static_tls=4096")
  monkeypatch.delenv("LLADA_JAX_NO_REEXEC", raising=False)
  cli.entry()
  assert calls == [([sys.executable, "-m", "llada_jax.cli", "train", "--config", "configs/tiny.py"],
                    "glibc.rtld.optional_static_tls=4096:" + cli._ALLOCATOR_TUNABLES)]
  assert "glibc.malloc.hugetlb=1" in cli._ALLOCATOR_TUNABLES and "glibc.malloc.mmap_max=0" in cli._ALLOCATOR_TUNABLES
  monkeypatch.setenv("GLIBC_TUNABLES", calls[0][1])  # the child
  cli.entry()
  monkeypatch.setenv("GLIBC_TUNABLES", "")
  for argv in (["convert", "hf-to-jax", "a", "b"], ["bench", "convert"], []):
    monkeypatch.setattr(sys, "argv", ["llada-jax", *argv])
    cli.entry()
  monkeypatch.setattr(sys, "argv", ["llada-jax", "bench", "sample"])
  cli.entry()
  assert len(calls) == 2
  monkeypatch.setattr(sys, "argv", ["llada-jax", "train"])
  monkeypatch.setenv("LLADA_JAX_NO_REEXEC", "1")
  cli.entry()
  assert len(calls) == 2


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


SMALL = ["--config.model.d_model=32", "--config.model.n_heads=2", "--config.model.n_kv_heads=2",
         "--config.model.n_layers=2", "--config.model.mlp_hidden_size=64", "--config.data.seq_len=32",
         "--config.data.global_batch=4", "--config.train.steps=4", "--config.train.eval_every=2",
         "--config.train.checkpoint_every=2", "--config.train.log_every=1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run") / "tiny")
  out = run_cli("train", "--config", "configs/tiny.py", "--workdir", workdir, "--no-progress", *SMALL)
  assert out.returncode == 0, out.stderr[-3000:]
  return workdir, out.stdout


def test_train_prints_the_summary_and_leaves_a_usable_run(trained):
  workdir, stdout = trained
  for line in ("llada-jax train: summary", "val loss", "tokens/s", "checkpoint", "tensorboard", "sample"):
    assert line in stdout
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
  again = run_cli("train", "--config", "configs/tiny.py", "--workdir", workdir, "--no-progress", *SMALL)
  assert again.returncode == 2 and "--resume" in again.stderr


def test_generate_and_chat_on_the_trained_run(trained):
  workdir, _ = trained
  out = run_cli("generate", "--checkpoint", workdir, "--prompt", "ROMEO:", "--gen-length", "8", "--steps", "8",
                "--show-denoising")
  assert out.returncode == 0, out.stderr[-2000:]
  steps = [line for line in out.stdout.splitlines() if line.startswith("[step")]
  assert len(steps) == 8 and steps[0].count("░") == 7 and "░" not in steps[-1]
  chat = subprocess.run([sys.executable, "-m", "llada_jax.cli", "chat", "--checkpoint", workdir, "--gen-length",
                         "8", "--steps", "8", "--block-length", "4"], input="Hello\nWho are you?\n\n",
                        capture_output=True, text=True, cwd=REPO, timeout=300,
                        env=dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu"))
  assert chat.returncode == 0, chat.stderr[-2000:]
  assert chat.stdout.count("llada> ") == 2
  bad = run_cli("generate", "--checkpoint", workdir, "--prompt", "x", "--gen-length", "10", "--block-length", "4")
  assert bad.returncode == 2 and "multiple of block_length" in bad.stderr


def test_eval_and_export_of_the_trained_run(trained, tmp_path):
  workdir, _ = trained
  text = tmp_path / "held_out.txt"
  text.write_text("Now is the winter of our discontent\nMade glorious summer by this sun of York.\n" * 20)
  results = tmp_path / "results.json"
  out = run_cli("eval", "--checkpoint", workdir, "--tasks", "elbo,reversal_poems", "--data", str(text), "--limit",
                "2", "--elbo-seq-len", "32", "--elbo-samples", "2", "--output", str(results))
  assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1  # a text file is no poems file
  out = run_cli("eval", "--checkpoint", workdir, "--tasks", "elbo", "--data", str(text), "--limit", "2",
                "--elbo-seq-len", "32", "--elbo-samples", "2", "--output", str(results))
  assert out.returncode == 0, out.stderr[-2000:]
  report = json.loads(results.read_text())
  assert report["results"][0]["task"] == "elbo" and report["results"][0]["value"] > 0
  out = run_cli("convert", "jax-to-hf", workdir, str(tmp_path / "hf"))
  assert out.returncode == 0, out.stderr[-2000:]
  assert json.loads((tmp_path / "hf" / "config.json").read_text())["d_model"] == 32


def test_tokenizer_and_prepare_data_commands(tmp_path):
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("".join(f"Line {i} of a small corpus, with words and more words.\n" for i in range(3000)))
  out = run_cli("tokenizer", "train", "--input", str(corpus), "--vocab-size", "300", "--out", str(tmp_path / "t.model"))
  assert out.returncode == 0, out.stderr[-2000:]
  assert "mask 3" in out.stdout
  docs = tmp_path / "docs"
  docs.mkdir()
  for i in range(20):
    (docs / f"{i}.txt").write_text(corpus.read_text()[i * 500:(i + 1) * 2000])
  out = run_cli("prepare-data", "--config", "configs/tiny.py", "--config.data.source=text",
                f"--config.data.paths={docs}/*.txt", f"--config.data.tokenizer={tmp_path / 't.model'}",
                "--config.data.seq_len=64", "--config.data.val_fraction=0.1", "--out", str(tmp_path / "prepared"))
  assert out.returncode == 0, out.stderr[-2000:]
  assert "array_record" in out.stdout and any(f.endswith(".array_record") for f in os.listdir(tmp_path / "prepared"))
