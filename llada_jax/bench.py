"""`llada-jax bench …`: measurements, never assertions. Each benchmark prints a table and returns its numbers."""

import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from llada_jax.errors import UserError


def _run_measured(args: list[str]) -> tuple[float, int]:
  """(seconds, peak RSS bytes) of one `python -m llada_jax.cli …` child process."""
  start = time.time()
  child = subprocess.Popen([sys.executable, "-m", "llada_jax.cli", *args], stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  _, status, usage = os.wait4(child.pid, 0)
  if status:
    raise UserError(f"llada-jax {' '.join(args)} failed: {child.stderr.read().decode()[-500:]}")
  return time.time() - start, usage.ru_maxrss * 1024


def _synthetic_hf(path: str, config) -> int:
  """An HF directory of `config`'s shapes with random bf16 weights, written tensor by tensor; returns its bytes."""
  import ml_dtypes
  from llada_jax import convert
  rng = np.random.default_rng(0)
  tree: dict = {}
  for our_path, _, to_ours, _, shape in convert.tensor_table(config):
    node = tree
    for key in our_path[:-1]:
      node = node.setdefault(key, {})
    node[our_path[-1]] = to_ours(config, rng.standard_normal(shape(config), np.float32).astype(ml_dtypes.bfloat16))
  convert.save_hf(tree, config, path, max_shard_size="2GB")
  return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".safetensors"))


def bench_convert(layers: list[int], dtype: str = "bfloat16") -> list[dict]:
  """Peak RSS of `convert hf-to-jax` and `jax-to-hf` at the 8B's tensor shapes with a few layers, extrapolated
  linearly to 32 layers (memory is the embedding/head plus a per-layer term)."""
  from llada_jax.config import ModelConfig
  rows = []
  with tempfile.TemporaryDirectory(dir=os.environ.get("LLADA_JAX_BENCH_TMP")) as tmp:
    for n in layers:
      config = ModelConfig(n_layers=n, param_dtype=dtype)
      src, mid, out = (os.path.join(tmp, f"{kind}{n}") for kind in ("hf", "jax", "back"))
      size = _synthetic_hf(src, config)
      t_in, rss_in = _run_measured(["convert", "hf-to-jax", src, mid])
      t_out, rss_out = _run_measured(["convert", "jax-to-hf", mid, out])
      rows.append(dict(layers=n, model_gb=size / 1e9, hf_to_jax_s=t_in, hf_to_jax_rss_gb=rss_in / 1e9,
                       jax_to_hf_s=t_out, jax_to_hf_rss_gb=rss_out / 1e9))
      for d in (src, mid, out):
        subprocess.run(["rm", "-rf", d], check=True)
  print(f"{'layers':>6} {'model GB':>9} {'hf→jax s':>9} {'hf→jax RSS GB':>14} {'jax→hf s':>9} {'jax→hf RSS GB':>14}")
  for r in rows:
    print(f"{r['layers']:>6} {r['model_gb']:>9.2f} {r['hf_to_jax_s']:>9.1f} {r['hf_to_jax_rss_gb']:>14.2f} "
          f"{r['jax_to_hf_s']:>9.1f} {r['jax_to_hf_rss_gb']:>14.2f}")
  if len(rows) >= 2:
    a, b = rows[0], rows[-1]
    full = ModelConfig(param_dtype=dtype)
    for key in ("hf_to_jax_rss_gb", "jax_to_hf_rss_gb"):
      slope = (b[key] - a[key]) / (b["layers"] - a["layers"])
      estimate = b[key] + slope * (full.n_layers - b["layers"])
      print(f"extrapolated peak RSS of {key[:9].replace('_', '-')} for the 8B ({full.n_layers} layers, "
            f"{full.num_params() * 2 / 1e9:.1f} GB in {dtype}): {estimate:.1f} GB")
      rows.append({"extrapolated_" + key: estimate})
  return rows
