"""`llada-jax serve`'s HTTP side: an OpenAI-compatible API (Starlette on uvicorn) over the batching `engine`.

POST /v1/completions and /v1/chat/completions (the tokenizer's chat template), GET /v1/models, /health and /metrics
(Prometheus text). A completion's prompt may be several (strings or token ids), each queued on its own. Request
fields map onto SamplingConfig: max_tokens or max_completion_tokens (the canvas rounds it up to whole blocks, the
text ends at it; the response's `llada` object says what ran), temperature, stop, seed, n (at most --max-batch),
stream, and the diffusion fields steps, block_length, decoding, threshold, factor, cache, cfg_scale, remasking.
Streaming sends one server-sent event per block as it becomes final, then `data: [DONE]`. Every bad request is a
4xx JSON error in OpenAI's shape; the server stays up.
"""

import asyncio
import contextlib
import json
import math
import time
import uuid
from typing import Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from llada_jax import engine as engine_lib
from llada_jax.errors import UserError

_NUMBERS = {"temperature": (float, 0.0, 10.0), "cfg_scale": (float, 0.0, 100.0), "threshold": (float, 1e-6, 1e6),
            "factor": (float, 1e-6, 1e6), "max_tokens": (int, 1, 1 << 20), "steps": (int, 1, 1 << 20),
            "block_length": (int, 1, 1 << 20), "n": (int, 1, 16), "seed": (int, 0, 2 ** 63 - 1)}
MAX_PROMPTS = 64  # prompts in one completion request (each is queued as a request of its own)
_CHOICES = {"decoding": ("exact", "threshold", "factor"), "cache": ("none", "dual"),
            "remasking": ("low_confidence", "random")}


class BadRequest(Exception):
  def __init__(self, message: str, status: int = 400, param: str | None = None):
    super().__init__(message)
    self.status, self.param = status, param


def _error(message: str, status: int, param: str | None = None) -> JSONResponse:
  kind = {401: "authentication_error", 429: "rate_limit_error", 503: "server_error", 504: "timeout"}.get(
      status, "invalid_request_error")
  return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": status}}, status)


def _field(body: dict, name: str):
  value = body.get(name)
  if value is None:
    return None
  if name in _NUMBERS:
    kind, low, high = _NUMBERS[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
        kind is int and value != int(value)):
      raise BadRequest(f"{name} must be {'an integer' if kind is int else 'a number'}, got {json.dumps(value)}",
                       param=name)
    if not low <= value <= high:
      raise BadRequest(f"{name}={value} is outside [{low}, {high}]", param=name)
    return kind(value)
  if value not in _CHOICES[name]:
    raise BadRequest(f"{name} must be one of {', '.join(_CHOICES[name])}, got {json.dumps(value)}", param=name)
  return value


def _stops(body: dict) -> tuple[str, ...]:
  stop = body.get("stop")
  if stop is None:
    return ()
  stops = [stop] if isinstance(stop, str) else stop
  if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) for s in stops):
    raise BadRequest("stop must be a string or a list of at most 4 strings", param="stop")
  return tuple(stops)


def _is_id(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class _Jobs:
  """The engine requests of one API request, one per prompt, seen as one: choice j of prompt p is index p·n + j,
  usage adds up, and the end comes once every part has ended. `forward` runs on the event loop."""

  def __init__(self, jobs: list[engine_lib.Request], events: asyncio.Queue):
    self.jobs, self.events, self.open = jobs, events, len(jobs)
    self.n, self.created = len(jobs) * jobs[0].n, jobs[0].created

  def cancel(self) -> None:
    """Frees every part's rows (or queue place) at the engine's next step."""
    for job in self.jobs:
      job.cancelled = True

  def forward(self, part: int, event: dict) -> None:
    if "index" in event:
      event = {**event, "index": part * self.jobs[part].n + event["index"]}
    if event.get("done"):
      self.open -= 1
      if self.open:
        return
    self.events.put_nowait(event)


class Api:
  """The routes, bound to one engine and tokenizer."""

  def __init__(self, engine: engine_lib.Engine, tokenizer, *, model_name: str, defaults, api_key: str | None,
               request_timeout: float, max_sequence_length: int):
    self.engine, self.tokenizer, self.model_name, self.defaults = engine, tokenizer, model_name, defaults
    self.api_key, self.request_timeout, self.max_sequence_length = api_key, request_timeout, max_sequence_length
    self.created = int(time.time())
    self.mask_id = defaults.mask_token(engine.config)

  def app(self, on_start=None, on_stop=None) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(_):
      if on_start:
        on_start()
      yield
      if on_stop:
        on_stop()
    routes = [Route("/v1/completions", self.completions, methods=["POST"]),
              Route("/v1/chat/completions", self.chat, methods=["POST"]),
              Route("/v1/models", self.models, methods=["GET"]), Route("/health", self.health, methods=["GET"]),
              Route("/metrics", self.metrics, methods=["GET"])]
    return Starlette(routes=routes, lifespan=lifespan)

  # ---- routes ----

  async def health(self, _: Request):
    return JSONResponse({"status": "ok", "queue": self.engine.queue_depth, "running": self.engine.running_rows})

  async def models(self, request: Request):
    if denied := self._denied(request):
      return denied
    return JSONResponse({"object": "list", "data": [{"id": self.model_name, "object": "model",
                                                     "created": self.created, "owned_by": "llada-jax"}]})

  async def completions(self, request: Request):
    return await self._serve(request, chat=False)

  async def chat(self, request: Request):
    return await self._serve(request, chat=True)

  async def metrics(self, _: Request):
    e, s = self.engine, self.engine.stats
    lines = ["# TYPE llada_queue_depth gauge", f"llada_queue_depth {e.queue_depth}",
             "# TYPE llada_running_rows gauge", f"llada_running_rows {e.running_rows}",
             "# TYPE llada_batch_occupancy gauge",
             f"llada_batch_occupancy {s['rows_stepped'] / s['slots_stepped'] if s['slots_stepped'] else 0:.4f}"]
    for name in ("requests", "finished", "cancelled", "failed", "tokens", "steps"):
      lines += [f"# TYPE llada_{name}_total counter", f"llada_{name}_total {s[name]}"]
    for name, hist in (("time_to_first_block_seconds", e.first_block_seconds),
                       ("request_latency_seconds", e.latency_seconds)):
      lines.append(f"# TYPE llada_{name} histogram")
      total = 0
      for bound, count in zip((*hist.BOUNDS, "+Inf"), hist.counts):
        total += count
        lines.append(f'llada_{name}_bucket{{le="{bound}"}} {total}')
      lines += [f"llada_{name}_sum {hist.sum:.6f}", f"llada_{name}_count {hist.count}"]
    return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

  # ---- one generation request ----

  def _denied(self, request: Request):
    if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
      return _error("a valid API key is needed: Authorization: Bearer KEY", 401)
    return None

  async def _serve(self, request: Request, chat: bool):
    if denied := self._denied(request):
      return denied
    try:
      body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
      return _error("the body is not valid JSON", 400)
    try:
      if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
      if body.get("max_tokens") is None and body.get("max_completion_tokens") is not None:
        body = {**body, "max_tokens": body["max_completion_tokens"]}  # the newer name of the same cap
      if body.get("logprobs") or body.get("top_logprobs"):
        raise BadRequest("logprobs are not served: a diffusion model's tokens are not drawn one after another from "
                         "a next-token distribution; leave logprobs out", param="logprobs")
      prompts = self._prompts(body, chat)
      fields = {name: _field(body, name) for name in (*_NUMBERS, *_CHOICES)}
      n, seed, max_tokens = fields.pop("n") or 1, fields.pop("seed"), fields.pop("max_tokens")
      try:
        sampling = engine_lib.request_sampling(self.defaults, max_tokens, self.max_sequence_length,
                                               max(map(len, prompts)), **fields)
      except UserError as e:
        raise BadRequest(str(e)) from None
      stream = body.get("stream", False)
      if not isinstance(stream, bool):
        raise BadRequest("stream must be true or false", param="stream")
      stops = _stops(body)
    except BadRequest as e:
      return _error(str(e), e.status, e.param)
    loop, events = asyncio.get_running_loop(), asyncio.Queue()
    seed = seed if seed is not None else uuid.uuid4().int % 2 ** 31
    job = _Jobs([engine_lib.Request(prompt, sampling, n=n, seed=seed, stop=stops, max_tokens=max_tokens)
                 for prompt in prompts], events)
    for p, part in enumerate(job.jobs):
      part.emit = lambda event, p=p: loop.call_soon_threadsafe(job.forward, p, event)
    try:
      self.engine.submit(*job.jobs)
    except engine_lib.QueueFull as e:
      return _error(str(e), 429)
    except UserError as e:
      return _error(str(e), 400, "n")
    meta = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", "created": int(time.time()),
            "model": self.model_name}
    ran = {"gen_length": sampling.gen_length, "block_length": sampling.block_length, "steps": sampling.steps,
           "decoding": sampling.decoding, "cache": sampling.cache, "seed": seed}
    prompt_tokens = sum(map(len, prompts))
    if stream:
      options = body.get("stream_options") or {}
      usage = isinstance(options, dict) and options.get("include_usage") is True
      return StreamingResponse(self._events(request, job, events, meta, chat, prompt_tokens if usage else None),
                               media_type="text/event-stream")
    return await self._whole(request, job, events, meta, ran, chat, prompt_tokens)

  def _prompts(self, body: dict, chat: bool) -> list[list[int]]:
    """The request's prompts as token ids: a chat's messages through the chat template, or a completion's `prompt`
    as OpenAI takes it (a string, a list of strings, a list of token ids, or a list of such lists)."""
    if chat:
      return [self._checked(self._chat_ids(body), "messages")]
    prompt = body.get("prompt")
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(_is_id(i) for i in prompt)):
      prompt = [prompt]
    if not isinstance(prompt, list) or not prompt or len(prompt) > MAX_PROMPTS or not all(
        isinstance(p, str) or (isinstance(p, list) and all(_is_id(i) for i in p)) for p in prompt):
      raise BadRequest(f"prompt must be a string, a list of token ids, or a list of 1 to {MAX_PROMPTS} of either",
                       param="prompt")
    return [self._checked(self.tokenizer.encode(p, add_bos=self.tokenizer.add_bos_token) if isinstance(p, str)
                          else list(p), "prompt") for p in prompt]

  def _checked(self, ids: list[int], param: str) -> list[int]:
    if not ids:
      raise BadRequest("the prompt is empty", param=param)
    if self.mask_id in ids:
      raise BadRequest(f"the prompt holds the mask token (id {self.mask_id}); the server fills only the answer",
                       param=param)
    if max(ids) >= self.engine.config.vocab_size:
      raise BadRequest(f"token id {max(ids)} is outside the vocabulary of {self.engine.config.vocab_size}",
                       param=param)
    return ids

  def _chat_ids(self, body: dict) -> list[int]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(
        isinstance(m, dict) and m.get("role") in ("system", "user", "assistant") and isinstance(m.get("content"), str)
        for m in messages):
      raise BadRequest('messages must be a non-empty list of {"role": "system"|"user"|"assistant", "content": '
                       'string}', param="messages")
    try:
      return self.tokenizer.encode_chat(messages, add_generation_prompt=True)
    except UserError as e:
      raise BadRequest(str(e), param="messages") from None


  async def _next(self, request: Request, job, events: asyncio.Queue, deadline: float) -> dict | None:
    """The job's next event, or None when the client has gone; raises TimeoutError past the deadline. Either way
    out cancels the job, which frees its rows at the engine's next step."""
    while True:
      if await request.is_disconnected():
        job.cancel()
        return None
      try:
        return await asyncio.wait_for(events.get(), timeout=min(1.0, max(0.0, deadline - time.time())))
      except asyncio.TimeoutError:
        if time.time() >= deadline:
          job.cancel()
          raise

  async def _whole(self, request: Request, job, events, meta, ran, chat: bool, prompt_tokens: int):
    texts, finishes, tokens, calls = [""] * job.n, [None] * job.n, 0, 0
    deadline = job.created + self.request_timeout
    try:
      while True:
        event = await self._next(request, job, events, deadline)
        if event is None:  # nobody is left to answer
          return _error("the client closed the connection", 499)
        if "error" in event:
          job.cancel()  # the request's other prompts stop too
          return _error(event["error"], 503)
        if event.get("done"):
          break
        if "text" in event:
          texts[event["index"]] += event["text"]
        if "finish_reason" in event:
          finishes[event["index"]] = event["finish_reason"]
          tokens, calls = tokens + event["tokens"], calls + event["calls"]
    except asyncio.TimeoutError:
      return _error(f"the request took longer than --request-timeout {self.request_timeout:g} s", 504)
    except asyncio.CancelledError:  # the client went away
      job.cancel()
      raise
    if chat:
      choices = [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": f}
                 for i, (t, f) in enumerate(zip(texts, finishes))]
    else:
      choices = [{"index": i, "text": t, "finish_reason": f, "logprobs": None}
                 for i, (t, f) in enumerate(zip(texts, finishes))]
    return JSONResponse({**meta, "object": "chat.completion" if chat else "text_completion", "choices": choices,
                         "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": tokens,
                                   "total_tokens": prompt_tokens + tokens, "model_calls": calls}, "llada": ran})

  async def _events(self, request: Request, job, events, meta, chat: bool, prompt_tokens: int | None):
    """Server-sent events: each block's new text per choice, each choice's end, then (with stream_options
    include_usage) a chunk with no choices and the usage, then [DONE]."""
    kind = "chat.completion.chunk" if chat else "text_completion"
    chunk = lambda choice: "data: " + json.dumps({**meta, "object": kind, "choices": [choice]}) + "\n\n"
    deadline, finished, tokens, calls = job.created + self.request_timeout, False, 0, 0
    try:
      if chat:
        for i in range(job.n):
          yield chunk({"index": i, "delta": {"role": "assistant"}, "finish_reason": None})
      while True:
        try:
          event = await self._next(request, job, events, deadline)
        except asyncio.TimeoutError:
          yield "data: " + json.dumps({"error": {"message": "the request took longer than --request-timeout",
                                                 "type": "timeout", "code": 504}}) + "\n\n"
          return
        if event is None:
          return
        if "error" in event:
          yield "data: " + json.dumps({"error": {"message": event["error"], "type": "server_error"}}) + "\n\n"
          return
        if event.get("done"):
          finished = True
          if prompt_tokens is not None:
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": tokens,
                     "total_tokens": prompt_tokens + tokens, "model_calls": calls}
            yield "data: " + json.dumps({**meta, "object": kind, "choices": [], "usage": usage}) + "\n\n"
          yield "data: [DONE]\n\n"
          return
        if "text" in event:
          delta = {"content": event["text"]} if chat else None
          yield chunk({"index": event["index"], **({"delta": delta} if chat else {"text": event["text"]}),
                       "finish_reason": None})
        if "finish_reason" in event:
          tokens, calls = tokens + event["tokens"], calls + event["calls"]
          yield chunk({"index": event["index"], **({"delta": {}} if chat else {"text": ""}),
                       "finish_reason": event["finish_reason"]})
    finally:  # a client that went away mid-stream frees its rows at the engine's next step
      if not finished:
        job.cancel()


def serve_in_background(api: Api, engine) -> tuple[int, Callable[[], None]]:
  """(port, stop): `api` on an ephemeral loopback port in a background thread, for benchmarks and tests."""
  import socket
  import threading
  import uvicorn
  sock = socket.create_server(("127.0.0.1", 0))
  running = uvicorn.Server(uvicorn.Config(api.app(on_start=engine.start, on_stop=engine.stop), log_level="warning"))
  thread = threading.Thread(target=running.run, kwargs={"sockets": [sock]}, daemon=True)
  thread.start()
  while not running.started:
    time.sleep(0.05)

  def stop():
    running.should_exit = True
    thread.join(timeout=60)
  return sock.getsockname()[1], stop
