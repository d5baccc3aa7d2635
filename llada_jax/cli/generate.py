"""`llada-jax generate`: a continuation of a prompt, streamed block by block, or its denoising step by step."""

import argparse

from llada_jax.cli import common
from llada_jax.errors import UserError


def add_parsers(commands) -> None:
  p = commands.add_parser("generate", help="sample a continuation of a prompt (text in, text out)",
                          description="Generate text with the reverse (unmasking) sampler: the official generate() "
                          "semantics by default, or Fast-dLLM's threshold decoding and block KV caches; each block "
                          "is printed as soon as it is final (one jitted program per block).")
  common.add_model_args(p)
  common.add_sampling_args(p, gen_length=64, steps=64, block_length=None)
  p.add_argument("--prompt", required=True, help="the prompt text")
  p.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template (instruct models)")
  p.add_argument("--add-bos", action=argparse.BooleanOptionalAction, default=None,
                 help="prepend BOS to a plain prompt (default: the tokenizer's add_bos_token setting)")
  p.add_argument("--show-denoising", action="store_true", help="print the canvas after every step (░ = masked); "
                 "without --block-length the whole canvas is one block, so tokens appear in any order")
  p.add_argument("--denoising-gif", default=None, metavar="PATH", help="write the denoising as an animated GIF: "
                 "one frame per step, each token coloured by the step it was committed at (one block likewise)")
  p.set_defaults(func=_cmd_generate)


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
  picture = bool(args.show_denoising or args.denoising_gif)
  # A picture of the diffusion itself: semi-autoregressive blocks (configs/tiny.py's defaults fill 2 tokens at a
  # time) would make it look like left-to-right decoding; one block lets every position be committed at any step.
  sampling = common.sampling_config(args, model.stored_sampling, one_block=picture)
  rng = jax.random.key(args.seed)
  if picture:
    out = model.generate(np.asarray([ids]), sampling=sampling, rng=rng, return_history=True)
    history = np.asarray(out.history)[:, 0, len(ids):]
    mask_id = model.config.mask_token_id
    caption = denoising_caption(sampling, history, mask_id, whole_canvas_chosen=args.block_length is None)
    print(caption)
    if args.show_denoising:
      for step, canvas in enumerate(history):
        print(f"[step {step + 1:>4}/{out.nfe}] {render_canvas(tokenizer, canvas, mask_id)}")
    print(tokenizer.decode(np.asarray(out.tokens)[0, len(ids):], skip_special_tokens=True))
    if args.denoising_gif:
      from llada_jax import plots
      pieces = [tokenizer.decode([token], skip_special_tokens=False) for token in history[-1]]
      gif = plots.denoising_gif(history, pieces, mask_id, args.denoising_gif, caption=caption)
      print(f"denoising animation: {gif}")
    return
  sampling.check(model.config, len(ids))  # a refusal before any output
  for piece in stream_text(tokenizer, model.generate_blocks(np.asarray([ids]), sampling=sampling, rng=rng),
                           len(ids), sampling.block_length):
    print(piece, end="", flush=True)
  print()


def denoising_caption(sampling, history, mask_id: int, whole_canvas_chosen: bool) -> str:
  """What a denoising picture shows: the blocks, the steps and how many tokens each step committed (counted from
  `history`, the generated canvas after each step)."""
  import numpy as np
  committed = np.diff((np.asarray(history) != mask_id).sum(axis=1), prepend=0)
  low, high = int(committed.min()), int(committed.max())
  per_step = f"{low} token{'s' if low != 1 else ''}" if low == high else f"{low} to {high} tokens"
  if sampling.num_blocks > 1:
    blocks = f"in {sampling.num_blocks} blocks of {sampling.block_length}, left to right"
  else:
    blocks = (f"as one block (block length {sampling.block_length} = gen length: any position at any step"
              + (", --block-length to change" if whole_canvas_chosen else "") + ")")
  return f"denoising {sampling.gen_length} tokens {blocks}: {len(history)} steps, {per_step} per step"


def render_canvas(tokenizer, ids, mask_id: int) -> str:
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
