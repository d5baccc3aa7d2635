"""`llada-jax bench …`: measurements, never assertions. Each benchmark prints a table and returns its numbers."""

import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Callable

import numpy as np

from llada_jax import flops
from llada_jax.config import DTYPES
from llada_jax.errors import UserError


def _run_measured(args: list[str]) -> tuple[float, int]:
  """(seconds, peak RSS bytes) of one `python -m llada_jax.cli …` child process."""
  start = time.time()
  child = subprocess.Popen([sys.executable, "-m", "llada_jax.cli", *args], stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  _, status, usage = os.wait4(child.pid, 0)
  if status:
    raise UserError(f"llada-jax {' '.join(args)} failed: {child.stderr.read().decode()[-500:]}")
  return time.time() - start, usage.ru_maxrss * 1024


def _synthetic_hf(path: str, config) -> int:
  """An HF directory of `config`'s shapes with random weights in its param_dtype; returns the weights' bytes."""
  from llada_jax import convert
  rng = np.random.default_rng(0)
  tree: dict = {}
  for our_path, _, to_ours, _, shape in convert.tensor_table(config):
    node = tree
    for key in our_path[:-1]:
      node = node.setdefault(key, {})
    weights = rng.standard_normal(shape(config), np.float32).astype(DTYPES[config.param_dtype])
    node[our_path[-1]] = to_ours(config, weights)
  convert.save_hf(tree, config, path, max_shard_size="2GB")
  return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".safetensors"))


def bench_convert(layers: list[int], dtype: str = "bfloat16") -> list[dict]:
  """Peak RSS of `convert hf-to-jax` and `jax-to-hf` at the 8B's tensor shapes with a few layers, extrapolated
  linearly to 32 layers (memory is the embedding/head plus a per-layer term)."""
  from llada_jax.config import ModelConfig
  rows = []
  with tempfile.TemporaryDirectory(dir=os.environ.get("LLADA_JAX_BENCH_TMP")) as tmp:
    for n in layers:
      config = ModelConfig(n_layers=n, param_dtype=dtype)
      src, mid, out = (os.path.join(tmp, f"{kind}{n}") for kind in ("hf", "jax", "back"))
      size = _synthetic_hf(src, config)
      t_in, rss_in = _run_measured(["convert", "hf-to-jax", src, mid])
      t_out, rss_out = _run_measured(["convert", "jax-to-hf", mid, out])
      rows.append(dict(layers=n, model_gb=size / 1e9, hf_to_jax_s=t_in, hf_to_jax_rss_gb=rss_in / 1e9,
                       jax_to_hf_s=t_out, jax_to_hf_rss_gb=rss_out / 1e9))
      for d in (src, mid, out):
        subprocess.run(["rm", "-rf", d], check=True)
  print(f"{'layers':>6} {'model GB':>9} {'hf→jax s':>9} {'hf→jax RSS GB':>14} {'jax→hf s':>9} {'jax→hf RSS GB':>14}")
  for r in rows:
    print(f"{r['layers']:>6} {r['model_gb']:>9.2f} {r['hf_to_jax_s']:>9.1f} {r['hf_to_jax_rss_gb']:>14.2f} "
          f"{r['jax_to_hf_s']:>9.1f} {r['jax_to_hf_rss_gb']:>14.2f}")
  if len(rows) >= 2:
    a, b = rows[0], rows[-1]
    full = ModelConfig(param_dtype=dtype)
    full_gb = full.num_params() * DTYPES[dtype].itemsize / 1e9
    for key in ("hf_to_jax_rss_gb", "jax_to_hf_rss_gb"):
      # The larger of: the per-layer growth extended to 32 layers, and the full model plus the overhead measured
      # at the largest size (the growth alone can under-count when a fixed transient dominates small runs).
      slope = (b[key] - a[key]) / (b["layers"] - a["layers"])
      estimate = max(b[key] + slope * (full.n_layers - b["layers"]), full_gb + b[key] - b["model_gb"])
      print(f"extrapolated peak RSS of {key[:9].replace('_', '-')} for the 8B ({full.n_layers} layers, "
            f"{full_gb:.1f} GB in {dtype}): {estimate:.1f} GB")
      rows.append({"extrapolated_" + key: estimate})
  return rows


def _torch_reference():
  """llada_jax.torch_reference: the independent PyTorch LLaDA used as the baseline (needs the torch extra)."""
  try:
    from llada_jax import torch_reference
  except ImportError as error:
    raise UserError(f"the PyTorch baseline needs {error.name or 'torch'}: pip install 'llada-jax[torch]'") from None
  return torch_reference


def _experiment(config_path: str, overrides: list[str]):
  """The config file with its overrides, typed and checked: what both the parent and each worker read."""
  from llada_jax import config as config_lib
  return config_lib.Experiment.from_config(
      config_lib.apply_overrides(config_lib.load_config_file(config_path), overrides))


def _train_step_closure(side: str, config_path: str, overrides: list[str], threads: int
                        ) -> tuple[Callable[[], object], str]:
  """(one train step, what runs it) of `side` ("jax": ours, "torch": the PyTorch reference) on the config's
  shapes, same loss and AdamW settings, fixed random tokens. Both sides use Bernoulli masks (docs/design.md §4;
  the reference has no paired-count masking), so a config's `train.masking` does not change the comparison."""
  from llada_jax import hf_config
  exp = _experiment(config_path, overrides)
  exp = exp.replace(train=exp.train.replace(masking="bernoulli"))
  model_config = exp.model
  tokens = np.random.default_rng(0).integers(8, model_config.vocab_size,
                                             (exp.data.global_batch, exp.data.seq_len)).astype(np.int32)
  if side == "torch":
    import torch
    ref = _torch_reference()
    torch.set_num_threads(threads)
    torch_model = ref.mitchell_init_(ref.TorchLLaDA(hf_config.to_hf_config(model_config)), 0)
    torch_opt = torch.optim.AdamW(torch_model.parameters(), lr=exp.train.lr, betas=(exp.train.b1, exp.train.b2),
                                  weight_decay=exp.train.weight_decay)
    generator = torch.Generator().manual_seed(0)
    x = torch.from_numpy(tokens.astype(np.int64))
    return (lambda: ref.train_step(torch_model, torch_opt, x, generator, mask_id=model_config.mask_token_id),
            f"{threads} threads")

  import jax
  import jax.numpy as jnp
  from llada_jax import optim, sharding, train
  from llada_jax.data import TOKENS
  mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  optimizer = optim.make_optimizer(exp.train)
  _, shardings = train.state_shardings(model_config, optimizer, mesh)
  with jax.set_mesh(mesh):
    holder = {"state": jax.jit(lambda: train.init_state(model_config, optimizer, 0), out_shardings=shardings)()}
    step_fn = jax.jit(train.make_train_step(model_config, exp.train, optimizer), donate_argnums=0)
  batch_arrays = {TOKENS: jnp.asarray(tokens)}

  def step():
    with jax.set_mesh(mesh):
      holder["state"], metrics = step_fn(holder["state"], batch_arrays)
      jax.block_until_ready(metrics["loss"])
  return step, f"XLA, {jax.devices()[0].platform}"


def _bench_prompts(vocab_size: int, prompt_length: int, batch: int, tokenizer_path: str | None
                   ) -> tuple[np.ndarray, np.ndarray]:
  """(left-padded prompts [batch, prompt_length], attention mask): row i holds prompt_length − 4i tokens (at least
  4), cut from the packaged Shakespeare with the checkpoint's tokenizer, or random ids without one."""
  from llada_jax import sampler
  lengths = [max(4, prompt_length - 4 * i) for i in range(batch)]
  if tokenizer_path:
    from llada_jax import data
    from llada_jax.tokenizer import load_tokenizer
    ids = load_tokenizer(tokenizer_path).encode("".join(data.builtin_documents()[:3]))
    rows = [ids[1000 * (i + 1):1000 * (i + 1) + n] for i, n in enumerate(lengths)]
  else:
    rng = np.random.default_rng(0)
    rows = [rng.integers(8, vocab_size, n) for n in lengths]
  return sampler.left_pad(rows, pad_id=0, width=prompt_length)


def _bench_weights(config_path: str, overrides: list[str], checkpoint_path: str | None):
  """(ModelConfig, params, tokenizer path or None): a trained checkpoint's, or random weights from key 0."""
  import jax
  from llada_jax import checkpoint, model as model_lib
  if checkpoint_path:
    from llada_jax.pretrained import load_pretrained
    model = load_pretrained(checkpoint_path)
    return model.config, model.params, checkpoint.find_tokenizer(checkpoint_path)
  model_config = _experiment(config_path, overrides).model
  return model_config, jax.jit(model_lib.init_params, static_argnums=0)(model_config, jax.random.key(0)), None


def _sample_closure(side: str, config_path: str, overrides: list[str], threads: int, prompt_length: int,
                    gen_length: int, steps: int, block_length: int, batch: int, checkpoint_path: str | None,
                    sampling: dict) -> tuple[Callable[[], list], str]:
  """(one greedy generation returning [tokens, model calls per row], what runs it): ours with `sampling`'s
  decoding options, or the official sampling rules on the PyTorch reference loaded with the same weights."""
  import jax
  from llada_jax import checkpoint, convert, hf_config, sampler
  model_config, params, tokenizer_path = _bench_weights(config_path, overrides, checkpoint_path)
  prompt, mask = _bench_prompts(model_config.vocab_size, prompt_length, batch, tokenizer_path)
  padded = bool((mask == 0).any())
  if side == "jax":
    options = sampler.SamplingConfig(steps=steps, gen_length=gen_length, block_length=block_length, **sampling)

    def generate():
      out = sampler.generate(params, prompt, mask if padded else None, config=model_config, sampling=options)
      return [np.asarray(out.tokens).tolist(), out.row_nfe.tolist()]
    return generate, "one jitted program per block"

  import torch
  ref = _torch_reference()
  torch.set_num_threads(threads)
  torch_model = ref.TorchLLaDA(hf_config.to_hf_config(model_config))
  layered = jax.tree.map(np.asarray, checkpoint.to_layered(params, model_config.n_layers))
  torch_model.load_state_dict({name: torch.from_numpy(array.copy())
                               for name, array in convert.hf_tensors(layered, model_config)})
  params = layered = None  # the JAX copy is not needed while the reference runs

  def generate_reference():
    tokens, nfe = ref.generate(torch_model, torch.from_numpy(prompt.astype(np.int64)),
                               attention_mask=torch.from_numpy(mask.astype(np.int64)) if padded else None,
                               mask_id=model_config.mask_token_id, eos_id=model_config.eos_token_id,
                               eot_id=model_config.eot_token_id, steps=steps, gen_length=gen_length,
                               block_length=block_length)
    return [tokens.numpy().tolist(), [int(nfe)] * batch]
  return generate_reference, f"official sampling rules, {threads} threads"


def _kernel_shapes(exp) -> dict[str, tuple]:
  """The train step's dominant products at an experiment's shapes: each projection as
  (tokens, d_in, d_out), and the attention as (batch, length, heads, kv_heads, head_dim)."""
  c, tokens = exp.model, exp.tokens_per_step
  return {"attention projection": (tokens, c.d_model, c.n_heads * c.head_dim),
          "mlp up (each of two)": (tokens, c.d_model, c.mlp_hidden_size),
          "mlp down": (tokens, c.mlp_hidden_size, c.d_model),
          "output head": (tokens, c.d_model, c.embedding_size),
          "attention": (exp.data.global_batch, exp.data.seq_len, c.n_heads, c.n_kv_heads, c.head_dim)}


def _kernel_flops(name: str, shape: tuple) -> float:
  """Forward + backward FLOPs of one of `_kernel_shapes`' products."""
  if name == "attention":
    batch, length, heads, _, head_dim = shape
    return flops.TRAIN_PASS * flops.attention(batch, length, heads, head_dim)
  return flops.TRAIN_PASS * flops.projection(*shape)


def _kernel_closure(side: str, config_path: str, overrides: list[str], threads: int, kernel: str
                    ) -> tuple[Callable[[], Callable[[], float]], str]:
  """(forward + backward of one kernel, what runs it): ours through the model's own functions, the reference
  through what llada_jax.torch_reference calls (F.linear, SDPA) and autograd. Both sides draw the same inputs; each
  call returns a function computing a checksum of the gradients (outside the timing), and the two sides'
  checksums must agree."""
  exp = _experiment(config_path, overrides)
  model_config, shape = exp.model, _kernel_shapes(exp)[kernel]
  rng = np.random.default_rng(0)
  draw = lambda *dims: (rng.standard_normal(dims) / np.sqrt(dims[-1])).astype(np.float32)
  if kernel == "attention":
    batch, length, heads, kv_heads, head_dim = shape
    arrays = [draw(batch, length, heads, head_dim), draw(batch, length, kv_heads, head_dim),
              draw(batch, length, kv_heads, head_dim), draw(batch, length, heads, head_dim)]
    key_mask = np.arange(length)[None, :] < np.where(np.arange(batch) % 2, length - 7, length)[:, None]
  else:
    tokens, d_in, d_out = shape
    arrays = [draw(tokens, d_in), draw(d_in, d_out), draw(tokens, d_out)]
  if side == "torch":
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(threads)
    if kernel == "attention":
      # As the reference block calls it: transposed views into SDPA's [batch, heads, length, head_dim], kv heads
      # repeated for GQA, an additive key bias.
      q, k, v, d_out = (torch.from_numpy(a) for a in arrays)
      bias = torch.from_numpy(np.where(key_mask, 0.0, -np.inf).astype(np.float32))[:, None, None, :]
      leaves = [t.requires_grad_() for t in (q, k, v)]

      def run():
        groups = heads // kv_heads
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2).repeat_interleave(groups, 1),
            v.transpose(1, 2).repeat_interleave(groups, 1), attn_mask=bias, scale=1.0 / np.sqrt(head_dim))
        out.backward(d_out.transpose(1, 2))
    else:
      x, w_t, d_out = torch.from_numpy(arrays[0]), torch.from_numpy(arrays[1].T.copy()), torch.from_numpy(arrays[2])
      leaves = [t.requires_grad_() for t in (x, w_t)]

      def run():
        F.linear(x, w_t).backward(d_out)

    def step():
      for leaf in leaves:
        leaf.grad = None
      run()
      return lambda: _checksum(leaf.grad.numpy() for leaf in leaves)
    return step, f"{threads} threads"

  import jax
  import jax.numpy as jnp
  from llada_jax import ops
  if kernel == "attention":
    fn = lambda q, k, v: ops.attention(q, k, v, jnp.asarray(key_mask), model_config)
    inputs, d_out = [jnp.asarray(a) for a in arrays[:3]], jnp.asarray(arrays[3])
  else:
    fn, inputs, d_out = ops.project, [jnp.asarray(a) for a in arrays[:2]], jnp.asarray(arrays[2])
  grads = jax.jit(lambda *xs: jax.vjp(fn, *xs)[1](d_out))

  def step():
    result = jax.block_until_ready(grads(*inputs))
    return lambda: _checksum(np.asarray(g) for g in result)
  return step, f"XLA, {jax.devices()[0].platform}"


def _checksum(arrays) -> float:
  return float(sum(np.abs(a.astype(np.float64)).sum() for a in arrays))


_CLOSURES = {"train": _train_step_closure, "sample": _sample_closure, "kernels": _kernel_closure}


def _serve(spec: str) -> None:
  """Worker process of `bench train|sample|kernels`: builds one side, runs it twice to warm up, then for each
  line `n` read runs it n times and answers with the mean seconds and the last call's output (called first if it
  is a function: work kept out of the timing)."""
  spec = json.loads(spec)
  fn, label = _CLOSURES[spec.pop("bench")](**spec)
  fn()  # compiles
  fn()
  print(json.dumps(label), flush=True)
  for line in sys.stdin:
    start = time.perf_counter()
    for _ in range(int(line)):
      output = fn()
    seconds = (time.perf_counter() - start) / int(line)
    print(json.dumps([seconds, output() if callable(output) else output]), flush=True)


class _Side:
  """A `_serve` child process: each framework gets a process of its own, so neither's thread pool (XLA's,
  PyTorch's OpenMP) nor its allocations compete with the other's while it is being timed."""

  def __init__(self, **spec):
    # stderr goes to a file: a pipe nobody reads until the end would block a chatty child.
    self.log = tempfile.TemporaryFile("w+")
    self.child = subprocess.Popen([sys.executable, "-m", "llada_jax.bench", json.dumps(spec)], text=True,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log)
    self.label = self._read()

  def _read(self):
    line = self.child.stdout.readline()
    if not line:
      self.child.wait()
      self.log.seek(0)
      raise UserError(f"the benchmark process {self.child.args[-1]} failed: {self.log.read()[-800:]}")
    return json.loads(line)

  def run(self, iters: int) -> tuple[float, object]:
    """(mean seconds per call, the last call's output) of `iters` calls."""
    self.child.stdin.write(f"{iters}\n")
    self.child.stdin.flush()
    return tuple(self._read())

  def close(self) -> None:
    self.child.stdin.close()
    self.child.wait()
    self.log.close()


def _side_by_side(spec: dict | list[dict], iters: int, rounds: int) -> tuple[list[str], list[float], list]:
  """(labels, median seconds per call, last outputs) of each side — `spec` is ours then theirs, or a list of
  specs — timed in alternating rounds so that a noisy machine slows all alike. Started one after the other: one
  side's compile must not slow another's warm-up."""
  specs = spec if isinstance(spec, list) else [dict(side="jax", **spec), dict(side="torch", **spec)]
  sides = []
  try:
    for one in specs:
      sides.append(_Side(**one))
    results = [[side.run(iters) for side in sides] for _ in range(rounds)]
  finally:
    for side in sides:
      side.close()
  seconds = np.median([[r[0] for r in row] for row in results], axis=0).tolist()
  return [side.label for side in sides], seconds, [r[1] for r in results[-1]]


def bench_train(config_path: str, overrides: list[str], iters: int, threads: int, rounds: int = 3) -> dict:
  """Train-step throughput of ours and of the PyTorch reference (same shapes, loss and AdamW), side by side: one
  process per side, timed in alternating rounds so that a noisy machine slows both alike; medians reported."""
  exp = _experiment(config_path, overrides)
  model_config, batch, seq_len = exp.model, exp.data.global_batch, exp.data.seq_len
  spec = dict(bench="train", config_path=config_path, overrides=overrides, threads=threads)
  labels, (ours_s, theirs_s), _ = _side_by_side(spec, iters, rounds)
  tokens_per_step = batch * seq_len
  result = dict(config=config_path, batch=batch, seq_len=seq_len, jax_tokens_per_s=tokens_per_step / ours_s,
                torch_tokens_per_s=tokens_per_step / theirs_s, torch_threads=threads)
  print(f"train step, {config_path}: batch {batch} × {seq_len}, {model_config.num_params():,} parameters")
  print(f"  llada-jax ({labels[0]}): {result['jax_tokens_per_s']:10,.0f} tokens/s  "
        f"({ours_s * 1e3:,.0f} ms/step)")
  print(f"  PyTorch reference ({labels[1]}): {result['torch_tokens_per_s']:10,.0f} tokens/s  "
        f"({theirs_s * 1e3:,.0f} ms/step)")
  print(f"  ratio llada-jax / PyTorch: {result['jax_tokens_per_s'] / result['torch_tokens_per_s']:.2f}×")
  return result


def bench_kernels(config_path: str, overrides: list[str], iters: int, threads: int, rounds: int = 3,
                  kernels: list[str] | None = None) -> list[dict]:
  """Forward + backward time of the train step's dominant kernels at the config's shapes, ours against the
  PyTorch reference's, one process per side and kernel as in `bench_train`: where a train-step gap comes from."""
  shapes = _kernel_shapes(_experiment(config_path, overrides))
  rows = []
  print(f"kernels of the train step, {config_path}: forward + backward, fp32")
  print(f"{'kernel':22s} {'shape':28s} {'llada-jax ms':>12s} {'PyTorch ms':>11s} {'GFLOP/s':>8s} {'PyTorch':>8s} "
        f"{'ratio':>6s}")
  for name in kernels or list(shapes):
    spec = dict(bench="kernels", config_path=config_path, overrides=overrides, threads=threads, kernel=name)
    _, (ours_s, theirs_s), (ours_sum, theirs_sum) = _side_by_side(spec, iters, rounds)
    flops = _kernel_flops(name, shapes[name])
    rows.append(dict(kernel=name, shape=shapes[name], jax_ms=ours_s * 1e3, torch_ms=theirs_s * 1e3,
                     jax_gflops=flops / ours_s / 1e9, torch_gflops=flops / theirs_s / 1e9,
                     gradients_agree=bool(abs(ours_sum - theirs_sum) <= 1e-4 * abs(theirs_sum))))
    r = rows[-1]
    print(f"{name:22s} {' × '.join(map(str, shapes[name])):28s} {r['jax_ms']:12.1f} {r['torch_ms']:11.1f} "
          f"{r['jax_gflops']:8.0f} {r['torch_gflops']:8.0f} {theirs_s / ours_s:5.2f}×"
          + ("" if r["gradients_agree"] else "  (gradients differ!)"))
  return rows


def _mode_name(sampling: dict) -> str:
  parts = [sampling.get("decoding", "exact")]
  if parts[0] in ("threshold", "factor"):
    parts[0] += f" {sampling[parts[0]]:g}"
  return ", ".join(parts + [f"cache {sampling.get('cache', 'none')}"])


def bench_sample(config_path: str, overrides: list[str], prompt_length: int, gen_length: int, steps: int,
                 threads: int, *, block_length: int | None = None, batch: int = 1, checkpoint_path: str | None = None,
                 modes: list[dict] = (), mc_num: int = 32, repeats: int = 2, rounds: int = 3) -> dict:
  """Sampling speed of the exact sampler, of each faster mode (`modes`: SamplingConfig decoding fields) and of
  the official sampling rules on the PyTorch reference, same weights and prompts, one process per side timed in
  alternating rounds as in `bench_train`. For each mode also the quality cost: the fraction of generated tokens
  equal to the exact sampler's, and the model's own Monte-Carlo log-likelihood of what it generated."""
  block_length = block_length or gen_length
  base = dict(config_path=config_path, overrides=overrides, threads=threads, prompt_length=prompt_length,
              gen_length=gen_length, steps=steps, block_length=block_length, batch=batch,
              checkpoint_path=checkpoint_path)
  modes = [dict(m) for m in modes if dict(m).get("decoding", "exact") != "exact" or dict(m).get("cache", "none")
           != "none"]
  from llada_jax import sampler
  for mode in modes:  # a bad option fails here, in one line, not inside a worker
    sampler.SamplingConfig(steps=steps, gen_length=gen_length, block_length=block_length, **mode)
  specs = [dict(bench="sample", side="jax", sampling={}, **base)]
  specs += [dict(bench="sample", side="jax", sampling=m, **base) for m in modes]
  specs.append(dict(bench="sample", side="torch", sampling={}, **base))
  labels, seconds, outputs = _side_by_side(specs, repeats, rounds)

  import jax
  from llada_jax import likelihood
  model_config, params, tokenizer_path = _bench_weights(config_path, overrides, checkpoint_path)
  prompt, mask = _bench_prompts(model_config.vocab_size, prompt_length, batch, tokenizer_path)

  def log_likelihood(tokens) -> float:
    """Mean over rows of log p(generated | prompt), nats per generated token."""
    values = [likelihood.log_likelihood(params, row[:prompt_length][m == 1], row[prompt_length:],
                                        config=model_config, mc_num=mc_num, batch_size=min(mc_num, 16),
                                        rng=jax.random.key(i)) / gen_length
              for i, (row, m) in enumerate(zip(np.asarray(tokens), mask))]
    return float(np.mean(values))

  exact_tokens = np.asarray(outputs[0][0])[:, prompt_length:]
  rows = []
  for name, sampling, secs, (tokens, row_nfe) in zip(["exact"] + [_mode_name(m) for m in modes] + ["PyTorch"],
                                                     [{}] + modes + [None], seconds, outputs):
    generated = np.asarray(tokens)[:, prompt_length:]
    rows.append(dict(mode=name, sampling=sampling, tokens_per_s=batch * gen_length / secs, seconds=secs,
                     model_calls=float(np.mean(row_nfe)), tokens_per_call=gen_length / float(np.mean(row_nfe)),
                     agreement=float(np.mean(generated == exact_tokens)),
                     log_likelihood=log_likelihood(tokens) if sampling is not None else None))
  exact, torch_row = rows[0], rows[-1]
  weights = checkpoint_path or "random init (key 0)"
  print(f"sampling, {config_path}, weights {weights}: prompt {prompt_length}, gen_length {gen_length}, block "
        f"{block_length}, steps {steps} (exact), batch {batch}{' (left-padded)' if batch > 1 else ''}, "
        f"{model_config.num_params():,} parameters")
  print(f"  {'mode':30s} {'tokens/s':>9s} {'calls':>7s} {'tok/call':>8s} {'= exact':>8s} {'log-lik/tok':>11s} "
        f"{'speed-up':>8s}")
  for r in rows:
    label = r["mode"] if r["sampling"] is not None else f"PyTorch ({labels[-1]})"
    loglik = f"{r['log_likelihood']:11.3f}" if r["log_likelihood"] is not None else f"{'':11s}"
    print(f"  {label:30s} {r['tokens_per_s']:9.1f} {r['model_calls']:7.1f} {r['tokens_per_call']:8.2f} "
          f"{r['agreement']:8.1%} {loglik} {r['tokens_per_s'] / exact['tokens_per_s']:7.2f}×")
  result = dict(config=config_path, checkpoint=checkpoint_path, prompt_length=prompt_length, gen_length=gen_length,
                block_length=block_length, steps=steps, batch=batch, rows=rows,
                identical_tokens=torch_row["agreement"] == 1.0,
                exact_vs_pytorch=exact["tokens_per_s"] / torch_row["tokens_per_s"])
  print(f"  exact vs PyTorch official rules: {result['exact_vs_pytorch']:.2f}×; outputs token-identical: "
        f"{result['identical_tokens']}")
  if modes:
    fastest = max(rows[1:-1], key=lambda r: r["tokens_per_s"])
    result["speed_up"] = fastest["tokens_per_s"] / exact["tokens_per_s"]
    print(f"  fastest: {fastest['mode']}, {fastest['tokens_per_s'] / torch_row['tokens_per_s']:.2f}× the PyTorch "
          "reference's official rules")
    print(f"speed-up vs exact: {result['speed_up']:.2f}×")
  return result


if __name__ == "__main__":
  _serve(sys.argv[1])
