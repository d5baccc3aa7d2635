"""The sharded train step and loop: device-count invariance, exact resume, mesh changes, NaN handling, errors."""

import functools
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import REPO
from llada_jax import checkpoint, config as config_lib, convert, optim, reporting, sharding, train
from llada_jax.pretrained import load_pretrained
from llada_jax.sampler import SamplingConfig
from llada_jax.errors import UserError

SMALL_MODEL = ["model.d_model=32", "model.n_heads=4", "model.n_kv_heads=2", "model.n_layers=2",
               "model.mlp_hidden_size=64"]


def tiny_cfg(*overrides):
  cfg = config_lib.load_config_file(os.path.join(REPO, "configs", "tiny.py"))
  return config_lib.apply_overrides(cfg, SMALL_MODEL + [
      "data.seq_len=32", "data.global_batch=8", "train.steps=6", "train.warmup_steps=2", "train.log_every=1",
      "train.eval_every=0", "train.checkpoint_every=3", "train.sample_after=false", "train.async_checkpoint=false",
      *overrides])


typed = config_lib.Experiment.from_config


def _one_step(mesh_shape, cfg):
  model_config = config_lib.model_config_from(cfg)
  devices = jax.devices()[:int(np.prod(mesh_shape))]
  mesh = sharding.make_mesh(*mesh_shape, devices=devices)
  optimizer = optim.make_optimizer(typed(cfg).train)
  _, shardings = train.state_shardings(model_config, optimizer, mesh)
  tokens = np.random.default_rng(0).integers(8, 4000, (8, 32)).astype(np.int32)
  with jax.set_mesh(mesh):
    state = jax.jit(lambda: train.init_state(model_config, optimizer, 0), out_shardings=shardings)()
    step = jax.jit(train.make_train_step(model_config, typed(cfg).train, optimizer),
                   in_shardings=(shardings, train.batch_sharding(mesh)), out_shardings=(shardings, None))
    batch = {"tokens": jax.device_put(tokens, train.batch_sharding(mesh))}
    for _ in range(2):
      state, metrics = step(state, batch)
  return float(metrics["loss"]), jax.device_get(state["params"])


# (2, 2, 2) has all 3 axes; the others are slow
@pytest.mark.parametrize("mesh_shape,masking", [((2, 2, 2), "bernoulli"), ((2, 2, 2), "paired_counts")] + [
    pytest.param(m, "bernoulli", marks=pytest.mark.slow) for m in ((1, 8, 1), (1, 4, 2), (8, 1, 1))])
def test_sharded_step_equals_single_device(mesh_shape, masking):
  """Tolerance: fp32 reductions split across devices reorder sums (~1e-6 relative). paired_counts gathers the
  masked positions of row pairs for the head: the same on a batch split over devices."""
  cfg = tiny_cfg(f"train.masking={masking}")
  loss_1, params_1 = _one_step((1, 1, 1), cfg)
  loss_n, params_n = _one_step(mesh_shape, cfg)
  np.testing.assert_allclose(loss_n, loss_1, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(params_n), jax.tree.leaves(params_1)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.slow  # over 30 s on 2 cores (suite time)
@pytest.mark.parametrize("objective", [[], ["train.objective=autoregressive", "model.causal=true",
                                              "train.masking=bernoulli"]])
def test_the_chunked_loss_trains_like_the_whole_sequence_at_once(objective):
  """The output head + CE in 4 chunks of 8 positions, sharded fsdp×tensor: the same loss and updated weights as the
  single-device step computing all logits at once (to the sharded-step tolerance)."""
  loss_1, params_1 = _one_step((1, 1, 1), tiny_cfg(*objective))
  loss_n, params_n = _one_step((1, 4, 2), tiny_cfg(*objective, "train.loss_chunk_length=8"))
  np.testing.assert_allclose(loss_n, loss_1, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(params_n), jax.tree.leaves(params_1)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.slow  # over 40 s on 2 cores (suite time)
def test_gradient_accumulation_averages_the_micro_batch_gradients():
  """accum=2 equals averaging the gradients of the two micro-batches (rows k, k+2, …) with their own keys."""
  cfg = tiny_cfg("train.grad_accum=2")
  model_config, train_cfg = config_lib.model_config_from(cfg), typed(cfg).train
  optimizer = optim.make_optimizer(train_cfg)
  state = train.init_state(model_config, optimizer, 0)
  tokens = jnp.asarray(np.random.default_rng(0).integers(8, 4000, (8, 32)), jnp.int32)
  new_state, metrics = jax.jit(train.make_train_step(model_config, train_cfg, optimizer))(state, {"tokens": tokens})

  loss_fn = functools.partial(train._objective_loss, model_config=model_config, train=train_cfg,
                              random_length_prob=train_cfg.random_length_prob)
  rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), 0)
  micro = tokens.reshape(4, 2, 32).swapaxes(0, 1)
  values, grads = zip(*[jax.value_and_grad(loss_fn)(state["params"], {"tokens": micro[k]},
                                                    jax.random.fold_in(rng, k)) for k in range(2)])
  mean_grads = jax.tree.map(lambda a, b: (a + b) / 2, *grads)
  updates, _ = optimizer.update(mean_grads, state["opt_state"], state["params"])
  expected = optax.apply_updates(state["params"], updates)
  np.testing.assert_allclose(float(metrics["loss"]), np.mean(values), rtol=1e-6)
  for a, b in zip(jax.tree.leaves(new_state["params"]), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)


def test_kill_and_resume_continues_the_same_loss_sequence(tmp_path):
  full = train.run(tiny_cfg(), str(tmp_path / "full"), progress=False)

  def kill_after_checkpoint(step, _):
    if step == 4:
      raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    train.run(tiny_cfg(), str(tmp_path / "killed"), progress=False, callback=kill_after_checkpoint)
  resumed = train.run(tiny_cfg(), str(tmp_path / "killed"), resume=True, progress=False)
  assert resumed.start_step == 3
  assert [s for s, _ in resumed.losses] == [4, 5, 6]
  np.testing.assert_array_equal([v for _, v in resumed.losses], [v for s, v in full.losses if s > 3])


def test_training_lowers_the_validation_bound_and_writes_artifacts(tmp_path):
  summary = train.run(tiny_cfg("train.steps=30", "train.eval_every=15", "train.lr=3e-3",
                               "train.sample_after=true"), str(tmp_path), progress=False)
  (_, first), (_, last) = summary.val_losses[0], summary.val_losses[-1]
  assert last < first - 0.5
  assert os.listdir(tmp_path / "compilation_cache")  # on by default, in the workdir
  assert os.listdir(tmp_path / "tensorboard")
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["24", "27", "30"]  # keep_checkpoints=3
  assert os.path.isfile(tmp_path / "tokenizer.json") and os.path.isfile(tmp_path / "tokenizer_config.json")
  assert summary.sample and summary.data_stats["train_windows"] > 1000
  # The run keeps its sampling defaults; generate on the workdir (or one of its steps) reads them back.
  sampling = SamplingConfig.from_experiment(tiny_cfg())
  assert sampling != SamplingConfig() and summary.sample_settings == sampling.describe()
  assert load_pretrained(str(tmp_path)).stored_sampling == sampling
  assert convert.read_sampling_defaults(str(tmp_path / "checkpoints" / "30")) == sampling
  text = reporting.format_summary(summary)
  assert f"sample       ({sampling.describe()}) " in text
  assert "val loss" in text and "tokens/s" in text
  assert summary.loss_plot == str(tmp_path / "loss.png") and f"loss curves  {tmp_path / 'loss.png'}" in text
  stats = summary.data_stats
  bits = reporting.bits_per_byte(last, stats)
  assert bits == pytest.approx(last * stats["val_tokens"] / stats["val_bytes"] / math.log(2))
  assert f"→ {bits:.3f}" in text.split("val bits/B")[1].splitlines()[0]


@pytest.mark.slow  # over 30 s on 2 cores (suite time)
def test_a_second_run_loads_its_compiled_programs_from_the_cache(tmp_path):
  """Two fresh runs of one config sharing a compilation cache: the second compiles nothing new."""
  cache, events = tmp_path / "cache", []
  listener = lambda name, **_: events.append(name)
  jax.monitoring.register_event_listener(listener)
  try:
    cfg = lambda: tiny_cfg("train.steps=2", f"train.compilation_cache={cache}")
    train.run(cfg(), str(tmp_path / "first"), progress=False)
    entries, first_hits = set(os.listdir(cache)), events.count("/jax/compilation_cache/cache_hits")
    train.run(cfg(), str(tmp_path / "second"), progress=False)
  finally:
    jax.monitoring.unregister_event_listener(listener)
  assert not jax.config.jax_compilation_cache_dir  # the cache was the run's, not the process's
  assert entries and set(os.listdir(cache)) == entries  # everything the second run needed was already there
  assert events.count("/jax/compilation_cache/cache_hits") > first_hits


@pytest.mark.slow  # over 40 s on 2 cores (suite time)
def test_restore_onto_a_different_mesh(tmp_path):
  """Saved on 8 devices (FSDP), resumed by a fresh process with one device."""
  train.run(tiny_cfg("train.steps=3"), str(tmp_path), progress=False)
  code = ("import sys; sys.path.insert(0, 'tests'); from test_train import tiny_cfg; from llada_jax import train;"
          "s = train.run(tiny_cfg(), sys.argv[1], resume=True, progress=False); print('RESUMED', s.start_step,"
          " s.steps, s.losses[-1][1])")
  out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=REPO,
                       env=dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1"), timeout=600)
  assert "RESUMED 3 3" in out.stdout, out.stderr[-2000:]


def poison_steps(monkeypatch, cfg, steps):
  """Makes the training loss NaN at the given (1-based) steps, and nowhere else: the step's key — the state's rng
  folded with the step and the micro-batch index — picks them out, so resumed runs are poisoned at the same steps."""
  _, train_rng = jax.random.split(jax.random.key(cfg.seed))
  targets = jnp.stack([jax.random.key_data(jax.random.fold_in(jax.random.fold_in(train_rng, s - 1), 0))
                       for s in steps])
  original = train._objective_loss

  def poisoned(params, batch, rng, *args, **kwargs):
    value = original(params, batch, rng, *args, **kwargs)
    hit = jnp.any(jnp.all(jax.random.key_data(rng) == targets, axis=-1))
    return jnp.where(hit, jnp.nan, value)

  monkeypatch.setattr(train, "_objective_loss", poisoned)


@pytest.mark.slow  # over 40 s on 2 cores (suite time)
def test_a_skipped_step_withholds_its_checkpoint_and_changes_nothing_else(tmp_path, monkeypatch):
  clean = train.run(tiny_cfg(), str(tmp_path / "clean"), progress=False)
  cfg = tiny_cfg()
  poison_steps(monkeypatch, cfg, [2])
  summary = train.run(cfg, str(tmp_path / "poisoned"), progress=False)
  assert summary.skipped == 1 and summary.withheld == [3]
  assert checkpoint.committed_steps(str(tmp_path / "poisoned")) == [6]
  losses = dict(summary.losses)
  assert np.isnan(losses[2])
  # Step 2's update was dropped: step 3 sees the parameters after step 1, so the runs differ from step 3 on …
  assert losses[1] == dict(clean.losses)[1] and losses[3] != dict(clean.losses)[3]


def test_divergence_gives_up_and_keeps_every_good_checkpoint(tmp_path):
  workdir = str(tmp_path)
  train.run(tiny_cfg("train.steps=6", "train.eval_every=3"), workdir, progress=False)
  before = {s: checkpoint.read_step_meta(os.path.join(workdir, "checkpoints", str(s)))
            for s in checkpoint.committed_steps(workdir)}
  assert sorted(before) == [3, 6] and all(np.isfinite(m["val_loss"]) for m in before.values())
  with pytest.raises(UserError, match=r"diverged: 5 consecutive steps .* last good checkpoint is step 6.*"
                                      r"--recover-lr"):
    train.run(tiny_cfg("train.steps=30", "train.eval_every=3", "train.lr=1e6", "train.warmup_steps=0",
                       "train.grad_clip=0.0"), workdir, resume=True, progress=False)
  after = {s: checkpoint.read_step_meta(os.path.join(workdir, "checkpoints", str(s)))
           for s in checkpoint.committed_steps(workdir)}
  assert after == before  # nothing written from the diverged state, nothing rotated out
  recovered = train.run(tiny_cfg("train.steps=9", "train.eval_every=3"), workdir, recover_lr=1e-3, progress=False)
  assert recovered.start_step == 6 and np.isfinite(recovered.loss)
  assert checkpoint.committed_steps(workdir) == [3, 6, 9]


def test_a_non_finite_update_is_caught_even_when_loss_and_gradient_are_finite(tmp_path):
  """lr=1e39 overflows float32: step 1's loss and gradient are finite, its update is not. The loss-and-gradient
  check alone would apply it (and make every later step NaN)."""
  with pytest.raises(UserError, match="step 1 was not finite"):
    train.run(tiny_cfg("train.lr=1e39", "train.warmup_steps=0", "train.nan_policy=stop"), str(tmp_path),
              progress=False)
  assert not checkpoint.committed_steps(str(tmp_path))


@pytest.mark.slow  # over 40 s on 2 cores (suite time)
def test_nan_policy_stop_then_resume_continues_like_an_uninterrupted_run(tmp_path, monkeypatch):
  full = train.run(tiny_cfg("train.checkpoint_every=2"), str(tmp_path / "full"), progress=False)
  cfg = tiny_cfg("train.checkpoint_every=2", "train.nan_policy=stop")
  with monkeypatch.context() as patch:
    poison_steps(patch, cfg, [5])
    with pytest.raises(UserError, match=r"step 5 was not finite .* last good checkpoint is step 4"):
      train.run(cfg, str(tmp_path / "run"), progress=False)
  assert checkpoint.committed_steps(str(tmp_path / "run")) == [2, 4]
  resumed = train.run(tiny_cfg("train.checkpoint_every=2"), str(tmp_path / "run"), resume=True, progress=False)
  assert resumed.start_step == 4
  np.testing.assert_array_equal([v for _, v in resumed.losses], [v for s, v in full.losses if s > 4])


def test_recover_lr_needs_a_checkpoint(tmp_path):
  with pytest.raises(UserError, match="--recover-lr resumes a checkpoint"):
    train.run(tiny_cfg(), str(tmp_path / "new"), recover_lr=1e-4, progress=False)
  assert not os.path.exists(tmp_path / "new")


@pytest.mark.slow  # over 40 s on 2 cores (suite time)
def test_a_failed_first_run_binds_nothing(tmp_path):
  """Input checks run before the workdir exists; a run that fails before its first checkpoint leaves a workdir
  that a different model may still use."""
  workdir = tmp_path / "run"
  with pytest.raises(UserError, match="nonexistent"):
    train.run(tiny_cfg("data.source=text", "data.paths=/nonexistent/*.txt"), str(workdir), progress=False)
  assert not workdir.exists()
  with pytest.raises(UserError, match="diverged"):
    train.run(tiny_cfg("train.lr=1e39", "train.warmup_steps=0"), str(workdir), progress=False)
  summary = train.run(tiny_cfg("model.n_layers=3", "train.steps=3"), str(workdir), progress=False)
  assert summary.steps == 3


def test_wsd_schedule_shape():
  cfg = tiny_cfg("train.steps=100", "train.warmup_steps=10", "train.decay_fraction=0.2", "train.lr=1.0",
                 "train.final_lr=0.1")
  schedule = optim.learning_rate_schedule(typed(cfg).train)
  values = [float(schedule(s)) for s in (0, 5, 10, 50, 79, 80, 90, 100)]
  np.testing.assert_allclose(values, [0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 0.55, 0.1], atol=1e-6)


def test_weight_decay_spares_norms_and_embeddings():
  cfg = tiny_cfg("train.lr=0.0001", "train.weight_decay=0.5")
  mask = optim._decay_mask({"wte": 0, "ln_f": 0, "ff_out": 0, "blocks": {"attn_norm": 0, "q_proj": 0}}, False)
  assert mask == {"wte": False, "ln_f": False, "ff_out": True, "blocks": {"attn_norm": False, "q_proj": True}}
  assert cfg.train.weight_decay == 0.5


@pytest.mark.parametrize("overrides,match", [
    (["data.global_batch=6"], "does not divide over the mesh"),
    (["data.seq_len=8192"], "exceeds model.max_sequence_length"),
    (["data.source=text", "data.paths=/nonexistent/*.txt"], "nonexistent"),
    (["train.objective=autoregressive"], "needs model.causal=true"),
    (["train.grad_accum=3"], "not divisible by train.grad_accum"),
    (["train.masking=paired_counts", "train.grad_accum=8"], "a multiple of 2 × train.grad_accum"),
    (["train.init_from=/nonexistent"], "does not exist"),
    (["train.checkpoint_every=0"], "train.checkpoint_every=0 must be at least 1"),
    (["train.log_every=0"], "train.log_every=0 must be at least 1"),
    (["train.keep_checkpoints=0"], "train.keep_checkpoints=0 must be at least 1"),
    (["train.eval_every=-1"], "train.eval_every=-1 must be 0"),
    (["train.loss_chunk_length=12"], "must be 0 \\(no chunking\\) or divide data.seq_len=32"),
    (["sampling.block_length=7"], "config section sampling: gen_length=.* is not a multiple of block_length=7"),
    (["sampling.gen_length=8192", "sampling.block_length=8192"], "exceeds the model's max_sequence_length"),
])
def test_bad_configs_fail_before_compiling(tmp_path, overrides, match):
  with pytest.raises(UserError, match=match):
    train.run(tiny_cfg(*overrides), str(tmp_path / "run"), progress=False)
  assert not (tmp_path / "run").exists()  # nothing written for a run that never started


@pytest.mark.slow  # over 40 s on 2 cores (suite time)
def test_existing_checkpoints_need_resume_and_the_same_model(tmp_path):
  train.run(tiny_cfg("train.steps=3"), str(tmp_path), progress=False)
  with pytest.raises(UserError, match="pass --resume"):
    train.run(tiny_cfg("train.steps=3"), str(tmp_path), progress=False)
  with pytest.raises(UserError, match="different model"):
    train.run(tiny_cfg("model.n_layers=3"), str(tmp_path), resume=True, progress=False)
  # How the same weights run may change on resume (e.g. the kernel or remat a new chip needs).
  summary = train.run(tiny_cfg("train.steps=4", "model.remat_policy=full", "model.attention_impl=xla"),
                      str(tmp_path), resume=True, progress=False)
  assert summary.steps == 1


@pytest.mark.slow  # over 30 s on 2 cores (suite time)
def test_sft_from_a_pretrained_run(tmp_path):
  train.run(tiny_cfg("train.steps=2"), str(tmp_path / "pre"), progress=False)
  cfg = config_lib.apply_overrides(config_lib.load_config_file(os.path.join(REPO, "configs", "tiny_sft.py")),
                                   SMALL_MODEL + ["data.seq_len=64", "data.global_batch=8", "train.steps=3",
                                                  "train.eval_every=3", "train.sample_after=true",
                                                  f"train.init_from={tmp_path / 'pre'}"])
  summary = train.run(cfg, str(tmp_path / "sft"), progress=False)
  assert summary.steps == 3 and np.isfinite(summary.loss)
  assert summary.data_stats["train_rows"] > 2000
  assert summary.sample.startswith("What is your name?")


@pytest.mark.slow  # over 40 s on 2 cores (suite time)
def test_two_processes_train_like_one(tmp_path):
  """Real multi-host: 2 processes × 4 CPU devices (gloo) against 1 process × 8 devices, same global batches."""
  single = train.run(tiny_cfg("train.steps=3"), str(tmp_path / "single"), progress=False)
  code = ("import sys, jax; jax.config.update('jax_cpu_collectives_implementation', 'gloo');"
          "jax.distributed.initialize('127.0.0.1:' + sys.argv[2], num_processes=2, process_id=int(sys.argv[3]));"
          "sys.path.insert(0, 'tests'); from test_train import tiny_cfg; from llada_jax import train;"
          "s = train.run(tiny_cfg('train.steps=3'), sys.argv[1], progress=False);"
          "print('LOSSES', [round(v, 5) for _, v in s.losses])")
  port = str(20000 + os.getpid() % 20000)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "multi"), port, str(i)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outputs = [p.communicate(timeout=600) for p in procs]
  assert all(p.returncode == 0 for p in procs), outputs[0][1][-2000:] + outputs[1][1][-2000:]
  expected = [round(v, 5) for _, v in single.losses]
  for stdout, _ in outputs:
    got = eval(stdout.split("LOSSES", 1)[1].strip().splitlines()[0])
    np.testing.assert_allclose(got, expected, rtol=1e-4)
  saved = os.listdir(tmp_path / "multi" / "checkpoints" / "3" / "data_iter")
  assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(saved)


def test_a_failed_async_save_stops_the_run_at_once(small_disk):
  logged = []
  with pytest.raises(UserError, match=r"writing checkpoint step 8 .*no space left on device.*step 4"):
    train.run(tiny_cfg("train.steps=40", "train.checkpoint_every=4"), str(small_disk / "run"), progress=False,
              callback=lambda step, _: logged.append(step))
  assert max(logged) < 12  # not one interval late: stopped before the next save was due
  assert os.listdir(small_disk / "run" / "checkpoints") == ["4"]


def scalars(events_dir: str, tag: str) -> list[tuple[int, float]]:
  """(step, value) of `tag` in the tensorboard event files: TFRecords of length, crc, Event proto, crc."""
  import struct
  from tensorboardX.proto import event_pb2
  steps = []
  for name in sorted(os.listdir(events_dir)):
    with open(os.path.join(events_dir, name), "rb") as f:
      data = f.read()
    offset = 0
    while offset + 12 <= len(data):
      (length,) = struct.unpack("<Q", data[offset:offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 12 + length + 4
      steps += [(event.step, value.simple_value) for value in event.summary.value if value.tag == tag]
  return steps


def test_tensorboard_is_flushed_at_every_log_step(tmp_path):
  seen = {}

  def look(step, _):
    seen[step] = [s for s, _ in scalars(str(tmp_path / "tensorboard"), "train/loss")]
    if step == 4:
      raise KeyboardInterrupt  # what survives is what was flushed: a kill loses nothing logged before it

  with pytest.raises(KeyboardInterrupt):
    train.run(tiny_cfg(), str(tmp_path), progress=False, callback=look)
  assert seen[4] == [1, 2, 3]
  assert [s for s, _ in scalars(str(tmp_path / "tensorboard"), "train/update_norm")] == [1, 2, 3]


@pytest.mark.slow  # over 40 s on 2 cores (suite time)
def test_a_killed_peer_ends_the_other_process_at_once_in_one_line(tmp_path):
  """2 processes × 4 CPU devices; kill -9 one mid-run: the other exits 2 with one line, not after the
  distributed runtime's heartbeat timeout with a C++ stack trace."""
  import time
  workdir = tmp_path / "run"
  port = str(21000 + os.getpid() % 20000)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  args = ["train", "--config", "configs/tiny.py", "--workdir", str(workdir), "--no-progress",
          *[f"--config.{o}" for o in SMALL_MODEL], "--config.data.seq_len=32", "--config.data.global_batch=8",
          "--config.train.steps=100000", "--config.train.checkpoint_every=2", "--config.train.eval_every=0",
          "--coordinator-address", f"127.0.0.1:{port}", "--num-processes", "2"]
  procs = [subprocess.Popen([sys.executable, "-m", "llada_jax.cli", *args, "--process-id", str(i)], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  try:
    deadline = time.time() + 300
    while not checkpoint.committed_steps(str(workdir)) and time.time() < deadline:
      assert procs[0].poll() is None, procs[0].communicate()[1][-3000:]
      time.sleep(0.5)
    procs[1].kill()
    killed = time.time()
    _, stderr = procs[0].communicate(timeout=90)
    took = time.time() - killed
  finally:
    for p in procs:
      p.kill()
  lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("[Gloo]")]
  assert procs[0].returncode == 2 and took < 30, (took, stderr[-3000:])
  assert len(lines) == 1 and "another process of this multi-process run stopped" in lines[0], stderr[-3000:]
  assert "--resume" in lines[0]


CHAOS_NAN_STEP = 6
CHAOS_RUN = """
import json, sys
import pytest
sys.path.insert(0, 'tests')
from test_train import CHAOS_NAN_STEP, poison_steps, tiny_cfg
from llada_jax import train
cfg = tiny_cfg('train.steps=14', 'train.checkpoint_every=1', 'train.async_checkpoint=true', 'train.keep_checkpoints=2')
poison_steps(pytest.MonkeyPatch(), cfg, [CHAOS_NAN_STEP])
train.run(cfg, sys.argv[1], resume=sys.argv[2] == 'resume', progress=False,
          callback=lambda step, m: print('LOSS', step, repr(float(m['loss'])), flush=True))
"""


def _moved_aside(workdir) -> list[int]:
  aside = os.path.join(workdir, checkpoint.CORRUPT_DIR)
  return [int(d.split(".")[0]) for d in os.listdir(aside)] if os.path.isdir(aside) else []


def _chaos_run(workdir, resume: bool, kill_after: float | None):
  """One training process; with `kill_after`, SIGKILLed that many seconds after its first logged step."""
  import time
  proc = subprocess.Popen([sys.executable, "-c", CHAOS_RUN, workdir, "resume" if resume else "fresh"], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  losses, started = {}, None
  while True:
    line = proc.stdout.readline()
    if not line:
      break
    if line.startswith("LOSS"):
      _, step, value = line.split()
      losses[int(step)] = float(value)
      started = started or time.time()
    if kill_after is not None and started and time.time() - started >= kill_after:
      proc.kill()
      break
  proc.wait(timeout=300)
  if kill_after is None:
    assert proc.returncode == 0, proc.stderr.read()[-3000:]
  return losses, proc.stderr.read()


@pytest.mark.slow
def test_chaos_kill_9_damage_and_resume_keep_the_loss_sequence(tmp_path):
  """Random kill -9 (three seeds, checkpoint every step, async writes, a NaN forced at step 6), then the newest
  committed step damaged: each resumed run falls back to a step that verifies and reproduces the uninterrupted run's
  losses bit for bit; the NaN step is never checkpointed; every kept checkpoint verifies at the end."""
  from test_checkpoint import damage
  full, stderr = _chaos_run(str(tmp_path / "full"), False, None)
  assert sorted(full) == list(range(1, 15)) and math.isnan(full[CHAOS_NAN_STEP])
  assert f"step {CHAOS_NAN_STEP} not checkpointed" in stderr
  full = {s: repr(v) for s, v in full.items()}  # NaN equals itself as text
  for seed in range(3):
    workdir = str(tmp_path / f"chaos{seed}")
    rng = np.random.default_rng(seed)
    seen, resume = {}, False
    for attempt in range(2):
      losses, _ = _chaos_run(workdir, resume, float(rng.uniform(0.0, 1.5)))
      seen.update({s: v for s, v in losses.items()})
      for s, v in losses.items():
        assert repr(v) == full[s], (seed, attempt, s)
      resume = bool(checkpoint.committed_steps(workdir))
    steps = checkpoint.committed_steps(workdir)
    damaged = len(steps) >= 2  # with one step only, damaging it leaves nothing to fall back to (tested elsewhere)
    if damaged:
      damage(os.path.join(workdir, "checkpoints", str(steps[-1]), "state"), "truncate")
    losses, stderr = _chaos_run(workdir, bool(steps), None)
    if damaged:
      assert f"checkpoint step {steps[-1]} is unusable" in stderr
      assert min(losses) <= steps[-1]  # the damaged step was not resumed from
    assert all(repr(losses[s]) == full[s] for s in losses) and max(losses) == 14
    assert CHAOS_NAN_STEP not in checkpoint.committed_steps(workdir) + _moved_aside(workdir)
    for step in checkpoint.committed_steps(workdir):
      checkpoint.load_layered(os.path.join(workdir, "checkpoints", str(step)))
