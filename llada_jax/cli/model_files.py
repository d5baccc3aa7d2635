"""`llada-jax init` and `llada-jax info`: write a randomly initialised model, describe a stored one."""

import argparse

from llada_jax.cli import common


def add_parsers(commands) -> None:
  p = commands.add_parser("init", help="write a randomly initialised model (mitchell init) for a config",
                          description="Create a model from a config with fresh random weights and save it, in "
                          "Hugging Face format or as a llada-jax checkpoint (for tests, benchmarks, conversion).")
  common.add_config_arg(p)
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--format", choices=["hf", "jax"], default="jax", help="checkpoint format (default jax)")
  p.add_argument("--seed", type=int, default=0, help="random seed for the initialisation (default 0)")
  p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
  p.set_defaults(func=_cmd_init)

  p = commands.add_parser("info", help="print the config and size of a checkpoint or HF directory",
                          description="Describe a llada-jax checkpoint or an HF LLaDA directory.")
  common.add_checkpoint_arg(p, "path", help="checkpoint or HF directory")
  p.set_defaults(func=_cmd_info)


def _cmd_init(args: argparse.Namespace) -> None:
  import jax
  from llada_jax import checkpoint, config as config_lib, convert
  from llada_jax import model as model_lib
  import numpy as np
  cfg = common.load_config(args)
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
