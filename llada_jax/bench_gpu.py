"""`llada-jax bench gpu`: the acceptance run for a machine with NVIDIA GPUs. Does the fused attention agree with the
XLA path, how fast do training, sampling and likelihoods run, and does the train step's memory match its plan?

Each part runs in a process of its own under a time box (a part that overruns is killed and reported as such, the
others still run) and starts with a fresh allocator, so its peak memory is its own. The parent never starts a JAX
backend: it would take its share of every GPU's memory. On a machine without a GPU the same code runs at tiny
shapes (a dry run, what the tests check): the numbers are then not a GPU's, and the report says so.
"""

import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

PARTS = ("attention", "train", "sample", "likelihood", "serve")
# Seconds per part within the default 8-minute budget: compiling the 1B train step at a few batches dominates.
BUDGET_SHARES = {"attention": 50, "train": 160, "sample": 120, "likelihood": 70, "serve": 80}
# Relative L2 error allowed between cuDNN and the XLA path in bf16 (an element carries 2^-8 relative error;
# independent roundings over a reduction stay well inside this).
BF16_TOLERANCE = 2e-2
GIB = 1024 ** 3


def run(out_dir: str, config_path: str, budget_s: float = 480.0, parts: tuple[str, ...] = PARTS, log=print) -> dict:
  """Runs each part in its own process, writes OUT/report.json and OUT/report.md, and returns the report."""
  os.makedirs(out_dir, exist_ok=True)
  scale = budget_s / sum(BUDGET_SHARES.values())
  from llada_jax import plan
  # The allocator's share the SLURM launcher gives training (and the plan's capacity assumes), unless set already.
  env = {**os.environ, "XLA_PYTHON_CLIENT_MEM_FRACTION": os.environ.get(
      "XLA_PYTHON_CLIENT_MEM_FRACTION", f"{plan.LAUNCHER_GPU_MEMORY_FRACTION:.2f}")}
  report = {"date": time.strftime("%Y-%m-%d %H:%M"), "host": platform.node(), "parts": {},
            "settings": {name: env.get(name, "") for name in ("XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_FLAGS")}}
  for number, part in enumerate(parts, 1):
    limit = BUDGET_SHARES[part] * scale
    log(f"[{number}/{len(parts)}] {part}: {_TITLES[part]} (time box {limit:.0f} s)")
    start = time.time()
    spec = json.dumps({"part": part, "config_path": config_path, "deadline": start + limit - 5})
    # Progress lines from the child go straight to this terminal (stderr); the result comes back on stdout.
    child = subprocess.Popen([sys.executable, "-m", "llada_jax.bench_gpu", spec], stdout=subprocess.PIPE, text=True,
                             env=env)
    try:
      out, _ = child.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
      child.kill()
      child.communicate()
      result = {"status": f"timed out after {limit:.0f} s"}
    else:
      lines = out.strip().splitlines()
      result = json.loads(lines[-1]) if child.returncode == 0 and lines else {
          "status": f"failed (exit {child.returncode}; its error is above)"}
    result["seconds"] = round(time.time() - start, 1)
    report["parts"][part] = result
    log(f"    → {_summary(part, result)}")
  first = next((r for r in report["parts"].values() if "device" in r), {})
  report["device"], report["dry_run"] = first.get("device"), first.get("dry_run")
  with open(os.path.join(out_dir, "report.json"), "w", encoding="utf-8") as f:
    json.dump(report, f, indent=1)
  with open(os.path.join(out_dir, "report.md"), "w", encoding="utf-8") as f:
    f.write(markdown(report))
  log(f"report: {os.path.join(out_dir, 'report.md')} and report.json")
  log(last_line(report))
  return report


_TITLES = {"attention": "cuDNN against the XLA path, outputs and gradients in bf16",
           "train": "train step tokens/s, MFU and peak memory against the compiled plan",
           "sample": "an 8B-shaped model sampling, exact against threshold + dual cache",
           "likelihood": "Monte-Carlo likelihood, pairs per call 1 against 8",
           "serve": "an 8B-shaped model behind llada-jax serve, 1 against 8 concurrent clients"}


def _ok(result: dict) -> bool:
  return result.get("status") == "ok"


def _summary(part: str, r: dict) -> str:
  if not _ok(r):
    return r["status"]
  if part == "attention":
    kernels = [c for c in r["cases"] if "xla_bf16" not in c]
    worst = max(max(c["output"], c["gradients"]) for c in kernels)
    text = f"{'agree' if r['agree'] else 'DIFFER'}: kernels within {worst:.2e} of the XLA path"
    model = next((c for c in r["cases"] if "xla_bf16" in c), None)
    if model:
      text += (f"; whole model's gradients {model['gradients']:.2e} from fp32 (XLA path in bf16: "
               f"{model['xla_bf16']['gradients']:.2e})")
    return text
  if part == "train":
    return (f"{r['tokens_per_s']:,.0f} tokens/s, MFU {r['mfu']:.1%} at {r['per_device_batch']} × {r['seq_len']} per "
            f"device; peak {_gib(r['peak_bytes'])} against the plan's {_gib(r['plan_bytes'])}")
  if part == "sample":
    return "; ".join(f"batch {b['batch']}: {b['speed_up']:.2f}× exact" for b in r["batches"])
  if part == "likelihood":
    return f"{r['speed_up']:.2f}× pairs/s at {r['pairs_per_call'][-1]} pairs per call"
  one, most = r["levels"][0], r["levels"][-1]
  return (f"{most['tokens_per_s']:,.1f} tokens/s at {most['concurrency']} concurrent, {r['speed_up']:.2f}× one "
          f"client's; {sum(level['errors'] for level in r['levels'])} errors; first block {one['first_p50']:.3f} s")


def _gib(n) -> str:
  return "n/a" if n is None else f"{n / GIB:.2f} GiB"


def last_line(report: dict) -> str:
  """One line a script can parse: `gpu: …` with the verdict of every part."""
  parts = report["parts"]
  words = []
  if "attention" in parts:
    a = parts["attention"]
    words.append(f"attention {'agrees' if a.get('agree') else 'differs' if _ok(a) else a['status']}")
  if "train" in parts:
    t = parts["train"]
    words.append(f"train {t['tokens_per_s']:,.0f} tokens/s (MFU {t['mfu']:.1%})" if _ok(t) else f"train {t['status']}")
  if "sample" in parts:
    s = parts["sample"]
    words.append(f"sample {s['batches'][-1]['speed_up']:.2f}× exact at batch {s['batches'][-1]['batch']}"
                 if _ok(s) else f"sample {s['status']}")
  if "likelihood" in parts:
    ll = parts["likelihood"]
    words.append(f"likelihood {ll['speed_up']:.2f}× at {ll['pairs_per_call'][-1]} pairs per call" if _ok(ll)
                 else f"likelihood {ll['status']}")
  if "serve" in parts:
    sv = parts["serve"]
    words.append(f"serve {sv['speed_up']:.2f}× at {sv['levels'][-1]['concurrency']} concurrent" if _ok(sv)
                 else f"serve {sv['status']}")
  where = report.get("device") or "no device"
  return f"gpu{' (dry run, ' + where + ')' if report.get('dry_run') else ' (' + where + ')'}: " + ", ".join(words)


def markdown(report: dict) -> str:
  """The report as Markdown: a table per part."""
  p = report["parts"]
  lines = [f"# llada-jax bench gpu — {report.get('device') or 'unknown device'}, {report['date']}", ""]
  if report.get("dry_run"):
    lines += ["A dry run: no GPU, tiny shapes. The numbers say the code runs, not how fast a GPU is.", ""]
  lines += ["Settings: " + ", ".join(f"`{k}={v}`" for k, v in report["settings"].items()), ""]
  lines += ["| part | result | seconds |", "|---|---|---|"]
  lines += [f"| {part} | {_summary(part, r)} | {r['seconds']} |" for part, r in p.items()]
  if _ok(p.get("attention", {})):
    a = p["attention"]
    lines += ["", f"## Attention: {a['fused']} against xla ({a['dtype']}, relative L2 error; kernels agree within "
              f"{a['tolerance']:.0e}, the whole model when it is as close to fp32 as the XLA path)", "",
              "| case | shape | output | gradients | agree |", "|---|---|---|---|---|"]
    lines += [f"| {c['case']} | {c['shape']} | {c['output']:.2e} | {c['gradients']:.2e} | {c['agree']} |"
              for c in a["cases"]]
  if _ok(p.get("train", {})):
    t = p["train"]
    lines += ["", f"## Train step: {t['config']}, {t['params']:,} parameters, {t['devices']} device(s), attention "
              f"{t['attention_impl']}", "", "| per-device batch | compiled plan | fits |", "|---|---|---|"]
    lines += [f"| {c['per_device_batch']} × {t['seq_len']} | {_gib(c['plan_bytes'])} of {_gib(t['capacity_bytes'])} "
              f"| {c['fits']} |" for c in t["candidates"]]
    lines += ["", f"At {t['per_device_batch']} × {t['seq_len']}: {t['step_ms']:,.1f} ms per step over {t['steps']} "
              f"steps, {t['tokens_per_s']:,.0f} tokens/s, MFU {t['mfu']:.1%} (peak {t['peak_flops']:.3g} FLOP/s per "
              f"device); peak memory {_gib(t['peak_bytes'])}, the compiled plan {_gib(t['plan_bytes'])}."]
  if _ok(p.get("sample", {})):
    s = p["sample"]
    lines += ["", f"## Sampling: {s['model']}, random weights, prompt {s['prompt_length']}, {s['gen_length']} "
              f"tokens in blocks of {s['block_length']}", "",
              "| batch | mode | tokens/s | model calls | = exact | speed-up |", "|---|---|---|---|---|---|"]
    for b in s["batches"]:
      lines += [f"| {b['batch']} | {m['mode']} | {m['tokens_per_s']:,.1f} | {m['model_calls']:.0f} | "
                f"{m['agreement']:.1%} | {m['tokens_per_s'] / b['modes'][0]['tokens_per_s']:.2f}× |"
                for m in b["modes"]]
  if _ok(p.get("likelihood", {})):
    ll = p["likelihood"]
    lines += ["", f"## Likelihood: {ll['model']}, {ll['pairs']} pairs, mc_num {ll['mc_num']}, batch {ll['batch_size']}",
              "", "| pairs per call | pairs/s |", "|---|---|"]
    lines += [f"| {n} | {rate:,.2f} |" for n, rate in zip(ll["pairs_per_call"], ll["pairs_per_s"])]
    lines += ["", f"Largest difference between the two settings' log-likelihoods: {ll['max_difference']:.2e} nats, "
              f"{ll['relative_difference']:.1e} of their mean size (bf16 rounding at another batch shape)."]
  if _ok(p.get("serve", {})):
    sv = p["serve"]
    lines += ["", f"## Serving: {sv['model']}, random weights, {sv['gen_length']} tokens in blocks of "
              f"{sv['block_length']}, max batch {sv['max_batch']} (compiled in {sv['warm_up_s']:.1f} s)", "",
              f"One client's first block: {sv['first_block']['served'] * 1e3:.1f} ms through the server, "
              f"{sv['first_block']['direct'] * 1e3:.1f} ms by a direct `generate_blocks` call.", "",
              "| clients | requests | tokens/s | first block p50 / p99 | whole answer p50 | batch occupancy | errors |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['concurrency']} | {r['requests']} | {r['tokens_per_s']:,.1f} | {r['first_p50']:.3f} / "
              f"{r['first_p99']:.3f} s | {r['total_p50']:.2f} s | {r['occupancy']:.0%} | {r['errors']} |"
              for r in sv["levels"]]
  return "\n".join(lines) + "\n"


# ---- The parts (each in its own process) ----

def _progress(text: str) -> None:
  print(f"    {text}", file=sys.stderr, flush=True)


def _device() -> dict:
  import jax
  device = jax.devices()[0]
  return {"device": f"{jax.device_count()} × {device.device_kind}", "dry_run": jax.default_backend() != "gpu"}


def _relative_error(a, b, rows=None) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if rows is not None:
    a, b = a[rows], b[rows]
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _config_file(config_path: str, dry: bool) -> str:
  """The config a part reads: `config_path` on a GPU, this checkout's configs/tiny.py on a dry run."""
  from llada_jax.cli import common
  return os.path.join(common.CONFIGS, "tiny.py") if dry else config_path


def _widths(config_path: str, dry: bool, **changes):
  """The ModelConfig of a part's config file, with `changes`."""
  from llada_jax import config as config_lib
  return config_lib.Experiment.from_config(config_lib.load_config_file(_config_file(config_path, dry))).model.replace(
      **changes)


def part_attention(config_path: str, deadline: float) -> dict:
  """The fused kernel ("auto" on this platform; splash in Pallas' interpreter on a dry run) against the XLA path,
  on every masking case the programs make: outputs over the rows something reads, and q/k/v gradients."""
  import jax
  import jax.numpy as jnp
  from llada_jax import ops
  info = _device()
  dry = info["dry_run"]
  base = _widths(config_path, dry, dtype="bfloat16")
  fused = "splash" if dry else ops.resolve_attention_impl(base)
  length = 128 if dry else 2048
  batch, heads, kv_heads, head_dim = 4, base.n_heads, base.n_kv_heads, base.head_dim
  rng = np.random.default_rng(0)
  draw = lambda *dims: jnp.asarray(rng.standard_normal(dims), jnp.bfloat16)
  cut = np.arange(length)[None, :] < (length - np.arange(batch)[:, None] * (length // 8))
  left = np.arange(length)[None, :] >= (np.arange(batch)[:, None] * (length // 8))
  cases = [("no mask", length, False, None), ("random-length cut", length, False, cut),
           ("left-padded prompts", length, False, left), ("cached block (32 queries)", 32, False, left),
           ("causal, cut", length, True, cut)]
  results = []
  for name, q_len, causal, key_mask in cases:
    q, k, v = draw(batch, q_len, heads, head_dim), draw(batch, length, kv_heads, head_dim), draw(
        batch, length, kv_heads, head_dim)
    mask = None if key_mask is None else jnp.asarray(key_mask)
    # Rows something reads: every query but the padded ones of a left-padded batch (no program reads those).
    rows = np.ones((batch, q_len), bool) if key_mask is None or q_len != length else key_mask
    d_out = jnp.asarray(rng.standard_normal((batch, q_len, heads, head_dim)) * rows[:, :, None, None], jnp.bfloat16)
    outputs = {}
    for impl in (fused, "xla"):
      config = base.replace(attention_impl=impl, causal=causal)
      fn = lambda q, k, v, config=config: ops.attention(q, k, v, mask, config)
      out, vjp = jax.jit(lambda q, k, v, fn=fn: jax.vjp(fn, q, k, v))(q, k, v)
      outputs[impl] = (out, jax.jit(vjp)(d_out))
    output_error = _relative_error(outputs[fused][0], outputs["xla"][0], rows)
    grad_error = max(_relative_error(a, b) for a, b in zip(outputs[fused][1], outputs["xla"][1]))
    results.append({"case": name, "shape": f"{batch}×{q_len}×{heads}×{head_dim}, {length} keys",
                    "output": output_error, "gradients": grad_error,
                    "agree": max(output_error, grad_error) <= BF16_TOLERANCE})
    _progress(f"{name}: output {output_error:.2e}, gradients {grad_error:.2e}")
    if time.time() > deadline:
      break
  if time.time() < deadline:
    case = _model_case(base.replace(n_layers=2), fused, 2, length, cut[:2])
    results.append(case)
    _progress(f"whole model against fp32: logits {case['output']:.2e} ({case['xla_bf16']['output']:.2e} on the XLA "
              f"path), gradients {case['gradients']:.2e} ({case['xla_bf16']['gradients']:.2e})")
  return {"status": "ok", **info, "fused": fused, "dtype": "bfloat16", "tolerance": BF16_TOLERANCE, "cases": results,
          "agree": all(c["agree"] for c in results)}


def _model_case(base, fused: str, batch: int, length: int, key_mask: np.ndarray) -> dict:
  """The whole network in bf16 with the fused kernel and with the XLA path, each against the XLA path in fp32:
  logits of the rows something reads, and the gradient of a cross-entropy with respect to all parameters together.
  The fused kernel agrees when it is no further from fp32 than the XLA path's own bf16 rounding (1.5× its error)."""
  import jax
  import jax.numpy as jnp
  from llada_jax import loss, model as model_lib
  params = jax.jit(model_lib.init_params, static_argnums=0)(base.replace(param_dtype="float32"), jax.random.key(0))
  rng = np.random.default_rng(1)
  tokens = jnp.asarray(rng.integers(8, base.vocab_size, (batch, length)), jnp.int32)
  targets = jnp.asarray(rng.integers(8, base.vocab_size, (batch, length)), jnp.int32)
  mask = jnp.asarray(key_mask, jnp.int32)
  # All parameters as one vector: a tiny leaf (a norm's scale) alone carries bf16's full relative rounding.
  flat = lambda tree: np.concatenate([np.asarray(leaf, np.float64).ravel() for leaf in jax.tree.leaves(tree)])
  results = {}
  for label, impl, dtype in ((fused, fused, "bfloat16"), ("xla", "xla", "bfloat16"), ("fp32", "xla", "float32")):
    config = base.replace(attention_impl=impl, dtype=dtype, param_dtype="float32")

    def objective(params, config=config):
      logits = model_lib.apply(params, tokens, mask, config=config)
      return jnp.sum(loss.token_ce(logits, targets) * mask) / jnp.sum(mask), logits
    (_, logits), grads = jax.jit(jax.value_and_grad(objective, has_aux=True))(params)
    results[label] = (np.asarray(logits, np.float32), flat(grads))
  errors = {label: (_relative_error(results[label][0], results["fp32"][0], key_mask),
                    _relative_error(results[label][1], results["fp32"][1])) for label in (fused, "xla")}
  return {"case": f"model, {base.n_layers} layers: error against fp32 (XLA path's own bf16 error)",
          "shape": f"{batch}×{length} tokens, d {base.d_model}",
          "output": errors[fused][0], "gradients": errors[fused][1],
          "xla_bf16": {"output": errors["xla"][0], "gradients": errors["xla"][1]},
          "agree": all(f <= 1.5 * x + 1e-6 for f, x in zip(errors[fused], errors["xla"]))}


def part_train(config_path: str, deadline: float) -> dict:
  """The config's train step over this host's devices (fsdp): compiled at per-device batches 1, 2, 4, … while the
  compiled plan fits the memory JAX may use, then the largest that fits timed on random tokens."""
  import jax
  import jax.numpy as jnp
  from llada_jax import config as config_lib, flops, ops, optim, plan, sharding, train
  from llada_jax.data import TOKENS
  from llada_jax.errors import UserError
  info = _device()
  dry = info["dry_run"]
  path = _config_file(config_path, dry)
  cfg = config_lib.load_config_file(path)
  devices = jax.devices()
  mesh = sharding.make_mesh(1, len(devices), 1, devices=devices)
  stats = devices[0].memory_stats() or {}
  capacity = stats.get("bytes_limit") or plan.devices_for(f"cpu:{len(devices)}")[1]
  start = time.time()
  candidates, best = [], None
  for per_device in (1, 2, 4) if dry else (1, 2, 4, 8, 16):
    cfg.data.global_batch = per_device * len(devices)
    try:
      exp = config_lib.Experiment.from_config(cfg)
    except UserError:  # e.g. paired-count masking needs an even number of rows
      continue
    optimizer = optim.make_optimizer(exp.train)
    step_fn, abstract, shardings = train.jit_train_step(exp.model, exp.train, optimizer, mesh)
    with jax.set_mesh(mesh):
      state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
      try:
        compiled = step_fn.lower(state, train.abstract_batch(exp, mesh)).compile()
      except Exception as e:  # XLA refuses what cannot fit at all
        if not plan.is_out_of_memory(e):
          raise
        candidates.append({"per_device_batch": per_device, "plan_bytes": None, "fits": False})
        break
    plan_bytes = plan.compiled_memory(compiled)["total"]
    fits = plan_bytes <= capacity
    candidates.append({"per_device_batch": per_device, "plan_bytes": plan_bytes, "fits": fits})
    _progress(f"batch {per_device} × {exp.data.seq_len} per device: plan {plan_bytes / GIB:.2f} GiB of "
              f"{capacity / GIB:.2f} ({time.time() - start:.0f} s)")
    if not fits:
      break
    best = (exp, optimizer, step_fn, shardings, compiled, plan_bytes)
    if time.time() - start > 0.4 * (deadline - start):  # leave the time box's rest for running
      break
  if best is None:
    return {"status": "no batch fits", **info, "candidates": candidates}
  exp, optimizer, step_fn, shardings, compiled, plan_bytes = best
  with jax.set_mesh(mesh):
    state = jax.jit(lambda: train.init_state(exp.model, optimizer, 0), out_shardings=shardings)()
  tokens = np.random.default_rng(0).integers(8, exp.model.vocab_size, (exp.data.global_batch, exp.data.seq_len))
  batch = {TOKENS: jax.device_put(jnp.asarray(tokens, jnp.int32), train.batch_sharding(mesh))}
  times = []
  while len(times) < 12 and (len(times) < 4 or time.time() + 2 * np.median(times) < deadline):
    tick = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics["loss"])
    times.append(time.perf_counter() - tick)
  timed = times[2:] or times  # the first calls include transfers and autotuning
  seconds = float(np.median(timed))
  peak_flops = flops.peak_flops(devices[0]) * len(devices)
  model_flops = flops.train_flops_per_step(exp)
  peak = (devices[0].memory_stats() or {}).get("peak_bytes_in_use")
  _progress(f"{len(times)} steps, median {seconds * 1e3:.1f} ms")
  return {"status": "ok", **info, "config": path, "params": exp.model.num_params(), "devices": len(devices),
          "attention_impl": ops.resolve_attention_impl(exp.model), "seq_len": exp.data.seq_len,
          "candidates": candidates,
          "capacity_bytes": capacity, "per_device_batch": exp.data.global_batch // len(devices), "steps": len(timed),
          "step_ms": seconds * 1e3, "tokens_per_s": exp.tokens_per_step / seconds,
          "mfu": model_flops / seconds / peak_flops, "peak_flops": peak_flops / len(devices), "peak_bytes": peak,
          "plan_bytes": plan_bytes, "loss": float(metrics["loss"])}


def _shaped_model(config_path: str, dry: bool):
  """(ModelConfig, random bf16 params, description): the 8B's widths with 4 layers, or configs/tiny.py's model."""
  import jax
  from llada_jax import config as config_lib, model as model_lib
  if dry:
    config = _widths(config_path, True, param_dtype="bfloat16", dtype="bfloat16")
    name = "configs/tiny.py"
  else:
    config = config_lib.ModelConfig(n_layers=4, param_dtype="bfloat16", dtype="bfloat16")
    name = "the 8B's widths with 4 layers"
  params = jax.jit(model_lib.init_params, static_argnums=0)(config, jax.random.key(0))
  return config, params, f"{name} ({config.num_params():,} parameters)"


def _timed(fn, deadline: float, repeats: int = 3) -> tuple[float, object]:
  """(median seconds, last output) of `fn` after one warm-up (compiling) call, fewer repeats near the deadline."""
  output = fn()
  times = []
  while len(times) < repeats and (not times or time.time() + times[-1] < deadline):
    tick = time.perf_counter()
    output = fn()
    times.append(time.perf_counter() - tick)
  return float(np.median(times)), output


def part_sample(config_path: str, deadline: float) -> dict:
  """Greedy sampling of an 8B-shaped model: the exact sampler against threshold decoding with the dual cache, at
  batch 1 and 8 (left-padded prompts)."""
  from llada_jax import bench, sampler
  info = _device()
  dry = info["dry_run"]
  config, params, name = _shaped_model(config_path, dry)
  prompt_length, gen_length, block_length = (16, 32, 16) if dry else (64, 256, 32)
  modes = [("exact", {}), ("threshold 0.9, dual cache", {"decoding": "threshold", "threshold": 0.9, "cache": "dual"})]
  batches = []
  for batch in (1, 2) if dry else (1, 8):
    prompt, mask = bench._bench_prompts(config.vocab_size, prompt_length, batch, None)
    rows, exact_tokens = [], None
    for label, options in modes:
      sampling = sampler.SamplingConfig(steps=gen_length, gen_length=gen_length, block_length=block_length, **options)
      run = lambda sampling=sampling: sampler.generate(params, prompt, mask if batch > 1 else None, config=config,
                                                       sampling=sampling)
      seconds, out = _timed(run, deadline)
      tokens = np.asarray(out.tokens)[:, prompt_length:]
      exact_tokens = tokens if exact_tokens is None else exact_tokens
      rows.append({"mode": label, "tokens_per_s": batch * gen_length / seconds, "seconds": seconds,
                   "model_calls": float(np.mean(out.row_nfe)), "agreement": float(np.mean(tokens == exact_tokens))})
      _progress(f"batch {batch}, {label}: {rows[-1]['tokens_per_s']:,.1f} tokens/s, "
                f"{rows[-1]['model_calls']:.0f} calls")
    batches.append({"batch": batch, "modes": rows, "speed_up": rows[-1]["tokens_per_s"] / rows[0]["tokens_per_s"]})
    if time.time() > deadline:
      break
  return {"status": "ok", **info, "model": name, "prompt_length": prompt_length, "gen_length": gen_length,
          "block_length": block_length, "batches": batches}


def part_likelihood(config_path: str, deadline: float) -> dict:
  """Monte-Carlo log-likelihoods of (prompt, answer) pairs at 1 and 8 pairs per call, same keys: the speed of
  batching pairs, and that it changes nothing but speed."""
  import jax
  from llada_jax import likelihood
  info = _device()
  dry = info["dry_run"]
  config, params, name = _shaped_model(config_path, dry)
  count, mc_num, batch_size = (8, 8, 4) if dry else (32, 32, 16)
  rng = np.random.default_rng(0)
  pairs = [(rng.integers(8, config.vocab_size, 48 + 8 * (i % 4)), rng.integers(8, config.vocab_size, 1 + i % 16))
           for i in range(count)]
  keys = list(jax.random.split(jax.random.key(0), count))
  rates, values = [], []
  for per_call in (1, 8):
    run = lambda per_call=per_call: likelihood.log_likelihoods(params, pairs, config=config, rngs=keys, mc_num=mc_num,
                                                               batch_size=batch_size, pairs_per_call=per_call)
    seconds, out = _timed(run, deadline, repeats=2)
    rates.append(count / seconds)
    values.append(out)
    _progress(f"{per_call} pairs per call: {rates[-1]:,.2f} pairs/s")
  return {"status": "ok", **info, "model": name, "pairs": count, "mc_num": mc_num, "batch_size": batch_size,
          "pairs_per_call": [1, 8], "pairs_per_s": rates, "speed_up": rates[1] / rates[0],
          "max_difference": float(np.max(np.abs(values[0] - values[1]))),
          "relative_difference": float(np.max(np.abs(values[0] - values[1])) / np.mean(np.abs(values[1])))}


def part_serve(config_path: str, deadline: float) -> dict:
  """`llada-jax serve` under load: an 8B-shaped model (4 layers, random weights, the built-in tokenizer's 8192 ids
  so that every sampled id decodes) behind the HTTP server on loopback; one client's time to the first block
  against a direct call's, then 1 and 8 concurrent streaming clients: tokens/s and the gain of batching."""
  import tempfile
  import jax
  from llada_jax import bench_serve, data, engine as engine_lib, model as model_lib, sampler, server
  from llada_jax.pretrained import LLaDAModel
  from llada_jax.tokenizer import train_tokenizer
  info = _device()
  dry = info["dry_run"]
  vocab = 512 if dry else 8192
  with tempfile.TemporaryDirectory() as scratch:
    tokenizer = train_tokenizer(data.builtin_documents()[:4] if dry else data.builtin_documents(), vocab, scratch)
  ids = dict(vocab_size=vocab, embedding_size=vocab, bos_token_id=1, eos_token_id=2, pad_token_id=2, mask_token_id=3,
             eot_token_id=6, param_dtype="bfloat16", dtype="bfloat16")
  if dry:
    config = _widths(config_path, True, **ids)
  else:
    from llada_jax import config as config_lib
    config = config_lib.ModelConfig(n_layers=4, **ids)
  params = jax.jit(model_lib.init_params, static_argnums=0)(config, jax.random.key(0))
  gen_length, block_length, max_batch, seconds = (32, 16, 2, 5.0) if dry else (256, 32, 8, 25.0)
  defaults = sampler.SamplingConfig(gen_length=gen_length, steps=gen_length, block_length=block_length)
  engine = engine_lib.Engine(params, config, tokenizer, max_batch=max_batch, max_queue=4 * max_batch)
  warm = engine.warm_up(defaults, prompt_length=16)
  _progress(f"compiled the block program for batch sizes {engine.buckets} in {warm:.1f} s")
  api = server.Api(engine, tokenizer, model_name="bench", defaults=defaults, api_key=None, request_timeout=600,
                   max_sequence_length=config.max_sequence_length)
  port, stop = server.serve_in_background(api, engine)
  levels = []
  try:
    first = bench_serve.first_block_pairs(port, LLaDAModel(config, params, stored_sampling=defaults), tokenizer,
                                          defaults, gen_length, pairs=10)
    _progress(f"first block {first['served'] * 1e3:.1f} ms served, {first['direct'] * 1e3:.1f} ms direct")
    for clients in (1, max_batch):
      left = (deadline - time.time()) / (2 if clients == 1 else 1) - 5
      levels.append(bench_serve.load(port, engine, clients, 10_000, min(seconds, max(left, 1.0)),
                                     {"max_tokens": gen_length}, log=_progress))
      _progress(f"{clients} concurrent: {levels[-1]['tokens_per_s']:,.1f} tokens/s, {levels[-1]['errors']} errors")
  finally:
    stop()
  keep = ("concurrency", "requests", "errors", "error_examples", "tokens_per_s", "first_p50", "first_p99",
          "total_p50", "occupancy")
  return {"status": "ok", **info, "model": f"{'configs/tiny.py' if dry else 'the 8B widths with 4 layers'} "
          f"({config.num_params():,} parameters, vocabulary {vocab})", "gen_length": gen_length,
          "block_length": block_length, "max_batch": max_batch, "warm_up_s": warm, "first_block": first,
          "levels": [{k: r[k] for k in keep} for r in levels],
          "speed_up": levels[-1]["tokens_per_s"] / levels[0]["tokens_per_s"]}


_PARTS = {"attention": part_attention, "train": part_train, "sample": part_sample, "likelihood": part_likelihood,
          "serve": part_serve}


if __name__ == "__main__":
  spec = json.loads(sys.argv[1])
  print(json.dumps(_PARTS[spec["part"]](spec["config_path"], spec["deadline"])), flush=True)
