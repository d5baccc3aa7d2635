"""Parameter checkpoints on disk (Orbax), with the on-disk naming as a versioned API.

On disk, parameters are stored per layer, named like the official state dict without `model.transformer.` and
`.weight` (`wte`, `blocks/<i>/q_proj`, …, `ln_f`, `ff_out`), in our layout (Linear kernels `[in, out]`,
attention kernels split into `[embed, heads, head_dim]`). In memory the blocks are stacked on a `layers` axis;
`to_layered`/`from_layered` convert. The layout is recorded as `layout_version` in `llada_jax.json` beside the
Orbax item; a change to the on-disk naming must bump it, and old versions must keep loading.

A params checkpoint directory holds:
  llada_jax.json   {"layout_version", "model_config", "kind": "params", "fingerprints"}
  params/          the Orbax PyTree item (per-layer names)

Every array written is fingerprinted at save and checked at restore (`fingerprints`): Orbax's files carry no
checksum, and a damaged chunk that still decompresses would otherwise load as wrong numbers without a word.
"""

import contextlib
import json
import logging
import math
import os
import shutil
import time
import uuid
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from llada_jax import model as model_lib
from llada_jax import paths, sharding
from llada_jax.config import ModelConfig
from llada_jax.errors import CorruptCheckpoint, UserError, short_reason

log = logging.getLogger("llada_jax")

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
  """kind: "params" (a params checkpoint) or "train" (a training workdir, with the experiment config). Written
  to a temporary file and renamed, so a kill leaves the old file or the new one, never half of one."""
  meta = {"layout_version": LAYOUT_VERSION, "kind": kind, "model_config": config.to_dict(), **extra}
  paths.write_atomically(paths.path(path, METADATA_FILE), json.dumps(meta, indent=2))


def read_metadata(path: str) -> tuple[ModelConfig, dict[str, Any]]:
  meta_path = paths.path(path, METADATA_FILE)
  if not meta_path.is_file():
    raise UserError(f"{path} is neither a llada-jax checkpoint (no {METADATA_FILE}) nor a Hugging Face LLaDA "
                    "directory (no config.json); pass the folder that holds one of them")
  try:
    meta = json.loads(meta_path.read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise UserError(f"{meta_path} is unreadable ({e}); the checkpoint is corrupt — re-export it") from None
  version = meta.get("layout_version")
  if version != LAYOUT_VERSION:
    raise UserError(f"{path} has parameter layout version {version}; this llada-jax reads version "
                    f"{LAYOUT_VERSION} — upgrade llada-jax or re-export the checkpoint")
  return ModelConfig.from_dict(meta["model_config"]), meta


def is_checkpoint(path: str) -> bool:
  return paths.path(path, METADATA_FILE).is_file()


def _to_jax_in_place(tree: Params) -> Params:
  """Host arrays → jax arrays leaf by leaf, replacing each in `tree` so a copied numpy original is freed at once
  rather than living beside its copy until the whole tree is converted."""
  for key, value in tree.items():
    tree[key] = _to_jax_in_place(value) if isinstance(value, dict) else jnp.asarray(value)
  return tree


# ---- Integrity: a fingerprint of every array, taken at save and checked at restore ----

def _array_fingerprint(x: jax.Array) -> jax.Array:
  """Two uint32 sums over the array's bit patterns: plain, and weighted by an odd multiplier of each element's
  position. Any single changed element changes both; moved or swapped elements change the weighted one. Modular
  integer sums do not depend on reduction order, so the value is the same on every mesh and device count."""
  bits = jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{x.dtype.itemsize * 8}")).astype(jnp.uint32)
  position = jnp.zeros(x.shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(x.ndim)):
    position = position + jax.lax.broadcasted_iota(jnp.uint32, x.shape, axis) * jnp.uint32(stride % 2**32)
    stride *= x.shape[axis]
  weight = position * jnp.uint32(0x9E3779B1) | jnp.uint32(1)
  return jnp.stack([jnp.sum(bits, dtype=jnp.uint32), jnp.sum(bits * weight, dtype=jnp.uint32)])


@jax.jit
def _fingerprint_tree(tree):
  return jax.tree.map(_array_fingerprint, tree)


def fingerprints(tree) -> dict[str, str]:
  """{"blocks/0/q_proj": "89ab…", …}: one 16-hex-digit fingerprint per array leaf of `tree`."""
  leaves = jax.tree_util.tree_flatten_with_path(_fingerprint_tree(tree))[0]
  # The result is replicated: every process reads its own copy (a global array is not fully addressable).
  return {jax.tree_util.keystr(path, simple=True, separator="/"):
          "".join(f"{int(v):08x}" for v in np.asarray(value.addressable_data(0)))
          for path, value in leaves}


def verify(tree, expected: dict[str, str] | None, what: str) -> None:
  """Raises CorruptCheckpoint naming the arrays whose fingerprint differs from the one recorded at save."""
  if expected is None:  # written before fingerprints existed: nothing to compare with
    return
  actual = fingerprints(tree)
  bad = sorted(k for k in expected.keys() | actual.keys() if expected.get(k) != actual.get(k))
  if bad:
    more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
    raise CorruptCheckpoint(f"{what}: the array {bad[0]}{more} differs from what was saved (fingerprint mismatch)")


# ---- Output directories ----

def check_output_dir(out_dir: str, overwrite: bool) -> str:
  """The absolute output path; refuses a non-empty directory unless overwriting (checked before any work)."""
  out_dir = paths.absolute(out_dir)
  out = paths.path(out_dir)
  if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
    raise UserError(f"{out_dir} exists and is not empty; choose a new directory or pass --overwrite")
  return out_dir


def ensure_writable(directory: str) -> None:
  """Creates `directory` if needed and proves a file can be written there, before hours of work depend on it."""
  try:
    probe = paths.path(directory, f".llada-jax-write-test-{uuid.uuid4().hex}")
    probe.parent.mkdir(parents=True, exist_ok=True)
    probe.write_text("")
    probe.unlink()
  except OSError as e:
    raise UserError(f"cannot write to {directory} ({e.strerror.lower() if e.strerror else e}); choose a writable "
                    "directory") from None


@contextlib.contextmanager
def atomic_output_dir(out_dir: str, overwrite: bool = False) -> Iterator[str]:
  """Yields a temporary sibling of `out_dir` to write into; renamed into place only when the block completes,
  removed on any error, so a failed or interrupted write leaves nothing half-written."""
  out = paths.path(check_output_dir(out_dir, overwrite))
  tmp = out.parent / f".llada-jax-{out.name}-{uuid.uuid4().hex}"
  tmp.mkdir(parents=True)  # with the umask's permissions, which the renamed directory keeps
  try:
    yield str(tmp)
    if out.exists():
      out.rmtree() if out.is_dir() else out.unlink()
    tmp.rename(out)
  except BaseException:
    with contextlib.suppress(OSError):
      tmp.rmtree()
    raise


# ---- Params checkpoints ----

def save_params(out_dir: str, layered: Params, config: ModelConfig, overwrite: bool = False,
                extra_files: Sequence[str] = ()) -> None:
  """Writes a params checkpoint atomically, with copies of `extra_files` (a tokenizer, say) beside it. Takes
  ownership of `layered` (its host arrays are swapped for jax arrays as they are written)."""
  with atomic_output_dir(out_dir, overwrite) as tmp:
    for extra in extra_files:
      shutil.copyfile(extra, os.path.join(tmp, os.path.basename(extra)))
    # Host memory: as jax arrays (zero-copy on the CPU) Orbax honours save_concurrent_gb, and without OCDBT
    # (which buffers a whole transaction) each tensor is written as it goes. So a conversion holds the model plus
    # a couple of GB in flight: an 8B bf16 conversion fits a 24 GiB machine (`llada-jax bench convert`).
    layered = _to_jax_in_place(layered)
    largest_gb = max(a.nbytes for a in jax.tree.leaves(layered)) / 1e9
    checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler(
        use_ocdbt=False, save_concurrent_gb=max(2, math.ceil(largest_gb))))
    checkpointer.save(os.path.join(tmp, PARAMS_ITEM), args=ocp.args.PyTreeSave(layered))
    write_metadata(tmp, config, fingerprints=fingerprints(layered))


def restore_layered(path: str, config: ModelConfig, *, dtype: str | None = None, mesh=None,
                    as_numpy: bool = False) -> Params:
  """Reads and verifies the on-disk tree of a params checkpoint or step directory (`config`: as stored): host numpy
  arrays, or jax arrays sharded for `mesh` (default: one device), cast to `dtype` after verification."""
  path = paths.absolute(path)
  item_path = os.path.join(path, PARAMS_ITEM)
  if not paths.path(item_path).is_dir():
    raise CorruptCheckpoint(f"{path} has no {PARAMS_ITEM}/ item: the checkpoint is incomplete")
  expected = _expected_params_fingerprints(path)
  target = layered_abstract(config, None, mesh)
  if as_numpy:
    restore_args = jax.tree.map(lambda a: ocp.RestoreArgs(restore_type=np.ndarray, dtype=a.dtype), target)
  else:
    if mesh is None:
      device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
      target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), target)
    restore_args = ocp.checkpoint_utils.construct_restore_args(target)
  try:
    layered = ocp.PyTreeCheckpointer().restore(
        item_path, args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args))
  except Exception as e:  # tensorstore, zstd and Orbax each raise their own kinds for damaged files
    raise CorruptCheckpoint(f"{item_path} cannot be read ({short_reason(e)})") from None
  verify(layered, expected, item_path)
  if dtype and model_lib.jnp_dtype(dtype) != model_lib.jnp_dtype(config.param_dtype):
    layered = _cast_in_place(layered, model_lib.jnp_dtype(dtype))
  return layered


def _cast_in_place(tree: Params, dtype) -> Params:
  """Leaf by leaf, so each stored-dtype original is freed as soon as its cast exists."""
  for key, value in tree.items():
    tree[key] = _cast_in_place(value, dtype) if isinstance(value, dict) else value.astype(dtype)
  return tree


def _expected_params_fingerprints(path: str) -> dict[str, str] | None:
  if is_checkpoint(path):  # a params checkpoint
    return read_metadata(path)[1].get("fingerprints")
  return read_step_meta(path).get("fingerprints", {}).get(PARAMS_ITEM)


def load_layered(path: str, *, dtype: str | None = None, mesh=None,
                 as_numpy: bool = False) -> tuple[ModelConfig, Params, str]:
  """(stored config, verified on-disk tree, the directory read) for a params checkpoint, a step directory, or a
  training workdir — whose newest step that verifies is used, with a warning for each newer one that does not."""
  candidates, config = resolve_candidates(path)
  failures = []
  for directory in candidates:
    try:
      layered = restore_layered(directory, config, dtype=dtype, mesh=mesh, as_numpy=as_numpy)
    except CorruptCheckpoint as e:
      failures.append(str(e))
      continue
    for failure in failures:
      log.warning("%s; using the older %s instead", failure, directory)
    return config, layered, directory
  if len(candidates) > 1:
    raise CorruptCheckpoint(f"no checkpoint step in {path} verifies (newest: {failures[0]}); the files are damaged "
                            "— retrain, or restore them from a copy")
  raise CorruptCheckpoint(f"{failures[0]} — the checkpoint is damaged or does not match its {METADATA_FILE}; "
                          "delete it and use another step, or re-export it")


def restore_params(path: str, *, dtype: str | None = None, mesh=None) -> tuple[ModelConfig, Params]:
  """(config, stacked params as jax arrays), sharded by the logical rules when a mesh is given. `path`: a params
  checkpoint, a training workdir (newest verified step) or a step directory."""
  config, layered, _ = load_layered(path, dtype=dtype, mesh=mesh)
  if dtype:
    config = config.replace(param_dtype=dtype)
  return config, stack_on_device(layered, config, mesh)


def stack_on_device(layered: Params, config: ModelConfig, mesh=None) -> Params:
  """Per-layer jax arrays → stacked params, placed with the logical shardings when a mesh is given."""
  stack = jax.jit(lambda tree: from_layered(tree, config.n_layers, jnp.stack),
                  out_shardings=None if mesh is None else model_lib.param_shardings(config, mesh))
  return stack(layered)


# ---- Training checkpoints: a workdir with llada_jax.json and checkpoints/<step>/{params,state,data_iter,meta} ----

STATE_ITEM, DATA_ITEM, META_ITEM = "state", "data_iter", "meta"
JSON_FILE = "metadata"  # the file name of ocp.JsonCheckpointHandler()
STEP_ITEMS = (STATE_ITEM, PARAMS_ITEM, DATA_ITEM)
CORRUPT_DIR = "corrupt_checkpoints"


def committed_steps(workdir: str) -> list[int]:
  """The steps whose directories Orbax committed (in-progress writes carry a suffix and are not listed)."""
  directory = paths.path(workdir, "checkpoints")
  return sorted(int(d.name) for d in directory.iterdir() if d.name.isdigit()) if directory.is_dir() else []


def read_step_meta(step_dir: str) -> dict:
  """The step's `meta` item: {"step", "val_loss", "fingerprints": {item: {array: fingerprint}}}; {} for steps
  written before it existed."""
  meta_dir = paths.path(step_dir, META_ITEM)
  if not meta_dir.is_dir():
    return {}
  # Read as the file JsonCheckpointHandler writes, not through an Orbax Checkpointer: that one synchronises all
  # processes, and a collective started after a peer died blocks until the heartbeat timeout aborts the process.
  try:
    return json.loads((meta_dir / JSON_FILE).read_text())
  except (OSError, ValueError) as e:
    raise CorruptCheckpoint(f"{meta_dir} cannot be read ({short_reason(e)})") from None


class TrainCheckpoints:
  """Orbax CheckpointManager over composite items: the parameters in the on-disk layout (what eval and conversion
  read, never touching optimizer state; a resume stacks them back), the rest of the train state, each process's
  Grain iterator, and a `meta` item with the validation bound and every array's fingerprint. The parameters are
  stored once (for the 8B in fp32: 32 GB of a 96 GB step).

  Rotation keeps the newest `keep` steps and the one with the best finite validation bound, so a run that goes bad
  after its best point can never push that point out. Restore walks back from the newest step to the newest one
  that reads and verifies; steps newer than it are moved to WORKDIR/corrupt_checkpoints, never deleted."""

  def __init__(self, workdir: str, experiment, model_config: ModelConfig, *, keep: int, async_save: bool):
    import grain
    self.workdir = paths.absolute(workdir)
    self.directory = os.path.join(self.workdir, "checkpoints")
    self.model_config = model_config
    self.keep = keep
    paths.path(self.workdir).mkdir(parents=True, exist_ok=True)
    # A workdir is bound to its model once it holds a checkpoint; before that, a failed first try binds nothing.
    if is_checkpoint(self.workdir) and committed_steps(self.workdir):
      previous, _ = read_metadata(self.workdir)
      # The weights' shapes and storage dtype bind; how they are run (kernels, remat, compute dtype) may change.
      bound = lambda c: c.architecture().replace(param_dtype=c.param_dtype)
      if bound(previous) != bound(model_config):
        raise UserError(f"{workdir} holds a run of a different model "
                        f"({_config_diff(bound(previous), bound(model_config))}); "
                        "choose a new --workdir or restore the old config")
    elif jax.process_index() == 0:
      write_metadata(self.workdir, model_config, kind="train", experiment=experiment.to_dict())
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(enable_async_checkpointing=async_save, create=True,
                                             cleanup_tmp_directories=True),
        item_handlers={STATE_ITEM: ocp.StandardCheckpointHandler(), PARAMS_ITEM: ocp.StandardCheckpointHandler(),
                       DATA_ITEM: grain.checkpoint.CheckpointHandler(),
                       META_ITEM: ocp.JsonCheckpointHandler(JSON_FILE)})
    self._saving = None  # the step being written asynchronously
    self.last_committed = self.latest_step()

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save_with_run(self, tokenizer, generation_config: dict) -> None:
    """Keeps the tokenizer and the sampling defaults (generation_config.json) with the run, so `generate`/`eval`
    on this workdir need nothing else."""
    if jax.process_index() == 0:
      tokenizer.save(self.workdir)
      with paths.path(self.workdir, GENERATION_CONFIG).open("w") as f:
        json.dump(generation_config, f, indent=2)

  def save(self, step: int, state: dict, data_iterator, val_loss: float | None) -> None:
    """Starts writing `step` (in the background when async). The previous write is waited for and its errors
    raised first, and rotation runs only over committed steps, so a failing write never costs an older one."""
    import grain
    self.wait()
    if paths.path(self.directory, str(step)).exists():  # left by a run that fell back past it
      self._move_aside([step])
    layered = to_layered(state["params"], self.model_config.n_layers)
    rest = _without_params(state)
    finite = val_loss is not None and math.isfinite(val_loss)
    meta = {"step": step, "val_loss": val_loss if finite else None,
            "fingerprints": {STATE_ITEM: fingerprints(rest), PARAMS_ITEM: fingerprints(layered)}}
    try:
      self.manager.save(step, args=ocp.args.Composite(**{
          STATE_ITEM: ocp.args.StandardSave(rest), PARAMS_ITEM: ocp.args.StandardSave(layered),
          DATA_ITEM: grain.checkpoint.CheckpointSave(data_iterator), META_ITEM: ocp.args.JsonSave(meta)}))
    except Exception as e:
      raise self._write_failed(step, e) from None
    self._saving = step
    if not self.manager.is_saving_in_progress():
      self.wait()

  def check(self) -> None:
    """Raises at once if a background write has failed (call every step: it does not block)."""
    if self._saving is None:
      return
    try:
      self.manager.check_for_errors()
    except Exception as e:
      raise self._write_failed(self._saving, e) from None
    if not self.manager.is_saving_in_progress():
      self.wait()

  def wait(self) -> None:
    """Blocks until the write in flight is committed (raising its error), then rotates."""
    if self._saving is None:
      return
    step, self._saving = self._saving, None
    try:
      self.manager.wait_until_finished()
      self.manager.check_for_errors()
    except Exception as e:
      raise self._write_failed(step, e) from None
    if step not in self.manager.all_steps():
      raise self._write_failed(step, RuntimeError("the step was not committed"))
    self.last_committed = step
    self._rotate()

  def _write_failed(self, step: int, error: Exception) -> Exception:
    """The one-line error for a failed write, after removing what it left half-written. A write that failed because
    another process went away is that process's failure, not the disk's: its error goes on unchanged."""
    with contextlib.suppress(Exception):
      self.manager.wait_until_finished()
    self._remove_partial(step)
    from llada_jax.errors import environment_problem, peer_failure
    if jax.process_count() > 1 and peer_failure(error):
      return error
    problem = environment_problem(error)
    why = f"{problem[0]}; {problem[1]}" if problem else short_reason(error)
    last = (f"the last committed checkpoint is step {self.last_committed}" if self.last_committed is not None
            else "no checkpoint was committed yet")
    return UserError(f"writing checkpoint step {step} to {self.directory} failed ({why}); {last} — fix this, then "
                     "continue with --resume")

  def _remove_partial(self, step: int, settle_seconds: float = 0.3, limit_seconds: float = 10.0) -> None:
    """Removes the temporary directory of a failed write. Tensorstore's C++ writers of the save's other arrays can
    still be finishing after Orbax reported the failure, and recreate files in it: remove until it stays gone."""
    directory = paths.path(self.directory)
    if jax.process_index() != 0 or not directory.is_dir():
      return
    deadline, gone_since = time.monotonic() + limit_seconds, None
    while time.monotonic() < deadline:
      partial = [p for p in directory.iterdir() if p.name.startswith(f"{step}.") and "tmp" in p.name]
      for p in partial:
        with contextlib.suppress(OSError):
          p.rmtree()
      if partial:
        gone_since = None
      elif gone_since is None:
        gone_since = time.monotonic()
      elif time.monotonic() - gone_since > settle_seconds:
        return
      time.sleep(0.05)

  def _rotate(self) -> None:
    steps = self.manager.all_steps()
    keep = set(sorted(steps)[-self.keep:])
    scored = [(meta["val_loss"], s) for s in steps
              if (meta := self._meta_or_empty(s)).get("val_loss") is not None]
    if scored:
      keep.add(min(scored)[1])
    for step in sorted(set(steps) - keep):
      self.manager.delete(step)

  def _meta_or_empty(self, step: int) -> dict:
    try:
      return read_step_meta(os.path.join(self.directory, str(step)))
    except CorruptCheckpoint:
      return {}

  def best_step(self) -> int | None:
    scored = [(meta["val_loss"], s) for s in self.manager.all_steps()
              if (meta := self._meta_or_empty(s)).get("val_loss") is not None]
    return min(scored)[1] if scored else None

  def restore(self, abstract_state: dict, shardings: dict, mesh, data_iterator) -> dict:
    """The newest step that reads and verifies, restored into arrays carrying the *current* mesh's shardings (so a
    run can move to another topology); `data_iterator` is positioned to match."""
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings)
    failed = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        state = self._restore_step(step, target, mesh, data_iterator)
      except CorruptCheckpoint as e:
        failed.append((step, str(e)))
        continue
      if failed:
        self._move_aside([s for s, _ in failed])
        for s, why in failed:
          log.warning("checkpoint step %d is unusable (%s); resuming from step %d instead (step %d moved to %s)",
                      s, why, step, s, os.path.join(self.workdir, CORRUPT_DIR))
      self.last_committed = step
      return state
    raise UserError(f"no checkpoint in {self.directory} can be restored (step {failed[0][0]}: {failed[0][1]}); if "
                    "the files are damaged, move the bad step directories out of checkpoints/ (with none left, "
                    "--resume starts from step 0); if the config changed (optimizer, process count), restore it")

  def _restore_step(self, step: int, target: dict, mesh, data_iterator) -> dict:
    import grain
    step_dir = os.path.join(self.directory, str(step))
    missing = [item for item in STEP_ITEMS if not paths.path(step_dir, item).is_dir()]
    if missing:
      raise CorruptCheckpoint(f"{', '.join(missing)}/ missing: the step is incomplete")
    meta = read_step_meta(step_dir)
    expected = meta.get("fingerprints", {})
    # Steps written before the parameters moved out of `state` (no meta, or parameter fingerprints under `state`)
    # are restored as they were written: the whole state from its one item.
    legacy = not meta or any(key.startswith("params/") for key in expected.get(STATE_ITEM, {}))
    items = {STATE_ITEM: ocp.args.StandardRestore(target if legacy else _without_params(target)),
             DATA_ITEM: grain.checkpoint.CheckpointRestore(data_iterator)}
    if not legacy:
      items[PARAMS_ITEM] = ocp.args.StandardRestore(layered_abstract(self.model_config, None, mesh))
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:
      raise CorruptCheckpoint(f"cannot be read: {short_reason(e)}") from None
    verify(restored[STATE_ITEM], expected.get(STATE_ITEM), STATE_ITEM)
    if legacy:
      return restored[STATE_ITEM]
    verify(restored[PARAMS_ITEM], expected.get(PARAMS_ITEM), PARAMS_ITEM)
    params = stack_on_device(restored[PARAMS_ITEM], self.model_config, mesh)
    return {**restored[STATE_ITEM], "params": params}

  def _move_aside(self, steps: list[int]) -> None:
    """Moves unusable steps out of Orbax's directory (a later save of the same step number would collide), keeping
    their files for inspection."""
    if jax.process_index() == 0:
      aside = paths.path(self.workdir, CORRUPT_DIR)
      aside.mkdir(parents=True, exist_ok=True)
      for step in steps:
        target = aside / str(step)
        suffix = 1
        while target.exists():
          target, suffix = aside / f"{step}.{suffix}", suffix + 1
        paths.path(self.directory, str(step)).rename(target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("llada_jax.move_aside")
    self.manager.reload()


def _without_params(state: dict) -> dict:
  """The train state but its parameters: those are stored once, as the `params` item in the on-disk layout."""
  return {key: value for key, value in state.items() if key != "params"}


def _config_diff(a: ModelConfig, b: ModelConfig) -> str:
  da, db = a.to_dict(), b.to_dict()
  return ", ".join(f"{k}: {da[k]} → {db[k]}" for k in da if da[k] != db[k])


def resolve_candidates(path: str) -> tuple[list[str], ModelConfig]:
  """(directories holding a `params/` item, newest first; model config) for a params checkpoint, a training
  workdir (each committed step) or one step directory of a workdir."""
  path = paths.absolute(path)
  if is_checkpoint(path):
    config, meta = read_metadata(path)
    if meta.get("kind") != "train":
      return [path], config
    steps = committed_steps(path)
    if not steps:
      raise UserError(f"{path} is a training workdir without a finished checkpoint yet")
    return [os.path.join(path, "checkpoints", str(s)) for s in reversed(steps)], config
  workdir = os.path.dirname(os.path.dirname(path))
  if os.path.basename(os.path.dirname(path)) == "checkpoints" and is_checkpoint(workdir):
    return [path], read_metadata(workdir)[0]
  return [path], read_metadata(path)[0]  # raises the "not a llada-jax checkpoint" error


GENERATION_CONFIG = "generation_config.json"  # transformers' name; it also carries our sampling defaults


def companion_dirs(path: str) -> tuple[str, str]:
  """Where the files kept beside a checkpoint's weights (tokenizer, generation_config.json) are looked for: the
  directory itself, then the workdir above a step directory (W/checkpoints/N)."""
  path = paths.absolute(path)
  return path, os.path.dirname(os.path.dirname(path))


def find_tokenizer(path: str) -> str | None:
  """The tokenizer saved with a run or checkpoint (searched upwards from a step directory), if any."""
  from llada_jax.tokenizer import tokenizer_file  # sentencepiece and tokenizers load only when asked for
  for directory in companion_dirs(path):
    found = tokenizer_file(directory)
    if found is not None:
      return found
  return None
