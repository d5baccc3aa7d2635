"""`llada-jax bench serve`: a load generator against `llada-jax serve` on loopback. For each concurrency level, that
many clients send streaming completions back to back (bounded in requests and seconds); reported: tokens/s, p50/p99
time to the first block and to the whole answer, the engine's batch occupancy, errors, and the process's memory."""

import http.client
import json
import resource
import threading
import time

import numpy as np

from llada_jax.errors import UserError

PROMPTS = ["ROMEO:", "JULIET: O Romeo, Romeo!", "Enter the Prince.", "What light through yonder window breaks?",
           "Good night, good night!", "A plague o' both your houses!", "Ay me!", "Is she not down so late?"]


def one_request(port: int, body: dict) -> dict:
  """One streaming completion: seconds to the first text, to the end, completion tokens; or its error."""
  start = time.perf_counter()
  connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
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
  except OSError as e:
    return {"error": str(e)}
  finally:
    connection.close()


def _rss_mb() -> float:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * resource.getpagesize() / 1e6


def load(port: int, engine, concurrency: int, requests: int, seconds: float, body: dict) -> dict:
  """`concurrency` clients, each sending requests back to back until `requests` are sent or `seconds` pass."""
  results, lock = [], threading.Lock()
  sent = iter(range(requests))
  deadline = time.time() + seconds
  before = dict(engine.stats)
  rss_start = _rss_mb()

  def client(worker: int):
    for i in sent:
      if time.time() > deadline:
        return
      prompt = PROMPTS[(worker + i) % len(PROMPTS)]
      result = one_request(port, {**body, "prompt": prompt, "seed": i})
      with lock:
        results.append(result)

  start = time.perf_counter()
  threads = [threading.Thread(target=client, args=(w,)) for w in range(concurrency)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  wall = time.perf_counter() - start
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
          "rss_start_mb": rss_start, "rss_end_mb": _rss_mb()}


def _direct_first_block(model, tokenizer, sampling, repeats: int = 5) -> float:
  """Median seconds from calling `generate_blocks` to its first block, for the first prompt on its own (compiled
  first): what the server's time to first block is compared with."""
  from llada_jax import engine as engine_lib, sampler
  ids = tokenizer.encode(PROMPTS[0], add_bos=tokenizer.add_bos_token)
  prompt, mask = sampler.left_pad([ids], tokenizer.eos_id, engine_lib.prompt_width(len(ids)))
  times = []
  for _ in range(repeats + 1):
    start = time.perf_counter()
    update = next(iter(model.generate_blocks(prompt, mask, sampling=sampling)))
    np.asarray(update.tokens)
    times.append(time.perf_counter() - start)
  return float(np.median(times[1:]))


def bench_serve(checkpoint: str, levels: list[int], requests: int, seconds: float, max_tokens: int, max_batch: int,
                log=print) -> list[dict]:
  """Serves `checkpoint` (its stored sampling defaults) on loopback and loads it at each concurrency; prints a
  table and the last line."""
  from llada_jax import engine as engine_lib
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
  direct = _direct_first_block(model, tokenizer, sampling)
  log(f"a direct generate_blocks call, the same request alone: first block after {direct:.3f}s")
  from llada_jax import server
  api = server.Api(engine, tokenizer, model_name="bench", defaults=defaults, api_key=None, request_timeout=600,
                   max_sequence_length=model.config.max_sequence_length)
  port, stop = server.serve_in_background(api, engine)
  rows = []
  try:
    one_request(port, {**body, "prompt": PROMPTS[0]})  # the first request through the HTTP stack
    for level in levels:
      rows.append(load(port, engine, level, requests, seconds, body))
      r = rows[-1]
      log(f"  {level:>3} concurrent: {r['tokens_per_s']:8.1f} tokens/s over {r['requests']} requests, first block "
          f"p50 {r['first_p50']:.2f}s p99 {r['first_p99']:.2f}s, errors {r['errors']}")
  finally:
    stop()
  log(f"─── llada-jax bench serve: {checkpoint}, max_tokens {max_tokens}, max batch {max_batch} " + "─" * 8)
  log(f"{'clients':>8} {'requests':>9} {'tokens/s':>9} {'× 1 client':>10} {'first p50':>10} {'first p99':>10} "
      f"{'total p50':>10} {'total p99':>10} {'occupancy':>10} {'errors':>7} {'RSS MB':>13}")
  base = next((r for r in rows if r["concurrency"] == 1), rows[0])  # the "× 1 client" column's reference
  for r in rows:
    log(f"{r['concurrency']:>8} {r['requests']:>9} {r['tokens_per_s']:>9.1f} "
        f"{r['tokens_per_s'] / base['tokens_per_s']:>9.2f}× {r['first_p50']:>9.2f}s {r['first_p99']:>9.2f}s "
        f"{r['total_p50']:>9.2f}s {r['total_p99']:>9.2f}s {r['occupancy']:>10.0%} {r['errors']:>7} "
        f"{r['rss_start_mb']:>6.0f}→{r['rss_end_mb']:<6.0f}")
  if any(r["errors"] for r in rows):
    log("errors: " + "; ".join(e for r in rows for e in r["error_examples"]))
  top = next((r for r in rows if r["concurrency"] == 8), rows[-1])
  alone = "no one-client level to compare with"
  if base["concurrency"] == 1:
    log(f"time to first block, one client: p50 {base['first_p50']:.3f}s, {base['first_p50'] / direct:.2f}× the "
        "direct call's")
    alone = f"{top['tokens_per_s'] / base['tokens_per_s']:.2f}× one at a time"
  log(f"serve: {top['tokens_per_s']:,.1f} tokens/s at {top['concurrency']} concurrent ({alone}), p99 first block "
      f"{top['first_p99']:.2f} s")
  if not rows:
    raise UserError("no concurrency level ran")
  return rows
