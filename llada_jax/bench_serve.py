"""`llada-jax bench serve`: a load generator against `llada-jax serve` on loopback. For each concurrency level, that
many clients send streaming completions back to back (bounded in requests and seconds); reported: tokens/s, p50/p99
time to the first block and to the whole answer, the engine's batch occupancy, errors, and the process's memory (and
its slope: flat or growing). Before the levels, one client's time to the first block is compared with a direct
`generate_blocks` call's, alternately."""

import http.client
import json
import resource
import threading
import time

import numpy as np

from llada_jax.errors import UserError

PROMPTS = ["ROMEO:", "JULIET: O Romeo, Romeo!", "Enter the Prince.", "What light through yonder window breaks?",
           "Good night, good night!", "A plague o' both your houses!", "Ay me!", "Is she not down so late?"]


def one_request(connection: http.client.HTTPConnection, body: dict) -> dict:
  """One streaming completion on a kept-alive connection (as the openai client pools them): seconds to the first
  text, to the end, completion tokens; or its error (the connection is then closed, and reopened by its next use)."""
  start = time.perf_counter()
  try:
    connection.request("POST", "/v1/completions", json.dumps({**body, "stream": True,
                                                               "stream_options": {"include_usage": True}}),
                       {"content-type": "application/json"})
    response = connection.getresponse()
    if response.status != 200:
      return {"error": f"HTTP {response.status}: {response.read()[:200]!r}"}
    first, tokens = None, 0
    for line in response:
      if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
        continue
      chunk = json.loads(line[6:])
      if "error" in chunk:
        return {"error": chunk["error"]["message"]}
      if first is None and any(c.get("text") for c in chunk.get("choices", [])):
        first = time.perf_counter() - start
      if chunk.get("usage"):
        tokens = chunk["usage"]["completion_tokens"]
    total = time.perf_counter() - start
    return {"first": total if first is None else first, "total": total, "tokens": tokens}
  except (OSError, http.client.HTTPException) as e:
    connection.close()
    return {"error": f"{type(e).__name__}: {e}"}


def _connect(port: int) -> http.client.HTTPConnection:
  return http.client.HTTPConnection("127.0.0.1", port, timeout=600)


def _rss_mb() -> float:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * resource.getpagesize() / 1e6


def _slope_per_minute(samples: list[tuple[float, float]]) -> float | None:
  """The least-squares slope of (seconds, MB) samples, in MB per minute; None over less than 30 seconds, where a
  page or two of allocation would read as a trend."""
  if len(samples) < 3 or samples[-1][0] - samples[0][0] < 30:
    return None
  t, mb = np.asarray(samples).T
  return float(np.polyfit(t, mb, 1)[0] * 60)


def load(port: int, engine, concurrency: int, requests: int, seconds: float, body: dict, log=print) -> dict:
  """`concurrency` clients, each sending requests back to back on its own connection until `requests` are sent
  or `seconds` pass. The process's resident memory is sampled every second: its slope over the second half of the
  level says whether memory stays flat under load. A level over a minute logs its progress each minute."""
  results, lock = [], threading.Lock()
  sent = iter(range(requests))
  deadline = time.time() + seconds
  before = dict(engine.stats)
  memory, done = [], threading.Event()

  def client(worker: int):
    connection = _connect(port)
    for i in sent:
      if time.time() > deadline:
        break
      prompt = PROMPTS[(worker + i) % len(PROMPTS)]
      result = one_request(connection, {**body, "prompt": prompt, "seed": i})
      with lock:
        results.append(result)
    connection.close()

  def watch():
    while True:
      memory.append((time.perf_counter() - start, _rss_mb()))
      if len(memory) % 60 == 0:
        with lock:
          failed = sum("error" in r for r in results)
          log(f"  {concurrency:>3} concurrent, {len(memory) // 60} min: {len(results)} requests, {failed} errors, "
              f"resident memory {memory[-1][1]:.0f} MB")
      if done.wait(1.0):
        return

  start = time.perf_counter()
  threads = [threading.Thread(target=client, args=(w,)) for w in range(concurrency)]
  watcher = threading.Thread(target=watch)
  for t in [watcher, *threads]:
    t.start()
  for t in threads:
    t.join()
  wall = time.perf_counter() - start
  done.set()
  watcher.join()
  memory.append((wall, _rss_mb()))
  ok = [r for r in results if "error" not in r]
  slots = engine.stats["slots_stepped"] - before["slots_stepped"]
  firsts = [r["first"] for r in ok] or [float("nan")]
  totals = [r["total"] for r in ok] or [float("nan")]
  return {"concurrency": concurrency, "requests": len(results), "errors": len(results) - len(ok),
          "error_examples": [r["error"] for r in results if "error" in r][:3],
          "tokens_per_s": sum(r["tokens"] for r in ok) / wall, "seconds": wall,
          "first_p50": float(np.percentile(firsts, 50)), "first_p99": float(np.percentile(firsts, 99)),
          "total_p50": float(np.percentile(totals, 50)), "total_p99": float(np.percentile(totals, 99)),
          "occupancy": (engine.stats["rows_stepped"] - before["rows_stepped"]) / slots if slots else 0.0,
          "rss_start_mb": memory[0][1], "rss_end_mb": memory[-1][1], "rss_peak_mb": max(mb for _, mb in memory),
          "rss_late_slope": _slope_per_minute([m for m in memory if m[0] >= wall / 2])}


def first_block_pairs(port: int, model, tokenizer, sampling, max_tokens: int, pairs: int = 20) -> dict:
  """Median seconds to the first block for one client through the server and for a direct `generate_blocks` call
  on the same canvas, measured alternately (`pairs` of each, after one of each to compile), so that both see the
  machine in the same state."""
  from llada_jax import engine as engine_lib, sampler
  ids = tokenizer.encode(PROMPTS[0], add_bos=tokenizer.add_bos_token)
  prompt, mask = sampler.left_pad([ids], tokenizer.eos_id, engine_lib.prompt_width(len(ids)))

  def direct() -> float:
    start = time.perf_counter()
    update = next(iter(model.generate_blocks(prompt, mask, sampling=sampling)))
    np.asarray(update.tokens)
    return time.perf_counter() - start

  connection, served, direct_times, errors = _connect(port), [], [], []
  for i in range(pairs + 1):
    direct_times.append(direct())
    result = one_request(connection, {"max_tokens": max_tokens, "prompt": PROMPTS[0], "seed": i})
    if "error" in result:
      errors.append(result["error"])
    else:
      served.append(result["first"])
  connection.close()
  if errors or len(served) < 2:
    raise UserError(f"the one-client requests failed: {'; '.join(errors[:3])}")
  return {"served": float(np.median(served[1:])), "direct": float(np.median(direct_times[1:]))}


def bench_serve(checkpoint: str, levels: list[int], requests: int, seconds: float, max_tokens: int, max_batch: int,
                log=print) -> list[dict]:
  """Serves `checkpoint` (its stored sampling defaults) on loopback, compares one client's time to the first block
  with a direct call's, and loads the server at each concurrency; prints a table and the last line."""
  from llada_jax import engine as engine_lib, server
  from llada_jax.pretrained import load_for_inference
  model, tokenizer = load_for_inference(checkpoint)
  defaults = model.sampling
  engine = engine_lib.Engine(model.params, model.config, tokenizer, max_batch=max_batch,
                             max_queue=max(levels) + max_batch)
  body = {"max_tokens": max_tokens}
  sampling = engine_lib.request_sampling(defaults, max_tokens, model.config.max_sequence_length, 16)
  warm = engine.warm_up(sampling, prompt_length=16)
  log(f"compiled the block program for batch sizes {', '.join(map(str, engine.buckets))} in {warm:.1f}s "
      f"({sampling.describe()})")
  api = server.Api(engine, tokenizer, model_name="bench", defaults=defaults, api_key=None, request_timeout=600,
                   max_sequence_length=model.config.max_sequence_length)
  port, stop = server.serve_in_background(api, engine)
  rows = []
  try:
    first = first_block_pairs(port, model, tokenizer, sampling, max_tokens)
    log(f"time to first block, one client: {first['served'] * 1e3:.2f} ms served, {first['direct'] * 1e3:.2f} ms "
        f"by a direct generate_blocks call ({first['served'] / first['direct']:.2f}×, medians of 20 alternating)")
    for level in levels:
      rows.append(load(port, engine, level, requests, seconds, body, log))
      r = rows[-1]
      log(f"  {level:>3} concurrent: {r['tokens_per_s']:8.1f} tokens/s over {r['requests']} requests, first block "
          f"p50 {r['first_p50']:.2f}s p99 {r['first_p99']:.2f}s, errors {r['errors']}")
  finally:
    stop()
  log(f"─── llada-jax bench serve: {checkpoint}, max_tokens {max_tokens}, max batch {max_batch} " + "─" * 8)
  log(f"{'clients':>8} {'requests':>9} {'tokens/s':>9} {'× 1 client':>10} {'first p50':>10} {'first p99':>10} "
      f"{'total p50':>10} {'total p99':>10} {'occupancy':>10} {'errors':>7} {'RSS MB':>13} {'MB/min':>7}")
  base = next((r for r in rows if r["concurrency"] == 1), rows[0])  # the "× 1 client" column's reference
  for r in rows:
    log(f"{r['concurrency']:>8} {r['requests']:>9} {r['tokens_per_s']:>9.1f} "
        f"{r['tokens_per_s'] / base['tokens_per_s']:>9.2f}× {r['first_p50']:>9.2f}s {r['first_p99']:>9.2f}s "
        f"{r['total_p50']:>9.2f}s {r['total_p99']:>9.2f}s {r['occupancy']:>10.0%} {r['errors']:>7} "
        f"{r['rss_start_mb']:>6.0f}→{r['rss_end_mb']:<6.0f} "
        f"{'—' if r['rss_late_slope'] is None else format(r['rss_late_slope'], '+.1f'):>7}")
  log("MB/min: the slope of resident memory over each level's second half (— where that is under 30 s)")
  if any(r["errors"] for r in rows):
    log("errors: " + "; ".join(e for r in rows for e in r["error_examples"]))
  top = next((r for r in rows if r["concurrency"] == 8), rows[-1])
  alone = (f"{top['tokens_per_s'] / base['tokens_per_s']:.2f}× one at a time" if base["concurrency"] == 1 else
           "no one-client level to compare with")
  log(f"serve: {top['tokens_per_s']:,.1f} tokens/s at {top['concurrency']} concurrent ({alone}), p99 first block "
      f"{top['first_p99']:.2f} s")
  return rows
