"""`llada-jax plan`: the real train step compiled ahead of time; a TPU topology where libtpu is installed, simulated
CPU devices otherwise."""

import importlib.util
import os
import re
import shlex
import subprocess
import sys

import pytest

from conftest import REPO
from llada_jax import config as config_lib, flops, plan
from llada_jax.config import model_config_from
from llada_jax.errors import UserError
from test_cli import one_error_line, run_cli

SMALL = ["--config.model.d_model=128", "--config.model.n_heads=4", "--config.model.n_kv_heads=2",
         "--config.model.n_layers=2", "--config.model.mlp_hidden_size=256"]
VERDICT = re.compile(r"^(fits|does not fit): \d+\.\d\d GiB of \d+\.\d\d GiB per device$")
HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
needs_cuda_plugin = pytest.mark.skipif(not plan.has_cuda_plugin(), reason="compiling for GPUs needs JAX's CUDA plugin "
                                       "(pip install -e '.[gpu]'); no GPU is needed")


def test_plan_compiles_the_train_step_and_ends_with_the_verdict():
  topology = "v5e:2x2" if HAS_LIBTPU else "cpu:4"
  out = run_cli("plan", "--config", "configs/tiny.py", "--topology", topology, "--mesh", "fsdp=4",
                "--per-device-batch", "2", "--seq-len", "128", *SMALL)
  assert out.returncode == 0, out.stderr[-3000:]
  lines = out.stdout.strip().splitlines()
  assert VERDICT.match(lines[-1]) and lines[-1].startswith("fits: "), lines[-1]
  assert "data 1 × fsdp 4 × tensor 1" in out.stdout and "2 × 128 tokens per device" in out.stdout
  assert f"attention {'splash' if HAS_LIBTPU else 'xla'}" in out.stdout  # what "auto" means for those chips


def test_plan_memory_is_the_sharded_state_and_flops_are_analytic():
  cfg = config_lib.apply_overrides(config_lib.load_config_file(f"{REPO}/configs/tiny.py"),
                                   [a[len("--config."):] for a in SMALL])
  result, caveat = plan.make_plan(cfg, "cpu:8", "fsdp=8", 2, 64)
  config = model_config_from(cfg)
  # fp32 parameters and two Adam moments, every matrix split 8 ways over fsdp (d_model 128 divides).
  state_bytes = 3 * 4 * config.num_params() / 8
  assert abs(result.memory["arguments"] - state_bytes) / state_bytes < 0.05
  assert result.memory["aliased"] >= 0.95 * state_bytes  # the donated state is updated in place
  # tiny masks paired counts: the head runs on 65 of every 128 positions.
  assert result.flops_per_step == flops.train_flops_per_token(config, 64, 65 / 128) * 16 * 64
  assert "the bytes are not a TPU's" in caveat
  assert VERDICT.match(plan.verdict(result))


def test_tensor_parallel_chips_share_their_sequences():
  """With tensor=2, two chips hold the same sequences: the step's tokens are per_device_batch × data × fsdp."""
  cfg = config_lib.apply_overrides(config_lib.load_config_file(f"{REPO}/configs/tiny.py"),
                                   [a[len("--config."):] for a in SMALL])
  result, _ = plan.make_plan(cfg, "cpu:4", "fsdp=2,tensor=2", 2, 64)
  assert result.tokens_per_step == 2 * 2 * 64
  seconds, rate = result.at_mfu(0.4)
  assert seconds == result.flops_per_step / (4 * result.peak_flops * 0.4)
  assert rate == 2 * 2 * 64 / seconds / 4


def test_an_out_of_memory_compile_reads_as_does_not_fit():
  failed = plan.Plan(topology="v5e:16x16", chips=256, mesh={}, per_device_batch=1, seq_len=4096,
                     remat_policy="save_dots", attention_impl="xla", capacity_bytes=16 * plan.GIB,
                     compile_seconds=1.0, tokens_per_step=4096 * 256, flops_per_step=1.0, peak_flops=1.0,
                     xla_error="RESOURCE_EXHAUSTED: HLO temporaries (15.90G) exceed available HBM (15.75G)")
  assert plan.verdict(failed) == "does not fit: 15.90 GiB of 16.00 GiB per device"


@pytest.mark.parametrize("flags,message", [
    (["--topology", "v9x:2x2"], "unknown chip 'v9x'"),
    (["--topology", "cpu:x"], "expected cpu:N"),
    (["--topology", "cpu:4", "--mesh", "fsdp=four"], "expected comma-separated data=N"),
    (["--topology", "cpu:4", "--mesh", "fsdp=3"], "but there are 4 devices"),
    (["--topology", "h100:0"], "expected h100:G (one node of G GPUs) or h100:NxG"),
    (["--topology", "h100:2x"], "expected h100:G (one node of G GPUs) or h100:NxG"),
])
def test_plan_user_errors_are_one_line(flags, message):
  line = one_error_line(run_cli("plan", "--config", "configs/tiny.py", *flags), "plan")
  assert message in line


@pytest.mark.skipif(not HAS_LIBTPU, reason="needs libtpu (pip install -e '.[tpu]')")
@pytest.mark.parametrize("topology,chips,hbm", [("v4:2x2x1", 4, 32), ("v5p:2x2x1", 4, 95), ("v5e:2x2", 4, 16)])
def test_each_chip_is_one_device_with_its_whole_hbm(topology, chips, hbm):
  """v4 and v5p run their two TensorCores as one device (megacore), as a real pod does; without it libtpu's
  compile-only v4 topology lists 8 devices for 4 chips, each planned against a whole chip's HBM."""
  devices, capacity, caveat = plan.devices_for(topology)
  assert len(devices) == chips and len({tuple(d.coords) for d in devices}) == chips
  assert capacity == hbm * plan.GIB and caveat is None


@needs_cuda_plugin
def test_plan_for_gpu_nodes_compiles_with_cudnn_attention():
  """h100:2x8 is two nodes of eight abstract H100s, planned on this CPU machine: "auto" is cuDNN in bf16, the
  capacity is the H100's own memory, and the step is the real one."""
  out = run_cli("plan", "--config", "configs/tiny.py", "--topology", "h100:2x8", "--mesh", "fsdp=16",
                "--per-device-batch", "1", "--seq-len", "256", "--config.model.dtype=bfloat16", *SMALL)
  assert out.returncode == 0, out.stderr[-3000:]
  lines = out.stdout.strip().splitlines()
  # JAX's allocator takes 75% of an H100's 79.14 GiB unless told otherwise: that is what a process may use.
  assert lines[-1].startswith("fits: ") and lines[-1].endswith(" of 59.36 GiB per device"), lines[-1]
  assert "a JAX process may use 0.75 of each GPU's 79.14 GiB (JAX's default" in out.stdout
  assert "h100:2x8 (16 devices)" in out.stdout and "attention cudnn" in out.stdout
  assert re.search(r"^collectives  \d+ all-gather, .*; \d+ exposed", out.stdout, re.M)


GPU_8B = ["--config", "configs/llada_8b.py", "--topology", "h100:8", "--mesh", "fsdp=8", "--per-device-batch", "1"]


def _plan_with(env: dict) -> tuple[float, dict]:
  """(GiB per device, the collectives line's figures, the output) of the 8B on one H100 node, under `env`."""
  out = subprocess.run([sys.executable, "-m", "llada_jax.cli", "plan", *GPU_8B], capture_output=True, text=True,
                       cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", **env}, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  total = float(re.search(r"→ total ([\d.]+) GiB", out.stdout).group(1))
  line = re.search(r"^collectives  (.*)$", out.stdout, re.M).group(1)
  figures = {kind: int(n) for n, kind in re.findall(r"(\d+) (all-gather|reduce-scatter|all-reduce)", line)}
  figures["per_loop_body"] = int(re.search(r"at most (\d+) in one loop body", line).group(1))
  return total, figures, out.stdout


@needs_cuda_plugin
def test_the_slurm_launchers_xla_settings_do_what_it_says():
  """launch/slurm_gpu.sbatch keeps each XLA setting for what the plan shows: the combine thresholds gather a layer's
  weights in fewer collectives at the same memory, and the memory share raises the plan's capacity."""
  done = subprocess.run(["bash", "launch/slurm_gpu.sbatch", "runs/x"], capture_output=True, text=True, cwd=REPO,
                        env={**os.environ, "SLURM_NTASKS": "8", "SLURM_JOB_NODELIST": "gpu01", "COORDINATOR": "gpu01",
                             "DRY_RUN": "1", "XLA_FLAGS": ""})
  task = shlex.split(shlex.split(done.stdout.strip().splitlines()[-1])[5])
  settings = dict(word.split("=", 1) for word in task[1:3])
  bare_total, bare, _ = _plan_with({})
  total, launched, out = _plan_with(settings)
  assert total == bare_total
  assert launched["all-gather"] < bare["all-gather"] and launched["per_loop_body"] < bare["per_loop_body"]
  assert out.strip().endswith(" of 71.23 GiB per device") and settings["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.90"


def test_a_bad_memory_share_is_one_line(monkeypatch):
  monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "90%")
  with pytest.raises(UserError, match=r"XLA_PYTHON_CLIENT_MEM_FRACTION=90% must be a number in \(0, 1\]"):
    plan.gpu_memory_fraction()


@needs_cuda_plugin
@pytest.mark.parametrize("chip,memory_gib,peak", [("h100", 79.14, 989e12), ("h200", 140.40, 989e12),
                                                  ("a100", 79.26, 312e12), ("b200", 178.36, 2250e12)])
def test_every_shipped_gpu_target_parses(chip, memory_gib, peak, monkeypatch):
  monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "1")
  devices, capacity, caveat = plan.devices_for(f"{chip}:8")
  assert len(devices) == 8 and round(capacity / plan.GIB, 2) == memory_gib
  assert caveat.startswith(f"a JAX process may use 1.00 of each GPU's {memory_gib:.2f} GiB (XLA_PYTHON_CLIENT_MEM")
  assert flops.peak_flops(devices[0]) == peak
