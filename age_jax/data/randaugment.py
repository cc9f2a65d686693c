"""RandAugment (Cubuk et al., CVPRW 2020) on PIL images, as LAE 2.3 uses it (N=2, M=9).

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
border looks like the mean pixel rather than a black frame.
"""
import numpy as np
from PIL import Image, ImageEnhance, ImageOps

MAX_MAGNITUDE = 10.0
FILL = (128, 128, 128)
OPS = ("identity", "auto_contrast", "equalize", "rotate", "solarize", "color", "posterize",
       "contrast", "brightness", "sharpness", "shear_x", "shear_y", "translate_x", "translate_y")


def _signed(value, rng):
  return -value if rng.random() < 0.5 else value


def _affine(image, coefficients):
  # PIL's AFFINE data maps each output pixel (x, y) to the input point (a x + b y + c, d x + e y + f).
  return image.transform(image.size, Image.AFFINE, coefficients, Image.BILINEAR, fillcolor=FILL)


def _shear(image, shear, axis):
  # Sheared about the image centre so the face stays in the middle.
  w, h = image.size
  if axis == 0:
    return _affine(image, (1, shear, -shear * h / 2, 0, 1, 0))
  return _affine(image, (1, 0, 0, shear, 1, -shear * w / 2))


def _translate(image, dx, dy):
  return _affine(image, (1, 0, dx, 0, 1, dy))


def _enhance(enhancer):
  return lambda image, f, rng: enhancer(image).enhance(1 + _signed(0.9 * f, rng))


_APPLY = {
    "identity": lambda image, f, rng: image,
    "auto_contrast": lambda image, f, rng: ImageOps.autocontrast(image),
    "equalize": lambda image, f, rng: ImageOps.equalize(image),
    "rotate": lambda image, f, rng: image.rotate(_signed(30 * f, rng), Image.BILINEAR, fillcolor=FILL),
    "solarize": lambda image, f, rng: ImageOps.solarize(image, 256 - round(256 * f)),
    "color": _enhance(ImageEnhance.Color),
    "posterize": lambda image, f, rng: ImageOps.posterize(image, 8 - round(4 * f)),
    "contrast": _enhance(ImageEnhance.Contrast),
    "brightness": _enhance(ImageEnhance.Brightness),
    "sharpness": _enhance(ImageEnhance.Sharpness),
    "shear_x": lambda image, f, rng: _shear(image, _signed(0.3 * f, rng), 0),
    "shear_y": lambda image, f, rng: _shear(image, _signed(0.3 * f, rng), 1),
    "translate_x": lambda image, f, rng: _translate(image, _signed(0.45 * f * image.size[0], rng), 0),
    "translate_y": lambda image, f, rng: _translate(image, 0, _signed(0.45 * f * image.size[1], rng)),
}
assert set(_APPLY) == set(OPS)


def _check_magnitude(magnitude):
  if not 0 <= magnitude <= MAX_MAGNITUDE:
    raise ValueError(f"RandAugment magnitude must be in [0, {MAX_MAGNITUDE:g}], got {magnitude}")


def apply_op(image: Image.Image, name: str, magnitude: float, rng: np.random.Generator) -> Image.Image:
  """One RandAugment operation on an RGB PIL image at magnitude 0..10."""
  if name not in _APPLY:
    raise ValueError(f"unknown RandAugment op {name!r}; known: {list(OPS)}")
  _check_magnitude(magnitude)
  return _APPLY[name](image, magnitude / MAX_MAGNITUDE, rng)


def rand_augment(image: Image.Image, rng: np.random.Generator, num_ops: int = 2, magnitude: float = 9,
                 op_prob: float = 0.5, ops: tuple[str, ...] = OPS) -> Image.Image:
  """Applies num_ops operations drawn uniformly (with replacement) from ops, each with
  probability op_prob, all at `magnitude`."""
  if num_ops < 0:
    raise ValueError(f"RandAugment num_ops must be >= 0, got {num_ops}")
  if not 0 <= op_prob <= 1:
    raise ValueError(f"RandAugment op_prob must be in [0, 1], got {op_prob}")
  _check_magnitude(magnitude)
  for index in rng.integers(0, len(ops), size=num_ops):
    if rng.random() < op_prob:
      image = apply_op(image, ops[int(index)], magnitude, rng)
  return image
