"""`llada-jax plan`: the per-device memory and the cost of a training run, from an ahead-of-time compile of the real
train step for chips that need not be here (TPU topologies through libtpu; simulated CPU devices otherwise).

Nothing is allocated: the state and batch are ShapeDtypeStructs carrying the shardings `train` uses, and XLA's
memory analysis of the compiled step gives the bytes per device. FLOPs are analytic (`flops.train_flops_per_token`):
XLA's cost analysis counts a scanned layer once.
"""

import dataclasses
import importlib.util
import os
import re
import time

import ml_collections

from llada_jax.errors import UserError

GIB = 1024 ** 3
# HBM per chip in GiB, by topology-name prefix.
HBM_GIB = {"v4": 32, "v5e": 16, "v5p": 95, "v6e": 32}
# GPU chips XLA compiles for from a target description (package data, each file saying where its figures come from).
GPU_TARGETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "gpu")
GPUS = tuple(sorted(f.removesuffix(".txtpb") for f in os.listdir(GPU_TARGETS) if f.endswith(".txtpb")))
# The custom calls of fused attention kernels in a compiled program: cuDNN's flash attention, Pallas (splash) on TPU.
FUSED_ATTENTION = {"cudnn": re.compile(r"__cudnn\$fmha"), "splash": re.compile(r"tpu_custom_call")}
# JAX's default share of each GPU's memory for its allocator (XLA_PYTHON_CLIENT_MEM_FRACTION); what a process may use.
JAX_GPU_MEMORY_FRACTION = 0.75
# What launch/slurm_gpu.sbatch and `bench gpu` set instead (the rest holds the CUDA context and NCCL's buffers).
LAUNCHER_GPU_MEMORY_FRACTION = 0.90
_COLLECTIVE = re.compile(r" (all-gather|all-reduce|reduce-scatter|collective-permute|all-to-all)(-start)?\(")
_OOM = re.compile(r"(?:Ran out of memory|exceed(?:s|ed)? available HBM|RESOURCE_EXHAUSTED)", re.I)
_GIGS = re.compile(r"([0-9.]+)([GM])")


@dataclasses.dataclass
class Plan:
  topology: str
  chips: int
  mesh: dict
  per_device_batch: int
  seq_len: int
  remat_policy: str
  attention_impl: str
  capacity_bytes: float
  compile_seconds: float
  tokens_per_step: int  # the global batch: per_device_batch × data × fsdp sequences (tensor shards split heads)
  flops_per_step: float
  peak_flops: float  # per chip, dense bf16
  memory: dict | None = None  # arguments, outputs, temporaries, aliased, total (bytes per device)
  xla_error: str | None = None  # XLA's out-of-memory message when the step does not fit
  fused_attention_calls: int | None = None  # fused attention kernel calls in the compiled step (cudnn, splash)
  collectives: dict | None = None  # `collective_summary` of the compiled step

  @property
  def total_bytes(self) -> float:
    if self.memory is not None:
      return self.memory["total"]
    figures = [float(n) * (GIB if unit == "G" else GIB / 1024) for n, unit in _GIGS.findall(self.xla_error or "")]
    return figures[0] if figures else float("nan")  # XLA names the needed size first

  @property
  def fits(self) -> bool:
    return self.memory is not None and self.memory["total"] <= self.capacity_bytes

  def at_mfu(self, mfu: float) -> tuple[float, float]:
    """(seconds per step, tokens/s per chip) if the chips ran at this model-FLOPs utilisation."""
    seconds = self.flops_per_step / (self.chips * self.peak_flops * mfu)
    return seconds, self.tokens_per_step / seconds / self.chips


def devices_for(topology: str):
  """(devices, capacity bytes per device, what the plan cannot tell) for a topology name or `cpu:N`."""
  import jax
  if topology.startswith("cpu:"):
    count = int(topology.split(":", 1)[1])
    devices = jax.devices("cpu")
    if len(devices) < count:
      raise UserError(f"--topology {topology} needs {count} CPU devices but this process has {len(devices)}")
    capacity = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / count
    return devices[:count], capacity, ("XLA:CPU's memory plan (its fusion, layouts and kernels differ from TPU's): "
                                       "the shapes and shardings compile, the bytes are not a TPU's")
  from jax.experimental import topologies
  chip = topology.split(":", 1)[0].lower()
  if chip in GPUS:
    return _gpu_devices(topology, chip)
  if chip not in HBM_GIB:
    raise UserError(f"--topology {topology}: unknown chip {chip!r}; use one of {', '.join((*HBM_GIB, *GPUS))} (e.g. "
                    "v5e:16x16, v5p:4x4x4, h100:8, h100:2x8) or cpu:N")
  try:
    # A v4 or v5p pod runs each chip's two TensorCores as one JAX device (megacore); libtpu's compile-only
    # topology would otherwise list every core as a device with half the chip's HBM.
    megacore = {"chip_config_name": "megacore"} if chip in ("v4", "v5p") else {}
    description = topologies.get_topology_desc(platform="tpu", topology_name=topology, **megacore)
  except Exception as e:  # libtpu absent, or a shape it does not know
    reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
    if importlib.util.find_spec("libtpu") is None:
      raise UserError(f"--topology {topology} needs libtpu: pip install -e '.[tpu]' (or plan for simulated CPU "
                      "devices with --topology cpu:N)") from None
    if "libtpu" in str(e).lower() or "platform" in str(e).lower() or "backend" in str(e).lower():
      # e.g. another process holds libtpu (one per machine, /tmp/libtpu_lockfile): plans run one at a time
      raise UserError(f"--topology {topology}: libtpu is installed but did not start ({reason}); if another "
                      "llada-jax plan or TPU program is running, wait for it") from None
    raise UserError(f"--topology {topology} is not a topology libtpu knows ({reason})") from None
  return description.devices, HBM_GIB[chip] * GIB, None


def has_cuda_plugin() -> bool:
  """Whether JAX's CUDA plugin, which compiles for NVIDIA GPUs with or without one, is installed."""
  return importlib.util.find_spec("jax_plugins") is not None and \
      importlib.util.find_spec("jax_plugins.xla_cuda12") is not None


def _gpu_devices(topology: str, chip: str):
  """Abstract GPUs for `chip:G` (one node of G) or `chip:NxG` (N nodes of G), from the chip's target description."""
  import jax
  from jax.experimental import topologies
  match = re.fullmatch(r"(?:(\d+)x)?(\d+)", topology.split(":", 1)[1] if ":" in topology else "")
  if not match or int(match.group(2)) < 1 or int(match.group(1) or 1) < 1:
    raise UserError(f"--topology {topology}: expected {chip}:G (one node of G GPUs) or {chip}:NxG (N nodes)")
  nodes, per_node = int(match.group(1) or 1), int(match.group(2))
  if not has_cuda_plugin():
    raise UserError(f"--topology {topology} needs JAX's CUDA plugin to compile for GPUs: pip install -e '.[gpu]'")
  with open(os.path.join(GPU_TARGETS, f"{chip}.txtpb"), encoding="utf-8") as f:
    target = f.read()
  try:  # partitions × hosts × GPUs per host
    description = topologies.get_topology_desc(platform="cuda", target_config=target,
                                               topology=f"1x{nodes}x{per_node}")
  except Exception as e:
    if "not implemented" in str(e):  # the CUDA backend tried to start on a machine without a GPU
      raise UserError(f"--topology {topology}: JAX started its CUDA backend before the plan could ask for a "
                      f"compile-only one ({jax.default_backend()} backend now); run the plan in a process of its "
                      "own, or with JAX_PLATFORMS=cpu") from None
    raise UserError(f"--topology {topology}: XLA cannot compile for {chip} ({str(e).splitlines()[0][:200]})") from None
  memory = float(re.search(r"device_memory_size:\s*(\d+)", target).group(1))
  fraction = gpu_memory_fraction()
  source = "XLA_PYTHON_CLIENT_MEM_FRACTION" if "XLA_PYTHON_CLIENT_MEM_FRACTION" in os.environ else "JAX's default"
  return description.devices, memory * fraction, (
      f"a JAX process may use {fraction:.2f} of each GPU's {memory / GIB:.2f} GiB ({source}; "
      f"launch/slurm_gpu.sbatch sets XLA_PYTHON_CLIENT_MEM_FRACTION={LAUNCHER_GPU_MEMORY_FRACTION:.2f})")


def gpu_memory_fraction() -> float:
  """The share of each GPU's memory JAX's allocator takes: XLA_PYTHON_CLIENT_MEM_FRACTION, else JAX's default."""
  text = os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION")
  if text is None:
    return JAX_GPU_MEMORY_FRACTION
  try:
    fraction = float(text)
  except ValueError:
    fraction = -1.0
  if not 0 < fraction <= 1:
    raise UserError(f"XLA_PYTHON_CLIENT_MEM_FRACTION={text} must be a number in (0, 1], e.g. 0.90")
  return fraction


def collective_summary(hlo_text: str) -> dict:
  """The collectives of a compiled (scheduled) program: how many of each kind, how many are exposed (synchronous:
  nothing is scheduled to run while they do; XLA marks an asynchronous pair it could not overlap `is_sync`), and
  the most in one computation other than the entry — a loop body, so in our steps the collectives of one layer."""
  kinds: dict[str, int] = {}
  per_computation: dict[str, int] = {}
  exposed, computation = 0, None
  for line in hlo_text.splitlines():
    if line.endswith("{") and not line.startswith(" "):
      computation = line.split(" ", 1)[0]
      continue
    match = _COLLECTIVE.search(line)
    if not match or "=" not in line[:match.start()]:
      continue
    kinds[match.group(1)] = kinds.get(match.group(1), 0) + 1
    per_computation[computation] = per_computation.get(computation, 0) + 1
    exposed += not match.group(2) or '"is_sync":true' in line
  bodies = [n for name, n in per_computation.items() if name != "ENTRY"]
  return {"kinds": kinds, "total": sum(kinds.values()), "exposed": exposed, "per_loop_body": max(bodies, default=0)}


def make_plan(cfg: ml_collections.ConfigDict, topology: str, mesh_text: str, per_device_batch: int | None,
              seq_len: int | None) -> tuple[Plan, str | None]:
  """Compiles the train step of `cfg` for the topology and returns its plan (and what the plan cannot tell)."""
  import jax
  from llada_jax import flops, ops, optim, sharding, train
  from llada_jax.config import Experiment
  devices, capacity, caveat = devices_for(topology)
  mesh_shape = sharding.parse_mesh(mesh_text)
  mesh = sharding.make_mesh(mesh_shape["data"], mesh_shape["fsdp"], mesh_shape["tensor"], devices=devices)
  batch_devices = mesh.shape["data"] * mesh.shape["fsdp"]
  if per_device_batch is not None:
    cfg.data.global_batch = per_device_batch * batch_devices
  if seq_len is not None:
    cfg.data.seq_len = seq_len
  exp = Experiment.from_config(cfg)
  with jax.set_mesh(mesh):  # "auto" names the kernel the target chips get
    model_config = exp.model.replace(attention_impl=ops.resolve_attention_impl(exp.model))
  train.check_experiment(exp, mesh, process_count=1)
  optimizer = optim.make_optimizer(exp.train)
  start = time.time()
  memory, xla_error, fused, collectives = None, None, None, None
  step_fn, abstract, shardings = train.jit_train_step(model_config, exp.train, optimizer, mesh)
  with jax.set_mesh(mesh):
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    try:
      compiled = step_fn.lower(state, train.abstract_batch(exp, mesh)).compile()
    except Exception as e:
      if not is_out_of_memory(e):
        raise
      xla_error = " ".join(str(e).split())[:400]
    else:
      memory = compiled_memory(compiled)
      text = compiled.as_text()
      collectives = collective_summary(text)
      if model_config.attention_impl in FUSED_ATTENTION:
        fused = len(FUSED_ATTENTION[model_config.attention_impl].findall(text))
  tokens = exp.tokens_per_step
  plan = Plan(topology=topology, chips=len(devices), mesh=dict(mesh.shape),
              per_device_batch=exp.data.global_batch // batch_devices, seq_len=exp.data.seq_len,
              remat_policy=model_config.remat_policy, attention_impl=model_config.attention_impl,
              capacity_bytes=capacity, compile_seconds=time.time() - start, tokens_per_step=tokens,
              flops_per_step=flops.train_flops_per_step(exp),
              peak_flops=flops.peak_flops(devices[0]), memory=memory, xla_error=xla_error,
              fused_attention_calls=fused, collectives=collectives)
  return plan, caveat


def is_out_of_memory(error: Exception) -> bool:
  """Whether a compile failed because the program cannot fit the device's memory."""
  return bool(_OOM.search(str(error)))


def compiled_memory(compiled) -> dict:
  """Bytes per device of a compiled program: arguments, outputs, temporaries, aliased and their total."""
  analysis = compiled.memory_analysis()
  memory = {"arguments": analysis.argument_size_in_bytes, "outputs": analysis.output_size_in_bytes,
            "temporaries": analysis.temp_size_in_bytes, "aliased": analysis.alias_size_in_bytes}
  # Donated state is both argument and output: count it once.
  memory["total"] = memory["arguments"] + memory["outputs"] + memory["temporaries"] - memory["aliased"]
  return memory


def verdict(plan: Plan) -> str:
  """The plan's last line, in the one format scripts may parse."""
  used, capacity = plan.total_bytes / GIB, plan.capacity_bytes / GIB
  return f"{'fits' if plan.fits else 'does not fit'}: {used:.2f} GiB of {capacity:.2f} GiB per device"


def format_plan(plan: Plan, caveat: str | None) -> str:
  mesh = " × ".join(f"{k} {v}" for k, v in plan.mesh.items())
  lines = [f"─── llada-jax plan: {plan.topology} ({plan.chips} devices) " + "─" * 20,
           f"mesh         {mesh}",
           f"batch        {plan.per_device_batch} × {plan.seq_len} tokens per device (data×fsdp shards the batch)",
           f"model        remat {plan.remat_policy}, attention {plan.attention_impl}"
           + ("" if plan.fused_attention_calls is None else f" ({plan.fused_attention_calls} fused kernel calls in the "
              "compiled step)"),
           f"compile      {plan.compile_seconds:.1f}s"]
  if plan.memory is not None:
    m = {k: v / GIB for k, v in plan.memory.items()}
    lines.append(f"memory       per device: arguments {m['arguments']:.2f} GiB (params + optimizer state), outputs "
                 f"{m['outputs']:.2f}, temporaries {m['temporaries']:.2f}, aliased {m['aliased']:.2f} → total "
                 f"{m['total']:.2f} GiB")
  else:
    lines.append(f"memory       XLA: {plan.xla_error}")
  if plan.collectives and plan.collectives["total"]:
    c = plan.collectives
    kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(c["kinds"].items()))
    lines.append(f"collectives  {kinds}; {c['exposed']} exposed (nothing overlaps them), at most "
                 f"{c['per_loop_body']} in one loop body (a layer's)")
  lines.append(f"FLOPs        {plan.flops_per_step:.3e} per step ({plan.flops_per_step / plan.tokens_per_step:.3e} "
               "per token, "
               "full bidirectional attention)")
  if plan.peak_flops == plan.peak_flops:  # not NaN
    for mfu in (0.4, 0.6):
      seconds, rate = plan.at_mfu(mfu)
      lines.append(f"at {mfu:.0%} MFU   {seconds * 1e3:,.1f} ms/step, {rate:,.0f} tokens/s/chip")
  if caveat:
    lines.append(f"note         {caveat}")
  lines.append(verdict(plan))
  return "\n".join(lines)


def fit_table(cfg: ml_collections.ConfigDict, topology: str, mesh_text: str, seq_len: int | None,
              policies: tuple[str, ...], limit: int = 64, log=print) -> list[tuple[str, int, Plan | None]]:
  """For each remat policy, the largest per-device batch (a power of two up to `limit`) that fits, with its plan."""
  rows = []
  for policy in policies:
    best = None
    batch = 1
    while batch <= limit:
      trial = ml_collections.ConfigDict(cfg.to_dict())
      trial.model.remat_policy = policy
      plan, _ = make_plan(trial, topology, mesh_text, batch, seq_len)
      log(f"  remat {policy:<14} batch {batch:>3}: {verdict(plan)} (compiled in {plan.compile_seconds:.0f}s)")
      if not plan.fits:
        break
      best, batch = plan, batch * 2
    rows.append((policy, best.per_device_batch if best else 0, best))
  return rows


def format_fit_table(rows: list[tuple[str, int, Plan | None]]) -> str:
  lines = ["| remat policy | largest per-device batch | memory per device | tokens/s/chip at 40% MFU |",
           "|---|---|---|---|"]
  for policy, batch, best in rows:
    if best is None:
      lines.append(f"| {policy} | none fits | | |")
      continue
    lines.append(f"| {policy} | {batch} × {best.seq_len} | {best.total_bytes / GIB:.2f} of "
                 f"{best.capacity_bytes / GIB:.2f} GiB | {best.at_mfu(0.4)[1]:,.0f} |")
  return "\n".join(lines)
