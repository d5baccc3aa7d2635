"""`llada-jax bench gpu` on a machine without a GPU: the dry run at tiny shapes runs every part end to end through
the CLI, writes both reports, and a part that overruns its time box is reported as such without stopping the rest."""

import json
import os
import re
import subprocess
import sys

from conftest import REPO


def _bench(tmp_path, *flags):
  env = {k: v for k, v in os.environ.items() if k != "XLA_PYTHON_CLIENT_MEM_FRACTION"}
  env["JAX_PLATFORMS"] = "cpu"  # a CUDA plugin here would look for a GPU first
  return subprocess.run([sys.executable, "-m", "llada_jax.cli", "bench", "gpu", "--out", str(tmp_path), *flags],
                        capture_output=True, text=True, cwd=REPO, env=env, timeout=600)


def test_the_dry_run_runs_every_part_and_writes_both_reports(tmp_path):
  done = _bench(tmp_path, "--budget", "480")
  assert done.returncode == 0, done.stderr
  report = json.loads((tmp_path / "report.json").read_text())
  assert report["dry_run"] is True and set(report["parts"]) == {"attention", "train", "sample", "likelihood",
                                                                   "serve"}
  assert all(part["status"] == "ok" for part in report["parts"].values()), report["parts"]

  attention = report["parts"]["attention"]
  assert attention["fused"] == "splash" and attention["agree"]
  kernels = [c for c in attention["cases"] if "xla_bf16" not in c]
  assert len(kernels) == 5 and all(c["output"] < 1e-2 and c["gradients"] < 1e-2 for c in kernels)
  model = next(c for c in attention["cases"] if "xla_bf16" in c)
  # bf16 is measurably off fp32, and the fused kernel no further off than the XLA path.
  assert 1e-3 < model["xla_bf16"]["gradients"] < 5e-2 and model["gradients"] <= 1.5 * model["xla_bf16"]["gradients"]

  train = report["parts"]["train"]
  assert train["config"].endswith("configs/tiny.py") and train["per_device_batch"] >= 2
  assert all(c["fits"] for c in train["candidates"]) and train["plan_bytes"] == train["candidates"][-1]["plan_bytes"]
  assert train["tokens_per_s"] > 0 and 0 < train["mfu"] < 1 and train["loss"] == train["loss"]

  sample = report["parts"]["sample"]
  assert [b["batch"] for b in sample["batches"]] == [1, 2]
  for batch in sample["batches"]:
    exact, fast = batch["modes"]
    assert exact["agreement"] == 1.0 and exact["model_calls"] == sample["gen_length"]
    assert 1 <= fast["model_calls"] <= sample["gen_length"]

  likelihood = report["parts"]["likelihood"]
  assert likelihood["pairs_per_call"] == [1, 8] and likelihood["relative_difference"] < 1e-3  # speed only

  serve = report["parts"]["serve"]
  assert [level["concurrency"] for level in serve["levels"]] == [1, 2] and serve["speed_up"] > 0
  assert all(level["errors"] == 0 and level["requests"] > 0 for level in serve["levels"])
  assert 0 < serve["first_block"]["direct"] < 1 and 0 < serve["first_block"]["served"] < 1

  markdown = (tmp_path / "report.md").read_text()
  assert "A dry run" in markdown and "| model, 2 layers" in markdown and "| 8 |" in markdown
  assert report["settings"]["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.90"
  assert "`XLA_PYTHON_CLIENT_MEM_FRACTION=0.90`" in markdown
  last = done.stdout.strip().splitlines()[-1]
  assert re.fullmatch(r"gpu \(dry run, \d+ × cpu\): attention agrees, train [\d,]+ tokens/s \(MFU [\d.]+%\), sample "
                      r"[\d.]+× exact at batch 2, likelihood [\d.]+× at 8 pairs per call, serve [\d.]+× at 2 "
                      r"concurrent", last), last


def test_a_part_over_its_time_box_is_reported_and_the_rest_still_run(tmp_path):
  # 1/8 of 16 s leaves the attention part 2 s: not even enough to import JAX and build its inputs.
  done = _bench(tmp_path, "--budget", "16", "--parts", "attention,likelihood")
  assert done.returncode == 0, done.stderr
  report = json.loads((tmp_path / "report.json").read_text())
  assert report["parts"]["attention"]["status"] == "timed out after 2 s"
  assert list(report["parts"]) == ["attention", "likelihood"]
  assert "attention timed out after 2 s" in done.stdout.strip().splitlines()[-1]


def test_bad_flags_are_one_line_each(tmp_path):
  for flags, message in ((["--parts", "train,bogus"], "--parts train,bogus: choose from attention, train, sample"),
                         (["--budget", "0"], "--budget must be positive"),
                         (["--config", str(tmp_path / "none.py")], "does not exist; pass --config")):
    done = _bench(tmp_path, *flags)
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1
  done = subprocess.run([sys.executable, "-m", "llada_jax.cli", "bench", "gpu"], capture_output=True, text=True,
                        cwd=REPO)
  assert done.returncode == 2 and "pass --out DIR" in done.stderr
