"""The pictures: loss curves and the denoising animation are real images of the data they are given."""

import numpy as np
from PIL import Image

from llada_jax import plots

MASK = 9


def test_commit_steps_are_the_first_step_showing_each_token():
  history = np.array([[MASK, 5, MASK, MASK], [4, 5, MASK, MASK], [4, 5, 7, MASK]])
  np.testing.assert_array_equal(plots.commit_steps(history, MASK), [2, 1, 3, -1])


def test_loss_curves_png(tmp_path):
  path = plots.loss_curves([(s, 9 - s / 10) for s in range(1, 50)], [(10, 8.0), (40, 6.0)],
                           str(tmp_path / "run" / "loss.png"), title="tiny", bits_per_nat_token=0.6)
  image = Image.open(path)
  assert image.format == "PNG" and image.size == (960, 540)
  assert len(set(image.convert("RGB").getdata())) > 20  # curves, not a blank canvas
  assert [p.name for p in (tmp_path / "run").iterdir()] == ["loss.png"]  # no temporary file left


def test_denoising_gif_has_a_frame_per_step_and_colours_by_commit_step(tmp_path):
  history = np.array([[MASK, 5, MASK], [4, 5, MASK], [4, 5, 7]])
  path = plots.denoising_gif(history, ["a", "b", "c"], MASK, str(tmp_path / "d.gif"), columns=2)
  image = Image.open(path)
  assert image.format == "GIF" and image.n_frames == 3
  cells = []
  for frame in range(3):
    image.seek(frame)
    rgb = image.convert("RGB")
    cells.append([rgb.getpixel((4 + 60, 26 + 2)), rgb.getpixel((4 + 64 + 60, 26 + 2)), rgb.getpixel((4 + 60, 48 + 2))])
  grey = (225, 225, 225)
  assert cells[0][0] == grey and cells[0][1] != grey and cells[0][2] == grey  # only position 1 after step 1
  assert cells[2][0] not in (grey, cells[2][1]) and cells[2][2] not in (grey, cells[2][0])  # one colour per step
  assert cells[2][1] == cells[0][1]  # a committed token keeps its colour


def test_denoising_gif_draws_long_tokens_whole_under_its_caption(tmp_path, monkeypatch):
  from PIL import ImageDraw, ImageFont
  drawn, text = [], ImageDraw.ImageDraw.text
  monkeypatch.setattr(ImageDraw.ImageDraw, "text", lambda self, xy, t, *a, **k: (drawn.append((xy, t)),
                                                                                   text(self, xy, t, *a, **k)))
  history = np.array([[MASK, 5], [4, 5]])
  caption = "denoising 2 tokens as one block: 2 steps, 1 token per step"
  path = plots.denoising_gif(history, [" Gloucestershire", "b"], MASK, str(tmp_path / "d.gif"), columns=2,
                             caption=caption)
  where = {t: xy for xy, t in drawn}
  assert caption in where and "Gloucestershire" in where  # not cut to the first 8 characters
  width = ImageFont.load_default(size=13).getlength("Gloucestershire")
  assert where["b"][0] > where["Gloucestershire"][0] + width  # the next column starts after the whole token
  image = Image.open(path)
  image.seek(1)
  cell = image.convert("RGB").getpixel((int(where["Gloucestershire"][0] + width), where["Gloucestershire"][1] - 1))
  assert cell != (255, 255, 255)  # the token's cell reaches past its last letter
