"""Augmentation presets, chosen by name in the config: training views are jitted JAX functions
of a uint8 batch, run on the devices inside the train step; evaluation views are numpy.

A training view maps (uint8 load_size x load_size x 3 image, PRNG key) to a float32
image_size x image_size x 3 array in [0, 255]; `batch_transform` vmaps it over a batch whose
example keys are fold_in(key(seed), global example position), so a view depends only on
(seed, position): not on the devices, the processes or where a run resumed.
Normalisation (mean image or ImageNet statistics) happens after, in the same program.

  'xing'  Xing 4.1: random image_size crop of the load_size image + mirror; eval centre crop.
  'lae'   LAE 2.3: random resized crop to image_size, mirror, colour jitter (brightness,
          contrast, saturation, hue in random order), then RandAugment N=2, M=9
          (randaugment.py); eval: resize to image_size / eval_crop_fraction, centre crop.
  'face'  for small aligned faces (the quickstart's 64 px): one bilinear warp of the load_size
          image onto image_size, rotated by up to +-face_rotation degrees, zoomed by a factor in
          face_scale, shifted by up to the crop margin, mirrored half the time; then colour jitter
          (color_jitter). Eval: the centre crop, which is the warp at angle 0, zoom 1, no shift.
  'none'  centre crop, train and eval alike.
Pixel arithmetic follows PIL's (uint8 after every colour operation), which these presets
used when they ran on the host.
"""
import math
from typing import Callable, Sequence

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from age_jax import inference_rules
from age_jax.data import randaugment

PRESETS = ("xing", "lae", "face", "none")

# LAE gives no ranges: torchvision's RandomResizedCrop defaults, and the usual ImageNet
# colour jitter strengths (brightness, contrast, saturation, hue) of MoCo / timm.
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
COLOR_JITTER = (0.4, 0.4, 0.4, 0.1)
FACE_ROTATION = 10.0        # 'face': degrees either way
FACE_SCALE = (0.9, 1.1)     # 'face': zoom factors (> 1 zooms in)
EVAL_CROP_FRACTION = 0.875  # timm / torchvision: resize to 256 for a 224 centre crop
CROP_TRIES = 10             # torchvision's RandomResizedCrop


# ---- evaluation views (host, deterministic) ----

def _check_size(image, size):
  h, w = image.shape[:2]
  if h < size or w < size:
    raise ValueError(f"cannot crop {size}x{size} from a {h}x{w} image: config.data.image_size "
                     f"must not exceed config.data.load_size")


def center_crop(image, size: int):
  """The centred size x size window (numpy or JAX; inference_rules.center_crop, as the exports)."""
  _check_size(image, size)
  return inference_rules.center_crop(image, size)


def _resize_short_side(image: np.ndarray, size: int) -> np.ndarray:
  h, w = image.shape[:2]
  if min(h, w) == size:
    return image
  scale = size / min(h, w)
  new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
  return np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))


def shifted_crops(image, size: int, shift: int):
  """(5, size, size, C): the centre crop and the four crops moved diagonally by `shift` pixels."""
  _check_size(image, size)
  h, w = image.shape[:2]
  top, left = (h - size) // 2, (w - size) // 2
  if shift < 1 or top < shift or left < shift:
    raise ValueError(f"config.data.eval_view_shift={shift}: expected 1 to {min(top, left)} pixels "
                     f"(the margin between load_size {h} and image_size {size})")
  return np.stack([image[top + dy:top + dy + size, left + dx:left + dx + size]
                   for dy, dx in ((0, 0), (-shift, -shift), (-shift, shift), (shift, -shift), (shift, shift))])


EVAL_VIEWS = (1, 5)


def eval_transform(image_size: int, preset: str = "xing",
                   eval_crop_fraction: float = EVAL_CROP_FRACTION, eval_views: int = 1,
                   eval_view_shift: int = 2) -> Callable[[np.ndarray], np.ndarray]:
  """The deterministic evaluation view of a preset: centre crop ('xing', 'face', 'none'), or
  resize the short side to image_size / eval_crop_fraction then centre crop ('lae').
  eval_views=5 (centre-crop presets): a (5, size, size, 3) stack, the centre crop and four crops
  moved by eval_view_shift pixels (shifted_crops), whose predictions evaluation averages."""
  _check_preset(preset)
  if eval_views not in EVAL_VIEWS:
    raise ValueError(f"config.data.eval_views={eval_views}; expected one of {list(EVAL_VIEWS)}")
  if eval_views == 5:
    if preset == "lae":
      raise ValueError("config.data.eval_views=5 shifts centre crops; the 'lae' preset resizes instead: use 1")
    return lambda image: shifted_crops(image, image_size, eval_view_shift).astype(np.float32)
  if preset == "lae":
    if not 0 < eval_crop_fraction <= 1:
      raise ValueError(f"config.data.eval_crop_fraction must be in (0, 1], got {eval_crop_fraction}")
    resize_to = round(image_size / eval_crop_fraction)
    return lambda image: center_crop(_resize_short_side(image, resize_to), image_size).astype(np.float32)
  return lambda image: center_crop(image, image_size).astype(np.float32)


# ---- training views (device, batched) ----

def example_keys(seed: int, positions: jax.Array) -> jax.Array:
  """One PRNG key per example: fold_in(key(seed), global position)."""
  base = jax.random.key(seed)
  return jax.vmap(lambda p: jax.random.fold_in(base, p))(positions.astype(jnp.uint32))


def _mirror(image, key):
  return jnp.where(jax.random.bernoulli(key), image[:, ::-1], image)


def _xing(image_size):
  # Xing 4.1 (after AlexNet): a random image_size crop of the load_size image, mirrored half the time.
  def transform(image, key):
    h, w = image.shape[:2]
    _check_size(image, image_size)
    k_top, k_left, k_flip = jax.random.split(key, 3)
    top = jax.random.randint(k_top, (), 0, h - image_size + 1)
    left = jax.random.randint(k_left, (), 0, w - image_size + 1)
    out = jax.lax.dynamic_slice(image, (top, left, 0), (image_size, image_size, image.shape[2]))
    return _mirror(out, k_flip).astype(jnp.float32)
  return transform


def warp(image, size: int, angle, zoom, shift, mirror):
  """The size x size view of a float (H, W, C) image rotated by `angle` (radians) about its centre,
  zoomed by `zoom`, moved by `shift` (dy, dx) pixels of the image and mirrored where `mirror`:
  bilinear, edge pixels repeated outside (jax.scipy.ndimage.map_coordinates)."""
  height, width = image.shape[:2]
  offsets = jnp.arange(size, dtype=jnp.float32) - (size - 1) / 2
  dy, dx = jnp.meshgrid(offsets, offsets, indexing="ij")
  dx = jnp.where(mirror, -dx, dx)
  cos, sin = jnp.cos(angle) / zoom, jnp.sin(angle) / zoom
  rows = (height - 1) / 2 + shift[0] + cos * dy - sin * dx
  cols = (width - 1) / 2 + shift[1] + sin * dy + cos * dx
  channel = lambda c: jax.scipy.ndimage.map_coordinates(c, [rows, cols], order=1, mode="nearest")
  return jax.vmap(channel, in_axes=-1, out_axes=-1)(image)


def _face(image_size, face_rotation, face_scale, color_jitter_strengths):
  if not 0 < face_scale[0] <= face_scale[1]:
    raise ValueError(f"config.data.face_scale={tuple(face_scale)}: expected 0 < low <= high")
  if not 0 <= face_rotation <= 180:
    raise ValueError(f"config.data.face_rotation={face_rotation}: expected degrees in [0, 180]")
  _check_jitter(color_jitter_strengths)
  jitter, max_angle = tuple(color_jitter_strengths), math.radians(face_rotation)

  def transform(image, key):
    _check_size(image, image_size)
    k_angle, k_zoom, k_shift, k_flip, k_jitter = jax.random.split(key, 5)
    margin = (np.array(image.shape[:2], np.float32) - image_size) / 2  # the 'xing' crop's range
    angle = jax.random.uniform(k_angle, (), minval=-max_angle, maxval=max_angle)
    zoom = jnp.exp(jax.random.uniform(k_zoom, (), minval=math.log(face_scale[0]), maxval=math.log(face_scale[1])))
    shift = jax.random.uniform(k_shift, (2,), minval=-margin, maxval=margin)
    out = warp(image.astype(jnp.float32), image_size, angle, zoom, shift, jax.random.bernoulli(k_flip))
    out = jnp.clip(jnp.round(out), 0, 255)
    return color_jitter(out, k_jitter, jitter) if any(jitter) else out
  return transform


def _none(image_size):
  return lambda image, key: center_crop(image, image_size).astype(jnp.float32)


def random_resized_crop_box(key, height: int, width: int, scale: Sequence[float] = CROP_SCALE,
                            ratio: Sequence[float] = CROP_RATIO):
  """(top, left, h, w) int32 scalars of a crop covering scale[0]..scale[1] of the area with
  aspect ratio (w / h) log-uniform in ratio; torchvision's RandomResizedCrop rule: the first
  of 10 tries that fits, else the largest centred crop whose ratio is clamped into range."""
  k_area, k_ratio, k_top, k_left = jax.random.split(key, 4)
  target = height * width * jax.random.uniform(k_area, (CROP_TRIES,), minval=scale[0], maxval=scale[1])
  aspect = jnp.exp(jax.random.uniform(k_ratio, (CROP_TRIES,), minval=math.log(ratio[0]),
                                      maxval=math.log(ratio[1])))
  ws = jnp.round(jnp.sqrt(target * aspect)).astype(jnp.int32)
  hs = jnp.round(jnp.sqrt(target / aspect)).astype(jnp.int32)
  fits = (ws > 0) & (ws <= width) & (hs > 0) & (hs <= height)
  first = jnp.argmax(fits)
  in_ratio = width / height  # static: the fallback box is a constant of the image size
  if in_ratio < min(ratio):
    fallback = (round(width / min(ratio)), width)
  elif in_ratio > max(ratio):
    fallback = (height, round(height * max(ratio)))
  else:
    fallback = (height, width)
  found = fits.any()
  h = jnp.where(found, hs[first], fallback[0])
  w = jnp.where(found, ws[first], fallback[1])
  top = jnp.where(found, jax.random.randint(k_top, (), 0, height - h + 1), (height - h) // 2)
  left = jnp.where(found, jax.random.randint(k_left, (), 0, width - w + 1), (width - w) // 2)
  return top, left, h, w


def _resample_taps(start, length, size: int, in_size: int):
  """(indices, weights), each (size, taps), of PIL's bilinear resize of [start, start + length)
  to size pixels: a triangle filter widened by the downscale factor (antialiasing), weights
  summing to 1. taps covers the widest filter, that of the whole in_size."""
  scale = length / size
  support = jnp.maximum(scale, 1.0)
  taps = 2 * math.ceil(max(in_size / size, 1.0)) + 1
  centres = start + (jnp.arange(size, dtype=jnp.float32) + 0.5) * scale
  indices = jnp.floor(centres - support + 0.5).astype(jnp.int32)[:, None] + jnp.arange(taps)
  weights = jnp.maximum(0.0, 1.0 - jnp.abs(indices + 0.5 - centres[:, None]) / support)
  weights = jnp.where((indices >= 0) & (indices < in_size), weights, 0.0)
  return jnp.clip(indices, 0, in_size - 1), weights / weights.sum(axis=1, keepdims=True)


def _filter(image, indices, weights, axis):
  # Gathers and an ordered sum of the taps: per-example arithmetic that does not depend on how
  # the batch is split over devices (a matmul's blocking would).
  taps = jnp.take(image, indices, axis=axis)  # the output axis, then a taps axis after it
  w = weights.reshape(weights.shape + (1,) * (image.ndim - axis - 1))
  return sum(jax.lax.index_in_dim(taps, t, axis + 1, keepdims=False) * jax.lax.index_in_dim(w, t, 1, keepdims=False)
             for t in range(weights.shape[1]))


def resized_crop(image, top, left, h, w, size: int, mirror=False):
  """The box (top, left, h, w) of a float image resized to size x size as PIL's
  resize(box=..., BILINEAR) does: horizontal pass, uint8 rounding, vertical pass;
  mirror=True flips the result left-right."""
  height, width = image.shape[:2]
  cols, col_weights = _resample_taps(left, w, size, width)
  cols, col_weights = jnp.where(mirror, cols[::-1], cols), jnp.where(mirror, col_weights[::-1], col_weights)
  rows, row_weights = _resample_taps(top, h, size, height)
  across = jnp.clip(jnp.round(_filter(image, cols, col_weights, axis=1)), 0, 255)
  return jnp.clip(jnp.round(_filter(across, rows, row_weights, axis=0)), 0, 255)


def adjust_hue(image, shift):
  """Rotates the HSV hue by `shift` of a full turn (dm-pix), back to uint8 values."""
  return jnp.clip(jnp.round(dm_pix.adjust_hue(image / 255.0, shift) * 255.0), 0, 255)


def _check_jitter(strengths):
  if len(strengths) != 4 or min(strengths) < 0 or strengths[3] > 0.5:
    raise ValueError(f"config.data.color_jitter={tuple(strengths)}: expected (brightness, contrast, "
                     f"saturation, hue), all >= 0, hue <= 0.5")


def color_jitter(image, key, strengths: Sequence[float] = COLOR_JITTER):
  """torchvision ColorJitter: brightness, contrast and saturation factors uniform in
  [max(0, 1 - s), 1 + s], hue shift uniform in [-h, h], applied in a random order; a zero
  strength is the identity."""
  _check_jitter(strengths)
  brightness, contrast, saturation, hue = strengths
  k_order, k_factors = jax.random.split(key)
  lows = jnp.array([max(0.0, 1 - brightness), max(0.0, 1 - contrast), max(0.0, 1 - saturation), -hue])
  highs = jnp.array([1 + brightness, 1 + contrast, 1 + saturation, hue])
  factors = jax.random.uniform(k_factors, (4,), minval=lows, maxval=highs)
  ops = (randaugment.brightness, randaugment.contrast, randaugment.color, adjust_hue)

  def adjust(x, op):  # one traced body for the four positions: compiles once
    return jax.lax.switch(op, ops, x, factors[op]), None
  return jax.lax.scan(adjust, image, jax.random.permutation(k_order, 4))[0]


def _lae(image_size, crop_scale, crop_ratio, color_jitter_strengths, randaugment_num_ops,
         randaugment_magnitude, randaugment_op_prob):
  if not 0 < crop_scale[0] <= crop_scale[1] <= 1:
    raise ValueError(f"config.data.crop_scale={tuple(crop_scale)}: expected 0 < low <= high <= 1")
  if not 0 < crop_ratio[0] <= crop_ratio[1]:
    raise ValueError(f"config.data.crop_ratio={tuple(crop_ratio)}: expected 0 < low <= high")
  _check_jitter(color_jitter_strengths)
  randaugment.check_options(randaugment_num_ops, randaugment_magnitude, randaugment_op_prob)
  jitter = tuple(color_jitter_strengths)

  def transform(image, key):
    k_box, k_flip, k_jitter, k_rand = jax.random.split(key, 4)
    box = random_resized_crop_box(k_box, image.shape[0], image.shape[1], crop_scale, crop_ratio)
    out = resized_crop(image.astype(jnp.float32), *box, image_size, mirror=jax.random.bernoulli(k_flip))
    if any(jitter):
      out = color_jitter(out, k_jitter, jitter)
    return randaugment.rand_augment(out, k_rand, randaugment_num_ops, randaugment_magnitude,
                                    randaugment_op_prob)
  return transform


def _check_preset(preset):
  if preset not in PRESETS:
    raise ValueError(f"config.data.augment={preset!r}; known presets: {list(PRESETS)}")


def train_transform(preset: str, image_size: int, *, crop_scale: Sequence[float] = CROP_SCALE,
                    crop_ratio: Sequence[float] = CROP_RATIO,
                    color_jitter: Sequence[float] = COLOR_JITTER, randaugment_num_ops: int = 2,
                    randaugment_magnitude: float = 9,
                    randaugment_op_prob: float = 0.5, face_rotation: float = FACE_ROTATION,
                    face_scale: Sequence[float] = FACE_SCALE) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """The random training view (uint8 image, key) -> float32 image of a preset; the keyword
  options are used by 'lae' and 'face' (color_jitter, face_*)."""
  _check_preset(preset)
  if preset == "xing":
    return _xing(image_size)
  if preset == "face":
    return _face(image_size, face_rotation, tuple(face_scale), tuple(color_jitter))
  if preset == "lae":
    return _lae(image_size, tuple(crop_scale), tuple(crop_ratio), tuple(color_jitter),
                randaugment_num_ops, randaugment_magnitude, randaugment_op_prob)
  return _none(image_size)


def batch_transform(preset: str, image_size: int, seed: int, **options) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """(uint8 images (B, L, L, 3), int positions (B,)) -> float32 views (B, S, S, 3), traceable
  inside a jitted, batch-sharded step."""
  transform = train_transform(preset, image_size, **options)
  return lambda images, positions: jax.vmap(transform)(images, example_keys(seed, positions))


# The config.data fields (and defaults) behind the keyword options above.
TRAIN_OPTIONS = {"crop_scale": CROP_SCALE, "crop_ratio": CROP_RATIO, "color_jitter": COLOR_JITTER,
                 "randaugment_num_ops": 2, "randaugment_magnitude": 9, "randaugment_op_prob": 0.5,
                 "face_rotation": FACE_ROTATION, "face_scale": FACE_SCALE}
EVAL_OPTIONS = {"eval_crop_fraction": EVAL_CROP_FRACTION, "eval_views": 1, "eval_view_shift": 2}


def options_from_config(data_cfg, names: dict) -> dict:
  """{name: config.data.<name>} for the option names given, falling back to the defaults
  above when the config lacks a field; e.g. train_transform(cfg.augment, cfg.image_size,
  **options_from_config(cfg, TRAIN_OPTIONS))."""
  return {name: data_cfg.get(name, default) if hasattr(data_cfg, "get") else getattr(data_cfg, name, default)
          for name, default in names.items()}
