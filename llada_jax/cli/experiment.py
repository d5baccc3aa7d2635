"""`llada-jax experiment`: reproduce a result of the paper on this machine (the reversal curse)."""

import argparse
import os

from llada_jax.cli import common



def add_parsers(commands) -> None:
  p = commands.add_parser("experiment", help="reproduce a result of the paper on this machine: reversal",
                          description="reversal: the reversal curse. Makes seeded pairs of made-up names, writes "
                          "the test pairs only forwards and a separate set of format pairs both ways, trains LLaDA "
                          "and its autoregressive twin (same size, data, tokens and optimiser; causal mask and "
                          "next-token loss) on them, and asks every test pair forwards and backwards, greedily. "
                          "Prints the table of exact-match accuracies with bootstrap 95%% intervals; writes "
                          "WORKDIR/reversal.json, the bar chart WORKDIR/reversal.png and both runs' tensorboard "
                          "curves. The data templates are in llada_jax/reversal.py and the README.")
  p.add_argument("name", choices=["reversal"], help="which experiment")
  common.add_config_arg(p, required=False, help="its ml_collections config (default: configs/reversal.py of this "
                        "checkout); --config.key=value overrides apply, e.g. --config.reversal.copies=10")
  p.add_argument("--workdir", default="runs/reversal", help="where the data, both runs and the report go "
                 "(default runs/reversal)")
  p.add_argument("--pairs", type=int, default=None, help="test pairs (sets reversal.pairs; default 60)")
  p.add_argument("--steps", type=int, default=None, help="optimizer steps of each model (sets train.steps)")
  p.add_argument("--resume", action="store_true", help="continue the runs in --workdir (a finished run is not "
                 "trained again) and score them again")
  p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
  p.set_defaults(func=_cmd_experiment)


def _cmd_experiment(args: argparse.Namespace) -> None:
  from llada_jax import reversal
  cfg = common.load_config(args, args.config or os.path.join(common.CONFIGS, f"{args.name}.py"))
  if args.pairs is not None:
    cfg.reversal.pairs = args.pairs
  if args.steps is not None:
    cfg.train.steps = args.steps
  report = reversal.run(cfg, args.workdir, resume=args.resume, progress=not args.no_progress)
  print(reversal.format_summary(report))
