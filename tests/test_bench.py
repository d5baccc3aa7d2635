"""`llada-jax bench`: the side-by-side worker processes run and agree; the numbers themselves are never asserted."""

import sys

import pytest

import llada_jax
from conftest import REPO
from llada_jax import bench
from llada_jax.errors import UserError


def test_the_pytorch_baseline_ships_with_the_package_and_names_its_extra(monkeypatch):
  assert bench._torch_reference().__name__ == "llada_jax.torch_reference"  # no checkout needed
  monkeypatch.delitem(sys.modules, "llada_jax.torch_reference")
  monkeypatch.delattr(llada_jax, "torch_reference")
  monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
  with pytest.raises(UserError, match=r"the PyTorch baseline needs torch: pip install 'llada-jax\[torch\]'"):
    bench._torch_reference()


@pytest.mark.slow  # over 40 s on 2 cores (suite time)
def test_sample_benchmark_runs_every_side_in_its_own_process_and_they_agree(monkeypatch):
  monkeypatch.chdir(REPO)
  modes = [dict(decoding="threshold", threshold=1.5, cache="none"), dict(decoding="threshold", threshold=0.5,
                                                                           cache="dual")]
  result = bench.bench_sample("configs/tiny.py", ["model.n_layers=1"], prompt_length=8, gen_length=8, steps=8,
                              threads=1, block_length=4, batch=2, modes=modes, mc_num=2, repeats=1, rounds=1)
  exact, above_one, dual, torch_row = result["rows"]
  assert result["identical_tokens"] and exact["model_calls"] == torch_row["model_calls"] == 8
  # a threshold above 1 commits one token per call: the exact sampler with steps = gen_length, token for token
  assert above_one["agreement"] == 1.0 and above_one["model_calls"] == 8
  assert 1 <= dual["model_calls"] <= 8 and dual["tokens_per_call"] == 8 / dual["model_calls"]
  assert all(r["tokens_per_s"] > 0 for r in result["rows"]) and result["speed_up"] > 0
  assert all(r["log_likelihood"] < 0 for r in result["rows"][:-1])


@pytest.mark.slow  # over 25 s on 2 cores (suite time)
def test_kernel_benchmark_sides_compute_the_same_gradients(monkeypatch):
  # GQA (4 query heads on 2 kv heads) exercises the reference's repeat_interleave against our grouped attention.
  monkeypatch.chdir(REPO)
  overrides = ["model.n_kv_heads=2", "data.global_batch=2", "data.seq_len=32"]
  rows = bench.bench_kernels("configs/tiny.py", overrides, iters=1, threads=1, rounds=1,
                             kernels=["output head", "attention"])
  assert [r["kernel"] for r in rows] == ["output head", "attention"]
  assert all(r["gradients_agree"] and r["jax_ms"] > 0 and r["torch_ms"] > 0 for r in rows)
