"""`llada-jax train`: pre-training or SFT on a mesh of all devices, on one host or many."""

import argparse

from llada_jax.cli import common
from llada_jax.errors import UserError


def add_parsers(commands) -> None:
  p = commands.add_parser("train", help="train (pre-training or SFT) on a mesh of all devices",
                          description="Train a LLaDA model per an ml_collections config: the masked-diffusion "
                          "objective (or SFT / autoregressive) on a (data, fsdp, tensor) mesh, Grain input, Orbax "
                          "checkpoints every train.checkpoint_every steps, tensorboard metrics in WORKDIR/tensorboard "
                          "and a summary at the end. Override any key with --config.section.key=value.")
  common.add_config_arg(p)
  p.add_argument("--workdir", default=None, help="where checkpoints, tensorboard events and the tokenizer go "
                 "(required unless --print-config)")
  p.add_argument("--print-config", action="store_true", help="print the config after the --config.* overrides "
                 "and exit")
  p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --workdir "
                 "(model, optimizer, step, data position): the loss sequence continues exactly")
  p.add_argument("--recover-lr", type=float, default=None, metavar="LR",
                 help="after a NaN/loss spike: resume the latest checkpoint with peak learning rate LR (the LLaDA "
                 "paper's recovery went 4e-4 → 1e-4)")
  p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
  p.add_argument("--distributed", action="store_true", help="multi-host: call jax.distributed.initialize() with "
                 "auto-detection (TPU pod slices, SLURM); run the same command on every host")
  p.add_argument("--coordinator-address", default=None, help="multi-host without auto-detection: HOST:PORT of "
                 "process 0 (with --num-processes and --process-id; CPU hosts use gloo collectives)")
  p.add_argument("--num-processes", type=int, default=None, help="multi-host: number of processes")
  p.add_argument("--process-id", type=int, default=None, help="multi-host: this process's index")
  p.set_defaults(func=_cmd_train)


def _init_distributed(args: argparse.Namespace) -> None:
  """Joins the multi-process run before any other jax call: on TPU pods and SLURM jax finds its peers itself;
  elsewhere (a CPU or GPU cluster) pass the coordinator explicitly."""
  import jax
  if args.coordinator_address:
    if args.num_processes is None or args.process_id is None:
      raise UserError("--coordinator-address needs --num-processes and --process-id")
    if jax.config.jax_platforms in (None, "", "cpu"):
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(args.coordinator_address, num_processes=args.num_processes,
                               process_id=args.process_id)
  elif args.distributed:
    jax.distributed.initialize()


def _cmd_train(args: argparse.Namespace) -> None:
  from llada_jax import config as config_lib, reporting, train
  _init_distributed(args)
  cfg = common.load_config(args)
  if args.print_config:
    config_lib.Experiment.from_config(cfg)  # a bad section fails here too, not only when training starts
    print(cfg)
    return
  if not args.workdir:
    raise UserError("--workdir is required: where checkpoints, tensorboard events and the tokenizer go")
  summary = train.run(cfg, args.workdir, resume=args.resume, recover_lr=args.recover_lr,
                      progress=not args.no_progress)
  print(reporting.format_summary(summary))
