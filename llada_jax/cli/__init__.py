"""`llada-jax <command>`: the one command-line entry point.

Each command lives in its own module here (its parser and its handler, a small function taking parsed arguments);
the flags several commands share are in `common`. A `UserError` anywhere becomes one line on stderr and exit status
2, never a traceback.
"""

import argparse
import os
import sys

from llada_jax.cli import (bench, chat, common, convert, data, experiment, generate, lm_eval, model_files, plan, serve,
                           train)
from llada_jax.cli import eval as eval_command
from llada_jax.cli.common import split_overrides as _split_overrides
from llada_jax.errors import UserError


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="llada-jax", description="LLaDA masked-diffusion language models in JAX: convert, train, sample, "
      "evaluate. Every config key can be overridden as --config.section.key=value or --config.section.key value.")
  parser.add_argument("--debug", action="store_true", help="on an error, print the full traceback and the "
                      "libraries' logs as well as the one-line message (also: LLADA_JAX_DEBUG=1)")
  commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
  for module in (convert, train, generate, chat, serve, eval_command, lm_eval, data, model_files, experiment, plan,
                 bench):
    module.add_parsers(commands)
  return parser


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
    common.check_checkpoints(args)
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
