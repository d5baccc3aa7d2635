"""The `llada-jax` command as a user runs it: exit codes, one-line errors, nothing half-written."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, tiny_hf_config, write_hf_dir
from llada_jax import checkpoint


def run_cli(*args, cwd=REPO):
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "llada_jax.cli", *args], capture_output=True, text=True, cwd=cwd,
                        env=env, timeout=300)


def test_help_explains_every_command():
  out = run_cli("--help")
  assert out.returncode == 0
  for command in ("convert", "init", "info", "train", "generate", "chat", "eval", "lm-eval", "lm-eval-tasks",
                  "tokenizer", "prepare-data", "bench"):
    assert command in out.stdout
  out = run_cli("convert", "--help")
  assert "--max-shard-size" in out.stdout and "--dtype" in out.stdout
  out = run_cli("lm-eval", "--help")
  assert out.returncode == 0 and all(arg in out.stdout for arg in ("checkpoint=DIR", "mc_num", "check_greedy"))
  out = run_cli("info", "runs/none", "--no-such-flag")
  assert out.returncode == 2 and "unrecognized arguments: --no-such-flag" in out.stderr


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
  fast = run_cli("generate", "--checkpoint", workdir, "--prompt", "ROMEO:", "--gen-length", "8", "--block-length",
                 "4", "--decoding", "threshold", "--threshold", "0.5", "--cache", "dual")
  assert fast.returncode == 0 and fast.stdout.strip(), fast.stderr[-2000:]
  bad = run_cli("generate", "--checkpoint", workdir, "--prompt", "x", "--decoding", "threshold", "--remasking",
                "random")
  assert bad.returncode == 2 and "needs remasking=low_confidence" in bad.stderr and len(bad.stderr.splitlines()) == 1


def test_the_denoising_trace_shows_parallel_unmasking_and_says_how(trained):
  """The tiny config's stored defaults fill blocks of 2 left to right, which would look autoregressive: a trace
  without --block-length runs the whole canvas as one block, and its first line says so."""
  workdir, _ = trained
  out = run_cli("generate", "--checkpoint", workdir, "--prompt", "ROMEO:", "--show-denoising")
  assert out.returncode == 0, out.stderr[-2000:]
  assert ("denoising 64 tokens as one block (block length 64 = gen length: any position at any step, --block-length "
          "to change): 64 steps, 1 token per step") in out.stdout.splitlines()
  canvases = [line.split("] ", 1)[1] for line in out.stdout.splitlines() if line.startswith("[step")]
  assert len(canvases) == 64
  # Left to right in blocks of 2, at most one masked position lies left of a committed token.
  masked_before_last_token = [c[:max(i for i, ch in enumerate(c) if ch != "░")].count("░") for c in canvases[:-1]]
  assert max(masked_before_last_token) > 2
  blocks = run_cli("generate", "--checkpoint", workdir, "--prompt", "ROMEO:", "--show-denoising", "--block-length",
                   "32")
  assert "in 2 blocks of 32, left to right: 64 steps, 1 token per step" in blocks.stdout


@pytest.mark.parametrize("command", [
    ["generate", "--checkpoint", "MISSING", "--prompt", "hi"],
    ["chat", "--checkpoint", "MISSING"],
    ["eval", "--checkpoint", "MISSING", "--tasks", "elbo"],
    ["lm-eval", "--model_args", "checkpoint=MISSING", "--tasks", "hellaswag"],
    ["convert", "hf-to-jax", "MISSING", "OUT"],
    ["convert", "jax-to-hf", "MISSING", "OUT"],
    ["info", "MISSING"],
    ["bench", "sample", "--checkpoint", "MISSING"],
    ["train", "--config", "configs/tiny.py", "--workdir", "OUT", "--config.train.init_from=MISSING"],
], ids=["generate", "chat", "eval", "lm-eval", "convert-hf-to-jax", "convert-jax-to-hf", "info", "bench-sample",
        "train-init_from"])
def test_a_missing_checkpoint_is_reported_as_missing_by_every_command(command, tmp_path):
  missing, out = str(tmp_path / "does-not-exist"), str(tmp_path / "out")
  if command[0] == "lm-eval":
    pytest.importorskip("lm_eval")
  result = run_cli(*[arg.replace("MISSING", missing).replace("OUT", out) for arg in command])
  assert result.returncode == 2, result.stderr[-3000:]
  # lm-eval's harness logs its own INFO lines before it builds our model; the error is still one line, the last.
  lines = [line for line in result.stderr.splitlines() if line.strip() and " INFO " not in line]
  assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
  assert lines[0].startswith(f"llada-jax {command[0]}: error: ")
  assert f"the checkpoint {missing} does not exist" in lines[0]
  assert not os.path.exists(out)


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
  assert report["results"][0]["task"] == "elbo" and report["results"][0]["metrics"]["nll_bound_nats"] > 0
  records = [json.loads(line) for line in open(report["records"])]
  assert records[0]["run"]["seed"] == 0 and [r["record"]["index"] for r in records[2:]] == [0, 1]
  again = run_cli("eval", "--checkpoint", workdir, "--tasks", "elbo", "--data", str(text), "--output", str(results))
  assert again.returncode == 2 and "--resume" in again.stderr and json.loads(results.read_text()) == report
  more = run_cli("eval", "--checkpoint", workdir, "--tasks", "elbo", "--data", str(text), "--limit", "3",
                 "--elbo-seq-len", "32", "--elbo-samples", "2", "--output", str(results), "--resume")
  assert more.returncode == 0, more.stderr[-2000:]
  resumed = json.loads(results.read_text())["results"][0]
  assert resumed["count"] == 3 and resumed["details"] == [] and "± stderr" in more.stdout
  # windows 0..2 are one chunk: the unfinished chunk is scored whole, as an uninterrupted run of 3 would
  lines = open(report["records"]).readlines()
  assert [json.loads(line)["record"]["index"] for line in lines[2:]] == [0, 1, 0, 1, 2]
  other = run_cli("eval", "--checkpoint", workdir, "--tasks", "elbo", "--data", str(text), "--seed", "1",
                  "--output", str(results), "--resume")
  assert other.returncode == 2 and "seed=0" in other.stderr and len(other.stderr.strip().splitlines()) == 1
  here = tmp_path / "cwd"
  here.mkdir()
  default = run_cli("eval", "--checkpoint", workdir, "--tasks", "elbo", "--data", str(text), "--limit", "1",
                    "--elbo-seq-len", "32", "--elbo-samples", "1", cwd=here)
  assert default.returncode == 0, default.stderr[-2000:]
  assert sorted(p.suffix for p in here.glob("eval_tiny_*")) == [".json", ".jsonl"]  # beside the user, not the run
  assert not list(pathlib.Path(workdir).rglob("eval_*"))
  out = run_cli("convert", "jax-to-hf", workdir, str(tmp_path / "hf"))
  assert out.returncode == 0, out.stderr[-2000:]
  assert json.loads((tmp_path / "hf" / "config.json").read_text())["d_model"] == 32


def test_tokenizer_and_prepare_data_commands(tmp_path):
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("".join(f"Line {i} of a small corpus, with words and more words.\n" for i in range(3000)))
  out = run_cli("tokenizer", "train", "--input", str(corpus), "--vocab-size", "300", "--out", str(tmp_path / "tok"))
  assert out.returncode == 0, out.stderr[-2000:]
  assert "mask 3" in out.stdout
  docs = tmp_path / "docs"
  docs.mkdir()
  for i in range(20):
    (docs / f"{i}.txt").write_text(corpus.read_text()[i * 500:(i + 1) * 2000])
  out = run_cli("prepare-data", "--config", "configs/tiny.py", "--config.data.source=text",
                f"--config.data.paths={docs}/*.txt", f"--config.data.tokenizer={tmp_path / 'tok'}",
                "--config.data.seq_len=64", "--config.data.val_fraction=0.1", "--out", str(tmp_path / "prepared"))
  assert out.returncode == 0, out.stderr[-2000:]
  assert "array_record" in out.stdout and any(f.endswith(".array_record") for f in os.listdir(tmp_path / "prepared"))
  assert oct(os.stat(tmp_path / "prepared").st_mode & 0o077) == oct(0o055)  # readable by others, as mkdir makes it

  # Nothing is overwritten without --overwrite: not a tokenizer file, not a directory holding someone's files.
  model_bytes = (tmp_path / "tok" / "tokenizer.json").read_bytes()
  out = run_cli("tokenizer", "train", "--input", str(corpus), "--vocab-size", "280", "--out", str(tmp_path / "tok"))
  assert "pass --overwrite" in one_error_line(out, "tokenizer")
  assert (tmp_path / "tok" / "tokenizer.json").read_bytes() == model_bytes
  mine = tmp_path / "mine"
  mine.mkdir()
  (mine / "notes.txt").write_text("keep me")
  out = run_cli("prepare-data", "--config", "configs/tiny.py", "--config.data.source=text",
                f"--config.data.paths={docs}/*.txt", f"--config.data.tokenizer={tmp_path / 'tok'}",
                "--config.data.seq_len=64", "--out", str(mine))
  assert "pass --overwrite" in one_error_line(out, "prepare-data")
  assert os.listdir(mine) == ["notes.txt"]


def one_error_line(out, command: str) -> str:
  """The CLI's promise for a user-caused failure: exit status 2 and exactly one line on stderr, no traceback."""
  assert out.returncode == 2, out.stderr[-3000:]
  lines = [line for line in out.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith(f"llada-jax {command}: error: "), out.stderr[-3000:]
  return lines[0]


@pytest.mark.slow  # over 40 s on 2 cores (suite time)
def test_damaged_and_incomplete_checkpoints_fall_back_or_fail_in_one_line(trained, tmp_path):
  from test_checkpoint import damage
  workdir = str(tmp_path / "run")
  shutil.copytree(trained[0], workdir)
  damage(os.path.join(workdir, "checkpoints", "4", "params"))
  generate = ("generate", "--prompt", "ROMEO:", "--gen-length", "4", "--steps", "4")
  out = run_cli(*generate, "--checkpoint", workdir)
  assert out.returncode == 0, out.stderr[-3000:]
  # Where the 4 KiB land decides which check sees them: the array decoder (a broken chunk) or the fingerprint.
  noticed = ("checkpoints/4/params: the array", "checkpoints/4/params cannot be read")
  assert "warning: " in out.stderr and any(n in out.stderr for n in noticed), out.stderr
  assert "using the older" in out.stderr and out.stderr.rstrip().endswith("checkpoints/2 instead")
  line = one_error_line(run_cli(*generate, "--checkpoint", os.path.join(workdir, "checkpoints", "4")), "generate")
  assert ("differs from what was saved" in line or "cannot be read" in line) and "delete it" in line
  debug = run_cli("--debug", *generate, "--checkpoint", os.path.join(workdir, "checkpoints", "4"))
  assert debug.returncode == 2 and "Traceback" in debug.stderr and "error: " in debug.stderr

  damage(os.path.join(workdir, "checkpoints", "4", "state"), "truncate")
  resume = ("train", "--config", "configs/tiny.py", "--workdir", workdir, "--no-progress", "--resume", *SMALL)
  out = run_cli(*resume, "--config.train.steps=6")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "resumed from step 2" in out.stdout and "checkpoint step 4 is unusable" in out.stderr
  assert os.path.isdir(os.path.join(workdir, "corrupt_checkpoints", "4"))
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints")), key=int) == ["2", "4", "6"]

  shutil.rmtree(os.path.join(workdir, "checkpoints", "6", "params"))  # an item gone missing
  out = run_cli(*resume, "--config.train.steps=8")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "resumed from step 4" in out.stdout and "params/ missing" in out.stderr

  for step in checkpoint.committed_steps(workdir):  # nothing left to fall back to: refused, nothing moved
    damage(os.path.join(workdir, "checkpoints", str(step), "state"), "truncate")
  kept = checkpoint.committed_steps(workdir)
  line = one_error_line(run_cli(*resume, "--config.train.steps=10"), "train")
  assert "no checkpoint in" in line and "can be restored" in line and "move the bad step directories" in line
  assert checkpoint.committed_steps(workdir) == kept


def test_cadences_and_recover_lr_are_checked_before_anything_runs(tmp_path):
  base = ("train", "--config", "configs/tiny.py", "--workdir", str(tmp_path / "run"), "--no-progress")
  for flag, key in [("--config.train.checkpoint_every=0", "checkpoint_every"), ("--config.train.log_every=0",
                                                                                "log_every")]:
    assert f"train.{key}=0 must be at least 1" in one_error_line(run_cli(*base, flag), "train")
  assert "holds none" in one_error_line(run_cli(*base, "--recover-lr", "1e-4"), "train")
  assert not (tmp_path / "run").exists()


@pytest.mark.slow  # over 30 s on 2 cores (suite time)
def test_a_full_disk_stops_the_run_in_one_line_and_keeps_the_committed_step(small_disk):
  workdir = str(small_disk / "run")
  out = run_cli("train", "--config", "configs/tiny.py", "--workdir", workdir, "--no-progress", *SMALL,
                "--config.train.steps=8", "--config.train.eval_every=0")
  line = one_error_line(out, "train")
  assert "writing checkpoint step 4" in line and "no space left on device" in line
  assert "the last committed checkpoint is step 2" in line and "--resume" in line
  assert os.listdir(os.path.join(workdir, "checkpoints")) == ["2"]  # the half-written step 4 is gone
  assert checkpoint.load_layered(workdir)[2].endswith(os.path.join("checkpoints", "2"))


def test_read_only_places_fail_before_any_work_in_one_line(trained, small_disk, tmp_path):
  workdir = str(small_disk / "run")
  shutil.copytree(trained[0], workdir, ignore=shutil.ignore_patterns("2"))  # the newest step fits the disk
  subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
  for args in [("--workdir", str(small_disk / "new")), ("--workdir", workdir, "--resume")]:
    line = one_error_line(run_cli("train", "--config", "configs/tiny.py", "--no-progress", *SMALL, *args), "train")
    assert "read-only file system" in line and "choose a writable directory" in line
  out = run_cli("eval", "--checkpoint", workdir, "--tasks", "elbo", "--limit", "1", "--output",
                os.path.join(workdir, "results.json"))
  assert "read-only file system" in one_error_line(out, "eval") and "llada> " not in out.stdout
  assert "task" not in out.stdout  # refused before scoring, not after printing the table
