"""RandAugment (Cubuk et al., CVPRW 2020) in JAX, as LAE 2.3 uses it (N=2, M=9), on one float32
image with uint8 values (vmap it for a batch).

Each call picks num_ops operations uniformly, with replacement, from the paper's 14 and
applies each, with probability op_prob, at one shared magnitude M on the paper's 0..10
scale. op_prob defaults to 0.5 as in timm's 'rand-m9-n2' (the paper applies every chosen
op; op_prob=1 gives that): at M=9 two certain ops often leave little of a face. Signed
operations (rotate, shear, translate, the enhancements) flip their sign with probability
1/2, as in the paper's released code and timm's 'rand-m9-n2'.

Magnitude -> parameter, with f = M / 10 (timm's ranges; every op grows with M, as timm's
'*Increasing' ops: with the original mappings posterize, solarize and the enhancement
factors got *weaker* as M grew):
  rotate ±30 f degrees; shear_x/y ±0.3 f; translate_x/y ±0.45 f of the image size;
  color, contrast, brightness, sharpness: factor 1 ± 0.9 f (1 is the identity);
  posterize: keep 8 - round(4 f) bits; solarize: invert pixels >= 256 (1 - f);
  identity, auto_contrast, equalize ignore M.
Geometric ops fill uncovered pixels with mid grey (128), timm's choice, so an empty
border looks like the mean pixel rather than a black frame. The pixel rules are PIL's
(ImageOps, ImageEnhance), so the ops match what PIL does to the same uint8 image.

Under vmap every op is evaluated and the chosen one selected, so one slot costs all of
them: the five geometric ops share one bilinear warp (their matrices are selected), the
colour ops are elementwise or per-image look-up tables.
"""
import jax
import jax.numpy as jnp
import numpy as np

MAX_MAGNITUDE = 10.0
FILL = 128.0
OPS = ("identity", "auto_contrast", "equalize", "rotate", "solarize", "color", "posterize",
       "contrast", "brightness", "sharpness", "shear_x", "shear_y", "translate_x", "translate_y")
GEOMETRIC = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")


def check_options(num_ops, magnitude, op_prob):
  if num_ops < 0:
    raise ValueError(f"RandAugment num_ops must be >= 0, got {num_ops} (config.data.randaugment_num_ops)")
  if not 0 <= op_prob <= 1:
    raise ValueError(f"RandAugment op_prob must be in [0, 1], got {op_prob} (config.data.randaugment_op_prob)")
  if not 0 <= magnitude <= MAX_MAGNITUDE:
    raise ValueError(f"RandAugment magnitude must be in [0, {MAX_MAGNITUDE:g}], got {magnitude} "
                     f"(config.data.randaugment_magnitude)")


def bilinear(image, ys, xs, fill: float = FILL):
  """image sampled at (ys, xs) (pixel-index coordinates, broadcast together) by bilinear
  interpolation, PIL's rule: a point outside the image (more than half a pixel past the
  outer centres) is `fill`, one inside interpolates its neighbours clamped to the edge."""
  h, w, _ = image.shape
  ys, xs = jnp.broadcast_arrays(ys, xs)
  inside = ((ys >= -0.5) & (ys < h - 0.5) & (xs >= -0.5) & (xs < w - 0.5))[..., None]
  y0, x0 = jnp.floor(ys), jnp.floor(xs)
  wy, wx = (ys - y0)[..., None], (xs - x0)[..., None]
  y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)

  def at(y, x):
    return image[jnp.clip(y, 0, h - 1), jnp.clip(x, 0, w - 1)]

  top = at(y0, x0) * (1 - wx) + at(y0, x0 + 1) * wx
  bottom = at(y0 + 1, x0) * (1 - wx) + at(y0 + 1, x0 + 1) * wx
  return jnp.where(inside, top * (1 - wy) + bottom * wy, fill)


def affine(image, matrix, fill: float = FILL):
  """Warps by the 2x3 matrix mapping each output pixel centre (x, y, 1) to its input point,
  PIL's Image.AFFINE convention; the identity matrix returns the image exactly."""
  h, w, _ = image.shape
  ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) + 0.5, jnp.arange(w, dtype=jnp.float32) + 0.5,
                        indexing="ij")
  in_x = matrix[0, 0] * xs + matrix[0, 1] * ys + matrix[0, 2] - 0.5
  in_y = matrix[1, 0] * xs + matrix[1, 1] * ys + matrix[1, 2] - 0.5
  return jnp.clip(jnp.floor(bilinear(image, in_y, in_x, fill)), 0, 255)


def geometric_matrix(op, value, height: int, width: int):
  """The AFFINE matrix of geometric op index `op` (in GEOMETRIC) at signed parameter `value`
  (degrees for rotate, shear factor, pixels for translate); all about the image centre."""
  cx, cy = width / 2, height / 2
  angle = -jnp.deg2rad(value)
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  one, zero = jnp.ones_like(value), jnp.zeros_like(value)
  matrices = jnp.stack([
      # rotate counter-clockwise by value degrees about the centre (PIL's Image.rotate)
      jnp.stack([jnp.stack([cos, sin, cx - cos * cx - sin * cy]),
                 jnp.stack([-sin, cos, cy + sin * cx - cos * cy])]),
      jnp.stack([jnp.stack([one, value, -value * cy]), jnp.stack([zero, one, zero])]),    # shear_x
      jnp.stack([jnp.stack([one, zero, zero]), jnp.stack([value, one, -value * cx])]),    # shear_y
      jnp.stack([jnp.stack([one, zero, value]), jnp.stack([zero, one, zero])]),           # translate_x
      jnp.stack([jnp.stack([one, zero, zero]), jnp.stack([zero, one, value])]),           # translate_y
  ])
  return matrices[op]


def _lut(image, table):
  """Per-channel look-up: table (256, 3) indexed by the uint8 values of image (h, w, 3)."""
  index = image.astype(jnp.int32)
  return jnp.stack([table[index[..., c], c] for c in range(3)], axis=-1)


def _histogram(image):
  """(256, 3) counts of each uint8 value per channel."""
  index = image.astype(jnp.int32).reshape(-1, 3)
  return jnp.zeros((256, 3), jnp.float32).at[index, jnp.arange(3)].add(1.0)


def auto_contrast(image):
  # ImageOps.autocontrast(cutoff=0): per channel, stretch [min, max] to [0, 255]; flat channels unchanged.
  low, high = image.min(axis=(0, 1)), image.max(axis=(0, 1))
  scale = jnp.where(high > low, 255.0 / jnp.maximum(high - low, 1), 1.0)
  offset = jnp.where(high > low, -low * scale, 0.0)
  return jnp.clip(jnp.floor(image * scale + offset), 0, 255)


def equalize(image):
  # ImageOps.equalize: per channel, step = (count - count of the last used value) // 255;
  # lut[v] = (pixels below v + step // 2) // step; a channel with step 0 is unchanged.
  hist = _histogram(image)
  values = jnp.arange(256, dtype=jnp.float32)[:, None]
  last = jnp.max(jnp.where(hist > 0, values, -1), axis=0).astype(jnp.int32)
  step = jnp.floor((hist.sum(0) - hist[last, jnp.arange(3)]) / 255)
  below = jnp.cumsum(hist, axis=0) - hist
  table = jnp.minimum(jnp.floor((below + jnp.floor(step / 2)) / jnp.maximum(step, 1)), 255)
  table = jnp.where(step > 0, table, values)
  return _lut(image, table)


def solarize(image, threshold):
  return jnp.where(image >= threshold, 255 - image, image)


def posterize(image, bits):
  quantum = 2.0 ** (8 - bits)
  return jnp.floor(image / quantum) * quantum


def blend(degenerate, image, factor):
  """PIL's Image.blend, as every ImageEnhance uses it: truncated to uint8."""
  return jnp.clip(jnp.floor(degenerate + factor * (image - degenerate)), 0, 255)


def grayscale(image):
  """PIL's RGB -> L (ITU-R 601-2 luma, rounded), shape (h, w, 1)."""
  return jnp.round(image @ jnp.array([0.299, 0.587, 0.114], jnp.float32))[..., None]


def brightness(image, factor):
  return blend(jnp.zeros_like(image), image, factor)


def contrast(image, factor):
  # PIL: the degenerate image is the mean grey level, rounded.
  return blend(jnp.round(jnp.mean(grayscale(image))), image, factor)


def color(image, factor):
  return blend(grayscale(image), image, factor)


def smooth(image):
  """PIL's ImageFilter.SMOOTH (3x3 kernel 1 1 1 / 1 5 1 / 1 1 1, / 13), rounded; the border
  pixels are kept, as ImageEnhance.Sharpness does."""
  padded = jnp.pad(image, ((1, 1), (1, 1), (0, 0)))
  h, w = image.shape[:2]
  total = sum(padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)) + 4 * image
  smoothed = jnp.round(total / 13)
  border = np.zeros((h, w, 1), bool)
  border[[0, -1]] = border[:, [0, -1]] = True
  return jnp.where(border, image, smoothed)


def sample_ops(key, num_ops: int, op_prob: float):
  """(op indices, applied flags, signs +-1) of num_ops slots: ops uniform with replacement,
  each applied with probability op_prob, each sign +-1 with probability 1/2."""
  k_op, k_apply, k_sign = jax.random.split(key, 3)
  ops = jax.random.randint(k_op, (num_ops,), 0, len(OPS))
  applied = jax.random.bernoulli(k_apply, op_prob, (num_ops,))
  signs = jnp.where(jax.random.bernoulli(k_sign, 0.5, (num_ops,)), -1.0, 1.0)
  return ops, applied, signs


def apply_op(image, op, magnitude: float, sign=1.0):
  """RandAugment op index `op` (traced or not) at magnitude 0..10 with sign +-1 (signed ops only)."""
  f = magnitude / MAX_MAGNITUDE
  h, w = image.shape[:2]
  geometric = jnp.array([name in GEOMETRIC for name in OPS])[op]
  geo_index = jnp.array([GEOMETRIC.index(n) if n in GEOMETRIC else 0 for n in OPS])[op]
  geo_value = sign * jnp.array([{"rotate": 30 * f, "shear_x": 0.3 * f, "shear_y": 0.3 * f,
                                 "translate_x": 0.45 * f * w, "translate_y": 0.45 * f * h}.get(n, 0.0)
                                for n in OPS], jnp.float32)[op]
  identity = jnp.array([[1.0, 0, 0], [0, 1.0, 0]])
  matrix = jnp.where(geometric, geometric_matrix(geo_index, geo_value, h, w), identity)
  image = jax.lax.cond(geometric, lambda x: affine(x, matrix), lambda x: x, image)

  factor = 1 + sign * 0.9 * f
  branches = {
      "auto_contrast": auto_contrast,
      "equalize": equalize,
      "solarize": lambda x: solarize(x, 256 - round(256 * f)),
      "posterize": lambda x: posterize(x, 8 - round(4 * f)),
      "color": lambda x: color(x, factor),
      "contrast": lambda x: contrast(x, factor),
      "brightness": lambda x: brightness(x, factor),
      "sharpness": lambda x: blend(smooth(x), x, factor),
  }
  names = ("identity", *branches)
  pixel_index = jnp.array([names.index(n) if n in branches else 0 for n in OPS])[op]
  return jax.lax.switch(pixel_index, [lambda x: x, *branches.values()], image)


def rand_augment(image, key, num_ops: int = 2, magnitude: float = 9, op_prob: float = 0.5):
  """Applies num_ops operations drawn uniformly (with replacement) from OPS, each with
  probability op_prob, all at `magnitude`."""
  check_options(num_ops, magnitude, op_prob)
  if num_ops == 0:
    return image

  def slot(x, draw):  # one traced body for every slot: compiles once
    op, applied, sign = draw
    return jax.lax.cond(applied, lambda y: apply_op(y, op, magnitude, sign), lambda y: y, x), None
  return jax.lax.scan(slot, image, sample_ops(key, num_ops, op_prob))[0]

