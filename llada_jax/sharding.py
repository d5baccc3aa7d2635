"""Logical axes → mesh axes: the one table, and the helpers that apply it.

Layers name logical axes only (`embed`, `heads`, `mlp`, `activation_batch`, …). This module alone knows the mesh
axes (`data`, `fsdp`, `tensor`). Any mesh axis may have size 1, so the same rules give data parallelism, FSDP,
tensor parallelism or a mix, depending only on the mesh shape.
"""

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from llada_jax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")

# FSDP shards every weight's `embed` dimension; tensor parallelism splits heads, kv heads, the MLP and the vocab.
LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("layers", None),
    ("norm", None),
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv_heads", "tensor"),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
)
_RULES = dict(LOGICAL_RULES)


def logical_to_spec(logical_axes: Sequence[str | None]) -> P:
  """PartitionSpec for a tuple of logical axis names (None = replicated)."""
  mesh_axes = []
  for name in logical_axes:
    if name is not None and name not in _RULES:
      raise ValueError(f"logical axis {name!r} has no rule in sharding.LOGICAL_RULES")
    mesh_axes.append(None if name is None else _RULES[name])
  return P(*mesh_axes)


def _fits(shape: Sequence[int], spec: P, mesh: Mesh) -> P:
  """Drops the sharding of any dimension the mesh does not divide (e.g. 4 kv heads on tensor=8): replicate it."""
  fitted = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = (axes,) if isinstance(axes, str) else (axes or ())
    size = int(np.prod([mesh.shape[a] for a in names])) if names else 1
    fitted.append(axes if size > 1 and dim % size == 0 else None)
  return P(*fitted)


def fit_spec(shape: Sequence[int], logical_axes: Sequence[str | None], mesh) -> P:
  """The PartitionSpec of an array of `shape` with these logical axes on `mesh`, replicating what it cannot split."""
  return _fits(shape, logical_to_spec(logical_axes), mesh)


def named_sharding(mesh: Mesh, logical_axes: Sequence[str | None], shape: Sequence[int]) -> NamedSharding:
  return NamedSharding(mesh, fit_spec(shape, logical_axes, mesh))


def tree_shardings(mesh: Mesh, logical_tree: Any, abstract_tree: Any) -> Any:
  """NamedShardings for a pytree of arrays given a matching pytree of logical-axis tuples."""
  return jax.tree.map(lambda axes, a: named_sharding(mesh, axes, a.shape), logical_tree, abstract_tree,
                      is_leaf=lambda x: isinstance(x, tuple))


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
  """Sharding hint for an activation; a no-op outside a mesh context (plain single-device use)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  return jax.lax.with_sharding_constraint(x, fit_spec(x.shape, logical_axes, mesh))


def parse_mesh(text: str) -> dict:
  """`fsdp=256,tensor=2` → {"data", "fsdp", "tensor"} sizes for `make_mesh`; "+" may stand for "," (inside
  lm-eval's comma-separated --model_args). Unnamed axes are 1, except fsdp, which takes the devices the others
  leave (-1) unless a named axis already does."""
  mesh = {"data": 1, "fsdp": 1, "tensor": 1}
  named = {}
  for part in filter(None, (text or "").replace("+", ",").split(",")):
    name, _, value = part.partition("=")
    if name not in mesh or not value.lstrip("-").isdigit():
      raise UserError(f"--mesh {text}: expected comma-separated data=N, fsdp=N, tensor=N (-1: every device left)")
    named[name] = int(value)
  mesh.update(named)
  if "fsdp" not in named and -1 not in named.values():
    mesh["fsdp"] = -1
  return mesh


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1, devices: Sequence[Any] | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh over all devices; one axis may be -1 to take the remaining devices."""
  devices = list(jax.devices() if devices is None else devices)
  shape = [data, fsdp, tensor]
  if shape.count(-1) > 1:
    raise UserError("at most one of mesh data/fsdp/tensor may be -1")
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if known <= 0 or len(devices) % known:
      raise UserError(f"mesh {dict(zip(MESH_AXES, shape))} does not divide {len(devices)} devices")
    shape[shape.index(-1)] = len(devices) // known
  if int(np.prod(shape)) != len(devices):
    raise UserError(f"mesh data×fsdp×tensor = {'×'.join(map(str, shape))} = {int(np.prod(shape))} but there are "
                    f"{len(devices)} devices; set the mesh sizes so their product is the device count")
  # jax.make_mesh orders devices for the physical interconnect (TPU ICI rings), unlike a plain reshape.
  return jax.make_mesh(tuple(shape), MESH_AXES, devices=devices, axis_types=(jax.sharding.AxisType.Auto,) * 3)


def local_mesh(text: str) -> Mesh | None:
  """This process's devices as a mesh of the `parse_mesh` sizes (`data=-1`: every device data-parallel), or None
  for an empty text: inference on one device."""
  if not text:
    return None
  sizes = parse_mesh(text)
  return make_mesh(sizes["data"], sizes["fsdp"], sizes["tensor"], devices=jax.local_devices())
