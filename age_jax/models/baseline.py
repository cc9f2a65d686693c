"""Xing et al. 2017 baseline network (section 3.1.1, Fig. 2).

AlexNet-like, after Levi & Hassner 2015: conv 96x7x7/4 -> max-pool 3/2 -> LRN ->
conv 256x5x5 -> max-pool 3/2 -> LRN -> conv 384x3x3 -> max-pool 3/2 -> FC 512 ->
FC 512, ReLU after every layer, dropout 0.5 after each FC. Pooling uses floor
('VALID') arithmetic, so a 227 px input gives a 6x6x384 map before FC1 (Caffe's
ceil-mode pooling would give 7x7; see BUILD_NOTES.md).
"""
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from age_jax.models import layers


def _max_pool(x):
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class XingBaseline(nn.Module):
  """Returns {'features': FC2 activations, 'age': head outputs}."""
  num_outputs: int = 1
  conv_features: Sequence[int] = (96, 256, 384)
  fc_features: Sequence[int] = (512, 512)
  dropout_rate: float = 0.5
  conv_lowering: str = "auto"
  dtype: Any = jnp.float32

  def setup_conv(self, features, kernel, stride, padding, name):
    return layers.Conv(features, kernel, stride, padding, lowering=self.conv_lowering,
                       dtype=self.dtype, name=name)

  def stem(self, x, train: bool):
    """conv1-2 with pooling and LRN: the part the multi-task networks share or tap."""
    c1, c2, _ = self.conv_features
    x = nn.relu(self.setup_conv(c1, 7, 4, "VALID", "conv1")(x))
    x = layers.LocalResponseNorm()(_max_pool(x))
    conv1 = x
    x = nn.relu(self.setup_conv(c2, 5, 1, ((2, 2), (2, 2)), "conv2")(x))
    x = layers.LocalResponseNorm()(_max_pool(x))
    return conv1, x

  @nn.compact
  def __call__(self, images, train: bool = False):
    x = images.astype(self.dtype)
    conv1, x = self.stem(x, train)
    x = nn.relu(self.setup_conv(self.conv_features[2], 3, 1, ((1, 1), (1, 1)), "conv3")(x))
    x = _max_pool(x)
    x = x.reshape(x.shape[0], -1)
    for i, width in enumerate(self.fc_features):
      x = nn.relu(nn.Dense(width, dtype=self.dtype, name=f"fc{i + 1}")(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    age = nn.Dense(self.num_outputs, dtype=self.dtype, name="age_head")(x)
    return {"features": x, "age": age.astype(jnp.float32)}
