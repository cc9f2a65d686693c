"""The CPU lowerings (age_jax/cpu/lowerings.py): every lowering computes XLA's convolution,
forward and gradients, for strides, paddings, 1x1 kernels, tiny maps and grouped convs; and
max pooling, ties included. Each is reached as get_model reaches it, through models.get_lowering."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from age_jax import models
from age_jax.cpu import lowerings
from age_jax.models import layers


def conv(x, w, strides, padding, groups, lowering):
  return models.get_lowering(lowering).convolution(x, w, strides, padding, groups)


def max_pool(x, window, strides, padding, lowering):
  return models.get_lowering(lowering).max_pool(x, window, strides, padding)


def lowered_conv(lowering, *args, **kwargs):
  """A layers.Conv computed by `lowering`, as get_model builds them."""
  return models.get_lowering(lowering).conv(*args, **kwargs)

# (input NHWC, kernel HWIO, strides, padding, groups)
CASES = {
    "3x3_same": ((2, 9, 9, 3), (3, 3, 3, 4), 1, "SAME", 1),
    "3x3_stride2_same_odd": ((2, 9, 9, 3), (3, 3, 3, 4), 2, "SAME", 1),
    "5x5_explicit": ((2, 8, 8, 4), (5, 5, 4, 5), 1, ((2, 2), (2, 2)), 1),
    "7x7_stride4_valid": ((1, 19, 19, 3), (7, 7, 3, 4), 4, "VALID", 1),
    "3x2_asymmetric": ((2, 7, 8, 3), (3, 2, 3, 4), (2, 1), ((1, 0), (0, 2)), 1),
    "1x1_stride2": ((2, 8, 8, 5), (1, 1, 5, 6), 2, "VALID", 1),
    "3x3_stride2_same_even": ((2, 10, 10, 3), (3, 3, 3, 4), 2, "SAME", 1),
    "7x7_stride4_valid_large_map": ((1, 33, 31, 2), (7, 7, 2, 3), 4, "VALID", 1),
    "2x3_stride3_kernel_below_stride": ((2, 13, 14, 3), (2, 3, 3, 4), 3, "VALID", 1),
    "5x4_strides_3_2_uneven_pads": ((2, 16, 11, 3), (5, 4, 3, 4), (3, 2), ((3, 0), (0, 2)), 1),
    "3x3_stride2_wide": ((2, 14, 14, 32), (3, 3, 32, 48), 2, "SAME", 1),
    "3x3_on_2x2_map": ((2, 2, 2, 6), (3, 3, 6, 5), 1, ((1, 1), (1, 1)), 1),
    "depthwise_stride2": ((2, 9, 9, 6), (3, 3, 1, 6), 2, ((1, 1), (1, 1)), 6),
    "depthwise_multiplier2": ((2, 8, 8, 3), (3, 3, 1, 6), 1, "SAME", 3),
    "grouped": ((2, 8, 8, 4), (3, 3, 2, 6), 1, "SAME", 2),
}


def _value_and_grads(lowering, x, w, strides, padding, groups, cotangent):
  def f(x, w):
    return jnp.sum(conv(x, w, strides, padding, groups, lowering) * cotangent)
  y = jax.jit(lambda x, w: conv(x, w, strides, padding, groups, lowering))(x, w)
  return (y, *jax.jit(jax.grad(f, argnums=(0, 1)))(x, w))


def _close(actual, expected, rtol=1e-5):
  expected = np.asarray(expected, np.float64)
  np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * np.abs(expected).max())


# 'hybrid' with each weight-gradient path (XLA's convolution, or patches^T @ dy).
@pytest.mark.parametrize("lowering,wgrad_by_matmul", [
    pytest.param("patches", False, marks=pytest.mark.slow),   # no default uses 'patches' alone
    ("hybrid", False), ("hybrid", True), ("onednn", False)])
@pytest.mark.parametrize("case", sorted(CASES))
def test_lowering_matches_xla_forward_and_gradients(case, lowering, wgrad_by_matmul, monkeypatch):
  monkeypatch.setattr(lowerings, "_weight_grad_by_matmul", lambda: wgrad_by_matmul)
  monkeypatch.setattr(lowerings, "_ONEDNN_MIN_AREA", {"forward": 1, "weight_grad": 1})  # oneDNN on tiny maps too
  x_shape, w_shape, strides, padding, groups = CASES[case]
  kx, kw, kc = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, x_shape)
  w = jax.random.normal(kw, w_shape)
  y_ref = conv(x, w, strides, padding, groups, "xla")
  cotangent = jax.random.normal(kc, y_ref.shape)
  expected = _value_and_grads("xla", x, w, strides, padding, groups, cotangent)
  actual = _value_and_grads(lowering, x, w, strides, padding, groups, cotangent)
  for a, e in zip(actual, expected):
    assert a.shape == e.shape
    _close(a, e)


def test_patches_convolution_matches_a_hand_computed_example():
  # 1 channel, 3x3 input 0..8, 2x2 kernel [[1, 2], [3, 4]], VALID: y[0,0] = 0*1+1*2+3*3+4*4 = 27.
  x = jnp.arange(9.0).reshape(1, 3, 3, 1)
  w = jnp.array([[1.0, 2.0], [3.0, 4.0]]).reshape(2, 2, 1, 1)
  y = conv(x, w, 1, "VALID", 1, "patches")
  np.testing.assert_array_equal(y[0, :, :, 0], [[27.0, 37.0], [57.0, 67.0]])
  # d(sum y)/dw[i, j] = sum of the 2x2 window at offset (i, j).
  dw = jax.grad(lambda w: conv(x, w, 1, "VALID", 1, "hybrid").sum())(w)
  np.testing.assert_array_equal(dw[:, :, 0, 0], [[8.0, 12.0], [20.0, 24.0]])


def _conv_ops(fn, *args):
  """Convolutions XLA is asked to run (dead code dropped, as compiled)."""
  return jax.jit(fn).lower(*args).as_text().count("stablehlo.convolution")


def test_hybrid_routes_tiny_maps_1x1_and_depthwise_away_from_xla_convolutions(monkeypatch):
  monkeypatch.setattr(lowerings, "_weight_grad_by_matmul", lambda: True)

  def grads(x_shape, w_shape, padding, groups=1):
    x, w = jnp.ones(x_shape), jnp.ones(w_shape)
    loss = lambda x, w: conv(x, w, 1, padding, groups, "hybrid").sum()  # noqa: E731
    return _conv_ops(jax.value_and_grad(loss, (0, 1)), x, w)

  assert grads((2, 2, 2, 4), (3, 3, 4, 4), ((1, 1), (1, 1))) == 0   # map smaller than kernel
  assert grads((2, 4, 4, 4), (1, 1, 4, 4), "VALID") == 0            # 1x1: a matmul
  assert grads((2, 6, 6, 4), (3, 3, 1, 4), "SAME", groups=4) == 0   # depthwise: shifted products
  assert grads((2, 6, 6, 4), (3, 3, 4, 4), "SAME") == 2             # forward + input gradient only
  monkeypatch.setattr(lowerings, "_weight_grad_by_matmul", lambda: False)
  assert grads((2, 6, 6, 4), (3, 3, 4, 4), "SAME") == 3


def test_get_lowering_picks_onednn_on_cpu_and_names_the_choices():
  assert jax.default_backend() == "cpu"
  assert models.get_lowering("auto").name == "onednn"
  assert models.get_lowering("xla") is layers.XLA
  with pytest.raises(ValueError, match=r"one of \('auto', 'xla', 'patches', 'hybrid', 'onednn'\), got 'fast'"):
    models.get_lowering("fast")


def _library_convolutions(compiled_text):
  """Convolutions XLA handed to a library fusion (YNNPACK/XNNPACK/oneDNN) in compiled HLO text."""
  bodies = dict(re.findall(r"^%?([\w.\-]+) .*?\{\n(.*?)\n\}", compiled_text, re.M | re.S))
  called = re.findall(r"%?(?:ynn|xnn|onednn)_fusion[\w.]* = .*?calls=%?([\w.\-]+)", compiled_text)
  return sum(" convolution(" in bodies.get(name, "") for name in called)


def test_hybrid_compiler_options_keep_convolutions_out_of_library_fusions_and_change_no_number():
  options = models.get_lowering("hybrid").compiler_options
  if options is None:
    pytest.skip("this jaxlib has no xla_cpu_experimental_ynn_fusion_type option")
  assert models.get_lowering("auto").compiler_options == options == models.get_lowering("onednn").compiler_options
  assert models.get_lowering("xla").compiler_options is None
  assert models.get_lowering("patches").compiler_options is None
  kx, kw, kc = jax.random.split(jax.random.key(3), 3)
  x, w = jax.random.normal(kx, (4, 20, 20, 16)), jax.random.normal(kw, (3, 3, 16, 32))
  cotangent = jax.random.normal(kc, (4, 20, 20, 32))
  # The backward pass alone: its two convolutions feed no reduction a REDUCE fusion could take.
  grads = lambda x, w: jax.vjp(lambda x, w: conv(x, w, 1, "SAME", 1, "hybrid"), x, w)[1](cotangent)  # noqa: E731
  lowered = jax.jit(grads).lower(x, w)
  tuned = lowered.compile(options)
  text = tuned.as_text()
  assert _library_convolutions(text) == 0  # jax 0.10.2's defaults put both in YNNPACK fusions
  # The input gradient is XLA's own; so is the weight gradient unless hybrid makes it a matmul.
  assert text.count(" convolution(") == (1 if lowerings._weight_grad_by_matmul() else 2)
  for g, e in zip(tuned(x, w), lowered.compile()(x, w)):
    _close(g, e)


def test_conv_module_params_are_the_same_for_every_lowering_and_bf16_compute_keeps_f32_params():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  outputs = {}
  for lowering in ("xla", "patches", "hybrid"):
    module = lowered_conv(lowering, 5, 3, strides=2, padding="SAME")
    params = jax.jit(module.init)(jax.random.key(1), x)["params"]
    assert params["kernel"].shape == (3, 3, 3, 5) and params["bias"].shape == (5,)
    outputs[lowering] = module.apply({"params": params}, x)
  _close(outputs["patches"], outputs["xla"])
  _close(outputs["hybrid"], outputs["xla"])

  module = lowered_conv("hybrid", 5, 3, dtype=jnp.bfloat16)
  params = jax.jit(module.init)(jax.random.key(1), x)["params"]
  assert params["kernel"].dtype == jnp.float32
  loss = lambda p, lowering: jnp.sum(lowered_conv(lowering, 5, 3, dtype=jnp.bfloat16)  # noqa: E731
                                     .apply({"params": p}, x).astype(jnp.float32) ** 2)
  g_hybrid = jax.jit(jax.grad(loss), static_argnums=1)(params, "hybrid")
  g_xla = jax.jit(jax.grad(loss), static_argnums=1)(params, "xla")
  assert g_hybrid["kernel"].dtype == jnp.float32
  y = module.apply({"params": params}, x)
  assert y.dtype == jnp.bfloat16
  _close(g_hybrid["kernel"], g_xla["kernel"], rtol=3e-2)


@pytest.mark.parametrize("window,strides,padding", [(3, 2, "VALID"), (3, 2, ((1, 1), (1, 1))), (2, 2, "VALID"),
                                                    (3, 1, ((1, 1), (1, 1))), (2, 3, "VALID"), ((3, 2), (2, 1), "SAME")])
@pytest.mark.parametrize("lowering", ["hybrid", "onednn"])
def test_max_pool_matches_reduce_window_with_ties(window, strides, padding, lowering):
  # Rounded values make many ties: the gradient must go to the same (first) maximal tap.
  x = jnp.round(jax.random.normal(jax.random.key(0), (2, 11, 12, 3)) * 2)
  loss = lambda lowering: lambda x: jnp.sum(max_pool(x, window, strides, padding, lowering) ** 3)
  np.testing.assert_array_equal(max_pool(x, window, strides, padding, lowering),
                                max_pool(x, window, strides, padding, "xla"))
  np.testing.assert_array_equal(jax.grad(loss(lowering))(x), jax.grad(loss("xla"))(x))
