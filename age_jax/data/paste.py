"""Face chips pasted into larger photos: a test of detection + alignment end to end.

Each chip is scaled by a factor in `scale`, rotated by an angle in `rotation` degrees (only its
own pixels are pasted: the rotated corners show the background) and placed at a random offset
inside a photo_size x photo_size picture of random background: a smooth random colour field
plus pixel noise, so no two photos share a background.
"""
import numpy as np
from PIL import Image


def background(rng: np.random.Generator, size: int) -> np.ndarray:
  corners = rng.uniform(0, 255, (2, 2, 3))
  field = np.asarray(Image.fromarray(corners.astype(np.uint8)).resize((size, size), Image.BILINEAR), np.float64)
  return np.clip(field + rng.normal(0, 12, field.shape), 0, 255).astype(np.uint8)


def paste(chip: np.ndarray, rng: np.random.Generator, photo_size: int = 320, scale=(0.3, 1.0),
          rotation=(-30.0, 30.0)) -> tuple[np.ndarray, dict]:
  """(photo uint8 photo_size^2 x 3, {'scale', 'angle', 'centre'}) for one uint8 HxWx3 chip."""
  s, angle = rng.uniform(*scale), rng.uniform(*rotation)
  h, w = chip.shape[:2]
  size = (max(1, round(w * s)), max(1, round(h * s)))
  face = Image.fromarray(chip).resize(size, Image.BILINEAR).rotate(angle, Image.BILINEAR, expand=True)
  mask = Image.new("L", size, 255).rotate(angle, Image.BILINEAR, expand=True)
  if max(face.size) > photo_size:
    raise ValueError(f"a {w}x{h} chip at scale {s:.2f} does not fit a {photo_size} px photo")
  x = int(rng.integers(0, photo_size - face.size[0] + 1))
  y = int(rng.integers(0, photo_size - face.size[1] + 1))
  photo = Image.fromarray(background(rng, photo_size))
  photo.paste(face, (x, y), mask)
  centre = (x + face.size[0] / 2, y + face.size[1] / 2)
  return np.asarray(photo), {"scale": float(s), "angle": float(angle), "centre": centre}
