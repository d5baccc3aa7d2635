"""Checkpoint integrity and rotation: fingerprints, fallback past damaged steps, best-plus-newest retention."""

import glob
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from llada_jax import checkpoint, config as config_lib
from llada_jax.hf_config import from_hf_config
from llada_jax.errors import CorruptCheckpoint, UserError


def damage(item_dir: str, how: str = "overwrite") -> str:
  """Damages the largest data file of an Orbax item in place: 4 KiB of random bytes in its middle (same size), or
  cut to half its length."""
  path = max(glob.glob(os.path.join(item_dir, "**", "d", "*"), recursive=True) +
             glob.glob(os.path.join(item_dir, "**", "*.0"), recursive=True), key=os.path.getsize)
  size = os.path.getsize(path)
  if how == "truncate":
    os.truncate(path, size // 2)
  else:
    with open(path, "r+b") as f:
      f.seek(size // 2)
      f.write(np.random.default_rng(0).bytes(4096))
  return path


def test_fingerprints_are_mesh_independent_and_see_every_change():
  x = jnp.arange(8 * 64, dtype=jnp.float32).reshape(8, 64) / 7
  mesh = jax.make_mesh((8,), ("d",), devices=jax.devices()[:8])
  sharded = jax.device_put(x, NamedSharding(mesh, P("d")))
  reference = checkpoint.fingerprints({"x": x})
  assert checkpoint.fingerprints({"x": sharded}) == reference
  assert checkpoint.fingerprints({"x": x.at[3, 5].set(x[3, 5] * (1 + 2**-20))}) != reference  # one ulp-ish change
  swapped = x.at[0, 0].set(x[0, 1]).at[0, 1].set(x[0, 0])
  assert checkpoint.fingerprints({"x": swapped})["x"][:8] == reference["x"][:8]  # the plain sum cannot see it …
  assert checkpoint.fingerprints({"x": swapped}) != reference  # … the position-weighted one does
  for dtype in (jnp.bfloat16, jnp.int32, jnp.uint32):
    value = x.astype(dtype)
    assert checkpoint.fingerprints({"x": value}) == checkpoint.fingerprints({"x": jnp.asarray(np.asarray(value))})
  with pytest.raises(CorruptCheckpoint, match="the array x differs"):
    checkpoint.verify({"x": swapped}, reference, "item")


def _tiny_model_config():
  from conftest import tiny_hf_config
  return from_hf_config(tiny_hf_config())


def _save_params(path, seed=0):
  from llada_jax import model as model_lib
  config = _tiny_model_config()
  params = model_lib.init_params(config, jax.random.key(seed))
  checkpoint.save_params(str(path), jax.tree.map(np.asarray, checkpoint.to_layered(params, config.n_layers)), config)
  return config, params


@pytest.mark.parametrize("how", ["overwrite", "truncate"])
def test_a_damaged_params_checkpoint_is_refused_in_one_line(tmp_path, how):
  config, params = _save_params(tmp_path / "ckpt")
  assert oct(os.stat(tmp_path / "ckpt").st_mode & 0o777) == oct(0o777 & ~_umask())  # not mkdtemp's 0700
  loaded_config, loaded = checkpoint.restore_params(str(tmp_path / "ckpt"))
  np.testing.assert_array_equal(loaded["wte"], params["wte"])
  damage(str(tmp_path / "ckpt" / "params"), how)
  with pytest.raises(CorruptCheckpoint) as info:
    checkpoint.restore_params(str(tmp_path / "ckpt"))
  assert "\n" not in str(info.value) and "delete it" in str(info.value)


def _umask():
  mask = os.umask(0)
  os.umask(mask)
  return mask


def _iterator():
  import grain
  return iter(grain.MapDataset.range(100).to_iter_dataset())


def _fake_state(step: int) -> dict:
  """A train-state-shaped tree (one "layer") small enough to save in milliseconds."""
  return {"params": {"blocks": {"q": jnp.full((1, 4), step, jnp.float32)}, "w": jnp.full((4, 4), step, jnp.float32)},
          "step": jnp.asarray(step, jnp.int32)}


def test_rotation_keeps_the_newest_and_the_best(tmp_path):
  config = _tiny_model_config()
  experiment = config_lib.base_config()
  store = checkpoint.TrainCheckpoints(str(tmp_path), experiment, config, keep=2, async_save=True)
  store.model_config = config.replace(n_layers=1)  # the fake state's one layer
  vals = {10: 5.0, 20: 3.0, 30: float("nan"), 40: 6.0, 50: None, 60: 7.0}
  for step, val in vals.items():
    store.save(step, _fake_state(step), _iterator(), val)
    store.check()
  store.wait()
  assert store.manager.all_steps() == [20, 50, 60]  # newest 2, and the best finite validation bound (step 20)
  assert store.best_step() == 20
  meta = checkpoint.read_step_meta(str(tmp_path / "checkpoints" / "20"))
  assert meta["val_loss"] == 3.0 and set(meta["fingerprints"]) == {"state", "params"}
  # A new manager over the same directory (a resumed run) sees the same scores: rotation survives restarts.
  again = checkpoint.TrainCheckpoints(str(tmp_path), experiment, config, keep=2, async_save=False)
  again.model_config = store.model_config
  for step in (70, 80):
    again.save(step, _fake_state(step), _iterator(), 9.0)
  again.wait()
  assert again.manager.all_steps() == [20, 70, 80]


@pytest.mark.slow  # over 30 s on 2 cores (suite time)
def test_a_workdir_falls_back_past_damaged_steps(tmp_path, caplog):
  from test_train import tiny_cfg
  from llada_jax import train
  train.run(tiny_cfg("train.steps=6", "train.checkpoint_every=2"), str(tmp_path), progress=False)
  damage(str(tmp_path / "checkpoints" / "6" / "params"))
  with caplog.at_level(logging.WARNING, logger="llada_jax"):
    config, layered, used = checkpoint.load_layered(str(tmp_path))
  assert used.endswith(os.path.join("checkpoints", "4"))
  assert "checkpoints/6/params: the array" in caplog.text and "using the older" in caplog.text
  # The step itself, named explicitly, is an error (no silent substitute for what the user asked for).
  with pytest.raises(CorruptCheckpoint, match="damaged"):
    checkpoint.load_layered(str(tmp_path / "checkpoints" / "6"))
  for step in ("2", "4"):
    damage(str(tmp_path / "checkpoints" / step / "params"), "truncate")
  with pytest.raises(CorruptCheckpoint, match="no checkpoint step .* verifies"):
    checkpoint.load_layered(str(tmp_path))


def test_metadata_is_written_whole(tmp_path):
  config = _tiny_model_config()
  checkpoint.write_metadata(str(tmp_path), config)
  assert json.load(open(tmp_path / checkpoint.METADATA_FILE))["kind"] == "params"
  assert os.listdir(tmp_path) == [checkpoint.METADATA_FILE]  # no temporary file left beside it
  with pytest.raises(UserError, match="neither a llada-jax checkpoint"):
    checkpoint.read_metadata(str(tmp_path / "missing"))
