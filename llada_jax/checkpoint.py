"""Parameter checkpoints on disk (Orbax), with the on-disk naming as a versioned API.

On disk, parameters are stored per layer, named like the official state dict without `model.transformer.` and
`.weight` (`wte`, `blocks/<i>/q_proj`, …, `ln_f`, `ff_out`), in our layout (Linear kernels `[in, out]`,
attention kernels split into `[embed, heads, head_dim]`). In memory the blocks are stacked on a `layers` axis;
`to_layered`/`from_layered` convert. The layout is recorded as `layout_version` in `llada_jax.json` beside the
Orbax item; a change to the on-disk naming must bump it, and old versions must keep loading.

A params checkpoint directory holds:
  llada_jax.json   {"layout_version", "model_config", "kind": "params"}
  params/          the Orbax PyTree item (per-layer names)
"""

import contextlib
import json
import math
import os
import shutil
import tempfile
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from llada_jax import model as model_lib
from llada_jax import sharding
from llada_jax.config import ModelConfig
from llada_jax.errors import UserError

LAYOUT_VERSION = 1
METADATA_FILE = "llada_jax.json"
PARAMS_ITEM = "params"

Params = dict[str, Any]


def to_layered(params: Params, n_layers: int) -> Params:
  """Stacked in-memory params → the on-disk per-layer tree."""
  blocks = params["blocks"]
  layered = {k: v for k, v in params.items() if k != "blocks"}
  layered["blocks"] = {str(i): {name: w[i] for name, w in blocks.items()} for i in range(n_layers)}
  return layered


def from_layered(layered: Params, n_layers: int, stack: Callable = np.stack) -> Params:
  """The on-disk per-layer tree → stacked in-memory params."""
  blocks = layered["blocks"]
  params = {k: v for k, v in layered.items() if k != "blocks"}
  params["blocks"] = {name: stack([blocks[str(i)][name] for i in range(n_layers)]) for name in blocks["0"]}
  return params


def layered_abstract(config: ModelConfig, dtype: str | None = None, mesh=None) -> Params:
  """ShapeDtypeStructs of the on-disk tree, optionally carrying per-layer shardings for `mesh`."""
  abstract = model_lib.abstract_params(config)
  axes = model_lib.param_logical_axes(config)
  dt = model_lib.jnp_dtype(dtype or config.param_dtype)

  def leaf(a, ax, drop_layer):
    shape, ax = (a.shape[1:], ax[1:]) if drop_layer else (a.shape, ax)
    shard = None if mesh is None else sharding.named_sharding(mesh, ax, shape)
    return jax.ShapeDtypeStruct(shape, dt, sharding=shard)

  tree = {k: leaf(abstract[k], axes[k], False) for k in abstract if k != "blocks"}
  block = {k: leaf(abstract["blocks"][k], axes["blocks"][k], True) for k in abstract["blocks"]}
  tree["blocks"] = {str(i): dict(block) for i in range(config.n_layers)}
  return tree


def write_metadata(path: str, config: ModelConfig, kind: str = "params", **extra) -> None:
  """kind: "params" (a params checkpoint) or "train" (a training workdir, with the experiment config)."""
  meta = {"layout_version": LAYOUT_VERSION, "kind": kind, "model_config": config.to_dict(), **extra}
  with open(os.path.join(path, METADATA_FILE), "w") as f:
    json.dump(meta, f, indent=2)


def read_metadata(path: str) -> tuple[ModelConfig, dict[str, Any]]:
  meta_path = os.path.join(path, METADATA_FILE)
  if not os.path.isfile(meta_path):
    raise UserError(f"{path} is neither a llada-jax checkpoint (no {METADATA_FILE}) nor a Hugging Face LLaDA "
                    "directory (no config.json); pass the folder that holds one of them")
  try:
    with open(meta_path) as f:
      meta = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise UserError(f"{meta_path} is unreadable ({e}); the checkpoint is corrupt — re-export it") from None
  version = meta.get("layout_version")
  if version != LAYOUT_VERSION:
    raise UserError(f"{path} has parameter layout version {version}; this llada-jax reads version "
                    f"{LAYOUT_VERSION} — upgrade llada-jax or re-export the checkpoint")
  return ModelConfig.from_dict(meta["model_config"]), meta


def is_checkpoint(path: str) -> bool:
  return os.path.isfile(os.path.join(path, METADATA_FILE))


def _to_jax_in_place(tree: Params) -> Params:
  """Host arrays → jax arrays leaf by leaf, replacing each in `tree` so a copied numpy original is freed at once
  rather than living beside its copy until the whole tree is converted."""
  for key, value in tree.items():
    tree[key] = _to_jax_in_place(value) if isinstance(value, dict) else jnp.asarray(value)
  return tree


def check_output_dir(out_dir: str, overwrite: bool) -> str:
  """The absolute output path; refuses a non-empty directory unless overwriting (checked before any work)."""
  out_dir = os.path.abspath(out_dir)
  if os.path.exists(out_dir) and os.listdir(out_dir) and not overwrite:
    raise UserError(f"{out_dir} exists and is not empty; choose a new directory or pass --overwrite")
  return out_dir


@contextlib.contextmanager
def atomic_output_dir(out_dir: str, overwrite: bool = False) -> Iterator[str]:
  """Yields a temporary sibling of `out_dir` to write into; renamed into place only when the block completes,
  removed on any error, so a failed or interrupted write leaves nothing half-written."""
  out_dir = check_output_dir(out_dir, overwrite)
  parent = os.path.dirname(out_dir)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".llada-jax-", dir=parent)
  try:
    yield tmp
    if os.path.exists(out_dir):
      shutil.rmtree(out_dir)
    os.rename(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def save_params(out_dir: str, layered: Params, config: ModelConfig, overwrite: bool = False) -> None:
  """Writes a params checkpoint atomically. Takes ownership of `layered` (its host arrays are swapped for jax
  arrays as they are written)."""
  with atomic_output_dir(out_dir, overwrite) as tmp:
    # Host memory: as jax arrays (zero-copy on the CPU) Orbax honours save_concurrent_gb, and without OCDBT
    # (which buffers a whole transaction) each tensor is written as it goes. So a conversion holds the model plus
    # a couple of GB in flight: an 8B bf16 conversion fits a 24 GiB machine (`llada-jax bench convert`).
    layered = _to_jax_in_place(layered)
    largest_gb = max(a.nbytes for a in jax.tree.leaves(layered)) / 1e9
    checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler(
        use_ocdbt=False, save_concurrent_gb=max(2, math.ceil(largest_gb))))
    checkpointer.save(os.path.join(tmp, PARAMS_ITEM), args=ocp.args.PyTreeSave(layered))
    write_metadata(tmp, config)


def restore_layered(path: str, config: ModelConfig, *, dtype: str | None = None, mesh=None,
                    as_numpy: bool = False, item: str = PARAMS_ITEM) -> Params:
  """Reads the on-disk tree: host numpy arrays, or jax arrays sharded for `mesh` (default: one device)."""
  item_path = os.path.join(os.path.abspath(path), item)
  if not os.path.isdir(item_path):
    raise UserError(f"{path} has no {item}/ item; the checkpoint is incomplete — re-export or re-train it")
  target = layered_abstract(config, dtype, mesh)
  if as_numpy:
    restore_args = jax.tree.map(lambda a: ocp.RestoreArgs(restore_type=np.ndarray, dtype=a.dtype), target)
  else:
    if mesh is None:
      device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
      target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), target)
    restore_args = ocp.checkpoint_utils.construct_restore_args(target)
  try:
    return ocp.PyTreeCheckpointer().restore(
        item_path, args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args))
  except (ValueError, KeyError, OSError, RuntimeError) as e:
    raise UserError(f"could not read the parameters in {item_path}: {str(e).splitlines()[0]} — the checkpoint "
                    "is corrupt or does not match its llada_jax.json; re-export it") from None


def restore_params(path: str, *, dtype: str | None = None, mesh=None) -> tuple[ModelConfig, Params]:
  """(config, stacked params as jax arrays), sharded by the logical rules when a mesh is given. `path`: a params
  checkpoint, a training workdir (latest step) or a step directory."""
  path, config = resolve(path)
  if dtype:
    config = config.replace(param_dtype=dtype)
  layered = restore_layered(path, config, dtype=dtype, mesh=mesh)
  return config, stack_on_device(layered, config, mesh)


def stack_on_device(layered: Params, config: ModelConfig, mesh=None) -> Params:
  """Per-layer jax arrays → stacked params, placed with the logical shardings when a mesh is given."""
  stack = jax.jit(lambda tree: from_layered(tree, config.n_layers, jnp.stack),
                  out_shardings=None if mesh is None else params_shardings(config, mesh))
  return stack(layered)


def params_shardings(config: ModelConfig, mesh) -> Params:
  return sharding.tree_shardings(mesh, model_lib.param_logical_axes(config), model_lib.abstract_params(config))


# ---- Training checkpoints: a workdir with llada_jax.json and checkpoints/<step>/{state,params,data_iter} ----

STATE_ITEM, DATA_ITEM = "state", "data_iter"
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json")


class TrainCheckpoints:
  """Orbax CheckpointManager over composite items: the full train state, a params-only item in the on-disk
  layout (what eval and conversion read, never touching optimizer state) and each process's Grain iterator."""

  def __init__(self, workdir: str, experiment, model_config: ModelConfig, *, keep: int, async_save: bool):
    import grain
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, "checkpoints")
    self.model_config = model_config
    os.makedirs(self.workdir, exist_ok=True)
    meta_path = os.path.join(self.workdir, METADATA_FILE)
    if os.path.isfile(meta_path):
      previous, _ = read_metadata(self.workdir)
      if previous != model_config:
        raise UserError(f"{workdir} holds a run of a different model ({_config_diff(previous, model_config)}); "
                        "choose a new --workdir or restore the old config")
    elif jax.process_index() == 0:
      write_metadata(self.workdir, model_config, kind="train", experiment=experiment.to_dict())
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save, create=True),
        item_handlers={STATE_ITEM: ocp.StandardCheckpointHandler(), PARAMS_ITEM: ocp.StandardCheckpointHandler(),
                       DATA_ITEM: grain.checkpoint.CheckpointHandler()})

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save_tokenizer(self, tokenizer) -> None:
    """Keeps the tokenizer with the run, so `generate`/`eval` on this workdir need nothing else."""
    if jax.process_index() == 0:
      tokenizer.save(self.workdir)

  def save(self, step: int, state: dict, data_iterator) -> None:
    import grain
    layered = to_layered(state["params"], self.model_config.n_layers)
    self.manager.save(step, args=ocp.args.Composite(**{
        STATE_ITEM: ocp.args.StandardSave(state), PARAMS_ITEM: ocp.args.StandardSave(layered),
        DATA_ITEM: grain.checkpoint.CheckpointSave(data_iterator)}))

  def restore(self, abstract_state: dict, shardings: dict, data_iterator, step: int | None = None) -> dict:
    """Restores into arrays carrying the *current* mesh's shardings, so a run can move to another topology."""
    import grain
    step = self.latest_step() if step is None else step
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings)
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(**{
          STATE_ITEM: ocp.args.StandardRestore(target), DATA_ITEM: grain.checkpoint.CheckpointRestore(data_iterator)}))
    except (ValueError, KeyError, OSError, RuntimeError) as e:
      raise UserError(f"could not restore step {step} from {self.directory}: {str(e).splitlines()[0]} — the "
                      "checkpoint is corrupt, or was written by a different process count or optimizer config") from None
    return restored[STATE_ITEM]

  def wait(self) -> None:
    self.manager.wait_until_finished()


def _config_diff(a: ModelConfig, b: ModelConfig) -> str:
  da, db = a.to_dict(), b.to_dict()
  return ", ".join(f"{k}: {da[k]} → {db[k]}" for k in da if da[k] != db[k])


def resolve(path: str) -> tuple[str, ModelConfig]:
  """(directory holding a `params/` item, model config) for a params checkpoint, a training workdir (its latest
  step) or one step directory of a workdir."""
  path = os.path.abspath(path)
  if is_checkpoint(path):
    config, meta = read_metadata(path)
    if meta.get("kind") != "train":
      return path, config
    steps = sorted(int(d) for d in os.listdir(os.path.join(path, "checkpoints")) if d.isdigit()) \
        if os.path.isdir(os.path.join(path, "checkpoints")) else []
    if not steps:
      raise UserError(f"{path} is a training workdir without a finished checkpoint yet")
    return os.path.join(path, "checkpoints", str(steps[-1])), config
  workdir = os.path.dirname(os.path.dirname(path))
  if os.path.basename(os.path.dirname(path)) == "checkpoints" and is_checkpoint(workdir):
    return path, read_metadata(workdir)[0]
  return path, read_metadata(path)[0]  # raises the "not a llada-jax checkpoint" error


def find_tokenizer(path: str) -> str | None:
  """The tokenizer saved with a run or checkpoint (searched upwards from a step directory), if any."""
  path = os.path.abspath(path)
  for directory in (path, os.path.dirname(os.path.dirname(path))):
    for name in TOKENIZER_FILES:
      if os.path.isfile(os.path.join(directory, name)):
        return os.path.join(directory, name)
  return None
