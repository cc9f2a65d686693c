"""ResNet-18/34/50 (He et al. 2016) in torchvision's layout (v1.5: the stride sits on the
3x3 convolution of a bottleneck), with the formulation's head 'age_head' in place of 'fc'.

LAE (Bao 2021, 2.2) fine-tunes an ImageNet ResNet-18 with a K = 101 head. BatchNorm as
torchvision: momentum 0.1 in torch terms (0.9 here), eps 1e-5. Names mirror torchvision
('layer2_0' <-> 'layer2.0', 'downsample_conv' <-> 'downsample.0') so pretrained.py's
mapping stays a table.
"""
import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from age_jax.models import layers

# torchvision's init: kaiming normal, fan_out, for every convolution.
_KAIMING = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
_PAD1 = ((1, 1), (1, 1))


def _parts(module):
  conv = functools.partial(module.conv, use_bias=False, dtype=module.dtype, kernel_init=_KAIMING)
  norm = functools.partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5, dtype=module.dtype)
  return conv, norm


class BasicBlock(nn.Module):
  width: int
  strides: int = 1
  conv: Any = layers.Conv
  dtype: Any = jnp.float32
  expansion = 1

  @nn.compact
  def __call__(self, x, train: bool):
    conv, norm = _parts(self)
    norm = functools.partial(norm, use_running_average=not train)
    y = nn.relu(norm(name="bn1")(conv(self.width, 3, self.strides, _PAD1, name="conv1")(x)))
    y = norm(name="bn2")(conv(self.width, 3, 1, _PAD1, name="conv2")(y))
    if self.strides != 1 or x.shape[-1] != self.width:
      x = norm(name="downsample_bn")(conv(self.width, 1, self.strides, "VALID", name="downsample_conv")(x))
    return nn.relu(x + y)


class Bottleneck(nn.Module):
  width: int
  strides: int = 1
  conv: Any = layers.Conv
  dtype: Any = jnp.float32
  expansion = 4

  @nn.compact
  def __call__(self, x, train: bool):
    conv, norm = _parts(self)
    norm = functools.partial(norm, use_running_average=not train)
    out = self.width * self.expansion
    y = nn.relu(norm(name="bn1")(conv(self.width, 1, 1, "VALID", name="conv1")(x)))
    y = nn.relu(norm(name="bn2")(conv(self.width, 3, self.strides, _PAD1, name="conv2")(y)))
    y = norm(name="bn3")(conv(out, 1, 1, "VALID", name="conv3")(y))
    if self.strides != 1 or x.shape[-1] != out:
      x = norm(name="downsample_bn")(conv(out, 1, self.strides, "VALID", name="downsample_conv")(x))
    return nn.relu(x + y)


class ResNet(nn.Module):
  """Returns {'features': globally pooled last stage, 'age': head outputs (none when num_outputs=0)}."""
  stage_sizes: Sequence[int]
  block: Any
  num_outputs: int = 1
  width: int = 64  # channels of the stem and the first stage, doubled at each later stage
  conv: Any = layers.Conv                  # a Conv ModuleDef and max pooling: get_model passes
  max_pool: Callable = layers.max_pool     #   config.model.conv_lowering's (models/layers.py)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool = False):
    conv, norm = _parts(self)
    x = images.astype(self.dtype)
    x = conv(self.width, 7, 2, ((3, 3), (3, 3)), name="conv1")(x)
    x = nn.relu(norm(use_running_average=not train, name="bn1")(x))
    x = self.max_pool(x, 3, 2, _PAD1)
    for s, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        strides = 2 if s > 0 and j == 0 else 1
        x = self.block(self.width * 2 ** s, strides, conv=self.conv, dtype=self.dtype,
                       name=f"layer{s + 1}_{j}")(x, train)
    features = jnp.mean(x, axis=(1, 2))
    if not self.num_outputs:  # a backbone only (models/heads.py: IdentityHead)
      return {"features": features}
    age = nn.Dense(self.num_outputs, dtype=self.dtype, name="age_head")(features)
    return {"features": features, "age": age.astype(jnp.float32)}


RESNETS = {
    "resnet18": ((2, 2, 2, 2), BasicBlock),
    "resnet34": ((3, 4, 6, 3), BasicBlock),
    "resnet50": ((3, 4, 6, 3), Bottleneck),
}


def resnet(name: str, **kwargs) -> ResNet:
  if name not in RESNETS:
    raise ValueError(f"unknown ResNet {name!r}; known: {sorted(RESNETS)}")
  stage_sizes, block = RESNETS[name]
  return ResNet(stage_sizes=stage_sizes, block=block, **kwargs)
