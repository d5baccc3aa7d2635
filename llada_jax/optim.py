"""The optimizer: AdamW with the paper's Warmup-Stable-Decay schedule (or cosine / constant) and clipping."""

import jax
import optax

from llada_jax.config import TrainConfig


def learning_rate_schedule(train: TrainConfig) -> optax.Schedule:
  """Linear warm-up to `lr`, then: hold and decay linearly to `final_lr` over the last `decay_fraction` of the
  steps (wsd, the LLaDA paper's), cosine to `final_lr`, or hold (constant)."""
  steps, warmup = int(train.steps), min(int(train.warmup_steps), int(train.steps))
  warm = optax.linear_schedule(0.0, train.lr, max(warmup, 1))
  if train.schedule == "constant":
    rest = optax.constant_schedule(train.lr)
  elif train.schedule == "cosine":
    rest = optax.cosine_decay_schedule(train.lr, max(steps - warmup, 1), alpha=train.final_lr / train.lr)
  else:
    decay = max(int(round(steps * train.decay_fraction)), 1)
    hold = max(steps - warmup - decay, 0)
    rest = optax.join_schedules(
        [optax.constant_schedule(train.lr), optax.linear_schedule(train.lr, train.final_lr, decay)], [hold])
  return optax.join_schedules([warm, rest], [warmup])


def _decay_mask(params, decay_norms_and_embeddings: bool):
  """Weight decay on matrices only, unless asked for everywhere: norms and embeddings are left alone."""
  def leaf(path, _):
    name = jax.tree_util.keystr(path, simple=True, separator="/")
    return decay_norms_and_embeddings or not (name.endswith("norm") or name in ("ln_f", "wte"))
  return jax.tree_util.tree_map_with_path(leaf, params)


def make_optimizer(train: TrainConfig) -> optax.GradientTransformation:
  return optax.chain(
      optax.clip_by_global_norm(train.grad_clip) if train.grad_clip > 0 else optax.identity(),
      optax.adamw(learning_rate_schedule(train), b1=train.b1, b2=train.b2, weight_decay=train.weight_decay,
                  mask=lambda p: _decay_mask(p, train.decay_norms_and_embeddings)),
  )
