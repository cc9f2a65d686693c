"""The rules every path from a face crop to an age and its interval shares, written once.

Training-side evaluation (numpy on the host, JAX in the predict step) and the jax.export artifact
(export.py) call these functions; only the array namespace `xp` differs: NUMPY or jax_ops()
(jax.numpy + jax.nn.softmax). The ONNX export converts the jax.export function itself
(inference/jaxpr_onnx.py), so a rule changed here changes everywhere.
The functions use only what the namespaces share: arithmetic, comparisons, slicing, and
xp.{asarray, astype, clip, ceil, sqrt, maximum, sum, argmax, softmax, take, float32, int32}.

  center_crop      the evaluation view of the 'xing'/'none' presets: the centred size x size window
  normalize        (pixels - mean) * scale, the run's normaliser
  regression_age / ordinal_age / softmax_age / softmax_spread   the formulations' decoders
  interval         the split-conformal interval from per-group quantiles (conformal.py), by the
                   LAE group of the predicted age (ages.group_index, which takes xp too)
"""
import types

import numpy as np

from age_jax import ages


def _numpy_softmax(x, axis=-1):
  e = np.exp(x - np.max(x, axis=axis, keepdims=True))
  return e / np.sum(e, axis=axis, keepdims=True)


NUMPY = types.SimpleNamespace(**{n: getattr(np, n) for n in (
    "asarray", "astype", "clip", "ceil", "sqrt", "maximum", "sum", "argmax", "take", "float32", "int32")},
    softmax=_numpy_softmax)


def jax_ops():
  """jax.numpy with jax.nn.softmax (imported on first use: numpy users never load JAX)."""
  import jax
  import jax.numpy as jnp
  return types.SimpleNamespace(**{n: getattr(jnp, n) for n in (
      "asarray", "astype", "clip", "ceil", "sqrt", "maximum", "sum", "argmax", "take", "float32", "int32")},
      softmax=jax.nn.softmax)


# ---- input ----

def center_crop(images, size: int):
  """The centred size x size window of the last three axes (H, W, C), one image or a batch."""
  h, w = images.shape[-3], images.shape[-2]
  if h < size or w < size:
    raise ValueError(f"image of {h}x{w} is smaller than the crop size {size}")
  top, left = (h - size) // 2, (w - size) // 2
  return images[..., top:top + size, left:left + size, :]


def normalize(pixels, mean, scale):
  """Float pixels in [0, 255] -> network input, (x - mean) * scale (Xing 3.1.1: the mean training
  image); numpy, JAX (traced in the train step too) or ONNX tensors alike."""
  return (pixels - mean) * scale


# ---- decoders: head outputs (B, K) -> ages (B,) ----

def regression_age(outputs, offset: float, scale: float, xp=NUMPY):
  """'mse'/'mae': age = offset + scale * the single output."""
  return offset + scale * xp.astype(outputs, xp.float32)[:, 0]


def ordinal_age(outputs, min_age: float, xp=NUMPY):
  """'or'/'coral' (Xing eq. 11): min_age + the number of logits > 0 (p > 0.5)."""
  return min_age + xp.astype(xp.sum(xp.astype(outputs > 0, xp.int32), axis=-1), xp.float32)


def softmax_age(outputs, bins, how: str, xp=NUMPY):
  """Softmax heads: the expectation over the bins' ages (DEX) or the age of the argmax bin."""
  if how == "argmax":
    return bins[0] + xp.astype(xp.argmax(outputs, axis=-1), xp.float32)
  if how != "expectation":
    raise ValueError(f"softmax decode {how!r}; expected 'argmax' or 'expectation'")
  return xp.sum(xp.softmax(xp.astype(outputs, xp.float32), axis=-1) * bins, axis=-1)


def softmax_spread(outputs, bins, xp=NUMPY):
  """Standard deviation (years) of the predicted age distribution."""
  p = xp.softmax(xp.astype(outputs, xp.float32), axis=-1)
  centred = bins - xp.sum(p * bins, axis=-1)[:, None]
  return xp.sqrt(xp.sum(p * (centred * centred), axis=-1))


# ---- intervals ----

def interval(age, spread, group_quantiles, normalized: bool, sigma_floor: float, xp=NUMPY):
  """(low, high): age -+ q[group of the predicted age], times max(spread, sigma_floor) for a
  'normalized' calibration; low is clipped at 0 (no negative ages)."""
  half = xp.take(group_quantiles, ages.group_index(age, xp))
  if normalized:
    half = half * xp.maximum(spread, sigma_floor)
  return xp.maximum(age - half, 0.0), age + half
