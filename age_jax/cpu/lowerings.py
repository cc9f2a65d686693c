"""The CPU lowerings of `config.model.conv_lowering`: convolutions and max pooling that XLA's CPU
backend runs faster than its own (figures: BENCHMARK_RECORDS.md, "Training speed on the CPU").
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
             weight gradient from 12x12 (`_engines`); max pooling too.
Each computes XLA's convolution (models.layers.xla_conv): outputs and gradients match it to float
rounding (tests/cpu/test_lowerings.py).
"""
import functools

import jax
import jax.numpy as jnp
from jax import lax

from age_jax.cpu import onednn
from age_jax.models.layers import explicit_padding, pair, xla_conv

LOWERINGS = ("patches", "hybrid", "onednn")


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
# its NHWC kernels lose (`launch.bench.bench_conv`; BUILD_NOTES.md, "Speed").
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
  return xla_conv(x, kernel, strides, pads)


def _conv_hybrid_fwd(x, kernel, strides, pads, engines):
  return conv_hybrid(x, kernel, strides, pads, engines), (x, kernel)


def _conv_hybrid_bwd(strides, pads, engines, residuals, dy):
  x, kernel = residuals
  forward_engine, weight_engine = engines
  if forward_engine == "onednn":
    dx = onednn.conv_input_grad(dy, kernel, x.shape, strides, pads)
  else:
    dx, = jax.vjp(lambda x: xla_conv(x, kernel, strides, pads), x)[1](dy)
  if weight_engine == "onednn":
    dw = onednn.conv_weight_grad(x, dy, kernel.shape, strides, pads)
  elif weight_engine == "matmul":
    patches = im2col(x, kernel.shape[:2], strides, pads)
    dw = _matmul(patches, dy, (0, 1, 2), (0, 1, 2), kernel.dtype).reshape(kernel.shape)
  else:
    dw, = jax.vjp(lambda k: xla_conv(x, k, strides, pads), kernel)[1](dy)
  return dx, dw


conv_hybrid.defvjp(_conv_hybrid_fwd, _conv_hybrid_bwd)


def conv(x, kernel, strides, padding, groups=1, lowering="hybrid"):
  """NHWC x, HWIO kernel -> NHWC output with a CPU lowering (see the module docstring)."""
  if lowering not in LOWERINGS:
    raise ValueError(f"CPU conv lowering must be one of {LOWERINGS}, got {lowering!r}")
  kh, kw, cin_per_group, _ = kernel.shape
  strides = pair(strides)
  pads = explicit_padding(x.shape[1:3], (kh, kw), strides, padding)
  depthwise = groups > 1 and cin_per_group == 1 and groups == x.shape[-1]
  if groups > 1 and not depthwise:  # grouped, not depthwise: XLA's
    return xla_conv(x, kernel, strides, pads, groups)
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


def max_pool(x, window, strides, padding="VALID", lowering="hybrid"):
  """Max pooling, NHWC. 'onednn' (float32): oneDNN's pooling kernels. Otherwise the running
  maximum of the kh*kw strided views, with a gradient computed per stride phase
  (`_max_pool_views`): XLA's CPU select-and-scatter (the gradient of reduce_window max) is several
  times slower. Ties send the gradient to the first maximal tap, as select-and-scatter does, so
  every path gives identical gradients."""
  window, strides = pair(window), pair(strides)
  pads = explicit_padding(x.shape[1:3], window, strides, padding)
  if lowering == "onednn" and x.dtype == jnp.float32:
    x, exact = _exact_padding(x, window, strides, pads)
    return onednn.max_pool(x, window, strides, exact)
  if any(p for side in pads for p in side):
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
