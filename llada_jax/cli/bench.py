"""`llada-jax bench`: speed and memory of conversion, the train step, sampling and the kernels (a table; asserts
nothing)."""

import argparse
import os

from llada_jax import bench_gpu
from llada_jax.cli import common


def add_parsers(commands) -> None:
  p = commands.add_parser("bench", help="measure speed and memory (prints a table; asserts nothing)",
                          description="Benchmarks. convert: peak RSS and time of both conversions on a synthetic "
                          "checkpoint with the 8B's tensor shapes and a few layers, extrapolated to 32 layers. "
                          "train: train-step tokens/s of llada-jax and of the PyTorch reference in tests/, same "
                          "shapes, in one run. sample: greedy sampling tokens/s, model calls and quality (agreement "
                          "with exact, log-likelihood) of the exact sampler, of faster decodings/caches and of "
                          "the official sampling rules on the PyTorch reference, same weights. kernels: forward + "
                          "backward time of the train step's projections, output head and attention at the config's "
                          "shapes, next to the PyTorch reference's (where a train-step gap comes from). train, sample "
                          "and kernels run each side in its own process, timed in alternating rounds; medians are "
                          "reported. gpu: the acceptance run for a machine with NVIDIA GPUs (about 8 minutes on one "
                          "H100; each part in its own process under a time box): cuDNN against the XLA path "
                          "(outputs and gradients, every masking case, and a whole network's logits), the train "
                          "step's tokens/s, MFU and peak memory against its compiled plan at the largest batch that "
                          "fits, an 8B-shaped model sampling exact against threshold + dual cache at batch 1 and 8, "
                          "and likelihoods at 1 against 8 pairs per call; writes OUT/report.json and OUT/report.md. "
                          "Without a GPU it is a dry run at configs/tiny.py's shapes. data: tokens/s one host's "
                          "data.source=stream pipeline delivers at each --workers count, next to the tokenizer's "
                          "own encode_batch on one core on the same documents and to what one --host of chips trains "
                          "on at 40%% MFU; last line `data: X "
                          "tokens/s per host with N workers (R× the tokenizer alone)`. serve: a load generator against "
                          "llada-jax serve on loopback (--checkpoint, the checkpoint's sampling defaults): for each "
                          "--concurrency, clients send streaming completions back to back; tokens/s, p50/p99 time to "
                          "the first block and to the end, batch occupancy, errors, memory; last line `serve: X "
                          "tokens/s at 8 concurrent (R× one at a time), p99 first block Y s`.")
  p.add_argument("what", choices=["convert", "train", "sample", "kernels", "gpu", "data", "serve"],
                 help="what to measure")
  common.add_config_arg(p, required=False, help="train/sample/kernels: the config whose model and batch to time "
                        "(default configs/tiny.py); --config.key=value overrides apply. gpu: the train part's config "
                        "and the attention part's widths (default configs/llada_1b.py of this checkout)")
  p.add_argument("--iters", type=int, default=5, help="train/kernels: timed calls per round after 2 warm-up calls "
                 "(default 5)")
  p.add_argument("--threads", type=int, default=os.cpu_count(), help="train/sample/kernels: PyTorch threads "
                 "(default: all cores)")
  p.add_argument("--prompt-length", type=int, default=64, help="sample: prompt tokens (default 64)")
  p.add_argument("--gen-length", type=int, default=64, help="sample: generated tokens (default 64)")
  p.add_argument("--steps", type=int, default=64, help="sample: steps of the exact sampler (default 64)")
  p.add_argument("--block-length", type=int, default=None, help="sample: block length (default gen-length)")
  p.add_argument("--batch", type=int, default=1, help="sample: prompts per call; rows after the first are 4 tokens "
                 "shorter each, left-padded (default 1)")
  common.add_checkpoint_arg(p, default=None, help="sample: a trained checkpoint or workdir (its config and "
                            "tokenizer; prompts from the packaged corpus) instead of random weights: thresholds only "
                            "fire on a confident model")
  p.add_argument("--decoding", default="exact", help="sample: comma-separated decodings to time next to exact "
                 "(exact, threshold, factor)")
  p.add_argument("--threshold", default="0.9", help="sample: comma-separated thresholds (default 0.9)")
  p.add_argument("--factor", default="1.0", help="sample: comma-separated factors (default 1.0)")
  p.add_argument("--cache", default="none", help="sample: comma-separated caches (none, prefix, dual); every "
                 "combination with --decoding/--threshold/--factor is one mode")
  p.add_argument("--mc-num", type=int, default=32, help="sample: Monte-Carlo samples of each output's "
                 "log-likelihood (default 32)")
  p.add_argument("--layers", default="2,4", help="convert: comma-separated layer counts to measure (default 2,4)")
  p.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16",
                 help="convert: weight dtype (default bfloat16)")
  p.add_argument("--out", default=None, help="gpu: the directory for report.json and report.md (required)")
  p.add_argument("--budget", type=float, default=480.0, help="gpu: seconds for all parts together, shared out in "
                 "proportion " + ", ".join(f"{part} {share}" for part, share in bench_gpu.BUDGET_SHARES.items())
                 + " (default 480)")
  p.add_argument("--workers", default="0,1,2", help="data: comma-separated data.num_workers values (default 0,1,2)")
  p.add_argument("--seconds", type=float, default=None, help="data: seconds timed per worker count (default 20); "
                 "serve: the most seconds per concurrency level (default 120)")
  p.add_argument("--concurrency", default="1,4,8,16", help="serve: comma-separated numbers of concurrent clients "
                 "(default 1,4,8,16)")
  p.add_argument("--requests", type=int, default=32, help="serve: the most requests per concurrency level "
                 "(default 32)")
  p.add_argument("--max-tokens", type=int, default=64, help="serve: max_tokens of every request (default 64)")
  p.add_argument("--max-batch", type=int, default=16, help="serve: the server's --max-batch (default 16)")
  p.add_argument("--host", default="v5e:4", help="data: CHIP:N, the chips of one host the loader feeds (default "
                 "v5e:4; e.g. h100:8)")
  p.add_argument("--parts", default=",".join(bench_gpu.PARTS), help="gpu: comma-separated parts to run (default "
                 "all: " + ",".join(bench_gpu.PARTS) + ")")
  p.set_defaults(func=_cmd_bench)


def _cmd_bench(args: argparse.Namespace) -> None:
  from llada_jax import bench
  if args.what == "gpu":
    _cmd_gpu(args)
  elif args.what == "data":
    _cmd_data(args)
  elif args.what == "serve":
    _cmd_serve(args)
  elif args.what == "convert":
    bench.bench_convert([int(n) for n in args.layers.split(",")], dtype=args.dtype)
  elif args.what == "train":
    bench.bench_train(args.config or "configs/tiny.py", args.overrides, args.iters, args.threads)
  elif args.what == "kernels":
    bench.bench_kernels(args.config or "configs/tiny.py", args.overrides, args.iters, args.threads)
  else:
    bench.bench_sample(args.config or "configs/tiny.py", args.overrides, args.prompt_length, args.gen_length,
                       args.steps, args.threads, block_length=args.block_length, batch=args.batch,
                       checkpoint_path=args.checkpoint, modes=_modes(args), mc_num=args.mc_num)


def _modes(args: argparse.Namespace) -> list[dict]:
  """Every combination of the comma-separated --decoding, --threshold/--factor and --cache values."""
  split = lambda text, kind=str: [kind(v) for v in text.split(",") if v.strip()]
  modes = []
  for decoding in split(args.decoding):
    values = {"threshold": split(args.threshold, float), "factor": split(args.factor, float)}.get(decoding, [None])
    for value in values:
      for cache in split(args.cache):
        modes.append(dict(decoding=decoding, cache=cache, **({decoding: value} if value is not None else {})))
  return modes


def _cmd_gpu(args: argparse.Namespace) -> None:
  from llada_jax.errors import UserError
  if not args.out:
    raise UserError("bench gpu writes its report to a directory: pass --out DIR")
  if args.overrides:
    raise UserError("bench gpu takes a config file, not --config.* overrides: each part sets its own batch")
  parts = tuple(p for p in args.parts.split(",") if p)
  unknown = sorted(set(parts) - set(bench_gpu.PARTS))
  if unknown or not parts:
    raise UserError(f"--parts {args.parts}: choose from {', '.join(bench_gpu.PARTS)}")
  config_path = args.config or os.path.join(common.CONFIGS, "llada_1b.py")
  if not os.path.isfile(config_path):
    raise UserError(f"config file {config_path} does not exist; pass --config")
  if args.budget <= 0:
    raise UserError("--budget must be positive seconds")
  bench_gpu.run(args.out, config_path, budget_s=args.budget, parts=parts)


def _cmd_data(args: argparse.Namespace) -> None:
  from llada_jax import bench_data
  from llada_jax.config import Experiment
  from llada_jax.data import make_tokenizer
  from llada_jax.errors import UserError
  if not args.config:
    raise UserError("bench data measures a config's input pipeline: pass --config (with data.source=stream)")
  workers = _counts(args.workers, "--workers", least=0, example="0,1,2")
  exp = Experiment.from_config(common.load_config(args))
  bench_data.bench_data(exp, args.config, make_tokenizer(exp.data), workers, args.seconds or 20.0, args.host)


def _cmd_serve(args: argparse.Namespace) -> None:
  from llada_jax import bench_serve
  from llada_jax.errors import UserError
  if not args.checkpoint:
    raise UserError("bench serve loads a model: pass --checkpoint (e.g. runs/tiny)")
  levels = _counts(args.concurrency, "--concurrency", least=1, example="1,4,8,16")
  if min(args.requests, args.max_tokens, args.max_batch) < 1:
    raise UserError("--requests, --max-tokens and --max-batch must be ≥ 1")
  bench_serve.bench_serve(args.checkpoint, levels, args.requests, args.seconds or 120.0, args.max_tokens,
                          args.max_batch)


def _counts(text: str, flag: str, least: int, example: str) -> list[int]:
  """A comma-separated list of whole numbers ≥ `least`, or one line saying what the flag takes."""
  from llada_jax.errors import UserError
  try:
    counts = [int(part) for part in text.split(",") if part.strip()]
  except ValueError:
    counts = []
  if not counts or min(counts) < least:
    raise UserError(f"{flag} {text}: comma-separated counts ≥ {least}, e.g. {example}")
  return counts
