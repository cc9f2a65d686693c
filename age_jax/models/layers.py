"""The one convolution layer every backbone uses, and other shared layers.

`Conv` keeps flax.linen.Conv's parameter names and layout ('kernel' HWIO, 'bias'),
so weights move freely between lowerings. The lowering is a config choice:
  'xla'      lax.conv_general_dilated: XLA's own convolution, forward and both gradients;
  'patches'  im2col: strided slices of the input + one matmul; autodiff gives the
             gradients (col2im for the input, patches^T @ dy for the weights);
  'hybrid'   a custom VJP that picks, per convolution and per direction, what XLA's CPU
             backend runs fastest: XLA's forward and input-gradient convolutions, except
             on maps smaller than the kernel (where XLA's CPU convolution leaves its fast
             path and im2col + matmul is far faster) and for 1x1 kernels (a matmul);
             the weight gradient as patches^T @ dy on CPUs where XLA's CPU
             weight-gradient convolution is slow (AVX2-only; see _weight_grad_by_matmul);
             depthwise convolutions as a sum of kh*kw shifted, scaled copies (one fused
             elementwise loop instead of XLA's grouped convolution);
  'onednn'   'hybrid' with oneDNN's CPU kernels (onednn.py, XLA custom calls) for the float32
             directions they run faster: forward and input gradient on output maps from 20x20,
             weight gradient from 12x12 (`_engines`); max pooling too;
  'auto'     'onednn' on CPU where its kernels build ('hybrid' where they do not), 'xla' on
             GPU/TPU (their convolution libraries are fast).
Every lowering computes the same function: outputs and gradients match 'xla' to float
rounding (tests/models/test_layers.py).

'hybrid' and 'onednn' also come with XLA compiler options (`compiler_options`), which every jit that runs
a model passes: on CPU, XLA hands convolutions and elementwise fusions to its YNNPACK library by
default, whose convolutions are slower than XLA's own (Eigen) on large maps, so YNNPACK is kept
for single matmuls and reductions only (figures: BUILD_NOTES.md, "Speed").
"""
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from age_jax.models import onednn

LOWERINGS = ("auto", "xla", "patches", "hybrid", "onednn")
_DN = ("NHWC", "HWIO", "NHWC")


def resolve_lowering(lowering: str) -> str:
  """The concrete lowering for `lowering` on the default backend."""
  if lowering not in LOWERINGS:
    raise ValueError(f"conv lowering must be one of {LOWERINGS}, got {lowering!r}")
  if lowering == "onednn" and onednn.unavailable_reason():
    raise ValueError(f"conv lowering 'onednn': {onednn.unavailable_reason()}")
  if lowering != "auto":
    return lowering
  if jax.default_backend() != "cpu":
    return "xla"
  return "hybrid" if onednn.unavailable_reason() else "onednn"


# XLA CPU's library fusions kept under 'hybrid': YNNPACK for single matmuls and reductions only.
_CPU_LIBRARY_FUSIONS = "LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"
_CPU_FUSION_OPTION = "xla_cpu_experimental_ynn_fusion_type"


@functools.cache
def _cpu_fusion_option_supported() -> bool:
  # An experimental XLA option: a jaxlib without it rejects it, and then we compile without.
  try:
    jax.jit(lambda x: x + 1).lower(1.0).compile({_CPU_FUSION_OPTION: _CPU_LIBRARY_FUSIONS})
    return True
  except Exception:  # noqa: BLE001 (XLA raises several types for an unknown option)
    return False


def compiler_options(lowering: str) -> dict | None:
  """XLA compiler options for jits that run a model built with `lowering` (None: XLA's defaults)."""
  if resolve_lowering(lowering) not in ("hybrid", "onednn") or jax.default_backend() != "cpu":
    return None
  return {_CPU_FUSION_OPTION: _CPU_LIBRARY_FUSIONS} if _cpu_fusion_option_supported() else None


def _pair(v):
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


def _out_size(size, k, s, pad):
  return (size + pad[0] + pad[1] - k) // s + 1


def _shifted_views(x, kernel_hw, strides, pads):
  """The kh*kw strided views x_pad[:, i::s, j::s, :] the kernel taps see, each (N, Ho, Wo, C)."""
  (kh, kw), (sh, sw) = kernel_hw, strides
  n, h, w, c = x.shape
  ho, wo = _out_size(h, kh, sh, pads[0]), _out_size(w, kw, sw, pads[1])
  xp = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)))
  return [lax.slice(xp, (0, i, j, 0), (n, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c), (1, sh, sw, 1))
          for i in range(kh) for j in range(kw)]


def im2col(x, kernel_hw, strides, pads):
  """(N, Ho, Wo, kh*kw*C) patches, features ordered (i, j, c) like an HWIO kernel's rows."""
  views = _shifted_views(x, kernel_hw, strides, pads)
  return views[0] if len(views) == 1 else jnp.concatenate(views, axis=-1)


def _matmul(a, b, contract_a, contract_b, out_dtype):
  # Accumulate in float32 whatever the inputs (bf16 sums over N*H*W terms would lose digits).
  y = lax.dot_general(a, b, ((contract_a, contract_b), ((), ())), preferred_element_type=jnp.float32)
  return y.astype(out_dtype)


def _xla_conv(x, kernel, strides, pads, groups=1):
  return lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=_DN,
                                  feature_group_count=groups)


def conv_patches(x, kernel, strides, pads):
  """im2col + one matmul; differentiable by autodiff."""
  kh, kw, cin, cout = kernel.shape
  patches = im2col(x, (kh, kw), strides, pads)
  return _matmul(patches, kernel.reshape(kh * kw * cin, cout), (3,), (0,), x.dtype)


def conv_depthwise_shifts(x, kernel, strides, pads):
  """Depthwise conv (groups = input channels, HWIO kernel (kh, kw, 1, C*m)) as the sum over taps
  of shifted views times per-channel weights: one fused elementwise loop on CPU."""
  kh, kw, _, cout = kernel.shape
  multiplier = cout // x.shape[-1]
  if multiplier != 1:  # output channel c*m + k reads input channel c, as lax's grouping
    x = jnp.repeat(x, multiplier, axis=-1)
  views = _shifted_views(x, (kh, kw), strides, pads)
  taps = kernel.reshape(kh * kw, cout).astype(jnp.float32)
  y = sum(v.astype(jnp.float32) * taps[t] for t, v in enumerate(views))
  return y.astype(x.dtype)


def _map_smaller_than_kernel(out_hw, kernel_hw):
  # XLA's CPU convolution falls off its fast path when the output map is smaller than the kernel.
  return out_hw[0] < kernel_hw[0] or out_hw[1] < kernel_hw[1]


@functools.cache
def _cpu_has_avx512() -> bool:
  try:
    with open("/proc/cpuinfo") as f:
      return any(line.startswith("flags") and " avx512f" in line for line in f)
  except OSError:
    return False


def _weight_grad_by_matmul() -> bool:
  """Whether patches^T @ dy should replace XLA's CPU weight-gradient convolution: yes on
  AVX2-only CPUs, where XLA's is slow; on AVX-512 CPUs XLA's is as fast or faster."""
  return jax.default_backend() == "cpu" and not _cpu_has_avx512()


# The output map area from which oneDNN's kernels beat XLA's, per direction; on smaller maps
# its NHWC kernels lose (`launch.bench_conv`; BUILD_NOTES.md, "Speed").
_ONEDNN_MIN_AREA = {"forward": 20 * 20, "weight_grad": 12 * 12}


def _engines(lowering, out_hw, dtype):
  """(engine for the forward and input gradient, engine for the weight gradient) of a dense
  convolution under 'hybrid' or 'onednn': 'xla', 'matmul' (patches^T @ dy) or 'onednn'."""
  area = out_hw[0] * out_hw[1]
  onednn_ok = lowering == "onednn" and dtype == jnp.float32
  forward = "onednn" if onednn_ok and area >= _ONEDNN_MIN_AREA["forward"] else "xla"
  if onednn_ok and area >= _ONEDNN_MIN_AREA["weight_grad"]:
    return forward, "onednn"
  return forward, ("matmul" if _weight_grad_by_matmul() else "xla")


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_hybrid(x, kernel, strides, pads, engines):
  """Dense convolution, each direction on the engine `engines` names (see `_engines`); pads must
  be exact (`_exact_padding`) where oneDNN runs."""
  if engines[0] == "onednn":
    return onednn.conv_forward(x, kernel, strides, pads)
  return _xla_conv(x, kernel, strides, pads)


def _conv_hybrid_fwd(x, kernel, strides, pads, engines):
  return conv_hybrid(x, kernel, strides, pads, engines), (x, kernel)


def _conv_hybrid_bwd(strides, pads, engines, residuals, dy):
  x, kernel = residuals
  forward_engine, weight_engine = engines
  if forward_engine == "onednn":
    dx = onednn.conv_input_grad(dy, kernel, x.shape, strides, pads)
  else:
    dx, = jax.vjp(lambda x: _xla_conv(x, kernel, strides, pads), x)[1](dy)
  if weight_engine == "onednn":
    dw = onednn.conv_weight_grad(x, dy, kernel.shape, strides, pads)
  elif weight_engine == "matmul":
    patches = im2col(x, kernel.shape[:2], strides, pads)
    dw = _matmul(patches, dy, (0, 1, 2), (0, 1, 2), kernel.dtype).reshape(kernel.shape)
  else:
    dw, = jax.vjp(lambda k: _xla_conv(x, k, strides, pads), kernel)[1](dy)
  return dx, dw


conv_hybrid.defvjp(_conv_hybrid_fwd, _conv_hybrid_bwd)


def conv(x, kernel, strides, padding, groups=1, lowering="auto"):
  """NHWC x, HWIO kernel -> NHWC output with the chosen lowering (see the module docstring)."""
  kh, kw, cin_per_group, _ = kernel.shape
  strides = _pair(strides)
  pads = explicit_padding(x.shape[1:3], (kh, kw), strides, padding)
  lowering = resolve_lowering(lowering)
  depthwise = groups > 1 and cin_per_group == 1 and groups == x.shape[-1]
  if lowering == "xla" or (groups > 1 and not depthwise):
    return _xla_conv(x, kernel, strides, pads, groups)
  if depthwise:
    return conv_depthwise_shifts(x, kernel, strides, pads)
  out_hw = tuple(_out_size(n, k, st, p) for n, k, st, p in zip(x.shape[1:3], (kh, kw), strides, pads))
  if lowering == "patches" or (kh, kw) == (1, 1) or _map_smaller_than_kernel(out_hw, (kh, kw)):
    return conv_patches(x, kernel, strides, pads)  # a 1x1 convolution is a matmul already
  engines = _engines(lowering, out_hw, x.dtype)
  if "onednn" in engines:
    x, pads = _exact_padding(x, (kh, kw), strides, pads)
  return conv_hybrid(x, kernel, strides, pads, engines)


def _exact_padding(x, window, strides, pads):
  """oneDNN wants every padded row read: trims end padding a stride leaves unread, and crops input
  rows/columns no window reaches (autodiff pads their gradient back with zeros)."""
  exact = []
  for axis, (size, k, s, (before, after)) in enumerate(zip(x.shape[1:3], window, strides, pads)):
    after = (_out_size(size, k, s, (before, after)) - 1) * s + k - size - before
    if after < 0:
      x = lax.slice_in_dim(x, 0, size + after, axis=axis + 1)
      after = 0
    exact.append((before, after))
  return x, tuple(exact)


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
    cin, groups = x.shape[-1], self.feature_group_count
    if cin % groups or self.features % groups:
      raise ValueError(f"Conv: input channels {cin} and features {self.features} must both be "
                       f"divisible by feature_group_count {groups}")
    kernel = self.param("kernel", self.kernel_init, (kh, kw, cin // groups, self.features), self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = conv(x, kernel, self.strides, self.padding, groups, self.lowering)
    if bias is not None:
      y = y + bias
    return y


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


def max_pool(x, window: int | Sequence[int], strides: int | Sequence[int], padding="VALID",
             lowering: str = "auto"):
  """Max pooling, NHWC. 'onednn' (float32): oneDNN's pooling kernels. Otherwise on CPU (every
  lowering but 'xla') the running maximum of the kh*kw strided views, with a gradient computed
  per stride phase (`_max_pool_views`): XLA's CPU select-and-scatter (the gradient of
  reduce_window max) is several times slower. Ties send the gradient to the first maximal tap, as
  select-and-scatter does, so every path gives identical gradients."""
  window, strides = _pair(window), _pair(strides)
  if resolve_lowering(lowering) == "xla":
    return nn.max_pool(x, window, strides=strides, padding=padding)
  pads = explicit_padding(x.shape[1:3], window, strides, padding)
  if resolve_lowering(lowering) == "onednn" and x.dtype == jnp.float32:
    x, exact = _exact_padding(x, window, strides, pads)
    return onednn.max_pool(x, window, strides, exact)
  if any(p for pair in pads for p in pair):
    x = lax.pad(x, jnp.array(-jnp.inf, x.dtype), ((0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)))
  return _max_pool_views(x, window, strides)


def _running_max(x, window, strides):
  """The pooled maximum and, per output, the index of the first tap that holds it."""
  out, tap = None, None
  for t, view in enumerate(_shifted_views(x, window, strides, ((0, 0), (0, 0)))):
    if out is None:
      out, tap = view, jnp.zeros(view.shape, jnp.int8)
    else:
      better = view > out
      out, tap = jnp.where(better, view, out), jnp.where(better, jnp.int8(t), tap)
  return out, tap


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _max_pool_views(x, window, strides):
  return _running_max(x, window, strides)[0]


def _max_pool_views_fwd(x, window, strides):
  # The residual is `tap`; XLA recomputes it inside the backward fusion rather than storing it.
  out, tap = _running_max(x, window, strides)
  return out, (tap, jnp.zeros((0,) + x.shape[1:], x.dtype))  # the empty array carries x's map size


def _max_pool_views_bwd(window, strides, residuals, dy):
  """dx row p = s*m + r (phase r) gathers the taps t = r + s*d of outputs m - d: per phase, a
  sum of a few shifted, masked copies of dy at output resolution; the phases are then
  interleaved. (The autodiff of the views would add kh*kw strided, zero-dilated copies at input
  resolution instead: several times the work.)"""
  tap, like = residuals
  (kh, kw), (sh, sw) = window, strides
  h, w = like.shape[1:3]
  rows, cols = -(-h // sh), -(-w // sw)  # rows / columns per phase (the last phases may use fewer)

  def shifted(g, d_rows, d_cols):  # g[m - d_rows, n - d_cols] on a (rows, cols) grid, zeros outside
    g = lax.pad(g, jnp.zeros((), g.dtype), ((0, 0, 0), (d_rows, max(0, rows - g.shape[1] - d_rows), 0),
                                            (d_cols, max(0, cols - g.shape[2] - d_cols), 0), (0, 0, 0)))
    return g[:, :rows, :cols]

  phases = []
  for rh in range(sh):
    row = []
    for rw in range(sw):
      terms = [shifted(jnp.where(tap == i * kw + j, dy, jnp.zeros((), dy.dtype)), (i - rh) // sh, (j - rw) // sw)
               for i in range(rh, kh, sh) for j in range(rw, kw, sw)]
      row.append(sum(terms) if terms else jnp.zeros((dy.shape[0], rows, cols, dy.shape[3]), dy.dtype))
    phases.append(jnp.stack(row, axis=3))
  dx = jnp.stack(phases, axis=2).reshape(dy.shape[0], rows * sh, cols * sw, dy.shape[3])
  return (dx[:, :h, :w],)


_max_pool_views.defvjp(_max_pool_views_fwd, _max_pool_views_bwd)
