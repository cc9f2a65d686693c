"""MTCNN's three networks (Zhang et al. 2016, Fig. 2) as Flax modules, and their weights as Flax params.

Inputs are NHWC float images scaled as (pixel - 127.5) / 128. Layer sizes and pooling padding
follow the Keras definitions the `mtcnn` 1.0.0 weights were exported for; R- and O-Net flatten
their last feature map in (W, H, C) order (the original Caffe models saw transposed images).
"""
import flax.linen as nn
import jax.numpy as jnp
import numpy as np


class PReLU(nn.Module):
  """max(0, x) + slope * min(0, x), one slope per channel (the last axis)."""

  @nn.compact
  def __call__(self, x):
    slope = self.param("slope", nn.initializers.constant(0.25), (x.shape[-1],))
    return jnp.maximum(x, 0) + slope * jnp.minimum(x, 0)


def _conv(features, kernel, name):
  return nn.Conv(features, (kernel, kernel), padding="VALID", name=name)


def _flatten_wh(x):
  return jnp.transpose(x, (0, 2, 1, 3)).reshape(x.shape[0], -1)


class PNet(nn.Module):
  """Fully convolutional proposal net: a 12x12 window, stride 2 -> (face probability, box offsets)."""

  @nn.compact
  def __call__(self, x):
    x = nn.max_pool(PReLU(name="prelu1")(_conv(10, 3, "conv1")(x)), (2, 2), (2, 2), padding="SAME")
    x = PReLU(name="prelu2")(_conv(16, 3, "conv2")(x))
    x = PReLU(name="prelu3")(_conv(32, 3, "conv3")(x))
    offsets = _conv(4, 1, "conv4_1")(x)
    prob = nn.softmax(_conv(2, 1, "conv4_2")(x))[..., 1]
    return prob, offsets


class RNet(nn.Module):
  """Refinement net on 24x24 crops -> (face probability, box offsets)."""

  @nn.compact
  def __call__(self, x):
    x = nn.max_pool(PReLU(name="prelu1")(_conv(28, 3, "conv1")(x)), (3, 3), (2, 2), padding="SAME")
    x = nn.max_pool(PReLU(name="prelu2")(_conv(48, 3, "conv2")(x)), (3, 3), (2, 2), padding="VALID")
    x = PReLU(name="prelu3")(_conv(64, 2, "conv3")(x))
    x = PReLU(name="prelu4")(nn.Dense(128, name="fc4")(_flatten_wh(x)))
    offsets = nn.Dense(4, name="fc5_1")(x)
    prob = nn.softmax(nn.Dense(2, name="fc5_2")(x))[..., 1]
    return prob, offsets


class ONet(nn.Module):
  """Output net on 48x48 crops -> (face probability, box offsets, landmarks as (x1..x5, y1..y5)
  fractions of the crop)."""

  @nn.compact
  def __call__(self, x):
    x = nn.max_pool(PReLU(name="prelu1")(_conv(32, 3, "conv1")(x)), (3, 3), (2, 2), padding="SAME")
    x = nn.max_pool(PReLU(name="prelu2")(_conv(64, 3, "conv2")(x)), (3, 3), (2, 2), padding="VALID")
    x = nn.max_pool(PReLU(name="prelu3")(_conv(64, 3, "conv3")(x)), (2, 2), (2, 2), padding="SAME")
    x = PReLU(name="prelu4")(_conv(128, 2, "conv4")(x))
    x = PReLU(name="prelu5")(nn.Dense(256, name="fc5")(_flatten_wh(x)))
    offsets = nn.Dense(4, name="fc6_1")(x)
    landmarks = nn.Dense(10, name="fc6_2")(x)
    prob = nn.softmax(nn.Dense(2, name="fc6_3")(x))[..., 1]
    return prob, offsets, landmarks


# Keras weight order per net: (layer, kind) in the order of weights.SHAPES; "layer" takes a
# kernel and a bias, "prelu" one slope array.
_LAYOUT = {
    "pnet": ["conv1", "prelu1", "conv2", "prelu2", "conv3", "prelu3", "conv4_1", "conv4_2"],
    "rnet": ["conv1", "prelu1", "conv2", "prelu2", "conv3", "prelu3", "fc4", "prelu4", "fc5_1", "fc5_2"],
    "onet": ["conv1", "prelu1", "conv2", "prelu2", "conv3", "prelu3", "conv4", "prelu4", "fc5", "prelu5",
             "fc6_1", "fc6_2", "fc6_3"],
}
MODULES = {"pnet": PNet, "rnet": RNet, "onet": ONet}


def params_from_arrays(net: str, arrays: list) -> dict:
  """The Keras-ordered arrays of weights.load(net) as the Flax params of MODULES[net]."""
  params, rest = {}, list(arrays)
  for layer in _LAYOUT[net]:
    if layer.startswith("prelu"):
      params[layer] = {"slope": jnp.asarray(np.reshape(rest.pop(0), -1))}
    else:
      params[layer] = {"kernel": jnp.asarray(rest.pop(0)), "bias": jnp.asarray(rest.pop(0))}
  if rest:
    raise ValueError(f"{net}: {len(rest)} weight arrays left over after the layout")
  return {"params": params}
