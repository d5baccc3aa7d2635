"""`llada-jax bench`: the side-by-side worker processes run and agree; the numbers themselves are never asserted."""

from conftest import REPO
from llada_jax import bench


def test_sample_benchmark_runs_both_sides_in_their_own_processes_and_they_agree(monkeypatch):
  monkeypatch.chdir(REPO)
  result = bench.bench_sample("configs/tiny.py", ["model.n_layers=1"], prompt_length=8, gen_length=8, steps=8,
                              threads=1, repeats=1, rounds=1)
  assert result["identical_tokens"] and result["jax_nfe"] == result["torch_nfe"] == 8
  assert result["jax_tokens_per_s"] > 0 and result["torch_tokens_per_s"] > 0
