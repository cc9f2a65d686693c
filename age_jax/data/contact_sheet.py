"""A contact sheet of augmented views: what the model is fed, for a person to look at."""
import os

import jax
import numpy as np
from PIL import Image, ImageDraw

from age_jax.data import augment

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
GAP = 4  # pixels of white between tiles

def pick_files(folder: str, n: int, seed: int) -> list[str]:
  """n image files of the folder, drawn without replacement by seed, in name order."""
  names = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_SUFFIXES))
  if not names:
    raise ValueError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
  chosen = np.random.default_rng(seed).choice(len(names), size=min(n, len(names)), replace=False)
  return [os.path.join(folder, names[i]) for i in sorted(chosen)]


def contact_sheet(images: list[np.ndarray], preset: str, image_size: int, views: int, seed: int,
                  captions: list[str] | None = None, **train_options) -> np.ndarray:
  """uint8 grid: one row per image, the eval view first, then `views` training views made by
  the training path itself (augment.batch_transform, jitted; view v of row r is example
  position r * views + v)."""
  evaluate = augment.eval_transform(image_size, preset)
  train = jax.jit(augment.batch_transform(preset, image_size, seed, **train_options))
  stacked = np.repeat(np.stack(images), views, axis=0)
  trained = np.asarray(train(stacked, np.arange(len(stacked), dtype=np.uint32)))
  step = image_size + GAP
  sheet = np.full((len(images) * step - GAP, (1 + views) * step - GAP, 3), 255, np.uint8)
  for row, image in enumerate(images):
    tiles = [evaluate(image)] + list(trained[row * views:(row + 1) * views])
    for col, tile in enumerate(tiles):
      sheet[row * step:row * step + image_size, col * step:col * step + image_size] = (
          np.clip(np.rint(tile), 0, 255).astype(np.uint8))
  if captions:
    draw_captions(sheet, captions, step)
  return sheet


def draw_captions(sheet: np.ndarray, captions: list[str], step: int) -> None:
  image = Image.fromarray(sheet)
  draw = ImageDraw.Draw(image)
  for row, caption in enumerate(captions):
    draw.text((3, row * step + 2), caption, fill=(255, 255, 0), stroke_width=1, stroke_fill=(0, 0, 0))
  sheet[...] = np.asarray(image)
