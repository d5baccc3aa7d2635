"""`llada-jax serve`: an OpenAI-compatible HTTP server batching requests at block boundaries."""

import argparse
import math

from llada_jax.cli import common
from llada_jax.errors import UserError


def add_parsers(commands) -> None:
  p = commands.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API",
                          description="An OpenAI-compatible server (POST /v1/completions, /v1/chat/completions; GET "
                          "/v1/models, /health, /metrics) on uvicorn. Requests are batched at block boundaries: a "
                          "request joins the running batch at the next block and a finished one frees its row at "
                          "once; rows are padded to bucketed batch sizes so few programs compile (warmed at start). "
                          "The sampling flags set the defaults a request's fields override (max_tokens, "
                          "temperature, stop, seed, n, stream; steps, block_length, decoding, threshold, factor, "
                          "cache, cfg_scale, remasking). Binds 127.0.0.1 unless --host says otherwise; SIGTERM "
                          "finishes the running requests and refuses new ones. Needs the serve extra: pip install "
                          "-e '.[serve]'.")
  common.add_model_args(p)
  common.add_sampling_args(p, gen_length=128, steps=128, block_length=32)
  p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
  p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
  p.add_argument("--max-batch", type=int, default=8, help="rows (choices) generated at once (default 8)")
  p.add_argument("--max-queue", type=int, default=64, help="requests that may wait; more get HTTP 429 (default 64)")
  p.add_argument("--request-timeout", type=float, default=600.0, help="seconds a request may take (default 600)")
  p.add_argument("--api-key", default=None, help="require Authorization: Bearer KEY on every API request")
  p.add_argument("--model-name", default=None, help="the model id the API reports (default: the checkpoint path)")
  p.add_argument("--mesh", default="", help="shard the parameters over this host's devices, e.g. fsdp=8 or "
                 "fsdp=4,tensor=2 (default: one device)")
  p.add_argument("--no-warmup", action="store_true", help="compile the block programs on first use instead of at "
                 "start-up")
  p.set_defaults(func=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> None:
  try:
    import uvicorn
  except ImportError:
    raise UserError("llada-jax serve needs uvicorn and starlette: pip install -e '.[serve]'") from None
  import socket
  import time
  from llada_jax import engine as engine_lib, server
  from llada_jax.pretrained import load_for_inference
  from llada_jax.sharding import local_mesh
  if args.max_batch < 1 or args.max_queue < 0 or args.request_timeout <= 0:
    raise UserError("--max-batch must be ≥ 1, --max-queue ≥ 0 and --request-timeout > 0")
  start = time.time()
  mesh = local_mesh(args.mesh)
  model, tokenizer = load_for_inference(args.checkpoint, args.tokenizer, args.dtype, mesh=mesh)
  defaults = common.sampling_config(args, model.stored_sampling)
  if defaults.cache == "prefix":
    raise UserError("--cache prefix is not served (its window follows one block shared by the batch); use dual")
  engine = engine_lib.Engine(model.params, model.config, tokenizer, max_batch=args.max_batch,
                             max_queue=args.max_queue, mesh=mesh)
  print(f"loaded {args.checkpoint} in {time.time() - start:.1f}s; defaults: {defaults.describe()}", flush=True)
  if not args.no_warmup:
    seconds = engine.warm_up(defaults)
    print(f"compiled the block program for batch sizes {', '.join(map(str, engine.buckets))} in {seconds:.1f}s",
          flush=True)
  api = server.Api(engine, tokenizer, model_name=args.model_name or args.checkpoint, defaults=defaults,
                   api_key=args.api_key, request_timeout=args.request_timeout,
                   max_sequence_length=model.config.max_sequence_length)
  try:  # bound here, so that --port 0 can say which port it got
    sock = socket.create_server((args.host, args.port))
  except OSError as e:
    raise UserError(f"cannot listen on {args.host}:{args.port} ({e.strerror}); choose another --port") from None
  config = uvicorn.Config(api.app(on_start=engine.start, on_stop=engine.stop), log_level="warning",
                          timeout_graceful_shutdown=math.ceil(args.request_timeout))
  print(f"serving on http://{args.host}:{sock.getsockname()[1]}/v1 (max batch {args.max_batch}, queue "
        f"{args.max_queue})", flush=True)
  uvicorn.Server(config).run(sockets=[sock])
