"""Self-checks of the PyTorch reference, so that it can be trusted as the oracle for llada-jax.

Each check compares against an independent formulation (a naive forward, a hand-written loss) or a rule of
docs/design.md that a wrong implementation would break. Tiny fp32 models keep the file to a few seconds.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from llada_jax.torch_reference import (TorchLLaDA, diffusion_loss, generate, get_log_likelihood, mitchell_init_,
                             stratified_masks, train_step, transfer_schedule)

MASK, EOS, EOT = 126, 124, 125  # inside the tiny vocabulary, like the real ids inside LLaDA's


def tiny_config(**overrides):
  config = dict(d_model=64, n_heads=4, n_kv_heads=4, n_layers=2, mlp_hidden_size=96, vocab_size=120,
                embedding_size=128, rope_theta=10000.0, rms_norm_eps=1e-5, weight_tying=False,
                max_sequence_length=64)
  config.update(overrides)
  return config


def tiny_model(seed=0, causal=False, **overrides):
  return mitchell_init_(TorchLLaDA(tiny_config(**overrides), causal=causal), seed).eval()


def spec_names(n_layers, tied):
  names = ['model.transformer.wte.weight', 'model.transformer.ln_f.weight']
  for i in range(n_layers):
    names += [f'model.transformer.blocks.{i}.{leaf}.weight' for leaf in (
      'attn_norm', 'q_proj', 'k_proj', 'v_proj', 'attn_out', 'ff_norm', 'ff_proj', 'up_proj', 'ff_out')]
  if not tied:
    names.append('model.transformer.ff_out.weight')
  return set(names)


@pytest.mark.parametrize('tied', [False, True])
def test_state_dict_names_and_shapes_match_spec(tied):
  model = TorchLLaDA(tiny_config(n_kv_heads=2, weight_tying=tied))
  sd = model.state_dict()
  assert set(sd) == spec_names(2, tied)
  assert sd['model.transformer.wte.weight'].shape == (128, 64)
  assert sd['model.transformer.blocks.1.k_proj.weight'].shape == (2 * 16, 64)  # n_kv_heads * head_dim rows
  assert sd['model.transformer.blocks.0.ff_proj.weight'].shape == (96, 64)
  assert sd['model.transformer.blocks.0.ff_out.weight'].shape == (64, 96)
  assert model(torch.zeros(1, 3, dtype=torch.long)).shape == (1, 3, 128)


def test_mitchell_init_stds_and_truncation():
  model = tiny_model(mlp_hidden_size=256, n_layers=2)
  sd = model.state_dict()
  for name, std in [('blocks.0.q_proj', 1 / 8), ('blocks.1.attn_out', 1 / 8 / 2),
                    ('blocks.1.ff_out', 1 / 16 / 2), ('ff_out', 1 / 8)]:
    w = sd[f'model.transformer.{name}.weight']
    assert w.abs().max() <= 3 * std + 1e-7
    assert abs(w.std().item() - 0.986 * std) < 0.05 * std  # a ±3σ truncated normal has std 0.986σ
  assert torch.equal(sd['model.transformer.ln_f.weight'], torch.ones(64))


def test_gqa_equals_mha_with_repeated_kv_heads():
  gqa = tiny_model(n_kv_heads=2)
  mha = TorchLLaDA(tiny_config(n_kv_heads=4)).eval()
  sd = gqa.state_dict()
  for name, w in list(sd.items()):
    if name.endswith(('k_proj.weight', 'v_proj.weight')):  # kv head j serves query heads 2j and 2j+1
      sd[name] = w.view(2, 16, 64).repeat_interleave(2, dim=0).reshape(64, 64)
  mha.load_state_dict(sd)
  ids = torch.randint(0, 120, (2, 9))
  torch.testing.assert_close(gqa(ids), mha(ids), rtol=1e-5, atol=1e-5)


def naive_forward(model, ids, attention_mask):
  """The network again, written differently: complex-number RoPE, explicit softmax with -inf key masking."""
  cfg, sd = model.config, {k.removeprefix('model.transformer.'): v for k, v in model.state_dict().items()}
  d, nh, nkv, eps = cfg['d_model'], cfg['n_heads'], cfg['n_kv_heads'], cfg['rms_norm_eps']
  hd, t = d // nh, ids.shape[1]

  def norm(x, w):
    return w * x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)

  freq = cfg['rope_theta'] ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
  rot = torch.polar(torch.ones(t, hd // 2, dtype=torch.float64), torch.arange(t)[:, None] * freq).to(torch.complex64)

  def rope(z):  # pairs (i, i + hd/2) rotate together, as one complex number
    c = torch.complex(z[..., :hd // 2], z[..., hd // 2:]) * rot[:, None, :]
    return torch.cat([c.real, c.imag], dim=-1)

  x = sd['wte.weight'][ids]
  for i in range(cfg['n_layers']):
    p = {k.split('.', 2)[2]: v for k, v in sd.items() if k.startswith(f'blocks.{i}.')}
    h = norm(x, p['attn_norm.weight'])
    q = rope((h @ p['q_proj.weight'].T).unflatten(-1, (nh, hd)))
    k = rope((h @ p['k_proj.weight'].T).unflatten(-1, (nkv, hd)))
    v = (h @ p['v_proj.weight'].T).unflatten(-1, (nkv, hd))
    kv_head = torch.arange(nh) // (nh // nkv)
    scores = torch.einsum('bqhd,bkhd->bhqk', q, k[:, :, kv_head]) / math.sqrt(hd)
    scores = scores.masked_fill(attention_mask[:, None, None, :] == 0, -torch.inf)
    att = torch.einsum('bhqk,bkhd->bqhd', scores.softmax(-1), v[:, :, kv_head]).flatten(2)
    x = x + att @ p['attn_out.weight'].T
    h = norm(x, p['ff_norm.weight'])
    x = x + (F.silu(h @ p['ff_proj.weight'].T) * (h @ p['up_proj.weight'].T)) @ p['ff_out.weight'].T
  return norm(x, sd['ln_f.weight']) @ sd['ff_out.weight'].T


def test_forward_with_left_padding_matches_naive_forward():
  model = tiny_model(n_kv_heads=2)
  ids = torch.randint(0, 120, (2, 10))
  mask = torch.ones(2, 10, dtype=torch.long)
  mask[1, :4] = 0  # left padding: pads take positions 0..3; padded queries are computed too and must match
  torch.testing.assert_close(model(ids, attention_mask=mask), naive_forward(model, ids, mask), rtol=1e-4, atol=1e-4)


def test_padded_keys_are_invisible():
  model = tiny_model()
  ids = torch.randint(0, 120, (1, 10))
  mask = torch.ones(1, 10, dtype=torch.long)
  mask[0, :3] = 0
  other = ids.clone()
  other[0, :3] = (ids[0, :3] + 1) % 120
  torch.testing.assert_close(model(ids, mask)[0, 3:], model(other, mask)[0, 3:], rtol=0, atol=1e-6)
  # RoPE scores depend only on relative positions, so the pads' shift of 3 positions changes nothing but rounding.
  torch.testing.assert_close(model(ids, mask)[0, 3:], model(ids[:, 3:])[0], rtol=1e-4, atol=1e-4)


def test_causal_model_ignores_the_future():
  model = tiny_model(causal=True)
  ids = torch.randint(0, 120, (1, 8))
  changed = ids.clone()
  changed[0, 5:] = (ids[0, 5:] + 7) % 120
  torch.testing.assert_close(model(ids)[0, :5], model(changed)[0, :5], rtol=0, atol=1e-6)
  assert not torch.allclose(tiny_model()(ids)[0, :5], tiny_model()(changed)[0, :5])


def test_transfer_schedule():
  block_masks = torch.tensor([[True] * 10 + [False] * 2, [True] * 4 + [False] * 8])
  assert transfer_schedule(block_masks, 4).tolist() == [[3, 3, 2, 2], [1, 1, 1, 1]]


class Recorder:
  """Wraps a model and keeps every input canvas, to watch the sampler step by step."""

  def __init__(self, model):
    self.model, self.inputs = model, []

  def __call__(self, ids, attention_mask=None):
    self.inputs.append(ids.clone())
    return self.model(ids, attention_mask=attention_mask)


def test_generate_greedy_commits_one_token_per_step_block_by_block():
  rec = Recorder(tiny_model())
  prompt = torch.randint(0, 120, (2, 5))
  x, nfe = generate(rec, prompt, steps=8, gen_length=8, block_length=4, mask_id=MASK)
  assert nfe == 8 and len(rec.inputs) == 8
  assert torch.equal(x[:, :5], prompt) and not (x == MASK).any()
  for step, canvas in enumerate(rec.inputs):
    assert ((canvas == MASK).sum(1) == 8 - step).all()
    if step < 4:  # the second block stays untouched while the first is being filled
      assert (canvas[:, 9:] == MASK).all()


def test_generate_cfg_without_attention_mask_uses_an_unconditional_copy():
  rec = Recorder(tiny_model())
  prompt = torch.randint(0, 120, (2, 4))
  x, nfe = generate(rec, prompt, steps=4, gen_length=4, block_length=4, cfg_scale=1.5, mask_id=MASK)
  assert nfe == 4 and not (x == MASK).any()
  first = rec.inputs[0]
  assert first.shape == (4, 8)
  assert torch.equal(first[:2, :4], prompt) and (first[2:, :4] == MASK).all()


class FixedLogits:
  """A stand-in model whose logits are given, to test the sampler's ranking rules in isolation."""

  def __init__(self, logits):
    self.logits = logits

  def __call__(self, ids, attention_mask=None):
    return self.logits.clone()


def eos_eot_logits():
  # Positions 1..4 of the canvas (after a 1-token prompt) are sure of EOS, EoT, 7, 8; EOS/EoT are the most sure.
  logits = torch.zeros(1, 5, 128)
  for pos, (tok, val) in enumerate([(EOS, 30.0), (EOT, 30.0), (7, 10.0), (8, 9.0)], start=1):
    logits[0, pos, tok] = val
  return logits


def first_commit(temperature, quirk):
  """Canvas position committed by the first step, and the final canvas."""
  rec = Recorder(FixedLogits(eos_eot_logits()))
  x, _ = generate(rec, torch.tensor([[3]]), steps=4, gen_length=4, block_length=4, temperature=temperature,
                  mask_id=MASK, confidence_eos_eot_inf=quirk, eos_id=EOS, eot_id=EOT, generator=torch.Generator())
  return (rec.inputs[1][0] != rec.inputs[0][0]).nonzero().item(), x


def test_confidence_eos_eot_quirk():
  assert first_commit(0.0, quirk=False)[0] in (1, 2)  # most confident first
  assert first_commit(0.0, quirk=True)[0] == 3  # EOS and EoT ranked last at T = 0
  assert first_commit(1.0, quirk=True)[0] == 1  # at T > 0 only EoT is affected, EOS stays first
  assert first_commit(0.0, quirk=True)[1][0].tolist() == [3, EOS, EOT, 7, 8]  # ranked last, still committed


def test_logits_eos_inf_forbids_eos():
  x, _ = generate(FixedLogits(eos_eot_logits()), torch.tensor([[3]]), steps=4, gen_length=4, block_length=4,
                  mask_id=MASK, logits_eos_inf=True, eos_id=EOS)
  assert EOS not in x[0].tolist() and x[0, 2] == EOT


def test_noise_fn_replaces_torch_rand():
  model = tiny_model()
  prompt = torch.randint(0, 120, (2, 3))
  shapes = []

  def noise_fn(shape):
    shapes.append(tuple(shape))
    # the dtypes torch.rand uses inside generate: float64 Gumbel noise, float32 random confidences
    return torch.rand(shape, generator=noise_gen, dtype=torch.float64 if len(shape) == 3 else torch.float32)

  kwargs = dict(steps=4, gen_length=4, block_length=4, temperature=1.0, remasking='random', mask_id=MASK)
  noise_gen = torch.Generator().manual_seed(7)
  with_fn, _ = generate(model, prompt, noise_fn=noise_fn, **kwargs)
  with_gen, _ = generate(model, prompt, generator=torch.Generator().manual_seed(7), **kwargs)
  assert shapes[:2] == [(2, 7, 128), (2, 7)] and len(shapes) == 8
  assert torch.equal(with_fn, with_gen)


def test_stratified_masks_cover_all_counts():
  masks = stratified_masks(6, 3, 6, torch.Generator().manual_seed(1))
  assert masks.shape == (6, 9) and not masks[:, :3].any()
  assert sorted(masks.sum(1).tolist()) == [1, 2, 3, 4, 5, 6]  # b == T: every count once


@pytest.mark.parametrize('cfg_scale', [0.0, 0.5])
def test_log_likelihood_with_injected_masks_matches_hand_computation(cfg_scale):
  model = tiny_model()
  prompt, answer = torch.randint(0, 120, (4,)), torch.randint(0, 120, (5,))
  gen = torch.Generator().manual_seed(3)
  masks = [stratified_masks(3, 4, 5, gen) for _ in range(2)]
  got = get_log_likelihood(model, prompt, answer, mc_num=6, batch_size=3, cfg_scale=cfg_scale, mask_id=MASK,
                           masks=masks)

  seq = torch.cat([prompt, answer])
  batch_losses = []
  for m in masks:
    total = 0.0
    for row in m:
      noisy = torch.where(row, MASK, seq)
      with torch.no_grad():
        logits = model(noisy[None])[0]
        if cfg_scale:
          un = model(torch.cat([torch.full((4,), MASK), noisy[4:]])[None])[0]
          logits = un + (cfg_scale + 1) * (logits - un)
      nll = -logits.log_softmax(-1)[row, seq[row]]
      total += nll.sum().item() / (row.sum().item() / 5)
    batch_losses.append(total / 3)
  assert got == pytest.approx(-sum(batch_losses) / 2, rel=1e-5)


def test_diffusion_loss_matches_hand_computation_and_train_step_learns():
  model = tiny_model()
  x = torch.randint(0, 120, (3, 16), generator=torch.Generator().manual_seed(4))
  loss = diffusion_loss(model, x, torch.Generator().manual_seed(5), mask_id=MASK)

  gen = torch.Generator().manual_seed(5)
  t = torch.rand(3, generator=gen)
  p = (1 - 1e-3) * t + 1e-3
  u = torch.rand((3, 16), generator=gen)
  expected = 0.0
  for r in range(3):
    masked = u[r] < p[r]
    logits = model(torch.where(masked, MASK, x[r])[None])[0]
    expected += (F.cross_entropy(logits[masked], x[r][masked], reduction='sum') / p[r]).item()
  assert loss.item() == pytest.approx(expected / 48, rel=1e-5)

  optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
  gen = torch.Generator().manual_seed(0)
  losses = [train_step(model, optimizer, x, gen, mask_id=MASK) for _ in range(30)]
  assert all(math.isfinite(v) for v in losses)
  # The same masks (same generator seed) before and after: training on x must lower its loss.
  after = diffusion_loss(model, x, torch.Generator().manual_seed(5), mask_id=MASK).item()
  assert after < 0.8 * loss.item()
