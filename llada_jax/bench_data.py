"""`llada-jax bench data`: does the input pipeline keep up? Tokens per second one host's `data.source=stream`
pipeline delivers at each worker count, next to the tokenizer's own `encode_batch` rate on the same documents and to
what the host's chips consume at 40% MFU."""

import os
import time

from llada_jax import flops
from llada_jax.config import Experiment
from llada_jax.errors import UserError

# Dense bf16 peak FLOP/s by the chip names `plan --topology` takes.
CHIPS = {"v4": "TPU v4", "v5e": "TPU v5e", "v5p": "TPU v5p", "v6e": "TPU v6e", "h100": "NVIDIA H100",
         "h200": "NVIDIA H200", "a100": "NVIDIA A100", "b200": "NVIDIA B200"}


def host_consumption(exp: Experiment, host: str, mfu: float = 0.4) -> tuple[float, str]:
  """(tokens/s, description) one host of `host` = CHIP:N chips trains on at `mfu`, by the analytic FLOPs plan uses."""
  chip, _, count = host.partition(":")
  if chip not in CHIPS or not count.isdigit() or int(count) < 1:
    raise UserError(f"--host {host}: expected CHIP:N with CHIP one of {', '.join(CHIPS)} (e.g. v5e:4, h100:8)")
  peak = flops.PEAK_FLOPS[CHIPS[chip]]
  per_token = flops.train_flops_per_step(exp) / exp.tokens_per_step
  return int(count) * peak * mfu / per_token, f"{count} × {chip} at {mfu:.0%} MFU"


def _documents(data_cfg, limit_bytes: int) -> list[str]:
  """About `limit_bytes` of the first stream's training documents, as this host's pipeline reads them first."""
  from llada_jax.data import streaming
  stream = streaming.streams_of(data_cfg)[0]
  units = streaming.units_of(streaming.split_files(stream, data_cfg)["train"], stream.format, stream.field,
                             data_cfg.shard_bytes)
  texts, size = [], 0
  for unit in units:
    for text in streaming.unit_texts(unit, data_cfg.max_document_bytes):
      texts.append(text)
      size += len(text)
      if size >= limit_bytes:
        return texts
  return texts


def _one_core_rate(tokenizer, texts: list[str]) -> float:
  """Tokens/s of `encode_batch` on one thread: what one pipeline worker has (each tokenizes on one core)."""
  before = os.environ.get("TOKENIZERS_PARALLELISM")
  os.environ["TOKENIZERS_PARALLELISM"] = "false"
  try:
    start = time.perf_counter()
    encoded = tokenizer.encode_batch(texts)
    return sum(len(ids) + 1 for ids in encoded) / (time.perf_counter() - start)
  finally:
    if before is None:
      del os.environ["TOKENIZERS_PARALLELISM"]
    else:
      os.environ["TOKENIZERS_PARALLELISM"] = before


def bench_data(exp: Experiment, config_path: str, tokenizer, workers: list[int], seconds: float, host: str,
               log=print) -> list[dict]:
  """Tokens/s of the pipeline for each worker count (after its first batch, which starts the workers), the
  tokenizer's encode_batch on the same text, and the host's consumption; prints a table and the last line."""
  from llada_jax.data import pipeline
  data_cfg = exp.data
  if data_cfg.source != "stream":
    raise UserError(f"bench data measures data.source=stream (the config reads {data_cfg.source}); set "
                    "--config.data.source=stream with data.paths or data.streams")
  texts = _documents(data_cfg, 8 << 20)
  if not texts:
    raise UserError("the first stream's training files hold no documents to measure")
  tokenizer_rate = _one_core_rate(tokenizer, texts)
  log(f"tokenizer alone: encode_batch on one core, {sum(map(len, texts)) / 1e6:.1f} MB of the first stream's "
      f"documents: {tokenizer_rate:,.0f} tokens/s")
  rows = []
  for count in workers:
    cfg = data_cfg.replace(num_workers=count)
    it = pipeline.make_train_iterator(cfg, tokenizer, seed=exp.seed, objective=exp.train.objective)
    tick = time.perf_counter()
    batch = next(it)
    first = time.perf_counter() - tick
    tokens_per_batch = batch["tokens"].size
    batches, tick = 0, time.perf_counter()
    while time.perf_counter() - tick < seconds:
      next(it)
      batches += 1
    rate = batches * tokens_per_batch / (time.perf_counter() - tick)
    rows.append({"workers": count, "tokens_per_s": rate, "first_batch_s": first, "batches": batches})
    log(f"  {count} worker(s): {rate:,.0f} tokens/s over {batches} batches (first batch after {first:.1f} s)")
    it.close()  # stops its workers before the next count starts its own
  need, what = host_consumption(exp, host)
  log(f"─── llada-jax bench data: {config_path}, batch {data_cfg.global_batch} × {data_cfg.seq_len} " + "─" * 10)
  base = next((r for r in rows if r["workers"] == 1), rows[0])
  against = f"× {base['workers']} worker"
  log(f"{'workers':>8} {'tokens/s':>12} {'× tokenizer':>12} {against:>10} {'× host needs':>13}")
  for r in rows:
    log(f"{r['workers']:>8} {r['tokens_per_s']:>12,.0f} {r['tokens_per_s'] / tokenizer_rate:>11.2f}× "
        f"{r['tokens_per_s'] / base['tokens_per_s']:>9.2f}× {r['tokens_per_s'] / need:>12.2f}×")
  log(f"the tokenizer alone (one core): {tokenizer_rate:,.0f} tokens/s; one host of {what} trains on "
      f"{need:,.0f} tokens/s")
  best = max(rows, key=lambda r: r["tokens_per_s"])
  log(f"data: {best['tokens_per_s']:,.0f} tokens/s per host with {best['workers']} workers "
      f"({best['tokens_per_s'] / tokenizer_rate:.2f}× the tokenizer alone)")
  return rows
