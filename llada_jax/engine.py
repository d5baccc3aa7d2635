"""The serving engine: requests batched at block boundaries (continuous batching) on one thread that owns the model.

A request becomes n rows (one per choice), each a canvas `[left-padded prompt, MASK × gen_length]` with its own key
(the request's seed, `fold_in(seed, j)` for choice j) and its own block index. Rows whose sampling options and canvas
layout (prompt width bucket, gen_length) agree form a group; each step of the loop advances one group's rows by one
block in one jitted call (`sampler.fill_blocks`), padded up to a bucketed batch size, so the programs compiled are
bounded by (batch buckets × layouts × option sets). A waiting request joins at the next step, and a finished or
cancelled row frees its slot at once. A row's tokens do not depend on the other rows, so a request gets the same
tokens served alone or among others.

A row finishes when its last block is final, when a final block holds EOS or EoT (the rest would only be more of
them: the text ends there), or when its text contains a stop string. Events (text deltas, the end) go to the
request's `emit` callback, which the HTTP layer turns into server-sent events.
"""

import bisect
import contextlib
import dataclasses
import functools
import logging
import math
import threading
import time
from collections import deque
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from llada_jax import sampler
from llada_jax.errors import UserError

log = logging.getLogger(__name__)
PROMPT_BUCKET = 32  # prompt widths are rounded up to a power of two from here: few canvas layouts


class QueueFull(Exception):
  """More requests wait than the engine takes (HTTP 429)."""


@dataclasses.dataclass
class Request:
  prompt: list[int]
  sampling: sampler.SamplingConfig
  n: int = 1
  seed: int = 0
  stop: tuple[str, ...] = ()
  max_tokens: int | None = None  # the text stops here (sampling.gen_length rounds it up to whole blocks)
  emit: Callable[[dict], None] = lambda event: None  # called from the engine thread
  created: float = dataclasses.field(default_factory=time.time)
  cancelled: bool = False
  first_block_at: float | None = None


@dataclasses.dataclass
class _Row:
  request: Request
  index: int
  canvas: np.ndarray
  attention: np.ndarray
  block: int = 0
  calls: int = 0
  sent: str = ""
  finish: str | None = None


def prompt_width(length: int) -> int:
  """The canvas's prompt width for a prompt of `length` tokens: a power of two from PROMPT_BUCKET."""
  return max(PROMPT_BUCKET, 1 << max(0, length - 1).bit_length())


def batch_buckets(max_batch: int) -> list[int]:
  """The batch sizes programs are compiled for: powers of two up to max_batch, and max_batch itself."""
  return sorted({1 << i for i in range(max_batch.bit_length()) if 1 << i <= max_batch} | {max_batch})


class Engine:
  """Owns the parameters; `submit` from any thread, `start`/`stop` the loop. `max_batch` rows run at once (over
  all groups), `max_queue` requests may wait."""

  def __init__(self, params, config, tokenizer, *, max_batch: int = 8, max_queue: int = 64, mesh=None):
    self.params, self.config, self.tokenizer, self.mesh = params, config, tokenizer, mesh
    self.max_batch, self.max_queue = max_batch, max_queue
    self.buckets = batch_buckets(max_batch)
    self._waiting: deque[Request] = deque()
    self._groups: dict[tuple, list[_Row]] = {}
    self._running = 0  # rows in the groups, kept by the engine thread for readers on others
    self._wake = threading.Condition()
    self._thread: threading.Thread | None = None
    self._stopping = False
    self.stats = {"requests": 0, "finished": 0, "cancelled": 0, "failed": 0, "tokens": 0, "steps": 0, "rows_stepped": 0,
                  "slots_stepped": 0}
    self.first_block_seconds, self.latency_seconds = Histogram(), Histogram()
    self._ends = (tokenizer.eos_id, tokenizer.eot_id)

  # ---- from any thread ----

  def submit(self, *requests: Request) -> None:
    """Queues `requests`, all or none (a full queue raises QueueFull; n over max_batch, UserError)."""
    if any(request.n > self.max_batch for request in requests):
      raise UserError(f"n={max(r.n for r in requests)} is more than the {self.max_batch} rows this server runs at "
                      "once (--max-batch)")
    with self._wake:
      self._drop_cancelled_waiting()
      if len(self._waiting) + len(requests) > self.max_queue:
        raise QueueFull(f"{len(self._waiting)} requests are waiting and {len(requests)} more would exceed "
                        f"--max-queue {self.max_queue}; retry later")
      self._waiting.extend(requests)
      self.stats["requests"] += len(requests)
      self._wake.notify()
    time.sleep(0)  # hands the GIL over: the engine thread starts the block while the caller answers its client

  def start(self) -> None:
    self._thread = threading.Thread(target=self._loop, name="llada-engine", daemon=True)
    self._thread.start()

  def stop(self) -> None:
    with self._wake:
      self._stopping = True
      self._wake.notify()
    if self._thread:
      self._thread.join(timeout=60)

  @property
  def queue_depth(self) -> int:
    return len(self._waiting)

  @property
  def running_rows(self) -> int:
    return self._running

  def warm_up(self, sampling: sampler.SamplingConfig, prompt_length: int = 1) -> float:
    """Compiles the block program of `sampling` at every batch bucket for short prompts; returns the seconds."""
    start = time.time()
    width = prompt_width(prompt_length)
    for size in self.buckets:
      rows = [self._new_row(Request([self.tokenizer.bos_id] * prompt_length, sampling), 0, width)] * size
      self._fill(rows, sampling, width)
    return time.time() - start

  # ---- the engine thread ----

  def _loop(self) -> None:
    while True:
      with self._wake:
        while not self._stopping and not self._waiting and not self._groups:
          self._wake.wait()
        if self._stopping:
          return
      try:
        self._admit()
        for key in list(self._groups):
          self._step(key)
      except Exception as e:  # a bug here must end the running requests with an error, not leave them waiting
        log.exception("the engine loop failed")
        self._fail([row for rows in self._groups.values() for row in rows], e)
        self._groups.clear()
        self._running = 0

  def _drop_cancelled_waiting(self) -> None:
    """Requests whose client left (or whose time ran out) while waiting leave the queue; called holding _wake."""
    if any(request.cancelled for request in self._waiting):
      kept = [request for request in self._waiting if not request.cancelled]
      self.stats["cancelled"] += len(self._waiting) - len(kept)
      self._waiting = deque(kept)

  def _admit(self) -> None:
    with self._wake:
      self._drop_cancelled_waiting()
      while self._waiting and self.running_rows + self._waiting[0].n <= self.max_batch:
        request = self._waiting.popleft()
        width = prompt_width(len(request.prompt))
        key = (width, request.sampling)
        rows = self._groups.setdefault(key, [])
        rows += [self._new_row(request, j, width) for j in range(request.n)]
        self._running += request.n

  def _new_row(self, request: Request, index: int, width: int) -> _Row:
    g = request.sampling.gen_length
    canvas = np.full(width + g, self.config.mask_token_id, np.int32)
    attention = np.ones(width + g, np.int32)
    canvas[:width - len(request.prompt)] = self.tokenizer.eos_id  # left pads, masked as keys
    attention[:width - len(request.prompt)] = 0
    canvas[width - len(request.prompt):width] = request.prompt
    return _Row(request, index, canvas, attention)

  def _step(self, key: tuple) -> None:
    width, sampling = key
    for row in self._groups[key]:
      if row.request.cancelled and row.finish is None:
        row.finish = "cancelled"
        self._maybe_end(row.request)
    rows = [row for row in self._groups[key] if row.finish is None]  # one reading of `cancelled` per row
    if not rows:
      self._forget(key, [])
      return
    size = next(b for b in self.buckets if b >= len(rows))
    try:
      canvas, calls = self._fill(rows + [rows[0]] * (size - len(rows)), sampling, width)
    except Exception as e:  # a failed program ends its requests with the error, not the server
      log.exception("the block program failed")
      self._fail(self._groups[key], e)
      self._forget(key, [])
      return
    self.stats["steps"] += 1
    self.stats["rows_stepped"] += len(rows)
    self.stats["slots_stepped"] += size
    now = time.time()
    for i, row in enumerate(rows):
      row.canvas, row.calls, row.block = canvas[i], row.calls + int(calls[i]), row.block + 1
      if row.request.first_block_at is None:
        row.request.first_block_at = now
        self.first_block_seconds.observe(now - row.request.created)
      self._after_block(row, sampling, width)
    self._forget(key, [row for row in rows if row.finish is None])

  def _fail(self, rows: list[_Row], error: Exception) -> None:
    """Ends the requests of `rows` with `error` (each once)."""
    message = f"generation failed: {(str(error).splitlines() or [type(error).__name__])[0][:300]}"
    for request in {id(row.request): row.request for row in rows}.values():
      request.cancelled = True
      self.stats["failed"] += 1
      self._send(request, {"error": message})

  @staticmethod
  def _send(request: Request, event: dict) -> None:
    """`request.emit(event)`; a callback that fails (its event loop closed) cancels its own request only."""
    try:
      request.emit(event)
    except Exception:
      log.exception("a request's event callback failed; the request is cancelled")
      request.cancelled = True

  def _forget(self, key: tuple, keep: list[_Row]) -> None:
    """The group keeps only `keep`: finished and cancelled rows free their slots."""
    self._running -= len(self._groups[key]) - len(keep)
    if keep:
      self._groups[key] = keep
    else:
      del self._groups[key]

  def _fill(self, rows: list[_Row], sampling, width: int):
    # The rows' keys (low 32 bits of the seed, as jax.random.key takes a seed) are made inside the program: on the
    # host a step is numpy only, one dispatch, which keeps a lone request's first block close to a direct call's.
    seeds = np.asarray([row.request.seed & 0xFFFFFFFF for row in rows], np.uint32)
    with jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext():
      x, calls = _advance(self.params, np.stack([row.canvas for row in rows]),
                          np.stack([row.attention for row in rows]), seeds,
                          np.asarray([row.index for row in rows], np.int32),
                          np.asarray([row.block for row in rows], np.int32), config=self.config, sampling=sampling,
                          width=width)
    return np.asarray(x), np.asarray(calls)

  def _after_block(self, row: _Row, sampling, width: int) -> None:
    """Sends the row's new text, and ends it at EOS/EoT, a stop string or its last block. Text that could be the
    start of a stop string waits for the next block, so no part of a stop string is ever sent."""
    request = row.request
    final = row.canvas[width:width + row.block * sampling.block_length][:request.max_tokens]
    ends = np.flatnonzero(np.isin(final, self._ends))
    ids = final[:ends[0]] if len(ends) else final
    text = self.tokenizer.decode(ids, skip_special_tokens=True)
    finish = "stop" if len(ends) else ("length" if row.block == sampling.num_blocks else None)
    tokens = len(ids)
    cut = min((text.find(s) for s in request.stop if s and s in text), default=-1)
    if cut >= 0:
      text, finish, tokens = text[:cut], "stop", self._tokens_covering(ids, cut)
    elif finish is None:
      text = text.rstrip("\ufffd")  # a character whose bytes straddle the block boundary waits for the rest
      text = text[:len(text) - _stop_prefix(text, request.stop)]
    if text.startswith(row.sent) and len(text) > len(row.sent):
      self._send(request, {"index": row.index, "text": text[len(row.sent):]})
      row.sent = text
    if finish:
      row.finish = finish
      self._send(request, {"index": row.index, "finish_reason": finish, "tokens": tokens, "calls": row.calls})
      self.stats["tokens"] += tokens
      self._maybe_end(request)

  def _tokens_covering(self, ids: np.ndarray, chars: int) -> int:
    """The fewest leading ids whose text holds `chars` characters: a stopped row's usage counts up to the stop."""
    low, high = 0, len(ids)
    while low < high:
      middle = (low + high) // 2
      if len(self.tokenizer.decode(ids[:middle], skip_special_tokens=True).rstrip("\ufffd")) >= chars:
        high = middle
      else:
        low = middle + 1
    return low

  def _maybe_end(self, request: Request) -> None:
    rows = [r for rows in self._groups.values() for r in rows if r.request is request]
    if all(r.finish is not None for r in rows):
      self.stats["cancelled" if request.cancelled else "finished"] += 1
      self.latency_seconds.observe(time.time() - request.created)
      self._send(request, {"done": True})


@functools.partial(jax.jit, static_argnames=("config", "sampling", "width"))
def _advance(params, canvas, attention, seeds, choices, blocks, *, config, sampling, width):
  """`sampler.fill_blocks` for rows given as seeds and choice indices: choice j of a request draws from
  `sampler.row_key(jax.random.key(seed), j)`, as row j of a batch sampled from that one key does."""
  keys = jax.vmap(lambda seed, choice: sampler.row_key(jax.random.key(seed), choice))(seeds, choices)
  prompt_index = jnp.broadcast_to(jnp.arange(canvas.shape[1]) < width, canvas.shape)
  return sampler.fill_blocks(params, canvas, attention, prompt_index, keys, blocks, config=config, sampling=sampling,
                             prompt_length=width)


def _stop_prefix(text: str, stops: tuple[str, ...]) -> int:
  """How many characters at the end of `text` could begin one of `stops` (held back until the next block)."""
  return max((k for s in stops for k in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:k])), default=0)


class Histogram:
  """Counts of observed seconds per upper bound, as Prometheus histograms report them."""
  BOUNDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

  def __init__(self):
    self.counts = [0] * (len(self.BOUNDS) + 1)
    self.sum, self.count = 0.0, 0

  def observe(self, seconds: float) -> None:
    self.counts[bisect.bisect_left(self.BOUNDS, seconds)] += 1
    self.sum += seconds
    self.count += 1


def request_sampling(base: sampler.SamplingConfig, max_tokens: int | None, max_sequence_length: int,
                     prompt_length: int, **fields) -> sampler.SamplingConfig:
  """The SamplingConfig of one request: the server's defaults with the request's fields; `max_tokens` becomes
  gen_length rounded up to a whole number of blocks (the text still ends at max_tokens: `Request.max_tokens`), and
  `steps` (at most gen_length) keeps the defaults' steps per token unless given, rounded up to a multiple of the
  blocks. Raises UserError (HTTP 400) with what to change."""
  fields = {k: v for k, v in fields.items() if v is not None}
  gen = int(max_tokens) if max_tokens is not None else base.gen_length
  if gen < 1:
    raise UserError(f"max_tokens={gen} must be at least 1")
  block = int(fields.pop("block_length", None) or min(base.block_length, gen))
  gen = -(-gen // block) * block
  blocks = gen // block
  if "steps" in fields:
    steps = int(fields.pop("steps"))
    if steps > gen:  # a block is one uninterruptible call: a huge count would hold every other request back
      raise UserError(f"steps={steps} is more than the {gen} tokens asked for (max_tokens rounded to blocks of "
                      f"{block}); each step commits at least one token, so give at most {gen}")
  else:
    steps = min(gen, math.ceil(gen * base.steps / base.gen_length))
  steps = max(blocks, -(-steps // blocks) * blocks)
  if prompt_width(prompt_length) + gen > max_sequence_length:
    raise UserError(f"the prompt ({prompt_length} tokens, placed in a canvas of {prompt_width(prompt_length)}) and "
                    f"max_tokens ({gen} after rounding to blocks of {block}) exceed the model's context of "
                    f"{max_sequence_length} tokens; shorten the prompt or lower max_tokens")
  return dataclasses.replace(base, gen_length=gen, block_length=block, steps=steps, **fields)
