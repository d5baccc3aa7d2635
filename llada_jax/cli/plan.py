"""`llada-jax plan`: a training run's per-device memory and step cost, compiled ahead of time for TPU or GPU chips
that need not be here."""

import argparse
import os
import sys

from llada_jax.cli import common
from llada_jax.errors import UserError


def add_parsers(commands) -> None:
  p = commands.add_parser("plan", help="per-device memory and step cost of a training run, compiled ahead of time "
                          "for TPU or GPU chips that need not be here",
                          description="Compiles the real train step (the function `train` jits, same shardings and "
                          "donation) for a TPU topology or GPU nodes with abstract inputs — nothing is allocated — "
                          "and prints the per-device memory (XLA's memory analysis), the analytic FLOPs per step and "
                          "the step time and tokens/s/chip at 40%% and 60%% MFU. The last line is `fits: X.XX GiB of "
                          "Y.YY GiB per device` or `does not fit: …`. TPU topologies need libtpu (pip install -e "
                          "'.[tpu]'), GPU nodes JAX's CUDA plugin (pip install -e '.[gpu]'); neither needs the chips.")
  common.add_config_arg(p)
  p.add_argument("--topology", required=True, help="a TPU topology name, e.g. v5e:16x16, v5p:4x4x4, v6e:16x16, "
                 "v4:4x4x8; GPU nodes as CHIP:G (one node of G GPUs) or CHIP:NxG (N nodes), CHIP one of "
                 "h100, h200, a100, b200 (llada_jax/assets/gpu/), e.g. h100:8, h100:2x8; or cpu:N for N simulated "
                 "CPU devices (checks shapes and shardings; the bytes are XLA:CPU's, not an accelerator's)")
  p.add_argument("--mesh", default="", help="mesh axis sizes, e.g. fsdp=256 or fsdp=128,tensor=2 (default: fsdp "
                 "takes every device the others leave)")
  p.add_argument("--per-device-batch", type=int, default=None, help="sequences per data×fsdp shard (sets "
                 "data.global_batch; default: the config's global batch)")
  p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default: the config's "
                 "data.seq_len)")
  p.add_argument("--fit", action="store_true", help="instead: the largest per-device batch that fits for each "
                 "remat policy, as a table (one compile per tried batch)")
  p.add_argument("--policies", default="full,save_qkv_proj,save_dots", help="--fit: remat policies to try, "
                 "comma-separated (default full,save_qkv_proj,save_dots)")
  p.add_argument("--max-batch", type=int, default=64, help="--fit: largest per-device batch tried (default 64)")
  p.set_defaults(func=_cmd_plan)


def _cmd_plan(args: argparse.Namespace) -> None:
  from llada_jax import plan  # imports JAX only when it plans, after the platform is chosen here
  if args.topology.startswith("cpu:"):
    count = args.topology.split(":", 1)[1]
    if not count.isdigit() or int(count) < 1:
      raise UserError(f"--topology {args.topology}: expected cpu:N with N ≥ 1 simulated devices")
    if "jax" not in sys.modules:  # simulated devices must be asked for before JAX starts
      os.environ["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS"),
                                                        f"--xla_force_host_platform_device_count={count}"]))
  elif "jax" not in sys.modules:
    # Only compiles happen here: compile-only TPUs come from libtpu and GPUs from the CUDA plugin without the chips,
    # and a CUDA backend started here would look for a GPU (and say it found none) before the plan begins.
    os.environ["JAX_PLATFORMS"] = "cpu"
  cfg = common.load_config(args)
  if args.fit:
    print(f"largest per-device batch that fits, per remat policy, on {args.topology} (powers of two up to "
          f"{args.max_batch}):")
    rows = plan.fit_table(cfg, args.topology, args.mesh, args.seq_len, tuple(args.policies.split(",")),
                          limit=args.max_batch)
    print(plan.format_fit_table(rows))
    return
  result, caveat = plan.make_plan(cfg, args.topology, args.mesh, args.per_device_batch, args.seq_len)
  print(plan.format_plan(result, caveat))
