"""The layers every backbone shares: `Conv`, max pooling, LRN, and the `Lowering` that says how
convolutions and max pooling run.

The lowering is a config choice (`config.model.conv_lowering`), resolved once by
models.get_lowering; get_model hands each backbone the lowering's `conv` (a `Conv` ModuleDef) and
`max_pool`, as flax's ImageNet example hands its ResNet `conv=...`:
  'xla'      lax.conv_general_dilated and reduce_window max (this module): XLA's own, any backend;
  'patches', 'hybrid', 'onednn'  the CPU lowerings (age_jax/cpu): im2col, per-direction custom
             VJPs and oneDNN's kernels, where XLA's CPU backend is slow;
  'auto'     'onednn' on CPU ('hybrid' where its kernels do not build), 'xla' on GPU/TPU.
Every lowering computes the same function on the same parameters (tests/cpu/test_lowerings.py), and
`Conv` keeps flax.linen.Conv's parameter names and layout ('kernel' HWIO, 'bias') whichever runs it,
so weights and checkpoints move freely between lowerings.
"""
import dataclasses
import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

LOWERINGS = ("auto", "xla", "patches", "hybrid", "onednn")
DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


def pair(v):
  return (v, v) if isinstance(v, int) else tuple(v)


def explicit_padding(in_hw, kernel_hw, strides, padding):
  """((top, bottom), (left, right)) for 'SAME' / 'VALID' / explicit pairs, as lax computes them."""
  if isinstance(padding, str):
    if padding.upper() not in ("SAME", "VALID"):
      raise ValueError(f"Conv padding must be 'SAME', 'VALID' or ((top, bottom), (left, right)); got {padding!r}")
    return tuple(lax.padtype_to_pads(in_hw, kernel_hw, strides, padding.upper()))
  pads = tuple(tuple(int(v) for v in p) for p in padding)
  if len(pads) != 2 or any(len(p) != 2 for p in pads):
    raise ValueError(f"Conv padding must be ((top, bottom), (left, right)); got {padding!r}")
  return pads


def xla_conv(x, kernel, strides, padding, groups=1):
  """XLA's convolution: NHWC x, HWIO kernel, padding 'SAME', 'VALID' or ((top, bottom), (left, right))."""
  strides = pair(strides)
  pads = explicit_padding(x.shape[1:3], kernel.shape[:2], strides, padding)
  return lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=DIMENSION_NUMBERS,
                                  feature_group_count=groups)


def max_pool(x, window: int | Sequence[int], strides: int | Sequence[int], padding="VALID"):
  """XLA's max pooling (reduce_window), NHWC."""
  return nn.max_pool(x, pair(window), strides=pair(strides), padding=padding)


class Conv(nn.Module):
  """2-D convolution, NHWC, with flax.linen.Conv's parameters; `convolution` computes it (a
  Lowering's, chosen by get_model; XLA's by default)."""
  features: int
  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] = 1
  padding: str | Sequence[tuple[int, int]] = "SAME"
  use_bias: bool = True
  feature_group_count: int = 1
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros
  convolution: Callable = xla_conv  # (x, kernel, strides, padding, groups) -> y

  @nn.compact
  def __call__(self, x):
    kh, kw = pair(self.kernel_size)
    cin, groups = x.shape[-1], self.feature_group_count
    if cin % groups or self.features % groups:
      raise ValueError(f"Conv: input channels {cin} and features {self.features} must both be "
                       f"divisible by feature_group_count {groups}")
    kernel = self.param("kernel", self.kernel_init, (kh, kw, cin // groups, self.features), self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = self.convolution(x, kernel, self.strides, self.padding, groups)
    if bias is not None:
      y = y + bias
    return y


@dataclasses.dataclass(frozen=True)
class Lowering:
  """How a model's convolutions and max pooling run, and the XLA options its jits need."""
  name: str                             # 'xla', 'patches', 'hybrid' or 'onednn' ('auto' resolved)
  convolution: Callable                 # as xla_conv
  max_pool: Callable                    # as max_pool
  compiler_options: dict | None = None  # passed by every jit that runs the model (None: XLA's defaults)

  @property
  def conv(self):
    """The `conv` ModuleDef backbones take: Conv computed by this lowering."""
    return functools.partial(Conv, convolution=self.convolution)


XLA = Lowering("xla", xla_conv, max_pool)


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
