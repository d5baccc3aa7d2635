"""`llada-jax chat`: a multi-turn conversation on the terminal, or a transcript of the lines piped in."""

import argparse
import sys

from llada_jax.cli import common


def add_parsers(commands) -> None:
  p = commands.add_parser("chat", help="multi-turn chat on the terminal (reads stdin)",
                          description="Chat with an instruct model using the chat template and the official "
                          "multi-turn handling (each reply stays in the context, EOS removed). Replies stream block "
                          "by block; a conversation that outgrows the context offers to start over.")
  common.add_model_args(p)
  common.add_sampling_args(p, gen_length=128, steps=128, block_length=32)
  p.add_argument("--system", default=None, help="a system message opening the conversation")
  p.set_defaults(func=_cmd_chat)


def _cmd_chat(args: argparse.Namespace) -> None:
  import jax
  from llada_jax.chat import ChatSession, ContextFull
  from llada_jax.pretrained import load_for_inference
  model, tokenizer = load_for_inference(args.checkpoint, args.tokenizer, args.dtype)
  sampling = common.sampling_config(args, model.stored_sampling)
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
    if not interactive:  # piped lines are not echoed by a terminal: without them the output is replies only
      print(f"you> {text}", flush=True)
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
