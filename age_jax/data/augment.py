"""Augmentation presets: per-example numpy transforms, chosen by name in the config.

A train transform maps (uint8 image at load size, np.random.Generator) to a float32
image_size x image_size x 3 array in [0, 255]; the eval transform is deterministic.
Normalisation (mean image or ImageNet statistics) happens later, in the pipeline.

  'xing'  Xing 4.1: random image_size crop of the load_size image + mirror; eval centre crop.
  'lae'   LAE 2.3: random resized crop to image_size, mirror, colour jitter (brightness,
          contrast, saturation, hue in random order), then RandAugment N=2, M=9
          (randaugment.py); eval: resize to image_size / eval_crop_fraction, centre crop.
  'none'  centre crop, train and eval alike.
All randomness comes from the Generator passed in, so a seed fixes the output.
"""
import math
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageEnhance

from age_jax.data import randaugment

PRESETS = ("xing", "lae", "none")

# LAE gives no ranges: torchvision's RandomResizedCrop defaults, and the usual ImageNet
# colour jitter strengths (brightness, contrast, saturation, hue) of MoCo / timm.
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
COLOR_JITTER = (0.4, 0.4, 0.4, 0.1)
EVAL_CROP_FRACTION = 0.875  # timm / torchvision: resize to 256 for a 224 centre crop


def _crop(image, top, left, size):
  return image[top:top + size, left:left + size]


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
  h, w = image.shape[:2]
  if h < size or w < size:
    raise ValueError(f"cannot crop {size}x{size} from a {h}x{w} image: config.data.image_size "
                     f"must not exceed config.data.load_size")
  return _crop(image, (h - size) // 2, (w - size) // 2, size)


def _resize_short_side(image: np.ndarray, size: int) -> np.ndarray:
  h, w = image.shape[:2]
  if min(h, w) == size:
    return image
  scale = size / min(h, w)
  new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
  return np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))


def eval_transform(image_size: int, preset: str = "xing",
                   eval_crop_fraction: float = EVAL_CROP_FRACTION) -> Callable[[np.ndarray], np.ndarray]:
  """The deterministic evaluation view of a preset: centre crop ('xing', 'none'), or
  resize the short side to image_size / eval_crop_fraction then centre crop ('lae')."""
  _check_preset(preset)
  if preset == "lae":
    if not 0 < eval_crop_fraction <= 1:
      raise ValueError(f"config.data.eval_crop_fraction must be in (0, 1], got {eval_crop_fraction}")
    resize_to = round(image_size / eval_crop_fraction)
    return lambda image: center_crop(_resize_short_side(image, resize_to), image_size).astype(np.float32)
  return lambda image: center_crop(image, image_size).astype(np.float32)


def _xing(image_size):
  # Xing 4.1 (after AlexNet): a random image_size crop of the load_size image, mirrored half the time.
  def transform(image, rng):
    h, w = image.shape[:2]
    if h < image_size or w < image_size:
      center_crop(image, image_size)  # raises the error that names the config fields
    out = _crop(image, rng.integers(0, h - image_size + 1), rng.integers(0, w - image_size + 1), image_size)
    if rng.random() < 0.5:
      out = out[:, ::-1]
    return out.astype(np.float32)
  return transform


def random_resized_crop_box(height: int, width: int, rng: np.random.Generator,
                            scale: Sequence[float] = CROP_SCALE,
                            ratio: Sequence[float] = CROP_RATIO) -> tuple[int, int, int, int]:
  """(top, left, h, w) of a crop covering scale[0]..scale[1] of the area with aspect ratio
  (w / h) log-uniform in ratio; torchvision's RandomResizedCrop rule: 10 tries, then the
  largest centred crop whose ratio is clamped into range."""
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(*log_ratio))
    w = round(math.sqrt(target_area * aspect))
    h = round(math.sqrt(target_area / aspect))
    if 0 < w <= width and 0 < h <= height:
      return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, round(width / min(ratio))
  elif in_ratio > max(ratio):
    h, w = height, round(height * max(ratio))
  else:
    h, w = height, width
  return (height - h) // 2, (width - w) // 2, h, w


def hue_shift(rgb: np.ndarray, shift: float) -> np.ndarray:
  """Rotates the HSV hue of uint8 RGB pixels by `shift` of a full turn, keeping HSV value and
  saturation. Done in numpy: a hue rotation keeps each pixel's max and min channel, so only
  the hue sextant position moves (PIL's HSV round trip costs 8 ms at 224 px, this 2 ms)."""
  # Channel planes and explicit wrap-arounds: numpy's float % and reductions over a length-3
  # last axis are several times slower than these elementwise ops.
  r, g, b = np.moveaxis(rgb, -1, 0).astype(np.float32)
  high, low = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
  chroma = high - low
  safe = np.where(chroma > 0, chroma, np.float32(1))
  hue = np.where(high == r, (g - b) / safe, np.where(high == g, (b - r) / safe + 2, (r - g) / safe + 4))
  hue += np.float32(6 * (shift % 1.0))  # hue in sextants, now in [-1, 11)
  hue -= 6 * np.floor(hue / 6)          # -> [0, 6)
  # HSV -> RGB: channel n (R: 5, G: 3, B: 1) = max - chroma * clip(min(k, 4 - k), 0, 1), k = (n + hue) mod 6.
  out = np.empty(rgb.shape, np.uint8)
  for channel, n in enumerate((5, 3, 1)):
    k = hue + n
    k = np.where(k >= 6, k - 6, k)
    value = high - chroma * np.clip(np.minimum(k, 4 - k), 0, 1)
    out[..., channel] = np.clip(np.rint(value), 0, 255)
  return out


def _hue_shift(image: Image.Image, shift: float) -> Image.Image:
  return Image.fromarray(hue_shift(np.asarray(image), shift))


def _check_jitter(strengths):
  if len(strengths) != 4 or min(strengths) < 0 or strengths[3] > 0.5:
    raise ValueError(f"config.data.color_jitter={tuple(strengths)}: expected (brightness, contrast, "
                     f"saturation, hue), all >= 0, hue <= 0.5")


def color_jitter(image: Image.Image, rng: np.random.Generator,
                 strengths: Sequence[float] = COLOR_JITTER) -> Image.Image:
  """torchvision ColorJitter: brightness, contrast and saturation factors uniform in
  [max(0, 1 - s), 1 + s], hue shift uniform in [-h, h], applied in a random order.
  A strength of 0 skips its adjustment (no random number is drawn for it)."""
  _check_jitter(strengths)
  brightness, contrast, saturation, hue = strengths
  enhancers = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
  for op in rng.permutation(4):
    if op < 3:
      s = (brightness, contrast, saturation)[op]
      if s > 0:
        image = enhancers[op](image).enhance(rng.uniform(max(0.0, 1 - s), 1 + s))
    elif hue > 0:
      image = _hue_shift(image, rng.uniform(-hue, hue))
  return image


def _lae(image_size, crop_scale, crop_ratio, color_jitter_strengths, randaugment_num_ops,
         randaugment_magnitude, randaugment_op_prob):
  if not 0 < crop_scale[0] <= crop_scale[1] <= 1:
    raise ValueError(f"config.data.crop_scale={tuple(crop_scale)}: expected 0 < low <= high <= 1")
  if not 0 < crop_ratio[0] <= crop_ratio[1]:
    raise ValueError(f"config.data.crop_ratio={tuple(crop_ratio)}: expected 0 < low <= high")
  _check_jitter(color_jitter_strengths)

  def transform(image, rng):
    top, left, h, w = random_resized_crop_box(image.shape[0], image.shape[1], rng, crop_scale, crop_ratio)
    out = Image.fromarray(image).resize((image_size, image_size), Image.BILINEAR,
                                        box=(left, top, left + w, top + h))
    if rng.random() < 0.5:
      out = out.transpose(Image.FLIP_LEFT_RIGHT)
    out = color_jitter(out, rng, color_jitter_strengths)
    out = randaugment.rand_augment(out, rng, randaugment_num_ops, randaugment_magnitude, randaugment_op_prob)
    return np.asarray(out, np.float32)
  return transform


def _check_preset(preset):
  if preset not in PRESETS:
    raise ValueError(f"config.data.augment={preset!r}; known presets: {list(PRESETS)}")


def train_transform(preset: str, image_size: int, *, crop_scale: Sequence[float] = CROP_SCALE,
                    crop_ratio: Sequence[float] = CROP_RATIO,
                    color_jitter: Sequence[float] = COLOR_JITTER, randaugment_num_ops: int = 2,
                    randaugment_magnitude: float = 9,
                    randaugment_op_prob: float = 0.5,
                    ) -> Callable[[np.ndarray, np.random.Generator], np.ndarray]:
  """The random training view of a preset; the keyword options are used by 'lae' only."""
  _check_preset(preset)
  if preset == "xing":
    return _xing(image_size)
  if preset == "lae":
    return _lae(image_size, tuple(crop_scale), tuple(crop_ratio), tuple(color_jitter),
                randaugment_num_ops, randaugment_magnitude, randaugment_op_prob)
  return lambda image, rng: center_crop(image, image_size).astype(np.float32)


# The config.data fields (and defaults) behind the keyword options above.
TRAIN_OPTIONS = {"crop_scale": CROP_SCALE, "crop_ratio": CROP_RATIO, "color_jitter": COLOR_JITTER,
                 "randaugment_num_ops": 2, "randaugment_magnitude": 9, "randaugment_op_prob": 0.5}
EVAL_OPTIONS = {"eval_crop_fraction": EVAL_CROP_FRACTION}


def options_from_config(data_cfg, names: dict) -> dict:
  """{name: config.data.<name>} for the option names given, falling back to the defaults
  above when the config lacks a field; e.g. train_transform(cfg.augment, cfg.image_size,
  **options_from_config(cfg, TRAIN_OPTIONS))."""
  return {name: data_cfg.get(name, default) if hasattr(data_cfg, "get") else getattr(data_cfg, name, default)
          for name, default in names.items()}
