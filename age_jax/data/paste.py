"""Face chips pasted into larger photos: a test of detection + alignment end to end.

Each chip is scaled by a factor in `scale`, rotated by an angle in `rotation` degrees (only its
own pixels are pasted: the rotated corners show the background) and placed at a random offset
inside a photo_size x photo_size picture of random background: a smooth random colour field
plus pixel noise, so no two photos share a background.

Optional sensor noise (`sensor_noise`) is added to the whole photo after pasting, at its full
resolution, as a camera adds it: Poisson-Gaussian, its standard deviation growing with the
brightness (sigma at mid grey = the given value), so a face pasted at 10x carries noise 10x finer
than the chip's own pixels, which the warp onto the canonical crop must average away.
"""
import numpy as np
from PIL import Image


def background(rng: np.random.Generator, size: int) -> np.ndarray:
  corners = rng.uniform(0, 255, (2, 2, 3))
  field = np.asarray(Image.fromarray(corners.astype(np.uint8)).resize((size, size), Image.BILINEAR), np.float64)
  return np.clip(field + rng.normal(0, 12, field.shape), 0, 255).astype(np.uint8)


def sensor_noise(photo: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
  """photo + per-pixel noise of variance sigma^2 (I + 32) / 160 at brightness I (sigma at I = 128)."""
  if sigma <= 0:
    return photo
  level = photo.astype(np.float32)
  noise = rng.standard_normal(photo.shape, dtype=np.float32) * (sigma * np.sqrt((level + 32) / 160))
  return np.clip(level + noise + 0.5, 0, 255).astype(np.uint8)


def photo_size_for(chip_side: int, max_scale: float, max_angle: float = 30.0) -> int:
  """The smallest photo side that holds a chip at max_scale rotated by up to max_angle degrees."""
  a = np.deg2rad(min(abs(max_angle), 45.0))
  return int(np.ceil(chip_side * max_scale * (np.cos(a) + np.sin(a)))) + 2


def paste(chip: np.ndarray, rng: np.random.Generator, photo_size: int | None = 320, scale=(0.3, 1.0),
          rotation=(-30.0, 30.0), noise: float = 0.0) -> tuple[np.ndarray, dict]:
  """(photo uint8 photo_size^2 x 3, {'scale', 'angle', 'centre'}) for one uint8 HxWx3 chip.
  photo_size None: just large enough for the largest scale and angle (photo_size_for);
  noise: sensor noise's sigma at mid grey, added at the photo's resolution (sensor_noise)."""
  s, angle = rng.uniform(*scale), rng.uniform(*rotation)
  h, w = chip.shape[:2]
  if photo_size is None:
    photo_size = photo_size_for(max(h, w), max(scale), max(abs(rotation[0]), abs(rotation[1])))
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
  return sensor_noise(np.asarray(photo), rng, noise), {"scale": float(s), "angle": float(angle), "centre": centre}
