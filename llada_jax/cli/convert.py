"""`llada-jax convert`: weights between Hugging Face/PyTorch and llada-jax, both ways."""

import argparse
import time

from llada_jax.cli import common
from llada_jax.errors import UserError


def add_parsers(commands) -> None:
  p = commands.add_parser("convert", help="convert weights between Hugging Face/PyTorch and llada-jax",
                          description="Convert weights. hf-to-jax reads config.json plus safetensors (sharded with "
                          "an index, or single) or pytorch_model*.bin and writes an Orbax checkpoint, keeping the "
                          "tokenizer files, generation_config.json and remote code; jax-to-hf writes config.json, "
                          "generation_config.json (with the sampling defaults), sharded safetensors, our remote code "
                          "and the tokenizer: transformers.AutoModel.from_pretrained(dst, trust_remote_code=True), "
                          "AutoTokenizer and the official LLaDA code load it. Tensors stream one at a time.")
  p.add_argument("direction", choices=["hf-to-jax", "jax-to-hf"], help="which way to convert")
  common.add_checkpoint_arg(p, "src", help="the source directory (HF directory for hf-to-jax, llada-jax checkpoint "
                            "otherwise)")
  p.add_argument("dst", help="the output directory (must not exist or be empty unless --overwrite)")
  p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                 help="cast the weights to this dtype (default: keep the source dtype)")
  p.add_argument("--max-shard-size", default="5GB",
                 help="jax-to-hf: largest safetensors shard, e.g. 5GB, 500MB, 2GiB (default 5GB)")
  p.add_argument("--tokenizer", default=None, help="jax-to-hf: the tokenizer to include (default: the one saved "
                 "with the checkpoint)")
  p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
  p.set_defaults(func=_cmd_convert)


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
