"""Augmentation presets: per-example numpy transforms, chosen by name in the config.

A train transform maps (uint8 image at load size, np.random.Generator) to a float32
image_size x image_size x 3 array in [0, 255]; the eval transform is deterministic.
Normalisation (mean image or ImageNet statistics) happens later, in the pipeline.
"""
from typing import Callable

import numpy as np

PRESETS = ("xing", "none")


def _crop(image, top, left, size):
  return image[top:top + size, left:left + size]


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
  h, w = image.shape[:2]
  return _crop(image, (h - size) // 2, (w - size) // 2, size)


def eval_transform(image_size: int) -> Callable[[np.ndarray], np.ndarray]:
  return lambda image: center_crop(image, image_size).astype(np.float32)


def _xing(image_size):
  # Xing 4.1 (after AlexNet): a random image_size crop of the load_size image, mirrored half the time.
  def transform(image, rng):
    h, w = image.shape[:2]
    out = _crop(image, rng.integers(0, h - image_size + 1), rng.integers(0, w - image_size + 1), image_size)
    if rng.random() < 0.5:
      out = out[:, ::-1]
    return out.astype(np.float32)
  return transform


def train_transform(preset: str, image_size: int) -> Callable[[np.ndarray, np.random.Generator], np.ndarray]:
  if preset == "xing":
    return _xing(image_size)
  if preset == "none":
    return lambda image, rng: center_crop(image, image_size).astype(np.float32)
  raise ValueError(f"config.data.augment={preset!r}; known presets: {list(PRESETS)}")
