"""EfficientNetV2-S/M/L (Tan & Le 2021) in torchvision's layout, with the formulation's
head 'age_head' in place of the 1000-way classifier. LAE (Bao 2021, 2.3) uses -M.

Stem conv 3x3/2 -> stages of Fused-MBConv (early) and MBConv with squeeze-excitation
(later) -> head conv 1x1 to 1280 -> global average pool -> dropout -> head. BatchNorm eps
1e-3 and momentum 0.1 (torch terms), SiLU, SE width = block input channels // 4, and
stochastic depth rising linearly to `stochastic_depth_rate` over the blocks: all as
torchvision's efficientnet_v2_*.
"""
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from age_jax.models import layers

FUSED, MB = "fused", "mb"

# (block type, expand ratio, kernel, stride, in channels, out channels, blocks): the official
# stage tables (torchvision _efficientnet_conf / the paper's Table 4 for -S).
STAGES = {
    "efficientnetv2_s": ((FUSED, 1, 3, 1, 24, 24, 2), (FUSED, 4, 3, 2, 24, 48, 4),
                         (FUSED, 4, 3, 2, 48, 64, 4), (MB, 4, 3, 2, 64, 128, 6),
                         (MB, 6, 3, 1, 128, 160, 9), (MB, 6, 3, 2, 160, 256, 15)),
    "efficientnetv2_m": ((FUSED, 1, 3, 1, 24, 24, 3), (FUSED, 4, 3, 2, 24, 48, 5),
                         (FUSED, 4, 3, 2, 48, 80, 5), (MB, 4, 3, 2, 80, 160, 7),
                         (MB, 6, 3, 1, 160, 176, 14), (MB, 6, 3, 2, 176, 304, 18),
                         (MB, 6, 3, 1, 304, 512, 5)),
    "efficientnetv2_l": ((FUSED, 1, 3, 1, 32, 32, 4), (FUSED, 4, 3, 2, 32, 64, 7),
                         (FUSED, 4, 3, 2, 64, 96, 7), (MB, 4, 3, 2, 96, 192, 10),
                         (MB, 6, 3, 1, 192, 224, 19), (MB, 6, 3, 2, 224, 384, 25),
                         (MB, 6, 3, 1, 384, 640, 7)),
}
HEAD_CHANNELS = 1280

_KAIMING = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _parts(module, train):
  conv = functools.partial(module.conv, use_bias=False, dtype=module.dtype, kernel_init=_KAIMING)
  norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                           epsilon=1e-3, dtype=module.dtype)
  return conv, norm


def _same(kernel):
  p = (kernel - 1) // 2
  return ((p, p), (p, p))


class _StochasticDepth(nn.Module):
  """Drops the residual branch per example with probability `rate` (torchvision 'row' mode)."""
  rate: float

  @nn.compact
  def __call__(self, x, train: bool):
    if not train or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return x * mask.astype(x.dtype) / keep


class FusedMBConv(nn.Module):
  """kxk conv (expand, or the whole block when expand == 1) -> 1x1 project; no SE."""
  expand: int
  kernel: int
  strides: int
  out_channels: int
  drop_rate: float = 0.0
  conv: Any = layers.Conv
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    conv, norm = _parts(self, train)
    cin = x.shape[-1]
    if self.expand == 1:
      y = nn.silu(norm(name="bn")(conv(self.out_channels, self.kernel, self.strides,
                                       _same(self.kernel), name="conv")(x)))
    else:
      y = nn.silu(norm(name="expand_bn")(conv(cin * self.expand, self.kernel, self.strides,
                                              _same(self.kernel), name="expand_conv")(x)))
      y = norm(name="project_bn")(conv(self.out_channels, 1, 1, "VALID", name="project_conv")(y))
    if self.strides == 1 and cin == self.out_channels:
      y = x + _StochasticDepth(self.drop_rate)(y, train)
    return y


class MBConv(nn.Module):
  """1x1 expand -> depthwise kxk -> squeeze-excitation -> 1x1 project."""
  expand: int
  kernel: int
  strides: int
  out_channels: int
  drop_rate: float = 0.0
  conv: Any = layers.Conv
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    conv, norm = _parts(self, train)
    cin = x.shape[-1]
    hidden = cin * self.expand
    y = nn.silu(norm(name="expand_bn")(conv(hidden, 1, 1, "VALID", name="expand_conv")(x)))
    y = conv(hidden, self.kernel, self.strides, _same(self.kernel), feature_group_count=hidden,
             name="dw_conv")(y)
    y = nn.silu(norm(name="dw_bn")(y))
    # Squeeze-excitation on the block's input width // 4 (torchvision, timm).
    se_conv = functools.partial(self.conv, kernel_size=1, padding="VALID", dtype=self.dtype)
    s = jnp.mean(y, axis=(1, 2), keepdims=True)
    s = nn.silu(se_conv(max(1, cin // 4), name="se_reduce")(s))
    y = y * nn.sigmoid(se_conv(hidden, name="se_expand")(s))
    y = norm(name="project_bn")(conv(self.out_channels, 1, 1, "VALID", name="project_conv")(y))
    if self.strides == 1 and cin == self.out_channels:
      y = x + _StochasticDepth(self.drop_rate)(y, train)
    return y


class EfficientNetV2(nn.Module):
  """Returns {'features': pooled head-conv activations (B, 1280), 'age': head outputs
  (none when num_outputs=0)}."""
  stages: Sequence[tuple]
  num_outputs: int = 1
  dropout_rate: float = 0.2
  stochastic_depth_rate: float = 0.2
  conv: Any = layers.Conv  # a Conv ModuleDef: get_model passes config.model.conv_lowering's (models/layers.py)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool = False):
    conv, norm = _parts(self, train)
    x = images.astype(self.dtype)
    x = nn.silu(norm(name="stem_bn")(conv(self.stages[0][4], 3, 2, _same(3), name="stem_conv")(x)))
    total = sum(stage[-1] for stage in self.stages)
    index = 0
    for s, (kind, expand, kernel, stride, _, out, num_blocks) in enumerate(self.stages):
      block = FusedMBConv if kind == FUSED else MBConv
      for j in range(num_blocks):
        x = block(expand, kernel, stride if j == 0 else 1, out,
                  drop_rate=self.stochastic_depth_rate * index / total,
                  conv=self.conv, dtype=self.dtype,
                  name=f"stage{s + 1}_{j}")(x, train)
        index += 1
    x = nn.silu(norm(name="head_bn")(conv(HEAD_CHANNELS, 1, 1, "VALID", name="head_conv")(x)))
    features = jnp.mean(x, axis=(1, 2))
    if not self.num_outputs:  # a backbone only (models/heads.py: IdentityHead)
      return {"features": features}
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(features)
    age = nn.Dense(self.num_outputs, dtype=self.dtype, name="age_head")(x)
    return {"features": features, "age": age.astype(jnp.float32)}


def efficientnetv2(name: str, **kwargs) -> EfficientNetV2:
  if name not in STAGES:
    raise ValueError(f"unknown EfficientNetV2 {name!r}; known: {sorted(STAGES)}")
  return EfficientNetV2(stages=STAGES[name], **kwargs)
