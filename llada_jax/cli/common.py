"""The flags several commands share, each defined once here, and what turns them into objects.

Config files and their `--config.key=value` overrides (train, prepare-data, init, plan, experiment, bench), the
model to read (every command that takes a checkpoint: a missing one is refused here, before any loader runs), the
tokenizer and dtype, the sampling and decoding flags (generate, chat; decoding also eval) and the local mesh.
"""

import argparse
import os

from llada_jax.errors import UserError

# configs/ of this checkout: llada_jax/cli/ is two levels below it.
CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")
CONFIG_HELP = "an ml_collections config file with get_config(), e.g. configs/tiny.py"
CHECKPOINT_HELP = ("a llada-jax checkpoint, a training workdir (its latest checkpoint), an HF LLaDA directory, or a "
                   "model id in the local HF cache (GSAI-ML/LLaDA-8B-Instruct)")
SAMPLING_FLAGS = ("steps", "gen_length", "block_length", "temperature", "cfg_scale", "remasking")


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
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


def add_config_arg(p: argparse.ArgumentParser, help: str = CONFIG_HELP, required: bool = True) -> None:
  """--config; `main` refuses --config.* overrides for a command without it."""
  p.add_argument("--config", required=required, default=None, help=help)


def load_config(args: argparse.Namespace, path: str | None = None):
  """The ml_collections config of --config (or `path`) with the --config.* overrides applied."""
  from llada_jax import config as config_lib
  return config_lib.apply_overrides(config_lib.load_config_file(path or args.config), args.overrides)


def add_checkpoint_arg(p: argparse.ArgumentParser, name: str = "--checkpoint", help: str = CHECKPOINT_HELP,
                       **kwargs) -> None:
  """A flag or positional naming a model to read, recorded so that `check_checkpoints` sees it."""
  action = p.add_argument(name, help=help, **kwargs)
  p.set_defaults(checkpoint_args=(*(p.get_default("checkpoint_args") or ()), action.dest))


def check_checkpoints(args: argparse.Namespace) -> None:
  """Refuses a checkpoint that is not there in one line, before a loader reports it as something else (the
  tokenizer it could not find, a directory that is not a checkpoint) or fails in a subprocess."""
  from llada_jax import paths
  for dest in getattr(args, "checkpoint_args", ()):
    if getattr(args, dest) is not None:
      paths.existing_model(getattr(args, dest))


def add_tokenizer_arg(p: argparse.ArgumentParser) -> None:
  p.add_argument("--tokenizer", default=None, help="tokenizer.json or sentencepiece .model (default: the one saved "
                 "with the checkpoint or in the HF directory)")


def add_dtype_arg(p: argparse.ArgumentParser) -> None:
  p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                 help="cast weights and compute to this dtype (default: as stored)")


def add_model_args(p: argparse.ArgumentParser) -> None:
  """--checkpoint, --tokenizer and --dtype: the model an inference command loads."""
  add_checkpoint_arg(p, required=True)
  add_tokenizer_arg(p)
  add_dtype_arg(p)


def add_sampling_args(p: argparse.ArgumentParser, gen_length: int, steps: int, block_length: int | None) -> None:
  """The sampling flags; those left out take the checkpoint's generation_config.json defaults when it has them,
  else the command's (`gen_length`, `steps`, `block_length`, greedy, no guidance)."""
  stored = "the checkpoint's generation_config.json, else"
  p.set_defaults(sampling_defaults=dict(gen_length=gen_length, steps=steps, block_length=block_length))
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
  add_decoding_args(p)


def add_decoding_args(p: argparse.ArgumentParser) -> None:
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


def sampling_config(args: argparse.Namespace, stored=None, decoding_only: bool = False, one_block: bool = False):
  """The SamplingConfig of generate/chat: the flags given, over the checkpoint's stored defaults (`stored`, from
  generation_config.json) or else the command's own, with the whole canvas as one block if `one_block` and no
  --block-length; or only the decoding flags (eval, whose tasks bring their own lengths and guidance)."""
  import dataclasses
  from llada_jax.sampler import SamplingConfig
  decoding = dict(decoding=args.decoding, threshold=args.threshold, factor=args.factor, cache=args.cache)
  if decoding_only:
    return SamplingConfig(**decoding)
  base = stored or SamplingConfig(**args.sampling_defaults)
  given = {name: getattr(args, name) for name in SAMPLING_FLAGS if getattr(args, name) is not None}
  if "block_length" not in given and (one_block or "gen_length" in given and base.num_blocks == 1):
    given["block_length"] = None  # one block (of the new length)
  return dataclasses.replace(base, **given, logits_eos_inf=args.logits_eos_inf,
                             confidence_eos_eot_inf=args.confidence_eos_eot_inf, **decoding)


def add_mesh_arg(p: argparse.ArgumentParser) -> None:
  p.add_argument("--mesh", default="", help="run on a mesh of the local devices, e.g. data=-1 (every device "
                 "data-parallel) or fsdp=4,tensor=2 for a model too big for one (default: one device)")
