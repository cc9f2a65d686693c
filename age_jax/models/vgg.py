"""VGG-16 (Simonyan & Zisserman 2015, configuration D) in torchvision's layout: Xing's NetVGG (4.6).

13 convolutions 3x3 (pad 1, bias, ReLU) in five blocks, each closed by a 2x2 max-pool;
adaptive average pooling to 7x7 (as torchvision, so any input size >= 32 px works and
FC6 always sees 7*7*512 inputs); FC6 4096 -> FC7 4096 with ReLU and dropout; then the
formulation's head 'age_head' in place of the 1000-way classifier. Layer names follow
Caffe (conv1_1 ... conv5_3, fc6, fc7), which Xing trained with; pretrained.py maps them
to torchvision's 'features.N' / 'classifier.N'.

Like XingBaseline, the parts are callable on their own for the multi-task networks:
`stem` = blocks 1-2 (returns both block outputs), `top` = blocks 3-5 + FC6-7, `head`.
"""
import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from age_jax.models import layers

# Output channels of each convolution, per block (configuration D).
VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def _bin_matrix(size_in: int, size_out: int) -> np.ndarray:
  """(size_out, size_in) averaging weights of torch's AdaptiveAvgPool: bin i covers
  [floor(i*n/m), ceil((i+1)*n/m)), so bins overlap or repeat when sizes do not divide."""
  m = np.zeros((size_out, size_in), np.float32)
  for i in range(size_out):
    start, end = (i * size_in) // size_out, -((-(i + 1) * size_in) // size_out)
    m[i, start:end] = 1.0 / (end - start)
  return m


def adaptive_avg_pool(x, size: int):
  """NHWC adaptive average pooling to (size, size), bit-for-bit torch's binning."""
  rows = jnp.asarray(_bin_matrix(x.shape[1], size), x.dtype)
  cols = jnp.asarray(_bin_matrix(x.shape[2], size), x.dtype)
  return jnp.einsum("ih,bhwc,jw->bijc", rows, x, cols)


class VGG16(nn.Module):
  """Returns {'features': FC7 activations, 'age': head outputs (none when
  num_outputs=0)}."""
  num_outputs: int = 1
  fc_features: Sequence[int] = (4096, 4096)
  dropout_rate: float = 0.5
  pool_size: int = 7
  conv: Any = layers.Conv                  # a Conv ModuleDef and max pooling: get_model passes
  max_pool: Callable = layers.max_pool     #   config.model.conv_lowering's (models/layers.py)
  dtype: Any = jnp.float32

  def setup(self):
    conv = functools.partial(self.conv, kernel_size=3, padding=((1, 1), (1, 1)), dtype=self.dtype)
    for b, widths in enumerate(VGG16_BLOCKS):
      for i, width in enumerate(widths):
        setattr(self, f"conv{b + 1}_{i + 1}", conv(width))
    self.fc6 = nn.Dense(self.fc_features[0], dtype=self.dtype)
    self.fc7 = nn.Dense(self.fc_features[1], dtype=self.dtype)
    self.dropout = nn.Dropout(self.dropout_rate)
    self.age_head = nn.Dense(self.num_outputs, dtype=self.dtype)

  def _block(self, x, b: int):
    for i in range(len(VGG16_BLOCKS[b - 1])):
      x = nn.relu(getattr(self, f"conv{b}_{i + 1}")(x))
    return self.max_pool(x, 2, 2, "VALID")

  def stem(self, x, train: bool):
    """Blocks 1-2: the 'conv1' and 'conv2' taps of the multi-task networks (Xing 3.3)."""
    block1 = self._block(x, 1)
    return block1, self._block(block1, 2)

  def top(self, x, train: bool):
    for b in (3, 4, 5):
      x = self._block(x, b)
    x = adaptive_avg_pool(x, self.pool_size)
    x = x.reshape(x.shape[0], -1)  # (h, w, c) order; pretrained.py permutes torch's (c, h, w) FC6
    x = self.dropout(nn.relu(self.fc6(x)), deterministic=not train)
    return self.dropout(nn.relu(self.fc7(x)), deterministic=not train)

  def head(self, features):
    return self.age_head(features).astype(jnp.float32)

  def __call__(self, images, train: bool = False):
    x = images.astype(self.dtype)
    _, x = self.stem(x, train)
    features = self.top(x, train)
    if not self.num_outputs:  # a backbone only (models/heads.py: IdentityHead); the head is never built
      return {"features": features}
    return {"features": features, "age": self.head(features)}
