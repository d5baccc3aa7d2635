"""A small PyTorch LLaDA: the parity oracle for llada-jax and the PyTorch baseline for its benchmarks.

Written from the design document (docs/design.md) alone (§1 network, §2 checkpoint names, §4 loss, §5 sampler,
§6 likelihood), independently of the JAX code and of the official code, so that the two implementations check each
other. It follows the official release's numerics and sampling rules, quirks included; the one deliberate difference
is that CFG without an attention mask works here (the official sampler crashes there).

The network is llada_jax/hf_remote/modeling_llada.py, the remote code our HF exports carry (PyTorch only, no JAX);
this file adds the official sampling, likelihood and loss rules around it. The model returns logits directly (not an
HF output object); `generate` and `get_log_likelihood` call `model(ids, attention_mask=...)` / `model(ids)`, so any
callable with that contract can stand in for it in tests.
"""

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from llada_jax.hf_remote.modeling_llada import LLaDANetwork

MASK_ID = 126336
EOS_ID = 126081
EOT_ID = 126348


class TorchLLaDA(nn.Module):
  """LLaDA's network from an official config.json dict, returning logits directly (not an HF output object).

  `state_dict()` has exactly the checkpoint names of docs/design.md §2 (`model.transformer.…`), so a published
  checkpoint loads with `load_state_dict` and tests hand identical weights to JAX. `causal=True`: the autoregressive
  baseline.
  """

  def __init__(self, config, causal=False):
    super().__init__()
    self.config = dict(config)
    self.causal = causal
    self.model = LLaDANetwork(config, causal=causal)

  def forward(self, input_ids, attention_mask=None, past_key_values=None, replace_at=None, use_cache=False):
    return self.model(input_ids, attention_mask, past_key_values, replace_at, use_cache)


@torch.no_grad()
def mitchell_init_(model, seed):
  """Official "mitchell" init (docs/design.md §1): truncated normal at ±3σ, depth-scaled output projections, norms = 1.

  Draws in fp32 on the CPU from a generator seeded with `seed`, then copies into the parameters, so the same seed
  gives the same weights whatever the model's dtype or device.
  """
  gen = torch.Generator().manual_seed(seed)

  def init(param, std):
    w = torch.empty(param.shape, dtype=torch.float32)
    nn.init.trunc_normal_(w, mean=0.0, std=std, a=-3 * std, b=3 * std, generator=gen)
    param.copy_(w)

  tr = model.model.transformer
  d_model = tr.wte.weight.shape[1]
  init(tr.wte.weight, 1 / math.sqrt(d_model))
  for layer, block in enumerate(tr.blocks):
    depth = math.sqrt(2 * (layer + 1))
    for lin in (block.q_proj, block.k_proj, block.v_proj, block.ff_proj, block.up_proj):
      init(lin.weight, 1 / math.sqrt(d_model))
    init(block.attn_out.weight, 1 / math.sqrt(d_model) / depth)
    init(block.ff_out.weight, 1 / math.sqrt(block.ff_out.weight.shape[1]) / depth)
    block.attn_norm.weight.fill_(1.0)
    block.ff_norm.weight.fill_(1.0)
  tr.ln_f.weight.fill_(1.0)
  if 'ff_out' in tr:
    init(tr.ff_out.weight, 1 / math.sqrt(d_model))
  return model


# ----------------------------------------------------------------------------------------------- sampler (§5)

def transfer_schedule(block_mask_index, steps):
  """Tokens to commit at each step of a block, per row: n // steps each, the first n % steps steps one more."""
  n = block_mask_index.sum(dim=1, keepdim=True)
  schedule = (n // steps).repeat(1, steps)
  schedule[torch.arange(steps, device=n.device)[None, :] < n % steps] += 1
  return schedule


def _cfg_logits(model, x, prompt_index, cfg_scale, mask_id, attention_mask=None):
  """Logits with classifier-free guidance: the unconditional copy has every prompt position set to mask_id."""
  if cfg_scale <= 0:
    return model(x, attention_mask=attention_mask)
  un_x = torch.where(prompt_index, mask_id, x)
  both_mask = None if attention_mask is None else torch.cat([attention_mask, attention_mask])
  cond, un = torch.chunk(model(torch.cat([x, un_x]), attention_mask=both_mask), 2, dim=0)
  return un + (cfg_scale + 1) * (cond - un)


def _uniform(shape, dtype, generator, device, noise_fn):
  """Uniforms for one sampler draw: from `noise_fn` if given, else torch.rand in `dtype` as the official code."""
  if noise_fn is None:
    return torch.rand(shape, generator=generator, device=device, dtype=dtype)
  return noise_fn(shape).to(device=device, dtype=dtype)


@torch.no_grad()
def generate(model, prompt, attention_mask=None, steps=128, gen_length=128, block_length=128, temperature=0.,
             cfg_scale=0., remasking='low_confidence', mask_id=MASK_ID, logits_eos_inf=False,
             confidence_eos_eot_inf=False, eos_id=EOS_ID, eot_id=EOT_ID, generator=None, noise_fn=None):
  """The official LLaDA reverse sampler (docs/design.md §5); returns (canvas (B, Lp + gen_length), model calls).

  `prompt` is (B, Lp), left-padded; `attention_mask` (B, Lp) marks padding with 0. Blocks are filled left to
  right, `steps // num_blocks` steps each; every step runs the model once on the whole canvas (CFG doubles the
  batch of that one call, so it still counts as one call) and commits the scheduled number of most confident
  masked positions of the current block. Nothing is ever re-masked. Masked positions *before* the current block
  (mask tokens inside the prompt) stay committable, as in the official code.

  `confidence_eos_eot_inf` reproduces the official chained-assignment quirk on purpose (the published evaluation
  numbers were produced with it): the confidence softmax sees the EoT column at -inf, and at temperature 0 the EOS
  column too, so such tokens are ranked last but can still be committed; x0 itself is chosen before the edit.

  Randomness: `torch.rand` with `generator`, or `noise_fn(shape)` -> uniforms in (0, 1) when given (to feed two
  implementations identical noise). Per step it is drawn for the Gumbel noise, shape (B, L, V), only if
  temperature > 0, then for the confidences, shape (B, L), only if remasking == 'random'.
  """
  if remasking not in ('low_confidence', 'random'):
    raise ValueError(f'remasking must be low_confidence or random, got {remasking!r}')
  if gen_length % block_length:
    raise ValueError(f'gen_length {gen_length} is not a multiple of block_length {block_length}')
  num_blocks = gen_length // block_length
  if steps % num_blocks:
    raise ValueError(f'steps {steps} is not a multiple of the number of blocks {num_blocks}')
  steps_per_block = steps // num_blocks

  b, lp = prompt.shape
  device = prompt.device
  x = torch.cat([prompt, torch.full((b, gen_length), mask_id, dtype=prompt.dtype, device=device)], dim=1)
  if attention_mask is not None:
    attention_mask = torch.cat([attention_mask, attention_mask.new_ones((b, gen_length))], dim=1)
  prompt_index = x != mask_id
  nfe = 0

  for block in range(num_blocks):
    start, end = lp + block * block_length, lp + (block + 1) * block_length
    schedule = transfer_schedule(x[:, start:end] == mask_id, steps_per_block)
    for step in range(steps_per_block):
      mask_index = x == mask_id
      logits = _cfg_logits(model, x, prompt_index, cfg_scale, mask_id, attention_mask)
      nfe += 1
      if logits_eos_inf:
        logits[:, :, eos_id] = -torch.inf

      if temperature > 0:
        # Gumbel-max in float64: argmax exp(l) / (-log u)^T samples softmax(l / T).
        u = _uniform(logits.shape, torch.float64, generator, device, noise_fn)
        x0 = torch.argmax(logits.to(torch.float64).exp() / (-torch.log(u)) ** temperature, dim=-1)
      else:
        x0 = torch.argmax(logits, dim=-1)

      if confidence_eos_eot_inf:
        logits[:, :, eot_id] = -torch.inf
        if temperature == 0:  # the official noisy logits *are* the logits at T = 0, so EOS is hit as well
          logits[:, :, eos_id] = -torch.inf

      if remasking == 'low_confidence':
        x0_p = torch.gather(F.softmax(logits, dim=-1), -1, x0[..., None])[..., 0]
      else:
        x0_p = _uniform((b, x.shape[1]), torch.float32, generator, device, noise_fn)
      x0_p[:, end:] = -torch.inf

      x0 = torch.where(mask_index, x0, x)
      confidence = torch.where(mask_index, x0_p, -torch.inf)
      # torch.topk leaves the order of ties unspecified; confidence-0 ties are common with the EOS/EoT quirk, so
      # rank with a stable sort (lowest index first among equals), the rule llada-jax documents.
      order = torch.sort(confidence, dim=-1, descending=True, stable=True).indices
      commit = torch.zeros_like(mask_index)
      for row in range(b):
        commit[row, order[row, :int(schedule[row, step])]] = True
      x[commit] = x0[commit]
  return x, nfe


def _fast_transfer(logits, mask_index, x, num_transfer, threshold, factor, temperature, noise):
  """Fast-dLLM's choice of positions to commit (docs/design.md §5.8), batch 1: (x0, bool commit mask)."""
  if temperature > 0:
    u = noise(logits.shape).to(torch.float64) if noise else torch.rand(logits.shape, dtype=torch.float64)
    x0 = torch.argmax(logits.to(torch.float64).exp() / (-torch.log(u)) ** temperature, dim=-1)
  else:
    x0 = torch.argmax(logits, dim=-1)
  p = F.softmax(logits.to(torch.float64), dim=-1)
  x0_p = torch.gather(p, -1, x0[..., None])[..., 0]
  x0 = torch.where(mask_index, x0, x)
  confidence = torch.where(mask_index, x0_p, -torch.inf)[0]
  order = torch.sort(confidence, descending=True, stable=True).indices
  candidates = int(mask_index.sum())
  if factor is not None:
    # threshold 1 - factor / (n + 1) for the n-th most confident (n from 1); the first always passes; the count
    # is the index of the first failure, except that a failure at the last candidate commits all of them.
    count = candidates
    for n in range(1, candidates):
      if confidence[order[n]] < 1 - factor / (n + 2):
        count = n if n < candidates - 1 else candidates
        break
    chosen = order[:count]
  elif threshold is not None:
    chosen = [order[0]] + [i for i in order[1:candidates] if confidence[i] >= threshold]
  else:
    chosen = order[:num_transfer]
  commit = torch.zeros_like(mask_index)
  commit[0, chosen] = True
  return x0, commit


@torch.no_grad()
def generate_fast(model, prompt, steps=128, gen_length=128, block_length=128, temperature=0., mask_id=MASK_ID,
                  threshold=None, factor=None, cache='none', noise_fn=None):
  """Fast-dLLM's sampler (docs/design.md §5.8), batch 1, no CFG: threshold or factor parallel decoding (else the step
  schedule of §5.3) and the prefix / dual block KV caches. Returns (canvas (1, Lp + gen_length), model calls).

  Every block's first call runs the whole canvas (and fills the cache); later calls feed `x[:, block_start:]` with
  the prefix's keys/values (prefix) or only the block with the whole canvas's (dual); only the block's masked
  positions are candidates. A block ends when it holds no mask; the empty call the reference makes after a block
  its first call already completed is skipped. Noise (temperature > 0) comes from torch.rand, or from
  `noise_fn(shape, block, step, block_offset)` (uniforms for the logits of that call, whose positions
  block_offset.. are the block's) to feed two implementations the same draws.
  """
  if prompt.shape[0] != 1 or cache not in ('none', 'prefix', 'dual'):
    raise ValueError('batch 1; cache none, prefix or dual')
  lp = prompt.shape[1]
  x = torch.cat([prompt, torch.full((1, gen_length), mask_id, dtype=prompt.dtype)], dim=1)
  num_blocks = gen_length // block_length
  steps_per_block = steps // num_blocks
  nfe = 0
  for block in range(num_blocks):
    start, end = lp + block * block_length, lp + (block + 1) * block_length
    schedule = transfer_schedule(x[:, start:end] == mask_id, steps_per_block)
    step = 0
    past = None
    while (x[:, start:end] == mask_id).any():
      nfe += 1
      if step == 0 or cache == 'none':
        if cache == 'none':
          logits = model(x)
        else:
          logits, past = model(x, use_cache=True)
          if cache == 'prefix':
            past = [(k[:, :, :start], v[:, :, :start]) for k, v in past]
        view = x
        offset = 0
      elif cache == 'prefix':
        view, offset = x[:, start:], start
        logits = model(view, past_key_values=past)
      else:
        view, offset = x[:, start:end], start
        logits = model(view, past_key_values=past, replace_at=start)
      mask_index = view == mask_id
      mask_index[:, :max(0, start - offset)] = False  # only the current block's positions are candidates
      mask_index[:, end - offset:] = False
      num_transfer = int(schedule[0, step]) if step < steps_per_block else 0
      noise = None if noise_fn is None else functools.partial(noise_fn, block=block, step=step,
                                                               block_offset=start - offset)
      x0, commit = _fast_transfer(logits, mask_index, view, num_transfer, threshold, factor, temperature, noise)
      view[commit] = x0[commit]  # views into x
      step += 1
  return x, nfe


# -------------------------------------------------------------------------------------------- likelihood (§6)

def stratified_masks(batch_size, prompt_length, answer_length, generator=None):
  """One mini-batch of likelihood masks (batch_size, Lp + T), bool, as the official `forward_process` draws them.

  Mask counts are stratified over [1, T] from one random offset k; each row masks exactly that many answer
  positions, picked by a random permutation; the prompt is never masked.
  """
  t = answer_length
  k = torch.randint(1, t + 1, (), generator=generator)
  counts = torch.round(torch.linspace(float(k), k + (batch_size - 1) * (t / batch_size), steps=batch_size)).long()
  counts = ((counts - 1) % t) + 1
  answer_mask = torch.arange(t).repeat(batch_size, 1) < counts[:, None]
  for row in range(batch_size):
    answer_mask[row] = answer_mask[row][torch.randperm(t, generator=generator)]
  return torch.cat([torch.zeros(batch_size, prompt_length, dtype=torch.bool), answer_mask], dim=1)


@torch.no_grad()
def get_log_likelihood(model, prompt, answer, mc_num=128, batch_size=16, cfg_scale=0., mask_id=MASK_ID,
                       generator=None, masks=None):
  """Official Monte-Carlo estimate of log p(answer | prompt) (docs/design.md §6), a lower bound; returns a Python float.

  `prompt` and `answer` are 1-D token tensors. Each of the mc_num // batch_size mini-batches scores
  Σ_masked CE / (x_i / T) per row and averages over rows; the result is minus the mean over mini-batches.
  `masks`: optional list of bool tensors (batch_size, Lp + T), one per mini-batch, used instead of drawing them,
  so another implementation can be compared value for value. As in the official code, the loss covers every
  position that holds mask_id after masking.
  """
  if mc_num % batch_size:
    raise ValueError(f'mc_num {mc_num} is not a multiple of batch_size {batch_size}')
  n_batches = mc_num // batch_size
  if masks is not None and len(masks) != n_batches:
    raise ValueError(f'got {len(masks)} masks for {n_batches} mini-batches')
  device = prompt.device
  lp, t = len(prompt), len(answer)
  seq = torch.cat([prompt, answer])[None, :].repeat(batch_size, 1)
  prompt_index = (torch.arange(lp + t, device=device) < lp)[None, :]

  losses = []
  for n in range(n_batches):
    is_mask = masks[n] if masks is not None else stratified_masks(batch_size, lp, t, generator)
    is_mask = is_mask.to(device=device, dtype=torch.bool)
    if is_mask.shape != seq.shape or (is_mask & prompt_index).any():
      raise ValueError(f'mask {n} must be ({batch_size}, {lp + t}) and leave the prompt unmasked')
    noisy = torch.where(is_mask, mask_id, seq)
    mask_index = noisy == mask_id
    p_mask = (is_mask[:, lp:].sum(dim=1, keepdim=True) / t).expand(-1, lp + t)  # x_i / T
    logits = _cfg_logits(model, noisy, prompt_index, cfg_scale, mask_id)
    loss = F.cross_entropy(logits[mask_index], seq[mask_index], reduction='none') / p_mask[mask_index]
    losses.append((loss.sum() / batch_size).item())
  return -sum(losses) / len(losses)


# ---------------------------------------------------------------------------------------------- training (§4)

def diffusion_loss(model, x, generator, eps=1e-3, mask_id=MASK_ID):
  """Pre-training loss (docs/design.md §4): per-row t ~ U(0, 1), mask each token with p = (1 - eps) t + eps, CE / p.

  Summed over masked tokens and divided by b·l, it upper-bounds the per-token NLL. `generator` must live on x's
  device. No attention mask, as in pre-training.
  """
  b, l = x.shape
  t = torch.rand(b, generator=generator, device=x.device)
  p = ((1 - eps) * t + eps)[:, None].expand(b, l)
  masked = torch.rand((b, l), generator=generator, device=x.device) < p
  logits = model(torch.where(masked, mask_id, x))
  ce = F.cross_entropy(logits[masked], x[masked], reduction='none')
  return (ce / p[masked]).sum() / (b * l)


def train_step(model, optimizer, x, generator, mask_id=MASK_ID):
  """One optimiser step on `diffusion_loss` (no clipping, no schedule: the benchmark's PyTorch baseline)."""
  optimizer.zero_grad(set_to_none=True)
  loss = diffusion_loss(model, x, generator, mask_id=mask_id)
  loss.backward()
  optimizer.step()
  return loss.item()
