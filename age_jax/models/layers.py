"""The one convolution layer every backbone uses, and other shared layers.

`Conv` keeps flax.linen.Conv's parameter names and layout ('kernel' HWIO, 'bias'),
so weights move freely between lowerings. The lowering is a config choice:
  'xla'      lax.conv_general_dilated (XLA's own convolution);
  'patches'  lax.conv_general_dilated_patches + one matmul: on this CPU the
             weight-gradient convolution of XLA is slow, a matmul is not;
  'auto'     the fastest known lowering for the current platform.
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

LOWERINGS = ("auto", "xla", "patches")


def resolve_lowering(lowering: str) -> str:
  if lowering not in LOWERINGS:
    raise ValueError(f"conv lowering must be one of {LOWERINGS}, got {lowering!r}")
  if lowering != "auto":
    return lowering
  return "patches" if jax.default_backend() == "cpu" else "xla"


def _pair(v):
  return (v, v) if isinstance(v, int) else tuple(v)


class Conv(nn.Module):
  """2-D convolution, NHWC, with a selectable lowering."""
  features: int
  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] = 1
  padding: str | Sequence[tuple[int, int]] = "SAME"
  use_bias: bool = True
  feature_group_count: int = 1
  lowering: str = "auto"
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros

  @nn.compact
  def __call__(self, x):
    kh, kw = _pair(self.kernel_size)
    cin = x.shape[-1]
    if cin % self.feature_group_count:
      raise ValueError(f"input channels {cin} not divisible by groups {self.feature_group_count}")
    kernel = self.param("kernel", self.kernel_init,
                        (kh, kw, cin // self.feature_group_count, self.features), self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    strides = _pair(self.strides)
    padding = self.padding if isinstance(self.padding, str) else tuple(map(tuple, self.padding))
    lowering = resolve_lowering(self.lowering)
    if lowering == "patches" and self.feature_group_count == 1 and (kh, kw) != (1, 1):
      y = _conv_patches(x, kernel, strides, padding)
    elif lowering == "patches" and self.feature_group_count == 1:
      # A 1x1 convolution is a matmul after striding.
      y = x[:, ::strides[0], ::strides[1], :] @ kernel[0, 0] if padding in ("SAME", "VALID") else \
          lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    else:
      y = lax.conv_general_dilated(x, kernel, strides, padding,
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                   feature_group_count=self.feature_group_count)
    if bias is not None:
      y = y + bias
    return y


def _conv_patches(x, kernel, strides, padding):
  kh, kw, cin, cout = kernel.shape
  # Patches come out with features ordered (cin, kh, kw): reorder the kernel to match.
  patches = lax.conv_general_dilated_patches(
      x, (kh, kw), strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
  w = kernel.transpose(2, 0, 1, 3).reshape(cin * kh * kw, cout)
  return patches @ w


class LocalResponseNorm(nn.Module):
  """AlexNet/Caffe cross-channel LRN: x / (k + alpha/n * sum_{window n} x^2)^beta."""
  size: int = 5
  alpha: float = 1e-4
  beta: float = 0.75
  k: float = 1.0

  @nn.compact
  def __call__(self, x):
    half = self.size // 2
    sq = jnp.pad(jnp.square(x), [(0, 0)] * (x.ndim - 1) + [(half, self.size - 1 - half)])
    window = lax.reduce_window(sq, 0.0, lax.add, (1,) * (x.ndim - 1) + (self.size,), (1,) * x.ndim, "VALID")
    return x / (self.k + self.alpha / self.size * window) ** self.beta
