"""`llada-jax tokenizer` and `llada-jax prepare-data`: the tokenizer and the pre-tokenized shards a run reads."""

import argparse
import os
import time

from llada_jax.cli import common
from llada_jax.errors import UserError


def add_parsers(commands) -> None:
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
  common.add_config_arg(p)
  p.add_argument("--out", required=True, help="output directory (must not exist or be empty unless --overwrite)")
  p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
  p.add_argument("--records-per-shard", type=int, default=16384, help="windows per shard file (default 16384)")
  p.set_defaults(func=_cmd_prepare_data)


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
  data_cfg = config_lib.Experiment.from_config(common.load_config(args)).data
  check_output_dir(args.out, args.overwrite)  # before the progress bar: a refusal is one line
  with tqdm(unit="doc", desc="prepare-data") as bar:
    manifest = data.prepare_data(data_cfg, args.out, records_per_shard=args.records_per_shard, progress=bar.update,
                                 overwrite=args.overwrite)
  print(f"wrote ArrayRecord shards to {args.out}: " + ", ".join(
      f"{split}: {info['windows']:,} windows of {manifest['seq_len']} tokens in {len(info['files'])} file(s)"
      for split, info in manifest["splits"].items()))
  print(f"train on them with --config.data.source=array_record --config.data.paths={args.out}")
