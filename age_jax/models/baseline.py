"""Xing et al. 2017 baseline network (section 3.1.1, Fig. 2).

AlexNet-like, after Levi & Hassner 2015: conv 96x7x7/4 -> max-pool 3/2 -> LRN ->
conv 256x5x5 -> max-pool 3/2 -> LRN -> conv 384x3x3 -> max-pool 3/2 -> FC 512 ->
FC 512, ReLU after every layer, dropout 0.5 after each FC. Pooling uses floor
('VALID') arithmetic, so a 227 px input gives a 6x6x384 map before FC1 (Caffe's
ceil-mode pooling would give 7x7; see BUILD_NOTES.md).

Layers are declared in `setup` so the multi-task networks (models/multitask.py) can
call the three parts on their own: `stem` (conv1-2, the shared/tapped part), `top`
(conv3, FC1, FC2) and `head` (the formulation's output layer).
"""
import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from age_jax.models import layers


class XingBaseline(nn.Module):
  """Returns {'features': FC2 activations, 'age': head outputs (none when
  num_outputs=0)}."""
  num_outputs: int = 1
  conv_features: Sequence[int] = (96, 256, 384)
  fc_features: Sequence[int] = (512, 512)
  dropout_rate: float = 0.5
  conv: Any = layers.Conv                  # a Conv ModuleDef and max pooling: get_model passes
  max_pool: Callable = layers.max_pool     #   config.model.conv_lowering's (models/layers.py)
  dtype: Any = jnp.float32

  def setup(self):
    c1, c2, c3 = self.conv_features
    conv = functools.partial(self.conv, dtype=self.dtype)
    self.conv1 = conv(c1, 7, 4, "VALID")
    self.conv2 = conv(c2, 5, 1, ((2, 2), (2, 2)))
    self.conv3 = conv(c3, 3, 1, ((1, 1), (1, 1)))
    for i, width in enumerate(self.fc_features):
      setattr(self, f"fc{i + 1}", nn.Dense(width, dtype=self.dtype))
    self.dropout = nn.Dropout(self.dropout_rate)
    self.lrn = layers.LocalResponseNorm()
    self.age_head = nn.Dense(self.num_outputs, dtype=self.dtype)

  def stem(self, x, train: bool):
    """conv1-2 with pooling and LRN: the part the multi-task networks share or tap."""
    x = self.lrn(self._pool(nn.relu(self.conv1(x))))
    conv1 = x
    x = self.lrn(self._pool(nn.relu(self.conv2(x))))
    return conv1, x

  def top(self, x, train: bool):
    """conv3 -> pool -> FC1 -> FC2 (with dropout): conv2 activations to features."""
    x = self._pool(nn.relu(self.conv3(x)))
    x = x.reshape(x.shape[0], -1)
    for i in range(len(self.fc_features)):
      x = nn.relu(getattr(self, f"fc{i + 1}")(x))
      x = self.dropout(x, deterministic=not train)
    return x

  def _pool(self, x):
    return self.max_pool(x, 3, 2, "VALID")

  def head(self, features):
    return self.age_head(features).astype(jnp.float32)

  def __call__(self, images, train: bool = False):
    x = images.astype(self.dtype)
    _, x = self.stem(x, train)
    features = self.top(x, train)
    if not self.num_outputs:  # a backbone only (models/heads.py: IdentityHead); the head is never built
      return {"features": features}
    return {"features": features, "age": self.head(features)}
