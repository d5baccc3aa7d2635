"""`llada-jax bench`: the side-by-side worker processes run and agree; the numbers themselves are never asserted."""

from conftest import REPO
from llada_jax import bench


def test_sample_benchmark_runs_both_sides_in_their_own_processes_and_they_agree(monkeypatch):
  monkeypatch.chdir(REPO)
  result = bench.bench_sample("configs/tiny.py", ["model.n_layers=1"], prompt_length=8, gen_length=8, steps=8,
                              threads=1, repeats=1, rounds=1)
  assert result["identical_tokens"] and result["jax_nfe"] == result["torch_nfe"] == 8
  assert result["jax_tokens_per_s"] > 0 and result["torch_tokens_per_s"] > 0


def test_kernel_benchmark_sides_compute_the_same_gradients(monkeypatch):
  # GQA (4 query heads on 2 kv heads) exercises the reference's repeat_interleave against our grouped attention.
  monkeypatch.chdir(REPO)
  overrides = ["model.n_kv_heads=2", "data.global_batch=2", "data.seq_len=32"]
  rows = bench.bench_kernels("configs/tiny.py", overrides, iters=1, threads=1, rounds=1,
                             kernels=["output head", "attention"])
  assert [r["kernel"] for r in rows] == ["output head", "attention"]
  assert all(r["gradients_agree"] and r["jax_ms"] > 0 and r["torch_ms"] > 0 for r in rows)
