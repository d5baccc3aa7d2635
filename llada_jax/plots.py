"""Pictures where a person would rather look than read: the loss curves of a run, and the denoising of a sample.

Both are written atomically (a sibling temporary file renamed over the target) and need no display (Agg).
"""

import io
from typing import Sequence

import numpy as np

from llada_jax import paths


def new_figure():
  """(figure, axes) of the project's PNG size, drawn without a display (Agg)."""
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt
  return plt.subplots(figsize=(8, 4.5), dpi=120)


def save_png(fig, path: str) -> str:
  """Lays out `fig`, writes it atomically as a PNG at `path`, frees it; returns the path."""
  from matplotlib import pyplot as plt
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png")
  plt.close(fig)
  paths.write_atomically(path, buffer.getvalue())
  return path


def loss_curves(losses: Sequence[tuple[int, float]], val_losses: Sequence[tuple[int, float]], path: str, *,
                title: str = "", bits_per_nat_token: float | None = None) -> str:
  """Train loss and the validation bound over steps as a PNG at `path`; with `bits_per_nat_token` (bits/byte per
  nat/token of the validation text) a right axis reads the bound in bits per byte. Returns the path."""
  fig, ax = new_figure()
  if losses:
    steps, values = zip(*losses)
    ax.plot(steps, values, color="#9ab", linewidth=1, label="train loss (one batch)")
  if val_losses:
    steps, values = zip(*val_losses)
    ax.plot(steps, values, "o-", color="#c33", linewidth=2, markersize=4, label="validation bound")
  ax.set_xlabel("step")
  ax.set_ylabel("nats / token (upper bound on NLL)")
  ax.grid(alpha=0.3)
  ax.legend(loc="upper right")
  if bits_per_nat_token:
    right = ax.secondary_yaxis("right", functions=(lambda v: v * bits_per_nat_token,
                                                   lambda b: b / bits_per_nat_token))
    right.set_ylabel("bits / byte")
  if title:
    ax.set_title(title)
  return save_png(fig, path)


def commit_steps(history: np.ndarray, mask_id: int) -> np.ndarray:
  """For the generated part of the canvas after each step (steps, length), all masked before the first step: the
  step (1-based) at which each position was committed, -1 where it is still masked at the end. A committed token
  is never masked again, so that step is the first one that shows it."""
  unmasked = np.asarray(history) != mask_id
  return np.where(unmasked.any(axis=0), unmasked.argmax(axis=0) + 1, -1)


def denoising_gif(history: np.ndarray, pieces: Sequence[str], mask_id: int, path: str, *, columns: int = 16,
                  frame_ms: int = 120, caption: str | None = None) -> str:
  """An animated GIF of one sample's canvases (steps, gen_length): each frame shows the canvas after one step, the
  still-masked positions grey, and every committed token coloured by the step it was committed at (early = dark
  blue, late = yellow). `pieces[i]` is the text of position i in the final canvas, drawn whole: each column is as
  wide as its widest token. `caption`, what the picture shows (the sampling setting), heads every frame. Returns
  the path."""
  from matplotlib import colormaps
  from PIL import Image, ImageDraw, ImageFont
  history = np.asarray(history)
  n_steps, length = history.shape
  when = commit_steps(history, mask_id)
  colours = colormaps["viridis"](np.linspace(0, 0.9, max(n_steps, 1)))[:, :3]
  font = ImageFont.load_default(size=13)
  texts = [piece.replace("\n", "\\n").strip() or "_" for piece in pieces]  # ASCII: the bitmap font lacks ⏎ and ␣
  widths = [64] * min(columns, length)
  for i, text in enumerate(texts):
    widths[i % columns] = max(widths[i % columns], int(font.getlength(text)) + 9)
  lefts = np.cumsum([4] + widths[:-1])
  cell_h, top = 22, 26 if caption is None else 44
  rows = -(-length // columns)
  size = (max(sum(widths) + 8, int(font.getlength(caption or "")) + 8), rows * cell_h + top + 4)
  frames = []
  for step in range(n_steps):
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.text((4, 4), f"step {step + 1}/{n_steps}", fill="black", font=font)
    if caption is not None:
      draw.text((4, 22), caption, fill="black", font=font)
    for i in range(length):
      x, y, w = int(lefts[i % columns]), top + (i // columns) * cell_h, widths[i % columns]
      if history[step, i] == mask_id:
        draw.rectangle((x, y, x + w - 3, y + cell_h - 3), fill=(225, 225, 225))
        continue
      colour = tuple(int(255 * c) for c in colours[when[i] - 1])
      draw.rectangle((x, y, x + w - 3, y + cell_h - 3), fill=colour)
      light = sum(colour) > 420
      draw.text((x + 3, y + 3), texts[i], fill="black" if light else "white", font=font)
    frames.append(image)
  buffer = io.BytesIO()
  frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=frame_ms,
                 loop=0)
  paths.write_atomically(path, buffer.getvalue())
  return path
